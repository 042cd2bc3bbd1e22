-- Durable delivery: runs (the queue), the connections they use, held (disconnected) connections,
-- the outbox of emitted events, and inbound messages. Times are milliseconds since the Unix epoch;
-- JSON is stored as text. See host/src/store/mod.rs for the states and the ordering rule.

CREATE TABLE runs (
    seq             INTEGER PRIMARY KEY AUTOINCREMENT, -- arrival order, never reused
    id              TEXT    NOT NULL UNIQUE,           -- UUID
    flow_id         TEXT    NOT NULL,
    flow_version    TEXT    NOT NULL,
    connections     TEXT    NOT NULL DEFAULT '[]',     -- JSON array; also in run_connections for lookups
    ordering_key    TEXT    NOT NULL,
    customer        TEXT,
    dedup_key       TEXT,
    event           TEXT    NOT NULL,
    status          TEXT    NOT NULL
                    CHECK (status IN ('queued', 'leased', 'succeeded', 'failed', 'dead', 'held', 'dropped')),
    attempts        INTEGER NOT NULL DEFAULT 0 CHECK (attempts >= 0),
    leases          INTEGER NOT NULL DEFAULT 0 CHECK (leases >= 0), -- claims so far; the lease's fencing token
    next_attempt_at INTEGER NOT NULL, -- queued: when due; leased: when the lease expires (= lease_until)
    lease_owner     TEXT,
    lease_until     INTEGER,
    checkpoint      TEXT,
    last_error      TEXT,
    trace           TEXT,
    created_at      INTEGER NOT NULL,
    updated_at      INTEGER NOT NULL,
    UNIQUE (flow_id, dedup_key)
);

-- Claim: the active runs in arrival order, so a claim reads them oldest first and stops as soon as it has
-- found enough claimable ones (next_attempt_at is in the index, so runs that are not due are skipped
-- without reading the row).
CREATE INDEX runs_active ON runs (seq, next_attempt_at) WHERE status IN ('queued', 'leased');
-- Due runs per state: expired leases (crash recovery, disconnect), counts.
CREATE INDEX runs_due ON runs (status, next_attempt_at);
-- Per-key order: the open runs of a key, by arrival. Partial, so a customer's long history of finished runs
-- costs nothing at claim time.
CREATE INDEX runs_open_by_key ON runs (ordering_key, seq)
    WHERE status IN ('queued', 'leased', 'held', 'dead');
-- Listing.
CREATE INDEX runs_by_customer ON runs (customer, seq);
CREATE INDEX runs_by_flow ON runs (flow_id, seq);

CREATE TABLE run_connections (
    connection TEXT    NOT NULL,
    run_seq    INTEGER NOT NULL REFERENCES runs (seq) ON DELETE CASCADE,
    PRIMARY KEY (connection, run_seq)
) WITHOUT ROWID;
CREATE INDEX run_connections_by_run ON run_connections (run_seq);

-- Disconnected connections: their runs and inbound messages are held, not processed.
CREATE TABLE held_connections (
    connection TEXT    NOT NULL PRIMARY KEY,
    held_at    INTEGER NOT NULL
) WITHOUT ROWID;

CREATE TABLE outbox (
    seq        INTEGER PRIMARY KEY AUTOINCREMENT,
    run_id     TEXT    NOT NULL REFERENCES runs (id),
    flow_id    TEXT    NOT NULL,
    node_id    TEXT    NOT NULL,
    event      TEXT    NOT NULL,
    payload    TEXT    NOT NULL,
    created_at INTEGER NOT NULL
);
CREATE INDEX outbox_by_run ON outbox (run_id);

CREATE TABLE inbound (
    seq             INTEGER PRIMARY KEY AUTOINCREMENT,
    id              TEXT    NOT NULL UNIQUE,
    connection      TEXT    NOT NULL,
    source          TEXT    NOT NULL,
    external_id     TEXT,
    body            TEXT    NOT NULL,
    status          TEXT    NOT NULL
                    CHECK (status IN ('received', 'leased', 'processed', 'unmatched', 'failed', 'held')),
    leases          INTEGER NOT NULL DEFAULT 0 CHECK (leases >= 0),
    next_attempt_at INTEGER NOT NULL,
    lease_owner     TEXT,
    lease_until     INTEGER,
    detail          TEXT,
    run_ids         TEXT    NOT NULL DEFAULT '[]',
    received_at     INTEGER NOT NULL,
    updated_at      INTEGER NOT NULL,
    UNIQUE (connection, external_id)
);
CREATE INDEX inbound_active ON inbound (seq, next_attempt_at) WHERE status IN ('received', 'leased');
CREATE INDEX inbound_due ON inbound (status, next_attempt_at);
CREATE INDEX inbound_open_by_connection ON inbound (connection, seq)
    WHERE status IN ('received', 'leased', 'held');
