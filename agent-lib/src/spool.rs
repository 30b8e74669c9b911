//! The on-disk spool: every result waits here until the server acked it.
//!
//! A spool holds records of one [`Kind`] (check results, or metric sample
//! batches), each kind in its own directory with its own numbering (see
//! `outbox.rs`); a record of another kind found in a spool is damage.
//!
//! Layout of a spool directory (`<data_dir>/spool/` for check results):
//! - `NNNNNNNNNNNNNNNNNNNN.seg` — append-only segment files (20-digit
//!   segment id, increasing), each a run of records (`spool/record.rs`) whose sequence
//!   numbers are *consecutive*: a gap (the counter jumping above the
//!   server's ack) starts a new segment, so a segment is fully described by
//!   its first and last seq and nothing per record is kept in memory;
//! - `meta.json` — `{"version":1,"acked_seq","next_seq","seq_synced","seq_shift"}`,
//!   replaced atomically (temp file + rename). It is fsynced when the
//!   numbering changes; acks are not, since a stale `acked_seq` only makes
//!   the agent resend what the server deduplicates by seq.
//!
//! Invariants:
//! - Records are written with one `write` each, straight to the file (no
//!   user-space buffer), so a reader in the same process sees them at once
//!   and a crash tears at most the last one. Segments are fsynced when they
//!   are sealed (rotation) and on a clean stop ([`Spool::sync`]). The
//!   sealing fsync is not done by `append`, which runs on the agent's one
//!   runtime thread: the sealed file waits in [`Spool::take_sealed`] for a
//!   task that syncs it on the blocking pool ([`Sealed::sync`]), so a slow
//!   disk never stalls keepalives or schedules.
//! - Opening scans every segment: a torn tail of the newest segment is cut;
//!   any other damage (bad checksum, bad length, undecodable JSON, a record
//!   kind unknown to this build or not this spool's, non-consecutive
//!   numbers, an unreadable file) is logged as an error and
//!   the damaged bytes are set aside in `<segment>.corrupt` — the records
//!   before the damage stay. Nothing here panics or refuses to start over
//!   bad files.
//! - A segment is deleted once the server acked all of it. When the spool
//!   grows past [`SpoolLimits::cap_bytes`], the oldest segments are evicted
//!   and the un-acked results they held are counted and returned to the
//!   caller (which reports them as a result of its own).
//! - `seq_shift`: a cold start numbers results from 1 before it knows the
//!   server's numbering; the first `Welcome` adds the server's `acked_seq` to
//!   every number. Instead of rewriting files, records keep the number they
//!   were written with and `seq_shift` is added on reading (and subtracted
//!   on writing). It is set at most once, before the first sync.

mod record;

pub use record::{Kind, MetricSample, Payload, SampleBatch, Tag};

use std::collections::VecDeque;
use std::fs::{self, File, OpenOptions};
use std::io::{self, BufReader, Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use serde::{Deserialize, Serialize};

pub use crate::config::{SEGMENT_BYTES, SPOOL_CAP_BYTES, SpoolLimits};
use crate::host::HostHooks;

/// Format version of `meta.json`.
const META_VERSION: u32 = 1;
const META_FILE: &str = "meta.json";
const SEGMENT_SUFFIX: &str = ".seg";
const CORRUPT_SUFFIX: &str = ".corrupt";

/// The persisted numbering state; see the module docs.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Meta {
    pub version: u32,
    /// Every result with `seq <= acked_seq` is stored by the server.
    pub acked_seq: u64,
    /// Next sequence number to assign (a floor; records may be higher).
    pub next_seq: u64,
    /// Whether the numbering continues the server's (after a Welcome).
    pub seq_synced: bool,
    /// Added to every stored seq on reading.
    pub seq_shift: u64,
}

/// Un-acked results dropped by [`Spool::append`] to stay under the cap.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Evicted {
    pub count: u64,
    pub first_seq: u64,
    pub last_seq: u64,
}

/// One segment file; seqs are effective (shift applied), consecutive.
#[derive(Debug)]
struct Segment {
    id: u64,
    first_seq: u64,
    last_seq: u64,
    /// Valid bytes (the file is cut to this on open).
    bytes: u64,
}

/// Where a reader continues: segment id and byte offset in it.
pub type Position = (u64, u64);

/// The spool; see the module docs.
pub struct Spool {
    dir: PathBuf,
    /// The one kind of record this spool holds.
    kind: Kind,
    limits: SpoolLimits,
    segments: VecDeque<Segment>,
    /// The newest segment, open for appending; `None` until the next append.
    active: Option<File>,
    meta: Meta,
    total_bytes: u64,
    /// Id of the next segment; never reused while open, so a reader's
    /// [`Position`] can never land in a different file of the same name.
    next_id: u64,
    /// Segments sealed since the last [`Spool::take_sealed`], not yet
    /// fsynced (one per rotation, so bounded by the data written between
    /// two passes of the syncer).
    sealed: Vec<File>,
    /// Segments whose damage (found while reading) was already logged.
    damage_logged: std::cell::RefCell<std::collections::HashSet<u64>>,
    hooks: Arc<dyn HostHooks>,
}

