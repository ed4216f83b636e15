//! `patterns-connector backfill`: the events PostHog already holds, older
//! than what Kafka keeps, sent to the same webhook through the same
//! pipeline as the stream, up to where the stream's group started.
//!
//! ```text
//!  PostHog's ClickHouse (clickhouse.rs) or its query API (api.rs), behind
//!      source.rs: keyset pages in (ingestion time, uuid) order, one team,
//!      ingested before the hand-over bound (handover.rs), or with --follow
//!      for ever, BACKFILL_VISIBILITY_DELAY_MS behind now
//!      │  each row a clickhouse_events_json message, numbered 0, 1, 2, ...
//!      ▼
//!  a partition worker (crate::partition), as for a Kafka partition: decode,
//!      filter, batch, deliver, bisect, dead-letter; its frontier reports the
//!      rows done
//!      │  frontier → cursor (checkpoint.rs)
//!      ▼
//!  checkpoint in STATE_TOPIC or BACKFILL_STATE_FILE (store.rs), progress
//!      line and metrics (progress.rs)
//! ```
//!
//! **The hand-over** is on ingestion time (when ClickHouse got the row:
//! `COALESCE(inserted_at, _timestamp)`, as PostHog's batch exports read it), never on the
//! event's own timestamp, which late events (offline SDK queues, imports)
//! set hours or days back: see `handover`. The bound is fixed at the first
//! start and kept in the checkpoint.
//!
//! **At least once.** A checkpoint names the last row whose events were all
//! delivered, filtered out or dead-lettered. A restart (after a crash or a
//! SIGKILL) resumes after it: rows delivered since the last checkpoint are
//! sent again. A checkpoint is written whenever the frontier passes a chunk
//! of 32 rows, so a kill redelivers at most those 32 rows, the batches in
//! flight (up to MAX_CONCURRENT_REQUESTS × BATCH_MAX_EVENTS), and what was
//! delivered during one checkpoint write: less than a page
//! (BACKFILL_PAGE_ROWS) whenever a page is larger than the batches in flight.
//!
//! **One at a time.** A backfill holds a lock for its group and team
//! (`store::Store::lock`): a second one waits until the first ends.
//!
//! **Following** (`--follow`): after history, the same loop keeps reading
//! rows as they become visible, every BACKFILL_FOLLOW_INTERVAL_MS, with the
//! same checkpoints: an event is missed only if it became visible more than
//! BACKFILL_VISIBILITY_DELAY_MS after its ingestion time.

pub mod api;
pub mod checkpoint;
pub mod clickhouse;
pub mod handover;
pub mod progress;
pub mod rows;
pub mod source;
pub mod store;

use std::io::IsTerminal as _;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context as _;
use prometheus::core::Collector as _;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use crate::config::{BackfillArgs, Config, HistoryStart, InputFormat, SourceKind};
use crate::event::filter::Filter;
use crate::kafka::state::StateTopic;
use crate::ops::health::Health;
use crate::ops::metrics::{BackfillMetrics, Metrics};
use crate::ops::shutdown::pause;
use crate::partition::{self, state::Lanes, Message, Progress};
use crate::sink::{delivery, dlq, webhook};
use crate::topic_partition::TopicPartition;
use checkpoint::{Checkpoint, Positions, Totals};
use handover::Handover;
use source::{micros, Cursor, Range, Source, SourceError};
use store::{Held, Store};

/// Rows handed to the worker at once, and the checkpoint's granularity.
const CHUNK: usize = 32;

/// The progress line's wait while following has nothing new: its line
/// then comes once a minute, not every few seconds.
const CAUGHT_UP: &str = "following, caught up";

/// The smallest page a query that ran out of time is retried with.
const MIN_PAGE_ROWS: usize = 100;

/// The bound of a backfill that follows: none (in ms, far enough that
/// microseconds still fit an i64).
const NO_END_MS: i64 = i64::MAX / 1_000_000;

/// What the feeder is waiting for, shown in the progress line.
type Waiting = Arc<std::sync::Mutex<Option<String>>>;

/// What `run` returns: the summary line, printed last.
pub struct Finished {
    pub summary: String,
}

