//! The resend queue: queued, leased, held and dead runs; retry or drop one (after a confirmation page), or
//! every dead run of a customer or a flow at once. Live: the tables are sent again when they change.

use super::runs::{RunsQuery, run_table};
use super::{Console, Session, csrf_field, encode, error_page, notice, see_other, short_id, status_badge};
use crate::store::{BulkAction, RunFilter, RunState, StoreError};
use axum::Form;
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use maud::{Markup, html};
use serde::Deserialize;

const OPEN: [RunState; 4] = [RunState::Queued, RunState::Leased, RunState::Held, RunState::Dead];

fn can_retry(state: RunState) -> bool {
    matches!(state, RunState::Dead | RunState::Queued | RunState::Held | RunState::Failed)
}

fn can_drop(state: RunState) -> bool {
    matches!(state, RunState::Queued | RunState::Leased | RunState::Held | RunState::Dead)
}

/// The retry and drop links of a run, each to its confirmation page.
pub(super) fn row_actions(id: &str, status: RunState) -> Markup {
    html! {
        @if can_retry(status) {
            a.button.small href={ "/ui/queue/" (id) "/retry" } data-action="retry" { "Retry…" } " "
        }
        @if can_drop(status) {
            a.button.small.danger href={ "/ui/queue/" (id) "/drop" } data-action="drop" { "Drop…" }
        }
    }
}

/// How many groups of dead runs (customers, flows) the queue page shows: the largest.
const DEAD_GROUPS: usize = 50;

/// The queue's tables, also sent over SSE.
pub(super) async fn body(console: &Console, query: &RunsQuery) -> Result<Result<Markup, String>, StoreError> {
    let filter = match query.filter(&OPEN) {
        Ok(filter) => filter,
        Err(message) => return Ok(Err(message)),
    };
    let store = console.service().store();
    let runs = store.list_summaries(&filter).await?;
    let ids: Vec<String> = runs.iter().map(|r| r.id.clone()).collect();
    let held_by = store.held_by(&ids).await?;
    // Dead runs by customer and by flow, for the bulk actions, counted by the store.
    let dead = store.dead_runs_by_group(DEAD_GROUPS).await?;
    let by_customer: Vec<(String, u64)> =
        dead.by_customer.into_iter().map(|(customer, n)| (customer.unwrap_or_default(), n)).collect();
    let base = "/ui/queue";
    Ok(Ok(html! {
        (run_table(&runs, &held_by, true))
        div.pager {
            @if query.before.is_some() { a.button href={ (base) "?" (query.with_before(None)) } { "← Newest" } }
            @if runs.len() >= filter.limit && let Some(last) = runs.last() {
                a.button href={ (base) "?" (query.with_before(Some(last.seq))) } { "Older →" }
            }
        }
        @if !dead.by_flow.is_empty() {
            div.grid2 style="margin-top: 16px" {
                (bulk_table("Dead runs by customer", "customer", &by_customer))
                (bulk_table("Dead runs by flow", "flow", &dead.by_flow))
            }
        }
    }))
}

/// Dead runs per customer or flow, the largest groups first (at most [`DEAD_GROUPS`]), each with its bulk actions.
fn bulk_table(title: &str, key: &str, counts: &[(String, u64)]) -> Markup {
    html! {
        section.panel data-bulk=(key) {
            h2 { (title) @if counts.len() >= DEAD_GROUPS { span.muted { "the " (DEAD_GROUPS) " largest" } } }
            div.table-wrap { table {
                thead { tr { th { (key) } th.num { "Dead" } th { } } }
                tbody { @for (value, count) in counts {
                    @let query = format!("{key}={}", encode(value));
                    tr {
                        td { @if value.is_empty() { span.muted { "(none)" } } @else { code { (value) } } }
                        td.num { (count) }
                        // Runs without a customer cannot be selected by one: an empty one selects every customer.
                        td.actions { @if !value.is_empty() {
                            a.button.small href={ "/ui/queue-bulk/retry?" (query) } { "Retry all…" } " "
                            a.button.small.danger href={ "/ui/queue-bulk/drop?" (query) } { "Drop all…" }
                        } }
                    }
                } }
            } }
        }
    }
}

