//! Replicas that come and go faster than the group settles, under both
//! consumer group protocols (KAFKA_GROUP_PROTOCOL classic and consumer, the
//! latter KIP-848), with and without static identities
//! (KAFKA_GROUP_INSTANCE_ID): a replica SIGKILLed mid-rebalance, one replica
//! crash-looping next to healthy ones, a rolling restart of every replica,
//! each while a producer keeps PostHog's events coming.
//!
//! Every run asserts the guarantee: nothing lost, each key in order, and the
//! group's commits at the high watermarks at the end. Each also measures
//! what the replicas' users see, from the webhook's side: the longest time
//! each partition went without a delivery, the seconds in which nothing at
//! all was delivered, and the seconds in which some partition had no live
//! owner (read from the replicas' own gauges). Those figures are printed,
//! not asserted (they depend on the machine); `scripts/churn` runs the whole
//! matrix and writes the table docs/MEMBERSHIP.md quotes. The suite runs a
//! bounded crash loop under each protocol with static identities, the
//! shipped Kubernetes setting.

mod common;

use std::collections::{BTreeMap, HashMap};
use std::time::{Duration, Instant};

use common::steady::{check_deliveries, SteadyProducer};
use common::*;

const WAIT: Duration = Duration::from_secs(180);
const PARTITIONS: i32 = 6;
/// Events per second: 10 per partition per second, so a partition that
/// goes a second without a delivery is waiting on something.
const RATE: u64 = 60;
/// Healthy replicas; the faults pick among them (and one more).
const REPLICAS: usize = 3;
/// How long a dead replica stays dead before it is started again (an
/// orchestrator's restart, without its growing back-off).
const RESTART_AFTER: Duration = Duration::from_secs(2);
/// How long a crash-looping replica lives.
const CRASH_AFTER: Duration = Duration::from_secs(6);

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Fault {
    /// A fourth replica joins; half a second into the rebalance replica 0
    /// is SIGKILLed, and started again `RESTART_AFTER` later.
    KillMidRebalance,
    /// A fourth replica is killed `CRASH_AFTER` after each start and
    /// started again `RESTART_AFTER` after each death.
    CrashLoop,
    /// Each replica in turn: SIGTERM, started again once it exited, and the
    /// next one once it owns partitions again (or after 15 s).
    RollingRestart,
}

#[derive(Clone, Copy, Debug)]
struct Setup {
    protocol: &'static str,
    static_ids: bool,
    fault: Fault,
    /// How long faults go on (the rolling restart ends when it is done).
    length: Duration,
}

/// What one run measured.
#[derive(Debug)]
struct Report {
    setup: Setup,
    /// The longest time each partition went without a delivery, from the
    /// start of the faults to their end.
    longest_gap: BTreeMap<i32, Duration>,
    /// Whole seconds of the fault window in which nothing was delivered.
    silent_seconds: u32,
    /// Seconds (sampled every half second) in which fewer than all
    /// partitions had a live owner.
    unowned_seconds: f64,
    /// Replica starts that ended on their own with a non-zero exit (a
    /// static identity still held by a killed incarnation, under the new
    /// protocol).
    refused_starts: u32,
    produced: usize,
    duplicates: usize,
    fault_window: Duration,
}

impl Report {
    fn line(&self) -> String {
        let gaps: Vec<String> = self
            .longest_gap
            .values()
            .map(|g| format!("{:.1}", g.as_secs_f64()))
            .collect();
        format!(
            "| {:?} | {} | {} | {} | {:.1} | {} | {:.1} | {} | {} / {} |",
            self.setup.fault,
            self.setup.protocol,
            if self.setup.static_ids { "yes" } else { "no" },
            gaps.join(" "),
            self.longest_gap
                .values()
                .max()
                .copied()
                .unwrap_or_default()
                .as_secs_f64(),
            self.silent_seconds,
            self.unowned_seconds,
            self.refused_starts,
            self.duplicates,
            self.produced,
        )
    }
}

const HEADER: &str = "| fault | protocol | static | longest gap per partition (s) | longest (s) | seconds with nothing delivered | seconds with unowned partitions | starts refused | duplicates / produced |\n|---|---|---|---|---|---|---|---|---|";

struct Replica {
    id: String,
    process: Option<Connector>,
    /// When it was last started, or when it last died.
    since: Instant,
}

/// The replicas of one group, started and stopped as an orchestrator would.
struct Group {
    topic: String,
    group: String,
    url: String,
    setup: Setup,
    replicas: Vec<Replica>,
    refused_starts: u32,
    run: String,
}

