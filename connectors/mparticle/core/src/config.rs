//! The connection configuration: which credentials a connection has and where mParticle lives.

use crate::error::Error;
use serde_json::Value;
use std::fmt;

/// The default OAuth token endpoint.
pub const DEFAULT_AUTH_URL: &str = "https://sso.auth.mparticle.com/oauth/token";
/// The default Platform API base (v1 paths and `/platform/v2/...` live under it).
pub const DEFAULT_PLATFORM_API_URL: &str = "https://api.mparticle.com";
/// The audience of Platform API tokens.
pub const OAUTH_AUDIENCE: &str = "https://api.mparticle.com";

/// An mParticle data hosting location.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Pod {
    #[default]
    Us1,
    Us2,
    Eu1,
    Au1,
}

impl Pod {
    pub const ALL: [Pod; 4] = [Pod::Us1, Pod::Us2, Pod::Eu1, Pod::Au1];

    /// The name used in the connection config (`US1`, ...).
    pub fn name(self) -> &'static str {
        match self {
            Pod::Us1 => "US1",
            Pod::Us2 => "US2",
            Pod::Eu1 => "EU1",
            Pod::Au1 => "AU1",
        }
    }

    /// The pod's Events API base URL (`/events` and `/bulkevents` are under it).
    pub fn events_api_url(self) -> &'static str {
        match self {
            Pod::Us1 => "https://s2s.us1.mparticle.com/v2",
            Pod::Us2 => "https://s2s.us2.mparticle.com/v2",
            Pod::Eu1 => "https://s2s.eu1.mparticle.com/v2",
            Pod::Au1 => "https://s2s.au1.mparticle.com/v2",
        }
    }

    /// Parses a pod name, case-insensitively.
    pub fn parse(name: &str) -> Option<Pod> {
        Pod::ALL.into_iter().find(|p| p.name().eq_ignore_ascii_case(name.trim()))
    }
}

/// Which mParticle environment Events API data goes to (the Antavo "Development" checkbox).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Environment {
    Development,
    #[default]
    Production,
}

impl Environment {
    pub fn as_str(self) -> &'static str {
        match self {
            Environment::Development => "development",
            Environment::Production => "production",
        }
    }

    pub fn parse(name: &str) -> Option<Environment> {
        match name.trim().to_ascii_lowercase().as_str() {
            "development" => Some(Environment::Development),
            "production" => Some(Environment::Production),
            _ => None,
        }
    }
}

/// OAuth client credentials for the Platform API.
#[derive(Clone, PartialEq, Eq)]
pub struct OAuthCredentials {
    pub client_id: String,
    pub client_secret: String,
}

impl fmt::Debug for OAuthCredentials {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("OAuthCredentials").field("client_id", &self.client_id).field("client_secret", &"***").finish()
    }
}

/// Server-to-server key and secret for the Events API.
#[derive(Clone, PartialEq, Eq)]
pub struct EventsCredentials {
    pub api_key: String,
    pub api_secret: String,
}

impl fmt::Debug for EventsCredentials {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("EventsCredentials").field("api_key", &self.api_key).field("api_secret", &"***").finish()
    }
}

/// A parsed connection config. Every property is optional; each capability asks for what it needs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Config {
    pub oauth: Option<OAuthCredentials>,
    pub events: Option<EventsCredentials>,
    pub pod: Pod,
    pub environment: Environment,
    /// The OAuth token endpoint.
    pub auth_url: String,
    /// The Platform API base, without a trailing slash.
    pub platform_api_url: String,
    /// The Events API base, without a trailing slash.
    pub events_api_url: String,
    missing_oauth: Vec<&'static str>,
    missing_events: Vec<&'static str>,
}

