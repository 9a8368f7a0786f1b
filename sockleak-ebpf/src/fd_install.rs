//! fd installs: the exits of `accept()` and `accept4()`, where an accepted socket first meets
//! its owner in process context, and of `socket()`, where the stack `sock_create` chose is
//! taken. The new fd is walked to its socket (`fdwalk`).
use aya_ebpf::{
    helpers::bpf_get_current_pid_tgid, macros::tracepoint, programs::TracePointContext,
};
use aya_log_ebpf::debug;
use sockleak_common::{EventKind, Hook, SockEvent, StackStatus, Stat};

use crate::{
    fdwalk::socket_of_fd,
    filter::{admits_socket, admits_task},
    maps::{STACK_PENDING_TID, announce, config, config_field, count, newborn_slot, send},
    stacks::{capture_stacks, stack_allowed},
    task::current_task,
};

/// Runs at the end of every `socket()` on the machine (unix sockets too), so it returns at once
/// unless `sock_create` chose this thread's socket for a stack.
#[tracepoint(category = "syscalls", name = "sys_exit_socket")]
pub fn sys_exit_socket(ctx: TracePointContext) -> i32 {
    // One call below, not one per case: each inlined copy of the fd walk and its event costs
    // stack, and the program has 512 bytes.
    let stacks = if config_field(|c| &c.socket_inode) == 0 {
        // Older layout: the creation event has no inode, this exit gives it (and the stack).
        StackChoice::Budgeted
    } else if taken_pending_stack() {
        StackChoice::Take
    } else {
        return 0;
    };
    fd_installed(&ctx, Hook::SysExitSocket, stacks);
    0
}

/// Whether `sock_create` chose this thread's socket for a stack (and the slot is now cleared).
#[inline(always)]
fn taken_pending_stack() -> bool {
    if config_field(|c| &c.capture_stacks) == 0 {
        return false;
    }
    let tid = bpf_get_current_pid_tgid() as u32;
    let Some(pending) = STACK_PENDING_TID.get_ptr_mut(0) else {
        return false;
    };
    // SAFETY: this CPU's slot, as in `sock_create`. The fd walk names the socket the stack
    // belongs to, whatever the slot held.
    unsafe {
        if *pending != tid || tid == 0 {
            return false;
        }
        *pending = 0;
    }
    true
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
    // SAFETY: a read of the tracepoint's record at the offset of `ret` in its tracefs format,
    // through the probe helper (it fails rather than faults); an i64 is valid for any bits.
    let ret: i64 = unsafe { ctx.read_at(cfg.sys_exit_ret as usize) }.unwrap_or(-1);
    if ret < 0 {
        return; // the syscall failed: no socket
    }
    let task = current_task();
    if !admits_task(&task) {
        return;
    }
    let fd = ret as i32;
    match socket_of_fd(cfg, fd) {
        Ok(Some(found)) if admits_socket(found.family, 0) => {
            if stacks == StackChoice::Take
                && let Some(created) = newborn_slot(found.id)
            {
                // Its creation is still in the kernel's map: the stack goes with it.
                // SAFETY: a map value, valid for the program's run.
                let created = unsafe { &mut *created };
                if created.user_stack.is(StackStatus::Pending) {
                    capture_stacks(ctx, cfg, created);
                }
                return;
            }
            let fill = |ev: &mut SockEvent| {
                ev.task = task;
                ev.fd = fd;
                ev.skaddr = found.skaddr;
                ev.cookie = found.id.cookie;
                ev.netns = found.id.netns;
                ev.inode = found.inode;
                ev.family = found.family;
                if cfg.capture_stacks != 0
                    && (stacks == StackChoice::Take || stack_allowed(ev, task.pid, cfg.stack_rate))
                {
                    capture_stacks(ctx, cfg, ev);
                }
            };
            if hook == Hook::SysExitSocket {
                // The stack (or, on the older layout, the inode) of a creation userspace
                // already read, or that went through the ring.
                send(EventKind::CreationCompleted, hook, fill);
            } else {
                // An accepted socket is born here, as far as userspace is concerned.
                announce(EventKind::AcceptReturned, hook, fill);
            }
        }
        Ok(_) => {} // not an inet socket, or filtered out
        Err(err) => {
            count(Stat::FdWalkFailed);
            debug!(ctx, "sockleak: fd walk failed for fd {}: {}", fd, err);
        }
    }
}
