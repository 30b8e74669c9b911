//! Runs one [`CheckSpec`] once: the step shared by the scheduler and by
//! remote "run check X now" requests.
//!
//! `command[0]` decides what runs:
//! - `builtin:<name>` — a check inside the agent ([`crate::builtin`]); no
//!   process, no concurrency permit, the check's timeout still applies;
//! - `plugin:<name>` — the content-addressed file `<data_dir>/plugins/<sha256>`
//!   of the [`PluginRef`] called `<name>` in the config last applied; a file
//!   not downloaded yet is an UNKNOWN result saying so. The file is
//!   re-hashed before every run: one modified since download is removed
//!   (the session fetches it again, woken by [`Executor::plugin_removed`])
//!   and the run is an UNKNOWN result saying so — never run;
//! - anything else — a program path, run as is.
//!
//! Before any of that, the host's [`LocalPolicy`] judges `command`: a
//! refused command is an UNKNOWN result `"refused by local policy: <why>"`
//! and nothing is started (the scheduler's runs and run-now alike).
//!
//! On Windows a program goes through the interpreter table by the extension
//! of its name (for plugins, the plugin's name, since the stored file is
//! named by its hash). Processes are bounded by one semaphore of
//! [`MAX_CONCURRENT_RUNS`] permits shared by every caller; a run holds its
//! permit only while its process group lives.

use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use outrider_protocol::{BUILTIN_PREFIX, CheckSpec, PLUGIN_PREFIX, PluginRef};
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;

use crate::builtin::{BuiltinState, run_builtin};
use crate::config::policy::LocalPolicy;
use crate::plugins::PluginCache;
use crate::runner::{RunLimits, RunOutcome, run_plugin};

/// Most plugin processes running at the same time.
pub const MAX_CONCURRENT_RUNS: usize = 16;

/// What `command[0]` resolved to.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Resolved {
    /// A process: program and arguments.
    Program(Vec<String>),
    /// A built-in check and its arguments.
    Builtin { name: String, args: Vec<String> },
}

/// Runs checks; cheap to share (`Arc`).
#[derive(Debug)]
pub struct Executor {
    permits: Arc<Semaphore>,
    plugins: PluginCache,
    /// The plugin table of the config last applied.
    table: Mutex<Vec<PluginRef>>,
    builtins: Arc<BuiltinState>,
    /// What the host allows to run, whatever the server configures.
    policy: LocalPolicy,
    /// Signalled when a modified plugin was removed from the cache.
    removed: tokio::sync::Notify,
}

impl Executor {
    /// An executor finding plugins under `data_dir`, running only what
    /// `policy` allows.
    pub fn new(data_dir: &std::path::Path, policy: LocalPolicy) -> Executor {
        Executor {
            permits: Arc::new(Semaphore::new(MAX_CONCURRENT_RUNS)),
            plugins: PluginCache::new(data_dir),
            table: Mutex::new(Vec::new()),
            builtins: Arc::default(),
            policy,
            removed: tokio::sync::Notify::new(),
        }
    }

    /// Resolves when a cached plugin was found modified and removed, so it
    /// should be fetched again (one wake-up per removal, kept until polled).
    pub async fn plugin_removed(&self) {
        self.removed.notified().await;
    }

    /// The host's policy this executor enforces.
    pub fn policy(&self) -> &LocalPolicy {
        &self.policy
    }

    /// Replaces the plugin table (from a newly applied config) and forgets
    /// built-in samples of checks that no longer exist.
    pub fn set_config(&self, plugins: &[PluginRef], checks: &[CheckSpec]) {
        *self.table.lock().unwrap_or_else(|p| p.into_inner()) = plugins.to_vec();
        self.builtins
            .retain(&|name| checks.iter().any(|c| c.name == name));
    }

    /// Resolves `command` (see the module docs); fails with the summary of
    /// the UNKNOWN result to report.
    pub fn resolve(&self, command: &[String]) -> Result<Resolved, String> {
        let Some((first, args)) = command.split_first() else {
            return Err("plugin command is empty".into());
        };
        self.policy
            .check_command(command, &crate::config::policy::real_path)
            .map_err(|refusal| refusal.summary())?;
        if let Some(name) = first.strip_prefix(BUILTIN_PREFIX) {
            return Ok(Resolved::Builtin {
                name: name.to_owned(),
                args: args.to_vec(),
            });
        }
        let (path, name_for_ext) = match first.strip_prefix(PLUGIN_PREFIX) {
            Some(name) => {
                let table = self.table.lock().unwrap_or_else(|p| p.into_inner());
                let plugin = table
                    .iter()
                    .find(|p| p.name == name)
                    .ok_or_else(|| format!("plugin {name} is not in this agent's configuration"))?;
                let path = self.plugins.path_of(&plugin.sha256);
                if !path.is_file() {
                    return Err(format!(
                        "plugin {name} ({}) is not downloaded yet",
                        plugin.sha256
                    ));
                }
                (path, name.to_owned())
            }
            None => (PathBuf::from(first), first.clone()),
        };
        Ok(Resolved::Program(program_command(
            path.to_string_lossy().into_owned(),
            &name_for_ext,
            args,
        )))
    }

