//! Delivering one sealed batch until every event in it is accounted for:
//! accepted by the webhook, or set aside in the dead-letter topic.
//!
//! The batch is sent whole. If the webhook rejects it (a status in
//! `WEBHOOK_REJECT_STATUSES`, such as 400 for a bad event or 413 for a body too
//! large), it is split in halves ([`crate::sink::bisect`]) until the rejected events
//! stand alone; the accepted parts go out in order, the rejected events go to
//! the dead-letter topic with the status and the response. Transient failures
//! are retried inside [`Webhook::send`].

use std::ops::Range;
use std::sync::Arc;

use bytes::Bytes;
use tokio_util::sync::CancellationToken;
use tracing::warn;

use crate::kafka::originals::{Found, Originals};
use crate::ops::metrics::{status_class, Metrics};
use crate::sink::bisect::Bisection;
use crate::sink::dlq::{header, DeadLetter, DeadLetters};
use crate::sink::webhook::{self, Cancelled, Sent, Webhook};
use crate::topic_partition::TopicPartition;

/// The `dlq.error` of a rejected event whose original message was deleted.
const GONE: &str = "the original message is no longer in Kafka (retention or compaction); the payload is the event as sent to the webhook";

/// The `dlq.error` of a rejected event that was not read from Kafka.
const NOT_FROM_KAFKA: &str = "the event was read from PostHog's ClickHouse by a backfill, not from Kafka; the payload is the event as sent to the webhook";

/// What delivery needs of a batch: its events' offsets and JSON, and the
/// request body for a run of them. `partition::batch::Batch` is the one
/// delivered; a trait, so that the sink needs nothing of the partition.
pub trait Events: Sync {
    fn event_count(&self) -> usize;
    /// Names the batch in its requests' `Idempotency-Key`; random per batch.
    fn id(&self) -> u64;
    /// The Kafka offset of event `index`.
    fn offset(&self, index: usize) -> i64;
    /// Event `index`'s JSON as sent.
    fn event_json(&self, index: usize) -> Bytes;
    /// The JSON array of the events in `range`.
    fn body_for(&self, range: Range<usize>) -> Bytes;
}

pub struct Deliverer {
    pub webhook: Webhook,
    pub dead_letters: DeadLetters,
    /// Where refused events' original messages are read back from; None
    /// when the events did not come from Kafka (a backfill).
    pub originals: Option<Originals>,
    pub metrics: Arc<Metrics>,
}

/// What happened to a batch's events.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Outcome {
    pub accepted: usize,
    pub dead_lettered: usize,
}

impl Deliverer {
    /// Writes the events the webhook rejected to the dead-letter topic, as
    /// the original messages read back from Kafka.
    async fn dead_letter_rejected(
        &self,
        batch: &impl Events,
        tp: &TopicPartition,
        rejected: &[(usize, u16, String)],
        cancel: &CancellationToken,
    ) -> Result<(), Cancelled> {
        let offsets: Vec<i64> = rejected
            .iter()
            .map(|(index, _, _)| batch.offset(*index))
            .collect();
        let mut originals = match &self.originals {
            Some(originals) => originals.read(tp, &offsets, cancel).await?,
            None => Default::default(),
        };
        for (index, status, body) in rejected {
            let offset = batch.offset(*index);
            let (key, payload, error, sent_event) = match originals.remove(&offset) {
                Some(Found::Message(original)) => (original.key, original.payload, None, false),
                // Deleted while the batch was retried: keep what was sent instead.
                _ => (
                    None,
                    Some(batch.event_json(*index)),
                    Some(
                        if self.originals.is_some() {
                            GONE
                        } else {
                            NOT_FROM_KAFKA
                        }
                        .to_owned(),
                    ),
                    true,
                ),
            };
            let letter = DeadLetter {
                key,
                payload,
                source: tp.clone(),
                offset,
                reason: format!("webhook_{status}"),
                error,
                http_status: Some(*status),
                response_body: Some(body.clone()),
                sent_event,
            };
            self.dead_letters.write(&letter, cancel).await?;
            self.metrics
                .events_dead_lettered
                .with_label_values(&[letter.reason.as_str()])
                .inc();
            warn!(
                topic = %tp.topic,
                partition = tp.partition,
                offset,
                status,
                dlq_topic = self.dead_letters.topic(),
                payload = if letter.sent_event {
                    header::PAYLOAD_SENT_EVENT
                } else {
                    header::PAYLOAD_ORIGINAL
                },
                "event rejected by the webhook; written to the dead-letter topic"
            );
        }
        Ok(())
    }

    pub async fn deliver(
        &self,
        batch: &impl Events,
        tp: &TopicPartition,
        cancel: &CancellationToken,
    ) -> Result<Outcome, Cancelled> {
        let mut bisection = Bisection::new(batch.event_count());
        let mut rejected = Vec::new();
        while let Some(range) = bisection.next() {
            let key = webhook::batch_key(batch.id(), range.start, range.len());
            match self
                .webhook
                .send(batch.body_for(range.clone()), &key, tp, cancel)
                .await?
            {
                Sent::Delivered => bisection.accepted(),
                Sent::Rejected { status, body } => {
                    self.metrics
                        .webhook_rejections
                        .with_label_values(&[status_class(status)])
                        .inc();
                    if range.len() == batch.event_count() {
                        warn!(topic = %tp.topic, partition = tp.partition, status, events = range.len(), response = %crate::sink::dlq::truncate(&body, 200),
                            "webhook rejected a batch; splitting it to find the rejected events");
                    }
                    if range.len() == 1 {
                        rejected.push((range.start, status, body));
                    }
                    bisection.rejected();
                }
            }
        }
        self.metrics
            .bisection_requests
            .inc_by(u64::from(bisection.extra_requests()));
        if !rejected.is_empty() {
            self.dead_letter_rejected(batch, tp, &rejected, cancel)
                .await?;
        }
        Ok(Outcome {
            accepted: bisection.delivered_events(),
            dead_lettered: rejected.len(),
        })
    }
}
