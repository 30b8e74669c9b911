//! Check definitions, plugins' rows, and the configuration document each
//! agent receives.
//!
//! Tables `checks`, `plugins` and the `config_version`/`config_sha256`
//! columns of `agents` (server/src/store/schema.sql for SQLite,
//! server/src/backend/postgres/migrations/0009_checks.sql and
//! 0005_agents.sql for PostgreSQL).
//!
//! Rules (the pure functions below state the decisions; both backends run
//! them on the rows as they are when they hold them; the shared suite in
//! `backend/check_tests.rs` checks both):
//! 1. Assignment: a check runs on an agent when the agent's tags (its own
//!    from `Hello` ∪ those assigned on the server, [`effective_tags`])
//!    include every tag of the check's selector; an empty selector selects
//!    every agent ([`selects`]).
//! 2. Versions: each agent has its own document version next to the
//!    SHA-256 of the document's canonical JSON with version 0
//!    ([`config_hash`]). Recomputing bumps the version only when that hash
//!    changed ([`next_version`]), so a change that does not touch an
//!    agent's document leaves its version — and the agent — alone. Versions
//!    only ever grow, by one per stored change, however many nodes compute.
//! 3. Storing a check identical to the stored one changes nothing
//!    ([`PutCheck::Unchanged`]).
//! 4. Plugins: a check naming `plugin:<name>` can only be stored while that
//!    plugin exists, and a plugin can only be deleted while no check names
//!    it; both rules are enforced inside the transaction of the change, so
//!    every computed document lists the plugins its checks use. Repointing
//!    or deleting a plugin reports the file hash no plugin uses any more.

use std::collections::{BTreeSet, HashMap};
use std::future::Future;

use outrider_protocol::api::{CheckInfo, CollectorInfo, PluginInfo};
use outrider_protocol::{AgentConfig, CheckSpec, Fingerprint, PLUGIN_PREFIX, PluginRef};
use sha2::{Digest, Sha256};

use super::{Backend, StoreError, dispatch};

/// Outcome of [`CheckStore::put_check`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum PutCheck {
    /// Stored; documents must be recomputed.
    Changed,
    /// Identical to the stored definition.
    Unchanged,
    /// The command names a plugin the server does not have.
    UnknownPlugin(String),
}

/// Outcome of [`CheckStore::delete_plugin`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum DeletePlugin {
    /// Deleted; `orphaned` is its hash when no other plugin shares the file.
    Deleted {
        orphaned: Option<String>,
    },
    NotFound,
    /// These checks still use it.
    InUse(Vec<String>),
}

/// One agent's computed document.
#[derive(Clone, Debug)]
pub struct ComputedConfig {
    pub fingerprint: Fingerprint,
    pub config: AgentConfig,
    /// Whether the version moved in this computation.
    pub changed: bool,
}

/// What a computation needs of one agent's row.
#[derive(Clone, Debug)]
pub struct AgentDocRow {
    pub fingerprint: String,
    pub hello_tags: Vec<String>,
    pub server_tags: Vec<String>,
    pub allow_adhoc: bool,
    pub config_version: u64,
    pub config_sha256: Option<String>,
}

/// Rule 1: whether a definition with `selector` runs on an agent with
/// (effective) `tags`.
pub fn selects(selector: &[String], tags: &[String]) -> bool {
    selector.iter().all(|t| tags.contains(t))
}

/// Rule 2: the SHA-256 (hex) of a document's canonical JSON.
pub fn config_hash(config: &AgentConfig) -> String {
    // A document of strings, numbers and booleans always serialises.
    hex::encode(Sha256::digest(
        serde_json::to_vec(config).expect("a config document serialises"),
    ))
}

/// Rule 2: the version of a document whose hash is `hash`, given the
/// stored version and hash, and whether it moved.
pub fn next_version(stored_version: u64, stored_hash: Option<&str>, hash: &str) -> (u64, bool) {
    if stored_hash == Some(hash) {
        (stored_version, false)
    } else {
        (stored_version + 1, true)
    }
}

/// The plugin a check's command names (`plugin:<name>`), if any.
pub fn plugin_of(command: &[String]) -> Option<&str> {
    command.first()?.strip_prefix(PLUGIN_PREFIX)
}

/// Sorted, deduplicated tags.
pub fn normalize_tags(tags: &[String]) -> Vec<String> {
    tags.iter()
        .cloned()
        .collect::<BTreeSet<_>>()
        .into_iter()
        .collect()
}

/// The agent's own tags ∪ the server's, sorted.
pub fn effective_tags(hello: &[String], server: &[String]) -> Vec<String> {
    hello
        .iter()
        .chain(server)
        .cloned()
        .collect::<BTreeSet<_>>()
        .into_iter()
        .collect()
}

