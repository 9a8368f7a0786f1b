//! The libuv uprobes (`sockleak-ebpf/src/libuv.rs`): attached to every binary or library that
//! exports libuv (`node` does, or a distribution's `libuv.so.1`), in whichever process runs
//! it, so a socket libuv opens for a handle gets the stack that made the handle: the program's
//! own code, where the socket's own stack shows only the event loop.
//!
//! Processes are looked at when tracing starts and at every report: a node started later gets
//! the probes too. Each binary is probed once, for every process that maps it.
use std::{collections::HashSet, os::unix::fs::MetadataExt, path::Path};

use anyhow::{Context, Result};
use aya::{
    Ebpf,
    programs::{UProbe, uprobe::UProbeScope},
};

use super::program_mut;
use crate::procfs;

/// The programs and the libuv functions each is attached to. Every one of these functions is
/// in libuv's public API (node exports them for its addons).
const PROBES: &[(&str, &[&str])] = &[
    // The handle is made: its stack is taken.
    (
        "uv_handle_init",
        &[
            "uv_tcp_init",
            "uv_tcp_init_ex",
            "uv_udp_init",
            "uv_udp_init_ex",
        ],
    ),
    // A call that may open the handle's socket begins (handle first or second argument)...
    (
        "uv_opening_first",
        &[
            "uv_tcp_bind",
            "uv_udp_bind",
            "uv_udp_connect",
            "uv_udp_try_send",
        ],
    ),
    ("uv_opening_second", &["uv_tcp_connect", "uv_udp_send"]),
    // ...and returns.
    (
        "uv_opened",
        &[
            "uv_tcp_bind",
            "uv_udp_bind",
            "uv_udp_connect",
            "uv_udp_try_send",
            "uv_tcp_connect",
            "uv_udp_send",
        ],
    ),
];

/// What has been probed and looked at.
#[derive(Default)]
pub struct LibuvProbes {
    loaded: bool,
    /// Files (device, inode) already looked at, probed or not.
    seen: HashSet<(u64, u64)>,
    /// How many of them export libuv and are probed.
    pub probed: usize,
}

impl LibuvProbes {
    /// Loads the programs; they attach to binaries as [`LibuvProbes::probe`] finds them.
    pub fn load(ebpf: &mut Ebpf) -> Result<Self> {
        for (program, _) in PROBES {
            let uprobe: &mut UProbe = program_mut(ebpf, program)?;
            uprobe
                .load()
                .with_context(|| format!("loading the uprobe {program}"))?;
        }
        Ok(Self {
            loaded: true,
            ..Self::default()
        })
    }

    /// Probes the libuv in the executables (and libraries) of these processes not looked at
    /// yet.
    pub fn probe(&mut self, ebpf: &mut Ebpf, pids: impl IntoIterator<Item = u32>) {
        if !self.loaded {
            return;
        }
        for pid in pids {
            let exe = format!("/proc/{pid}/exe");
            if self.first_look(&exe) && self.probe_file(ebpf, &exe) {
                continue;
            }
            // A distribution may link libuv as a shared library; it is looked at once too.
            if let Some(library) = libuv_library_of(pid)
                && self.first_look(&library)
            {
                self.probe_file(ebpf, &library);
            }
        }
    }

    /// Whether `path` (a file some process maps) is looked at for the first time.
    fn first_look(&mut self, path: &str) -> bool {
        std::fs::metadata(path).is_ok_and(|m| self.seen.insert((m.dev(), m.ino())))
    }

    /// Attaches every probe to `path`; false if it does not export libuv.
    fn probe_file(&mut self, ebpf: &mut Ebpf, path: &str) -> bool {
        for (program, functions) in PROBES {
            let attached = program_mut::<UProbe>(ebpf, program).and_then(|uprobe| {
                uprobe
                    .attach(
                        functions.iter().copied(),
                        Path::new(path),
                        UProbeScope::AllProcesses,
                    )
                    .map_err(anyhow::Error::from)
            });
            if let Err(err) = attached {
                // Most binaries have no libuv: the first program's symbols are not there.
                log::debug!("no libuv uprobes on {path}: {err:#}");
                return false;
            }
        }
        self.probed += 1;
        log::info!("libuv uprobes on {path}");
        true
    }
}

/// The libuv shared library process `pid` maps, as a path from sockleak's view of the file
/// system (through the process's root: it may be in a container).
fn libuv_library_of(pid: u32) -> Option<String> {
    let maps = std::fs::read_to_string(format!("/proc/{pid}/maps")).ok()?;
    let path = maps
        .lines()
        .filter_map(|line| line.split_whitespace().nth(5))
        .find(|path| {
            Path::new(path)
                .file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.starts_with("libuv.so"))
        })?;
    Some(format!("/proc/{pid}/root{path}"))
}

/// The processes to look at: every one, or the ones `--pid` names.
pub fn candidates(pids: &[u32]) -> Vec<u32> {
    if pids.is_empty() {
        procfs::pids().collect()
    } else {
        pids.to_vec()
    }
}
