//! PostHog's ClickHouse as a backfill source: the `events` table over
//! ClickHouse's HTTP interface (reqwest), one keyset page per query, each
//! page's rows streamed as they arrive (`FORMAT JSONEachRow`, a row a line),
//! never a whole result held.
//!
//! A page is `ORDER BY <ingested>, uuid ... LIMIT n` after the cursor: the
//! next page starts after the last row handed over, whatever happened to the
//! connection in between. Each row comes out in the shape of a
//! `clickhouse_events_json` message, which the stream's decoder reads.

use std::time::Duration;

use bytes::{Bytes, BytesMut};
use secrecy::{ExposeSecret, SecretString};
use serde::Deserialize;

use super::source::{checked_uuid, without_url, Cursor, Range, Row, SourceError};
use crate::config::{BackfillArgs, HistoryStart};

/// When ClickHouse got the row: `inserted_at`, or the Kafka time of the
/// message it came in for rows from before PostHog added that column. The
/// expression is the one PostHog indexes (`minmax_inserted_at`, a minmax
/// index) and reads its batch exports by, so pages after the cursor skip
/// the granules inserted before it. It is at or after the event's capture.
const INGESTED: &str = "COALESCE(inserted_at, _timestamp)";

/// The columns of a `clickhouse_events_json` message, as the events table
/// stores them; `_cursor_us` (the ingestion time, for the cursor) first.
const COLUMNS: &str =
    "toUnixTimestamp64Micro(toDateTime64(COALESCE(inserted_at, _timestamp), 6, 'UTC')) AS _cursor_us, uuid, distinct_id, event, \
team_id, properties, timestamp, created_at, elements_chain, \
nullIf(person_id, toUUID('00000000-0000-0000-0000-000000000000')) AS person_id, \
person_properties, person_created_at, person_mode, group0_properties, group1_properties, \
group2_properties, group3_properties, group4_properties";

/// `WHERE` of the rows of `range`. Values are numbers, or a UUID checked
/// by `source::checked_uuid`: nothing the operator or a row gives reaches the SQL
/// unchecked.
fn conditions(range: &Range) -> String {
    let mut sql = format!(
        "team_id = {} AND {INGESTED} < fromUnixTimestamp64Micro({}, 'UTC')",
        range.team_id, range.until_us
    );
    if let HistoryStart::From(from) = range.from {
        sql += &format!(
            " AND timestamp >= fromUnixTimestamp64Micro({}, 'UTC')",
            from.timestamp_micros()
        );
    }
    if let Some(after) = &range.after {
        // The first term lets the index skip what is before the cursor;
        // the tuple orders ties on the same microsecond by uuid.
        sql += &format!(
            " AND {INGESTED} >= fromUnixTimestamp64Micro({us}, 'UTC') \
             AND ({INGESTED}, uuid) > (fromUnixTimestamp64Micro({us}, 'UTC'), toUUID('{}'))",
            checked_uuid(&after.uuid),
            us = after.ingested_at_us,
        );
    }
    sql
}

pub fn count_sql(database: &str, range: &Range) -> String {
    format!(
        "SELECT count() FROM {}.events WHERE {} FORMAT TabSeparated",
        identifier(database),
        conditions(range)
    )
}

/// Rows ingested at or after `from_us` within `range` (the overlap window).
pub fn count_since_sql(database: &str, range: &Range, from_us: i64) -> String {
    format!(
        "SELECT countIf({INGESTED} >= fromUnixTimestamp64Micro({from_us}, 'UTC')) FROM {}.events WHERE {} FORMAT TabSeparated",
        identifier(database),
        conditions(range)
    )
}

pub fn page_sql(database: &str, range: &Range, limit: usize) -> String {
    format!(
        "SELECT {COLUMNS} FROM {}.events WHERE {} ORDER BY {INGESTED}, uuid LIMIT {limit} \
         SETTINGS output_format_json_quote_64bit_integers = 0, output_format_json_validate_utf8 = 1 \
         FORMAT JSONEachRow",
        identifier(database),
        conditions(range)
    )
}