impl std::fmt::Debug for Spool {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Spool")
            .field("dir", &self.dir)
            .field("segments", &self.segments.len())
            .field("total_bytes", &self.total_bytes)
            .field("meta", &self.meta)
            .finish()
    }
}

impl Spool {
    /// Opens (creating if needed) the spool of `kind` records in `dir`,
    /// repairing damage as the module docs describe. Fails only when the
    /// directory cannot be created or listed.
    pub fn open(
        dir: &Path,
        kind: Kind,
        limits: SpoolLimits,
        hooks: Arc<dyn HostHooks>,
    ) -> io::Result<Spool> {
        fs::create_dir_all(dir)?;
        let mut spool = Spool {
            dir: dir.to_owned(),
            kind,
            limits,
            segments: VecDeque::new(),
            active: None,
            sealed: Vec::new(),
            meta: Meta::default(),
            total_bytes: 0,
            next_id: 1,
            damage_logged: Default::default(),
            hooks,
        };
        spool.meta = spool.load_meta();
        let mut ids: Vec<u64> = fs::read_dir(dir)?
            .filter_map(|e| e.ok())
            .filter_map(|e| {
                let name = e.file_name().into_string().ok()?;
                name.strip_suffix(SEGMENT_SUFFIX)?.parse().ok()
            })
            .collect();
        ids.sort_unstable();
        let newest = ids.last().copied();
        spool.next_id = newest.map_or(1, |id| id.saturating_add(1));
        for id in ids {
            if let Some(segment) = spool.scan_segment(id, Some(id) == newest)
                && segment.bytes > 0
            {
                let continues = spool
                    .segments
                    .back()
                    .is_none_or(|prev| segment.first_seq > prev.last_seq);
                if continues {
                    spool.total_bytes += segment.bytes;
                    spool.segments.push_back(segment);
                    continue;
                }
                spool.hooks.error(&format!(
                    "spool segment {} repeats sequence numbers of an older segment; set aside",
                    spool.segment_path(id).display()
                ));
                spool.set_aside(id);
            } else {
                let _ = fs::remove_file(spool.segment_path(id));
            }
        }
        // Records the server already acked need not stay.
        let acked = spool.meta.acked_seq;
        spool.trim(acked);
        Ok(spool)
    }

    /// The limits the spool was opened with.
    pub fn limits(&self) -> SpoolLimits {
        self.limits
    }

    /// The persisted numbering state.
    pub fn meta(&self) -> Meta {
        self.meta
    }

    /// Highest sequence number stored, if any record is.
    pub fn last_seq(&self) -> Option<u64> {
        self.segments.back().map(|s| s.last_seq)
    }

    /// Number of stored results not acked.
    pub fn unacked(&self) -> u64 {
        let acked = self.meta.acked_seq;
        self.segments
            .iter()
            .filter(|s| s.last_seq > acked)
            .map(|s| s.last_seq - s.first_seq.max(acked + 1) + 1)
            .sum()
    }

    /// Bytes of all segments.
    pub fn total_bytes(&self) -> u64 {
        self.total_bytes
    }

    /// Records the numbering (`next_seq`, `seq_synced`) and, once, a shift
    /// of everything stored so far; durably (fsync), since losing it would
    /// renumber results the server already has.
    pub fn set_numbering(&mut self, next_seq: u64, seq_synced: bool, add_shift: u64) {
        if add_shift > 0 {
            // Saturating: the shift is the server's `acked_seq`, which may
            // be anything; whatever saturates is acked right after.
            self.meta.seq_shift = self.meta.seq_shift.saturating_add(add_shift);
            for s in &mut self.segments {
                s.first_seq = s.first_seq.saturating_add(add_shift);
                s.last_seq = s.last_seq.saturating_add(add_shift);
            }
        }
        self.meta.next_seq = next_seq;
        self.meta.seq_synced = seq_synced;
        self.store_meta(true);
    }

    /// Appends `payload` (its `seq` above every stored one). Returns what
    /// was evicted to respect the cap. Fails when the payload is not of this
    /// spool's kind or cannot be encoded (a non-finite sample value), or the
    /// record could not be written; the segment is then cut back so no
    /// partial record remains.
    pub fn append(&mut self, payload: &Payload) -> io::Result<Evicted> {
        if payload.kind() != self.kind {
            return Err(io::Error::other(format!(
                "a {} record cannot go into the {} spool {}",
                payload.kind(),
                self.kind,
                self.dir.display()
            )));
        }
        let seq = payload.seq();
        let stored_seq = seq.checked_sub(self.meta.seq_shift).ok_or_else(|| {
            io::Error::other(format!(
                "seq {seq} is below the spool's shift {}",
                self.meta.seq_shift
            ))
        })?;
        let mut stored = payload.clone();
        stored.set_seq(stored_seq);
        let json = stored.to_body().map_err(io::Error::other)?;
        let bytes = record::encode(&json);
        let len = bytes.len() as u64;
        let rotate = match self.segments.back() {
            None => true,
            Some(s) => {
                self.active.is_none()
                    || s.last_seq.checked_add(1) != Some(seq)
                    || s.bytes + len > self.limits.segment_bytes
            }
        };
        if rotate {
            self.reopen_or_rotate(seq, len)?;
        }
        // Rotation always leaves an open active segment.
        let file = self.active.as_mut().expect("active segment after rotation");
        let segment = self.segments.back_mut().expect("segment after rotation");
        if let Err(e) = file.write_all(&bytes) {
            let _ = file.set_len(segment.bytes);
            let _ = file.seek(SeekFrom::Start(segment.bytes));
            return Err(e);
        }
        if segment.bytes == 0 {
            segment.first_seq = seq;
        }
        segment.last_seq = seq;
        segment.bytes += len;
        self.total_bytes += len;
        Ok(self.evict_over_cap())
    }

