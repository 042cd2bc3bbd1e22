//! OAuth client-credentials tokens for the Platform API, cached through the host for most of their 8 hours.

use crate::config::{Config, OAUTH_AUDIENCE, OAuthCredentials};
use crate::error::Error;
use crate::host::{Host, HttpRequest, HttpResponse, Level, Method};
use crate::http::{self, Call, Idempotency, REQUEST_TIMEOUT_MS};
use serde_json::{Value, json};

/// The cache key of the token (the host scopes the cache to one connection).
pub const TOKEN_CACHE_KEY: &str = "oauth-token";
/// A token is dropped from the cache this long before it expires.
pub const SAFETY_MARGIN_SECONDS: u64 = 300;
/// Tokens live 8 hours; used when the token endpoint does not say.
pub const DEFAULT_EXPIRES_IN_SECONDS: u64 = 28_800;

/// A bearer token and whether it was just minted (a fresh token refused with 401 is not minted again).
#[derive(Clone, PartialEq, Eq)]
pub struct Token {
    pub access_token: String,
    pub fresh: bool,
}

impl std::fmt::Debug for Token {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Token").field("access_token", &"***").field("fresh", &self.fresh).finish()
    }
}

/// How long to cache a token that lives `expires_in` seconds; 0 means do not cache.
pub fn cache_ttl(expires_in: u64) -> u32 {
    let ttl = if expires_in > 2 * SAFETY_MARGIN_SECONDS { expires_in - SAFETY_MARGIN_SECONDS } else { expires_in / 2 };
    u32::try_from(ttl).unwrap_or(u32::MAX)
}

/// The cached token, or a newly minted one (then cached).
pub fn token(host: &mut dyn Host, config: &Config) -> Result<Token, Error> {
    let credentials = config.require_oauth()?;
    if let Some(access_token) = host.cache_get(TOKEN_CACHE_KEY).filter(|t| !t.is_empty()) {
        host.log(Level::Debug, "using the cached mParticle OAuth token");
        return Ok(Token { access_token, fresh: false });
    }
    mint(host, config, credentials)
}

/// Mints a token with the client credentials and caches it.
pub fn mint(host: &mut dyn Host, config: &Config, credentials: &OAuthCredentials) -> Result<Token, Error> {
    let body = json!({
        "client_id": credentials.client_id,
        "client_secret": credentials.client_secret,
        "audience": OAUTH_AUDIENCE,
        "grant_type": "client_credentials",
    });
    let request = HttpRequest {
        method: Method::Post,
        url: config.auth_url.clone(),
        headers: vec![("content-type".into(), "application/json".into()), ("accept".into(), "application/json".into())],
        body: Some(body.to_string().into_bytes()),
        timeout_ms: Some(REQUEST_TIMEOUT_MS),
    };
    let call = Call { capability: "OAuth token request", idempotency: Idempotency::Safe };
    let secrets = config.secrets();
    let response = http::send(host, request).map_err(|e| http::map_transport(e, call))?;
    if !response.is_success() {
        return Err(token_error(&response, config, call, &secrets));
    }
    let value: Value = http::json_body(&response, call, &secrets)?.unwrap_or(Value::Null);
    let Some(access_token) = value.get("access_token").and_then(Value::as_str).filter(|t| !t.is_empty()) else {
        return Err(Error::Permanent {
            status: Some(response.status),
            message: "the OAuth token endpoint answered without an access_token".into(),
            body: String::new(),
        });
    };
    let expires_in = value.get("expires_in").and_then(Value::as_u64).unwrap_or(DEFAULT_EXPIRES_IN_SECONDS);
    let ttl = cache_ttl(expires_in);
    if ttl > 0 {
        host.cache_set(TOKEN_CACHE_KEY, access_token, ttl);
    }
    host.log(Level::Info, &format!("minted an mParticle OAuth token (valid {expires_in} s, cached {ttl} s)"));
    Ok(Token { access_token: access_token.to_string(), fresh: true })
}

fn token_error(response: &HttpResponse, config: &Config, call: Call<'_>, secrets: &[&str]) -> Error {
    let said = http::mparticle_message(&response.body).map(|m| format!(": {}", http::redact(&m, secrets)));
    let said = said.unwrap_or_default();
    match response.status {
        400 | 401 | 403 => Error::Unauthorized(format!(
            "mParticle did not accept the connection's clientId/clientSecret (HTTP {}){said}",
            response.status
        )),
        404 | 405 => Error::InvalidConfig(format!(
            "the OAuth token endpoint {} answered HTTP {}: check the connection property authUrl",
            config.auth_url, response.status
        )),
        _ => http::map_status(response, call, secrets),
    }
}

/// Sends a Platform API request with a bearer token. A 401 on a cached token deletes it,
/// mints a new one and sends the request once more. Non-2xx answers are mapped to errors.
pub fn send_authorized(
    host: &mut dyn Host,
    config: &Config,
    call: Call<'_>,
    request: &HttpRequest,
) -> Result<HttpResponse, Error> {
    let mut token = token(host, config)?;
    let mut response = send_with(host, &token, call, request)?;
    if response.status == 401 && !token.fresh {
        host.log(
            Level::Warn,
            "mParticle refused the cached OAuth token (HTTP 401): minting a new one and retrying once",
        );
        host.cache_delete(TOKEN_CACHE_KEY);
        token = mint(host, config, config.require_oauth()?)?;
        response = send_with(host, &token, call, request)?;
    }
    if response.is_success() {
        return Ok(response);
    }
    if response.status == 401 {
        // The token that was refused is useless; do not hand it to the next invocation.
        host.cache_delete(TOKEN_CACHE_KEY);
    }
    let mut secrets = config.secrets();
    secrets.push(&token.access_token);
    Err(http::map_status(&response, call, &secrets))
}

fn send_with(host: &mut dyn Host, token: &Token, call: Call<'_>, request: &HttpRequest) -> Result<HttpResponse, Error> {
    let mut request = request.clone();
    request.headers.push(("authorization".into(), format!("Bearer {}", token.access_token)));
    http::send(host, request).map_err(|e| http::map_transport(e, call))
}
