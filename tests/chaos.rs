//! Seeded chaos: faults combined on a schedule drawn from a seed, against
//! the real 3-broker cluster, while a producer keeps going.
//!
//! Faults: webhook outages long enough to pause partitions (500 for 10-25 s,
//! with a small `MAX_BUFFERED_BYTES`), slow answers, 429 bursts with
//! `Retry-After: 1`, dropped connections and 503s, answers after the request
//! timeout; replicas joining, leaving (SIGTERM) and SIGKILLed, also during
//! outages (1 to 3 replicas); a broker stopped or killed and started again;
//! partitions added to the topic; a replica restarted with `START_AT=latest`.
//! Replica 1 lives through the whole run and the last changes only remove
//! replicas, so partitions end on a replica that saw every fault: damage that
//! lasts until a restart (a partition left paused) shows at the end.
//!
//! Then the webhook answers 200 and, within `DRAIN`, every invariant must
//! hold: every produced event delivered; every partition committed up to its
//! high watermark; no `patterns_connector_partition_stalled` reading during
//! the drain; no commit sampled during the run past an event the webhook had
//! not received by then; each key's order among first deliveries (the
//! default `ORDERING=key`: several lanes per partition); lag and
//! high-watermark gauges equal to the broker's view; `/healthz` 200 on every
//! surviving replica. Duplicates are counted, not asserted (SIGKILL redelivers).
//!
//! `CHAOS_SEED=<u64>` replays a run's schedule (every run prints its seed,
//! and every failure names it; the schedule, not its exact interleaving with
//! Kafka, so a timing-dependent failure may take a few runs). `CHAOS_SECONDS`
//! (default 90) is how long faults last: `scripts/soak [MINUTES]` runs this
//! test for longer. Needs `KAFKA_CLUSTER_HOSTS` (scripts/test and
//! scripts/soak start the cluster) and `KAFKA_HOSTS` (the harness's broker;
//! scripts/soak points it at the cluster). `CHAOS_KAFKA_DEBUG=cgrp` (one
//! librdkafka `debug` context) adds librdkafka's debug lines to the
//! replicas' logs, to look into a failing seed.

mod common;

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::fmt;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Command, ExitStatus};
use std::sync::atomic::{AtomicBool, AtomicI32, AtomicU8, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use axum::Router;
use common::{metric_values, run_id, unique, Connector};
use rdkafka::admin::{AdminClient, AdminOptions, NewPartitions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::{ClientConfig, Offset, TopicPartitionList};

/// Partitions of the topic at the start; each addition adds 2.
const BASE_PARTITIONS: i32 = 6;
/// Events produced per second.
const RATE: u64 = 200;
/// How long the system gets, once faults stop, to deliver and commit everything:
/// room for a replica stuck in librdkafka's group state just before the end
/// to notice it (30 s of skipped rebalances), exit and be restarted.
const DRAIN: Duration = Duration::from_secs(100);
/// The replicas' request timeout; slow answers stay under it.
const WEBHOOK_TIMEOUT_MS: u64 = 5_000;
/// Replicas running before the faults start.
const INITIAL_REPLICAS: [usize; 2] = [1, 2];
/// The replica that runs from start to end.
const STAYER: usize = 1;
/// How often committed offsets are sampled during the run.
const COMMIT_SAMPLE_EVERY: Duration = Duration::from_secs(3);

const PAUSED: &str = "patterns_connector_partition_paused";
const STALLED: &str = "patterns_connector_partition_stalled";
const LAG_MESSAGES: &str = "patterns_connector_partition_lag_messages";
const LAG_SECONDS: &str = "patterns_connector_partition_lag_seconds";
const HIGH_WATERMARK: &str = "patterns_connector_partition_high_watermark_offset";

// ------------------------------------------------------------ the schedule

/// splitmix64: small, fast, and the same sequence for a seed everywhere.
#[derive(Clone)]
struct SplitMix(u64);

impl SplitMix {
    fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next_u64() % n.max(1)
    }
    /// Uniform in `lo..=hi`.
    fn between(&mut self, lo: u64, hi: u64) -> u64 {
        lo + self.below(hi.saturating_sub(lo) + 1)
    }
    fn percent(&mut self, p: u64) -> bool {
        self.below(100) < p
    }
}

/// A per-request draw: the `n`th request's answer depends on the seed only.
fn draw(seed: u64, n: u64) -> u64 {
    SplitMix(seed ^ n.wrapping_mul(0xA24B_AED4_963E_E407)).next_u64()
}

/// How the webhook answers for a while.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
enum Webhook {
    #[default]
    Healthy,
    /// 500 to every request.
    Outage,
    /// 200 after 1-3 s.
    Slow,
    /// 429 with `Retry-After: 1` to three requests in four.
    Throttled,
    /// One connection in five dropped without an answer, one request in eight 503.
    Flaky,
    /// Half the answers (200) come after the replicas' request timeout.
    PastTimeout,
}

impl fmt::Display for Webhook {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Webhook::Healthy => "webhook healthy (200)",
            Webhook::Outage => "webhook outage (500 to everything)",
            Webhook::Slow => "webhook slow (200 after 1-3 s)",
            Webhook::Throttled => "webhook throttles (429 Retry-After: 1, 3 requests in 4)",
            Webhook::Flaky => {
                "webhook flaky (1 connection in 5 dropped, 1 request in 8 answered 503)"
            }
            Webhook::PastTimeout => "webhook answers half the requests after the request timeout",
        })
    }
}

#[derive(Clone, Debug)]
enum Action {
    Webhook(Webhook),
    Join(usize),
    Leave(usize),
    Kill(usize),
    /// SIGTERM `stop` (if any), start `start` with START_AT=latest.
    RestartLatest {
        stop: Option<usize>,
        start: usize,
    },
    AddPartitions(i32),
    BrokerDown {
        node: u32,
        kill: bool,
    },
    BrokerUp(u32),
}

impl fmt::Display for Action {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Action::Webhook(w) => write!(f, "{w}"),
            Action::Join(r) => write!(f, "replica {r} joins"),
            Action::Leave(r) => write!(f, "replica {r} SIGTERM (leaves)"),
            Action::Kill(r) => write!(f, "replica {r} SIGKILL"),
            Action::RestartLatest {
                stop: Some(stop),
                start,
            } => write!(
                f,
                "replica {stop} SIGTERM; replica {start} starts in its place with START_AT=latest"
            ),
            Action::RestartLatest { stop: None, start } => {
                write!(f, "replica {start} starts with START_AT=latest")
            }
            Action::AddPartitions(n) => write!(f, "partitions added: the topic has {n}"),
            Action::BrokerDown { node, kill } => write!(
                f,
                "broker {node} {}",
                if *kill { "SIGKILL" } else { "SIGTERM (stops)" }
            ),
            Action::BrokerUp(node) => write!(f, "broker {node} starts again"),
        }
    }
}

#[derive(Clone, Debug)]
struct Step {
    at: Duration,
    action: Action,
}

impl fmt::Display for Step {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "t={:.1}s {}", self.at.as_secs_f64(), self.action)
    }
}

