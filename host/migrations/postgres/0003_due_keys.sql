-- Claims read the keys that may be due, not every key with open runs. Migration 0001's claim probed each key with
-- open runs (a loose scan of runs_open_by_key) on every claim, whether it found work or not; with N processes
-- each claiming, the database's work grew with N for the same runs (BENCHMARKS.md, "PostgreSQL: many processes").
--
-- Two places say when a key may next be claimable:
--
-- - `run_keys.due`: written only by a claim, under the key's row lock and from a snapshot taken after it: when the
--   key's first open run is due (its next attempt, or its lease's end), or NULL when the key has no open run or its
--   first is dead or held. A claim looks at the keys whose `due` has come.
-- - `key_wakeups`: a row for a key each time something may have made its first open run claimable sooner than its
--   `due` says: an enqueue, a completion, a resend, a release, an operator's retry or drop, a released connection,
--   a lease moved earlier.
--   These statements only insert, so they never wait for a claim, nor a claim for them; a claim that locks a key
--   deletes the key's wake-ups it can see before it reads the key's runs, so whatever a deleted wake-up announced is
--   in what it reads, and a wake-up it could not see stays for the next claim.
--
-- So `due` (or a wake-up) is never later than when a key can be claimed; a key looked at too early costs one probe
-- and gets its `due` right.

ALTER TABLE run_keys ADD COLUMN due bigint;
-- Every key is looked at once by the claims after the upgrade.
UPDATE run_keys SET due = 0;
CREATE INDEX run_keys_due ON run_keys (due) WHERE due IS NOT NULL;

CREATE TABLE key_wakeups (
    ordering_key text NOT NULL,
    due          bigint -- when to look, or NULL for at once (which clock skew between processes cannot delay)
);
CREATE INDEX key_wakeups_due ON key_wakeups (due);

