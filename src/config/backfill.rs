//! The options of `patterns-connector backfill`: where PostHog's events are
//! read from (its ClickHouse, or its query API), and which part of a
//! project's history to send. They take PostHog's own names where PostHog
//! has one (`CLICKHOUSE_HOST`, `CLICKHOUSE_DATABASE`, `CLICKHOUSE_USER`,
//! `CLICKHOUSE_PASSWORD`); the API's follow Patterns' PostHog extractor
//! (`POSTHOG_API_URL`, `POSTHOG_PROJECT_ID`, `POSTHOG_PERSONAL_API_KEY`).
//! The connector's options
//! (webhook, batching, filters, dead letters, `KAFKA_CONSUMER_GROUP`,
//! `STATE_TOPIC`) apply to the backfill as they do to the stream.

use std::fmt;
use std::time::Duration;

use chrono::{DateTime, Utc};
use clap::{ArgAction, Args, ValueEnum};
use secrecy::SecretString;
use url::Url;

use super::secret::{choose, SecretFile};
use super::values::{self, Problem};

/// ClickHouse's HTTP interface, as `CLICKHOUSE_HOST` gives it: a host
/// (`clickhouse`, `clickhouse:8123`) or a whole URL (`https://ch.example:8443`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClickHouseUrl(pub Url);

impl fmt::Display for ClickHouseUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Credentials are refused by the parser, so the URL holds no secret.
        f.write_str(self.0.as_str())
    }
}

/// ClickHouse's HTTP port, when `CLICKHOUSE_HOST` names none.
const HTTP_PORT: u16 = 8123;

pub fn clickhouse_url(raw: &str) -> Result<ClickHouseUrl, Problem> {
    let raw = raw.trim();
    let expected = || {
        Problem(format!(
            "expected a host (clickhouse, clickhouse:8123) or an http(s) URL, got {raw:?}"
        ))
    };
    let url = if raw.contains("://") {
        Url::parse(raw).map_err(|_| expected())?
    } else {
        let mut url = Url::parse(&format!("http://{raw}")).map_err(|_| expected())?;
        if url.port().is_none() {
            url.set_port(Some(HTTP_PORT)).map_err(|_| expected())?;
        }
        url
    };
    if !matches!(url.scheme(), "http" | "https") || url.host_str().is_none() {
        return Err(expected());
    }
    if !url.username().is_empty() || url.password().is_some() {
        return Err(Problem(
            "credentials in the URL are not supported: use CLICKHOUSE_USER and CLICKHOUSE_PASSWORD"
                .into(),
        ));
    }
    Ok(ClickHouseUrl(url))
}

/// Where history starts, by the events' own `timestamp`: everything, or
/// events from a time on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HistoryStart {
    All,
    From(DateTime<Utc>),
}

pub fn history_start(raw: &str) -> Result<HistoryStart, Problem> {
    match raw.trim() {
        "" | "all" => Ok(HistoryStart::All),
        other => rfc3339(other).map(HistoryStart::From),
    }
}

fn rfc3339(raw: &str) -> Result<DateTime<Utc>, Problem> {
    DateTime::parse_from_rfc3339(raw)
        .map(|t| t.with_timezone(&Utc))
        .map_err(|_| {
            Problem(format!(
                "expected an RFC 3339 time such as 2024-05-01T00:00:00Z, got {raw:?}"
            ))
        })
}

/// An optional time; empty is none.
pub fn optional_time(raw: &str) -> Result<Option<DateTime<Utc>>, Problem> {
    match raw.trim() {
        "" => Ok(None),
        other => rfc3339(other).map(Some),
    }
}

pub type OptionalTime = Option<DateTime<Utc>>;

/// An optional duration in ms; empty is none (the default applies).
pub type OptionalDuration = Option<Duration>;

fn optional_millis(
    min: u64,
    max: u64,
) -> impl Fn(&str) -> Result<OptionalDuration, Problem> + Clone + Send + Sync + 'static {
    let parse = values::millis(min, max);
    move |raw| match raw.trim() {
        "" => Ok(None),
        raw => parse(raw).map(Some),
    }
}

/// `BACKFILL_SOURCE`: where the backfill reads PostHog's events.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum SourceKind {
    /// PostHog's ClickHouse, over its HTTP interface (`CLICKHOUSE_*`).
    Clickhouse,
    /// PostHog's query API (`POSTHOG_API_URL`, `POSTHOG_PROJECT_ID`,
    /// `POSTHOG_PERSONAL_API_KEY`): PostHog Cloud, or an install whose
    /// ClickHouse is out of reach.
    Api,
}

