//! The DaVinci export as the importer reads it: one flow (`{"flowId", "name", "graphData", ...}`) or several
//! (`{"flows": [...]}`), each graph a Cytoscape.js document. Reading checks the structure (ids, edges, no
//! cycle) and names what is wrong by JSON pointer into the export; what a node means is translate.rs's business.

use serde_json::{Map, Value};
use std::collections::{HashMap, HashSet};
use std::fmt;

/// Why a file cannot be imported at all: the JSON pointer into the export and what is wrong there.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExportError {
    pub pointer: String,
    pub message: String,
}

impl fmt::Display for ExportError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let pointer = if self.pointer.is_empty() { "(root)" } else { &self.pointer };
        write!(f, "{pointer}: {}", self.message)
    }
}

impl std::error::Error for ExportError {}

fn error(pointer: impl Into<String>, message: impl Into<String>) -> ExportError {
    ExportError { pointer: pointer.into(), message: message.into() }
}

/// The flows of an export, in file order.
#[derive(Debug, Clone)]
pub struct Export {
    pub flows: Vec<DvFlow>,
}

/// One DaVinci flow.
#[derive(Debug, Clone)]
pub struct DvFlow {
    /// Where the flow is in the export (`""` for a single-flow export, `/flows/<i>` otherwise).
    pub pointer: String,
    pub flow_id: String,
    pub name: String,
    pub description: String,
    pub current_version: Option<u64>,
    /// `trigger.type`, e.g. `AUTHENTICATION`.
    pub trigger_type: Option<String>,
    /// `inputSchema`: the flow's input parameters (`propertyName`, `preferredDataType`, `required`).
    pub input_schema: Vec<Value>,
    pub variables: Vec<Variable>,
    /// Whether the export also carries a deployed graph (`enabledGraphData`) that differs from `graphData`.
    pub deployed_graph_differs: bool,
    pub nodes: Vec<DvNode>,
    pub edges: Vec<DvEdge>,
}

/// A DaVinci variable (`{"context": "flow", "name": "<name>##SK##flow##SK##<flowId>", "fields": {...}}`).
#[derive(Debug, Clone)]
pub struct Variable {
    /// The name expressions use (before the first `##SK##`).
    pub name: String,
    pub context: String,
    /// `fields.value`, present only in exports made with "Include Variable Values".
    pub value: Option<Value>,
}

/// One node of the graph (`elements.nodes[i]`).
#[derive(Debug, Clone)]
pub struct DvNode {
    pub pointer: String,
    pub id: String,
    /// `CONNECTION`, `EVAL` or `ANNOTATION` (anything else is kept, and refused by the translation).
    pub node_type: String,
    pub connector_id: Option<String>,
    pub connection_id: Option<String>,
    pub capability_name: Option<String>,
    pub name: Option<String>,
    pub label: Option<String>,
    /// `trigger` or `action`.
    pub kind: Option<String>,
    /// `properties.<key>.value`, for the properties that have a value.
    pub properties: Map<String, Value>,
    pub position: Option<(f64, f64)>,
}

/// One edge (`elements.edges[i]`).
#[derive(Debug, Clone)]
pub struct DvEdge {
    pub pointer: String,
    pub source: String,
    pub target: String,
}

/// Reads an export, or says where it is not one.
pub fn parse(text: &str) -> Result<Export, ExportError> {
    let root: Value = serde_json::from_str(text).map_err(|e| error("", format!("not JSON: {e}")))?;
    let Value::Object(object) = &root else {
        return Err(error(
            "",
            "not a DaVinci flow export: expected a JSON object with `graphData` (one flow) or `flows`",
        ));
    };
    let flows = match (object.get("flows"), object.get("graphData")) {
        (Some(Value::Array(flows)), _) => {
            if flows.is_empty() {
                return Err(error("/flows", "the export has no flows"));
            }
            flows
                .iter()
                .enumerate()
                .map(|(i, flow)| read_flow(&format!("/flows/{i}"), flow))
                .collect::<Result<_, _>>()?
        }
        (Some(_), _) => return Err(error("/flows", "`flows` must be an array of DaVinci flows")),
        (None, Some(_)) => vec![read_flow("", &root)?],
        (None, None) => {
            return Err(error(
                "",
                "not a DaVinci flow export: it has neither `graphData` (a single-flow export) nor `flows` (an export of \
                 several flows)",
            ));
        }
    };
    let mut seen: HashMap<&str, &str> = HashMap::new();
    for flow in &flows {
        if let Some(first) = seen.insert(&flow.flow_id, &flow.pointer) {
            return Err(error(
                format!("{}/flowId", flow.pointer),
                format!("flow id {:?} appears twice (also at {first}/flowId)", flow.flow_id),
            ));
        }
    }
    Ok(Export { flows })
}

