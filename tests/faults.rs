//! Faults that combine, against a real Kafka: a webhook outage that pauses
//! partitions while replicas join and leave; what the gauges and health
//! endpoints say meanwhile; and the start position of partitions that have no
//! commit.

mod common;

use std::collections::HashSet;
use std::time::Duration;

use common::*;

const WAIT: Duration = Duration::from_secs(120);

/// Fast group failure detection, so rebalances take seconds.
const GROUP_PROPERTIES: &str = "session.timeout.ms=6000,heartbeat.interval.ms=1000";

fn gauge_sum(text: &str, name: &str) -> f64 {
    metric_values(text, name).iter().map(|(_, v)| v).sum()
}

fn assigned(connector: &Connector) -> Option<i64> {
    metric_values(
        &connector.metrics_blocking(),
        "patterns_connector_assigned_partitions",
    )
    .first()
    .map(|(_, v)| *v as i64)
}

/// The regression of a paused partition that moves to another replica and
/// back: librdkafka keeps a partition's pause flag across unassign and
/// assign, so the returning partition must be resumed explicitly, or it
/// never fetches again while every gauge says all is well.
#[tokio::test(flavor = "multi_thread")]
async fn partitions_paused_during_an_outage_fetch_again_after_moving_away_and_back() {
    let (topic, group) = (unique("pauseback"), unique("g"));
    create_topic(&topic, 4).await;
    let receiver = Receiver::start().await;
    receiver.set_default(Reply::status(500));
    let env = [
        ("KAFKA_PROPERTIES", GROUP_PROPERTIES),
        // A share of 256 KiB per partition: the backlog below pauses all four.
        ("MAX_BUFFERED_BYTES", "1048576"),
        ("BATCH_MAX_EVENTS", "100"),
        ("SHUTDOWN_TIMEOUT_MS", "2000"),
    ];
    let produced = produce(&topic, run_id(), 0..4000).await;
    let a = Connector::start(&topic, &group, &receiver.url(), &env);
    a.metrics_until(WAIT, "replica A pauses all 4 partitions", |t| {
        gauge_sum(t, "patterns_connector_partition_paused") == 4.0
    })
    .await;

    // The autoscaler adds a replica during the outage, then removes it.
    let mut b = Connector::start(&topic, &group, &receiver.url(), &env);
    eventually(WAIT, "B takes half the partitions", || {
        assigned(&a) == Some(2) && assigned(&b) == Some(2)
    })
    .await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    b.signal("TERM");
    assert!(b.wait(WAIT).await.success(), "{}", b.logs());
    eventually(WAIT, "A owns all 4 again", || assigned(&a) == Some(4)).await;

    // The webhook recovers: every event arrives, and the lag returns to 0.
    receiver.set_default(Reply::ok());
    let want: HashSet<String> = produced.iter().map(|p| p.sample.uuid.clone()).collect();
    let deadline = std::time::Instant::now() + Duration::from_secs(90);
    loop {
        let got = receiver.delivered_uuids();
        let missing = want.difference(&got).count();
        if missing == 0 {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "{missing} of {} events never delivered after the webhook recovered; metrics:\n{}",
            want.len(),
            a.metrics().await
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    a.metrics_until(WAIT, "lag back to 0 on all 4 partitions", |t| {
        let lag = metric_values(t, "patterns_connector_partition_lag_messages");
        lag.len() == 4 && lag.iter().all(|(_, v)| *v == 0.0)
    })
    .await;
}
