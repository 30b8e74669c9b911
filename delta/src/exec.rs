//! `elf-x86-64-bsdiff-zstd`: bsdiff+zstd of *normalised* x86-64 ELF
//! shared objects, in the manner of Chrome's Courgette and Zucchini.
//!
//! A feature-size change moves nearly every function and constant of the
//! library, so nearly every call, branch, RIP-relative operand,
//! `R_X86_64_RELATIVE` relocation and unwind table entry changes, and a
//! plain bsdiff pays for each. Normalising rewrites those fields so that a
//! reference that still means the same thing holds the same bytes:
//!
//! - **`rel32` branches and RIP-relative `disp32`** in executable sections
//!   (found by a linear sweep with the `iced-x86` decoder, `elf::for_each_field`)
//!   hold a *label* instead of a displacement. The base's labels are the
//!   ranks of its targets (`end_of_instruction + disp`, mod 2^32) in
//!   address order. The new build's targets take the label of the base
//!   target they were matched to ([`match_targets`]), so a call to a function
//!   that moved is unchanged; unmatched targets get fresh labels after the
//!   base's.
//! - **`R_X86_64_RELATIVE` entries** and **`.eh_frame_hdr`**'s search table
//!   are difference-coded (`elf::transform_tables`): sizes and distances,
//!   which an unchanged function keeps wherever it moved.
//!
//! None of this changes an ELF header, a section header, a relocation's
//! type or an instruction's length (x86 instruction lengths depend on
//! prefixes, opcode, ModRM and SIB, never on a displacement's value), so
//! the same fields are found again in the normalised new build. Layouts that
//! would break that (sections overlapping each other or the headers) are
//! refused as [`DeltaError::NotApplicable`].
//!
//! # Blob
//!
//! ```text
//! 3 bytes  "ELX"
//! u8       layout version: 2 (version 1 had neither tag nor section layout
//!          and began with the label table frame's length)
//! layout   the new build's rewritten sections (elf::write_layout): u16
//!          count, then per section kind u8 (0 code, 1 relocations,
//!          2 .eh_frame_hdr), file offset u32, size u32, address u64
//! u32 LE   length of the label table frame
//! zstd     label table (below), one frame with its content size
//! rest     bsdiff-zstd patch (crate::bsdiff_zstd) from the normalised base
//!          to the normalised new build
//! ```
//!
//! The label table, all integers u32 LE, gives the new build's target for
//! every label:
//!
//! ```text
//! n              labels of the base (must equal the applier's count)
//! n bytes        1 if base label i is used by the new build, else 0
//! per used i     (new target − base target) − the previous used one's
//! m              fresh labels n..n+m
//! m              their targets, each minus the previous one (sorted)
//! ```
//!
//! # Applying
//!
//! Read the base normalised as it is read ([`Normalised`]: each read is
//! normalised again from the last place before it where an instruction or
//! table entry starts, kept every [`RESUME_EVERY`] bytes; no copy of the
//! base and no list of its rewritten words) and patch; the patched bytes
//! are mapped back as they stream out
//! ([`Relabel`]): bytes outside the header's sections pass through, the
//! bytes of a section are held until whole instructions or table entries
//! can be rewritten (at most [`PENDING`] bytes), the tables' coding is
//! undone and each label replaced by `target − end`. The section layout
//! comes from the header because the new build's own section headers come
//! last in the file, after everything they describe.
//!
//! Every count, offset and label is checked: a version this build does not
//! read is [`DeltaError::UnsupportedVersion`], a header layout that is not
//! sorted, apart and within the declared size or a label the table does not
//! give is [`DeltaError::Corrupt`]. A layout that lies within those bounds,
//! like any hostile patch, only makes a different output of the declared
//! size, which the caller's hash check refuses. Memory: the base, its
//! distinct targets (4 bytes each), a label table of 8 bytes per label, the
//! resumption places and `bsdiff-zstd`'s buffers; no copy of either build
//! (docs/benchmarks.md, "Executable-aware deltas").

mod elf;
/// The ELF builds of the integration tests, for the unit tests.
#[cfg(test)]
#[path = "../tests/it/elf.rs"]
#[allow(dead_code)]
mod fixture;

use std::collections::HashMap;
use std::io::{self, Write};

use self::elf::{Direction, Kind, Section, TableCoder};
use crate::output::Output;
use crate::{DeltaError, DeltaFormat, bsdiff_zstd, ceil_log2};

const FORMAT: DeltaFormat = DeltaFormat::ElfX86BsdiffZstd;

