//! Helpers for the demo and the benchmark, run against a local Kafka:
//! create a topic, produce realistic PostHog events, and a webhook receiver
//! that prints what it gets.
//!
//!   patterns-devkit create-topic --topic T --partitions 4
//!   patterns-devkit produce --topic T --count 3000
//!   patterns-devkit receive --addr 127.0.0.1:8000 [--stats-file F]

use std::collections::HashSet;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::extract::State;
use axum::http::StatusCode;
use axum::routing::post;
use axum::Router;
use clap::{Parser, Subcommand};
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::ClientConfig;
use serde_json::Value;

#[derive(Parser)]
#[command(
    name = "patterns-devkit",
    about = "Demo and benchmark helpers for patterns-connector"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Creates a topic (no error if it exists).
    CreateTopic {
        #[arg(long, env = "KAFKA_HOSTS", default_value = "127.0.0.1:9092")]
        brokers: String,
        #[arg(long)]
        topic: String,
        #[arg(long, default_value = "4")]
        partitions: i32,
        #[arg(long, default_value = "1")]
        replication: i32,
    },
    /// Produces realistic PostHog capture messages (events_plugin_ingestion format).
    Produce {
        #[arg(long, env = "KAFKA_HOSTS", default_value = "127.0.0.1:9092")]
        brokers: String,
        #[arg(long)]
        topic: String,
        #[arg(long, default_value = "3000")]
        count: u64,
        /// Distinguishes the uuids of separate runs.
        #[arg(long, default_value = "1")]
        run_id: u32,
        /// Messages per second; 0 means as fast as possible.
        #[arg(long, default_value = "0")]
        rate: u64,
        /// Appends `uuid partition offset key` of every produced message to this file.
        #[arg(long)]
        record: Option<String>,
    },
    /// A webhook receiver: accepts JSON arrays, prints one line per batch.
    Receive {
        #[arg(long, default_value = "127.0.0.1:8000")]
        addr: String,
        #[command(flatten)]
        options: ReceiverOptions,
    },
    /// Decodes sample messages in memory, on one thread, and prints the
    /// decoder's cost per event: the connector's hot path without Kafka or HTTP.
    DecodeBench {
        #[arg(long, default_value = "200000")]
        count: u64,
        /// Time the general decoder alone (what the fast path falls back
        /// to, and the decoder before it), for a before/after in one binary.
        #[arg(long)]
        general: bool,
    },
    /// Reads a topic from the beginning to its current end and does nothing
    /// else: the speed limit for anything that consumes it.
    Drain {
        #[arg(long, env = "KAFKA_HOSTS", default_value = "127.0.0.1:9092")]
        brokers: String,
        #[arg(long)]
        topic: String,
    },
}

#[derive(clap::Args)]
struct ReceiverOptions {
    /// Rewritten after every batch: `batches events unique_uuids`.
    #[arg(long)]
    stats_file: Option<String>,
    /// Print nothing per batch.
    #[arg(long)]
    quiet: bool,
    /// Appends the uuid of every accepted event to this file, in arrival order.
    #[arg(long)]
    record: Option<String>,
    /// Share of requests to fail (0 to 1), spread over 500, 429 with
    /// Retry-After: 1, a 10 s stall (past the connector's timeout) and a
    /// dropped connection.
    #[arg(long, default_value = "0")]
    fail_ratio: f64,
    /// Added to every answer, in milliseconds (a remote webhook).
    #[arg(long, default_value = "0")]
    delay_ms: u64,
    /// Answer every request with this status and record nothing (an outage).
    #[arg(long)]
    status: Option<u16>,
    /// Rewritten after every batch: `events p50_ms p99_ms max_ms` of
    /// receive time minus each event's properties.$sent_at (its produce time
    /// for devkit events).
    #[arg(long)]
    latency_file: Option<String>,
    /// Checks per-key and per-partition arrival order against this file
    /// (written by `produce --record`) and adds `key_order_violations
    /// partition_order_violations` to the stats file's line.
    #[arg(long)]
    order_file: Option<String>,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    match Cli::parse().command {
        Command::CreateTopic {
            brokers,
            topic,
            partitions,
            replication,
        } => create_topic(&brokers, &topic, partitions, replication).await,
        Command::Produce {
            brokers,
            topic,
            count,
            run_id,
            rate,
            record,
        } => produce(&brokers, &topic, count, run_id, rate, record).await,
        Command::Receive { addr, options } => receive(&addr, options).await,
        Command::Drain { brokers, topic } => drain(&brokers, &topic),
        Command::DecodeBench { count, general } => {
            decode_bench(count, general);
            Ok(())
        }
    }
}

