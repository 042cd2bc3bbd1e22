-- Retention (host/src/store/sqlite/retention.rs) deletes finished runs, and with them the trace blocks no run
-- points at any more. A block is shared by a batch of runs, so deleting runs must find whether any other run
-- still points at their blocks: this index answers it with one probe per block instead of a scan of `runs`.
-- (Finished runs and processed inbound messages are found by age in `runs_due` and `inbound_due`: the statements
-- that close them set `next_attempt_at` to the time they closed.)
CREATE INDEX runs_by_trace_block ON runs (trace_block) WHERE trace_block IS NOT NULL;
