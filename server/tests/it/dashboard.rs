//! The web dashboard over real HTTP: login and sessions, CSRF, the
//! viewer's limits, the fleet and agent pages, Run now, the live stream
//! and its resume, assets and security headers.

use std::net::SocketAddr;
use std::sync::Arc;

use outrider_protocol::{AgentMessage, CheckState, ServerMessage};
use serde_json::json;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;

use crate::helpers::{Agent, ENROLLMENT_TOKEN, STEP, Server, define_load_check, result};

/// One HTTP answer.
#[derive(Debug)]
pub(crate) struct Answer {
    pub(crate) status: u16,
    head: String,
    pub(crate) body: String,
}

impl Answer {
    /// The value of header `name` (lower case), if present.
    pub(crate) fn header(&self, name: &str) -> Option<&str> {
        self.head.lines().find_map(|line| {
            let (k, v) = line.split_once(':')?;
            (k.trim().eq_ignore_ascii_case(name)).then(|| v.trim())
        })
    }
}

/// A browser-ish client: keeps the session cookie, sends what a browser
/// sends on a same-origin form post.
#[derive(Debug, Clone)]
pub(crate) struct Browser {
    addr: SocketAddr,
    cookie: Option<String>,
}

impl Browser {
    fn new(server: &Server) -> Browser {
        Browser {
            addr: server.dashboard.expect("started with a dashboard"),
            cookie: None,
        }
    }

    fn origin(&self) -> String {
        format!("http://{}", self.addr)
    }

    async fn request(
        &self,
        method: &str,
        path: &str,
        extra: &[(&str, &str)],
        body: &str,
    ) -> Answer {
        let mut req = format!(
            "{method} {path} HTTP/1.1\r\nHost: {}\r\nConnection: close\r\nContent-Length: {}\r\n",
            self.addr,
            body.len()
        );
        if !body.is_empty() {
            req.push_str("Content-Type: application/x-www-form-urlencoded\r\n");
        }
        if let Some(cookie) = &self.cookie {
            req.push_str(&format!("Cookie: {cookie}\r\n"));
        }
        for (k, v) in extra {
            req.push_str(&format!("{k}: {v}\r\n"));
        }
        req.push_str("\r\n");
        req.push_str(body);
        let exchange = async {
            let mut stream = TcpStream::connect(self.addr).await?;
            stream.write_all(req.as_bytes()).await?;
            let mut buf = Vec::new();
            stream.read_to_end(&mut buf).await?;
            std::io::Result::Ok(buf)
        };
        let buf = tokio::time::timeout(STEP, exchange)
            .await
            .expect("HTTP timed out")
            .unwrap();
        let text = String::from_utf8(buf).unwrap();
        let (head, body) = text.split_once("\r\n\r\n").expect("a response head");
        let status = head.split(' ').nth(1).unwrap().parse().unwrap();
        Answer {
            status,
            head: head.to_owned(),
            body: body.to_owned(),
        }
    }

    pub(crate) async fn get(&self, path: &str) -> Answer {
        self.request("GET", path, &[], "").await
    }

    /// A same-origin form post, as a browser sends it.
    pub(crate) async fn post(&self, path: &str, form: &str) -> Answer {
        let origin = self.origin();
        self.request(
            "POST",
            path,
            &[("Origin", &origin), ("Sec-Fetch-Site", "same-origin")],
            form,
        )
        .await
    }

    /// Logs in with `token`; panics unless it worked.
    pub(crate) async fn login(server: &Server, token: &str) -> Browser {
        let mut browser = Browser::new(server);
        let answer = browser
            .post("/login", &format!("token={token}&next=/"))
            .await;
        assert_eq!(answer.status, 303, "{answer:?}");
        let cookie = answer.header("set-cookie").expect("a session cookie");
        browser.cookie = Some(cookie.split(';').next().unwrap().to_owned());
        browser
    }

    /// The CSRF token of the page at `path`.
    pub(crate) async fn csrf(&self, path: &str) -> String {
        let page = self.get(path).await;
        assert_eq!(page.status, 200, "{page:?}");
        let at = page
            .body
            .find("name=\"csrf\" value=\"")
            .expect("a form with a CSRF token");
        let rest = &page.body[at + "name=\"csrf\" value=\"".len()..];
        rest[..rest.find('"').unwrap()].to_owned()
    }
}

fn viewer_token(server: &Server) -> String {
    std::fs::read_to_string(server.data_dir().join("viewer.token"))
        .unwrap()
        .trim()
        .to_owned()
}

