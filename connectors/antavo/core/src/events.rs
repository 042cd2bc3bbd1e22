//! The Events API: `POST /events` (one event) and `POST /events/bulk` (many, processed one by one in order,
//! with a result each). Both are Escher-signed.
//!
//! Antavo has no idempotency key: a re-sent event is recorded again. What Antavo refuses to repeat makes a
//! call safe to re-send: a checkout-family event with a `transaction_id` (a repeat is refused with 5003) and
//! an `opt_in` (a repeat is refused with 112101). A retry (attempt 2 or later) that Antavo refuses with that
//! code succeeds as a duplicate: the earlier attempt was recorded. Every other event whose fate became unknown
//! (a timeout, a lost connection, a 504) fails as permanent instead of being re-sent.

use crate::Context;
use crate::config::Config;
use crate::error::Error;
use crate::host::{Host, HttpResponse, Level, Method};
use crate::http::{self, AntavoError, Call, Idempotency, codes};
use crate::input::{Fields, kind, properties};
use serde_json::{Map, Value, json};

/// Antavo designs `/events/bulk` for at most 50 events per request.
pub const MAX_BULK_EVENTS: usize = 50;
/// The most events one `sendEvents` call takes.
pub const MAX_EVENTS_PER_CALL: usize = 1000;

/// Actions whose `data.points` Antavo requires as an integer.
pub const POINT_ACTIONS: [&str; 4] = ["point_add", "point_sub", "point_spend", "point_unspend"];
/// The action that creates a transaction: Antavo refuses a second one with the same `transaction_id` (5003).
/// (`checkout_accept`, `refund` and the like name an existing transaction, so they may repeat its id.)
pub const CHECKOUT: &str = "checkout";

/// The capabilities that send one event each: the ones the host may batch into `/events/bulk`.
pub const EVENT_CAPABILITIES: [&str; 4] = ["sendEvent", "optIn", "updateProfile", "optOut"];

/// One event as Antavo's Events API takes it.
#[derive(Debug, Clone, PartialEq)]
pub struct Event {
    pub customer: String,
    pub action: String,
    pub data: Map<String, Value>,
    /// The external-id field `customer` is a value of, when it is not Antavo's own id.
    pub external_id: Option<String>,
    /// The points account, when not the default.
    pub account: Option<String>,
}

impl Event {
    /// The request body of `POST /events` (and an element of `/events/bulk`).
    pub fn to_json(&self) -> Value {
        let mut body = Map::new();
        body.insert("customer".into(), Value::String(self.customer.clone()));
        body.insert("action".into(), Value::String(self.action.clone()));
        body.insert("data".into(), Value::Object(self.data.clone()));
        if let Some(external_id) = &self.external_id {
            body.insert("external_id".into(), Value::String(external_id.clone()));
        }
        if let Some(account) = &self.account {
            body.insert("account".into(), Value::String(account.clone()));
        }
        Value::Object(body)
    }

    /// The code with which Antavo refuses a repeat of this event, if it refuses repeats.
    pub fn repeat_code(&self) -> Option<i64> {
        if self.action == CHECKOUT && self.data.contains_key("transaction_id") {
            Some(codes::TRANSACTION_ID_USED)
        } else if self.action == "opt_in" {
            Some(codes::ALREADY_OPTED_IN)
        } else {
            None
        }
    }

    /// Whether re-sending the event after an unknown outcome is safe.
    pub fn idempotency(&self) -> Idempotency {
        if self.repeat_code().is_some() { Idempotency::Safe } else { Idempotency::NotIdempotent }
    }
}

/// Reads the event of one `sendEvent` item (the object at `base`).
fn read_event(map: &Map<String, Value>, base: &str, fields: &mut Fields) -> Option<Event> {
    let before = fields.errors.len();
    let customer = fields.text(map, base, "customer", true);
    let action = fields.text(map, base, "action", true);
    let mut data = fields.object(map, base, "data");
    let external_id = fields.text(map, base, "externalId", false);
    let account = fields.text(map, base, "account", false);
    let action = action?;
    check_data(&action, &mut data, &format!("{base}/data"), fields);
    (fields.errors.len() == before).then(|| Event {
        customer: customer.unwrap_or_default(),
        action,
        data,
        external_id,
        account,
    })
}