pub(super) async fn page(State(console): State<Console>, session: Session, Query(query): Query<RunsQuery>) -> Response {
    let body = match body(&console, &query).await {
        Ok(Ok(body)) => body,
        Ok(Err(message)) => return error_page(StatusCode::BAD_REQUEST, &session, &message),
        Err(e) => return super::store_error_page(&session, e),
    };
    let status = query.status.as_deref().unwrap_or("");
    let tab = |value: &str, label: &str| {
        let mut q = RunsQuery { status: Some(value.to_string()), before: None, ..query.clone() };
        if value.is_empty() {
            q.status = None;
        }
        html! { a href={ "/ui/queue?" (q.with_before(None)) } class=[(status == value).then_some("current")] { (label) } }
    };
    let live = format!("/ui/live/queue?{}", query.with_before(query.before));
    let flows: Vec<String> = console.service().loaded_flows().iter().map(|f| f.id().to_string()).collect();
    super::page(
        "Resend queue",
        "/ui/queue",
        &session,
        html! {
            div.page-head { h1 { "Resend queue" } span.muted { "Updates live" } }
            (notice(query.done.as_deref(), query.n))
            nav.tabs {
                (tab("", "All open")) (tab("queued", "Queued")) (tab("leased", "Leased")) (tab("held", "Held"))
                (tab("dead", "Dead"))
            }
            form.filters method="get" action="/ui/queue" {
                @if let Some(status) = query.status.as_deref().filter(|s| !s.is_empty()) {
                    input type="hidden" name="status" value=(status);
                }
                label { "Customer" input type="search" name="customer" value=[query.customer.as_deref()] placeholder="customer id"; }
                label { "Flow" select name="flow" {
                    option value="" { "any flow" }
                    @for flow in &flows { option value=(flow) selected[query.flow.as_deref() == Some(flow.as_str())] { (flow) } }
                } }
                button.primary type="submit" { "Filter" }
                a.button href="/ui/queue" { "Clear" }
            }
            div #queue-live hx-ext="sse" sse-connect=(live) sse-swap="update" { (body) }
        },
    )
    .into_response()
}

fn parse_action(action: &str) -> Option<BulkAction> {
    match action {
        "retry" => Some(BulkAction::Retry),
        "drop" => Some(BulkAction::Drop),
        _ => None,
    }
}

fn unknown_action(session: &Session, action: &str) -> Response {
    error_page(StatusCode::NOT_FOUND, session, &format!("`{action}` is not an action here; take retry or drop."))
}

pub(super) async fn confirm_one(
    State(console): State<Console>,
    session: Session,
    Path((id, action)): Path<(String, String)>,
) -> Response {
    let Some(kind) = parse_action(&action) else { return unknown_action(&session, &action) };
    let run = match console.service().store().get(&id).await {
        Ok(Some(run)) => run,
        Ok(None) => return error_page(StatusCode::NOT_FOUND, &session, &format!("No run has the id `{id}`.")),
        Err(e) => return super::store_error_page(&session, e),
    };
    let allowed = match kind {
        BulkAction::Retry => can_retry(run.status),
        BulkAction::Drop => can_drop(run.status),
    };
    let customer = run.customer.as_deref().unwrap_or("(none)");
    let body = html! {
        div.panel.confirm {
            @match kind {
                BulkAction::Retry => {
                    h1 { "Retry run " span.mono { (short_id(&run.id)) } "?" }
                    ul {
                        li { "The run of flow " strong { (run.flow_id) } " for customer " strong { (customer) }
                             " becomes due now, with a fresh count of attempts." }
                        li { "Its earlier attempts stay in its trace. Runs of the same customer that wait behind it follow once it is delivered." }
                    }
                },
                BulkAction::Drop => {
                    h1 { "Drop run " span.mono { (short_id(&run.id)) } "?" }
                    ul {
                        li { "The run of flow " strong { (run.flow_id) } " for customer " strong { (customer) }
                             " is never sent. It is kept for the record, as " code { "dropped" } "." }
                        li { "Runs of the same customer that wait behind it go on." }
                    }
                },
            }
            p { "It is " (status_badge(run.status)) " now." }
            @if allowed {
                form method="post" action={ "/ui/queue/" (run.id) "/" (action) } {
                    (csrf_field(&session))
                    div.buttons {
                        @match kind {
                            BulkAction::Retry => button.primary type="submit" #confirm { "Retry now" },
                            BulkAction::Drop => button.danger type="submit" #confirm { "Drop it" },
                        }
                        a.button href="/ui/queue" { "Cancel" }
                    }
                }
            } @else {
                p.notice.warn { "A " (run.status.as_str()) " run cannot be " (if kind == BulkAction::Retry { "retried" } else { "dropped" }) "." }
                a.button href={ "/ui/runs/" (run.id) } { "Back to the run" }
            }
        }
    };
    super::page("Confirm", "/ui/queue", &session, body).into_response()
}

#[derive(Deserialize)]
pub(super) struct ActionForm {
    csrf: String,
    #[serde(default)]
    customer: Option<String>,
    #[serde(default)]
    flow: Option<String>,
}

