//! Test harness: a real Kafka (from KAFKA_HOSTS, or started with
//! testcontainers when a Docker engine answers), per-test topics and groups,
//! a webhook receiver whose answers each test scripts, and the connector
//! binary run as a real process.
#![allow(dead_code)]

use std::collections::{HashMap, HashSet, VecDeque};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use axum::Router;
use patterns_connector::event::sample::{self, Sample};
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::error::KafkaResult;
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::{ClientConfig, Offset, TopicPartitionList};
use serde_json::Value;

pub mod clickhouse;
pub mod posthog_api;
pub mod steady;

/// The broker every test uses.
pub fn kafka() -> String {
    static BROKERS: OnceLock<String> = OnceLock::new();
    BROKERS
        .get_or_init(|| match std::env::var("KAFKA_HOSTS") {
            Ok(hosts) if !hosts.is_empty() => hosts,
            _ => containers::start_kafka(),
        })
        .clone()
}

mod containers {
    use std::sync::OnceLock;
    use testcontainers::core::{IntoContainerPort, WaitFor};
    use testcontainers::runners::SyncRunner;
    use testcontainers::{Container, GenericImage, ImageExt};

    static KAFKA: OnceLock<Container<GenericImage>> = OnceLock::new();

    /// Apache Kafka's official image in KRaft mode, on host port 9092 (its
    /// advertised listener). Only where a Docker engine runs.
    pub fn start_kafka() -> String {
        let container = KAFKA.get_or_init(|| {
            // The sync runner drives its own runtime, which cannot start on a
            // thread that is already running the test's tokio runtime.
            std::thread::spawn(|| {
                GenericImage::new("apache/kafka", "4.1.1")
                    .with_wait_for(WaitFor::message_on_stdout("Kafka Server started"))
                    .with_mapped_port(9092, 9092.tcp())
                    .with_env_var("KAFKA_NUM_PARTITIONS", "4")
                    .start()
            })
            .join()
            .expect("the testcontainers thread")
            .expect(
                "no KAFKA_HOSTS given and no Docker engine to start Kafka with testcontainers: \
                 run the suite with scripts/test, which starts a local Apache Kafka",
            )
        });
        let _ = container;
        "127.0.0.1:9092".to_owned()
    }
}

static COUNTER: AtomicU32 = AtomicU32::new(0);

/// A name no other test (or earlier run) uses.
pub fn unique(prefix: &str) -> String {
    let n = COUNTER.fetch_add(1, Ordering::Relaxed);
    let t = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("clock after 1970")
        .as_millis();
    format!("{prefix}-{}-{t}-{n}", std::process::id())
}

/// A run id for sample uuids, distinct per call.
pub fn run_id() -> u32 {
    let t = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("clock after 1970")
        .as_micros() as u32;
    t.wrapping_add(COUNTER.fetch_add(1, Ordering::Relaxed))
}

/// An admin client for the test broker.
pub fn admin() -> AdminClient<DefaultClientContext> {
    ClientConfig::new()
        .set("bootstrap.servers", kafka())
        .create()
        .expect("admin client")
}

pub async fn create_topic(topic: &str, partitions: i32) {
    let admin = admin();
    let results = admin
        .create_topics(
            &[NewTopic::new(topic, partitions, TopicReplication::Fixed(1))],
            &AdminOptions::new().operation_timeout(Some(Duration::from_secs(30))),
        )
        .await
        .expect("create_topics");
    for r in results {
        r.expect("topic created");
    }
}

/// An idempotent producer for the test broker.
/// Grows `topic` to `total` partitions.
pub async fn add_partitions(topic: &str, total: usize) {
    use rdkafka::admin::NewPartitions;
    let options = AdminOptions::new().operation_timeout(Some(Duration::from_secs(30)));
    for result in admin()
        .create_partitions(&[NewPartitions::new(topic, total)], &options)
        .await
        .expect("create_partitions")
    {
        result.expect("partitions added");
    }
}

