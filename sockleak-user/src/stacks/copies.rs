//! Stacks the kernel copied (code without frame pointers): unwound on a thread of their own as
//! each copy arrives, while its process and mappings exist, and numbered once per distinct
//! stack of a process.
//!
//! A copy's bytes are dropped once unwound; what stays is the stack's addresses (with the
//! objects they lie in, for naming) under its number, and which number each copy got until
//! the socket that names the copy is resolved by a report ([`CopyIndex`]). Which way each
//! process's stacks are taken is judged on the same thread ([`UnwinderChoice`]): reading a
//! program or unwinding through a large object never holds up the events.
use std::{
    collections::{HashMap, HashSet},
    sync::{
        Arc, Mutex,
        atomic::{AtomicUsize, Ordering},
        mpsc::{Receiver, Sender, SyncSender},
    },
};

use sockleak_common::{NO_JS_STACK, STACK_COPY_BYTES, STACK_COPY_HEADER_BYTES, StackCopyHeader};

use super::{
    Request,
    choice::UnwinderChoice,
    identity::{CreationStack, NativeFrames, StackKey},
    unwind::{Copied, Unwinders},
};

/// Copies waiting for the thread at most (a burst of 4 MiB at most): past it a copy is
/// dropped, counted, and its socket has no stack. The kernel's ring holds more meanwhile.
pub const QUEUED_COPIES: usize = 256;

/// Distinct unwound stacks numbered at once, all processes together: past it the oldest
/// numbers no socket uses are forgotten at a report (a stack seen again is numbered anew).
const NUMBERS_KEPT: usize = 65_536;

/// What became of the copies so far.
#[derive(Debug, Default, Clone, Copy)]
pub struct CopyCounts {
    /// Copies unwound.
    pub unwound: u64,
    /// Of those, stacks that end before their outermost frame (see `Unwound::truncated`).
    pub truncated: u64,
    /// Copies dropped here: the thread was [`QUEUED_COPIES`] behind, or the record was not a
    /// copy.
    pub dropped: u64,
}

/// What a copy turned out to be.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Outcome {
    /// Stack `number` of its process.
    Stack(u32),
    /// Dropped before it was unwound: its socket has no stack.
    Dropped,
}

/// Each copy's outcome until a report resolves the socket that names it, with the report
/// generation it came in (a copy whose socket never reached the table, released while the
/// kernel kept it, goes two reports later); shared by the event loop and the thread.
#[derive(Default)]
pub struct CopyIndex {
    copies: HashMap<(u32, u32), (Outcome, u64)>,
    generation: u64,
    pub counts: CopyCounts,
}

impl CopyIndex {
    /// What a copied stack's key stands for: the unwound stack its copy turned out to be, or
    /// none (the copy was dropped); `None` while the copy waits. Several sockets may name one
    /// copy (a listener's connections take its stack), so the answer stays until no socket
    /// names the copy (see [`CopyThread::retain`]).
    pub fn resolve(&self, key: StackKey) -> Option<CreationStack> {
        let NativeFrames::Copied(copy) = key.native else {
            return None;
        };
        let &(outcome, _) = self.copies.get(&(key.pid, copy))?;
        Some(match outcome {
            Outcome::Stack(number) => CreationStack::Taken(unwound_key(key.pid, number)),
            Outcome::Dropped => CreationStack::Unknown,
        })
    }

    fn dropped(&mut self, at: Option<(u32, u32)>) {
        self.counts.dropped += 1;
        if let Some(at) = at {
            self.copies.insert(at, (Outcome::Dropped, self.generation));
        }
    }
}

/// What the thread is asked.
pub enum CopyRequest {
    Copy(Box<[u8]>),
    /// Process `pid` started a new program: its modules and numbers are the old program's.
    Exec(u32),
    Judge(Vec<u32>),
    Retain(Arc<HashSet<StackKey>>),
    /// Answered once everything asked before is unwound and named.
    Flush(SyncSender<()>),
}

/// The thread's state.
pub struct CopyThread {
    unwinders: Unwinders,
    choice: Option<UnwinderChoice>,
    /// Each distinct stack of a process (its addresses, innermost first) and its number.
    numbers: HashMap<(u32, Vec<u64>), u32>,
    next: u32,
    /// Processes whose copies came, whose unwinding state goes when they exit.
    processes: HashSet<u32>,
    index: Arc<Mutex<CopyIndex>>,
    queued: Arc<AtomicUsize>,
    /// The symbolizer's queue: a new stack is named at once.
    symbolizer: Sender<Request>,
}

impl CopyThread {
    pub fn new(
        choice: Option<UnwinderChoice>,
        index: Arc<Mutex<CopyIndex>>,
        queued: Arc<AtomicUsize>,
        symbolizer: Sender<Request>,
    ) -> Self {
        Self {
            unwinders: Unwinders::new(),
            choice,
            numbers: HashMap::new(),
            next: 0,
            processes: HashSet::new(),
            index,
            queued,
            symbolizer,
        }
    }

