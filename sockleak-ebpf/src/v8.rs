//! JavaScript frames where a libuv handle is made, for Node.js processes without perf maps
//! (see `sockleak_common::JsStack`): a frame-pointer walk from the probed call. A frame whose
//! context slot holds a heap object and whose function slot a `JSFunction` (by its map's
//! instance type) is a JavaScript frame; its SharedFunctionInfo and bytecode offset are kept,
//! and every frame's code address, which makes the handle's native stack too. Everything else
//! (names, scripts, lines, and checking that what was read is what it seems) is userspace's.
use aya_ebpf::{bindings::BPF_NOEXIST, helpers::bpf_probe_read_user, programs::ProbeContext};
use sockleak_common::{
    ANY_V8_PROCESS, JS_CALLER_DEPTH, JS_NATIVE_FRAMES, JS_WALK_DEPTH, JsFrame, JsStack,
    NO_JS_STACK, Stat, V8_FP_BYTECODE_OFFSET, V8_FP_CONTEXT, V8_FP_FUNCTION, V8Layout,
};

use crate::maps::{JS_STACKS, V8_LAYOUTS, count};

/// V8's tagging of a word: a heap object pointer ends in 01, a small integer in 0 (and holds
/// its value in the upper half on x86-64).
const HEAP_OBJECT_TAG_MASK: u64 = 3;
const HEAP_OBJECT_TAG: u64 = 1;
const SMI_TAG_MASK: u64 = 1;
/// Heap objects are 8-byte aligned (x86-64 node builds do not compress pointers).
const OBJECT_ALIGNMENT_MASK: u64 = 7;
/// No process maps its first 64 KiB (`vm.mmap_min_addr`'s default), and user addresses end
/// at 2^47 (2^56 with five-level paging, which V8 does not use for its heap).
const LOWEST_MAPPING: u64 = 0x1_0000;
const USER_SPACE_END: u64 = 1 << 47;

/// Each frame is read as one window of words: from `BELOW` bytes under the frame pointer
/// (V8's frame slots) up to the saved frame pointer and the return address.
const BELOW: u64 = 48;
const WINDOW_WORDS: usize = 8;
const SAVED_FP: usize = 6;
const RETURN_ADDRESS: usize = 7;

const FNV_OFFSET: u64 = 0xcbf2_9ce4_8422_2325;
const FNV_PRIME: u64 = 0x100_0000_01b3;

/// The V8 layout of process `pid`, if it runs a V8 build userspace understands, and whether
/// userspace read it from the process's own binary (rather than the layout every node seen
/// shares, assumed for a process not looked at yet, which may not run V8 at all).
#[inline(always)]
pub fn v8_layout(pid: u32) -> Option<(V8Layout, bool)> {
    // SAFETY: map values, valid for the program's run.
    unsafe {
        match V8_LAYOUTS.get(&pid) {
            Some(own) => Some((*own, true)),
            None => V8_LAYOUTS.get(&ANY_V8_PROCESS).map(|any| (*any, false)),
        }
    }
}

/// The first JavaScript frame above the probed call, as the walk keeps it, and where the frame
/// above it is: its frame pointer, and the code address it is at.
#[derive(Clone, Copy)]
pub struct Caller {
    frame: JsFrame,
    next_fp: u64,
    next_pc: u64,
}