pub fn producer() -> FutureProducer {
    ClientConfig::new()
        .set("bootstrap.servers", kafka())
        .set("linger.ms", "5")
        .set("enable.idempotence", "true")
        .set("message.max.bytes", "2000000")
        .create()
        .expect("producer")
}

/// Sends one sample and returns where Kafka put it.
pub async fn send_sample(producer: &FutureProducer, topic: &str, sample: Sample) -> Produced {
    let delivery = producer
        .send(
            FutureRecord::to(topic)
                .key(&sample.key)
                .payload(&sample.value),
            Duration::from_secs(30),
        )
        .await
        .map_err(|(e, _)| e)
        .expect("produced");
    Produced {
        sample,
        partition: delivery.partition,
        offset: delivery.offset,
    }
}

/// A produced sample and where Kafka put it.
#[derive(Debug, Clone)]
pub struct Produced {
    pub sample: Sample,
    pub partition: i32,
    pub offset: i64,
}

/// Produces samples `range` of run `run` and returns them with their partitions and offsets.
pub async fn produce(topic: &str, run: u32, range: std::ops::Range<u64>) -> Vec<Produced> {
    let producer = producer();
    let now = chrono::Utc::now()
        .format("%Y-%m-%dT%H:%M:%S%.6f+00:00")
        .to_string();
    let sends: Vec<_> = range
        .map(|n| {
            let (producer, topic) = (producer.clone(), topic.to_owned());
            let sample = sample::captured(run, n, &now);
            tokio::spawn(async move { send_sample(&producer, &topic, sample).await })
        })
        .collect();
    let mut out = Vec::new();
    for s in sends {
        out.push(s.await.expect("send task"));
    }
    out
}

/// Produces raw payloads (for bad-message tests) to one partition.
pub async fn produce_raw(topic: &str, partition: i32, payloads: &[&[u8]]) {
    let producer = producer();
    for p in payloads {
        producer
            .send(
                FutureRecord::<(), [u8]>::to(topic)
                    .partition(partition)
                    .payload(p),
                Duration::from_secs(30),
            )
            .await
            .map_err(|(e, _)| e)
            .expect("produced");
    }
}

/// A record read back from the dead-letter topic.
#[derive(Debug, Clone)]
pub struct DeadLetterRecord {
    pub key: Option<Vec<u8>>,
    pub payload: Option<Vec<u8>>,
    pub headers: HashMap<String, String>,
}

/// Reads every record of `topic` (from the beginning, until `expected` are
/// read or `timeout` passes).
pub fn read_topic(topic: &str, expected: usize, timeout: Duration) -> Vec<DeadLetterRecord> {
    let mut client = ClientConfig::new();
    client.set("bootstrap.servers", kafka());
    read_topic_with(client, topic, expected, timeout)
}

/// `read_topic` with a client of the caller's (another broker, SASL).
pub fn read_topic_with(
    mut client: ClientConfig,
    topic: &str,
    expected: usize,
    timeout: Duration,
) -> Vec<DeadLetterRecord> {
    use rdkafka::message::{Headers, Message};
    let consumer: BaseConsumer = client
        .set("group.id", unique("reader"))
        .set("auto.offset.reset", "earliest")
        .set("enable.auto.commit", "false")
        .create()
        .expect("consumer");
    consumer.subscribe(&[topic]).expect("subscribe");
    let deadline = Instant::now() + timeout;
    let mut out = Vec::new();
    while out.len() < expected && Instant::now() < deadline {
        let polled = consumer.poll(Duration::from_millis(200));
        if let Some(Err(e)) = &polled {
            eprintln!("read_topic {topic}: {e}");
        }
        if let Some(Ok(m)) = polled {
            let headers = m
                .headers()
                .map(|h| {
                    h.iter()
                        .map(|h| {
                            (
                                h.key.to_owned(),
                                String::from_utf8_lossy(h.value.unwrap_or_default()).into_owned(),
                            )
                        })
                        .collect()
                })
                .unwrap_or_default();
            out.push(DeadLetterRecord {
                key: m.key().map(<[u8]>::to_vec),
                payload: m.payload().map(<[u8]>::to_vec),
                headers,
            });
        }
    }
    out
}

