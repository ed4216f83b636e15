//! Keeping repeated failures from flooding the logs, two ways:
//!
//! - [`worth_logging`], for a failure counted by its caller (one retry loop):
//!   logged only when the number of earlier ones is 0 or a power of two (the
//!   1st, 2nd, 3rd, 5th, 9th, 17th... occurrence); the log line carries the
//!   count.
//! - [`RateLimit`], for messages that arrive from elsewhere at any rate
//!   (librdkafka's own log and error callbacks, 20-30 lines a second while
//!   Kafka is unreachable): per key, the first occurrence is logged at once,
//!   then at most one reminder per interval, carrying how many were
//!   suppressed since the last line.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// Whether the failure that follows `before` earlier ones should be logged.
pub fn worth_logging(before: u64) -> bool {
    before == 0 || before.is_power_of_two()
}

/// How often a [`RateLimit`] lets a key through after its first line.
pub const REMINDER_INTERVAL: Duration = Duration::from_secs(30);

/// Keys a [`RateLimit`] remembers; past that, keys quiet for an interval are
/// forgotten (a forgotten key's next line is logged as a first one).
const MAX_KEYS: usize = 256;

/// Per-key log rate limiting, shareable across threads (librdkafka calls its
/// callbacks from its own). The key is a short string naming the kind of
/// message: an error code, a log facility.
#[derive(Debug)]
pub struct RateLimit {
    interval: Duration,
    keys: Mutex<HashMap<String, KeyState>>,
}

#[derive(Debug, Clone, Copy)]
struct KeyState {
    /// When this key's last line was logged.
    logged_at: Instant,
    /// Occurrences since then that were not logged.
    suppressed: u64,
}

impl Default for RateLimit {
    fn default() -> Self {
        RateLimit::new(REMINDER_INTERVAL)
    }
}

impl RateLimit {
    /// At most one line per key per `interval`, after the first.
    pub fn new(interval: Duration) -> Self {
        RateLimit {
            interval,
            keys: Mutex::new(HashMap::new()),
        }
    }

    /// Records one occurrence of `key` at `now`. `Some(suppressed)` means
    /// log it, saying that `suppressed` occurrences were left out since the
    /// last line (0 the first time); `None` means leave it out.
    pub fn check(&self, key: &str, now: Instant) -> Option<u64> {
        // A poisoned lock only means a panic elsewhere mid-update; the counts
        // are still usable.
        let mut keys = self.keys.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(state) = keys.get_mut(key) {
            if now.saturating_duration_since(state.logged_at) < self.interval {
                state.suppressed += 1;
                return None;
            }
            let suppressed = state.suppressed;
            *state = KeyState {
                logged_at: now,
                suppressed: 0,
            };
            return Some(suppressed);
        }
        if keys.len() >= MAX_KEYS {
            let interval = self.interval;
            keys.retain(|_, s| now.saturating_duration_since(s.logged_at) < interval);
        }
        if keys.len() < MAX_KEYS {
            keys.insert(
                key.to_owned(),
                KeyState {
                    logged_at: now,
                    suppressed: 0,
                },
            );
        }
        Some(0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn repeats_are_logged_ever_more_rarely() {
        let logged: Vec<u64> = (0..20)
            .filter(|n| worth_logging(*n))
            .map(|n| n + 1)
            .collect();
        assert_eq!(logged, vec![1, 2, 3, 5, 9, 17]);
    }

    fn secs(start: Instant, s: f64) -> Instant {
        start + Duration::from_secs_f64(s)
    }

    #[test]
    fn the_first_occurrence_is_logged_then_one_reminder_per_interval_with_the_count() {
        let limit = RateLimit::default();
        let t0 = Instant::now();
        assert_eq!(limit.check("AllBrokersDown", t0), Some(0));
        // 27 a second for the next 30 seconds: all left out but counted.
        let mut logged = Vec::new();
        for tick in 1..(27 * 30) {
            let now = secs(t0, f64::from(tick) / 27.0);
            if let Some(suppressed) = limit.check("AllBrokersDown", now) {
                logged.push((tick, suppressed));
            }
        }
        assert!(logged.is_empty(), "{logged:?}");
        // The first occurrence 30 s after the last line is the reminder.
        assert_eq!(
            limit.check("AllBrokersDown", secs(t0, 30.0)),
            Some(27 * 30 - 1)
        );
        assert_eq!(limit.check("AllBrokersDown", secs(t0, 31.0)), None);
        assert_eq!(limit.check("AllBrokersDown", secs(t0, 59.9)), None);
        assert_eq!(limit.check("AllBrokersDown", secs(t0, 60.0)), Some(2));
    }

    #[test]
    fn keys_are_limited_separately() {
        let limit = RateLimit::new(Duration::from_secs(30));
        let t0 = Instant::now();
        assert_eq!(limit.check("BrokerTransportFailure", t0), Some(0));
        assert_eq!(limit.check("BrokerTransportFailure", secs(t0, 1.0)), None);
        // Another kind of message is not hidden behind the first one.
        assert_eq!(limit.check("Authentication", secs(t0, 2.0)), Some(0));
        assert_eq!(limit.check("Authentication", secs(t0, 3.0)), None);
        assert_eq!(
            limit.check("BrokerTransportFailure", secs(t0, 30.0)),
            Some(1)
        );
    }

    #[test]
    fn a_key_quiet_for_longer_than_the_interval_logs_at_once_again() {
        let limit = RateLimit::new(Duration::from_secs(30));
        let t0 = Instant::now();
        assert_eq!(limit.check("FAIL", t0), Some(0));
        assert_eq!(limit.check("FAIL", secs(t0, 5.0)), None);
        // An hour later: logged at once, with the one left out back then.
        assert_eq!(limit.check("FAIL", secs(t0, 3600.0)), Some(1));
        assert_eq!(limit.check("FAIL", secs(t0, 3601.0)), None);
    }

    #[test]
    fn a_clock_reading_earlier_than_the_last_line_does_not_log_or_panic() {
        let limit = RateLimit::new(Duration::from_secs(30));
        let t0 = Instant::now();
        let later = secs(t0, 10.0);
        assert_eq!(limit.check("FAIL", later), Some(0));
        assert_eq!(limit.check("FAIL", t0), None);
    }

    #[test]
    fn many_keys_never_grow_the_memory_without_bound_nor_hide_a_first_line() {
        let limit = RateLimit::new(Duration::from_secs(30));
        let t0 = Instant::now();
        for n in 0..(MAX_KEYS * 4) {
            assert_eq!(limit.check(&format!("key-{n}"), t0), Some(0));
        }
        assert!(limit.keys.lock().expect("lock").len() <= MAX_KEYS);
        // Once the old keys are quiet for an interval they make room.
        assert_eq!(limit.check("new", secs(t0, 31.0)), Some(0));
        assert_eq!(limit.check("new", secs(t0, 32.0)), None);
    }
}
