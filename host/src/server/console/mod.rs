//! The web console under `/ui`: pages rendered on the server (maud), readable without JavaScript; htmx and its
//! SSE extension (vendored, served from the binary) refresh the pages that show changing state.
//!
//! | page | route |
//! |---|---|
//! | overview: health, queue sizes, delivered and failed per minute, connections, newest failures | `/ui` |
//! | flows, each as a graph; the integration mappings read from them | `/ui/flows`, `/ui/flows/{id}`, `/ui/mappings` |
//! | workflow logs, a customer's runs, one run | `/ui/runs`, `/ui/customers/{customer}`, `/ui/runs/{id}` |
//! | resend queue: retry, drop, bulk by customer or flow | `/ui/queue` |
//! | inbound messages | `/ui/inbound` |
//! | connections: disconnect, reconnect | `/ui/connections` |
//!
//! Access ([`auth`]): with an `api_token`, a login form sets an `HttpOnly`, `SameSite=Strict` session cookie;
//! every action is a POST carrying the session's CSRF token, after a confirmation page.

mod assets;
mod auth;
mod connections;
mod flows;
mod graph;
mod inbound;
mod live;
mod overview;
mod queue;
mod runs;

use super::ApiState;
use crate::store::{RunState, StoreError};
use axum::Router;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Redirect, Response};
use axum::routing::{get, post};
use maud::{DOCTYPE, Markup, html};
use serde_json::Value;
use std::sync::Arc;

use auth::Session;

/// What the console's handlers share: the API's state and the key of its session cookies.
#[derive(Clone)]
pub(super) struct Console {
    api: ApiState,
    key: Arc<auth::SessionKey>,
}

impl Console {
    fn service(&self) -> &crate::delivery::Service {
        &self.api.service
    }

    fn requires_login(&self) -> bool {
        self.api.api_token.is_some()
    }
}

/// The console's routes, `/` and everything under `/ui`, for the API's router to merge.
pub fn router(state: &ApiState) -> Router<ApiState> {
    let console = Console { api: state.clone(), key: Arc::new(auth::SessionKey::new(state.api_token.as_deref())) };
    let pages = Router::new()
        .route("/ui", get(overview::page))
        .route("/ui/flows", get(flows::list))
        .route("/ui/flows/{id}", get(flows::detail))
        .route("/ui/mappings", get(flows::mappings))
        .route("/ui/runs", get(runs::list))
        .route("/ui/runs/{id}", get(runs::detail))
        .route("/ui/customers/{customer}", get(runs::customer))
        .route("/ui/queue", get(queue::page))
        .route("/ui/queue/{id}/{action}", get(queue::confirm_one).post(queue::act_one))
        .route("/ui/queue-bulk/{action}", get(queue::confirm_bulk).post(queue::act_bulk))
        .route("/ui/inbound", get(inbound::page))
        .route("/ui/connections", get(connections::page))
        .route("/ui/connections/{name}/{action}", get(connections::confirm).post(connections::act))
        .route("/ui/live/overview", get(live::overview))
        .route("/ui/live/queue", get(live::queue))
        .route("/ui/live/runs/{id}", get(live::run))
        .route("/ui/logout", post(auth::logout))
        .route_layer(axum::middleware::from_fn_with_state(console.clone(), auth::require_session));
    Router::new()
        .merge(pages)
        .route("/", get(|| async { Redirect::to("/ui") }))
        .route("/ui/", get(|| async { Redirect::permanent("/ui") }))
        .route("/ui/login", get(auth::login_page).post(auth::login))
        .route("/ui/static/{file}", get(assets::serve))
        .with_state(console)
}

/// The navigation, in order: (path, label).
const NAV: [(&str, &str); 6] = [
    ("/ui", "Overview"),
    ("/ui/flows", "Flows"),
    ("/ui/runs", "Workflow logs"),
    ("/ui/queue", "Resend queue"),
    ("/ui/inbound", "Inbound"),
    ("/ui/connections", "Connections"),
];

/// A whole page: the shell (navigation, styles, scripts) around `body`. `current` is the navigation entry.
fn page(title: &str, current: &str, session: &Session, body: Markup) -> Markup {
    html! {
        (DOCTYPE)
        html lang="en" {
            head {
                meta charset="utf-8";
                meta name="viewport" content="width=device-width, initial-scale=1";
                title { (title) " · flowhost" }
                link rel="stylesheet" href=(assets::url("console.css"));
                script src=(assets::url("htmx.min.js")) defer {}
                script src=(assets::url("sse.min.js")) defer {}
            }
            body {
                header.top {
                    a.brand href="/ui" { span.logo { "◆" } " flowhost" }
                    nav {
                        @for (path, label) in NAV {
                            a href=(path) class=[(current == path).then_some("current")] { (label) }
                        }
                    }
                    @if session.logged_in {
                        form.logout method="post" action="/ui/logout" {
                            (csrf_field(session))
                            button.link type="submit" { "Log out" }
                        }
                    }
                }
                main { (body) }
            }
        }
    }
}

/// The hidden CSRF field every state-changing form carries.
fn csrf_field(session: &Session) -> Markup {
    html! { input type="hidden" name="csrf" value=(session.csrf); }
}