/// The schedule for `seed` over `duration` of faults. Pure: the same seed
/// and duration give the same schedule.
fn plan(seed: u64, duration: Duration) -> Vec<Step> {
    let d = duration.as_millis() as u64;
    let mut rng = SplitMix(seed);
    let mut steps = Vec::new();
    let push = |steps: &mut Vec<Step>, ms: u64, action: Action| {
        steps.push(Step {
            at: Duration::from_millis(ms),
            action,
        })
    };

    // Webhook episodes with healthy gaps. The first is always an outage long
    // enough to pause partitions.
    let mut outages = Vec::new();
    let mut t = rng.between(3_000, 8_000);
    while t + 8_000 < d {
        let kind = if outages.is_empty() {
            Webhook::Outage
        } else {
            match rng.below(100) {
                0..=34 => Webhook::Outage,
                35..=54 => Webhook::Slow,
                55..=69 => Webhook::Throttled,
                70..=84 => Webhook::Flaky,
                _ => Webhook::PastTimeout,
            }
        };
        let len = match kind {
            Webhook::Outage if outages.is_empty() => rng.between(15_000, 25_000),
            Webhook::Outage => rng.between(10_000, 25_000),
            Webhook::Slow | Webhook::Flaky => rng.between(6_000, 15_000),
            Webhook::Throttled => rng.between(3_000, 8_000),
            Webhook::PastTimeout | Webhook::Healthy => rng.between(5_000, 12_000),
        };
        let end = (t + len).min(d - 3_000);
        push(&mut steps, t, Action::Webhook(kind));
        push(&mut steps, end, Action::Webhook(Webhook::Healthy));
        if kind == Webhook::Outage {
            outages.push((t, end));
        }
        t = end + rng.between(4_000, 10_000);
    }

    // Replica changes every 8-16 s, one more inside each outage once its
    // partitions have paused, and one restart with START_AT=latest; at least
    // 4 s apart, so each rebalance has begun before the next change. The
    // stayer is never stopped, and the last changes only remove replicas:
    // partitions come back to the replica that lived through everything, so
    // damage that lasts until a restart (a partition left paused, a stuck
    // worker) shows at the end.
    #[derive(PartialEq, Eq, PartialOrd, Ord)]
    enum When {
        Any,
        InOutage,
        Latest,
    }
    let mut times: Vec<(u64, When)> = Vec::new();
    let mut t = rng.between(8_000, 15_000);
    while t + 3_000 < d {
        times.push((t, When::Any));
        t += rng.between(8_000, 16_000);
    }
    for (start, end) in &outages {
        times.push((rng.between(start + 6_000, end - 3_000), When::InOutage));
    }
    times.push((rng.between(d * 50 / 100, d * 70 / 100), When::Latest));
    times.sort_unstable();
    let mut spaced: Vec<(u64, When)> = Vec::new();
    for (t, when) in times {
        // The START_AT=latest restart is never dropped, only kept in order.
        let gap = if when == When::Latest { 0 } else { 4_000 };
        let t = spaced
            .last()
            .map_or(t, |(previous, _)| t.max(previous + gap));
        if t + 3_000 < d || when == When::Latest {
            spaced.push((t, when));
        }
    }
    let late = d - (d / 4).min(30_000);
    let mut alive = INITIAL_REPLICAS.to_vec();
    let mut next = INITIAL_REPLICAS.len() + 1;
    for (t, when) in spaced {
        let others: Vec<usize> = alive.iter().copied().filter(|r| *r != STAYER).collect();
        let victim = (!others.is_empty()).then(|| others[rng.below(others.len() as u64) as usize]);
        let roll = rng.below(100);
        let join = match when {
            When::Latest => false,
            // During an outage a replica joins (taking paused partitions
            // from the others) or, with three already, one goes.
            When::InOutage => alive.len() < 3 && t < late,
            When::Any => alive.len() < 3 && t < late && (victim.is_none() || roll < 40),
        };
        if when == When::Latest {
            alive.retain(|r| Some(*r) != victim);
            alive.push(next);
            push(
                &mut steps,
                t,
                Action::RestartLatest {
                    stop: victim,
                    start: next,
                },
            );
            next += 1;
        } else if join {
            alive.push(next);
            push(&mut steps, t, Action::Join(next));
            next += 1;
        } else if let Some(v) = victim {
            alive.retain(|r| *r != v);
            let action = if rng.percent(50) {
                Action::Leave(v)
            } else {
                Action::Kill(v)
            };
            push(&mut steps, t, action);
        }
    }

    // Partitions added (2 at a time) between 15 % and 45 % of the run.
    let adds = 1 + d / 400_000;
    let (lo, hi) = (d * 15 / 100, d * 45 / 100);
    let slot = (hi - lo) / adds;
    for i in 0..adds {
        let partitions = BASE_PARTITIONS + 2 * (i as i32 + 1);
        push(
            &mut steps,
            lo + i * slot + rng.below(slot),
            Action::AddPartitions(partitions),
        );
    }

    // Broker restarts, one at a time, done well before the faults end.
    let restarts = 1 + d / 300_000;
    let lo = d * 20 / 100;
    let hi = (d * 90 / 100).saturating_sub(25_000).max(lo + 1_000);
    let slot = (hi - lo) / restarts;
    for i in 0..restarts {
        let down = lo + i * slot + rng.below(slot.saturating_sub(20_000).max(1));
        let node = rng.between(1, 3) as u32;
        let kill = rng.percent(50);
        push(&mut steps, down, Action::BrokerDown { node, kill });
        push(
            &mut steps,
            (down + rng.between(8_000, 15_000)).min(d - 10_000),
            Action::BrokerUp(node),
        );
    }

    steps.sort_by_key(|s| s.at);
    steps
}

// ------------------------------------------------------------ the webhook

#[derive(Default)]
struct ReceiverState {
    mode: Webhook,
    seed: u64,
    requests: u64,
    /// Uuids of the events of every 2xx answer, in the order the answers were
    /// decided (each recorded before its answer is sent).
    delivered: Vec<String>,
    /// Answers by kind: "200", "500", "429", "dropped", ...
    answers: BTreeMap<String, u64>,
}

/// A webhook receiver whose answers follow the schedule's current mode, and
/// that keeps only the delivered uuids (cheap to snapshot by length).
#[derive(Clone)]
struct Receiver {
    addr: SocketAddr,
    state: Arc<Mutex<ReceiverState>>,
}

#[derive(serde::Deserialize)]
struct UuidOnly {
    uuid: String,
}

impl Receiver {
    async fn start(seed: u64) -> Self {
        let state = Arc::new(Mutex::new(ReceiverState {
            seed,
            ..ReceiverState::default()
        }));
        let app = Router::new()
            .route("/{*path}", post(receive))
            .with_state(state.clone());
        Receiver {
            addr: common::serve(app).await,
            state,
        }
    }

    fn url(&self) -> String {
        format!("http://{}/api/app/webhooks/SECRET-TOKEN-chaos", self.addr)
    }

    fn set(&self, mode: Webhook) {
        self.state.lock().expect("lock").mode = mode;
    }

    fn delivered_len(&self) -> usize {
        self.state.lock().expect("lock").delivered.len()
    }

    /// Delivered uuids from index `from` on.
    fn delivered_since(&self, from: usize) -> Vec<String> {
        let s = self.state.lock().expect("lock");
        s.delivered[from.min(s.delivered.len())..].to_vec()
    }

    fn answers(&self) -> BTreeMap<String, u64> {
        self.state.lock().expect("lock").answers.clone()
    }
}

