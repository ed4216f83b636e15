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

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock};
use std::time::{Duration, Instant, SystemTime};

use rdkafka::client::ClientContext;
use rdkafka::config::{ClientConfig, RDKafkaLogLevel};
use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer, ConsumerContext, Rebalance};
use rdkafka::error::{KafkaError, KafkaResult};
use rdkafka::message::Message as _;
use rdkafka::{Offset, TopicPartitionList};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tracing::{error, info, warn};

use crate::config::{Config, StartAt};
use crate::kafka::connection::KafkaLogs;
use crate::kafka::read;
use crate::kafka::watermarks;
use crate::kafka::wedge::{self, WedgeWatch};
use crate::ops::health::{Health, PartitionProblems};
use crate::ops::lag::{self, LagTracker, WorkerView};
use crate::ops::log_limit;
use crate::ops::metrics::Metrics;
use crate::partition::{self, Message, Progress};

pub type Consumer_ = BaseConsumer<Context>;

/// Shared by the consumer loop and librdkafka's callbacks.
pub struct Context {
    topic: String,
    runtime: tokio::runtime::Handle,
    deps: Arc<partition::Deps>,
    metrics: Arc<Metrics>,
    health: Arc<Health>,
    drain_timeout: Duration,
    /// When SIGTERM arrived plus `SHUTDOWN_TIMEOUT_MS`: the one deadline of the
    /// whole shutdown, a revocation drain in progress included, so that the
    /// process exits within the orchestrator's grace period.
    shutdown_deadline: Arc<OnceLock<tokio::time::Instant>>,
    workers: Mutex<HashMap<i32, partition::Handle>>,
    next_generation: AtomicU64,
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
    /// Where a new group starts (see `Context::resolve_start`).
    start_at: StartAt,
    /// Rebalances librdkafka skipped since the last rebalance callback (`wedge.rs`).
    wedge: Mutex<WedgeWatch>,
    /// The operator set `debug=` and wants librdkafka's debug lines; else
    /// only the `cgrp` lines the wedge watch reads are produced, and dropped.
    debug_asked: bool,
}

impl Context {
    fn workers(&self) -> MutexGuard<'_, HashMap<i32, partition::Handle>> {
        self.workers
            .lock()
            .expect("no code panics while holding the workers lock")
    }

    pub(crate) fn topic(&self) -> &str {
        &self.topic
    }

    /// The partitions assigned to this replica.
    pub(crate) fn assigned_partitions(&self) -> Vec<i32> {
        let mut partitions: Vec<i32> = self.workers().keys().copied().collect();
        partitions.sort_unstable();
        partitions
    }

    /// A high watermark read from the broker (`kafka::watermarks`); kept
    /// only while the partition is still assigned here.
    pub(crate) fn probed_high_watermark(&self, partition: i32, high_watermark: i64) {
        let workers = self.workers();
        if workers.contains_key(&partition) {
            let mut lag = self.lag.lock().expect("lag lock");
            lag.probed_high(partition, high_watermark);
        }
    }

    /// Records an error the client cannot recover from; the consumer loop
    /// stops on it and the process exits non-zero, so the orchestrator
    /// restarts it, instead of beating on as a member that consumes nothing.
    /// Records the first unrecoverable error; the poll loop takes it and
    /// shuts down. Later ones (while shutting down) are not counted again.
    fn set_fatal(&self, reason: String) {
        if self.fatal_seen.swap(true, Ordering::Relaxed) {
            return;
        }
        self.metrics.fatal_errors.inc();
        self.health.set_joined(false);
        *self.fatal.lock().expect("fatal lock") = Some(reason);
    }

    fn assign(&self, tpl: &TopicPartitionList) {
        // Served while the shutdown waits for its commit: the consumer is
        // closing, so nothing is started for partitions given to it now.
        if self.health.is_shutting_down() {
            return;
        }
        let mut workers = self.workers();
        let mut added = Vec::new();
        for elem in tpl.elements_for_topic(&self.topic) {
            let partition = elem.partition();
            if workers.contains_key(&partition) {
                continue;
            }
            let generation = self.next_generation.fetch_add(1, Ordering::Relaxed);
            workers.insert(
                partition,
                partition::spawn(&self.runtime, self.deps.clone(), partition, generation),
            );
            added.push(partition);
        }
        self.metrics.assigned_partitions.set(workers.len() as i64);
        // The stall alert measures time since the last commit or, for a
        // partition that just arrived, since its assignment.
        let now = unix_now();
        for partition in &added {
            let label = partition.to_string();
            self.metrics
                .partition_last_commit
                .with_label_values(&[self.topic.as_str(), label.as_str()])
                .set(now);
        }
        added.sort_unstable();
        info!(topic = %self.topic, partitions = ?added, assigned = workers.len(), "partitions assigned");
        let config = &self.deps.config;
        if let Some(share) = too_small_share(
            config.max_buffered_bytes,
            workers.len(),
            config.batch.max_bytes,
        ) {
            warn!(
                share,
                assigned = workers.len(),
                max_buffered_bytes = config.max_buffered_bytes,
                batch_max_bytes = config.batch.max_bytes,
                "each partition's share of MAX_BUFFERED_BYTES holds fewer than 3 batches; \
                 partitions will pause often and drain backlogs slowly \
                 (raise MAX_BUFFERED_BYTES, lower BATCH_MAX_BYTES, or add replicas)"
            );
        }
    }

    /// Drains the revoked partitions' workers and commits what they delivered.
    fn revoke(&self, consumer: &Consumer_, tpl: &TopicPartitionList) {
        let lost = consumer.assignment_lost();
        let removed: Vec<(i32, partition::Handle)> = {
            let mut workers = self.workers();
            let removed = tpl
                .elements_for_topic(&self.topic)
                .iter()
                .filter_map(|e| workers.remove(&e.partition()).map(|h| (e.partition(), h)))
                .collect();
            self.metrics.assigned_partitions.set(workers.len() as i64);
            removed
        };
        let partitions: Vec<i32> = removed.iter().map(|(p, _)| *p).collect();
        if partitions.is_empty() {
            return;
        }
        if lost {
            warn!(topic = %self.topic, ?partitions, "partitions lost (group membership expired); abandoning their undelivered batches without committing");
            for (_, handle) in removed {
                handle.abort();
            }
        } else {
            info!(topic = %self.topic, ?partitions, "partitions revoked; draining in-flight batches");
            let finals = self.stop_workers(removed, self.drain_timeout);
            self.commit_sync(consumer, &finals, "revoke");
        }
        let mut lag = self.lag.lock().expect("lag lock");
        for partition in partitions {
            lag.forget(partition);
            self.metrics.forget_partition(&self.topic, partition);
        }
    }

    /// Stops workers, waiting up to `timeout`; returns each one's final safe offset.
    fn stop_workers(
        &self,
        workers: Vec<(i32, partition::Handle)>,
        timeout: Duration,
    ) -> Vec<(i32, i64)> {
        let deadline = drain_deadline(
            tokio::time::Instant::now(),
            timeout,
            self.shutdown_deadline.get().copied(),
        );
        let stops: Vec<_> = workers
            .into_iter()
            .map(|(p, h)| {
                let stop = h.stop(deadline);
                async move { (p, stop.await) }
            })
            .collect();
        let results = self.runtime.block_on(async move {
            let mut results = Vec::with_capacity(stops.len());
            let handles: Vec<_> = stops.into_iter().map(tokio::spawn).collect();
            for handle in handles {
                if let Ok(result) = handle.await {
                    results.push(result);
                }
            }
            results
        });
        results
            .into_iter()
            .filter_map(|(p, offset)| offset.map(|o| (p, o)))
            .collect()
    }

    /// Stores and synchronously commits explicit offsets.
    fn commit_sync(&self, consumer: &Consumer_, offsets: &[(i32, i64)], why: &str) {
        if offsets.is_empty() {
            return;
        }
        let mut tpl = TopicPartitionList::new();
        for (partition, offset) in offsets {
            if let Err(e) =
                tpl.add_partition_offset(&self.topic, *partition, Offset::Offset(*offset))
            {
                error!(partition, error = %e, "cannot build the commit list");
            }
        }
        self.commit_sync_tpl(consumer, &tpl, why);
    }

    fn commit_sync_tpl(&self, consumer: &Consumer_, tpl: &TopicPartitionList, why: &str) {
        // Storing too keeps the close-time auto-commit from committing anything older.
        if let Err(e) = consumer.store_offsets(tpl) {
            warn!(error = %e, why, "storing offsets failed");
        }
        // A coordinator that moves or loads (a broker restarting) answers
        // for a few seconds with errors worth retrying; a new generation
        // (IllegalGeneration) is final. Retries end by the shutdown deadline.
        let give_up = drain_deadline(
            tokio::time::Instant::now(),
            COMMIT_RETRY_FOR,
            self.shutdown_deadline.get().copied(),
        );
        let mut attempt = 0;
        loop {
            match consumer.commit(tpl, CommitMode::Sync) {
                Ok(()) => {
                    info!(why, offsets = ?tpl.to_topic_map(), attempts = attempt + 1, "committed offsets");
                    return;
                }
                Err(e)
                    if read::is_transient(&e)
                        && tokio::time::Instant::now() + COMMIT_RETRY_STEP < give_up =>
                {
                    warn!(why, error = %e, attempt = attempt + 1, "committing offsets failed; retrying");
                    std::thread::sleep(COMMIT_RETRY_STEP);
                    attempt += 1;
                }
                Err(e) => {
                    self.metrics.commits.with_label_values(&["error"]).inc();
                    error!(why, error = %e, "committing offsets failed; what they cover will be redelivered");
                    return;
                }
            }
        }
    }
}

