//! `STATE_TOPIC`: the connector's own state, kept where every deployment of
//! it already has durable storage, in Kafka. A compacted topic of one
//! partition, keyed by what the value describes (the last value of a key is
//! its state):
//!
//! - `stream-start/<group>/<topic>/<partition>/<placed at>`: where the group
//!   started reading a partition it had no commit for (see [`StreamStart`]):
//!   the backfill's hand-over point;
//! - `backfill/<group>/<team>`: a backfill's checkpoint (`crate::backfill`).
//!
//! It also serves as a lock: [`StateTopic::lock`] joins a consumer group of
//! its own over the topic's one partition, so that of two backfills of the
//! same team and group, the second waits for the first.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::Message as _;
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::{Offset, TopicPartitionList};
use serde::{Deserialize, Serialize};
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use crate::config::Config;
use crate::kafka::close;
use crate::kafka::connection::{Connection, SideContext};
use crate::kafka::read::{self, kafka_retry_delay};
use crate::ops::shutdown::{pause, Cancelled};
use crate::topic_partition::TopicPartition;

/// Where a group started reading one partition for the first time (it had
/// no commit there): written when the partition is placed, then again with
/// the first message read.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StreamStart {
    pub topic: String,
    pub partition: i32,
    /// When the group placed the partition (Unix ms, this replica's clock):
    /// every message it cannot read was written before then.
    pub placed_at_ms: i64,
    /// The first message it read: its offset and Kafka timestamp. Every
    /// message before it in the partition was written before it.
    pub first_offset: Option<i64>,
    pub first_timestamp_ms: Option<i64>,
}

pub fn stream_start_prefix(group: &str) -> String {
    format!("stream-start/{group}/")
}

/// One key per placement: a write that arrives late (or a stale one) never
/// replaces the record of a later placement; the first message's update of
/// a placement replaces that placement's own record.
fn stream_start_key(group: &str, tp: &TopicPartition, placed_at_ms: i64) -> String {
    format!(
        "{}{}/{}/{placed_at_ms}",
        stream_start_prefix(group),
        tp.topic,
        tp.partition
    )
}

/// The state topic's client: a producer for writes, consumers created per read.
#[derive(Clone)]
pub struct StateTopic {
    connection: Connection,
    producer: FutureProducer<SideContext>,
    topic: String,
    group: String,
    /// `ensure` ran (its result): writes wait for it, so that a broker that
    /// creates topics on first write does not create this one uncompacted.
    ensured: Arc<tokio::sync::OnceCell<bool>>,
    /// The writer of stream-start records, started with the first.
    starts: Arc<std::sync::OnceLock<tokio::sync::mpsc::UnboundedSender<StreamStart>>>,
}

impl StateTopic {
    pub fn new(config: &Config) -> anyhow::Result<Self> {
        let connection = Connection::from_config(config);
        let mut client = connection.client_config("patterns-connector-state");
        client
            .set("acks", "all")
            .set("enable.idempotence", "true")
            .set("message.timeout.ms", "30000");
        let producer = client
            .create_with_context(SideContext::new("state producer"))
            .map_err(|e| {
                anyhow::anyhow!(
                    "cannot create the STATE_TOPIC producer (check KAFKA_PROPERTIES): {e}"
                )
            })?;
        Ok(StateTopic {
            connection,
            producer,
            topic: config.state_topic.clone(),
            group: config.kafka_consumer_group.clone(),
            ensured: Arc::default(),
            starts: Arc::default(),
        })
    }

    pub fn topic(&self) -> &str {
        &self.topic
    }

    /// `ensure`, once per client (its error logged); true when the topic exists.
    pub async fn ensure_once(&self) -> bool {
        *self
            .ensured
            .get_or_init(|| async {
                match self.ensure().await {
                    Ok(()) => true,
                    Err(e) => {
                        warn!(error = %e, "cannot create STATE_TOPIC: where the group starts reading is recorded only if the broker creates topics on first write; otherwise a backfill needs BACKFILL_UNTIL");
                        false
                    }
                }
            })
            .await
    }

