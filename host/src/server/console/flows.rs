//! The loaded flows: a list, each flow as a graph with its trigger, connections and source, and the three
//! integration pages read from the flows that implement them (read-only): *Sync fields* (loyalty field ->
//! user attribute of the destination), *External events* (loyalty event -> the destination's event and its
//! field assignments) and *Inbound events data mapping* (an inbound event -> a loyalty event, `{field}` or a
//! literal per field).

use super::graph::flow_graph;
use super::{Console, Session, badge, cut, error_page, json_block, segment};
use crate::connector::secrets::secret_reference;
use crate::flow::model::{ConnectionSpec, Node, Trigger};
use crate::flow::{Flow, LoadedFlow};
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use maud::{Markup, html};
use serde_json::Value;
use std::sync::Arc;

fn tabs(current: &str) -> Markup {
    let tabs = [
        ("/ui/flows", "Flows"),
        ("/ui/mappings#sync-fields", "Sync fields"),
        ("/ui/mappings#external-events", "External events"),
        ("/ui/mappings#inbound-mapping", "Inbound events data mapping"),
    ];
    // The first tab of the current page is marked (the mapping's three are sections of one page).
    let marked = tabs.iter().position(|(href, _)| href.starts_with(current));
    html! {
        nav.tabs { @for (i, (href, label)) in tabs.iter().enumerate() {
            a href=(href) class=[(marked == Some(i)).then_some("current")] { (label) }
        } }
    }
}

fn trigger_text(trigger: &Trigger) -> Markup {
    match trigger {
        Trigger::Event { event, .. } => html! { "event " code { (event) } },
        Trigger::Inbound { connection, event_type, event_name, .. } => html! {
            "inbound on " code { (connection) }
            @if let Some(t) = event_type { " · type " code { (t) } }
            @if let Some(n) = event_name { " · name " code { (n) } }
        },
    }
}

fn state_badge(console: &Console, id: &str) -> Markup {
    match console.service().flows().1.get(id) {
        Some(connection) => html! { span title={ "connection " (connection) " is disconnected" } {
        (badge("stopped", "stopped")) } },
        None => badge("running", "running"),
    }
}

pub(super) async fn list(State(console): State<Console>, session: Session) -> Response {
    let flows = console.service().loaded_flows();
    let body = html! {
        h1 { "Flows" }
        (tabs("/ui/flows"))
        div.table-wrap { table {
            thead { tr { th { "Flow" } th { "Version" } th { "Trigger" } th { "Connections" } th.num { "Nodes" }
                         th { "State" } th { "Description" } } }
            tbody {
                @for flow in flows {
                    @let model = flow.flow();
                    tr data-flow=(model.id) {
                        td.nowrap { a href={ "/ui/flows/" (segment(&model.id)) } { strong { (model.id) } } }
                        td { (model.version) }
                        td { (trigger_text(&model.trigger)) }
                        td { (model.connections.keys().cloned().collect::<Vec<_>>().join(", ")) }
                        td.num { (count_nodes(&model.nodes)) }
                        td { (state_badge(&console, &model.id)) }
                        td.muted title=(model.description) { (cut(&model.description, 110)) }
                    }
                }
            }
        } }
    };
    super::page("Flows", "/ui/flows", &session, body).into_response()
}

fn count_nodes(nodes: &[Node]) -> usize {
    nodes.iter().map(|n| 1 + n.for_each.as_ref().map_or(0, |each| count_nodes(&each.body))).sum()
}

/// Every node, forEach bodies included, in document order.
fn all_nodes(nodes: &[Node]) -> Vec<&Node> {
    let mut all = Vec::new();
    for node in nodes {
        all.push(node);
        if let Some(each) = &node.for_each {
            all.extend(all_nodes(&each.body));
        }
    }
    all
}

pub(super) fn find_flow(console: &Console, id: &str) -> Option<Arc<LoadedFlow>> {
    console.service().loaded_flows().iter().find(|f| f.id() == id).cloned()
}

/// A connection's config for people: secrets by the name of their reference, never a value.
fn config_value(value: &Value) -> Markup {
    match secret_reference(value) {
        Some(name) => html! { span.badge.reserved { "secret" } " " code { (name) } },
        None => match value {
            Value::String(text) => html! { code { (text) } },
            other => html! { code { (other) } },
        },
    }
}

fn connection_rows(name: &str, spec: &ConnectionSpec) -> Markup {
    html! {
        tr {
            td { strong { (name) } }
            td { (spec.connector) " " span.muted { (spec.version) } }
            td {
                dl.facts {
                    @for (key, value) in &spec.config { dt { (key) } dd { (config_value(value)) } }
                    @if let Some(hosts) = &spec.allowed_hosts { dt { "allowed hosts" } dd { (hosts.join(", ")) } }
                }
            }
        }
    }
}

