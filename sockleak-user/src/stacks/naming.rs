//! Naming a stack's addresses: blazesym for ELF symbols, perf maps for JIT code, V8's heap for
//! JavaScript.
//!
//! JIT runtimes write their perf maps (`/tmp/perf-PID.map`) lazily, so a JavaScript frame
//! unknown at creation is usually known a few seconds later: a frame nobody could name is
//! counted, for the cache to try again. The maps are read here ([`super::perf_map`]), not by
//! blazesym, which believes whoever wrote them. Where node runs without perf maps, the
//! JavaScript frames the kernel walk found (`JS_STACKS`) are named from the process's heap
//! ([`crate::v8`]) and take the place of the native frames V8's code has there.
use std::{
    collections::{HashMap, HashSet},
    path::{Path, PathBuf},
    sync::Arc,
};

use blazesym::symbolize::{
    Input, Symbolized, Symbolizer,
    source::{Elf, Process, Source},
};
use sockleak_common::{JsStack, NO_JS_STACK};

use super::{
    identity::StackKey,
    perf_map::{self, PerfMaps},
    unwind::{MappedObject, Unwound},
};
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
    /// What the frames lack and why, for people (JavaScript frames left unnamed, a perf map
    /// refused).
    pub note: Option<Arc<str>>,
}

/// Names stacks' frames; lives on the symbolizer's thread (blazesym's symbolizer is not Send).
pub struct Namer {
    symbolizer: Symbolizer,
    v8: V8Processes,
    /// Scripts' line ends, by process (a few processes' worth).
    lines: HashMap<u32, LineEnds>,
    perf_maps: PerfMaps,
    /// Files named through an unwinding's open objects since the symbolizer was made.
    elf_paths: HashSet<PathBuf>,
}

/// Files the symbolizer may keep open for unwound stacks before it is made anew.
const ELF_PATHS_KEPT: usize = 256;

