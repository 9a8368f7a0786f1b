//! The contract between the eBPF programs (`sockleak-ebpf`) and userspace (`sockleak-user`).
//!
//! Read this file first. Everything the kernel side tells userspace is a [`SockEvent`] in the
//! `EVENTS` ring buffer, the per-CPU counters in `STATS` indexed by [`Stat`], and the creation
//! stacks in `STACKS` that events refer to by id. Everything userspace tells the kernel side is
//! the [`Config`] global, written before the programs load.
//!
//! The kernel side stays small: it records *who* (only ever from process context) and *which
//! socket* (cookie, and the `struct sock` address for joins); userspace does the thinking.
#![no_std]

/// Length of `task_struct.comm`, including the NUL.
pub const COMM_LEN: usize = 16;

/// Ring buffer size in bytes (a power of two, as the kernel requires): room for ~40k events,
/// which absorbs a burst of connection churn between two userspace wake-ups.
pub const EVENTS_RING_BYTES: u32 = 4 << 20;

/// The task that created, accepted or released a socket. Only filled in process context: in a
/// softirq, `current` is whoever happened to be running, not the owner.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Task {
    /// Process id (`tgid` in kernel terms).
    pub pid: u32,
    /// Thread id (`pid` in kernel terms).
    pub tid: u32,
    pub uid: u32,
    pub _pad: u32,
    /// cgroup v2 id of the task (the inode number of its cgroup directory).
    pub cgroup_id: u64,
    pub comm: [u8; COMM_LEN],
}

/// What happened to a socket.
#[repr(u32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum EventKind {
    /// `socket()` created an AF_INET/AF_INET6 socket (cgroup/sock_create, process context),
    /// with its owner, inode and `struct sock` address.
    Created = 1,
    /// `accept()` or `accept4()` returned a new fd for a socket (syscall exit, process
    /// context): the only owner information an accepted socket has. From `socket()` only when
    /// its creation event said [`STACK_PENDING`]: this event carries the stack.
    FdInstalled = 2,
    /// The TCP state changed (`inet_sock_set_state`, any context: no task).
    StateChanged = 3,
    /// The socket was released: its last file reference is gone (cgroup/sock_release).
    Released = 4,
    /// A packet was dropped because the receive queue was full (`sock_rcvqueue_full`).
    RcvQueueFull = 5,
    /// The socket hit its memory limit (`sock_exceed_buf_limit`).
    ExceedBufLimit = 6,
}

impl EventKind {
    pub fn from_u32(v: u32) -> Option<Self> {
        Some(match v {
            1 => Self::Created,
            2 => Self::FdInstalled,
            3 => Self::StateChanged,
            4 => Self::Released,
            5 => Self::RcvQueueFull,
            6 => Self::ExceedBufLimit,
            _ => return None,
        })
    }
}

/// Which program emitted an event; userspace names the hooks in use from these.
#[repr(u32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Hook {
    CgroupSockCreate = 1,
    CgroupSockRelease = 2,
    TpBtfInetSockSetState = 3,
    TracepointInetSockSetState = 4,
    SysExitSocket = 5,
    SysExitAccept = 6,
    SysExitAccept4 = 7,
    TpBtfSockRcvqueueFull = 8,
    TpBtfSockExceedBufLimit = 9,
}