    /// Records that the server stored everything up to `up_to`: persists it
    /// and deletes fully acked segments.
    pub fn ack(&mut self, up_to: u64) {
        if up_to <= self.meta.acked_seq {
            return;
        }
        self.meta.acked_seq = up_to;
        // Saturating: `up_to` comes from the server and may be anything.
        self.meta.next_seq = self.meta.next_seq.max(up_to.saturating_add(1));
        self.trim(up_to);
        self.store_meta(false);
    }

    /// Makes everything written durable: fsync of the sealed and active
    /// segments, the directory and `meta.json`. Called on a clean stop.
    pub fn sync(&mut self) {
        let mut sealed = self.take_sealed().unwrap_or_else(|| Sealed {
            dir: self.dir.clone(),
            files: Vec::new(),
        });
        if let Some(file) = &self.active
            && let Ok(file) = file.try_clone()
        {
            sealed.files.push(file);
        }
        if let Err(e) = sealed.sync() {
            self.hooks
                .error(&format!("spool: fsync of the segments failed: {e}"));
        }
        self.store_meta(true);
    }

    /// Whether no sealed segment waits for its fsync.
    pub fn sealed_is_empty(&self) -> bool {
        self.sealed.is_empty()
    }

    /// The segments sealed since the last call, to fsync off the runtime
    /// thread with [`Sealed::sync`]; `None` when there are none.
    pub fn take_sealed(&mut self) -> Option<Sealed> {
        (!self.sealed.is_empty()).then(|| Sealed {
            dir: self.dir.clone(),
            files: std::mem::take(&mut self.sealed),
        })
    }

    /// Calls `f` with each stored payload after `from` (the start when
    /// `None`) in order, and the position after it, until `f` returns false.
    /// Every payload is of this spool's kind. A record damaged since opening
    /// ends its segment's reading (logged).
    pub fn read_from(&self, from: Option<Position>, mut f: impl FnMut(Payload, Position) -> bool) {
        let start = from.and_then(|(id, offset)| {
            let index = self.segments.iter().position(|s| s.id == id)?;
            Some((index, offset))
        });
        let (first, mut offset) = start.unwrap_or((0, 0));
        let mut body = Vec::new();
        for segment in self.segments.iter().skip(first) {
            if offset >= segment.bytes {
                offset = 0;
                continue;
            }
            let path = self.segment_path(segment.id);
            let opened = File::open(&path).and_then(|mut file| {
                file.seek(SeekFrom::Start(offset))?;
                Ok(file)
            });
            let file = match opened {
                Ok(file) => file,
                Err(e) => {
                    self.hooks
                        .error(&format!("spool: cannot read {}: {e}", path.display()));
                    offset = 0;
                    continue;
                }
            };
            let mut reader = BufReader::new(file.take(segment.bytes.saturating_sub(offset)));
            while offset < segment.bytes {
                let decoded = match record::read(&mut reader, &mut body) {
                    Ok(Some(Ok(()))) => self.decode(&body),
                    Ok(Some(Err(bad))) => Err(bad.to_string()),
                    Ok(None) => Err("the file is shorter than recorded".into()),
                    Err(e) => Err(e.to_string()),
                };
                match decoded {
                    Ok(mut payload) => {
                        offset += (record::HEADER_BYTES + body.len()) as u64;
                        payload.set_seq(payload.seq().saturating_add(self.meta.seq_shift));
                        if !f(payload, (segment.id, offset)) {
                            return;
                        }
                    }
                    Err(e) => {
                        if self.damage_logged.borrow_mut().insert(segment.id) {
                            self.hooks.error(&format!(
                                "spool: {} damaged at byte {offset} since it was opened ({e}); \
                                 skipping the rest of it",
                                path.display()
                            ));
                        }
                        break;
                    }
                }
            }
            offset = 0;
        }
    }

    /// Decodes a record body, refusing a payload of another kind.
    fn decode(&self, body: &[u8]) -> Result<Payload, String> {
        let payload = Payload::from_body(body)?;
        if payload.kind() != self.kind {
            return Err(format!(
                "a {} record in the {} spool",
                payload.kind(),
                self.kind
            ));
        }
        Ok(payload)
    }

