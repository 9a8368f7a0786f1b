//! Creation stacks: read from the kernel's `STACKS` map and symbolized on a thread of their own,
//! so a slow symbolization (a large binary's DWARF, a Node.js perf map of many megabytes) never
//! delays event handling.
//!
//! Each distinct stack is symbolized once and cached. The event loop only notes the stack keys
//! it sees (a hash lookup); reports read whatever the cache holds. A stack with frames nobody
//! could name yet is retried at later reports: JIT runtimes write their perf maps
//! (`/tmp/perf-PID.map`) lazily, so a JavaScript frame unknown at creation is usually known a
//! few seconds later. Where node runs without perf maps, the JavaScript frames the kernel walk
//! found (`JS_STACKS`) are named from the process's heap ([`crate::v8`]) and take the place of
//! the native frames V8's code has there.
use std::{
    collections::{HashMap, HashSet},
    path::Path,
    sync::{
        Arc, Mutex,
        mpsc::{self, Receiver, Sender},
    },
    thread,
    time::Duration,
};

use aya::maps::{HashMap as BpfHashMap, MapData, StackTraceMap};
use blazesym::symbolize::{
    Input, Symbolized, Symbolizer,
    source::{Process, Source},
};
use sockleak_common::{JsStack, NO_JS_STACK, STACK_IN_JS_STACK, STACK_NOT_SAMPLED, SockEvent};

use crate::v8::{self, V8Processes, heap::LineEnds};

/// Which stack created a socket: its id in `STACKS`, the process whose address space the
/// addresses belong to, and the leaf fixup word ([`SockEvent::user_sp_word`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct StackKey {
    pub pid: u32,
    pub user: i32,
    pub sp_word: u64,
    /// Taken where a libuv handle was made (`uv_tcp_init`), not at the socket's syscall.
    pub handle: bool,
    /// The JavaScript frames found there (key in `JS_STACKS`), or [`NO_JS_STACK`].
    pub js: u32,
}

/// What sockleak knows of the code path that created a socket.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Default)]
pub enum CreationStack {
    /// None was taken: the socket predates sockleak, stacks are off, or the walk failed.
    #[default]
    Unknown,
    /// Deliberately not taken: its process was over its `--stack-rate` budget.
    NotSampled,
    Taken(StackKey),
}

impl CreationStack {
    /// The stack an event names: the one that made the socket's libuv handle where there is
    /// one (it names the program's code; the socket's own names the event loop), else the
    /// socket's own.
    pub fn of(ev: &SockEvent) -> Self {
        if ev.handle_stack_id >= 0 {
            return Self::Taken(StackKey {
                pid: ev.task.pid,
                user: ev.handle_stack_id,
                sp_word: 0,
                handle: true,
                js: ev.js_stack_id,
            });
        }
        match ev.user_stack_id {
            id if id >= 0 => Self::Taken(StackKey {
                pid: ev.task.pid,
                user: id,
                sp_word: ev.user_sp_word,
                handle: false,
                js: NO_JS_STACK,
            }),
            STACK_NOT_SAMPLED => Self::NotSampled,
            _ => Self::Unknown,
        }
    }

    pub fn key(self) -> Option<StackKey> {
        match self {
            Self::Taken(key) => Some(key),
            _ => None,
        }
    }
}

/// A symbolized stack, innermost frame first.
#[derive(Debug, Clone, Default)]
pub struct Stack {
    /// Shared: every group and report of this stack holds the same frames.
    pub frames: Arc<[String]>,
    /// Frames that could not be named yet; retried while the process lives.
    pub unknown: usize,
    /// What the frames lack and why, for people (JavaScript frames left unnamed).
    pub note: Option<Arc<str>>,
    attempts: u8,
}

/// Symbolizations of one stack before its unknown frames are taken as final.
const MAX_ATTEMPTS: u8 = 6;

impl Stack {
    /// Frames are missing and the attempts are not used up.
    fn worth_retrying(&self) -> bool {
        self.unknown > 0 && self.attempts < MAX_ATTEMPTS
    }
}

enum Request {
    Symbolize(StackKey),
    /// Answered once every request sent before it has been handled.
    Flush(mpsc::SyncSender<()>),
}

/// The event loop's handle on the symbolizer thread.
pub struct Stacks {
    requests: Sender<Request>,
    cache: Arc<Mutex<HashMap<StackKey, Arc<Stack>>>>,
    /// Keys already sent, so a busy socket factory costs one hash lookup per socket.
    noted: HashSet<StackKey, foldhash::fast::RandomState>,
}

