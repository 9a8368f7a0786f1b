//! Unwinds this test process's own stack, copied as the kernel copies one.
use std::{fs::File, ops::Range, os::unix::fs::FileExt, process::Command};

use object::{Object, ObjectSymbol, ReadCache};
use proptest::prelude::*;

use super::*;

/// The kernel's copy: at most this much of the stack above sp.
const COPY: usize = 16 << 10;

/// Registers and stack bytes of this thread, as the kernel would copy them.
struct Capture {
    ip: u64,
    sp: u64,
    bp: u64,
    stack: Vec<u8>,
}

impl Capture {
    fn copied(&self) -> Copied<'_> {
        Copied {
            pid: std::process::id(),
            ip: self.ip,
            sp: self.sp,
            bp: self.bp,
            stack: &self.stack,
        }
    }
}

#[inline(never)]
fn unwind_test_outer(limit: usize) -> Capture {
    let capture = unwind_test_middle(limit);
    // Used after the call, so that the call is no tail call and this frame stays.
    std::hint::black_box(capture)
}

#[inline(never)]
fn unwind_test_middle(limit: usize) -> Capture {
    let capture = unwind_test_inner(limit);
    std::hint::black_box(capture)
}

#[inline(never)]
fn unwind_test_inner(limit: usize) -> Capture {
    let (ip, sp, bp): (u64, u64, u64);
    // SAFETY: copies rip, rsp and rbp into three outputs; no memory or stack is touched.
    unsafe {
        std::arch::asm!(
            "lea {ip}, [rip]",
            "mov {sp}, rsp",
            "mov {bp}, rbp",
            ip = out(reg) ip,
            sp = out(reg) sp,
            bp = out(reg) bp,
            options(nomem, nostack, preserves_flags),
        );
    }
    let stack = copy_stack(sp, limit);
    std::hint::black_box(Capture { ip, sp, bp, stack })
}

/// Up to `limit` bytes of this process's memory from `sp`, not past the end of its mapping.
fn copy_stack(sp: u64, limit: usize) -> Vec<u8> {
    let maps = procfs::maps_of(std::process::id()).unwrap();
    let end = procfs::parse_maps(&maps)
        .find(|m| m.start <= sp && sp < m.end)
        .unwrap()
        .end;
    let mut stack = vec![0; limit.min((end - sp) as usize)];
    File::open("/proc/self/mem")
        .unwrap()
        .read_exact_at(&mut stack, sp)
        .unwrap();
    stack
}

/// Where function `name` lies in this process, from the test binary's symbol table.
fn function(address: u64, name: &str) -> Range<u64> {
    let exe = File::open("/proc/self/exe").unwrap();
    let cache = ReadCache::new(&exe);
    let elf = object::File::parse(&cache).unwrap();
    let symbol = elf
        .symbols()
        .find(|s| s.size() > 0 && s.name().is_ok_and(|n| n.contains(name)))
        .unwrap();
    address..address + symbol.size()
}

fn show(unwound: &Unwound) -> String {
    let mut text = String::new();
    for frame in &unwound.frames {
        let path = frame.object.as_ref().map_or("?", |o| o.path());
        text += &format!("  {:#x} {path}+{:#x}\n", frame.address, frame.file_offset);
    }
    text + &format!("  truncated: {:?}\n", unwound.truncated)
}

#[test]
fn unwinds_own_stack_through_three_functions() {
    let capture = unwind_test_outer(COPY);
    let mut unwinders = Unwinders::new();
    let unwound = unwinders.unwind(&capture.copied());
    let shown = show(&unwound);
    let expected = [
        function(unwind_test_inner as *const () as u64, "unwind_test_inner"),
        function(unwind_test_middle as *const () as u64, "unwind_test_middle"),
        function(unwind_test_outer as *const () as u64, "unwind_test_outer"),
    ];
    assert!(unwound.frames.len() > 4, "not beyond the three:\n{shown}");
    let exe = std::fs::metadata("/proc/self/exe").unwrap();
    for (frame, range) in unwound.frames.iter().zip(&expected) {
        assert!(range.contains(&frame.address), "{range:x?}:\n{shown}");
        let object = frame.object.as_ref().unwrap();
        use std::os::unix::fs::MetadataExt;
        assert_eq!(object.dev_inode(), (exe.dev(), exe.ino()));
        assert!(std::fs::metadata(object.fd_path()).is_ok());
    }
    // A thread's stack ends in clone3, whose CFI leaves the return address undefined, unless
    // the test harness's frames above it take more than the copy.
    assert!(
        matches!(unwound.truncated, None | Some(Truncation::PastCopy)),
        "{shown}"
    );
    // Warm, the same copy gives the same frames.
    let again = unwinders.unwind(&capture.copied());
    assert_eq!(show(&again), shown);
}