    pub fn run(mut self, requests: Receiver<CopyRequest>) {
        while let Ok(request) = requests.recv() {
            match request {
                CopyRequest::Copy(record) => {
                    self.queued.fetch_sub(1, Ordering::Relaxed);
                    self.arrived(&record);
                }
                CopyRequest::Exec(pid) => {
                    self.unwinders.forget(pid);
                    self.numbers.retain(|(of, _), _| *of != pid);
                }
                CopyRequest::Judge(pids) => {
                    if let Some(choice) = &mut self.choice {
                        choice.judge(pids);
                    }
                }
                CopyRequest::Retain(in_use) => self.retain(&in_use),
                CopyRequest::Flush(done) => {
                    let _ = self.symbolizer.send(Request::Flush(done));
                }
            }
        }
    }

    /// Unwinds the copy in `record` (a `STACK_COPIES` record) and numbers its stack; a stack
    /// this process had not had before goes to be named.
    fn arrived(&mut self, record: &[u8]) {
        let Some((header, stack)) = decode(record) else {
            lock(&self.index).dropped(None);
            return;
        };
        let unwound = self.unwinders.unwind(&Copied {
            pid: header.pid,
            ip: header.ip,
            sp: header.sp,
            bp: header.bp,
            stack,
        });
        self.processes.insert(header.pid);
        let addresses: Vec<u64> = unwound.frames.iter().map(|f| f.address).collect();
        let mut new = false;
        let next = &mut self.next;
        let number = *self
            .numbers
            .entry((header.pid, addresses))
            .or_insert_with(|| {
                new = true;
                *next = next.wrapping_add(1);
                *next
            });
        {
            let mut index = lock(&self.index);
            index.counts.unwound += 1;
            if unwound.truncated.is_some() {
                index.counts.truncated += 1;
            }
            let generation = index.generation;
            index.copies.insert(
                (header.pid, header.copy),
                (Outcome::Stack(number), generation),
            );
        }
        if new {
            let key = unwound_key(header.pid, number);
            let _ = self
                .symbolizer
                .send(Request::Unwound(key, Box::new(unwound)));
        }
    }

    /// At a report, once the table's keys are resolved: forgets the copies of reports before
    /// the last that no socket names (`in_use`: a socket resolved since holds its stack's key,
    /// one still waiting its copy's), the numbers neither the table nor a kept copy names, and
    /// the processes that exited.
    fn retain(&mut self, in_use: &HashSet<StackKey>) {
        let named_by_copies: HashSet<(u32, u32)> = {
            let mut index = lock(&self.index);
            let generation = index.generation;
            let named_by_sockets = |&(pid, copy): &(u32, u32)| {
                in_use.contains(&StackKey {
                    native: NativeFrames::Copied(copy),
                    ..unwound_key(pid, 0)
                })
            };
            index
                .copies
                .retain(|at, &mut (_, came)| came + 1 >= generation || named_by_sockets(at));
            index.generation += 1;
            index
                .copies
                .iter()
                .filter_map(|(&(pid, _), &(outcome, _))| match outcome {
                    Outcome::Stack(number) => Some((pid, number)),
                    Outcome::Dropped => None,
                })
                .collect()
        };
        let over = self.numbers.len() > NUMBERS_KEPT;
        self.numbers.retain(|&(pid, _), &mut number| {
            in_use.contains(&unwound_key(pid, number))
                || (!over && named_by_copies.contains(&(pid, number)))
        });
        // Stacks still numbered, and those sockets hold (a process's new program forgot
        // their numbers, not the sockets' names).
        let kept: HashSet<StackKey> = self
            .numbers
            .iter()
            .map(|(&(pid, _), &number)| unwound_key(pid, number))
            .chain(
                in_use
                    .iter()
                    .copied()
                    .filter(|k| matches!(k.native, NativeFrames::Unwound(_))),
            )
            .collect();
        let _ = self.symbolizer.send(Request::Retain(kept));
        let unwinders = &mut self.unwinders;
        self.processes.retain(|&pid| {
            let running = crate::procfs::process_exists(pid);
            if !running {
                unwinders.forget(pid);
            }
            running
        });
    }
}

/// The index, even if a thread panicked while holding it (its counts and outcomes stay
/// sound: each is written whole).
pub fn lock(index: &Mutex<CopyIndex>) -> std::sync::MutexGuard<'_, CopyIndex> {
    index
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// Hands `record` to the thread, or drops it (counted, its socket then has no stack) when
/// the thread is [`QUEUED_COPIES`] behind.
pub fn send_copy(
    thread: &Sender<CopyRequest>,
    queued: &AtomicUsize,
    index: &Mutex<CopyIndex>,
    record: &[u8],
) {
    if queued.load(Ordering::Relaxed) >= QUEUED_COPIES {
        lock(index).dropped(decode(record).map(|(h, _)| (h.pid, h.copy)));
        return;
    }
    queued.fetch_add(1, Ordering::Relaxed);
    if thread.send(CopyRequest::Copy(record.into())).is_err() {
        queued.fetch_sub(1, Ordering::Relaxed);
    }
}

