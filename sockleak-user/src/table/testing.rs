//! Events, scans and processes made up by hand, for the table's tests and the verdicts'.
pub(crate) use sockleak_common::SockId;
use sockleak_common::{EventKind, Family, Hook, Protocol, SockEvent, Task, TcpState, comm_bytes};

use super::Processes;
use crate::sockdiag::DiagSocket;

/// A kernel state as a state-change event carries it.
pub(crate) fn state(s: TcpState) -> u16 {
    s.0.into()
}

/// Processes as a test makes them up: every one alive, named `test`, in no cgroup, holding the
/// inet sockets its function says.
pub(crate) struct World<F>(pub F);

impl<F: Fn(u32) -> Vec<(u64, Protocol)>> Processes for World<F> {
    fn comm(&self, _pid: u32) -> Option<String> {
        Some("test".to_owned())
    }

    fn cgroup(&self, _pid: u32) -> Option<String> {
        None
    }

    fn inet_sockets(&self, pid: u32) -> Vec<(u64, Protocol)> {
        (self.0)(pid)
    }
}

/// A world whose processes hold no TCP or UDP socket of their own.
pub(crate) fn nobody_holds() -> World<impl Fn(u32) -> Vec<(u64, Protocol)>> {
    World(|_| Vec::new())
}

pub(crate) fn task(pid: u32, comm: &str) -> Task {
    Task {
        pid,
        tid: pid,
        comm: comm_bytes(comm),
        ..Task::default()
    }
}

pub(crate) fn event(kind: EventKind, hook: Hook) -> SockEvent {
    let mut e = SockEvent::new(kind, hook);
    e.ts_ns = 1;
    e.family = 2;
    e.protocol = 6;
    e.sock_type = 1;
    e
}

/// Cookies as identities in a namespace the kernel side could not read (as these tests'
/// events, whose `netns` is 0).
pub(crate) fn ids(cookies: &[u64]) -> Vec<SockId> {
    cookies
        .iter()
        .map(|&cookie| SockId::new(cookie, 0))
        .collect()
}

/// A TCP socket as sock_diag would list it.
pub(crate) fn diag(cookie: u64, state: TcpState, inode: u32) -> DiagSocket {
    DiagSocket {
        id: SockId::new(cookie, 0),
        family: Family::Ipv4,
        protocol: Protocol::Tcp,
        state,
        local: "127.0.0.1:1".parse().unwrap(),
        remote: "127.0.0.1:2".parse().unwrap(),
        rx_queue: 0,
        tx_queue: 0,
        uid: 0,
        inode,
        mem: None,
        tcp: None,
        netns: 1,
        unix: None,
    }
}

pub(crate) fn created(cookie: u64, pid: u32) -> SockEvent {
    let mut e = event(EventKind::Created, Hook::CgroupSockCreate);
    e.cookie = cookie;
    e.task = task(pid, "client");
    e
}

/// The fd install of an accept whose fd walk found no cookie (none assigned yet): pid 4242,
/// the server.
pub(crate) fn accepted_without_cookie(skaddr: u64, inode: u64) -> SockEvent {
    let mut e = event(EventKind::AcceptReturned, Hook::SysExitAccept4);
    e.skaddr = skaddr;
    e.inode = inode;
    e.task = task(4242, "server");
    e
}

/// A socket starting to listen on local `port` (0: the event read no address).
pub(crate) fn listening(cookie: u64, port: u16) -> SockEvent {
    let mut e = event(EventKind::StateChanged, Hook::TpBtfInetSockSetState);
    e.cookie = cookie;
    e.old_state = state(TcpState::CLOSE);
    e.new_state = state(TcpState::LISTEN);
    e.sport = port;
    e
}

/// A connection through the listener on local `port` completing its handshake, announced as
/// the kernel's `LISTENERS` map names its owner (`pid` 0: the kernel did not know it).
pub(crate) fn handshake(cookie: u64, pid: u32, port: u16) -> SockEvent {
    let mut e = event(EventKind::Accepted, Hook::TpBtfInetSockSetState);
    e.cookie = cookie;
    e.skaddr = 0xffff_0000 + cookie;
    e.task = if pid == 0 {
        Task::default()
    } else {
        task(pid, "server")
    };
    e.old_state = state(TcpState::SYN_RECV);
    e.new_state = state(TcpState::ESTABLISHED);
    e.sport = port;
    e.dport = 40_000;
    e.saddr[..4].copy_from_slice(&[127, 0, 0, 1]);
    e.daddr[..4].copy_from_slice(&[127, 0, 0, 1]);
    e
}

pub(crate) fn released(cookie: u64) -> SockEvent {
    let mut e = event(EventKind::Released, Hook::CgroupSockRelease);
    e.cookie = cookie;
    e
}
