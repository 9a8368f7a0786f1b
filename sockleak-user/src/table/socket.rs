//! One open socket as the table knows it: its owner, where it stands, and the evidence that
//! builds up about it over time (the raw material of verdicts).
use std::{
    collections::{HashMap, HashSet},
    sync::Arc,
};

use sockleak_common::{
    COMM_LEN, Endpoint, Family, Origin, Protocol, SockId, Task, TcpState, comm_bytes,
};

use crate::{
    holders::HolderPids,
    sockdiag::{DiagSocket, SkMem, TcpInfo},
    stacks::identity::CreationStack,
};

#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Owner {
    pub pid: u32,
    pub tid: u32,
    pub uid: u32,
    pub cgroup_id: u64,
    /// Shared: thousands of sockets of one process carry the same name.
    pub comm: Arc<str>,
}

impl Owner {
    /// The task this owner was made from ([`Owners::of_task`]), as the kernel side keeps one.
    pub fn task(&self) -> Task {
        Task {
            pid: self.pid,
            tid: self.tid,
            uid: self.uid,
            _pad: 0,
            cgroup_id: self.cgroup_id,
            comm: comm_bytes(&self.comm),
        }
    }
}

/// Owners shared between sockets: a socket factory's sockets all have the same one, and an
/// owner in each of 100,000 sockets was 4 MiB.
#[derive(Default)]
pub(super) struct Owners {
    shared: HashSet<Arc<Owner>, foldhash::fast::RandomState>,
    names: CommNames,
}

impl Owners {
    /// Owners come and go with threads; past this many the cache starts over (sockets keep
    /// theirs).
    const MAX: usize = 4096;

    pub(super) fn of_task(&mut self, task: &Task) -> Arc<Owner> {
        let owner = Owner {
            pid: task.pid,
            tid: task.tid,
            uid: task.uid,
            cgroup_id: task.cgroup_id,
            comm: self.names.of(&task.comm),
        };
        self.share(owner)
    }

    pub(super) fn share(&mut self, owner: Owner) -> Arc<Owner> {
        if let Some(shared) = self.shared.get(&owner) {
            return Arc::clone(shared);
        }
        if self.shared.len() >= Self::MAX {
            self.shared.clear();
        }
        let shared = Arc::new(owner);
        self.shared.insert(Arc::clone(&shared));
        shared
    }

    pub(super) fn names(&mut self) -> &mut CommNames {
        &mut self.names
    }
}

/// Process names as the kernel gives them (16 bytes) -> the shared string: a socket factory
/// creates thousands of sockets a second under one name, and decoding and allocating the name
/// for each was a large part of sockleak's time per event.
#[derive(Default)]
pub(super) struct CommNames(HashMap<[u8; COMM_LEN], Arc<str>, foldhash::fast::RandomState>);

impl CommNames {
    /// Names come and go with processes; past this many the cache starts over.
    pub(super) const MAX: usize = 4096;

    pub(super) fn of(&mut self, comm: &[u8; COMM_LEN]) -> Arc<str> {
        if let Some(name) = self.0.get(comm) {
            return Arc::clone(name);
        }
        if self.0.len() >= Self::MAX {
            self.0.clear();
        }
        let len = comm.iter().position(|&b| b == 0).unwrap_or(comm.len());
        let name: Arc<str> = Arc::from(String::from_utf8_lossy(&comm[..len]).as_ref());
        self.0.insert(*comm, Arc::clone(&name));
        name
    }

    #[cfg(test)]
    pub(super) fn len(&self) -> usize {
        self.0.len()
    }
}

#[derive(Clone, Debug)]
pub struct Socket {
    pub id: SockId,
    pub origin: Origin,
    pub owner: Arc<Owner>,
    pub family: Family,
    pub protocol: Protocol,
    /// CLOCK_MONOTONIC ns when created or accepted; for a socket found already open, the
    /// latest it can have been opened: when first seen, or earlier where the kernel's clocks
    /// tell ([`open_at_least_ns`]).
    pub created_ns: u64,
    pub state: TcpState,
    pub skaddr: u64,
    /// Socket inode; 0 until the fd is seen.
    pub inode: u64,
    pub local: Option<Endpoint>,
    pub remote: Option<Endpoint>,
    pub rx_queue: u32,
    pub tx_queue: u32,
    /// Pids holding an fd to this socket at the last scan.
    pub holders: HolderPids,
    /// The owner's stack at `socket()` or `accept()`.
    pub stack: CreationStack,
    pub(super) looked: Looked,
    pub evidence: Evidence,
}

