//! What the service counts, in Prometheus form (`GET /metrics`): events accepted, runs delivered, retried,
//! failed and dead-lettered, inbound messages, queue depth per state, node and run latencies, and what retention
//! purged.

use crate::connector::pacing::PacerStatus;
use crate::flow::{Run, RunStatus};
use crate::store::{HeldBehind, InboundState, Purged, QueueCounts, RunState};
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::{Registry, Unit};
use std::collections::{BTreeMap, VecDeque};
use std::sync::Mutex;
use std::sync::atomic::AtomicU64;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct FlowLabels {
    flow: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct NodeLabels {
    flow: String,
    node: String,
    kind: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct KindLabels {
    kind: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct StateLabels {
    state: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ConnectionLabels {
    connection: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct BehindLabels {
    behind: &'static str,
}

/// The service's counters. Cheap to update from any task.
pub struct Metrics {
    registry: Registry,
    accepted: Counter,
    runs_enqueued: Family<FlowLabels, Counter>,
    delivered: Family<FlowLabels, Counter>,
    failed: Family<FlowLabels, Counter>,
    retried: Family<FlowLabels, Counter>,
    dead_lettered: Family<FlowLabels, Counter>,
    inbound_received: Counter,
    inbound_unmatched_events: Counter,
    node_latency: Family<NodeLabels, Histogram>,
    accept_to_done: Family<FlowLabels, Histogram>,
    runs: Family<StateLabels, Gauge>,
    inbound: Family<StateLabels, Gauge>,
    held_behind: Family<BehindLabels, Gauge>,
    outbox: Gauge,
    purged: Family<KindLabels, Counter>,
    throttled_runs: Family<FlowLabels, Counter>,
    connection_send_rate: Family<ConnectionLabels, Gauge<f64, AtomicU64>>,
    connection_limit: Family<ConnectionLabels, Gauge<f64, AtomicU64>>,
    connection_throttled: Family<ConnectionLabels, Counter>,
    connection_paused: Family<ConnectionLabels, Counter<f64, AtomicU64>>,
    connection_usage: Family<ConnectionLabels, Gauge>,
    store_integrity_problems: Gauge,
    store_integrity_checked: Gauge,
    /// Runs delivered and failed per minute, the last hour of them, for the console's chart.
    recent: Mutex<VecDeque<MinuteCount>>,
}

/// Runs that ended in one minute.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct MinuteCount {
    /// The minute's start, in milliseconds since the Unix epoch.
    pub minute_ms: i64,
    pub delivered: u64,
    /// Failed for good or dead-lettered.
    pub failed: u64,
}

/// How many minutes of [`MinuteCount`]s are kept.
pub const RECENT_MINUTES: usize = 60;

impl std::fmt::Debug for Metrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Metrics").finish_non_exhaustive()
    }
}

fn latency_histogram() -> Histogram {
    // 1 ms to about 65 s.
    Histogram::new(exponential_buckets(0.001, 2.0, 17))
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    pub fn new() -> Self {
        let mut registry = Registry::with_prefix("flowhost");
        let metrics = Metrics {
            accepted: Counter::default(),
            runs_enqueued: Family::default(),
            delivered: Family::default(),
            failed: Family::default(),
            retried: Family::default(),
            dead_lettered: Family::default(),
            inbound_received: Counter::default(),
            inbound_unmatched_events: Counter::default(),
            node_latency: Family::new_with_constructor(latency_histogram),
            accept_to_done: Family::new_with_constructor(latency_histogram),
            runs: Family::default(),
            inbound: Family::default(),
            held_behind: Family::default(),
            outbox: Gauge::default(),
            purged: Family::default(),
            throttled_runs: Family::default(),
            connection_send_rate: Family::default(),
            connection_limit: Family::default(),
            connection_throttled: Family::default(),
            connection_paused: Family::default(),
            connection_usage: Family::default(),
            store_integrity_problems: Gauge::default(),
            store_integrity_checked: Gauge::default(),
            recent: Mutex::new(VecDeque::with_capacity(RECENT_MINUTES + 1)),
            registry: Registry::default(),
        };
        registry.register("events_accepted", "Loyalty events durably accepted", metrics.accepted.clone());
        registry.register("runs_enqueued", "Runs durably enqueued, by flow", metrics.runs_enqueued.clone());
        registry.register("runs_delivered", "Runs that succeeded, by flow", metrics.delivered.clone());
        registry.register("runs_failed", "Runs that failed with a permanent error, by flow", metrics.failed.clone());
        registry.register(
            "runs_retried",
            "Resends scheduled after a retryable error, by flow",
            metrics.retried.clone(),
        );
        registry.register(
            "runs_dead_lettered",
            "Runs whose retries were exhausted (dead letters), by flow",
            metrics.dead_lettered.clone(),
        );
        registry.register(
            "inbound_received",
            "Inbound messages durably recorded (a re-sent message counts again; it is stored once)",
            metrics.inbound_received.clone(),
        );
        registry.register(
            "inbound_unmatched_events",
            "Inbound events no flow maps (kept and reported)",
            metrics.inbound_unmatched_events.clone(),
        );
        registry.register(
            "node_duration_seconds",
            "Time a node took, retries within one execution included",
            metrics.node_latency.clone(),
        );
        registry.register(
            "run_accept_to_done_seconds",
            "Time from acceptance to the run's end (success, failure or dead letter)",
            metrics.accept_to_done.clone(),
        );
        registry.register("queue_runs", "Runs in the store, by state", metrics.runs.clone());
        registry.register("queue_inbound", "Inbound messages in the store, by state", metrics.inbound.clone());
        registry.register(
            "queue_runs_held_behind",
            "Queued and held runs waiting behind an earlier run of their customer and flow that is dead or waiting \
             for its resend",
            metrics.held_behind.clone(),
        );
        registry.register("outbox_events", "Events in the outbox", metrics.outbox.clone());
        registry.register(
            "retention_purged",
            "What retention deleted, by kind: finished runs (with their traces), processed inbound messages, outbox events",
            metrics.purged.clone(),
        );
        registry.register(
            "runs_throttled",
            "Runs put back in the queue because their service refused a call for its rate or its connection was \
             paused (no attempt spent), by flow",
            metrics.throttled_runs.clone(),
        );
        registry.register(
            "connection_send_rate",
            "Calls the connection's service accepted over the last second",
            metrics.connection_send_rate.clone(),
        );
        registry.register(
            "connection_rate_limit",
            "The rate the connection is paced at, in calls per second (0 while it is not paced)",
            metrics.connection_limit.clone(),
        );
        registry.register(
            "connection_throttled",
            "Calls the connection's service refused for their rate (HTTP 429)",
            metrics.connection_throttled.clone(),
        );
        registry.register_with_unit(
            "connection_paused",
            "Time the connection spent paused after its service refused calls for their rate",
            Unit::Seconds,
            metrics.connection_paused.clone(),
        );
        registry.register(
            "connection_rate_limit_used_percent",
            "The percentage of its rate limit the connection's service last said was used, as its connector \
             reported it (absent while it never said)",
            metrics.connection_usage.clone(),
        );
        registry.register(
            "store_integrity_problems",
            "Problems the store's latest integrity check found (0: none; SQLite's quick_check reports at most 10)",
            metrics.store_integrity_problems.clone(),
        );
        registry.register_with_unit(
            "store_integrity_checked_timestamp",
            "When the store's integrity was last checked, in seconds since the Unix epoch (0: not yet)",
            Unit::Seconds,
            metrics.store_integrity_checked.clone(),
        );
        Metrics { registry, ..metrics }
    }

    /// The store's latest integrity check; one that could not run changes nothing.
    pub fn integrity_checked(&self, status: &super::IntegrityStatus) {
        if let Ok(found) = &status.result {
            self.store_integrity_problems.set(i64::try_from(found.problems.len()).unwrap_or(i64::MAX));
            self.store_integrity_checked.set(status.checked_at_ms / 1000);
        }
    }

    /// A run put back in the queue because it was throttled.
    pub fn throttled(&self, flow: &str) {
        self.throttled_runs.get_or_create(&flow_labels(flow)).inc();
    }

    /// The connections' pacing, as it is now (before a render).
    pub fn set_pacing(&self, pacing: &BTreeMap<String, PacerStatus>) {
        for (name, status) in pacing {
            let labels = ConnectionLabels { connection: name.clone() };
            self.connection_send_rate.get_or_create(&labels).set(status.send_rate);
            self.connection_limit.get_or_create(&labels).set(status.limit.unwrap_or(0.0));
            let throttled = self.connection_throttled.get_or_create(&labels);
            throttled.inc_by(status.throttled.saturating_sub(throttled.get()));
            if let Some(used) = status.usage_percent {
                self.connection_usage.get_or_create(&labels).set(i64::from(used));
            }
            let paused = self.connection_paused.get_or_create(&labels);
            let more = status.paused_seconds - paused.get();
            if more > 0.0 {
                paused.inc_by(more);
            }
        }
    }

    pub fn accepted(&self, events: u64) {
        self.accepted.inc_by(events);
    }

    pub fn enqueued(&self, flow: &str) {
        self.runs_enqueued.get_or_create(&flow_labels(flow)).inc();
    }

    pub fn inbound_received(&self) {
        self.inbound_received.inc();
    }

    pub fn inbound_unmatched(&self, events: u64) {
        self.inbound_unmatched_events.inc_by(events);
    }

    pub fn retried(&self, flow: &str) {
        self.retried.get_or_create(&flow_labels(flow)).inc();
    }

    pub fn dead_lettered(&self, flow: &str, accepted_at_ms: i64) {
        self.dead_lettered.get_or_create(&flow_labels(flow)).inc();
        self.observe_done(flow, accepted_at_ms);
        self.count_minute(false);
    }

    /// What a batch of retention deleted.
    pub fn purged(&self, purged: &Purged) {
        for (kind, count) in [("runs", purged.runs), ("inbound", purged.inbound), ("outbox", purged.outbox)] {
            self.purged.get_or_create(&KindLabels { kind }).inc_by(count);
        }
    }

    /// A finished run: its end state and the latency of each node it executed (not replayed ones).
    pub fn finished(&self, run: &Run, accepted_at_ms: i64) {
        let family = match run.status {
            RunStatus::Succeeded => &self.delivered,
            _ => &self.failed,
        };
        family.get_or_create(&flow_labels(&run.flow_id)).inc();
        self.observe_done(&run.flow_id, accepted_at_ms);
        self.count_minute(run.status == RunStatus::Succeeded);
        self.observe_nodes(run);
    }

    /// The nodes of a run trace, e.g. of a run stopped for a resend.
    pub fn observe_nodes(&self, run: &Run) {
        for node in &run.nodes {
            let labels = NodeLabels { flow: run.flow_id.clone(), node: node.node_id.clone(), kind: node.kind.clone() };
            self.node_latency.get_or_create(&labels).observe(node.duration_ms as f64 / 1000.0);
        }
    }

    fn count_minute(&self, delivered: bool) {
        let minute_ms = crate::store::now_ms() / 60_000 * 60_000;
        let mut recent = self.recent.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        if recent.back().is_none_or(|last| last.minute_ms < minute_ms) {
            recent.push_back(MinuteCount { minute_ms, ..MinuteCount::default() });
            while recent.len() > RECENT_MINUTES {
                recent.pop_front();
            }
        }
        if let Some(last) = recent.back_mut() {
            if delivered {
                last.delivered += 1;
            } else {
                last.failed += 1;
            }
        }
    }

    /// Runs delivered and failed in each of the last [`RECENT_MINUTES`] minutes up to `now_ms`'s, oldest first
    /// (minutes without any are zeros). Counted since this process started.
    pub fn per_minute(&self, now_ms: i64) -> Vec<MinuteCount> {
        let current = now_ms / 60_000 * 60_000;
        let recent = self.recent.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        (0..RECENT_MINUTES as i64)
            .rev()
            .map(|back| {
                let minute_ms = current - back * 60_000;
                recent
                    .iter()
                    .find(|m| m.minute_ms == minute_ms)
                    .copied()
                    .unwrap_or(MinuteCount { minute_ms, ..MinuteCount::default() })
            })
            .collect()
    }

    fn observe_done(&self, flow: &str, accepted_at_ms: i64) {
        let elapsed_ms = crate::store::now_ms().saturating_sub(accepted_at_ms).max(0);
        self.accept_to_done.get_or_create(&flow_labels(flow)).observe(elapsed_ms as f64 / 1000.0);
    }

    /// The Prometheus text exposition, with the queue gauges set from `counts`.
    pub fn render(&self, counts: &QueueCounts, held_behind: &HeldBehind) -> String {
        for state in RunState::ALL {
            let value = i64::try_from(counts.runs.get(state)).unwrap_or(i64::MAX);
            self.runs.get_or_create(&StateLabels { state: state.as_str().to_string() }).set(value);
        }
        for state in InboundState::ALL {
            let value = i64::try_from(counts.inbound.get(state)).unwrap_or(i64::MAX);
            self.inbound.get_or_create(&StateLabels { state: state.as_str().to_string() }).set(value);
        }
        for (behind, value) in [("dead", held_behind.dead), ("resend", held_behind.resend)] {
            self.held_behind.get_or_create(&BehindLabels { behind }).set(i64::try_from(value).unwrap_or(i64::MAX));
        }
        self.outbox.set(i64::try_from(counts.outbox).unwrap_or(i64::MAX));
        let mut text = String::new();
        // Encoding into a String cannot fail.
        let _ = prometheus_client::encoding::text::encode(&mut text, &self.registry);
        text
    }
}

fn flow_labels(flow: &str) -> FlowLabels {
    FlowLabels { flow: flow.to_string() }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_counters_gauges_and_histograms() {
        let metrics = Metrics::new();
        metrics.accepted(3);
        metrics.retried("point-add");
        metrics.purged(&Purged { runs: 500, inbound: 3, outbox: 0 });
        metrics.purged(&Purged { runs: 20, inbound: 0, outbox: 7 });
        let mut counts = QueueCounts::default();
        counts.runs.queued = 7;
        counts.outbox = 2;
        let text = metrics.render(&counts, &HeldBehind { dead: 4, resend: 0 });
        assert!(text.contains("flowhost_events_accepted_total 3"), "{text}");
        assert!(text.contains(r#"flowhost_runs_retried_total{flow="point-add"} 1"#), "{text}");
        assert!(text.contains(r#"flowhost_queue_runs{state="queued"} 7"#), "{text}");
        assert!(text.contains(r#"flowhost_queue_runs{state="dead"} 0"#), "{text}");
        assert!(text.contains("flowhost_outbox_events 2"), "{text}");
        assert!(text.contains(r#"flowhost_queue_runs_held_behind{behind="dead"} 4"#), "{text}");
        assert!(text.contains(r#"flowhost_queue_runs_held_behind{behind="resend"} 0"#), "{text}");
        assert!(text.contains(r#"flowhost_retention_purged_total{kind="runs"} 520"#), "{text}");
        assert!(text.contains(r#"flowhost_retention_purged_total{kind="inbound"} 3"#), "{text}");
        assert!(text.contains(r#"flowhost_retention_purged_total{kind="outbox"} 7"#), "{text}");
        assert!(text.ends_with("# EOF\n"), "{text}");
    }

    #[test]
    fn counts_runs_delivered_and_failed_per_minute_for_the_last_hour() {
        let metrics = Metrics::new();
        metrics.dead_lettered("f", 0);
        metrics.dead_lettered("f", 0);
        let now = crate::store::now_ms();
        let minutes = metrics.per_minute(now);
        assert_eq!(minutes.len(), RECENT_MINUTES);
        let last = minutes.last().unwrap();
        assert_eq!((last.minute_ms, last.delivered, last.failed), (now / 60_000 * 60_000, 0, 2));
        assert!(minutes[..RECENT_MINUTES - 1].iter().all(|m| m.delivered == 0 && m.failed == 0));
        assert!(minutes.windows(2).all(|w| w[1].minute_ms - w[0].minute_ms == 60_000));
        let an_hour_later = metrics.per_minute(now + 3_600_000);
        assert!(an_hour_later.iter().all(|m| m.failed == 0), "older minutes fall out");
    }

    #[test]
    fn the_store_integrity_gauges_show_the_latest_check_that_ran() {
        use crate::store::Integrity;
        let metrics = Metrics::new();
        let render = || metrics.render(&QueueCounts::default(), &HeldBehind::default());
        assert!(render().contains("flowhost_store_integrity_problems 0\n"), "{}", render());
        let found = |problems: &[&str]| Integrity {
            check: "PRAGMA quick_check".into(),
            problems: problems.iter().map(|p| p.to_string()).collect(),
        };
        let status = |at: i64, result| super::super::IntegrityStatus { checked_at_ms: at, result };
        metrics.integrity_checked(&status(1_700_000_000_000, Ok(found(&["Page 7: bad", "Page 9: bad"]))));
        let text = render();
        assert!(text.contains("flowhost_store_integrity_problems 2\n"), "{text}");
        assert!(text.contains("flowhost_store_integrity_checked_timestamp_seconds 1700000000\n"), "{text}");
        // A check that could not run changes neither.
        metrics.integrity_checked(&status(1_800_000_000_000, Err("not reachable".into())));
        assert_eq!(render(), text);
        metrics.integrity_checked(&status(1_800_000_000_000, Ok(found(&[]))));
        assert!(render().contains("flowhost_store_integrity_problems 0\n"), "{}", render());
    }
}
