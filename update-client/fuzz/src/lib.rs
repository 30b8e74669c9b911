//! An in-memory update repository for the fuzz targets: the documents the
//! client fetches are the fuzzer's input, served through the same
//! `Transport` trait as HTTP and files, so the size caps of the real
//! download path apply.

use std::collections::BTreeMap;
use std::io::Cursor;

use outrider_update_client::{Body, Transport, UpdateError};

/// Documents by repository path (`roots/2.json`, `channels/stable/manifest.json`).
#[derive(Debug, Default)]
pub struct Memory(pub BTreeMap<String, Vec<u8>>);

impl Transport for Memory {
    fn open(&self, path: &str, offset: u64) -> Result<Option<Body>, UpdateError> {
        Ok(self.0.get(path).map(|bytes| {
            let start = usize::try_from(offset)
                .unwrap_or(usize::MAX)
                .min(bytes.len());
            Body {
                reader: Box::new(Cursor::new(bytes[start..].to_vec())),
                start: start as u64,
            }
        }))
    }

    fn locate(&self, path: &str) -> String {
        format!("memory:{path}")
    }
}