#[test]
fn a_short_copy_gives_a_short_stack_marked_truncated() {
    let full = unwind_test_outer(COPY);
    let short = unwind_test_outer(64);
    let mut unwinders = Unwinders::new();
    let full = unwinders.unwind(&full.copied());
    let unwound = unwinders.unwind(&short.copied());
    assert!(!unwound.frames.is_empty() && unwound.frames.len() < full.frames.len());
    assert_eq!(
        unwound.truncated,
        Some(Truncation::PastCopy),
        "{}",
        show(&unwound)
    );
}

#[test]
fn unwinders_can_move_to_the_symbolizer_thread() {
    fn send<T: Send>() {}
    send::<Unwinders>();
    send::<Unwound>();
}

#[test]
fn a_process_gone_gives_its_ip() {
    let mut unwinders = Unwinders::new();
    let copy = Copied {
        pid: u32::MAX,
        ip: 0x1234,
        sp: 0x7ff0_0000_0000,
        bp: 0,
        stack: &[0; 64],
    };
    let unwound = unwinders.unwind(&copy);
    assert_eq!(unwound.frames.len(), 1);
    assert_eq!(unwound.frames[0].address, 0x1234);
    assert_eq!(unwound.truncated, Some(Truncation::ProcessGone));
    // A zombie, exited but not reaped, has a /proc entry and no mappings.
    let Ok(mut child) = Command::new("true").spawn() else {
        return;
    };
    let stat = format!("/proc/{}/stat", child.id());
    while std::fs::read_to_string(&stat).is_ok_and(|s| !s.contains(") Z ")) {
        std::thread::sleep(std::time::Duration::from_millis(5));
    }
    let unwound = unwinders.unwind(&Copied {
        pid: child.id(),
        ..copy
    });
    let _ = child.wait();
    assert_eq!(unwound.truncated, Some(Truncation::ProcessGone));
}

/// Code never run: the CFI of a frameless function (CFA = rsp + 32, rbp left alone), to build
/// stacks by hand around.
#[unsafe(naked)]
extern "C" fn frameless() {
    // SAFETY: never called; it only has to assemble, with its CFI.
    std::arch::naked_asm!(
        ".cfi_startproc",
        "sub rsp, 24",
        ".cfi_adjust_cfa_offset 24",
        "nop",
        "nop",
        "nop",
        "nop",
        "add rsp, 24",
        ".cfi_adjust_cfa_offset -24",
        "ret",
        ".cfi_endproc",
    )
}

/// Code never run: the CFI of a function that keeps a frame pointer (CFA = rbp + 16, the
/// caller's rbp saved at rbp), as `-fno-omit-frame-pointer` builds have it.
#[unsafe(naked)]
extern "C" fn framed() {
    // SAFETY: never called; it only has to assemble, with its CFI.
    std::arch::naked_asm!(
        ".cfi_startproc",
        "push rbp",
        ".cfi_adjust_cfa_offset 8",
        ".cfi_offset rbp, -16",
        "mov rbp, rsp",
        ".cfi_def_cfa_register rbp",
        "sub rsp, 32",
        "nop",
        "nop",
        "nop",
        "nop",
        "leave",
        ".cfi_def_cfa rsp, 8",
        "ret",
        ".cfi_endproc",
    )
}