impl Config {
    /// Parses the connection config. Empty strings count as absent. Fails with `InvalidConfig` on a value of
    /// the wrong type or a malformed URL; missing credentials are reported only when a capability needs them.
    pub fn parse(connection: &Value) -> Result<Config, Error> {
        let map = connection
            .as_object()
            .ok_or_else(|| Error::InvalidConfig("the connection config must be a JSON object".into()))?;
        let text = |name: &'static str| -> Result<Option<String>, Error> {
            match map.get(name) {
                None | Some(Value::Null) => Ok(None),
                Some(Value::String(s)) if s.trim().is_empty() => Ok(None),
                Some(Value::String(s)) => Ok(Some(s.clone())),
                Some(_) => Err(Error::InvalidConfig(format!("connection property {name} must be a string"))),
            }
        };
        let client_id = text("clientId")?;
        let client_secret = text("clientSecret")?;
        let api_key = text("apiKey")?;
        let api_secret = text("apiSecret")?;
        let pod = match text("pod")? {
            None => Pod::default(),
            Some(name) => Pod::parse(&name).ok_or_else(|| {
                Error::InvalidConfig(format!(
                    "connection property pod must be one of US1, US2, EU1, AU1 (got {name:?})"
                ))
            })?,
        };
        let environment = match text("environment")? {
            None => Environment::default(),
            Some(name) => Environment::parse(&name).ok_or_else(|| {
                Error::InvalidConfig(format!(
                    "connection property environment must be development or production (got {name:?})"
                ))
            })?,
        };
        let url = |name: &'static str, default: &str| -> Result<String, Error> {
            let value = text(name)?.unwrap_or_else(|| default.to_string());
            check_base_url(name, &value)?;
            Ok(value.trim().trim_end_matches('/').to_string())
        };
        let auth_url = url("authUrl", DEFAULT_AUTH_URL)?;
        let platform_api_url = url("platformApiUrl", DEFAULT_PLATFORM_API_URL)?;
        let events_api_url = url("eventsApiUrl", pod.events_api_url())?;

        let (oauth, missing_oauth) = pair(client_id, client_secret, "clientId", "clientSecret");
        let oauth = oauth.map(|(client_id, client_secret)| OAuthCredentials { client_id, client_secret });
        let (events, missing_events) = pair(api_key, api_secret, "apiKey", "apiSecret");
        let events = events.map(|(api_key, api_secret)| EventsCredentials { api_key, api_secret });
        Ok(Config {
            oauth,
            events,
            pod,
            environment,
            auth_url,
            platform_api_url,
            events_api_url,
            missing_oauth,
            missing_events,
        })
    }

    /// The Platform API credentials, or `InvalidConfig` naming the missing properties.
    pub fn require_oauth(&self) -> Result<&OAuthCredentials, Error> {
        self.oauth.as_ref().ok_or_else(|| {
            Error::InvalidConfig(format!(
                "this capability calls mParticle's Platform API and needs the connection properties {} \
                 (API credentials from Settings > API Credentials)",
                self.missing_oauth.join(" and ")
            ))
        })
    }

    /// The Events API credentials, or `InvalidConfig` naming the missing properties.
    pub fn require_events(&self) -> Result<&EventsCredentials, Error> {
        self.events.as_ref().ok_or_else(|| {
            Error::InvalidConfig(format!(
                "this capability calls mParticle's Events API and needs the connection properties {} \
                 (the input feed's Server to Server Key and Secret)",
                self.missing_events.join(" and ")
            ))
        })
    }

    /// The secret values of this connection, to scrub from anything the connector reports.
    pub fn secrets(&self) -> Vec<&str> {
        let mut secrets = Vec::new();
        if let Some(o) = &self.oauth {
            secrets.push(o.client_secret.as_str());
        }
        if let Some(e) = &self.events {
            secrets.push(e.api_secret.as_str());
        }
        secrets
    }
}

/// Both halves of a credential pair, or the names of the missing ones.
fn pair(
    a: Option<String>,
    b: Option<String>,
    a_name: &'static str,
    b_name: &'static str,
) -> (Option<(String, String)>, Vec<&'static str>) {
    match (a, b) {
        (Some(a), Some(b)) => (Some((a, b)), Vec::new()),
        (Some(_), None) => (None, vec![b_name]),
        (None, Some(_)) => (None, vec![a_name]),
        (None, None) => (None, vec![a_name, b_name]),
    }
}

