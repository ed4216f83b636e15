//! Per-partition batching: encoded events are appended straight into the
//! request body (`[e1,e2,...]`), sealed when the next event would pass
//! `BATCH_MAX_EVENTS` or `BATCH_MAX_BYTES`, or when the linger time is up.
//! Pure: time is passed in.

use std::ops::Range;
use std::time::Instant;

use bytes::Bytes;

use crate::config::BatchLimits;
use crate::partition::frontier::UnitId;

/// One event of a batch.
#[derive(Debug, Clone)]
pub struct BatchEvent {
    /// The Kafka offset of the message it was decoded from.
    pub offset: i64,
    /// Where the event's JSON lies in the batch body.
    pub json: Range<usize>,
}

/// A sealed batch: the request body and what it covers.
#[derive(Debug)]
pub struct Batch {
    /// The JSON array, exactly as it will be POSTed.
    pub body: Bytes,
    pub events: Vec<BatchEvent>,
    /// The offsets unit this batch completes when delivered.
    pub unit: UnitId,
    /// Kafka timestamp (ms) of the batch's oldest message, for latency metrics.
    pub oldest_kafka_ts_ms: Option<i64>,
    /// True when a single event alone exceeds `BATCH_MAX_BYTES`.
    pub oversized: bool,
    /// Random, drawn when sealed: names this batch in its requests'
    /// `Idempotency-Key` (offsets alone do not: a batch cut again after a
    /// rebalance, with other lanes, can start at the same offset with the
    /// same count and hold other events).
    pub id: u64,
    /// The body's allocation (a `Bytes` made from a `Vec` keeps all of it).
    reserved: usize,
}

impl Batch {
    /// The body for a sub-range of the events (the whole body for all of them).
    pub fn body_for(&self, range: Range<usize>) -> Bytes {
        if range == (0..self.events.len()) {
            return self.body.clone();
        }
        let events = &self.events[range];
        let len = events.iter().map(|e| e.json.len() + 1).sum::<usize>() + 1;
        let mut body = Vec::with_capacity(len);
        for (i, event) in events.iter().enumerate() {
            body.push(if i == 0 { b'[' } else { b',' });
            body.extend_from_slice(&self.body[event.json.clone()]);
        }
        if body.is_empty() {
            body.push(b'[');
        }
        body.push(b']');
        Bytes::from(body)
    }

    /// One event's JSON, as it is in the body.
    pub fn event_json(&self, index: usize) -> Bytes {
        self.body.slice(self.events[index].json.clone())
    }

    /// Bytes held by the batch. The original messages are not kept (see
    /// [`crate::kafka::originals`]), so this is its body's allocation.
    pub fn held_bytes(&self) -> usize {
        self.reserved
    }
}

/// A new batch body's first allocation. It grows by doubling, by at most
/// [`MAX_GROWTH`] at once, up to `BATCH_MAX_BYTES`: a few sizes only, so few
/// holes of odd sizes in the allocator, while a partition that holds a small
/// batch (many partitions, a slow topic, several lanes) reserves little.
const FIRST_RESERVED: usize = 128 << 10;

/// The most a batch body grows by at once.
const MAX_GROWTH: usize = 8 << 20;

#[derive(Debug)]
struct Open {
    body: Vec<u8>,
    events: Vec<BatchEvent>,
    unit: UnitId,
    oldest_kafka_ts_ms: Option<i64>,
    deadline: Instant,
}

impl crate::sink::delivery::Events for Batch {
    fn event_count(&self) -> usize {
        self.events.len()
    }
    fn offset(&self, index: usize) -> i64 {
        self.events[index].offset
    }
    fn id(&self) -> u64 {
        self.id
    }
    fn event_json(&self, index: usize) -> Bytes {
        Batch::event_json(self, index)
    }
    fn body_for(&self, range: Range<usize>) -> Bytes {
        Batch::body_for(self, range)
    }
}

#[derive(Debug)]
pub struct Batcher {
    limits: BatchLimits,
    open: Option<Open>,
}

impl Batcher {
    pub fn new(limits: BatchLimits) -> Self {
        Batcher { limits, open: None }
    }

    /// When the open batch must be sent, if one is open.
    pub fn deadline(&self) -> Option<Instant> {
        self.open.as_ref().map(|o| o.deadline)
    }

    /// Bytes held by the open batch (its body's allocation).
    pub fn open_bytes(&self) -> usize {
        self.open.as_ref().map_or(0, |o| o.body.capacity())
    }

    /// The offsets unit of the open batch, if any.
    pub fn open_unit(&self) -> Option<UnitId> {
        self.open.as_ref().map(|o| o.unit)
    }

    /// True if `event_len` more bytes fit into the open batch (or no batch is open).
    pub fn fits(&self, event_len: usize) -> bool {
        match &self.open {
            None => true,
            Some(open) => {
                open.events.len() < self.limits.max_events
                    // existing body + ',' + event + closing ']'
                    && open.body.len() + event_len + 2 <= self.limits.max_bytes
            }
        }
    }

