//! `outrider keys`: create and inspect the offline signing keys and the
//! update root.
//!
//! A keys directory holds `root.key` (role root), `release.key` (role
//! release), both 0600 key files of [`outrider_signing::KeyPair`], and
//! `root.json`, the self-signed root envelope the installer hands to agents.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use clap::Subcommand;
use outrider_signing::{Error as SigningError, KeyPair, KeyRole, TrustedRoot, make_root, now_unix};

use crate::UsageError;
use crate::client::outrider_home;

/// File name of the root key in a keys directory.
pub const ROOT_KEY_FILE: &str = "root.key";
/// File name of the release key in a keys directory.
pub const RELEASE_KEY_FILE: &str = "release.key";
/// File name of the root envelope in a keys directory.
pub const ROOT_FILE: &str = "root.json";

const DAY_SECS: u64 = 86_400;
/// How long a new release key may sign manifests.
const RELEASE_KEY_LIFETIME_SECS: u64 = 365 * DAY_SECS;
/// How long a new root is valid.
const ROOT_LIFETIME_SECS: u64 = 5 * 365 * DAY_SECS;

/// Arguments of `outrider keys`.
#[derive(Debug, clap::Args)]
pub struct KeysArgs {
    #[command(subcommand)]
    command: KeysCommand,
}

#[derive(Debug, Subcommand)]
enum KeysCommand {
    /// Create a root key, a release key and a self-signed root.json.
    Init {
        /// Directory for the keys [default: $OUTRIDER_HOME/keys].
        #[arg(long)]
        dir: Option<PathBuf>,
    },
    /// Show the keys and what root.json trusts.
    List {
        /// Directory of the keys [default: $OUTRIDER_HOME/keys].
        #[arg(long)]
        dir: Option<PathBuf>,
    },
}

/// Runs `outrider keys ...`.
pub fn run(args: KeysArgs) -> Result<()> {
    match args.command {
        KeysCommand::Init { dir } => init(&dir.unwrap_or_else(default_keys_dir)),
        KeysCommand::List { dir } => list(&dir.unwrap_or_else(default_keys_dir)),
    }
}

/// `$OUTRIDER_HOME/keys`.
pub fn default_keys_dir() -> PathBuf {
    outrider_home().join("keys")
}

/// Reads a key file and checks its role; every problem is a [`UsageError`]
/// naming the file.
pub fn load_key(path: &Path, role: KeyRole) -> Result<KeyPair> {
    let key = KeyPair::read(path).map_err(|e| match e {
        SigningError::Io { source, .. } if source.kind() == std::io::ErrorKind::NotFound => {
            UsageError(format!(
                "no key file at {}; run `outrider keys init` or pass the keys directory",
                path.display()
            ))
        }
        other => UsageError(format!("cannot use key file {}: {other}", path.display())),
    })?;
    if key.role() != role {
        return Err(UsageError(format!(
            "{} is a {} key, but a {role} key is needed here",
            path.display(),
            key.role()
        ))
        .into());
    }
    Ok(key)
}

/// Reads and verifies `root.json` in `dir` as a self-signed root at `now_unix`.
pub fn load_root(dir: &Path, now_unix: u64) -> Result<TrustedRoot> {
    let path = dir.join(ROOT_FILE);
    let bytes = std::fs::read(&path).map_err(|e| {
        UsageError(format!(
            "cannot read {} ({e}); run `outrider keys init` first",
            path.display()
        ))
    })?;
    TrustedRoot::from_bytes_self_signed(&bytes, now_unix)
        .map_err(|e| UsageError(format!("{} is not a valid root: {e}", path.display())).into())
}

fn init(dir: &Path) -> Result<()> {
    let paths = [
        dir.join(ROOT_KEY_FILE),
        dir.join(RELEASE_KEY_FILE),
        dir.join(ROOT_FILE),
    ];
    if let Some(existing) = paths.iter().find(|p| p.symlink_metadata().is_ok()) {
        return Err(UsageError(format!(
            "{} already exists; refusing to overwrite existing keys (pass --dir for a new directory)",
            existing.display()
        ))
        .into());
    }
    create_private_dir(dir)?;

    let root_key = KeyPair::generate(KeyRole::Root)?;
    let release_key = KeyPair::generate(KeyRole::Release)?;
    let now = now_unix();
    let root = make_root(
        &[&root_key],
        &[(&release_key, now + RELEASE_KEY_LIFETIME_SECS)],
        1,
        1,
        now + ROOT_LIFETIME_SECS,
    )?;
    for (key, path) in [(&root_key, &paths[0]), (&release_key, &paths[1])] {
        key.write_new(path).map_err(|e| match e {
            SigningError::KeyFileExists { .. } => anyhow::Error::new(UsageError(e.to_string())),
            other => anyhow::Error::new(other).context(format!("writing {}", path.display())),
        })?;
    }
    write_atomic(&paths[2], &root.to_bytes())?;

    println!("created keys in {}", dir.display());
    println!(
        "  root key     {}  {}",
        root_key.key_id(),
        paths[0].display()
    );
    println!(
        "  release key  {}  {}",
        release_key.key_id(),
        paths[1].display()
    );
    println!("  root         version 1, {}", paths[2].display());
    println!("Keep root.key offline; install root.json on every agent.");
    Ok(())
}