pub(crate) fn create(base: &[u8], new: &[u8]) -> Result<Vec<u8>, DeltaError> {
    let normalised = normalise(base, new)?;
    let table = &normalised.table;
    let table = crate::compress(FORMAT, table, &[], ceil_log2(table.len() as u64), false)?;
    let body = bsdiff_zstd::create(FORMAT, &normalised.old, &normalised.new, BODY_WINDOW_LOG)?;
    let mut blob = Vec::with_capacity(64 + table.len() + body.len());
    blob.extend_from_slice(&MAGIC);
    blob.push(VERSION);
    elf::write_layout(&normalised.new_sections, &mut blob);
    // The table frame is far below 4 GiB: at most 9 bytes per field.
    blob.extend_from_slice(&(table.len() as u32).to_le_bytes());
    blob.extend_from_slice(&table);
    blob.extend_from_slice(&body);
    Ok(blob)
}

/// Both builds normalised, with what the applier needs to undo it on the
/// new one.
struct Normalisation {
    old: Vec<u8>,
    new: Vec<u8>,
    new_sections: Vec<Section>,
    /// The label table, uncompressed.
    table: Vec<u8>,
}

fn normalise(base: &[u8], new: &[u8]) -> Result<Normalisation, DeltaError> {
    let not_applicable = |reason| DeltaError::NotApplicable {
        format: FORMAT,
        reason,
    };
    let base_sections = elf::layout(base).map_err(not_applicable)?;
    let new_sections = elf::layout(new).map_err(not_applicable)?;
    let old_fields = fields(base, &base_sections);
    let new_fields = fields(new, &new_sections);
    let old_targets = sorted_targets(&old_fields);
    let new_targets = sorted_targets(&new_fields);
    let matches = match_targets(base, new, &old_fields, &new_fields)?;
    let (new_labels, table) = label_new(&old_targets, &new_targets, &matches);

    let mut old = base.to_vec();
    for (at, target) in old_fields {
        // Every target was collected from these very fields.
        let label = old_targets.binary_search(&target).unwrap_or_default() as u32;
        old[at..at + 4].copy_from_slice(&label.to_le_bytes());
    }
    elf::transform_tables(&mut old, &base_sections, Direction::Normalise);
    let mut normalised = new.to_vec();
    for (at, target) in new_fields {
        let label = new_labels[new_targets.binary_search(&target).unwrap_or_default()];
        normalised[at..at + 4].copy_from_slice(&label.to_le_bytes());
    }
    elf::transform_tables(&mut normalised, &new_sections, Direction::Normalise);
    Ok(Normalisation {
        old,
        new: normalised,
        new_sections,
        table,
    })
}

pub(crate) fn apply(base: &[u8], patch: &[u8], out: &mut Output<'_>) -> Result<(), DeltaError> {
    let size = out.size();
    let sections = elf::layout(base).map_err(|reason| DeltaError::NotApplicable {
        format: FORMAT,
        reason,
    })?;
    let blob = split(patch, size)?;
    // Fields repeat targets (≈ 2.6 fields per target in the agent library):
    // deduplicated whenever the buffer is full, it stays within about twice
    // the distinct targets, and is held for the whole patch without spare
    // room.
    let mut old_targets: Vec<u32> = Vec::new();
    let _ = elf::for_each_field(base, &sections, |_, next_ip, value| {
        if old_targets.len() == old_targets.capacity() {
            old_targets.sort_unstable();
            old_targets.dedup();
            if old_targets.len() > old_targets.capacity() / 2 {
                old_targets.reserve_exact(old_targets.capacity().max(1024));
            }
        }
        old_targets.push(value.wrapping_add(next_ip));
        Ok::<(), ()>(())
    });
    old_targets.sort_unstable();
    old_targets.dedup();
    old_targets.shrink_to_fit();
    let labels = read_table(blob.table, &old_targets, size)?;
    let old = Normalised::new(base, &sections, &old_targets);

    let mut relabel = Relabel::new(out, &labels, &blob.sections);
    let mut inner = Output::new(FORMAT, &mut relabel, size);
    bsdiff_zstd::apply(FORMAT, &old, blob.body, &mut inner, BODY_WINDOW_LOG)
        .and_then(|()| inner.finish())
        .map_err(|e| match e {
            // `Relabel`'s own errors, wrapped to pass through `io::Write`.
            DeltaError::Write { format, source } => source
                .downcast::<DeltaError>()
                .unwrap_or_else(|source| DeltaError::Write { format, source }),
            e => e,
        })
}

