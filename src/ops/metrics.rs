//! Prometheus metrics. Names are constants here, in one place, because
//! dashboards and alerts depend on them. Labels are bounded: topic, partition,
//! reason, status class, kind. Never URLs, tokens, event names or ids.

use prometheus::{
    Encoder, Histogram, HistogramOpts, IntCounter, IntCounterVec, IntGauge, IntGaugeVec, Opts,
    Registry, TextEncoder,
};

pub const EVENTS_CONSUMED: &str = "patterns_connector_events_consumed_total";
pub const EVENTS_DELIVERED: &str = "patterns_connector_events_delivered_total";
pub const EVENTS_FILTERED: &str = "patterns_connector_events_filtered_total";
pub const EVENTS_UNDECODABLE: &str = "patterns_connector_events_undecodable_total";
pub const EVENTS_OVERSIZED: &str = "patterns_connector_events_oversized_total";
pub const BATCHES_DELIVERED: &str = "patterns_connector_batches_delivered_total";
pub const HTTP_REQUESTS: &str = "patterns_connector_http_requests_total";
pub const WEBHOOK_RETRIES: &str = "patterns_connector_webhook_retries_total";
pub const WEBHOOK_REJECTIONS: &str = "patterns_connector_webhook_rejections_total";
pub const REQUEST_DURATION: &str = "patterns_connector_request_duration_seconds";
pub const BATCH_EVENTS: &str = "patterns_connector_batch_events";
pub const BATCH_BYTES: &str = "patterns_connector_batch_bytes";
pub const END_TO_END_LATENCY: &str = "patterns_connector_end_to_end_latency_seconds";
pub const INFLIGHT_REQUESTS: &str = "patterns_connector_inflight_requests";
pub const BUFFERED_BYTES: &str = "patterns_connector_buffered_bytes";
pub const ASSIGNED_PARTITIONS: &str = "patterns_connector_assigned_partitions";
pub const REBALANCES: &str = "patterns_connector_rebalances_total";
pub const COMMITS: &str = "patterns_connector_commits_total";
pub const CONSUME_ERRORS: &str = "patterns_connector_consume_errors_total";
pub const PARTITION_LAG_MESSAGES: &str = "patterns_connector_partition_lag_messages";
pub const PARTITION_LAG_SECONDS: &str = "patterns_connector_partition_lag_seconds";
pub const PARTITION_COMMITTED_OFFSET: &str = "patterns_connector_partition_committed_offset";
pub const PARTITION_HIGH_WATERMARK: &str = "patterns_connector_partition_high_watermark_offset";
pub const PARTITION_NO_COMMIT: &str = "patterns_connector_partition_no_committed_offset";
pub const PARTITION_PAUSED: &str = "patterns_connector_partition_paused";
pub const PARTITION_LAST_COMMIT: &str =
    "patterns_connector_partition_last_commit_timestamp_seconds";
pub const BUILD_INFO: &str = "patterns_connector_build_info";
pub const EVENTS_DEAD_LETTERED: &str = "patterns_connector_events_dead_lettered_total";
pub const BISECTION_REQUESTS: &str = "patterns_connector_bisection_requests_total";
pub const TOPIC_PARTITIONS: &str = "patterns_connector_topic_partitions";
pub const TOPIC_MISSING: &str = "patterns_connector_topic_missing";
pub const STALLED_WORKERS: &str = "patterns_connector_stalled_workers";
pub const PARTITION_STALLED: &str = "patterns_connector_partition_stalled";
pub const PARTITION_BLOCKED: &str = "patterns_connector_partition_blocked";
pub const PARTITION_DEAD_LETTER_FAILING: &str = "patterns_connector_partition_dead_letter_failing";
pub const FATAL_ERRORS: &str = "patterns_connector_kafka_fatal_errors_total";
pub const GROUP_PROTOCOL: &str = "patterns_connector_group_protocol";
pub const PROPERTIES_REMOVED: &str = "patterns_connector_properties_removed_total";
pub const PROPERTIES_HASHED: &str = "patterns_connector_properties_hashed_total";
pub const EVENT_FILTER_ERRORS: &str = "patterns_connector_event_filter_errors_total";

