//! A broker of a real 3-broker cluster restarts while PostHog produces and the
//! connector delivers: nothing is lost, and delivery resumes without
//! restarting the connector. scripts/test starts the cluster with
//! `scripts/kafka-local cluster start` and names it in KAFKA_CLUSTER_HOSTS.

mod common;

use std::collections::{HashMap, HashSet};
use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::*;
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::ClientConfig;

const WAIT: Duration = Duration::from_secs(120);

fn cluster() -> String {
    std::env::var("KAFKA_CLUSTER_HOSTS").expect(
        "KAFKA_CLUSTER_HOSTS names no 3-broker cluster: run the suite with scripts/test, which starts one",
    )
}

fn kafka_local(args: &[&str]) {
    let status = Command::new(concat!(env!("CARGO_MANIFEST_DIR"), "/scripts/kafka-local"))
        .args(args)
        .status()
        .expect("scripts/kafka-local");
    assert!(status.success(), "kafka-local {args:?}");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_broker_restart_mid_stream_loses_nothing_and_delivery_resumes_by_itself() {
    let hosts = cluster();
    let (topic, group, dlq) = (unique("restart"), unique("g"), unique("dlq"));
    let admin: AdminClient<DefaultClientContext> = ClientConfig::new()
        .set("bootstrap.servers", &hosts)
        .create()
        .expect("admin");
    for (t, partitions) in [(&topic, 6), (&dlq, 1)] {
        for r in admin
            .create_topics(
                &[NewTopic::new(t, partitions, TopicReplication::Fixed(3))],
                &AdminOptions::new().operation_timeout(Some(Duration::from_secs(30))),
            )
            .await
            .expect("create")
        {
            r.expect("topic created");
        }
    }
    let producer: FutureProducer = ClientConfig::new()
        .set("bootstrap.servers", &hosts)
        .set("enable.idempotence", "true")
        .set("acks", "all")
        .create()
        .expect("producer");
    let stop = Arc::new(AtomicBool::new(false));
    let produced: Arc<Mutex<Vec<(String, i32, i64)>>> = Arc::default();
    let task = {
        let (stop, produced, topic) = (stop.clone(), produced.clone(), topic.clone());
        tokio::spawn(async move {
            let run = run_id();
            let started = tokio::time::Instant::now();
            let mut n = 0u64;
            while !stop.load(Ordering::Relaxed) {
                let s = patterns_connector::event::sample::captured(run, n, "2024-05-01T12:00:00Z");
                let d = producer
                    .send(
                        FutureRecord::to(&topic).key(&s.key).payload(&s.value),
                        Duration::from_secs(60),
                    )
                    .await
                    .map_err(|(e, _)| e)
                    .expect("produced despite the restart");
                produced
                    .lock()
                    .expect("lock")
                    .push((s.uuid, d.partition, d.offset));
                n += 1;
                tokio::time::sleep_until(started + Duration::from_millis(10 * n)).await;
            }
        })
    };

    let receiver = Receiver::start().await;
    let connector = Connector::start(
        &topic,
        &group,
        &receiver.url(),
        // It checks each partition's order, which ORDERING=partition keeps.
        &[
            ("KAFKA_HOSTS", hosts.as_str()),
            ("DLQ_TOPIC", dlq.as_str()),
            ("BATCH_LINGER_MS", "100"),
            ("ORDERING", "partition"),
        ],
    );
    eventually(WAIT, "deliveries before the restart", || {
        receiver.delivered_uuids().len() >= 200
    })
    .await;

    kafka_local(&["cluster", "stop-broker", "2"]);
    let during = receiver.delivered_uuids().len();
    eventually(WAIT, "deliveries while broker 2 is down", || {
        receiver.delivered_uuids().len() >= during + 200
    })
    .await;
    kafka_local(&["cluster", "start-broker", "2"]);
    let after = receiver.delivered_uuids().len();
    eventually(WAIT, "deliveries after broker 2 is back", || {
        receiver.delivered_uuids().len() >= after + 200
    })
    .await;

    stop.store(true, Ordering::Relaxed);
    task.await.expect("producer");
    let produced = produced.lock().expect("lock").clone();
    eventually(WAIT, "every produced event delivered", || {
        let got = receiver.delivered_uuids();
        produced.iter().all(|(uuid, _, _)| got.contains(uuid))
    })
    .await;
    let position: HashMap<&str, (i32, i64)> = produced
        .iter()
        .map(|(u, p, o)| (u.as_str(), (*p, *o)))
        .collect();
    let mut first = HashSet::new();
    let mut last: HashMap<i32, i64> = HashMap::new();
    let mut deliveries = 0;
    for event in receiver.delivered() {
        deliveries += 1;
        let uuid = event["uuid"].as_str().expect("uuid").to_owned();
        let (partition, offset) = position[uuid.as_str()];
        if first.insert(uuid) {
            let previous = last.entry(partition).or_insert(-1);
            assert!(offset > *previous, "partition {partition}: order broken");
            *previous = offset;
        }
    }
    println!(
        "broker restart: {} produced, {deliveries} deliveries, {} duplicates",
        produced.len(),
        deliveries - produced.len()
    );
    assert!(connector.logs().contains("starting patterns-connector"));
    assert_eq!(
        connector
            .logs()
            .matches("starting patterns-connector")
            .count(),
        1,
        "the connector restarted"
    );
}