/// A page that says what went wrong, with the status.
fn error_page(status: StatusCode, session: &Session, message: &str) -> Response {
    let body = html! {
        h1 { (status.canonical_reason().unwrap_or("Error")) }
        p.notice.bad { (message) }
        p { a href="/ui" { "Back to the overview" } }
    };
    (status, page("Error", "", session, body)).into_response()
}

/// A store error as a page: 400 for bad input, 404, else 503 (logged).
fn store_error_page(session: &Session, e: StoreError) -> Response {
    match e {
        StoreError::Invalid { .. } => error_page(StatusCode::BAD_REQUEST, session, &e.to_string()),
        StoreError::NotFound { .. } => error_page(StatusCode::NOT_FOUND, session, &e.to_string()),
        other => {
            tracing::error!(error = %other, "store error in the console");
            error_page(StatusCode::SERVICE_UNAVAILABLE, session, &format!("The store cannot answer now: {other}"))
        }
    }
}

/// A time, in UTC, to the second.
fn time(ms: i64) -> Markup {
    let text = format_time(ms);
    html! { time datetime=(text.replace(' ', "T") + "Z") { (text) } }
}

fn format_time(ms: i64) -> String {
    let at = std::time::UNIX_EPOCH + std::time::Duration::from_millis(u64::try_from(ms).unwrap_or(0));
    let text = humantime::format_rfc3339_seconds(at).to_string();
    text.trim_end_matches('Z').replace('T', " ")
}

/// A run state as a coloured badge.
fn status_badge(state: RunState) -> Markup {
    html! { span class={ "badge " (state.as_str()) } { (state.as_str()) } }
}

/// Any status word as a badge (inbound messages, connections).
fn badge(class: &str, text: &str) -> Markup {
    html! { span class={ "badge " (class) } { (text) } }
}

/// The last characters of a run id, enough to tell runs apart in a table (its first ones are a time, shared by
/// the runs of one moment).
fn short_id(id: &str) -> &str {
    id.get(id.len().saturating_sub(8)..).unwrap_or(id)
}

/// JSON, pretty, in a scrollable block; very large values are cut with a note.
fn json_block(value: &Value) -> Markup {
    const MAX: usize = 20_000;
    let text = serde_json::to_string_pretty(value).unwrap_or_default();
    let (shown, cut) = if text.len() > MAX {
        let mut end = MAX;
        while !text.is_char_boundary(end) {
            end -= 1;
        }
        (&text[..end], Some(text.len()))
    } else {
        (text.as_str(), None)
    };
    html! {
        pre.json { (shown) }
        @if let Some(total) = cut { p.muted { "… cut at " (MAX) " of " (total) " characters; the API has it whole." } }
    }
}

/// A one-line summary of an error value (a run's `lastError`): its kind and message when it has them.
fn error_summary(error: &Value) -> String {
    let kind = error.get("kind").and_then(Value::as_str);
    let message = error.get("message").and_then(Value::as_str);
    match (kind, message) {
        (Some(kind), Some(message)) => format!("{kind}: {message}"),
        (None, Some(message)) => message.to_string(),
        _ => error.to_string(),
    }
}

/// Text cut to `max` characters with an ellipsis.
fn cut(text: &str, max: usize) -> String {
    if text.chars().count() <= max {
        text.to_string()
    } else {
        text.chars().take(max.saturating_sub(1)).collect::<String>() + "…"
    }
}

/// A query-string value, percent-encoded.
fn encode(value: &str) -> String {
    url::form_urlencoded::byte_serialize(value.as_bytes()).collect()
}

/// A path segment, percent-encoded.
fn segment(value: &str) -> String {
    url::form_urlencoded::byte_serialize(value.as_bytes()).collect::<String>().replace('+', "%20")
}

/// A notice after an action (`?done=…`), from a fixed list, so that a link cannot put words on the page.
fn notice(done: Option<&str>, count: Option<u64>) -> Markup {
    let n = count.unwrap_or(0);
    let text = match done {
        Some("retried") => format!("Retried {n} run(s): due now."),
        Some("dropped") => format!("Dropped {n} run(s): kept for the record, never sent."),
        Some("disconnected") => "Disconnected: its flows are stopped and their queued work is held.".to_string(),
        Some("reconnected") => "Reconnected: its flows run again and the held work is back in the queue.".to_string(),
        Some("nothing") => {
            "Nothing to do: no run was in a state for it (another operator or a worker was first).".to_string()
        }
        _ => return html! {},
    };
    html! { p.notice.good role="status" { (text) } }
}

/// The response to a form post: back to a page (303, so a reload does not post again).
fn see_other(location: &str) -> Response {
    (StatusCode::SEE_OTHER, [(header::LOCATION, location.to_string())]).into_response()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn times_are_utc_to_the_second() {
        assert_eq!(format_time(0), "1970-01-01 00:00:00");
        assert_eq!(format_time(1_714_592_744_066), "2024-05-01 19:45:44");
        assert_eq!(format_time(-5), "1970-01-01 00:00:00", "never a panic");
    }

    #[test]
    fn cut_keeps_short_text_and_marks_cut_text() {
        assert_eq!(cut("abc", 5), "abc");
        assert_eq!(cut("abcdef", 4), "abc…");
        assert_eq!(cut("ééééé", 3), "éé…");
    }

    #[test]
    fn notices_come_from_a_fixed_list() {
        assert!(notice(Some("<script>"), None).into_string().is_empty());
        assert!(notice(Some("retried"), Some(2)).into_string().contains("Retried 2"));
    }
}
