//! Dashboard logins: who may do what, CSRF verdicts, and the session table.
//!
//! A login form exchanges the admin token or the viewer token (both files
//! in the data directory, see `server/src/auth.rs`) for a session: a random
//! 256-bit id in an `HttpOnly`, `SameSite=Strict` cookie (`Secure` over
//! TLS). The table keeps the sha256 of each id, never the id, with the
//! session's role and its CSRF token. A session ends at logout, after
//! `--dashboard-idle-secs` without a request, or `--dashboard-session-secs`
//! after login, whichever comes first. The table lives in memory and is
//! written through to the store (`server/src/store/logins.rs`): a login, a
//! logout, its use every [`STORE_TOUCH_MS`]; a restart reads it back, so
//! it logs no browser out — except those logged in with a token that has
//! since been replaced ([`TokenHashes`]).
//!
//! Every state-changing request (any method but GET and HEAD) passes
//! [`csrf_verdict`]: a browser's `Sec-Fetch-Site` must say same-origin,
//! an `Origin` must be this dashboard's, and a logged-in form must carry
//! its session's CSRF token (a hidden field of every form).
//!
//! The decisions ([`may`], [`csrf_verdict`], [`session_live`]) are pure
//! functions tested by table; the handlers only carry them out.

use std::collections::HashMap;
use std::sync::Mutex;

use axum::http::{HeaderMap, Method, header};
use sha2::{Digest, Sha256};

use crate::auth::constant_time_eq;
use crate::store::{Store, StoredLogin};

/// Name of the session cookie; with the `__Host-` prefix over TLS, which
/// browsers accept only when `Secure`, for this host and path `/`.
pub const COOKIE: &str = "outrider_session";
const SECURE_COOKIE: &str = "__Host-outrider_session";

/// Sessions kept at once; a login beyond it ends the least recently used.
pub const MAX_SESSIONS: usize = 10_000;

/// Which token a session was opened with.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Role {
    /// The admin token: sees and acts.
    Admin,
    /// The viewer token: sees only (a wall screen).
    Viewer,
}

impl Role {
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Admin => "admin",
            Role::Viewer => "viewer",
        }
    }
}

/// What a dashboard request does.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Action {
    /// Read a page, a fragment or the live stream.
    View,
    /// End one's own session.
    Logout,
    /// Run a check on an agent now.
    RunCheck,
    /// Create an enrollment token (Add a host).
    CreateEnrollmentToken,
    /// Add or expire a silence.
    ChangeSilences,
}

impl Action {
    /// What the action is for, as the end of a refusal: "log in with the
    /// admin token to …".
    pub fn purpose(self) -> &'static str {
        match self {
            Action::View => "to view pages",
            Action::Logout => "to log out",
            Action::RunCheck => "to run checks",
            Action::CreateEnrollmentToken => "to add hosts",
            Action::ChangeSilences => "to change silences",
        }
    }
}

/// Whether `role` may do `action`.
pub fn may(role: Role, action: Action) -> bool {
    match action {
        Action::View | Action::Logout => true,
        Action::RunCheck | Action::CreateEnrollmentToken | Action::ChangeSilences => {
            role == Role::Admin
        }
    }
}

/// What a CSRF verdict looks at, taken from one request.
#[derive(Clone, Copy, Debug)]
pub struct CsrfInput<'a> {
    pub method: &'a Method,
    /// `Sec-Fetch-Site`, sent by every current browser.
    pub fetch_site: Option<&'a str>,
    /// `Origin`, sent by browsers on every POST.
    pub origin: Option<&'a str>,
    /// This dashboard's origin as the request reached it (`scheme://host`).
    pub own_origin: &'a str,
    /// The token the form carried.
    pub form_token: Option<&'a str>,
    /// The session's token; `None` for the login form (no session yet).
    pub session_token: Option<&'a str>,
}

/// Why a state-changing request was refused.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum CsrfRefusal {
    #[error("the request came from another site (Sec-Fetch-Site: {0})")]
    CrossSite(String),
    #[error("the request came from another origin ({0})")]
    ForeignOrigin(String),
    #[error("the form carried no CSRF token; reload the page and try again")]
    MissingToken,
    #[error("the form's CSRF token is not this session's; reload the page and try again")]
    WrongToken,
}

