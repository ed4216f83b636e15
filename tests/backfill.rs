//! `patterns-connector backfill` against a real broker and a real ClickHouse
//! engine (chdb behind the stand-in in tests/clickhouse/): the hand-over to
//! the stream, a SIGKILL and restart, bad rows, ClickHouse going away, and
//! the refusals an operator meets first.

mod common;

use std::collections::{HashMap, HashSet};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use common::clickhouse::ClickHouse;
use common::*;
use patterns_connector::event::sample;
use rdkafka::admin::AdminOptions;
use rdkafka::producer::FutureRecord;
use rdkafka::{Offset, TopicPartitionList};
use serde_json::{json, Value};

const TEAM: i64 = 2;
const OTHER_TEAM: i64 = 3;

fn clickhouse_time(t: DateTime<Utc>) -> String {
    t.format("%Y-%m-%d %H:%M:%S%.6f").to_string()
}

/// A row of PostHog's events table, as ingestion writes it.
fn row(
    uuid: &str,
    team: i64,
    n: u64,
    timestamp: DateTime<Utc>,
    created_at: DateTime<Utc>,
    properties: Value,
) -> Value {
    let event = ["$pageview", "$autocapture", "signed_up"][(n % 3) as usize];
    json!({
        "uuid": uuid,
        "event": event,
        "properties": properties.to_string(),
        "timestamp": clickhouse_time(timestamp),
        "team_id": team,
        "distinct_id": format!("user-{}", n % 17),
        "elements_chain": "",
        "created_at": clickhouse_time(created_at),
        // Ingested: inserted into ClickHouse at that time.
        "inserted_at": clickhouse_time(created_at),
        "_timestamp": created_at.format("%Y-%m-%d %H:%M:%S").to_string(),
        "_offset": n,
    })
}

/// Properties with some weight: unicode, and every 97th row 100 KB.
fn properties(n: u64) -> Value {
    let mut p = json!({"$current_url": "https://example.com/☃/日本", "n": n, "$set": {"email": format!("u{n}@example.com")}});
    if n % 97 == 5 {
        p["blob"] = Value::String("x".repeat(100 * 1024));
    }
    p
}

/// Seeds `n` events of the team, one a second from `days_ago` days ago,
/// each ingested at its own timestamp.
fn seed(clickhouse: &ClickHouse, run: u32, n: u64, days_ago: i64) {
    let base = Utc::now() - chrono::Duration::days(days_ago);
    let rows: Vec<Value> = (0..n)
        .map(|i| {
            let t = base + chrono::Duration::seconds(i as i64);
            row(&sample::uuid_for(run, i), TEAM, i, t, t, properties(i))
        })
        .collect();
    clickhouse.insert_rows("posthog.events", &rows);
}

/// The backfill process.
struct Backfill {
    child: Option<Child>,
    stdout: PathBuf,
    log: PathBuf,
    /// HTTP_ADDR: its /metrics.
    http: std::net::SocketAddr,
}

impl Backfill {
    fn start(clickhouse: &ClickHouse, webhook: &str, env: &[(&str, &str)]) -> Self {
        let name = unique("backfill");
        let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR"));
        let (stdout, log) = (
            dir.join(format!("{name}.out")),
            dir.join(format!("{name}.log")),
        );
        let http = free_port();
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_patterns-connector"));
        cmd.arg("backfill")
            .env_clear()
            .env("PATH", std::env::var("PATH").unwrap_or_default())
            .env("KAFKA_HOSTS", kafka())
            .env("PATTERNS_WEBHOOK_URL", webhook)
            .env("HTTP_ADDR", http.to_string())
            .env("POSTHOG_TEAM_ID", TEAM.to_string())
            .env("CLICKHOUSE_HOST", clickhouse.url())
            .env("CLICKHOUSE_USER", clickhouse.user())
            .env("CLICKHOUSE_PASSWORD", clickhouse.password())
            .env("BATCH_LINGER_MS", "100")
            .env("RETRY_BACKOFF_MIN_MS", "50")
            .env("RETRY_BACKOFF_MAX_MS", "500")
            .env("BACKFILL_VISIBILITY_DELAY_MS", "0")
            .env("LOG_LEVEL", "info")
            .stdin(Stdio::null())
            .stdout(std::fs::File::create(&stdout).expect("stdout file"))
            .stderr(std::fs::File::create(&log).expect("log file"));
        for (k, v) in env {
            cmd.env(k, v);
        }
        Backfill {
            child: Some(cmd.spawn().expect("start patterns-connector backfill")),
            stdout,
            log,
            http,
        }
    }

