//! `flowhost check`: parses a flow and finds every problem before anything runs, each with the JSON
//! pointer of the offending value and a message that says what is wrong.

use super::expression::{Expression, Template, escape_pointer};
use super::model::{Action, Flow, Node, Trigger};
use crate::connector::secrets::secret_reference;
use crate::connector::strict_inputs::{declared, property_schema};
use crate::connector::{Connector, ConnectorRegistry, unwrap_davinci};
use serde::Serialize;
use serde_json::Value;
use std::collections::{BTreeMap, BTreeSet, HashMap};

/// One problem in a flow file.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Problem {
    /// The JSON pointer of the offending value in the flow file; empty for the whole file.
    pub pointer: String,
    pub message: String,
    /// An error refuses the flow; a warning is reported and the flow is still loaded.
    pub severity: Severity,
}

/// How bad a [`Problem`] is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Severity {
    /// The flow is refused: `flowhost check` fails, the service and `Host::load` do not load it.
    Error,
    /// Probably a mistake, but the flow may be right: reported, never refused.
    Warning,
}

impl Problem {
    pub fn error(pointer: impl Into<String>, message: impl Into<String>) -> Self {
        Problem { pointer: pointer.into(), message: message.into(), severity: Severity::Error }
    }

    pub fn warning(pointer: impl Into<String>, message: impl Into<String>) -> Self {
        Problem { pointer: pointer.into(), message: message.into(), severity: Severity::Warning }
    }

    pub fn is_error(&self) -> bool {
        self.severity == Severity::Error
    }
}

/// `/pointer: message`, and `/pointer: warning: message` for a warning.
impl std::fmt::Display for Problem {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let pointer = if self.pointer.is_empty() { "(root)" } else { &self.pointer };
        match self.severity {
            Severity::Error => write!(f, "{pointer}: {}", self.message),
            Severity::Warning => write!(f, "{pointer}: warning: {}", self.message),
        }
    }
}

fn problem(pointer: impl Into<String>, message: impl Into<String>) -> Problem {
    Problem::error(pointer, message)
}

/// Whether a JSON file is a JSON Schema rather than a flow (e.g. `flows/schema.json` beside the flows): an
/// object whose `$schema` names a json-schema.org meta-schema and that has no `nodes`.
pub fn is_json_schema(text: &str) -> bool {
    let Ok(Value::Object(document)) = serde_json::from_str::<Value>(text) else { return false };
    let meta = document.get("$schema").and_then(Value::as_str).unwrap_or_default();
    !document.contains_key("nodes")
        && (meta.starts_with("http://json-schema.org/") || meta.starts_with("https://json-schema.org/"))
}

/// Parses a flow file. Syntax errors name the line and column; errors of shape name the JSON pointer.
pub fn parse(text: &str) -> Result<Flow, Vec<Problem>> {
    let value: Value = serde_json::from_str(text)
        .map_err(|e| vec![problem("", format!("not valid JSON (line {}, column {}): {e}", e.line(), e.column()))])?;
    serde_path_to_error::deserialize::<_, Flow>(&value).map_err(|e| {
        let pointer = path_to_pointer(e.path());
        vec![problem(pointer, e.into_inner().to_string())]
    })
}

fn path_to_pointer(path: &serde_path_to_error::Path) -> String {
    use serde_path_to_error::Segment;
    let mut pointer = String::new();
    for segment in path.iter() {
        match segment {
            Segment::Seq { index } => pointer.push_str(&format!("/{index}")),
            Segment::Map { key } => pointer.push_str(&format!("/{}", escape_pointer(key))),
            Segment::Enum { .. } | Segment::Unknown => {}
        }
    }
    pointer
}

/// The variables expressions may read.
const VARIABLES: &[&str] = &["trigger", "vars", "nodes", "run", "error"];
const LOOP_VARIABLES: &[&str] = &["item", "index"];

/// Where a node sits: its pointer and the forEach body it belongs to (`None` for the top level).
struct Placed<'a> {
    node: &'a Node,
    pointer: String,
    scope: Option<String>,
}

