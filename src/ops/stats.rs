//! librdkafka's statistics (`statistics.interval.ms`), read for what the
//! connector shows: whether a broker is up, and every topic-partition's
//! watermarks, committed offset, fetch position and fetch state. Pure.

use std::collections::HashMap;

use serde::Deserialize;

use crate::topic_partition::TopicPartition;

/// What one statistics snapshot says about one partition.
#[derive(Debug, Clone, Copy, Deserialize, PartialEq, Eq)]
pub struct PartitionStats {
    #[serde(default = "unknown")]
    pub hi_offset: i64,
    #[serde(default = "unknown")]
    pub lo_offset: i64,
    #[serde(default = "unknown")]
    pub committed_offset: i64,
    /// librdkafka's fetch position: the next offset it will fetch.
    #[serde(default = "unknown")]
    pub next_offset: i64,
    /// The last stable offset: under `isolation.level=read_committed`
    /// (librdkafka's default) fetching stops there while a transaction is open.
    #[serde(default = "unknown")]
    pub ls_offset: i64,
    /// The partition's leader broker; -1 while it has none.
    #[serde(default)]
    pub leader: i32,
    #[serde(default)]
    pub fetch_state: FetchState,
}

/// librdkafka's fetch state of a partition, as far as stalls care.
#[derive(Debug, Clone, Copy, Deserialize, PartialEq, Eq, Default)]
#[serde(rename_all = "kebab-case")]
pub enum FetchState {
    Active,
    /// Looking up or waiting for the start offset (committed offset,
    /// offset reset) or validating the leader epoch: Kafka's side.
    OffsetQuery,
    OffsetWait,
    ValidateEpochWait,
    #[default]
    #[serde(other)]
    Other,
}

impl PartitionStats {
    /// Waiting on Kafka rather than on the connector: no leader, or the
    /// start position still being looked up.
    pub(crate) fn waits_on_kafka(&self) -> bool {
        self.leader < 0
            || matches!(
                self.fetch_state,
                FetchState::OffsetQuery | FetchState::OffsetWait | FetchState::ValidateEpochWait
            )
    }
}

fn unknown() -> i64 {
    -1
}

#[derive(Debug, Default)]
pub struct Stats {
    pub broker_up: bool,
    /// The group consumer has its coordinator (librdkafka's `cgrp` state
    /// `up`). Under the new protocol (KIP-848) a member given no partition
    /// gets no rebalance callback and its join state stays `init`: being
    /// `up` with no fatal error (a refused join is one) is how it is seen.
    pub group_up: bool,
    /// Every topic-partition in the snapshot, sorted (assigned or not: the
    /// caller keeps those it owns).
    pub partitions: Vec<(TopicPartition, PartitionStats)>,
}

#[derive(Deserialize)]
struct RawStats {
    #[serde(default)]
    brokers: HashMap<String, RawBroker>,
    #[serde(default)]
    topics: HashMap<String, RawTopic>,
    cgrp: Option<RawGroup>,
}

#[derive(Deserialize)]
struct RawGroup {
    #[serde(default)]
    state: String,
}

#[derive(Deserialize)]
struct RawBroker {
    #[serde(default)]
    state: String,
    #[serde(default)]
    nodeid: i64,
}

#[derive(Deserialize)]
struct RawTopic {
    #[serde(default)]
    partitions: HashMap<String, PartitionStats>,
}

/// Extracts broker state and every topic's partitions from librdkafka's
/// statistics JSON. librdkafka's internal partition -1 (UA) is left out.
pub fn parse_stats(json: &[u8]) -> Option<Stats> {
    let raw: RawStats = serde_json::from_slice(json).ok()?;
    // Bootstrap entries have nodeid -1; a real broker connection that is UP counts.
    let broker_up = raw
        .brokers
        .values()
        .any(|b| b.nodeid >= 0 && b.state == "UP");
    let mut partitions: Vec<(TopicPartition, PartitionStats)> = Vec::new();
    for (topic, t) in raw.topics {
        let topic: std::sync::Arc<str> = topic.into();
        for (id, p) in t.partitions {
            if let Some(id) = id.parse::<i32>().ok().filter(|id| *id >= 0) {
                partitions.push((TopicPartition::new(topic.clone(), id), p));
            }
        }
    }
    partitions.sort_unstable_by(|a, b| a.0.cmp(&b.0));
    let group_up = raw.cgrp.is_some_and(|g| g.state == "up");
    Some(Stats {
        broker_up,
        group_up,
        partitions,
    })
}

/// A partition's statistics with these watermarks and commit, for tests.
#[cfg(test)]
pub(crate) fn test_stats(hi: i64, lo: i64, committed: i64) -> PartitionStats {
    PartitionStats {
        hi_offset: hi,
        lo_offset: lo,
        committed_offset: committed,
        next_offset: -1,
        ls_offset: -1,
        leader: 0,
        fetch_state: FetchState::Other,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    use crate::ops::stats::test_stats as stats;

    #[test]
    fn the_group_state_is_read_from_the_cgrp_object() {
        let parse = |cgrp: &str| {
            let json = format!(r#"{{"brokers":{{}},"topics":{{}}{cgrp}}}"#);
            parse_stats(json.as_bytes()).expect("parses").group_up
        };
        // What a KIP-848 member given no partition reports, for good.
        assert!(parse(
            r#","cgrp":{"state":"up","join_state":"init","assignment_size":0}"#
        ));
        assert!(parse(r#","cgrp":{"state":"up","join_state":"steady"}"#));
        assert!(!parse(
            r#","cgrp":{"state":"query-coord","join_state":"init"}"#
        ));
        assert!(!parse(
            r#","cgrp":{"state":"wait-coord","join_state":"init"}"#
        ));
        assert!(!parse(""));
    }

    #[test]
    fn statistics_json_is_read_for_every_topic_and_the_brokers() {
        let json = br#"{"brokers":{"127.0.0.1:9092/bootstrap":{"state":"INIT","nodeid":-1},
            "127.0.0.1:9092/1":{"state":"UP","nodeid":1}},
            "topics":{"t":{"partitions":{"0":{"hi_offset":7,"lo_offset":0,"committed_offset":5,"consumer_lag":2},
            "-1":{"hi_offset":-1},"1":{"hi_offset":3,"lo_offset":0,"committed_offset":-1001}}},
            "other":{"partitions":{"0":{"hi_offset":99,"lo_offset":0,"committed_offset":9}}}}}"#;
        let s = parse_stats(json).expect("valid");
        assert!(s.broker_up);
        assert_eq!(
            s.partitions,
            vec![
                (TopicPartition::new("other", 0), stats(99, 0, 9)),
                (TopicPartition::new("t", 0), stats(7, 0, 5)),
                (TopicPartition::new("t", 1), stats(3, 0, -1001)),
            ]
        );
        let down =
            parse_stats(br#"{"brokers":{"b/1":{"state":"DOWN","nodeid":1}}}"#).expect("valid");
        assert!(!down.broker_up);
        assert!(parse_stats(b"not json").is_none());
    }
}
