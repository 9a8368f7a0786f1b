//! The libuv uprobes (`sockleak-ebpf/src/libuv.rs`): attached to every binary or library that
//! exports libuv (`node` does, or a distribution's `libuv.so.1`), in whichever process runs
//! it, so a socket libuv opens for a handle gets the stack that made the handle: the program's
//! own code, where the socket's own stack shows only the event loop.
//!
//! Processes are looked at when tracing starts, at every report, and as each starts a new
//! program (`sched/sched_process_exec`): a node started later is ready as it starts if its
//! binary was probed before, about a tenth of a second later if not (its symbol tables are
//! read: [`crate::elf_symbols`]), while node itself starts. Each binary is probed once, for
//! every process that maps it. A distribution's `libuv.so` is mapped by the loader after
//! exec, but uprobes belong to the file, not to a mapping: the libuv.so in the machine's
//! library directories is probed as tracing starts, and the one a program started later will
//! be given (found as the loader would, in its own root) as it starts; the process is looked
//! at once more a moment later, when the loader has mapped it.
//!
//! The same scans read each node binary's V8 layout (once per binary) and tell the kernel walk
//! and the symbolizer which process runs which (see [`crate::v8`]).
use std::{
    collections::{HashMap, HashSet},
    ops::ControlFlow,
    os::unix::fs::MetadataExt,
    path::Path,
    sync::Arc,
    time::{Duration, Instant},
};

use anyhow::{Context, Result};
use aya::{
    Ebpf,
    maps::{HashMap as BpfHashMap, MapData},
    programs::{UProbe, uprobe::UProbeScope},
};
use object::{Endianness, ReadCache, read::elf::ElfFile64};
use sockleak_common::{ANY_V8_PROCESS, V8Layout};

