//! Just enough of a BTF reader for [`super::offsets`]: struct member offsets and enum member
//! names, straight from the bytes of `/sys/kernel/btf/vmlinux`.
//!
//! A general BTF library parsed every one of the kernel's types (well over a hundred thousand)
//! into maps of owned strings, most of sockleak's start-up time and peak memory, to read a
//! dozen numbers. This walks the type section once, remembering where each type starts, and
//! reads names in place. Layout: `include/uapi/linux/btf.h`.
use anyhow::{Result, bail};

const MAGIC: u16 = 0xeb9f;
const HEADER_LEN: usize = 24;
/// `struct btf_type`: name_off, info, size_or_type.
const TYPE_LEN: usize = 12;

const KIND_INT: u32 = 1;
const KIND_ARRAY: u32 = 3;
const KIND_STRUCT: u32 = 4;
const KIND_UNION: u32 = 5;
const KIND_ENUM: u32 = 6;
const KIND_TYPEDEF: u32 = 8;
const KIND_VOLATILE: u32 = 9;
const KIND_CONST: u32 = 10;
const KIND_RESTRICT: u32 = 11;
const KIND_FUNC_PROTO: u32 = 13;
const KIND_VAR: u32 = 14;
const KIND_DATASEC: u32 = 15;
const KIND_DECL_TAG: u32 = 17;
const KIND_TYPE_TAG: u32 = 18;
const KIND_ENUM64: u32 = 19;

pub struct KernelBtf {
    data: Vec<u8>,
    strings: std::ops::Range<usize>,
    /// Where type id `i + 1` starts in `data` (id 0 is void).
    types: Vec<usize>,
}

#[derive(Clone, Copy)]
struct TypeHeader {
    name_off: u32,
    kind: u32,
    vlen: usize,
    kind_flag: bool,
    size_or_type: u32,
    /// Where the kind-specific data after the header starts.
    body: usize,
}

impl KernelBtf {
    pub fn parse(data: Vec<u8>) -> Result<Self> {
        let u16_at = |at: usize| {
            data.get(at..at + 2)
                .map(|b| u16::from_ne_bytes([b[0], b[1]]))
        };
        if u16_at(0) != Some(MAGIC) {
            bail!("not BTF (bad magic, or the other byte order)");
        }
        let word = |at: usize| read_u32(&data, at).map(|w| w as usize);
        let (Some(hdr_len), Some(type_off), Some(type_len), Some(str_off), Some(str_len)) =
            (word(4), word(8), word(12), word(16), word(20))
        else {
            bail!("BTF header truncated");
        };
        if hdr_len < HEADER_LEN {
            bail!("BTF header of {hdr_len} bytes");
        }
        let section = |off: usize, len: usize| {
            let start = hdr_len.checked_add(off)?;
            let end = start.checked_add(len)?;
            (end <= data.len()).then_some(start..end)
        };
        let (Some(type_section), Some(strings)) =
            (section(type_off, type_len), section(str_off, str_len))
        else {
            bail!("BTF sections out of bounds");
        };
        let mut btf = Self {
            data,
            strings,
            types: Vec::new(),
        };
        let mut at = type_section.start;
        while at < type_section.end {
            let Some(header) = btf.header_at(at) else {
                bail!("BTF type {} truncated", btf.types.len() + 1);
            };
            let Some(next) = header.body.checked_add(body_len(&header)) else {
                bail!("BTF type {} too long", btf.types.len() + 1);
            };
            if next > type_section.end {
                bail!("BTF type {} runs past its section", btf.types.len() + 1);
            }
            btf.types.push(at);
            at = next;
        }
        Ok(btf)
    }

    /// Byte offset of `member` in `struct name`, looking through anonymous structs and unions
    /// (kernel structs nest many fields in them, and which ones moves between versions).
    pub fn member_offset(&self, name: &str, member: &str) -> Result<u64> {
        let Some(strukt) = self
            .named(name)
            .find(|t| t.kind == KIND_STRUCT && t.vlen > 0)
        else {
            bail!("no struct {name}");
        };
        let Some(bits) = self.find_member_bits(&strukt, member, 0, 0) else {
            bail!("struct {name} has no member {member}");
        };
        if bits % 8 != 0 {
            bail!("{name}.{member} is a bitfield");
        }
        Ok(u64::from(bits / 8))
    }

