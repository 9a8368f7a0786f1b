//! Events from the kernel side, applied to the table one at a time as the ring delivers them,
//! and the births a report takes from the kernel's newborn array (`adopt_newborn`).
use std::{collections::HashMap, net::SocketAddr, sync::Arc};

use sockleak_common::{
    Endpoint, EventKind, Family, Origin, Protocol, SockEvent, SockId, SockType, TcpState,
};

use super::{
    SocketTable,
    socket::{Evidence, Looked, Owner, Socket},
    synthetic_id,
};
use crate::{holders::HolderPids, stacks::identity::CreationStack};

/// How many TCP sockets seen only through state changes (children waiting in an accept queue)
/// are remembered until a process accepts them.
const UNOWNED_CAPACITY: usize = 65_536;

/// Events waiting for their socket's announcement ([`SocketTable::adopt_newborn`]), at most:
/// past it they are applied as they come, as without the kernel's map.
const DEFERRED_CAPACITY: usize = 16_384;

/// A TCP socket seen only through state changes so far: an accepted child before `accept()`.
#[derive(Clone, Copy, Debug)]
pub(super) struct Unowned {
    /// Its cookie may be 0 (the classic tracepoint's events have none).
    id: SockId,
    state: TcpState,
    addresses: Option<(SocketAddr, SocketAddr)>,
}

impl SocketTable {
    /// Applies one event from the ring.
    pub fn apply(&mut self, ev: &SockEvent) {
        self.stats.events += 1;
        if self.may_be_about_a_newborn(ev) {
            self.deferred.push(*ev);
            return;
        }
        self.apply_now(ev);
    }

    /// The kernel keeps newborn sockets in its own map until a report reads them (see
    /// `sockleak_common::NEWBORN_SOCKETS`); from then on, events about them are expected.
    pub fn expect_newborn_in_kernel(&mut self) {
        self.newborn_in_kernel = true;
    }

    /// Sockets the kernel kept in its map until now (their creation or accept events, in no
    /// particular order), then the ring's events that were waiting for them. Call before
    /// reading the ring again: an event the ring holds about one of these came after it.
    pub fn adopt_newborn(&mut self, born: &[SockEvent]) {
        for ev in born {
            self.stats.events += 1;
            self.apply_now(ev);
        }
        for ev in std::mem::take(&mut self.deferred) {
            self.apply_now(&ev);
        }
        // Births come in no particular order: a connection may have come before its listener.
        for id in std::mem::take(&mut self.listener_stack_wanted) {
            let Some((port, pid)) = self
                .sockets
                .get(&id)
                .and_then(|s| Some((s.local.as_ref()?.port()?, s.owner.pid)))
            else {
                continue;
            };
            if let Some((_, stack)) = self.listener_of(id.netns, port, pid)
                && let Some(s) = self.sockets.get_mut(&id)
            {
                s.stack = stack;
            }
        }
    }

    /// A state change or memory pressure on a socket the table does not know: with newborn
    /// sockets in the kernel's map, it may be one of them (a new listener, say).
    fn may_be_about_a_newborn(&self, ev: &SockEvent) -> bool {
        self.newborn_in_kernel
            && ev.id().is_known()
            && matches!(
                EventKind::from_u16(ev.kind),
                Some(EventKind::StateChanged | EventKind::RcvQueueFull | EventKind::ExceedBufLimit)
            )
            && !self.sockets.contains_key(&ev.id())
            && self.deferred.len() < DEFERRED_CAPACITY
    }

    fn apply_now(&mut self, ev: &SockEvent) {
        match EventKind::from_u16(ev.kind) {
            Some(EventKind::Created) => self.on_created(ev),
            Some(EventKind::AcceptReturned) => self.on_accept_returned(ev),
            Some(EventKind::CreationCompleted) => self.on_creation_completed(ev),
            Some(EventKind::Accepted) => self.on_accepted(ev),
            Some(EventKind::StateChanged) => self.on_state_changed(ev),
            Some(EventKind::Released) => self.on_released(ev),
            Some(kind @ (EventKind::RcvQueueFull | EventKind::ExceedBufLimit)) => {
                self.on_pressure(ev, kind)
            }
            // About a process, not a socket: the tracer's (see `Tracer::follow`).
            Some(EventKind::Exec) => {}
            Some(EventKind::Connecting) => self.on_connecting(ev),
            None => self.stats.malformed += 1,
        }
    }

