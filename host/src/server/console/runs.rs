//! The workflow logs: runs filtered by customer, flow, status and time, newest first, paged on the server; a
//! customer's page; and one run: its flow's graph with the nodes that ran, and its node timeline (attempts,
//! delays, input, output or error, the connector's log lines; secrets were redacted when the trace was recorded,
//! as the API shows it).

use super::graph::{Highlight, Mark, TRIGGER, flow_graph};
use super::{
    Console, Session, cut, encode, error_page, error_summary, json_block, segment, short_id, status_badge, time,
};
use crate::flow::executor::Checkpoint;
use crate::flow::trace::{Attempt, NodeStatus, NodeTrace, Run};
use crate::store::{HeldBy, RunFilter, RunState, RunSummary, StoreError, StoredRun, parse_states};
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use maud::{Markup, html};
use serde::Deserialize;
use serde_json::Value;
use std::collections::HashMap;

/// The filters of the workflow logs, as the form sends them (empty fields are no filter).
#[derive(Debug, Default, Clone, Deserialize)]
pub(super) struct RunsQuery {
    pub customer: Option<String>,
    pub flow: Option<String>,
    pub status: Option<String>,
    /// UTC, `YYYY-MM-DDTHH:MM[:SS]` (what a `datetime-local` field sends).
    pub from: Option<String>,
    pub until: Option<String>,
    pub before: Option<i64>,
    pub done: Option<String>,
    pub n: Option<u64>,
}

const PAGE: usize = 50;

fn given(value: &Option<String>) -> Option<&str> {
    value.as_deref().map(str::trim).filter(|v| !v.is_empty())
}

/// A `datetime-local` value (UTC) as milliseconds since the epoch, or what is wrong with it.
fn parse_time(field: &str, text: &str) -> Result<i64, String> {
    let full = if text.len() == 16 { format!("{text}:00") } else { text.to_string() };
    let at = humantime::parse_rfc3339_weak(&full)
        .map_err(|_| format!("{field}: `{text}` is not a time such as 2026-12-05T03:00 (UTC)"))?;
    let ms = at.duration_since(std::time::UNIX_EPOCH).map_err(|_| format!("{field}: `{text}` is before 1970"))?;
    i64::try_from(ms.as_millis()).map_err(|_| format!("{field}: `{text}` is too far ahead"))
}

impl RunsQuery {
    /// The store filter, or what is wrong with a field.
    pub fn filter(&self, default_states: &[RunState]) -> Result<RunFilter, String> {
        let statuses = match given(&self.status) {
            Some(list) => parse_states(list).map_err(|e| e.to_string())?,
            None => default_states.to_vec(),
        };
        Ok(RunFilter {
            customer: given(&self.customer).map(String::from),
            flow_id: given(&self.flow).map(String::from),
            statuses,
            before_seq: self.before,
            created_from: given(&self.from).map(|t| parse_time("from", t)).transpose()?,
            created_until: given(&self.until).map(|t| parse_time("until", t)).transpose()?,
            limit: PAGE,
            ..RunFilter::default()
        })
    }

    /// The query string of these filters with another `before`.
    pub fn with_before(&self, before: Option<i64>) -> String {
        let mut pairs = url::form_urlencoded::Serializer::new(String::new());
        for (key, value) in [
            ("customer", &self.customer),
            ("flow", &self.flow),
            ("status", &self.status),
            ("from", &self.from),
            ("until", &self.until),
        ] {
            if let Some(value) = given(value) {
                pairs.append_pair(key, value);
            }
        }
        if let Some(before) = before {
            pairs.append_pair("before", &before.to_string());
        }
        pairs.finish()
    }
}

/// The status choices of the filter form: (value, label).
const STATUS_CHOICES: [(&str, &str); 10] = [
    ("", "any status"),
    ("failed,dead", "failures (failed, dead)"),
    ("queued", "queued"),
    ("leased", "leased (running)"),
    ("held", "held"),
    ("dead", "dead"),
    ("succeeded", "succeeded"),
    ("failed", "failed"),
    ("dropped", "dropped"),
    ("queued,leased,held,dead", "in the queue"),
];

