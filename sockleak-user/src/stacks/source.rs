//! Where a stack's addresses come from: the kernel's `STACKS`, `WALKED_STACKS` and
//! `JS_STACKS` maps.
//!
//! A frame-pointer walk skips the caller of a frameless leaf (glibc's `socket()` and
//! `accept4()` wrappers push no frame); the word the kernel read at the stack pointer
//! ([`StackKey::sp_word`]) puts it back when `/proc/PID/maps` says it is code.
use std::collections::HashMap;

use aya::maps::{HashMap as BpfHashMap, MapData, StackTraceMap};
use sockleak_common::{JsStack, NO_JS_STACK, WalkedStack};

use super::identity::{NativeFrames, StackKey};
use crate::procfs;

/// The kernel's stack maps: `WALKED_STACKS` and `JS_STACKS` may be absent (older kernels, no
/// libuv uprobes).
pub struct StackMaps {
    pub stacks: StackTraceMap<MapData>,
    pub walked: Option<BpfHashMap<MapData, u32, WalkedStack>>,
    pub js: Option<BpfHashMap<MapData, u32, JsStack>>,
}

/// The stacks the kernel walked, read from its maps once each.
pub struct KernelStacks {
    map: StackTraceMap<MapData>,
    walked_stacks: Option<BpfHashMap<MapData, u32, WalkedStack>>,
    js_stacks: Option<BpfHashMap<MapData, u32, JsStack>>,
    /// Stack ids and walked stacks' keys never change meaning (nothing deletes from `STACKS`
    /// or `WALKED_STACKS`): each is read once.
    addresses: HashMap<NativeFrames, Vec<u64>>,
    /// Nor do JavaScript stack keys (nothing deletes from `JS_STACKS`).
    js: HashMap<u32, Option<Box<JsStack>>>,
}

impl KernelStacks {
    pub fn new(maps: StackMaps) -> Self {
        Self {
            map: maps.stacks,
            walked_stacks: maps.walked,
            js_stacks: maps.js,
            addresses: HashMap::new(),
            js: HashMap::new(),
        }
    }

    /// The user-space code addresses of `key`, innermost first, with the leaf caller the
    /// walk skipped put back; none when the stack cannot be read.
    pub fn addresses(&mut self, key: &StackKey) -> Vec<u64> {
        let mut user = match key.native {
            in_a_map @ (NativeFrames::Stacks(_) | NativeFrames::Walked(_)) => {
                self.addresses_of(in_a_map)
            }
            NativeFrames::InJsStack => self
                .js_stack(key.js)
                .map(|stack| native_frames(&stack).to_vec())
                .unwrap_or_default(),
            // Not the kernel's: unwound from copies (`super::copies`).
            NativeFrames::Copied(_) | NativeFrames::Unwound(_) => Vec::new(),
        };
        if let Some(word) = leaf_caller(&user, key.sp_word, || executable_ranges(key.pid)) {
            user.insert(1, word);
        }
        user
    }

    /// The JavaScript frames the kernel walk found under key `id` in `JS_STACKS`.
    pub fn js_stack(&mut self, id: u32) -> Option<Box<JsStack>> {
        if id == NO_JS_STACK {
            return None;
        }
        let map = self.js_stacks.as_ref()?;
        self.js
            .entry(id)
            .or_insert_with(|| match map.get(&id, 0) {
                Ok(stack) => Some(Box::new(stack)),
                Err(err) => {
                    log::debug!("reading JavaScript stack {id}: {err}");
                    None
                }
            })
            .clone()
    }

    /// The addresses of a stack in `STACKS` or `WALKED_STACKS`, read once.
    fn addresses_of(&mut self, frames: NativeFrames) -> Vec<u64> {
        let (stacks, walked) = (&self.map, &self.walked_stacks);
        self.addresses
            .entry(frames)
            .or_insert_with(|| {
                let read = match frames {
                    NativeFrames::Stacks(id) => stacks
                        .get(&id, 0)
                        .map(|trace| trace.frames().iter().map(|f| f.ip).collect()),
                    NativeFrames::Walked(key) => match walked {
                        Some(walked) => walked
                            .get(&key, 0)
                            .map(|stack| walked_frames(&stack).to_vec()),
                        None => Ok(Vec::new()),
                    },
                    NativeFrames::InJsStack
                    | NativeFrames::Copied(_)
                    | NativeFrames::Unwound(_) => Ok(Vec::new()),
                };
                read.unwrap_or_else(|err| {
                    log::debug!("reading stack {frames:?}: {err}");
                    Vec::new()
                })
            })
            .clone()
    }
}

