//! `outrider keys`: create, inspect and rotate the offline signing keys and
//! the update root. All signing happens here; private keys never reach the
//! server.
//!
//! A keys directory holds:
//! - `*.key`: 0600 key files of [`outrider_signing::KeyPair`]. Their role is
//!   read from the file, not the name: `init` writes `root.key` (one root key)
//!   or `root-1.key` … `root-N.key`, and `release.key`; later commands write
//!   `root-<shortid>.key` and `release-<shortid>.key` (`<shortid>` = first 8
//!   hex digits of the key id). Retired keys are left in place and flagged
//!   by `keys list`.
//! - `roots/<version>.json`: every root envelope ever signed, versions 1 to
//!   n without gaps: the chain a client walks, uploaded by `publish-root`.
//! - `root.json`: always a copy of the newest, `roots/<n>.json`.
//!
//! A new root is written as `roots/<n+1>.json` and then `root.json`; loading
//! verifies the whole chain and repairs a `root.json` left one version behind
//! by an interruption between the two.

mod chain;

use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};
use clap::Subcommand;
use outrider_signing::{KeyId, KeyPair, KeyRole, RootBuilder, TrustedRoot, now_unix};

use self::chain::{
    create_private_dir, key_file_name, key_paths, load_chain, local_keys, sign_next_root,
    write_key, write_root,
};
use crate::client::{ApiClient, outrider_home};
use crate::{GlobalArgs, UsageError};

/// File name of the root key of a single-root-key directory.
pub const ROOT_KEY_FILE: &str = "root.key";
/// File name of the release key written by `keys init`.
pub const RELEASE_KEY_FILE: &str = "release.key";
/// File name of the newest root envelope in a keys directory.
pub const ROOT_FILE: &str = "root.json";
/// Subdirectory holding every root version as `<version>.json`.
pub const ROOTS_DIR: &str = "roots";

const DAY_SECS: u64 = 86_400;
/// How long a new release key may sign manifests by default, in days.
const DEFAULT_RELEASE_KEY_DAYS: u64 = 365;
/// How long a newly signed root is valid.
const ROOT_LIFETIME_SECS: u64 = 5 * 365 * DAY_SECS;
/// Most root keys `init` or one `rotate-root` creates.
const MAX_NEW_ROOT_KEYS: u32 = 32;
/// Length of the key id prefix in file names.
const SHORT_ID_LEN: usize = 8;

/// Arguments of `outrider keys`.
#[derive(Debug, clap::Args)]
pub struct KeysArgs {
    #[command(subcommand)]
    command: KeysCommand,
}

/// The keys directory option shared by every subcommand.
#[derive(Debug, clap::Args)]
struct DirArg {
    /// Directory of the keys [default: $OUTRIDER_HOME/keys].
    #[arg(long)]
    dir: Option<PathBuf>,
}

impl DirArg {
    fn path(self) -> PathBuf {
        self.dir.unwrap_or_else(default_keys_dir)
    }
}

#[derive(Debug, Subcommand)]
enum KeysCommand {
    /// Create root keys, a release key and a self-signed root.json (version 1).
    Init {
        #[command(flatten)]
        dir: DirArg,
        /// Number of root keys to create.
        #[arg(long, default_value_t = 1)]
        root_keys: u32,
        /// How many root keys must sign each new root.
        #[arg(long, default_value_t = 1)]
        threshold: u32,
        /// How many release keys must sign each manifest (that many are created).
        #[arg(long, default_value_t = 1)]
        release_threshold: u32,
    },
    /// Show the key files and what root.json trusts.
    List {
        #[command(flatten)]
        dir: DirArg,
    },
    /// Create a release key and a new root version that trusts it.
    AddReleaseKey {
        #[command(flatten)]
        dir: DirArg,
        /// Days until the new key's signatures stop counting.
        #[arg(long, default_value_t = DEFAULT_RELEASE_KEY_DAYS)]
        expires_days: u64,
        /// New release threshold [default: unchanged].
        #[arg(long)]
        release_threshold: Option<u32>,
    },
    /// Sign a new root version without a release key; clients that fetch it
    /// stop counting that key's signatures.
    RevokeReleaseKey {
        #[command(flatten)]
        dir: DirArg,
        /// Id of the release key (a unique prefix is enough).
        keyid: String,
        /// New release threshold [default: unchanged].
        #[arg(long)]
        release_threshold: Option<u32>,
    },
    /// Change the root keys: a new root version signed by a threshold of the
    /// old root keys and of the new ones.
    RotateRoot {
        #[command(flatten)]
        dir: DirArg,
        /// Number of new root keys to create.
        #[arg(long, default_value_t = 0)]
        add: u32,
        /// Ids of root keys to stop trusting (a unique prefix is enough).
        #[arg(long, num_args = 1..)]
        remove: Vec<String>,
        /// New root threshold [default: unchanged].
        #[arg(long)]
        threshold: Option<u32>,
    },
    /// Upload every root version the server lacks, oldest first.
    PublishRoot {
        #[command(flatten)]
        dir: DirArg,
    },
}

