//! The programs. Each one fills a `SockEvent` in the ring (`maps::send`); none keeps per-socket
//! state (the stack budget is per process, the pending stack per CPU).
//!
//! | program                  | attach point                         | context  | tells              |
//! |--------------------------|--------------------------------------|----------|--------------------|
//! | `sock_create`            | cgroup/sock_create (cgroup v2 root)  | process  | new socket, owner, inode; picks `socket()` stacks |
//! | `sock_release`           | cgroup/sock_release                  | process* | socket gone        |
//! | `inet_sock_set_state`    | tp_btf/inet_sock_set_state           | any      | LISTEN, and CLOSE while held (`state_worth_sending`); gives accepted sockets their cookie |
//! | `inet_sock_set_state_tp` | tracepoint sock/inet_sock_set_state  | any      | TCP state, no cookie (fallback) |
//! | `sys_exit_accept`, `sys_exit_accept4` | syscalls tracepoints | process | fd, inode, owner of accepted sockets, their stacks (at most `stack_rate` per process and second) |
//! | `sys_exit_socket`        | tracepoint syscalls/sys_exit_socket  | process  | the stack `sock_create` picked |
//! | `sock_rcvqueue_full`, `sock_exceed_buf_limit` | tp_btf | any | memory pressure on one socket |
//!
//! (*) the last `fput` can run from a kworker; the release event carries no ownership meaning.
//!
//! `--pid`, `--comm`, `--cgroup`, `--family` and `--protocol` are applied here too (`filter`).
use aya_ebpf::{
    EbpfContext,
    bindings::BPF_F_USER_STACK,
    cty::c_void,
    helpers::{
        bpf_get_current_pid_tgid, bpf_get_current_uid_gid, bpf_probe_read_kernel,
        bpf_probe_read_user,
        generated::{
            bpf_get_current_cgroup_id, bpf_get_current_comm, bpf_get_current_task_btf,
            bpf_get_socket_cookie, bpf_task_pt_regs,
        },
    },
    macros::{btf_tracepoint, cgroup_sock, tracepoint},
    programs::{BtfTracePointContext, SockContext, TracePointContext, tracing::StackIdContext},
};
use aya_log_ebpf::debug;
use core::mem::MaybeUninit;
use sockleak_common::{
    COMM_LEN, Config, EventKind, Hook, STACK_NOT_SAMPLED, STACK_PENDING, SockEvent, Stat, Task,
};

use crate::{
    fdwalk::{read_ptr, socket_of_fd},
    filter::{admits_socket, admits_task},
    maps::{
        STACK_BUDGET, STACK_PENDING_TID, STACKS, StackWindow, config, config_field, count, send,
    },
};

/// cgroup sock programs decide whether a socket may exist. sockleak only watches.
const ALLOW: i32 = 1;
const AF_INET6: u16 = 10;

#[inline(always)]
fn current_task() -> Task {
    let pid_tgid = bpf_get_current_pid_tgid();
    // Field by field, without zeroing first (zeroing compiles to a `memset` call, see `send`).
    let mut task = MaybeUninit::<Task>::uninit();
    let t = task.as_mut_ptr();
    // SAFETY: every field is written before `assume_init`; the comm helper fills all 16 bytes
    // (zeroes when it fails).
    unsafe {
        (*t).pid = (pid_tgid >> 32) as u32;
        (*t).tid = pid_tgid as u32;
        (*t).uid = bpf_get_current_uid_gid() as u32;
        (*t)._pad = 0;
        (*t).cgroup_id = bpf_get_current_cgroup_id();
        bpf_get_current_comm((&raw mut (*t).comm).cast(), COMM_LEN as u32);
        task.assume_init()
    }
}