fn decode_bench(count: u64, general: bool) {
    use patterns_connector::config::InputFormat;
    let now = chrono::Utc::now();
    let stamp = now.to_rfc3339();
    let messages: Vec<Vec<u8>> = (0..1000)
        .map(|n| patterns_connector::event::sample::captured(9, n, &stamp).value)
        .collect();
    let bytes: usize = messages.iter().map(Vec::len).sum();
    let mut out = Vec::new();
    let mut written = 0usize;
    let start = std::time::Instant::now();
    for n in 0..count {
        out.clear();
        let message = &messages[(n % 1000) as usize];
        let decode = if general {
            patterns_connector::event::decode::decode_into_general
        } else {
            patterns_connector::event::decode::decode_into
        };
        decode(Some(message), InputFormat::Auto, now, &mut out).expect("samples decode");
        written += out.len();
    }
    let secs = start.elapsed().as_secs_f64();
    println!(
        "{} decoder: decoded {count} events ({:.0} bytes in, {:.0} bytes out on average) in {secs:.2} s: {:.2} us per event, {:.0} MB/s in",
        if general { "general" } else { "fast" },
        bytes as f64 / 1000.0,
        written as f64 / count as f64,
        secs * 1e6 / count as f64,
        bytes as f64 / 1000.0 * count as f64 / secs / 1e6
    );
}

async fn create_topic(
    brokers: &str,
    topic: &str,
    partitions: i32,
    replication: i32,
) -> anyhow::Result<()> {
    let admin: AdminClient<DefaultClientContext> = ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .create()?;
    let results = admin
        .create_topics(
            &[NewTopic::new(
                topic,
                partitions,
                TopicReplication::Fixed(replication),
            )],
            &AdminOptions::new().operation_timeout(Some(Duration::from_secs(30))),
        )
        .await?;
    for result in results {
        match result {
            Ok(name) => println!("created topic {name} with {partitions} partitions"),
            Err((name, rdkafka::types::RDKafkaErrorCode::TopicAlreadyExists)) => {
                println!("topic {name} exists")
            }
            Err((name, code)) => anyhow::bail!("cannot create topic {name}: {code}"),
        }
    }
    Ok(())
}