impl ClientContext for Context {
    fn stats_raw(&self, statistics: &[u8]) {
        let Some(stats) = lag::parse_stats(statistics, &self.topic) else {
            return;
        };
        self.health.set_broker_up(stats.broker_up);
        if stats.topic_partitions > 0 {
            self.metrics
                .topic_partitions
                .set(stats.topic_partitions as i64);
        }
        let now_ms = chrono::Utc::now().timestamp_millis();
        let wedged = self.wedge.lock().expect("wedge lock").wedged(now_ms);
        if let Some(skipping) = wedged {
            self.set_fatal(format!(
                "librdkafka has skipped every rebalance for {} s (its cooperative group state is stuck: \
                 partitions of replicas that left are not handed out again); exiting so that the replica \
                 is restarted, which clears it",
                skipping.as_secs()
            ));
        }
        let workers = self.workers();
        let mut lag = self.lag.lock().expect("lag lock");
        let mut problems = PartitionProblems::default();
        let dead_letters = &self.deps.deliverer.dead_letters;
        for (partition, p) in &stats.partitions {
            let Some(worker) = workers.get(partition) else {
                continue;
            };
            let shared = &worker.shared;
            let blocked = shared.blocked.load(Ordering::Relaxed);
            let dlq_failing = dead_letters.is_failing(*partition);
            let (view, stalled) = lag.observe_worker(
                *partition,
                p,
                &WorkerView {
                    oldest_pending_ts_ms: shared.oldest_pending_ts_ms(),
                    consumed_next: shared.consumed_next(),
                    completions: shared.completions.load(Ordering::Relaxed),
                    waiting: worker.paused
                        || blocked
                        || dlq_failing
                        || shared.waiting.load(Ordering::Relaxed),
                },
                now_ms,
            );
            let name = format!("{}/{partition}", self.topic);
            if let Some(quiet) = stalled {
                // Once when it starts, then once a minute while it lasts.
                if quiet.as_secs() % 60 == crate::ops::stall::STALL_AFTER.as_secs() {
                    warn!(topic = %self.topic, partition, lag = view.lag_messages, quiet_s = quiet.as_secs(),
                        "partition stalled: it has lag but neither takes nor delivers, and is not waiting on the webhook, paused, or blocked; /healthz fails until it moves");
                }
                problems.stalled.push(format!(
                    "{name} (lag {}, {} s without progress)",
                    view.lag_messages,
                    quiet.as_secs()
                ));
            }
            if blocked {
                problems.blocked.push(format!(
                    "{name} (committed {})",
                    view.committed.unwrap_or(-1)
                ));
            }
            if dlq_failing {
                problems.dead_letter_failing.push(name);
            }
            let label = partition.to_string();
            let labels = [self.topic.as_str(), label.as_str()];
            let m = &self.metrics;
            m.partition_stalled
                .with_label_values(&labels)
                .set(i64::from(stalled.is_some()));
            m.partition_blocked
                .with_label_values(&labels)
                .set(i64::from(blocked));
            m.partition_dead_letter_failing
                .with_label_values(&labels)
                .set(i64::from(dlq_failing));
            m.partition_high_watermark
                .with_label_values(&labels)
                .set(view.high_watermark);
            m.partition_committed_offset
                .with_label_values(&labels)
                .set(view.committed.unwrap_or(-1));
            m.partition_no_commit
                .with_label_values(&labels)
                .set(i64::from(view.committed.is_none()));
            m.partition_lag_messages
                .with_label_values(&labels)
                .set(view.lag_messages);
            m.partition_lag_seconds
                .with_label_values(&labels)
                .set(view.lag_seconds);
        }
        self.health.set_partition_problems(problems);
    }

