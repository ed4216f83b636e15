//! PostHog's query API as a backfill source: `POST /api/projects/:id/query/`
//! with a HogQL query on `events`, for PostHog Cloud and for installs whose
//! ClickHouse is out of reach.
//!
//! PostHog's limits shape every query:
//! - keyset pages, never `OFFSET` (refused for personal-key queries): rows
//!   after the cursor, `ORDER BY created_at, toString(uuid) LIMIT n`;
//! - at most 50,000 rows a query (BACKFILL_PAGE_ROWS is capped there), and
//!   60 s: each page is a scan of the project's events filtered on
//!   `created_at`, which PostHog's table does not index, so pages are kept
//!   to what answers well within that;
//! - throttling per key: an HTTP 429 is waited out for as long as its body
//!   says (PostHog's own has no `Retry-After`), not an error;
//! - times: the API renders DateTime values in the project's timezone, so
//!   every time the backfill reads is formatted in UTC by the query itself
//!   (`formatDateTime(..., 'UTC')`), and every bound is given in UTC.
//!
//! The ingestion time is `created_at` (when PostHog ingested the event; the
//! API does not expose ClickHouse's `_timestamp`), on which the cursor and
//! the hand-over bound work, as the ClickHouse source's work on its insertion
//! time. Each row is rebuilt as a `clickhouse_events_json` message, field by
//! field from the answer's raw JSON values, so the decoder makes of it the
//! same webhook event as of the same row read from ClickHouse.

use std::time::Duration;

use bytes::Bytes;
use chrono::NaiveDateTime;
use secrecy::{ExposeSecret, SecretString};
use serde::Deserialize;
use serde_json::value::RawValue;
use url::Url;

use super::rows::{RowScanner, ScanError};
use super::source::{checked_uuid, without_url, Cursor, Range, Row, SourceError};
use crate::config::{BackfillArgs, HistoryStart};

/// What a page selects, in order, and the `clickhouse_events_json` field
/// each column becomes. Times are formatted `%Y-%m-%d %H:%i:%S.%f` in UTC
/// (ClickHouse's text, to the microsecond); the first column, `created_at`,
/// is also the cursor's time.
const COLUMNS: [(&str, &str); 17] = [
    (CREATED, "created_at"),
    ("toString(uuid)", "uuid"),
    ("distinct_id", "distinct_id"),
    ("event", "event"),
    ("team_id", "team_id"),
    ("properties", "properties"),
    (
        "formatDateTime(timestamp, '%Y-%m-%d %H:%i:%S.%f', 'UTC')",
        "timestamp",
    ),
    ("elements_chain", "elements_chain"),
    (
        "nullIf(toString(poe.id), '00000000-0000-0000-0000-000000000000')",
        "person_id",
    ),
    ("poe.properties", "person_properties"),
    (
        "formatDateTime(poe.created_at, '%Y-%m-%d %H:%i:%S.%f', 'UTC')",
        "person_created_at",
    ),
    ("person_mode", "person_mode"),
    ("goe_0.properties", "group0_properties"),
    ("goe_1.properties", "group1_properties"),
    ("goe_2.properties", "group2_properties"),
    ("goe_3.properties", "group3_properties"),
    ("goe_4.properties", "group4_properties"),
];

/// The ingestion time as fixed-width UTC text to the microsecond, which
/// orders as the time does. Bounds and the cursor compare with it as text:
/// nothing depends on how a HogQL version reads a time literal or which
/// timezone it applies (`created_at` has no index to lose).
const CREATED: &str = "formatDateTime(created_at, '%Y-%m-%d %H:%i:%S.%f', 'UTC')";

/// `'YYYY-MM-DD HH:MM:SS.ffffff'` in UTC: the text `CREATED` gives.
fn time_text(us: i64) -> String {
    format!(
        "'{}'",
        super::source::from_micros(us).format("%Y-%m-%d %H:%M:%S%.6f")
    )
}