/// A sample message whose event carries `properties.reject_me` (the
/// receiver's `reject_marked` refuses it).
pub fn marked(sample: &Sample) -> Vec<u8> {
    let mut message: Value = serde_json::from_slice(&sample.value).expect("sample JSON");
    let mut data: Value =
        serde_json::from_str(message["data"].as_str().expect("data")).expect("data JSON");
    data["properties"]["reject_me"] = Value::Bool(true);
    message["data"] = Value::String(data.to_string());
    serde_json::to_vec(&message).expect("JSON")
}

/// A Kafka record as produced by the tests: optional key, optional value.
pub type RawRecord = (Option<Vec<u8>>, Option<Vec<u8>>);

/// Sample events `0..count` as keyed records, some marked for the receiver
/// to refuse (see [`marked`]).
pub struct SomeMarked {
    pub records: Vec<RawRecord>,
    /// Every event's uuid, in produce order.
    pub uuids: Vec<String>,
    /// The uuids of the marked events.
    pub marked: HashSet<String>,
}

impl SomeMarked {
    pub fn new(run: u32, count: u64, is_marked: impl Fn(u64) -> bool) -> Self {
        let mut events = SomeMarked {
            records: Vec::new(),
            uuids: Vec::new(),
            marked: HashSet::new(),
        };
        for n in 0..count {
            let s = sample::captured(run, n, "2024-05-01T12:00:00Z");
            let value = if is_marked(n) {
                events.marked.insert(s.uuid.clone());
                marked(&s)
            } else {
                s.value.clone()
            };
            events.uuids.push(s.uuid);
            events.records.push((Some(s.key.into_bytes()), Some(value)));
        }
        events
    }

    /// The uuids of the events a receiver refusing marked ones accepts.
    pub fn accepted(&self) -> HashSet<String> {
        self.uuids
            .iter()
            .filter(|u| !self.marked.contains(*u))
            .cloned()
            .collect()
    }
}

/// Produces `payloads` (with keys) to one partition, in order; returns their offsets.
pub async fn produce_keyed(topic: &str, partition: i32, records: &[RawRecord]) -> Vec<i64> {
    let producer = producer();
    let mut offsets = Vec::new();
    for (key, payload) in records {
        let mut record = FutureRecord::<[u8], [u8]>::to(topic).partition(partition);
        if let Some(k) = key {
            record = record.key(k.as_slice());
        }
        if let Some(p) = payload {
            record = record.payload(p.as_slice());
        }
        let delivery = producer
            .send(record, Duration::from_secs(30))
            .await
            .map_err(|(e, _)| e)
            .expect("produced");
        offsets.push(delivery.offset);
    }
    offsets
}

/// Runs `patterns-connector replay-dlq` to completion.
pub fn replay_dlq(group: &str, webhook_url: &str, dlq: &str) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_patterns-connector"))
        .arg("replay-dlq")
        .env_clear()
        .env("KAFKA_HOSTS", kafka())
        .env("KAFKA_CONSUMER_GROUP", group)
        .env("PATTERNS_WEBHOOK_URL", webhook_url)
        .env("DLQ_TOPIC", dlq)
        .env("RETRY_BACKOFF_MIN_MS", "50")
        .env("RETRY_BACKOFF_MAX_MS", "500")
        .output()
        .expect("run replay-dlq")
}

/// Runs `replay-dlq` to completion, panics unless it succeeds, and returns
/// its standard output and error.
pub fn replay_dlq_ok(group: &str, webhook_url: &str, dlq: &str) -> (String, String) {
    let out = replay_dlq(group, webhook_url, dlq);
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(out.status.success(), "{stdout}{stderr}");
    (stdout, stderr)
}

