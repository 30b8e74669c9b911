//! The server under test: a real `outrider-server` binary started as a child
//! process with its own data directory, its memory read from `/proc`, its
//! admin API called over plain HTTP/1.1, and its SQLite store read after it
//! stopped, to count lost and duplicated data at the receiving end.

use std::net::SocketAddr;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use std::net::Ipv4Addr;
use std::sync::Arc;

use anyhow::Context;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpSocket;
use tokio_rustls::TlsConnector;
use tokio_rustls::rustls;

/// A connection to the server, plain or TLS.
pub trait Stream: AsyncRead + AsyncWrite + Unpin + Send {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send> Stream for T {}

/// How to reach a server started with `--tls-cert`: a connector trusting
/// its self-signed certificate (made by [`Tls::generate`]).
#[derive(Clone)]
pub struct Tls {
    pub connector: TlsConnector,
    /// PEM files for the server's `--tls-cert` and `--tls-key`.
    pub cert_path: std::path::PathBuf,
    pub key_path: std::path::PathBuf,
}

impl std::fmt::Debug for Tls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Tls")
            .field("cert_path", &self.cert_path)
            .finish_non_exhaustive()
    }
}

impl Tls {
    /// A self-signed certificate for 127.0.0.1 in `dir`, and a client
    /// trusting only it.
    pub fn generate(dir: &Path) -> anyhow::Result<Tls> {
        let cert = rcgen::generate_simple_self_signed(vec!["127.0.0.1".into()])?;
        let cert_path = dir.join("tls-cert.pem");
        let key_path = dir.join("tls-key.pem");
        std::fs::write(&cert_path, cert.cert.pem())?;
        std::fs::write(&key_path, cert.signing_key.serialize_pem())?;
        let mut roots = rustls::RootCertStore::empty();
        roots.add(cert.cert.der().clone())?;
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let config = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()?
            .with_root_certificates(roots)
            .with_no_client_auth();
        Ok(Tls {
            connector: TlsConnector::from(Arc::new(config)),
            cert_path,
            key_path,
        })
    }
}

/// Connects to `server` from `source` (any loopback address; `None`: the
/// kernel's choice), with TLS when `tls` is given.
pub async fn dial(
    source: Option<Ipv4Addr>,
    server: SocketAddr,
    tls: Option<&Tls>,
) -> std::io::Result<Box<dyn Stream>> {
    let socket = TcpSocket::new_v4()?;
    if let Some(source) = source {
        socket.bind(SocketAddr::from((source, 0)))?;
    }
    let stream = socket.connect(server).await?;
    stream.set_nodelay(true)?;
    match tls {
        None => Ok(Box::new(stream)),
        Some(tls) => {
            let name = rustls::pki_types::ServerName::IpAddress(server.ip().into());
            Ok(Box::new(tls.connector.connect(name, stream).await?))
        }
    }
}

/// A running server child process.
#[derive(Debug)]
pub struct ServerProcess {
    pub addr: SocketAddr,
    pub admin_token: String,
    /// Set when the server speaks HTTPS only.
    pub tls: Option<Tls>,
    child: Child,
}

/// Memory of a process, KiB.
#[derive(Clone, Copy, Debug, Default)]
pub struct Memory {
    pub rss_kib: u64,
    pub hwm_kib: u64,
    /// Threads of the process (tokio workers plus its blocking pool).
    pub threads: u64,
}