/// Largest zstd window of the bsdiff-zstd body (2^17 = 128 KiB), below
/// `crate::BSDIFF_MAX_WINDOW_LOG`: every window byte is memory when
/// applying, and on the agent library 2^17 made the body 0.3 % larger than
/// 2^20 for 0.8 MB less at apply (docs/benchmarks.md).
const BODY_WINDOW_LOG: u32 = 17;

/// Most bytes of a section [`Relabel`] holds before it rewrites what it can
/// (16 KiB): whole instructions, whole table entries. At least
/// [`elf::MAX_INSTRUCTION`] + 1 and the size of a relocation, so a full
/// buffer always has something it can rewrite and pass on.
const PENDING: usize = 16 * 1024;

/// The writer `bsdiff-zstd` patches into: maps the normalised new build back
/// as it streams through to `out`, by the section layout of the patch
/// header (sorted, apart, within the output: `elf::read_layout`).
struct Relabel<'a, 'o> {
    out: &'a mut Output<'o>,
    /// The new build's target of each label.
    labels: &'a [Option<u32>],
    sections: &'a [Section],
    /// Index in `sections` of the section being received, or the next one.
    next: usize,
    /// Bytes received so far, the output offset of the next one.
    pos: usize,
    /// Bytes of `sections[next]` received but not rewritten yet, which start
    /// `at` bytes into it (an instruction or table entry starts there).
    pending: Vec<u8>,
    at: usize,
    /// The table coding of `sections[next]`, from its first byte on.
    coder: Option<TableCoder>,
    /// Offsets in `pending` and values of the fields found in it.
    edits: Vec<(usize, u32)>,
}

impl<'a, 'o> Relabel<'a, 'o> {
    fn new(out: &'a mut Output<'o>, labels: &'a [Option<u32>], sections: &'a [Section]) -> Self {
        Relabel {
            out,
            labels,
            sections,
            next: 0,
            pos: 0,
            pending: Vec::with_capacity(PENDING),
            at: 0,
            coder: None,
            edits: Vec::new(),
        }
    }

    /// Takes the next bytes of the normalised build.
    fn take(&mut self, mut buf: &[u8]) -> Result<(), DeltaError> {
        while !buf.is_empty() {
            let Some(&section) = self.sections.get(self.next) else {
                self.pos += buf.len();
                return self.out.write(buf);
            };
            if self.pos < section.offset {
                let n = buf.len().min(section.offset - self.pos);
                self.out.write(&buf[..n])?;
                self.pos += n;
                buf = &buf[n..];
                continue;
            }
            // `pos` is within the section: it moves on to the next section
            // when it reaches this one's end, and sections are apart.
            let end = section.offset + section.size;
            let n = buf
                .len()
                .min(end - self.pos)
                .min(PENDING - self.pending.len());
            self.pending.extend_from_slice(&buf[..n]);
            self.pos += n;
            buf = &buf[n..];
            let complete = self.pos == end;
            if complete || self.pending.len() == PENDING {
                self.rewrite(section, complete)?;
            }
            if complete {
                self.next += 1;
                self.at = 0;
                self.coder = None;
            }
        }
        Ok(())
    }

    /// Rewrites what it can of `pending` (all of it if `complete`: it holds
    /// the rest of the section) and passes it on.
    fn rewrite(&mut self, section: Section, complete: bool) -> Result<(), DeltaError> {
        let done = if section.kind == Kind::Code {
            // A full buffer is longer than MAX_INSTRUCTION (PENDING's doc).
            let limit = if complete {
                self.pending.len()
            } else {
                self.pending.len() - elf::MAX_INSTRUCTION
            };
            let (labels, at, edits) = (self.labels, self.at, &mut self.edits);
            edits.clear();
            let ip = section.addr.wrapping_add(at as u64);
            let done = elf::sweep(&self.pending, ip, limit, |field, next_ip, label| {
                let target = labels
                    .get(label as usize)
                    .copied()
                    .flatten()
                    .ok_or_else(|| {
                        let offset = section.offset + at + field;
                        corrupt(format!("unknown label {label} at offset {offset}"))
                    })?;
                edits.push((field, target.wrapping_sub(next_ip)));
                Ok(())
            })?;
            for &(field, value) in &self.edits {
                // `sweep` found the field within `pending`.
                self.pending[field..field + 4].copy_from_slice(&value.to_le_bytes());
            }
            done
        } else {
            self.coder
                .get_or_insert_with(|| TableCoder::new(section.kind))
                .step(&mut self.pending, complete, Direction::Denormalise)
        };
        self.out.write(&self.pending[..done])?;
        self.pending.drain(..done);
        self.at += done;
        Ok(())
    }
}