    fn segment_path(&self, id: u64) -> PathBuf {
        self.dir.join(format!("{id:020}{SEGMENT_SUFFIX}"))
    }

    /// Continues the newest segment left by an earlier run when `seq` and
    /// `len` fit it, else seals it and starts a new one.
    fn reopen_or_rotate(&mut self, seq: u64, len: u64) -> io::Result<()> {
        if self.active.is_none()
            && let Some(s) = self.segments.back()
            && s.last_seq.checked_add(1) == Some(seq)
            && s.bytes + len <= self.limits.segment_bytes
        {
            let mut file = OpenOptions::new()
                .write(true)
                .open(self.segment_path(s.id))?;
            file.seek(SeekFrom::Start(s.bytes))?;
            self.active = Some(file);
            return Ok(());
        }
        self.rotate(seq)
    }

    /// Seals the active segment (its fsync waits in `sealed`, see the
    /// module docs) and starts a new one for `first_seq`.
    fn rotate(&mut self, first_seq: u64) -> io::Result<()> {
        if let Some(file) = self.active.take() {
            self.sealed.push(file);
        }
        let id = self.next_id;
        // Only a planted file name gets near the top of the id range.
        self.next_id = id
            .checked_add(1)
            .ok_or_else(|| io::Error::other("segment ids are exhausted"))?;
        let path = self.segment_path(id);
        let file = OpenOptions::new()
            .create(true)
            .truncate(true)
            .write(true)
            .open(&path)?;
        // The new name must survive a crash for its records to: the
        // directory is fsynced with the sealed segments (`Sealed::sync`),
        // which is no later than the records themselves are.
        self.segments.push_back(Segment {
            id,
            first_seq,
            last_seq: first_seq.saturating_sub(1),
            bytes: 0,
        });
        self.active = Some(file);
        Ok(())
    }

    /// Deletes segments whose every record has `seq <= up_to`.
    fn trim(&mut self, up_to: u64) {
        while let Some(front) = self.segments.front() {
            if front.last_seq > up_to || front.bytes == 0 {
                break;
            }
            self.drop_front();
        }
    }

    /// Removes the oldest segment; returns it.
    fn drop_front(&mut self) -> Option<Segment> {
        let segment = self.segments.pop_front()?;
        if self.segments.is_empty() {
            self.active = None;
        }
        self.total_bytes -= segment.bytes;
        let path = self.segment_path(segment.id);
        if let Err(e) = fs::remove_file(&path)
            && e.kind() != io::ErrorKind::NotFound
        {
            self.hooks
                .error(&format!("spool: cannot delete {}: {e}", path.display()));
        }
        Some(segment)
    }

    /// Evicts the oldest sealed segments while over the cap.
    fn evict_over_cap(&mut self) -> Evicted {
        let mut evicted = Evicted::default();
        while self.total_bytes > self.limits.cap_bytes && self.segments.len() > 1 {
            let acked = self.meta.acked_seq;
            let Some(s) = self.drop_front() else { break };
            if s.last_seq > acked {
                let first = s.first_seq.max(acked + 1);
                if evicted.count == 0 {
                    evicted.first_seq = first;
                }
                evicted.count += s.last_seq - first + 1;
                evicted.last_seq = s.last_seq;
            }
        }
        evicted
    }

    /// Reads one segment, cutting or setting aside damage; `None` when the
    /// file could not be read at all (it is then set aside).
    fn scan_segment(&mut self, id: u64, newest: bool) -> Option<Segment> {
        let path = self.segment_path(id);
        let data = match read_capped(
            &path,
            self.limits.segment_bytes * 2 + 2 * record::MAX_BODY_BYTES as u64,
        ) {
            Ok(data) => data,
            Err(e) => {
                self.hooks.error(&format!(
                    "spool: cannot read {} ({e}); set aside",
                    path.display()
                ));
                self.set_aside(id);
                return None;
            }
        };
        let mut segment = Segment {
            id,
            first_seq: 0,
            last_seq: 0,
            bytes: 0,
        };
        let mut reader = &data[..];
        let mut body = Vec::new();
        let problem = loop {
            let rec = match record::read(&mut reader, &mut body) {
                Ok(None) => break None,
                Ok(Some(rec)) => rec,
                Err(e) => break Some(e.to_string()),
            };
            if let Err(bad) = rec {
                break Some(if bad == record::Bad::Truncated && newest {
                    String::new()
                } else {
                    bad.to_string()
                });
            }
            let seq = match self.decode(&body) {
                Ok(p) => match p.seq().checked_add(self.meta.seq_shift) {
                    Some(seq) => seq,
                    None => break Some(format!("seq {} overflows with the shift", p.seq())),
                },
                Err(e) => break Some(e),
            };
            if segment.bytes > 0 && Some(seq) != segment.last_seq.checked_add(1) {
                break Some(format!("seq {seq} does not follow {}", segment.last_seq));
            }
            if segment.bytes == 0 {
                segment.first_seq = seq;
            }
            segment.last_seq = seq;
            segment.bytes += (record::HEADER_BYTES + body.len()) as u64;
        };
        if let Some(problem) = problem {
            let valid = segment.bytes as usize;
            if problem.is_empty() {
                self.hooks.warn(&format!(
                    "spool: cut the torn last record of {} ({} bytes) left by a crash",
                    path.display(),
                    data.len() - valid
                ));
            } else {
                let aside = path.with_extension(format!("seg.{valid}{CORRUPT_SUFFIX}"));
                self.hooks.error(&format!(
                    "spool: {} is damaged at byte {valid} ({problem}); the {} bytes from there \
                     are set aside in {}, the records before are kept",
                    path.display(),
                    data.len() - valid,
                    aside.display()
                ));
                if let Err(e) = fs::write(&aside, &data[valid..]) {
                    self.hooks
                        .error(&format!("spool: cannot write {}: {e}", aside.display()));
                }
            }
            let cut = OpenOptions::new()
                .write(true)
                .open(&path)
                .and_then(|f| f.set_len(segment.bytes).and_then(|()| f.sync_data()));
            if let Err(e) = cut {
                self.hooks.error(&format!(
                    "spool: cannot cut {} ({e}); set aside",
                    path.display()
                ));
                self.set_aside(id);
                return None;
            }
        }
        Some(segment)
    }

