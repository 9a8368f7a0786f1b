//! Who: the task a program runs in. Only meaningful in process context, where `current` is
//! the socket's owner; a softirq's `current` is whoever happened to be running.
use aya_ebpf::helpers::{
    bpf_get_current_pid_tgid, bpf_get_current_uid_gid,
    generated::{bpf_get_current_cgroup_id, bpf_get_current_comm},
};
use core::mem::MaybeUninit;
use sockleak_common::{COMM_LEN, Task};

#[inline(always)]
pub fn current_task() -> Task {
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
