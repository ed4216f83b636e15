//! Configuration: every option is a CLI flag and an environment variable
//! (PostHog's naming). Parsing and validation happen once, at start-up, so a
//! bad value stops the process with a message naming the option.
//!
//! Secrets (the webhook URL's path and query, Kafka passwords passed through
//! `KAFKA_PROPERTIES`) never reach a log line: [`Config`]'s `Debug` and
//! [`Config::redacted_summary`] print them redacted.

mod topics;
pub use topics::Topics;

use std::collections::BTreeMap;
use std::fmt;
use std::net::SocketAddr;
use std::time::Duration;

use clap::{Parser, ValueEnum};
use url::Url;

/// Which PostHog topic format the messages are in.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum InputFormat {
    /// Detect per message: a string `data` field means captured, a string `properties` field means ClickHouse.
    Auto,
    /// `events_plugin_ingestion`: capture's output, the SDK event in a JSON string `data`.
    Captured,
    /// `clickhouse_events_json`: processed events, `properties` as a JSON string.
    Clickhouse,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum LogFormat {
    Text,
    Json,
}

/// Command-line and environment options, exactly as the user writes them.
#[derive(Parser, Clone)]
#[command(
    name = "patterns-connector",
    version,
    about = "Streams PostHog events from Kafka to a Patterns webhook, at least once.",
    long_about = "Reads PostHog's event topic with a Kafka consumer group, batches events per partition, \
POSTs each batch as a JSON array to a webhook, and commits offsets only after the webhook accepted the batch. \
Every option can also be set with the environment variable shown."
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Option<Command>,

    /// Kafka bootstrap servers, comma-separated host:port.
    #[arg(long, env = "KAFKA_HOSTS", default_value = "localhost:9092")]
    pub kafka_hosts: String,

    /// Topics to read: comma-separated names, or one pattern starting with ^
    /// (which also reads matching topics created later). PostHog's topics
    /// may carry a KAFKA_PREFIX. Listed topics that do not exist are
    /// reported once and read when created.
    #[arg(long, env = "KAFKA_TOPIC", default_value = DEFAULT_TOPICS)]
    pub kafka_topic: String,

    /// Consumer group id; replicas with the same group share the partitions.
    #[arg(
        long,
        env = "KAFKA_CONSUMER_GROUP",
        default_value = "patterns-connector"
    )]
    pub kafka_consumer_group: String,

    /// Extra librdkafka properties, comma-separated key=value (e.g.
    /// security.protocol=SASL_SSL,sasl.mechanism=SCRAM-SHA-512,fetch.max.bytes=52428800).
    /// Values of keys containing "password", "secret" or "key" are never printed.
    #[arg(
        long,
        env = "KAFKA_PROPERTIES",
        default_value = "",
        hide_default_value = true,
        hide_env_values = true
    )]
    pub kafka_properties: String,

    /// Webhook URL that receives the batches (required). Its path and query are
    /// treated as secret and never logged.
    #[arg(long, env = "PATTERNS_WEBHOOK_URL", hide_env_values = true)]
    pub patterns_webhook_url: String,

    /// Comma-separated event names to deliver (spaces trimmed); empty delivers every event.
    #[arg(long, env = "ALLOWED_EVENT_TYPES", default_value = "")]
    pub allowed_event_types: String,

    /// Deliver only events of this project API token (phc_...); empty means every project.
    #[arg(long, env = "POSTHOG_PROJECT_TOKEN", default_value = "")]
    pub posthog_project_token: String,

    /// Deliver only events of this team id; empty means every team.
    #[arg(long, env = "POSTHOG_TEAM_ID", default_value = "")]
    pub posthog_team_id: String,

    /// Message format of the topic.
    #[arg(long, env = "INPUT_FORMAT", value_enum, default_value = "auto")]
    pub input_format: InputFormat,

    /// Most events in one webhook request.
    #[arg(long, env = "BATCH_MAX_EVENTS", default_value = "500")]
    pub batch_max_events: String,

    /// Most bytes in one request body (the encoded JSON array).
    #[arg(long, env = "BATCH_MAX_BYTES", default_value = "1048576")]
    pub batch_max_bytes: String,

    /// Longest time an event waits for its batch to fill, in milliseconds.
    #[arg(long, env = "BATCH_LINGER_MS", default_value = "1000")]
    pub batch_linger_ms: String,

    /// Timeout of one webhook request, in milliseconds.
    #[arg(long, env = "WEBHOOK_TIMEOUT_MS", default_value = "30000")]
    pub webhook_timeout_ms: String,

    /// First retry delay after a failed request, in milliseconds (doubles each attempt, full jitter).
    #[arg(long, env = "RETRY_BACKOFF_MIN_MS", default_value = "200")]
    pub retry_backoff_min_ms: String,

    /// Longest retry delay, in milliseconds.
    #[arg(long, env = "RETRY_BACKOFF_MAX_MS", default_value = "30000")]
    pub retry_backoff_max_ms: String,

    /// Most webhook requests in flight at once, across all partitions.
    #[arg(long, env = "MAX_CONCURRENT_REQUESTS", default_value = "16")]
    pub max_concurrent_requests: String,

    /// Order kept at the webhook: `partition` (one batch in flight per
    /// partition, the whole partition in order) or `key` (up to KEY_LANES
    /// batches in flight per partition, each message key's events in order).
    #[arg(long, env = "ORDERING", value_enum, default_value = "partition")]
    pub ordering: DeliveryOrder,

    /// Under ORDERING=key, most lanes (batches in flight) per partition, 1 to 64.
    #[arg(long, env = "KEY_LANES", default_value = "8")]
    pub key_lanes: String,

    /// Cap on bytes of consumed-but-undelivered messages held in memory; partitions
    /// over their share are paused until deliveries catch up.
    #[arg(long, env = "MAX_BUFFERED_BYTES", default_value = "67108864")]
    pub max_buffered_bytes: String,

    /// How often delivered offsets are committed to Kafka, in milliseconds.
    #[arg(long, env = "COMMIT_INTERVAL_MS", default_value = "5000")]
    pub commit_interval_ms: String,

    /// On SIGTERM or partition revocation, how long in-flight batches may take to finish, in milliseconds.
    #[arg(long, env = "SHUTDOWN_TIMEOUT_MS", default_value = "20000")]
    pub shutdown_timeout_ms: String,

    /// Address of the HTTP server for /metrics, /healthz and /readyz.
    #[arg(long, env = "HTTP_ADDR", default_value = "0.0.0.0:9464")]
    pub http_addr: String,

    /// Log format.
    #[arg(long, env = "LOG_FORMAT", value_enum, default_value = "text")]
    pub log_format: LogFormat,

    /// Log filter (tracing's EnvFilter syntax).
    #[arg(long, env = "LOG_LEVEL", default_value = "info")]
    pub log_level: String,

    /// Topic for messages that cannot be delivered (not a PostHog event, too
    /// large, or rejected by the webhook), with headers saying why.
    #[arg(long, env = "DLQ_TOPIC", default_value = "patterns_connector_dlq")]
    pub dlq_topic: String,

    /// What to do with such a message: `dlq` writes it to DLQ_TOPIC and moves
    /// on; `block` stops its partition (retrying) until an operator acts.
    #[arg(long, env = "DLQ_POLICY", value_enum, default_value = "dlq")]
    pub dlq_policy: DlqPolicy,

    /// Where a consumer group with no committed offset starts: `earliest`
    /// (every retained event), `latest` (new events only) or an RFC 3339 time
    /// (events from then on). An existing commit always wins.
    #[arg(long, env = "START_AT", default_value = "earliest")]
    pub start_at: String,

    /// Extra request headers, `Name: value` entries separated by `;` or new
    /// lines (e.g. `X-Api-Key: abc; X-Team: data`). Values are never logged.
    #[arg(
        long,
        env = "WEBHOOK_HEADERS",
        default_value = "",
        hide_default_value = true,
        hide_env_values = true
    )]
    pub webhook_headers: String,

    /// Bearer token sent as `Authorization: Bearer <token>`.
    #[arg(
        long,
        env = "WEBHOOK_BEARER_TOKEN",
        default_value = "",
        hide_default_value = true,
        hide_env_values = true
    )]
    pub webhook_bearer_token: String,

    /// File holding the bearer token (e.g. a mounted Kubernetes secret); wins over WEBHOOK_BEARER_TOKEN.
    #[arg(long, env = "WEBHOOK_BEARER_TOKEN_FILE")]
    pub webhook_bearer_token_file: Option<String>,

    /// Secret for HMAC-SHA256 request signing (see the README); empty disables signing.
    #[arg(
        long,
        env = "WEBHOOK_SIGNING_SECRET",
        default_value = "",
        hide_default_value = true,
        hide_env_values = true
    )]
    pub webhook_signing_secret: String,

    /// File holding the signing secret; wins over WEBHOOK_SIGNING_SECRET.
    #[arg(long, env = "WEBHOOK_SIGNING_SECRET_FILE")]
    pub webhook_signing_secret_file: Option<String>,

    /// Compress request bodies with gzip (`Content-Encoding: gzip`).
    #[arg(long, env = "WEBHOOK_GZIP", default_value = "false")]
    pub webhook_gzip: String,

    /// PEM file of CA certificates to trust for the webhook's TLS, in addition to the built-in roots.
    #[arg(long, env = "WEBHOOK_CA_BUNDLE")]
    pub webhook_ca_bundle: Option<String>,

    /// File holding the Kafka SASL password (sets sasl.password; wins over KAFKA_PROPERTIES).
    #[arg(long, env = "KAFKA_SASL_PASSWORD_FILE")]
    pub kafka_sasl_password_file: Option<String>,

    /// Kafka SASL password (sets sasl.password). Never logged.
    #[arg(
        long,
        env = "KAFKA_SASL_PASSWORD",
        default_value = "",
        hide_default_value = true,
        hide_env_values = true
    )]
    pub kafka_sasl_password: String,

    /// HTTP statuses that mean "the webhook refuses these events": the batch is
    /// split to isolate the refused events, which go to the dead-letter topic.
    /// Ranges allowed (e.g. 400,413,422). Any other non-2xx status is retried.
    #[arg(long, env = "WEBHOOK_REJECT_STATUSES", default_value = "400,413,422")]
    pub webhook_reject_statuses: String,
}

