//! The keys directory on disk: key files, the root chain in `roots/`, and
//! signing the next root version (see the parent module for the layout).

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};
use outrider_signing::{
    Error as SigningError, KeyPair, KeyRole, RootBuilder, TrustedRoot, WalkError, walk_roots,
};

use super::{ROOT_FILE, ROOTS_DIR, SHORT_ID_LEN, load_root};
use crate::UsageError;
use crate::files::write_atomic;

/// A key file found in a keys directory.
#[derive(Debug)]
pub(super) struct LocalKey {
    pub(super) file: String,
    pub(super) key: KeyPair,
}

/// Every readable key file in `dir`, and one sentence per file that is not.
pub(super) fn local_keys(dir: &Path) -> Result<(Vec<LocalKey>, Vec<String>)> {
    let mut keys = Vec::new();
    let mut problems = Vec::new();
    for path in key_paths(dir)? {
        let file = path
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        match KeyPair::read(&path) {
            Ok(key) => keys.push(LocalKey { file, key }),
            Err(e) => problems.push(format!("{file}: {e}")),
        }
    }
    Ok((keys, problems))
}

/// The `*.key` files directly in `dir`, sorted; none if `dir` does not exist.
pub(super) fn key_paths(dir: &Path) -> Result<Vec<PathBuf>> {
    let listing = match std::fs::read_dir(dir) {
        Ok(listing) => listing,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => {
            return Err(UsageError(format!(
                "cannot list the keys directory {}: {e}",
                dir.display()
            ))
            .into());
        }
    };
    let mut paths: Vec<PathBuf> = listing
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.is_file() && p.extension().is_some_and(|x| x == "key"))
        .collect();
    paths.sort();
    Ok(paths)
}

/// The verified root chain of a keys directory.
#[derive(Debug)]
pub(super) struct Chain {
    /// Envelope of version `i + 1` at index `i`.
    pub(super) envelopes: Vec<Vec<u8>>,
    /// The newest root, verified by walking from version 1.
    pub(super) newest: TrustedRoot,
}

impl Chain {
    pub(super) fn envelope(&self, version: u64) -> Option<&[u8]> {
        let index = usize::try_from(version.checked_sub(1)?).ok()?;
        self.envelopes.get(index).map(Vec::as_slice)
    }
}

/// Loads and verifies `roots/1.json` … `roots/<n>.json` with the same chain
/// walk clients do (expiry not checked: an expired root can still be
/// rotated). A directory from before `roots/` existed (only `root.json` at
/// version 1) gets `roots/1.json`; a `root.json` one version behind the chain
/// (an interrupted write) is brought up to date. Every other inconsistency
/// is a [`UsageError`].
pub(super) fn load_chain(dir: &Path) -> Result<Chain> {
    let current = load_root(dir, 0)?;
    let current_version = current.root().version;
    let roots_dir = dir.join(ROOTS_DIR);
    if current_version == 1 && !roots_dir.join("1.json").exists() {
        write_root(dir, 1, current.envelope_bytes())?;
    }
    let read_version = |version: u64| -> Result<Option<Vec<u8>>> {
        let path = roots_dir.join(format!("{version}.json"));
        match std::fs::read(&path) {
            Ok(bytes) => Ok(Some(bytes)),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(anyhow::Error::new(e).context(format!("reading {}", path.display()))),
        }
    };
    let first_path = roots_dir.join("1.json");
    let first = read_version(1)?.ok_or_else(|| {
        UsageError(format!(
            "{} is missing, so root.json (version {current_version}) cannot be verified from the start of its chain",
            first_path.display()
        ))
    })?;
    let first = TrustedRoot::from_bytes_self_signed(&first, 0)
        .map_err(|e| UsageError(format!("{} is not a valid root: {e}", first_path.display())))?;

    let mut envelopes = vec![first.envelope_bytes().to_vec()];
    let newest = walk_roots(
        &first,
        |version| {
            let bytes = read_version(version)?;
            if let Some(bytes) = &bytes {
                envelopes.push(bytes.clone());
            }
            Ok::<_, anyhow::Error>(bytes)
        },
        0,
    )
    .map_err(|e| match e {
        WalkError::Fetch { source, .. } => source,
        WalkError::Verify { version, source } => UsageError(format!(
            "{} does not follow the root before it: {source}",
            roots_dir.join(format!("{version}.json")).display()
        ))
        .into(),
        other => anyhow::anyhow!("{other}"),
    })?;
    // The closure pushed each envelope before it was verified; the walk
    // succeeded, so every pushed one was accepted.
    let newest_version = newest.root().version;
    let stored_current = current_version
        .checked_sub(1)
        .and_then(|i| usize::try_from(i).ok())
        .and_then(|i| envelopes.get(i));
    if stored_current.map(Vec::as_slice) != Some(current.envelope_bytes()) {
        bail!(UsageError(format!(
            "{} (version {current_version}) is not the version in {}; restore one from the other",
            dir.join(ROOT_FILE).display(),
            roots_dir.display()
        )));
    }
    if newest_version == current_version + 1 {
        eprintln!(
            "note: root.json was at version {current_version}; updating it to the newest, version {newest_version}"
        );
        write_atomic(&dir.join(ROOT_FILE), newest.envelope_bytes())?;
    } else if newest_version != current_version {
        bail!(UsageError(format!(
            "{} holds root versions up to {newest_version}, but root.json is at version {current_version}",
            roots_dir.display()
        )));
    }
    Ok(Chain { envelopes, newest })
}