/// Runs `outrider keys ...`. Only `publish-root` talks to the server.
pub fn run(args: KeysArgs, global: &GlobalArgs) -> Result<()> {
    match args.command {
        KeysCommand::Init {
            dir,
            root_keys,
            threshold,
            release_threshold,
        } => init(
            &dir.path(),
            &InitOptions {
                root_keys,
                threshold,
                release_threshold,
            },
        ),
        KeysCommand::List { dir } => list(&dir.path()),
        KeysCommand::AddReleaseKey {
            dir,
            expires_days,
            release_threshold,
        } => add_release_key(&dir.path(), expires_days, release_threshold).map(drop),
        KeysCommand::RevokeReleaseKey {
            dir,
            keyid,
            release_threshold,
        } => revoke_release_key(&dir.path(), &keyid, release_threshold),
        KeysCommand::RotateRoot {
            dir,
            add,
            remove,
            threshold,
        } => rotate_root(&dir.path(), add, &remove, threshold),
        KeysCommand::PublishRoot { dir } => {
            let client = ApiClient::from_args(global)?;
            publish_root(&dir.path(), &client)
        }
    }
}

/// `$OUTRIDER_HOME/keys`.
pub fn default_keys_dir() -> PathBuf {
    outrider_home().join("keys")
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

/// Options of `keys init`.
#[derive(Debug)]
struct InitOptions {
    root_keys: u32,
    threshold: u32,
    release_threshold: u32,
}

fn init(dir: &Path, opts: &InitOptions) -> Result<()> {
    if !(1..=MAX_NEW_ROOT_KEYS).contains(&opts.root_keys) {
        bail!(UsageError(format!(
            "--root-keys must be between 1 and {MAX_NEW_ROOT_KEYS}"
        )));
    }
    if !(1..=opts.root_keys).contains(&opts.threshold) {
        bail!(UsageError(format!(
            "--threshold must be between 1 and the number of root keys ({})",
            opts.root_keys
        )));
    }
    if !(1..=MAX_NEW_ROOT_KEYS).contains(&opts.release_threshold) {
        bail!(UsageError(format!(
            "--release-threshold must be between 1 and {MAX_NEW_ROOT_KEYS}"
        )));
    }
    if dir.join(ROOT_FILE).symlink_metadata().is_ok() || !key_paths(dir)?.is_empty() {
        bail!(UsageError(format!(
            "{} already holds keys or a root.json; refusing to overwrite them (pass --dir for a new directory)",
            dir.display()
        )));
    }
    create_private_dir(dir)?;

    let mut files = Vec::new();
    for i in 1..=opts.root_keys {
        let name = if opts.root_keys == 1 {
            ROOT_KEY_FILE.to_owned()
        } else {
            format!("root-{i}.key")
        };
        files.push((name, KeyPair::generate(KeyRole::Root)?));
    }
    for i in 0..opts.release_threshold {
        let key = KeyPair::generate(KeyRole::Release)?;
        let name = if i == 0 {
            RELEASE_KEY_FILE.to_owned()
        } else {
            key_file_name(&key)
        };
        files.push((name, key));
    }
    let now = now_unix();
    let roots: Vec<&KeyPair> = files
        .iter()
        .map(|(_, k)| k)
        .filter(|k| k.role() == KeyRole::Root)
        .collect();
    let mut builder = RootBuilder::new(1, now + ROOT_LIFETIME_SECS)
        .root_threshold(opts.threshold)
        .release_threshold(opts.release_threshold);
    for (_, key) in &files {
        builder = match key.role() {
            KeyRole::Root => builder.add_root_key(key)?,
            KeyRole::Release => {
                builder.add_release_key(key, now + DEFAULT_RELEASE_KEY_DAYS * DAY_SECS)?
            }
        };
    }
    let envelope = builder.sign(&roots)?.to_bytes();
    // The freshly signed root must verify as a trust anchor before anything is written.
    TrustedRoot::from_bytes_self_signed(&envelope, now).context("verifying the new root")?;

    for (name, key) in &files {
        write_key(key, &dir.join(name))?;
    }
    write_root(dir, 1, &envelope)?;

    println!("created keys in {}", dir.display());
    for (name, key) in &files {
        println!("  {:<8} {}  {name}", key.role().to_string(), key.key_id());
    }
    println!(
        "  root     version 1 (root threshold {}, release threshold {}), {}",
        opts.threshold,
        opts.release_threshold,
        dir.join(ROOT_FILE).display()
    );
    println!("Keep the root keys offline. Agents pin this root when they install:");
    println!(
        "  curl -sSf https://SERVER/install.sh | sh -s -- --token TOKEN --root-sha256 {}",
        outrider_signing::sha256(&envelope)
    );
    Ok(())
}

/// `keys add-release-key`; returns the new key's id.
fn add_release_key(dir: &Path, expires_days: u64, release_threshold: Option<u32>) -> Result<KeyId> {
    if expires_days == 0 {
        bail!(UsageError("--expires-days must be at least 1".to_owned()));
    }
    let chain = load_chain(dir)?;
    let now = now_unix();
    let key = KeyPair::generate(KeyRole::Release)?;
    let expires = now.saturating_add(expires_days.saturating_mul(DAY_SECS));
    let mut builder = RootBuilder::successor_of(chain.newest.root(), now + ROOT_LIFETIME_SECS)
        .add_release_key(&key, expires)?;
    if let Some(k) = release_threshold {
        builder = builder.release_threshold(k);
    }
    check_release_threshold(&builder)?;
    let next = sign_next_root(dir, &chain, builder, std::slice::from_ref(&key))?;
    println!(
        "added release key {}  {} (expires in {expires_days} days)",
        key.key_id(),
        key_file_name(&key)
    );
    print_new_root(dir, &next);
    Ok(key.key_id())
}

fn revoke_release_key(dir: &Path, keyid: &str, release_threshold: Option<u32>) -> Result<()> {
    let chain = load_chain(dir)?;
    let root = chain.newest.root();
    let id = resolve_key_id(keyid, root.release_keys.keys(), "release")?;
    if root.release_keys.len() == 1 {
        bail!(UsageError(format!(
            "{id} is the only release key of root version {}; add another with `outrider keys add-release-key` before revoking it",
            root.version
        )));
    }
    let mut builder =
        RootBuilder::successor_of(root, now_unix() + ROOT_LIFETIME_SECS).remove_release_key(&id);
    if let Some(k) = release_threshold {
        builder = builder.release_threshold(k);
    }
    check_release_threshold(&builder)?;
    let next = sign_next_root(dir, &chain, builder, &[])?;
    println!("revoked release key {id}");
    print_new_root(dir, &next);
    Ok(())
}

fn rotate_root(dir: &Path, add: u32, remove: &[String], threshold: Option<u32>) -> Result<()> {
    if add > MAX_NEW_ROOT_KEYS {
        bail!(UsageError(format!(
            "--add must be at most {MAX_NEW_ROOT_KEYS}"
        )));
    }
    if add == 0 && remove.is_empty() && threshold.is_none() {
        bail!(UsageError(
            "nothing to rotate: pass --add N, --remove KEYID or --threshold K".to_owned()
        ));
    }
    let chain = load_chain(dir)?;
    let root = chain.newest.root();
    let mut builder = RootBuilder::successor_of(root, now_unix() + ROOT_LIFETIME_SECS);
    for prefix in remove {
        builder = builder.remove_root_key(&resolve_key_id(prefix, root.root_keys.keys(), "root")?);
    }
    let new_keys = (0..add)
        .map(|_| KeyPair::generate(KeyRole::Root))
        .collect::<Result<Vec<_>, _>>()?;
    for key in &new_keys {
        builder = builder.add_root_key(key)?;
    }
    if let Some(k) = threshold {
        builder = builder.root_threshold(k);
    }
    let keys = builder.root().root_keys.len();
    let k = builder.root().root_threshold;
    if keys == 0 {
        bail!(UsageError(
            "the new root would have no root keys; add one with --add".to_owned()
        ));
    }
    if k == 0 || k as usize > keys {
        bail!(UsageError(format!(
            "root threshold {k} is impossible with {keys} root key(s); pass --threshold between 1 and {keys}"
        )));
    }
    let next = sign_next_root(dir, &chain, builder, &new_keys)?;
    for key in &new_keys {
        println!("added root key {}  {}", key.key_id(), key_file_name(key));
    }
    print_new_root(dir, &next);
    Ok(())
}

/// The release threshold must stay reachable with the remaining keys.
fn check_release_threshold(builder: &RootBuilder) -> Result<()> {
    let keys = builder.root().release_keys.len();
    let k = builder.root().release_threshold;
    if k == 0 || k as usize > keys {
        bail!(UsageError(format!(
            "release threshold {k} is impossible with {keys} release key(s); pass --release-threshold between 1 and {keys}"
        )));
    }
    Ok(())
}

fn print_new_root(dir: &Path, root: &TrustedRoot) {
    let r = root.root();
    println!(
        "signed root version {} (root keys {}-of-{}, release keys {}-of-{}), {}",
        r.version,
        r.root_threshold,
        r.root_keys.len(),
        r.release_threshold,
        r.release_keys.len(),
        dir.join(ROOT_FILE).display()
    );
    println!("Upload it with `outrider keys publish-root`.");
    println!(
        "New installs pin it with --root-sha256 {}; installed agents follow the signed chain.",
        outrider_signing::sha256(root.envelope_bytes())
    );
}

/// The one id among `ids` that starts with `prefix`, or a [`UsageError`].
fn resolve_key_id<'a>(
    prefix: &str,
    ids: impl Iterator<Item = &'a KeyId>,
    role: &str,
) -> Result<KeyId> {
    let prefix = prefix.trim().to_ascii_lowercase();
    let matches: Vec<&KeyId> = ids
        .filter(|id| !prefix.is_empty() && id.as_str().starts_with(&prefix))
        .collect();
    match matches[..] {
        [one] => Ok(one.clone()),
        [] => bail!(UsageError(format!(
            "no {role} key of root.json has an id starting with {prefix:?}; see `outrider keys list`"
        ))),
        _ => bail!(UsageError(format!(
            "{} {role} keys have ids starting with {prefix:?}; give more digits",
            matches.len()
        ))),
    }
}

