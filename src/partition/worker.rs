//! The partition worker: one task per assigned partition, the I/O around
//! its state machine (`state.rs`). It takes the messages the consumer loop
//! hands over, decodes and decides each (`decide.rs`), and carries out what
//! the state asks: deliveries and dead-letter writes as tasks, progress
//! reports to the consumer loop (which stores them as the offsets to
//! commit), metrics and logs.
//!
//! It stops when told to drain (revocation, shutdown): it stops taking
//! messages, sends its open batch, lets the deliveries and dead letters in
//! flight finish until the deadline, and returns the last safe offset.
//! Anything not done by then is abandoned uncommitted, so the partition's
//! next owner redelivers it.

use std::sync::atomic::Ordering;
use std::sync::Arc;

use chrono::Utc;
use tokio::sync::{mpsc, oneshot};
use tokio::task::{JoinError, JoinSet};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use crate::config::Config;
use crate::event::decode::decode_into;
use crate::event::filter::Filter;
use crate::ops::metrics::Metrics;
use crate::partition::batch::Batch;
use crate::partition::decide::{dispose, Disposition};
use crate::partition::frontier::UnitId;
use crate::partition::state::{Action, Lanes, PartitionState};
use crate::partition::{Handle, Message, Progress, Shared};
use crate::sink::delivery::{Deliverer, Outcome};
use crate::sink::dlq::DeadLetter;
use crate::sink::webhook::Cancelled;
use crate::topic_partition::TopicPartition;
use crate::transform::DropReason;

/// What every worker needs, shared.
pub struct Deps {
    pub config: Arc<Config>,
    pub deliverer: Deliverer,
    pub filter: Filter,
    pub metrics: Arc<Metrics>,
    pub progress: mpsc::UnboundedSender<Progress>,
}

/// Starts the worker of one partition, delivering through `lanes` (see
/// [`Lanes::per_partition`]: the consumer loop knows how many partitions
/// this replica owns).
pub fn spawn(
    runtime: &tokio::runtime::Handle,
    deps: Arc<Deps>,
    tp: TopicPartition,
    generation: u64,
    lanes: Lanes,
) -> Handle {
    let (messages, rx) = mpsc::unbounded_channel();
    let (drain, drain_rx) = oneshot::channel();
    let abort = CancellationToken::new();
    let shared = Arc::new(Shared::default());
    let worker = Worker {
        tp,
        generation,
        state: PartitionState::new(deps.config.batch, deps.config.dlq_policy, lanes),
        deliveries: JoinSet::new(),
        deliveries_cancel: abort.child_token(),
        dead_letters: JoinSet::new(),
        shared: shared.clone(),
        abort: abort.clone(),
        undecodable_logged: 0,
        scratch: Vec::new(),
        transformed: Vec::new(),
        deps,
    };
    let join = runtime.spawn(worker.run(rx, drain_rx));
    Handle {
        generation,
        shared,
        paused: false,
        messages,
        drain: Some(drain),
        abort,
        join,
    }
}

/// What a finished delivery reports, for the metrics.
struct Delivered {
    unit: UnitId,
    events: usize,
    body_bytes: usize,
    oldest_kafka_ts_ms: Option<i64>,
    result: Result<Outcome, Cancelled>,
}

struct Worker {
    tp: TopicPartition,
    generation: u64,
    state: PartitionState,
    deliveries: JoinSet<Delivered>,
    /// Cancels the deliveries when the worker stops; they end at their next
    /// await rather than being dropped halfway through a dead-letter write.
    deliveries_cancel: CancellationToken,
    /// Dead-letter writes waiting for Kafka's acknowledgement.
    dead_letters: JoinSet<(UnitId, Result<(), Cancelled>)>,
    shared: Arc<Shared>,
    abort: CancellationToken,
    undecodable_logged: u64,
    /// Reused for each event's JSON before it is copied into the batch body.
    scratch: Vec<u8>,
    /// Reused for the event as the operator's rules leave it.
    transformed: Vec<u8>,
    deps: Arc<Deps>,
}

async fn sleep_until_opt(deadline: Option<Instant>) {
    match deadline {
        Some(deadline) => tokio::time::sleep_until(deadline).await,
        None => std::future::pending().await,
    }
}

/// How long the webhook must have been failing for a drain (a revocation or
/// a shutdown) to stop waiting for it.
pub const DRAIN_GIVES_UP_AFTER: std::time::Duration = std::time::Duration::from_secs(5);

/// The state's clock: tokio's, so linger deadlines and timers agree (also
/// under `tokio::time::pause`).
fn now() -> std::time::Instant {
    Instant::now().into_std()
}