pub(super) async fn detail(State(console): State<Console>, session: Session, Path(id): Path<String>) -> Response {
    let Some(loaded) = find_flow(&console, &id) else {
        return error_page(StatusCode::NOT_FOUND, &session, &format!("No loaded flow has the id `{id}`."));
    };
    let flow: &Flow = loaded.flow();
    let source = serde_json::to_value(flow).unwrap_or(Value::Null);
    let body = html! {
        div.page-head {
            h1 { "Flow " (flow.id) " " span.muted { "v" (flow.version) } }
            div { (state_badge(&console, &flow.id)) " "
                a.button href={ "/ui/runs?flow=" (super::encode(&flow.id)) } { "Workflow logs" } }
        }
        @if !flow.description.is_empty() { p.muted { (flow.description) } }
        div.run-layout {
            section.panel {
                h2 { "Graph" }
                div.graph #flow-graph { (flow_graph(flow, None)) }
            }
            div {
                section.panel {
                    h2 { "Trigger" }
                    p { (trigger_text(&flow.trigger)) }
                    @if let Trigger::Event { schema: Some(schema), .. } = &flow.trigger {
                        details { summary { "Payload schema" } (json_block(schema)) }
                    }
                }
                section.panel {
                    h2 { "Connections" }
                    div.table-wrap { table {
                        thead { tr { th { "Name" } th { "Connector" } th { "Configuration" } } }
                        tbody { @for (name, spec) in &flow.connections { (connection_rows(name, spec)) } }
                    } }
                }
                section.panel {
                    h2 { "Source" }
                    details { summary { "The flow as loaded (JSON)" } (json_block(&source)) }
                }
            }
        }
    };
    super::page(&format!("Flow {}", flow.id), "/ui/flows", &session, body).into_response()
}

/// A capability input's properties: inside the `properties` wrapper connectors publish, when there is one.
fn input_properties(input: &Value) -> Option<&serde_json::Map<String, Value>> {
    input.get("properties").and_then(Value::as_object).or_else(|| input.as_object())
}

/// Where a mapped value comes from: a loyalty field (`{{ trigger.x }}`), another expression, or a literal.
fn source_of(value: &Value) -> Markup {
    if let Some(text) = value.as_str() {
        let inner = text.trim().strip_prefix("{{").and_then(|t| t.strip_suffix("}}")).map(str::trim);
        if let Some(field) = inner
            .and_then(|e| e.strip_prefix("trigger."))
            .filter(|f| f.chars().all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '.'))
        {
            return html! { "field " code { (field) } };
        }
        if text.contains("{{") {
            return html! { "expression " code { (text) } };
        }
        return html! { "literal " code { "\"" (text) "\"" } };
    }
    html! { "literal " code { (value) } }
}

/// An inbound mapping's `{field}` (a field of the inbound event) or a literal.
fn inbound_source(value: &Value) -> Markup {
    match value.as_str().and_then(|t| t.strip_prefix('{')).and_then(|t| t.strip_suffix('}')) {
        Some(field) if !field.is_empty() && !field.contains(['{', '}']) => {
            html! { span.badge.queued { "field" } " " code { "{" (field) "}" } }
        }
        _ => html! { span.badge { "literal" } " " code { (value) } },
    }
}

