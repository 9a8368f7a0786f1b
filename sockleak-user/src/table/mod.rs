//! The socket table: every open TCP/UDP socket sockleak knows about, keyed by its [`SockId`].
//!
//! Fed by kernel events (`ingest`: created, accept returned, creation completed, state
//! changed, released; births from the ring or, at each report, from the kernel's newborn
//! array) and reconciled once per report
//! against sock_diag and the holder scan (`reconcile`), which are the ground truth: a release
//! the ring buffer lost cannot leave a ghost behind, because a socket that no process holds any
//! more is dropped after two consecutive scans. Sockets a process closed that linger in the
//! kernel are counted apart (`churn`). The table does no I/O of its own: what it needs to know
//! about processes comes through [`Processes`].
mod churn;
mod ingest;
mod reconcile;
mod socket;
#[cfg(test)]
pub(crate) mod testing;
#[cfg(test)]
mod tests;

use std::{
    collections::{HashMap, HashSet, VecDeque},
    sync::Arc,
};

use sockleak_common::{Protocol, SockEvent, SockId, TcpState};

pub use self::{
    churn::Churn,
    socket::{Evidence, Owner, Socket, kernel_clock_ns},
};
use self::{ingest::Unowned, socket::Owners};
use crate::stacks::identity::{CreationStack, StackKey};

/// Marks a table key made from a socket's address where no cookie was known; real cookies
/// count up from 1 and never reach it.
const SYNTHETIC_KEY: u64 = 1 << 63;

/// The key of a socket known only by its `struct sock` address `skaddr` in namespace `netns`.
fn synthetic_id(skaddr: u64, netns: u32) -> SockId {
    SockId::new(skaddr | SYNTHETIC_KEY, netns)
}

fn is_synthetic(id: SockId) -> bool {
    id.cookie & SYNTHETIC_KEY != 0
}

/// What the table asks about processes: /proc in sockleak, made-up answers in its tests.
pub trait Processes {
    /// The process name (`comm`); `None` if the process is gone.
    fn comm(&self, pid: u32) -> Option<String>;
    /// The process's cgroup v2 path.
    fn cgroup(&self, pid: u32) -> Option<String>;
    /// The TCP and UDP sockets the process holds, as (inode, protocol). Asked only about the
    /// few owners whose sockets no other evidence can judge.
    fn inet_sockets(&self, pid: u32) -> Vec<(u64, Protocol)>;
}

/// What the table did with events, for `stats` in reports.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct TableStats {
    /// Events read from the ring buffer by userspace.
    pub events: u64,
    pub created: u64,
    pub accepted: u64,
    pub released: u64,
    /// Dropped by reconciliation: their release event was lost or never came.
    pub reconciled: u64,
    pub pre_existing: u64,
    /// Found by reconciliation after their creation event was lost.
    pub recovered: u64,
    /// Found by a look, of a kind no hook sees made (UNIX sockets, with `--family unix`).
    pub listed: u64,
    /// UNIX sockets first seen connecting (no hook sees their birth).
    pub connected: u64,
    /// Sockets not tracked because the table was full.
    pub dropped_table_full: u64,
    /// Unowned TCP sockets forgotten because that list was full.
    pub dropped_unowned: u64,
    /// Events for protocols sockleak does not track (raw, ICMP, SCTP...).
    pub ignored: u64,
    /// Events of a kind this build does not know.
    pub malformed: u64,
}

/// Maps keyed by numbers the kernel assigns (cookies, inodes, `struct sock` addresses): no one
/// chooses them to collide, so a fast hash serves, and every event and report does several
/// lookups (SipHash was a large part of a report over many sockets).
type KernelKeyed<K, V> = HashMap<K, V, foldhash::fast::RandomState>;

