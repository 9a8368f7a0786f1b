//! Bringing the table in line with the kernel's view (a sock_diag dump and who holds each
//! socket) at every report: sockets nobody holds any more are dropped, held sockets no event
//! announced are adopted, and sockets that were open before sockleak started are seeded.
//!
//! A look is folded in while the dump is still arriving (`observe_listed`, batch by batch, once
//! the holder scan is in): over many sockets the dump takes longest, and the sockets it lists
//! are most of the work. What needs the whole dump (sockets it did not list, adoption) waits
//! for `finish_look`.
use std::{
    collections::{HashMap, HashSet},
    net::IpAddr,
    sync::Arc,
};

use sockleak_common::{Endpoint, Family, Origin, Protocol, Role, SockId, TcpState, UnixName};

use super::{
    KernelKeyed, Processes, SocketTable, is_synthetic,
    socket::{Evidence, Looked, Owner, Socket, open_at_least_ns},
};
use crate::{
    filter::Filter, holders::Holders, sockdiag::DiagSocket, stacks::identity::CreationStack,
};

/// A socket younger than this may not have its fd installed yet; it is never judged a ghost.
pub(super) const GHOST_GRACE_NS: u64 = 1_000_000_000;
/// Consecutive holder scans without a holder before a socket is declared released.
pub(super) const GHOST_SCANS: u8 = 2;

/// The look in progress, between `begin_look` and `finish_look`. Positions are indexes into
/// the look's dump (`listed`), which only grows while the look lasts.
#[derive(Debug, Default)]
pub(super) struct Look {
    /// Numbers looks, so a socket can say which one last listed it (0: none).
    number: u32,
    /// Listed sockets the table did not know when their batch came.
    unmatched: Vec<u32>,
    /// Listed TCP listeners, which accepted connections found open belong to.
    listeners: Vec<u32>,
    /// Sockets found unheld for the last time, and where the dump listed them.
    ghosts: Vec<(SockId, Option<u32>)>,
}

impl SocketTable {
    /// Adds the sockets that were open before sockleak started: every socket sock_diag lists
    /// that some process `filter` follows holds an fd to. The lowest such pid is the owner.
    pub fn seed_pre_existing(
        &mut self,
        diag: &[DiagSocket],
        holders: &Holders,
        now_ns: u64,
        filter: &Filter,
        processes: &impl Processes,
    ) {
        let listeners = Listeners::of(diag.iter());
        self.stats.pre_existing += self
            .adopt_held(
                diag.iter(),
                (holders, &listeners),
                now_ns,
                Origin::PreExisting,
                (filter, processes),
                |_| true,
            )
            .0;
    }

    /// Brings every socket up to date with the kernel's view and drops the ones no process
    /// holds any more (their release was missed). Sockets are adopted only if `filter` follows
    /// their holder, as in `seed_pre_existing`. One look in one go: `begin_look`,
    /// `observe_listed` and `finish_look`.
    pub fn reconcile(
        &mut self,
        diag: &[DiagSocket],
        holders: &Holders,
        now_ns: u64,
        filter: &Filter,
        processes: &impl Processes,
    ) {
        self.begin_look();
        self.observe_listed(diag, 0, holders, now_ns);
        self.finish_look(diag, holders, now_ns, filter, processes);
    }

    /// Starts a look: the dump's sockets come next, in `observe_listed`.
    pub fn begin_look(&mut self) {
        let number = self.look.number.wrapping_add(1).max(1);
        self.look = Look {
            number,
            ..Look::default()
        };
    }

    /// Folds the dump's sockets from position `from` on into the sockets the table knows:
    /// their sample, their holders, and whether they are still held. `listed` is the look's
    /// dump so far; each call passes it grown by the sockets since the last.
    pub fn observe_listed(
        &mut self,
        listed: &[DiagSocket],
        from: usize,
        holders: &Holders,
        now_ns: u64,
    ) {
        let Self { sockets, look, .. } = self;
        for (at, d) in listed.iter().enumerate().skip(from) {
            let at = at as u32;
            if d.state == TcpState::LISTEN {
                look.listeners.push(at);
            }
            match sockets.get_mut(&d.id) {
                Some(s) => fold_listed(s, d, at, look, holders, now_ns),
                None => look.unmatched.push(at),
            }
        }
    }

