//! End-to-end tests: the connector binary against a real Kafka broker and a
//! local webhook receiver each test controls. Every test has its own topic
//! and consumer group.

mod common;

use std::collections::{HashMap, HashSet};
use std::time::Duration;

use common::*;
use patterns_connector::event::sample::PROJECTS;
use serde_json::Value;

const WAIT: Duration = Duration::from_secs(90);

/// uuid → (partition, offset) of what was produced.
fn positions(produced: &[Produced]) -> HashMap<String, (i32, i64)> {
    produced
        .iter()
        .map(|p| (p.sample.uuid.clone(), (p.partition, p.offset)))
        .collect()
}

async fn wait_committed_to_end(group: &str, topic: &str, partitions: i32) {
    let hw = high_watermarks(topic, partitions);
    eventually(WAIT, "committed offsets reach the high watermarks", || {
        committed(group, topic, partitions)
            .iter()
            .zip(&hw)
            .all(|(c, h)| *h == 0 || *c == Some(*h))
    })
    .await;
}

#[tokio::test(flavor = "multi_thread")]
async fn delivers_every_event_in_the_documented_shape_in_order_within_batch_limits() {
    let (topic, group) = (unique("shape"), unique("g"));
    create_topic(&topic, 3).await;
    let receiver = Receiver::start().await;
    let run = run_id();
    let mut produced = produce(&topic, run, 0..600).await;
    let _connector = Connector::start(
        &topic,
        &group,
        &receiver.url(),
        // It checks each partition's order, which ORDERING=partition keeps.
        &[
            ("ORDERING", "partition"),
            ("BATCH_MAX_EVENTS", "50"),
            ("BATCH_MAX_BYTES", "40000"),
            ("BATCH_LINGER_MS", "300"),
        ],
    );
    eventually(WAIT, "the first 600 events delivered", || {
        receiver.delivered_uuids().len() >= 600
    })
    .await;
    // A handful more: fewer than a batch, so only the linger time sends them.
    produced.extend(produce(&topic, run, 600..607).await);
    eventually(WAIT, "the trailing events delivered by linger", || {
        receiver.delivered_uuids().len() >= 607
    })
    .await;

    let where_ = positions(&produced);
    let requests = receiver.requests();
    let mut last_offset: HashMap<i32, i64> = HashMap::new();
    for request in &requests {
        assert_eq!(request.status, 200);
        assert_eq!(request.headers["content-type"], "application/json");
        assert!(request.headers["user-agent"].starts_with("patterns-connector/"));
        assert!(
            request.events.len() <= 50,
            "BATCH_MAX_EVENTS exceeded: {}",
            request.events.len()
        );
        assert!(
            request.bytes <= 40000,
            "BATCH_MAX_BYTES exceeded: {}",
            request.bytes
        );
        let mut batch_partition = None;
        for event in &request.events {
            let uuid = event["uuid"].as_str().expect("uuid is a string");
            let (partition, offset) = where_[uuid];
            assert_eq!(
                *batch_partition.get_or_insert(partition),
                partition,
                "a batch mixes partitions"
            );
            let last = last_offset.entry(partition).or_insert(-1);
            assert!(
                offset > *last,
                "partition {partition}: offset {offset} after {last}"
            );
            *last = offset;
            for key in ["event", "distinct_id", "timestamp"] {
                assert!(event[key].is_string(), "{key} missing in {event}");
            }
            assert!(event["properties"].is_object());
            assert!(event["team_id"].is_i64());
            assert!(event.get("ip").is_some());
            let ts = event["timestamp"].as_str().expect("string");
            assert!(
                chrono::DateTime::parse_from_rfc3339(ts).is_ok() && ts.ends_with('Z'),
                "{ts}"
            );
        }
    }
    let delivered = receiver.delivered_uuids();
    for p in &produced {
        assert!(
            delivered.contains(&p.sample.uuid),
            "{} not delivered",
            p.sample.uuid
        );
    }
    wait_committed_to_end(&group, &topic, 3).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn filters_deliver_exactly_the_allowed_events_and_offsets_still_advance() {
    let (topic, group) = (unique("filter"), unique("g"));
    create_topic(&topic, 2).await;
    let receiver = Receiver::start().await;
    let produced = produce(&topic, run_id(), 0..300).await;
    let token = PROJECTS[0].0;
    let _connector = Connector::start(
        &topic,
        &group,
        &receiver.url(),
        &[
            ("ALLOWED_EVENT_TYPES", " $pageview, $autocapture "),
            ("POSTHOG_PROJECT_TOKEN", token),
        ],
    );
    wait_committed_to_end(&group, &topic, 2).await;
    let expected: HashSet<String> = produced
        .iter()
        .filter(|p| {
            p.sample.token == token
                && ["$pageview", "$autocapture"].contains(&p.sample.event.as_str())
        })
        .map(|p| p.sample.uuid.clone())
        .collect();
    assert!(!expected.is_empty() && expected.len() < 300);
    assert_eq!(receiver.delivered_uuids(), expected);
    for event in receiver.delivered() {
        assert!(["$pageview", "$autocapture"].contains(&event["event"].as_str().expect("event")));
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn nothing_is_committed_while_the_webhook_fails_and_everything_arrives_after() {
    let (topic, group) = (unique("fail500"), unique("g"));
    create_topic(&topic, 2).await;
    let receiver = Receiver::start().await;
    receiver.set_default(Reply::status(500));
    let produced = produce(&topic, run_id(), 0..100).await;
    let connector = Connector::start(&topic, &group, &receiver.url(), &[]);
    eventually(WAIT, "several failed attempts", || {
        receiver.requests().len() >= 6
    })
    .await;
    // Several commit intervals (500 ms) pass while the webhook fails.
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(
        committed(&group, &topic, 2),
        vec![None, None],
        "committed during failures"
    );
    let metrics = connector.metrics().await;
    let retries = metric_values(&metrics, "patterns_connector_webhook_retries_total");
    assert!(retries[0].1 >= 4.0, "retries counted: {retries:?}");

    receiver.set_default(Reply::ok());
    eventually(WAIT, "all events delivered after recovery", || {
        receiver.delivered_uuids().len() == 100
    })
    .await;
    let delivered = receiver.delivered_uuids();
    assert!(produced.iter().all(|p| delivered.contains(&p.sample.uuid)));
    wait_committed_to_end(&group, &topic, 2).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn retry_after_is_honoured() {
    let (topic, group) = (unique("retryafter"), unique("g"));
    create_topic(&topic, 1).await;
    let receiver = Receiver::start().await;
    receiver.script(vec![Reply::status(429).retry_after("2")]);
    produce(&topic, run_id(), 0..5).await;
    // One batch in flight, so the second request is the retry (under key
    // lanes, other lanes' first requests would come in between).
    let env = [("ORDERING", "partition")];
    let _connector = Connector::start(&topic, &group, &receiver.url(), &env);
    eventually(WAIT, "delivery after the 429", || {
        receiver.delivered_uuids().len() == 5
    })
    .await;
    let requests = receiver.requests();
    assert_eq!(requests[0].status, 429);
    let waited = requests[1].at - requests[0].at;
    assert!(
        waited >= Duration::from_secs(2),
        "retried after {waited:?}, before Retry-After: 2"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn sigkill_mid_stream_then_restart_loses_nothing() {
    let (topic, group) = (unique("sigkill"), unique("g"));
    create_topic(&topic, 4).await;
    let receiver = Receiver::start().await;
    // A slow webhook, so the kill lands with batches in flight and uncommitted.
    receiver.set_default(Reply::ok().delayed(Duration::from_millis(150)));
    let produced = produce(&topic, run_id(), 0..2000).await;
    let env = [("BATCH_MAX_EVENTS", "40")];
    let mut first = Connector::start(&topic, &group, &receiver.url(), &env);
    eventually(WAIT, "some deliveries before the kill", || {
        receiver.delivered_uuids().len() >= 300
    })
    .await;
    first.signal("KILL");
    first.wait(Duration::from_secs(10)).await;
    let before_restart = receiver.delivered_uuids().len();
    assert!(
        before_restart < 2000,
        "the kill came too late to test anything"
    );

    receiver.set_default(Reply::ok());
    let _second = Connector::start(&topic, &group, &receiver.url(), &env);
    eventually(WAIT, "every event delivered after the restart", || {
        receiver.delivered_uuids().len() == 2000
    })
    .await;
    let delivered = receiver.delivered();
    let all: HashSet<_> = produced.iter().map(|p| p.sample.uuid.as_str()).collect();
    assert!(delivered
        .iter()
        .all(|e| all.contains(e["uuid"].as_str().expect("uuid"))));
    println!(
        "sigkill: {} produced, {} deliveries, {} duplicates ({} delivered before the kill)",
        all.len(),
        delivered.len(),
        delivered.len() - all.len(),
        before_restart
    );
    wait_committed_to_end(&group, &topic, 4).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn sigterm_finishes_in_flight_batches_commits_and_a_restart_redelivers_nothing() {
    let (topic, group) = (unique("sigterm"), unique("g"));
    create_topic(&topic, 1).await;
    let receiver = Receiver::start().await;
    receiver.set_default(Reply::ok().delayed(Duration::from_millis(1500)));
    produce(&topic, run_id(), 0..300).await;
    let mut connector = Connector::start(
        &topic,
        &group,
        &receiver.url(),
        &[("BATCH_MAX_EVENTS", "100")],
    );
    eventually(WAIT, "a request in flight", || receiver.started() >= 1).await;
    connector.signal("TERM");
    let status = connector.wait(Duration::from_secs(30)).await;
    assert!(
        status.success(),
        "exit status {status:?}; log: {}",
        connector.logs()
    );
    let delivered_before = receiver.delivered_uuids();
    assert!(!delivered_before.is_empty(), "the in-flight batch finished");
    assert_eq!(
        committed(&group, &topic, 1),
        vec![Some(delivered_before.len() as i64)],
        "the commit covers exactly what was delivered"
    );

    receiver.set_default(Reply::ok());
    let seen_before = receiver.delivered().len();
    let _again = Connector::start(&topic, &group, &receiver.url(), &[]);
    eventually(WAIT, "the rest delivered", || {
        receiver.delivered_uuids().len() == 300
    })
    .await;
    let redelivered: Vec<Value> = receiver.delivered()[seen_before..]
        .iter()
        .filter(|e| delivered_before.contains(e["uuid"].as_str().expect("uuid")))
        .cloned()
        .collect();
    assert!(
        redelivered.is_empty(),
        "{} events redelivered after a clean shutdown",
        redelivered.len()
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn lag_gauges_rise_while_the_webhook_is_down_and_return_to_zero() {
    let (topic, group) = (unique("lag"), unique("g"));
    create_topic(&topic, 2).await;
    let receiver = Receiver::start().await;
    receiver.set_default(Reply::status(503));
    produce(&topic, run_id(), 0..200).await;
    let connector = Connector::start(&topic, &group, &receiver.url(), &[]);
    let sum = |text: &str, name: &str| {
        metric_values(text, name)
            .iter()
            .map(|(_, v)| v)
            .sum::<f64>()
    };
    let max = |text: &str, name: &str| {
        metric_values(text, name)
            .iter()
            .map(|(_, v)| *v)
            .fold(0.0, f64::max)
    };
    let text = connector
        .metrics_until(WAIT, "lag to show the outage", |text| {
            sum(text, "patterns_connector_partition_lag_messages") >= 200.0
                && max(text, "patterns_connector_partition_lag_seconds") >= 1.0
        })
        .await;
    assert_eq!(
        metric_values(&text, "patterns_connector_partition_no_committed_offset").len(),
        2
    );

    receiver.set_default(Reply::ok());
    let text = connector
        .metrics_until(WAIT, "lag to return to 0", |text| {
            let lag = metric_values(text, "patterns_connector_partition_lag_messages");
            let secs = metric_values(text, "patterns_connector_partition_lag_seconds");
            lag.len() == 2
                && lag.iter().all(|(_, v)| *v == 0.0)
                && secs.iter().all(|(_, v)| *v == 0.0)
        })
        .await;
    assert_eq!(
        sum(&text, "patterns_connector_events_delivered_total"),
        200.0
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_bad_config_value_fails_at_start_with_a_clear_error() {
    let run = |env: &[(&str, &str)]| {
        let mut cmd = std::process::Command::new(env!("CARGO_BIN_EXE_patterns-connector"));
        cmd.env_clear();
        for (k, v) in env {
            cmd.env(k, v);
        }
        cmd.output().expect("runs")
    };
    let url = (
        "PATTERNS_WEBHOOK_URL",
        "https://hooks.example/secret-path-xyz",
    );
    let out = run(&[url, ("BATCH_MAX_EVENTS", "many")]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(
        stderr.contains("BATCH_MAX_EVENTS") && stderr.contains("whole number"),
        "{stderr}"
    );
    assert!(!stderr.contains("secret-path-xyz"), "{stderr}");

    let out = run(&[url, ("HTTP_ADDR", "everywhere")]);
    assert_ne!(out.status.code(), Some(0));
    assert!(String::from_utf8_lossy(&out.stderr).contains("HTTP_ADDR"));

    let out = run(&[("KAFKA_TOPIC", "t")]);
    assert_ne!(out.status.code(), Some(0));
    assert!(String::from_utf8_lossy(&out.stderr).contains("PATTERNS_WEBHOOK_URL"));

    let out = run(&[
        url,
        ("KAFKA_PROPERTIES", "no.such.property=1"),
        ("HTTP_ADDR", "127.0.0.1:0"),
    ]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_ne!(out.status.code(), Some(0));
    assert!(
        stderr.contains("KAFKA_PROPERTIES") && stderr.contains("no.such.property"),
        "{stderr}"
    );
}

/// A replica owning many partitions gives each a share of `MAX_BUFFERED_BYTES`
/// smaller than one full batch (96 partitions with the defaults: 0.7 MB each
/// against 1 MiB batches). Here one partition's share (1 MiB) is a quarter of
/// `BATCH_MAX_BYTES`: the partition pauses before its batch is full, and must
/// send what it holds then, not after the linger time.
#[tokio::test(flavor = "multi_thread")]
async fn a_partition_paused_for_memory_sends_its_batch_at_once_not_after_the_linger_time() {
    let (topic, group) = (unique("pressed"), unique("g"));
    create_topic(&topic, 1).await;
    let receiver = Receiver::start().await;
    produce(&topic, run_id(), 0..2000).await;
    let linger_ms = 120_000;
    let connector = Connector::start(
        &topic,
        &group,
        &receiver.url(),
        &[
            ("ORDERING", "partition"),
            ("MAX_BUFFERED_BYTES", "1048576"),
            ("BATCH_MAX_BYTES", "4194304"),
            ("BATCH_MAX_EVENTS", "10000"),
            ("BATCH_LINGER_MS", &linger_ms.to_string()),
        ],
    );
    // Half the linger time: only batches sealed early can arrive in time.
    // The last, partial batch of the backlog is not under pressure and waits
    // for its linger as it should: the test waits for three quarters.
    eventually(
        Duration::from_millis(linger_ms / 2),
        "1,500 of 2,000 events delivered before any linger time is up",
        || receiver.delivered_uuids().len() >= 1500,
    )
    .await;
    let requests = receiver.requests().len();
    assert!(
        requests > 1,
        "one batch of everything ({requests} requests)"
    );
    drop(connector);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_full_buffer_pauses_the_partition_and_memory_stays_bounded() {
    let (topic, group) = (unique("backpressure"), unique("g"));
    create_topic(&topic, 1).await;
    let receiver = Receiver::start().await;
    receiver.set_default(Reply::status(503));
    // About 5 MB of events against a 1 MiB buffer cap.
    produce(&topic, run_id(), 0..3000).await;
    let cap = 1 << 20;
    let connector = Connector::start(
        &topic,
        &group,
        &receiver.url(),
        &[
            ("MAX_BUFFERED_BYTES", "1048576"),
            ("BATCH_MAX_BYTES", "262144"),
        ],
    );
    let gauge = |text: &str, name: &str| metric_values(text, name).first().map(|(_, v)| *v);
    let mut text = connector
        .metrics_until(WAIT, "the partition to pause", |text| {
            gauge(text, "patterns_connector_partition_paused") == Some(1.0)
        })
        .await;
    let mut peak = 0.0f64;
    for _ in 0..10 {
        text = connector.metrics().await;
        peak = peak.max(gauge(&text, "patterns_connector_buffered_bytes").unwrap_or(0.0));
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let consumed = gauge(&text, "patterns_connector_events_consumed_total").unwrap_or(0.0);
    assert!(
        consumed < 3000.0,
        "paused, yet everything was consumed ({consumed})"
    );
    // The cap plus at most one message and one batch of slack.
    assert!(
        peak <= (cap + 2 * 262_144) as f64,
        "buffered {peak} bytes with a {cap} cap"
    );

    // Lag in messages keeps counting what arrives while the partition is
    // paused (librdkafka's own watermark stops at the pause).
    produce(&topic, run_id(), 3000..3500).await;
    let high = high_watermarks(&topic, 1)[0];
    text = connector
        .metrics_until(
            WAIT,
            &format!("lag to reach the high watermark {high} while paused"),
            |text| gauge(text, "patterns_connector_partition_lag_messages") == Some(high as f64),
        )
        .await;
    assert_eq!(
        gauge(&text, "patterns_connector_partition_paused"),
        Some(1.0),
        "still paused when the lag was read"
    );

    receiver.set_default(Reply::ok());
    eventually(WAIT, "everything delivered after resuming", || {
        receiver.delivered_uuids().len() == 3500
    })
    .await;
    text = connector.metrics().await;
    assert_eq!(
        gauge(&text, "patterns_connector_partition_paused"),
        Some(0.0)
    );
}
