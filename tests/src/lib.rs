//! End-to-end harness: the real binaries, a real server, real sockets on
//! loopback, real keys and a real SQLite file — no mocks.
//!
//! Tests read like scripts over these builders:
//! ```no_run
//! # use outrider_tests::*;
//! let server = TestServer::start();
//! let keys = Keys::init();
//! let sha256 = server.publish(&keys, "dev", &agent_library());
//! let agent = TestAgent::start(&server, &keys, "dev");
//! agent.proc.wait_for_log("agent library loaded", secs(30));
//! ```
//! The binaries come from the same target directory as the test binary;
//! the test command builds them first (`cargo build --workspace` runs
//! before `cargo test` in the README's test command).

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

pub mod portable;
pub mod testlib;

/// Enrollment token every test server accepts.
pub const ENROLLMENT_TOKEN: &str = "e2e-enrollment-token";

/// Shorthand for `Duration::from_secs`.
pub fn secs(s: u64) -> Duration {
    Duration::from_secs(s)
}

/// `target/<profile>/`, where cargo put the binaries and the cdylib.
pub fn bin_dir() -> PathBuf {
    let exe = std::env::current_exe().expect("test binary path");
    // target/<profile>/deps/e2e-<hash>
    let dir = exe
        .parent()
        .and_then(Path::parent)
        .expect("target/<profile> directory")
        .to_path_buf();
    for name in [
        "outrider-server",
        "outrider-agent",
        "outrider",
        "liboutrider_agent.so",
    ] {
        assert!(
            dir.join(name).exists(),
            "{} is missing: build the workspace first (`cargo build --workspace`), as the README's test command does",
            dir.join(name).display()
        );
    }
    dir
}

/// The agent library cargo built for this workspace.
pub fn agent_library() -> PathBuf {
    bin_dir().join("liboutrider_agent.so")
}