fn string_at(object: &Map<String, Value>, key: &str, pointer: &str) -> Result<Option<String>, ExportError> {
    match object.get(key) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) => Ok(Some(s.clone())),
        Some(_) => Err(error(format!("{pointer}/{key}"), format!("`{key}` must be a string"))),
    }
}

fn read_flow(pointer: &str, flow: &Value) -> Result<DvFlow, ExportError> {
    let Value::Object(object) = flow else { return Err(error(pointer, "a DaVinci flow must be a JSON object")) };
    let flow_id = string_at(object, "flowId", pointer)?
        .filter(|s| !s.trim().is_empty())
        .ok_or_else(|| error(format!("{pointer}/flowId"), "a DaVinci flow needs its `flowId` (a string)"))?;
    let name = string_at(object, "name", pointer)?.unwrap_or_else(|| flow_id.clone());
    let description = string_at(object, "description", pointer)?.unwrap_or_default();
    let current_version = object.get("currentVersion").and_then(Value::as_u64);
    let trigger_type = match object.get("trigger") {
        Some(Value::Object(trigger)) => string_at(trigger, "type", &format!("{pointer}/trigger"))?,
        _ => None,
    };
    let input_schema = match object.get("inputSchema") {
        None | Some(Value::Null) => Vec::new(),
        Some(Value::Array(items)) => items.clone(),
        Some(_) => return Err(error(format!("{pointer}/inputSchema"), "`inputSchema` must be an array")),
    };
    let variables = read_variables(pointer, object.get("variables"))?;
    let graph_pointer = format!("{pointer}/graphData");
    let graph = object.get("graphData").ok_or_else(|| error(&graph_pointer, "a DaVinci flow needs its `graphData`"))?;
    let (nodes, edges) = read_graph(&graph_pointer, graph)?;
    let deployed_graph_differs = object
        .get("enabledGraphData")
        .is_some_and(|deployed| deployed.get("elements") != graph.get("elements") && !deployed.is_null());
    Ok(DvFlow {
        pointer: pointer.to_string(),
        flow_id,
        name,
        description,
        current_version,
        trigger_type,
        input_schema,
        variables,
        deployed_graph_differs,
        nodes,
        edges,
    })
}

fn read_variables(pointer: &str, variables: Option<&Value>) -> Result<Vec<Variable>, ExportError> {
    let items = match variables {
        None | Some(Value::Null) => return Ok(Vec::new()),
        Some(Value::Array(items)) => items,
        Some(_) => return Err(error(format!("{pointer}/variables"), "`variables` must be an array")),
    };
    let mut out = Vec::new();
    for (i, item) in items.iter().enumerate() {
        let at = format!("{pointer}/variables/{i}");
        let Value::Object(variable) = item else { return Err(error(at, "a variable must be an object")) };
        let full =
            string_at(variable, "name", &at)?.ok_or_else(|| error(format!("{at}/name"), "a variable needs a name"))?;
        let name = full.split("##SK##").next().unwrap_or_default().to_string();
        if name.is_empty() {
            return Err(error(format!("{at}/name"), "the variable's name is empty"));
        }
        let context = string_at(variable, "context", &at)?.unwrap_or_else(|| "flow".into());
        let value = variable.get("fields").and_then(|f| f.get("value")).cloned();
        out.push(Variable { name, context, value });
    }
    Ok(out)
}