impl Group {
    fn new(topic: &str, group: &str, url: &str, setup: Setup) -> Self {
        Group {
            topic: topic.to_owned(),
            group: group.to_owned(),
            url: url.to_owned(),
            setup,
            replicas: Vec::new(),
            refused_starts: 0,
            run: unique("replica"),
        }
    }

    fn start(&mut self, i: usize) {
        while self.replicas.len() <= i {
            let id = format!("{}-{}", self.run, self.replicas.len());
            self.replicas.push(Replica {
                id,
                process: None,
                since: Instant::now(),
            });
        }
        let replica = &mut self.replicas[i];
        assert!(replica.process.is_none(), "replica {i} is running");
        let mut env = vec![
            ("KAFKA_GROUP_PROTOCOL", self.setup.protocol),
            ("BATCH_LINGER_MS", "100"),
            ("SHUTDOWN_TIMEOUT_MS", "10000"),
        ];
        if self.setup.static_ids {
            env.push(("KAFKA_GROUP_INSTANCE_ID", replica.id.as_str()));
        }
        replica.process = Some(Connector::start(&self.topic, &self.group, &self.url, &env));
        replica.since = Instant::now();
    }

    fn kill(&mut self, i: usize) {
        let replica = &mut self.replicas[i];
        if let Some(process) = replica.process.as_ref() {
            process.signal("KILL");
        }
        replica.process = None;
        replica.since = Instant::now();
    }

    fn terminate(&mut self, i: usize) {
        if let Some(process) = self.replicas[i].process.as_ref() {
            process.signal("TERM");
        }
    }

    /// Notices replicas that exited on their own (or after a SIGTERM):
    /// returns which, counting non-zero exits as refused starts.
    fn reap(&mut self) -> Vec<usize> {
        let mut exited = Vec::new();
        for (i, replica) in self.replicas.iter_mut().enumerate() {
            if let Some(status) = replica.process.as_mut().and_then(Connector::exited) {
                if !status.success() {
                    self.refused_starts += 1;
                }
                replica.process = None;
                replica.since = Instant::now();
                exited.push(i);
            }
        }
        exited
    }

    fn running(&self, i: usize) -> bool {
        self.replicas.get(i).is_some_and(|r| r.process.is_some())
    }

    /// Partitions owned by live replicas, by their own gauges.
    async fn owned(&self) -> i64 {
        let mut owned = 0;
        for replica in &self.replicas {
            if let Some(process) = &replica.process {
                let text = process.metrics().await;
                owned += metric_values(&text, "patterns_connector_assigned_partitions")
                    .first()
                    .map_or(0, |(_, v)| *v as i64);
            }
        }
        owned
    }
}

async fn owned_by(process: &Connector) -> i64 {
    metric_values(
        &process.metrics().await,
        "patterns_connector_assigned_partitions",
    )
    .first()
    .map_or(0, |(_, v)| *v as i64)
}

/// Waits until every produced event reached the receiver and the group's
/// commits are at the high watermarks.
async fn delivered_and_committed(
    receiver: &Receiver,
    produced: &[Produced],
    group: &str,
    topic: &str,
    partitions: i32,
) {
    eventually(WAIT, "every produced event delivered", || {
        let got = receiver.delivered_uuids();
        produced.iter().all(|p| got.contains(&p.sample.uuid))
    })
    .await;
    let highs = high_watermarks(topic, partitions);
    eventually(
        WAIT,
        "the group's commits reach the high watermarks",
        || {
            committed(group, topic, partitions)
                .iter()
                .zip(&highs)
                .all(|(c, h)| *c == Some(*h))
        },
    )
    .await;
}

