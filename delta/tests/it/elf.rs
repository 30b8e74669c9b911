//! Small x86-64 ELF shared objects laid out as the linker lays out
//! agent-lib (`.rela.dyn`, `.rodata`, `.eh_frame_hdr`, `.text`, section
//! headers last), with real machine code: functions that load constants
//! RIP-relative, call each other with `call rel32` and return, relative
//! relocations that point at the functions, and an unwind search table.
//! A "release" inserts functions, so everything after them moves, as in a
//! real rebuild.

/// One build: `functions` are the sizes of the filler in each function;
/// function `i` loads constant `i % constants` and calls function `i + 1`.
pub struct Build {
    pub functions: Vec<usize>,
    pub constants: usize,
}

const BASE_ADDR: u64 = 0x1000;

impl Build {
    /// A build of `count` functions whose sizes follow `seed`.
    pub fn new(count: usize, seed: u64) -> Build {
        let mut state = seed | 1;
        let functions = (0..count)
            .map(|_| {
                state ^= state << 13;
                state ^= state >> 7;
                state ^= state << 17;
                (state % 40) as usize
            })
            .collect();
        Build {
            functions,
            constants: 64,
        }
    }

    /// The same build with `extra` functions inserted at `at`.
    pub fn with_inserted(&self, at: usize, extra: &[usize]) -> Build {
        let mut functions = self.functions.clone();
        functions.splice(at..at, extra.iter().copied());
        Build {
            functions,
            constants: self.constants,
        }
    }

    /// The ELF image.
    pub fn elf(&self) -> Vec<u8> {
        let n = self.functions.len();
        // Offsets in the file equal addresses minus BASE_ADDR.
        let rela_off = 64;
        let rela_size = 24 * n;
        let rodata_off = rela_off + rela_size;
        let rodata_size = 16 * self.constants;
        let hdr_off = rodata_off + rodata_size;
        let hdr_size = 12 + 8 * n;
        let text_off = hdr_off + hdr_size;
        let starts: Vec<usize> = self
            .functions
            .iter()
            .scan(text_off, |at, filler| {
                let start = *at;
                *at += 7 + 5 + 5 * filler + 5 + 1; // lea, call, fillers, mov, ret
                Some(start)
            })
            .collect();
        let text_end = starts
            .last()
            .map_or(text_off, |s| s + 7 + 5 + 5 * self.functions[n - 1] + 5 + 1);
        let shstrtab = b"\0.rela.dyn\0.rodata\0.eh_frame_hdr\0.text\0.shstrtab\0";
        let shstr_off = text_end;
        let shoff = (shstr_off + shstrtab.len()).next_multiple_of(8);
        let addr = |off: usize| BASE_ADDR + off as u64;

        let mut elf = vec![0u8; shoff + 64 * 6];
        elf[..6].copy_from_slice(&[0x7f, b'E', b'L', b'F', 2, 1]);
        elf[6] = 1;
        put16(&mut elf, 16, 3); // ET_DYN
        put16(&mut elf, 18, 62); // EM_X86_64
        put64(&mut elf, 0x28, shoff as u64);
        put16(&mut elf, 0x34, 64);
        put16(&mut elf, 0x3a, 64);
        put16(&mut elf, 0x3c, 6);
        put16(&mut elf, 0x3e, 5);
        // .rela.dyn: a table of pointers to every function, placed after
        // the code (as .data.rel.ro is), so it moves with it.
        let table = addr(shoff).next_multiple_of(4096);
        for (i, start) in starts.iter().enumerate() {
            let at = rela_off + 24 * i;
            put64(&mut elf, at, table + 8 * i as u64);
            put64(&mut elf, at + 8, 8); // R_X86_64_RELATIVE
            put64(&mut elf, at + 16, addr(*start));
        }
        for i in 0..rodata_size {
            elf[rodata_off + i] = (i * 31 % 251) as u8;
        }
        // .eh_frame_hdr: version 1, pcrel sdata4, udata4, datarel sdata4.
        elf[hdr_off..hdr_off + 4].copy_from_slice(&[1, 0x1b, 0x03, 0x3b]);
        put32(&mut elf, hdr_off + 8, n as u32);
        for (i, start) in starts.iter().enumerate() {
            let at = hdr_off + 12 + 8 * i;
            put32(&mut elf, at, (start - hdr_off) as u32);
            put32(&mut elf, at + 4, (0x100 + 24 * i) as u32);
        }
        for (i, (start, filler)) in starts.iter().zip(&self.functions).enumerate() {
            let mut at = *start;
            // lea rax, [rip + constant]
            let constant = rodata_off + 16 * (i % self.constants);
            elf[at..at + 3].copy_from_slice(&[0x48, 0x8d, 0x05]);
            put32(&mut elf, at + 3, (constant as i64 - (at + 7) as i64) as u32);
            at += 7;
            // call rel32 to the next function (or itself, for the last)
            let callee = starts.get(i + 1).unwrap_or(start);
            elf[at] = 0xe8;
            put32(&mut elf, at + 1, (*callee as i64 - (at + 5) as i64) as u32);
            at += 5;
            for k in 0..*filler {
                elf[at] = 0xb8; // mov eax, imm32
                put32(&mut elf, at + 1, (k * 7 + i % 3) as u32);
                at += 5;
            }
            elf[at] = 0xb8;
            put32(&mut elf, at + 1, i as u32);
            elf[at + 5] = 0xc3; // ret
        }
        elf[shstr_off..shstr_off + shstrtab.len()].copy_from_slice(shstrtab);
        let sections = [
            (1, 4, 1, 0, rela_off, rela_size, 24), // .rela.dyn: SHT_RELA, A
            (11, 1, 2, 0, rodata_off, rodata_size, 0), // .rodata: PROGBITS, A
            (19, 1, 2, 0, hdr_off, hdr_size, 0),   // .eh_frame_hdr
            (33, 1, 6, 0, text_off, text_end - text_off, 0), // .text: AX
            (39, 3, 0, 1, shstr_off, shstrtab.len(), 0), // .shstrtab: STRTAB
        ];
        for (i, (name, kind, flags, no_addr, off, size, entsize)) in
            sections.into_iter().enumerate()
        {
            let at = shoff + 64 * (i + 1);
            put32(&mut elf, at, name);
            put32(&mut elf, at + 4, kind);
            put64(&mut elf, at + 8, flags);
            put64(&mut elf, at + 16, if no_addr == 1 { 0 } else { addr(off) });
            put64(&mut elf, at + 24, off as u64);
            put64(&mut elf, at + 32, size as u64);
            put64(&mut elf, at + 56, entsize);
        }
        elf
    }
}

fn put16(elf: &mut [u8], at: usize, v: u16) {
    elf[at..at + 2].copy_from_slice(&v.to_le_bytes());
}

fn put32(elf: &mut [u8], at: usize, v: u32) {
    elf[at..at + 4].copy_from_slice(&v.to_le_bytes());
}

fn put64(elf: &mut [u8], at: usize, v: u64) {
    elf[at..at + 8].copy_from_slice(&v.to_le_bytes());
}
