//! The connection configuration: which Antavo environment, which credentials, and where the API lives.

use crate::error::Error;
use serde_json::Value;
use std::fmt;

/// The API key and secret of a workspace (Management UI > API settings), for every Escher-signed API.
#[derive(Clone, PartialEq, Eq)]
pub struct ApiCredentials {
    pub key: String,
    pub secret: String,
}

impl fmt::Debug for ApiCredentials {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ApiCredentials").field("key", &self.key).field("secret", &"***").finish()
    }
}

/// An OAuth client of the Authentication Manager, for the Async Events API only.
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

/// A parsed connection config.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Config {
    /// The `api.<environment>.antavo.com` label, e.g. `st2`: also the Escher signing region.
    pub environment: String,
    /// The API base URL without a trailing slash: `https://api.<environment>.antavo.com` unless overridden.
    pub api_url: String,
    pub api: Option<ApiCredentials>,
    pub oauth: Option<OAuthCredentials>,
    /// The path of the URL Antavo posts webhooks to, as Antavo signs it (flowhost's route for the connection,
    /// e.g. `/v1/inbound/antavo`, plus any prefix a proxy in front of flowhost adds).
    pub webhook_path: String,
    missing_api: Vec<&'static str>,
    missing_oauth: Vec<&'static str>,
}

/// The path Antavo posts webhooks to when the connection does not say: flowhost's inbound route of a
/// connection named `antavo`.
pub const DEFAULT_WEBHOOK_PATH: &str = "/v1/inbound/antavo";

/// The host of an environment's API.
pub fn default_api_url(environment: &str) -> String {
    format!("https://api.{environment}.antavo.com")
}

impl Config {
    /// Parses the connection config. Empty strings count as absent. `environment` is required (it is the
    /// signing region of every request and of every webhook); credentials are asked for by the capabilities
    /// that need them. Values of the wrong type or form are `InvalidConfig` naming the property.
    pub fn parse(connection: &Value) -> Result<Config, Error> {
        let map = connection
            .as_object()
            .ok_or_else(|| Error::InvalidConfig("the connection config must be a JSON object".into()))?;
        let text = |name: &'static str| -> Result<Option<String>, Error> {
            match map.get(name) {
                None | Some(Value::Null) => Ok(None),
                Some(Value::String(s)) if s.trim().is_empty() => Ok(None),
                Some(Value::String(s)) => Ok(Some(s.trim().to_string())),
                Some(_) => Err(Error::InvalidConfig(format!("connection property {name} must be a string"))),
            }
        };
        let environment = text("environment")?.ok_or_else(|| {
            Error::InvalidConfig(
                "connection property environment is required: the label of the workspace's API host \
                 api.<environment>.antavo.com (e.g. st2 or eu6), which is also the Escher signing region"
                    .into(),
            )
        })?;
        check_environment(&environment)?;
        let api_url = match text("apiUrl")? {
            Some(url) => {
                check_base_url("apiUrl", &url)?;
                url.trim_end_matches('/').to_string()
            }
            None => default_api_url(&environment),
        };
        let webhook_path = match text("webhookPath")? {
            Some(path) if path.starts_with('/') && !path.contains(['?', '#', ' ']) => {
                path.trim_end_matches('/').to_string()
            }
            Some(path) => {
                return Err(Error::InvalidConfig(format!(
                    "connection property webhookPath must be a URL path such as /v1/inbound/antavo (got {path:?})"
                )));
            }
            None => DEFAULT_WEBHOOK_PATH.to_string(),
        };
        let (api, missing_api) = pair(text("apiKey")?, text("apiSecret")?, "apiKey", "apiSecret");
        let api = api.map(|(key, secret)| ApiCredentials { key, secret });
        let (oauth, missing_oauth) = pair(text("clientId")?, text("clientSecret")?, "clientId", "clientSecret");
        let oauth = oauth.map(|(client_id, client_secret)| OAuthCredentials { client_id, client_secret });
        Ok(Config { environment, api_url, api, oauth, webhook_path, missing_api, missing_oauth })
    }

    /// The API key and secret, or `InvalidConfig` naming the missing properties.
    pub fn require_api(&self) -> Result<&ApiCredentials, Error> {
        self.api.as_ref().ok_or_else(|| {
            Error::InvalidConfig(format!(
                "this capability calls Antavo's Escher-signed APIs and needs the connection properties {} \
                 (Management UI > Settings > API settings)",
                self.missing_api.join(" and ")
            ))
        })
    }

    /// The OAuth client, or `InvalidConfig` naming the missing properties.
    pub fn require_oauth(&self) -> Result<&OAuthCredentials, Error> {
        self.oauth.as_ref().ok_or_else(|| {
            Error::InvalidConfig(format!(
                "the Async Events API takes an OAuth bearer token: this capability needs the connection properties \
                 {} (an OAuth client of the Authentication Manager with the scope loyalty.async_events)",
                self.missing_oauth.join(" and ")
            ))
        })
    }

    /// The Escher credential scope of this environment, e.g. `st2/api/antavo_request`.
    pub fn scope(&self) -> String {
        crate::escher::antavo_scope(&self.environment)
    }

    /// The secret values of this connection, to scrub from anything the connector reports.
    pub fn secrets(&self) -> Vec<&str> {
        let mut secrets = Vec::new();
        if let Some(api) = &self.api {
            secrets.push(api.secret.as_str());
        }
        if let Some(oauth) = &self.oauth {
            secrets.push(oauth.client_secret.as_str());
        }
        secrets
    }
}