/// What to run; without a subcommand, the connector itself.
#[derive(Debug, Clone, clap::Subcommand)]
pub enum Command {
    /// Sends the events of DLQ_TOPIC to the webhook again (after the cause was
    /// fixed), committing as it goes, then exits. Events that still fail stay
    /// in the dead-letter topic.
    ReplayDlq {
        /// Consumer group of the replay; defaults to `<KAFKA_CONSUMER_GROUP>-replay`.
        /// A new group replays the whole topic.
        #[arg(long, env = "REPLAY_GROUP")]
        group: Option<String>,
    },
    /// Exits 0 when the running connector's /healthz (at HTTP_ADDR, on
    /// loopback for a wildcard address) answers 200, else 1: the image's HEALTHCHECK.
    Healthcheck,
}

/// What happens to a message that cannot be delivered.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum DlqPolicy {
    /// Write it to the dead-letter topic; the partition moves on.
    Dlq,
    /// Keep retrying it; the partition waits until an operator acts.
    Block,
}

/// The order deliveries keep (`ORDERING`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum DeliveryOrder {
    /// One batch in flight per partition: the partition's order.
    Partition,
    /// Batches in flight per lane of a partition, messages assigned to a
    /// lane by a hash of their key: each key's order.
    Key,
}

/// A validated configuration, passed whole to the parts that need it.
#[derive(Clone)]
pub struct Config {
    pub kafka_hosts: String,
    /// What `KAFKA_TOPIC` names (a list or a pattern).
    pub topics: Topics,
    pub kafka_consumer_group: String,
    pub kafka_properties: BTreeMap<String, String>,
    pub webhook_url: Url,
    pub allowed_event_types: Vec<String>,
    pub project_token: Option<String>,
    pub team_id: Option<i64>,
    pub input_format: InputFormat,
    pub batch: BatchLimits,
    pub webhook_timeout: Duration,
    pub retry_backoff_min: Duration,
    pub retry_backoff_max: Duration,
    pub max_concurrent_requests: usize,
    pub ordering: DeliveryOrder,
    /// Most lanes per partition under `ORDERING=key` (`KEY_LANES`).
    pub key_lanes: usize,
    pub max_buffered_bytes: usize,
    pub commit_interval: Duration,
    pub shutdown_timeout: Duration,
    pub http_addr: SocketAddr,
    pub log_format: LogFormat,
    pub log_level: String,
    pub dlq_topic: String,
    pub dlq_policy: DlqPolicy,
    /// Statuses that reject the events of a batch (see `WEBHOOK_REJECT_STATUSES`).
    pub reject_statuses: StatusSet,
    /// Extra request headers, auth included. Values are secret.
    pub webhook_headers: Vec<(String, String)>,
    pub signing_secret: Option<String>,
    pub webhook_gzip: bool,
    /// PEM bytes of extra CA certificates.
    pub webhook_ca_bundle: Option<Vec<u8>>,
    pub start_at: StartAt,
}

