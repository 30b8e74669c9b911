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
    pub(super) addr: u64,
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

/// Bytes of one section in a patch's section layout ([`write_layout`]).
const LAYOUT_ENTRY: usize = 17;

/// Appends `sections` (as [`layout`] returns them, of a file of at most
/// `crate::MAX_SIZE` bytes) to a patch header: u16 count, then per section
/// its kind u8 (0 code, 1 relocations, 2 `.eh_frame_hdr`), file offset
/// u32, size u32 and address u64, all little-endian.
pub(super) fn write_layout(sections: &[Section], out: &mut Vec<u8>) {
    // `layout` takes at most one section per section header, of which ELF
    // counts at most u16::MAX; offsets and sizes lie within a file of at
    // most MAX_SIZE (1 GiB) bytes.
    out.extend_from_slice(&(sections.len() as u16).to_le_bytes());
    for section in sections {
        let kind: u8 = match section.kind {
            Kind::Code => 0,
            Kind::Rela => 1,
            Kind::EhFrameHdr => 2,
        };
        out.push(kind);
        out.extend_from_slice(&(section.offset as u32).to_le_bytes());
        out.extend_from_slice(&(section.size as u32).to_le_bytes());
        out.extend_from_slice(&section.addr.to_le_bytes());
    }
}

/// Reads a section layout [`write_layout`] wrote at the start of `bytes`
/// for a file of `file_size` bytes; returns it and the bytes after it.
/// Holds it to what [`layout`] guarantees, so a patch cannot make the
/// applier rewrite past the output or twice over: sections non-empty,
/// sorted, apart, after the ELF header and within the file. (Whether they
/// are the file's real sections only the result's hash tells.) Allocates
/// only for entries `bytes` holds.
pub(super) fn read_layout(
    bytes: &[u8],
    file_size: usize,
) -> Result<(Vec<Section>, &[u8]), &'static str> {
    let (count, rest) = bytes
        .split_first_chunk::<2>()
        .ok_or("truncated section layout")?;
    let count = usize::from(u16::from_le_bytes(*count));
    let (entries, rest) = rest
        .split_at_checked(count * LAYOUT_ENTRY)
        .ok_or("truncated section layout")?;
    let mut sections = Vec::with_capacity(count);
    let mut covered = EHDR_SIZE;
    for entry in entries.chunks_exact(LAYOUT_ENTRY) {
        let kind = match entry[0] {
            0 => Kind::Code,
            1 => Kind::Rela,
            2 => Kind::EhFrameHdr,
            _ => return Err("unknown section kind"),
        };
        // Widening: u32 fits usize on every platform we build for.
        let offset = u32_at(entry, 1)? as usize;
        let size = u32_at(entry, 5)? as usize;
        let addr = u64_at(entry, 9)?;
        if size == 0 {
            return Err("an empty section");
        }
        if offset < covered {
            return Err("sections out of order, overlapping or over the ELF header");
        }
        let end = offset
            .checked_add(size)
            .filter(|end| *end <= file_size)
            .ok_or("a section reaches past the end of the build")?;
        covered = end;
        sections.push(Section {
            kind,
            offset,
            size,
            addr,
        });
    }
    Ok((sections, rest))
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
/// fields. The decoder reads a window of a section at a time; an
/// instruction starting in a window is decoded whole, as the slice reaches
/// [`MAX_INSTRUCTION`] bytes past the window, so the instructions are those
/// of one sweep over the whole section, as [`sweep`] finds them when the
/// section streams by.
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
    for section in sections.iter().filter(|s| s.kind == Kind::Code) {
        // `layout` checked that the section lies within the file.
        let code = &elf[section.offset..section.offset + section.size];
        let mut pos = 0;
        while pos < code.len() {
            let end = code.len().min(pos + WINDOW);
            let window = &code[pos..code.len().min(end + MAX_INSTRUCTION)];
            let ip = section.addr.wrapping_add(pos as u64);
            pos += sweep(window, ip, end - pos, |at, next_ip, value| {
                visit(section.offset + pos + at, next_ip, value)
            })?;
        }
    }
    Ok(())
}

