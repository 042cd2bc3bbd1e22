-- Retention (host/src/store/sqlite/retention.rs) deletes finished runs, and with them the trace blocks no run
-- points at any more. A block is shared by a batch of runs, so deleting runs must find whether any other run
-- still points at their blocks: this index answers it with one probe per block instead of a scan of `runs`.
-- (Finished runs and processed inbound messages are found by age in `runs_due` and `inbound_due`: the statements
-- that close them set `next_attempt_at` to the time they closed.)
CREATE INDEX runs_by_trace_block ON runs (trace_block) WHERE trace_block IS NOT NULL;

-- A run completed again after an operator's retry, or dead-lettered then, points at a new block (or at none): the
-- block it pointed at goes once no run points at it. Only such a run has an old block, so a first completion
-- costs only the check of the condition.
CREATE TRIGGER runs_unused_trace_block_on_update AFTER UPDATE OF trace_block ON runs
WHEN OLD.trace_block IS NOT NULL AND OLD.trace_block IS NOT NEW.trace_block
BEGIN
    DELETE FROM trace_blocks WHERE id = OLD.trace_block
       AND NOT EXISTS (SELECT 1 FROM runs WHERE trace_block = OLD.trace_block);
END;

-- The blocks left behind so far by such runs, or by a crash between a block's insert and its runs' update.
DELETE FROM trace_blocks WHERE NOT EXISTS (SELECT 1 FROM runs WHERE runs.trace_block = trace_blocks.id);
