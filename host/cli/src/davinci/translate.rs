//! DaVinci flows to flowhost flows: connector nodes to connector calls, EVAL nodes to condition nodes, references
//! to CEL, annotations to the description, positions to `ui`. A node without a faithful translation is refused
//! with the reason (or, with `--partial`, replaced by a `fail` node carrying it): a flow never silently does less.

use super::export::{DvFlow, DvNode, Export};
use super::report::{FlowReport, NodeReport, Outcome};
use super::text::{Scope, Target, flatten, has_reference, plain_text, translate_text, translate_value};
use flowhost::flow::Flow;
use serde_json::{Map, Value, json};
use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};

/// The connector id of DaVinci's mParticle connector.
pub const MPARTICLE_CONNECTOR: &str = "mparticleConnector";
/// The connector id of DaVinci's HTTP connector.
pub const HTTP_CONNECTOR: &str = "httpConnector";

/// DaVinci capability names of the mParticle connector -> capabilities of flowhost's `mparticle` connector.
/// DaVinci does not publish the names inside its exports: flowhost's own names are accepted, and this table
/// maps the others seen or expected. Extend it here, or per import with `--map-capability NAME=CAPABILITY`.
pub const MPARTICLE_CAPABILITY_NAMES: &[(&str, &str)] = &[
    ("createAccount", "createAccount"),
    ("createAnAccount", "createAccount"),
    ("getAccount", "getAccount"),
    ("getSingleAccount", "getAccount"),
    ("getASingleAccount", "getAccount"),
    ("updateAccount", "updateAccount"),
    ("updateAnAccount", "updateAccount"),
    ("deleteAccount", "deleteAccount"),
    ("deleteAnAccount", "deleteAccount"),
    ("getAudiences", "getAudiences"),
    ("getAllAudiences", "getAudiences"),
    ("getCalculatedAttributes", "getCalculatedAttributes"),
    ("getAllCalculatedAttributes", "getCalculatedAttributes"),
    ("uploadEventBatch", "uploadEventBatch"),
    ("uploadAnEventBatch", "uploadEventBatch"),
    ("triggerMarketingCommunication", "triggerMarketingCommunication"),
    ("syncUserAttributes", "syncUserAttributes"),
];

/// The capabilities of flowhost's `mparticle` connector.
pub const MPARTICLE_CAPABILITIES: [&str; 9] = [
    "createAccount",
    "getAccount",
    "updateAccount",
    "deleteAccount",
    "getAudiences",
    "getCalculatedAttributes",
    "uploadEventBatch",
    "triggerMarketingCommunication",
    "syncUserAttributes",
];

/// A capability's input properties: (DaVinci property, flowhost property, required, a text field). DaVinci's
/// `jsonBody` (the event batch text area) is flowhost's `eventBatch`; the other names are the same by design.
fn mparticle_properties(capability: &str) -> &'static [(&'static str, &'static str, bool, bool)] {
    match capability {
        "createAccount" => &[("displayName", "displayName", true, true)],
        "getAccount" | "deleteAccount" | "getAudiences" => &[("accountId", "accountId", true, true)],
        "updateAccount" => &[("accountId", "accountId", true, true), ("updatedName", "updatedName", true, true)],
        "getCalculatedAttributes" => {
            &[("workspace", "workspace", true, true), ("nameOptional", "nameOptional", false, true)]
        }
        "uploadEventBatch" => &[("jsonBody", "eventBatch", true, false), ("eventBatch", "eventBatch", true, false)],
        "triggerMarketingCommunication" => &[
            ("eventName", "eventName", true, true),
            ("eventType", "eventType", true, true),
            ("payload", "payload", false, false),
            ("identityType", "identityType", false, true),
            ("identityValue", "identityValue", true, true),
        ],
        "syncUserAttributes" => &[
            ("identityType", "identityType", false, true),
            ("identityValue", "identityValue", true, true),
            ("attributes", "attributes", true, false),
        ],
        _ => &[],
    }
}

/// The capabilities that call mParticle's Events API (key and secret) rather than its Platform API (OAuth).
fn uses_events_api(capability: &str) -> bool {
    matches!(capability, "uploadEventBatch" | "triggerMarketingCommunication" | "syncUserAttributes")
}

/// DaVinci's HTTP connector capability that makes a request (the others answer DaVinci's own caller).
const HTTP_REQUEST_CAPABILITIES: [&str; 3] = ["makeRestApiCall", "makeRESTApiCall", "httpRequest"];

/// What the importer is told on the command line.
#[derive(Debug, Clone, Default)]
pub struct Options {
    /// DaVinci connection id -> flowhost connection name.
    pub connections: BTreeMap<String, String>,
    /// More DaVinci capability names of the mParticle connector -> flowhost capability ids.
    pub capabilities: BTreeMap<String, String>,
    /// Refused nodes become `fail` nodes instead of keeping the flow from being written.
    pub partial: bool,
}

/// One DaVinci flow, translated.
pub struct Imported {
    /// The flow, when it may be written (nothing refused, or `--partial`).
    pub flow: Option<Flow>,
    pub report: FlowReport,
}

/// Translates every flow of an export.
pub fn translate(export: &Export, options: &Options) -> Vec<Imported> {
    let mut ids = HashSet::new();
    export
        .flows
        .iter()
        .map(|flow| {
            let base =
                slug(&flow.name).unwrap_or_else(|| format!("davinci-{}", slug(&flow.flow_id).unwrap_or_default()));
            let id = unique(&base, "-", &mut ids);
            FlowTranslation::new(flow, id, options).run()
        })
        .collect()
}

