//! The consumer loop: the one thread that owns the Kafka consumer.
//!
//! It polls, hands each message to its partition's worker, stores the offsets
//! the workers report as delivered (librdkafka's auto-commit then commits only
//! stored offsets), pauses partitions whose buffers are full, and handles
//! rebalances in librdkafka's callbacks, which run on this same thread:
//! - revoke: each revoked partition's worker drains (finishes its in-flight
//!   batch until the deadline), then its final offset is stored and committed
//!   synchronously, before the partition goes to another member;
//! - lost (session timed out): workers are dropped without committing;
//! - assign: a fresh worker per new partition, starting at the committed offset.
//!
//! It is a plain thread, not a task, because librdkafka's callbacks are
//! synchronous and a revocation must block until the drain is done.
//!
//! - this file: the shared `Context`, building the consumer, the poll loop;
//! - `rebalance`: assign, revoke, lost, librdkafka's rebalance and commit callbacks;
//! - `start`: where an assigned partition starts (`START_AT`, committed offsets);
//! - `commit`: storing delivered offsets, synchronous and shutdown commits;
//! - `handover`: messages to the workers in chunks, pacing, backpressure;
//! - `observe`: librdkafka's statistics, errors and logs (lag, stalls, health,
//!   the wedge watch).

use std::collections::{BTreeSet, HashMap};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock};
use std::time::{Duration, Instant, SystemTime};

use rdkafka::config::{ClientConfig, RDKafkaLogLevel};
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::error::KafkaError;
use rdkafka::message::Message as _;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tracing::{error, info, warn};

use crate::config::{Config, StartAt};
use crate::kafka::close::{self, Closed};
use crate::kafka::connection::KafkaLogs;
use crate::kafka::group_protocol::GroupProtocol;
use crate::kafka::topics;
use crate::kafka::watermarks;
use crate::kafka::wedge::WedgeWatch;
use crate::ops::health::Health;
use crate::ops::lag::LagTracker;
use crate::ops::metrics::Metrics;
use crate::partition::{self, Message, Progress};
use crate::topic_partition::TopicPartition;

pub type Consumer_ = BaseConsumer<Context>;

mod commit;
mod first_read;
mod handover;
mod observe;
mod rebalance;
pub mod rejoin;
mod start;

use commit::*;
use handover::*;

const METADATA_REFRESH_KEY: &str = "topic.metadata.refresh.interval.ms";

/// Shared by the consumer loop and librdkafka's callbacks.
pub struct Context {
    runtime: tokio::runtime::Handle,
    deps: Arc<partition::Deps>,
    metrics: Arc<Metrics>,
    health: Arc<Health>,
    drain_timeout: Duration,
    /// When SIGTERM arrived plus `SHUTDOWN_TIMEOUT_MS`: the one deadline of the
    /// whole shutdown, a revocation drain in progress included, so that the
    /// process exits within the orchestrator's grace period.
    shutdown_deadline: Arc<OnceLock<tokio::time::Instant>>,
    workers: Mutex<HashMap<TopicPartition, partition::Handle>>,
    next_generation: AtomicU64,
    /// Topic names seen, shared by every `TopicPartition` of the topic.
    topic_names: Mutex<HashMap<String, Arc<str>>>,
    lag: Mutex<LagTracker>,
    /// Failed commits so far, to log repeats less often.
    commit_failures: AtomicU64,
    /// Commit callbacks served so far (the shutdown waits for its own).
    commit_callbacks: AtomicU64,
    /// librdkafka's log and error lines, rate-limited.
    logs: KafkaLogs,
    /// Set by an error the connector cannot recover from (bad credentials).
    fatal: Mutex<Option<String>>,
    fatal_seen: AtomicBool,
    /// Whether this consumer was ever a member of the group (assigned, or
    /// steady with nothing assigned).
    ever_joined: AtomicBool,
    /// The group protocol this consumer speaks.
    protocol: GroupProtocol,
    /// Where a new group starts (see `Context::resolve_start`).
    start_at: StartAt,
    /// The topics read that existed at the first `START_AT` look.
    topics_first_seen: OnceLock<BTreeSet<String>>,
    /// Rebalances librdkafka skipped since the last rebalance callback (`wedge.rs`).
    wedge: Mutex<WedgeWatch>,
    /// Where the group started reading partitions it had no commit for,
    /// recorded in `state` (when STATE_TOPIC is available).
    first_reads: first_read::FirstReads,
    state: Option<crate::kafka::state::StateTopic>,
    /// The operator set `debug=` and wants librdkafka's debug lines; else
    /// only the `cgrp` lines the wedge watch reads are produced, and dropped.
    debug_asked: bool,
}

