//! The routers on a real loopback socket, spoken to with a minimal HTTP/1.1 client.

use std::net::SocketAddr;
use std::sync::Arc;

use outrider_signing::sha256;
use outrider_update_server::{ReleaseStore, admin_router, public_router};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

use crate::Keys;

/// A parsed response: status, lower-cased headers, body.
#[derive(Debug)]
struct Response {
    status: u16,
    headers: Vec<(String, String)>,
    body: Vec<u8>,
}

impl Response {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }

    fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body).unwrap()
    }
}

/// A server on 127.0.0.1:0 serving both routers over a store in `dir`.
async fn serve(dir: &std::path::Path) -> (SocketAddr, tokio::task::JoinHandle<()>) {
    let store = Arc::new(ReleaseStore::open(dir).unwrap());
    let app = public_router(store.clone()).merge(admin_router(store));
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let task = tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    (addr, task)
}

async fn request(
    addr: SocketAddr,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &[u8],
) -> Response {
    let mut stream = TcpStream::connect(addr).await.unwrap();
    let mut head = format!(
        "{method} {path} HTTP/1.1\r\nHost: test\r\nConnection: close\r\nContent-Length: {}\r\n",
        body.len()
    );
    for (name, value) in headers {
        head.push_str(&format!("{name}: {value}\r\n"));
    }
    head.push_str("\r\n");
    stream.write_all(head.as_bytes()).await.unwrap();
    stream.write_all(body).await.unwrap();
    let mut raw = Vec::new();
    stream.read_to_end(&mut raw).await.unwrap();

    let split = raw.windows(4).position(|w| w == b"\r\n\r\n").unwrap();
    let head = String::from_utf8(raw[..split].to_vec()).unwrap();
    let mut lines = head.split("\r\n");
    let status = lines
        .next()
        .unwrap()
        .split(' ')
        .nth(1)
        .unwrap()
        .parse()
        .unwrap();
    let headers: Vec<(String, String)> = lines
        .map(|l| {
            let (n, v) = l.split_once(':').unwrap();
            (n.trim().to_ascii_lowercase(), v.trim().to_owned())
        })
        .collect();
    let mut body = raw[split + 4..].to_vec();
    if headers
        .iter()
        .any(|(n, v)| n == "transfer-encoding" && v == "chunked")
    {
        body = dechunk(&body);
    }
    Response {
        status,
        headers,
        body,
    }
}

fn dechunk(mut raw: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    loop {
        let line_end = raw.windows(2).position(|w| w == b"\r\n").unwrap();
        let size = usize::from_str_radix(std::str::from_utf8(&raw[..line_end]).unwrap().trim(), 16)
            .unwrap();
        if size == 0 {
            return out;
        }
        out.extend_from_slice(&raw[line_end + 2..line_end + 2 + size]);
        raw = &raw[line_end + 2 + size + 2..];
    }
}