async fn receive(
    State(state): State<Arc<Mutex<ReceiverState>>>,
    body: axum::body::Bytes,
) -> Response {
    let Ok(events) = serde_json::from_slice::<Vec<UuidOnly>>(&body) else {
        let mut s = state.lock().expect("lock");
        *s.answers.entry("400 unparseable".into()).or_default() += 1;
        return StatusCode::BAD_REQUEST.into_response();
    };
    let (status, delay, retry_after) = {
        let mut s = state.lock().expect("lock");
        let r = draw(s.seed, s.requests);
        s.requests += 1;
        let answer = match s.mode {
            Webhook::Healthy => (200, 0, false),
            Webhook::Outage => (500, 0, false),
            Webhook::Slow => (200, 1_000 + r % 2_001, false),
            Webhook::Throttled if r % 4 != 0 => (429, 0, true),
            Webhook::Throttled => (200, 0, false),
            Webhook::Flaky if r % 5 == 0 => (0, 0, false),
            Webhook::Flaky if r % 8 == 1 => (503, 0, false),
            Webhook::Flaky => (200, 0, false),
            Webhook::PastTimeout if r % 2 == 0 => {
                (200, WEBHOOK_TIMEOUT_MS + 500 + r % 2_000, false)
            }
            Webhook::PastTimeout => (200, 0, false),
        };
        let key = match answer.0 {
            0 => "dropped".to_owned(),
            200 if answer.1 > WEBHOOK_TIMEOUT_MS => "200 after the timeout".to_owned(),
            200 if answer.1 > 0 => "200 slow".to_owned(),
            status => status.to_string(),
        };
        *s.answers.entry(key).or_default() += 1;
        if answer.0 == 0 {
            drop(s);
            // Unwinding out of the handler makes hyper close the connection
            // without an answer: what a crashing proxy does.
            std::panic::resume_unwind(Box::new("receiver drops the connection"));
        }
        answer
    };
    if delay > 0 {
        tokio::time::sleep(Duration::from_millis(delay)).await;
    }
    if status == 200 {
        let mut s = state.lock().expect("lock");
        s.delivered.extend(events.into_iter().map(|e| e.uuid));
    }
    let status = StatusCode::from_u16(status).expect("valid status");
    if retry_after {
        (status, [("retry-after", "1")]).into_response()
    } else {
        status.into_response()
    }
}

// ------------------------------------------------------------ Kafka helpers

fn cluster() -> String {
    std::env::var("KAFKA_CLUSTER_HOSTS").expect(
        "KAFKA_CLUSTER_HOSTS names no 3-broker cluster: run the suite with scripts/test (or scripts/soak), which starts one",
    )
}

fn kafka_local(args: &[&str]) -> bool {
    Command::new(concat!(env!("CARGO_MANIFEST_DIR"), "/scripts/kafka-local"))
        .args(args)
        .status()
        .is_ok_and(|s| s.success())
}

fn client(hosts: &str) -> ClientConfig {
    let mut c = ClientConfig::new();
    c.set("bootstrap.servers", hosts);
    c
}

/// Grows `topic` to `partitions`, asking again (with a fresh client, in case
/// it was talking to a broker that went down) for up to 2 minutes.
async fn add_partitions(hosts: &str, topic: &str, partitions: i32) -> Result<(), String> {
    let deadline = Instant::now() + Duration::from_secs(120);
    let opts = AdminOptions::new()
        .operation_timeout(Some(Duration::from_secs(10)))
        .request_timeout(Some(Duration::from_secs(15)));
    loop {
        let admin: AdminClient<DefaultClientContext> = client(hosts).create().expect("admin");
        let result = admin
            .create_partitions(&[NewPartitions::new(topic, partitions as usize)], &opts)
            .await
            .map_err(|e| e.to_string())
            .and_then(|results| {
                results
                    .into_iter()
                    .try_for_each(|r| r.map(|_| ()).map_err(|(_, e)| e.to_string()))
            });
        let Err(e) = result else { return Ok(()) };
        // An attempt that timed out may have succeeded.
        let consumer: BaseConsumer = client(hosts).create().expect("consumer");
        let count = tokio::task::block_in_place(|| {
            consumer
                .fetch_metadata(Some(topic), Duration::from_secs(10))
                .ok()
                .and_then(|m| m.topics().first().map(|t| t.partitions().len()))
        });
        if count.is_some_and(|c| c >= partitions as usize) {
            return Ok(());
        }
        if Instant::now() > deadline {
            return Err(format!("adding partitions to {partitions} failed: {e}"));
        }
        println!("chaos: adding partitions failed ({e}); asking again");
        tokio::time::sleep(Duration::from_secs(2)).await;
    }
}

/// The broker the schedule stopped and has not started again: started on
/// drop, so a run that fails midway leaves the cluster whole.
#[derive(Default)]
struct StoppedBroker(Arc<Mutex<Option<String>>>);

impl Drop for StoppedBroker {
    fn drop(&mut self) {
        let stopped = self.0.lock().map(|mut b| b.take()).unwrap_or_default();
        if let Some(node) = stopped {
            eprintln!("chaos: starting broker {node} again");
            kafka_local(&["cluster", "start-broker", &node]);
        }
    }
}

/// Reads the group's committed offsets for partitions `0..partitions`.
fn committed(consumer: &BaseConsumer, topic: &str, partitions: i32) -> Option<Vec<Option<i64>>> {
    let mut tpl = TopicPartitionList::new();
    for p in 0..partitions {
        tpl.add_partition(topic, p);
    }
    let committed = patterns_connector::kafka::read::retrying("committed offsets", || {
        consumer.committed_offsets(tpl.clone(), Duration::from_secs(10))
    })
    .ok()?;
    Some(
        (0..partitions)
            .map(
                |p| match committed.find_partition(topic, p).map(|e| e.offset()) {
                    Some(Offset::Offset(o)) => Some(o),
                    _ => None,
                },
            )
            .collect(),
    )
}

fn high_watermarks(consumer: &BaseConsumer, topic: &str, partitions: i32) -> Option<Vec<i64>> {
    (0..partitions)
        .map(|p| {
            patterns_connector::kafka::read::retrying("watermarks", || {
                consumer.fetch_watermarks(topic, p, Duration::from_secs(10))
            })
            .ok()
            .map(|(_, high)| high)
        })
        .collect()
}

/// Where one produced event went.
#[derive(Clone, Debug)]
struct Sent {
    uuid: String,
    key: String,
    partition: i32,
    offset: i64,
}

/// Produces sample events at `RATE` per second (acks=all, idempotent) until stopped.
struct SteadyProducer {
    stop: Arc<AtomicBool>,
    sent: Arc<Mutex<Vec<Sent>>>,
    errors: Arc<Mutex<Vec<String>>>,
    task: tokio::task::JoinHandle<Vec<tokio::task::JoinHandle<()>>>,
}

impl SteadyProducer {
    fn start(hosts: &str, topic: &str) -> Self {
        let producer: FutureProducer = client(hosts)
            .set("enable.idempotence", "true")
            .set("acks", "all")
            .set("linger.ms", "5")
            // Added partitions get events within seconds, not librdkafka's 5 minutes.
            .set("topic.metadata.refresh.interval.ms", "3000")
            .create()
            .expect("producer");
        let stop = Arc::new(AtomicBool::new(false));
        let sent: Arc<Mutex<Vec<Sent>>> = Arc::default();
        let errors: Arc<Mutex<Vec<String>>> = Arc::default();
        let (stop2, sent2, errors2, topic) =
            (stop.clone(), sent.clone(), errors.clone(), topic.to_owned());
        let task = tokio::spawn(async move {
            let run = run_id();
            let started = tokio::time::Instant::now();
            let mut pending = Vec::new();
            let mut n = 0u64;
            while !stop2.load(Ordering::Relaxed) {
                let sample =
                    patterns_connector::event::sample::captured(run, n, &common::now_timestamp());
                // Enqueued here, in order; the acknowledgement is awaited apart,
                // so a broker restart slows acknowledgements, not the rate.
                let delivery = loop {
                    let record = FutureRecord::to(&topic)
                        .key(&sample.key)
                        .payload(&sample.value);
                    match producer.send_result(record) {
                        Ok(delivery) => break delivery,
                        Err((e, _)) => {
                            errors2.lock().expect("lock").push(format!("enqueue: {e}"));
                            tokio::time::sleep(Duration::from_millis(100)).await;
                        }
                    }
                };
                let (sent, errors) = (sent2.clone(), errors2.clone());
                let (uuid, key) = (sample.uuid, sample.key);
                pending.push(tokio::spawn(async move {
                    match delivery.await {
                        Ok(Ok(d)) => sent.lock().expect("lock").push(Sent {
                            uuid,
                            key,
                            partition: d.partition,
                            offset: d.offset,
                        }),
                        Ok(Err((e, _))) => {
                            errors.lock().expect("lock").push(format!("{uuid}: {e}"))
                        }
                        Err(_) => errors
                            .lock()
                            .expect("lock")
                            .push(format!("{uuid}: canceled")),
                    }
                }));
                n += 1;
                tokio::time::sleep_until(started + Duration::from_secs_f64(n as f64 / RATE as f64))
                    .await;
            }
            pending
        });
        SteadyProducer {
            stop,
            sent,
            errors,
            task,
        }
    }

