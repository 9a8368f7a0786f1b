//! The files processes map, opened through each process's own view and shared between them.
//!
//! Only headers and the unwind sections are read (with `pread`, into the heap, once per object):
//! a file another user can write could be truncated under a memory map, and a read of a
//! truncated map kills the reader with SIGBUS.
use std::{
    collections::HashMap,
    fs::{File, OpenOptions},
    ops::{Deref, Range},
    os::{
        fd::AsRawFd,
        unix::fs::{FileExt, MetadataExt, OpenOptionsExt},
    },
    path::PathBuf,
    sync::Arc,
};

use object::{
    Endianness, ReadCache, elf,
    read::elf::{FileHeader, ProgramHeader, SectionHeader},
};

/// Objects kept open for reuse across processes. Each costs an fd and its unwind sections (tens
/// of KiB for most libraries, 3.3 MiB for node), and a machine rarely runs more distinct
/// executables and libraries at once: libc and its friends are shared by every process.
const MAX_OBJECTS: usize = 512;
/// A larger unwind section is taken as malformed (node's `.eh_frame` is under 3 MiB).
const MAX_SECTION: u64 = 64 << 20;
/// A larger section name table is taken as malformed (a debug build's has a few KiB).
const MAX_NAMES: u64 = 1 << 20;
/// A larger note segment is not searched for a build-id (real ones are a few hundred bytes).
const MAX_NOTES: u64 = 64 << 10;
/// Longer build-ids are ignored (GNU ld writes 20 bytes, at most 64 with `--build-id=0x...`).
const MAX_BUILD_ID: usize = 64;
/// x86-64 pages: a mapping starts at a segment's offset and address rounded down to one.
const PAGE: u64 = 4096;

/// One section's bytes, read once per object and shared by every process's module of it,
/// with their share of what all objects may hold.
#[derive(Clone)]
pub(super) struct Bytes(
    Arc<[u8]>,
    #[expect(dead_code, reason = "held for its Drop, which gives the share back")]
    Arc<SectionBytes>,
);

impl Deref for Bytes {
    type Target = [u8];
    fn deref(&self) -> &[u8] {
        &self.0
    }
}

/// What framehop reads of an object: section addresses as the object states them (SVMAs) and
/// the CFI itself.
#[derive(Default)]
pub(super) struct Cfi {
    pub text: Option<Range<u64>>,
    pub got: Option<Range<u64>>,
    pub eh_frame: Option<(Range<u64>, Bytes)>,
    pub eh_frame_hdr: Option<(Range<u64>, Bytes)>,
    /// Read only without `.eh_frame`: framehop uses one or the other, never both.
    pub debug_frame: Option<Bytes>,
}

/// A `PT_LOAD` segment: where a mapping of the file sits in the object's addresses.
#[derive(Clone, Copy)]
struct Load {
    offset: u64,
    vaddr: u64,
    filesz: u64,
    exec: bool,
}

/// What tells one file from another under the same (dev, inode): an inode number freed by a
/// deleted file and given to a new one, or a file rewritten in place.
#[derive(PartialEq, Eq)]
struct Identity {
    build_id: Option<Vec<u8>>,
    size: u64,
    mtime: (i64, i64),
}

/// A file some process maps, opened through that process's `/proc/PID/map_files` entry: a
/// container's binaries are not the host's, and a file replaced on disk since it was mapped is
/// still the one mapped.
pub struct MappedObject {
    file: File,
    path: String,
    dev_inode: (u64, u64),
    identity: Identity,
    loads: Vec<Load>,
    pub(super) cfi: Cfi,
    /// A Go binary: its runtime keeps frame pointers whatever its CFI says.
    go: bool,
}

impl std::fmt::Debug for MappedObject {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MappedObject")
            .field("path", &self.path)
            .field("dev_inode", &self.dev_inode)
            .field("fd", &self.file.as_raw_fd())
            .finish_non_exhaustive()
    }
}

impl MappedObject {
    /// The path `/proc/PID/maps` gave (for people: in a container it is not a host path).
    pub fn path(&self) -> &str {
        &self.path
    }

    /// A path any reader (blazesym) can open for the very file the process maps, even after
    /// the process unmapped it or the file was replaced on disk, while this object lives.
    pub fn fd_path(&self) -> PathBuf {
        PathBuf::from(format!("/proc/self/fd/{}", self.file.as_raw_fd()))
    }

