//! Where an assigned partition starts: `START_AT` for a new group (decided
//! once and committed), else the committed offset, read here rather than by
//! librdkafka (whose own look-up can hang).

use super::*;

impl Context {
    /// `START_AT` decides where a *new* group starts, once. A group is new
    /// when no partition of the topic has a commit other than a START_AT
    /// position (tagged `START_AT_METADATA`). Its assigned partitions without
    /// one are then pointed at `START_AT` (`latest`: the high watermark read
    /// now; a time: the first offset at or after it, else the high
    /// watermark), and the returned positions are committed, tagged, right
    /// after the assignment, so the decision is durable: an owner that
    /// crashes before its first delivery hands over a committed position, not
    /// a second `START_AT`, and replicas starting together each decide for
    /// their own partitions. The tag records the topic's partition count, so
    /// a partition added after the choice (even before any delivered offset
    /// is committed) is not taken for one a new group has yet to place.
    /// In a group that has commits, a partition without
    /// one (added to the topic, or never committed) starts at the earliest
    /// offset (`auto.offset.reset`), and so does any partition whose offset
    /// fell out of range: nothing is skipped. When the group state cannot be
    /// read, the group is taken as established, for the same reason.
    pub(super) fn resolve_start(
        &self,
        consumer: &Consumer_,
        tpl: &mut TopicPartitionList,
    ) -> Option<TopicPartitionList> {
        if self.start_at == StartAt::Earliest || tpl.count() == 0 {
            return None;
        }
        let timeout = Duration::from_secs(10);
        let (committed, decided_for, partitions) = match self.group_commits(consumer, tpl, timeout)
        {
            Ok((GroupCommits::Established, _)) => return None,
            Ok((
                GroupCommits::New {
                    committed,
                    decided_for,
                },
                partitions,
            )) => (committed, decided_for, partitions),
            Err(e) => {
                warn!(error = %e, "cannot tell whether the group has commits; not applying START_AT (partitions without a commit start at the earliest offset)");
                return None;
            }
        };
        let mut starts = TopicPartitionList::new();
        for elem in tpl.elements_for_topic(&self.topic) {
            let partition = elem.partition();
            // Another replica of the new group already fixed its start.
            if committed.contains(&partition) {
                continue;
            }
            // Added to the topic after the group chose its start: the
            // choice is made, and this partition is read from its start.
            if decided_for.is_some_and(|count| partition >= count) {
                info!(
                    partition,
                    "partition added after the group chose its START_AT position: reading it from its earliest offset"
                );
                continue;
            }
            let offset = match self.start_offset(consumer, partition, timeout) {
                Ok(offset) => offset,
                Err(e) => {
                    warn!(partition, error = %e, "cannot resolve START_AT; this partition starts at the earliest offset");
                    continue;
                }
            };
            info!(partition, offset, start_at = ?self.start_at, "new group: starting at START_AT");
            let _ = starts.add_partition_offset(&self.topic, partition, Offset::Offset(offset));
            if let Some(mut elem) = starts.find_partition(&self.topic, partition) {
                elem.set_metadata(start_at_metadata(partitions));
            }
        }
        for elem in starts.elements_for_topic(&self.topic) {
            let _ = tpl.set_partition_offset(&self.topic, elem.partition(), elem.offset());
        }
        (starts.count() > 0).then_some(starts)
    }

    /// Gives every assigned partition still without a position (not placed
    /// by `START_AT`) a concrete one: its committed offset, or the earliest
    /// when it has none, read here rather than by librdkafka after the
    /// assignment. librdkafka's own look-up can hang for ever: when its
    /// OffsetFetch meets a coordinator that moved, the partition stays
    /// "being queried" and never fetches (librdkafka issue 5586), and while
    /// a look-up is pending a cooperative member skips every rebalance, so
    /// the partitions of replicas that leave or die are never handed out
    /// again. This read returns an error instead, and is retried. If it
    /// still fails, librdkafka looks the offsets up as before (and the stall
    /// detector reports a look-up that never ends).
    pub(super) fn place_from_commits(&self, consumer: &Consumer_, tpl: &mut TopicPartitionList) {
        let mut unplaced = TopicPartitionList::new();
        for elem in tpl.elements() {
            if !matches!(elem.offset(), Offset::Offset(_)) {
                unplaced.add_partition(elem.topic(), elem.partition());
            }
        }
        if unplaced.count() == 0 {
            return;
        }
        let deadline = std::time::Instant::now() + COMMITTED_LOOKUP_FOR;
        let committed = read::retrying_for(COMMITTED_LOOKUP_FOR, "committed offsets", || {
            let left = deadline.saturating_duration_since(std::time::Instant::now());
            let timeout = left.clamp(Duration::from_millis(100), COMMITTED_LOOKUP_TIMEOUT);
            consumer.committed_offsets(unplaced.clone(), timeout)
        });
        let committed = match committed {
            Ok(committed) => committed,
            Err(e) => {
                warn!(error = %e, "cannot read the committed offsets of the assigned partitions; librdkafka looks them up instead");
                return;
            }
        };
        let mut lag = self.lag.lock().expect("lag lock");
        for elem in committed.elements() {
            let Some(start) = start_position(elem.offset(), elem.error()) else {
                continue;
            };
            let _ = tpl.set_partition_offset(elem.topic(), elem.partition(), start);
            // librdkafka's statistics learn a commit only from their own
            // look-up, now skipped: without this, a handed-over partition
            // would report no commit (and its whole log as lag) until this
            // replica commits to it.
            if let (Offset::Offset(offset), true) = (start, elem.topic() == self.topic) {
                lag.committed(elem.partition(), offset);
            }
        }
    }

