//! The partition worker: one task per assigned partition. It decodes,
//! filters and batches the partition's messages in offset order, delivers
//! one batch at a time (which keeps per-partition order), and reports the
//! delivered frontier to the consumer loop, which stores it as the offset to
//! commit.
//!
//! It stops when told to drain (revocation, shutdown): it stops taking
//! messages, sends its open batch, lets the in-flight delivery finish until the
//! deadline, and returns the last safe offset. Anything not delivered by then
//! is abandoned uncommitted, so the partition's next owner redelivers it.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;

use bytes::Bytes;
use chrono::Utc;
use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinHandle;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use crate::config::{Config, DlqPolicy};
use crate::event::decode::{decode_into, DecodeError, EventMeta};
use crate::event::filter::Filter;
use crate::ops::metrics::Metrics;
use crate::partition::batch::{Batch, Batcher};
use crate::partition::decide::{dispose, Disposition};
use crate::partition::frontier::{Frontier, UnitId};
use crate::sink::delivery::{Deliverer, Outcome};
use crate::sink::dlq::DeadLetter;
use crate::sink::webhook::Cancelled;
use crate::topic_partition::TopicPartition;

/// A consumed message, owned, as the consumer loop hands it over.
#[derive(Debug)]
pub struct Message {
    pub offset: i64,
    /// Kafka timestamp (create or log-append time), ms since the epoch.
    pub timestamp_ms: Option<i64>,
    pub key: Option<Bytes>,
    pub payload: Option<Bytes>,
}

impl Message {
    /// What the message costs in memory while queued: its key and payload.
    /// Once decoded, the message is dropped and its event, about as large as
    /// the payload, is what the batch holds; so the accounting stays steady as
    /// messages move from the queue into batches.
    pub fn size(&self) -> usize {
        self.payload.as_ref().map_or(0, Bytes::len) + self.key.as_ref().map_or(0, Bytes::len)
    }
}

/// The worker's delivered frontier moved: `next_offset` is safe to commit.
#[derive(Debug, Clone)]
pub struct Progress {
    pub tp: TopicPartition,
    /// Which incarnation of the partition's worker sent it; stale ones are ignored.
    pub generation: u64,
    pub next_offset: i64,
}

/// State the consumer loop reads without talking to the worker.
#[derive(Debug)]
pub struct Shared {
    /// Bytes handed to the worker but not yet taken from its channel.
    pub queued_bytes: AtomicUsize,
    /// Bytes in the open batch, in sealed batches and in flight.
    pub batch_bytes: AtomicUsize,
    /// Kafka timestamp of the oldest undelivered event; `i64::MIN` when none.
    pub oldest_pending_ts_ms: AtomicI64,
    /// One past the offset of the last message the worker took; `i64::MIN` before the first.
    pub consumed_next: AtomicI64,
    /// Unix ms of the worker loop's last turn. The loop turns at least every
    /// second, even while a delivery waits, unless it is deadlocked or starved.
    pub heartbeat_ms: AtomicI64,
    /// Counts batches delivered and dead letters acknowledged: it moves
    /// whenever the partition makes progress (see `ops::stall`).
    pub completions: AtomicU64,
    /// True while a batch is being delivered (or retried) or a dead letter
    /// written: the partition is waiting on the webhook or Kafka, not stalled.
    pub waiting: AtomicBool,
    /// Set under `DLQ_POLICY=block` once a message could not be delivered:
    /// the worker takes no more messages and the consumer keeps the
    /// partition paused until the operator acts.
    pub blocked: AtomicBool,
}

impl Default for Shared {
    fn default() -> Self {
        Shared {
            queued_bytes: AtomicUsize::new(0),
            batch_bytes: AtomicUsize::new(0),
            oldest_pending_ts_ms: AtomicI64::new(i64::MIN),
            heartbeat_ms: AtomicI64::new(Utc::now().timestamp_millis()),
            consumed_next: AtomicI64::new(i64::MIN),
            completions: AtomicU64::new(0),
            waiting: AtomicBool::new(false),
            blocked: AtomicBool::new(false),
        }
    }
}

