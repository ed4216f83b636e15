//! `patterns-connector replay-dlq`: sends the events of the dead-letter topic
//! to the webhook again, once the user fixed what made them fail (a webhook
//! that rejected them, a decoder that did not know their shape).
//!
//! It reads `DLQ_TOPIC` with its own consumer group (`<KAFKA_CONSUMER_GROUP>-replay`
//! by default) from that group's committed offsets up to the end offsets seen
//! at start, decodes and filters each original message like the main loop,
//! POSTs them in batches, and commits after each batch, so an interrupted
//! replay resumes where it stopped. Messages that still cannot be decoded, or
//! that the webhook still rejects, are counted and passed over: they stay in
//! the dead-letter topic for a later replay with another group.

use std::collections::BTreeMap;
use std::time::Duration;

use chrono::Utc;
use rdkafka::consumer::{CommitMode, Consumer, StreamConsumer};
use rdkafka::message::Message as _;
use rdkafka::{ClientConfig, Offset, TopicPartitionList};
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use crate::config::Config;
use crate::decode::decode;
use crate::filter::Filter;
use crate::kafka_read;
use crate::webhook::{Sent, Webhook};

/// What a replay did.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Summary {
    pub read: u64,
    pub delivered: u64,
    pub filtered: u64,
    pub undecodable: u64,
    pub rejected: u64,
}

pub async fn run(
    config: &Config,
    webhook: &Webhook,
    group: &str,
    cancel: &CancellationToken,
) -> anyhow::Result<Summary> {
    let topic = config.dlq_topic.as_str();
    let mut client = ClientConfig::new();
    client
        .set("bootstrap.servers", &config.kafka_hosts)
        .set("group.id", group)
        .set("enable.auto.commit", "false")
        .set("enable.auto.offset.store", "false")
        .set("auto.offset.reset", "earliest");
    for (key, value) in &config.kafka_properties {
        client.set(key, value);
    }
    let consumer: StreamConsumer = client
        .create()
        .map_err(|e| anyhow::anyhow!("cannot create the replay consumer: {e}"))?;

    // Where to start and where to stop, per partition.
    let metadata = consumer
        .fetch_metadata(Some(topic), Duration::from_secs(10))
        .map_err(|e| anyhow::anyhow!("cannot read the metadata of DLQ_TOPIC {topic}: {e}"))?;
    let partitions: Vec<i32> = metadata
        .topics()
        .iter()
        .filter(|t| t.name() == topic)
        .flat_map(|t| t.partitions().iter().map(|p| p.id()))
        .collect();
    anyhow::ensure!(
        !partitions.is_empty(),
        "DLQ_TOPIC {topic} has no partitions (does it exist?)"
    );
    let mut wanted = TopicPartitionList::new();
    for p in &partitions {
        wanted.add_partition(topic, *p);
    }
    let committed = kafka_read::retrying("committed offsets", || {
        consumer.committed_offsets(wanted.clone(), Duration::from_secs(10))
    })?;
    let mut ends: BTreeMap<i32, i64> = BTreeMap::new();
    let mut assignment = TopicPartitionList::new();
    for p in &partitions {
        let (low, high) = kafka_read::retrying("watermarks", || {
            consumer.fetch_watermarks(topic, *p, Duration::from_secs(10))
        })?;
        let start = match committed.find_partition(topic, *p).map(|e| e.offset()) {
            Some(Offset::Offset(o)) => o.max(low),
            _ => low,
        };
        if start < high {
            ends.insert(*p, high);
        }
        assignment.add_partition_offset(topic, *p, Offset::Offset(start))?;
    }
    consumer.assign(&assignment)?;
    info!(
        topic,
        group,
        partitions = ends.len(),
        "replaying the dead-letter topic"
    );

    let filter = Filter::from_config(config);
    let mut summary = Summary::default();
    let mut batches: BTreeMap<i32, Vec<(i64, Vec<u8>)>> = BTreeMap::new();
    while !ends.is_empty() {
        let message = tokio::select! {
            _ = cancel.cancelled() => break,
            m = tokio::time::timeout(Duration::from_secs(30), consumer.recv()) => m,
        };
        let message = match message {
            Ok(Ok(m)) => m,
            Ok(Err(e)) => {
                warn!(error = %e, "replay consumer error");
                continue;
            }
            Err(_) => {
                anyhow::bail!("no message from DLQ_TOPIC {topic} for 30 s before reaching its end")
            }
        };
        let (partition, offset) = (message.partition(), message.offset());
        let Some(end) = ends.get(&partition).copied() else {
            continue;
        };
        summary.read += 1;
        match decode(message.payload(), config.input_format, Utc::now()) {
            Ok(event) if filter.check(&event.meta).is_ok() => batches
                .entry(partition)
                .or_default()
                .push((offset, event.json)),
            Ok(_) => summary.filtered += 1,
            Err(e) => {
                warn!(
                    partition,
                    offset,
                    reason = e.reason(),
                    "still not a PostHog event; left in the dead-letter topic"
                );
                summary.undecodable += 1;
            }
        }
        let last = offset + 1 >= end;
        let full = batches
            .get(&partition)
            .is_some_and(|b| b.len() >= config.batch.max_events);
        if last || full {
            let events = batches.remove(&partition).unwrap_or_default();
            send_batch(webhook, partition, &events, &mut summary, cancel).await?;
            let mut tpl = TopicPartitionList::new();
            tpl.add_partition_offset(topic, partition, Offset::Offset(offset + 1))?;
            consumer.commit(&tpl, CommitMode::Sync)?;
        }
        if last {
            ends.remove(&partition);
        }
    }
    info!(?summary, "replay finished");
    Ok(summary)
}

/// Sends events as one batch; if the webhook rejects it, one by one.
async fn send_batch(
    webhook: &Webhook,
    partition: i32,
    events: &[(i64, Vec<u8>)],
    summary: &mut Summary,
    cancel: &CancellationToken,
) -> anyhow::Result<()> {
    if events.is_empty() {
        return Ok(());
    }
    let body = |events: &[(i64, Vec<u8>)]| {
        let mut body = b"[".to_vec();
        for (i, (_, json)) in events.iter().enumerate() {
            if i > 0 {
                body.push(b',');
            }
            body.extend_from_slice(json);
        }
        body.push(b']');
        bytes::Bytes::from(body)
    };
    if webhook.send(body(events), partition, cancel).await? == Sent::Delivered {
        summary.delivered += events.len() as u64;
        return Ok(());
    }
    for event in events {
        match webhook
            .send(body(std::slice::from_ref(event)), partition, cancel)
            .await?
        {
            Sent::Delivered => summary.delivered += 1,
            Sent::Rejected { status, .. } => {
                warn!(
                    partition,
                    offset = event.0,
                    status,
                    "the webhook still rejects this event; left in the dead-letter topic"
                );
                summary.rejected += 1;
            }
        }
    }
    Ok(())
}
