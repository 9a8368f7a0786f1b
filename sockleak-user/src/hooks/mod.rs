//! Loading and attaching the eBPF programs, choosing hooks by what the running kernel allows.
//!
//! Required: cgroup/sock_create and cgroup/sock_release on the cgroup v2 root (socket birth and
//! release). Preferred/fallback: tp_btf/inet_sock_set_state, else the classic tracepoint.
//! Optional: connections through a listener announced by the tp_btf state program at the end
//! of their handshake, as the listener's owner's (needs BTF offsets), else by the fd walk at
//! `accept()`'s exit, without either of which accepted sockets are attributed by the periodic
//! /proc scan instead; creation stacks, taken by the same state program at `connect()` and
//! `listen()`, else at the `socket()` exit; the `socket_fds` iterator (BTF, 5.8+), without
//! which reports read socket holders from /proc.
//! Never kprobes or fentry: many kernels (this project's CI among them) do not allow them.
mod btf;
pub mod libuv;
pub mod offsets;
pub mod tracefs;

use std::{
    fs::File,
    path::{Path, PathBuf},
};

use anyhow::{Context, Result, anyhow, bail};
use aya::{
    Btf, Ebpf, EbpfLoader,
    programs::{BtfTracePoint, CgroupAttachMode, CgroupSock, Iter, TracePoint},
};
use sockleak_common::{AttachPoint, Config, KernelFilter, ListenerKey, ListenerOwner};

static EBPF_OBJECT: &[u8] =
    aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/sockleak.bpf.o"));

/// The `task_file` iterator listing every process's inet socket fds (see [`crate::holders`]).
pub const SOCKET_FDS: &str = "socket_fds";

/// The loaded programs (they stay attached while this lives) and the names of the hooks in use.
pub struct Attached {
    pub ebpf: Ebpf,
    pub hooks: Vec<AttachPoint>,
    pub warnings: Vec<String>,
    /// Loaded, attached to binaries as they are found.
    pub libuv: libuv::LibuvProbes,
    /// Slots of the kernel's `NEWBORN` array, where newborn sockets wait for a report to read
    /// them; 0 where every socket comes through the ring.
    pub newborn_slots: u32,
    /// Whether connections through a listener are announced when their handshake completes,
    /// as the owner's of their listener in the kernel's `LISTENERS` map (which userspace fills
    /// for listeners older than sockleak); otherwise at `accept()`'s exit.
    pub owners_of_listeners: bool,
}

/// How the programs are set up.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Options {
    /// Size of the kernel-to-sockleak event ring in bytes (a power of two).
    pub ring_buffer_bytes: u32,
    /// Slots of the kernel's map of newborn sockets, a power of two (0: every socket through
    /// the ring).
    pub newborn_sockets: u32,
    /// Behave as on a kernel without BTF (classic tracepoints, no fd walk).
    pub without_btf: bool,
    /// Most creation stacks taken per process and second (0: every one); `None` takes none.
    pub stack_rate: Option<u64>,
}

/// Enough for every socket of a typical service, a sample of a connection storm's.
pub const DEFAULT_STACK_RATE: u64 = 1000;

impl Default for Options {
    fn default() -> Self {
        Self {
            ring_buffer_bytes: sockleak_common::EVENTS_RING_BYTES,
            newborn_sockets: sockleak_common::NEWBORN_SOCKETS,
            without_btf: false,
            stack_rate: Some(DEFAULT_STACK_RATE),
        }
    }
}

