//! What the operator sees while a backfill runs: a progress line (done of
//! total, rate, time left, where the cursor is), and the summary at the end.
//! Pure: the caller gives the counts and the clock.

use std::time::Duration;

use super::checkpoint::Totals;
use super::source::from_micros;

/// Rows done (checkpointed) of the rows to read, at `elapsed` since this run started.
#[derive(Debug, Clone, PartialEq)]
pub struct Snapshot {
    pub done: u64,
    pub total: u64,
    /// Rows done by this run (the rate's numerator).
    pub done_this_run: u64,
    pub elapsed: Duration,
    pub cursor_us: Option<i64>,
    /// What the backfill waits for: the source to answer again, its
    /// throttle, new rows (following).
    pub waiting: Option<String>,
}

impl Snapshot {
    pub fn rate(&self) -> f64 {
        let secs = self.elapsed.as_secs_f64();
        if secs <= 0.0 {
            0.0
        } else {
            self.done_this_run as f64 / secs
        }
    }

    pub fn eta(&self) -> Option<Duration> {
        let rate = self.rate();
        let left = self.total.saturating_sub(self.done);
        (rate > 0.0).then(|| Duration::from_secs_f64(left as f64 / rate))
    }

    /// `backfill: 12,000/100,000 rows (12.0%), 4,100 rows/s, ETA 21s, cursor 2024-05-01T12:00:00Z`
    pub fn line(&self) -> String {
        let percent = if self.total == 0 {
            100.0
        } else {
            self.done as f64 * 100.0 / self.total as f64
        };
        let eta = self
            .eta()
            .map_or_else(|| "unknown".to_owned(), |d| format!("{}s", d.as_secs()));
        let cursor = self.cursor_us.map_or_else(
            || "start".to_owned(),
            |us| from_micros(us).format("%Y-%m-%dT%H:%M:%SZ").to_string(),
        );
        let waiting = self
            .waiting
            .as_ref()
            .map(|w| format!(", waiting: {w}"))
            .unwrap_or_default();
        format!(
            "backfill: {}/{} rows ({percent:.1}%), {} rows/s, ETA {eta}, cursor {cursor}{waiting}",
            thousands(self.done),
            thousands(self.total),
            thousands(self.rate().round() as u64),
        )
    }
}

/// The last line a backfill writes.
pub fn summary(team_id: i64, totals: &Totals, elapsed: Duration, handover: &str) -> String {
    format!(
        "backfill complete: team {team_id}: {} rows read, {} delivered, {} filtered out, {} dead-lettered, {} in the overlap with the stream ({handover}), {:.1} s",
        totals.read,
        totals.delivered,
        totals.filtered,
        totals.dead_lettered,
        totals.overlap,
        elapsed.as_secs_f64()
    )
}

fn thousands(n: u64) -> String {
    let digits = n.to_string();
    let mut out = String::with_capacity(digits.len() + digits.len() / 3);
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i) % 3 == 0 {
            out.push(',');
        }
        out.push(c);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_line_gives_done_of_total_rate_eta_and_cursor() {
        let s = Snapshot {
            done: 12_000,
            total: 100_000,
            done_this_run: 8_000,
            elapsed: Duration::from_secs(2),
            cursor_us: Some(1_714_564_800_000_000),
            waiting: None,
        };
        assert_eq!(
            s.line(),
            "backfill: 12,000/100,000 rows (12.0%), 4,000 rows/s, ETA 22s, cursor 2024-05-01T12:00:00Z"
        );
    }

    #[test]
    fn before_any_row_the_eta_is_unknown_and_a_wait_is_named() {
        let s = Snapshot {
            done: 0,
            total: 10,
            done_this_run: 0,
            elapsed: Duration::ZERO,
            cursor_us: None,
            waiting: Some("throttled by the source (HTTP 429), next request in 42 s".into()),
        };
        assert_eq!(
            s.line(),
            "backfill: 0/10 rows (0.0%), 0 rows/s, ETA unknown, cursor start, waiting: throttled by the source (HTTP 429), next request in 42 s"
        );
    }

    #[test]
    fn thousands_are_separated() {
        assert_eq!(thousands(0), "0");
        assert_eq!(thousands(999), "999");
        assert_eq!(thousands(1_000), "1,000");
        assert_eq!(thousands(1_234_567), "1,234,567");
    }
}
