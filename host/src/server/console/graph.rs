//! A flow drawn as SVG: its trigger, then its nodes in layers top to bottom along `next`, `then`/`else` and
//! error edges; a forEach node holds its body, laid out the same way inside it. On a run's page the nodes
//! that ran are marked, failed ones in red, and the edges the run took.

use crate::flow::Flow;
use crate::flow::model::{Node, Trigger};
use maud::{Markup, html};
use std::collections::{HashMap, HashSet};

/// What a run did at a node.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Mark {
    Ran,
    Failed,
}

/// A run's marks on its flow's graph.
#[derive(Debug, Default)]
pub(super) struct Highlight {
    pub marks: HashMap<String, Mark>,
    /// Edges the run went along, `(from, to)`; the trigger is [`TRIGGER`].
    pub taken: HashSet<(String, String)>,
}

/// The trigger's id in the graph: not a node id (those are CEL identifiers).
pub(super) const TRIGGER: &str = "@trigger";

const NODE_W: f64 = 224.0;
const NODE_H: f64 = 60.0;
const H_GAP: f64 = 36.0;
const V_GAP: f64 = 46.0;
const GROUP_HEAD: f64 = 58.0;
const GROUP_PAD: f64 = 14.0;
const MARGIN: f64 = 16.0;
/// Room on the right for edges that go back up or sideways.
const SIDE: f64 = 48.0;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum EdgeKind {
    Next,
    Then,
    Else,
    Error,
}

struct Edge {
    from: String,
    to: String,
    kind: EdgeKind,
}

struct Placed {
    id: String,
    class: &'static str,
    kind: &'static str,
    name: String,
    detail: String,
    x: f64,
    y: f64,
    w: f64,
    h: f64,
    inner: Option<Layout>,
}

struct Layout {
    boxes: Vec<Placed>,
    edges: Vec<Edge>,
    w: f64,
    h: f64,
}

/// The flow's graph as an inline SVG; `highlight` marks a run's path (the other nodes are dimmed).
pub(super) fn flow_graph(flow: &Flow, highlight: Option<&Highlight>) -> Markup {
    let trigger = Placed {
        id: TRIGGER.to_string(),
        class: "trigger",
        kind: "TRIGGER",
        name: trigger_name(&flow.trigger),
        detail: trigger_detail(&flow.trigger),
        x: 0.0,
        y: 0.0,
        w: NODE_W,
        h: NODE_H,
        inner: None,
    };
    let start = flow.start.clone().or_else(|| flow.nodes.first().map(|n| n.id.clone()));
    let layout = lay_out(&flow.nodes, Some(trigger), start.as_deref(), flow.on_error.as_deref());
    let (w, h) = (layout.w + 2.0 * MARGIN + SIDE, layout.h + 2.0 * MARGIN);
    html! {
        svg xmlns="http://www.w3.org/2000/svg" width=(w) height=(h) viewBox={ "0 0 " (w) " " (h) }
            role="img" aria-label={ "Graph of flow " (flow.id) } {
            defs {
                @for (id, color) in [("arrow", "#98a2b3"), ("arrow-error", "#c62828"), ("arrow-taken", "#1f8a4c")] {
                    marker id=(id) viewBox="0 0 10 10" refX="9" refY="5" markerWidth="7" markerHeight="7"
                        orient="auto-start-reverse" {
                        path d="M 0 0 L 10 5 L 0 10 z" fill=(color) {}
                    }
                }
            }
            g transform={ "translate(" (MARGIN) "," (MARGIN) ")" } { (draw(&layout, 0.0, 0.0, highlight)) }
        }
    }
}

fn trigger_name(trigger: &Trigger) -> String {
    match trigger {
        Trigger::Event { event, .. } => format!("event {event}"),
        Trigger::Inbound { connection, .. } => format!("inbound {connection}"),
    }
}

fn trigger_detail(trigger: &Trigger) -> String {
    match trigger {
        Trigger::Event { schema, .. } => {
            if schema.is_some() {
                "payload checked by its schema".into()
            } else {
                "any payload".into()
            }
        }
        Trigger::Inbound { event_type, event_name, .. } => match (event_type, event_name) {
            (Some(t), Some(n)) => format!("{t} {n}"),
            (Some(t), None) => t.clone(),
            (None, Some(n)) => n.clone(),
            (None, None) => "every event".into(),
        },
    }
}

