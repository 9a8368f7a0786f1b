//! From a file descriptor of the current task to its socket, at syscall exit.
//!
//! An accepted socket is born in softirq and reaches its owner only in `accept()`, which has no
//! tracepoint of its own; the syscall exit is the first moment in process context where the
//! socket and its owner meet. Rust eBPF has no CO-RE, so every offset comes from the running
//! kernel's BTF via [`Config`] (see `sockleak-user/src/hooks/offsets.rs`).
use aya_ebpf::helpers::{bpf_get_current_task, bpf_probe_read_kernel};
use sockleak_common::{Config, Family, SockId};

use crate::addresses::netns_of;

const AF_INET: u16 = Family::Ipv4.af();
const AF_INET6: u16 = Family::Ipv6.af();

pub struct FdSocket {
    pub skaddr: u64,
    /// Its cookie may be 0: see [`socket_of_file`].
    pub id: SockId,
    pub inode: u64,
    pub family: u16,
}

/// The word at kernel address `base + offset`.
///
/// # Safety
/// None beyond the call itself: any address may be given, the read fails on one that cannot be
/// read. `unsafe` as the helper it wraps is.
#[inline(always)]
pub unsafe fn read_ptr(base: u64, offset: u64) -> Result<u64, i32> {
    // SAFETY: the probe helper fails rather than faults on an unreadable address, and a u64 is
    // valid for any bits.
    unsafe { bpf_probe_read_kernel((base + offset) as *const u64) }
}

/// `current->files->fdt->fd[fd]` -> [`socket_of_file`].
#[inline(always)]
pub fn socket_of_fd(cfg: &Config, fd: i32) -> Result<Option<FdSocket>, i32> {
    if cfg.have_offsets == 0 || fd < 0 {
        return Err(-1);
    }
    // SAFETY: bpf_get_current_task has no preconditions; every read is `read_ptr`'s, safe for
    // any address; `file` is what the fd table holds for `fd`, which the caller's syscall just
    // returned as a socket's (as `socket_of_file` asks).
    unsafe {
        let task = bpf_get_current_task();
        let files = read_ptr(task, cfg.task_files)?;
        let fdt = read_ptr(files, cfg.files_fdt)?;
        let fd_array = read_ptr(fdt, cfg.fdtable_fd)?;
        let file = read_ptr(fd_array, (fd as u64) * 8)?;
        if file == 0 {
            return Err(-2);
        }
        socket_of_file(cfg, file)
    }
}

/// A socket's `struct file` -> `file->private_data` (a `struct socket`) -> `sk`.
/// `Ok(None)` for a socket that is not AF_INET/AF_INET6. The caller knows `file` is a socket.
///
/// # Safety
/// Memory-safe for any `file` (every read goes through the probe helper); `file` must be a
/// socket's for the result to mean anything, which the caller vouches for.
#[inline(always)]
pub unsafe fn socket_of_file(cfg: &Config, file: u64) -> Result<Option<FdSocket>, i32> {
    // SAFETY: reads through `read_ptr` and the probe helper, which fail rather than fault on
    // an unreadable address; what they read are plain integers, valid for any bits.
    unsafe {
        let socket = read_ptr(file, cfg.file_private_data)?;
        let sk = read_ptr(socket, cfg.socket_sk)?;
        if sk == 0 {
            return Err(-3);
        }
        let family: u16 = bpf_probe_read_kernel((sk + cfg.sock_family) as *const u16)?;
        if family != AF_INET && family != AF_INET6 {
            return Ok(None);
        }
        let inode = read_ptr(file, cfg.file_inode)?;
        let ino = read_ptr(inode, cfg.inode_ino)?;
        // skc_cookie is generated lazily; 0 means nobody asked for it yet and userspace joins
        // on `skaddr` instead.
        let cookie = read_ptr(sk, cfg.sock_cookie)?;
        Ok(Some(FdSocket {
            skaddr: sk,
            id: SockId::new(cookie, netns_of(sk)),
            inode: ino,
            family,
        }))
    }
}