/// A PostHog instance's base URL (`https://us.posthog.com`, `http://posthog.internal:8000`).
/// Errors never repeat the value: a URL may carry a key.
pub fn api_url(raw: &str) -> Result<Url, Problem> {
    let raw = raw.trim();
    let expected = || {
        Problem(
            "expected the PostHog instance's http(s) base URL, such as https://us.posthog.com"
                .into(),
        )
    };
    let url = Url::parse(raw).map_err(|_| expected())?;
    if !matches!(url.scheme(), "http" | "https") || url.host_str().is_none() {
        return Err(expected());
    }
    if !url.username().is_empty() || url.password().is_some() {
        return Err(Problem(
            "credentials in the URL are not supported: use POSTHOG_PERSONAL_API_KEY".into(),
        ));
    }
    if url.query().is_some() || url.fragment().is_some() {
        return Err(Problem(
            "expected a base URL without a query string (the key goes in POSTHOG_PERSONAL_API_KEY)"
                .into(),
        ));
    }
    Ok(url)
}

#[derive(Args, Clone)]
pub struct BackfillArgs {
    /// PostHog's ClickHouse HTTP interface: a host (port 8123) or a URL.
    #[arg(long, env = "CLICKHOUSE_HOST", default_value = "localhost", value_parser = clickhouse_url)]
    pub clickhouse_host: ClickHouseUrl,

    /// The database holding PostHog's `events` table.
    #[arg(long, env = "CLICKHOUSE_DATABASE", default_value = "posthog", value_parser = values::non_empty)]
    pub clickhouse_database: String,

    /// ClickHouse user.
    #[arg(long, env = "CLICKHOUSE_USER", default_value = "default", value_parser = values::non_empty)]
    pub clickhouse_user: String,

