//! Everything that talks to Kafka.
//!
//! - `connection`: the connection settings every client shares
//!   (`KAFKA_HOSTS`, `KAFKA_PROPERTIES`, SASL), and the rate-limited client
//!   logs.
//! - `consumer`: the group consumer: its callbacks (rebalance, `START_AT`,
//!   commits, statistics), the poll loop that hands messages to the
//!   partition workers, backpressure, shutdown.
//! - `read`: one-off reads (committed offsets, watermarks) that retry
//!   transient broker answers.
//! - `originals`: reads a refused event's original message back by offset.
//! - `topics`: which topics are read, and the check that reports missing ones.
//! - `watermarks`: the probe of assigned partitions' high watermarks (it
//!   runs the topic check too).
//! - `wedge`: recognises librdkafka's stuck cooperative group state.
//!
//! Starts `partition` workers and feeds `ops` (lag, health, metrics).

pub mod connection;
pub mod consumer;
pub mod originals;
pub mod read;
pub mod topics;
pub mod watermarks;
pub mod wedge;
