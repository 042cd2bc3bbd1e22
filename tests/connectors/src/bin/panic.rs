//! A hostile connector. Panics with a message.

use flowhost_connector_sdk::*;
use test_connectors::{capability, manifest};

struct Hostile;

impl Guest for Hostile {
    fn describe() -> ConnectorInfo {
        manifest("panic", vec![], &[], vec![capability("run", "Panics with a message.")])
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
        panic!("the connector exploded on purpose")
    }
}

export_connector!(Hostile);

fn main() {}
