//! What leaves PostHog (REMOVE_PROPERTIES, HASH_PROPERTIES, EVENT_FILTERS),
//! against the real broker and receiver: excluded values carry markers that
//! must never reach the receiver; kept events arrive in key order; dropped
//! ones are committed; the counters add up.

mod common;

use std::collections::{HashMap, HashSet};
use std::time::Duration;

use common::*;
use patterns_connector::config::InputFormat;
use patterns_connector::event::decode::decode;
use patterns_connector::event::sample;
use patterns_connector::transform::Rules;
use secrecy::SecretString;
use serde_json::Value;
use sha2::{Digest, Sha256};

const WAIT: Duration = Duration::from_secs(90);
const SALT: &str = "pepper-SALT-123";
const REMOVE: &str = "$ip,email,secret_note,$set.email,$browser";
const HASH: &str = "user_ref,distinct_id";
/// One group of three conditions: only paid plans leave.
const FILTERS: &str = r#"[[
  {"property": "plan", "type": "string", "operator": "is", "value": "paid"},
  {"property": "n", "type": "number", "operator": "gte", "value": 0},
  {"property": "user_ref", "type": "string", "operator": "contains", "value": "MARKREF"}
]]"#;

/// A captured message whose excluded values all carry `MARK`.
fn marked_sample(run: u32, n: u64) -> sample::Sample {
    let mut s = sample::captured(run, n, &now_timestamp());
    let mut message: Value = serde_json::from_slice(&s.value).expect("test input");
    let mut data: Value =
        serde_json::from_str(message["data"].as_str().expect("test input")).expect("test input");
    let p = data["properties"].as_object_mut().expect("test input");
    p.insert("email".into(), format!("MARKEMAIL{n}x").into());
    p.insert("secret_note".into(), format!("MARKSECRET{n}x").into());
    p.insert("$browser".into(), format!("MARKBROWSER{n}x").into());
    p.insert("user_ref".into(), format!("MARKREF{n}x").into());
    p.insert("n".into(), n.into());
    p.insert(
        "plan".into(),
        if n % 3 == 0 { "free" } else { "paid" }.into(),
    );
    data["$set"] = serde_json::json!({"email": format!("MARKSETEMAIL{n}x"), "name": "kept"});
    message["data"] = Value::String(data.to_string());
    message["ip"] = format!("MARKIP{n}x").into();
    s.value = serde_json::to_vec(&message).expect("test input");
    s
}

fn sha256_hex(text: &str) -> String {
    hex::encode(Sha256::digest(text.as_bytes()))
}