impl Write for Relabel<'_, '_> {
    /// Errors are [`DeltaError`]s wrapped in `io::Error::other`, which
    /// [`apply`] unwraps.
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.take(buf).map_err(io::Error::other)?;
        Ok(buf.len())
    }

    /// The caller's writer is flushed by the caller's `Output::finish`.
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// Bytes between the places a normalisation of the base resumes from (1
/// KiB): each read of the base redoes at most this much before what it
/// reads, and each place costs a table coder's state (≈ 48 bytes).
const RESUME_EVERY: usize = 1024;

/// The base as normalised, without a copy of it or of its rewritten words:
/// each read copies the base's bytes and normalises them again, from the
/// last place before them where an instruction or table entry starts.
struct Normalised<'a> {
    base: &'a [u8],
    sections: &'a [Section],
    /// The base's targets, sorted: a field's label is its target's rank.
    targets: &'a [u32],
    /// Per section, the places a normalisation resumes from, about every
    /// [`RESUME_EVERY`] bytes: offset in the section (the first at 0, the
    /// last at its end) and the table coding's state there.
    resume: Vec<Vec<(usize, TableCoder)>>,
}

impl<'a> Normalised<'a> {
    fn new(base: &'a [u8], sections: &'a [Section], targets: &'a [u32]) -> Self {
        let mut scratch = [0u8; RESUME_EVERY];
        let resume = sections
            .iter()
            .map(|section| {
                // `layout` checked that the section lies within the file.
                let bytes = &base[section.offset..section.offset + section.size];
                let mut points = Vec::with_capacity(bytes.len() / RESUME_EVERY + 2);
                let mut coder = TableCoder::new(section.kind);
                let mut pos = 0;
                while pos < bytes.len() {
                    points.push((pos, coder.clone()));
                    let end = bytes.len().min(pos + RESUME_EVERY);
                    let done = if section.kind == Kind::Code {
                        let code = &bytes[pos..bytes.len().min(end + elf::MAX_INSTRUCTION)];
                        let ip = section.addr.wrapping_add(pos as u64);
                        elf::sweep(code, ip, end - pos, |_, _, _| Ok::<(), ()>(()))
                            .unwrap_or_default()
                    } else {
                        let piece = &mut scratch[..end - pos];
                        piece.copy_from_slice(&bytes[pos..end]);
                        coder.step(piece, end == bytes.len(), Direction::Normalise)
                    };
                    // Both make progress: a sweep decodes an instruction, a
                    // step of RESUME_EVERY bytes (or the rest) codes an entry.
                    pos += done.max(1);
                }
                points.push((bytes.len(), coder));
                points
            })
            .collect();
        Normalised {
            base,
            sections,
            targets,
            resume,
        }
    }
}

impl bsdiff_zstd::Base for Normalised<'_> {
    fn len(&self) -> usize {
        self.base.len()
    }

    fn read_into(&self, at: usize, out: &mut [u8]) {
        out.copy_from_slice(&self.base[at..at + out.len()]);
        let end = at + out.len();
        for (section, points) in self.sections.iter().zip(&self.resume) {
            let (start, bytes) = (section.offset, section.size);
            if start + bytes <= at || end <= start {
                continue;
            }
            // The part of the section read, relative to its start.
            let (lo, hi) = (at.max(start) - start, end.min(start + bytes) - start);
            let bytes = &self.base[start..start + bytes];
            // The first place is at 0 <= lo, so `first` >= 1.
            let first = points.partition_point(|p| p.0 <= lo) - 1;
            for pair in points[first..].windows(2) {
                let ((from, coder), (to, _)) = (&pair[0], &pair[1]);
                if *from >= hi {
                    break;
                }
                // Writes `normalised`, which starts at `offset` in the
                // section, where it overlaps what is read.
                let mut put = |offset: usize, normalised: &[u8]| {
                    let (a, b) = (offset.max(lo), (offset + normalised.len()).min(hi));
                    if a < b {
                        out[start + a - at..start + b - at]
                            .copy_from_slice(&normalised[a - offset..b - offset]);
                    }
                };
                if section.kind == Kind::Code {
                    let code = &bytes[*from..bytes.len().min(to + elf::MAX_INSTRUCTION)];
                    let ip = section.addr.wrapping_add(*from as u64);
                    let _ = elf::sweep(code, ip, to - from, |field, next_ip, value| {
                        // Every target was collected from these very fields.
                        let target = value.wrapping_add(next_ip);
                        let label = self.targets.binary_search(&target).unwrap_or_default();
                        // Ranks are below 2^32: at most one target per field.
                        put(from + field, &(label as u32).to_le_bytes());
                        Ok::<(), ()>(())
                    });
                } else {
                    // A step covered at most RESUME_EVERY bytes when the
                    // places were found.
                    let mut scratch = [0u8; RESUME_EVERY];
                    let piece = &mut scratch[..to - from];
                    piece.copy_from_slice(&bytes[*from..*to]);
                    let mut coder = coder.clone();
                    coder.step(piece, *to == bytes.len(), Direction::Normalise);
                    put(*from, piece);
                }
            }
        }
    }
}