pub const BACKFILL_ROWS_READ: &str = "patterns_connector_backfill_rows_read_total";
pub const BACKFILL_ROWS_DONE: &str = "patterns_connector_backfill_rows_done_total";
pub const BACKFILL_EVENTS_DELIVERED: &str = "patterns_connector_backfill_events_delivered_total";
pub const BACKFILL_ROWS_REMAINING: &str = "patterns_connector_backfill_rows_remaining";
pub const BACKFILL_CURSOR: &str = "patterns_connector_backfill_cursor_timestamp_seconds";
pub const BACKFILL_SOURCE_ERRORS: &str = "patterns_connector_backfill_source_errors_total";
pub const BACKFILL_THROTTLED: &str = "patterns_connector_backfill_throttled_seconds_total";

/// The metrics `patterns-connector backfill` adds to the connector's own.
pub const BACKFILL: &[&str] = &[
    BACKFILL_ROWS_READ,
    BACKFILL_ROWS_DONE,
    BACKFILL_EVENTS_DELIVERED,
    BACKFILL_ROWS_REMAINING,
    BACKFILL_CURSOR,
    BACKFILL_SOURCE_ERRORS,
    BACKFILL_THROTTLED,
];

/// Every metric name the connector exports (histograms add `_bucket`, `_sum`, `_count`).
pub const ALL: &[&str] = &[
    EVENTS_CONSUMED,
    EVENTS_DELIVERED,
    EVENTS_FILTERED,
    EVENTS_UNDECODABLE,
    EVENTS_OVERSIZED,
    BATCHES_DELIVERED,
    HTTP_REQUESTS,
    WEBHOOK_RETRIES,
    WEBHOOK_REJECTIONS,
    REQUEST_DURATION,
    BATCH_EVENTS,
    BATCH_BYTES,
    END_TO_END_LATENCY,
    INFLIGHT_REQUESTS,
    BUFFERED_BYTES,
    ASSIGNED_PARTITIONS,
    REBALANCES,
    COMMITS,
    CONSUME_ERRORS,
    PARTITION_LAG_MESSAGES,
    PARTITION_LAG_SECONDS,
    PARTITION_COMMITTED_OFFSET,
    PARTITION_HIGH_WATERMARK,
    PARTITION_NO_COMMIT,
    PARTITION_PAUSED,
    PARTITION_LAST_COMMIT,
    BUILD_INFO,
    TOPIC_PARTITIONS,
    TOPIC_MISSING,
    STALLED_WORKERS,
    PARTITION_STALLED,
    PARTITION_BLOCKED,
    PARTITION_DEAD_LETTER_FAILING,
    FATAL_ERRORS,
    GROUP_PROTOCOL,
    EVENTS_DEAD_LETTERED,
    BISECTION_REQUESTS,
    PROPERTIES_REMOVED,
    PROPERTIES_HASHED,
    EVENT_FILTER_ERRORS,
];

/// Every metric the connector exports, registered in its own registry.
pub struct Metrics {
    registry: Registry,
    pub events_consumed: IntCounter,
    pub events_delivered: IntCounter,
    pub events_filtered: IntCounterVec,
    pub events_undecodable: IntCounterVec,
    pub events_oversized: IntCounter,
    pub batches_delivered: IntCounter,
    pub http_requests: IntCounterVec,
    pub webhook_retries: IntCounter,
    pub webhook_rejections: IntCounterVec,
    pub request_duration: Histogram,
    pub batch_events: Histogram,
    pub batch_bytes: Histogram,
    pub end_to_end_latency: Histogram,
    pub inflight_requests: IntGauge,
    pub buffered_bytes: IntGauge,
    pub assigned_partitions: IntGauge,
    pub rebalances: IntCounterVec,
    pub commits: IntCounterVec,
    pub consume_errors: IntCounter,
    pub partition_lag_messages: IntGaugeVec,
    pub partition_lag_seconds: prometheus::GaugeVec,
    pub partition_committed_offset: IntGaugeVec,
    pub partition_high_watermark: IntGaugeVec,
    pub partition_no_commit: IntGaugeVec,
    pub partition_paused: IntGaugeVec,
    pub partition_last_commit: prometheus::GaugeVec,
    pub topic_partitions: IntGauge,
    pub topic_missing: IntGaugeVec,
    pub stalled_workers: IntGauge,
    pub partition_stalled: IntGaugeVec,
    pub partition_blocked: IntGaugeVec,
    pub partition_dead_letter_failing: IntGaugeVec,
    pub fatal_errors: IntCounter,
    pub group_protocol: IntGaugeVec,
    pub events_dead_lettered: IntCounterVec,
    pub bisection_requests: IntCounter,
    pub properties_removed: IntCounter,
    pub properties_hashed: IntCounter,
    pub event_filter_errors: IntCounter,
}

