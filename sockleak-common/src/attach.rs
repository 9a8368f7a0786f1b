//! Where sockleak's programs attach: the names of the hooks in use, as `started` reports them.

/// One attach point of the eBPF programs (for the libuv uprobes, all of them at once). Userspace
/// says which are in use by these; they are spelled as the programs' ELF sections are, which is
/// how reports have always named them.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum AttachPoint {
    /// Socket birth, on the cgroup v2 root, walking the creating task's user stack.
    CgroupSockCreateWithStacks,
    /// Socket birth, on the cgroup v2 root.
    CgroupSockCreate,
    /// Socket release, on the cgroup v2 root.
    CgroupSockRelease,
    /// TCP state changes, typed: reads the socket's cookie and namespace.
    TpBtfInetSockSetState,
    /// TCP state changes, classic: no cookie.
    TracepointInetSockSetState,
    /// A socket's receive queue overflowed.
    TpBtfSockRcvqueueFull,
    /// A socket went over its memory limit.
    TpBtfSockExceedBufLimit,
    /// The exit of `socket()`.
    SysExitSocket,
    /// The exit of `accept()`.
    SysExitAccept,
    /// The exit of `accept4()`.
    SysExitAccept4,
    /// The `task_file` iterator listing who holds which socket.
    IterTaskFile,
    /// The uprobes on libuv (Node.js).
    UprobeLibuv,
    /// A process starting a new program: its runtime is probed before its code runs.
    SchedProcessExec,
    /// UNIX sockets connecting, on the cgroup v2 root, walking the connecting task's stack.
    CgroupConnectUnixWithStacks,
    /// UNIX sockets connecting, on the cgroup v2 root.
    CgroupConnectUnix,
}

impl AttachPoint {
    pub const ALL: [AttachPoint; 15] = [
        Self::CgroupSockCreateWithStacks,
        Self::CgroupSockCreate,
        Self::CgroupSockRelease,
        Self::TpBtfInetSockSetState,
        Self::TracepointInetSockSetState,
        Self::TpBtfSockRcvqueueFull,
        Self::TpBtfSockExceedBufLimit,
        Self::SysExitSocket,
        Self::SysExitAccept,
        Self::SysExitAccept4,
        Self::IterTaskFile,
        Self::UprobeLibuv,
        Self::SchedProcessExec,
        Self::CgroupConnectUnixWithStacks,
        Self::CgroupConnectUnix,
    ];

    /// As the `started` line (JSON and text) spells it.
    pub const fn name(self) -> &'static str {
        match self {
            Self::CgroupSockCreateWithStacks => "cgroup/sock_create (with stacks)",
            Self::CgroupSockCreate => "cgroup/sock_create",
            Self::CgroupSockRelease => "cgroup/sock_release",
            Self::TpBtfInetSockSetState => "tp_btf/inet_sock_set_state",
            Self::TracepointInetSockSetState => "tracepoint/sock/inet_sock_set_state",
            Self::TpBtfSockRcvqueueFull => "tp_btf/sock_rcvqueue_full",
            Self::TpBtfSockExceedBufLimit => "tp_btf/sock_exceed_buf_limit",
            Self::SysExitSocket => "tracepoint/syscalls/sys_exit_socket",
            Self::SysExitAccept => "tracepoint/syscalls/sys_exit_accept",
            Self::SysExitAccept4 => "tracepoint/syscalls/sys_exit_accept4",
            Self::IterTaskFile => "iter/task_file",
            Self::UprobeLibuv => "uprobe/libuv",
            Self::SchedProcessExec => "tracepoint/sched/sched_process_exec",
            Self::CgroupConnectUnixWithStacks => "cgroup/connect_unix (with stacks)",
            Self::CgroupConnectUnix => "cgroup/connect_unix",
        }
    }

    pub fn from_name(name: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|a| a.name() == name)
    }

    /// Whether it is a typed (BTF) tracepoint: none is, on a kernel without BTF.
    pub const fn is_tp_btf(self) -> bool {
        matches!(
            self,
            Self::TpBtfInetSockSetState
                | Self::TpBtfSockRcvqueueFull
                | Self::TpBtfSockExceedBufLimit
        )
    }
}

impl core::fmt::Display for AttachPoint {
    fn fmt(&self, f: &mut core::fmt::Formatter) -> core::fmt::Result {
        f.write_str(self.name())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip_and_tp_btf_ones_say_so() {
        for point in AttachPoint::ALL {
            assert_eq!(AttachPoint::from_name(point.name()), Some(point));
            assert_eq!(point.is_tp_btf(), point.name().starts_with("tp_btf/"));
        }
    }
}
