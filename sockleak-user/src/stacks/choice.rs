//! Which way each process's creation stacks are taken: walked in the kernel along the frame
//! pointers, where its program keeps them, else copied for sockleak to unwind from CFI.
//!
//! Judged once per process before its first stack, at sockleak's start and at each exec,
//! from the program the process runs (read through `/proc/PID/exe`, the process's own view of
//! the file), and told to the kernel (`UNWINDERS`), with the program's judgement by file
//! (`PROGRAM_UNWINDERS`). A process nobody judged in time (forked, or whose first socket came
//! before its exec was read) takes its program's judgement, or is copied if it never had one:
//! the kernel decides that at its first stack and keeps it, so one code path is never taken
//! two ways.
use std::{collections::HashMap, fs::File, os::unix::fs::MetadataExt};

use aya::{
    Ebpf,
    maps::{HashMap as BpfHashMap, MapData},
};
use object::{Endianness, ReadCache, ReadRef, read::elf::ElfFile64};
use sockleak_common::{ProgramFile, StackUnwinder};

use super::unwind::keeps_frame_pointers;
use crate::elf_symbols;

/// Programs judged, by file (device and inode): a busy machine starts the same few programs
/// over and over. Past it the judgements are forgotten and made again.
const PROGRAMS_KEPT: usize = 4096;

/// Libraries a program walked along its frame pointers may link, though they are built
/// without them: a socket made directly by the program goes through their system call
/// wrappers, leaves that keep the caller's frame pointer (the word at the stack pointer names
/// their caller). A socket the C library makes on its own behalf (`getaddrinfo`'s DNS
/// queries, an NSS module it loads) is walked through code that uses rbp as it likes: that
/// stack can end a frame or two in; and a library the program loads with `dlopen` is not
/// judged at all. Both are rare on the way to a leak, and cost a copy per stack to cover.
const C_RUNTIME: &[&[u8]] = &[
    b"libc.so",
    b"libm.so",
    b"libpthread.so",
    b"libdl.so",
    b"librt.so",
    b"libresolv.so",
    b"libgcc_s.so",
    b"ld-linux-x86-64.so",
];

pub struct UnwinderChoice {
    map: BpfHashMap<MapData, u32, u32>,
    programs: BpfHashMap<MapData, ProgramFile, u32>,
    by_program: HashMap<ProgramId, StackUnwinder>,
}

impl UnwinderChoice {
    /// Takes the kernel's `UNWINDERS` and `PROGRAM_UNWINDERS` maps; `None` without them.
    pub fn new(ebpf: &mut Ebpf) -> Option<Self> {
        let map = BpfHashMap::try_from(ebpf.take_map("UNWINDERS")?).ok()?;
        let programs = BpfHashMap::try_from(ebpf.take_map("PROGRAM_UNWINDERS")?).ok()?;
        Some(Self {
            map,
            programs,
            by_program: HashMap::new(),
        })
    }

    /// Judges the program each of `pids` runs and tells the kernel, unless it already decided.
    pub fn judge(&mut self, pids: impl IntoIterator<Item = u32>) {
        const BPF_NOEXIST: u64 = 1;
        for pid in pids {
            let Some((program, exe)) = program_of(pid) else {
                continue; // gone, or a kernel thread
            };
            if self.by_program.len() >= PROGRAMS_KEPT {
                self.by_program.clear();
            }
            let unwinder = *self
                .by_program
                .entry(program)
                .or_insert_with(|| program_unwinder(exe));
            // For the processes that run it without an exec of their own (forked) or open a
            // socket before theirs is read; told at every judging, as the kernel's LRU may
            // have let it go.
            let _ = self
                .programs
                .insert(&kernel_program_file(program), &(unwinder as u32), 0);
            // The kernel's word stands where it spoke first (the process's first stack came
            // before this judgement).
            if self
                .map
                .insert(&pid, &(unwinder as u32), BPF_NOEXIST)
                .is_ok()
                && program_of(pid).is_none_or(|(now, _)| now != program)
            {
                // It started another program meanwhile, whose exec removed the kernel's word
                // before this one went in: that program is judged at its own exec event.
                let _ = self.map.remove(&pid);
            }
        }
    }
}

/// A program file: device, inode, size and modification time (an inode number is reused once
/// its file is gone, as a rebuilt binary's often is).
type ProgramId = (u64, u64, u64, i64, i64);

/// The kernel's name for a program file ([`ProgramFile`]): stat's device number re-encoded
/// as the kernel's `s_dev` (major << 20 | minor).
fn kernel_program_file((dev, ino, size, ..): ProgramId) -> ProgramFile {
    let (major, minor) = (libc::major(dev), libc::minor(dev));
    ProgramFile {
        dev: (major << 20) | minor,
        _pad: 0,
        ino,
        size,
    }
}

/// The program process `pid` runs, opened through its `/proc/PID/exe`.
fn program_of(pid: u32) -> Option<(ProgramId, File)> {
    let exe = File::open(format!("/proc/{pid}/exe")).ok()?;
    let meta = exe.metadata().ok()?;
    let id = (
        meta.dev(),
        meta.ino(),
        meta.len(),
        meta.mtime(),
        meta.mtime_nsec(),
    );
    Some((id, exe))
}

/// How a program's stacks are best taken: along the frame pointers where its code keeps them
/// and it links no library but the C runtime's (a library without them, called on the way to
/// a socket, would break the walk there), else by copies.
fn program_unwinder(exe: File) -> StackUnwinder {
    // Read as needed (the headers, the CFI, the dynamic section), not whole: a program may be
    // a few hundred megabytes.
    let data = ReadCache::new(exe);
    if keeps_frame_pointers(&data) && links_only_the_c_runtime(&data) {
        StackUnwinder::FramePointers
    } else {
        StackUnwinder::Copy
    }
}

/// Whether the ELF object `data` asks the loader for no library but the C runtime's.
fn links_only_the_c_runtime<'data, R: ReadRef<'data>>(data: R) -> bool {
    let Ok(elf) = ElfFile64::<Endianness, R>::parse(data) else {
        return false;
    };
    elf_symbols::loader_requests(&elf).is_some_and(|requests| {
        requests.needed.iter().all(|name| {
            name.as_deref()
                .is_some_and(|name| C_RUNTIME.iter().any(|lib| name.starts_with(lib)))
        })
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_program_that_links_more_than_the_c_runtime_is_copied() {
        let exe = std::fs::read("/proc/self/exe").unwrap();
        // The test binary links libc, libgcc_s and friends only.
        assert!(links_only_the_c_runtime(&exe[..]));
        assert!(!links_only_the_c_runtime(&b"not an ELF file"[..]));
        // Debian's python3 is built without frame pointers.
        let python = File::open("/usr/bin/python3").expect("Debian's python3 (setup.sh)");
        assert_eq!(program_unwinder(python), StackUnwinder::Copy);
    }
}