impl Worker {
    async fn run(
        mut self,
        mut messages: mpsc::UnboundedReceiver<Vec<Message>>,
        mut drain: oneshot::Receiver<Instant>,
    ) -> Option<i64> {
        let mut drain_deadline: Option<Instant> = None;
        let mut heartbeat = tokio::time::interval(std::time::Duration::from_secs(1));
        loop {
            if self.shared.pressed.load(Ordering::Relaxed)
                && self.shared.queued_bytes.load(Ordering::Relaxed) == 0
            {
                // Paused (a full buffer, or the worker holds) with nothing
                // more queued: the open batches grow no further until the
                // partition resumes, so they go now rather than at linger.
                self.state.seal_open();
            }
            self.carry_out();
            self.publish_state();
            if self.state.is_drained() {
                break;
            }
            if drain_deadline.is_some() && self.webhook_down() {
                // Waiting out the deadline would deliver nothing and hold
                // the partition (a revocation: the replica taking it over
                // waits; a shutdown: the exit waits).
                warn!(topic = self.tp.topic(), partition = self.tp.partition,
                    "the webhook keeps failing: the drain stops waiting; what is undelivered stays uncommitted and will be redelivered");
                break;
            }
            let linger = self.state.linger_deadline().map(Instant::from_std);
            tokio::select! {
                biased;
                _ = self.abort.cancelled() => break,
                _ = sleep_until_opt(drain_deadline) => {
                    warn!(topic = self.tp.topic(), partition = self.tp.partition, "drain deadline passed with a batch still undelivered; it stays uncommitted and will be redelivered");
                    break;
                }
                Some(done) = self.deliveries.join_next(), if !self.deliveries.is_empty() => {
                    self.finish_delivery(done);
                }
                Some(written) = self.dead_letters.join_next(), if !self.dead_letters.is_empty() => {
                    self.finish_dead_letter(written);
                }
                deadline = &mut drain, if drain_deadline.is_none() => {
                    // A dropped sender (the consumer loop went away) drains at once.
                    drain_deadline = Some(deadline.unwrap_or_else(|_| Instant::now()));
                    self.state.drain();
                }
                // Before the messages: during a backlog there is always a
                // chunk, and a quiet lane's batch would wait for the next cap.
                _ = sleep_until_opt(linger), if drain_deadline.is_none() => self.state.linger(now()),
                chunk = messages.recv(), if drain_deadline.is_none() && !self.holding() => match chunk {
                    Some(chunk) => {
                        let mut chunk = chunk.into_iter();
                        for message in chunk.by_ref() {
                            self.accept(message);
                            if self.state.is_blocked() {
                                break;
                            }
                        }
                        // Nothing after a blocking message is taken; it stays
                        // uncommitted and is read again after a restart.
                        let untaken: usize = chunk.map(|m| m.size()).sum();
                        self.shared.queued_bytes.fetch_sub(untaken, Ordering::Relaxed);
                    }
                    None => {
                        drain_deadline = Some(Instant::now() + self.deps.config.shutdown_timeout);
                        self.state.drain();
                    }
                },
                _ = self.shared.pressure.notified() => {}
                _ = heartbeat.tick() => {}
            }
        }
        self.deliveries_cancel.cancel();
        self.deliveries.detach_all();
        self.dead_letters.abort_all();
        self.shared.batch_bytes.store(0, Ordering::Relaxed);
        self.shared.queued_bytes.store(0, Ordering::Relaxed);
        let safe_offset = self.state.safe_offset();
        debug!(
            topic = self.tp.topic(),
            partition = self.tp.partition,
            ?safe_offset,
            "partition worker stopped"
        );
        safe_offset
    }

    /// Whether every webhook answer for `DRAIN_GIVES_UP_AFTER` has been a
    /// failure: an outage, not a blip that the drain should wait out.
    fn webhook_down(&self) -> bool {
        self.deps
            .deliverer
            .webhook
            .failing_for()
            .is_some_and(|failing| failing >= DRAIN_GIVES_UP_AFTER)
    }

    /// True while the worker must take no more messages: the partition is
    /// blocked by `DLQ_POLICY=block`, its dead-letter writes are failing
    /// (each further bad message would add one more pending write), or a
    /// lane has as many units pending as it may (a stuck lane holds the
    /// others back; the check is per chunk, so a chunk may pass the cap).
    fn holding(&self) -> bool {
        self.state.is_blocked()
            || self.state.is_saturated()
            || self.deps.deliverer.dead_letters.is_failing(&self.tp)
    }

