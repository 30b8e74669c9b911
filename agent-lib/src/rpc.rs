//! Remote procedure calls: "run check X now" and "run this ad-hoc script".
//!
//! Invariants:
//! - Runs are concurrent with the session loop and bounded: at most
//!   [`MAX_RPC_RUNS`] at once; beyond that the request is answered at once
//!   with a "busy" error. Every run is a task of one `JoinSet`, joined by
//!   [`Rpc::shutdown`], which first cancels them (killing the plugin's
//!   process group through the runner).
//! - A run never touches the scheduler: it goes through the scheduler's
//!   shared [`Executor`] (same plugin table, built-ins and process limit),
//!   so the check's schedule does not move, and the result is answered with
//!   `seq` 0 — never spooled.
//! - Every request gets exactly one `RpcResult` with its correlation id:
//!   the outcome, or an error naming why the run could not start. Answers
//!   that finish while the agent is disconnected wait in the `JoinSet` and
//!   go out on the next session (the server keeps the RPC open).
//! - Ad-hoc scripts run only when the host's agent.toml allows them
//!   (`[policy] allow_adhoc`, see [`crate::config::policy`]; refused first, with
//!   "refused by local policy: …") *and* the current config has
//!   `allow_adhoc`. A configured check run now goes through the executor,
//!   so the host's `allowed_commands` applies to it as to scheduled runs. The
//!   script is written to `<data_dir>/rpc/adhoc-<random>.<ext>` with mode
//!   0700, run through the runner's interpreter table by that extension,
//!   and removed when the run ends, however it ends; scripts a crash left
//!   behind are removed when the next [`Rpc`] is created. The script is not
//!   fsynced: it only has to outlive the run, and an fsync would stall the
//!   session loop that starts the run.

use std::collections::HashMap;
use std::fs::{self, OpenOptions};
use std::io::Write;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use outrider_protocol::{AgentConfig, AgentMessage, CheckSpec, MAX_SCRIPT_BYTES};
use tokio::task::{Id, JoinSet};
use tokio_util::sync::CancellationToken;

use crate::executor::Executor;
use crate::runner::interpreter::{Platform, script_command};
use crate::runner::{RunLimits, RunOutcome, run_plugin};

/// Most remote runs in flight at once.
pub const MAX_RPC_RUNS: usize = 4;
/// Directory (in the data dir) of ad-hoc scripts while they run.
pub const RPC_DIR: &str = "rpc";
/// Check name reported for an ad-hoc script's result.
pub const ADHOC_CHECK: &str = "adhoc";
/// Longest timeout a remote run may ask for (same as a check's).
pub const MAX_RPC_TIMEOUT_SECS: u32 = 3_600;
/// File name prefix of ad-hoc scripts under [`RPC_DIR`].
const SCRIPT_PREFIX: &str = "adhoc-";
/// Interpreter of an ad-hoc script that names none.
pub const DEFAULT_INTERPRETER: &str = "sh";

/// A remote run request, taken from a `ServerMessage`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum RpcRequest {
    /// Run configured check `check` once.
    RunCheck { id: String, check: String },
    /// Run `script` once through the interpreter for `interpreter`.
    RunScript {
        id: String,
        script: String,
        interpreter: Option<String>,
        timeout_secs: u32,
    },
}

impl RpcRequest {
    /// The correlation id.
    pub fn id(&self) -> &str {
        match self {
            RpcRequest::RunCheck { id, .. } | RpcRequest::RunScript { id, .. } => id,
        }
    }

    /// One line for the log (never the script itself).
    pub fn describe(&self) -> String {
        match self {
            RpcRequest::RunCheck { id, check } => format!("remote run {id}: check {check:?}"),
            RpcRequest::RunScript {
                id,
                script,
                interpreter,
                timeout_secs,
            } => format!(
                "remote run {id}: ad-hoc {} script of {} bytes, timeout {timeout_secs}s",
                interpreter.as_deref().unwrap_or(DEFAULT_INTERPRETER),
                script.len()
            ),
        }
    }
}

/// The remote runs of one agent generation.
#[derive(Debug)]
pub struct Rpc {
    tasks: JoinSet<AgentMessage>,
    /// Correlation id of each task, to answer even if a task panics.
    ids: HashMap<Id, String>,
    scripts_dir: PathBuf,
    cancel: CancellationToken,
}