pub async fn run(
    config: Config,
    args: BackfillArgs,
    shutdown: CancellationToken,
) -> anyhow::Result<Finished> {
    let team_id = match args.source() {
        SourceKind::Api => args.project_id.ok_or_else(|| {
            anyhow::anyhow!(
                "invalid value for POSTHOG_PROJECT_ID: the api source reads one project's events; set POSTHOG_PROJECT_ID (the number in the project's URL, /project/<id>)"
            )
        })?,
        _ => config.team_id.ok_or_else(|| {
            anyhow::anyhow!(
                "invalid value for POSTHOG_TEAM_ID: a backfill reads one team's events; set POSTHOG_TEAM_ID"
            )
        })?,
    };
    if args.follow && args.until.is_some() {
        anyhow::bail!(
            "invalid value for BACKFILL_UNTIL: --follow (BACKFILL_FOLLOW) has no end; give one or the other"
        );
    }
    let mut config = config;
    // Rows are clickhouse_events_json messages, whatever the stream reads.
    config.input_format = InputFormat::Clickhouse;
    // Rows carry no project token: with the stream's POSTHOG_PROJECT_TOKEN
    // kept, the filter would skip every row and the backfill would "complete"
    // having sent nothing. The query already selects the team's rows.
    if config.project_token.take().is_some() {
        info!("POSTHOG_PROJECT_TOKEN does not apply to a backfill (its rows carry no token); the query selects the project's events");
    }
    if args.source() == SourceKind::Api && config.team_id.take().is_some() {
        // The API reads POSTHOG_PROJECT_ID's events, whose team_id (an
        // environment's) need not be the project's id: a team filter kept
        // from the stream could skip every row.
        info!("POSTHOG_TEAM_ID does not apply to the api source; POSTHOG_PROJECT_ID selects the project's events");
    }
    let config = Arc::new(config);
    let started = Instant::now();
    let (_, librdkafka_version) = rdkafka::util::get_rdkafka_version();
    let metrics = Arc::new(Metrics::new(&librdkafka_version));
    let progress_metrics = Arc::new(BackfillMetrics::new(&metrics));
    info!(version = env!("CARGO_PKG_VERSION"), config = ?config, backfill = ?args, "starting a backfill");
    crate::log_rules(&config);
    let http_stop = CancellationToken::new();
    let _http_stop = http_stop.clone().drop_guard();
    tokio::spawn(crate::ops::http::serve(
        config.http_addr,
        metrics.clone(),
        Arc::new(Health::default()),
        http_stop,
    ));

    let source = Source::new(&args)?;
    info!(
        source = source.kind(),
        "reading events from {}",
        source.name()
    );
    let waiting: Waiting = Arc::default();
    let retry = Retry {
        errors: progress_metrics.source_errors.clone(),
        throttled: progress_metrics.throttled.clone(),
        retry_for: args.retry_for,
        location: source.location_option(),
        waiting: waiting.clone(),
    };
    retry.run(&shutdown, || source.check()).await?;
    let store = match &args.state_file {
        Some(path) => Store::File(path.into()),
        None => {
            let state = StateTopic::new(&config)?;
            state.ensure().await?;
            Store::Topic(state)
        }
    };
    let lock_name = format!("{}-backfill-{team_id}", config.kafka_consumer_group);
    let lock = store.lock(&lock_name, &shutdown).await?;
    let key = checkpoint::key(&config.kafka_consumer_group, team_id);
    let earlier = store.get(&key)?;
    if let Some(c) = &earlier {
        if c.source != source.kind() {
            anyhow::bail!(
                "invalid value for BACKFILL_SOURCE: the checkpoint {key} in {} is a position in the {} source, not {}; finish it with BACKFILL_SOURCE={}, or use another KAFKA_CONSUMER_GROUP",
                store.describe(),
                c.source,
                source.kind(),
                c.source
            );
        }
        if c.follow && !args.follow {
            warn!("this backfill's checkpoint follows new events (it was started with --follow): it goes on following; stop it with SIGTERM, or use another KAFKA_CONSUMER_GROUP for a bounded backfill");
        }
    }
    let checkpoint = match earlier {
        Some(c) if c.complete && args.follow && !c.follow && matches!(store, Store::Topic(_)) => {
            anyhow::bail!(
                "invalid value for BACKFILL_FOLLOW: this backfill completed up to where the stream took over (its checkpoint is in {}); following from there would send again what the stream delivers. Follow with another KAFKA_CONSUMER_GROUP, or BACKFILL_STATE_FILE where no stream runs",
                store.describe()
            );
        }
        Some(mut c) if c.complete && args.follow && !c.follow => {
            // History is done (to BACKFILL_UNTIL, no stream); following goes
            // on from where it ended.
            info!(cursor = ?c.cursor, "this backfill's history is complete; following newly ingested events from its end");
            c.follow = true;
            c.complete = false;
            c.until_ms = NO_END_MS;
            c.overlap_from_ms = NO_END_MS;
            store
                .put(&key, &c, &shutdown)
                .await
                .map_err(|_| interrupted())?;
            c
        }
        Some(c) if c.complete => {
            let summary =
                progress::summary(team_id, &c.totals, started.elapsed(), &handover_text(&c));
            info!("this backfill already completed; nothing to do");
            return Ok(Finished { summary });
        }
        Some(c) => {
            info!(cursor = ?c.cursor, until_ms = c.until_ms, "resuming from the checkpoint");
            c
        }
        None => {
            let handover = if args.follow {
                Handover {
                    overlap_from_ms: NO_END_MS,
                    until_ms: NO_END_MS,
                }
            } else {
                choose_handover(&config, &args, &store)?
            };
            let c = Checkpoint {
                team_id,
                until_ms: handover.until_ms,
                overlap_from_ms: handover.overlap_from_ms,
                from_us: match args.from {
                    HistoryStart::All => None,
                    HistoryStart::From(t) => Some(micros(t)),
                },
                cursor: None,
                complete: false,
                totals: Totals::default(),
                source: source.kind().into(),
                follow: args.follow,
            };
            // The bound is fixed now: a restart keeps it.
            store
                .put(&key, &c, &shutdown)
                .await
                .map_err(|_| interrupted())?;
            c
        }
    };
    let whole = Range {
        team_id,
        from: match checkpoint.from_us {
            None => HistoryStart::All,
            Some(us) => HistoryStart::From(source::from_micros(us)),
        },
        after: None,
        until_us: checkpoint.until_ms.saturating_mul(1000),
    };
    let total = retry.run(&shutdown, || source.count(&whole)).await?;
    let resumed = Range {
        after: checkpoint.cursor.clone(),
        ..whole.clone()
    };
    let remaining = retry.run(&shutdown, || source.count(&resumed)).await?;
    let overlap = if checkpoint.follow {
        0
    } else {
        retry
            .run(&shutdown, || {
                source.count_since(&whole, checkpoint.overlap_from_ms.saturating_mul(1000))
            })
            .await?
    };
    info!(team_id, total, remaining, overlap, handover = %handover_text(&checkpoint), "rows to backfill");
    if checkpoint.follow {
        eprintln!(
            "backfill: team {team_id}: {total} rows ingested so far, {remaining} left to send; then following new events"
        );
    } else {
        eprintln!(
            "backfill: team {team_id}: {total} rows ingested before {}, {remaining} left to send",
            source::from_micros(whole.until_us).to_rfc3339()
        );
    }
    progress_metrics.rows_remaining.set(remaining as i64);
    if total == 0 {
        eprintln!("backfill: no events for team {team_id} (a project with no events, or an unknown team): nothing to send");
    }

    let (progress_tx, progress_rx) = mpsc::unbounded_channel();
    let deps = Arc::new(partition::Deps {
        config: config.clone(),
        deliverer: delivery::Deliverer {
            webhook: webhook::Webhook::new(&config, metrics.clone())
                .context("cannot build the webhook HTTP client")?,
            dead_letters: dlq::DeadLetters::new(&config)?,
            originals: None,
            metrics: metrics.clone(),
        },
        filter: Filter::from_config(&config),
        metrics: metrics.clone(),
        progress: progress_tx,
    });
    let lanes = Lanes::per_partition(
        config.ordering,
        config.key_lanes,
        config.max_concurrent_requests,
        1,
    );
    let tp = TopicPartition::new(source.name(), 0);
    let worker = partition::spawn(&tokio::runtime::Handle::current(), deps, tp, 0, lanes);

    let tracker = Tracker {
        store,
        key,
        checkpoint: checkpoint.clone(),
        positions: Positions::default(),
        metrics: metrics.clone(),
        progress: progress_metrics.clone(),
        total,
        done_before_run: total.saturating_sub(remaining),
        done_this_run: 0,
        started,
        overlap,
        waiting,
    };
    let feeder = Feeder {
        source: &source,
        range: resumed,
        page_limit: args.page_rows,
        visibility_delay: args.visibility_delay(),
        follow: checkpoint.follow.then_some(args.follow_interval),
        retry,
        max_buffered: config.max_buffered_bytes,
        metrics: progress_metrics.clone(),
    };
    let result = pipeline(
        feeder,
        worker,
        tracker,
        progress_rx,
        lock,
        &config,
        &shutdown,
    )
    .await;
    match result {
        Ok(totals) => Ok(Finished {
            summary: progress::summary(
                team_id,
                &totals,
                started.elapsed(),
                &handover_text(&checkpoint),
            ),
        }),
        // Following has no end: a signal is how it stops, and the checkpoint
        // is saved (pipeline) for the next run to go on from.
        Err(_) if checkpoint.follow && shutdown.is_cancelled() => Ok(Finished {
            summary: format!(
                "backfill stopped: team {team_id}: following ended by a signal after {:.1} s; the checkpoint is saved, run it again to go on",
                started.elapsed().as_secs_f64()
            ),
        }),
        Err(e) => Err(e),
    }
}