/// Whether a request may change state; GET and HEAD always may (they
/// change nothing on this dashboard).
pub fn csrf_verdict(input: &CsrfInput<'_>) -> Result<(), CsrfRefusal> {
    if *input.method == Method::GET || *input.method == Method::HEAD {
        return Ok(());
    }
    // `none`: typed or bookmarked by the user, never a page's doing.
    if let Some(site) = input.fetch_site
        && site != "same-origin"
        && site != "none"
    {
        return Err(CsrfRefusal::CrossSite(site.to_owned()));
    }
    if let Some(origin) = input.origin
        && origin != input.own_origin
    {
        return Err(CsrfRefusal::ForeignOrigin(origin.to_owned()));
    }
    match (input.session_token, input.form_token) {
        (None, _) => Ok(()),
        (Some(_), None) => Err(CsrfRefusal::MissingToken),
        (Some(expected), Some(given))
            if constant_time_eq(expected.as_bytes(), given.as_bytes()) =>
        {
            Ok(())
        }
        (Some(_), Some(_)) => Err(CsrfRefusal::WrongToken),
    }
}

/// Whether a session opened at `created_ms` and last used at `last_ms` is
/// still valid at `now_ms`.
pub fn session_live(created_ms: i64, last_ms: i64, now_ms: i64, idle_ms: i64, max_ms: i64) -> bool {
    now_ms.saturating_sub(last_ms) < idle_ms && now_ms.saturating_sub(created_ms) < max_ms
}

/// A valid session, as a handler sees it.
#[derive(Clone, Debug)]
pub struct Session {
    pub role: Role,
    /// The synchronizer token its forms carry.
    pub csrf: String,
}

#[derive(Debug)]
struct Entry {
    role: Role,
    csrf: String,
    created_ms: i64,
    last_ms: i64,
    /// `last_ms` as last written to the store.
    stored_last_ms: i64,
}

/// How far the stored `last_ms` of a session may lag its use: one write
/// per session every 5 minutes at most, not one per request.
pub const STORE_TOUCH_MS: i64 = 5 * 60_000;

/// SHA-256 (hex) of the tokens logins are opened with now: a stored login
/// opened with a token since replaced is dropped at start, so replacing a
/// leaked token also ends the sessions it opened.
#[derive(Clone, Debug, Default)]
pub struct TokenHashes {
    pub admin: String,
    pub viewer: String,
}

impl TokenHashes {
    /// The hashes of `admin` and `viewer`.
    pub fn of(admin: &str, viewer: &str) -> TokenHashes {
        let hash = |t: &str| hex::encode(Sha256::digest(t.as_bytes()));
        TokenHashes {
            admin: hash(admin),
            viewer: hash(viewer),
        }
    }

    fn role(&self, role: Role) -> &str {
        match role {
            Role::Admin => &self.admin,
            Role::Viewer => &self.viewer,
        }
    }
}

/// The session table: in memory, written through to the store when it has
/// one, so a restart logs no browser out (see the module documentation).
#[derive(Debug)]
pub struct Sessions {
    entries: Mutex<HashMap<[u8; 32], Entry>>,
    idle_ms: i64,
    max_ms: i64,
    /// Whether cookies are marked `Secure` (the dashboard speaks TLS).
    pub secure: bool,
    store: Option<Store>,
    tokens: TokenHashes,
}

fn key(id: &str) -> [u8; 32] {
    Sha256::digest(id.as_bytes()).into()
}

fn random_hex() -> anyhow::Result<String> {
    let mut bytes = [0u8; 32];
    getrandom::fill(&mut bytes).map_err(|e| anyhow::anyhow!("reading OS randomness: {e}"))?;
    Ok(hex::encode(bytes))
}

impl Sessions {
    /// A table kept in memory only.
    pub fn new(idle_secs: u64, max_secs: u64, secure: bool) -> Sessions {
        let ms = |secs: u64| i64::try_from(secs.saturating_mul(1000)).unwrap_or(i64::MAX);
        Sessions {
            entries: Mutex::new(HashMap::new()),
            idle_ms: ms(idle_secs),
            max_ms: ms(max_secs),
            secure,
            store: None,
            tokens: TokenHashes::default(),
        }
    }

