//! Durable commits without holding the writer during the fsync: the SQLite store commits every write with
//! `synchronous=NORMAL` (no fsync) and makes what it accepted durable by syncing the WAL file afterwards, once
//! the write connection is back in the next writer's hands.
//!
//! The WAL is one file written in order, so a sync that starts after a commit makes that commit, and every
//! earlier one, durable. Commits that want to be durable take a [`Ticket`] after committing and before giving
//! the write connection up, so tickets follow the WAL's order; [`WalSync::sync`] returns once a sync that
//! started after the ticket was issued has finished. Callers that arrive while a sync runs share the next one:
//! under load a handful of accepts cost one fsync, and none of them holds the writer while the disk works.
//! With `synchronous=FULL` every accept's fsync ran inside its commit, and the writer (claims, completions, the
//! next accepts) waited for the disk each time (BENCHMARKS.md, "Ninth round").

use crate::store::StoreError;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use tokio::sync::Mutex;

/// A commit's place in the WAL, among the commits that asked to be durable.
#[derive(Debug, Clone, Copy)]
pub(super) struct Ticket(u64);

/// Syncs one database's WAL file for the commits that ask for it, sharing each fsync among its waiters.
#[derive(Debug)]
pub(super) struct WalSync {
    wal: PathBuf,
    /// Tickets issued so far (the last ticket's number).
    issued: AtomicU64,
    /// Every ticket up to this one is durable.
    durable: AtomicU64,
    /// Held while a sync runs; a caller that waited for it finds its ticket durable or runs the next one.
    turn: Mutex<()>,
    /// Fsyncs done, for tests and the curious.
    syncs: AtomicU64,
}

impl WalSync {
    /// The WAL of the database at `database` (SQLite names it `<database>-wal`).
    pub(super) fn new(database: &Path) -> Self {
        let mut wal = database.as_os_str().to_owned();
        wal.push("-wal");
        WalSync {
            wal: PathBuf::from(wal),
            issued: AtomicU64::new(0),
            durable: AtomicU64::new(0),
            turn: Mutex::new(()),
            syncs: AtomicU64::new(0),
        }
    }

    /// A ticket for a commit that just finished. Take it before the write connection goes to the next writer.
    pub(super) fn ticket(&self) -> Ticket {
        Ticket(self.issued.fetch_add(1, Ordering::SeqCst) + 1)
    }

    /// The last ticket issued: a reader that holds the write connection sees nothing newer than it.
    pub(super) fn last_issued(&self) -> Ticket {
        Ticket(self.issued.load(Ordering::SeqCst))
    }

    /// Returns once the commit of `ticket`, and every commit before it, is on disk.
    pub(super) async fn sync(&self, ticket: Ticket, operation: &'static str) -> Result<(), StoreError> {
        if self.is_durable(ticket) {
            return Ok(());
        }
        let _turn = self.turn.lock().await;
        if self.is_durable(ticket) {
            return Ok(());
        }
        // Everything issued by now was committed before this sync starts, so it covers all of them.
        let covers = self.issued.load(Ordering::SeqCst);
        self.sync_file(operation).await?;
        self.durable.fetch_max(covers, Ordering::SeqCst);
        Ok(())
    }

    /// Fsyncs done so far.
    #[cfg(test)]
    pub(super) fn syncs(&self) -> u64 {
        self.syncs.load(Ordering::SeqCst)
    }

    fn is_durable(&self, ticket: Ticket) -> bool {
        self.durable.load(Ordering::SeqCst) >= ticket.0
    }

    async fn sync_file(&self, operation: &'static str) -> Result<(), StoreError> {
        let wal = self.wal.clone();
        let synced = tokio::task::spawn_blocking(move || {
            // Opened for writing: some platforms refuse to flush a file opened read-only. Nothing is written.
            std::fs::OpenOptions::new().write(true).open(&wal)?.sync_all()
        })
        .await;
        let error = match synced {
            Ok(Ok(())) => {
                self.syncs.fetch_add(1, Ordering::SeqCst);
                return Ok(());
            }
            Ok(Err(e)) => e.to_string(),
            Err(e) => e.to_string(),
        };
        Err(StoreError::Sync { operation, path: self.wal.display().to_string(), message: error })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn wal_in(dir: &tempfile::TempDir) -> WalSync {
        let database = dir.path().join("store.db");
        std::fs::write(dir.path().join("store.db-wal"), b"frames").unwrap();
        WalSync::new(&database)
    }

    #[tokio::test]
    async fn waiters_share_the_sync_that_started_after_their_commits() {
        let dir = tempfile::tempdir().unwrap();
        let wal = wal_in(&dir);
        let (first, second, third) = (wal.ticket(), wal.ticket(), wal.ticket());
        let results = tokio::join!(wal.sync(third, "test"), wal.sync(first, "test"), wal.sync(second, "test"));
        assert!(results.0.is_ok() && results.1.is_ok() && results.2.is_ok(), "{results:?}");
        assert_eq!(wal.syncs(), 1, "three commits issued before the first sync: one fsync covers them all");

        // Already durable: no fsync.
        wal.sync(second, "test").await.unwrap();
        wal.sync(wal.last_issued(), "test").await.unwrap();
        assert_eq!(wal.syncs(), 1);
        // A commit after that sync needs one of its own.
        let later = wal.ticket();
        wal.sync(later, "test").await.unwrap();
        assert_eq!(wal.syncs(), 2);
    }

    #[tokio::test]
    async fn a_sync_that_fails_names_the_file_and_leaves_the_commit_not_durable() {
        let dir = tempfile::tempdir().unwrap();
        let wal = WalSync::new(&dir.path().join("missing.db"));
        let ticket = wal.ticket();
        let error = wal.sync(ticket, "enqueuing runs").await.unwrap_err();
        let message = error.to_string();
        assert!(message.starts_with("cannot make enqueuing runs durable: syncing "), "{message}");
        assert!(message.contains("missing.db-wal"), "{message}");
        assert!(!wal.is_durable(ticket));

        // The next call tries again, and succeeds once the file is there.
        std::fs::write(dir.path().join("missing.db-wal"), b"frames").unwrap();
        wal.sync(ticket, "enqueuing runs").await.unwrap();
        assert!(wal.is_durable(ticket));
        assert_eq!(wal.syncs(), 1);
    }
}