/// A database name as a ClickHouse identifier, back-quoted.
fn identifier(name: &str) -> String {
    format!("`{}`", name.replace('\\', "\\\\").replace('`', "\\`"))
}

/// The ClickHouse client.
pub struct ClickHouse {
    http: reqwest::Client,
    url: url::Url,
    user: String,
    password: Option<SecretString>,
    database: String,
}

impl ClickHouse {
    pub fn new(args: &BackfillArgs) -> anyhow::Result<Self> {
        let http = reqwest::Client::builder()
            .connect_timeout(Duration::from_secs(10))
            // No total timeout: a page streams for as long as it has rows.
            // A read that stalls this long is a dead connection.
            .read_timeout(Duration::from_secs(120))
            .build()?;
        Ok(ClickHouse {
            http,
            url: args.clickhouse_host.0.clone(),
            user: args.clickhouse_user.clone(),
            password: args.password(),
            database: args.clickhouse_database.clone(),
        })
    }

    pub fn database(&self) -> &str {
        &self.database
    }

    async fn query(&self, sql: String) -> Result<reqwest::Response, SourceError> {
        let mut request = self
            .http
            .post(self.url.clone())
            .header("X-ClickHouse-User", &self.user)
            .body(sql);
        if let Some(password) = &self.password {
            let mut value = reqwest::header::HeaderValue::from_str(password.expose_secret())
                .map_err(|_| SourceError::Refused {
                    option: "CLICKHOUSE_PASSWORD",
                    message: "the password is not a valid HTTP header value".into(),
                })?;
            value.set_sensitive(true);
            request = request.header("X-ClickHouse-Key", value);
        }
        let response = request.send().await.map_err(|e| {
            SourceError::Transient(format!(
                "ClickHouse at {} is unreachable: {}",
                self.url,
                without_url(&e)
            ))
        })?;
        if response.status().is_success() {
            return Ok(response);
        }
        let status = response.status().as_u16();
        let code = response
            .headers()
            .get("X-ClickHouse-Exception-Code")
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.trim().parse::<u32>().ok());
        let body = response.text().await.unwrap_or_default();
        Err(classify(status, code, &body))
    }

    /// Checks the table is there and readable: a refusal names the option.
    pub async fn check(&self) -> Result<(), SourceError> {
        let sql = format!(
            "SELECT count() FROM {}.events WHERE 0 FORMAT TabSeparated",
            identifier(&self.database)
        );
        self.query(sql).await?.bytes().await.map_err(body_error)?;
        Ok(())
    }

    async fn number(&self, sql: String) -> Result<u64, SourceError> {
        let text = self.query(sql).await?.text().await.map_err(body_error)?;
        text.trim().parse().map_err(|_| {
            SourceError::Transient(format!("ClickHouse answered a count with {text:?}"))
        })
    }

    pub async fn count(&self, range: &Range) -> Result<u64, SourceError> {
        self.number(count_sql(&self.database, range)).await
    }

    pub async fn count_since(&self, range: &Range, from_us: i64) -> Result<u64, SourceError> {
        self.number(count_since_sql(&self.database, range, from_us))
            .await
    }

    /// Starts reading one page of `range`.
    pub async fn page(&self, range: &Range, limit: usize) -> Result<Page, SourceError> {
        let response = self.query(page_sql(&self.database, range, limit)).await?;
        Ok(Page {
            response,
            buffer: BytesMut::new(),
            done: false,
        })
    }
}

/// A page being read: rows as they arrive.
pub struct Page {
    response: reqwest::Response,
    buffer: BytesMut,
    done: bool,
}

impl Page {
    /// The next row, or None at the end of the page.
    pub async fn next_row(&mut self) -> Result<Option<Row>, SourceError> {
        loop {
            if let Some(newline) = self.buffer.iter().position(|b| *b == b'\n') {
                let line = self.buffer.split_to(newline + 1).freeze();
                let line = line.slice(..newline);
                if line.is_empty() {
                    continue;
                }
                return parse_row(line).map(Some);
            }
            if self.done {
                if self.buffer.is_empty() {
                    return Ok(None);
                }
                let line = self.buffer.split().freeze();
                return parse_row(line).map(Some);
            }
            match self.response.chunk().await.map_err(body_error)? {
                Some(chunk) => self.buffer.extend_from_slice(&chunk),
                None => self.done = true,
            }
        }
    }
}

