//! A private PostgreSQL cluster for tests: no Docker, no download, the
//! PostgreSQL the machine has installed (`tests/deps` installs Debian's
//! `postgresql`).
//!
//! [`Cluster::shared`] starts one cluster per test binary, lazily, the first
//! time a test asks; [`Cluster::database`] gives every test a fresh,
//! empty database in it (`CREATE DATABASE test_N`), so tests run in
//! parallel without seeing each other's rows and the cluster's start (about
//! a second) is paid once.
//!
//! The cluster:
//! - lives in a temporary directory: `data/` (initdb), `log`, and the
//!   Unix socket; it listens on no TCP port (`listen_addresses=''`), so
//!   nothing else on the machine can reach it and no port can collide;
//! - trades durability for speed (`fsync=off`, `synchronous_commit=off`,
//!   `full_page_writes=off`, `initdb --no-sync`): a crash loses a test
//!   database, nothing more;
//! - authenticates by trust as the superuser [`SUPERUSER`].
//!
//! `initdb` and `pg_ctl` refuse to run as root. Run as root (CI is), the
//! directory is given to the `postgres` system user the package creates
//! and both run as that user through `setpriv` (so the temporary directory's
//! parents must let that user through: the default `/tmp` does, a
//! `TMPDIR` under `/root` does not); as any other user they run as that
//! user.
//!
//! Removal: a cluster held in a `static` is never dropped, so every
//! cluster has a watchdog (`sh`) reading a pipe the test process holds the
//! other end of. When the process exits, however it exits (tests done, a
//! panic, `kill -9`), the pipe closes and the watchdog stops the cluster
//! (`pg_ctl stop -m immediate`) and deletes its directory. Dropping a
//! [`Cluster`] closes the pipe and waits for the watchdog.

use std::io;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, OnceLock};

/// The cluster's superuser, trusted on its socket.
pub const SUPERUSER: &str = "outrider";

/// The port number in the socket's name (`.s.PGSQL.5432`): each cluster
/// has its own socket directory, so every cluster without TCP can use the
/// default.
const PORT: u16 = 5432;

/// A server certificate and its key (PEM) for [`Cluster::start_tls`].
#[derive(Clone, Copy, Debug)]
pub struct TlsFiles<'a> {
    pub cert_pem: &'a str,
    pub key_pem: &'a str,
}

/// Where Debian installs each major version's server binaries.
const DEBIAN_BINDIRS: &str = "/usr/lib/postgresql";

/// Why a cluster or a database could not be had.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    #[error(
        "no PostgreSQL server binaries (initdb) found: set OUTRIDER_PG_BINDIR, or install them with tests/deps (Debian package postgresql)"
    )]
    NoBinaries,
    #[error(
        "running as root, but there is no `postgres` user in /etc/passwd to run initdb as (the postgresql package creates it)"
    )]
    NoPostgresUser,
    #[error("{what}: {source}")]
    Io {
        what: String,
        #[source]
        source: io::Error,
    },
    #[error("{what} failed ({status}): {output}")]
    Command {
        what: String,
        status: std::process::ExitStatus,
        output: String,
    },
    #[error("connecting to the test cluster at {socket_dir}: {source}")]
    Connect {
        socket_dir: PathBuf,
        #[source]
        source: tokio_postgres::Error,
    },
    #[error("creating database {name}: {source}")]
    CreateDatabase {
        name: String,
        #[source]
        source: tokio_postgres::Error,
    },
}

/// A running private cluster; see the crate's documentation.
#[derive(Debug)]
pub struct Cluster {
    dir: PathBuf,
    /// The port in the socket's name, and on loopback for a TLS cluster.
    port: u16,
    /// The watchdog; its stdin is the pipe whose closing removes the cluster.
    watchdog: Mutex<Option<Child>>,
    next_db: AtomicU64,
}

/// A fresh database in a [`Cluster`], empty, owned by [`SUPERUSER`].
#[derive(Clone, Debug)]
pub struct TestDb {
    pub name: String,
    /// Where it is: connect with `config.connect(tokio_postgres::NoTls)`.
    pub config: tokio_postgres::Config,
    socket_dir: PathBuf,
    port: u16,
}

