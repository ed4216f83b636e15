//! Which topics the consumer reads, and which of them exist.
//!
//! `KAFKA_TOPIC` names topics (a list) or a `^pattern`. librdkafka
//! subscribes to both forms and finds topics created later, and partitions
//! added, at its metadata refresh (`METADATA_REFRESH`). A listed topic that
//! does not exist does not stop the others; librdkafka reports it as a
//! consume error at every refresh, which the poll loop drops: the check here
//! says it once, in the log and in `patterns_connector_topic_missing`, and
//! again when it appears.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use rdkafka::error::KafkaError;
use rdkafka::types::RDKafkaErrorCode;

use crate::config::Config;

/// The consumer's `topic.metadata.refresh.interval.ms` unless
/// `KAFKA_PROPERTIES` sets it: how soon a created topic, a newly matching
/// one or added partitions are read (librdkafka's own default is 5 min).
pub const METADATA_REFRESH: Duration = Duration::from_secs(30);

/// What `consumer.subscribe` takes: the listed names, or the one pattern.
pub fn subscription(config: &Config) -> Vec<String> {
    config.topics.subscription()
}

/// Whether `topic` is one the consumer reads (listed, or matching the pattern).
pub fn subscribed(config: &Config, topic: &str) -> bool {
    config.topics.matches(topic)
}

/// The names to report missing one by one: the listed topics, or none for
/// a pattern (a pattern that matches nothing is reported as such).
pub fn listed(config: &Config) -> Option<Vec<String>> {
    config.topics.listed().map(<[String]>::to_vec)
}

/// librdkafka's answer for a subscribed topic that does not exist.
pub fn is_missing_topic_error(error: &KafkaError) -> bool {
    matches!(
        error.rdkafka_error_code(),
        Some(RDKafkaErrorCode::UnknownTopicOrPartition | RDKafkaErrorCode::UnknownTopic)
    )
}

/// A change worth one log line.
#[derive(Debug, PartialEq, Eq)]
pub enum Change {
    Missing(String),
    Appeared(String),
    /// The pattern matches no topic (`true`), or matches one again (`false`).
    NothingMatches(bool),
}

/// Remembers what was reported, so each change is said once. Pure.
#[derive(Debug, Default)]
pub struct TopicCheck {
    missing: BTreeSet<String>,
    nothing_matched: bool,
    checked: bool,
}

impl TopicCheck {
    /// `listed`: the topics named in `KAFKA_TOPIC` (`None` for a pattern);
    /// `present`: the topics read that exist now, with their partition counts.
    /// Returns what changed since the last check, and the missing topics now.
    pub fn observe(
        &mut self,
        listed: Option<&[String]>,
        present: &BTreeMap<String, usize>,
    ) -> (Vec<Change>, Vec<String>) {
        let mut changes = Vec::new();
        match listed {
            Some(names) => {
                let now: BTreeSet<String> = names
                    .iter()
                    .filter(|n| !present.contains_key(n.as_str()))
                    .cloned()
                    .collect();
                for gone in now.difference(&self.missing) {
                    changes.push(Change::Missing(gone.clone()));
                }
                for back in self.missing.difference(&now) {
                    changes.push(Change::Appeared(back.clone()));
                }
                self.missing = now;
            }
            None => {
                let nothing = present.is_empty();
                if nothing != self.nothing_matched || (nothing && !self.checked) {
                    changes.push(Change::NothingMatches(nothing));
                }
                self.nothing_matched = nothing;
            }
        }
        self.checked = true;
        (changes, self.missing.iter().cloned().collect())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn present(names: &[(&str, usize)]) -> BTreeMap<String, usize> {
        names.iter().map(|(n, c)| ((*n).to_owned(), *c)).collect()
    }

    #[test]
    fn a_missing_listed_topic_is_reported_once_and_again_when_it_appears() {
        let listed = vec!["a".to_owned(), "b".to_owned()];
        let mut check = TopicCheck::default();
        let (changes, missing) = check.observe(Some(&listed), &present(&[("a", 3)]));
        assert_eq!(changes, vec![Change::Missing("b".into())]);
        assert_eq!(missing, vec!["b".to_owned()]);
        let (changes, missing) = check.observe(Some(&listed), &present(&[("a", 3)]));
        assert!(changes.is_empty(), "said once: {changes:?}");
        assert_eq!(missing, vec!["b".to_owned()]);
        let (changes, missing) = check.observe(Some(&listed), &present(&[("a", 3), ("b", 1)]));
        assert_eq!(changes, vec![Change::Appeared("b".into())]);
        assert!(missing.is_empty());
    }

    #[test]
    fn a_pattern_that_matches_nothing_is_reported_once() {
        let mut check = TopicCheck::default();
        assert_eq!(
            check.observe(None, &present(&[])).0,
            vec![Change::NothingMatches(true)]
        );
        assert!(check.observe(None, &present(&[])).0.is_empty());
        assert_eq!(
            check.observe(None, &present(&[("x", 1)])).0,
            vec![Change::NothingMatches(false)]
        );
        let mut fine = TopicCheck::default();
        assert!(fine.observe(None, &present(&[("x", 1)])).0.is_empty());
    }

    #[test]
    fn only_unknown_topic_errors_count_as_a_missing_topic() {
        assert!(is_missing_topic_error(&KafkaError::MessageConsumption(
            RDKafkaErrorCode::UnknownTopicOrPartition
        )));
        assert!(!is_missing_topic_error(&KafkaError::MessageConsumption(
            RDKafkaErrorCode::BrokerTransportFailure
        )));
    }
}
