//! Stacks the kernel copied (code without frame pointers): unwound as each copy arrives, while
//! its process and mappings exist, and numbered once per distinct stack of a process.
//!
//! A copy's bytes are dropped once unwound; what stays is the stack's addresses (with the
//! objects they lie in, for naming) under its number, and which number each recent copy got,
//! until the socket that names the copy is in the table.
use std::collections::{HashMap, HashSet};

use sockleak_common::{NO_JS_STACK, STACK_COPY_BYTES, STACK_COPY_HEADER_BYTES, StackCopyHeader};

use super::{
    identity::{NativeFrames, StackKey},
    unwind::{Copied, Unwinders, Unwound},
};

/// Distinct unwound stacks kept at once, all processes together: past it a report forgets the
/// ones no socket in the table names (their sockets' stacks were read already).
const NUMBERS_KEPT: usize = 65_536;

/// What became of the copies so far.
#[derive(Debug, Default, Clone, Copy)]
pub struct CopyCounts {
    /// Copies unwound.
    pub unwound: u64,
    /// Of those, stacks that end before their outermost frame (see `Unwound::truncated`).
    pub truncated: u64,
    /// Records that did not read as a copy.
    pub malformed: u64,
}

pub struct CopiedStacks {
    unwinders: Unwinders,
    /// Each copy's stack number, by process and copy, with the report generation the copy
    /// came in: its socket may wait in the kernel's `NEWBORN` map until the next report.
    copies: HashMap<(u32, u32), (u32, u64)>,
    /// Each distinct stack of a process (its addresses, innermost first) and its number.
    numbers: HashMap<(u32, Vec<u64>), u32>,
    next: u32,
    generation: u64,
    /// Processes whose copies came, whose unwinding state goes when they exit.
    processes: HashSet<u32>,
    pub counts: CopyCounts,
}

impl CopiedStacks {
    pub fn new() -> Self {
        Self {
            unwinders: Unwinders::new(),
            copies: HashMap::new(),
            numbers: HashMap::new(),
            next: 0,
            generation: 0,
            processes: HashSet::new(),
            counts: CopyCounts::default(),
        }
    }

    /// Unwinds the copy in `record` (a `STACK_COPIES` record): its stack's key, and the
    /// unwound stack when it is one this process had not had before (to be named).
    pub fn arrived(&mut self, record: &[u8]) -> Option<(StackKey, Option<Unwound>)> {
        let Some((header, stack)) = decode(record) else {
            self.counts.malformed += 1;
            return None;
        };
        let unwound = self.unwinders.unwind(&Copied {
            pid: header.pid,
            ip: header.ip,
            sp: header.sp,
            bp: header.bp,
            stack,
        });
        self.counts.unwound += 1;
        self.processes.insert(header.pid);
        if unwound.truncated.is_some() {
            self.counts.truncated += 1;
        }
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
        self.copies
            .insert((header.pid, header.copy), (number, self.generation));
        let key = unwound_key(header.pid, number);
        Some((key, new.then_some(unwound)))
    }

    /// The unwound stack a copied stack's key stands for, once its copy arrived.
    pub fn resolve(&self, key: StackKey) -> Option<StackKey> {
        let NativeFrames::Copied(copy) = key.native else {
            return None;
        };
        let &(number, _) = self.copies.get(&(key.pid, copy))?;
        Some(unwound_key(key.pid, number))
    }

    /// At a report, once the table's keys are resolved: forgets the copies of reports before
    /// the last (their sockets were read by now), the stacks neither the table (`in_use`) nor
    /// a copy kept names, and the processes that exited.
    pub fn retain(&mut self, in_use: &HashSet<StackKey>) {
        let generation = self.generation;
        self.copies
            .retain(|_, &mut (_, came)| came + 1 >= generation);
        let named_by_copies: HashSet<(u32, u32)> = self
            .copies
            .iter()
            .map(|(&(pid, _), &(number, _))| (pid, number))
            .collect();
        let over = self.numbers.len() > NUMBERS_KEPT;
        self.numbers.retain(|(pid, _), number| {
            let key = unwound_key(*pid, *number);
            in_use.contains(&key) || (!over && named_by_copies.contains(&(*pid, *number)))
        });
        let unwinders = &mut self.unwinders;
        self.processes.retain(|&pid| {
            let running = crate::procfs::process_exists(pid);
            if !running {
                unwinders.forget(pid);
            }
            running
        });
        self.generation += 1;
    }

    /// The unwound stacks kept.
    pub fn kept(&self) -> impl Iterator<Item = StackKey> + '_ {
        self.numbers
            .iter()
            .map(|(&(pid, _), &number)| unwound_key(pid, number))
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
    fn copies_of_one_stack_resolve_to_one_key_and_outlive_one_report() {
        let mut copies = CopiedStacks::new();
        // A process that does not exist: each copy unwinds to its one frame, the same.
        let pid = u32::MAX - 1;
        let header = |copy| StackCopyHeader {
            pid,
            copy,
            ip: 0x1000,
            sp: 0x7000,
            ..StackCopyHeader::default()
        };
        let (first, new) = copies.arrived(&record(header(1), &[])).unwrap();
        assert!(new.is_some());
        let (second, again) = copies.arrived(&record(header(2), &[])).unwrap();
        assert!(again.is_none());
        assert_eq!(first, second);
        let copied = |copy| StackKey {
            native: NativeFrames::Copied(copy),
            ..first
        };
        assert_eq!(copies.resolve(copied(2)), Some(first));
        assert_eq!(copies.resolve(copied(9)), None);
        // Kept through the next report (the socket may still be in NEWBORN), not the one after.
        copies.retain(&HashSet::new());
        assert_eq!(copies.resolve(copied(1)), Some(first));
        copies.retain(&HashSet::new());
        copies.retain(&HashSet::new());
        assert_eq!(copies.resolve(copied(1)), None);
        assert!(copies.numbers.is_empty());
        assert_eq!(copies.counts.unwound, 2);
    }
}
