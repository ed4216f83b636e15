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

    // More events during the outage: the gauges follow the broker's view
    // even though no partition fetches.
    let mut produced = produced;
    produced.extend(produce(&topic, run_id(), 0..400).await);
    let broker_high = high_watermarks(&topic, 4);
    let text = a
        .metrics_until(
            Duration::from_secs(20),
            "high watermark gauges equal the broker's",
            |t| {
                let gauges = metric_values(t, "patterns_connector_partition_high_watermark_offset");
                gauges.len() == 4
                    && (0..4).all(|p| {
                        gauges.iter().any(|(labels, v)| {
                            labels.contains(&format!("partition=\"{p}\""))
                                && *v as i64 == broker_high[p as usize]
                        })
                    })
            },
        )
        .await;
    let committed_now = committed(&group, &topic, 4);
    let broker_lag: i64 = (0..4)
        .map(|p| broker_high[p] - committed_now[p].unwrap_or(0))
        .sum();
    let gauge_lag = gauge_sum(&text, "patterns_connector_partition_lag_messages") as i64;
    assert_eq!(
        gauge_lag, broker_lag,
        "lag in messages agrees with the broker"
    );

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

/// `START_AT=latest` decides a new group's start once, durably: an owner
/// that dies before its first delivery hands over a committed position, so
/// the next owner does not jump to the end again past what arrived meanwhile.
#[tokio::test(flavor = "multi_thread")]
async fn start_at_latest_skips_nothing_when_the_first_owner_dies_before_delivering() {
    let (topic, group) = (unique("latestcrash"), unique("g"));
    create_topic(&topic, 2).await;
    let receiver = Receiver::start().await;
    receiver.set_default(Reply::status(503));
    let old = produce(&topic, run_id(), 0..10).await;
    let env = [
        ("START_AT", "latest"),
        ("KAFKA_PROPERTIES", GROUP_PROPERTIES),
    ];
    let mut first = Connector::start(&topic, &group, &receiver.url(), &env);
    eventually(WAIT, "the first owner has both partitions", || {
        assigned(&first) == Some(2)
    })
    .await;
    let new = produce(&topic, run_id(), 0..20).await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    first.signal("KILL");
    first.wait(WAIT).await;

    receiver.set_default(Reply::ok());
    let _second = Connector::start(&topic, &group, &receiver.url(), &env);
    let want: HashSet<String> = new.iter().map(|p| p.sample.uuid.clone()).collect();
    eventually(
        WAIT,
        "every event produced after the group started delivered",
        || receiver.delivered_uuids().is_superset(&want),
    )
    .await;
    let delivered = receiver.delivered_uuids();
    assert!(
        old.iter().all(|p| !delivered.contains(&p.sample.uuid)),
        "events from before START_AT=latest were delivered"
    );
}

/// In a group that has commits, a partition without one (here: added to the
/// topic while running) starts at its earliest offset, whatever START_AT says.
#[tokio::test(flavor = "multi_thread")]
async fn a_partition_added_while_running_is_read_from_its_start_even_with_start_at_latest() {
    let (topic, group) = (unique("grown"), unique("g"));
    create_topic(&topic, 2).await;
    let receiver = Receiver::start().await;
    let env = [
        ("START_AT", "latest"),
        // The delivered offsets of partitions 0 and 1 are not committed
        // before partition 2 arrives: the group's only commits are the
        // START_AT positions, and it is still not a new group.
        ("COMMIT_INTERVAL_MS", "600000"),
        // Discover the new partition within a second or two.
        (
            "KAFKA_PROPERTIES",
            "topic.metadata.refresh.interval.ms=1000",
        ),
    ];
    let connector = Connector::start(&topic, &group, &receiver.url(), &env);
    eventually(WAIT, "both partitions assigned", || {
        assigned(&connector) == Some(2)
    })
    .await;
    let first = produce(&topic, run_id(), 0..10).await;
    eventually(WAIT, "the first events delivered", || {
        receiver.delivered_uuids().len() >= first.len()
    })
    .await;
    add_partitions(&topic, 3).await;
    // Produced before the connector notices the new partition.
    let run = run_id();
    let records: Vec<RawRecord> = (0..10)
        .map(|n| {
            let s = patterns_connector::event::sample::captured(run, n, "2024-05-01T12:00:00Z");
            (Some(s.key.into_bytes()), Some(s.value))
        })
        .collect();
    produce_keyed(&topic, 2, &records).await;
    let want: HashSet<String> = (0..10)
        .map(|n| patterns_connector::event::sample::captured(run, n, "x").uuid)
        .collect();
    eventually(WAIT, "the new partition's events delivered", || {
        receiver.delivered_uuids().is_superset(&want)
    })
    .await;
    // The shutdown commits every delivered offset.
    let mut connector = connector;
    connector.signal("TERM");
    assert!(connector.wait(WAIT).await.success());
    assert_eq!(committed(&group, &topic, 3)[2], Some(10));
}

