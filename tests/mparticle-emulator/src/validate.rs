//! Hand-written validation of Events API batches.
//!
//! The rules mirror mParticle's published draft-07 JSON Schema for inbound batches
//! (`mparticle.inbound.eventsapi.schema.json`), plus the documented service limits that the
//! schema does not encode. Nothing here reads the schema at run time: the tables below were
//! written from it, and the crate's tests cross-check them against the official file.
//!
//! Deliberate differences from the schema (all stricter, all documented in the crate docs):
//! - where a schema definition lists `properties` but no `type` (for example `device_info`),
//!   the schema accepts any non-object value; the emulator requires an object or `null`;
//! - `data` of an event must be an object (the schema does not say `type: object` there);
//! - the size and length limits of mParticle's "Default Service Limits" page are enforced.

use std::fmt;

use serde_json::{Map, Value};

/// Where a batch is wrong and why. `path` is a JSON path (`$` is the batch, or `$[3]` for the
/// fourth batch of a bulk request), `message` says what is wrong there.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BatchError {
    /// JSON path of the first problem, e.g. `$.events[0].data.custom_event_type`.
    pub path: String,
    /// Human readable reason.
    pub message: String,
}

impl fmt::Display for BatchError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.path, self.message)
    }
}

impl std::error::Error for BatchError {}

/// The documented limits the emulator enforces (mParticle "Default Service Limits").
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Limits {
    /// Serialized size of one batch, in bytes (documented: 128 KB; taken as 128 × 1024).
    pub max_batch_bytes: usize,
    /// Batches in one `/v2/bulkevents` request (documented: 100).
    pub max_bulk_batches: usize,
    /// Event names, attribute names and user attribute names, in characters (documented: 256).
    pub max_name_chars: usize,
    /// Event attribute and user attribute values, in characters (documented: 4096).
    pub max_value_chars: usize,
    /// User attributes per batch (documented: 100).
    pub max_user_attributes: usize,
    /// Attributes per event (documented: 100).
    pub max_event_attributes: usize,
    /// Entries in a user attribute list (documented: 1000).
    pub max_list_entries: usize,
    /// Characters per user attribute list entry (documented: 512).
    pub max_list_entry_chars: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_batch_bytes: 128 * 1024,
            max_bulk_batches: 100,
            max_name_chars: 256,
            max_value_chars: 4096,
            max_user_attributes: 100,
            max_event_attributes: 100,
            max_list_entries: 1000,
            max_list_entry_chars: 512,
        }
    }
}

/// Extra rules of `POST /v2/bulkevents/historical`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Historical {
    /// Current time in Unix milliseconds; every event must be at least 72 hours older.
    pub now_unix_ms: i64,
}

/// Milliseconds in 72 hours: historical events must be older than this.
pub const HISTORICAL_MIN_AGE_MS: i64 = 72 * 3600 * 1000;

/// Validates one batch with the default limits. The path of errors starts at `$`.
pub fn validate_batch(batch: &Value) -> Result<(), BatchError> {
    validate_batch_at(batch, &Limits::default(), None, None)
}

/// Validates one batch. `index` is the batch's position in a bulk request (the error path then
/// starts at `$[index]`), `historical` adds the rules of the historical endpoint.
pub fn validate_batch_at(
    batch: &Value,
    limits: &Limits,
    index: Option<usize>,
    historical: Option<Historical>,
) -> Result<(), BatchError> {
    let root = match index {
        Some(i) => P::Root(i),
        None => P::Batch,
    };
    let size = serialized_len(batch);
    if size > limits.max_batch_bytes {
        return Err(err(
            root,
            format!(
                "batch is {size} bytes when serialized; the limit is {} bytes per batch (mParticle: 128 KB)",
                limits.max_batch_bytes
            ),
        ));
    }
    let Some(fields) = batch.as_object() else {
        return Err(err(root, format!("expected a batch (a JSON object), found {}", kind(batch))));
    };
    check_shape(&Ctx { limits }, &BATCH, fields, root)?;
    if let Some(h) = historical {
        check_historical(batch, root, h)?;
    }
    Ok(())
}

/// Validates the body of a bulk request: a JSON array of at most `limits.max_bulk_batches`
/// batches, every one valid. Returns the first problem found.
pub fn validate_bulk(body: &Value, limits: &Limits, historical: Option<Historical>) -> Result<(), BatchError> {
    let Some(items) = body.as_array() else {
        return Err(err(P::Batch, format!("a bulk request must be a JSON array of batches, found {}", kind(body))));
    };
    if items.len() > limits.max_bulk_batches {
        return Err(err(
            P::Batch,
            format!("bulk request has {} batches; mParticle accepts at most {}", items.len(), limits.max_bulk_batches),
        ));
    }
    for (i, b) in items.iter().enumerate() {
        validate_batch_at(b, limits, Some(i), historical)?;
    }
    Ok(())
}