/// Where a new consumer group starts reading.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StartAt {
    Earliest,
    Latest,
    Time(chrono::DateTime<chrono::Utc>),
}

impl StartAt {
    pub fn parse(raw: &str) -> Result<Self, ConfigError> {
        match raw.trim() {
            "earliest" => Ok(StartAt::Earliest),
            "latest" => Ok(StartAt::Latest),
            other => chrono::DateTime::parse_from_rfc3339(other)
                .map(|t| StartAt::Time(t.with_timezone(&chrono::Utc)))
                .map_err(|_| {
                    bad(
                        "START_AT",
                        format!("expected earliest, latest or an RFC 3339 time such as 2024-05-01T00:00:00Z, got {raw:?}"),
                    )
                }),
        }
    }
}

/// Reads a secret from a file (trailing newline trimmed), naming the option on failure.
fn secret_file(option: &'static str, path: &str) -> Result<String, ConfigError> {
    std::fs::read_to_string(path)
        .map(|s| s.trim_end_matches(['\n', '\r']).to_owned())
        .map_err(|e| bad(option, format!("cannot read {path}: {e}")))
}

/// The secret from `file` if given, else from `value`; None when both are empty.
fn secret(
    option: &'static str,
    value: &str,
    file: Option<&str>,
) -> Result<Option<String>, ConfigError> {
    let secret = match file.filter(|f| !f.trim().is_empty()) {
        Some(path) => secret_file(option, path.trim())?,
        None => value.to_owned(),
    };
    Ok((!secret.is_empty()).then_some(secret))
}

/// Parses `Name: value; Name: value` (or one per line).
pub fn parse_headers(raw: &str) -> Result<Vec<(String, String)>, ConfigError> {
    let mut headers = Vec::new();
    for entry in raw
        .split([';', '\n'])
        .map(str::trim)
        .filter(|e| !e.is_empty())
    {
        let (name, value) = entry.split_once(':').ok_or_else(|| {
            bad(
                "WEBHOOK_HEADERS",
                "expected `Name: value` entries separated by `;` or new lines",
            )
        })?;
        let name = name.trim();
        let valid_name = !name.is_empty()
            && name
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"-_!#$%&'*+.^`|~".contains(&b));
        if !valid_name {
            return Err(bad(
                "WEBHOOK_HEADERS",
                format!("{name:?} is not a valid header name"),
            ));
        }
        let value = value.trim();
        if value.bytes().any(|b| b < 0x20 && b != b'\t') {
            return Err(bad(
                "WEBHOOK_HEADERS",
                format!("the value of {name} holds a control character"),
            ));
        }
        if name.eq_ignore_ascii_case("content-type")
            || name.eq_ignore_ascii_case("content-encoding")
        {
            return Err(bad(
                "WEBHOOK_HEADERS",
                format!("{name} is set by the connector"),
            ));
        }
        headers.push((name.to_owned(), value.to_owned()));
    }
    Ok(headers)
}

fn boolean(option: &'static str, raw: &str) -> Result<bool, ConfigError> {
    match raw.trim().to_ascii_lowercase().as_str() {
        "true" | "1" | "yes" | "on" => Ok(true),
        "false" | "0" | "no" | "off" | "" => Ok(false),
        _ => Err(bad(option, format!("expected true or false, got {raw:?}"))),
    }
}

/// A set of HTTP statuses, parsed from `400,413,500-599`.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct StatusSet(Vec<(u16, u16)>);

impl StatusSet {
    pub fn contains(&self, status: u16) -> bool {
        self.0.iter().any(|(lo, hi)| (*lo..=*hi).contains(&status))
    }

    pub fn parse(option: &'static str, raw: &str) -> Result<Self, ConfigError> {
        let mut ranges = Vec::new();
        for part in raw.split(',').map(str::trim).filter(|p| !p.is_empty()) {
            let (lo, hi) = part.split_once('-').unwrap_or((part, part));
            let parse = |v: &str| {
                v.trim()
                    .parse::<u16>()
                    .ok()
                    .filter(|s| (300..=599).contains(s))
                    .ok_or_else(|| {
                        bad(
                            option,
                            format!("expected HTTP statuses or ranges between 300 and 599 (e.g. 400,413,422), got {part:?}"),
                        )
                    })
            };
            let (lo, hi) = (parse(lo)?, parse(hi)?);
            if lo > hi {
                return Err(bad(option, format!("range {part:?} is empty")));
            }
            for retried in [408, 429] {
                if (lo..=hi).contains(&retried) {
                    return Err(bad(option, format!("{retried} means \"try again later\" and is always retried; leave it out of {part:?}")));
                }
            }
            ranges.push((lo, hi));
        }
        Ok(StatusSet(ranges))
    }
}

/// When a partition's open batch is sealed and sent.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BatchLimits {
    pub max_events: usize,
    pub max_bytes: usize,
    pub linger: Duration,
}

/// A bad option value: names the option and says what was expected.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("invalid value for {option}: {problem}")]
pub struct ConfigError {
    pub option: &'static str,
    pub problem: String,
}

