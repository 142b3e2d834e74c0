//! Who is asking, and what they may do: sign-in against the users file,
//! sessions that expire, and the CSRF token every action carries.
//!
//! Without a users file (allowed on loopback only) everyone is a viewer
//! with no session: anyone on the machine reaches loopback, so nobody acts
//! there without signing in. With one, every page needs a session; a
//! session is a random token in an HttpOnly, SameSite=Strict cookie, kept
//! in this process's memory only and valid for a fixed time from sign-in.
//! Each session has its own CSRF token, which every form that acts sends
//! back; a POST whose token is missing or wrong is refused (403), and so is
//! any action of a viewer.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::extract::FromRequestParts;
use axum::http::request::Parts;
use axum::http::{HeaderMap, Method, StatusCode, header};
use axum::response::{IntoResponse, Redirect, Response};

use crate::dashboard::pages::PageError;
use crate::dashboard::server::AppState;
use crate::dashboard::users::{Role, Users};

/// The session cookie.
pub(crate) const SESSION_COOKIE: &str = "provision_dashboard_session";
/// The sign-in form's own cookie: the form's nonce must match it, so a
/// page elsewhere cannot sign a browser in as someone else.
pub(crate) const LOGIN_COOKIE: &str = "provision_dashboard_login";
/// Sent by the dashboard's script on its live fetches: they get a 401, not
/// the sign-in page, once the session has expired.
pub(crate) const LIVE_HEADER: &str = "x-dashboard-live";

/// How visitors are let in.
#[derive(Debug)]
pub(crate) enum Access {
    /// No users file: everyone reads, nobody acts (loopback only).
    Open,
    /// Signed-in users of the file, each with a role.
    Users(Arc<Users>),
}

/// A message shown once, on the next page (after an action's redirect).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Flash {
    pub(crate) ok: bool,
    pub(crate) text: String,
}

#[derive(Debug, Clone)]
struct Session {
    user: String,
    role: Role,
    csrf: String,
    expires_at: Instant,
    flash: Option<Flash>,
}

/// The sessions of this process.
#[derive(Debug)]
pub(crate) struct Sessions {
    ttl: Duration,
    by_token: Mutex<HashMap<String, Session>>,
}