    /// Renames a segment out of the way (`<name>.corrupt`).
    fn set_aside(&self, id: u64) {
        let path = self.segment_path(id);
        let aside = path.with_extension(format!("seg{CORRUPT_SUFFIX}"));
        if let Err(e) = fs::rename(&path, &aside) {
            self.hooks
                .error(&format!("spool: cannot set {} aside: {e}", path.display()));
        }
    }

    fn load_meta(&self) -> Meta {
        let path = self.dir.join(META_FILE);
        let text = match fs::read(&path) {
            Ok(text) => text,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Meta::default(),
            Err(e) => {
                self.hooks.error(&format!(
                    "spool: cannot read {} ({e}); everything stored will be resent",
                    path.display()
                ));
                return Meta::default();
            }
        };
        match serde_json::from_slice::<Meta>(&text) {
            Ok(meta) if meta.version == META_VERSION => meta,
            Ok(meta) => {
                self.hooks.error(&format!(
                    "spool: {} has format {}, this agent reads {META_VERSION}; set aside",
                    path.display(),
                    meta.version
                ));
                let _ = fs::rename(&path, path.with_extension(&CORRUPT_SUFFIX[1..]));
                Meta::default()
            }
            Err(e) => {
                self.hooks.error(&format!(
                    "spool: {} is unreadable ({e}); set aside, everything stored will be resent",
                    path.display()
                ));
                let _ = fs::rename(&path, path.with_extension(&CORRUPT_SUFFIX[1..]));
                Meta::default()
            }
        }
    }

    /// Writes `meta.json` atomically; with `durable`, fsyncs file and dir.
    fn store_meta(&mut self, durable: bool) {
        self.meta.version = META_VERSION;
        let path = self.dir.join(META_FILE);
        let tmp = self.dir.join(format!("{META_FILE}.tmp"));
        let write = || -> io::Result<()> {
            let mut file = File::create(&tmp)?;
            file.write_all(&serde_json::to_vec(&self.meta).map_err(io::Error::other)?)?;
            if durable {
                file.sync_all()?;
            }
            fs::rename(&tmp, &path)?;
            if durable {
                sync_dir(&self.dir);
            }
            Ok(())
        };
        if let Err(e) = write() {
            self.hooks
                .error(&format!("spool: cannot write {}: {e}", path.display()));
        }
    }
}

/// Sealed segments (and the directory naming them) waiting for their
/// fsync; see the module docs.
#[derive(Debug)]
pub struct Sealed {
    dir: PathBuf,
    files: Vec<File>,
}

impl Sealed {
    /// fsyncs every segment and the spool directory (blocking: run it on
    /// the blocking pool). Fails with the first segment that could not be
    /// synced; the others are still tried.
    pub fn sync(self) -> io::Result<()> {
        let mut first_error = None;
        for file in &self.files {
            if let Err(e) = file.sync_data() {
                first_error.get_or_insert(e);
            }
        }
        sync_dir(&self.dir);
        first_error.map_or(Ok(()), Err)
    }
}

/// The record framing's reader (`spool/record.rs`), for tests elsewhere in
/// the crate that replay an older build's reader: `None` at the end of
/// the data, else the record (its body in `body`) or why it is not one.
#[cfg(test)]
pub(crate) fn read_record_for_tests(
    reader: &mut &[u8],
    body: &mut Vec<u8>,
) -> Option<Result<(), String>> {
    record::read(reader, body)
        .expect("reading a slice cannot fail")
        .map(|r| r.map_err(|bad| bad.to_string()))
}