#[test]
fn frameless_native_and_frame_pointer_jit_frames_alternate() {
    let capture = unwind_test_outer(COPY);
    let pid = std::process::id();
    let mut unwinders = Unwinders::new();
    unwinders.unwind(&capture.copied());
    // JIT code: anonymous executable memory where nothing is mapped (below mmap_min_addr).
    let jit = 0x1000;
    let process = unwinders.processes.get_mut(&pid).unwrap();
    process.regions.insert(
        0,
        Region {
            start: jit,
            end: jit + 0x1000,
            offset: 0,
            inode: 0,
            exec: true,
            object: None,
            unwind_info: false,
        },
    );
    // In `frameless` after its `sub rsp, 24`: as the ip (+4) and as a return address (+6); in
    // `framed` after its prologue (+8): as a return address (+10).
    let frameless = frameless as *const () as u64;
    let (ip, ra, framed_ra) = (
        frameless + 4,
        frameless + 6,
        framed as *const () as u64 + 10,
    );
    let sp = capture.sp;
    #[rustfmt::skip]
    let words = [
        0, 0, 0, jit + 0x10, // frameless: 24 bytes, then its return address into JIT code
        0, 0, sp + 96, ra, // JIT: locals, its frame record at sp + 48 (the copy's rbp)
        0, 0, 0, jit + 0x20, // frameless again, rbp unchanged
        sp + 144, framed_ra, // JIT again: its frame record at sp + 96
        0, 0, 0, 0, 0, ra, // framed: 32 bytes of locals, its frame record at sp + 144
        0, 0, 0, 0, // frameless: returns to 0, the outermost frame
    ];
    let stack: Vec<u8> = words.iter().flat_map(|w| w.to_le_bytes()).collect();
    let copy = Copied {
        pid,
        ip,
        sp,
        bp: sp + 48,
        stack: &stack,
    };
    let unwound = unwinders.unwind(&copy);
    let addresses: Vec<u64> = unwound.frames.iter().map(|f| f.address).collect();
    let expected = [ip, jit + 0x10, ra, jit + 0x20, framed_ra, ra];
    assert_eq!(addresses, expected, "{}", show(&unwound));
    assert_eq!(unwound.truncated, None);
    let objects: Vec<bool> = unwound.frames.iter().map(|f| f.object.is_some()).collect();
    assert_eq!(objects, [true, false, true, false, true, true]);
}

#[test]
fn objects_are_shared_between_processes_and_dropped_with_the_last() {
    let Ok(mut child) = Command::new("sleep").arg("10").spawn() else {
        return;
    };
    // Wait for the exec: until then the child maps this test binary.
    while std::fs::read_link(format!("/proc/{}/exe", child.id()))
        .is_ok_and(|exe| !exe.ends_with("sleep"))
    {
        std::thread::sleep(std::time::Duration::from_millis(5));
    }
    let mut unwinders = Unwinders::new();
    let own = unwind_test_outer(COPY);
    unwinders.unwind(&own.copied());
    let copy = Copied {
        pid: child.id(),
        ..own.copied()
    };
    unwinders.unwind(&copy);
    let libc = |unwinders: &Unwinders, pid: u32| {
        let regions = &unwinders.processes[&pid].regions;
        let mut objects = regions.iter().filter_map(|r| r.object.clone());
        objects.find(|o| o.path().contains("/libc.so"))
    };
    let (ours, theirs) = (
        libc(&unwinders, std::process::id()),
        libc(&unwinders, child.id()),
    );
    let _ = child.kill();
    let _ = child.wait();
    let (Some(ours), Some(theirs)) = (ours, theirs) else {
        return; // A static sleep or a test binary without libc: nothing shared.
    };
    assert!(Arc::ptr_eq(&ours, &theirs));
    assert!(ours.build_id().is_some());
    drop(theirs);
    let sleep = (unwinders.processes[&child.id()].regions.iter())
        .find_map(|r| r.object.as_ref().filter(|o| o.path().ends_with("sleep")))
        .map(Arc::downgrade)
        .unwrap();
    unwinders.forget(child.id());
    assert!(sleep.upgrade().is_none(), "sleep's object outlived it");
    // Held here, by the cache and by this process's module.
    assert_eq!(
        Arc::strong_count(&ours),
        3,
        "libc went with the other process"
    );
}

#[test]
fn maps_fields_left_out_of_mapping() {
    let line = "7f3c1a200000-7f3c1a228000 r-xp 00028000 fd:01 1234   /usr/lib/libc.so.6 (deleted)";
    assert_eq!(
        offset_inode_path(line),
        Some((0x28000, 1234, "/usr/lib/libc.so.6 (deleted)"))
    );
    assert_eq!(
        offset_inode_path("7f3c1a200000-7f3c1a228000 rw-p 00000000 00:00 0 "),
        Some((0, 0, ""))
    );
    assert_eq!(offset_inode_path("garbage"), None);
}

