//! The integrity check ([`Store::check_integrity`](crate::store::Store::check_integrity)) of a PostgreSQL store: what
//! flowhost can check cheaply from a client. The migrations recorded in the database are this build's, each
//! applied whole and unchanged since (sqlx's `_sqlx_migrations`, with the checksum of each file), none newer; and
//! every table of the schema answers a read of one row (a table dropped, renamed or no longer readable by this
//! user shows here). Whether the server's pages are intact is the server's to say: data checksums
//! (`initdb --data-checksums`) and the `amcheck` extension are its operator's.

use super::MIGRATOR;
use crate::store::{Integrity, StoreError};
use sqlx::{AssertSqlSafe, PgPool};

/// What the check is called in its answers.
const CHECK: &str = "the schema's migrations and tables";

/// The tables of the schema (migrations 0001 to 0003).
const TABLES: [&str; 8] =
    ["runs", "run_keys", "key_wakeups", "held_connections", "flow_connections", "trace_blocks", "outbox", "inbound"];

pub(super) async fn check(pool: &PgPool) -> Result<Integrity, StoreError> {
    let operation = "checking the store's integrity";
    let db = |source| StoreError::Database { operation, source };
    let mut problems = Vec::new();
    let applied: Vec<(i64, Vec<u8>, bool)> =
        match sqlx::query_as("SELECT version, checksum, success FROM _sqlx_migrations ORDER BY version")
            .fetch_all(pool)
            .await
        {
            Ok(applied) => applied,
            Err(error) if error.as_database_error().is_some() => {
                problems.push(format!("the migrations table _sqlx_migrations cannot be read: {error}"));
                Vec::new()
            }
            Err(error) => return Err(db(error)),
        };
    let known = MIGRATOR.iter().filter(|migration| !migration.migration_type.is_down_migration());
    if problems.is_empty() {
        for migration in known.clone() {
            match applied.iter().find(|(version, ..)| *version == migration.version) {
                None => {
                    problems.push(format!("migration {} ({}) is not applied", migration.version, migration.description))
                }
                Some((_, _, false)) => problems.push(format!(
                    "migration {} ({}) is recorded as failed partway",
                    migration.version, migration.description
                )),
                Some((_, checksum, true)) if *checksum != *migration.checksum => problems.push(format!(
                    "migration {} ({}) applied differs from this build's (its checksum does not match)",
                    migration.version, migration.description
                )),
                Some(_) => {}
            }
        }
        for (version, ..) in &applied {
            if !known.clone().any(|migration| migration.version == *version) {
                problems.push(format!("migration {version} is applied but unknown to this build"));
            }
        }
    }
    for table in TABLES {
        let read = sqlx::query(AssertSqlSafe(format!("SELECT 1 FROM {table} LIMIT 1"))).fetch_optional(pool).await;
        match read {
            Ok(_) => {}
            Err(error) if error.as_database_error().is_some() => {
                problems.push(format!("table {table} cannot be read: {error}"))
            }
            Err(error) => return Err(db(error)),
        }
    }
    Ok(Integrity { check: CHECK.to_string(), problems })
}