impl ServerProcess {
    /// Starts `bin` on 127.0.0.1 (ephemeral port) with data in `data_dir`
    /// and waits until it listens. `extra` are more flags.
    pub fn start(
        bin: &Path,
        data_dir: &Path,
        token: &str,
        extra: &[String],
    ) -> anyhow::Result<ServerProcess> {
        let ready = data_dir.join("ready");
        let log = std::fs::File::create(data_dir.join("server.log"))?;
        // The dashboard on a free port unless `extra` names one.
        let dashboard = if extra.iter().any(|a| a.starts_with("--dashboard-listen")) {
            &[][..]
        } else {
            &["--dashboard-listen", "127.0.0.1:0"][..]
        };
        let child = Command::new(bin)
            .arg("--data-dir")
            .arg(data_dir)
            .args(dashboard)
            .args([
                "--listen",
                "127.0.0.1:0",
                "--enrollment-token",
                token,
                "--ready-file",
            ])
            .arg(&ready)
            .args(extra)
            .env("RUST_LOG", "warn")
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()
            .with_context(|| format!("starting {}", bin.display()))?;
        let mut server = ServerProcess {
            addr: "127.0.0.1:0".parse()?,
            admin_token: String::new(),
            tls: None,
            child,
        };
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Ok(text) = std::fs::read_to_string(&ready) {
                server.addr = text.trim().parse().context("ready file holds an address")?;
                break;
            }
            if let Some(status) = server.child.try_wait()? {
                anyhow::bail!(
                    "server exited during start ({status}); see {}/server.log",
                    data_dir.display()
                );
            }
            anyhow::ensure!(Instant::now() < deadline, "server not ready within 30 s");
            std::thread::sleep(Duration::from_millis(50));
        }
        server.admin_token = std::fs::read_to_string(data_dir.join("admin.token"))?
            .trim()
            .to_owned();
        Ok(server)
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// CPU time (user + system) the server has used so far, in seconds.
    pub fn cpu_secs(&self) -> anyhow::Result<f64> {
        cpu_secs_of(&format!("/proc/{}/stat", self.pid()))
    }