#[tokio::test]
async fn login_gives_a_strict_http_only_cookie_that_logout_ends() {
    let server = Server::start_with_dashboard().await;
    let anonymous = Browser::new(&server);
    let page = anonymous.get("/agents/0123456789abcdef0123?x=1").await;
    assert_eq!(page.status, 303);
    assert_eq!(
        page.header("location"),
        Some("/login?next=/agents/0123456789abcdef0123%3Fx%3D1")
    );
    let form = anonymous.get("/login").await;
    assert_eq!(form.status, 200);
    assert!(form.body.contains("name=\"token\""));

    let wrong = anonymous.post("/login", "token=not-the-token").await;
    assert_eq!(wrong.status, 401);
    assert!(
        wrong.body.contains("neither this server&#39;s admin token")
            || wrong.body.contains("neither this server"),
        "{}",
        wrong.body
    );
    assert!(wrong.header("set-cookie").is_none());
    let empty = anonymous.post("/login", "token=").await;
    assert_eq!(empty.status, 401);
    assert!(empty.body.contains("Paste a token"));
    // A login posted from another site is refused before the token is looked at.
    let forged = anonymous
        .request(
            "POST",
            "/login",
            &[
                ("Origin", "http://evil.example"),
                ("Sec-Fetch-Site", "cross-site"),
            ],
            &format!("token={}", server.admin_token),
        )
        .await;
    assert_eq!(forged.status, 403);
    assert!(forged.body.contains("another site"), "{}", forged.body);

    let answer = anonymous
        .post(
            "/login",
            &format!("token={}&next=/?tag=web", server.admin_token),
        )
        .await;
    assert_eq!(answer.status, 303);
    assert_eq!(answer.header("location"), Some("/?tag=web"));
    let cookie = answer.header("set-cookie").unwrap();
    for part in ["HttpOnly", "SameSite=Strict", "Path=/"] {
        assert!(cookie.contains(part), "{cookie}");
    }
    let browser = Browser {
        cookie: Some(cookie.split(';').next().unwrap().to_owned()),
        ..anonymous.clone()
    };
    let fleet = browser.get("/").await;
    assert_eq!(fleet.status, 200);
    assert!(fleet.body.contains("logged in as admin"));

    // Logout needs the session's CSRF token.
    let refused = browser.post("/logout", "").await;
    assert_eq!(refused.status, 403, "{refused:?}");
    assert!(refused.body.contains("no CSRF token"), "{}", refused.body);
    let refused = browser.post("/logout", "csrf=wrong").await;
    assert_eq!(refused.status, 403);
    let csrf = browser.csrf("/").await;
    let out = browser.post("/logout", &format!("csrf={csrf}")).await;
    assert_eq!(out.status, 303);
    assert!(out.header("set-cookie").unwrap().contains("Max-Age=0"));
    // The old cookie no longer opens anything.
    assert_eq!(browser.get("/").await.status, 303);
    server.stop().await;
}

#[tokio::test]
async fn every_page_forbids_inline_script_and_assets_are_immutable() {
    let server = Server::start_with_dashboard().await;
    let browser = Browser::login(&server, &server.admin_token).await;
    for path in ["/", "/login", "/no-such-page"] {
        let page = browser.get(path).await;
        let csp = page.header("content-security-policy").unwrap_or_default();
        assert!(csp.contains("script-src 'self'"), "{path}: {csp}");
        assert_eq!(page.header("cache-control"), Some("no-store"), "{path}");
        // Every script is a file of this server.
        for tag in page.body.split("<script").skip(1) {
            assert!(
                tag.trim_start().starts_with("src=\"/assets/"),
                "{path}: inline script {tag}"
            );
        }
    }
    assert_eq!(browser.get("/no-such-page").await.status, 404);
    let fleet = browser.get("/").await;
    let mut assets = Vec::new();
    for attr in ["src=\"", "href=\""] {
        for part in fleet.body.split(attr).skip(1) {
            let url = &part[..part.find('"').unwrap()];
            if url.starts_with("/assets/") {
                assets.push(url.to_owned());
            }
        }
    }
    assert_eq!(assets.len(), 3, "{assets:?}");
    for url in &assets {
        let asset = browser.get(url).await;
        assert_eq!(asset.status, 200, "{url}");
        assert_eq!(
            asset.header("cache-control"),
            Some("public, max-age=31536000, immutable")
        );
    }
    assert_eq!(
        browser.get("/assets/htmx.0000000000000000.js").await.status,
        404
    );
    server.stop().await;
}

