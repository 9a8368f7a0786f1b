//! Stack copies: what the kernel copies where a socket is created in a process whose code keeps
//! no frame pointers, for userspace to unwind from the objects' CFI (`.eh_frame`).
//!
//! The frame-pointer walk needs nothing but the stack; code built without frame pointers
//! (most packaged software, Rust in release, C at `-O2`) breaks its chain after a frame or two.
//! Unwinding such code takes the objects' call frame information, which userspace has and the
//! kernel does not: the kernel copies the registers and the top of the stack, userspace unwinds
//! them at once (while the process and its mappings exist) and drops the bytes.

/// Bytes of user stack a copy holds at most, from the stack pointer up: deep enough for the
/// native frames between `main` and `socket()` of most services (an interpreter's are few:
/// Python and V8 run many of their own calls per native frame).
pub const STACK_COPY_BYTES: usize = 16 << 10;

/// The ring copies travel in, apart from the events' (`EVENTS`): stack bytes never take the
/// room of a socket's event. Half a second of the default budget ([`STACK_COPY_BUDGET`]);
/// userspace collects copies every 50 ms, or at once when an eighth of the ring waits, and
/// hands them to a thread of its own.
pub const STACK_COPIES_RING_BYTES: u32 = 2 << 20;

/// Bytes of stack copies sent per second, over all processes, unless `--stack-copy-budget`
/// says otherwise: copies past it are counted ([`crate::Stat::StackCopiesLost`]), not sent.
pub const STACK_COPY_BUDGET: u64 = 4 << 20;

/// CPUs a machine may have for stacks to be copied: a copy's number holds the CPU that made
/// it, so that CPUs need not share a counter.
pub const COPY_CPUS: u32 = 4096;

/// Processes whose unwinder the kernel knows (an LRU map: one that exited makes room).
pub const UNWINDER_PROCESSES: u32 = 16384;

/// Programs whose unwinder the kernel knows (an LRU map), for the processes that start them
/// later or are forked from them.
pub const UNWINDER_PROGRAMS: u32 = 4096;

/// A program file as the kernel sees the one a process runs (`mm->exe_file`): its device in
/// the kernel's encoding (major << 20 | minor), inode and size. The size tells a rebuilt
/// binary from the one whose inode number it reuses.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct ProgramFile {
    pub dev: u32,
    pub _pad: u32,
    pub ino: u64,
    pub size: u64,
}

/// How a process's creation stacks are taken. Chosen once per process, before its first
/// stack (by userspace at its exec or at sockleak's start, else by the kernel at that first
/// stack, as its program was judged for an earlier process, or copied if it never was): one
/// code path walked two ways would be two groups.
#[repr(u32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum StackUnwinder {
    /// Walked in the kernel along the frame pointers: its objects keep them.
    FramePointers = 1,
    /// Copied for userspace to unwind from CFI: what the kernel picks for a process nobody
    /// judged, which is right for code with frame pointers too.
    Copy = 2,
}

impl StackUnwinder {
    pub fn of(word: u32) -> Option<Self> {
        match word {
            1 => Some(Self::FramePointers),
            2 => Some(Self::Copy),
            _ => None,
        }
    }

    /// The name reports use: what the stack was unwound by.
    pub const fn name(self) -> &'static str {
        match self {
            Self::FramePointers => "frame_pointers",
            Self::Copy => "cfi",
        }
    }

    pub fn from_name(name: &str) -> Option<Self> {
        [Self::FramePointers, Self::Copy]
            .into_iter()
            .find(|u| u.name() == name)
    }
}

/// What precedes a copy's bytes in `STACK_COPIES`: the record is this header, then `len`
/// bytes of the stack from `sp` up.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct StackCopyHeader {
    /// The process (`tgid`) whose stack this is.
    pub pid: u32,
    /// The copy's number, which the socket's event names ([`crate::StackRef::copied`]).
    pub copy: u32,
    /// The user registers the task entered the kernel with.
    pub ip: u64,
    pub sp: u64,
    pub bp: u64,
    /// Bytes of stack that follow; fewer than [`STACK_COPY_BYTES`] where the stack's mapping
    /// ends first.
    pub len: u32,
    pub _pad: u32,
}

pub const STACK_COPY_HEADER_BYTES: usize = core::mem::size_of::<StackCopyHeader>();

const _: () = assert!(STACK_COPY_HEADER_BYTES == 40);
const _: () = assert!(STACK_COPY_BYTES.is_power_of_two());
const _: () = assert!(COPY_CPUS.is_power_of_two());
