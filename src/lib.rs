//! patterns-connector: PostHog's events, from Kafka to a Patterns webhook, at least once.
//!
//! ```text
//!  Kafka topics (KAFKA_TOPIC: a list or a ^pattern, config/topics.rs;
//!      missing ones reported by kafka/topics.rs)
//!      │  one consumer group, cooperative-sticky assignment
//!      ▼
//!  consumer loop (consumer/, one thread) ── pause/resume when a partition's buffer is full
//!      │  one channel per assigned topic-partition (topic_partition.rs keys everything)
//!      ▼
//!  partition worker (partition/handle.rs → partition/worker.rs, one task per partition)
//!      decode (event/decode.rs, event/timestamp.rs) → filter (event/filter.rs)
//!      → decide (partition/decide.rs) → state machine (partition/state.rs, pure):
//!      batch (partition/batch.rs), seal, dead-letter, block, drain
//!      │  one batch in flight per partition (ORDERING=partition), or per
//!      │  key-hashed lane (ORDERING=key): each key's order is kept
//!      ▼
//!  delivery (sink/delivery.rs): POST the JSON array (sink/webhook/); 2xx done;
//!      transient failures retried forever with backoff and Retry-After
//!      (sink/webhook/retry.rs); refused batches bisected (sink/bisect.rs), refused
//!      events read back from Kafka (kafka/originals.rs) to the dead-letter
//!      topic (sink/dlq.rs)
//!      │  delivered or dead-lettered
//!      ▼
//!  frontier (partition/frontier.rs) → consumer loop stores the offset → auto-commit
//! ```
//!
//! The folders: `config` (options, topics), `consumer` (the group consumer's
//! thread: poll loop, rebalance, commits), `partition` (the worker, its state
//! machine, batches, the frontier), `event` (pure decoding and filters),
//! `transform` (pure: the operator's rules on what leaves PostHog),
//! `sink` (webhook, bisection, dead letters), `kafka` (the other clients and
//! the connection settings all share, the group protocol's choice), `ops`
//! (metrics, statistics, lag, stalls, health, HTTP, shutdown). Dependencies
//! point one way: `consumer` → `partition` → `sink` → `kafka`, `partition` →
//! `event` → `config` → `transform`; `ops` and `transform` call none of the
//! others (`tests/layout.rs` checks it). This file only wires them together.
//!
//! **The guarantee.** An offset is stored, and so committed, only when every
//! message before it in its partition was delivered (2xx), filtered out or
//! acknowledged by the dead-letter topic
//! (`enable.auto.offset.store=false`; the frontier decides). A crash or a lost
//! partition can therefore redeliver events, never skip them. Every event
//! carries PostHog's `uuid`, which receivers can deduplicate on.
//!
//! **Nothing is set aside silently.** A message that is not a PostHog event,
//! an event larger than a batch may be, or an event the webhook refuses
//! (a status in `WEBHOOK_REJECT_STATUSES`; the batch is bisected to find it,
//! see `sink::delivery`) goes to the dead-letter topic (`sink::dlq`), and its offset
//! counts as done only once Kafka acknowledged that write. `replay-dlq`
//! (`replay`) sends such events again later.
//!
//! Memory is bounded: a partition whose undelivered bytes pass its share of
//! `MAX_BUFFERED_BYTES` is paused until deliveries catch up (and sends its open
//! batch at once: nothing more can join it), while the consumer keeps polling
//! (so it stays in the group). A message is dropped once decoded
//! (`event::rawjson` reads it in one pass, borrowing); batches hold only their
//! request body, and the rare event the webhook refuses is read back from
//! Kafka by offset for the dead-letter topic.
//!
//! Next to the consumer run three side clients, all built from one
//! connection configuration (`kafka::connection`, so every security and
//! connection setting applies to all, and their librdkafka logs are
//! rate-limited): the dead-letter producer (`sink::dlq`), the reader of refused
//! events' originals (`kafka::originals`), and a probe that reads every assigned
//! partition's high watermark for the lag gauges (`kafka::watermarks`,
//! `ops::lag`). One-off reads of group state retry the broker's transient
//! answers (`kafka::read`).
//!
//! A partition that waits does so for a reason the operator can see: a
//! delivery in flight (the webhook), paused for backpressure, blocked by
//! `DLQ_POLICY=block`, dead-letter writes failing. One that has work and
//! moves for none of these is *stalled* (`ops::stall`): `/healthz` fails and
//! names it. A fatal Kafka client error ends the process non-zero (but for
//! a join the group refuses for a reason that passes: `consumer::rejoin`
//! creates a new consumer), and so
//! does librdkafka's group state when it stops taking part in rebalances
//! (`kafka::wedge`): a restart is what clears it.
//!
//! **History** (`backfill`): the events PostHog already holds, read from its
//! ClickHouse in order of ingestion and fed to a partition worker as if
//! they were one Kafka partition's messages, so the same batching,
//! delivery and dead letters serve them; they end where the group started
//! reading (`consumer::first_read` records it in `STATE_TOPIC`, `kafka::state`).
//!
//! `START_AT` decides a new group's start once, and commits it at the first
//! assignment; afterwards partitions without a commit start at the earliest
//! offset, so nothing is skipped.
//!
//! Shutdown (SIGTERM/SIGINT) and revocation: stop taking messages, let the
//! batch in flight finish within `SHUTDOWN_TIMEOUT_MS`, commit what was
//! delivered, leave the group. A shutdown has one deadline, SIGTERM plus
//! `SHUTDOWN_TIMEOUT_MS`, even when it arrives during a revocation drain.

