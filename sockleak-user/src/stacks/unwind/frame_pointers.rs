//! Whether an object keeps frame pointers, judged from its CFI.
use gimli::{
    BaseAddresses, CallFrameInstruction, CieOrFde, DebugFrame, EhFrame, EndianSlice, LittleEndian,
    UnwindSection, X86_64,
};
use object::{Object, ObjectSection};

/// The share of FDEs (in percent) that must set the CFA from rbp for an object to count as
/// keeping frame pointers. Built with `-fno-omit-frame-pointer`, every function that makes a
/// frame sets up rbp; the FDEs that do not are leaves and tail-calling wrappers that need no
/// frame and hand-written assembly (a small gcc program: 100%). Built without, only
/// functions that realign the stack or allocate a variable-sized frame do (Debian 12's python3
/// 0.01%, libc 2.5%, libstdc++ 2.6%, bash 0.2%, a Rust test binary 3%). In between are objects
/// that mix both (node 20: 66%; a Rust debug build, whose own code keeps frame pointers and
/// whose prebuilt standard library does not): a walk breaks in their code without them. The
/// two mistakes are not alike: a program copied that the walk would have served costs a copy
/// per sampled socket, one walked that it cannot serve loses its callers. So only an object
/// that keeps them nearly everywhere counts.
const THRESHOLD_PERCENT: usize = 90;
/// Enough for the largest binaries (node has 76k FDEs); past it the share is judged on these.
const MAX_FDES: usize = 1 << 20;
/// Largest CFI section read to judge an object (node's `.eh_frame` is 2.6 MiB).
const MAX_SECTION: u64 = 64 << 20;
/// Prologues set the CFA within their first few instructions; no more of an FDE is read.
const MAX_INSTRUCTIONS: usize = 4096;

/// An object's CFI as judging reads it: each section with its address as the object states it
/// (pointers in `.eh_frame` are relative to those).
#[derive(Default)]
pub(super) struct Sections<'a> {
    pub eh_frame: Option<(&'a [u8], u64)>,
    pub debug_frame: Option<&'a [u8]>,
    pub text: Option<u64>,
    pub got: Option<u64>,
    /// A Go binary: its runtime keeps frame pointers whatever its CFI says.
    pub go: bool,
}

/// Whether an ELF object keeps frame pointers in its functions, so that the kernel's
/// frame-pointer walk through it is as good as unwinding a copy of the stack (and cheaper: no
/// 16 KiB copy per sampled socket). Judged from its CFI: the share of FDEs whose rules at some
/// point define the CFA from rbp (DWARF register 6), against [`THRESHOLD_PERCENT`]. A Go binary
/// (a `.gopclntab` or `.go.buildinfo` section) always keeps them, whatever its CFI says. An
/// object whose CFI covers no function of its own, or that cannot be read: false, as the copy
/// still unwinds through its libraries' CFI, and walks the rest by frame pointer.
/// `elf` is the file's bytes, or a reader of them (`object::ReadCache`, which reads the
/// sections asked for and no more).
pub fn keeps_frame_pointers<'data, R: object::ReadRef<'data>>(elf: R) -> bool {
    let Ok(file) = object::read::elf::ElfFile64::<object::Endianness, R>::parse(elf) else {
        return false;
    };
    let address = |name| Some(file.section_by_name(name)?.address());
    // Only sections of a size real objects have are read: the file may be anyone's, and
    // state a section of gigabytes.
    let data = |name| {
        let section = file.section_by_name(name)?;
        if section.size() > MAX_SECTION {
            return None;
        }
        section.data().ok()
    };
    let eh_frame = data(".eh_frame").zip(address(".eh_frame"));
    judge(Sections {
        debug_frame: if eh_frame.is_none() {
            data(".debug_frame")
        } else {
            None
        },
        eh_frame,
        text: address(".text"),
        got: address(".got"),
        go: address(".gopclntab").is_some() || address(".go.buildinfo").is_some(),
    })
}

pub(super) fn judge(sections: Sections) -> bool {
    if sections.go {
        return true;
    }
    let mut bases = BaseAddresses::default();
    if let Some(text) = sections.text {
        bases = bases.set_text(text);
    }
    if let Some(got) = sections.got {
        bases = bases.set_got(got);
    }
    let (rbp, fdes) = if let Some((data, address)) = sections.eh_frame {
        let mut eh_frame = EhFrame::new(data, LittleEndian);
        eh_frame.set_address_size(8);
        rbp_fdes(eh_frame, &bases.set_eh_frame(address))
    } else if let Some(data) = sections.debug_frame {
        let mut debug_frame = DebugFrame::new(data, LittleEndian);
        debug_frame.set_address_size(8);
        rbp_fdes(debug_frame, &bases)
    } else {
        (0, 0)
    };
    fdes > 0 && rbp * 100 >= fdes * THRESHOLD_PERCENT
}

/// (FDEs that at some point set the CFA from rbp, FDEs read); a malformed entry ends the count.
/// What is not a function of the program's own is not counted: PLT stubs (their CFA is an
/// expression), the outermost frame (`_start`, whose return address is undefined), and code
/// whose CFA never moves (stubs and leaves that make no frame either way), which would
/// otherwise outweigh the few functions of a small program.
fn rbp_fdes<'a, S>(section: S, bases: &BaseAddresses) -> (usize, usize)
where
    S: UnwindSection<EndianSlice<'a, LittleEndian>>,
{
    let (mut rbp, mut fdes) = (0, 0);
    let mut entries = section.entries(bases);
    while fdes < MAX_FDES {
        let fde = match entries.next() {
            Ok(Some(CieOrFde::Fde(partial))) => partial.parse(S::cie_from_offset),
            Ok(Some(CieOrFde::Cie(_))) => continue,
            Ok(None) | Err(_) => break,
        };
        let Ok(fde) = fde else { continue };
        let (mut from_rbp, mut not_a_function, mut moves) = (false, false, false);
        let mut instructions = fde.instructions(&section, bases);
        for _ in 0..MAX_INSTRUCTIONS {
            match instructions.next() {
                // A function that sets up rbp is one of the program's: nothing more to read.
                Ok(Some(instruction)) if sets_cfa_from_rbp(&instruction) => {
                    (from_rbp, moves) = (true, true);
                    break;
                }
                Ok(Some(instruction)) => {
                    moves |= !matches!(
                        instruction,
                        CallFrameInstruction::Nop
                            | CallFrameInstruction::AdvanceLoc { .. }
                            | CallFrameInstruction::SetLoc { .. }
                    );
                    not_a_function |= matches!(
                        instruction,
                        CallFrameInstruction::DefCfaExpression { .. }
                            | CallFrameInstruction::Undefined {
                                register: X86_64::RA
                            }
                    );
                }
                Ok(None) | Err(_) => break,
            }
        }
        if moves && !not_a_function {
            fdes += 1;
            rbp += usize::from(from_rbp);
        }
    }
    (rbp, fdes)
}

fn sets_cfa_from_rbp<T: gimli::ReaderOffset>(instruction: &CallFrameInstruction<T>) -> bool {
    match instruction {
        CallFrameInstruction::DefCfa { register, .. }
        | CallFrameInstruction::DefCfaSf { register, .. }
        | CallFrameInstruction::DefCfaRegister { register } => *register == X86_64::RBP,
        _ => false,
    }
}
