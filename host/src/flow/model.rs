//! The flow format, defined once as Rust types. `flows/schema.json` is generated from these types
//! (`flowhost flow schema`), so editors can validate flow files; a test fails when it is stale.

use super::retry::RetryPolicy;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use std::collections::BTreeMap;

/// A flow: one trigger, named connections, optional variables, and nodes with stable ids.
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
#[schemars(title = "flowhost flow")]
pub struct Flow {
    /// The JSON Schema this file follows, for editors (e.g. `./schema.json`).
    #[serde(rename = "$schema", default, skip_serializing_if = "Option::is_none")]
    pub schema: Option<String>,
    /// A stable id, e.g. `point-add-to-crm`.
    pub id: String,
    /// The flow's own semantic version, e.g. `1.0.0`.
    pub version: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub description: String,
    /// What starts a run.
    pub trigger: Trigger,
    /// Named connections the nodes use.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub connections: BTreeMap<String, ConnectionSpec>,
    /// Constants available to expressions as `vars`.
    #[serde(default, skip_serializing_if = "Map::is_empty")]
    pub vars: Map<String, Value>,
    /// The node that runs first; defaults to the first node.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub start: Option<String>,
    /// The nodes. Ids are unique in the flow (forEach bodies included) and are CEL identifiers
    /// (letters, digits, `_`; not starting with a digit), so expressions can say `nodes.<id>.output`.
    pub nodes: Vec<Node>,
    /// A node to run when a node fails and has no `onError` edge of its own. The run still fails.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub on_error: Option<String>,
}

/// What starts a run of a flow. Tagged by `type`, so that more kinds (e.g. a schedule) can be added.
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
#[serde(tag = "type", rename_all = "camelCase", deny_unknown_fields)]
pub enum Trigger {
    /// A loyalty event handed to flowhost, e.g. `point_add` or `reward_claim`.
    Event {
        /// The event name the flow runs for.
        event: String,
        /// A JSON Schema the event payload is validated against before the run starts.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        schema: Option<Value>,
    },
    /// Events arriving on a connection's inbound route (`POST /v1/inbound/{connection}`), as its connector
    /// normalizes them.
    #[serde(rename_all = "camelCase")]
    Inbound {
        /// The connection (of this flow) whose inbound events start runs.
        connection: String,
        /// The event type to match, one the connector declares (e.g. `custom_event`); any when absent.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        event_type: Option<String>,
        /// The event name to match (e.g. a custom event's); any when absent.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        event_name: Option<String>,
        /// The environment to match, `development` or `production`, for sources that say; any when absent.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        environment: Option<String>,
        /// The identity that names the customer, one the connector declares (`customer_id` when absent, or
        /// e.g. `email`): it becomes `trigger.customer`, and events without it are not mapped (kept and
        /// reported).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        customer_identity: Option<String>,
    },
}

/// A connection: which connector, which versions, its configuration (secrets by reference only), and the
/// hosts it may reach.
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ConnectionSpec {
    /// The connector id, e.g. `http`.
    pub connector: String,
    /// A semantic version requirement, e.g. `^0.1`; any version when absent.
    #[serde(default = "any_version")]
    pub version: String,
    /// The connection config. Secret properties must be references: `{"secret": "NAME"}`.
    #[serde(default)]
    pub config: Map<String, Value>,
    /// Narrows the connector's declared hosts for this connection.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub allowed_hosts: Option<Vec<String>>,
    /// Lets node inputs on this connection have properties that the capability's schema does not declare, for a
    /// connector that needs open inputs. By default such a property is refused (by `flowhost check` and before
    /// the call), since a connector would silently ignore a misspelled one.
    #[serde(default, skip_serializing_if = "is_false")]
    pub open_inputs: bool,
}

fn any_version() -> String {
    "*".to_string()
}

fn is_false(value: &bool) -> bool {
    !value
}

/// One node. Exactly one of `connector`, `condition`, `forEach`, `emit` or `fail` is given.
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Node {
    /// A stable id, unique in the flow, e.g. `send_event`.
    pub id: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
    /// Calls a connector capability.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub connector: Option<ConnectorCall>,
    /// Branches on a boolean expression.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub condition: Option<Condition>,
    /// Runs a body of nodes once per item of an array.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub for_each: Option<ForEach>,
    /// Hands an event back to the embedding platform.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub emit: Option<Emit>,
    /// Stops the run as failed, with a message.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fail: Option<Fail>,
    /// The node to run after this one; the run (or forEach iteration) ends when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub next: Option<String>,
    /// How a failed connector call is retried; the host's default policy applies when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retry: Option<RetryPolicy>,
    /// The node to run when this one fails (after retries). Its error is then `nodes.<id>.error`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub on_error: Option<String>,
    /// Layout for editors and consoles, e.g. where a drawing of the graph puts the node. The engine ignores it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ui: Option<NodeUi>,
}

/// Where a console draws a node. Other keys a console keeps are allowed and kept; nothing runs differently.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct NodeUi {
    /// The node's position on the canvas, in the canvas's units (e.g. as an imported flow had it).
    #[serde(default, skip_serializing_if = "Option::is_none", deserialize_with = "position_through_json")]
    pub position: Option<UiPosition>,
    /// Anything else a console keeps about the node.
    #[serde(flatten)]
    pub other: Map<String, Value>,
}

