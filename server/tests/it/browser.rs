//! The dashboard in a real browser: Debian's Chromium, headless, driven
//! over WebDriver by chromedriver (both installed by `tests/deps`). Each
//! test starts its own chromedriver and browser profile against an
//! in-process server with a scripted agent, checks what a person would see,
//! and saves a PNG screenshot under `target/tmp/` to look at.
//!
//! The browser tests run one at a time ([`ONE_BROWSER`]): two headless
//! Chromiums at once on a small CI machine make every time bound a guess.

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use fantoccini::{Client, ClientBuilder, Locator};
use outrider_protocol::{AgentMessage, CheckState, ServerMessage};
use serde_json::json;

use crate::helpers::{Agent, ENROLLMENT_TOKEN, STEP, Server, define_load_check, result};

/// What the dashboard promises a person: a change visible within a second.
const VISIBLE: Duration = Duration::from_secs(1);

/// Bound of a page load, a login, a graph's first draw: no promise of the
/// dashboard, only a guard against a hang, wide for a machine running the
/// rest of the test suite beside the browser.
const LOAD: Duration = Duration::from_secs(15);

static ONE_BROWSER: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// chromedriver and a WebDriver session of headless Chromium; both end
/// when dropped (the session with [`Browser::close`]).
struct Browser {
    client: Client,
    driver: Child,
    _profile: tempfile::TempDir,
    base: String,
}

impl Drop for Browser {
    fn drop(&mut self) {
        let _ = self.driver.kill();
        let _ = self.driver.wait();
    }
}

impl Browser {
    async fn start(server: &Server) -> Browser {
        Browser::start_with(server, "http").await
    }