/// Room between a revocation's longest drain and `max.poll.interval.ms`.
const POLL_INTERVAL_MARGIN: Duration = Duration::from_secs(10);

/// A revocation drains in-flight batches inside librdkafka's rebalance
/// callback, for up to `SHUTDOWN_TIMEOUT_MS`, and the consumer does not poll
/// meanwhile. A `max.poll.interval.ms` shorter than that makes the group drop
/// the replica in the middle of every slow drain.
fn check_poll_interval(
    properties: &BTreeMap<String, String>,
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

pub(crate) fn bad(option: &'static str, problem: impl Into<String>) -> ConfigError {
    ConfigError {
        option,
        problem: problem.into(),
    }
}

fn number<T>(option: &'static str, raw: &str, min: T, max: T, unit: &str) -> Result<T, ConfigError>
where
    T: std::str::FromStr + PartialOrd + fmt::Display + Copy,
{
    let value: T = raw.trim().parse().map_err(|_| {
        bad(
            option,
            format!("expected a whole number of {unit} between {min} and {max}, got {raw:?}"),
        )
    })?;
    if value < min || value > max {
        return Err(bad(
            option,
            format!("expected a whole number of {unit} between {min} and {max}, got {raw:?}"),
        ));
    }
    Ok(value)
}

fn millis(option: &'static str, raw: &str, min: u64, max: u64) -> Result<Duration, ConfigError> {
    number(option, raw, min, max, "milliseconds").map(Duration::from_millis)
}

/// Splits the old app's comma-separated allow-list: spaces trimmed, empties dropped.
pub fn parse_allow_list(raw: &str) -> Vec<String> {
    raw.split(',')
        .map(str::trim)
        .filter(|name| !name.is_empty())
        .map(str::to_owned)
        .collect()
}

/// Parses `key=value,key=value` librdkafka properties, refusing the ones the
/// connector sets itself (see [`refused_kafka_property`]).
pub fn parse_kafka_properties(raw: &str) -> Result<BTreeMap<String, String>, ConfigError> {
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
];

/// Why `key` may not be set in `KAFKA_PROPERTIES`, if it may not.
pub fn refused_kafka_property(key: &str) -> Option<&'static str> {
    MANAGED_KAFKA_PROPERTIES
        .iter()
        .find(|(managed, _)| *managed == key)
        .map(|(_, why)| *why)
}

/// Longest topic name Kafka accepts.
const MAX_TOPIC_NAME: usize = 249;

/// `KAFKA_TOPIC`'s default: where PostHog's capture writes analytics events,
/// across its generations (README, "Which topics to read"). Topics a version
/// never creates are reported once as missing and skipped.
pub const DEFAULT_TOPICS: &str = "events_plugin_ingestion,events_plugin_ingestion_historical,events_plugin_ingestion_overflow,error_tracking_events,events_plugin_ingestion_ai";

/// A topic name, as `option` gives it: one topic, named. librdkafka reads a
/// name starting with `^` as a regex subscription, which the connector's
/// per-topic code cannot follow (it would deliver nothing).
pub(crate) fn topic_name(option: &'static str, raw: &str) -> Result<String, ConfigError> {
    let topic = raw.trim();
    if topic.is_empty() {
        return Err(bad(option, "expected a topic name, got an empty value"));
    }
    if topic.starts_with('^') {
        return Err(bad(
            option,
            format!("topic patterns are not supported; name the topic (got {topic:?})"),
        ));
    }
    if topic.contains(',') {
        return Err(bad(
            option,
            format!("lists of topics are not supported yet; name one topic (got {topic:?})"),
        ));
    }
    let legal = topic
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b));
    if !legal || topic.len() > MAX_TOPIC_NAME || topic == "." || topic == ".." {
        return Err(bad(
            option,
            format!(
                "expected a Kafka topic name (up to {MAX_TOPIC_NAME} letters, digits, '.', '_' and '-'), got {topic:?}"
            ),
        ));
    }
    Ok(topic.to_owned())
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

/// The webhook URL with its path and query hidden: Patterns' webhook URLs carry
/// their secret there. Only scheme, host and port remain.
pub fn redact_url(url: &Url) -> String {
    let host = url.host_str().unwrap_or("?");
    let port = url.port().map(|p| format!(":{p}")).unwrap_or_default();
    let hidden = if url.path() != "/" || url.query().is_some() {
        "/<redacted>"
    } else {
        "/"
    };
    format!("{}://{host}{port}{hidden}", url.scheme())
}

