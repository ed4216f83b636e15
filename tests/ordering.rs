//! `ORDERING=key` against the real broker: one partition delivers through
//! several lanes at once, each key's events stay in Kafka order, and the
//! committed offset covers only delivered events, across a SIGKILL.

mod common;

use std::collections::{HashMap, HashSet};
use std::time::Duration;

use common::*;
use patterns_connector::event::sample;

const WAIT: Duration = Duration::from_secs(120);
const EVENTS: u64 = 1_500;
const KEYS: u64 = 30;

/// Events of 2xx answers, first delivery of each uuid only, in answer order.
fn first_deliveries(receiver: &Receiver) -> Vec<String> {
    let mut seen = HashSet::new();
    receiver
        .delivered()
        .iter()
        .filter_map(|e| e["uuid"].as_str().map(str::to_owned))
        .filter(|uuid| seen.insert(uuid.clone()))
        .collect()
}

/// Panics unless every key's first deliveries come in offset order.
fn assert_key_order(first: &[String], by_uuid: &HashMap<String, (String, i64)>) {
    let mut last: HashMap<&str, i64> = HashMap::new();
    for uuid in first {
        let (key, offset) = &by_uuid[uuid];
        if let Some(previous) = last.insert(key.as_str(), *offset) {
            assert!(
                previous < *offset,
                "key {key}: offset {offset} delivered after {previous}"
            );
        }
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn key_lanes_keep_each_keys_order_and_commit_only_delivered_events_across_a_sigkill() {
    let (topic, group) = (unique("ordering"), unique("g"));
    create_topic(&topic, 1).await;
    let producer = producer();
    let now = now_timestamp();
    let mut by_uuid = HashMap::new();
    let mut uuid_at = HashMap::new();
    for n in 0..EVENTS {
        let mut s = sample::captured(run_id(), n, &now);
        s.key = format!("{}:user-{}", s.token, n % KEYS);
        let produced = send_sample(&producer, &topic, s).await;
        let key = produced.sample.key.clone();
        uuid_at.insert(produced.offset, produced.sample.uuid.clone());
        by_uuid.insert(produced.sample.uuid, (key, produced.offset));
    }

    let receiver = Receiver::start().await;
    let delays = [20u64, 400, 90, 250, 40, 330, 150, 60, 200, 20, 120, 380];
    receiver.script(
        (0..400)
            .map(|i| Reply::ok().delayed(Duration::from_millis(delays[i % delays.len()])))
            .collect(),
    );
    receiver.set_default(Reply::ok().delayed(Duration::from_millis(50)));
    let env = [
        ("ORDERING", "key"),
        ("KEY_LANES", "4"),
        ("BATCH_MAX_EVENTS", "25"),
    ];
    let mut first = Connector::start(&topic, &group, &receiver.url(), &env);

    // Every commit sampled while running covers only delivered events.
    let mut samples = 0;
    let deadline = tokio::time::Instant::now() + WAIT;
    // Until 600 events are delivered and at least one commit was sampled (a
    // loaded machine may deliver 600 before the first commit lands).
    while receiver.delivered_uuids().len() < 600 || samples == 0 {
        assert!(tokio::time::Instant::now() < deadline, "too slow");
        if let Some(commit) = committed(&group, &topic, 1)[0] {
            let delivered = receiver.delivered_uuids();
            let undelivered = (0..commit)
                .filter(|o| uuid_at.get(o).is_some_and(|u| !delivered.contains(u)))
                .count();
            assert_eq!(undelivered, 0, "commit {commit} covers undelivered events");
            samples += 1;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    first.signal("KILL");
    first.wait(Duration::from_secs(10)).await;
    let before_restart = receiver.delivered_uuids().len();
    assert!(
        before_restart < EVENTS as usize,
        "the kill came too late to test anything"
    );
    assert!(samples > 0, "no commit was sampled before the kill");

    let requests = receiver.requests();
    let overlapping = requests.iter().enumerate().any(|(i, a)| {
        requests[i + 1..]
            .iter()
            .any(|b| a.started < b.at && b.started < a.at)
    });
    assert!(
        overlapping,
        "no two batches of the partition were in flight together"
    );
    assert_key_order(&first_deliveries(&receiver), &by_uuid);

    receiver.set_default(Reply::ok());
    let _second = Connector::start(&topic, &group, &receiver.url(), &env);
    eventually(WAIT, "every event delivered after the restart", || {
        receiver.delivered_uuids().len() == EVENTS as usize
    })
    .await;
    let first = first_deliveries(&receiver);
    assert_eq!(first.len(), EVENTS as usize);
    assert_key_order(&first, &by_uuid);
    let hw = high_watermarks(&topic, 1)[0];
    eventually(WAIT, "the final commit at the high watermark", || {
        committed(&group, &topic, 1)[0] == Some(hw)
    })
    .await;
    println!(
        "ordering: {} requests before the kill, {} delivered before it, {} deliveries in all, {} commits sampled",
        requests.len(),
        before_restart,
        receiver.delivered().len(),
        samples
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_rare_keys_open_batch_goes_at_once_when_a_hot_key_saturates_the_partition() {
    // One event of a rare key, then a hot key in another lane: the hot lane
    // fills its 32 units behind the rare key's open batch, and the worker
    // reads no more. That batch must go then, not after BATCH_LINGER_MS.
    const LINGER: Duration = Duration::from_secs(120);
    const HOT: u64 = 300;
    let (topic, group) = (unique("saturated"), unique("g"));
    create_topic(&topic, 1).await;
    let producer = producer();
    let now = now_timestamp();
    let token = sample::captured(run_id(), 0, &now).token;
    let lane = |key: &str| patterns_connector::partition::state::lane_of(key.as_bytes(), 2);
    let rare = format!("{token}:rare");
    let hot = (0..)
        .map(|i| format!("{token}:hot-{i}"))
        .find(|k| lane(k) != lane(&rare))
        .expect("some key hashes to the other lane");
    for n in 0..=HOT {
        let mut s = sample::captured(run_id(), n, &now);
        s.key = if n == 0 { rare.clone() } else { hot.clone() };
        send_sample(&producer, &topic, s).await;
    }

    let receiver = Receiver::start().await;
    let linger = LINGER.as_millis().to_string();
    let env = [
        ("ORDERING", "key"),
        ("KEY_LANES", "2"),
        ("BATCH_MAX_EVENTS", "2"),
        ("BATCH_LINGER_MS", linger.as_str()),
    ];
    let started = tokio::time::Instant::now();
    let _connector = Connector::start(&topic, &group, &receiver.url(), &env);
    // Half the linger time: the hot key's 300 events fill 150 batches, and
    // only the rare key's batch going early lets them all through.
    eventually(
        LINGER / 2,
        "every event delivered well before the linger time",
        || receiver.delivered_uuids().len() == HOT as usize + 1,
    )
    .await;
    let hw = high_watermarks(&topic, 1)[0];
    eventually(LINGER / 2, "the commit at the high watermark", || {
        committed(&group, &topic, 1)[0] == Some(hw)
    })
    .await;
    println!(
        "saturated: {} events in {:?} (linger {LINGER:?})",
        HOT + 1,
        started.elapsed()
    );
}