/// Panics if the connector's log holds the webhook URL's secret.
pub fn assert_no_secret(connector: &Connector) {
    let logs = connector.logs();
    assert!(
        !logs.contains("SECRET-TOKEN"),
        "the webhook secret leaked into the log:\n{logs}"
    );
}

/// Runs a Kafka read, asking again while the broker gives transient answers
/// (right after it starts, its group coordinator answers NotCoordinator for
/// a while), as the connector does; panics with the last error.
pub fn retrying<T>(what: &str, read: impl FnMut() -> KafkaResult<T>) -> T {
    patterns_connector::kafka::read::retrying(what, read).unwrap_or_else(|e| panic!("{what}: {e}"))
}

/// The group's committed offset per partition (None: no commit).
pub fn committed(group: &str, topic: &str, partitions: i32) -> Vec<Option<i64>> {
    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", kafka())
        .set("group.id", group)
        .create()
        .expect("consumer");
    let mut tpl = TopicPartitionList::new();
    for p in 0..partitions {
        tpl.add_partition(topic, p);
    }
    let committed = retrying("committed offsets", || {
        consumer.committed_offsets(tpl.clone(), Duration::from_secs(10))
    });
    (0..partitions)
        .map(
            |p| match committed.find_partition(topic, p).map(|e| e.offset()) {
                Some(Offset::Offset(o)) => Some(o),
                _ => None,
            },
        )
        .collect()
}

/// High watermark per partition.
pub fn high_watermarks(topic: &str, partitions: i32) -> Vec<i64> {
    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", kafka())
        .create()
        .expect("consumer");
    (0..partitions)
        .map(|p| {
            retrying("watermarks", || {
                consumer.fetch_watermarks(topic, p, Duration::from_secs(10))
            })
            .1
        })
        .collect()
}

