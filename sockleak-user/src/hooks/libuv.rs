//! The libuv uprobes (`sockleak-ebpf/src/libuv.rs`): attached to every binary or library that
//! exports libuv (`node` does, or a distribution's `libuv.so.1`), in whichever process runs
//! it, so a socket libuv opens for a handle gets the stack that made the handle: the program's
//! own code, where the socket's own stack shows only the event loop.
//!
//! Processes are looked at when tracing starts and at every report: a node started later gets
//! the probes too. Each binary is probed once, for every process that maps it.
//!
//! The same scans read each node binary's V8 layout (once per binary) and tell the kernel walk
//! and the symbolizer which process runs which (see [`crate::v8`]).
use std::{
    collections::{HashMap, HashSet},
    os::unix::fs::MetadataExt,
    path::Path,
    sync::Arc,
};

use anyhow::{Context, Result};
use aya::{
    Ebpf,
    maps::{Array, HashMap as BpfHashMap, MapData},
    programs::{UProbe, uprobe::UProbeScope},
};
use sockleak_common::{ANY_V8_PROCESS, V8Layout};

use super::program_mut;
use crate::{
    procfs,
    v8::{LayoutOf, V8Processes, layout::Layout},
};

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

/// A file by device and inode.
type FileId = (u64, u64);

/// What has been probed and looked at.
#[derive(Default)]
pub struct LibuvProbes {
    loaded: bool,
    /// Files already looked at, probed or not.
    seen: HashSet<FileId>,
    /// How many of them export libuv and are probed.
    pub probed: usize,
    /// The V8 layout of each executable that exports libuv (node), read once.
    layouts: HashMap<FileId, LayoutOf>,
    /// The kernel's `V8_LAYOUTS`, and what it holds by pid.
    kernel_layouts: Option<BpfHashMap<MapData, u32, V8Layout>>,
    /// The kernel's `LIBUV_PROBED`: set once some binary is probed, so that `sock_create`
    /// looks for a handle's stack only from then on.
    probed_flag: Option<Array<MapData, u32>>,
    registered: HashMap<u32, V8Layout>,
    /// The symbolizer's view of the same.
    pub processes: V8Processes,
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
        let kernel_layouts = ebpf
            .take_map("V8_LAYOUTS")
            .context("V8_LAYOUTS map missing")?
            .try_into()?;
        let probed_flag = ebpf
            .take_map("LIBUV_PROBED")
            .context("LIBUV_PROBED map missing")?
            .try_into()?;
        Ok(Self {
            loaded: true,
            kernel_layouts: Some(kernel_layouts),
            probed_flag: Some(probed_flag),
            ..Self::default()
        })
    }

    /// Probes the libuv in the executables (and libraries) of these processes not looked at
    /// yet, and tells the kernel and the symbolizer the V8 layout of each that runs node.
    /// `pids` is every process there is, or every one watched.
    pub fn probe(&mut self, ebpf: &mut Ebpf, pids: impl IntoIterator<Item = u32>) {
        if !self.loaded {
            return;
        }
        let mut running = HashSet::new();
        for pid in pids {
            let exe = format!("/proc/{pid}/exe");
            let Some(file) = file_id(&exe) else { continue };
            running.insert(pid);
            if self.seen.insert(file) {
                if self.probe_file(ebpf, &exe) {
                    self.layouts.insert(file, read_layout(&exe));
                } else if let Some(library) = libuv_library_of(pid)
                    && file_id(&library).is_some_and(|lib| self.seen.insert(lib))
                    && self.probe_file(ebpf, &library)
                {
                    // A distribution may link libuv as a shared library, which is looked at
                    // once too; V8 is still in the executable.
                    self.layouts.insert(file, read_layout(&exe));
                }
            }
            if let Some(layout) = self.layouts.get(&file) {
                self.register(pid, layout.clone());
            }
        }
        self.forget_exited(&running);
    }

    /// Tells the kernel walk and the symbolizer process `pid`'s layout.
    fn register(&mut self, pid: u32, layout: LayoutOf) {
        if let (Ok(layout), Some(map)) = (&*layout, &mut self.kernel_layouts)
            && self.registered.get(&pid) != Some(&layout.kernel)
        {
            match map.insert(&pid, &layout.kernel, 0) {
                Ok(()) => {
                    self.registered.insert(pid, layout.kernel);
                }
                Err(err) => log::debug!("V8 layout of pid {pid} not registered: {err}"),
            }
        }
        self.processes.set(pid, layout);
    }

    /// Forgets processes not running any more, and keeps a layout for processes not yet
    /// looked at (a node started since this scan).
    fn forget_exited(&mut self, running: &HashSet<u32>) {
        let Some(map) = &mut self.kernel_layouts else {
            return;
        };
        let gone: Vec<u32> = self
            .registered
            .keys()
            .filter(|pid| !running.contains(pid))
            .copied()
            .collect();
        for pid in gone {
            let _ = map.remove(&pid);
            self.registered.remove(&pid);
        }
        self.processes.retain(|pid| running.contains(&pid));
        // Only while every node binary seen has one layout, all understood: a process of
        // another would be walked with a layout not its own.
        let kernels = self
            .layouts
            .values()
            .map(|l| l.as_ref().as_ref().ok().map(|l| l.kernel));
        let _ = match shared_layout(kernels) {
            Some(layout) => map.insert(&ANY_V8_PROCESS, &layout, 0),
            None => map.remove(&ANY_V8_PROCESS),
        };
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
        if let Some(flag) = &mut self.probed_flag
            && let Err(err) = flag.set(0, &1, 0)
        {
            log::warn!("telling the kernel side libuv is probed: {err}");
        }
        log::info!("libuv uprobes on {path}");
        true
    }
}

