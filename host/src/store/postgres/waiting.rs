//! Which runs wait behind which: a key's first open run is what its later queued and held runs wait for, so an
//! operator can see why they do not move.

use super::{PostgresStore, db};
use crate::store::sqlite::decode::Decoder;
use crate::store::sqlite::waiting::held_behind_counts;
use crate::store::{HeldBehind, HeldBy, StoreError};
use std::collections::HashMap;

pub(super) async fn held_by(store: &PostgresStore, ids: &[String]) -> Result<HashMap<String, HeldBy>, StoreError> {
    if ids.is_empty() {
        return Ok(HashMap::new());
    }
    // One probe of runs_open_by_key per run asked about.
    let rows: Vec<(String, String, String, i32)> = sqlx::query_as(
        "SELECT r.id, h.id, h.status, h.attempts FROM runs AS r \
         CROSS JOIN LATERAL (SELECT o.id, o.status, o.attempts, o.seq FROM runs AS o \
                              WHERE o.ordering_key = r.ordering_key \
                                AND o.status IN ('queued', 'leased', 'held', 'dead') \
                              ORDER BY o.seq LIMIT 1) AS h \
         WHERE r.id = ANY($1) AND r.status IN ('queued', 'held') AND h.seq < r.seq",
    )
    .bind(ids)
    .fetch_all(&store.bookkeeping)
    .await
    .map_err(db("reading what runs wait behind"))?;
    rows.into_iter()
        .map(|(id, head, status, attempts)| {
            let decode = Decoder { what: "run", id: &head };
            let attempts = decode.count("attempts", i64::from(attempts))?;
            Ok((id, HeldBy { status: decode.state(&status)?, attempts, run: head }))
        })
        .collect()
}

pub(super) async fn held_behind(store: &PostgresStore) -> Result<HeldBehind, StoreError> {
    // From the runs that are stuck (dead, or waiting for a resend) and first of their key, which are few, to the
    // queued and held runs behind each.
    let rows: Vec<(String, i64)> = sqlx::query_as(
        "SELECT s.status, count(*) FROM runs AS s \
         JOIN runs AS r ON r.ordering_key = s.ordering_key AND r.seq > s.seq AND r.status IN ('queued', 'held') \
         WHERE (s.status = 'dead' OR (s.status = 'queued' AND s.attempts > 0)) \
           AND NOT EXISTS (SELECT 1 FROM runs AS e WHERE e.ordering_key = s.ordering_key AND e.seq < s.seq \
                                                    AND e.status IN ('queued', 'leased', 'held', 'dead')) \
         GROUP BY s.status",
    )
    .fetch_all(&store.bookkeeping)
    .await
    .map_err(db("counting the runs that wait behind a dead run or a resend"))?;
    held_behind_counts(rows)
}
