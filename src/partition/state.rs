//! The partition worker's state machine. Pure: no tasks, no channels, no
//! metrics, no clock (`now` is an argument). The worker (`worker.rs`) feeds
//! it what happened (a message taken, a delivery or dead letter finished, the
//! linger time up, a drain) and carries out the [`Action`]s it returns.
//!
//! It owns the partition's *lanes*, each with its open batch, its sealed
//! batches waiting and at most one batch in flight, the dead letters being
//! written and the frontier over all of them. Under `ORDERING=partition`
//! there is one lane: one batch in flight, the partition's order. Under
//! `ORDERING=key` a message goes to the lane of its key's hash, so each key's
//! events reach the webhook in Kafka order while the lanes deliver together;
//! keyless messages fill one lane until its batch is sealed, then the next.
//! Units complete in any order and interleave in offset order; the frontier
//! releases only the contiguous done prefix of the partition.
//!
//! Memory stays the partition's: [`PartitionState::held_bytes`] sums every
//! lane, and the consumer loop pauses the partition past its share. A stuck
//! lane cannot let the others run ahead without end: once a lane has
//! [`MAX_PENDING_PER_LANE`] units the frontier has not released, the
//! partition takes no more messages ([`PartitionState::is_saturated`]).

use std::collections::VecDeque;
use std::time::Instant;

use crate::config::{BatchLimits, DeliveryOrder, DlqPolicy};
use crate::partition::batch::{Batch, Batcher};
use crate::partition::decide::Disposition;
use crate::partition::frontier::{Frontier, UnitId};
use crate::partition::Message;

/// Under `ORDERING=key`, units per lane not yet released by the frontier
/// after which the partition takes no more messages.
pub const MAX_PENDING_PER_LANE: usize = 32;

/// Units (batches and dead letters) the frontier may hold unreleased, in
/// either ordering, before the partition takes no more messages: dead
/// letters belong to no lane and hold no bytes once acknowledged, so without
/// this a stream of bad messages behind a stuck batch would pile up.
pub const MAX_HELD_UNITS: usize = 1024;

/// How a partition's deliveries are laid out: the order kept and the lanes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Lanes {
    pub ordering: DeliveryOrder,
    /// Lanes of the partition; always 1 under `ORDERING=partition`.
    pub count: usize,
}

impl Lanes {
    /// One lane, the partition's order.
    pub const PARTITION: Lanes = Lanes {
        ordering: DeliveryOrder::Partition,
        count: 1,
    };

    /// The lanes of each partition of a replica owning `assigned`
    /// partitions: `max(1, MAX_CONCURRENT_REQUESTS / assigned)`, at most
    /// `KEY_LANES`, so the requests in flight are shared, not oversubscribed.
    pub fn per_partition(
        ordering: DeliveryOrder,
        key_lanes: usize,
        max_concurrent_requests: usize,
        assigned: usize,
    ) -> Lanes {
        let count = match ordering {
            DeliveryOrder::Partition => 1,
            DeliveryOrder::Key => (max_concurrent_requests / assigned.max(1))
                .max(1)
                .min(key_lanes.max(1)),
        };
        Lanes { ordering, count }
    }
}

/// The lane of a message key: FNV-1a, stable across runs and builds.
pub fn lane_of(key: &[u8], lanes: usize) -> usize {
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for &byte in key {
        hash ^= u64::from(byte);
        hash = hash.wrapping_mul(0x0100_0000_01b3);
    }
    (hash % lanes.max(1) as u64) as usize
}

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

/// One lane: batches in offset order, one in flight at a time.
#[derive(Debug)]
struct Lane {
    batcher: Batcher,
    /// Sealed batches waiting for the lane's delivery slot, in offset order.
    sealed: VecDeque<Batch>,
    delivering: Option<Delivering>,
    /// The lane's units the frontier has not released yet (open, sealed, in
    /// flight, or delivered behind an earlier pending offset), in order.
    unreleased: VecDeque<UnitId>,
    /// Set when a delivery of the lane was abandoned (the worker stops): its
    /// later batches hold the same keys, so they must not go before it.
    stopped: bool,
}

impl Lane {
    fn forget_released(&mut self, frontier: &Frontier) {
        while self.unreleased.front().is_some_and(|&u| !frontier.holds(u)) {
            self.unreleased.pop_front();
        }
    }

