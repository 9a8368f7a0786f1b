//! What the kernel side tells userspace about one socket: a [`SockEvent`] in the `EVENTS` ring.

/// Length of `task_struct.comm`, including the NUL.
pub const COMM_LEN: usize = 16;

/// `name` as the kernel keeps a task's: its first `COMM_LEN - 1` bytes, NUL-padded.
pub fn comm_bytes(name: &str) -> [u8; COMM_LEN] {
    let mut comm = [0; COMM_LEN];
    let kept = &name.as_bytes()[..name.len().min(COMM_LEN - 1)];
    comm[..kept.len()].copy_from_slice(kept);
    comm
}

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
    /// context; where connections are not announced as [`EventKind::Accepted`]). Otherwise
    /// the stack of a socket whose creation event said [`STACK_PENDING`] and that is no longer
    /// in `NEWBORN`: from the exit of its `socket()` call, or from the state program where it
    /// connects or listens.
    FdInstalled = 2,
    /// The TCP state changed (`inet_sock_set_state`, any context: no task).
    StateChanged = 3,
    /// The socket was released: its last file reference is gone (cgroup/sock_release). Not
    /// sent for a socket whose birth was still in `NEWBORN`: userspace never heard of it.
    Released = 4,
    /// A packet was dropped because the receive queue was full (`sock_rcvqueue_full`).
    RcvQueueFull = 5,
    /// The socket hit its memory limit (`sock_exceed_buf_limit`).
    ExceedBufLimit = 6,
    /// A passive open's child became ESTABLISHED (tp_btf `inet_sock_set_state`, usually in a
    /// softirq): a connection accepted, or waiting in its listener's queue to be. Its task is
    /// the owner of the listener it came through (`LISTENERS`, written in process context at
    /// `listen()`), all zero when that listener is unknown. No fd and no inode yet: they come
    /// at `accept()`, and userspace learns them from the next sock_diag look.
    Accepted = 7,
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
            7 => Self::Accepted,
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
    /// A [`crate::Family`] number ([`EventKind::Created`], [`EventKind::FdInstalled`], and
    /// [`EventKind::StateChanged`] where addresses were read).
    pub family: u16,
    /// A [`crate::Protocol`] number, or another `IPPROTO_*` ([`EventKind::Created`]).
    pub protocol: u16,
    /// A [`crate::SockType`] number ([`EventKind::Created`]).
    pub sock_type: u16,
    /// [`crate::TcpState`] numbers, for [`EventKind::StateChanged`].
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
    /// [`NO_STACK`] (this hook takes none), [`STACK_NOT_SAMPLED`], [`STACK_PENDING`] (taken
    /// later, see there), or the errno of a failed walk. No kernel stack: in a system call it
    /// is the same few entry frames for every socket, and taking it would cost as much again
    /// as the user stack.
    pub user_stack_id: i32,
    /// Id in `STACKS` of the stack that made the libuv handle this socket was opened for
    /// ([`EventKind::Created`]): libuv opens a handle's socket a tick after the program's code
    /// made the handle, so that stack is the one that names the program's code. [`NO_STACK`]
    /// for sockets not opened by libuv for a handle whose making was seen;
    /// [`STACK_IN_JS_STACK`] when the frames are in the handle's JavaScript stack.
    pub handle_stack_id: i32,
    /// Key in `JS_STACKS` of the JavaScript frames found where the handle was made (with
    /// `handle_stack_id`), or [`crate::NO_JS_STACK`].
    pub js_stack_id: u32,
    /// The word at the user stack pointer when the syscall was made: the return address into
    /// the caller of a frameless syscall wrapper (glibc's `socket()`), which a frame-pointer
    /// walk skips. 0 when unread; userspace decides whether it is a code address.
    pub user_sp_word: u64,
}

/// `user_stack_id` of an event whose hook does not capture stacks.
pub const NO_STACK: i32 = i32::MIN;

/// `user_stack_id` of a socket whose stack was deliberately not taken: its process had already
/// used its [`crate::Config::stack_rate`] stacks of the current second.
pub const STACK_NOT_SAMPLED: i32 = i32::MIN + 1;

/// `handle_stack_id` of a handle whose native frames are in its JavaScript stack (`JsStack`'s
/// `native`, at `js_stack_id`), read by the same walk: not in `STACKS`.
pub const STACK_IN_JS_STACK: i32 = i32::MAX;

/// `user_stack_id` of a [`EventKind::Created`] event whose stack is taken later: where the
/// TCP socket connects or listens (the state program, in that process), or at the exit of its
/// `socket()` call where that is attached. Written into the socket's `NEWBORN` slot while it
/// is there, else in an [`EventKind::FdInstalled`] event.
pub const STACK_PENDING: i32 = i32::MIN + 2;

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
            handle_stack_id: NO_STACK,
            js_stack_id: crate::NO_JS_STACK,
            user_sp_word: 0,
        }
    }
}

const _: () = assert!(core::mem::size_of::<Task>() == 40);
const _: () = assert!(core::mem::size_of::<SockEvent>() == 152);
// The kernel side zeroes events a word at a time.
const _: () = assert!(core::mem::size_of::<SockEvent>().is_multiple_of(8));
const _: () = assert!(core::mem::align_of::<SockEvent>() == 8);