pub struct SocketTable {
    sockets: KernelKeyed<SockId, Socket>,
    /// Recently released TCP sockets (identity, owner pid and name), oldest first, for churn
    /// attribution. A ring searched once per report rather than a map updated twice per
    /// connection: under churn, a map with an eviction per insert spent much of sockleak's
    /// userspace time probing past its own tombstones.
    released: VecDeque<(SockId, u32, Arc<str>)>,
    churn: HashMap<u32, Churn>,
    /// Held sockets unknown to the table at the last scan: recovered if still so at the next.
    unknown_held_last_scan: HashSet<SockId>,
    look: reconcile::Look,
    id_by_skaddr: KernelKeyed<u64, SockId>,
    /// TCP sockets seen only through state changes, by `struct sock` address: accept children
    /// waiting for `accept()`.
    unowned: KernelKeyed<u64, Unowned>,
    unowned_order: VecDeque<u64>,
    /// Listening sockets by namespace (as their [`SockId`] names it) and local port, for
    /// connections announced through them: built when first needed, dropped whenever a socket
    /// starts or stops listening.
    listeners_by_port: Option<HashMap<(u32, u16), Vec<SockId>>>,
    /// Connections announced before the table knew their listener, whose stack it gives them
    /// once the births and events of a report are in ([`SocketTable::adopt_newborn`]).
    listener_stack_wanted: Vec<SockId>,
    /// Whether the kernel keeps newborn sockets in its own map until a report reads them
    /// ([`SocketTable::adopt_newborn`]): an event about a socket the table does not know may
    /// then be about one of those, and waits in `deferred` for it.
    newborn_in_kernel: bool,
    deferred: Vec<SockEvent>,
    capacity: usize,
    owners: Owners,
    /// sockleak's own process, whose sockets (its runtime's wake-up socketpair, say) a look
    /// never adopts: they are no service's.
    own_pid: Option<u32>,
    pub stats: TableStats,
}

impl SocketTable {
    pub fn new(capacity: usize) -> Self {
        Self {
            sockets: KernelKeyed::default(),
            released: VecDeque::new(),
            churn: HashMap::new(),
            unknown_held_last_scan: HashSet::new(),
            look: reconcile::Look::default(),
            id_by_skaddr: KernelKeyed::default(),
            unowned: KernelKeyed::default(),
            unowned_order: VecDeque::new(),
            listeners_by_port: None,
            listener_stack_wanted: Vec::new(),
            newborn_in_kernel: false,
            deferred: Vec::new(),
            capacity,
            owners: Owners::default(),
            own_pid: None,
            stats: TableStats::default(),
        }
    }

    /// Sockets only `pid` (sockleak itself) holds are never adopted by a look.
    pub fn leave_out_sockets_of(&mut self, pid: u32) {
        self.own_pid = Some(pid);
    }

    pub fn len(&self) -> usize {
        self.sockets.len()
    }

    pub fn is_empty(&self) -> bool {
        self.sockets.is_empty()
    }

    pub fn sockets(&self) -> impl Iterator<Item = &Socket> {
        self.sockets.values()
    }

    pub fn contains(&self, id: SockId) -> bool {
        self.sockets.contains_key(&id)
    }

    /// Names each socket's creation stack by what `resolve` makes of it (a copied stack by
    /// the unwound stack it turned out to be), so that one code path's sockets share one key.
    pub fn resolve_stacks(&mut self, mut resolve: impl FnMut(StackKey) -> Option<CreationStack>) {
        for socket in self.sockets.values_mut() {
            if let CreationStack::Taken(key) = socket.stack
                && let Some(resolved) = resolve(key)
            {
                socket.stack = resolved;
            }
        }
    }

    /// A cookie, when the event has one, is the only identity that counts: `struct sock`
    /// addresses are reused after free, so the address join is for cookie-less events only
    /// (the classic tracepoint fallback).
    fn lookup(&self, id: SockId, skaddr: u64) -> Option<SockId> {
        if id.is_known() {
            return self.sockets.contains_key(&id).then_some(id);
        }
        if skaddr != 0 {
            return self.id_by_skaddr.get(&skaddr).copied();
        }
        None
    }

    fn insert(&mut self, socket: Socket) {
        if is_synthetic(socket.id) && self.remove(socket.id) {
            // The same address-made key: the socket that had this address was freed.
            self.stats.released += 1;
        }
        if self.sockets.len() >= self.capacity {
            self.stats.dropped_table_full += 1;
            return;
        }
        if socket.skaddr != 0 {
            self.id_by_skaddr.insert(socket.skaddr, socket.id);
        }
        if socket.state == TcpState::LISTEN {
            self.listeners_by_port = None;
        }
        self.sockets.insert(socket.id, socket);
    }

    fn remove(&mut self, id: SockId) -> bool {
        match self.sockets.remove(&id) {
            Some(s) => {
                if s.skaddr != 0 && self.id_by_skaddr.get(&s.skaddr) == Some(&id) {
                    self.id_by_skaddr.remove(&s.skaddr);
                }
                if s.state == TcpState::LISTEN {
                    self.listeners_by_port = None;
                }
                true
            }
            None => false,
        }
    }
}

#[cfg(test)]
impl SocketTable {
    fn get(&self, cookie: u64) -> Option<&Socket> {
        self.sockets.values().find(|s| s.id.cookie == cookie)
    }
}
