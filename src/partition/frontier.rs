//! The delivered frontier of one partition: which offset is safe to commit.
//!
//! Every message taken belongs to a *unit*: a batch (pending until the
//! webhook accepts it), a dead letter (pending until Kafka acknowledges it)
//! or a run of messages that needed no delivery (filtered out). Units may
//! interleave: with key lanes, lane A's batch can hold offsets 0, 2, 4 and
//! lane B's 1, 3, 5. So the frontier keeps the partition's offsets in order
//! as *segments* (runs of consecutive messages of one unit) and releases
//! only the longest prefix of segments whose units are done: one past its
//! highest offset is the safe offset. An offset is committed only when every
//! message before it was delivered, dead-lettered or filtered:
//! at-least-once, never a skip. Pure and synchronous; the partition's state
//! machine owns one.

use std::collections::{HashMap, VecDeque};

/// Identifies a pending unit (a batch or a dead letter) in its partition's frontier.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct UnitId(u64);

/// Consecutive messages of one unit, in offset order.
#[derive(Debug)]
struct Segment {
    /// `None`: filtered messages, done from the start.
    unit: Option<u64>,
    max_offset: i64,
}

#[derive(Debug)]
struct Unit {
    done: bool,
    /// Segments of the unit not yet released.
    segments: usize,
    /// Kafka timestamp (ms) of the unit's first message.
    first_ts_ms: Option<i64>,
}

#[derive(Debug, Default)]
pub struct Frontier {
    segments: VecDeque<Segment>,
    units: HashMap<u64, Unit>,
    next_id: u64,
    /// The last safe offset handed out by `advance`.
    safe: Option<i64>,
}

impl Frontier {
    /// Starts a pending unit at `offset`.
    pub fn open(&mut self, offset: i64, kafka_ts_ms: Option<i64>) -> UnitId {
        let id = self.next_id;
        self.next_id += 1;
        self.units.insert(
            id,
            Unit {
                done: false,
                segments: 1,
                first_ts_ms: kafka_ts_ms,
            },
        );
        self.segments.push_back(Segment {
            unit: Some(id),
            max_offset: offset,
        });
        UnitId(id)
    }

    /// Adds a later offset (later than every offset recorded so far) to a
    /// pending unit. A unit forgotten by a rewind gains nothing.
    pub fn extend(&mut self, unit: UnitId, offset: i64) {
        if let Some(last) = self.segments.back_mut() {
            if last.unit == Some(unit.0) {
                last.max_offset = last.max_offset.max(offset);
                return;
            }
        }
        let Some(u) = self.units.get_mut(&unit.0) else {
            return;
        };
        u.segments += 1;
        self.segments.push_back(Segment {
            unit: Some(unit.0),
            max_offset: offset,
        });
    }

    /// Records a message that needs no delivery (filtered out).
    pub fn skip(&mut self, offset: i64) {
        match self.segments.back_mut() {
            Some(last) if last.unit.is_none() => last.max_offset = last.max_offset.max(offset),
            _ => self.segments.push_back(Segment {
                unit: None,
                max_offset: offset,
            }),
        }
    }

    /// Marks a pending unit delivered.
    pub fn complete(&mut self, unit: UnitId) {
        if let Some(u) = self.units.get_mut(&unit.0) {
            u.done = true;
        }
    }

    fn is_done(&self, segment: &Segment) -> bool {
        match segment.unit {
            None => true,
            Some(id) => self.units.get(&id).map_or(true, |u| u.done),
        }
    }

    /// Pops the done prefix. Returns the new offset to store (the next offset
    /// to read: one past the highest done offset) if it moved.
    pub fn advance(&mut self) -> Option<i64> {
        let mut highest = None;
        while let Some(segment) = self.segments.front() {
            if !self.is_done(segment) {
                break;
            }
            highest = Some(highest.map_or(segment.max_offset, |h: i64| h.max(segment.max_offset)));
            if let Some(id) = segment.unit {
                if let Some(u) = self.units.get_mut(&id) {
                    u.segments -= 1;
                    if u.segments == 0 {
                        self.units.remove(&id);
                    }
                }
            }
            self.segments.pop_front();
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
        self.segments.clear();
        self.units.clear();
        self.safe = None;
    }

    /// The last offset `advance` returned.
    pub fn safe_offset(&self) -> Option<i64> {
        self.safe
    }

    /// Kafka timestamp of the first message of the unit holding the oldest
    /// offset not yet done, if any.
    pub fn oldest_pending_ts_ms(&self) -> Option<i64> {
        self.segments
            .iter()
            .find(|s| !self.is_done(s))
            .and_then(|s| s.unit)
            .and_then(|id| self.units.get(&id))
            .and_then(|u| u.first_ts_ms)
    }

    /// True while `unit` still holds the frontier back: it is not done, or
    /// an earlier offset is not.
    pub fn holds(&self, unit: UnitId) -> bool {
        self.units.contains_key(&unit.0)
    }

    /// Units (done or not) not yet released.
    pub fn held_units(&self) -> usize {
        self.units.len()
    }

    /// True when nothing is waiting for delivery.
    pub fn is_idle(&self) -> bool {
        self.units.values().all(|u| u.done)
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
    fn interleaved_units_release_only_the_contiguous_done_prefix() {
        // Two lanes: A holds offsets 0, 2, 4 and B holds 1, 3, 5.
        let mut f = Frontier::default();
        let a = f.open(0, Some(100));
        let b = f.open(1, Some(101));
        for offset in 2..6 {
            f.extend(if offset % 2 == 0 { a } else { b }, offset);
        }
        f.complete(a);
        assert_eq!(f.advance(), Some(1), "only offset 0 is done before B's 1");
        assert_eq!(f.oldest_pending_ts_ms(), Some(101));
        f.complete(b);
        assert_eq!(f.advance(), Some(6));
        assert!(f.is_idle());
    }

    #[test]
    fn a_later_interleaved_unit_done_first_releases_nothing_before_the_earlier_one() {
        let mut f = Frontier::default();
        let a = f.open(0, None);
        let b = f.open(1, None);
        f.extend(a, 2);
        f.skip(3);
        f.extend(b, 4);
        f.complete(b);
        assert_eq!(f.advance(), None, "offset 0 is still pending");
        f.complete(a);
        assert_eq!(f.advance(), Some(5));
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
