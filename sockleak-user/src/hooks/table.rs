//! The hooks as a table: what each program needs found on the kernel, and what replaces it.
//!
//! Every decision is made from what was found on the running kernel (BTF readable, offsets in it,
//! a program that loaded and attached), never from its version number: distributions backport
//! features, so a version says little about what a kernel allows.
use sockleak_common::{AttachPoint, Config};

/// Something the running kernel was found to allow (or, for [`Feature::CreationStacks`], that
/// was asked for).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Feature {
    /// Kernel BTF, read (and not ignored by `--without-btf`): typed tracepoints and the iterator
    /// load against it.
    Btf,
    /// The struct offsets of the fd walk, read from BTF.
    FdWalk,
    /// Creation stacks are wanted (not `--no-stacks`): the libuv uprobes serve only them.
    CreationStacks,
    /// The typed state tracepoint attached.
    TypedStates,
    /// It attached and can read a socket's network namespace: it announces connections
    /// through a listener, as the listener's owner's, at the end of their handshake.
    ListenerOwners,
    /// That, and creation names a socket's inode: the state program also takes TCP sockets'
    /// stacks (at `connect()` and `listen()`), where they are not taken at birth.
    StacksAtState,
    /// BTF lists `bpf_task_pt_regs` (5.15+): a program may read the task's user registers.
    TaskPtRegs,
    /// Creation names a socket's inode (BTF says where `socket_alloc` keeps it): nothing is
    /// left for the exit of `socket()` to name.
    InodeAtCreation,
    /// `sock_create` walks every socket's user stack at its birth, TCP and UDP alike.
    StacksAtBirth,
    /// The libuv uprobes are loaded: binaries are probed as processes are found.
    LibuvProbes,
    /// UNIX sockets are followed (`--family unix`, a UNIX `--protocol`).
    UnixSockets,
    /// The UNIX connect program walks the connecting task's stack.
    UnixStacksAtConnect,
}

/// What a row needs found, or found missing (it stands in for that feature).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Need {
    Found(Feature),
    Missing(Feature),
}

/// What happens where a row's program cannot be had.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Fallback {
    /// Nothing replaces it: sockleak cannot trace without it, and stops.
    Required,
    /// Another row's program, which stands in for what this one gives; the warning says so.
    Hook(AttachPoint, &'static str),
    /// No program: the warning says what sockleak does without it.
    Without(&'static str),
}

impl Fallback {
    /// The start of the warning made where the row's program cannot be had (its reason
    /// follows); `None` where that stops sockleak.
    pub fn warning(self) -> Option<&'static str> {
        match self {
            Self::Required => None,
            Self::Hook(_, warning) | Self::Without(warning) => Some(warning),
        }
    }
}

/// One program (the libuv uprobes count as one).
#[derive(Clone, Copy, Debug)]
pub struct Row {
    pub hook: AttachPoint,
    pub needs: &'static [Need],
    pub fallback: Fallback,
}

use {Feature::*, Need::*};

/// Both `accept()` exits: they name accepted sockets' owners where the state program cannot.
const ACCEPT_EXIT: &[Need] = &[Found(FdWalk), Missing(ListenerOwners)];