    /// A table written through to `store`, starting with the logins stored
    /// there that are still valid at `now_ms` and were opened with today's
    /// `tokens` (the others are deleted). Fails when the store cannot be read.
    pub async fn stored(
        idle_secs: u64,
        max_secs: u64,
        secure: bool,
        store: Store,
        tokens: TokenHashes,
        now_ms: i64,
    ) -> anyhow::Result<Sessions> {
        let mut sessions = Sessions::new(idle_secs, max_secs, secure);
        let (idle, max) = (sessions.idle_ms, sessions.max_ms);
        let current = tokens.clone();
        let live = store
            .live_logins(move |l| {
                let token_now = match l.role.as_str() {
                    "admin" => &current.admin,
                    _ => &current.viewer,
                };
                !session_live(l.created_ms, l.last_ms, now_ms, idle, max)
                    || l.token_sha256 != *token_now
            })
            .await?;
        {
            let entries = sessions
                .entries
                .get_mut()
                .unwrap_or_else(|p| p.into_inner());
            for login in live {
                let role = match login.role.as_str() {
                    "admin" => Role::Admin,
                    "viewer" => Role::Viewer,
                    // The table's CHECK allows no other value.
                    _ => continue,
                };
                entries.insert(
                    login.key,
                    Entry {
                        role,
                        csrf: login.csrf,
                        created_ms: login.created_ms,
                        last_ms: login.last_ms,
                        stored_last_ms: login.last_ms,
                    },
                );
            }
        }
        sessions.store = Some(store);
        sessions.tokens = tokens;
        Ok(sessions)
    }

    /// Opens a session for `role` at `now_ms`; returns the cookie's id.
    /// Fails only when the OS has no randomness to give; a store that
    /// cannot record it is logged (the session lives until a restart).
    pub async fn open(&self, role: Role, now_ms: i64) -> anyhow::Result<String> {
        let (id, csrf) = (random_hex()?, random_hex()?);
        let k = key(&id);
        let evicted = {
            let mut entries = self.entries.lock().unwrap_or_else(|p| p.into_inner());
            let mut evicted = Vec::new();
            if entries.len() >= MAX_SESSIONS {
                let (idle, max) = (self.idle_ms, self.max_ms);
                entries.retain(|k, e| {
                    let live = session_live(e.created_ms, e.last_ms, now_ms, idle, max);
                    if !live {
                        evicted.push(*k);
                    }
                    live
                });
            }
            if entries.len() >= MAX_SESSIONS
                && let Some(oldest) = entries
                    .iter()
                    .min_by_key(|(_, e)| e.last_ms)
                    .map(|(k, _)| *k)
            {
                entries.remove(&oldest);
                evicted.push(oldest);
            }
            entries.insert(
                k,
                Entry {
                    role,
                    csrf: csrf.clone(),
                    created_ms: now_ms,
                    last_ms: now_ms,
                    stored_last_ms: now_ms,
                },
            );
            evicted
        };
        if let Some(store) = &self.store {
            for old in evicted {
                if let Err(e) = store.delete_login(old).await {
                    tracing::warn!("forgetting an ended dashboard login: {e:#}");
                }
            }
            let login = StoredLogin {
                key: k,
                role: role.as_str().to_owned(),
                csrf,
                token_sha256: self.tokens.role(role).to_owned(),
                created_ms: now_ms,
                last_ms: now_ms,
            };
            if let Err(e) = store.save_login(login).await {
                tracing::warn!("storing a dashboard login (it ends at a restart): {e:#}");
            }
        }
        Ok(id)
    }

    /// The session of cookie `id` at `now_ms`, marked as used; an expired
    /// one is removed and `None`.
    pub async fn find(&self, id: &str, now_ms: i64) -> Option<Session> {
        enum Write {
            Nothing,
            Touch,
            Delete,
        }
        let k = key(id);
        let (found, write) = {
            let mut entries = self.entries.lock().unwrap_or_else(|p| p.into_inner());
            let entry = entries.get_mut(&k)?;
            if session_live(
                entry.created_ms,
                entry.last_ms,
                now_ms,
                self.idle_ms,
                self.max_ms,
            ) {
                entry.last_ms = now_ms;
                let write = if now_ms - entry.stored_last_ms >= STORE_TOUCH_MS {
                    entry.stored_last_ms = now_ms;
                    Write::Touch
                } else {
                    Write::Nothing
                };
                let session = Session {
                    role: entry.role,
                    csrf: entry.csrf.clone(),
                };
                (Some(session), write)
            } else {
                entries.remove(&k);
                (None, Write::Delete)
            }
        };
        if let Some(store) = &self.store {
            let written = match write {
                Write::Nothing => Ok(()),
                Write::Touch => store.touch_login(k, now_ms).await,
                Write::Delete => store.delete_login(k).await,
            };
            if let Err(e) = written {
                tracing::warn!("recording the use of a dashboard login: {e:#}");
            }
        }
        found
    }

    /// Ends the session of cookie `id` (logout); `false` when there was none.
    pub async fn close(&self, id: &str) -> bool {
        let k = key(id);
        let found = self
            .entries
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(&k)
            .is_some();
        if let Some(store) = &self.store
            && let Err(e) = store.delete_login(k).await
        {
            tracing::warn!("forgetting a dashboard login at logout: {e:#}");
        }
        found
    }