#[cgroup_sock(sock_create)]
pub fn sock_create(ctx: SockContext) -> i32 {
    let cfg = config();
    let task = current_task();
    let sock = SockIdentity::of(&ctx);
    // The program's context is the `struct sock` itself (bpf_sock is a view of it).
    let sk = ctx.sock as u64;
    let mut stack_pending = false;
    if admits_task(&task) && admits_socket(sock.family, sock.protocol) {
        send(EventKind::Created, Hook::CgroupSockCreate, |ev| {
            ev.task = task;
            sock.fill(ev);
            ev.skaddr = sk;
            if cfg.socket_inode != 0 {
                ev.inode = inode_of_sock(&cfg, sk).unwrap_or(0);
                // With the inode named here, the exit of `socket()` only matters for the
                // stack: it is decided here, and that exit sends nothing otherwise.
                if cfg.capture_stacks != 0 && stack_allowed(ev, task.pid, cfg.stack_rate) {
                    ev.user_stack_id = STACK_PENDING;
                    stack_pending = true;
                }
            }
        });
    }
    if cfg.socket_inode != 0
        && cfg.capture_stacks != 0
        && let Some(pending) = STACK_PENDING_TID.get_ptr_mut(0)
    {
        // SAFETY: this CPU's slot; programs on one CPU do not preempt each other here.
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
    // says nothing about the owner (and reading it was 0.4 us of every release).
    let sock = SockIdentity::of(&ctx);
    if admits_socket(sock.family, sock.protocol) {
        send(EventKind::Released, Hook::CgroupSockRelease, |ev| {
            sock.fill(ev)
        });
    }
    ALLOW
}

/// The socket's identity, as a cgroup sock program sees it.
struct SockIdentity {
    cookie: u64,
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
                cookie: bpf_get_socket_cookie(ctx.as_ptr()),
                family: sock.family as u16,
                protocol: sock.protocol as u16,
                sock_type: sock.type_ as u16,
            }
        }
    }

    #[inline(always)]
    fn fill(&self, ev: &mut SockEvent) {
        ev.cookie = self.cookie;
        ev.family = self.family;
        ev.protocol = self.protocol;
        ev.sock_type = self.sock_type;
    }
}

#[btf_tracepoint(function = "inet_sock_set_state")]
pub fn inet_sock_set_state(ctx: BtfTracePointContext) -> i32 {
    let sk: *mut c_void = ctx.arg(0);
    let old_state: i32 = ctx.arg(1);
    let new_state: i32 = ctx.arg(2);
    if new_state == TCP_SYN_RECV || old_state == TCP_SYN_RECV {
        // A passive open's child: cloned from its listener (-> SYN_RECV), then connected
        // (SYN_RECV ->). The fd walk at accept() reads the cookie from the socket, and the
        // kernel only assigns one when asked: this is where accepted sockets get theirs. Both
        // transitions: up to 6.12 at least the clone copies its request's cookie over the one
        // assigned at the first, and with TCP Fast Open a child can be accepted before the
        // second. Not at each of a connection's ten transitions: 0.2 us a connection less.
        unsafe { bpf_get_socket_cookie(sk) };
    }
    if !state_worth_sending(sk as u64, new_state) {
        return 0;
    }
    let cookie = unsafe { bpf_get_socket_cookie(sk) };
    send(EventKind::StateChanged, Hook::TpBtfInetSockSetState, |ev| {
        ev.skaddr = sk as u64;
        ev.cookie = cookie;
        ev.old_state = old_state as u16;
        ev.new_state = new_state as u16;
        let _ = read_addresses(sk as u64, ev);
    });
    0
}

const TCP_SYN_RECV: i32 = 3;
const TCP_CLOSE: i32 = 7;
const TCP_LISTEN: i32 = 10;

/// Most transitions are churn userspace learns nothing from: every connection passes through
/// SYN_SENT, ESTABLISHED, FIN_WAIT, LAST_ACK..., and the sock_diag sample every interval tells
/// the state of any socket that lives long enough to matter. Only two are sent: LISTEN, and
/// CLOSE while a file still holds the socket (reset or timed out under its owner: such a socket
/// leaves sock_diag's tables, so only this event tells). Sending every transition tripled the
/// events of a connect/accept/close churn.
#[inline(always)]
fn state_worth_sending(sk: u64, new_state: i32) -> bool {
    if new_state == TCP_LISTEN {
        return true;
    }
    if new_state != TCP_CLOSE {
        return false;
    }
    let cfg = config();
    if cfg.have_offsets == 0 {
        return true; // cannot tell whether it is still held
    }
    // SAFETY: a read through the probe helper; a fault makes it fail, and then it is sent.
    unsafe { bpf_probe_read_kernel((sk + cfg.sock_socket) as *const u64) }.map_or(true, |s| s != 0)
}