    /// Appends an event. The caller seals first when `fits` says no, and
    /// supplies the unit for a new batch through `new_unit` (called only when a
    /// batch opens).
    pub fn push(
        &mut self,
        event: &[u8],
        offset: i64,
        kafka_ts_ms: Option<i64>,
        now: Instant,
        new_unit: impl FnOnce() -> UnitId,
    ) {
        let ceiling = self.limits.max_bytes;
        let open = self.open.get_or_insert_with(|| Open {
            body: Vec::with_capacity((event.len() + 2).max(FIRST_RESERVED.min(ceiling))),
            events: Vec::new(),
            unit: new_unit(),
            oldest_kafka_ts_ms: None,
            deadline: now + self.limits.linger,
        });
        let needed = open.body.len() + event.len() + 2;
        let capacity = open.body.capacity();
        if needed > capacity {
            let target = (capacity + capacity.min(MAX_GROWTH))
                .min(ceiling)
                .max(needed);
            open.body.reserve_exact(target - open.body.len());
        }
        open.body
            .push(if open.events.is_empty() { b'[' } else { b',' });
        let start = open.body.len();
        open.body.extend_from_slice(event);
        open.events.push(BatchEvent {
            offset,
            json: start..open.body.len(),
        });
        if open.oldest_kafka_ts_ms.is_none() {
            open.oldest_kafka_ts_ms = kafka_ts_ms;
        }
    }

    /// True when the open batch cannot take another event of any size.
    pub fn is_full(&self) -> bool {
        self.open.as_ref().is_some_and(|o| {
            o.events.len() >= self.limits.max_events || o.body.len() + 2 >= self.limits.max_bytes
        })
    }

    /// True when the open batch's linger time is up.
    pub fn is_due(&self, now: Instant) -> bool {
        self.open.as_ref().is_some_and(|o| now >= o.deadline)
    }

