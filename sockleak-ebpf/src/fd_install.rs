//! fd installs: the exits of `accept()` and `accept4()`, where an accepted socket first meets
//! its owner in process context, and of `socket()`, where the stack `sock_create` chose is
//! taken. The new fd is walked to its socket (`fdwalk`).
use aya_ebpf::{
    helpers::bpf_get_current_pid_tgid, macros::tracepoint, programs::TracePointContext,
};
use aya_log_ebpf::debug;
use sockleak_common::{EventKind, Hook, Stat};

use crate::{
    fdwalk::socket_of_fd,
    filter::{admits_socket, admits_task},
    maps::{STACK_PENDING_TID, config, config_field, count, send},
    stacks::{capture_stacks, stack_allowed},
    task::current_task,
};

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