    fn error(&self, error: KafkaError, reason: &str) {
        use rdkafka::types::RDKafkaErrorCode as Code;
        match error.rdkafka_error_code() {
            Some(Code::AllBrokersDown) => self.health.set_broker_up(false),
            // Wrong credentials do not fix themselves: stop with a clear error
            // instead of retrying forever while looking alive.
            Some(Code::Authentication | Code::SaslAuthenticationFailed) => {
                self.set_fatal(format!(
                    "Kafka authentication failed ({reason}); check the SASL settings in KAFKA_PROPERTIES and KAFKA_SASL_PASSWORD(_FILE)"
                ));
            }
            // librdkafka raised a fatal error (e.g. this group.instance.id was
            // fenced by another member): the client is unusable from now on.
            Some(Code::Fatal) => self.set_fatal(format!("fatal Kafka client error: {reason}")),
            _ => {}
        }
        self.logs.error("consumer", &error, reason);
    }

    fn log(&self, level: RDKafkaLogLevel, fac: &str, log_message: &str) {
        if matches!(level, RDKafkaLogLevel::Debug) {
            if wedge::is_skipped_rebalance(log_message) {
                let now_ms = chrono::Utc::now().timestamp_millis();
                self.wedge.lock().expect("wedge lock").skipped(now_ms);
            }
            if !self.debug_asked {
                return;
            }
        } else if matches!(level, RDKafkaLogLevel::Info | RDKafkaLogLevel::Notice)
            && !self.debug_asked
        {
            // Below the Warning level the consumer logged before `debug=cgrp`
            // raised it: keep them out, as before.
            return;
        }
        self.logs.log("consumer", level, fac, log_message);
    }
}

impl Context {
    /// `START_AT` decides where a *new* group starts, once. A group is new
    /// when no partition of the topic has a commit other than a START_AT
    /// position (tagged `START_AT_METADATA`). Its assigned partitions without
    /// one are then pointed at `START_AT` (`latest`: the high watermark read
    /// now; a time: the first offset at or after it, else the high
    /// watermark), and the returned positions are committed, tagged, right
    /// after the assignment, so the decision is durable: an owner that
    /// crashes before its first delivery hands over a committed position, not
    /// a second `START_AT`, and replicas starting together each decide for
    /// their own partitions. The tag records the topic's partition count, so
    /// a partition added after the choice (even before any delivered offset
    /// is committed) is not taken for one a new group has yet to place.
    /// In a group that has commits, a partition without
    /// one (added to the topic, or never committed) starts at the earliest
    /// offset (`auto.offset.reset`), and so does any partition whose offset
    /// fell out of range: nothing is skipped. When the group state cannot be
    /// read, the group is taken as established, for the same reason.
    fn resolve_start(
        &self,
        consumer: &Consumer_,
        tpl: &mut TopicPartitionList,
    ) -> Option<TopicPartitionList> {
        if self.start_at == StartAt::Earliest || tpl.count() == 0 {
            return None;
        }
        let timeout = Duration::from_secs(10);
        let (committed, decided_for, partitions) = match self.group_commits(consumer, tpl, timeout)
        {
            Ok((GroupCommits::Established, _)) => return None,
            Ok((
                GroupCommits::New {
                    committed,
                    decided_for,
                },
                partitions,
            )) => (committed, decided_for, partitions),
            Err(e) => {
                warn!(error = %e, "cannot tell whether the group has commits; not applying START_AT (partitions without a commit start at the earliest offset)");
                return None;
            }
        };
        let mut starts = TopicPartitionList::new();
        for elem in tpl.elements_for_topic(&self.topic) {
            let partition = elem.partition();
            // Another replica of the new group already fixed its start.
            if committed.contains(&partition) {
                continue;
            }
            // Added to the topic after the group chose its start: the
            // choice is made, and this partition is read from its start.
            if decided_for.is_some_and(|count| partition >= count) {
                info!(
                    partition,
                    "partition added after the group chose its START_AT position: reading it from its earliest offset"
                );
                continue;
            }
            let offset = match self.start_offset(consumer, partition, timeout) {
                Ok(offset) => offset,
                Err(e) => {
                    warn!(partition, error = %e, "cannot resolve START_AT; this partition starts at the earliest offset");
                    continue;
                }
            };
            info!(partition, offset, start_at = ?self.start_at, "new group: starting at START_AT");
            let _ = starts.add_partition_offset(&self.topic, partition, Offset::Offset(offset));
            if let Some(mut elem) = starts.find_partition(&self.topic, partition) {
                elem.set_metadata(start_at_metadata(partitions));
            }
        }
        for elem in starts.elements_for_topic(&self.topic) {
            let _ = tpl.set_partition_offset(&self.topic, elem.partition(), elem.offset());
        }
        (starts.count() > 0).then_some(starts)
    }

    /// Gives every assigned partition still without a position (not placed
    /// by `START_AT`) a concrete one: its committed offset, or the earliest
    /// when it has none, read here rather than by librdkafka after the
    /// assignment. librdkafka's own look-up can hang for ever: when its
    /// OffsetFetch meets a coordinator that moved, the partition stays
    /// "being queried" and never fetches (librdkafka issue 5586), and while
    /// a look-up is pending a cooperative member skips every rebalance, so
    /// the partitions of replicas that leave or die are never handed out
    /// again. This read returns an error instead, and is retried. If it
    /// still fails, librdkafka looks the offsets up as before (and the stall
    /// detector reports a look-up that never ends).
    fn place_from_commits(&self, consumer: &Consumer_, tpl: &mut TopicPartitionList) {
        let mut unplaced = TopicPartitionList::new();
        for elem in tpl.elements() {
            if !matches!(elem.offset(), Offset::Offset(_)) {
                unplaced.add_partition(elem.topic(), elem.partition());
            }
        }
        if unplaced.count() == 0 {
            return;
        }
        let deadline = std::time::Instant::now() + COMMITTED_LOOKUP_FOR;
        let committed = read::retrying_for(COMMITTED_LOOKUP_FOR, "committed offsets", || {
            let left = deadline.saturating_duration_since(std::time::Instant::now());
            let timeout = left.clamp(Duration::from_millis(100), COMMITTED_LOOKUP_TIMEOUT);
            consumer.committed_offsets(unplaced.clone(), timeout)
        });
        let committed = match committed {
            Ok(committed) => committed,
            Err(e) => {
                warn!(error = %e, "cannot read the committed offsets of the assigned partitions; librdkafka looks them up instead");
                return;
            }
        };
        let mut lag = self.lag.lock().expect("lag lock");
        for elem in committed.elements() {
            let Some(start) = start_position(elem.offset(), elem.error()) else {
                continue;
            };
            let _ = tpl.set_partition_offset(elem.topic(), elem.partition(), start);
            // librdkafka's statistics learn a commit only from their own
            // look-up, now skipped: without this, a handed-over partition
            // would report no commit (and its whole log as lag) until this
            // replica commits to it.
            if let (Offset::Offset(offset), true) = (start, elem.topic() == self.topic) {
                lag.committed(elem.partition(), offset);
            }
        }
    }