    /// Whether the group is new: no partition of the topic has a commit
    /// other than a START_AT position (which replicas of a new group that
    /// start together commit for their own partitions).
    /// Also returns the topic's partition count as known now: the metadata's,
    /// or more when the assignment names a partition the metadata answer
    /// does not list yet (just added), whose commit is read too.
    pub(super) fn group_commits(
        &self,
        consumer: &Consumer_,
        assigned: &TopicPartitionList,
        timeout: Duration,
    ) -> KafkaResult<(GroupCommits, i32)> {
        let metadata = read::retrying("topic metadata", || {
            consumer.fetch_metadata(Some(&self.topic), timeout)
        })?;
        let mut all = TopicPartitionList::new();
        for topic in metadata.topics().iter().filter(|t| t.name() == self.topic) {
            if let Some(e) = topic.error() {
                return Err(KafkaError::MetadataFetch(e.into()));
            }
            for partition in topic.partitions() {
                all.add_partition(&self.topic, partition.id());
            }
        }
        // An empty list would read as "no commits" and make an established
        // group start again at START_AT, past undelivered events.
        if all.count() == 0 {
            return Err(KafkaError::MetadataFetch(
                rdkafka::types::RDKafkaErrorCode::UnknownTopicOrPartition,
            ));
        }
        for elem in assigned.elements_for_topic(&self.topic) {
            if all.find_partition(&self.topic, elem.partition()).is_none() {
                all.add_partition(&self.topic, elem.partition());
            }
        }
        let partitions = all
            .elements()
            .iter()
            .map(|e| e.partition() + 1)
            .max()
            .unwrap_or(0);
        let committed = read::retrying("committed offsets", || {
            consumer.committed_offsets(all.clone(), timeout)
        })?;
        let metadata: Vec<(i32, String)> = committed
            .elements()
            .iter()
            .filter(|e| matches!(e.offset(), Offset::Offset(_)))
            .map(|e| (e.partition(), commit_metadata(e)))
            .collect();
        let commits = group_commits(metadata.iter().map(|(p, m)| (*p, m.as_str())));
        Ok((commits, partitions))
    }

    /// Where `START_AT` points in one partition, as a concrete offset.
    pub(super) fn start_offset(
        &self,
        consumer: &Consumer_,
        partition: i32,
        timeout: Duration,
    ) -> KafkaResult<i64> {
        let high = || {
            read::retrying("high watermark for START_AT", || {
                consumer.fetch_watermarks(&self.topic, partition, timeout)
            })
            .map(|(_, high)| high)
        };
        let StartAt::Time(start) = self.start_at else {
            return high();
        };
        let mut times = TopicPartitionList::new();
        let _ = times.add_partition_offset(
            &self.topic,
            partition,
            Offset::Offset(start.timestamp_millis()),
        );
        let resolved = read::retrying("offsets for START_AT", || {
            consumer.offsets_for_times(times.clone(), timeout)
        })?;
        match resolved
            .find_partition(&self.topic, partition)
            .map(|e| e.offset())
        {
            Some(Offset::Offset(offset)) => Ok(offset),
            // No message at or after START_AT: the end as it is now, not
            // "the end" resolved later, which would skip what arrives meanwhile.
            _ => high(),
        }
    }
}

/// How long the assign callback reads committed offsets (each try, and all
/// tries together): well inside `max.poll.interval.ms`, which the callback
/// counts against.
pub(super) const COMMITTED_LOOKUP_TIMEOUT: Duration = Duration::from_secs(5);
pub(super) const COMMITTED_LOOKUP_FOR: Duration = Duration::from_secs(10);

/// Where an assigned partition starts, from its committed-offset answer:
/// the commit, or the earliest offset when there is none (what
/// `auto.offset.reset=earliest` would choose). `None` leaves the look-up to
/// librdkafka (an error for this partition, or an answer it must interpret).
pub(super) fn start_position(committed: Offset, error: KafkaResult<()>) -> Option<Offset> {
    if error.is_err() {
        return None;
    }
    match committed {
        Offset::Offset(offset) if offset >= 0 => Some(Offset::Offset(offset)),
        Offset::Invalid => Some(Offset::Beginning),
        _ => None,
    }
}