/// A dead-letter topic that refuses writes: the partition takes no more
/// messages while it lasts (bounded), says so in /healthz and a gauge, and
/// moves on once the topic accepts writes again.
#[tokio::test(flavor = "multi_thread")]
async fn failing_dead_letter_writes_stop_the_partition_until_the_topic_accepts_them() {
    use rdkafka::admin::{
        AdminOptions, AlterConfig, NewTopic, ResourceSpecifier, TopicReplication,
    };
    let (topic, group, dlq) = (unique("dlqfail"), unique("g"), unique("dlq"));
    create_topic(&topic, 1).await;
    let options = AdminOptions::new().operation_timeout(Some(Duration::from_secs(30)));
    // Every dead letter is larger than this topic accepts.
    admin()
        .create_topics(
            &[NewTopic::new(&dlq, 1, TopicReplication::Fixed(1)).set("max.message.bytes", "64")],
            &options,
        )
        .await
        .expect("create_topics")
        .into_iter()
        .for_each(|r| {
            r.expect("dlq created");
        });
    let receiver = Receiver::start().await;
    let run = run_id();
    let good = |n: u64| {
        let s = patterns_connector::event::sample::captured(run, n, "2024-05-01T12:00:00Z");
        ((Some(s.key.into_bytes()), Some(s.value)), s.uuid)
    };
    let (first, first_uuid) = good(0);
    produce_keyed(
        &topic,
        0,
        &[first, (None, Some(b"not json at all".to_vec()))],
    )
    .await;
    let connector = Connector::start(
        &topic,
        &group,
        &receiver.url(),
        &[("DLQ_TOPIC", dlq.as_str())],
    );
    eventually(WAIT, "a dead-letter write failed", || {
        connector
            .logs()
            .contains("writing to the dead-letter topic failed")
    })
    .await;

    // More bad and good messages arrive: none is taken while writes fail.
    let later: Vec<_> = (1..=20).map(good).collect();
    let mut records: Vec<_> = later.iter().map(|(r, _)| r.clone()).collect();
    records.insert(5, (None, Some(b"also not json".to_vec())));
    produce_keyed(&topic, 0, &records).await;
    tokio::time::sleep(Duration::from_secs(4)).await;
    let delivered = receiver.delivered_uuids();
    assert_eq!(
        delivered,
        HashSet::from([first_uuid.clone()]),
        "nothing after the failing dead letter may be taken"
    );
    assert_eq!(committed(&group, &topic, 1), vec![Some(1)]);
    connector
        .metrics_until(WAIT, "dead-letter writes reported failing", |t| {
            metric_values(t, "patterns_connector_partition_dead_letter_failing")
                .iter()
                .any(|(_, v)| *v == 1.0)
        })
        .await;
    let (status, body) = connector.get_blocking("/healthz").expect("healthz answers");
    assert_eq!(status, 200, "{body}");
    assert!(body.contains("dead-letter writes failing"), "{body}");

    // The operator fixes the topic: the letters go through and the partition moves on.
    admin()
        .alter_configs(
            &[
                AlterConfig::new(ResourceSpecifier::Topic(&dlq))
                    .set("max.message.bytes", "1048576"),
            ],
            &options,
        )
        .await
        .expect("alter_configs");
    let want: HashSet<String> = later.iter().map(|(_, u)| u.clone()).collect();
    eventually(
        WAIT,
        "everything delivered once the topic accepts writes",
        || receiver.delivered_uuids().is_superset(&want),
    )
    .await;
    eventually(WAIT, "committed past both dead letters", || {
        committed(&group, &topic, 1) == vec![Some(23)]
    })
    .await;
    assert_eq!(read_topic(&dlq, 2, WAIT).len(), 2);
    connector
        .metrics_until(WAIT, "the failing gauge back to 0", |t| {
            let v = metric_values(t, "patterns_connector_partition_dead_letter_failing");
            !v.is_empty() && v.iter().all(|(_, v)| *v == 0.0)
        })
        .await;
}

