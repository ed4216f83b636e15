//! What the operator sees and controls: metrics, health, the HTTP endpoints,
//! lag, stalls, log limiting, shutdown.
//!
//! - `metrics`: every Prometheus series (names are part of the interface).
//! - `stats`: librdkafka's statistics JSON, read (pure).
//! - `lag`: statistics and probes into per-partition lag, keyed by topic-partition.
//! - `stall`: the pure rule that tells waiting from stalled.
//! - `health`: what `/healthz` and `/readyz` answer.
//! - `healthcheck`: the `healthcheck` subcommand, a client of `/healthz`.
//! - `http`: the HTTP server for `/metrics`, `/healthz`, `/readyz`.
//! - `log_limit`: rate limits for repeated log lines.
//! - `shutdown`: signals, the one shutdown deadline, the watchdog.
//!
//! Called by every other folder; calls none of them (it uses only the
//! `TopicPartition` vocabulary type).

pub mod health;
pub mod healthcheck;
pub mod http;
pub mod lag;
pub mod log_limit;
pub mod metrics;
pub mod shutdown;
pub mod stall;
pub mod stats;