/// Checks privileges, loads the programs and attaches every hook this kernel allows.
/// `cgroup_root` is the cgroup v2 mount ([`cgroup2_root`]), where the socket hooks attach;
/// `filter` says whose sockets the programs follow.
pub fn attach(options: &Options, cgroup_root: &Path, filter: &KernelFilter) -> Result<Attached> {
    if EBPF_OBJECT.is_empty() {
        bail!(
            "this sockleak was built without its eBPF programs (a `cargo check` stub): build it \
             with `cargo xtask build`"
        );
    }
    check_capabilities()?;
    let Options {
        ring_buffer_bytes,
        newborn_sockets,
        without_btf,
        stack_rate,
    } = *options;
    let creation_stacks = stack_rate.is_some();
    let mut warnings = Vec::new();
    if !creation_stacks {
        warnings.push(
            "creation stacks off (--no-stacks): sockets are grouped by process and site only"
                .to_owned(),
        );
    }

    let tracefs = tracefs::ensure_mounted()?;
    let mut config = Config {
        sys_exit_ret: 16,
        tp_skaddr: 8,
        tp_oldstate: 16,
        tp_newstate: 20,
        capture_stacks: u32::from(creation_stacks),
        stack_rate: stack_rate.unwrap_or(0),
        // The libuv uprobes only matter for stacks.
        libuv_handles: u64::from(creation_stacks),
        // An eighth of the ring: a burst wakes userspace well before the ring fills; anything
        // less waits for its 50 ms collection timer (`tracer::COLLECT_EVERY`).
        wakeup_bytes: u64::from(ring_buffer_bytes / 8),
        ..Config::default()
    };
    if let Ok(layout) = tracefs::record_layout(&tracefs, "syscalls", "sys_exit_socket")
        && let Some(f) = layout.get("ret")
    {
        config.sys_exit_ret = f.offset;
    }
    // Layout of the classic tracepoint, used only if tp_btf cannot attach; globals are fixed at
    // load time, so it is read up front.
    if let Ok(layout) = tracefs::record_layout(&tracefs, "sock", "inet_sock_set_state") {
        for (name, slot) in [
            ("skaddr", &mut config.tp_skaddr),
            ("oldstate", &mut config.tp_oldstate),
            ("newstate", &mut config.tp_newstate),
        ] {
            if let Some(field) = layout.get(name) {
                *slot = field.offset;
            }
        }
    }
    let has_btf = !without_btf && std::path::Path::new(offsets::VMLINUX_BTF).exists();
    if has_btf {
        if let Err(err) = offsets::fill_from_btf(&mut config, offsets::VMLINUX_BTF) {
            warnings.push(format!(
                "accepted sockets will be attributed by /proc scans only: {err:#}"
            ));
        }
    } else {
        warnings.push(format!(
            "no BTF ({} {}): using classic tracepoints; accepted sockets are attributed by \
             /proc scans only",
            offsets::VMLINUX_BTF,
            if without_btf {
                "ignored by request"
            } else {
                "is missing"
            }
        ));
    }

    // Newborn sockets wait in the kernel's map only where their creation names their inode:
    // on the older layout the inode follows at the exit of `socket()`, through the ring.
    if config.socket_inode != 0 {
        config.newborn_slots = u64::from(newborn_sockets);
    } else if newborn_sockets > 0 {
        warnings.push(
            "every socket is announced through the event ring (no socket inode offset in BTF): \
             short-lived sockets cost more"
                .to_owned(),
        );
    }
    config.release_log_per_cpu = release_log_per_cpu();

    let mut ebpf = EbpfLoader::new()
        .override_global("CONFIG", &config, true)
        .override_global("FILTER", filter, true)
        .map_max_entries("EVENTS", ring_buffer_bytes)
        // A map cannot have no entries; with none in use, it is never written.
        .map_max_entries("NEWBORN", (config.newborn_slots as u32).max(1))
        .load(EBPF_OBJECT)
        .context("loading the eBPF programs")?;

    let mut hooks = Vec::new();

    // Socket birth and release: required.
    let cgroup = File::open(cgroup_root)
        .with_context(|| format!("opening the cgroup v2 root {}", cgroup_root.display()))?;
    for (prog, hook) in [
        ("sock_create", AttachPoint::CgroupSockCreate),
        ("sock_release", AttachPoint::CgroupSockRelease),
    ] {
        let program: &mut CgroupSock = program_mut(&mut ebpf, prog)?;
        program.load().with_context(|| format!("loading {hook}"))?;
        program
            // Attached as a bpf_link (kernel >= 5.7), which takes no flags and always coexists
            // with other tools' programs on the same cgroup; the link dies with the process.
            .attach(&cgroup, CgroupAttachMode::Single)
            .with_context(|| format!("attaching {hook} to {}", cgroup_root.display()))?;
        hooks.push(hook);
    }

    // Parsed once and shared by every tp_btf program (and the reason each may fail).
    let kernel_btf = if has_btf {
        Btf::from_sys_fs().map_err(|err| format!("reading kernel BTF: {err}"))
    } else {
        Err("no BTF".to_owned())
    };

    // TCP state changes: typed tp_btf (gives the cookie, and announces connections through a
    // listener where it can read their namespace) or the classic tracepoint.
    let mut owners_of_listeners = false;
    match attach_tp_btf(&mut ebpf, &kernel_btf, "inet_sock_set_state") {
        Ok(()) => {
            hooks.push(AttachPoint::TpBtfInetSockSetState);
            owners_of_listeners = config.sock_net != 0;
        }
        Err(btf_err) => {
            let program: &mut TracePoint = program_mut(&mut ebpf, "inet_sock_set_state_tp")?;
            program.load()?;
            program
                .attach("sock", "inet_sock_set_state")
                .with_context(|| {
                    format!("attaching sock/inet_sock_set_state (tp_btf failed too: {btf_err:#})")
                })?;
            hooks.push(AttachPoint::TracepointInetSockSetState);
            // The warning is one line; the verifier's whole log is for -vv.
            log::debug!("tp_btf/inet_sock_set_state: {btf_err:#}");
            warnings.push(one_line(&format!(
                "tp_btf/inet_sock_set_state unavailable, state changes come without cookies: \
                 {btf_err:#}"
            )));
        }
    }

    // Memory pressure per socket: evidence for verdicts, optional.
    for (name, hook) in [
        ("sock_rcvqueue_full", AttachPoint::TpBtfSockRcvqueueFull),
        (
            "sock_exceed_buf_limit",
            AttachPoint::TpBtfSockExceedBufLimit,
        ),
    ] {
        match attach_tp_btf(&mut ebpf, &kernel_btf, name) {
            Ok(()) => hooks.push(hook),
            Err(err) => warnings.push(one_line(&format!("tp_btf/{name} unavailable: {err:#}"))),
        }
    }

    // Where the state program announces connections and takes TCP sockets' stacks (at
    // connect() and listen()), no syscall tracepoint is attached: attaching any sends every
    // system call of every process through the kernel's traced path.
    let syscall_exits: &[(&str, AttachPoint)] = if owners_of_listeners && config.socket_inode != 0 {
        let flag = ebpf
            .map_mut("STACKS_AT_STATE")
            .context("STACKS_AT_STATE map missing")?;
        aya::maps::Array::<_, u32>::try_from(flag)?.set(0, &1, 0)?;
        &[]
    } else if owners_of_listeners {
        // The older layout: the exit of `socket()` names a created socket's inode.
        &[("sys_exit_socket", AttachPoint::SysExitSocket)]
    } else {
        &[
            ("sys_exit_socket", AttachPoint::SysExitSocket),
            ("sys_exit_accept", AttachPoint::SysExitAccept),
            ("sys_exit_accept4", AttachPoint::SysExitAccept4),
        ]
    };
    // fd installs: stacks of created sockets (and their inodes where sock_create cannot name
    // them); owners of accepted ones where the state program cannot announce them.
    if config.have_offsets != 0 {
        for &(syscall, hook) in syscall_exits {
            let program: &mut TracePoint = program_mut(&mut ebpf, syscall)?;
            let attached = program
                .load()
                .map_err(anyhow::Error::from)
                .and_then(|()| Ok(program.attach("syscalls", syscall)?));
            match attached {
                Ok(_) => hooks.push(hook),
                Err(err) => {
                    warnings.push(one_line(&format!("tracepoint syscalls/{syscall}: {err:#}")))
                }
            }
        }
    }

    // Who holds which socket, for reports: optional, /proc is the slower fallback.
    if config.have_offsets != 0 {
        let loaded = kernel_btf
            .as_ref()
            .map_err(|err| anyhow!("{err}"))
            .and_then(|btf| {
                let program: &mut Iter = program_mut(&mut ebpf, SOCKET_FDS)?;
                Ok(program.load("task_file", btf)?)
            });
        match loaded {
            Ok(()) => hooks.push(AttachPoint::IterTaskFile),
            Err(err) => warnings.push(one_line(&format!(
                "iter/task_file unavailable, reports read socket holders from /proc: {err:#}"
            ))),
        }
    }

    // Where libuv programs (Node.js) made the handles their sockets are opened for: optional,
    // a socket's own stack is the fallback.
    let libuv = if creation_stacks {
        match libuv::LibuvProbes::load(&mut ebpf) {
            Ok(probes) => {
                hooks.push(AttachPoint::UprobeLibuv);
                probes
            }
            Err(err) => {
                warnings.push(one_line(&format!(
                    "libuv uprobes unavailable, Node.js sockets keep the event loop's stack: {err:#}"
                )));
                libuv::LibuvProbes::default()
            }
        }
    } else {
        libuv::LibuvProbes::default()
    };

    Ok(Attached {
        ebpf,
        hooks,
        warnings,
        libuv,
        newborn_slots: config.newborn_slots as u32,
        owners_of_listeners,
    })
}

