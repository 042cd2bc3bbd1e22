-- The PostgreSQL store (host/src/store/postgres/): the same queue as SQLite's, shared by any number of flowhost
-- processes. Times are milliseconds since the Unix epoch; JSON is stored as text (the store parses it itself, and
-- text costs the server nothing to check); a run's connections are a text array. See host/src/store/mod.rs for the
-- states and the ordering rule, and host/src/store/postgres/mod.rs for how concurrent processes stay in order.

CREATE TABLE runs (
    seq             bigint  GENERATED ALWAYS AS IDENTITY PRIMARY KEY, -- arrival order, never reused
    id              text    NOT NULL UNIQUE,
    flow_id         text    NOT NULL,
    flow_version    text    NOT NULL,
    connections     text[]  NOT NULL DEFAULT '{}',
    ordering_key    text    NOT NULL,
    customer        text,
    dedup_key       text,
    event           text    NOT NULL,
    status          text    NOT NULL
                    CHECK (status IN ('queued', 'leased', 'succeeded', 'failed', 'dead', 'held', 'dropped')),
    attempts        integer NOT NULL DEFAULT 0 CHECK (attempts >= 0),
    leases          integer NOT NULL DEFAULT 0 CHECK (leases >= 0), -- claims so far; the lease's fencing token
    next_attempt_at bigint  NOT NULL, -- queued: when due; leased: when the lease expires (= lease_until)
    lease_owner     text,
    lease_until     bigint,
    checkpoint      text,
    last_error      text,
    trace           bytea,            -- a dead letter's trace (zstd), or none
    trace_block     bigint,           -- a completed run's trace: slot `trace_slot` of this trace block
    trace_slot      integer,
    created_at      bigint  NOT NULL,
    updated_at      bigint  NOT NULL,
    UNIQUE (flow_id, dedup_key)
);

-- Claim: the due runs in arrival order (queued and leased only, so finished runs cost nothing).
CREATE INDEX runs_active ON runs (seq) INCLUDE (next_attempt_at, ordering_key) WHERE status IN ('queued', 'leased');
-- Expired leases (crash recovery, disconnect sweep).
CREATE INDEX runs_leased_until ON runs (next_attempt_at) WHERE status = 'leased';
-- Per-key order: the open runs of a key, by arrival.
CREATE INDEX runs_open_by_key ON runs (ordering_key, seq) WHERE status IN ('queued', 'leased', 'held', 'dead');
-- Listing.
CREATE INDEX runs_by_customer ON runs (customer, seq);
CREATE INDEX runs_by_flow ON runs (flow_id, seq);
CREATE INDEX runs_by_status ON runs (status, seq);
CREATE INDEX runs_by_key ON runs (ordering_key, seq);

-- One row per ordering key: the lock that makes a key's claims take turns across processes. A claim locks the
-- rows of the keys it takes with `FOR UPDATE SKIP LOCKED` (a key another process is claiming is skipped, never
-- waited for) and only then, in a new snapshot, reads which of the key's runs are claimable (flowhost_claim_runs).
-- An operator's retry, which may reopen a key's earlier run, waits for the row.
CREATE TABLE run_keys (
    ordering_key text PRIMARY KEY
);

-- Disconnected connections: their runs and inbound messages are held, not processed.
CREATE TABLE held_connections (
    connection text   PRIMARY KEY,
    held_at    bigint NOT NULL
);

-- Which flows have used which connection, so that a connection's runs are found through `runs_by_flow`.
CREATE TABLE flow_connections (
    connection text NOT NULL,
    flow_id    text NOT NULL,
    PRIMARY KEY (connection, flow_id)
);

-- The traces of a batch of completions, together: one zstd frame of a JSON array.
CREATE TABLE trace_blocks (
    id     bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    traces bytea  NOT NULL
);

CREATE TABLE outbox (
    seq        bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    run_id     text   NOT NULL,
    flow_id    text   NOT NULL,
    node_id    text   NOT NULL,
    event      text   NOT NULL,
    payload    text   NOT NULL,
    created_at bigint NOT NULL
);
CREATE INDEX outbox_by_run ON outbox (run_id);

