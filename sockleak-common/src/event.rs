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

/// What happened to a socket: one meaning per kind, whichever program sends it. Userspace
/// never looks at [`SockEvent::hook`] to decide what an event means.
#[repr(u16)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum EventKind {
    /// `socket()` created an AF_INET/AF_INET6 socket, with its owner, inode (where the kernel
    /// layout is known) and `struct sock` address. Process context: `cgroup/sock_create`.
    Created = 1,
    /// `accept()` or `accept4()` returned a new fd for a connection, with the fd, its inode
    /// and the owner. Process context: the syscalls' exits, attached where connections are
    /// not announced as [`EventKind::Accepted`].
    AcceptReturned = 2,
    /// The TCP state changed. Any context (the transition often runs in a softirq), so no
    /// task: the state tracepoint (`tp_btf` or classic `inet_sock_set_state`).
    StateChanged = 3,
    /// The socket was released: its last file reference is gone. Any context (the last `fput`
    /// may run in a kworker), so no task: `cgroup/sock_release`. Not sent for a socket whose
    /// birth was still in `NEWBORN`: userspace never heard of it.
    Released = 4,
    /// A packet was dropped because the receive queue was full. Softirq: `sock_rcvqueue_full`.
    RcvQueueFull = 5,
    /// The socket hit its memory limit. Any context: `sock_exceed_buf_limit`.
    ExceedBufLimit = 6,
    /// A passive open's child became ESTABLISHED: a connection accepted, or waiting in its
    /// listener's queue to be. Usually a softirq (`tp_btf` `inet_sock_set_state`): its task is
    /// the owner of the listener it came through (`LISTENERS`, written in process context at
    /// `listen()`), all zero when that listener is unknown. No fd and no inode yet: they come
    /// at `accept()`, and userspace learns them from the next sock_diag look.
    Accepted = 7,
    /// What a [`EventKind::Created`] whose stack was [`StackRef::PENDING`] could not say yet,
    /// for a socket no longer in `NEWBORN`: its stack, taken in the owner's process context
    /// at the exit of its `socket()` call or where the TCP socket connects or listens (the
    /// state program, in that process); and, on kernels whose creation event has no inode,
    /// the inode (`socket()`'s exit). Userspace applies it to a socket it knows, else drops it.
    CreationCompleted = 8,
    /// Not about a socket: a process the owner filters follow started a new program
    /// (`execve`), with its task and nothing else, sent at once (a wake-up). Process context:
    /// `sched/sched_process_exec`, before the program's own code runs, so that userspace can
    /// probe its runtime (libuv, V8) at once rather than at its next report.
    Exec = 9,
    /// A UNIX socket is connecting (`connect()`, before the connection is made), with its
    /// owner, inode and the connecting task's stack. Process context:
    /// `cgroup/connect_unix`. No hook sees a UNIX socket's `socket()`: this is the first
    /// word of it, and its absence from a later sock_diag look, with no holder left, its
    /// last (no release hook either).
    Connecting = 10,
}

impl EventKind {
    pub fn from_u16(v: u16) -> Option<Self> {
        Some(match v {
            1 => Self::Created,
            2 => Self::AcceptReturned,
            3 => Self::StateChanged,
            4 => Self::Released,
            5 => Self::RcvQueueFull,
            6 => Self::ExceedBufLimit,
            7 => Self::Accepted,
            8 => Self::CreationCompleted,
            9 => Self::Exec,
            10 => Self::Connecting,
            _ => return None,
        })
    }
}

/// A creation stack an event refers to: its id in `STACKS`, or why there is none. Two words
/// rather than sentinels in one: what `status` says decides what `id` means.
///
/// 8-aligned, so the kernel side writes one whole as a single 8-byte store
/// ([`StackRef::bits`]): a stack taken for a socket already published in `NEWBORN` lands
/// while userspace may be copying the slot, which must see the old reference or the new,
/// never one's status with the other's id.
#[repr(C, align(8))]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct StackRef {
    /// A [`StackStatus`].
    pub status: u32,
    /// The id in `STACKS` ([`StackStatus::Taken`]), the errno of a failed walk
    /// ([`StackStatus::Failed`]), else 0.
    pub id: u32,
}

