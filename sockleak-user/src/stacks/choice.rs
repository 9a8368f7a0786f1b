//! Which way each process's creation stacks are taken: walked in the kernel along the frame
//! pointers, where its program keeps them, else copied for sockleak to unwind from CFI.
//!
//! Judged once per process before its first stack, at sockleak's start and at each exec,
//! from the program the process runs (read through `/proc/PID/exe`, the process's own view of
//! the file), and told to the kernel (`UNWINDERS`). A process nobody judged in time is
//! copied: the kernel decides that at its first stack and keeps it, so one code path is never
//! taken two ways.
use std::{collections::HashMap, fs::File, os::unix::fs::MetadataExt};

use aya::{
    Ebpf,
    maps::{HashMap as BpfHashMap, MapData},
};
use object::{
    Endianness, ReadCache, ReadRef,
    read::elf::{Dyn, ElfFile64},
};
use sockleak_common::StackUnwinder;

use super::unwind::keeps_frame_pointers;

/// Programs judged, by file (device and inode): a busy machine starts the same few programs
/// over and over. Past it the judgements are forgotten and made again.
const PROGRAMS_KEPT: usize = 4096;

/// Libraries that do not break a frame-pointer walk of the program calling them, though
/// built without frame pointers: the C runtime's system call wrappers are leaves that keep the
/// caller's frame pointer (the word at the stack pointer names their caller), and nothing in
/// them calls back into the program on the way to a socket.
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
    /// `None` when copies are off: every stack is walked.
    map: Option<BpfHashMap<MapData, u32, u32>>,
    by_program: HashMap<(u64, u64), StackUnwinder>,
}

impl UnwinderChoice {
    /// Takes the kernel's `UNWINDERS` map, when stacks may be copied (`copies`).
    pub fn new(ebpf: &mut Ebpf, copies: bool) -> Self {
        let map = copies
            .then(|| ebpf.take_map("UNWINDERS"))
            .flatten()
            .and_then(|map| BpfHashMap::try_from(map).ok());
        Self {
            map,
            by_program: HashMap::new(),
        }
    }

    /// Judges the program each of `pids` runs and tells the kernel, unless it already decided.
    pub fn judge(&mut self, pids: impl IntoIterator<Item = u32>) {
        const BPF_NOEXIST: u64 = 1;
        let Some(map) = &mut self.map else {
            return;
        };
        for pid in pids {
            let Ok(exe) = File::open(format!("/proc/{pid}/exe")) else {
                continue; // gone, or a kernel thread
            };
            let Ok(meta) = exe.metadata() else {
                continue;
            };
            if self.by_program.len() >= PROGRAMS_KEPT {
                self.by_program.clear();
            }
            let unwinder = *self
                .by_program
                .entry((meta.dev(), meta.ino()))
                .or_insert_with(|| program_unwinder(exe));
            // The kernel's word stands where it spoke first (the process's first stack came
            // before this judgement).
            let _ = map.insert(&pid, &(unwinder as u32), BPF_NOEXIST);
        }
    }
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
    let (endian, sections) = (elf.endian(), elf.elf_section_table());
    let Ok(dynamic) = sections.dynamic(endian, data) else {
        return false;
    };
    let Some((dynamic, strings_at)) = dynamic else {
        return true; // static
    };
    let Ok(strings) = sections.strings(endian, data, strings_at) else {
        return false;
    };
    dynamic
        .iter()
        .filter(|d| d.tag(endian) == object::elf::DT_NEEDED)
        .all(|d| {
            d.string(endian, strings)
                .is_ok_and(|name| C_RUNTIME.iter().any(|lib| name.starts_with(lib)))
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
