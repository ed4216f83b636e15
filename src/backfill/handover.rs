//! Where the backfill stops: the hand-over to the stream, on ingestion time.
//!
//! The stream's group reads every message of a partition from the first one
//! it read (its recorded start, `kafka::state::StreamStart`) on, and never
//! skips one after that. A message it cannot read is one before that start:
//! it was written to Kafka before the group placed the partition, and before
//! the first message the group read there. So its capture time is at most
//! `b_p = min(placed_at, first message's timestamp)` of its partition, and
//! PostHog ingested it (`created_at`) at most the ingestion delay later.
//!
//! The backfill therefore reads every row ingested before
//! `U = max_p b_p + BACKFILL_HANDOVER_MARGIN_MS`: any event the stream cannot
//! read was ingested before `U`, as long as PostHog's ingestion (capture to
//! `created_at`) took less than the margin, which also absorbs clock skew
//! between capture and the brokers.
//!
//! The overlap: the stream reads messages written at or after `min_p b_p`
//! (`T`), so events ingested in `[T, U)` may come through both paths.
//! Receivers deduplicate them by `uuid`. The backfill counts the rows it
//! read in that window and reports them as the overlap: the window is
//! about the margin wide, plus the spread of the partitions' starts.

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
    let mut bounds = Vec::with_capacity(partitions.len());
    for (topic, partition) in partitions {
        let start = starts
            .iter()
            .filter(|s| s.topic == *topic && s.partition == *partition)
            // Recorded more than once (a start before any commit, then
            // another): the latest covers the most.
            .max_by_key(|s| bound(s))
            .ok_or_else(|| Unknown::Missing(format!("{topic}/{partition}")))?;
        bounds.push(bound(start));
    }
    let low = *bounds.iter().min().expect("not empty");
    let high = *bounds.iter().max().expect("not empty");
    Ok(Handover {
        overlap_from_ms: low,
        until_ms: high.saturating_add(margin_ms),
    })
}

/// `b_p`: every message the group cannot read in this partition was
/// written before it.
fn bound(start: &StreamStart) -> i64 {
    match start.first_timestamp_ms {
        Some(first) if first >= 0 => first.min(start.placed_at_ms),
        _ => start.placed_at_ms,
    }
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
    fn the_bound_is_the_latest_partition_start_plus_the_margin() {
        let starts = [
            start("events", 0, 10_000, Some(4_000)),
            start("events", 1, 10_500, Some(7_000)),
        ];
        let h = handover(&parts(&[("events", 0), ("events", 1)]), &starts, 300).unwrap();
        assert_eq!(h.until_ms, 7_300);
        assert_eq!(h.overlap_from_ms, 4_000);
    }

    #[test]
    fn a_partition_empty_at_its_start_is_bounded_by_when_it_was_placed() {
        // START_AT=latest on a quiet partition: the first message came long
        // after the placement, and everything before it was written before
        // the placement.
        let starts = [
            start("events", 0, 10_000, Some(50_000)),
            start("events", 1, 9_000, None),
        ];
        let h = handover(&parts(&[("events", 0), ("events", 1)]), &starts, 0).unwrap();
        assert_eq!(h.until_ms, 10_000);
        assert_eq!(h.overlap_from_ms, 9_000);
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
    fn a_start_recorded_twice_takes_the_later() {
        let starts = [
            start("events", 0, 10_000, Some(4_000)),
            start("events", 0, 20_000, Some(15_000)),
            start("other", 0, 1, Some(1)),
        ];
        let h = handover(&parts(&[("events", 0)]), &starts, 5).unwrap();
        assert_eq!(h.until_ms, 15_005);
    }
}
