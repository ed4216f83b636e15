//! Value parsers: each option's text to its typed value, for clap. An error
//! is the problem alone ([`Problem`]); the option's name is added from
//! clap's declaration when it is reported ([`super::option_error`]).

use std::fmt;
use std::net::SocketAddr;
use std::time::Duration;

use secrecy::{SecretBox, SecretString};
use url::Url;

use super::secret::{SecretFile, SecretUrl, WebhookUrl};
use super::{bad, ConfigError, StartAt, Topics};

/// What is wrong with an option's value, without the option's name.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("{0}")]
pub struct Problem(pub String);

impl From<ConfigError> for Problem {
    fn from(e: ConfigError) -> Self {
        Problem(e.problem)
    }
}

/// A whole number between `min` and `max`.
pub fn number<T>(
    min: T,
    max: T,
    unit: &'static str,
) -> impl Fn(&str) -> Result<T, Problem> + Clone + Send + Sync + 'static
where
    T: std::str::FromStr + PartialOrd + fmt::Display + Copy + Send + Sync + 'static,
{
    move |raw| {
        let expected = || {
            Problem(format!(
                "expected a whole number of {unit} between {min} and {max}, got {raw:?}"
            ))
        };
        let value: T = raw.trim().parse().map_err(|_| expected())?;
        if value < min || value > max {
            return Err(expected());
        }
        Ok(value)
    }
}

/// A duration in whole milliseconds between `min` and `max`.
pub fn millis(
    min: u64,
    max: u64,
) -> impl Fn(&str) -> Result<Duration, Problem> + Clone + Send + Sync + 'static {
    let parse = number(min, max, "milliseconds");
    move |raw| parse(raw).map(Duration::from_millis)
}

/// An optional team id: empty means every team.
pub fn team_id(raw: &str) -> Result<Option<i64>, Problem> {
    match raw.trim() {
        "" => Ok(None),
        raw => number(0, i64::MAX, "team id")(raw).map(Some),
    }
}

pub fn boolean(raw: &str) -> Result<bool, Problem> {
    match raw.trim().to_ascii_lowercase().as_str() {
        "true" | "1" | "yes" | "on" => Ok(true),
        "false" | "0" | "no" | "off" | "" => Ok(false),
        _ => Err(Problem(format!("expected true or false, got {raw:?}"))),
    }
}

/// Trimmed, and not empty.
pub fn non_empty(raw: &str) -> Result<String, Problem> {
    match raw.trim() {
        "" => Err(Problem("expected a non-empty value".into())),
        v => Ok(v.to_owned()),
    }
}

/// Trimmed; empty means None.
pub fn optional(raw: &str) -> Result<Option<String>, Problem> {
    let v = raw.trim();
    Ok((!v.is_empty()).then(|| v.to_owned()))
}

/// Splits the old app's comma-separated allow-list: spaces trimmed, empties dropped.
pub fn parse_allow_list(raw: &str) -> Vec<String> {
    raw.split(',')
        .map(str::trim)
        .filter(|name| !name.is_empty())
        .map(str::to_owned)
        .collect()
}

pub fn allow_list(raw: &str) -> Result<Vec<String>, Problem> {
    Ok(parse_allow_list(raw))
}

/// An absolute http(s) URL with a host and no credentials. The value is
/// never part of the problem: its path and query are secret.
pub fn webhook_url(raw: &str) -> Result<WebhookUrl, Problem> {
    let url = Url::parse(raw.trim()).map_err(|e| {
        Problem(format!(
            "expected an absolute http:// or https:// URL ({e})"
        ))
    })?;
    if !matches!(url.scheme(), "http" | "https") || url.host_str().is_none() {
        return Err(Problem(
            "expected an absolute http:// or https:// URL with a host".into(),
        ));
    }
    if !url.username().is_empty() || url.password().is_some() {
        return Err(Problem(
            "credentials in the URL (user:password@) are not supported".into(),
        ));
    }
    Ok(SecretBox::new(Box::new(SecretUrl::new(url))))
}