/// Writes the owners of listeners older than sockleak into the kernel's `LISTENERS` map (see
/// [`Attached::owners_of_listeners`]): connections through them are then announced as theirs,
/// and pass the owner filters in the kernel. An entry the kernel wrote meanwhile (the port
/// listened on again) is newer and stays. Returns how many were written.
pub fn tell_listeners(
    ebpf: &mut Ebpf,
    listeners: impl IntoIterator<Item = (ListenerKey, ListenerOwner)>,
) -> Result<usize> {
    const BPF_NOEXIST: u64 = 1;
    let map = ebpf.map_mut("LISTENERS").context("LISTENERS map missing")?;
    let mut map: aya::maps::HashMap<_, ListenerKey, ListenerOwner> =
        aya::maps::HashMap::try_from(map)?;
    let mut written = 0;
    for (key, owner) in listeners {
        if map.insert(&key, &owner, BPF_NOEXIST).is_ok() {
            written += 1;
        }
    }
    Ok(written)
}

/// Each CPU's share of the release log, a power of two (the programs index it with a mask).
fn release_log_per_cpu() -> u64 {
    let cpus = aya::util::nr_cpus()
        .map_or(1, |n| n.get())
        .next_power_of_two();
    u64::from(sockleak_common::RELEASE_LOG_SLOTS / cpus)
}