/// `toDateTime('<UTC text>', 'UTC')`: a time HogQL reads in UTC (its
/// `toDateTime` takes the timezone as its second argument and keeps
/// microseconds), whatever the project's timezone.
fn time_literal(us: i64) -> String {
    format!("toDateTime({}, 'UTC')", time_text(us))
}

/// `WHERE` of the rows of `range` (the project is the URL's).
fn conditions(range: &Range) -> String {
    let mut sql = format!("{CREATED} < {}", time_text(range.until_us));
    if let HistoryStart::From(from) = range.from {
        // `timestamp` is in PostHog's sort key: a time, so the index helps.
        sql += &format!(
            " AND timestamp >= {}",
            time_literal(from.timestamp_micros())
        );
    }
    if let Some(after) = &range.after {
        let at = time_text(after.ingested_at_us);
        sql += &format!(
            " AND {CREATED} >= {at} AND ({CREATED} > {at} OR toString(uuid) > '{}')",
            checked_uuid(&after.uuid)
        );
    }
    sql
}

pub fn count_hogql(range: &Range) -> String {
    format!("SELECT count() FROM events WHERE {}", conditions(range))
}

pub fn count_since_hogql(range: &Range, from_us: i64) -> String {
    format!(
        "SELECT countIf({CREATED} >= {}) FROM events WHERE {}",
        time_text(from_us),
        conditions(range)
    )
}

pub fn page_hogql(range: &Range, limit: usize) -> String {
    let columns: Vec<&str> = COLUMNS.iter().map(|(expr, _)| *expr).collect();
    format!(
        "SELECT {} FROM events WHERE {} ORDER BY created_at, toString(uuid) LIMIT {limit}",
        columns.join(", "),
        conditions(range)
    )
}

/// The query API client.
pub struct Api {
    http: reqwest::Client,
    /// `<base>/api/projects/<id>/query/`.
    endpoint: Url,
    project_id: i64,
    key: SecretString,
}

impl Api {
    pub fn new(args: &BackfillArgs) -> anyhow::Result<Self> {
        let project_id = args.project_id.ok_or_else(|| {
            anyhow::anyhow!(
                "invalid value for POSTHOG_PROJECT_ID: the api source reads one project's events; set POSTHOG_PROJECT_ID (the number in the project's URL, /project/<id>)"
            )
        })?;
        let key = args.api_key().ok_or_else(|| {
            anyhow::anyhow!(
                "invalid value for POSTHOG_PERSONAL_API_KEY: the api source needs a personal API key with the query:read scope; set POSTHOG_PERSONAL_API_KEY or POSTHOG_PERSONAL_API_KEY_FILE"
            )
        })?;
        let mut endpoint = args.api_url.clone();
        let base = endpoint.path().trim_end_matches('/').to_owned();
        endpoint.set_path(&format!("{base}/api/projects/{project_id}/query/"));
        let http = reqwest::Client::builder()
            .connect_timeout(Duration::from_secs(10))
            // No total timeout: a page's answer is read as the worker takes
            // its rows, which a slow webhook can hold up for minutes. PostHog
            // gives a query 60 s; a read that stalls 120 s is a dead connection.
            .read_timeout(Duration::from_secs(120))
            .user_agent(concat!("patterns-connector/", env!("CARGO_PKG_VERSION")))
            // A redirect (http to https, a login page) would drop the key
            // or turn the POST into a GET: said, never followed.
            .redirect(reqwest::redirect::Policy::none())
            .build()?;
        Ok(Api {
            http,
            endpoint,
            project_id,
            key,
        })
    }

    pub fn project_id(&self) -> i64 {
        self.project_id
    }