/// A flow id from a name: lowercase letters and digits, words joined by `-`, starting with a letter.
fn slug(name: &str) -> Option<String> {
    let mut out = String::new();
    for c in name.chars() {
        if c.is_ascii_alphanumeric() {
            out.push(c.to_ascii_lowercase());
        } else if !out.is_empty() && !out.ends_with('-') {
            out.push('-');
        }
    }
    let out = out.trim_end_matches('-').to_string();
    match out.chars().next() {
        None => None,
        Some(c) if c.is_ascii_alphabetic() => Some(out),
        Some(_) => Some(format!("flow-{out}")),
    }
}

/// A node id from a DaVinci id: a CEL identifier (letters, digits, `_`, not starting with a digit).
fn node_id(davinci: &str) -> String {
    let mut out: String =
        davinci.chars().map(|c| if c.is_ascii_alphanumeric() || c == '_' { c } else { '_' }).collect();
    if !out.starts_with(|c: char| c.is_ascii_alphabetic() || c == '_') {
        out.insert_str(0, "n_");
    }
    out
}

fn unique(base: &str, separator: &str, used: &mut HashSet<String>) -> String {
    let mut candidate = base.to_string();
    let mut n = 2;
    while !used.insert(candidate.clone()) {
        candidate = format!("{base}{separator}{n}");
        n += 1;
    }
    candidate
}

#[derive(Debug, Clone, Copy, PartialEq)]
enum Role {
    Annotation,
    Trigger,
    Eval,
    Action,
}

fn role(node: &DvNode) -> Role {
    match node.node_type.as_str() {
        "ANNOTATION" => Role::Annotation,
        "EVAL" => Role::Eval,
        "CONNECTION" if node.kind.as_deref() == Some("trigger") => Role::Trigger,
        _ => Role::Action,
    }
}

fn kind(node: &DvNode) -> String {
    match (node.node_type.as_str(), &node.connector_id) {
        ("CONNECTION", Some(connector)) => {
            format!("{connector}/{}", node.capability_name.as_deref().unwrap_or("(no capability)"))
        }
        (other, _) => other.to_string(),
    }
}

/// An EVAL node's branches: the node leading into it, and the node each outcome of that node leads to.
struct EvalPlan {
    trigger: String,
    on_success: Option<String>,
    on_failure: Option<String>,
}

/// The flowhost nodes built so far, by flowhost id: the node's JSON without `next`/`onError`, which wiring adds.
struct Built {
    node: Map<String, Value>,
    next: Option<String>,
    on_error: Option<String>,
}

struct FlowTranslation<'a> {
    flow: &'a DvFlow,
    options: &'a Options,
    id: String,
    roles: HashMap<&'a str, Role>,
    successors: HashMap<&'a str, Vec<&'a str>>,
    predecessors: HashMap<&'a str, Vec<&'a str>>,
    /// DaVinci id -> what it is in the flowhost flow.
    targets: HashMap<String, Target>,
    /// EVAL id -> the id of its condition node for a failed trigger.
    failed_ids: HashMap<&'a str, String>,
    refused: HashMap<&'a str, String>,
    outcomes: HashMap<&'a str, Outcome>,
    built: BTreeMap<String, Built>,
    /// Connection name -> its spec.
    connections: BTreeMap<String, Value>,
    notes: Vec<String>,
    variables: BTreeSet<String>,
}

impl<'a> FlowTranslation<'a> {
    fn new(flow: &'a DvFlow, id: String, options: &'a Options) -> Self {
        let roles: HashMap<&str, Role> = flow.nodes.iter().map(|n| (n.id.as_str(), role(n))).collect();
        let mut successors: HashMap<&str, Vec<&str>> = HashMap::new();
        let mut predecessors: HashMap<&str, Vec<&str>> = HashMap::new();
        for edge in &flow.edges {
            // Annotations are notes on the canvas; an edge to one carries nothing.
            if roles[edge.source.as_str()] == Role::Annotation || roles[edge.target.as_str()] == Role::Annotation {
                continue;
            }
            successors.entry(&edge.source).or_default().push(&edge.target);
            predecessors.entry(&edge.target).or_default().push(&edge.source);
        }
        let mut used = HashSet::new();
        let mut targets = HashMap::new();
        let mut failed_ids = HashMap::new();
        for node in &flow.nodes {
            match roles[node.id.as_str()] {
                Role::Trigger => {
                    targets.insert(node.id.clone(), Target::Trigger);
                }
                Role::Action => {
                    targets.insert(node.id.clone(), Target::Node(unique(&node_id(&node.id), "_", &mut used)));
                }
                Role::Eval => {
                    let base = unique(&node_id(&node.id), "_", &mut used);
                    failed_ids.insert(node.id.as_str(), unique(&format!("{base}_failed"), "_", &mut used));
                    targets.insert(node.id.clone(), Target::Node(base));
                }
                Role::Annotation => {}
            }
        }
        FlowTranslation {
            flow,
            options,
            id,
            roles,
            successors,
            predecessors,
            targets,
            failed_ids,
            refused: HashMap::new(),
            outcomes: HashMap::new(),
            built: BTreeMap::new(),
            connections: BTreeMap::new(),
            notes: Vec::new(),
            variables: BTreeSet::new(),
        }
    }