fn too_large(what: &'static str, size: usize) -> DeltaError {
    DeltaError::TooLarge {
        format: FORMAT,
        what,
        limit: size as u64,
    }
}

fn corrupt(reason: String) -> DeltaError {
    DeltaError::Corrupt {
        format: FORMAT,
        reason,
    }
}

/// A field as found in a build: its file offset and its target.
type Field = (usize, u32);

/// Every field of `elf` with its target, in file order.
fn fields(elf: &[u8], sections: &[Section]) -> Vec<Field> {
    let mut fields = Vec::new();
    let _ = elf::for_each_field(elf, sections, |at, next_ip, value| {
        fields.push((at, value.wrapping_add(next_ip)));
        Ok::<(), ()>(())
    });
    fields
}

fn sorted_targets(fields: &[Field]) -> Vec<u32> {
    let mut targets: Vec<u32> = fields.iter().map(|f| f.1).collect();
    targets.sort_unstable();
    targets.dedup();
    targets
}

/// Pairs new targets with base targets that mean the same thing.
///
/// A plain bsdiff of the two builds aligns runs of the new build with runs
/// of the base that are mostly equal: the same code, moved. Two fields at
/// the same place in aligned runs refer to the same thing, so each such pair
/// is a vote for pairing their targets. Each new target takes the base
/// target with the most votes, most-voted pairs first, each base target at
/// most once. Returns new target → base target.
fn match_targets(
    base: &[u8],
    new: &[u8],
    old_fields: &[Field],
    new_fields: &[Field],
) -> Result<HashMap<u32, u32>, DeltaError> {
    let mut stream = Vec::new();
    bsdiff::diff(base, new, &mut stream).map_err(|source| DeltaError::Diff {
        format: FORMAT,
        source,
    })?;
    let mut votes: HashMap<(u32, u32), u32> = HashMap::new();
    let (mut new_pos, mut old_pos, mut at) = (0usize, 0usize, 0usize);
    while let Some(control) = stream.get(at..at + 24) {
        let word = |i: usize| {
            let mut w = [0u8; 8];
            w.copy_from_slice(&control[i * 8..i * 8 + 8]);
            u64::from_le_bytes(w)
        };
        let (mix, copy, seek) = (word(0) as usize, word(1) as usize, word(2));
        let first = new_fields.partition_point(|f| f.0 < new_pos);
        let end = new_fields.partition_point(|f| f.0 + 4 <= new_pos + mix);
        for &(at, new_target) in new_fields.get(first..end).unwrap_or_default() {
            let old_at = at - new_pos + old_pos;
            if let Ok(i) = old_fields.binary_search_by_key(&old_at, |f| f.0) {
                *votes.entry((new_target, old_fields[i].1)).or_default() += 1;
            }
        }
        new_pos += mix + copy;
        // Sign-magnitude, as bsdiff writes it.
        let magnitude = (seek & !(1 << 63)) as usize;
        old_pos = if seek >> 63 == 1 {
            (old_pos + mix).wrapping_sub(magnitude)
        } else {
            old_pos + mix + magnitude
        };
        at += 24 + mix + copy;
    }
    let mut ranked: Vec<((u32, u32), u32)> = votes.into_iter().collect();
    ranked.sort_unstable_by(|a, b| b.1.cmp(&a.1).then(a.0.cmp(&b.0)));
    let mut matches = HashMap::new();
    let mut taken = std::collections::HashSet::new();
    for ((new_target, old_target), _) in ranked {
        if !matches.contains_key(&new_target) && taken.insert(old_target) {
            matches.insert(new_target, old_target);
        }
    }
    Ok(matches)
}