    /// The cookie's name.
    pub fn cookie_name(&self) -> &'static str {
        if self.secure { SECURE_COOKIE } else { COOKIE }
    }

    /// `Set-Cookie` for a new session `id`.
    pub fn set_cookie(&self, id: &str) -> String {
        format!(
            "{}={id}; Path=/; HttpOnly; SameSite=Strict; Max-Age={}{}",
            self.cookie_name(),
            self.max_ms / 1000,
            if self.secure { "; Secure" } else { "" }
        )
    }

    /// `Set-Cookie` that removes the cookie.
    pub fn clear_cookie(&self) -> String {
        format!(
            "{}=; Path=/; HttpOnly; SameSite=Strict; Max-Age=0{}",
            self.cookie_name(),
            if self.secure { "; Secure" } else { "" }
        )
    }

    /// The session id the request's cookie carries, if any.
    pub fn cookie_id<'a>(&self, headers: &'a HeaderMap) -> Option<&'a str> {
        let name = self.cookie_name();
        headers
            .get_all(header::COOKIE)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(';'))
            .filter_map(|pair| pair.trim().split_once('='))
            .find(|(k, _)| *k == name)
            .map(|(_, v)| v)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn what_each_role_may_do() {
        for (role, action, allowed) in [
            (Role::Admin, Action::View, true),
            (Role::Admin, Action::Logout, true),
            (Role::Admin, Action::RunCheck, true),
            (Role::Viewer, Action::View, true),
            (Role::Viewer, Action::Logout, true),
            (Role::Viewer, Action::RunCheck, false),
            (Role::Admin, Action::CreateEnrollmentToken, true),
            (Role::Viewer, Action::CreateEnrollmentToken, false),
            (Role::Admin, Action::ChangeSilences, true),
            (Role::Viewer, Action::ChangeSilences, false),
        ] {
            assert_eq!(may(role, action), allowed, "{role:?} {action:?}");
        }
    }

    #[test]
    fn csrf_verdicts_by_table() {
        let own = "http://127.0.0.1:8471";
        let post = Method::POST;
        let get = Method::GET;
        let base = CsrfInput {
            method: &post,
            fetch_site: Some("same-origin"),
            origin: Some(own),
            own_origin: own,
            form_token: Some("t"),
            session_token: Some("t"),
        };
        use CsrfRefusal::*;
        let cases: Vec<(&str, CsrfInput<'_>, Result<(), CsrfRefusal>)> = vec![
            ("same-origin form with its token", base, Ok(())),
            (
                "GET changes nothing",
                CsrfInput {
                    method: &get,
                    fetch_site: Some("cross-site"),
                    form_token: None,
                    ..base
                },
                Ok(()),
            ),
            (
                "cross-site POST",
                CsrfInput {
                    fetch_site: Some("cross-site"),
                    ..base
                },
                Err(CrossSite("cross-site".into())),
            ),
            (
                "same-site but other origin (a sibling subdomain)",
                CsrfInput {
                    fetch_site: Some("same-site"),
                    ..base
                },
                Err(CrossSite("same-site".into())),
            ),
            (
                "foreign Origin",
                CsrfInput {
                    fetch_site: None,
                    origin: Some("http://evil.example"),
                    ..base
                },
                Err(ForeignOrigin("http://evil.example".into())),
            ),
            (
                "opaque Origin (sandboxed frame)",
                CsrfInput {
                    fetch_site: None,
                    origin: Some("null"),
                    ..base
                },
                Err(ForeignOrigin("null".into())),
            ),
            (
                "no browser headers but the token (curl with the cookie)",
                CsrfInput {
                    fetch_site: None,
                    origin: None,
                    ..base
                },
                Ok(()),
            ),
            (
                "missing token",
                CsrfInput {
                    form_token: None,
                    ..base
                },
                Err(MissingToken),
            ),
            (
                "wrong token",
                CsrfInput {
                    form_token: Some("x"),
                    ..base
                },
                Err(WrongToken),
            ),
            (
                "login form: no session, same origin",
                CsrfInput {
                    form_token: None,
                    session_token: None,
                    ..base
                },
                Ok(()),
            ),
            (
                "login form posted from another site",
                CsrfInput {
                    fetch_site: Some("cross-site"),
                    form_token: None,
                    session_token: None,
                    ..base
                },
                Err(CrossSite("cross-site".into())),
            ),
        ];
        for (name, input, expected) in cases {
            assert_eq!(csrf_verdict(&input), expected, "{name}");
        }
    }

    #[test]
    fn sessions_expire_when_idle_or_old() {
        let (idle, max) = (100, 1000);
        for (created, last, now, live) in [
            (0, 0, 0, true),
            (0, 0, 99, true),
            (0, 0, 100, false),
            (0, 950, 999, true),
            (0, 950, 1000, false),
            (0, 0, i64::MAX, false),
        ] {
            assert_eq!(
                session_live(created, last, now, idle, max),
                live,
                "{created} {last} {now}"
            );
        }
    }

    #[tokio::test]
    async fn open_find_touch_and_close() {
        let sessions = Sessions::new(10, 100, false);
        let id = sessions.open(Role::Viewer, 0).await.unwrap();
        assert_eq!(id.len(), 64);
        let found = sessions.find(&id, 9_000).await.unwrap();
        assert_eq!(found.role, Role::Viewer);
        // Used at 9 s, so still valid at 18 s; idle past 10 s after that.
        assert!(sessions.find(&id, 18_000).await.is_some());
        assert!(sessions.find(&id, 28_001).await.is_none());
        assert!(
            sessions.find(&id, 28_002).await.is_none(),
            "an expired session stays gone"
        );
        let id = sessions.open(Role::Admin, 0).await.unwrap();
        assert!(sessions.find("not-a-session", 0).await.is_none());
        assert!(sessions.close(&id).await);
        assert!(sessions.find(&id, 1).await.is_none());
        assert!(!sessions.close(&id).await);
    }

    #[tokio::test]
    async fn stored_sessions_survive_a_restart_until_they_end() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(&dir.path().join("t.db")).await.unwrap();
        let hour = 3_600_000;
        // Idle after 2 h, at most 10 h.
        let tokens = TokenHashes::of("admin-token", "viewer-token");
        let sessions = Sessions::stored(7200, 36_000, false, store.clone(), tokens.clone(), 0)
            .await
            .unwrap();
        let kept = sessions.open(Role::Viewer, 0).await.unwrap();
        let idle = sessions.open(Role::Admin, 0).await.unwrap();
        let out = sessions.open(Role::Admin, 0).await.unwrap();
        let csrf = sessions.find(&kept, 0).await.unwrap().csrf;
        // Used at 1.5 h: more than STORE_TOUCH_MS later, so it is written.
        sessions.find(&kept, 90 * 60_000).await.unwrap();
        assert!(sessions.close(&out).await);
        drop(sessions);

        // Restarted at 3 h: `kept` was used 1.5 h ago, `idle` 3 h ago.
        let restarted =
            Sessions::stored(7200, 36_000, false, store.clone(), tokens.clone(), 3 * hour)
                .await
                .unwrap();
        let found = restarted.find(&kept, 3 * hour).await.unwrap();
        assert_eq!((found.role, found.csrf), (Role::Viewer, csrf));
        assert!(restarted.find(&idle, 3 * hour).await.is_none());
        assert!(restarted.find(&out, 3 * hour).await.is_none());
        // Ended ones were deleted from the store, not just skipped.
        assert_eq!(store.live_logins(|_| false).await.unwrap().len(), 1);
        drop(restarted);

        // The viewer token replaced (it leaked): its sessions end.
        let replaced = TokenHashes::of("admin-token", "new-viewer-token");
        let restarted = Sessions::stored(7200, 36_000, false, store.clone(), replaced, 3 * hour)
            .await
            .unwrap();
        assert!(restarted.find(&kept, 3 * hour).await.is_none());
        assert!(store.live_logins(|_| false).await.unwrap().is_empty());
    }

    #[test]
    fn the_cookie_is_http_only_strict_and_secure_over_tls() {
        let plain = Sessions::new(10, 100, false);
        let cookie = plain.set_cookie("abc");
        assert_eq!(
            cookie,
            "outrider_session=abc; Path=/; HttpOnly; SameSite=Strict; Max-Age=100"
        );
        let tls = Sessions::new(10, 100, true);
        assert!(
            tls.set_cookie("abc")
                .starts_with("__Host-outrider_session=abc;")
        );
        assert!(tls.set_cookie("abc").ends_with("; Secure"));
        let mut headers = HeaderMap::new();
        headers.insert(
            header::COOKIE,
            "a=b; outrider_session=xyz; c=d".parse().unwrap(),
        );
        assert_eq!(plain.cookie_id(&headers), Some("xyz"));
        assert_eq!(tls.cookie_id(&headers), None);
    }
}
