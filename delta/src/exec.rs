//! `elf-x86-64-bsdiff-zstd`: bsdiff+zstd of *normalised* x86-64 ELF
//! shared objects, in the manner of Chrome's Courgette and Zucchini.
//!
//! A feature-size change moves nearly every function and constant of the
//! library, so nearly every RIP-relative operand, `R_X86_64_RELATIVE`
//! relocation and unwind table entry changes, and a plain bsdiff pays for
//! each. Normalising rewrites those fields so that they no longer depend on
//! where the *referring* bytes sit:
//!
//! - **RIP-relative `disp32`** in executable sections (found by a linear
//!   sweep with the `iced-x86` decoder) holds the absolute target
//!   `end_of_instruction + disp` (mod 2^32) instead of `disp`: a load of an
//!   unmoved constant from code that moved is then unchanged. `rel32`
//!   branches are left alone (see [`field_offset`]).
//! - **`R_X86_64_RELATIVE` entries** of `SHT_RELA` sections hold their
//!   `r_offset` as the difference from the previous such entry of the
//!   section (sorted by the linker, so nearly always 8); `r_addend` is an
//!   absolute target already.
//! - **`.eh_frame_hdr`**'s sorted search table holds each entry as the
//!   difference from the previous one: function and FDE sizes, which an
//!   unchanged function keeps wherever it moved.
//!
//! Both rewrites are bijections on any bytes (wrapping arithmetic), and
//! neither changes an ELF header, a section header, a relocation's type or
//! an instruction's length (x86 instruction lengths depend on prefixes,
//! opcode, ModRM and SIB, never on a displacement's value), so the same
//! fields are found again in the normalised bytes and [`transform`] with
//! [`Direction::Denormalise`] restores them exactly. What would break that
//! — sections overlapping each other or the headers — is refused as
//! [`DeltaError::NotApplicable`].
//!
//! The blob is a `bsdiff-zstd` patch (`crate::bsdiff_zstd`) from the
//! normalised base to the normalised new build. Applying normalises the
//! base, patches into a buffer of the declared size, denormalises it and
//! writes it out. Memory: the base, a normalised copy, the new build and the
//! `bsdiff-zstd` buffers (≈ 3× the library). A hostile patch can only make
//! a different output of the declared size, which the caller's hash check
//! refuses; every offset read from a header is bounds-checked.

use iced_x86::{Decoder, DecoderOptions, Instruction};

use crate::output::Output;
use crate::{DeltaError, DeltaFormat, bsdiff_zstd};

const FORMAT: DeltaFormat = DeltaFormat::ElfX86BsdiffZstd;

/// Which way [`transform`] rewrites the fields.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Direction {
    /// As built → normalised.
    Normalise,
    /// Normalised → as built.
    Denormalise,
}

pub(crate) fn create(base: &[u8], new: &[u8]) -> Result<Vec<u8>, DeltaError> {
    let not_applicable = |reason| DeltaError::NotApplicable {
        format: FORMAT,
        reason,
    };
    let mut old = base.to_vec();
    transform(&mut old, Direction::Normalise).map_err(not_applicable)?;
    let mut normalised = new.to_vec();
    transform(&mut normalised, Direction::Normalise).map_err(not_applicable)?;
    // The rewrite is a bijection by construction; checking it here turns a
    // layout it cannot handle into NotApplicable rather than a SelfCheck.
    let mut back = normalised.clone();
    transform(&mut back, Direction::Denormalise).map_err(not_applicable)?;
    if back != new {
        return Err(not_applicable(
            "normalising the new build does not round-trip",
        ));
    }
    drop(back);
    bsdiff_zstd::create(FORMAT, &old, &normalised)
}

pub(crate) fn apply(base: &[u8], patch: &[u8], out: &mut Output<'_>) -> Result<(), DeltaError> {
    let size = out.size();
    let mut old = Vec::new();
    old.try_reserve_exact(base.len())
        .map_err(|_| too_large("normalised base", base.len()))?;
    old.extend_from_slice(base);
    transform(&mut old, Direction::Normalise).map_err(|reason| DeltaError::NotApplicable {
        format: FORMAT,
        reason,
    })?;
    let mut new = Vec::new();
    new.try_reserve_exact(size)
        .map_err(|_| too_large("output", size))?;
    let mut inner = Output::new(FORMAT, &mut new, size);
    bsdiff_zstd::apply(FORMAT, &old, patch, &mut inner)?;
    inner.finish()?;
    drop(old);
    transform(&mut new, Direction::Denormalise).map_err(|reason| DeltaError::Corrupt {
        format: FORMAT,
        reason: format!("the patched build is not an x86-64 ELF: {reason}"),
    })?;
    out.write(&new)
}

