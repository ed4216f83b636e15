//! Decoding PostHog's Kafka messages into the event the webhook receives.
//!
//! Two input formats:
//! - `events_plugin_ingestion` (capture's output): an envelope whose `data`
//!   field is a JSON *string* holding the SDK's event. PostHog's ingestion merges
//!   `data` with the envelope (envelope wins), moves `ip` to `properties.$ip`
//!   and `sent_at` to `properties.$sent_at`, merges top-level `$set`/`$set_once`
//!   into the properties, and computes the event time ([`crate::event::timestamp`]).
//!   We do the same, so the webhook sees what PostHog's own apps saw.
//! - `clickhouse_events_json` (processed events): `properties` and the person
//!   and group properties are JSON strings; times are ClickHouse's
//!   `YYYY-MM-DD HH:MM:SS.ffffff` in UTC.
//!
//! The output is the old Patterns app's event shape:
//! `{uuid, event, distinct_id, team_id, ip, timestamp, properties, $set?, $set_once?, elements_chain?, person?}`,
//! encoded once here to the bytes that go into the batch body.
//!
//! The hot path: each message is read in one pass with borrowed raw values
//! ([`crate::event::rawjson`]); nested values (most of the properties) are copied to
//! the output byte for byte, never built into a tree. Properties keep the
//! order the SDK sent them in. What is accepted and what is refused is the
//! same as a full `serde_json::Value` parse (see `rawjson::check`).

use std::borrow::Cow;

use chrono::{DateTime, Utc};
use serde_json::value::RawValue;
use serde_json::Value;

use crate::config::InputFormat;
use crate::event::fast;
use crate::event::rawjson::{
    self, kind, Data, Envelope, EventDoc, Fields, Key, Kind, Object, Properties,
};
use crate::event::timestamp::{self, TimestampInputs};

pub use crate::event::EventMeta;

