//! Kafka with SASL (SCRAM-SHA-512, SCRAM-SHA-256, PLAIN), in plain text and
//! over TLS: a real broker that requires authentication (scripts/test starts
//! it with `KAFKA_LOCAL_SASL=scram scripts/kafka-local`).

mod common;

use std::time::Duration;

use common::*;
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::ClientConfig;

fn sasl_broker() -> (String, String) {
    let hosts = std::env::var("KAFKA_SASL_HOSTS").expect(
        "KAFKA_SASL_HOSTS names no SASL/SCRAM broker: run the suite with scripts/test, which starts one",
    );
    let password =
        std::env::var("KAFKA_SASL_TEST_PASSWORD").unwrap_or_else(|_| "connector-secret".into());
    (hosts, password)
}

fn client(hosts: &str, password: &str) -> ClientConfig {
    let mut c = ClientConfig::new();
    c.set("bootstrap.servers", hosts)
        .set("security.protocol", "SASL_PLAINTEXT")
        .set("sasl.mechanism", "SCRAM-SHA-512")
        .set("sasl.username", "connector")
        .set("sasl.password", password);
    c
}

async fn create_topics(hosts: &str, password: &str, topics: &[&str]) {
    let admin: AdminClient<DefaultClientContext> = client(hosts, password).create().expect("admin");
    for t in topics {
        admin
            .create_topics(
                &[NewTopic::new(t, 2, TopicReplication::Fixed(1))],
                &AdminOptions::new().operation_timeout(Some(Duration::from_secs(30))),
            )
            .await
            .expect("create")
            .into_iter()
            .for_each(|r| {
                r.expect("topic created");
            });
    }
}

const PROPERTIES: &str =
    "security.protocol=SASL_PLAINTEXT,sasl.mechanism=SCRAM-SHA-512,sasl.username=connector";