fn too_large(what: &'static str, size: usize) -> DeltaError {
    DeltaError::TooLarge {
        format: FORMAT,
        what,
        limit: size as u64,
    }
}

/// A section whose fields are rewritten.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Section {
    kind: Kind,
    /// File offset and size, within the file.
    offset: usize,
    size: usize,
    /// Virtual address of the first byte.
    addr: u64,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Kind {
    /// `SHT_PROGBITS` with `SHF_EXECINSTR`: machine code.
    Code,
    /// `SHT_RELA` with 24-byte entries.
    Rela,
    /// `.eh_frame_hdr` with its usual encodings: a sorted table of
    /// `(function, FDE)` 4-byte offsets.
    EhFrameHdr,
}

const SHT_PROGBITS: u32 = 1;
const SHT_RELA: u32 = 4;
const SHF_EXECINSTR: u64 = 4;
const EM_X86_64: u16 = 62;
const R_X86_64_RELATIVE: u64 = 8;
const EHDR_SIZE: usize = 64;
const SHDR_SIZE: usize = 64;
const RELA_SIZE: usize = 24;

/// Rewrites the fields of the ELF image `elf` in place, in `direction`.
///
/// # Errors
///
/// A reason for the log when `elf` is not a 64-bit little-endian x86-64
/// ELF, a header points outside it, or rewritten sections overlap each other
/// or the headers.
pub(crate) fn transform(elf: &mut [u8], direction: Direction) -> Result<(), &'static str> {
    for section in layout(elf)? {
        let bytes = &mut elf[section.offset..section.offset + section.size];
        match section.kind {
            Kind::Code => transform_code(bytes, section.addr, direction),
            Kind::Rela => transform_rela(bytes, direction),
            Kind::EhFrameHdr => transform_eh_frame_hdr(bytes, direction),
        }
    }
    Ok(())
}

fn read<const N: usize>(bytes: &[u8], at: usize) -> Result<[u8; N], &'static str> {
    at.checked_add(N)
        .and_then(|end| bytes.get(at..end))
        .and_then(|b| b.try_into().ok())
        .ok_or("a header reaches past the end of the file")
}

fn u16_at(bytes: &[u8], at: usize) -> Result<u16, &'static str> {
    read(bytes, at).map(u16::from_le_bytes)
}

fn u32_at(bytes: &[u8], at: usize) -> Result<u32, &'static str> {
    read(bytes, at).map(u32::from_le_bytes)
}

fn u64_at(bytes: &[u8], at: usize) -> Result<u64, &'static str> {
    read(bytes, at).map(u64::from_le_bytes)
}

/// The sections to rewrite, sorted by offset, each within the file and
/// overlapping neither another one nor the ELF or section headers.
fn layout(elf: &[u8]) -> Result<Vec<Section>, &'static str> {
    let ident: [u8; 6] = read(elf, 0)?;
    if ident != [0x7f, b'E', b'L', b'F', 2, 1] {
        return Err("not a 64-bit little-endian ELF file");
    }
    if u16_at(elf, 18)? != EM_X86_64 {
        return Err("not an x86-64 ELF file");
    }
    let shoff = usize::try_from(u64_at(elf, 0x28)?).map_err(|_| "bad section header offset")?;
    if usize::from(u16_at(elf, 0x3a)?) != SHDR_SIZE {
        return Err("unexpected section header size");
    }
    let shnum = usize::from(u16_at(elf, 0x3c)?);
    let names = section_names(elf, shoff, shnum)?;
    let table_end = shoff
        .checked_add(shnum * SHDR_SIZE)
        .filter(|end| *end <= elf.len())
        .ok_or("the section header table reaches past the end of the file")?;
    let mut sections = Vec::new();
    for header in elf[shoff..table_end].chunks_exact(SHDR_SIZE) {
        // `shoff..table_end` is within `elf` (checked above).
        let sh_type = u32_at(header, 4)?;
        let flags = u64_at(header, 8)?;
        let name = names.and_then(|names| {
            let at = usize::try_from(u32_at(header, 0).ok()?).ok()?;
            names.get(at..at.checked_add(EH_FRAME_HDR.len())?)
        });
        let kind = match sh_type {
            SHT_PROGBITS if flags & SHF_EXECINSTR != 0 => Kind::Code,
            SHT_PROGBITS if name == Some(EH_FRAME_HDR) => Kind::EhFrameHdr,
            SHT_RELA if u64_at(header, 56)? == RELA_SIZE as u64 => Kind::Rela,
            _ => continue,
        };
        let offset = usize::try_from(u64_at(header, 24)?).map_err(|_| "bad section offset")?;
        let size = usize::try_from(u64_at(header, 32)?).map_err(|_| "bad section size")?;
        if offset.checked_add(size).is_none_or(|end| end > elf.len()) {
            return Err("a section reaches past the end of the file");
        }
        if size == 0 {
            continue;
        }
        let addr = u64_at(header, 16)?;
        sections.push(Section {
            kind,
            offset,
            size,
            addr,
        });
    }
    sections.sort_by_key(|s| s.offset);
    let mut covered = EHDR_SIZE; // Rewritten bytes must start after this.
    for section in &sections {
        if section.offset < covered {
            return Err("rewritten sections overlap each other or the ELF header");
        }
        let end = section.offset + section.size;
        if section.offset < table_end && shoff < end {
            return Err("a rewritten section overlaps the section headers");
        }
        covered = end;
    }
    Ok(sections)
}

