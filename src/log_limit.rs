//! Repeated failures are logged only when the number of earlier ones is 0 or
//! a power of two (the 1st, 2nd, 3rd, 5th, 9th, 17th... occurrence), so a long
//! outage cannot flood the logs; the log line carries the count.

/// Whether the failure that follows `before` earlier ones should be logged.
pub fn worth_logging(before: u64) -> bool {
    before == 0 || before.is_power_of_two()
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
}