fn interrupted() -> anyhow::Error {
    anyhow::anyhow!("interrupted: run the backfill again to resume from its checkpoint")
}

fn handover_text(c: &Checkpoint) -> String {
    if c.follow {
        return "following: every row ingested, no hand-over".into();
    }
    let time = |ms: i64| {
        source::from_micros(ms.saturating_mul(1000))
            .format("%Y-%m-%dT%H:%M:%S%.3fZ")
            .to_string()
    };
    format!(
        "rows ingested from {} to {}",
        time(c.overlap_from_ms),
        time(c.until_ms)
    )
}

/// The bound of a first start: `BACKFILL_UNTIL`, else from where the
/// stream's group started reading (see `handover`).
fn choose_handover(
    config: &Config,
    args: &BackfillArgs,
    store: &Store,
) -> anyhow::Result<Handover> {
    let margin = i64::try_from(args.handover_margin.as_millis()).unwrap_or(i64::MAX);
    let state = match store {
        Store::Topic(state) => state,
        Store::File(_) => {
            let until = args.until.ok_or_else(|| {
                anyhow::anyhow!(
                    "invalid value for BACKFILL_UNTIL: with BACKFILL_STATE_FILE there is no stream's start to hand over to; give BACKFILL_UNTIL (an RFC 3339 time), or --follow to keep reading new events"
                )
            })?;
            return Ok(Handover {
                overlap_from_ms: until.timestamp_millis(),
                until_ms: until.timestamp_millis(),
            });
        }
    };
    let recorded = tokio::task::block_in_place(|| -> anyhow::Result<_> {
        let partitions = state.stream_partitions(config)?;
        let starts = state.stream_starts()?;
        Ok(handover::handover(&partitions, &starts, margin))
    })?;
    match (args.until, recorded) {
        (Some(until), recorded) => {
            let until_ms = until.timestamp_millis();
            if let Ok(h) = &recorded {
                if until_ms < h.until_ms {
                    warn!(
                        until = %until.to_rfc3339(),
                        stream_bound = %source::from_micros(h.until_ms.saturating_mul(1000)).to_rfc3339(),
                        "BACKFILL_UNTIL is before the stream's recorded start plus the margin: events ingested between the two come through neither path"
                    );
                }
            }
            // The overlap window is known only from the stream's start.
            let from = recorded.map_or(until_ms, |h| h.overlap_from_ms.min(until_ms));
            Ok(Handover {
                overlap_from_ms: from,
                until_ms,
            })
        }
        (None, Ok(handover)) => Ok(handover),
        (None, Err(e)) => Err(anyhow::anyhow!(
            "cannot tell where the stream's group {} started: {e}. Start the connector first (it records where it starts reading in STATE_TOPIC {}), or give BACKFILL_UNTIL, or --follow where no stream runs",
            config.kafka_consumer_group,
            config.state_topic
        )),
    }
}