fn filter_form(console: &Console, action: &str, query: &RunsQuery, customer_fixed: bool) -> Markup {
    let flows: Vec<String> = console.service().loaded_flows().iter().map(|f| f.id().to_string()).collect();
    let status = given(&query.status).unwrap_or("");
    html! {
        form.filters method="get" action=(action) {
            @if !customer_fixed {
                label { "Customer" input type="search" name="customer" value=[given(&query.customer)]
                    placeholder="customer id"; }
            }
            label { "Flow" select name="flow" {
                option value="" { "any flow" }
                @for flow in &flows { option value=(flow) selected[given(&query.flow) == Some(flow.as_str())] { (flow) } }
            } }
            label { "Status" select name="status" {
                @for (value, label) in STATUS_CHOICES { option value=(value) selected[status == value] { (label) } }
                @if !STATUS_CHOICES.iter().any(|(v, _)| *v == status) { option value=(status) selected { (status) } }
            } }
            label { "From (UTC)" input type="datetime-local" name="from" value=[given(&query.from)]; }
            label { "Until (UTC)" input type="datetime-local" name="until" value=[given(&query.until)]; }
            button.primary type="submit" { "Filter" }
            a.button href=(action) { "Clear" }
        }
    }
}

/// A table of runs; `actions` adds retry and drop links (the resend queue).
pub(super) fn run_table(runs: &[RunSummary], held_by: &HashMap<String, HeldBy>, actions: bool) -> Markup {
    html! {
        div.table-wrap { table.runs {
            thead { tr {
                th { "Created" } th { "Run" } th { "Flow" } th { "Customer" } th { "Status" } th.num { "Attempts" }
                th { "Last error / waits for" } @if actions { th { } }
            } }
            tbody {
                @if runs.is_empty() { tr { td.empty colspan="8" { "No runs match." } } }
                @for run in runs {
                    tr data-run=(run.id) data-status=(run.status.as_str()) {
                        td.nowrap { (time(run.created_at)) }
                        td.mono { a href={ "/ui/runs/" (run.id) } title=(run.id) { (short_id(&run.id)) } }
                        td { a href={ "/ui/flows/" (segment(&run.flow_id)) } { (run.flow_id) } }
                        td { @if let Some(customer) = &run.customer {
                            a href={ "/ui/customers/" (segment(customer)) } { (customer) } } @else { span.muted { "—" } } }
                        td { (status_badge(run.status)) }
                        td.num { (run.attempts_made()) }
                        @if let Some(by) = held_by.get(&run.id) {
                            td { "behind " a.mono href={ "/ui/runs/" (by.run) } { (short_id(&by.run)) } " (" (by.status.as_str()) ")" }
                        } @else {
                            td.err title=[run.error_to_show().map(error_summary)] {
                                (run.error_to_show().map(|e| cut(&error_summary(e), 90)).unwrap_or_default())
                            }
                        }
                        @if actions { td.actions { (super::queue::row_actions(&run.id, run.status)) } }
                    }
                }
            }
        } }
    }
}

fn pager(base: &str, query: &RunsQuery, runs: &[RunSummary], limit: usize) -> Markup {
    html! {
        div.pager {
            @if query.before.is_some() { a.button href={ (base) "?" (query.with_before(None)) } { "← Newest" } }
            @if runs.len() >= limit && let Some(last) = runs.last() {
                a.button href={ (base) "?" (query.with_before(Some(last.seq))) } rel="next" { "Older →" }
            }
        }
    }
}

async fn listing(
    console: &Console,
    session: &Session,
    query: RunsQuery,
    customer: Option<String>,
) -> Result<Markup, Response> {
    let mut filter = query.filter(&[]).map_err(|e| error_page(StatusCode::BAD_REQUEST, session, &e))?;
    if customer.is_some() {
        filter.customer = customer.clone();
    }
    let store = console.service().store();
    let fetch = async {
        let runs = store.list_summaries(&filter).await?;
        let ids: Vec<String> = runs.iter().map(|r| r.id.clone()).collect();
        Ok::<_, StoreError>((store.held_by(&ids).await?, runs))
    };
    let (held_by, runs) = fetch.await.map_err(|e| super::store_error_page(session, e))?;
    let base = match &customer {
        Some(customer) => format!("/ui/customers/{}", segment(customer)),
        None => "/ui/runs".to_string(),
    };
    Ok(html! {
        (filter_form(console, &base, &query, customer.is_some()))
        (run_table(&runs, &held_by, false))
        (pager(&base, &query, &runs, filter.limit))
    })
}

