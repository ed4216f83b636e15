//! High watermarks of every assigned partition, asked of the broker.
//!
//! librdkafka learns a partition's high watermark from its fetch responses.
//! A partition that does not fetch (paused by backpressure during a webhook
//! outage, blocked, not fetched yet, or stuck) keeps the watermark of the
//! moment it stopped, and lag in messages would read low exactly when it
//! matters. A thread next to the consumer asks the broker for the high
//! watermarks of all assigned partitions every `INTERVAL`, in one ListOffsets
//! request per broker, and hands them to the lag tracker (`ops::lag`), which
//! counts the higher of the probe and the statistics. So the gauge is never
//! more than `INTERVAL` (plus a statistics interval) behind the broker,
//! whatever the partition's state.

use std::collections::BTreeMap;
use std::sync::{Arc, Weak};
use std::time::Duration;

use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::{Offset, TopicPartitionList};
use tracing::{debug, info, warn};

use crate::config::Config;
use crate::kafka::connection::{Connection, SideContext};
use crate::kafka::topics::{self, Change, TopicCheck};
use crate::topic_partition::TopicPartition;

/// What the probe reads and reports to: the consumer's context. A trait, so
/// that this module needs nothing of the consumer's.
pub trait Probed: Send + Sync + 'static {
    /// The topic-partitions assigned to this replica, sorted.
    fn assigned_partitions(&self) -> Vec<TopicPartition>;
    /// A high watermark read from the broker.
    fn probed_high_watermark(&self, tp: &TopicPartition, high_watermark: i64);
    /// The topic check's result: partitions of the topics read, and which
    /// listed topics are missing.
    fn topics_checked(&self, listed: &[String], missing: &[String], partitions: usize);
}

/// How often the assigned partitions' high watermarks are read.
pub const INTERVAL: Duration = Duration::from_secs(3);

/// Starts the probe for the consumer whose context this is, and the check
/// of which topics read exist (`kafka::topics`, every `topic_check`). Both
/// stop by themselves when the consumer (and so its context) is dropped.
pub fn spawn<C: Probed>(
    config: &Config,
    context: &Arc<C>,
    topic_check: Duration,
) -> anyhow::Result<()> {
    let client: BaseConsumer<SideContext> = Connection::from_config(config)
        .client_config("patterns-connector-watermarks")
        .create_with_context(SideContext::new("watermark probe"))
        .map_err(|e| anyhow::anyhow!("cannot create the watermark client: {e}"))?;
    // The topic check runs on its own thread, with the same client (one
    // client less to connect and log): a slow metadata answer (up to 10 s)
    // must not hold up the watermarks, which lag relies on.
    let client = Arc::new(client);
    let checker = client.clone();
    let (probe_context, check_context) = (Arc::downgrade(context), Arc::downgrade(context));
    std::thread::Builder::new()
        .name("watermark-probe".into())
        .spawn(move || run(&client, &probe_context))?;
    let config = config.clone();
    std::thread::Builder::new()
        .name("topic-check".into())
        .spawn(move || check_topics(&checker, &check_context, &config, topic_check))?;
    Ok(())
}

/// Checks which topics read exist, every `every`, until the consumer is gone.
fn check_topics<C: Probed>(
    client: &BaseConsumer<SideContext>,
    context: &Weak<C>,
    config: &Config,
    every: Duration,
) {
    let mut topics = TopicProbe::default();
    loop {
        if context.strong_count() == 0 {
            return;
        }
        if topics.due(every) {
            topics.check(client, context, config);
        }
        std::thread::sleep(Duration::from_millis(250));
    }
}