/// Kind label, detail line and class of a node.
fn describe(node: &Node) -> (&'static str, String) {
    if let Some(call) = &node.connector {
        ("CONNECTOR", format!("{}.{}", call.connection, call.capability))
    } else if let Some(condition) = &node.condition {
        ("CONDITION", format!("if {}", condition.expression))
    } else if let Some(each) = &node.for_each {
        ("FOR EACH", format!("item in {}", each.items))
    } else if let Some(emit) = &node.emit {
        ("EMIT", format!("event {}", emit.event))
    } else if let Some(fail) = &node.fail {
        ("FAIL", fail.message.clone())
    } else {
        ("NODE", String::new())
    }
}

fn edges_of(nodes: &[Node]) -> Vec<Edge> {
    let mut edges = Vec::new();
    let mut add = |from: &str, to: &Option<String>, kind| {
        if let Some(to) = to {
            edges.push(Edge { from: from.to_string(), to: to.clone(), kind });
        }
    };
    for node in nodes {
        match &node.condition {
            Some(condition) => {
                let then = condition.then.clone().or_else(|| node.next.clone());
                let otherwise = condition.otherwise.clone().or_else(|| node.next.clone());
                add(&node.id, &then, EdgeKind::Then);
                add(&node.id, &otherwise, EdgeKind::Else);
            }
            None => add(&node.id, &node.next, EdgeKind::Next),
        }
        add(&node.id, &node.on_error, EdgeKind::Error);
    }
    edges
}

/// Lays out `nodes` (and the trigger above them, at the top level) in layers.
fn lay_out(nodes: &[Node], trigger: Option<Placed>, start: Option<&str>, handler: Option<&str>) -> Layout {
    let mut edges = edges_of(nodes);
    let ids: Vec<&str> = nodes.iter().map(|n| n.id.as_str()).collect();
    let known: HashSet<&str> = ids.iter().copied().collect();
    edges.retain(|e| known.contains(e.to.as_str()));
    let mut layer: HashMap<String, usize> = HashMap::new();
    let first = usize::from(trigger.is_some());
    if let Some(trigger) = &trigger {
        layer.insert(trigger.id.clone(), 0);
        if let Some(start) = start.filter(|s| known.contains(s)) {
            edges.push(Edge { from: trigger.id.clone(), to: start.to_string(), kind: EdgeKind::Next });
        }
    }
    if let Some(start) = start.filter(|s| known.contains(s)) {
        layer.insert(start.to_string(), first);
    }
    // Longest path along the normal edges, then error edges for what only they reach; bounded, so a cycle (which
    // the linter refuses anyway) cannot loop.
    let bound = ids.len() + 2;
    for with_errors in [false, true] {
        for _ in 0..bound {
            let mut changed = false;
            for edge in &edges {
                let Some(&from) = layer.get(&edge.from) else { continue };
                let wanted = (from + 1).min(bound);
                let place = match (edge.kind, layer.get(&edge.to)) {
                    // An error edge only places a node that nothing else reaches.
                    (EdgeKind::Error, None) => with_errors,
                    (EdgeKind::Error, Some(_)) => false,
                    (_, at) => at.is_none_or(|&at| at < wanted),
                };
                if place {
                    layer.insert(edge.to.clone(), wanted);
                    changed = true;
                }
            }
            if !changed {
                break;
            }
        }
    }
    let mut next_free = layer.values().max().map_or(first, |m| m + 1);
    for id in &ids {
        if !layer.contains_key(*id) {
            layer.insert(id.to_string(), next_free);
            next_free += 1;
        }
    }
    let mut boxes: Vec<Placed> = trigger.into_iter().collect();
    for node in nodes {
        let (kind, detail) = describe(node);
        let inner = node.for_each.as_ref().map(|each| {
            let start = each.body.first().map(|n| n.id.as_str());
            lay_out(&each.body, None, start, None)
        });
        let (w, h) = match &inner {
            Some(inner) => ((inner.w + 2.0 * GROUP_PAD).max(NODE_W), GROUP_HEAD + inner.h + GROUP_PAD),
            None => (NODE_W, NODE_H),
        };
        let class = if inner.is_some() {
            "group"
        } else if handler == Some(node.id.as_str()) {
            "handler"
        } else {
            "plain"
        };
        boxes.push(Placed {
            id: node.id.clone(),
            class,
            kind,
            name: node.id.clone(),
            detail,
            x: 0.0,
            y: 0.0,
            w,
            h,
            inner,
        });
    }
    let layers = layer.values().max().map_or(0, |m| m + 1);
    let mut rows: Vec<Vec<usize>> = vec![Vec::new(); layers];
    for (index, placed) in boxes.iter().enumerate() {
        rows[layer[&placed.id]].push(index);
    }
    rows.retain(|row| !row.is_empty());
    let widths: Vec<f64> = rows
        .iter()
        .map(|row| row.iter().map(|&i| boxes[i].w).sum::<f64>() + H_GAP * (row.len().saturating_sub(1)) as f64)
        .collect();
    let width = widths.iter().copied().fold(0.0, f64::max);
    let mut y = 0.0;
    for (row, row_w) in rows.iter().zip(&widths) {
        let mut x = (width - row_w) / 2.0;
        let height = row.iter().map(|&i| boxes[i].h).fold(0.0, f64::max);
        for &i in row {
            boxes[i].x = x;
            boxes[i].y = y;
            x += boxes[i].w + H_GAP;
        }
        y += height + V_GAP;
    }
    Layout { boxes, edges, w: width, h: (y - V_GAP).max(0.0) }
}