/// A fatal client state (here: another member took this one's
/// group.instance.id) ends the process with a clear error and a non-zero
/// exit, so the orchestrator restarts it, instead of a live-looking replica
/// that consumes nothing. Under the classic protocol the member already in
/// the group is fenced; under the new one (KIP-848) the one joining is
/// refused, waits for the identity to be released (what a killed
/// incarnation's restart needs), and exits after 120 s.
async fn two_members_with_one_identity(protocol: &str, session: &str) {
    let (topic, group) = (unique("fenced"), unique("g"));
    create_topic(&topic, 2).await;
    let receiver = Receiver::start().await;
    let instance = unique("instance");
    let env = [
        ("KAFKA_PROPERTIES", session),
        ("KAFKA_GROUP_PROTOCOL", protocol),
        ("KAFKA_GROUP_INSTANCE_ID", instance.as_str()),
    ];
    let mut first = Connector::start(&topic, &group, &receiver.url(), &env);
    eventually(WAIT, "the first member has both partitions", || {
        assigned(&first) == Some(2)
    })
    .await;
    let mut second = Connector::start(&topic, &group, &receiver.url(), &env);
    let (fenced, kept) = if protocol == "classic" {
        (&mut first, &mut second)
    } else {
        (&mut second, &mut first)
    };
    // The new protocol's refused member waits for the identity to be
    // released (as after a kill) for 120 s before it concludes.
    let status = fenced.wait(Duration::from_secs(200)).await;
    assert!(!status.success(), "a fenced member must exit non-zero");
    let logs = fenced.logs();
    assert!(
        logs.contains("fatal Kafka"),
        "the reason is logged: {}",
        &logs[logs.len().saturating_sub(3000)..]
    );
    if protocol == "consumer" {
        assert!(
            logs.contains("share one identity"),
            "the conclusion is logged: {}",
            &logs[logs.len().saturating_sub(3000)..]
        );
    }
    assert!(kept.exited().is_none(), "the other member keeps running");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_fenced_static_member_exits_non_zero_with_a_clear_error() {
    two_members_with_one_identity("classic", GROUP_PROPERTIES).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn under_the_new_protocol_a_second_member_with_a_taken_identity_exits_non_zero() {
    two_members_with_one_identity("consumer", "").await;
}

/// With Kafka unreachable, one line names the broker and the cause, then
/// reminders are rate-limited (it was about 27 lines a second), across all
/// of the process's clients.
#[tokio::test(flavor = "multi_thread")]
async fn an_unreachable_kafka_is_reported_once_then_reminded_not_flooded() {
    let nobody = free_port();
    let receiver = Receiver::start().await;
    let connector = Connector::start(
        &unique("nokafka"),
        &unique("g"),
        &receiver.url(),
        &[
            ("KAFKA_HOSTS", nobody.to_string().as_str()),
            ("LOG_LEVEL", "info"),
        ],
    );
    tokio::time::sleep(Duration::from_secs(12)).await;
    let logs = connector.logs();
    let noisy: Vec<&str> = logs
        .lines()
        .filter(|l| l.contains("WARN") || l.contains("ERROR"))
        .collect();
    assert!(
        noisy
            .iter()
            .any(|l| l.contains(&nobody.to_string()) && l.contains("refused")),
        "the broker and the cause are named:\n{logs}"
    );
    // One line per kind for the whole process, not per client: the
    // consumer, two producers and the watermark probe lose the same broker
    // (13 lines with a limit per client, once the state producer came).
    assert!(
        noisy.len() <= 8,
        "{} warning or error lines in 12 s:\n{logs}",
        noisy.len()
    );
}

/// SIGTERM during a revocation drain: the whole shutdown keeps one deadline
/// (SIGTERM + SHUTDOWN_TIMEOUT_MS), not one per drain, so the process exits
/// within the orchestrator's grace period.
#[tokio::test(flavor = "multi_thread")]
async fn sigterm_during_a_revocation_drain_exits_within_one_shutdown_timeout() {
    let (topic, group) = (unique("drainterm"), unique("g"));
    create_topic(&topic, 4).await;
    let receiver = Receiver::start().await;
    // Every request hangs far longer than any deadline below.
    receiver.set_default(Reply::ok().delayed(Duration::from_secs(60)));
    let env = [
        ("KAFKA_PROPERTIES", GROUP_PROPERTIES),
        ("SHUTDOWN_TIMEOUT_MS", "8000"),
        ("WEBHOOK_TIMEOUT_MS", "120000"),
    ];
    let mut first = Connector::start(&topic, &group, &receiver.url(), &env);
    eventually(WAIT, "the first replica owns all 4", || {
        assigned(&first) == Some(4)
    })
    .await;
    produce(&topic, run_id(), 0..40).await;
    eventually(WAIT, "a batch in flight on every partition", || {
        receiver.started() >= 4
    })
    .await;
    // A second replica joins: the first drains its revoked partitions,
    // which cannot finish, for up to SHUTDOWN_TIMEOUT_MS.
    let _second = Connector::start(&topic, &group, &receiver.url(), &env);
    eventually(WAIT, "the revocation drain began", || {
        first.logs().contains("draining in-flight batches")
    })
    .await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    let sigterm = std::time::Instant::now();
    first.signal("TERM");
    first.wait(WAIT).await;
    let took = sigterm.elapsed();
    println!("exited {took:?} after SIGTERM (SHUTDOWN_TIMEOUT_MS 8 s)");
    assert!(
        took < Duration::from_secs(11),
        "exited {took:?} after SIGTERM; SHUTDOWN_TIMEOUT_MS is 8 s"
    );
}

/// After a rebalance, a replica reports only the partitions it owns: the
/// commit of the revoked ones must not bring their series back.
#[tokio::test(flavor = "multi_thread")]
async fn a_replica_reports_only_the_partitions_it_owns_after_a_rebalance() {
    let (topic, group) = (unique("owned"), unique("g"));
    create_topic(&topic, 4).await;
    let receiver = Receiver::start().await;
    let env = [("KAFKA_PROPERTIES", GROUP_PROPERTIES)];
    let first = Connector::start(&topic, &group, &receiver.url(), &env);
    eventually(WAIT, "the first replica owns all 4", || {
        assigned(&first) == Some(4)
    })
    .await;
    produce(&topic, run_id(), 0..200).await;
    eventually(WAIT, "everything delivered", || {
        receiver.delivered_uuids().len() >= 200
    })
    .await;
    let second = Connector::start(&topic, &group, &receiver.url(), &env);
    eventually(WAIT, "two partitions each", || {
        assigned(&first) == Some(2) && assigned(&second) == Some(2)
    })
    .await;
    produce(&topic, run_id(), 0..200).await;
    tokio::time::sleep(Duration::from_secs(4)).await;
    let text = first.metrics().await;
    for name in [
        "patterns_connector_partition_last_commit_timestamp_seconds",
        "patterns_connector_partition_lag_messages",
        "patterns_connector_partition_committed_offset",
        "patterns_connector_partition_stalled",
    ] {
        let series = metric_values(&text, name);
        assert_eq!(series.len(), 2, "{name}: {series:?}");
    }
}

/// Partitions that move to a replica report their committed offset and no
/// lag at once, though no new event arrives for them to commit: the
/// committed offsets the new owner reads when it is assigned count.
#[tokio::test(flavor = "multi_thread")]
async fn partitions_handed_over_report_their_commit_and_no_lag_without_new_events() {
    let (topic, group) = (unique("handed"), unique("g"));
    create_topic(&topic, 4).await;
    let receiver = Receiver::start().await;
    let env = [
        ("KAFKA_PROPERTIES", GROUP_PROPERTIES),
        ("COMMIT_INTERVAL_MS", "500"),
    ];
    let first = Connector::start(&topic, &group, &receiver.url(), &env);
    eventually(WAIT, "the first replica owns all 4", || {
        assigned(&first) == Some(4)
    })
    .await;
    produce(&topic, run_id(), 0..200).await;
    let high = high_watermarks(&topic, 4);
    eventually(WAIT, "everything committed", || {
        committed(&group, &topic, 4) == high.iter().map(|h| Some(*h)).collect::<Vec<_>>()
    })
    .await;
    let second = Connector::start(&topic, &group, &receiver.url(), &env);
    eventually(WAIT, "two partitions each", || {
        assigned(&first) == Some(2) && assigned(&second) == Some(2)
    })
    .await;
    let consistent = |text: &str| {
        let committed = partition_values(text, "patterns_connector_partition_committed_offset");
        let lag = partition_values(text, "patterns_connector_partition_lag_messages");
        let no_commit = partition_values(text, "patterns_connector_partition_no_committed_offset");
        committed.len() == 2
            && committed
                .iter()
                .all(|(p, c)| *c == high[*p as usize] as f64)
            && lag.len() == 2
            && lag.iter().all(|(_, l)| *l == 0.0)
            && no_commit.iter().all(|(_, n)| *n == 0.0)
    };
    second
        .metrics_until(
            Duration::from_secs(20),
            "the second replica's partitions show their commit (the broker's high watermark) and no lag",
            consistent,
        )
        .await;
}

/// librdkafka's stuck group state, made on purpose: partitions are added
/// while a replica is in its revoke callback (draining a batch the slow
/// webhook holds), so librdkafka rejoins in the middle of the revocation
/// and from then on skips every rebalance. When the other replica leaves,
/// its partitions are never handed back: before the wedge watch, the stuck
/// replica stayed up, healthy, with those partitions unread for ever. Now
/// it exits non-zero, naming the cause, and once restarted (as an
/// orchestrator would) everything is delivered.
#[tokio::test(flavor = "multi_thread")]
async fn a_replica_stuck_in_librdkafkas_group_state_exits_so_that_a_restart_clears_it() {
    let (topic, group) = (unique("wedge"), unique("g"));
    create_topic(&topic, 2).await;
    let receiver = Receiver::start().await;
    receiver.set_default(Reply::ok().delayed(Duration::from_secs(8)));
    let env = [
        (
            "KAFKA_PROPERTIES",
            "session.timeout.ms=6000,heartbeat.interval.ms=500,topic.metadata.refresh.interval.ms=500",
        ),
        ("SHUTDOWN_TIMEOUT_MS", "15000"),
        ("BATCH_LINGER_MS", "50"),
    ];
    let mut stuck = Connector::start(&topic, &group, &receiver.url(), &env);
    eventually(WAIT, "the first replica owns both partitions", || {
        assigned(&stuck) == Some(2)
    })
    .await;
    let produced = produce(&topic, run_id(), 0..100).await;
    eventually(WAIT, "batches in flight on the slow webhook", || {
        receiver.started() >= 2
    })
    .await;
    let mut other = Connector::start(&topic, &group, &receiver.url(), &env);
    eventually(
        WAIT,
        "the first replica draining a revoked partition",
        || {
            stuck
                .logs()
                .contains("partitions revoked; draining in-flight batches")
        },
    )
    .await;
    add_partitions(&topic, 4).await;
    // Let the rebalances that follow settle, then the other replica leaves.
    tokio::time::sleep(Duration::from_secs(20)).await;
    receiver.set_default(Reply::ok());
    other.signal("TERM");
    assert!(other.wait(WAIT).await.success());
    // The stuck replica notices after 30 s of skipped rebalances, and exits.
    let status = stuck.wait(Duration::from_secs(150)).await;
    assert!(!status.success(), "exited with {status}");
    assert!(
        stuck
            .logs()
            .contains("librdkafka has skipped every rebalance"),
        "the exit names the cause; log:\n{}",
        stuck.logs()
    );
    let restarted = Connector::start(&topic, &group, &receiver.url(), &env);
    let want: HashSet<String> = produced.iter().map(|p| p.sample.uuid.clone()).collect();
    eventually(WAIT, "everything delivered after the restart", || {
        receiver.delivered_uuids().is_superset(&want)
    })
    .await;
    drop(restarted);
}

/// A topic deleted and created again under the same name while the
/// connector reads it: its offsets start again from 0, and the new events
/// are delivered and committed (progress is not held back by the old
/// offsets), with lag back to 0.
#[tokio::test(flavor = "multi_thread")]
async fn a_topic_deleted_and_recreated_is_delivered_and_committed_again() {
    use rdkafka::admin::AdminOptions;
    let (topic, group) = (unique("recreated"), unique("g"));
    create_topic(&topic, 1).await;
    let receiver = Receiver::start().await;
    let connector = Connector::start(
        &topic,
        &group,
        &receiver.url(),
        &[(
            "KAFKA_PROPERTIES",
            "topic.metadata.refresh.interval.ms=1000",
        )],
    );
    let before = produce(&topic, run_id(), 0..50).await;
    eventually(WAIT, "the first events committed", || {
        committed(&group, &topic, 1) == vec![Some(50)]
    })
    .await;
    let options = AdminOptions::new().operation_timeout(Some(Duration::from_secs(30)));
    admin()
        .delete_topics(&[topic.as_str()], &options)
        .await
        .expect("delete_topics");
    // Deletion finishes in the background; create until the name is free.
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    loop {
        let created = admin()
            .create_topics(
                &[rdkafka::admin::NewTopic::new(
                    &topic,
                    1,
                    rdkafka::admin::TopicReplication::Fixed(1),
                )],
                &options,
            )
            .await
            .expect("create_topics");
        if created.iter().all(|r| r.is_ok()) {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "cannot recreate: {created:?}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let after = produce(&topic, run_id(), 0..10).await;
    let want: HashSet<String> = after.iter().map(|p| p.sample.uuid.clone()).collect();
    eventually(WAIT, "the new topic's events delivered", || {
        receiver.delivered_uuids().is_superset(&want)
    })
    .await;
    eventually(WAIT, "the new topic committed to its end", || {
        committed(&group, &topic, 1) == vec![Some(10)]
    })
    .await;
    connector
        .metrics_until(WAIT, "lag 0 on the recreated topic", |t| {
            let lag = metric_values(t, "patterns_connector_partition_lag_messages");
            let high = metric_values(t, "patterns_connector_partition_high_watermark_offset");
            lag.len() == 1 && lag[0].1 == 0.0 && high.len() == 1 && high[0].1 == 10.0
        })
        .await;
    assert_eq!(before.len(), 50);
}

/// Replicas of a new group that start together: one commits START_AT
/// positions for its partitions before another looks at the group. The
/// other must still treat the group as new for its own partitions (their
/// old events are not delivered), and keep the first one's positions.
#[tokio::test(flavor = "multi_thread")]
async fn start_at_positions_committed_by_another_replica_keep_the_group_new() {
    use rdkafka::consumer::{CommitMode, Consumer};
    let (topic, group) = (unique("startrace"), unique("g"));
    create_topic(&topic, 6).await;
    let old = produce(&topic, run_id(), 0..120).await;
    let high = high_watermarks(&topic, 6);
    // What a first replica commits for partitions 0-3 at its assignment.
    {
        let committer: rdkafka::consumer::BaseConsumer = rdkafka::ClientConfig::new()
            .set("bootstrap.servers", kafka())
            .set("group.id", &group)
            .create()
            .expect("consumer");
        let mut tpl = rdkafka::TopicPartitionList::new();
        for p in 0..4 {
            tpl.add_partition_offset(&topic, p, rdkafka::Offset::Offset(high[p as usize]))
                .expect("offset");
            tpl.find_partition(&topic, p)
                .expect("added")
                .set_metadata("patterns-connector:start_at");
        }
        retrying("commit START_AT positions", || {
            committer.commit(&tpl, CommitMode::Sync)
        });
    }
    let receiver = Receiver::start().await;
    let _connector = Connector::start(&topic, &group, &receiver.url(), &[("START_AT", "latest")]);
    eventually(WAIT, "every partition committed", || {
        committed(&group, &topic, 6).iter().all(Option::is_some)
    })
    .await;
    let new = produce(&topic, run_id(), 0..60).await;
    let want: HashSet<String> = new.iter().map(|p| p.sample.uuid.clone()).collect();
    eventually(WAIT, "every new event delivered", || {
        receiver.delivered_uuids().is_superset(&want)
    })
    .await;
    let delivered = receiver.delivered_uuids();
    let replayed = old
        .iter()
        .filter(|p| delivered.contains(&p.sample.uuid))
        .count();
    assert_eq!(replayed, 0, "old events delivered although START_AT=latest");
}

/// A clean stop commits what was delivered and exits as soon as the commit
/// is confirmed, not at the end of SHUTDOWN_TIMEOUT_MS. Auto-commit is made
/// too rare to help, so the final commit alone must cover every event.
#[tokio::test(flavor = "multi_thread")]
async fn a_clean_stop_confirms_its_final_commit_and_exits_without_waiting_out_the_deadline() {
    let (topic, group) = (unique("cleanstop"), unique("g"));
    create_topic(&topic, 2).await;
    let receiver = Receiver::start().await;
    let produced = produce(&topic, run_id(), 0..50).await;
    let mut connector = Connector::start(
        &topic,
        &group,
        &receiver.url(),
        &[
            ("SHUTDOWN_TIMEOUT_MS", "10000"),
            ("COMMIT_INTERVAL_MS", "600000"),
        ],
    );
    eventually(WAIT, "every event delivered", || {
        receiver.delivered_uuids().len() >= produced.len()
    })
    .await;
    let stopped = std::time::Instant::now();
    connector.signal("TERM");
    let status = connector.wait(Duration::from_secs(30)).await;
    let took = stopped.elapsed();
    assert!(status.success(), "exited with {status}");
    assert_eq!(
        committed(&group, &topic, 2)
            .iter()
            .map(|c| c.unwrap_or(0))
            .sum::<i64>(),
        50,
        "the final commit covers every delivered event"
    );
    // The old wait lasted until SIGTERM + SHUTDOWN_TIMEOUT_MS + 5 s (15 s).
    assert!(
        took < Duration::from_secs(8),
        "the stop took {took:?}; log:\n{}",
        connector.logs()
    );
}
