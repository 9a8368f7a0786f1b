//! Bringing the table in line with the kernel's view (a sock_diag dump and who holds each
//! socket) at every report: sockets nobody holds any more are dropped, held sockets no event
//! announced are adopted, and sockets that were open before sockleak started are seeded.
use std::{
    collections::{HashMap, HashSet},
    net::IpAddr,
    sync::Arc,
};

use sockleak_common::{Origin, Protocol, Role, TcpState};

use super::{
    KernelKeyed, Processes, SYNTHETIC_KEY, SocketTable,
    socket::{Evidence, Owner, Socket, open_at_least_ns},
};
use crate::{
    filter::Filter, holders::Holders, prefetch, sockdiag::DiagSocket, symbolize::CreationStack,
};

/// A socket younger than this may not have its fd installed yet; it is never judged a ghost.
pub(super) const GHOST_GRACE_NS: u64 = 1_000_000_000;
/// Consecutive holder scans without a holder before a socket is declared released.
pub(super) const GHOST_SCANS: u8 = 2;

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
        self.stats.pre_existing += self
            .adopt_held(
                diag,
                holders,
                now_ns,
                Origin::PreExisting,
                (filter, processes),
                |_| true,
            )
            .0;
    }

    /// Brings every socket up to date with the kernel's view and drops the ones no process
    /// holds any more (their release was missed). Sockets are adopted only if `filter` follows
    /// their holder, as in `seed_pre_existing`.
    pub fn reconcile(
        &mut self,
        diag: &[DiagSocket],
        holders: &Holders,
        now_ns: u64,
        filter: &Filter,
        processes: &impl Processes,
    ) {
        self.learn_cookies_by_inode(diag);
        let by_cookie: KernelKeyed<u64, &DiagSocket> = diag.iter().map(|d| (d.cookie, d)).collect();
        let unaccounted = self.unaccounted_unlisted(&by_cookie, diag, processes);
        let mut ghosts = Vec::new();
        // The same order as the walk below (the map is not changed in between): its sockets'
        // samples are asked for a few sockets ahead.
        let cookies: Vec<u64> = self.sockets.keys().copied().collect();
        for (at, s) in self.sockets.values_mut().enumerate() {
            if let Some(ahead) = cookies
                .get(at + prefetch::AHEAD)
                .and_then(|c| by_cookie.get(c))
            {
                prefetch::prefetch(*ahead);
            }
            let seen = by_cookie.get(&s.cookie);
            if let Some(d) = seen {
                s.observe(d, now_ns);
            } else if s.protocol == Protocol::Tcp && s.state == TcpState::CLOSE {
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
            // Compared first: holders rarely change, and a fresh vector per socket and report
            // adds up over many sockets.
            if *s.holders != *pids {
                s.holders = pids.into();
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
        // The other half of healing: sockets a followed process holds that no event announced.
        // Like ghosts, only on two consecutive scans: a socket created and released while the
        // scans ran is still in this (stale) dump, but its release has already been applied.
        let seen_before = std::mem::take(&mut self.unknown_held_last_scan);
        let (recovered, seen_now) = self.adopt_held(
            diag,
            holders,
            now_ns,
            Origin::Recovered,
            (filter, processes),
            |c| seen_before.contains(&c),
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
    /// many, and the cookies of those `admit` refused.
    ///
    /// What each one is comes from the kernel's view ([`Role`]). A connection on a listener's
    /// port was accepted from it and belongs, as a traced accept does, to the process holding
    /// the listener (a forking server's connections are then one group, the children that
    /// hold them its holders).
    fn adopt_held(
        &mut self,
        diag: &[DiagSocket],
        holders: &Holders,
        now_ns: u64,
        origin: fn(Role) -> Origin,
        (filter, processes): (&Filter, &impl Processes),
        admit: impl Fn(u64) -> bool,
    ) -> (u64, HashSet<u64>) {
        let mut adopted = 0;
        let mut refused = HashSet::new();
        // One read of /proc/PID/{comm,cgroup} per process, however many sockets it holds.
        let mut followed: HashMap<u32, Option<Arc<str>>> = HashMap::new();
        let mut first_followed = |pids: &[u32]| {
            pids.iter().find_map(|&pid| {
                let comm = followed.entry(pid).or_insert_with(|| {
                    let comm = processes.comm(pid).unwrap_or_default();
                    filter
                        .follows_process(pid, &comm, || processes.cgroup(pid))
                        .then(|| Arc::from(comm.as_str()))
                });
                comm.clone().map(|comm| (pid, comm))
            })
        };
        let listeners = Listeners::of(diag);
        for d in diag {
            if d.inode == 0
                || self.sockets.contains_key(&d.cookie)
                || !filter.follows_kind(d.family, d.protocol)
            {
                continue;
            }
            let pids = holders.of(u64::from(d.inode));
            let listener = listeners.accepted_from(d);
            let role = match d.state {
                TcpState::LISTEN if d.protocol == Protocol::Tcp => Role::Listening,
                _ if listener.is_some() => Role::Accepted,
                _ if d.remote.port() != 0 => Role::Connected,
                _ => Role::Unknown,
            };
            let acceptor = listener.and_then(|inode| first_followed(holders.of(inode)));
            let Some((pid, comm)) = acceptor.or_else(|| first_followed(pids)) else {
                continue;
            };
            if !admit(d.cookie) {
                refused.insert(d.cookie);
                continue;
            }
            if self.sockets.len() >= self.capacity {
                break; // already counted as dropped when their events came
            }
            adopted += 1;
            let mut socket = Socket {
                cookie: d.cookie,
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
                local: Some(d.local),
                remote: Some(d.remote),
                rx_queue: d.rx_queue,
                tx_queue: d.tx_queue,
                holders: pids.into(),
                stack: CreationStack::Unknown,
                unheld_scans: 0,
                evidence: Evidence::new(now_ns, d.state, false),
            };
            // Its first look, as every later one: queues, and what the kernel's clocks say.
            socket.observe(d, now_ns);
            self.insert(socket);
        }
        (adopted, refused)
    }

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
        processes: &impl Processes,
    ) -> HashSet<u64> {
        let mut candidates: HashMap<(u32, Protocol), Vec<(u64, u64)>> = HashMap::new();
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
            unaccounted.extend(sockets.iter().skip(available).map(|&(_, cookie)| cookie));
        }
        unaccounted
    }
}

/// The TCP listeners of one scan, by network namespace and port (ports are per namespace).
struct Listeners(HashMap<(u64, u16), Vec<(IpAddr, u64)>>);

impl Listeners {
    fn of(diag: &[DiagSocket]) -> Self {
        let mut by_port: HashMap<(u64, u16), Vec<(IpAddr, u64)>> = HashMap::new();
        for d in diag {
            if d.protocol == Protocol::Tcp && d.state == TcpState::LISTEN && d.inode != 0 {
                let at = (d.netns, d.local.port());
                by_port
                    .entry(at)
                    .or_default()
                    .push((d.local.ip(), u64::from(d.inode)));
            }
        }
        Self(by_port)
    }

    /// The inode of the listener a TCP connection was accepted from: one on its local port
    /// and address (or on every address), in its network namespace.
    fn accepted_from(&self, d: &DiagSocket) -> Option<u64> {
        if d.protocol != Protocol::Tcp || d.state == TcpState::LISTEN || d.remote.port() == 0 {
            return None;
        }
        let on_port = self.0.get(&(d.netns, d.local.port()))?;
        on_port
            .iter()
            .find(|(ip, _)| *ip == d.local.ip())
            .or_else(|| on_port.iter().find(|(ip, _)| ip.is_unspecified()))
            .map(|&(_, inode)| inode)
    }
}
