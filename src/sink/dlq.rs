//! The dead-letter topic: where a message goes when it cannot be delivered
//! (not a PostHog event, larger than a batch may be, or rejected by the
//! webhook with a permanent status), so that its partition moves on without
//! losing it.
//!
//! A dead letter is the original message (bytes and key) with headers saying
//! why. Its offset counts as done only once Kafka acknowledged the write
//! (acks=all, idempotent producer); a write that fails is retried, forever,
//! like a webhook failure, and its partition waits.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use chrono::Utc;
use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::producer::{FutureProducer, FutureRecord};
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use crate::config::Config;
use crate::kafka::connection::{Connection, SideContext};
use crate::kafka::read::kafka_retry_delay;
use crate::ops::shutdown::{pause, Cancelled};
use crate::topic_partition::TopicPartition;

/// Response bodies kept in the `dlq.response_body` header are cut to this size.
pub const MAX_RESPONSE_BODY: usize = 1024;

/// The header names, for tools that read the dead-letter topic.
pub mod header {
    pub const REASON: &str = "dlq.reason";
    pub const ERROR: &str = "dlq.error";
    pub const HTTP_STATUS: &str = "dlq.http_status";
    pub const RESPONSE_BODY: &str = "dlq.response_body";
    pub const SOURCE_TOPIC: &str = "dlq.source_topic";
    pub const SOURCE_PARTITION: &str = "dlq.source_partition";
    pub const SOURCE_OFFSET: &str = "dlq.source_offset";
    pub const CONNECTOR_VERSION: &str = "dlq.connector_version";
    pub const TIME: &str = "dlq.time";
    /// What the payload is: [`PAYLOAD_ORIGINAL`] or [`PAYLOAD_SENT_EVENT`].
    pub const PAYLOAD: &str = "dlq.payload";
    /// The payload is the source message's value, unchanged.
    pub const PAYLOAD_ORIGINAL: &str = "original";
    /// The payload is one event as it was POSTed to the webhook (a JSON
    /// object), because the original message was deleted before it could be
    /// read back.
    pub const PAYLOAD_SENT_EVENT: &str = "sent_event";
}

/// One message to dead-letter.
#[derive(Debug, Clone)]
pub struct DeadLetter {
    pub key: Option<bytes::Bytes>,
    pub payload: Option<bytes::Bytes>,
    /// Where the message came from: its own topic and partition (the
    /// connector may read several topics).
    pub source: TopicPartition,
    pub offset: i64,
    /// A short fixed code: a decode reason, `too_large`, or `webhook_<status>`.
    pub reason: String,
    /// A human-readable detail (a decode error), if any.
    pub error: Option<String>,
    pub http_status: Option<u16>,
    pub response_body: Option<String>,
    /// The payload is the event as sent to the webhook, not the original
    /// message (see [`header::PAYLOAD_SENT_EVENT`]).
    pub sent_event: bool,
}

#[derive(Clone)]
pub struct DeadLetters {
    producer: FutureProducer<SideContext>,
    topic: String,
    /// Per source partition, the writes now retrying after a failure. While
    /// a partition has one, its worker takes no more messages (each bad one
    /// would add a write that cannot finish) and the consumer pauses it.
    failing: Arc<Mutex<HashMap<TopicPartition, usize>>>,
}

/// Counts one failing write of a partition for as long as it lives, so a
/// write that ends any way (acknowledged, cancelled, dropped) uncounts itself.
struct FailingWrite {
    failing: Arc<Mutex<HashMap<TopicPartition, usize>>>,
    tp: TopicPartition,
}

impl FailingWrite {
    fn new(failing: &Arc<Mutex<HashMap<TopicPartition, usize>>>, tp: &TopicPartition) -> Self {
        *lock(failing).entry(tp.clone()).or_default() += 1;
        FailingWrite {
            failing: failing.clone(),
            tp: tp.clone(),
        }
    }
}

impl Drop for FailingWrite {
    fn drop(&mut self) {
        let mut failing = lock(&self.failing);
        if let Some(n) = failing.get_mut(&self.tp) {
            *n -= 1;
            if *n == 0 {
                failing.remove(&self.tp);
            }
        }
    }
}

fn lock(
    failing: &Mutex<HashMap<TopicPartition, usize>>,
) -> std::sync::MutexGuard<'_, HashMap<TopicPartition, usize>> {
    failing
        .lock()
        .expect("no code panics while holding the failing-writes lock")
}

impl DeadLetters {
    pub fn new(config: &Config) -> anyhow::Result<Self> {
        let mut client = Connection::from_config(config).client_config("patterns-connector-dlq");
        client
            .set("acks", "all")
            .set("enable.idempotence", "true")
            .set("linger.ms", "5")
            .set("message.timeout.ms", "30000")
            // A dead letter is a message Kafka already took, or an event up
            // to BATCH_MAX_BYTES, plus headers: librdkafka's own 1 MB limit
            // must not refuse it (the topic's max.message.bytes still applies).
            .set(
                "message.max.bytes",
                dead_letter_max_bytes(config.batch.max_bytes).to_string(),
            );
        let producer = client
            .create_with_context(SideContext::new("dead-letter producer"))
            .map_err(|e| {
                anyhow::anyhow!(
                    "cannot create the dead-letter producer (check KAFKA_PROPERTIES): {e}"
                )
            })?;
        Ok(DeadLetters {
            producer,
            topic: config.dlq_topic.clone(),
            failing: Arc::default(),
        })
    }

