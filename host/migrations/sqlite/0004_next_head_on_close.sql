-- Closing a key's head (a completion or a drop clears the run's own `head` mark in the same UPDATE) marks the
-- key's next open run. It was a second statement after the close (`promote_heads`); as a trigger, a batch of
-- completions with no outbox rows is a single statement that commits on its own, without BEGIN and COMMIT:
-- each statement of a transaction is one more round trip between the async task and SQLite's thread, and
-- under load those round trips, not the SQL, were most of the time the write connection was held
-- (BENCHMARKS.md, "Fourth round"). Statements that reopen runs still re-mark their keys themselves (`rehead`).
CREATE TRIGGER runs_next_head_on_close AFTER UPDATE OF head ON runs
WHEN OLD.head = 1 AND NEW.head = 0 AND NEW.status NOT IN ('queued', 'leased', 'held', 'dead')
BEGIN
    UPDATE runs SET head = 1
     WHERE head = 0 AND seq = (SELECT MIN(o.seq) FROM runs o WHERE o.ordering_key = NEW.ordering_key
                                                         AND o.status IN ('queued', 'leased', 'held', 'dead'));
END;