/// One event, fixed size so the kernel side can reserve it in the ring buffer without branching.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct SockEvent {
    /// An [`EventKind`].
    pub kind: u32,
    /// A [`Hook`].
    pub hook: u32,
    /// `bpf_ktime_get_ns()`: CLOCK_MONOTONIC.
    pub ts_ns: u64,
    /// Socket cookie; 0 when the hook could not get it (the classic tracepoint has none).
    pub cookie: u64,
    /// Address of the kernel `struct sock`: joins an event without a cookie to one with it.
    pub skaddr: u64,
    /// Zero for [`EventKind::StateChanged`].
    pub task: Task,
    /// Socket inode number: what `/proc/PID/fd` links name. 0 when unread.
    pub inode: u64,
    /// The new fd ([`EventKind::FdInstalled`]).
    pub fd: i32,
    /// AF_INET or AF_INET6 ([`EventKind::Created`], [`EventKind::FdInstalled`]).
    pub family: u16,
    /// IPPROTO_TCP or IPPROTO_UDP ([`EventKind::Created`]).
    pub protocol: u16,
    /// SOCK_STREAM, SOCK_DGRAM, ... ([`EventKind::Created`]).
    pub sock_type: u16,
    /// Kernel TCP states (`TCP_ESTABLISHED` = 1 ...) for [`EventKind::StateChanged`].
    pub old_state: u16,
    pub new_state: u16,
    pub _pad: u16,
    /// Local and remote port (host byte order) and addresses (IPv4 in the first 4 bytes), read
    /// at [`EventKind::StateChanged`] so sockets that die between two sock_diag samples still
    /// have them. Zero when unknown.
    pub sport: u16,
    pub dport: u16,
    pub saddr: [u8; 16],
    pub daddr: [u8; 16],
    /// Id in the `STACKS` map of the creating task's user stack. Negative when there is none:
    /// [`NO_STACK`] (this hook takes none), [`STACK_NOT_SAMPLED`], [`STACK_PENDING`] (a
    /// `socket()` whose stack follows in an [`EventKind::FdInstalled`] event), or the errno of a
    /// failed walk. No kernel stack: at syscall exit it is the same three entry frames for every
    /// socket, and taking it cost as much as the user stack.
    pub user_stack_id: i32,
    pub _pad2: i32,
    /// The word at the user stack pointer when the syscall was made: the return address into
    /// the caller of a frameless syscall wrapper (glibc's `socket()`), which a frame-pointer
    /// walk skips. 0 when unread; userspace decides whether it is a code address.
    pub user_sp_word: u64,
}

/// `user_stack_id` of an event whose hook does not capture stacks.
pub const NO_STACK: i32 = i32::MIN;

/// `user_stack_id` of a socket whose stack was deliberately not taken: its process had already
/// used its [`Config::stack_rate`] stacks of the current second.
pub const STACK_NOT_SAMPLED: i32 = i32::MIN + 1;

/// `user_stack_id` of a [`EventKind::Created`] event whose stack is taken at the exit of its
/// `socket()` call and follows in an [`EventKind::FdInstalled`] event.
pub const STACK_PENDING: i32 = i32::MIN + 2;

/// Processes whose stack budget the kernel side tracks at once (an LRU map: a process that
/// stopped creating sockets makes room for one that starts).
pub const STACK_BUDGET_PROCESSES: u32 = 4096;

/// Slots of the `STACKS` map (distinct stacks it can hold) and frames kept per stack. Every
/// slot is preallocated: 8192 x (64 x 8 + bucket header) is about 4.5 MiB of kernel memory.
pub const STACK_SLOTS: u32 = 8192;
pub const STACK_DEPTH: usize = 64;

impl SockEvent {
    /// An event of `kind` from `hook` with everything else zero (fd -1): callers fill in
    /// what their hook knows.
    pub const fn new(kind: EventKind, hook: Hook) -> Self {
        Self {
            kind: kind as u32,
            hook: hook as u32,
            ts_ns: 0,
            cookie: 0,
            skaddr: 0,
            task: Task {
                pid: 0,
                tid: 0,
                uid: 0,
                _pad: 0,
                cgroup_id: 0,
                comm: [0; COMM_LEN],
            },
            inode: 0,
            fd: -1,
            family: 0,
            protocol: 0,
            sock_type: 0,
            old_state: 0,
            new_state: 0,
            _pad: 0,
            sport: 0,
            dport: 0,
            saddr: [0; 16],
            daddr: [0; 16],
            user_stack_id: NO_STACK,
            _pad2: 0,
            user_sp_word: 0,
        }
    }
}