pub(super) async fn list(State(console): State<Console>, session: Session, Query(query): Query<RunsQuery>) -> Response {
    match listing(&console, &session, query, None).await {
        Ok(body) => super::page(
            "Workflow logs",
            "/ui/runs",
            &session,
            html! { h1 { "Workflow logs" } p.muted { "Every run, newest first, " (PAGE) " a page." } (body) },
        )
        .into_response(),
        Err(response) => response,
    }
}

pub(super) async fn customer(
    State(console): State<Console>,
    session: Session,
    Path(customer): Path<String>,
    Query(query): Query<RunsQuery>,
) -> Response {
    let dead = RunFilter { customer: Some(customer.clone()), statuses: vec![RunState::Dead], ..RunFilter::default() };
    let dead = match console.service().store().count_runs(&dead).await {
        Ok(counts) => counts.dead,
        Err(e) => return super::store_error_page(&session, e),
    };
    match listing(&console, &session, query, Some(customer.clone())).await {
        Ok(body) => super::page(
            &format!("Customer {customer}"),
            "/ui/runs",
            &session,
            html! {
                div.page-head {
                    h1 { "Customer " code { (customer) } }
                    @if dead > 0 {
                        div { a.button.primary href={ "/ui/queue-bulk/retry?customer=" (encode(&customer)) } {
                            "Retry " (dead) " dead run(s)…" } }
                    }
                }
                p.muted { "The workflow log of one customer: all of their runs, every flow, newest first." }
                (body)
            },
        )
        .into_response(),
        Err(response) => response,
    }
}

/// The node executions of a run: its trace, or, for a run not ended, what its checkpoint holds so far.
fn executions(run: &StoredRun) -> (Vec<NodeTrace>, Option<Run>) {
    if let Some(trace) = run.trace.as_ref().and_then(|t| serde_json::from_value::<Run>(t.clone()).ok()) {
        return (trace.nodes.clone(), Some(trace));
    }
    let Some(checkpoint) = run.checkpoint.as_ref().and_then(|c| serde_json::from_value::<Checkpoint>(c.clone()).ok())
    else {
        return (Vec::new(), None);
    };
    let mut nodes: Vec<NodeTrace> = checkpoint.calls.into_values().map(|call| call.trace).collect();
    for (node_id, attempts) in checkpoint.failed_attempts {
        let error = attempts.last().and_then(|a| a.error.clone());
        nodes.push(NodeTrace {
            node_id,
            kind: "connector".into(),
            call: None,
            iteration: None,
            status: NodeStatus::Failed,
            started_ms: attempts.first().map_or(0, |a| a.started_ms),
            duration_ms: attempts.iter().map(|a| a.duration_ms).sum(),
            attempts,
            earlier_attempts: Vec::new(),
            throttled: Vec::new(),
            paced_ms: 0,
            input: None,
            output: None,
            error,
            next: None,
            log: Vec::new(),
        });
    }
    nodes.sort_by_key(|n| n.started_ms);
    (nodes, None)
}

fn highlight(nodes: &[NodeTrace]) -> Highlight {
    let mut highlight = Highlight::default();
    for node in nodes {
        let mark = match node.status {
            NodeStatus::Succeeded => Mark::Ran,
            NodeStatus::Failed => Mark::Failed,
        };
        let entry = highlight.marks.entry(node.node_id.clone()).or_insert(mark);
        if mark == Mark::Failed {
            *entry = Mark::Failed;
        }
        if let Some(next) = &node.next {
            highlight.taken.insert((node.node_id.clone(), next.clone()));
        }
    }
    if let Some(first) = nodes.iter().find(|n| n.iteration.is_none()) {
        highlight.taken.insert((TRIGGER.to_string(), first.node_id.clone()));
    }
    highlight
}