    /// ClickHouse password. Never logged.
    #[arg(long, env = "CLICKHOUSE_PASSWORD", default_value = "", hide_default_value = true,
          hide_env_values = true, value_parser = values::secret)]
    pub clickhouse_password: SecretString,

    /// File holding the ClickHouse password; wins over CLICKHOUSE_PASSWORD.
    #[arg(long, env = "CLICKHOUSE_PASSWORD_FILE", value_parser = values::secret_file)]
    pub clickhouse_password_file: Option<SecretFile>,

    /// Where the events are read: `clickhouse` (PostHog's ClickHouse) or
    /// `api` (PostHog's query API: PostHog Cloud, or no ClickHouse within reach).
    #[arg(
        long = "source",
        env = "BACKFILL_SOURCE",
        value_name = "BACKFILL_SOURCE",
        value_enum,
        default_value = "clickhouse"
    )]
    pub source: SourceKind,

    /// The PostHog instance whose query API is read (`api` source):
    /// https://us.posthog.com, https://eu.posthog.com, or a self-hosted URL.
    #[arg(long = "posthog-api-url", env = "POSTHOG_API_URL", value_name = "POSTHOG_API_URL",
          default_value = "https://us.posthog.com", value_parser = api_url)]
    pub api_url: Url,

    /// The project (its id in PostHog's URLs, /project/<id>) whose events
    /// the `api` source reads.
    #[arg(long = "posthog-project-id", env = "POSTHOG_PROJECT_ID", value_name = "POSTHOG_PROJECT_ID",
          default_value = "", value_parser = values::team_id)]
    pub project_id: super::TeamId,

    /// A personal API key with the `query:read` scope (`api` source). Never logged.
    #[arg(long = "posthog-personal-api-key", env = "POSTHOG_PERSONAL_API_KEY",
          value_name = "POSTHOG_PERSONAL_API_KEY", default_value = "", hide_default_value = true,
          hide_env_values = true, value_parser = values::secret)]
    pub personal_api_key: SecretString,

    /// File holding the personal API key; wins over POSTHOG_PERSONAL_API_KEY.
    #[arg(long = "posthog-personal-api-key-file", env = "POSTHOG_PERSONAL_API_KEY_FILE",
          value_name = "POSTHOG_PERSONAL_API_KEY_FILE", value_parser = values::secret_file)]
    pub personal_api_key_file: Option<SecretFile>,

    /// Keep going after history: read newly ingested events as they become
    /// visible (BACKFILL_VISIBILITY_DELAY_MS behind now), every
    /// BACKFILL_FOLLOW_INTERVAL_MS, until stopped.
    #[arg(long = "follow", env = "BACKFILL_FOLLOW", value_name = "BACKFILL_FOLLOW",
          default_value = "false", num_args = 0..=1, default_missing_value = "true",
          action = ArgAction::Set, value_parser = values::boolean)]
    pub follow: bool,

    /// With --follow: how often to ask for newly ingested events once caught up.
    #[arg(long = "follow-interval-ms", env = "BACKFILL_FOLLOW_INTERVAL_MS",
          value_name = "BACKFILL_FOLLOW_INTERVAL_MS", default_value = "60000",
          value_parser = values::millis(100, 24 * 3_600_000))]
    pub follow_interval: Duration,

    /// A file keeping the checkpoint (and a lock) instead of STATE_TOPIC:
    /// for a backfill with no Kafka to reach (PostHog Cloud).
    #[arg(long = "state-file", env = "BACKFILL_STATE_FILE", value_name = "BACKFILL_STATE_FILE",
          default_value = "", value_parser = values::optional)]
    pub state_file: super::OptionalText,

    /// Where history starts: `all`, or an RFC 3339 time (events whose own
    /// timestamp is at or after it).
    #[arg(long = "from", env = "BACKFILL_FROM", value_name = "BACKFILL_FROM",
          default_value = "all", value_parser = history_start)]
    pub from: HistoryStart,

    /// Where history ends, by ingestion time (ClickHouse: when it inserted
    /// the row, `inserted_at`, else `_timestamp`; the API: `created_at`). Empty (the
    /// default): where the stream's group started, from its record in
    /// STATE_TOPIC, plus BACKFILL_HANDOVER_MARGIN_MS.
    #[arg(long = "until", env = "BACKFILL_UNTIL", value_name = "BACKFILL_UNTIL",
          default_value = "", value_parser = optional_time)]
    pub until: OptionalTime,

    /// How long PostHog may take from capturing an event to ingesting it
    /// (capture → Kafka → ingestion → ClickHouse): added to the stream's
    /// start so that events captured before it and ingested late are still
    /// sent. The overlap with the stream grows with it.
    #[arg(long = "handover-margin-ms", env = "BACKFILL_HANDOVER_MARGIN_MS",
          value_name = "BACKFILL_HANDOVER_MARGIN_MS", default_value = "300000",
          value_parser = values::millis(0, 7 * 24 * 3_600_000))]
    pub handover_margin: Duration,

    /// How long after its ingestion time a row may become visible: the
    /// backfill reads no row ingested more recently than this (with
    /// --follow, the safety lag). Empty: 30 s for ClickHouse (its insertion
    /// time), 5 minutes for the API (`created_at` is set before Kafka).
    #[arg(long = "visibility-delay-ms", env = "BACKFILL_VISIBILITY_DELAY_MS",
          value_name = "BACKFILL_VISIBILITY_DELAY_MS", default_value = "",
          value_parser = optional_millis(0, 24 * 3_600_000))]
    pub visibility_delay: OptionalDuration,

    /// How long ClickHouse may keep failing (unreachable, server errors)
    /// before the backfill gives up; it resumes from its checkpoint when run again.
    #[arg(long = "retry-for-ms", env = "BACKFILL_RETRY_FOR_MS", value_name = "BACKFILL_RETRY_FOR_MS",
          default_value = "300000", value_parser = values::millis(0, 7 * 24 * 3_600_000))]
    pub retry_for: Duration,

    /// Rows per page read from ClickHouse (a keyset page on ingestion time).
    #[arg(long = "page-rows", env = "BACKFILL_PAGE_ROWS", value_name = "BACKFILL_PAGE_ROWS",
          default_value = "10000", value_parser = values::number(1usize, 50_000, "rows"))]
    pub page_rows: usize,
}

impl BackfillArgs {
    pub fn source(&self) -> SourceKind {
        self.source
    }

    /// BACKFILL_VISIBILITY_DELAY_MS, or the source's default: 30 s for
    /// ClickHouse's insertion time, 5 minutes for the API's `created_at`,
    /// which PostHog sets before the event goes through Kafka to ClickHouse.
    pub fn visibility_delay(&self) -> Duration {
        self.visibility_delay.unwrap_or(match self.source {
            SourceKind::Clickhouse => Duration::from_secs(30),
            SourceKind::Api => Duration::from_secs(300),
        })
    }