/// Name of the section [`Kind::EhFrameHdr`] stands for, with its NUL.
const EH_FRAME_HDR: &[u8] = b".eh_frame_hdr\0";

/// The section name string table (`e_shstrndx`), if there is a valid one;
/// without it no section is taken for `.eh_frame_hdr`.
fn section_names(elf: &[u8], shoff: usize, shnum: usize) -> Result<Option<&[u8]>, &'static str> {
    let index = usize::from(u16_at(elf, 0x3e)?);
    if index >= shnum {
        return Ok(None);
    }
    let header = shoff + index * SHDR_SIZE; // < table_end, checked by the caller
    let offset = usize::try_from(u64_at(elf, header + 24)?).ok();
    let size = usize::try_from(u64_at(elf, header + 32)?).ok();
    Ok(offset
        .zip(size)
        .and_then(|(offset, size)| elf.get(offset..offset.checked_add(size)?)))
}

/// Linear sweep of one code section at virtual address `addr`; every
/// RIP-relative `disp32` becomes its absolute target (or back).
///
/// The decoder reads a copy of a window of the section, so the section can
/// be rewritten as the sweep goes; an instruction starting in a window is
/// decoded whole, as the copy reaches 15 bytes (the longest instruction)
/// past the window.
fn transform_code(code: &mut [u8], addr: u64, direction: Direction) {
    const WINDOW: usize = 64 * 1024;
    const MAX_INSTRUCTION: usize = 15;
    let mut window = Vec::with_capacity(WINDOW + MAX_INSTRUCTION);
    let mut instruction = Instruction::default();
    let mut pos = 0;
    while pos < code.len() {
        let end = code.len().min(pos + WINDOW);
        window.clear();
        window.extend_from_slice(&code[pos..code.len().min(end + MAX_INSTRUCTION)]);
        let ip = addr.wrapping_add(pos as u64);
        let mut decoder = Decoder::with_ip(64, &window, ip, DecoderOptions::NONE);
        let mut at = 0;
        while pos + at < end && decoder.can_decode() {
            decoder.decode_out(&mut instruction);
            let field = (!instruction.is_invalid())
                .then(|| field_offset(&decoder, &instruction))
                .flatten();
            if let Some(field) = field {
                // The field lies within the instruction, which lies within
                // the window, a copy of `code` from `pos`.
                let field_at = pos + at + field;
                if let Some(bytes) = code.get_mut(field_at..field_at + 4) {
                    let next_ip = instruction.next_ip() as u32;
                    let value = u32::from_le_bytes([bytes[0], bytes[1], bytes[2], bytes[3]]);
                    let value = match direction {
                        Direction::Normalise => value.wrapping_add(next_ip),
                        Direction::Denormalise => value.wrapping_sub(next_ip),
                    };
                    bytes.copy_from_slice(&value.to_le_bytes());
                }
            }
            // The decoder consumes at least one byte per instruction, valid
            // or not; `max` makes progress certain anyway.
            at = decoder.position().max(at + 1);
        }
        pos += at;
    }
}

/// Offset within the instruction of its 4-byte RIP-relative displacement,
/// if it has one.
///
/// `rel32` branches are left as they are: most calls and jumps stay within
/// a run of code that moves as a whole, where the displacement does not
/// change, and rewriting them to absolute targets made the feature-size
/// delta of docs/benchmarks.md ("Deltas") 10 % larger, not smaller.
fn field_offset(decoder: &Decoder<'_>, instruction: &Instruction) -> Option<usize> {
    let offsets = decoder.get_constant_offsets(instruction);
    let field = if instruction.is_ip_rel_memory_operand() && offsets.displacement_size() == 4 {
        offsets.displacement_offset()
    } else {
        return None;
    };
    (field + 4 <= instruction.len()).then_some(field)
}