/// What the table's looks at the kernel's view found of a socket.
#[derive(Clone, Copy, Debug, Default)]
pub(super) struct Looked {
    /// Consecutive looks that found nobody holding it.
    pub(super) unheld: u8,
    /// The last look whose dump listed it (0: none).
    pub(super) listed_in: u32,
}

/// A UNIX socket's other end.
#[derive(Clone, Debug, Default)]
pub struct UnixEvidence {
    /// Its inode: `None` for no peer, `Some(0)` for one already released.
    pub peer_inode: Option<u32>,
    /// Who held it at the last look.
    pub peer_holders: HolderPids,
    /// The first sample that found the peer released (`None` while it is not): no clock of
    /// the kernel's says since when, so the verdict counts from there.
    pub peer_gone_since_ns: Option<u64>,
    /// A listener: the first sample of the current stretch that found its queue of
    /// connections not yet accepted full (`None` while it is not).
    pub backlog_full_since_ns: Option<u64>,
}

/// What the kernel said about a socket over time: the raw material of verdicts.
#[derive(Clone, Debug, Default)]
pub struct Evidence {
    pub mem: Option<SkMem>,
    pub tcp: Option<TcpInfo>,
    /// Packets dropped because the receive queue was full; times the socket hit its memory limit.
    pub rcvqueue_full: u32,
    pub exceed_buf_limit: u32,
    /// When the socket entered its current state (CLOCK_MONOTONIC ns), as far as sockleak can
    /// tell: the transition itself where an event showed it, else the sample that first found
    /// the socket in it. Never earlier than the truth, so verdicts timed from it are never
    /// early; the kernel side sends few transitions, so most states are learned by samples.
    pub state_since_ns: u64,
    /// The last moment sockleak knew the socket in another state: the state began after it.
    /// Equal to `state_since_ns` where the transition was seen; `None` when the socket was
    /// already in it when sockleak first saw it (it began before the trace, or unseen).
    pub state_entered_after_ns: Option<u64>,
    /// The last event or sample that showed the current state.
    state_checked_ns: u64,
    /// Ever past CLOSE (connecting or connected), as opposed to a fresh unconnected socket.
    pub was_connected: bool,
    /// What only a UNIX socket has (boxed: inet sockets, most of a table, pay a pointer).
    pub unix: Option<Box<UnixEvidence>>,
    /// Last moment the owner is known to have had nothing unread or to have read something:
    /// a sample that saw it, or, at the first look at a socket holding unread data, when
    /// that data came in at the latest (tcp_info's time since data last arrived).
    pub rx_progress_ns: u64,
    /// The first sample of the current stretch without reading (`None` while nothing is
    /// unread): one sample cannot tell a slow reader from a stopped one, two can.
    pub rx_still_since_ns: Option<u64>,
    /// Last sample at which nothing was unacknowledged or the peer acknowledged something.
    pub tx_progress_ns: u64,
    consumed: Option<u64>,
    acked: Option<u64>,
    last_rx_queue: u32,
}

impl Evidence {
    /// `entered_now`: the socket entered `state` at `now_ns` (it was just created or
    /// accepted), rather than being found in it.
    pub(super) fn new(now_ns: u64, state: TcpState, entered_now: bool) -> Self {
        Self {
            state_since_ns: now_ns,
            state_entered_after_ns: entered_now.then_some(now_ns),
            state_checked_ns: now_ns,
            was_connected: connected_state(state),
            rx_progress_ns: now_ns,
            tx_progress_ns: now_ns,
            ..Self::default()
        }
    }
}

/// A tcp_info clock (milliseconds since something happened, counted in jiffies) as a lower
/// bound in nanoseconds: one jiffy less, at the coarsest tick a kernel has (100 Hz), since the
/// event may have come late in its tick.
pub fn kernel_clock_ns(ms: u32) -> u64 {
    u64::from(ms.saturating_sub(10)) * 1_000_000
}

