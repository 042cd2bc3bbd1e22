-- Retention (host/src/store/postgres/retention.rs): finished runs and processed inbound messages by age, and whether
-- a trace block is still pointed at, each found by an index, so a purge costs what it deletes.
CREATE INDEX runs_finished_by_age ON runs (updated_at) WHERE status IN ('succeeded', 'failed', 'dropped');
CREATE INDEX inbound_processed_by_age ON inbound (updated_at) WHERE status = 'processed';
CREATE INDEX runs_by_trace_block ON runs (trace_block) WHERE trace_block IS NOT NULL;
