//! Finding the events a webhook rejects. A rejected batch is split in halves,
//! each half is sent again, and so on, until every rejected event stands alone;
//! the accepted parts are delivered in their original order. Pure: it says
//! which range of the batch to send next and learns from the answers.
//!
//! Cost: for `k` rejected events in a batch of `n`, about `2·k·log2(n)`
//! extra requests; a batch with no rejected event costs none.

use std::collections::VecDeque;
use std::ops::Range;

#[derive(Debug)]
pub struct Bisection {
    /// Ranges still to send, in order.
    pending: VecDeque<Range<usize>>,
    /// Indices of events rejected alone, in order.
    rejected: Vec<usize>,
    delivered: usize,
    requests: u32,
}

impl Bisection {
    pub fn new(events: usize) -> Self {
        let mut pending = VecDeque::new();
        if events > 0 {
            pending.push_back(0..events);
        }
        Bisection {
            pending,
            rejected: Vec::new(),
            delivered: 0,
            requests: 0,
        }
    }

    /// The next range of events to send, if any.
    pub fn next(&self) -> Option<Range<usize>> {
        self.pending.front().cloned()
    }

    /// The webhook accepted the range `next` returned.
    pub fn accepted(&mut self) {
        if let Some(range) = self.pending.pop_front() {
            self.requests += 1;
            self.delivered += range.len();
        }
    }

    /// The webhook rejected the range `next` returned: split it, or, if it is
    /// a single event, set that event aside.
    pub fn rejected(&mut self) {
        let Some(range) = self.pending.pop_front() else {
            return;
        };
        self.requests += 1;
        if range.len() == 1 {
            self.rejected.push(range.start);
        } else {
            let mid = range.start + range.len() / 2;
            self.pending.push_front(mid..range.end);
            self.pending.push_front(range.start..mid);
        }
    }

    pub fn is_done(&self) -> bool {
        self.pending.is_empty()
    }

    /// Events rejected on their own, by index in the batch.
    pub fn rejected_events(&self) -> &[usize] {
        &self.rejected
    }

    pub fn delivered_events(&self) -> usize {
        self.delivered
    }

    /// Requests beyond the first one.
    pub fn extra_requests(&self) -> u32 {
        self.requests.saturating_sub(1)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Runs a bisection against a webhook that rejects any range containing a bad index.
    fn run(n: usize, bad: &[usize]) -> (Vec<usize>, Vec<usize>, u32) {
        let mut b = Bisection::new(n);
        let mut delivered_order = Vec::new();
        while let Some(range) = b.next() {
            if range.clone().any(|i| bad.contains(&i)) {
                b.rejected();
            } else {
                delivered_order.extend(range);
                b.accepted();
            }
        }
        assert!(b.is_done());
        assert_eq!(b.delivered_events(), delivered_order.len());
        (
            delivered_order,
            b.rejected_events().to_vec(),
            b.extra_requests(),
        )
    }

    #[test]
    fn a_clean_batch_takes_one_request() {
        let (delivered, rejected, extra) = run(500, &[]);
        assert_eq!(delivered.len(), 500);
        assert!(rejected.is_empty());
        assert_eq!(extra, 0);
    }

    #[test]
    fn rejected_events_are_isolated_and_the_rest_delivered_in_order() {
        let (delivered, rejected, _) = run(100, &[3, 57, 58, 99]);
        assert_eq!(rejected, vec![3, 57, 58, 99]);
        let expected: Vec<usize> = (0..100).filter(|i| ![3, 57, 58, 99].contains(i)).collect();
        assert_eq!(delivered, expected, "accepted parts keep their order");
    }

    #[test]
    fn extra_requests_stay_within_two_log2_n_per_rejected_event() {
        for (n, bad) in [
            (512usize, vec![0usize]),
            (500, vec![250]),
            (500, vec![1, 400]),
            (1000, vec![7, 8, 9]),
        ] {
            let (_, rejected, extra) = run(n, &bad);
            assert_eq!(rejected, bad);
            let bound = 2 * bad.len() as u32 * (n as f64).log2().ceil() as u32;
            assert!(
                extra <= bound,
                "n={n} bad={bad:?}: {extra} extra requests > {bound}"
            );
        }
    }

    #[test]
    fn a_rejected_single_event_is_set_aside_at_once() {
        let (delivered, rejected, extra) = run(1, &[0]);
        assert!(delivered.is_empty());
        assert_eq!(rejected, vec![0]);
        assert_eq!(extra, 0);
    }

    #[test]
    fn an_all_rejected_batch_ends_with_every_event_set_aside() {
        let bad: Vec<usize> = (0..8).collect();
        let (delivered, rejected, extra) = run(8, &bad);
        assert!(delivered.is_empty());
        assert_eq!(rejected, bad);
        assert_eq!(extra, 14, "a full binary tree of 8 leaves has 15 nodes");
    }
}
