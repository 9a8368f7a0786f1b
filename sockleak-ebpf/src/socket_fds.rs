//! `socket_fds`: a `task_file` iterator that writes one [`HeldSocket`] per socket fd of every
//! process. Userspace runs it once per report to learn who holds each socket, instead of
//! one readlink per fd under /proc, which is slow over many sockets.
//!
//! The kernel visits each process once (threads sharing the file table are skipped) and calls
//! the program one last time with no task when the walk ends.
use aya_ebpf::{
    bindings::seq_file,
    cty::c_void,
    helpers::{bpf_probe_read_kernel, generated::bpf_seq_write},
};
use sockleak_common::{Config, HeldSocket};

use crate::{fdwalk::read_ptr, maps::config};

const S_IFMT: u16 = 0o170000;
const S_IFSOCK: u16 = 0o140000;

#[repr(C)]
pub struct BpfIterMeta {
    seq: *mut seq_file,
    session_id: u64,
    seq_num: u64,
}

/// `struct bpf_iter__task_file`: its layout is fixed by the iterator's BTF declaration.
#[repr(C)]
pub struct TaskFileContext {
    meta: *const BpfIterMeta,
    task: u64,
    fd: u32,
    file: u64,
}

#[unsafe(no_mangle)]
#[unsafe(link_section = "iter/task_file")]
pub extern "C" fn socket_fds(ctx: *mut TaskFileContext) -> i32 {
    // SAFETY: the kernel passes a valid `bpf_iter__task_file`.
    let ctx = unsafe { &*ctx };
    let (task, file) = (ctx.task, ctx.file);
    if task == 0 || file == 0 {
        return 0;
    }
    let cfg = config();
    // SAFETY: probe reads; a fault only makes a read fail.
    if let Ok(Some(held)) = unsafe { held_socket(cfg, task, file) } {
        // SAFETY: `meta` and its `seq` are valid for the call; the record is plain bytes.
        unsafe {
            bpf_seq_write(
                (*ctx.meta).seq,
                (&raw const held).cast::<c_void>(),
                size_of::<HeldSocket>() as u32,
            );
        }
    }
    0
}

/// The socket `file` holds, and the process `task` that holds it; `None` for a file that is
/// no socket. Every family: UNIX sockets are held as inet ones are, and the /proc scan this
/// replaces lists them all too.
///
/// # Safety
/// Memory-safe for any `task` and `file` (every read goes through the probe helper); they
/// must be the iterator's task and one of its files for the result to mean anything.
#[inline(always)]
unsafe fn held_socket(cfg: &Config, task: u64, file: u64) -> Result<Option<HeldSocket>, i32> {
    // SAFETY: reads through `read_ptr` and the probe helper, which fail rather than fault on
    // an unreadable address, of plain integers, valid for any bits.
    unsafe {
        let inode = read_ptr(file, cfg.file_inode)?;
        let mode: u16 = bpf_probe_read_kernel((inode + cfg.inode_mode) as *const u16)?;
        if mode & S_IFMT != S_IFSOCK {
            return Ok(None);
        }
        let ino = read_ptr(inode, cfg.inode_ino)?;
        let pid: u32 = bpf_probe_read_kernel((task + cfg.task_tgid) as *const u32)?;
        Ok(Some(HeldSocket {
            inode: ino,
            pid,
            _pad: 0,
        }))
    }
}