#[derive(Debug, Default, Clone, Copy, serde::Serialize, serde::Deserialize)]
pub struct StackStats {
    /// Distinct creation stacks of the sockets in the table.
    pub stacks: usize,
    /// Of those, stacks with frames still unnamed.
    pub stacks_incomplete: usize,
}

impl Stacks {
    /// Starts the symbolizer thread over the kernel's stack maps (`JS_STACKS` may be absent,
    /// with the libuv uprobes), naming JavaScript frames with the layouts in `v8`.
    pub fn start(
        map: StackTraceMap<MapData>,
        js_stacks: Option<BpfHashMap<MapData, u32, JsStack>>,
        v8: V8Processes,
    ) -> std::io::Result<Self> {
        let (requests, rx) = mpsc::channel();
        let cache = Arc::new(Mutex::new(HashMap::new()));
        let worker_cache = Arc::clone(&cache);
        thread::Builder::new()
            .name("symbolize".into())
            .spawn(move || {
                Worker {
                    map,
                    js_stacks,
                    v8,
                    cache: worker_cache,
                    // Made on its thread: it is not Send.
                    symbolizer: Symbolizer::new(),
                    addresses: HashMap::new(),
                    js: HashMap::new(),
                    lines: HashMap::new(),
                }
                .run(rx)
            })?;
        Ok(Self {
            requests,
            cache,
            noted: HashSet::default(),
        })
    }

    /// Called for every event that carries a stack; queues stacks never seen before.
    pub fn note(&mut self, key: StackKey) {
        if self.noted.insert(key) {
            let _ = self.requests.send(Request::Symbolize(key));
        }
    }

    /// The stack of `key` as far as it is known, queueing another attempt when frames are
    /// missing.
    pub fn get(&self, key: &StackKey) -> Option<Arc<Stack>> {
        let stack = self.cache.lock().ok()?.get(key).cloned();
        if stack.as_ref().is_some_and(|s| s.worth_retrying()) {
            let _ = self.requests.send(Request::Symbolize(*key));
        }
        stack
    }

    /// Waits (at most `timeout`) until everything queued so far is symbolized: for the last
    /// report, which nobody gets a second look at.
    pub fn settle(&self, timeout: Duration) {
        let _ = self.flushed().recv_timeout(timeout);
    }

    /// Hears once everything queued so far is symbolized (or at once, disconnected, if the
    /// symbolizer is gone): for waiting on a blocking thread while the caller goes on.
    pub fn flushed(&self) -> mpsc::Receiver<()> {
        let (tx, rx) = mpsc::sync_channel(1);
        let _ = self.requests.send(Request::Flush(tx));
        rx
    }

    /// Forgets stacks no open socket refers to any more, so a long trace of short-lived
    /// processes does not accumulate them; one seen again is simply symbolized again.
    pub fn retain(&mut self, in_use: impl IntoIterator<Item = StackKey>) {
        let in_use: HashSet<StackKey> = in_use.into_iter().collect();
        self.noted.retain(|k| in_use.contains(k));
        if let Ok(mut cache) = self.cache.lock() {
            cache.retain(|k, _| in_use.contains(k));
        }
    }

    pub fn stats(&self) -> StackStats {
        let cache = self.cache.lock();
        StackStats {
            stacks: self.noted.len(),
            stacks_incomplete: cache.map_or(0, |c| c.values().filter(|s| s.unknown > 0).count()),
        }
    }
}

struct Worker {
    map: StackTraceMap<MapData>,
    js_stacks: Option<BpfHashMap<MapData, u32, JsStack>>,
    v8: V8Processes,
    cache: Arc<Mutex<HashMap<StackKey, Arc<Stack>>>>,
    symbolizer: Symbolizer,
    /// Stack ids never change meaning (userspace never deletes from `STACKS`): read each once.
    addresses: HashMap<i32, Vec<u64>>,
    /// Nor do JavaScript stack keys (nothing deletes from `JS_STACKS`).
    js: HashMap<u32, Option<Box<JsStack>>>,
    /// Scripts' line ends, by process (a few processes' worth).
    lines: HashMap<u32, LineEnds>,
}

/// Processes, and scripts per process, whose line ends are kept.
const LINES_PROCESSES: usize = 64;
const LINES_SCRIPTS: usize = 256;

impl Worker {
    fn run(mut self, requests: Receiver<Request>) {
        while let Ok(request) = requests.recv() {
            match request {
                Request::Symbolize(key) => self.symbolize(key),
                Request::Flush(done) => {
                    let _ = done.send(());
                }
            }
        }
    }