    fn fid(&self, davinci: &str) -> String {
        match &self.targets[davinci] {
            Target::Node(id) => id.clone(),
            Target::Trigger => unreachable!("trigger nodes have no flowhost node"),
        }
    }

    fn successors(&self, id: &str) -> &[&'a str] {
        self.successors.get(id).map(Vec::as_slice).unwrap_or_default()
    }

    fn predecessors(&self, id: &str) -> &[&'a str] {
        self.predecessors.get(id).map(Vec::as_slice).unwrap_or_default()
    }

    fn run(mut self) -> Imported {
        let flow = self.flow;
        // The structure first: which nodes cannot be placed in a flowhost flow, whatever they do.
        let roots: Vec<&str> = flow
            .nodes
            .iter()
            .filter(|n| matches!(self.roles[n.id.as_str()], Role::Action | Role::Eval))
            .filter(|n| self.predecessors(&n.id).iter().all(|p| self.roles[p] == Role::Trigger))
            .map(|n| n.id.as_str())
            .collect();
        for extra in roots.iter().skip(1) {
            self.refused.insert(
                extra,
                format!(
                    "a second place where the flow starts (after {:?}): DaVinci runs the branches side by side, a \
                     flowhost flow runs one path",
                    roots[0]
                ),
            );
        }
        let mut plans = HashMap::new();
        for node in &flow.nodes {
            match self.roles[node.id.as_str()] {
                Role::Action => {
                    let next = self.successors(&node.id);
                    if next.len() > 1 {
                        let why = format!(
                            "it leads to {} nodes at once ({}): DaVinci runs them side by side, a flowhost flow runs \
                             one path (put an EVAL node between them to choose one)",
                            next.len(),
                            next.join(", ")
                        );
                        self.refused.insert(&node.id, why);
                    } else if next.iter().any(|n| self.roles[n] == Role::Trigger) {
                        self.refused.insert(&node.id, "it leads into a trigger node".into());
                    }
                }
                Role::Eval => match self.eval_plan(node) {
                    Ok(plan) => {
                        plans.insert(node.id.as_str(), plan);
                    }
                    Err(why) => {
                        self.refused.insert(&node.id, why);
                    }
                },
                Role::Trigger | Role::Annotation => {}
            }
        }
        // Then each node.
        let mut description: Vec<String> = Vec::new();
        if !flow.description.trim().is_empty() {
            description.push(flow.description.trim().to_string());
        }
        // EVAL nodes last: they wire the node leading into them, which must be built by then.
        let (evals, others): (Vec<&DvNode>, Vec<&DvNode>) =
            flow.nodes.iter().partition(|n| self.roles[n.id.as_str()] == Role::Eval);
        for node in others.into_iter().chain(evals) {
            let outcome = match self.roles[node.id.as_str()] {
                Role::Annotation => match annotation_text(node) {
                    Some(text) => {
                        description.push(text);
                        Outcome::Description
                    }
                    None => Outcome::Dropped { why: "an annotation without text".into() },
                },
                Role::Trigger => Outcome::Imported {
                    what: format!(
                        "the flow's trigger (the event `{}`); its output is the event, `trigger` in expressions",
                        self.event_name()
                    ),
                },
                Role::Action => self.action(node),
                Role::Eval => match plans.get(node.id.as_str()) {
                    Some(plan) => self.eval(node, plan),
                    None => {
                        let outcome = self.refuse(node);
                        // With --partial the fail node takes the EVAL's place after the node leading into it.
                        if let (Some(fail), [before]) = (
                            self.built.contains_key(&self.fid(&node.id)).then(|| self.fid(&node.id)),
                            self.predecessors(&node.id),
                        ) {
                            let before = before.to_string();
                            if self.roles[before.as_str()] == Role::Action
                                && !self.refused.contains_key(before.as_str())
                            {
                                let before = self.fid(&before);
                                if let Some(built) = self.built.get_mut(&before) {
                                    built.next = Some(fail);
                                }
                            }
                        }
                        outcome
                    }
                },
            };
            self.outcomes.insert(&node.id, outcome);
        }
        let start = roots.first().map(|root| self.fid(root));
        self.finish(start, description)
    }

    /// The event the flow runs on: its id with `_` for `-`.
    fn event_name(&self) -> String {
        self.id.replace('-', "_")
    }

    /// The outcome of a refused node: with `--partial`, a `fail` node carrying the reason stands in its place.
    fn refuse(&mut self, node: &'a DvNode) -> Outcome {
        let why = self.refused[node.id.as_str()].clone();
        if !self.options.partial {
            return Outcome::Refused { why, fail_node: None };
        }
        let id = self.fid(&node.id);
        // The message is a template: braces quoted from a reference must not become an expression.
        let message = format!("not imported from DaVinci (node {}): {}", node.id, why.replace("{{", "{ {"));
        let mut built = self.base_node(node, &id);
        built.insert("fail".into(), json!({"message": message}));
        self.built.insert(id.clone(), Built { node: built, next: None, on_error: None });
        Outcome::Refused { why, fail_node: Some(id) }
    }

    fn base_node(&self, node: &DvNode, id: &str) -> Map<String, Value> {
        let mut out = Map::new();
        out.insert("id".into(), id.into());
        if let Some(label) = node.label.as_deref().filter(|l| !l.trim().is_empty()) {
            out.insert("description".into(), label.trim().into());
        }
        if let Some((x, y)) = node.position {
            out.insert("ui".into(), json!({"position": {"x": x, "y": y}}));
        }
        out
    }