/// What Antavo requires of some actions' data: integer `points`, a `transaction_id`. A `points` given as the
/// text of an integer (as templates and mParticle attributes carry numbers) is sent as the integer.
fn check_data(action: &str, data: &mut Map<String, Value>, base: &str, fields: &mut Fields) {
    if POINT_ACTIONS.contains(&action) {
        match data.get("points") {
            Some(Value::Number(n)) if n.is_i64() || n.is_u64() => {}
            Some(Value::String(s)) if s.trim().parse::<i64>().is_ok() => {
                let points = s.trim().parse::<i64>().unwrap_or_default();
                data.insert("points".into(), Value::from(points));
            }
            Some(other) => fields
                .error(format!("{base}/points"), format!("{action} needs integer points, not {}", describe(other))),
            None => fields.error(format!("{base}/points"), format!("{action} needs data.points (an integer)")),
        }
    }
    if action.starts_with("checkout") || action.contains("refund") {
        match data.get("transaction_id") {
            Some(Value::String(s)) if !s.trim().is_empty() => {}
            Some(Value::Number(_)) => {}
            _ => fields.error(
                format!("{base}/transaction_id"),
                format!("{action} needs data.transaction_id, unique per transaction (Antavo refuses a repeat)"),
            ),
        }
    }
}

fn describe(value: &Value) -> String {
    match value {
        Value::String(s) => format!("{s:?}"),
        other => kind(other).to_string(),
    }
}

/// The event a capability's input describes: `sendEvent` as given; `optIn`, `updateProfile` and `optOut` as
/// the `opt_in`, `profile` and `opt_out` events that create, update and anonymise a member.
pub fn event_from_input(capability: &str, input: &Value) -> Result<Event, Error> {
    let map = properties(input)?;
    let mut fields = Fields::default();
    let event = match capability {
        "sendEvent" => read_event(map, "/properties", &mut fields),
        "optIn" | "updateProfile" | "optOut" => {
            let customer = fields.text(map, "/properties", "customer", true);
            let external_id = fields.text(map, "/properties", "externalId", false);
            let data =
                if capability == "optOut" { Map::new() } else { fields.object(map, "/properties", "attributes") };
            if capability == "updateProfile" && data.is_empty() && fields.errors.is_empty() {
                fields.error("/properties/attributes", "updateProfile needs at least one attribute to change");
            }
            let action = match capability {
                "optIn" => "opt_in",
                "updateProfile" => "profile",
                _ => "opt_out",
            };
            customer.map(|customer| Event { customer, action: action.into(), data, external_id, account: None })
        }
        other => return Err(Error::invalid_input("", format!("{other:?} does not send an event"))),
    };
    fields.finish()?;
    event.ok_or_else(|| Error::invalid_input("/properties", "the input does not describe an event"))
}

/// The output of a call whose event Antavo accepted.
fn output(endpoint: &str, customer: Option<Value>, events: Value, duplicate: bool) -> String {
    json!({
        "status": 200,
        "endpoint": endpoint,
        "customer": customer.unwrap_or(Value::Null),
        "events": if events.is_array() { events } else { json!([]) },
        "duplicate": duplicate,
    })
    .to_string()
}

fn duplicate_output(host: &mut dyn Host, capability: &str, event: &Event, endpoint: &str) -> String {
    host.log(
        Level::Info,
        &format!(
            "{capability}: Antavo refused the retried {} as a repeat: an earlier attempt was recorded, so this call \
             succeeds without sending it again",
            event.action
        ),
    );
    output(endpoint, None, json!([]), true)
}

/// The code of Antavo's error in a refused answer.
fn refused_code(response: &HttpResponse) -> Option<i64> {
    AntavoError::parse(&response.body).and_then(|e| e.code)
}

/// Sends one event with `POST /events`; the output holds the customer Antavo answers with.
pub fn send(
    host: &mut dyn Host,
    config: &Config,
    capability: &str,
    event: &Event,
    context: &Context,
) -> Result<String, Error> {
    let call = Call { capability, idempotency: event.idempotency() };
    host.log(Level::Info, &format!("{capability}: {} for customer {}", event.action, event.customer));
    let body = event.to_json().to_string().into_bytes();
    let request = http::signed_request(host, config, Method::Post, "/events", Some(body))?;
    let response = http::send(host, request).map_err(|e| http::map_transport(e, call))?;
    if response.is_success() {
        let mut customer = http::json_body(&response, call, &config.secrets())?;
        let events = customer.as_object_mut().and_then(|c| c.remove("events")).unwrap_or(Value::Null);
        return Ok(output("events", Some(customer), events, false));
    }
    if context.attempt > 1 && event.repeat_code().is_some() && refused_code(&response) == event.repeat_code() {
        return Ok(duplicate_output(host, capability, event, "events"));
    }
    Err(http::map_status(&response, call, &config.secrets()))
}