    /// Decodes and decides one message, records what it became, and hands
    /// it to the state.
    fn accept(&mut self, message: Message) {
        self.shared
            .queued_bytes
            .fetch_sub(message.size(), Ordering::Relaxed);
        let mut json = std::mem::take(&mut self.scratch);
        json.clear();
        let config = &self.deps.config;
        let decoded = decode_into(
            message.payload.as_deref(),
            config.input_format,
            Utc::now(),
            &mut json,
        );
        let mut disposition = dispose(
            decoded.as_ref(),
            &self.deps.filter,
            json.len(),
            config.batch.max_bytes,
            config.dlq_policy,
        );
        let rules = &config.transform.0;
        if matches!(disposition, Disposition::Batch | Disposition::TooLarge) && !rules.is_empty() {
            // What leaves PostHog: after decoding, before batching. A
            // dropped event is filtered out, done for the frontier at once.
            let applied = rules.apply(&json, &mut self.transformed);
            self.record_transform(&applied);
            disposition = match applied.dropped {
                // The rules could not read the event (the decoder never
                // writes such): set aside with its original, not lost.
                Some(DropReason::Unreadable) => Disposition::Undecodable("unreadable_by_rules"),
                Some(reason) => Disposition::Dropped(reason),
                None => {
                    std::mem::swap(&mut json, &mut self.transformed);
                    dispose(
                        decoded.as_ref(),
                        &self.deps.filter,
                        json.len(),
                        config.batch.max_bytes,
                        config.dlq_policy,
                    )
                }
            };
        }
        let error = decoded.err().map(|e| e.to_string());
        self.record(&message, disposition, json.len(), error.as_deref());
        self.state.take(message, disposition, &json, error, now());
        if let Some(next) = self.state.consumed_next() {
            self.shared.consumed_next.store(next, Ordering::Relaxed);
        }
        self.scratch = json;
    }

    /// The counters of what the operator's rules did to one event.
    fn record_transform(&self, applied: &crate::transform::Applied) {
        let metrics = &self.deps.metrics;
        if applied.removed > 0 {
            metrics
                .properties_removed
                .inc_by(u64::from(applied.removed));
        }
        if applied.hashed > 0 {
            metrics.properties_hashed.inc_by(u64::from(applied.hashed));
        }
        if applied.filter_error.is_some() {
            metrics.event_filter_errors.inc();
        }
    }

    /// The metrics and logs of one message's disposition.
    fn record(
        &mut self,
        message: &Message,
        disposition: Disposition,
        json_len: usize,
        error: Option<&str>,
    ) {
        let metrics = &self.deps.metrics;
        match disposition {
            Disposition::Undecodable(reason) => {
                metrics
                    .events_undecodable
                    .with_label_values(&[reason])
                    .inc();
                if crate::ops::log_limit::worth_logging(self.undecodable_logged) {
                    warn!(
                        topic = self.tp.topic(),
                        partition = self.tp.partition,
                        offset = message.offset,
                        reason,
                        error = error.unwrap_or(""),
                        count = self.undecodable_logged + 1,
                        "message is not a PostHog event"
                    );
                }
                self.undecodable_logged += 1;
            }
            Disposition::Filtered(skip) => {
                metrics
                    .events_filtered
                    .with_label_values(&[skip.reason()])
                    .inc();
            }
            Disposition::Dropped(reason) => {
                metrics
                    .events_filtered
                    .with_label_values(&[reason.reason()])
                    .inc();
            }
            Disposition::TooLarge => {
                metrics.events_oversized.inc();
                warn!(
                    topic = self.tp.topic(),
                    partition = self.tp.partition,
                    offset = message.offset,
                    bytes = json_len,
                    limit = self.deps.config.batch.max_bytes,
                    "event larger than BATCH_MAX_BYTES"
                );
            }
            Disposition::Batch => {}
        }
    }

    /// Carries out what the state decided.
    fn carry_out(&mut self) {
        for action in self.state.actions() {
            match action {
                Action::Deliver(batch) => self.start_delivery(batch),
                Action::WriteDeadLetter {
                    unit,
                    message,
                    reason,
                    error,
                } => self.write_dead_letter(unit, message, reason, error),
                Action::Progress(next_offset) => {
                    let _ = self.deps.progress.send(Progress {
                        tp: self.tp.clone(),
                        generation: self.generation,
                        next_offset,
                    });
                }
                Action::Rewound { offset, expected } => warn!(
                    topic = self.tp.topic(),
                    partition = self.tp.partition,
                    offset,
                    expected,
                    "offsets went backwards (topic recreated or truncated); tracking the partition from here"
                ),
                Action::Blocked { offset, reason } => {
                    tracing::error!(topic = self.tp.topic(), partition = self.tp.partition, offset, reason,
                        "DLQ_POLICY=block: the partition stops here; fix or skip the message, or switch to DLQ_POLICY=dlq");
                    self.shared.blocked.store(true, Ordering::Relaxed);
                }
                Action::Oversized { bytes } => {
                    self.deps.metrics.events_oversized.inc();
                    warn!(
                        topic = self.tp.topic(),
                        partition = self.tp.partition,
                        bytes,
                        limit = self.deps.config.batch.max_bytes,
                        "a single event is larger than BATCH_MAX_BYTES; sending it alone"
                    );
                }
            }
        }
    }