/// Runs one setup: healthy replicas, a steady producer, the faults, then
/// every replica running again until everything is delivered and committed.
async fn run(setup: Setup) -> Report {
    let (topic, group_id) = (unique("churn"), unique("g"));
    create_topic(&topic, PARTITIONS).await;
    let receiver = Receiver::start().await;
    let mut group = Group::new(&topic, &group_id, &receiver.url(), setup);
    for i in 0..REPLICAS {
        group.start(i);
    }
    let producer = SteadyProducer::start(&topic, RATE);
    eventually(WAIT, "the healthy replicas own every partition", || {
        group
            .replicas
            .iter()
            .filter_map(|r| r.process.as_ref())
            .map(|p| assigned(p).unwrap_or(0))
            .sum::<i64>()
            == i64::from(PARTITIONS)
    })
    .await;
    tokio::time::sleep(Duration::from_secs(3)).await;

    let fault_start = Instant::now();
    let mut unowned = 0.0;
    let mut next_sample = Instant::now();
    let mut rolling = 0usize;
    let mut rolling_restarted: Option<Instant> = None;
    let mut kill_done = false;
    let extra = REPLICAS; // the fourth replica
    if setup.fault != Fault::RollingRestart {
        group.start(extra);
    }
    loop {
        let now = Instant::now();
        let elapsed = now - fault_start;
        let exited = group.reap();
        match setup.fault {
            Fault::KillMidRebalance => {
                if !kill_done && elapsed >= Duration::from_millis(500) {
                    group.kill(0);
                    kill_done = true;
                }
            }
            Fault::CrashLoop => {
                let r = &group.replicas[extra];
                if r.process.is_some() && now - r.since >= CRASH_AFTER {
                    group.kill(extra);
                }
            }
            Fault::RollingRestart => {
                if rolling < REPLICAS {
                    let r = &group.replicas[rolling];
                    match (r.process.as_ref(), rolling_restarted) {
                        (Some(_), None) => {
                            group.terminate(rolling);
                            rolling_restarted = Some(now);
                        }
                        // Restarted: the next once it owns partitions.
                        (Some(p), Some(at))
                            if at < r.since
                                && (now - r.since > Duration::from_secs(15)
                                    || owned_by(p).await > 0) =>
                        {
                            rolling += 1;
                            rolling_restarted = None;
                        }
                        _ => {}
                    }
                }
            }
        }
        // Dead replicas come back, as under an orchestrator; after a
        // SIGTERM of the rolling restart, at once.
        for i in 0..group.replicas.len() {
            let r = &group.replicas[i];
            let wait = if exited.contains(&i) && setup.fault == Fault::RollingRestart {
                Duration::ZERO
            } else {
                RESTART_AFTER
            };
            if r.process.is_none() && now - r.since >= wait {
                group.start(i);
            }
        }
        if now >= next_sample {
            if group.owned().await < i64::from(PARTITIONS) {
                unowned += 0.5;
            }
            next_sample += Duration::from_millis(500);
        }
        let done = match setup.fault {
            Fault::RollingRestart => rolling >= REPLICAS,
            _ => elapsed >= setup.length,
        };
        if done {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let fault_end = Instant::now();

    // Everything running again (a static identity may be refused until the
    // broker lets the killed incarnation's go), then drained and committed.
    let settle = Instant::now();
    loop {
        group.reap();
        for i in 0..group.replicas.len() {
            let r = &group.replicas[i];
            if r.process.is_none() && Instant::now() - r.since >= RESTART_AFTER {
                group.start(i);
            }
        }
        let all_up = (0..group.replicas.len()).all(|i| group.running(i));
        if all_up && group.owned().await == i64::from(PARTITIONS) {
            break;
        }
        assert!(
            settle.elapsed() < WAIT,
            "the group did not settle after the faults"
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    let produced = producer.stop().await;
    delivered_and_committed(&receiver, &produced, &group_id, &topic, PARTITIONS).await;
    let duplicates = check_deliveries(&produced, &receiver);
    for replica in &group.replicas {
        if let Some(process) = &replica.process {
            assert_no_secret(process);
        }
    }

    // What the webhook saw, per partition, during the faults.
    let partition_of: HashMap<&str, i32> = produced
        .iter()
        .map(|p| (p.sample.uuid.as_str(), p.partition))
        .collect();
    let mut times: BTreeMap<i32, Vec<Instant>> = (0..PARTITIONS).map(|p| (p, Vec::new())).collect();
    let mut busy_seconds = std::collections::HashSet::new();
    for request in receiver.requests() {
        if !(200..300).contains(&request.status) || request.events.is_empty() {
            continue;
        }
        if request.at >= fault_start && request.at <= fault_end {
            busy_seconds.insert((request.at - fault_start).as_secs());
        }
        for event in &request.events {
            let uuid = event["uuid"].as_str().unwrap_or_default();
            if let Some(p) = partition_of.get(uuid) {
                times.entry(*p).or_default().push(request.at);
            }
        }
    }
    let longest_gap = times
        .into_iter()
        .map(|(p, mut at)| {
            at.retain(|t| *t >= fault_start && *t <= fault_end);
            at.sort();
            let mut previous = fault_start;
            let mut longest = Duration::ZERO;
            for t in at.into_iter().chain([fault_end]) {
                longest = longest.max(t - previous);
                previous = t;
            }
            (p, longest)
        })
        .collect();
    let window = fault_end - fault_start;
    let silent_seconds = (0..window.as_secs())
        .filter(|s| !busy_seconds.contains(s))
        .count() as u32;
    for i in 0..group.replicas.len() {
        group.terminate(i);
    }
    Report {
        setup,
        longest_gap,
        silent_seconds,
        unowned_seconds: unowned,
        refused_starts: group.refused_starts,
        produced: produced.len(),
        duplicates,
        fault_window: window,
    }
}

fn print(report: &Report) {
    println!("{HEADER}\n{}", report.line());
    println!("(fault window {:.0} s)", report.fault_window.as_secs_f64());
}

/// The shipped Kubernetes setting (static identities), new protocol: a
/// crash-looping replica next to three healthy ones loses nothing.
#[tokio::test(flavor = "multi_thread")]
async fn a_crash_looping_replica_under_the_new_protocol_loses_nothing() {
    let report = run(Setup {
        protocol: "consumer",
        static_ids: true,
        fault: Fault::CrashLoop,
        length: Duration::from_secs(30),
    })
    .await;
    print(&report);
}

/// The same under the classic protocol.
#[tokio::test(flavor = "multi_thread")]
async fn a_crash_looping_replica_under_the_classic_protocol_loses_nothing() {
    let report = run(Setup {
        protocol: "classic",
        static_ids: true,
        fault: Fault::CrashLoop,
        length: Duration::from_secs(30),
    })
    .await;
    print(&report);
}

/// The whole matrix (fault × protocol × static identities), one run after
/// the other so that the timings are not shared with other tests:
/// `scripts/churn` runs it and writes the table. About 25 minutes.
#[tokio::test(flavor = "multi_thread")]
#[ignore]
async fn matrix() {
    let seconds: u64 = std::env::var("CHURN_SECONDS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(90);
    let only = std::env::var("CHURN_ONLY").unwrap_or_default();
    let mut lines = vec![HEADER.to_owned()];
    for fault in [
        Fault::KillMidRebalance,
        Fault::CrashLoop,
        Fault::RollingRestart,
    ] {
        for protocol in ["classic", "consumer"] {
            for static_ids in [false, true] {
                let name = format!("{fault:?}");
                if !only.is_empty() && !only.split(',').any(|o| o == name) {
                    continue;
                }
                let report = run(Setup {
                    protocol,
                    static_ids,
                    fault,
                    length: Duration::from_secs(seconds),
                })
                .await;
                print(&report);
                lines.push(report.line());
            }
        }
    }
    let table = lines.join("\n");
    println!("\n{table}");
    if let Ok(path) = std::env::var("CHURN_REPORT") {
        std::fs::write(path, table + "\n").expect("write the report");
    }
}

/// A rebalance does not wait on a failing webhook: replica A owns both
/// partitions and cannot deliver (503s); replica B joins. A's revocation
/// drain would wait SHUTDOWN_TIMEOUT_MS (60 s here) for batches that cannot
/// be delivered; it gives up once the webhook has been failing a while, so
/// B gets its partitions long before, and nothing is lost once the webhook
/// is back.
async fn a_joining_replica_does_not_wait_for_a_drain_against_a_failing_webhook(protocol: &str) {
    let (topic, group) = (unique("outage"), unique("g"));
    create_topic(&topic, 2).await;
    let receiver = Receiver::start().await;
    receiver.set_default(Reply::status(503));
    let env = [
        ("KAFKA_GROUP_PROTOCOL", protocol),
        ("SHUTDOWN_TIMEOUT_MS", "60000"),
        ("KAFKA_PROPERTIES", "max.poll.interval.ms=120000"),
    ];
    let a = Connector::start(&topic, &group, &receiver.url(), &env);
    eventually(WAIT, "A owns both partitions", || assigned(&a) == Some(2)).await;
    let produced = produce(&topic, run_id(), 0..200).await;
    eventually(WAIT, "A is retrying against the failing webhook", || {
        receiver.requests().len() >= 5
    })
    .await;
    // Long enough that the webhook counts as failing, not blipping.
    tokio::time::sleep(Duration::from_secs(6)).await;
    let joined = Instant::now();
    let b = Connector::start(&topic, &group, &receiver.url(), &env);
    eventually(WAIT, "B owns a partition", || assigned(&b) == Some(1)).await;
    let waited = joined.elapsed();
    println!(
        "{protocol}: B owned a partition {:.1} s after it started",
        waited.as_secs_f64()
    );
    assert!(
        waited < Duration::from_secs(30),
        "B waited {waited:?}: the revocation drain held the partition for the whole SHUTDOWN_TIMEOUT_MS"
    );
    receiver.set_default(Reply::ok());
    delivered_and_committed(&receiver, &produced, &group, &topic, 2).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn under_the_new_protocol_a_rebalance_does_not_wait_on_a_failing_webhook() {
    a_joining_replica_does_not_wait_for_a_drain_against_a_failing_webhook("consumer").await;
}

#[tokio::test(flavor = "multi_thread")]
async fn under_the_classic_protocol_a_rebalance_does_not_wait_on_a_failing_webhook() {
    a_joining_replica_does_not_wait_for_a_drain_against_a_failing_webhook("classic").await;
}

/// A replica that the group gives no partition (more replicas than
/// partitions, a rolling update's surge pod) is still a member: `/readyz`
/// says so under either protocol. (The new protocol calls no assign
/// callback for an empty assignment.)
async fn a_replica_without_partitions_is_ready(protocol: &str) {
    let (topic, group) = (unique("idle"), unique("g"));
    create_topic(&topic, 1).await;
    let receiver = Receiver::start().await;
    let env = [("KAFKA_GROUP_PROTOCOL", protocol)];
    let a = Connector::start(&topic, &group, &receiver.url(), &env);
    eventually(WAIT, "A owns the partition", || assigned(&a) == Some(1)).await;
    let b = Connector::start(&topic, &group, &receiver.url(), &env);
    eventually(
        Duration::from_secs(30),
        "B, with no partition, is ready",
        || {
            b.get_blocking("/readyz")
                .is_some_and(|(status, _)| status == 200)
        },
    )
    .await;
    assert_eq!(assigned(&b), Some(0));
    assert!(a
        .get_blocking("/readyz")
        .is_some_and(|(status, _)| status == 200));
}

#[tokio::test(flavor = "multi_thread")]
async fn under_the_new_protocol_a_replica_without_partitions_is_ready() {
    a_replica_without_partitions_is_ready("consumer").await;
}

#[tokio::test(flavor = "multi_thread")]
async fn under_the_classic_protocol_a_replica_without_partitions_is_ready() {
    a_replica_without_partitions_is_ready("classic").await;
}

/// `auto` against a broker that lists the new protocol's API but refuses
/// it (Kafka 4 with `group.coordinator.rebalance.protocols=classic`; scripts/test
/// starts one and sets KAFKA_CLASSIC_HOSTS): the replica falls back to the
/// classic protocol by itself and delivers, instead of exiting at every
/// start on librdkafka's fatal "API version not supported".
#[tokio::test(flavor = "multi_thread")]
async fn auto_falls_back_to_classic_where_the_brokers_refuse_the_new_protocol() {
    let hosts = std::env::var("KAFKA_CLASSIC_HOSTS").expect(
        "KAFKA_CLASSIC_HOSTS: a broker with group.coordinator.rebalance.protocols=classic (scripts/test starts one)",
    );
    let topic = unique("classiconly");
    let producer: rdkafka::producer::FutureProducer = rdkafka::ClientConfig::new()
        .set("bootstrap.servers", &hosts)
        .create()
        .expect("producer");
    let run = run_id();
    let now = now_timestamp();
    let mut produced = Vec::new();
    for n in 0..20 {
        let sample = patterns_connector::event::sample::captured(run, n, &now);
        produced.push(send_sample(&producer, &topic, sample).await);
    }
    let receiver = Receiver::start().await;
    let mut connector = Connector::start(
        &topic,
        &unique("g"),
        &receiver.url(),
        &[("KAFKA_HOSTS", hosts.as_str())],
    );
    eventually(WAIT, "every event delivered", || {
        let got = receiver.delivered_uuids();
        produced.iter().all(|p| got.contains(&p.sample.uuid))
    })
    .await;
    assert!(connector.exited().is_none(), "{}", connector.logs());
    let metrics = connector.metrics().await;
    let protocol = metric_values(&metrics, "patterns_connector_group_protocol");
    assert!(
        protocol.contains(&("protocol=\"classic\"".to_owned(), 1.0))
            && !protocol
                .iter()
                .any(|(l, v)| l.contains("consumer") && *v != 0.0),
        "{protocol:?}"
    );
    assert_no_secret(&connector);
}