impl Context {
    fn workers(&self) -> MutexGuard<'_, HashMap<TopicPartition, partition::Handle>> {
        self.workers
            .lock()
            .expect("no code panics while holding the workers lock")
    }

    /// The shared name of a topic this replica reads: one allocation per
    /// topic, not one per message.
    /// Writes where the group started reading a partition, in the background.
    fn record_start(&self, start: crate::kafka::state::StreamStart) {
        if let Some(state) = &self.state {
            state.record_stream_start(&self.runtime, start);
        }
    }

    /// A partition placed without a commit of the group's.
    fn placed_without_commit(&self, tp: &TopicPartition) {
        let start = self
            .first_reads
            .placed(tp, chrono::Utc::now().timestamp_millis());
        self.record_start(start);
    }

    fn topic_name(&self, topic: &str) -> Arc<str> {
        let mut names = self.topic_names.lock().expect("topic names lock");
        if let Some(name) = names.get(topic) {
            return name.clone();
        }
        let name: Arc<str> = topic.into();
        names.insert(topic.to_owned(), name.clone());
        name
    }

    /// Records the first error the client cannot recover from; the poll
    /// loop takes it and shuts down, and the process exits non-zero, so the
    /// orchestrator restarts it instead of it beating on as a member that
    /// consumes nothing. Later ones (while shutting down) are not counted.
    fn set_fatal(&self, reason: String) {
        if self.fatal_seen.swap(true, Ordering::Relaxed) {
            return;
        }
        self.health.set_joined(false);
        *self.fatal.lock().expect("fatal lock") = Some(reason);
    }
}

/// What the watermark probe and the topic check read and report.
impl watermarks::Probed for Context {
    /// The topic-partitions assigned to this replica, sorted.
    fn assigned_partitions(&self) -> Vec<TopicPartition> {
        let mut partitions: Vec<TopicPartition> = self.workers().keys().cloned().collect();
        partitions.sort_unstable();
        partitions
    }

    /// Kept only while the partition is still assigned here.
    fn probed_high_watermark(&self, tp: &TopicPartition, high_watermark: i64) {
        let workers = self.workers();
        if workers.contains_key(tp) {
            let mut lag = self.lag.lock().expect("lag lock");
            lag.probed_high(tp, high_watermark);
        }
    }

    /// The topic check's result (`kafka::watermarks`): partitions of the
    /// topics read, and which listed topics are missing.
    fn topics_checked(&self, listed: &[String], missing: &[String], partitions: usize) {
        self.metrics.topic_partitions.set(partitions as i64);
        for topic in listed {
            let value = i64::from(missing.contains(topic));
            self.metrics
                .topic_missing
                .with_label_values(&[topic.as_str()])
                .set(value);
        }
    }
}