/// Ports and addresses from `sk->__sk_common`; best effort (offsets come from BTF).
#[inline(always)]
fn read_addresses(sk: u64, ev: &mut SockEvent) -> Result<(), i32> {
    let cfg = config();
    if cfg.have_offsets == 0 {
        return Ok(());
    }
    unsafe {
        let family: u16 = bpf_probe_read_kernel((sk + cfg.sock_family) as *const u16)?;
        let dport: u16 = bpf_probe_read_kernel((sk + cfg.sock_dport) as *const u16)?;
        ev.family = family;
        ev.dport = u16::from_be(dport);
        ev.sport = bpf_probe_read_kernel((sk + cfg.sock_num) as *const u16)?;
        if ev.sport == 0 {
            // Unhashed at CLOSE: skc_num is gone, inet_sport still says.
            let sport: u16 = bpf_probe_read_kernel((sk + cfg.inet_sport) as *const u16)?;
            ev.sport = u16::from_be(sport);
        }
        if family == AF_INET6 {
            ev.saddr = bpf_probe_read_kernel((sk + cfg.sock_v6_rcv_saddr) as *const [u8; 16])?;
            ev.daddr = bpf_probe_read_kernel((sk + cfg.sock_v6_daddr) as *const [u8; 16])?;
        } else {
            let s: [u8; 4] = bpf_probe_read_kernel((sk + cfg.sock_rcv_saddr) as *const [u8; 4])?;
            let d: [u8; 4] = bpf_probe_read_kernel((sk + cfg.sock_daddr) as *const [u8; 4])?;
            ev.saddr[..4].copy_from_slice(&s);
            ev.daddr[..4].copy_from_slice(&d);
        }
    }
    Ok(())
}

/// Only as tp_btf: the classic formats of these two tracepoints do not say which socket.
#[btf_tracepoint(function = "sock_rcvqueue_full")]
pub fn sock_rcvqueue_full(ctx: BtfTracePointContext) -> i32 {
    pressure(&ctx, EventKind::RcvQueueFull, Hook::TpBtfSockRcvqueueFull);
    0
}

#[btf_tracepoint(function = "sock_exceed_buf_limit")]
pub fn sock_exceed_buf_limit(ctx: BtfTracePointContext) -> i32 {
    pressure(
        &ctx,
        EventKind::ExceedBufLimit,
        Hook::TpBtfSockExceedBufLimit,
    );
    0
}

#[inline(always)]
fn pressure(ctx: &BtfTracePointContext, kind: EventKind, hook: Hook) {
    let sk: *mut c_void = ctx.arg(0);
    let cookie = unsafe { bpf_get_socket_cookie(sk) };
    send(kind, hook, |ev| {
        ev.skaddr = sk as u64;
        ev.cookie = cookie;
    });
}

/// Fallback for kernels without BTF: same meaning, but no cookie (userspace joins on skaddr).
#[tracepoint(category = "sock", name = "inet_sock_set_state")]
pub fn inet_sock_set_state_tp(ctx: TracePointContext) -> i32 {
    let cfg = config();
    // SAFETY: reads of the tracepoint record at offsets from its tracefs format.
    let (skaddr, old_state, new_state) = unsafe {
        (
            ctx.read_at::<u64>(cfg.tp_skaddr as usize).unwrap_or(0),
            ctx.read_at::<i32>(cfg.tp_oldstate as usize).unwrap_or(0),
            ctx.read_at::<i32>(cfg.tp_newstate as usize).unwrap_or(0),
        )
    };
    send(
        EventKind::StateChanged,
        Hook::TracepointInetSockSetState,
        |ev| {
            ev.skaddr = skaddr;
            ev.old_state = old_state as u16;
            ev.new_state = new_state as u16;
        },
    );
    0
}

/// Runs at the end of every `socket()` on the machine (unix sockets too), so it returns at once
/// unless `sock_create` chose this thread's socket for a stack.
#[tracepoint(category = "syscalls", name = "sys_exit_socket")]
pub fn sys_exit_socket(ctx: TracePointContext) -> i32 {
    if config_field(|c| &c.socket_inode) == 0 {
        // Older layout: the creation event has no inode, this exit gives it (and the stack).
        fd_installed(&ctx, Hook::SysExitSocket, StackChoice::Budgeted);
        return 0;
    }
    if config_field(|c| &c.capture_stacks) == 0 {
        return 0;
    }
    let tid = bpf_get_current_pid_tgid() as u32;
    let Some(pending) = STACK_PENDING_TID.get_ptr_mut(0) else {
        return 0;
    };
    // SAFETY: this CPU's slot, as in `sock_create`.
    unsafe {
        if *pending != tid || tid == 0 {
            return 0;
        }
        *pending = 0;
    }
    // The fd walk names the socket the stack belongs to, whatever the slot held.
    fd_installed(&ctx, Hook::SysExitSocket, StackChoice::Take);
    0
}

#[tracepoint(category = "syscalls", name = "sys_exit_accept")]
pub fn sys_exit_accept(ctx: TracePointContext) -> i32 {
    fd_installed(&ctx, Hook::SysExitAccept, StackChoice::Budgeted);
    0
}