/// Lints a parsed flow against the connectors a host knows.
pub fn lint(flow: &Flow, registry: &ConnectorRegistry) -> Vec<Problem> {
    let mut problems = Vec::new();
    if !is_identifier_like(&flow.id, true) {
        problems.push(problem("/id", "id must be letters, digits, '-' or '_', starting with a letter"));
    }
    if let Err(e) = semver::Version::parse(&flow.version) {
        problems.push(problem("/version", format!("{:?} is not a semantic version (e.g. 1.0.0): {e}", flow.version)));
    }
    lint_trigger(flow, &mut problems);
    lint_inbound_trigger(flow, registry, &mut problems);
    let connectors = lint_connections(flow, registry, &mut problems);

    let mut placed: Vec<Placed> = Vec::new();
    place(&flow.nodes, "/nodes", None, &mut placed);
    let mut by_id: HashMap<&str, &Placed> = HashMap::new();
    for p in &placed {
        if !is_identifier_like(&p.node.id, false) {
            problems.push(problem(
                format!("{}/id", p.pointer),
                format!("node id {:?} must be letters, digits and '_', not starting with a digit", p.node.id),
            ));
        }
        if by_id.insert(p.node.id.as_str(), p).is_some() {
            problems.push(problem(format!("{}/id", p.pointer), format!("node id {:?} is used twice", p.node.id)));
        }
    }
    if flow.nodes.is_empty() {
        problems.push(problem("/nodes", "a flow needs at least one node"));
    }

    let before_edges = problems.len();
    lint_edges(flow, &placed, &by_id, &mut problems);
    let edges_valid = problems.len() == before_edges;
    for p in &placed {
        lint_node(p, &connectors, flow, &mut problems);
    }
    lint_field_reads(flow, &placed, &by_id, &connectors, &mut problems);
    // Graph analyses only make sense once every edge points somewhere valid.
    if edges_valid {
        let graph = Graph::new(flow, &placed);
        graph.unreachable(&placed, &mut problems);
        if graph.cycles(&mut problems) {
            graph.unsafe_references(&placed, &mut problems);
        }
    }
    problems
}

fn is_identifier_like(id: &str, dashes: bool) -> bool {
    let mut chars = id.chars();
    matches!(chars.next(), Some(c) if c.is_ascii_alphabetic() || (!dashes && c == '_'))
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_' || (dashes && c == '-'))
}

fn place<'a>(nodes: &'a [Node], pointer: &str, scope: Option<String>, out: &mut Vec<Placed<'a>>) {
    for (i, node) in nodes.iter().enumerate() {
        let node_pointer = format!("{pointer}/{i}");
        out.push(Placed { node, pointer: node_pointer.clone(), scope: scope.clone() });
        if let Some(for_each) = &node.for_each {
            place(&for_each.body, &format!("{node_pointer}/forEach/do"), Some(node.id.clone()), out);
        }
    }
}

fn lint_trigger(flow: &Flow, problems: &mut Vec<Problem>) {
    match &flow.trigger {
        Trigger::Event { event, schema } => {
            if event.trim().is_empty() {
                problems.push(problem("/trigger/event", "the event name is empty"));
            }
            if let Some(schema) = schema
                && let Err(e) = jsonschema::validator_for(schema)
            {
                problems.push(problem("/trigger/schema", format!("not a valid JSON Schema: {e}")));
            }
        }
        Trigger::Inbound { connection, .. } => {
            if !flow.connections.contains_key(connection) {
                problems.push(problem("/trigger/connection", format!("no connection named {connection:?}")));
            }
        }
    }
}

/// An inbound trigger asks only for what its connection's connector declares: an inbound side, one of its
/// event types, one of its identities, and an environment flowhost knows.
fn lint_inbound_trigger(flow: &Flow, registry: &ConnectorRegistry, problems: &mut Vec<Problem>) {
    let Trigger::Inbound { connection, event_type, environment, customer_identity, .. } = &flow.trigger else {
        return;
    };
    if let Some(environment) = environment
        && !["development", "production"].contains(&environment.as_str())
    {
        problems.push(problem(
            "/trigger/environment",
            format!("{environment:?} is not an environment: use \"development\" or \"production\""),
        ));
    }
    // An unknown connection or connector is reported with the connections.
    let Some(spec) = flow.connections.get(connection) else { return };
    let Ok(connector) = registry.resolve(&spec.connector, &spec.version) else { return };
    let id = &connector.manifest().id;
    let Some(inbound) = connector.inbound() else {
        problems.push(problem(
            "/trigger/connection",
            format!("connection {connection:?} uses connector {id}, which has no inbound side (it does not export `receive`)"),
        ));
        return;
    };
    let declared = [
        ("eventType", event_type.as_deref(), &inbound.event_types, "event types"),
        ("customerIdentity", customer_identity.as_deref(), &inbound.identities, "identities"),
    ];
    for (field, asked, offered, what) in declared {
        if let Some(asked) = asked
            && !offered.iter().any(|o| o == asked)
        {
            problems.push(problem(
                format!("/trigger/{field}"),
                format!("connector {id} produces no {asked:?}; its {what}: {}", offered.join(", ")),
            ));
        }
    }
    if customer_identity.is_none() && !inbound.identities.iter().any(|i| i == crate::inbound::DEFAULT_CUSTOMER_IDENTITY)
    {
        problems.push(problem(
            "/trigger/customerIdentity",
            format!(
                "connector {id} has no {:?} identity, the default; name one of its identities: {}",
                crate::inbound::DEFAULT_CUSTOMER_IDENTITY,
                inbound.identities.join(", ")
            ),
        ));
    }
}

