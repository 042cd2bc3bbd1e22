-- A run's connections are in its own row (`runs.connections`, a JSON array), and that list alone says whether it
-- uses a held connection. To find a connection's runs (to hold, release or list them), `flow_connections` holds
-- each (connection, flow) pair that any run has had: a connection's runs are among its flows' runs (the index
-- `runs_by_flow`), and each one's own list decides. A pair is written before the first run that has it commits
-- (host/src/store/sqlite.rs, `store_flow_connections`), so the table is never short of a pair, and it changes only
-- when a flow starts using a connection.
--
-- It replaces `run_connections`, a row per run and connection written by a trigger with every insert (a JSON
-- parse, a foreign key check and two B-tree inserts per run), the largest part of an enqueue's cost left
-- (BENCHMARKS.md, "Eleventh round").
CREATE TABLE flow_connections (
    connection TEXT NOT NULL,
    flow_id    TEXT NOT NULL,
    PRIMARY KEY (connection, flow_id)
) WITHOUT ROWID;

INSERT INTO flow_connections (connection, flow_id)
SELECT DISTINCT rc.connection, r.flow_id FROM run_connections rc JOIN runs r ON r.seq = rc.run_seq;

DROP TRIGGER runs_connections_on_insert;
DROP TABLE run_connections;