const _: () = assert!(core::mem::size_of::<Task>() == 40);
const _: () = assert!(core::mem::size_of::<SockEvent>() == 152);
// The kernel side zeroes events a word at a time.
const _: () = assert!(core::mem::size_of::<SockEvent>().is_multiple_of(8));
const _: () = assert!(core::mem::align_of::<SockEvent>() == 8);

/// Per-CPU counters in the `STATS` map, indexed by these values.
#[repr(u32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Stat {
    /// Events written to the ring buffer.
    EventsSent = 0,
    /// Events that could not be delivered because the ring buffer was full.
    EventsLost = 1,
    /// fd-table walks at syscall exit that failed (fd raced away, unexpected layout).
    FdWalkFailed = 2,
    /// A stack whose slot in `STACKS` already held another stack (the map is full or unlucky):
    /// that socket's creation stack is unknown.
    StackCollisions = 3,
    /// Stacks that could not be captured for another reason (no user stack, a fault).
    StackFailures = 4,
    /// Stacks not taken because the creating process was over its `stack_rate` budget.
    StacksNotSampled = 5,
}

pub const STAT_COUNT: u32 = 6;

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
    /// Non-zero to capture the user stack where each socket is created or accepted (about a
    /// microsecond per socket; `--no-stacks` turns it off).
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
    /// pointer for [`SockEvent::user_sp_word`].
    pub have_task_pt_regs: u64,
    /// `pt_regs.sp`.
    pub pt_regs_sp: u64,
    /// `sock.sk_socket`: NULL once the socket lost its file (closed by its owner), so a
    /// transition to CLOSE with it set is a connection that died while still held.
    pub sock_socket: u64,
    /// `inet_sock.inet_sport`: the local port (network order), which survives the unhashing
    /// that zeroes `skc_num` when a connection dies.
    pub inet_sport: u64,
    /// Unread bytes in the event ring at which a new event wakes userspace; below it events are
    /// written without a wake-up and userspace collects them on its own timer. A wake-up per
    /// event (the default) cost a fifth of a connect/accept/close churn's throughput.
    pub wakeup_bytes: u64,
    /// `task_struct.tgid` and `inode.i_mode`, for the `socket_fds` iterator.
    pub task_tgid: u64,
    pub inode_mode: u64,
    /// `socket_alloc.vfs_inode`: a socket's inode sits beside its `struct socket`, which lets
    /// `sock_create` name the inode without the fd walk. 0 when unknown.
    pub socket_inode: u64,
    /// Most creation stacks taken per process and second; 0 takes every one. The stack walk is
    /// most of a socket's cost, and a process opening thousands of sockets a second shows its
    /// code paths in a sample as well as in all of them (bcc's memleak samples the same way).
    pub stack_rate: u64,
}

/// One socket fd, as the `socket_fds` iterator writes it: reports learn who holds each socket
/// from these instead of a readlink per fd under /proc.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct HeldSocket {
    pub inode: u64,
    /// The holding process (`tgid`).
    pub pid: u32,
    pub _pad: u32,
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
    /// `AF_INET` or `AF_INET6`; 0 for any.
    pub family: u16,
    /// `IPPROTO_TCP` or `IPPROTO_UDP`; 0 for any.
    pub protocol: u16,
    pub pids: [u32; FILTER_PIDS],
    pub comms: [[u8; COMM_LEN]; FILTER_COMMS],
    /// A cgroup matches its descendants: the check is "the ancestor of the current task's
    /// cgroup at `cgroup_levels[i]` is `cgroup_ids[i]`".
    pub cgroup_ids: [u64; FILTER_CGROUPS],
    pub cgroup_levels: [u32; FILTER_CGROUPS],
}

#[cfg(feature = "user")]
mod user {
    // SAFETY: plain #[repr(C)] integers with explicit padding fields; any bit pattern is valid.
    unsafe impl aya::Pod for super::Config {}
    unsafe impl aya::Pod for super::KernelFilter {}
    unsafe impl aya::Pod for super::SockEvent {}
}