/// Builds the consumer with the settings the delivery guarantee needs.
pub fn create(
    config: &Config,
    runtime: tokio::runtime::Handle,
    deps: Arc<partition::Deps>,
    metrics: Arc<Metrics>,
    health: Arc<Health>,
    state: Option<crate::kafka::state::StateTopic>,
    protocol: GroupProtocol,
) -> anyhow::Result<Consumer_> {
    // The brokers and the connection settings every client shares (`kafka::connection`).
    let connection = crate::kafka::connection::Connection::from_config(config);
    let mut client: ClientConfig = connection.client_config("patterns-connector");
    client
        .set("group.id", &config.kafka_consumer_group)
        .set("group.protocol", protocol.as_str())
        // Where a partition without a commit, or with one out of range,
        // starts: never past an event. START_AT applies to a new group only,
        // resolved and committed at its first assignment
        // (`Context::resolve_start`).
        .set("auto.offset.reset", "earliest")
        // librdkafka's prefetch queue (all partitions together): small, since
        // the workers' own queues are the buffer. When it is full, fetching
        // resumes 10 ms after the loop takes messages again, not the default 1 s.
        .set("queued.max.messages.kbytes", "4096")
        .set("fetch.queue.backoff.ms", "10")
        .set("statistics.interval.ms", "1000")
        .set("enable.auto.commit", "true")
        .set(
            "auto.commit.interval.ms",
            config.commit_interval.as_millis().to_string(),
        )
        .set_log_level(RDKafkaLogLevel::Warning);
    if protocol == GroupProtocol::Classic {
        // Cooperative rebalancing: adding a replica moves only the
        // partitions it takes. (Under the new protocol the brokers assign,
        // always incrementally.)
        client.set("partition.assignment.strategy", "cooperative-sticky");
    }
    // Static membership: the same identity across restarts.
    if let Some(instance) = &config.group_instance_id {
        client.set("group.instance.id", instance);
    }
    // How soon a listed topic created later, a new topic matching the
    // pattern, or partitions added to a topic are read: librdkafka finds them
    // at its next metadata refresh (its default is 5 minutes). A connection
    // property, so `client_config` may already hold the operator's value.
    if client.get(METADATA_REFRESH_KEY).is_none() {
        client.set(
            METADATA_REFRESH_KEY,
            topics::METADATA_REFRESH.as_millis().to_string(),
        );
    }
    // Then the user's own consumer settings (group membership, fetching),
    // which win over the defaults above.
    for (key, value) in connection.consumer_properties() {
        client.set(key, value);
    }
    // `debug=<contexts>` asks for librdkafka's debug lines: let them through.
    // Without it, under the classic protocol, the group's (`cgrp`) lines are
    // produced for the wedge watch (`wedge.rs`) and not logged. The new
    // protocol has no such state to get stuck in (the brokers assign, and
    // librdkafka rejoins when fenced): no watch, no lines.
    let debug_asked = client.get("debug").is_some();
    if protocol == GroupProtocol::Classic || debug_asked {
        let contexts = match protocol {
            GroupProtocol::Classic => debug_contexts(client.get("debug")),
            GroupProtocol::Consumer => client.get("debug").unwrap_or_default().to_owned(),
        };
        client.set("debug", contexts);
        client.set_log_level(RDKafkaLogLevel::Debug);
    }
    // The guarantee: librdkafka stores nothing by itself; only offsets the
    // workers report as delivered are stored, and auto-commit commits those.
    client.set("enable.auto.offset.store", "false");

    let context = Context {
        runtime,
        deps,
        metrics,
        health,
        drain_timeout: config.shutdown_timeout,
        shutdown_deadline: Arc::default(),
        workers: Mutex::new(HashMap::new()),
        next_generation: AtomicU64::new(0),
        topic_names: Mutex::default(),
        lag: Mutex::new(LagTracker::default()),
        commit_failures: AtomicU64::new(0),
        commit_callbacks: AtomicU64::new(0),
        logs: KafkaLogs::default(),
        fatal: Mutex::new(None),
        fatal_seen: AtomicBool::new(false),
        ever_joined: AtomicBool::new(false),
        protocol,
        start_at: config.start_at,
        topics_first_seen: OnceLock::new(),
        wedge: Mutex::new(WedgeWatch::default()),
        first_reads: first_read::FirstReads::default(),
        state,
        debug_asked,
    };
    let consumer: Consumer_ = client.create_with_context(context).map_err(|e| {
        anyhow::anyhow!(
            "cannot create the Kafka consumer (check KAFKA_HOSTS and KAFKA_PROPERTIES): {e}"
        )
    })?;
    let refresh = consumer
        .context()
        .deps
        .config
        .kafka_properties
        .get(METADATA_REFRESH_KEY)
        .and_then(|v| v.parse::<u64>().ok())
        .map_or(topics::METADATA_REFRESH, Duration::from_millis);
    watermarks::spawn(config, consumer.context(), refresh)?;
    let subscription = topics::subscription(config);
    let names: Vec<&str> = subscription.iter().map(String::as_str).collect();
    consumer
        .subscribe(&names)
        .map_err(|e| anyhow::anyhow!("cannot subscribe to KAFKA_TOPIC {}: {e}", names.join(",")))?;
    Ok(consumer)
}

