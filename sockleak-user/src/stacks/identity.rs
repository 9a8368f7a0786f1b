//! Which stack created a socket: the keys the table, reports and their schema name stacks by.
//!
//! Nothing here reads or names a stack: the table depends on this file alone.
use sockleak_common::{NO_JS_STACK, STACK_NOT_SAMPLED, SockEvent};

/// Which stack created a socket: its id in `STACKS`, the process whose address space the
/// addresses belong to, and the leaf fixup word ([`SockEvent::user_sp_word`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct StackKey {
    pub pid: u32,
    pub user: i32,
    pub sp_word: u64,
    /// Taken where a libuv handle was made (`uv_tcp_init`), not at the socket's syscall.
    pub handle: bool,
    /// The JavaScript frames found there (key in `JS_STACKS`), or [`NO_JS_STACK`].
    pub js: u32,
}

/// What sockleak knows of the code path that created a socket.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Default)]
pub enum CreationStack {
    /// None was taken: the socket predates sockleak, stacks are off, or the walk failed.
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
        if ev.handle_stack_id >= 0 {
            return Self::Taken(StackKey {
                pid: ev.task.pid,
                user: ev.handle_stack_id,
                sp_word: 0,
                handle: true,
                js: ev.js_stack_id,
            });
        }
        match ev.user_stack_id {
            id if id >= 0 => Self::Taken(StackKey {
                pid: ev.task.pid,
                user: id,
                sp_word: ev.user_sp_word,
                handle: false,
                js: NO_JS_STACK,
            }),
            STACK_NOT_SAMPLED => Self::NotSampled,
            _ => Self::Unknown,
        }
    }

    pub fn key(self) -> Option<StackKey> {
        match self {
            Self::Taken(key) => Some(key),
            _ => None,
        }
    }
}