impl TestDb {
    /// The database as a libpq key/value connection string, for another
    /// process (a server under test).
    pub fn conninfo(&self) -> String {
        format!(
            "host={} port={} user={SUPERUSER} dbname={}",
            self.socket_dir.display(),
            self.port,
            self.name
        )
    }
}

impl Cluster {
    /// The test binary's cluster, started on the first call. Every later
    /// call returns the same cluster, or the same start-up error.
    pub fn shared() -> Result<&'static Cluster, &'static Error> {
        static SHARED: OnceLock<Result<Cluster, Error>> = OnceLock::new();
        SHARED.get_or_init(Cluster::start).as_ref()
    }

    /// Starts a new private cluster (initdb, then `pg_ctl start`), removed
    /// when dropped or when the process exits. Blocks for about a second.
    pub fn start() -> Result<Cluster, Error> {
        Cluster::start_with(None)
    }

    /// [`Cluster::start`], plus TLS with `tls` on a free port of 127.0.0.1
    /// ([`Cluster::tcp_config`]); PostgreSQL speaks TLS on TCP only.
    pub fn start_tls(tls: TlsFiles<'_>) -> Result<Cluster, Error> {
        Cluster::start_with(Some(tls))
    }

    fn start_with(tls: Option<TlsFiles<'_>>) -> Result<Cluster, Error> {
        let bindir = bindir()?;
        let dir = tempfile::Builder::new()
            .prefix("outrider-pg-")
            .tempdir()
            .map_err(|e| io_error("creating the cluster's directory", e))?
            // The watchdog deletes it; see the crate's documentation.
            .keep();
        let as_user = run_as()?;
        if let Some((uid, gid)) = as_user {
            std::os::unix::fs::chown(&dir, Some(uid), Some(gid))
                .map_err(|e| io_error(&format!("giving {} to postgres", dir.display()), e))?;
        }
        // The watchdog first: from here on, whatever fails, the directory
        // goes when this process does.
        let watchdog = watchdog(&bindir, &dir, as_user)?;
        let port = match tls {
            None => PORT,
            Some(_) => free_port()?,
        };
        let cluster = Cluster {
            dir: dir.clone(),
            port,
            watchdog: Mutex::new(Some(watchdog)),
            next_db: AtomicU64::new(1),
        };
        let data = dir.join("data");
        run(
            "initdb",
            privileged(&bindir.join("initdb"), as_user, &dir)
                .args(["-A", "trust", "-U", SUPERUSER, "-E", "UTF8", "--locale=C"])
                .arg("--no-sync")
                .arg("-D")
                .arg(&data),
        )?;
        let mut options = format!(
            "-k '{}' -p {port} -c fsync=off -c synchronous_commit=off \
             -c full_page_writes=off -c max_connections=200",
            dir.display()
        );
        match tls {
            None => options.push_str(" -c listen_addresses=''"),
            Some(files) => {
                let (cert, key) = (dir.join("server.crt"), dir.join("server.key"));
                write_private(&cert, files.cert_pem, as_user)?;
                write_private(&key, files.key_pem, as_user)?;
                options.push_str(&format!(
                    " -c listen_addresses=127.0.0.1 -c ssl=on -c ssl_cert_file='{}' -c ssl_key_file='{}'",
                    cert.display(),
                    key.display()
                ));
            }
        }
        run(
            "pg_ctl start",
            privileged(&bindir.join("pg_ctl"), as_user, &dir)
                .args(["start", "-w", "-t", "60", "-o", &options, "-D"])
                .arg(&data)
                .arg("-l")
                .arg(dir.join("log")),
        )?;
        Ok(cluster)
    }

    /// Stops the cluster's server (`pg_ctl stop -m fast`: sessions are
    /// cut, as in a restart of a production server) and keeps its data, for
    /// tests of clients riding out an outage; [`Cluster::resume`] starts it
    /// again.
    pub fn pause(&self) -> Result<(), Error> {
        let (bindir, as_user) = (bindir()?, run_as()?);
        run(
            "pg_ctl stop",
            privileged(&bindir.join("pg_ctl"), as_user, &self.dir)
                .args(["stop", "-m", "fast", "-w", "-t", "60", "-D"])
                .arg(self.dir.join("data")),
        )
    }