async fn produce(
    brokers: &str,
    topic: &str,
    count: u64,
    run_id: u32,
    rate: u64,
    record: Option<String>,
) -> anyhow::Result<()> {
    use std::io::Write;
    let producer: FutureProducer = ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .set("linger.ms", "5")
        .set("compression.type", "lz4")
        .set("enable.idempotence", "true")
        .create()?;
    let mut record = match record {
        Some(path) => Some(std::io::BufWriter::new(
            std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(path)?,
        )),
        None => None,
    };
    let started = std::time::Instant::now();
    // Enqueued one by one in `n` order (`send_result` queues synchronously;
    // idempotence keeps that order on retries), so each partition, and each
    // key, holds its events in `n` order: the receiver's order check relies on it.
    let mut pending = std::collections::VecDeque::with_capacity(1024);
    for n in 0..count {
        if rate > 0 {
            let due = started + Duration::from_secs_f64(n as f64 / rate as f64);
            tokio::time::sleep_until(due.into()).await;
        }
        let now = chrono::Utc::now()
            .format("%Y-%m-%dT%H:%M:%S%.6f+00:00")
            .to_string();
        let sample = patterns_connector::event::sample::captured(run_id, n, &now);
        loop {
            let message = FutureRecord::to(topic)
                .key(&sample.key)
                .payload(&sample.value);
            match producer.send_result(message) {
                Ok(delivery) => {
                    pending.push_back((sample.uuid.clone(), sample.key.clone(), delivery));
                    break;
                }
                Err((
                    rdkafka::error::KafkaError::MessageProduction(
                        rdkafka::types::RDKafkaErrorCode::QueueFull,
                    ),
                    _,
                )) => {
                    // The producer's queue is full: wait for the oldest delivery.
                    let Some(oldest) = pending.pop_front() else {
                        tokio::time::sleep(Duration::from_millis(10)).await;
                        continue;
                    };
                    settle(oldest, record.as_mut()).await?;
                }
                Err((e, _)) => return Err(e.into()),
            }
        }
        while pending.len() >= 1024 || (n + 1 == count && !pending.is_empty()) {
            let oldest = pending.pop_front().expect("not empty");
            settle(oldest, record.as_mut()).await?;
        }
    }
    if let Some(r) = record.as_mut() {
        r.flush()?;
    }
    println!(
        "produced {count} events to {topic} in {:.1} s",
        started.elapsed().as_secs_f64()
    );
    Ok(())
}

type Pending = (String, String, rdkafka::producer::DeliveryFuture);

/// Waits for one produced message and records `uuid partition offset key`.
async fn settle(
    (uuid, key, delivery): Pending,
    record: Option<&mut std::io::BufWriter<std::fs::File>>,
) -> anyhow::Result<()> {
    use std::io::Write;
    let delivered = delivery
        .await
        .map_err(|_| anyhow::anyhow!("the producer went away"))?
        .map_err(|(e, _)| e)?;
    if let Some(r) = record {
        writeln!(
            r,
            "{uuid} {} {} {key}",
            delivered.partition, delivered.offset
        )?;
    }
    Ok(())
}

#[derive(Default)]
struct Received {
    batches: u64,
    events: u64,
    uuids: HashSet<String>,
    latencies_ms: Vec<f64>,
    order: Option<OrderCheck>,
}

/// Checks the order events arrive in against the order they were produced
/// in (`produce --record`): each key's events, and each partition's, must
/// arrive in offset order. An event arriving after a later one of its key
/// (or partition) counts as one violation; redeliveries count too, so run
/// it without failures.
#[derive(Default)]
struct OrderCheck {
    /// uuid -> (partition, offset, key index).
    produced: std::collections::HashMap<String, (i32, i64, usize)>,
    last_of_key: Vec<i64>,
    last_of_partition: std::collections::HashMap<i32, i64>,
    key_violations: u64,
    partition_violations: u64,
}

impl OrderCheck {
    fn load(path: &str) -> anyhow::Result<Self> {
        let mut check = OrderCheck::default();
        let mut keys = std::collections::HashMap::new();
        for line in std::fs::read_to_string(path)?.lines() {
            let mut fields = line.split(' ');
            let (Some(uuid), Some(partition), Some(offset), Some(key)) =
                (fields.next(), fields.next(), fields.next(), fields.next())
            else {
                anyhow::bail!("{path}: expected `uuid partition offset key` lines, got {line:?}");
            };
            let next = keys.len();
            let key = *keys.entry(key.to_owned()).or_insert(next);
            check
                .produced
                .insert(uuid.to_owned(), (partition.parse()?, offset.parse()?, key));
        }
        check.last_of_key = vec![-1; keys.len()];
        Ok(check)
    }

    fn observe(&mut self, uuid: &str) {
        let Some(&(partition, offset, key)) = self.produced.get(uuid) else {
            return;
        };
        if self.last_of_key[key] >= offset {
            self.key_violations += 1;
        }
        self.last_of_key[key] = offset;
        let last = self.last_of_partition.entry(partition).or_insert(-1);
        if *last >= offset {
            self.partition_violations += 1;
        }
        *last = offset;
    }
}

