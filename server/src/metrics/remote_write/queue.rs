//! The disk queue: every remote_write request waits here until the
//! receiver answered it, so a receiver outage or a server restart loses
//! nothing the queue's byte cap can hold.
//!
//! Layout of the directory (`<data_dir>/remote_write/`):
//! - `NNNNNNNNNNNNNNNNNNNN.seg` — one request each (20-digit id,
//!   increasing: the send order): a 20-byte header `ORWQ`, format version
//!   (u32), sample count (u32), payload length (u32), CRC-32 of the payload
//!   (u32), all little-endian, then the payload, the request body exactly as
//!   sent (snappy-compressed protobuf, `wire.rs`);
//! - `*.tmp` — a segment being written; left over only by a crash, deleted
//!   on open;
//! - `*.corrupt` — a segment set aside as damaged (at most
//!   [`MAX_CORRUPT_FILES`], the oldest deleted beyond), for an operator.
//!
//! The same discipline as the agent's spool (`agent-lib/src/spool.rs`):
//! - a segment is written to `.tmp`, fsynced, renamed into place and the
//!   directory fsynced, so after a crash a `.seg` is whole or absent;
//! - damage (bad header, wrong length, bad checksum, unreadable file) is
//!   logged as an error by the caller and the file renamed to `.corrupt`;
//!   nothing here panics or refuses to start over bad files;
//! - a segment is deleted only when [`Queue::ack`] says the receiver
//!   answered it (2xx, or a 4xx that will never succeed);
//! - the total size of the segments stays under the cap: once a new
//!   segment is durably written (renamed and the directory fsynced),
//!   appending evicts the oldest segments (newer data is worth more) and
//!   reports every one with the samples it held ([`Losses`]), never the
//!   segment being sent ([`Queue::oldest`]) nor the new one. Evicting only
//!   after the write means a failed write (disk full) loses the new batch
//!   alone, which the caller counts, and never old segments unaccounted;
//!   the price is that the directory briefly holds up to one request more
//!   than the cap.
//!
//! All methods do blocking file I/O; the caller runs them on the blocking
//! pool.

use std::collections::VecDeque;
use std::fs::{self, File};
use std::io::{self, Read, Write};
use std::path::{Path, PathBuf};

const MAGIC: &[u8; 4] = b"ORWQ";
const VERSION: u32 = 1;
const HEADER_BYTES: usize = 20;
const SEGMENT_SUFFIX: &str = ".seg";
const TMP_SUFFIX: &str = ".tmp";
const CORRUPT_SUFFIX: &str = ".corrupt";

/// Damaged segments kept for inspection; older ones are deleted.
pub const MAX_CORRUPT_FILES: usize = 8;

/// A queue failure; each names the file.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum QueueError {
    #[error("remote_write queue: {action} {path}: {source}")]
    Io {
        action: &'static str,
        path: PathBuf,
        source: io::Error,
    },
    #[error("remote_write queue: segment {path} is damaged ({why}); set aside as {quarantined}")]
    Corrupt {
        path: PathBuf,
        why: String,
        quarantined: PathBuf,
    },
}

fn io_err<'a>(action: &'static str, path: &'a Path) -> impl FnOnce(io::Error) -> QueueError + 'a {
    move |source| QueueError::Io {
        action,
        path: path.to_owned(),
        source,
    }
}

/// One queued request.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Segment {
    pub id: u64,
    /// File size, header included.
    pub bytes: u64,
    pub samples: u64,
}

/// A segment [`Queue::oldest`] found damaged and set aside.
#[derive(Debug)]
pub struct Damaged {
    pub error: QueueError,
    /// Its samples, as its header told (lost).
    pub samples: u64,
}

/// What opening or appending set aside.
#[derive(Debug, Default)]
pub struct Losses {
    /// Samples of segments evicted to stay under the cap.
    pub evicted_samples: u64,
    pub evicted_segments: u64,
    /// Damaged segments found, each set aside (log them).
    pub corrupt: Vec<QueueError>,
    /// Samples of those, as far as their headers were readable.
    pub corrupt_samples: u64,
}

/// The queue; see the module docs.
#[derive(Debug)]
pub struct Queue {
    dir: PathBuf,
    cap_bytes: u64,
    segments: VecDeque<Segment>,
    next_id: u64,
    bytes: u64,
    samples: u64,
    /// The segment handed out by [`Queue::oldest`] and not yet acked or
    /// released: never evicted.
    in_flight: Option<u64>,
}

