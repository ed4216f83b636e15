//! Bad input and webhook faults, against a real Kafka: nothing is lost,
//! nothing is committed early, bad messages land in the dead-letter topic
//! with the right reason, and the partition moves on.

mod common;

use std::collections::{HashMap, HashSet};
use std::time::Duration;

use common::*;
use patterns_connector::event::sample;
use serde_json::{json, Value};

const WAIT: Duration = Duration::from_secs(90);

fn good(run: u32, n: u64) -> (Option<Vec<u8>>, Option<Vec<u8>>, String) {
    let s = sample::captured(run, n, "2024-05-01T12:00:00Z");
    (Some(s.key.into_bytes()), Some(s.value), s.uuid)
}

fn captured(data: Value, outer: Value) -> Vec<u8> {
    let mut message = json!({
        "uuid": "0190f1b2-0000-7000-8000-00000000bad0", "distinct_id": "d1", "ip": null,
        "now": "2024-05-01T12:00:00Z", "sent_at": "", "token": "phc_x",
    });
    message["data"] = match data {
        Value::String(s) => Value::String(s),
        other => Value::String(other.to_string()),
    };
    if let (Some(m), Value::Object(extra)) = (message.as_object_mut(), outer) {
        m.extend(extra);
    }
    serde_json::to_vec(&message).expect("json")
}

/// One kind of message: what it is, key, payload, and the expected
/// dead-letter reason (None when it must be delivered).
type Case = (
    &'static str,
    Option<Vec<u8>>,
    Option<Vec<u8>>,
    Option<&'static str>,
);