    /// Starts the server [`Cluster::pause`] stopped, with the options of
    /// its first start (`pg_ctl` keeps them in `postmaster.opts`).
    pub fn resume(&self) -> Result<(), Error> {
        let (bindir, as_user) = (bindir()?, run_as()?);
        let opts = std::fs::read_to_string(self.dir.join("data/postmaster.opts"))
            .map_err(|e| io_error("reading postmaster.opts", e))?;
        // "<postgres binary> <option> <option>…": the options after the
        // binary, as `pg_ctl start -o` takes them.
        let options = opts
            .trim()
            .split_once(' ')
            .map_or("", |(_, rest)| rest)
            .to_owned();
        run(
            "pg_ctl start",
            privileged(&bindir.join("pg_ctl"), as_user, &self.dir)
                .args(["start", "-w", "-t", "60", "-o", &options, "-D"])
                .arg(self.dir.join("data"))
                .arg("-l")
                .arg(self.dir.join("log")),
        )
    }

    /// The directory holding the cluster's socket.
    pub fn socket_dir(&self) -> &Path {
        &self.dir
    }

    /// A connection configuration for database `dbname`, over the socket.
    pub fn config(&self, dbname: &str) -> tokio_postgres::Config {
        let mut config = tokio_postgres::Config::new();
        config
            .host_path(&self.dir)
            .port(self.port)
            .user(SUPERUSER)
            .dbname(dbname);
        config
    }

    /// A connection configuration for database `dbname` over TCP to
    /// 127.0.0.1, TLS required: for a cluster from [`Cluster::start_tls`].
    pub fn tcp_config(&self, dbname: &str) -> tokio_postgres::Config {
        let mut config = tokio_postgres::Config::new();
        config
            .host("127.0.0.1")
            .port(self.port)
            .user(SUPERUSER)
            .dbname(dbname)
            .ssl_mode(tokio_postgres::config::SslMode::Require);
        config
    }

    /// Creates a fresh, empty database for one test. Needs a tokio runtime
    /// (the connection that creates it runs on it).
    pub async fn database(&self) -> Result<TestDb, Error> {
        let name = format!("test_{}", self.next_db.fetch_add(1, Ordering::Relaxed));
        let (client, connection) = self
            .config("postgres")
            .connect(tokio_postgres::NoTls)
            .await
            .map_err(|source| Error::Connect {
                socket_dir: self.dir.clone(),
                source,
            })?;
        let driver = tokio::spawn(connection);
        let created = client
            .batch_execute(&format!("CREATE DATABASE {name}"))
            .await;
        drop(client);
        // The connection ends once its client is gone.
        let _ = driver.await;
        created.map_err(|source| Error::CreateDatabase {
            name: name.clone(),
            source,
        })?;
        Ok(TestDb {
            config: self.config(&name),
            name,
            socket_dir: self.dir.clone(),
            port: self.port,
        })
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        let watchdog = self
            .watchdog
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .take();
        if let Some(mut watchdog) = watchdog {
            // Closing its stdin is the signal; then it stops and deletes.
            drop(watchdog.stdin.take());
            let _ = watchdog.wait();
        }
    }
}

/// The watchdog process: waits for end of input on its stdin, then stops
/// the cluster in `dir` and deletes `dir`. It ignores the signals a
/// Ctrl-C in the terminal sends to the whole process group, so it outlives
/// the test process long enough to clean up.
fn watchdog(bindir: &Path, dir: &Path, as_user: Option<(u32, u32)>) -> Result<Child, Error> {
    const SCRIPT: &str = r#"
        trap '' INT TERM HUP
        bindir=$1 dir=$2
        shift 2
        cat >/dev/null
        cd "$dir" || exit 1
        if [ -f "$dir/data/postmaster.pid" ]; then
            "$@" "$bindir/pg_ctl" stop -m immediate -w -D "$dir/data" >/dev/null 2>&1
        fi
        cd / && rm -rf "$dir"
    "#;
    let mut command = Command::new("sh");
    command.arg("-c").arg(SCRIPT).arg("sh").arg(bindir).arg(dir);
    if let Some((uid, gid)) = as_user {
        command.args(setpriv_args(uid, gid));
    }
    command
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .map_err(|e| io_error("starting the cluster's watchdog (sh)", e))
}

