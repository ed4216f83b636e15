//! Decoding PostHog's Kafka messages into the event the webhook receives.
//!
//! Two input formats:
//! - `events_plugin_ingestion` (capture's output): an envelope whose `data`
//!   field is a JSON *string* holding the SDK's event. PostHog's ingestion merges
//!   `data` with the envelope (envelope wins), moves `ip` to `properties.$ip`
//!   and `sent_at` to `properties.$sent_at`, merges top-level `$set`/`$set_once`
//!   into the properties, and computes the event time ([`crate::timestamp`]).
//!   We do the same, so the webhook sees what PostHog's own apps saw.
//! - `clickhouse_events_json` (processed events): `properties` and the person
//!   and group properties are JSON strings; times are ClickHouse's
//!   `YYYY-MM-DD HH:MM:SS.ffffff` in UTC.
//!
//! The output is the old Patterns app's event shape:
//! `{uuid, event, distinct_id, team_id, ip, timestamp, properties, $set?, $set_once?, elements_chain?, person?}`,
//! encoded once here to the bytes that go into the batch body.

use chrono::{DateTime, Utc};
use serde_json::{Map, Value};

use crate::config::InputFormat;
use crate::timestamp::{self, TimestampInputs};

/// A decoded event: what the filter needs, and its encoded JSON object.
#[derive(Debug, Clone, PartialEq)]
pub struct DecodedEvent {
    pub uuid: String,
    pub event: String,
    /// The project API key, when the message carries one (captured events).
    pub token: Option<String>,
    pub team_id: Option<i64>,
    /// The webhook event, encoded as a JSON object.
    pub json: Vec<u8>,
}

/// Why a message could not be decoded. `reason()` is a short fixed code for
/// metrics labels and dead-letter headers.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum DecodeError {
    #[error("the message has no value (empty or tombstone)")]
    Empty,
    #[error("the message value is not valid JSON: {0}")]
    NotJson(String),
    #[error("the message value is JSON but not an object")]
    NotObject,
    #[error("the `data` field does not hold a JSON object: {0}")]
    BadData(String),
    #[error("the `{0}` field is missing")]
    MissingField(&'static str),
    #[error("the `{0}` field has the wrong type")]
    WrongType(&'static str),
    #[error(
        "neither a captured event (string `data`) nor a ClickHouse event (string `properties`)"
    )]
    UnknownFormat,
}

impl DecodeError {
    pub fn reason(&self) -> &'static str {
        match self {
            DecodeError::Empty => "empty",
            DecodeError::NotJson(_) => "not_json",
            DecodeError::NotObject => "not_object",
            DecodeError::BadData(_) => "bad_data",
            DecodeError::MissingField(_) => "missing_field",
            DecodeError::WrongType(_) => "wrong_type",
            DecodeError::UnknownFormat => "unknown_format",
        }
    }
}

/// Decodes one message value. `wall_clock` is used only when a captured
/// message lacks a usable `now`.
pub fn decode(
    payload: Option<&[u8]>,
    format: InputFormat,
    wall_clock: DateTime<Utc>,
) -> Result<DecodedEvent, DecodeError> {
    let payload = payload
        .filter(|p| !p.is_empty())
        .ok_or(DecodeError::Empty)?;
    let value: Value =
        serde_json::from_slice(payload).map_err(|e| DecodeError::NotJson(e.to_string()))?;
    let Value::Object(message) = value else {
        return Err(DecodeError::NotObject);
    };
    let format = match format {
        InputFormat::Auto => detect(&message)?,
        explicit => explicit,
    };
    match format {
        InputFormat::Clickhouse => decode_clickhouse(message),
        _ => decode_captured(message, wall_clock),
    }
}

fn detect(message: &Map<String, Value>) -> Result<InputFormat, DecodeError> {
    if message.get("data").is_some_and(Value::is_string) {
        Ok(InputFormat::Captured)
    } else if message.get("properties").is_some_and(Value::is_string) {
        Ok(InputFormat::Clickhouse)
    } else {
        Err(DecodeError::UnknownFormat)
    }
}

