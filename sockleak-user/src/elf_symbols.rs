//! What a program's ELF file says of itself: its symbol tables read whole, one read per table
//! and per string table (finding a few names among node's 180,000 symbols takes milliseconds,
//! where a read per name took a large part of a second between a node's exec and its first
//! socket), and what it asks of the loader.
use std::ops::ControlFlow;

use object::{
    Endianness, Object, ObjectKind, ReadRef, SectionIndex, StringTable,
    elf::{
        DT_NEEDED, DT_RPATH, DT_RUNPATH, SHT_DYNSYM, SHT_NOBITS, SHT_SYMTAB, STT_FILE, STT_SECTION,
    },
    read::elf::{Dyn, ElfFile64, SectionHeader, Sym},
};

/// The largest symbol or string table read (node 20's string table is 7.5 MB): a file that
/// claims more is not believed.
const MAX_TABLE: u64 = 64 << 20;

/// Which of a program's two symbol tables.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Table {
    /// `.dynsym`: what it exports (and imports), kept by `strip`.
    Dynamic,
    /// `.symtab`: every symbol, if not stripped.
    Full,
}

/// A symbol some section of the file defines.
#[derive(Clone, Copy, Debug)]
pub struct Defined<'n> {
    pub name: &'n str,
    pub address: u64,
    pub size: u64,
    pub section: SectionIndex,
}

/// Calls `each` with every symbol `table` of `elf` defines, in the table's order, until it
/// breaks (which this returns). A table that is missing, larger than [`MAX_TABLE`] or cut
/// short has nothing to give; names that are not UTF-8 are skipped.
pub fn each_defined<'data, R: ReadRef<'data>>(
    elf: &ElfFile64<'data, Endianness, R>,
    table: Table,
    mut each: impl FnMut(Defined<'_>) -> ControlFlow<()>,
) -> ControlFlow<()> {
    let (endian, data, sections) = (elf.endian(), elf.data(), elf.elf_section_table());
    let kind = match table {
        Table::Dynamic => SHT_DYNSYM,
        Table::Full => SHT_SYMTAB,
    };
    let Some(header) = sections.iter().find(|s| s.sh_type(endian) == kind) else {
        return ControlFlow::Continue(());
    };
    let Ok(strings_header) = sections.section(SectionIndex(header.sh_link(endian) as usize)) else {
        return ControlFlow::Continue(());
    };
    let whole = |h: &object::elf::SectionHeader64<Endianness>| {
        (h.sh_size(endian) <= MAX_TABLE && h.sh_type(endian) != SHT_NOBITS)
            .then(|| h.data(endian, data).ok())
            .flatten()
    };
    let (Some(symbols), Some(strings)) = (whole(header), whole(strings_header)) else {
        return ControlFlow::Continue(());
    };
    let Ok((symbols, _)) = object::pod::slice_from_bytes::<object::elf::Sym64<Endianness>>(
        symbols,
        symbols.len() / size_of::<object::elf::Sym64<Endianness>>(),
    ) else {
        return ControlFlow::Continue(());
    };
    // The string table as one slice in memory: each name is found in it, not read.
    let strings = StringTable::new(strings, 0, strings.len() as u64);
    for symbol in symbols {
        let kind = symbol.st_type();
        // Undefined, absolute or common: no section of this file has it.
        let Some(index) = symbol.st_shndx(endian).index() else {
            continue;
        };
        if kind == STT_SECTION || kind == STT_FILE {
            continue;
        }
        let Ok(name) = symbol.name(endian, strings) else {
            continue;
        };
        let Ok(name) = std::str::from_utf8(name) else {
            continue;
        };
        each(Defined {
            name,
            address: symbol.st_value(endian),
            size: symbol.st_size(endian),
            section: SectionIndex(usize::from(index)),
        })?;
    }
    ControlFlow::Continue(())
}

/// Where in the file `symbol`'s code starts, as a uprobe is placed: its address translated
/// through its section for a linked program or library (as aya does for a name).
pub fn file_offset<'data, R: ReadRef<'data>>(
    elf: &ElfFile64<'data, Endianness, R>,
    symbol: &Defined<'_>,
) -> Option<u64> {
    if !matches!(elf.kind(), ObjectKind::Dynamic | ObjectKind::Executable) {
        return Some(symbol.address);
    }
    let endian = elf.endian();
    let section = elf.elf_section_table().section(symbol.section).ok()?;
    if section.sh_type(endian) == SHT_NOBITS {
        return None;
    }
    symbol
        .address
        .checked_sub(section.sh_addr(endian))?
        .checked_add(section.sh_offset(endian))
}

/// What an object asks of the loader (its dynamic section): empty for a static program.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct LoaderRequests {
    /// Its `DT_NEEDED` libraries, in order; `None` for a name its string table does not hold.
    pub needed: Vec<Option<Vec<u8>>>,
    /// Where it asks them looked for first (`DT_RPATH`), or after `LD_LIBRARY_PATH`
    /// (`DT_RUNPATH`, which switches `DT_RPATH` off): colon-separated, `$ORIGIN` unexpanded.
    pub rpath: Option<Vec<u8>>,
    pub runpath: Option<Vec<u8>>,
}