    /// Sends `hogql`; a 2xx JSON answer is returned unread, anything else
    /// is read and classified.
    async fn send(&self, hogql: &str) -> Result<reqwest::Response, SourceError> {
        let body = serde_json::json!({
            "query": {"kind": "HogQLQuery", "query": hogql},
            // Never a cached answer: a page must see what is there now.
            "refresh": "force_blocking",
            "name": "patterns-connector backfill",
        });
        let mut auth =
            reqwest::header::HeaderValue::from_str(&format!("Bearer {}", self.key.expose_secret()))
                .map_err(|_| SourceError::Refused {
                    option: "POSTHOG_PERSONAL_API_KEY",
                    message: "the personal API key is not a valid HTTP header value".into(),
                })?;
        auth.set_sensitive(true);
        let response = self
            .http
            .post(self.endpoint.clone())
            .header(reqwest::header::AUTHORIZATION, auth)
            .header(reqwest::header::CONTENT_TYPE, "application/json")
            .body(body.to_string())
            .send()
            .await
            .map_err(|e| {
                SourceError::Transient(format!(
                    "PostHog's query API at {} is unreachable: {}",
                    self.endpoint,
                    without_url(&e)
                ))
            })?;
        let status = response.status().as_u16();
        let retry_after = response
            .headers()
            .get(reqwest::header::RETRY_AFTER)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.trim().parse::<u64>().ok());
        let json = response
            .headers()
            .get(reqwest::header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .is_some_and(|v| v.contains("json"));
        if (200..300).contains(&status) && json {
            return Ok(response);
        }
        let body = response.bytes().await.map_err(body_error)?;
        Err(classify(
            status,
            json,
            retry_after,
            &body,
            self.project_id,
            &self.endpoint,
        ))
    }

    /// A small answer (a count), read whole.
    async fn query(&self, hogql: &str) -> Result<Bytes, SourceError> {
        self.send(hogql).await?.bytes().await.map_err(body_error)
    }

    /// Checks the key, the scope and the project with a query that reads nothing.
    pub async fn check(&self) -> Result<(), SourceError> {
        let body = self.query("SELECT count() FROM events WHERE 0").await?;
        parse_answer(&body, None)?;
        Ok(())
    }

    async fn number(&self, hogql: &str) -> Result<u64, SourceError> {
        let body = self.query(hogql).await?;
        let rows = parse_answer(&body, Some(1))?;
        rows.first()
            .and_then(|row| row_values(row.get().as_bytes(), 1).ok())
            .and_then(|values| serde_json::from_str::<u64>(values[0].get()).ok())
            .ok_or_else(|| {
                SourceError::Transient(format!(
                    "PostHog answered a count with {}",
                    truncate(&String::from_utf8_lossy(&body))
                ))
            })
    }

    pub async fn count(&self, range: &Range) -> Result<u64, SourceError> {
        self.number(&count_hogql(range)).await
    }

    pub async fn count_since(&self, range: &Range, from_us: i64) -> Result<u64, SourceError> {
        self.number(&count_since_hogql(range, from_us)).await
    }

    /// One page: its rows as the answer arrives (`rows::RowScanner`),
    /// never the whole answer held.
    pub async fn page(&self, range: &Range, limit: usize) -> Result<Page, SourceError> {
        let response = self.send(&page_hogql(range, limit)).await?;
        Ok(Page {
            response,
            scanner: RowScanner::default(),
            done: false,
        })
    }
}

fn body_error(e: reqwest::Error) -> SourceError {
    SourceError::Transient(format!(
        "reading PostHog's answer failed: {}",
        without_url(&e)
    ))
}

/// A page being read.
pub struct Page {
    response: reqwest::Response,
    scanner: RowScanner,
    done: bool,
}

impl Page {
    /// The next row, or None at the end of the page.
    pub async fn next_row(&mut self) -> Result<Option<Row>, SourceError> {
        loop {
            if let Some(row) = self.scanner.next_row().map_err(scan_error)? {
                let values = row_values(&row, COLUMNS.len())?;
                return to_row(&values).map(Some);
            }
            if self.done {
                self.scanner.finish().map_err(scan_error)?;
                return Ok(None);
            }
            match self.response.chunk().await.map_err(body_error)? {
                Some(chunk) => self.scanner.push(&chunk),
                None => self.done = true,
            }
        }
    }
}