/// Waits until `check` holds, or panics with `what` after `timeout`.
pub async fn eventually<F: FnMut() -> bool>(timeout: Duration, what: &str, mut check: F) {
    let deadline = Instant::now() + timeout;
    while !check() {
        if Instant::now() > deadline {
            panic!("timed out after {timeout:?} waiting for: {what}");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

// ---------------------------------------------------------------- receiver

/// How the receiver answers one request.
#[derive(Debug, Clone)]
pub struct Reply {
    pub status: u16,
    pub retry_after: Option<String>,
    pub delay: Duration,
}

impl Reply {
    pub fn ok() -> Self {
        Reply::status(200)
    }
    pub fn status(status: u16) -> Self {
        Reply {
            status,
            retry_after: None,
            delay: Duration::ZERO,
        }
    }
    pub fn retry_after(mut self, value: &str) -> Self {
        self.retry_after = Some(value.to_owned());
        self
    }
    pub fn delayed(mut self, delay: Duration) -> Self {
        self.delay = delay;
        self
    }
}

/// One request the receiver got.
#[derive(Debug, Clone)]
pub struct Request {
    /// When its handling began.
    pub started: Instant,
    /// When it was answered.
    pub at: Instant,
    pub status: u16,
    pub headers: HashMap<String, String>,
    pub bytes: usize,
    /// The body as JSON text (decompressed when it came gzipped).
    pub body: Vec<u8>,
    /// The events, when the body was a JSON array.
    pub events: Vec<Value>,
}

#[derive(Default)]
struct ReceiverState {
    script: VecDeque<Reply>,
    default: Option<Reply>,
    requests: Vec<Request>,
    started: usize,
    /// Answer 400 to any batch holding an event with `properties.reject_me`.
    reject_marked: bool,
    /// Answer 413 to any body larger than this.
    max_body: Option<usize>,
    /// Drop the connection, without an answer, for this many more requests.
    drop_connections: usize,
}

/// Serves `app` on a free loopback port, in the background.
pub async fn serve(app: Router) -> SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind receiver");
    let addr = listener.local_addr().expect("addr");
    tokio::spawn(async move { axum::serve(listener, app).await });
    addr
}

/// Now, as PostHog's capture writes `now` (RFC 3339, microseconds).
pub fn now_timestamp() -> String {
    chrono::Utc::now()
        .format("%Y-%m-%dT%H:%M:%S%.6f+00:00")
        .to_string()
}

/// A local stand-in for the Patterns webhook.
#[derive(Clone)]
pub struct Receiver {
    pub addr: SocketAddr,
    state: Arc<Mutex<ReceiverState>>,
}

impl Receiver {
    pub async fn start() -> Self {
        let state = Arc::new(Mutex::new(ReceiverState::default()));
        let app = Router::new()
            .route("/{*path}", post(handle))
            .with_state(state.clone());
        Receiver {
            addr: serve(app).await,
            state,
        }
    }

    /// The webhook URL, with a secret-looking path like Patterns' own.
    pub fn url(&self) -> String {
        format!("http://{}/api/app/webhooks/SECRET-TOKEN-abc123", self.addr)
    }

    /// Answers every request not covered by the script.
    pub fn set_default(&self, reply: Reply) {
        self.state.lock().expect("lock").default = Some(reply);
    }

    /// Answers 400 to batches holding an event whose properties carry `reject_me`.
    pub fn reject_marked(&self) {
        self.state.lock().expect("lock").reject_marked = true;
    }

    /// Stops refusing marked events.
    pub fn accept_marked(&self) {
        self.state.lock().expect("lock").reject_marked = false;
    }

    /// Answers 413 to bodies larger than `bytes`.
    pub fn max_body(&self, bytes: usize) {
        self.state.lock().expect("lock").max_body = Some(bytes);
    }

    /// Drops the connection of the next `n` requests without answering.
    pub fn drop_connections(&self, n: usize) {
        self.state.lock().expect("lock").drop_connections = n;
    }

    /// Answers the next requests, in order.
    pub fn script(&self, replies: Vec<Reply>) {
        self.state.lock().expect("lock").script.extend(replies);
    }

    pub fn requests(&self) -> Vec<Request> {
        self.state.lock().expect("lock").requests.clone()
    }

    /// Requests whose handling has begun (including ones still being delayed).
    pub fn started(&self) -> usize {
        self.state.lock().expect("lock").started
    }

    /// Events of every 2xx-answered request, in arrival order.
    pub fn delivered(&self) -> Vec<Value> {
        self.requests()
            .into_iter()
            .filter(|r| (200..300).contains(&r.status))
            .flat_map(|r| r.events)
            .collect()
    }

    pub fn delivered_uuids(&self) -> HashSet<String> {
        self.delivered()
            .iter()
            .filter_map(|e| e["uuid"].as_str().map(str::to_owned))
            .collect()
    }
}

async fn handle(
    State(state): State<Arc<Mutex<ReceiverState>>>,
    headers: HeaderMap,
    raw: axum::body::Bytes,
) -> Response {
    let started = Instant::now();
    let gzipped = headers
        .get("content-encoding")
        .is_some_and(|v| v.as_bytes() == b"gzip");
    let body: Vec<u8> = if gzipped {
        use std::io::Read;
        let mut out = Vec::new();
        if flate2::read::GzDecoder::new(&raw[..])
            .read_to_end(&mut out)
            .is_err()
        {
            return StatusCode::BAD_REQUEST.into_response();
        }
        out
    } else {
        raw.to_vec()
    };
    let events = match serde_json::from_slice(&body) {
        Ok(Value::Array(events)) => events,
        _ => Vec::new(),
    };
    let reply = {
        let mut s = state.lock().expect("lock");
        s.started += 1;
        if s.drop_connections > 0 {
            s.drop_connections -= 1;
            drop(s);
            // Unwinding out of the handler makes hyper close the connection
            // without an answer: what a crashing proxy does.
            std::panic::resume_unwind(Box::new("receiver drops the connection"));
        }
        let marked = events
            .iter()
            .any(|e| e["properties"].get("reject_me").is_some());
        if s.reject_marked && marked {
            Reply::status(400)
        } else if s.max_body.is_some_and(|max| body.len() > max) {
            Reply::status(413)
        } else {
            s.script
                .pop_front()
                .or_else(|| s.default.clone())
                .unwrap_or_else(Reply::ok)
        }
    };
    if !reply.delay.is_zero() {
        tokio::time::sleep(reply.delay).await;
    }
    let request = Request {
        started,
        at: Instant::now(),
        status: reply.status,
        headers: headers
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_str().unwrap_or("").to_owned()))
            .collect(),
        bytes: raw.len(),
        body,
        events,
    };
    state.lock().expect("lock").requests.push(request);
    let status = StatusCode::from_u16(reply.status).expect("valid status");
    match reply.retry_after {
        Some(value) => (status, [("retry-after", value)]).into_response(),
        None => status.into_response(),
    }
}

