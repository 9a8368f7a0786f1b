//! Connections through a listener, announced where the kernel makes them: a passive open's
//! child becoming ESTABLISHED, in the softirq that received the handshake's last ACK. Its owner
//! is the process that listens: `listen()` (process context) writes itself into `LISTENERS`
//! under the listener's network namespace and port, and each child reads it there. No syscall
//! tracepoint is needed, and those cost every system call of every process on the machine.
use aya_ebpf::helpers::{bpf_probe_read_kernel, generated::bpf_get_socket_cookie};
use sockleak_common::{
    EventKind, Hook, ListenerKey, ListenerOwner, Protocol, SockId, SockType, Stat, Task,
};

use crate::{
    addresses::read_addresses,
    filter::{admits_socket, admits_task, filters_owners},
    maps::{LISTENERS, announce, config, count},
    task::current_task,
};

/// A constant: `inet_ip` is then evaluated while building, never in a program.
const TCP: u16 = Protocol::Tcp.inet_ip() as u16;

/// The listener `sk` in namespace `netns` ([`crate::addresses::netns_of`]) is keyed by in
/// `LISTENERS`; `None` when its namespace cannot be read.
#[inline(always)]
fn key_of(sk: u64, netns: u32) -> Option<ListenerKey> {
    if netns == 0 {
        return None;
    }
    let cfg = config();
    // SAFETY: a read through the probe helper; a fault only makes it fail.
    let port: u16 = unsafe { bpf_probe_read_kernel((sk + cfg.sock_num) as *const u16) }.ok()?;
    Some(ListenerKey {
        netns,
        port,
        _pad: 0,
    })
}

/// `sk` started listening, in the process that called `listen()`: its connections will be
/// that process's, if the owner filters follow it.
#[inline(always)]
pub fn listening(sk: u64, id: SockId) {
    let Some(key) = key_of(sk, id.netns) else {
        return;
    };
    let task = current_task();
    if !admits_task(&task) {
        return;
    }
    let owner = ListenerOwner {
        task,
        cookie: id.cookie,
    };
    if LISTENERS.insert(&key, &owner, 0).is_err() {
        count(Stat::ListenersFull);
    }
}

/// `sk` stopped listening: its entry goes, unless another listener on the port replaced it.
#[inline(always)]
pub fn stopped_listening(sk: u64, netns: u32) {
    let Some(key) = key_of(sk, netns) else {
        return;
    };
    // SAFETY: a map value, read at once: nothing inserts into or removes from `LISTENERS`
    // before the comparison is done.
    let ours = unsafe { LISTENERS.get(&key) }.is_some_and(|owner| {
        // SAFETY: `sk` is the state tracepoint's typed `struct sock *` argument (only cast to
        // an integer and back), which the verifier checks is a socket pointer this helper
        // accepts; the helper only reads the socket's cookie, or assigns it one.
        owner.cookie == unsafe { bpf_get_socket_cookie(sk as *mut _) }
    });
    if ours {
        let _ = LISTENERS.remove(&key);
    }
}

/// The child `sk` of a listener became ESTABLISHED: announced as its listener's owner's.
#[inline(always)]
pub fn connected(sk: u64, id: SockId, old_state: i32, new_state: i32) {
    // SAFETY: a map value, copied out at once.
    let owner = key_of(sk, id.netns).and_then(|key| unsafe { LISTENERS.get(&key) });
    let task = match owner {
        Some(owner) => owner.task,
        // With owner filters, a listener they follow is in the map (userspace writes the
        // ones older than sockleak): this one is someone else's.
        None if filters_owners() => return,
        None => {
            count(Stat::AcceptedUnowned);
            Task::default()
        }
    };
    let cfg = config();
    // SAFETY: as in `key_of`.
    let Ok(family) = (unsafe { bpf_probe_read_kernel((sk + cfg.sock_family) as *const u16) })
    else {
        return;
    };
    if !admits_socket(family, TCP) {
        return;
    }
    announce(EventKind::Accepted, Hook::TpBtfInetSockSetState, |ev| {
        ev.task = task;
        ev.cookie = id.cookie;
        ev.netns = id.netns;
        ev.skaddr = sk;
        ev.protocol = TCP;
        ev.sock_type = SockType::Stream as u16;
        ev.old_state = old_state as u16;
        ev.new_state = new_state as u16;
        let _ = read_addresses(sk, ev);
    });
}