#[tracepoint(category = "syscalls", name = "sys_exit_accept4")]
pub fn sys_exit_accept4(ctx: TracePointContext) -> i32 {
    fd_installed(&ctx, Hook::SysExitAccept4, StackChoice::Budgeted);
    0
}

/// Whether an fd install takes the user stack.
#[derive(Clone, Copy, PartialEq, Eq)]
enum StackChoice {
    /// If the process is within its `stack_rate`.
    Budgeted,
    /// Yes: `sock_create` already spent the budget on it.
    Take,
}

#[inline(always)]
fn fd_installed(ctx: &TracePointContext, hook: Hook, stacks: StackChoice) {
    let cfg = config();
    let ret: i64 = unsafe { ctx.read_at(cfg.sys_exit_ret as usize) }.unwrap_or(-1);
    if ret < 0 {
        return; // the syscall failed: no socket
    }
    let task = current_task();
    if !admits_task(&task) {
        return;
    }
    let fd = ret as i32;
    match socket_of_fd(&cfg, fd) {
        Ok(Some(found)) if admits_socket(found.family, 0) => {
            send(EventKind::FdInstalled, hook, |ev| {
                ev.task = task;
                ev.fd = fd;
                ev.skaddr = found.skaddr;
                ev.cookie = found.cookie;
                ev.inode = found.inode;
                ev.family = found.family;
                if cfg.capture_stacks != 0
                    && (stacks == StackChoice::Take || stack_allowed(ev, task.pid, cfg.stack_rate))
                {
                    capture_stacks(ctx, &cfg, ev);
                }
            });
        }
        Ok(_) => {} // not an inet socket, or filtered out
        Err(err) => {
            count(Stat::FdWalkFailed);
            debug!(ctx, "sockleak: fd walk failed for fd {}: {}", fd, err);
        }
    }
}

const EEXIST: i32 = 17;
const NS_PER_SEC: u64 = 1_000_000_000;

/// Whether the stack of the socket `ev` announces may be taken: within its process's budget.
/// If not, the event says so and the refusal is counted.
#[inline(always)]
fn stack_allowed(ev: &mut SockEvent, pid: u32, rate: u64) -> bool {
    if within_stack_budget(pid, rate, ev.ts_ns) {
        return true;
    }
    ev.user_stack_id = STACK_NOT_SAMPLED;
    count(Stat::StacksNotSampled);
    false
}

/// Whether process `pid` may have one more creation stack in the second that is running at
/// `now_ns`. The count is not atomic: two CPUs racing may both take the last stack of a window,
/// which only means a stack more.
#[inline(always)]
fn within_stack_budget(pid: u32, rate: u64, now_ns: u64) -> bool {
    if rate == 0 {
        return true;
    }
    match STACK_BUDGET.get_ptr_mut(&pid) {
        // SAFETY: this process's map value, valid for the program's run.
        Some(window) => unsafe {
            if now_ns.wrapping_sub((*window).start_ns) >= NS_PER_SEC {
                (*window).start_ns = now_ns;
                (*window).taken = 1;
                true
            } else {
                (*window).taken += 1;
                (*window).taken <= rate
            }
        },
        None => {
            let first = StackWindow {
                start_ns: now_ns,
                taken: 1,
            };
            let _ = STACK_BUDGET.insert(&pid, &first, 0);
            true
        }
    }
}

/// The creating task's user stack, at the syscall that gave it the socket. Only
/// here: this is process context, and `current` is the owner.
#[inline(always)]
fn capture_stacks(ctx: &TracePointContext, cfg: &Config, ev: &mut SockEvent) {
    ev.user_stack_id = stack_id(ctx, BPF_F_USER_STACK as u64);
    if cfg.have_task_pt_regs != 0 {
        // SAFETY: helpers on the current task; a fault only makes the read fail.
        unsafe {
            let regs = bpf_task_pt_regs(bpf_get_current_task_btf()) as u64;
            if let Ok(sp) = bpf_probe_read_kernel((regs + cfg.pt_regs_sp) as *const u64) {
                ev.user_sp_word = bpf_probe_read_user(sp as *const u64).unwrap_or(0);
            }
        }
    }
}

#[inline(always)]
fn stack_id(ctx: &TracePointContext, flags: u64) -> i32 {
    match ctx.get_stackid(&STACKS, flags) {
        Ok(id) => id as i32,
        Err(err) => {
            count(if err == -EEXIST {
                Stat::StackCollisions
            } else {
                Stat::StackFailures
            });
            err
        }
    }
}
