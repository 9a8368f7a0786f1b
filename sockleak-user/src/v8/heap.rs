//! Reading a JavaScript function's name, script and line out of a live V8 heap: from the
//! SharedFunctionInfo the kernel walk kept, through its ScopeInfo (name, start), its Script
//! (name, source) and, for an interpreted frame, its bytecode's source positions (the line of
//! the call). Every object's type is checked before it is believed; a frame that fails a check
//! is not named at all.
use std::sync::Arc;

use anyhow::{Context, Result, bail, ensure};

use super::layout::Layout;

/// Where heap objects are read from: the process (`process_vm_readv`), or a test's bytes.
pub trait Memory {
    /// Fills `buf` from `addr`; false if any of it cannot be read.
    fn read(&self, addr: u64, buf: &mut [u8]) -> bool;
}

/// Another process's memory, read without stopping it.
pub struct ProcessMemory(pub u32);

impl Memory for ProcessMemory {
    fn read(&self, addr: u64, buf: &mut [u8]) -> bool {
        let local = libc::iovec {
            iov_base: buf.as_mut_ptr().cast(),
            iov_len: buf.len(),
        };
        let remote = libc::iovec {
            iov_base: addr as *mut libc::c_void,
            iov_len: buf.len(),
        };
        // SAFETY: one local buffer we own, of the length given; the remote side is only read.
        let read =
            unsafe { libc::process_vm_readv(self.0 as libc::pid_t, &local, 1, &remote, 1, 0) };
        read == buf.len() as isize
    }
}

/// A JavaScript function as a frame names it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JsFunction {
    /// Empty for an anonymous function.
    pub name: String,
    /// The script's name: a path, a URL, or `node:net` for node's own modules.
    pub script: String,
    /// The line of the call the frame was in, or else of the function's start; none where the
    /// source cannot be read (node's own modules keep theirs outside the heap).
    pub line: Option<u32>,
}

/// Line ends of scripts already read, by the script's tagged address (one process's).
pub type LineEnds = std::collections::HashMap<u64, Arc<Vec<u32>>>;

/// Names, sources and position tables longer than these are not believed.
const MAX_NAME: usize = 1024;
const MAX_SOURCE: usize = 16 << 20;
const MAX_POSITION_TABLE: usize = 1 << 20;
/// Depth of nested string representations (cons of cons ...) followed.
const MAX_STRING_DEPTH: u32 = 24;
/// ScopeInfo slots looked at for the name and positions.
const SCOPE_INFO_SLOTS: usize = 16;

const HEAP_OBJECT_TAG_MASK: u64 = 3;
const HEAP_OBJECT_TAG: u64 = 1;

fn is_heap_object(word: u64) -> bool {
    word & HEAP_OBJECT_TAG_MASK == HEAP_OBJECT_TAG
}

/// A small integer's value (x86-64 without pointer compression: the upper half).
fn small_int(word: u64) -> Option<i32> {
    (word & 1 == 0).then_some((word >> 32) as i32)
}

pub struct Heap<'a, M> {
    pub memory: M,
    pub layout: &'a Layout,
}