fn scan_error(e: ScanError) -> SourceError {
    match e {
        // A connection cut mid-answer: the next page starts after the last row.
        ScanError::Truncated => SourceError::Transient(format!("PostHog's answer {e}")),
        _ => SourceError::Refused {
            option: "POSTHOG_API_URL",
            message: format!("{e}: is POSTHOG_API_URL a PostHog instance?"),
        },
    }
}

#[derive(Deserialize)]
struct Answer<'a> {
    #[serde(borrow)]
    results: Option<Vec<&'a RawValue>>,
    #[serde(default, borrow)]
    columns: Option<Vec<&'a RawValue>>,
}

/// The rows of a query's answer, each a raw JSON array, when the answer
/// names `width` columns (if given).
fn parse_answer(body: &[u8], width: Option<usize>) -> Result<Vec<&RawValue>, SourceError> {
    let answer: Answer<'_> = serde_json::from_slice(body).map_err(|e| SourceError::Refused {
        option: "POSTHOG_API_URL",
        message: format!(
            "the answer is not PostHog's query JSON ({e}): is POSTHOG_API_URL a PostHog instance?"
        ),
    })?;
    let rows = answer.results.ok_or_else(|| SourceError::Refused {
        option: "POSTHOG_API_URL",
        message: format!(
            "the answer has no `results`: {}; is POSTHOG_API_URL a PostHog instance?",
            truncate(&String::from_utf8_lossy(body))
        ),
    })?;
    if let Some(width) = width {
        let columns = answer.columns.map_or(width, |c| c.len());
        if columns != width {
            return Err(wrong_width(columns, width));
        }
    }
    Ok(rows)
}

/// A row's values: a JSON array of `width`.
fn row_values(row: &[u8], width: usize) -> Result<Vec<&RawValue>, SourceError> {
    let values: Vec<&RawValue> = serde_json::from_slice(row).map_err(|e| {
        SourceError::Transient(format!("PostHog answered a row that is not an array ({e})"))
    })?;
    if values.len() != width {
        return Err(wrong_width(values.len(), width));
    }
    Ok(values)
}

fn wrong_width(columns: usize, width: usize) -> SourceError {
    SourceError::Refused {
        option: "POSTHOG_API_URL",
        message: format!("PostHog answered {columns} columns where the query asked for {width}"),
    }
}

/// Microseconds since the epoch of HogQL's `YYYY-MM-DD HH:MM:SS.ffffff` (UTC).
fn micros_of(text: &str) -> Option<i64> {
    NaiveDateTime::parse_from_str(text, "%Y-%m-%d %H:%M:%S%.f")
        .ok()
        .map(|t| t.and_utc().timestamp_micros())
}

/// A page's row as a `clickhouse_events_json` message.
fn to_row(values: &[&RawValue]) -> Result<Row, SourceError> {
    let bad = |what: &str| SourceError::Transient(format!("PostHog answered a row with {what}"));
    let text = |i: usize| serde_json::from_str::<String>(values[i].get()).ok();
    let ingested = text(0).ok_or_else(|| bad("no created_at"))?;
    let ingested_at_us = micros_of(&ingested).ok_or_else(|| bad("an unreadable created_at"))?;
    let uuid = text(1).ok_or_else(|| bad("no uuid"))?;
    let mut json = Vec::with_capacity(values.iter().map(|v| v.get().len() + 24).sum());
    json.extend_from_slice(format!("{{\"_cursor_us\":{ingested_at_us}").as_bytes());
    for ((_, field), value) in COLUMNS.iter().zip(values) {
        json.extend_from_slice(format!(",\"{field}\":").as_bytes());
        json.extend_from_slice(value.get().as_bytes());
    }
    json.push(b'}');
    Ok(Row {
        cursor: Cursor {
            ingested_at_us,
            uuid,
        },
        key: Bytes::copy_from_slice(values[2].get().as_bytes()),
        json: Bytes::from(json),
    })
}

