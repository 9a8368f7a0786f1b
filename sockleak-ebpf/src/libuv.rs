//! libuv handles: where a Node.js (or any libuv) program's code made the handle a socket is
//! later opened for. `net.connect()` makes a `TCP` handle (`uv_tcp_init`) synchronously under
//! the caller's code, but libuv opens its socket a tick later (`uv_tcp_connect`), when only the
//! event loop is on the stack. So the handle's making is where the stack is taken, and it is
//! handed to the socket `sock_create` sees while the thread is inside the libuv call that opens
//! it.
//!
//! Attached as uprobes by userspace to every binary or library that exports libuv (`node`
//! does), in whichever process runs it.
use aya_ebpf::{
    bindings::BPF_F_USER_STACK,
    helpers::{bpf_get_current_pid_tgid, generated::bpf_ktime_get_ns},
    macros::{uprobe, uretprobe},
    programs::{ProbeContext, RetProbeContext},
};
use sockleak_common::{NO_JS_STACK, StackRef, StackStatus, Stat};

use crate::{
    filter::admits_task,
    maps::{
        HANDLE_STACKS, HandleKey, HandleStacks, JS_SCRATCH, LIBUV_HANDLE_MADE, OPENING_HANDLE,
        config, count,
    },
    stacks::{recently_refused, stack_id, within_stack_budget},
    task::current_task,
    v8::{javascript_caller, js_stack, v8_layout},
};

/// `uv_tcp_init(loop, handle)`, `uv_tcp_init_ex`, `uv_udp_init`, `uv_udp_init_ex`,
/// `uv_pipe_init`: the handle is the second argument.
#[uprobe]
pub fn uv_handle_init(ctx: ProbeContext) -> u32 {
    let cfg = config();
    if cfg.capture_stacks == 0 {
        return 0;
    }
    let Some(handle) = ctx.arg::<u64>(1) else {
        return 0;
    };
    if let Some(made) = LIBUV_HANDLE_MADE.get_ptr_mut(0) {
        // SAFETY: the map's one value; a racing writer writes the same.
        unsafe {
            if *made == 0 {
                *made = 1;
            }
        }
    }
    // Within the process's budget, as a socket's own stack would be. A server's every accepted
    // connection makes a handle: once the budget is spent, the refusal is known from the pid
    // alone, before the task's other details are read.
    // SAFETY: the helper has no preconditions.
    let now_ns = unsafe { bpf_ktime_get_ns() };
    let pid = (bpf_get_current_pid_tgid() >> 32) as u32;
    if cfg.stack_rate != 0 && recently_refused(pid, now_ns) {
        count(Stat::StacksNotSampled);
        return 0;
    }
    // A server's event loop makes a handle for each connection it accepts, with no
    // JavaScript on the stack (node's `OnConnection`): its stack says no more than the
    // listener the connection came through, and taking it would spend the budget that the
    // handles the service's own code makes need. Known from the pid and a few frames, before
    // the task is read.
    let Some(scratch) = JS_SCRATCH.get_ptr_mut(0) else {
        return 0;
    };
    // SAFETY: this CPU's scratch value; programs on one CPU do not preempt each other here.
    let scratch = unsafe { &mut *scratch };
    // An absent layout is all zero rather than left undefined: LLVM may load an absent
    // layout's fields on paths that then ignore them, and the verifiers of 5.10 and 6.1 refuse
    // any read of a stack slot nothing wrote.
    let found = v8_layout(pid);
    let has_layout = found.is_some();
    let (layout, own_layout) = found.unwrap_or_default();
    let caller = if has_layout {
        match javascript_caller(&ctx, &layout, scratch) {
            // Only a process known to run node: a C program that links libuv, not looked at
            // yet, has no JavaScript either, and its handles are all its own code's.
            None if own_layout => return 0,
            caller => caller,
        }
    } else {
        None
    };
    let task = current_task();
    if !admits_task(&task) {
        return 0;
    }
    if !within_stack_budget(task.pid, cfg.stack_rate, now_ns) {
        count(Stat::StacksNotSampled);
        return 0;
    }
    // Node's JavaScript frames, named by userspace where no perf map does, and the native
    // frames around them, read by the same walk. Anything else, or a JavaScript stack that
    // could not be kept, has the kernel's own walk.
    let js = match caller {
        Some(caller) => js_stack(&caller, task.pid, &layout, scratch),
        None => NO_JS_STACK,
    };
    let native = if js == NO_JS_STACK {
        stack_id(&ctx, BPF_F_USER_STACK as u64)
    } else {
        StackRef::IN_JS_STACK
    };
    if !(native.is(StackStatus::Taken) || native.is(StackStatus::InJsStack)) {
        return 0; // the walk failed (counted)
    }
    let key = HandleKey {
        pid: task.pid,
        _pad: 0,
        handle,
    };
    let _ = HANDLE_STACKS.insert(&key, &HandleStacks { native, js }, 0);
    0
}

/// Entry of a call that may open a handle's socket, with the handle as its first argument:
/// `uv_tcp_bind`, `uv_udp_bind`, `uv_udp_connect`, `uv_udp_try_send`.
#[uprobe]
pub fn uv_opening_first(ctx: ProbeContext) -> u32 {
    opening(ctx.arg::<u64>(0));
    0
}

/// The same with the handle second: `uv_tcp_connect(req, handle, ...)`,
/// `uv_udp_send(req, handle, ...)`.
#[uprobe]
pub fn uv_opening_second(ctx: ProbeContext) -> u32 {
    opening(ctx.arg::<u64>(1));
    0
}

#[inline(always)]
fn opening(handle: Option<u64>) {
    if let Some(handle) = handle {
        let tid = bpf_get_current_pid_tgid() as u32;
        let _ = OPENING_HANDLE.insert(&tid, &handle, 0);
    }
}

/// Return of any of those calls: whatever socket the thread makes next is not the handle's.
#[uretprobe]
pub fn uv_opened(_ctx: RetProbeContext) -> u32 {
    let tid = bpf_get_current_pid_tgid() as u32;
    let _ = OPENING_HANDLE.remove(&tid);
    0
}

/// Where the libuv handle the current thread is opening a socket for was made, if known.
#[inline(always)]
pub fn handle_stacks(pid: u32, tid: u32) -> HandleStacks {
    // SAFETY: map values, valid for the program's run.
    let Some(handle) = (unsafe { OPENING_HANDLE.get(&tid) }) else {
        return HandleStacks::NONE;
    };
    let key = HandleKey {
        pid,
        _pad: 0,
        handle: *handle,
    };
    // SAFETY: a map value, copied at once: nothing inserts into or removes from
    // `HANDLE_STACKS` before the copy.
    match unsafe { HANDLE_STACKS.get(&key) } {
        Some(stacks) => *stacks,
        None => HandleStacks::NONE,
    }
}