impl Rpc {
    /// Remote runs writing scripts under `data_dir`; all are cancelled when
    /// `cancel` fires.
    /// Removes the scripts an earlier generation left (a crash mid-run).
    pub fn new(data_dir: &Path, cancel: CancellationToken) -> Rpc {
        let scripts_dir = data_dir.join(RPC_DIR);
        if let Ok(entries) = fs::read_dir(&scripts_dir) {
            for entry in entries.flatten() {
                if entry
                    .file_name()
                    .to_string_lossy()
                    .starts_with(SCRIPT_PREFIX)
                {
                    let _ = fs::remove_file(entry.path());
                }
            }
        }
        Rpc {
            tasks: JoinSet::new(),
            ids: HashMap::new(),
            scripts_dir,
            cancel,
        }
    }

    /// Starts `request` against the running `config`, running checks
    /// through `executor`. Fails with the error to answer at once when the
    /// run cannot start (busy, unknown check, ad-hoc not allowed, bad
    /// script…).
    pub fn start(
        &mut self,
        request: RpcRequest,
        config: Option<&AgentConfig>,
        executor: &Arc<Executor>,
    ) -> Result<(), String> {
        let id = request.id().to_owned();
        if self.tasks.len() >= MAX_RPC_RUNS {
            return Err(format!(
                "busy: {MAX_RPC_RUNS} remote runs are already in progress; try again later"
            ));
        }
        let cancel = self.cancel.child_token();
        let handle = match request {
            RpcRequest::RunCheck { check, .. } => {
                let spec = find_check(config, &check)?;
                let executor = executor.clone();
                let id = id.clone();
                self.tasks.spawn(async move {
                    let outcome = executor.run(&spec, &cancel).await;
                    answer(id, &spec.name, outcome)
                })
            }
            RpcRequest::RunScript {
                script,
                interpreter,
                timeout_secs,
                ..
            } => {
                executor
                    .policy()
                    .check_adhoc()
                    .map_err(|refusal| refusal.summary())?;
                if !config.is_some_and(|c| c.allow_adhoc) {
                    return Err("ad-hoc scripts are not allowed for this agent".into());
                }
                if !(1..=MAX_RPC_TIMEOUT_SECS).contains(&timeout_secs) {
                    return Err(format!(
                        "timeout_secs must be between 1 and {MAX_RPC_TIMEOUT_SECS}, got {timeout_secs}"
                    ));
                }
                let file = ScriptFile::write(&self.scripts_dir, &script, interpreter.as_deref())?;
                let limits = RunLimits::new(secs(timeout_secs));
                let id = id.clone();
                self.tasks.spawn(async move {
                    let outcome = run_plugin(&file.command, limits, &cancel).await;
                    drop(file);
                    answer(id, ADHOC_CHECK, outcome)
                })
            }
        };
        self.ids.insert(handle.id(), id);
        Ok(())
    }

    /// Whether no run is in flight (then [`Rpc::finished`] would wait forever).
    pub fn is_idle(&self) -> bool {
        self.tasks.is_empty()
    }

    /// The answer of the next run that ends; pending while none is running.
    pub async fn finished(&mut self) -> AgentMessage {
        loop {
            match self.tasks.join_next_with_id().await {
                None => std::future::pending::<()>().await,
                Some(Ok((task, msg))) => {
                    self.ids.remove(&task);
                    return msg;
                }
                Some(Err(e)) => {
                    let Some(id) = self.ids.remove(&e.id()) else {
                        continue;
                    };
                    return AgentMessage::RpcResult {
                        id,
                        result: None,
                        error: Some(format!("the run failed inside the agent: {e}")),
                    };
                }
            }
        }
    }

    /// Cancels every run (killing its plugin) and waits for all of them.
    pub async fn shutdown(mut self) {
        self.cancel.cancel();
        while self.tasks.join_next().await.is_some() {}
    }
}

fn secs(s: u32) -> Duration {
    Duration::from_secs(u64::from(s))
}

/// The outcome as an `RpcResult` with `seq` 0 (not spooled).
fn answer(id: String, check: &str, outcome: Option<RunOutcome>) -> AgentMessage {
    match outcome {
        Some(outcome) => AgentMessage::RpcResult {
            id,
            result: Some(outcome.into_result(0, check)),
            error: None,
        },
        None => AgentMessage::RpcResult {
            id,
            result: None,
            error: Some("cancelled: the agent is stopping".into()),
        },
    }
}

fn find_check(config: Option<&AgentConfig>, name: &str) -> Result<CheckSpec, String> {
    let Some(config) = config else {
        return Err(format!(
            "unknown check {name:?}: the agent has no configuration yet"
        ));
    };
    config
        .checks
        .iter()
        .find(|c| c.name == name)
        .cloned()
        .ok_or_else(|| {
            format!(
                "unknown check {name:?}: config version {} has no such check",
                config.version
            )
        })
}

/// An ad-hoc script on disk, removed on drop.
#[derive(Debug)]
struct ScriptFile {
    path: PathBuf,
    command: Vec<String>,
}