/// Labels of the new build's targets (parallel to `new_targets`) and the
/// encoded label table that lets the applier map them back.
fn label_new(
    old_targets: &[u32],
    new_targets: &[u32],
    matches: &HashMap<u32, u32>,
) -> (Vec<u32>, Vec<u8>) {
    let n = old_targets.len();
    let mut used: Vec<Option<u32>> = vec![None; n];
    let mut labels = Vec::with_capacity(new_targets.len());
    let mut fresh = Vec::new();
    for &target in new_targets {
        let matched = matches
            .get(&target)
            .and_then(|old| old_targets.binary_search(old).ok());
        match matched {
            Some(i) => {
                used[i] = Some(target);
                labels.push(i as u32);
            }
            None => {
                labels.push((n + fresh.len()) as u32);
                fresh.push(target);
            }
        }
    }
    let mut table = Vec::with_capacity(8 + n * 5 + fresh.len() * 4);
    table.extend_from_slice(&(n as u32).to_le_bytes());
    table.extend(used.iter().map(|u| u8::from(u.is_some())));
    let mut previous = 0u32;
    for (old, new) in old_targets.iter().zip(&used) {
        if let Some(new) = new {
            let shift = new.wrapping_sub(*old);
            table.extend_from_slice(&shift.wrapping_sub(previous).to_le_bytes());
            previous = shift;
        }
    }
    table.extend_from_slice(&(fresh.len() as u32).to_le_bytes());
    let mut previous = 0u32;
    for target in fresh {
        table.extend_from_slice(&target.wrapping_sub(previous).to_le_bytes());
        previous = target;
    }
    (labels, table)
}

/// Reads the label table front to back.
struct Cursor<'a>(&'a [u8]);

impl<'a> Cursor<'a> {
    fn bytes(&mut self, n: usize) -> Result<&'a [u8], DeltaError> {
        let (head, tail) = self
            .0
            .split_at_checked(n)
            .ok_or_else(|| corrupt("truncated label table".to_owned()))?;
        self.0 = tail;
        Ok(head)
    }

    fn word(&mut self) -> Result<u32, DeltaError> {
        let bytes = self.bytes(4)?;
        Ok(u32::from_le_bytes([bytes[0], bytes[1], bytes[2], bytes[3]]))
    }
}

/// First bytes of a blob: a tag, then [`VERSION`].
const MAGIC: [u8; 3] = *b"ELX";

/// Layout version of the blobs this build makes and reads.
const VERSION: u8 = 2;

/// zstd's frame magic number, as it starts a frame.
const ZSTD_MAGIC: [u8; 4] = [0x28, 0xb5, 0x2f, 0xfd];

/// A blob taken apart.
struct Blob<'a> {
    /// The new build's rewritten sections.
    sections: Vec<Section>,
    /// The label table frame.
    table: &'a [u8],
    /// The bsdiff-zstd patch.
    body: &'a [u8],
}

/// Takes apart a blob for an output of `size` bytes.
fn split(patch: &[u8], size: usize) -> Result<Blob<'_>, DeltaError> {
    let unsupported = |found| DeltaError::UnsupportedVersion {
        format: FORMAT,
        found,
        supported: VERSION,
    };
    let Some((head, rest)) = patch.split_first_chunk::<4>() else {
        return Err(corrupt("truncated".to_owned()));
    };
    if head[..3] != MAGIC {
        // Version 1 began with the label frame's length, then the frame.
        return Err(match patch.get(4..8) {
            Some(frame) if frame == ZSTD_MAGIC => unsupported(1),
            _ => corrupt("not an elf-x86-64-bsdiff-zstd patch".to_owned()),
        });
    }
    if head[3] != VERSION {
        return Err(unsupported(head[3]));
    }
    let (sections, rest) = elf::read_layout(rest, size)
        .map_err(|reason| corrupt(format!("section layout: {reason}")))?;
    let (len, rest) = rest
        .split_first_chunk::<4>()
        .ok_or_else(|| corrupt("truncated".to_owned()))?;
    let len = u32::from_le_bytes(*len) as usize;
    if len > rest.len() {
        return Err(corrupt("truncated label table".to_owned()));
    }
    let (table, body) = rest.split_at(len);
    Ok(Blob {
        sections,
        table,
        body,
    })
}

