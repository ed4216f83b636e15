//! One connection configuration for every Kafka client the process creates:
//! the consumer, the dead-letter producer (`sink::dlq`), the reader of refused
//! events' originals (`kafka::originals`), the watermark probe
//! (`kafka::watermarks`) and the `replay-dlq` consumer (`replay.rs`).
//!
//! Every `KAFKA_PROPERTIES` key goes to every client, except the few that
//! configure one client's own work rather than how it reaches the brokers:
//! the main consumer's group membership, fetching and statistics, and the
//! producer's batching and acknowledgements (the dead-letter producer sets
//! its own). A denylist, not a list of connection prefixes: a connection
//! setting a list forgot (`enable.ssl.certificate.verification`, `https.*`,
//! `metadata.*`, `client.dns.lookup`, ...) once reached the consumer alone, so
//! it consumed while every dead-letter write failed, forever.

use std::collections::BTreeMap;
use std::fmt;
use std::sync::{Arc, OnceLock};
use std::time::Instant;

use rdkafka::client::ClientContext;
use rdkafka::config::RDKafkaLogLevel;
use rdkafka::consumer::ConsumerContext;
use rdkafka::error::KafkaError;
use rdkafka::ClientConfig;
use tracing::{debug, error, info, warn};

use crate::ops::log_limit::RateLimit;

use crate::config::{is_secret_key, Config};

/// Keys held back from the side clients, exactly or by prefix (a trailing `.`).
const CLIENT_OWN_KEYS: &[&str] = &[
    // The main consumer's group membership and committing.
    "group.",
    "partition.assignment.strategy",
    "session.timeout.ms",
    "heartbeat.interval.ms",
    "coordinator.query.interval.ms",
    "max.poll.interval.ms",
    "enable.auto.commit",
    "auto.commit.enable",
    "auto.commit.interval.ms",
    "enable.auto.offset.store",
    "auto.offset.reset",
    "offset.store.",
    // Its fetching: throughput tuning, and `enable.partition.eof` would turn
    // the end of a partition into an error for the originals reader.
    "fetch.",
    "max.partition.fetch.bytes",
    "queued.",
    "enable.partition.eof",
    "check.crcs",
    "consume.callback.max.messages",
    // Statistics feed the consumer's lag gauges; side clients have no
    // handler for them (rdkafka's default would log each one).
    "statistics.interval.ms",
    // Producer-only keys: the dead-letter producer's settings are the
    // connector's (acks=all, idempotence); a `transactional.id` would make
    // its writes fail.
    "transactional.id",
    "transaction.timeout.ms",
    "enable.idempotence",
    "enable.gapless.guarantee",
    "queue.buffering.",
    "queuing.strategy",
    "linger.ms",
    "message.send.max.retries",
    "retries",
    "compression.",
    "batch.num.messages",
    "batch.size",
    "delivery.report.only.error",
    "sticky.partitioning.linger.ms",
    "request.required.acks",
    "acks",
    "request.timeout.ms",
    "message.timeout.ms",
    "delivery.timeout.ms",
    "produce.offset.report",
    "partitioner",
];

/// Whether a `KAFKA_PROPERTIES` key is part of the connection every client
/// shares (brokers, security, timeouts, metadata, DNS, debugging), rather
/// than one client's own work. `isolation.level` is shared on purpose: the
/// originals reader and the watermark probe must see the partition as the
/// consumer does.
pub fn is_connection_property(key: &str) -> bool {
    !CLIENT_OWN_KEYS.iter().any(|own| {
        if own.ends_with('.') {
            key.starts_with(own)
        } else {
            key == *own
        }
    })
}

/// How every client reaches the brokers: `KAFKA_HOSTS` and the connection
/// part of `KAFKA_PROPERTIES`. Its `Debug` hides secret values.
#[derive(Clone)]
pub struct Connection {
    bootstrap: String,
    /// The properties every client gets.
    properties: BTreeMap<String, String>,
    /// The rest of `KAFKA_PROPERTIES`: only the main consumer (and the
    /// `replay-dlq` consumer, a group member too) gets them.
    consumer_properties: BTreeMap<String, String>,
}

impl Connection {
    pub fn from_config(config: &Config) -> Self {
        let (properties, consumer_properties) = config
            .kafka_properties
            .iter()
            .map(|(k, v)| (k.clone(), v.clone()))
            .partition(|(key, _)| is_connection_property(key));
        Connection {
            bootstrap: config.kafka_hosts.clone(),
            properties,
            consumer_properties,
        }
    }

