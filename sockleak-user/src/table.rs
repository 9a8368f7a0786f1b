//! The socket table: every open TCP/UDP socket sockleak knows about, keyed by socket cookie.
//!
//! Fed by kernel events (created, fd installed, state changed, released) and reconciled once per
//! interval against sock_diag and the holder scan (`holders`), which are the ground truth: a
//! release the ring buffer lost cannot leave a ghost behind, because a socket that no process
//! holds any more is dropped after two consecutive scans.
use std::{
    collections::{HashMap, HashSet, VecDeque},
    net::SocketAddr,
    sync::Arc,
};

use sockleak_common::{COMM_LEN, EventKind, Hook, SockEvent, Task};

use crate::{
    cgroups,
    filter::Filter,
    holders::Holders,
    procfs,
    sockdiag::{DiagSocket, IPPROTO_TCP, IPPROTO_UDP, SkMem, TcpInfo},
    symbolize::CreationStack,
};

pub const TCP_ESTABLISHED: u8 = 1;
pub const TCP_FIN_WAIT1: u8 = 4;
pub const TCP_FIN_WAIT2: u8 = 5;
pub const TCP_TIME_WAIT: u8 = 6;
pub const TCP_CLOSE: u8 = 7;
pub const TCP_CLOSE_WAIT: u8 = 8;
pub const TCP_LAST_ACK: u8 = 9;
pub const TCP_LISTEN: u8 = 10;
pub const TCP_CLOSING: u8 = 11;

/// How many TCP sockets seen only through state changes (children waiting in an accept queue)
/// are remembered until a process accepts them.
const UNOWNED_CAPACITY: usize = 65_536;
/// A socket younger than this may not have its fd installed yet; it is never judged a ghost.
const GHOST_GRACE_NS: u64 = 1_000_000_000;
/// Consecutive holder scans without a holder before a socket is declared released.
const GHOST_SCANS: u8 = 2;
/// Marks a table key made from a socket's address where no cookie was known; real cookies
/// count up from 1 and never reach it.
const SYNTHETIC_KEY: u64 = 1 << 63;
/// Released sockets remembered so their TIME_WAIT and orphan afterlife can be attributed.
const RELEASED_MEMORY: usize = 65_536;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Origin {
    /// Seen being created or accepted.
    Traced,
    /// Already open when sockleak started.
    PreExisting,
    /// Found open and held by a reconciliation although no event announced it (its creation
    /// event was lost).
    Recovered,
}

/// How the owner came to have the socket.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Site {
    Socket,
    Accept,
    PreExisting,
    Recovered,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Owner {
    pub pid: u32,
    pub tid: u32,
    pub uid: u32,
    pub cgroup_id: u64,
    /// Shared: thousands of sockets of one process carry the same name.
    pub comm: Arc<str>,
}

impl Owner {
    fn from_task(task: &Task, names: &mut CommNames) -> Self {
        Self {
            pid: task.pid,
            tid: task.tid,
            uid: task.uid,
            cgroup_id: task.cgroup_id,
            comm: names.of(&task.comm),
        }
    }
}

/// Process names as the kernel gives them (16 bytes) -> the shared string: a socket factory
/// creates thousands of sockets a second under one name, and decoding and allocating it for
/// each was a tenth of sockleak's time per event.
#[derive(Default)]
struct CommNames(HashMap<[u8; COMM_LEN], Arc<str>, foldhash::fast::RandomState>);

impl CommNames {
    /// Names come and go with processes; past this many the cache starts over.
    const MAX: usize = 4096;