/// A port of 127.0.0.1 free a moment ago (the kernel's pick).
fn free_port() -> Result<u16, Error> {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .map_err(|e| io_error("finding a free port on 127.0.0.1", e))
}

/// Writes `text` to `path` readable by its owner only, the owner being
/// the postgres user when `as_user` says so (PostgreSQL refuses a key
/// others can read).
fn write_private(path: &Path, text: &str, as_user: Option<(u32, u32)>) -> Result<(), Error> {
    use std::os::unix::fs::PermissionsExt;
    let what = format!("writing {}", path.display());
    std::fs::write(path, text).map_err(|e| io_error(&what, e))?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))
        .map_err(|e| io_error(&what, e))?;
    if let Some((uid, gid)) = as_user {
        std::os::unix::fs::chown(path, Some(uid), Some(gid)).map_err(|e| io_error(&what, e))?;
    }
    Ok(())
}

/// `setpriv` arguments that run the rest of the command as `uid`:`gid`.
fn setpriv_args(uid: u32, gid: u32) -> [String; 4] {
    [
        "setpriv".into(),
        format!("--reuid={uid}"),
        format!("--regid={gid}"),
        "--clear-groups".into(),
    ]
}

/// A command running `program`, as the postgres user when `as_user` says
/// so, in `dir` (a directory that user can enter: initdb and pg_ctl
/// complain about a working directory they cannot read).
fn privileged(program: &Path, as_user: Option<(u32, u32)>, dir: &Path) -> Command {
    let mut command = match as_user {
        Some((uid, gid)) => {
            let [setpriv, rest @ ..] = setpriv_args(uid, gid);
            let mut c = Command::new(setpriv);
            c.args(rest).arg("--").arg(program);
            c
        }
        None => Command::new(program),
    };
    command.current_dir(dir).stdin(Stdio::null());
    command
}

/// Runs `command` to completion; its output becomes the error's text.
fn run(what: &str, command: &mut Command) -> Result<(), Error> {
    let out = command
        .output()
        .map_err(|e| io_error(&format!("running {what}"), e))?;
    if out.status.success() {
        return Ok(());
    }
    Err(Error::Command {
        what: what.into(),
        status: out.status,
        output: format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ),
    })
}

fn io_error(what: &str, source: io::Error) -> Error {
    Error::Io {
        what: what.into(),
        source,
    }
}

/// The uid and gid to run the cluster as: `None` to run as ourselves,
/// the `postgres` user's when we are root.
fn run_as() -> Result<Option<(u32, u32)>, Error> {
    // The owner of /proc/self is the process's effective uid.
    let euid = std::fs::metadata("/proc/self")
        .map_err(|e| io_error("reading /proc/self", e))?
        .uid();
    if euid != 0 {
        return Ok(None);
    }
    let passwd =
        std::fs::read_to_string("/etc/passwd").map_err(|e| io_error("reading /etc/passwd", e))?;
    passwd_ids(&passwd, "postgres")
        .map(Some)
        .ok_or(Error::NoPostgresUser)
}

/// The uid and gid of `user` in the text of an `/etc/passwd`.
fn passwd_ids(passwd: &str, user: &str) -> Option<(u32, u32)> {
    passwd.lines().find_map(|line| {
        let mut fields = line.split(':');
        if fields.next()? != user {
            return None;
        }
        let _password = fields.next()?;
        Some((fields.next()?.parse().ok()?, fields.next()?.parse().ok()?))
    })
}

/// The directory holding `initdb` and `pg_ctl`: `$OUTRIDER_PG_BINDIR`, else
/// `pg_config --bindir` (when it has initdb: Debian's pg_config may belong
/// to the client library only), else the newest `/usr/lib/postgresql/*/bin`.
fn bindir() -> Result<PathBuf, Error> {
    if let Some(dir) = std::env::var_os("OUTRIDER_PG_BINDIR") {
        return Ok(dir.into());
    }
    let from_pg_config = Command::new("pg_config")
        .arg("--bindir")
        .stderr(Stdio::null())
        .output()
        .ok()
        .filter(|out| out.status.success())
        .map(|out| PathBuf::from(String::from_utf8_lossy(&out.stdout).trim()));
    if let Some(dir) = from_pg_config.filter(|d| d.join("initdb").is_file()) {
        return Ok(dir);
    }
    let versions = std::fs::read_dir(DEBIAN_BINDIRS)
        .map_err(|_| Error::NoBinaries)?
        .filter_map(|entry| entry.ok()?.file_name().to_str()?.parse::<u32>().ok());
    newest_with_initdb(versions, Path::new(DEBIAN_BINDIRS)).ok_or(Error::NoBinaries)
}