/// The first JavaScript frame among the [`JS_CALLER_DEPTH`] frames above the probed call: the
/// JavaScript that made the handle, if not the event loop. The code addresses of the frames
/// read go into `stack`'s native frames. The look ends early at a frame called from V8's
/// `InvokeApiFunction`: native code made the handle through V8 (node's event loop accepting a
/// connection: `OnConnection`, `TCPWrap::Instantiate`, V8's construction, `TCPWrap::New`),
/// which JavaScript does not; the frames above it are the event loop's.
#[inline(always)]
pub fn javascript_caller(
    ctx: &ProbeContext,
    layout: &V8Layout,
    stack: &mut JsStack,
) -> Option<Caller> {
    let [native_call_start, native_call_end] = layout.native_api_call;
    // SAFETY: the probe's saved registers. At the probed function's entry the frame pointer
    // is still its caller's, and the return address into that caller is at the stack pointer.
    let (ip, sp, mut fp) = unsafe { ((*ctx.regs).rip, (*ctx.regs).rsp, (*ctx.regs).rbp) };
    // The caller's code address (at the stack pointer) is read only once the look has found
    // JavaScript: most handles a server makes have none. The hash takes it, and the probed
    // function's address, after the frames the look read.
    stack.hash = FNV_OFFSET;
    // Frame `depth` (the one at `fp`) is at the stack's address `depth + 1`.
    for depth in 0..JS_CALLER_DEPTH as usize {
        let window = read_window(fp)?;
        if let Some(shared) = function_shared(
            layout,
            window[slot(V8_FP_CONTEXT)],
            window[slot(V8_FP_FUNCTION)],
        ) {
            // SAFETY: reads the traced process's memory; a fault only makes the read fail.
            let caller_pc: u64 = unsafe { bpf_probe_read_user(sp as *const u64) }.ok()?;
            record(stack, 0, ip);
            record(stack, 1, caller_pc);
            return Some(Caller {
                frame: js_frame(&window, shared, depth + 1),
                next_fp: window[SAVED_FP],
                next_pc: window[RETURN_ADDRESS],
            });
        }
        let pc = window[RETURN_ADDRESS];
        if (native_call_start..native_call_end).contains(&pc) {
            return None;
        }
        record(stack, depth + 2, pc);
        fp = window[SAVED_FP];
    }
    None
}

/// The words of the frame at `fp` the walk reads, if `fp` can be a frame pointer and they
/// can be read.
#[inline(always)]
fn read_window(fp: u64) -> Option<[u64; WINDOW_WORDS]> {
    if fp < BELOW || fp & 7 != 0 {
        return None;
    }
    // SAFETY: reads the traced process's memory; a fault only makes the read fail.
    unsafe { bpf_probe_read_user((fp - BELOW) as *const [u64; WINDOW_WORDS]) }.ok()
}

/// Walks on from `caller` (found by [`javascript_caller`], which filled `stack`'s first native
/// frames) to the end of the stack, keeping the JavaScript frames and every code address, and
/// stores the whole: the key in `JS_STACKS`, or [`NO_JS_STACK`] when it could not be kept
/// (counted).
#[inline(always)]
pub fn js_stack(caller: &Caller, pid: u32, layout: &V8Layout, stack: &mut JsStack) -> u32 {
    // The counts and hash live in the map value, not in registers: the verifier does not
    // follow a map value's contents, so walks that found different numbers of frames are one
    // state to it, not one per count (which made the program too complex to load). The look
    // found its frame at one of a few known depths, each a state of its own to the
    // verifier wherever the depth bounds an index: so the index too is read back from there.
    stack.count = 0;
    keep(stack, caller.frame);
    stack.native_count = u32::from(caller.frame.depth) + 1;
    let mut fp = caller.next_fp;
    let mut pc = caller.next_pc;
    for _ in 1..JS_WALK_DEPTH {
        if pc == 0 {
            break;
        }
        // SAFETY: a field of this CPU's scratch value.
        let index = unsafe { core::ptr::read_volatile(&stack.native_count) } as usize;
        if index >= JS_NATIVE_FRAMES {
            break;
        }
        record(stack, index, pc);
        stack.native_count = index as u32 + 1;
        let Some(window) = read_window(fp) else {
            break;
        };
        if let Some(shared) = function_shared(
            layout,
            window[slot(V8_FP_CONTEXT)],
            window[slot(V8_FP_FUNCTION)],
        ) {
            keep(stack, js_frame(&window, shared, index));
        }
        pc = window[RETURN_ADDRESS];
        fp = window[SAVED_FP];
    }
    mix(stack, u64::from(pid));
    let hash = stack.hash;
    stack.pid = pid;
    // Frames past the counts are a former walk's; userspace reads the counts' worth.
    let key = (hash as u32).max(1);
    if JS_STACKS
        .insert(&key, stack, u64::from(BPF_NOEXIST))
        .is_ok()
    {
        return key;
    }
    // SAFETY: a map value, valid for the program's run.
    match unsafe { JS_STACKS.get(&key) } {
        Some(kept) if kept.hash == hash => key,
        _ => {
            count(Stat::JsStacksLost);
            NO_JS_STACK
        }
    }
}

