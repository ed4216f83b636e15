//! What the backfill needs of a place that holds PostHog's events: a count,
//! and keyset pages in ingestion order. The cursor, the hand-over and the
//! checkpoints know nothing of where rows come from; `clickhouse` (PostHog's
//! ClickHouse) and `api` (PostHog's query API) are two such places, and
//! [`Source`] is either.

use std::time::Duration;

use bytes::Bytes;
use chrono::{DateTime, Utc};

use super::api::{self, Api};
use super::clickhouse::{self, ClickHouse};
use crate::config::{BackfillArgs, HistoryStart, SourceKind};

/// A position in ingestion order: rows strictly after it come next. Rows
/// are ordered by (ingestion time, uuid), which is unique per row but for
/// the unmerged duplicates of PostHog's ReplacingMergeTree (the same event).
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, serde::Serialize, serde::Deserialize)]
pub struct Cursor {
    /// Ingestion time (the source's: ClickHouse's insertion time, or the
    /// API's `created_at`), microseconds since the epoch.
    pub ingested_at_us: i64,
    pub uuid: String,
}

/// Which rows a backfill reads: one team's, ingested before `until`,
/// after `after`, whose own timestamp is at or after `from`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Range {
    pub team_id: i64,
    pub from: HistoryStart,
    pub after: Option<Cursor>,
    /// Exclusive upper bound on ingestion time, microseconds.
    pub until_us: i64,
}

/// One row: the event as a `clickhouse_events_json` message, and where it
/// is in ingestion order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Row {
    pub cursor: Cursor,
    /// The key lanes hash (the row's `distinct_id`, as JSON text).
    pub key: Bytes,
    pub json: Bytes,
}

/// Why a source call failed.
#[derive(Debug, thiserror::Error, Clone, PartialEq, Eq)]
pub enum SourceError {
    /// Worth asking again: unreachable, timed out, a server error.
    #[error("{0}")]
    Transient(String),
    /// Asking again will not help; `option` is what the operator must fix.
    #[error("{message} (check {option})")]
    Refused {
        option: &'static str,
        message: String,
    },
    /// The source asks to wait (HTTP 429 and `Retry-After`): not a failure.
    #[error("{message}")]
    Throttled { wait: Duration, message: String },
    /// The query ran out of time (PostHog allows 60 s a query): a smaller
    /// page may pass.
    #[error("{0}")]
    TooSlow(String),
}

impl SourceError {
    /// Worth asking again (after a wait).
    pub fn is_transient(&self) -> bool {
        matches!(
            self,
            SourceError::Transient(_) | SourceError::Throttled { .. } | SourceError::TooSlow(_)
        )
    }
}

/// Where a backfill reads rows: one of the two sources.
pub enum Source {
    ClickHouse(ClickHouse),
    Api(Api),
}

impl Source {
    pub fn new(args: &BackfillArgs) -> anyhow::Result<Self> {
        Ok(match args.source() {
            SourceKind::Api => Source::Api(Api::new(args)?),
            _ => Source::ClickHouse(ClickHouse::new(args)?),
        })
    }

    /// `clickhouse` or `api`, as BACKFILL_SOURCE names it (kept in the checkpoint).
    pub fn kind(&self) -> &'static str {
        match self {
            Source::ClickHouse(_) => "clickhouse",
            Source::Api(_) => "api",
        }
    }

    /// The option that says where the source is, for errors that persist.
    pub fn location_option(&self) -> &'static str {
        match self {
            Source::ClickHouse(_) => "CLICKHOUSE_HOST",
            Source::Api(_) => "POSTHOG_API_URL",
        }
    }

    /// A name for the worker's pseudo-partition and the logs.
    pub fn name(&self) -> String {
        match self {
            Source::ClickHouse(c) => format!("clickhouse:{}.events", c.database()),
            Source::Api(a) => format!("posthog-api:project-{}.events", a.project_id()),
        }
    }

    pub async fn check(&self) -> Result<(), SourceError> {
        match self {
            Source::ClickHouse(c) => c.check().await,
            Source::Api(a) => a.check().await,
        }
    }

    /// Rows in `range`.
    pub async fn count(&self, range: &Range) -> Result<u64, SourceError> {
        match self {
            Source::ClickHouse(c) => c.count(range).await,
            Source::Api(a) => a.count(range).await,
        }
    }

    /// Rows in `range` ingested at or after `from_us` (the overlap window).
    pub async fn count_since(&self, range: &Range, from_us: i64) -> Result<u64, SourceError> {
        match self {
            Source::ClickHouse(c) => c.count_since(range, from_us).await,
            Source::Api(a) => a.count_since(range, from_us).await,
        }
    }

    /// Starts reading one page of `range`: at most `limit` rows, in order.
    pub async fn page(&self, range: &Range, limit: usize) -> Result<Page, SourceError> {
        Ok(match self {
            Source::ClickHouse(c) => Page::ClickHouse(c.page(range, limit).await?),
            Source::Api(a) => Page::Api(a.page(range, limit).await?),
        })
    }
}

/// A page being read.
pub enum Page {
    ClickHouse(clickhouse::Page),
    Api(api::Page),
}

impl Page {
    /// The next row, or None at the end of the page.
    pub async fn next_row(&mut self) -> Result<Option<Row>, SourceError> {
        match self {
            Page::ClickHouse(p) => p.next_row().await,
            Page::Api(p) => p.next_row().await,
        }
    }
}

pub fn micros(t: DateTime<Utc>) -> i64 {
    t.timestamp_micros()
}

pub fn from_micros(us: i64) -> DateTime<Utc> {
    DateTime::from_timestamp_micros(us).unwrap_or(DateTime::<Utc>::MAX_UTC)
}

/// A UUID's text, or the nil UUID if it is not one: what reaches a query
/// from a cursor (only ever made from the source's own UUIDs).
pub fn checked_uuid(uuid: &str) -> &str {
    let ok = uuid.len() == 36
        && uuid.bytes().enumerate().all(|(i, b)| {
            matches!(i, 8 | 13 | 18 | 23) == (b == b'-') && (b == b'-' || b.is_ascii_hexdigit())
        });
    if ok {
        uuid
    } else {
        "00000000-0000-0000-0000-000000000000"
    }
}

/// `text` cut to `max` characters, for a source's answer in an error.
pub fn truncate(text: &str, max: usize) -> String {
    match text.char_indices().nth(max) {
        Some((at, _)) => format!("{}…", &text[..at]),
        None => text.to_owned(),
    }
}

/// reqwest's error text without the URL it names (it is logged once on its
/// own), with its causes.
pub fn without_url(e: &reqwest::Error) -> String {
    let mut text = e.to_string();
    if let Some(url) = e.url() {
        text = text.replace(&format!(" for url ({url})"), "");
    }
    let mut source = std::error::Error::source(e);
    while let Some(cause) = source {
        text += &format!(": {cause}");
        source = cause.source();
    }
    text
}