#[tokio::test]
async fn the_fleet_shows_presence_worst_state_and_filters() {
    let server = Server::start_with_dashboard().await;
    let web = Agent::new(1, "web-1").with_tags(&["web"]);
    let db = Agent::new(2, "db-1").with_tags(&["db"]);
    let (mut web_conn, _, _) = web.connect(&server, Some(ENROLLMENT_TOKEN)).await;
    let (db_conn, _, _) = db.connect(&server, Some(ENROLLMENT_TOKEN)).await;
    web_conn
        .send_results(vec![
            result(1, "load", CheckState::Warning, "load 7"),
            result(2, "disk", CheckState::Critical, "disk full"),
        ])
        .await;
    drop(db_conn);
    server
        .wait_presence(&db.fp, outrider_protocol::api::Presence::Down)
        .await;

    let browser = Browser::login(&server, &viewer_token(&server)).await;
    let fleet = browser.get("/").await;
    assert_eq!(fleet.status, 200);
    assert!(fleet.body.contains("logged in as viewer"));
    let row = |body: &str, fp: &str| {
        let at = body
            .find(&format!("id=\"agent-{fp}\""))
            .expect("the agent's row");
        body[at..at + body[at..].find("</tr>").unwrap()].to_owned()
    };
    let web_row = row(&fleet.body, web.fp.as_str());
    assert!(web_row.contains("presence-connected"), "{web_row}");
    assert!(
        web_row.contains("state-CRITICAL") && web_row.contains("2 of 2 not OK"),
        "{web_row}"
    );
    let db_row = row(&fleet.body, db.fp.as_str());
    assert!(
        db_row.contains("presence-down") && db_row.contains("no results yet"),
        "{db_row}"
    );
    assert!(fleet.body.contains("2 agents."), "{}", fleet.body);

    let tagged = browser.get("/?tag=db").await;
    assert!(tagged.body.contains(db.fp.as_str()) && !tagged.body.contains(web.fp.as_str()));
    assert!(tagged.body.contains("1 agent match"));
    let text = browser.get("/?q=WEB").await;
    assert!(text.body.contains(web.fp.as_str()) && !text.body.contains(db.fp.as_str()));

    // The matrix: one row per agent, one column per check reported.
    let matrix = browser.get("/checks").await;
    assert_eq!(matrix.status, 200);
    let web_row = row(
        &matrix
            .body
            .replace("<tr><td><a href=\"/agents/", "<tr id=\"agent-"),
        web.fp.as_str(),
    );
    let cells: Vec<&str> = web_row.split("<td>").skip(1).collect();
    assert_eq!(cells.len(), 2, "{web_row}");
    assert!(
        cells[0].contains("state-CRITICAL") && cells[1].contains("state-WARNING"),
        "{web_row}"
    );
    assert!(matrix.body.find(">disk<").unwrap() < matrix.body.find(">load<").unwrap());
    let db_only = browser.get("/checks?tag=db").await;
    assert!(db_only.body.contains(db.fp.as_str()) && !db_only.body.contains(web.fp.as_str()));

    for (path, needle) in [
        ("/checks?page=0", "page numbers start at 1"),
        ("/?page=0", "page numbers start at 1"),
        ("/?tag=Not%20A%20Tag", "cannot exist"),
        ("/?color=red", "not one this page takes"),
    ] {
        let bad = browser.get(path).await;
        assert_eq!(bad.status, 400, "{path}");
        assert!(bad.body.contains(needle), "{path}: {}", bad.body);
    }
    server.stop().await;
}