#[tokio::test]
async fn publish_and_fetch_over_http() {
    let dir = tempfile::tempdir().unwrap();
    let (addr, server) = serve(dir.path()).await;
    let keys = Keys::generate();
    let blob = vec![7u8; 300_000];
    let sha = sha256(&blob);

    let resp = request(addr, "GET", "/v1/updates/root.json", &[], b"").await;
    assert_eq!(resp.status, 404);
    assert!(resp.json()["error"].as_str().unwrap().contains("root"));

    let resp = request(addr, "PUT", "/api/v1/releases/root", &[], &keys.root_json).await;
    assert_eq!(
        resp.status,
        200,
        "{:?}",
        String::from_utf8_lossy(&resp.body)
    );
    let resp = request(addr, "GET", "/v1/updates/root.json", &[], b"").await;
    assert_eq!((resp.status, resp.body), (200, keys.root_json.clone()));

    // Manifest before its blob: 409.
    let manifest = keys.manifest("stable", 1, &blob);
    let resp = request(
        addr,
        "PUT",
        "/api/v1/releases/channels/stable/manifest",
        &[],
        &manifest,
    )
    .await;
    assert_eq!(resp.status, 409);
    assert!(
        resp.json()["error"]
            .as_str()
            .unwrap()
            .contains(&sha.to_string())
    );

    // Blob under the wrong name: 400.
    let wrong = format!("/api/v1/releases/blobs/{}", sha256(b"x"));
    assert_eq!(request(addr, "PUT", &wrong, &[], &blob).await.status, 400);

    let resp = request(
        addr,
        "PUT",
        &format!("/api/v1/releases/blobs/{sha}"),
        &[],
        &blob,
    )
    .await;
    assert_eq!(resp.status, 200);
    let resp = request(
        addr,
        "PUT",
        "/api/v1/releases/channels/stable/manifest",
        &[],
        &manifest,
    )
    .await;
    assert_eq!(resp.status, 200);
    assert_eq!(
        resp.json(),
        serde_json::json!({"channel": "stable", "sequence": 1})
    );

    let resp = request(
        addr,
        "GET",
        "/v1/updates/channels/stable/manifest.json",
        &[],
        b"",
    )
    .await;
    assert_eq!(resp.status, 200);
    assert_eq!(resp.header("cache-control"), Some("no-cache"));
    assert_eq!(resp.body, manifest);
    assert_eq!(
        request(
            addr,
            "GET",
            "/v1/updates/channels/beta/manifest.json",
            &[],
            b""
        )
        .await
        .status,
        404
    );

    let path = format!("/v1/updates/blobs/{sha}");
    let resp = request(addr, "GET", &path, &[], b"").await;
    assert_eq!(resp.status, 200);
    assert_eq!(
        resp.header("cache-control"),
        Some("public, max-age=31536000, immutable")
    );
    let etag = format!("\"{sha}\"");
    assert_eq!(resp.header("etag"), Some(etag.as_str()));
    assert_eq!(resp.header("content-length"), Some("300000"));
    assert_eq!(resp.body, blob);
    let resp = request(addr, "GET", &path, &[("If-None-Match", &etag)], b"").await;
    assert_eq!(resp.status, 304);

    let resp = request(addr, "GET", "/api/v1/releases/channels", &[], b"").await;
    assert_eq!(resp.status, 200);
    let list = resp.json();
    assert_eq!(list[0]["channel"], "stable");
    assert_eq!(list[0]["sequence"], 1);
    assert_eq!(list[0]["versions"]["x86_64-linux"], "1.0.1");

    server.abort();
}

#[tokio::test]
async fn bad_paths_and_bodies_get_clear_errors() {
    let dir = tempfile::tempdir().unwrap();
    let (addr, server) = serve(dir.path()).await;

    let resp = request(addr, "GET", "/v1/updates/blobs/not-a-sha", &[], b"").await;
    assert_eq!(resp.status, 400);
    assert!(resp.json()["error"].as_str().unwrap().contains("not-a-sha"));
    let missing = format!("/v1/updates/blobs/{}", sha256(b"missing"));
    assert_eq!(request(addr, "GET", &missing, &[], b"").await.status, 404);

    let resp = request(
        addr,
        "GET",
        "/v1/updates/channels/Bad_Name/manifest.json",
        &[],
        b"",
    )
    .await;
    assert_eq!(resp.status, 400);

    let resp = request(addr, "PUT", "/api/v1/releases/root", &[], b"garbage").await;
    assert_eq!(resp.status, 400);
    assert!(resp.json()["error"].as_str().unwrap().contains("malformed"));

    let keys = Keys::generate();
    let resp = request(
        addr,
        "PUT",
        "/api/v1/releases/channels/stable/manifest",
        &[],
        &keys.manifest("stable", 1, b"b"),
    )
    .await;
    assert_eq!(resp.status, 409);
    assert!(resp.json()["error"].as_str().unwrap().contains("root"));

    server.abort();
}