impl Queue {
    /// Opens (creating) the queue in `dir`, bounded by `cap_bytes`: deletes
    /// leftover `.tmp` files and sets aside segments whose header is
    /// damaged (returned in [`Losses::corrupt`]). The checksum is checked
    /// when a segment is read ([`Queue::oldest`]).
    ///
    /// Fails when the directory cannot be created or listed.
    pub fn open(dir: &Path, cap_bytes: u64) -> Result<(Queue, Losses), QueueError> {
        fs::create_dir_all(dir).map_err(io_err("creating", dir))?;
        let mut losses = Losses::default();
        let mut found = Vec::new();
        // The highest id of any file, set-aside ones included: a new
        // segment must not take the id of a `.corrupt` file, or setting
        // that one aside in turn would replace the evidence.
        let mut highest = 0;
        for entry in fs::read_dir(dir).map_err(io_err("listing", dir))? {
            let entry = entry.map_err(io_err("listing", dir))?;
            let name = entry.file_name();
            let Some(name) = name.to_str() else { continue };
            if name.ends_with(TMP_SUFFIX) {
                // A crash while writing: the request was never queued (its
                // batch was lost with the process' memory anyway).
                let _ = fs::remove_file(entry.path());
            } else if let Some(id) = name
                .strip_suffix(SEGMENT_SUFFIX)
                .and_then(|id| id.parse::<u64>().ok())
            {
                highest = highest.max(id);
                found.push(id);
            } else if let Some(id) = name
                .strip_suffix(CORRUPT_SUFFIX)
                .and_then(|id| id.parse::<u64>().ok())
            {
                highest = highest.max(id);
            }
        }
        found.sort_unstable();
        let mut queue = Queue {
            dir: dir.to_owned(),
            cap_bytes,
            segments: VecDeque::new(),
            next_id: highest.saturating_add(1),
            bytes: 0,
            samples: 0,
            in_flight: None,
        };
        for id in found {
            match queue.read_header(id) {
                Ok(segment) => {
                    queue.bytes += segment.bytes;
                    queue.samples += segment.samples;
                    queue.segments.push_back(segment);
                }
                Err((why, samples)) => {
                    losses.corrupt_samples += samples;
                    losses.corrupt.push(queue.quarantine(id, why));
                }
            }
        }
        // A smaller cap than the last run's: trim now, not at the next append.
        queue.evict_to_fit(&mut losses);
        sync_dir(dir);
        Ok((queue, losses))
    }

    /// Queues request body `body` of `samples` samples, then, once it is
    /// durably written, evicts the oldest segments while the queue is over
    /// the cap (a body larger than the cap is still queued, alone). The
    /// evictions are returned to be counted.
    ///
    /// Fails when the file cannot be written (disk full, permissions);
    /// nothing is queued and nothing evicted then.
    pub fn append(&mut self, body: &[u8], samples: u64) -> Result<Losses, QueueError> {
        let mut losses = Losses::default();
        let bytes = (HEADER_BYTES + body.len()) as u64;
        let id = self.next_id;
        let path = self.path(id, SEGMENT_SUFFIX);
        let tmp = self.path(id, TMP_SUFFIX);
        let written = (|| {
            let mut file = File::create(&tmp)?;
            let mut header = [0u8; HEADER_BYTES];
            header[..4].copy_from_slice(MAGIC);
            header[4..8].copy_from_slice(&VERSION.to_le_bytes());
            // Bounded by --remote-write-batch-samples, far below u32::MAX.
            header[8..12].copy_from_slice(&(samples as u32).to_le_bytes());
            header[12..16].copy_from_slice(&(body.len() as u32).to_le_bytes());
            header[16..20].copy_from_slice(&crc32fast::hash(body).to_le_bytes());
            file.write_all(&header)?;
            file.write_all(body)?;
            file.sync_all()?;
            fs::rename(&tmp, &path)
        })();
        if let Err(source) = written {
            let _ = fs::remove_file(&tmp);
            return Err(QueueError::Io {
                action: "writing",
                path,
                source,
            });
        }
        sync_dir(&self.dir);
        self.next_id += 1;
        self.bytes += bytes;
        self.samples += samples;
        self.segments.push_back(Segment { id, bytes, samples });
        self.evict_to_fit(&mut losses);
        Ok(losses)
    }