    fn symbolize(&mut self, key: StackKey) {
        let previous = self.cache.lock().ok().and_then(|c| c.get(&key).cloned());
        if previous.as_ref().is_some_and(|s| !s.worth_retrying()) {
            return; // a retry request raced with a successful attempt
        }
        let mut user = if key.user == STACK_IN_JS_STACK {
            self.js_stack(key.js)
                .map(|stack| native_frames(&stack).to_vec())
                .unwrap_or_default()
        } else {
            self.addresses_of(key.user)
        };
        if let Some(word) = leaf_caller(&user, key.sp_word, || executable_ranges(key.pid)) {
            user.insert(1, word);
        }
        let mut stack = Stack {
            attempts: previous.map_or(0, |s| s.attempts) + 1,
            ..Stack::default()
        };
        let mut frames = Vec::new();
        let process = Source::Process(Process::new(key.pid.into()));
        let mut user_frames = self.names(&process, &user);
        if key.js != NO_JS_STACK || key.handle {
            stack.note = self.name_js_frames(&key, &mut user_frames);
        }
        // Past code built without frame pointers the walk reads whatever is on the stack: a
        // tail of unknown addresses that differs from call to call, or ends early. It is cut,
        // so one call path is one group however far each walk got.
        if let Some(last) = user_frames.iter().rposition(Option::is_some) {
            user_frames.truncate(last + 1);
        }
        for (names, addr) in user_frames.into_iter().zip(&user) {
            match names {
                Some(names) => frames.extend(names),
                None => {
                    // Kept with its address, so it stays traceable by hand; retried, since a
                    // JIT runtime may name it later.
                    stack.unknown += 1;
                    frames.push(format!("0x{addr:x} [unknown]"));
                }
            }
        }
        stack.frames = frames.into();
        if let Ok(mut cache) = self.cache.lock() {
            cache.insert(key, Arc::new(stack));
        }
    }

    /// Puts the names of the JavaScript frames of `key` in place of the native frames at the
    /// same depth (V8's code, unnamed or named after a builtin such as the interpreter's
    /// trampoline). A frame a perf map named keeps that name: the runtime's own word comes
    /// first. Returns what is missing, in words, when something is.
    fn name_js_frames(
        &mut self,
        key: &StackKey,
        frames: &mut [Option<Vec<String>>],
    ) -> Option<Arc<str>> {
        let layout = self.v8.get(key.pid)?;
        let layout = match &*layout {
            Ok(layout) => layout,
            Err(why) => return Some(format!("JavaScript frames not named: {why}").into()),
        };
        let stack = self.js_stack(key.js)?;
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

    fn js_stack(&mut self, id: u32) -> Option<Box<JsStack>> {
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

    fn addresses_of(&mut self, id: i32) -> Vec<u64> {
        if id < 0 {
            return Vec::new();
        }
        let map = &self.map;
        self.addresses
            .entry(id)
            .or_insert_with(|| match map.get(&(id as u32), 0) {
                Ok(trace) => trace.frames().iter().map(|f| f.ip).collect(),
                Err(err) => {
                    log::debug!("reading stack {id}: {err}");
                    Vec::new()
                }
            })
            .clone()
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

/// The code addresses the kernel walk read with a JavaScript stack: the native stack of the
/// handle it was taken for.
fn native_frames(stack: &JsStack) -> &[u64] {
    let count = (stack.native_count as usize).min(stack.native.len());
    &stack.native[..count]
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
    std::fs::read_to_string(format!("/proc/{pid}/maps"))
        .map(|maps| parse_executable_ranges(&maps))
        .unwrap_or_default()
}

fn parse_executable_ranges(maps: &str) -> Vec<(u64, u64)> {
    maps.lines()
        .filter_map(|line| {
            let mut fields = line.split_whitespace();
            let (start, end) = fields.next()?.split_once('-')?;
            let perms = fields.next()?;
            perms.contains('x').then_some(())?;
            Some((
                u64::from_str_radix(start, 16).ok()?,
                u64::from_str_radix(end, 16).ok()?,
            ))
        })
        .filter(|(start, end)| start < end)
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

    proptest::proptest! {
        #[test]
        fn maps_parser_never_panics_and_keeps_ranges_ordered(text in ".*") {
            for (start, end) in parse_executable_ranges(&text) {
                proptest::prop_assert!(start < end);
            }
        }
    }
}
