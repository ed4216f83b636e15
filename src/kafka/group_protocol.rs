//! Which consumer group protocol the group consumer speaks
//! (`KAFKA_GROUP_PROTOCOL`).
//!
//! The next-generation protocol (KIP-848, `group.protocol=consumer`) moves
//! assignment to the brokers and makes every membership change incremental:
//! a replica joining, leaving or dying moves only its own share, and no
//! other replica waits on it. It needs Apache Kafka 4.0 or later (brokers
//! that answer `ConsumerGroupHeartbeat`); Kafka before 4.0 and Redpanda
//! speak only the classic protocol, where this connector uses
//! cooperative-sticky assignment.
//!
//! `auto` decides once, at start-up ([`choose`], pure): `classic` when
//! `KAFKA_PROPERTIES` tunes the classic protocol (`session.timeout.ms`,
//! `heartbeat.interval.ms`: under the new one the brokers own those), else
//! `consumer` when the broker asked ([`probe`]) lists `ConsumerGroupHeartbeat`
//! among its APIs, else `classic`. The probe reads librdkafka's own record of
//! the broker's API versions (its `feature` debug lines, [`heartbeat_api`]):
//! librdkafka has no call that returns them.
//!
//! What the probe cannot see: brokers that list the API but refuse the
//! protocol (`group.coordinator.rebalance.protocols` without `consumer`, or
//! a cluster mid-upgrade whose coordinator is older than the broker asked).
//! The join then fails with librdkafka's fatal "unsupported" error, and
//! `consumer::rejoin` falls back to classic when `auto` chose.

use std::sync::Mutex;
use std::time::Duration;

use rdkafka::client::ClientContext;
use rdkafka::config::RDKafkaLogLevel;
use rdkafka::error::KafkaError;
use rdkafka::producer::{BaseProducer, DeliveryResult, Producer, ProducerContext};

use crate::config::{classic_only_key, Config, GroupProtocolChoice, KafkaProperties};
#[cfg(test)]
use crate::config::{consumer_only_key, CLASSIC_ONLY};
use crate::kafka::connection::{Connection, KafkaLogs};

/// The protocol the consumer uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GroupProtocol {
    Classic,
    Consumer,
}

impl GroupProtocol {
    /// librdkafka's `group.protocol` value.
    pub fn as_str(self) -> &'static str {
        match self {
            GroupProtocol::Classic => "classic",
            GroupProtocol::Consumer => "consumer",
        }
    }
}

/// The decision and why, for the start-up log.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Choice {
    pub protocol: GroupProtocol,
    pub reason: String,
}

/// Decides the protocol. `broker_offers` is asked only when `auto` needs it:
/// `Some(true)` when the broker lists `ConsumerGroupHeartbeat`, `Some(false)`
/// when it does not, `None` when it could not be asked.
pub fn choose(
    choice: GroupProtocolChoice,
    properties: &KafkaProperties,
    broker_offers: impl FnOnce() -> Option<bool>,
) -> Choice {
    let chosen = |protocol, reason: &str| Choice {
        protocol,
        reason: reason.to_owned(),
    };
    match choice {
        GroupProtocolChoice::Classic => {
            chosen(GroupProtocol::Classic, "KAFKA_GROUP_PROTOCOL=classic")
        }
        GroupProtocolChoice::Consumer => {
            chosen(GroupProtocol::Consumer, "KAFKA_GROUP_PROTOCOL=consumer")
        }
        GroupProtocolChoice::Auto => {
            if let Some(key) = classic_only_key(properties) {
                return Choice {
                    protocol: GroupProtocol::Classic,
                    reason: format!(
                        "KAFKA_PROPERTIES sets {key}, which only the classic protocol has"
                    ),
                };
            }
            match broker_offers() {
                Some(true) => chosen(
                    GroupProtocol::Consumer,
                    "the brokers offer the next-generation protocol (KIP-848)",
                ),
                Some(false) => chosen(
                    GroupProtocol::Classic,
                    "the brokers do not offer the next-generation protocol (Kafka before 4.0, or not Apache Kafka)",
                ),
                None => chosen(
                    GroupProtocol::Classic,
                    "the brokers could not be asked which protocols they offer",
                ),
            }
        }
    }
}

/// The `ConsumerGroupHeartbeat` versions in one of librdkafka's
/// `APIVERSION` debug lines ("[thrd:...]: <broker>:   ApiKey
/// ConsumerGroupHeartbeat (68) Versions 0..1"), or `None` for any other line.
pub fn heartbeat_api(line: &str) -> Option<(i16, i16)> {
    const KEY: &str = "ApiKey ConsumerGroupHeartbeat (68) Versions ";
    let rest = &line[line.find(KEY)? + KEY.len()..];
    let (min, max) = rest.trim().split_once("..")?;
    Some((min.trim().parse().ok()?, max.trim().parse().ok()?))
}

/// How long the probe waits for a broker's answer.
pub const PROBE_TIMEOUT: Duration = Duration::from_secs(10);

/// Collects the probe client's `feature` debug lines.
struct ProbeContext {
    heartbeat: Mutex<Option<(i16, i16)>>,
    logs: KafkaLogs,
}