    /// The oldest segment and its body, marked in flight (not evicted
    /// until [`Queue::ack`] or [`Queue::release`]). A damaged segment is
    /// set aside and returned as the error (with its sample count, when
    /// the header told it); the next call goes on with the next one.
    pub fn oldest(&mut self) -> Option<Result<(Segment, Vec<u8>), Damaged>> {
        let segment = *self.segments.front()?;
        match self.read_body(segment) {
            Ok(body) => {
                self.in_flight = Some(segment.id);
                Some(Ok((segment, body)))
            }
            Err(why) => {
                self.forget_front();
                Some(Err(Damaged {
                    error: self.quarantine(segment.id, why),
                    samples: segment.samples,
                }))
            }
        }
    }

    /// The receiver answered segment `id`: delete it.
    pub fn ack(&mut self, id: u64) {
        self.in_flight = None;
        if self.segments.front().is_some_and(|s| s.id == id) {
            self.forget_front();
            let path = self.path(id, SEGMENT_SUFFIX);
            if let Err(e) = fs::remove_file(&path)
                && e.kind() != io::ErrorKind::NotFound
            {
                // Sent twice after a restart at worst; the receiver
                // deduplicates identical samples.
                tracing::warn!("remote_write queue: cannot delete {}: {e}", path.display());
            }
        }
    }

    /// Segment `id` stays queued (a retry is coming, or shutdown).
    pub fn release(&mut self, id: u64) {
        if self.in_flight == Some(id) {
            self.in_flight = None;
        }
    }

    /// Bytes queued (headers included).
    pub fn bytes(&self) -> u64 {
        self.bytes
    }

    /// Samples queued.
    pub fn samples(&self) -> u64 {
        self.samples
    }

    /// Segments queued.
    pub fn len(&self) -> usize {
        self.segments.len()
    }

    /// Whether nothing is queued.
    pub fn is_empty(&self) -> bool {
        self.segments.is_empty()
    }

    fn forget_front(&mut self) {
        if let Some(s) = self.segments.pop_front() {
            self.bytes -= s.bytes;
            self.samples -= s.samples;
        }
    }

    /// Evicts the oldest segments until the queue fits its cap, never the
    /// one in flight nor the newest (just appended), adding each to
    /// `losses`.
    fn evict_to_fit(&mut self, losses: &mut Losses) {
        while self.bytes > self.cap_bytes {
            let victim = match self.segments.front() {
                Some(s) if Some(s.id) != self.in_flight => 0,
                Some(_) => 1,
                None => return,
            };
            if victim + 1 >= self.segments.len() {
                return;
            }
            let Some(s) = self.segments.remove(victim) else {
                return;
            };
            self.bytes -= s.bytes;
            self.samples -= s.samples;
            losses.evicted_samples += s.samples;
            losses.evicted_segments += 1;
            let _ = fs::remove_file(self.path(s.id, SEGMENT_SUFFIX));
        }
    }

    /// The segment `id` as its header describes it; when damaged, why and
    /// its samples (0 unless the header was readable).
    fn read_header(&self, id: u64) -> Result<Segment, (String, u64)> {
        let path = self.path(id, SEGMENT_SUFFIX);
        let unknown = |why: String| (why, 0);
        let mut file = File::open(&path).map_err(|e| unknown(format!("cannot open: {e}")))?;
        let bytes = file
            .metadata()
            .map_err(|e| unknown(format!("cannot stat: {e}")))?
            .len();
        let mut header = [0u8; HEADER_BYTES];
        file.read_exact(&mut header)
            .map_err(|e| unknown(format!("header unreadable: {e}")))?;
        let (_, len, samples) = parse_header(&header).map_err(unknown)?;
        if bytes != (HEADER_BYTES as u64) + u64::from(len) {
            return Err((
                format!(
                    "{bytes} bytes where the header says {}",
                    HEADER_BYTES as u64 + u64::from(len)
                ),
                u64::from(samples),
            ));
        }
        Ok(Segment {
            id,
            bytes,
            samples: u64::from(samples),
        })
    }

