//! `outrider quickstart`: everything on this machine, on the embedded defaults.
//!
//! Its first line of output is the dashboard's address and the token to
//! log in with (the server's admin token, created here on the first run so
//! it can be printed before anything is built).
//!
//! From a source checkout it builds the server, the stub and the agent
//! library, then under `$OUTRIDER_HOME` (default `~/.outrider`):
//! 1. creates dev signing keys (`keys/`) once;
//! 2. starts `outrider-server` with its data in `server/`;
//! 3. publishes the freshly built agent library to the `dev` channel;
//! 4. defines a demo check (`check_loadavg` from `packaging/plugins/`);
//! 5. writes `agent/etc/agent.toml` + `root.json` and starts the stub with
//!    `--prefix agent/`;
//! 6. waits for the agent's first result, prints what to look at, and
//!    supervises both until Ctrl-C, then stops the agent first (so it
//!    deregisters) and the server second.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use outrider_protocol::api::{AgentInfo, CheckDefinition, ResultInfo};

use crate::UsageError;
use crate::client::{ApiClient, outrider_home};

/// How long to wait for the server to listen, the agent to register, etc.
const STEP_TIMEOUT: Duration = Duration::from_secs(60);

/// Arguments of `outrider quickstart`.
#[derive(Debug, clap::Args)]
pub struct QuickstartArgs {
    /// Address for the server.
    #[arg(long, default_value = "127.0.0.1:8470")]
    listen: String,
    /// Address for the server's web dashboard.
    #[arg(long, default_value = "127.0.0.1:8471")]
    dashboard_listen: String,
    /// Build and start everything, print the summary, then stop (for CI).
    #[arg(long)]
    no_wait: bool,
}

/// A child process that is stopped with SIGTERM when dropped.
struct Supervised {
    name: &'static str,
    child: Child,
}

impl Supervised {
    fn spawn(name: &'static str, mut cmd: Command, log: &Path) -> Result<Supervised> {
        let file =
            std::fs::File::create(log).with_context(|| format!("creating {}", log.display()))?;
        let err = file.try_clone()?;
        // Own process group: the terminal's Ctrl-C reaches only us, and we
        // stop the children in the right order.
        use std::os::unix::process::CommandExt;
        cmd.process_group(0)
            .stdout(file)
            .stderr(err)
            .stdin(Stdio::null());
        let child = cmd.spawn().with_context(|| format!("starting {name}"))?;
        Ok(Supervised { name, child })
    }

    fn exited(&mut self) -> Option<std::process::ExitStatus> {
        self.child.try_wait().ok().flatten()
    }