/// A base URL must be absolute http(s), with a host and without credentials, query or fragment.
fn check_base_url(name: &str, value: &str) -> Result<(), Error> {
    let bad = |why: &str| Err(Error::InvalidConfig(format!("connection property {name} {why} (got {value:?})")));
    let value = value.trim();
    let lower = value.to_ascii_lowercase();
    let Some(rest) = lower.strip_prefix("https://").or_else(|| lower.strip_prefix("http://")) else {
        return bad("must be an absolute http:// or https:// URL");
    };
    if value.contains('?') || value.contains('#') {
        return bad("must not have a query or fragment");
    }
    let authority = rest.split('/').next().unwrap_or_default();
    if authority.contains('@') {
        return bad("must not contain credentials");
    }
    if authority.is_empty() || authority.starts_with(':') {
        return bad("has no host");
    }
    if value.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return bad("must not contain spaces");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn defaults_follow_the_pod() {
        let config = Config::parse(&json!({})).unwrap();
        assert_eq!(config.auth_url, DEFAULT_AUTH_URL);
        assert_eq!(config.platform_api_url, DEFAULT_PLATFORM_API_URL);
        assert_eq!(config.events_api_url, "https://s2s.us1.mparticle.com/v2");
        assert_eq!(config.environment, Environment::Production);
        let eu = Config::parse(&json!({"pod": "EU1", "environment": "development"})).unwrap();
        assert_eq!(eu.events_api_url, "https://s2s.eu1.mparticle.com/v2");
        assert_eq!(eu.environment, Environment::Development);
        let au = Config::parse(&json!({"pod": "au1"})).unwrap();
        assert_eq!(au.events_api_url, "https://s2s.au1.mparticle.com/v2");
    }

    #[test]
    fn overrides_win_and_lose_their_trailing_slash() {
        let config = Config::parse(&json!({
            "pod": "US2",
            "authUrl": "http://127.0.0.1:9000/oauth/token",
            "platformApiUrl": "http://127.0.0.1:9000/",
            "eventsApiUrl": "http://127.0.0.1:9000/v2/",
        }))
        .unwrap();
        assert_eq!(config.auth_url, "http://127.0.0.1:9000/oauth/token");
        assert_eq!(config.platform_api_url, "http://127.0.0.1:9000");
        assert_eq!(config.events_api_url, "http://127.0.0.1:9000/v2");
    }

    #[test]
    fn bad_values_are_invalid_config() {
        for (connection, needle) in [
            (json!([]), "JSON object"),
            (json!({"pod": "XX1"}), "pod"),
            (json!({"environment": "staging"}), "environment"),
            (json!({"clientId": 5}), "clientId"),
            (json!({"authUrl": "ftp://x"}), "authUrl"),
            (json!({"platformApiUrl": "https://user:pw@api.mparticle.com"}), "credentials"),
            (json!({"eventsApiUrl": "https://s2s.mparticle.com/v2?x=1"}), "query"),
            (json!({"eventsApiUrl": "https:///v2"}), "no host"),
        ] {
            match Config::parse(&connection) {
                Err(Error::InvalidConfig(message)) => assert!(message.contains(needle), "{message}"),
                other => panic!("{connection}: {other:?}"),
            }
        }
    }

    #[test]
    fn missing_credentials_are_named() {
        let config = Config::parse(&json!({"clientId": "id", "apiSecret": "s", "apiKey": ""})).unwrap();
        let Err(Error::InvalidConfig(message)) = config.require_oauth() else { panic!() };
        assert!(message.contains("clientSecret") && !message.contains("clientId "), "{message}");
        let Err(Error::InvalidConfig(message)) = config.require_events() else { panic!() };
        assert!(message.contains("apiKey") && !message.contains("apiSecret"), "{message}");
        let none = Config::parse(&json!({})).unwrap();
        let Err(Error::InvalidConfig(message)) = none.require_oauth() else { panic!() };
        assert!(message.contains("clientId and clientSecret"), "{message}");
    }

    #[test]
    fn debug_output_hides_secrets() {
        let config =
            Config::parse(&json!({"clientId": "id", "clientSecret": "hunter2", "apiKey": "k", "apiSecret": "s3"}))
                .unwrap();
        let text = format!("{config:?}");
        assert!(!text.contains("hunter2") && !text.contains("s3\""), "{text}");
    }
}