impl Config {
    /// Validates the raw options.
    pub fn from_cli(cli: Cli) -> Result<Self, ConfigError> {
        let webhook_url = Url::parse(cli.patterns_webhook_url.trim()).map_err(|e| {
            bad(
                "PATTERNS_WEBHOOK_URL",
                format!("expected an absolute http:// or https:// URL ({e})"),
            )
        })?;
        if !matches!(webhook_url.scheme(), "http" | "https") || webhook_url.host_str().is_none() {
            return Err(bad(
                "PATTERNS_WEBHOOK_URL",
                "expected an absolute http:// or https:// URL with a host",
            ));
        }
        if !webhook_url.username().is_empty() || webhook_url.password().is_some() {
            return Err(bad(
                "PATTERNS_WEBHOOK_URL",
                "credentials in the URL (user:password@) are not supported",
            ));
        }
        let non_empty = |option: &'static str, raw: &str| {
            let v = raw.trim();
            if v.is_empty() {
                Err(bad(option, "expected a non-empty value"))
            } else {
                Ok(v.to_owned())
            }
        };
        let team_id = match cli.posthog_team_id.trim() {
            "" => None,
            raw => Some(number("POSTHOG_TEAM_ID", raw, 0, i64::MAX, "team id")?),
        };
        let mut webhook_headers = parse_headers(&cli.webhook_headers)?;
        if let Some(token) = secret(
            "WEBHOOK_BEARER_TOKEN_FILE",
            &cli.webhook_bearer_token,
            cli.webhook_bearer_token_file.as_deref(),
        )? {
            if webhook_headers
                .iter()
                .any(|(n, _)| n.eq_ignore_ascii_case("authorization"))
            {
                return Err(bad(
                    "WEBHOOK_BEARER_TOKEN",
                    "WEBHOOK_HEADERS already sets Authorization",
                ));
            }
            webhook_headers.push(("Authorization".into(), format!("Bearer {token}")));
        }
        let mut kafka_properties = parse_kafka_properties(&cli.kafka_properties)?;
        if let Some(password) = secret(
            "KAFKA_SASL_PASSWORD_FILE",
            &cli.kafka_sasl_password,
            cli.kafka_sasl_password_file.as_deref(),
        )? {
            kafka_properties.insert("sasl.password".into(), password);
        }
        let start_at = StartAt::parse(&cli.start_at)?;
        let topics = Topics::parse("KAFKA_TOPIC", &cli.kafka_topic)?;
        let dlq_topic = topic_name("DLQ_TOPIC", &cli.dlq_topic)?;
        if topics.matches(&dlq_topic) {
            return Err(bad(
                "DLQ_TOPIC",
                format!(
                    "expected a topic other than KAFKA_TOPIC ({topics}), listed or matched: dead letters would be read again as input"
                ),
            ));
        }
        let shutdown_timeout = millis(
            "SHUTDOWN_TIMEOUT_MS",
            &cli.shutdown_timeout_ms,
            0,
            3_600_000,
        )?;
        check_poll_interval(&kafka_properties, shutdown_timeout)?;
        let token = cli.posthog_project_token.trim();
        if !token.is_empty() && cli.input_format == InputFormat::Clickhouse {
            return Err(bad(
                "POSTHOG_PROJECT_TOKEN",
                "clickhouse_events_json messages carry no project token; filter them with POSTHOG_TEAM_ID instead",
            ));
        }
        let batch = BatchLimits {
            max_events: number(
                "BATCH_MAX_EVENTS",
                &cli.batch_max_events,
                1,
                1_000_000,
                "events",
            )?,
            max_bytes: number(
                "BATCH_MAX_BYTES",
                &cli.batch_max_bytes,
                1024,
                1 << 30,
                "bytes",
            )?,
            linger: millis("BATCH_LINGER_MS", &cli.batch_linger_ms, 0, 3_600_000)?,
        };
        let retry_backoff_min = millis(
            "RETRY_BACKOFF_MIN_MS",
            &cli.retry_backoff_min_ms,
            1,
            3_600_000,
        )?;
        let retry_backoff_max = millis(
            "RETRY_BACKOFF_MAX_MS",
            &cli.retry_backoff_max_ms,
            1,
            3_600_000,
        )?;
        if retry_backoff_max < retry_backoff_min {
            return Err(bad(
                "RETRY_BACKOFF_MAX_MS",
                format!(
                    "expected at least RETRY_BACKOFF_MIN_MS ({} ms), got {:?}",
                    retry_backoff_min.as_millis(),
                    cli.retry_backoff_max_ms
                ),
            ));
        }
        Ok(Config {
            kafka_hosts: non_empty("KAFKA_HOSTS", &cli.kafka_hosts)?,
            topics,
            kafka_consumer_group: non_empty("KAFKA_CONSUMER_GROUP", &cli.kafka_consumer_group)?,
            kafka_properties,
            webhook_url,
            allowed_event_types: parse_allow_list(&cli.allowed_event_types),
            project_token: (!token.is_empty()).then(|| token.to_owned()),
            team_id,
            input_format: cli.input_format,
            batch,
            webhook_timeout: millis("WEBHOOK_TIMEOUT_MS", &cli.webhook_timeout_ms, 1, 3_600_000)?,
            retry_backoff_min,
            retry_backoff_max,
            max_concurrent_requests: number(
                "MAX_CONCURRENT_REQUESTS",
                &cli.max_concurrent_requests,
                1,
                10_000,
                "requests",
            )?,
            ordering: cli.ordering,
            key_lanes: number("KEY_LANES", &cli.key_lanes, 1, 64, "lanes")?,
            max_buffered_bytes: number(
                "MAX_BUFFERED_BYTES",
                &cli.max_buffered_bytes,
                1 << 20,
                usize::MAX,
                "bytes",
            )?,
            commit_interval: millis("COMMIT_INTERVAL_MS", &cli.commit_interval_ms, 100, 600_000)?,
            shutdown_timeout,
            http_addr: cli.http_addr.trim().parse().map_err(|_| {
                bad(
                    "HTTP_ADDR",
                    format!(
                        "expected an IP address and port such as 0.0.0.0:9464, got {:?}",
                        cli.http_addr
                    ),
                )
            })?,
            log_format: cli.log_format,
            log_level: cli.log_level,
            dlq_topic,
            dlq_policy: cli.dlq_policy,
            reject_statuses: StatusSet::parse(
                "WEBHOOK_REJECT_STATUSES",
                &cli.webhook_reject_statuses,
            )?,
            webhook_headers,
            start_at,
            signing_secret: secret(
                "WEBHOOK_SIGNING_SECRET_FILE",
                &cli.webhook_signing_secret,
                cli.webhook_signing_secret_file.as_deref(),
            )?,
            webhook_gzip: boolean("WEBHOOK_GZIP", &cli.webhook_gzip)?,
            webhook_ca_bundle: match cli
                .webhook_ca_bundle
                .as_deref()
                .map(str::trim)
                .filter(|p| !p.is_empty())
            {
                None => None,
                Some(path) => {
                    let pem = std::fs::read(path).map_err(|e| {
                        bad("WEBHOOK_CA_BUNDLE", format!("cannot read {path}: {e}"))
                    })?;
                    let certs = reqwest::Certificate::from_pem_bundle(&pem).map_err(|e| {
                        bad(
                            "WEBHOOK_CA_BUNDLE",
                            format!("{path} is not a PEM certificate bundle: {e}"),
                        )
                    })?;
                    if certs.is_empty() {
                        return Err(bad(
                            "WEBHOOK_CA_BUNDLE",
                            format!("{path} holds no PEM certificate"),
                        ));
                    }
                    Some(pem)
                }
            },
        })
    }

    /// One line per option for the start-up log, secrets redacted.
    pub fn redacted_summary(&self) -> Vec<(&'static str, String)> {
        let props = self
            .kafka_properties
            .iter()
            .map(|(k, v)| {
                if is_secret_key(k) {
                    format!("{k}=<redacted>")
                } else {
                    format!("{k}={v}")
                }
            })
            .collect::<Vec<_>>()
            .join(",");
        vec![
            ("KAFKA_HOSTS", self.kafka_hosts.clone()),
            ("KAFKA_TOPIC", self.topics.to_string()),
            ("KAFKA_CONSUMER_GROUP", self.kafka_consumer_group.clone()),
            ("KAFKA_PROPERTIES", props),
            ("PATTERNS_WEBHOOK_URL", redact_url(&self.webhook_url)),
            ("ALLOWED_EVENT_TYPES", self.allowed_event_types.join(",")),
            (
                "POSTHOG_PROJECT_TOKEN",
                self.project_token.clone().unwrap_or_default(),
            ),
            (
                "POSTHOG_TEAM_ID",
                self.team_id.map(|t| t.to_string()).unwrap_or_default(),
            ),
            ("INPUT_FORMAT", format!("{:?}", self.input_format)),
            ("BATCH_MAX_EVENTS", self.batch.max_events.to_string()),
            ("BATCH_MAX_BYTES", self.batch.max_bytes.to_string()),
            ("BATCH_LINGER_MS", self.batch.linger.as_millis().to_string()),
            (
                "WEBHOOK_TIMEOUT_MS",
                self.webhook_timeout.as_millis().to_string(),
            ),
            (
                "RETRY_BACKOFF_MIN_MS",
                self.retry_backoff_min.as_millis().to_string(),
            ),
            (
                "RETRY_BACKOFF_MAX_MS",
                self.retry_backoff_max.as_millis().to_string(),
            ),
            (
                "MAX_CONCURRENT_REQUESTS",
                self.max_concurrent_requests.to_string(),
            ),
            ("ORDERING", format!("{:?}", self.ordering)),
            ("KEY_LANES", self.key_lanes.to_string()),
            ("MAX_BUFFERED_BYTES", self.max_buffered_bytes.to_string()),
            (
                "COMMIT_INTERVAL_MS",
                self.commit_interval.as_millis().to_string(),
            ),
            (
                "SHUTDOWN_TIMEOUT_MS",
                self.shutdown_timeout.as_millis().to_string(),
            ),
            ("HTTP_ADDR", self.http_addr.to_string()),
            ("DLQ_TOPIC", self.dlq_topic.clone()),
            ("START_AT", format!("{:?}", self.start_at)),
            (
                "WEBHOOK_HEADERS",
                self.webhook_headers
                    .iter()
                    .map(|(name, _)| format!("{name}: <redacted>"))
                    .collect::<Vec<_>>()
                    .join("; "),
            ),
            (
                "WEBHOOK_SIGNING_SECRET",
                if self.signing_secret.is_some() {
                    "<redacted>"
                } else {
                    ""
                }
                .to_owned(),
            ),
            ("WEBHOOK_GZIP", self.webhook_gzip.to_string()),
            (
                "WEBHOOK_CA_BUNDLE",
                if self.webhook_ca_bundle.is_some() {
                    "set"
                } else {
                    ""
                }
                .to_owned(),
            ),
            ("DLQ_POLICY", format!("{:?}", self.dlq_policy)),
            (
                "WEBHOOK_REJECT_STATUSES",
                self.reject_statuses
                    .0
                    .iter()
                    .map(|(lo, hi)| {
                        if lo == hi {
                            lo.to_string()
                        } else {
                            format!("{lo}-{hi}")
                        }
                    })
                    .collect::<Vec<_>>()
                    .join(","),
            ),
        ]
    }
}