    /// Stops, waits for every acknowledgement, returns what was sent and the errors.
    async fn stop(self) -> (Vec<Sent>, Vec<String>) {
        self.stop.store(true, Ordering::Relaxed);
        for pending in self.task.await.expect("producer task") {
            pending.await.expect("acknowledgement task");
        }
        let sent = self.sent.lock().expect("lock").clone();
        let errors = self.errors.lock().expect("lock").clone();
        (sent, errors)
    }
}

// ------------------------------------------------------------ observations

const SETUP: u8 = 0;
const FAULTS: u8 = 1;
const DRAINING: u8 = 2;

/// What the /metrics scrapes saw.
#[derive(Default)]
struct Seen {
    scrapes: u64,
    /// Last paused value per (replica, partition), to count pause episodes.
    paused: HashMap<(usize, String), bool>,
    pause_episodes: u64,
    max_lag_seconds: f64,
    stall_metric_present: bool,
    /// (t, phase, replica, partition) of every stalled=1 reading.
    stall_readings: Vec<(f64, u8, usize, String)>,
}

fn partition_label(labels: &str) -> String {
    common::partition_of(labels).unwrap_or("?").to_owned()
}

impl Seen {
    fn scrape(&mut self, t: f64, phase: u8, replica: usize, text: &str) {
        if text.is_empty() {
            return;
        }
        self.scrapes += 1;
        for (labels, v) in metric_values(text, PAUSED) {
            let now = v == 1.0;
            let before = self
                .paused
                .insert((replica, partition_label(&labels)), now)
                .unwrap_or(false);
            if now && !before {
                self.pause_episodes += 1;
            }
        }
        for (_, v) in metric_values(text, LAG_SECONDS) {
            self.max_lag_seconds = self.max_lag_seconds.max(v);
        }
        if text.contains(STALLED) {
            self.stall_metric_present = true;
        }
        for (labels, v) in metric_values(text, STALLED) {
            if v >= 1.0 {
                self.stall_readings
                    .push((t, phase, replica, partition_label(&labels)));
            }
        }
    }
}

/// A commit read during the run, and how many deliveries the receiver had
/// recorded just after it was read.
struct CommitSample {
    at: f64,
    commits: Vec<Option<i64>>,
    delivered_len: usize,
}

async fn get(http: &reqwest::Client, addr: SocketAddr, path: &str) -> Option<(u16, String)> {
    let r = http.get(format!("http://{addr}{path}")).send().await.ok()?;
    let status = r.status().as_u16();
    Some((status, r.text().await.unwrap_or_default()))
}

// ------------------------------------------------------------ replicas

struct Replicas {
    topic: String,
    group: String,
    url: String,
    dlq: String,
    cluster: String,
    live: BTreeMap<usize, Connector>,
    latest: BTreeSet<usize>,
    logs: BTreeMap<usize, PathBuf>,
    /// HTTP addresses of live replicas, for the scrapers.
    addrs: Arc<Mutex<BTreeMap<usize, SocketAddr>>>,
    /// Replicas sent SIGTERM: their exit, awaited apart.
    leaving: Vec<tokio::task::JoinHandle<(usize, Option<ExitStatus>)>>,
    starts: u64,
    terms: u64,
    kills: u64,
    /// The group protocol of this run (`KAFKA_GROUP_PROTOCOL`).
    protocol: &'static str,
    /// Replicas that exited on their own because librdkafka's group state
    /// was stuck (`src/kafka/wedge.rs`), restarted as an orchestrator would.
    wedge_restarts: u64,
    /// Any other exit nobody asked for: a failure.
    unexpected_exits: Vec<String>,
    /// The logs of replicas' earlier lives (before a restart).
    retired_logs: Vec<(usize, PathBuf)>,
}

impl Replicas {
    fn start(&mut self, id: usize, latest: bool) {
        // Fast failure detection: a killed replica's partitions move in
        // seconds (under the new protocol the brokers set it: 6 s too,
        // scripts/kafka-local's cluster).
        let mut properties = match self.protocol {
            "classic" => "session.timeout.ms=6000,heartbeat.interval.ms=1000,",
            _ => "",
        }
        .to_owned()
            + "topic.metadata.refresh.interval.ms=3000";
        // CHAOS_KAFKA_DEBUG=cgrp (say) puts librdkafka's debug lines in the replicas' logs.
        if let Ok(debug) = std::env::var("CHAOS_KAFKA_DEBUG") {
            if !debug.is_empty() {
                properties += &format!(",debug={debug}");
            }
        }
        let timeout = WEBHOOK_TIMEOUT_MS.to_string();
        let mut env = vec![
            ("KAFKA_HOSTS", self.cluster.as_str()),
            ("DLQ_TOPIC", self.dlq.as_str()),
            ("KAFKA_PROPERTIES", properties.as_str()),
            ("KAFKA_GROUP_PROTOCOL", self.protocol),
            // 1 MiB (the least allowed) shared by a replica's partitions:
            // an outage of seconds fills a share, so partitions pause.
            ("MAX_BUFFERED_BYTES", "1048576"),
            // Three batches fit in a share even with 8 partitions on one replica.
            ("BATCH_MAX_BYTES", "40000"),
            ("BATCH_LINGER_MS", "100"),
            ("WEBHOOK_TIMEOUT_MS", timeout.as_str()),
            ("RETRY_BACKOFF_MIN_MS", "100"),
            ("RETRY_BACKOFF_MAX_MS", "2000"),
            ("SHUTDOWN_TIMEOUT_MS", "5000"),
            ("LOG_FORMAT", "json"),
        ];
        if properties.contains(",debug=") {
            env.push((
                "LOG_LEVEL",
                "info,patterns_connector::kafka::connection=debug",
            ));
        }
        if latest {
            env.push(("START_AT", "latest"));
            self.latest.insert(id);
        }
        let c = Connector::start(&self.topic, &self.group, &self.url, &env);
        self.addrs.lock().expect("lock").insert(id, c.http);
        self.logs.insert(id, c.log.clone());
        self.live.insert(id, c);
        self.starts += 1;
    }

    /// Restarts, as Kubernetes would, every replica that exited on its own.
    fn revive_exited(&mut self) {
        let exited: Vec<(usize, ExitStatus)> = self
            .live
            .iter_mut()
            .filter_map(|(id, c)| c.exited().map(|status| (*id, status)))
            .collect();
        for (id, status) in exited {
            let log = self.logs.get(&id).cloned().unwrap_or_default();
            let text = std::fs::read_to_string(&log).unwrap_or_default();
            if !status.success() && text.contains("librdkafka has skipped every rebalance") {
                println!("chaos: replica {id} exited ({status}): librdkafka's group state was stuck; restarting it");
                self.wedge_restarts += 1;
            } else {
                self.unexpected_exits.push(format!(
                    "replica {id} exited on its own with {status} (log: {})",
                    log.display()
                ));
            }
            self.take(id);
            self.retired_logs.push((id, log));
            let latest = self.latest.contains(&id);
            self.start(id, latest);
        }
    }

    fn take(&mut self, id: usize) -> Option<Connector> {
        self.addrs.lock().expect("lock").remove(&id);
        self.live.remove(&id)
    }