fn read_graph(pointer: &str, graph: &Value) -> Result<(Vec<DvNode>, Vec<DvEdge>), ExportError> {
    let elements = graph
        .get("elements")
        .and_then(Value::as_object)
        .ok_or_else(|| error(format!("{pointer}/elements"), "`graphData` needs `elements` with `nodes` and `edges`"))?;
    let elements_pointer = format!("{pointer}/elements");
    let nodes = match elements.get("nodes") {
        Some(Value::Array(nodes)) => nodes,
        _ => return Err(error(format!("{elements_pointer}/nodes"), "`elements.nodes` must be an array")),
    };
    let edges: &[Value] = match elements.get("edges") {
        None | Some(Value::Null) => &[],
        Some(Value::Array(edges)) => edges,
        Some(_) => return Err(error(format!("{elements_pointer}/edges"), "`elements.edges` must be an array")),
    };
    let mut read_nodes = Vec::new();
    let mut ids: HashMap<String, String> = HashMap::new();
    for (i, node) in nodes.iter().enumerate() {
        let at = format!("{elements_pointer}/nodes/{i}");
        let node = read_node(&at, node)?;
        if let Some(first) = ids.insert(node.id.clone(), at.clone()) {
            return Err(error(
                format!("{at}/data/id"),
                format!("duplicate node id {:?} (also at {first}/data/id)", node.id),
            ));
        }
        read_nodes.push(node);
    }
    let mut read_edges = Vec::new();
    for (i, edge) in edges.iter().enumerate() {
        let at = format!("{elements_pointer}/edges/{i}");
        let data = edge
            .get("data")
            .and_then(Value::as_object)
            .ok_or_else(|| error(format!("{at}/data"), "an edge needs `data` with `source` and `target`"))?;
        let end = |key: &str| -> Result<String, ExportError> {
            let id = string_at(data, key, &format!("{at}/data"))?
                .ok_or_else(|| error(format!("{at}/data/{key}"), format!("an edge needs its `{key}` node id")))?;
            if !ids.contains_key(&id) {
                return Err(error(
                    format!("{at}/data/{key}"),
                    format!("the edge's {key} {id:?} is not a node of this graph"),
                ));
            }
            Ok(id)
        };
        let (source, target) = (end("source")?, end("target")?);
        read_edges.push(DvEdge { pointer: at, source, target });
    }
    find_cycle(&read_nodes, &read_edges)?;
    Ok((read_nodes, read_edges))
}

fn read_node(at: &str, node: &Value) -> Result<DvNode, ExportError> {
    let data = node
        .get("data")
        .and_then(Value::as_object)
        .ok_or_else(|| error(format!("{at}/data"), "a node needs `data` with its `id` and `nodeType`"))?;
    let data_pointer = format!("{at}/data");
    let id = string_at(data, "id", &data_pointer)?
        .filter(|id| !id.is_empty())
        .ok_or_else(|| error(format!("{data_pointer}/id"), "a node needs its `id` (a non-empty string)"))?;
    let node_type = string_at(data, "nodeType", &data_pointer)?.ok_or_else(|| {
        error(format!("{data_pointer}/nodeType"), "a node needs its `nodeType` (CONNECTION, EVAL or ANNOTATION)")
    })?;
    let properties = match data.get("properties") {
        None | Some(Value::Null) => Map::new(),
        Some(Value::Object(properties)) => properties
            .iter()
            .filter_map(|(key, property)| property.get("value").map(|value| (key.clone(), value.clone())))
            .collect(),
        Some(_) => return Err(error(format!("{data_pointer}/properties"), "`properties` must be an object")),
    };
    let position = node.get("position").and_then(|p| Some((p.get("x")?.as_f64()?, p.get("y")?.as_f64()?)));
    Ok(DvNode {
        pointer: at.to_string(),
        connector_id: string_at(data, "connectorId", &data_pointer)?,
        connection_id: string_at(data, "connectionId", &data_pointer)?,
        capability_name: string_at(data, "capabilityName", &data_pointer)?,
        name: string_at(data, "name", &data_pointer)?,
        label: string_at(data, "label", &data_pointer)?,
        kind: string_at(data, "type", &data_pointer)?,
        id,
        node_type,
        properties,
        position,
    })
}

