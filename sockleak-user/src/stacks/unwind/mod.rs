//! Unwinds in userspace a user stack the kernel copied where a socket was created.
//!
//! The kernel's own stack walk follows frame pointers, which most distributions' binaries (and
//! Rust's std) do not keep: their stacks stop or skip frames at the first frameless function.
//! Every object still carries DWARF CFI (`.eh_frame`, for C++ exceptions and Rust panics), but
//! applying it in BPF needs each object's rules preprocessed into maps (about 400k rows for
//! node alone). So for a sampled socket the kernel copies the registers and the top of the
//! stack, and the CFI is applied here with `framehop`, `.debug_frame` standing in for objects
//! without `.eh_frame`. Objects are read through each process's own view of its files and
//! shared between processes.
//!
//! Code without unwind info (JIT code in anonymous memory, an object without CFI) is walked by
//! its frame pointer (framehop's fallback), so a stack mixing JIT and native frames stays whole
//! as long as the JIT keeps frame pointers (V8 does; the JVM with `-XX:+PreserveFramePointer`).
mod frame_pointers;
mod objects;
#[cfg(test)]
mod tests;

use std::{collections::HashMap, sync::Arc};

use framehop::{
    Error, ExplicitModuleSectionInfo, FrameAddress, Module, Unwinder,
    x86_64::{CacheX86_64, UnwindRegsX86_64, UnwinderX86_64},
};

use self::objects::{Bytes, Objects};
pub use self::{frame_pointers::keeps_frame_pointers, objects::MappedObject};
use crate::procfs;

/// The kernel's STACK_DEPTH: a copied stack yields no more frames than a walked one.
pub const MAX_FRAMES: usize = 64;
/// Processes whose modules are kept. Exited ones are dropped by [`Unwinders::forget`]; past
/// this the least recently unwound goes, so that a missed exit costs memory only for a while.
const MAX_PROCESSES: usize = 1024;
/// Executable file mappings opened per process: each holds an fd while the process is known,
/// and real processes map a few dozen (a process mapping thousands must not exhaust the
/// tracer's fds; its further objects' frames are walked by frame pointer).
const MAX_PROCESS_OBJECTS: usize = 256;
/// An unwind that reads above a copy of unknown stack mapping is taken to have run past the
/// copy within this distance, and to have read a wild pointer beyond it.
const STACK_GUESS: u64 = 8 << 20;

/// What the kernel copied where a socket was created.
#[derive(Debug, Clone, Copy)]
pub struct Copied<'a> {
    pub pid: u32,
    pub ip: u64,
    pub sp: u64,
    pub bp: u64,
    /// The bytes at `sp` and above.
    pub stack: &'a [u8],
}

/// A stack unwound from a copy, innermost first.
#[derive(Debug, Clone)]
pub struct Unwound {
    pub frames: Vec<UnwoundFrame>,
    /// Why the unwind ended before the outermost frame, if it did; None when it reached it (a
    /// function whose CFI leaves the return address undefined, such as `_start` and `clone3`,
    /// or a return address of 0).
    pub truncated: Option<Truncation>,
}

#[derive(Debug, Clone)]
pub struct UnwoundFrame {
    /// As the process saw it: the ip for the first frame, then return addresses (not adjusted
    /// by -1).
    pub address: u64,
    /// The mapped file this address lies in, if any (None for anonymous memory: JIT code).
    pub object: Option<Arc<MappedObject>>,
    /// The address's offset in that file (address - mapping start + mapping file offset); 0
    /// without an object.
    pub file_offset: u64,
}

/// Why an unwind stopped short of the outermost frame.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Truncation {
    /// The process exited before its maps were read (or left none: a zombie).
    ProcessGone,
    /// The stack goes on above the bytes the kernel copied.
    PastCopy,
    /// No unwind info for the code at `address` (JIT code, an object without CFI) and its frame
    /// pointer led nowhere.
    NoUnwindInfo { address: u64 },
    /// The unwind info for `address` gave no possible caller (the stack pointer did not move
    /// up, a read outside the stack).
    BadRule { address: u64 },
    /// A return address in no executable mapping: what was read was not one.
    NotCode { address: u64 },
    /// [`MAX_FRAMES`] frames were unwound and there are more.
    DepthLimit,
}