/// `r_offset` and `r_addend` of each `R_X86_64_RELATIVE` entry become the
/// differences from the previous such entry's (or back): offsets are sorted
/// by the linker, so they step by 8, and consecutive addends are mostly the
/// entries of one vtable or string table, whose distances a rebuild keeps.
fn transform_rela(rela: &mut [u8], direction: Direction) {
    let mut previous = [0u64; 2];
    for entry in rela.chunks_exact_mut(RELA_SIZE) {
        let info = u64::from_le_bytes(entry[8..16].try_into().unwrap_or_default());
        if info & 0xffff_ffff != R_X86_64_RELATIVE {
            continue;
        }
        for (at, previous) in [0, 16].into_iter().zip(&mut previous) {
            let word = &mut entry[at..at + 8];
            let stored = u64::from_le_bytes(word.try_into().unwrap_or_default());
            word.copy_from_slice(&delta_step(stored, previous, direction).to_le_bytes());
        }
    }
}

/// One step of difference coding: the value to store for `stored` after a
/// field whose original value was `*previous`, which becomes this field's
/// original value. Wrapping, so it is a bijection on any input.
fn delta_step(stored: u64, previous: &mut u64, direction: Direction) -> u64 {
    match direction {
        Direction::Normalise => {
            let value = stored.wrapping_sub(*previous);
            *previous = stored;
            value
        }
        Direction::Denormalise => {
            *previous = stored.wrapping_add(*previous);
            *previous
        }
    }
}

