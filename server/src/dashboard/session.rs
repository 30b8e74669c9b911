//! Dashboard logins: who may do what, CSRF verdicts, and the session table.
//!
//! A login form exchanges the admin token or the viewer token (both files
//! in the data directory, see `server/src/auth.rs`) for a session: a random
//! 256-bit id in an `HttpOnly`, `SameSite=Strict` cookie (`Secure` over
//! TLS). The table keeps the sha256 of each id, never the id, with the
//! session's role and its CSRF token. A session ends at logout, after
//! `--dashboard-idle-secs` without a request, or `--dashboard-session-secs`
//! after login, whichever comes first. The table lives in memory: a
//! server restart logs every browser out.
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
}

/// The session table (in memory; see the module documentation).
#[derive(Debug)]
pub struct Sessions {
    entries: Mutex<HashMap<[u8; 32], Entry>>,
    idle_ms: i64,
    max_ms: i64,
    /// Whether cookies are marked `Secure` (the dashboard speaks TLS).
    pub secure: bool,
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
    pub fn new(idle_secs: u64, max_secs: u64, secure: bool) -> Sessions {
        let ms = |secs: u64| i64::try_from(secs.saturating_mul(1000)).unwrap_or(i64::MAX);
        Sessions {
            entries: Mutex::new(HashMap::new()),
            idle_ms: ms(idle_secs),
            max_ms: ms(max_secs),
            secure,
        }
    }

    /// Opens a session for `role` at `now_ms`; returns the cookie's id.
    /// Fails only when the OS has no randomness to give.
    pub fn open(&self, role: Role, now_ms: i64) -> anyhow::Result<String> {
        let (id, csrf) = (random_hex()?, random_hex()?);
        let mut entries = self.entries.lock().unwrap_or_else(|p| p.into_inner());
        if entries.len() >= MAX_SESSIONS {
            let (idle, max) = (self.idle_ms, self.max_ms);
            entries.retain(|_, e| session_live(e.created_ms, e.last_ms, now_ms, idle, max));
        }
        if entries.len() >= MAX_SESSIONS
            && let Some(oldest) = entries
                .iter()
                .min_by_key(|(_, e)| e.last_ms)
                .map(|(k, _)| *k)
        {
            entries.remove(&oldest);
        }
        entries.insert(
            key(&id),
            Entry {
                role,
                csrf,
                created_ms: now_ms,
                last_ms: now_ms,
            },
        );
        Ok(id)
    }

    /// The session of cookie `id` at `now_ms`, marked as used; an expired
    /// one is removed and `None`.
    pub fn find(&self, id: &str, now_ms: i64) -> Option<Session> {
        let k = key(id);
        let mut entries = self.entries.lock().unwrap_or_else(|p| p.into_inner());
        let entry = entries.get_mut(&k)?;
        if !session_live(
            entry.created_ms,
            entry.last_ms,
            now_ms,
            self.idle_ms,
            self.max_ms,
        ) {
            entries.remove(&k);
            return None;
        }
        entry.last_ms = now_ms;
        Some(Session {
            role: entry.role,
            csrf: entry.csrf.clone(),
        })
    }

    /// Ends the session of cookie `id` (logout); `false` when there was none.
    pub fn close(&self, id: &str) -> bool {
        self.entries
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(&key(id))
            .is_some()
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

    #[test]
    fn open_find_touch_and_close() {
        let sessions = Sessions::new(10, 100, false);
        let id = sessions.open(Role::Viewer, 0).unwrap();
        assert_eq!(id.len(), 64);
        let found = sessions.find(&id, 9_000).unwrap();
        assert_eq!(found.role, Role::Viewer);
        // Used at 9 s, so still valid at 18 s; idle past 10 s after that.
        assert!(sessions.find(&id, 18_000).is_some());
        assert!(sessions.find(&id, 28_001).is_none());
        assert!(
            sessions.find(&id, 28_002).is_none(),
            "an expired session stays gone"
        );
        let id = sessions.open(Role::Admin, 0).unwrap();
        assert!(sessions.find("not-a-session", 0).is_none());
        assert!(sessions.close(&id));
        assert!(sessions.find(&id, 1).is_none());
        assert!(!sessions.close(&id));
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
