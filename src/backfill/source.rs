//! What the backfill needs of a place that holds PostHog's events: a count,
//! and keyset pages in ingestion order. The cursor, the hand-over and the
//! checkpoints know nothing of where rows come from; `clickhouse` is one
//! such place.

use bytes::Bytes;
use chrono::{DateTime, Utc};

use crate::config::HistoryStart;

/// A position in ingestion order: rows strictly after it come next. Rows
/// are ordered by (ingestion time, uuid), which is unique per row but for
/// the unmerged duplicates of PostHog's ReplacingMergeTree (the same event).
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, serde::Serialize, serde::Deserialize)]
pub struct Cursor {
    /// Ingestion time (the source's: ClickHouse's insertion time),
    /// microseconds since the epoch.
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
}

impl SourceError {
    pub fn is_transient(&self) -> bool {
        matches!(self, SourceError::Transient(_))
    }
}

pub fn micros(t: DateTime<Utc>) -> i64 {
    t.timestamp_micros()
}

pub fn from_micros(us: i64) -> DateTime<Utc> {
    DateTime::from_timestamp_micros(us).unwrap_or(DateTime::<Utc>::MAX_UTC)
}
