-- The key head (migration 0002) is kept by the statements that open and close runs instead of by triggers
-- (host/src/store/sqlite.rs: an insert sets `head` itself, and a statement that closes or reopens runs is
-- followed by `rehead` for their keys). The triggers rewrote a completed run's row a second time to clear
-- its mark and probed each key twice per change: a third of the store's work per run (BENCHMARKS.md).
DROP TRIGGER runs_head_on_insert;
DROP TRIGGER runs_head_on_status;
-- Deleting runs is rare (operator maintenance), so the delete trigger stays.

-- Claims read `runs_claimable` since migration 0002; the old claim index only cost every write.
DROP INDEX runs_active;
