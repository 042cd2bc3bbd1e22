//! Traces, compressed: a dead letter's in its run's row, a batch of completions' together in one trace block.

use super::db;
use crate::store::StoreError;
use serde_json::Value;
use serde_json::value::RawValue;
use sqlx::SqliteConnection;
use std::collections::{HashMap, HashSet};

/// The first bytes of a zstd frame; JSON text never starts with them.
const ZSTD_MAGIC: [u8; 4] = [0x28, 0xb5, 0x2f, 0xfd];

/// A trace stored in its run's row (a dead letter's): zstd-compressed JSON. A `null` trace (not kept) is stored
/// as `NULL`. Completions store their traces together instead
/// ([`closing_batch`](super::leases::closing_batch)).
pub(in crate::store) fn pack_trace(trace: &Value) -> Option<Vec<u8>> {
    if trace.is_null() {
        return None;
    }
    Some(compress(trace.to_string().into_bytes()))
}

/// JSON compressed with zstd. Compressing a slice into a buffer sized by zstd's bound cannot fail; the JSON is
/// kept as it is if it ever does ([`decompress`] reads both).
pub(in crate::store) fn compress(json: Vec<u8>) -> Vec<u8> {
    let packed = TRACE_COMPRESSOR.with_borrow_mut(|compressor| match compressor {
        Ok(compressor) => compressor.compress(&json).ok(),
        Err(_) => None,
    });
    packed.unwrap_or(json)
}

/// The JSON of a stored trace or trace block: zstd-compressed, or JSON text (JSON never starts with zstd's magic
/// number).
pub(in crate::store) fn decompress(stored: &[u8]) -> Result<std::borrow::Cow<'_, [u8]>, String> {
    if stored.starts_with(&ZSTD_MAGIC) {
        zstd::decode_all(stored).map(Into::into).map_err(|e| format!("cannot decompress: {e}"))
    } else {
        Ok(stored.into())
    }
}

/// Trace blocks by id (migration 0005), each decompressed and split into its traces, or why it could not be.
pub(in crate::store) type TraceBlocks = HashMap<i64, Result<Vec<Box<RawValue>>, String>>;

/// Loads the trace blocks with these ids (those the runs read point into), each once.
pub(super) async fn read_trace_blocks(
    reader: &mut SqliteConnection,
    ids: impl IntoIterator<Item = i64>,
) -> Result<TraceBlocks, StoreError> {
    let ids: HashSet<i64> = ids.into_iter().collect();
    if ids.is_empty() {
        return Ok(HashMap::new());
    }
    let stored: Vec<(i64, Vec<u8>)> =
        sqlx::query_as("SELECT id, traces FROM trace_blocks WHERE id IN (SELECT value FROM json_each(?1))")
            .bind(Value::from(ids.into_iter().collect::<Vec<_>>()).to_string())
            .fetch_all(reader)
            .await
            .map_err(db("reading traces"))?;
    let unpack = |stored: &[u8]| {
        let json = decompress(stored)?;
        serde_json::from_slice(&json).map_err(|e| format!("is not a JSON array of traces: {e}"))
    };
    Ok(stored.into_iter().map(|(id, stored)| (id, unpack(&stored))).collect())
}

thread_local! {
    /// One zstd context per thread, reused: `zstd::bulk::compress` created one, with its tables, for every
    /// trace (`ZSTD_createCCtx` and zeroed allocations in the service's profile). A batch of 50 completions
    /// in the store benchmark went from 4.5–5.3 to 3.9–4.0 ms (BENCHMARKS.md, "Ninth round").
    static TRACE_COMPRESSOR: std::cell::RefCell<std::io::Result<zstd::bulk::Compressor<'static>>> =
        std::cell::RefCell::new(zstd::bulk::Compressor::new(TRACE_ZSTD_LEVEL));
}

/// zstd's default level: on a trace, as fast as level 1 and a little smaller.
const TRACE_ZSTD_LEVEL: i32 = 3;

/// Appends a batch's trace block, returning its id.
pub(super) async fn insert_trace_block(conn: &mut SqliteConnection, traces: &[u8]) -> Result<i64, StoreError> {
    sqlx::query_scalar("INSERT INTO trace_blocks (traces) VALUES (?1) RETURNING id")
        .bind(traces)
        .fetch_one(&mut *conn)
        .await
        .map_err(db("storing traces"))
}