/// Signs the root `builder` describes (the successor of `chain.newest`) with
/// every local key and `new_keys` that is a root key of the old or the new
/// root, verifies it as the successor, then writes `new_keys` as
/// `<role>-<shortid>.key` and the root as `roots/<n+1>.json` and `root.json`.
/// Fails with a [`UsageError`] when the local keys do not reach both
/// thresholds.
pub(super) fn sign_next_root(
    dir: &Path,
    chain: &Chain,
    builder: RootBuilder,
    new_keys: &[KeyPair],
) -> Result<TrustedRoot> {
    let old = chain.newest.root();
    let new = builder.root().clone();
    let (local, problems) = local_keys(dir)?;
    let mut seen = BTreeSet::new();
    let signers: Vec<&KeyPair> = local
        .iter()
        .map(|l| &l.key)
        .chain(new_keys)
        .filter(|k| k.role() == KeyRole::Root)
        .filter(|k| {
            let id = k.key_id();
            (old.root_keys.contains_key(&id) || new.root_keys.contains_key(&id)) && seen.insert(id)
        })
        .collect();
    for (which, root) in [("current", old), ("new", &new)] {
        let have = signers
            .iter()
            .filter(|k| root.root_keys.contains_key(&k.key_id()))
            .count();
        if have < root.root_threshold as usize {
            let mut message = format!(
                "the {which} root (version {}) needs {} of its root keys to sign, but {} holds {have}",
                root.version,
                root.root_threshold,
                dir.display()
            );
            if !problems.is_empty() {
                message.push_str(&format!(" (unreadable: {})", problems.join("; ")));
            }
            bail!(UsageError(message));
        }
    }
    let envelope = builder.sign(&signers)?.to_bytes();
    let next = chain
        .newest
        .successor(&envelope)
        .context("verifying the new root as the successor of the current one")?;
    for key in new_keys {
        write_key(key, &dir.join(key_file_name(key)))?;
    }
    write_root(dir, next.root().version, &envelope)?;
    Ok(next)
}

/// `<role>-<first 8 hex digits of the id>.key`.
pub(super) fn key_file_name(key: &KeyPair) -> String {
    let id = key.key_id();
    format!("{}-{}.key", key.role(), &id.as_str()[..SHORT_ID_LEN])
}

pub(super) fn write_key(key: &KeyPair, path: &Path) -> Result<()> {
    key.write_new(path).map_err(|e| match e {
        SigningError::KeyFileExists { .. } => anyhow::Error::new(UsageError(e.to_string())),
        other => anyhow::Error::new(other).context(format!("writing {}", path.display())),
    })
}

/// Writes `roots/<version>.json`, then `root.json`.
pub(super) fn write_root(dir: &Path, version: u64, envelope: &[u8]) -> Result<()> {
    let roots = dir.join(ROOTS_DIR);
    std::fs::create_dir_all(&roots).with_context(|| format!("creating {}", roots.display()))?;
    write_atomic(&roots.join(format!("{version}.json")), envelope)?;
    write_atomic(&dir.join(ROOT_FILE), envelope)
}

pub(super) fn create_private_dir(dir: &Path) -> Result<()> {
    let mut builder = std::fs::DirBuilder::new();
    builder.recursive(true);
    #[cfg(unix)]
    std::os::unix::fs::DirBuilderExt::mode(&mut builder, 0o700);
    builder
        .create(dir)
        .with_context(|| format!("creating keys directory {}", dir.display()))
}