    fn on_created(&mut self, ev: &SockEvent) {
        let (Some(protocol), Some(family)) =
            (Protocol::from_ip(ev.protocol), Family::from_af(ev.family))
        else {
            self.stats.ignored += 1;
            return;
        };
        let owner = self.owners.of_task(&ev.task);
        if let Some(existing) = self.sockets.get_mut(&ev.id()) {
            // Created between attaching and the pre-existing scan: the event knows better.
            existing.origin = Origin::Socket;
            existing.owner = owner;
            existing.created_ns = ev.ts_ns;
            existing.stack = CreationStack::of(ev);
            return;
        }
        self.stats.created += 1;
        self.insert(made_socket(ev, Origin::Socket, owner, (family, protocol)));
    }

    /// A UNIX socket connecting: its first word (no hook sees its `socket()`), or, for one a
    /// look found first, its owner and stack. Its name, peer and queues come from the next
    /// look; its end, from a look that no longer finds it held.
    fn on_connecting(&mut self, ev: &SockEvent) {
        let Some(sock_type) = SockType::from_kernel(ev.sock_type) else {
            self.stats.ignored += 1;
            return;
        };
        let owner = self.owners.of_task(&ev.task);
        if let Some(existing) = self.sockets.get_mut(&ev.id()) {
            // A socket connects once; a datagram socket may connect again, keeping what its
            // first connect said.
            if !existing.origin.traced() {
                existing.origin = Origin::Connect;
                existing.owner = owner;
                existing.stack = CreationStack::of(ev);
            }
            return;
        }
        self.stats.connected += 1;
        let kind = (Family::Unix, Protocol::unix(sock_type));
        self.insert(made_socket(ev, Origin::Connect, owner, kind));
    }

    /// The socket an fd event names, if the table knows it. Joined by address only (no
    /// cookie) to a socket with another file, the `struct sock` was freed and its memory
    /// reused: that socket is certainly released, whatever its (cookie keyed) release event
    /// could not find.
    fn known_for_fd(&mut self, ev: &SockEvent) -> Option<SockId> {
        let known = self.lookup(ev.id(), ev.skaddr);
        if let Some(stale) = known.filter(|&key| ev.cookie == 0 && self.reused_address(key, ev)) {
            self.remove(stale);
            self.stats.released += 1;
            return None;
        }
        known
    }

    /// What an fd event adds to a socket the table knows: its inode (a stack taken at
    /// connect() or listen() comes without one), its stack if it had none, its address.
    fn complete(&mut self, id: SockId, ev: &SockEvent) {
        if let Some(s) = self.sockets.get_mut(&id) {
            if ev.inode != 0 {
                s.inode = ev.inode;
            }
            if s.stack == CreationStack::Unknown {
                s.stack = CreationStack::of(ev);
            }
            if s.skaddr != ev.skaddr && ev.skaddr != 0 {
                s.skaddr = ev.skaddr;
                self.id_by_skaddr.insert(ev.skaddr, id);
            }
        }
    }

    /// A creation's late stack (or inode): for a socket the table knows; of a protocol it
    /// does not track (its creation was ignored), nothing.
    fn on_creation_completed(&mut self, ev: &SockEvent) {
        if let Some(id) = self.known_for_fd(ev) {
            self.complete(id, ev);
        }
    }

    /// `accept()` returned a connection: born here as far as the table is concerned, unless
    /// its handshake already announced it.
    fn on_accept_returned(&mut self, ev: &SockEvent) {
        if let Some(id) = self.known_for_fd(ev) {
            self.complete(id, ev);
            return;
        }
        let Some(family) = Family::from_af(ev.family) else {
            self.stats.ignored += 1;
            return;
        };
        // An unowned entry at this address from an earlier socket (cookies differ) is stale.
        let unowned = self
            .unowned
            .remove(&ev.skaddr)
            .filter(|u| !ev.id().is_known() || !u.id.is_known() || u.id == ev.id());
        let id = match unowned {
            _ if ev.id().is_known() => ev.id(),
            Some(u) if u.id.is_known() => u.id,
            // No cookie anywhere (classic tracepoint fallback): a synthetic key that cannot
            // collide with real cookies, which count up from 1.
            _ => synthetic_id(ev.skaddr, ev.netns),
        };
        self.stats.accepted += 1;
        let state = unowned.map_or(TcpState::ESTABLISHED, |u| u.state);
        let addresses = unowned.and_then(|u| u.addresses);
        let owner = self.owners.of_task(&ev.task);
        self.insert(Socket {
            inode: ev.inode,
            stack: CreationStack::of(ev),
            ..accepted_socket(ev, id, owner, family, state, addresses)
        });
    }