/// 32 random bytes as hex: a session token, a CSRF token, a nonce.
pub(crate) fn random_token() -> String {
    let mut bytes = [0u8; 32];
    getrandom::fill(&mut bytes).expect("the operating system's random source failed");
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Compares secrets in time that does not depend on where they differ.
pub(crate) fn same_secret(a: &str, b: &str) -> bool {
    a.len() == b.len() && a.bytes().zip(b.bytes()).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

impl Sessions {
    pub(crate) fn new(ttl: Duration) -> Self {
        Self {
            ttl,
            by_token: Mutex::new(HashMap::new()),
        }
    }

    pub(crate) fn ttl(&self) -> Duration {
        self.ttl
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, Session>> {
        // A panic while holding the lock leaves the map as it was: usable.
        self.by_token
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Opens a session for `user`; returns its token. Expired sessions are
    /// dropped here, so the map holds only live ones and those signed in
    /// since.
    pub(crate) fn open(&self, user: &str, role: Role) -> String {
        let token = random_token();
        let now = Instant::now();
        let mut sessions = self.lock();
        sessions.retain(|_, s| s.expires_at > now);
        sessions.insert(
            token.clone(),
            Session {
                user: user.to_owned(),
                role,
                csrf: random_token(),
                expires_at: now + self.ttl,
                flash: None,
            },
        );
        token
    }

    fn find(&self, token: &str) -> Option<Session> {
        self.find_at(token, Instant::now())
    }

    /// The session of `token` as it is at `now`: gone once expired.
    fn find_at(&self, token: &str, now: Instant) -> Option<Session> {
        let mut sessions = self.lock();
        match sessions.get(token) {
            Some(s) if s.expires_at > now => Some(s.clone()),
            Some(_) => {
                sessions.remove(token);
                None
            }
            None => None,
        }
    }

    pub(crate) fn close(&self, token: &str) {
        self.lock().remove(token);
    }

    pub(crate) fn set_flash(&self, token: &str, flash: Flash) {
        if let Some(s) = self.lock().get_mut(token) {
            s.flash = Some(flash);
        }
    }

    fn take_flash(&self, token: &str) -> Option<Flash> {
        self.lock().get_mut(token).and_then(|s| s.flash.take())
    }
}

/// The value of cookie `name` in the request's `Cookie` headers.
pub(crate) fn cookie<'h>(headers: &'h HeaderMap, name: &str) -> Option<&'h str> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|pair| pair.trim().split_once('='))
        .find(|(k, _)| *k == name)
        .map(|(_, v)| v)
}

/// A `Set-Cookie` value for a cookie only this site's requests carry and
/// no script reads.
pub(crate) fn set_cookie(name: &str, value: &str, path: &str, max_age: Duration) -> String {
    format!(
        "{name}={value}; Path={path}; Max-Age={}; HttpOnly; SameSite=Strict",
        max_age.as_secs()
    )
}

/// Where a sign-in or an action may send the browser afterwards: a path of
/// this site, never another host (`//host`, `/\host`, or one a browser
/// makes of a path with a tab or newline in it), and ASCII only, as a
/// `Location` header must be.
pub(crate) fn safe_next(next: Option<&str>) -> String {
    match next {
        Some(n) if n.starts_with('/') && !n.starts_with("//") && !n.contains('\\') => {
            let mut out = String::with_capacity(n.len());
            for b in n.bytes() {
                if b.is_ascii_graphic() {
                    out.push(b as char);
                } else {
                    out.push_str(&format!("%{b:02X}"));
                }
            }
            out
        }
        _ => "/".to_owned(),
    }
}

/// Who is asking.
#[derive(Debug, Clone)]
pub(crate) struct Visitor {
    /// The user's name (`anyone` without a users file).
    pub(crate) name: String,
    pub(crate) role: Role,
    /// The session's CSRF token, for the forms of a page.
    pub(crate) csrf: Option<String>,
    token: Option<String>,
    state: Arc<AppState>,
}

impl Visitor {
    /// Whether this visitor may act: the pages show actions to them only.
    pub(crate) fn may_act(&self) -> bool {
        self.role == Role::Operator && self.csrf.is_some()
    }

    /// Whether the visitor signed in (and has a session to sign out of).
    pub(crate) fn signed_in(&self) -> bool {
        self.token.is_some()
    }

    /// The actor an action of this visitor is recorded as, once `csrf` (the
    /// form's token) is the session's and the visitor is an operator.
    pub(crate) fn authorize(&self, csrf: Option<&str>) -> Result<String, PageError> {
        if self.role != Role::Operator {
            return Err(PageError::new(
                StatusCode::FORBIDDEN,
                "Not allowed",
                format!(
                    "{} is a {}: a viewer reads the dashboard and has no action.",
                    self.name, self.role
                ),
            ));
        }
        match (csrf, &self.csrf) {
            (Some(given), Some(expected)) if same_secret(given, expected) => {
                Ok(format!("dashboard ({})", self.name))
            }
            _ => Err(PageError::new(
                StatusCode::FORBIDDEN,
                "Refused",
                "The form's CSRF token is missing or is not this session's: reload the page and try again.",
            )),
        }
    }

    /// The message left for this page by the last action, once.
    pub(crate) fn take_flash(&self) -> Option<Flash> {
        self.token
            .as_deref()
            .and_then(|t| self.state.sessions.take_flash(t))
    }

    /// Leaves a message for the next page.
    pub(crate) fn flash(&self, ok: bool, text: impl Into<String>) {
        if let Some(token) = &self.token {
            self.state.sessions.set_flash(
                token,
                Flash {
                    ok,
                    text: text.into(),
                },
            );
        }
    }

    /// The session's token, for signing out.
    pub(crate) fn token(&self) -> Option<&str> {
        self.token.as_deref()
    }
}

impl FromRequestParts<Arc<AppState>> for Visitor {
    type Rejection = Response;

    async fn from_request_parts(parts: &mut Parts, state: &Arc<AppState>) -> Result<Self, Self::Rejection> {
        if matches!(state.access, Access::Open) {
            return Ok(Self {
                name: "anyone".into(),
                role: Role::Viewer,
                csrf: None,
                token: None,
                state: state.clone(),
            });
        }
        let found = cookie(&parts.headers, SESSION_COOKIE)
            .and_then(|token| state.sessions.find(token).map(|s| (token.to_owned(), s)));
        if let Some((token, session)) = found {
            return Ok(Self {
                name: session.user,
                role: session.role,
                csrf: Some(session.csrf),
                token: Some(token),
                state: state.clone(),
            });
        }
        let live = parts.headers.contains_key(LIVE_HEADER);
        if (parts.method == Method::GET || parts.method == Method::HEAD) && !live {
            let next = parts.uri.path_and_query().map_or("/", |p| p.as_str());
            let target = format!("/login?next={}", percent_encode(next));
            return Err(Redirect::to(&target).into_response());
        }
        Err(PageError::new(
            StatusCode::UNAUTHORIZED,
            "Signed out",
            "There is no session, or it has expired: sign in again.",
        )
        .into_response())
    }
}

/// `text` safe in a query string's value.
pub(crate) fn percent_encode(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for b in text.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b'~' | b'/') {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sessions_expire_and_flashes_show_once() {
        let sessions = Sessions::new(Duration::from_secs(60));
        let token = sessions.open("alice", Role::Operator);
        let session = sessions.find(&token).unwrap();
        assert_eq!((session.user.as_str(), session.role), ("alice", Role::Operator));
        assert_eq!(session.csrf.len(), 64);
        sessions.set_flash(
            &token,
            Flash {
                ok: true,
                text: "done".into(),
            },
        );
        assert_eq!(sessions.take_flash(&token).unwrap().text, "done");
        assert_eq!(sessions.take_flash(&token), None);
        let later = Instant::now() + Duration::from_secs(61);
        assert!(sessions.find_at(&token, later).is_none());
        assert!(sessions.find(&token).is_none(), "an expired session is removed");
        assert!(sessions.find("not-a-token").is_none());
    }

    #[test]
    fn cookies_secrets_and_next_paths() {
        let mut headers = HeaderMap::new();
        headers.insert(
            header::COOKIE,
            "a=1; provision_dashboard_session=abc; b=2".parse().unwrap(),
        );
        assert_eq!(cookie(&headers, SESSION_COOKIE), Some("abc"));
        assert_eq!(cookie(&headers, "c"), None);
        assert!(same_secret("abc", "abc"));
        assert!(!same_secret("abc", "abd"));
        assert!(!same_secret("abc", "abcd"));
        assert_eq!(safe_next(Some("/tenants?state=failed")), "/tenants?state=failed");
        assert_eq!(safe_next(Some("//evil.example")), "/");
        assert_eq!(safe_next(Some("https://evil.example")), "/");
        assert_eq!(safe_next(None), "/");
        assert_eq!(safe_next(Some("/\t/evil.example")), "/%09/evil.example");
        assert_eq!(safe_next(Some("/tenants?q=Νί")), "/tenants?q=%CE%9D%CE%AF");
        assert_eq!(
            percent_encode("/tenants?q=Νί&x"),
            "/tenants%3Fq%3D%CE%9D%CE%AF%26x"
        );
    }
}
