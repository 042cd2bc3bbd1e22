//! Which flows use which connection (migration 0006), so that a connection's runs are found through the index
//! of runs by flow: written before the runs that bring a new pair, and remembered by the process once committed.

use super::db;
use crate::store::{NewRun, StoreError};
use serde_json::{Value, json};
use sqlx::SqliteConnection;
use std::collections::{HashMap, HashSet};

/// The (flow, connection) pairs this process knows are in `flow_connections` (migration 0006). Pairs are never
/// deleted, so an insert of runs writes only the pairs it brings that are not known yet: after the first runs of
/// each flow, none.
#[derive(Default)]
pub(in crate::store) struct KnownFlowConnections(std::sync::Mutex<HashMap<String, HashSet<String>>>);

/// Pairs of (connection, flow id) to store.
pub(in crate::store) type FlowConnectionPairs = Vec<(String, String)>;

impl KnownFlowConnections {
    /// The pairs of `runs` not known to be stored, each once.
    pub(in crate::store) fn unknown(&self, runs: &[NewRun]) -> FlowConnectionPairs {
        let known = self.0.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        let mut pairs = FlowConnectionPairs::new();
        for run in runs {
            let flow_known = known.get(&run.flow_id);
            for connection in &run.connections {
                if !flow_known.is_some_and(|names| names.contains(connection))
                    && !pairs.iter().any(|(c, f)| c == connection && f == &run.flow_id)
                {
                    pairs.push((connection.clone(), run.flow_id.clone()));
                }
            }
        }
        pairs
    }

    /// Records pairs as stored, once what wrote them has committed.
    pub(in crate::store) fn learn(&self, pairs: FlowConnectionPairs) {
        let mut known = self.0.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        for (connection, flow_id) in pairs {
            known.entry(flow_id).or_default().insert(connection);
        }
    }
}

/// Stores (connection, flow id) pairs in `flow_connections`, if not there yet: before the runs that have them.
pub(super) async fn store_flow_connections(
    conn: &mut SqliteConnection,
    pairs: &FlowConnectionPairs,
) -> Result<(), StoreError> {
    if pairs.is_empty() {
        return Ok(());
    }
    let rows: Vec<Value> = pairs.iter().map(|(connection, flow_id)| json!([connection, flow_id])).collect();
    sqlx::query(
        "INSERT OR IGNORE INTO flow_connections (connection, flow_id) \
         SELECT j.value ->> 0, j.value ->> 1 FROM json_each(?1) j",
    )
    .bind(Value::from(rows).to_string())
    .execute(&mut *conn)
    .await
    .map_err(db("storing the connections of flows"))?;
    Ok(())
}