// --------------------------------------------------------------- connector

/// The connector binary, run as a real process.
pub struct Connector {
    child: Option<Child>,
    pub http: SocketAddr,
    pub log: PathBuf,
}

pub fn free_port() -> SocketAddr {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    listener.local_addr().expect("addr")
}

impl Connector {
    /// Starts the connector for `topic`/`group` with the receiver's URL and `env` on top.
    pub fn start(topic: &str, group: &str, webhook_url: &str, env: &[(&str, &str)]) -> Self {
        let http = free_port();
        let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR"));
        let log = dir.join(format!("{}.log", unique("connector")));
        let file = std::fs::File::create(&log).expect("log file");
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_patterns-connector"));
        cmd.env_clear()
            .env("PATH", std::env::var("PATH").unwrap_or_default())
            .env("KAFKA_HOSTS", kafka())
            .env("KAFKA_TOPIC", topic)
            .env("KAFKA_CONSUMER_GROUP", group)
            .env("PATTERNS_WEBHOOK_URL", webhook_url)
            .env("HTTP_ADDR", http.to_string())
            .env("COMMIT_INTERVAL_MS", "500")
            .env("BATCH_LINGER_MS", "200")
            .env("RETRY_BACKOFF_MIN_MS", "50")
            .env("RETRY_BACKOFF_MAX_MS", "500")
            .env("LOG_LEVEL", "info,patterns_connector=debug")
            .stdin(Stdio::null())
            .stdout(file.try_clone().expect("clone"))
            .stderr(file);
        for (k, v) in env {
            cmd.env(k, v);
        }
        let child = cmd.spawn().expect("start patterns-connector");
        Connector {
            child: Some(child),
            http,
            log,
        }
    }

    pub fn pid(&self) -> u32 {
        self.child.as_ref().expect("running").id()
    }

    pub fn signal(&self, signal: &str) {
        let status = Command::new("kill")
            .args([format!("-{signal}"), self.pid().to_string()])
            .status()
            .expect("kill");
        assert!(status.success(), "kill -{signal} failed");
    }

    /// Its exit status, if it has exited on its own.
    pub fn exited(&mut self) -> Option<ExitStatus> {
        let status = self.child.as_mut()?.try_wait().expect("try_wait")?;
        self.child = None;
        Some(status)
    }