    pub fn build_id(&self) -> Option<&[u8]> {
        self.identity.build_id.as_deref()
    }

    /// The file's (st_dev, st_ino), as the object cache keys it.
    pub fn dev_inode(&self) -> (u64, u64) {
        self.dev_inode
    }

    /// See [`super::keeps_frame_pointers`]; judged from the CFI already read for unwinding.
    pub fn keeps_frame_pointers(&self) -> bool {
        let cfi = &self.cfi;
        super::frame_pointers::judge(super::frame_pointers::Sections {
            eh_frame: cfi
                .eh_frame
                .as_ref()
                .map(|(range, bytes)| (&bytes[..], range.start)),
            debug_frame: cfi.debug_frame.as_deref(),
            text: cfi.text.as_ref().map(|range| range.start),
            got: cfi.got.as_ref().map(|range| range.start),
            go: self.go,
        })
    }

    /// Whether the object's CFI has an entry for the code at `svma` (an address as the object
    /// states it): where it has none, an unwinding that ends there ended on a guess (the frame
    /// pointer), not at the program's outermost frame.
    pub(super) fn has_cfi_for(&self, svma: u64) -> bool {
        use gimli::{BaseAddresses, EhFrame, EhFrameHdr, LittleEndian, UnwindSection};
        let cfi = &self.cfi;
        let Some((eh_range, eh_bytes)) = &cfi.eh_frame else {
            return false;
        };
        let mut bases = BaseAddresses::default().set_eh_frame(eh_range.start);
        if let Some(text) = &cfi.text {
            bases = bases.set_text(text.start);
        }
        if let Some(got) = &cfi.got {
            bases = bases.set_got(got.start);
        }
        let mut eh_frame = EhFrame::new(eh_bytes, LittleEndian);
        eh_frame.set_address_size(8);
        if let Some((hdr_range, hdr_bytes)) = &cfi.eh_frame_hdr {
            let bases = bases.clone().set_eh_frame_hdr(hdr_range.start);
            if let Ok(hdr) = EhFrameHdr::new(hdr_bytes, LittleEndian).parse(&bases, 8)
                && let Some(table) = hdr.table()
            {
                return table
                    .fde_for_address(&eh_frame, &bases, svma, EhFrame::cie_from_offset)
                    .is_ok();
            }
        }
        eh_frame
            .fde_for_address(&bases, svma, EhFrame::cie_from_offset)
            .is_ok()
    }

    /// Where the object's address 0 lies in a process that maps its file offset `offset` at
    /// `start` (framehop's base AVMA); None when no segment holds that offset.
    pub(super) fn bias(&self, start: u64, offset: u64, exec: bool) -> Option<u64> {
        let holds = |load: &&Load| {
            let first = load.offset & !(PAGE - 1);
            first <= offset && offset < load.offset.saturating_add(load.filesz)
        };
        let load = (self.loads.iter().filter(|l| l.exec == exec).find(holds))
            .or_else(|| self.loads.iter().find(holds))?;
        let svma = (load.vaddr & !(PAGE - 1)).checked_add(offset - (load.offset & !(PAGE - 1)))?;
        start.checked_sub(svma)
    }

    fn load(
        file: File,
        path: &str,
        dev_inode: (u64, u64),
        identity: Identity,
        headers: Option<Headers>,
    ) -> Self {
        let (found, go) = headers
            .as_ref()
            .map(|_| sections(&file))
            .unwrap_or_default();
        let len = identity.size;
        let mut cfi = Cfi::default();
        let mut debug_frame = None;
        for section in &found {
            let range = section.addr..section.addr.saturating_add(section.size);
            match section.name {
                Wanted::Text => cfi.text = Some(range),
                Wanted::Got => cfi.got = Some(range),
                Wanted::EhFrame => {
                    cfi.eh_frame = read_section(&file, len, section).map(|b| (range, b))
                }
                Wanted::EhFrameHdr => {
                    cfi.eh_frame_hdr = read_section(&file, len, section).map(|b| (range, b));
                }
                Wanted::DebugFrame => debug_frame = Some(section),
            }
        }
        if cfi.eh_frame.is_none() {
            cfi.debug_frame = debug_frame.and_then(|section| read_section(&file, len, section));
        }
        MappedObject {
            file,
            path: path.to_owned(),
            dev_inode,
            identity,
            loads: headers.map(|h| h.loads).unwrap_or_default(),
            cfi,
            go,
        }
    }
}