/// One event's outcome in a bulk answer.
enum ItemOutcome {
    Recorded(Value),
    Refused(Value),
}

/// Posts up to [`MAX_BULK_EVENTS`] events to `/events/bulk`; one outcome per event, in order, or the error of
/// the whole request (for each event: a failure whose outcome is unknown is permanent for events Antavo
/// would repeat, transient for the others).
fn post_bulk(
    host: &mut dyn Host,
    config: &Config,
    capability: &str,
    events: &[&Event],
) -> Result<Vec<ItemOutcome>, Vec<Error>> {
    let body = json!({"events": events.iter().map(|e| e.to_json()).collect::<Vec<_>>()});
    let safe = Call { capability, idempotency: Idempotency::Safe };
    let each = |error_for: &dyn Fn(Call<'_>) -> Error| -> Vec<Error> {
        events.iter().map(|e| error_for(Call { capability, idempotency: e.idempotency() })).collect()
    };
    let request =
        match http::signed_request(host, config, Method::Post, "/events/bulk", Some(body.to_string().into_bytes())) {
            Ok(request) => request,
            Err(error) => return Err(vec![error; events.len()]),
        };
    let response = match http::send(host, request) {
        Ok(response) => response,
        Err(transport) => return Err(each(&|call| http::map_transport(transport.clone(), call))),
    };
    if !response.is_success() {
        return Err(each(&|call| http::map_status(&response, call, &config.secrets())));
    }
    let answer = match http::json_body(&response, safe, &config.secrets()) {
        Ok(answer) => answer,
        Err(error) => return Err(vec![error; events.len()]),
    };
    let results = answer.get("results").and_then(Value::as_array).cloned().unwrap_or_default();
    if results.len() != events.len() {
        let error = Error::Permanent {
            status: Some(response.status),
            message: format!(
                "{capability}: Antavo answered {} results for the {} events of a bulk request; their fate is unknown \
                 and they are not re-sent",
                results.len(),
                events.len()
            ),
            body: http::body_excerpt(&response.body, &config.secrets()),
        };
        return Err(vec![error; events.len()]);
    }
    Ok(results
        .into_iter()
        .map(|result| match result.get("error") {
            Some(error) if !error.is_null() => ItemOutcome::Refused(error.clone()),
            _ => ItemOutcome::Recorded(result.get("events").cloned().unwrap_or(Value::Null)),
        })
        .collect())
}

/// The error of one event that a bulk answer refused.
fn item_error(capability: &str, error: &Value, secrets: &[&str]) -> Error {
    let parsed = AntavoError::from_value(&json!({"error": error})).unwrap_or_default();
    let said = http::redact(&parsed.describe(), secrets);
    match parsed.code {
        Some(codes::CUSTOMER_NOT_FOUND) => {
            Error::NotFound(format!("{capability}: Antavo knows no such customer: {said}"))
        }
        _ => Error::Permanent {
            status: None,
            message: format!("{capability}: Antavo refused the event in a bulk request: {said}"),
            body: http::redact(&error.to_string(), secrets),
        },
    }
}

/// Sends the events of several calls of `capability` together, in `/events/bulk` requests of at most
/// [`MAX_BULK_EVENTS`], and returns each call's output, in order. A call that is alone goes to `/events`.
pub fn send_together(
    host: &mut dyn Host,
    config: &Config,
    capability: &str,
    calls: &[(&Event, &Context)],
) -> Vec<Result<String, Error>> {
    if let [(event, context)] = calls {
        return vec![send(host, config, capability, event, context)];
    }
    let mut results = Vec::with_capacity(calls.len());
    for chunk in calls.chunks(MAX_BULK_EVENTS) {
        host.log(
            Level::Info,
            &format!("{capability}: sending {} events of as many calls to /events/bulk", chunk.len()),
        );
        let events: Vec<&Event> = chunk.iter().map(|(e, _)| *e).collect();
        match post_bulk(host, config, capability, &events) {
            Err(errors) => results.extend(errors.into_iter().map(Err)),
            Ok(outcomes) => {
                for ((event, context), outcome) in chunk.iter().zip(outcomes) {
                    results.push(match outcome {
                        ItemOutcome::Recorded(events) => Ok(output("events/bulk", None, events, false)),
                        ItemOutcome::Refused(error) => {
                            let code = AntavoError::from_value(&json!({"error": error})).and_then(|e| e.code);
                            if context.attempt > 1 && event.repeat_code().is_some() && code == event.repeat_code() {
                                Ok(duplicate_output(host, capability, event, "events/bulk"))
                            } else {
                                Err(item_error(capability, &error, &config.secrets()))
                            }
                        }
                    });
                }
            }
        }
    }
    results
}

