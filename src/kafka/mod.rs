//! The Kafka clients and what they share; the group consumer, which drives
//! the partition workers, is `crate::consumer`.
//!
//! - `connection`: the connection settings every client shares
//!   (`KAFKA_HOSTS`, `KAFKA_PROPERTIES`, SASL), and the rate-limited client
//!   logs.
//! - `read`: one-off reads (committed offsets, watermarks) that retry
//!   transient broker answers.
//! - `originals`: reads a refused event's original message back by offset.
//! - `topics`: which topics are read, and the check that reports missing ones.
//! - `watermarks`: the probe of assigned partitions' high watermarks (it
//!   runs the topic check too).
//! - `state`: `STATE_TOPIC`, the connector's own compacted topic (where the
//!   group started reading each partition, backfill checkpoints, a lock).
//! - `wedge`: recognises librdkafka's stuck cooperative group state.
//! - `close`: closes a client on a thread of its own, waiting only so long.
//!
//! Calls only `config` and `ops` (logs, metrics): `sink` and the consumer use
//! it, never the other way round.

pub mod close;
pub mod connection;
pub mod group_protocol;
pub mod originals;
pub mod read;
pub mod state;
pub mod topics;
pub mod watermarks;
pub mod wedge;
