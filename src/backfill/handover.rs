//! Where the backfill stops: the hand-over to the stream, on ingestion time.
//!
//! The stream's group reads every message of a partition from where it
//! started (its recorded start, `kafka::state::StreamStart`) on, and never
//! skips one after that. A message it cannot read is one before that start:
//! Kafka appended it before the group placed the partition (`placed_at`, the
//! replica's clock), so it was captured before then, and PostHog ingested it
//! at most its ingestion delay later.
//!
//! The backfill therefore reads every row ingested before
//! `U = latest placed_at over the partitions + BACKFILL_HANDOVER_MARGIN_MS`:
//! any event the stream cannot read was ingested before `U`, as long as
//! PostHog's capture-to-ingestion delay, plus the clock difference between
//! the replica and PostHog, stayed under the margin. A partition placed
//! more than once without a commit (a replica that died before its first
//! commit) counts with its latest placement.
//!
//! The first message's Kafka timestamp is *not* used for `U`: under
//! CreateTime it is the producer's claim, which a delayed produce puts
//! earlier than the append, and an earlier `U` could leave a gap.
//!
//! The overlap: the stream reads messages captured from its first one on,
//! so events ingested in `[T, U)`, where `T` is the earliest first message's
//! timestamp (or placement), may come through both paths: what Kafka still
//! held when the stream started (at most its retention), plus the margin.
//! Receivers deduplicate them by `uuid`; the backfill reports their count.

use crate::kafka::state::StreamStart;

/// The hand-over, in ms since the epoch.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Handover {
    /// `T`: rows ingested at or after it may also come through the stream.
    pub overlap_from_ms: i64,
    /// `U`: the backfill reads rows ingested before it.
    pub until_ms: i64,
}

/// Why the stream's start cannot be told.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Unknown {
    #[error("the group has not recorded where it started reading {0} (has the connector run with this KAFKA_CONSUMER_GROUP and STATE_TOPIC?)")]
    Missing(String),
    #[error("the stream's topics have no partitions yet")]
    NoPartitions,
}

/// The hand-over for a stream that reads `partitions` (topic, partition),
/// from the recorded `starts`.
pub fn handover(
    partitions: &[(String, i32)],
    starts: &[StreamStart],
    margin_ms: i64,
) -> Result<Handover, Unknown> {
    if partitions.is_empty() {
        return Err(Unknown::NoPartitions);
    }
    let mut until = i64::MIN;
    let mut from = i64::MAX;
    for (topic, partition) in partitions {
        let latest = starts
            .iter()
            .filter(|s| s.topic == *topic && s.partition == *partition)
            .max_by_key(|s| s.placed_at_ms)
            .ok_or_else(|| Unknown::Missing(format!("{topic}/{partition}")))?;
        until = until.max(latest.placed_at_ms);
        let first = match latest.first_timestamp_ms {
            Some(ts) if ts >= 0 => ts.min(latest.placed_at_ms),
            _ => latest.placed_at_ms,
        };
        from = from.min(first);
    }
    Ok(Handover {
        overlap_from_ms: from,
        until_ms: until.saturating_add(margin_ms),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn start(topic: &str, partition: i32, placed: i64, first: Option<i64>) -> StreamStart {
        StreamStart {
            topic: topic.into(),
            partition,
            placed_at_ms: placed,
            first_offset: first.map(|_| 0),
            first_timestamp_ms: first,
        }
    }

    fn parts(list: &[(&str, i32)]) -> Vec<(String, i32)> {
        list.iter().map(|(t, p)| (t.to_string(), *p)).collect()
    }

    #[test]
    fn the_bound_is_the_latest_placement_plus_the_margin() {
        let starts = [
            start("events", 0, 10_000, Some(4_000)),
            start("events", 1, 10_500, Some(7_000)),
        ];
        let h = handover(&parts(&[("events", 0), ("events", 1)]), &starts, 300).unwrap();
        assert_eq!(h.until_ms, 10_800);
        assert_eq!(h.overlap_from_ms, 4_000);
    }

    #[test]
    fn a_first_message_stamped_early_does_not_move_the_bound_back() {
        // Its producer retried for minutes: its CreateTime is long before it
        // was appended, and messages appended just before it (unreadable)
        // were captured after that time.
        let starts = [start("events", 0, 1_000_000, Some(400_000))];
        let h = handover(&parts(&[("events", 0)]), &starts, 1_000).unwrap();
        assert_eq!(h.until_ms, 1_001_000);
        assert_eq!(h.overlap_from_ms, 400_000);
    }

    #[test]
    fn a_partition_without_a_record_leaves_the_bound_unknown() {
        let starts = [start("events", 0, 10_000, Some(4_000))];
        assert_eq!(
            handover(&parts(&[("events", 0), ("events", 1)]), &starts, 0),
            Err(Unknown::Missing("events/1".into()))
        );
        assert_eq!(handover(&[], &starts, 0), Err(Unknown::NoPartitions));
    }

    #[test]
    fn a_partition_placed_twice_counts_with_its_latest_placement() {
        // A replica placed it and died before committing; another placed it
        // again later (reading from a later START_AT position).
        let starts = [
            start("events", 0, 20_000, Some(15_000)),
            start("events", 0, 10_000, Some(4_000)),
            start("other", 0, 1, Some(1)),
        ];
        let h = handover(&parts(&[("events", 0)]), &starts, 5).unwrap();
        assert_eq!(h.until_ms, 20_005);
        assert_eq!(h.overlap_from_ms, 15_000);
    }
}