    /// A connector node, or its refusal.
    fn action(&mut self, node: &'a DvNode) -> Outcome {
        if !self.refused.contains_key(node.id.as_str()) {
            let mut scope = Scope { ids: &self.targets, variables: BTreeSet::new() };
            let translated = translate_call(node, self.options, &mut scope);
            let used = std::mem::take(&mut scope.variables);
            match translated {
                Ok(call) => {
                    self.variables.extend(used);
                    let name = self.connection(node, &call);
                    let id = self.fid(&node.id);
                    let mut built = self.base_node(node, &id);
                    let what = format!("connector node {id} ({name}.{})", call.capability);
                    built.insert(
                        "connector".into(),
                        json!({"connection": name, "capability": call.capability, "input": call.input}),
                    );
                    let next = self.successors(&node.id).first().copied();
                    // An EVAL after the node wires its branches (see `eval`); another node is simply next.
                    let next = next.filter(|n| self.roles[n] == Role::Action).map(|n| self.fid(n));
                    self.built.insert(id, Built { node: built, next, on_error: None });
                    return Outcome::Imported { what };
                }
                Err(why) => {
                    self.refused.insert(&node.id, why);
                }
            }
        }
        self.refuse(node)
    }

    /// The connection a call uses, declared in the flow on first use.
    fn connection(&mut self, node: &DvNode, call: &Call) -> String {
        let davinci_id = node.connection_id.clone().unwrap_or_default();
        let mapped = self.options.connections.get(&davinci_id).cloned();
        match &call.connection {
            ConnectionKind::Mparticle => {
                let name = mapped.unwrap_or_else(|| {
                    // Unmapped: `mparticle`, unless another DaVinci connection already took that name.
                    let taken = self.connections.get("mparticle").and_then(|c| c.get("davinciConnectionId").cloned());
                    match taken {
                        Some(Value::String(other)) if other != davinci_id => {
                            format!("mparticle_{}", davinci_id.chars().take(8).collect::<String>())
                        }
                        _ => "mparticle".into(),
                    }
                });
                let prefix: String = name
                    .chars()
                    .map(|c| if c.is_ascii_alphanumeric() { c.to_ascii_uppercase() } else { '_' })
                    .collect();
                let spec = self.connections.entry(name.clone()).or_insert_with(|| {
                    json!({"connector": "mparticle", "version": "^0.1", "config": {},
                           "davinciConnectionId": davinci_id})
                });
                let config = spec["config"].as_object_mut().expect("config is an object");
                let (id_name, secret_name) = if uses_events_api(&call.capability) {
                    ("apiKey", "apiSecret")
                } else {
                    ("clientId", "clientSecret")
                };
                let (id_env, secret_env) = if uses_events_api(&call.capability) {
                    (format!("{prefix}_API_KEY"), format!("{prefix}_API_SECRET"))
                } else {
                    (format!("{prefix}_CLIENT_ID"), format!("{prefix}_CLIENT_SECRET"))
                };
                config.insert(id_name.into(), json!({"secret": id_env}));
                config.insert(secret_name.into(), json!({"secret": secret_env}));
                name
            }
            ConnectionKind::Http { origin } => {
                let base = mapped.unwrap_or_else(|| "http".into());
                let existing = self
                    .connections
                    .iter()
                    .find(|(name, spec)| spec["config"]["baseUrl"] == *origin && name.starts_with(&base))
                    .map(|(name, _)| name.clone());
                if let Some(name) = existing {
                    return name;
                }
                let mut used: HashSet<String> = self.connections.keys().cloned().collect();
                let name = unique(&base, "_", &mut used);
                self.connections.insert(
                    name.clone(),
                    json!({"connector": "http", "version": "^0.1", "config": {"baseUrl": origin, "authType": "none"},
                           "davinciConnectionId": davinci_id}),
                );
                name
            }
        }
    }

    /// How an EVAL node's edges become branches, or why they cannot.
    fn eval_plan(&self, node: &DvNode) -> Result<EvalPlan, String> {
        let trigger = match self.predecessors(&node.id) {
            [] => return Err("no node leads into this EVAL node".into()),
            [one] if self.roles[one] == Role::Action => one.to_string(),
            [one] => {
                return Err(format!(
                    "it follows {one:?}, which is not a connector node; flowhost evaluates the result of a node it ran"
                ));
            }
            many => {
                return Err(format!(
                    "it joins {} nodes ({}): DaVinci waits for branches run side by side, a flowhost flow runs one path",
                    many.len(),
                    many.join(", ")
                ));
            }
        };
        let (mut on_success, mut on_failure) = (None, None);
        for target in self.successors(&node.id) {
            if self.roles[target] != Role::Action {
                return Err(format!(
                    "its branch to {target:?} leads to another EVAL or a trigger; flowhost branches to nodes that run"
                ));
            }
            let condition = node.properties.get(*target).and_then(Value::as_str).ok_or_else(|| {
                format!("it has no condition for its edge to {target:?} (a property keyed by that node id)")
            })?;
            // One node leads in, so "all" and "any" of its triggers are the same thing.
            let slot = match condition {
                "allTriggersTrue" | "anyTriggersTrue" => &mut on_success,
                "allTriggersFalse" | "anyTriggersFalse" => &mut on_failure,
                other => return Err(format!("its condition {other:?} for {target:?} is not one DaVinci documents")),
            };
            if let Some(first) = slot.replace(target.to_string()) {
                return Err(format!(
                    "{first:?} and {target:?} are taken on the same outcome: DaVinci runs both side by side, a flowhost \
                     flow runs one path"
                ));
            }
        }
        Ok(EvalPlan { trigger, on_success, on_failure })
    }