    /// Ends the look begun by `begin_look`, over its whole dump `listed`: the sockets the
    /// table learned of since their batch came (born meanwhile), the ones the dump did not
    /// list, the release of ghosts, and the adoption of held sockets no event announced.
    /// Events that raced with the scans are applied before it: every listed socket is then
    /// either known or a candidate for adoption.
    pub fn finish_look(
        &mut self,
        listed: &[DiagSocket],
        holders: &Holders,
        now_ns: u64,
        filter: &Filter,
        processes: &impl Processes,
    ) {
        let number = self.look.number;
        // The look may have moved sockets into or out of LISTEN.
        self.listeners_by_port = None;
        // The one walk over every socket: the rest of the look is about the few not listed
        // (yet: sockets born since their batch came, and re-keyed ones, are matched below).
        let unlisted: Vec<SockId> = self
            .sockets
            .values()
            .filter(|s| s.looked.listed_in != number)
            .map(|s| s.id)
            .collect();
        self.learn_cookies_by_inode(listed, &unlisted);
        let mut candidates = Vec::new();
        for at in std::mem::take(&mut self.look.unmatched) {
            let d = &listed[at as usize];
            match self.sockets.get_mut(&d.id) {
                Some(s) => fold_listed(s, d, at, &mut self.look, holders, now_ns),
                None => candidates.push(at),
            }
        }
        let unlisted: Vec<SockId> = unlisted
            .into_iter()
            .filter(|c| {
                self.sockets
                    .get(c)
                    .is_some_and(|s| s.looked.listed_in != number)
            })
            .collect();
        let unaccounted = self.unaccounted_unlisted(&unlisted, listed, processes);
        for id in unlisted {
            let Some(s) = self.sockets.get_mut(&id) else {
                continue;
            };
            if s.protocol == Protocol::Tcp && s.state == TcpState::CLOSE {
                // Out of sock_diag's tables because it was closed or reset; the kernel purged
                // its queues, so the last sample's sizes would be stale evidence.
                s.rx_queue = 0;
                s.tx_queue = 0;
            }
            update_holders(s, holders);
            let gone = if s.inode != 0 {
                s.holders.is_empty()
            } else {
                // Never saw its fd and sock_diag does not list it: only an unconnected TCP
                // socket or an unbound UDP one may be absent and still open, and only if its
                // owner holds such a socket that nothing else accounts for.
                !s.may_be_unlisted() || unaccounted.contains(&s.id)
            };
            if count_unheld(s, gone, now_ns) {
                self.look.ghosts.push((s.id, None));
            }
        }
        for (id, at) in std::mem::take(&mut self.look.ghosts) {
            // A UNIX socket leaves the table only this way: no event was missed.
            let listed_only = self
                .sockets
                .get(&id)
                .is_some_and(|s| s.family == Family::Unix);
            if self.remove(id) {
                self.stats.reconciled += u64::from(!listed_only);
                // Listed yet unheld: the next look may find a holder for it, as for any
                // listed socket the table does not know.
                candidates.extend(at);
            }
        }
        // The other half of healing: sockets a followed process holds that no event announced.
        // Like ghosts, only on two consecutive scans: a socket created and released while the
        // scans ran is still in this (stale) dump, but its release has already been applied.
        let seen_before = std::mem::take(&mut self.unknown_held_last_scan);
        if candidates.is_empty() {
            return;
        }
        // In the dump's order, as a look in one go adopts them.
        candidates.sort_unstable();
        let listeners = Listeners::of(self.look.listeners.iter().map(|&at| &listed[at as usize]));
        // UNIX sockets have no event to wait for: each look adopts the ones it finds.
        let (unix, candidates): (Vec<u32>, Vec<u32>) = candidates
            .into_iter()
            .partition(|&at| listed[at as usize].family == Family::Unix);
        self.stats.listed += self
            .adopt_held(
                unix.iter().map(|&at| &listed[at as usize]),
                (holders, &listeners),
                now_ns,
                Origin::Listed,
                (filter, processes),
                |_| true,
            )
            .0;
        if candidates.is_empty() {
            return;
        }
        let (recovered, seen_now) = self.adopt_held(
            candidates.iter().map(|&at| &listed[at as usize]),
            (holders, &listeners),
            now_ns,
            Origin::Recovered,
            (filter, processes),
            |id| seen_before.contains(&id),
        );
        self.stats.recovered += recovered;
        self.unknown_held_last_scan = seen_now;
    }