/// Decodes the label table: the new build's target of each label, `None`
/// for a base label it does not use. Its size is bounded by the base's label
/// count and the declared output size: every fresh label is the target of a
/// field, and every field takes an instruction of 5 bytes at least, so a
/// build of `new_size` bytes has at most `new_size / 5`. Nothing is
/// allocated for labels the decompressed table does not hold.
fn read_table(
    frame: &[u8],
    old_targets: &[u32],
    new_size: usize,
) -> Result<Vec<Option<u32>>, DeltaError> {
    let n = old_targets.len();
    let max_fresh = new_size / 5;
    let limit = 8 + 5 * n + 4 * max_fresh;
    // One shot into a buffer of the frame's declared content size: no
    // decoder window and no growing buffer besides it.
    let declared = zstd::zstd_safe::get_frame_content_size(frame)
        .map_err(|_| corrupt("label table: not a zstd frame".to_owned()))?
        .ok_or_else(|| corrupt("label table: the frame has no content size".to_owned()))?;
    if declared > limit as u64 {
        return Err(too_large("label table", limit));
    }
    // At most `limit`, a usize.
    let mut table = Vec::with_capacity(declared as usize);
    zstd::bulk::Decompressor::new()
        .and_then(|mut d| d.decompress_to_buffer(frame, &mut table))
        .map_err(|e| corrupt(format!("label table: {e}")))?;
    let mut rest = Cursor(&table);
    if rest.word()? as usize != n {
        return Err(corrupt(
            "the label table is for another base build".to_owned(),
        ));
    }
    let flags = rest.bytes(n)?;
    let mut labels = Vec::with_capacity(n);
    let mut shift = 0u32;
    for (old, flag) in old_targets.iter().zip(flags) {
        labels.push(match flag {
            0 => None,
            _ => {
                shift = shift.wrapping_add(rest.word()?);
                Some(old.wrapping_add(shift))
            }
        });
    }
    let fresh = rest.word()? as usize;
    if fresh > max_fresh {
        return Err(too_large("fresh labels", max_fresh));
    }
    if fresh > rest.0.len() / 4 {
        return Err(corrupt("truncated label table".to_owned()));
    }
    labels.reserve_exact(fresh);
    let mut target = 0u32;
    for _ in 0..fresh {
        target = target.wrapping_add(rest.word()?);
        labels.push(Some(target));
    }
    if !rest.0.is_empty() {
        return Err(corrupt("trailing bytes after the label table".to_owned()));
    }
    Ok(labels)
}

#[cfg(test)]
mod tests {
    use std::sync::OnceLock;

    use proptest::prelude::*;

    use super::*;

    fn frame(table: &[u8]) -> Vec<u8> {
        crate::compress(FORMAT, table, &[], 10, false).unwrap()
    }

    #[test]
    fn matched_targets_keep_the_base_label_and_the_rest_are_fresh() {
        let old_targets = [10, 20, 30];
        let new_targets = [15, 25, 99];
        let matches = HashMap::from([(15, 10), (25, 30)]);
        let (labels, table) = label_new(&old_targets, &new_targets, &matches);
        assert_eq!(labels, [0, 2, 3]);
        let read = read_table(&frame(&table), &old_targets, 1000).unwrap();
        assert_eq!(read, [Some(15), None, Some(25), Some(99)]);
    }

    #[test]
    fn hostile_label_tables_are_typed_errors() {
        let old_targets = [10, 20];
        let (_, good) = label_new(&old_targets, &[11, 500], &HashMap::from([(11, 10)]));
        let mut other_base = good.clone();
        other_base[0] = 3;
        let mut many_fresh = good[..good.len() - 8].to_vec();
        many_fresh.extend_from_slice(&1000u32.to_le_bytes());
        let table: [(&str, Vec<u8>, &str); 4] = [
            ("other base", other_base, "another base build"),
            ("truncated", good[..good.len() - 1].to_vec(), "truncated"),
            ("trailing", [&good[..], &[0]].concat(), "trailing"),
            ("too many fresh labels", many_fresh, "fresh labels"),
        ];
        for (name, table, expected) in table {
            let err = read_table(&frame(&table), &old_targets, 400).unwrap_err();
            assert!(err.to_string().contains(expected), "{name}: {err}");
        }
        assert!(matches!(
            read_table(b"not zstd", &old_targets, 400),
            Err(DeltaError::Corrupt { .. })
        ));
        // The table is decompressed into a buffer of the declared size: a
        // frame must declare it, and within the bound.
        let unsized_frame = zstd::stream::encode_all(&good[..], 3).unwrap();
        let err = read_table(&unsized_frame, &old_targets, 400).unwrap_err();
        assert!(err.to_string().contains("no content size"), "{err}");
        let limit = 8 + 5 * 2 + 4 * (400 / 5);
        let err = read_table(&frame(&vec![0; limit + 1]), &old_targets, 400).unwrap_err();
        assert!(
            matches!(
                err,
                DeltaError::TooLarge {
                    what: "label table",
                    ..
                }
            ),
            "{err:?}"
        );
        let mut blob = b"ELX\x02".to_vec();
        blob.extend_from_slice(&[0, 0, 5, 0, 0, 0, 1]);
        assert!(matches!(split(&blob, 100), Err(DeltaError::Corrupt { .. })));
    }

