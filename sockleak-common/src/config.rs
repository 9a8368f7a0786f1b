//! What userspace tells the programs before they load: the [`Config`] and [`KernelFilter`]
//! globals (`EbpfLoader::override_global`), read-only once loaded.
use crate::COMM_LEN;

/// Field offsets the programs need but cannot get from CO-RE (Rust eBPF has no field
/// relocations yet): userspace reads them from the running kernel's BTF and tracefs formats.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Config {
    /// Non-zero once userspace filled in the kernel struct offsets below; the fd walk is
    /// skipped otherwise (a kernel without BTF).
    pub have_offsets: u32,
    /// Offset of `ret` in the `syscalls/sys_exit_*` tracepoint records.
    pub sys_exit_ret: u32,
    /// Offsets of `skaddr`, `oldstate`, `newstate` in the classic `sock/inet_sock_set_state`
    /// record (the fallback when tp_btf is unavailable).
    pub tp_skaddr: u32,
    pub tp_oldstate: u32,
    pub tp_newstate: u32,
    /// Non-zero to capture the user stack where each socket is created or accepted (the
    /// largest part of a socket's kernel cost; `--no-stacks` turns it off).
    pub capture_stacks: u32,
    pub task_files: u64,
    pub files_fdt: u64,
    pub fdtable_fd: u64,
    pub file_private_data: u64,
    pub file_inode: u64,
    pub inode_ino: u64,
    pub socket_sk: u64,
    pub sock_cookie: u64,
    /// `sock.__sk_common.skc_family`: lets the fd walk skip AF_UNIX and other non-inet sockets.
    pub sock_family: u64,
    /// `sock.__sk_common` address fields, for addresses at state changes.
    pub sock_daddr: u64,
    pub sock_rcv_saddr: u64,
    pub sock_dport: u64,
    pub sock_num: u64,
    pub sock_v6_daddr: u64,
    pub sock_v6_rcv_saddr: u64,
    /// Non-zero when the kernel has `bpf_task_pt_regs` (5.15+), needed to read the user stack
    /// pointer for [`crate::SockEvent::user_sp_word`], and the registers a walk by hand starts
    /// from.
    pub have_task_pt_regs: u64,
    /// `pt_regs.sp`, `.ip` and `.bp`.
    pub pt_regs_sp: u64,
    pub pt_regs_ip: u64,
    pub pt_regs_bp: u64,
    /// `sock.sk_socket`: NULL once the socket lost its file (closed by its owner), so a
    /// transition to CLOSE with it set is a connection that died while still held.
    pub sock_socket: u64,
    /// `inet_sock.inet_sport`: the local port (network order), which survives the unhashing
    /// that zeroes `skc_num` when a connection dies.
    pub inet_sport: u64,
    /// Unread bytes in the event ring at which a new event wakes userspace; below it events are
    /// written without a wake-up and userspace collects them on its own timer: a wake-up per
    /// event (the kernel's default) makes a busy machine pay a context switch per socket.
    pub wakeup_bytes: u64,
    /// `task_struct.tgid` and `inode.i_mode`, for the `socket_fds` iterator.
    pub task_tgid: u64,
    pub inode_mode: u64,
    /// `socket_alloc.vfs_inode`: a socket's inode sits beside its `struct socket`, which lets
    /// `sock_create` name the inode without the fd walk. 0 when unknown.
    pub socket_inode: u64,
    /// Non-zero when the libuv uprobes are loaded: `sock_create` then looks for the handle the
    /// creating thread is opening a socket for.
    pub libuv_handles: u64,
    /// Most creation stacks taken per process and second; 0 takes every one. The stack walk is
    /// most of a socket's cost, and a process opening thousands of sockets a second shows its
    /// code paths in a sample as well as in all of them (bcc's memleak samples the same way).
    pub stack_rate: u64,
    /// Slots of `NEWBORN` in use, a power of two (see [`crate::NEWBORN_SOCKETS`]); 0 sends
    /// every socket through the ring.
    pub newborn_slots: u64,
    /// Slots of the release log each CPU writes, a power of two (its share of
    /// [`crate::RELEASE_LOG_SLOTS`]); 0 keeps no log.
    pub release_log_per_cpu: u64,
    /// `sock.__sk_common.skc_net` (the socket's `struct net`) and `net.ns.inum`, the network
    /// namespace's inode (what `/proc/PID/ns/net` names): listeners are keyed by it and their
    /// port. `sock_net` is 0 when BTF does not say; accepted sockets are then announced at
    /// `accept()` instead.
    pub sock_net: u64,
    pub net_ns_inum: u64,
    /// Bytes of stack copies the kernel may send per second, all processes together (see
    /// [`crate::StackCopyHeader`]); 0 copies none, and every stack is walked along its frame
    /// pointers.
    pub stack_copy_budget: u64,
    /// `task_struct.mm`, `mm_struct.exe_file`, `inode.i_sb`, `inode.i_size` and
    /// `super_block.s_dev`: the program a process runs, as [`crate::ProgramFile`] names it, for
    /// the unwinder its program was judged to need. `task_mm` is 0 when BTF does not say.
    pub task_mm: u64,
    pub mm_exe_file: u64,
    pub inode_sb: u64,
    pub inode_size: u64,
    pub sb_dev: u64,
    /// `bpf_sock_addr_kern.sk`: where a cgroup sock_addr program's context keeps its socket.
    /// The verifier allows no arithmetic on the `sk` the context hands out, so the UNIX
    /// connect program reads the pointer, as a number, from the context itself.
    pub sock_addr_sk: u64,
}

/// Most `--pid`, `--comm` and `--cgroup` values the kernel side can filter on; more is an
/// error at the command line, not a silent fallback to filtering late.
pub const FILTER_PIDS: usize = 16;
pub const FILTER_COMMS: usize = 8;
pub const FILTER_CGROUPS: usize = 8;

/// Whose sockets the programs follow, decided at creation and accept in the creating process's
/// context, so that everyone else's sockets cost no fd walk, no stack capture and no ring
/// buffer space. Each list admits all when its count is 0. Written before load, like
/// [`Config`]; the verifier then sees the counts as constants and prunes the unused checks.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct KernelFilter {
    pub pid_count: u32,
    pub comm_count: u32,
    pub cgroup_count: u32,
    /// A [`crate::Family`] number; 0 for any.
    pub family: u16,
    /// A [`crate::Protocol`]'s [`crate::Protocol::kernel_number`]; 0 for any.
    pub protocol: u16,
    pub pids: [u32; FILTER_PIDS],
    pub comms: [[u8; COMM_LEN]; FILTER_COMMS],
    /// A cgroup matches its descendants: the check is "the ancestor of the current task's
    /// cgroup at `cgroup_levels[i]` is `cgroup_ids[i]`".
    pub cgroup_ids: [u64; FILTER_CGROUPS],
    pub cgroup_levels: [u32; FILTER_CGROUPS],
}
