-- The traces of a batch of completions are stored together, as one zstd frame of a JSON array, instead of one
-- compressed trace in each run's row. Traces of runs of one flow are alike, so together they compress several
-- times better than one by one, and the writer appends one row per batch instead of rewriting every run's row
-- with its trace (host/src/store/sqlite.rs, `closing_batch`; BENCHMARKS.md, "Tenth round").
CREATE TABLE trace_blocks (
    id     INTEGER PRIMARY KEY,
    traces BLOB    NOT NULL
);

-- A run's trace is element `trace_slot` of block `trace_block`; `trace` (in the row) still holds traces written
-- one at a time (dead letters) and those written before this migration. Blocks are never deleted, so there is
-- no foreign key to check on every completion.
ALTER TABLE runs ADD COLUMN trace_block INTEGER;
ALTER TABLE runs ADD COLUMN trace_slot INTEGER;

-- A run's `run_connections` rows go in with the run, inside the statement that inserts it, instead of in a second
-- statement: each statement of an enqueue is a round trip between the async task holding the write connection
-- and SQLite's thread, and under load those round trips are most of the time the connection is held.
-- `connections` holds each name once (host/src/store/sqlite.rs, `insert_runs`).
CREATE TRIGGER runs_connections_on_insert AFTER INSERT ON runs
BEGIN
    INSERT INTO run_connections (connection, run_seq) SELECT value, NEW.seq FROM json_each(NEW.connections);
END;