impl ClientContext for ProbeContext {
    fn log(&self, level: RDKafkaLogLevel, fac: &str, line: &str) {
        if matches!(level, RDKafkaLogLevel::Debug) {
            if let Some(versions) = heartbeat_api(line) {
                *self.heartbeat.lock().unwrap_or_else(|e| e.into_inner()) = Some(versions);
            }
            return;
        }
        self.logs.log("protocol probe", level, fac, line);
    }

    fn error(&self, error: KafkaError, reason: &str) {
        self.logs.error("protocol probe", &error, reason);
    }
}

/// A producer (that never produces) because its `poll` serves the log
/// lines: librdkafka queues them for the client to poll.
impl ProducerContext for ProbeContext {
    type DeliveryOpaque = ();
    fn delivery(&self, _: &DeliveryResult<'_>, _: ()) {}
}

/// Asks a broker which APIs it offers (a metadata request with librdkafka's
/// `feature` debug lines on) and says whether `ConsumerGroupHeartbeat` is
/// among them; `None` when no broker answered within `timeout`.
pub fn probe(config: &Config, timeout: Duration) -> Option<bool> {
    let mut client = Connection::from_config(config).client_config("patterns-connector-probe");
    client
        .set("debug", "feature")
        .set_log_level(RDKafkaLogLevel::Debug);
    let context = ProbeContext {
        heartbeat: Mutex::new(None),
        logs: KafkaLogs::default(),
    };
    let client: BaseProducer<ProbeContext> = match client.create_with_context(context) {
        Ok(p) => p,
        Err(e) => {
            tracing::warn!(error = %e, "cannot create the group protocol probe");
            return None;
        }
    };
    // The metadata request needs a connection, and librdkafka asks for the
    // broker's API versions before any other request, logging them as it
    // reads the answer: once the metadata is answered, the lines are queued.
    let answered = client.client().fetch_metadata(None, timeout).is_ok();
    let drained = std::time::Instant::now() + Duration::from_millis(300);
    while std::time::Instant::now() < drained {
        client.poll(Duration::from_millis(20));
    }
    let heartbeat = *client
        .context()
        .heartbeat
        .lock()
        .unwrap_or_else(|e| e.into_inner());
    match (heartbeat, answered) {
        (Some(_), _) => Some(true),
        (None, true) => Some(false),
        (None, false) => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn props(pairs: &[(&str, &str)]) -> KafkaProperties {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn the_heartbeat_api_is_read_from_librdkafkas_line_and_nothing_else() {
        assert_eq!(
            heartbeat_api("  ApiKey ConsumerGroupHeartbeat (68) Versions 0..1"),
            Some((0, 1))
        );
        assert_eq!(
            heartbeat_api(
                "[thrd:127.0.0.1:9092/bootstrap]: 127.0.0.1:9092/bootstrap:   ApiKey ConsumerGroupHeartbeat (68) Versions 0..12 "
            ),
            Some((0, 12))
        );
        for other in [
            "  ApiKey ConsumerGroupDescribe (69) Versions 0..1",
            "  ApiKey Heartbeat (12) Versions 0..4",
            "  ApiKey ConsumerGroupHeartbeat (68) Versions",
            "  ApiKey ConsumerGroupHeartbeat (68) Versions a..b",
            "Updated enabled protocol features to MsgVer1,ApiVersion",
        ] {
            assert_eq!(heartbeat_api(other), None, "{other}");
        }
    }

    #[test]
    fn forced_choices_never_ask_the_brokers() {
        let asked = |_: ()| -> Option<bool> { panic!("asked the brokers") };
        let none = props(&[]);
        assert_eq!(
            choose(GroupProtocolChoice::Classic, &none, || asked(())).protocol,
            GroupProtocol::Classic
        );
        assert_eq!(
            choose(GroupProtocolChoice::Consumer, &none, || asked(())).protocol,
            GroupProtocol::Consumer
        );
    }

    #[test]
    fn auto_follows_the_brokers_and_falls_back_to_classic() {
        let none = props(&[]);
        let auto = |offers| choose(GroupProtocolChoice::Auto, &none, || offers);
        assert_eq!(auto(Some(true)).protocol, GroupProtocol::Consumer);
        assert_eq!(auto(Some(false)).protocol, GroupProtocol::Classic);
        let unknown = auto(None);
        assert_eq!(unknown.protocol, GroupProtocol::Classic);
        assert!(
            unknown.reason.contains("could not be asked"),
            "{}",
            unknown.reason
        );
    }

    #[test]
    fn auto_keeps_classic_when_the_operator_tunes_the_classic_protocol() {
        for key in CLASSIC_ONLY {
            let tuned = props(&[(key, "6000"), ("fetch.max.bytes", "1000")]);
            let choice = choose(GroupProtocolChoice::Auto, &tuned, || {
                panic!("asked the brokers")
            });
            assert_eq!(choice.protocol, GroupProtocol::Classic);
            assert!(choice.reason.contains(key), "{}", choice.reason);
        }
    }

    #[test]
    fn protocol_specific_keys_are_found() {
        assert_eq!(classic_only_key(&props(&[("fetch.max.bytes", "1")])), None);
        assert_eq!(
            classic_only_key(&props(&[("heartbeat.interval.ms", "1000")])),
            Some("heartbeat.interval.ms")
        );
        assert_eq!(
            consumer_only_key(&props(&[("group.remote.assignor", "range")])),
            Some("group.remote.assignor")
        );
    }
}