/// Runs the consumer loop until `shutdown`, then drains every worker, commits
/// what was delivered and leaves the group.
pub fn run(
    consumer: Consumer_,
    progress: &mut mpsc::UnboundedReceiver<Progress>,
    max_buffered_bytes: usize,
    shutdown_timeout: Duration,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    let ctx = consumer.context();
    {
        let (deadline, shutdown) = (ctx.shutdown_deadline.clone(), shutdown.clone());
        ctx.runtime.spawn(async move {
            shutdown.cancelled().await;
            let _ = deadline.set(tokio::time::Instant::now() + shutdown_timeout);
        });
    }
    let mut last_gauges = Instant::now();
    let mut fatal = None;
    let mut pacing_since: Option<Instant> = None;
    let mut handover = Handover::default();
    let mut last_topic: Option<Arc<str>> = None;
    while !shutdown.is_cancelled() {
        ctx.health.beat(SystemTime::now());
        if let Some((code, reason)) = consumer.client().fatal_error() {
            ctx.set_fatal(format!("fatal Kafka client error ({code:?}): {reason}"));
        }
        let fatal_reason = ctx.fatal.lock().expect("fatal lock").take();
        if let Some(reason) = fatal_reason {
            // The join's answer, with nothing assigned: no drain, no
            // commit, and the process goes on (`lib.rs` creates a new
            // consumer), so the shutdown is not started. (Workers present
            // take the usual way out below.)
            if let Some(refusal) = refusal(&consumer).filter(|_| ctx.workers().is_empty()) {
                let had_joined = ctx.ever_joined.load(Ordering::Relaxed);
                // Closing a fenced client may hang: not on this thread,
                // and not waited for.
                close::within(consumer, Duration::ZERO, "closing-consumer");
                return Err(JoinRefused {
                    refusal,
                    reason,
                    had_joined,
                }
                .into());
            }
            ctx.metrics.fatal_errors.inc();
            error!(%reason, "stopping: the Kafka client cannot recover; exiting so that the replica is restarted");
            fatal = Some(reason);
            // The shutdown that follows gets the usual deadline and the
            // watchdog: closing a client in this state may hang.
            shutdown.cancel();
            break;
        }
        // Backlog pacing: while the workers have plenty to decode, take no
        // more messages for a moment (librdkafka's bounded prefetch queue holds
        // them) instead of pausing partitions, which would discard and refetch
        // their prefetched data. The wait is capped so the loop still polls,
        // and so serves rebalances and statistics, every `MAX_PACING`.
        if handover.is_empty()
            && workers_are_busy(ctx, max_buffered_bytes)
            && pacing_since.get_or_insert_with(Instant::now).elapsed() < MAX_PACING
        {
            std::thread::sleep(Duration::from_millis(1));
            store_progress(&consumer, progress);
            apply_backpressure(&consumer, max_buffered_bytes);
            continue;
        }
        pacing_since = None;
        // Messages already fetched are taken without waiting and handed over
        // in chunks: one channel send and one wake-up per chunk, not per message.
        let timeout = if handover.is_empty() {
            Duration::from_millis(100)
        } else {
            Duration::ZERO
        };
        let polled = consumer.poll(timeout);
        let more = matches!(polled, Some(Ok(_))) && handover.len() < HANDOVER_CHUNK;
        match polled {
            Some(Ok(m)) => {
                ctx.metrics.events_consumed.inc();
                // The topic's shared name, looked up only when it changes
                // (the poll returns runs of one partition's messages).
                let topic = match &last_topic {
                    Some(name) if **name == *m.topic() => name.clone(),
                    _ => last_topic.insert(ctx.topic_name(m.topic())).clone(),
                };
                let tp = TopicPartition::new(topic, m.partition());
                let timestamp_ms = m.timestamp().to_millis();
                if let Some(start) = ctx.first_reads.read(&tp, m.offset(), timestamp_ms) {
                    ctx.record_start(start);
                }
                let message = Message {
                    offset: m.offset(),
                    timestamp_ms,
                    key: m.key().map(bytes::Bytes::copy_from_slice),
                    payload: m.payload().map(bytes::Bytes::copy_from_slice),
                };
                handover.push(ctx, tp, message);
            }
            Some(Err(KafkaError::MessageConsumptionFatal(code))) => {
                ctx.set_fatal(format!("fatal Kafka consume error: {code}"));
            }
            // A listed topic that does not exist (yet): the topic check
            // (`kafka::topics`) reports it once, not at every metadata refresh.
            Some(Err(e)) if topics::is_missing_topic_error(&e) => ctx.metrics.consume_errors.inc(),
            Some(Err(e)) => {
                ctx.metrics.consume_errors.inc();
                ctx.logs.error("consumer poll", &e, "");
            }
            None => {}
        }
        if more {
            continue;
        }
        handover.flush(ctx);
        store_progress(&consumer, progress);
        apply_backpressure(&consumer, max_buffered_bytes);
        if last_gauges.elapsed() >= Duration::from_millis(500) {
            last_gauges = Instant::now();
            let now_ms = chrono::Utc::now().timestamp_millis();
            let stall_ms = crate::ops::health::STALL_AFTER.as_millis() as i64;
            let (total, stalled) = ctx.workers().values().fold((0, 0), |(bytes, stalled), w| {
                (
                    bytes + w.shared.buffered_bytes(),
                    stalled + usize::from(w.shared.is_stalled(now_ms, stall_ms)),
                )
            });
            ctx.metrics.buffered_bytes.set(total as i64);
            commit_behind(&consumer);
            ctx.metrics.stalled_workers.set(stalled as i64);
            ctx.health.set_stalled_workers(stalled);
        }
    }

    info!("shutting down: draining partition workers");
    ctx.health.set_shutting_down();
    let workers: Vec<(TopicPartition, partition::Handle)> = ctx.workers().drain().collect();
    ctx.metrics.assigned_partitions.set(0);
    store_progress(&consumer, progress);
    let finals = ctx.stop_workers(workers, shutdown_timeout);
    commit_at_shutdown(&consumer, &finals);
    let deadline = ctx.shutdown_deadline.get().copied();
    close_by(consumer, close_limit(deadline, tokio::time::Instant::now()));
    match fatal {
        Some(reason) => Err(anyhow::anyhow!(reason)),
        None => Ok(()),
    }
}