    /// Runs `spec` once (see the module docs). `None` only when `cancel`
    /// fired (the run's process group is then killed).
    pub async fn run(&self, spec: &CheckSpec, cancel: &CancellationToken) -> Option<RunOutcome> {
        match self.resolve(&spec.command) {
            Err(summary) => Some(RunOutcome::unknown(summary)),
            Ok(Resolved::Builtin { name, args }) => {
                let timeout = Duration::from_secs(u64::from(spec.timeout_secs));
                let run = run_builtin(&spec.name, &name, &args, &self.builtins);
                tokio::select! {
                    _ = cancel.cancelled() => None,
                    outcome = tokio::time::timeout(timeout, run) => Some(outcome.unwrap_or_else(|_| {
                        RunOutcome::unknown(format!(
                            "builtin:{name} timed out after {}s (the OS did not answer)",
                            spec.timeout_secs
                        ))
                    })),
                }
            }
            Ok(Resolved::Program(command)) => {
                let _permit = tokio::select! {
                    _ = cancel.cancelled() => return None,
                    // The semaphore is never closed; treat it as a stop anyway.
                    permit = self.permits.acquire() => permit.ok()?,
                };
                if let Err(summary) = self.verify_plugin(&spec.command).await {
                    return Some(RunOutcome::unknown(summary));
                }
                let limits = RunLimits::new(Duration::from_secs(u64::from(spec.timeout_secs)));
                run_plugin(&command, limits, cancel).await
            }
        }
    }

    /// Re-hashes the cached file of a `plugin:<name>` command (off the
    /// async threads: a plugin may be 32 MiB); fails with the summary of
    /// the UNKNOWN result when it was modified (then removed) or is
    /// unreadable. Other commands pass.
    async fn verify_plugin(&self, command: &[String]) -> Result<(), String> {
        let Some(name) = command.first().and_then(|c| c.strip_prefix(PLUGIN_PREFIX)) else {
            return Ok(());
        };
        let sha256 = {
            let table = self.table.lock().unwrap_or_else(|p| p.into_inner());
            match table.iter().find(|p| p.name == name) {
                Some(plugin) => plugin.sha256.clone(),
                None => {
                    return Err(format!(
                        "plugin {name} is not in this agent's configuration"
                    ));
                }
            }
        };
        let (cache, name) = (self.plugins.clone(), name.to_owned());
        let verified = tokio::task::spawn_blocking(move || cache.verify(&name, &sha256)).await;
        match verified {
            Ok(Ok(())) => Ok(()),
            Ok(Err(e)) => {
                if matches!(e, crate::error::AgentError::PluginModified { .. }) {
                    self.removed.notify_one();
                }
                Err(e.to_string())
            }
            Err(e) => Err(format!("cannot verify the plugin: {e}")),
        }
    }

    /// Permits free right now (for tests and diagnostics).
    pub fn free_permits(&self) -> usize {
        self.permits.available_permits()
    }
}

/// The command for program `path` with `args`; on Windows through the
/// interpreter its name's extension asks for.
fn program_command(path: String, name_for_ext: &str, args: &[String]) -> Vec<String> {
    #[cfg(windows)]
    {
        use crate::runner::interpreter::{Platform, extension, script_command};
        if let Some(ext) = extension(name_for_ext)
            && let Ok(command) = script_command(ext, &path, args, Platform::Windows)
        {
            return command;
        }
    }
    let _ = name_for_ext;
    let mut command = vec![path];
    command.extend(args.iter().cloned());
    command
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::policy::AdhocScripts;

    fn cmd(parts: &[&str]) -> Vec<String> {
        parts.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn resolves_paths_builtins_and_plugins() {
        let dir = tempfile::tempdir().unwrap();
        let ex = Executor::new(dir.path(), LocalPolicy::default());
        let refused = ex
            .resolve(&cmd(&["/bin/sh", "-c", "touch /tmp/x"]))
            .unwrap_err();
        assert!(
            refused.starts_with("refused by local policy: \"/bin/sh\"")
                && refused.ends_with("is outside agent.toml [policy] allowed_commands"),
            "{refused}"
        );
        let ex = Executor::new(
            dir.path(),
            LocalPolicy::new(AdhocScripts::Refused, &["builtin:", "plugin:", "/bin"]).unwrap(),
        );
        assert_eq!(
            ex.resolve(&cmd(&["/bin/true", "-x"])).unwrap(),
            Resolved::Program(cmd(&["/bin/true", "-x"]))
        );
        assert_eq!(
            ex.resolve(&cmd(&["builtin:disk", "--path", "/"])).unwrap(),
            Resolved::Builtin {
                name: "disk".into(),
                args: cmd(&["--path", "/"])
            }
        );
        assert!(ex.resolve(&[]).is_err());
        let err = ex.resolve(&cmd(&["plugin:p"])).unwrap_err();
        assert!(err.contains("not in this agent's configuration"), "{err}");

        let sha = "ab".repeat(32);
        let plugin = PluginRef {
            name: "p".into(),
            sha256: sha.clone(),
            size: 3,
        };
        ex.set_config(&[plugin], &[]);
        let err = ex.resolve(&cmd(&["plugin:p", "-w", "1"])).unwrap_err();
        assert_eq!(err, format!("plugin p ({sha}) is not downloaded yet"));
        let path = PluginCache::new(dir.path()).path_of(&sha);
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(&path, "#!/bin/sh\n").unwrap();
        assert_eq!(
            ex.resolve(&cmd(&["plugin:p", "-w", "1"])).unwrap(),
            Resolved::Program(vec![
                path.to_string_lossy().into_owned(),
                "-w".into(),
                "1".into()
            ])
        );
    }
}
