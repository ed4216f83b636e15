//! One assigned partition's pipeline, from the messages the consumer loop
//! hands over to the offset it may commit.
//!
//! - `handle`: the consumer loop's side: the messages it hands over, the
//!   progress it receives, the state it reads (`Shared`), the `Handle`.
//! - `worker`: the task per partition, the I/O around `state`: decoding,
//!   delivery and dead-letter tasks, progress reports, metrics, logs, timers.
//! - `state`: the worker's state machine (open batch, sealed batches, units
//!   in flight, the frontier, block and drain); pure, takes `now`.
//! - `decide`: what becomes of one decoded message (dead letter, filtered,
//!   too large, batch); pure.
//! - `batch`: events into JSON-array request bodies within the size and
//!   count limits, sealed by size, count or linger.
//! - `frontier`: the contiguous prefix of offsets that are done (delivered,
//!   filtered, dead-lettered): the only offset ever committed.
//!
//! Calls into `event` (decoding, filters) and `sink` (delivery, dead
//! letters); never into `kafka`: the consumer loop owns the Kafka client.

pub mod batch;
pub mod decide;
pub mod frontier;
mod handle;
pub mod state;
mod worker;

pub use handle::{Handle, Message, Progress, Shared};
pub use worker::{spawn, Deps};