    /// Whether `enum name` has a member called `member`.
    pub fn has_enum_member(&self, name: &str, member: &str) -> bool {
        self.named(name).filter(|t| t.kind == KIND_ENUM).any(|t| {
            (0..t.vlen).any(|i| {
                read_u32(&self.data, t.body + i * 8)
                    .is_some_and(|n| self.name_is(n, member.as_bytes()))
            })
        })
    }

    fn find_member_bits(
        &self,
        strukt: &TypeHeader,
        wanted: &str,
        base_bits: u32,
        depth: usize,
    ) -> Option<u32> {
        // Anonymous members nest a few levels at most; a loop in bad data must not recurse
        // forever.
        if depth > 16 {
            return None;
        }
        for i in 0..strukt.vlen {
            let at = strukt.body + i * 12;
            let (name_off, type_id, offset) = (
                read_u32(&self.data, at)?,
                read_u32(&self.data, at + 4)?,
                read_u32(&self.data, at + 8)?,
            );
            // With kind_flag, the high byte is a bitfield's size.
            let bits = base_bits.checked_add(if strukt.kind_flag {
                offset & 0x00ff_ffff
            } else {
                offset
            })?;
            let name = self.name(name_off);
            if name == wanted.as_bytes() {
                return Some(bits);
            }
            if name.is_empty()
                && let Some(inner) = self.resolve(type_id)
                && matches!(inner.kind, KIND_STRUCT | KIND_UNION)
                && let Some(found) = self.find_member_bits(&inner, wanted, bits, depth + 1)
            {
                return Some(found);
            }
        }
        None
    }

    /// Follows typedefs and qualifiers to the type they name.
    fn resolve(&self, mut id: u32) -> Option<TypeHeader> {
        for _ in 0..32 {
            let t = self.by_id(id)?;
            match t.kind {
                KIND_TYPEDEF | KIND_VOLATILE | KIND_CONST | KIND_RESTRICT | KIND_TYPE_TAG => {
                    id = t.size_or_type;
                }
                _ => return Some(t),
            }
        }
        None
    }

    fn by_id(&self, id: u32) -> Option<TypeHeader> {
        let at = *self.types.get((id as usize).checked_sub(1)?)?;
        self.header_at(at)
    }

    fn named<'a>(&'a self, name: &'a str) -> impl Iterator<Item = TypeHeader> + 'a {
        self.types
            .iter()
            .filter_map(|&at| self.header_at(at))
            .filter(move |t| self.name_is(t.name_off, name.as_bytes()))
    }

    /// `name(offset) == name`, without scanning for the end of every name in the kernel.
    fn name_is(&self, offset: u32, name: &[u8]) -> bool {
        let Some(start) = self.strings.start.checked_add(offset as usize) else {
            return false;
        };
        let end = start + name.len();
        end < self.strings.end
            && self.data.get(start..end) == Some(name)
            && self.data.get(end) == Some(&0)
    }

    fn header_at(&self, at: usize) -> Option<TypeHeader> {
        let info = read_u32(&self.data, at + 4)?;
        Some(TypeHeader {
            name_off: read_u32(&self.data, at)?,
            kind: (info >> 24) & 0x1f,
            vlen: (info & 0xffff) as usize,
            kind_flag: info >> 31 != 0,
            size_or_type: read_u32(&self.data, at + 8)?,
            body: at + TYPE_LEN,
        })
    }

    /// The NUL-terminated string at `offset` in the string section; empty if out of bounds.
    fn name(&self, offset: u32) -> &[u8] {
        let Some(start) = self.strings.start.checked_add(offset as usize) else {
            return &[];
        };
        let Some(rest) = self.data.get(start..self.strings.end) else {
            return &[];
        };
        rest.split(|&b| b == 0).next().unwrap_or_default()
    }
}

