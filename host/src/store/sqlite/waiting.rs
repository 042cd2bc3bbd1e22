//! Which runs wait behind which: each key's head (its first open run, migration 0002) is what its later
//! queued and held runs wait for, so an operator can see why they do not move.

use super::decode::Decoder;
use super::{SqliteStore, db};
use crate::store::{HeldBehind, HeldBy, RunState, StoreError};
use serde_json::Value;
use std::collections::HashMap;

pub(super) async fn held_by(store: &SqliteStore, ids: &[String]) -> Result<HashMap<String, HeldBy>, StoreError> {
    const OP: &str = "reading what runs wait behind";
    if ids.is_empty() {
        return Ok(HashMap::new());
    }
    let rows: Vec<(String, String, String, i64)> = sqlx::query_as(
        // The ids lead (CROSS JOIN keeps SQLite's order): without statistics, SQLite would start from every queued
        // or held run, which behind a few dead runs may be thousands, and look each one up in the ids.
        "SELECT r.id, h.id, h.status, h.attempts FROM json_each(?1) j \
         CROSS JOIN runs r ON r.id = j.value \
         JOIN runs h INDEXED BY runs_head_by_key ON h.ordering_key = r.ordering_key AND h.head = 1 \
         WHERE r.head = 0 AND r.status IN ('queued', 'held')",
    )
    .bind(Value::from(ids).to_string())
    .fetch_all(&store.reader)
    .await
    .map_err(db(OP))?;
    rows.into_iter()
        .map(|(id, head, status, attempts)| {
            let decode = Decoder { what: "run", id: &head };
            let held_by =
                HeldBy { status: decode.state(&status)?, attempts: decode.count("attempts", attempts)?, run: head };
            Ok((id, held_by))
        })
        .collect()
}

pub(super) async fn held_behind(store: &SqliteStore) -> Result<HeldBehind, StoreError> {
    const OP: &str = "counting the runs that wait behind a dead run or a resend";
    // Starts from the heads that are stuck, which are few, and counts each one's key's waiting runs.
    let rows: Vec<(String, i64)> = sqlx::query_as(
        "SELECT h.status, COUNT(*) FROM runs h \
         JOIN runs r ON r.ordering_key = h.ordering_key AND r.seq > h.seq AND r.status IN ('queued', 'held') \
         WHERE h.head = 1 AND (h.status = 'dead' OR (h.status = 'queued' AND h.attempts > 0)) \
         GROUP BY h.status",
    )
    .fetch_all(&store.reader)
    .await
    .map_err(db(OP))?;
    held_behind_counts(rows)
}

/// The counts from rows of (the status of the run waited for, how many runs wait), as both backends' queries
/// return them: `dead`, or `queued` for a resend.
pub(in crate::store) fn held_behind_counts(rows: Vec<(String, i64)>) -> Result<HeldBehind, StoreError> {
    let decode = Decoder { what: "runs", id: "count" };
    let mut counts = HeldBehind::default();
    for (status, n) in rows {
        match decode.state::<RunState>(&status)? {
            RunState::Dead => counts.dead = n.max(0) as u64,
            _ => counts.resend = n.max(0) as u64,
        }
    }
    Ok(counts)
}