/// The `.eh_frame_hdr` search table is sorted by function, so each entry
/// becomes the difference from the previous one (function and FDE sizes,
/// which an unchanged function keeps wherever it moved), or back. Only the
/// encodings every linker writes for x86-64 (`eh_frame_ptr` pcrel sdata4,
/// `fde_count` udata4, table datarel sdata4) are rewritten; anything else is
/// left as it is.
fn transform_eh_frame_hdr(hdr: &mut [u8], direction: Direction) {
    const HEADER: usize = 12;
    let Some((head, table)) = hdr.split_at_mut_checked(HEADER) else {
        return;
    };
    if head[..4] != [1, 0x1b, 0x03, 0x3b] {
        return;
    }
    let count = u32::from_le_bytes([head[8], head[9], head[10], head[11]]) as usize;
    let mut previous = [0u64; 2];
    for entry in table.chunks_exact_mut(8).take(count) {
        for (word, previous) in entry.chunks_exact_mut(4).zip(&mut previous) {
            let stored = u32::from_le_bytes([word[0], word[1], word[2], word[3]]);
            // Differences mod 2^64 truncate to differences mod 2^32; keep
            // only the low half of the original for the next step.
            let value = delta_step(u64::from(stored), previous, direction) as u32;
            *previous &= 0xffff_ffff;
            word.copy_from_slice(&value.to_le_bytes());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// An ELF header with `sections` as (type, flags, offset, size,
    /// entsize) after it, in a file of `len` bytes.
    fn elf(len: usize, sections: &[(u32, u64, u64, u64, u64)]) -> Vec<u8> {
        let mut elf = vec![0u8; len];
        elf[..6].copy_from_slice(&[0x7f, b'E', b'L', b'F', 2, 1]);
        elf[18..20].copy_from_slice(&EM_X86_64.to_le_bytes());
        let shoff = len - SHDR_SIZE * sections.len();
        elf[0x28..0x30].copy_from_slice(&(shoff as u64).to_le_bytes());
        elf[0x3a..0x3c].copy_from_slice(&(SHDR_SIZE as u16).to_le_bytes());
        elf[0x3c..0x3e].copy_from_slice(&(sections.len() as u16).to_le_bytes());
        elf[0x3e..0x40].copy_from_slice(&u16::MAX.to_le_bytes());
        for (i, (kind, flags, offset, size, entsize)) in sections.iter().enumerate() {
            let at = shoff + SHDR_SIZE * i;
            elf[at + 4..at + 8].copy_from_slice(&kind.to_le_bytes());
            elf[at + 8..at + 16].copy_from_slice(&flags.to_le_bytes());
            elf[at + 24..at + 32].copy_from_slice(&offset.to_le_bytes());
            elf[at + 32..at + 40].copy_from_slice(&size.to_le_bytes());
            elf[at + 56..at + 64].copy_from_slice(&entsize.to_le_bytes());
        }
        elf
    }

    const CODE: (u32, u64) = (SHT_PROGBITS, SHF_EXECINSTR);

    #[test]
    fn layouts_that_cannot_be_rebuilt_are_refused() {
        let ok = elf(
            1024,
            &[(CODE.0, CODE.1, 64, 100, 0), (SHT_RELA, 0, 200, 48, 24)],
        );
        assert_eq!(layout(&ok).unwrap().len(), 2);
        let mut class32 = ok.clone();
        class32[4] = 1;
        let mut arm = ok.clone();
        arm[18] = 183;
        let mut table_past_end = ok.clone();
        table_past_end[0x28..0x30].copy_from_slice(&1000u64.to_le_bytes());
        let table: [(&str, Vec<u8>, &str); 7] = [
            ("empty", vec![], "a header reaches past the end of the file"),
            ("32-bit", class32, "not a 64-bit little-endian ELF file"),
            ("arm", arm, "not an x86-64 ELF file"),
            (
                "table past end",
                table_past_end,
                "the section header table reaches past the end of the file",
            ),
            (
                "section past end",
                elf(1024, &[(CODE.0, CODE.1, 1000, 100, 0)]),
                "a section reaches past the end of the file",
            ),
            (
                "overlapping sections",
                elf(
                    1024,
                    &[(CODE.0, CODE.1, 64, 100, 0), (SHT_RELA, 0, 150, 48, 24)],
                ),
                "rewritten sections overlap each other or the ELF header",
            ),
            (
                "section over the headers",
                elf(1024, &[(CODE.0, CODE.1, 900, 100, 0)]),
                "a rewritten section overlaps the section headers",
            ),
        ];
        for (name, bytes, reason) in table {
            assert_eq!(layout(&bytes), Err(reason), "{name}");
        }
        // Sections that are not rewritten may overlap anything.
        let data = elf(
            1024,
            &[(SHT_PROGBITS, 0, 0, 1024, 0), (CODE.0, CODE.1, 64, 100, 0)],
        );
        assert_eq!(layout(&data).unwrap().len(), 1);
    }

    #[test]
    fn only_rip_relative_displacements_are_fields() {
        let table: [(&[u8], Option<usize>); 6] = [
            (&[0x48, 0x8d, 0x05, 1, 2, 3, 4], Some(3)), // lea rax, [rip+d]
            (&[0x83, 0x3d, 1, 2, 3, 4, 5], Some(2)),    // cmp dword [rip+d], imm8
            (&[0x48, 0xc7, 0x05, 1, 2, 3, 4, 5, 6, 7, 8], Some(3)), // mov qword [rip+d], imm32
            (&[0xe8, 1, 2, 3, 4], None),                // call rel32
            (&[0x48, 0x8b, 0x80, 1, 2, 3, 4], None),    // mov rax, [rax+d]
            (&[0xff], None),                            // invalid
        ];
        for (bytes, expected) in table {
            let mut decoder = Decoder::with_ip(64, bytes, 0x1000, DecoderOptions::NONE);
            let instruction = decoder.decode();
            let got = (!instruction.is_invalid())
                .then(|| field_offset(&decoder, &instruction))
                .flatten();
            assert_eq!(got, expected, "{bytes:02x?}");
        }
    }

    #[test]
    fn code_holds_absolute_targets_when_normalised() {
        // At 0x1000: lea rax, [rip+0x10] (ends at 0x1007), then a call.
        let mut code = vec![0x48, 0x8d, 0x05, 0x10, 0, 0, 0, 0xe8, 1, 0, 0, 0];
        let original = code.clone();
        transform_code(&mut code, 0x1000, Direction::Normalise);
        assert_eq!(code[3..7], 0x1017u32.to_le_bytes());
        assert_eq!(code[7..], original[7..]);
        transform_code(&mut code, 0x1000, Direction::Denormalise);
        assert_eq!(code, original);
    }

    #[test]
    fn difference_coding_round_trips_and_steps_by_the_gaps() {
        let values = [8u64, 16, 24, 0, u64::MAX, 5];
        let mut previous = 0;
        let coded: Vec<u64> = values
            .iter()
            .map(|v| delta_step(*v, &mut previous, Direction::Normalise))
            .collect();
        assert_eq!(coded[..3], [8, 8, 8]);
        let mut previous = 0;
        let back: Vec<u64> = coded
            .iter()
            .map(|v| delta_step(*v, &mut previous, Direction::Denormalise))
            .collect();
        assert_eq!(back, values);
    }
}