/// Bytes of kind-specific data after a type's header.
fn body_len(t: &TypeHeader) -> usize {
    match t.kind {
        KIND_INT | KIND_VAR | KIND_DECL_TAG => 4,
        KIND_ARRAY => 12,
        KIND_STRUCT | KIND_UNION | KIND_DATASEC | KIND_ENUM64 => 12 * t.vlen,
        KIND_ENUM | KIND_FUNC_PROTO => 8 * t.vlen,
        // PTR, FWD, TYPEDEF, VOLATILE, CONST, RESTRICT, FUNC, FLOAT, TYPE_TAG, and kinds newer
        // than this reader (which then misreads the rest: the offsets test would catch it).
        _ => 0,
    }
}

fn read_u32(data: &[u8], at: usize) -> Option<u32> {
    let bytes = data.get(at..at.checked_add(4)?)?;
    Some(u32::from_ne_bytes([bytes[0], bytes[1], bytes[2], bytes[3]]))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A tiny BTF blob: `struct outer { int a; union { int b; int c; }; int d:3; }` with the
    /// union anonymous, and `enum e { X, Y }`.
    fn sample() -> Vec<u8> {
        let strings = b"\0int\0outer\0a\0b\0c\0d\0e\0X\0Y\0";
        let at = |s: &str| {
            let needle = format!("\0{s}\0");
            strings
                .windows(needle.len())
                .position(|w| w == needle.as_bytes())
                .unwrap() as u32
                + 1
        };
        let mut types = Vec::new();
        let mut push = |words: &[u32]| {
            for w in words {
                types.extend_from_slice(&w.to_ne_bytes());
            }
        };
        let info = |kind: u32, vlen: u32, flag: bool| (u32::from(flag) << 31) | (kind << 24) | vlen;
        // 1: int (4 bytes)
        push(&[at("int"), info(KIND_INT, 0, false), 4, 32]);
        // 2: anonymous union { int b; int c; }
        push(&[0, info(KIND_UNION, 2, false), 4]);
        push(&[at("b"), 1, 0, at("c"), 1, 0]);
        // 3: struct outer, kind_flag set: member offsets carry bitfield sizes in the top byte
        push(&[at("outer"), info(KIND_STRUCT, 3, true), 12]);
        push(&[at("a"), 1, 0, 0, 2, 32, at("d"), 1, (3 << 24) | 67]);
        // 4: enum e { X = 0, Y = 1 }
        push(&[at("e"), info(KIND_ENUM, 2, false), 4]);
        push(&[at("X"), 0, at("Y"), 1]);

        let mut blob = Vec::new();
        blob.extend_from_slice(&MAGIC.to_ne_bytes());
        blob.extend_from_slice(&[1, 0]);
        for w in [
            HEADER_LEN as u32,
            0,
            types.len() as u32,
            types.len() as u32,
            strings.len() as u32,
        ] {
            blob.extend_from_slice(&w.to_ne_bytes());
        }
        blob.extend_from_slice(&types);
        blob.extend_from_slice(strings);
        blob
    }

    #[test]
    fn finds_members_through_anonymous_unions_and_refuses_bitfields() {
        let btf = KernelBtf::parse(sample()).unwrap();
        assert_eq!(btf.member_offset("outer", "a").unwrap(), 0);
        assert_eq!(btf.member_offset("outer", "c").unwrap(), 4);
        assert!(
            btf.member_offset("outer", "d").is_err(),
            "bit 67 is no byte"
        );
        assert!(btf.member_offset("outer", "z").is_err());
        assert!(btf.member_offset("nothing", "a").is_err());
        assert!(btf.has_enum_member("e", "Y"));
        assert!(!btf.has_enum_member("e", "Z"));
    }

    #[test]
    fn truncated_btf_is_an_error() {
        let blob = sample();
        for len in [0, 10, HEADER_LEN, blob.len() - 1] {
            assert!(KernelBtf::parse(blob[..len].to_vec()).is_err(), "{len}");
        }
    }

    proptest::proptest! {
        #[test]
        fn never_panics_on_damaged_btf(
            flips in proptest::collection::vec((0usize..200, proptest::num::u8::ANY), 0..8)
        ) {
            let mut blob = sample();
            for (at, byte) in flips {
                if let Some(b) = blob.get_mut(at) {
                    *b = byte;
                }
            }
            if let Ok(btf) = KernelBtf::parse(blob) {
                let _ = btf.member_offset("outer", "c");
                let _ = btf.has_enum_member("e", "Y");
            }
        }
    }
}