    /// Whether the group is new: no partition of the topic has a commit
    /// other than a START_AT position (which replicas of a new group that
    /// start together commit for their own partitions).
    /// Also returns the topic's partition count as known now: the metadata's,
    /// or more when the assignment names a partition the metadata answer
    /// does not list yet (just added), whose commit is read too.
    fn group_commits(
        &self,
        consumer: &Consumer_,
        assigned: &TopicPartitionList,
        timeout: Duration,
    ) -> KafkaResult<(GroupCommits, i32)> {
        let metadata = read::retrying("topic metadata", || {
            consumer.fetch_metadata(Some(&self.topic), timeout)
        })?;
        let mut all = TopicPartitionList::new();
        for topic in metadata.topics().iter().filter(|t| t.name() == self.topic) {
            if let Some(e) = topic.error() {
                return Err(KafkaError::MetadataFetch(e.into()));
            }
            for partition in topic.partitions() {
                all.add_partition(&self.topic, partition.id());
            }
        }
        // An empty list would read as "no commits" and make an established
        // group start again at START_AT, past undelivered events.
        if all.count() == 0 {
            return Err(KafkaError::MetadataFetch(
                rdkafka::types::RDKafkaErrorCode::UnknownTopicOrPartition,
            ));
        }
        for elem in assigned.elements_for_topic(&self.topic) {
            if all.find_partition(&self.topic, elem.partition()).is_none() {
                all.add_partition(&self.topic, elem.partition());
            }
        }
        let partitions = all
            .elements()
            .iter()
            .map(|e| e.partition() + 1)
            .max()
            .unwrap_or(0);
        let committed = read::retrying("committed offsets", || {
            consumer.committed_offsets(all.clone(), timeout)
        })?;
        let metadata: Vec<(i32, String)> = committed
            .elements()
            .iter()
            .filter(|e| matches!(e.offset(), Offset::Offset(_)))
            .map(|e| (e.partition(), commit_metadata(e)))
            .collect();
        let commits = group_commits(metadata.iter().map(|(p, m)| (*p, m.as_str())));
        Ok((commits, partitions))
    }

    /// Where `START_AT` points in one partition, as a concrete offset.
    fn start_offset(
        &self,
        consumer: &Consumer_,
        partition: i32,
        timeout: Duration,
    ) -> KafkaResult<i64> {
        let high = || {
            read::retrying("high watermark for START_AT", || {
                consumer.fetch_watermarks(&self.topic, partition, timeout)
            })
            .map(|(_, high)| high)
        };
        let StartAt::Time(start) = self.start_at else {
            return high();
        };
        let mut times = TopicPartitionList::new();
        let _ = times.add_partition_offset(
            &self.topic,
            partition,
            Offset::Offset(start.timestamp_millis()),
        );
        let resolved = read::retrying("offsets for START_AT", || {
            consumer.offsets_for_times(times.clone(), timeout)
        })?;
        match resolved
            .find_partition(&self.topic, partition)
            .map(|e| e.offset())
        {
            Some(Offset::Offset(offset)) => Ok(offset),
            // No message at or after START_AT: the end as it is now, not
            // "the end" resolved later, which would skip what arrives meanwhile.
            _ => high(),
        }
    }
}

impl ConsumerContext for Context {
    /// librdkafka's rebalance flow (as rdkafka's default), plus START_AT.
    fn rebalance(
        &self,
        consumer: &Consumer_,
        err: rdkafka::types::RDKafkaRespErr,
        tpl: &mut TopicPartitionList,
    ) {
        use rdkafka::consumer::RebalanceProtocol;
        use rdkafka::types::RDKafkaRespErr as Err;
        self.wedge.lock().expect("wedge lock").rebalanced();
        let cooperative = matches!(
            consumer.rebalance_protocol(),
            RebalanceProtocol::Cooperative
        );
        match err {
            Err::RD_KAFKA_RESP_ERR__ASSIGN_PARTITIONS => {
                // While shutting down, no worker starts for these partitions
                // (`assign`): reading their start positions would only spend
                // the shutdown's time (librdkafka answers reads slowly while
                // closing).
                let starts = if self.health.is_shutting_down() {
                    None
                } else {
                    let starts = self.resolve_start(consumer, tpl);
                    self.place_from_commits(consumer, tpl);
                    starts
                };
                let result = if cooperative {
                    consumer.incremental_assign(tpl)
                } else {
                    consumer.assign(tpl)
                };
                match result {
                    Ok(()) => {
                        // librdkafka keeps a partition's pause flag across
                        // unassign and assign: a partition this replica paused
                        // before it moved away would come back paused, and its
                        // new worker (which starts unpaused) would never see
                        // a message. Every assigned partition starts fetching.
                        if let Err(e) = consumer.resume(tpl) {
                            error!(error = %e, "resuming newly assigned partitions failed");
                        }
                        if let Some(starts) = starts {
                            self.commit_sync_tpl(consumer, &starts, "START_AT");
                        }
                        self.post_rebalance(consumer, &Rebalance::Assign(tpl));
                    }
                    // No workers for partitions librdkafka does not consider
                    // assigned: they would count in the buffer shares and
                    // the gauges, and never receive a message.
                    // The group counts them as this member's while nothing
                    // reads them: end the process so they move elsewhere.
                    Err(e) => self.set_fatal(format!(
                        "assigning partitions failed ({e}); no workers started for them"
                    )),
                }
                self.health.set_joined(true);
            }
            Err::RD_KAFKA_RESP_ERR__REVOKE_PARTITIONS => {
                self.pre_rebalance(consumer, &Rebalance::Revoke(tpl));
                if let Err(e) = unassign(consumer, tpl, cooperative) {
                    error!(error = %e, "unassigning partitions failed");
                }
                self.post_rebalance(consumer, &Rebalance::Revoke(tpl));
            }
            other => {
                let error = KafkaError::Rebalance(other.into());
                self.pre_rebalance(consumer, &Rebalance::Error(error.clone()));
                if let Err(e) = unassign(consumer, tpl, cooperative) {
                    error!(error = %e, "unassigning after a rebalance error failed");
                }
                self.post_rebalance(consumer, &Rebalance::Error(error));
                self.health.set_joined(false);
            }
        }
    }