fn decode_captured(
    mut envelope: Map<String, Value>,
    wall_clock: DateTime<Utc>,
) -> Result<DecodedEvent, DecodeError> {
    let data = match envelope.remove("data") {
        Some(Value::String(data)) => data,
        Some(_) => return Err(DecodeError::WrongType("data")),
        None => return Err(DecodeError::MissingField("data")),
    };
    let mut event = match serde_json::from_str::<Value>(&data) {
        Ok(Value::Object(map)) => map,
        Ok(_) => return Err(DecodeError::BadData("not an object".into())),
        Err(e) => return Err(DecodeError::BadData(e.to_string())),
    };
    // Newer capture versions put a server-computed `timestamp` on the envelope;
    // it already includes the clock-skew correction, so it is used as is.
    let envelope_time = envelope
        .get("timestamp")
        .and_then(Value::as_str)
        .filter(|s| !s.is_empty())
        .and_then(timestamp::parse_iso);
    envelope.remove("timestamp");
    // The envelope wins over the SDK's fields, as in PostHog's ingestion.
    for (key, value) in envelope {
        event.insert(key, value);
    }

    let uuid = required_string(&event, "uuid")?;
    let name = required_string(&event, "event")?;
    let distinct_id = match event.get("distinct_id") {
        Some(Value::String(s)) => s.clone(),
        Some(Value::Number(n)) => n.to_string(),
        Some(_) => return Err(DecodeError::WrongType("distinct_id")),
        None => return Err(DecodeError::MissingField("distinct_id")),
    };
    let mut properties = match event.remove("properties") {
        Some(Value::Object(p)) => p,
        None | Some(Value::Null) => Map::new(),
        Some(_) => return Err(DecodeError::WrongType("properties")),
    };
    let ip = match event.get("ip") {
        Some(Value::String(ip)) if !ip.is_empty() => Some(ip.clone()),
        _ => None,
    };
    let sent_at = event
        .get("sent_at")
        .and_then(Value::as_str)
        .filter(|s| !s.is_empty());

    let time = envelope_time.unwrap_or_else(|| {
        timestamp::event_time(
            &TimestampInputs {
                timestamp: event.get("timestamp").and_then(Value::as_str),
                sent_at,
                now: event.get("now").and_then(Value::as_str),
                offset_ms: event.get("offset").and_then(Value::as_f64),
                ignore_sent_at: properties
                    .get("$ignore_sent_at")
                    .and_then(Value::as_bool)
                    .unwrap_or(false),
            },
            wall_clock,
        )
    });

    for key in ["$set", "$set_once"] {
        if let Some(Value::Object(top)) = event.get(key) {
            let merged = match properties.remove(key) {
                Some(Value::Object(mut existing)) => {
                    existing.extend(top.iter().map(|(k, v)| (k.clone(), v.clone())));
                    existing
                }
                _ => top.clone(),
            };
            properties.insert(key.to_owned(), Value::Object(merged));
        }
    }
    if let Some(ip) = &ip {
        properties
            .entry("$ip")
            .or_insert_with(|| Value::String(ip.clone()));
    }
    if let Some(sent_at) = sent_at {
        properties.insert("$sent_at".into(), Value::String(sent_at.to_owned()));
    }

    let token = event
        .get("token")
        .and_then(Value::as_str)
        .or_else(|| properties.get("token").and_then(Value::as_str))
        .filter(|t| !t.is_empty())
        .map(str::to_owned);
    let team_id = event.get("team_id").and_then(Value::as_i64);

    let ip = ip.map(Value::String).unwrap_or(Value::Null);
    let mut out = event_head(&uuid, &name, distinct_id, team_id, ip, time);
    for key in ["$set", "$set_once"] {
        if let Some(value @ Value::Object(_)) = event.remove(key) {
            out.insert(key.into(), value);
        }
    }
    out.insert("properties".into(), Value::Object(properties));

    Ok(DecodedEvent {
        uuid,
        event: name,
        token,
        team_id,
        json: encode(&out),
    })
}

