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
//!
//! [`table::TABLE`] says what each program needs the kernel to be found to allow and what
//! replaces it; `programs.rs` walks it.
mod btf;
pub mod libuv;
pub mod offsets;
mod programs;
pub mod raw;
pub mod table;
pub mod tracefs;

use std::{
    fs::File,
    path::{Path, PathBuf},
};

use anyhow::{Context, Result, anyhow, bail};
use aya::{Btf, Ebpf, EbpfLoader};
use sockleak_common::{AttachPoint, Config, KernelFilter, ListenerKey, ListenerOwner};

use self::{
    programs::Programs,
    table::{Feature, Findings},
};

static EBPF_OBJECT: &[u8] =
    aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/sockleak.bpf.o"));

/// The `task_file` iterator listing every process's inet socket fds (see [`crate::holders`]).
pub const SOCKET_FDS: &str = "socket_fds";

/// The loaded programs (they stay attached while this lives) and the names of the hooks in use.
pub struct Attached {
    pub ebpf: Ebpf,
    /// The programs aya cannot load (`raw.rs`), linked while these live.
    pub raw_links: Vec<raw::CgroupLink>,
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
    /// Whether the programs name each socket with its network namespace (`SockId::netns`):
    /// where BTF does not say where a socket keeps it, they send 0, and sock_diag's sockets
    /// must then be named without it too.
    pub namespaces_in_ids: bool,
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
    /// Bytes of stack copies per second (see [`sockleak_common::StackCopyHeader`]); 0 copies
    /// none.
    pub stack_copy_budget: u64,
    /// UNIX sockets are followed ([`crate::filter::Filter::follows_unix`]): their programs
    /// load.
    pub unix_sockets: bool,
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
            stack_copy_budget: sockleak_common::STACK_COPY_BUDGET,
            unix_sockets: false,
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
    let creation_stacks = options.stack_rate.is_some();
    let mut warnings = Vec::new();
    if !creation_stacks {
        warnings.push(
            "creation stacks off (--no-stacks): sockets are grouped by process and site only"
                .to_owned(),
        );
    }
    let (config, has_btf) = configure(options, &mut warnings)?;
    let mut ebpf = EbpfLoader::new()
        .override_global("CONFIG", &config, true)
        .override_global("FILTER", filter, true)
        .map_max_entries("EVENTS", options.ring_buffer_bytes)
        // A map cannot have no entries; with none in use, it is never written.
        .map_max_entries("NEWBORN", (config.newborn_slots as u32).max(1))
        .load(EBPF_OBJECT)
        .context("loading the eBPF programs")?;
    let cgroup = File::open(cgroup_root)
        .with_context(|| format!("opening the cgroup v2 root {}", cgroup_root.display()))?;
    // Parsed once and shared by every program loaded against BTF (and the reason each may fail).
    let btf = if has_btf {
        Btf::from_sys_fs().map_err(|err| format!("reading kernel BTF: {err}"))
    } else {
        Err("no BTF".to_owned())
    };
    let mut findings = Findings::new(
        &config,
        btf.as_ref().map(|_| ()).map_err(Clone::clone),
        creation_stacks,
    );
    if options.unix_sockets {
        findings.follow_unix_sockets();
    }
    let mut programs = Programs {
        ebpf: &mut ebpf,
        btf: &btf,
        cgroup: &cgroup,
        cgroup_root,
        libuv: libuv::LibuvProbes::default(),
        replaced_failure: String::new(),
        raw_links: Vec::new(),
    };
    let hooks = programs.attach_table(&mut findings, &mut warnings)?;
    let libuv = programs.libuv;
    let raw_links = programs.raw_links;
    Ok(Attached {
        ebpf,
        raw_links,
        hooks,
        warnings,
        libuv,
        newborn_slots: config.newborn_slots as u32,
        owners_of_listeners: findings.has(Feature::ListenerOwners),
        namespaces_in_ids: config.sock_net != 0,
    })
}

/// The `CONFIG` global the programs load with (globals are fixed at load time, so all of it is
/// read up front), and whether kernel BTF is to be used.
fn configure(options: &Options, warnings: &mut Vec<String>) -> Result<(Config, bool)> {
    let Options {
        ring_buffer_bytes,
        newborn_sockets,
        without_btf,
        stack_rate,
        stack_copy_budget,
        // Which programs load, not what they are configured with.
        unix_sockets: _,
    } = *options;
    let creation_stacks = stack_rate.is_some();
    let tracefs = tracefs::ensure_mounted()?;
    let mut config = Config {
        sys_exit_ret: 16,
        tp_skaddr: 8,
        tp_oldstate: 16,
        tp_newstate: 20,
        capture_stacks: u32::from(creation_stacks),
        stack_rate: stack_rate.unwrap_or(0),
        stack_copy_budget: if creation_stacks && copies_fit(warnings) {
            stack_copy_budget
        } else {
            0
        },
        // The libuv uprobes only matter for stacks.
        libuv_handles: u64::from(creation_stacks),
        // An eighth of the ring: a burst wakes userspace well before the ring fills; anything
        // less waits for its 50 ms collection timer (`tracer::COLLECT_EVERY`).
        wakeup_bytes: u64::from(ring_buffer_bytes / 8),
        ..Config::default()
    };
    read_record_layouts(&tracefs, &mut config);
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
    Ok((config, has_btf))
}

/// Whether this machine's CPUs can number stack copies (see [`sockleak_common::COPY_CPUS`]);
/// if not, the warning says what is lost.
fn copies_fit(warnings: &mut Vec<String>) -> bool {
    let cpus = aya::util::nr_cpus().map_or(1, |n| n.get());
    let fit = cpus <= sockleak_common::COPY_CPUS;
    if !fit {
        warnings.push(format!(
            "{cpus} possible CPUs, more than stack copies can number \
             ({}): code built without frame pointers shows the frames its frame-pointer \
             chain keeps",
            sockleak_common::COPY_CPUS
        ));
    }
    fit
}

/// Where the classic tracepoints' records keep their fields, where tracefs says (the defaults
/// otherwise). The state tracepoint's is read even though it is used only if tp_btf cannot
/// attach: that is known only after loading, when globals are fixed.
fn read_record_layouts(tracefs: &Path, config: &mut Config) {
    if let Ok(layout) = tracefs::record_layout(tracefs, "syscalls", "sys_exit_socket")
        && let Some(f) = layout.get("ret")
    {
        config.sys_exit_ret = f.offset;
    }
    if let Ok(layout) = tracefs::record_layout(tracefs, "sock", "inet_sock_set_state") {
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
