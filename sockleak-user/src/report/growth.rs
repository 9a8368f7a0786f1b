//! `growing`: a group whose count rose at every one of the last reports, how fast, and when
//! its owner runs out of file descriptors at that rate.
use std::collections::{HashMap, VecDeque};

use super::schema::{GroupKey, Growth};

/// Remembers each group's count over the last reports.
#[derive(Default)]
pub struct GrowthTracker {
    history: HashMap<GroupKey, VecDeque<(u64, usize)>>,
}

impl GrowthTracker {
    /// Records this report's group counts and returns the groups whose count rose at every one
    /// of the last `reports` reports.
    pub fn observe(
        &mut self,
        counts: &HashMap<GroupKey, usize>,
        now_ns: u64,
        reports: usize,
    ) -> HashMap<GroupKey, Growth> {
        self.history.retain(|key, _| counts.contains_key(key));
        let mut growing = HashMap::new();
        for (key, &count) in counts {
            let h = self.history.entry(key.clone()).or_default();
            h.push_back((now_ns, count));
            while h.len() > reports + 1 {
                h.pop_front();
            }
            let rising =
                h.len() == reports + 1 && h.iter().zip(h.iter().skip(1)).all(|(a, b)| b.1 > a.1);
            if !rising {
                continue;
            }
            let (t0, c0) = h[0];
            let (t1, c1) = h[h.len() - 1];
            let minutes = (t1.saturating_sub(t0)) as f64 / 60e9;
            if minutes <= 0.0 {
                continue;
            }
            let per_minute = (c1 - c0) as f64 / minutes;
            let (fd_limit, open_fds) = crate::procfs::fd_usage(key.pid);
            let seconds_to_fd_limit = match (fd_limit, open_fds) {
                (Some(limit), Some(open)) if per_minute > 0.0 => {
                    Some((limit.saturating_sub(open) as f64 / (per_minute / 60.0)) as u64)
                }
                _ => None,
            };
            growing.insert(
                key.clone(),
                Growth {
                    per_minute: (per_minute * 10.0).round() / 10.0,
                    fd_limit,
                    open_fds,
                    seconds_to_fd_limit,
                },
            );
        }
        growing
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn growth_needs_a_rise_at_every_report() {
        let mut g = GrowthTracker::default();
        let key = GroupKey {
            pid: 1,
            comm: String::new(),
            site: sockleak_common::Site::socket(),
            stack: Default::default(),
        };
        let mut result = HashMap::new();
        for (i, count) in [5usize, 6, 7, 8].into_iter().enumerate() {
            let counts = HashMap::from([(key.clone(), count)]);
            result = g.observe(&counts, i as u64 * 60_000_000_000, 3);
        }
        let growth = &result[&key];
        assert_eq!(growth.per_minute, 1.0);

        let mut flat = GrowthTracker::default();
        for (i, count) in [5usize, 6, 6, 8].into_iter().enumerate() {
            let counts = HashMap::from([(key.clone(), count)]);
            result = flat.observe(&counts, i as u64 * 60_000_000_000, 3);
        }
        assert!(result.is_empty(), "a plateau is not growth");
    }
}