/// `sendEvents`: the events of one call, in `/events/bulk` requests of at most [`MAX_BULK_EVENTS`], in order.
/// Events Antavo refuses one by one are reported in the output (`errors`), not as a failure: the others were
/// recorded. A request that fails whole fails the call; when earlier requests of it were recorded, the failure
/// is permanent (re-sending the call would record them again) and says which events were recorded.
pub fn send_many(host: &mut dyn Host, config: &Config, input: &Value) -> Result<String, Error> {
    let capability = "sendEvents";
    let map = properties(input)?;
    let items = match map.get("events") {
        Some(Value::Array(items)) if !items.is_empty() && items.len() <= MAX_EVENTS_PER_CALL => items,
        Some(Value::Array(items)) if items.is_empty() => {
            return Err(Error::invalid_input("/properties/events", "events must hold at least one event"));
        }
        Some(Value::Array(_)) => {
            return Err(Error::invalid_input(
                "/properties/events",
                format!("at most {MAX_EVENTS_PER_CALL} events per call"),
            ));
        }
        _ => return Err(Error::invalid_input("/properties/events", "events (an array of events) is required")),
    };
    let mut fields = Fields::default();
    let mut events = Vec::with_capacity(items.len());
    for (index, item) in items.iter().enumerate() {
        let base = format!("/properties/events/{index}");
        match item.as_object() {
            Some(map) => events.extend(read_event(map, &base, &mut fields)),
            None => fields.error(base, format!("an event must be an object, not {}", kind(item))),
        }
    }
    fields.finish()?;
    let mut results = Vec::with_capacity(events.len());
    let (mut recorded, mut refused, mut requests) = (0usize, 0usize, 0usize);
    for (chunk_index, chunk) in events.chunks(MAX_BULK_EVENTS).enumerate() {
        let first = chunk_index * MAX_BULK_EVENTS;
        let refs: Vec<&Event> = chunk.iter().collect();
        requests += 1;
        host.log(Level::Info, &format!("sendEvents: events {first}..{} to /events/bulk", first + chunk.len()));
        match post_bulk(host, config, capability, &refs) {
            Ok(outcomes) => {
                for (offset, outcome) in outcomes.into_iter().enumerate() {
                    results.push(match outcome {
                        ItemOutcome::Recorded(events) => {
                            recorded += 1;
                            json!({"index": first + offset, "events": if events.is_array() { events } else { json!([]) }})
                        }
                        ItemOutcome::Refused(error) => {
                            refused += 1;
                            json!({"index": first + offset, "error": error})
                        }
                    });
                }
            }
            Err(errors) => {
                // The most cautious of the events' errors: one whose outcome is unknown and that Antavo would
                // record twice makes the whole call permanent.
                let error = errors.iter().find(|e| !e.is_retryable()).unwrap_or(&errors[0]).clone();
                if first == 0 {
                    // Nothing of this call was recorded before: the error's kind says whether to retry it.
                    return Err(error);
                }
                return Err(Error::Permanent {
                    status: None,
                    message: format!(
                        "sendEvents: events 0 to {} were sent ({recorded} recorded, {refused} refused) but the request \
                         for events {first} to {} failed ({error}); not retried, since re-sending the call would record \
                         the first ones again: send events {first} and later again",
                        first - 1,
                        first + chunk.len() - 1
                    ),
                    body: json!({"results": results}).to_string(),
                });
            }
        }
    }
    Ok(json!({"results": results, "total": events.len(), "recorded": recorded, "errors": refused, "requests": requests})
        .to_string())
}
