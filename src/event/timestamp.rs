//! Event time, computed the way PostHog's ingestion computes it, and the
//! timestamp formats PostHog writes. Pure functions: `now` is an argument.

use chrono::{DateTime, Datelike, Duration, NaiveDate, NaiveDateTime, Timelike, Utc};

/// Events more than this far in the future (relative to capture's `now`) are
/// client clock bugs; PostHog replaces their time with `now`.
const FUTURE_CUTOFF: Duration = Duration::hours(23);

/// The inputs PostHog's ingestion uses to compute an event's time.
#[derive(Debug, Default, Clone, Copy)]
pub struct TimestampInputs<'a> {
    /// The client's `timestamp` (any ISO 8601 form a browser's `Date` accepts).
    pub timestamp: Option<&'a str>,
    /// The client's `sent_at`; empty strings (older capture versions) mean absent.
    pub sent_at: Option<&'a str>,
    /// When capture received the event (RFC 3339).
    pub now: Option<&'a str>,
    /// Milliseconds between the event and the request (older SDKs).
    pub offset_ms: Option<f64>,
    /// `properties.$ignore_sent_at`: the client asks not to correct clock skew.
    pub ignore_sent_at: bool,
}

/// PostHog's `parseEventTimestamp`: the client timestamp corrected for clock
/// skew (`now - sent_at`), else `now - offset`, else `now`. Invalid or far-future
/// results fall back to `now`. `wall_clock` is used only when `now` itself is
/// missing or unparsable.
pub fn event_time(inputs: &TimestampInputs<'_>, wall_clock: DateTime<Utc>) -> DateTime<Utc> {
    let now = inputs.now.and_then(parse_iso).unwrap_or(wall_clock);
    let sent_at = if inputs.ignore_sent_at {
        None
    } else {
        inputs.sent_at.filter(|s| !s.is_empty()).and_then(parse_iso)
    };

    // Out of chrono's range (a huge offset or skew) counts as out of range:
    // `now`, like the year check below, never a panic.
    let computed = match inputs.timestamp.filter(|s| !s.is_empty()) {
        Some(raw) => match parse_iso(raw) {
            Some(ts) => match sent_at {
                Some(sent_at) => ts
                    .checked_add_signed(now.signed_duration_since(sent_at))
                    .unwrap_or(now),
                None => ts,
            },
            None => now,
        },
        None => match inputs.offset_ms {
            Some(offset) if offset.is_finite() && offset != 0.0 => {
                Duration::try_milliseconds(offset as i64)
                    .and_then(|offset| now.checked_sub_signed(offset))
                    .unwrap_or(now)
            }
            _ => now,
        },
    };

    // `now` within 23 h of chrono's last instant: nothing can be later.
    let future = now
        .checked_add_signed(FUTURE_CUTOFF)
        .is_some_and(|limit| computed > limit);
    if future || !(0..=9999).contains(&computed.year()) {
        now
    } else {
        computed
    }
}

/// Parses the ISO 8601 forms SDKs send: RFC 3339 with any offset, or a date-time
/// or date without zone (read as UTC, as on PostHog's UTC servers).
pub fn parse_iso(raw: &str) -> Option<DateTime<Utc>> {
    let raw = raw.trim();
    if let Ok(ts) = DateTime::parse_from_rfc3339(raw) {
        return Some(ts.with_timezone(&Utc));
    }
    for format in ["%Y-%m-%dT%H:%M:%S%.f", "%Y-%m-%d %H:%M:%S%.f"] {
        if let Ok(naive) = NaiveDateTime::parse_from_str(raw, format) {
            return Some(naive.and_utc());
        }
    }
    if let Ok(ts) = DateTime::parse_from_str(raw, "%Y-%m-%d %H:%M:%S%.f%:z") {
        return Some(ts.with_timezone(&Utc));
    }
    NaiveDate::parse_from_str(raw, "%Y-%m-%d")
        .ok()
        .and_then(|d| d.and_hms_opt(0, 0, 0))
        .map(|naive| naive.and_utc())
}

