//! Where an assigned partition starts: `START_AT` for a new group (decided
//! once and committed), else the committed offset, read here rather than by
//! librdkafka (whose own look-up can hang).

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use rdkafka::consumer::Consumer;
use rdkafka::error::{KafkaError, KafkaResult};
use rdkafka::{Offset, TopicPartitionList};
use tracing::{info, warn};

use super::{Consumer_, Context};
use crate::config::StartAt;
use crate::kafka::{read, topics};
use crate::topic_partition::TopicPartition;

impl Context {
    /// `START_AT` decides where a *new* group starts, once, for all its
    /// topics. A group is new when no partition of any topic it reads has a
    /// commit other than a START_AT position (tagged `START_AT_METADATA`).
    /// Its assigned partitions without one are then pointed at `START_AT`
    /// (`latest`: the high watermark read now; a time: the first offset at or
    /// after it, else the high watermark), and the returned positions are
    /// committed, tagged, right after the assignment, so the decision is
    /// durable: an owner that crashes before its first delivery hands over a
    /// committed position, not a second `START_AT`, and replicas starting
    /// together each decide for their own partitions.
    ///
    /// What existed when the choice was made is recorded in the tag: the
    /// topic's partition count, and the topics read then. A partition added
    /// after the choice, a topic created after it (or after this replica
    /// first looked), is read from its earliest offset: the choice is made,
    /// and events written since that topic or partition appeared are not
    /// skipped. In a group that has commits, a partition without one starts
    /// at the earliest offset (`auto.offset.reset`), and so does any
    /// partition whose offset fell out of range: nothing is skipped. When the
    /// group state cannot be read, the group is taken as established, for
    /// the same reason.
    pub(super) fn resolve_start(
        &self,
        consumer: &Consumer_,
        tpl: &mut TopicPartitionList,
    ) -> Option<TopicPartitionList> {
        if self.start_at == StartAt::Earliest || tpl.count() == 0 {
            return None;
        }
        let timeout = Duration::from_secs(10);
        let (commits, counts) = match self.group_commits(consumer, tpl, timeout) {
            Ok((GroupCommits::Established, _)) => return None,
            Ok((GroupCommits::New(commits), counts)) => (commits, counts),
            Err(e) => {
                warn!(error = %e, "cannot tell whether the group has commits; not applying START_AT (partitions without a commit start at the earliest offset)");
                return None;
            }
        };
        // The topics this replica saw at its first look: one that appears
        // later was created after the group chose where to start.
        let first_seen = self
            .topics_first_seen
            .get_or_init(|| counts.keys().cloned().collect());
        // The topics the choice is made with: those this replica saw at its
        // first look (a topic created since is read whole, and must not be
        // recorded as present at the choice), and still there.
        let topics_at_choice: Vec<&str> = counts
            .keys()
            .filter(|t| first_seen.contains(*t))
            .map(String::as_str)
            .collect();
        let mut starts = TopicPartitionList::new();
        let assigned: Vec<(String, i32)> = tpl
            .elements()
            .iter()
            .map(|e| (e.topic().to_owned(), e.partition()))
            .collect();
        for (topic, partition) in assigned {
            let tp = TopicPartition::new(topic.as_str(), partition);
            match commits.placement(&tp, first_seen.contains(&topic)) {
                Placement::Committed => continue,
                Placement::Earliest(why) => {
                    info!(topic, partition, why, "reading this partition from its earliest offset: the group chose its START_AT position before it existed");
                    continue;
                }
                Placement::StartAt => {}
            }
            let offset = match self.start_offset(consumer, &tp, timeout) {
                Ok(offset) => offset,
                Err(e) => {
                    warn!(topic, partition, error = %e, "cannot resolve START_AT; this partition starts at the earliest offset");
                    continue;
                }
            };
            info!(topic, partition, offset, start_at = ?self.start_at, "new group: starting at START_AT");
            self.placed_without_commit(&tp);
            let _ = starts.add_partition_offset(&topic, partition, Offset::Offset(offset));
            if let Some(mut elem) = starts.find_partition(&topic, partition) {
                let count = counts.get(&topic).copied().unwrap_or(partition + 1);
                elem.set_metadata(start_at_metadata(count, &topics_at_choice));
            }
            let _ = tpl.set_partition_offset(&topic, partition, Offset::Offset(offset));
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
            if start == Offset::Beginning {
                // No commit of the group's: it reads this partition for the first time.
                let tp = TopicPartition::new(elem.topic(), elem.partition());
                self.placed_without_commit(&tp);
            }
            // librdkafka's statistics learn a commit only from their own
            // look-up, now skipped: without this, a handed-over partition
            // would report no commit (and its whole log as lag) until this
            // replica commits to it.
            if let Offset::Offset(offset) = start {
                lag.committed(&TopicPartition::new(elem.topic(), elem.partition()), offset);
            }
        }
    }

