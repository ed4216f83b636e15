//! Configuration: every option is a CLI flag and an environment variable
//! (PostHog's naming), declared once, as a typed field of [`Config`] with
//! its value parser ([`values`]). Parsing and validation happen once, at
//! start-up, so a bad value stops the process with a message naming the
//! option ([`option_error`] renders clap's refusals so, and never echoes the
//! refused value).
//!
//! Secrets (the webhook URL, whose path and query carry a token, headers,
//! the bearer token, the signing secret, the SASL password) are held in
//! `secrecy` types ([`secret`]). The start-up summary and [`Config`]'s
//! `Debug` are derived from the declaration ([`summary`]), secrets redacted.

mod backfill;
mod kafka_properties;
mod secret;
mod summary;
mod topics;
mod validate;
pub mod values;

#[cfg(test)]
mod tests;

pub use backfill::{BackfillArgs, ClickHouseUrl, HistoryStart, SourceKind};
pub(crate) use kafka_properties::is_secret_key;
pub use kafka_properties::{
    classic_only_key, consumer_only_key, parse_kafka_properties, refused_kafka_property,
    KafkaProperties, CLASSIC_ONLY, CONSUMER_ONLY, MANAGED_KAFKA_PROPERTIES,
};
pub use secret::{redact_url, SecretUrl, WebhookUrl};
pub use topics::Topics;
pub(crate) use values::topic_name;
pub use values::{parse_allow_list, parse_headers, Headers, Problem, StatusSet};

use std::borrow::Cow;
use std::fmt;
use std::net::SocketAddr;
use std::time::Duration;

use clap::{ArgAction, Args, Parser, ValueEnum};
use secrecy::SecretString;
use serde::Serialize;

use secret::SecretFile;

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

/// The command line: a subcommand, and the options.
#[derive(Parser, Clone, Debug)]
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

    #[command(flatten)]
    pub config: Config,
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
    /// Sends the events PostHog already holds in ClickHouse (older than what
    /// Kafka keeps) to the webhook, up to where the group's stream started,
    /// resuming from its checkpoint in STATE_TOPIC; then exits.
    Backfill(Box<BackfillArgs>),
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

/// `KAFKA_GROUP_PROTOCOL`: which consumer group protocol to use.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum GroupProtocolChoice {
    /// `consumer` where the brokers offer it, else `classic`.
    Auto,
    /// The classic protocol, with cooperative-sticky assignment.
    Classic,
    /// The next-generation protocol (KIP-848), assignment by the brokers.
    Consumer,
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

/// The parsed `REMOVE_PROPERTIES`, `KEEP_PROPERTIES`, `HASH_PROPERTIES` and
/// `EVENT_FILTERS`, shared by every worker.
#[derive(Clone, Debug)]
pub struct Transform(pub std::sync::Arc<crate::transform::Rules>);

impl Default for Transform {
    fn default() -> Self {
        Transform(std::sync::Arc::new(
            crate::transform::Rules::parse("", "", "", None, None)
                .expect("no rule at all is valid"),
        ))
    }
}

/// Aliases keep clap's derive from reading these as repeated (`Vec`) or
/// optional (`Option`) options: each is one value, parsed whole.
pub type EventNames = Vec<String>;
pub type OptionalText = Option<String>;
pub type TeamId = Option<i64>;
pub type CaBundle = Option<Vec<u8>>;

/// Every option, typed; validated by [`Config::from_cli`], then passed whole
/// to the parts that need it. `#[serde]` says how the start-up summary shows
/// a field (`skip`: not shown, e.g. folded into another option).
#[derive(Args, Clone, Serialize)]
pub struct Config {
    /// Kafka bootstrap servers, comma-separated host:port.
    #[arg(long, env = "KAFKA_HOSTS", default_value = "localhost:9092", value_parser = values::non_empty)]
    pub kafka_hosts: String,

