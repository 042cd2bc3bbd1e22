//! A hostile connector. Spins forever: the host's epoch deadline must stop it.

use flowhost_connector_sdk::*;
use test_connectors::{capability, manifest};

struct Hostile;

impl Guest for Hostile {
    fn describe() -> ConnectorInfo {
        manifest(
            "infinite-loop",
            vec![],
            &[],
            vec![capability("run", "Spins forever: the host's epoch deadline must stop it.")],
        )
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
        let mut n: u64 = 0;
        loop {
            n = std::hint::black_box(n.wrapping_add(1));
        }
    }
}

export_connector!(Hostile);

fn main() {}