/// The code addresses a walk by hand read.
fn walked_frames(stack: &WalkedStack) -> &[u64] {
    let count = (stack.count as usize).min(stack.frames.len());
    &stack.frames[..count]
}

/// The code addresses the kernel walk read with a JavaScript stack: the native stack of the
/// handle it was taken for.
fn native_frames(stack: &JsStack) -> &[u64] {
    let count = (stack.native_count as usize).min(stack.native.len());
    &stack.native[..count]
}

/// The caller a frame-pointer walk misses when the syscall was made from a frameless leaf
/// (glibc's `socket()` and `accept4()` wrappers push no frame): the return address the call
/// left at the stack pointer. Only taken when it is a code address, and not already the next
/// frame (a wrapper that does keep a frame).
/// `executable` (the process's code ranges) is only read when there is a word to judge.
fn leaf_caller(
    user: &[u64],
    sp_word: u64,
    executable: impl FnOnce() -> Vec<(u64, u64)>,
) -> Option<u64> {
    if user.is_empty() || sp_word == 0 || user.get(1) == Some(&sp_word) {
        return None;
    }
    executable()
        .iter()
        .any(|&(start, end)| (start..end).contains(&sp_word))
        .then_some(sp_word)
}

/// Address ranges of a process's executable mappings, from `/proc/PID/maps`.
fn executable_ranges(pid: u32) -> Vec<(u64, u64)> {
    procfs::maps_of(pid)
        .map(|maps| parse_executable_ranges(&maps))
        .unwrap_or_default()
}

fn parse_executable_ranges(maps: &str) -> Vec<(u64, u64)> {
    procfs::parse_maps(maps)
        .filter(|m| m.perms.contains('x'))
        .map(|m| (m.start, m.end))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    const MAPS: &str = "\
55d0c0a00000-55d0c0a01000 r--p 00000000 fe:01 123 /usr/bin/leaky
55d0c0a01000-55d0c0a02000 r-xp 00001000 fe:01 123 /usr/bin/leaky
7f0000000000-7f0000100000 rw-p 00000000 00:00 0
7ffd00000000-7ffd00021000 rw-p 00000000 00:00 0 [stack]
";

    #[test]
    fn executable_ranges_come_from_x_mappings_only() {
        assert_eq!(
            parse_executable_ranges(MAPS),
            vec![(0x55d0c0a01000, 0x55d0c0a02000)]
        );
        assert!(parse_executable_ranges("garbage\n\n").is_empty());
    }

    #[test]
    fn the_leaf_caller_is_a_code_address_not_already_on_the_stack() {
        let exec = || parse_executable_ranges(MAPS);
        let user = [0x7f00_0000_0dc7, 0x55d0c0a01500];
        // The return address into the caller of socket(): inserted.
        assert_eq!(
            leaf_caller(&user, 0x55d0c0a01234, exec),
            Some(0x55d0c0a01234)
        );
        // A saved frame pointer or data (a wrapper that keeps a frame): not code, ignored.
        assert_eq!(leaf_caller(&user, 0x7ffd00000100, exec), None);
        // Already the next frame.
        assert_eq!(leaf_caller(&user, 0x55d0c0a01500, exec), None);
        assert_eq!(
            leaf_caller(&user, 0, || unreachable!("no word, no maps read")),
            None
        );
        assert_eq!(
            leaf_caller(&[], 0x55d0c0a01234, || unreachable!(
                "no stack, no maps read"
            )),
            None
        );
    }

    proptest::proptest! {
        #[test]
        fn maps_parser_never_panics_and_keeps_ranges_ordered(text in ".*") {
            for (start, end) in parse_executable_ranges(&text) {
                proptest::prop_assert!(start < end);
            }
        }
    }
}
