//! End-to-end tests of the `outrider` binary against a real release
//! repository (the update-server routers on a loopback socket).

mod fleet;
mod release;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::{Arc, Mutex};

use axum::Json;
use axum::extract::{Request, State};
use axum::middleware::{Next, from_fn_with_state};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use outrider_update_server::{ReleaseStore, admin_router, public_router};

/// Bodies served instead of the real answer, by request path (query ignored).
type Overrides = Arc<Mutex<HashMap<String, Vec<u8>>>>;

/// A release repository on 127.0.0.1, with a canned `GET /api/v1/agents`.
/// [`Repo::serve_instead`] turns it into a lying server for attack tests.
#[derive(Debug)]
pub struct Repo {
    pub addr: SocketAddr,
    overrides: Overrides,
    pub home: tempfile::TempDir,
    _store: tempfile::TempDir,
    // Dropping the runtime stops the server.
    _runtime: tokio::runtime::Runtime,
}

impl Repo {
    /// Starts a server whose fleet is `agents` (rows of `GET /api/v1/agents`).
    pub fn start(agents: serde_json::Value) -> Repo {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .unwrap();
        let store_dir = tempfile::tempdir().unwrap();
        let store = Arc::new(ReleaseStore::open(store_dir.path()).unwrap());
        let overrides = Overrides::default();
        let app = public_router(store.clone())
            .merge(admin_router(store))
            .route(
                "/api/v1/agents",
                get(move || {
                    let agents = agents.clone();
                    async move { Json(agents) }
                }),
            )
            .layer(from_fn_with_state(overrides.clone(), serve_override));
        let listener = runtime
            .block_on(tokio::net::TcpListener::bind("127.0.0.1:0"))
            .unwrap();
        let addr = listener.local_addr().unwrap();
        runtime.spawn(async move { axum::serve(listener, app).await });
        Repo {
            addr,
            overrides,
            home: tempfile::tempdir().unwrap(),
            _store: store_dir,
            _runtime: runtime,
        }
    }

    /// From now on, `GET path` (any query) answers `body` with 200 instead
    /// of what the store holds.
    pub fn serve_instead(&self, path: &str, body: Vec<u8>) {
        self.overrides.lock().unwrap().insert(path.to_owned(), body);
    }

    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    pub fn keys(&self) -> PathBuf {
        self.home.path().join("keys")
    }

    /// Runs `outrider --server <repo> --token t <args>` with `OUTRIDER_HOME`
    /// in a temp dir, asserting success; returns stdout.
    pub fn cli(&self, args: &[&str]) -> String {
        let out = self.cli_output(args);
        assert!(
            out.status.success(),
            "outrider {args:?} failed: {}\n{}",
            String::from_utf8_lossy(&out.stderr),
            String::from_utf8_lossy(&out.stdout)
        );
        String::from_utf8(out.stdout).unwrap()
    }

    pub fn cli_output(&self, args: &[&str]) -> Output {
        Command::new(env!("CARGO_BIN_EXE_outrider"))
            .args(["--server", &self.url(), "--token", "t"])
            .args(args)
            .env("OUTRIDER_HOME", self.home.path())
            .output()
            .unwrap()
    }

    /// `GET path` from the repository.
    pub fn get(&self, path: &str) -> Vec<u8> {
        fetch(&format!("{}{path}", self.url()))
    }
}

async fn serve_override(State(overrides): State<Overrides>, req: Request, next: Next) -> Response {
    let body = overrides.lock().unwrap().get(req.uri().path()).cloned();
    match body {
        Some(body) => body.into_response(),
        None => next.run(req).await,
    }
}

pub fn fetch(url: &str) -> Vec<u8> {
    let mut body = Vec::new();
    std::io::Read::read_to_end(&mut ureq::get(url).call().unwrap().into_reader(), &mut body)
        .unwrap();
    body
}

/// `len` bytes of deterministic noise (zstd cannot shrink it).
pub fn noise(len: usize, seed: u64) -> Vec<u8> {
    let mut x = seed
        .wrapping_mul(6364136223846793005)
        .wrapping_add(1442695040888963407);
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect()
}

pub fn write(dir: &Path, name: &str, bytes: &[u8]) -> String {
    let path = dir.join(name);
    std::fs::write(&path, bytes).unwrap();
    path.to_str().unwrap().to_owned()
}