/// The environment is a host label: lower-case letters, digits and dashes.
fn check_environment(environment: &str) -> Result<(), Error> {
    let lower = environment.to_ascii_lowercase();
    if lower.contains("antavo.com") || lower.contains("://") || lower.contains('.') {
        let label = lower
            .trim_start_matches("https://")
            .trim_start_matches("http://")
            .trim_start_matches("api.")
            .split('.')
            .next()
            .unwrap_or_default()
            .to_string();
        return Err(Error::InvalidConfig(format!(
            "connection property environment is the label only, not a host or URL: for api.{label}.antavo.com \
             give {label:?} (got {environment:?})"
        )));
    }
    let valid = !environment.is_empty()
        && environment.len() <= 63
        && environment.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && !environment.starts_with('-')
        && !environment.ends_with('-');
    if !valid {
        return Err(Error::InvalidConfig(format!(
            "connection property environment must be a lower-case host label such as st2 or eu6 (got {environment:?})"
        )));
    }
    Ok(())
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
    fn the_environment_names_the_host() {
        let config = Config::parse(&json!({"environment": "st2", "apiKey": "k", "apiSecret": "s"})).unwrap();
        assert_eq!(config.api_url, "https://api.st2.antavo.com");
        assert_eq!(config.scope(), "st2/api/antavo_request");
        let local = Config::parse(&json!({"environment": "eu6", "apiUrl": "http://127.0.0.1:9000/"})).unwrap();
        assert_eq!(local.api_url, "http://127.0.0.1:9000");
        assert_eq!(local.scope(), "eu6/api/antavo_request");
    }

    #[test]
    fn bad_values_are_invalid_config_naming_the_property() {
        for (connection, needle) in [
            (json!([]), "JSON object"),
            (json!({}), "environment is required"),
            (json!({"environment": "https://api.st2.antavo.com"}), "give \"st2\""),
            (json!({"environment": "api.eu6.antavo.com"}), "give \"eu6\""),
            (json!({"environment": "ST2"}), "lower-case"),
            (json!({"environment": "st 2"}), "lower-case"),
            (json!({"environment": "st2", "apiKey": 5}), "apiKey must be a string"),
            (json!({"environment": "st2", "apiUrl": "ftp://x"}), "apiUrl"),
            (json!({"environment": "st2", "apiUrl": "https://u:p@x.antavo.com"}), "credentials"),
        ] {
            match Config::parse(&connection) {
                Err(Error::InvalidConfig(message)) => assert!(message.contains(needle), "{message}"),
                other => panic!("{connection}: {other:?}"),
            }
        }
    }

    #[test]
    fn missing_credentials_are_named() {
        let config = Config::parse(&json!({"environment": "st2", "apiKey": "k", "clientSecret": "x"})).unwrap();
        let Err(Error::InvalidConfig(message)) = config.require_api() else { panic!() };
        assert!(message.contains("apiSecret") && !message.contains("apiKey "), "{message}");
        let Err(Error::InvalidConfig(message)) = config.require_oauth() else { panic!() };
        assert!(message.contains("clientId") && !message.contains("clientSecret "), "{message}");
    }

    #[test]
    fn debug_output_hides_secrets() {
        let config = Config::parse(&json!({"environment": "st2", "apiKey": "k", "apiSecret": "hunter2",
                                            "clientId": "c", "clientSecret": "s3cr3t"}))
        .unwrap();
        let text = format!("{config:?}");
        assert!(!text.contains("hunter2") && !text.contains("s3cr3t"), "{text}");
    }
}