fn draw(layout: &Layout, dx: f64, dy: f64, highlight: Option<&Highlight>) -> Markup {
    let at: HashMap<&str, &Placed> = layout.boxes.iter().map(|b| (b.id.as_str(), b)).collect();
    html! {
        @for edge in &layout.edges {
            @if let (Some(from), Some(to)) = (at.get(edge.from.as_str()), at.get(edge.to.as_str())) {
                (draw_edge(edge, from, to, dx, dy, highlight))
            }
        }
        @for placed in &layout.boxes { (draw_box(placed, dx, dy, highlight)) }
    }
}

fn draw_edge(edge: &Edge, from: &Placed, to: &Placed, dx: f64, dy: f64, highlight: Option<&Highlight>) -> Markup {
    let taken = highlight.is_some_and(|h| h.taken.contains(&(edge.from.clone(), edge.to.clone())));
    let (path, label_at) = if to.y > from.y {
        let (x1, y1) = (dx + from.x + from.w / 2.0, dy + from.y + from.h);
        let (x2, y2) = (dx + to.x + to.w / 2.0, dy + to.y - 2.0);
        let bend = (y2 - y1) / 2.0;
        (
            format!("M {x1} {y1} C {x1} {} {x2} {} {x2} {y2}", y1 + bend, y2 - bend),
            (x1 + (x2 - x1) * 0.25 + 6.0, y1 + (y2 - y1) * 0.3),
        )
    } else {
        // Back up or sideways: around the right side.
        let (x1, y1) = (dx + from.x + from.w, dy + from.y + from.h / 2.0);
        let (x2, y2) = (dx + to.x + to.w + 2.0, dy + to.y + to.h / 2.0);
        let out = x1.max(x2) + SIDE * 0.8;
        (format!("M {x1} {y1} C {out} {y1} {out} {y2} {x2} {y2}"), (out - 10.0, (y1 + y2) / 2.0))
    };
    let (class, marker) = match (edge.kind, taken) {
        (_, true) => ("edge taken", "url(#arrow-taken)"),
        (EdgeKind::Error, false) => ("edge error", "url(#arrow-error)"),
        _ => ("edge", "url(#arrow)"),
    };
    let label = match edge.kind {
        EdgeKind::Next => None,
        EdgeKind::Then => Some("then"),
        EdgeKind::Else => Some("else"),
        EdgeKind::Error => Some("on error"),
    };
    html! {
        path class=(class) d=(path) marker-end=(marker) data-from=(edge.from) data-to=(edge.to) {}
        @if let Some(label) = label {
            text class={ "edge-label" @if edge.kind == EdgeKind::Error { " error" } } x=(label_at.0) y=(label_at.1) {
                (label)
            }
        }
    }
}