/// PostHog's error body: `{"type", "code", "detail", "attr"}`.
#[derive(Deserialize)]
struct Problem {
    #[serde(default)]
    detail: Option<String>,
}

/// What a non-2xx (or non-JSON) answer means for the backfill.
pub fn classify(
    status: u16,
    json: bool,
    retry_after: Option<u64>,
    body: &[u8],
    project_id: i64,
    endpoint: &Url,
) -> SourceError {
    let detail = if json {
        serde_json::from_slice::<Problem>(body)
            .ok()
            .and_then(|p| p.detail)
            .unwrap_or_else(|| truncate(&String::from_utf8_lossy(body)))
    } else {
        String::new()
    };
    if (300..400).contains(&status) {
        return SourceError::Refused {
            option: "POSTHOG_API_URL",
            message: format!(
                "{endpoint} answered HTTP {status}, a redirect: POSTHOG_API_URL must be the instance's own base URL (https, the host PostHog is served on), such as https://us.posthog.com"
            ),
        };
    }
    // 504 and Cloudflare's 524: a gateway gave up waiting for the query.
    if matches!(status, 504 | 524) || (400..600).contains(&status) && ran_out_of_time(&detail) {
        return SourceError::TooSlow(format!(
            "PostHog stopped the query for taking too long (HTTP {status}: {detail})"
        ));
    }
    if !json && !matches!(status, 408 | 429) && status < 500 {
        return SourceError::Refused {
            option: "POSTHOG_API_URL",
            message: format!(
                "{endpoint} answered HTTP {status} without JSON ({}): this is not PostHog's query API; POSTHOG_API_URL is the instance's base URL, such as https://us.posthog.com",
                describe_body(body)
            ),
        };
    }
    match status {
        200..=299 => SourceError::Refused {
            option: "POSTHOG_API_URL",
            message: format!(
                "{endpoint} answered without JSON ({}): this is not PostHog's query API; POSTHOG_API_URL is the instance's base URL, such as https://us.posthog.com",
                describe_body(body)
            ),
        },
        401 => SourceError::Refused {
            option: "POSTHOG_PERSONAL_API_KEY",
            message: format!(
                "PostHog refused the personal API key (HTTP 401: {detail}); a key works only on its own instance or Cloud region (POSTHOG_API_URL: https://us.posthog.com or https://eu.posthog.com)"
            ),
        },
        403 => SourceError::Refused {
            option: "POSTHOG_PERSONAL_API_KEY",
            message: format!(
                "PostHog refused the query (HTTP 403: {detail}): the personal API key needs the query:read scope and access to project {project_id}"
            ),
        },
        404 => SourceError::Refused {
            option: "POSTHOG_PROJECT_ID",
            message: format!(
                "PostHog has no project {project_id} for this key (HTTP 404: {detail})"
            ),
        },
        429 => {
            // PostHog's own answer carries no Retry-After header: its body
            // says when ("Expected available in N seconds."). A proxy's may.
            let (secs, said) = match (retry_after, expected_available(&detail)) {
                (Some(secs), _) => (secs, "as Retry-After says"),
                (None, Some(secs)) => (secs, "as PostHog says"),
                (None, None) => (THROTTLE_WAIT_S, "PostHog gave no time"),
            };
            let wait = Duration::from_secs(secs.clamp(1, MAX_THROTTLE_WAIT_S));
            SourceError::Throttled {
                wait,
                message: format!(
                    "PostHog throttled the query API (HTTP 429: {}); waiting {} s, {said}",
                    if detail.is_empty() { "no detail" } else { &detail },
                    wait.as_secs()
                ),
            }
        }
        408 | 500..=599 => SourceError::Transient(format!(
            "PostHog's query API answered HTTP {status}: {}",
            if detail.is_empty() {
                describe_body(body)
            } else {
                detail
            }
        )),
        _ => SourceError::Refused {
            option: "POSTHOG_API_URL",
            message: format!(
                "PostHog refused the query (HTTP {status}: {detail}); an older PostHog may lack a HogQL function the backfill uses"
            ),
        },
    }
}

