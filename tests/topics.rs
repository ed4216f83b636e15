//! Several topics in one consumer group, against a real Kafka: a list with
//! a topic created while running, a pattern, a rebalance and a SIGKILL
//! across topics, `replay-dlq` of letters from two source topics, and
//! `START_AT` decided once for the whole group.

mod common;

use std::collections::{BTreeMap, HashMap, HashSet};
use std::time::Duration;

use common::*;
use rdkafka::producer::FutureRecord;
use serde_json::Value;

/// The tests that check each topic-partition's order ask for it.
const PARTITION_ORDER: (&str, &str) = ("ORDERING", "partition");

/// Topics created later, and added partitions, are found within 2 s.
const FAST_REFRESH: (&str, &str) = (
    "KAFKA_PROPERTIES",
    "topic.metadata.refresh.interval.ms=2000",
);

/// Waits until the receiver has `n` distinct events, or panics with `what`.
async fn delivered_at_least(receiver: &Receiver, n: usize, seconds: u64, what: &str) {
    eventually(Duration::from_secs(seconds), what, || {
        receiver.delivered_uuids().len() >= n
    })
    .await;
}

/// Where a produced event went.
type Placed = HashMap<String, (String, i32, i64)>;

/// Produces PostHog's 2024 Rust capture output as it wrote it: the main
/// topic's messages to `main`, the historical ones to `historical`, with
/// their keys. Returns every event's uuid and where Kafka put it.
async fn produce_capture_fixture(main: &str, historical: &str) -> Placed {
    let producer = producer();
    let mut placed = Placed::new();
    let text = include_str!("fixtures/posthog-capture-rs-2024-messages.jsonl");
    for line in text.lines().filter(|l| !l.trim().is_empty()) {
        let record: Value = serde_json::from_str(line).expect("fixture line");
        let topic = match record["capture_topic"].as_str() {
            Some("historical") => historical,
            _ => main,
        };
        let value = serde_json::to_vec(&record["message"]).expect("JSON");
        let key = record["key"].as_str().map(str::as_bytes);
        let mut send = FutureRecord::<[u8], [u8]>::to(topic).payload(&value);
        if let Some(key) = key {
            send = send.key(key);
        }
        let delivery = producer
            .send(send, Duration::from_secs(30))
            .await
            .map_err(|(e, _)| e)
            .expect("produced");
        let uuid = record["message"]["uuid"].as_str().expect("uuid").to_owned();
        placed.insert(
            uuid,
            (topic.to_owned(), delivery.partition, delivery.offset),
        );
    }
    placed
}

async fn produce_samples(topic: &str, range: std::ops::Range<u64>) -> Placed {
    produce(topic, run_id(), range)
        .await
        .into_iter()
        .map(|p| (p.sample.uuid, (topic.to_owned(), p.partition, p.offset)))
        .collect()
}

/// Checks that every accepted request holds events of one topic-partition
/// in offset order, and that each topic-partition's events were first
/// delivered in offset order (redeliveries after a crash aside).
fn assert_batches_keep_topic_partition_order(receiver: &Receiver, placed: &Placed) {
    let mut first_seen: HashSet<String> = HashSet::new();
    let mut last_new: HashMap<(String, i32), i64> = HashMap::new();
    for request in receiver.requests() {
        if !(200..300).contains(&request.status) {
            continue;
        }
        let mut batch_tp = None;
        let mut previous = None;
        for event in &request.events {
            let uuid = event["uuid"].as_str().expect("uuid");
            let (topic, partition, offset) = placed
                .get(uuid)
                .unwrap_or_else(|| panic!("delivered an event nobody produced: {uuid}"));
            let tp = (topic.clone(), *partition);
            match &batch_tp {
                None => batch_tp = Some(tp.clone()),
                Some(b) => assert_eq!(b, &tp, "a batch mixes topic-partitions"),
            }
            if let Some(p) = previous {
                assert!(*offset > p, "a batch out of offset order in {tp:?}");
            }
            previous = Some(*offset);
            if first_seen.insert(uuid.to_owned()) {
                let last = last_new.entry(tp.clone()).or_insert(-1);
                assert!(
                    *offset > *last,
                    "{tp:?}: offset {offset} first delivered after {last}"
                );
                *last = *offset;
            }
        }
    }
}