    fn pre_rebalance(&self, consumer: &Consumer_, rebalance: &Rebalance<'_>) {
        match rebalance {
            Rebalance::Revoke(tpl) => {
                let kind = if consumer.assignment_lost() {
                    // Not a member until the next assignment.
                    self.health.set_joined(false);
                    "lost"
                } else {
                    "revoke"
                };
                self.metrics.rebalances.with_label_values(&[kind]).inc();
                self.revoke(consumer, tpl);
            }
            Rebalance::Assign(_) => {}
            Rebalance::Error(e) => {
                self.metrics.rebalances.with_label_values(&["error"]).inc();
                error!(error = %e, "rebalance error");
            }
        }
    }

    fn post_rebalance(&self, consumer: &Consumer_, rebalance: &Rebalance<'_>) {
        match rebalance {
            Rebalance::Assign(tpl) => {
                self.metrics.rebalances.with_label_values(&["assign"]).inc();
                self.assign(tpl);
            }
            Rebalance::Revoke(_) if !consumer.assignment_lost() => self.health.set_joined(true),
            _ => {}
        }
    }

    fn commit_callback(&self, result: KafkaResult<()>, offsets: &TopicPartitionList) {
        self.commit_callbacks.fetch_add(1, Ordering::Relaxed);
        match result {
            Ok(()) => {
                self.metrics.commits.with_label_values(&["ok"]).inc();
                let now = unix_now();
                // A commit of revoked partitions (the revocation's own) must
                // not bring back series this replica no longer owns.
                let workers = self.workers();
                let mut lag = self.lag.lock().expect("lag lock");
                for elem in offsets.elements_for_topic(&self.topic) {
                    if !workers.contains_key(&elem.partition()) {
                        continue;
                    }
                    if let Offset::Offset(offset) = elem.offset() {
                        if lag.committed(elem.partition(), offset) {
                            let label = elem.partition().to_string();
                            self.metrics
                                .partition_last_commit
                                .with_label_values(&[self.topic.as_str(), label.as_str()])
                                .set(now);
                        }
                    }
                }
            }
            // "No offset to commit" is the normal answer of an idle auto-commit.
            Err(KafkaError::ConsumerCommit(rdkafka::types::RDKafkaErrorCode::NoOffset)) => {}
            Err(e) => {
                self.metrics.commits.with_label_values(&["error"]).inc();
                let n = self.commit_failures.fetch_add(1, Ordering::Relaxed);
                if log_limit::worth_logging(n) {
                    warn!(error = %e, failures = n + 1, "offset commit failed; it is retried at the next commit (repeats are logged less often)");
                }
            }
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
) -> anyhow::Result<Consumer_> {
    // The brokers and the connection settings every client shares (`kafka::connection`).
    let connection = crate::kafka::connection::Connection::from_config(config);
    let mut client: ClientConfig = connection.client_config("patterns-connector");
    client
        .set("group.id", &config.kafka_consumer_group)
        // Cooperative rebalancing: adding a replica moves only the partitions it takes.
        .set("partition.assignment.strategy", "cooperative-sticky")
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
    // Then the user's own consumer settings (group membership, fetching),
    // which win over the defaults above.
    for (key, value) in connection.consumer_properties() {
        client.set(key, value);
    }
    // `debug=<contexts>` asks for librdkafka's debug lines: let them through.
    // Without it, the group's (`cgrp`) lines are produced for the wedge
    // watch (`wedge.rs`) and not logged.
    let debug_asked = client.get("debug").is_some();
    let contexts = debug_contexts(client.get("debug"));
    client.set("debug", contexts);
    client.set_log_level(RDKafkaLogLevel::Debug);
    // The guarantee: librdkafka stores nothing by itself; only offsets the
    // workers report as delivered are stored, and auto-commit commits those.
    client.set("enable.auto.offset.store", "false");

    let context = Context {
        topic: config.kafka_topic.clone(),
        runtime,
        deps,
        metrics,
        health,
        drain_timeout: config.shutdown_timeout,
        shutdown_deadline: Arc::default(),
        workers: Mutex::new(HashMap::new()),
        next_generation: AtomicU64::new(0),
        lag: Mutex::new(LagTracker::default()),
        commit_failures: AtomicU64::new(0),
        commit_callbacks: AtomicU64::new(0),
        logs: KafkaLogs::default(),
        fatal: Mutex::new(None),
        fatal_seen: AtomicBool::new(false),
        start_at: config.start_at,
        wedge: Mutex::new(WedgeWatch::default()),
        debug_asked,
    };
    let consumer: Consumer_ = client.create_with_context(context).map_err(|e| {
        anyhow::anyhow!(
            "cannot create the Kafka consumer (check KAFKA_HOSTS and KAFKA_PROPERTIES): {e}"
        )
    })?;
    watermarks::spawn(config, consumer.context())?;
    consumer.subscribe(&[&config.kafka_topic]).map_err(|e| {
        anyhow::anyhow!(
            "cannot subscribe to KAFKA_TOPIC {}: {e}",
            config.kafka_topic
        )
    })?;
    Ok(consumer)
}

/// Runs the consumer loop until `shutdown`, then drains every worker, commits
/// what was delivered and leaves the group.
pub fn run(
    consumer: Consumer_,
    mut progress: mpsc::UnboundedReceiver<Progress>,
    max_buffered_bytes: usize,
    shutdown_timeout: Duration,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    let ctx = consumer.context();
    let topic = ctx.topic.clone();
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
    while !shutdown.is_cancelled() {
        ctx.health.beat(SystemTime::now());
        if let Some((code, reason)) = consumer.client().fatal_error() {
            ctx.set_fatal(format!("fatal Kafka client error ({code:?}): {reason}"));
        }
        if let Some(reason) = ctx.fatal.lock().expect("fatal lock").take() {
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
            store_progress(&consumer, &topic, &mut progress);
            apply_backpressure(&consumer, &topic, max_buffered_bytes);
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
                let message = Message {
                    offset: m.offset(),
                    timestamp_ms: m.timestamp().to_millis(),
                    key: m.key().map(bytes::Bytes::copy_from_slice),
                    payload: m.payload().map(bytes::Bytes::copy_from_slice),
                };
                handover.push(ctx, m.partition(), message);
            }
            Some(Err(KafkaError::MessageConsumptionFatal(code))) => {
                ctx.set_fatal(format!("fatal Kafka consume error: {code}"));
            }
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
        store_progress(&consumer, &topic, &mut progress);
        apply_backpressure(&consumer, &topic, max_buffered_bytes);
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
            commit_behind(&consumer, &topic);
            ctx.metrics.stalled_workers.set(stalled as i64);
            ctx.health.set_stalled_workers(stalled);
        }
    }

    info!("shutting down: draining partition workers");
    ctx.health.set_shutting_down();
    let workers: Vec<(i32, partition::Handle)> = ctx.workers().drain().collect();
    ctx.metrics.assigned_partitions.set(0);
    store_progress(&consumer, &topic, &mut progress);
    let finals = ctx.stop_workers(workers, shutdown_timeout);
    commit_at_shutdown(&consumer, &topic, &finals);
    consumer.unsubscribe();
    // Dropping the consumer closes it: it leaves the group so the partitions
    // move to the other replicas without waiting for the session timeout.
    drop(consumer);
    info!("consumer closed");
    match fatal {
        Some(reason) => Err(anyhow::anyhow!(reason)),
        None => Ok(()),
    }
}

/// The shutdown's commit of what the workers delivered. Asynchronous, then
/// polled until its callback arrives, by the shutdown deadline plus
/// `COMMIT_RETRY_FOR`: a synchronous commit here can wait for ever, because
/// when a rebalance is queued for this thread librdkafka holds the commit
/// until the application serves the rebalance, and the application is the
/// one waiting (seen in the chaos test: the replica then stayed in the group,
/// holding partitions nobody read). Messages polled meanwhile are dropped,
/// uncommitted.
fn commit_at_shutdown(consumer: &Consumer_, topic: &str, offsets: &[(i32, i64)]) {
    if offsets.is_empty() {
        return;
    }
    let ctx = consumer.context();
    let mut tpl = TopicPartitionList::new();
    for (partition, offset) in offsets {
        let _ = tpl.add_partition_offset(topic, *partition, Offset::Offset(*offset));
    }
    if let Err(e) = consumer.store_offsets(&tpl) {
        warn!(error = %e, "storing final offsets failed");
    }
    let before = ctx.commit_callbacks.load(Ordering::Relaxed);
    if let Err(e) = consumer.commit(&tpl, CommitMode::Async) {
        error!(error = %e, "committing final offsets failed; what they cover will be redelivered");
        return;
    }
    let limit = ctx
        .shutdown_deadline
        .get()
        .copied()
        .unwrap_or_else(tokio::time::Instant::now)
        .max(tokio::time::Instant::now())
        + COMMIT_RETRY_FOR;
    while ctx.commit_callbacks.load(Ordering::Relaxed) == before
        && tokio::time::Instant::now() < limit
    {
        let _ = consumer.poll(Duration::from_millis(100));
    }
    if ctx.commit_callbacks.load(Ordering::Relaxed) == before {
        error!(offsets = ?offsets, "no answer to the final commit by the deadline; what it covers may be redelivered");
    } else {
        info!(offsets = ?offsets, "final commit answered (see commits_total for its result)");
    }
}

/// Gives up `tpl` (cooperative protocol) or the whole assignment (eager).
fn unassign(consumer: &Consumer_, tpl: &TopicPartitionList, cooperative: bool) -> KafkaResult<()> {
    if cooperative {
        consumer.incremental_unassign(tpl)
    } else {
        consumer.unassign()
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

/// How long the assign callback reads committed offsets (each try, and all
/// tries together): well inside `max.poll.interval.ms`, which the callback
/// counts against.
const COMMITTED_LOOKUP_TIMEOUT: Duration = Duration::from_secs(5);
const COMMITTED_LOOKUP_FOR: Duration = Duration::from_secs(10);

/// Where an assigned partition starts, from its committed-offset answer:
/// the commit, or the earliest offset when there is none (what
/// `auto.offset.reset=earliest` would choose). `None` leaves the look-up to
/// librdkafka (an error for this partition, or an answer it must interpret).
fn start_position(committed: Offset, error: KafkaResult<()>) -> Option<Offset> {
    if error.is_err() {
        return None;
    }
    match committed {
        Offset::Offset(offset) if offset >= 0 => Some(Offset::Offset(offset)),
        Offset::Invalid => Some(Offset::Beginning),
        _ => None,
    }
}

/// How long a revocation's or shutdown's commit retries a transient error
/// (never past the shutdown deadline), and the pause between tries.
const COMMIT_RETRY_FOR: Duration = Duration::from_secs(5);
const COMMIT_RETRY_STEP: Duration = Duration::from_millis(250);

/// The commit metadata of a start position chosen by `START_AT`: a group
/// whose only commits carry it is still new (its replicas may be resolving
/// `START_AT` for their own partitions at this very moment).
/// It records how many partitions the topic had when the choice was made, so
/// that a partition added later is known as such even before any delivered
/// offset is committed (`patterns-connector:start_at;partitions=N`).
const START_AT_METADATA: &str = "patterns-connector:start_at";

fn start_at_metadata(partitions: i32) -> String {
    format!("{START_AT_METADATA};partitions={partitions}")
}

/// `Some(count)` for a START_AT position that records the topic's partition
/// count then; `Some(None)` for one that does not (written before counts
/// were recorded); `None` for any other commit. A count that cannot be read
/// is taken as 0, so every partition without a commit starts at the
/// earliest offset: a misread never skips.
fn parse_start_at_metadata(metadata: &str) -> Option<Option<i32>> {
    let rest = metadata.strip_prefix(START_AT_METADATA)?;
    if rest.is_empty() {
        return Some(None);
    }
    let count = rest
        .strip_prefix(";partitions=")
        .and_then(|n| n.parse().ok())
        .filter(|n: &i32| *n >= 0);
    Some(Some(count.unwrap_or(0)))
}

/// A commit's metadata. rdkafka panics on metadata that is not UTF-8 (which
/// another client of the group may write); read as "" (another client's
/// commit), not a panic inside librdkafka's callback.
fn commit_metadata(elem: &rdkafka::topic_partition_list::TopicPartitionListElem<'_>) -> String {
    std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| elem.metadata().to_owned()))
        .unwrap_or_default()
}

#[derive(Debug, PartialEq, Eq)]
enum GroupCommits {
    /// Some partition has a commit of delivered offsets: START_AT no longer applies.
    Established,
    /// Only START_AT positions, for these partitions (or none at all), and
    /// the fewest partitions the topic had when one of them was chosen:
    /// partitions numbered from there on were added after the choice.
    New {
        committed: Vec<i32>,
        decided_for: Option<i32>,
    },
}

/// Decides from `(partition, commit metadata)` per committed partition.
fn group_commits<'a>(commits: impl Iterator<Item = (i32, &'a str)>) -> GroupCommits {
    let mut committed = Vec::new();
    let mut decided_for: Option<i32> = None;
    for (partition, metadata) in commits {
        let Some(count) = parse_start_at_metadata(metadata) else {
            return GroupCommits::Established;
        };
        committed.push(partition);
        if let Some(count) = count {
            decided_for = Some(decided_for.map_or(count, |d| d.min(count)));
        }
    }
    GroupCommits::New {
        committed,
        decided_for,
    }
}