    /// The personal API key, from its file or its value; None when empty.
    pub fn api_key(&self) -> Option<SecretString> {
        choose(&self.personal_api_key, self.personal_api_key_file.as_ref())
    }

    /// The password, from its file or its value; None when empty.
    pub fn password(&self) -> Option<SecretString> {
        choose(
            &self.clickhouse_password,
            self.clickhouse_password_file.as_ref(),
        )
    }
}

impl fmt::Debug for BackfillArgs {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("BackfillArgs")
            .field("BACKFILL_SOURCE", &self.source())
            .field("POSTHOG_API_URL", &self.api_url.as_str())
            .field("POSTHOG_PROJECT_ID", &self.project_id)
            .field(
                "POSTHOG_PERSONAL_API_KEY",
                &if self.api_key().is_some() {
                    "<set>"
                } else {
                    "<empty>"
                },
            )
            .field("BACKFILL_FOLLOW", &self.follow)
            .field(
                "BACKFILL_FOLLOW_INTERVAL_MS",
                &self.follow_interval.as_millis(),
            )
            .field("BACKFILL_STATE_FILE", &self.state_file)
            .field("CLICKHOUSE_HOST", &self.clickhouse_host.to_string())
            .field("CLICKHOUSE_DATABASE", &self.clickhouse_database)
            .field("CLICKHOUSE_USER", &self.clickhouse_user)
            .field(
                "CLICKHOUSE_PASSWORD",
                &if self.password().is_some() {
                    "<set>"
                } else {
                    "<empty>"
                },
            )
            .field("BACKFILL_FROM", &self.from)
            .field("BACKFILL_UNTIL", &self.until)
            .field(
                "BACKFILL_HANDOVER_MARGIN_MS",
                &self.handover_margin.as_millis(),
            )
            .field(
                "BACKFILL_VISIBILITY_DELAY_MS",
                &self.visibility_delay().as_millis(),
            )
            .field("BACKFILL_RETRY_FOR_MS", &self.retry_for.as_millis())
            .field("BACKFILL_PAGE_ROWS", &self.page_rows)
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn clickhouse_host_takes_a_host_a_host_and_port_or_a_url() {
        let url = |raw| clickhouse_url(raw).map(|u| u.0.to_string());
        assert_eq!(url("clickhouse").unwrap(), "http://clickhouse:8123/");
        assert_eq!(url("127.0.0.1:18123").unwrap(), "http://127.0.0.1:18123/");
        assert_eq!(
            url("https://ch.example:8443").unwrap(),
            "https://ch.example:8443/"
        );
        assert!(url("ftp://x").is_err());
        assert!(url("").is_err());
        let refused = url("http://default:hunter2@clickhouse:8123").unwrap_err();
        assert!(!refused.0.contains("hunter2"), "{}", refused.0);
    }

    #[test]
    fn posthog_api_url_is_a_base_url_without_credentials() {
        assert_eq!(
            api_url("https://eu.posthog.com").unwrap().as_str(),
            "https://eu.posthog.com/"
        );
        assert!(api_url("posthog.example")
            .unwrap_err()
            .0
            .contains("base URL"));
        let refused = api_url("https://me:phx_secret@us.posthog.com").unwrap_err();
        assert!(!refused.0.contains("phx_secret"), "{}", refused.0);
        let refused = api_url("https://us.posthog.com/?personal_api_key=phx_secret").unwrap_err();
        assert!(!refused.0.contains("phx_secret"), "{}", refused.0);
        let refused = api_url("us.posthog.com?personal_api_key=phx_secret").unwrap_err();
        assert!(!refused.0.contains("phx_secret"), "{}", refused.0);
    }

    #[test]
    fn history_starts_at_all_or_a_time() {
        assert_eq!(history_start("all").unwrap(), HistoryStart::All);
        assert_eq!(history_start("").unwrap(), HistoryStart::All);
        assert!(matches!(
            history_start("2024-05-01T00:00:00Z").unwrap(),
            HistoryStart::From(_)
        ));
        assert!(history_start("yesterday")
            .unwrap_err()
            .0
            .contains("RFC 3339"));
        assert_eq!(optional_time("").unwrap(), None);
    }
}