/// Reads a whole file, refusing one larger than `cap` bytes.
fn read_capped(path: &Path, cap: u64) -> io::Result<Vec<u8>> {
    let file = File::open(path)?;
    let len = file.metadata()?.len();
    if len > cap {
        return Err(io::Error::other(format!(
            "{len} bytes, more than any segment can hold"
        )));
    }
    let mut data = Vec::with_capacity(len as usize);
    file.take(cap).read_to_end(&mut data)?;
    Ok(data)
}

/// fsyncs a directory so a created/renamed name survives a crash; errors
/// are ignored (some filesystems refuse directory fsync).
fn sync_dir(dir: &Path) {
    if let Ok(d) = File::open(dir) {
        let _ = d.sync_all();
    }
}

#[cfg(test)]
mod tests {
    use outrider_protocol::{CheckResult, CheckState};

    use super::*;
    use crate::host::{Health, Level};

    #[derive(Debug, Default)]
    struct Logs(std::sync::Mutex<Vec<String>>);
    impl HostHooks for Logs {
        fn log(&self, _: Level, m: &str) {
            self.0.lock().unwrap().push(m.to_owned());
        }
        fn health(&self, _: Health, _: &str) {}
        fn request_update_check(&self) {}
    }
    impl Logs {
        fn any(&self, needle: &str) -> bool {
            self.0.lock().unwrap().iter().any(|m| m.contains(needle))
        }
    }

    fn result(seq: u64) -> Payload {
        Payload::Result(check_result(seq))
    }

    fn check_result(seq: u64) -> CheckResult {
        CheckResult {
            seq,
            check: "c".into(),
            state: CheckState::Ok,
            summary: format!("r{seq}"),
            long_output: String::new(),
            perfdata: vec![],
            unknown_perfdata: Vec::new(),
            started_at_ms: 1,
            duration_ms: 2,
            update_event: None,
        }
    }

    const SMALL: SpoolLimits = SpoolLimits {
        cap_bytes: 1 << 20,
        segment_bytes: 512,
    };

    fn open(dir: &Path) -> (Spool, Arc<Logs>) {
        let logs = Arc::new(Logs::default());
        (
            Spool::open(dir, Kind::Result, SMALL, logs.clone()).unwrap(),
            logs,
        )
    }

    fn seqs(spool: &Spool) -> Vec<u64> {
        let mut seqs = Vec::new();
        spool.read_from(None, |r, _| {
            seqs.push(r.seq());
            true
        });
        seqs
    }