/// How source calls are retried: transient failures for up to
/// BACKFILL_RETRY_FOR_MS, throttling for as long as the source asks.
#[derive(Clone)]
struct Retry {
    errors: prometheus::IntCounter,
    /// Seconds waited on the source's 429s.
    throttled: prometheus::Counter,
    retry_for: Duration,
    /// The option naming where the source is.
    location: &'static str,
    waiting: Waiting,
}

impl Retry {
    /// After attempt `attempt` failed with `e` (failing since `since`, None
    /// when throttled only): how long to wait before the next, or the error
    /// that ends the backfill.
    fn after(
        &self,
        e: SourceError,
        since: &mut Option<Instant>,
        attempt: &mut u32,
    ) -> anyhow::Result<Duration> {
        match e {
            SourceError::Throttled { wait, message } => {
                // The source answered and paces us: the wait is not failing
                // time. A failure going on meanwhile (a 5xx between 429s)
                // keeps its clock, paused for the wait.
                if let Some(start) = since.as_mut() {
                    *start = start.checked_add(wait).unwrap_or(*start);
                }
                self.throttled.inc_by(wait.as_secs_f64());
                warn!("{message}");
                self.set_waiting(Some(format!(
                    "throttled by the source (HTTP 429), next request in {} s",
                    wait.as_secs()
                )));
                Ok(wait)
            }
            SourceError::Transient(_) | SourceError::TooSlow(_) => {
                self.errors.inc();
                let failing = since.get_or_insert_with(Instant::now).elapsed();
                if failing >= self.retry_for {
                    anyhow::bail!(
                        "{e} (failed for {} s; check {})",
                        failing.as_secs(),
                        self.location
                    );
                }
                if crate::ops::log_limit::worth_logging((*attempt).into()) {
                    warn!(error = %e, attempt = *attempt, "reading from the source failed; retrying");
                }
                let wait = backoff(*attempt);
                self.set_waiting(Some(format!(
                    "the source is failing, retrying in {} s",
                    wait.as_secs_f64().ceil()
                )));
                *attempt = attempt.saturating_add(1);
                Ok(wait)
            }
            refused => Err(anyhow::anyhow!("{refused}")),
        }
    }