    fn terminate(&mut self, id: usize) {
        let Some(mut c) = self.take(id) else { return };
        c.signal("TERM");
        self.terms += 1;
        self.leaving.push(tokio::spawn(async move {
            // SHUTDOWN_TIMEOUT_MS is 5 s; this is far beyond it.
            let status =
                tokio::time::timeout(Duration::from_secs(50), c.wait(Duration::from_secs(3600)))
                    .await
                    .ok();
            (id, status)
        }));
    }

    async fn kill(&mut self, id: usize) {
        let Some(mut c) = self.take(id) else { return };
        c.signal("KILL");
        self.kills += 1;
        c.wait(Duration::from_secs(10)).await;
    }
}

/// Counts of a log's warning and error messages (and pauses), by message.
fn log_digest(path: &PathBuf) -> BTreeMap<String, u64> {
    let mut out = BTreeMap::new();
    for line in std::fs::read_to_string(path).unwrap_or_default().lines() {
        let Ok(v) = serde_json::from_str::<serde_json::Value>(line) else {
            if line.contains("panicked") {
                *out.entry(format!("PANIC {line}")).or_default() += 1;
            }
            continue;
        };
        let level = v["level"].as_str().unwrap_or("");
        let message = v["message"].as_str().unwrap_or("");
        // Pauses are counted from the log too: scrapes every second miss short ones.
        if level == "WARN" || level == "ERROR" || message.starts_with("partition paused") {
            *out.entry(format!("{level} {message}")).or_default() += 1;
        }
    }
    out
}

// ------------------------------------------------------------ the test