#[cfg(test)]
impl MappedObject {
    /// An object read from any file, as if a process mapped it.
    pub(super) fn from_file(file: File) -> Option<MappedObject> {
        let meta = file.metadata().ok()?;
        let identity = Identity {
            build_id: None,
            size: meta.len(),
            mtime: (0, 0),
        };
        let headers = Headers::read(&file);
        Some(MappedObject::load(file, "test", (0, 0), identity, headers))
    }
}

/// The objects open now, by (dev, inode), least recently used dropped past [`MAX_OBJECTS`].
#[derive(Default)]
pub(super) struct Objects {
    cached: HashMap<(u64, u64), (Arc<MappedObject>, u64)>,
    clock: u64,
}

impl Objects {
    /// The file `pid` maps at `start..end` (`path` as its maps name it), opened or reused; None
    /// for what is not a regular file or cannot be opened.
    pub fn open(
        &mut self,
        pid: u32,
        start: u64,
        end: u64,
        path: &str,
    ) -> Option<Arc<MappedObject>> {
        // Opening a device node can block or act; nothing there has unwind info.
        if path.starts_with("/dev/") {
            return None;
        }
        let file = OpenOptions::new()
            .read(true)
            .custom_flags(libc::O_NONBLOCK | libc::O_NOCTTY)
            .open(format!("/proc/{pid}/map_files/{start:x}-{end:x}"))
            .ok()?;
        let meta = file.metadata().ok()?;
        if !meta.file_type().is_file() {
            return None;
        }
        let dev_inode = (meta.dev(), meta.ino());
        let headers = Headers::read(&file);
        let identity = Identity {
            build_id: headers.as_ref().and_then(|h| h.build_id.clone()),
            size: meta.len(),
            mtime: (meta.mtime(), meta.mtime_nsec()),
        };
        self.clock += 1;
        if let Some((object, used)) = self.cached.get_mut(&dev_inode)
            && object.identity == identity
        {
            *used = self.clock;
            return Some(Arc::clone(object));
        }
        let object = Arc::new(MappedObject::load(file, path, dev_inode, identity, headers));
        self.cached
            .insert(dev_inode, (Arc::clone(&object), self.clock));
        if self.cached.len() > MAX_OBJECTS
            && let Some(oldest) = self
                .cached
                .iter()
                .min_by_key(|(_, (_, used))| *used)
                .map(|(k, _)| *k)
        {
            self.cached.remove(&oldest);
        }
        Some(object)
    }

    /// Drops the objects nothing but this cache holds: no process state maps them any more.
    pub fn purge_unused(&mut self) {
        self.cached
            .retain(|_, (object, _)| Arc::strong_count(object) > 1);
    }
}

#[derive(Clone, Copy)]
enum Wanted {
    Text,
    Got,
    EhFrame,
    EhFrameHdr,
    DebugFrame,
}

/// A section framehop needs, as its header states it.
struct Found {
    name: Wanted,
    addr: u64,
    offset: u64,
    size: u64,
    /// It has bytes in the file, uncompressed.
    readable: bool,
}

/// What the ELF program headers say: enough to tell a cached object from another file and to
/// place its mappings.
#[derive(Default)]
struct Headers {
    loads: Vec<Load>,
    build_id: Option<Vec<u8>>,
}

impl Headers {
    /// None for what is not an x86-64 ELF file or has malformed headers.
    fn read(file: &File) -> Option<Headers> {
        let data = ReadCache::new(file);
        let header = elf::FileHeader64::<Endianness>::parse(&data).ok()?;
        let endian = header.endian().ok()?;
        // Extended header counts would let a crafted file ask for gigabytes of headers.
        if header.e_machine(endian) != elf::EM_X86_64 || header.e_phnum(endian) == elf::PN_XNUM {
            return None;
        }
        let mut headers = Headers::default();
        for segment in header.program_headers(endian, &data).ok()? {
            if segment.p_type(endian) == elf::PT_LOAD {
                headers.loads.push(Load {
                    offset: segment.p_offset(endian),
                    vaddr: segment.p_vaddr(endian),
                    filesz: segment.p_filesz(endian),
                    exec: segment.p_flags(endian).0 & elf::PF_X.0 != 0,
                });
            } else if headers.build_id.is_none() && segment.p_filesz(endian) <= MAX_NOTES {
                headers.build_id = build_id(segment, endian, &data);
            }
        }
        Some(headers)
    }
}