    /// A release of the fixture build (code moved, tables changed), its
    /// normalisation and the labels as the applier decodes them.
    struct Streamed {
        base: Vec<u8>,
        new: Vec<u8>,
        normalised: Normalisation,
        labels: Vec<Option<u32>>,
    }

    fn streamed() -> &'static Streamed {
        static STREAMED: OnceLock<Streamed> = OnceLock::new();
        STREAMED.get_or_init(|| {
            let old = fixture::Build::new(2000, 7);
            let (base, new) = (old.elf(), old.with_inserted(30, &[5, 19]).elf());
            let normalised = normalise(&base, &new).unwrap();
            let targets = sorted_targets(&fields(&base, &elf::layout(&base).unwrap()));
            let labels = read_table(&frame(&normalised.table), &targets, new.len()).unwrap();
            Streamed {
                base,
                new,
                normalised,
                labels,
            }
        })
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(32))]

        /// Instructions and table entries straddle the pieces the patched
        /// bytes arrive in and the pending buffer's bounds alike.
        #[test]
        fn relabelling_does_not_depend_on_how_the_output_arrives(
            cuts in proptest::collection::vec(1usize..3 * PENDING, 1..40),
        ) {
            let s = streamed();
            let mut sink = Vec::new();
            let mut out = Output::new(FORMAT, &mut sink, s.new.len());
            let sections = &s.normalised.new_sections;
            let mut relabel = Relabel::new(&mut out, &s.labels, sections);
            let mut rest = &s.normalised.new[..];
            for len in cuts.iter().cycle() {
                if rest.is_empty() {
                    break;
                }
                let (piece, tail) = rest.split_at((*len).min(rest.len()));
                relabel.write_all(piece).unwrap();
                rest = tail;
            }
            prop_assert!(relabel.pending.is_empty());
            out.finish().unwrap();
            prop_assert!(sink == s.new);
        }
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(64))]

        /// Reads of the base normalised on the fly, from any place and of
        /// any length, match the base normalised whole as `create` does it.
        #[test]
        fn the_base_reads_as_normalised_whole(
            reads in proptest::collection::vec((any::<usize>(), 0usize..3 * RESUME_EVERY), 1..40),
        ) {
            use bsdiff_zstd::Base;
            let s = streamed();
            let sections = elf::layout(&s.base).unwrap();
            let targets = sorted_targets(&fields(&s.base, &sections));
            let old = Normalised::new(&s.base, &sections, &targets);
            prop_assert_eq!(old.len(), s.base.len());
            let whole = &s.normalised.old;
            let mut all = vec![0; whole.len()];
            old.read_into(0, &mut all);
            prop_assert!(&all == whole);
            for (at, len) in reads {
                let at = at % whole.len();
                let len = len.min(whole.len() - at);
                let mut out = vec![0; len];
                old.read_into(at, &mut out);
                prop_assert!(out[..] == whole[at..at + len], "{}+{}", at, len);
            }
        }
    }

    #[test]
    fn a_blob_of_another_version_is_refused_before_its_layout_is_read() {
        let v1 = [&[3, 0, 0, 0][..], &ZSTD_MAGIC, b"rest"].concat();
        let v3 = [&MAGIC[..], &[3], &[0; 8]].concat();
        for (blob, found) in [(v1, 1), (v3, 3)] {
            let err = split(&blob, 100).err().unwrap();
            assert!(
                matches!(err, DeltaError::UnsupportedVersion { found: f, supported: VERSION, .. } if f == found),
                "{err:?}"
            );
        }
        let err = split(b"garbage, not a patch", 100).err().unwrap();
        assert!(matches!(err, DeltaError::Corrupt { .. }), "{err:?}");
    }
}