fn draw_box(placed: &Placed, dx: f64, dy: f64, highlight: Option<&Highlight>) -> Markup {
    let (x, y) = (dx + placed.x, dy + placed.y);
    let state = highlight.map(|h| match h.marks.get(&placed.id) {
        Some(Mark::Failed) => "failed",
        Some(Mark::Ran) => "ran",
        None if placed.id == TRIGGER => "ran",
        None => "idle",
    });
    let chars = ((placed.w - 20.0) / 7.2) as usize;
    html! {
        g class={ "node " (placed.class) @if let Some(state) = state { " " (state) } }
            data-node=[(placed.id != TRIGGER).then_some(placed.id.as_str())]
            data-trigger=[(placed.id == TRIGGER).then_some("true")] {
            title { (placed.kind) " " (placed.name) "\n" (placed.detail) }
            rect x=(x) y=(y) width=(placed.w) height=(placed.h) rx="8" {}
            text class="kind" x=(x + 10.0) y=(y + 16.0) { (placed.kind) }
            text class="name" x=(x + 10.0) y=(y + 34.0) { (super::cut(&placed.name, chars.min(30))) }
            text class="detail" x=(x + 10.0) y=(y + 50.0) { (super::cut(&placed.detail, chars)) }
            @if let Some(inner) = &placed.inner {
                (draw(inner, x + (placed.w - inner.w) / 2.0, y + GROUP_HEAD, highlight))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn flow(json: serde_json::Value) -> Flow {
        serde_json::from_value(json).unwrap()
    }

    #[test]
    fn every_node_and_edge_is_drawn_with_for_each_bodies_inside_their_node() {
        let flow = flow(serde_json::json!({
            "id": "f", "version": "1", "trigger": {"type": "event", "event": "point_add"},
            "onError": "alert",
            "nodes": [
                {"id": "check", "condition": {"if": "trigger.points > 10", "then": "each", "else": "done"}},
                {"id": "each", "forEach": {"items": "trigger.items", "do": [
                    {"id": "send", "connector": {"connection": "crm", "capability": "send"}, "next": "note"},
                    {"id": "note", "emit": {"event": "sent"}}
                ]}, "next": "done", "onError": "alert"},
                {"id": "done", "emit": {"event": "finished"}},
                {"id": "alert", "fail": {"message": "it broke"}}
            ]
        }));
        let svg = flow_graph(&flow, None).into_string();
        for id in ["check", "each", "send", "note", "done", "alert"] {
            assert!(svg.contains(&format!("data-node=\"{id}\"")), "{id}: {svg}");
        }
        assert!(svg.contains("data-trigger=\"true\""));
        for (from, to) in
            [(TRIGGER, "check"), ("check", "each"), ("check", "done"), ("each", "alert"), ("send", "note")]
        {
            assert!(svg.contains(&format!("data-from=\"{from}\" data-to=\"{to}\"")), "{from} -> {to}: {svg}");
        }
        assert!(svg.contains(">then<") && svg.contains(">else<") && svg.contains(">on error<"));
        assert!(svg.contains("class=\"node handler\""), "the flow's failure handler is marked");
    }

    #[test]
    fn a_runs_nodes_are_marked_and_the_others_dimmed() {
        let flow = flow(serde_json::json!({
            "id": "f", "version": "1", "trigger": {"type": "event", "event": "e"},
            "nodes": [{"id": "a", "emit": {"event": "x"}, "next": "b"}, {"id": "b", "emit": {"event": "y"}},
                      {"id": "c", "emit": {"event": "z"}}]
        }));
        let mut highlight = Highlight::default();
        highlight.marks.insert("a".into(), Mark::Ran);
        highlight.marks.insert("b".into(), Mark::Failed);
        highlight.taken.insert(("a".into(), "b".into()));
        let svg = flow_graph(&flow, Some(&highlight)).into_string();
        assert!(svg.contains("class=\"node plain ran\" data-node=\"a\""), "{svg}");
        assert!(svg.contains("class=\"node plain failed\" data-node=\"b\""), "{svg}");
        assert!(svg.contains("class=\"node plain idle\" data-node=\"c\""), "{svg}");
        assert!(svg.contains("class=\"edge taken\""), "{svg}");
    }
}