    fn of(&mut self, comm: &[u8; COMM_LEN]) -> Arc<str> {
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
}

#[derive(Clone, Debug)]
pub struct Socket {
    pub cookie: u64,
    pub origin: Origin,
    pub site: Site,
    pub owner: Owner,
    /// AF_INET / AF_INET6; 0 until known.
    pub family: u8,
    pub protocol: u8,
    /// CLOCK_MONOTONIC ns when created or accepted (when first seen, for pre-existing sockets).
    pub created_ns: u64,
    pub state: u8,
    pub skaddr: u64,
    /// Socket inode; 0 until the fd is seen.
    pub inode: u64,
    pub local: Option<SocketAddr>,
    pub remote: Option<SocketAddr>,
    pub rx_queue: u32,
    pub tx_queue: u32,
    /// Pids holding an fd to this socket at the last scan.
    pub holders: Vec<u32>,
    /// The owner's stack at `socket()` or `accept()`.
    pub stack: CreationStack,
    unheld_scans: u8,
    pub evidence: Evidence,
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
    /// Last sample at which the owner had nothing unread or had read something since.
    pub rx_progress_ns: u64,
    /// Last sample at which nothing was unacknowledged or the peer acknowledged something.
    pub tx_progress_ns: u64,
    consumed: Option<u64>,
    acked: Option<u64>,
    last_rx_queue: u32,
}

impl Evidence {
    /// `entered_now`: the socket entered `state` at `now_ns` (it was just created or
    /// accepted), rather than being found in it.
    fn new(now_ns: u64, state: u8, entered_now: bool) -> Self {
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

fn connected_state(state: u8) -> bool {
    !matches!(state, TCP_CLOSE | TCP_LISTEN)
}

impl Socket {
    /// sock_diag lists every hashed socket; an unconnected TCP socket (CLOSE) or an unbound
    /// UDP one is not hashed, so its absence from the dump proves nothing.
    fn may_be_unlisted(&self) -> bool {
        match self.protocol {
            IPPROTO_TCP => self.state == TCP_CLOSE,
            IPPROTO_UDP => self.local.is_none_or(|a| a.port() == 0),
            _ => false,
        }
    }

    /// A state change event at `ts_ns`: the transition itself.
    fn state_changed(&mut self, old_state: u8, state: u8, ts_ns: u64) {
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
    fn state_sampled(&mut self, state: u8, now_ns: u64) {
        if state != self.state {
            self.state = state;
            let e = &mut self.evidence;
            e.state_since_ns = now_ns;
            e.state_entered_after_ns = Some(e.state_checked_ns);
        }
        self.state_checked(state, now_ns);
    }

    fn state_checked(&mut self, state: u8, now_ns: u64) {
        let e = &mut self.evidence;
        e.state_checked_ns = e.state_checked_ns.max(now_ns);
        e.was_connected |= connected_state(state);
    }

    /// Folds one sock_diag sample into the progress tracking.
    fn sample(&mut self, d: &DiagSocket, now_ns: u64) {
        let unread = self.unread_bytes();
        let e = &mut self.evidence;
        e.mem = d.mem;
        e.tcp = d.tcp;
        match d.tcp {
            Some(info) if self.protocol == IPPROTO_TCP => {
                // Bytes the owner consumed = bytes received - bytes still queued.
                let consumed = info.bytes_received.saturating_sub(u64::from(d.rx_queue));
                if unread == 0 || e.consumed.is_some_and(|c| c != consumed) {
                    e.rx_progress_ns = now_ns;
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
                e.tx_progress_ns = now_ns;
            }
        }
        e.last_rx_queue = unread;
    }

    /// Bytes the owner has not read. A CLOSE_WAIT socket's receive sequence counts the peer's
    /// FIN, which is not data; and the FIN can only be consumed after all data before it, so a
    /// non-zero queue in these states always includes exactly one FIN.
    pub fn unread_bytes(&self) -> u32 {
        let fin_counted = self.protocol == IPPROTO_TCP
            && matches!(self.state, TCP_CLOSE_WAIT | TCP_LAST_ACK | TCP_CLOSING);
        if fin_counted {
            self.rx_queue.saturating_sub(1)
        } else {
            self.rx_queue
        }
    }
}

/// What the table did with events, for `stats` in reports.
#[derive(Clone, Debug, Default, PartialEq, Eq, serde::Serialize)]
pub struct TableStats {
    /// Events read from the ring buffer by userspace.
    #[serde(rename = "events_seen")]
    pub events: u64,
    pub created: u64,
    pub accepted: u64,
    pub released: u64,
    /// Dropped by reconciliation: their release event was lost or never came.
    pub reconciled: u64,
    pub pre_existing: u64,
    /// Found by reconciliation after their creation event was lost.
    pub recovered: u64,
    /// Sockets not tracked because the table was full.
    pub dropped_table_full: u64,
    /// Unowned TCP sockets forgotten because that list was full.
    pub dropped_unowned: u64,
    /// Events for protocols sockleak does not track (raw, ICMP, SCTP...).
    pub ignored: u64,
    #[serde(skip)]
    pub malformed: u64,
}

#[derive(Clone, Copy, Debug)]
struct Unowned {
    cookie: u64,
    state: u8,
    addresses: Option<(SocketAddr, SocketAddr)>,
}

/// The state-change tracepoint fires after the kernel released the port on the way to CLOSE
/// (and before it assigned one on the way to SYN_SENT): a zero port never replaces a known one.
fn merge_addresses(
    known: (Option<SocketAddr>, Option<SocketAddr>),
    new: (SocketAddr, SocketAddr),
) -> (Option<SocketAddr>, Option<SocketAddr>) {
    let pick = |old: Option<SocketAddr>, new: SocketAddr| match old {
        Some(old) if new.port() == 0 => Some(old),
        _ => Some(new),
    };
    (pick(known.0, new.0), pick(known.1, new.1))
}

/// Local and remote address carried by a state-change event, if the kernel side read them.
fn event_addresses(ev: &SockEvent) -> Option<(SocketAddr, SocketAddr)> {
    use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
    if ev.sport == 0 && ev.dport == 0 {
        return None;
    }
    let ip = |b: &[u8; 16]| -> Option<IpAddr> {
        match ev.family {
            2 => Some(IpAddr::V4(Ipv4Addr::new(b[0], b[1], b[2], b[3]))),
            10 => Some(IpAddr::V6(Ipv6Addr::from(*b))),
            _ => None,
        }
    };
    Some((
        SocketAddr::new(ip(&ev.saddr)?, ev.sport),
        SocketAddr::new(ip(&ev.daddr)?, ev.dport),
    ))
}

/// A process's sockets that outlived their file: normal after close, but costly in bulk.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Churn {
    pub comm: Arc<str>,
    pub time_wait: u32,
    pub orphaned: u32,
}

/// Maps keyed by numbers the kernel assigns (cookies, inodes, `struct sock` addresses): no one
/// chooses them to collide, so a fast hash serves, and every event and report does several
/// lookups (SipHash was a tenth of a report over 100,000 sockets).
type KernelKeyed<K, V> = HashMap<K, V, foldhash::fast::RandomState>;

pub struct SocketTable {
    sockets: KernelKeyed<u64, Socket>,
    /// Recently released TCP sockets (cookie, owner pid and name), oldest first, for churn
    /// attribution. A ring searched once per report rather than a map updated twice per
    /// connection: under churn, a map with an eviction per insert spent a third of sockleak's
    /// userspace time probing past its own tombstones.
    released: VecDeque<(u64, u32, Arc<str>)>,
    churn: HashMap<u32, Churn>,
    /// Held sockets unknown to the table at the last scan: recovered if still so at the next.
    unknown_held_last_scan: HashSet<u64>,
    cookie_by_skaddr: KernelKeyed<u64, u64>,
    /// TCP sockets seen only through state changes, by `struct sock` address: accept children
    /// waiting for `accept()`.
    unowned: KernelKeyed<u64, Unowned>,
    unowned_order: VecDeque<u64>,
    capacity: usize,
    comm_names: CommNames,
    pub stats: TableStats,
}

impl SocketTable {
    pub fn new(capacity: usize) -> Self {
        Self {
            sockets: KernelKeyed::default(),
            released: VecDeque::new(),
            churn: HashMap::new(),
            unknown_held_last_scan: HashSet::new(),
            cookie_by_skaddr: KernelKeyed::default(),
            unowned: KernelKeyed::default(),
            unowned_order: VecDeque::new(),
            capacity,
            comm_names: CommNames::default(),
            stats: TableStats::default(),
        }
    }

    pub fn len(&self) -> usize {
        self.sockets.len()
    }

    pub fn sockets(&self) -> impl Iterator<Item = &Socket> {
        self.sockets.values()
    }

    pub fn apply(&mut self, ev: &SockEvent) {
        self.stats.events += 1;
        match EventKind::from_u32(ev.kind) {
            Some(EventKind::Created) => self.on_created(ev),
            Some(EventKind::FdInstalled) => self.on_fd_installed(ev),
            Some(EventKind::StateChanged) => self.on_state_changed(ev),
            Some(EventKind::Released) => self.on_released(ev),
            Some(kind @ (EventKind::RcvQueueFull | EventKind::ExceedBufLimit)) => {
                self.on_pressure(ev, kind)
            }
            None => self.stats.malformed += 1,
        }
    }

    fn on_created(&mut self, ev: &SockEvent) {
        let protocol = ev.protocol as u8;
        if ev.protocol > 255 || !matches!(protocol, IPPROTO_TCP | IPPROTO_UDP) {
            self.stats.ignored += 1;
            return;
        }
        let owner = Owner::from_task(&ev.task, &mut self.comm_names);
        if let Some(existing) = self.sockets.get_mut(&ev.cookie) {
            // Created between attaching and the pre-existing scan: the event knows better.
            existing.origin = Origin::Traced;
            existing.site = Site::Socket;
            existing.owner = owner;
            existing.created_ns = ev.ts_ns;
            existing.stack = CreationStack::of(ev);
            return;
        }
        self.stats.created += 1;
        self.insert(Socket {
            cookie: ev.cookie,
            origin: Origin::Traced,
            site: Site::Socket,
            owner,
            family: ev.family as u8,
            protocol,
            created_ns: ev.ts_ns,
            state: TCP_CLOSE,
            skaddr: ev.skaddr,
            inode: ev.inode,
            local: None,
            remote: None,
            rx_queue: 0,
            tx_queue: 0,
            holders: Vec::new(),
            stack: CreationStack::of(ev),
            unheld_scans: 0,
            evidence: Evidence::new(ev.ts_ns, TCP_CLOSE, true),
        });
    }

    fn on_fd_installed(&mut self, ev: &SockEvent) {
        let mut known = self.lookup(ev.cookie, ev.skaddr);
        if let Some(stale) = known.filter(|&key| ev.cookie == 0 && self.reused_address(key, ev)) {
            // Joined by address only, to a socket with another file: its `struct sock` was
            // freed and the memory reused, so it is certainly released, whatever its (cookie
            // keyed) release event could not find.
            self.remove(stale);
            self.stats.released += 1;
            known = None;
        }
        if let Some(cookie) = known {
            if let Some(s) = self.sockets.get_mut(&cookie) {
                s.inode = ev.inode;
                if s.stack == CreationStack::Unknown {
                    s.stack = CreationStack::of(ev);
                }
                if s.skaddr != ev.skaddr && ev.skaddr != 0 {
                    s.skaddr = ev.skaddr;
                    self.cookie_by_skaddr.insert(ev.skaddr, cookie);
                }
            }
            return;
        }
        let accepted =
            ev.hook == Hook::SysExitAccept as u32 || ev.hook == Hook::SysExitAccept4 as u32;
        if !accepted {
            // socket() of a protocol we do not track (its Created event was ignored).
            return;
        }
        // An unowned entry at this address from an earlier socket (cookies differ) is stale.
        let unowned = self
            .unowned
            .remove(&ev.skaddr)
            .filter(|u| ev.cookie == 0 || u.cookie == 0 || u.cookie == ev.cookie);
        let cookie = match (ev.cookie, unowned) {
            (c, _) if c != 0 => c,
            (_, Some(u)) if u.cookie != 0 => u.cookie,
            // No cookie anywhere (classic tracepoint fallback): a synthetic key that cannot
            // collide with real cookies, which count up from 1.
            _ => ev.skaddr | SYNTHETIC_KEY,
        };
        self.stats.accepted += 1;
        let state = unowned.map_or(TCP_ESTABLISHED, |u| u.state);
        let addresses = unowned.and_then(|u| u.addresses);
        let owner = Owner::from_task(&ev.task, &mut self.comm_names);
        self.insert(Socket {
            cookie,
            origin: Origin::Traced,
            site: Site::Accept,
            owner,
            family: ev.family as u8,
            protocol: IPPROTO_TCP,
            created_ns: ev.ts_ns,
            state,
            skaddr: ev.skaddr,
            inode: ev.inode,
            local: addresses.map(|a| a.0),
            remote: addresses.map(|a| a.1),
            rx_queue: 0,
            tx_queue: 0,
            holders: Vec::new(),
            stack: CreationStack::of(ev),
            unheld_scans: 0,
            evidence: Evidence::new(ev.ts_ns, state, true),
        });
    }

    fn on_state_changed(&mut self, ev: &SockEvent) {
        let new_state = ev.new_state as u8;
        if let Some(cookie) = self.lookup(ev.cookie, ev.skaddr) {
            if let Some(s) = self.sockets.get_mut(&cookie) {
                s.state_changed(ev.old_state as u8, new_state, ev.ts_ns);
                if let Some(addresses) = event_addresses(ev) {
                    (s.local, s.remote) = merge_addresses((s.local, s.remote), addresses);
                }
                if s.skaddr == 0 && ev.skaddr != 0 {
                    s.skaddr = ev.skaddr;
                    self.cookie_by_skaddr.insert(ev.skaddr, cookie);
                }
            }
            return;
        }
        if new_state == TCP_CLOSE {
            // Died before anyone accepted it.
            self.unowned.remove(&ev.skaddr);
            return;
        }
        let previous = self.unowned.get(&ev.skaddr).and_then(|u| u.addresses);
        let addresses = match (previous, event_addresses(ev)) {
            (Some(old), Some(new)) => {
                let (l, r) = merge_addresses((Some(old.0), Some(old.1)), new);
                l.zip(r)
            }
            (old, new) => new.or(old),
        };
        let entry = Unowned {
            cookie: ev.cookie,
            state: new_state,
            addresses,
        };
        if self.unowned.insert(ev.skaddr, entry).is_none() {
            self.unowned_order.push_back(ev.skaddr);
            while self.unowned.len() > UNOWNED_CAPACITY {
                let Some(oldest) = self.unowned_order.pop_front() else {
                    break;
                };
                if self.unowned.remove(&oldest).is_some() {
                    self.stats.dropped_unowned += 1;
                }
            }
            // Keys removed elsewhere linger in the order queue; compact when it drifts.
            if self.unowned_order.len() > 2 * UNOWNED_CAPACITY {
                let live = &self.unowned;
                self.unowned_order.retain(|k| live.contains_key(k));
            }
        }
    }

    fn on_released(&mut self, ev: &SockEvent) {
        if let Some(s) = self.sockets.get(&ev.cookie)
            && s.protocol == IPPROTO_TCP
            && s.state != TCP_LISTEN
        {
            if self.released.len() == RELEASED_MEMORY {
                self.released.pop_front();
            }
            self.released
                .push_back((ev.cookie, s.owner.pid, s.owner.comm.clone()));
        }
        if self.remove(ev.cookie) {
            self.stats.released += 1;
        }
    }

    fn on_pressure(&mut self, ev: &SockEvent, kind: EventKind) {
        let Some(cookie) = self.lookup(ev.cookie, ev.skaddr) else {
            return;
        };
        if let Some(s) = self.sockets.get_mut(&cookie) {
            let counter = match kind {
                EventKind::RcvQueueFull => &mut s.evidence.rcvqueue_full,
                _ => &mut s.evidence.exceed_buf_limit,
            };
            *counter = counter.saturating_add(1);
        }
    }

    /// Whether any TCP socket was seen released lately: only then can a TIME_WAIT socket be
    /// attributed to a process, and worth dumping.
    pub fn remembers_releases(&self) -> bool {
        !self.released.is_empty()
    }

    /// TIME_WAIT and orphaned (FIN_WAIT, LAST_ACK, CLOSING without a file) sockets per process,
    /// as [`SocketTable::count_churn`] last counted them: connection churn, not leaks.
    pub fn churn(&self) -> &HashMap<u32, Churn> {
        &self.churn
    }

    fn reused_address(&self, key: u64, ev: &SockEvent) -> bool {
        self.sockets
            .get(&key)
            .is_some_and(|s| s.inode != 0 && ev.inode != 0 && s.inode != ev.inode)
    }

    /// A cookie, when the event has one, is the only identity that counts: `struct sock`
    /// addresses are reused after free, so the address join is for cookie-less events only
    /// (the classic tracepoint fallback).
    fn lookup(&self, cookie: u64, skaddr: u64) -> Option<u64> {
        if cookie != 0 {
            return self.sockets.contains_key(&cookie).then_some(cookie);
        }
        if skaddr != 0 {
            return self.cookie_by_skaddr.get(&skaddr).copied();
        }
        None
    }

    fn insert(&mut self, socket: Socket) {
        if socket.cookie & SYNTHETIC_KEY != 0 && self.remove(socket.cookie) {
            // The same address-made key: the socket that had this address was freed.
            self.stats.released += 1;
        }
        if self.sockets.len() >= self.capacity {
            self.stats.dropped_table_full += 1;
            return;
        }
        if socket.skaddr != 0 {
            self.cookie_by_skaddr.insert(socket.skaddr, socket.cookie);
        }
        self.sockets.insert(socket.cookie, socket);
    }

    fn remove(&mut self, cookie: u64) -> bool {
        match self.sockets.remove(&cookie) {
            Some(s) => {
                if s.skaddr != 0 && self.cookie_by_skaddr.get(&s.skaddr) == Some(&cookie) {
                    self.cookie_by_skaddr.remove(&s.skaddr);
                }
                true
            }
            None => false,
        }
    }

    /// Adds the sockets that were open before sockleak started: every socket sock_diag lists
    /// that some process `filter` follows holds an fd to. The lowest such pid is the owner.
    pub fn seed_pre_existing(
        &mut self,
        diag: &[DiagSocket],
        holders: &Holders,
        now_ns: u64,
        filter: &Filter,
    ) {
        self.stats.pre_existing +=
            self.adopt_held(diag, holders, now_ns, Origin::PreExisting, filter, |_| true);
    }

    /// Held sockets the table does not know, by cookie.
    fn unknown_held(&self, diag: &[DiagSocket], holders: &Holders) -> HashSet<u64> {
        diag.iter()
            .filter(|d| d.inode != 0 && !self.sockets.contains_key(&d.cookie))
            .filter(|d| !holders.of(u64::from(d.inode)).is_empty())
            .map(|d| d.cookie)
            .collect()
    }

    /// Adds held sockets the table does not know and `admit` accepts, as `origin`, if a
    /// process `filter` follows holds them (as the kernel would have sent them); returns how
    /// many.
    fn adopt_held(
        &mut self,
        diag: &[DiagSocket],
        holders: &Holders,
        now_ns: u64,
        origin: Origin,
        filter: &Filter,
        admit: impl Fn(u64) -> bool,
    ) -> u64 {
        let mut adopted = 0;
        // One read of /proc/PID/{comm,cgroup} per process, however many sockets it holds.
        let mut followed: HashMap<u32, Option<Arc<str>>> = HashMap::new();
        for d in diag {
            if d.inode == 0
                || self.sockets.contains_key(&d.cookie)
                || !filter.follows_kind(d.family, d.protocol)
                || !admit(d.cookie)
            {
                continue;
            }
            if self.sockets.len() >= self.capacity {
                break; // already counted as dropped when their events came
            }
            let pids = holders.of(u64::from(d.inode));
            let owner = pids.iter().find_map(|&pid| {
                let comm = followed.entry(pid).or_insert_with(|| {
                    let comm = procfs::comm_of(pid).unwrap_or_default();
                    filter
                        .follows_process(pid, &comm, || cgroups::path_of_process(pid))
                        .then(|| Arc::from(comm.as_str()))
                });
                comm.clone().map(|comm| (pid, comm))
            });
            let Some((pid, comm)) = owner else {
                continue;
            };
            adopted += 1;
            self.insert(Socket {
                cookie: d.cookie,
                origin,
                site: match origin {
                    Origin::Recovered => Site::Recovered,
                    _ => Site::PreExisting,
                },
                owner: Owner {
                    pid,
                    tid: pid,
                    uid: d.uid,
                    cgroup_id: 0,
                    comm,
                },
                family: d.family,
                protocol: d.protocol,
                created_ns: now_ns,
                state: d.state,
                skaddr: 0,
                inode: u64::from(d.inode),
                local: Some(d.local),
                remote: Some(d.remote),
                rx_queue: d.rx_queue,
                tx_queue: d.tx_queue,
                holders: pids.to_vec(),
                stack: CreationStack::Unknown,
                unheld_scans: 0,
                evidence: Evidence::new(now_ns, d.state, false),
            });
        }
        adopted
    }

    /// Sockets a process closed that the kernel still keeps: TIME_WAIT ones (by cookie) and
    /// orphans still closing (in `diag` without an inode), per process that released them.
    pub fn count_churn(&mut self, diag: &[DiagSocket], time_wait: &[u64]) {
        self.churn.clear();
        let owner_of: KernelKeyed<u64, (u32, &Arc<str>)> = self
            .released
            .iter()
            .map(|(cookie, pid, comm)| (*cookie, (*pid, comm)))
            .collect();
        let lingering = diag
            .iter()
            .filter(|d| d.inode == 0)
            .map(|d| (d.cookie, d.state))
            .chain(time_wait.iter().map(|&cookie| (cookie, TCP_TIME_WAIT)));
        for (cookie, state) in lingering {
            let Some(&(pid, comm)) = owner_of.get(&cookie) else {
                continue;
            };
            let entry = self.churn.entry(pid).or_insert_with(|| Churn {
                comm: comm.clone(),
                ..Churn::default()
            });
            match state {
                TCP_TIME_WAIT => entry.time_wait += 1,
                TCP_FIN_WAIT1 | TCP_FIN_WAIT2 | TCP_CLOSING | TCP_LAST_ACK => entry.orphaned += 1,
                _ => {}
            }
        }
    }

    /// Brings every socket up to date with the kernel's view and drops the ones no process
    /// holds any more (their release was missed).
    /// Sockets are adopted only if `filter` follows their holder, as in `seed_pre_existing`.
    ///
    /// `inet_sockets_of(pid)` lists the TCP and UDP sockets a process holds (inode, protocol);
    /// it is asked only about owners of sockets that no other evidence can judge.
    pub fn reconcile(
        &mut self,
        diag: &[DiagSocket],
        holders: &Holders,
        now_ns: u64,
        filter: &Filter,
        inet_sockets_of: impl Fn(u32) -> Vec<(u64, u8)>,
    ) {
        self.learn_cookies_by_inode(diag);
        let by_cookie: KernelKeyed<u64, &DiagSocket> = diag.iter().map(|d| (d.cookie, d)).collect();
        let unaccounted = self.unaccounted_unlisted(&by_cookie, diag, inet_sockets_of);
        let mut ghosts = Vec::new();
        for s in self.sockets.values_mut() {
            let seen = by_cookie.get(&s.cookie);
            if let Some(d) = seen {
                s.state_sampled(d.state, now_ns);
                s.local = Some(d.local);
                s.remote = Some(d.remote);
                s.rx_queue = d.rx_queue;
                s.tx_queue = d.tx_queue;
                if s.family == 0 {
                    s.family = d.family;
                }
                if s.inode == 0 {
                    s.inode = u64::from(d.inode);
                }
                s.sample(d, now_ns);
            } else if s.protocol == IPPROTO_TCP && s.state == TCP_CLOSE {
                // Out of sock_diag's tables because it was closed or reset; the kernel purged
                // its queues, so the last sample's sizes would be stale evidence.
                s.rx_queue = 0;
                s.tx_queue = 0;
            }
            let pids = if s.inode == 0 {
                &[][..]
            } else {
                holders.of(s.inode)
            };
            // Compared first: holders rarely change, and 100,000 fresh vectors per report add up.
            if s.holders != pids {
                s.holders = pids.to_vec();
            }
            let old_enough = now_ns.saturating_sub(s.created_ns) > GHOST_GRACE_NS;
            let gone = match seen {
                // Listed without an inode: the socket lost its file, i.e. it was released.
                Some(d) if d.inode == 0 => true,
                _ if s.inode != 0 => s.holders.is_empty(),
                Some(_) => false,
                // Never saw its fd and sock_diag does not list it: only an unconnected TCP
                // socket or an unbound UDP one may be absent and still open, and only if its
                // owner holds such a socket that nothing else accounts for.
                None => !s.may_be_unlisted() || unaccounted.contains(&s.cookie),
            };
            if gone && old_enough {
                s.unheld_scans += 1;
                if s.unheld_scans >= GHOST_SCANS {
                    ghosts.push(s.cookie);
                }
            } else {
                s.unheld_scans = 0;
            }
        }
        for cookie in ghosts {
            if self.remove(cookie) {
                self.stats.reconciled += 1;
            }
        }
        // The other half of healing: sockets some process holds that no event announced. Like
        // ghosts, only on two consecutive scans: a socket created and released while the scans
        // ran is still in this (stale) dump, but its release has already been applied.
        let unknown = self.unknown_held(diag, holders);
        let seen_before = std::mem::take(&mut self.unknown_held_last_scan);
        self.stats.recovered +=
            self.adopt_held(diag, holders, now_ns, Origin::Recovered, filter, |c| {
                seen_before.contains(&c)
            });
        self.unknown_held_last_scan = unknown
            .into_iter()
            .filter(|c| !self.sockets.contains_key(c))
            .collect();
    }
}

impl SocketTable {
    /// Sockets accepted on the classic-tracepoint fallback are keyed by their address (no
    /// program there could make the kernel assign a cookie). sock_diag names their real cookie
    /// beside their inode: from then on they are keyed by it, so their release event (which
    /// carries the cookie) and the next dump find them.
    fn learn_cookies_by_inode(&mut self, diag: &[DiagSocket]) {
        let synthetic: Vec<(u64, u64)> = self
            .sockets
            .values()
            .filter(|s| s.cookie & SYNTHETIC_KEY != 0 && s.inode != 0)
            .map(|s| (s.inode, s.cookie))
            .collect();
        if synthetic.is_empty() {
            return;
        }
        let cookie_of_inode: KernelKeyed<u64, u64> = diag
            .iter()
            .filter(|d| d.inode != 0)
            .map(|d| (u64::from(d.inode), d.cookie))
            .collect();
        for (inode, key) in synthetic {
            let Some(&cookie) = cookie_of_inode.get(&inode) else {
                continue;
            };
            if self.sockets.contains_key(&cookie) {
                // Already tracked under its cookie: the address-keyed entry is its twin.
                self.remove(key);
                continue;
            }
            if let Some(mut socket) = self.sockets.remove(&key) {
                socket.cookie = cookie;
                if socket.skaddr != 0 {
                    self.cookie_by_skaddr.insert(socket.skaddr, cookie);
                }
                self.sockets.insert(cookie, socket);
            }
        }
    }

    /// Sockets that may be open although sock_diag does not list them (see
    /// [`Socket::may_be_unlisted`]) but that their owner cannot be holding: it is gone, or it
    /// holds fewer unlisted sockets of that protocol than the table thinks (the fd and release
    /// events of the rest were both lost). The newest are the ones kept.
    fn unaccounted_unlisted(
        &self,
        listed: &KernelKeyed<u64, &DiagSocket>,
        diag: &[DiagSocket],
        inet_sockets_of: impl Fn(u32) -> Vec<(u64, u8)>,
    ) -> HashSet<u64> {
        let mut candidates: HashMap<(u32, u8), Vec<(u64, u64)>> = HashMap::new();
        for s in self.sockets.values() {
            if s.inode == 0 && !listed.contains_key(&s.cookie) && s.may_be_unlisted() {
                let by_owner = candidates.entry((s.owner.pid, s.protocol)).or_default();
                by_owner.push((s.created_ns, s.cookie));
            }
        }
        if candidates.is_empty() {
            return HashSet::new();
        }
        let accounted_for: HashSet<u64> = diag
            .iter()
            .map(|d| u64::from(d.inode))
            .chain(self.sockets.values().map(|s| s.inode))
            .filter(|&inode| inode != 0)
            .collect();
        let mut unlisted_held: HashMap<u32, Vec<(u64, u8)>> = HashMap::new();
        let mut unaccounted = HashSet::new();
        for ((pid, protocol), mut sockets) in candidates {
            let held = unlisted_held.entry(pid).or_insert_with(|| {
                let mut held = inet_sockets_of(pid);
                held.retain(|(inode, _)| !accounted_for.contains(inode));
                held
            });
            let available = held.iter().filter(|&&(_, p)| p == protocol).count();
            sockets.sort_unstable_by(|a, b| b.cmp(a));
            unaccounted.extend(sockets.iter().skip(available).map(|&(_, cookie)| cookie));
        }
        unaccounted
    }
}

#[cfg(test)]
impl SocketTable {
    fn is_empty(&self) -> bool {
        self.sockets.is_empty()
    }

    fn get(&self, cookie: u64) -> Option<&Socket> {
        self.sockets.get(&cookie)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_name_is_one_shared_string_and_the_cache_stays_bounded() {
        let mut names = CommNames::default();
        let mut comm = [0u8; COMM_LEN];
        comm[..4].copy_from_slice(b"node");
        let first = names.of(&comm);
        assert_eq!(&*first, "node");
        assert!(Arc::ptr_eq(&first, &names.of(&comm)));
        comm[..4].copy_from_slice(b"n\xffde");
        assert_eq!(&*names.of(&comm), "n\u{fffd}de");
        for i in 0..2 * CommNames::MAX as u32 {
            comm[..4].copy_from_slice(&i.to_ne_bytes());
            names.of(&comm);
        }
        assert!(names.0.len() <= CommNames::MAX);
    }
    use sockleak_common::Hook;

    fn task(pid: u32, comm: &str) -> Task {
        let mut t = Task {
            pid,
            tid: pid,
            ..Task::default()
        };
        t.comm[..comm.len()].copy_from_slice(comm.as_bytes());
        t
    }

    fn event(kind: EventKind, hook: Hook) -> SockEvent {
        let mut e = SockEvent::new(kind, hook);
        e.ts_ns = 1;
        e.family = 2;
        e.protocol = 6;
        e.sock_type = 1;
        e
    }

    /// A TCP socket as sock_diag would list it.
    fn diag(cookie: u64, state: u8, inode: u32) -> DiagSocket {
        DiagSocket {
            cookie,
            family: 2,
            protocol: IPPROTO_TCP,
            state,
            local: "127.0.0.1:1".parse().unwrap(),
            remote: "127.0.0.1:2".parse().unwrap(),
            rx_queue: 0,
            tx_queue: 0,
            uid: 0,
            inode,
            mem: None,
            tcp: None,
        }
    }

    fn created(cookie: u64, pid: u32) -> SockEvent {
        let mut e = event(EventKind::Created, Hook::CgroupSockCreate);
        e.cookie = cookie;
        e.task = task(pid, "client");
        e
    }

    /// The fd install of an accept whose fd walk found no cookie (none assigned yet): pid 4242,
    /// the server.
    fn accepted_without_cookie(skaddr: u64, inode: u64) -> SockEvent {
        let mut e = event(EventKind::FdInstalled, Hook::SysExitAccept4);
        e.skaddr = skaddr;
        e.inode = inode;
        e.task = task(4242, "server");
        e
    }

    fn released(cookie: u64) -> SockEvent {
        let mut e = event(EventKind::Released, Hook::CgroupSockRelease);
        e.cookie = cookie;
        e
    }

    #[test]
    fn created_then_released_leaves_nothing() {
        let mut t = SocketTable::new(16);
        t.apply(&created(5, 100));
        assert_eq!(t.get(5).unwrap().owner.pid, 100);
        assert_eq!(&*t.get(5).unwrap().owner.comm, "client");
        t.apply(&released(5));
        assert!(t.is_empty());
        assert_eq!(t.stats.released, 1);
    }

    #[test]
    fn a_created_socket_is_known_by_address_and_inode_and_its_stack_follows() {
        use sockleak_common::{STACK_NOT_SAMPLED, STACK_PENDING};
        let mut t = SocketTable::new(16);
        let mut born = created(5, 100);
        born.skaddr = 0xffff_5000;
        born.inode = 777;
        born.user_stack_id = STACK_PENDING;
        t.apply(&born);
        let s = t.get(5).unwrap();
        assert_eq!(
            (s.skaddr, s.inode, s.stack),
            (0xffff_5000, 777, CreationStack::Unknown)
        );
        // The classic tracepoint names only the address.
        let mut listen = event(EventKind::StateChanged, Hook::TracepointInetSockSetState);
        listen.skaddr = 0xffff_5000;
        listen.new_state = TCP_LISTEN as u16;
        t.apply(&listen);
        assert_eq!(t.get(5).unwrap().state, TCP_LISTEN);
        // The stack, taken at the exit of socket().
        let mut exit = event(EventKind::FdInstalled, Hook::SysExitSocket);
        exit.cookie = 5;
        exit.skaddr = 0xffff_5000;
        exit.inode = 777;
        exit.task = task(100, "client");
        exit.user_stack_id = 12;
        t.apply(&exit);
        assert_eq!(t.get(5).unwrap().stack.key().map(|k| k.user), Some(12));
        // Over the budget, the creation event says so and nothing follows.
        let mut unsampled = created(6, 100);
        unsampled.user_stack_id = STACK_NOT_SAMPLED;
        t.apply(&unsampled);
        assert_eq!(t.get(6).unwrap().stack, CreationStack::NotSampled);
    }

    #[test]
    fn accepted_socket_is_owned_by_the_acceptor_not_the_softirq() {
        let mut t = SocketTable::new(16);
        let mut est = event(EventKind::StateChanged, Hook::TpBtfInetSockSetState);
        est.cookie = 77;
        est.skaddr = 0xffff_0000;
        est.new_state = TCP_ESTABLISHED as u16;
        est.task = task(0, "swapper/0"); // whatever ran the softirq; must be ignored
        t.apply(&est);
        assert!(t.is_empty(), "nobody owns it before accept()");
        t.apply(&accepted_without_cookie(0xffff_0000, 999));
        let s = t.get(77).expect("joined on skaddr");
        assert_eq!(
            (s.owner.pid, s.site, s.state),
            (4242, Site::Accept, TCP_ESTABLISHED)
        );
        let mut cw = est;
        cw.new_state = TCP_CLOSE_WAIT as u16;
        t.apply(&cw);
        assert_eq!(t.get(77).unwrap().state, TCP_CLOSE_WAIT);
    }

    #[test]
    fn an_accept_without_a_cookie_is_keyed_by_the_cookie_sock_diag_names_for_its_inode() {
        // The classic-tracepoint fallback (5.10): the accept's fd walk finds no cookie yet.
        let mut t = SocketTable::new(16);
        t.apply(&accepted_without_cookie(0xffff_0000, 999));
        assert!(t.get(0xffff_0000 | SYNTHETIC_KEY).is_some());
        let holders = Holders::from_pairs(vec![(999, 4242)]);
        let sample = diag(31, TCP_CLOSE_WAIT, 999);
        t.reconcile(&[sample], &holders, 2, &Filter::default(), holds_nothing);
        assert_eq!(
            t.len(),
            1,
            "one socket, not a traced one and a recovered twin"
        );
        assert_eq!(
            t.get(31).map(|s| (s.state, s.site)),
            Some((TCP_CLOSE_WAIT, Site::Accept))
        );
        // Its release carries the cookie: now it is found.
        t.apply(&released(31));
        assert!(t.is_empty());
    }

    #[test]
    fn a_cookieless_accept_at_a_reused_address_replaces_the_freed_socket() {
        let mut t = SocketTable::new(16);
        let mut acc = accepted_without_cookie(0xffff_0000, 999);
        t.apply(&acc);
        // Its release (keyed by a cookie nobody knew) went unmatched; the memory is reused.
        acc.inode = 1000;
        t.apply(&acc);
        assert_eq!(t.len(), 1);
        assert_eq!(
            t.get(0xffff_0000 | SYNTHETIC_KEY).map(|s| s.inode),
            Some(1000)
        );
        assert_eq!((t.stats.accepted, t.stats.released), (2, 1));
    }

    #[test]
    fn a_reused_sock_address_does_not_join_a_new_socket_to_an_old_one() {
        let mut t = SocketTable::new(16);
        let mut acc = event(EventKind::FdInstalled, Hook::SysExitAccept4);
        acc.cookie = 1;
        acc.skaddr = 0xabc;
        acc.task = task(10, "old");
        t.apply(&acc);
        // The old socket's release was lost; the address is reused by a new socket.
        let mut est = event(EventKind::StateChanged, Hook::TpBtfInetSockSetState);
        est.cookie = 2;
        est.skaddr = 0xabc;
        est.new_state = TCP_CLOSE_WAIT as u16;
        t.apply(&est);
        assert_eq!(
            t.get(1).unwrap().state,
            TCP_ESTABLISHED,
            "old socket untouched"
        );
        let mut acc2 = acc;
        acc2.cookie = 2;
        acc2.task = task(20, "new");
        t.apply(&acc2);
        assert_eq!(
            (t.get(2).unwrap().owner.pid, t.get(2).unwrap().state),
            (20, TCP_CLOSE_WAIT)
        );
    }

    #[test]
    fn state_changes_carry_addresses_for_short_lived_sockets() {
        let mut t = SocketTable::new(4);
        t.apply(&created(3, 1));
        let mut est = event(EventKind::StateChanged, Hook::TpBtfInetSockSetState);
        est.cookie = 3;
        est.new_state = TCP_ESTABLISHED as u16;
        est.family = 10;
        est.sport = 40000;
        est.dport = 443;
        est.saddr[15] = 1;
        est.daddr[15] = 1;
        t.apply(&est);
        let s = t.get(3).unwrap();
        assert_eq!(s.local, Some("[::1]:40000".parse().unwrap()));
        assert_eq!(s.remote, Some("[::1]:443".parse().unwrap()));
        let mut reset = est;
        reset.new_state = TCP_CLOSE as u16;
        reset.sport = 0; // already released by the kernel when the tracepoint fires
        t.apply(&reset);
        let s = t.get(3).unwrap();
        assert_eq!(s.local, Some("[::1]:40000".parse().unwrap()), "port kept");
        assert_eq!(s.state, TCP_CLOSE);
    }

    #[test]
    fn closed_sockets_lingering_in_the_kernel_count_as_churn_of_their_owner() {
        let mut t = SocketTable::new(8);
        for cookie in [1, 2] {
            t.apply(&created(cookie, 55));
            let mut est = event(EventKind::StateChanged, Hook::TpBtfInetSockSetState);
            est.cookie = cookie;
            est.new_state = TCP_ESTABLISHED as u16;
            t.apply(&est);
            t.apply(&released(cookie));
        }
        // TIME_WAIT sockets come as cookies from a dump of their own; orphans still closing
        // are listed without an inode.
        t.count_churn(&[diag(2, TCP_FIN_WAIT2, 0)], &[1, 3]);
        let churn = &t.churn()[&55];
        assert_eq!(
            (churn.time_wait, churn.orphaned, &*churn.comm),
            (1, 1, "client")
        );
        assert_eq!(t.churn().len(), 1, "cookie 3 belongs to nobody we saw");
    }

    #[test]
    fn a_reset_seen_only_as_its_close_event_is_still_reset_held() {
        use crate::verdict::{Thresholds, socket_flags};
        // The kernel side does not send ESTABLISHED, and no sample ran before the reset.
        let mut t = SocketTable::new(4);
        t.apply(&created(6, 1));
        let mut reset = event(EventKind::StateChanged, Hook::TpBtfInetSockSetState);
        reset.cookie = 6;
        reset.old_state = TCP_ESTABLISHED as u16;
        reset.new_state = TCP_CLOSE as u16;
        t.apply(&reset);
        let s = t.get(6).unwrap();
        assert!(s.evidence.was_connected);
        let later = 60_000_000_000;
        assert_eq!(
            socket_flags(s, later, &Thresholds::default()),
            ["reset_held"]
        );
    }

    #[test]
    fn a_reset_with_bytes_in_flight_is_reset_held_not_send_stuck() {
        use crate::verdict::{Thresholds, socket_flags};
        let mut t = SocketTable::new(4);
        t.apply(&created(4, 1));
        let mut fd = event(EventKind::FdInstalled, Hook::SysExitSocket);
        fd.cookie = 4;
        fd.inode = 77;
        t.apply(&fd);
        let mut est = event(EventKind::StateChanged, Hook::TpBtfInetSockSetState);
        est.cookie = 4;
        est.new_state = TCP_ESTABLISHED as u16;
        t.apply(&est);
        let held = Holders::from_pairs(vec![(77, 1)]);
        let sample = DiagSocket {
            tx_queue: 5000,
            tcp: Some(TcpInfo::default()),
            ..diag(4, TCP_ESTABLISHED, 77)
        };
        t.reconcile(&[sample], &held, 2, &Filter::default(), holds_nothing);
        let mut reset = est;
        reset.new_state = TCP_CLOSE as u16;
        reset.ts_ns = 3;
        t.apply(&reset);
        let later = 3 + 60_000_000_000;
        t.reconcile(&[], &held, later, &Filter::default(), holds_nothing);
        let s = t.get(4).unwrap();
        assert_eq!(s.tx_queue, 0, "the kernel purged the queue on reset");
        assert_eq!(
            socket_flags(s, later, &Thresholds::default()),
            ["reset_held"]
        );
    }

    #[test]
    fn table_is_bounded() {
        let mut t = SocketTable::new(3);
        for cookie in 1..=5 {
            t.apply(&created(cookie, 1));
        }
        assert_eq!(t.len(), 3);
        assert_eq!(t.stats.dropped_table_full, 2);
    }

    #[test]
    fn ignores_protocols_it_does_not_track() {
        let mut t = SocketTable::new(3);
        let mut raw = created(1, 1);
        raw.protocol = 1; // ICMP
        t.apply(&raw);
        assert!(t.is_empty());
        assert_eq!(t.stats.ignored, 1);
    }

    #[test]
    fn a_missed_release_is_reconciled_away_after_two_scans() {
        let mut t = SocketTable::new(16);
        t.apply(&created(9, std::process::id()));
        let mut fd = event(EventKind::FdInstalled, Hook::SysExitSocket);
        fd.cookie = 9;
        fd.inode = 31337;
        t.apply(&fd);
        let later = 10 * GHOST_GRACE_NS;
        let nobody = Holders::default();
        t.reconcile(&[], &nobody, later, &Filter::default(), holds_nothing);
        assert_eq!(t.len(), 1, "one scan is not proof");
        t.reconcile(&[], &nobody, later, &Filter::default(), holds_nothing);
        assert!(t.is_empty());
        assert_eq!(t.stats.reconciled, 1);
    }

    #[test]
    fn only_sockets_of_followed_processes_are_adopted_and_owned_by_a_followed_holder() {
        let me = std::process::id();
        let parent = std::os::unix::process::parent_id();
        let shared = diag(50, TCP_ESTABLISHED, 700);
        let theirs = diag(51, TCP_ESTABLISHED, 701);
        // The parent holds both (it comes first: lowest pid); we share one of them.
        let holders = Holders::from_pairs(vec![(700, parent), (700, me), (701, parent)]);
        let only_me = Filter {
            pids: vec![me],
            ..Filter::default()
        };
        let mut t = SocketTable::new(16);
        t.seed_pre_existing(&[shared, theirs], &holders, 1, &only_me);
        assert_eq!(t.len(), 1);
        assert_eq!(t.get(50).map(|s| s.owner.pid), Some(me));

        let udp_only = Filter {
            protocol: Some(IPPROTO_UDP),
            ..Filter::default()
        };
        let mut t = SocketTable::new(16);
        t.seed_pre_existing(&[diag(52, TCP_ESTABLISHED, 700)], &holders, 1, &udp_only);
        assert!(t.is_empty());
    }

    #[test]
    fn a_missed_create_is_found_by_reconciliation() {
        let mut t = SocketTable::new(16);
        let held = diag(42, TCP_ESTABLISHED, 900);
        let orphan = DiagSocket {
            cookie: 43,
            inode: 0,
            ..held.clone()
        };
        let holders = Holders::from_pairs(vec![(900, std::process::id())]);
        t.reconcile(
            &[held.clone(), orphan.clone()],
            &holders,
            5,
            &Filter::default(),
            holds_nothing,
        );
        assert!(t.get(42).is_none(), "one scan is not proof");
        t.reconcile(
            &[held, orphan],
            &holders,
            6,
            &Filter::default(),
            holds_nothing,
        );
        let s = t.get(42).expect("recovered");
        assert_eq!(
            (s.origin, s.owner.pid),
            (Origin::Recovered, std::process::id())
        );
        assert!(t.get(43).is_none(), "nobody holds it: not ours to report");
        assert_eq!(t.stats.recovered, 1);
    }

    #[test]
    fn a_socket_released_while_the_scans_ran_is_not_recovered_from_the_stale_dump() {
        let mut t = SocketTable::new(16);
        let me = std::process::id();
        t.apply(&created(7, me));
        t.apply(&released(7)); // both applied by the drain after the scans
        let stale = diag(7, TCP_ESTABLISHED, 700);
        let stale_holders = Holders::from_pairs(vec![(700, me)]);
        t.reconcile(
            &[stale],
            &stale_holders,
            5,
            &Filter::default(),
            holds_nothing,
        );
        // The next scan no longer sees it.
        t.reconcile(
            &[],
            &Holders::default(),
            6,
            &Filter::default(),
            holds_nothing,
        );
        assert!(t.get(7).is_none());
        assert_eq!(t.stats.recovered, 0);
    }

    #[test]
    fn a_socket_whose_fd_and_release_were_both_missed_is_still_reconciled_away() {
        let mut t = SocketTable::new(16);
        let me = std::process::id(); // alive: liveness alone cannot judge
        for cookie in [1, 2, 3, 4, 5] {
            let mut create = created(cookie, me);
            create.ts_ns = cookie;
            t.apply(&create);
        }
        let mut est = event(EventKind::StateChanged, Hook::TpBtfInetSockSetState);
        est.cookie = 1;
        est.new_state = TCP_ESTABLISHED as u16;
        t.apply(&est);
        // 1: tracked ESTABLISHED but no longer listed: destroyed.
        // 2: listed in TIME_WAIT without an inode: released.
        // 3, 4, 5: unconnected (CLOSE), not listed, owner alive: may well be open, but the
        // owner holds only one such TCP socket (inode 77; 78 is a UDP one, 79 the listed one):
        // the newest, 5, is kept as that one.
        let time_wait = diag(2, TCP_TIME_WAIT, 0);
        let listed = diag(6, TCP_ESTABLISHED, 79);
        let owner_holds = |pid: u32| {
            assert_eq!(pid, me, "only the owner of the doubtful sockets is asked");
            vec![(77, IPPROTO_TCP), (78, IPPROTO_UDP), (79, IPPROTO_TCP)]
        };
        let later = 10 * GHOST_GRACE_NS;
        for _ in 0..GHOST_SCANS {
            t.reconcile(
                &[time_wait.clone(), listed.clone()],
                &Holders::default(),
                later,
                &Filter::default(),
                owner_holds,
            );
        }
        assert_eq!(t.len(), 1);
        assert!(t.get(5).is_some());
        assert_eq!(t.stats.reconciled, 4);

        // The owner lets go of its last one without the release being seen.
        for _ in 0..GHOST_SCANS {
            t.reconcile(
                &[],
                &Holders::default(),
                later,
                &Filter::default(),
                holds_nothing,
            );
        }
        assert!(t.is_empty());
    }

    /// What `inet_sockets_of` says of a process that holds no TCP or UDP socket.
    fn holds_nothing(_pid: u32) -> Vec<(u64, u8)> {
        Vec::new()
    }

    #[test]
    fn a_held_socket_survives_reconciliation() {
        let mut t = SocketTable::new(16);
        t.apply(&created(9, 1));
        let mut fd = event(EventKind::FdInstalled, Hook::SysExitSocket);
        fd.cookie = 9;
        fd.inode = 31337;
        t.apply(&fd);
        let holders = Holders::from_pairs(vec![(31337, 1), (31337, 2)]);
        for _ in 0..5 {
            t.reconcile(
                &[],
                &holders,
                10 * GHOST_GRACE_NS,
                &Filter::default(),
                holds_nothing,
            );
        }
        assert_eq!(t.get(9).unwrap().holders, vec![1, 2]);
    }

    #[test]
    fn a_state_found_by_a_sample_began_between_that_sample_and_the_look_before() {
        const S: u64 = 1_000_000_000;
        let mut t = SocketTable::new(4);
        let mut born = created(9, 1);
        born.inode = 31337;
        born.ts_ns = S;
        t.apply(&born);
        let holders = Holders::from_pairs(vec![(31337, 1)]);
        let sample = |t: &mut SocketTable, state, now_ns| {
            t.reconcile(
                &[diag(9, state, 31337)],
                &holders,
                now_ns,
                &Filter::default(),
                holds_nothing,
            )
        };
        let window = |t: &SocketTable| {
            let e = &t.get(9).unwrap().evidence;
            (e.state_since_ns, e.state_entered_after_ns)
        };
        // Created (an event: exact), then connected some time before the first sample.
        assert_eq!(window(&t), (S, Some(S)));
        sample(&mut t, TCP_ESTABLISHED, 3 * S);
        assert_eq!(window(&t), (3 * S, Some(S)));
        // Still established: nothing moves.
        sample(&mut t, TCP_ESTABLISHED, 5 * S);
        assert_eq!(window(&t), (3 * S, Some(S)));
        // The peer left between the last two samples.
        sample(&mut t, TCP_CLOSE_WAIT, 7 * S);
        assert_eq!(window(&t), (7 * S, Some(5 * S)));
        // A reset the kernel side reports: the transition itself, though the table last knew
        // the socket in another state than the event's old one.
        let mut reset = event(EventKind::StateChanged, Hook::TpBtfInetSockSetState);
        reset.cookie = 9;
        reset.old_state = TCP_LAST_ACK as u16;
        reset.new_state = TCP_CLOSE as u16;
        reset.ts_ns = 8 * S;
        t.apply(&reset);
        assert_eq!(window(&t), (8 * S, Some(8 * S)));
    }

    #[test]
    fn a_socket_found_already_open_has_no_bound_on_its_state_age() {
        let mut t = SocketTable::new(4);
        let holders = Holders::from_pairs(vec![(31337, 1)]);
        t.seed_pre_existing(
            &[diag(9, TCP_ESTABLISHED, 31337)],
            &holders,
            5_000,
            &Filter::default(),
        );
        let e = &t.get(9).unwrap().evidence;
        assert_eq!((e.state_since_ns, e.state_entered_after_ns), (5_000, None));
    }

    #[test]
    fn fin_in_close_wait_is_not_unread_data() {
        let mut t = SocketTable::new(4);
        t.apply(&created(1, 1));
        let mut s = t.get(1).unwrap().clone();
        s.state = TCP_CLOSE_WAIT;
        s.rx_queue = 1;
        assert_eq!(s.unread_bytes(), 0);
        s.rx_queue = 11;
        assert_eq!(s.unread_bytes(), 10);
        s.state = TCP_ESTABLISHED;
        assert_eq!(s.unread_bytes(), 11);
    }
}
