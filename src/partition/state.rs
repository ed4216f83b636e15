//! The partition worker's state machine. Pure: no tasks, no channels, no
//! metrics, no clock (`now` is an argument). The worker (`worker.rs`) feeds
//! it what happened (a message taken, a delivery or dead letter finished, the
//! linger time up, a drain) and carries out the [`Action`]s it returns.
//!
//! It owns the open batch, the sealed batches waiting for a delivery slot,
//! the units in flight (batches being delivered, dead letters being written)
//! and the frontier over all of them. Units complete in any order; the
//! frontier releases only the contiguous done prefix, so the number of
//! deliveries in flight is a limit here ([`MAX_DELIVERIES`]), not an
//! assumption of the frontier.

use std::collections::VecDeque;
use std::time::Instant;

use crate::config::{BatchLimits, DlqPolicy};
use crate::partition::batch::{Batch, Batcher};
use crate::partition::decide::Disposition;
use crate::partition::frontier::{Frontier, UnitId};
use crate::partition::Message;

/// Batches delivered at once per partition. One keeps the partition's order
/// at the webhook; key-hashed lanes (each with its own order) may raise it.
pub const MAX_DELIVERIES: usize = 1;

/// What the I/O side must do, in the order given.
#[derive(Debug)]
pub enum Action {
    /// Deliver this batch, then call [`PartitionState::delivered`] or
    /// [`PartitionState::delivery_abandoned`] with its unit.
    Deliver(Batch),
    /// Write this message to the dead-letter topic, then call
    /// [`PartitionState::dead_lettered`] or
    /// [`PartitionState::dead_letter_abandoned`] with `unit`.
    WriteDeadLetter {
        unit: UnitId,
        message: Message,
        reason: &'static str,
        error: Option<String>,
    },
    /// The frontier moved: `next_offset` is safe to commit.
    Progress(i64),
    /// Offsets went backwards (the topic was recreated or truncated): the
    /// frontier starts again from `offset`.
    Rewound { offset: i64, expected: i64 },
    /// `DLQ_POLICY=block` stopped the partition at `offset` (once).
    Blocked { offset: i64, reason: &'static str },
    /// A sealed batch holds a single event larger than `BATCH_MAX_BYTES`
    /// (only under `DLQ_POLICY=block`); it is sent alone.
    Oversized { bytes: usize },
}

/// A batch being delivered.
#[derive(Debug)]
struct Delivering {
    unit: UnitId,
    held_bytes: usize,
}

/// A dead letter being written.
#[derive(Debug)]
struct DeadLettering {
    unit: UnitId,
    bytes: usize,
}

#[derive(Debug)]
pub struct PartitionState {
    limits: BatchLimits,
    policy: DlqPolicy,
    batcher: Batcher,
    frontier: Frontier,
    /// Sealed batches waiting for a delivery slot, in offset order.
    sealed: VecDeque<Batch>,
    delivering: Vec<Delivering>,
    dead_letters: Vec<DeadLettering>,
    /// Set under `DLQ_POLICY=block` once a message could not be delivered:
    /// the frontier stays behind it from then on.
    blocked: bool,
    /// Set by [`PartitionState::drain`]: no more messages are taken.
    draining: bool,
    /// One past the offset of the last message taken.
    consumed_next: Option<i64>,
    /// Actions decided but not yet handed out.
    outbox: Vec<Action>,
}

impl PartitionState {
    pub fn new(limits: BatchLimits, policy: DlqPolicy) -> Self {
        PartitionState {
            limits,
            policy,
            batcher: Batcher::new(limits),
            frontier: Frontier::default(),
            sealed: VecDeque::new(),
            delivering: Vec::new(),
            dead_letters: Vec::new(),
            blocked: false,
            draining: false,
            consumed_next: None,
            outbox: Vec::new(),
        }
    }

    /// Takes one message, in offset order, decided by `decide::dispose`.
    /// `json` is its encoded event (used for [`Disposition::Batch`]);
    /// `decode_error` says why an undecodable one failed. The caller takes no
    /// more messages while [`PartitionState::is_blocked`] or after a drain.
    pub fn take(
        &mut self,
        message: Message,
        disposition: Disposition,
        json: &[u8],
        decode_error: Option<String>,
        now: Instant,
    ) {
        if let Some(expected) = self.consumed_next.filter(|&next| message.offset < next) {
            // librdkafka reset the position below what was read: the log
            // started again (topic deleted and created anew, or truncated).
            // The frontier starts again too, or it would hold every new
            // offset back behind the old ones and nothing would be committed.
            // The open batch is sealed first: its unit is forgotten with the
            // old offsets, so new offsets joining it would be pending nowhere
            // and a later filtered message or dead letter would release them
            // before their delivery.
            self.seal();
            self.outbox.push(Action::Rewound {
                offset: message.offset,
                expected,
            });
            self.frontier.rewind();
        }
        self.consumed_next = Some(message.offset + 1);
        match disposition {
            Disposition::Undecodable(reason) => self.dead_letter(message, reason, decode_error),
            Disposition::Filtered(_) => self.frontier.skip(message.offset),
            Disposition::TooLarge => {
                let error = format!(
                    "{} bytes encoded; BATCH_MAX_BYTES is {}",
                    json.len(),
                    self.limits.max_bytes
                );
                self.dead_letter(message, "too_large", Some(error));
            }
            Disposition::Batch => self.batch(&message, json, now),
        }
    }