    /// Whether the group is new: no partition of any topic it reads has a
    /// commit other than a START_AT position (which replicas of a new group
    /// that start together commit for their own partitions).
    /// Also returns each topic's partition count as known now: the
    /// metadata's, or more when the assignment names a partition the
    /// metadata answer does not list yet (just added), whose commit is read too.
    pub(super) fn group_commits(
        &self,
        consumer: &Consumer_,
        assigned: &TopicPartitionList,
        timeout: Duration,
    ) -> KafkaResult<(GroupCommits, BTreeMap<String, i32>)> {
        let config = &self.deps.config;
        let metadata = read::retrying("topic metadata", || consumer.fetch_metadata(None, timeout))?;
        let known: Vec<KnownTopic> = metadata
            .topics()
            .iter()
            .filter(|t| topics::subscribed(config, t.name()))
            .map(|t| KnownTopic {
                name: t.name().to_owned(),
                error: t.error().is_some(),
                partitions: t.partitions().iter().map(|p| p.id()).collect(),
            })
            .collect();
        let assigned: Vec<(String, i32)> = assigned
            .elements()
            .iter()
            .map(|e| (e.topic().to_owned(), e.partition()))
            .collect();
        let to_read = commits_to_read(&known, &assigned).map_err(|_| {
            KafkaError::MetadataFetch(rdkafka::types::RDKafkaErrorCode::UnknownTopicOrPartition)
        })?;
        let mut all = TopicPartitionList::new();
        let mut counts: BTreeMap<String, i32> = BTreeMap::new();
        for (topic, partitions) in &to_read {
            for partition in partitions {
                all.add_partition(topic, *partition);
            }
            counts.insert(topic.clone(), partitions.iter().max().map_or(0, |p| p + 1));
        }
        let committed = read::retrying("committed offsets", || {
            consumer.committed_offsets(all.clone(), timeout)
        })?;
        // A partition whose commit could not be read would look uncommitted,
        // and an established group new.
        if let Some(e) = committed.elements().iter().find_map(|e| e.error().err()) {
            return Err(e);
        }
        let metadata: Vec<(TopicPartition, String)> = committed
            .elements()
            .iter()
            .filter(|e| matches!(e.offset(), Offset::Offset(_)))
            .map(|e| {
                (
                    TopicPartition::new(e.topic(), e.partition()),
                    commit_metadata(e),
                )
            })
            .collect();
        let commits = group_commits(metadata.iter().map(|(tp, m)| (tp.clone(), m.as_str())));
        Ok((commits, counts))
    }