#[tokio::test]
async fn run_now_shows_output_state_and_duration_and_the_viewer_cannot_run() {
    let server = Arc::new(Server::start_with_dashboard().await);
    let agent = Agent::new(3, "app-1");
    let (mut conn, _, _) = agent.connect(&server, Some(ENROLLMENT_TOKEN)).await;
    define_load_check(&server, &mut conn).await;
    conn.send_results(vec![result(1, "load", CheckState::Ok, "load 0.1")])
        .await;
    let page_path = format!("/agents/{}", agent.fp);
    let run_path = format!("{page_path}/run");

    // The viewer sees the check but no button, and a forged post is refused.
    let viewer = Browser::login(&server, &viewer_token(&server)).await;
    let page = viewer.get(&page_path).await;
    assert_eq!(page.status, 200);
    assert!(page.body.contains("load 0.1") && !page.body.contains("Run now"));
    let csrf = viewer.csrf(&page_path).await;
    let refused = viewer
        .post(&run_path, &format!("csrf={csrf}&check=load"))
        .await;
    assert_eq!(refused.status, 403);
    assert!(refused.body.contains("viewer"), "{}", refused.body);

    let admin = Browser::login(&server, &server.admin_token).await;
    let page = admin.get(&page_path).await;
    assert!(page.body.contains("Run now"));
    let csrf = admin.csrf(&page_path).await;
    let origin = admin.origin();
    let form = format!("csrf={csrf}&check=load");
    let call = tokio::spawn({
        let admin = admin.clone();
        let run_path = run_path.clone();
        async move {
            admin
                .request(
                    "POST",
                    &run_path,
                    &[
                        ("Origin", &origin),
                        ("Sec-Fetch-Site", "same-origin"),
                        ("HX-Request", "true"),
                    ],
                    &form,
                )
                .await
        }
    });
    // The viewer's post never reached the agent: the first RPC is the admin's.
    let ServerMessage::RunCheck { id, check } = conn.recv().await else {
        panic!("expected the run")
    };
    assert_eq!(check, "load");
    let mut answer = result(0, "load", CheckState::Warning, "load 7.5");
    answer.long_output = "top: cc1plus".into();
    answer.duration_ms = 42;
    conn.send(&AgentMessage::RpcResult {
        id,
        result: Some(answer),
        error: None,
    })
    .await;
    let fragment = call.await.unwrap();
    assert_eq!(fragment.status, 200);
    for needle in [
        "state-WARNING",
        "(exit 1)",
        "42 ms",
        "load 7.5\ntop: cc1plus",
    ] {
        assert!(
            fragment.body.contains(needle),
            "{needle}: {}",
            fragment.body
        );
    }
    assert!(!fragment.body.contains("<html"), "a fragment, not a page");

    // Without htmx the form answers the whole page with the outcome in place;
    // an agent that is gone is one sentence.
    drop(conn);
    server
        .wait_presence(&agent.fp, outrider_protocol::api::Presence::Down)
        .await;
    let page = admin
        .post(&run_path, &format!("csrf={csrf}&check=load"))
        .await;
    assert_eq!(page.status, 409);
    assert!(
        page.body.contains("<html") && page.body.contains("is not connected"),
        "{}",
        page.body
    );
    let bad = admin.post(&run_path, &format!("csrf={csrf}")).await;
    assert_eq!(bad.status, 400);
    assert!(bad.body.contains("did not parse"), "{}", bad.body);
    // A check configured but not run yet has its own Run now.
    let disk = json!({ "command": ["/bin/true"], "interval_secs": 60, "timeout_secs": 5 });
    server
        .admin("PUT", "/api/v1/checks/disk", Some(&disk))
        .await;
    let page = admin.get(&page_path).await;
    let pending = &page.body[page
        .body
        .find("class=\"check pending\"")
        .expect("a pending check")..];
    assert!(
        pending.contains("disk") && pending.contains("Run now"),
        "{pending}"
    );
    let ran = admin
        .post(&run_path, &format!("csrf={csrf}&check=disk"))
        .await;
    let pending = &ran.body[ran.body.find("class=\"check pending\"").unwrap()..];
    assert!(
        pending.contains("is not connected"),
        "the outcome in its slot: {pending}"
    );
    Arc::try_unwrap(server).unwrap().stop().await;
}

/// An open `GET /live` stream (HTTP/1.0, so not chunked).
pub struct Live {
    reader: BufReader<TcpStream>,
}

impl Live {
    pub async fn open(browser: &Browser, path: &str, last_event_id: Option<&str>) -> Live {
        let mut stream = TcpStream::connect(browser.addr).await.unwrap();
        let mut req = format!(
            "GET {path} HTTP/1.0\r\nHost: {}\r\nCookie: {}\r\n",
            browser.addr,
            browser.cookie.as_deref().unwrap()
        );
        if let Some(id) = last_event_id {
            req.push_str(&format!("Last-Event-ID: {id}\r\n"));
        }
        req.push_str("\r\n");
        stream.write_all(req.as_bytes()).await.unwrap();
        let mut reader = BufReader::new(stream);
        let mut status = String::new();
        tokio::time::timeout(STEP, reader.read_line(&mut status))
            .await
            .unwrap()
            .unwrap();
        assert!(status.contains(" 200 "), "{status}");
        loop {
            let mut line = String::new();
            reader.read_line(&mut line).await.unwrap();
            if line.trim().is_empty() {
                break;
            }
        }
        Live { reader }
    }

    /// The next event: `(id, event, data)`; comments are skipped.
    pub async fn next(&mut self) -> (String, String, String) {
        let read = async {
            let (mut id, mut event, mut data) = (String::new(), String::new(), Vec::new());
            loop {
                let mut line = String::new();
                assert!(
                    self.reader.read_line(&mut line).await.unwrap() > 0,
                    "stream ended"
                );
                let line = line.trim_end_matches('\n');
                if line.is_empty() {
                    if !event.is_empty() {
                        return (id, event, data.join("\n"));
                    }
                    continue;
                }
                if let Some(v) = line.strip_prefix("id:") {
                    id = v.trim().to_owned();
                } else if let Some(v) = line.strip_prefix("event:") {
                    event = v.trim().to_owned();
                } else if let Some(v) = line.strip_prefix("data:") {
                    data.push(v.strip_prefix(' ').unwrap_or(v).to_owned());
                }
            }
        };
        tokio::time::timeout(STEP, read)
            .await
            .expect("no live event in time")
    }