/// Whether an event's stack was taken, and if not, why.
#[repr(u32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum StackStatus {
    /// This hook takes none (or stacks are off). Zero: what a zeroed event says.
    None = 0,
    /// In `STACKS` at `id`.
    Taken = 1,
    /// Deliberately not taken: its process had already used its [`crate::Config::stack_rate`]
    /// stacks of the current second.
    NotSampled = 2,
    /// To be taken later (a [`EventKind::Created`]): where the TCP socket connects or listens,
    /// or at the exit of its `socket()` call where that is attached. Written into the
    /// socket's `NEWBORN` slot while it is there, else sent as
    /// [`EventKind::CreationCompleted`].
    Pending = 3,
    /// The walk failed (errno in `id`): counted in the stack statistics.
    Failed = 4,
    /// A libuv handle's native frames are in its JavaScript stack (`JsStack`'s `native`, at
    /// [`SockEvent::js_stack_id`]), read by the same walk: not in `STACKS`.
    InJsStack = 5,
    /// Walked by hand where the program has no stack helper (`cgroup/sock_create`): in
    /// `WALKED_STACKS` at `id` (see [`crate::WalkedStack`]).
    Walked = 6,
    /// Copied for userspace to unwind (see [`crate::StackCopyHeader`]): copy number `id` of
    /// the event's process, in `STACK_COPIES`.
    Copied = 7,
}

impl StackRef {
    pub const NONE: Self = Self::of(StackStatus::None, 0);
    pub const NOT_SAMPLED: Self = Self::of(StackStatus::NotSampled, 0);
    pub const PENDING: Self = Self::of(StackStatus::Pending, 0);
    pub const IN_JS_STACK: Self = Self::of(StackStatus::InJsStack, 0);

    /// A stack walked by hand, at `key` in `WALKED_STACKS`.
    pub const fn walked(key: u32) -> Self {
        Self::of(StackStatus::Walked, key)
    }

    /// A stack copied for userspace to unwind, as copy `copy` of its process.
    pub const fn copied(copy: u32) -> Self {
        Self::of(StackStatus::Copied, copy)
    }

    const fn of(status: StackStatus, id: u32) -> Self {
        Self {
            status: status as u32,
            id,
        }
    }

    /// What `bpf_get_stackid` returned: an id, or a negative errno.
    pub const fn from_stackid(ret: i64) -> Self {
        if ret >= 0 {
            Self::of(StackStatus::Taken, ret as u32)
        } else {
            Self::of(StackStatus::Failed, ret.unsigned_abs() as u32)
        }
    }

    pub fn status(self) -> Option<StackStatus> {
        Some(match self.status {
            0 => StackStatus::None,
            1 => StackStatus::Taken,
            2 => StackStatus::NotSampled,
            3 => StackStatus::Pending,
            4 => StackStatus::Failed,
            5 => StackStatus::InJsStack,
            6 => StackStatus::Walked,
            7 => StackStatus::Copied,
            _ => return None,
        })
    }

    pub const fn is(self, status: StackStatus) -> bool {
        self.status == status as u32
    }

    /// The reference as the one little-endian word it occupies in memory.
    pub const fn bits(self) -> u64 {
        (self.id as u64) << 32 | self.status as u64
    }
}

/// Which program emitted an event: for people reading events (a debugger, a test's failure
/// message). Userspace never reads it to decide what an event means: its kind says that.
#[repr(u16)]
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
    SchedProcessExec = 10,
    CgroupConnectUnix = 11,
}