#[tokio::test(flavor = "multi_thread")]
async fn scram_credentials_from_a_file_consume_and_wrong_ones_stop_with_a_clear_error() {
    let (hosts, password) = sasl_broker();
    let (topic, group, dlq) = (unique("sasl"), unique("g"), unique("dlq"));
    create_topics(&hosts, &password, &[&topic, &dlq]).await;
    let producer: FutureProducer = client(&hosts, &password).create().expect("producer");
    let run = run_id();
    let mut uuids = Vec::new();
    for n in 0..30 {
        let s = patterns_connector::sample::captured(run, n, "2024-05-01T12:00:00Z");
        // One event the webhook refuses: the originals reader must
        // authenticate to read it back for the dead-letter topic.
        let value = if n == 11 { marked(&s) } else { s.value.clone() };
        producer
            .send(
                FutureRecord::to(&topic).key(&s.key).payload(&value),
                Duration::from_secs(30),
            )
            .await
            .map_err(|(e, _)| e)
            .expect("produced over SASL");
        if n != 11 {
            uuids.push(s.uuid);
        }
    }
    // A bad message too, so the dead-letter producer must authenticate as well.
    producer
        .send(
            FutureRecord::<(), [u8]>::to(&topic).payload(&b"not json"[..]),
            Duration::from_secs(30),
        )
        .await
        .map_err(|(e, _)| e)
        .expect("produced");

    let dir = std::path::PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join(unique("sasl"));
    std::fs::create_dir_all(&dir).expect("dir");
    let password_file = dir.join("password");
    std::fs::write(&password_file, format!("{password}\n")).expect("write");

    let receiver = Receiver::start().await;
    receiver.reject_marked();
    let mut right = Connector::start(
        &topic,
        &group,
        &receiver.url(),
        &[
            ("KAFKA_HOSTS", hosts.as_str()),
            ("KAFKA_PROPERTIES", PROPERTIES),
            (
                "KAFKA_SASL_PASSWORD_FILE",
                password_file.to_str().expect("utf8"),
            ),
            ("DLQ_TOPIC", dlq.as_str()),
            ("LOG_FORMAT", "json"),
        ],
    );
    eventually(
        Duration::from_secs(90),
        "all events delivered over SASL",
        || receiver.delivered_uuids().len() == 29,
    )
    .await;
    assert_eq!(
        receiver.delivered_uuids(),
        uuids
            .iter()
            .cloned()
            .collect::<std::collections::HashSet<_>>()
    );
    eventually(
        Duration::from_secs(60),
        "the bad message and the refused event dead-lettered",
        || {
            let text = right.metrics_blocking();
            text.contains("patterns_connector_events_dead_lettered_total{reason=\"not_json\"} 1")
                && text.contains(
                    "patterns_connector_events_dead_lettered_total{reason=\"webhook_400\"} 1",
                )
        },
    )
    .await;
    let logs = right.logs();
    assert!(
        logs.contains("written to the dead-letter topic")
            && logs.contains(r#""payload":"original""#)
            && !logs.contains(r#""payload":"sent_event""#),
        "the refused event's original was read back over SASL:\n{logs}"
    );
    right.signal("TERM");
    assert!(right.wait(Duration::from_secs(30)).await.success());
    assert!(
        !right.logs().contains(&password),
        "the SASL password appears in the log"
    );

    let mut wrong = Connector::start(
        &topic,
        &unique("g"),
        &receiver.url(),
        &[
            ("KAFKA_HOSTS", hosts.as_str()),
            ("KAFKA_PROPERTIES", PROPERTIES),
            ("KAFKA_SASL_PASSWORD", "not-the-PASSWORD-42"),
        ],
    );
    let status = wrong.wait(Duration::from_secs(60)).await;
    let logs = wrong.logs();
    assert!(
        !status.success(),
        "wrong credentials must stop the connector"
    );
    assert!(logs.contains("Kafka authentication failed"), "{logs}");
    assert!(
        !logs.contains("not-the-PASSWORD-42"),
        "the wrong password appears in the log"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn plain_and_scram_sha_256_work_too_for_the_consumer_and_the_dead_letter_producer() {
    let (hosts, password) = sasl_broker();
    let (topic, dlq) = (unique("mechanisms"), unique("dlq"));
    create_topics(&hosts, &password, &[&topic, &dlq]).await;
    let producer: FutureProducer = client(&hosts, &password).create().expect("producer");
    let run = run_id();
    for n in 0..10 {
        let s = patterns_connector::sample::captured(run, n, "2024-05-01T12:00:00Z");
        producer
            .send(
                FutureRecord::to(&topic).key(&s.key).payload(&s.value),
                Duration::from_secs(30),
            )
            .await
            .map_err(|(e, _)| e)
            .expect("produced over SASL");
    }
    producer
        .send(
            FutureRecord::<(), [u8]>::to(&topic).payload(&b"not json"[..]),
            Duration::from_secs(30),
        )
        .await
        .map_err(|(e, _)| e)
        .expect("produced");

    for mechanism in ["PLAIN", "SCRAM-SHA-256"] {
        let receiver = Receiver::start().await;
        let properties = format!(
            "security.protocol=SASL_PLAINTEXT,sasl.mechanism={mechanism},sasl.username=connector"
        );
        let mut connector = Connector::start(
            &topic,
            &unique("g"),
            &receiver.url(),
            &[
                ("KAFKA_HOSTS", hosts.as_str()),
                ("KAFKA_PROPERTIES", properties.as_str()),
                ("KAFKA_SASL_PASSWORD", password.as_str()),
                ("DLQ_TOPIC", dlq.as_str()),
            ],
        );
        eventually(
            Duration::from_secs(90),
            &format!("all events delivered over SASL {mechanism}, the bad one dead-lettered"),
            || {
                receiver.delivered_uuids().len() == 10
                    && connector.metrics_blocking().contains(
                        "patterns_connector_events_dead_lettered_total{reason=\"not_json\"} 1",
                    )
            },
        )
        .await;
        connector.signal("TERM");
        assert!(connector.wait(Duration::from_secs(30)).await.success());
        assert!(
            !connector.logs().contains(&password),
            "the SASL password appears in the log ({mechanism})"
        );
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn sasl_over_tls_works_with_the_brokers_ca_and_refuses_an_untrusted_broker() {
    let (hosts, password) = sasl_broker();
    let (tls_hosts, ca) = match (
        std::env::var("KAFKA_SASL_TLS_HOSTS"),
        std::env::var("KAFKA_SASL_TLS_CA"),
    ) {
        (Ok(h), Ok(c)) => (h, c),
        _ => panic!(
            "KAFKA_SASL_TLS_HOSTS and KAFKA_SASL_TLS_CA name no SASL_SSL listener: run the suite with scripts/test"
        ),
    };
    let (topic, dlq) = (unique("tls"), unique("dlq"));
    create_topics(&hosts, &password, &[&topic, &dlq]).await;
    let producer: FutureProducer = client(&hosts, &password).create().expect("producer");
    let run = run_id();
    let mut uuids = std::collections::HashSet::new();
    for n in 0..12 {
        let s = patterns_connector::sample::captured(run, n, "2024-05-01T12:00:00Z");
        // One event the webhook refuses: its original is read back over TLS.
        let value = if n == 5 { marked(&s) } else { s.value.clone() };
        if n != 5 {
            uuids.insert(s.uuid.clone());
        }
        producer
            .send(
                FutureRecord::to(&topic).key(&s.key).payload(&value),
                Duration::from_secs(30),
            )
            .await
            .map_err(|(e, _)| e)
            .expect("produced");
    }

    // Without the broker's CA, the certificate cannot be verified: nothing
    // is consumed, and the log says why.
    let receiver = Receiver::start().await;
    let untrusted =
        "security.protocol=SASL_SSL,sasl.mechanism=SCRAM-SHA-512,sasl.username=connector";
    let mut connector = Connector::start(
        &topic,
        &unique("g"),
        &receiver.url(),
        &[
            ("KAFKA_HOSTS", tls_hosts.as_str()),
            ("KAFKA_PROPERTIES", untrusted),
            ("KAFKA_SASL_PASSWORD", password.as_str()),
        ],
    );
    eventually(
        Duration::from_secs(60),
        "a certificate error in the log",
        || connector.logs().contains("certificate verify failed"),
    )
    .await;
    assert!(
        receiver.requests().is_empty(),
        "delivered from an untrusted broker"
    );
    connector.signal("KILL");
    let _ = connector.wait(Duration::from_secs(10)).await;

    let trusted = format!("{untrusted},ssl.ca.location={ca}");
    receiver.reject_marked();
    let mut connector = Connector::start(
        &topic,
        &unique("g"),
        &receiver.url(),
        &[
            ("KAFKA_HOSTS", tls_hosts.as_str()),
            ("KAFKA_PROPERTIES", trusted.as_str()),
            ("KAFKA_SASL_PASSWORD", password.as_str()),
            ("DLQ_TOPIC", dlq.as_str()),
        ],
    );
    eventually(
        Duration::from_secs(90),
        "all events delivered over TLS, the refused one dead-lettered",
        || {
            receiver.delivered_uuids() == uuids
                && connector.metrics_blocking().contains(
                    "patterns_connector_events_dead_lettered_total{reason=\"webhook_400\"} 1",
                )
        },
    )
    .await;
    connector.signal("TERM");
    assert!(connector.wait(Duration::from_secs(30)).await.success());
    assert!(!connector.logs().contains(&password));
}
