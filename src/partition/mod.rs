//! One assigned partition's pipeline, from the messages the consumer loop
//! hands over to the offset it may commit.
//!
//! - `worker`: the task per partition: decode, filter, batch, deliver one
//!   batch at a time, report progress; drains on revocation and shutdown.
//! - `batch`: events into JSON-array request bodies within the size and
//!   count limits, sealed by size, count or linger.
//! - `decide`: what becomes of one decoded message (dead letter, filtered,
//!   too large, batch); pure.
//! - `frontier`: the contiguous prefix of offsets that are done (delivered,
//!   filtered, dead-lettered): the only offset ever committed.
//!
//! Calls into `event` (decoding, filters) and `sink` (delivery, dead
//! letters); never into `kafka`: the consumer loop owns the Kafka client.

pub mod batch;
pub mod decide;
pub mod frontier;
mod worker;

pub use worker::{spawn, Deps, Handle, Message, Progress, Shared};
