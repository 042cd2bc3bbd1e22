//! The overview: health, queue sizes by state, runs delivered and failed per minute over the last hour,
//! connections with their state, and the newest failures. Live: the body is sent again when it changes.

use super::{Console, Session, badge, encode, error_summary, short_id, status_badge, time};
use crate::delivery::metrics::MinuteCount;
use crate::store::{RunFilter, RunState, StoreError, now_ms};
use axum::extract::State;
use axum::response::{IntoResponse, Response};
use maud::{Markup, html};
use std::collections::{BTreeMap, BTreeSet};

pub(super) async fn page_handler(console: &Console, session: &Session) -> Response {
    let body = match body(console).await {
        Ok(body) => body,
        Err(e) => return super::store_error_page(session, e),
    };
    super::page(
        "Overview",
        "/ui",
        session,
        html! {
            div.page-head { h1 { "Overview" } span.muted { "Updates live" } }
            div hx-ext="sse" sse-connect="/ui/live/overview" sse-swap="update" { (body) }
        },
    )
    .into_response()
}

pub(super) async fn page(State(console): State<Console>, session: Session) -> Response {
    page_handler(&console, &session).await
}

/// Every connection the loaded flows name, with the flows that use it.
pub(super) fn connections(console: &Console) -> BTreeMap<String, Vec<String>> {
    let mut connections: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for flow in console.service().loaded_flows() {
        for name in flow.flow().connections.keys() {
            connections.entry(name.clone()).or_default().push(flow.id().to_string());
        }
    }
    connections
}

/// The overview's body, also sent over SSE.
pub(super) async fn body(console: &Console) -> Result<Markup, StoreError> {
    let store = console.service().store();
    let newest_failures =
        RunFilter { statuses: vec![RunState::Failed, RunState::Dead], limit: 8, ..RunFilter::default() };
    // Side by side: each is a read of its own (the counts scan an index), and the store has several readers.
    let (counts, held_behind, held, failures) = tokio::try_join!(
        store.counts(),
        store.held_behind(),
        store.held_connections(),
        store.list_summaries(&newest_failures),
    )?;
    let held: BTreeSet<String> = held.into_iter().collect();
    let (running, stopped) = console.service().flows();
    let minutes = console.service().metrics().per_minute(now_ms());
    let connections = connections(console);
    let mut throttled = console.service().host().pacing().status();
    throttled.retain(|_, status| status.throttled_now);
    let open = [RunState::Queued, RunState::Leased, RunState::Held, RunState::Dead];
    let closed = [RunState::Succeeded, RunState::Failed, RunState::Dropped];
    Ok(html! {
        p.notice.good #health {
            strong { "Healthy" } " · the store answers · "
            (running.len()) " flow(s) running"
            @if !stopped.is_empty() { ", " strong { (stopped.len()) " stopped by a disconnect" } }
            @if held_behind.dead > 0 {
                " · " (held_behind.dead) " run(s) wait behind a dead run of their customer"
            }
        }
        section.panel {
            h2 { "Resend queue" span.muted { "runs by state" } }
            div.cards {
                @for state in open { (count_card(state, counts.runs.get(state), "/ui/queue")) }
            }
            h3.muted { "Finished" }
            div.cards {
                @for state in closed { (count_card(state, counts.runs.get(state), "/ui/runs")) }
                a.card href="/ui/inbound" data-count="inbound" {
                    div.n { (counts.inbound.received + counts.inbound.leased) }
                    div.l { "inbound waiting" }
                }
                div.card data-count="outbox" { div.n { (counts.outbox) } div.l { "outbox events" } }
            }
        }
        div.grid2 {
            section.panel {
                h2 { "Delivered and failed per minute" span.muted { "last hour, this process" } }
                (chart(&minutes))
            }
            section.panel {
                h2 { "Connections" a href="/ui/connections" { "Manage" } }
                div.table-wrap { table {
                    thead { tr { th { "Connection" } th { "State" } th { "Flows" } } }
                    tbody {
                        @for (name, flows) in &connections {
                            tr data-connection=(name) {
                                td { strong { (name) } }
                                td { @if held.contains(name) { (badge("disconnected", "disconnected")) }
                                     @else { (badge("connected", "connected")) }
                                     @if throttled.contains_key(name) { " " (badge("throttled", "throttled")) } }
                                td { (flows.join(", ")) }
                            }
                        }
                    }
                } }
            }
        }
        section.panel {
            h2 { "Newest failures" a href="/ui/runs?status=failed,dead" { "All failures" } }
            @if failures.is_empty() {
                p.empty { "No failed or dead runs." }
            } @else {
                div.table-wrap { table {
                    thead { tr { th { "When" } th { "Run" } th { "Flow" } th { "Customer" } th { "Status" } th { "Error" } } }
                    tbody {
                        @for run in &failures {
                            tr {
                                td.nowrap { (time(run.updated_at)) }
                                td.mono { a href={ "/ui/runs/" (run.id) } { (short_id(&run.id)) } }
                                td { a href={ "/ui/flows/" (super::segment(&run.flow_id)) } { (run.flow_id) } }
                                td { @if let Some(c) = &run.customer {
                                    a href={ "/ui/customers/" (super::segment(c)) } { (c) } } }
                                td { (status_badge(run.status)) }
                                td.err title=[run.error_to_show().map(error_summary)] {
                                    (run.error_to_show().map(error_summary).unwrap_or_default())
                                }
                            }
                        }
                    }
                } }
            }
        }
    })
}