fn corpus() -> Vec<Case> {
    let nested = format!("{}1{}", "[".repeat(5000), "]".repeat(5000));
    let huge = "x".repeat(200_000);
    let key = Some(b"phc_x:d1".to_vec());
    let b = |s: &str| Some(s.as_bytes().to_vec());
    vec![
        ("not json", key.clone(), b("not json"), Some("not_json")),
        (
            "invalid utf-8",
            key.clone(),
            Some(vec![0xff, 0xfe, 0xfd, b'{']),
            Some("not_json"),
        ),
        ("empty value", key.clone(), Some(Vec::new()), Some("empty")),
        ("tombstone", key.clone(), None, Some("empty")),
        ("json array", key.clone(), b("[1,2,3]"), Some("not_object")),
        (
            "json string",
            key.clone(),
            b("\"event\""),
            Some("not_object"),
        ),
        ("json number", key.clone(), b("42"), Some("not_object")),
        ("json null", key.clone(), b("null"), Some("not_object")),
        ("empty object", key.clone(), b("{}"), Some("unknown_format")),
        (
            "data is a number",
            key.clone(),
            b(r#"{"uuid":"u","data":5}"#),
            Some("unknown_format"),
        ),
        (
            "data is not json",
            key.clone(),
            b(r#"{"uuid":"u","distinct_id":"d","data":"{oops"}"#),
            Some("bad_data"),
        ),
        (
            "data is an array",
            key.clone(),
            b(r#"{"uuid":"u","distinct_id":"d","data":"[1,2]"}"#),
            Some("bad_data"),
        ),
        (
            "number out of range in data",
            key.clone(),
            Some(captured(
                Value::String(r#"{"event":"e","properties":{"n":1e999}}"#.into()),
                json!({}),
            )),
            Some("bad_data"),
        ),
        (
            "missing uuid",
            key.clone(),
            b(r#"{"distinct_id":"d","data":"{\"event\":\"e\"}"}"#),
            Some("missing_field"),
        ),
        (
            "missing event",
            key.clone(),
            Some(captured(json!({"properties": {}}), json!({}))),
            Some("missing_field"),
        ),
        (
            "missing distinct_id",
            key.clone(),
            b(r#"{"uuid":"u","data":"{\"event\":\"e\"}"}"#),
            Some("missing_field"),
        ),
        (
            "empty event name",
            key.clone(),
            Some(captured(json!({"event": ""}), json!({}))),
            Some("missing_field"),
        ),
        (
            "event is a number",
            key.clone(),
            Some(captured(json!({"event": 5}), json!({}))),
            Some("wrong_type"),
        ),
        (
            "uuid is a number",
            key.clone(),
            Some(captured(json!({"event": "e"}), json!({"uuid": 7}))),
            Some("wrong_type"),
        ),
        (
            "properties is a list",
            key.clone(),
            Some(captured(
                json!({"event": "e", "properties": [1]}),
                json!({}),
            )),
            Some("wrong_type"),
        ),
        (
            "distinct_id is an object",
            key.clone(),
            Some(captured(
                json!({"event": "e"}),
                json!({"distinct_id": {"a": 1}}),
            )),
            Some("wrong_type"),
        ),
        (
            "deeply nested json",
            key.clone(),
            Some(nested.into_bytes()),
            Some("not_json"),
        ),
        (
            "trailing null byte",
            key.clone(),
            Some(b"{\"a\":1}\x00".to_vec()),
            Some("not_json"),
        ),
        (
            "byte order mark",
            key.clone(),
            Some([&[0xEF, 0xBB, 0xBF][..], b"{}"].concat()),
            Some("not_json"),
        ),
        (
            "lone surrogate escape",
            key.clone(),
            b(r#"{"uuid":"\ud800"}"#),
            Some("not_json"),
        ),
        (
            "clickhouse properties not json",
            key.clone(),
            b(
                r#"{"uuid":"u","event":"e","distinct_id":"d","properties":"{oops","timestamp":"2024-01-01 00:00:00"}"#,
            ),
            Some("wrong_type"),
        ),
        (
            "clickhouse without timestamp",
            key.clone(),
            b(r#"{"uuid":"u","event":"e","distinct_id":"d","properties":"{}"}"#),
            Some("missing_field"),
        ),
        (
            "huge string over the byte limit",
            key.clone(),
            Some(captured(
                json!({"event": "big", "properties": {"blob": huge}}),
                json!({}),
            )),
            Some("too_large"),
        ),
        // Accepted on purpose: JSON allows them and PostHog reads them the same way.
        (
            "duplicate keys (last wins)",
            key.clone(),
            Some(captured(json!({"event": "dup"}), json!({}))).map(|v| {
                let mut s = String::from_utf8(v).expect("utf8");
                s.insert_str(1, r#""uuid":"first-uuid","#);
                s.into_bytes()
            }),
            None,
        ),
        (
            "no key",
            None,
            Some(captured(
                json!({"event": "keyless"}),
                json!({"uuid": "0190f1b2-0000-7000-8000-00000000c0de"}),
            )),
            None,
        ),
        (
            "escaped null character in a string",
            key.clone(),
            Some(captured(
                json!({"event": "nul\u{0}inside"}),
                json!({"uuid": "0190f1b2-0000-7000-8000-00000000c0df"}),
            )),
            None,
        ),
        (
            // `now + 23 h` is past chrono's range: it once panicked the worker.
            "capture time at the end of chrono's range",
            key.clone(),
            Some(captured(
                json!({"event": "far future"}),
                json!({"uuid": "0190f1b2-0000-7000-8000-00000000c0e0", "now": "+262142-12-31T23:59:59"}),
            )),
            None,
        ),
    ]
}

/// A one-partition topic named after `prefix`, a group name, and a dead-letter topic.
async fn one_partition_with_dlq(prefix: &str) -> (String, String, String) {
    let (topic, group, dlq) = (unique(prefix), unique("g"), unique("dlq"));
    create_topic(&topic, 1).await;
    create_topic(&dlq, 1).await;
    (topic, group, dlq)
}

#[tokio::test(flavor = "multi_thread")]
async fn a_corpus_of_bad_messages_goes_to_the_dead_letter_topic_and_good_events_arrive_in_order() {
    let (topic, group, dlq) = one_partition_with_dlq("corpus").await;
    let receiver = Receiver::start().await;
    let run = run_id();
    let corpus = corpus();
    let bad_kinds = corpus.iter().filter(|c| c.3.is_some()).count();
    assert!(bad_kinds >= 25, "{bad_kinds} kinds of bad message");

    // Good, bad, good, bad, ... so every bad message sits between good ones.
    let mut records = Vec::new();
    let mut good_uuids = Vec::new();
    for (n, (_, key, payload, _)) in corpus.iter().enumerate() {
        let (k, v, uuid) = good(run, n as u64);
        records.push((k, v));
        good_uuids.push(uuid);
        records.push((key.clone(), payload.clone()));
    }
    let offsets = produce_keyed(&topic, 0, &records).await;
    let connector = Connector::start(
        &topic,
        &group,
        &receiver.url(),
        // It checks the partition's order, which ORDERING=partition keeps.
        &[
            ("ORDERING", "partition"),
            ("DLQ_TOPIC", dlq.as_str()),
            ("BATCH_MAX_BYTES", "65536"),
            ("BATCH_MAX_EVENTS", "7"),
        ],
    );
    let end = *offsets.last().expect("records") + 1;
    eventually(WAIT, "every offset committed", || {
        committed(&group, &topic, 1) == vec![Some(end)]
    })
    .await;

    // Good events: all delivered, in order.
    let delivered: Vec<String> = receiver
        .delivered()
        .iter()
        .filter_map(|e| e["uuid"].as_str().map(str::to_owned))
        .collect();
    let sample_uuids: Vec<&String> = delivered
        .iter()
        .filter(|u| good_uuids.contains(u))
        .collect();
    assert_eq!(
        sample_uuids.len(),
        good_uuids.len(),
        "delivered: {delivered:?}\nlog: {}",
        connector.logs()
    );
    assert!(
        sample_uuids.iter().zip(&good_uuids).all(|(a, b)| *a == b),
        "good events out of order"
    );
    for uuid in [
        "0190f1b2-0000-7000-8000-00000000c0de",
        "0190f1b2-0000-7000-8000-00000000c0df",
        "0190f1b2-0000-7000-8000-00000000c0e0",
    ] {
        assert!(
            delivered.iter().any(|u| u == uuid),
            "{uuid} (valid, unusual) not delivered"
        );
    }

    // Bad messages: each one in the dead-letter topic, original bytes, right reason.
    let expected: Vec<_> = corpus
        .iter()
        .enumerate()
        .filter(|(_, c)| c.3.is_some())
        .collect();
    let letters = read_topic(&dlq, expected.len(), WAIT);
    assert_eq!(letters.len(), expected.len(), "dead letters");
    let by_offset: HashMap<i64, &DeadLetterRecord> = letters
        .iter()
        .map(|l| (l.headers["dlq.source_offset"].parse().expect("offset"), l))
        .collect();
    for (i, (kind, key, payload, reason)) in expected {
        let offset = offsets[2 * i + 1];
        let letter = by_offset
            .get(&offset)
            .unwrap_or_else(|| panic!("{kind}: not dead-lettered"));
        assert_eq!(letter.headers["dlq.reason"], reason.expect("bad"), "{kind}");
        assert_eq!(
            letter.payload.as_deref().unwrap_or_default(),
            payload.as_deref().unwrap_or_default(),
            "{kind}: payload changed"
        );
        assert_eq!(&letter.key, key, "{kind}: key changed");
        assert_eq!(letter.headers["dlq.source_topic"], topic);
        assert_eq!(letter.headers["dlq.source_partition"], "0");
        assert_eq!(
            letter.headers["dlq.connector_version"],
            env!("CARGO_PKG_VERSION")
        );
        assert!(letter.headers.contains_key("dlq.time"));
    }
    let text = connector.metrics().await;
    let dead: f64 = metric_values(&text, "patterns_connector_events_dead_lettered_total")
        .iter()
        .map(|(_, v)| v)
        .sum();
    assert_eq!(dead as usize, letters.len());
    assert_no_secret(&connector);
}

#[tokio::test(flavor = "multi_thread")]
async fn bisection_isolates_exactly_the_events_the_webhook_rejects() {
    let (topic, group, dlq) = one_partition_with_dlq("bisect").await;
    let receiver = Receiver::start().await;
    receiver.reject_marked();
    let bad_at = [3u64, 40, 41, 97];
    let SomeMarked { records, uuids, .. } = SomeMarked::new(run_id(), 100, |n| bad_at.contains(&n));
    let offsets = produce_keyed(&topic, 0, &records).await;
    let connector = Connector::start(
        &topic,
        &group,
        &receiver.url(),
        // It checks the partition's order, which ORDERING=partition keeps.
        &[
            ("ORDERING", "partition"),
            ("DLQ_TOPIC", dlq.as_str()),
            ("BATCH_MAX_EVENTS", "100"),
            ("BATCH_LINGER_MS", "2000"),
        ],
    );
    eventually(WAIT, "every offset committed", || {
        committed(&group, &topic, 1) == vec![Some(100)]
    })
    .await;
    let delivered: Vec<String> = receiver
        .delivered()
        .iter()
        .map(|e| e["uuid"].as_str().expect("uuid").to_owned())
        .collect();
    let expected: Vec<String> = (0..100)
        .filter(|n| !bad_at.contains(n))
        .map(|n| uuids[n as usize].clone())
        .collect();
    assert_eq!(
        delivered, expected,
        "accepted events delivered once each, in order"
    );
    let letters = read_topic(&dlq, 4, WAIT);
    let mut dead: Vec<i64> = letters
        .iter()
        .map(|l| l.headers["dlq.source_offset"].parse().expect("offset"))
        .collect();
    dead.sort_unstable();
    assert_eq!(
        dead,
        bad_at
            .iter()
            .map(|n| offsets[*n as usize])
            .collect::<Vec<_>>()
    );
    for l in &letters {
        assert_eq!(l.headers["dlq.reason"], "webhook_400");
        assert_eq!(l.headers["dlq.http_status"], "400");
        // Batches do not keep originals: these were read back from Kafka.
        let offset: i64 = l.headers["dlq.source_offset"].parse().expect("offset");
        let n = offsets
            .iter()
            .position(|o| *o == offset)
            .expect("a produced offset");
        assert_eq!(
            (&l.key, &l.payload),
            (&records[n].0, &records[n].1),
            "the original key and bytes of offset {offset}"
        );
        assert!(
            !l.headers.contains_key("dlq.error"),
            "the original was found"
        );
        assert_eq!(l.headers["dlq.payload"], "original");
    }
    let text = connector.metrics().await;
    let extra = metric_values(&text, "patterns_connector_bisection_requests_total")[0].1;
    assert!(
        extra > 0.0 && extra <= 2.0 * 4.0 * 7.0,
        "{extra} extra requests for 4 rejected events of 100"
    );
    println!(
        "bisection: 4 rejected of 100, {extra} extra requests, {} requests in all",
        receiver.requests().len()
    );
    assert_no_secret(&connector);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_413_splits_batches_until_they_fit_and_everything_is_delivered() {
    let (topic, group, dlq) = one_partition_with_dlq("split413").await;
    let receiver = Receiver::start().await;
    receiver.max_body(20_000);
    let produced = produce(&topic, run_id(), 0..200).await;
    let connector = Connector::start(
        &topic,
        &group,
        &receiver.url(),
        &[("DLQ_TOPIC", dlq.as_str()), ("BATCH_MAX_BYTES", "200000")],
    );
    eventually(WAIT, "every offset committed", || {
        committed(&group, &topic, 1) == vec![Some(200)]
    })
    .await;
    let delivered = receiver.delivered_uuids();
    assert!(
        produced.iter().all(|p| delivered.contains(&p.sample.uuid)),
        "an event was lost"
    );
    let requests = receiver.requests();
    assert!(
        requests.iter().any(|r| r.status == 413),
        "the webhook never said 413"
    );
    assert!(requests
        .iter()
        .filter(|r| r.status == 200)
        .all(|r| r.bytes <= 20_000));
    assert!(
        read_topic(&dlq, 1, Duration::from_secs(3)).is_empty(),
        "nothing should be dead-lettered"
    );
    assert_no_secret(&connector);
}

#[tokio::test(flavor = "multi_thread")]
async fn dropped_connections_timeouts_and_redirects_lose_nothing_and_commit_nothing_early() {
    let (topic, group) = (unique("faults"), unique("g"));
    create_topic(&topic, 1).await;
    let receiver = Receiver::start().await;
    receiver.drop_connections(2);
    receiver.script(vec![
        Reply::ok().delayed(Duration::from_millis(1500)),
        Reply::status(307).retry_after("0"),
        Reply::status(301),
        Reply::status(302),
    ]);
    let produced = produce(&topic, run_id(), 0..50).await;
    let connector = Connector::start(
        &topic,
        &group,
        &receiver.url(),
        &[("WEBHOOK_TIMEOUT_MS", "500"), ("BATCH_MAX_EVENTS", "50")],
    );
    // Nothing may be committed while the faults last.
    eventually(WAIT, "the scripted faults played", || {
        receiver.started() >= 6
    })
    .await;
    let accepted_before = receiver
        .requests()
        .iter()
        .filter(|r| r.status == 200)
        .count();
    if accepted_before == 0 {
        assert_eq!(committed(&group, &topic, 1), vec![None]);
    }
    eventually(WAIT, "every offset committed", || {
        committed(&group, &topic, 1) == vec![Some(50)]
    })
    .await;
    let delivered = receiver.delivered_uuids();
    assert!(
        produced.iter().all(|p| delivered.contains(&p.sample.uuid)),
        "an event was lost"
    );
    let statuses: HashSet<u16> = receiver.requests().iter().map(|r| r.status).collect();
    assert!(statuses.contains(&307) && statuses.contains(&301) && statuses.contains(&302));
    let logs = connector.logs();
    assert!(
        logs.contains("wrong URL or credentials"),
        "redirects are flagged in the log"
    );
    assert_no_secret(&connector);
}

#[tokio::test(flavor = "multi_thread")]
async fn dlq_policy_block_stops_the_partition_at_the_bad_message() {
    let (topic, group) = (unique("block"), unique("g"));
    create_topic(&topic, 1).await;
    let receiver = Receiver::start().await;
    let run = run_id();
    let records = vec![
        {
            let (k, v, _) = good(run, 0);
            (k, v)
        },
        (None, Some(b"not json".to_vec())),
        {
            let (k, v, _) = good(run, 1);
            (k, v)
        },
    ];
    produce_keyed(&topic, 0, &records).await;
    let connector = Connector::start(&topic, &group, &receiver.url(), &[("DLQ_POLICY", "block")]);
    eventually(WAIT, "the first good event committed", || {
        committed(&group, &topic, 1) == vec![Some(1)]
    })
    .await;
    // More events arrive behind the bad message: none is taken or sent.
    produce_keyed(
        &topic,
        0,
        &[{
            let (k, v, _) = good(run, 2);
            (k, v)
        }],
    )
    .await;
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(
        committed(&group, &topic, 1),
        vec![Some(1)],
        "the partition must stop at the bad message"
    );
    let sent: Vec<String> = receiver.delivered_uuids().into_iter().collect();
    assert_eq!(
        sent,
        vec![good(run, 0).2],
        "nothing after the blocking message may be sent"
    );
    let text = connector
        .metrics_until(WAIT, "the partition reported blocked", |t| {
            metric_values(t, "patterns_connector_partition_blocked")
                .iter()
                .any(|(_, v)| *v == 1.0)
        })
        .await;
    let paused = metric_values(&text, "patterns_connector_partition_paused");
    assert!(
        paused.iter().all(|(_, v)| *v == 1.0),
        "a blocked partition stops fetching: {paused:?}"
    );
    let (status, body) = connector.get_blocking("/healthz").expect("healthz answers");
    assert_eq!(status, 200, "blocked is reported, not unhealthy: {body}");
    assert!(body.contains("blocked by DLQ_POLICY=block"), "{body}");
    assert!(body.contains(&format!("{topic}/0")), "{body}");
    assert!(connector.logs().contains("DLQ_POLICY=block"));
}

#[tokio::test(flavor = "multi_thread")]
async fn replay_dlq_resends_dead_letters_once_the_cause_is_fixed() {
    let (topic, group, dlq) = one_partition_with_dlq("replay").await;
    let receiver = Receiver::start().await;
    receiver.reject_marked();
    let SomeMarked {
        mut records,
        marked: marked_uuids,
        ..
    } = SomeMarked::new(run_id(), 20, |n| n % 7 == 3);
    records.push((None, Some(b"not json".to_vec())));
    produce_keyed(&topic, 0, &records).await;
    let mut connector = Connector::start(
        &topic,
        &group,
        &receiver.url(),
        &[("DLQ_TOPIC", dlq.as_str())],
    );
    eventually(WAIT, "every offset committed", || {
        committed(&group, &topic, 1) == vec![Some(21)]
    })
    .await;
    connector.signal("TERM");
    assert!(connector.wait(Duration::from_secs(30)).await.success());
    assert!(receiver.delivered_uuids().is_disjoint(&marked_uuids));

    // The webhook is fixed; replay.
    receiver.accept_marked();
    let (stdout, stderr) = replay_dlq_ok(&group, &receiver.url(), &dlq);
    assert!(stdout.contains("replayed 4 dead letters: 3 delivered, 0 filtered out, 1 still undecodable, 0 still rejected"), "{stdout}");
    assert!(marked_uuids.is_subset(&receiver.delivered_uuids()));
    assert!(!stderr.contains("SECRET-TOKEN"));

    // A second replay with the same group has nothing left to send.
    let out = replay_dlq(&group, &receiver.url(), &dlq);
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("replayed 0 dead letters"),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn originals_are_read_back_by_offset_and_deleted_ones_are_reported_gone() {
    use patterns_connector::config::{Cli, Config};
    use patterns_connector::kafka::originals::{Found, Originals};
    use rdkafka::admin::AdminOptions;
    use rdkafka::{Offset, TopicPartitionList};

    let topic = unique("originals");
    create_topic(&topic, 1).await;
    let run = run_id();
    let records: Vec<RawRecord> = (0..20)
        .map(|n| {
            let (key, value, _) = good(run, n);
            (if n == 3 { None } else { key }, value)
        })
        .collect();
    let offsets = produce_keyed(&topic, 0, &records).await;
    // Retention in miniature: everything before offset 5 is deleted.
    let mut before = TopicPartitionList::new();
    before
        .add_partition_offset(&topic, 0, Offset::Offset(offsets[5]))
        .expect("tpl");
    admin()
        .delete_records(&before, &AdminOptions::new())
        .await
        .expect("delete records");

    let cli = <Cli as clap::Parser>::try_parse_from([
        "patterns-connector",
        "--kafka-hosts",
        &kafka(),
        "--kafka-topic",
        &topic,
        "--patterns-webhook-url",
        "http://127.0.0.1:9/",
    ])
    .expect("options");
    let originals = Originals::new(&Config::from_cli(cli).expect("config"));
    let cancel = tokio_util::sync::CancellationToken::new();
    let wanted = [offsets[17], offsets[2], offsets[6], offsets[19], offsets[6]];
    let tp = patterns_connector::topic_partition::TopicPartition::new(topic.as_str(), 0);
    let found = originals.read(&tp, &wanted, &cancel).await.expect("read");
    assert_eq!(found.len(), 4, "one answer per distinct offset: {found:?}");
    assert_eq!(
        found[&offsets[2]],
        Found::Gone,
        "deleted before it was read"
    );
    for n in [6usize, 17, 19] {
        let Found::Message(original) = &found[&offsets[n]] else {
            panic!("offset {} should be found", offsets[n]);
        };
        assert_eq!(original.key.as_deref(), records[n].0.as_deref());
        assert_eq!(original.payload.as_deref(), records[n].1.as_deref());
    }
    // The reader can go back to an earlier offset (of any partition) next time.
    let again = originals
        .read(&tp, &[offsets[5]], &cancel)
        .await
        .expect("read");
    let Found::Message(original) = &again[&offsets[5]] else {
        panic!("offset 5 is the new start of the partition");
    };
    assert_eq!(original.payload.as_deref(), records[5].1.as_deref());
}

#[tokio::test(flavor = "multi_thread")]
async fn a_rejected_event_deleted_by_retention_meanwhile_is_dead_lettered_as_sent_and_replays() {
    use rdkafka::admin::AdminOptions;
    use rdkafka::{Offset, TopicPartitionList};

    let (topic, group, dlq) = one_partition_with_dlq("gone").await;
    let receiver = Receiver::start().await;
    // The webhook is down while retention catches up with the batch.
    receiver.set_default(Reply::status(503));
    let events = SomeMarked::new(run_id(), 10, |n| n == 2 || n == 7);
    let (marked_uuids, other_uuids) = (&events.marked, events.accepted());
    let offsets = produce_keyed(&topic, 0, &events.records).await;
    let end = offsets[9] + 1;
    let mut connector = Connector::start(
        &topic,
        &group,
        &receiver.url(),
        &[("DLQ_TOPIC", dlq.as_str()), ("BATCH_MAX_EVENTS", "100")],
    );
    eventually(WAIT, "the batch is being retried", || {
        receiver.requests().len() >= 3
    })
    .await;
    // Retention deletes the whole batch from Kafka while it is retried.
    let mut all = TopicPartitionList::new();
    all.add_partition_offset(&topic, 0, Offset::Offset(end))
        .expect("tpl");
    admin()
        .delete_records(&all, &AdminOptions::new())
        .await
        .expect("delete records");
    // Back up, but refusing the two marked events.
    receiver.reject_marked();
    receiver.set_default(Reply::ok());
    eventually(WAIT, "every offset committed", || {
        committed(&group, &topic, 1) == vec![Some(end)]
    })
    .await;
    assert_eq!(receiver.delivered_uuids(), other_uuids);

    let letters = read_topic(&dlq, 2, WAIT);
    assert_eq!(letters.len(), 2);
    for l in &letters {
        assert_eq!(l.headers["dlq.reason"], "webhook_400");
        assert_eq!(l.headers["dlq.payload"], "sent_event");
        assert!(
            l.headers["dlq.error"].contains("no longer in Kafka"),
            "{:?}",
            l.headers
        );
        assert_eq!(l.key, None);
        let event: Value =
            serde_json::from_slice(l.payload.as_deref().expect("payload")).expect("event JSON");
        assert!(marked_uuids.contains(event["uuid"].as_str().expect("uuid")));
        assert!(event["properties"].get("reject_me").is_some());
    }
    connector.signal("TERM");
    assert!(connector.wait(Duration::from_secs(30)).await.success());

    // The webhook is fixed: replay sends the events as they were sent.
    receiver.accept_marked();
    let (stdout, _) = replay_dlq_ok(&group, &receiver.url(), &dlq);
    assert!(
        stdout.contains("replayed 2 dead letters: 2 delivered, 0 filtered out, 0 still undecodable, 0 still rejected"),
        "{stdout}"
    );
    assert!(marked_uuids.is_subset(&receiver.delivered_uuids()));
}
