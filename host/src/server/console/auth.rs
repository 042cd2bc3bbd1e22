//! Who may use the console. With an `api_token`, the login form asks for it once and sets a session cookie
//! (`HttpOnly`, `SameSite=Strict`); without one, every visitor gets a session at once (`flowhost serve` listens
//! on loopback then, unless its operator said otherwise). Either way every action is a POST carrying the
//! session's CSRF token.
//!
//! Sessions are stateless: the cookie is `<issued>.<nonce>.<mac>`, a MAC under a key derived from the API token
//! (so sessions survive a restart and work across processes sharing the token), or a random key without a token.
//! The CSRF token is another MAC of the nonce. Neither holds nor reveals the token.

use super::{Console, page};
use crate::connector::secrets::token_matches;
use crate::store::now_ms;
use axum::Form;
use axum::extract::{FromRequestParts, Request, State};
use axum::http::request::Parts;
use axum::http::{HeaderValue, Method, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use hmac::{Hmac, Mac};
use maud::html;
use rand::RngCore;
use secrecy::{ExposeSecret, SecretString};
use serde::Deserialize;
use sha2::Sha256;
use subtle::ConstantTimeEq;

const COOKIE: &str = "flowhost_console";
/// How long a login lasts.
const SESSION_MS: i64 = 12 * 3600 * 1000;

/// The key of the session MACs. Never printed.
pub(super) struct SessionKey([u8; 32]);

impl SessionKey {
    pub(super) fn new(api_token: Option<&SecretString>) -> Self {
        match api_token {
            Some(token) => {
                let mut mac = <Hmac<Sha256>>::new_from_slice(token.expose_secret().as_bytes())
                    .expect("HMAC takes a key of any length");
                mac.update(b"flowhost console session key v1");
                SessionKey(mac.finalize().into_bytes().into())
            }
            None => {
                let mut key = [0u8; 32];
                rand::rng().fill_bytes(&mut key);
                SessionKey(key)
            }
        }
    }

    fn mac(&self, parts: &[&str]) -> String {
        let mut mac = <Hmac<Sha256>>::new_from_slice(&self.0).expect("HMAC takes a key of any length");
        for part in parts {
            mac.update(part.as_bytes());
            mac.update(b"\0");
        }
        hex::encode(mac.finalize().into_bytes())
    }

    /// A new session cookie's value.
    fn issue(&self) -> (String, String) {
        let mut nonce = [0u8; 16];
        rand::rng().fill_bytes(&mut nonce);
        let (issued, nonce) = (now_ms().to_string(), hex::encode(nonce));
        let mac = self.mac(&["session", &issued, &nonce]);
        (format!("{issued}.{nonce}.{mac}"), nonce)
    }

    /// The nonce of a cookie value this key issued that has not expired.
    fn verify(&self, cookie: &str) -> Option<String> {
        let mut parts = cookie.split('.');
        let (issued, nonce, mac) = (parts.next()?, parts.next()?, parts.next()?);
        let issued_ms: i64 = issued.parse().ok()?;
        let expected = self.mac(&["session", issued, nonce]);
        let fresh = (0..SESSION_MS).contains(&(now_ms() - issued_ms));
        (parts.next().is_none() && fresh && bool::from(expected.as_bytes().ct_eq(mac.as_bytes())))
            .then(|| nonce.to_string())
    }

    fn csrf(&self, nonce: &str) -> String {
        self.mac(&["csrf", nonce])[..32].to_string()
    }
}

/// The visitor's session, for the pages: whether they logged in (a token is set) and the CSRF token of forms.
#[derive(Debug, Clone)]
pub(in crate::server) struct Session {
    pub logged_in: bool,
    pub csrf: String,
}

impl Session {
    /// Whether a form's CSRF token is this session's.
    pub fn accepts(&self, presented: &str) -> bool {
        self.csrf.as_bytes().ct_eq(presented.as_bytes()).into()
    }
}

impl<S: Send + Sync> FromRequestParts<S> for Session {
    type Rejection = StatusCode;

    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Self, Self::Rejection> {
        parts.extensions.get::<Session>().cloned().ok_or(StatusCode::INTERNAL_SERVER_ERROR)
    }
}

fn session_cookie(request_headers: &axum::http::HeaderMap) -> Option<&str> {
    request_headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|value| value.to_str().ok())
        .flat_map(|value| value.split(';'))
        .filter_map(|pair| pair.trim().split_once('='))
        .find(|(name, _)| *name == COOKIE)
        .map(|(_, value)| value)
}

fn set_cookie(value: &str, max_age_s: i64) -> HeaderValue {
    let cookie = format!("{COOKIE}={value}; Path=/ui; HttpOnly; SameSite=Strict; Max-Age={max_age_s}");
    HeaderValue::from_str(&cookie).expect("the cookie is hex digits and dots")
}

/// Lets a request through with its [`Session`], or sends the visitor to the login form.
pub(super) async fn require_session(State(console): State<Console>, mut request: Request, next: Next) -> Response {
    let nonce = session_cookie(request.headers()).and_then(|cookie| console.key.verify(cookie));
    let logged_in = console.requires_login();
    match nonce {
        Some(nonce) => {
            request.extensions_mut().insert(Session { logged_in, csrf: console.key.csrf(&nonce) });
            next.run(request).await
        }
        None if !logged_in => {
            let (cookie, nonce) = console.key.issue();
            request.extensions_mut().insert(Session { logged_in, csrf: console.key.csrf(&nonce) });
            let mut response = next.run(request).await;
            response.headers_mut().append(header::SET_COOKIE, set_cookie(&cookie, SESSION_MS / 1000));
            response
        }
        None if request.method() == Method::GET && !request.uri().path().starts_with("/ui/live/") => {
            let wanted = request.uri().path_and_query().map(|p| p.as_str()).unwrap_or("/ui");
            super::see_other(&format!("/ui/login?next={}", super::encode(wanted)))
        }
        None => (StatusCode::UNAUTHORIZED, "log in first: /ui/login").into_response(),
    }
}