    /// The next `row` event whose data contains `needle`.
    pub async fn row_with(&mut self, needle: &str) -> (String, String) {
        loop {
            let (id, event, data) = self.next().await;
            if event == "row" && data.contains(needle) {
                return (id, data);
            }
        }
    }
}

#[tokio::test]
async fn the_live_stream_carries_rows_with_ids_and_resumes_or_resets() {
    let server = Server::start_with_dashboard().await;
    let browser = Browser::login(&server, &viewer_token(&server)).await;
    let agent = Agent::new(4, "cache-1");
    // The tab shows the agent's page and its fleet row (a stream may name
    // both), so its presence, check states and fleet row are sent.
    let scope = format!("/live?agent={0}&rows={0}&list=fleet", agent.fp);
    let mut live = Live::open(&browser, &scope, None).await;

    let (mut conn, _, _) = agent.connect(&server, Some(ENROLLMENT_TOKEN)).await;
    let row_id = format!("id=\"agent-{}\"", agent.fp);
    let (first_id, data) = live.row_with(&row_id).await;
    assert!(data.contains("presence-connected"), "{data}");
    conn.send_results(vec![result(1, "load", CheckState::Critical, "load 40")])
        .await;
    let (_, data) = live
        .row_with(&format!("id=\"check-{}-load\"", agent.fp))
        .await;
    assert!(
        data.contains("state-CRITICAL") && data.contains("load 40"),
        "{data}"
    );
    let (last_id, data) = live.row_with(&row_id).await;
    assert!(data.contains("state-CRITICAL"), "{data}");

    // A tab reconnecting after the first frame gets the later ones again.
    let mut resumed = Live::open(&browser, &scope, Some(&first_id)).await;
    let (id, _, _) = resumed.next().await;
    assert_ne!(id, first_id);
    let mut seen = vec![id];
    while seen.last() != Some(&last_id) {
        seen.push(resumed.next().await.0);
    }
    // An id this server never gave gets one reset.
    for bogus in ["0000-1", "nonsense"] {
        let mut reset = Live::open(&browser, "/live", Some(bogus)).await;
        let (id, event, _) = reset.next().await;
        assert_eq!((event.as_str(), id.as_str()), ("reset", last_id.as_str()));
    }

    drop(conn);
    // The open agent page's presence first, then the fleet row.
    let (_, presence) = live
        .row_with(&format!("id=\"presence-{}\"", agent.fp))
        .await;
    assert!(presence.contains("presence-down"), "{presence}");
    let (_, data) = live.row_with(&row_id).await;
    let data = if data.contains("presence-down") {
        data
    } else {
        live.row_with("presence-down").await.1
    };
    assert!(data.contains("presence-down"), "{data}");
    // A removed agent's row leaves the page.
    server
        .admin("DELETE", &format!("/api/v1/agents/{}", agent.fp), None)
        .await;
    let (_, data) = live.row_with(&format!("{row_id} hidden")).await;
    assert!(!data.contains("cache-1"), "{data}");
    // A logout ends the tab's stream: the next frame is `logout`.
    let csrf = browser.csrf("/").await;
    assert_eq!(
        browser
            .post("/logout", &format!("csrf={csrf}"))
            .await
            .status,
        303
    );
    let other = Agent::new(6, "after-logout");
    let _conn = other.connect(&server, Some(ENROLLMENT_TOKEN)).await;
    // (Rows sent before the logout may come first.)
    loop {
        match resumed.next().await.1.as_str() {
            "logout" => break,
            "row" | "list" => continue,
            other => panic!("{other} before logout"),
        }
    }
    let browser = Browser::login(&server, &viewer_token(&server)).await;
    let bad = browser.get("/live?agent=nonsense").await;
    assert_eq!(bad.status, 400);
    assert!(
        bad.body.contains("not an agent fingerprint"),
        "{}",
        bad.body
    );
    let garbage = browser.get("/live?rows=0123456789abcdef0123,zz").await;
    assert_eq!(garbage.status, 400);
    assert!(garbage.body.contains("zz"), "{}", garbage.body);
    let many = vec!["0123456789abcdef0123"; 201].join(",");
    let too_many = browser.get(&format!("/live?rows={many}")).await;
    assert_eq!(too_many.status, 400);
    assert!(too_many.body.contains("at most 200"), "{}", too_many.body);
    assert_eq!(browser.get("/live?list=agents").await.status, 400);
    // The stream needs a session.
    let anonymous = Browser::new(&server);
    assert_eq!(anonymous.get("/live").await.status, 303);
    server.stop().await;
}

