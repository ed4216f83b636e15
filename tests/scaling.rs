//! Consumer-group correctness under real rebalances: replicas joining,
//! leaving and dying while PostHog keeps producing; many rebalances in a row;
//! START_AT for a new group.

mod common;

use std::collections::HashSet;
use std::time::Duration;

use common::steady::{check_deliveries, SteadyProducer};
use common::*;

const WAIT: Duration = Duration::from_secs(120);

/// Fast group failure detection, so a killed replica's partitions move in seconds.
const GROUP_PROPERTIES: &str = "session.timeout.ms=6000,heartbeat.interval.ms=1000";

#[tokio::test(flavor = "multi_thread")]
async fn replicas_join_leave_and_die_while_events_keep_coming_and_nothing_is_lost() {
    let (topic, group) = (unique("scale"), unique("g"));
    create_topic(&topic, 12).await;
    let receiver = Receiver::start().await;
    let env = [
        ("KAFKA_PROPERTIES", GROUP_PROPERTIES),
        ("BATCH_LINGER_MS", "100"),
    ];
    let producer = SteadyProducer::start(&topic, 150);

    let a = Connector::start(&topic, &group, &receiver.url(), &env);
    eventually(WAIT, "replica A owns all 12 partitions", || {
        assigned(&a) == Some(12)
    })
    .await;
    let b = Connector::start(&topic, &group, &receiver.url(), &env);
    eventually(WAIT, "A and B share the partitions", || {
        assigned(&a) == Some(6) && assigned(&b) == Some(6)
    })
    .await;
    let mut c = Connector::start(&topic, &group, &receiver.url(), &env);
    eventually(WAIT, "three replicas with 4 partitions each", || {
        [&a, &b, &c].iter().all(|r| assigned(r) == Some(4))
    })
    .await;
    tokio::time::sleep(Duration::from_secs(2)).await;

    // Graceful scale-down.
    c.signal("TERM");
    assert!(c.wait(WAIT).await.success(), "{}", c.logs());
    eventually(WAIT, "A and B take C's partitions", || {
        assigned(&a) == Some(6) && assigned(&b) == Some(6)
    })
    .await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    let graceful = producer.produced.lock().expect("lock").clone();
    eventually(WAIT, "everything produced so far delivered", || {
        let got = receiver.delivered_uuids();
        graceful.iter().all(|p| got.contains(&p.sample.uuid))
    })
    .await;
    let graceful_duplicates = check_deliveries(&graceful, &receiver);

    // A replica dies.
    let mut b = b;
    b.signal("KILL");
    b.wait(WAIT).await;
    eventually(WAIT, "A takes every partition after B died", || {
        assigned(&a) == Some(12)
    })
    .await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    let produced = producer.stop().await;
    eventually(WAIT, "every produced event delivered", || {
        let got = receiver.delivered_uuids();
        produced.iter().all(|p| got.contains(&p.sample.uuid))
    })
    .await;
    let duplicates = check_deliveries(&produced, &receiver);
    println!(
        "scale: {} produced; duplicates: {graceful_duplicates} after scale-up and graceful scale-down, {duplicates} in all (after a SIGKILL)",
        produced.len()
    );
    assert_eq!(
        graceful_duplicates, 0,
        "a graceful scale-up or scale-down delivered events twice"
    );
    assert_no_secret(&a);
}

#[tokio::test(flavor = "multi_thread")]
async fn twenty_rebalances_in_a_row_leave_a_consumer_that_still_consumes() {
    let (topic, group) = (unique("rebalances"), unique("g"));
    create_topic(&topic, 6).await;
    let receiver = Receiver::start().await;
    let env = [
        ("KAFKA_PROPERTIES", GROUP_PROPERTIES),
        ("SHUTDOWN_TIMEOUT_MS", "2000"),
    ];
    let stayer = Connector::start(&topic, &group, &receiver.url(), &env);
    eventually(WAIT, "the first replica owns everything", || {
        assigned(&stayer) == Some(6)
    })
    .await;
    let mut produced = produce(&topic, run_id(), 0..60).await;
    for round in 0..10 {
        // Each round is two rebalances: a replica joins, then leaves.
        let mut visitor = Connector::start(&topic, &group, &receiver.url(), &env);
        eventually(WAIT, "the visitor gets partitions", || {
            assigned(&visitor).is_some_and(|n| n > 0)
        })
        .await;
        visitor.signal("TERM");
        assert!(
            visitor.wait(WAIT).await.success(),
            "round {round}: {}",
            visitor.logs()
        );
        eventually(WAIT, "the first replica owns everything again", || {
            assigned(&stayer) == Some(6)
        })
        .await;
    }
    let text = stayer.metrics().await;
    let rebalances: f64 = metric_values(&text, "patterns_connector_rebalances_total")
        .iter()
        .map(|(_, v)| v)
        .sum();
    assert!(rebalances >= 20.0, "{rebalances} rebalance callbacks");

    produced.extend(produce(&topic, run_id(), 0..300).await);
    eventually(WAIT, "everything delivered after the rebalances", || {
        let got = receiver.delivered_uuids();
        produced.iter().all(|p| got.contains(&p.sample.uuid))
    })
    .await;
    let deadline = std::time::Instant::now() + WAIT;
    loop {
        let lag = metric_values(
            &stayer.metrics().await,
            "patterns_connector_partition_lag_messages",
        );
        if lag.len() == 6 && lag.iter().all(|(_, v)| *v == 0.0) {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "lag never returned to 0: {lag:?}"
        );
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    check_deliveries(&produced, &receiver);
}

#[tokio::test(flavor = "multi_thread")]
async fn start_at_a_time_delivers_exactly_the_events_from_then_on() {
    let (topic, group) = (unique("startat"), unique("g"));
    create_topic(&topic, 3).await;
    let receiver = Receiver::start().await;
    let before = produce(&topic, run_id(), 0..30).await;
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let start = chrono::Utc::now();
    tokio::time::sleep(Duration::from_millis(500)).await;
    let after = produce(&topic, run_id(), 0..30).await;
    let start_at = start.to_rfc3339();
    let _connector = Connector::start(
        &topic,
        &group,
        &receiver.url(),
        &[("START_AT", start_at.as_str())],
    );
    let end: Vec<Option<i64>> = high_watermarks(&topic, 3).into_iter().map(Some).collect();
    eventually(WAIT, "committed to the end", || {
        committed(&group, &topic, 3) == end
    })
    .await;
    let delivered = receiver.delivered_uuids();
    let expected: HashSet<String> = after.iter().map(|p| p.sample.uuid.clone()).collect();
    assert_eq!(
        delivered, expected,
        "exactly the events produced after START_AT"
    );
    assert!(before.iter().all(|p| !delivered.contains(&p.sample.uuid)));
}