/// What `elf` asks of the loader; `None` if its dynamic section does not read.
pub fn loader_requests<'data, R: ReadRef<'data>>(
    elf: &ElfFile64<'data, Endianness, R>,
) -> Option<LoaderRequests> {
    let (endian, data, sections) = (elf.endian(), elf.data(), elf.elf_section_table());
    let Some((dynamic, strings_at)) = sections.dynamic(endian, data).ok()? else {
        return Some(LoaderRequests::default());
    };
    let strings = sections.strings(endian, data, strings_at).ok()?;
    let mut requests = LoaderRequests::default();
    for entry in dynamic {
        let string = || entry.string(endian, strings).ok().map(<[u8]>::to_vec);
        match entry.tag(endian) {
            DT_NEEDED => requests.needed.push(string()),
            DT_RPATH => requests.rpath = string(),
            DT_RUNPATH => requests.runpath = string(),
            _ => {}
        }
    }
    Some(requests)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn own_binary() -> Vec<u8> {
        std::fs::read("/proc/self/exe").unwrap()
    }

    #[test]
    fn finds_a_function_of_its_own_binary_where_the_full_table_has_it() {
        let bytes = own_binary();
        let elf = ElfFile64::<Endianness, _>::parse(&bytes[..]).unwrap();
        let mut found = None;
        let _ = each_defined(&elf, Table::Full, |s| {
            if s.name == "main" {
                found = Some((s.address, file_offset(&elf, &s)));
                return ControlFlow::Break(());
            }
            ControlFlow::Continue(())
        });
        // The same answer as object's own symbol lookup.
        let expected = elf
            .symbols()
            .find(|s| object::ObjectSymbol::name(s) == Ok("main"))
            .map(|s| object::ObjectSymbol::address(&s));
        assert_eq!(found.map(|f| f.0), expected);
        assert!(found.unwrap().1.is_some());
    }

    #[test]
    fn reads_what_a_program_asks_of_the_loader() {
        let bytes = own_binary();
        let elf = ElfFile64::<Endianness, _>::parse(&bytes[..]).unwrap();
        let requests = loader_requests(&elf).unwrap();
        assert!(
            requests
                .needed
                .iter()
                .any(|n| n.as_deref().is_some_and(|n| n.starts_with(b"libc.so"))),
            "{requests:?}"
        );
    }

    #[test]
    fn a_table_larger_than_the_file_gives_nothing() {
        let mut bytes = own_binary();
        let elf = ElfFile64::<Endianness, _>::parse(&bytes[..]).unwrap();
        let symtab = elf
            .elf_section_table()
            .iter()
            .position(|s| s.sh_type(elf.endian()) == SHT_SYMTAB)
            .unwrap();
        // The full table's size claimed beyond any file: not read, and no panic.
        let header_at = elf.elf_header().e_shoff.get(elf.endian()) as usize
            + symtab * size_of::<object::elf::SectionHeader64<Endianness>>();
        let size_at = header_at + 32;
        bytes[size_at..size_at + 8].copy_from_slice(&u64::MAX.to_le_bytes());
        // object refuses it already, or each_defined does: nothing either way, and no panic.
        let Ok(elf) = ElfFile64::<Endianness, _>::parse(&bytes[..]) else {
            return;
        };
        let mut any = false;
        let _ = each_defined(&elf, Table::Full, |_| {
            any = true;
            ControlFlow::Break(())
        });
        assert!(!any);
    }
}