pub fn http_addr(raw: &str) -> Result<SocketAddr, Problem> {
    raw.trim().parse().map_err(|_| {
        Problem(format!(
            "expected an IP address and port such as 0.0.0.0:9464, got {raw:?}"
        ))
    })
}

pub fn start_at(raw: &str) -> Result<StartAt, Problem> {
    StartAt::parse(raw).map_err(Problem::from)
}

pub fn topics(raw: &str) -> Result<Topics, Problem> {
    Topics::parse("KAFKA_TOPIC", raw).map_err(Problem::from)
}

pub fn dlq_topic(raw: &str) -> Result<String, Problem> {
    topic_name("DLQ_TOPIC", raw).map_err(Problem::from)
}

pub fn state_topic(raw: &str) -> Result<String, Problem> {
    topic_name("STATE_TOPIC", raw).map_err(Problem::from)
}

/// Longest topic name Kafka accepts.
const MAX_TOPIC_NAME: usize = 249;

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

pub fn kafka_properties(raw: &str) -> Result<super::KafkaProperties, Problem> {
    super::parse_kafka_properties(raw).map_err(Problem::from)
}

/// A secret given inline; empty means not set.
pub fn secret(raw: &str) -> Result<SecretString, Problem> {
    Ok(SecretString::from(raw))
}

/// Reads a secret from a file (trailing newline trimmed); a blank path is
/// no file.
pub fn secret_file(raw: &str) -> Result<SecretFile, Problem> {
    let path = raw.trim();
    if path.is_empty() {
        return Ok(SecretFile(None));
    }
    std::fs::read_to_string(path)
        .map(|mut s| {
            s.truncate(s.trim_end_matches(['\n', '\r']).len());
            SecretFile(Some(SecretString::from(s)))
        })
        .map_err(|e| Problem(format!("cannot read {path}: {e}")))
}

/// A text file's contents; a blank path is none.
pub fn text_file(raw: &str) -> Result<Option<String>, Problem> {
    let path = raw.trim();
    if path.is_empty() {
        return Ok(None);
    }
    std::fs::read_to_string(path)
        .map(Some)
        .map_err(|e| Problem(format!("cannot read {path}: {e}")))
}

/// The PEM bytes of a CA bundle file; a blank path is none.
pub fn ca_bundle(raw: &str) -> Result<Option<Vec<u8>>, Problem> {
    let path = raw.trim();
    if path.is_empty() {
        return Ok(None);
    }
    let pem = std::fs::read(path).map_err(|e| Problem(format!("cannot read {path}: {e}")))?;
    let certs = reqwest::Certificate::from_pem_bundle(&pem)
        .map_err(|e| Problem(format!("{path} is not a PEM certificate bundle: {e}")))?;
    if certs.is_empty() {
        return Err(Problem(format!("{path} holds no PEM certificate")));
    }
    Ok(Some(pem))
}

/// Webhook headers, values secret.
pub type Headers = Vec<(String, SecretString)>;

pub fn headers(raw: &str) -> Result<Headers, Problem> {
    parse_headers(raw).map_err(Problem::from)
}

/// Parses `Name: value; Name: value` (or one per line).
pub fn parse_headers(raw: &str) -> Result<Headers, ConfigError> {
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
        headers.push((name.to_owned(), SecretString::from(value)));
    }
    Ok(headers)
}

/// A set of HTTP statuses, parsed from `400,413,500-599`.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct StatusSet(pub(crate) Vec<(u16, u16)>);

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

impl fmt::Display for StatusSet {
    /// As given: `400,413,450-451`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, (lo, hi)) in self.0.iter().enumerate() {
            if i > 0 {
                f.write_str(",")?;
            }
            if lo == hi {
                write!(f, "{lo}")?;
            } else {
                write!(f, "{lo}-{hi}")?;
            }
        }
        Ok(())
    }
}

pub fn reject_statuses(raw: &str) -> Result<StatusSet, Problem> {
    StatusSet::parse("WEBHOOK_REJECT_STATUSES", raw).map_err(Problem::from)
}
