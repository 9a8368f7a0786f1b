//! UNIX sockets, seen where they connect: `cgroup/connect_unix` on the cgroup v2 root (Linux
//! 6.7+), which the kernel runs in the connecting task before the connection is made. No hook
//! here sees a UNIX socket's `socket()` or its release: this is the first word of a client
//! socket, with its owner and stack; userspace learns the rest from sock_diag. Like every
//! cgroup program here, it only watches: it always allows.
use aya_ebpf::{
    EbpfContext, helpers::generated::bpf_get_socket_cookie, macros::cgroup_sock_addr,
    programs::SockAddrContext,
};
use sockleak_common::{EventKind, Family, Hook, Protocol, SockId, StackRef};

use crate::{
    addresses::netns_of,
    fdwalk::read_ptr,
    filter::{admits_socket, admits_task},
    maps::{config, send},
    sock::{birth_stack, inode_of_sock},
    task::current_task,
};

/// What cgroup sock_addr programs return to let the call go on.
const ALLOW: i32 = 1;

const AF_UNIX: u16 = Family::Unix.af();

// Both are loaded by userspace itself, with the `connect_unix` attach type: aya's object
// parser knows only the inet sock_addr sections, so the section says `connect4`, and neither
// is ever loaded as that.

/// Takes the connecting task's stack: userspace loads this one where the kernel lets a cgroup
/// program read the task's registers, else the other.
#[cgroup_sock_addr(connect4)]
pub fn unix_connect_with_stacks(ctx: SockAddrContext) -> i32 {
    connecting(&ctx, true)
}

#[cgroup_sock_addr(connect4)]
pub fn unix_connect(ctx: SockAddrContext) -> i32 {
    connecting(&ctx, false)
}

#[inline(always)]
fn connecting(ctx: &SockAddrContext, with_stack: bool) -> i32 {
    let cfg = config();
    let task = current_task();
    // SAFETY: the kernel hands sock_addr programs a valid context; `type` is readable for
    // every attach type.
    let sock_type = unsafe { (*ctx.sock_addr).type_ } as u16;
    if !admits_task(&task) || !admits_socket(AF_UNIX, Protocol::UNIX_TYPE_BIT | sock_type) {
        return ALLOW;
    }
    // SAFETY: reads through the probe helper; a fault only makes it fail.
    let Ok(sk) = (unsafe { read_ptr(ctx.as_ptr() as u64, cfg.sock_addr_sk) }) else {
        return ALLOW;
    };
    let inode = if cfg.socket_inode != 0 {
        inode_of_sock(cfg, sk).unwrap_or(0)
    } else {
        0
    };
    let (stack, sp_word) = if with_stack && cfg.capture_stacks != 0 {
        birth_stack(cfg, task.pid)
    } else {
        (StackRef::NONE, 0)
    };
    // SAFETY: the helper takes the program's own context.
    let id = SockId::new(unsafe { bpf_get_socket_cookie(ctx.as_ptr()) }, netns_of(sk));
    send(EventKind::Connecting, Hook::CgroupConnectUnix, |ev| {
        ev.task = task;
        ev.cookie = id.cookie;
        ev.netns = id.netns;
        ev.family = AF_UNIX;
        ev.sock_type = sock_type;
        ev.skaddr = sk;
        ev.inode = inode;
        ev.user_stack = stack;
        ev.user_sp_word = sp_word;
    });
    ALLOW
}