/// Parses a stored JSON tag array (SQLite); a corrupt value counts as no
/// tags.
pub fn json_tags(text: String) -> Vec<String> {
    serde_json::from_str(&text).unwrap_or_default()
}

/// The document (version 0) for an agent with `tags`: the checks and
/// collectors selecting it (rule 1) and the plugins its checks use.
pub fn document(
    checks: &[CheckInfo],
    plugins: &HashMap<String, PluginRef>,
    collectors: &[CollectorInfo],
    tags: Vec<String>,
    allow_adhoc: bool,
) -> AgentConfig {
    let mut used = BTreeSet::new();
    let mut specs = Vec::new();
    for check in checks.iter().filter(|c| selects(&c.tags, &tags)) {
        if let Some(name) = plugin_of(&check.command) {
            // `put_check`/`delete_plugin` keep every named plugin present.
            let Some(plugin) = plugins.get(name) else {
                tracing::warn!(check = %check.name, plugin = name, "check names a missing plugin; left out");
                continue;
            };
            used.insert(plugin.name.clone());
        }
        specs.push(CheckSpec {
            name: check.name.clone(),
            command: check.command.clone(),
            interval_secs: check.interval_secs,
            timeout_secs: check.timeout_secs,
        });
    }
    // Only a document with collectors changes its JSON (the field is left
    // out when empty), so adding collectors moves no version of an agent
    // they do not select.
    let collectors = super::collectors::selected(collectors, &tags);
    AgentConfig {
        version: 0,
        checks: specs,
        plugins: used.iter().map(|n| plugins[n].clone()).collect(),
        tags,
        allow_adhoc,
        collectors,
    }
}

/// Rules 1 and 2 for one agent's row: its document with its version, and
/// the version and hash to store when it moved.
pub fn compute(
    row: AgentDocRow,
    checks: &[CheckInfo],
    plugins: &HashMap<String, PluginRef>,
    collectors: &[CollectorInfo],
) -> Result<(ComputedConfig, String), StoreError> {
    let tags = effective_tags(&row.hello_tags, &row.server_tags);
    let mut config = document(checks, plugins, collectors, tags, row.allow_adhoc);
    let hash = config_hash(&config);
    let (version, changed) = next_version(row.config_version, row.config_sha256.as_deref(), &hash);
    config.version = version;
    let fingerprint = row.fingerprint.parse().map_err(|_| StoreError::Malformed {
        what: "agent fingerprint",
        value: row.fingerprint.clone(),
    })?;
    Ok((
        ComputedConfig {
            fingerprint,
            config,
            changed,
        },
        hash,
    ))
}

/// Rule 4: the checks (of `checks`) naming plugin `name`.
pub fn plugin_users(checks: &[CheckInfo], name: &str) -> Vec<String> {
    checks
        .iter()
        .filter(|c| plugin_of(&c.command) == Some(name))
        .map(|c| c.name.clone())
        .collect()
}

/// Rule 4: the file hash `old` a plugin pointed at is orphaned when it
/// moved to `new` (`None`: deleted) and no plugin uses it any more.
pub fn orphaned(old: Option<String>, new: Option<&str>, still_used: bool) -> Option<String> {
    match old {
        Some(old) if Some(old.as_str()) != new && !still_used => Some(old),
        _ => None,
    }
}

/// The checks area of the store. Times are Unix milliseconds given by the
/// caller.
pub trait CheckStore {
    /// Every check, by name.
    fn checks(&self) -> impl Future<Output = Result<Vec<CheckInfo>, StoreError>> + Send;

    /// Creates or replaces a check (already validated) at `now_ms` (rules
    /// 3, 4).
    fn put_check(
        &self,
        check: CheckInfo,
        now_ms: i64,
    ) -> impl Future<Output = Result<PutCheck, StoreError>> + Send;

    /// Deletes a check; false when no such check existed.
    fn delete_check(&self, name: &str) -> impl Future<Output = Result<bool, StoreError>> + Send;

    /// Every plugin, by name.
    fn plugins(&self) -> impl Future<Output = Result<Vec<PluginInfo>, StoreError>> + Send;

    /// Points plugin `name` at a stored file at `now_ms`. Returns the row
    /// and the hash of the file it pointed at before, when no plugin uses
    /// that any more (rule 4).
    fn put_plugin(
        &self,
        name: &str,
        sha256: &str,
        size: u64,
        now_ms: i64,
    ) -> impl Future<Output = Result<(PluginInfo, Option<String>), StoreError>> + Send;