fn check_historical(batch: &Value, root: P<'_>, h: Historical) -> Result<(), BatchError> {
    let events = batch.get("events").and_then(Value::as_array).map(Vec::as_slice).unwrap_or(&[]);
    if events.is_empty() {
        let p = P::Key(&root, "events");
        return Err(err(p, "the historical endpoint requires every batch to contain events".into()));
    }
    let cutoff = h.now_unix_ms - HISTORICAL_MIN_AGE_MS;
    for (i, e) in events.iter().enumerate() {
        let pe = P::Idx(&P::Key(&root, "events"), i);
        let pd = P::Key(&pe, "data");
        let pt = P::Key(&pd, "timestamp_unixtime_ms");
        match e.get("data").and_then(|d| d.get("timestamp_unixtime_ms")).and_then(as_integer) {
            None => {
                return Err(err(pt, "the historical endpoint requires timestamp_unixtime_ms on every event".into()));
            }
            Some(ts) if ts > cutoff => {
                return Err(err(
                    pt,
                    format!("event time {ts} is less than 72 hours old; the historical endpoint only takes older data"),
                ));
            }
            Some(_) => {}
        }
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// JSON paths, built lazily: only rendered when there is an error.

#[derive(Clone, Copy)]
enum P<'a> {
    Batch,
    Root(usize),
    Key(&'a P<'a>, &'a str),
    Idx(&'a P<'a>, usize),
}

impl P<'_> {
    fn render(&self) -> String {
        let mut out = String::new();
        self.render_into(&mut out);
        out
    }

    fn render_into(&self, out: &mut String) {
        match self {
            P::Batch => out.push('$'),
            P::Root(i) => {
                out.push_str("$[");
                out.push_str(&i.to_string());
                out.push(']');
            }
            P::Key(parent, k) => {
                parent.render_into(out);
                let plain = k.chars().next().is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
                    && k.chars().all(|c| c.is_ascii_alphanumeric() || c == '_');
                if plain {
                    out.push('.');
                    out.push_str(k);
                } else {
                    out.push('[');
                    out.push_str(&Value::String((*k).to_owned()).to_string());
                    out.push(']');
                }
            }
            P::Idx(parent, i) => {
                parent.render_into(out);
                out.push('[');
                out.push_str(&i.to_string());
                out.push(']');
            }
        }
    }
}

fn err(p: P<'_>, message: String) -> BatchError {
    BatchError { path: p.render(), message }
}

type R = Result<(), BatchError>;

// ---------------------------------------------------------------------------------------------
// The type language the tables are written in.

struct Ctx<'l> {
    limits: &'l Limits,
}

enum Ty {
    /// The schema's `String` definition: string, number, boolean or null.
    Scalar,
    /// `type: string` (no null).
    Str,
    /// A string of at most `max_name_chars` characters (event and screen names).
    Name,
    /// The schema's `Integer`: an integer or null.
    Int,
    /// The schema's `Number`: a number or null.
    Num,
    /// The schema's `Boolean`: a boolean or null.
    Bool,
    /// The schema's `Uuid`: a UUID string or null.
    Uuid,
    /// `type: string` with an enum.
    Enum(&'static [&'static str]),
    /// A definition with `properties` but no `type`: an object (checked against the shape) or null.
    Obj(&'static Shape),
    /// An object whose keys are free and whose values have one type. `nullable`: null allowed.
    Map(&'static Ty, bool),
    /// An array of one item type. `nullable`: null allowed.
    List(&'static Ty, bool),
    /// The schema's `StringOrArray`: a scalar, or an array of scalars, or null.
    ScalarOrList,
    /// `ip`: an IPv4 or IPv6 address string.
    Ip,
    /// Event attributes (`custom_attributes`): a map of scalars, with the attribute limits.
    EventAttributes,
    /// Product attributes: a map of strings, with the attribute length limits.
    ProductAttributes,
    /// `user_attributes`: scalars or lists, with the user attribute limits.
    UserAttributes,
    /// `events` and `breadcrumbs` items.
    Event(Option<&'static str>),
}

struct Shape {
    fields: &'static [(&'static str, Ty)],
    required: &'static [&'static str],
    closed: bool,
}