async fn receive(addr: &str, options: ReceiverOptions) -> anyhow::Result<()> {
    let received = Received {
        order: options
            .order_file
            .as_deref()
            .map(OrderCheck::load)
            .transpose()?,
        ..Received::default()
    };
    let state = Arc::new((Mutex::new(received), options));
    let app = Router::new()
        .route("/{*path}", post(batch))
        .route("/", post(batch))
        .with_state(state);
    let listener = tokio::net::TcpListener::bind(addr).await?;
    eprintln!("receiver listening on http://{}", listener.local_addr()?);
    axum::serve(listener, app).await?;
    Ok(())
}

/// The fields of a received event the receiver reports on; the rest is
/// skipped. Lenient about their types (any JSON value), since it also
/// receives what other tools send in the benchmark.
#[derive(serde::Deserialize)]
struct EventHead {
    #[serde(default)]
    uuid: Option<Value>,
    #[serde(default)]
    event: Option<Value>,
    #[serde(default)]
    distinct_id: Option<Value>,
    #[serde(default)]
    timestamp: Option<Value>,
    #[serde(default)]
    properties: Option<HeadProperties>,
}

#[derive(serde::Deserialize)]
struct HeadProperties {
    #[serde(default, rename = "$sent_at")]
    sent_at: Option<Value>,
}

fn text(value: &Option<Value>) -> Option<&str> {
    value.as_ref().and_then(Value::as_str)
}

type ReceiverState = Arc<(Mutex<Received>, ReceiverOptions)>;

async fn batch(
    State(state): State<ReceiverState>,
    body: axum::body::Bytes,
) -> axum::response::Response {
    use axum::response::IntoResponse;
    // Reads the whole array (so the JSON is checked) but keeps only what the
    // receiver reports on, without building a tree of every event.
    let Ok(events) = serde_json::from_slice::<Vec<EventHead>>(&body) else {
        return StatusCode::BAD_REQUEST.into_response();
    };
    let (received, options) = &*state;
    if options.delay_ms > 0 {
        tokio::time::sleep(Duration::from_millis(options.delay_ms)).await;
    }
    if let Some(status) = options.status {
        return StatusCode::from_u16(status)
            .unwrap_or(StatusCode::SERVICE_UNAVAILABLE)
            .into_response();
    }
    if options.fail_ratio > 0.0 && rand::random::<f64>() < options.fail_ratio {
        match rand::random::<u8>() % 4 {
            0 => return StatusCode::INTERNAL_SERVER_ERROR.into_response(),
            1 => return (StatusCode::TOO_MANY_REQUESTS, [("retry-after", "1")]).into_response(),
            2 => {
                tokio::time::sleep(Duration::from_secs(10)).await;
                return StatusCode::SERVICE_UNAVAILABLE.into_response();
            }
            _ => std::panic::resume_unwind(Box::new("dropped connection")),
        }
    }
    let (stats_file, quiet) = (&options.stats_file, options.quiet);
    let mut r = received.lock().expect("receiver lock");
    r.batches += 1;
    r.events += events.len() as u64;
    for e in &events {
        if let Some(uuid) = text(&e.uuid) {
            r.uuids.insert(uuid.to_owned());
            if let Some(order) = r.order.as_mut() {
                order.observe(uuid);
            }
        }
    }
    if let Some(path) = &options.latency_file {
        let now = chrono::Utc::now();
        for e in &events {
            let sent = e
                .properties
                .as_ref()
                .and_then(|p| text(&p.sent_at))
                .and_then(|s| chrono::DateTime::parse_from_rfc3339(s).ok());
            if let Some(sent) = sent {
                r.latencies_ms.push(
                    (now - sent.with_timezone(&chrono::Utc))
                        .num_microseconds()
                        .unwrap_or(0) as f64
                        / 1000.0,
                );
            }
        }
        let mut sorted = r.latencies_ms.clone();
        sorted.sort_by(f64::total_cmp);
        let pick = |q: f64| {
            sorted
                .get(((sorted.len() as f64 - 1.0) * q).round() as usize)
                .copied()
                .unwrap_or(0.0)
        };
        let _ = std::fs::write(
            path,
            format!(
                "{} {:.1} {:.1} {:.1}\n",
                sorted.len(),
                pick(0.5),
                pick(0.99),
                pick(1.0)
            ),
        );
    }
    if let Some(path) = &options.record {
        use std::io::Write;
        let mut lines = String::new();
        for e in &events {
            lines.push_str(text(&e.uuid).unwrap_or("?"));
            lines.push('\n');
        }
        if let Ok(mut f) = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)
        {
            let _ = f.write_all(lines.as_bytes());
        }
    }
    if !quiet {
        let mut names: Vec<&str> = events.iter().filter_map(|e| text(&e.event)).collect();
        names.sort_unstable();
        names.dedup();
        println!(
            "batch {:>4}: {:>4} events, {:>7} bytes, {} event names (first: {}); first event uuid={} distinct_id={} timestamp={}",
            r.batches,
            events.len(),
            body.len(),
            names.len(),
            names.iter().take(3).copied().collect::<Vec<_>>().join(", "),
            events.first().and_then(|e| text(&e.uuid)).unwrap_or("?"),
            events.first().and_then(|e| text(&e.distinct_id)).unwrap_or("?"),
            events.first().and_then(|e| text(&e.timestamp)).unwrap_or("?"),
        );
    }
    if let Some(path) = stats_file {
        let order = r.order.as_ref().map_or(String::new(), |o| {
            format!(" {} {}", o.key_violations, o.partition_violations)
        });
        let _ = std::fs::write(
            path,
            format!("{} {} {}{order}\n", r.batches, r.events, r.uuids.len()),
        );
    }
    StatusCode::OK.into_response()
}