fn count_card(state: RunState, count: u64, base: &str) -> Markup {
    html! {
        a href={ (base) "?status=" (encode(state.as_str())) }
            class={ "card " (state.as_str()) @if count == 0 { " zero" } } data-count=(state.as_str()) {
            div.n { (count) }
            div.l { (state.as_str()) }
        }
    }
}

/// Stacked bars, one per minute: delivered (green) under failed (red).
fn chart(minutes: &[MinuteCount]) -> Markup {
    const W: f64 = 600.0;
    const H: f64 = 110.0;
    let top = minutes.iter().map(|m| m.delivered + m.failed).max().unwrap_or(0).max(1);
    let step = W / minutes.len().max(1) as f64;
    let scale = |n: u64| n as f64 / top as f64 * H;
    let total: u64 = minutes.iter().map(|m| m.delivered).sum();
    let failed: u64 = minutes.iter().map(|m| m.failed).sum();
    html! {
        div.chart {
            svg viewBox="0 0 640 136" preserveAspectRatio="xMidYMid meet" role="img"
                aria-label={ (total) " delivered and " (failed) " failed in the last hour" } {
                line.axis x1="34" y1=(H + 4.0) x2=(W + 36.0) y2=(H + 4.0) {}
                text.tick x="0" y="12" { (top) }
                text.tick x="0" y=(H + 4.0) { "0" }
                @for (i, minute) in minutes.iter().enumerate() {
                    @let x = 36.0 + i as f64 * step;
                    @let ok = scale(minute.delivered);
                    @let bad = scale(minute.failed);
                    g {
                        title { (super::format_time(minute.minute_ms)) ": " (minute.delivered) " delivered, "
                            (minute.failed) " failed" }
                        @if ok > 0.0 { rect.bar-ok x=(x) y=(H + 4.0 - ok) width=(step - 2.0) height=(ok) {} }
                        @if bad > 0.0 { rect.bar-bad x=(x) y=(H + 4.0 - ok - bad) width=(step - 2.0) height=(bad) {} }
                    }
                }
                text.tick x="36" y="130" { "60 min ago" }
                text.tick x=(36.0 + W / 2.0 - 20.0) y="130" { "30 min ago" }
                text.tick x=(W + 10.0) y="130" { "now" }
            }
            div.chart-legend {
                span.ok { (total) " delivered" }
                span.bad { (failed) " failed or dead-lettered" }
            }
        }
    }
}
