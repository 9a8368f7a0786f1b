//! The process around a group's sockets: a socket leak usually ends as a process killed for
//! its memory, so every group says how much its owner holds and how that moved since
//! sockleak's first report, and how old the process is (which a socket it made cannot
//! exceed).
use std::collections::HashMap;

use super::schema::Process;
use crate::procfs;

/// Remembers each process's resident memory at the first report that saw it.
#[derive(Default)]
pub struct ProcessTracker {
    first_resident: HashMap<u32, u64>,
}

impl ProcessTracker {
    /// The processes of this report, read once each; processes no longer in a report are
    /// forgotten.
    pub fn observe(&mut self, pids: impl IntoIterator<Item = u32>) -> HashMap<u32, Process> {
        let mut seen = HashMap::new();
        for pid in pids {
            if seen.contains_key(&pid) {
                continue;
            }
            let (Some(resident), Some(age_ms)) = (procfs::resident_bytes(pid), procfs::age_ms(pid))
            else {
                continue;
            };
            let first = *self.first_resident.entry(pid).or_insert(resident);
            let process = Process {
                resident_bytes: resident,
                resident_change_bytes: resident as i64 - first as i64,
                age_ms,
            };
            seen.insert(pid, process);
        }
        self.first_resident.retain(|pid, _| seen.contains_key(pid));
        seen
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn memory_is_measured_against_the_first_report_that_saw_the_process() {
        let me = std::process::id();
        let mut tracker = ProcessTracker::default();
        let first = tracker.observe([me, me])[&me];
        assert_eq!(first.resident_change_bytes, 0);
        let grown = std::hint::black_box(vec![1u8; 64 << 20]); // touched: resident
        let second = tracker.observe([me])[&me];
        assert!(second.resident_change_bytes >= 32 << 20, "{second:?}");
        drop(grown);
        assert!(
            tracker.observe([u32::MAX]).is_empty(),
            "a process that is gone"
        );
        assert!(tracker.first_resident.is_empty(), "and forgotten");
    }
}
