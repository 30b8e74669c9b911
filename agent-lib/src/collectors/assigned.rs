//! The collectors the server assigned: which of them this host lets run,
//! the last set kept on disk, and the task that hands them to the
//! [`Supervisor`].
//!
//! - The server's set arrives in `AgentConfig::collectors`, and only in
//!   sessions where both sides announced the `collectors` capability; the
//!   session hands it over through a `watch` channel ([`Assignments`]), so
//!   a reconcile that waits for a collector's kill grace never stalls the
//!   session loop, and only the newest set is ever pending (bounded).
//! - Each set is judged by [`admit`] (pure, tested by table): a definition
//!   this build cannot parse, one [`CollectorSpec::from_wire`] refuses, and
//!   one with a raw collectd fragment on a host whose `[policy]` does not
//!   allow those, does not run; each refused one with a valid name is
//!   reported CRITICAL as `outrider.collector.<name>`, naming the reason.
//! - The last set received is written to `<data_dir>/collectors/assigned.json`
//!   (temp file, fsync, rename) before it is applied, and read at start, so
//!   an agent restarted while the server is unreachable (or connected to a
//!   server without collectors) keeps running its collectors. The raw set
//!   is kept, not the admitted one: a host whose policy changes judges it
//!   again at its next start.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use outrider_protocol::{CheckState, CollectorEntry, CollectorSpecWire};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use super::{
    COLLECTOR_CHECK_PREFIX, COLLECTORS_DIR, CollectorName, CollectorSpec, Report, Supervisor,
};
use crate::config::policy::LocalPolicy;
use crate::error::AgentError;
use crate::host::HostHooks;
use crate::runner::RunOutcome;

/// The file holding the last set received, inside the collectors' directory.
pub const ASSIGNED_FILE: &str = "assigned.json";

/// The session's side of the hand-over: the newest set replaces any set
/// not yet applied.
pub type Assignments = watch::Sender<Option<Arc<Vec<CollectorEntry>>>>;

/// A definition that does not run on this host, and why.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Refused {
    /// Its name, when it has a valid one (then the refusal is reported
    /// under `outrider.collector.<name>`; otherwise only logged).
    pub name: Option<CollectorName>,
    /// The summary of the CRITICAL result.
    pub reason: String,
}

impl Refused {
    /// The check the refusal is reported under, if the name is valid.
    pub fn check_name(&self) -> Option<String> {
        self.name.as_ref().map(CollectorName::check_name)
    }
}

/// What [`admit`] decided about a set.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Admitted {
    /// The definitions that run, in the server's order.
    pub specs: Vec<CollectorSpec>,
    pub refused: Vec<Refused>,
}

/// Which definitions of `entries` may run under `policy`; see the module docs.
pub fn admit(entries: &[CollectorEntry], policy: &LocalPolicy) -> Admitted {
    let mut admitted = Admitted::default();
    for entry in entries {
        let name = entry.name().and_then(|n| CollectorName::new(n).ok());
        let wire = match entry {
            CollectorEntry::Known(wire) => wire.clone(),
            CollectorEntry::Unparsed(value) => {
                // Parsing again gives serde's message naming the field.
                let reason = match serde_json::from_value::<CollectorSpecWire>(value.clone()) {
                    Err(e) => format!("this agent cannot use the definition: {e}"),
                    Ok(_) => "this agent cannot use the definition".to_owned(),
                };
                admitted.refused.push(Refused { name, reason });
                continue;
            }
        };
        if wire.raw_config.is_some()
            && let Err(refusal) = policy.check_raw_collector_config()
        {
            admitted.refused.push(Refused {
                name,
                reason: refusal.summary(),
            });
            continue;
        }
        match CollectorSpec::from_wire(wire) {
            Ok(spec) => admitted.specs.push(spec),
            Err(e) => admitted.refused.push(Refused {
                name,
                reason: format!("invalid definition: {e}"),
            }),
        }
    }
    admitted
}

/// `<data_dir>/collectors/assigned.json`.
pub fn assigned_path(data_dir: &Path) -> PathBuf {
    data_dir.join(COLLECTORS_DIR).join(ASSIGNED_FILE)
}