impl std::fmt::Display for Truncation {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Truncation::ProcessGone => write!(f, "the process exited before its stack was read"),
            Truncation::PastCopy => write!(f, "the stack goes on past the bytes copied"),
            Truncation::NoUnwindInfo { address } => write!(
                f,
                "no unwind info at {address:#x} and its frame pointer led nowhere"
            ),
            Truncation::BadRule { address } => {
                write!(f, "the unwind info at {address:#x} gave no possible caller")
            }
            Truncation::NotCode { address } => {
                write!(f, "return address {address:#x} is in no executable mapping")
            }
            Truncation::DepthLimit => write!(f, "deeper than {MAX_FRAMES} frames"),
        }
    }
}

/// Per-process unwinders over the objects the processes map; one per tracer.
pub struct Unwinders {
    processes: HashMap<u32, Process>,
    objects: Objects,
    /// framehop's rule cache, shared by every process: its entries are keyed by each
    /// unwinder's module generation, a u16 counted over all unwinders. It is replaced before
    /// that count wraps ([`MODULES_PER_CACHE`]), or a rule of another process's module could
    /// be taken for the same address.
    cache: CacheX86_64,
    /// Modules added since the cache was made.
    modules_added: usize,
    clock: u64,
}

/// Modules added to unwinders (over all processes) before the rule cache is made anew: below
/// framehop's u16 module generation, which would otherwise wrap.
const MODULES_PER_CACHE: usize = 60_000;

impl Default for Unwinders {
    fn default() -> Self {
        Self::new()
    }
}

impl Unwinders {
    pub fn new() -> Self {
        Unwinders {
            processes: HashMap::new(),
            objects: Objects::default(),
            cache: CacheX86_64::new(),
            modules_added: 0,
            clock: 0,
        }
    }

    /// Counts modules about to be added, and makes the rule cache anew before framehop's
    /// generation count could wrap.
    fn adding_modules(&mut self, count: usize) {
        self.modules_added += count;
        if self.modules_added >= MODULES_PER_CACHE {
            self.cache = CacheX86_64::new();
            self.modules_added = count;
        }
    }

    /// The frames of `copy`. The process's modules are read at its first unwind and again,
    /// once per unwind, when the stack leads to memory they do not know (a library loaded
    /// since, a thread started since).
    pub fn unwind(&mut self, copy: &Copied) -> Unwound {
        self.clock += 1;
        let mut fresh = false;
        if !self.processes.contains_key(&copy.pid) {
            let Some(process) = Process::load(copy.pid, &mut self.objects, None) else {
                return Unwound::gone(copy.ip);
            };
            self.adding_modules(process.modules);
            self.insert(copy.pid, process);
            fresh = true;
        }
        loop {
            let Some(process) = self.processes.get_mut(&copy.pid) else {
                return Unwound::gone(copy.ip);
            };
            process.used = self.clock;
            let walk = process.walk(copy, &mut self.cache);
            if walk.stale && !fresh {
                fresh = true;
                if let Some(reloaded) = Process::load(copy.pid, &mut self.objects, Some(process)) {
                    let modules = reloaded.modules;
                    *process = reloaded;
                    self.adding_modules(modules);
                    continue;
                }
            }
            return process.unwound(walk);
        }
    }

    /// A process exited or started a new program: drops its modules, and the objects no
    /// other process maps.
    pub fn forget(&mut self, pid: u32) {
        if self.processes.remove(&pid).is_some() {
            self.objects.purge_unused();
        }
    }

    fn insert(&mut self, pid: u32, process: Process) {
        if self.processes.len() >= MAX_PROCESSES
            && let Some(oldest) = self
                .processes
                .iter()
                .min_by_key(|(_, p)| p.used)
                .map(|(pid, _)| *pid)
        {
            self.forget(oldest);
        }
        self.processes.insert(pid, process);
    }
}

impl Unwound {
    fn gone(ip: u64) -> Self {
        Unwound {
            frames: vec![UnwoundFrame {
                address: ip,
                object: None,
                file_offset: 0,
            }],
            truncated: Some(Truncation::ProcessGone),
        }
    }
}

/// One line of a process's maps, with the object behind it when it is executable code.
struct Region {
    start: u64,
    end: u64,
    offset: u64,
    inode: u64,
    exec: bool,
    object: Option<Arc<MappedObject>>,
    /// framehop has a module with CFI for this range.
    unwind_info: bool,
}

/// A process as its maps last showed it.
struct Process {
    /// Sorted by start, as the kernel lists them.
    regions: Vec<Region>,
    unwinder: UnwinderX86_64<Bytes>,
    /// Modules added to `unwinder`.
    modules: usize,
    used: u64,
}