use super::program_mut;
use crate::{
    elf_symbols::{self, Table},
    procfs,
    v8::{
        LayoutOf, V8Processes,
        layout::{Layout, NoV8Symbols},
    },
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

/// Test hook: readying a process at its exec first waits this many milliseconds, as a slow
/// machine's would take, so that a test can open sockets before it is done.
pub const TEST_SLOW_READINESS: &str = "SOCKLEAK_TEST_SLOW_READINESS_MS";

/// A file by device and inode.
type FileId = (u64, u64);

/// How long after its exec a process without libuv is looked at again: the loader maps a
/// program's shared libraries within milliseconds, before its own code runs.
const LIBRARIES_MAPPED_AFTER: Duration = Duration::from_millis(20);
/// Processes started at once waiting for that second look, at most (a burst of execs beyond
/// it gets its probes at the next report).
const SECOND_LOOKS: usize = 1024;

/// What has been probed and looked at.
#[derive(Default)]
pub struct LibuvProbes {
    loaded: bool,
    /// Files already looked at and settled, probed or not.
    seen: HashSet<FileId>,
    /// Where each program looked at has its libuv, from its ELF file.
    libuv_in: HashMap<FileId, LibuvIn>,
    /// Programs found without libuv as a process started them, not yet looked at by a
    /// report (see [`LibuvProbes::look_at`]).
    none_at_exec: HashSet<FileId>,
    /// Those that export libuv, probed.
    libuv_files: HashSet<FileId>,
    /// Processes that started a program without libuv in it, to be looked at once more once
    /// the loader mapped its libraries.
    second_looks: Vec<(u32, Instant)>,
    /// How many of them export libuv and are probed.
    pub probed: usize,
    /// The V8 layout of each executable that exports libuv (node), read once; `None` for one
    /// that is not V8 at all (a C program).
    layouts: HashMap<FileId, Option<LayoutOf>>,
    /// The kernel's `V8_LAYOUTS`, and what it holds by pid.
    kernel_layouts: Option<BpfHashMap<MapData, u32, V8Layout>>,
    /// Whether the machine's own libuv.so files were probed.
    installed_probed: bool,
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
        Ok(Self {
            loaded: true,
            kernel_layouts: Some(kernel_layouts),
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
        if !self.installed_probed {
            self.installed_probed = true;
            self.probe_installed(ebpf);
        }
        let mut running = HashSet::new();
        for pid in pids {
            if self.look_at(ebpf, pid, Moment::Report) == Some(Runs::Libuv) {
                running.insert(pid);
            }
        }
        self.forget_exited(&running);
    }

    /// Process `pid` started a new program (its exec event): probed at once. One that asks
    /// for a libuv shared library the loader has not mapped yet is looked at again.
    pub fn program_started(&mut self, ebpf: &mut Ebpf, pid: u32) {
        if !self.loaded {
            return;
        }
        if self.look_at(ebpf, pid, Moment::Exec) == Some(Runs::NotKnownYet)
            && self.second_looks.len() < SECOND_LOOKS
        {
            self.second_looks.push((pid, Instant::now()));
        }
    }

    /// Probes the libuv.so files in the machine's library directories: a program started
    /// later that links one has its probes before its first instruction.
    fn probe_installed(&mut self, ebpf: &mut Ebpf) {
        for dir in LIBRARY_DIRS {
            let Ok(entries) = std::fs::read_dir(dir) else {
                continue;
            };
            for entry in entries.flatten() {
                let name = entry.file_name();
                if !name.as_encoded_bytes().starts_with(b"libuv.so") {
                    continue;
                }
                let path = entry.path().display().to_string();
                if let Some(file) = file_id(&path)
                    && self.seen.insert(file)
                {
                    self.probe_file(ebpf, &path, file);
                }
            }
        }
    }

    /// The second look at processes started a moment ago (see [`Self::program_started`]).
    pub fn look_again(&mut self, ebpf: &mut Ebpf) {
        let now = Instant::now();
        let due = |(_, at): &(u32, Instant)| now.duration_since(*at) >= LIBRARIES_MAPPED_AFTER;
        if !self.second_looks.iter().any(due) {
            return;
        }
        let (now_due, later): (Vec<_>, Vec<_>) = self.second_looks.drain(..).partition(due);
        self.second_looks = later;
        for (pid, _) in now_due {
            // Still not known: the next report's look tries again.
            self.look_at(ebpf, pid, Moment::Exec);
        }
    }

    /// Probes the libuv process `pid` runs, if not done yet, and registers its V8 layout:
    /// whether it runs libuv, `None` when it is gone. A program is settled once (`seen`), as
    /// soon as that is known; one found without libuv as it started is looked at once more
    /// by a report, in case it loads a libuv.so itself (`dlopen`).
    fn look_at(&mut self, ebpf: &mut Ebpf, pid: u32, moment: Moment) -> Option<Runs> {
        let exe = format!("/proc/{pid}/exe");
        let file = file_id(&exe)?;
        let settled = self.seen.contains(&file)
            || (moment == Moment::Exec && self.none_at_exec.contains(&file));
        if !settled {
            let began = Instant::now();
            let runs = self.ready(ebpf, pid, &exe, file, moment);
            log::debug!("pid {pid}: {runs:?}, found in {:?}", began.elapsed());
            match runs {
                Runs::NotKnownYet => return Some(Runs::NotKnownYet),
                Runs::NoLibuv if moment == Moment::Exec => {
                    self.none_at_exec.insert(file);
                }
                Runs::Libuv | Runs::NoLibuv => {
                    self.seen.insert(file);
                    self.none_at_exec.remove(&file);
                }
            }
        }
        let Some(layout) = self.layouts.get(&file).cloned() else {
            return Some(Runs::NoLibuv);
        };
        if let Some(layout) = layout {
            self.register(pid, layout);
        }
        Some(Runs::Libuv)
    }

    /// Probes the libuv of the program `exe` (the file `file`) that process `pid` runs: in the
    /// executable, or in the shared library it maps (a distribution may link libuv so; V8 is
    /// still in the executable), then reads and registers its V8 layout. Whether it runs
    /// libuv.
    ///
    /// Probes first: on first sight of a node binary each step reads its symbol tables (tens
    /// of milliseconds), and a handle made between the two keeps native frames (`uv_tcp_init`
    /// and its callers), where one made before the probes keeps only the event loop's.
    fn ready(
        &mut self,
        ebpf: &mut Ebpf,
        pid: u32,
        exe: &str,
        file: FileId,
        moment: Moment,
    ) -> Runs {
        if moment == Moment::Exec
            && let Some(ms) = std::env::var(TEST_SLOW_READINESS)
                .ok()
                .and_then(|ms| ms.parse().ok())
        {
            std::thread::sleep(Duration::from_millis(ms));
        }
        let wanted = *self.libuv_in.entry(file).or_insert_with(|| libuv_in(exe));
        let library = match wanted {
            LibuvIn::Program => None,
            // As it starts, a program that does not ask for libuv has none: no process read.
            LibuvIn::Nowhere if moment == Moment::Exec => return Runs::NoLibuv,
            LibuvIn::Nowhere | LibuvIn::SharedLibrary { .. } => {
                // Mapped by the loader after exec (not there yet, perhaps), or loaded by the
                // program itself.
                let shared = matches!(wanted, LibuvIn::SharedLibrary { .. });
                let Some(library) = libuv_library_of(pid) else {
                    if shared
                        && let Some(library) = library_to_be_mapped(pid, exe)
                        && let Some(lib) = file_id(&library)
                        && self.seen.insert(lib)
                    {
                        // Probed before the loader maps it: the probes are the file's.
                        self.probe_file(ebpf, &library, lib);
                    }
                    return if shared {
                        Runs::NotKnownYet
                    } else {
                        Runs::NoLibuv
                    };
                };
                let Some(lib) = file_id(&library) else {
                    return Runs::NotKnownYet;
                };
                Some((library, lib))
            }
        };
        let probed = match library {
            None => self.probe_file(ebpf, exe, file),
            Some((library, lib)) => {
                if self.seen.insert(lib) {
                    self.probe_file(ebpf, &library, lib);
                }
                self.libuv_files.contains(&lib)
            }
        };
        if !probed {
            return Runs::NoLibuv;
        }
        // A program that asks for a libnode.so has V8 there, which is not read (yet): its
        // groups say why they have no JavaScript names.
        let layout = read_layout(exe, wanted == LibuvIn::SharedLibrary { node: true });
        self.layouts.insert(file, layout.clone());
        if let Some(layout) = layout {
            self.register(pid, layout);
        }
        Runs::Libuv
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
            .flatten()
            .map(|l| l.as_ref().as_ref().ok().map(|l| l.kernel));
        let _ = match shared_layout(kernels) {
            Some(layout) => map.insert(&ANY_V8_PROCESS, &layout, 0),
            None => map.remove(&ANY_V8_PROCESS),
        };
    }

    /// Attaches every probe to `path`, the file `file`; false if it does not export libuv.
    fn probe_file(&mut self, ebpf: &mut Ebpf, path: &str, file: FileId) -> bool {
        let offsets = probe_offsets(path);
        for (program, functions) in PROBES {
            let at: Option<Vec<u64>> = functions.iter().map(|f| offsets.get(f).copied()).collect();
            let attached = program_mut::<UProbe>(ebpf, program).and_then(|uprobe| {
                let (path, scope) = (Path::new(path), UProbeScope::AllProcesses);
                match at {
                    Some(at) => uprobe.attach(at, path, scope),
                    // Not all where one read found them (a debug link's file has them, say):
                    // aya's own search, a read of the file per program.
                    None => uprobe.attach(functions.iter().copied(), path, scope),
                }
                .map_err(anyhow::Error::from)
            });
            if let Err(err) = attached {
                // Most binaries have no libuv: the first program's symbols are not there.
                log::debug!("no libuv uprobes on {path}: {err:#}");
                return false;
            }
        }
        self.probed += 1;
        self.libuv_files.insert(file);
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

/// When a process is looked at: as it starts a program, or at a report.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Moment {
    Exec,
    Report,
}

/// What a look at a process found of libuv.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Runs {
    Libuv,
    NoLibuv,
    /// Its program asks for a libuv shared library the loader has not mapped yet.
    NotKnownYet,
}

/// Where a program's libuv is, from its ELF file alone (read once per file).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum LibuvIn {
    /// Its own symbols define it (node, statically linked).
    Program,
    /// It asks the loader for `libuv.so` or `libnode.so` (`DT_NEEDED`; a distribution's node,
    /// whose V8 is in that libnode).
    SharedLibrary {
        node: bool,
    },
    Nowhere,
}

/// Where the program at `path` has its libuv: asked of every program a process starts, most
/// of which have none; a file that does not read as ELF has none either.
fn libuv_in(path: &str) -> LibuvIn {
    let Ok(file) = std::fs::File::open(path) else {
        return LibuvIn::Nowhere;
    };
    let cache = ReadCache::new(file);
    let Ok(elf) = ElfFile64::<Endianness, _>::parse(&cache) else {
        return LibuvIn::Nowhere;
    };
    // Exported first (node's are): the full symbol table of a large binary takes longer.
    let defines = |table| {
        elf_symbols::each_defined(&elf, table, |s| match s.name {
            "uv_tcp_init" => ControlFlow::Break(()),
            _ => ControlFlow::Continue(()),
        })
        .is_break()
    };
    if defines(Table::Dynamic) || defines(Table::Full) {
        return LibuvIn::Program;
    }
    let Some(requests) = elf_symbols::loader_requests(&elf) else {
        return LibuvIn::Nowhere;
    };
    let needs = |library: &[u8]| {
        requests
            .needed
            .iter()
            .flatten()
            .any(|n| n.starts_with(library))
    };
    match (needs(b"libuv.so"), needs(b"libnode.so")) {
        (_, true) => LibuvIn::SharedLibrary { node: true },
        (true, false) => LibuvIn::SharedLibrary { node: false },
        (false, false) => LibuvIn::Nowhere,
    }
}

/// Where the loader looks for a library no search path names, for this machine's
/// architecture and the usual others (the loader's cache lists these too).
const LIBRARY_DIRS: &[&str] = &[
    "/lib/x86_64-linux-gnu",
    "/usr/lib/x86_64-linux-gnu",
    "/lib64",
    "/usr/lib64",
    "/lib",
    "/usr/lib",
    "/usr/local/lib",
];

/// The libuv.so the loader will map for process `pid`, which just started the program `exe`
/// that asks for one (or for a libnode.so, which asks for `libuv.so.1`): found as the loader
/// finds it (`DT_RPATH`, `LD_LIBRARY_PATH`, `DT_RUNPATH`, the usual directories), in the
/// process's own root, as a path from sockleak's view.
fn library_to_be_mapped(pid: u32, exe: &str) -> Option<String> {
    let file = std::fs::File::open(exe).ok()?;
    let cache = ReadCache::new(file);
    let elf = ElfFile64::<Endianness, _>::parse(&cache).ok()?;
    let requests = elf_symbols::loader_requests(&elf)?;
    let name = requests
        .needed
        .iter()
        .flatten()
        .find(|n| n.starts_with(b"libuv.so"))
        .map_or_else(|| b"libuv.so.1".to_vec(), Clone::clone);
    // Where the process found its program, for `$ORIGIN`.
    let program = std::fs::read_link(format!("/proc/{pid}/exe")).ok()?;
    let origin = program.parent()?.as_os_str().as_encoded_bytes().to_vec();
    let environment = std::fs::read(format!("/proc/{pid}/environ")).unwrap_or_default();
    let library_path = environment
        .split(|&b| b == 0)
        .find_map(|var| var.strip_prefix(b"LD_LIBRARY_PATH="));
    let root = format!("/proc/{pid}/root");
    search_order(&requests, library_path, &origin)
        .into_iter()
        .map(|dir| {
            let mut path = root.as_bytes().to_vec();
            path.extend_from_slice(&dir);
            path.push(b'/');
            path.extend_from_slice(&name);
            path
        })
        .filter_map(|path| String::from_utf8(path).ok())
        .find(|path| Path::new(path).is_file())
}

/// The directories the loader searches, in its order, each absolute (as the process sees its
/// file system): relative ones (searched from the process's working directory) are left out.
fn search_order(
    requests: &elf_symbols::LoaderRequests,
    library_path: Option<&[u8]>,
    origin: &[u8],
) -> Vec<Vec<u8>> {
    let split = |paths: &[u8]| -> Vec<Vec<u8>> {
        paths
            .split(|&b| b == b':')
            .map(|dir| expand_origin(dir, origin))
            .filter(|dir| dir.starts_with(b"/"))
            .collect()
    };
    let mut dirs = Vec::new();
    if requests.runpath.is_none()
        && let Some(rpath) = &requests.rpath
    {
        dirs.extend(split(rpath));
    }
    if let Some(paths) = library_path {
        dirs.extend(split(paths));
    }
    if let Some(runpath) = &requests.runpath {
        dirs.extend(split(runpath));
    }
    dirs.extend(LIBRARY_DIRS.iter().map(|d| d.as_bytes().to_vec()));
    dirs
}

/// `dir` with `$ORIGIN` (or `${ORIGIN}`) replaced by the program's directory.
fn expand_origin(dir: &[u8], origin: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(dir.len());
    let mut rest = dir;
    while !rest.is_empty() {
        if let Some(after) = rest
            .strip_prefix(b"${ORIGIN}")
            .or_else(|| rest.strip_prefix(b"$ORIGIN"))
        {
            out.extend_from_slice(origin);
            rest = after;
        } else {
            out.push(rest[0]);
            rest = &rest[1..];
        }
    }
    out
}

/// Where in the file at `path` each function the probes want starts, as far as its symbol
/// tables say, read once for all of them.
fn probe_offsets(path: &str) -> HashMap<&'static str, u64> {
    let mut found = HashMap::new();
    let Ok(file) = std::fs::File::open(path) else {
        return found;
    };
    let cache = ReadCache::new(file);
    let Ok(elf) = ElfFile64::<Endianness, _>::parse(&cache) else {
        return found;
    };
    let wanted: HashSet<&'static str> =
        PROBES.iter().flat_map(|(_, f)| f.iter().copied()).collect();
    for table in [Table::Dynamic, Table::Full] {
        if found.len() == wanted.len() {
            break;
        }
        let _ = elf_symbols::each_defined(&elf, table, |symbol| {
            if let Some(&name) = wanted.get(symbol.name)
                && let Some(at) = elf_symbols::file_offset(&elf, &symbol)
            {
                found.entry(name).or_insert(at);
            }
            match found.len() == wanted.len() {
                true => ControlFlow::Break(()),
                false => ControlFlow::Continue(()),
            }
        });
    }
    found
}