    /// Topics to read: comma-separated names, or one pattern starting with ^
    /// (which also reads matching topics created later). PostHog's topics
    /// may carry a KAFKA_PREFIX. Listed topics that do not exist are
    /// reported once and read when created.
    #[arg(long = "kafka-topic", env = "KAFKA_TOPIC", value_name = "KAFKA_TOPIC",
          default_value = DEFAULT_TOPICS, value_parser = values::topics)]
    #[serde(serialize_with = "summary::display")]
    pub topics: Topics,

    /// Consumer group id; replicas with the same group share the partitions.
    #[arg(long, env = "KAFKA_CONSUMER_GROUP", default_value = "patterns-connector",
          value_parser = values::non_empty)]
    pub kafka_consumer_group: String,

    /// Kafka's consumer group protocol. `consumer` is the next-generation
    /// protocol (KIP-848, Apache Kafka 4.0 and later): the brokers assign
    /// partitions, and a replica joining or leaving stops no other. `classic`
    /// is the older one (cooperative-sticky assignment), for brokers before
    /// 4.0 and for Redpanda. `auto` asks the brokers at start-up and uses
    /// `consumer` where they offer it, `classic` otherwise.
    #[arg(
        long = "kafka-group-protocol",
        env = "KAFKA_GROUP_PROTOCOL",
        value_name = "KAFKA_GROUP_PROTOCOL",
        value_enum,
        default_value = "auto"
    )]
    #[serde(serialize_with = "summary::debug")]
    pub group_protocol: GroupProtocolChoice,

    /// Static membership: this replica's identity in the group
    /// (librdkafka's `group.instance.id`), e.g. its pod's name. A replica
    /// restarted under the same identity within the session timeout gets
    /// its own partitions back instead of moving them. Empty: a new identity
    /// at each start. Two running replicas must never share one.
    #[arg(long = "kafka-group-instance-id", env = "KAFKA_GROUP_INSTANCE_ID",
          value_name = "KAFKA_GROUP_INSTANCE_ID", default_value = "", hide_default_value = true,
          value_parser = values::optional)]
    pub group_instance_id: OptionalText,

    /// Extra librdkafka properties, comma-separated key=value (e.g.
    /// security.protocol=SASL_SSL,sasl.mechanism=SCRAM-SHA-512,fetch.max.bytes=52428800).
    /// Values of keys containing "password", "secret" or "key" are never printed.
    #[arg(long, env = "KAFKA_PROPERTIES", default_value = "", hide_default_value = true,
          hide_env_values = true, value_parser = values::kafka_properties)]
    #[serde(serialize_with = "summary::properties")]
    pub kafka_properties: KafkaProperties,

    /// Webhook URL that receives the batches (required). Its path and query are
    /// treated as secret and never logged.
    #[arg(long = "patterns-webhook-url", env = "PATTERNS_WEBHOOK_URL",
          value_name = "PATTERNS_WEBHOOK_URL", hide_env_values = true,
          value_parser = values::webhook_url)]
    #[serde(serialize_with = "summary::url")]
    pub webhook_url: WebhookUrl,

    /// Comma-separated event names to deliver (spaces trimmed); empty delivers every event.
    #[arg(long, env = "ALLOWED_EVENT_TYPES", default_value = "", value_parser = values::allow_list)]
    pub allowed_event_types: EventNames,

    /// Deliver only events of this project API token (phc_...); empty means every project.
    #[arg(long = "posthog-project-token", env = "POSTHOG_PROJECT_TOKEN",
          value_name = "POSTHOG_PROJECT_TOKEN", default_value = "", value_parser = values::optional)]
    pub project_token: OptionalText,

    /// Deliver only events of this team id; empty means every team.
    #[arg(long = "posthog-team-id", env = "POSTHOG_TEAM_ID", value_name = "POSTHOG_TEAM_ID",
          default_value = "", value_parser = values::team_id)]
    pub team_id: TeamId,

    /// Message format of the topic.
    #[arg(long, env = "INPUT_FORMAT", value_enum, default_value = "auto")]
    #[serde(serialize_with = "summary::debug")]
    pub input_format: InputFormat,

    #[command(flatten)]
    #[serde(flatten)]
    pub batch: BatchLimits,

    /// Timeout of one webhook request, in milliseconds.
    #[arg(long = "webhook-timeout-ms", env = "WEBHOOK_TIMEOUT_MS", value_name = "WEBHOOK_TIMEOUT_MS",
          default_value = "30000", value_parser = values::millis(1, 3_600_000))]
    #[serde(serialize_with = "summary::millis")]
    pub webhook_timeout: Duration,

    /// First retry delay after a failed request, in milliseconds (doubles each attempt, full jitter).
    #[arg(long = "retry-backoff-min-ms", env = "RETRY_BACKOFF_MIN_MS",
          value_name = "RETRY_BACKOFF_MIN_MS", default_value = "200",
          value_parser = values::millis(1, 3_600_000))]
    #[serde(serialize_with = "summary::millis")]
    pub retry_backoff_min: Duration,

    /// Longest retry delay, in milliseconds.
    #[arg(long = "retry-backoff-max-ms", env = "RETRY_BACKOFF_MAX_MS",
          value_name = "RETRY_BACKOFF_MAX_MS", default_value = "30000",
          value_parser = values::millis(1, 3_600_000))]
    #[serde(serialize_with = "summary::millis")]
    pub retry_backoff_max: Duration,

    /// Most webhook requests in flight at once, across all partitions.
    #[arg(long, env = "MAX_CONCURRENT_REQUESTS", default_value = "16",
          value_parser = values::number(1usize, 10_000, "requests"))]
    pub max_concurrent_requests: usize,

    /// Order kept at the webhook: `key` (up to KEY_LANES batches in flight
    /// per partition, each message key's events in order) or `partition`
    /// (one batch in flight per partition, the whole partition in order).
    #[arg(long, env = "ORDERING", value_enum, default_value = "key")]
    #[serde(serialize_with = "summary::debug")]
    pub ordering: DeliveryOrder,

    /// Under ORDERING=key, most lanes (batches in flight) per partition, 1 to 64.
    #[arg(long, env = "KEY_LANES", default_value = "8", value_parser = values::number(1usize, 64, "lanes"))]
    pub key_lanes: usize,

    /// Cap on bytes of consumed-but-undelivered messages held in memory; partitions
    /// over their share are paused until deliveries catch up.
    #[arg(long, env = "MAX_BUFFERED_BYTES", default_value = "67108864",
          value_parser = values::number(1usize << 20, usize::MAX, "bytes"))]
    pub max_buffered_bytes: usize,

    /// How often delivered offsets are committed to Kafka, in milliseconds.
    #[arg(long = "commit-interval-ms", env = "COMMIT_INTERVAL_MS", value_name = "COMMIT_INTERVAL_MS",
          default_value = "5000", value_parser = values::millis(100, 600_000))]
    #[serde(serialize_with = "summary::millis")]
    pub commit_interval: Duration,

    /// On SIGTERM or partition revocation, how long in-flight batches may take to finish, in milliseconds.
    #[arg(long = "shutdown-timeout-ms", env = "SHUTDOWN_TIMEOUT_MS",
          value_name = "SHUTDOWN_TIMEOUT_MS", default_value = "20000",
          value_parser = values::millis(0, 3_600_000))]
    #[serde(serialize_with = "summary::millis")]
    pub shutdown_timeout: Duration,

    /// Address of the HTTP server for /metrics, /healthz and /readyz.
    #[arg(long, env = "HTTP_ADDR", default_value = "0.0.0.0:9464", value_parser = values::http_addr)]
    pub http_addr: SocketAddr,

    /// Log format.
    #[arg(long, env = "LOG_FORMAT", value_enum, default_value = "text")]
    #[serde(skip)]
    pub log_format: LogFormat,

    /// Log filter (tracing's EnvFilter syntax).
    #[arg(long, env = "LOG_LEVEL", default_value = "info")]
    #[serde(skip)]
    pub log_level: String,

    /// Topic for messages that cannot be delivered (not a PostHog event, too
    /// large, or rejected by the webhook), with headers saying why.
    #[arg(long, env = "DLQ_TOPIC", default_value = "patterns_connector_dlq", value_parser = values::dlq_topic)]
    pub dlq_topic: String,

    /// Compacted topic where the connector keeps its own state: where the
    /// group started reading each partition (the backfill's hand-over) and
    /// the backfill's checkpoints. Created (compacted, one partition) when missing.
    #[arg(long, env = "STATE_TOPIC", default_value = "patterns_connector_state", value_parser = values::state_topic)]
    pub state_topic: String,

    /// What to do with such a message: `dlq` writes it to DLQ_TOPIC and moves
    /// on; `block` stops its partition (retrying) until an operator acts.
    #[arg(long, env = "DLQ_POLICY", value_enum, default_value = "dlq")]
    #[serde(serialize_with = "summary::debug")]
    pub dlq_policy: DlqPolicy,

    /// Where a consumer group with no committed offset starts: `earliest`
    /// (every retained event), `latest` (new events only) or an RFC 3339 time
    /// (events from then on). An existing commit always wins.
    #[arg(long, env = "START_AT", default_value = "earliest", value_parser = values::start_at)]
    #[serde(serialize_with = "summary::debug")]
    pub start_at: StartAt,

    /// Extra request headers, `Name: value` entries separated by `;` or new
    /// lines (e.g. `X-Api-Key: abc; X-Team: data`). Values are never logged.
    #[arg(long, env = "WEBHOOK_HEADERS", default_value = "", hide_default_value = true,
          hide_env_values = true, value_parser = values::headers)]
    #[serde(serialize_with = "summary::headers")]
    pub webhook_headers: Headers,

    /// Bearer token sent as `Authorization: Bearer <token>`.
    #[arg(long, env = "WEBHOOK_BEARER_TOKEN", default_value = "", hide_default_value = true,
          hide_env_values = true, value_parser = values::secret)]
    #[serde(skip)]
    pub webhook_bearer_token: SecretString,

    /// File holding the bearer token (e.g. a mounted Kubernetes secret); wins over WEBHOOK_BEARER_TOKEN.
    #[arg(long, env = "WEBHOOK_BEARER_TOKEN_FILE", value_parser = values::secret_file)]
    #[serde(skip)]
    pub webhook_bearer_token_file: Option<SecretFile>,

    /// Secret for HMAC-SHA256 request signing (see the README); empty disables signing.
    #[arg(long = "webhook-signing-secret", env = "WEBHOOK_SIGNING_SECRET",
          value_name = "WEBHOOK_SIGNING_SECRET", default_value = "", hide_default_value = true,
          hide_env_values = true, value_parser = values::secret)]
    #[serde(serialize_with = "summary::secret")]
    pub signing_secret: Option<SecretString>,

    /// File holding the signing secret; wins over WEBHOOK_SIGNING_SECRET.
    #[arg(long, env = "WEBHOOK_SIGNING_SECRET_FILE", value_parser = values::secret_file)]
    #[serde(skip)]
    pub webhook_signing_secret_file: Option<SecretFile>,

    /// Compress request bodies with gzip (`Content-Encoding: gzip`).
    #[arg(long, env = "WEBHOOK_GZIP", default_value = "false", action = ArgAction::Set,
          value_parser = values::boolean)]
    pub webhook_gzip: bool,

    /// PEM file of CA certificates to trust for the webhook's TLS, in addition to the built-in roots.
    #[arg(long, env = "WEBHOOK_CA_BUNDLE", default_value = "", hide_default_value = true,
          value_parser = values::ca_bundle)]
    #[serde(serialize_with = "summary::set")]
    pub webhook_ca_bundle: CaBundle,

    /// File holding the Kafka SASL password (sets sasl.password; wins over KAFKA_PROPERTIES).
    #[arg(long, env = "KAFKA_SASL_PASSWORD_FILE", value_parser = values::secret_file)]
    #[serde(skip)]
    pub kafka_sasl_password_file: Option<SecretFile>,

    /// Kafka SASL password (sets sasl.password). Never logged.
    #[arg(long, env = "KAFKA_SASL_PASSWORD", default_value = "", hide_default_value = true,
          hide_env_values = true, value_parser = values::secret)]
    #[serde(skip)]
    pub kafka_sasl_password: SecretString,

    /// Properties to remove before an event leaves (PostHog's Property Filter
    /// app): comma-separated names; dotted paths reach into objects
    /// (`$set.email`); `$ip` also empties the event's `ip`.
    #[arg(long, env = "REMOVE_PROPERTIES", default_value = "")]
    pub remove_properties: String,

    /// The inverse: only these properties leave (comma-separated, dotted
    /// paths), with uuid, event, distinct_id, team_id and timestamp.
    #[arg(long, env = "KEEP_PROPERTIES", default_value = "")]
    pub keep_properties: String,

    /// Properties (dotted paths; `distinct_id` allowed) replaced by the
    /// SHA-256 hex of their value followed by HASH_SALT, as PostHog's PII
    /// hashing apps do.
    #[arg(long, env = "HASH_PROPERTIES", default_value = "")]
    pub hash_properties: String,

    /// The salt of HASH_PROPERTIES. Never logged.
    #[arg(long, env = "HASH_SALT", hide_env_values = true, value_parser = values::secret)]
    #[serde(serialize_with = "summary::secret")]
    pub hash_salt: Option<SecretString>,

    /// File holding the salt; wins over HASH_SALT.
    #[arg(long, env = "HASH_SALT_FILE", value_parser = values::secret_file)]
    #[serde(skip)]
    pub hash_salt_file: Option<SecretFile>,

    /// Which events leave, in PostHog's Filter Out app's JSON (groups of
    /// conditions: an event leaves if it meets every condition of some
    /// group), optionally with `eventsToDrop`, `keepUndefinedProperties` and
    /// `dropOnProperty` (the Drop Events on Property app).
    #[arg(long, env = "EVENT_FILTERS", default_value = "")]
    pub event_filters: String,

    /// A file holding EVENT_FILTERS' JSON; wins over EVENT_FILTERS.
    #[arg(long, env = "EVENT_FILTERS_FILE", default_value = "", hide_default_value = true,
          value_parser = values::text_file)]
    #[serde(serialize_with = "summary::set")]
    pub event_filters_file: OptionalText,

    /// The rules above, parsed ([`Config::from_cli`]).
    #[arg(skip)]
    #[serde(skip)]
    pub transform: Transform,

    /// HTTP statuses that mean "the webhook refuses these events": the batch is
    /// split to isolate the refused events, which go to the dead-letter topic.
    /// Ranges allowed (e.g. 400,413,422). Any other non-2xx status is retried.
    #[arg(long = "webhook-reject-statuses", env = "WEBHOOK_REJECT_STATUSES",
          value_name = "WEBHOOK_REJECT_STATUSES", default_value = "400,413,422",
          value_parser = values::reject_statuses)]
    #[serde(serialize_with = "summary::display")]
    pub reject_statuses: StatusSet,
}