/// Length of the longest x86-64 instruction.
pub(super) const MAX_INSTRUCTION: usize = 15;

/// Decodes the instructions of `code`, whose first byte is at address `ip`
/// and starts an instruction, that start before `limit`, and calls `visit`
/// with the offset in `code`, the instruction's end address (mod 2^32) and
/// the value of each field. Returns where the next instruction starts
/// (`limit` or up to [`MAX_INSTRUCTION`] − 1 bytes past it, at most
/// `code.len()`): an instruction starting before `limit` is decoded as in
/// the whole section if `code` reaches [`MAX_INSTRUCTION`] bytes past
/// `limit` or to the end of the section.
///
/// # Errors
///
/// The first error of `visit`, which stops the sweep.
pub(super) fn sweep<E>(
    code: &[u8],
    ip: u64,
    limit: usize,
    mut visit: impl FnMut(usize, u32, u32) -> Result<(), E>,
) -> Result<usize, E> {
    let mut decoder = Decoder::with_ip(64, code, ip, DecoderOptions::NONE);
    let mut instruction = Instruction::default();
    let mut at = 0;
    while at < limit && decoder.can_decode() {
        decoder.decode_out(&mut instruction);
        let field = (!instruction.is_invalid())
            .then(|| field_offset(&decoder, &instruction))
            .flatten();
        // The field lies within the instruction, which lies within `code`.
        let bytes = field.and_then(|f| code.get(at + f..at + f + 4));
        if let (Some(field), Some(&[a, b, c, d])) = (field, bytes) {
            let value = u32::from_le_bytes([a, b, c, d]);
            visit(at + field, instruction.next_ip() as u32, value)?;
        }
        // The decoder consumes at least one byte per instruction, valid or
        // not; `max` makes progress certain anyway.
        at = decoder.position().max(at + 1);
    }
    Ok(at.min(code.len()))
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
        let bytes = &mut elf[section.offset..section.offset + section.size];
        TableCoder::new(section.kind).step(bytes, true, direction);
    }
}

/// The difference coding of one table, resumable: the table can be given
/// whole or piece by piece as it streams by, with the same result, since
/// each step sees exactly the entries the whole pass would.
///
/// - `R_X86_64_RELATIVE` entries of a [`Kind::Rela`] table: `r_offset` and
///   `r_addend` become the differences from the previous such entry's (or
///   back). Offsets are sorted by the linker, so they step by 8, and
///   consecutive addends are mostly the entries of one vtable or string
///   table, whose distances a rebuild keeps.
/// - The [`Kind::EhFrameHdr`] search table is sorted by function, so each
///   entry becomes the difference from the previous one (function and FDE
///   sizes, which an unchanged function keeps wherever it moved), or back.
///   Only the encodings every linker writes for x86-64 (`eh_frame_ptr`
///   pcrel sdata4, `fde_count` udata4, table datarel sdata4) are rewritten;
///   anything else is left as it is.
/// - [`Kind::Code`] is left as it is (its fields are labelled elsewhere).
#[derive(Clone, Debug)]
pub(super) struct TableCoder {
    kind: Kind,
    /// Original values of the previous entry's coded words.
    previous: [u64; 2],
    /// `.eh_frame_hdr` entries still to code; `None` before its header.
    entries_left: Option<usize>,
}

/// Size of the `.eh_frame_hdr` header before its search table.
const EH_FRAME_HDR_HEADER: usize = 12;

impl TableCoder {
    pub(super) fn new(kind: Kind) -> Self {
        TableCoder {
            kind,
            previous: [0; 2],
            entries_left: None,
        }
    }