    /// Waits for the exit like `wait`, scraping /metrics meanwhile: the
    /// exit status and the last values read of each of `names` (0 if never
    /// read).
    async fn wait_scraping(
        &mut self,
        timeout: Duration,
        names: &[&str],
    ) -> (std::process::ExitStatus, Vec<f64>) {
        let deadline = Instant::now() + timeout;
        let url = format!("http://{}/metrics", self.http);
        let mut last = vec![0.0; names.len()];
        loop {
            if let Some(status) = self.exited() {
                return (status, last);
            }
            if let Ok(Ok(text)) = tokio::time::timeout(Duration::from_secs(1), async {
                reqwest::get(&url).await?.text().await
            })
            .await
            {
                for (value, name) in last.iter_mut().zip(names) {
                    if let Some((_, v)) = metric_values(&text, name).first() {
                        *value = *v;
                    }
                }
            }
            assert!(
                Instant::now() < deadline,
                "the backfill did not exit within {timeout:?}\n{}",
                self.logs()
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    fn output(&self) -> String {
        std::fs::read_to_string(&self.stdout).unwrap_or_default()
    }

    fn logs(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// The exit status once the process has exited.
    fn exited(&mut self) -> Option<std::process::ExitStatus> {
        let status = self
            .child
            .as_mut()
            .expect("running")
            .try_wait()
            .expect("try_wait")?;
        self.child = None;
        Some(status)
    }

    async fn wait(&mut self, timeout: Duration) -> std::process::ExitStatus {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(status) = self.exited() {
                return status;
            }
            assert!(
                Instant::now() < deadline,
                "the backfill did not exit within {timeout:?}\nstdout: {}\nlog: {}",
                self.output(),
                self.logs()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill(); // SIGKILL
            let _ = child.wait();
        }
    }

    /// Runs to its end and returns (success, stdout, log).
    async fn run(
        clickhouse: &ClickHouse,
        webhook: &str,
        env: &[(&str, &str)],
    ) -> (bool, String, String) {
        let mut b = Backfill::start(clickhouse, webhook, env);
        let status = b.wait(Duration::from_secs(120)).await;
        (status.success(), b.output(), b.logs())
    }
}

impl Drop for Backfill {
    fn drop(&mut self) {
        self.kill();
    }
}

/// The number before `what` in the summary line.
fn summary_count(output: &str, what: &str) -> u64 {
    let line = output
        .lines()
        .last()
        .filter(|l| l.starts_with("backfill complete"))
        .unwrap_or_else(|| panic!("no summary line last in: {output}"));
    let at = line
        .find(what)
        .unwrap_or_else(|| panic!("{what:?} not in {line}"));
    line[..at]
        .split_whitespace()
        .last()
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no count before {what:?} in {line}"))
}

fn uuid_counts(events: &[Value]) -> HashMap<String, usize> {
    let mut counts = HashMap::new();
    for e in events {
        *counts
            .entry(e["uuid"].as_str().expect("uuid").to_owned())
            .or_insert(0) += 1;
    }
    counts
}

fn names(prefix: &str) -> (String, String, String) {
    (unique(prefix), unique("bf-state"), unique("bf-dlq"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn history_and_stream_together_deliver_every_event_once_but_for_the_counted_overlap() {
    let run = run_id();
    let topic = unique("bf-stream");
    let (group, state, dlq) = names("bf-group");
    create_topic(&topic, 1).await;
    let clickhouse = ClickHouse::start("backfill", "ch-secret-9");

    // 300 events captured 200 ms apart, ten minutes ago; ingested 50 ms
    // after capture. Every 50th arrived late: its own timestamp is three
    // days older than its ingestion.
    let n = 300u64;
    let base = Utc::now() - chrono::Duration::minutes(10);
    let captured = |i: u64| base + chrono::Duration::milliseconds(200 * i as i64);
    let ingested = |i: u64| captured(i) + chrono::Duration::milliseconds(50);
    let producer = producer();
    let mut rows = Vec::new();
    for i in 0..n {
        let s = sample::captured(run, i, &now_timestamp());
        producer
            .send(
                FutureRecord::to(&topic)
                    .partition(0)
                    .key(&s.key)
                    .payload(&s.value)
                    .timestamp(captured(i).timestamp_millis()),
                Duration::from_secs(30),
            )
            .await
            .map_err(|(e, _)| e)
            .expect("produced");
        let timestamp = if i % 50 == 7 {
            ingested(i) - chrono::Duration::days(3)
        } else {
            captured(i) - chrono::Duration::seconds(1)
        };
        rows.push(row(&s.uuid, TEAM, i, timestamp, ingested(i), properties(i)));
    }
    // Another team's events, ingested over the same time: never sent.
    for k in 0..40 {
        let uuid = sample::uuid_for(run, 10_000 + k);
        rows.push(row(
            &uuid,
            OTHER_TEAM,
            k,
            captured(k),
            ingested(k * 7),
            properties(k),
        ));
    }
    clickhouse.insert_rows("posthog.events", &rows);

    // Kafka kept only the last third: retention took the rest.
    let deleted_before = 200i64;
    let mut before = TopicPartitionList::new();
    before
        .add_partition_offset(&topic, 0, Offset::Offset(deleted_before))
        .expect("test input");
    admin()
        .delete_records(&before, &AdminOptions::new())
        .await
        .expect("delete records");

    // The stream starts (reading from the earliest offset left) ...
    let stream = Receiver::start().await;
    let env = [("STATE_TOPIC", state.as_str()), ("DLQ_TOPIC", dlq.as_str())];
    let connector = Connector::start(&topic, &group, &stream.url(), &env);
    eventually(
        Duration::from_secs(60),
        "the stream delivers the retained third",
        || stream.delivered_uuids().len() == (n as usize - deleted_before as usize),
    )
    .await;

    // ... then the backfill sends the rest.
    let history = Receiver::start().await;
    let margin_ms = 2_000i64;
    let margin = margin_ms.to_string();
    let (ok, output, logs) = Backfill::run(
        &clickhouse,
        &history.url(),
        &[
            ("KAFKA_TOPIC", topic.as_str()),
            ("KAFKA_CONSUMER_GROUP", group.as_str()),
            ("STATE_TOPIC", state.as_str()),
            ("DLQ_TOPIC", dlq.as_str()),
            ("BACKFILL_HANDOVER_MARGIN_MS", margin.as_str()),
            ("BACKFILL_PAGE_ROWS", "64"),
        ],
    )
    .await;
    assert!(ok, "backfill failed\nstdout: {output}\nlog: {logs}");
    drop(connector);

    let uuid = |i: u64| sample::uuid_for(run, i);
    let streamed = uuid_counts(&stream.delivered());
    let backfilled = uuid_counts(&history.delivered());
    // Every event of the team reached the receiver, late arrivals included.
    for i in 0..n {
        assert!(
            streamed.contains_key(&uuid(i)) || backfilled.contains_key(&uuid(i)),
            "event {i} was delivered by neither path"
        );
    }
    // Nothing of the other team; nothing twice within a path.
    for k in 0..40 {
        assert!(!backfilled.contains_key(&sample::uuid_for(run, 10_000 + k)));
    }
    assert!(
        backfilled.values().all(|c| *c == 1),
        "a backfilled event came twice"
    );
    assert!(
        streamed.values().all(|c| *c == 1),
        "a streamed event came twice"
    );
    // The overlap: events both paths sent. The stream placed its partition
    // just now, so the bound is now plus the margin and every event it
    // streamed (captured from captured(200) on, ingested before now) is in
    // the overlap window [captured(200), placement + margin) too; nothing
    // ingested before captured(200) is.
    let overlap: HashSet<u64> = (0..n)
        .filter(|i| streamed.contains_key(&uuid(*i)) && backfilled.contains_key(&uuid(*i)))
        .collect();
    let window_start = captured(deleted_before as u64);
    for i in &overlap {
        assert!(
            ingested(*i) >= window_start,
            "event {i} overlaps but was ingested before the stream's first message"
        );
    }
    let expected: HashSet<u64> = (deleted_before as u64..n).collect();
    assert_eq!(overlap, expected);
    assert_eq!(
        summary_count(&output, "in the overlap with the stream"),
        overlap.len() as u64,
        "{output}"
    );
    assert_eq!(summary_count(&output, "delivered"), backfilled.len() as u64);
    // The row count up front, and the fields a ClickHouse row adds.
    assert!(
        logs.contains(&format!(
            "{} rows ingested before",
            deleted_before as usize + overlap.len()
        )),
        "{logs}"
    );
    let late = history
        .delivered()
        .into_iter()
        .find(|e| e["uuid"] == uuid(7))
        .expect("the late event 7");
    assert_eq!(late["team_id"], TEAM);
    assert!(late["timestamp"].as_str().expect("test input").starts_with(
        &(ingested(7) - chrono::Duration::days(3))
            .format("%Y-%m-%dT%H:%M:%S")
            .to_string()
    ));
    assert_eq!(
        late["properties"]["$current_url"],
        "https://example.com/☃/日本"
    );
    assert!(
        !output.contains("ch-secret-9") && !logs.contains("ch-secret-9"),
        "the ClickHouse password leaked"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_backfill_killed_midway_resumes_from_its_checkpoint() {
    let run = run_id();
    let (group, state, dlq) = names("bf-kill");
    let clickhouse = ClickHouse::start("default", "pw");
    let n = 1_500u64;
    seed(&clickhouse, run, n, 30);
    let receiver = Receiver::start().await;
    receiver.set_default(Reply::ok().delayed(Duration::from_millis(30)));
    let page_rows = 100usize;
    let page = page_rows.to_string();
    let until = (Utc::now() - chrono::Duration::days(1)).to_rfc3339();
    let env = [
        ("KAFKA_CONSUMER_GROUP", group.as_str()),
        ("STATE_TOPIC", state.as_str()),
        ("DLQ_TOPIC", dlq.as_str()),
        ("BACKFILL_UNTIL", until.as_str()),
        ("BACKFILL_PAGE_ROWS", page.as_str()),
        ("BATCH_MAX_EVENTS", "25"),
        ("MAX_CONCURRENT_REQUESTS", "2"),
    ];
    let mut kills = 0;
    for kill_at in [300usize, 800] {
        let mut b = Backfill::start(&clickhouse, &receiver.url(), &env);
        eventually(Duration::from_secs(60), "the backfill delivers", || {
            receiver.delivered().len() >= kill_at
        })
        .await;
        b.kill();
        kills += 1;
    }
    let (ok, output, logs) = Backfill::run(&clickhouse, &receiver.url(), &env).await;
    assert!(ok, "stdout: {output}\nlog: {logs}");
    assert!(logs.contains("resuming from the checkpoint"), "{logs}");
    let counts = uuid_counts(&receiver.delivered());
    for i in 0..n {
        assert!(
            counts.contains_key(&sample::uuid_for(run, i)),
            "event {i} missing"
        );
    }
    let duplicates: usize = counts.values().map(|c| c - 1).sum();
    eprintln!("{duplicates} duplicates after {kills} kills (page: {page_rows} rows)");
    assert!(
        duplicates <= kills * page_rows,
        "{duplicates} duplicates after {kills} kills: more than a page each"
    );
    // Run again: complete, nothing sent.
    let sent = receiver.requests().len();
    let (ok, output, _) = Backfill::run(&clickhouse, &receiver.url(), &env).await;
    assert!(ok && output.contains("backfill complete"), "{output}");
    assert_eq!(receiver.requests().len(), sent);
    // Following from a checkpoint in STATE_TOPIC would resend what a
    // stream delivers from there: refused, naming the option.
    let mut follow: Vec<_> = env
        .iter()
        .copied()
        .filter(|(k, _)| *k != "BACKFILL_UNTIL")
        .collect();
    follow.push(("BACKFILL_FOLLOW", "true"));
    let (ok, _, logs) = Backfill::run(&clickhouse, &receiver.url(), &follow).await;
    assert!(!ok, "{logs}");
    assert!(logs.contains("invalid value for BACKFILL_FOLLOW"), "{logs}");
    assert_eq!(receiver.requests().len(), sent);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bad_row_is_dead_lettered_and_clickhouse_going_away_is_waited_out() {
    let run = run_id();
    let (group, state, dlq) = names("bf-bad");
    create_topic(&dlq, 1).await;
    let mut clickhouse = ClickHouse::start("default", "pw");
    let n = 600u64;
    let base = Utc::now() - chrono::Duration::days(3);
    let bad = 123u64;
    let rows: Vec<Value> = (0..n)
        .map(|i| {
            let t = base + chrono::Duration::seconds(i as i64);
            // 5 KB rows: the feeder reads ahead only MAX_BUFFERED_BYTES
            // (1 MiB), so pages are still being read when ClickHouse goes.
            let mut props = properties(i);
            props["pad"] = Value::String("y".repeat(5_000));
            let mut r = row(&sample::uuid_for(run, i), TEAM, i, t, t, props);
            if i == bad {
                r["properties"] = Value::String("{not json".into());
            }
            r
        })
        .collect();
    clickhouse.insert_rows("posthog.events", &rows);
    let receiver = Receiver::start().await;
    receiver.set_default(Reply::ok().delayed(Duration::from_millis(50)));
    let until = Utc::now().to_rfc3339();
    let env = [
        ("KAFKA_CONSUMER_GROUP", group.as_str()),
        ("STATE_TOPIC", state.as_str()),
        ("DLQ_TOPIC", dlq.as_str()),
        ("BACKFILL_UNTIL", until.as_str()),
        ("BACKFILL_PAGE_ROWS", "50"),
        ("BATCH_MAX_EVENTS", "10"),
        ("MAX_CONCURRENT_REQUESTS", "1"),
        ("MAX_BUFFERED_BYTES", "1048576"),
        // The stream's project filter, from the same configuration: rows
        // carry no token; the team selects them.
        ("POSTHOG_PROJECT_TOKEN", "phc_the_streams_project"),
    ];
    let mut b = Backfill::start(&clickhouse, &receiver.url(), &env);
    eventually(Duration::from_secs(60), "the backfill delivers", || {
        receiver.delivered().len() >= 150
    })
    .await;
    clickhouse.stop();
    tokio::time::sleep(Duration::from_secs(4)).await;
    clickhouse.restart();
    let status = b.wait(Duration::from_secs(120)).await;
    assert!(
        status.success(),
        "stdout: {}\nlog: {}",
        b.output(),
        b.logs()
    );
    assert!(
        b.logs().contains("ClickHouse") && b.logs().contains("retrying")
            || b.logs().contains("resuming after the last row read"),
        "no retry logged: {}",
        b.logs()
    );
    let counts = uuid_counts(&receiver.delivered());
    for i in (0..n).filter(|i| *i != bad) {
        assert!(
            counts.contains_key(&sample::uuid_for(run, i)),
            "event {i} missing"
        );
    }
    assert!(!counts.contains_key(&sample::uuid_for(run, bad)));
    let letters = read_topic(&dlq, 1, Duration::from_secs(30));
    assert_eq!(letters.len(), 1);
    let letter = &letters[0];
    assert!(
        String::from_utf8_lossy(letter.payload.as_deref().unwrap_or_default())
            .contains(&sample::uuid_for(run, bad)),
        "the dead letter holds the row"
    );
    assert!(
        letter
            .headers
            .get("dlq.reason")
            .is_some_and(|r| !r.is_empty()),
        "{:?}",
        letter.headers
    );
    assert_eq!(summary_count(&b.output(), "dead-lettered"), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refusals_name_the_option_and_an_empty_project_is_not_an_error() {
    let (group, state, dlq) = names("bf-refuse");
    let clickhouse = ClickHouse::start("default", "right");
    let receiver = Receiver::start().await;
    let until = Utc::now().to_rfc3339();
    let base = [
        ("KAFKA_CONSUMER_GROUP", group.as_str()),
        ("STATE_TOPIC", state.as_str()),
        ("DLQ_TOPIC", dlq.as_str()),
        ("BACKFILL_UNTIL", until.as_str()),
        ("BACKFILL_RETRY_FOR_MS", "2000"),
    ];
    let with = |extra: &[(&'static str, &'static str)]| {
        let mut env = base.to_vec();
        env.extend_from_slice(extra);
        env
    };

    let (ok, _, logs) = Backfill::run(
        &clickhouse,
        &receiver.url(),
        &with(&[("CLICKHOUSE_PASSWORD", "wrong-pw-77")]),
    )
    .await;
    assert!(!ok);
    assert!(logs.contains("CLICKHOUSE_PASSWORD"), "{logs}");
    assert!(!logs.contains("wrong-pw-77"), "the password leaked: {logs}");

    let (ok, _, logs) = Backfill::run(
        &clickhouse,
        &receiver.url(),
        &with(&[("CLICKHOUSE_DATABASE", "nope")]),
    )
    .await;
    assert!(!ok);
    assert!(logs.contains("CLICKHOUSE_DATABASE"), "{logs}");

    let (ok, _, logs) = Backfill::run(
        &clickhouse,
        &receiver.url(),
        &with(&[("CLICKHOUSE_HOST", "127.0.0.1:1")]),
    )
    .await;
    assert!(!ok);
    assert!(logs.contains("CLICKHOUSE_HOST"), "{logs}");

    // No events for the team: said so, exit 0.
    let (ok, output, logs) = Backfill::run(&clickhouse, &receiver.url(), &base).await;
    assert!(ok, "{output}\n{logs}");
    assert!(logs.contains("no events for team 2"), "{logs}");
    assert_eq!(summary_count(&output, "rows read"), 0);
    assert!(receiver.requests().is_empty());

    // Without a recorded stream start or BACKFILL_UNTIL: refused, saying how to fix it.
    let (other_group, _, _) = names("bf-refuse-nostream");
    let env: Vec<_> = base
        .iter()
        .filter(|(k, _)| *k != "BACKFILL_UNTIL" && *k != "KAFKA_CONSUMER_GROUP")
        .copied()
        .chain([("KAFKA_CONSUMER_GROUP", other_group.as_str())])
        .collect();
    let (ok, _, logs) = Backfill::run(&clickhouse, &receiver.url(), &env).await;
    assert!(!ok);
    assert!(logs.contains("BACKFILL_UNTIL"), "{logs}");

    // DLQ_POLICY=block and a row that cannot be sent: the backfill stops,
    // non-zero, rather than waiting for an operator for ever.
    let t = Utc::now() - chrono::Duration::hours(1);
    let mut bad = row(&sample::uuid_for(run_id(), 1), TEAM, 1, t, t, properties(1));
    bad["properties"] = Value::String("[not an object".into());
    clickhouse.insert_rows("posthog.events", &[bad]);
    // (A group of its own: the empty run above completed this group's backfill.)
    let (block_group, _, _) = names("bf-refuse-block");
    let mut env = with(&[("DLQ_POLICY", "block")]);
    env.retain(|(k, _)| *k != "KAFKA_CONSUMER_GROUP");
    env.push(("KAFKA_CONSUMER_GROUP", block_group.as_str()));
    let (ok, _, logs) = Backfill::run(&clickhouse, &receiver.url(), &env).await;
    assert!(!ok);
    assert!(logs.contains("DLQ_POLICY=block"), "{logs}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_backfill_of_the_same_team_and_group_waits_for_the_first() {
    let run = run_id();
    let (group, state, dlq) = names("bf-lock");
    let clickhouse = ClickHouse::start("default", "pw");
    let n = 500u64;
    seed(&clickhouse, run, n, 2);
    let receiver = Receiver::start().await;
    // About 100 events a second: the first runs for about five seconds.
    receiver.set_default(Reply::ok().delayed(Duration::from_millis(100)));
    let until = Utc::now().to_rfc3339();
    let env = [
        ("KAFKA_CONSUMER_GROUP", group.as_str()),
        ("STATE_TOPIC", state.as_str()),
        ("DLQ_TOPIC", dlq.as_str()),
        ("BACKFILL_UNTIL", until.as_str()),
        ("BATCH_MAX_EVENTS", "10"),
        ("MAX_CONCURRENT_REQUESTS", "1"),
    ];
    let mut first = Backfill::start(&clickhouse, &receiver.url(), &env);
    eventually(
        Duration::from_secs(60),
        "the first backfill delivers",
        || !receiver.delivered().is_empty(),
    )
    .await;
    let mut second = Backfill::start(&clickhouse, &receiver.url(), &env);
    let status = first.wait(Duration::from_secs(120)).await;
    assert!(status.success(), "{}", first.logs());
    let status = second.wait(Duration::from_secs(120)).await;
    assert!(status.success(), "{}", second.logs());
    assert!(
        second.logs().contains("waiting: another backfill"),
        "{}",
        second.logs()
    );
    assert!(
        second.output().contains("backfill complete"),
        "{}",
        second.output()
    );
    let counts = uuid_counts(&receiver.delivered());
    assert_eq!(counts.len(), n as usize);
    assert!(
        counts.values().all(|c| *c == 1),
        "the second backfill sent events the first had sent"
    );
}

// ---- The query API source (tests/posthog/query_api.py in front of the same chdb tables) ----

/// A row with a person and a group on every third event, as PostHog's
/// persons-on-events writes them.
fn row_with_person(
    uuid: &str,
    team: i64,
    n: u64,
    ts: DateTime<Utc>,
    created: DateTime<Utc>,
) -> Value {
    let mut r = row(uuid, team, n, ts, created, properties(n));
    if n % 3 == 0 {
        r["person_id"] = json!(format!("0190b3a0-1111-7000-8000-{:012}", n % 50));
        r["person_properties"] = json!(
            json!({"email": format!("p{}@example.com", n % 50), "plan": "pro/✓"}).to_string()
        );
        r["person_created_at"] = json!("2024-01-02 03:04:05.678");
        r["group0_properties"] = json!(json!({"name": "acme"}).to_string());
    }
    r
}

/// The environment of a backfill through the query API stand-in.
fn api_env<'a>(
    api: &'a str,
    state_file: &'a str,
    project: &'a str,
) -> Vec<(&'static str, &'a str)> {
    vec![
        ("BACKFILL_SOURCE", "api"),
        ("POSTHOG_API_URL", api),
        ("POSTHOG_PROJECT_ID", project),
        ("POSTHOG_PERSONAL_API_KEY", common::posthog_api::KEY),
        ("BACKFILL_STATE_FILE", state_file),
    ]
}

fn state_file(name: &str) -> String {
    PathBuf::from(env!("CARGO_TARGET_TMPDIR"))
        .join(format!("{}.json", unique(name)))
        .display()
        .to_string()
}

/// Each delivered event's JSON text, by uuid (the last copy wins).
fn events_as_sent(receiver: &Receiver) -> HashMap<String, String> {
    let mut out = HashMap::new();
    for request in receiver.requests() {
        let Ok(events) =
            serde_json::from_slice::<Vec<Box<serde_json::value::RawValue>>>(&request.body)
        else {
            continue;
        };
        for event in events {
            let v: Value = serde_json::from_str(event.get()).expect("an event");
            out.insert(
                v["uuid"].as_str().expect("uuid").to_owned(),
                event.get().to_owned(),
            );
        }
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn both_sources_deliver_the_same_events_byte_for_byte() {
    let run = run_id();
    let (group, state, dlq) = names("bf-both");
    let clickhouse = ClickHouse::start("default", "pw-both");
    let base = Utc::now() - chrono::Duration::days(3);
    let until = base + chrono::Duration::seconds(120);
    // 1,200 events of the team, 10 per second of ingestion (so some share a
    // created_at to the microsecond: 1 in 4 is ingested at the same instant
    // as the one before); every 40th arrived late (its own timestamp two days
    // before its ingestion); 200 ingested after the bound; another team's.
    let mut rows = Vec::new();
    for i in 0..1_400u64 {
        let mut created = base + chrono::Duration::milliseconds(i as i64 * 100 * 1_400 / 1_200);
        if i % 4 == 1 {
            created = base + chrono::Duration::milliseconds((i as i64 - 1) * 100 * 1_400 / 1_200);
        }
        let ts = if i % 40 == 7 {
            created - chrono::Duration::days(2)
        } else {
            created - chrono::Duration::milliseconds(40)
        };
        rows.push(row_with_person(
            &sample::uuid_for(run, i),
            TEAM,
            i,
            ts,
            created,
        ));
    }
    for i in 0..50u64 {
        rows.push(row(
            &sample::uuid_for(run, 10_000 + i),
            OTHER_TEAM,
            i,
            base,
            base,
            properties(i),
        ));
    }
    clickhouse.insert_rows("posthog.events", &rows);
    let expected: HashSet<String> = (0..1_400u64)
        .filter(|i| {
            let created = base
                + chrono::Duration::milliseconds(
                    (if i % 4 == 1 { i - 1 } else { *i }) as i64 * 100 * 1_400 / 1_200,
                );
            created < until
        })
        .map(|i| sample::uuid_for(run, i))
        .collect();
    assert!(
        expected.len() > 1_000 && expected.len() < 1_400,
        "{}",
        expected.len()
    );
    let until = until.to_rfc3339();
    let common_env = [
        ("KAFKA_CONSUMER_GROUP", group.as_str()),
        ("STATE_TOPIC", state.as_str()),
        ("DLQ_TOPIC", dlq.as_str()),
        ("BACKFILL_UNTIL", until.as_str()),
        ("BACKFILL_PAGE_ROWS", "97"),
    ];

    let from_clickhouse = Receiver::start().await;
    let (ok, output, logs) = Backfill::run(&clickhouse, &from_clickhouse.url(), &common_env).await;
    assert!(ok, "clickhouse source: {output}\n{logs}");

    let api = common::posthog_api::QueryApi::start(&clickhouse, TEAM, None);
    let from_api = Receiver::start().await;
    let (url, file) = (api.url(), state_file("bf-both-api"));
    let mut env = common_env.to_vec();
    env.extend(api_env(&url, &file, "2"));
    let (ok, output, logs) = Backfill::run(&clickhouse, &from_api.url(), &env).await;
    assert!(ok, "api source: {output}\n{logs}\nstand-in: {}", api.logs());
    assert_eq!(
        summary_count(&output, "rows read"),
        expected.len() as u64,
        "{output}"
    );

    let a = events_as_sent(&from_clickhouse);
    let b = events_as_sent(&from_api);
    assert_eq!(
        a.keys().cloned().collect::<HashSet<_>>(),
        expected,
        "the ClickHouse source's set"
    );
    assert_eq!(
        b.keys().cloned().collect::<HashSet<_>>(),
        expected,
        "the API source's set"
    );
    let mut persons = 0;
    for (uuid, event) in &a {
        assert_eq!(event, &b[uuid], "event {uuid} differs between the sources");
        persons += usize::from(event.contains("\"person\":"));
    }
    assert!(persons > 300, "persons on {persons} events");
    let stats = api.stats().await;
    let queries = stats["queries"].as_array().expect("queries");
    assert!(queries.len() >= 13, "{} queries", queries.len());
    for q in queries {
        let q = q.as_str().unwrap_or_default();
        assert!(!q.to_uppercase().contains("OFFSET"), "{q}");
    }
    assert_eq!(stats["refused"], 0, "{stats}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn following_delivers_rows_inserted_while_it_runs_through_late_visibility_and_a_kill() {
    let run = run_id();
    let (group, _, dlq) = names("bf-follow");
    let clickhouse = ClickHouse::start("default", "pw-follow");
    let history = 300u64;
    seed(&clickhouse, run, history, 10);
    let api = common::posthog_api::QueryApi::start(&clickhouse, TEAM, None);
    let receiver = Receiver::start().await;
    let (url, file) = (api.url(), state_file("bf-follow"));
    let page_rows = 50usize;
    let page = page_rows.to_string();
    let mut env = vec![
        ("KAFKA_CONSUMER_GROUP", group.as_str()),
        ("DLQ_TOPIC", dlq.as_str()),
        ("BACKFILL_FOLLOW", "true"),
        ("BACKFILL_FOLLOW_INTERVAL_MS", "300"),
        // The safety lag: rows become visible up to 2.5 s late below.
        ("BACKFILL_VISIBILITY_DELAY_MS", "3000"),
        ("BACKFILL_PAGE_ROWS", page.as_str()),
        ("BATCH_MAX_EVENTS", "20"),
    ];
    env.extend(api_env(&url, &file, "2"));
    let mut b = Backfill::start(&clickhouse, &receiver.url(), &env);

    // While it runs: 40 rounds of 10 rows, 250 ms apart; each row inserted
    // with an ingestion time up to 2.5 s in the past (visible late).
    let mut inserted = history;
    let mut kills = 0;
    for round in 0..40u64 {
        let now = Utc::now();
        let batch: Vec<Value> = (0..10u64)
            .map(|k| {
                let i = inserted + k;
                let late = chrono::Duration::milliseconds(((i * 617) % 2_500) as i64);
                row(
                    &sample::uuid_for(run, i),
                    TEAM,
                    i,
                    now - late,
                    now - late,
                    properties(i),
                )
            })
            .collect();
        clickhouse.insert_rows("posthog.events", &batch);
        inserted += 10;
        if round == 15 {
            b.kill();
            kills += 1;
            tokio::time::sleep(Duration::from_millis(500)).await;
            b = Backfill::start(&clickhouse, &receiver.url(), &env);
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    let expected: HashSet<String> = (0..inserted).map(|i| sample::uuid_for(run, i)).collect();
    eventually(
        Duration::from_secs(60),
        "every inserted row is delivered",
        || receiver.delivered_uuids().is_superset(&expected),
    )
    .await;
    // SIGTERM: following ends cleanly, its checkpoint saved.
    let pid = b.child.as_ref().expect("running").id();
    let _ = Command::new("kill")
        .args(["-TERM", &pid.to_string()])
        .status();
    let status = b.wait(Duration::from_secs(30)).await;
    let (output, logs) = (b.output(), b.logs());
    assert!(status.success(), "{status}\n{output}\n{logs}");
    assert!(output.contains("following ended by a signal"), "{output}");
    assert!(logs.contains("following newly ingested events"), "{logs}");
    assert!(
        logs.contains("resuming from the checkpoint") || kills == 0,
        "{logs}"
    );
    let counts = uuid_counts(&receiver.delivered());
    let duplicates: usize = counts.values().map(|c| c - 1).sum();
    eprintln!("following: {inserted} rows, {duplicates} duplicates after {kills} kill");
    assert!(
        duplicates <= kills * page_rows,
        "{duplicates} duplicates after {kills} kills: more than a page each"
    );
    assert!(std::fs::read_to_string(&file)
        .expect("the state file")
        .contains("\"follow\": true"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_throttled_api_and_pages_that_run_out_of_time_lose_nothing() {
    let run = run_id();
    let (group, _, dlq) = names("bf-throttle");
    let clickhouse = ClickHouse::start("default", "pw-throttle");
    let n = 600u64;
    seed(&clickhouse, run, n, 5);
    // Four requests every 3 s: the ~15 the backfill needs take four windows.
    // A page above 150 rows runs out of PostHog's time: 400 rows, then 200,
    // then 100 per page.
    let api = common::posthog_api::QueryApi::start_with(
        &clickhouse,
        TEAM,
        Some((4, 3.0)),
        &["--timeout-above-rows", "150"],
    );
    let receiver = Receiver::start().await;
    let (url, file) = (api.url(), state_file("bf-throttle"));
    let until = (Utc::now() - chrono::Duration::days(1)).to_rfc3339();
    let mut env = vec![
        ("KAFKA_CONSUMER_GROUP", group.as_str()),
        ("DLQ_TOPIC", dlq.as_str()),
        ("BACKFILL_UNTIL", until.as_str()),
        ("BACKFILL_PAGE_ROWS", "400"),
        // The stream's team filter does not apply: the project is the URL's.
        ("POSTHOG_TEAM_ID", "77"),
        // Shorter than the throttle: a throttle is not a failure.
        ("BACKFILL_RETRY_FOR_MS", "1000"),
    ];
    env.extend(api_env(&url, &file, "2"));
    let mut backfill = Backfill::start(&clickhouse, &receiver.url(), &env);
    let (status, seen) = backfill
        .wait_scraping(
            Duration::from_secs(120),
            &[
                "patterns_connector_backfill_throttled_seconds_total",
                "patterns_connector_backfill_rows_done_total",
            ],
        )
        .await;
    let (output, logs) = (backfill.output(), backfill.logs());
    assert!(status.success(), "{output}\n{logs}");
    let stats = api.stats().await;
    assert!(stats["throttled"].as_u64().unwrap_or(0) >= 2, "{stats}");
    // The metrics tell the wait: at least two throttles of about a second
    // each were counted (read while it ran; the last scrape may miss the end).
    assert!(seen[0] >= 1.0, "throttled seconds read: {seen:?}");
    assert!(seen[1] > 0.0, "rows done read: {seen:?}");
    assert!(
        logs.contains("waiting: throttled by the source (HTTP 429), next request in"),
        "the wait is not in the progress line: {logs}"
    );
    assert!(
        logs.contains("a page ran out of time; reading smaller pages from now on"),
        "{logs}"
    );
    assert_eq!(
        logs.matches("a page ran out of time").count(),
        2,
        "400 rows, then 200, then 100: {logs}"
    );
    let counts = uuid_counts(&receiver.delivered());
    assert_eq!(counts.len() as u64, n, "rows missing");
    assert!(counts.values().all(|c| *c == 1), "a page was sent twice");
    assert_eq!(summary_count(&output, "delivered"), n);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn api_refusals_name_the_option_and_never_show_the_key() {
    let (group, _, dlq) = names("bf-api-refuse");
    let clickhouse = ClickHouse::start("default", "pw-refuse");
    let api = common::posthog_api::QueryApi::start(&clickhouse, TEAM, None);
    let receiver = Receiver::start().await;
    let url = api.url();
    let until = Utc::now().to_rfc3339();
    let file = state_file("bf-api-refuse");
    let cases: [(&str, &str, &str, &str); 5] = [
        (
            "wrong key",
            "phx_wrong_key_66",
            "2",
            "POSTHOG_PERSONAL_API_KEY",
        ),
        (
            "no scope",
            common::posthog_api::UNSCOPED_KEY,
            "2",
            "query:read",
        ),
        (
            "unknown project",
            common::posthog_api::KEY,
            "999",
            "POSTHOG_PROJECT_ID",
        ),
        (
            "not PostHog",
            common::posthog_api::KEY,
            "2",
            "not PostHog's query API",
        ),
        (
            "no project",
            common::posthog_api::KEY,
            "",
            "POSTHOG_PROJECT_ID",
        ),
    ];
    for (what, key, project, expected) in cases {
        let base_url = if what == "not PostHog" {
            clickhouse.url()
        } else {
            url.clone()
        };
        let env = vec![
            ("KAFKA_CONSUMER_GROUP", group.as_str()),
            ("DLQ_TOPIC", dlq.as_str()),
            ("BACKFILL_UNTIL", until.as_str()),
            ("BACKFILL_SOURCE", "api"),
            ("POSTHOG_API_URL", base_url.as_str()),
            ("POSTHOG_PROJECT_ID", project),
            ("POSTHOG_PERSONAL_API_KEY", key),
            ("BACKFILL_STATE_FILE", file.as_str()),
        ];
        let mut b = Backfill::start(&clickhouse, &receiver.url(), &env);
        let status = b.wait(Duration::from_secs(30)).await;
        let logs = b.logs();
        assert!(!status.success(), "{what}: exited 0\n{logs}");
        assert!(
            logs.contains(expected),
            "{what}: {expected:?} not in\n{logs}"
        );
        assert!(!logs.contains(key), "{what}: the key leaked:\n{logs}");
        assert!(!b.output().contains(key), "{what}: the key leaked");
    }
    assert!(receiver.requests().is_empty());
}
