//! Stored rows back into the store's values: bad stored data is an error naming the row and the column.

use super::traces::{TraceBlocks, decompress};
use crate::store::StoreError;
use serde_json::Value;
use std::fmt::Display;
use std::str::FromStr;

pub(in crate::store) fn corrupt(what: &str, id: &str, field: &str, message: impl Display) -> StoreError {
    StoreError::Corrupt { what: format!("{what} {id}, column {field}"), message: message.to_string() }
}

/// Decodes one stored row's JSON and numbers, naming the row and column when the data is bad.
pub(in crate::store) struct Decoder<'a> {
    pub(in crate::store) what: &'static str,
    pub(in crate::store) id: &'a str,
}

impl Decoder<'_> {
    pub(in crate::store) fn json(&self, field: &str, text: &str) -> Result<Value, StoreError> {
        serde_json::from_str(text).map_err(|e| corrupt(self.what, self.id, field, format!("not valid JSON: {e}")))
    }

    pub(in crate::store) fn opt_json(&self, field: &str, text: Option<&str>) -> Result<Option<Value>, StoreError> {
        text.map(|text| self.json(field, text)).transpose()
    }

    /// A run's trace: zstd-compressed JSON ([`pack_trace`](super::traces::pack_trace)), or JSON text as written
    /// before compression.
    pub(in crate::store) fn trace(&self, stored: &[u8]) -> Result<Value, StoreError> {
        let bad = |message: String| corrupt(self.what, self.id, "trace", message);
        let json = decompress(stored).map_err(bad)?;
        serde_json::from_slice(&json).map_err(|e| bad(format!("not JSON: {e}")))
    }

    /// Trace `slot` of trace block `block` (migration 0005).
    pub(in crate::store) fn trace_in_block(
        &self,
        blocks: &TraceBlocks,
        block: i64,
        slot: i64,
    ) -> Result<Value, StoreError> {
        let bad = |message: String| corrupt(self.what, self.id, "trace", message);
        let traces = match blocks.get(&block) {
            None => return Err(bad(format!("trace block {block} does not exist"))),
            Some(Err(message)) => return Err(bad(format!("trace block {block} {message}"))),
            Some(Ok(traces)) => traces,
        };
        let trace = usize::try_from(slot)
            .ok()
            .and_then(|slot| traces.get(slot))
            .ok_or_else(|| bad(format!("trace block {block} has no trace {slot}")))?;
        serde_json::from_str(trace.get()).map_err(|e| bad(format!("not JSON: {e}")))
    }

    pub(in crate::store) fn strings(&self, field: &str, text: &str) -> Result<Vec<String>, StoreError> {
        serde_json::from_str(text)
            .map_err(|e| corrupt(self.what, self.id, field, format!("not a JSON array of strings: {e}")))
    }

    pub(in crate::store) fn count(&self, field: &str, value: i64) -> Result<u32, StoreError> {
        u32::try_from(value).map_err(|_| corrupt(self.what, self.id, field, format!("{value} is out of range")))
    }

    pub(in crate::store) fn state<T: FromStr>(&self, text: &str) -> Result<T, StoreError> {
        text.parse().map_err(|_| corrupt(self.what, self.id, "status", format!("unknown status `{text}`")))
    }
}

pub(in crate::store) fn convert<R, T: TryFrom<R, Error = StoreError>>(rows: Vec<R>) -> Result<Vec<T>, StoreError> {
    rows.into_iter().map(T::try_from).collect()
}