fn attempts_table(attempts: &[Attempt]) -> Markup {
    html! {
        table.attempts {
            thead { tr { th.num { "#" } th.num { "At" } th.num { "Took" } th { "Outcome" } th.num { "Then waited" } } }
            tbody { @for attempt in attempts {
                tr {
                    td.num { (attempt.attempt) }
                    td.num { "+" (attempt.started_ms) " ms" }
                    td.num { (attempt.duration_ms) " ms" }
                    td { @match &attempt.error {
                        Some(error) => span.err-text style="color: var(--bad)" { (error.kind.to_string()) ": " (cut(&error.message, 160)) },
                        None => span style="color: var(--good)" { "ok" },
                    } }
                    td.num { @if let Some(ms) = attempt.retry_after_ms { (ms) " ms" } @else { "—" } }
                }
            } }
        }
    }
}

fn timeline(nodes: &[NodeTrace]) -> Markup {
    html! {
        @if nodes.is_empty() { p.empty { "No node has run yet (or the run keeps no trace)." } }
        ol.timeline {
            @for node in nodes {
                @let status = match node.status { NodeStatus::Succeeded => "succeeded", NodeStatus::Failed => "failed" };
                li class=(status) data-timeline-node=(node.node_id) {
                    div.head {
                        strong { (node.node_id) }
                        @if let Some(i) = node.iteration { span.muted { "item " (i) } }
                        span.muted { (node.call.as_deref().unwrap_or(&node.kind)) }
                        (super::badge(status, status))
                        span.muted { "+" (node.started_ms) " ms · took " (node.duration_ms) " ms" }
                    }
                    @if let Some(error) = &node.error {
                        p.error-text { strong { (error.kind.to_string()) } ": " (error.message) }
                    }
                    @if !node.earlier_attempts.is_empty() {
                        p.muted { "Attempts before the operator's retry:" }
                        (attempts_table(&node.earlier_attempts))
                    }
                    @if !node.attempts.is_empty() { (attempts_table(&node.attempts)) }
                    @if let Some(input) = &node.input { details { summary { "Input" } (json_block(input)) } }
                    @if let Some(output) = &node.output { details { summary { "Output" } (json_block(output)) } }
                    @if let Some(detail) = node.error.as_ref().and_then(|e| e.detail.as_ref()) {
                        details { summary { "Error detail" } (json_block(detail)) }
                    }
                    @if !node.log.is_empty() {
                        details open[node.status == NodeStatus::Failed] {
                            summary { "Log (" (node.log.len()) " lines)" }
                            table.attempts.logs { tbody { @for line in &node.log {
                                tr {
                                    td.num { "+" (line.at_ms) " ms" }
                                    td { (word(&line.level)) }
                                    td { (word(&line.source)) }
                                    td { (line.message) }
                                }
                            } } }
                        }
                    }
                    @if let Some(next) = &node.next { p.muted { "→ next: " code { (next) } } }
                }
            }
        }
    }
}

/// A unit enum's serialized name (`info`, `http`).
fn word<T: serde::Serialize>(value: &T) -> String {
    match serde_json::to_value(value) {
        Ok(Value::String(text)) => text,
        Ok(other) => other.to_string(),
        Err(_) => String::new(),
    }
}