fn list(dir: &Path) -> Result<()> {
    let mut local = Vec::new();
    for (file, role) in [
        (ROOT_KEY_FILE, KeyRole::Root),
        (RELEASE_KEY_FILE, KeyRole::Release),
    ] {
        let path = dir.join(file);
        match load_key(&path, role) {
            Ok(key) => {
                println!("{:<12} {:<8} {}", file, key.role(), key.key_id());
                local.push(key.key_id());
            }
            Err(e) => println!("{file:<12} {e:#}"),
        }
    }

    let now = now_unix();
    // Time 0: show the root even if it has expired, then say so.
    let trusted = load_root(dir, 0)?;
    let root = trusted.root();
    println!();
    println!(
        "{} version {}, {}",
        dir.join(ROOT_FILE).display(),
        root.version,
        expiry(root.expires_unix, now)
    );
    let here = |id| {
        if local.contains(id) {
            "  (key file here)"
        } else {
            ""
        }
    };
    println!("  root keys (threshold {}):", root.root_threshold);
    for id in root.root_keys.keys() {
        println!("    {id}{}", here(id));
    }
    println!("  release keys (threshold {}):", root.release_threshold);
    for (id, key) in &root.release_keys {
        println!("    {id}  {}{}", expiry(key.expires_unix, now), here(id));
    }
    Ok(())
}

/// "expires in N days" / "EXPIRED N days ago", with the Unix time.
fn expiry(expires_unix: u64, now: u64) -> String {
    if expires_unix > now {
        format!(
            "expires in {} days (unix {expires_unix})",
            (expires_unix - now) / DAY_SECS
        )
    } else {
        format!(
            "EXPIRED {} days ago (unix {expires_unix})",
            (now - expires_unix) / DAY_SECS
        )
    }
}

fn create_private_dir(dir: &Path) -> Result<()> {
    let mut builder = std::fs::DirBuilder::new();
    builder.recursive(true);
    #[cfg(unix)]
    std::os::unix::fs::DirBuilderExt::mode(&mut builder, 0o700);
    builder
        .create(dir)
        .with_context(|| format!("creating keys directory {}", dir.display()))
}

/// Temp file + fsync + rename.
fn write_atomic(path: &Path, bytes: &[u8]) -> Result<()> {
    use std::io::Write;
    let tmp = path.with_extension("json.tmp");
    let result = (|| {
        let mut file = std::fs::File::create(&tmp)?;
        file.write_all(bytes)?;
        file.sync_all()?;
        std::fs::rename(&tmp, path)
    })();
    if result.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    result.with_context(|| format!("writing {}", path.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn init_creates_a_verifiable_root_and_refuses_to_overwrite() {
        let dir = tempfile::tempdir().unwrap();
        let keys = dir.path().join("keys");
        init(&keys).unwrap();
        let root_key = load_key(&keys.join(ROOT_KEY_FILE), KeyRole::Root).unwrap();
        let release_key = load_key(&keys.join(RELEASE_KEY_FILE), KeyRole::Release).unwrap();
        let trusted = load_root(&keys, now_unix()).unwrap();
        assert!(trusted.root().root_keys.contains_key(&root_key.key_id()));
        assert!(
            trusted
                .root()
                .release_keys
                .contains_key(&release_key.key_id())
        );

        let err = init(&keys).unwrap_err();
        assert!(err.downcast_ref::<UsageError>().is_some(), "{err:#}");
        list(&keys).unwrap();
    }

    #[test]
    fn wrong_role_key_file_is_a_usage_error() {
        let dir = tempfile::tempdir().unwrap();
        init(dir.path()).unwrap();
        let err = load_key(&dir.path().join(ROOT_KEY_FILE), KeyRole::Release).unwrap_err();
        let usage = err.downcast_ref::<UsageError>().unwrap();
        assert!(usage.0.contains("root key"), "{}", usage.0);
        let err = load_key(&dir.path().join("missing.key"), KeyRole::Release).unwrap_err();
        assert!(err.downcast_ref::<UsageError>().is_some());
    }
}