/// The first fields of a page's row: its place in ingestion order and its key.
#[derive(Deserialize)]
struct Head<'a> {
    _cursor_us: i64,
    #[serde(borrow)]
    uuid: std::borrow::Cow<'a, str>,
    #[serde(borrow)]
    distinct_id: &'a serde_json::value::RawValue,
}

/// The head as ClickHouse writes it, `{"_cursor_us":<n>,"uuid":"<36>","distinct_id":"..."`,
/// read without going through the rest of the row (the decoder reads the
/// whole row next, and refuses it if it is not JSON). None for any other
/// shape, which serde then reads.
fn fast_head(line: &[u8]) -> Option<(i64, &str, &[u8])> {
    let rest = line.strip_prefix(b"{\"_cursor_us\":")?;
    let digits = rest
        .iter()
        .take_while(|b| b.is_ascii_digit() || **b == b'-')
        .count();
    let us: i64 = std::str::from_utf8(&rest[..digits]).ok()?.parse().ok()?;
    let rest = rest[digits..].strip_prefix(b",\"uuid\":\"")?;
    let uuid = std::str::from_utf8(rest.get(..36)?).ok()?;
    let rest = rest.get(36..)?.strip_prefix(b"\",\"distinct_id\":")?;
    if rest.first() != Some(&b'"') {
        return None;
    }
    let mut end = 1;
    loop {
        match rest.get(end)? {
            b'\\' => end += 2,
            b'"' => break,
            _ => end += 1,
        }
    }
    Some((us, uuid, &rest[..=end]))
}

fn parse_row(line: Bytes) -> Result<Row, SourceError> {
    if let Some((ingested_at_us, uuid, key)) = fast_head(&line) {
        return Ok(Row {
            cursor: Cursor {
                ingested_at_us,
                uuid: uuid.to_owned(),
            },
            key: line.slice_ref(key),
            json: line.clone(),
        });
    }
    match serde_json::from_slice::<Head<'_>>(&line) {
        Ok(head) => Ok(Row {
            cursor: Cursor {
                ingested_at_us: head._cursor_us,
                uuid: head.uuid.into_owned(),
            },
            key: Bytes::copy_from_slice(head.distinct_id.get().as_bytes()),
            json: line,
        }),
        // ClickHouse reports an error met while streaming inside the body.
        Err(_) if line.starts_with(b"Code: ") => Err(SourceError::Transient(format!(
            "ClickHouse failed while sending a page: {}",
            truncate(&String::from_utf8_lossy(&line))
        ))),
        Err(e) => Err(SourceError::Transient(format!(
            "ClickHouse sent a row that is not JSON ({e})"
        ))),
    }
}

fn body_error(e: reqwest::Error) -> SourceError {
    SourceError::Transient(format!(
        "reading ClickHouse's answer failed: {}",
        without_url(&e)
    ))
}

/// ClickHouse's exception codes the backfill tells apart.
mod code {
    pub const UNKNOWN_TABLE: u32 = 60;
    pub const UNKNOWN_DATABASE: u32 = 81;
    pub const UNKNOWN_USER: u32 = 192;
    pub const WRONG_PASSWORD: u32 = 193;
    pub const REQUIRED_PASSWORD: u32 = 194;
    pub const ACCESS_DENIED: u32 = 497;
    pub const AUTHENTICATION_FAILED: u32 = 516;
    pub const TIMEOUT_EXCEEDED: u32 = 159;
}