#[tokio::test]
async fn a_stream_for_page_rows_carries_no_frame_of_another_agent() {
    let server = Server::start_with_dashboard().await;
    let browser = Browser::login(&server, &viewer_token(&server)).await;
    let (shown, other) = (Agent::new(7, "on-page"), Agent::new(8, "off-page"));
    // Both in the fleet before the tab opens: no membership change later.
    for agent in [&shown, &other] {
        let (conn, _, _) = agent.connect(&server, Some(ENROLLMENT_TOKEN)).await;
        drop(conn);
        server
            .wait_presence(&agent.fp, outrider_protocol::api::Presence::Down)
            .await;
    }
    let page = browser.get(&format!("/?q={}", "on-page")).await;
    let scope = page
        .body
        .split("data-live-scope=\"")
        .nth(1)
        .and_then(|rest| rest.split('"').next())
        .expect("the fleet list names its stream")
        .replace("&#38;", "&");
    assert!(scope.contains(&shown.fp.to_string()), "{scope}");
    assert!(!scope.contains(&other.fp.to_string()), "{scope}");
    let mut live = Live::open(&browser, &scope, None).await;
    // Another tab shows the other agent, so its row is rendered: only the
    // stream's filter keeps it from this one.
    let mut other_tab = Live::open(&browser, &format!("/live?rows={}", other.fp), None).await;
    // The agent off the page changes first, then the one on it: the first
    // frame is the shown agent's row (one stream, in order), so nothing
    // of the other came before it.
    let (_other_conn, _, _) = other.connect(&server, Some(ENROLLMENT_TOKEN)).await;
    let (_shown_conn, _, _) = shown.connect(&server, Some(ENROLLMENT_TOKEN)).await;
    // (The shown agent's own earlier "down" may still arrive first.)
    let shown_row = format!("id=\"agent-{}\"", shown.fp);
    loop {
        let (_, event, data) = live.next().await;
        assert_eq!(event, "row", "{data}");
        assert!(
            data.contains(&shown_row),
            "a frame of another agent: {data}"
        );
        if data.contains("presence-connected") {
            break;
        }
    }
    let (_, _, data) = other_tab.next().await;
    assert!(
        data.contains(&format!("id=\"agent-{}\"", other.fp)),
        "{data}"
    );
    server.stop().await;
}

#[tokio::test]
async fn add_a_host_creates_a_token_that_enrolls_and_the_viewer_cannot() {
    let server = Server::start_with_dashboard().await;
    let viewer = Browser::login(&server, &viewer_token(&server)).await;
    assert_eq!(viewer.get("/hosts/new").await.status, 403);
    assert!(
        !viewer.get("/").await.body.contains("/hosts/new"),
        "no link for the viewer"
    );
    let csrf = viewer.csrf("/").await;
    let refused = viewer
        .post("/hosts/new", &format!("csrf={csrf}&expires_in_days=1"))
        .await;
    assert_eq!(refused.status, 403);

    let admin = Browser::login(&server, &server.admin_token).await;
    let form = admin.get("/hosts/new").await;
    assert_eq!(form.status, 200);
    let csrf = admin.csrf("/hosts/new").await;
    let bad = admin
        .post(
            "/hosts/new",
            &format!("csrf={csrf}&note=rack+4&expires_in_days=0&uses=&tags="),
        )
        .await;
    assert_eq!(bad.status, 400);
    assert!(
        bad.body.contains("Expires in") && bad.body.contains("value=\"rack 4\""),
        "{}",
        bad.body
    );
    let created = admin
        .post(
            "/hosts/new",
            &format!("csrf={csrf}&note=rack+4&expires_in_days=2&uses=1&tags=web"),
        )
        .await;
    assert_eq!(created.status, 200, "{}", created.body);
    // No root is published on this server: no install command, the token alone.
    assert!(
        created.body.contains("No update root is published"),
        "{}",
        created.body
    );
    let at = created.body.find("id=\"token\">").unwrap() + "id=\"token\">".len();
    let token = &created.body[at..at + created.body[at..].find('<').unwrap()];
    let tokens = server.admin("GET", "/api/v1/tokens", None).await;
    let listed = tokens
        .as_array()
        .unwrap()
        .iter()
        .find(|t| t["note"] == "rack 4")
        .unwrap();
    assert_eq!(
        (
            listed["uses_left"].as_u64(),
            listed["allowed_tags"][0].as_str()
        ),
        (Some(1), Some("web"))
    );
    // The token enrolls a host.
    let agent = Agent::new(9, "new-host");
    agent.connect(&server, Some(token)).await;
    server.stop().await;
}