fn run<C: Probed>(client: &BaseConsumer<SideContext>, context: &Weak<C>) {
    let step = Duration::from_millis(250);
    let mut waited = Duration::ZERO;
    let mut failures: u64 = 0;
    loop {
        std::thread::sleep(step);
        waited += step;
        // Serves the client's log and error callbacks (it has no group, so
        // nothing else polls its queue).
        let _ = client.poll(Duration::ZERO);
        if waited < INTERVAL {
            // Only check that the consumer still exists.
            if context.strong_count() == 0 {
                return;
            }
            continue;
        }
        waited = Duration::ZERO;
        let Some(ctx) = context.upgrade() else { return };
        let assigned = ctx.assigned_partitions();
        // Do not keep the consumer alive across the blocking call.
        drop(ctx);
        if assigned.is_empty() {
            continue;
        }
        let mut latest = TopicPartitionList::new();
        for tp in &assigned {
            // -1 as a ListOffsets timestamp asks for the latest offset: the high watermark.
            let _ = latest.add_partition_offset(tp.topic(), tp.partition, Offset::End);
        }
        match client.offsets_for_times(latest, Duration::from_secs(5)) {
            Ok(resolved) => {
                let Some(ctx) = context.upgrade() else { return };
                for elem in resolved.elements() {
                    match (elem.error(), elem.offset()) {
                        (Ok(()), Offset::Offset(high)) => ctx.probed_high_watermark(
                            &TopicPartition::new(elem.topic(), elem.partition()),
                            high,
                        ),
                        _ => {
                            debug!(topic = elem.topic(), partition = elem.partition(), offset = ?elem.offset(), "no high watermark in the answer")
                        }
                    }
                }
                failures = 0;
            }
            Err(e) => {
                if crate::ops::log_limit::worth_logging(failures) {
                    warn!(error = %e, failures = failures + 1,
                        "cannot read the assigned partitions' high watermarks; lag in messages may read low for partitions that do not fetch");
                }
                failures += 1;
            }
        }
        debug!(
            partitions = assigned.len(),
            "assigned partitions' watermarks probed"
        );
    }
}

/// The topic check's state on the probe thread.
#[derive(Default)]
struct TopicProbe {
    last: Option<std::time::Instant>,
    check: TopicCheck,
    failures: u64,
}

impl TopicProbe {
    fn due(&self, every: Duration) -> bool {
        self.last.map_or(true, |at| at.elapsed() >= every)
    }

    /// Reads the cluster's topics and reports those read that are missing.
    fn check<C: Probed>(
        &mut self,
        client: &BaseConsumer<SideContext>,
        context: &Weak<C>,
        config: &Config,
    ) {
        self.last = Some(std::time::Instant::now());
        let metadata = match client.fetch_metadata(None, Duration::from_secs(10)) {
            Ok(metadata) => metadata,
            Err(e) => {
                if crate::ops::log_limit::worth_logging(self.failures) {
                    warn!(error = %e, "cannot read the cluster's topics; missing topics are not reported meanwhile");
                }
                self.failures += 1;
                return;
            }
        };
        self.failures = 0;
        let present: BTreeMap<String, usize> = metadata
            .topics()
            .iter()
            .filter(|t| t.error().is_none() && topics::subscribed(config, t.name()))
            .map(|t| (t.name().to_owned(), t.partitions().len()))
            .collect();
        let listed = topics::listed(config);
        let (changes, missing) = self.check.observe(listed.as_deref(), &present);
        for change in changes {
            match change {
                Change::Missing(topic) => warn!(topic, "a topic listed in KAFKA_TOPIC does not exist; the others are read meanwhile, and it is read once it is created"),
                Change::Appeared(topic) => info!(topic, "a topic listed in KAFKA_TOPIC now exists; it is read from its earliest offset"),
                Change::NothingMatches(true) => warn!(pattern = %topics::subscription(config).join(","), "no topic matches KAFKA_TOPIC's pattern; topics created later that match it are read"),
                Change::NothingMatches(false) => info!("topics matching KAFKA_TOPIC's pattern now exist"),
            }
        }
        let Some(ctx) = context.upgrade() else { return };
        ctx.topics_checked(
            listed.as_deref().unwrap_or_default(),
            &missing,
            present.values().sum(),
        );
    }
}