/// When a drain that starts at `now` must end: after `timeout`, but never
/// after the shutdown's deadline once SIGTERM has set one.
fn drain_deadline(
    now: tokio::time::Instant,
    timeout: Duration,
    shutdown: Option<tokio::time::Instant>,
) -> tokio::time::Instant {
    let own = now + timeout;
    shutdown.map_or(own, |s| own.min(s))
}

/// Whether to pause (`Some(true)`) or resume (`Some(false)`) a partition:
/// pause when its worker holds or its buffer passes its share; resume only
/// when neither holds and the buffer is below half the share (hysteresis).
fn pause_change(paused: bool, holding: bool, buffered: usize, share: usize) -> Option<bool> {
    if !paused && (holding || buffered > share) {
        Some(true)
    } else if paused && !holding && buffered < share / 2 {
        Some(false)
    } else {
        None
    }
}

/// A partition's share of the buffer when it cannot hold the three batches
/// a busy partition needs (one in flight, one ready, one filling).
fn too_small_share(
    max_buffered: usize,
    partitions: usize,
    batch_max_bytes: usize,
) -> Option<usize> {
    let share = max_buffered / partitions.max(1);
    (partitions > 0 && share < 3 * batch_max_bytes).then_some(share)
}

fn unix_now() -> f64 {
    SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0.0, |d| d.as_secs_f64())
}