#[tokio::test]
async fn releases_page_names_channels_or_says_there_are_none() {
    let server = Server::start_with_dashboard().await;
    let browser = Browser::login(&server, &viewer_token(&server)).await;
    let page = browser.get("/releases").await;
    assert_eq!(page.status, 200);
    assert!(
        page.body.contains("No release published yet"),
        "{}",
        page.body
    );
    server.stop().await;
}

#[tokio::test]
async fn the_agent_page_graphs_perfdata_downsampled_on_the_server() {
    let server = Server::start_with_dashboard().await;
    let agent = Agent::new(5, "graph-1");
    let (mut conn, _, _) = agent.connect(&server, Some(ENROLLMENT_TOKEN)).await;
    let now = outrider_protocol::unix_now_ms();
    // 120 samples a minute apart over the last two hours.
    let results = (1..=120u64)
        .map(|i| {
            let mut r = result(i, "load", CheckState::Ok, "load ok");
            r.started_at_ms = now - (121 - i as i64) * 60_000;
            r.perfdata = vec![outrider_protocol::PerfData {
                label: "load 1m".into(),
                value: i as f64,
                uom: String::new(),
                warn: None,
                crit: None,
                min: None,
                max: None,
            }];
            r
        })
        .collect();
    conn.send_results(results).await;

    let browser = Browser::login(&server, &viewer_token(&server)).await;
    let page = browser.get(&format!("/agents/{}", agent.fp)).await;
    assert_eq!(page.status, 200);
    let series = format!(
        "/agents/{}/series?check=load&#38;metric=load%201m",
        agent.fp
    );
    assert!(
        page.body.contains(&format!("data-series=\"{series}\"")),
        "{}",
        page.body
    );
    assert!(
        page.body.contains("/assets/uplot."),
        "uPlot is loaded where graphs are"
    );
    let url = series.replace("&#38;", "&");
    // Over 24 h at 600 points a bucket is 144 s: the two hours of samples
    // fold into 50 buckets (51 when they straddle one more).
    let wide = browser.get(&format!("{url}&points=600")).await;
    assert_eq!(wide.status, 200, "{}", wide.body);
    let graph: serde_json::Value = serde_json::from_str(&wide.body).unwrap();
    let (t, v) = (
        graph["t"].as_array().unwrap(),
        graph["v"].as_array().unwrap(),
    );
    assert_eq!(graph["metric"], "load 1m");
    assert_eq!(t.len(), v.len());
    assert!((50..=51).contains(&t.len()), "{}", t.len());
    // Narrow: 10 points for the whole day, so the two hours fold into one or two.
    let narrow = browser.get(&format!("{url}&points=10")).await;
    let graph: serde_json::Value = serde_json::from_str(&narrow.body).unwrap();
    assert!(graph["t"].as_array().unwrap().len() <= 2, "{graph}");
    for (query, status) in [
        (format!("{url}&points=5"), 400),
        (format!("{url}&hours=0"), 400),
        (
            format!("/agents/{}/series?check=load&metric=nope", agent.fp),
            404,
        ),
        (format!("/agents/{}/series?check=load", agent.fp), 400),
    ] {
        assert_eq!(browser.get(&query).await.status, status, "{query}");
    }
    server.stop().await;
}

#[tokio::test]
async fn silences_are_added_and_expired_by_the_admin_only() {
    let server = Server::start_with_dashboard().await;
    let viewer = Browser::login(&server, &viewer_token(&server)).await;
    let page = viewer.get("/alerts").await;
    assert_eq!(page.status, 200);
    assert!(page.body.contains("No open problems") && !page.body.contains("Add the silence"));
    let csrf = viewer.csrf("/").await;
    let refused = viewer
        .post(
            "/silences",
            &format!("csrf={csrf}&check=load&hours=2&comment=x"),
        )
        .await;
    assert_eq!(refused.status, 403);

    let admin = Browser::login(&server, &server.admin_token).await;
    let csrf = admin.csrf("/alerts").await;
    let bad = admin
        .post(
            "/silences",
            &format!("csrf={csrf}&check=load&hours=0&comment=db+work"),
        )
        .await;
    assert_eq!(bad.status, 400);
    assert!(
        bad.body.contains("For (hours)") && bad.body.contains("value=\"db work\""),
        "{}",
        bad.body
    );
    let added = admin
        .post(
            "/silences",
            &format!("csrf={csrf}&check=load&hours=2&comment=db+work"),
        )
        .await;
    assert_eq!(
        (added.status, added.header("location")),
        (303, Some("/alerts"))
    );
    let silences = server.admin("GET", "/api/v1/silences", None).await;
    let silence = &silences.as_array().unwrap()[0];
    assert_eq!(
        (silence["active"].as_bool(), silence["comment"].as_str()),
        (Some(true), Some("db work"))
    );
    let id = silence["id"].as_u64().unwrap();
    let page = admin.get("/alerts").await;
    assert!(
        page.body.contains("check=load") && page.body.contains(&format!("/silences/{id}/expire"))
    );

    let refused = viewer
        .post(
            &format!("/silences/{id}/expire"),
            &format!("csrf={}", viewer.csrf("/").await),
        )
        .await;
    assert_eq!(refused.status, 403);
    let expired = admin
        .post(&format!("/silences/{id}/expire"), &format!("csrf={csrf}"))
        .await;
    assert_eq!(expired.status, 303);
    let silences = server.admin("GET", "/api/v1/silences", None).await;
    assert_eq!(silences[0]["active"].as_bool(), Some(false));
    let unknown = admin
        .post("/silences/999/expire", &format!("csrf={csrf}"))
        .await;
    assert_eq!(unknown.status, 404);
    server.stop().await;
}

