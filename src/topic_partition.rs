//! The key of everything that is per partition: a topic and a partition of it.
//!
//! The connector can read several topics in one consumer group, so a
//! partition number alone names nothing. Workers, the hand-over, the
//! frontier's reports, commits, pauses, lag, the watermark probe, the
//! originals reader and dead-letter bookkeeping are all keyed by this.

use std::fmt;
use std::sync::Arc;

/// A topic-partition. The topic is shared (`Arc<str>`): it is cloned into
/// every per-partition structure and every progress report, and a clone must
/// stay cheap.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct TopicPartition {
    pub topic: Arc<str>,
    pub partition: i32,
}

impl TopicPartition {
    pub fn new(topic: impl Into<Arc<str>>, partition: i32) -> Self {
        Self {
            topic: topic.into(),
            partition,
        }
    }

    pub fn topic(&self) -> &str {
        &self.topic
    }
}

impl fmt::Display for TopicPartition {
    /// Kafka's own spelling, `topic-partition` would be ambiguous with topics
    /// that contain dashes; `topic/partition` is not.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.topic, self.partition)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeSet;

    #[test]
    fn partitions_of_two_topics_with_the_same_number_are_different_keys() {
        let a = TopicPartition::new("events_plugin_ingestion", 0);
        let b = TopicPartition::new("events_plugin_ingestion_historical", 0);
        assert_ne!(a, b);
        let set: BTreeSet<_> = [a.clone(), b, a].into_iter().collect();
        assert_eq!(set.len(), 2);
    }

    #[test]
    fn it_displays_as_topic_slash_partition() {
        assert_eq!(TopicPartition::new("t-1", 7).to_string(), "t-1/7");
    }
}
