//! What a partition worker does with one decoded message. Pure: the worker
//! (`worker.rs`) carries the decision out (metrics, logs, the dead-letter
//! write, the frontier, the batch).

use crate::config::DlqPolicy;
use crate::event::decode::{DecodeError, EventMeta};
use crate::event::filter::{Filter, Skip};
use crate::transform::DropReason;

/// The fate of one message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Disposition {
    /// Not a PostHog event: dead-lettered (or, under `DLQ_POLICY=block`,
    /// the partition stops at it), with this reason.
    Undecodable(&'static str),
    /// Filtered out: done at once, never sent.
    Filtered(Skip),
    /// Left out by the operator's event rules (`EVENT_FILTERS`): done at
    /// once, never sent, like a filtered one.
    Dropped(DropReason),
    /// Larger than a batch may be: dead-lettered as `too_large` under
    /// `DLQ_POLICY=dlq`. (Under `block` it is sent alone instead: blocking on
    /// an event the webhook may well accept would stop the partition for
    /// nothing.)
    TooLarge,
    /// Into the open batch.
    Batch,
}

/// Decides what to do with a message, given how it decoded, the filters,
/// the size of its encoded event and the batch limit.
pub fn dispose(
    decoded: Result<&EventMeta, &DecodeError>,
    filter: &Filter,
    json_len: usize,
    batch_max_bytes: usize,
    policy: DlqPolicy,
) -> Disposition {
    let event = match decoded {
        Ok(event) => event,
        Err(e) => return Disposition::Undecodable(e.reason()),
    };
    if let Err(skip) = filter.check(event) {
        return Disposition::Filtered(skip);
    }
    // The body of a batch of one: `[` + event + `]`.
    if json_len + 2 > batch_max_bytes && policy == DlqPolicy::Dlq {
        return Disposition::TooLarge;
    }
    Disposition::Batch
}

#[cfg(test)]
mod tests {
    use super::*;

    fn event(name: &str) -> EventMeta {
        EventMeta {
            uuid: "u".into(),
            event: name.into(),
            token: Some("phc_a".into()),
            team_id: Some(1),
        }
    }

    #[test]
    fn undecodable_messages_are_dead_lettered_with_their_reason() {
        let e = DecodeError::NotObject;
        assert_eq!(
            dispose(Err(&e), &Filter::default(), 0, 100, DlqPolicy::Dlq),
            Disposition::Undecodable(e.reason())
        );
    }

    #[test]
    fn filters_apply_before_size() {
        let filter = Filter::new(&["$pageview".to_owned()], None, None);
        assert_eq!(
            dispose(
                Ok(&event("$identify")),
                &filter,
                10_000,
                100,
                DlqPolicy::Dlq
            ),
            Disposition::Filtered(Skip::EventName)
        );
        assert_eq!(
            dispose(Ok(&event("$pageview")), &filter, 10, 100, DlqPolicy::Dlq),
            Disposition::Batch
        );
    }

    #[test]
    fn an_event_too_large_for_any_batch_is_dead_lettered_only_under_the_dlq_policy() {
        let f = Filter::default();
        // 98 bytes + the array's brackets fit in 100 exactly.
        assert_eq!(
            dispose(Ok(&event("e")), &f, 98, 100, DlqPolicy::Dlq),
            Disposition::Batch
        );
        assert_eq!(
            dispose(Ok(&event("e")), &f, 99, 100, DlqPolicy::Dlq),
            Disposition::TooLarge
        );
        assert_eq!(
            dispose(Ok(&event("e")), &f, 99, 100, DlqPolicy::Block),
            Disposition::Batch
        );
    }
}