    /// Condition nodes for an EVAL node: one reached when its trigger succeeded (`next`), one when it failed
    /// (`onError`), each testing the trigger's status and going where DaVinci would.
    fn eval(&mut self, node: &'a DvNode, plan: &EvalPlan) -> Outcome {
        let trigger = self.fid(&plan.trigger);
        let expression = format!("nodes.{trigger}.status == \"succeeded\"");
        let mut made = Vec::new();
        // Only a trigger that was imported is wired; a refused one stops the run there.
        let trigger_built = self.built.contains_key(&trigger) && !self.refused.contains_key(plan.trigger.as_str());
        if let Some(target) = &plan.on_success {
            let id = self.fid(&node.id);
            let then = self.fid(target);
            let mut built = self.base_node(node, &id);
            built.insert("condition".into(), json!({"if": expression, "then": then}));
            self.built.insert(id.clone(), Built { node: built, next: None, on_error: None });
            if trigger_built {
                self.built.get_mut(&trigger).expect("built").next = Some(id.clone());
            }
            made.push(format!("condition node {id} (if {expression} then {then})"));
        }
        if let Some(target) = &plan.on_failure {
            let id = self.failed_ids[node.id.as_str()].clone();
            let otherwise = self.fid(target);
            let mut built = self.base_node(node, &id);
            built.insert("condition".into(), json!({"if": expression, "else": otherwise}));
            self.built.insert(id.clone(), Built { node: built, next: None, on_error: None });
            if trigger_built {
                self.built.get_mut(&trigger).expect("built").on_error = Some(id.clone());
            }
            made.push(format!("condition node {id}, the onError of {trigger} (if {expression} else {otherwise})"));
        }
        if made.is_empty() {
            return Outcome::Dropped {
                why: "an EVAL node without branches: the path ends there, as it does in DaVinci".into(),
            };
        }
        Outcome::Imported { what: made.join(" and ") }
    }

    fn finish(mut self, start: Option<String>, description: Vec<String>) -> Imported {
        let flow = self.flow;
        let mut report = FlowReport {
            name: flow.name.clone(),
            flow_id: flow.flow_id.clone(),
            id: self.id.clone(),
            file: None,
            nodes: Vec::new(),
            notes: Vec::new(),
            problem: None,
        };
        let Some(start) = start else {
            report.problem = Some("the flow has no node to run".into());
            report.nodes = self.node_reports(&HashSet::new(), false);
            return Imported { flow: None, report };
        };
        let writable = self.refused.is_empty() || self.options.partial;
        // Wire the `next` and `onError` edges, and order the nodes from the start, depth first.
        let mut order = Vec::new();
        let mut seen = HashSet::new();
        let mut stack = vec![start.clone()];
        while let Some(id) = stack.pop() {
            if !seen.insert(id.clone()) {
                continue;
            }
            let Some(built) = self.built.get_mut(&id) else { continue };
            if let Some(next) = &built.next {
                built.node.insert("next".into(), next.clone().into());
            }
            if let Some(handler) = &built.on_error {
                built.node.insert("onError".into(), handler.clone().into());
            }
            let mut edges: Vec<String> = ["onError", "next"]
                .iter()
                .filter_map(|k| built.node.get(*k).and_then(Value::as_str).map(String::from))
                .collect();
            if let Some(condition) = built.node.get("condition") {
                for key in ["else", "then"] {
                    if let Some(target) = condition.get(key).and_then(Value::as_str) {
                        edges.push(target.to_string());
                    }
                }
            }
            order.push(id);
            stack.extend(edges);
        }
        report.nodes = self.node_reports(&seen, writable);
        self.notes(&mut report);
        if !writable {
            return Imported { flow: None, report };
        }
        let nodes: Vec<Value> = order.iter().map(|id| Value::Object(self.built[id].node.clone())).collect();
        let mut connections = std::mem::take(&mut self.connections);
        for spec in connections.values_mut() {
            spec.as_object_mut().expect("an object").remove("davinciConnectionId");
        }
        let document = json!({
            "$schema": "./schema.json",
            "id": self.id,
            "version": format!("{}.0.0", flow.current_version.unwrap_or(1)),
            "description": description.join("\n\n"),
            "trigger": self.trigger(),
            "connections": connections,
            "vars": self.vars(&mut report),
            "nodes": nodes,
        });
        match serde_json::from_value::<Flow>(document) {
            Ok(flow) => Imported { flow: Some(flow), report },
            Err(e) => {
                report.problem = Some(format!("the translation is not a valid flow ({e}); please report this"));
                Imported { flow: None, report }
            }
        }
    }

