//! Which stack created a socket: the keys the table, reports and their schema name stacks by.
//!
//! Nothing here reads or names a stack: the table depends on this file alone.
use sockleak_common::{NO_JS_STACK, SockEvent, StackRef, StackStatus, StackUnwinder};

/// Which stack created a socket: where its native frames are, the process whose address space
/// the addresses belong to, and the leaf fixup word ([`SockEvent::user_sp_word`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct StackKey {
    pub pid: u32,
    pub native: NativeFrames,
    pub sp_word: u64,
    /// Taken where a libuv handle was made (`uv_tcp_init`), not at the socket's syscall.
    pub handle: bool,
    /// The JavaScript frames found there (key in `JS_STACKS`), or [`NO_JS_STACK`].
    pub js: u32,
}

/// Where a stack's native frames were put.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum NativeFrames {
    /// In the kernel's `STACKS` map, at this id.
    Stacks(u32),
    /// In the JavaScript stack ([`StackKey::js`]), read by the same walk.
    InJsStack,
    /// In the kernel's `WALKED_STACKS` map, at this key: walked by hand at socket birth.
    Walked(u32),
    /// Copied by the kernel at socket birth, as this copy of the process: a name for the
    /// socket's stack until the copy's unwinding says which [`Self::Unwound`] stack it is
    /// (see `Stacks::resolve`).
    Copied(u32),
    /// Unwound here from a copy: distinct stacks of a process are numbered as they come.
    Unwound(u32),
}

impl NativeFrames {
    /// What took the frames.
    pub fn unwinder(self) -> StackUnwinder {
        match self {
            Self::Copied(_) | Self::Unwound(_) => StackUnwinder::Copy,
            Self::Stacks(_) | Self::InJsStack | Self::Walked(_) => StackUnwinder::FramePointers,
        }
    }

    /// Where an event's stack reference says the frames are; `None` when it has none.
    fn of(stack: StackRef) -> Option<Self> {
        match stack.status()? {
            StackStatus::Taken => Some(Self::Stacks(stack.id)),
            StackStatus::InJsStack => Some(Self::InJsStack),
            StackStatus::Walked => Some(Self::Walked(stack.id)),
            StackStatus::Copied => Some(Self::Copied(stack.id)),
            StackStatus::None
            | StackStatus::NotSampled
            | StackStatus::Pending
            | StackStatus::Failed => None,
        }
    }
}

/// What sockleak knows of the code path that created a socket.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Default)]
pub enum CreationStack {
    /// None was taken: the socket predates sockleak, stacks are off, the walk failed, or it
    /// is still to come (pending).
    #[default]
    Unknown,
    /// Deliberately not taken: its process was over its `--stack-rate` budget.
    NotSampled,
    Taken(StackKey),
}

impl CreationStack {
    /// The stack an event names: the one that made the socket's libuv handle where there is
    /// one (it names the program's code; the socket's own names the event loop), else the
    /// socket's own.
    pub fn of(ev: &SockEvent) -> Self {
        if let Some(native) = NativeFrames::of(ev.handle_stack) {
            return Self::Taken(StackKey {
                pid: ev.task.pid,
                native,
                sp_word: 0,
                handle: true,
                js: ev.js_stack_id,
            });
        }
        if let Some(native) = NativeFrames::of(ev.user_stack) {
            return Self::Taken(StackKey {
                pid: ev.task.pid,
                native,
                sp_word: ev.user_sp_word,
                handle: false,
                js: NO_JS_STACK,
            });
        }
        if ev.user_stack.is(StackStatus::NotSampled) {
            Self::NotSampled
        } else {
            Self::Unknown
        }
    }

    pub fn key(self) -> Option<StackKey> {
        match self {
            Self::Taken(key) => Some(key),
            _ => None,
        }
    }
}