fn decode_clickhouse(mut row: Map<String, Value>) -> Result<DecodedEvent, DecodeError> {
    let uuid = required_string(&row, "uuid")?;
    let name = required_string(&row, "event")?;
    let distinct_id = required_string(&row, "distinct_id")?;
    let team_id = match row.get("team_id") {
        Some(Value::Number(n)) => n.as_i64(),
        Some(Value::String(s)) => s.parse().ok(),
        _ => None,
    };
    let properties = match json_string_field(&mut row, "properties")? {
        Some(Value::Object(p)) => p,
        Some(_) => return Err(DecodeError::WrongType("properties")),
        None => Map::new(),
    };
    let time = row
        .get("timestamp")
        .and_then(Value::as_str)
        .and_then(|raw| timestamp::parse_clickhouse(raw).or_else(|| timestamp::parse_iso(raw)))
        .ok_or(DecodeError::MissingField("timestamp"))?;
    let ip = properties
        .get("$ip")
        .and_then(Value::as_str)
        .map(|s| Value::String(s.to_owned()))
        .unwrap_or(Value::Null);

    let mut out = event_head(&uuid, &name, distinct_id, team_id, ip, time);
    out.insert("properties".into(), Value::Object(properties));
    if let Some(chain) = row.get("elements_chain").and_then(Value::as_str) {
        if !chain.is_empty() {
            out.insert("elements_chain".into(), Value::String(chain.to_owned()));
        }
    }
    if let Some(person_id) = row
        .get("person_id")
        .and_then(Value::as_str)
        .map(str::to_owned)
    {
        let person_properties = json_string_field(&mut row, "person_properties")?
            .unwrap_or_else(|| Value::Object(Map::new()));
        let created_at = row
            .get("person_created_at")
            .and_then(Value::as_str)
            .and_then(timestamp::parse_clickhouse)
            .map(|t| Value::String(timestamp::to_iso(t)))
            .unwrap_or(Value::Null);
        let mut person = Map::new();
        person.insert("uuid".into(), Value::String(person_id));
        person.insert("properties".into(), person_properties);
        person.insert("created_at".into(), created_at);
        out.insert("person".into(), Value::Object(person));
    }

    Ok(DecodedEvent {
        uuid,
        event: name,
        token: None,
        team_id,
        json: encode(&out),
    })
}

/// The fields every webhook event starts with, in one place for both formats.
fn event_head(
    uuid: &str,
    name: &str,
    distinct_id: String,
    team_id: Option<i64>,
    ip: Value,
    time: DateTime<Utc>,
) -> Map<String, Value> {
    let mut out = Map::new();
    out.insert("uuid".into(), Value::String(uuid.to_owned()));
    out.insert("event".into(), Value::String(name.to_owned()));
    out.insert("distinct_id".into(), Value::String(distinct_id));
    out.insert(
        "team_id".into(),
        team_id.map(Value::from).unwrap_or(Value::Null),
    );
    out.insert("ip".into(), ip);
    out.insert("timestamp".into(), Value::String(timestamp::to_iso(time)));
    out
}

fn required_string(map: &Map<String, Value>, field: &'static str) -> Result<String, DecodeError> {
    match map.get(field) {
        Some(Value::String(s)) if !s.is_empty() => Ok(s.clone()),
        Some(Value::String(_)) | None | Some(Value::Null) => Err(DecodeError::MissingField(field)),
        Some(_) => Err(DecodeError::WrongType(field)),
    }
}

/// A field ClickHouse stores as a JSON-encoded string (or, leniently, inline JSON).
fn json_string_field(
    map: &mut Map<String, Value>,
    field: &'static str,
) -> Result<Option<Value>, DecodeError> {
    match map.remove(field) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) if s.is_empty() => Ok(None),
        Some(Value::String(s)) => serde_json::from_str(&s)
            .map(Some)
            .map_err(|_| DecodeError::WrongType(field)),
        Some(inline) => Ok(Some(inline)),
    }
}

fn encode(map: &Map<String, Value>) -> Vec<u8> {
    serde_json::to_vec(map).expect("a serde_json::Map always serializes")
}

#[cfg(test)]
mod tests {
    use super::*;

    const FIXTURES: &str = include_str!("../tests/fixtures/posthog-capture-kafka-messages.jsonl");

    fn wall_clock() -> DateTime<Utc> {
        timestamp::parse_iso("2030-01-01T00:00:00Z").expect("valid")
    }

    fn decode_value(message: &Value) -> Result<Value, DecodeError> {
        let bytes = serde_json::to_vec(message).expect("serializable");
        let decoded = decode(Some(&bytes), InputFormat::Auto, wall_clock())?;
        Ok(serde_json::from_slice(&decoded.json).expect("decoder emits JSON"))
    }

    fn fixtures() -> Vec<(String, Value)> {
        FIXTURES
            .lines()
            .map(|line| {
                let mut row: Value = serde_json::from_str(line).expect("fixture lines are JSON");
                let sdk = row["sdk"].as_str().expect("sdk").to_owned();
                (sdk, row["message"].take())
            })
            .collect()
    }