/// The key of stack `number` of process `pid`, unwound here.
fn unwound_key(pid: u32, number: u32) -> StackKey {
    StackKey {
        pid,
        native: NativeFrames::Unwound(number),
        sp_word: 0,
        handle: false,
        js: NO_JS_STACK,
    }
}

/// A copy's header and its stack bytes, when `record` holds them whole.
fn decode(record: &[u8]) -> Option<(StackCopyHeader, &[u8])> {
    if record.len() < STACK_COPY_HEADER_BYTES {
        return None;
    }
    // SAFETY: length checked; the header is plain integers, valid for any bit pattern.
    let header = unsafe { std::ptr::read_unaligned(record.as_ptr().cast::<StackCopyHeader>()) };
    let len = header.len as usize;
    if len > STACK_COPY_BYTES {
        return None;
    }
    let stack = record.get(STACK_COPY_HEADER_BYTES..STACK_COPY_HEADER_BYTES + len)?;
    Some((header, stack))
}

#[cfg(test)]
mod tests {
    use std::sync::mpsc;

    use super::*;

    fn record(header: StackCopyHeader, stack: &[u8]) -> Vec<u8> {
        // SAFETY: the header is plain integers without padding.
        let bytes: [u8; STACK_COPY_HEADER_BYTES] = unsafe { std::mem::transmute(header) };
        [&bytes[..], stack].concat()
    }

    #[test]
    fn a_record_reads_only_when_whole() {
        let header = StackCopyHeader {
            pid: 7,
            copy: 3,
            len: 16,
            ..StackCopyHeader::default()
        };
        let whole = record(header, &[1; 16]);
        assert_eq!(decode(&whole).map(|(h, s)| (h.pid, s.len())), Some((7, 16)));
        assert!(decode(&whole[..whole.len() - 1]).is_none());
        assert!(decode(&whole[..10]).is_none());
        let too_long = StackCopyHeader {
            len: STACK_COPY_BYTES as u32 + 1,
            ..header
        };
        assert!(decode(&record(too_long, &[0; STACK_COPY_BYTES + 1])).is_none());
    }

    #[test]
    fn copies_of_one_stack_resolve_to_one_key_once_and_outlive_one_report() {
        let index = Arc::new(Mutex::new(CopyIndex::default()));
        let (symbolizer, named) = mpsc::channel();
        let mut thread = CopyThread::new(
            None,
            Arc::clone(&index),
            Arc::new(AtomicUsize::new(0)),
            symbolizer,
        );
        // A process that does not exist: each copy unwinds to its one frame, the same.
        let pid = u32::MAX - 1;
        let header = |copy| StackCopyHeader {
            pid,
            copy,
            ip: 0x1000,
            sp: 0x7000,
            ..StackCopyHeader::default()
        };
        for copy in 1..=3 {
            thread.arrived(&record(header(copy), &[]));
        }
        // Named once.
        assert_eq!(named.try_iter().count(), 1);
        let copied = |copy| StackKey {
            pid,
            native: NativeFrames::Copied(copy),
            sp_word: 0,
            handle: false,
            js: NO_JS_STACK,
        };
        let resolved = lock(&index).resolve(copied(1)).unwrap();
        let Some(first) = resolved.key() else {
            panic!("{resolved:?}")
        };
        assert_eq!(lock(&index).resolve(copied(2)), Some(resolved));
        assert_eq!(lock(&index).resolve(copied(9)), None);
        // A copy that waits through the next report (its socket may still be in the kernel's
        // NEWBORN map) is kept, not through the one after.
        thread.retain(&HashSet::new());
        assert_eq!(lock(&index).resolve(copied(2)), Some(resolved));
        thread.retain(&HashSet::new());
        thread.retain(&HashSet::new());
        assert_eq!(lock(&index).resolve(copied(2)), None);
        assert!(thread.numbers.is_empty());
        // A socket still in the table keeps its stack's number.
        assert_ne!(first.native, NativeFrames::Copied(1));
        thread.arrived(&record(header(4), &[]));
        let held = lock(&index).resolve(copied(4)).and_then(|s| s.key());
        let held = HashSet::from([held.unwrap()]);
        for _ in 0..3 {
            thread.retain(&held);
        }
        assert_eq!(thread.numbers.len(), 1);
        assert_eq!(lock(&index).counts.unwound, 4);
    }

    #[test]
    fn a_dropped_copy_resolves_to_no_stack() {
        let index = Mutex::new(CopyIndex::default());
        let (thread, _requests) = mpsc::channel();
        let queued = AtomicUsize::new(QUEUED_COPIES);
        let header = StackCopyHeader {
            pid: 5,
            copy: 8,
            ..StackCopyHeader::default()
        };
        send_copy(&thread, &queued, &index, &record(header, &[]));
        let key = StackKey {
            pid: 5,
            native: NativeFrames::Copied(8),
            sp_word: 0,
            handle: false,
            js: NO_JS_STACK,
        };
        assert_eq!(lock(&index).resolve(key), Some(CreationStack::Unknown));
        assert_eq!(lock(&index).counts.dropped, 1);
    }
}
