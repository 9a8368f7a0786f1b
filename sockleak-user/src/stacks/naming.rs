//! Naming a stack's addresses: blazesym for ELF symbols and perf maps, V8's heap for JavaScript.
//!
//! JIT runtimes write their perf maps (`/tmp/perf-PID.map`) lazily, so a JavaScript frame
//! unknown at creation is usually known a few seconds later: a frame nobody could name is
//! counted, for the cache to try again. Where node runs without perf maps, the JavaScript
//! frames the kernel walk found (`JS_STACKS`) are named from the process's heap
//! ([`crate::v8`]) and take the place of the native frames V8's code has there.
use std::{collections::HashMap, path::Path, sync::Arc};

use blazesym::symbolize::{
    Input, Symbolized, Symbolizer,
    source::{Process, Source},
};
use sockleak_common::{JsStack, NO_JS_STACK};

use super::identity::StackKey;
use crate::v8::{self, V8Processes, heap::LineEnds};

/// Processes, and scripts per process, whose line ends are kept.
const LINES_PROCESSES: usize = 64;
const LINES_SCRIPTS: usize = 256;

/// A stack's frames, named as far as they could be.
#[derive(Default)]
pub struct Named {
    /// Innermost frame first; one nobody could name is its address.
    pub frames: Vec<String>,
    /// Frames that could not be named.
    pub unknown: usize,
    /// What the frames lack and why, for people (JavaScript frames left unnamed).
    pub note: Option<Arc<str>>,
}

/// Names stacks' frames; lives on the symbolizer's thread (blazesym's symbolizer is not Send).
pub struct Namer {
    symbolizer: Symbolizer,
    v8: V8Processes,
    /// Scripts' line ends, by process (a few processes' worth).
    lines: HashMap<u32, LineEnds>,
}

impl Namer {
    /// Names JavaScript frames with the layouts in `v8`.
    pub fn new(v8: V8Processes) -> Self {
        Self {
            symbolizer: Symbolizer::new(),
            v8,
            lines: HashMap::new(),
        }
    }

    /// Names the frames at `user`, the code addresses of `key`; `js_stack` gives the
    /// JavaScript frames the kernel walk found, read only when they can be named.
    pub fn name(
        &mut self,
        key: &StackKey,
        user: &[u64],
        js_stack: impl FnOnce() -> Option<Box<JsStack>>,
    ) -> Named {
        let mut named = Named::default();
        let process = Source::Process(Process::new(key.pid.into()));
        let mut user_frames = self.names(&process, user);
        if key.js != NO_JS_STACK || key.handle {
            named.note = self.name_js_frames(key, js_stack, &mut user_frames);
        }
        // Past code built without frame pointers the walk reads whatever is on the stack: a
        // tail of unknown addresses that differs from call to call, or ends early. It is cut,
        // so one call path is one group however far each walk got.
        if let Some(last) = user_frames.iter().rposition(Option::is_some) {
            user_frames.truncate(last + 1);
        }
        for (names, addr) in user_frames.into_iter().zip(user) {
            match names {
                Some(names) => named.frames.extend(names),
                None => {
                    // Kept with its address, so it stays traceable by hand; retried, since a
                    // JIT runtime may name it later.
                    named.unknown += 1;
                    named.frames.push(format!("0x{addr:x} [unknown]"));
                }
            }
        }
        named
    }