    /// Where `START_AT` points in one partition, as a concrete offset.
    pub(super) fn start_offset(
        &self,
        consumer: &Consumer_,
        tp: &TopicPartition,
        timeout: Duration,
    ) -> KafkaResult<i64> {
        let (topic, partition) = (tp.topic(), tp.partition);
        let high = || {
            read::retrying("high watermark for START_AT", || {
                consumer.fetch_watermarks(topic, partition, timeout)
            })
            .map(|(_, high)| high)
        };
        let StartAt::Time(start) = self.start_at else {
            return high();
        };
        let mut times = TopicPartitionList::new();
        let _ =
            times.add_partition_offset(topic, partition, Offset::Offset(start.timestamp_millis()));
        let resolved = read::retrying("offsets for START_AT", || {
            consumer.offsets_for_times(times.clone(), timeout)
        })?;
        match resolved
            .find_partition(topic, partition)
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

/// A subscribed topic as the metadata answer describes it.
pub(super) struct KnownTopic {
    pub name: String,
    /// The answer flags the topic with an error.
    pub error: bool,
    pub partitions: Vec<i32>,
}

/// The partitions whose commits decide whether the group is new: every
/// partition of every subscribed topic, plus assigned ones the (stale)
/// metadata does not list yet. `Err` whenever the answer may leave a commit
/// out (a topic with an error, an assigned topic the answer lacks, nothing
/// at all): a commit left unread could make an established group look new,
/// and START_AT would then skip events.
pub(super) fn commits_to_read(
    known: &[KnownTopic],
    assigned: &[(String, i32)],
) -> Result<BTreeMap<String, BTreeSet<i32>>, &'static str> {
    if let Some(_bad) = known.iter().find(|t| t.error) {
        return Err("a subscribed topic's metadata has an error");
    }
    let mut out: BTreeMap<String, BTreeSet<i32>> = known
        .iter()
        .map(|t| (t.name.clone(), t.partitions.iter().copied().collect()))
        .collect();
    for (topic, partition) in assigned {
        match out.get_mut(topic) {
            Some(partitions) => {
                partitions.insert(*partition);
            }
            None => return Err("an assigned topic is missing from the metadata"),
        }
    }
    if out.values().all(BTreeSet::is_empty) {
        return Err("no partitions in the metadata");
    }
    Ok(out)
}

/// The commit metadata of a start position chosen by `START_AT`: a group
/// whose only commits carry it is still new (its replicas may be resolving
/// `START_AT` for their own partitions at this very moment).
/// It records how many partitions the topic had and which topics were read
/// when the choice was made, so that a partition or a topic added later is
/// known as such even before any delivered offset is committed
/// (`patterns-connector:start_at;partitions=N;topics=a,b`).
pub(super) const START_AT_METADATA: &str = "patterns-connector:start_at";

/// Kafka refuses commit metadata over `offset.metadata.max.bytes` (4096 by
/// default): a longer topic list is left out (then it constrains nothing).
const MAX_TAG_BYTES: usize = 2048;

pub(super) fn start_at_metadata(partitions: i32, topics: &[&str]) -> String {
    let tag = format!(
        "{START_AT_METADATA};partitions={partitions};topics={}",
        topics.join(",")
    );
    if tag.len() <= MAX_TAG_BYTES {
        tag
    } else {
        format!("{START_AT_METADATA};partitions={partitions}")
    }
}

/// A START_AT position's tag, read.
#[derive(Debug, PartialEq, Eq)]
pub(super) struct StartAtTag {
    /// The topic's partition count when the choice was made; `None` for a
    /// tag written before counts were recorded. A count that cannot be read
    /// is 0, so every partition without a commit starts at the earliest
    /// offset: a misread never skips.
    partitions: Option<i32>,
    /// The topics read when the choice was made; `None` when not recorded.
    topics: Option<BTreeSet<String>>,
}

/// `Some` for a START_AT position, `None` for any other commit.
pub(super) fn parse_start_at_metadata(metadata: &str) -> Option<StartAtTag> {
    let rest = metadata.strip_prefix(START_AT_METADATA)?;
    let mut tag = StartAtTag {
        partitions: None,
        topics: None,
    };
    if rest.is_empty() {
        return Some(tag);
    }
    // Anything after the prefix that is not understood reads as "added
    // after the choice": the earliest offset, never a skip.
    tag.partitions = Some(0);
    for field in rest.split(';').skip(1) {
        if let Some(n) = field.strip_prefix("partitions=") {
            tag.partitions = Some(n.parse().ok().filter(|n: &i32| *n >= 0).unwrap_or(0));
        } else if let Some(list) = field.strip_prefix("topics=") {
            tag.topics = Some(
                list.split(',')
                    .filter(|t| !t.is_empty())
                    .map(str::to_owned)
                    .collect(),
            );
        }
    }
    Some(tag)
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
    /// Only START_AT positions (or none at all).
    New(NewGroup),
}

/// What a new group's START_AT positions say.
#[derive(Debug, Default, PartialEq, Eq)]
pub(super) struct NewGroup {
    /// Partitions whose position is already fixed.
    committed: BTreeSet<TopicPartition>,
    /// Per topic, the fewest partitions it had when one of its positions
    /// was chosen: partitions numbered from there on were added after.
    decided_for: BTreeMap<String, i32>,
    /// The topics every choice so far saw (`None` before any choice, or
    /// when no tag records them): a topic outside it was created after.
    topics_at_choice: Option<BTreeSet<String>>,
}

/// Where an assigned partition of a new group starts.
#[derive(Debug, PartialEq, Eq)]
pub(super) enum Placement {
    /// Another replica of the new group already fixed its start.
    Committed,
    /// It appeared after the group chose: read it whole.
    Earliest(&'static str),
    /// Resolve `START_AT` for it.
    StartAt,
}

impl NewGroup {
    /// `first_seen`: the topic existed when this replica first looked.
    pub(super) fn placement(&self, tp: &TopicPartition, first_seen: bool) -> Placement {
        if self.committed.contains(tp) {
            return Placement::Committed;
        }
        if self
            .decided_for
            .get(tp.topic())
            .is_some_and(|count| tp.partition >= *count)
        {
            return Placement::Earliest("partition added after the choice");
        }
        if self
            .topics_at_choice
            .as_ref()
            .is_some_and(|topics| !topics.contains(tp.topic()))
        {
            return Placement::Earliest("topic created after the choice");
        }
        if !first_seen {
            return Placement::Earliest("topic created after this replica started");
        }
        Placement::StartAt
    }
}

/// Decides from `(topic-partition, commit metadata)` per committed partition.
pub(super) fn group_commits<'a>(
    commits: impl Iterator<Item = (TopicPartition, &'a str)>,
) -> GroupCommits {
    let mut group = NewGroup::default();
    for (tp, metadata) in commits {
        let Some(tag) = parse_start_at_metadata(metadata) else {
            return GroupCommits::Established;
        };
        if let Some(count) = tag.partitions {
            let decided = group
                .decided_for
                .entry(tp.topic().to_owned())
                .or_insert(count);
            *decided = (*decided).min(count);
        }
        if let Some(topics) = tag.topics {
            group.topics_at_choice = Some(match group.topics_at_choice.take() {
                None => topics,
                Some(seen) => seen.intersection(&topics).cloned().collect(),
            });
        }
        group.committed.insert(tp);
    }
    GroupCommits::New(group)
}

#[cfg(test)]
mod tests;