/// Pieces of a string as V8 stores them: one byte or two per character.
enum Piece<'b> {
    OneByte(&'b [u8]),
    TwoByte(&'b [u16]),
}

impl<M: Memory> Heap<'_, M> {
    /// The function whose SharedFunctionInfo is `shared` (tagged), in a frame at
    /// `bytecode_offset` (-1 when not interpreted).
    pub fn function(
        &self,
        shared: u64,
        bytecode_offset: i32,
        lines: &mut LineEnds,
    ) -> Result<JsFunction> {
        let l = self.layout;
        let sfi = self.object_of(shared, l.types.shared_function_info, "SharedFunctionInfo")?;
        let name_or_scope = self.word(sfi + l.shared_name_or_scope_info)?;
        let (name, start) = match self.type_of(name_or_scope)? {
            t if t == l.types.scope_info => self.scope_info(name_or_scope - HEAP_OBJECT_TAG)?,
            t if t < l.strings.first_nonstring_type => {
                (self.string(name_or_scope, MAX_NAME)?, None)
            }
            t => bail!("a function's name is neither a string nor a ScopeInfo (type {t})"),
        };
        let script_word = self.word(sfi + l.shared_script)?;
        let script = self
            .object_of(script_word, l.types.script, "Script")
            .context("the function has no script")?;
        let script_name = self
            .string(self.word(script + l.script_name)?, MAX_NAME)
            .context("the script's name")?;
        let position = match self.call_position(sfi, bytecode_offset) {
            Some(position) => Some(position),
            None => start,
        };
        let line = position.and_then(|position| {
            let ends = match lines.get(&script_word) {
                Some(ends) => Arc::clone(ends),
                None => {
                    let ends = Arc::new(self.line_ends(script).ok()?);
                    lines.insert(script_word, Arc::clone(&ends));
                    ends
                }
            };
            Some(line_at(&ends, position))
        });
        Ok(JsFunction {
            name,
            script: script_name,
            line,
        })
    }

    /// The function's name and start position from its ScopeInfo. Before V8 12.8 the
    /// positions have no fixed slot: they are the first two small integers, rising, after the
    /// name (the OpenTelemetry profiler reads them the same way).
    fn scope_info(&self, addr: u64) -> Result<(String, Option<u32>)> {
        let l = self.layout;
        let mut bytes = [0u8; SCOPE_INFO_SLOTS * 8];
        // The slots follow the map.
        ensure!(
            self.memory.read(addr + 8, &mut bytes),
            "unreadable ScopeInfo"
        );
        let slots: Vec<u64> = bytes
            .as_chunks::<8>()
            .0
            .iter()
            .map(|&c| u64::from_le_bytes(c))
            .collect();
        let locals = slots
            .get(l.scope_info_context_locals as usize)
            .and_then(|&w| small_int(w))
            .filter(|&n| (0..SCOPE_INFO_SLOTS as i32).contains(&n))
            .context("a ScopeInfo's count of context locals")?;
        let first = l.scope_info_first_vars as usize + 2 * locals as usize;
        let mut name = None;
        let mut start = None;
        if l.scope_info_fixed_positions {
            start = slots.get(3).and_then(|&w| small_int(w)).map(|s| s as u32);
        }
        let mut previous: Option<i32> = None;
        for &word in slots.iter().skip(first) {
            if name.is_none() && is_heap_object(word) {
                name = self.string(word, MAX_NAME).ok();
            }
            if l.scope_info_fixed_positions && name.is_some() {
                break;
            }
            let value = small_int(word);
            if !l.scope_info_fixed_positions
                && let (Some(before), Some(now)) = (previous, value)
                && before >= 0
                && before < now
            {
                start = Some(before as u32);
                break;
            }
            previous = value;
        }
        Ok((name.unwrap_or_default(), start))
    }

    /// The script position of the call an interpreted frame is in: its bytecode offset looked
    /// up in the bytecode's source position table (V8 keeps one once anything needed it).
    fn call_position(&self, sfi: u64, bytecode_offset: i32) -> Option<u32> {
        let l = self.layout;
        let offset = u64::try_from(bytecode_offset).ok()?;
        let bytecode = self
            .object_of(
                self.word(sfi + l.shared_function_data).ok()?,
                l.types.bytecode_array,
                "BytecodeArray",
            )
            .ok()?;
        // The frame counts from the tagged array, header included.
        let delta = offset.checked_sub(l.bytecode_array_data - HEAP_OBJECT_TAG)?;
        let table = self
            .object_of(
                self.word(bytecode + l.bytecode_array_source_positions)
                    .ok()?,
                l.types.byte_array,
                "ByteArray",
            )
            .ok()?;
        let length = small_int(self.word(table + l.fixed_array_length).ok()?)?;
        let length = usize::try_from(length)
            .ok()
            .filter(|&n| n <= MAX_POSITION_TABLE)?;
        let mut bytes = vec![0; length];
        if !self
            .memory
            .read(table + l.fixed_array_length + 8, &mut bytes)
        {
            return None;
        }
        source_position_at(&bytes, delta)
    }

    /// Where each line of the script's source ends, in characters.
    fn line_ends(&self, script: u64) -> Result<Vec<u32>> {
        let source = self.word(script + self.layout.script_source)?;
        let mut ends = Vec::new();
        let mut at = 0u32;
        self.visit(source, 0, MAX_SOURCE, 0, &mut |piece| {
            let mut note = |unit: u16| {
                if unit == u16::from(b'\n') {
                    ends.push(at);
                }
                at += 1;
            };
            match piece {
                Piece::OneByte(bytes) => bytes.iter().for_each(|&b| note(u16::from(b))),
                Piece::TwoByte(units) => units.iter().for_each(|&u| note(u)),
            }
        })?;
        ends.push(at);
        Ok(ends)
    }

    /// A short string (a name), whole.
    fn string(&self, tagged: u64, limit: usize) -> Result<String> {
        let mut units: Vec<u16> = Vec::new();
        self.visit(tagged, 0, limit, 0, &mut |piece| match piece {
            Piece::OneByte(bytes) => units.extend(bytes.iter().map(|&b| u16::from(b))),
            Piece::TwoByte(more) => units.extend_from_slice(more),
        })?;
        String::from_utf16(&units).context("a string that is not UTF-16")
    }

    /// Calls `f` with the string's characters from `skip` on, at most `limit` of them, piece
    /// by piece. Fails on a string longer than `limit` or of a kind not read (external).
    fn visit(
        &self,
        tagged: u64,
        skip: usize,
        limit: usize,
        depth: u32,
        f: &mut dyn FnMut(Piece),
    ) -> Result<()> {
        ensure!(depth < MAX_STRING_DEPTH, "strings nested too deep");
        let s = &self.layout.strings;
        let t = self.type_of(tagged)?;
        ensure!(t < s.first_nonstring_type, "not a string (type {t})");
        let addr = tagged - HEAP_OBJECT_TAG;
        let mut length = [0u8; 4];
        ensure!(
            self.memory.read(addr + s.length, &mut length),
            "unreadable string"
        );
        let length = u32::from_le_bytes(length) as usize;
        let wanted = length
            .checked_sub(skip)
            .context("a slice past its string")?;
        ensure!(wanted <= limit, "a string of {length} characters");
        let representation = t & s.representation_mask;
        if representation == s.seq_tag {
            if t & s.encoding_mask == s.one_byte_tag {
                let mut bytes = vec![0u8; wanted];
                ensure!(
                    self.memory
                        .read(addr + s.one_byte_chars + skip as u64, &mut bytes),
                    "unreadable string"
                );
                f(Piece::OneByte(&bytes));
            } else {
                let mut bytes = vec![0u8; wanted * 2];
                ensure!(
                    self.memory
                        .read(addr + s.two_byte_chars + 2 * skip as u64, &mut bytes),
                    "unreadable string"
                );
                let units: Vec<u16> = bytes
                    .as_chunks::<2>()
                    .0
                    .iter()
                    .map(|&c| u16::from_le_bytes(c))
                    .collect();
                f(Piece::TwoByte(&units));
            }
            Ok(())
        } else if representation == s.cons_tag {
            let first = self.word(addr + s.cons_first)?;
            let second = self.word(addr + s.cons_second)?;
            let mut first_length = [0u8; 4];
            ensure!(
                self.memory
                    .read(first - HEAP_OBJECT_TAG + s.length, &mut first_length),
                "unreadable string"
            );
            let first_length = u32::from_le_bytes(first_length) as usize;
            if skip < first_length {
                self.visit(first, skip, limit, depth + 1, f)?;
                self.visit(second, 0, limit, depth + 1, f)
            } else {
                self.visit(second, skip - first_length, limit, depth + 1, f)
            }
        } else if representation == s.thin_tag {
            self.visit(self.word(addr + s.thin_actual)?, skip, limit, depth + 1, f)
        } else if representation == s.sliced_tag {
            let offset = small_int(self.word(addr + s.sliced_offset)?)
                .and_then(|o| usize::try_from(o).ok())
                .context("a sliced string's offset")?;
            let parent = self.word(addr + s.sliced_parent)?;
            // Only this slice's characters of the parent.
            let mut left = wanted;
            self.visit(
                parent,
                offset + skip,
                usize::MAX,
                depth + 1,
                &mut |piece| match piece {
                    Piece::OneByte(b) => {
                        let n = b.len().min(left);
                        left -= n;
                        f(Piece::OneByte(&b[..n]));
                    }
                    Piece::TwoByte(u) => {
                        let n = u.len().min(left);
                        left -= n;
                        f(Piece::TwoByte(&u[..n]));
                    }
                },
            )
        } else {
            bail!("a string kept outside the heap (type {t})")
        }
    }

    /// The untagged address of the object `tagged` points to, if it is of type `expected`.
    fn object_of(&self, tagged: u64, expected: u16, what: &str) -> Result<u64> {
        let t = self.type_of(tagged)?;
        ensure!(t == expected, "not a {what} (type {t}, not {expected})");
        Ok(tagged - HEAP_OBJECT_TAG)
    }

    /// The instance type of the heap object `tagged` points to, through its map.
    fn type_of(&self, tagged: u64) -> Result<u16> {
        ensure!(is_heap_object(tagged), "not a heap object: {tagged:#x}");
        let map = self.word(tagged - HEAP_OBJECT_TAG + u64::from(self.layout.kernel.object_map))?;
        ensure!(is_heap_object(map), "an object without a map");
        let mut t = [0u8; 2];
        ensure!(
            self.memory.read(
                map - HEAP_OBJECT_TAG + u64::from(self.layout.kernel.map_instance_type),
                &mut t
            ),
            "unreadable map"
        );
        Ok(u16::from_le_bytes(t))
    }

    fn word(&self, addr: u64) -> Result<u64> {
        let mut w = [0u8; 8];
        ensure!(
            self.memory.read(addr, &mut w),
            "unreadable address {addr:#x}"
        );
        Ok(u64::from_le_bytes(w))
    }
}