-- Enqueue: as in migration 0001, and a wake-up for each key enqueued to.
CREATE OR REPLACE FUNCTION flowhost_enqueue(p_ids text[], p_flow_ids text[], p_versions text[], p_connections text[],
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
    INSERT INTO key_wakeups (ordering_key, due) SELECT DISTINCT k, NULL::bigint FROM unnest(p_keys) AS k;
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
-- 2. The keys that may be due (their `due` has come, or they have a wake-up that has), longest due first, are
--    locked: `FOR UPDATE SKIP LOCKED` on their run_keys rows, so a key another process is claiming is skipped
--    rather than taken twice or waited for. More keys than runs are asked for are locked, since some turn out to
--    have nothing due; when fewer keys may be due than that, the runs are the oldest due of all.
-- 3. The locked keys' wake-ups that have come are deleted.
-- 4. In a new snapshot, taken once the keys are locked and their wake-ups deleted, each locked key's claimable runs
--    are chosen, and locked in `id` order (skipping rows another transaction holds, such as a late completion of an
--    expired lease); a key keeps its chosen runs up to the first one it could not lock, so a later run never goes
--    without the earlier runs of its key. Those are leased.
-- 5. Each locked key's `due` becomes when its first open run is due now (its lease's end if it was just claimed).
-- 6. If nothing was leased and the batch was full, steps 2 to 5 go again with keys not yet looked at in this call.
--
-- Every multi-row write of runs locks its rows in `id` order, or skips what it cannot lock, so writers never wait
-- for each other in a cycle. The runs chosen are looked up one by one by key and `seq`, not by joining the queue to
-- them: with statistics from when the table was small (a new database, before autovacuum's first ANALYZE), the
-- planner would scan every queued run in each claim.
CREATE OR REPLACE FUNCTION flowhost_claim_runs(p_worker text, p_until bigint, p_now bigint, p_limit integer,
                                               p_per_key integer)
RETURNS SETOF runs LANGUAGE plpgsql AS $$
DECLARE
    v_keys text[];
    v_seen text[] := '{}';
    v_batch integer := least(p_limit, 100000) * 2 + 16;
    v_claimed bigint;
BEGIN
    PERFORM pg_advisory_xact_lock_shared(1718382455, 1);
    IF EXISTS (SELECT FROM held_connections) THEN
        UPDATE runs SET status = 'held', lease_until = NULL, updated_at = p_now
         WHERE seq IN (SELECT r.seq FROM runs AS r
                        WHERE r.status = 'leased' AND r.next_attempt_at <= p_now
                          AND r.connections && ARRAY(SELECT h.connection FROM held_connections AS h)
                        ORDER BY r.id FOR UPDATE SKIP LOCKED);
    END IF;
    -- Keys that turn out to have nothing due (a dead letter's, a key drained meanwhile) are looked at in batches
    -- until a batch yields runs or none are left, so a backlog of such keys delays due runs by one call, not by a
    -- poll interval per batch. A key is looked at once per call (one whose due run another transaction holds stays
    -- due, for the next call).
    FOR v_round IN 1..64 LOOP
        SELECT array_agg(s.ordering_key) INTO v_keys
          FROM (SELECT k.ordering_key FROM run_keys AS k
                  JOIN (SELECT c.ordering_key, min(c.due) AS due
                          FROM (SELECT d.ordering_key, d.due FROM run_keys AS d WHERE d.due <= p_now
                                UNION ALL
                                SELECT w.ordering_key, coalesce(w.due, p_now) FROM key_wakeups AS w
                                 WHERE w.due IS NULL OR w.due <= p_now) AS c
                         GROUP BY c.ordering_key) AS c ON c.ordering_key = k.ordering_key
                 WHERE NOT k.ordering_key = ANY (v_seen)
                 ORDER BY c.due, k.ordering_key
                 LIMIT v_batch
                   FOR UPDATE OF k SKIP LOCKED) AS s;
        EXIT WHEN v_keys IS NULL;
        DELETE FROM key_wakeups AS w WHERE (w.due IS NULL OR w.due <= p_now) AND w.ordering_key = ANY (v_keys);
        RETURN QUERY
        WITH heads AS (
            SELECT f.seq, f.id, f.ordering_key FROM unnest(v_keys) AS k (ordering_key)
             CROSS JOIN LATERAL (SELECT r.seq, r.id, r.ordering_key, r.status, r.next_attempt_at FROM runs AS r
                                  WHERE r.ordering_key = k.ordering_key
                                    AND r.status IN ('queued', 'leased', 'held', 'dead')
                                  ORDER BY r.seq LIMIT 1) AS f
             WHERE f.status IN ('queued', 'leased') AND f.next_attempt_at <= p_now
        ), behind AS (
            SELECT h.seq AS head, h.ordering_key, o.seq, o.id,
                   (o.status IN ('queued', 'leased') AND o.next_attempt_at <= p_now) AS due
              FROM heads AS h
             CROSS JOIN LATERAL (SELECT x.seq, x.id, x.status, x.next_attempt_at FROM runs AS x
                                  WHERE x.ordering_key = h.ordering_key AND x.seq > h.seq
                                    AND x.status IN ('queued', 'leased', 'held', 'dead')
                                  ORDER BY x.seq LIMIT greatest(p_per_key - 1, 0)) AS o
        ), chosen AS (
            SELECT h.seq, h.id, h.ordering_key, 0::bigint AS depth, h.seq AS head FROM heads AS h
            UNION ALL
            SELECT b.seq, b.id, b.ordering_key, b.depth, b.head
              FROM (SELECT seq, id, ordering_key, head, bool_and(due) OVER w AS unbroken, row_number() OVER w AS depth
                      FROM behind WINDOW w AS (PARTITION BY head ORDER BY seq)) AS b
             WHERE b.unbroken
        ), limited AS (
            SELECT c.seq, c.id, c.ordering_key, c.head FROM chosen AS c ORDER BY c.depth, c.head LIMIT p_limit
        ), locked AS (
            -- One lookup by key and seq per run, in `id` order.
            SELECT r.seq FROM (SELECT l.seq, l.ordering_key FROM limited AS l ORDER BY l.id) AS l
             CROSS JOIN LATERAL (SELECT x.seq FROM runs AS x
                                  WHERE x.ordering_key = l.ordering_key AND x.seq = l.seq
                                    AND x.status IN ('queued', 'leased') AND x.next_attempt_at <= p_now
                                    FOR UPDATE SKIP LOCKED) AS r
        ), kept AS (
            SELECT l.seq FROM limited AS l
             WHERE NOT EXISTS (SELECT 1 FROM limited AS m
                                WHERE m.head = l.head AND m.seq <= l.seq
                                  AND m.seq NOT IN (SELECT k.seq FROM locked AS k))
        )
        UPDATE runs SET status = 'leased', lease_owner = p_worker, lease_until = p_until, next_attempt_at = p_until,
                        leases = runs.leases + 1, updated_at = p_now
         WHERE runs.seq = ANY (ARRAY(SELECT k.seq FROM kept AS k))
        RETURNING runs.*;
        GET DIAGNOSTICS v_claimed = ROW_COUNT;
        UPDATE run_keys AS k
           SET due = (SELECT CASE WHEN f.status IN ('queued', 'leased') THEN f.next_attempt_at END FROM runs AS f
                       WHERE f.ordering_key = k.ordering_key AND f.status IN ('queued', 'leased', 'held', 'dead')
                       ORDER BY f.seq LIMIT 1)
         WHERE k.ordering_key = ANY (v_keys);
        EXIT WHEN v_claimed > 0 OR cardinality(v_keys) < v_batch;
        v_seen := v_seen || v_keys;
    END LOOP;
END
$$;