pub(super) async fn mappings(State(console): State<Console>, session: Session) -> Response {
    let flows = console.service().loaded_flows();
    // (flow, node, connection, connector, attribute, value)
    let mut sync = Vec::new();
    // (flow, loyalty event, node, connection, connector, event name, event type, assignments)
    let mut external = Vec::new();
    // (flow, connection, event type, event name, node, loyalty event, fields)
    let mut inbound = Vec::new();
    for loaded in flows {
        let flow = loaded.flow();
        let connector = |name: &str| flow.connections.get(name).map(|c| c.connector.clone()).unwrap_or_default();
        for node in all_nodes(&flow.nodes) {
            if let Some(call) = &node.connector
                && let Some(properties) = input_properties(&call.input)
            {
                if let Some(attributes) = properties.get("attributes").and_then(Value::as_object) {
                    for (name, value) in attributes {
                        sync.push((flow, node, call, connector(&call.connection), name.clone(), value.clone()));
                    }
                }
                if let (Trigger::Event { event, .. }, Some(name)) =
                    (&flow.trigger, properties.get("eventName").and_then(Value::as_str))
                {
                    let assignments: Vec<(String, Value)> = ["payload", "customAttributes", "custom_attributes"]
                        .iter()
                        .filter_map(|key| properties.get(*key).and_then(Value::as_object))
                        .flat_map(|object| object.iter().map(|(k, v)| (k.clone(), v.clone())))
                        .collect();
                    let kind = properties.get("eventType").and_then(Value::as_str).unwrap_or("").to_string();
                    external.push((
                        flow,
                        event.clone(),
                        node,
                        call,
                        connector(&call.connection),
                        name.to_string(),
                        kind,
                        assignments,
                    ));
                }
            }
            if let (Trigger::Inbound { connection, event_type, event_name, .. }, Some(emit)) =
                (&flow.trigger, &node.emit)
            {
                let mut fields: Vec<(String, Value)> =
                    emit.fields.iter().map(|(k, v)| (k.clone(), v.clone())).collect();
                if let Some(payload) = emit.payload.as_object() {
                    fields.extend(payload.iter().map(|(k, v)| (k.clone(), v.clone())));
                }
                inbound.push((flow, connection.clone(), event_type.clone(), event_name.clone(), node, emit, fields));
            }
        }
    }
    let body = html! {
        h1 { "Integration mapping" }
        (tabs("/ui/mappings"))
        p.muted { "Read from the loaded flows: to change a mapping, change its flow and restart the service." }
        section.panel #sync-fields {
            h2 { "Sync fields" span.muted { "loyalty field → user attribute" } }
            @if sync.is_empty() { p.empty { "No flow sets user attributes (a connector input with " code { "attributes" } ")." } }
            @else { div.table-wrap { table {
                thead { tr { th { "Flow" } th { "Destination" } th { "Attribute" } th { "Value" } } }
                tbody { @for (flow, node, call, connector, name, value) in &sync {
                    tr {
                        td { a href={ "/ui/flows/" (segment(&flow.id)) } { (flow.id) } " " span.muted { "· " (node.id) } }
                        td { (call.connection) " " span.muted { "(" (connector) ")" } }
                        td { code { (name) } @if name.starts_with('$') { " " span.badge.reserved title="A name the destination reserves: kept as it is" { "reserved" } } }
                        td { (source_of(value)) }
                    }
                } }
            } } }
        }
        section.panel #external-events {
            h2 { "External events" span.muted { "loyalty event → the destination's event" } }
            @if external.is_empty() { p.empty { "No event flow sends a named event." } }
            @else { div.table-wrap { table {
                thead { tr { th { "Loyalty event" } th { "Flow" } th { "Destination event" } th { "Field assignments" } } }
                tbody { @for (flow, event, node, call, connector, name, kind, assignments) in &external {
                    tr {
                        td { code { (event) } }
                        td { a href={ "/ui/flows/" (segment(&flow.id)) } { (flow.id) } " " span.muted { "· " (node.id) } }
                        td { code { (name) } @if !kind.is_empty() { " " span.muted { "(" (kind) ")" } }
                             br; span.muted { "via " (call.connection) " (" (connector) ")" } }
                        td { @if assignments.is_empty() { span.muted { "none" } }
                             @else { dl.facts { @for (key, value) in assignments { dt { code { (key) } } dd { (source_of(value)) } } } } }
                    }
                } }
            } } }
        }
        section.panel #inbound-mapping {
            h2 { "Inbound events data mapping" span.muted { "inbound event → loyalty event" } }
            @if inbound.is_empty() { p.empty { "No flow maps inbound events." } }
            @else { div.table-wrap { table {
                thead { tr { th { "Inbound event" } th { "Flow" } th { "Loyalty event" } th { "Fields" } } }
                tbody { @for (flow, connection, event_type, event_name, node, emit, fields) in &inbound {
                    tr {
                        td { "on " code { (connection) } br;
                             span.muted { "type " } code { (event_type.as_deref().unwrap_or("any")) }
                             span.muted { " · name " } code { (event_name.as_deref().unwrap_or("any")) } }
                        td { a href={ "/ui/flows/" (segment(&flow.id)) } { (flow.id) } " " span.muted { "· " (node.id) } }
                        td { code { (emit.event) } }
                        td { dl.facts { @for (key, value) in fields { dt { code { (key) } } dd { (inbound_source(value)) } } } }
                    }
                } }
            } } }
        }
    };
    super::page("Integration mapping", "/ui/flows", &session, body).into_response()
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn mapped_values_say_where_they_come_from() {
        assert!(source_of(&json!("{{ trigger.firstName }}")).into_string().contains("field <code>firstName"));
        assert!(source_of(&json!("{{ trigger.a + 1 }}")).into_string().starts_with("expression"));
        assert!(source_of(&json!("gold")).into_string().starts_with("literal"));
        assert!(inbound_source(&json!("{coupon_code}")).into_string().contains("field"));
        assert!(inbound_source(&json!("crm")).into_string().contains("literal"));
        assert!(inbound_source(&json!("{}")).into_string().contains("literal"));
    }

    #[test]
    fn a_secret_is_shown_by_its_reference_name_only() {
        let shown = config_value(&json!({"secret": "API_SECRET"})).into_string();
        assert!(shown.contains("API_SECRET") && shown.contains("secret"), "{shown}");
    }
}