impl ScriptFile {
    /// Writes `script` (mode 0700) and picks how to run it from
    /// `interpreter` (a file extension, default [`DEFAULT_INTERPRETER`])
    /// through the runner's interpreter table.
    fn write(dir: &Path, script: &str, interpreter: Option<&str>) -> Result<ScriptFile, String> {
        if script.len() > MAX_SCRIPT_BYTES {
            return Err(format!(
                "script of {} bytes exceeds the limit of {MAX_SCRIPT_BYTES} bytes",
                script.len()
            ));
        }
        let ext = interpreter.unwrap_or(DEFAULT_INTERPRETER);
        // The extension becomes part of a file name: only plain ones.
        if ext.is_empty() || ext.len() > 8 || !ext.bytes().all(|b| b.is_ascii_alphanumeric()) {
            return Err(format!("interpreter {ext:?} is not a file extension"));
        }
        // Checked before writing anything; the real path is set below.
        script_command(ext, "", &[], Platform::CURRENT)?;
        // 0700 whatever the umask: the script must not be swapped before it runs.
        fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(dir)
            .map_err(|e| format!("cannot create {}: {e}", dir.display()))?;
        let path = dir.join(format!(
            "{SCRIPT_PREFIX}{:016x}.{ext}",
            crate::backoff::random_below(u64::MAX)
        ));
        let written = OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o700)
            .open(&path)
            .and_then(|mut f| f.write_all(script.as_bytes()));
        if let Err(e) = written {
            let _ = fs::remove_file(&path);
            return Err(format!(
                "cannot write the script to {}: {e}",
                path.display()
            ));
        }
        let command = script_command(ext, &path.to_string_lossy(), &[], Platform::CURRENT)?;
        Ok(ScriptFile { path, command })
    }
}

impl Drop for ScriptFile {
    fn drop(&mut self) {
        let _ = fs::remove_file(&self.path);
    }
}

#[cfg(test)]
mod tests {
    use outrider_protocol::CheckState;

    use super::*;
    use crate::config::policy::{AdhocScripts, LocalPolicy};

    /// An executor whose host policy allows `/bin` (the tests' shell) and
    /// ad-hoc scripts as `adhoc` says.
    fn executor(dir: &Path, adhoc: AdhocScripts) -> Arc<Executor> {
        let policy = LocalPolicy::new(adhoc, &["/bin", "/usr/bin"]).unwrap();
        Arc::new(Executor::new(dir, policy))
    }

    fn config(allow_adhoc: bool) -> AgentConfig {
        AgentConfig {
            version: 3,
            checks: vec![CheckSpec {
                name: "echo".into(),
                command: vec!["/bin/sh".into(), "-c".into(), "echo 'OK now'".into()],
                interval_secs: 3600,
                timeout_secs: 5,
            }],
            allow_adhoc,
            ..AgentConfig::default()
        }
    }

    #[tokio::test]
    async fn runs_answer_with_their_id_and_refusals_say_why() {
        let dir = tempfile::tempdir().unwrap();
        let mut rpc = Rpc::new(dir.path(), CancellationToken::new());
        let ex = executor(dir.path(), AdhocScripts::Allowed);
        let cfg = config(false);
        rpc.start(
            RpcRequest::RunCheck {
                id: "r1".into(),
                check: "echo".into(),
            },
            Some(&cfg),
            &ex,
        )
        .unwrap();
        match rpc.finished().await {
            AgentMessage::RpcResult {
                id,
                result: Some(r),
                error: None,
            } => {
                assert_eq!((id.as_str(), r.seq, r.state), ("r1", 0, CheckState::Ok));
                assert_eq!(r.summary, "OK now");
            }
            other => panic!("{other:?}"),
        }
        let unknown = rpc.start(
            RpcRequest::RunCheck {
                id: "r2".into(),
                check: "nope".into(),
            },
            Some(&cfg),
            &ex,
        );
        assert!(unknown.unwrap_err().contains("unknown check \"nope\""));
        let adhoc = RpcRequest::RunScript {
            id: "r3".into(),
            script: "echo hi".into(),
            interpreter: None,
            timeout_secs: 5,
        };
        let logged = adhoc.describe();
        assert!(
            logged.contains("r3") && !logged.contains("echo hi"),
            "{logged}"
        );
        assert_eq!(
            rpc.start(adhoc, Some(&cfg), &ex).unwrap_err(),
            "ad-hoc scripts are not allowed for this agent"
        );
        assert!(rpc.is_idle());
        rpc.shutdown().await;
    }