    #[test]
    fn every_real_capture_message_decodes_to_the_webhook_shape() {
        let all = fixtures();
        assert_eq!(all.len(), 88);
        for (sdk, message) in &all {
            let event = decode_value(message).unwrap_or_else(|e| panic!("{sdk}: {e}"));
            assert_eq!(event["uuid"], message["uuid"], "{sdk}");
            assert_eq!(event["distinct_id"], message["distinct_id"], "{sdk}");
            assert!(
                event["event"].as_str().is_some_and(|e| !e.is_empty()),
                "{sdk}"
            );
            assert!(event["properties"].is_object(), "{sdk}");
            assert_eq!(event["properties"]["$ip"], message["ip"], "{sdk}");
            assert_eq!(event["ip"], message["ip"], "{sdk}");
            assert_eq!(event["team_id"], Value::Null, "{sdk}");
            let ts = event["timestamp"].as_str().expect("timestamp is a string");
            assert!(ts.ends_with('Z') && ts.len() == 24, "{sdk}: {ts}");
        }
        let sdks: std::collections::BTreeSet<_> = all.iter().map(|(sdk, _)| sdk.as_str()).collect();
        assert!(sdks.len() >= 3, "fixtures cover several SDKs: {sdks:?}");
    }

    #[test]
    fn posthog_js_events_with_offset_get_now_minus_offset() {
        let (_, message) = fixtures()
            .into_iter()
            .find(|(_, m)| m["data"].as_str().is_some_and(|d| d.contains("\"offset\"")))
            .expect("fixtures hold offset events");
        let data: Value =
            serde_json::from_str(message["data"].as_str().expect("string")).expect("json");
        let now = timestamp::parse_iso(message["now"].as_str().expect("now")).expect("valid");
        let offset = data["offset"].as_i64().expect("offset");
        let expected = timestamp::to_iso(now - chrono::Duration::milliseconds(offset));
        assert_eq!(
            decode_value(&message).expect("decodes")["timestamp"],
            expected
        );
    }

    #[test]
    fn posthog_node_batch_uses_timestamp_corrected_by_sent_at() {
        let (_, message) = fixtures()
            .into_iter()
            .find(|(sdk, _)| sdk.starts_with("nodejs"))
            .expect("fixtures hold posthog-node events");
        let data: Value =
            serde_json::from_str(message["data"].as_str().expect("string")).expect("json");
        let now = timestamp::parse_iso(message["now"].as_str().expect("now")).expect("valid");
        let sent_at =
            timestamp::parse_iso(message["sent_at"].as_str().expect("sent_at")).expect("valid");
        let ts = timestamp::parse_iso(data["timestamp"].as_str().expect("ts")).expect("valid");
        let event = decode_value(&message).expect("decodes");
        assert_eq!(event["timestamp"], timestamp::to_iso(ts + (now - sent_at)));
        assert_eq!(event["properties"]["$sent_at"], message["sent_at"]);
    }

    #[test]
    fn temporal_batch_export_with_empty_sent_at_keeps_the_client_timestamp() {
        let (_, message) = fixtures()
            .into_iter()
            .find(|(_, m)| m["sent_at"] == "")
            .expect("fixtures hold sent_at = \"\"");
        let data: Value =
            serde_json::from_str(message["data"].as_str().expect("string")).expect("json");
        let ts = timestamp::parse_iso(data["timestamp"].as_str().expect("ts")).expect("valid");
        let event = decode_value(&message).expect("decodes");
        assert_eq!(event["timestamp"], timestamp::to_iso(ts));
        assert!(event["properties"].get("$sent_at").is_none());
    }

    #[test]
    fn set_and_set_once_are_kept_and_merged_into_properties() {
        let message = serde_json::json!({
            "uuid": "u1", "distinct_id": "d1", "ip": null, "now": "2024-01-01T00:00:00Z",
            "sent_at": "", "token": "phc_x",
            "data": serde_json::json!({
                "event": "$identify",
                "properties": {"$set": {"a": 1, "b": 1}},
                "$set": {"b": 2}, "$set_once": {"c": 3}
            }).to_string()
        });
        let event = decode_value(&message).expect("decodes");
        assert_eq!(event["$set"], serde_json::json!({"b": 2}));
        assert_eq!(event["$set_once"], serde_json::json!({"c": 3}));
        assert_eq!(
            event["properties"]["$set"],
            serde_json::json!({"a": 1, "b": 2})
        );
        assert_eq!(event["ip"], Value::Null);
        assert!(event["properties"].get("$ip").is_none());
    }