/// `keys publish-root`: uploads every root version of `dir` the server
/// lacks, oldest first (the server accepts only the successor of its current
/// root, so a root several versions ahead needs every version in between).
/// Fails with a [`UsageError`] when the server's root is not part of this
/// directory's chain.
pub fn publish_root(dir: &Path, client: &ApiClient) -> Result<()> {
    let chain = load_chain(dir)?;
    let newest = chain.newest.root().version;
    let on_server = client
        .get_bytes_opt("/v1/updates/root.json")
        .context("fetching the server's root")?;
    let from = match on_server {
        None => 1,
        Some(bytes) => {
            let server = TrustedRoot::from_bytes_self_signed(&bytes, 0)
                .context("the server's root.json is not a valid root")?;
            let version = server.root().version;
            if chain.envelope(version) != Some(&bytes[..]) {
                bail!(UsageError(if version > newest {
                    format!(
                        "the server has root version {version}, newer than this directory's {newest}; use the keys directory that signed it"
                    )
                } else {
                    format!(
                        "the server's root version {version} differs from {}; it was signed from another keys directory",
                        dir.join(ROOTS_DIR)
                            .join(format!("{version}.json"))
                            .display()
                    )
                }));
            }
            version + 1
        }
    };
    if from > newest {
        println!("the server already has root version {newest}");
        return Ok(());
    }
    // The server accepts only the successor of its current root, so the
    // versions go up one at a time, oldest first.
    for version in from..=newest {
        let bytes = chain
            .envelope(version)
            .expect("the chain holds every version up to the newest");
        client
            .put_bytes("/api/v1/releases/root", bytes)
            .with_context(|| format!("uploading root version {version}"))?;
        println!("uploaded root version {version}");
    }
    Ok(())
}