/// The bin directory of the newest of `versions` under `root` that has initdb.
fn newest_with_initdb(versions: impl Iterator<Item = u32>, root: &Path) -> Option<PathBuf> {
    let mut versions: Vec<u32> = versions.collect();
    versions.sort_unstable_by(|a, b| b.cmp(a));
    versions
        .into_iter()
        .map(|v| root.join(v.to_string()).join("bin"))
        .find(|bin| bin.join("initdb").is_file())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_postgres_user_is_found_in_passwd() {
        let passwd = "root:x:0:0:root:/root:/bin/bash\n\
                      postgresql:x:7:7::/:/bin/sh\n\
                      postgres:x:101:104:PostgreSQL administrator,,,:/var/lib/postgresql:/bin/bash\n";
        // (user, expected)
        let cases = [
            ("postgres", Some((101, 104))),
            ("root", Some((0, 0))),
            ("postgre", None),
            ("nobody", None),
        ];
        for (user, expected) in cases {
            assert_eq!(passwd_ids(passwd, user), expected, "{user}");
        }
        assert_eq!(passwd_ids("postgres:x:abc:1:::", "postgres"), None);
    }

    #[test]
    fn the_newest_version_with_initdb_is_chosen() {
        let root = tempfile::tempdir().unwrap();
        for (version, with_initdb) in [(13, true), (15, true), (16, false)] {
            let bin = root.path().join(version.to_string()).join("bin");
            std::fs::create_dir_all(&bin).unwrap();
            if with_initdb {
                std::fs::write(bin.join("initdb"), "").unwrap();
            }
        }
        let found = newest_with_initdb([13, 16, 15].into_iter(), root.path());
        assert_eq!(found, Some(root.path().join("15/bin")));
        assert_eq!(newest_with_initdb([16].into_iter(), root.path()), None);
    }

    #[tokio::test]
    async fn databases_are_fresh_and_separate_and_the_cluster_is_removed_on_drop() {
        let cluster = Cluster::start().unwrap();
        let dir = cluster.socket_dir().to_owned();
        let (a, b) = (
            cluster.database().await.unwrap(),
            cluster.database().await.unwrap(),
        );
        assert_ne!(a.name, b.name);
        let (client, connection) = a.config.connect(tokio_postgres::NoTls).await.unwrap();
        let driver = tokio::spawn(connection);
        client
            .batch_execute("CREATE TABLE t (x INT); INSERT INTO t VALUES (7)")
            .await
            .unwrap();
        let row = client.query_one("SELECT x FROM t", &[]).await.unwrap();
        assert_eq!(row.get::<_, i32>(0), 7);
        // Over the Unix socket only: no TCP listener.
        let listen = client
            .query_one("SHOW listen_addresses", &[])
            .await
            .unwrap();
        assert_eq!(listen.get::<_, String>(0), "");
        drop(client);
        driver.await.unwrap().unwrap();
        let (client, connection) = b.config.connect(tokio_postgres::NoTls).await.unwrap();
        let driver = tokio::spawn(connection);
        let err = client.query_one("SELECT x FROM t", &[]).await.unwrap_err();
        assert_eq!(
            err.code(),
            Some(&tokio_postgres::error::SqlState::UNDEFINED_TABLE),
            "{err:?}"
        );
        drop(client);
        driver.await.unwrap().unwrap();

        assert!(dir.join(".s.PGSQL.5432").exists());
        drop(cluster);
        assert!(!dir.exists(), "{} left behind", dir.display());
    }

    #[tokio::test]
    async fn the_shared_cluster_is_one_cluster() {
        let first = Cluster::shared().unwrap();
        let second = Cluster::shared().unwrap();
        assert!(std::ptr::eq(first, second));
        let db = first.database().await.unwrap();
        assert!(db.conninfo().contains(&format!("dbname={}", db.name)));
    }
}
