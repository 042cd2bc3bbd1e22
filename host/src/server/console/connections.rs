//! Connections: each with its state and the flows that use it; disconnect and reconnect, after a confirmation
//! that says what stops and what is kept.

use super::{Console, Session, badge, csrf_field, error_page, notice, see_other};
use crate::delivery::ConnectionError;
use crate::flow::Trigger;
use crate::store::{RunCounts, RunFilter, RunState, StoreError};
use axum::Form;
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use maud::html;
use serde::Deserialize;
use std::collections::BTreeSet;

#[derive(Deserialize)]
pub(super) struct DoneQuery {
    done: Option<String>,
}

/// The open runs of a connection per state (queued, leased, held), counted by the store.
async fn count_runs(console: &Console, connection: &str) -> Result<RunCounts, StoreError> {
    let filter = RunFilter {
        connection: Some(connection.to_string()),
        statuses: vec![RunState::Queued, RunState::Leased, RunState::Held],
        ..RunFilter::default()
    };
    console.service().store().count_runs(&filter).await
}

/// The flows that use a connection, outbound (events to it) and inbound (its events to the platform).
fn flows_of(console: &Console, name: &str) -> (Vec<String>, Vec<String>) {
    let (mut outbound, mut inbound) = (Vec::new(), Vec::new());
    for flow in console.service().loaded_flows() {
        if !flow.flow().connections.contains_key(name) {
            continue;
        }
        match &flow.flow().trigger {
            Trigger::Inbound { connection, .. } if connection == name => inbound.push(flow.id().to_string()),
            _ => outbound.push(flow.id().to_string()),
        }
    }
    (outbound, inbound)
}

pub(super) async fn page(State(console): State<Console>, session: Session, Query(query): Query<DoneQuery>) -> Response {
    let held: BTreeSet<String> = match console.service().store().held_connections().await {
        Ok(held) => held.into_iter().collect(),
        Err(e) => return super::store_error_page(&session, e),
    };
    // Paced connections whose service refused calls for their rate lately (in this process).
    let mut throttled = console.service().host().pacing().status();
    throttled.retain(|_, status| status.throttled_now);
    let mut rows = Vec::new();
    for (name, _) in super::overview::connections(&console) {
        let (waiting, kept) = match count_runs(&console, &name).await {
            Ok(counts) => (counts.queued + counts.leased, counts.held),
            Err(e) => return super::store_error_page(&session, e),
        };
        let connectors: BTreeSet<String> = console
            .service()
            .loaded_flows()
            .iter()
            .filter_map(|f| f.flow().connections.get(&name).map(|c| c.connector.clone()))
            .collect();
        let paced = throttled.get(&name).map(|status| {
            let limit = status.limit.map(|limit| format!(", held to {limit:.1}/s")).unwrap_or_default();
            format!("{} call(s) refused for their rate{limit}", status.throttled)
        });
        rows.push((name.clone(), held.contains(&name), paced, flows_of(&console, &name), waiting, kept, connectors));
    }
    let body = html! {
        h1 { "Connections" }
        (notice(query.done.as_deref(), None))
        p.muted { "Disconnecting a connection stops every flow that uses it, in both directions, and holds their queued work; nothing is deleted." }
        div.table-wrap { table {
            thead { tr { th { "Connection" } th { "Connector" } th { "State" } th { "Outbound flows" } th { "Inbound flows" }
                         th.num { "Queued" } th.num { "Held" } th { } } }
            tbody { @for (name, is_held, paced, (outbound, inbound), waiting, kept, connectors) in &rows {
                tr data-connection=(name) data-state=(if *is_held { "disconnected" } else { "connected" }) {
                    td { strong { (name) } }
                    td { (connectors.iter().cloned().collect::<Vec<_>>().join(", ")) }
                    td {
                        @if *is_held { (badge("disconnected", "disconnected")) } @else { (badge("connected", "connected")) }
                        @if let Some(paced) = paced { " " span title=(paced) { (badge("throttled", "throttled")) } }
                    }
                    td { (outbound.join(", ")) }
                    td { (inbound.join(", ")) }
                    td.num { (waiting) }
                    td.num { (kept) }
                    td.actions {
                        @if *is_held {
                            a.button.small href={ "/ui/connections/" (super::segment(name)) "/reconnect" } data-action="reconnect" { "Reconnect…" }
                        } @else {
                            a.button.small.danger href={ "/ui/connections/" (super::segment(name)) "/disconnect" } data-action="disconnect" { "Disconnect…" }
                        }
                    }
                }
            } }
        } }
    };
    super::page("Connections", "/ui/connections", &session, body).into_response()
}

