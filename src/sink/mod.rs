//! Where events go: the webhook, and the dead-letter topic for those that
//! cannot be delivered.
//!
//! - `delivery`: one batch's delivery: POST, retry transient failures,
//!   bisect a refused batch to the refused events, dead-letter those.
//! - `webhook`: the HTTP client, its retry policy (`webhook::retry`) and
//!   request signing (`webhook::sign`).
//! - `bisect`: the pure search for refused events in a batch.
//! - `dlq`: the dead-letter producer and its headers.
//!
//! Reads refused events' originals through `kafka::originals`; knows nothing
//! of the consumer group or of the partition worker (what it delivers is
//! anything that is `delivery::Events`).

pub mod bisect;
pub mod delivery;
pub mod dlq;
pub mod webhook;