    /// A connection through a listener, announced as its handshake completed: its owner is the
    /// listener's (the kernel's, or found here when the kernel did not know the listener), and
    /// so is its stack, which names the code that set up the server; its inode comes with the
    /// next look, once it is accepted.
    fn on_accepted(&mut self, ev: &SockEvent) {
        if self.sockets.contains_key(&ev.id()) {
            // A simultaneous open's socket, announced at its creation.
            return;
        }
        let Some(family) = Family::from_af(ev.family) else {
            self.stats.ignored += 1;
            return;
        };
        let state = TcpState(ev.new_state as u8);
        let addresses = event_addresses(ev);
        let listener = self.listener_of(ev.netns, ev.sport, ev.task.pid);
        let (owner, stack) = match (ev.task.pid, listener) {
            (0, None) => {
                // Nobody known listens there: reports adopt it once a process holds it.
                self.remember_unowned(ev.skaddr, ev.id(), state, addresses);
                return;
            }
            (0, Some((owner, stack))) => (owner, stack),
            (_, Some((_, stack))) => (self.owners.of_task(&ev.task), stack),
            (_, None) => {
                if self.listener_stack_wanted.len() < DEFERRED_CAPACITY {
                    self.listener_stack_wanted.push(ev.id());
                }
                (self.owners.of_task(&ev.task), CreationStack::Unknown)
            }
        };
        self.stats.accepted += 1;
        self.insert(Socket {
            stack,
            ..accepted_socket(ev, ev.id(), owner, family, state, addresses)
        });
    }

    /// The owner and stack of the listener on local `port` of namespace `netns` the table
    /// knows: process `pid`'s, or, for 0 (an owner the kernel did not know), the only one on
    /// that port. The index of listeners by port is built when first needed and dropped
    /// whenever a socket starts or stops listening.
    fn listener_of(
        &mut self,
        netns: u32,
        port: u16,
        pid: u32,
    ) -> Option<(Arc<Owner>, CreationStack)> {
        let sockets = &self.sockets;
        let by_port = self.listeners_by_port.get_or_insert_with(|| {
            let mut by_port: HashMap<(u32, u16), Vec<SockId>> = HashMap::new();
            for s in sockets.values() {
                if s.state == TcpState::LISTEN
                    && let Some(port) = s.local.as_ref().and_then(Endpoint::port)
                {
                    by_port.entry((s.id.netns, port)).or_default().push(s.id);
                }
            }
            by_port
        });
        let mut listeners = by_port
            .get(&(netns, port))?
            .iter()
            .filter_map(|id| sockets.get(id))
            .filter(|s| pid == 0 || s.owner.pid == pid);
        let listener = listeners.next()?;
        if pid == 0 && listeners.next().is_some() {
            return None;
        }
        Some((Arc::clone(&listener.owner), listener.stack))
    }

    fn on_state_changed(&mut self, ev: &SockEvent) {
        let new_state = TcpState(ev.new_state as u8);
        if new_state == TcpState::LISTEN || ev.old_state == u16::from(TcpState::LISTEN.0) {
            self.listeners_by_port = None;
        }
        if let Some(id) = self.lookup(ev.id(), ev.skaddr) {
            if let Some(s) = self.sockets.get_mut(&id) {
                s.state_changed(TcpState(ev.old_state as u8), new_state, ev.ts_ns);
                if let Some((local, remote)) = event_addresses(ev) {
                    for (end, new) in [(&mut s.local, local), (&mut s.remote, remote)] {
                        let old = end.as_ref().and_then(Endpoint::inet);
                        *end = Some(old.map_or(new, |old| newer_address(old, new)).into());
                    }
                }
                if s.skaddr == 0 && ev.skaddr != 0 {
                    s.skaddr = ev.skaddr;
                    self.id_by_skaddr.insert(ev.skaddr, id);
                }
            }
            return;
        }
        if new_state == TcpState::CLOSE {
            // Died before anyone accepted it.
            self.unowned.remove(&ev.skaddr);
            return;
        }
        self.remember_unowned(ev.skaddr, ev.id(), new_state, event_addresses(ev));
    }

