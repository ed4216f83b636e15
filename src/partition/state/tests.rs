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
            state: PartitionState::new(limits, policy),
            t0: Instant::now(),
            units: HashMap::new(),
            errors: HashMap::new(),
        }
    }

    fn take(&mut self, offset: i64, disposition: Disposition, json: &[u8]) {
        let message = Message {
            offset,
            timestamp_ms: Some(1_000 + offset),
            key: None,
            payload: Some(Bytes::from_static(b"payload")),
        };
        let error = matches!(disposition, Disposition::Undecodable(_)).then(|| "bad".to_owned());
        self.state.take(message, disposition, json, error, self.t0);
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
    assert_eq!(p.step(), vec![Deliver(vec![3, 4])]);
    assert_eq!(
        p.delivered(3),
        vec![],
        "the abandoned batch is still pending"
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