impl Shared {
    pub fn buffered_bytes(&self) -> usize {
        self.queued_bytes.load(Ordering::Relaxed) + self.batch_bytes.load(Ordering::Relaxed)
    }
    /// True when the worker loop has not turned for `stall_ms`.
    pub fn is_stalled(&self, now_ms: i64, stall_ms: i64) -> bool {
        now_ms - self.heartbeat_ms.load(Ordering::Relaxed) > stall_ms
    }
    pub fn consumed_next(&self) -> Option<i64> {
        match self.consumed_next.load(Ordering::Relaxed) {
            i64::MIN => None,
            offset => Some(offset),
        }
    }
    pub fn oldest_pending_ts_ms(&self) -> Option<i64> {
        match self.oldest_pending_ts_ms.load(Ordering::Relaxed) {
            i64::MIN => None,
            ts => Some(ts),
        }
    }
}

/// What every worker needs, shared.
pub struct Deps {
    pub config: Arc<Config>,
    pub deliverer: Deliverer,
    pub filter: Filter,
    pub metrics: Arc<Metrics>,
    pub progress: mpsc::UnboundedSender<Progress>,
}

/// The consumer loop's handle on a running worker.
pub struct Handle {
    pub generation: u64,
    pub shared: Arc<Shared>,
    /// Whether the consumer paused fetching for this partition.
    pub paused: bool,
    messages: mpsc::UnboundedSender<Vec<Message>>,
    drain: Option<oneshot::Sender<Instant>>,
    abort: CancellationToken,
    join: JoinHandle<Option<i64>>,
}

impl Handle {
    /// Hands messages (in offset order) to the worker. Never blocks: memory
    /// is bounded by pausing the partition when its buffer is full, so the
    /// consumer loop keeps polling.
    pub fn send(&self, messages: Vec<Message>) {
        let bytes = messages.iter().map(Message::size).sum();
        self.shared.queued_bytes.fetch_add(bytes, Ordering::Relaxed);
        // A closed channel means the worker has stopped; the messages stay uncommitted.
        let _ = self.messages.send(messages);
    }

    /// Asks the worker to finish by `deadline` and returns its last safe
    /// offset (one past the last delivered message), if it has one.
    pub fn stop(mut self, deadline: Instant) -> impl std::future::Future<Output = Option<i64>> {
        if let Some(drain) = self.drain.take() {
            let _ = drain.send(deadline);
        }
        let abort = self.abort.clone();
        async move {
            // The worker honours the deadline itself; the extra second covers a
            // task that cannot be scheduled in time.
            match tokio::time::timeout_at(
                deadline + std::time::Duration::from_secs(1),
                &mut self.join,
            )
            .await
            {
                Ok(result) => result.ok().flatten(),
                Err(_) => {
                    abort.cancel();
                    self.join.await.ok().flatten()
                }
            }
        }
    }

    /// Stops the worker at once, without waiting for deliveries (lost partitions).
    pub fn abort(self) {
        self.abort.cancel();
    }
}