/// Checks connections and returns the connector of each connection that resolves.
fn lint_connections<'a>(
    flow: &Flow,
    registry: &'a ConnectorRegistry,
    problems: &mut Vec<Problem>,
) -> BTreeMap<String, &'a Connector> {
    let mut connectors = BTreeMap::new();
    for (name, spec) in &flow.connections {
        let pointer = format!("/connections/{}", escape_pointer(name));
        // Inline secrets are wrong whatever the connector says.
        for (key, value) in &spec.config {
            if value.is_string() && looks_secret(key) {
                problems.push(problem(
                    format!("{pointer}/config/{}", escape_pointer(key)),
                    format!(
                        "{key:?} looks like a secret written inline; give it by reference: {{\"secret\": \"NAME\"}}"
                    ),
                ));
            }
        }
        for (i, host) in spec.allowed_hosts.iter().flatten().enumerate() {
            if let Err(reason) = crate::connector::egress::HostPattern::parse(host) {
                problems.push(problem(format!("{pointer}/allowedHosts/{i}"), format!("{host:?}: {reason}")));
            }
        }
        let connector = match registry.resolve(&spec.connector, &spec.version) {
            Ok(connector) => connector,
            Err(message) => {
                let field = if message.starts_with("unknown") { "connector" } else { "version" };
                problems.push(problem(format!("{pointer}/{field}"), message));
                continue;
            }
        };
        let manifest = connector.manifest();
        connectors.insert(name.clone(), connector.as_ref());
        // Validate the config with secret references standing in for their values.
        let mut config = serde_json::Map::new();
        for (key, value) in &spec.config {
            let property = manifest.connection_properties.iter().find(|p| p.name == *key);
            match (secret_reference(value), property) {
                (Some(_), _) => {
                    config.insert(key.clone(), Value::String("secret-placeholder".into()));
                }
                (None, Some(p)) if p.secret => {
                    if !looks_secret(key) || !value.is_string() {
                        problems.push(problem(
                            format!("{pointer}/config/{}", escape_pointer(key)),
                            format!(
                                "{key:?} is a secret of connector {}; give it by reference: {{\"secret\": \"NAME\"}}",
                                manifest.id
                            ),
                        ));
                    }
                    config.insert(key.clone(), value.clone());
                }
                _ => {
                    config.insert(key.clone(), value.clone());
                }
            }
        }
        if let Ok(validator) = jsonschema::validator_for(&manifest.connection_schema()) {
            for error in validator.iter_errors(&Value::Object(config.clone())) {
                // A secret's value is not known here: the placeholder standing in for it only shows that the
                // property is given. Its value is validated when the connection is set up.
                let path = error.instance_path().as_str();
                let key = path.trim_start_matches('/').split('/').next().unwrap_or_default();
                if spec.config.get(key).and_then(secret_reference).is_some() {
                    continue;
                }
                problems.push(problem(
                    format!("{pointer}/config{}", error.instance_path().as_str()),
                    error.masked().to_string(),
                ));
            }
        }
    }
    connectors
}

/// Whether a config key names a credential (`clientSecret`, `apiKey`, `accessToken`, `password`), as opposed to
/// something about one (`tokenUrl`, `passwordPolicy`).
fn looks_secret(key: &str) -> bool {
    let key = key.to_ascii_lowercase();
    ["secret", "password", "passwd", "token", "apikey", "api_key", "privatekey", "private_key"]
        .iter()
        .any(|s| key.ends_with(s))
}

fn lint_edges(flow: &Flow, placed: &[Placed], by_id: &HashMap<&str, &Placed>, problems: &mut Vec<Problem>) {
    let mut check = |pointer: String, target: &str, scope: &Option<String>| match by_id.get(target) {
        None => problems.push(problem(pointer, format!("no node has id {target:?}"))),
        Some(found) if found.scope != *scope => problems.push(problem(
            pointer,
            format!(
                "node {target:?} is {}; edges cannot cross into or out of a forEach body",
                match &found.scope {
                    Some(body) => format!("inside the body of forEach {body:?}"),
                    None => "at the top level".to_string(),
                }
            ),
        )),
        Some(_) => {}
    };
    if let Some(start) = &flow.start {
        check("/start".into(), start, &None);
    }
    if let Some(handler) = &flow.on_error {
        check("/onError".into(), handler, &None);
    }
    for p in placed {
        let node = p.node;
        for (field, target) in [("next", &node.next), ("onError", &node.on_error)] {
            if let Some(target) = target {
                check(format!("{}/{field}", p.pointer), target, &p.scope);
            }
        }
        if let Some(condition) = &node.condition {
            for (field, target) in [("then", &condition.then), ("else", &condition.otherwise)] {
                if let Some(target) = target {
                    check(format!("{}/condition/{field}", p.pointer), target, &p.scope);
                }
            }
        }
    }
}