    fn set_waiting(&self, what: Option<String>) {
        *self.waiting.lock().unwrap_or_else(|e| e.into_inner()) = what;
    }

    /// Runs `op` until it succeeds, is refused, or has failed for too long.
    async fn run<T, F, Fut>(&self, cancel: &CancellationToken, mut op: F) -> anyhow::Result<T>
    where
        F: FnMut() -> Fut,
        Fut: std::future::Future<Output = Result<T, SourceError>>,
    {
        let mut since = None;
        let mut attempt = 0u32;
        loop {
            match op().await {
                Ok(value) => {
                    self.set_waiting(None);
                    return Ok(value);
                }
                Err(e) => {
                    let wait = self.after(e, &mut since, &mut attempt)?;
                    pause(wait, cancel).await.map_err(|_| interrupted())?;
                }
            }
        }
    }
}

fn backoff(attempt: u32) -> Duration {
    Duration::from_millis(500u64.saturating_mul(1 << attempt.min(6))).min(Duration::from_secs(20))
}

/// Reads pages and hands their rows to the worker.
struct Feeder<'a> {
    source: &'a Source,
    /// What is left to read: `after` moves with every row handed over.
    range: Range,
    /// The rows asked per page now: BACKFILL_PAGE_ROWS, halved for each
    /// page that ran out of time (for the rest of the run).
    page_limit: usize,
    visibility_delay: Duration,
    /// `--follow`: how often to look for new rows once caught up.
    follow: Option<Duration>,
    retry: Retry,
    max_buffered: usize,
    metrics: Arc<BackfillMetrics>,
}

/// What the feeder tells the tracker.
enum Fed {
    /// The rows up to `offset` (inclusive) end at `cursor`.
    Mark(i64, Cursor),
    /// Every row is handed over; `end` is one past the last offset.
    End(i64),
}

