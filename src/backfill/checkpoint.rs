//! A backfill's durable progress, kept in `STATE_TOPIC` under
//! `backfill/<group>/<team>`, and the bookkeeping that decides what may be
//! checkpointed: only rows whose events were all delivered, filtered out or
//! dead-lettered (the worker's frontier), never rows merely read.

use std::collections::VecDeque;

use serde::{Deserialize, Serialize};

use super::source::Cursor;

/// What a restarted backfill resumes from.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Checkpoint {
    pub team_id: i64,
    /// The bound chosen at the first start, kept: it must not move between
    /// restarts (the stream's start does not).
    pub until_ms: i64,
    pub overlap_from_ms: i64,
    /// `BACKFILL_FROM` of the first start, in µs (None: everything).
    pub from_us: Option<i64>,
    /// Every row up to and including this one is done.
    pub cursor: Option<Cursor>,
    pub complete: bool,
    /// Totals so far, over every run (a row redelivered after a restart
    /// counts again).
    pub totals: Totals,
    /// The source the cursor is a position in (`clickhouse` or `api`): a
    /// cursor means nothing to the other one.
    #[serde(default = "clickhouse")]
    pub source: String,
    /// `--follow`: no end; `until_ms` is not used.
    #[serde(default)]
    pub follow: bool,
}

fn clickhouse() -> String {
    "clickhouse".into()
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Totals {
    pub read: u64,
    pub delivered: u64,
    pub filtered: u64,
    pub dead_lettered: u64,
    pub overlap: u64,
}

impl Totals {
    pub fn plus(self, other: Totals) -> Totals {
        Totals {
            read: self.read + other.read,
            delivered: self.delivered + other.delivered,
            filtered: self.filtered + other.filtered,
            dead_lettered: self.dead_lettered + other.dead_lettered,
            overlap: self.overlap + other.overlap,
        }
    }
}

pub fn key(group: &str, team_id: i64) -> String {
    format!("backfill/{group}/{team_id}")
}

/// The rows handed to the worker, by the sequence number (offset) the
/// worker knows them by: which cursor a frontier report stands for.
#[derive(Debug, Default)]
pub struct Positions {
    /// (offset of a row, its cursor), in offset order; one entry per
    /// hand-over chunk (its last row) is enough.
    marks: VecDeque<(i64, Cursor)>,
}

impl Positions {
    /// The row at `offset` (the last of a chunk) is at `cursor`.
    pub fn handed(&mut self, offset: i64, cursor: Cursor) {
        debug_assert!(self.marks.back().map_or(true, |(o, _)| *o < offset));
        self.marks.push_back((offset, cursor));
    }

    /// The worker's frontier moved: every row before `next_offset` is done.
    /// Returns the cursor that may now be checkpointed, if it moved.
    pub fn done_before(&mut self, next_offset: i64) -> Option<Cursor> {
        let mut done = None;
        while self
            .marks
            .front()
            .is_some_and(|(offset, _)| *offset < next_offset)
        {
            done = self.marks.pop_front().map(|(_, cursor)| cursor);
        }
        done
    }

    pub fn is_empty(&self) -> bool {
        self.marks.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(us: i64) -> Cursor {
        Cursor {
            ingested_at_us: us,
            uuid: format!("u{us}"),
        }
    }

    #[test]
    fn only_a_chunk_done_to_its_last_row_is_checkpointed() {
        let mut p = Positions::default();
        p.handed(9, at(100)); // rows 0..=9
        p.handed(19, at(200)); // rows 10..=19
        assert_eq!(p.done_before(5), None, "half of the first chunk");
        assert_eq!(p.done_before(10), Some(at(100)));
        assert_eq!(p.done_before(10), None, "no move, nothing new");
        assert_eq!(
            p.done_before(19),
            None,
            "the second chunk's last row is not done"
        );
        assert_eq!(p.done_before(20), Some(at(200)));
        assert!(p.is_empty());
    }

    #[test]
    fn a_frontier_past_several_chunks_takes_the_last() {
        let mut p = Positions::default();
        for i in 0..5 {
            p.handed(i * 10 + 9, at(i));
        }
        assert_eq!(p.done_before(1_000), Some(at(4)));
    }

    #[test]
    fn a_checkpoint_reads_back_as_written() {
        let c = Checkpoint {
            team_id: 2,
            until_ms: 1_700_000_000_000,
            overlap_from_ms: 1_699_999_000_000,
            from_us: None,
            cursor: Some(at(5)),
            complete: false,
            totals: Totals {
                read: 10,
                delivered: 9,
                filtered: 1,
                dead_lettered: 0,
                overlap: 3,
            },
            source: "api".into(),
            follow: false,
        };
        let json = serde_json::to_vec(&c).unwrap();
        assert_eq!(serde_json::from_slice::<Checkpoint>(&json).unwrap(), c);
        assert_eq!(key("g", 2), "backfill/g/2");
    }

    #[test]
    fn a_checkpoint_written_before_the_api_source_reads_as_clickhouse() {
        let old = br#"{"team_id":2,"until_ms":5,"overlap_from_ms":4,"from_us":null,"cursor":null,"complete":false,
            "totals":{"read":0,"delivered":0,"filtered":0,"dead_lettered":0,"overlap":0}}"#;
        let c: Checkpoint = serde_json::from_slice(old).unwrap();
        assert_eq!(c.source, "clickhouse");
        assert!(!c.follow);
    }
}