    /// Rewrites the longest prefix of `bytes` (the table's bytes from where
    /// the previous step stopped) that it can: whole entries, or all of
    /// `bytes` if `end` (they reach the end of the table). Returns the
    /// length of that prefix, whose bytes are final; the rest must be given
    /// again, with more after it. Given at least [`RELA_SIZE`] bytes it
    /// returns more than 0.
    pub(super) fn step(&mut self, bytes: &mut [u8], end: bool, direction: Direction) -> usize {
        let done = match self.kind {
            Kind::Code => bytes.len(),
            Kind::Rela => self.rela(bytes, direction),
            Kind::EhFrameHdr => self.eh_frame_hdr(bytes, end, direction),
        };
        if end { bytes.len() } else { done }
    }

    fn rela(&mut self, rela: &mut [u8], direction: Direction) -> usize {
        let mut done = 0;
        for entry in rela.chunks_exact_mut(RELA_SIZE) {
            done += RELA_SIZE;
            let info = u64::from_le_bytes(entry[8..16].try_into().unwrap_or_default());
            if info & 0xffff_ffff != R_X86_64_RELATIVE {
                continue;
            }
            for (at, previous) in [0, 16].into_iter().zip(&mut self.previous) {
                let word = &mut entry[at..at + 8];
                let stored = u64::from_le_bytes(word.try_into().unwrap_or_default());
                word.copy_from_slice(&delta_step(stored, previous, direction).to_le_bytes());
            }
        }
        done
    }