/// Closes the consumer, which leaves the group so that the partitions move
/// to the other replicas without waiting for the session timeout, but waits
/// for it only until `limit`. librdkafka's close waits for every commit in
/// flight, and a coordinator that moved mid-rebalance can hold those for
/// many seconds: a broker serves one connection's requests in order, and a
/// JoinGroup sent just before (librdkafka rejoins on its own when the
/// coordinator moves) is held until the rebalance ends (seen in the chaos
/// test: a replica stopped while a broker restarted). Past `limit` the
/// process goes on without the close: what was delivered but not committed
/// is redelivered, and the group drops this member after its session timeout.
fn close_by(consumer: Consumer_, limit: tokio::time::Instant) {
    consumer.unsubscribe();
    let wait = limit.saturating_duration_since(tokio::time::Instant::now());
    match close::within(consumer, wait, "closing-consumer") {
        Closed::Done => info!("consumer closed"),
        Closed::TimedOut => warn!(
            waited_ms = wait.as_millis() as u64,
            "leaving the group did not finish in time (the group coordinator does not answer); \
             exiting without it: the group reassigns this replica's partitions after its session timeout, \
             and what is uncommitted is redelivered"
        ),
        Closed::Panicked => error!(
            "closing the consumer panicked (see the panic above); exiting without leaving the group: \
             what is uncommitted is redelivered"
        ),
        Closed::NoThread => error!(
            "cannot start the thread that closes the consumer; exiting without leaving the group: \
             what is uncommitted is redelivered"
        ),
    }
}