/// One pass over a copy with the modules known.
struct Walk {
    addresses: Vec<u64>,
    truncated: Option<Truncation>,
    /// The stack led to memory the maps read did not show.
    stale: bool,
}

impl Process {
    /// The process's modules from its maps now; None when they cannot be read or are empty
    /// (it exited, or is a zombie). Objects `previous` had at the same place are kept without
    /// reopening.
    fn load(pid: u32, objects: &mut Objects, previous: Option<&Process>) -> Option<Process> {
        let maps = procfs::maps_of(pid)?;
        let mut regions = Vec::new();
        let mut unwinder = UnwinderX86_64::new();
        let mut modules = 0;
        let mut opened = 0;
        for line in maps.lines() {
            let (Some(mapping), Some((offset, inode, path))) =
                (procfs::parse_maps(line).next(), offset_inode_path(line))
            else {
                continue;
            };
            let mut region = Region {
                start: mapping.start,
                end: mapping.end,
                offset,
                inode,
                exec: mapping.perms.as_bytes().get(2) == Some(&b'x'),
                object: None,
                unwind_info: false,
            };
            if region.exec && inode != 0 && opened < MAX_PROCESS_OBJECTS {
                opened += 1;
                region.object = previous
                    .and_then(|p| p.same_object(&region))
                    .or_else(|| objects.open(pid, region.start, region.end, path));
                if let Some(module) = module_of(&region) {
                    unwinder.add_module(module);
                    modules += 1;
                    region.unwind_info = true;
                }
            }
            regions.push(region);
        }
        if regions.is_empty() {
            return None;
        }
        regions.sort_by_key(|r| r.start);
        Some(Process {
            regions,
            unwinder,
            modules,
            used: previous.map_or(0, |p| p.used),
        })
    }

    fn region(&self, address: u64) -> Option<&Region> {
        let after = self.regions.partition_point(|r| r.start <= address);
        let region = self.regions.get(after.checked_sub(1)?)?;
        (address < region.end).then_some(region)
    }

    /// The object this process had mapped exactly as `region` maps it.
    fn same_object(&self, region: &Region) -> Option<Arc<MappedObject>> {
        let old = self.region(region.start)?;
        let same = (old.start, old.end, old.offset, old.inode)
            == (region.start, region.end, region.offset, region.inode);
        same.then(|| old.object.clone())?
    }

    fn walk(&self, copy: &Copied, cache: &mut CacheX86_64) -> Walk {
        let stack_end = copy.sp.saturating_add(copy.stack.len() as u64);
        let mut read_stack = |address: u64| read_word(copy, address);
        let mut regs = UnwindRegsX86_64::new(copy.ip, copy.sp, copy.bp);
        let mut address = FrameAddress::from_instruction_pointer(copy.ip);
        let mut addresses = vec![copy.ip];
        let mut stale = self.region(copy.ip).is_none() || self.region(copy.sp).is_none();
        let truncated = loop {
            let sp = regs.sp();
            let here = address.address();
            match self
                .unwinder
                .unwind_frame(address, &mut regs, cache, &mut read_stack)
            {
                // An end found by the frame-pointer fallback (a frame pointer of 0 in code
                // without CFI, which may hold anything there) is not the program's start.
                Ok(None) if !self.ends_here(address.address_for_lookup()) => {
                    break Some(Truncation::NoUnwindInfo { address: here });
                }
                Ok(None) => break None,
                Ok(Some(return_address)) => {
                    let Some(next) = FrameAddress::from_return_address(return_address) else {
                        break None;
                    };
                    // framehop lets some rules keep the stack pointer where it was; a frame that
                    // does not move up could repeat for ever.
                    if regs.sp() <= sp {
                        break Some(Truncation::BadRule { address: here });
                    }
                    if !self
                        .region(next.address_for_lookup())
                        .is_some_and(|r| r.exec)
                    {
                        stale = true;
                        break Some(Truncation::NotCode {
                            address: return_address,
                        });
                    }
                    if addresses.len() == MAX_FRAMES {
                        break Some(Truncation::DepthLimit);
                    }
                    addresses.push(return_address);
                    address = next;
                }
                Err(Error::CouldNotReadStack(at))
                    if at >= stack_end && self.in_stack(copy.sp, at) =>
                {
                    break Some(Truncation::PastCopy);
                }
                Err(_) => {
                    let lookup = address.address_for_lookup();
                    break Some(if self.region(lookup).is_some_and(|r| r.unwind_info) {
                        Truncation::BadRule { address: here }
                    } else {
                        Truncation::NoUnwindInfo { address: here }
                    });
                }
            }
        };
        Walk {
            addresses,
            truncated,
            stale,
        }
    }