    /// A browser for the dashboard over `scheme` (`https` trusts any
    /// certificate: the tests' are self-signed).
    async fn start_with(server: &Server, scheme: &str) -> Browser {
        // A free port for chromedriver (it cannot report one it chose).
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let driver = Command::new("chromedriver")
            .arg(format!("--port={port}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("chromedriver is installed (tests/deps installs chromium-driver)");
        let ready = async {
            while tokio::net::TcpStream::connect(("127.0.0.1", port))
                .await
                .is_err()
            {
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        };
        tokio::time::timeout(STEP, ready)
            .await
            .expect("chromedriver listens");
        let profile = tempfile::tempdir().unwrap();
        let mut caps = serde_json::Map::new();
        caps.insert(
            "goog:chromeOptions".into(),
            json!({
                "binary": "/usr/bin/chromium",
                "args": [
                    "--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                    "--disable-background-networking", "--disable-component-update",
                    "--disable-sync", "--no-first-run", "--window-size=1280,900",
                    "--ignore-certificate-errors",
                    format!("--user-data-dir={}", profile.path().display()),
                ],
            }),
        );
        let connector = hyper_util::client::legacy::connect::HttpConnector::new();
        let client = tokio::time::timeout(
            Duration::from_secs(30),
            ClientBuilder::new(connector)
                .capabilities(caps)
                .connect(&format!("http://127.0.0.1:{port}")),
        )
        .await
        .expect("Chromium starts within 30 s")
        .expect("a WebDriver session");
        Browser {
            client,
            driver,
            _profile: profile,
            base: format!("{scheme}://{}", server.dashboard.unwrap()),
        }
    }

    async fn goto(&self, path: &str) {
        self.client
            .goto(&format!("{}{path}", self.base))
            .await
            .unwrap();
    }

    /// Logs in through the form with `token` and waits for the logged-in page: a `goto`
    /// right after the click could otherwise abort the form's post before
    /// its cookie is set, and land on the login page.
    async fn login(&self, token: &str) {
        self.submit_token(token).await;
        self.see("header .who", LOAD).await;
    }

    /// Fills in and submits the login form, without waiting for what
    /// follows (a refused token stays on the login page).
    async fn submit_token(&self, token: &str) {
        self.goto("/login").await;
        self.client
            .find(Locator::Id("token"))
            .await
            .unwrap()
            .send_keys(token)
            .await
            .unwrap();
        self.client
            .find(Locator::Id("login"))
            .await
            .unwrap()
            .click()
            .await
            .unwrap();
    }

    /// Waits at most `within` for an element matching `css`.
    async fn see(&self, css: &str, within: Duration) -> fantoccini::elements::Element {
        match self
            .client
            .wait()
            .at_most(within)
            .for_element(Locator::Css(css))
            .await
        {
            Ok(element) => element,
            Err(e) => {
                self.screenshot("failed").await;
                let url = self
                    .client
                    .current_url()
                    .await
                    .map(|u| u.to_string())
                    .unwrap_or_default();
                let source = self.client.source().await.unwrap_or_default();
                panic!("{css} not visible within {within:?} on {url}: {e}\n{source}");
            }
        }
    }

    /// Saves a screenshot as `target/tmp/dashboard-<name>.png`.
    async fn screenshot(&self, name: &str) {
        let png = self.client.screenshot().await.unwrap();
        let path = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join(format!("dashboard-{name}.png"));
        std::fs::write(&path, png).unwrap();
    }

    /// Panics when the page reported a Content-Security-Policy violation
    /// (`live.js` counts them on the body).
    async fn assert_csp_held(&self) {
        let body = self.client.find(Locator::Css("body")).await.unwrap();
        let violations = body.attr("data-csp-violations").await.unwrap();
        let last = body.attr("data-csp-last").await.unwrap();
        assert_eq!(violations, None, "CSP violated: {last:?}");
    }

    async fn close(self) {
        self.assert_csp_held().await;
        self.client.clone().close().await.unwrap();
    }
}

fn viewer_token(server: &Server) -> String {
    std::fs::read_to_string(server.data_dir().join("viewer.token"))
        .unwrap()
        .trim()
        .to_owned()
}

#[tokio::test(flavor = "multi_thread")]
async fn a_wrong_token_is_refused_and_agents_appear_and_go_down_without_a_reload() {
    let _one = ONE_BROWSER.lock().await;
    let server = Server::start_with_dashboard().await;
    let browser = Browser::start(&server).await;
    browser.submit_token("not-the-token").await;
    let error = browser.see("#login-error", LOAD).await;
    assert!(error.text().await.unwrap().contains("neither"));
    browser.screenshot("login-refused").await;

    browser.login(&server.admin_token).await;
    browser.see("#fleet", LOAD).await;
    browser.see("body[data-live-state=open]", LOAD).await;
    let agent = Agent::new(11, "web-live");
    let (conn, _, _) = agent.connect(&server, Some(ENROLLMENT_TOKEN)).await;
    let row = format!("#agent-{} .presence-connected", agent.fp);
    browser.see(&row, VISIBLE).await;
    browser.screenshot("agent-connected").await;
    drop(conn);
    browser
        .see(&format!("#agent-{} .presence-down", agent.fp), VISIBLE)
        .await;
    browser.screenshot("agent-down").await;
    browser.assert_csp_held().await;
    // The policy is enforced: an inline script does not run, and the
    // violation is seen (so a real one in the tests above would be too).
    let ran = browser
        .client
        .execute(
            "var s = document.createElement('script'); s.textContent = 'window.injected = 1'; \
             document.body.appendChild(s); return window.injected === 1;",
            vec![],
        )
        .await
        .unwrap();
    assert_eq!(ran, false, "an inline script ran");
    browser.see("body[data-csp-violations]", LOAD).await;
    let body = browser.client.find(Locator::Css("body")).await.unwrap();
    let last = body
        .attr("data-csp-last")
        .await
        .unwrap()
        .unwrap_or_default();
    assert!(last.starts_with("script-src"), "{last}");
    browser.client.clone().close().await.unwrap();
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_row_on_the_page_changes_in_place_and_a_change_off_it_costs_the_tab_nothing() {
    use outrider_protocol::api::Presence;
    let _one = ONE_BROWSER.lock().await;
    let server = Server::start_with_dashboard().await;
    let (shown, off) = (Agent::new(14, "web-shown"), Agent::new(15, "db-off"));
    // Both in the fleet before the pages open: no membership change later.
    for agent in [&shown, &off] {
        let (conn, _, _) = agent.connect(&server, Some(ENROLLMENT_TOKEN)).await;
        drop(conn);
        server.wait_presence(&agent.fp, Presence::Down).await;
    }
    let browser = Browser::start(&server).await;
    browser.login(&viewer_token(&server)).await;
    browser.see("#fleet", LOAD).await;
    // A second tab shows the other agent, so its row is rendered and sent:
    // only the first tab's stream filter keeps it from that tab.
    let first = browser.client.window().await.unwrap();
    let second = browser.client.new_window(true).await.unwrap().handle;
    browser.client.switch_to_window(second).await.unwrap();
    browser.goto("/?q=db-off").await;
    browser.see(&format!("#agent-{}", off.fp), LOAD).await;
    browser.client.switch_to_window(first).await.unwrap();
    browser.goto("/?q=web-shown").await;
    browser
        .see(&format!("#agent-{} .presence-down", shown.fp), LOAD)
        .await;
    let (shown_conn, _, _) = shown.connect(&server, Some(ENROLLMENT_TOKEN)).await;
    browser
        .see(&format!("#agent-{} .presence-connected", shown.fp), VISIBLE)
        .await;
    // The agent off the page comes and goes; then the one on it goes down.
    let (off_conn, _, _) = off.connect(&server, Some(ENROLLMENT_TOKEN)).await;
    server.wait_presence(&off.fp, Presence::Connected).await;
    drop(off_conn);
    server.wait_presence(&off.fp, Presence::Down).await;
    drop(shown_conn);
    browser
        .see(&format!("#agent-{} .presence-down", shown.fp), VISIBLE)
        .await;
    // One stream, in order: a frame of the other agent would have come
    // before this one. None came, and the tab fetched nothing.
    let seen = browser
        .client
        .execute(
            "return [document.body.getAttribute('data-live-strays'), \
             performance.getEntriesByType('resource') \
               .filter(function (e) { return e.initiatorType === 'xmlhttprequest'; }).length];",
            vec![],
        )
        .await
        .unwrap();
    assert_eq!(seen, json!([null, 0]), "[rows not on the page, refetches]");
    browser.screenshot("filtered-stream").await;
    browser.close().await;
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn run_now_shows_the_output_inline_and_the_viewer_has_no_button() {
    let _one = ONE_BROWSER.lock().await;
    let server = Server::start_with_dashboard().await;
    let agent = Agent::new(12, "run-now");
    let (mut conn, _, _) = agent.connect(&server, Some(ENROLLMENT_TOKEN)).await;
    define_load_check(&server, &mut conn).await;
    conn.send_results(vec![result(1, "load", CheckState::Ok, "load 0.2")])
        .await;
    let page = format!("/agents/{}", agent.fp);

    let viewer = Browser::start(&server).await;
    viewer.login(&viewer_token(&server)).await;
    viewer.goto(&page).await;
    viewer.see(".check-state", LOAD).await;
    assert!(
        viewer
            .client
            .find(Locator::Css("button.run"))
            .await
            .is_err(),
        "no Run now for the viewer"
    );
    viewer.screenshot("agent-viewer").await;
    viewer.close().await;

    let admin = Browser::start(&server).await;
    admin.login(&server.admin_token).await;
    admin.goto(&page).await;
    admin.see("body[data-live-state=open]", LOAD).await;
    // The agent answers the run it is asked for.
    let answer = tokio::spawn(async move {
        let ServerMessage::RunCheck { id, check } = conn.recv().await else {
            panic!("expected the run");
        };
        let mut r = result(0, &check, CheckState::Critical, "load 31.7");
        r.duration_ms = 87;
        conn.send(&AgentMessage::RpcResult {
            id,
            result: Some(r),
            error: None,
        })
        .await;
        conn
    });
    admin.see("button.run", LOAD).await.click().await.unwrap();
    let output = admin.see(".run-result .run-output", VISIBLE).await;
    assert_eq!(output.text().await.unwrap(), "load 31.7");
    let line = admin.see(".run-result p", LOAD).await.text().await.unwrap();
    assert!(
        line.contains("CRITICAL") && line.contains("exit 2") && line.contains("87 ms"),
        "{line}"
    );
    admin.screenshot("run-now").await;
    drop(answer.await.unwrap());
    admin.close().await;
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_graph_draws_its_points() {
    let _one = ONE_BROWSER.lock().await;
    let server = Server::start_with_dashboard().await;
    let agent = Agent::new(13, "graphs");
    let (mut conn, _, _) = agent.connect(&server, Some(ENROLLMENT_TOKEN)).await;
    let now = outrider_protocol::unix_now_ms();
    let results = (1..=60u64)
        .map(|i| {
            let mut r = result(i, "load", CheckState::Ok, "load ok");
            r.started_at_ms = now - (61 - i as i64) * 60_000;
            r.perfdata = vec![outrider_protocol::PerfData {
                label: "load1".into(),
                value: (i % 7) as f64,
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
    let browser = Browser::start(&server).await;
    browser.login(&viewer_token(&server)).await;
    browser.goto(&format!("/agents/{}", agent.fp)).await;
    let figure = browser.see("figure.chart[data-points]", LOAD).await;
    let points: usize = figure
        .attr("data-points")
        .await
        .unwrap()
        .unwrap()
        .parse()
        .unwrap();
    assert!(points >= 30, "{points} points drawn");
    browser.see("figure.chart canvas", LOAD).await;
    browser.screenshot("graph").await;
    browser.close().await;
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn over_tls_the_dashboard_speaks_http2_and_the_cookie_is_secure() {
    let _one = ONE_BROWSER.lock().await;
    let cert =
        rcgen::generate_simple_self_signed(vec!["localhost".into(), "127.0.0.1".into()]).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let (cert_path, key_path) = (dir.path().join("cert.pem"), dir.path().join("key.pem"));
    std::fs::write(&cert_path, cert.cert.pem()).unwrap();
    std::fs::write(&key_path, cert.signing_key.serialize_pem()).unwrap();
    let server = Server::start_tls_with_dashboard(&cert_path, &key_path).await;
    let browser = Browser::start_with(&server, "https").await;
    browser.login(&server.admin_token).await;
    browser.see("#fleet", LOAD).await;
    browser.see("body[data-live-state=open]", LOAD).await;
    // Every tab's live stream shares one connection instead of taking one
    // of HTTP/1's six per host.
    let protocol = browser
        .client
        .execute(
            "return performance.getEntriesByType('navigation')[0].nextHopProtocol",
            vec![],
        )
        .await
        .unwrap();
    assert_eq!(protocol, "h2");
    let cookies = browser.client.get_all_cookies().await.unwrap();
    let session = cookies
        .iter()
        .find(|c| c.name() == "__Host-outrider_session")
        .expect("the session cookie");
    assert_eq!(
        (session.secure(), session.http_only()),
        (Some(true), Some(true))
    );
    browser.screenshot("tls-h2").await;
    browser.close().await;
    server.stop().await;
}