    /// The report of every node, in export order. Nodes the written flow cannot reach are said to be dropped.
    fn node_reports(&self, reached: &HashSet<String>, writable: bool) -> Vec<NodeReport> {
        self.flow
            .nodes
            .iter()
            .map(|node| {
                let mut outcome = self
                    .outcomes
                    .get(node.id.as_str())
                    .cloned()
                    .unwrap_or(Outcome::Dropped { why: "not translated".into() });
                let placed = match &self.targets.get(&node.id) {
                    Some(Target::Node(id)) => {
                        reached.contains(id)
                            || self.failed_ids.get(node.id.as_str()).is_some_and(|f| reached.contains(f))
                    }
                    _ => true,
                };
                const UNREACHABLE: &str =
                    "not reachable from the flow's start once the nodes before it were not imported";
                if writable && !placed {
                    outcome = match outcome {
                        Outcome::Imported { .. } => Outcome::Dropped { why: UNREACHABLE.into() },
                        // Its fail node is left out with it: nothing leads there.
                        Outcome::Refused { why, .. } => {
                            Outcome::Refused { why: format!("{why}; {UNREACHABLE}"), fail_node: None }
                        }
                        other => other,
                    };
                }
                NodeReport {
                    id: node.id.clone(),
                    pointer: node.pointer.clone(),
                    kind: kind(node),
                    label: node.label.clone(),
                    outcome,
                }
            })
            .collect()
    }

    fn notes(&mut self, report: &mut FlowReport) {
        let flow = self.flow;
        let from = flow.trigger_type.as_deref().map(|t| format!(" (the DaVinci trigger was {t})")).unwrap_or_default();
        report.notes.push(format!(
            "the flow runs on the event `{}`{from}; the flow's input parameters are the event's fields",
            self.event_name()
        ));
        for (name, spec) in &self.connections {
            let davinci = spec["davinciConnectionId"].as_str().unwrap_or_default();
            let mapped = self.options.connections.contains_key(davinci);
            let how =
                if mapped { "mapped by --map-connection" } else { "not mapped: --map-connection ID=NAME names it" };
            let secrets: Vec<&str> =
                spec["config"].as_object().into_iter().flatten().filter_map(|(_, v)| v["secret"].as_str()).collect();
            let secrets =
                if secrets.is_empty() { String::new() } else { format!("; set the secrets {}", secrets.join(", ")) };
            report.notes.push(format!("DaVinci connection {davinci:?} is the connection `{name}` ({how}){secrets}"));
        }
        if flow.deployed_graph_differs {
            report.notes.push(
                "the export also holds a deployed graph (enabledGraphData) that differs: the edited graph (graphData) \
                 was imported"
                    .into(),
            );
        }
        report.notes.append(&mut self.notes);
    }

    /// The event trigger, with the flow's input parameters as its schema.
    fn trigger(&self) -> Value {
        let mut properties = Map::new();
        let mut required = Vec::new();
        for parameter in &self.flow.input_schema {
            let Some(name) = parameter.get("propertyName").and_then(Value::as_str) else { continue };
            let kind = parameter.get("preferredDataType").and_then(Value::as_str).unwrap_or("");
            let schema = match kind {
                "string" | "number" | "integer" | "boolean" | "object" | "array" => json!({"type": kind}),
                _ => json!({}),
            };
            properties.insert(name.into(), schema);
            if parameter.get("required").and_then(Value::as_bool) == Some(true) {
                required.push(Value::String(name.into()));
            }
        }
        if properties.is_empty() {
            return json!({"type": "event", "event": self.event_name()});
        }
        json!({"type": "event", "event": self.event_name(),
               "schema": {"type": "object", "properties": properties, "required": required}})
    }

    /// The flow's variables with the values the export carries; a variable read without a value is `null`.
    fn vars(&self, report: &mut FlowReport) -> Map<String, Value> {
        let mut vars = Map::new();
        for variable in &self.flow.variables {
            if let Some(value) = &variable.value {
                vars.insert(variable.name.clone(), value.clone());
            }
        }
        for name in &self.variables {
            if vars.contains_key(name) {
                continue;
            }
            let declared = self.flow.variables.iter().find(|v| v.name == *name);
            let why = match declared {
                Some(v) => format!(
                    "the {} variable `{name}` has no value in the export (exported without \"Include Variable Values\")",
                    v.context
                ),
                None => format!("the variable `{name}` is read but not in the export"),
            };
            report.notes.push(format!("{why}: vars.{name} is null until you set it"));
            vars.insert(name.clone(), Value::Null);
        }
        vars
    }
}

/// An annotation's text (plain or rich), if it has any.
fn annotation_text(node: &DvNode) -> Option<String> {
    let value = node.properties.get("annotation").or_else(|| node.properties.get("text"))?;
    let text = value.as_str()?;
    let text = plain_text(text).unwrap_or_else(|| text.to_string());
    let text = text.trim();
    (!text.is_empty()).then(|| text.to_string())
}

enum ConnectionKind {
    Mparticle,
    Http { origin: String },
}

/// A translated connector call.
struct Call {
    connection: ConnectionKind,
    capability: String,
    input: Value,
}

fn translate_call(node: &DvNode, options: &Options, scope: &mut Scope) -> Result<Call, String> {
    if node.node_type != "CONNECTION" {
        return Err(format!("a node of type {:?}, which flowhost has no counterpart for", node.node_type));
    }
    let connector = node.connector_id.as_deref().ok_or("a connection node without a connectorId")?;
    let capability = node.capability_name.as_deref().ok_or("a connection node without a capabilityName")?;
    match connector {
        MPARTICLE_CONNECTOR => mparticle_call(node, capability, options, scope),
        HTTP_CONNECTOR if HTTP_REQUEST_CAPABILITIES.contains(&capability) => http_call(node, scope),
        HTTP_CONNECTOR => Err(format!(
            "the HTTP connector's capability {capability:?} answers DaVinci's caller or shows a page (a UI-only \
             capability); a flowhost flow has no such caller"
        )),
        "flowConductorConnector" | "nodeConnector" => {
            Err(format!("a subflow ({connector}/{capability}): flowhost flows do not call other flows"))
        }
        other => Err(format!("the connector {other:?} has no flowhost counterpart")),
    }
}