const PARTITION_LABELS: &[&str] = &["topic", "partition"];

impl Metrics {
    pub fn new(librdkafka_version: &str) -> Self {
        let registry = Registry::new();
        let r = &registry;
        let counter =
            |name: &str, help: &str| register(r, IntCounter::with_opts(Opts::new(name, help)));
        let counter_vec = |name: &str, help: &str, labels: &[&str]| {
            register(r, IntCounterVec::new(Opts::new(name, help), labels))
        };
        let gauge =
            |name: &str, help: &str| register(r, IntGauge::with_opts(Opts::new(name, help)));
        let int_gauge_vec = |name: &str, help: &str, labels: &[&str]| {
            register(r, IntGaugeVec::new(Opts::new(name, help), labels))
        };
        let partition_gauge = |name: &str, help: &str| {
            register(r, IntGaugeVec::new(Opts::new(name, help), PARTITION_LABELS))
        };
        let float_partition_gauge = |name: &str, help: &str| {
            register(
                r,
                prometheus::GaugeVec::new(Opts::new(name, help), PARTITION_LABELS),
            )
        };
        let histogram = |name: &str, help: &str, buckets: Vec<f64>| {
            register(
                r,
                Histogram::with_opts(HistogramOpts::new(name, help).buckets(buckets)),
            )
        };

        let build_info = register(
            r,
            IntGaugeVec::new(
                Opts::new(
                    BUILD_INFO,
                    "Always 1; labels carry the connector and librdkafka versions.",
                ),
                &["version", "librdkafka_version"],
            ),
        );
        build_info
            .with_label_values(&[env!("CARGO_PKG_VERSION"), librdkafka_version])
            .set(1);

        Metrics {
            events_consumed: counter(EVENTS_CONSUMED, "Messages read from Kafka."),
            events_delivered: counter(EVENTS_DELIVERED, "Events accepted by the webhook (2xx)."),
            events_filtered: counter_vec(EVENTS_FILTERED, "Events left out: by the project, team or event-name filters (project_token, team_id, event_name) or EVENT_FILTERS (events_to_drop, filter_groups, drop_on_property).", &["reason"]),
            events_undecodable: counter_vec(EVENTS_UNDECODABLE, "Messages that are not a PostHog event, by reason.", &["reason"]),
            events_oversized: counter(EVENTS_OVERSIZED, "Single events larger than BATCH_MAX_BYTES (dead-lettered as too_large)."),
            batches_delivered: counter(BATCHES_DELIVERED, "Batches accepted by the webhook."),
            http_requests: counter_vec(HTTP_REQUESTS, "Webhook requests by outcome (2xx, 4xx, 5xx, timeout, connect, error).", &["status_class"]),
            webhook_retries: counter(WEBHOOK_RETRIES, "Webhook requests retried after a failure."),
            webhook_rejections: counter_vec(WEBHOOK_REJECTIONS, "Requests answered with a status in WEBHOOK_REJECT_STATUSES.", &["status_class"]),
            request_duration: histogram(REQUEST_DURATION, "Webhook request duration.", prometheus::exponential_buckets(0.005, 2.0, 14).expect("valid buckets")),
            batch_events: histogram(BATCH_EVENTS, "Events per delivered batch.", prometheus::exponential_buckets(1.0, 2.0, 14).expect("valid buckets")),
            batch_bytes: histogram(BATCH_BYTES, "Body bytes per delivered batch.", prometheus::exponential_buckets(256.0, 4.0, 10).expect("valid buckets")),
            end_to_end_latency: histogram(END_TO_END_LATENCY, "Webhook acknowledgement time minus the Kafka timestamp of the batch's oldest message.", prometheus::exponential_buckets(0.01, 2.0, 18).expect("valid buckets")),
            inflight_requests: gauge(INFLIGHT_REQUESTS, "Webhook requests in flight."),
            buffered_bytes: gauge(BUFFERED_BYTES, "Bytes consumed but not yet delivered, held in memory."),
            assigned_partitions: gauge(ASSIGNED_PARTITIONS, "Partitions assigned to this replica."),
            rebalances: counter_vec(REBALANCES, "Rebalance callbacks by kind (assign, revoke, lost, error).", &["kind"]),
            commits: counter_vec(COMMITS, "Offset commits by result (ok, error).", &["result"]),
            consume_errors: counter(CONSUME_ERRORS, "Errors returned by the Kafka consumer."),
            partition_lag_messages: partition_gauge(PARTITION_LAG_MESSAGES, "High watermark minus committed offset (never negative)."),
            partition_lag_seconds: float_partition_gauge(PARTITION_LAG_SECONDS, "Age of the oldest event not yet delivered; 0 when caught up."),
            partition_committed_offset: partition_gauge(PARTITION_COMMITTED_OFFSET, "Last committed offset (next offset to read); -1 when none."),
            partition_high_watermark: partition_gauge(PARTITION_HIGH_WATERMARK, "Partition high watermark (offset of the next produced message)."),
            partition_no_commit: partition_gauge(PARTITION_NO_COMMIT, "1 while the group has no committed offset for the partition."),
            partition_paused: partition_gauge(PARTITION_PAUSED, "1 while fetching is paused because the partition's buffer is full."),
            partition_last_commit: float_partition_gauge(PARTITION_LAST_COMMIT, "Unix time of the last successful commit that moved the partition's offset (or of its assignment to this replica)."),
            topic_partitions: gauge(TOPIC_PARTITIONS, "Partitions of every topic read (listed or matching KAFKA_TOPIC), from the broker's metadata."),
            topic_missing: int_gauge_vec(TOPIC_MISSING, "1 while a topic listed in KAFKA_TOPIC (or any topic matching its pattern) does not exist; it is read once it appears.", &["topic"]),
            stalled_workers: gauge(STALLED_WORKERS, "Partition workers whose loop has not run for 30 s (deadlocked or starved)."),
            partition_stalled: partition_gauge(PARTITION_STALLED, "1 while the partition has lag but has neither fetched nor delivered for 30 s, for no known reason (not waiting on the webhook, not paused, not blocked): /healthz fails."),
            partition_blocked: partition_gauge(PARTITION_BLOCKED, "1 while DLQ_POLICY=block holds the partition at a message it cannot deliver; it resumes only after the operator acts."),
            partition_dead_letter_failing: partition_gauge(PARTITION_DEAD_LETTER_FAILING, "1 while writes to the dead-letter topic for this partition fail; the partition takes no more messages meanwhile."),
            fatal_errors: counter(FATAL_ERRORS, "Fatal Kafka client errors (e.g. a fenced group.instance.id) the process exits on. A join refused because an earlier incarnation still holds KAFKA_GROUP_INSTANCE_ID is waited out (up to 120 s) and not counted."),
            group_protocol: int_gauge_vec(GROUP_PROTOCOL, "1 for the consumer group protocol this replica speaks (classic, or consumer: KIP-848), as KAFKA_GROUP_PROTOCOL decided it at start-up.", &["protocol"]),
            events_dead_lettered: counter_vec(EVENTS_DEAD_LETTERED, "Messages written to the dead-letter topic, by reason (a decode reason, too_large, webhook_<status>).", &["reason"]),
            bisection_requests: counter(BISECTION_REQUESTS, "Extra webhook requests spent splitting rejected batches."),
            properties_removed: counter(PROPERTIES_REMOVED, "Property values removed by REMOVE_PROPERTIES or KEEP_PROPERTIES (each key at each place)."),
            properties_hashed: counter(PROPERTIES_HASHED, "Property values replaced by their hash (HASH_PROPERTIES)."),
            event_filter_errors: counter(EVENT_FILTER_ERRORS, "Events an EVENT_FILTERS condition could not be evaluated on (where PostHog's Filter Out app threw); they are kept, as PostHog kept them."),
            registry,
        }
    }