    /// Puts the names of the JavaScript frames of `key` in place of the native frames at the
    /// same depth (V8's code, unnamed or named after a builtin such as the interpreter's
    /// trampoline). A frame a perf map named keeps that name: the runtime's own word comes
    /// first. Returns what is missing, in words, when something is.
    fn name_js_frames(
        &mut self,
        key: &StackKey,
        js_stack: impl FnOnce() -> Option<Box<JsStack>>,
        frames: &mut [Option<Vec<String>>],
    ) -> Option<Arc<str>> {
        let layout = self.v8.get(key.pid)?;
        let layout = match &*layout {
            Ok(layout) => layout,
            Err(why) => return Some(format!("JavaScript frames not named: {why}").into()),
        };
        let stack = js_stack()?;
        if self.lines.len() >= LINES_PROCESSES && !self.lines.contains_key(&stack.pid) {
            self.lines.clear();
        }
        let lines = self.lines.entry(stack.pid).or_default();
        if lines.len() >= LINES_SCRIPTS {
            lines.clear();
        }
        let (named, failed) = v8::name_frames(&stack, layout, lines);
        for frame in named {
            match frames.get_mut(frame.depth) {
                Some(slot) => {
                    let from_perf_map = slot
                        .as_ref()
                        .is_some_and(|names| names.iter().any(|n| n.starts_with("JS:")));
                    if !from_perf_map {
                        *slot = Some(vec![frame.name]);
                    }
                }
                None => log::debug!(
                    "JavaScript frame {} at depth {} is not in the native stack",
                    frame.name,
                    frame.depth
                ),
            }
        }
        failed.map(|(count, first)| {
            format!("{count} JavaScript frames could not be read from the heap: {first}").into()
        })
    }

    /// The frames at each address, innermost first (a function and the ones inlined into it),
    /// or `None` when unknown.
    fn names(&self, source: &Source, addrs: &[u64]) -> Vec<Option<Vec<String>>> {
        if addrs.is_empty() {
            return Vec::new();
        }
        // Every frame but the first holds a return address, which points after the call: the
        // byte before it is inside the call instruction, on the caller's line.
        let lookup: Vec<u64> = addrs
            .iter()
            .enumerate()
            .map(|(i, &a)| if i == 0 { a } else { a.saturating_sub(1) })
            .collect();
        let symbolized = match self.symbolizer.symbolize(source, Input::AbsAddr(&lookup)) {
            Ok(s) => s,
            Err(err) => {
                log::debug!("symbolizing {} addresses: {err}", addrs.len());
                return vec![None; addrs.len()];
            }
        };
        symbolized
            .into_iter()
            .map(|s| match s {
                Symbolized::Sym(sym) => {
                    // blazesym lists inlined functions outermost first; the innermost one is
                    // where the address really is.
                    let mut frames: Vec<String> = sym
                        .inlined
                        .iter()
                        .rev()
                        .map(|f| {
                            frame_name(&f.name, f.code_info.as_ref().map(|c| (&*c.file, c.line)))
                        })
                        .collect();
                    frames.push(frame_name(
                        &sym.name,
                        sym.code_info.as_deref().map(|c| (&*c.file, c.line)),
                    ));
                    Some(frames)
                }
                Symbolized::Unknown(_) => None,
            })
            .collect()
    }
}

/// `function (file:line)` when debug info says where, else `function`.
fn frame_name(name: &str, code: Option<(&std::ffi::OsStr, Option<u32>)>) -> String {
    let name = without_v8_tier(name);
    match code {
        Some((file, Some(line))) => {
            let file = Path::new(file)
                .file_name()
                .unwrap_or(file)
                .to_string_lossy();
            format!("{name} ({file}:{line})")
        }
        _ => name.into_owned(),
    }
}

/// V8 marks each perf-map name with the tier that compiled it (`JS:~f` interpreted, `^`
/// Sparkplug, `+` Maglev, `*` TurboFan). A function tiers up while a loop runs, so the same
/// call path would split into several groups; the marker is dropped.
fn without_v8_tier(name: &str) -> std::borrow::Cow<'_, str> {
    match name.strip_prefix("JS:") {
        Some(rest) if rest.starts_with(['~', '^', '+', '*']) => format!("JS:{}", &rest[1..]).into(),
        _ => name.into(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frames_name_their_line_when_debug_info_has_it() {
        use std::ffi::OsStr;
        assert_eq!(
            frame_name("open_leaky", Some((OsStr::new("/src/leaky.c"), Some(14)))),
            "open_leaky (leaky.c:14)"
        );
        assert_eq!(frame_name("main", Some((OsStr::new("x.c"), None))), "main");
        assert_eq!(
            frame_name("JS:~connect node:net:1", None),
            "JS:connect node:net:1"
        );
        assert_eq!(
            frame_name("JS:*connect node:net:1", None),
            "JS:connect node:net:1"
        );
        assert_eq!(frame_name("JS:^ node:net:2", None), "JS: node:net:2");
        assert_eq!(frame_name("JSON::parse", None), "JSON::parse");
    }
}