    /// Waits for the process to exit.
    pub async fn wait(&mut self, timeout: Duration) -> ExitStatus {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(status) = self
                .child
                .as_mut()
                .expect("running")
                .try_wait()
                .expect("try_wait")
            {
                self.child = None;
                return status;
            }
            if Instant::now() > deadline {
                panic!(
                    "connector did not exit within {timeout:?}; log: {}",
                    self.logs()
                );
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    pub fn logs(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// The /metrics text, fetched without an async runtime (for `eventually`).
    pub fn metrics_blocking(&self) -> String {
        self.get_blocking("/metrics")
            .map(|(_, body)| body)
            .unwrap_or_default()
    }

    /// GETs `path` from the connector's HTTP server without an async
    /// runtime: the status and the body, or None while it does not answer.
    pub fn get_blocking(&self, path: &str) -> Option<(u16, String)> {
        use std::io::{Read, Write};
        let mut stream = std::net::TcpStream::connect(self.http).ok()?;
        let _ = stream.set_read_timeout(Some(Duration::from_secs(5)));
        let request = format!("GET {path} HTTP/1.0\r\nHost: localhost\r\n\r\n");
        stream.write_all(request.as_bytes()).ok()?;
        let mut text = String::new();
        stream.read_to_string(&mut text).ok()?;
        let status = text.split(' ').nth(1)?.parse().ok()?;
        let body = text
            .split_once("\r\n\r\n")
            .map_or(String::new(), |(_, b)| b.to_owned());
        Some((status, body))
    }

    /// The /metrics text, or "" while the server is not up.
    pub async fn metrics(&self) -> String {
        let url = format!("http://{}/metrics", self.http);
        match reqwest::get(url).await {
            Ok(r) => r.text().await.unwrap_or_default(),
            Err(_) => String::new(),
        }
    }

    /// Scrapes /metrics until `check` holds on the text, and returns that
    /// text; panics with `what` and the last scrape after `timeout`.
    pub async fn metrics_until(
        &self,
        timeout: Duration,
        what: &str,
        check: impl Fn(&str) -> bool,
    ) -> String {
        let deadline = Instant::now() + timeout;
        loop {
            let text = self.metrics().await;
            if check(&text) {
                return text;
            }
            assert!(
                Instant::now() < deadline,
                "timed out after {timeout:?} waiting for: {what}\n{text}"
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }
}

impl Drop for Connector {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// The connector's `assigned_partitions` gauge, if it answers.
pub fn assigned(connector: &Connector) -> Option<i64> {
    metric_values(
        &connector.metrics_blocking(),
        "patterns_connector_assigned_partitions",
    )
    .first()
    .map(|(_, v)| *v as i64)
}

/// Values of one metric, by its full label string (e.g. `{partition="0",topic="t"}`).
/// The `partition` label's value in a series' labels.
pub fn partition_of(labels: &str) -> Option<&str> {
    labels.split("partition=\"").nth(1)?.split('"').next()
}

/// The series of `name`, by partition.
pub fn partition_values(text: &str, name: &str) -> Vec<(i32, f64)> {
    metric_values(text, name)
        .into_iter()
        .filter_map(|(labels, v)| Some((partition_of(&labels)?.parse().ok()?, v)))
        .collect()
}

pub fn metric_values(text: &str, name: &str) -> Vec<(String, f64)> {
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(|l| {
            let rest = l.strip_prefix(name)?;
            let (labels, value) = match rest.strip_prefix('{') {
                Some(r) => {
                    let (labels, value) = r.split_once('}')?;
                    (labels.to_owned(), value)
                }
                None if rest.starts_with(' ') => (String::new(), rest),
                None => return None,
            };
            Some((labels, value.trim().parse().ok()?))
        })
        .collect()
}

/// The port a stand-in process (tests/clickhouse, tests/posthog) says it
/// listens on, in its first stdout line `listening on 127.0.0.1:PORT`;
/// its stdout is then read on to EOF so the pipe never fills. Err when it
/// exited, or said nothing within `timeout`, or said something else.
pub fn listening_port(child: &mut std::process::Child, timeout: Duration) -> Result<u16, String> {
    use std::io::BufRead as _;
    let stdout = child.stdout.take().expect("piped stdout");
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in std::io::BufReader::new(stdout)
            .lines()
            .map_while(Result::ok)
        {
            let _ = tx.send(line);
        }
    });
    let deadline = Instant::now() + timeout;
    let line = loop {
        if let Ok(line) = rx.recv_timeout(Duration::from_millis(100)) {
            break line;
        }
        if let Some(status) = child.try_wait().ok().flatten() {
            return Err(format!("exited: {status}"));
        }
        if Instant::now() > deadline {
            return Err("timed out".into());
        }
    };
    line.strip_prefix("listening on 127.0.0.1:")
        .and_then(|port| port.trim().parse().ok())
        .ok_or_else(|| format!("unexpected first line: {line:?}"))
}
