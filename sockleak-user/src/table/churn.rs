//! Sockets a process closed that the kernel still keeps (TIME_WAIT, orphans still closing):
//! connection churn, not leaks, counted per process that released them.
use std::{collections::HashMap, sync::Arc};

use sockleak_common::{ReleasedSocket, SockId, TcpState};

use super::{KernelKeyed, SocketTable};
use crate::sockdiag::DiagSocket;

/// Released sockets remembered so their TIME_WAIT and orphan afterlife can be attributed.
const RELEASED_MEMORY: usize = 65_536;

/// A process's sockets that outlived their file: normal after close, but costly in bulk.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Churn {
    pub comm: Arc<str>,
    pub time_wait: u32,
    pub orphaned: u32,
}

impl SocketTable {
    /// A TCP socket of `pid` was released: its TIME_WAIT or orphan may linger in the kernel.
    pub(super) fn remember_release(&mut self, id: SockId, pid: u32, comm: Arc<str>) {
        if self.released.len() == RELEASED_MEMORY {
            self.released.pop_front();
        }
        self.released.push_back((id, pid, comm));
    }

    /// Whether any TCP socket was seen released lately: only then can a TIME_WAIT socket be
    /// attributed to a process, and worth dumping.
    pub fn remembers_releases(&self) -> bool {
        !self.released.is_empty()
    }

    /// TIME_WAIT and orphaned (FIN_WAIT, LAST_ACK, CLOSING without a file) sockets per process,
    /// as [`SocketTable::count_churn`] last counted them.
    pub fn churn(&self) -> &HashMap<u32, Churn> {
        &self.churn
    }

    /// Sockets a process closed that the kernel still keeps: TIME_WAIT ones (by identity) and
    /// orphans still closing (in `diag` without an inode), per process that released them,
    /// whether the table saw the release or the kernel logged it (`released_unseen`: sockets
    /// released before any report read them).
    pub fn count_churn(
        &mut self,
        diag: &[DiagSocket],
        time_wait: &[SockId],
        released_unseen: &[ReleasedSocket],
    ) {
        self.churn.clear();
        let names = self.owners.names();
        let unseen: Vec<(SockId, u32, Arc<str>)> = released_unseen
            .iter()
            .map(|r| (SockId::new(r.cookie, r.netns), r.pid, names.of(&r.comm)))
            .collect();
        let owner_of: KernelKeyed<SockId, (u32, &Arc<str>)> = unseen
            .iter()
            .chain(&self.released)
            .map(|(id, pid, comm)| (*id, (*pid, comm)))
            .collect();
        let lingering = diag
            .iter()
            .filter(|d| d.inode == 0)
            .map(|d| (d.id, d.state))
            .chain(time_wait.iter().map(|&id| (id, TcpState::TIME_WAIT)));
        for (id, state) in lingering {
            let Some(&(pid, comm)) = owner_of.get(&id) else {
                continue;
            };
            let entry = self.churn.entry(pid).or_insert_with(|| Churn {
                comm: comm.clone(),
                ..Churn::default()
            });
            match state {
                TcpState::TIME_WAIT => entry.time_wait += 1,
                TcpState::FIN_WAIT1
                | TcpState::FIN_WAIT2
                | TcpState::CLOSING
                | TcpState::LAST_ACK => entry.orphaned += 1,
                _ => {}
            }
        }
    }
}
