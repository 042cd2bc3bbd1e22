//! A hostile connector. Recurses until the stack overflows.

use flowhost_connector_sdk::*;
use test_connectors::{capability, manifest};

struct Hostile;

impl Guest for Hostile {
    fn describe() -> ConnectorInfo {
        manifest("stack_overflow", vec![], &[], vec![capability("run", "Recurses until the stack overflows.")])
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
        Ok(recurse(std::hint::black_box(1)).to_string())
    }
}

#[allow(unconditional_recursion)]
fn recurse(depth: u64) -> u64 {
    let frame = std::hint::black_box([depth; 64]);
    recurse(depth + 1) + frame[0]
}

export_connector!(Hostile);

fn main() {}
