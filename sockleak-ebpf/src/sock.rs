//! Socket birth and release: `cgroup/sock_create` and `cgroup/sock_release` on the cgroup v2
//! root, which the kernel runs for every AF_INET and AF_INET6 socket. They decide whether a
//! socket may exist, and sockleak only watches: both always allow.
use aya_ebpf::{
    EbpfContext, helpers::generated::bpf_get_socket_cookie, macros::cgroup_sock,
    programs::SockContext,
};
use sockleak_common::{
    Config, EventKind, Hook, Protocol, SockEvent, SockId, StackRef, StackStatus, StackUnwinder,
};

use crate::{
    addresses::netns_of,
    fdwalk::read_ptr,
    filter::{admits_socket, admits_task},
    libuv::handle_stacks,
    maps::HandleStacks,
    maps::{
        LIBUV_HANDLE_MADE, STACK_PENDING_TID, STACKS_AT_STATE, announce, config, flag_set,
        forget_newborn, send,
    },
    stacks::{copy_user_stack, stack_budget, unwinder_of, walk_user_stack},
    task::current_task,
};

const TCP: u16 = Protocol::Tcp.inet_ip() as u16;
const UDP: u16 = Protocol::Udp.inet_ip() as u16;

/// What cgroup sock programs return to let the socket be.
const ALLOW: i32 = 1;

#[cgroup_sock(sock_create)]
pub fn sock_create(ctx: SockContext) -> i32 {
    created(&ctx, StackCapture::Later)
}

/// `sock_create`, taking each socket's stack at its birth: userspace loads this one where the
/// kernel lets a cgroup program read the task's registers (a program that calls a helper its
/// type may not use does not load, so the choice is made by loading it), else the other.
#[cgroup_sock(sock_create)]
pub fn sock_create_with_stacks(ctx: SockContext) -> i32 {
    created(&ctx, StackCapture::AtBirth)
}

/// Where a created socket's stack is taken.
#[derive(Clone, Copy, PartialEq, Eq)]
enum StackCapture {
    /// Here, by a walk of the creating task's user stack: TCP and UDP alike, from the same
    /// call, so that one code path's sockets are one group.
    AtBirth,
    /// At the exit of its `socket()` call, or where a TCP socket connects or listens.
    Later,
}

#[inline(always)]
fn created(ctx: &SockContext, capture: StackCapture) -> i32 {
    let cfg = config();
    let task = current_task();
    let sock = SockIdentity::of(ctx);
    let sk = sock.sk;
    let mut stack_pending = false;
    if admits_task(&task) && admits_socket(sock.family, sock.protocol) {
        let inet = sock.protocol == TCP || sock.protocol == UDP;
        // A socket opened for a libuv handle has the handle's stack, which says more.
        let made = if cfg.libuv_handles != 0 && flag_set(&LIBUV_HANDLE_MADE) {
            handle_stacks(task.pid, task.tid)
        } else {
            HandleStacks::NONE
        };
        let inode = if cfg.socket_inode != 0 {
            inode_of_sock(cfg, sk).unwrap_or(0)
        } else {
            0
        };
        // Decided before the event is built, which may be built in more than one place
        // (the newborn array or the ring): the walk is written once.
        let (stack, sp_word) = if cfg.socket_inode == 0
            || cfg.capture_stacks == 0
            || !made.native.is(StackStatus::None)
            || !inet
        {
            // Without the inode here, the exit of `socket()` names it and takes the stack.
            (StackRef::NONE, 0)
        } else {
            match capture {
                StackCapture::AtBirth => birth_stack(cfg, task.pid),
                // No `socket()` exit: the state program takes the stack, within the budget
                // then. A UDP socket has no such moment.
                StackCapture::Later if flag_set(&STACKS_AT_STATE) => {
                    let tcp = sock.protocol == TCP;
                    (
                        if tcp {
                            StackRef::PENDING
                        } else {
                            StackRef::NONE
                        },
                        0,
                    )
                }
                // At the exit of `socket()`, chosen here within the budget (that exit sends
                // nothing otherwise).
                StackCapture::Later => match stack_budget(task.pid, cfg.stack_rate) {
                    Ok(()) => {
                        stack_pending = true;
                        (StackRef::PENDING, 0)
                    }
                    Err(refused) => (refused, 0),
                },
            }
        };
        let fill = |ev: &mut SockEvent| {
            ev.task = task;
            sock.fill(ev);
            ev.skaddr = sk;
            ev.inode = inode;
            ev.handle_stack = made.native;
            ev.js_stack_id = made.js;
            ev.user_stack = stack;
            ev.user_sp_word = sp_word;
        };
        if inet {
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

/// The creating task's stack, within its process's budget: walked here along its frame
/// pointers (with the word at its stack pointer, see [`SockEvent::user_sp_word`]), or copied
/// for userspace to unwind, as its process's unwinder says.
#[inline(always)]
pub fn birth_stack(cfg: &Config, pid: u32) -> (StackRef, u64) {
    match stack_budget(pid, cfg.stack_rate) {
        Ok(()) => match unwinder_of(cfg, pid) {
            StackUnwinder::FramePointers => walk_user_stack(cfg),
            StackUnwinder::Copy => (copy_user_stack(cfg, pid), 0),
        },
        Err(refused) => (refused, 0),
    }
}

/// `sk->sk_socket`, then the inode beside that `struct socket` (`socket_alloc`).
#[inline(always)]
pub fn inode_of_sock(cfg: &Config, sk: u64) -> Result<u64, i32> {
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
