//! PostHog's events, from Kafka message bytes to the JSON the webhook gets.
//!
//! - `decode`: PostHog's message formats (capture's wrapper, the processed
//!   `clickhouse_events_json` row) into the delivered event shape.
//! - `fast`: the one-pass path for the common captured message; the general
//!   decoder decides whatever it is not sure of.
//! - `rawjson`: a borrowing one-pass JSON reader, so a message is not parsed
//!   into a tree.
//! - `timestamp`: PostHog's timestamp rules (`timestamp`, `offset`,
//!   `sent_at`, `now`).
//! - `filter`: project and event-name filters.
//! - `sample`: sample events (the demo, tests, benchmarks).
//!
//! Pure: no I/O, no Kafka or HTTP types.

pub mod decode;
#[cfg(test)]
mod equivalence;
pub mod fast;
pub mod filter;
mod meta;
pub mod rawjson;
#[cfg(test)]
mod rules_timing;
pub mod sample;
pub mod timestamp;

pub use meta::EventMeta;