/// How long a TCP connection sockleak found already open has been open, at least: tcp_info's
/// clocks (time since data was last sent or received, since an ACK last came) all start when
/// the connection is established, at the latest. 0 where they say nothing (listeners, UDP,
/// handshakes, which have no such clocks).
pub(super) fn open_at_least_ns(d: &DiagSocket) -> u64 {
    let established = matches!(
        d.state,
        TcpState::ESTABLISHED
            | TcpState::CLOSE_WAIT
            | TcpState::FIN_WAIT1
            | TcpState::FIN_WAIT2
            | TcpState::LAST_ACK
            | TcpState::CLOSING
    );
    match d.tcp {
        Some(info) if established && d.protocol == Protocol::Tcp => {
            let longest = info
                .last_data_sent_ms
                .max(info.last_data_recv_ms)
                .max(info.last_ack_recv_ms);
            kernel_clock_ns(longest)
        }
        _ => 0,
    }
}

/// A socket's end as the last sample found it. Compared first: ends rarely change, and a UNIX
/// name copied at every sample would be an allocation per socket and look.
fn sampled_end(end: &mut Option<Endpoint>, sampled: &Endpoint) {
    if end.as_ref() != Some(sampled) {
        *end = Some(sampled.clone());
    }
}

fn connected_state(state: TcpState) -> bool {
    !matches!(state, TcpState::CLOSE | TcpState::LISTEN)
}

impl Socket {
    /// A connection announced through its listener that no process has accepted yet, as far
    /// as the last look knows: no file, so no inode and no holder. Nobody's leak (yet): reports
    /// leave it out.
    pub fn awaiting_accept(&self) -> bool {
        self.origin == Origin::Accept && self.inode == 0
    }

    /// sock_diag lists every hashed socket; an unconnected TCP socket (CLOSE) or an unbound
    /// UDP one is not hashed, so its absence from the dump proves nothing. Every UNIX socket,
    /// bound or not, is in the table unix_diag walks.
    pub(super) fn may_be_unlisted(&self) -> bool {
        match self.protocol {
            Protocol::Tcp => self.state == TcpState::CLOSE,
            Protocol::Udp => self
                .local
                .as_ref()
                .and_then(Endpoint::port)
                .is_none_or(|port| port == 0),
            Protocol::UnixStream | Protocol::UnixDgram | Protocol::UnixSeqpacket => false,
        }
    }

    /// A state change event at `ts_ns`: the transition itself.
    pub(super) fn state_changed(&mut self, old_state: TcpState, state: TcpState, ts_ns: u64) {
        // The transition came from somewhere: a socket leaving LISTEN or a connecting or
        // connected state. The kernel side sends only some transitions, so the one before may
        // never have been seen.
        self.evidence.was_connected |= connected_state(old_state);
        // Our own idea of the old state may be stale (the kernel side sends few transitions),
        // so the event's says whether this is a change.
        if old_state != state || self.state != state {
            self.state = state;
            let e = &mut self.evidence;
            e.state_since_ns = ts_ns;
            e.state_entered_after_ns = Some(ts_ns);
        }
        self.state_checked(state, ts_ns);
    }

    /// A sample at `now_ns` found the socket in `state`: if that is new, it began some time
    /// since the last look.
    pub(super) fn state_sampled(&mut self, state: TcpState, now_ns: u64) {
        if state != self.state {
            self.state = state;
            let e = &mut self.evidence;
            e.state_since_ns = now_ns;
            e.state_entered_after_ns = Some(e.state_checked_ns);
        }
        self.state_checked(state, now_ns);
    }

    fn state_checked(&mut self, state: TcpState, now_ns: u64) {
        let e = &mut self.evidence;
        e.state_checked_ns = e.state_checked_ns.max(now_ns);
        e.was_connected |= connected_state(state);
    }

    /// What one sock_diag sample, taken just before `now_ns`, says about this socket.
    pub(super) fn observe(&mut self, d: &DiagSocket, now_ns: u64) {
        self.state_sampled(d.state, now_ns);
        sampled_end(&mut self.local, &d.local);
        sampled_end(&mut self.remote, &d.remote);
        self.rx_queue = d.rx_queue;
        self.tx_queue = d.tx_queue;
        if self.inode == 0 {
            self.inode = u64::from(d.inode);
        }
        self.sample(d, now_ns);
    }

