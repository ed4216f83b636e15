//! `patterns-connector replay-dlq`: sends the events of the dead-letter topic
//! to the webhook again, once the user fixed what made them fail (a webhook
//! that rejected them, a decoder that did not know their shape).
//!
//! It reads `DLQ_TOPIC` with its own consumer group (`<KAFKA_CONSUMER_GROUP>-replay`
//! by default) from that group's committed offsets up to the end offsets seen
//! at start, decodes and filters each original message like the main loop
//! (a dead letter that holds the event as sent, because its original was
//! deleted, is sent as it is), POSTs them in batches, and commits after each
//! batch, so an interrupted replay resumes where it stopped. Messages that still cannot be decoded, or
//! that the webhook still rejects, are counted and passed over: they stay in
//! the dead-letter topic for a later replay with another group.

use std::collections::BTreeMap;
use std::time::Duration;

use chrono::Utc;
use rdkafka::consumer::{CommitMode, Consumer, StreamConsumer};
use rdkafka::message::{Headers as _, Message as _};
use rdkafka::{Offset, TopicPartitionList};
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use crate::config::{Config, InputFormat};
use crate::event::decode::decode;
use crate::event::filter::Filter;
use crate::kafka::connection::{Connection, SideContext};
use crate::kafka::read;
use crate::sink::dlq::header;
use crate::sink::webhook::{batch_key, Sent, Webhook};
use crate::topic_partition::TopicPartition;
use crate::transform::Rules;

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
    let connection = Connection::from_config(config);
    let mut client = connection.client_config("patterns-connector-replay");
    client
        .set("group.id", group)
        .set("enable.auto.commit", "false")
        .set("enable.auto.offset.store", "false")
        .set("auto.offset.reset", "earliest");
    for (key, value) in connection.consumer_properties() {
        client.set(key, value);
    }
    let consumer: StreamConsumer<SideContext> = client
        .create_with_context(SideContext::new("replay consumer"))
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
    let committed = read::retrying("committed offsets", || {
        consumer.committed_offsets(wanted.clone(), Duration::from_secs(10))
    })?;
    let mut ends: BTreeMap<i32, i64> = BTreeMap::new();
    let mut assignment = TopicPartitionList::new();
    for p in &partitions {
        let (low, high) = read::retrying("watermarks", || {
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
        let held = if holds_sent_event(&message) {
            Held::SentEvent
        } else {
            Held::Original
        };
        match replayable(
            message.payload(),
            held,
            config.input_format,
            &filter,
            &config.transform.0,
        ) {
            Ok(Some(json)) => batches.entry(partition).or_default().push((offset, json)),
            Ok(None) => summary.filtered += 1,
            Err(reason) => {
                warn!(
                    partition,
                    offset, reason, "still not a PostHog event; left in the dead-letter topic"
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
            let tp = TopicPartition::new(topic, partition);
            send_batch(webhook, &tp, &events, &mut summary, cancel).await?;
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

/// What a dead letter's payload is (its `dlq.payload` header).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Held {
    /// The source message, to decode and filter like the main loop does.
    Original,
    /// One event as it was sent to the webhook; it passed the filters then.
    SentEvent,
}

fn holds_sent_event(message: &impl rdkafka::message::Message) -> bool {
    message.headers().is_some_and(|headers| {
        headers.iter().any(|h| {
            h.key == header::PAYLOAD && h.value == Some(header::PAYLOAD_SENT_EVENT.as_bytes())
        })
    })
}

/// The event JSON to send again for one dead letter: `Ok(None)` when the
/// filters leave it out, `Err(reason)` when it is still not an event.
fn replayable(
    payload: Option<&[u8]>,
    held: Held,
    format: InputFormat,
    filter: &Filter,
    rules: &Rules,
) -> Result<Option<Vec<u8>>, &'static str> {
    match held {
        Held::Original => match decode(payload, format, Utc::now()) {
            Ok(event) if filter.check(&event.meta).is_ok() => {
                if rules.is_empty() {
                    return Ok(Some(event.json));
                }
                // The operator's rules, as the main loop applies them.
                let mut out = Vec::with_capacity(event.json.len());
                Ok(rules
                    .apply(&event.json, &mut out)
                    .dropped
                    .is_none()
                    .then_some(out))
            }
            Ok(_) => Ok(None),
            Err(e) => Err(e.reason()),
        },
        // Sent before: the rules were applied then (hashing again would
        // hash a hash).
        Held::SentEvent => {
            let payload = payload.ok_or("empty")?;
            let event: serde_json::Map<String, serde_json::Value> =
                serde_json::from_slice(payload).map_err(|_| "not_an_event")?;
            match event.get("uuid") {
                Some(serde_json::Value::String(_)) => Ok(Some(payload.to_vec())),
                _ => Err("not_an_event"),
            }
        }
    }
}

/// Sends events as one batch; if the webhook rejects it, one by one.
async fn send_batch(
    webhook: &Webhook,
    tp: &TopicPartition,
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
    let batch = rand::random();
    let key = batch_key(batch, 0, events.len());
    if webhook.send(body(events), &key, tp, cancel).await? == Sent::Delivered {
        summary.delivered += events.len() as u64;
        return Ok(());
    }
    for (index, event) in events.iter().enumerate() {
        let key = batch_key(batch, index, 1);
        match webhook
            .send(body(std::slice::from_ref(event)), &key, tp, cancel)
            .await?
        {
            Sent::Delivered => summary.delivered += 1,
            Sent::Rejected { status, .. } => {
                warn!(
                    partition = tp.partition,
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::event::sample;

    fn no_rules() -> Rules {
        Rules::parse("", "", "", None, None).unwrap()
    }

    fn pageviews_only() -> Filter {
        Filter::new(&["$pageview".to_owned()], None, None)
    }

    #[test]
    fn an_original_is_decoded_and_filtered_like_the_main_loop() {
        let filter = pageviews_only();
        let (mut kept, mut left_out) = (0, 0);
        for n in 0..20 {
            let s = sample::captured(1, n, "2024-05-01T12:00:00Z");
            match replayable(
                Some(&s.value),
                Held::Original,
                InputFormat::Auto,
                &filter,
                &no_rules(),
            ) {
                Ok(Some(json)) => {
                    let event: serde_json::Value = serde_json::from_slice(&json).unwrap();
                    assert_eq!(event["uuid"], s.uuid.as_str());
                    assert_eq!(s.event, "$pageview");
                    kept += 1;
                }
                Ok(None) => {
                    assert_ne!(s.event, "$pageview");
                    left_out += 1;
                }
                Err(reason) => panic!("sample {n} did not decode: {reason}"),
            }
        }
        assert!(kept > 0 && left_out > 0);
        assert_eq!(
            replayable(
                Some(b"not json"),
                Held::Original,
                InputFormat::Auto,
                &filter,
                &no_rules()
            ),
            Err("not_json")
        );
    }

    #[test]
    fn a_sent_event_is_sent_as_it_is_and_must_be_an_event_object() {
        let filter = pageviews_only();
        // It passed the filters when it was first sent: they do not apply again.
        let sent = br#"{"uuid":"0190-a","event":"signed_up","properties":{"a":1}}"#;
        assert_eq!(
            replayable(
                Some(sent),
                Held::SentEvent,
                InputFormat::Auto,
                &filter,
                &no_rules()
            ),
            Ok(Some(sent.to_vec()))
        );
        for bad in [&b"[1]"[..], b"{\"event\":\"x\"}", b"{\"uuid\":7}", b"nope"] {
            assert_eq!(
                replayable(
                    Some(bad),
                    Held::SentEvent,
                    InputFormat::Auto,
                    &filter,
                    &no_rules()
                ),
                Err("not_an_event"),
                "{}",
                String::from_utf8_lossy(bad)
            );
        }
        assert_eq!(
            replayable(
                None,
                Held::SentEvent,
                InputFormat::Auto,
                &filter,
                &no_rules()
            ),
            Err("empty")
        );
    }
}
