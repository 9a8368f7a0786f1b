//! The maps both sides know by name: their sizes, the per-CPU counters in `STATS`, and the
//! records the `socket_fds` iterator writes.

/// Ring buffer size in bytes (a power of two, as the kernel requires): room for ~40k events,
/// which absorbs a burst of connection churn between two userspace wake-ups.
pub const EVENTS_RING_BYTES: u32 = 4 << 20;

/// Sockets whose creation or accept the kernel keeps in `NEWBORN` instead of the ring, until
/// userspace reads them at a report or their release frees the slot: most sockets of a busy
/// service live less than a report interval, and those then cost no event, no wake-up and no
/// userspace work. An array of this many `SockEvent` slots (a power of two), each socket in the
/// one its cookie names; a socket whose slot is taken is announced through the ring as before.
/// The default of `--newborn-sockets`. A slot is published relying on x86-64's store order
/// (see `NEWBORN` in the eBPF crate's `maps.rs`), so userspace builds for x86-64 only.
pub const NEWBORN_SOCKETS: u32 = 16_384;

/// Releases of TCP sockets userspace never saw (they left `NEWBORN` at their release), kept
/// so their TIME_WAIT and orphan afterlife can still be counted per process: a circular log per
/// CPU, oldest overwritten first.
pub const RELEASE_LOG_SLOTS: u32 = 65_536;

/// One entry of the release log.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ReleasedSocket {
    /// 0 for a slot never written.
    pub cookie: u64,
    /// The process that created or accepted the socket.
    pub pid: u32,
    /// With `cookie`, the socket's [`crate::SockId`].
    pub netns: u32,
    pub comm: [u8; crate::COMM_LEN],
}

/// TCP listeners whose owner the kernel side knows (`LISTENERS`): each written at `listen()`
/// in the listening process's context (or by userspace for listeners older than sockleak),
/// removed when the listener closes. A hash map of this many entries: past it, connections
/// through the listeners left out are announced without an owner, which userspace finds.
pub const LISTENER_SLOTS: u32 = 4096;

/// A listener's network namespace (the inode of its `/proc/PID/ns/net`) and local port.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct ListenerKey {
    pub netns: u32,
    pub port: u16,
    pub _pad: u16,
}

/// Who owns a listener: the task that called `listen()` on it, whose connections through it
/// are attributed to; and the listener's cookie, so that closing one of several listeners on
/// a port (`SO_REUSEPORT`) only removes its own entry.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ListenerOwner {
    pub task: crate::Task,
    pub cookie: u64,
}

/// Processes whose stack budget the kernel side tracks at once (an LRU map: a process that
/// stopped creating sockets makes room for one that starts).
pub const STACK_BUDGET_PROCESSES: u32 = 4096;

/// libuv handles whose making was seen (their stack is kept until a socket is opened for
/// them), and threads inside a libuv call that may open a handle's socket: LRU maps, so a
/// handle that never opens one, or a process that exits, makes room.
pub const LIBUV_HANDLES: u32 = 16384;
pub const LIBUV_THREADS: u32 = 4096;

/// Slots of the `STACKS` map (distinct stacks it can hold) and frames kept per stack. Every
/// slot is preallocated: 8192 x (64 x 8 + bucket header) is about 4.5 MiB of kernel memory.
pub const STACK_SLOTS: u32 = 8192;
pub const STACK_DEPTH: usize = 64;

/// A user stack the kernel side walked by hand (`WALKED_STACKS`, at most [`STACK_SLOTS`],
/// allocated as they come): where a program has no `bpf_get_stackid`, as `cgroup/sock_create`,
/// which runs in the creating task at every socket's birth. Keyed by the low half of its
/// hash, so a stored stack with another hash under the same key is a collision, never taken
/// for this one.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct WalkedStack {
    pub hash: u64,
    /// How many of `frames` the walk read.
    pub count: u32,
    pub _pad: u32,
    /// The code address the task was at (in the system call's wrapper), then each frame's
    /// return address along the frame-pointer chain, innermost first.
    pub frames: [u64; STACK_DEPTH],
}

impl Default for WalkedStack {
    fn default() -> Self {
        Self {
            hash: 0,
            count: 0,
            _pad: 0,
            frames: [0; STACK_DEPTH],
        }
    }
}

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
    /// JavaScript stacks not kept: `JS_STACKS` was full, or held another stack under the same
    /// key. Those sockets keep their native frames only.
    JsStacksLost = 6,
    /// Sockets announced in `NEWBORN` rather than the ring.
    NewbornKept = 7,
    /// Sockets announced through the ring because their `NEWBORN` slot held another socket.
    NewbornFull = 8,
    /// Sockets created by `socket()`, and accepted ones, released while still in `NEWBORN`:
    /// userspace never saw them, and counts them from these.
    ShortLivedCreated = 9,
    ShortLivedAccepted = 10,
    /// Connections announced without an owner: their listener was not in `LISTENERS` (the map
    /// was full, or the listener raced sockleak's start). Userspace resolves them.
    AcceptedUnowned = 11,
    /// Listeners left out of `LISTENERS` because it was full.
    ListenersFull = 12,
    /// Stack copies not sent: over the global byte budget, or the copies' ring was full. Those
    /// sockets have no creation stack.
    StackCopiesLost = 13,
}

pub const STAT_COUNT: u32 = 14;

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