    /// Whether the last reconciliation found sockets a followed process holds that no event
    /// announced: the next one adopts those still there.
    pub fn awaits_second_look(&self) -> bool {
        !self.unknown_held_last_scan.is_empty()
    }

    /// Adds held sockets the table does not know and `admit` accepts, as `origin`, if a
    /// process the filter follows holds them (as the kernel would have sent them); returns how
    /// many, and the identities of those `admit` refused.
    ///
    /// What each one is comes from the kernel's view ([`Role`]). A connection on a listener's
    /// port was accepted from it and belongs, as a traced accept does, to the process holding
    /// the listener (a forking server's connections are then one group, the children that
    /// hold them its holders).
    fn adopt_held<'d>(
        &mut self,
        diag: impl Iterator<Item = &'d DiagSocket>,
        (holders, listeners): (&Holders, &Listeners),
        now_ns: u64,
        origin: fn(Role) -> Origin,
        (filter, processes): (&Filter, &impl Processes),
        admit: impl Fn(SockId) -> bool,
    ) -> (u64, HashSet<SockId>) {
        let mut adopted = 0;
        let mut refused = HashSet::new();
        // One read of /proc/PID/{comm,cgroup} per process, however many sockets it holds.
        let mut followed: HashMap<u32, Option<Arc<str>>> = HashMap::new();
        let own = self.own_pid;
        let mut first_followed = |pids: &[u32]| {
            pids.iter()
                .filter(|&&pid| Some(pid) != own)
                .find_map(|&pid| {
                    let comm = followed.entry(pid).or_insert_with(|| {
                        let comm = processes.comm(pid).unwrap_or_default();
                        filter
                            .follows_process(pid, &comm, || processes.cgroup(pid))
                            .then(|| Arc::from(comm.as_str()))
                    });
                    comm.clone().map(|comm| (pid, comm))
                })
        };
        for d in diag {
            if d.inode == 0
                || self.sockets.contains_key(&d.id)
                || !filter.follows_kind(d.family, d.protocol)
            {
                continue;
            }
            let pids = holders.of(u64::from(d.inode));
            let listener = listeners.accepted_from(d);
            let role = match d.state {
                TcpState::LISTEN => Role::Listening,
                _ if listener.is_some() => Role::Accepted,
                _ if d.remote.port().is_some_and(|port| port != 0) => Role::Connected,
                // A UNIX client: its peer has the name it connected to.
                _ if matches!(d.remote, Endpoint::Unix(_)) && !d.remote.is_unnamed() => {
                    Role::Connected
                }
                _ => Role::Unknown,
            };
            let acceptor = listener.and_then(|inode| first_followed(holders.of(inode)));
            let Some((pid, comm)) = acceptor.or_else(|| first_followed(pids)) else {
                continue;
            };
            if !admit(d.id) {
                refused.insert(d.id);
                continue;
            }
            if self.sockets.len() >= self.capacity {
                break; // already counted as dropped when their events came
            }
            adopted += 1;
            let mut socket = Socket {
                id: d.id,
                origin: origin(role),
                owner: self.owners.share(Owner {
                    pid,
                    tid: pid,
                    uid: d.uid,
                    cgroup_id: 0,
                    comm,
                }),
                family: d.family,
                protocol: d.protocol,
                created_ns: now_ns.saturating_sub(open_at_least_ns(d)),
                state: d.state,
                skaddr: 0,
                inode: u64::from(d.inode),
                local: Some(d.local.clone()),
                remote: Some(d.remote.clone()),
                rx_queue: d.rx_queue,
                tx_queue: d.tx_queue,
                holders: pids.into(),
                stack: CreationStack::Unknown,
                looked: Looked::default(),
                evidence: Evidence::new(now_ns, d.state, false),
            };
            // Its first look, as every later one: queues, and what the kernel's clocks say.
            socket.observe(d, now_ns);
            update_holders(&mut socket, holders);
            self.insert(socket);
        }
        (adopted, refused)
    }

    /// Sockets accepted on the classic-tracepoint fallback are keyed by their address (no
    /// program there could make the kernel assign a cookie). sock_diag names their real cookie
    /// beside their inode: from then on they are keyed by it, so their release event (which
    /// carries the cookie) and the next dump find them.
    fn learn_cookies_by_inode(&mut self, diag: &[DiagSocket], unlisted: &[SockId]) {
        let synthetic: Vec<(u64, SockId)> = unlisted
            .iter()
            .filter(|&&key| is_synthetic(key))
            .filter_map(|key| self.sockets.get(key))
            .filter(|s| s.inode != 0)
            .map(|s| (s.inode, s.id))
            .collect();
        if synthetic.is_empty() {
            return;
        }
        let id_of_inode: KernelKeyed<u64, SockId> = diag
            .iter()
            .filter(|d| d.inode != 0)
            .map(|d| (u64::from(d.inode), d.id))
            .collect();
        for (inode, key) in synthetic {
            let Some(&id) = id_of_inode.get(&inode) else {
                continue;
            };
            if self.sockets.contains_key(&id) {
                // Already tracked under its cookie: the address-keyed entry is its twin.
                self.remove(key);
                continue;
            }
            if let Some(mut socket) = self.sockets.remove(&key) {
                socket.id = id;
                if socket.skaddr != 0 {
                    self.id_by_skaddr.insert(socket.skaddr, id);
                }
                self.sockets.insert(id, socket);
            }
        }
    }

    /// Sockets that may be open although sock_diag does not list them (see
    /// [`Socket::may_be_unlisted`]) but that their owner cannot be holding: it is gone, or it
    /// holds fewer unlisted sockets of that protocol than the table thinks (the fd and release
    /// events of the rest were both lost). The newest are the ones kept.
    fn unaccounted_unlisted(
        &self,
        unlisted: &[SockId],
        diag: &[DiagSocket],
        processes: &impl Processes,
    ) -> HashSet<SockId> {
        let mut candidates: HashMap<(u32, Protocol), Vec<(u64, SockId)>> = HashMap::new();
        for s in unlisted.iter().filter_map(|id| self.sockets.get(id)) {
            if s.inode == 0 && s.may_be_unlisted() {
                let by_owner = candidates.entry((s.owner.pid, s.protocol)).or_default();
                by_owner.push((s.created_ns, s.id));
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
        let mut unlisted_held: HashMap<u32, Vec<(u64, Protocol)>> = HashMap::new();
        let mut unaccounted = HashSet::new();
        for ((pid, protocol), mut sockets) in candidates {
            let held = unlisted_held.entry(pid).or_insert_with(|| {
                let mut held = processes.inet_sockets(pid);
                held.retain(|(inode, _)| !accounted_for.contains(inode));
                held
            });
            let available = held.iter().filter(|&&(_, p)| p == protocol).count();
            sockets.sort_unstable_by(|a, b| b.cmp(a));
            unaccounted.extend(sockets.iter().skip(available).map(|&(_, id)| id));
        }
        unaccounted
    }
}

/// The listeners of one scan: TCP ones by network namespace and port (ports are per
/// namespace), UNIX ones by namespace and name.
#[derive(Default)]
struct Listeners {
    /// TCP: by namespace and port, each address's listener.
    by_port: HashMap<(u32, u16), Vec<(IpAddr, u64)>>,
    /// UNIX: by namespace and name.
    by_name: HashMap<(u32, UnixName), u64>,
}

impl Listeners {
    fn of<'d>(diag: impl Iterator<Item = &'d DiagSocket>) -> Self {
        let mut listeners = Self::default();
        for d in diag {
            if d.state != TcpState::LISTEN || d.inode == 0 {
                continue;
            }
            match &d.local {
                Endpoint::Inet(local) if d.protocol == Protocol::Tcp => listeners
                    .by_port
                    .entry((d.netns, local.port()))
                    .or_default()
                    .push((local.ip(), u64::from(d.inode))),
                Endpoint::Unix(name) if !name.0.is_empty() => {
                    listeners
                        .by_name
                        .insert((d.netns, name.clone()), u64::from(d.inode));
                }
                _ => {}
            }
        }
        listeners
    }

    /// The inode of the listener a connection was accepted from: for TCP, one on its local
    /// port and address (or on every address), in its network namespace; for UNIX, the one
    /// whose name its server end carries.
    fn accepted_from(&self, d: &DiagSocket) -> Option<u64> {
        if d.state == TcpState::LISTEN {
            return None;
        }
        if let Endpoint::Unix(name) = &d.local {
            return self.by_name.get(&(d.netns, name.clone())).copied();
        }
        let (Some(local), Some(remote)) = (d.local.inet(), d.remote.inet()) else {
            return None;
        };
        if d.protocol != Protocol::Tcp || remote.port() == 0 {
            return None;
        }
        let on_port = self.by_port.get(&(d.netns, local.port()))?;
        on_port
            .iter()
            .find(|(ip, _)| *ip == local.ip())
            .or_else(|| on_port.iter().find(|(ip, _)| ip.is_unspecified()))
            .map(|&(_, inode)| inode)
    }
}