impl Namer {
    /// Names JavaScript frames with the layouts in `v8`.
    pub fn new(v8: V8Processes) -> Self {
        Self {
            symbolizer: Symbolizer::new(),
            v8,
            lines: HashMap::new(),
            perf_maps: PerfMaps::default(),
            elf_paths: HashSet::new(),
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
        let lookup = looked_up_at(user);
        let process = Source::Process(Process {
            // Read by `name_jit_frames`, which first checks whose the map is.
            perf_map: false,
            ..Process::new(key.pid.into())
        });
        let mut user_frames = self.names(&process, Input::AbsAddr(&lookup));
        // Before the JavaScript frames: a frame a perf map names keeps that name.
        let perf_map_note = self.name_jit_frames(key.pid, &lookup, &mut user_frames);
        let js_note = if key.js != NO_JS_STACK || key.handle {
            self.name_js_frames(key, js_stack, &mut user_frames)
        } else {
            None
        };
        finish(user_frames, user, joined(js_note, perf_map_note))
    }

    /// Names a stack unwound from a copy: each frame in a file through the file the process
    /// mapped ([`MappedObject::fd_path`], open since the unwinding: a library unloaded since
    /// still names its frames), JIT code from the perf map. A frame in a file that has no
    /// symbol for it is named by the file and offset, which is all there is to know.
    pub fn name_unwound(&mut self, key: &StackKey, unwound: &Unwound) -> Named {
        let frames = &unwound.frames;
        let user: Vec<u64> = frames.iter().map(|f| f.address).collect();
        let lookup = looked_up_at(&user);
        let mut user_frames: Vec<Option<Vec<String>>> = vec![None; frames.len()];
        let mut by_object: HashMap<*const MappedObject, (&Arc<MappedObject>, Vec<usize>)> =
            HashMap::new();
        for (i, frame) in frames.iter().enumerate() {
            if let Some(object) = &frame.object {
                by_object
                    .entry(Arc::as_ptr(object))
                    .or_insert_with(|| (object, Vec::new()))
                    .1
                    .push(i);
            }
        }
        for (object, at) in by_object.into_values() {
            // As for addresses: a return address is looked up a byte before.
            let offsets: Vec<u64> = at
                .iter()
                .map(|&i| frames[i].file_offset.saturating_sub(u64::from(i > 0)))
                .collect();
            let path = object.fd_path();
            if self.elf_paths.insert(path.clone()) && self.elf_paths.len() > ELF_PATHS_KEPT {
                // blazesym keeps every file it read open: let them go now and then.
                self.symbolizer = Symbolizer::new();
                self.elf_paths.clear();
            }
            let source = Source::Elf(Elf::new(path));
            let names = self.names(&source, Input::FileOffset(&offsets));
            for ((&i, names), offset) in at.iter().zip(names).zip(&offsets) {
                user_frames[i] =
                    Some(names.unwrap_or_else(|| {
                        vec![format!("{}+0x{offset:x}", file_name(object.path()))]
                    }));
            }
        }
        let perf_map_note = self.name_jit_frames(key.pid, &lookup, &mut user_frames);
        let truncated = unwound
            .truncated
            .as_ref()
            .map(|why| Arc::<str>::from(format!("the stack ends early: {why}")));
        finish(user_frames, &user, joined(truncated, perf_map_note))
    }
}

/// Where each frame is named: every frame but the first holds a return address, which points
/// after the call; the byte before it is inside the call instruction, on the caller's line.
fn looked_up_at(user: &[u64]) -> Vec<u64> {
    user.iter()
        .enumerate()
        .map(|(i, &a)| if i == 0 { a } else { a.saturating_sub(1) })
        .collect()
}

/// Two notes as one.
fn joined(first: Option<Arc<str>>, second: Option<Arc<str>>) -> Option<Arc<str>> {
    match (first, second) {
        (Some(a), Some(b)) => Some(format!("{a}; {b}").into()),
        (a, b) => a.or(b),
    }
}

/// The last component of `path`.
fn file_name(path: &str) -> &str {
    path.rsplit('/').next().unwrap_or(path)
}

/// The named frames of a stack at `user`'s addresses, each unnamed one kept as its address.
fn finish(
    mut user_frames: Vec<Option<Vec<String>>>,
    user: &[u64],
    note: Option<Arc<str>>,
) -> Named {
    let mut named = Named {
        note,
        ..Named::default()
    };
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

impl Namer {
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

    /// Names from the process's perf map the frames blazesym left unknown in memory no file
    /// backs, the only ones its own perf-map support looked up: JIT code is there, and a
    /// file's code is named by its symbols or not at all. Returns, in words, why a map that
    /// exists was not read, once for the stack.
    fn name_jit_frames(
        &mut self,
        pid: u32,
        lookup: &[u64],
        frames: &mut [Option<Vec<String>>],
    ) -> Option<Arc<str>> {
        if frames.iter().all(Option::is_some) {
            return None; // most stacks: nothing to read
        }
        let anonymous = perf_map::anonymous_ranges(pid);
        let in_jit_code = |addr: u64| anonymous.iter().any(|&(s, e)| (s..e).contains(&addr));
        let wanted: Vec<(usize, u64)> = frames
            .iter()
            .zip(lookup)
            .enumerate()
            .filter(|(_, (frame, addr))| frame.is_none() && in_jit_code(**addr))
            .map(|(i, (_, &addr))| (i, addr))
            .collect();
        if wanted.is_empty() {
            return None;
        }
        let map = match self.perf_maps.of(pid) {
            Ok(Some(map)) => map,
            Ok(None) => return None,
            Err(why) => return Some(format!("JIT frames not named: {why}").into()),
        };
        for (i, addr) in wanted {
            if let (Some(slot), Some(name)) = (frames.get_mut(i), map.name(addr)) {
                *slot = Some(vec![frame_name(name, None)]);
            }
        }
        None
    }

    /// The frames at each of `lookup`'s addresses, innermost first (a function and the ones
    /// inlined into it), or `None` when unknown.
    fn names(&self, source: &Source, lookup: Input<&[u64]>) -> Vec<Option<Vec<String>>> {
        let count = match lookup {
            Input::AbsAddr(a) | Input::VirtOffset(a) | Input::FileOffset(a) => a.len(),
        };
        if count == 0 {
            return Vec::new();
        }
        let symbolized = match self.symbolizer.symbolize(source, lookup) {
            Ok(s) => s,
            Err(err) => {
                log::debug!("symbolizing {count} addresses: {err}");
                return vec![None; count];
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

    /// Removes our own process's perf map, however the test ends.
    struct OurPerfMap(std::path::PathBuf);

    impl Drop for OurPerfMap {
        fn drop(&mut self) {
            let _ = std::fs::remove_file(&self.0);
        }
    }

    /// This test process as a JIT runtime: its perf map names an address in memory no file
    /// backs, and neither one in a file's code (the file's symbols name it) nor one in the
    /// stack, as when blazesym read the maps; given to another user, the map names nothing
    /// and the stack says why.
    #[test]
    fn a_perf_map_names_jit_code_only_and_a_refused_one_says_why() {
        use std::os::unix::fs::PermissionsExt;

        use sockleak_common::NO_JS_STACK;

        use crate::stacks::identity::NativeFrames;

        let pid = std::process::id();
        // SAFETY: a fresh private anonymous page, unmapped below; nothing else refers to it.
        let page = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                4096,
                libc::PROT_READ,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
                -1,
                0,
            )
        };
        assert_ne!(page, libc::MAP_FAILED);
        let jit = page as u64;
        let ours = without_v8_tier as *const () as u64;
        let maps = std::fs::read_to_string("/proc/self/maps").unwrap();
        let stack_line = maps.lines().find(|l| l.ends_with("[stack]")).unwrap();
        let in_stack = u64::from_str_radix(stack_line.split('-').next().unwrap(), 16).unwrap();
        let map = OurPerfMap(format!("/tmp/perf-{pid}.map").into());
        std::fs::write(
            &map.0,
            format!(
                "{jit:x} 100 JS:~jitted /app/x.js:1:1\n{ours:x} 10 JS:~impostor\n\
                 {in_stack:x} 100 JS:~on-the-stack\n"
            ),
        )
        .unwrap();
        // Whatever the umask: a map its group may write is refused.
        std::fs::set_permissions(&map.0, std::fs::Permissions::from_mode(0o644)).unwrap();
        let key = StackKey {
            pid,
            native: NativeFrames::Stacks(0),
            sp_word: 0,
            handle: false,
            js: NO_JS_STACK,
        };
        let mut namer = Namer::new(V8Processes::default());
        // Frames past the first are return addresses: looked up a byte before.
        let stack = [jit + 8, in_stack + 9, ours + 1];

        let named = namer.name(&key, &stack, || None);
        assert_eq!(
            named.frames[0], "JS:jitted /app/x.js:1:1",
            "{:?}",
            named.frames
        );
        assert_eq!(named.frames[1], format!("0x{:x} [unknown]", in_stack + 9));
        assert!(
            named.frames[2].contains("without_v8_tier"),
            "{:?}",
            named.frames
        );
        assert_eq!((named.unknown, named.note), (1, None));

        let file = std::fs::File::open(&map.0).unwrap();
        std::os::unix::fs::fchown(&file, Some(12345), None)
            .expect("fchown: run the unit tests as root");
        let named = namer.name(&key, &stack, || None);
        assert_eq!(named.frames[0], format!("0x{:x} [unknown]", jit + 8));
        assert_eq!(named.unknown, 2);
        // SAFETY: geteuid has no preconditions.
        let euid = unsafe { libc::geteuid() };
        assert_eq!(
            named.note.as_deref(),
            Some(&*format!(
                "JIT frames not named: /tmp/perf-{pid}.map is owned by uid 12345, not the \
                 process's user (uid {euid}) or root"
            ))
        );
        // SAFETY: the page mapped above, no longer used.
        unsafe { libc::munmap(page, 4096) };
    }
}