    /// Nothing left to send or wait for (a stopped lane sends nothing more).
    fn is_empty(&self) -> bool {
        self.delivering.is_none()
            && (self.stopped || (self.sealed.is_empty() && self.batcher.open_unit().is_none()))
    }
}

#[derive(Debug)]
pub struct PartitionState {
    limits: BatchLimits,
    policy: DlqPolicy,
    ordering: DeliveryOrder,
    lanes: Vec<Lane>,
    /// The lane keyless messages fill under `ORDERING=key`.
    keyless_lane: usize,
    frontier: Frontier,
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
    pub fn new(limits: BatchLimits, policy: DlqPolicy, lanes: Lanes) -> Self {
        let count = match lanes.ordering {
            DeliveryOrder::Partition => 1,
            DeliveryOrder::Key => lanes.count.max(1),
        };
        PartitionState {
            limits,
            policy,
            ordering: lanes.ordering,
            lanes: (0..count)
                .map(|_| Lane {
                    batcher: Batcher::new(limits),
                    sealed: VecDeque::new(),
                    delivering: None,
                    unreleased: VecDeque::new(),
                    stopped: false,
                })
                .collect(),
            keyless_lane: 0,
            frontier: Frontier::default(),
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
            self.seal_all();
            self.outbox.push(Action::Rewound {
                offset: message.offset,
                expected,
            });
            self.frontier.rewind();
        }
        self.consumed_next = Some(message.offset + 1);
        match disposition {
            Disposition::Undecodable(reason) => self.dead_letter(message, reason, decode_error),
            Disposition::Filtered(_) | Disposition::Dropped(_) => {
                self.frontier.skip(message.offset)
            }
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
        let keyed = message.key.as_deref().filter(|_| self.lanes.len() > 1);
        let mut lane = match keyed {
            Some(key) => lane_of(key, self.lanes.len()),
            None => self.keyless_lane,
        };
        if !self.lanes[lane].batcher.fits(json.len()) {
            self.seal_lane(lane);
            if keyed.is_none() && lane != self.keyless_lane {
                // A keyless message moves on with the rotation rather than
                // opening a new batch in the lane just sealed.
                lane = self.keyless_lane;
                if !self.lanes[lane].batcher.fits(json.len()) {
                    self.seal_lane(lane);
                }
            }
        }
        let frontier = &mut self.frontier;
        let Lane {
            batcher,
            unreleased,
            ..
        } = &mut self.lanes[lane];
        let unit = match batcher.open_unit() {
            Some(unit) => {
                frontier.extend(unit, message.offset);
                unit
            }
            None => {
                let unit = frontier.open(message.offset, message.timestamp_ms);
                unreleased.push_back(unit);
                unit
            }
        };
        batcher.push(json, message.offset, message.timestamp_ms, now, || unit);
        if batcher.is_full() {
            self.seal_lane(lane);
        }
    }

    /// A message that cannot be delivered: its offset is done once the
    /// dead-letter topic acknowledges it. Under `DLQ_POLICY=block` the
    /// partition stops at it instead.
    fn dead_letter(&mut self, message: Message, reason: &'static str, error: Option<String>) {
        // Under ORDERING=partition the open batch is sealed first, so the
        // batches' boundaries stay those of one ordered stream (the frontier
        // would handle the interleaving either way).
        if self.ordering == DeliveryOrder::Partition {
            self.seal_all();
        }
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

    /// Seals every lane's open batch whose linger time is up at `now`.
    pub fn linger(&mut self, now: Instant) {
        for lane in 0..self.lanes.len() {
            if self.lanes[lane].batcher.is_due(now) {
                self.seal_lane(lane);
            }
        }
    }

    /// Seals every lane's open batch now, before its linger time: the
    /// partition is paused for memory, so they would only wait.
    pub fn seal_open(&mut self) {
        self.seal_all();
    }

    /// Stop taking messages; every lane's open batch is sealed and sent.
    pub fn drain(&mut self) {
        self.draining = true;
        self.seal_all();
    }

    fn seal_all(&mut self) {
        for lane in 0..self.lanes.len() {
            self.seal_lane(lane);
        }
    }

    fn seal_lane(&mut self, lane: usize) {
        if let Some(batch) = self.lanes[lane].batcher.seal() {
            if batch.oversized {
                self.outbox.push(Action::Oversized {
                    bytes: batch.body.len(),
                });
            }
            self.lanes[lane].sealed.push_back(batch);
            if lane == self.keyless_lane {
                self.keyless_lane = (lane + 1) % self.lanes.len();
            }
        }
    }

    fn finish_delivery(&mut self, unit: UnitId) -> Option<&mut Lane> {
        let lane = self
            .lanes
            .iter_mut()
            .find(|l| l.delivering.as_ref().is_some_and(|d| d.unit == unit))?;
        lane.delivering = None;
        Some(lane)
    }

    /// The batch of `unit` was delivered (every event accepted or dead-lettered).
    pub fn delivered(&mut self, unit: UnitId) {
        self.finish_delivery(unit);
        self.frontier.complete(unit);
    }

    /// The delivery of `unit` stopped before it finished (cancelled): the
    /// unit stays pending, so the frontier stays behind it, and its lane
    /// sends nothing more (its later batches would overtake the same keys).
    pub fn delivery_abandoned(&mut self, unit: UnitId) {
        if let Some(lane) = self.finish_delivery(unit) {
            lane.stopped = true;
        }
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
    /// deliveries for the lanes with none in flight, then at most one progress report. Called
    /// once per turn of the worker (after a whole chunk of messages, after
    /// each completion), so a chunk makes one report, not one per message.
    pub fn actions(&mut self) -> Vec<Action> {
        if self.is_saturated() {
            // The caller takes no more messages until the frontier moves, so
            // the open batches can only wait for their linger time; one of
            // them may be what holds the frontier.
            self.seal_all();
        }
        let mut actions = std::mem::take(&mut self.outbox);
        for lane in &mut self.lanes {
            if lane.delivering.is_some() || lane.stopped {
                continue;
            }
            let Some(batch) = lane.sealed.pop_front() else {
                continue;
            };
            lane.delivering = Some(Delivering {
                unit: batch.unit,
                held_bytes: batch.held_bytes(),
            });
            actions.push(Action::Deliver(batch));
        }
        if let Some(next_offset) = self.frontier.advance() {
            actions.push(Action::Progress(next_offset));
        }
        for lane in &mut self.lanes {
            lane.forget_released(&self.frontier);
        }
        actions
    }

    /// True once a drain was asked for and nothing is left to send or wait for.
    pub fn is_drained(&self) -> bool {
        self.draining && self.dead_letters.is_empty() && self.lanes.iter().all(Lane::is_empty)
    }

    /// True under `ORDERING=key` while a lane has [`MAX_PENDING_PER_LANE`]
    /// units the frontier has not released (open, sealed, in flight, or
    /// delivered behind a stuck lane), and in either ordering while the
    /// frontier holds [`MAX_HELD_UNITS`] units: the caller takes no more
    /// messages until the frontier moves. So a stuck lane stops the others
    /// after that many units each, rather than letting them run ahead
    /// without end. (Bytes are bounded by the buffer share as well.)
    pub fn is_saturated(&self) -> bool {
        if self.frontier.held_units() >= MAX_HELD_UNITS {
            return true;
        }
        self.ordering == DeliveryOrder::Key
            && self.lanes.iter().any(|l| {
                l.unreleased
                    .iter()
                    .filter(|&&u| self.frontier.holds(u))
                    .count()
                    >= MAX_PENDING_PER_LANE
            })
    }

    /// The partition's lanes (1 under `ORDERING=partition`).
    pub fn lanes(&self) -> usize {
        self.lanes.len()
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
        !self.dead_letters.is_empty()
            || self
                .lanes
                .iter()
                .any(|l| l.delivering.is_some() || l.batcher.open_unit().is_some())
    }

    /// When the first open batch must be sealed, if one is open.
    pub fn linger_deadline(&self) -> Option<Instant> {
        self.lanes.iter().filter_map(|l| l.batcher.deadline()).min()
    }

    /// Bytes held, over every lane: open batches, sealed batches, batches
    /// in flight, and the dead letters being written.
    pub fn held_bytes(&self) -> usize {
        self.lanes
            .iter()
            .map(|l| {
                l.batcher.open_bytes()
                    + l.sealed.iter().map(Batch::held_bytes).sum::<usize>()
                    + l.delivering.as_ref().map_or(0, |d| d.held_bytes)
            })
            .sum::<usize>()
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