impl fmt::Debug for Config {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut s = f.debug_struct("Config");
        for (name, value) in self.redacted_summary() {
            s.field(name, &value);
        }
        s.finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cli(args: &[&str]) -> Result<Config, String> {
        let mut argv = vec![
            "patterns-connector",
            "--patterns-webhook-url",
            "https://hooks.example/abc/secret-token?key=s3cret",
        ];
        argv.extend_from_slice(args);
        let cli = Cli::try_parse_from(argv).map_err(|e| e.to_string())?;
        Config::from_cli(cli).map_err(|e| e.to_string())
    }

    #[test]
    fn defaults_match_the_documented_values() {
        let config = cli(&[]).expect("defaults are valid");
        assert_eq!(
            config.topics.subscription(),
            DEFAULT_TOPICS.split(',').map(str::trim).collect::<Vec<_>>()
        );
        assert_eq!(config.kafka_consumer_group, "patterns-connector");
        assert_eq!(config.batch.max_events, 500);
        assert_eq!(config.batch.max_bytes, 1 << 20);
        assert_eq!(config.batch.linger, Duration::from_millis(1000));
        assert!(config.allowed_event_types.is_empty());
        assert_eq!(config.project_token, None);
    }

    #[test]
    fn ordering_defaults_to_partition_with_eight_key_lanes_and_key_lanes_are_bounded() {
        let config = cli(&[]).expect("defaults are valid");
        assert_eq!(config.ordering, DeliveryOrder::Partition);
        assert_eq!(config.key_lanes, 8);
        let config = cli(&["--ordering", "key", "--key-lanes", "64"]).expect("64 lanes are valid");
        assert_eq!(config.ordering, DeliveryOrder::Key);
        assert_eq!(config.key_lanes, 64);
        for bad in ["0", "65", "many"] {
            let err = cli(&["--key-lanes", bad]).unwrap_err();
            assert!(err.contains("KEY_LANES"), "{err}");
            assert!(err.contains("between 1 and 64"), "{err}");
        }
        assert!(cli(&["--ordering", "none"]).is_err());
    }

    #[test]
    fn allow_list_trims_spaces_and_drops_empty_entries_like_the_old_app() {
        assert_eq!(
            parse_allow_list(" $pageview, $autocapture ,,signed up"),
            vec!["$pageview", "$autocapture", "signed up"]
        );
        assert!(parse_allow_list("  ").is_empty());
    }

