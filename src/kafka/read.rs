//! One-off reads of group and partition state (committed offsets, watermarks,
//! offsets for a time) that retry the broker's transient answers.
//!
//! Right after a broker starts, after a coordinator moves, or while a group's
//! share of `__consumer_offsets` is loading, brokers answer NotCoordinator,
//! CoordinatorLoadInProgress or CoordinatorNotAvailable for a few seconds.
//! librdkafka retries those for its own requests, but the blocking query
//! calls (`committed_offsets`, `fetch_watermarks`, `offsets_for_times`) hand
//! them straight back. Giving up on the first one would, for instance, start
//! a new group at the earliest offset instead of at `START_AT`.

use std::time::{Duration, Instant};

use rdkafka::error::{KafkaError, KafkaResult, RDKafkaErrorCode};
use tracing::debug;

/// How long a read keeps retrying transient errors before it returns the last one.
pub const RETRY_FOR: Duration = Duration::from_secs(30);

/// Whether `error` is one a broker gives while its coordinator or leadership
/// settles, so asking again shortly will likely succeed.
pub fn is_transient(error: &KafkaError) -> bool {
    use RDKafkaErrorCode::*;
    matches!(
        error.rdkafka_error_code(),
        Some(
            NotCoordinator
                | CoordinatorLoadInProgress
                | CoordinatorNotAvailable
                | NotLeaderForPartition
                | LeaderNotAvailable
                | RequestTimedOut
                | OperationTimedOut
                | BrokerTransportFailure
        )
    )
}

/// Runs `read` until it succeeds, fails with an error that is not transient,
/// or `RETRY_FOR` has passed; then returns its last result. Blocks the thread.
pub fn retrying<T>(what: &str, read: impl FnMut() -> KafkaResult<T>) -> KafkaResult<T> {
    retrying_for(RETRY_FOR, what, read)
}

/// `retrying` within `budget` instead of `RETRY_FOR`.
pub fn retrying_for<T>(
    budget: Duration,
    what: &str,
    mut read: impl FnMut() -> KafkaResult<T>,
) -> KafkaResult<T> {
    let deadline = Instant::now() + budget;
    let mut attempt = 0;
    loop {
        match read() {
            Err(e) if is_transient(&e) && Instant::now() < deadline => {
                debug!(error = %e, what, attempt, "transient Kafka error; asking again");
                let left = deadline.saturating_duration_since(Instant::now());
                std::thread::sleep(kafka_retry_delay(attempt).min(RETRY_STEP_MAX).min(left));
                attempt += 1;
            }
            result => return result,
        }
    }
}

/// How long to wait before retrying a failed Kafka write or read: 200 ms,
/// doubling per attempt up to about 25 s.
pub(crate) fn kafka_retry_delay(attempt: u32) -> Duration {
    Duration::from_millis(200u64 << attempt.min(7))
}

/// Longest pause between two attempts of one read.
const RETRY_STEP_MAX: Duration = Duration::from_secs(2);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kafka_retries_back_off_up_to_a_cap() {
        assert_eq!(kafka_retry_delay(0), Duration::from_millis(200));
        assert_eq!(kafka_retry_delay(1), Duration::from_millis(400));
        assert_eq!(kafka_retry_delay(7), Duration::from_millis(25_600));
        assert_eq!(kafka_retry_delay(u32::MAX), Duration::from_millis(25_600));
    }

    #[test]
    fn coordinator_and_leadership_errors_are_transient() {
        for code in [
            RDKafkaErrorCode::NotCoordinator,
            RDKafkaErrorCode::CoordinatorLoadInProgress,
            RDKafkaErrorCode::CoordinatorNotAvailable,
            RDKafkaErrorCode::NotLeaderForPartition,
            RDKafkaErrorCode::OperationTimedOut,
        ] {
            assert!(is_transient(&KafkaError::MetadataFetch(code)), "{code:?}");
        }
    }

    #[test]
    fn authorization_and_unknown_topic_errors_are_not() {
        for code in [
            RDKafkaErrorCode::GroupAuthorizationFailed,
            RDKafkaErrorCode::TopicAuthorizationFailed,
            RDKafkaErrorCode::UnknownTopicOrPartition,
            RDKafkaErrorCode::SaslAuthenticationFailed,
        ] {
            assert!(!is_transient(&KafkaError::MetadataFetch(code)), "{code:?}");
        }
        assert!(!is_transient(&KafkaError::Canceled));
    }

    #[test]
    fn a_transient_error_is_retried_until_the_read_succeeds() {
        let mut calls = 0;
        let result = retrying("test", || {
            calls += 1;
            if calls < 3 {
                Err(KafkaError::MetadataFetch(RDKafkaErrorCode::NotCoordinator))
            } else {
                Ok(calls)
            }
        });
        assert_eq!(result.unwrap(), 3);
    }

    #[test]
    fn a_lasting_error_is_returned_at_once() {
        let mut calls = 0;
        let result: KafkaResult<()> = retrying("test", || {
            calls += 1;
            Err(KafkaError::MetadataFetch(
                RDKafkaErrorCode::GroupAuthorizationFailed,
            ))
        });
        assert!(result.is_err());
        assert_eq!(calls, 1);
    }
}
