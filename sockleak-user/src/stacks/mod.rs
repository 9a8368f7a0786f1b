//! Creation stacks, read and named on a thread of their own and cached for reports.
//!
//! A slow symbolization (a large binary's DWARF, a Node.js perf map of many megabytes) never
//! delays event handling. Each distinct stack is symbolized once and cached. The event loop
//! only notes the stack keys it sees (a hash lookup); reports read whatever the cache holds.
//! A stack with frames nobody could name yet is retried at later reports.
//!
//! What names a stack is `identity` (all the table needs); where its addresses come from,
//! `source` (the kernel's walks) or `copies` (unwound here from the kernel's copies, by
//! `unwind`); how they are named, `naming` (JIT code from the perf maps `perf_map` believes).
//! Which of the two ways a process's stacks take is `choice`'s.
pub mod choice;
mod copies;
pub mod identity;
mod naming;
mod perf_map;
mod source;
pub mod unwind;

use std::{
    collections::{HashMap, HashSet},
    sync::{
        Arc, Mutex,
        mpsc::{self, Receiver, Sender},
    },
    thread,
    time::Duration,
};

use self::{
    copies::{CopiedStacks, CopyCounts},
    naming::Namer,
    source::KernelStacks,
    unwind::Unwound,
};
pub use self::{
    identity::{CreationStack, NativeFrames, StackKey},
    source::StackMaps,
};
use crate::v8::V8Processes;

/// A symbolized stack, innermost frame first.
#[derive(Debug, Clone, Default)]
pub struct Stack {
    /// Shared: every group and report of this stack holds the same frames.
    pub frames: Arc<[String]>,
    /// Frames that could not be named yet; retried while the process lives.
    pub unknown: usize,
    /// What the frames lack and why, for people (JavaScript frames left unnamed, a perf map
    /// refused, an unwinding that ended early).
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
    /// A stack unwound from a copy, first seen: named at once, while the objects it ran in are
    /// open (a library unloaded right after still names its frames).
    Unwound(StackKey, Box<Unwound>),
    /// The unwound stacks still in use; the others' objects are let go.
    Retain(Arc<HashSet<StackKey>>),
    /// Answered once every request sent before it has been handled.
    Flush(mpsc::SyncSender<()>),
}

/// How many creation stacks the table's sockets have, as the cache knows them.
#[derive(Debug, Default, Clone, Copy)]
pub struct StackStats {
    /// Distinct creation stacks of the sockets in the table.
    pub stacks: usize,
    /// Of those, stacks with frames still unnamed.
    pub stacks_incomplete: usize,
    /// What became of the kernel's stack copies.
    pub copies: CopyCounts,
}

/// The event loop's handle on the symbolizer thread.
pub struct Stacks {
    requests: Sender<Request>,
    cache: Arc<Mutex<HashMap<StackKey, Arc<Stack>>>>,
    /// Keys already sent, so a busy socket factory costs one hash lookup per socket.
    noted: HashSet<StackKey, foldhash::fast::RandomState>,
    copied: CopiedStacks,
}

impl Stacks {
    /// Starts the symbolizer thread over the kernel's stack maps (`JS_STACKS` may be absent,
    /// with the libuv uprobes), naming JavaScript frames with the layouts in `v8`.
    pub fn start(maps: StackMaps, v8: V8Processes) -> std::io::Result<Self> {
        let (requests, rx) = mpsc::channel();
        let cache = Arc::new(Mutex::new(HashMap::new()));
        let worker_cache = Arc::clone(&cache);
        thread::Builder::new()
            .name("symbolize".into())
            .spawn(move || {
                Worker {
                    source: KernelStacks::new(maps),
                    unwound: HashMap::new(),
                    cache: worker_cache,
                    // Made on its thread: it is not Send.
                    namer: Namer::new(v8),
                }
                .run(rx)
            })?;
        Ok(Self {
            requests,
            cache,
            noted: HashSet::default(),
            copied: CopiedStacks::new(),
        })
    }

    /// Called for every event that carries a stack; queues stacks never seen before. A copied
    /// stack is queued as its copy arrives ([`Self::copy_arrived`]).
    pub fn note(&mut self, key: StackKey) {
        if !matches!(key.native, NativeFrames::Copied(_)) && self.noted.insert(key) {
            let _ = self.requests.send(Request::Symbolize(key));
        }
    }

    /// Unwinds a stack the kernel copied (a `STACK_COPIES` record), now, while its process
    /// and mappings are there; a stack the process had not had before is named at once.
    pub fn copy_arrived(&mut self, record: &[u8]) {
        if let Some((key, Some(unwound))) = self.copied.arrived(record) {
            self.noted.insert(key);
            let _ = self.requests.send(Request::Unwound(key, Box::new(unwound)));
        }
    }

    /// The stack a key stands for: a copied stack's is the unwound stack its copy turned out
    /// to be, once it arrived; `None` where the key is final.
    pub fn resolve(&self, key: StackKey) -> Option<StackKey> {
        self.copied.resolve(key)
    }

    /// The stack of `key` as far as it is known, queueing another attempt when frames are
    /// missing.
    pub fn get(&self, key: &StackKey) -> Option<Arc<Stack>> {
        let key = &self.resolve(*key).unwrap_or(*key);
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
    /// Copied stacks are kept while a recent copy names them (its socket may not be in the
    /// table yet).
    pub fn retain(&mut self, in_use: impl IntoIterator<Item = StackKey>) {
        let mut in_use: HashSet<StackKey> = in_use.into_iter().collect();
        self.copied.retain(&in_use);
        in_use.extend(self.copied.kept());
        self.noted.retain(|k| in_use.contains(k));
        if let Ok(mut cache) = self.cache.lock() {
            cache.retain(|k, _| in_use.contains(k));
        }
        let _ = self.requests.send(Request::Retain(Arc::new(in_use)));
    }

    pub fn stats(&self) -> StackStats {
        let cache = self.cache.lock();
        StackStats {
            stacks: self.noted.len(),
            stacks_incomplete: cache.map_or(0, |c| c.values().filter(|s| s.unknown > 0).count()),
            copies: self.copied.counts,
        }
    }
}

struct Worker {
    source: KernelStacks,
    /// Stacks unwound from copies, with the objects that name them, while in use.
    unwound: HashMap<StackKey, Box<Unwound>>,
    cache: Arc<Mutex<HashMap<StackKey, Arc<Stack>>>>,
    namer: Namer,
}

impl Worker {
    fn run(mut self, requests: Receiver<Request>) {
        while let Ok(request) = requests.recv() {
            match request {
                Request::Symbolize(key) => self.symbolize(key),
                Request::Unwound(key, unwound) => {
                    self.unwound.insert(key, unwound);
                    self.symbolize(key);
                }
                Request::Retain(in_use) => self.unwound.retain(|k, _| in_use.contains(k)),
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
        let named = if let NativeFrames::Unwound(_) = key.native {
            match self.unwound.get(&key) {
                Some(unwound) => self.namer.name_unwound(&key, unwound),
                None => return, // no longer in use
            }
        } else {
            let addresses = self.source.addresses(&key);
            let js_stack = || self.source.js_stack(key.js);
            self.namer.name(&key, &addresses, js_stack)
        };
        let stack = Stack {
            frames: named.frames.into(),
            unknown: named.unknown,
            note: named.note,
            attempts: previous.map_or(0, |s| s.attempts) + 1,
        };
        if let Ok(mut cache) = self.cache.lock() {
            cache.insert(key, Arc::new(stack));
        }
    }
}