/// What a non-2xx answer means for the backfill.
pub fn classify(status: u16, exception_code: Option<u32>, body: &str) -> SourceError {
    let code = exception_code.or_else(|| {
        body.strip_prefix("Code: ")
            .and_then(|rest| rest.split('.').next())
            .and_then(|n| n.trim().parse().ok())
    });
    let message = truncate(body.trim());
    match code {
        Some(
            code::UNKNOWN_USER
            | code::WRONG_PASSWORD
            | code::REQUIRED_PASSWORD
            | code::AUTHENTICATION_FAILED,
        ) => SourceError::Refused {
            option: "CLICKHOUSE_USER and CLICKHOUSE_PASSWORD",
            message: format!("ClickHouse refused the credentials: {message}"),
        },
        Some(code::ACCESS_DENIED) => SourceError::Refused {
            option: "CLICKHOUSE_USER",
            message: format!("ClickHouse denied the user access to the events table: {message}"),
        },
        Some(code::TIMEOUT_EXCEEDED) => {
            SourceError::TooSlow(format!("ClickHouse stopped the query: {message}"))
        }
        Some(code::UNKNOWN_TABLE | code::UNKNOWN_DATABASE) => SourceError::Refused {
            option: "CLICKHOUSE_DATABASE",
            message: format!("PostHog's events table is not there: {message}"),
        },
        _ if status == 401 || status == 403 => SourceError::Refused {
            option: "CLICKHOUSE_USER and CLICKHOUSE_PASSWORD",
            message: format!("ClickHouse refused the credentials (HTTP {status}): {message}"),
        },
        _ if status >= 500 || status == 408 || status == 429 => {
            SourceError::Transient(format!("ClickHouse answered HTTP {status}: {message}"))
        }
        _ => SourceError::Refused {
            option: "CLICKHOUSE_HOST",
            message: format!("ClickHouse refused the query (HTTP {status}): {message}"),
        },
    }
}

