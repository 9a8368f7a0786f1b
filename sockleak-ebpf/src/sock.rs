//! Socket birth and release: `cgroup/sock_create` and `cgroup/sock_release` on the cgroup v2
//! root, which the kernel runs for every AF_INET and AF_INET6 socket. They decide whether a
//! socket may exist, and sockleak only watches: both always allow.
use aya_ebpf::{
    EbpfContext, helpers::generated::bpf_get_socket_cookie, macros::cgroup_sock,
    programs::SockContext,
};
use sockleak_common::{
    Config, EventKind, Hook, Protocol, SockEvent, SockId, StackRef, StackStatus,
};

use crate::{
    addresses::netns_of,
    fdwalk::read_ptr,
    filter::{admits_socket, admits_task},
    libuv::handle_stacks,
    maps::{
        LIBUV_PROBED, STACK_PENDING_TID, STACKS_AT_STATE, announce, config, flag_set,
        forget_newborn, send,
    },
    stacks::stack_allowed,
    task::current_task,
};

const TCP: u16 = Protocol::Tcp.inet_ip() as u16;
const UDP: u16 = Protocol::Udp.inet_ip() as u16;

/// What cgroup sock programs return to let the socket be.
const ALLOW: i32 = 1;

#[cgroup_sock(sock_create)]
pub fn sock_create(ctx: SockContext) -> i32 {
    let cfg = config();
    let task = current_task();
    let sock = SockIdentity::of(&ctx);
    let sk = sock.sk;
    let mut stack_pending = false;
    if admits_task(&task) && admits_socket(sock.family, sock.protocol) {
        let fill = |ev: &mut SockEvent| {
            ev.task = task;
            sock.fill(ev);
            ev.skaddr = sk;
            if cfg.libuv_handles != 0 && flag_set(&LIBUV_PROBED) {
                let made = handle_stacks(task.pid, task.tid);
                ev.handle_stack = made.native;
                ev.js_stack_id = made.js;
            }
            if cfg.socket_inode != 0 {
                ev.inode = inode_of_sock(cfg, sk).unwrap_or(0);
                // With the inode named here, only the stack is left to take: at the exit of
                // `socket()`, chosen here within the budget (that exit sends nothing
                // otherwise), or where the state program sees a TCP socket connect or listen.
                // A socket opened for a libuv handle has the handle's stack, which says more.
                if cfg.capture_stacks != 0 && ev.handle_stack.is(StackStatus::None) {
                    if flag_set(&STACKS_AT_STATE) {
                        // No `socket()` exit: the state program takes the stack, within the
                        // budget then. A UDP socket has no such moment.
                        if sock.protocol == TCP {
                            ev.user_stack = StackRef::PENDING;
                        }
                    } else if stack_allowed(ev, task.pid, cfg.stack_rate) {
                        ev.user_stack = StackRef::PENDING;
                        stack_pending = true;
                    }
                }
            }
        };
        if sock.protocol == TCP || sock.protocol == UDP {
            announce(EventKind::Created, Hook::CgroupSockCreate, fill);
        } else {
            // Raw and ICMP sockets: userspace counts them as ignored, as it always did.
            send(EventKind::Created, Hook::CgroupSockCreate, fill);
        }
    }
    if cfg.socket_inode != 0
        && cfg.capture_stacks != 0
        && let Some(pending) = STACK_PENDING_TID.get_ptr_mut(0)
    {
        // SAFETY: this CPU's slot, valid and aligned for the program's run; only programs in
        // process context use it, and the exit of `socket()` reads it in the same task. A
        // program interrupting this one can only leave a stale tid, and the fd walk at that
        // exit names the socket the stack goes to whatever the slot held.
        unsafe { *pending = if stack_pending { task.tid } else { 0 } };
    }
    ALLOW
}

/// `sk->sk_socket`, then the inode beside that `struct socket` (`socket_alloc`).
#[inline(always)]
fn inode_of_sock(cfg: &Config, sk: u64) -> Result<u64, i32> {
    // SAFETY: reads through the probe helper; a fault only makes them fail.
    unsafe {
        let socket = read_ptr(sk, cfg.sock_socket)?;
        if socket == 0 {
            return Err(-1);
        }
        read_ptr(socket + cfg.socket_inode, cfg.inode_ino)
    }
}

#[cgroup_sock(sock_release)]
pub fn sock_release(ctx: SockContext) -> i32 {
    // No task and no owner filter: the last `fput` can run in a kworker, so the releasing task
    // says nothing about the owner, and reading it would be a large part of the program.
    let sock = SockIdentity::of(&ctx);
    let tcp = sock.protocol == TCP;
    // A socket userspace has not read yet leaves without a word: most sockets of a busy
    // service end here.
    if admits_socket(sock.family, sock.protocol) && !forget_newborn(sock.id, tcp) {
        send(EventKind::Released, Hook::CgroupSockRelease, |ev| {
            sock.fill(ev)
        });
    }
    ALLOW
}

/// The socket's identity and kind, as a cgroup sock program sees it.
struct SockIdentity {
    /// The program's context is the `struct sock` itself (bpf_sock is a view of it).
    sk: u64,
    id: SockId,
    family: u16,
    protocol: u16,
    sock_type: u16,
}

impl SockIdentity {
    #[inline(always)]
    fn of(ctx: &SockContext) -> Self {
        // SAFETY: the kernel hands cgroup sock programs a valid `struct bpf_sock`.
        unsafe {
            let sock = &*ctx.sock;
            Self {
                sk: ctx.sock as u64,
                id: SockId::new(
                    bpf_get_socket_cookie(ctx.as_ptr()),
                    netns_of(ctx.sock as u64),
                ),
                family: sock.family as u16,
                protocol: sock.protocol as u16,
                sock_type: sock.type_ as u16,
            }
        }
    }

    #[inline(always)]
    fn fill(&self, ev: &mut SockEvent) {
        ev.cookie = self.id.cookie;
        ev.netns = self.id.netns;
        ev.family = self.family;
        ev.protocol = self.protocol;
        ev.sock_type = self.sock_type;
    }
}