/// Stores the offsets that workers report as delivered.
fn store_progress(
    consumer: &Consumer_,
    topic: &str,
    progress: &mut mpsc::UnboundedReceiver<Progress>,
) {
    let ctx = consumer.context();
    let mut latest: HashMap<i32, i64> = HashMap::new();
    {
        let workers = ctx.workers();
        while let Ok(p) = progress.try_recv() {
            // A report from an older incarnation of the partition's worker is stale.
            if workers
                .get(&p.partition)
                .is_some_and(|w| w.generation == p.generation)
            {
                // The last report wins: a worker's reports only go up, except
                // after its partition's log started again (`Frontier::rewind`).
                latest.insert(p.partition, p.next_offset);
            }
        }
    }
    if latest.is_empty() {
        return;
    }
    // Offsets below the last commit (the partition's log started again):
    // auto-commit only commits offsets past the committed one, so these are
    // committed explicitly.
    let mut rewound = TopicPartitionList::new();
    {
        let mut lag = ctx.lag.lock().expect("lag lock");
        for (partition, offset) in &latest {
            if lag.stored(*partition, *offset) {
                let _ = rewound.add_partition_offset(topic, *partition, Offset::Offset(*offset));
            }
        }
    }
    let mut tpl = TopicPartitionList::new();
    for (partition, offset) in &latest {
        let _ = tpl.add_partition_offset(topic, *partition, Offset::Offset(*offset));
    }
    if let Err(e) = consumer.store_offsets(&tpl) {
        // Happens when a partition was revoked in between; its worker's final
        // offset was committed by the revocation itself.
        warn!(error = %e, "storing delivered offsets failed");
    }
    if rewound.count() > 0 {
        if let Err(e) = consumer.commit(&rewound, CommitMode::Async) {
            warn!(error = %e, "committing offsets below the last commit failed; retried at the next report");
        }
    }
}

/// Commits explicitly the stored offsets of partitions whose committed offset
/// is above them (their log started again; see `LagTracker::stored`).
fn commit_behind(consumer: &Consumer_, topic: &str) {
    let behind = consumer
        .context()
        .lag
        .lock()
        .expect("lag lock")
        .commits_behind();
    if behind.is_empty() {
        return;
    }
    let mut tpl = TopicPartitionList::new();
    for (partition, offset) in behind {
        let _ = tpl.add_partition_offset(topic, partition, Offset::Offset(offset));
    }
    if let Err(e) = consumer.commit(&tpl, CommitMode::Async) {
        warn!(error = %e, "committing offsets below the last commit failed; retried shortly");
    }
}

/// At most this many messages are polled before they are handed over.
const HANDOVER_CHUNK: usize = 256;

/// Messages polled but not yet handed to their workers, per partition, with
/// the worker incarnation they were polled for.
#[derive(Default)]
struct Handover {
    chunks: HashMap<i32, (u64, Vec<Message>)>,
    count: usize,
}

impl Handover {
    fn is_empty(&self) -> bool {
        self.count == 0
    }

    fn len(&self) -> usize {
        self.count
    }

    fn push(&mut self, ctx: &Context, partition: i32, message: Message) {
        // A message of a partition this member does not own (any more) is
        // dropped, uncommitted: its owner reads it from the committed offset.
        let Some(generation) = ctx.workers().get(&partition).map(|w| w.generation) else {
            return;
        };
        let (chunk_generation, chunk) = self
            .chunks
            .entry(partition)
            .or_insert_with(|| (generation, Vec::new()));
        if *chunk_generation != generation {
            // The partition was revoked and assigned again in between: the
            // earlier messages belonged to the previous worker; drop them.
            self.count -= chunk.len();
            chunk.clear();
            *chunk_generation = generation;
        }
        chunk.push(message);
        self.count += 1;
    }

    /// Hands every chunk to its worker, if that worker is still the one the
    /// messages were polled for.
    fn flush(&mut self, ctx: &Context) {
        if self.count == 0 {
            return;
        }
        let workers = ctx.workers();
        for (partition, (generation, chunk)) in self.chunks.iter_mut() {
            if chunk.is_empty() {
                continue;
            }
            let chunk = std::mem::take(chunk);
            match workers.get(partition) {
                Some(worker) if worker.generation == *generation => worker.send(chunk),
                _ => {}
            }
        }
        self.count = 0;
    }
}

/// The longest the consumer loop goes without polling while it paces a backlog.
const MAX_PACING: Duration = Duration::from_millis(200);

/// True when a partition that is still fetching has a quarter of its share of
/// `MAX_BUFFERED_BYTES` waiting to be decoded: handing over more would only
/// fill its queue up to the pause threshold (its batches need the rest). A
/// paused partition does not count: a stalled webhook must not hold the
/// others back.
fn workers_are_busy(ctx: &Context, max_buffered_bytes: usize) -> bool {
    let workers = ctx.workers();
    let quarter_share = max_buffered_bytes / workers.len().max(1) / 4;
    workers
        .values()
        .any(|w| !w.paused && w.shared.queued_bytes.load(Ordering::Relaxed) > quarter_share)
}