/// Reads a position through a JSON value: beside a flattened map, serde hands a field each number as
/// serde_json's arbitrary-precision text (a map) rather than as a number, which an `f64` does not take; a JSON value
/// takes it, and gives an `f64` field the number.
fn position_through_json<'de, D: serde::Deserializer<'de>>(deserializer: D) -> Result<Option<UiPosition>, D::Error> {
    match Option::<Value>::deserialize(deserializer)? {
        None => Ok(None),
        Some(value) => serde_json::from_value(value).map(Some).map_err(serde::de::Error::custom),
    }
}

/// A point on a console's canvas.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct UiPosition {
    pub x: f64,
    pub y: f64,
}

/// A node's one action.
#[derive(Debug, Clone, Copy)]
pub enum Action<'a> {
    Connector(&'a ConnectorCall),
    Condition(&'a Condition),
    ForEach(&'a ForEach),
    Emit(&'a Emit),
    Fail(&'a Fail),
}

impl Action<'_> {
    pub fn kind(&self) -> &'static str {
        match self {
            Action::Connector(_) => "connector",
            Action::Condition(_) => "condition",
            Action::ForEach(_) => "forEach",
            Action::Emit(_) => "emit",
            Action::Fail(_) => "fail",
        }
    }
}

impl Node {
    /// The node's action, or why it has none or several.
    pub fn action(&self) -> Result<Action<'_>, String> {
        let actions: Vec<Action> = [
            self.connector.as_ref().map(Action::Connector),
            self.condition.as_ref().map(Action::Condition),
            self.for_each.as_ref().map(Action::ForEach),
            self.emit.as_ref().map(Action::Emit),
            self.fail.as_ref().map(Action::Fail),
        ]
        .into_iter()
        .flatten()
        .collect();
        match actions[..] {
            [action] => Ok(action),
            [] => Err("a node needs one of connector, condition, forEach, emit or fail".into()),
            _ => Err(format!(
                "a node has exactly one of connector, condition, forEach, emit or fail, not {}",
                actions.iter().map(Action::kind).collect::<Vec<_>>().join(" and ")
            )),
        }
    }
}

/// Calls one capability of a connection.
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ConnectorCall {
    /// A connection named in the flow's `connections`.
    pub connection: String,
    /// The capability id, e.g. `triggerMarketingCommunication`.
    pub capability: String,
    /// The capability's input. Strings with `{{ expression }}` are evaluated: a string that is one
    /// expression keeps the expression's type; mixed text interpolates.
    #[serde(default)]
    pub input: Value,
}

/// Branches on a CEL expression.
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Condition {
    /// A CEL expression that evaluates to a boolean, e.g. `trigger.points >= 100` (no braces).
    #[serde(rename = "if")]
    pub expression: String,
    /// The node to run when true; `next` when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub then: Option<String>,
    /// The node to run when false; `next` when absent.
    #[serde(rename = "else", default, skip_serializing_if = "Option::is_none")]
    pub otherwise: Option<String>,
}

/// Runs a body once per item.
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ForEach {
    /// A CEL expression that evaluates to a list (no braces). Inside the body, `item` is the current
    /// item and `index` its position.
    pub items: String,
    /// The body: nodes run for each item, starting with the first; edges stay inside the body.
    #[serde(rename = "do")]
    pub body: Vec<Node>,
}

/// Hands an event to the embedding platform (the library's callback, or the service's outbox).
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Emit {
    /// The event name, e.g. `coupon_redeemed`; may contain `{{ }}`.
    pub event: String,
    /// The event payload; strings with `{{ }}` are evaluated.
    #[serde(default)]
    pub payload: Value,
    /// Fields mapped the way integration pages do (the "inbound events data mapping"): a value `{field}`
    /// takes that field of the triggering event (its attributes first, then user attributes, the event's
    /// own fields such as `customer` or `eventName`, and `identities.<type>`); anything else is a literal.
    /// Merged into the payload, which must then be an object (or absent).
    #[serde(default, skip_serializing_if = "Map::is_empty")]
    pub fields: Map<String, Value>,
}

/// Stops the run as failed.
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Fail {
    /// Why; may contain `{{ }}`.
    pub message: String,
}

/// The JSON Schema of flow files.
pub fn flow_schema() -> Value {
    serde_json::to_value(schemars::schema_for!(Flow)).expect("the flow schema serializes")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_ui_position_takes_any_json_number_beside_the_other_keys() {
        // `1.50` and `1e2` are numbers whose text is not an f64's shortest form: serde_json keeps them as text.
        let ui: NodeUi =
            serde_json::from_str(r#"{"position": {"x": 1.50, "y": 1e2}, "color": "red", "z": 3.250}"#).unwrap();
        assert_eq!(ui.position, Some(UiPosition { x: 1.5, y: 100.0 }));
        assert_eq!(ui.other.get("z").map(ToString::to_string).as_deref(), Some("3.250"));
        let from_value: NodeUi = serde_json::from_value(serde_json::json!({"position": {"x": 7, "y": -2.5}})).unwrap();
        assert_eq!(from_value.position, Some(UiPosition { x: 7.0, y: -2.5 }));
        let error = serde_json::from_str::<NodeUi>(r#"{"position": {"x": 1, "y": 2, "w": 3}}"#).unwrap_err();
        assert!(error.to_string().contains("unknown field `w`"), "{error}");
    }
}