impl Feeder<'_> {
    async fn run(
        mut self,
        worker: &partition::Handle,
        fed: mpsc::UnboundedSender<Fed>,
        cancel: &CancellationToken,
    ) -> anyhow::Result<()> {
        let mut next_offset = 0i64;
        let mut failing_since: Option<Instant> = None;
        let mut attempt = 0u32;
        let mut caught_up_once = false;
        loop {
            // Rows become visible a moment after their ingestion time: nothing
            // more recent than the visibility delay is read yet.
            let visible_us = micros(chrono::Utc::now())
                - i64::try_from(self.visibility_delay.as_micros()).unwrap_or(i64::MAX);
            let page_range = Range {
                until_us: self.range.until_us.min(visible_us),
                ..self.range.clone()
            };
            let (rows, error) = self
                .page(&page_range, worker, &fed, &mut next_offset, cancel)
                .await;
            if cancel.is_cancelled() {
                return Err(interrupted());
            }
            match error {
                None => {
                    failing_since = None;
                    attempt = 0;
                    self.retry.set_waiting(None);
                }
                Some(SourceError::TooSlow(e)) if self.page_limit > MIN_PAGE_ROWS => {
                    self.page_limit = (self.page_limit / 2).max(MIN_PAGE_ROWS);
                    warn!(error = %e, page_rows = self.page_limit, "a page ran out of time; reading smaller pages from now on");
                    continue;
                }
                Some(e) => {
                    // The next page starts after the last row handed over.
                    // Rows came before the error: the source is working (a
                    // long answer cut, say), so its failing clock restarts.
                    if rows > 0 {
                        failing_since = None;
                        attempt = 0;
                    }
                    let wait = self.retry.after(e, &mut failing_since, &mut attempt)?;
                    pause(wait, cancel).await.map_err(|_| interrupted())?;
                    continue;
                }
            }
            if rows == self.page_limit {
                continue;
            }
            if let Some(interval) = self.follow {
                // Caught up with what is visible: look again later.
                if !caught_up_once {
                    caught_up_once = true;
                    info!(
                        interval_ms = interval.as_millis() as u64,
                        "history sent; following newly ingested events"
                    );
                }
                self.retry.set_waiting(Some(format!(
                    "{CAUGHT_UP}; next look in {} s",
                    interval.as_secs_f64().ceil()
                )));
                pause(interval, cancel).await.map_err(|_| interrupted())?;
                continue;
            }
            if page_range.until_us >= self.range.until_us {
                // A short page should mean the end; a server that cuts
                // answers short without an error (result_overflow_mode=break,
                // a proxy) would make it look so. Only a count says so.
                let left = self
                    .retry
                    .run(cancel, || self.source.count(&self.range))
                    .await?;
                if left == 0 {
                    let _ = fed.send(Fed::End(next_offset));
                    return Ok(());
                }
                warn!(left, "a page ended short with rows still after it (does the server cut answers short?); reading on");
                continue;
            }
            // The bound is not visible yet: wait for it.
            let wait = Duration::from_micros(
                u64::try_from(self.range.until_us - page_range.until_us).unwrap_or(0),
            )
            .min(Duration::from_secs(5));
            info!(
                wait_ms = wait.as_millis() as u64,
                "waiting for rows up to the hand-over bound to become visible"
            );
            pause(wait, cancel).await.map_err(|_| interrupted())?;
        }
    }

    /// Reads one page; returns how many rows it handed over, and the error
    /// that ended it early, if one did. Rows read before an error are
    /// handed over: the next page starts after them.
    async fn page(
        &mut self,
        range: &Range,
        worker: &partition::Handle,
        fed: &mpsc::UnboundedSender<Fed>,
        next_offset: &mut i64,
        cancel: &CancellationToken,
    ) -> (usize, Option<SourceError>) {
        let mut page = match self.source.page(range, self.page_limit).await {
            Ok(page) => page,
            Err(e) => return (0, Some(e)),
        };
        let mut rows = 0;
        let mut chunk = Vec::with_capacity(CHUNK);
        let mut last: Option<Cursor> = None;
        let error = loop {
            if cancel.is_cancelled() {
                break None;
            }
            match page.next_row().await {
                Ok(Some(row)) => {
                    chunk.push(Message {
                        offset: *next_offset,
                        timestamp_ms: Some(row.cursor.ingested_at_us / 1000),
                        key: Some(row.key),
                        payload: Some(row.json),
                    });
                    *next_offset += 1;
                    rows += 1;
                    last = Some(row.cursor);
                    if chunk.len() >= CHUNK {
                        self.hand(worker, fed, &mut chunk, &mut last, cancel).await;
                    }
                }
                Ok(None) => break None,
                Err(e) => break Some(e),
            }
        };
        self.hand(worker, fed, &mut chunk, &mut last, cancel).await;
        (rows, error)
    }

    /// Hands `chunk` to the worker, then waits while its buffer is full.
    async fn hand(
        &mut self,
        worker: &partition::Handle,
        fed: &mpsc::UnboundedSender<Fed>,
        chunk: &mut Vec<Message>,
        last: &mut Option<Cursor>,
        cancel: &CancellationToken,
    ) {
        let (Some(cursor), Some(offset)) = (last.take(), chunk.last().map(|m| m.offset)) else {
            return;
        };
        self.metrics.rows_read.inc_by(chunk.len() as u64);
        let _ = fed.send(Fed::Mark(offset, cursor.clone()));
        worker.send(std::mem::take(chunk));
        self.range.after = Some(cursor);
        if worker.shared.buffered_bytes() > self.max_buffered {
            // As the consumer pauses a full partition: the worker sends its
            // open batches at once, since nothing more joins them for now.
            worker.shared.press(true);
            while worker.shared.buffered_bytes() > self.max_buffered / 2
                && !cancel.is_cancelled()
                && !worker
                    .shared
                    .blocked
                    .load(std::sync::atomic::Ordering::Relaxed)
            {
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
            worker.shared.press(false);
        }
    }
}

/// Follows the worker's frontier: checkpoints, progress, the lock.
struct Tracker {
    store: Store,
    key: String,
    checkpoint: Checkpoint,
    positions: Positions,
    metrics: Arc<Metrics>,
    progress: Arc<BackfillMetrics>,
    total: u64,
    done_before_run: u64,
    done_this_run: u64,
    started: Instant,
    overlap: u64,
    waiting: Waiting,
}

impl Tracker {
    fn totals(&self) -> Totals {
        let this_run = Totals {
            read: self.progress.rows_read.get(),
            delivered: self.metrics.events_delivered.get(),
            filtered: sum(&self.metrics.events_filtered),
            dead_lettered: sum(&self.metrics.events_dead_lettered),
            overlap: 0,
        };
        self.checkpoint.totals.plus(this_run)
    }

    fn snapshot(&self) -> progress::Snapshot {
        let done = self.done_before_run + self.done_this_run;
        progress::Snapshot {
            done,
            // Following, the rows keep coming.
            total: self.total.max(done),
            done_this_run: self.done_this_run,
            elapsed: self.started.elapsed(),
            cursor_us: self.checkpoint.cursor.as_ref().map(|c| c.ingested_at_us),
            waiting: self
                .waiting
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .clone(),
        }
    }

