//! Node.js's JavaScript frames without perf maps. In an incident node runs without
//! `--perf-basic-prof`, so nothing names the code V8 generated. But node exports V8's own
//! layout description (`layout.rs`), the kernel walk keeps each JavaScript frame's
//! SharedFunctionInfo (`sockleak-ebpf/src/v8.rs`), and the heap says the rest (`heap.rs`):
//! the function's name, its script, and the line of the call the frame was in.
//!
//! The scans that attach the libuv uprobes (`hooks/libuv.rs`) read each node binary's layout
//! once and tell the kernel (the `V8_LAYOUTS` map) and the symbolizer ([`V8Processes`]) which
//! process has which.
pub mod heap;
pub mod layout;

use std::{
    collections::HashMap,
    sync::{Arc, Mutex},
};

use sockleak_common::JsStack;

use self::{
    heap::{Heap, LineEnds, ProcessMemory},
    layout::Layout,
};

/// Set in the environment, it makes every V8 layout unreadable: the tests' way to see what a
/// node version sockleak does not understand looks like.
pub const TEST_UNSUPPORTED: &str = "SOCKLEAK_TEST_V8_UNSUPPORTED";

/// A binary's layout, or why it could not be read (said per group in reports).
pub type LayoutOf = Arc<Result<Layout, String>>;

/// The V8 layout of each process found running node, by pid, and since when (CLOCK_MONOTONIC
/// ns) sockleak had it: written by the scans, read by the symbolizer's thread and by reports
/// (a socket made before then has neither JavaScript frames nor its handle's stack).
#[derive(Clone, Default)]
pub struct V8Processes(Arc<Mutex<HashMap<u32, (LayoutOf, u64)>>>);

impl V8Processes {
    pub fn set(&self, pid: u32, layout: LayoutOf) {
        if let Ok(mut map) = self.0.lock() {
            map.entry(pid)
                .and_modify(|(known, _)| *known = Arc::clone(&layout))
                .or_insert_with(|| (layout, crate::procfs::monotonic_ns()));
        }
    }

    pub fn get(&self, pid: u32) -> Option<LayoutOf> {
        self.0
            .lock()
            .ok()?
            .get(&pid)
            .map(|(layout, _)| Arc::clone(layout))
    }

    /// Since when process `pid` has been ready: its probes and layout in place.
    pub fn ready_since(&self, pid: u32) -> Option<u64> {
        self.0.lock().ok()?.get(&pid).map(|&(_, since)| since)
    }

    /// Forgets the processes `keep` says are gone.
    pub fn retain(&self, keep: impl Fn(u32) -> bool) {
        if let Ok(mut map) = self.0.lock() {
            map.retain(|&pid, _| keep(pid));
        }
    }
}

/// One JavaScript frame, named: where it sits in the native stack, and its name.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NamedFrame {
    /// The native stack's index of the frame.
    pub depth: usize,
    /// `JS:function (script:line)`.
    pub name: String,
}

/// Names `stack`'s frames from its process's heap. Frames that fail a check are left out, and
/// the first failure is returned with how many failed.
pub fn name_frames(
    stack: &JsStack,
    layout: &Layout,
    lines: &mut LineEnds,
) -> (Vec<NamedFrame>, Option<(usize, String)>) {
    let heap = Heap {
        memory: ProcessMemory(stack.pid),
        layout,
    };
    let mut named = Vec::new();
    let mut failed: Option<(usize, String)> = None;
    for frame in stack.frames.iter().take(stack.count as usize) {
        match heap.function(frame.shared, frame.bytecode_offset, lines) {
            Ok(function) => named.push(NamedFrame {
                depth: usize::from(frame.depth),
                name: frame_name(&function),
            }),
            Err(err) => match &mut failed {
                Some((count, _)) => *count += 1,
                None => failed = Some((1, format!("{err:#}"))),
            },
        }
    }
    (named, failed)
}

/// `JS:name (script:line)`, as the perf-map frames read (`JS:` first), with the line the way
/// native frames show theirs; `<anonymous>` as V8's own stack traces say.
fn frame_name(f: &heap::JsFunction) -> String {
    let name = if f.name.is_empty() {
        "<anonymous>"
    } else {
        &f.name
    };
    match f.line {
        Some(line) => format!("JS:{name} ({}:{line})", f.script),
        None => format!("JS:{name} ({})", f.script),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frames_read_like_native_ones() {
        let mut f = heap::JsFunction {
            name: "handleRequest".into(),
            script: "/srv/app.js".into(),
            line: Some(30),
        };
        assert_eq!(frame_name(&f), "JS:handleRequest (/srv/app.js:30)");
        f.name.clear();
        f.line = None;
        assert_eq!(frame_name(&f), "JS:<anonymous> (/srv/app.js)");
    }
}
