//! What holds the other end of each UNIX connection or socketpair, by its command: a leaked
//! connection to docker.sock names the daemon, a socketpair the child holding its twin. Read
//! once per process and report, and remembered while the socket lives: a pipe whose child
//! exited still names it.
use std::{collections::HashMap, sync::Arc};

use sockleak_common::{Family, SockId};

use crate::{procfs, table::Socket};

#[derive(Default)]
pub struct PeerCommands {
    /// The command last seen holding each socket's peer.
    last: HashMap<SockId, Arc<str>>,
    /// This report's reads of `/proc/PID/comm` (a name may change between reports).
    comms: HashMap<u32, Option<Arc<str>>>,
}

impl PeerCommands {
    /// Learns what holds `s`'s peer now, for a UNIX socket whose peer someone holds.
    pub fn observe(&mut self, s: &Socket) {
        if s.family != Family::Unix {
            return;
        }
        let Some(&pid) = s
            .evidence
            .unix
            .as_ref()
            .and_then(|u| u.peer_holders.first())
        else {
            return;
        };
        let comm = self
            .comms
            .entry(pid)
            .or_insert_with(|| procfs::comm_of(pid).map(Arc::from));
        if let Some(comm) = comm {
            match self.last.get(&s.id) {
                Some(known) if known == comm => {}
                _ => {
                    self.last.insert(s.id, Arc::clone(comm));
                }
            }
        }
    }

    /// The command holding `id`'s peer, or that held it last.
    pub fn of(&self, id: SockId) -> Option<Arc<str>> {
        self.last.get(&id).cloned()
    }

    /// Ends a report: forgets the sockets no longer in the table, and this report's reads.
    pub fn end_report(&mut self, in_table: impl Fn(SockId) -> bool) {
        self.last.retain(|&id, _| in_table(id));
        self.comms.clear();
    }
}