    /// Closes the open batch, if any.
    pub fn seal(&mut self) -> Option<Batch> {
        let mut open = self.open.take()?;
        open.body.push(b']');
        let oversized = open.body.len() > self.limits.max_bytes;
        // Sealed early (linger, pressure, a drain): give back what it will not use.
        if open.body.capacity() > 2 * open.body.len() {
            open.body.shrink_to_fit();
        }
        let reserved = open.body.capacity();
        Some(Batch {
            reserved,
            body: Bytes::from(open.body),
            events: open.events,
            unit: open.unit,
            oldest_kafka_ts_ms: open.oldest_kafka_ts_ms,
            oversized,
            id: rand::random(),
        })
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::partition::frontier::Frontier;

    fn limits(max_events: usize, max_bytes: usize) -> BatchLimits {
        BatchLimits {
            max_events,
            max_bytes,
            linger: Duration::from_millis(100),
        }
    }

    /// Feeds events the way a partition worker does; returns the sealed bodies.
    fn run(limits: BatchLimits, events: &[&str]) -> Vec<String> {
        let mut frontier = Frontier::default();
        let mut batcher = Batcher::new(limits);
        let now = Instant::now();
        let mut out = Vec::new();
        for (offset, event) in events.iter().enumerate() {
            if !batcher.fits(event.len()) {
                out.extend(batcher.seal());
            }
            batcher.push(event.as_bytes(), 0, None, now, || {
                frontier.open(offset as i64, None)
            });
            if batcher.is_full() {
                out.extend(batcher.seal());
            }
        }
        out.extend(batcher.seal());
        out.into_iter()
            .map(|b| String::from_utf8(b.body.to_vec()).expect("utf8"))
            .collect()
    }

    #[test]
    fn the_body_is_a_json_array_of_the_events_in_order() {
        let bodies = run(limits(10, 1000), &[r#"{"a":1}"#, r#"{"b":2}"#]);
        assert_eq!(bodies, vec![r#"[{"a":1},{"b":2}]"#]);
    }

    /// Fills one batch with 1,000-byte events until the next would not fit;
    /// returns each allocation size the open batch went through, in order.
    fn fill(limits: BatchLimits) -> (Vec<usize>, Batcher) {
        let mut frontier = Frontier::default();
        let mut batcher = Batcher::new(limits);
        let now = Instant::now();
        let event = vec![b'1'; 1000];
        batcher.push(&event, 0, None, now, || frontier.open(0, None));
        let mut sizes = vec![batcher.open_bytes()];
        let mut offset = 1;
        while batcher.fits(event.len()) {
            batcher.push(&event, offset, None, now, || unreachable!());
            offset += 1;
            if sizes.last() != Some(&batcher.open_bytes()) {
                sizes.push(batcher.open_bytes());
            }
        }
        (sizes, batcher)
    }

    #[test]
    fn an_open_batch_reserves_what_it_holds_not_batch_max_bytes() {
        const MIB: usize = 1 << 20;
        let (sizes, mut batcher) = fill(limits(10_000, MIB));
        // One small event: the first allocation, not the 1 MiB a full batch needs.
        assert_eq!(sizes[0], FIRST_RESERVED);
        // Doubling, never past BATCH_MAX_BYTES: four allocations in all.
        assert_eq!(sizes, vec![128 << 10, 256 << 10, 512 << 10, MIB]);
        let batch = batcher.seal().expect("open");
        assert!(batch.body.len() <= MIB, "{}", batch.body.len());
        assert_eq!(batch.held_bytes(), MIB, "a full batch holds its allocation");
    }

    #[test]
    fn a_large_batch_grows_by_at_most_eight_mib_at_once_not_by_each_event() {
        const MIB: usize = 1 << 20;
        let (sizes, _) = fill(limits(100_000, 20 * MIB));
        let steps: Vec<usize> = sizes.iter().map(|s| s >> 10).collect();
        assert_eq!(
            steps,
            vec![128, 256, 512, 1024, 2048, 4096, 8192, 16384, 20480],
            "KiB"
        );
    }

    #[test]
    fn a_batch_sealed_early_gives_back_what_it_reserved_and_counts_what_it_keeps() {
        let mut frontier = Frontier::default();
        let mut batcher = Batcher::new(limits(100, 1 << 20));
        batcher.push(b"{}", 0, None, Instant::now(), || frontier.open(0, None));
        assert_eq!(batcher.open_bytes(), FIRST_RESERVED);
        let batch = batcher.seal().expect("open");
        assert_eq!(&batch.body[..], b"[{}]");
        assert!(
            batch.held_bytes() >= batch.body.len() && batch.held_bytes() < 64,
            "holds {} bytes for a body of {}",
            batch.held_bytes(),
            batch.body.len()
        );
    }

    #[test]
    fn a_batch_is_sealed_at_max_events() {
        let bodies = run(limits(2, 1000), &["1", "2", "3", "4", "5"]);
        assert_eq!(bodies, vec!["[1,2]", "[3,4]", "[5]"]);
    }

    #[test]
    fn no_body_exceeds_max_bytes_and_every_byte_counts() {
        // "[11,22]" is 7 bytes: fits exactly in 7, not in 6.
        assert_eq!(
            run(limits(10, 7), &["11", "22", "33"]),
            vec!["[11,22]", "[33]"]
        );
        assert_eq!(
            run(limits(10, 6), &["11", "22", "33"]),
            vec!["[11]", "[22]", "[33]"]
        );
        let events: Vec<String> = (0..100).map(|i| format!("{{\"n\":{i}}}")).collect();
        let refs: Vec<&str> = events.iter().map(String::as_str).collect();
        for body in run(limits(1000, 64), &refs) {
            assert!(body.len() <= 64, "{body}");
            serde_json::from_str::<serde_json::Value>(&body).expect("valid JSON");
        }
    }

    #[test]
    fn an_event_larger_than_max_bytes_goes_alone_and_is_flagged() {
        let mut frontier = Frontier::default();
        let mut batcher = Batcher::new(limits(10, 8));
        let now = Instant::now();
        assert!(batcher.fits(20));
        batcher.push(&[b'7'; 20], 0, None, now, || frontier.open(0, None));
        assert!(batcher.is_full());
        let batch = batcher.seal().expect("open");
        assert!(batch.oversized);
        assert_eq!(batch.events.len(), 1);
    }

    #[test]
    fn sub_bodies_are_valid_arrays_of_the_chosen_events() {
        let mut frontier = Frontier::default();
        let mut batcher = Batcher::new(limits(10, 1000));
        let now = Instant::now();
        for (i, e) in [r#"{"a":1}"#, r#"{"b":[2,3]}"#, r#""c""#, "4"]
            .iter()
            .enumerate()
        {
            batcher.push(e.as_bytes(), i as i64, None, now, || frontier.open(0, None));
        }
        let batch = batcher.seal().expect("open");
        assert_eq!(batch.body_for(0..4), batch.body);
        assert_eq!(&batch.body_for(1..3)[..], br#"[{"b":[2,3]},"c"]"#);
        assert_eq!(&batch.body_for(3..4)[..], b"[4]");
        assert_eq!(batch.events[2].offset, 2);
        assert_eq!(&batch.event_json(1)[..], br#"{"b":[2,3]}"#);
    }

    #[test]
    fn the_linger_deadline_starts_with_the_first_event() {
        let mut frontier = Frontier::default();
        let mut batcher = Batcher::new(limits(10, 1000));
        let t0 = Instant::now();
        assert_eq!(batcher.deadline(), None);
        batcher.push(b"1", 0, Some(5), t0, || frontier.open(0, Some(5)));
        batcher.push(b"2", 0, Some(9), t0 + Duration::from_millis(50), || {
            unreachable!("batch is open")
        });
        assert_eq!(batcher.deadline(), Some(t0 + Duration::from_millis(100)));
        assert!(!batcher.is_due(t0 + Duration::from_millis(99)));
        assert!(batcher.is_due(t0 + Duration::from_millis(100)));
        let batch = batcher.seal().expect("open");
        assert_eq!(batch.oldest_kafka_ts_ms, Some(5));
        assert!(batcher.seal().is_none());
    }
}