pub(super) async fn act_one(
    State(console): State<Console>,
    session: Session,
    Path((id, action)): Path<(String, String)>,
    Form(form): Form<ActionForm>,
) -> Response {
    if !session.accepts(&form.csrf) {
        return super::auth::csrf_refused(&session);
    }
    let Some(kind) = parse_action(&action) else { return unknown_action(&session, &action) };
    let store = console.service().store();
    let done = match kind {
        BulkAction::Retry => store.retry_now(&id).await,
        BulkAction::Drop => store.drop_run(&id).await,
    };
    match done {
        Ok(true) => {
            if kind == BulkAction::Retry {
                console.service().wake();
            }
            tracing::info!(run = %id, action = %action, "operator action from the console");
            see_other(&format!("/ui/queue?done={}&n=1", if kind == BulkAction::Retry { "retried" } else { "dropped" }))
        }
        Ok(false) => see_other("/ui/queue?done=nothing"),
        Err(e) => super::store_error_page(&session, e),
    }
}

#[derive(Deserialize)]
pub(super) struct BulkQuery {
    customer: Option<String>,
    flow: Option<String>,
}

fn bulk_filter(customer: Option<&str>, flow: Option<&str>) -> RunFilter {
    let given = |v: Option<&str>| v.map(str::trim).filter(|v| !v.is_empty()).map(String::from);
    RunFilter { customer: given(customer), flow_id: given(flow), ..RunFilter::default() }
}

pub(super) async fn confirm_bulk(
    State(console): State<Console>,
    session: Session,
    Path(action): Path<String>,
    Query(query): Query<BulkQuery>,
) -> Response {
    let Some(kind) = parse_action(&action) else { return unknown_action(&session, &action) };
    let filter = bulk_filter(query.customer.as_deref(), query.flow.as_deref());
    let dead = RunFilter { statuses: vec![RunState::Dead], ..filter.clone() };
    let count = match console.service().store().count_runs(&dead).await {
        Ok(counts) => counts.dead,
        Err(e) => return super::store_error_page(&session, e),
    };
    let whose = match (&filter.customer, &filter.flow_id) {
        (Some(c), Some(f)) => html! { "of customer " strong { (c) } " in flow " strong { (f) } },
        (Some(c), None) => html! { "of customer " strong { (c) } },
        (None, Some(f)) => html! { "of flow " strong { (f) } },
        (None, None) => html! { strong { "of every customer and flow" } },
    };
    let body = html! {
        div.panel.confirm {
            @match kind {
                BulkAction::Retry => {
                    h1 { "Retry " (count) " dead run(s)?" }
                    ul { li { "Every dead run " (whose) " becomes due now, with a fresh count of attempts." }
                         li { "Runs waiting behind them follow, in each customer's order." } }
                },
                BulkAction::Drop => {
                    h1 { "Drop " (count) " dead run(s)?" }
                    ul { li { "Every dead run " (whose) " is never sent; each is kept for the record as " code { "dropped" } "." }
                         li { "Runs waiting behind them go on." } }
                },
            }
            @if count == 0 {
                p.notice.warn { "There is no dead run to act on." }
                a.button href="/ui/queue" { "Back to the queue" }
            } @else {
                form method="post" action={ "/ui/queue-bulk/" (action) } {
                    (csrf_field(&session))
                    @if let Some(c) = &filter.customer { input type="hidden" name="customer" value=(c); }
                    @if let Some(f) = &filter.flow_id { input type="hidden" name="flow" value=(f); }
                    div.buttons {
                        @match kind {
                            BulkAction::Retry => button.primary type="submit" #confirm { "Retry them" },
                            BulkAction::Drop => button.danger type="submit" #confirm { "Drop them" },
                        }
                        a.button href="/ui/queue" { "Cancel" }
                    }
                }
            }
        }
    };
    super::page("Confirm", "/ui/queue", &session, body).into_response()
}

pub(super) async fn act_bulk(
    State(console): State<Console>,
    session: Session,
    Path(action): Path<String>,
    Form(form): Form<ActionForm>,
) -> Response {
    if !session.accepts(&form.csrf) {
        return super::auth::csrf_refused(&session);
    }
    let Some(kind) = parse_action(&action) else { return unknown_action(&session, &action) };
    let filter = bulk_filter(form.customer.as_deref(), form.flow.as_deref());
    match console.service().store().bulk_dead(&filter, kind).await {
        Ok(ids) => {
            if kind == BulkAction::Retry && !ids.is_empty() {
                console.service().wake();
            }
            tracing::info!(runs = ids.len(), action = %action, "operator bulk action from the console");
            let done = if kind == BulkAction::Retry { "retried" } else { "dropped" };
            see_other(&format!("/ui/queue?done={done}&n={}", ids.len()))
        }
        Err(e) => super::store_error_page(&session, e),
    }
}