/// The wait after a 429 that names none.
const THROTTLE_WAIT_S: u64 = 60;
/// The longest wait a 429 gets: PostHog's throttle window is an hour.
const MAX_THROTTLE_WAIT_S: u64 = 3600;

/// The N of DRF's throttled answer, "Request was throttled. Expected
/// available in N seconds." (N may be fractional in other versions).
fn expected_available(detail: &str) -> Option<u64> {
    let rest = detail.split("available in ").nth(1)?;
    let number: String = rest
        .chars()
        .take_while(|c| c.is_ascii_digit() || *c == '.')
        .collect();
    let secs: f64 = number.parse().ok()?;
    (secs.is_finite() && secs >= 0.0).then(|| secs.ceil() as u64)
}

/// PostHog's words for a query over its time limit (its own "max
/// execution time" answer, ClickHouse's TIMEOUT_EXCEEDED, or its estimate
/// refusing to start one).
fn ran_out_of_time(detail: &str) -> bool {
    let detail = detail.to_ascii_lowercase();
    [
        "max execution time",
        "timeout_exceeded",
        "timed out",
        "timeout exceeded",
        "estimated query execution time",
        "query took too long",
        "time limit for queries",
    ]
    .iter()
    .any(|words| detail.contains(words))
}

fn describe_body(body: &[u8]) -> String {
    let text = String::from_utf8_lossy(body);
    let lower = text.to_ascii_lowercase();
    if lower.contains("<html") || lower.contains("<!doctype") {
        "an HTML page".into()
    } else if text.trim().is_empty() {
        "an empty body".into()
    } else {
        truncate(text.trim())
    }
}