/// One listed socket the table knows, at position `at` of the look's dump: its sample, its
/// holders, and whether it is still held. A socket listed twice (it moved within the kernel's
/// tables while the dump ran) counts once.
fn fold_listed(
    s: &mut Socket,
    d: &DiagSocket,
    at: u32,
    look: &mut Look,
    holders: &Holders,
    now_ns: u64,
) {
    if s.looked.listed_in == look.number {
        return;
    }
    s.looked.listed_in = look.number;
    s.observe(d, now_ns);
    update_holders(s, holders);
    // Listed without an inode: the socket lost its file, i.e. it was released (unless it never
    // had one: a connection still waiting in its listener's queue).
    let gone = (d.inode == 0 && !s.awaiting_accept()) || (s.inode != 0 && s.holders.is_empty());
    if count_unheld(s, gone, now_ns) {
        look.ghosts.push((s.id, Some(at)));
    }
}

fn update_holders(s: &mut Socket, holders: &Holders) {
    let pids = if s.inode == 0 {
        &[][..]
    } else {
        holders.of(s.inode)
    };
    // Compared first: holders rarely change, and a fresh vector per socket and report adds up
    // over many sockets.
    if *s.holders != *pids {
        s.holders = pids.into();
    }
    // A UNIX socket's peer: who holds the other end (a socketpair's child, the daemon a
    // client connected to).
    if let Some(unix) = &mut s.evidence.unix {
        let peer = match unix.peer_inode {
            Some(inode) if inode != 0 => holders.of(u64::from(inode)),
            _ => &[][..],
        };
        if *unix.peer_holders != *peer {
            unix.peer_holders = peer.into();
        }
    }
}

/// Counts one more look that found `s` unheld (`gone`), or starts over; whether it is now a
/// ghost, to be dropped.
fn count_unheld(s: &mut Socket, gone: bool, now_ns: u64) -> bool {
    let old_enough = now_ns.saturating_sub(s.created_ns) > GHOST_GRACE_NS;
    if gone && old_enough {
        s.looked.unheld = s.looked.unheld.saturating_add(1);
        s.looked.unheld >= GHOST_SCANS
    } else {
        s.looked.unheld = 0;
        false
    }
}
