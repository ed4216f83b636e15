//! Orderings of deliveries, dead letters, filters, rewinds and drains that
//! the end-to-end tests can hardly bring about, played against the state
//! machine alone.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use bytes::Bytes;

use super::*;
use crate::event::filter::Skip;

/// What the I/O side was asked to do, in a form a test can compare.
#[derive(Debug, PartialEq, Eq)]
enum Did {
    /// A batch to deliver, by the offsets of its events.
    Deliver(Vec<i64>),
    DeadLetter(i64, &'static str),
    Progress(i64),
    Rewound {
        offset: i64,
        expected: i64,
    },
    Blocked(i64),
    Oversized,
}

use Did::*;

/// The state, played by a test instead of the worker's I/O.
struct Play {
    state: PartitionState,
    t0: Instant,
    /// Units handed out, by their first offset, so a test completes them by offset.
    units: HashMap<i64, UnitId>,
    /// The error text of each dead letter, by offset.
    errors: HashMap<i64, Option<String>>,
}

const MAX_BYTES: usize = 1000;

impl Play {
    fn new(max_events: usize, policy: DlqPolicy) -> Self {
        let limits = BatchLimits {
            max_events,
            max_bytes: MAX_BYTES,
            linger: Duration::from_millis(100),
        };
        Play {
            state: PartitionState::new(limits, policy, Lanes::PARTITION),
            t0: Instant::now(),
            units: HashMap::new(),
            errors: HashMap::new(),
        }
    }

    /// A partition delivering through `lanes` key lanes.
    fn with_lanes(max_events: usize, lanes: usize) -> Self {
        let mut play = Play::new(max_events, DlqPolicy::Dlq);
        play.state = PartitionState::new(
            play.state.limits,
            DlqPolicy::Dlq,
            Lanes {
                ordering: DeliveryOrder::Key,
                count: lanes,
            },
        );
        play
    }

    fn take(&mut self, offset: i64, disposition: Disposition, json: &[u8]) {
        self.take_at(offset, None, disposition, json, self.t0);
    }

    fn take_at(
        &mut self,
        offset: i64,
        key: Option<&str>,
        disposition: Disposition,
        json: &[u8],
        now: Instant,
    ) {
        let message = Message {
            offset,
            timestamp_ms: Some(1_000 + offset),
            key: key.map(|k| Bytes::copy_from_slice(k.as_bytes())),
            payload: Some(Bytes::from_static(b"payload")),
        };
        let error = matches!(disposition, Disposition::Undecodable(_)).then(|| "bad".to_owned());
        self.state.take(message, disposition, json, error, now);
    }

    /// Events with keys, `(offset, key)`.
    fn keyed(&mut self, events: &[(i64, &str)]) {
        for &(offset, key) in events {
            self.take_at(
                offset,
                Some(key),
                Disposition::Batch,
                br#"{"e":1}"#,
                self.t0,
            );
        }
    }

