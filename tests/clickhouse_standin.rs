//! The ClickHouse stand-in the backfill tests read PostHog's events from
//! (tests/common/clickhouse.rs): rows go into PostHog's real `events` table
//! and come back as ClickHouse renders them, errors are answered with
//! ClickHouse's statuses and codes, and the data outlives a restart.

mod common;

use common::clickhouse::ClickHouse;
use serde_json::{json, Value};

fn event(n: u32, timestamp: &str) -> Value {
    json!({
        "uuid": format!("0190c1a2-0000-7000-8000-{n:012}"),
        "event": "$pageview",
        "properties": json!({"$current_url": "https://example.com/", "n": n}).to_string(),
        "timestamp": timestamp,
        "team_id": 1,
        "distinct_id": format!("user-{n}"),
        "created_at": timestamp,
        "_timestamp": "2024-06-01 12:00:00",
        "_offset": n,
    })
}

fn read(clickhouse: &ClickHouse) -> Vec<Value> {
    clickhouse
        .query(
            "SELECT uuid, event, properties, timestamp, team_id, distinct_id, inserted_at \
             FROM posthog.events ORDER BY timestamp FORMAT JSONEachRow",
        )
        .lines()
        .map(|line| serde_json::from_str(line).expect("a JSON row"))
        .collect()
}

#[test]
fn stores_posthog_events_and_answers_like_clickhouse() {
    let mut clickhouse = ClickHouse::start("backfill", "s3cret");
    let mut early = event(3, "2024-05-31 23:59:59.999999");
    early["inserted_at"] = Value::Null;
    clickhouse.insert_rows(
        "posthog.events",
        &[
            event(1, "2024-06-01 12:34:56.123456"),
            event(2, "2024-06-01 12:34:56.5"),
            early,
        ],
    );

    let rows = read(&clickhouse);
    assert_eq!(rows.len(), 3, "{rows:?}");
    // DateTime64(6, 'UTC') as "YYYY-MM-DD hh:mm:ss.ffffff", UUID as text,
    // Int64 as a JSON number, a NULL as null.
    assert_eq!(rows[0]["timestamp"], "2024-05-31 23:59:59.999999");
    assert_eq!(rows[0]["inserted_at"], Value::Null);
    assert_eq!(rows[1]["timestamp"], "2024-06-01 12:34:56.123456");
    assert_eq!(rows[1]["uuid"], "0190c1a2-0000-7000-8000-000000000001");
    assert_eq!(rows[1]["team_id"], 1);
    assert_eq!(
        rows[1]["properties"],
        r#"{"$current_url":"https://example.com/","n":1}"#
    );
    assert!(
        rows[1]["inserted_at"].is_string(),
        "DEFAULT now64(): {rows:?}"
    );
    assert_eq!(rows[2]["timestamp"], "2024-06-01 12:34:56.500000");

    let denied = clickhouse.send("backfill", "wrong", "", b"SELECT 1");
    assert_eq!(denied.status, 403, "{denied:?}");
    assert_eq!(denied.exception_code, Some(516));
    assert!(
        denied.body.contains("Authentication failed")
            && denied.body.contains("(AUTHENTICATION_FAILED)"),
        "{denied:?}"
    );

    let missing = clickhouse.send("backfill", "s3cret", "", b"SELECT * FROM posthog.nope");
    assert_eq!(missing.status, 404, "{missing:?}");
    assert_eq!(missing.exception_code, Some(60));
    assert!(missing.body.contains("(UNKNOWN_TABLE)"), "{missing:?}");

    let syntax = clickhouse.send("backfill", "s3cret", "", b"SELEC 1");
    assert_eq!(syntax.status, 400, "{syntax:?}");
    assert_eq!(syntax.exception_code, Some(62));

    clickhouse.restart();
    assert_eq!(read(&clickhouse), rows, "the rows after a restart");
}

/// What the backfill's reqwest client does: the query in the URL or the
/// body, the database as a parameter, basic auth or X-ClickHouse headers.
#[tokio::test]
async fn answers_reqwest() {
    let clickhouse = ClickHouse::start("backfill", "s3cret");
    clickhouse.insert_rows("posthog.events", &[event(7, "2024-06-01 00:00:00.000001")]);
    let http = reqwest::Client::new();

    let answer = http
        .get(clickhouse.url())
        .query(&[
            (
                "query",
                "SELECT uuid, timestamp FROM events FORMAT JSONEachRow",
            ),
            ("database", "posthog"),
        ])
        .basic_auth("backfill", Some("s3cret"))
        .send()
        .await
        .expect("GET");
    assert_eq!(answer.status(), 200);
    assert_eq!(
        answer.text().await.expect("body"),
        "{\"uuid\":\"0190c1a2-0000-7000-8000-000000000007\",\"timestamp\":\"2024-06-01 00:00:00.000001\"}\n"
    );

    let answer = http
        .post(format!("{}/?param_team=1", clickhouse.url()))
        .header("X-ClickHouse-User", "backfill")
        .header("X-ClickHouse-Key", "s3cret")
        .header("X-ClickHouse-Database", "posthog")
        .body("SELECT count() FROM events WHERE team_id = {team:Int64}")
        .send()
        .await
        .expect("POST");
    assert_eq!(answer.status(), 200);
    assert_eq!(answer.text().await.expect("body"), "1\n");

    let answer = http
        .get(format!("{}/?query=SELECT%201", clickhouse.url()))
        .send()
        .await
        .expect("GET without credentials");
    assert_eq!(answer.status(), 403);
    assert_eq!(
        answer.headers()["x-clickhouse-exception-code"],
        "516",
        "{answer:?}"
    );
}
