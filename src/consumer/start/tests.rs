use super::*;

fn tp(topic: &str, partition: i32) -> TopicPartition {
    TopicPartition::new(topic, partition)
}

fn new_group(commits: &[(TopicPartition, &str)]) -> NewGroup {
    match group_commits(commits.iter().map(|(tp, m)| (tp.clone(), *m))) {
        GroupCommits::New(group) => group,
        GroupCommits::Established => panic!("expected a new group"),
    }
}

#[test]
fn a_group_is_new_until_a_partition_of_any_topic_has_a_commit_that_is_not_a_start_at_position() {
    assert_eq!(
        group_commits(std::iter::empty()),
        GroupCommits::New(NewGroup::default())
    );
    let tagged = start_at_metadata(4, &["a", "b"]);
    let group = new_group(&[
        (tp("a", 0), tagged.as_str()),
        (tp("a", 3), START_AT_METADATA),
    ]);
    assert_eq!(
        group.committed,
        [tp("a", 0), tp("a", 3)].into_iter().collect()
    );
    assert_eq!(group.decided_for.get("a"), Some(&4));
    assert_eq!(
        group_commits([(tp("a", 0), tagged.as_str()), (tp("b", 1), "")].into_iter()),
        GroupCommits::Established,
        "a delivered commit in another topic makes the group established"
    );
}

#[test]
fn in_a_new_group_partitions_and_topics_that_appeared_after_the_choice_are_read_whole() {
    let a4 = start_at_metadata(4, &["a", "b"]);
    let b2 = start_at_metadata(2, &["a", "b"]);
    let group = new_group(&[(tp("a", 0), a4.as_str()), (tp("b", 0), b2.as_str())]);
    // Fixed by another replica.
    assert_eq!(group.placement(&tp("a", 0), true), Placement::Committed);
    // Existed at the choice, not placed yet: START_AT.
    assert_eq!(group.placement(&tp("a", 3), true), Placement::StartAt);
    assert_eq!(group.placement(&tp("b", 1), true), Placement::StartAt);
    // Added to a topic after the choice.
    assert!(matches!(
        group.placement(&tp("b", 2), true),
        Placement::Earliest(_)
    ));
    // A topic the choice did not see, even if this replica saw it first.
    assert!(matches!(
        group.placement(&tp("c", 0), true),
        Placement::Earliest(_)
    ));
    // No choice yet: a topic this replica saw at its first look starts
    // at START_AT; one that appeared later is read whole.
    let none = NewGroup::default();
    assert_eq!(none.placement(&tp("c", 0), true), Placement::StartAt);
    assert!(matches!(
        none.placement(&tp("c", 0), false),
        Placement::Earliest(_)
    ));
    // Choices that saw different topics: only the topics all of them saw count.
    let older = start_at_metadata(1, &["a"]);
    let group = new_group(&[(tp("a", 0), older.as_str()), (tp("b", 0), b2.as_str())]);
    assert!(matches!(
        group.placement(&tp("b", 1), true),
        Placement::Earliest(_)
    ));
}

fn known(name: &str, error: bool, partitions: &[i32]) -> KnownTopic {
    KnownTopic {
        name: name.to_owned(),
        error,
        partitions: partitions.to_vec(),
    }
}

#[test]
fn commits_are_read_for_every_partition_and_a_doubtful_metadata_answer_is_an_error() {
    let read = commits_to_read(
        &[known("a", false, &[0, 1]), known("b", false, &[0])],
        &[("a".into(), 2), ("b".into(), 0)],
    )
    .expect("complete");
    assert_eq!(
        read["a"],
        [0, 1, 2].into_iter().collect(),
        "an assigned partition the metadata lags on is read too"
    );
    assert_eq!(read["b"], [0].into_iter().collect());
    // The commits of "a" would go unread: the group could look new.
    assert!(commits_to_read(
        &[known("a", true, &[]), known("b", false, &[0])],
        &[("b".into(), 0)]
    )
    .is_err());
    assert!(commits_to_read(&[known("b", false, &[0])], &[("a".into(), 0)]).is_err());
    assert!(commits_to_read(&[], &[]).is_err());
    assert!(commits_to_read(&[known("a", false, &[])], &[]).is_err());
}

#[test]
fn start_at_tags_read_back_and_unreadable_ones_never_skip() {
    assert_eq!(parse_start_at_metadata("other"), None);
    assert_eq!(parse_start_at_metadata(""), None);
    assert_eq!(
        parse_start_at_metadata(START_AT_METADATA),
        Some(StartAtTag {
            partitions: None,
            topics: None
        })
    );
    assert_eq!(
        parse_start_at_metadata(&start_at_metadata(3, &["x", "y"])),
        Some(StartAtTag {
            partitions: Some(3),
            topics: Some(["x".to_owned(), "y".to_owned()].into_iter().collect())
        })
    );
    // The tag of the single-topic versions (a count, no topics).
    assert_eq!(
        parse_start_at_metadata(&format!("{START_AT_METADATA};partitions=5")),
        Some(StartAtTag {
            partitions: Some(5),
            topics: None
        })
    );
    for unreadable in [";partitions=x", ";partitions=", ";partitions=-3", ";v=2"] {
        assert_eq!(
            parse_start_at_metadata(&format!("{START_AT_METADATA}{unreadable}"))
                .and_then(|t| t.partitions),
            Some(0),
            "{unreadable}"
        );
    }
    // A topic list too long for Kafka's metadata limit is left out.
    let many: Vec<String> = (0..500).map(|i| format!("topic_{i}")).collect();
    let many: Vec<&str> = many.iter().map(String::as_str).collect();
    let tag = start_at_metadata(1, &many);
    assert!(tag.len() <= MAX_TAG_BYTES);
    assert_eq!(parse_start_at_metadata(&tag).and_then(|t| t.topics), None);
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