    fn stop(&mut self) {
        if self.exited().is_some() {
            return;
        }
        let pid = self.child.id() as libc::pid_t;
        // SIGTERM: both programs stop cleanly on it (the stub deregisters).
        let _ = Command::new("kill")
            .arg("-TERM")
            .arg(pid.to_string())
            .status();
        let deadline = Instant::now() + Duration::from_secs(20);
        while Instant::now() < deadline {
            if let Some(status) = self.exited() {
                println!("  {} stopped ({status})", self.name);
                return;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
        println!("  {} did not stop within 20 s and was killed", self.name);
    }
}

impl Drop for Supervised {
    fn drop(&mut self) {
        self.stop();
    }
}

/// Runs the quickstart.
pub fn run(args: QuickstartArgs) -> Result<()> {
    let home = outrider_home();
    let dashboard = dashboard_line(&home.join("server"), &args.dashboard_listen)?;
    println!("{dashboard}");
    let source = source_dir()?;
    let (bin_dir, dist_dir) = build(&source)?;
    let (server_dir, keys_dir, agent_dir) =
        (home.join("server"), home.join("keys"), home.join("agent"));
    for d in [
        &server_dir,
        &keys_dir,
        &agent_dir.join("etc"),
        &agent_dir.join("log"),
    ] {
        std::fs::create_dir_all(d).with_context(|| format!("creating {}", d.display()))?;
    }
    let me = std::env::current_exe().context("locating the outrider binary")?;

    // 1. Keys.
    if !keys_dir.join("root.json").exists() {
        step("creating dev signing keys");
        run_self(&me, &["keys", "init", "--dir", &keys_dir.to_string_lossy()])?;
    }

    // 2. Server.
    step(&format!("starting outrider-server on {}", args.listen));
    let ready = server_dir.join("ready");
    let _ = std::fs::remove_file(&ready);
    let mut cmd = Command::new(bin_dir.join("outrider-server"));
    cmd.arg("--data-dir")
        .arg(&server_dir)
        .arg("--listen")
        .arg(&args.listen)
        .arg("--dashboard-listen")
        .arg(&args.dashboard_listen)
        .arg("--ready-file")
        .arg(&ready);
    let mut server = Supervised::spawn("outrider-server", cmd, &home.join("server.log"))?;
    wait_for("the server to listen", || {
        if let Some(status) = server.exited() {
            bail!(
                "outrider-server exited ({status}); see {}",
                home.join("server.log").display()
            );
        }
        Ok(ready.exists().then_some(()))
    })?;
    let url = format!("http://{}", args.listen);
    let token = std::fs::read_to_string(server_dir.join("admin.token"))
        .context("reading the admin token")?;
    let client = ApiClient::new(&url, token.trim().to_owned());

    // 3. Publish the freshly built library, and the stub too, so that
    //    `install.sh` can install agents on other hosts.
    let token_file = server_dir.join("admin.token");
    let publish = [
        (
            "publish",
            "the agent library",
            dist_dir.join("liboutrider_agent.so"),
        ),
        (
            "publish-stub",
            "the stub (for install.sh)",
            dist_dir.join("outrider-agent"),
        ),
    ];
    for (command, what, file) in publish {
        step(&format!("publishing {what} to channel dev"));
        run_self(
            &me,
            &[
                "--server",
                &url,
                "--token-file",
                &token_file.to_string_lossy(),
                "release",
                command,
                "--channel",
                "dev",
                "--keys",
                &keys_dir.to_string_lossy(),
                &file.to_string_lossy(),
            ],
        )?;
    }

    // 4. Demo checks: a Nagios plugin script and two built-ins.
    let plugin = source.join("packaging/plugins/check_loadavg");
    let demo = [
        ("load", vec![plugin.to_string_lossy().into_owned()], 10),
        ("memory", vec!["builtin:memory".to_owned()], 30),
        ("disk", vec!["builtin:disk".to_owned()], 60),
    ];
    for (name, command, interval_secs) in demo {
        let def = CheckDefinition {
            command,
            interval_secs,
            timeout_secs: 5,
            tags: Vec::new(),
            alert: None,
        };
        let _: serde_json::Value =
            client.send_json("PUT", &format!("/api/v1/checks/{name}"), &def)?;
    }

    // 5. The agent.
    step("starting the agent (stub + library)");
    let enrollment = std::fs::read_to_string(server_dir.join("enrollment.token"))
        .context("reading the enrollment token")?;
    // The demo plugin runs from the source tree, outside the default
    // `[policy] allowed_commands` (agent-lib/src/policy.rs): allow it too.
    let plugins_dir = source.join("packaging/plugins");
    std::fs::write(
        agent_dir.join("etc/agent.toml"),
        format!(
            "server_url = \"{url}\"\nenrollment_token = \"{}\"\nchannel = \"dev\"\n\
             \n[policy]\nallowed_commands = [\"builtin:\", \"plugin:\", \"/usr/lib/nagios/plugins\", \
             {:?}]\n",
            enrollment.trim(),
            plugins_dir.to_string_lossy()
        ),
    )?;
    std::fs::copy(keys_dir.join("root.json"), agent_dir.join("etc/root.json"))
        .context("installing root.json")?;
    let mut cmd = Command::new(dist_dir.join("outrider-agent"));
    cmd.arg("--prefix").arg(&agent_dir);
    let agent_log = agent_dir.join("log/stub.log");
    let mut agent = Supervised::spawn("outrider-agent", cmd, &agent_log)?;

    // 6. Wait for the first result and tell the user what to look at.
    wait_for("the agent's first check result", || {
        if let Some(status) = agent.exited() {
            bail!(
                "outrider-agent exited ({status}); see {}",
                agent_log.display()
            );
        }
        let results: Vec<ResultInfo> = client.get_json("/api/v1/results/latest")?;
        Ok((!results.is_empty()).then_some(()))
    })?;
    let agents: Vec<AgentInfo> = client.get_json("/api/v1/agents")?;
    let cli = bin_dir.join("outrider");
    println!();
    println!(
        "Outrider is running: server on {url}, {} agent(s) connected.",
        agents.len()
    );
    println!("{dashboard}");
    println!("Look at it from another terminal:");
    println!("  {} agents", cli.display());
    println!("  {} checks", cli.display());
    println!(
        "Install the agent on another host of this network (the server listens on {}):",
        args.listen
    );
    println!(
        "  curl -sSf {url}/install.sh | sh -s -- --token {} --channel dev --root-sha256 {}",
        enrollment.trim(),
        root_sha256(&client)?
    );
    println!(
        "  (this token, the server's bootstrap token, enrolls hosts for a day; then use `{} tokens create`)",
        cli.display()
    );
    println!(
        "Logs: {} and {}",
        home.join("server.log").display(),
        agent_log.display()
    );
    println!("State: {}", home.display());

    if !args.no_wait {
        println!("Press Ctrl-C to stop.");
        let stop = Arc::new(AtomicBool::new(false));
        signal_hook::flag::register(signal_hook::consts::SIGINT, stop.clone())?;
        signal_hook::flag::register(signal_hook::consts::SIGTERM, stop.clone())?;
        while !stop.load(Ordering::Relaxed) {
            if server.exited().is_some() || agent.exited().is_some() {
                println!("a component exited on its own; see the logs above");
                break;
            }
            std::thread::sleep(Duration::from_millis(200));
        }
    }
    println!("stopping…");
    agent.stop();
    server.stop();
    Ok(())
}

/// The first line of the quickstart: where the dashboard will be and the
/// token to log in with — the server's admin token in `server_dir`,
/// created now (random, mode 0600, in a 0700 directory) unless it exists,
/// so the server started later uses the same one. Fails when the
/// directory or the token file cannot be created or read.
fn dashboard_line(server_dir: &Path, dashboard_listen: &str) -> Result<String> {
    use std::io::Write;
    use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(server_dir)
        .with_context(|| format!("creating {}", server_dir.display()))?;
    let path = server_dir.join("admin.token");
    if !path.exists() {
        let mut bytes = [0u8; 32];
        getrandom::fill(&mut bytes).map_err(|e| anyhow::anyhow!("reading OS randomness: {e}"))?;
        let tmp = path.with_extension("tmp");
        let _ = std::fs::remove_file(&tmp);
        let mut file = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&tmp)
            .with_context(|| format!("creating {}", tmp.display()))?;
        writeln!(file, "{}", hex::encode(bytes))
            .and_then(|()| file.sync_all())
            .with_context(|| format!("writing {}", tmp.display()))?;
        std::fs::rename(&tmp, &path).with_context(|| format!("renaming to {}", path.display()))?;
    }
    let token =
        std::fs::read_to_string(&path).with_context(|| format!("reading {}", path.display()))?;
    Ok(format!(
        "Dashboard: http://{dashboard_listen}/  (log in with token {})",
        token.trim()
    ))
}

/// The workspace root this binary was built from.
/// SHA-256 of the root the server serves, for `install.sh --root-sha256`.
fn root_sha256(client: &ApiClient) -> Result<String> {
    let root = client
        .get_bytes_opt("/v1/updates/root.json")?
        .context("the server serves no root.json")?;
    Ok(outrider_signing::sha256(&root).to_string())
}

fn source_dir() -> Result<PathBuf> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .map(Path::to_path_buf);
    match dir {
        Some(d) if d.join("Cargo.toml").exists() && d.join("packaging").exists() => Ok(d),
        _ => Err(UsageError(
            "quickstart runs from a source checkout: run `cargo run --release --bin outrider -- quickstart` in it".into(),
        )
        .into()),
    }
}