/// Parses ClickHouse's `YYYY-MM-DD HH:MM:SS[.ffffff]` (UTC, no zone).
pub fn parse_clickhouse(raw: &str) -> Option<DateTime<Utc>> {
    NaiveDateTime::parse_from_str(raw.trim(), "%Y-%m-%d %H:%M:%S%.f")
        .ok()
        .map(|naive| naive.and_utc())
}

/// The webhook's timestamp form: ISO 8601 UTC with milliseconds, like
/// JavaScript's `toISOString()` (what the old app's events carried).
pub fn to_iso(ts: DateTime<Utc>) -> String {
    ts.format("%Y-%m-%dT%H:%M:%S%.3fZ").to_string()
}

/// Appends [`to_iso`]'s text without formatting machinery (the hot path);
/// years outside 0..=9999 and leap seconds go through [`to_iso`].
pub fn write_iso(out: &mut Vec<u8>, ts: DateTime<Utc>) {
    let year = ts.year();
    let nanos = ts.nanosecond();
    if !(0..=9999).contains(&year) || nanos >= 1_000_000_000 {
        out.extend_from_slice(to_iso(ts).as_bytes());
        return;
    }
    let two = |n: u32| [b'0' + (n / 10) as u8, b'0' + (n % 10) as u8];
    let year = year as u32;
    let millis = nanos / 1_000_000;
    let [y1, y2] = two(year / 100);
    let [y3, y4] = two(year % 100);
    let [mo1, mo2] = two(ts.month());
    let [d1, d2] = two(ts.day());
    let [h1, h2] = two(ts.hour());
    let [mi1, mi2] = two(ts.minute());
    let [s1, s2] = two(ts.second());
    let [ms1, ms2] = two(millis / 10);
    let ms3 = b'0' + (millis % 10) as u8;
    out.extend_from_slice(&[
        y1, y2, y3, y4, b'-', mo1, mo2, b'-', d1, d2, b'T', h1, h2, b':', mi1, mi2, b':', s1, s2,
        b'.', ms1, ms2, ms3, b'Z',
    ]);
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(raw: &str) -> DateTime<Utc> {
        parse_iso(raw).expect("test timestamps are valid")
    }

    fn compute(inputs: TimestampInputs<'_>) -> String {
        to_iso(event_time(&inputs, at("2030-01-01T00:00:00Z")))
    }

    #[test]
    fn timestamp_is_corrected_by_the_clock_skew_between_sent_at_and_now() {
        // The client's clock runs 10 s behind capture's.
        let got = compute(TimestampInputs {
            timestamp: Some("2023-09-15T09:14:50.000Z"),
            sent_at: Some("2023-09-15T09:14:52.000Z"),
            now: Some("2023-09-15T09:15:02.000+00:00"),
            ..Default::default()
        });
        assert_eq!(got, "2023-09-15T09:15:00.000Z");
    }

    #[test]
    fn empty_sent_at_from_older_capture_means_no_skew_correction() {
        let got = compute(TimestampInputs {
            timestamp: Some("2023-09-15T09:14:50.123Z"),
            sent_at: Some(""),
            now: Some("2023-09-15T09:15:02Z"),
            ..Default::default()
        });
        assert_eq!(got, "2023-09-15T09:14:50.123Z");
    }

    #[test]
    fn ignore_sent_at_keeps_the_client_timestamp() {
        let got = compute(TimestampInputs {
            timestamp: Some("2023-09-15T09:14:50Z"),
            sent_at: Some("2023-09-15T09:14:52Z"),
            now: Some("2023-09-15T09:15:02Z"),
            ignore_sent_at: true,
            ..Default::default()
        });
        assert_eq!(got, "2023-09-15T09:14:50.000Z");
    }

    #[test]
    fn an_offset_or_a_skew_past_chronos_range_gives_now_rather_than_a_panic() {
        for offset in [1e17, -1e17, 1e300, -1e300] {
            let got = compute(TimestampInputs {
                now: Some("2023-09-15T09:15:02Z"),
                offset_ms: Some(offset),
                ..Default::default()
            });
            assert_eq!(got, "2023-09-15T09:15:02.000Z", "offset {offset}");
        }
        let got = compute(TimestampInputs {
            timestamp: Some("+262000-01-01T00:00:00"),
            sent_at: Some("-262000-01-01T00:00:00"),
            now: Some("2023-09-15T09:15:02Z"),
            ..Default::default()
        });
        assert_eq!(got, "2023-09-15T09:15:02.000Z");
    }

    #[test]
    fn a_now_at_the_end_of_chronos_range_gives_now_rather_than_a_panic() {
        // `now + 23 h` is past chrono's last instant: nothing can be later.
        for now in ["+262142-12-31T23:59:59", "+262142-12-31 01:00:00"] {
            let got = compute(TimestampInputs {
                now: Some(now),
                ..Default::default()
            });
            assert_eq!(got, to_iso(at(now)), "now {now}");
        }
    }

    #[test]
    fn offset_is_subtracted_from_now_when_there_is_no_timestamp() {
        let got = compute(TimestampInputs {
            now: Some("2023-09-15T09:15:02.328551+00:00"),
            offset_ms: Some(1500.0),
            ..Default::default()
        });
        assert_eq!(got, "2023-09-15T09:15:00.828Z");
    }

    #[test]
    fn without_timestamp_or_offset_the_event_time_is_now() {
        let got = compute(TimestampInputs {
            now: Some("2023-09-15T09:15:02.5Z"),
            ..Default::default()
        });
        assert_eq!(got, "2023-09-15T09:15:02.500Z");
    }

    #[test]
    fn a_timestamp_more_than_23_hours_in_the_future_becomes_now() {
        let got = compute(TimestampInputs {
            timestamp: Some("2023-09-17T00:00:00Z"),
            now: Some("2023-09-15T09:15:02Z"),
            ..Default::default()
        });
        assert_eq!(got, "2023-09-15T09:15:02.000Z");
    }

    #[test]
    fn an_unparsable_timestamp_becomes_now() {
        let got = compute(TimestampInputs {
            timestamp: Some("yesterday"),
            now: Some("2023-09-15T09:15:02Z"),
            ..Default::default()
        });
        assert_eq!(got, "2023-09-15T09:15:02.000Z");
    }

    #[test]
    fn missing_now_falls_back_to_the_wall_clock() {
        assert_eq!(
            compute(TimestampInputs::default()),
            "2030-01-01T00:00:00.000Z"
        );
    }

    #[test]
    fn timestamps_with_zones_and_without_are_read() {
        assert_eq!(
            to_iso(at("2023-09-15T11:15:02+02:00")),
            "2023-09-15T09:15:02.000Z"
        );
        assert_eq!(
            to_iso(at("2023-09-15T09:15:02.1")),
            "2023-09-15T09:15:02.100Z"
        );
        assert_eq!(to_iso(at("2023-09-15")), "2023-09-15T00:00:00.000Z");
    }

    #[test]
    fn write_iso_writes_what_to_iso_writes() {
        let mut cases: Vec<DateTime<Utc>> = [
            "0000-01-01T00:00:00Z",
            "0999-12-31T23:59:59.999999999Z",
            "1970-01-01T00:00:00.0005Z",
            "2024-02-29T12:34:56.789Z",
            "9999-12-31T23:59:59.999Z",
            "2016-12-31T23:59:60.5Z",
        ]
        .iter()
        .map(|raw| at(raw))
        .collect();
        let mut state = 0x9e37_79b9_7f4a_7c15u64;
        for _ in 0..20_000 {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            let secs = (state % 400_000_000_000) as i64 - 100_000_000_000;
            let nanos = (state >> 40) as u32 % 1_000_000_000;
            cases.extend(DateTime::from_timestamp(secs, nanos));
        }
        cases.extend(DateTime::from_timestamp(253_402_300_800, 0));
        cases.extend(DateTime::from_timestamp(-62_167_219_201, 0));
        for ts in cases {
            let mut out = Vec::new();
            write_iso(&mut out, ts);
            assert_eq!(String::from_utf8(out).expect("ascii"), to_iso(ts), "{ts:?}");
        }
    }

    #[test]
    fn clickhouse_timestamps_are_utc_without_a_t_or_zone() {
        let ts = parse_clickhouse("2024-05-01 12:34:56.789012").expect("valid");
        assert_eq!(to_iso(ts), "2024-05-01T12:34:56.789Z");
        assert!(parse_clickhouse("2024-05-01T12:34:56Z").is_none());
    }
}