/// Verifier logs span many lines; a warning is one.
fn one_line(text: &str) -> String {
    let joined = text.split_whitespace().collect::<Vec<_>>().join(" ");
    match joined.char_indices().nth(300) {
        Some((cut, _)) => format!("{}...", &joined[..cut]),
        None => joined,
    }
}

fn attach_tp_btf(ebpf: &mut Ebpf, kernel_btf: &Result<Btf, String>, name: &str) -> Result<()> {
    let btf = kernel_btf.as_ref().map_err(|err| anyhow!("{err}"))?;
    let program: &mut BtfTracePoint = program_mut(ebpf, name)?;
    program.load(name, btf)?;
    program.attach()?;
    Ok(())
}

fn program_mut<'a, T>(ebpf: &'a mut Ebpf, name: &str) -> Result<&'a mut T>
where
    &'a mut T: TryFrom<&'a mut aya::programs::Program, Error = aya::programs::ProgramError>,
{
    let program = ebpf
        .program_mut(name)
        .ok_or_else(|| anyhow!("program {name} missing from the eBPF object"))?;
    Ok(program.try_into()?)
}

/// Where sockleak mounts the cgroup v2 hierarchy on machines that mount only v1 (or none).
const OWN_CGROUP2_MOUNT: &str = "/run/sockleak/cgroup2";