    /// What every client starts from: the brokers, `client.id` (unless
    /// `KAFKA_PROPERTIES` sets one, e.g. for broker quotas) and the
    /// connection properties. The client then sets its own keys.
    pub fn client_config(&self, client_id: &str) -> ClientConfig {
        let mut client = ClientConfig::new();
        client
            .set("bootstrap.servers", &self.bootstrap)
            .set("client.id", client_id);
        for (key, value) in &self.properties {
            client.set(key, value);
        }
        client
    }

    /// The `KAFKA_PROPERTIES` keys held back from the side clients (group
    /// membership, fetching, statistics; producer-only keys, which librdkafka
    /// ignores in a consumer with a warning). A group consumer sets them on
    /// top of [`client_config`](Self::client_config) and its own defaults,
    /// so the user's value wins.
    pub fn consumer_properties(&self) -> impl Iterator<Item = (&str, &str)> {
        self.consumer_properties
            .iter()
            .map(|(k, v)| (k.as_str(), v.as_str()))
    }
}

impl fmt::Debug for Connection {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let redacted = |props: &BTreeMap<String, String>| {
            props
                .iter()
                .map(|(k, v)| {
                    let v = if is_secret_key(k) { "<redacted>" } else { v };
                    format!("{k}={v}")
                })
                .collect::<Vec<_>>()
        };
        f.debug_struct("Connection")
            .field("bootstrap", &self.bootstrap)
            .field("properties", &redacted(&self.properties))
            .field("consumer_properties", &redacted(&self.consumer_properties))
            .finish()
    }
}

/// librdkafka's log and error callbacks, rate-limited: while Kafka is
/// unreachable every client reports every reconnect (about 27 lines a second
/// in all), so the first line of each kind is logged (naming the broker and
/// the cause), then one reminder per `log_limit::REMINDER_INTERVAL` with how
/// many were left out.
///
/// One limit serves every client of the process: the consumer, the
/// dead-letter and state producers and the watermark probe all lose the same
/// broker at once, and one line says so (each client on its own added three
/// lines per client to the same outage).
#[derive(Debug)]
pub struct KafkaLogs {
    limit: Arc<RateLimit>,
}

impl Default for KafkaLogs {
    fn default() -> Self {
        static SHARED: OnceLock<Arc<RateLimit>> = OnceLock::new();
        KafkaLogs {
            limit: Arc::clone(SHARED.get_or_init(|| Arc::new(RateLimit::default()))),
        }
    }
}

impl KafkaLogs {
    /// Logs an error reported by librdkafka's error callback.
    pub fn error(&self, client: &str, error: &KafkaError, reason: &str) {
        let key = format!("error:{:?}", error.rdkafka_error_code());
        if let Some(suppressed) = self.limit.check(&key, Instant::now()) {
            warn!(client, error = %error, reason, suppressed,
                "kafka client error (repeats of this kind are logged at most every 30 s, with the count left out)");
        }
    }

    /// Logs a line of librdkafka's own log.
    pub fn log(&self, client: &str, level: RDKafkaLogLevel, facility: &str, message: &str) {
        use RDKafkaLogLevel::*;
        // Debug lines (only with `debug=` set) are asked for: never limited.
        let limited = !matches!(level, Debug);
        let suppressed = if limited {
            match self.limit.check(&format!("log:{facility}"), Instant::now()) {
                Some(n) => n,
                None => return,
            }
        } else {
            0
        };
        match level {
            Emerg | Alert | Critical | Error => {
                error!(client, facility, suppressed, "librdkafka: {message}")
            }
            Warning => warn!(client, facility, suppressed, "librdkafka: {message}"),
            Notice | Info => info!(client, facility, suppressed, "librdkafka: {message}"),
            Debug => debug!(client, facility, "librdkafka: {message}"),
        }
    }
}

/// The context of the clients next to the consumer (dead-letter producer,
/// originals reader, watermark probe, `replay-dlq`): their logs rate-limited.
#[derive(Debug)]
pub struct SideContext {
    client: &'static str,
    logs: KafkaLogs,
}

impl SideContext {
    pub fn new(client: &'static str) -> Self {
        SideContext {
            client,
            logs: KafkaLogs::default(),
        }
    }
}

impl ClientContext for SideContext {
    fn log(&self, level: RDKafkaLogLevel, fac: &str, log_message: &str) {
        self.logs.log(self.client, level, fac, log_message);
    }

    fn error(&self, error: KafkaError, reason: &str) {
        self.logs.error(self.client, &error, reason);
    }
}

impl ConsumerContext for SideContext {}

#[cfg(test)]
mod tests {
    use clap::Parser;