CREATE TABLE inbound (
    seq             bigint  GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    id              text    NOT NULL UNIQUE,
    connection      text    NOT NULL,
    source          text    NOT NULL,
    external_id     text,
    body            text    NOT NULL,
    status          text    NOT NULL
                    CHECK (status IN ('received', 'leased', 'processed', 'unmatched', 'failed', 'held')),
    leases          integer NOT NULL DEFAULT 0 CHECK (leases >= 0),
    next_attempt_at bigint  NOT NULL,
    lease_owner     text,
    lease_until     bigint,
    detail          text,
    run_ids         text    NOT NULL DEFAULT '[]',
    received_at     bigint  NOT NULL,
    updated_at      bigint  NOT NULL,
    UNIQUE (connection, external_id)
);
CREATE INDEX inbound_active ON inbound (seq) WHERE status IN ('received', 'leased');
CREATE INDEX inbound_open_by_connection ON inbound (connection, seq) WHERE status IN ('received', 'leased', 'held');
CREATE INDEX inbound_by_status ON inbound (status, seq);

-- Advisory locks (two-key form; the first key names the use):
--   (1718382455, 1)       connections being held or released: taken shared by every statement that decides whether
--                         a run or message is queued or held (enqueue, claim's sweep, resend, release, retry),
--                         exclusively by hold_connection and release_connection, so that none of them decides on a
--                         list of held connections that is changing.
--   (1718382456, hash)    an ordering key being enqueued to: enqueues of one key take turns, so that a key's `seq`
--                         follows the order its runs commit in (a run committed after a later-numbered one of its
--                         key would otherwise be claimable while that one is leased). Taken in hash order, so two
--                         enqueues never wait for each other in a cycle.
--   (1718382457, hash)    a connection's inbound messages being claimed (tried, never waited for).

-- Enqueue: runs in order (`seq` follows the arrays' order), `held` when one of their connections is held; a run whose
-- (flow, dedup key) is stored already is not inserted again. `p_connections` holds each run's connections as a JSON
-- array. Returns the stored id of every run that has a dedup key (its own, or the one stored before).
CREATE FUNCTION flowhost_enqueue(p_ids text[], p_flow_ids text[], p_versions text[], p_connections text[],
                                 p_keys text[], p_customers text[], p_dedup_keys text[], p_events text[],
                                 p_now bigint)
RETURNS TABLE (flow_id text, dedup_key text, id text) LANGUAGE plpgsql AS $$
BEGIN
    PERFORM pg_advisory_xact_lock_shared(1718382455, 1);
    PERFORM pg_advisory_xact_lock(1718382456, s.h)
       FROM (SELECT DISTINCT hashtext(k) AS h FROM unnest(p_keys) AS k ORDER BY 1) AS s;
    INSERT INTO run_keys (ordering_key)
    SELECT DISTINCT k FROM unnest(p_keys) AS k ORDER BY 1
    ON CONFLICT DO NOTHING;
    INSERT INTO runs AS r (id, flow_id, flow_version, connections, ordering_key, customer, dedup_key, event, status,
                           next_attempt_at, created_at, updated_at)
    SELECT u.id, u.flow_id, u.version, c.list, u.key, u.customer, u.dedup, u.event,
           CASE WHEN c.list && ARRAY(SELECT h.connection FROM held_connections AS h) THEN 'held' ELSE 'queued' END,
           p_now, p_now, p_now
      FROM unnest(p_ids, p_flow_ids, p_versions, p_connections, p_keys, p_customers, p_dedup_keys, p_events)
           WITH ORDINALITY AS u (id, flow_id, version, connections, key, customer, dedup, event, ord)
     CROSS JOIN LATERAL (SELECT ARRAY(SELECT json_array_elements_text(u.connections::json)) AS list) AS c
     ORDER BY u.ord
    ON CONFLICT ON CONSTRAINT runs_flow_id_dedup_key_key DO NOTHING;
    PERFORM pg_notify('flowhost_runs', '');
    RETURN QUERY
    SELECT u.flow_id, u.dedup, s.id
      FROM unnest(p_flow_ids, p_dedup_keys) AS u (flow_id, dedup)
      JOIN runs AS s ON s.flow_id = u.flow_id AND s.dedup_key = u.dedup
     WHERE u.dedup IS NOT NULL;
END
$$;

-- Claim (see host/src/store/mod.rs, the ordering rule): up to p_limit runs, oldest first, with up to p_per_key runs
-- of a key (a due run with no earlier open run of its key, and the due runs right behind it).
--
-- 1. Expired leases on held connections become held (rows another transaction holds are left for the next claim).
-- 2. The keys whose first open run is due, oldest first, are locked: `FOR UPDATE SKIP LOCKED` on their run_keys
--    rows, so a key another process is claiming is skipped rather than taken twice or waited for. The keys are found
--    by a loose scan of runs_open_by_key (one probe per key with open runs), not by reading the due runs in order,
--    which would read every queued run behind a leased one.
-- 3. In a new snapshot, taken once the keys are locked, each locked key's claimable runs are chosen, and locked in
--    `id` order (skipping rows another transaction holds, such as a late completion of an expired lease); a key
--    keeps its chosen runs up to the first one it could not lock, so a later run never goes without the earlier
--    runs of its key. Those are leased.
--
-- Every multi-row write of runs locks its rows in `id` order, or skips what it cannot lock, so writers never wait
-- for each other in a cycle.
CREATE FUNCTION flowhost_claim_runs(p_worker text, p_until bigint, p_now bigint, p_limit integer, p_per_key integer)
RETURNS SETOF runs LANGUAGE plpgsql AS $$
DECLARE
    v_keys text[];
BEGIN
    PERFORM pg_advisory_xact_lock_shared(1718382455, 1);
    UPDATE runs SET status = 'held', lease_until = NULL, updated_at = p_now
     WHERE seq IN (SELECT r.seq FROM runs AS r
                    WHERE r.status = 'leased' AND r.next_attempt_at <= p_now
                      AND r.connections && ARRAY(SELECT h.connection FROM held_connections AS h)
                    ORDER BY r.id FOR UPDATE SKIP LOCKED);
    -- The keys with open runs, one index probe each (a loose scan of runs_open_by_key), and each one's first open
    -- run: a claim costs O(keys with open runs), however long each key's backlog is.
    WITH RECURSIVE open_keys (ordering_key) AS (
        (SELECT r.ordering_key FROM runs AS r WHERE r.status IN ('queued', 'leased', 'held', 'dead')
          ORDER BY r.ordering_key LIMIT 1)
        UNION ALL
        SELECT (SELECT r.ordering_key FROM runs AS r
                 WHERE r.status IN ('queued', 'leased', 'held', 'dead') AND r.ordering_key > o.ordering_key
                 ORDER BY r.ordering_key LIMIT 1)
          FROM open_keys AS o WHERE o.ordering_key IS NOT NULL
    ), heads AS (
        SELECT f.seq, f.ordering_key FROM open_keys AS o
         CROSS JOIN LATERAL (SELECT r.seq, r.ordering_key, r.status, r.next_attempt_at FROM runs AS r
                              WHERE r.ordering_key = o.ordering_key
                                AND r.status IN ('queued', 'leased', 'held', 'dead')
                              ORDER BY r.seq LIMIT 1) AS f
         WHERE f.status IN ('queued', 'leased') AND f.next_attempt_at <= p_now
    )
    SELECT array_agg(s.ordering_key) INTO v_keys
      FROM (SELECT k.ordering_key FROM run_keys AS k
             WHERE k.ordering_key IN (SELECT h.ordering_key FROM heads AS h ORDER BY h.seq LIMIT p_limit)
               FOR UPDATE SKIP LOCKED) AS s;
    IF v_keys IS NULL THEN
        RETURN;
    END IF;
    RETURN QUERY
    WITH heads AS (
        SELECT f.seq, f.ordering_key FROM unnest(v_keys) AS k (ordering_key)
         CROSS JOIN LATERAL (SELECT r.seq, r.ordering_key, r.status, r.next_attempt_at FROM runs AS r
                              WHERE r.ordering_key = k.ordering_key
                                AND r.status IN ('queued', 'leased', 'held', 'dead')
                              ORDER BY r.seq LIMIT 1) AS f
         WHERE f.status IN ('queued', 'leased') AND f.next_attempt_at <= p_now
    ), behind AS (
        SELECT h.seq AS head, o.seq, (o.status IN ('queued', 'leased') AND o.next_attempt_at <= p_now) AS due
          FROM heads AS h
         CROSS JOIN LATERAL (SELECT x.seq, x.status, x.next_attempt_at FROM runs AS x
                              WHERE x.ordering_key = h.ordering_key AND x.seq > h.seq
                                AND x.status IN ('queued', 'leased', 'held', 'dead')
                              ORDER BY x.seq LIMIT greatest(p_per_key - 1, 0)) AS o
    ), chosen AS (
        SELECT h.seq, 0::bigint AS depth, h.seq AS head FROM heads AS h
        UNION ALL
        SELECT b.seq, b.depth, b.head
          FROM (SELECT seq, head, bool_and(due) OVER w AS unbroken, row_number() OVER w AS depth
                  FROM behind WINDOW w AS (PARTITION BY head ORDER BY seq)) AS b
         WHERE b.unbroken
    ), limited AS (
        SELECT c.seq, c.head FROM chosen AS c ORDER BY c.depth, c.head LIMIT p_limit
    ), locked AS (
        SELECT r.seq FROM runs AS r
         WHERE r.seq IN (SELECT l.seq FROM limited AS l)
           AND r.status IN ('queued', 'leased') AND r.next_attempt_at <= p_now
         ORDER BY r.id FOR UPDATE SKIP LOCKED
    ), kept AS (
        SELECT l.seq FROM limited AS l
         WHERE NOT EXISTS (SELECT 1 FROM limited AS m
                            WHERE m.head = l.head AND m.seq <= l.seq
                              AND m.seq NOT IN (SELECT k.seq FROM locked AS k))
    )
    UPDATE runs SET status = 'leased', lease_owner = p_worker, lease_until = p_until, next_attempt_at = p_until,
                    leases = runs.leases + 1, updated_at = p_now
     WHERE runs.seq IN (SELECT k.seq FROM kept AS k)
    RETURNING runs.*;
END
$$;

-- Claim inbound messages: due, and no earlier message of the connection leased, held or waiting; each connection
-- claimed by one transaction at a time (a connection another process is claiming is skipped).
CREATE FUNCTION flowhost_claim_inbound(p_worker text, p_until bigint, p_now bigint, p_limit integer)
RETURNS SETOF inbound LANGUAGE plpgsql AS $$
DECLARE
    v_connections text[];
BEGIN
    PERFORM pg_advisory_xact_lock_shared(1718382455, 1);
    UPDATE inbound SET status = 'held', lease_until = NULL, updated_at = p_now
     WHERE seq IN (SELECT m.seq FROM inbound AS m
                    WHERE m.status = 'leased' AND m.next_attempt_at <= p_now
                      AND m.connection IN (SELECT h.connection FROM held_connections AS h)
                    ORDER BY m.id FOR UPDATE SKIP LOCKED);
    SELECT array_agg(c.connection) INTO v_connections
      FROM (SELECT DISTINCT m.connection FROM inbound AS m
             WHERE m.status IN ('received', 'leased') AND m.next_attempt_at <= p_now) AS c
     WHERE pg_try_advisory_xact_lock(1718382457, hashtext(c.connection));
    IF v_connections IS NULL THEN
        RETURN;
    END IF;
    RETURN QUERY
    WITH chosen AS (
        SELECT m.seq FROM inbound AS m
         WHERE m.connection = ANY (v_connections)
           AND m.status IN ('received', 'leased') AND m.next_attempt_at <= p_now
           AND NOT EXISTS (SELECT 1 FROM inbound AS e
                            WHERE e.connection = m.connection AND e.seq < m.seq
                              AND e.status IN ('received', 'leased', 'held')
                              AND (e.status <> 'received' OR e.next_attempt_at > p_now))
         ORDER BY m.seq LIMIT p_limit
    )
    UPDATE inbound SET status = 'leased', lease_owner = p_worker, lease_until = p_until, next_attempt_at = p_until,
                       leases = inbound.leases + 1, updated_at = p_now
     WHERE inbound.seq IN (SELECT c.seq FROM chosen AS c)
       AND inbound.status IN ('received', 'leased') AND inbound.next_attempt_at <= p_now
    RETURNING inbound.*;
END
$$;