/// Every program, in the order they attach: a fallback comes after the row it replaces, and a
/// row needing a feature a program gives comes after that program.
pub const TABLE: &[Row] = &[
    // Socket birth and release: nothing to trace without them. Birth walks the creating
    // task's stack where it can read the task's registers: one capture point for TCP and UDP.
    Row {
        hook: AttachPoint::CgroupSockCreateWithStacks,
        needs: &[
            Found(CreationStacks),
            Found(TaskPtRegs),
            Found(InodeAtCreation),
        ],
        fallback: Fallback::Hook(
            AttachPoint::CgroupSockCreate,
            "creation stacks not taken at socket birth: TCP sockets' come from connect() and \
             listen() (or socket()'s exit), UDP sockets' from socket()'s exit where it is \
             attached, else none",
        ),
    },
    Row {
        hook: AttachPoint::CgroupSockCreate,
        needs: &[Missing(StacksAtBirth)],
        fallback: Fallback::Required,
    },
    Row {
        hook: AttachPoint::CgroupSockRelease,
        needs: &[],
        fallback: Fallback::Required,
    },
    // TCP state changes: typed (gives the cookie, and announces connections through a
    // listener where it can read their namespace), else the classic tracepoint.
    Row {
        hook: AttachPoint::TpBtfInetSockSetState,
        needs: &[Found(Btf)],
        fallback: Fallback::Hook(
            AttachPoint::TracepointInetSockSetState,
            "tp_btf/inet_sock_set_state unavailable, state changes come without cookies",
        ),
    },
    Row {
        hook: AttachPoint::TracepointInetSockSetState,
        needs: &[Missing(TypedStates)],
        fallback: Fallback::Required,
    },
    // Memory pressure per socket: evidence for verdicts.
    Row {
        hook: AttachPoint::TpBtfSockRcvqueueFull,
        needs: &[Found(Btf)],
        fallback: Fallback::Without("tp_btf/sock_rcvqueue_full unavailable"),
    },
    Row {
        hook: AttachPoint::TpBtfSockExceedBufLimit,
        needs: &[Found(Btf)],
        fallback: Fallback::Without("tp_btf/sock_exceed_buf_limit unavailable"),
    },
    // fd installs: stacks of created sockets (and their inodes where sock_create cannot name
    // them); owners of accepted ones where the state program cannot announce them. Only where
    // the state program does not do it: any syscall tracepoint sends every system call of
    // every process through the kernel's traced path.
    Row {
        hook: AttachPoint::SysExitSocket,
        needs: &[
            Found(FdWalk),
            Missing(StacksAtState),
            Missing(StacksAtBirth),
        ],
        fallback: Fallback::Without("tracepoint syscalls/sys_exit_socket"),
    },
    Row {
        hook: AttachPoint::SysExitAccept,
        needs: ACCEPT_EXIT,
        fallback: Fallback::Without("tracepoint syscalls/sys_exit_accept"),
    },
    Row {
        hook: AttachPoint::SysExitAccept4,
        needs: ACCEPT_EXIT,
        fallback: Fallback::Without("tracepoint syscalls/sys_exit_accept4"),
    },
    // Who holds which socket, for reports.
    Row {
        hook: AttachPoint::IterTaskFile,
        needs: &[Found(FdWalk), Found(Btf)],
        fallback: Fallback::Without(
            "iter/task_file unavailable, reports read socket holders from /proc",
        ),
    },
    // Where libuv programs (Node.js) made the handles their sockets are opened for.
    Row {
        hook: AttachPoint::UprobeLibuv,
        needs: &[Found(CreationStacks)],
        fallback: Fallback::Without(
            "libuv uprobes unavailable, Node.js sockets keep the event loop's stack",
        ),
    },
    // Programs as they start: probed before their own code runs, not at the next report.
    Row {
        hook: AttachPoint::SchedProcessExec,
        needs: &[Found(LibuvProbes)],
        fallback: Fallback::Without(
            "tracepoint sched/sched_process_exec unavailable, a Node.js process started later \
             has its sockets' handle stacks from the report after it started",
        ),
    },
    // UNIX sockets as they connect, in the connecting task (Linux 6.7+): no hook sees their
    // birth, and without this one a look at sock_diag finds them, with holders, no stack.
    Row {
        hook: AttachPoint::CgroupConnectUnixWithStacks,
        needs: &[
            Found(UnixSockets),
            Found(CreationStacks),
            Found(TaskPtRegs),
            Found(InodeAtCreation),
        ],
        fallback: Fallback::Hook(
            AttachPoint::CgroupConnectUnix,
            "UNIX sockets' stacks not taken where they connect",
        ),
    },
    Row {
        hook: AttachPoint::CgroupConnectUnix,
        needs: &[Found(UnixSockets), Missing(UnixStacksAtConnect)],
        fallback: Fallback::Without(
            "cgroup/connect_unix unavailable (Linux 6.7+ has it): UNIX sockets are found by \
             each report's look, with their holders but no owner at connect and no stack",
        ),
    },
];

/// What was found so far: features up front from BTF and the options, more as programs attach.
#[derive(Debug, Default)]
pub struct Findings {
    features: Vec<Feature>,
    /// Why BTF is missing: the warning of each row needing it says so. Other missing features
    /// were warned about once already (the offsets, `--no-stacks`), so their rows go quietly;
    /// but for the registers, which only the stack walk at birth needs (its warning says so).
    why_no_btf: Option<String>,
    /// Offsets the state program needs to give [`Feature::ListenerOwners`] and
    /// [`Feature::StacksAtState`] once it attaches.
    sock_net: bool,
    socket_inode: bool,
}