    /// True while a dead-letter write of `tp` keeps failing.
    pub fn is_failing(&self, tp: &TopicPartition) -> bool {
        lock(&self.failing).contains_key(tp)
    }

    pub fn topic(&self) -> &str {
        &self.topic
    }

    /// Writes `letter` and waits for Kafka's acknowledgement, retrying until
    /// it succeeds or `cancel` fires.
    pub async fn write(
        &self,
        letter: &DeadLetter,
        cancel: &CancellationToken,
    ) -> Result<(), Cancelled> {
        let mut attempt: u32 = 0;
        let mut failing = None;
        loop {
            let headers = self.headers(letter);
            let mut record = FutureRecord::<[u8], [u8]>::to(&self.topic).headers(headers);
            if let Some(key) = &letter.key {
                record = record.key(key.as_ref());
            }
            if let Some(payload) = &letter.payload {
                record = record.payload(payload.as_ref());
            }
            let sent = tokio::select! {
                _ = cancel.cancelled() => return Err(Cancelled),
                sent = self.producer.send(record, Duration::from_secs(30)) => sent,
            };
            match sent {
                Ok(_) => {
                    if attempt > 0 {
                        info!(source_topic = %letter.source.topic, partition = letter.source.partition, offset = letter.offset, attempts = attempt + 1,
                            topic = %self.topic, "dead-letter write succeeded after failures");
                    }
                    return Ok(());
                }
                Err((e, _)) => {
                    failing.get_or_insert_with(|| FailingWrite::new(&self.failing, &letter.source));
                    if crate::ops::log_limit::worth_logging(attempt.into()) {
                        warn!(source_topic = %letter.source.topic, partition = letter.source.partition, offset = letter.offset, attempt = attempt + 1,
                            topic = %self.topic, error = %e,
                            "writing to the dead-letter topic failed; retrying (does the topic exist?)");
                    }
                    pause(kafka_retry_delay(attempt), cancel).await?;
                    attempt = attempt.saturating_add(1);
                }
            }
        }
    }

    fn headers(&self, letter: &DeadLetter) -> OwnedHeaders {
        let mut headers = OwnedHeaders::new()
            .insert(Header {
                key: header::REASON,
                value: Some(letter.reason.as_str()),
            })
            .insert(Header {
                key: header::SOURCE_TOPIC,
                value: Some(letter.source.topic()),
            })
            .insert(Header {
                key: header::SOURCE_PARTITION,
                value: Some(&letter.source.partition.to_string()),
            })
            .insert(Header {
                key: header::SOURCE_OFFSET,
                value: Some(&letter.offset.to_string()),
            })
            .insert(Header {
                key: header::CONNECTOR_VERSION,
                value: Some(env!("CARGO_PKG_VERSION")),
            })
            .insert(Header {
                key: header::TIME,
                value: Some(&Utc::now().to_rfc3339()),
            })
            .insert(Header {
                key: header::PAYLOAD,
                value: Some(if letter.sent_event {
                    header::PAYLOAD_SENT_EVENT
                } else {
                    header::PAYLOAD_ORIGINAL
                }),
            });
        if let Some(error) = &letter.error {
            headers = headers.insert(Header {
                key: header::ERROR,
                value: Some(truncate(error, MAX_RESPONSE_BODY)),
            });
        }
        if let Some(status) = letter.http_status {
            headers = headers.insert(Header {
                key: header::HTTP_STATUS,
                value: Some(&status.to_string()),
            });
        }
        if let Some(body) = &letter.response_body {
            headers = headers.insert(Header {
                key: header::RESPONSE_BODY,
                value: Some(truncate(body, MAX_RESPONSE_BODY)),
            });
        }
        headers
    }
}

/// The producer's message size limit for dead letters: twice the largest
/// batch plus room for headers, at least librdkafka's default, at most its cap.
fn dead_letter_max_bytes(batch_max_bytes: usize) -> usize {
    batch_max_bytes
        .saturating_mul(2)
        .saturating_add(64 * 1024)
        .clamp(1_000_000, 1_000_000_000)
}

/// At most `max` bytes of `s`, cut at a character boundary.
pub fn truncate(s: &str, max: usize) -> &str {
    if s.len() <= max {
        return s;
    }
    let mut end = max;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    &s[..end]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_failing_write_counts_for_its_partition_while_it_lives() {
        let failing = Arc::default();
        let (three, other) = (TopicPartition::new("a", 3), TopicPartition::new("b", 3));
        let first = FailingWrite::new(&failing, &three);
        let second = FailingWrite::new(&failing, &three);
        assert_eq!(lock(&failing).get(&three), Some(&2));
        assert!(
            !lock(&failing).contains_key(&other),
            "another topic's partition 3 is not failing"
        );
        drop(first);
        assert!(lock(&failing).contains_key(&three));
        drop(second);
        assert!(
            !lock(&failing).contains_key(&three),
            "none left: not failing"
        );
    }

    #[test]
    fn the_producer_takes_dead_letters_as_large_as_a_batch() {
        assert_eq!(dead_letter_max_bytes(65_536), 1_000_000);
        assert!(dead_letter_max_bytes(1 << 20) > (1 << 20) + 1024);
        assert_eq!(dead_letter_max_bytes(usize::MAX), 1_000_000_000);
    }

    #[test]
    fn truncation_respects_character_boundaries() {
        assert_eq!(truncate("abc", 10), "abc");
        assert_eq!(truncate("abcdef", 3), "abc");
        assert_eq!(truncate("aé", 2), "a");
    }
}