/// The error page when no flow uses the connection or the action is not one.
fn unknown(console: &Console, session: &Session, name: &str, action: &str) -> Option<Response> {
    if !super::overview::connections(console).contains_key(name) {
        return Some(error_page(StatusCode::NOT_FOUND, session, &format!("No loaded flow uses connection `{name}`.")));
    }
    if action != "disconnect" && action != "reconnect" {
        return Some(error_page(StatusCode::NOT_FOUND, session, &format!("`{action}`: take disconnect or reconnect.")));
    }
    None
}

pub(super) async fn confirm(
    State(console): State<Console>,
    session: Session,
    Path((name, action)): Path<(String, String)>,
) -> Response {
    if let Some(response) = unknown(&console, &session, &name, &action) {
        return response;
    }
    let (outbound, inbound) = flows_of(&console, &name);
    let (waiting, kept) = match count_runs(&console, &name).await {
        Ok(counts) => (counts.queued + counts.leased, counts.held),
        Err(e) => return super::store_error_page(&session, e),
    };
    let all: Vec<String> = outbound.iter().chain(&inbound).cloned().collect();
    let body = html! {
        div.panel.confirm {
            @if action == "disconnect" {
                h1 { "Disconnect " code { (name) } "?" }
                h3 { "What stops" }
                ul {
                    li { "The flows that use it: " strong { (all.join(", ")) } ". New events for them start no run." }
                    li { "Its queued runs (" (waiting) ") are held: kept, not sent. Runs in flight finish their current attempt." }
                    @if !inbound.is_empty() { li { "Requests to " code { "/v1/inbound/" (name) } " are refused (403)." } }
                }
                h3 { "What is kept" }
                ul {
                    li { "Every run and inbound message, with its history. Nothing is deleted." }
                    li { "Reconnecting puts the held work back in the queue, in each customer's order." }
                }
            } @else {
                h1 { "Reconnect " code { (name) } "?" }
                ul {
                    li { "The flows " strong { (all.join(", ")) } " run again." }
                    li { "The " (kept) " held run(s) and its held inbound messages go back in the queue and are sent." }
                }
            }
            form method="post" action={ "/ui/connections/" (super::segment(&name)) "/" (action) } {
                (csrf_field(&session))
                div.buttons {
                    @if action == "disconnect" { button.danger type="submit" #confirm { "Disconnect" } }
                    @else { button.primary type="submit" #confirm { "Reconnect" } }
                    a.button href="/ui/connections" { "Cancel" }
                }
            }
        }
    };
    super::page("Confirm", "/ui/connections", &session, body).into_response()
}

#[derive(Deserialize)]
pub(super) struct CsrfForm {
    csrf: String,
}

pub(super) async fn act(
    State(console): State<Console>,
    session: Session,
    Path((name, action)): Path<(String, String)>,
    Form(form): Form<CsrfForm>,
) -> Response {
    if !session.accepts(&form.csrf) {
        return super::auth::csrf_refused(&session);
    }
    if let Some(response) = unknown(&console, &session, &name, &action) {
        return response;
    }
    let result = if action == "disconnect" {
        console.service().disconnect(&name).await.map(|_| "disconnected")
    } else {
        console.service().reconnect(&name).await.map(|_| "reconnected")
    };
    match result {
        Ok(done) => {
            tracing::info!(connection = %name, action = %action, "operator action from the console");
            see_other(&format!("/ui/connections?done={done}"))
        }
        Err(ConnectionError::Store(e)) => super::store_error_page(&session, e),
        Err(e @ ConnectionError::Incomplete { .. }) => error_page(StatusCode::CONFLICT, &session, &e.to_string()),
        Err(e) => error_page(StatusCode::NOT_FOUND, &session, &e.to_string()),
    }
}