    #[test]
    fn newer_capture_envelope_fields_win_and_its_timestamp_is_used_as_is() {
        let message = serde_json::json!({
            "uuid": "u1", "distinct_id": "outer", "ip": "1.2.3.4", "now": "2024-01-01T00:00:10Z",
            "sent_at": "2024-01-01T00:00:05Z", "token": "phc_x", "team_id": 7,
            "event": "signed up", "timestamp": "2024-01-01T00:00:09.500Z",
            "is_cookieless_mode": false, "historical_migration": false,
            "data": serde_json::json!({
                "event": "signed up", "distinct_id": "inner", "timestamp": "2024-01-01T00:00:00Z",
                "properties": {"$ip": "9.9.9.9", "plan": "pro"}
            }).to_string()
        });
        let bytes = serde_json::to_vec(&message).expect("json");
        let decoded = decode(Some(&bytes), InputFormat::Captured, wall_clock()).expect("decodes");
        assert_eq!(decoded.team_id, Some(7));
        assert_eq!(decoded.token.as_deref(), Some("phc_x"));
        let event: Value = serde_json::from_slice(&decoded.json).expect("json");
        assert_eq!(event["distinct_id"], "outer");
        assert_eq!(event["timestamp"], "2024-01-01T00:00:09.500Z");
        assert_eq!(event["team_id"], 7);
        // A client-sent $ip is kept, as PostHog does.
        assert_eq!(event["properties"]["$ip"], "9.9.9.9");
        assert_eq!(event["properties"]["plan"], "pro");
    }

    #[test]
    fn numeric_distinct_ids_become_strings() {
        let message = serde_json::json!({
            "uuid": "u1", "distinct_id": 42, "now": "2024-01-01T00:00:00Z",
            "data": "{\"event\":\"e\",\"properties\":{}}"
        });
        assert_eq!(
            decode_value(&message).expect("decodes")["distinct_id"],
            "42"
        );
    }

    #[test]
    fn clickhouse_rows_decode_json_string_columns_and_person() {
        let row = serde_json::json!({
            "uuid": "0190f1b2-0000-7000-8000-000000000001", "event": "$pageview", "team_id": 2,
            "project_id": 2, "distinct_id": "d1",
            "properties": "{\"$current_url\":\"https://example.com/\",\"$ip\":\"10.0.0.1\"}",
            "timestamp": "2024-05-01 12:34:56.789000", "created_at": "2024-05-01 12:34:57.000000",
            "captured_at": "2024-05-01 12:34:56.800000",
            "elements_chain": "a:href=\"/\"nth-child=\"1\"", "person_id": "p-1",
            "person_properties": "{\"email\":\"a@example.com\"}",
            "person_created_at": "2024-01-01 00:00:00", "person_mode": "full",
            "group0_properties": ""
        });
        let bytes = serde_json::to_vec(&row).expect("json");
        let decoded = decode(Some(&bytes), InputFormat::Auto, wall_clock()).expect("decodes");
        assert_eq!(decoded.team_id, Some(2));
        assert_eq!(decoded.token, None);
        let event: Value = serde_json::from_slice(&decoded.json).expect("json");
        assert_eq!(event["timestamp"], "2024-05-01T12:34:56.789Z");
        assert_eq!(event["properties"]["$current_url"], "https://example.com/");
        assert_eq!(event["ip"], "10.0.0.1");
        assert_eq!(event["elements_chain"], "a:href=\"/\"nth-child=\"1\"");
        assert_eq!(event["person"]["uuid"], "p-1");
        assert_eq!(event["person"]["properties"]["email"], "a@example.com");
        assert_eq!(event["person"]["created_at"], "2024-01-01T00:00:00.000Z");
    }

    #[test]
    fn bad_messages_get_a_reason() {
        let cases: Vec<(Option<&[u8]>, &str)> = vec![
            (None, "empty"),
            (Some(b""), "empty"),
            (Some(b"\xff\xfe"), "not_json"),
            (Some(b"not json"), "not_json"),
            (Some(b"[1,2]"), "not_object"),
            (Some(b"{\"foo\":1}"), "unknown_format"),
            (Some(b"{\"data\":\"{oops\",\"uuid\":\"u\"}"), "bad_data"),
            (
                Some(b"{\"data\":\"{}\",\"uuid\":\"u\",\"distinct_id\":\"d\"}"),
                "missing_field",
            ),
            (
                Some(b"{\"data\":\"{\\\"event\\\":5}\",\"uuid\":\"u\",\"distinct_id\":\"d\"}"),
                "wrong_type",
            ),
        ];
        for (payload, reason) in cases {
            let err = decode(payload, InputFormat::Auto, wall_clock()).unwrap_err();
            assert_eq!(err.reason(), reason, "{payload:?}: {err}");
        }
    }

    #[test]
    fn explicit_format_rejects_the_other_format() {
        let row = br#"{"uuid":"u","event":"e","distinct_id":"d","properties":"{}","timestamp":"2024-01-01 00:00:00"}"#;
        let err = decode(Some(row), InputFormat::Captured, wall_clock()).unwrap_err();
        assert_eq!(err, DecodeError::MissingField("data"));
    }
}