impl Findings {
    /// What the offsets read into `config` and the options allow; `btf` is kernel BTF or why
    /// there is none.
    pub fn new(config: &Config, btf: Result<(), String>, creation_stacks: bool) -> Self {
        let mut found = Self {
            why_no_btf: btf.err(),
            sock_net: config.sock_net != 0,
            socket_inode: config.socket_inode != 0,
            ..Self::default()
        };
        if found.why_no_btf.is_none() {
            found.features.push(Btf);
        }
        if config.have_offsets != 0 {
            found.features.push(FdWalk);
        }
        if creation_stacks {
            found.features.push(CreationStacks);
        }
        if config.have_task_pt_regs != 0 {
            found.features.push(TaskPtRegs);
        }
        if config.socket_inode != 0 {
            found.features.push(InodeAtCreation);
        }
        found
    }

    /// UNIX sockets are followed: their rows are wanted.
    pub fn follow_unix_sockets(&mut self) {
        self.features.push(UnixSockets);
    }

    pub fn has(&self, feature: Feature) -> bool {
        self.features.contains(&feature)
    }

    /// Records what an attached program gives.
    pub fn attached(&mut self, hook: AttachPoint) {
        match hook {
            AttachPoint::CgroupSockCreateWithStacks => self.features.push(StacksAtBirth),
            AttachPoint::UprobeLibuv => self.features.push(LibuvProbes),
            AttachPoint::CgroupConnectUnixWithStacks => self.features.push(UnixStacksAtConnect),
            AttachPoint::TpBtfInetSockSetState => {
                self.features.push(TypedStates);
                if self.sock_net {
                    self.features.push(ListenerOwners);
                    if self.socket_inode && !self.has(StacksAtBirth) {
                        self.features.push(StacksAtState);
                    }
                }
            }
            _ => {}
        }
    }
}

/// Whether to try a row's program.
#[derive(Debug, PartialEq, Eq)]
pub enum Choice {
    Try,
    /// A feature it needs is missing, for this reason: as if it failed.
    Fallback(String),
    /// Not wanted here (what it stands in for is there), or missing what was warned about.
    Skip,
}

