//! A hostile connector. Recurses until the stack overflows.

use flowhost_connector_sdk::*;
use std::sync::atomic::{AtomicBool, Ordering};
use test_connectors::{capability, manifest};

struct Hostile;

impl Guest for Hostile {
    fn describe() -> ConnectorInfo {
        manifest("stack-overflow", vec![], &[], vec![capability("run", "Recurses until the stack overflows.")])
    }

    fn check(_connection: String) -> Result<(), ConnectorError> {
        Ok(())
    }

    fn invoke(
        _capability: String,
        _connection: String,
        _input: String,
        _context: InvocationContext,
    ) -> Result<String, ConnectorError> {
        Ok(recurse(0).to_string())
    }
}

static STOP: AtomicBool = AtomicBool::new(false);

/// Recursion the compiler cannot turn into a loop, with frames on the wasm call stack (not in linear
/// memory), so the engine's stack limit is what stops it.
#[inline(never)]
fn recurse(depth: u64) -> u64 {
    if STOP.load(Ordering::Relaxed) {
        return depth;
    }
    recurse(depth + 1).wrapping_mul(3) ^ depth
}

export_connector!(Hostile);

fn main() {}