    /// A TCP socket no process is known to own yet, at `struct sock` address `skaddr`.
    fn remember_unowned(
        &mut self,
        skaddr: u64,
        id: SockId,
        state: TcpState,
        addresses: Option<(SocketAddr, SocketAddr)>,
    ) {
        let previous = self.unowned.get(&skaddr).and_then(|u| u.addresses);
        let addresses = match (previous, addresses) {
            (Some(old), Some(new)) => {
                Some((newer_address(old.0, new.0), newer_address(old.1, new.1)))
            }
            (old, new) => new.or(old),
        };
        let entry = Unowned {
            id,
            state,
            addresses,
        };
        if self.unowned.insert(skaddr, entry).is_none() {
            self.unowned_order.push_back(skaddr);
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
        if let Some(s) = self.sockets.get(&ev.id())
            && s.protocol == Protocol::Tcp
            && s.state != TcpState::LISTEN
        {
            let (pid, comm) = (s.owner.pid, s.owner.comm.clone());
            self.remember_release(ev.id(), pid, comm);
        }
        if self.remove(ev.id()) {
            self.stats.released += 1;
        }
    }

    fn on_pressure(&mut self, ev: &SockEvent, kind: EventKind) {
        let Some(id) = self.lookup(ev.id(), ev.skaddr) else {
            return;
        };
        if let Some(s) = self.sockets.get_mut(&id) {
            let counter = match kind {
                EventKind::RcvQueueFull => &mut s.evidence.rcvqueue_full,
                _ => &mut s.evidence.exceed_buf_limit,
            };
            *counter = counter.saturating_add(1);
        }
    }

    fn reused_address(&self, key: SockId, ev: &SockEvent) -> bool {
        self.sockets
            .get(&key)
            .is_some_and(|s| s.inode != 0 && ev.inode != 0 && s.inode != ev.inode)
    }
}

/// The state-change tracepoint fires after the kernel released the port on the way to CLOSE
/// (and before it assigned one on the way to SYN_SENT): a zero port never replaces a known one.
fn newer_address(old: SocketAddr, new: SocketAddr) -> SocketAddr {
    if new.port() == 0 { old } else { new }
}

/// A socket its owner was seen making (`socket()`, a UNIX `connect()`), as the table first
/// keeps it: not connected yet as far as it knows, with the event's inode and stack.
fn made_socket(
    ev: &SockEvent,
    origin: Origin,
    owner: Arc<Owner>,
    (family, protocol): (Family, Protocol),
) -> Socket {
    Socket {
        id: ev.id(),
        origin,
        owner,
        family,
        protocol,
        created_ns: ev.ts_ns,
        state: TcpState::CLOSE,
        skaddr: ev.skaddr,
        inode: ev.inode,
        local: None,
        remote: None,
        rx_queue: 0,
        tx_queue: 0,
        holders: HolderPids::default(),
        stack: CreationStack::of(ev),
        looked: Looked::default(),
        evidence: Evidence::new(ev.ts_ns, TcpState::CLOSE, true),
    }
}

/// A connection accepted through a listener, as the table first keeps it: no file (inode 0)
/// and no stack yet, which its caller gives where it knows them.
fn accepted_socket(
    ev: &SockEvent,
    id: SockId,
    owner: Arc<Owner>,
    family: Family,
    state: TcpState,
    addresses: Option<(SocketAddr, SocketAddr)>,
) -> Socket {
    Socket {
        id,
        origin: Origin::Accept,
        owner,
        family,
        protocol: Protocol::Tcp,
        created_ns: ev.ts_ns,
        state,
        skaddr: ev.skaddr,
        inode: 0,
        local: addresses.map(|a| a.0.into()),
        remote: addresses.map(|a| a.1.into()),
        rx_queue: 0,
        tx_queue: 0,
        holders: HolderPids::default(),
        stack: CreationStack::Unknown,
        looked: Looked::default(),
        evidence: Evidence::new(ev.ts_ns, state, true),
    }
}

/// Local and remote address carried by a state-change event, if the kernel side read them.
fn event_addresses(ev: &SockEvent) -> Option<(SocketAddr, SocketAddr)> {
    use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
    if ev.sport == 0 && ev.dport == 0 {
        return None;
    }
    let ip = |b: &[u8; 16]| -> Option<IpAddr> {
        match Family::from_af(ev.family)? {
            Family::Ipv4 => Some(IpAddr::V4(Ipv4Addr::new(b[0], b[1], b[2], b[3]))),
            Family::Ipv6 => Some(IpAddr::V6(Ipv6Addr::from(*b))),
            Family::Unix => None,
        }
    };
    Some((
        SocketAddr::new(ip(&ev.saddr)?, ev.sport),
        SocketAddr::new(ip(&ev.daddr)?, ev.dport),
    ))
}