/// A decoded event with its encoded JSON object (see [`decode`]).
#[derive(Debug, Clone, PartialEq)]
pub struct DecodedEvent {
    pub meta: EventMeta,
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

/// Decodes one message value into a new buffer. `wall_clock` is used only
/// when a captured message lacks a usable `now`.
pub fn decode(
    payload: Option<&[u8]>,
    format: InputFormat,
    wall_clock: DateTime<Utc>,
) -> Result<DecodedEvent, DecodeError> {
    let mut json = Vec::new();
    let meta = decode_into(payload, format, wall_clock, &mut json)?;
    Ok(DecodedEvent { meta, json })
}

/// Decodes one message value and appends the webhook event's JSON to `out`
/// (the hot path: `out` is a buffer the caller reuses). On error, `out` may
/// hold a partial event; the caller clears it.
pub fn decode_into(
    payload: Option<&[u8]>,
    format: InputFormat,
    wall_clock: DateTime<Utc>,
    out: &mut Vec<u8>,
) -> Result<EventMeta, DecodeError> {
    // The common captured message takes the one-pass path; whatever it is not
    // sure of (unusual shapes, every error) the general decoder decides, so
    // results, errors and bytes are the general decoder's.
    if let (Some(payload), InputFormat::Auto | InputFormat::Captured) = (payload, format) {
        if let Ok(meta) = fast::decode_captured(payload, wall_clock, out) {
            return Ok(meta);
        }
    }
    decode_into_general(payload, format, wall_clock, out)
}

/// The general decoder: every format and every shape, built on serde_json
/// and [`rawjson`]. [`decode_into`] falls back to it, and the equivalence
/// tests hold the fast path to it.
pub fn decode_into_general(
    payload: Option<&[u8]>,
    format: InputFormat,
    wall_clock: DateTime<Utc>,
    out: &mut Vec<u8>,
) -> Result<EventMeta, DecodeError> {
    let payload = payload
        .filter(|p| !p.is_empty())
        .ok_or(DecodeError::Empty)?;
    // One pass that borrows everything but `data`; a message that is not an
    // object is parsed again only to say precisely what is wrong with it.
    let Ok(Envelope {
        field: data,
        rest: message,
    }) = serde_json::from_slice::<Envelope>(payload)
    else {
        return Err(classify_unreadable(payload));
    };
    let data = data.map(|Data(data)| data);
    for value in message.values() {
        rawjson::check_at(value.get().as_bytes(), 1)
            .map_err(|e| DecodeError::NotJson(e.to_string()))?;
    }
    let format = match format {
        InputFormat::Auto => detect(data.as_ref(), &message)?,
        explicit => explicit,
    };
    match format {
        InputFormat::Clickhouse => decode_clickhouse(message, out),
        _ => match data {
            Some(Ok(data)) => decode_captured(&data, message, wall_clock, out),
            Some(Err(())) => Err(DecodeError::WrongType("data")),
            None => Err(DecodeError::MissingField("data")),
        },
    }
}

fn classify_unreadable(payload: &[u8]) -> DecodeError {
    match serde_json::from_slice::<Value>(payload) {
        Err(e) => DecodeError::NotJson(e.to_string()),
        Ok(Value::Object(_)) => DecodeError::NotJson("unreadable object".into()),
        Ok(_) => DecodeError::NotObject,
    }
}

fn detect(
    data: Option<&Result<String, ()>>,
    message: &Object<'_>,
) -> Result<InputFormat, DecodeError> {
    if matches!(data, Some(Ok(_))) {
        Ok(InputFormat::Captured)
    } else if message
        .get("properties")
        .is_some_and(|v| kind(v) == Kind::String)
    {
        Ok(InputFormat::Clickhouse)
    } else {
        Err(DecodeError::UnknownFormat)
    }
}

/// A value of the outgoing event's `properties`.
enum Property<'a> {
    Raw(&'a RawValue),
    Str(Cow<'a, str>),
    Object(Object<'a>),
}

fn write_property(out: &mut Vec<u8>, value: &Property<'_>) {
    match value {
        Property::Raw(raw) => out.extend_from_slice(raw.get().as_bytes()),
        Property::Str(s) => rawjson::write_str(out, s),
        Property::Object(object) => write_raw_object(out, object),
    }
}

fn write_raw_object(out: &mut Vec<u8>, object: &Object<'_>) {
    rawjson::write_object(out, object.iter(), |out, raw| {
        out.extend_from_slice(raw.get().as_bytes())
    });
}

fn decode_captured(
    data: &str,
    mut envelope: Object<'_>,
    wall_clock: DateTime<Utc>,
    out: &mut Vec<u8>,
) -> Result<EventMeta, DecodeError> {
    let Ok(EventDoc {
        field: properties,
        rest: mut event,
    }) = serde_json::from_str::<EventDoc>(data)
    else {
        return Err(DecodeError::BadData(
            match serde_json::from_str::<Value>(data) {
                Ok(_) => "not an object".into(),
                Err(e) => e.to_string(),
            },
        ));
    };
    rawjson::check(data.as_bytes()).map_err(|e| DecodeError::BadData(e.to_string()))?;
    // Newer capture versions put a server-computed `timestamp` on the envelope;
    // it already includes the clock-skew correction, so it is used as is.
    let envelope_time = envelope
        .remove("timestamp")
        .and_then(rawjson::as_str)
        .filter(|s| !s.is_empty())
        .and_then(|s| timestamp::parse_iso(&s));
    // The envelope wins over the SDK's fields, as in PostHog's ingestion.
    let properties = match envelope.remove("properties") {
        Some(raw) => Some(Properties::from_raw(raw)),
        None => properties,
    };
    event.extend(envelope);

    let uuid = required_string(&event, "uuid")?;
    let name = required_string(&event, "event")?;
    let distinct_id = match event.get("distinct_id").map(|v| (kind(v), v)) {
        Some((Kind::String, v)) => rawjson::as_str(v).expect("a string"),
        Some((Kind::Number, v)) => Cow::Borrowed(v.get()),
        Some(_) => return Err(DecodeError::WrongType("distinct_id")),
        None => return Err(DecodeError::MissingField("distinct_id")),
    };
    let properties = match properties {
        Some(Properties::Object(properties)) => properties,
        None | Some(Properties::Null) => Object::new(),
        Some(Properties::Other) => return Err(DecodeError::WrongType("properties")),
    };
    let string_field = |field| {
        event
            .get(field)
            .copied()
            .and_then(rawjson::as_str)
            .filter(|s| !s.is_empty())
    };
    let ip = string_field("ip");
    let sent_at = string_field("sent_at");

    let time = envelope_time.unwrap_or_else(|| {
        let timestamp = string_field("timestamp");
        let now = string_field("now");
        timestamp::event_time(
            &TimestampInputs {
                timestamp: timestamp.as_deref(),
                sent_at: sent_at.as_deref(),
                now: now.as_deref(),
                offset_ms: event.get("offset").copied().and_then(rawjson::as_f64),
                ignore_sent_at: properties
                    .get("$ignore_sent_at")
                    .copied()
                    .and_then(rawjson::as_bool)
                    .unwrap_or(false),
            },
            wall_clock,
        )
    });

    let token = event
        .get("token")
        .or_else(|| properties.get("token"))
        .copied()
        .and_then(rawjson::as_str)
        .filter(|t| !t.is_empty())
        .map(Cow::into_owned);
    let team_id = event.get("team_id").copied().and_then(rawjson::as_i64);

    // Top-level `$set`/`$set_once` are kept and merged into the properties'
    // (the top level wins), as PostHog's ingestion does.
    let top_level = |key| {
        event
            .get(key)
            .filter(|v| kind(v) == Kind::Object)
            .map(|raw| rawjson::object(raw.get()).expect("a checked raw object parses"))
    };
    let (set, set_once) = (top_level("$set"), top_level("$set_once"));
    let mut merged: Fields<'_, Property<'_>> = properties.map_values(Property::Raw);
    for (key, top) in [("$set", &set), ("$set_once", &set_once)] {
        let Some(top) = top else { continue };
        let mut object = match merged.get(key) {
            Some(Property::Raw(raw)) if kind(raw) == Kind::Object => {
                rawjson::object(raw.get()).expect("a checked raw object parses")
            }
            _ => Object::new(),
        };
        object.extend(top.iter().map(|(k, v)| (k.clone(), *v)));
        merged.insert(Key(Cow::Borrowed(key)), Property::Object(object));
    }
    if let Some(ip) = &ip {
        if !merged.contains_key("$ip") {
            merged.insert(Key(Cow::Borrowed("$ip")), Property::Str(ip.clone()));
        }
    }
    if let Some(sent_at) = &sent_at {
        merged.insert(
            Key(Cow::Borrowed("$sent_at")),
            Property::Str(sent_at.clone()),
        );
    }

    write_head(
        out,
        &uuid,
        &name,
        &distinct_id,
        team_id,
        ip.as_deref(),
        time,
    );
    for (key, object) in [("$set", &set), ("$set_once", &set_once)] {
        if let Some(object) = object {
            out.push(b',');
            rawjson::write_str(out, key);
            out.push(b':');
            write_raw_object(out, object);
        }
    }
    out.extend_from_slice(b",\"properties\":");
    rawjson::write_object(out, merged.iter(), |out, value| write_property(out, value));
    out.push(b'}');

    Ok(EventMeta {
        uuid: uuid.into_owned(),
        event: name.into_owned(),
        token,
        team_id,
    })
}

/// Opens the webhook event with the fields both formats share; the caller
/// appends the rest and the closing brace.
fn write_head(
    out: &mut Vec<u8>,
    uuid: &str,
    name: &str,
    distinct_id: &str,
    team_id: Option<i64>,
    ip: Option<&str>,
    time: DateTime<Utc>,
) {
    out.extend_from_slice(b"{\"uuid\":");
    rawjson::write_str(out, uuid);
    out.extend_from_slice(b",\"event\":");
    rawjson::write_str(out, name);
    out.extend_from_slice(b",\"distinct_id\":");
    rawjson::write_str(out, distinct_id);
    out.extend_from_slice(b",\"team_id\":");
    match team_id {
        Some(id) => out.extend_from_slice(id.to_string().as_bytes()),
        None => out.extend_from_slice(b"null"),
    }
    out.extend_from_slice(b",\"ip\":");
    match ip {
        Some(ip) => rawjson::write_str(out, ip),
        None => out.extend_from_slice(b"null"),
    }
    out.extend_from_slice(b",\"timestamp\":\"");
    out.extend_from_slice(timestamp::to_iso(time).as_bytes());
    out.push(b'"');
}

fn decode_clickhouse(row: Object<'_>, out: &mut Vec<u8>) -> Result<EventMeta, DecodeError> {
    let uuid = required_string(&row, "uuid")?;
    let name = required_string(&row, "event")?;
    let distinct_id = required_string(&row, "distinct_id")?;
    let team_id = row.get("team_id").copied().and_then(|raw| match kind(raw) {
        Kind::Number => rawjson::as_i64(raw),
        Kind::String => rawjson::as_str(raw).and_then(|s| s.parse().ok()),
        _ => None,
    });
    let properties_text = json_string_field(&row, "properties")?;
    let properties = match properties_text.as_deref().map(rawjson::object) {
        Some(Ok(p)) => p,
        Some(Err(_)) => return Err(DecodeError::WrongType("properties")),
        None => Object::new(),
    };
    let time = row
        .get("timestamp")
        .copied()
        .and_then(rawjson::as_str)
        .and_then(|raw| timestamp::parse_clickhouse(&raw).or_else(|| timestamp::parse_iso(&raw)))
        .ok_or(DecodeError::MissingField("timestamp"))?;
    let ip = properties.get("$ip").copied().and_then(rawjson::as_str);

    write_head(
        out,
        &uuid,
        &name,
        &distinct_id,
        team_id,
        ip.as_deref(),
        time,
    );
    out.extend_from_slice(b",\"properties\":");
    write_raw_object(out, &properties);
    if let Some(chain) = row
        .get("elements_chain")
        .copied()
        .and_then(rawjson::as_str)
        .filter(|c| !c.is_empty())
    {
        out.extend_from_slice(b",\"elements_chain\":");
        rawjson::write_str(out, &chain);
    }
    if let Some(person_id) = row.get("person_id").copied().and_then(rawjson::as_str) {
        let person_properties = json_string_field(&row, "person_properties")?;
        out.extend_from_slice(b",\"person\":{\"uuid\":");
        rawjson::write_str(out, &person_id);
        out.extend_from_slice(b",\"properties\":");
        out.extend_from_slice(person_properties.as_deref().unwrap_or("{}").as_bytes());
        out.extend_from_slice(b",\"created_at\":");
        match row
            .get("person_created_at")
            .copied()
            .and_then(rawjson::as_str)
            .and_then(|t| timestamp::parse_clickhouse(&t))
        {
            Some(t) => rawjson::write_str(out, &timestamp::to_iso(t)),
            None => out.extend_from_slice(b"null"),
        }
        out.push(b'}');
    }
    out.push(b'}');

    Ok(EventMeta {
        uuid: uuid.into_owned(),
        event: name.into_owned(),
        token: None,
        team_id,
    })
}

fn required_string<'a>(
    object: &Object<'a>,
    field: &'static str,
) -> Result<Cow<'a, str>, DecodeError> {
    match object.get(field).copied().map(|v| (kind(v), v)) {
        Some((Kind::String, raw)) => match rawjson::as_str(raw) {
            Some(s) if !s.is_empty() => Ok(s),
            _ => Err(DecodeError::MissingField(field)),
        },
        None | Some((Kind::Null, _)) => Err(DecodeError::MissingField(field)),
        Some(_) => Err(DecodeError::WrongType(field)),
    }
}

/// A field ClickHouse stores as a JSON-encoded string (or, leniently, inline
/// JSON): the JSON text, checked.
fn json_string_field<'a>(
    object: &Object<'a>,
    field: &'static str,
) -> Result<Option<Cow<'a, str>>, DecodeError> {
    let Some(raw) = object.get(field).copied() else {
        return Ok(None);
    };
    let text = match kind(raw) {
        Kind::Null => return Ok(None),
        Kind::String => rawjson::as_str(raw).expect("a string"),
        _ => return Ok(Some(Cow::Borrowed(raw.get()))),
    };
    if text.is_empty() {
        return Ok(None);
    }
    let valid =
        serde_json::from_str::<&RawValue>(&text).is_ok() && rawjson::check(text.as_bytes()).is_ok();
    if !valid {
        return Err(DecodeError::WrongType(field));
    }
    Ok(Some(text))
}

#[cfg(test)]
mod tests {
    use super::*;

    const FIXTURES: &str =
        include_str!("../../tests/fixtures/posthog-capture-kafka-messages.jsonl");

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
        assert_eq!(decoded.meta.team_id, Some(7));
        assert_eq!(decoded.meta.token.as_deref(), Some("phc_x"));
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
        assert_eq!(decoded.meta.team_id, Some(2));
        assert_eq!(decoded.meta.token, None);
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