/// Chooses from what was found whether to try `row`'s program.
pub fn choose(row: &Row, found: &Findings) -> Choice {
    for &need in row.needs {
        match need {
            Found(feature) if !found.has(feature) => {
                return match (&found.why_no_btf, feature) {
                    (Some(why), Btf | TaskPtRegs) => Choice::Fallback(why.clone()),
                    (None, TaskPtRegs) => Choice::Fallback(
                        "this kernel has no bpf_task_pt_regs (5.15+) to read the task's \
                         registers with"
                            .to_owned(),
                    ),
                    _ => Choice::Skip,
                };
            }
            Missing(feature) if found.has(feature) => return Choice::Skip,
            _ => {}
        }
    }
    Choice::Try
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The hooks a walk of the table picks where every program that is tried attaches.
    fn picked(config: &Config, btf: Result<(), String>, stacks: bool) -> Vec<AttachPoint> {
        walk(Findings::new(config, btf, stacks))
    }

    /// The hooks a walk of the table picks from `found`, every program tried attaching.
    fn walk(mut found: Findings) -> Vec<AttachPoint> {
        let mut hooks = Vec::new();
        for row in TABLE {
            if choose(row, &found) == Choice::Try {
                found.attached(row.hook);
                hooks.push(row.hook);
            }
        }
        hooks
    }

    fn offsets(sock_net: u64, socket_inode: u64) -> Config {
        Config {
            have_offsets: 1,
            sock_net,
            socket_inode,
            ..Config::default()
        }
    }

    #[test]
    fn a_kernel_with_every_offset_attaches_no_syscall_tracepoint() {
        use AttachPoint::*;
        assert_eq!(
            picked(&offsets(8, 8), Ok(()), true),
            [
                CgroupSockCreate,
                CgroupSockRelease,
                TpBtfInetSockSetState,
                TpBtfSockRcvqueueFull,
                TpBtfSockExceedBufLimit,
                IterTaskFile,
                UprobeLibuv,
                SchedProcessExec,
            ]
        );
    }

    /// UNIX sockets followed: their connect program comes last, with stacks where the
    /// registers can be read, else without; not followed, neither is tried.
    #[test]
    fn following_unix_sockets_adds_their_connect_program() {
        let unix_rows = |config: &Config, unix: bool| -> Vec<AttachPoint> {
            let mut found = Findings::new(config, Ok(()), true);
            if unix {
                found.follow_unix_sockets();
            }
            walk(found)
                .into_iter()
                .filter(|h| h.name().starts_with("cgroup/connect_unix"))
                .collect()
        };
        let registers = Config {
            have_task_pt_regs: 1,
            ..offsets(8, 8)
        };
        assert_eq!(
            unix_rows(&registers, true),
            [AttachPoint::CgroupConnectUnixWithStacks]
        );
        assert_eq!(
            unix_rows(&offsets(8, 8), true),
            [AttachPoint::CgroupConnectUnix]
        );
        assert_eq!(unix_rows(&registers, false), []);
    }

    /// With BTF but without the helper, the warning names the helper.
    #[test]
    fn without_the_registers_helper_the_warning_says_so() {
        let found = Findings::new(&offsets(8, 8), Ok(()), true);
        let Choice::Fallback(why) = choose(&TABLE[0], &found) else {
            panic!("{:?}", choose(&TABLE[0], &found));
        };
        assert!(why.contains("bpf_task_pt_regs"), "{why}");
    }

    /// Where a program may read the task's registers, every socket's stack is taken at its
    /// birth: neither the state program nor `socket()`'s exit takes any.
    #[test]
    fn with_the_tasks_registers_stacks_are_taken_at_birth() {
        use AttachPoint::*;
        let config = Config {
            have_task_pt_regs: 1,
            ..offsets(8, 8)
        };
        let mut found = Findings::new(&config, Ok(()), true);
        let mut hooks = Vec::new();
        for row in TABLE {
            if choose(row, &found) == Choice::Try {
                found.attached(row.hook);
                hooks.push(row.hook);
            }
        }
        assert_eq!(hooks[..2], [CgroupSockCreateWithStacks, CgroupSockRelease]);
        assert!(!hooks.contains(&SysExitSocket), "{hooks:?}");
        assert!(found.has(StacksAtBirth) && !found.has(StacksAtState));
        // Asked for no stacks, it is the plain program.
        let picked = picked(&config, Ok(()), false);
        assert_eq!(picked[..2], [CgroupSockCreate, CgroupSockRelease]);
    }

    #[test]
    fn missing_offsets_bring_back_the_syscall_exits_they_replace() {
        use AttachPoint::*;
        let without_inode = picked(&offsets(8, 0), Ok(()), false);
        assert!(without_inode.contains(&SysExitSocket), "{without_inode:?}");
        assert!(!without_inode.contains(&SysExitAccept), "{without_inode:?}");
        let without_net = picked(&offsets(0, 8), Ok(()), false);
        for exit in [SysExitSocket, SysExitAccept, SysExitAccept4] {
            assert!(without_net.contains(&exit), "{without_net:?}");
        }
        assert!(!without_net.contains(&UprobeLibuv), "no stacks, no uprobes");
        assert!(!without_net.contains(&SchedProcessExec), "nothing to probe");
    }

    #[test]
    fn without_btf_the_typed_rows_fall_back_with_the_reason_and_the_rest_go_quietly() {
        let found = Findings::new(&Config::default(), Err("no BTF".to_owned()), true);
        for row in TABLE {
            let expected = if row.hook.is_tp_btf() {
                Choice::Fallback("no BTF".to_owned())
            } else if row.needs.first() == Some(&Found(UnixSockets)) {
                // Not asked for.
                Choice::Skip
            } else if row.needs.contains(&Found(TaskPtRegs)) {
                // Without BTF nothing says whether the kernel has the helper: the reason is
                // the missing BTF.
                Choice::Fallback("no BTF".to_owned())
            } else if matches!(row.needs.first(), Some(Found(FdWalk | LibuvProbes))) {
                // Missing what was warned about, or what only attaching another row gives.
                Choice::Skip
            } else {
                Choice::Try
            };
            assert_eq!(choose(row, &found), expected, "{:?}", row.hook);
        }
    }

    /// A row's fallback program is a row of its own, later, tried only where the row's
    /// feature is missing; and every attach point has a row.
    #[test]
    fn fallbacks_follow_what_they_replace() {
        for (at, row) in TABLE.iter().enumerate() {
            if let Fallback::Hook(instead, _) = row.fallback {
                let later = TABLE[at + 1..].iter().find(|r| r.hook == instead);
                assert!(later.is_some(), "{instead:?} after {:?}", row.hook);
            }
        }
        for point in AttachPoint::ALL {
            assert_eq!(TABLE.iter().filter(|r| r.hook == point).count(), 1);
        }
    }
}
