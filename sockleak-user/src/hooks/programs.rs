//! Attaching the programs the hook table chooses, one row at a time.
use std::{fs::File, path::Path};

use anyhow::{Context, Result, anyhow};
use aya::{
    Btf, Ebpf,
    programs::{BtfTracePoint, CgroupAttachMode, CgroupSock, Iter, TracePoint},
};
use sockleak_common::AttachPoint;

use super::{
    EBPF_OBJECT, SOCKET_FDS, libuv, program_mut, raw,
    table::{Choice, Fallback, Feature, Findings, TABLE, choose},
};

/// The loaded object and what its programs attach to or load against.
pub struct Programs<'a> {
    pub ebpf: &'a mut Ebpf,
    /// Kernel BTF, or why there is none.
    pub btf: &'a Result<Btf, String>,
    /// The cgroup v2 root, open, and where it is (for errors).
    pub cgroup: &'a File,
    pub cgroup_root: &'a Path,
    /// Loaded once the libuv row attaches.
    pub libuv: libuv::LibuvProbes,
    /// Why the last program with another in its place failed: that one's error says it.
    pub replaced_failure: String,
    /// The programs loaded without aya, attached while these live.
    pub raw_links: Vec<raw::CgroupLink>,
}

impl Programs<'_> {
    /// Walks the table: attaches each row's program that [`choose`] picks, warns where one is
    /// missing (by its fallback's warning), and stops where a required one is. Returns the
    /// hooks in use.
    pub fn attach_table(
        &mut self,
        findings: &mut Findings,
        warnings: &mut Vec<String>,
    ) -> Result<Vec<AttachPoint>> {
        let mut hooks = Vec::new();
        for row in TABLE {
            let outcome = match choose(row, findings) {
                Choice::Skip => continue,
                Choice::Fallback(why) => Err(anyhow!(why)),
                Choice::Try => self.attach(row.hook),
            };
            match (outcome, row.fallback.warning()) {
                (Ok(()), _) => {
                    hooks.push(row.hook);
                    findings.attached(row.hook);
                    if row.hook == AttachPoint::TpBtfInetSockSetState
                        && findings.has(Feature::StacksAtState)
                    {
                        self.take_stacks_at_state()?;
                    }
                }
                (Err(err), None) => return Err(err),
                (Err(err), Some(warning)) => {
                    // The warning is one line; the verifier's whole log is for -vv.
                    log::debug!("{}: {err:#}", row.hook);
                    warnings.push(one_line(&format!("{warning}: {err:#}")));
                    if let Fallback::Hook(..) = row.fallback {
                        self.replaced_failure = format!("{err:#}");
                    }
                }
            }
        }
        Ok(hooks)
    }

    /// Loads and attaches the program(s) of one attach point.
    fn attach(&mut self, hook: AttachPoint) -> Result<()> {
        match hook {
            AttachPoint::CgroupSockCreateWithStacks => {
                self.cgroup_sock("sock_create_with_stacks", hook)
            }
            AttachPoint::CgroupSockCreate => self.cgroup_sock("sock_create", hook),
            AttachPoint::CgroupSockRelease => self.cgroup_sock("sock_release", hook),
            AttachPoint::TpBtfInetSockSetState => self.tp_btf("inet_sock_set_state"),
            AttachPoint::TpBtfSockRcvqueueFull => self.tp_btf("sock_rcvqueue_full"),
            AttachPoint::TpBtfSockExceedBufLimit => self.tp_btf("sock_exceed_buf_limit"),
            AttachPoint::TracepointInetSockSetState => self.classic_state(),
            AttachPoint::SysExitSocket => self.syscall_exit("sys_exit_socket"),
            AttachPoint::SysExitAccept => self.syscall_exit("sys_exit_accept"),
            AttachPoint::SysExitAccept4 => self.syscall_exit("sys_exit_accept4"),
            AttachPoint::IterTaskFile => self.iterator(),
            AttachPoint::UprobeLibuv => {
                self.libuv = libuv::LibuvProbes::load(self.ebpf)?;
                Ok(())
            }
            AttachPoint::SchedProcessExec => {
                self.tracepoint("sched_process_exec", "sched", "sched_process_exec")
            }
            AttachPoint::CgroupConnectUnixWithStacks => {
                self.unix_connect("unix_connect_with_stacks", hook)
            }
            AttachPoint::CgroupConnectUnix => self.unix_connect("unix_connect", hook),
        }
    }

    fn unix_connect(&mut self, name: &str, hook: AttachPoint) -> Result<()> {
        let link = raw::link_unix_connect(self.ebpf, EBPF_OBJECT, name, self.cgroup)
            .with_context(|| format!("{hook} on {}", self.cgroup_root.display()))?;
        self.raw_links.push(link);
        Ok(())
    }

    fn cgroup_sock(&mut self, name: &str, hook: AttachPoint) -> Result<()> {
        let program: &mut CgroupSock = program_mut(self.ebpf, name)?;
        program.load().with_context(|| format!("loading {hook}"))?;
        program
            // Attached as a bpf_link, which takes no flags and always coexists with other
            // tools' programs on the same cgroup; the link dies with the process.
            .attach(self.cgroup, CgroupAttachMode::Single)
            .with_context(|| format!("attaching {hook} to {}", self.cgroup_root.display()))?;
        Ok(())
    }

    fn tp_btf(&mut self, name: &str) -> Result<()> {
        let btf = self.btf.as_ref().map_err(|err| anyhow!("{err}"))?;
        let program: &mut BtfTracePoint = program_mut(self.ebpf, name)?;
        program.load(name, btf)?;
        program.attach()?;
        Ok(())
    }

    /// The classic state tracepoint, in place of the typed one.
    fn classic_state(&mut self) -> Result<()> {
        let program: &mut TracePoint = program_mut(self.ebpf, "inet_sock_set_state_tp")?;
        program.load()?;
        let replaced = &self.replaced_failure;
        program
            .attach("sock", "inet_sock_set_state")
            .with_context(|| {
                format!("attaching sock/inet_sock_set_state (tp_btf failed too: {replaced})")
            })?;
        Ok(())
    }

    fn syscall_exit(&mut self, syscall: &str) -> Result<()> {
        self.tracepoint(syscall, "syscalls", syscall)
    }

    fn tracepoint(&mut self, program: &str, category: &str, name: &str) -> Result<()> {
        let program: &mut TracePoint = program_mut(self.ebpf, program)?;
        program.load()?;
        program.attach(category, name)?;
        Ok(())
    }

    /// The `socket_fds` iterator (see [`crate::holders`]): loaded only, reports run it.
    fn iterator(&mut self) -> Result<()> {
        let btf = self.btf.as_ref().map_err(|err| anyhow!("{err}"))?;
        let program: &mut Iter = program_mut(self.ebpf, SOCKET_FDS)?;
        program.load("task_file", btf)?;
        Ok(())
    }

    /// Tells the state program to take TCP sockets' creation stacks (at `connect()` and
    /// `listen()`): the `socket()` exit that would otherwise take them is not attached.
    fn take_stacks_at_state(&mut self) -> Result<()> {
        let flag = self
            .ebpf
            .map_mut("STACKS_AT_STATE")
            .context("STACKS_AT_STATE map missing")?;
        aya::maps::Array::<_, u32>::try_from(flag)?.set(0, &1, 0)?;
        Ok(())
    }
}

/// Verifier logs span many lines; a warning is one.
fn one_line(text: &str) -> String {
    let joined = text.split_whitespace().collect::<Vec<_>>().join(" ");
    match joined.char_indices().nth(300) {
        Some((cut, _)) => format!("{}...", &joined[..cut]),
        None => joined,
    }
}