fn lint_node(p: &Placed, connectors: &BTreeMap<String, &Connector>, flow: &Flow, problems: &mut Vec<Problem>) {
    let node = p.node;
    let action = match node.action() {
        Ok(action) => action,
        Err(message) => {
            problems.push(problem(&p.pointer, message));
            return;
        }
    };
    let in_loop = p.scope.is_some();
    let expression_at = |pointer: String, source: &str, problems: &mut Vec<Problem>| match Expression::compile(source) {
        Ok(e) => check_variables(&pointer, &e, in_loop, problems),
        Err(message) => problems.push(problem(pointer, message)),
    };
    let template_at = |pointer: String, value: &Value, problems: &mut Vec<Problem>| match Template::compile(value) {
        Ok(t) => {
            for (inner, e) in t.expressions() {
                check_variables(&format!("{pointer}{inner}"), e, in_loop, problems);
            }
            Some(t)
        }
        Err(errors) => {
            for e in errors {
                problems.push(problem(format!("{pointer}{}", e.pointer), e.message));
            }
            None
        }
    };
    if let Some(retry) = &node.retry {
        for message in retry.problems() {
            problems.push(problem(format!("{}/retry", p.pointer), message));
        }
        if !matches!(action, Action::Connector(_)) {
            problems.push(problem(format!("{}/retry", p.pointer), "only connector nodes are retried"));
        }
    }
    match action {
        Action::Connector(call) => {
            let base = format!("{}/connector", p.pointer);
            let template = template_at(format!("{base}/input"), &call.input, problems);
            if !flow.connections.contains_key(&call.connection) {
                problems
                    .push(problem(format!("{base}/connection"), format!("no connection named {:?}", call.connection)));
                return;
            }
            let Some(connector) = connectors.get(&call.connection) else { return };
            let manifest = connector.manifest();
            let Some(capability) = manifest.capability(&call.capability) else {
                problems.push(problem(
                    format!("{base}/capability"),
                    format!(
                        "connector {} has no capability {:?}; it offers: {}",
                        manifest.id,
                        call.capability,
                        manifest.capability_ids()
                    ),
                ));
                return;
            };
            if let Some(template) = template {
                let open = flow.connections.get(&call.connection).is_some_and(|spec| spec.open_inputs);
                let errors = connector.input_errors(&capability.id, &call.input, open).unwrap_or_default();
                lint_literal_input(&format!("{base}/input"), errors, &template, problems);
            }
        }
        Action::Condition(condition) => {
            expression_at(format!("{}/condition/if", p.pointer), &condition.expression, problems)
        }
        Action::ForEach(for_each) => {
            expression_at(format!("{}/forEach/items", p.pointer), &for_each.items, problems);
            if for_each.body.is_empty() {
                problems.push(problem(format!("{}/forEach/do", p.pointer), "the body has no nodes"));
            }
        }
        Action::Emit(emit) => {
            if emit.event.trim().is_empty() {
                problems.push(problem(format!("{}/emit/event", p.pointer), "the event name is empty"));
            }
            template_at(format!("{}/emit/event", p.pointer), &Value::String(emit.event.clone()), problems);
            template_at(format!("{}/emit/payload", p.pointer), &emit.payload, problems);
        }
        Action::Fail(fail) => {
            template_at(format!("{}/fail/message", p.pointer), &Value::String(fail.message.clone()), problems);
            if node.next.is_some() {
                problems.push(problem(format!("{}/next", p.pointer), "a fail node ends the run; it has no next"));
            }
        }
    }
}

fn check_variables(pointer: &str, expression: &Expression, in_loop: bool, problems: &mut Vec<Problem>) {
    for variable in expression.variables() {
        let known = VARIABLES.contains(&variable.as_str()) || (in_loop && LOOP_VARIABLES.contains(&variable.as_str()));
        if !known {
            let hint = if LOOP_VARIABLES.contains(&variable.as_str()) {
                format!("{variable} exists only inside a forEach body")
            } else {
                "expressions can read trigger, vars, nodes, run, error (and item, index inside forEach)".to_string()
            };
            problems.push(problem(
                pointer,
                format!("`{}` reads unknown variable {variable:?}: {hint}", expression.source()),
            ));
        }
    }
}

/// Reports how the literal parts of an input do not fit its capability (the input validated as written, with
/// `{{ … }}` strings in place): errors at values that come from expressions are not known yet. An undeclared
/// property is reported unless the object that has it comes from an expression: the keys of an object written
/// in the flow are literal even when its values are templates.
fn lint_literal_input(
    pointer: &str,
    errors: Vec<crate::connector::InputError>,
    template: &Template,
    problems: &mut Vec<Problem>,
) {
    let templated: Vec<String> = template.expressions().into_iter().map(|(p, _)| p).collect();
    for error in errors {
        let at = error.undeclared_in.as_deref().unwrap_or(&error.field.pointer);
        let from_expression = templated.iter().any(|t| at == t || at.starts_with(&format!("{t}/")));
        if from_expression {
            continue;
        }
        let message = match error.undeclared_in {
            Some(_) => error.field.message,
            None => format!("the input does not fit the capability: {}", error.field.message),
        };
        problems.push(problem(format!("{pointer}{}", error.field.pointer), message));
    }
}

