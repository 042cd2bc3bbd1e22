//! The Customer API (Escher-signed reads): one customer by id or external id, and the customers changed since
//! a time (the incremental pull of a two-way sync).

use crate::config::Config;
use crate::error::Error;
use crate::host::{Host, Method};
use crate::http::{self, Call, Idempotency, encode};
use crate::input::{Fields, kind, properties};
use crate::time;
use serde_json::{Value, json};

/// The `fields` the Customer API adds on request.
pub const EXTRA_FIELDS: [&str; 4] = ["groups", "purchases.ytd", "expiring_points", "expiring_points.history"];
/// Customers per page when the input does not say (Antavo's default).
pub const DEFAULT_LIMIT: u64 = 100;

/// The path segment of a customer: its id, or `{field:value}` for an external id.
pub fn customer_segment(customer: &str, external_id_field: Option<&str>) -> String {
    match external_id_field {
        Some(field) => encode(&format!("{{{field}:{customer}}}")),
        None => encode(customer),
    }
}

/// `getCustomer`: `GET /customers/{id}` (with `fields` joined by an encoded comma).
pub fn get(host: &mut dyn Host, config: &Config, input: &Value) -> Result<String, Error> {
    let map = properties(input)?;
    let mut fields = Fields::default();
    let customer = fields.text(map, "/properties", "customerId", true);
    let external = fields.text(map, "/properties", "externalIdField", false);
    let mut extra = Vec::new();
    match map.get("fields") {
        None | Some(Value::Null) => {}
        Some(Value::Array(items)) => {
            for (i, item) in items.iter().enumerate() {
                match item.as_str() {
                    Some(name) if EXTRA_FIELDS.contains(&name) => extra.push(name),
                    _ => fields.error(
                        format!("/properties/fields/{i}"),
                        format!("a field is one of {}", EXTRA_FIELDS.join(", ")),
                    ),
                }
            }
        }
        Some(other) => fields.error("/properties/fields", format!("fields must be an array, not {}", kind(other))),
    }
    fields.finish()?;
    let customer = customer.unwrap_or_default();
    let mut path = format!("/customers/{}", customer_segment(&customer, external.as_deref()));
    if !extra.is_empty() {
        // Antavo: a comma in `fields` must be sent encoded.
        path.push_str(&format!("?fields={}", encode(&extra.join(","))));
    }
    let call = Call { capability: "getCustomer", idempotency: Idempotency::Safe };
    let response = http::send_signed(host, config, call, Method::Get, &path, None)?;
    let value = http::json_body(&response, call, &config.secrets())?;
    if !value.is_object() {
        return Err(Error::Permanent {
            status: Some(response.status),
            message: "getCustomer: Antavo answered without a customer object".into(),
            body: http::body_excerpt(&response.body, &config.secrets()),
        });
    }
    Ok(value.to_string())
}

/// A time given as ISO 8601 text or Unix seconds, as seconds.
fn since_seconds(value: Option<&Value>) -> Result<i64, Error> {
    let bad = |why: String| Error::invalid_input("/properties/since", why);
    match value {
        Some(Value::Number(n)) => {
            n.as_i64().filter(|s| *s >= 0).ok_or_else(|| bad("since must be Unix seconds".into()))
        }
        Some(Value::String(s)) => time::parse_date(s).or_else(|| s.trim().parse::<i64>().ok()).ok_or_else(|| {
            bad(format!("since must be an ISO 8601 date-time such as 2024-01-15T10:30:00Z (got {s:?})"))
        }),
        Some(other) => Err(bad(format!("since must be a date-time text or Unix seconds, not {}", kind(other)))),
        None => Err(bad("since is required".into())),
    }
}

fn integer(value: Option<&Value>, name: &str, min: u64, max: u64, default: u64) -> Result<u64, Error> {
    match value {
        None | Some(Value::Null) => Ok(default),
        Some(v) => v.as_u64().filter(|n| (min..=max).contains(n)).ok_or_else(|| {
            Error::invalid_input(
                format!("/properties/{name}"),
                format!("{name} must be an integer from {min} to {max}"),
            )
        }),
    }
}

/// The id of one entry of a search answer: a string, a number, or an object with `id`.
fn entry_id(entry: &Value) -> Option<String> {
    match entry {
        Value::String(s) => Some(s.clone()),
        Value::Number(n) => Some(n.to_string()),
        Value::Object(o) => o.get("id").and_then(entry_id),
        _ => None,
    }
}

/// `listChangedCustomers`: `GET /customers?updated_at.gt=<time>&limit&offset`. The answer's layout is not
/// published beyond "returns ids": a bare array, or an object with `data` (or `customers`, `results`), of ids
/// or objects with `id`, is read; `next` (a relative path) or a full page means there may be more.
pub fn changed_since(host: &mut dyn Host, config: &Config, input: &Value) -> Result<String, Error> {
    let map = properties(input)?;
    let since = since_seconds(map.get("since"))?;
    let limit = integer(map.get("limit"), "limit", 1, 1000, DEFAULT_LIMIT)?;
    let offset = integer(map.get("offset"), "offset", 0, u64::MAX >> 1, 0)?;
    let since_text = time::iso8601(since);
    let path = format!("/customers?updated_at.gt={}&limit={limit}&offset={offset}", encode(&since_text));
    let call = Call { capability: "listChangedCustomers", idempotency: Idempotency::Safe };
    let response = http::send_signed(host, config, call, Method::Get, &path, None)?;
    let value = http::json_body(&response, call, &config.secrets())?;
    let entries = match &value {
        Value::Array(entries) => Some(entries),
        Value::Object(o) => ["data", "customers", "results"].iter().find_map(|k| o.get(*k).and_then(Value::as_array)),
        _ => None,
    };
    let Some(entries) = entries else {
        return Err(Error::Permanent {
            status: Some(response.status),
            message: "listChangedCustomers: Antavo's answer holds no list of customers".into(),
            body: http::body_excerpt(&response.body, &config.secrets()),
        });
    };
    let ids: Vec<String> = entries.iter().filter_map(entry_id).collect();
    let next = value.get("next").and_then(Value::as_str).filter(|n| !n.is_empty());
    let more = next.is_some() || ids.len() as u64 >= limit;
    Ok(json!({
        "customerIds": ids,
        "count": ids.len(),
        "since": since_text,
        "offset": offset,
        "nextOffset": if more { json!(offset + entries.len() as u64) } else { Value::Null },
    })
    .to_string())
}

/// Verifies the key and secret with the cheapest signed read: `GET /customers/-/count`.
pub fn probe(host: &mut dyn Host, config: &Config) -> Result<(), Error> {
    let call = Call { capability: "check", idempotency: Idempotency::Safe };
    match http::send_signed(host, config, call, Method::Get, "/customers/-/count", None) {
        Ok(_) => Ok(()),
        // The signature passed; the Customer API module may be off in the workspace.
        Err(Error::NotFound(message)) => {
            host.log(crate::host::Level::Warn, &format!("the signature was accepted, but {message}"));
            Ok(())
        }
        Err(error) => Err(error),
    }
}