    /// Creates the topic (compacted, one partition) unless it exists.
    pub async fn ensure(&self) -> anyhow::Result<()> {
        let admin: AdminClient<SideContext> = self
            .connection
            .client_config("patterns-connector-state-admin")
            .create_with_context(SideContext::new("state admin"))
            .map_err(|e| anyhow::anyhow!("cannot create a Kafka admin client: {e}"))?;
        let topic = NewTopic::new(&self.topic, 1, TopicReplication::Fixed(-1))
            .set("cleanup.policy", "compact");
        let options = AdminOptions::new()
            .operation_timeout(Some(Duration::from_secs(10)))
            .request_timeout(Some(Duration::from_secs(15)));
        let results = admin
            .create_topics([&topic], &options)
            .await
            .map_err(|e| anyhow::anyhow!("cannot create STATE_TOPIC {}: {e}", self.topic))?;
        for result in results {
            match result {
                Ok(_) => info!(topic = %self.topic, "created STATE_TOPIC (compacted)"),
                Err((_, RDKafkaErrorCode::TopicAlreadyExists)) => {}
                Err((_, code)) => {
                    anyhow::bail!("cannot create STATE_TOPIC {}: {code}", self.topic)
                }
            }
        }
        Ok(())
    }

    /// Writes `value` under `key`, retrying until Kafka acknowledged it or
    /// `cancel` fires.
    pub async fn put(
        &self,
        key: &str,
        value: &impl Serialize,
        cancel: &CancellationToken,
    ) -> Result<(), Cancelled> {
        let value = serde_json::to_vec(value).expect("state values serialize");
        let mut attempt = 0u32;
        loop {
            let record = FutureRecord::to(&self.topic).key(key).payload(&value);
            let sent = tokio::select! {
                _ = cancel.cancelled() => return Err(Cancelled),
                sent = self.producer.send(record, Duration::from_secs(30)) => sent,
            };
            match sent {
                Ok(_) => return Ok(()),
                Err((e, _)) => {
                    if crate::ops::log_limit::worth_logging(attempt.into()) {
                        warn!(topic = %self.topic, key, error = %e, attempt, "writing to STATE_TOPIC failed; retrying");
                    }
                    pause(kafka_retry_delay(attempt), cancel).await?;
                    attempt = attempt.saturating_add(1);
                }
            }
        }
    }

    /// Records where the group started reading `tp`, in the background
    /// (the consumer loop does not wait for Kafka), in the order asked: one
    /// writer task, so a placement's first-message record is never
    /// overwritten by its earlier placement-only record.
    pub fn record_stream_start(&self, runtime: &tokio::runtime::Handle, start: StreamStart) {
        let writer = self.starts.get_or_init(|| {
            let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
            runtime.spawn(self.clone().write_starts(rx));
            tx
        });
        let _ = writer.send(start);
    }

    async fn write_starts(self, mut starts: tokio::sync::mpsc::UnboundedReceiver<StreamStart>) {
        while let Some(start) = starts.recv().await {
            let key = stream_start_key(
                &self.group,
                &TopicPartition::new(start.topic.as_str(), start.partition),
                start.placed_at_ms,
            );
            // Bounded: a state topic that cannot be written must not hold
            // up the records behind it for ever; the backfill then asks for
            // BACKFILL_UNTIL.
            let cancel = CancellationToken::new();
            let guard = cancel.clone().drop_guard();
            let put = async {
                self.ensure_once().await;
                self.put(&key, &start, &cancel).await
            };
            if tokio::time::timeout(Duration::from_secs(120), put)
                .await
                .is_err()
            {
                warn!(topic = %self.topic, key, "could not record where the group started reading a partition; a backfill will need BACKFILL_UNTIL");
            }
            drop(guard);
        }
    }