/// Flags a field that an expression reads from the trigger (`trigger.customerID`) or from a connector node's
/// output (`nodes.send.output.stauts`) when the schema there declares its fields and not this one: an error when
/// a declared name is close to it (another case, an edit or two away: a typo that reads nothing), a warning
/// when none is, since the schema may allow more. Nested fields are followed while the schema declares them.
fn lint_field_reads(
    flow: &Flow,
    placed: &[Placed],
    by_id: &HashMap<&str, &Placed>,
    connectors: &BTreeMap<String, &Connector>,
    problems: &mut Vec<Problem>,
) {
    let trigger_schema = match &flow.trigger {
        Trigger::Event { schema: Some(schema), .. } => Some(schema),
        _ => None,
    };
    let output_schema = |node: &str| {
        let call = by_id.get(node)?.node.connector.as_ref()?;
        let manifest = connectors.get(&call.connection)?.manifest();
        let capability = manifest.capability(&call.capability)?;
        Some((unwrap_davinci(&capability.output_schema), capability.id.as_str()))
    };
    let mut found = Vec::new();
    for p in placed {
        for (pointer, expression) in node_expressions(p) {
            for path in expression.field_paths() {
                let (schema, fields, whose) = match path.as_slice() {
                    [variable, fields @ ..] if variable == "trigger" => match trigger_schema {
                        Some(schema) => (schema, fields, "the trigger's schema".to_string()),
                        None => continue,
                    },
                    [variable, node, output, fields @ ..] if variable == "nodes" && output == "output" => {
                        match output_schema(node) {
                            Some((schema, capability)) => {
                                (schema, fields, format!("the output schema of {capability}"))
                            }
                            None => continue,
                        }
                    }
                    _ => continue,
                };
                let Some((depth, verdict)) = undeclared_field(schema, fields) else { continue };
                let read = path[..path.len() - fields.len() + depth + 1].join(".");
                let source = expression.source();
                let what = if source == read { format!("`{read}`") } else { format!("`{source}` reads `{read}`") };
                let field = &fields[depth];
                let problem = match verdict {
                    FieldVerdict::Closed(hint) => Problem::error(
                        &pointer,
                        format!("{what}: {whose} does not declare `{field}` and allows no other; {hint}"),
                    ),
                    FieldVerdict::Near(hint) => {
                        Problem::error(&pointer, format!("{what}: {whose} does not declare `{field}`; {hint}"))
                    }
                    FieldVerdict::Far(hint) => Problem::warning(
                        &pointer,
                        format!("{what}: {whose} does not declare `{field}`, so it may be absent; {hint}"),
                    ),
                };
                if !found.contains(&problem) {
                    found.push(problem);
                }
            }
        }
    }
    problems.extend(found);
}

/// What is wrong with reading an undeclared field, and the hint to give.
enum FieldVerdict {
    /// An error: the schema allows no other field.
    Closed(String),
    /// An error: a declared name is close to it (a typo that reads nothing).
    Near(String),
    /// A warning: nothing declared is close to it, and the schema may allow more.
    Far(String),
}

/// The first of `fields` (read one inside the other) that `schema` does not declare, by its depth, and what
/// to say about it; `None` when every field is declared, or where the schema no longer says what fields
/// there are.
fn undeclared_field(schema: &Value, fields: &[String]) -> Option<(usize, FieldVerdict)> {
    let mut schema = schema;
    for (depth, field) in fields.iter().enumerate() {
        let object = schema.as_object()?;
        let declared = declared(object);
        if declared.is_empty() {
            return None;
        }
        if let Some(sub) = property_schema(object, field) {
            schema = sub;
            continue;
        }
        let matches_pattern =
            declared.patterns.iter().any(|p| regex::Regex::new(p).map(|r| r.is_match(field)).unwrap_or(true));
        if matches_pattern {
            return None;
        }
        let near = crate::suggest::nearest(field, declared.names.iter().map(String::as_str)).is_some();
        let hint = declared.hint(field);
        let verdict = match (declared.closed, near, declared.open) {
            (true, _, _) => FieldVerdict::Closed(hint),
            (false, true, false) => FieldVerdict::Near(hint),
            (false, false, false) => FieldVerdict::Far(hint),
            // The schema says that other fields may be there: only a near miss is worth a word.
            (false, true, true) => FieldVerdict::Far(hint),
            (false, false, true) => return None,
        };
        return Some((depth, verdict));
    }
    None
}

