//! Reading original messages back from Kafka by offset.
//!
//! Batches do not keep the messages they were decoded from: that would double
//! the memory every buffered event costs, for the rare event the webhook
//! rejects. When the webhook does reject one, its original bytes are read back
//! from the source partition here and go to the dead-letter topic, exactly as
//! an undecodable message does.
//!
//! One extra Kafka client, created on first use, assigned (never subscribed,
//! never committing) to the partition and offsets it needs.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::Message as _;
use rdkafka::{ClientConfig, Offset, TopicPartitionList};
use tokio_util::sync::CancellationToken;
use tracing::warn;

use crate::config::Config;
use crate::kafka::connection::{Connection, SideContext};
use crate::kafka::read::kafka_retry_delay;
use crate::ops::shutdown::{pause, Cancelled};
use crate::topic_partition::TopicPartition;

/// A message as it was read from the source topic.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Original {
    pub key: Option<Bytes>,
    pub payload: Option<Bytes>,
}

/// What a read found for one offset.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Found {
    Message(Original),
    /// Deleted from the partition (retention or compaction) in the meantime.
    Gone,
}

#[derive(Clone)]
pub struct Originals {
    client: ClientConfig,
    consumer: Arc<Mutex<Option<BaseConsumer<SideContext>>>>,
}

/// How long one attempt may take before it is retried.
const ATTEMPT_TIMEOUT: Duration = Duration::from_secs(10);

impl Originals {
    pub fn new(config: &Config) -> Self {
        let mut client =
            Connection::from_config(config).client_config("patterns-connector-originals");
        client
            // Required by librdkafka for a consumer; nothing is ever committed.
            .set(
                "group.id",
                format!("{}-originals", config.kafka_consumer_group),
            )
            .set("enable.auto.commit", "false")
            .set("enable.auto.offset.store", "false")
            .set("auto.offset.reset", "error");
        Originals {
            client,
            consumer: Arc::new(Mutex::new(None)),
        }
    }

    /// Reads the messages at `offsets` of `tp`, retrying failures until
    /// every offset is found or known to be gone, or `cancel` fires.
    pub async fn read(
        &self,
        tp: &TopicPartition,
        offsets: &[i64],
        cancel: &CancellationToken,
    ) -> Result<BTreeMap<i64, Found>, Cancelled> {
        let mut attempt: u32 = 0;
        loop {
            let this = self.clone();
            let wanted = offsets.to_vec();
            let tp_ = tp.clone();
            let stop = cancel.clone();
            let result =
                tokio::task::spawn_blocking(move || this.read_blocking(&tp_, &wanted, &stop))
                    .await
                    .unwrap_or_else(|e| Err(format!("reader task failed: {e}")));
            match result {
                Ok(found) => return Ok(found),
                Err(_) if cancel.is_cancelled() => return Err(Cancelled),
                Err(error) => {
                    if crate::ops::log_limit::worth_logging(attempt.into()) {
                        warn!(topic = %tp.topic, partition = tp.partition, attempt = attempt + 1, %error,
                            "reading rejected events back from Kafka failed; retrying");
                    }
                    pause(kafka_retry_delay(attempt), cancel).await?;
                    attempt = attempt.saturating_add(1);
                }
            }
        }
    }

    fn read_blocking(
        &self,
        tp: &TopicPartition,
        offsets: &[i64],
        cancel: &CancellationToken,
    ) -> Result<BTreeMap<i64, Found>, String> {
        let mut guard = self.consumer.lock().map_err(|_| "reader lock poisoned")?;
        if guard.is_none() {
            let consumer: BaseConsumer<SideContext> = self
                .client
                .create_with_context(SideContext::new("originals reader"))
                .map_err(|e| format!("cannot create the reader: {e}"))?;
            *guard = Some(consumer);
        }
        let consumer = guard.as_ref().expect("created above");
        let result = self.read_with(consumer, tp, offsets, cancel);
        // Leave no assignment behind: the next read may be for another partition.
        let _ = consumer.unassign();
        result
    }

    fn low_watermark(
        &self,
        consumer: &BaseConsumer<SideContext>,
        tp: &TopicPartition,
    ) -> Result<i64, String> {
        consumer
            .fetch_watermarks(tp.topic(), tp.partition, Duration::from_secs(5))
            .map(|(low, _)| low)
            .map_err(|e| format!("cannot read the partition's watermarks: {e}"))
    }

    fn read_with(
        &self,
        consumer: &BaseConsumer<SideContext>,
        tp: &TopicPartition,
        offsets: &[i64],
        cancel: &CancellationToken,
    ) -> Result<BTreeMap<i64, Found>, String> {
        let mut wanted: Vec<i64> = offsets.to_vec();
        wanted.sort_unstable();
        wanted.dedup();
        let mut found = BTreeMap::new();
        let deadline = Instant::now() + ATTEMPT_TIMEOUT;
        // Offsets before the partition's start were deleted (retention).
        let low = self.low_watermark(consumer, tp)?;
        for &o in wanted.iter().filter(|&&o| o < low) {
            found.insert(o, Found::Gone);
        }
        // Read forward from the first offset still missing; a gap in the
        // partition (compaction, transaction markers) just skips ahead.
        while let Some(&next) = wanted.iter().find(|o| !found.contains_key(*o)) {
            let mut tpl = TopicPartitionList::new();
            tpl.add_partition_offset(tp.topic(), tp.partition, Offset::Offset(next))
                .map_err(|e| e.to_string())?;
            consumer.assign(&tpl).map_err(|e| e.to_string())?;
            loop {
                if cancel.is_cancelled() {
                    return Err("cancelled".into());
                }
                if Instant::now() > deadline {
                    return Err(format!("offset {next} not read within {ATTEMPT_TIMEOUT:?}"));
                }
                match consumer.poll(Duration::from_millis(100)) {
                    None => continue,
                    Some(Err(e)) => {
                        // Out of range (deleted meanwhile) or a real error:
                        // the partition's start tells which.
                        let low = self.low_watermark(consumer, tp)?;
                        if next >= low {
                            return Err(e.to_string());
                        }
                        for &o in wanted.iter().filter(|&&o| o < low) {
                            found.insert(o, Found::Gone);
                        }
                        break;
                    }
                    Some(Ok(m)) if m.partition() != tp.partition || m.topic() != tp.topic() => {
                        continue
                    }
                    Some(Ok(m)) => {
                        let offset = m.offset();
                        // Offsets skipped on the way are not in the partition any more.
                        for &o in wanted.iter().filter(|&&o| o < offset) {
                            found.entry(o).or_insert(Found::Gone);
                        }
                        if wanted.binary_search(&offset).is_ok() {
                            found.insert(
                                offset,
                                Found::Message(Original {
                                    key: m.key().map(Bytes::copy_from_slice),
                                    payload: m.payload().map(Bytes::copy_from_slice),
                                }),
                            );
                        }
                        if wanted.iter().all(|o| found.contains_key(o)) {
                            return Ok(found);
                        }
                    }
                }
            }
        }
        Ok(found)
    }
}