    /// `VmRSS`, `VmHWM` and thread count of the server now.
    pub fn memory(&self) -> anyhow::Result<Memory> {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.pid()))?;
        let field = |name: &str| {
            status
                .lines()
                .find_map(|l| l.strip_prefix(name))
                .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
                .unwrap_or(0)
        };
        Ok(Memory {
            rss_kib: field("VmRSS:"),
            hwm_kib: field("VmHWM:"),
            threads: field("Threads:"),
        })
    }

    /// Asks the server to stop (SIGTERM) and waits up to 30 s, then kills it.
    pub fn stop(mut self) -> anyhow::Result<()> {
        let pid = libc::pid_t::try_from(self.pid())?;
        // SAFETY: kill(2) with a pid of our own child that has not been
        // waited for yet, so the pid cannot have been reused.
        #[allow(unsafe_code)]
        let rc = unsafe { libc::kill(pid, libc::SIGTERM) };
        anyhow::ensure!(rc == 0, "SIGTERM: {}", std::io::Error::last_os_error());
        let deadline = Instant::now() + Duration::from_secs(30);
        while Instant::now() < deadline {
            if self.child.try_wait()?.is_some() {
                return Ok(());
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        self.child.kill()?;
        self.child.wait()?;
        anyhow::bail!("server did not stop within 30 s of SIGTERM; killed")
    }

    /// Kills the server with SIGKILL (no shutdown at all, as a crashed
    /// host) and reaps it.
    pub fn kill(mut self) -> anyhow::Result<()> {
        self.child.kill()?;
        self.child.wait()?;
        Ok(())
    }

    /// Defines `count` checks (`/bin/true` every 10 s) named `base`,
    /// `base-1`, `base-2` …, and returns their names.
    ///
    /// Fails when the server refuses one.
    pub async fn define_checks(&self, base: &str, count: u16) -> anyhow::Result<Vec<String>> {
        let checks: Vec<String> = (0..count)
            .map(|i| match i {
                0 => base.to_owned(),
                i => format!("{base}-{i}"),
            })
            .collect();
        for check in &checks {
            let (status, body) = self
                .request(
                    "PUT",
                    &format!("/api/v1/checks/{check}"),
                    Some(r#"{"command":["/bin/true"],"interval_secs":10,"timeout_secs":5}"#),
                )
                .await?;
            anyhow::ensure!(status == 200, "creating check {check}: {status} {body}");
        }
        Ok(checks)
    }

    /// One admin request; returns status and body.
    pub async fn request(
        &self,
        method: &str,
        path: &str,
        body: Option<&str>,
    ) -> anyhow::Result<(u16, String)> {
        let body = body.unwrap_or("");
        let req = format!(
            "{method} {path} HTTP/1.1\r\nHost: {}\r\nConnection: close\r\nAuthorization: Bearer {}\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
            self.addr,
            self.admin_token,
            body.len()
        );
        let (status, body) = exchange(None, self.addr, &req, self.tls.as_ref()).await?;
        Ok((status, String::from_utf8_lossy(&body).into_owned()))
    }
}

/// A server still running when its `ServerProcess` goes (a phase failed,
/// or the hard time cap dropped the run) is killed, so the harness never
/// leaves nodes behind.
impl Drop for ServerProcess {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// A public `GET` (no token) from `source` (or any local address), as a
/// stub fetches manifests and blobs; returns status and body.
pub async fn http_get(
    source: Option<Ipv4Addr>,
    addr: SocketAddr,
    path: &str,
) -> anyhow::Result<(u16, Vec<u8>)> {
    let req = format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n");
    exchange(source, addr, &req, None).await
}

/// Sends one HTTP/1.1 request with `Connection: close` and reads the whole
/// response: status and body (no chunked encoding: the server sends
/// `Content-Length` for these).
async fn exchange(
    source: Option<Ipv4Addr>,
    addr: SocketAddr,
    req: &str,
    tls: Option<&Tls>,
) -> anyhow::Result<(u16, Vec<u8>)> {
    let mut stream = dial(source, addr, tls).await?;
    stream.write_all(req.as_bytes()).await?;
    let mut buf = Vec::new();
    stream.read_to_end(&mut buf).await?;
    let split = buf
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .context("HTTP response without header")?;
    let head = String::from_utf8_lossy(&buf[..split]);
    let status = head
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .context("HTTP status line")?;
    Ok((status, buf[split + 4..].to_vec()))
}

/// What the stopped server's store holds, measured against what the agents
/// were told (their acked seqs).
#[derive(Debug, Default)]
pub struct Stored {
    /// Results stored, all agents.
    pub results: u64,
    /// Sequence numbers at or below an agent's acked seq that are not
    /// stored: acked data the server lost.
    pub lost: u64,
    pub points: u64,
}

/// Reads the stopped server's database; `acked` is each agent's
/// (fingerprint, highest acked seq).
pub fn read_store(data_dir: &Path, acked: &[(String, u64)]) -> anyhow::Result<Stored> {
    let db = rusqlite::Connection::open_with_flags(
        data_dir.join("outrider.db"),
        rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY,
    )?;
    let mut stored = Stored {
        results: db.query_row("SELECT COUNT(*) FROM results", [], |r| r.get::<_, i64>(0))? as u64,
        points: db.query_row("SELECT COUNT(*) FROM points", [], |r| r.get::<_, i64>(0))? as u64,
        lost: 0,
    };
    // Seqs are assigned 1, 2, 3, … per agent, so the acked ones are exactly
    // 1..=acked: count those present.
    let mut stmt =
        db.prepare("SELECT COUNT(*) FROM results WHERE fingerprint = ?1 AND seq BETWEEN 1 AND ?2")?;
    for (fp, up_to) in acked {
        let present: i64 = stmt.query_row(rusqlite::params![fp, *up_to as i64], |r| r.get(0))?;
        stored.lost += up_to.saturating_sub(present as u64);
    }
    Ok(stored)
}

/// CPU time (user + system) this harness has used so far, in seconds.
pub fn own_cpu_secs() -> anyhow::Result<f64> {
    cpu_secs_of("/proc/self/stat")
}

/// `utime + stime` of a `/proc/PID/stat` file, in seconds. The fields
/// after the command name (which may hold spaces, hence the last `)`) are
/// state, then 10 more, then utime and stime in clock ticks.
fn cpu_secs_of(path: &str) -> anyhow::Result<f64> {
    let stat = std::fs::read_to_string(path)?;
    let rest = stat
        .rsplit_once(')')
        .map(|(_, rest)| rest)
        .with_context(|| format!("{path} has no command name"))?;
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let ticks = |i: usize| -> anyhow::Result<u64> {
        fields
            .get(i)
            .and_then(|f| f.parse().ok())
            .with_context(|| format!("{path}: field {} is not a number", i + 3))
    };
    let used = ticks(11)? + ticks(12)?;
    // SAFETY: sysconf only reads a configuration value.
    #[allow(unsafe_code)]
    let per_sec = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    anyhow::ensure!(per_sec > 0, "sysconf(_SC_CLK_TCK) failed");
    Ok(used as f64 / per_sec as f64)
}