/// The sections framehop needs, as their headers state them, and whether this is a Go binary;
/// read only for an object not cached yet.
fn sections(file: &File) -> (Vec<Found>, bool) {
    let mut found = (Vec::new(), false);
    let data = ReadCache::new(file);
    let Ok(header) = elf::FileHeader64::<Endianness>::parse(&data) else {
        return found;
    };
    let Ok(endian) = header.endian() else {
        return found;
    };
    // An extended count (e_shnum 0) would let a crafted file ask for gigabytes of headers.
    if header.e_shnum(endian) == 0 {
        return found;
    }
    let (Ok(sections), Ok(names)) = (
        header.section_headers(endian, &data),
        header.shstrndx(endian, &data),
    ) else {
        return found;
    };
    // One read for every name, rather than one per section.
    let names = sections
        .get(names as usize)
        .filter(|names| names.sh_size(endian) <= MAX_NAMES)
        .and_then(|names| names.data(endian, &data).ok())
        .unwrap_or_default();
    for section in sections {
        let name = usize::try_from(section.sh_name(endian)).ok();
        let name = name.and_then(|at| names.get(at..)?.split(|&b| b == 0).next());
        let name = match name.unwrap_or_default() {
            b".text" => Wanted::Text,
            b".got" => Wanted::Got,
            b".eh_frame" => Wanted::EhFrame,
            b".eh_frame_hdr" => Wanted::EhFrameHdr,
            b".debug_frame" => Wanted::DebugFrame,
            b".gopclntab" | b".go.buildinfo" => {
                found.1 = true;
                continue;
            }
            _ => continue,
        };
        found.0.push(Found {
            name,
            addr: section.sh_addr(endian),
            offset: section.sh_offset(endian),
            size: section.sh_size(endian),
            readable: section.sh_type(endian) != elf::SHT_NOBITS
                && section.sh_flags(endian).0 & elf::SHF_COMPRESSED.0 == 0,
        });
    }
    found
}

/// The GNU build-id in a `PT_NOTE` segment, if it holds one.
fn build_id(
    segment: &elf::ProgramHeader64<Endianness>,
    endian: Endianness,
    data: &ReadCache<&File>,
) -> Option<Vec<u8>> {
    let mut notes = segment.notes(endian, data).ok()??;
    while let Ok(Some(note)) = notes.next() {
        if note.name() == elf::ELF_NOTE_GNU && note.n_type(endian) == elf::NT_GNU_BUILD_ID {
            let id = note.desc();
            return (!id.is_empty() && id.len() <= MAX_BUILD_ID).then(|| id.to_vec());
        }
    }
    None
}

/// A section's bytes, when they are in the file and of a believable size.
fn read_section(file: &File, file_len: u64, section: &Found) -> Option<Bytes> {
    let end = section.offset.checked_add(section.size)?;
    if !section.readable || section.size > MAX_SECTION || end > file_len {
        return None;
    }
    let reserved = SectionBytes::reserve(section.size)?;
    let mut bytes = vec![0; usize::try_from(section.size).ok()?];
    file.read_exact_at(&mut bytes, section.offset).ok()?;
    Some(Bytes(bytes.into(), Arc::new(reserved)))
}

/// Bytes of unwind sections held at once, every object together: a process that maps many
/// files stating huge (sparse) sections would otherwise have the tracer hold gigabytes. Past
/// it, an object's frames are walked by frame pointer. Real machines hold a few tens of
/// megabytes (node's sections are 3.3 MB, libc's 183 kB).
const MAX_SECTION_BYTES: u64 = 512 << 20;

static SECTION_BYTES: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);

/// A share of [`MAX_SECTION_BYTES`], given back when the section's bytes are dropped.
#[derive(Debug)]
pub(super) struct SectionBytes(u64);

impl SectionBytes {
    fn reserve(size: u64) -> Option<Self> {
        use std::sync::atomic::Ordering::Relaxed;
        SECTION_BYTES
            .try_update(Relaxed, Relaxed, |held| {
                held.checked_add(size).filter(|&h| h <= MAX_SECTION_BYTES)
            })
            .ok()
            .map(|_| Self(size))
    }
}

impl Drop for SectionBytes {
    fn drop(&mut self) {
        SECTION_BYTES.fetch_sub(self.0, std::sync::atomic::Ordering::Relaxed);
    }
}