fn truncate(text: &str) -> String {
    super::source::truncate(text, 200)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The option a refusal names, if it is one.
    fn refused_by(e: &SourceError) -> Option<&'static str> {
        match e {
            SourceError::Refused { option, .. } => Some(option),
            _ => None,
        }
    }

    /// A throttle's wait and message.
    fn throttled_wait(e: SourceError) -> (Duration, String) {
        match e {
            SourceError::Throttled { wait, message } => (wait, message),
            other => panic!("{other:?}"),
        }
    }

    fn range() -> Range {
        Range {
            team_id: 2,
            from: HistoryStart::All,
            after: None,
            until_us: 1_700_000_000_123_456,
        }
    }

    #[test]
    fn a_page_is_a_keyset_page_on_created_at_with_utc_bounds_and_no_offset() {
        let mut r = range();
        r.after = Some(Cursor {
            ingested_at_us: 1_600_000_000_000_001,
            uuid: "0190b3a0-0000-7000-8000-000000000001".into(),
        });
        let q = page_hogql(&r, 500);
        let created = "formatDateTime(created_at, '%Y-%m-%d %H:%i:%S.%f', 'UTC')";
        assert!(
            q.contains(&format!("WHERE {created} < '2023-11-14 22:13:20.123456'")),
            "{q}"
        );
        assert!(q.contains(&format!("{created} >= '2020-09-13 12:26:40.000001' AND ({created} > '2020-09-13 12:26:40.000001' OR toString(uuid) > '0190b3a0-0000-7000-8000-000000000001')")), "{q}");
        assert!(
            q.ends_with("ORDER BY created_at, toString(uuid) LIMIT 500"),
            "{q}"
        );
        assert!(!q.to_uppercase().contains("OFFSET"));
        assert!(q.contains("formatDateTime(timestamp, '%Y-%m-%d %H:%i:%S.%f', 'UTC')"));
        r.from = HistoryStart::From(super::super::source::from_micros(1_500_000_000_000_000));
        let q = page_hogql(&r, 500);
        assert!(
            q.contains("timestamp >= toDateTime('2017-07-14 02:40:00.000000', 'UTC')"),
            "{q}"
        );
    }

    #[test]
    fn nothing_from_a_cursor_reaches_the_query_unchecked() {
        let mut r = range();
        r.after = Some(Cursor {
            ingested_at_us: 0,
            uuid: "x' OR 1 = 1 --".into(),
        });
        let q = count_hogql(&r);
        assert!(!q.contains("OR 1 = 1"), "{q}");
        assert!(q.contains("'00000000-0000-0000-0000-000000000000'"));
    }

    #[test]
    fn a_row_becomes_a_clickhouse_events_json_message() {
        let body = br#"{"results":[["2024-05-01 12:00:00.000123","0190b3a0-0000-7000-8000-000000000001","d\u00e9",
            "$pageview",2,"{\"a\":1}","2024-04-30 08:00:00.500000","",null,"{}","1970-01-01 00:00:00.000000","full","","","","",""]],
            "columns":["a","b","c","d","e","f","g","h","i","j","k","l","m","n","o","p","q"],"hasMore":false}"#;
        let rows = parse_answer(body, Some(COLUMNS.len())).unwrap();
        let values = row_values(rows[0].get().as_bytes(), COLUMNS.len()).unwrap();
        let row = to_row(&values).unwrap();
        assert_eq!(row.cursor.ingested_at_us, 1_714_564_800_000_123);
        assert_eq!(&row.key[..], br#""d\u00e9""#);
        let v: serde_json::Value = serde_json::from_slice(&row.json).unwrap();
        assert_eq!(v["created_at"], "2024-05-01 12:00:00.000123");
        assert_eq!(v["timestamp"], "2024-04-30 08:00:00.500000");
        assert_eq!(v["properties"], "{\"a\":1}");
        assert_eq!(v["team_id"], 2);
        assert!(v["person_id"].is_null());
        assert_eq!(v["distinct_id"], "dé");
        let event = crate::event::decode::decode(
            Some(&row.json),
            crate::config::InputFormat::Clickhouse,
            chrono::Utc::now(),
        );
        assert!(event.is_ok(), "{event:?}");
    }

    #[test]
    fn an_answer_of_the_wrong_shape_names_the_url() {
        let e = parse_answer(b"<html>login</html>", None).unwrap_err();
        assert_eq!(refused_by(&e), Some("POSTHOG_API_URL"), "{e:?}");
        let e = parse_answer(br#"{"results":[[1,2]],"columns":["a","b"]}"#, Some(3)).unwrap_err();
        assert!(e.to_string().contains("2 columns"), "{e}");
        let e = row_values(b"[1,2]", 3).unwrap_err();
        assert!(e.to_string().contains("2 columns"), "{e}");
    }

    #[test]
    fn refusals_name_the_option_and_throttling_waits() {
        let url = Url::parse("https://us.posthog.com/api/projects/7/query/").unwrap();
        let c = |status, json, retry, body: &str| {
            classify(status, json, retry, body.as_bytes(), 7, &url)
        };
        let e = c(
            401,
            true,
            None,
            r#"{"type":"authentication_error","code":"authentication_failed","detail":"Invalid key"}"#,
        );
        assert_eq!(refused_by(&e), Some("POSTHOG_PERSONAL_API_KEY"), "{e:?}");
        assert!(e.to_string().contains("Invalid key"), "{e}");
        let e = c(
            403,
            true,
            None,
            r#"{"detail":"API key missing required scope 'query:read'"}"#,
        );
        assert!(e.to_string().contains("query:read"), "{e}");
        assert_eq!(refused_by(&e), Some("POSTHOG_PERSONAL_API_KEY"), "{e:?}");
        let e = c(404, true, None, r#"{"detail":"Not found."}"#);
        assert_eq!(refused_by(&e), Some("POSTHOG_PROJECT_ID"), "{e:?}");
        let e = c(404, false, None, "<!DOCTYPE html><html>Not Found</html>");
        assert_eq!(refused_by(&e), Some("POSTHOG_API_URL"), "{e:?}");
        assert!(e.to_string().contains("an HTML page"), "{e}");
        let e = c(301, false, None, "");
        assert!(e.to_string().contains("a redirect"), "{e}");
        assert_eq!(refused_by(&e), Some("POSTHOG_API_URL"), "{e:?}");
        let e = c(200, false, None, "<html>Log in</html>");
        assert_eq!(refused_by(&e), Some("POSTHOG_API_URL"), "{e:?}");
        let (wait, message) = throttled_wait(c(
            429,
            true,
            Some(42),
            r#"{"detail":"Request was throttled."}"#,
        ));
        assert_eq!(wait, Duration::from_secs(42));
        assert!(message.contains("42 s"), "{message}");
        // PostHog's own 429 has no Retry-After: its body says the wait.
        let (wait, message) = throttled_wait(c(
            429,
            true,
            None,
            r#"{"type":"throttled_error","code":"throttled","detail":"Request was throttled. Expected available in 37 seconds.","attr":null}"#,
        ));
        assert_eq!(wait, Duration::from_secs(37));
        assert!(message.contains("37 s"), "{message}");
        // An absurd wait is cut to an hour, PostHog's throttle window
        // (a wait of u64::MAX seconds would overflow the failing clock).
        for (header, body) in [
            (Some(u64::MAX), "{}"),
            (
                None,
                r#"{"detail":"Expected available in 99999999999999999999999 seconds."}"#,
            ),
        ] {
            assert_eq!(
                throttled_wait(c(429, true, header, body)).0,
                Duration::from_secs(3600)
            );
        }
        // Neither (too many concurrent queries): a minute.
        let (wait, _) = throttled_wait(c(
            429,
            true,
            None,
            r#"{"detail":"Too many concurrent queries."}"#,
        ));
        assert_eq!(wait, Duration::from_secs(60));
        // A newer PostHog's words for the API's time limit.
        let e = c(
            400,
            true,
            None,
            r#"{"detail":"This query hit the 60-second time limit for queries run through the API. Submit it as an async query to give it more time."}"#,
        );
        assert!(matches!(e, SourceError::TooSlow(_)), "{e:?}");
        let e = c(
            500,
            true,
            None,
            r#"{"detail":"Code: 159. DB::Exception: Timeout exceeded: elapsed 60.1 seconds, maximum: 60. (TIMEOUT_EXCEEDED)"}"#,
        );
        assert!(matches!(e, SourceError::TooSlow(_)), "{e:?}");
        let e = c(
            400,
            true,
            None,
            r#"{"detail":"Estimated query execution time (75 seconds) is too long"}"#,
        );
        assert!(matches!(e, SourceError::TooSlow(_)), "{e:?}");
        let e = c(
            504,
            true,
            None,
            r#"{"type":"server_error","code":"timeout","detail":"Query has hit the max execution time before completing. See our docs for how to improve your query performance."}"#,
        );
        assert!(matches!(e, SourceError::TooSlow(_)), "{e:?}");
        let e = c(504, false, None, "<html>Gateway Timeout</html>");
        assert!(matches!(e, SourceError::TooSlow(_)), "{e:?}");
        assert!(c(408, false, None, "<html>Request Timeout</html>").is_transient());
        assert!(c(503, false, None, "").is_transient());
        assert!(c(502, true, None, "{}").is_transient());
    }
}
