//! The ELF side of `elf-x86-64-bsdiff-zstd`: which sections are rewritten,
//! where their fields are, and the difference coding of the relocation and
//! unwind tables (see the parent module for why).

use iced_x86::{Decoder, DecoderOptions, Instruction, OpKind};

/// Which way a rewrite goes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Direction {
    /// As built → normalised.
    Normalise,
    /// Normalised → as built.
    Denormalise,
}

/// A section whose fields are rewritten.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) struct Section {
    pub(super) kind: Kind,
    /// File offset and size, within the file.
    pub(super) offset: usize,
    pub(super) size: usize,
    /// Virtual address of the first byte.
    addr: u64,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Kind {
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
pub(super) fn layout(elf: &[u8]) -> Result<Vec<Section>, &'static str> {
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
    let table_end = shoff
        .checked_add(shnum * SHDR_SIZE)
        .filter(|end| *end <= elf.len())
        .ok_or("the section header table reaches past the end of the file")?;
    let names = section_names(elf, shoff, shnum)?;
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
    // Within the section header table, which the caller checked is in `elf`.
    let header = shoff + index * SHDR_SIZE;
    let offset = usize::try_from(u64_at(elf, header + 24)?).ok();
    let size = usize::try_from(u64_at(elf, header + 32)?).ok();
    Ok(offset
        .zip(size)
        .and_then(|(offset, size)| elf.get(offset..offset.checked_add(size)?)))
}

/// Calls `visit` with the file offset, the instruction's end address (mod
/// 2^32) and the value of every field [`field_offset`] finds in the code
/// sections, in file order, by a linear sweep with the decoder.
///
/// Callers that rewrite fields do so afterwards: instruction lengths do not
/// depend on displacement values, so the rewritten code sweeps into the same
/// fields. The decoder reads a copy of a window of a section at a time; an
/// instruction starting in a window is decoded whole, as the copy reaches 15
/// bytes (the longest instruction) past the window.
///
/// # Errors
///
/// The first error of `visit`, which stops the sweep.
pub(super) fn for_each_field<E>(
    elf: &[u8],
    sections: &[Section],
    mut visit: impl FnMut(usize, u32, u32) -> Result<(), E>,
) -> Result<(), E> {
    const WINDOW: usize = 64 * 1024;
    const MAX_INSTRUCTION: usize = 15;
    let mut window = Vec::with_capacity(WINDOW + MAX_INSTRUCTION);
    let mut instruction = Instruction::default();
    for section in sections.iter().filter(|s| s.kind == Kind::Code) {
        // `layout` checked that the section lies within the file.
        let code = &elf[section.offset..section.offset + section.size];
        let mut pos = 0;
        while pos < code.len() {
            let end = code.len().min(pos + WINDOW);
            window.clear();
            window.extend_from_slice(&code[pos..code.len().min(end + MAX_INSTRUCTION)]);
            let ip = section.addr.wrapping_add(pos as u64);
            let mut decoder = Decoder::with_ip(64, &window, ip, DecoderOptions::NONE);
            let mut at = 0;
            while pos + at < end && decoder.can_decode() {
                decoder.decode_out(&mut instruction);
                let field = (!instruction.is_invalid())
                    .then(|| field_offset(&decoder, &instruction))
                    .flatten();
                // The field lies within the instruction, which lies within
                // the window, a copy of `code` from `pos`.
                let bytes = field.and_then(|f| window.get(at + f..at + f + 4));
                if let (Some(field), Some(&[a, b, c, d])) = (field, bytes) {
                    let value = u32::from_le_bytes([a, b, c, d]);
                    let next_ip = instruction.next_ip() as u32;
                    visit(section.offset + pos + at + field, next_ip, value)?;
                }
                // The decoder consumes at least one byte per instruction,
                // valid or not; `max` makes progress certain anyway.
                at = decoder.position().max(at + 1);
            }
            pos += at;
        }
    }
    Ok(())
}

/// Offset within the instruction of its 4-byte RIP-relative displacement or
/// `rel32` branch displacement, if it has one: the fields that hold where
/// the instruction refers to, relative to where it is.
fn field_offset(decoder: &Decoder<'_>, instruction: &Instruction) -> Option<usize> {
    let offsets = decoder.get_constant_offsets(instruction);
    let field = if instruction.is_ip_rel_memory_operand() && offsets.displacement_size() == 4 {
        offsets.displacement_offset()
    } else if instruction.op0_kind() == OpKind::NearBranch64 && offsets.immediate_size() == 4 {
        offsets.immediate_offset()
    } else {
        return None;
    };
    (field + 4 <= instruction.len()).then_some(field)
}

/// Rewrites the relocation and unwind tables of `elf` in `direction`: they
/// are difference-coded, so the result does not depend on the code.
pub(super) fn transform_tables(elf: &mut [u8], sections: &[Section], direction: Direction) {
    for section in sections {
        // `layout` checked that the section lies within the file.
        transform_table(
            section,
            &mut elf[section.offset..section.offset + section.size],
            direction,
        );
    }
}

/// [`transform_tables`] for one section's bytes (nothing for code).
pub(super) fn transform_table(section: &Section, bytes: &mut [u8], direction: Direction) {
    match section.kind {
        Kind::Code => {}
        Kind::Rela => transform_rela(bytes, direction),
        Kind::EhFrameHdr => transform_eh_frame_hdr(bytes, direction),
    }
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
        // Found by fuzzing: a section header table offset near the top of
        // the address space with a name table index overflowed an addition.
        let mut far_table = ok.clone();
        far_table[0x28..0x30].copy_from_slice(&(u64::MAX - 10).to_le_bytes());
        far_table[0x3e..0x40].copy_from_slice(&0u16.to_le_bytes());
        assert_eq!(
            layout(&far_table),
            Err("the section header table reaches past the end of the file")
        );
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
    fn rip_relative_and_rel32_displacements_are_fields() {
        let table: [(&[u8], Option<usize>); 8] = [
            (&[0x48, 0x8d, 0x05, 1, 2, 3, 4], Some(3)), // lea rax, [rip+d]
            (&[0x83, 0x3d, 1, 2, 3, 4, 5], Some(2)),    // cmp dword [rip+d], imm8
            (&[0x48, 0xc7, 0x05, 1, 2, 3, 4, 5, 6, 7, 8], Some(3)), // mov qword [rip+d], imm32
            (&[0xe8, 1, 2, 3, 4], Some(1)),             // call rel32
            (&[0x0f, 0x85, 1, 2, 3, 4], Some(2)),       // jne rel32
            (&[0xeb, 1], None),                         // jmp rel8
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
    fn the_sweep_finds_fields_with_their_end_addresses_and_file_offsets() {
        // At 0x1040 (file offset 64): lea rax, [rip+0x10], call, jmp rel8.
        let code = [0x48, 0x8d, 0x05, 0x10, 0, 0, 0, 0xe8, 1, 0, 0, 0, 0xeb, 0];
        let mut image = elf(512, &[(CODE.0, CODE.1, 64, code.len() as u64, 0)]);
        image[64..64 + code.len()].copy_from_slice(&code);
        let shoff = 512 - SHDR_SIZE;
        image[shoff + 16..shoff + 24].copy_from_slice(&0x1040u64.to_le_bytes());
        let sections = layout(&image).unwrap();
        let mut seen = Vec::new();
        for_each_field(&image, &sections, |at, next_ip, value| {
            seen.push((at, next_ip, value));
            Ok::<(), ()>(())
        })
        .unwrap();
        assert_eq!(seen, [(67, 0x1047, 0x10), (72, 0x104c, 1)]);
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