#[tokio::test]
async fn blobs_support_ranges_and_etags() {
    let dir = tempfile::tempdir().unwrap();
    let (addr, server) = serve(dir.path()).await;
    let blob: Vec<u8> = (0..1000u32).map(|i| (i % 251) as u8).collect();
    let sha = sha256(&blob);
    let put = format!("/api/v1/releases/blobs/{sha}");
    assert_eq!(request(addr, "PUT", &put, &[], &blob).await.status, 200);
    let path = format!("/v1/updates/blobs/{sha}");
    let etag = format!("\"{sha}\"");

    let resp = request(addr, "GET", &path, &[], b"").await;
    assert_eq!(resp.status, 200);
    assert_eq!(resp.header("accept-ranges"), Some("bytes"));

    for (range, first, last) in [
        ("bytes=10-19", 10usize, 19usize),
        ("bytes=990-", 990, 999),
        ("bytes=-5", 995, 999),
        ("bytes=900-5000", 900, 999),
    ] {
        let resp = request(addr, "GET", &path, &[("Range", range)], b"").await;
        assert_eq!(resp.status, 206, "{range}");
        assert_eq!(
            resp.header("content-range"),
            Some(format!("bytes {first}-{last}/1000").as_str()),
            "{range}"
        );
        let len = (last - first + 1).to_string();
        assert_eq!(resp.header("content-length"), Some(len.as_str()));
        assert_eq!(resp.header("etag"), Some(etag.as_str()));
        assert_eq!(resp.body, blob[first..=last], "{range}");
    }

    let resp = request(addr, "GET", &path, &[("Range", "bytes=1000-")], b"").await;
    assert_eq!(resp.status, 416);
    assert_eq!(resp.header("content-range"), Some("bytes */1000"));

    // Several ranges: the whole blob, 200.
    let resp = request(addr, "GET", &path, &[("Range", "bytes=0-1,5-6")], b"").await;
    assert_eq!((resp.status, resp.body.len()), (200, 1000));

    // If-Range with a foreign validator: the whole blob.
    let resp = request(
        addr,
        "GET",
        &path,
        &[("Range", "bytes=0-1"), ("If-Range", "\"other\"")],
        b"",
    )
    .await;
    assert_eq!((resp.status, resp.body.len()), (200, 1000));
    let resp = request(
        addr,
        "GET",
        &path,
        &[("Range", "bytes=0-1"), ("If-Range", &etag)],
        b"",
    )
    .await;
    assert_eq!((resp.status, resp.body.len()), (206, 2));

    for tag in [
        etag.clone(),
        format!("W/{etag}"),
        format!("\"x\", {etag}"),
        "*".into(),
    ] {
        let resp = request(addr, "GET", &path, &[("If-None-Match", &tag)], b"").await;
        assert_eq!(resp.status, 304, "{tag}");
        assert!(resp.body.is_empty());
    }
    let resp = request(addr, "GET", &path, &[("If-None-Match", "\"x\"")], b"").await;
    assert_eq!(resp.status, 200);

    server.abort();
}