fn mparticle_call(node: &DvNode, capability: &str, options: &Options, scope: &mut Scope) -> Result<Call, String> {
    let id = options
        .capabilities
        .get(capability)
        .map(String::as_str)
        .or_else(|| MPARTICLE_CAPABILITY_NAMES.iter().find(|(name, _)| *name == capability).map(|(_, id)| *id))
        .ok_or_else(|| {
            format!(
                "the mParticle capability name {capability:?} is not in the importer's table (map it with \
                 --map-capability {capability}=<one of {}>)",
                MPARTICLE_CAPABILITIES.join(", ")
            )
        })?;
    let declared = mparticle_properties(id);
    let mut properties = Map::new();
    for (name, value) in &node.properties {
        if value.is_null() || value.as_str().is_some_and(|s| s.trim().is_empty()) {
            continue; // an empty DaVinci field is an unset one
        }
        let Some((_, to, _, text_field)) = declared.iter().find(|(from, ..)| from == name) else {
            let names: Vec<&str> = declared.iter().map(|(from, ..)| *from).collect();
            return Err(format!(
                "its property {name:?} has no counterpart in mparticle.{id} (which takes {})",
                names.join(", ")
            ));
        };
        let translated = match value.as_str() {
            // The event batch text area: JSON text, kept as text where references are substituted into it.
            Some(text) if *to == "eventBatch" => match plain_text(text).map(|t| serde_json::from_str::<Value>(&t)) {
                Some(Ok(batch)) if !has_reference(text) => batch,
                _ => Value::String(translate_text(text, false, scope)?),
            },
            _ => translate_value(value, *text_field, scope)?,
        };
        properties.insert((*to).into(), translated);
    }
    for (from, to, required, _) in declared {
        if *required && !properties.contains_key(*to) {
            return Err(format!("mparticle.{id} needs the property {from:?}, which the node does not set"));
        }
    }
    Ok(Call {
        connection: ConnectionKind::Mparticle,
        capability: id.to_string(),
        input: json!({"properties": properties}),
    })
}