fn kind(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

fn as_integer(v: &Value) -> Option<i64> {
    if let Some(i) = v.as_i64() {
        return Some(i);
    }
    v.as_f64().filter(|f| f.is_finite() && f.fract() == 0.0 && f.abs() < 9.2e18).map(|f| f as i64)
}

fn is_integer(v: &Value) -> bool {
    v.is_i64() || v.is_u64() || v.as_f64().is_some_and(|f| f.is_finite() && f.fract() == 0.0)
}

fn is_scalar(v: &Value) -> bool {
    matches!(v, Value::Null | Value::Bool(_) | Value::Number(_) | Value::String(_))
}

fn is_uuid(s: &str) -> bool {
    let b = s.as_bytes();
    b.len() == 36
        && b.iter().enumerate().all(|(i, c)| match i {
            8 | 13 | 18 | 23 => *c == b'-',
            _ => c.is_ascii_hexdigit(),
        })
}

/// Length in characters of a scalar as mParticle would store it (strings by characters,
/// numbers and booleans by their JSON text).
fn scalar_chars(v: &Value) -> usize {
    match v {
        Value::String(s) => s.chars().count(),
        Value::Null => 0,
        other => other.to_string().len(),
    }
}

fn serialized_len(v: &Value) -> usize {
    struct Count(usize);
    impl std::io::Write for Count {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            self.0 += buf.len();
            Ok(buf.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }
    let mut c = Count(0);
    // Writing a Value to an infallible sink cannot fail.
    let _ = serde_json::to_writer(&mut c, v);
    c.0
}

fn list_of(allowed: &[&str]) -> String {
    allowed.join(", ")
}

fn check(ctx: &Ctx<'_>, ty: &Ty, v: &Value, p: P<'_>) -> R {
    match ty {
        Ty::Scalar => {
            if !is_scalar(v) {
                return Err(err(p, format!("expected a string, number, boolean or null, found {}", kind(v))));
            }
        }
        Ty::Str => {
            if !v.is_string() {
                return Err(err(p, format!("expected a string, found {}", kind(v))));
            }
        }
        Ty::Name => {
            let Some(s) = v.as_str() else {
                return Err(err(p, format!("expected a string, found {}", kind(v))));
            };
            let n = s.chars().count();
            if n > ctx.limits.max_name_chars {
                return Err(err(
                    p,
                    format!("name is {n} characters long; mParticle allows at most {}", ctx.limits.max_name_chars),
                ));
            }
        }
        Ty::Int => {
            if !(v.is_null() || is_integer(v)) {
                return Err(err(p, format!("expected an integer or null, found {}", kind(v))));
            }
        }
        Ty::Num => {
            if !(v.is_null() || v.is_number()) {
                return Err(err(p, format!("expected a number or null, found {}", kind(v))));
            }
        }
        Ty::Bool => {
            if !(v.is_null() || v.is_boolean()) {
                return Err(err(p, format!("expected a boolean or null, found {}", kind(v))));
            }
        }
        Ty::Uuid => match v {
            Value::Null => {}
            Value::String(s) if is_uuid(s) => {}
            Value::String(s) => {
                return Err(err(
                    p,
                    format!("{} is not a UUID (8-4-4-4-12 hexadecimal digits)", Value::from(s.as_str())),
                ));
            }
            other => return Err(err(p, format!("expected a UUID string or null, found {}", kind(other)))),
        },
        Ty::Enum(allowed) => match v.as_str() {
            Some(s) if allowed.contains(&s) => {}
            Some(s) => {
                return Err(err(
                    p,
                    format!("{} is not an allowed value; expected one of: {}", Value::from(s), list_of(allowed)),
                ));
            }
            None => {
                return Err(err(p, format!("expected a string (one of: {}), found {}", list_of(allowed), kind(v))));
            }
        },
        Ty::Obj(shape) => match v {
            Value::Null => {}
            Value::Object(m) => check_shape(ctx, shape, m, p)?,
            other => return Err(err(p, format!("expected an object or null, found {}", kind(other)))),
        },
        Ty::Map(item, nullable) => match v {
            Value::Null if *nullable => {}
            Value::Object(m) => {
                for (k, x) in m {
                    check(ctx, item, x, P::Key(&p, k))?;
                }
            }
            other => {
                let exp = if *nullable { "an object or null" } else { "an object" };
                return Err(err(p, format!("expected {exp}, found {}", kind(other))));
            }
        },
        Ty::List(item, nullable) => match v {
            Value::Null if *nullable => {}
            Value::Array(a) => {
                for (i, x) in a.iter().enumerate() {
                    check(ctx, item, x, P::Idx(&p, i))?;
                }
            }
            other => {
                let exp = if *nullable { "an array or null" } else { "an array" };
                return Err(err(p, format!("expected {exp}, found {}", kind(other))));
            }
        },
        Ty::ScalarOrList => match v {
            Value::Array(a) => {
                for (i, x) in a.iter().enumerate() {
                    if !is_scalar(x) {
                        return Err(err(P::Idx(&p, i), format!("expected a string, found {}", kind(x))));
                    }
                }
            }
            Value::Object(_) => {
                return Err(err(
                    p,
                    "expected a string, number, boolean, null or an array of strings, found an object".into(),
                ));
            }
            _ => {}
        },
        Ty::Ip => match v {
            Value::String(s) if s.parse::<std::net::IpAddr>().is_ok() => {}
            Value::String(s) => {
                return Err(err(p, format!("{} is not an IPv4 or IPv6 address", Value::from(s.as_str()))));
            }
            other => {
                return Err(err(p, format!("expected an IPv4 or IPv6 address string, found {}", kind(other))));
            }
        },
        Ty::EventAttributes => check_attributes(ctx, v, p, false)?,
        Ty::ProductAttributes => check_attributes(ctx, v, p, true)?,
        Ty::UserAttributes => check_user_attributes(ctx, v, p)?,
        Ty::Event(only) => check_event(ctx, v, p, *only)?,
    }
    Ok(())
}

fn check_shape(ctx: &Ctx<'_>, shape: &Shape, m: &Map<String, Value>, p: P<'_>) -> R {
    for (k, v) in m {
        match shape.fields.iter().find(|(name, _)| name == k) {
            Some((_, ty)) => check(ctx, ty, v, P::Key(&p, k))?,
            None if shape.closed => return Err(unknown_field(shape, k, p)),
            None => {}
        }
    }
    for r in shape.required {
        if !m.contains_key(*r) {
            return Err(err(P::Key(&p, r), "required field is missing".into()));
        }
    }
    Ok(())
}

fn unknown_field(shape: &Shape, k: &str, p: P<'_>) -> BatchError {
    let pk = P::Key(&p, k);
    if matches!(p, P::Batch | P::Root(_)) && k == "schema_version" {
        return err(
            pk,
            "schema_version is an output-only field of mParticle's batch format; the Events API schema rejects it \
             in inbound batches (remove it)"
                .into(),
        );
    }
    let allowed: Vec<&str> = shape.fields.iter().map(|(n, _)| *n).collect();
    err(pk, format!("unknown field (no additional properties allowed here; allowed: {})", allowed.join(", ")))
}

fn check_attributes(ctx: &Ctx<'_>, v: &Value, p: P<'_>, strings_only: bool) -> R {
    let m = match v {
        Value::Null => return Ok(()),
        Value::Object(m) => m,
        other => return Err(err(p, format!("expected an object of attributes or null, found {}", kind(other)))),
    };
    let l = ctx.limits;
    if !strings_only && m.len() > l.max_event_attributes {
        return Err(err(
            p,
            format!("event has {} attributes; mParticle allows at most {} per event", m.len(), l.max_event_attributes),
        ));
    }
    for (k, x) in m {
        let pk = P::Key(&p, k);
        let n = k.chars().count();
        if n > l.max_name_chars {
            return Err(err(pk, format!("attribute name is {n} characters long; the limit is {}", l.max_name_chars)));
        }
        if strings_only && !x.is_string() {
            return Err(err(pk, format!("expected a string, found {}", kind(x))));
        }
        if !is_scalar(x) {
            return Err(err(pk, format!("expected a string, number, boolean or null, found {}", kind(x))));
        }
        let n = scalar_chars(x);
        if n > l.max_value_chars {
            return Err(err(pk, format!("attribute value is {n} characters long; the limit is {}", l.max_value_chars)));
        }
    }
    Ok(())
}

fn check_user_attributes(ctx: &Ctx<'_>, v: &Value, p: P<'_>) -> R {
    let m = match v {
        Value::Null => return Ok(()),
        Value::Object(m) => m,
        other => return Err(err(p, format!("expected an object or null, found {}", kind(other)))),
    };
    let l = ctx.limits;
    if m.len() > l.max_user_attributes {
        return Err(err(
            p,
            format!("batch has {} user attributes; mParticle allows at most {}", m.len(), l.max_user_attributes),
        ));
    }
    for (k, x) in m {
        let pk = P::Key(&p, k);
        let n = k.chars().count();
        if n > l.max_name_chars {
            return Err(err(
                pk,
                format!("user attribute name is {n} characters long; the limit is {}", l.max_name_chars),
            ));
        }
        match x {
            Value::Array(items) => {
                if items.len() > l.max_list_entries {
                    return Err(err(
                        pk,
                        format!("user attribute list has {} entries; the limit is {}", items.len(), l.max_list_entries),
                    ));
                }
                for (i, item) in items.iter().enumerate() {
                    let pi = P::Idx(&pk, i);
                    if !is_scalar(item) {
                        return Err(err(
                            pi,
                            format!("user attribute list entries must be strings, found {}", kind(item)),
                        ));
                    }
                    let n = scalar_chars(item);
                    if n > l.max_list_entry_chars {
                        return Err(err(
                            pi,
                            format!(
                                "user attribute list entry is {n} characters long; the limit is {}",
                                l.max_list_entry_chars
                            ),
                        ));
                    }
                }
            }
            Value::Object(_) => {
                return Err(err(
                    pk,
                    "user attribute values must be a string, number, boolean, null or a list of strings, found an \
                     object"
                        .into(),
                ));
            }
            scalar => {
                let n = scalar_chars(scalar);
                if n > l.max_value_chars {
                    return Err(err(
                        pk,
                        format!("user attribute value is {n} characters long; the limit is {}", l.max_value_chars),
                    ));
                }
            }
        }
    }
    Ok(())
}

struct EventKind {
    name: &'static str,
    data: &'static Shape,
    /// The event object itself has `additionalProperties: false` in the schema.
    closed: bool,
}

fn check_event(ctx: &Ctx<'_>, v: &Value, p: P<'_>, only: Option<&'static str>) -> R {
    let Some(m) = v.as_object() else {
        return Err(err(p, format!("expected an event object {{\"event_type\", \"data\"}}, found {}", kind(v))));
    };
    let pt = P::Key(&p, "event_type");
    let ek = match m.get("event_type") {
        None => return Err(err(pt, "required field is missing".into())),
        Some(Value::String(s)) => match EVENT_KINDS.iter().find(|k| k.name == s && only.is_none_or(|o| o == k.name)) {
            Some(k) => k,
            None => {
                let allowed: Vec<&str> = match only {
                    Some(o) => vec![o],
                    None => EVENT_KINDS.iter().map(|k| k.name).collect(),
                };
                let found = Value::from(s.as_str());
                let message = format!("{found} is not a supported event type; expected one of: {}", allowed.join(", "));
                return Err(err(pt, message));
            }
        },
        Some(other) => return Err(err(pt, format!("expected a string, found {}", kind(other)))),
    };
    if ek.closed
        && let Some(k) = m.keys().find(|k| *k != "event_type" && *k != "data")
    {
        return Err(err(
            P::Key(&p, k),
            format!("unknown field (a {} event has only \"event_type\" and \"data\")", ek.name),
        ));
    }
    let pd = P::Key(&p, "data");
    let data = match m.get("data") {
        None => return Err(err(pd, "required field is missing".into())),
        Some(Value::Object(d)) => d,
        Some(other) => return Err(err(pd, format!("expected an object, found {}", kind(other)))),
    };
    for (k, x) in data {
        let ty = ek.data.fields.iter().chain(EVENT_DATA.fields.iter()).find(|(n, _)| n == k).map(|(_, t)| t);
        if let Some(ty) = ty {
            check(ctx, ty, x, P::Key(&pd, k))?;
        }
    }
    for r in ek.data.required {
        if !data.contains_key(*r) {
            return Err(err(
                P::Key(&pd, r),
                format!("required field is missing (a {} event needs: {})", ek.name, ek.data.required.join(", ")),
            ));
        }
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// The tables, written from mparticle.inbound.eventsapi.schema.json.

use Ty::*;

const CUSTOM_EVENT_TYPES: &[&str] =
    &["navigation", "location", "search", "transaction", "user_content", "user_preference", "social", "other", "media"];

const COMMERCE_CUSTOM_EVENT_TYPES: &[&str] = &[
    "navigation",
    "location",
    "search",
    "transaction",
    "user_content",
    "user_preference",
    "social",
    "other",
    "media",
    "add_to_cart",
    "remove_from_cart",
    "checkout",
    "checkout_option",
    "click",
    "view_detail",
    "purchase",
    "refund",
    "promotion_view",
    "promotion_click",
    "add_to_wishlist",
    "remove_from_wishlist",
    "impression",
    "attribution",
    "consent_granted",
    "consent_denied",
];

/// Identity keys allowed in `user_identities` (and `identity_type` values).
pub const IDENTITY_TYPES: &[&str] = &[
    "other",
    "customer_id",
    "facebook",
    "twitter",
    "google",
    "microsoft",
    "yahoo",
    "email",
    "alias",
    "facebook_custom_audience_id",
    "other_id_2",
    "other_id_3",
    "other_id_4",
    "other_id_5",
    "other_id_6",
    "other_id_7",
    "other_id_8",
    "other_id_9",
    "other_id_10",
    "mobile_number",
    "phone_number_2",
    "phone_number_3",
];

static BATCH: Shape = Shape {
    fields: &[
        ("source_request_id", Scalar),
        ("events", List(&Event(None), true)),
        ("device_info", Obj(&DEVICE_INFO)),
        ("application_info", Obj(&APPLICATION_INFO)),
        ("user_attributes", UserAttributes),
        ("deleted_user_attributes", List(&Str, true)),
        ("user_identities", Obj(&USER_IDENTITIES)),
        ("environment", Enum(&["development", "production"])),
        ("api_key", Scalar),
        ("api_keys", List(&Str, true)),
        ("ip", Ip),
        ("integration_attributes", Map(&Map(&Scalar, false), true)),
        ("context", Obj(&BATCH_CONTEXT)),
        ("partner_identity", Scalar),
        ("partner_identities", Map(&Scalar, true)),
        ("source_info", Obj(&SOURCE_INFO)),
        ("mp_deviceid", Uuid),
        ("attribution_info", Obj(&ATTRIBUTION_INFO)),
        ("timestamp_unixtime_ms", Int),
        ("batch_id", Int),
        ("mpid", Int),
        ("origin_mpid", Int),
        ("sdk_version", Scalar),
        ("consent_state", Obj(&CONSENT_STATE)),
        ("job_id", Scalar),
    ],
    required: &[],
    closed: true,
};

static USER_IDENTITIES: Shape = Shape {
    fields: &[
        ("other", Scalar),
        ("customer_id", Scalar),
        ("facebook", Scalar),
        ("twitter", Scalar),
        ("google", Scalar),
        ("microsoft", Scalar),
        ("yahoo", Scalar),
        ("email", Scalar),
        ("alias", Scalar),
        ("facebook_custom_audience_id", Scalar),
        ("other_id_2", Scalar),
        ("other_id_3", Scalar),
        ("other_id_4", Scalar),
        ("other_id_5", Scalar),
        ("other_id_6", Scalar),
        ("other_id_7", Scalar),
        ("other_id_8", Scalar),
        ("other_id_9", Scalar),
        ("other_id_10", Scalar),
        ("mobile_number", Scalar),
        ("phone_number_2", Scalar),
        ("phone_number_3", Scalar),
    ],
    required: &[],
    closed: true,
};

static BATCH_CONTEXT: Shape =
    Shape { fields: &[("data_plan", Obj(&DATA_PLAN)), ("location", Obj(&GEO_LOCATION))], required: &[], closed: false };

static DATA_PLAN: Shape =
    Shape { fields: &[("plan_id", Str), ("plan_version", Int)], required: &["plan_id"], closed: true };

static GEO_LOCATION: Shape = Shape {
    fields: &[
        ("latitude", Num),
        ("longitude", Num),
        ("accuracy", Num),
        ("dma_code", Int),
        ("country_code", Scalar),
        ("region_code", Scalar),
        ("postal_code", Scalar),
        ("location_source", Scalar),
        ("city_name", Scalar),
    ],
    required: &["latitude", "longitude"],
    closed: true,
};

static SOURCE_INFO: Shape = Shape {
    fields: &[
        ("channel", Enum(&["native", "javascript", "pixel", "desktop", "partner", "server_to_server"])),
        ("partner", Scalar),
        ("replay_request_id", Scalar),
        ("replay_job_id", Scalar),
        ("is_historical", Bool),
    ],
    required: &["channel"],
    closed: true,
};

static ATTRIBUTION_INFO: Shape = Shape {
    fields: &[("service_provider", Scalar), ("publisher", Scalar), ("campaign", Scalar)],
    required: &["service_provider", "publisher", "campaign"],
    closed: true,
};

static CONSENT_PURPOSE: Shape = Shape {
    fields: &[
        ("regulation", Scalar),
        ("document", Scalar),
        ("consented", Bool),
        ("timestamp_unixtime_ms", Int),
        ("location", Scalar),
        ("hardware_id", Scalar),
    ],
    required: &["consented", "timestamp_unixtime_ms"],
    closed: true,
};

static CONSENT_STATE: Shape = Shape {
    fields: &[("gdpr", Map(&Obj(&CONSENT_PURPOSE), false)), ("ccpa", Map(&Obj(&CONSENT_PURPOSE), false))],
    required: &[],
    closed: true,
};

static APPLICATION_INFO: Shape = Shape {
    fields: &[
        ("application_name", Scalar),
        ("application_version", Scalar),
        ("application_build_number", Scalar),
        ("install_referrer", Scalar),
        ("package", Scalar),
        // The schema pairs `$ref: String` with an enum; under draft-07 the `$ref` wins and the enum
        // is ignored (mParticle's own sample sends values outside it elsewhere), so: any scalar.
        ("os", Scalar),
        ("apple_search_ads_attributes", Map(&Map(&Scalar, false), true)),
    ],
    required: &[],
    closed: true,
};

static DEVICE_INFO: Shape = Shape {
    fields: &[
        ("brand", Scalar),
        ("product", Scalar),
        ("device", Scalar),
        ("android_uuid", Scalar),
        ("device_manufacturer", Scalar),
        (
            "platform",
            Enum(&["iOS", "Android", "web", "tvOS", "roku", "out_of_band", "alexa", "smart_tv", "fire_tv", "xbox"]),
        ),
        ("os_version", Scalar),
        ("device_model", Scalar),
        ("screen_height", Int),
        ("screen_width", Int),
        ("screen_dpi", Int),
        ("device_country", Scalar),
        ("locale_language", Scalar),
        ("locale_country", Scalar),
        ("network_country", Scalar),
        ("network_carrier", Scalar),
        ("network_code", Scalar),
        ("network_mobile_country_code", Scalar),
        ("timezone_offset", Int),
        ("build_identifier", Scalar),
        ("http_header_user_agent", Scalar),
        ("ios_advertising_id", Uuid),
        ("att_authorization_status", Enum(&["authorized", "denied", "not_determined", "restricted"])),
        ("att_timestamp_unixtime_ms", Int),
        ("push_token", Scalar),
        ("cpu_architecture", Scalar),
        ("is_tablet", Bool),
        ("push_notification_sound_enabled", Bool),
        ("push_notification_vibrate_enabled", Bool),
        ("radio_access_technology", Scalar),
        ("supports_telephony", Bool),
        ("has_nfc", Bool),
        ("bluetooth_enabled", Bool),
        ("bluetooth_version", Scalar),
        ("ios_idfv", Uuid),
        ("android_advertising_id", Uuid),
        ("build_version_release", Scalar),
        ("limit_ad_tracking", Bool),
        ("amp_id", Scalar),
        ("is_dst", Bool),
        ("roku_advertising_id", Uuid),
        ("roku_publisher_id", Uuid),
        ("microsoft_advertising_id", Scalar),
        ("microsoft_publisher_id", Scalar),
        ("fire_advertising_id", Uuid),
    ],
    required: &[],
    closed: true,
};

static DEVICE_CURRENT_STATE: Shape = Shape {
    fields: &[
        ("time_since_start_ms", Int),
        ("battery_level", Num),
        ("data_connection_type", Scalar),
        ("data_connection_type_detail", Scalar),
        ("gps_state", Bool),
        ("total_system_memory_usage_bytes", Int),
        ("disk_space_free_bytes", Int),
        ("external_disk_space_free_bytes", Int),
        ("cpu", Scalar),
        ("system_memory_available_bytes", Num),
        ("system_memory_low", Bool),
        ("system_memory_threshold_bytes", Num),
        ("application_memory_available_bytes", Num),
        ("application_memory_max_bytes", Num),
        ("application_memory_total_bytes", Num),
        // `$ref: String` + enum: the enum is ignored under draft-07 (the official sample sends "unknown").
        ("device_orientation", Scalar),
        ("status_bar_orientation", Scalar),
    ],
    required: &[],
    closed: true,
};

static EVENT_SYSTEM_NOTIFICATION_INFO: Shape =
    Shape { fields: &[("type", Enum(&["gdpr_change"]))], required: &["type"], closed: false };

/// Fields every event's `data` may carry (the schema's `EventData`; open to other fields).
static EVENT_DATA: Shape = Shape {
    fields: &[
        ("timestamp_unixtime_ms", Int),
        ("event_id", Int),
        ("source_message_id", Str),
        ("session_id", Int),
        ("session_uuid", Uuid),
        ("session_start_unixtime_ms", Int),
        ("event_start_unixtime_ms", Int),
        ("custom_attributes", EventAttributes),
        ("location", Obj(&GEO_LOCATION)),
        ("device_current_state", Obj(&DEVICE_CURRENT_STATE)),
        ("is_goal_defined", Bool),
        ("lifetime_value_change", Num),
        ("lifetime_value_attribute_name", Scalar),
        ("data_connection_type", Scalar),
        ("event_num", Int),
        ("view_controller", Scalar),
        ("is_main_thread", Bool),
        ("canonical_name", Scalar),
        ("event_system_notification_info", Obj(&EVENT_SYSTEM_NOTIFICATION_INFO)),
    ],
    required: &[],
    closed: false,
};

static PRODUCT: Shape = Shape {
    fields: &[
        ("id", Str),
        ("name", Str),
        ("brand", Scalar),
        ("category", Scalar),
        ("variant", Scalar),
        ("position", Int),
        ("price", Num),
        ("quantity", Num),
        ("coupon_code", Scalar),
        ("added_to_cart_time_ms", Int),
        ("total_product_amount", Num),
        ("custom_attributes", ProductAttributes),
    ],
    required: &[],
    closed: false,
};

static PRODUCT_ACTION: Shape = Shape {
    fields: &[
        (
            "action",
            Enum(&[
                "add_to_cart",
                "remove_from_cart",
                "checkout",
                "checkout_option",
                "click",
                "view_detail",
                "purchase",
                "refund",
                "add_to_wishlist",
                "remove_from_wish_list",
            ]),
        ),
        ("checkout_step", Int),
        ("checkout_options", Scalar),
        ("product_action_list", Scalar),
        ("product_list_source", Scalar),
        ("transaction_id", Str),
        ("affiliation", Scalar),
        ("total_amount", Num),
        ("tax_amount", Num),
        ("shipping_amount", Num),
        ("coupon_code", Scalar),
        ("products", List(&Obj(&PRODUCT), true)),
    ],
    required: &["action"],
    closed: true,
};

static PROMOTION: Shape = Shape {
    fields: &[("id", Str), ("name", Str), ("creative", Scalar), ("position", Scalar)],
    required: &[],
    closed: true,
};

static PROMOTION_ACTION: Shape = Shape {
    fields: &[("action", Enum(&["view", "click"])), ("promotions", List(&Obj(&PROMOTION), false))],
    required: &["action"],
    closed: true,
};

static PRODUCT_IMPRESSION: Shape = Shape {
    fields: &[("product_impression_list", Str), ("products", List(&Obj(&PRODUCT), true))],
    required: &["product_impression_list", "products"],
    closed: true,
};

static SHOPPING_CART: Shape =
    Shape { fields: &[("products", List(&Obj(&PRODUCT), false))], required: &["products"], closed: true };

static USER_IDENTITY: Shape = Shape {
    fields: &[
        ("identity_type", Enum(IDENTITY_TYPES)),
        ("identity", Scalar),
        ("timestamp_unixtime_ms", Int),
        ("created_this_batch", Bool),
    ],
    required: &["identity_type", "identity", "timestamp_unixtime_ms"],
    closed: true,
};

static NO_FIELDS: Shape = Shape { fields: &[], required: &[], closed: false };

static EVENT_KINDS: &[EventKind] = &[
    EventKind {
        name: "session_start",
        data: &Shape { fields: &[("session_id", Int)], required: &[], closed: false },
        closed: false,
    },
    EventKind {
        name: "session_end",
        data: &Shape { fields: &[("session_duration_ms", Int)], required: &["session_duration_ms"], closed: false },
        closed: false,
    },
    EventKind {
        name: "screen_view",
        data: &Shape {
            fields: &[("screen_name", Name), ("activity_type", Scalar), ("custom_flags", Map(&Scalar, true))],
            required: &["screen_name"],
            closed: false,
        },
        closed: false,
    },
    EventKind {
        name: "custom_event",
        data: &Shape {
            fields: &[
                ("custom_event_type", Enum(CUSTOM_EVENT_TYPES)),
                ("event_name", Name),
                ("custom_flags", Map(&Scalar, true)),
            ],
            required: &["custom_event_type", "event_name"],
            closed: false,
        },
        closed: true,
    },
    EventKind {
        name: "crash_report",
        data: &Shape {
            fields: &[
                ("breadcrumbs", List(&Event(Some("breadcrumb")), true)),
                ("class_name", Scalar),
                ("severity", Scalar),
                ("message", Scalar),
                ("stack_trace", Scalar),
                ("exception_handled", Bool),
                ("topmost_context", Scalar),
                ("pl_crash_report_file_base64", Scalar),
                ("ios_image_base_address", Int),
                ("ios_image_size", Int),
                ("session_number", Int),
            ],
            required: &["severity", "message"],
            closed: false,
        },
        closed: false,
    },
    EventKind {
        name: "opt_out",
        data: &Shape { fields: &[("is_opted_out", Bool)], required: &["is_opted_out"], closed: false },
        closed: false,
    },
    EventKind { name: "first_run", data: &NO_FIELDS, closed: true },
    EventKind {
        name: "push_registration",
        data: &Shape {
            fields: &[("register", Bool), ("registration_token", Str)],
            required: &["register", "registration_token"],
            closed: false,
        },
        closed: false,
    },
    EventKind {
        name: "application_state_transition",
        data: &Shape {
            fields: &[
                ("successfully_closed", Bool),
                ("is_first_run", Bool),
                ("is_upgrade", Bool),
                ("push_notification_payload", Scalar),
                ("launch_referral", Scalar),
                (
                    "application_transition_type",
                    Enum(&[
                        "application_initialized",
                        "application_exit",
                        "application_background",
                        "application_foreground",
                    ]),
                ),
            ],
            required: &["application_transition_type"],
            closed: false,
        },
        closed: true,
    },
    EventKind {
        name: "push_message",
        data: &Shape {
            fields: &[
                ("push_message_token", Scalar),
                ("push_message_type", Enum(&["sent", "received", "action"])),
                ("message", Scalar),
                ("network", Scalar),
                ("push_notification_payload", Scalar),
                // `$ref: String` + enum: the enum is ignored under draft-07.
                ("application_state", Scalar),
                ("action_identifier", Scalar),
                ("push_message_behavior", Scalar),
            ],
            required: &["push_message_token", "push_message_type", "push_notification_payload"],
            closed: false,
        },
        closed: false,
    },
    EventKind {
        name: "network_performance",
        data: &Shape {
            fields: &[
                ("http_verb", Str),
                ("url", Str),
                ("time_elapsed", Int),
                ("bytes_in", Int),
                ("bytes_out", Int),
                ("response_code", Int),
                ("data", Scalar),
            ],
            required: &["url", "response_code"],
            closed: false,
        },
        closed: false,
    },
    EventKind {
        name: "breadcrumb",
        data: &Shape { fields: &[("session_number", Int), ("label", Str)], required: &["label"], closed: false },
        closed: true,
    },
    EventKind {
        name: "profile",
        data: &Shape {
            fields: &[
                ("previous_mpid", Int),
                ("current_mpid", Int),
                ("profile_event_type", Enum(&["signup", "login", "logout", "update", "delete"])),
            ],
            required: &["previous_mpid", "current_mpid", "profile_event_type"],
            closed: false,
        },
        closed: false,
    },
    EventKind {
        name: "commerce_event",
        data: &Shape {
            fields: &[
                ("product_action", Obj(&PRODUCT_ACTION)),
                ("promotion_action", Obj(&PROMOTION_ACTION)),
                ("product_impressions", List(&Obj(&PRODUCT_IMPRESSION), true)),
                ("shopping_cart", Obj(&SHOPPING_CART)),
                ("currency_code", Scalar),
                ("screen_name", Name),
                ("is_non_interactive", Bool),
                ("event_name", Name),
                ("custom_event_type", Enum(COMMERCE_CUSTOM_EVENT_TYPES)),
                ("custom_flags", Map(&Scalar, true)),
            ],
            required: &[],
            closed: false,
        },
        closed: true,
    },
    EventKind {
        name: "user_attribute_change",
        data: &Shape {
            fields: &[
                ("user_attribute_name", Str),
                ("new", ScalarOrList),
                ("old", ScalarOrList),
                ("deleted", Bool),
                ("is_new_attribute", Bool),
            ],
            required: &["user_attribute_name"],
            closed: false,
        },
        closed: false,
    },
    EventKind {
        name: "user_identity_change",
        data: &Shape {
            fields: &[("new", Obj(&USER_IDENTITY)), ("old", Obj(&USER_IDENTITY))],
            required: &["new", "old"],
            closed: false,
        },
        closed: false,
    },
    EventKind { name: "uninstall", data: &NO_FIELDS, closed: false },
];