/// A cycle is bad input: DaVinci graphs are acyclic, and flowhost flows must be.
fn find_cycle(nodes: &[DvNode], edges: &[DvEdge]) -> Result<(), ExportError> {
    let mut out: HashMap<&str, Vec<&DvEdge>> = HashMap::new();
    for edge in edges {
        out.entry(edge.source.as_str()).or_default().push(edge);
    }
    // Iterative depth-first search; `stack` is the path from the root to the current node.
    let mut done: HashSet<&str> = HashSet::new();
    for root in nodes {
        if done.contains(root.id.as_str()) {
            continue;
        }
        let mut stack: Vec<(&str, usize)> = vec![(root.id.as_str(), 0)];
        while let Some((id, next)) = stack.last().copied() {
            let outgoing = out.get(id).map(Vec::as_slice).unwrap_or_default();
            if next == outgoing.len() {
                done.insert(id);
                stack.pop();
                continue;
            }
            stack.last_mut().expect("not empty").1 += 1;
            let edge = outgoing[next];
            let target = edge.target.as_str();
            if let Some(start) = stack.iter().position(|(on, _)| *on == target) {
                let mut ids: Vec<&str> = stack[start..].iter().map(|(id, _)| *id).collect();
                ids.push(target);
                return Err(error(
                    edge.pointer.clone(),
                    format!("the edges form a cycle: {}; a DaVinci flow graph must not loop", ids.join(" -> ")),
                ));
            }
            if !done.contains(target) {
                stack.push((target, 0));
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn flow(nodes: Value, edges: Value) -> String {
        json!({"flowId": "f1", "name": "F", "graphData": {"elements": {"nodes": nodes, "edges": edges}}}).to_string()
    }

    fn node(id: &str) -> Value {
        json!({"data": {"id": id, "nodeType": "CONNECTION"}, "position": {"x": 1, "y": 2}})
    }

    fn edge(source: &str, target: &str) -> Value {
        json!({"data": {"id": format!("{source}-{target}"), "source": source, "target": target}})
    }

    #[test]
    fn reads_a_single_and_a_multi_flow_export() {
        let one = parse(&flow(json!([node("a"), node("b")]), json!([edge("a", "b")]))).unwrap();
        assert_eq!(one.flows.len(), 1);
        assert_eq!(one.flows[0].nodes[0].position, Some((1.0, 2.0)));
        let text = json!({"companyId": "c", "flows": [serde_json::from_str::<Value>(&flow(json!([node("a")]), json!([]))).unwrap()]});
        let many = parse(&text.to_string()).unwrap();
        assert_eq!(many.flows[0].pointer, "/flows/0");
    }

    #[test]
    fn bad_input_is_named_by_pointer() {
        let e = parse(r#"{"hello": 1}"#).unwrap_err();
        assert!(e.pointer.is_empty() && e.message.contains("not a DaVinci flow export"), "{e}");
        let e = parse(&flow(json!([node("a")]), json!([edge("a", "x")]))).unwrap_err();
        assert_eq!(e.pointer, "/graphData/elements/edges/0/data/target");
        let e = parse(&flow(json!([node("a"), node("a")]), json!([]))).unwrap_err();
        assert_eq!(e.pointer, "/graphData/elements/nodes/1/data/id");
        assert!(e.message.contains("/graphData/elements/nodes/0/data/id"), "{e}");
        let e = parse(&flow(
            json!([node("a"), node("b"), node("c")]),
            json!([edge("a", "b"), edge("b", "c"), edge("c", "b")]),
        ))
        .unwrap_err();
        assert_eq!(e.pointer, "/graphData/elements/edges/2");
        assert!(e.message.contains("b -> c -> b"), "{e}");
    }
}
