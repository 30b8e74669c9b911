//! One spool record: `len: u32 LE | crc32(json): u32 LE | json`.
//!
//! The length comes first so a reader can skip a record without decoding
//! it; the CRC-32 (IEEE, `crc32fast`) covers the JSON bytes, so a record torn
//! by a crash mid-write, or flipped bits, is detected rather than decoded.
//! The JSON is a `CheckResult` whose `seq` is the *stored* sequence number
//! (see the spool's `seq_shift`).

use std::io::{self, Read};

/// Bytes of `len` + `crc`.
pub const HEADER_BYTES: usize = 8;
/// Largest JSON body a record may carry; anything longer is corruption
/// (results are shrunk below a protocol frame before they are spooled).
pub const MAX_BODY_BYTES: usize = outrider_protocol::MAX_MESSAGE_BYTES;

/// Encodes one record.
pub fn encode(json: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(HEADER_BYTES + json.len());
    // Bodies are bounded by MAX_BODY_BYTES (1 MiB), far below u32::MAX.
    out.extend_from_slice(&(json.len() as u32).to_le_bytes());
    out.extend_from_slice(&crc32fast::hash(json).to_le_bytes());
    out.extend_from_slice(json);
    out
}

/// Why the bytes at some offset are not a valid record.
#[derive(Debug, PartialEq, Eq)]
pub enum Bad {
    /// The data ends inside the record: a write torn by a crash.
    Truncated,
    /// The length field is out of range.
    Length(u32),
    /// The body does not match its checksum.
    Checksum,
}

impl std::fmt::Display for Bad {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Bad::Truncated => f.write_str("the last record is incomplete"),
            Bad::Length(n) => write!(f, "a record claims {n} bytes"),
            Bad::Checksum => f.write_str("a record fails its CRC-32 check"),
        }
    }
}

/// Reads the next record body from `reader` into `body`.
///
/// `Ok(None)` at a clean end of data, `Ok(Some(Err(bad)))` for a record that
/// is not valid, `Err` only for I/O errors.
pub fn read(reader: &mut impl Read, body: &mut Vec<u8>) -> io::Result<Option<Result<(), Bad>>> {
    let mut header = [0u8; HEADER_BYTES];
    let got = read_full(reader, &mut header)?;
    if got == 0 {
        return Ok(None);
    }
    if got < HEADER_BYTES {
        return Ok(Some(Err(Bad::Truncated)));
    }
    let len = u32::from_le_bytes([header[0], header[1], header[2], header[3]]);
    let crc = u32::from_le_bytes([header[4], header[5], header[6], header[7]]);
    if len == 0 || len as usize > MAX_BODY_BYTES {
        return Ok(Some(Err(Bad::Length(len))));
    }
    body.clear();
    body.resize(len as usize, 0);
    if read_full(reader, body)? < body.len() {
        return Ok(Some(Err(Bad::Truncated)));
    }
    if crc32fast::hash(body) != crc {
        return Ok(Some(Err(Bad::Checksum)));
    }
    Ok(Some(Ok(())))
}

/// Fills `buf` as far as the data goes; returns how much was read.
fn read_full(reader: &mut impl Read, buf: &mut [u8]) -> io::Result<usize> {
    let mut filled = 0;
    while filled < buf.len() {
        match reader.read(&mut buf[filled..]) {
            Ok(0) => break,
            Ok(n) => filled += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(filled)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn read_all(bytes: &[u8]) -> Vec<Result<Vec<u8>, Bad>> {
        let mut r = bytes;
        let mut body = Vec::new();
        let mut out = Vec::new();
        while let Some(rec) = read(&mut r, &mut body).unwrap() {
            let stop = rec.is_err();
            out.push(rec.map(|()| body.clone()));
            if stop {
                break;
            }
        }
        out
    }

    #[test]
    fn round_trip_and_damage_is_named() {
        let mut bytes = encode(b"{\"a\":1}");
        bytes.extend(encode(b"[2]"));
        assert_eq!(
            read_all(&bytes),
            [Ok(b"{\"a\":1}".to_vec()), Ok(b"[2]".to_vec())]
        );
        assert_eq!(read_all(&bytes[..bytes.len() - 1])[1], Err(Bad::Truncated));
        assert_eq!(read_all(&bytes[..17])[1], Err(Bad::Truncated));
        let mut flipped = bytes.clone();
        flipped[10] ^= 1;
        assert_eq!(read_all(&flipped)[0], Err(Bad::Checksum));
        assert_eq!(read_all(&[0; 8])[0], Err(Bad::Length(0)));
    }
}