    #[test]
    fn a_bad_number_names_the_option_and_the_expected_range() {
        let err = cli(&["--batch-max-events", "lots"]).unwrap_err();
        assert!(err.contains("BATCH_MAX_EVENTS"), "{err}");
        assert!(err.contains("between 1 and"), "{err}");
        let err = cli(&["--batch-max-bytes", "10"]).unwrap_err();
        assert!(err.contains("BATCH_MAX_BYTES"), "{err}");
    }

    #[test]
    fn a_non_http_webhook_url_is_rejected_without_echoing_it() {
        let cli = Cli::try_parse_from([
            "patterns-connector",
            "--patterns-webhook-url",
            "ftp://host/secret-path",
        ])
        .expect("clap accepts any string");
        let err = Config::from_cli(cli).unwrap_err().to_string();
        assert!(err.contains("PATTERNS_WEBHOOK_URL"), "{err}");
        assert!(!err.contains("secret-path"), "{err}");
    }

    #[test]
    fn backoff_max_below_min_is_rejected() {
        let err = cli(&[
            "--retry-backoff-min-ms",
            "500",
            "--retry-backoff-max-ms",
            "100",
        ])
        .unwrap_err();
        assert!(err.contains("RETRY_BACKOFF_MAX_MS"), "{err}");
    }

    #[test]
    fn kafka_properties_parse_and_managed_keys_are_refused() {
        let props = parse_kafka_properties("security.protocol=SASL_SSL, sasl.password=hunter2")
            .expect("valid");
        assert_eq!(props["security.protocol"], "SASL_SSL");
        assert_eq!(props["sasl.password"], "hunter2");
        let err = parse_kafka_properties("enable.auto.offset.store=true").unwrap_err();
        assert_eq!(err.option, "KAFKA_PROPERTIES");
        let err = parse_kafka_properties("sasl.password")
            .unwrap_err()
            .to_string();
        assert!(!err.contains("sasl.password"), "{err}");
    }

    #[test]
    fn kafka_topic_takes_a_list_or_a_pattern_and_refuses_empty_or_bad_names() {
        let config = cli(&[
            "--kafka-topic",
            "events_plugin_ingestion, events_plugin_ingestion_historical",
        ])
        .expect("a list");
        assert_eq!(
            config.topics.subscription(),
            [
                "events_plugin_ingestion",
                "events_plugin_ingestion_historical"
            ]
        );
        let config = cli(&["--kafka-topic", "^events_.*"]).expect("a pattern");
        assert!(config.topics.matches("events_x") && config.topics.listed().is_none());
        let err = cli(&["--kafka-topic", "  "]).unwrap_err();
        assert!(
            err.contains("KAFKA_TOPIC") && err.contains("empty"),
            "{err}"
        );
        let err = cli(&["--kafka-topic", "events plugin"]).unwrap_err();
        assert!(
            err.contains("KAFKA_TOPIC") && err.contains("topic name"),
            "{err}"
        );
        let err = cli(&["--dlq-topic", "^dlq"]).unwrap_err();
        assert!(err.contains("DLQ_TOPIC"), "{err}");
        // PostHog's prefixed topic names are fine, and spaces around are trimmed.
        let config = cli(&["--kafka-topic", " prod_events_plugin_ingestion.v2-x "]).expect("valid");
        assert_eq!(
            config.topics.subscription(),
            ["prod_events_plugin_ingestion.v2-x"]
        );
    }

    #[test]
    fn the_dead_letter_topic_must_differ_from_the_input_topic() {
        let err = cli(&["--kafka-topic", "events", "--dlq-topic", " events"]).unwrap_err();
        assert!(
            err.contains("DLQ_TOPIC") && err.contains("KAFKA_TOPIC (events)"),
            "{err}"
        );
        assert!(cli(&["--kafka-topic", "events", "--dlq-topic", "events_dlq"]).is_ok());
        let err = cli(&["--kafka-topic", "a,events", "--dlq-topic", "events"]).unwrap_err();
        assert!(
            err.contains("DLQ_TOPIC") && err.contains("KAFKA_TOPIC (a,events)"),
            "{err}"
        );
        let err = cli(&["--kafka-topic", "^ev.*", "--dlq-topic", "events_dlq"]).unwrap_err();
        assert!(
            err.contains("DLQ_TOPIC") && err.contains("matched"),
            "{err}"
        );
    }

    #[test]
    fn kafka_properties_owned_by_other_options_or_by_the_guarantee_are_refused_with_what_to_do() {
        for (property, instead) in [
            ("bootstrap.servers=k:9092", "KAFKA_HOSTS"),
            ("metadata.broker.list=k:9092", "KAFKA_HOSTS"),
            ("group.id=other", "KAFKA_CONSUMER_GROUP"),
            ("auto.offset.reset=latest", "START_AT"),
            ("auto.commit.interval.ms=100", "COMMIT_INTERVAL_MS"),
            ("enable.auto.commit=false", "at-least-once guarantee"),
            ("auto.commit.enable=false", "at-least-once guarantee"),
            ("enable.auto.offset.store=true", "at-least-once guarantee"),
            ("partition.assignment.strategy=range", "delivery guarantee"),
        ] {
            let err = cli(&[
                "--kafka-properties",
                &format!("security.protocol=SSL, {property}"),
            ])
            .unwrap_err();
            let key = property.split('=').next().expect("key");
            assert!(
                err.contains("KAFKA_PROPERTIES") && err.contains(key) && err.contains(instead),
                "{property}: {err}"
            );
        }
        // Keys that only start like a refused one are the user's.
        assert!(cli(&["--kafka-properties", "group.instance.id=replica-1"]).is_ok());
    }

    #[test]
    fn printed_config_hides_the_webhook_secret_and_passwords() {
        let config = cli(&[
            "--kafka-properties",
            "sasl.password=hunter2,fetch.max.bytes=1000",
        ])
        .expect("valid");
        let printed = format!("{config:?}");
        assert!(!printed.contains("secret-token"), "{printed}");
        assert!(!printed.contains("s3cret"), "{printed}");
        assert!(!printed.contains("hunter2"), "{printed}");
        assert!(
            printed.contains("https://hooks.example/<redacted>"),
            "{printed}"
        );
        assert!(printed.contains("fetch.max.bytes=1000"), "{printed}");
    }