    /// Removes every series of a partition this replica no longer owns, so that
    /// replicas never report the same partition twice.
    pub fn forget_partition(&self, topic: &str, partition: i32) {
        let p = partition.to_string();
        let labels = [topic, p.as_str()];
        let _ = self.partition_lag_messages.remove_label_values(&labels);
        let _ = self.partition_lag_seconds.remove_label_values(&labels);
        let _ = self.partition_committed_offset.remove_label_values(&labels);
        let _ = self.partition_high_watermark.remove_label_values(&labels);
        let _ = self.partition_no_commit.remove_label_values(&labels);
        let _ = self.partition_paused.remove_label_values(&labels);
        let _ = self.partition_last_commit.remove_label_values(&labels);
        let _ = self.partition_stalled.remove_label_values(&labels);
        let _ = self.partition_blocked.remove_label_values(&labels);
        let _ = self
            .partition_dead_letter_failing
            .remove_label_values(&labels);
    }

    /// The Prometheus text exposition of every metric.
    pub fn render(&self) -> String {
        let mut out = Vec::new();
        TextEncoder::new()
            .encode(&self.registry.gather(), &mut out)
            .expect("encoding to a Vec cannot fail");
        String::from_utf8(out).expect("the text format is UTF-8")
    }
}

fn register<M: prometheus::core::Collector + Clone + 'static>(
    registry: &Registry,
    metric: prometheus::Result<M>,
) -> M {
    let metric = metric.expect("metric definitions are static and valid");
    registry
        .register(Box::new(metric.clone()))
        .expect("each metric name is registered once");
    metric
}