fn file_id(path: &str) -> Option<FileId> {
    std::fs::metadata(path).ok().map(|m| (m.dev(), m.ino()))
}

/// The V8 layout of the binary at `path` (a process's `exe` link), or why there is none,
/// naming the binary (logged once per binary); `None` for a binary with no V8 at all, unless
/// it is `expected` to have one.
fn read_layout(path: &str, expected: bool) -> Option<LayoutOf> {
    let shown =
        std::fs::read_link(path).map_or_else(|_| path.to_owned(), |p| p.display().to_string());
    let layout = match Layout::of_binary(Path::new(path)) {
        Err(err) if !expected && err.downcast_ref::<NoV8Symbols>().is_some() => {
            log::info!("{shown} runs libuv without V8");
            return None;
        }
        layout => {
            layout.map_err(|err| format!("the V8 layout of {shown} is not understood: {err:#}"))
        }
    };
    match &layout {
        Ok(l) => log::info!(
            "V8 {}.{} layout read from {shown}",
            l.version.0,
            l.version.1
        ),
        Err(err) => log::info!("{err}"),
    }
    Some(Arc::new(layout))
}

/// The libuv shared library process `pid` maps, as a path from sockleak's view of the file
/// system (through the process's root: it may be in a container).
fn libuv_library_of(pid: u32) -> Option<String> {
    let maps = procfs::maps_of(pid)?;
    let path = procfs::parse_maps(&maps)
        .filter_map(|m| m.path)
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
    fn a_program_without_libuv_or_not_elf_has_it_nowhere() {
        assert_eq!(libuv_in("/proc/self/exe"), LibuvIn::Nowhere);
        let text = std::env::temp_dir().join(format!("sockleak-not-elf-{}", std::process::id()));
        std::fs::write(&text, "#!/bin/sh\n").unwrap();
        assert_eq!(libuv_in(text.to_str().unwrap()), LibuvIn::Nowhere);
        let _ = std::fs::remove_file(&text);
        assert_eq!(libuv_in("/nonexistent/node"), LibuvIn::Nowhere);
    }

    #[test]
    fn libraries_are_looked_for_in_the_loaders_order() {
        let requests = |rpath: Option<&[u8]>, runpath: Option<&[u8]>| elf_symbols::LoaderRequests {
            needed: vec![Some(b"libuv.so.1".to_vec())],
            rpath: rpath.map(<[u8]>::to_vec),
            runpath: runpath.map(<[u8]>::to_vec),
        };
        let first = |dirs: Vec<Vec<u8>>| {
            dirs.into_iter()
                .take(3)
                .map(|d| String::from_utf8(d).unwrap())
                .collect::<Vec<_>>()
        };
        // DT_RPATH before LD_LIBRARY_PATH, `$ORIGIN` the program's directory.
        assert_eq!(
            first(search_order(
                &requests(Some(b"$ORIGIN/../lib:relative"), None),
                Some(b"/env/lib"),
                b"/opt/app/bin",
            )),
            ["/opt/app/bin/../lib", "/env/lib", "/lib/x86_64-linux-gnu"]
        );
        // DT_RUNPATH after it, and DT_RPATH ignored beside it.
        assert_eq!(
            first(search_order(
                &requests(Some(b"/ignored"), Some(b"${ORIGIN}/lib")),
                Some(b"/env/lib"),
                b"/app",
            )),
            ["/env/lib", "/app/lib", "/lib/x86_64-linux-gnu"]
        );
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
