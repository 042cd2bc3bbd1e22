//! The integrity check ([`Store::check_integrity`](crate::store::Store::check_integrity)): `PRAGMA quick_check`,
//! which reads every page of the file and checks the b-trees' structure (not that indexes match their tables,
//! which `integrity_check` adds at several times the cost). The store runs it when it opens, and refuses a
//! corrupted file; the service runs it again on its schedule, on a connection of its own.

use crate::store::Integrity;
use sqlx::SqliteConnection;

/// What the check is called in its answers.
const CHECK: &str = "PRAGMA quick_check";

/// Runs the check on `conn`. A file too damaged for the pragma to run at all (SQLite calls it malformed, or not a
/// database) is a problem the check found, not an error; other errors (the file cannot be read) are errors.
pub(super) async fn quick_check(conn: &mut SqliteConnection) -> Result<Integrity, sqlx::Error> {
    // At most 10 problems: the first ones say what is wrong; a badly damaged file has thousands.
    let answer: Result<Vec<String>, sqlx::Error> =
        sqlx::query_scalar("PRAGMA quick_check(10)").fetch_all(&mut *conn).await;
    let problems = match answer {
        Ok(rows) if rows.len() == 1 && rows[0] == "ok" => Vec::new(),
        Ok(rows) if rows.is_empty() => vec!["the check returned nothing".to_string()],
        Ok(rows) => rows,
        Err(error) if damaged(&error) => vec![error.to_string()],
        Err(error) => return Err(error),
    };
    Ok(Integrity { check: CHECK.to_string(), problems })
}

/// Whether SQLite said the file is damaged: `SQLITE_CORRUPT` (11) or `SQLITE_NOTADB` (26), with their extended
/// codes.
pub(super) fn damaged(error: &sqlx::Error) -> bool {
    let code = error.as_database_error().and_then(|e| e.code()).and_then(|code| code.parse::<i32>().ok());
    code.is_some_and(|code| matches!(code & 0xff, 11 | 26))
}

/// Why a store that failed the check does not open.
pub(super) fn refusal(found: &Integrity) -> String {
    format!(
        "the database file is corrupt; {} found: {}. Restore it from a backup (or move it aside to start an empty \
         store); flowhost does not open a corrupted store, so that nothing more is written over the damage",
        found.check,
        found.problems.join("; ")
    )
}