/// The control-flow graph of a flow: edges by node, per scope.
struct Graph<'a> {
    /// Successors: (target, edge kind) where the kind says what is known about the source afterwards.
    edges: HashMap<&'a str, Vec<(&'a str, Outcome)>>,
    /// The entry of each scope (top level: `None`).
    entries: Vec<(&'a str, Option<&'a str>)>,
    /// Nodes by scope, for entry-relative analyses.
    scope_of: HashMap<&'a str, Option<&'a str>>,
    flow_handler: Option<&'a str>,
}

/// What is known on every path to a node: which nodes ran, and whether they succeeded or failed.
type Facts<'a> = BTreeMap<&'a str, Outcome>;

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Outcome {
    Succeeded,
    Failed,
}

impl<'a> Graph<'a> {
    fn new(flow: &'a Flow, placed: &[Placed<'a>]) -> Self {
        let mut edges: HashMap<&str, Vec<(&str, Outcome)>> = HashMap::new();
        let mut scope_of = HashMap::new();
        for p in placed {
            let node = p.node;
            scope_of.insert(node.id.as_str(), p.scope.as_deref().map(|s| placed_id(placed, s)));
            let out = edges.entry(node.id.as_str()).or_default();
            if let Some(condition) = &node.condition {
                for target in [&condition.then, &condition.otherwise] {
                    if let Some(t) = target.as_ref().or(node.next.as_ref()) {
                        out.push((t.as_str(), Outcome::Succeeded));
                    }
                }
            } else if let Some(next) = &node.next {
                out.push((next.as_str(), Outcome::Succeeded));
            }
            if let Some(handler) = &node.on_error {
                out.push((handler.as_str(), Outcome::Failed));
            }
        }
        let mut entries = Vec::new();
        let start = flow.start.as_deref().or(flow.nodes.first().map(|n| n.id.as_str()));
        if let Some(start) = start {
            entries.push((start, None));
        }
        for p in placed {
            if let Some(first) = p.node.for_each.as_ref().and_then(|f| f.body.first()) {
                entries.push((first.id.as_str(), Some(p.node.id.as_str())));
            }
        }
        Graph { edges, entries, scope_of, flow_handler: flow.on_error.as_deref() }
    }

    fn reachable(&self) -> BTreeSet<&'a str> {
        let mut seen = BTreeSet::new();
        let mut stack: Vec<&str> = self.entries.iter().map(|(e, _)| *e).collect();
        stack.extend(self.flow_handler);
        // A forEach body is reachable only when its forEach node is.
        let body_entries: HashMap<&str, &str> =
            self.entries.iter().filter_map(|(e, owner)| owner.map(|o| (o, *e))).collect();
        stack.retain(|e| self.scope_of.get(e).copied().flatten().is_none());
        while let Some(id) = stack.pop() {
            if !seen.insert(id) {
                continue;
            }
            for (target, _) in self.edges.get(id).into_iter().flatten() {
                stack.push(target);
            }
            if let Some(body) = body_entries.get(id) {
                stack.push(body);
            }
        }
        seen
    }

    fn unreachable(&self, placed: &[Placed], problems: &mut Vec<Problem>) {
        let reachable = self.reachable();
        for p in placed {
            if !reachable.contains(p.node.id.as_str()) {
                problems.push(problem(
                    &p.pointer,
                    format!("node {:?} is unreachable: no edge leads to it from the start", p.node.id),
                ));
            }
        }
    }

    /// Reports cycles; returns true when there are none.
    fn cycles(&self, problems: &mut Vec<Problem>) -> bool {
        #[derive(Clone, Copy, PartialEq)]
        enum Mark {
            Visiting,
            Done,
        }
        fn visit<'a>(
            graph: &Graph<'a>,
            id: &'a str,
            marks: &mut HashMap<&'a str, Mark>,
            path: &mut Vec<&'a str>,
            found: &mut Vec<Vec<&'a str>>,
        ) {
            match marks.get(id) {
                Some(Mark::Done) => return,
                Some(Mark::Visiting) => {
                    let start = path.iter().position(|p| *p == id).unwrap_or(0);
                    let mut cycle = path[start..].to_vec();
                    cycle.push(id);
                    found.push(cycle);
                    return;
                }
                None => {}
            }
            marks.insert(id, Mark::Visiting);
            path.push(id);
            for (target, _) in graph.edges.get(id).into_iter().flatten() {
                visit(graph, target, marks, path, found);
            }
            path.pop();
            marks.insert(id, Mark::Done);
        }
        let mut marks = HashMap::new();
        let mut found = Vec::new();
        let mut ids: Vec<&str> = self.edges.keys().copied().collect();
        ids.sort();
        for id in ids {
            visit(self, id, &mut marks, &mut Vec::new(), &mut found);
        }
        for cycle in &found {
            problems.push(problem(
                "/nodes",
                format!("the nodes form a cycle: {}; use forEach to repeat work", cycle.join(" -> ")),
            ));
        }
        found.is_empty()
    }

    /// Flags `nodes.X.output` read where X may not have succeeded on some path, and `nodes.X.error` where X
    /// may not have failed.
    fn unsafe_references(&self, placed: &[Placed<'a>], problems: &mut Vec<Problem>) {
        let known = self.known_before();
        for p in placed {
            let Some(known) = known.get(p.node.id.as_str()) else { continue };
            for (pointer, expression) in node_expressions(p) {
                for reference in expression.node_references() {
                    let state = known.get(reference.node.as_str());
                    let message = match (reference.field.as_deref(), state) {
                        (Some("output"), Some(Outcome::Succeeded)) | (Some("error"), Some(Outcome::Failed)) => continue,
                        (Some("status"), Some(_)) | (None, Some(_)) => continue,
                        (Some("output"), _) => "may not have succeeded before this node on every path",
                        (Some("error"), _) => {
                            "may not have failed before this node (read it from the node its onError leads to)"
                        }
                        (Some(_), _) => {
                            problems.push(problem(
                                pointer.clone(),
                                format!(
                                    "`{}`: a node's result has output, error and status, not {:?}",
                                    expression.source(),
                                    reference.field.unwrap_or_default()
                                ),
                            ));
                            continue;
                        }
                        (None, None) => "may not have run before this node on every path",
                    };
                    let message = if self.scope_of.contains_key(reference.node.as_str()) {
                        format!("`{}` reads node {:?}, which {message}", expression.source(), reference.node)
                    } else {
                        format!("`{}` reads node {:?}, which does not exist", expression.source(), reference.node)
                    };
                    problems.push(problem(pointer.clone(), message));
                }
            }
        }
    }

    /// For each node, what is known about other nodes on every path leading to it: a must-analysis
    /// (intersection over predecessors), in topological order. Requires an acyclic graph.
    fn known_before(&self) -> HashMap<&'a str, BTreeMap<&'a str, Outcome>> {
        let mut known: HashMap<&str, BTreeMap<&str, Outcome>> = HashMap::new();
        let mut entries: Vec<(&str, BTreeMap<&str, Outcome>)> = Vec::new();
        for (entry, owner) in &self.entries {
            if owner.is_none() {
                entries.push((entry, BTreeMap::new()));
            }
        }
        if let Some(handler) = self.flow_handler {
            entries.push((handler, BTreeMap::new()));
        }
        // Work list; a node's facts are the intersection of what arrives on every incoming edge.
        let mut incoming: HashMap<&str, usize> = HashMap::new();
        for targets in self.edges.values() {
            for (t, _) in targets {
                *incoming.entry(t).or_default() += 1;
            }
        }
        // Per node: how many incoming edges have delivered their facts, and the intersection so far.
        let mut arrived: HashMap<&str, (usize, Option<Facts>)> = HashMap::new();
        let mut ready: Vec<(&str, BTreeMap<&str, Outcome>)> = entries;
        let mut body_entry: HashMap<&str, &str> = HashMap::new();
        for (entry, owner) in &self.entries {
            if let Some(owner) = owner {
                body_entry.insert(owner, entry);
            }
        }
        while let Some((id, facts)) = ready.pop() {
            if known.contains_key(id) {
                continue;
            }
            known.insert(id, facts.clone());
            if let Some(entry) = body_entry.get(id) {
                ready.push((entry, facts.clone()));
            }
            for (target, outcome) in self.edges.get(id).into_iter().flatten() {
                let mut out = facts.clone();
                out.insert(id, *outcome);
                let slot = arrived.entry(target).or_insert((0, None));
                slot.0 += 1;
                slot.1 = Some(match slot.1.take() {
                    None => out,
                    Some(previous) => previous.into_iter().filter(|(k, v)| out.get(k) == Some(v)).collect(),
                });
                if slot.0 == incoming.get(target).copied().unwrap_or(0) {
                    ready.push((target, slot.1.clone().unwrap_or_default()));
                }
            }
        }
        known
    }
}