fn drain(brokers: &str, topic: &str) -> anyhow::Result<()> {
    use rdkafka::consumer::{BaseConsumer, Consumer};
    use rdkafka::message::Message;
    use rdkafka::{Offset, TopicPartitionList};
    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .set("group.id", "patterns-devkit-drain")
        .set("enable.auto.commit", "false")
        .create()?;
    let metadata = consumer.fetch_metadata(Some(topic), Duration::from_secs(10))?;
    let mut remaining = std::collections::HashMap::new();
    let mut tpl = TopicPartitionList::new();
    for p in metadata.topics()[0].partitions() {
        let (low, high) = consumer.fetch_watermarks(topic, p.id(), Duration::from_secs(10))?;
        if high > low {
            remaining.insert(p.id(), high);
        }
        tpl.add_partition_offset(topic, p.id(), Offset::Beginning)?;
    }
    consumer.assign(&tpl)?;
    let started = std::time::Instant::now();
    let (mut messages, mut bytes) = (0u64, 0u64);
    while !remaining.is_empty() {
        match consumer.poll(Duration::from_secs(10)) {
            Some(Ok(m)) => {
                messages += 1;
                bytes += m.payload_len() as u64;
                if remaining
                    .get(&m.partition())
                    .is_some_and(|end| m.offset() + 1 >= *end)
                {
                    remaining.remove(&m.partition());
                }
            }
            Some(Err(e)) => anyhow::bail!("consume error: {e}"),
            None => anyhow::bail!("no message for 10 s before the end"),
        }
    }
    let secs = started.elapsed().as_secs_f64();
    println!(
        "drained {messages} messages, {:.1} MB in {secs:.2} s: {:.0} msg/s, {:.1} MB/s",
        bytes as f64 / 1e6,
        messages as f64 / secs,
        bytes as f64 / 1e6 / secs
    );
    Ok(())
}