/// Keeps `pc` as the stack's code address `index`, in the stack's hash too.
#[inline(always)]
fn record(stack: &mut JsStack, index: usize, pc: u64) {
    if let Some(address) = stack.native.get_mut(index) {
        *address = pc;
        mix(stack, pc);
    }
}

/// Adds `word` to the stack's hash (FNV-1a over words). Kept in the map value, like the
/// counts: the verifier does not follow it there.
#[inline(always)]
fn mix(stack: &mut JsStack, word: u64) {
    stack.hash = (stack.hash ^ word).wrapping_mul(FNV_PRIME);
}

/// The JavaScript frame whose words are `window`, at the stack's address `depth`.
#[inline(always)]
fn js_frame(window: &[u64; WINDOW_WORDS], shared: u64, depth: usize) -> JsFrame {
    let offset = window[slot(V8_FP_BYTECODE_OFFSET)];
    JsFrame {
        shared,
        bytecode_offset: if offset & SMI_TAG_MASK == 0 {
            (offset >> 32) as i32
        } else {
            -1
        },
        depth: depth as u16,
        _pad: 0,
    }
}

/// Adds `frame` to the walk's JavaScript frames and hash, while there is room. Its code
/// address is in the hash already.
#[inline(always)]
fn keep(stack: &mut JsStack, frame: JsFrame) {
    // SAFETY: a field of this CPU's scratch value, read from there (see `js_stack`).
    let count = unsafe { core::ptr::read_volatile(&stack.count) };
    if let Some(slot) = stack.frames.get_mut(count as usize) {
        *slot = frame;
        for word in [
            frame.shared,
            frame.bytecode_offset as u64,
            u64::from(frame.depth),
        ] {
            mix(stack, word);
        }
        stack.count = count + 1;
    }
}

/// The window's index of the word at `offset` from the frame pointer.
const fn slot(offset: i16) -> usize {
    ((offset as i64 + BELOW as i64) / 8) as usize
}

const _: () = assert!(slot(V8_FP_BYTECODE_OFFSET) < SAVED_FP && slot(V8_FP_CONTEXT) < SAVED_FP);

/// Whether `word` can be a pointer to a V8 heap object: tagged as one, aligned as objects are,
/// and in the process's part of the address space above the pages mapping never gives. A
/// native frame's words that only look tagged (a small count, a code address) would have the
/// reads that follow fault, and a fault is most of what a walk through native frames costs.
#[inline(always)]
fn heap_object(word: u64) -> bool {
    word & OBJECT_ALIGNMENT_MASK == HEAP_OBJECT_TAG
        && (LOWEST_MAPPING..USER_SPACE_END).contains(&word)
}

/// The tagged SharedFunctionInfo of the frame's function, if the frame is a JavaScript one:
/// a heap object as its context (V8's own frames keep a small-integer type marker there) and
/// a `JSFunction` as its function.
#[inline(always)]
fn function_shared(layout: &V8Layout, context: u64, function: u64) -> Option<u64> {
    if !heap_object(context) || !heap_object(function) {
        return None;
    }
    let object = function - HEAP_OBJECT_TAG;
    // SAFETY: reads the traced process's memory through the probe helper, which fails rather
    // than faults on an address that cannot be read; a u64 is valid for any bits.
    let map: u64 =
        unsafe { bpf_probe_read_user((object + u64::from(layout.object_map)) as *const u64) }
            .ok()?;
    if map & HEAP_OBJECT_TAG_MASK != HEAP_OBJECT_TAG {
        return None;
    }
    // SAFETY: as above (a u16).
    let instance_type: u16 = unsafe {
        bpf_probe_read_user(
            (map - HEAP_OBJECT_TAG + u64::from(layout.map_instance_type)) as *const u16,
        )
    }
    .ok()?;
    if !(layout.first_function_type..=layout.last_function_type).contains(&instance_type) {
        return None;
    }
    // SAFETY: as above.
    let shared: u64 =
        unsafe { bpf_probe_read_user((object + u64::from(layout.function_shared)) as *const u64) }
            .ok()?;
    (shared & HEAP_OBJECT_TAG_MASK == HEAP_OBJECT_TAG).then_some(shared)
}