    /// Whether a stack may end at `address` (the outermost frame's CFI says so): an end found
    /// by framehop's frame-pointer fallback, in code without CFI (a frame pointer of 0 there
    /// may be anything), is no end.
    fn ends_here(&self, address: u64) -> bool {
        let Some(region) = self.region(address) else {
            return false;
        };
        let Some(object) = region.object.as_ref().filter(|_| region.unwind_info) else {
            return false;
        };
        object
            .bias(region.start, region.offset, region.exec)
            .and_then(|base| address.checked_sub(base))
            .is_some_and(|svma| object.has_cfi_for(svma))
    }

    /// Whether `address` lies in the stack mapping `sp` is in.
    fn in_stack(&self, sp: u64, address: u64) -> bool {
        match self.region(sp) {
            Some(stack) => address < stack.end,
            None => address.saturating_sub(sp) < STACK_GUESS,
        }
    }

    fn unwound(&self, walk: Walk) -> Unwound {
        let frames = walk.addresses.iter().enumerate().map(|(i, &address)| {
            // A return address's call instruction is just before it, perhaps in another mapping.
            let lookup = if i == 0 {
                address
            } else {
                address.saturating_sub(1)
            };
            let region = self.region(lookup).filter(|r| r.object.is_some());
            UnwoundFrame {
                address,
                object: region.and_then(|r| r.object.clone()),
                file_offset: region.map_or(0, |r| (address - r.start).saturating_add(r.offset)),
            }
        });
        Unwound {
            frames: frames.collect(),
            truncated: walk.truncated,
        }
    }
}

/// The word at `address`, when the copy holds all of it.
fn read_word(copy: &Copied, address: u64) -> Result<u64, ()> {
    let start = usize::try_from(address.checked_sub(copy.sp).ok_or(())?).map_err(|_| ())?;
    let bytes = copy
        .stack
        .get(start..start.checked_add(8).ok_or(())?)
        .ok_or(())?;
    Ok(u64::from_le_bytes(bytes.try_into().map_err(|_| ())?))
}

/// A framehop module for an executable file mapping whose object has CFI.
fn module_of(region: &Region) -> Option<Module<Bytes>> {
    let object = region.object.as_ref()?;
    let cfi = &object.cfi;
    if cfi.eh_frame.is_none() && cfi.debug_frame.is_none() {
        return None;
    }
    let base = object.bias(region.start, region.offset, region.exec)?;
    let info = ExplicitModuleSectionInfo {
        base_svma: 0,
        text_svma: cfi.text.clone(),
        got_svma: cfi.got.clone(),
        eh_frame_svma: cfi.eh_frame.as_ref().map(|(range, _)| range.clone()),
        eh_frame: cfi.eh_frame.as_ref().map(|(_, bytes)| bytes.clone()),
        eh_frame_hdr_svma: cfi.eh_frame_hdr.as_ref().map(|(range, _)| range.clone()),
        eh_frame_hdr: cfi.eh_frame_hdr.as_ref().map(|(_, bytes)| bytes.clone()),
        debug_frame: cfi.debug_frame.clone(),
        // Mach-O and macOS-only parts; ELF CFI covers prologues without reading the code.
        text: None,
        stubs_svma: None,
        stub_helper_svma: None,
        unwind_info: None,
        text_segment_svma: None,
        text_segment: None,
    };
    let name = object.path().to_owned();
    Some(Module::new(name, region.start..region.end, base, info))
}

/// The offset, inode and path of a maps line, which [`procfs::Mapping`] leaves out.
fn offset_inode_path(line: &str) -> Option<(u64, u64, &str)> {
    let mut fields = [""; 5];
    let mut rest = line;
    for field in &mut fields {
        rest = rest.trim_start();
        let end = rest
            .find(|c: char| c.is_ascii_whitespace())
            .unwrap_or(rest.len());
        (*field, rest) = rest.split_at(end);
    }
    let offset = u64::from_str_radix(fields[2], 16).ok()?;
    let inode = fields[4].parse().ok()?;
    Some((offset, inode, rest.trim()))
}