#[tokio::test(flavor = "multi_thread")]
async fn seeded_fault_combinations_lose_nothing_stall_nothing_and_commit_only_what_was_delivered() {
    let wall = Instant::now();
    let seed: u64 = match std::env::var("CHAOS_SEED") {
        Ok(s) if !s.trim().is_empty() => s.trim().parse().expect("CHAOS_SEED is a u64"),
        _ => {
            let t = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .expect("clock after 1970");
            t.as_nanos() as u64 ^ u64::from(std::process::id()).rotate_left(32)
        }
    };
    let seconds: u64 = std::env::var("CHAOS_SECONDS")
        .ok()
        .filter(|s| !s.trim().is_empty())
        .map(|s| {
            s.trim()
                .parse()
                .expect("CHAOS_SECONDS is a number of seconds")
        })
        .unwrap_or(90);
    assert!(seconds >= 30, "CHAOS_SECONDS must be at least 30");
    let duration = Duration::from_secs(seconds);
    // Both group protocols, one per seed (CHAOS_PROTOCOL chooses).
    let protocol: &'static str = match std::env::var("CHAOS_PROTOCOL").as_deref() {
        Ok("classic") => "classic",
        Ok("consumer") => "consumer",
        Ok(other) if !other.is_empty() => {
            panic!("CHAOS_PROTOCOL is classic or consumer, not {other}")
        }
        _ if seed % 2 == 0 => "classic",
        _ => "consumer",
    };
    let schedule = plan(seed, duration);
    let schedule_text: String = schedule.iter().map(|s| format!("  {s}\n")).collect();
    println!("chaos: seed {seed} (replay with CHAOS_SEED={seed}), {seconds} s of faults, group protocol {protocol}; schedule:\n{schedule_text}");
    let context = format!(
        "chaos seed {seed} (replay: CHAOS_SEED={seed} CHAOS_SECONDS={seconds}); schedule:\n{schedule_text}"
    );
    assert!(
        std::env::var("KAFKA_HOSTS").is_ok_and(|h| !h.is_empty()),
        "{context}KAFKA_HOSTS is unset: run through scripts/test or scripts/soak (the harness needs it; the replicas use KAFKA_CLUSTER_HOSTS)"
    );

    // A topic replicated 3 times on the cluster, and its dead-letter topic.
    let hosts = cluster();
    let (topic, group, dlq) = (unique("chaos"), unique("g"), unique("chaos-dlq"));
    let admin: AdminClient<DefaultClientContext> = client(&hosts).create().expect("admin");
    let opts = AdminOptions::new().operation_timeout(Some(Duration::from_secs(30)));
    for (t, partitions) in [(&topic, BASE_PARTITIONS), (&dlq, 1)] {
        for r in admin
            .create_topics(
                &[NewTopic::new(t, partitions, TopicReplication::Fixed(3))],
                &opts,
            )
            .await
            .unwrap_or_else(|e| panic!("{context}create_topics: {e}"))
        {
            r.unwrap_or_else(|e| panic!("{context}topic not created: {e:?}"));
        }
    }
    let partitions = Arc::new(AtomicI32::new(BASE_PARTITIONS));
    let receiver = Receiver::start(seed).await;
    let producer = SteadyProducer::start(&hosts, &topic);
    let mut replicas = Replicas {
        topic: topic.clone(),
        group: group.clone(),
        url: receiver.url(),
        dlq: dlq.clone(),
        cluster: hosts.clone(),
        live: BTreeMap::new(),
        latest: BTreeSet::new(),
        logs: BTreeMap::new(),
        addrs: Arc::default(),
        leaving: Vec::new(),
        starts: 0,
        terms: 0,
        kills: 0,
        protocol,
        wedge_restarts: 0,
        unexpected_exits: Vec::new(),
        retired_logs: Vec::new(),
    };
    for id in INITIAL_REPLICAS {
        replicas.start(id, false);
    }

    // Scrapes every live replica's /metrics every second.
    let phase = Arc::new(AtomicU8::new(SETUP));
    let seen: Arc<Mutex<Seen>> = Arc::default();
    let t0 = Arc::new(Mutex::new(Instant::now()));
    let http = reqwest::Client::builder()
        .timeout(Duration::from_secs(3))
        .build()
        .expect("http client");
    let stop_watching = Arc::new(AtomicBool::new(false));
    let scraper = {
        let (addrs, seen, phase, t0, http, stop) = (
            replicas.addrs.clone(),
            seen.clone(),
            phase.clone(),
            t0.clone(),
            http.clone(),
            stop_watching.clone(),
        );
        tokio::spawn(async move {
            while !stop.load(Ordering::Relaxed) {
                let targets: Vec<(usize, SocketAddr)> = addrs
                    .lock()
                    .expect("lock")
                    .iter()
                    .map(|(i, a)| (*i, *a))
                    .collect();
                for (id, addr) in targets {
                    let text = get(&http, addr, "/metrics")
                        .await
                        .map(|r| r.1)
                        .unwrap_or_default();
                    let t = t0.lock().expect("lock").elapsed().as_secs_f64();
                    seen.lock()
                        .expect("lock")
                        .scrape(t, phase.load(Ordering::Relaxed), id, &text);
                }
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
        })
    };

    // Wait for the replicas to own every partition and deliver.
    let setup_deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let mut owned = 0;
        for c in replicas.live.values() {
            let text = c.metrics().await;
            owned += metric_values(&text, "patterns_connector_assigned_partitions")
                .first()
                .map_or(0, |(_, v)| *v as i32);
        }
        if owned == BASE_PARTITIONS && receiver.delivered_len() >= 200 {
            break;
        }
        if Instant::now() > setup_deadline {
            let logs: String = replicas
                .logs
                .values()
                .map(|p| {
                    let text = std::fs::read_to_string(p).unwrap_or_default();
                    let head: String = text.chars().take(2000).collect();
                    format!("{}:\n{head}\n", p.display())
                })
                .collect();
            panic!(
                "{context}setup: the replicas did not take the {BASE_PARTITIONS} partitions and deliver within 60 s ({owned} owned, {} delivered)\n{logs}",
                receiver.delivered_len()
            );
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    let first_log =
        std::fs::read_to_string(&replicas.logs[&INITIAL_REPLICAS[0]]).unwrap_or_default();
    assert!(
        first_log.contains(hosts.split(',').next().expect("a host")),
        "{context}the replica's log does not name the cluster: KAFKA_HOSTS was not overridden?"
    );
    println!(
        "chaos: setup done in {:.1}s; faults start",
        wall.elapsed().as_secs_f64()
    );

    // Samples committed offsets, then the receiver's deliveries, every few seconds.
    let samples: Arc<Mutex<Vec<CommitSample>>> = Arc::default();
    let sampler = {
        let (samples, receiver, partitions, t0, stop) = (
            samples.clone(),
            receiver.clone(),
            partitions.clone(),
            t0.clone(),
            stop_watching.clone(),
        );
        let consumer: BaseConsumer = client(&hosts)
            .set("group.id", &group)
            .set("enable.auto.commit", "false")
            .create()
            .expect("consumer");
        let topic = topic.clone();
        std::thread::spawn(move || {
            let mut failed = 0u64;
            while !stop.load(Ordering::Relaxed) {
                std::thread::sleep(COMMIT_SAMPLE_EVERY);
                let n = partitions.load(Ordering::Relaxed);
                let at = t0.lock().expect("lock").elapsed().as_secs_f64();
                // The commit first, then the deliveries: every delivery the
                // commit relied on was recorded before the commit was read,
                // so it is in the snapshot (which may hold a few more).
                match committed(&consumer, &topic, n) {
                    Some(commits) => {
                        let delivered_len = receiver.delivered_len();
                        samples.lock().expect("lock").push(CommitSample {
                            at,
                            commits,
                            delivered_len,
                        });
                    }
                    None => failed += 1,
                }
            }
            failed
        })
    };

    // ---------------------------------------------------------- faults
    *t0.lock().expect("lock") = Instant::now();
    let start = *t0.lock().expect("lock");
    phase.store(FAULTS, Ordering::Relaxed);
    let mut notes: Vec<String> = Vec::new();
    let mut outages = 0;
    let mut broker_down: Option<tokio::task::JoinHandle<bool>> = None;
    let mut broker_up: Option<tokio::task::JoinHandle<bool>> = None;
    let mut adding: Option<tokio::task::JoinHandle<Result<(), String>>> = None;
    let stopped_broker = StoppedBroker::default();
    let sample_client: BaseConsumer = client(&hosts)
        .set("group.id", &group)
        .set("enable.auto.commit", "false")
        .create()
        .expect("consumer");
    for step in &schedule {
        tokio::time::sleep_until((start + step.at).into()).await;
        replicas.revive_exited();
        println!(
            "chaos: t={:.1}s {}",
            start.elapsed().as_secs_f64(),
            step.action
        );
        match &step.action {
            Action::Webhook(mode) => {
                if *mode == Webhook::Outage {
                    outages += 1;
                }
                receiver.set(*mode);
            }
            Action::Join(id) => replicas.start(*id, false),
            Action::Leave(id) => replicas.terminate(*id),
            Action::Kill(id) => replicas.kill(*id).await,
            Action::RestartLatest { stop, start: id } => {
                // The group has commits, so START_AT must not apply to any
                // partition, not even one added since that has none yet.
                let n = partitions.load(Ordering::Relaxed);
                let commits = tokio::task::block_in_place(|| committed(&sample_client, &topic, n));
                let uncommitted: Vec<i32> = match &commits {
                    Some(c) => (0..n).filter(|p| c[*p as usize].is_none()).collect(),
                    None => Vec::new(),
                };
                if !uncommitted.is_empty() {
                    let note = format!(
                        "partitions {uncommitted:?} had no commit yet when replica {id} started with START_AT=latest"
                    );
                    println!("chaos: {note}");
                    notes.push(note);
                }
                if let Some(stop) = stop {
                    replicas.terminate(*stop);
                }
                replicas.start(*id, true);
            }
            Action::AddPartitions(n) => {
                // In the background: with a broker down it can take a while.
                if let Some(previous) = adding.take() {
                    previous
                        .await
                        .expect("partition task")
                        .unwrap_or_else(|e| panic!("{context}{e}"));
                }
                let (hosts, topic, partitions, n) =
                    (hosts.clone(), topic.clone(), partitions.clone(), *n);
                adding = Some(tokio::spawn(async move {
                    add_partitions(&hosts, &topic, n).await?;
                    partitions.store(n, Ordering::Relaxed);
                    println!("chaos: the topic has {n} partitions");
                    Ok(())
                }));
            }
            Action::BrokerDown { node, kill } => {
                // One broker down at a time: the previous one must be back.
                if let Some(up) = broker_up.take() {
                    assert!(
                        up.await.expect("broker task"),
                        "{context}restarting a broker failed"
                    );
                }
                let (node, verb) = (
                    node.to_string(),
                    if *kill { "kill-broker" } else { "stop-broker" },
                );
                *stopped_broker.0.lock().expect("lock") = Some(node.clone());
                broker_down = Some(tokio::task::spawn_blocking(move || {
                    kafka_local(&["cluster", verb, &node])
                }));
            }
            Action::BrokerUp(node) => {
                if let Some(down) = broker_down.take() {
                    assert!(
                        down.await.expect("broker task"),
                        "{context}stopping broker {node} failed"
                    );
                }
                let (node, stopped) = (node.to_string(), stopped_broker.0.clone());
                broker_up = Some(tokio::task::spawn_blocking(move || {
                    let started = kafka_local(&["cluster", "start-broker", &node]);
                    if started {
                        stopped.lock().expect("lock").take();
                    }
                    started
                }));
            }
        }
    }
    tokio::time::sleep_until((start + duration).into()).await;
    replicas.revive_exited();

    // ---------------------------------------------------------- drain
    receiver.set(Webhook::Healthy);
    phase.store(DRAINING, Ordering::Relaxed);
    let faults_end = start.elapsed().as_secs_f64();
    println!("chaos: t={faults_end:.1}s faults stop; the webhook answers 200");
    if let Some(previous) = adding.take() {
        previous
            .await
            .expect("partition task")
            .unwrap_or_else(|e| panic!("{context}{e}"));
    }
    if let Some(up) = broker_up.take() {
        assert!(
            up.await.expect("broker task"),
            "{context}restarting the broker failed"
        );
    }
    let drain_start = Instant::now();
    let (sent, producer_errors) = producer.stop().await;
    let n = partitions.load(Ordering::Relaxed);
    let position: HashMap<&str, (i32, &str, i64)> = sent
        .iter()
        .map(|s| (s.uuid.as_str(), (s.partition, s.key.as_str(), s.offset)))
        .collect();
    let mut delivered_set: HashSet<String> = HashSet::new();
    let mut delivered_read = 0;
    let (drained, last) = loop {
        for uuid in receiver.delivered_since(delivered_read) {
            delivered_read += 1;
            delivered_set.insert(uuid);
        }
        let view = drain_view(
            &sample_client,
            &topic,
            n,
            &sent,
            &delivered_set,
            &replicas,
            &http,
        )
        .await;
        if view.settled() {
            break (true, view);
        }
        if drain_start.elapsed() > DRAIN {
            break (false, view);
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
        replicas.revive_exited();
    };
    let drain_seconds = drain_start.elapsed().as_secs_f64();

    // ---------------------------------------------------------- verdict
    let mut failures: Vec<String> = Vec::new();
    if !drained {
        failures.push(format!(
            "not drained within {DRAIN:?} after the faults stopped:\n{}",
            last.describe()
        ));
    }
    failures.extend(replicas.unexpected_exits.iter().cloned());
    let mut healthz = Vec::new();
    for (id, c) in &replicas.live {
        match get(&http, c.http, "/healthz").await {
            Some((200, _)) => healthz.push(format!("replica {id}: 200")),
            other => failures.push(format!("replica {id}: /healthz answered {other:?}")),
        }
    }
    stop_watching.store(true, Ordering::Relaxed);
    scraper.await.expect("scraper");
    let sample_failures = sampler.join().expect("sampler");
    for leaving in std::mem::take(&mut replicas.leaving) {
        match leaving.await.expect("SIGTERM waiter") {
            (_, Some(status)) if status.success() => {}
            (id, Some(status)) => {
                failures.push(format!("replica {id} exited with {status} after SIGTERM"))
            }
            (id, None) => {
                failures.push(format!("replica {id} did not exit within 50 s of SIGTERM"))
            }
        }
    }

    // Order among first deliveries, duplicates, what was never delivered.
    let delivered_all = receiver.delivered_since(0);
    let mut first_index: HashMap<&str, usize> = HashMap::new();
    // Each key's events in their partition's order: what ORDERING=key (the
    // default) promises. A key moves to another partition when partitions are
    // added, so order is checked per partition and key.
    let mut last_offset: HashMap<(i32, &str), i64> = HashMap::new();
    let mut duplicates = 0usize;
    let mut order_violations = Vec::new();
    for (i, uuid) in delivered_all.iter().enumerate() {
        let Some(&(partition, key, offset)) = position.get(uuid.as_str()) else {
            continue;
        };
        if first_index.contains_key(uuid.as_str()) {
            duplicates += 1;
            continue;
        }
        first_index.insert(uuid.as_str(), i);
        let previous = last_offset.entry((partition, key)).or_insert(-1);
        if offset <= *previous {
            order_violations.push(format!(
                "partition {partition}, key {key}: first delivery of offset {offset} after offset {previous}"
            ));
        }
        *previous = offset;
    }
    if !order_violations.is_empty() {
        failures.push(format!(
            "{} order violations among first deliveries, e.g. {:?}",
            order_violations.len(),
            &order_violations[..order_violations.len().min(5)]
        ));
    }
    let lost: Vec<&Sent> = sent
        .iter()
        .filter(|s| !first_index.contains_key(s.uuid.as_str()))
        .collect();

    // No sampled commit past an event the webhook had not received by then.
    let samples = std::mem::take(&mut *samples.lock().expect("lock"));
    let mut by_partition: HashMap<i32, Vec<&Sent>> = HashMap::new();
    for s in &sent {
        by_partition.entry(s.partition).or_default().push(s);
    }
    let mut commit_violations = Vec::new();
    let (mut commit_checks, mut commit_violation_count) = (0u64, 0usize);
    for sample in &samples {
        for (p, commit) in sample.commits.iter().enumerate() {
            let Some(commit) = commit else { continue };
            for s in by_partition.get(&(p as i32)).into_iter().flatten() {
                if s.offset >= *commit {
                    continue;
                }
                commit_checks += 1;
                let received = first_index
                    .get(s.uuid.as_str())
                    .is_some_and(|i| *i < sample.delivered_len);
                if !received {
                    commit_violation_count += 1;
                }
                if !received && commit_violations.len() < 10 {
                    commit_violations.push(format!(
                        "t={:.1}s partition {p} committed at {commit}, but offset {} ({}) had not reached the webhook",
                        sample.at, s.offset, s.uuid
                    ));
                }
            }
        }
    }
    if commit_violation_count > 0 {
        failures.push(format!(
            "{commit_violation_count} events below a sampled commit had not reached the webhook when it was read, e.g.:\n    {}",
            commit_violations.join("\n    ")
        ));
    }

    let seen = std::mem::take(&mut *seen.lock().expect("lock"));
    if seen.pause_episodes == 0 {
        failures.push(format!(
            "no scrape ever saw {PAUSED} at 1: the outages did not pause any partition (the test does not test what it says)"
        ));
    }
    let drain_stalls: Vec<_> = seen
        .stall_readings
        .iter()
        .filter(|r| r.1 == DRAINING)
        .collect();
    if !drain_stalls.is_empty() {
        failures.push(format!(
            "{STALLED} read 1 during the final drain: {:?}",
            drain_stalls
                .iter()
                .take(10)
                .map(|(t, _, r, p)| format!("t={t:.1}s replica {r} partition {p}"))
                .collect::<Vec<_>>()
        ));
    }
    if !seen.stall_metric_present {
        notes.push(format!(
            "{STALLED} is not exported by this build: its readings count as 0"
        ));
    }
    if !producer_errors.is_empty() {
        notes.push(format!(
            "{} producer errors (events not acknowledged are not counted as produced), e.g. {:?}",
            producer_errors.len(),
            &producer_errors[..producer_errors.len().min(3)]
        ));
    }
    if sample_failures > 0 {
        notes.push(format!(
            "{sample_failures} commit samples failed (broker restart)"
        ));
    }

    // The connector's warnings and errors, by message.
    let mut digest: BTreeMap<String, u64> = BTreeMap::new();
    let all_logs = replicas
        .logs
        .values()
        .chain(replicas.retired_logs.iter().map(|(_, p)| p));
    for path in all_logs {
        for (message, count) in log_digest(path) {
            *digest.entry(message).or_default() += count;
        }
    }

    let result = if failures.is_empty() { "PASS" } else { "FAIL" };
    let pause_log_lines: u64 = digest
        .iter()
        .filter(|(m, _)| m.contains("partition paused"))
        .map(|(_, n)| n)
        .sum();
    // SIGTERMs that ended without leaving the group (the coordinator did not
    // answer in time): the exit is 0, the partitions wait for the session timeout.
    let abandoned_closes: u64 = digest
        .iter()
        .filter(|(m, _)| m.contains("leaving the group did not finish in time"))
        .map(|(_, n)| n)
        .sum();
    let stalls = if seen.stall_metric_present {
        format!(
            "{} (during the drain: {})",
            seen.stall_readings.len(),
            drain_stalls.len()
        )
    } else {
        "n/a (no such gauge)".to_owned()
    };
    let summary = format!(
        "chaos summary: seed={seed} protocol={protocol} result={result} faults={seconds}s produced={} delivered={} lost={} \
         duplicates={duplicates} max_lag_seconds={:.1} outages={outages} pauses={} (log: {pause_log_lines}) \
         kills={} sigterms={} (closes abandoned: {abandoned_closes}) starts={} wedge_restarts={} latest_restart={} partitions={n} commit_samples={} commit_checks={commit_checks} \
         stall_readings={stalls} drain={drain_seconds:.1}s wall={:.1}s",
        sent.len(),
        first_index.len(),
        lost.len(),
        seen.max_lag_seconds,
        seen.pause_episodes,
        replicas.kills,
        replicas.terms,
        replicas.starts,
        replicas.wedge_restarts,
        if replicas.latest.is_empty() { "no" } else { "yes" },
        samples.len(),
        wall.elapsed().as_secs_f64(),
    );
    println!("chaos: webhook answers: {:?}", receiver.answers());
    println!("chaos: replicas at the end: {healthz:?}");
    for note in &notes {
        println!("chaos: note: {note}");
    }
    println!("chaos: connector warnings and errors (count, message):");
    for (message, count) in &digest {
        println!("  {count:>6}  {message}");
    }
    println!("{summary}");
    if failures.is_empty() {
        return;
    }
    let logs: String =
        replicas
            .logs
            .iter()
            .map(|(id, path)| {
                format!(
                    "  replica {id}{}: {}\n",
                    if replicas.latest.contains(id) {
                        " (START_AT=latest)"
                    } else {
                        ""
                    },
                    path.display()
                )
            })
            .chain(replicas.retired_logs.iter().map(|(id, path)| {
                format!("  replica {id} (before a restart): {}\n", path.display())
            }))
            .collect();
    panic!(
        "{summary}\n{context}failures:\n- {}\nlost events by partition: {}\nreplica logs:\n{logs}",
        failures.join("\n- "),
        lost_by_partition(&lost)
    );
}

/// The state of things during the final drain.
#[derive(Default)]
struct DrainView {
    /// Produced events the webhook has not received, by partition: count and lowest offset.
    missing: BTreeMap<i32, (usize, i64)>,
    committed: Option<Vec<Option<i64>>>,
    high: Option<Vec<i64>>,
    /// Per partition: the replicas whose gauges report it, and their values.
    gauges: BTreeMap<i32, Vec<PartitionGauges>>,
    problems: Vec<String>,
}

#[derive(Debug, Clone, Copy, Default)]
struct PartitionGauges {
    replica: usize,
    high_watermark: f64,
    lag_messages: f64,
    paused: f64,
    stalled: Option<f64>,
}

impl DrainView {
    fn settled(&self) -> bool {
        self.missing.is_empty() && self.problems.is_empty()
    }

    fn describe(&self) -> String {
        let mut out = String::new();
        for p in &self.problems {
            out += &format!("  {p}\n");
        }
        let n = self.high.as_ref().map_or(0, Vec::len);
        for p in 0..n as i32 {
            let committed = self
                .committed
                .as_ref()
                .and_then(|c| c.get(p as usize).copied().flatten());
            let high = self.high.as_ref().map(|h| h[p as usize]);
            let missing = self
                .missing
                .get(&p)
                .map_or("none".to_owned(), |(n, o)| format!("{n} from offset {o}"));
            out += &format!(
                "  partition {p}: committed {committed:?}, high watermark {high:?}, undelivered {missing}, gauges {:?}\n",
                self.gauges.get(&p).cloned().unwrap_or_default()
            );
        }
        out
    }
}

/// Reads the broker's view and every live replica's gauges, and compares
/// them with what the webhook received.
async fn drain_view(
    consumer: &BaseConsumer,
    topic: &str,
    partitions: i32,
    sent: &[Sent],
    delivered: &HashSet<String>,
    replicas: &Replicas,
    http: &reqwest::Client,
) -> DrainView {
    let mut view = DrainView::default();
    for s in sent.iter().filter(|s| !delivered.contains(&s.uuid)) {
        let entry = view.missing.entry(s.partition).or_insert((0, s.offset));
        entry.0 += 1;
        entry.1 = entry.1.min(s.offset);
    }
    let (committed, high) = tokio::task::block_in_place(|| {
        (
            committed(consumer, topic, partitions),
            high_watermarks(consumer, topic, partitions),
        )
    });
    view.committed = committed;
    view.high = high;
    for (id, c) in &replicas.live {
        let text = get(http, c.http, "/metrics")
            .await
            .map(|r| r.1)
            .unwrap_or_default();
        let mut mine: BTreeMap<i32, PartitionGauges> = BTreeMap::new();
        let mut gauge = |name: &str, set: &dyn Fn(&mut PartitionGauges, f64)| {
            for (labels, v) in metric_values(&text, name) {
                if let Ok(p) = partition_label(&labels).parse::<i32>() {
                    let g = mine.entry(p).or_insert(PartitionGauges {
                        replica: *id,
                        ..PartitionGauges::default()
                    });
                    set(g, v);
                }
            }
        };
        gauge(HIGH_WATERMARK, &|g, v| g.high_watermark = v);
        gauge(LAG_MESSAGES, &|g, v| g.lag_messages = v);
        gauge(PAUSED, &|g, v| g.paused = v);
        gauge(STALLED, &|g, v| g.stalled = Some(v));
        for (p, g) in mine {
            view.gauges.entry(p).or_default().push(g);
        }
    }
    let (Some(committed), Some(high)) = (&view.committed, &view.high) else {
        view.problems
            .push("cannot read committed offsets or watermarks from the cluster".into());
        return view;
    };
    for p in 0..partitions {
        let (c, h) = (committed[p as usize], high[p as usize]);
        if c != Some(h) {
            view.problems.push(format!(
                "partition {p}: committed {c:?}, high watermark {h}"
            ));
        }
        let gauges = view.gauges.get(&p).cloned().unwrap_or_default();
        if gauges.len() != 1 {
            let owners: Vec<usize> = gauges.iter().map(|g| g.replica).collect();
            view.problems.push(format!(
                "partition {p}: reported by replicas {owners:?}, not by exactly one"
            ));
        }
        let lag: f64 = gauges.iter().map(|g| g.lag_messages).sum();
        let broker_lag = h - c.unwrap_or(0);
        if lag != broker_lag as f64 {
            view.problems.push(format!(
                "partition {p}: lag gauges sum to {lag}, the broker says {broker_lag}"
            ));
        }
        for g in &gauges {
            if g.high_watermark != h as f64 {
                view.problems.push(format!(
                    "partition {p}: replica {} reports high watermark {}, the broker {h}",
                    g.replica, g.high_watermark
                ));
            }
        }
    }
    view
}

/// "partition 3: 120 events, offsets 4000..=4119" for each partition with lost events.
fn lost_by_partition(lost: &[&Sent]) -> String {
    let mut by: BTreeMap<i32, (usize, i64, i64)> = BTreeMap::new();
    for s in lost {
        let e = by.entry(s.partition).or_insert((0, s.offset, s.offset));
        e.0 += 1;
        e.1 = e.1.min(s.offset);
        e.2 = e.2.max(s.offset);
    }
    if by.is_empty() {
        return "none".into();
    }
    by.iter()
        .map(|(p, (n, lo, hi))| format!("partition {p}: {n} events, offsets {lo}..={hi}"))
        .collect::<Vec<_>>()
        .join("; ")
}

/// The schedule alone, without Kafka: reproducible, and it keeps its promises.
#[test]
fn a_seed_gives_one_schedule_that_keeps_replicas_between_one_and_three() {
    for seconds in [30, 90, 600] {
        let duration = Duration::from_secs(seconds);
        for seed in 0..300 {
            let text = |steps: &[Step]| steps.iter().map(|s| format!("{s}\n")).collect::<String>();
            let steps = plan(seed, duration);
            assert_eq!(text(&steps), text(&plan(seed, duration)), "seed {seed}");
            let mut alive: BTreeSet<usize> = INITIAL_REPLICAS.into_iter().collect();
            let mut broker_down = None;
            let mut partitions = BASE_PARTITIONS;
            let mut latest = 0;
            for s in &steps {
                assert!(s.at < duration, "seed {seed}: {s} after the end");
                match &s.action {
                    Action::Join(r) => assert!(alive.insert(*r), "seed {seed}: {s}"),
                    Action::Leave(r) | Action::Kill(r) => {
                        assert!(*r != STAYER && alive.remove(r), "seed {seed}: {s}")
                    }
                    Action::RestartLatest { stop, start } => {
                        latest += 1;
                        if let Some(stop) = stop {
                            assert!(*stop != STAYER && alive.remove(stop), "seed {seed}: {s}");
                        }
                        assert!(alive.insert(*start), "seed {seed}: {s}");
                    }
                    Action::BrokerDown { node, .. } => {
                        assert!(
                            broker_down.replace(*node).is_none(),
                            "seed {seed}: two brokers down"
                        )
                    }
                    Action::BrokerUp(node) => {
                        assert_eq!(broker_down.take(), Some(*node), "seed {seed}: {s}");
                        assert!(
                            s.at + Duration::from_secs(10) <= duration,
                            "seed {seed}: {s}"
                        );
                    }
                    Action::AddPartitions(n) => {
                        assert!(*n > partitions, "seed {seed}: {s}");
                        partitions = *n;
                    }
                    Action::Webhook(_) => {}
                }
                assert!(
                    (1..=3).contains(&alive.len()),
                    "seed {seed}: {s}: {alive:?}"
                );
                assert!(alive.contains(&STAYER), "seed {seed}");
            }
            assert_eq!(latest, 1, "seed {seed}");
            assert!(broker_down.is_none(), "seed {seed}: a broker stays down");
            let first_fault = steps.iter().find_map(|s| match s.action {
                Action::Webhook(w) => Some(w),
                _ => None,
            });
            assert_eq!(first_fault, Some(Webhook::Outage), "seed {seed}");
        }
    }
}