    fn events(&mut self, offsets: impl IntoIterator<Item = i64>) {
        for offset in offsets {
            self.take(offset, Disposition::Batch, br#"{"e":1}"#);
        }
    }

    fn filtered(&mut self, offsets: impl IntoIterator<Item = i64>) {
        for offset in offsets {
            self.take(offset, Disposition::Filtered(Skip::EventName), b"");
        }
    }

    fn undecodable(&mut self, offset: i64) {
        self.take(offset, Disposition::Undecodable("not_json"), b"");
    }

    /// What the state asks for now.
    fn step(&mut self) -> Vec<Did> {
        self.state
            .actions()
            .into_iter()
            .map(|action| match action {
                Action::Deliver(batch) => {
                    let offsets: Vec<i64> = batch.events.iter().map(|e| e.offset).collect();
                    self.units.insert(offsets[0], batch.unit);
                    Deliver(offsets)
                }
                Action::WriteDeadLetter {
                    unit,
                    message,
                    reason,
                    error,
                } => {
                    self.units.insert(message.offset, unit);
                    self.errors.insert(message.offset, error);
                    DeadLetter(message.offset, reason)
                }
                Action::Progress(next) => Progress(next),
                Action::Rewound { offset, expected } => Rewound { offset, expected },
                Action::Blocked { offset, .. } => Blocked(offset),
                Action::Oversized { .. } => Oversized,
            })
            .collect()
    }

    fn unit(&self, first_offset: i64) -> UnitId {
        *self
            .units
            .get(&first_offset)
            .expect("a unit handed out at this offset")
    }

    fn delivered(&mut self, first_offset: i64) -> Vec<Did> {
        self.state.delivered(self.unit(first_offset));
        self.step()
    }

    fn dead_lettered(&mut self, offset: i64) -> Vec<Did> {
        self.state.dead_lettered(self.unit(offset));
        self.step()
    }
}

fn progress(did: &[Did]) -> Vec<i64> {
    did.iter()
        .filter_map(|d| match d {
            Progress(next) => Some(*next),
            _ => None,
        })
        .collect()
}

#[test]
fn a_delivered_batch_reports_the_offset_after_it() {
    let mut p = Play::new(3, DlqPolicy::Dlq);
    p.events(0..3);
    assert_eq!(p.step(), vec![Deliver(vec![0, 1, 2])]);
    assert_eq!(p.delivered(0), vec![Progress(3)]);
    assert_eq!(p.state.safe_offset(), Some(3));
}

#[test]
fn a_sealed_batch_waits_while_another_is_in_flight() {
    let mut p = Play::new(2, DlqPolicy::Dlq);
    p.events(0..6);
    assert_eq!(p.step(), vec![Deliver(vec![0, 1])], "one batch at a time");
    assert_eq!(p.step(), vec![], "the next waits for the slot");
    assert_eq!(p.delivered(0), vec![Deliver(vec![2, 3]), Progress(2)]);
    assert_eq!(p.delivered(2), vec![Deliver(vec![4, 5]), Progress(4)]);
    assert_eq!(p.delivered(4), vec![Progress(6)]);
}

#[test]
fn a_delivery_finishing_during_a_drain_is_committed_and_the_open_batch_follows() {
    let mut p = Play::new(2, DlqPolicy::Dlq);
    p.events(0..3);
    assert_eq!(p.step(), vec![Deliver(vec![0, 1])]);
    p.state.drain();
    assert!(p.state.is_draining());
    assert_eq!(p.step(), vec![], "the sealed open batch waits for the slot");
    assert!(!p.state.is_drained());
    assert_eq!(p.delivered(0), vec![Deliver(vec![2]), Progress(2)]);
    assert!(!p.state.is_drained());
    assert_eq!(p.delivered(2), vec![Progress(3)]);
    assert!(p.state.is_drained());
    assert_eq!(p.state.safe_offset(), Some(3));
}

#[test]
fn a_dead_letter_acknowledged_after_later_deliveries_releases_them_all() {
    let mut p = Play::new(2, DlqPolicy::Dlq);
    p.events(0..2);
    p.undecodable(2);
    p.events(3..7);
    assert_eq!(
        p.step(),
        vec![DeadLetter(2, "not_json"), Deliver(vec![0, 1])]
    );
    assert_eq!(p.delivered(0), vec![Deliver(vec![3, 4]), Progress(2)]);
    assert_eq!(p.delivered(3), vec![Deliver(vec![5, 6])]);
    assert_eq!(p.delivered(5), vec![], "everything after 2 waits for it");
    assert_eq!(p.dead_lettered(2), vec![Progress(7)]);
}

#[test]
fn a_filtered_message_between_two_pending_units_moves_nothing_until_both_are_done() {
    let mut p = Play::new(2, DlqPolicy::Dlq);
    p.events(0..2);
    p.filtered([2]);
    p.undecodable(3);
    assert_eq!(
        p.step(),
        vec![DeadLetter(3, "not_json"), Deliver(vec![0, 1])]
    );
    assert_eq!(p.dead_lettered(3), vec![], "the batch before it is pending");
    assert_eq!(p.delivered(0), vec![Progress(4)]);
}

#[test]
fn a_filtered_message_after_a_pending_batch_waits_for_it_and_then_moves_with_it() {
    let mut p = Play::new(2, DlqPolicy::Dlq);
    p.events(0..2);
    p.filtered([2]);
    p.events(3..5);
    assert_eq!(p.step(), vec![Deliver(vec![0, 1])]);
    assert_eq!(p.delivered(0), vec![Deliver(vec![3, 4]), Progress(3)]);
    assert_eq!(p.delivered(3), vec![Progress(5)]);
}

#[test]
fn an_abandoned_delivery_holds_the_frontier() {
    let mut p = Play::new(2, DlqPolicy::Dlq);
    p.events(0..2);
    p.filtered([2]);
    p.events(3..5);
    assert_eq!(p.step(), vec![Deliver(vec![0, 1])]);
    p.state.delivery_abandoned(p.unit(0));
    assert_eq!(
        p.step(),
        vec![],
        "3..4 would overtake the abandoned batch: the lane sends nothing more"
    );
    p.filtered([5]);
    assert_eq!(p.step(), vec![]);
    p.state.drain();
    assert!(p.state.is_drained(), "nothing is left to wait for");
    assert_eq!(p.state.safe_offset(), None);
}

#[test]
fn an_abandoned_dead_letter_holds_the_frontier() {
    let mut p = Play::new(2, DlqPolicy::Dlq);
    p.filtered([0]);
    p.undecodable(1);
    p.events(2..4);
    assert_eq!(
        p.step(),
        vec![DeadLetter(1, "not_json"), Deliver(vec![2, 3]), Progress(1)]
    );
    p.state.dead_letter_abandoned(p.unit(1));
    assert_eq!(p.delivered(2), vec![], "the dead letter is still pending");
    p.state.drain();
    assert!(p.state.is_drained());
    assert_eq!(
        p.state.safe_offset(),
        Some(1),
        "committed up to the dead letter"
    );
}

#[test]
fn under_the_block_policy_a_bad_message_stops_the_partition_and_holds_the_frontier_at_it() {
    let mut p = Play::new(10, DlqPolicy::Block);
    p.events(0..2);
    p.undecodable(2);
    assert!(p.state.is_blocked());
    assert_eq!(
        p.step(),
        vec![Blocked(2), Deliver(vec![0, 1])],
        "no dead letter is written; the batch before it still goes"
    );
    assert_eq!(p.delivered(0), vec![Progress(2)]);
    p.state.drain();
    assert!(p.state.is_drained());
    assert_eq!(
        p.state.safe_offset(),
        Some(2),
        "the blocking message stays uncommitted"
    );
}

#[test]
fn under_the_block_policy_the_partition_is_reported_blocked_once() {
    let mut p = Play::new(10, DlqPolicy::Block);
    p.undecodable(0);
    p.undecodable(1);
    assert_eq!(p.step(), vec![Blocked(0)]);
}

#[test]
fn an_event_too_large_for_a_batch_is_dead_lettered_after_the_batch_before_it_is_sealed() {
    let mut p = Play::new(10, DlqPolicy::Dlq);
    p.events([0]);
    p.take(1, Disposition::TooLarge, &[b'x'; MAX_BYTES]);
    p.events([2]);
    p.state.drain();
    assert_eq!(p.step(), vec![DeadLetter(1, "too_large"), Deliver(vec![0])]);
    let error = p.errors[&1].clone().expect("an error text");
    assert!(
        error.contains("1000 bytes") && error.contains("BATCH_MAX_BYTES is 1000"),
        "{error}"
    );
    assert_eq!(p.delivered(0), vec![Deliver(vec![2]), Progress(1)]);
    assert_eq!(p.dead_lettered(1), vec![Progress(2)]);
    assert_eq!(p.delivered(2), vec![Progress(3)]);
}

#[test]
fn under_the_block_policy_an_event_too_large_for_a_batch_is_sent_alone_and_flagged() {
    let mut p = Play::new(10, DlqPolicy::Block);
    p.events([0]);
    p.take(1, Disposition::Batch, &[b'x'; MAX_BYTES]);
    p.events([2]);
    assert!(!p.state.is_blocked());
    assert_eq!(p.step(), vec![Oversized, Deliver(vec![0])]);
    assert_eq!(p.delivered(0), vec![Deliver(vec![1]), Progress(1)]);
    assert_eq!(p.delivered(1), vec![Progress(2)]);
    p.state.drain();
    assert_eq!(
        p.step(),
        vec![Deliver(vec![2])],
        "the next event is in a batch of its own"
    );
}

#[test]
fn offsets_going_backwards_rewind_the_frontier() {
    let mut p = Play::new(2, DlqPolicy::Dlq);
    p.events(50..52);
    assert_eq!(p.step(), vec![Deliver(vec![50, 51])]);
    assert_eq!(p.delivered(50), vec![Progress(52)]);
    p.filtered([0]);
    assert_eq!(
        p.step(),
        vec![
            Rewound {
                offset: 0,
                expected: 52
            },
            Progress(1)
        ],
        "lower than before the rewind"
    );
    assert_eq!(p.state.consumed_next(), Some(1));
}

#[test]
fn a_delivery_from_before_a_rewind_releases_nothing_of_the_new_log() {
    let mut p = Play::new(2, DlqPolicy::Dlq);
    p.events(50..52);
    assert_eq!(p.step(), vec![Deliver(vec![50, 51])]);
    p.events(0..2);
    assert_eq!(
        p.step(),
        vec![Rewound {
            offset: 0,
            expected: 52
        }]
    );
    assert_eq!(p.delivered(50), vec![Deliver(vec![0, 1])]);
    assert_eq!(p.delivered(0), vec![Progress(2)]);
}

#[test]
fn a_rewind_while_a_batch_is_open_keeps_new_offsets_from_a_later_filtered_message() {
    let mut p = Play::new(10, DlqPolicy::Dlq);
    p.events(50..52);
    p.events([0]);
    p.filtered([1]);
    let did = p.step();
    assert_eq!(
        progress(&did),
        Vec::<i64>::new(),
        "offset 0 is not delivered yet: {did:?}"
    );
    p.state.drain();
    let mut did = p.step();
    for first in [50, 0] {
        if p.units.contains_key(&first) {
            did.extend(p.delivered(first));
        }
    }
    assert_eq!(progress(&did), vec![2], "{did:?}");
}

#[test]
fn a_rewind_while_a_batch_is_open_keeps_new_offsets_from_a_later_dead_letter() {
    let mut p = Play::new(10, DlqPolicy::Dlq);
    p.events(50..52);
    p.events([0]);
    p.undecodable(1);
    p.step();
    assert_eq!(p.dead_lettered(1), vec![], "offset 0 is not delivered yet");
}

#[test]
fn a_chunk_of_filtered_messages_makes_one_progress_report() {
    let mut p = Play::new(10, DlqPolicy::Dlq);
    p.filtered(0..100);
    assert_eq!(p.step(), vec![Progress(100)]);
    assert_eq!(
        p.step(),
        vec![],
        "an unchanged frontier is not reported again"
    );
}

#[test]
fn a_drain_waits_for_pending_dead_letters() {
    let mut p = Play::new(10, DlqPolicy::Dlq);
    p.undecodable(0);
    p.undecodable(1);
    p.events([2]);
    p.state.drain();
    assert_eq!(
        p.step(),
        vec![
            DeadLetter(0, "not_json"),
            DeadLetter(1, "not_json"),
            Deliver(vec![2])
        ]
    );
    assert_eq!(p.delivered(2), vec![]);
    assert!(!p.state.is_drained());
    assert_eq!(p.dead_lettered(1), vec![]);
    assert!(!p.state.is_drained());
    assert_eq!(p.dead_lettered(0), vec![Progress(3)]);
    assert!(p.state.is_drained());
}

#[test]
fn a_dead_letter_seals_the_open_batch_so_the_batch_cannot_release_it() {
    let mut p = Play::new(10, DlqPolicy::Dlq);
    p.events([0]);
    p.undecodable(1);
    p.events([2]);
    p.state.drain();
    assert_eq!(p.step(), vec![DeadLetter(1, "not_json"), Deliver(vec![0])]);
    assert_eq!(p.delivered(0), vec![Deliver(vec![2]), Progress(1)]);
    assert_eq!(p.delivered(2), vec![], "the dead letter is still pending");
    assert_eq!(p.dead_lettered(1), vec![Progress(3)]);
}

#[test]
fn a_drain_with_nothing_pending_is_done_at_once() {
    let mut p = Play::new(10, DlqPolicy::Dlq);
    assert!(!p.state.is_drained(), "not before a drain is asked for");
    p.state.drain();
    assert!(p.state.is_drained());
    assert_eq!(p.step(), vec![]);
}

#[test]
fn a_partition_paused_for_memory_seals_its_open_batches_before_their_linger_time() {
    let mut p = Play::with_lanes(10, 2);
    p.keyed(&[(0, "a"), (1, "b"), (2, "a")]);
    assert_eq!(p.step(), vec![], "both lanes open, linger not up");
    p.state.seal_open();
    let mut did = p.step();
    did.sort_by_key(|d| format!("{d:?}"));
    assert_eq!(did, vec![Deliver(vec![0, 2]), Deliver(vec![1])]);
    assert_eq!(p.state.linger_deadline(), None, "nothing left open");
    // Nothing open: sealing again is a no-op, and new events open a new batch.
    p.state.seal_open();
    assert_eq!(p.step(), vec![]);
    p.keyed(&[(3, "a")]);
    assert!(p.state.linger_deadline().is_some());
}

#[test]
fn the_open_batch_is_sealed_when_its_linger_time_is_up() {
    let mut p = Play::new(10, DlqPolicy::Dlq);
    p.events([0]);
    let deadline = p.t0 + Duration::from_millis(100);
    assert_eq!(p.state.linger_deadline(), Some(deadline));
    p.state.linger(deadline - Duration::from_millis(1));
    assert_eq!(p.step(), vec![]);
    p.state.linger(deadline);
    assert_eq!(p.step(), vec![Deliver(vec![0])]);
    assert_eq!(p.state.linger_deadline(), None);
}

#[test]
fn held_bytes_and_waiting_cover_every_batch_and_dead_letter_until_done() {
    let mut p = Play::new(1, DlqPolicy::Dlq);
    assert_eq!(p.state.held_bytes(), 0);
    assert!(!p.state.is_waiting());
    p.events(0..2);
    p.undecodable(2);
    let before = p.state.held_bytes();
    assert!(
        before > b"payload".len(),
        "two sealed batches and a dead letter"
    );
    p.step();
    assert_eq!(
        p.state.held_bytes(),
        before,
        "moving into flight changes nothing"
    );
    assert!(p.state.is_waiting());
    assert_eq!(p.state.oldest_pending_ts_ms(), Some(1_000));
    p.delivered(0);
    p.delivered(1);
    assert_eq!(p.state.held_bytes(), b"payload".len(), "the dead letter");
    assert!(p.state.is_waiting());
    p.dead_lettered(2);
    assert_eq!(p.state.held_bytes(), 0);
    assert!(!p.state.is_waiting());
    assert_eq!(p.state.oldest_pending_ts_ms(), None);
}

// Key lanes (ORDERING=key).

/// PostHog-style keys that hash to `lanes` different lanes, one per lane, in lane order.
fn keys_by_lane(lanes: usize) -> Vec<String> {
    let mut keys: Vec<Option<String>> = vec![None; lanes];
    for i in 0.. {
        let key = format!("phc_token:user-{i}");
        let lane = lane_of(key.as_bytes(), lanes);
        keys[lane].get_or_insert(key);
        if keys.iter().all(Option::is_some) {
            break;
        }
    }
    keys.into_iter().flatten().collect()
}

#[test]
fn lanes_deliver_together_and_each_key_stays_in_one_lane_in_kafka_order() {
    let keys = keys_by_lane(2);
    let (a, b) = (keys[0].as_str(), keys[1].as_str());
    let mut p = Play::with_lanes(2, 2);
    p.keyed(&[(0, a), (1, b), (2, a), (3, b), (4, a), (5, a), (6, b)]);
    assert_eq!(
        p.step(),
        vec![Deliver(vec![0, 2]), Deliver(vec![1, 3])],
        "two batches of one partition in flight together"
    );
    assert_eq!(
        p.delivered(1),
        vec![],
        "key b's batch done first releases nothing before offset 0"
    );
    assert_eq!(
        p.delivered(0),
        vec![Deliver(vec![4, 5]), Progress(4)],
        "key a's next batch waits for its previous one; the frontier stops at b's open 6"
    );
    p.state.drain();
    assert_eq!(p.step(), vec![Deliver(vec![6])]);
    assert_eq!(p.delivered(6), vec![]);
    assert_eq!(p.delivered(4), vec![Progress(7)]);
    assert!(p.state.is_drained());
}

#[test]
fn keyless_messages_fill_one_lane_until_it_is_sealed_then_move_to_the_next() {
    let mut p = Play::with_lanes(2, 3);
    p.events(0..6);
    assert_eq!(
        p.step(),
        vec![
            Deliver(vec![0, 1]),
            Deliver(vec![2, 3]),
            Deliver(vec![4, 5])
        ],
        "one full batch per lane"
    );
    p.events(6..7);
    p.state.drain();
    assert_eq!(
        p.step(),
        vec![],
        "the fourth batch is back in the first lane, behind 0..1"
    );
    assert_eq!(p.delivered(0), vec![Deliver(vec![6]), Progress(2)]);
}

#[test]
fn a_keyless_message_that_does_not_fit_opens_the_next_lane_not_the_sealed_one() {
    let mut p = Play::with_lanes(100, 2);
    let big = [b'7'; 600];
    p.take(0, Disposition::Batch, &big);
    p.take(1, Disposition::Batch, &big);
    assert_eq!(p.step(), vec![Deliver(vec![0])], "sealed by size");
    p.state.drain();
    assert_eq!(
        p.step(),
        vec![Deliver(vec![1])],
        "in flight beside 0: it moved to the next lane"
    );
}

#[test]
fn a_stuck_lane_stops_the_partition_once_another_lane_has_the_cap_of_unreleased_units() {
    let keys = keys_by_lane(2);
    let (stuck, moving) = (keys[0].as_str(), keys[1].as_str());
    let mut p = Play::with_lanes(1, 2);
    p.keyed(&[(0, stuck)]);
    assert_eq!(p.step(), vec![Deliver(vec![0])], "never answered");
    let cap = MAX_PENDING_PER_LANE as i64;
    for offset in 1..=cap {
        assert!(!p.state.is_saturated(), "below the cap at offset {offset}");
        p.keyed(&[(offset, moving)]);
        assert_eq!(p.step(), vec![Deliver(vec![offset])]);
        assert_eq!(p.delivered(offset), vec![], "held behind offset 0");
    }
    assert!(
        p.state.is_saturated(),
        "{cap} units delivered behind the stuck lane"
    );
    assert_eq!(p.delivered(0), vec![Progress(cap + 1)]);
    assert!(
        !p.state.is_saturated(),
        "the frontier moved: the partition takes more"
    );
}

#[test]
fn a_drain_seals_and_sends_every_lane_and_ends_when_all_are_done_or_abandoned() {
    let keys = keys_by_lane(3);
    let mut p = Play::with_lanes(2, 3);
    p.keyed(&[
        (0, &keys[0]),
        (1, &keys[0]),
        (2, &keys[0]),
        (3, &keys[1]),
        (4, &keys[2]),
    ]);
    assert_eq!(p.step(), vec![Deliver(vec![0, 1])]);
    p.state.drain();
    assert_eq!(
        p.step(),
        vec![Deliver(vec![3]), Deliver(vec![4])],
        "the open batches of the idle lanes go at once; lane 0's waits"
    );
    assert_eq!(p.delivered(3), vec![]);
    p.state.delivery_abandoned(p.unit(0));
    assert_eq!(
        p.step(),
        vec![],
        "offset 2 has 0's key: it must not reach the webhook before 0..1"
    );
    assert!(!p.state.is_drained(), "offset 4 is still in flight");
    assert_eq!(p.delivered(4), vec![]);
    assert!(p.state.is_drained(), "every lane is done or abandoned");
    assert_eq!(
        p.state.safe_offset(),
        None,
        "the abandoned 0..1 holds the frontier"
    );
}

#[test]
fn each_lane_lingers_from_its_own_first_event() {
    let keys = keys_by_lane(2);
    let mut p = Play::with_lanes(10, 2);
    let t0 = p.t0;
    let later = t0 + Duration::from_millis(50);
    p.take_at(0, Some(&keys[0]), Disposition::Batch, b"1", t0);
    p.take_at(1, Some(&keys[1]), Disposition::Batch, b"2", later);
    assert_eq!(
        p.state.linger_deadline(),
        Some(t0 + Duration::from_millis(100))
    );
    p.state.linger(t0 + Duration::from_millis(100));
    assert_eq!(
        p.step(),
        vec![Deliver(vec![0])],
        "only the first lane is due"
    );
    assert_eq!(
        p.state.linger_deadline(),
        Some(later + Duration::from_millis(100))
    );
    p.state.linger(later + Duration::from_millis(100));
    assert_eq!(p.step(), vec![Deliver(vec![1])]);
}

#[test]
fn lanes_per_partition_share_the_concurrent_requests_among_the_assigned_partitions() {
    let lanes = |ordering, key_lanes, requests, assigned| {
        Lanes::per_partition(ordering, key_lanes, requests, assigned).count
    };
    use DeliveryOrder::{Key, Partition};
    assert_eq!(lanes(Key, 8, 16, 1), 8, "capped by KEY_LANES");
    assert_eq!(lanes(Key, 64, 16, 1), 16);
    assert_eq!(lanes(Key, 8, 16, 4), 4);
    assert_eq!(lanes(Key, 8, 16, 12), 1);
    assert_eq!(lanes(Key, 8, 16, 96), 1, "at least one");
    assert_eq!(lanes(Key, 8, 16, 0), 8, "no partition counts as one");
    assert_eq!(lanes(Partition, 8, 16, 1), 1);
}

#[test]
fn under_ordering_partition_keys_share_one_lane_and_one_batch_is_in_flight() {
    let keys = keys_by_lane(8);
    let mut p = Play::new(2, DlqPolicy::Dlq);
    p.state = PartitionState::new(
        p.state.limits,
        DlqPolicy::Dlq,
        Lanes {
            ordering: DeliveryOrder::Partition,
            count: 8,
        },
    );
    assert_eq!(p.state.lanes(), 1);
    p.keyed(&[(0, &keys[0]), (1, &keys[1]), (2, &keys[2]), (3, &keys[3])]);
    assert_eq!(p.step(), vec![Deliver(vec![0, 1])], "one batch at a time");
    assert_eq!(p.delivered(0), vec![Deliver(vec![2, 3]), Progress(2)]);
    assert!(!p.state.is_saturated());
}

#[test]
fn an_abandoned_delivery_stops_its_lane_so_later_events_of_its_keys_never_overtake_it() {
    let keys = keys_by_lane(2);
    let mut p = Play::with_lanes(1, 2);
    p.keyed(&[(0, &keys[0]), (1, &keys[0]), (2, &keys[1])]);
    assert_eq!(p.step(), vec![Deliver(vec![0]), Deliver(vec![2])]);
    p.state.delivery_abandoned(p.unit(0));
    assert_eq!(p.step(), vec![], "1 has 0's key and 0 was never delivered");
    assert_eq!(p.delivered(2), vec![]);
    assert_eq!(p.state.safe_offset(), None, "0 holds the frontier");
}

#[test]
fn a_saturated_partition_sends_the_open_batch_that_holds_its_frontier_at_once() {
    // A rarely seen key opens a batch at offset 0; a hot key fills batch
    // after batch behind it. Once saturated the worker reads no more, so
    // the rare key's batch would only fill by waiting out its linger time.
    let keys = keys_by_lane(2);
    let (rare, hot) = (keys[0].as_str(), keys[1].as_str());
    let mut p = Play::with_lanes(2, 2);
    p.keyed(&[(0, rare)]);
    let cap = MAX_PENDING_PER_LANE as i64;
    for first in (1..2 * cap - 2).step_by(2) {
        p.keyed(&[(first, hot), (first + 1, hot)]);
        assert_eq!(p.step(), vec![Deliver(vec![first, first + 1])]);
        assert_eq!(p.delivered(first), vec![], "held behind offset 0");
    }
    let last = 2 * cap - 1;
    p.keyed(&[(last, hot), (last + 1, hot)]);
    assert!(p.state.is_saturated(), "{cap} hot units unreleased");
    assert_eq!(
        p.step(),
        vec![Deliver(vec![0]), Deliver(vec![last, last + 1])],
        "0's batch sealed before its linger time: nothing more can join it"
    );
    assert_eq!(p.delivered(last), vec![]);
    assert_eq!(p.delivered(0), vec![Progress(last + 2)]);
    assert!(!p.state.is_saturated());
}

#[test]
fn dead_letters_acknowledged_behind_a_stuck_batch_saturate_the_partition_instead_of_piling_up() {
    // Each acknowledged dead letter stays in the frontier until the batch
    // before it is delivered; a stream of bad messages during a long outage
    // would otherwise grow it without end, in either ordering.
    for mut p in [Play::new(2, DlqPolicy::Dlq), Play::with_lanes(2, 2)] {
        p.events(0..2);
        assert_eq!(p.step(), vec![Deliver(vec![0, 1])], "never answered");
        let cap = MAX_HELD_UNITS as i64;
        for offset in 2..cap + 1 {
            assert!(!p.state.is_saturated(), "below the cap at offset {offset}");
            p.undecodable(offset);
            p.step();
            assert_eq!(p.dead_lettered(offset), vec![]);
        }
        assert!(p.state.is_saturated(), "{cap} units held behind offset 0");
        assert_eq!(p.delivered(0), vec![Progress(cap + 1)]);
        assert!(!p.state.is_saturated());
    }
}