    /// Folds one sock_diag sample into the progress tracking.
    fn sample(&mut self, d: &DiagSocket, now_ns: u64) {
        let unread = self.unread_bytes();
        let e = &mut self.evidence;
        e.mem = d.mem;
        e.tcp = d.tcp;
        if let Some(unix) = &d.unix {
            let u = e.unix.get_or_insert_default();
            u.peer_inode = unix.peer_inode;
            u.peer_gone_since_ns = match unix.peer_inode {
                Some(0) => Some(u.peer_gone_since_ns.unwrap_or(now_ns)),
                _ => None,
            };
            // Past the limit, as the kernel counts it: the next client waits or is refused.
            let full =
                d.state == TcpState::LISTEN && unix.pending.len() > unix.backlog_limit as usize;
            u.backlog_full_since_ns = match full {
                true => Some(u.backlog_full_since_ns.unwrap_or(now_ns)),
                false => None,
            };
        }
        match d.tcp {
            Some(info) if self.protocol == Protocol::Tcp => {
                // Bytes the owner consumed = bytes received - bytes still queued.
                let consumed = info.bytes_received.saturating_sub(u64::from(d.rx_queue));
                match e.consumed {
                    _ if unread == 0 => {
                        e.rx_progress_ns = now_ns;
                        e.rx_still_since_ns = None;
                    }
                    Some(before) if before != consumed => {
                        e.rx_progress_ns = now_ns;
                        e.rx_still_since_ns = Some(now_ns);
                    }
                    Some(_) => {}
                    None => {
                        // The first look. The oldest unread byte came in no later than the
                        // last data did, so it has waited at least that long; whether the
                        // owner read anything meanwhile, only the next look can tell.
                        let arrived =
                            now_ns.saturating_sub(kernel_clock_ns(info.last_data_recv_ms));
                        e.rx_progress_ns = e.rx_progress_ns.min(arrived);
                        e.rx_still_since_ns = Some(now_ns);
                    }
                }
                if self.tx_queue == 0 || e.acked.is_some_and(|a| a != info.bytes_acked) {
                    e.tx_progress_ns = now_ns;
                }
                e.consumed = Some(consumed);
                e.acked = Some(info.bytes_acked);
            }
            _ => {
                // UDP has no sequence numbers: a queue that shrank was read from.
                if unread == 0 || unread < e.last_rx_queue {
                    e.rx_progress_ns = now_ns;
                }
                e.rx_still_since_ns = match e.rx_still_since_ns {
                    _ if unread == 0 => None,
                    _ if unread < e.last_rx_queue => Some(now_ns),
                    Some(since) => Some(since),
                    None => Some(now_ns),
                };
                e.tx_progress_ns = now_ns;
            }
        }
        e.last_rx_queue = unread;
        self.bound_state_by_kernel_clocks(d, now_ns);
    }

    /// Nothing arrives on a connection after the peer's FIN but ACKs of what the owner still
    /// sends, and the FIN carries one: tcp_info's time since an ACK (or data) last arrived
    /// bounds from below how long a CLOSE_WAIT socket has been in that state, however long
    /// before sockleak it began.
    fn bound_state_by_kernel_clocks(&mut self, d: &DiagSocket, now_ns: u64) {
        let Some(info) = d.tcp.filter(|_| self.state == TcpState::CLOSE_WAIT) else {
            return;
        };
        let quiet_ms = info.last_ack_recv_ms.min(info.last_data_recv_ms);
        let e = &mut self.evidence;
        let entered_by = now_ns.saturating_sub(kernel_clock_ns(quiet_ms));
        // Never before the last moment it was known in another state.
        let entered_by = entered_by.max(e.state_entered_after_ns.unwrap_or(0));
        e.state_since_ns = e.state_since_ns.min(entered_by);
    }

    /// Bytes the owner has not read. A CLOSE_WAIT socket's receive sequence counts the peer's
    /// FIN, which is not data; and the FIN can only be consumed after all data before it, so a
    /// non-zero queue in these states always includes exactly one FIN.
    pub fn unread_bytes(&self) -> u32 {
        let fin_counted = self.protocol == Protocol::Tcp
            && matches!(
                self.state,
                TcpState::CLOSE_WAIT | TcpState::LAST_ACK | TcpState::CLOSING
            );
        if fin_counted {
            self.rx_queue.saturating_sub(1)
        } else {
            self.rx_queue
        }
    }
}