/// Pauses a partition whose buffered bytes pass its share of
/// `MAX_BUFFERED_BYTES`, or whose worker holds (blocked by `DLQ_POLICY=block`,
/// dead-letter writes failing); resumes it once it no longer holds and its
/// buffer is below half its share.
fn apply_backpressure(consumer: &Consumer_, topic: &str, max_buffered_bytes: usize) {
    let ctx = consumer.context();
    let dead_letters = &ctx.deps.deliverer.dead_letters;
    let mut workers = ctx.workers();
    let share = max_buffered_bytes / workers.len().max(1);
    for (partition, worker) in workers.iter_mut() {
        let buffered = worker.shared.buffered_bytes();
        let holding =
            worker.shared.blocked.load(Ordering::Relaxed) || dead_letters.is_failing(*partition);
        let change = pause_change(worker.paused, holding, buffered, share);
        let Some(pause) = change else { continue };
        let mut tpl = TopicPartitionList::new();
        tpl.add_partition(topic, *partition);
        let result = if pause {
            consumer.pause(&tpl)
        } else {
            consumer.resume(&tpl)
        };
        match result {
            Ok(()) => {
                worker.paused = pause;
                let label = partition.to_string();
                ctx.metrics
                    .partition_paused
                    .with_label_values(&[topic, label.as_str()])
                    .set(i64::from(pause));
                info!(
                    partition,
                    buffered,
                    share,
                    holding,
                    paused = pause,
                    "partition {}",
                    match (pause, holding) {
                        (true, true) => "paused: blocked, or its dead-letter writes fail",
                        (true, false) => "paused: buffer full",
                        (false, _) => "resumed",
                    }
                );
            }
            Err(e) => warn!(partition, error = %e, "pause/resume failed"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_group_is_new_until_a_partition_has_a_commit_that_is_not_a_start_at_position() {
        assert_eq!(
            group_commits(std::iter::empty()),
            GroupCommits::New {
                committed: vec![],
                decided_for: None
            }
        );
        let tagged = start_at_metadata(4);
        assert_eq!(
            group_commits([(0, tagged.as_str()), (3, START_AT_METADATA)].into_iter()),
            GroupCommits::New {
                committed: vec![0, 3],
                decided_for: Some(4)
            }
        );
        let fewer = start_at_metadata(2);
        assert_eq!(
            group_commits([(0, tagged.as_str()), (1, fewer.as_str())].into_iter()),
            GroupCommits::New {
                committed: vec![0, 1],
                decided_for: Some(2)
            }
        );
        assert_eq!(
            group_commits([(0, tagged.as_str()), (1, "")].into_iter()),
            GroupCommits::Established
        );
        assert_eq!(parse_start_at_metadata("other"), None);
        assert_eq!(parse_start_at_metadata(""), None);
        assert_eq!(parse_start_at_metadata(START_AT_METADATA), Some(None));
        for unreadable in [";partitions=x", ";partitions=", ";partitions=-3", ";v=2"] {
            assert_eq!(
                parse_start_at_metadata(&format!("{START_AT_METADATA}{unreadable}")),
                Some(Some(0)),
                "{unreadable}"
            );
        }
    }

    #[test]
    fn an_assigned_partition_starts_at_its_commit_or_else_the_earliest_offset() {
        assert_eq!(
            start_position(Offset::Offset(42), Ok(())),
            Some(Offset::Offset(42))
        );
        assert_eq!(
            start_position(Offset::Offset(0), Ok(())),
            Some(Offset::Offset(0))
        );
        assert_eq!(
            start_position(Offset::Invalid, Ok(())),
            Some(Offset::Beginning)
        );
        let error = Err(KafkaError::OffsetFetch(
            rdkafka::types::RDKafkaErrorCode::NotCoordinator,
        ));
        assert_eq!(start_position(Offset::Offset(42), error.clone()), None);
        assert_eq!(start_position(Offset::Invalid, error), None);
        assert_eq!(start_position(Offset::End, Ok(())), None);
    }

    #[test]
    fn the_wedge_watch_gets_the_group_lines_whatever_debug_the_operator_asks_for() {
        assert_eq!(debug_contexts(None), "cgrp");
        assert_eq!(debug_contexts(Some("broker")), "broker,cgrp");
        assert_eq!(debug_contexts(Some("broker,cgrp")), "broker,cgrp");
        assert_eq!(debug_contexts(Some("all")), "all");
    }

    #[test]
    fn a_drain_ends_by_its_timeout_or_the_shutdown_deadline_whichever_is_first() {
        let t0 = tokio::time::Instant::now();
        let timeout = Duration::from_secs(20);
        assert_eq!(drain_deadline(t0, timeout, None), t0 + timeout);
        // SIGTERM came 15 s into a revocation drain: the shutdown's drain
        // that follows ends 20 s after SIGTERM, not 20 s after it starts.
        let sigterm_deadline = t0 + Duration::from_secs(35);
        let later = t0 + Duration::from_secs(20);
        assert_eq!(
            drain_deadline(later, timeout, Some(sigterm_deadline)),
            sigterm_deadline
        );
        assert_eq!(
            drain_deadline(t0, timeout, Some(sigterm_deadline)),
            t0 + timeout
        );
    }

    #[test]
    fn a_partition_pauses_when_full_or_holding_and_resumes_only_when_neither() {
        assert_eq!(pause_change(false, false, 100, 1000), None);
        assert_eq!(pause_change(false, false, 1001, 1000), Some(true));
        assert_eq!(pause_change(false, true, 0, 1000), Some(true));
        assert_eq!(
            pause_change(true, true, 0, 1000),
            None,
            "blocked stays paused"
        );
        assert_eq!(pause_change(true, false, 700, 1000), None, "hysteresis");
        assert_eq!(pause_change(true, false, 499, 1000), Some(false));
    }

    #[test]
    fn a_share_must_hold_three_batches() {
        const MIB: usize = 1 << 20;
        // The defaults: 64 MiB over 12 partitions is 5.3 MiB each, enough for 1 MiB batches.
        assert_eq!(too_small_share(64 * MIB, 12, MIB), None);
        assert_eq!(too_small_share(64 * MIB, 21, MIB), None);
        assert_eq!(too_small_share(64 * MIB, 22, MIB), Some(64 * MIB / 22));
        assert_eq!(too_small_share(64 * MIB, 4, 32 * MIB), Some(16 * MIB));
        assert_eq!(too_small_share(64 * MIB, 0, MIB), None);
    }
}
