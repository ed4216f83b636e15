//! Realistic PostHog capture messages for the demo, the tests and the
//! benchmark: the real `events_plugin_ingestion` messages captured from
//! posthog-js, posthog-node and a batch export (tests/fixtures), re-stamped
//! with a fresh uuid, distinct id, project token and time for each `n`.
//! Deterministic: the same `n` gives the same message.

use std::sync::OnceLock;

use serde_json::Value;

const FIXTURES: &str = include_str!("../../tests/fixtures/posthog-capture-kafka-messages.jsonl");

/// The projects sample events belong to (`token`, `team_id`).
pub const PROJECTS: [(&str, i64); 3] = [
    ("phc_demo_project_alpha_000000000000000000000", 1),
    ("phc_demo_project_bravo_000000000000000000000", 2),
    ("phc_demo_project_charlie_0000000000000000000", 3),
];

fn templates() -> &'static [Value] {
    static TEMPLATES: OnceLock<Vec<Value>> = OnceLock::new();
    TEMPLATES.get_or_init(|| {
        FIXTURES
            .lines()
            .map(|line| {
                let mut row: Value = serde_json::from_str(line).expect("fixture lines are JSON");
                row["message"].take()
            })
            .collect()
    })
}

/// A sample message: its Kafka key and value, and facts tests check.
#[derive(Debug, Clone)]
pub struct Sample {
    pub key: String,
    pub value: Vec<u8>,
    pub uuid: String,
    pub event: String,
    pub token: &'static str,
}

/// A uuid-shaped id that encodes `run` and `n`, so tests can map deliveries back.
pub fn uuid_for(run: u32, n: u64) -> String {
    format!("{:08x}-0000-7000-8000-{:012x}", run, n)
}

/// The `n`th sample message of run `run`; `now` is capture's receive time (RFC 3339).
pub fn captured(run: u32, n: u64, now: &str) -> Sample {
    let all = templates();
    let mut message = all[(n % all.len() as u64) as usize].clone();
    let (token, team_id) = PROJECTS[(n % PROJECTS.len() as u64) as usize];
    let uuid = uuid_for(run, n);
    let distinct_id = format!("user-{}", n % 97);
    let mut data: Value = serde_json::from_str(message["data"].as_str().expect("data is a string"))
        .expect("data holds JSON");
    data["uuid"] = Value::String(uuid.clone());
    if data.get("timestamp").is_some() {
        data["timestamp"] = Value::String(now.into());
    }
    if let Some(props) = data["properties"].as_object_mut() {
        props.insert("token".into(), Value::String(token.into()));
        props.insert("distinct_id".into(), Value::String(distinct_id.clone()));
    }
    let event = data["event"].as_str().unwrap_or("$pageview").to_owned();
    message["uuid"] = Value::String(uuid.clone());
    message["distinct_id"] = Value::String(distinct_id.clone());
    message["token"] = Value::String(token.into());
    message["team_id"] = Value::from(team_id);
    message["now"] = Value::String(now.into());
    message["sent_at"] = Value::String(now.into());
    message["data"] = Value::String(data.to_string());
    Sample {
        key: format!("{token}:{distinct_id}"),
        value: serde_json::to_vec(&message).expect("serializable"),
        uuid,
        event,
        token,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::InputFormat;

    #[test]
    fn samples_decode_and_carry_their_uuid_and_project() {
        for n in 0..200 {
            let s = captured(7, n, "2024-01-01T00:00:00Z");
            let decoded =
                crate::event::decode::decode(Some(&s.value), InputFormat::Auto, chrono::Utc::now())
                    .expect("samples decode");
            assert_eq!(decoded.meta.uuid, s.uuid);
            assert_eq!(decoded.meta.token.as_deref(), Some(s.token));
            assert_eq!(decoded.meta.event, s.event);
        }
        assert_ne!(captured(7, 1, "x").uuid, captured(8, 1, "x").uuid);
    }
}