    /// The frontier reached `next_offset`: true when the checkpoint moved.
    fn advance(&mut self, next_offset: i64) -> bool {
        let Some(cursor) = self.positions.done_before(next_offset) else {
            return false;
        };
        let done = u64::try_from(next_offset).unwrap_or(0);
        let newly = done.saturating_sub(self.done_this_run);
        self.done_this_run = done;
        self.progress.rows_done.inc_by(newly);
        self.progress
            .rows_remaining
            .set(self.total.saturating_sub(self.done_before_run + done) as i64);
        self.progress.cursor.set(cursor.ingested_at_us as f64 / 1e6);
        let delivered = self.metrics.events_delivered.get();
        let mirrored = self.progress.events_delivered.get();
        self.progress
            .events_delivered
            .inc_by(delivered.saturating_sub(mirrored));
        self.checkpoint.cursor = Some(cursor);
        true
    }

    async fn save(&mut self, complete: bool, cancel: &CancellationToken) -> anyhow::Result<()> {
        let mut checkpoint = self.checkpoint.clone();
        checkpoint.totals = self.totals();
        checkpoint.complete = complete;
        if complete {
            checkpoint.totals.overlap = self.overlap;
        }
        self.store
            .put(&self.key, &checkpoint, cancel)
            .await
            .map_err(|_| interrupted())
    }
}

fn sum(vec: &prometheus::IntCounterVec) -> u64 {
    vec.collect()
        .iter()
        .flat_map(|family| family.get_metric())
        .map(|m| m.get_counter().get_value() as u64)
        .sum()
}

/// The feeder, the worker and the tracker together, until every row is
/// done, the lock is lost, or a shutdown.
async fn pipeline(
    feeder: Feeder<'_>,
    worker: partition::Handle,
    mut tracker: Tracker,
    mut progress: mpsc::UnboundedReceiver<Progress>,
    lock: Held,
    config: &Config,
    shutdown: &CancellationToken,
) -> anyhow::Result<Totals> {
    let (fed_tx, mut fed) = mpsc::unbounded_channel();
    let cancel = shutdown.child_token();
    let mut feeding_done = false;
    let mut end: Option<i64> = None;
    let mut frontier = 0i64;
    let mut saved_at_rows = 0u64;
    let tty = std::io::stderr().is_terminal();
    let mut last_line = Instant::now();
    let mut shown_waiting: Option<String> = None;
    let line_every = if tty {
        Duration::from_secs(2)
    } else {
        Duration::from_secs(10)
    };
    let mut tick = tokio::time::interval(Duration::from_millis(500));
    let mut feeding = Box::pin(feeder.run(&worker, fed_tx, &cancel));
    let failure: Option<anyhow::Error> = loop {
        if end.is_some_and(|end| frontier >= end) {
            break None;
        }
        tokio::select! {
            result = &mut feeding, if !feeding_done => {
                feeding_done = true;
                if let Err(e) = result {
                    break Some(e);
                }
            }
            Some(f) = fed.recv() => match f {
                Fed::Mark(offset, cursor) => tracker.positions.handed(offset, cursor),
                Fed::End(at) => end = Some(at),
            },
            Some(p) = progress.recv() => {
                frontier = frontier.max(p.next_offset);
                tracker.advance(frontier);
            }
            _ = tick.tick() => {}
            _ = shutdown.cancelled() => break Some(interrupted()),
        }
        if worker
            .shared
            .blocked
            .load(std::sync::atomic::Ordering::Relaxed)
        {
            break Some(anyhow::anyhow!(
                "a row could not be delivered and DLQ_POLICY=block holds it (see the log above); fix the cause and run the backfill again: it resumes before that row"
            ));
        }
        if !lock.check() {
            break Some(anyhow::anyhow!(
                "lost the backfill's lock (its Kafka session timed out, or another backfill took it); stopping"
            ));
        }
        // Checkpoint whenever it moved: one write at a time, so the writes
        // pace themselves (a write takes a Kafka round trip, while the
        // reports of several deliveries queue up behind it).
        let rows = tracker.done_this_run;
        if rows > saved_at_rows {
            if let Err(e) = tracker.save(false, shutdown).await {
                break Some(e);
            }
            saved_at_rows = rows;
        }
        // A new reason to wait (a throttle, caught up) is shown at once;
        // following, the wait's countdown changes nothing worth a line.
        // The snapshot is built only for a line.
        let (every, changed) = {
            let waiting = tracker.waiting.lock().unwrap_or_else(|e| e.into_inner());
            fn reason(w: &Option<String>) -> Option<&str> {
                w.as_deref().and_then(|w| w.split(';').next())
            }
            let every = match waiting.as_deref() {
                Some(w) if w.starts_with(CAUGHT_UP) => Duration::from_secs(60),
                _ => line_every,
            };
            (every, reason(&waiting) != reason(&shown_waiting))
        };
        if last_line.elapsed() >= every || changed {
            last_line = Instant::now();
            let snapshot = tracker.snapshot();
            shown_waiting = snapshot.waiting.clone();
            report(&snapshot, tty);
        }
    };
    drop(feeding);
    // Stop the worker: at the end it has nothing left; on a failure it
    // finishes what is in flight within SHUTDOWN_TIMEOUT_MS.
    cancel.cancel();
    let deadline = tokio::time::Instant::now() + config.shutdown_timeout;
    if let Some(safe) = worker.stop(deadline).await {
        frontier = frontier.max(safe);
    }
    while let Ok(f) = fed.try_recv() {
        if let Fed::Mark(offset, cursor) = f {
            tracker.positions.handed(offset, cursor);
        }
    }
    while let Ok(p) = progress.try_recv() {
        frontier = frontier.max(p.next_offset);
    }
    tracker.advance(frontier);
    let save_cancel = CancellationToken::new();
    let saving = tracker.save(failure.is_none(), &save_cancel);
    if tokio::time::timeout(Duration::from_secs(30), saving)
        .await
        .is_err()
    {
        warn!("could not write the last checkpoint; a restart resumes from the one before");
    }
    report(&tracker.snapshot(), tty);
    match failure {
        None => {
            let mut totals = tracker.totals();
            totals.overlap = tracker.overlap;
            Ok(totals)
        }
        Some(e) => Err(e),
    }
}