/// Until when the shutdown waits for the consumer's close: the shutdown
/// deadline plus [`CLOSE_GRACE`], safely before the watchdog's limit, or a
/// moment from `now` if that has passed (a close that is quick still gets
/// to finish).
fn close_limit(
    deadline: Option<tokio::time::Instant>,
    now: tokio::time::Instant,
) -> tokio::time::Instant {
    let by_deadline = deadline.map_or(now + CLOSE_GRACE, |d| d + CLOSE_GRACE);
    by_deadline.max(now + MIN_CLOSE_WAIT)
}

/// How long past the shutdown deadline the close may take: the final commit
/// takes up to [`commit::COMMIT_RETRY_FOR`] of the watchdog's
/// [`EXIT_GRACE`](crate::ops::shutdown::EXIT_GRACE), the close most of the rest.
const CLOSE_GRACE: Duration = Duration::from_secs(8);
/// The least wait for the close, even past [`CLOSE_GRACE`].
const MIN_CLOSE_WAIT: Duration = Duration::from_millis(500);
const _: () = assert!(
    COMMIT_RETRY_FOR.as_millis() < CLOSE_GRACE.as_millis()
        && CLOSE_GRACE.as_millis() < crate::ops::shutdown::EXIT_GRACE.as_millis()
);

/// Why the group refused this replica's join (`rejoin` decides what next).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    /// Another member still holds its static identity
    /// (`KAFKA_GROUP_INSTANCE_ID`): under the new protocol (KIP-848), an
    /// earlier incarnation that was killed rather than stopped keeps it
    /// until the brokers' session timeout (`group.consumer.session.timeout.ms`,
    /// 45 s by default) expires it.
    IdentityHeld,
    /// The brokers refuse the new protocol although they list its API
    /// (`group.coordinator.rebalance.protocols` without `consumer`, or a
    /// cluster mid-upgrade).
    ProtocolRefused,
}

/// The consumer stopped on the group's refusal of its join, with nothing
/// assigned: the process goes on with a new consumer (`rejoin`).
#[derive(Debug, thiserror::Error)]
#[error("the group refused the join ({refusal:?}): {reason}")]
pub struct JoinRefused {
    pub refusal: Refusal,
    reason: String,
    /// Whether this consumer had been a member before (then the wait for
    /// a held identity starts again: an earlier refusal is long past).
    pub had_joined: bool,
}

fn refusal(consumer: &Consumer_) -> Option<Refusal> {
    use rdkafka::types::RDKafkaErrorCode as Code;
    match consumer.client().fatal_error()?.0 {
        Code::UnreleasedInstanceId => Some(Refusal::IdentityHeld),
        Code::UnsupportedVersion | Code::UnsupportedFeature => Some(Refusal::ProtocolRefused),
        _ => None,
    }
}

/// librdkafka's `debug` contexts for the consumer: the operator's, plus
/// `cgrp`, whose lines the wedge watch reads (`wedge.rs`).
fn debug_contexts(asked: Option<&str>) -> String {
    match asked {
        None => "cgrp".to_owned(),
        Some(contexts)
            if contexts
                .split(',')
                .any(|c| matches!(c.trim(), "cgrp" | "all")) =>
        {
            contexts.to_owned()
        }
        Some(contexts) => format!("{contexts},cgrp"),
    }
}

fn unix_now() -> f64 {
    SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0.0, |d| d.as_secs_f64())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_wedge_watch_gets_the_group_lines_whatever_debug_the_operator_asks_for() {
        assert_eq!(debug_contexts(None), "cgrp");
        assert_eq!(debug_contexts(Some("broker")), "broker,cgrp");
        assert_eq!(debug_contexts(Some("broker,cgrp")), "broker,cgrp");
        assert_eq!(debug_contexts(Some("all")), "all");
    }

    #[test]
    fn the_close_waits_past_the_deadline_but_stops_before_the_watchdog() {
        let now = tokio::time::Instant::now();
        let deadline = now + Duration::from_secs(5);
        assert_eq!(close_limit(Some(deadline), now), deadline + CLOSE_GRACE);
        // Long past the deadline (a commit that took its whole time): a moment still.
        let late = deadline + Duration::from_secs(30);
        assert_eq!(close_limit(Some(deadline), late), late + MIN_CLOSE_WAIT);
        // No deadline recorded yet (a fatal error starts the shutdown).
        assert_eq!(close_limit(None, now), now + CLOSE_GRACE);
    }
}