    /// The latest value of every key starting with `prefix`: reads the whole
    /// topic up to its end. Blocks the thread.
    pub fn read_prefix(&self, prefix: &str) -> anyhow::Result<BTreeMap<String, Vec<u8>>> {
        let consumer = self.reader("patterns-connector-state-reader")?;
        let timeout = Duration::from_secs(10);
        let metadata = read::retrying("STATE_TOPIC metadata", || {
            consumer.fetch_metadata(Some(&self.topic), timeout)
        })
        .map_err(|e| {
            anyhow::anyhow!(
                "cannot read the metadata of STATE_TOPIC {}: {e}",
                self.topic
            )
        })?;
        let partitions: Vec<i32> = metadata
            .topics()
            .iter()
            .filter(|t| t.name() == self.topic && t.error().is_none())
            .flat_map(|t| t.partitions().iter().map(|p| p.id()))
            .collect();
        let mut ends = BTreeMap::new();
        let mut assignment = TopicPartitionList::new();
        for p in partitions {
            let (low, high) = read::retrying("STATE_TOPIC watermarks", || {
                consumer.fetch_watermarks(&self.topic, p, timeout)
            })
            .map_err(|e| anyhow::anyhow!("cannot read STATE_TOPIC {}: {e}", self.topic))?;
            if low < high {
                ends.insert(p, high);
                assignment.add_partition_offset(&self.topic, p, Offset::Offset(low))?;
            }
        }
        let mut values = BTreeMap::new();
        if ends.is_empty() {
            return Ok(values);
        }
        consumer.assign(&assignment)?;
        let deadline = std::time::Instant::now() + Duration::from_secs(60);
        while !ends.is_empty() {
            anyhow::ensure!(
                std::time::Instant::now() < deadline,
                "STATE_TOPIC {} could not be read to its end within 60 s",
                self.topic
            );
            let Some(message) = consumer.poll(Duration::from_millis(500)) else {
                continue;
            };
            let message = match message {
                Ok(m) => m,
                Err(e) => {
                    warn!(error = %e, "reading STATE_TOPIC");
                    continue;
                }
            };
            if let Some(key) = message.key().and_then(|k| std::str::from_utf8(k).ok()) {
                if key.starts_with(prefix) {
                    match message.payload() {
                        Some(value) => values.insert(key.to_owned(), value.to_vec()),
                        None => values.remove(key), // a tombstone
                    };
                }
            }
            if ends
                .get(&message.partition())
                .is_some_and(|end| message.offset() + 1 >= *end)
            {
                ends.remove(&message.partition());
            }
        }
        Ok(values)
    }

    /// Where the group started reading each partition, as recorded.
    pub fn stream_starts(&self) -> anyhow::Result<Vec<StreamStart>> {
        let prefix = stream_start_prefix(&self.group);
        let values = self.read_prefix(&prefix)?;
        Ok(values
            .iter()
            // `<topic>/<partition>/<placed at>`: a topic name has no `/`, so
            // a key with more belongs to a group whose name extends ours.
            .filter(|(key, _)| key[prefix.len()..].matches('/').count() == 2)
            .filter_map(|(_, v)| serde_json::from_slice(v).ok())
            .collect())
    }

    /// Every partition of the topics the stream reads (`KAFKA_TOPIC`), as
    /// the brokers' metadata lists them now. Blocks the thread.
    pub fn stream_partitions(&self, config: &Config) -> anyhow::Result<Vec<(String, i32)>> {
        let consumer = self.reader("patterns-connector-state-metadata")?;
        let metadata = read::retrying("topic metadata", || {
            consumer.fetch_metadata(None, Duration::from_secs(10))
        })
        .map_err(|e| anyhow::anyhow!("cannot read the topics' metadata: {e}"))?;
        Ok(metadata
            .topics()
            .iter()
            .filter(|t| t.error().is_none() && crate::kafka::topics::subscribed(config, t.name()))
            .flat_map(|t| t.partitions().iter().map(|p| (t.name().to_owned(), p.id())))
            .collect())
    }

    fn reader(&self, client_id: &str) -> anyhow::Result<BaseConsumer<SideContext>> {
        let mut client = self.connection.client_config(client_id);
        client
            .set("group.id", format!("{}-state-reader", self.group))
            .set("enable.auto.commit", "false")
            .set("enable.auto.offset.store", "false")
            .set("auto.offset.reset", "earliest");
        client
            .create_with_context(SideContext::new("state reader"))
            .map_err(|e| anyhow::anyhow!("cannot create the STATE_TOPIC reader: {e}"))
    }