    #[tokio::test]
    async fn beyond_the_limit_is_busy_and_shutdown_kills_running_scripts() {
        let dir = tempfile::tempdir().unwrap();
        let mut rpc = Rpc::new(dir.path(), CancellationToken::new());
        let ex = executor(dir.path(), AdhocScripts::Allowed);
        let cfg = config(true);
        let script = |id: usize| RpcRequest::RunScript {
            id: format!("s{id}"),
            script: "sleep 600".into(),
            interpreter: Some("sh".into()),
            timeout_secs: 600,
        };
        for i in 0..MAX_RPC_RUNS {
            rpc.start(script(i), Some(&cfg), &ex).unwrap();
        }
        let busy = rpc.start(script(9), Some(&cfg), &ex).unwrap_err();
        assert!(busy.starts_with("busy"), "{busy}");
        assert_eq!(
            fs::read_dir(dir.path().join(RPC_DIR)).unwrap().count(),
            MAX_RPC_RUNS
        );
        tokio::time::timeout(Duration::from_secs(5), rpc.shutdown())
            .await
            .expect("cancelled runs are joined promptly");
        assert_eq!(
            fs::read_dir(dir.path().join(RPC_DIR)).unwrap().count(),
            0,
            "scripts are removed"
        );
    }

    #[tokio::test]
    async fn the_host_policy_refuses_what_the_server_allows() {
        let dir = tempfile::tempdir().unwrap();
        let pwned = dir.path().join("pwned");
        let mut rpc = Rpc::new(dir.path(), CancellationToken::new());
        // The default policy: no ad-hoc scripts, no /bin/sh.
        let ex = Arc::new(Executor::new(dir.path(), LocalPolicy::default()));
        let cfg = config(true);
        let adhoc = RpcRequest::RunScript {
            id: "a1".into(),
            script: format!("touch {}", pwned.display()),
            interpreter: None,
            timeout_secs: 5,
        };
        let refused = rpc.start(adhoc, Some(&cfg), &ex).unwrap_err();
        assert_eq!(
            refused,
            "refused by local policy: ad-hoc scripts are off on this host (agent.toml [policy] \
             allow_adhoc = false)"
        );
        assert!(rpc.is_idle(), "nothing started");
        assert!(
            !dir.path().join(RPC_DIR).exists()
                || fs::read_dir(dir.path().join(RPC_DIR)).unwrap().count() == 0,
            "no script written"
        );
        // Run-now of a configured check outside allowed_commands.
        rpc.start(
            RpcRequest::RunCheck {
                id: "c1".into(),
                check: "echo".into(),
            },
            Some(&cfg),
            &ex,
        )
        .unwrap();
        match rpc.finished().await {
            AgentMessage::RpcResult {
                result: Some(r), ..
            } => {
                assert_eq!(r.state, CheckState::Unknown);
                assert!(
                    r.summary
                        .starts_with("refused by local policy: \"/bin/sh\""),
                    "{}",
                    r.summary
                );
            }
            other => panic!("{other:?}"),
        }
        rpc.shutdown().await;
        assert!(!pwned.exists());
    }

    #[test]
    fn bad_scripts_are_refused_before_anything_runs() {
        let dir = tempfile::tempdir().unwrap();
        let big = "#".repeat(MAX_SCRIPT_BYTES + 1);
        assert!(
            ScriptFile::write(dir.path(), &big, None)
                .unwrap_err()
                .contains("limit")
        );
        let odd = ScriptFile::write(dir.path(), "x", Some("../../etc")).unwrap_err();
        assert!(odd.contains("not a file extension"), "{odd}");
        let unknown = ScriptFile::write(dir.path(), "x", Some("bat")).unwrap_err();
        assert!(unknown.contains("no interpreter"), "{unknown}");
        let file = ScriptFile::write(dir.path(), "echo", None).unwrap();
        let mode = {
            use std::os::unix::fs::PermissionsExt;
            fs::metadata(&file.path).unwrap().permissions().mode() & 0o777
        };
        assert_eq!(mode, 0o700);
        let path = file.path.clone();
        drop(file);
        assert!(!path.exists());
    }

    #[test]
    fn scripts_left_by_a_crash_are_removed_on_start() {
        let dir = tempfile::tempdir().unwrap();
        let left = ScriptFile::write(&dir.path().join(RPC_DIR), "echo", None).unwrap();
        let path = left.path.clone();
        // A crash: the drop guard never runs.
        std::mem::forget(left);
        let foreign = dir.path().join(RPC_DIR).join("keep.txt");
        fs::write(&foreign, "x").unwrap();
        let _rpc = Rpc::new(dir.path(), CancellationToken::new());
        assert!(!path.exists(), "stale ad-hoc script removed");
        assert!(foreign.exists(), "files that are not ours stay");
    }
}