/// The commit metadata of a start position chosen by `START_AT`: a group
/// whose only commits carry it is still new (its replicas may be resolving
/// `START_AT` for their own partitions at this very moment).
/// It records how many partitions the topic had when the choice was made, so
/// that a partition added later is known as such even before any delivered
/// offset is committed (`patterns-connector:start_at;partitions=N`).
pub(super) const START_AT_METADATA: &str = "patterns-connector:start_at";

pub(super) fn start_at_metadata(partitions: i32) -> String {
    format!("{START_AT_METADATA};partitions={partitions}")
}

/// `Some(count)` for a START_AT position that records the topic's partition
/// count then; `Some(None)` for one that does not (written before counts
/// were recorded); `None` for any other commit. A count that cannot be read
/// is taken as 0, so every partition without a commit starts at the
/// earliest offset: a misread never skips.
pub(super) fn parse_start_at_metadata(metadata: &str) -> Option<Option<i32>> {
    let rest = metadata.strip_prefix(START_AT_METADATA)?;
    if rest.is_empty() {
        return Some(None);
    }
    let count = rest
        .strip_prefix(";partitions=")
        .and_then(|n| n.parse().ok())
        .filter(|n: &i32| *n >= 0);
    Some(Some(count.unwrap_or(0)))
}

/// A commit's metadata. rdkafka panics on metadata that is not UTF-8 (which
/// another client of the group may write); read as "" (another client's
/// commit), not a panic inside librdkafka's callback.
pub(super) fn commit_metadata(
    elem: &rdkafka::topic_partition_list::TopicPartitionListElem<'_>,
) -> String {
    std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| elem.metadata().to_owned()))
        .unwrap_or_default()
}

#[derive(Debug, PartialEq, Eq)]
pub(super) enum GroupCommits {
    /// Some partition has a commit of delivered offsets: START_AT no longer applies.
    Established,
    /// Only START_AT positions, for these partitions (or none at all), and
    /// the fewest partitions the topic had when one of them was chosen:
    /// partitions numbered from there on were added after the choice.
    New {
        committed: Vec<i32>,
        decided_for: Option<i32>,
    },
}

/// Decides from `(partition, commit metadata)` per committed partition.
pub(super) fn group_commits<'a>(commits: impl Iterator<Item = (i32, &'a str)>) -> GroupCommits {
    let mut committed = Vec::new();
    let mut decided_for: Option<i32> = None;
    for (partition, metadata) in commits {
        let Some(count) = parse_start_at_metadata(metadata) else {
            return GroupCommits::Established;
        };
        committed.push(partition);
        if let Some(count) = count {
            decided_for = Some(decided_for.map_or(count, |d| d.min(count)));
        }
    }
    GroupCommits::New {
        committed,
        decided_for,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_group_is_new_until_a_partition_has_a_commit_that_is_not_a_start_at_position() {
        assert_eq!(
            group_commits(std::iter::empty()),
            GroupCommits::New {
                committed: vec![],
                decided_for: None
            }
        );
        let tagged = start_at_metadata(4);
        assert_eq!(
            group_commits([(0, tagged.as_str()), (3, START_AT_METADATA)].into_iter()),
            GroupCommits::New {
                committed: vec![0, 3],
                decided_for: Some(4)
            }
        );
        let fewer = start_at_metadata(2);
        assert_eq!(
            group_commits([(0, tagged.as_str()), (1, fewer.as_str())].into_iter()),
            GroupCommits::New {
                committed: vec![0, 1],
                decided_for: Some(2)
            }
        );
        assert_eq!(
            group_commits([(0, tagged.as_str()), (1, "")].into_iter()),
            GroupCommits::Established
        );
        assert_eq!(parse_start_at_metadata("other"), None);
        assert_eq!(parse_start_at_metadata(""), None);
        assert_eq!(parse_start_at_metadata(START_AT_METADATA), Some(None));
        for unreadable in [";partitions=x", ";partitions=", ";partitions=-3", ";v=2"] {
            assert_eq!(
                parse_start_at_metadata(&format!("{START_AT_METADATA}{unreadable}")),
                Some(Some(0)),
                "{unreadable}"
            );
        }
    }

    #[test]
    fn an_assigned_partition_starts_at_its_commit_or_else_the_earliest_offset() {
        assert_eq!(
            start_position(Offset::Offset(42), Ok(())),
            Some(Offset::Offset(42))
        );
        assert_eq!(
            start_position(Offset::Offset(0), Ok(())),
            Some(Offset::Offset(0))
        );
        assert_eq!(
            start_position(Offset::Invalid, Ok(())),
            Some(Offset::Beginning)
        );
        let error = Err(KafkaError::OffsetFetch(
            rdkafka::types::RDKafkaErrorCode::NotCoordinator,
        ));
        assert_eq!(start_position(Offset::Offset(42), error.clone()), None);
        assert_eq!(start_position(Offset::Invalid, error), None);
        assert_eq!(start_position(Offset::End, Ok(())), None);
    }
}
