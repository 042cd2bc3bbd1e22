//! Inbound messages: what each connection received, unmatched events, and what became of each message (its
//! runs, and those of them that failed).

use super::{Console, Session, badge, cut, error_page, json_block, short_id, time};
use crate::store::{InboundFilter, InboundState, parse_states};
use axum::extract::{Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use maud::html;
use serde::Deserialize;

#[derive(Debug, Default, Deserialize)]
pub(super) struct InboundQuery {
    connection: Option<String>,
    status: Option<String>,
    before: Option<i64>,
}

const PAGE: usize = 50;

pub(super) async fn page(
    State(console): State<Console>,
    session: Session,
    Query(query): Query<InboundQuery>,
) -> Response {
    let given = |v: &Option<String>| v.as_deref().map(str::trim).filter(|v| !v.is_empty()).map(String::from);
    let statuses = match given(&query.status) {
        Some(list) => match parse_states::<InboundState>(&list) {
            Ok(statuses) => statuses,
            Err(e) => return error_page(StatusCode::BAD_REQUEST, &session, &e.to_string()),
        },
        None => Vec::new(),
    };
    let filter =
        InboundFilter { connection: given(&query.connection), statuses, before_seq: query.before, limit: PAGE };
    let (messages, next) = match console.service().inbound_messages(&filter).await {
        Ok(page) => page,
        Err(e) => return super::store_error_page(&session, e),
    };
    let connections: Vec<String> = super::overview::connections(&console).into_keys().collect();
    let status = given(&query.status).unwrap_or_default();
    let mut older = url::form_urlencoded::Serializer::new(String::new());
    for (key, value) in [("connection", given(&query.connection)), ("status", given(&query.status))] {
        if let Some(value) = value {
            older.append_pair(key, &value);
        }
    }
    let base_query = older.finish();
    let body = html! {
        h1 { "Inbound messages" }
        p.muted { "What senders posted to " code { "/v1/inbound/{connection}" } ", newest first, and what became of it." }
        form.filters method="get" action="/ui/inbound" {
            label { "Connection" select name="connection" {
                option value="" { "any connection" }
                @for name in &connections { option value=(name) selected[given(&query.connection).as_deref() == Some(name.as_str())] { (name) } }
            } }
            label { "Status" select name="status" {
                option value="" { "any status" }
                @for state in InboundState::ALL {
                    option value=(state.as_str()) selected[status == state.as_str()] { (state.as_str()) }
                }
            } }
            button.primary type="submit" { "Filter" }
            a.button href="/ui/inbound" { "Clear" }
        }
        div.table-wrap { table {
            thead { tr { th { "Received" } th { "Connection" } th { "Source" } th { "Sender's id" } th { "Status" }
                         th { "Runs" } th { "Detail" } } }
            tbody {
                @if messages.is_empty() { tr { td.empty colspan="7" { "No inbound message matches." } } }
                @for view in &messages {
                    @let message = &view.message;
                    tr data-inbound=(message.id) {
                        td.nowrap { (time(message.received_at)) }
                        td { (message.connection) }
                        td.mono { (message.source) }
                        td.mono { (message.external_id.as_deref().map(|id| cut(id, 24)).unwrap_or_default()) }
                        td { (badge(view.status.as_str(), view.status.as_str())) }
                        td.nowrap {
                            @for id in &message.run_ids {
                                @let failed = view.failed_runs.iter().find(|f| &f.run_id == id);
                                a.mono href={ "/ui/runs/" (id) } { (short_id(id)) }
                                @if let Some(failed) = failed { " " (badge(failed.status.as_str(), failed.status.as_str())) }
                                br;
                            }
                            @if message.run_ids.is_empty() { span.muted { "none" } }
                        }
                        td {
                            @if let Some(detail) = &message.detail {
                                details { summary { (cut(&detail.to_string(), 60)) } (json_block(detail)) }
                            }
                            details { summary { "Body" } (json_block(&message.body)) }
                        }
                    }
                }
            }
        } }
        div.pager {
            @if query.before.is_some() { a.button href={ "/ui/inbound?" (base_query) } { "← Newest" } }
            @if messages.len() >= PAGE && let Some(next) = next {
                a.button href={ "/ui/inbound?" (base_query) @if !base_query.is_empty() { "&" } "before=" (next) } { "Older →" }
            }
        }
    };
    super::page("Inbound messages", "/ui/inbound", &session, body).into_response()
}