    /// Deletes plugin `name` unless a check uses it (rule 4).
    fn delete_plugin(
        &self,
        name: &str,
    ) -> impl Future<Output = Result<DeletePlugin, StoreError>> + Send;

    /// Recomputes the documents of every agent (or of `only`), storing new
    /// versions where a document changed (rules 1, 2).
    fn compute_configs(
        &self,
        only: Option<&Fingerprint>,
    ) -> impl Future<Output = Result<Vec<ComputedConfig>, StoreError>> + Send;
}

impl CheckStore for Backend {
    async fn checks(&self) -> Result<Vec<CheckInfo>, StoreError> {
        dispatch!(self, b => b.checks())
    }

    async fn put_check(&self, check: CheckInfo, now_ms: i64) -> Result<PutCheck, StoreError> {
        dispatch!(self, b => b.put_check(check, now_ms))
    }

    async fn delete_check(&self, name: &str) -> Result<bool, StoreError> {
        dispatch!(self, b => b.delete_check(name))
    }

    async fn plugins(&self) -> Result<Vec<PluginInfo>, StoreError> {
        dispatch!(self, b => b.plugins())
    }

    async fn put_plugin(
        &self,
        name: &str,
        sha256: &str,
        size: u64,
        now_ms: i64,
    ) -> Result<(PluginInfo, Option<String>), StoreError> {
        dispatch!(self, b => b.put_plugin(name, sha256, size, now_ms))
    }

    async fn delete_plugin(&self, name: &str) -> Result<DeletePlugin, StoreError> {
        dispatch!(self, b => b.delete_plugin(name))
    }

    async fn compute_configs(
        &self,
        only: Option<&Fingerprint>,
    ) -> Result<Vec<ComputedConfig>, StoreError> {
        dispatch!(self, b => b.compute_configs(only))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tags(t: &[&str]) -> Vec<String> {
        t.iter().map(|s| (*s).to_owned()).collect()
    }

    #[test]
    fn a_selector_selects_agents_carrying_all_its_tags() {
        let table: [(&[&str], &[&str], bool); 5] = [
            (&[], &[], true),
            (&[], &["web"], true),
            (&["web"], &["db", "web"], true),
            (&["web", "eu"], &["web"], false),
            (&["web"], &[], false),
        ];
        for (selector, agent, want) in table {
            assert_eq!(
                selects(&tags(selector), &tags(agent)),
                want,
                "{selector:?} {agent:?}"
            );
        }
    }

    #[test]
    fn versions_move_by_one_only_when_the_hash_changed() {
        type Row<'a> = (u64, Option<&'a str>, &'a str, (u64, bool));
        let table: [Row; 4] = [
            (0, None, "a", (1, true)),
            (3, Some("a"), "a", (3, false)),
            (3, Some("a"), "b", (4, true)),
            (7, None, "b", (8, true)),
        ];
        for (version, stored, hash, want) in table {
            assert_eq!(
                next_version(version, stored, hash),
                want,
                "{version} {stored:?} {hash}"
            );
        }
    }

    #[test]
    fn effective_tags_are_the_sorted_union() {
        assert_eq!(
            effective_tags(&tags(&["web", "a"]), &tags(&["a", "db"])),
            ["a", "db", "web"]
        );
        assert_eq!(normalize_tags(&tags(&["b", "a", "b"])), ["a", "b"]);
        assert_eq!(json_tags("not json".into()), Vec::<String>::new());
    }

    #[test]
    fn an_orphan_is_a_hash_left_by_its_last_plugin() {
        let old = || Some("x".to_owned());
        type Row<'a> = (Option<String>, Option<&'a str>, bool, Option<&'a str>);
        let table: [Row; 5] = [
            (None, Some("y"), false, None),
            (old(), Some("x"), false, None),
            (old(), Some("y"), false, Some("x")),
            (old(), Some("y"), true, None),
            (old(), None, false, Some("x")),
        ];
        for (o, new, used, want) in table {
            assert_eq!(
                orphaned(o.clone(), new, used).as_deref(),
                want,
                "{o:?} {new:?} {used}"
            );
        }
    }

    #[test]
    fn plugin_users_are_the_checks_naming_it() {
        let check = |name: &str, command: &[&str]| CheckInfo {
            name: name.into(),
            command: tags(command),
            interval_secs: 10,
            timeout_secs: 5,
            tags: Vec::new(),
            alert: None,
        };
        let checks = [
            check("a", &["plugin:foo", "-w"]),
            check("b", &["/bin/foo"]),
            check("c", &["plugin:foobar"]),
            check("d", &["plugin:foo"]),
        ];
        assert_eq!(plugin_users(&checks, "foo"), ["a", "d"]);
        assert_eq!(plugin_of(&tags(&[])), None);
    }
}
