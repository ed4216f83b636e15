//! The delivered frontier of one partition: which offset is safe to commit.
//!
//! Messages are grouped into *units* in offset order: a batch (pending until
//! the webhook accepts it) or a run of messages that needed no delivery
//! (filtered out). The safe offset is one past the highest offset of the
//! longest prefix of done units, so an offset is committed only when every
//! message before it was delivered or filtered: at-least-once, never a skip.
//! Pure and synchronous; the partition worker owns one per partition.

use std::collections::VecDeque;

/// Identifies a pending unit (a batch) in its partition's frontier.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct UnitId(u64);

#[derive(Debug)]
struct Unit {
    id: u64,
    max_offset: i64,
    done: bool,
    /// Kafka timestamp (ms) of the unit's first message.
    first_ts_ms: Option<i64>,
}

#[derive(Debug, Default)]
pub struct Frontier {
    units: VecDeque<Unit>,
    next_id: u64,
    /// The last safe offset handed out by `advance`.
    safe: Option<i64>,
}

impl Frontier {
    /// Starts a pending unit at `offset`.
    pub fn open(&mut self, offset: i64, kafka_ts_ms: Option<i64>) -> UnitId {
        let id = self.next_id;
        self.next_id += 1;
        self.units.push_back(Unit {
            id,
            max_offset: offset,
            done: false,
            first_ts_ms: kafka_ts_ms,
        });
        UnitId(id)
    }

    /// Adds a later offset to a pending unit.
    pub fn extend(&mut self, unit: UnitId, offset: i64) {
        if let Some(u) = self.units.iter_mut().rev().find(|u| u.id == unit.0) {
            u.max_offset = u.max_offset.max(offset);
        }
    }

    /// Records a message that needs no delivery (filtered out).
    pub fn skip(&mut self, offset: i64) {
        match self.units.back_mut() {
            Some(last) if last.done => last.max_offset = last.max_offset.max(offset),
            _ => self.units.push_back(Unit {
                id: u64::MAX,
                max_offset: offset,
                done: true,
                first_ts_ms: None,
            }),
        }
    }

    /// Marks a pending unit delivered.
    pub fn complete(&mut self, unit: UnitId) {
        if let Some(u) = self.units.iter_mut().find(|u| u.id == unit.0) {
            u.done = true;
        }
    }

    /// Pops the done prefix. Returns the new offset to store (the next offset
    /// to read: one past the highest done offset) if it moved.
    pub fn advance(&mut self) -> Option<i64> {
        let mut highest = None;
        while self.units.front().is_some_and(|u| u.done) {
            let unit = self.units.pop_front().expect("front exists");
            highest = Some(highest.map_or(unit.max_offset, |h: i64| h.max(unit.max_offset)));
        }
        let next = highest? + 1;
        if self.safe.is_some_and(|safe| safe >= next) {
            return None;
        }
        self.safe = Some(next);
        Some(next)
    }

    /// Forgets every unit and the safe offset: the partition's log started
    /// again below what was read (the topic was deleted and created again,
    /// or truncated), so the old offsets mean nothing for it any more. Unit
    /// ids keep counting, so a late completion of an old unit matches nothing.
    pub fn rewind(&mut self) {
        self.units.clear();
        self.safe = None;
    }

    /// The last offset `advance` returned.
    pub fn safe_offset(&self) -> Option<i64> {
        self.safe
    }

    /// Kafka timestamp of the oldest message not yet delivered, if any.
    pub fn oldest_pending_ts_ms(&self) -> Option<i64> {
        self.units
            .iter()
            .find(|u| !u.done)
            .and_then(|u| u.first_ts_ms)
    }

    /// True when nothing is waiting for delivery.
    pub fn is_idle(&self) -> bool {
        self.units.iter().all(|u| u.done)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn after_a_rewind_lower_offsets_are_reported_and_old_units_complete_nothing() {
        let mut f = Frontier::default();
        let old = f.open(40, None);
        f.skip(49);
        f.complete(old);
        assert_eq!(f.advance(), Some(50));
        let in_flight = f.open(50, None);
        f.rewind();
        let new = f.open(0, None);
        f.extend(new, 9);
        f.complete(in_flight);
        assert_eq!(f.advance(), None, "an old unit's completion moves nothing");
        f.complete(new);
        assert_eq!(f.advance(), Some(10), "lower than before the rewind");
    }

    #[test]
    fn nothing_is_safe_before_anything_is_done() {
        let mut f = Frontier::default();
        f.open(0, None);
        assert_eq!(f.advance(), None);
        assert_eq!(f.safe_offset(), None);
    }

    #[test]
    fn a_delivered_batch_makes_the_offset_after_it_safe() {
        let mut f = Frontier::default();
        let b = f.open(10, None);
        f.extend(b, 11);
        f.extend(b, 12);
        f.complete(b);
        assert_eq!(f.advance(), Some(13));
        assert_eq!(
            f.advance(),
            None,
            "an unchanged offset is not returned twice"
        );
    }

    #[test]
    fn a_later_batch_done_first_does_not_move_the_frontier_past_an_earlier_pending_one() {
        let mut f = Frontier::default();
        let first = f.open(0, Some(100));
        let second = f.open(5, Some(200));
        f.complete(second);
        assert_eq!(f.advance(), None);
        assert_eq!(f.oldest_pending_ts_ms(), Some(100));
        f.complete(first);
        assert_eq!(f.advance(), Some(6));
        assert!(f.is_idle());
    }

    #[test]
    fn filtered_messages_alone_advance_the_frontier() {
        let mut f = Frontier::default();
        f.skip(0);
        f.skip(1);
        f.skip(2);
        assert_eq!(f.advance(), Some(3));
    }

    #[test]
    fn filtered_messages_behind_a_pending_batch_wait_for_it() {
        let mut f = Frontier::default();
        let b = f.open(10, None);
        f.skip(11);
        f.extend(b, 12);
        f.skip(13);
        assert_eq!(f.advance(), None);
        f.complete(b);
        assert_eq!(f.advance(), Some(14));
    }

    #[test]
    fn oldest_pending_timestamp_is_none_when_idle() {
        let mut f = Frontier::default();
        assert_eq!(f.oldest_pending_ts_ms(), None);
        let b = f.open(0, Some(42));
        assert_eq!(f.oldest_pending_ts_ms(), Some(42));
        f.complete(b);
        assert_eq!(f.oldest_pending_ts_ms(), None);
    }
}