/// The last set received, `None` when none was ever saved. Fails, naming
/// the file, when it cannot be read or parsed (the caller logs it and
/// starts with no collectors until the server sends its set).
pub fn load(data_dir: &Path) -> Result<Option<Vec<CollectorEntry>>, AgentError> {
    let path = assigned_path(data_dir);
    let bytes = match std::fs::read(&path) {
        Ok(b) => b,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => {
            return Err(AgentError::AssignedCollectors {
                path,
                reason: format!("cannot be read: {e}"),
            });
        }
    };
    serde_json::from_slice(&bytes)
        .map(Some)
        .map_err(|e| AgentError::AssignedCollectors {
            path,
            reason: format!("is not a JSON list of collector definitions: {e}"),
        })
}

/// Writes the set to [`assigned_path`] (temp file, fsync, rename).
pub fn save(data_dir: &Path, entries: &[CollectorEntry]) -> Result<(), AgentError> {
    let path = assigned_path(data_dir);
    let write = || -> std::io::Result<()> {
        std::fs::create_dir_all(path.parent().unwrap_or(data_dir))?;
        // Plain data with string keys: serialising cannot fail.
        let bytes = serde_json::to_vec(entries).expect("collector definitions serialise");
        crate::connection::saved::write_atomically(&path, &bytes)
    };
    write().map_err(|e| AgentError::AssignedCollectors {
        path: path.clone(),
        reason: format!("cannot be written: {e}"),
    })
}

/// What [`follow`] needs besides the supervisor.
pub struct Follow {
    pub data_dir: PathBuf,
    pub policy: LocalPolicy,
    pub report: Arc<dyn Report>,
    pub hooks: Arc<dyn HostHooks>,
    pub stop: CancellationToken,
}

impl std::fmt::Debug for Follow {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Follow")
            .field("data_dir", &self.data_dir)
            .finish_non_exhaustive()
    }
}

/// Applies the saved set, then every set the session hands over, until
/// `stop` (or the session side is gone); returns the supervisor for its
/// shutdown.
pub async fn follow(
    mut supervisor: Supervisor,
    mut updates: watch::Receiver<Option<Arc<Vec<CollectorEntry>>>>,
    ctx: Follow,
) -> Supervisor {
    let dir = ctx.data_dir.clone();
    let saved = tokio::task::spawn_blocking(move || load(&dir)).await;
    let mut applied: Option<Vec<CollectorEntry>> = None;
    match saved {
        Ok(Ok(Some(set))) => {
            ctx.hooks.info(&format!(
                "running the {} collectors last assigned by the server until it sends its set",
                set.len()
            ));
            apply(&mut supervisor, &set, &ctx).await;
            applied = Some(set);
        }
        Ok(Ok(None)) => {}
        Ok(Err(e)) => ctx.hooks.warn(&format!(
            "{e}; no collectors run until the server sends its set"
        )),
        Err(e) => ctx
            .hooks
            .warn(&format!("reading the assigned collectors failed: {e}")),
    }
    loop {
        tokio::select! {
            biased;
            () = ctx.stop.cancelled() => break,
            changed = updates.changed() => {
                if changed.is_err() {
                    break;
                }
                let Some(set) = updates.borrow_and_update().clone() else { continue };
                if applied.as_deref() == Some(set.as_slice()) {
                    continue;
                }
                let dir = ctx.data_dir.clone();
                let to_save = set.clone();
                match tokio::task::spawn_blocking(move || save(&dir, &to_save)).await {
                    Ok(Ok(())) => {}
                    Ok(Err(e)) => ctx.hooks.warn(&format!(
                        "{e}; the collectors run, but a restart without the server would not \
                         run them"
                    )),
                    Err(e) => ctx.hooks.warn(&format!("saving the assigned collectors failed: {e}")),
                }
                apply(&mut supervisor, &set, &ctx).await;
                applied = Some(set.to_vec());
            }
        }
    }
    supervisor
}