    fn segment_files(dir: &Path) -> Vec<PathBuf> {
        let mut files: Vec<_> = fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().path())
            .filter(|p| p.extension().is_some_and(|e| e == "seg"))
            .collect();
        files.sort();
        files
    }

    #[test]
    fn sealing_leaves_the_fsync_to_the_syncer() {
        let dir = tempfile::tempdir().unwrap();
        let (mut spool, _) = open(dir.path());
        for seq in 1..=20 {
            spool.append(&result(seq)).unwrap();
        }
        let segments = segment_files(dir.path()).len();
        let sealed = spool.take_sealed().expect("rotations sealed segments");
        // Every segment but the active one waits for the syncer.
        assert_eq!(sealed.files.len(), segments - 1);
        assert!(spool.take_sealed().is_none(), "taken once");
        sealed.sync().unwrap();
        spool.append(&result(21)).unwrap();
        spool.sync();
        assert!(spool.sealed.is_empty(), "a clean stop syncs what is left");
    }

    #[test]
    fn rotates_reopens_and_trims_after_ack() {
        let dir = tempfile::tempdir().unwrap();
        let (mut spool, _) = open(dir.path());
        for seq in 1..=20 {
            spool.append(&result(seq)).unwrap();
        }
        assert!(
            segment_files(dir.path()).len() > 2,
            "segments rotate at 512 bytes"
        );
        spool.ack(7);
        assert_eq!(spool.unacked(), 13);
        drop(spool);
        let (mut spool, _) = open(dir.path());
        assert_eq!(spool.meta().acked_seq, 7);
        assert_eq!(spool.unacked(), 13);
        // Whole acked segments are gone; a partly acked one stays.
        assert!(seqs(&spool)[0] <= 8 && seqs(&spool).ends_with(&[19, 20]));
        // A gap in the numbering starts a new segment.
        spool.append(&result(30)).unwrap();
        spool.ack(20);
        assert_eq!(seqs(&spool), [30]);
        assert_eq!(segment_files(dir.path()).len(), 1);
    }

    #[test]
    fn a_reader_position_survives_the_spool_emptying() {
        let dir = tempfile::tempdir().unwrap();
        let (mut spool, logs) = open(dir.path());
        for seq in 1..=3 {
            spool.append(&result(seq)).unwrap();
        }
        let mut pos = None;
        spool.read_from(None, |_, p| {
            pos = Some(p);
            true
        });
        // Everything acked: the only segment goes, the next append starts a
        // new one; the old position must not point into it.
        spool.ack(3);
        spool.append(&result(4)).unwrap();
        let mut after = Vec::new();
        spool.read_from(pos, |r, _| {
            after.push(r.seq());
            true
        });
        assert_eq!(after, [4]);
        assert!(!logs.any("damaged"), "{:?}", logs.0.lock().unwrap());
    }

    #[test]
    fn a_torn_tail_is_cut_and_appending_continues() {
        let dir = tempfile::tempdir().unwrap();
        let (mut spool, _) = open(dir.path());
        for seq in 1..=3 {
            spool.append(&result(seq)).unwrap();
        }
        drop(spool);
        let last = segment_files(dir.path()).pop().unwrap();
        let mut f = OpenOptions::new().append(true).open(&last).unwrap();
        f.write_all(&record::encode(b"{\"seq\":4,\"check\":\"c\"")[..15])
            .unwrap();
        drop(f);
        let (mut spool, logs) = open(dir.path());
        assert!(logs.any("cut the torn last record"));
        assert_eq!(seqs(&spool), [1, 2, 3]);
        spool.append(&result(4)).unwrap();
        drop(spool);
        let (spool, _) = open(dir.path());
        assert_eq!(seqs(&spool), [1, 2, 3, 4]);
        assert!(!fs::read_dir(dir.path()).unwrap().any(|e| {
            e.unwrap()
                .path()
                .to_string_lossy()
                .ends_with(CORRUPT_SUFFIX)
        }));
    }

    #[test]
    fn damage_inside_is_set_aside_and_the_rest_kept() {
        let dir = tempfile::tempdir().unwrap();
        let (mut spool, _) = open(dir.path());
        for seq in 1..=20 {
            spool.append(&result(seq)).unwrap();
        }
        drop(spool);
        let first = segment_files(dir.path()).remove(0);
        let mut bytes = fs::read(&first).unwrap();
        let n = bytes.len();
        bytes[n - 3] ^= 0x55; // inside the last record's JSON
        fs::write(&first, &bytes).unwrap();
        fs::write(dir.path().join(META_FILE), b"{not json").unwrap();
        let (spool, logs) = open(dir.path());
        assert!(
            logs.any("fails its CRC-32 check"),
            "{:?}",
            logs.0.lock().unwrap()
        );
        assert!(logs.any("meta.json is unreadable"));
        let kept = seqs(&spool);
        assert_eq!(kept.last(), Some(&20));
        assert_eq!(
            kept.len(),
            19,
            "only the damaged record is missing: {kept:?}"
        );
        let aside: Vec<_> = fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .filter(|n| n.ends_with(CORRUPT_SUFFIX))
            .collect();
        assert_eq!(aside.len(), 2, "{aside:?}");
    }

    #[test]
    fn the_cap_evicts_whole_segments_oldest_first() {
        let dir = tempfile::tempdir().unwrap();
        let logs = Arc::new(Logs::default());
        let limits = SpoolLimits {
            cap_bytes: 1024,
            segment_bytes: 256,
        };
        let mut spool = Spool::open(dir.path(), Kind::Result, limits, logs).unwrap();
        let mut evicted = 0;
        for seq in 1..=50 {
            evicted += spool.append(&result(seq)).unwrap().count;
        }
        assert!(spool.total_bytes() <= limits.cap_bytes + limits.segment_bytes);
        let kept = seqs(&spool);
        assert_eq!(kept.len() as u64 + evicted, 50);
        assert_eq!(kept.last(), Some(&50));
        assert_eq!(kept[0], evicted + 1, "oldest first");
    }

    #[test]
    fn sequence_numbers_at_the_top_of_the_range_are_damage_not_a_panic() {
        let dir = tempfile::tempdir().unwrap();
        let body = |seq: u64| result(seq).to_body().unwrap();
        let mut bytes = record::encode(&body(u64::MAX));
        bytes.extend(record::encode(&body(1)));
        fs::write(dir.path().join("00000000000000000001.seg"), &bytes).unwrap();
        fs::write(dir.path().join("18446744073709551615.seg"), b"").unwrap();
        let (mut spool, logs) = open(dir.path());
        assert!(logs.any("does not follow"), "{:?}", logs.0.lock().unwrap());
        assert_eq!(seqs(&spool), [u64::MAX]);
        // A planted top segment id exhausts the ids: an error, not a panic.
        let err = spool.append(&result(5)).unwrap_err();
        assert!(err.to_string().contains("exhausted"), "{err}");
        spool.set_numbering(1, true, 10);
        assert!(spool.append(&result(3)).is_err(), "seq below the shift");
    }

    /// Segment bytes written by the spool before payload kinds existed
    /// (version 1): two check results, the first with long output and
    /// perfdata.
    const V1_SEGMENT: &[u8] = include_bytes!("spool/testdata/v1-check-results.seg");

    #[test]
    fn version_1_segments_are_read_and_continued() {
        let dir = tempfile::tempdir().unwrap();
        fs::write(dir.path().join("00000000000000000001.seg"), V1_SEGMENT).unwrap();
        let (mut spool, logs) = open(dir.path());
        let mut read = Vec::new();
        spool.read_from(None, |p, _| {
            read.push(p);
            true
        });
        let Payload::Result(disk) = &read[0] else {
            panic!("{read:?}")
        };
        assert_eq!(read.len(), 2, "{read:?}");
        assert_eq!(
            (
                disk.seq,
                disk.check.as_str(),
                disk.state,
                disk.long_output.as_str()
            ),
            (1, "disk", CheckState::Warning, "line two")
        );
        assert_eq!(disk.perfdata[0].value, 91.5);
        assert_eq!(disk.perfdata[0].crit.as_deref(), Some("95"));
        assert_eq!(read[1].seq(), 2);
        spool.append(&result(3)).unwrap();
        drop(spool);
        let (spool, _) = open(dir.path());
        assert_eq!(seqs(&spool), [1, 2, 3]);
        assert!(!logs.any("damaged"), "{:?}", logs.0.lock().unwrap());
    }

    #[test]
    fn a_spool_holds_one_kind_and_sets_aside_the_other_and_unknown_kinds() {
        let dir = tempfile::tempdir().unwrap();
        let (mut spool, _) = open(dir.path());
        let batch = Payload::Samples(SampleBatch {
            seq: 1,
            samples: vec![],
        });
        let err = spool.append(&batch).unwrap_err();
        assert!(
            err.to_string()
                .contains("metric samples record cannot go into the check result spool"),
            "{err}"
        );
        drop(spool);
        // Written by hand, as a confused or newer writer would: a result,
        // then a samples record, then a record of a kind from the future,
        // then another result.
        let mut bytes = record::encode(&result(1).to_body().unwrap());
        bytes.extend(record::encode(&batch.to_body().unwrap()));
        fs::write(dir.path().join("00000000000000000001.seg"), &bytes).unwrap();
        let mut future = record::encode(&result(5).to_body().unwrap());
        future.extend(record::encode(br#"{"kind":"events","seq":6}"#));
        future.extend(record::encode(&result(7).to_body().unwrap()));
        fs::write(dir.path().join("00000000000000000002.seg"), &future).unwrap();
        let (spool, logs) = open(dir.path());
        assert!(
            logs.any("a metric samples record in the check result spool"),
            "{:?}",
            logs.0.lock().unwrap()
        );
        assert!(logs.any(r#"record kind "events" is unknown"#));
        // The records before the damage stay; the rest is set aside, not lost.
        assert_eq!(seqs(&spool), [1, 5]);
        let aside: Vec<_> = fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .filter(|n| n.ends_with(CORRUPT_SUFFIX))
            .collect();
        assert_eq!(aside.len(), 2, "{aside:?}");
    }

    #[test]
    fn a_samples_spool_round_trips_batches() {
        let dir = tempfile::tempdir().unwrap();
        let logs = Arc::new(Logs::default());
        let mut spool = Spool::open(dir.path(), Kind::Samples, SMALL, logs.clone()).unwrap();
        let batch = |seq| {
            Payload::Samples(SampleBatch {
                seq,
                samples: vec![MetricSample {
                    name: format!("m{seq}"),
                    value: seq as f64 / 3.0,
                    tags: vec![Tag {
                        key: "host".into(),
                        value: "a".into(),
                    }],
                    kind: "gauge".into(),
                    unit: String::new(),
                    timestamp_ms: 1_000 * seq as i64,
                }],
            })
        };
        for seq in 1..=30 {
            spool.append(&batch(seq)).unwrap();
        }
        assert!(segment_files(dir.path()).len() > 1, "rotates like results");
        assert!(
            spool.append(&result(31)).is_err(),
            "no results in a samples spool"
        );
        drop(spool);
        let spool = Spool::open(dir.path(), Kind::Samples, SMALL, logs.clone()).unwrap();
        let mut read = Vec::new();
        spool.read_from(None, |p, _| {
            read.push(p);
            true
        });
        assert_eq!(read, (1..=30).map(batch).collect::<Vec<_>>());
        assert!(!logs.any("damaged"), "{:?}", logs.0.lock().unwrap());
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig::with_cases(64))]

        /// Whatever bytes a segment holds (valid records, then garbage), the
        /// spool opens, keeps the valid prefix and goes on appending.
        #[test]
        fn any_segment_bytes_open_without_panic(
            valid in 0u64..5,
            garbage in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..300),
        ) {
            let dir = tempfile::tempdir().unwrap();
            let (mut spool, _) = open(dir.path());
            for seq in 1..=valid {
                spool.append(&result(seq)).unwrap();
            }
            drop(spool);
            if let Some(last) = segment_files(dir.path()).pop() {
                let mut f = OpenOptions::new().append(true).open(last).unwrap();
                f.write_all(&garbage).unwrap();
            } else {
                fs::write(dir.path().join("00000000000000000001.seg"), &garbage).unwrap();
            }
            let (mut spool, _) = open(dir.path());
            let kept = seqs(&spool);
            proptest::prop_assert_eq!(&kept, &(1..=valid).collect::<Vec<_>>());
            let next = valid + 1;
            spool.append(&result(next)).unwrap();
            drop(spool);
            let (spool, _) = open(dir.path());
            proptest::prop_assert_eq!(seqs(&spool).last().copied(), Some(next));
        }
    }
}