/// One event, fixed size so the kernel side can reserve it in the ring buffer without branching.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct SockEvent {
    /// An [`EventKind`].
    pub kind: u16,
    /// A [`Hook`].
    pub hook: u16,
    /// The inode of the socket's network namespace, read from the socket; 0 where the
    /// kernel's layout is unknown ([`crate::Config::sock_net`]) or the hook has no socket
    /// pointer to read it from (the classic tracepoint joins by `skaddr`). With `cookie`, the
    /// socket's [`crate::SockId`].
    pub netns: u32,
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
    /// The new fd ([`EventKind::AcceptReturned`]).
    pub fd: i32,
    /// A [`crate::Family`] number ([`EventKind::Created`], [`EventKind::AcceptReturned`],
    /// [`EventKind::Connecting`], and [`EventKind::StateChanged`] where addresses were read).
    pub family: u16,
    /// A [`crate::Protocol`] number, or another `IPPROTO_*` ([`EventKind::Created`]).
    pub protocol: u16,
    /// A [`crate::SockType`] number ([`EventKind::Created`], [`EventKind::Connecting`]).
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
    /// Key in `JS_STACKS` of the JavaScript frames found where the handle was made (with
    /// `handle_stack`), or [`crate::NO_JS_STACK`].
    pub js_stack_id: u32,
    /// The creating task's user stack. No kernel stack: in a system call it is the same few
    /// entry frames for every socket, and taking it would cost as much again as the user
    /// stack.
    pub user_stack: StackRef,
    /// The stack that made the libuv handle this socket was opened for
    /// ([`EventKind::Created`]): libuv opens a handle's socket a tick after the program's code
    /// made the handle, so that stack is the one that names the program's code.
    /// [`StackStatus::None`] for sockets not opened by libuv for a handle whose making was
    /// seen; [`StackStatus::InJsStack`] when the frames are in the handle's JavaScript stack.
    pub handle_stack: StackRef,
    /// The word at the user stack pointer when the syscall was made: the return address into
    /// the caller of a frameless syscall wrapper (glibc's `socket()`), which a frame-pointer
    /// walk skips. 0 when unread; userspace decides whether it is a code address.
    pub user_sp_word: u64,
}

impl SockEvent {
    /// An event of `kind` from `hook` with everything else zero (fd -1): callers fill in
    /// what their hook knows.
    pub const fn new(kind: EventKind, hook: Hook) -> Self {
        Self {
            kind: kind as u16,
            hook: hook as u16,
            netns: 0,
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
            js_stack_id: crate::NO_JS_STACK,
            user_stack: StackRef::NONE,
            handle_stack: StackRef::NONE,
            user_sp_word: 0,
        }
    }

    /// Which socket it is about.
    pub const fn id(&self) -> crate::SockId {
        crate::SockId::new(self.cookie, self.netns)
    }
}

const _: () = assert!(core::mem::size_of::<Task>() == 40);
// 160 bytes: the namespace took the upper halves of `kind` and `hook`, which were never
// used. The two stack references are a status and an id each, 8-aligned (8 bytes more
// than the two `i32`s with sentinels they replaced: 5% fewer events fit the ring).
const _: () = assert!(core::mem::size_of::<SockEvent>() == 160);
// The kernel side zeroes events a word at a time.
const _: () = assert!(core::mem::size_of::<SockEvent>().is_multiple_of(8));
const _: () = assert!(core::mem::align_of::<SockEvent>() == 8);
const _: () = assert!(core::mem::offset_of!(SockEvent, user_stack).is_multiple_of(8));

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_stack_reference_says_what_its_id_means() {
        let taken = StackRef::from_stackid(12);
        assert_eq!((taken.status(), taken.id), (Some(StackStatus::Taken), 12));
        let failed = StackRef::from_stackid(-17);
        assert_eq!(
            (failed.status(), failed.id),
            (Some(StackStatus::Failed), 17)
        );
        // The kernel side zeroes an event before filling it in: zero means "none taken".
        let zeroed = StackRef { status: 0, id: 0 };
        assert_eq!(zeroed, StackRef::NONE);
        // What one 8-byte store writes is the reference, status in the lower word.
        let taken = StackRef::from_stackid(12);
        assert_eq!(
            taken.bits().to_le_bytes(),
            // SAFETY: StackRef is two u32s, 8 bytes with no padding.
            unsafe { core::mem::transmute::<StackRef, [u8; 8]>(taken) }
        );
        assert!(
            StackRef::PENDING.is(StackStatus::Pending) && !StackRef::PENDING.is(StackStatus::Taken)
        );
        assert_eq!(StackRef { status: 99, id: 1 }.status(), None);
    }

    #[test]
    fn every_kind_reads_back_from_its_number() {
        for kind in [
            EventKind::Created,
            EventKind::AcceptReturned,
            EventKind::StateChanged,
            EventKind::Released,
            EventKind::RcvQueueFull,
            EventKind::ExceedBufLimit,
            EventKind::Accepted,
            EventKind::CreationCompleted,
            EventKind::Exec,
            EventKind::Connecting,
        ] {
            assert_eq!(EventKind::from_u16(kind as u16), Some(kind));
        }
        assert_eq!(EventKind::from_u16(0), None);
    }
}
