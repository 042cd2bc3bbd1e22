//! Where a PostgreSQL store is: a `postgres://` URL, with flowhost's own settings among its query parameters, and
//! the URL as it may be shown (without its password).

use crate::store::StoreError;
use sqlx::postgres::PgConnectOptions;
use std::fmt;
use std::str::FromStr;

/// flowhost's own query parameters, taken out of the URL before the rest goes to the driver.
const POLL_ONLY: &str = "poll_only";
const POOL_SIZE: &str = "pool_size";
/// Connections per pool when the URL does not say.
pub const DEFAULT_POOL_SIZE: u32 = 8;

/// A PostgreSQL store's location: `postgres://user:password@host:port/database?options`.
///
/// Besides the driver's own parameters (`sslmode`, `application_name`, …), the URL takes two of flowhost's:
/// - `pool_size=N`: connections in each of the store's two pools (accepts and operators' actions, which commit
///   synchronously; claims and the lease holders' calls, which do not) [default 8], so a process opens at most
///   `2 N + 1` connections (the `+ 1` listens for wake-ups).
/// - `poll_only=true`: no `LISTEN` connection; workers find new work by polling alone. For a pooler in
///   transaction mode (PgBouncer), which cannot keep a `LISTEN` session.
///
/// Its `Debug` and `Display` never show the password: see [`PostgresLocation::shown`].
#[derive(Clone, PartialEq, Eq)]
pub struct PostgresLocation {
    /// The URL for the driver, flowhost's parameters removed. It may hold a password: never shown.
    url: String,
    shown: String,
    host: String,
    port: u16,
    pub poll_only: bool,
    pub pool_size: u32,
}

impl PostgresLocation {
    /// Reads a `postgres://` or `postgresql://` URL.
    pub fn parse(location: &str) -> Result<Self, String> {
        let mut url = url::Url::parse(location).map_err(|e| format!("not a valid URL: {e}"))?;
        let mut poll_only = false;
        let mut pool_size = DEFAULT_POOL_SIZE;
        let mut kept = Vec::new();
        for (name, value) in url.query_pairs() {
            match name.as_ref() {
                POLL_ONLY => {
                    poll_only = match value.as_ref() {
                        "true" | "1" | "yes" | "on" => true,
                        "false" | "0" | "no" | "off" => false,
                        other => return Err(format!("{POLL_ONLY} must be true or false, not `{other}`")),
                    }
                }
                POOL_SIZE => {
                    pool_size = value
                        .parse()
                        .ok()
                        .filter(|n| (1..=1000).contains(n))
                        .ok_or_else(|| format!("{POOL_SIZE} must be a number from 1 to 1000, not `{value}`"))?;
                }
                _ => kept.push((name.into_owned(), value.into_owned())),
            }
        }
        if kept.is_empty() {
            url.set_query(None);
        } else {
            url.query_pairs_mut().clear().extend_pairs(kept);
        }
        let host = url.host_str().filter(|h| !h.is_empty()).unwrap_or("localhost").to_string();
        let port = url.port().unwrap_or(5432);
        let database = url.path().trim_start_matches('/');
        if database.is_empty() {
            return Err("names no database (postgres://user@host:port/database)".into());
        }
        let user = match url.username() {
            "" => String::new(),
            user => format!("{user}@"),
        };
        let shown = format!("{}://{user}{host}:{port}/{database}", url.scheme());
        let url = url.to_string();
        PgConnectOptions::from_str(&url)
            .map_err(|e| format!("the driver refuses it: {}", redact_error(&e.to_string())))?;
        Ok(PostgresLocation { url, shown, host, port, poll_only, pool_size })
    }

    /// The URL as it may be shown: scheme, user, host, port and database, never the password or the parameters.
    pub fn shown(&self) -> &str {
        &self.shown
    }

    /// The server's port.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// `host:port`, for errors.
    pub fn address(&self) -> String {
        format!("{}:{}", self.host, self.port)
    }

    pub(super) fn connect_options(&self) -> Result<PgConnectOptions, StoreError> {
        PgConnectOptions::from_str(&self.url)
            .map_err(|e| StoreError::Open { path: self.shown.clone(), message: redact_error(&e.to_string()) })
    }
}

/// A driver's message about a URL could quote it; keep only what comes before a URL.
fn redact_error(message: &str) -> String {
    match message.find("://") {
        Some(at) => format!("{}…", &message[..message[..at].rfind(' ').map_or(0, |space| space + 1)]),
        None => message.to_string(),
    }
}

impl fmt::Debug for PostgresLocation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PostgresLocation")
            .field("url", &self.shown)
            .field("poll_only", &self.poll_only)
            .field("pool_size", &self.pool_size)
            .finish_non_exhaustive()
    }
}

impl fmt::Display for PostgresLocation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.shown)
    }
}

/// A store setting as it may be shown or logged: a URL loses its password and its parameters (`postgres://user:redacted@host/db?redacted`); a path
/// is shown as it is.
pub fn redact_store_setting(setting: &str) -> String {
    match url::Url::parse(setting) {
        Ok(mut url) if url.password().is_some() || url.query().is_some() => {
            if url.password().is_some() {
                let _ = url.set_password(Some("redacted"));
            }
            if url.query().is_some() {
                url.set_query(Some("redacted"));
            }
            url.to_string()
        }
        _ => setting.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_url_is_read_with_flowhosts_parameters_taken_out_and_shown_without_its_password() {
        let location = PostgresLocation::parse(
            "postgres://flowhost:hunter2@db.internal:6432/queue?pool_size=4&poll_only=true&sslmode=disable",
        )
        .unwrap();
        assert_eq!((location.pool_size, location.poll_only), (4, true));
        assert_eq!(location.shown(), "postgres://flowhost@db.internal:6432/queue");
        assert_eq!(location.address(), "db.internal:6432");
        assert_eq!(location.url, "postgres://flowhost:hunter2@db.internal:6432/queue?sslmode=disable");
        for shown in [format!("{location:?}"), location.to_string()] {
            assert!(!shown.contains("hunter2"), "{shown}");
        }
        let defaults = PostgresLocation::parse("postgresql://localhost/flowhost").unwrap();
        assert_eq!((defaults.pool_size, defaults.poll_only), (DEFAULT_POOL_SIZE, false));
        assert_eq!(defaults.shown(), "postgresql://localhost:5432/flowhost");
        assert_eq!(defaults.url, "postgresql://localhost/flowhost");
    }

    #[test]
    fn bad_urls_are_refused_without_their_password() {
        for (url, expected) in [
            ("postgres://u:pw@db/", "names no database"),
            ("postgres://u:pw@db/q?pool_size=0", "pool_size must be a number"),
            ("postgres://u:pw@db/q?poll_only=maybe", "poll_only must be true or false"),
        ] {
            let error = PostgresLocation::parse(url).unwrap_err();
            assert!(error.contains(expected) && !error.contains("pw"), "{url}: {error}");
        }
    }

    #[test]
    fn store_settings_are_shown_without_passwords() {
        assert_eq!(redact_store_setting("postgres://u:hunter2@db:5432/q"), "postgres://u:redacted@db:5432/q");
        assert_eq!(redact_store_setting("postgres://u@db/q?password=hunter2"), "postgres://u@db/q?redacted");
        assert_eq!(redact_store_setting("data/flowhost.db"), "data/flowhost.db");
        assert_eq!(redact_store_setting("sqlite:///var/lib/f.db"), "sqlite:///var/lib/f.db");
    }
}