/// A C program of 33 functions that each need a stack frame, compiled with `flags`.
fn compile(flags: &str) -> Option<Vec<u8>> {
    let dir = std::env::temp_dir().join(format!("sockleak-fp-{}", std::process::id()));
    std::fs::create_dir_all(&dir).ok()?;
    let mut source = String::from(
        "#include <stdio.h>\n#include <string.h>\n\
         __attribute__((noinline)) int f32(const char *s) { return (int)strlen(s); }\n",
    );
    for i in (0..32).rev() {
        source += &format!(
            "__attribute__((noinline)) int f{i}(const char *s) {{ char b[64]; \
             snprintf(b, sizeof b, \"%s{i}\", s); return f{}(b) + (int)strlen(b); }}\n",
            i + 1
        );
    }
    source += "int main(int argc, char **argv) { (void)argc; return f0(argv[0]) & 1; }\n";
    let name = flags.replace(' ', "");
    let (c, exe) = (dir.join(format!("{name}.c")), dir.join(&name));
    std::fs::write(&c, source).ok()?;
    let status = Command::new("gcc")
        .args(flags.split(' '))
        .arg(&c)
        .arg("-o")
        .arg(&exe)
        .status();
    let elf = status.ok()?.success().then(|| std::fs::read(&exe).ok())?;
    let _ = std::fs::remove_dir_all(&dir);
    elf
}

#[test]
fn frame_pointers_are_judged_from_the_cfi() {
    match (
        compile("-O2 -fomit-frame-pointer"),
        compile("-O2 -fno-omit-frame-pointer"),
    ) {
        (Some(without), Some(with)) => {
            assert!(!keeps_frame_pointers(&without[..]));
            assert!(keeps_frame_pointers(&with[..]));
        }
        _ => panic!("gcc failed or is missing (./setup.sh installs it)"),
    }
    // Debian builds python without frame pointers.
    if let Ok(python) = std::fs::read("/usr/bin/python3") {
        assert!(!keeps_frame_pointers(&python[..]));
    }
    // Nothing to judge: the copy, which unwinds what it can and walks the rest.
    assert!(!keeps_frame_pointers(&b"not an ELF file"[..]));
}

#[test]
fn malformed_objects_never_panic() {
    let Ok(elf) = std::fs::read("/usr/bin/true") else {
        return;
    };
    let path = std::env::temp_dir().join(format!("sockleak-elf-{}", std::process::id()));
    let strategy = (
        0..elf.len(),
        prop::collection::vec((0..elf.len(), any::<u8>()), 0..64),
    );
    let mut runner = proptest::test_runner::TestRunner::new(ProptestConfig::with_cases(256));
    let result = runner.run(&strategy, |(cut, flips)| {
        let mut elf = elf.clone();
        for (at, byte) in flips {
            elf[at] = byte;
        }
        elf.truncate(cut.max(64));
        keeps_frame_pointers(&elf[..]);
        std::fs::write(&path, &elf).unwrap();
        if let Some(object) = objects::MappedObject::from_file(File::open(&path).unwrap()) {
            object.keeps_frame_pointers();
            object.bias(0x7f00_0000_0000, 0x1000, true);
        }
        Ok(())
    });
    let _ = std::fs::remove_file(&path);
    result.unwrap();
}

/// An address in this test binary's code, or anything.
fn code_or_anything() -> impl Strategy<Value = u64> {
    let code = unwind_test_outer as *const () as u64;
    prop_oneof![
        any::<u64>(),
        (0u64..0x10_0000).prop_map(move |o| code.wrapping_add(o).wrapping_sub(0x8_0000)),
    ]
}

#[test]
fn random_stacks_never_panic_nor_hang() {
    let capture = unwind_test_outer(COPY);
    let unwinders = std::cell::RefCell::new(Unwinders::new());
    let sp = capture.sp;
    let strategy = (
        code_or_anything(),
        prop_oneof![Just(sp), any::<u64>()],
        prop_oneof![Just(sp + 64), any::<u64>()],
        prop::collection::vec(
            prop_oneof![code_or_anything(), Just(sp + 128), any::<u64>()],
            0..256,
        ),
    );
    let mut runner = proptest::test_runner::TestRunner::new(ProptestConfig::with_cases(256));
    let result = runner.run(&strategy, |(ip, sp, bp, words)| {
        let stack: Vec<u8> = words.iter().flat_map(|w| w.to_le_bytes()).collect();
        let copy = Copied {
            pid: std::process::id(),
            ip,
            sp,
            bp,
            stack: &stack,
        };
        let unwound = unwinders.borrow_mut().unwind(&copy);
        prop_assert!(!unwound.frames.is_empty() && unwound.frames.len() <= MAX_FRAMES);
        prop_assert_eq!(unwound.frames[0].address, ip);
        Ok(())
    });
    result.unwrap();
}
