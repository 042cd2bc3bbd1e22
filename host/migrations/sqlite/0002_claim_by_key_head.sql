-- Claim by key head: each ordering key's first open run (the smallest seq among its queued, leased, held and
-- dead runs) is marked `head = 1`, kept true by triggers on every change of openness. A run is claimable when
-- it is a head and due, so a claim reads only the heads of the keys instead of walking the whole queue and
-- probing each run's key (which cost O(queue) per claim when customers have long backlogs).

ALTER TABLE runs ADD COLUMN head INTEGER NOT NULL DEFAULT 0 CHECK (head IN (0, 1));

UPDATE runs SET head = 1
 WHERE seq IN (SELECT MIN(seq) FROM runs WHERE status IN ('queued', 'leased', 'held', 'dead') GROUP BY ordering_key);

-- Claim: the heads that may be due, in arrival order.
CREATE INDEX runs_claimable ON runs (seq, next_attempt_at) WHERE head = 1 AND status IN ('queued', 'leased');
-- The current head of a key, to move it.
CREATE INDEX runs_head_by_key ON runs (ordering_key) WHERE head = 1;

-- After a run of a key opens or closes, the key's head is its smallest open seq (or none).
CREATE TRIGGER runs_head_on_insert AFTER INSERT ON runs
BEGIN
    UPDATE runs SET head = 0
     WHERE ordering_key = NEW.ordering_key AND head = 1
       AND seq IS NOT (SELECT MIN(seq) FROM runs WHERE ordering_key = NEW.ordering_key
                                                  AND status IN ('queued', 'leased', 'held', 'dead'));
    UPDATE runs SET head = 1
     WHERE head = 0 AND seq = (SELECT MIN(seq) FROM runs WHERE ordering_key = NEW.ordering_key
                                                         AND status IN ('queued', 'leased', 'held', 'dead'));
END;

CREATE TRIGGER runs_head_on_status AFTER UPDATE OF status ON runs
WHEN (OLD.status IN ('queued', 'leased', 'held', 'dead')) <> (NEW.status IN ('queued', 'leased', 'held', 'dead'))
BEGIN
    UPDATE runs SET head = 0
     WHERE ordering_key = NEW.ordering_key AND head = 1
       AND seq IS NOT (SELECT MIN(seq) FROM runs WHERE ordering_key = NEW.ordering_key
                                                  AND status IN ('queued', 'leased', 'held', 'dead'));
    UPDATE runs SET head = 1
     WHERE head = 0 AND seq = (SELECT MIN(seq) FROM runs WHERE ordering_key = NEW.ordering_key
                                                         AND status IN ('queued', 'leased', 'held', 'dead'));
END;

CREATE TRIGGER runs_head_on_delete AFTER DELETE ON runs
BEGIN
    UPDATE runs SET head = 1
     WHERE head = 0 AND seq = (SELECT MIN(seq) FROM runs WHERE ordering_key = OLD.ordering_key
                                                         AND status IN ('queued', 'leased', 'held', 'dead'));
END;