/// Starts the worker of one partition.
pub fn spawn(
    runtime: &tokio::runtime::Handle,
    deps: Arc<Deps>,
    tp: TopicPartition,
    generation: u64,
) -> Handle {
    let (messages, rx) = mpsc::unbounded_channel();
    let (drain, drain_rx) = oneshot::channel();
    let abort = CancellationToken::new();
    let shared = Arc::new(Shared::default());
    let worker = Worker {
        tp,
        generation,
        batcher: Batcher::new(deps.config.batch),
        frontier: Frontier::default(),
        ready: VecDeque::new(),
        in_flight: None,
        dead_letters: tokio::task::JoinSet::new(),
        dead_letter_bytes: 0,
        blocked: false,
        shared: shared.clone(),
        abort: abort.clone(),
        undecodable_logged: 0,
        scratch: Vec::new(),
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

struct InFlight {
    unit: UnitId,
    events: usize,
    body_bytes: usize,
    held_bytes: usize,
    oldest_kafka_ts_ms: Option<i64>,
    cancel: CancellationToken,
    join: JoinHandle<Result<Outcome, Cancelled>>,
}

/// A dead-letter write in progress, completing `unit` when acknowledged.
type DeadLetterWrite = (UnitId, usize, Result<(), Cancelled>);

struct Worker {
    tp: TopicPartition,
    generation: u64,
    batcher: Batcher,
    frontier: Frontier,
    /// Sealed batches waiting for the one in flight.
    ready: VecDeque<Batch>,
    in_flight: Option<InFlight>,
    /// Dead-letter writes waiting for Kafka's acknowledgement.
    dead_letters: tokio::task::JoinSet<DeadLetterWrite>,
    dead_letter_bytes: usize,
    /// Set under `DLQ_POLICY=block` when a message cannot be delivered: the
    /// partition's frontier stays behind it from then on.
    blocked: bool,
    shared: Arc<Shared>,
    abort: CancellationToken,
    undecodable_logged: u64,
    /// Reused for each event's JSON before it is copied into the batch body.
    scratch: Vec<u8>,
    deps: Arc<Deps>,
}

async fn sleep_until_opt(deadline: Option<Instant>) {
    match deadline {
        Some(deadline) => tokio::time::sleep_until(deadline).await,
        None => std::future::pending().await,
    }
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
            self.start_next_delivery();
            self.publish_state();
            if drain_deadline.is_some()
                && self.in_flight.is_none()
                && self.ready.is_empty()
                && self.dead_letters.is_empty()
            {
                break;
            }
            let linger = self.batcher.deadline().map(Instant::from_std);
            tokio::select! {
                biased;
                _ = self.abort.cancelled() => break,
                _ = sleep_until_opt(drain_deadline) => {
                    warn!(topic = %self.tp.topic, partition = self.tp.partition, "drain deadline passed with a batch still undelivered; it stays uncommitted and will be redelivered");
                    break;
                }
                done = async { (&mut self.in_flight.as_mut().expect("guarded").join).await }, if self.in_flight.is_some() => {
                    self.finish_delivery(done);
                }
                Some(written) = self.dead_letters.join_next(), if !self.dead_letters.is_empty() => {
                    self.finish_dead_letter(written);
                }
                deadline = &mut drain, if drain_deadline.is_none() => {
                    // A dropped sender (the consumer loop went away) drains at once.
                    drain_deadline = Some(deadline.unwrap_or_else(|_| Instant::now()));
                    self.seal();
                }
                chunk = messages.recv(), if drain_deadline.is_none() && !self.holding() => match chunk {
                    Some(chunk) => {
                        let mut chunk = chunk.into_iter();
                        for message in chunk.by_ref() {
                            self.accept(message);
                            if self.blocked {
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
                        self.seal();
                    }
                },
                _ = sleep_until_opt(linger), if drain_deadline.is_none() => self.seal(),
                _ = heartbeat.tick() => {}
            }
        }
        if let Some(in_flight) = self.in_flight.take() {
            in_flight.cancel.cancel();
        }
        self.dead_letters.abort_all();
        self.shared.batch_bytes.store(0, Ordering::Relaxed);
        self.shared.queued_bytes.store(0, Ordering::Relaxed);
        debug!(topic = %self.tp.topic, partition = self.tp.partition, safe_offset = ?self.frontier.safe_offset(), "partition worker stopped");
        self.frontier.safe_offset()
    }

    /// True while the worker must take no more messages: the partition is
    /// blocked by `DLQ_POLICY=block`, or its dead-letter writes are failing
    /// (each further bad message would add one more pending write).
    fn holding(&self) -> bool {
        self.blocked || self.deps.deliverer.dead_letters.is_failing(&self.tp)
    }

    /// Decodes, filters and batches one message.
    fn accept(&mut self, message: Message) {
        self.shared
            .queued_bytes
            .fetch_sub(message.size(), Ordering::Relaxed);
        let expected = self.shared.consumed_next.load(Ordering::Relaxed);
        if expected != i64::MIN && message.offset < expected {
            // librdkafka reset the position below what was read: the log
            // started again (topic deleted and created anew, or truncated).
            // The frontier starts again too, or it would hold every new
            // offset back behind the old ones and nothing would be committed.
            warn!(
                topic = %self.tp.topic, partition = self.tp.partition,
                offset = message.offset,
                expected,
                "offsets went backwards (topic recreated or truncated); tracking the partition from here"
            );
            self.frontier.rewind();
        }
        self.shared
            .consumed_next
            .store(message.offset + 1, Ordering::Relaxed);
        let mut json = std::mem::take(&mut self.scratch);
        json.clear();
        let decoded = decode_into(
            message.payload.as_deref(),
            self.deps.config.input_format,
            Utc::now(),
            &mut json,
        );
        self.accept_decoded(message, decoded, &json);
        self.scratch = json;
    }

    fn accept_decoded(
        &mut self,
        message: Message,
        decoded: Result<EventMeta, DecodeError>,
        json: &[u8],
    ) {
        let metrics = &self.deps.metrics;
        let config = &self.deps.config;
        match dispose(
            decoded.as_ref(),
            &self.deps.filter,
            json.len(),
            config.batch.max_bytes,
            config.dlq_policy,
        ) {
            Disposition::Undecodable(reason) => {
                metrics
                    .events_undecodable
                    .with_label_values(&[reason])
                    .inc();
                let error = decoded.err().map(|e| e.to_string());
                if crate::ops::log_limit::worth_logging(self.undecodable_logged) {
                    warn!(
                        topic = %self.tp.topic, partition = self.tp.partition,
                        offset = message.offset,
                        reason,
                        error = error.as_deref().unwrap_or(""),
                        count = self.undecodable_logged + 1,
                        "message is not a PostHog event"
                    );
                }
                self.undecodable_logged += 1;
                self.dead_letter(message, reason, error);
                return;
            }
            Disposition::Filtered(skip) => {
                metrics
                    .events_filtered
                    .with_label_values(&[skip.reason()])
                    .inc();
                self.skip(message.offset);
                return;
            }
            Disposition::TooLarge => {
                let max_bytes = config.batch.max_bytes;
                metrics.events_oversized.inc();
                warn!(
                    topic = %self.tp.topic, partition = self.tp.partition,
                    offset = message.offset,
                    bytes = json.len(),
                    limit = max_bytes,
                    "event larger than BATCH_MAX_BYTES"
                );
                self.dead_letter(
                    message,
                    "too_large",
                    Some(format!(
                        "{} bytes encoded; BATCH_MAX_BYTES is {max_bytes}",
                        json.len()
                    )),
                );
                return;
            }
            Disposition::Batch => {}
        }
        if !self.batcher.fits(json.len()) {
            self.seal();
        }
        let unit = match self.batcher.open_unit() {
            Some(unit) => {
                self.frontier.extend(unit, message.offset);
                unit
            }
            None => self.frontier.open(message.offset, message.timestamp_ms),
        };
        self.batcher.push(
            json,
            message.offset,
            message.timestamp_ms,
            std::time::Instant::now(),
            || unit,
        );
        if self.batcher.is_full() {
            self.seal();
        }
    }

    /// Sends a message that cannot be delivered to the dead-letter topic; its
    /// offset is done once Kafka acknowledges the write. Under
    /// `DLQ_POLICY=block` the partition stops at it instead.
    fn dead_letter(&mut self, message: Message, reason: &'static str, error: Option<String>) {
        // A pending unit must not sit inside the open batch's offset range.
        self.seal();
        let unit = self.frontier.open(message.offset, message.timestamp_ms);
        if self.deps.config.dlq_policy == DlqPolicy::Block {
            if !self.blocked {
                tracing::error!(topic = %self.tp.topic, partition = self.tp.partition, offset = message.offset, reason,
                    "DLQ_POLICY=block: the partition stops here; fix or skip the message, or switch to DLQ_POLICY=dlq");
            }
            self.blocked = true;
            self.shared.blocked.store(true, Ordering::Relaxed);
            return;
        }
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
        let size = letter.key.as_ref().map_or(0, Bytes::len)
            + letter.payload.as_ref().map_or(0, Bytes::len);
        self.dead_letter_bytes += size;
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
            (unit, size, result)
        });
    }

    fn finish_dead_letter(&mut self, written: Result<DeadLetterWrite, tokio::task::JoinError>) {
        match written {
            Ok((unit, size, Ok(()))) => {
                self.dead_letter_bytes -= size;
                self.shared.completions.fetch_add(1, Ordering::Relaxed);
                self.frontier.complete(unit);
                self.report_progress();
            }
            Ok((_, size, Err(Cancelled))) => self.dead_letter_bytes -= size,
            Err(e) => {
                tracing::error!(topic = %self.tp.topic, partition = self.tp.partition, error = %e, "dead-letter task failed; stopping the partition worker");
                self.abort.cancel();
            }
        }
    }

    fn skip(&mut self, offset: i64) {
        self.frontier.skip(offset);
        self.report_progress();
    }

    fn seal(&mut self) {
        if let Some(batch) = self.batcher.seal() {
            if batch.oversized {
                self.deps.metrics.events_oversized.inc();
                warn!(
                    topic = %self.tp.topic, partition = self.tp.partition,
                    bytes = batch.body.len(),
                    limit = self.deps.config.batch.max_bytes,
                    "a single event is larger than BATCH_MAX_BYTES; sending it alone"
                );
            }
            self.ready.push_back(batch);
        }
    }

    fn start_next_delivery(&mut self) {
        if self.in_flight.is_some() {
            return;
        }
        let Some(batch) = self.ready.pop_front() else {
            return;
        };
        let cancel = self.abort.child_token();
        let deps = self.deps.clone();
        let tp = self.tp.clone();
        let token = cancel.clone();
        let (unit, events, body_bytes, held_bytes, oldest_kafka_ts_ms) = (
            batch.unit,
            batch.events.len(),
            batch.body.len(),
            batch.held_bytes(),
            batch.oldest_kafka_ts_ms,
        );
        let join = tokio::spawn(async move { deps.deliverer.deliver(&batch, &tp, &token).await });
        self.in_flight = Some(InFlight {
            unit,
            events,
            body_bytes,
            held_bytes,
            oldest_kafka_ts_ms,
            cancel,
            join,
        });
    }

    fn finish_delivery(
        &mut self,
        done: Result<Result<Outcome, Cancelled>, tokio::task::JoinError>,
    ) {
        let in_flight = self
            .in_flight
            .take()
            .expect("called for the batch in flight");
        match done {
            Ok(Ok(outcome)) => {
                let m = &self.deps.metrics;
                m.events_delivered.inc_by(outcome.accepted as u64);
                m.batches_delivered.inc();
                m.batch_events.observe(in_flight.events as f64);
                m.batch_bytes.observe(in_flight.body_bytes as f64);
                if let Some(ts) = in_flight.oldest_kafka_ts_ms {
                    let age_ms = Utc::now().timestamp_millis() - ts;
                    m.end_to_end_latency.observe(age_ms.max(0) as f64 / 1000.0);
                }
                self.shared.completions.fetch_add(1, Ordering::Relaxed);
                self.frontier.complete(in_flight.unit);
                self.report_progress();
            }
            Ok(Err(Cancelled)) => {
                info!(
                    topic = %self.tp.topic, partition = self.tp.partition,
                    "delivery cancelled; the batch stays uncommitted"
                );
            }
            Err(e) => {
                // A panic in the delivery task: the batch stays uncommitted and the
                // partition cannot move past it, so stop the worker loudly.
                tracing::error!(topic = %self.tp.topic, partition = self.tp.partition, error = %e, "delivery task failed; stopping the partition worker");
                self.abort.cancel();
            }
        }
    }

    fn report_progress(&mut self) {
        if let Some(next_offset) = self.frontier.advance() {
            let _ = self.deps.progress.send(Progress {
                tp: self.tp.clone(),
                generation: self.generation,
                next_offset,
            });
        }
    }

    fn publish_state(&self) {
        self.shared
            .heartbeat_ms
            .store(Utc::now().timestamp_millis(), Ordering::Relaxed);
        let held = self.batcher.open_bytes()
            + self.ready.iter().map(Batch::held_bytes).sum::<usize>()
            + self.in_flight.as_ref().map_or(0, |f| f.held_bytes)
            + self.dead_letter_bytes;
        self.shared.batch_bytes.store(held, Ordering::Relaxed);
        // An open batch waits for its linger (BATCH_LINGER_MS may be longer
        // than the stall limit): waiting too, not stalled.
        self.shared.waiting.store(
            self.in_flight.is_some()
                || !self.dead_letters.is_empty()
                || self.batcher.open_unit().is_some(),
            Ordering::Relaxed,
        );
        self.shared.oldest_pending_ts_ms.store(
            self.frontier.oldest_pending_ts_ms().unwrap_or(i64::MIN),
            Ordering::Relaxed,
        );
    }
}