    fn batch(&mut self, message: &Message, json: &[u8], now: Instant) {
        if !self.batcher.fits(json.len()) {
            self.seal();
        }
        let unit = match self.batcher.open_unit() {
            Some(unit) => {
                self.frontier.extend(unit, message.offset);
                unit
            }
            None => self.frontier.open(message.offset, message.timestamp_ms),
        };
        self.batcher
            .push(json, message.offset, message.timestamp_ms, now, || unit);
        if self.batcher.is_full() {
            self.seal();
        }
    }

    /// A message that cannot be delivered: its offset is done once the
    /// dead-letter topic acknowledges it. Under `DLQ_POLICY=block` the
    /// partition stops at it instead.
    fn dead_letter(&mut self, message: Message, reason: &'static str, error: Option<String>) {
        // A pending unit must not sit inside the open batch's offset range:
        // the batch's delivery would release it.
        self.seal();
        let unit = self.frontier.open(message.offset, message.timestamp_ms);
        if self.policy == DlqPolicy::Block {
            if !self.blocked {
                self.outbox.push(Action::Blocked {
                    offset: message.offset,
                    reason,
                });
            }
            self.blocked = true;
            return;
        }
        self.dead_letters.push(DeadLettering {
            unit,
            bytes: message.size(),
        });
        self.outbox.push(Action::WriteDeadLetter {
            unit,
            message,
            reason,
            error,
        });
    }

    /// Seals the open batch if its linger time is up at `now`.
    pub fn linger(&mut self, now: Instant) {
        if self.batcher.is_due(now) {
            self.seal();
        }
    }

    /// Stop taking messages; the open batch is sealed and sent.
    pub fn drain(&mut self) {
        self.draining = true;
        self.seal();
    }

    fn seal(&mut self) {
        if let Some(batch) = self.batcher.seal() {
            if batch.oversized {
                self.outbox.push(Action::Oversized {
                    bytes: batch.body.len(),
                });
            }
            self.sealed.push_back(batch);
        }
    }

    /// The batch of `unit` was delivered (every event accepted or dead-lettered).
    pub fn delivered(&mut self, unit: UnitId) {
        self.delivering.retain(|d| d.unit != unit);
        self.frontier.complete(unit);
    }

    /// The delivery of `unit` stopped before it finished (cancelled): the
    /// unit stays pending, so the frontier stays behind it.
    pub fn delivery_abandoned(&mut self, unit: UnitId) {
        self.delivering.retain(|d| d.unit != unit);
    }

    /// Kafka acknowledged the dead letter of `unit`.
    pub fn dead_lettered(&mut self, unit: UnitId) {
        self.dead_letters.retain(|d| d.unit != unit);
        self.frontier.complete(unit);
    }

    /// The dead-letter write of `unit` stopped unacknowledged: it stays pending.
    pub fn dead_letter_abandoned(&mut self, unit: UnitId) {
        self.dead_letters.retain(|d| d.unit != unit);
    }

    /// What to do now: the actions decided since the last call, then
    /// deliveries for free slots, then at most one progress report. Called
    /// once per turn of the worker (after a whole chunk of messages, after
    /// each completion), so a chunk makes one report, not one per message.
    pub fn actions(&mut self) -> Vec<Action> {
        let mut actions = std::mem::take(&mut self.outbox);
        while self.delivering.len() < MAX_DELIVERIES {
            let Some(batch) = self.sealed.pop_front() else {
                break;
            };
            self.delivering.push(Delivering {
                unit: batch.unit,
                held_bytes: batch.held_bytes(),
            });
            actions.push(Action::Deliver(batch));
        }
        if let Some(next_offset) = self.frontier.advance() {
            actions.push(Action::Progress(next_offset));
        }
        actions
    }

    /// True once a drain was asked for and nothing is left to send or wait for.
    pub fn is_drained(&self) -> bool {
        self.draining
            && self.delivering.is_empty()
            && self.dead_letters.is_empty()
            && self.sealed.is_empty()
            && self.batcher.open_unit().is_none()
    }

    pub fn is_draining(&self) -> bool {
        self.draining
    }

    pub fn is_blocked(&self) -> bool {
        self.blocked
    }

    /// True while the partition waits on the webhook or Kafka: a delivery or
    /// a dead letter in flight, or an open batch waiting for its linger
    /// (which may be longer than the stall limit).
    pub fn is_waiting(&self) -> bool {
        !self.delivering.is_empty()
            || !self.dead_letters.is_empty()
            || self.batcher.open_unit().is_some()
    }

    /// When the open batch must be sealed, if one is open.
    pub fn linger_deadline(&self) -> Option<Instant> {
        self.batcher.deadline()
    }

    /// Bytes held: the open batch, sealed batches, batches in flight and
    /// dead letters being written.
    pub fn held_bytes(&self) -> usize {
        self.batcher.open_bytes()
            + self.sealed.iter().map(Batch::held_bytes).sum::<usize>()
            + self.delivering.iter().map(|d| d.held_bytes).sum::<usize>()
            + self.dead_letters.iter().map(|d| d.bytes).sum::<usize>()
    }

    /// One past the offset of the last message taken.
    pub fn consumed_next(&self) -> Option<i64> {
        self.consumed_next
    }

    /// Kafka timestamp of the oldest message not yet done.
    pub fn oldest_pending_ts_ms(&self) -> Option<i64> {
        self.frontier.oldest_pending_ts_ms()
    }

    /// The last offset reported as safe to commit.
    pub fn safe_offset(&self) -> Option<i64> {
        self.frontier.safe_offset()
    }
}

#[cfg(test)]
mod tests;