fn truncate(text: &str) -> String {
    super::source::truncate(text, 300)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn range() -> Range {
        Range {
            team_id: 2,
            from: HistoryStart::All,
            after: None,
            until_us: 1_700_000_000_000_000,
        }
    }

    #[test]
    fn a_page_is_one_team_before_the_bound_after_the_cursor_in_ingestion_order() {
        let mut r = range();
        r.after = Some(Cursor {
            ingested_at_us: 1_600_000_000_000_000,
            uuid: "0190b3a0-0000-7000-8000-000000000001".into(),
        });
        let sql = page_sql("posthog", &r, 500);
        assert!(sql.contains("FROM `posthog`.events WHERE team_id = 2 AND COALESCE(inserted_at, _timestamp) < fromUnixTimestamp64Micro(1700000000000000, 'UTC')"), "{sql}");
        assert!(sql.contains("AND COALESCE(inserted_at, _timestamp) >= fromUnixTimestamp64Micro(1600000000000000, 'UTC')"), "{sql}");
        assert!(sql.contains("(COALESCE(inserted_at, _timestamp), uuid) > (fromUnixTimestamp64Micro(1600000000000000, 'UTC'), toUUID('0190b3a0-0000-7000-8000-000000000001'))"), "{sql}");
        assert!(
            sql.contains("ORDER BY COALESCE(inserted_at, _timestamp), uuid LIMIT 500"),
            "{sql}"
        );
        assert!(sql.ends_with("FORMAT JSONEachRow"), "{sql}");
        assert!(sql.starts_with(
            "SELECT toUnixTimestamp64Micro(toDateTime64(COALESCE(inserted_at, _timestamp), 6, 'UTC')) AS _cursor_us, uuid, distinct_id,"
        ));
    }

    #[test]
    fn history_from_a_time_filters_on_the_events_own_timestamp() {
        let mut r = range();
        r.from = HistoryStart::From(chrono::DateTime::from_timestamp(1_500_000_000, 0).unwrap());
        assert!(count_sql("posthog", &r)
            .contains("AND timestamp >= fromUnixTimestamp64Micro(1500000000000000, 'UTC')"));
    }

    #[test]
    fn nothing_but_a_uuid_and_an_identifier_reaches_the_sql() {
        assert_eq!(
            checked_uuid("'); DROP TABLE events; --"),
            "00000000-0000-0000-0000-000000000000"
        );
        assert_eq!(
            checked_uuid("0190B3A0-0000-7000-8000-00000000000f"),
            "0190B3A0-0000-7000-8000-00000000000f"
        );
        assert_eq!(identifier("post`hog"), "`post\\`hog`");
    }

    #[test]
    fn a_row_gives_its_cursor_and_key_and_stays_whole() {
        let line = Bytes::from_static(br#"{"_cursor_us":1700000000123456,"uuid":"0190b3a0-0000-7000-8000-000000000001","distinct_id":"user \"1\"","event":"$pageview","properties":"{}"}"#);
        let row = parse_row(line.clone()).unwrap();
        assert_eq!(row.cursor.ingested_at_us, 1_700_000_000_123_456);
        assert_eq!(row.cursor.uuid, "0190b3a0-0000-7000-8000-000000000001");
        assert_eq!(&row.key[..], br#""user \"1\"""#);
        assert_eq!(row.json, line);
    }

    #[test]
    fn the_fast_head_reads_what_serde_reads_or_leaves_the_row_to_it() {
        let rows: [&[u8]; 4] = [
            br#"{"_cursor_us":1700000000123456,"uuid":"0190b3a0-0000-7000-8000-000000000001","distinct_id":"user \"1\" \\","event":"x"}"#,
            br#"{"_cursor_us":-5,"uuid":"0190b3a0-0000-7000-8000-000000000002","distinct_id":"","event":"x"}"#,
            // Other shapes: serde reads them.
            br#"{"uuid":"0190b3a0-0000-7000-8000-000000000003","_cursor_us":7,"distinct_id":"a"}"#,
            br#"{"_cursor_us": 7, "uuid": "0190b3a0-0000-7000-8000-000000000004", "distinct_id": "a"}"#,
        ];
        for (i, line) in rows.iter().enumerate() {
            let head: Head<'_> = serde_json::from_slice(line).unwrap();
            match fast_head(line) {
                Some((us, uuid, key)) => {
                    assert!(i < 2);
                    assert_eq!(us, head._cursor_us);
                    assert_eq!(uuid, head.uuid);
                    assert_eq!(key, head.distinct_id.get().as_bytes());
                }
                None => assert!(i >= 2),
            }
            let row = parse_row(Bytes::copy_from_slice(line)).unwrap();
            assert_eq!(row.cursor.ingested_at_us, head._cursor_us);
            assert_eq!(&row.key[..], head.distinct_id.get().as_bytes());
        }
        // Cut short: no head, and no panic.
        for cut in 0..rows[0].len() {
            let _ = fast_head(&rows[0][..cut]);
        }
    }

    #[test]
    fn an_error_inside_a_streamed_answer_is_transient() {
        let e = parse_row(Bytes::from_static(
            b"Code: 241. DB::Exception: Memory limit exceeded",
        ))
        .unwrap_err();
        assert!(e.is_transient(), "{e}");
        assert!(e.to_string().contains("Memory limit"));
    }

    #[test]
    fn refusals_name_the_option_to_fix() {
        let auth = classify(516, None, "Code: 516. DB::Exception: default: Authentication failed: password is incorrect, or there is no user with such name. (AUTHENTICATION_FAILED)");
        assert!(
            matches!(
                auth,
                SourceError::Refused {
                    option: "CLICKHOUSE_USER and CLICKHOUSE_PASSWORD",
                    ..
                }
            ),
            "{auth:?}"
        );
        let auth = classify(403, Some(516), "whatever");
        assert!(!auth.is_transient());
        let table = classify(
            404,
            Some(60),
            "Code: 60. DB::Exception: Table posthog.events does not exist. (UNKNOWN_TABLE)",
        );
        assert!(
            matches!(
                table,
                SourceError::Refused {
                    option: "CLICKHOUSE_DATABASE",
                    ..
                }
            ),
            "{table:?}"
        );
        let db = classify(
            404,
            None,
            "Code: 81. DB::Exception: Database nope does not exist. (UNKNOWN_DATABASE)",
        );
        assert!(
            matches!(
                db,
                SourceError::Refused {
                    option: "CLICKHOUSE_DATABASE",
                    ..
                }
            ),
            "{db:?}"
        );
        assert!(classify(500, Some(241), "Code: 241. Memory limit").is_transient());
        assert!(classify(503, None, "").is_transient());
        assert!(!classify(400, Some(62), "Code: 62. Syntax error").is_transient());
    }
}