/// Builds the server with the profile of this binary (`cargo build`), and
/// the stub and the library the way releases are built, with
/// `packaging/build` (each on its own, reproducible; profile `dist` for a
/// release quickstart, `dev` otherwise). Portable (glibc 2.17) when
/// cargo-zigbuild is installed, so the stub `install.sh` hands to other
/// hosts runs on older distributions too; native otherwise, because a fresh
/// machine may not have pip. Returns the server's directory and the
/// directory holding the stub and the library.
fn build(source: &Path) -> Result<(PathBuf, PathBuf)> {
    let me = std::env::current_exe().context("locating the outrider binary")?;
    let bin_dir = me
        .parent()
        .context("the outrider binary has no directory")?
        .to_path_buf();
    let release = bin_dir.file_name().is_some_and(|n| n == "release");
    step("building outrider-server (first time takes minutes)");
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let mut cmd = Command::new(cargo);
    cmd.current_dir(source)
        .args(["build", "-p", "outrider-server"]);
    if release {
        cmd.arg("--release");
    }
    let status = cmd.status().context("running cargo build")?;
    if !status.success() {
        bail!("cargo build failed ({status})");
    }

    let portable = Command::new("sh")
        .args(["-c", "command -v cargo-zigbuild"])
        .stdout(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    let dist_dir = bin_dir.join("quickstart");
    step(&format!(
        "building the stub and the agent library with packaging/build ({})",
        if portable {
            "portable, glibc 2.17"
        } else {
            "for this machine's glibc: install cargo-zigbuild for a portable build"
        }
    ));
    let status = Command::new("sh")
        .arg(source.join("packaging/build"))
        .arg(if portable { "--portable" } else { "--native" })
        .args(["--profile", if release { "dist" } else { "dev" }])
        .args([
            "--only",
            "outrider-agent-lib",
            "--only",
            "outrider-agent-stub",
        ])
        .arg("--out")
        .arg(&dist_dir)
        .current_dir(source)
        .stdout(Stdio::null())
        .status()
        .context("running packaging/build")?;
    if !status.success() {
        bail!("packaging/build failed ({status})");
    }
    Ok((bin_dir, dist_dir))
}

fn run_self(me: &Path, args: &[&str]) -> Result<()> {
    let status = Command::new(me)
        .args(args)
        .status()
        .with_context(|| format!("running outrider {}", args.join(" ")))?;
    if !status.success() {
        bail!("`outrider {}` failed ({status})", args.join(" "));
    }
    Ok(())
}

fn step(what: &str) {
    println!("==> {what}");
}

/// Polls `probe` every 200 ms until it yields a value or [`STEP_TIMEOUT`] passes.
fn wait_for<T>(what: &str, mut probe: impl FnMut() -> Result<Option<T>>) -> Result<T> {
    let deadline = Instant::now() + STEP_TIMEOUT;
    loop {
        if let Some(v) = probe()? {
            return Ok(v);
        }
        if Instant::now() > deadline {
            bail!("timed out after {STEP_TIMEOUT:?} waiting for {what}");
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::PermissionsExt;

    use super::*;

    #[test]
    fn the_first_line_names_the_dashboard_and_a_private_token_that_stays() {
        let dir = tempfile::tempdir().unwrap();
        let server = dir.path().join("home/server");
        let line = dashboard_line(&server, "127.0.0.1:8471").unwrap();
        let token = std::fs::read_to_string(server.join("admin.token")).unwrap();
        let token = token.trim();
        assert_eq!(token.len(), 64);
        assert_eq!(
            line,
            format!("Dashboard: http://127.0.0.1:8471/  (log in with token {token})")
        );
        let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode(&server.join("admin.token")), 0o600);
        assert_eq!(mode(&server), 0o700);
        // The next run (and the server) keep the same token.
        assert_eq!(dashboard_line(&server, "127.0.0.1:8471").unwrap(), line);
    }
}
