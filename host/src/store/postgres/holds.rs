//! Held connections (disconnect): holding a connection moves its queued runs and received inbound messages to
//! `held` in one transaction, and releasing it puts them back in the queue. Both take the held-connections lock
//! exclusively, so no enqueue, resend, release or claim decides on the list while it changes, and both lock the
//! rows they change in `id` order.

use super::notify::{INBOUND_CHANNEL, RUNS_CHANNEL};
use super::{HOLDS_EXCLUSIVE, PostgresStore, db, non_empty};
use crate::store::{ConnectionHold, StoreError, now_ms};

pub(super) async fn hold_connection(store: &PostgresStore, connection: &str) -> Result<ConnectionHold, StoreError> {
    non_empty("connection", connection)?;
    const OP: &str = "holding a connection";
    let now = now_ms();
    let mut tx = store.durable.begin().await.map_err(db(OP))?;
    sqlx::query(HOLDS_EXCLUSIVE).execute(&mut *tx).await.map_err(db(OP))?;
    sqlx::query("INSERT INTO held_connections (connection, held_at) VALUES ($1, $2) ON CONFLICT DO NOTHING")
        .bind(connection)
        .bind(now)
        .execute(&mut *tx)
        .await
        .map_err(db(OP))?;
    // Queued runs, and runs whose worker died (expired lease); live leases finish their attempt.
    let runs = sqlx::query(concat!(
        "UPDATE runs SET status = 'held', lease_until = NULL, updated_at = $2 \
         WHERE seq IN (SELECT r.seq FROM runs r \
                        WHERE (r.status = 'queued' OR (r.status = 'leased' AND r.next_attempt_at <= $2)) \
                          AND ",
        uses_connection!(),
        " ORDER BY r.id FOR UPDATE)"
    ))
    .bind(connection)
    .bind(now)
    .execute(&mut *tx)
    .await
    .map_err(db(OP))?
    .rows_affected();
    let inbound = sqlx::query(
        "UPDATE inbound SET status = 'held', lease_until = NULL, updated_at = $2 \
         WHERE seq IN (SELECT m.seq FROM inbound m WHERE m.connection = $1 \
                         AND (m.status = 'received' OR (m.status = 'leased' AND m.next_attempt_at <= $2)) \
                       ORDER BY m.id FOR UPDATE)",
    )
    .bind(connection)
    .bind(now)
    .execute(&mut *tx)
    .await
    .map_err(db(OP))?
    .rows_affected();
    tx.commit().await.map_err(db(OP))?;
    Ok(ConnectionHold { runs, inbound })
}

pub(super) async fn release_connection(store: &PostgresStore, connection: &str) -> Result<ConnectionHold, StoreError> {
    non_empty("connection", connection)?;
    const OP: &str = "releasing a connection";
    let now = now_ms();
    let mut tx = store.durable.begin().await.map_err(db(OP))?;
    sqlx::query(HOLDS_EXCLUSIVE).execute(&mut *tx).await.map_err(db(OP))?;
    sqlx::query("DELETE FROM held_connections WHERE connection = $1")
        .bind(connection)
        .execute(&mut *tx)
        .await
        .map_err(db(OP))?;
    let runs: i64 = sqlx::query_scalar(concat!(
        "WITH done AS (\
         UPDATE runs SET status = 'queued', next_attempt_at = greatest(next_attempt_at, $2), updated_at = $2 \
         WHERE seq IN (SELECT r.seq FROM runs r WHERE r.status = 'held' AND ",
        uses_connection!(),
        " \
                       ORDER BY r.id FOR UPDATE) \
           AND NOT ",
        uses_held_connection!(),
        " RETURNING runs.ordering_key, \
                    CASE WHEN runs.next_attempt_at > $2 THEN runs.next_attempt_at END AS wake_at), ",
        wake_keys_of_done!(),
        " SELECT count(*) FROM done"
    ))
    .bind(connection)
    .bind(now)
    .fetch_one(&mut *tx)
    .await
    .map_err(db(OP))?;
    let inbound = sqlx::query(
        "UPDATE inbound SET status = 'received', next_attempt_at = greatest(next_attempt_at, $2), updated_at = $2 \
         WHERE seq IN (SELECT m.seq FROM inbound m WHERE m.connection = $1 AND m.status = 'held' \
                       ORDER BY m.id FOR UPDATE)",
    )
    .bind(connection)
    .bind(now)
    .execute(&mut *tx)
    .await
    .map_err(db(OP))?
    .rows_affected();
    if runs > 0 {
        sqlx::query("SELECT pg_notify($1, '')").bind(RUNS_CHANNEL).execute(&mut *tx).await.map_err(db(OP))?;
    }
    if inbound > 0 {
        sqlx::query("SELECT pg_notify($1, '')").bind(INBOUND_CHANNEL).execute(&mut *tx).await.map_err(db(OP))?;
    }
    tx.commit().await.map_err(db(OP))?;
    Ok(ConnectionHold { runs: runs.unsigned_abs(), inbound })
}

pub(super) async fn held_connections(store: &PostgresStore) -> Result<Vec<String>, StoreError> {
    sqlx::query_scalar("SELECT connection FROM held_connections ORDER BY connection")
        .fetch_all(&store.bookkeeping)
        .await
        .map_err(db("listing held connections"))
}