/// The cgroup v2 mount point (not always /sys/fs/cgroup: hybrid setups mount it elsewhere).
/// On a machine that mounts no cgroup v2 hierarchy (cgroup v1 only), sockleak mounts one
/// itself: the v2 hierarchy always exists in the kernel, every process is in its root, and
/// the socket hooks attach there whatever v1 does. The mount is left for later runs, as
/// Cilium leaves its own; the returned warning says so.
pub fn cgroup2_root() -> Result<(PathBuf, Option<String>)> {
    let mounts =
        std::fs::read_to_string("/proc/self/mounts").context("reading /proc/self/mounts")?;
    if let Some(root) = tracefs::mount_point_of(&mounts, "cgroup2") {
        return Ok((root, None));
    }
    let refuse = |why: String| {
        anyhow!(
            "no cgroup v2 filesystem is mounted and mounting one at {OWN_CGROUP2_MOUNT} failed \
             ({why}): sockleak needs it for its socket create/release hooks \
             (mount -t cgroup2 none {OWN_CGROUP2_MOUNT})"
        )
    };
    std::fs::create_dir_all(OWN_CGROUP2_MOUNT).map_err(|err| refuse(err.to_string()))?;
    let target = std::ffi::CString::new(OWN_CGROUP2_MOUNT).unwrap();
    // SAFETY: valid NUL-terminated strings, no data argument.
    let rc = unsafe {
        libc::mount(
            c"cgroup2".as_ptr(),
            target.as_ptr(),
            c"cgroup2".as_ptr(),
            0,
            std::ptr::null(),
        )
    };
    if rc != 0 {
        return Err(refuse(std::io::Error::last_os_error().to_string()));
    }
    let warning = format!(
        "no cgroup v2 hierarchy was mounted: mounted one at {OWN_CGROUP2_MOUNT} for the socket \
         hooks (left mounted for later runs)"
    );
    Ok((PathBuf::from(OWN_CGROUP2_MOUNT), Some(warning)))
}

// Capability numbers from linux/capability.h.
const CAP_NET_ADMIN: u32 = 12;
const CAP_SYS_ADMIN: u32 = 21;
const CAP_PERFMON: u32 = 38;
const CAP_BPF: u32 = 39;

/// Says which capability is missing instead of letting a load fail with a bare EPERM.
fn check_capabilities() -> Result<()> {
    let status =
        std::fs::read_to_string("/proc/self/status").context("reading /proc/self/status")?;
    let effective = status
        .lines()
        .find_map(|l| l.strip_prefix("CapEff:"))
        .and_then(|hex| u64::from_str_radix(hex.trim(), 16).ok())
        .unwrap_or(0);
    let has = |cap: u32| effective & (1u64 << cap) != 0;
    let mut missing = Vec::new();
    if !has(CAP_SYS_ADMIN) {
        if !has(CAP_BPF) {
            missing.push("CAP_BPF");
        }
        if !has(CAP_PERFMON) {
            missing.push("CAP_PERFMON");
        }
    }
    if !has(CAP_NET_ADMIN) && !has(CAP_SYS_ADMIN) {
        missing.push("CAP_NET_ADMIN");
    }
    if !missing.is_empty() {
        bail!(
            "sockleak needs root or {} to load its eBPF programs (missing: {}); try sudo",
            "CAP_BPF, CAP_PERFMON and CAP_NET_ADMIN",
            missing.join(", ")
        );
    }
    Ok(())
}