/// Committed offsets of the group, per topic, for the given partition counts.
fn commits_equal_high_watermarks(group: &str, topics: &[(&str, i32)]) -> bool {
    topics.iter().all(|(topic, partitions)| {
        let committed = committed(group, topic, *partitions);
        let highs = high_watermarks(topic, *partitions);
        committed
            .iter()
            .zip(&highs)
            .all(|(c, h)| *h == 0 || *c == Some(*h))
    })
}

/// The topics that have `name` series in the metrics text.
fn topics_of(text: &str, name: &str) -> BTreeMap<String, f64> {
    let mut out = BTreeMap::new();
    for (labels, value) in metric_values(text, name) {
        if let Some(topic) = labels
            .split("topic=\"")
            .nth(1)
            .and_then(|r| r.split('"').next())
        {
            *out.entry(topic.to_owned()).or_insert(0.0) += value;
        }
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_list_of_topics_with_one_created_while_running_delivers_every_event_per_topic_partition()
{
    let (main, historical, later) = (
        unique("main"),
        unique("historical"),
        unique("created-later"),
    );
    create_topic(&main, 3).await;
    create_topic(&historical, 1).await;
    let mut placed = produce_capture_fixture(&main, &historical).await;
    assert_eq!(
        placed.len(),
        660,
        "the fixture's 620 main and 40 historical events"
    );
    let receiver = Receiver::start().await;
    let group = unique("group");
    let topics = format!("{main}, {historical},{later}");
    let connector = Connector::start(
        &topics,
        &group,
        &receiver.url(),
        // Topics created later are found at the metadata refresh.
        &[FAST_REFRESH, PARTITION_ORDER],
    );
    let text = connector
        .metrics_until(Duration::from_secs(60), "the missing topic reported", |t| {
            topics_of(t, "patterns_connector_topic_missing").get(&later) == Some(&1.0)
        })
        .await;
    assert_eq!(
        topics_of(&text, "patterns_connector_topic_missing").get(&main),
        Some(&0.0)
    );
    delivered_at_least(&receiver, 660, 90, "the two existing topics delivered").await;

    create_topic(&later, 2).await;
    placed.extend(produce_samples(&later, 0..40).await);
    delivered_at_least(&receiver, 700, 90, "the created topic delivered").await;
    connector
        .metrics_until(
            Duration::from_secs(60),
            "the created topic no longer missing, all partitions counted",
            |t| {
                topics_of(t, "patterns_connector_topic_missing").get(&later) == Some(&0.0)
                    && metric_values(t, "patterns_connector_topic_partitions")
                        .first()
                        .map(|(_, v)| *v)
                        == Some(6.0)
            },
        )
        .await;
    assert_eq!(
        receiver.delivered_uuids(),
        placed.keys().cloned().collect::<HashSet<_>>()
    );
    assert_batches_keep_topic_partition_order(&receiver, &placed);
    // Lag and commits per topic.
    let text = connector
        .metrics_until(Duration::from_secs(60), "no lag in any topic", |t| {
            let lag = topics_of(t, "patterns_connector_partition_lag_messages");
            lag.len() == 3 && lag.values().all(|v| *v == 0.0)
        })
        .await;
    let committed = topics_of(&text, "patterns_connector_partition_committed_offset");
    assert_eq!(committed.get(&historical), Some(&40.0), "{text}");
    eventually(
        Duration::from_secs(30),
        "commits at the high watermarks",
        || commits_equal_high_watermarks(&group, &[(&main, 3), (&historical, 1), (&later, 2)]),
    )
    .await;
    let logs = connector.logs();
    assert_eq!(
        logs.matches("a topic listed in KAFKA_TOPIC does not exist")
            .count(),
        1,
        "the missing topic is reported once"
    );
    assert!(
        !logs.contains("Unknown topic"),
        "no repeated consume errors for it"
    );
    eprintln!(
        "{}",
        text.lines()
            .filter(|l| l.contains("topic="))
            .take(12)
            .collect::<Vec<_>>()
            .join("\n")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_pattern_reads_matching_topics_including_one_created_later_and_nothing_else() {
    let prefix = unique("pattern").replace('-', "_");
    let (first, second, other) = (
        format!("{prefix}_a"),
        format!("{prefix}_b"),
        unique("unmatched"),
    );
    create_topic(&first, 2).await;
    create_topic(&other, 1).await;
    let mut placed = produce_samples(&first, 0..30).await;
    let unmatched = produce_samples(&other, 100..110).await;
    let receiver = Receiver::start().await;
    let group = unique("group");
    let connector = Connector::start(
        &format!("^{prefix}_.*"),
        &group,
        &receiver.url(),
        &[FAST_REFRESH, PARTITION_ORDER],
    );
    delivered_at_least(&receiver, 30, 60, "the matching topic delivered").await;
    create_topic(&second, 1).await;
    placed.extend(produce_samples(&second, 200..220).await);
    delivered_at_least(&receiver, 50, 90, "the topic created later delivered").await;
    tokio::time::sleep(Duration::from_secs(3)).await;
    let delivered = receiver.delivered_uuids();
    assert_eq!(delivered, placed.keys().cloned().collect::<HashSet<_>>());
    assert!(unmatched.keys().all(|u| !delivered.contains(u)));
    assert_batches_keep_topic_partition_order(&receiver, &placed);
    let text = connector.metrics().await;
    let assigned = topics_of(&text, "patterns_connector_partition_committed_offset");
    assert_eq!(
        assigned.keys().cloned().collect::<Vec<_>>(),
        {
            let mut t = vec![first.clone(), second.clone()];
            t.sort();
            t
        },
        "only matching topics are read"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_rebalance_and_a_sigkill_while_reading_several_topics_lose_nothing() {
    let (a, b) = (unique("multi-a"), unique("multi-b"));
    create_topic(&a, 3).await;
    create_topic(&b, 3).await;
    let mut placed = produce_samples(&a, 0..300).await;
    placed.extend(produce_samples(&b, 300..600).await);
    let receiver = Receiver::start().await;
    // Slow answers keep batches in flight when the replica is killed.
    receiver.set_default(Reply::ok().delayed(Duration::from_millis(150)));
    let group = unique("group");
    let topics = format!("{a},{b}");
    let env = [("BATCH_MAX_EVENTS", "20"), PARTITION_ORDER];
    let first = Connector::start(&topics, &group, &receiver.url(), &env);
    delivered_at_least(&receiver, 60, 60, "the first replica delivers").await;
    let second = Connector::start(&topics, &group, &receiver.url(), &env);
    eventually(
        Duration::from_secs(60),
        "the second replica takes partitions",
        || assigned(&second).is_some_and(|n| n > 0) && assigned(&first).is_some_and(|n| n < 6),
    )
    .await;
    placed.extend(produce_samples(&a, 600..700).await);
    first.signal("KILL");
    placed.extend(produce_samples(&b, 700..800).await);
    drop(first);
    let third = Connector::start(&topics, &group, &receiver.url(), &env);
    eventually(Duration::from_secs(120), "every event delivered", || {
        receiver.delivered_uuids().len() >= placed.len()
    })
    .await;
    assert_eq!(
        receiver.delivered_uuids(),
        placed.keys().cloned().collect::<HashSet<_>>()
    );
    assert_batches_keep_topic_partition_order(&receiver, &placed);
    eventually(
        Duration::from_secs(60),
        "commits at the high watermarks in both topics",
        || commits_equal_high_watermarks(&group, &[(&a, 3), (&b, 3)]),
    )
    .await;
    drop((second, third));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn dead_letters_name_their_own_source_topic_and_replay_sends_them_from_both() {
    let (a, b, dlq) = (unique("src-a"), unique("src-b"), unique("dlq"));
    create_topic(&a, 1).await;
    create_topic(&b, 1).await;
    create_topic(&dlq, 1).await;
    let (in_a, in_b) = (
        SomeMarked::new(run_id(), 10, |n| n == 3),
        SomeMarked::new(run_id(), 10, |n| n == 7),
    );
    produce_keyed(&a, 0, &in_a.records).await;
    produce_keyed(&b, 0, &in_b.records).await;
    let receiver = Receiver::start().await;
    receiver.reject_marked();
    let group = unique("group");
    let connector = Connector::start(
        &format!("{a},{b}"),
        &group,
        &receiver.url(),
        &[("DLQ_TOPIC", dlq.as_str())],
    );
    let letters = read_topic(&dlq, 2, Duration::from_secs(90));
    assert_eq!(letters.len(), 2, "one letter from each topic");
    let sources: HashSet<&str> = letters
        .iter()
        .map(|l| l.headers["dlq.source_topic"].as_str())
        .collect();
    assert_eq!(sources, [a.as_str(), b.as_str()].into_iter().collect());
    for letter in &letters {
        assert_eq!(letter.headers["dlq.source_partition"], "0");
        assert_eq!(letter.headers["dlq.reason"], "webhook_400");
    }
    eventually(Duration::from_secs(60), "the others delivered", || {
        receiver.delivered_uuids().len() >= 18
    })
    .await;
    drop(connector);
    receiver.accept_marked();
    let (stdout, _) = replay_dlq_ok(&unique("replay"), &receiver.url(), &dlq);
    assert!(stdout.contains("2 delivered"), "{stdout}");
    let mut all = in_a.accepted();
    all.extend(in_a.marked.iter().cloned());
    all.extend(in_b.uuids.iter().cloned());
    assert_eq!(receiver.delivered_uuids(), all);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn start_at_latest_is_chosen_once_for_the_group_and_a_topic_created_later_is_read_whole() {
    let (old, later) = (unique("start-old"), unique("start-later"));
    create_topic(&old, 2).await;
    let history = produce_samples(&old, 0..20).await;
    let receiver = Receiver::start().await;
    let group = unique("group");
    let env = [("START_AT", "latest"), FAST_REFRESH];
    let topics = format!("{old},{later}");
    let connector = Connector::start(&topics, &group, &receiver.url(), &env);
    eventually(
        Duration::from_secs(60),
        "the existing topic assigned",
        || assigned(&connector) == Some(2),
    )
    .await;
    // The group chose: what comes after it is delivered, history is not.
    let new = produce_samples(&old, 20..30).await;
    // A topic created after the choice, written to before the connector
    // sees it: read from its start, nothing skipped.
    create_topic(&later, 1).await;
    let created = produce_samples(&later, 30..45).await;
    delivered_at_least(
        &receiver,
        25,
        90,
        "new events and the created topic delivered",
    )
    .await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    let delivered = receiver.delivered_uuids();
    let mut expected: HashSet<String> = new.keys().cloned().collect();
    expected.extend(created.keys().cloned());
    assert_eq!(delivered, expected);
    assert!(
        history.keys().all(|u| !delivered.contains(u)),
        "history before START_AT is skipped"
    );
    // A restart of the same group: established now, nothing redelivered,
    // nothing replayed.
    drop(connector);
    let before = receiver.requests().len();
    let more = produce_samples(&later, 45..50).await;
    let again = Connector::start(&topics, &group, &receiver.url(), &env);
    eventually(
        Duration::from_secs(60),
        "the restart delivers what came since",
        || more.keys().all(|u| receiver.delivered_uuids().contains(u)),
    )
    .await;
    let after: HashSet<String> = receiver.requests()[before..]
        .iter()
        .flat_map(|r| {
            r.events
                .iter()
                .filter_map(|e| e["uuid"].as_str().map(str::to_owned))
        })
        .collect();
    assert!(
        history.keys().all(|u| !after.contains(u)),
        "START_AT is not applied again"
    );
    drop(again);
}