    /// Takes the lock named `name`: joins the consumer group `name` over
    /// STATE_TOPIC and returns once this member owns its partition 0. A
    /// second holder of the same name waits here until the first leaves the
    /// group or its session times out. The lock is held while the returned
    /// [`Lock`] is polled ([`Lock::check`]) and released when it is dropped.
    pub async fn lock(&self, name: &str, cancel: &CancellationToken) -> anyhow::Result<Lock> {
        let mut client = self.connection.client_config("patterns-connector-lock");
        client
            .set("group.id", name)
            .set("enable.auto.commit", "false")
            .set("session.timeout.ms", "10000")
            .set("heartbeat.interval.ms", "1000")
            .set("partition.assignment.strategy", "cooperative-sticky");
        let consumer: BaseConsumer<SideContext> = client
            .create_with_context(SideContext::new("lock"))
            .map_err(|e| anyhow::anyhow!("cannot create the lock's consumer: {e}"))?;
        consumer
            .subscribe(&[&self.topic])
            .map_err(|e| anyhow::anyhow!("cannot join the lock group {name}: {e}"))?;
        // Nothing is ever read: the partition stays paused once owned.
        let mut waiting_logged = std::time::Instant::now();
        let started = waiting_logged;
        let consumer = tokio::task::block_in_place(|| -> anyhow::Result<_> {
            loop {
                anyhow::ensure!(
                    !cancel.is_cancelled(),
                    "cancelled while waiting for the lock"
                );
                if let Some(Err(e)) = consumer.poll(Duration::from_millis(200)) {
                    if matches!(e, KafkaError::MessageConsumptionFatal(_)) {
                        anyhow::bail!("the lock's consumer failed: {e}");
                    }
                }
                let owned = consumer.assignment().map(|a| owns_first(&a, &self.topic));
                if owned.unwrap_or(false) {
                    if let Ok(assignment) = consumer.assignment() {
                        let _ = consumer.pause(&assignment);
                    }
                    return Ok(consumer);
                }
                // The first join takes a moment; a wait past that is another holder.
                let first =
                    waiting_logged == started && started.elapsed() >= Duration::from_secs(3);
                if first || waiting_logged.elapsed() >= Duration::from_secs(10) {
                    waiting_logged = std::time::Instant::now();
                    info!(
                        lock = name,
                        waited_s = started.elapsed().as_secs(),
                        "waiting: another backfill of the same team and group holds the lock"
                    );
                }
            }
        })?;
        Ok(Lock::hold(consumer, self.topic.clone()))
    }
}

fn owns_first(assignment: &TopicPartitionList, topic: &str) -> bool {
    assignment.find_partition(topic, 0).is_some()
}

/// A held lock ([`StateTopic::lock`]). A thread of its own serves the lock
/// group (rebalances, `max.poll.interval.ms`) whatever the backfill is
/// doing, so a long count or a slow start never lets the lock go.
pub struct Lock {
    held: Arc<AtomicBool>,
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<BaseConsumer<SideContext>>>,
}

impl Lock {
    fn hold(consumer: BaseConsumer<SideContext>, topic: String) -> Lock {
        let held = Arc::new(AtomicBool::new(true));
        let stop = Arc::new(AtomicBool::new(false));
        let (h, s) = (held.clone(), stop.clone());
        let thread = std::thread::Builder::new()
            .name("backfill-lock".into())
            .spawn(move || {
                while !s.load(Ordering::Relaxed) {
                    let _ = consumer.poll(Duration::from_millis(200));
                    let owned = match consumer.assignment() {
                        Ok(assignment) => {
                            let _ = consumer.pause(&assignment);
                            owns_first(&assignment, &topic)
                        }
                        Err(_) => false,
                    };
                    if !owned {
                        h.store(false, Ordering::Relaxed);
                    }
                }
                consumer
            })
            .ok();
        Lock { held, stop, thread }
    }

    /// False once the lock was lost (the session timed out, another member
    /// took it); it is not taken back.
    pub fn check(&self) -> bool {
        self.thread.is_some() && self.held.load(Ordering::Relaxed)
    }
}

/// How long releasing the lock waits for the consumer to leave the group.
const LEAVE_WAIT: Duration = Duration::from_secs(10);

impl Drop for Lock {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(thread) = self.thread.take() {
            // Closing the consumer leaves the group: a waiting backfill takes
            // the lock at once, not after the session timeout. A LeaveGroup
            // can wait up to socket.timeout.ms (60 s): not for that long.
            if let Ok(consumer) = thread.join() {
                let closed = close::within(consumer, LEAVE_WAIT, "closing-lock");
                if closed != close::Closed::Done {
                    warn!(?closed, "releasing the backfill's lock did not finish; another backfill waiting for it gets it after the group's session timeout");
                }
            }
        }
    }
}