    fn start_delivery(&mut self, batch: Batch) {
        let deps = self.deps.clone();
        let tp = self.tp.clone();
        let cancel = self.deliveries_cancel.clone();
        self.deliveries.spawn(async move {
            let result = deps.deliverer.deliver(&batch, &tp, &cancel).await;
            Delivered {
                unit: batch.unit,
                events: batch.events.len(),
                body_bytes: batch.body.len(),
                oldest_kafka_ts_ms: batch.oldest_kafka_ts_ms,
                result,
            }
        });
    }

    fn finish_delivery(&mut self, done: Result<Delivered, JoinError>) {
        match done {
            Ok(Delivered {
                unit,
                events,
                body_bytes,
                oldest_kafka_ts_ms,
                result: Ok(outcome),
            }) => {
                let m = &self.deps.metrics;
                m.events_delivered.inc_by(outcome.accepted as u64);
                m.batches_delivered.inc();
                m.batch_events.observe(events as f64);
                m.batch_bytes.observe(body_bytes as f64);
                if let Some(ts) = oldest_kafka_ts_ms {
                    let age_ms = Utc::now().timestamp_millis() - ts;
                    m.end_to_end_latency.observe(age_ms.max(0) as f64 / 1000.0);
                }
                self.shared.completions.fetch_add(1, Ordering::Relaxed);
                self.state.delivered(unit);
            }
            Ok(Delivered {
                unit,
                result: Err(Cancelled),
                ..
            }) => {
                info!(
                    topic = self.tp.topic(),
                    partition = self.tp.partition,
                    "delivery cancelled; the batch stays uncommitted"
                );
                self.state.delivery_abandoned(unit);
            }
            Err(e) => {
                // A panic in the delivery task: the batch stays uncommitted and the
                // partition cannot move past it, so stop the worker loudly.
                tracing::error!(topic = self.tp.topic(), partition = self.tp.partition, error = %e, "delivery task failed; stopping the partition worker");
                self.abort.cancel();
            }
        }
    }

    fn write_dead_letter(
        &mut self,
        unit: UnitId,
        message: Message,
        reason: &'static str,
        error: Option<String>,
    ) {
        let letter = DeadLetter {
            key: message.key,
            payload: message.payload,
            source: self.tp.clone(),
            offset: message.offset,
            reason: reason.to_owned(),
            error,
            http_status: None,
            response_body: None,
            sent_event: false,
        };
        let deps = self.deps.clone();
        let cancel = self.abort.child_token();
        self.dead_letters.spawn(async move {
            let result = deps.deliverer.dead_letters.write(&letter, &cancel).await;
            if result.is_ok() {
                deps.metrics
                    .events_dead_lettered
                    .with_label_values(&[letter.reason.as_str()])
                    .inc();
            }
            (unit, result)
        });
    }

    fn finish_dead_letter(&mut self, written: Result<(UnitId, Result<(), Cancelled>), JoinError>) {
        match written {
            Ok((unit, Ok(()))) => {
                self.shared.completions.fetch_add(1, Ordering::Relaxed);
                self.state.dead_lettered(unit);
            }
            Ok((unit, Err(Cancelled))) => self.state.dead_letter_abandoned(unit),
            Err(e) => {
                tracing::error!(topic = self.tp.topic(), partition = self.tp.partition, error = %e, "dead-letter task failed; stopping the partition worker");
                self.abort.cancel();
            }
        }
    }

    fn publish_state(&self) {
        self.shared
            .heartbeat_ms
            .store(Utc::now().timestamp_millis(), Ordering::Relaxed);
        self.shared
            .batch_bytes
            .store(self.state.held_bytes(), Ordering::Relaxed);
        self.shared
            .waiting
            .store(self.state.is_waiting(), Ordering::Relaxed);
        self.shared
            .saturated
            .store(self.state.is_saturated(), Ordering::Relaxed);
        self.shared.oldest_pending_ts_ms.store(
            self.state.oldest_pending_ts_ms().unwrap_or(i64::MIN),
            Ordering::Relaxed,
        );
    }
}