#[derive(Debug, Deserialize)]
pub(super) struct LoginQuery {
    next: Option<String>,
}

/// Where to go after logging in: a console page, never another site.
fn safe_next(next: Option<&str>) -> &str {
    match next {
        Some(next) if next.starts_with("/ui") && !next.contains("//") && !next.contains('\\') => next,
        _ => "/ui",
    }
}

fn login_form(next: &str, wrong: bool) -> maud::Markup {
    let session = Session { logged_in: false, csrf: String::new() };
    page(
        "Log in",
        "",
        &session,
        html! {
            div.login {
                h1 { "Log in to flowhost" }
                p.muted { "The console takes the service's API token (" code { "api_token" } " in flowhost.toml)." }
                @if wrong { p.notice.bad role="alert" { "That token is not the API token. Try again." } }
                form method="post" action="/ui/login" {
                    input type="hidden" name="next" value=(next);
                    label for="token" { "API token" }
                    input #token type="password" name="token" autocomplete="current-password" required autofocus;
                    button.primary type="submit" { "Log in" }
                }
            }
        },
    )
}

pub(super) async fn login_page(
    State(console): State<Console>,
    axum::extract::Query(query): axum::extract::Query<LoginQuery>,
    headers: axum::http::HeaderMap,
) -> Response {
    let valid = session_cookie(&headers).and_then(|cookie| console.key.verify(cookie)).is_some();
    if !console.requires_login() || valid {
        return super::see_other(safe_next(query.next.as_deref()));
    }
    login_form(safe_next(query.next.as_deref()), false).into_response()
}

#[derive(Deserialize)]
pub(super) struct LoginForm {
    token: String,
    next: Option<String>,
}

pub(super) async fn login(State(console): State<Console>, Form(form): Form<LoginForm>) -> Response {
    let next = safe_next(form.next.as_deref()).to_string();
    let Some(expected) = &console.api.api_token else { return super::see_other(&next) };
    if !token_matches(&form.token, expected) {
        tracing::warn!("a console login with a wrong token");
        return (StatusCode::UNAUTHORIZED, login_form(&next, true)).into_response();
    }
    let (cookie, _) = console.key.issue();
    let mut response = super::see_other(&next);
    response.headers_mut().append(header::SET_COOKIE, set_cookie(&cookie, SESSION_MS / 1000));
    response
}

#[derive(Deserialize)]
pub(super) struct CsrfForm {
    csrf: String,
}

pub(super) async fn logout(session: Session, Form(form): Form<CsrfForm>) -> Response {
    if !session.accepts(&form.csrf) {
        return csrf_refused(&session);
    }
    let mut response = super::see_other("/ui/login");
    response.headers_mut().append(header::SET_COOKIE, set_cookie("", 0));
    response
}

/// The answer to a form whose CSRF token is not the session's: an old page, or another site's form.
pub(super) fn csrf_refused(session: &Session) -> Response {
    super::error_page(
        StatusCode::FORBIDDEN,
        session,
        "This form is not from your current session (an old page, or another site). Nothing was done: reload \
         the page and try again.",
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_session_cookie_verifies_only_under_its_key_unaltered_and_fresh() {
        let token = SecretString::from("s3cret-token");
        let key = SessionKey::new(Some(&token));
        let (cookie, nonce) = key.issue();
        assert!(!cookie.contains("s3cret-token"));
        assert_eq!(key.verify(&cookie), Some(nonce.clone()));
        assert_eq!(SessionKey::new(Some(&token)).verify(&cookie), Some(nonce), "the same token, the same key");
        assert_eq!(SessionKey::new(Some(&SecretString::from("other"))).verify(&cookie), None);
        assert_eq!(SessionKey::new(None).verify(&cookie), None);
        let mut altered = cookie.clone();
        altered.replace_range(altered.len() - 1.., if cookie.ends_with('0') { "1" } else { "0" });
        assert_eq!(key.verify(&altered), None);
        let (_, nonce) = cookie.split_once('.').unwrap();
        let old = format!("{}.{}", now_ms() - SESSION_MS - 1, nonce);
        assert_eq!(key.verify(&old), None, "the MAC no longer matches, and it would be too old");
        assert_eq!(key.verify("garbage"), None);
        assert_eq!(key.verify(""), None);
    }

    #[test]
    fn csrf_tokens_differ_per_session_and_are_checked_whole() {
        let key = SessionKey::new(None);
        let session = Session { logged_in: true, csrf: key.csrf("a") };
        assert_ne!(key.csrf("a"), key.csrf("b"));
        assert!(session.accepts(&key.csrf("a")));
        assert!(!session.accepts(&key.csrf("b")));
        assert!(!session.accepts(&key.csrf("a")[..31]));
        assert!(!session.accepts(""));
    }

    #[test]
    fn after_login_only_console_pages() {
        assert_eq!(safe_next(Some("/ui/runs?customer=a")), "/ui/runs?customer=a");
        for bad in ["https://evil.example", "//evil.example", "/ui//evil", "/v1/queue", "/ui\\evil"] {
            assert_eq!(safe_next(Some(bad)), "/ui", "{bad}");
        }
        assert_eq!(safe_next(None), "/ui");
    }

    #[test]
    fn the_cookie_is_read_among_others() {
        let mut headers = axum::http::HeaderMap::new();
        headers.insert(header::COOKIE, HeaderValue::from_static("a=1; flowhost_console=x.y.z; b=2"));
        assert_eq!(session_cookie(&headers), Some("x.y.z"));
    }
}
