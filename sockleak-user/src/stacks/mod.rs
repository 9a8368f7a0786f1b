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
        atomic::AtomicUsize,
        mpsc::{self, Receiver, Sender},
    },
    thread,
    time::Duration,
};

use self::{
    choice::UnwinderChoice,
    copies::{CopyCounts, CopyIndex, CopyRequest, CopyThread},
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

pub(crate) enum Request {
    Symbolize(StackKey),
    /// A stack unwound from a copy, first seen: named at once, while the objects it ran in are
    /// open (a library unloaded right after still names its frames).
    Unwound(StackKey, Box<Unwound>),
    /// The stacks unwound from copies still in use (sent by the copies' thread): the others
    /// and their objects are let go.
    Retain(HashSet<StackKey>),
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
    /// The copies' thread, the copies it has yet to unwind, and what each copy became.
    copies: Sender<CopyRequest>,
    /// Node processes and since when sockleak has been ready for them (see [`V8Processes`]).
    runtimes: V8Processes,
    copies_queued: Arc<AtomicUsize>,
    copy_index: Arc<Mutex<CopyIndex>>,
}

impl Stacks {
    /// Starts the symbolizer thread over the kernel's stack maps (`JS_STACKS` may be absent,
    /// with the libuv uprobes), naming JavaScript frames with the layouts in `v8`, and the
    /// thread that unwinds the kernel's stack copies and judges processes with `choice`
    /// (absent where stacks are not copied).
    pub fn start(
        maps: StackMaps,
        v8: V8Processes,
        choice: Option<UnwinderChoice>,
    ) -> std::io::Result<Self> {
        let (requests, rx) = mpsc::channel();
        let runtimes = v8.clone();
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
        let (copies, copies_rx) = mpsc::channel();
        let copy_index = Arc::new(Mutex::new(CopyIndex::default()));
        let copies_queued = Arc::new(AtomicUsize::new(0));
        let copy_thread = CopyThread::new(
            choice,
            Arc::clone(&copy_index),
            Arc::clone(&copies_queued),
            requests.clone(),
        );
        thread::Builder::new()
            .name("unwind".into())
            .spawn(move || copy_thread.run(copies_rx))?;
        Ok(Self {
            requests,
            cache,
            noted: HashSet::default(),
            runtimes,
            copies,
            copies_queued,
            copy_index,
        })
    }

    /// Called for every event that carries a stack; queues stacks never seen before. A copied
    /// stack is queued as its copy is unwound ([`Self::copy_arrived`]).
    pub fn note(&mut self, key: StackKey) {
        if !matches!(key.native, NativeFrames::Copied(_)) && self.noted.insert(key) {
            let _ = self.requests.send(Request::Symbolize(key));
        }
    }

    /// A stack the kernel copied (a `STACK_COPIES` record), to be unwound at once, while its
    /// process and mappings are there; a stack the process had not had before is named then.
    pub fn copy_arrived(&mut self, record: &[u8]) {
        copies::send_copy(&self.copies, &self.copies_queued, &self.copy_index, record);
    }

    /// Judges how the stacks of each of `pids` are to be taken (see [`choice`]).
    pub fn judge(&self, pids: Vec<u32>) {
        let _ = self.copies.send(CopyRequest::Judge(pids));
    }

    /// Process `pid` started a new program: what was known of its code is the old one's,
    /// and the new one is judged.
    pub fn program_started(&self, pid: u32) {
        let _ = self.copies.send(CopyRequest::Exec(pid));
        self.judge(vec![pid]);
    }

    /// What a socket's creation stack stands for, to keep in its place: a copied stack's is
    /// the unwound stack its copy turned out to be (or none, if the copy was dropped), once
    /// the copy was unwound; `None` where the stack is final or still to be unwound.
    pub fn resolve(&self, key: StackKey) -> Option<CreationStack> {
        copies::lock(&self.copy_index).resolve(key)
    }

    /// The stack of `key` as far as it is known, queueing another attempt when frames are
    /// missing.
    pub fn get(&self, key: &StackKey) -> Option<Arc<Stack>> {
        let key = &match copies::lock(&self.copy_index).resolve(*key) {
            Some(resolved) => resolved.key()?,
            None => *key,
        };
        let stack = self.cache.lock().ok()?.get(key).cloned();
        if stack.as_ref().is_some_and(|s| s.worth_retrying()) {
            let _ = self.requests.send(Request::Symbolize(*key));
        }
        stack
    }

    /// Since when (CLOCK_MONOTONIC ns) process `pid`'s runtime has been ready: its libuv probes
    /// and V8 layout in place. `None` for a process that runs none sockleak knows.
    pub fn runtime_ready_since(&self, pid: u32) -> Option<u64> {
        self.runtimes.ready_since(pid)
    }

    /// Waits (at most `timeout`) until everything queued so far is symbolized: for the last
    /// report, which nobody gets a second look at.
    pub fn settle(&self, timeout: Duration) {
        let _ = self.flushed().recv_timeout(timeout);
    }

    /// Hears once everything queued so far is unwound and symbolized (or at once,
    /// disconnected, if a thread is gone): for waiting on a blocking thread while the caller
    /// goes on. Through the copies' thread, which passes it on once the copies before it are
    /// unwound.
    pub fn flushed(&self) -> mpsc::Receiver<()> {
        let (tx, rx) = mpsc::sync_channel(1);
        let _ = self.copies.send(CopyRequest::Flush(tx));
        rx
    }

    /// Forgets stacks no open socket refers to any more, so a long trace of short-lived
    /// processes does not accumulate them; one seen again is simply symbolized again.
    /// Stacks unwound from copies are the copies' thread's to forget: a recent copy may name
    /// one whose socket is not in the table yet.
    pub fn retain(&mut self, in_use: impl IntoIterator<Item = StackKey>) {
        let in_use: HashSet<StackKey> = in_use.into_iter().collect();
        let unwound = |k: &StackKey| matches!(k.native, NativeFrames::Unwound(_));
        self.noted.retain(|k| in_use.contains(k));
        if let Ok(mut cache) = self.cache.lock() {
            cache.retain(|k, _| in_use.contains(k) || unwound(k));
        }
        let _ = self.copies.send(CopyRequest::Retain(Arc::new(in_use)));
    }

    pub fn stats(&self) -> StackStats {
        let cache = self.cache.lock();
        let unwound = cache.as_ref().map_or(0, |c| {
            c.keys()
                .filter(|k| matches!(k.native, NativeFrames::Unwound(_)))
                .count()
        });
        StackStats {
            stacks: self.noted.len() + unwound,
            stacks_incomplete: cache.map_or(0, |c| c.values().filter(|s| s.unknown > 0).count()),
            copies: copies::lock(&self.copy_index).counts,
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
                Request::Retain(kept) => {
                    self.unwound.retain(|k, _| kept.contains(k));
                    if let Ok(mut cache) = self.cache.lock() {
                        cache.retain(|k, _| {
                            !matches!(k.native, NativeFrames::Unwound(_)) || kept.contains(k)
                        });
                    }
                }
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
