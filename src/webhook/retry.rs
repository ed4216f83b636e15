//! The one place that decides what a webhook answer means and how long to
//! wait before trying again. Pure: time and randomness are arguments.

use std::time::{Duration, SystemTime};

/// What to do after one webhook request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    /// 2xx: the batch is delivered.
    Delivered,
    /// Connect errors, timeouts, 408, 429, 5xx: try again later, forever.
    Retry {
        /// Set when the server said how long to wait (`Retry-After`).
        retry_after: Option<Duration>,
    },
    /// Other statuses (4xx but 408/429, and unexpected 1xx/3xx): the webhook
    /// refuses this batch and will keep refusing it.
    Rejected { too_large: bool },
}

/// The longest `Retry-After` we obey; a server asking for more is waited on for this long.
pub const MAX_RETRY_AFTER: Duration = Duration::from_secs(3600);

/// Classifies an HTTP status. `retry_after` is the raw `Retry-After` header.
pub fn classify_status(status: u16, retry_after: Option<&str>, now: SystemTime) -> Verdict {
    match status {
        200..=299 => Verdict::Delivered,
        408 | 429 | 500..=599 => Verdict::Retry {
            retry_after: retry_after.and_then(|raw| parse_retry_after(raw, now)),
        },
        413 => Verdict::Rejected { too_large: true },
        _ => Verdict::Rejected { too_large: false },
    }
}

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

    #[test]
    fn two_hundreds_are_delivered() {
        for status in [200, 201, 202, 204] {
            assert_eq!(classify_status(status, None, now()), Verdict::Delivered);
        }
    }

    #[test]
    fn timeouts_throttling_and_server_errors_are_retried() {
        for status in [408, 429, 500, 502, 503, 504] {
            assert!(
                matches!(classify_status(status, None, now()), Verdict::Retry { .. }),
                "{status}"
            );
        }
    }

    #[test]
    fn other_client_errors_are_rejections_and_413_says_too_large() {
        assert_eq!(
            classify_status(400, None, now()),
            Verdict::Rejected { too_large: false }
        );
        assert_eq!(
            classify_status(404, None, now()),
            Verdict::Rejected { too_large: false }
        );
        assert_eq!(
            classify_status(413, None, now()),
            Verdict::Rejected { too_large: true }
        );
        assert_eq!(
            classify_status(301, None, now()),
            Verdict::Rejected { too_large: false }
        );
    }

    #[test]
    fn retry_after_in_seconds_and_as_an_http_date() {
        assert_eq!(
            classify_status(429, Some("2"), now()),
            Verdict::Retry {
                retry_after: Some(Duration::from_secs(2))
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