/// The run page's body, also sent over SSE while the run is open.
pub(super) async fn detail_body(console: &Console, id: &str) -> Result<Option<Markup>, StoreError> {
    let store = console.service().store();
    let Some(run) = store.get(id).await? else { return Ok(None) };
    let held_by = store.held_by(std::slice::from_ref(&run.id)).await?.remove(&run.id);
    let (nodes, trace) = executions(&run);
    let flow = super::flows::find_flow(console, &run.flow_id);
    let highlight = highlight(&nodes);
    Ok(Some(html! {
        @if let Some(by) = &held_by {
            p.notice.warn #held-behind {
                "This run waits behind run " a.mono href={ "/ui/runs/" (by.run) } { (short_id(&by.run)) }
                " of the same customer and flow, which is " strong { (by.status.as_str()) }
                @if by.status == RunState::Dead { ": retry or drop that run and this one follows." }
                @else { " (waiting for its resend)." }
            }
        }
        div.run-layout {
            div {
                section.panel {
                    h2 { "Run" (status_badge(run.status)) }
                    dl.facts {
                        dt { "Id" } dd.mono { (run.id) }
                        dt { "Flow" } dd { a href={ "/ui/flows/" (segment(&run.flow_id)) } { (run.flow_id) } " v" (run.flow_version) }
                        dt { "Customer" } dd { @if let Some(c) = &run.customer { a href={ "/ui/customers/" (segment(c)) } { (c) } } @else { "—" } }
                        dt { "Created" } dd { (time(run.created_at)) }
                        dt { "Last change" } dd { (time(run.updated_at)) }
                        dt { "Attempts" } dd { (run.attempts_made()) }
                        @if let Some(next) = run.next_attempt() { dt { "Next attempt" } dd { (time(next)) } }
                        @if let Some(trace) = &trace { dt { "Took" } dd { (trace.duration_ms) " ms" } }
                        @if let Some(error) = run.error_to_show() { dt { "Last error" } dd.error-text style="color: var(--bad)" #last-error { (error_summary(error)) } }
                    }
                    div.legend style="margin-top: 12px" { (super::queue::row_actions(&run.id, run.status)) }
                }
                section.panel {
                    h2 { "Graph" }
                    @match &flow {
                        Some(flow) => {
                            div.graph #run-graph { (flow_graph(flow.flow(), Some(&highlight))) }
                            div.legend { span.l-ran { "ran" } span.l-failed { "failed" } span.l-idle { "did not run" } }
                        },
                        None => p.muted { "Flow " code { (run.flow_id) } " is not loaded any more." },
                    }
                }
                section.panel {
                    h2 { "Event" }
                    (json_block(&run.event))
                }
            }
            section.panel {
                h2 { "Node timeline" span.muted { (nodes.len()) " execution(s)" } }
                (timeline(&nodes))
                @if trace.is_none() && let Some(checkpoint) = &run.checkpoint {
                    details { summary { "Checkpoint (progress so far)" } (json_block(checkpoint)) }
                }
            }
        }
    }))
}

pub(super) async fn detail(State(console): State<Console>, session: Session, Path(id): Path<String>) -> Response {
    let body = match detail_body(&console, &id).await {
        Ok(Some(body)) => body,
        Ok(None) => return error_page(StatusCode::NOT_FOUND, &session, &format!("No run has the id `{id}`.")),
        Err(e) => return super::store_error_page(&session, e),
    };
    let live = format!("/ui/live/runs/{}", segment(&id));
    super::page(
        &format!("Run {}", short_id(&id)),
        "/ui/runs",
        &session,
        html! {
            div.page-head { h1 { "Run " span.mono { (short_id(&id)) } } a href="/ui/runs" { "← Workflow logs" } }
            div hx-ext="sse" sse-connect=(live) sse-swap="update" { (body) }
        },
    )
    .into_response()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn form_filters_become_a_store_filter_and_bad_ones_are_named() {
        let query = RunsQuery {
            customer: Some(" ".into()),
            flow: Some("f".into()),
            status: Some("failed,dead".into()),
            from: Some("2026-12-05T03:00".into()),
            ..RunsQuery::default()
        };
        let filter = query.filter(&[]).unwrap();
        assert_eq!(filter.customer, None, "an empty field is no filter");
        assert_eq!(filter.flow_id.as_deref(), Some("f"));
        assert_eq!(filter.statuses, [RunState::Failed, RunState::Dead]);
        assert_eq!(filter.created_from, Some(parse_time("from", "2026-12-05T03:00:00").unwrap()));
        let bad = RunsQuery { until: Some("yesterday".into()), ..RunsQuery::default() };
        assert!(bad.filter(&[]).unwrap_err().contains("until: `yesterday`"));
        let bad = RunsQuery { status: Some("sleeping".into()), ..RunsQuery::default() };
        assert!(bad.filter(&[]).unwrap_err().contains("sleeping"));
        assert_eq!(query.with_before(Some(7)), "flow=f&status=failed%2Cdead&from=2026-12-05T03%3A00&before=7");
    }
}
