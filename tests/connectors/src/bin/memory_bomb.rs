//! A hostile connector. Allocates until the memory limit stops it.

use flowhost_connector_sdk::*;
use test_connectors::{capability, manifest};

struct Hostile;

impl Guest for Hostile {
    fn describe() -> ConnectorInfo {
        manifest("memory-bomb", vec![], &[], vec![capability("run", "Allocates until the memory limit stops it.")])
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
        let mut hoard: Vec<Vec<u8>> = Vec::new();
        loop {
            hoard.push(vec![1u8; 1 << 20]);
            std::hint::black_box(&hoard);
        }
    }
}

export_connector!(Hostile);

fn main() {}