    fn eh_frame_hdr(&mut self, hdr: &mut [u8], end: bool, direction: Direction) -> usize {
        let (skip, table) = match self.entries_left {
            Some(_) => (0, hdr),
            None => {
                let Some((head, table)) = hdr.split_at_mut_checked(EH_FRAME_HDR_HEADER) else {
                    return 0;
                };
                let count = u32::from_le_bytes([head[8], head[9], head[10], head[11]]);
                let known = head[..4] == [1, 0x1b, 0x03, 0x3b];
                self.entries_left = Some(if known { count as usize } else { 0 });
                (EH_FRAME_HDR_HEADER, table)
            }
        };
        let left = self.entries_left.unwrap_or_default();
        let mut done = 0;
        for entry in table.chunks_exact_mut(8).take(left) {
            done += 8;
            for (word, previous) in entry.chunks_exact_mut(4).zip(&mut self.previous) {
                let stored = u32::from_le_bytes([word[0], word[1], word[2], word[3]]);
                // Differences mod 2^64 truncate to differences mod 2^32; keep
                // only the low half of the original for the next step.
                let value = delta_step(u64::from(stored), previous, direction) as u32;
                *previous &= 0xffff_ffff;
                word.copy_from_slice(&value.to_le_bytes());
            }
        }
        let left = left - done / 8;
        self.entries_left = Some(left);
        match left {
            // Nothing after the last entry is rewritten.
            0 => skip + table.len(),
            _ if end => skip + table.len(),
            _ => skip + done,
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

    #[test]
    fn a_layout_reads_back_as_written() {
        let sections = [
            (Kind::Rela, 64, 48, 0x1040),
            (Kind::EhFrameHdr, 112, 20, 0x1070),
            (Kind::Code, 200, 100, u64::MAX - 3),
        ]
        .map(|(kind, offset, size, addr)| Section {
            kind,
            offset,
            size,
            addr,
        });
        let mut bytes = Vec::new();
        write_layout(&sections, &mut bytes);
        bytes.extend_from_slice(b"after");
        let (read, rest) = read_layout(&bytes, 300).unwrap();
        assert_eq!(read, sections);
        assert_eq!(rest, b"after");
    }

    #[test]
    fn layouts_that_lie_are_refused() {
        // (kind, offset, size) of each section, for a file of 1000 bytes.
        let layout = |sections: &[(u8, u32, u32)]| {
            let mut bytes = (sections.len() as u16).to_le_bytes().to_vec();
            for (kind, offset, size) in sections {
                bytes.push(*kind);
                bytes.extend_from_slice(&offset.to_le_bytes());
                bytes.extend_from_slice(&size.to_le_bytes());
                bytes.extend_from_slice(&0x1000u64.to_le_bytes());
            }
            bytes
        };
        let mut too_many = layout(&[(0, 64, 10)]);
        too_many[..2].copy_from_slice(&u16::MAX.to_le_bytes());
        let table: [(&str, Vec<u8>, &str); 10] = [
            ("empty", vec![], "truncated section layout"),
            ("count too big", too_many, "truncated section layout"),
            (
                "cut entry",
                layout(&[(0, 64, 10)])[..10].to_vec(),
                "truncated section layout",
            ),
            (
                "unknown kind",
                layout(&[(3, 64, 10)]),
                "unknown section kind",
            ),
            ("empty section", layout(&[(0, 64, 0)]), "an empty section"),
            (
                "over the ELF header",
                layout(&[(0, 63, 10)]),
                "sections out of order, overlapping or over the ELF header",
            ),
            (
                "overlapping",
                layout(&[(1, 64, 48), (0, 100, 10)]),
                "sections out of order, overlapping or over the ELF header",
            ),
            (
                "out of order",
                layout(&[(0, 500, 10), (1, 64, 48)]),
                "sections out of order, overlapping or over the ELF header",
            ),
            (
                "past the end",
                layout(&[(0, 990, 11)]),
                "a section reaches past the end of the build",
            ),
            (
                "far past the end",
                layout(&[(0, u32::MAX, u32::MAX)]),
                "a section reaches past the end of the build",
            ),
        ];
        for (name, bytes, reason) in table {
            assert_eq!(read_layout(&bytes, 1000).err(), Some(reason), "{name}");
        }
        assert!(read_layout(&layout(&[(0, 64, 936)]), 1000).is_ok());
        assert!(read_layout(&layout(&[]), 0).is_ok());
    }

    /// A `.rela.dyn` of relative and other entries and an `.eh_frame_hdr`
    /// with entries, all with values that step irregularly.
    fn tables() -> [(Kind, Vec<u8>); 2] {
        let mut rela = Vec::new();
        for i in 0..200u64 {
            let kind = if i % 7 == 3 { 6 } else { R_X86_64_RELATIVE };
            rela.extend_from_slice(&(0x5000 + 8 * i).to_le_bytes());
            rela.extend_from_slice(&kind.to_le_bytes());
            rela.extend_from_slice(&(0x1000 + i * i * 13).to_le_bytes());
        }
        rela.extend_from_slice(&[9; 5]); // a partial entry is left alone
        let mut hdr = vec![1, 0x1b, 0x03, 0x3b, 0, 0, 0, 0];
        hdr.extend_from_slice(&150u32.to_le_bytes());
        for i in 0..160u32 {
            hdr.extend_from_slice(&(i * i * 3).to_le_bytes());
            hdr.extend_from_slice(&(0x100 + 24 * i).to_le_bytes());
        }
        [(Kind::Rela, rela), (Kind::EhFrameHdr, hdr)]
    }

    proptest::proptest! {
        /// The streamed coding agrees with the whole-table one however the
        /// table is cut, in both directions.
        #[test]
        fn tables_code_the_same_whole_or_in_pieces(
            cuts in proptest::collection::vec(1usize..100, 1..20),
        ) {
            for (kind, table) in tables() {
                for direction in [Direction::Normalise, Direction::Denormalise] {
                    let mut whole = table.clone();
                    assert_eq!(TableCoder::new(kind).step(&mut whole, true, direction), table.len());
                    proptest::prop_assert_ne!(&whole, &table);
                    let mut coder = TableCoder::new(kind);
                    let (mut streamed, mut pending) = (Vec::new(), Vec::new());
                    let mut rest = &table[..];
                    for len in cuts.iter().cycle() {
                        let (piece, tail) = rest.split_at((*len).min(rest.len()));
                        pending.extend_from_slice(piece);
                        rest = tail;
                        let done = coder.step(&mut pending, rest.is_empty(), direction);
                        streamed.extend(pending.drain(..done));
                        if rest.is_empty() {
                            break;
                        }
                    }
                    proptest::prop_assert!(pending.is_empty());
                    proptest::prop_assert_eq!(&streamed, &whole, "{:?} {:?}", kind, direction);
                }
            }
        }
    }
}