#[tokio::test(flavor = "multi_thread")]
async fn excluded_values_never_reach_the_receiver_and_dropped_events_are_committed() {
    let (topic, group) = (unique("transform"), unique("g"));
    create_topic(&topic, 2).await;
    let run = run_id();
    let n = 240u64;
    let producer = producer();
    let mut samples = Vec::new();
    for i in 0..n {
        // One at a time: each key's Kafka order is the order of n.
        let s = marked_sample(run, i);
        samples.push(send_sample(&producer, &topic, s).await);
    }
    let receiver = Receiver::start().await;
    let connector = Connector::start(
        &topic,
        &group,
        &receiver.url(),
        &[
            ("REMOVE_PROPERTIES", REMOVE),
            ("HASH_PROPERTIES", HASH),
            ("HASH_SALT", SALT),
            ("EVENT_FILTERS", FILTERS),
            ("BATCH_MAX_EVENTS", "25"),
        ],
    );
    let kept: HashSet<String> = samples
        .iter()
        .filter(|p| p.offset >= 0)
        .map(|p| &p.sample)
        .enumerate()
        .filter(|(i, _)| i % 3 != 0)
        .map(|(_, s)| s.uuid.clone())
        .collect();
    eventually(WAIT, "every kept event delivered", || {
        receiver.delivered_uuids() == kept
    })
    .await;
    // Dropped events are done: every offset is committed.
    let highs = high_watermarks(&topic, 2);
    eventually(
        WAIT,
        "every offset committed, dropped ones included",
        || {
            committed(&group, &topic, 2)
                .iter()
                .zip(&highs)
                .all(|(c, h)| *c == Some(*h))
        },
    )
    .await;

    // No marker in any body the receiver got.
    for request in receiver.requests() {
        let body = String::from_utf8_lossy(&request.body);
        assert!(!body.contains("MARK"), "a marked value left: {body}");
        assert!(!body.contains(SALT));
    }
    // The hashes are the apps' (sha256 hex of value then salt); the kept
    // values are there; `ip` is null.
    let events = receiver.delivered();
    for e in &events {
        let n = e["properties"]["n"].as_u64().expect("n kept");
        assert_eq!(
            e["properties"]["user_ref"],
            sha256_hex(&format!("MARKREF{n}x{SALT}"))
        );
        assert_eq!(
            e["distinct_id"],
            sha256_hex(&format!("user-{}{SALT}", n % 97))
        );
        assert_eq!(e["properties"]["plan"], "paid");
        assert_eq!(e["properties"]["$set"]["name"], "kept");
        assert!(e["ip"].is_null(), "{e}");
    }
    // Each key's events in Kafka order (the key is token:distinct_id).
    let mut last: HashMap<(String, String), u64> = HashMap::new();
    for e in &events {
        let key = (
            e["properties"]["token"].as_str().unwrap_or("").to_owned(),
            e["distinct_id"].as_str().unwrap_or("").to_owned(),
        );
        let n = e["properties"]["n"].as_u64().expect("test input");
        if let Some(previous) = last.insert(key, n) {
            assert!(previous < n, "key order broken: {previous} then {n}");
        }
    }

    // The counters: what the same rules do to the same events.
    let rules = Rules::parse(
        REMOVE,
        "",
        HASH,
        Some(SecretString::from(SALT)),
        Some(FILTERS),
    )
    .expect("test input");
    let (mut removed, mut hashed, mut dropped) = (0u64, 0u64, 0u64);
    let mut out = Vec::new();
    for p in &samples {
        let event = decode(Some(&p.sample.value), InputFormat::Auto, chrono::Utc::now())
            .expect("test input");
        let applied = rules.apply(&event.json, &mut out);
        if applied.dropped.is_some() {
            dropped += 1;
        } else {
            removed += u64::from(applied.removed);
            hashed += u64::from(applied.hashed);
        }
    }
    assert_eq!(dropped, n - kept.len() as u64);
    let text = connector
        .metrics_until(WAIT, "the counters", |t| {
            metric_values(t, "patterns_connector_events_filtered_total")
                .iter()
                .any(|(l, v)| l.contains("filter_groups") && *v == dropped as f64)
        })
        .await;
    let total = |name: &str| {
        metric_values(&text, name)
            .first()
            .map(|(_, v)| *v)
            .unwrap_or(-1.0)
    };
    assert_eq!(
        total("patterns_connector_properties_removed_total"),
        removed as f64
    );
    assert_eq!(
        total("patterns_connector_properties_hashed_total"),
        hashed as f64
    );
    assert!(removed >= 5 * kept.len() as u64, "{removed}");
    assert!(!connector.logs().contains(SALT), "the salt was logged");
    assert!(
        connector.logs().contains("event rule"),
        "no start-up rule lines"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn rules_that_cannot_be_used_stop_the_start_naming_the_option_and_the_place() {
    let dir = std::path::PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join(unique("rules"));
    std::fs::create_dir_all(&dir).expect("test input");
    let file = dir.join("filters.json");
    std::fs::write(
        &file,
        "[[\n  {\"property\": \"plan\", \"type\": \"string\",}\n]]",
    )
    .expect("test input");
    let file = file.to_str().expect("test input");
    let empty = dir.join("salt");
    std::fs::write(&empty, "\n").expect("test input");
    let empty = empty.to_str().expect("test input");
    // (environment, the option named, the place or reason named)
    type Case<'a> = (&'a [(&'a str, &'a str)], &'a str, &'a str);
    let cases: [Case; 5] = [
        (
            &[("EVENT_FILTERS_FILE", file)],
            "EVENT_FILTERS_FILE",
            "line 2",
        ),
        (
            &[(
                "EVENT_FILTERS",
                r#"[[{"property":"a","type":"string","operator":"equals","value":"x"}]]"#,
            )],
            "EVENT_FILTERS",
            "group 1, condition 1",
        ),
        (
            &[("REMOVE_PROPERTIES", "uuid")],
            "REMOVE_PROPERTIES",
            "uuid",
        ),
        (&[("HASH_PROPERTIES", "email")], "HASH_SALT", "salt"),
        // A mounted secret not filled in: not an unsalted hash.
        (
            &[
                ("HASH_PROPERTIES", "email"),
                ("HASH_SALT", "s"),
                ("HASH_SALT_FILE", empty),
            ],
            "HASH_SALT_FILE",
            "empty",
        ),
    ];
    for (env, option, place) in cases {
        let mut cmd = std::process::Command::new(env!("CARGO_BIN_EXE_patterns-connector"));
        cmd.env_clear()
            .env("PATTERNS_WEBHOOK_URL", "http://127.0.0.1:9/hook")
            .envs(env.iter().copied());
        // Refused at once, or not at all (a connector that starts runs on).
        let mut child = cmd
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .expect("start the connector");
        let deadline = std::time::Instant::now() + Duration::from_secs(15);
        let status = loop {
            if let Some(status) = child.try_wait().expect("try_wait") {
                break status;
            }
            if std::time::Instant::now() > deadline {
                let _ = child.kill();
                panic!("{env:?} was not refused: the connector started");
            }
            std::thread::sleep(Duration::from_millis(50));
        };
        let out = child.wait_with_output().expect("its output");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(status.code(), Some(2), "{env:?}: {stderr}");
        assert!(
            stderr.contains(&format!("invalid value for {option}")) && stderr.contains(place),
            "{env:?}: {stderr}"
        );
    }
}
