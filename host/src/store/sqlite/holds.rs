//! Held connections (disconnect): holding a connection moves its queued runs and received inbound messages to
//! `held` in one transaction, and releasing it puts them back in the queue.

use super::{SqliteStore, db, non_empty};
use crate::store::{ConnectionHold, StoreError, now_ms};

pub(super) async fn hold_connection(store: &SqliteStore, connection: &str) -> Result<ConnectionHold, StoreError> {
    non_empty("connection", connection)?;
    const OP: &str = "holding a connection";
    let now = now_ms();
    let mut writer = store.writer(OP).await?;
    let mut tx = writer.begin(OP).await?;
    sqlx::query("INSERT INTO held_connections (connection, held_at) VALUES (?1, ?2) ON CONFLICT DO NOTHING")
        .bind(connection)
        .bind(now)
        .execute(&mut *tx)
        .await
        .map_err(db(OP))?;
    // Queued runs, and runs whose worker died (expired lease); live leases finish their attempt.
    let runs = sqlx::query(concat!(
        "UPDATE runs SET status = 'held', lease_until = NULL, updated_at = ?2 \
         WHERE (status = 'queued' OR (status = 'leased' AND next_attempt_at <= ?2)) \
           AND ",
        uses_connection!("?1")
    ))
    .bind(connection)
    .bind(now)
    .execute(&mut *tx)
    .await
    .map_err(db(OP))?
    .rows_affected();
    let inbound = sqlx::query(
        "UPDATE inbound SET status = 'held', lease_until = NULL, updated_at = ?2 \
         WHERE connection = ?1 AND (status = 'received' OR (status = 'leased' AND next_attempt_at <= ?2))",
    )
    .bind(connection)
    .bind(now)
    .execute(&mut *tx)
    .await
    .map_err(db(OP))?
    .rows_affected();
    tx.commit().await.map_err(db(OP))?;
    store.sync_after(writer, OP).await?;
    Ok(ConnectionHold { runs, inbound })
}

pub(super) async fn release_connection(store: &SqliteStore, connection: &str) -> Result<ConnectionHold, StoreError> {
    non_empty("connection", connection)?;
    const OP: &str = "releasing a connection";
    let now = now_ms();
    let mut writer = store.writer(OP).await?;
    let mut tx = writer.begin(OP).await?;
    sqlx::query("DELETE FROM held_connections WHERE connection = ?1")
        .bind(connection)
        .execute(&mut *tx)
        .await
        .map_err(db(OP))?;
    let runs = sqlx::query(concat!(
        "UPDATE runs SET status = 'queued', next_attempt_at = MAX(next_attempt_at, ?2), updated_at = ?2 \
         WHERE status = 'held' AND ",
        uses_connection!("?1"),
        " AND NOT ",
        uses_held_connection!()
    ))
    .bind(connection)
    .bind(now)
    .execute(&mut *tx)
    .await
    .map_err(db(OP))?
    .rows_affected();
    let inbound = sqlx::query(
        "UPDATE inbound SET status = 'received', next_attempt_at = MAX(next_attempt_at, ?2), updated_at = ?2 \
         WHERE connection = ?1 AND status = 'held'",
    )
    .bind(connection)
    .bind(now)
    .execute(&mut *tx)
    .await
    .map_err(db(OP))?
    .rows_affected();
    tx.commit().await.map_err(db(OP))?;
    store.sync_after(writer, OP).await?;
    Ok(ConnectionHold { runs, inbound })
}

pub(super) async fn held_connections(store: &SqliteStore) -> Result<Vec<String>, StoreError> {
    sqlx::query_scalar("SELECT connection FROM held_connections ORDER BY connection")
        .fetch_all(&store.reader)
        .await
        .map_err(db("listing held connections"))
}