/// DaVinci's REST call: `url` (its origin becomes the connection's base URL), `method`, `headers` as a list of
/// `{key, value}`, and `body` (JSON text, or text).
fn http_call(node: &DvNode, scope: &mut Scope) -> Result<Call, String> {
    let mut input = Map::new();
    let mut origin = None;
    for (name, value) in &node.properties {
        if value.is_null() || value.as_str().is_some_and(|s| s.trim().is_empty()) {
            continue;
        }
        match name.as_str() {
            "url" => {
                let url = value.as_str().ok_or("its url is not text")?;
                let url = flatten(url)?;
                let after_scheme = url.find("://").map(|i| i + 3).ok_or("its url has no http:// or https:// origin")?;
                let path_start = url[after_scheme..].find('/').map(|i| i + after_scheme).unwrap_or(url.len());
                let host = &url[..path_start];
                if has_reference(host) || !(host.starts_with("http://") || host.starts_with("https://")) {
                    return Err(
                        "its url's origin is not a literal http(s) origin; a flowhost HTTP connection fixes the \
                                base URL"
                            .into(),
                    );
                }
                let rest = if path_start == url.len() { "/" } else { &url[path_start..] };
                if rest.contains('?') || rest.contains('#') {
                    return Err("its url carries a query or fragment; give query parameters separately".into());
                }
                origin = Some(host.to_string());
                input.insert("path".into(), translate_text(rest, false, scope)?.into());
            }
            "method" | "httpMethod" => {
                let method = value.as_str().ok_or("its method is not text")?.to_ascii_uppercase();
                input.insert("method".into(), method.into());
            }
            "headers" => {
                let mut headers = Map::new();
                for header in value.as_array().ok_or("its headers are not a list of {key, value}")? {
                    let key = header.get("key").or_else(|| header.get("name")).and_then(Value::as_str);
                    let text = header.get("value").and_then(Value::as_str);
                    let (Some(key), Some(text)) = (key, text) else {
                        return Err(format!("a header that is not {{key, value}}: {header}"));
                    };
                    headers.insert(key.into(), translate_text(text, true, scope)?.into());
                }
                input.insert("headers".into(), headers.into());
            }
            "body" | "rawBody" | "jsonBody" => {
                let text = value.as_str().ok_or("its body is not text")?;
                match plain_text(text).map(|t| serde_json::from_str::<Value>(&t)) {
                    Some(Ok(json)) if !has_reference(text) => input.insert("json".into(), json),
                    _ => input.insert("text".into(), translate_text(text, false, scope)?.into()),
                };
            }
            other => return Err(format!("its property {other:?} has no counterpart in the HTTP connector's request")),
        }
    }
    let origin = origin.ok_or("a REST call without a url")?;
    Ok(Call { connection: ConnectionKind::Http { origin }, capability: "request".into(), input: Value::Object(input) })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::davinci::export;

    fn mp(id: &str, capability: &str, properties: Value) -> Value {
        let properties: Map<String, Value> =
            properties.as_object().unwrap().iter().map(|(k, v)| (k.clone(), json!({"value": v}))).collect();
        json!({"data": {"id": id, "nodeType": "CONNECTION", "connectorId": "mparticleConnector",
                        "connectionId": "c1", "capabilityName": capability, "type": "action",
                        "properties": properties}})
    }

    fn eval(id: &str, branches: Value) -> Value {
        let properties: Map<String, Value> =
            branches.as_object().unwrap().iter().map(|(k, v)| (k.clone(), json!({"value": v}))).collect();
        json!({"data": {"id": id, "nodeType": "EVAL", "properties": properties}})
    }

    fn import(nodes: Value, edges: &[(&str, &str)], variables: Value, partial: bool) -> Imported {
        let edges: Vec<Value> = edges.iter().map(|(s, t)| json!({"data": {"source": s, "target": t}})).collect();
        let text = json!({"flowId": "f1", "name": "Test flow", "variables": variables,
                          "graphData": {"elements": {"nodes": nodes, "edges": edges}}})
        .to_string();
        let export = export::parse(&text).unwrap();
        let options = Options { partial, ..Options::default() };
        translate(&export, &options).pop().unwrap()
    }

    fn why(imported: &Imported, id: &str) -> String {
        match &imported.report.nodes.iter().find(|n| n.id == id).unwrap().outcome {
            Outcome::Refused { why, .. } => why.clone(),
            other => panic!("{id}: {other:?}"),
        }
    }

    fn get(id: &str) -> Value {
        mp(id, "getAccount", json!({"accountId": "1"}))
    }

    #[test]
    fn parallel_branches_are_refused_with_the_reason() {
        let fan_out = import(json!([get("a"), get("b"), get("c")]), &[("a", "b"), ("a", "c")], json!([]), false);
        assert!(fan_out.flow.is_none());
        assert!(why(&fan_out, "a").contains("leads to 2 nodes at once (b, c)"), "{}", why(&fan_out, "a"));

        let nodes = json!([get("a"), get("b"), eval("e", json!({"c": "allTriggersTrue"})), get("c")]);
        let join = import(nodes, &[("a", "b"), ("b", "e"), ("a", "e"), ("e", "c")], json!([]), false);
        assert!(why(&join, "a").contains("leads to 2 nodes at once"));
        assert!(why(&join, "e").contains("it joins 2 nodes (b, a)"), "{}", why(&join, "e"));

        let nodes =
            json!([get("a"), eval("e", json!({"b": "allTriggersTrue", "c": "anyTriggersTrue"})), get("b"), get("c")]);
        let both = import(nodes, &[("a", "e"), ("e", "b"), ("e", "c")], json!([]), false);
        assert!(why(&both, "e").contains("\"b\" and \"c\" are taken on the same outcome"), "{}", why(&both, "e"));

        let nodes = json!([get("a"), eval("e", json!({})), get("b")]);
        let missing = import(nodes, &[("a", "e"), ("e", "b")], json!([]), false);
        assert!(why(&missing, "e").contains("no condition for its edge to \"b\""), "{}", why(&missing, "e"));
    }

    #[test]
    fn a_refused_eval_becomes_a_fail_node_after_the_node_before_it_with_partial() {
        let nodes = json!([get("a"), eval("e", json!({"b": "sometimes"})), get("b")]);
        let imported = import(nodes, &[("a", "e"), ("e", "b")], json!([]), true);
        let flow = imported.flow.expect("written with --partial");
        let ids: Vec<&str> = flow.nodes.iter().map(|n| n.id.as_str()).collect();
        assert_eq!(ids, ["a", "e"]);
        assert_eq!(flow.nodes[0].next.as_deref(), Some("e"));
        assert!(flow.nodes[1].fail.as_ref().unwrap().message.contains("\"sometimes\""));
    }

    #[test]
    fn properties_variables_and_connections() {
        let unknown =
            import(json!([mp("a", "getAccount", json!({"accountId": "1", "colour": "red"}))]), &[], json!([]), false);
        assert!(why(&unknown, "a").contains("its property \"colour\" has no counterpart in mparticle.getAccount"));
        let missing = import(json!([mp("a", "updateAccount", json!({"accountId": "1"}))]), &[], json!([]), false);
        assert!(why(&missing, "a").contains("needs the property \"updatedName\""), "{}", why(&missing, "a"));

        let variables = json!([{"context": "flow", "name": "acct##SK##flow##SK##f1", "fields": {"type": "string"}}]);
        let node = mp("a", "getAccount", json!({"accountId": "{{global.flow.variables.acct}}"}));
        let imported = import(json!([node]), &[], variables, false);
        let flow = imported.flow.unwrap();
        assert_eq!(flow.vars.get("acct"), Some(&Value::Null));
        assert!(imported.report.notes.iter().any(|n| n.contains("`acct` has no value in the export")));
        let input = &flow.nodes[0].connector.as_ref().unwrap().input;
        assert_eq!(input["properties"]["accountId"], "{{ string(vars.acct) }}");
        assert_eq!(flow.connections["mparticle"].config["clientId"], json!({"secret": "MPARTICLE_CLIENT_ID"}));
    }

    #[test]
    fn ids_are_slugs_and_cel_identifiers() {
        assert_eq!(slug("Create & read an Account!").as_deref(), Some("create-read-an-account"));
        assert_eq!(slug("2024 sync").as_deref(), Some("flow-2024-sync"));
        assert_eq!(slug("!!"), None);
        assert_eq!(node_id("7ctsv0hfwa"), "n_7ctsv0hfwa");
        assert_eq!(node_id("a-b"), "a_b");
    }
}