#[tokio::test]
async fn builds_route_lists_channel_history() {
    let dir = tempfile::tempdir().unwrap();
    let (addr, server) = serve(dir.path()).await;
    let keys = Keys::generate();
    assert_eq!(
        request(addr, "PUT", "/api/v1/releases/root", &[], &keys.root_json)
            .await
            .status,
        200
    );
    let mut uploaded = Vec::new();
    for i in 0..3u64 {
        let blob = format!("blob {i}").into_bytes();
        let put = format!("/api/v1/releases/blobs/{}", sha256(&blob));
        assert_eq!(request(addr, "PUT", &put, &[], &blob).await.status, 200);
        let target = crate::build(&format!("1.0.{i}"), format!("lib {i}").as_bytes(), &blob);
        let manifest = keys.manifest_with("stable", i + 1, target);
        uploaded.push(manifest.clone());
        let resp = request(
            addr,
            "PUT",
            "/api/v1/releases/channels/stable/manifest",
            &[],
            &manifest,
        )
        .await;
        assert_eq!(resp.status, 200);
    }
    let resp = request(
        addr,
        "GET",
        "/api/v1/releases/channels/stable/builds?target=x86_64-linux&limit=2",
        &[],
        b"",
    )
    .await;
    assert_eq!(resp.status, 200);
    let list = resp.json();
    let versions: Vec<&str> = list
        .as_array()
        .unwrap()
        .iter()
        .map(|b| b["version"].as_str().unwrap())
        .collect();
    assert_eq!(versions, ["1.0.2", "1.0.1"]);
    assert_eq!(list[0]["artifact"]["sha256"], sha256(b"lib 2").to_string());
    assert_eq!(list[0]["abi_major"], 1);

    let resp = request(
        addr,
        "GET",
        "/api/v1/releases/channels/Bad/builds?target=x86_64-linux",
        &[],
        b"",
    )
    .await;
    assert_eq!(resp.status, 400);
    let resp = request(
        addr,
        "GET",
        "/api/v1/releases/channels/stable/builds",
        &[],
        b"",
    )
    .await;
    assert_eq!(resp.status, 400, "target is required");

    // The signed history: the exact uploaded envelopes, newest first.
    let resp = request(
        addr,
        "GET",
        "/api/v1/releases/channels/stable/manifests?limit=2",
        &[],
        b"",
    )
    .await;
    assert_eq!(resp.status, 200);
    let history: Vec<String> = serde_json::from_value(resp.json()).unwrap();
    let history: Vec<&[u8]> = history.iter().map(|e| e.as_bytes()).collect();
    assert_eq!(history, [&uploaded[2][..], &uploaded[1][..]]);
    let resp = request(
        addr,
        "GET",
        "/api/v1/releases/channels/Bad/manifests",
        &[],
        b"",
    )
    .await;
    assert_eq!(resp.status, 400);

    server.abort();
}

#[tokio::test]
async fn every_root_version_is_served_immutable_and_uploaded_in_order() {
    use outrider_signing::{RootBuilder, TrustedRoot, now_unix};
    let dir = tempfile::tempdir().unwrap();
    let (addr, server) = serve(dir.path()).await;
    let keys = Keys::generate();
    let v1 = TrustedRoot::from_bytes_self_signed(&keys.root_json, now_unix()).unwrap();
    let v2 = RootBuilder::successor_of(v1.root(), now_unix() + 86_400);
    let v3 = RootBuilder::successor_of(v2.root(), now_unix() + 86_400)
        .sign(&[&keys.root])
        .unwrap()
        .to_bytes();
    let v2 = v2.sign(&[&keys.root]).unwrap().to_bytes();

    let resp = request(addr, "PUT", "/api/v1/releases/root", &[], &keys.root_json).await;
    assert_eq!(resp.status, 200);
    // Two versions ahead: refused until version 2 is uploaded.
    let resp = request(addr, "PUT", "/api/v1/releases/root", &[], &v3).await;
    assert_eq!(resp.status, 400);
    assert!(
        resp.json()["error"]
            .as_str()
            .unwrap()
            .contains("expected 2"),
        "{:?}",
        resp.json()
    );
    for bytes in [&v2, &v3] {
        let resp = request(addr, "PUT", "/api/v1/releases/root", &[], bytes).await;
        assert_eq!(resp.status, 200);
    }

    for (version, bytes) in [(1, &keys.root_json), (2, &v2), (3, &v3)] {
        let path = format!("/v1/updates/roots/{version}.json");
        let resp = request(addr, "GET", &path, &[], b"").await;
        assert_eq!(resp.status, 200, "{path}");
        assert_eq!(
            resp.header("cache-control"),
            Some("public, max-age=31536000, immutable")
        );
        assert_eq!(&resp.body, bytes);
    }
    let missing = [
        "4.json",
        "0.json",
        "2",
        "x.json",
        ".json",
        "99999999999999999999.json",
    ];
    for missing in missing {
        let path = format!("/v1/updates/roots/{missing}");
        let resp = request(addr, "GET", &path, &[], b"").await;
        assert_eq!(resp.status, 404, "{path}");
    }
    server.abort();
}
