//! The one place that decides what a webhook answer means and how long to
//! wait before trying again. Pure: time and randomness are arguments.

use std::time::{Duration, SystemTime};

use crate::config::StatusSet;

/// What to do after one webhook request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    /// 2xx: the batch is delivered.
    Delivered,
    /// Try the same request again later, forever.
    Retry {
        /// Set when the server said how long to wait (`Retry-After`).
        retry_after: Option<Duration>,
        /// False for the expected transient failures (connect errors,
        /// timeouts, 408, 429, 5xx). True for statuses that usually mean the
        /// endpoint is misconfigured (401, 403, 404, 3xx, ...): retried all the
        /// same, since the events are not at fault, but logged as errors.
        suspicious: bool,
    },
    /// A status in `WEBHOOK_REJECT_STATUSES`: the webhook refuses these
    /// events; the batch is split to find which.
    Rejected,
}

/// Classifies an HTTP status. `retry_after` is the raw `Retry-After` header;
/// `reject` the statuses that reject events.
pub fn classify_status(
    status: u16,
    retry_after: Option<&str>,
    now: SystemTime,
    reject: &StatusSet,
) -> Verdict {
    match status {
        200..=299 => Verdict::Delivered,
        _ if reject.contains(status) => Verdict::Rejected,
        _ => Verdict::Retry {
            retry_after: retry_after.and_then(|raw| parse_retry_after(raw, now)),
            suspicious: !matches!(status, 408 | 429 | 500..=599),
        },
    }
}

/// The longest `Retry-After` we obey; a server asking for more is waited on for this long.
pub const MAX_RETRY_AFTER: Duration = Duration::from_secs(3600);

/// `Retry-After` as delay-seconds or an HTTP date, capped at [`MAX_RETRY_AFTER`].
pub fn parse_retry_after(raw: &str, now: SystemTime) -> Option<Duration> {
    let raw = raw.trim();
    let delay = if let Ok(seconds) = raw.parse::<u64>() {
        Duration::from_secs(seconds)
    } else {
        let at = httpdate::parse_http_date(raw).ok()?;
        at.duration_since(now).unwrap_or(Duration::ZERO)
    };
    Some(delay.min(MAX_RETRY_AFTER))
}

/// Exponential backoff with full jitter: a uniform draw in
/// `[0, min(max, min_delay * 2^attempt)]`, never below `min_delay / 2` so a
/// failing webhook is not hammered, and never below the server's `Retry-After`.
/// `unit` is a uniform random number in `[0, 1)`.
pub fn retry_delay(
    attempt: u32,
    min_delay: Duration,
    max_delay: Duration,
    retry_after: Option<Duration>,
    unit: f64,
) -> Duration {
    let ceiling = min_delay
        .checked_mul(1u32.checked_shl(attempt.min(31)).unwrap_or(u32::MAX))
        .unwrap_or(max_delay)
        .min(max_delay);
    let jittered = ceiling.mul_f64(unit.clamp(0.0, 1.0)).max(min_delay / 2);
    match retry_after {
        Some(wait) => jittered.max(wait),
        None => jittered,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn now() -> SystemTime {
        httpdate::parse_http_date("Sun, 06 Nov 1994 08:49:37 GMT").expect("valid")
    }

    fn defaults() -> StatusSet {
        StatusSet::parse("T", "400,413,422").expect("valid")
    }

    fn classify(status: u16) -> Verdict {
        classify_status(status, None, now(), &defaults())
    }

    #[test]
    fn two_hundreds_are_delivered() {
        for status in [200, 201, 202, 204] {
            assert_eq!(classify(status), Verdict::Delivered);
        }
    }

    #[test]
    fn timeouts_throttling_and_server_errors_are_retried_as_transient() {
        for status in [408, 429, 500, 502, 503, 504] {
            assert_eq!(
                classify(status),
                Verdict::Retry {
                    retry_after: None,
                    suspicious: false
                },
                "{status}"
            );
        }
    }

    #[test]
    fn reject_statuses_reject_the_events() {
        for status in [400, 413, 422] {
            assert_eq!(classify(status), Verdict::Rejected, "{status}");
        }
        assert_eq!(
            classify_status(400, None, now(), &StatusSet::default()),
            Verdict::Retry {
                retry_after: None,
                suspicious: true
            }
        );
    }

    #[test]
    fn endpoint_errors_and_redirects_are_retried_and_flagged() {
        for status in [301, 302, 307, 401, 403, 404, 405] {
            assert_eq!(
                classify(status),
                Verdict::Retry {
                    retry_after: None,
                    suspicious: true
                },
                "{status}"
            );
        }
    }

    #[test]
    fn retry_after_in_seconds_and_as_an_http_date() {
        assert_eq!(
            classify_status(429, Some("2"), now(), &defaults()),
            Verdict::Retry {
                retry_after: Some(Duration::from_secs(2)),
                suspicious: false
            }
        );
        assert_eq!(
            parse_retry_after("Sun, 06 Nov 1994 08:49:47 GMT", now()),
            Some(Duration::from_secs(10))
        );
        assert_eq!(
            parse_retry_after("Sun, 06 Nov 1994 08:49:00 GMT", now()),
            Some(Duration::ZERO),
            "a date in the past means now"
        );
        assert_eq!(parse_retry_after("soon", now()), None);
        assert_eq!(parse_retry_after("999999", now()), Some(MAX_RETRY_AFTER));
    }

    #[test]
    fn backoff_grows_exponentially_up_to_the_cap() {
        let min = Duration::from_millis(100);
        let max = Duration::from_secs(5);
        let top = |attempt| retry_delay(attempt, min, max, None, 0.999_999);
        assert!(top(0) <= Duration::from_millis(100));
        assert!(top(3) > Duration::from_millis(700) && top(3) <= Duration::from_millis(800));
        assert!(top(10) <= max && top(10) > Duration::from_millis(4900));
        assert_eq!(top(1000), top(10), "huge attempt counts do not overflow");
    }

    #[test]
    fn full_jitter_stays_above_half_the_minimum() {
        let min = Duration::from_millis(100);
        let d = retry_delay(5, min, Duration::from_secs(5), None, 0.0);
        assert_eq!(d, Duration::from_millis(50));
    }

    #[test]
    fn retry_after_is_a_floor() {
        let d = retry_delay(
            0,
            Duration::from_millis(100),
            Duration::from_secs(5),
            Some(Duration::from_secs(2)),
            0.5,
        );
        assert_eq!(d, Duration::from_secs(2));
        let d = retry_delay(
            20,
            Duration::from_millis(100),
            Duration::from_secs(5),
            Some(Duration::from_millis(10)),
            0.999,
        );
        assert!(d > Duration::from_secs(4));
    }
}