/// When a partition's open batch is sealed and sent.
#[derive(Args, Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct BatchLimits {
    /// Most events in one webhook request.
    #[arg(long = "batch-max-events", env = "BATCH_MAX_EVENTS", value_name = "BATCH_MAX_EVENTS",
          default_value = "500", value_parser = values::number(1usize, 1_000_000, "events"))]
    pub max_events: usize,

    /// Most bytes in one request body (the encoded JSON array).
    #[arg(long = "batch-max-bytes", env = "BATCH_MAX_BYTES", value_name = "BATCH_MAX_BYTES",
          default_value = "1048576", value_parser = values::number(1024usize, 1 << 30, "bytes"))]
    pub max_bytes: usize,

    /// Longest time an event waits for its batch to fill, in milliseconds.
    #[arg(long = "batch-linger-ms", env = "BATCH_LINGER_MS", value_name = "BATCH_LINGER_MS",
          default_value = "1000", value_parser = values::millis(0, 3_600_000))]
    #[serde(serialize_with = "summary::millis")]
    pub linger: Duration,
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

/// A bad option value: names the option and says what was expected.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("invalid value for {option}: {problem}")]
pub struct ConfigError {
    pub option: Cow<'static, str>,
    pub problem: String,
}

pub(crate) fn bad(option: &'static str, problem: impl Into<String>) -> ConfigError {
    ConfigError {
        option: Cow::Borrowed(option),
        problem: problem.into(),
    }
}

/// `KAFKA_TOPIC`'s default: where PostHog's capture writes analytics events,
/// across its generations (README, "Which topics to read"). Topics a version
/// never creates are reported once as missing and skipped.
pub const DEFAULT_TOPICS: &str = "events_plugin_ingestion,events_plugin_ingestion_historical,events_plugin_ingestion_overflow,error_tracking_events,events_plugin_ingestion_ai";

impl Config {
    /// One line per option for the start-up log, secrets redacted.
    pub fn redacted_summary(&self) -> Vec<(String, String)> {
        summary::summary(self)
    }
}

impl fmt::Debug for Config {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut s = f.debug_struct("Config");
        for (name, value) in self.redacted_summary() {
            s.field(&name, &value);
        }
        s.finish()
    }
}

pub use validate::{healthcheck_address, option_error};