fn list(dir: &Path) -> Result<()> {
    let (local, problems) = local_keys(dir)?;
    let chain = load_chain(dir)?;
    let root = chain.newest.root();
    let now = now_unix();
    println!("key files in {}:", dir.display());
    for l in &local {
        let id = l.key.key_id();
        let trusted = match l.key.role() {
            KeyRole::Root => root.root_keys.contains_key(&id),
            KeyRole::Release => root.release_keys.contains_key(&id),
        };
        let note = if trusted {
            ""
        } else {
            "  NOT TRUSTED by root.json (retired or revoked)"
        };
        println!(
            "  {:<22} {:<8} {id}{note}",
            l.file,
            l.key.role().to_string()
        );
    }
    for problem in &problems {
        println!("  {problem}");
    }
    let file_of = |id: &KeyId, role: KeyRole| {
        local
            .iter()
            .find(|l| l.key.role() == role && l.key.key_id() == *id)
            .map_or_else(
                || "  MISSING: no key file here".to_owned(),
                |l| format!("  ({})", l.file),
            )
    };
    println!();
    println!(
        "{}: version {} (versions 1 to {} in {}/), {}",
        dir.join(ROOT_FILE).display(),
        root.version,
        chain.envelopes.len(),
        ROOTS_DIR,
        expiry(root.expires_unix, now)
    );
    println!(
        "  root keys ({} of {} must sign):",
        root.root_threshold,
        root.root_keys.len()
    );
    for id in root.root_keys.keys() {
        println!("    {id}{}", file_of(id, KeyRole::Root));
    }
    println!(
        "  release keys ({} of {} must sign):",
        root.release_threshold,
        root.release_keys.len()
    );
    for (id, key) in &root.release_keys {
        println!(
            "    {id}  {}{}",
            expiry(key.expires_unix, now),
            file_of(id, KeyRole::Release)
        );
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

#[cfg(test)]
mod tests;
