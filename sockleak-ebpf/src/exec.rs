//! A process starting a new program (`sched/sched_process_exec`, process context, before the
//! program's own code runs): userspace probes its runtime (libuv's uprobes, V8's layout) at
//! once, so that a service started after sockleak has its sockets' stacks named from then on,
//! not from its next report, and judges how its stacks are to be taken.
use aya_ebpf::{macros::tracepoint, programs::TracePointContext};
use sockleak_common::{EventKind, Hook};

use crate::{
    filter::admits_task,
    maps::{UNWINDERS, send_now},
    task::current_task,
};

#[tracepoint(category = "sched", name = "sched_process_exec")]
pub fn sched_process_exec(_ctx: TracePointContext) -> i32 {
    let task = current_task();
    // How the old program's stacks were taken says nothing of the new one's: userspace judges
    // it from this exec (or the kernel at its first stack).
    let _ = UNWINDERS.remove(&task.pid);
    // Its new name is already its own: `--comm` applies to the program it runs now.
    if admits_task(&task) {
        send_now(EventKind::Exec, Hook::SchedProcessExec, |ev| ev.task = task);
    }
    0
}