/// The 1-based line of a character position, from the lines' end positions.
fn line_at(ends: &[u32], position: u32) -> u32 {
    ends.partition_point(|&end| end < position) as u32 + 1
}

/// The script position recorded for bytecode `delta` in a source position table: pairs of
/// zigzag VLQ deltas (code offset, then source position), sorted by code offset; the entry
/// that applies is the last at or before `delta`. The position is V8's `SourcePosition`:
/// bit 0 external, bits 1-30 the script offset plus one.
fn source_position_at(table: &[u8], delta: u64) -> Option<u32> {
    fn vlq(bytes: &[u8], at: &mut usize) -> Option<i64> {
        let mut value = 0u64;
        for shift in (0..64).step_by(7) {
            let byte = *bytes.get(*at)?;
            *at += 1;
            value |= u64::from(byte & 0x7f) << shift;
            if byte & 0x80 == 0 {
                return Some(((value >> 1) as i64) ^ -((value & 1) as i64));
            }
        }
        None
    }
    let (mut at, mut code, mut source) = (0usize, -1i64, 0i64);
    let mut found = None;
    while at < table.len() {
        let code_delta = vlq(table, &mut at)?;
        // The sign marks statement positions: a negative delta d means -(d + 1).
        code += if code_delta >= 0 {
            code_delta
        } else {
            -(code_delta + 1)
        };
        if code > delta as i64 {
            break;
        }
        source += vlq(table, &mut at)?;
        found = Some(source);
    }
    let raw = found?;
    if raw & 1 == 1 {
        return None; // an external (C++ builtin) position
    }
    let offset = ((raw >> 1) & ((1 << 30) - 1)) as u32;
    offset.checked_sub(1)
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::*;
    use crate::v8::layout::tests::node20;

    /// A fake heap: words and bytes at addresses.
    #[derive(Default)]
    struct FakeHeap {
        bytes: BTreeMap<u64, u8>,
    }

    impl FakeHeap {
        fn put(&mut self, addr: u64, data: &[u8]) {
            for (i, b) in data.iter().enumerate() {
                self.bytes.insert(addr + i as u64, *b);
            }
        }
        fn word(&mut self, addr: u64, w: u64) {
            self.put(addr, &w.to_le_bytes());
        }
        /// A map at `addr` saying `instance_type`.
        fn map(&mut self, addr: u64, instance_type: u16) {
            self.put(addr + 12, &instance_type.to_le_bytes());
        }
        /// An object at `addr` whose map is `map`; returns its tagged pointer.
        fn object(&mut self, addr: u64, map: u64) -> u64 {
            self.word(addr, map + 1);
            addr + 1
        }
        fn one_byte_string(&mut self, addr: u64, map: u64, text: &str) -> u64 {
            let tagged = self.object(addr, map);
            self.put(addr + 12, &(text.len() as u32).to_le_bytes());
            self.put(addr + 16, text.as_bytes());
            tagged
        }
    }

    impl Memory for &FakeHeap {
        fn read(&self, addr: u64, buf: &mut [u8]) -> bool {
            for (i, b) in buf.iter_mut().enumerate() {
                match self.bytes.get(&(addr + i as u64)) {
                    Some(v) => *b = *v,
                    None => return false,
                }
            }
            true
        }
    }

    fn smi(v: i32) -> u64 {
        (v as u64) << 32
    }

    const STRING_MAP: u64 = 0x1000; // one-byte sequential string, type 8
    const SFI_MAP: u64 = 0x1100;
    const SCOPE_MAP: u64 = 0x1200;
    const SCRIPT_MAP: u64 = 0x1300;
    const BYTECODE_MAP: u64 = 0x1400;
    const BYTES_MAP: u64 = 0x1500;
    const CONS_MAP: u64 = 0x1600; // one-byte cons string, type 9

    /// `function leak() {` at line 3 of /app/leak.js, called at line 5, through a cons-string
    /// source; the ScopeInfo laid out as node 20 lays it out.
    fn heap() -> (FakeHeap, u64) {
        let mut h = FakeHeap::default();
        h.map(STRING_MAP, 8);
        h.map(SFI_MAP, 262);
        h.map(SCOPE_MAP, 261);
        h.map(SCRIPT_MAP, 167);
        h.map(BYTECODE_MAP, 191);
        h.map(BYTES_MAP, 190);
        h.map(CONS_MAP, 9);
        let source = "'use strict';\n\nfunction leak() {\n  const a = 1;\n  net.connect();\n}\n";
        let (head, tail) = source.split_at(20);
        let first = h.one_byte_string(0x2000, STRING_MAP, head);
        let second = h.one_byte_string(0x2100, STRING_MAP, tail);
        let cons = h.object(0x2200, CONS_MAP);
        h.put(0x2200 + 12, &(source.len() as u32).to_le_bytes());
        h.word(0x2200 + 16, first);
        h.word(0x2200 + 24, second);
        let name = h.one_byte_string(0x2300, STRING_MAP, "leak");
        let script_name = h.one_byte_string(0x2400, STRING_MAP, "/app/leak.js");
        let script = h.object(0x3000, SCRIPT_MAP);
        h.word(0x3000 + 8, cons);
        h.word(0x3000 + 16, script_name);
        // ScopeInfo slots after the map: flags, params, context locals (0), then the name
        // and the start/end positions.
        let start = source.find("leak()").unwrap() as i32 + 4;
        let scope = h.object(0x4000, SCOPE_MAP);
        for (i, w) in [smi(0x41), smi(0), smi(0), name, smi(start), smi(start + 40)]
            .into_iter()
            .enumerate()
        {
            h.word(0x4000 + 8 + 8 * i as u64, w);
        }
        for i in 6..SCOPE_INFO_SLOTS as u64 {
            h.word(0x4000 + 8 + 8 * i, 0);
        }
        // Bytecode whose offset 10 is the call at `net.connect()`.
        let call = source.find("net.connect").unwrap() as i64 + 1;
        let table: Vec<u8> = [0i64, 2 * start as i64 + 2, 10, 2 * (call - start as i64)]
            .iter()
            .flat_map(|&v| {
                let mut z = ((v << 1) ^ (v >> 63)) as u64;
                let mut out = Vec::new();
                loop {
                    let b = (z & 0x7f) as u8;
                    z >>= 7;
                    if z == 0 {
                        out.push(b);
                        break;
                    }
                    out.push(b | 0x80);
                }
                out
            })
            .collect();
        let positions = h.object(0x5000, BYTES_MAP);
        h.word(0x5000 + 8, smi(table.len() as i32));
        h.put(0x5000 + 16, &table);
        let bytecode = h.object(0x6000, BYTECODE_MAP);
        h.word(0x6000 + 32, positions);
        let sfi = h.object(0x7000, SFI_MAP);
        h.word(0x7000 + 8, bytecode);
        h.word(0x7000 + 16, scope);
        h.word(0x7000 + 32, script);
        (h, sfi)
    }

    fn layout() -> Layout {
        Layout::from_symbols(&node20()).unwrap()
    }

    #[test]
    fn an_interpreted_frame_is_named_at_its_call() {
        let (h, sfi) = heap();
        let layout = layout();
        let heap = Heap {
            memory: &h,
            layout: &layout,
        };
        let mut lines = LineEnds::new();
        // The frame's offset counts the array's header (53 bytes past the tagged pointer).
        let f = heap.function(sfi, 53 + 12, &mut lines).unwrap();
        assert_eq!(
            f,
            JsFunction {
                name: "leak".into(),
                script: "/app/leak.js".into(),
                line: Some(5)
            }
        );
        // Not interpreted: the function's own line.
        let f = heap.function(sfi, -1, &mut lines).unwrap();
        assert_eq!(f.line, Some(3));
        assert_eq!(lines.len(), 1, "the script's lines are read once");
    }

    #[test]
    fn an_object_of_the_wrong_type_names_nothing() {
        let (mut h, sfi) = heap();
        let layout = layout();
        // The SharedFunctionInfo moved and something else is there now.
        h.word(sfi - 1, SCRIPT_MAP + 1);
        let heap = Heap {
            memory: &h,
            layout: &layout,
        };
        let err = heap.function(sfi, -1, &mut LineEnds::new()).unwrap_err();
        assert!(err.to_string().contains("SharedFunctionInfo"), "{err}");
        // Unreadable memory, and a pointer that is not one.
        assert!(heap.function(0x9001, -1, &mut LineEnds::new()).is_err());
        assert!(heap.function(0x7000, -1, &mut LineEnds::new()).is_err());
    }

    #[test]
    fn lines_count_from_one() {
        let ends = [5, 9, 20];
        assert_eq!(line_at(&ends, 0), 1);
        assert_eq!(line_at(&ends, 5), 1);
        assert_eq!(line_at(&ends, 6), 2);
        assert_eq!(line_at(&ends, 21), 4);
    }

    proptest::proptest! {
        #[test]
        fn position_tables_never_panic(table in proptest::collection::vec(proptest::num::u8::ANY, 0..64), delta in 0u64..1000) {
            let _ = source_position_at(&table, delta);
        }
    }
}