    fn read_body(&self, segment: Segment) -> Result<Vec<u8>, String> {
        let path = self.path(segment.id, SEGMENT_SUFFIX);
        let data = fs::read(&path).map_err(|e| format!("cannot read: {e}"))?;
        let header: &[u8; HEADER_BYTES] = data
            .get(..HEADER_BYTES)
            .and_then(|h| h.try_into().ok())
            .ok_or("shorter than its header")?;
        let (crc, len, _) = parse_header(header)?;
        let body = &data[HEADER_BYTES..];
        if body.len() as u64 != u64::from(len) {
            return Err(format!("{} payload bytes, header says {len}", body.len()));
        }
        if crc32fast::hash(body) != crc {
            return Err("checksum mismatch".into());
        }
        Ok(body.to_vec())
    }

    /// Renames segment `id` to `.corrupt` (deleting it if even that
    /// fails) and the oldest `.corrupt` files beyond [`MAX_CORRUPT_FILES`].
    fn quarantine(&self, id: u64, why: String) -> QueueError {
        let path = self.path(id, SEGMENT_SUFFIX);
        let quarantined = self.path(id, CORRUPT_SUFFIX);
        if fs::rename(&path, &quarantined).is_err() {
            let _ = fs::remove_file(&path);
        }
        let mut corrupt: Vec<PathBuf> = fs::read_dir(&self.dir)
            .into_iter()
            .flatten()
            .flatten()
            .map(|e| e.path())
            .filter(|p| p.to_str().is_some_and(|p| p.ends_with(CORRUPT_SUFFIX)))
            .collect();
        if corrupt.len() > MAX_CORRUPT_FILES {
            corrupt.sort();
            for old in &corrupt[..corrupt.len() - MAX_CORRUPT_FILES] {
                let _ = fs::remove_file(old);
            }
        }
        QueueError::Corrupt {
            path,
            why,
            quarantined,
        }
    }

    fn path(&self, id: u64, suffix: &str) -> PathBuf {
        self.dir.join(format!("{id:020}{suffix}"))
    }
}

/// `(crc, payload length, samples)` of a well-formed header.
fn parse_header(h: &[u8; HEADER_BYTES]) -> Result<(u32, u32, u32), String> {
    let word = |i: usize| u32::from_le_bytes([h[i], h[i + 1], h[i + 2], h[i + 3]]);
    if &h[..4] != MAGIC {
        return Err("not a remote_write segment (bad magic)".into());
    }
    if word(4) != VERSION {
        return Err(format!("format version {} unknown to this build", word(4)));
    }
    Ok((word(16), word(12), word(8)))
}