fn report(snapshot: &progress::Snapshot, tty: bool) {
    if tty {
        eprintln!("{}", snapshot.line());
    } else {
        info!(
            done = snapshot.done,
            total = snapshot.total,
            rows_per_s = snapshot.rate().round() as u64,
            eta_s = snapshot.eta().map(|d| d.as_secs()),
            cursor_us = snapshot.cursor_us,
            "{}",
            snapshot.line()
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn retry(retry_for: Duration) -> Retry {
        Retry {
            errors: prometheus::IntCounter::new("errors", "errors").unwrap(),
            throttled: prometheus::Counter::new("throttled", "throttled").unwrap(),
            retry_for,
            location: "POSTHOG_API_URL",
            waiting: Waiting::default(),
        }
    }

    fn throttled(secs: u64) -> SourceError {
        SourceError::Throttled {
            wait: Duration::from_secs(secs),
            message: "429".into(),
        }
    }

    #[test]
    fn a_throttle_waits_as_asked_and_its_wait_is_not_failing_time() {
        let r = retry(Duration::from_millis(300));
        let (mut since, mut attempt) = (None, 0);
        let transient = || SourceError::Transient("502".into());
        assert_eq!(
            r.after(transient(), &mut since, &mut attempt).unwrap(),
            backoff(0)
        );
        std::thread::sleep(Duration::from_millis(200));
        // A 429 between failures: waited as asked, shown, not counted.
        assert_eq!(
            r.after(throttled(1), &mut since, &mut attempt).unwrap(),
            Duration::from_secs(1)
        );
        assert!(r
            .waiting
            .lock()
            .unwrap()
            .as_deref()
            .unwrap()
            .contains("next request in 1 s"));
        std::thread::sleep(Duration::from_secs(1));
        // 200 ms of failing so far: going on.
        assert!(r.after(transient(), &mut since, &mut attempt).is_ok());
        std::thread::sleep(Duration::from_millis(150));
        // 350 ms of failing, throttles between or not: the end, naming the source.
        let e = r.after(transient(), &mut since, &mut attempt).unwrap_err();
        assert!(e.to_string().contains("check POSTHOG_API_URL"), "{e}");
        assert_eq!(r.errors.get(), 3);
        assert_eq!(r.throttled.get(), 1.0);
        // A throttle alone starts no failing clock.
        let mut none = None;
        r.after(throttled(5), &mut none, &mut 0).unwrap();
        assert_eq!(none, None);
        assert_eq!(r.throttled.get(), 6.0);
    }

    #[test]
    fn failures_end_after_retry_for_naming_the_source_and_refusals_at_once() {
        let r = retry(Duration::ZERO);
        let (mut since, mut attempt) = (None, 0);
        let e = r
            .after(
                SourceError::TooSlow("timeout".into()),
                &mut since,
                &mut attempt,
            )
            .unwrap_err();
        assert!(e.to_string().contains("check POSTHOG_API_URL"), "{e}");
        let e = r
            .after(
                SourceError::Refused {
                    option: "POSTHOG_PROJECT_ID",
                    message: "404".into(),
                },
                &mut None,
                &mut 0,
            )
            .unwrap_err();
        assert!(e.to_string().contains("POSTHOG_PROJECT_ID"), "{e}");
    }
}
