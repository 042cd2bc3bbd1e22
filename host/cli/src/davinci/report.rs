//! The import report: for every flow, where it went (or why it did not), and for every DaVinci node what it
//! became, or why it was not imported.

use serde::Serialize;
use std::fmt::Write as _;

/// What became of one DaVinci node.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(tag = "outcome", rename_all = "camelCase")]
pub enum Outcome {
    /// Translated; `what` says as what (e.g. `connector node send (mparticle.createAccount)`).
    Imported { what: String },
    /// An annotation whose text became part of the flow's description.
    Description,
    /// Not carried over, on purpose (an empty annotation, the trigger node), with why.
    Dropped { why: String },
    /// No faithful translation. With `--partial`, `fail_node` is the `fail` node that stands in its place.
    Refused {
        why: String,
        #[serde(rename = "failNode", skip_serializing_if = "Option::is_none")]
        fail_node: Option<String>,
    },
}

/// One DaVinci node in the report.
#[derive(Debug, Clone, Serialize)]
pub struct NodeReport {
    /// The node's id in the export.
    pub id: String,
    /// The JSON pointer of the node in the export.
    pub pointer: String,
    /// `mparticleConnector/createAccount`, `EVAL`, `ANNOTATION`, ...
    pub kind: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub label: Option<String>,
    #[serde(flatten)]
    pub outcome: Outcome,
}

/// One DaVinci flow in the report.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct FlowReport {
    pub name: String,
    pub flow_id: String,
    /// The flowhost flow id.
    pub id: String,
    /// The file written, when it was.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub file: Option<String>,
    pub nodes: Vec<NodeReport>,
    /// What else a reader must know: connections to configure, variables without values, the trigger.
    pub notes: Vec<String>,
    /// Why the flow as a whole could not be imported (e.g. it has no node to run).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub problem: Option<String>,
}

impl FlowReport {
    /// Whether the flow was not carried over whole: nodes refused, or the flow itself.
    pub fn incomplete(&self) -> bool {
        self.problem.is_some() || self.refused() > 0
    }

    pub fn refused(&self) -> usize {
        self.nodes.iter().filter(|n| matches!(n.outcome, Outcome::Refused { .. })).count()
    }

    /// The report as text, one line per node.
    pub fn to_text(&self) -> String {
        let mut out = String::new();
        let written = match (&self.file, &self.problem) {
            (Some(file), _) => format!("-> {file}"),
            (None, Some(problem)) => format!("-> NOT WRITTEN: {problem}"),
            (None, None) => format!(
                "-> NOT WRITTEN: {} node(s) without a faithful translation (--partial writes it with fail nodes)",
                self.refused()
            ),
        };
        let _ = writeln!(out, "flow {:?} ({}) as {} {written}", self.name, self.flow_id, self.id);
        for node in &self.nodes {
            let label = node.label.as_deref().map(|l| format!(" {l:?}")).unwrap_or_default();
            let outcome = match &node.outcome {
                Outcome::Imported { what } => format!("imported as {what}"),
                Outcome::Description => "annotation: its text is in the flow's description".to_string(),
                Outcome::Dropped { why } => format!("dropped: {why}"),
                Outcome::Refused { why, fail_node: None } => format!("NOT IMPORTED: {why}"),
                Outcome::Refused { why, fail_node: Some(fail) } => {
                    format!("NOT IMPORTED: {why}; in its place: fail node {fail}")
                }
            };
            let _ = writeln!(out, "  node {} ({}){label}: {outcome}", node.id, node.kind);
        }
        for note in &self.notes {
            let _ = writeln!(out, "  note: {note}");
        }
        out
    }
}