    #[test]
    fn the_token_filter_is_refused_for_clickhouse_input() {
        let err = cli(&[
            "--posthog-project-token",
            "phc_a",
            "--input-format",
            "clickhouse",
        ])
        .unwrap_err();
        assert!(err.contains("POSTHOG_TEAM_ID"), "{err}");
    }

    #[test]
    fn reject_statuses_parse_lists_and_ranges_and_refuse_retryable_ones() {
        let set = StatusSet::parse("X", "400, 413,450-451").expect("valid");
        assert!(set.contains(400) && set.contains(413) && set.contains(450) && set.contains(451));
        assert!(!set.contains(404) && !set.contains(500));
        assert!(StatusSet::parse("X", "4xx")
            .unwrap_err()
            .to_string()
            .contains("X"));
        assert!(StatusSet::parse("X", "400-499")
            .unwrap_err()
            .to_string()
            .contains("always retried"));
        assert!(StatusSet::parse("X", "200").is_err());
        assert_eq!(
            cli(&[]).expect("defaults").reject_statuses,
            StatusSet(vec![(400, 400), (413, 413), (422, 422)])
        );
    }

    #[test]
    fn headers_parse_and_bad_ones_name_the_option() {
        let h = parse_headers("X-Api-Key: abc:def; X-Team: data\nX-Other:1").expect("valid");
        assert_eq!(
            h,
            vec![
                ("X-Api-Key".to_owned(), "abc:def".to_owned()),
                ("X-Team".to_owned(), "data".to_owned()),
                ("X-Other".to_owned(), "1".to_owned()),
            ]
        );
        assert!(parse_headers("no colon")
            .unwrap_err()
            .to_string()
            .contains("WEBHOOK_HEADERS"));
        assert!(parse_headers("Bad Name: x").is_err());
        assert!(parse_headers("Content-Type: text/plain").is_err());
    }

    #[test]
    fn secrets_come_from_files_and_are_never_printed() {
        let dir = std::env::temp_dir().join(format!("pc-secrets-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("dir");
        let token = dir.join("token");
        std::fs::write(&token, "tok-from-file\n").expect("write");
        let config = cli(&[
            "--webhook-bearer-token-file",
            token.to_str().expect("utf8"),
            "--webhook-signing-secret",
            "sign-me",
            "--webhook-headers",
            "X-Api-Key: key-123",
            "--kafka-sasl-password",
            "pw-456",
        ])
        .expect("valid");
        assert!(config
            .webhook_headers
            .contains(&("Authorization".into(), "Bearer tok-from-file".into())));
        assert_eq!(config.signing_secret.as_deref(), Some("sign-me"));
        assert_eq!(config.kafka_properties["sasl.password"], "pw-456");
        let printed = format!("{config:?}");
        for secret in ["tok-from-file", "sign-me", "key-123", "pw-456"] {
            assert!(!printed.contains(secret), "{secret} printed: {printed}");
        }
        let err = cli(&["--webhook-signing-secret-file", "/nonexistent/secret"]).unwrap_err();
        assert!(err.contains("WEBHOOK_SIGNING_SECRET_FILE"), "{err}");
        let err = cli(&["--webhook-ca-bundle", token.to_str().expect("utf8")]).unwrap_err();
        assert!(err.contains("WEBHOOK_CA_BUNDLE"), "{err}");
        let err = cli(&["--webhook-gzip", "maybe"]).unwrap_err();
        assert!(err.contains("WEBHOOK_GZIP"), "{err}");
    }

    #[test]
    fn start_at_takes_earliest_latest_or_a_time() {
        assert_eq!(cli(&[]).expect("default").start_at, StartAt::Earliest);
        assert_eq!(
            cli(&["--start-at", "latest"]).expect("valid").start_at,
            StartAt::Latest
        );
        let t = cli(&["--start-at", "2024-05-01T12:00:00+02:00"])
            .expect("valid")
            .start_at;
        assert_eq!(
            t,
            StartAt::Time(
                chrono::DateTime::parse_from_rfc3339("2024-05-01T10:00:00Z")
                    .expect("valid")
                    .into()
            )
        );
        assert!(cli(&["--start-at", "yesterday"])
            .unwrap_err()
            .contains("START_AT"));
        assert!(cli(&["--kafka-properties", "auto.offset.reset=latest"])
            .unwrap_err()
            .contains("START_AT"));
    }

    #[test]
    fn max_poll_interval_must_outlast_a_revocation_drain() {
        // The default 300 s, and anything at least SHUTDOWN_TIMEOUT_MS + 10 s, is fine.
        assert!(cli(&[]).is_ok());
        assert!(cli(&["--kafka-properties", "max.poll.interval.ms=30000"]).is_ok());
        let err = cli(&["--kafka-properties", "max.poll.interval.ms=29999"]).unwrap_err();
        assert!(
            err.contains("KAFKA_PROPERTIES") && err.contains("SHUTDOWN_TIMEOUT_MS"),
            "{err}"
        );
        assert!(cli(&[
            "--kafka-properties",
            "max.poll.interval.ms=15000",
            "--shutdown-timeout-ms",
            "5000"
        ])
        .is_ok());
        assert!(cli(&["--kafka-properties", "max.poll.interval.ms=soon"])
            .unwrap_err()
            .contains("number of milliseconds"));
        // Unset, librdkafka's 300 s applies, and is checked too.
        assert!(cli(&["--shutdown-timeout-ms", "290000"]).is_ok());
        let err = cli(&["--shutdown-timeout-ms", "290001"]).unwrap_err();
        assert!(err.contains("max.poll.interval.ms=300000"), "{err}");
    }

    #[test]
    fn team_id_must_be_a_number() {
        let err = cli(&["--posthog-team-id", "two"]).unwrap_err();
        assert!(err.contains("POSTHOG_TEAM_ID"), "{err}");
        assert_eq!(
            cli(&["--posthog-team-id", "2"]).expect("valid").team_id,
            Some(2)
        );
    }
}
