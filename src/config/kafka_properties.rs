//! `KAFKA_PROPERTIES`: extra librdkafka properties, `key=value,key=value`,
//! minus the ones the connector sets itself, and the check that
//! `max.poll.interval.ms` outlasts a revocation drain.

use std::collections::BTreeMap;
use std::time::Duration;

use super::{bad, ConfigError};

/// librdkafka properties by key; values of secret keys ([`is_secret_key`])
/// are never printed.
pub type KafkaProperties = BTreeMap<String, String>;

/// Parses `key=value,key=value` librdkafka properties, refusing the ones the
/// connector sets itself (see [`refused_kafka_property`]).
pub fn parse_kafka_properties(raw: &str) -> Result<KafkaProperties, ConfigError> {
    let mut props = BTreeMap::new();
    for pair in raw.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        let (key, value) = pair.split_once('=').ok_or_else(|| {
            bad(
                "KAFKA_PROPERTIES",
                format!(
                    "expected comma-separated key=value pairs, got an entry without '=' ({:?})",
                    redact_property_entry(pair)
                ),
            )
        })?;
        let key = key.trim();
        if key.is_empty() {
            return Err(bad("KAFKA_PROPERTIES", "an entry has an empty key"));
        }
        if let Some(why) = refused_kafka_property(key) {
            return Err(bad(
                "KAFKA_PROPERTIES",
                format!("{key} cannot be set here: {why}"),
            ));
        }
        props.insert(key.to_owned(), value.trim().to_owned());
    }
    Ok(props)
}

/// librdkafka properties the connector sets itself, because another option
/// sets them or because the delivery guarantee depends on them, with what to
/// do instead. Aliases librdkafka accepts for them are listed too.
pub const MANAGED_KAFKA_PROPERTIES: &[(&str, &str)] = &[
    ("bootstrap.servers", "set the brokers with KAFKA_HOSTS"),
    ("metadata.broker.list", "set the brokers with KAFKA_HOSTS"),
    (
        "group.id",
        "set the consumer group with KAFKA_CONSUMER_GROUP",
    ),
    (
        "auto.offset.reset",
        "set the start position with START_AT (earliest, latest or a time), not auto.offset.reset",
    ),
    (
        "auto.commit.interval.ms",
        "set how often delivered offsets are committed with COMMIT_INTERVAL_MS",
    ),
    (
        "enable.auto.commit",
        "patterns-connector manages committing for its at-least-once guarantee \
         (delivered offsets are committed every COMMIT_INTERVAL_MS)",
    ),
    (
        "auto.commit.enable",
        "patterns-connector manages committing for its at-least-once guarantee \
         (delivered offsets are committed every COMMIT_INTERVAL_MS)",
    ),
    (
        "enable.auto.offset.store",
        "patterns-connector manages it for its at-least-once guarantee \
         (an offset is stored only once everything before it was delivered)",
    ),
    (
        "partition.assignment.strategy",
        "patterns-connector manages it for its delivery guarantee \
         (its rebalance handling is written for cooperative-sticky assignment)",
    ),
    (
        "group.protocol",
        "choose the group protocol with KAFKA_GROUP_PROTOCOL (auto, classic or consumer)",
    ),
    (
        "group.instance.id",
        "set a static member's identity with KAFKA_GROUP_INSTANCE_ID",
    ),
];

/// `KAFKA_PROPERTIES` keys that only the classic protocol has; librdkafka
/// refuses them with `group.protocol=consumer`.
pub const CLASSIC_ONLY: &[&str] = &[
    "session.timeout.ms",
    "heartbeat.interval.ms",
    "group.protocol.type",
];

/// `KAFKA_PROPERTIES` keys that only the new protocol has.
pub const CONSUMER_ONLY: &[&str] = &["group.remote.assignor"];

/// The first classic-only key `properties` sets, if any.
pub fn classic_only_key(properties: &KafkaProperties) -> Option<&'static str> {
    CLASSIC_ONLY
        .iter()
        .copied()
        .find(|key| properties.contains_key(*key))
}

/// The first new-protocol-only key `properties` sets, if any.
pub fn consumer_only_key(properties: &KafkaProperties) -> Option<&'static str> {
    CONSUMER_ONLY
        .iter()
        .copied()
        .find(|key| properties.contains_key(*key))
}

/// Why `key` may not be set in `KAFKA_PROPERTIES`, if it may not.
pub fn refused_kafka_property(key: &str) -> Option<&'static str> {
    MANAGED_KAFKA_PROPERTIES
        .iter()
        .find(|(managed, _)| *managed == key)
        .map(|(_, why)| *why)
}

/// Whether a librdkafka property's value is secret (never printed).
pub(crate) fn is_secret_key(key: &str) -> bool {
    let key = key.to_ascii_lowercase();
    ["password", "secret", "key", "token", "credential", "jaas"]
        .iter()
        .any(|word| key.contains(word))
}

fn redact_property_entry(entry: &str) -> String {
    if is_secret_key(entry) {
        "<redacted>".to_owned()
    } else {
        entry.to_owned()
    }
}

/// `key=value,...` with the values of secret keys redacted.
pub(crate) fn redacted(props: &KafkaProperties) -> String {
    props
        .iter()
        .map(|(k, v)| {
            if is_secret_key(k) {
                format!("{k}=<redacted>")
            } else {
                format!("{k}={v}")
            }
        })
        .collect::<Vec<_>>()
        .join(",")
}

/// Room between a revocation's longest drain and `max.poll.interval.ms`.
const POLL_INTERVAL_MARGIN: Duration = Duration::from_secs(10);

/// A revocation drains in-flight batches inside librdkafka's rebalance
/// callback, for up to `SHUTDOWN_TIMEOUT_MS`, and the consumer does not poll
/// meanwhile. A `max.poll.interval.ms` shorter than that makes the group drop
/// the replica in the middle of every slow drain.
pub(crate) fn check_poll_interval(
    properties: &KafkaProperties,
    shutdown_timeout: Duration,
) -> Result<(), ConfigError> {
    // librdkafka's default applies when it is not set: check that too.
    let raw = properties
        .get("max.poll.interval.ms")
        .map_or("300000", String::as_str);
    let interval: u64 = raw.trim().parse().map_err(|_| {
        bad(
            "KAFKA_PROPERTIES",
            format!("max.poll.interval.ms must be a number of milliseconds, got {raw:?}"),
        )
    })?;
    let needed = (shutdown_timeout + POLL_INTERVAL_MARGIN).as_millis() as u64;
    if interval < needed {
        return Err(bad(
            "KAFKA_PROPERTIES",
            format!(
                "max.poll.interval.ms={interval} must be at least SHUTDOWN_TIMEOUT_MS + 10 s ({needed} ms): \
                 a revocation drains in-flight batches for up to SHUTDOWN_TIMEOUT_MS without polling; \
                 raise max.poll.interval.ms or lower SHUTDOWN_TIMEOUT_MS"
            ),
        ));
    }
    Ok(())
}
