//! Why a socket looks leaked. Each verdict is a rule over the evidence the table gathered, with
//! a threshold the user can set, and each has a healthy look-alike it must not fire on (see the
//! scenario tests): a slow reader that makes progress is not `unread`, a fast bulk transfer is
//! not `send_stuck`, a chatty keep-alive connection is not `idle`, a listener is none of them.
use std::{
    collections::{HashMap, VecDeque},
    time::Duration,
};

use serde::Serialize;

use crate::{
    report::GroupKey,
    sockdiag::IPPROTO_TCP,
    table::{Socket, TCP_CLOSE, TCP_CLOSE_WAIT, TCP_ESTABLISHED},
};

#[derive(Clone, Copy, Debug)]
pub struct Thresholds {
    pub close_wait: Duration,
    pub unread: Duration,
    pub send_stuck: Duration,
    pub idle: Duration,
    /// Consecutive reports with a rising count before a group is `growing`.
    pub growing_reports: usize,
}

impl Default for Thresholds {
    fn default() -> Self {
        Self {
            close_wait: Duration::from_secs(30),
            unread: Duration::from_secs(30),
            send_stuck: Duration::from_secs(30),
            idle: Duration::from_secs(300),
            growing_reports: 3,
        }
    }
}

/// The verdicts for one socket, in a fixed order.
pub fn socket_flags(s: &Socket, now_ns: u64, t: &Thresholds) -> Vec<&'static str> {
    let mut flags = Vec::new();
    let e = &s.evidence;
    let tcp = s.protocol == IPPROTO_TCP;
    let since = |ns: u64| Duration::from_nanos(now_ns.saturating_sub(ns));
    let in_state = since(e.state_since_ns);

    // The peer closed, the owner has not.
    if tcp && s.state == TCP_CLOSE_WAIT && in_state >= t.close_wait {
        flags.push("close_wait");
    }
    // Reset or timed out by the kernel, but the fd is still held: invisible to `ss`'s usual
    // filters, and the application will only notice on its next read or write.
    if tcp && s.state == TCP_CLOSE && e.was_connected && in_state >= t.close_wait {
        flags.push("reset_held");
    }
    // Data waiting that the owner has not consumed any of for the whole threshold.
    if s.unread_bytes() > 0 && since(e.rx_progress_ns) >= t.unread {
        flags.push("unread");
    }
    // Bytes in the send queue and the peer acknowledged nothing for the whole threshold.
    if tcp && s.tx_queue > 0 && since(e.tx_progress_ns) >= t.send_stuck {
        flags.push("send_stuck");
    }
    // Established, nothing queued, and no data either way for the idle threshold.
    if tcp
        && s.state == TCP_ESTABLISHED
        && s.unread_bytes() == 0
        && s.tx_queue == 0
        && let Some(info) = e.tcp
    {
        let quiet_ms = info.last_data_recv_ms.min(info.last_data_sent_ms);
        let quiet = Duration::from_millis(u64::from(quiet_ms)).min(since(s.created_ns));
        if quiet >= t.idle {
            flags.push("idle");
        }
    }
    flags
}

/// How fast a group's socket count rises, and when the owner runs out of file descriptors.
#[derive(Serialize, Debug, Clone, PartialEq)]
pub struct Growth {
    pub per_minute: f64,
    /// The owner's RLIMIT_NOFILE soft limit and its open fds, when /proc tells.
    pub fd_limit: Option<u64>,
    pub open_fds: Option<u64>,
    /// At the current rate; absent when the limit is unknown.
    pub seconds_to_fd_limit: Option<u64>,
}

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
            site: "socket()".to_owned(),
            ..GroupKey::default()
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