/// A backfill's progress, registered next to the delivery metrics it shares.
pub struct BackfillMetrics {
    pub rows_read: IntCounter,
    pub rows_done: IntCounter,
    pub events_delivered: IntCounter,
    pub rows_remaining: IntGauge,
    pub cursor: prometheus::Gauge,
    pub source_errors: IntCounter,
    pub throttled: prometheus::Counter,
}

impl BackfillMetrics {
    pub fn new(metrics: &Metrics) -> Self {
        let r = &metrics.registry;
        let counter =
            |name: &str, help: &str| register(r, IntCounter::with_opts(Opts::new(name, help)));
        BackfillMetrics {
            rows_read: counter(BACKFILL_ROWS_READ, "Rows read from the backfill's source."),
            rows_done: counter(BACKFILL_ROWS_DONE, "Rows whose events were delivered, filtered out or dead-lettered, and checkpointed."),
            events_delivered: counter(BACKFILL_EVENTS_DELIVERED, "Backfilled events accepted by the webhook (2xx)."),
            rows_remaining: register(r, IntGauge::with_opts(Opts::new(BACKFILL_ROWS_REMAINING, "Rows left to backfill, from the count taken at the start."))),
            cursor: register(r, prometheus::Gauge::with_opts(Opts::new(BACKFILL_CURSOR, "Ingestion time (created_at, Unix seconds) of the last checkpointed row."))),
            source_errors: counter(BACKFILL_SOURCE_ERRORS, "Failed reads from the backfill's source (each retried)."),
            throttled: register(r, prometheus::Counter::with_opts(Opts::new(BACKFILL_THROTTLED, "Seconds the source asked the backfill to wait (HTTP 429), counted when asked."))),
        }
    }
}

/// `2xx`, `4xx`, `5xx`, ... for an HTTP status.
pub fn status_class(status: u16) -> &'static str {
    match status {
        100..=199 => "1xx",
        200..=299 => "2xx",
        300..=399 => "3xx",
        400..=499 => "4xx",
        _ => "5xx",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_names_other_tools_rely_on_are_exported() {
        let m = Metrics::new("2.12.1");
        m.events_consumed.inc();
        m.partition_lag_messages
            .with_label_values(&["t", "0"])
            .set(3);
        m.partition_lag_seconds
            .with_label_values(&["t", "0"])
            .set(1.5);
        m.partition_committed_offset
            .with_label_values(&["t", "0"])
            .set(7);
        m.partition_high_watermark
            .with_label_values(&["t", "0"])
            .set(10);
        let text = m.render();
        for name in [
            EVENTS_CONSUMED,
            EVENTS_DELIVERED,
            ASSIGNED_PARTITIONS,
            BUILD_INFO,
        ] {
            assert!(text.contains(name), "{name} missing");
        }
        assert!(
            text.contains(
                r#"patterns_connector_partition_lag_messages{partition="0",topic="t"} 3"#
            ),
            "{text}"
        );
        assert!(text.contains(
            r#"patterns_connector_partition_high_watermark_offset{partition="0",topic="t"} 10"#
        ));
    }

    #[test]
    fn forgetting_a_partition_removes_its_series() {
        let m = Metrics::new("x");
        m.partition_lag_messages
            .with_label_values(&["t", "1"])
            .set(3);
        m.partition_paused.with_label_values(&["t", "1"]).set(1);
        m.forget_partition("t", 1);
        let text = m.render();
        assert!(!text.contains(r#"partition="1""#), "{text}");
    }

    #[test]
    fn status_classes() {
        assert_eq!(status_class(204), "2xx");
        assert_eq!(status_class(429), "4xx");
        assert_eq!(status_class(503), "5xx");
    }
}