/// The one layout of every binary, if they have one and each is understood. Where their code
/// lies differs from binary to binary: the shared layout knows it only if that is the same too.
fn shared_layout(mut layouts: impl Iterator<Item = Option<V8Layout>>) -> Option<V8Layout> {
    let mut shared = layouts.next()??;
    for layout in layouts {
        let layout = layout?;
        if layout.native_api_call != shared.native_api_call {
            shared.native_api_call = [0; 2];
        }
        let elsewhere = V8Layout {
            native_api_call: shared.native_api_call,
            ..layout
        };
        if elsewhere != shared {
            return None;
        }
    }
    Some(shared)
}

fn file_id(path: &str) -> Option<FileId> {
    std::fs::metadata(path).ok().map(|m| (m.dev(), m.ino()))
}

/// The V8 layout of the binary at `path` (a process's `exe` link), or why there is none,
/// naming the binary (logged once per binary).
fn read_layout(path: &str) -> LayoutOf {
    let shown =
        std::fs::read_link(path).map_or_else(|_| path.to_owned(), |p| p.display().to_string());
    let layout = Layout::of_binary(Path::new(path))
        .map_err(|err| format!("the V8 layout of {shown} is not understood: {err:#}"));
    match &layout {
        Ok(l) => log::info!(
            "V8 {}.{} layout read from {shown}",
            l.version.0,
            l.version.1
        ),
        Err(err) => log::info!("{err}"),
    }
    Arc::new(layout)
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

#[cfg(test)]
mod tests {
    use super::*;

    fn layout(map: u16, code: u64) -> Option<V8Layout> {
        Some(V8Layout {
            object_map: map,
            native_api_call: [code, code + 0x227],
            ..V8Layout::default()
        })
    }

    #[test]
    fn binaries_share_a_layout_and_their_code_only_where_both_are_the_same() {
        let same = [layout(0, 0x1000), layout(0, 0x1000)];
        assert_eq!(shared_layout(same.into_iter()), layout(0, 0x1000));
        let moved = shared_layout([layout(0, 0x1000), layout(0, 0x2000)].into_iter());
        assert_eq!(moved.map(|l| l.native_api_call), Some([0, 0]));
        assert_eq!(
            shared_layout([layout(0, 0x1000), layout(8, 0x1000)].into_iter()),
            None
        );
        assert_eq!(shared_layout([layout(0, 0x1000), None].into_iter()), None);
        assert_eq!(shared_layout(std::iter::empty()), None);
    }
}