    use super::*;
    use crate::config::Cli;

    fn connection(properties: &str) -> Connection {
        let cli = Cli::try_parse_from([
            "patterns-connector",
            "--patterns-webhook-url",
            "https://hooks.example/abc",
            "--kafka-hosts",
            "k1:9093,k2:9093",
            "--kafka-properties",
            properties,
        ])
        .expect("clap");
        Connection::from_config(&Config::from_cli(cli).expect("valid config"))
    }

    #[test]
    fn every_connection_setting_reaches_every_client_not_just_known_prefixes() {
        // Each of these was dropped by the old list of prefixes.
        for key in [
            "enable.ssl.certificate.verification",
            "https.ca.location",
            "enable.sasl.oauthbearer.unsecure.jwt",
            "sasl.oauthbearer.token.endpoint.url",
            "metadata.max.age.ms",
            "topic.metadata.refresh.interval.ms",
            "api.version.request",
            "api.version.fallback.ms",
            "broker.version.fallback",
            "resolve.canonical.bootstrap.servers.only",
            "connections.max.idle.ms",
            "ssl_engine_id",
            "client.dns.lookup",
            "retry.backoff.ms",
            "retry.backoff.max.ms",
            "log.connection.close",
            "debug",
            "client.rack",
            "isolation.level",
            "allow.auto.create.topics",
        ] {
            assert!(is_connection_property(key), "{key} held back");
        }
        for key in [
            "security.protocol",
            "sasl.mechanism",
            "ssl.ca.location",
            "socket.timeout.ms",
            "reconnect.backoff.ms",
        ] {
            assert!(is_connection_property(key), "{key} held back");
        }
    }

    #[test]
    fn group_membership_fetching_and_producer_settings_stay_with_their_client() {
        for key in [
            "group.instance.id",
            "group.protocol",
            "session.timeout.ms",
            "heartbeat.interval.ms",
            "max.poll.interval.ms",
            "fetch.max.bytes",
            "fetch.wait.max.ms",
            "max.partition.fetch.bytes",
            "queued.min.messages",
            "enable.partition.eof",
            "check.crcs",
            "statistics.interval.ms",
            "transactional.id",
            "linger.ms",
            "acks",
            "compression.type",
            "queue.buffering.max.ms",
        ] {
            assert!(!is_connection_property(key), "{key} shared");
        }
    }

    #[test]
    fn the_client_config_holds_the_brokers_the_connection_and_the_client_id() {
        let c = connection(
            "security.protocol=SASL_SSL,enable.ssl.certificate.verification=false,\
             fetch.max.bytes=1000,session.timeout.ms=45000",
        );
        let client = c.client_config("patterns-connector-dlq");
        assert_eq!(client.get("bootstrap.servers"), Some("k1:9093,k2:9093"));
        assert_eq!(client.get("client.id"), Some("patterns-connector-dlq"));
        assert_eq!(client.get("security.protocol"), Some("SASL_SSL"));
        assert_eq!(
            client.get("enable.ssl.certificate.verification"),
            Some("false")
        );
        assert_eq!(client.get("fetch.max.bytes"), None);
        assert_eq!(client.get("session.timeout.ms"), None);
        let consumer_only: Vec<_> = c.consumer_properties().collect();
        assert_eq!(
            consumer_only,
            vec![("fetch.max.bytes", "1000"), ("session.timeout.ms", "45000")]
        );
        // A client.id of the user's (broker quotas) wins over the default.
        let client = connection("client.id=team-a").client_config("patterns-connector-dlq");
        assert_eq!(client.get("client.id"), Some("team-a"));
    }

    #[test]
    fn secrets_reach_the_clients_but_never_the_debug_output() {
        let c = connection(
            "sasl.username=connector,sasl.password=hunter2,ssl.key.password=k3y-pw,\
             sasl.oauthbearer.client.secret=0auth-s3cret",
        );
        let client = c.client_config("x");
        assert_eq!(client.get("sasl.password"), Some("hunter2"));
        assert_eq!(client.get("ssl.key.password"), Some("k3y-pw"));
        assert_eq!(
            client.get("sasl.oauthbearer.client.secret"),
            Some("0auth-s3cret")
        );
        let printed = format!("{c:?}");
        for secret in ["hunter2", "k3y-pw", "0auth-s3cret"] {
            assert!(!printed.contains(secret), "{secret} printed: {printed}");
        }
        assert!(printed.contains("sasl.username=connector"), "{printed}");
        assert!(printed.contains("sasl.password=<redacted>"), "{printed}");
    }
}