/// The statements `path` cost, from the dashboard's response header.
async fn statements(browser: &Browser, path: &str) -> u64 {
    let page = browser.get(path).await;
    assert_eq!(page.status, 200, "{path}: {}", page.body);
    page.header("x-outrider-statements")
        .expect("every answer says what it cost")
        .parse()
        .unwrap()
}

#[tokio::test]
async fn every_page_costs_the_same_few_statements_whatever_the_fleet_size() {
    let server = Server::start_with_dashboard().await;
    let mut conns = Vec::new();
    let mut connect = async |seed: u8| {
        let agent = Agent::new(seed, &format!("host-{seed:03}"));
        let (mut conn, _, _) = agent.connect(&server, Some(ENROLLMENT_TOKEN)).await;
        conn.send_results(vec![
            result(1, "load", CheckState::Warning, "load 3"),
            result(2, "disk", CheckState::Ok, "disk ok"),
        ])
        .await;
        conns.push(conn);
        agent.fp
    };
    let first = connect(20).await;
    connect(21).await;
    let browser = Browser::login(&server, &server.admin_token).await;
    let pages = [
        "/".to_owned(),
        "/?tag=web&q=host".to_owned(),
        format!("/agents/{first}"),
        "/checks".to_owned(),
        "/alerts".to_owned(),
        "/releases".to_owned(),
    ];
    let mut small = Vec::new();
    for page in &pages {
        small.push(statements(&browser, page).await);
    }
    for seed in 22..82 {
        connect(seed).await;
    }
    let mut large = Vec::new();
    for page in &pages {
        large.push(statements(&browser, page).await);
    }
    assert_eq!(small, large, "2 agents or 62, the same statements per page");
    // Fleet, filtered fleet, agent, matrix: within the benchmark's 5.
    for (page, n) in pages.iter().zip(&large).take(4) {
        assert!((1..=5).contains(n), "{page}: {n} statements");
    }
    drop(conns);
    server.stop().await;
}

#[tokio::test]
async fn a_restart_logs_no_browser_out_but_a_logout_stays_out() {
    let server = Server::start_with_dashboard().await;
    let stays = Browser::login(&server, &viewer_token(&server)).await;
    let leaves = Browser::login(&server, &server.admin_token).await;
    let csrf = leaves.csrf("/").await;
    assert_eq!(
        leaves.post("/logout", &format!("csrf={csrf}")).await.status,
        303
    );

    let server = server.restart_with_dashboard().await;
    // The dashboard has a new port; the cookies are the same.
    let stays = Browser {
        addr: server.dashboard.unwrap(),
        ..stays
    };
    let leaves = Browser {
        addr: server.dashboard.unwrap(),
        ..leaves
    };
    let page = stays.get("/").await;
    assert_eq!(page.status, 200);
    assert!(page.body.contains("logged in as viewer"));
    assert_eq!(leaves.get("/").await.status, 303);

    // The viewer token replaced (say it leaked): its sessions end at the restart.
    let token_file = server.data_dir().join("viewer.token");
    std::fs::write(&token_file, "a-new-viewer-token\n").unwrap();
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&token_file, std::fs::Permissions::from_mode(0o600)).unwrap();
    let server = server.restart_with_dashboard().await;
    let stays = Browser {
        addr: server.dashboard.unwrap(),
        ..stays
    };
    assert_eq!(stays.get("/").await.status, 303);
    Browser::login(&server, "a-new-viewer-token").await;
    server.stop().await;
}