/// Polls `probe` every 50 ms until it returns `Some`, panicking with `what`
/// after `timeout`.
pub fn wait_until<T>(what: &str, timeout: Duration, mut probe: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(v) = probe() {
            return v;
        }
        assert!(
            Instant::now() < deadline,
            "timed out after {timeout:?} waiting for {what}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// A child process killed (SIGKILL) when dropped, with its output in a file.
#[derive(Debug)]
pub struct Proc {
    child: Child,
    log: PathBuf,
}

impl Proc {
    fn spawn(mut cmd: Command, log: PathBuf) -> Proc {
        let file = std::fs::File::create(&log).expect("create log file");
        let err = file.try_clone().expect("clone log file");
        cmd.stdin(Stdio::null()).stdout(file).stderr(err);
        // A binary just copied can be "busy" for a moment: another test
        // thread's fork may still hold the copy's write descriptor until
        // its exec. Retry briefly rather than fail on ETXTBSY.
        let mut attempts = 0;
        let child = loop {
            match cmd.spawn() {
                Err(e) if e.kind() == std::io::ErrorKind::ExecutableFileBusy && attempts < 100 => {
                    attempts += 1;
                    std::thread::sleep(Duration::from_millis(20));
                }
                other => break other.unwrap_or_else(|e| panic!("spawning {cmd:?}: {e}")),
            }
        };
        Proc { child, log }
    }

    /// Everything the process wrote so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Sends a signal (e.g. `libc::SIGTERM`).
    pub fn signal(&self, signal: i32) {
        let status = Command::new("kill")
            .arg(format!("-{signal}"))
            .arg(self.child.id().to_string())
            .status()
            .expect("run kill");
        assert!(status.success(), "kill -{signal} failed");
    }

    /// Waits for exit and returns the exit code (None if killed by a signal).
    pub fn wait_exit(&mut self, timeout: Duration) -> Option<i32> {
        let child = &mut self.child;
        let status = wait_until("process exit", timeout, || child.try_wait().ok().flatten());
        status.code()
    }

    /// Whether the process is still running.
    pub fn is_running(&mut self) -> bool {
        self.child.try_wait().ok().flatten().is_none()
    }

    /// Waits until the log contains `needle`, panicking with the log otherwise.
    pub fn wait_for_log(&self, needle: &str, timeout: Duration) {
        let deadline = Instant::now() + timeout;
        while !self.log().contains(needle) {
            assert!(
                Instant::now() < deadline,
                "timed out waiting for {needle:?} in log:\n{}",
                self.log()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A real `outrider-server` on 127.0.0.1 with its own data directory.
#[derive(Debug)]
pub struct TestServer {
    pub dir: tempfile::TempDir,
    pub url: String,
    pub admin_token: String,
    pub proc: Proc,
    /// Flags beyond the defaults, given again on a restart.
    extra: Vec<String>,
}

impl TestServer {
    /// Starts a server on an ephemeral loopback port and waits until it listens.
    pub fn start() -> TestServer {
        TestServer::start_args(&[])
    }

    /// Like [`TestServer::start`], with more command-line flags (kept for
    /// [`TestServer::restart`]).
    pub fn start_args(extra: &[&str]) -> TestServer {
        let dir = tempfile::tempdir().expect("tempdir");
        let extra: Vec<String> = extra.iter().map(|a| a.to_string()).collect();
        let (proc, addr) = spawn_server(dir.path(), "127.0.0.1:0", "server.log", &extra);
        let admin_token = std::fs::read_to_string(dir.path().join("data/admin.token"))
            .expect("admin token")
            .trim()
            .to_owned();
        TestServer {
            url: format!("http://{addr}"),
            admin_token,
            proc,
            dir,
            extra,
        }
    }

    /// Stops the server with SIGKILL: no goodbye to anyone, as in a crash.
    pub fn kill(&mut self) {
        let _ = self.proc.child.kill();
        let _ = self.proc.child.wait();
    }

    /// Starts the server again on the same address and data directory
    /// (after [`TestServer::kill`]), logging to a new file.
    pub fn restart(&mut self) {
        self.kill();
        let addr = self.url.trim_start_matches("http://").to_owned();
        let log = format!("server.{}.log", self.proc.child.id());
        let (proc, _) = spawn_server(self.dir.path(), &addr, &log, &self.extra);
        self.proc = proc;
    }

    /// Starts the server again on another address with the same data
    /// directory (after [`TestServer::kill`]): another node of the same
    /// server, as agents see it.
    pub fn restart_at(&mut self, addr: &str) {
        self.kill();
        let log = format!("server.{}.log", self.proc.child.id());
        let (proc, addr) = spawn_server(self.dir.path(), addr, &log, &self.extra);
        self.proc = proc;
        self.url = format!("http://{addr}");
    }

    /// The server's data directory.
    pub fn data_dir(&self) -> PathBuf {
        self.dir.path().join("data")
    }

    /// `GET /api/v1/<path>` with the admin token, as JSON.
    pub fn api_get(&self, path: &str) -> Value {
        ureq::get(&format!("{}/api/v1/{path}", self.url))
            .set("Authorization", &format!("Bearer {}", self.admin_token))
            .call()
            .unwrap_or_else(|e| panic!("GET {path}: {e}"))
            .into_json()
            .expect("JSON body")
    }

    /// Runs the `outrider` CLI against this server and returns its stdout;
    /// panics (with stderr) when it fails.
    pub fn cli(&self, args: &[&str]) -> String {
        let out = self.cli_output(args);
        assert!(
            out.status.success(),
            "outrider {args:?} failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// Runs the `outrider` CLI against this server, returning its whole output.
    pub fn cli_output(&self, args: &[&str]) -> std::process::Output {
        Command::new(bin_dir().join("outrider"))
            .args(["--server", &self.url, "--token", &self.admin_token])
            .args(args)
            .env_remove("OUTRIDER_TOKEN_FILE")
            .output()
            .expect("run outrider")
    }

    /// Publishes `library` to `channel`, signed with `keys`, without deltas;
    /// returns the library's sha256.
    pub fn publish(&self, keys: &Keys, channel: &str, library: &Path) -> String {
        self.publish_release(keys, channel, library, None, 0)
    }

    /// Publishes `library` to `channel` as release `version` without deltas
    /// (a debug build of the real library is large, and a debug CLI's bsdiff
    /// of it takes minutes); returns its sha256.
    pub fn publish_as(&self, keys: &Keys, channel: &str, library: &Path, version: &str) -> String {
        self.publish_with(keys, channel, library, version, 0)
    }

    /// Publishes `library` as release `version`, making deltas from up to
    /// `deltas` earlier builds of the channel; returns its sha256.
    pub fn publish_with(
        &self,
        keys: &Keys,
        channel: &str,
        library: &Path,
        version: &str,
        deltas: u32,
    ) -> String {
        self.publish_release(keys, channel, library, Some(version), deltas)
    }

    fn publish_release(
        &self,
        keys: &Keys,
        channel: &str,
        library: &Path,
        version: Option<&str>,
        deltas: u32,
    ) -> String {
        let keys_dir = keys.dir.path().to_string_lossy().into_owned();
        let lib = library.to_string_lossy().into_owned();
        let deltas = deltas.to_string();
        let mut args = vec![
            "release",
            "publish",
            "--channel",
            channel,
            "--keys",
            &keys_dir,
            "--deltas",
            &deltas,
        ];
        if let Some(version) = version {
            args.extend(["--version", version]);
        }
        args.push(&lib);
        self.cli(&args);
        sha256_file(library)
    }

    /// Defines a check every agent runs.
    pub fn add_check(&self, name: &str, interval_secs: u32, command: &[&str]) {
        let interval = interval_secs.to_string();
        let mut args = vec![
            "checks",
            "add",
            name,
            "--interval-secs",
            &interval,
            "--timeout-secs",
            "5",
            "--",
        ];
        args.extend_from_slice(command);
        self.cli(&args);
    }

    /// The agent rows of `GET /api/v1/agents`.
    pub fn agents(&self) -> Vec<Value> {
        self.api_get("agents")
            .as_array()
            .cloned()
            .unwrap_or_default()
    }

    /// The rows of `GET /api/v1/results/latest`.
    pub fn latest_results(&self) -> Vec<Value> {
        self.api_get("results/latest")
            .as_array()
            .cloned()
            .unwrap_or_default()
    }
}

/// Signing keys and `root.json` made by `outrider keys init`.
#[derive(Debug)]
pub struct Keys {
    pub dir: tempfile::TempDir,
}

impl Keys {
    /// Runs `outrider keys init` into a fresh directory.
    pub fn init() -> Keys {
        let dir = tempfile::tempdir().expect("tempdir");
        let keys_dir = dir.path().join("k");
        let out = Command::new(bin_dir().join("outrider"))
            .args(["keys", "init", "--dir"])
            .arg(&keys_dir)
            .output()
            .expect("run outrider keys init");
        assert!(
            out.status.success(),
            "keys init failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        // Keep the keys in the root of the TempDir for simple paths.
        for entry in std::fs::read_dir(&keys_dir).expect("keys dir") {
            let entry = entry.expect("entry");
            std::fs::rename(entry.path(), dir.path().join(entry.file_name())).expect("move key");
        }
        Keys { dir }
    }

    /// The trusted root the installer would write.
    pub fn root_json(&self) -> PathBuf {
        self.dir.path().join("root.json")
    }
}

/// The agent.toml `policy` (an inline table) of test agents: the default
/// entries plus `/bin`, `/usr/bin` and the temp directory, where the tests'
/// checks live ([`script`]). [`TestAgent::start_toml`] writes no policy,
/// so the agent has the default one of a real host.
pub fn test_policy() -> String {
    format!(
        "{{ allowed_commands = [\"builtin:\", \"plugin:\", \"/bin\", \"/usr/bin\", {:?}] }}",
        std::env::temp_dir().display().to_string()
    )
}

/// The `agent.toml` line that turns the agent's StatsD/Graphite listeners
/// off. They default to the fixed ports 127.0.0.1:8125 and :2003, so two
/// agents of tests running side by side would compete for them and the
/// loser would report a WARNING `outrider.listeners` result: every agent.toml
/// a test writes carries this line unless the test is about the listeners.
pub const LISTENERS_OFF: &str = "listeners = { statsd = \"off\", graphite = \"off\" }";

/// The agent.toml of [`TestAgent::start_env`]: the test server, `channel`,
/// the `listeners` line, [`test_policy`], then `extra_toml`.
fn agent_toml(server: &TestServer, channel: &str, listeners: &str, extra_toml: &str) -> String {
    format!(
        "server_url = \"{}\"\nenrollment_token = \"{ENROLLMENT_TOKEN}\"\nchannel = \"{channel}\"\n\
         {listeners}\npolicy = {}\n{extra_toml}\n",
        server.url,
        test_policy()
    )
}

/// A loopback port free for both TCP and UDP right now, chosen by the
/// kernel (an ephemeral port, so no fixed port two tests could share).
/// It is free only until someone binds it: the caller hands it to the one
/// process that binds it next.
pub fn free_loopback_port() -> u16 {
    for _ in 0..100 {
        let tcp = std::net::TcpListener::bind("127.0.0.1:0").expect("bind a TCP port");
        let port = tcp.local_addr().expect("local address").port();
        if std::net::UdpSocket::bind(("127.0.0.1", port)).is_ok() {
            return port;
        }
    }
    panic!("no loopback port free for both TCP and UDP in 100 tries")
}

/// A real stub (`outrider-agent --prefix`) with its own install prefix.
#[derive(Debug)]
pub struct TestAgent {
    pub prefix: tempfile::TempDir,
    pub proc: Proc,
}

impl TestAgent {
    /// Installs `agent.toml` and `root.json` under a fresh prefix and starts the stub.
    pub fn start(server: &TestServer, keys: &Keys, channel: &str) -> TestAgent {
        TestAgent::start_with(server, keys, channel, "")
    }

    /// Like [`TestAgent::start`], with extra lines appended to `agent.toml`.
    pub fn start_with(
        server: &TestServer,
        keys: &Keys,
        channel: &str,
        extra_toml: &str,
    ) -> TestAgent {
        TestAgent::start_env(server, keys, channel, extra_toml, &[])
    }

    /// Like [`TestAgent::start_with`], with extra environment variables for the stub.
    pub fn start_env(
        server: &TestServer,
        keys: &Keys,
        channel: &str,
        extra_toml: &str,
        env: &[(&str, &str)],
    ) -> TestAgent {
        let toml = agent_toml(server, channel, LISTENERS_OFF, extra_toml);
        TestAgent::start_toml(keys, &toml, env)
    }

    /// Like [`TestAgent::start_with`], with the StatsD/Graphite listeners
    /// on: `listeners` is the `[listeners]` inline table, e.g.
    /// `{ statsd = "127.0.0.1:PORT", graphite = "127.0.0.1:PORT" }` with a
    /// port from [`free_loopback_port`] (never the default ports, which
    /// another test's agent may hold).
    pub fn start_listening(
        server: &TestServer,
        keys: &Keys,
        channel: &str,
        listeners: &str,
        extra_toml: &str,
    ) -> TestAgent {
        let line = format!("listeners = {listeners}");
        let toml = agent_toml(server, channel, &line, extra_toml);
        TestAgent::start_toml(keys, &toml, &[])
    }

    /// Installs exactly `agent_toml` and `root.json` under a fresh prefix and
    /// starts the stub with extra environment variables.
    pub fn start_toml(keys: &Keys, agent_toml: &str, env: &[(&str, &str)]) -> TestAgent {
        let prefix = tempfile::tempdir().expect("tempdir");
        let etc = prefix.path().join("etc");
        std::fs::create_dir_all(&etc).expect("etc");
        std::fs::write(etc.join("agent.toml"), agent_toml).expect("agent.toml");
        std::fs::copy(keys.root_json(), etc.join("root.json")).expect("root.json");
        // Run a private copy of the stub binary: a stub self-update replaces
        // its own file, which must not be the workspace's build.
        let bin = prefix.path().join("bin");
        std::fs::create_dir_all(&bin).expect("bin dir");
        std::fs::copy(bin_dir().join("outrider-agent"), bin.join("outrider-agent"))
            .expect("copy the stub");
        let proc = spawn_stub(prefix.path(), "stub.log", env);
        TestAgent { prefix, proc }
    }

    /// The stub binary this agent runs (a private copy in its prefix).
    pub fn stub_binary(&self) -> PathBuf {
        self.prefix.path().join("bin/outrider-agent")
    }

    /// The stub's process id.
    pub fn pid(&self) -> u32 {
        self.proc.child.id()
    }

    /// The stub's `/proc/<pid>/maps`.
    pub fn maps(&self) -> String {
        std::fs::read_to_string(format!("/proc/{}/maps", self.pid())).unwrap_or_default()
    }

    /// Number of threads of the stub process.
    pub fn threads(&self) -> usize {
        std::fs::read_dir(format!("/proc/{}/task", self.pid()))
            .map(|d| d.count())
            .unwrap_or(0)
    }

    /// Rewrites `agent.toml` (e.g. before a SIGHUP).
    pub fn write_agent_toml(&self, text: &str) {
        std::fs::write(self.prefix.path().join("etc/agent.toml"), text).expect("agent.toml");
    }

    /// Parsed `state.json` of the stub, once it exists.
    pub fn state(&self) -> Option<Value> {
        let text = std::fs::read_to_string(self.prefix.path().join("state.json")).ok()?;
        serde_json::from_str(&text).ok()
    }

    /// Names of the entries under `versions/` (installed builds).
    pub fn installed_versions(&self) -> Vec<String> {
        list(&self.prefix.path().join("versions"))
    }

    /// Names of the entries under `run/` (loaded copies).
    pub fn run_copies(&self) -> Vec<String> {
        list(&self.prefix.path().join("run"))
    }
}

/// Starts `outrider-server` with its data in `dir/data`, listening on
/// `listen`, and waits for its ready file; returns it and the bound address.
fn spawn_server(dir: &Path, listen: &str, log: &str, extra: &[String]) -> (Proc, String) {
    let ready = dir.join("ready");
    let _ = std::fs::remove_file(&ready);
    let mut cmd = Command::new(bin_dir().join("outrider-server"));
    cmd.arg("--data-dir")
        .arg(dir.join("data"))
        .args(["--listen", listen, "--enrollment-token", ENROLLMENT_TOKEN])
        // Tests run side by side: the dashboard on a port of its own each.
        .args(["--dashboard-listen", "127.0.0.1:0"])
        .arg("--ready-file")
        .arg(&ready)
        .args(extra)
        .env("RUST_LOG", "info");
    let proc = Proc::spawn(cmd, dir.join(log));
    let addr = wait_until("server ready file", secs(20), || {
        std::fs::read_to_string(&ready).ok()
    });
    (proc, addr)
}

/// Starts `outrider-agent --prefix <prefix>` with debug logs into `prefix/<log>`.
fn spawn_stub(prefix: &Path, log: &str, env: &[(&str, &str)]) -> Proc {
    let mut cmd = Command::new(prefix.join("bin/outrider-agent"));
    cmd.arg("--prefix")
        .arg(prefix)
        .env("OUTRIDER_LOG", "debug")
        .envs(env.iter().copied());
    Proc::spawn(cmd, prefix.join(log))
}

fn list(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(dir)
        .map(|rd| {
            rd.flatten()
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default();
    names.sort();
    names
}

/// Hex SHA-256 of a file, computed by `sha256sum` (coreutils) so the test
/// does not trust our own hashing code.
pub fn sha256_file(path: &Path) -> String {
    let out = Command::new("sha256sum")
        .arg(path)
        .output()
        .expect("run sha256sum");
    assert!(out.status.success());
    String::from_utf8_lossy(&out.stdout)
        .split_whitespace()
        .next()
        .expect("hash")
        .to_owned()
}

/// Writes an executable shell script and returns its path.
pub fn script(dir: &Path, name: &str, body: &str) -> PathBuf {
    use std::os::unix::fs::PermissionsExt;
    let path = dir.join(name);
    std::fs::write(&path, format!("#!/bin/sh\n{body}\n")).expect("write script");
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).expect("chmod script");
    path
}

impl TestAgent {
    /// Starts a new stub on the prefix of an agent that has already exited,
    /// keeping its identity, state and installed builds.
    pub fn restart(old: TestAgent) -> TestAgent {
        TestAgent::restart_env(old, &[])
    }

    /// Like [`TestAgent::restart`], with extra environment variables.
    pub fn restart_env(old: TestAgent, env: &[(&str, &str)]) -> TestAgent {
        let TestAgent { prefix, proc } = old;
        let log = format!("stub.{}.log", proc.child.id());
        drop(proc);
        let proc = spawn_stub(prefix.path(), &log, env);
        TestAgent { prefix, proc }
    }
}

/// A plain static file server (`python3 -m http.server`) on loopback,
/// serving `dir`: no Range, no ETag, nothing Outrider-specific.
#[derive(Debug)]
pub struct StaticServer {
    pub url: String,
    pub proc: Proc,
}

impl StaticServer {
    /// Serves `dir` on an ephemeral port and waits until it listens.
    pub fn serve(dir: &Path, log: PathBuf) -> StaticServer {
        let mut cmd = Command::new("python3");
        cmd.args([
            "-u",
            "-m",
            "http.server",
            "0",
            "--bind",
            "127.0.0.1",
            "--directory",
        ])
        .arg(dir);
        let proc = Proc::spawn(cmd, log);
        let port = wait_until("the static server to listen", secs(20), || {
            let log = proc.log();
            let rest = log.split(" port ").nth(1)?;
            rest.split(|c: char| !c.is_ascii_digit())
                .next()?
                .parse::<u16>()
                .ok()
        });
        StaticServer {
            url: format!("http://127.0.0.1:{port}"),
            proc,
        }
    }
}