fn placed_id<'a>(placed: &[Placed<'a>], id: &str) -> &'a str {
    placed.iter().find(|p| p.node.id == id).map(|p| p.node.id.as_str()).unwrap_or_default()
}

/// Every compiled expression of a node, with its pointer.
fn node_expressions(p: &Placed) -> Vec<(String, Expression)> {
    let mut out = Vec::new();
    let mut add_template = |pointer: String, value: &Value| {
        if let Ok(template) = Template::compile(value) {
            for (inner, e) in template.expressions() {
                out.push((format!("{pointer}{inner}"), e.clone()));
            }
        }
    };
    let node = p.node;
    if let Some(call) = &node.connector {
        add_template(format!("{}/connector/input", p.pointer), &call.input);
    }
    if let Some(emit) = &node.emit {
        add_template(format!("{}/emit/event", p.pointer), &Value::String(emit.event.clone()));
        add_template(format!("{}/emit/payload", p.pointer), &emit.payload);
    }
    if let Some(fail) = &node.fail {
        add_template(format!("{}/fail/message", p.pointer), &Value::String(fail.message.clone()));
    }
    if let Some(condition) = &node.condition
        && let Ok(e) = Expression::compile(&condition.expression)
    {
        out.push((format!("{}/condition/if", p.pointer), e));
    }
    if let Some(for_each) = &node.for_each
        && let Ok(e) = Expression::compile(&for_each.items)
    {
        out.push((format!("{}/forEach/items", p.pointer), e));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn verdict(schema: Value, path: &str) -> Option<(usize, &'static str, String)> {
        let fields: Vec<String> = path.split('.').map(String::from).collect();
        undeclared_field(&schema, &fields).map(|(depth, verdict)| match verdict {
            FieldVerdict::Closed(hint) => (depth, "closed", hint),
            FieldVerdict::Near(hint) => (depth, "near", hint),
            FieldVerdict::Far(hint) => (depth, "far", hint),
        })
    }

    #[test]
    fn undeclared_fields_are_errors_when_near_a_declared_one_and_warnings_when_far() {
        let schema = json!({"type": "object", "properties": {
            "customerId": {"type": "string"},
            "customer": {"type": "object", "properties": {"tier": {}, "since": {}}},
            "attributes": {"type": "object"},
        }});
        assert!(verdict(schema.clone(), "customerId").is_none());
        assert!(verdict(schema.clone(), "customer.tier").is_none());
        // Below a field whose schema declares no fields, anything goes.
        assert!(verdict(schema.clone(), "attributes.anything.deeper").is_none());
        assert_eq!(verdict(schema.clone(), "customerID"), Some((0, "near", "did you mean `customerId`?".into())));
        assert_eq!(verdict(schema.clone(), "customer.teir"), Some((1, "near", "did you mean `tier`?".into())));
        assert_eq!(
            verdict(schema.clone(), "loyaltyLevel"),
            Some((0, "far", "the declared properties are `customerId`, `customer`, `attributes`".into()))
        );
    }

    #[test]
    fn what_the_schema_says_of_other_fields_decides() {
        let closed = json!({"properties": {"points": {}}, "additionalProperties": false});
        assert_eq!(verdict(closed, "balance"), Some((0, "closed", "the declared properties are `points`".into())));
        let open = json!({"properties": {"points": {}}, "additionalProperties": {"type": "string"}});
        assert!(verdict(open.clone(), "balance").is_none(), "the schema allows other fields");
        assert_eq!(verdict(open, "point"), Some((0, "far", "did you mean `points`?".into())));
        let patterns = json!({"properties": {"points": {}}, "patternProperties": {"^x_": {}}});
        assert!(verdict(patterns.clone(), "x_anything").is_none());
        assert_eq!(verdict(patterns, "pionts").map(|v| v.1), Some("near"));
        let branches = json!({"allOf": [{"properties": {"a": {"properties": {"b": {}}}}}], "properties": {"c": {}}});
        assert!(verdict(branches.clone(), "a.b").is_none());
        assert_eq!(verdict(branches, "a.bb").map(|v| (v.0, v.1)), Some((1, "far")));
        assert!(verdict(json!({"type": "object"}), "anything").is_none());
        assert!(verdict(json!(true), "anything").is_none());
    }

    #[test]
    fn json_schemas_are_told_from_flows() {
        assert!(is_json_schema(r#"{"$schema": "https://json-schema.org/draft/2020-12/schema", "type": "object"}"#));
        assert!(is_json_schema(r#"{"$schema": "http://json-schema.org/draft-07/schema#"}"#));
        assert!(!is_json_schema(r#"{"$schema": "./schema.json", "id": "f", "nodes": []}"#));
        assert!(!is_json_schema(r#"{"$schema": "https://json-schema.org/draft/2020-12/schema", "nodes": []}"#));
        assert!(!is_json_schema(r#"{"type": "object"}"#));
        assert!(!is_json_schema("not json"));
    }

    #[test]
    fn warnings_say_so() {
        assert_eq!(Problem::error("/a", "bad").to_string(), "/a: bad");
        assert_eq!(Problem::warning("/a", "odd").to_string(), "/a: warning: odd");
        assert_eq!(serde_json::to_value(Problem::warning("", "odd")).unwrap()["severity"], "warning");
    }

    #[test]
    fn secret_names_are_recognised_without_flagging_their_neighbours() {
        for secret in ["clientSecret", "apiKey", "api_key", "accessToken", "password", "private_key"] {
            assert!(looks_secret(secret), "{secret}");
        }
        for plain in ["tokenUrl", "passwordPolicy", "secretName", "authUrl", "pod", "keyId"] {
            assert!(!looks_secret(plain), "{plain}");
        }
    }
}