/// fsyncs a directory so a created or renamed name survives a crash;
/// errors are ignored (some file systems refuse directory fsync).
fn sync_dir(dir: &Path) {
    if let Ok(d) = File::open(dir) {
        let _ = d.sync_all();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn body(n: usize) -> Vec<u8> {
        (0..n).map(|i| i as u8).collect()
    }

    fn drain(q: &mut Queue) -> Vec<(u64, Vec<u8>)> {
        let mut out = Vec::new();
        while let Some(next) = q.oldest() {
            let (segment, body) = next.unwrap();
            q.ack(segment.id);
            out.push((segment.samples, body));
        }
        out
    }

    #[test]
    fn appended_requests_come_back_in_order_until_acked() {
        let dir = tempfile::tempdir().unwrap();
        let (mut q, losses) = Queue::open(dir.path(), 1 << 20).unwrap();
        assert!(losses.corrupt.is_empty() && q.is_empty());
        q.append(&body(10), 5).unwrap();
        q.append(&body(20), 7).unwrap();
        assert_eq!((q.len(), q.samples(), q.bytes()), (2, 12, 70));
        // Not acked: the same segment again (a retry).
        let (first, b) = q.oldest().unwrap().unwrap();
        q.release(first.id);
        let (again, b2) = q.oldest().unwrap().unwrap();
        assert_eq!((first, &b), (again, &b2));
        assert_eq!(b, body(10));
        q.ack(first.id);
        assert_eq!(drain(&mut q), [(7, body(20))]);
        assert_eq!((q.len(), q.samples(), q.bytes()), (0, 0, 0));
        assert_eq!(fs::read_dir(dir.path()).unwrap().count(), 0);
    }

    #[test]
    fn a_restart_resends_what_was_not_acked() {
        let dir = tempfile::tempdir().unwrap();
        {
            let (mut q, _) = Queue::open(dir.path(), 1 << 20).unwrap();
            q.append(&body(1), 1).unwrap();
            q.append(&body(2), 2).unwrap();
            q.append(&body(3), 3).unwrap();
            let (s, _) = q.oldest().unwrap().unwrap();
            q.ack(s.id);
            // In flight when the process stops: not acked, so kept.
            q.oldest().unwrap().unwrap();
        }
        // A crash while writing leaves a .tmp: ignored and removed.
        fs::write(dir.path().join("00000000000000000009.tmp"), b"torn").unwrap();
        let (mut q, losses) = Queue::open(dir.path(), 1 << 20).unwrap();
        assert!(losses.corrupt.is_empty());
        assert_eq!(q.samples(), 5);
        q.append(&body(4), 4).unwrap();
        assert_eq!(drain(&mut q), [(2, body(2)), (3, body(3)), (4, body(4))]);
        assert!(!dir.path().join("00000000000000000009.tmp").exists());
    }

    #[test]
    fn a_full_queue_evicts_the_oldest_but_not_the_one_in_flight() {
        let dir = tempfile::tempdir().unwrap();
        // Room for three 100-byte segments (80 payload + 20 header).
        let (mut q, _) = Queue::open(dir.path(), 300).unwrap();
        for i in 1..=3 {
            assert_eq!(q.append(&body(80), i).unwrap().evicted_samples, 0);
        }
        let losses = q.append(&body(80), 4).unwrap();
        assert_eq!((losses.evicted_segments, losses.evicted_samples), (1, 1));
        assert_eq!((q.len(), q.samples(), q.bytes()), (3, 9, 300));
        // Segment 2 is being sent: segment 3 goes instead.
        let (sending, _) = q.oldest().unwrap().unwrap();
        assert_eq!(sending.samples, 2);
        let losses = q.append(&body(80), 5).unwrap();
        assert_eq!(losses.evicted_samples, 3);
        q.ack(sending.id);
        assert_eq!(drain(&mut q), [(4, body(80)), (5, body(80))]);
        // A smaller cap on the next start trims at once.
        for i in 6..=8 {
            q.append(&body(80), i).unwrap();
        }
        drop(q);
        let (q, losses) = Queue::open(dir.path(), 150).unwrap();
        assert_eq!((losses.evicted_segments, losses.evicted_samples), (2, 13));
        assert_eq!(q.samples(), 8);
    }

    #[test]
    fn a_failed_write_evicts_nothing_and_a_good_one_reports_each_eviction() {
        let dir = tempfile::tempdir().unwrap();
        let (mut q, _) = Queue::open(dir.path(), 300).unwrap();
        for i in 1..=3 {
            q.append(&body(80), i).unwrap();
        }
        // The next segment's .tmp cannot be created (a directory is in the
        // way, as good as a full disk): the append fails and the three
        // queued requests are all still there, on disk too.
        let blocker = dir.path().join(format!("{:020}{TMP_SUFFIX}", 4));
        fs::create_dir(&blocker).unwrap();
        let err = q.append(&body(80), 4).unwrap_err();
        assert!(
            matches!(
                err,
                QueueError::Io {
                    action: "writing",
                    ..
                }
            ),
            "{err}"
        );
        assert_eq!((q.len(), q.samples(), q.bytes()), (3, 6, 300));
        for id in 1..=3 {
            assert!(dir.path().join(format!("{id:020}.seg")).exists(), "{id}");
        }
        fs::remove_dir(&blocker).unwrap();
        // Written: now the oldest goes, and is reported.
        let losses = q.append(&body(80), 4).unwrap();
        assert_eq!((losses.evicted_segments, losses.evicted_samples), (1, 1));
        assert!(!dir.path().join(format!("{:020}.seg", 1)).exists());
        // A request larger than the whole cap evicts every other one
        // (each reported) and stays, alone.
        let losses = q.append(&body(400), 9).unwrap();
        assert_eq!((losses.evicted_segments, losses.evicted_samples), (3, 9));
        assert_eq!(drain(&mut q), [(9, body(400))]);
    }

    #[test]
    fn damaged_segments_are_set_aside_and_the_rest_is_sent() {
        let dir = tempfile::tempdir().unwrap();
        let (mut q, _) = Queue::open(dir.path(), 1 << 20).unwrap();
        for i in 1..=4 {
            q.append(&body(30), i).unwrap();
        }
        drop(q);
        let seg = |id: u64| dir.path().join(format!("{id:020}.seg"));
        // 1: a flipped payload byte (found when read); 2: truncated;
        // 3: not ours at all.
        let mut data = fs::read(seg(1)).unwrap();
        data[HEADER_BYTES + 3] ^= 0xff;
        fs::write(seg(1), data).unwrap();
        let data = fs::read(seg(2)).unwrap();
        fs::write(seg(2), &data[..25]).unwrap();
        fs::write(seg(3), b"hello, world, this is not a segment").unwrap();
        let (mut q, losses) = Queue::open(dir.path(), 1 << 20).unwrap();
        let whys: Vec<String> = losses.corrupt.iter().map(|e| e.to_string()).collect();
        assert_eq!(whys.len(), 2, "{whys:?}");
        // The truncated one's header still told its 2 samples; the foreign
        // file's did not.
        assert_eq!(losses.corrupt_samples, 2);
        assert!(whys[0].contains("00000000000000000002.seg") && whys[0].contains("header says"));
        assert!(whys[1].contains("bad magic"), "{whys:?}");
        let damaged = q.oldest().unwrap().unwrap_err();
        assert!(matches!(damaged.error, QueueError::Corrupt { .. }));
        let err = damaged.error.to_string();
        assert!(err.contains("checksum mismatch"), "{err}");
        assert_eq!(damaged.samples, 1);
        assert_eq!(drain(&mut q), [(4, body(30))]);
        for id in 1..=3 {
            assert!(dir.path().join(format!("{id:020}.corrupt")).exists());
        }
        // New segments continue the numbering past the damaged ones.
        q.append(&body(1), 1).unwrap();
        assert!(seg(5).exists());
    }

    #[test]
    fn new_ids_after_a_restart_pass_the_set_aside_ones_too() {
        let dir = tempfile::tempdir().unwrap();
        let (mut q, _) = Queue::open(dir.path(), 1 << 20).unwrap();
        for i in 1..=3 {
            q.append(&body(30), i).unwrap();
        }
        drop(q);
        let file = |id: u64, suffix: &str| dir.path().join(format!("{id:020}{suffix}"));
        // The newest segment is damaged and set aside by the next start…
        fs::write(file(3, SEGMENT_SUFFIX), b"junk").unwrap();
        let (q, losses) = Queue::open(dir.path(), 1 << 20).unwrap();
        assert_eq!(losses.corrupt.len(), 1);
        drop(q);
        // …and an older run left one with a higher id than any segment.
        fs::write(file(7, CORRUPT_SUFFIX), b"evidence").unwrap();
        // After another restart new segments go past both.
        let (mut q, losses) = Queue::open(dir.path(), 1 << 20).unwrap();
        assert!(losses.corrupt.is_empty());
        q.append(&body(1), 1).unwrap();
        assert!(file(8, SEGMENT_SUFFIX).exists());
        assert!(!file(3, SEGMENT_SUFFIX).exists());
        assert_eq!(fs::read(file(3, CORRUPT_SUFFIX)).unwrap(), b"junk");
        assert_eq!(fs::read(file(7, CORRUPT_SUFFIX)).unwrap(), b"evidence");
        assert_eq!(drain(&mut q), [(1, body(30)), (2, body(30)), (1, body(1))]);
        // Only .corrupt files: still past them.
        let dir = tempfile::tempdir().unwrap();
        fs::write(dir.path().join(format!("{:020}{CORRUPT_SUFFIX}", 5)), b"x").unwrap();
        let (mut q, _) = Queue::open(dir.path(), 1 << 20).unwrap();
        q.append(&body(1), 1).unwrap();
        assert!(
            dir.path()
                .join(format!("{:020}{SEGMENT_SUFFIX}", 6))
                .exists()
        );
    }

    #[test]
    fn quarantine_keeps_a_bounded_number_of_files() {
        let dir = tempfile::tempdir().unwrap();
        for id in 1..=(MAX_CORRUPT_FILES as u64 + 3) {
            fs::write(dir.path().join(format!("{id:020}.seg")), b"junk").unwrap();
        }
        let (q, losses) = Queue::open(dir.path(), 1 << 20).unwrap();
        assert!(q.is_empty());
        assert_eq!(losses.corrupt.len(), MAX_CORRUPT_FILES + 3);
        assert_eq!(fs::read_dir(dir.path()).unwrap().count(), MAX_CORRUPT_FILES);
    }
}