async fn apply(supervisor: &mut Supervisor, set: &[CollectorEntry], ctx: &Follow) {
    let admitted = admit(set, &ctx.policy);
    for refused in &admitted.refused {
        match refused.check_name() {
            Some(check) => {
                ctx.hooks.warn(&format!("{check}: {}", refused.reason));
                ctx.report.report(
                    &check,
                    RunOutcome::note(CheckState::Critical, refused.reason.clone()),
                );
            }
            None => ctx.hooks.warn(&format!(
                "a collector definition without a valid name ({COLLECTOR_CHECK_PREFIX}…) is \
                 refused: {}",
                refused.reason
            )),
        }
    }
    let summary = supervisor.reconcile(admitted.specs).await;
    ctx.hooks.info(&format!(
        "collectors: started {:?}, updated {:?}, stopped {:?}, unchanged {}, refused {}",
        summary.started,
        summary.updated,
        summary.stopped,
        summary.unchanged.len(),
        admitted.refused.len()
    ));
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::policy::PolicyToml;

    fn entries(json: &str) -> Vec<CollectorEntry> {
        serde_json::from_str(json).unwrap()
    }

    fn policy(allow_raw: bool) -> LocalPolicy {
        LocalPolicy::from_toml(&PolicyToml {
            allow_raw_collector_config: allow_raw,
            ..PolicyToml::default()
        })
        .unwrap()
    }

    #[test]
    fn definitions_are_admitted_by_table() {
        const RAW: &str = r#"{"name":"sys","kind":"collectd","raw_config":"LoadPlugin exec\n"}"#;
        const TYPED: &str = r#"{"name":"typed","kind":"collectd","plugins":[{"plugin":"cpu"}]}"#;
        const CMD: &str = r#"{"name":"app","kind":"command","argv":["/usr/bin/app"]}"#;
        const NEWER: &str = r#"{"name":"new","kind":"command","argv":["/x"],"run_as":"nobody"}"#;
        const BAD: &str = r#"{"name":"bad","kind":"command","argv":["/x"],"interval_secs":0}"#;
        const NAMELESS: &str = r#"{"name":"Bad Name","kind":"command","argv":["/x"]}"#;
        // (set, host allows raw fragments, names that run, refused: name and a piece of the reason)
        type Row<'a> = (
            &'a [&'a str],
            bool,
            &'a [&'a str],
            &'a [(Option<&'a str>, &'a str)],
        );
        let table: [Row; 7] = [
            (
                &[RAW],
                false,
                &[],
                &[(Some("sys"), "allow_raw_collector_config = false")],
            ),
            (&[RAW], true, &["sys"], &[]),
            (&[TYPED, CMD], false, &["typed", "app"], &[]),
            (
                &[RAW, CMD],
                false,
                &["app"],
                &[(Some("sys"), "refused by local policy")],
            ),
            (&[NEWER, CMD], false, &["app"], &[(Some("new"), "run_as")]),
            (&[BAD], true, &[], &[(Some("bad"), "interval_secs")]),
            (&[NAMELESS], true, &[], &[(None, "name")]),
        ];
        for (set, allow, runs, refused) in table {
            let json = format!("[{}]", set.join(","));
            let got = admit(&entries(&json), &policy(allow));
            let names: Vec<_> = got.specs.iter().map(|s| s.name().as_str()).collect();
            assert_eq!(names, runs, "{json} allow={allow}");
            assert_eq!(
                got.refused.len(),
                refused.len(),
                "{json}: {:?}",
                got.refused
            );
            for (r, (name, reason)) in got.refused.iter().zip(refused) {
                assert_eq!(r.name.as_ref().map(CollectorName::as_str), *name, "{json}");
                assert!(
                    r.reason.contains(reason),
                    "{json}: {:?} lacks {reason:?}",
                    r.reason
                );
            }
        }
        let refused = &admit(&entries(&format!("[{RAW}]")), &policy(false)).refused[0];
        assert_eq!(
            refused.check_name().as_deref(),
            Some("outrider.collector.sys")
        );
    }

    #[test]
    fn the_last_set_survives_on_disk() {
        let dir = tempfile::tempdir().unwrap();
        assert_eq!(load(dir.path()).unwrap(), None);
        let set = entries(
            r#"[{"name":"app","kind":"command","argv":["/usr/bin/app"]},
                {"name":"new","kind":"future"}]"#,
        );
        save(dir.path(), &set).unwrap();
        assert_eq!(load(dir.path()).unwrap(), Some(set));
        save(dir.path(), &[]).unwrap();
        assert_eq!(load(dir.path()).unwrap(), Some(vec![]));
        std::fs::write(assigned_path(dir.path()), b"{not json").unwrap();
        let e = load(dir.path()).unwrap_err().to_string();
        assert!(e.contains(ASSIGNED_FILE), "{e}");
    }
}