pub mod backfill;
pub mod config;
pub mod consumer;
pub mod event;
pub mod kafka;
pub mod ops;
pub mod partition;
pub mod replay;
pub mod sink;
pub mod topic_partition;
pub mod transform;

use std::sync::Arc;

use anyhow::Context as _;
use tokio_util::sync::CancellationToken;
use tracing::info;

use crate::config::Config;
use crate::event::filter;
use crate::kafka::originals;
use crate::ops::health::Health;
use crate::ops::metrics::Metrics;
use crate::ops::{http, shutdown};
use crate::sink::{delivery, dlq, webhook};

/// Runs the connector until `shutdown` is cancelled and everything is drained.
pub async fn run(config: Config, shutdown: CancellationToken) -> anyhow::Result<()> {
    let config = Arc::new(config);
    let (_, librdkafka_version) = rdkafka::util::get_rdkafka_version();
    let metrics = Arc::new(Metrics::new(&librdkafka_version));
    let health = Arc::new(Health::default());
    info!(version = env!("CARGO_PKG_VERSION"), librdkafka = %librdkafka_version, config = ?config, "starting patterns-connector");
    log_rules(&config);

    let http_stop = CancellationToken::new();
    let http = tokio::spawn(http::serve(
        config.http_addr,
        metrics.clone(),
        health.clone(),
        http_stop.clone(),
    ));

    let (progress_tx, progress_rx) = tokio::sync::mpsc::unbounded_channel();
    let deps = Arc::new(partition::Deps {
        config: config.clone(),
        deliverer: delivery::Deliverer {
            webhook: webhook::Webhook::new(&config, metrics.clone())
                .context("cannot build the webhook HTTP client")?,
            dead_letters: dlq::DeadLetters::new(&config)?,
            originals: Some(originals::Originals::new(&config)),
            metrics: metrics.clone(),
        },
        filter: filter::Filter::from_config(&config),
        metrics: metrics.clone(),
        progress: progress_tx,
    });
    // Where the group starts reading partitions it has no commit for is
    // recorded there, for a backfill's hand-over. Without it the stream runs
    // as before, and a backfill needs BACKFILL_UNTIL.
    // Created in the background: the consumer must start (and report bad
    // credentials, say) whatever the admin request does meanwhile.
    let state = match kafka::state::StateTopic::new(&config) {
        Ok(state) => {
            let creating = state.clone();
            tokio::spawn(async move { creating.ensure_once().await });
            Some(state)
        }
        Err(e) => {
            tracing::warn!(error = %e, "STATE_TOPIC is not available");
            None
        }
    };
    // The group protocol, decided once (`kafka::group_protocol`).
    let probed = config.clone();
    let choice = tokio::task::spawn_blocking(move || {
        kafka::group_protocol::choose(probed.group_protocol, &probed.kafka_properties, || {
            kafka::group_protocol::probe(&probed, kafka::group_protocol::PROBE_TIMEOUT)
        })
    })
    .await
    .context("the group protocol probe failed")?;
    info!(protocol = choice.protocol.as_str(), reason = %choice.reason, static_member = config.group_instance_id.is_some(), "consumer group protocol");
    consumer::rejoin::set_protocol_gauge(&metrics, choice.protocol);
    let shutdown_timeout = config.shutdown_timeout;
    shutdown::watchdog(shutdown.clone(), shutdown_timeout + shutdown::EXIT_GRACE)
        .context("cannot start the shutdown watchdog")?;
    // The consumer thread: group consumers one after another while the
    // group refuses the join for a reason that passes (`consumer::rejoin`).
    let consumer_thread = {
        let parts = consumer::rejoin::Parts {
            config: config.clone(),
            runtime: tokio::runtime::Handle::current(),
            deps,
            metrics: metrics.clone(),
            health: health.clone(),
            state,
        };
        let shutdown = shutdown.clone();
        std::thread::Builder::new()
            .name("kafka-consumer".into())
            .spawn(move || consumer::rejoin::serve(parts, choice.protocol, progress_rx, shutdown))
            .context("cannot start the consumer thread")?
    };

    // If the HTTP server fails to bind, stop everything: an unmonitored
    // connector is not what the operator asked for.
    let consumer_done = tokio::task::spawn_blocking(move || consumer_thread.join());
    tokio::pin!(consumer_done);
    let (consumer_result, http_result) = tokio::select! {
        joined = &mut consumer_done => (joined, None),
        result = http => {
            shutdown.cancel();
            tracing::error!(?result, "the HTTP server stopped; shutting down");
            ((&mut consumer_done).await, Some(result))
        }
    };
    http_stop.cancel();
    consumer_result
        .context("joining the consumer thread")?
        .map_err(|_| anyhow::anyhow!("the consumer thread panicked"))??;
    match http_result {
        Some(Ok(Err(e))) => Err(e),
        Some(Err(e)) => Err(anyhow::anyhow!("the HTTP server task failed: {e}")),
        _ => Ok(()),
    }
}

/// `patterns-connector replay-dlq`: re-sends the dead-letter topic's events.
pub async fn replay_dlq(
    config: Config,
    group: Option<String>,
    shutdown: CancellationToken,
) -> anyhow::Result<replay::Summary> {
    let (_, librdkafka_version) = rdkafka::util::get_rdkafka_version();
    let metrics = Arc::new(Metrics::new(&librdkafka_version));
    let webhook =
        webhook::Webhook::new(&config, metrics).context("cannot build the webhook HTTP client")?;
    let group = group.unwrap_or_else(|| format!("{}-replay", config.kafka_consumer_group));
    replay::run(&config, &webhook, &group, &shutdown).await
}

/// `patterns-connector backfill`: sends a team's events from PostHog's
/// ClickHouse up to where the stream's group started (see [`backfill`]).
pub async fn backfill(
    config: Config,
    args: config::BackfillArgs,
    shutdown: CancellationToken,
) -> anyhow::Result<backfill::Finished> {
    backfill::run(config, args, shutdown).await
}

/// What leaves PostHog, one line per rule (the salt never shown).
fn log_rules(config: &Config) {
    for (rule, value) in config.transform.0.describe() {
        info!(rule, value = %value, "event rule");
    }
}
