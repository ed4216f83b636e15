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

use std::sync::{Arc, Weak};
use std::time::Duration;

use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::{Offset, TopicPartitionList};
use tracing::{debug, warn};

use crate::config::Config;
use crate::kafka::connection::{Connection, SideContext};
use crate::kafka::consumer::Context;

/// How often the assigned partitions' high watermarks are read.
pub const INTERVAL: Duration = Duration::from_secs(3);

/// Starts the probe for the consumer whose context this is. It stops by
/// itself when the consumer (and so its context) is dropped.
pub fn spawn(config: &Config, context: &Arc<Context>) -> anyhow::Result<()> {
    let client: BaseConsumer<SideContext> = Connection::from_config(config)
        .client_config("patterns-connector-watermarks")
        .create_with_context(SideContext::new("watermark probe"))
        .map_err(|e| anyhow::anyhow!("cannot create the watermark client: {e}"))?;
    let context = Arc::downgrade(context);
    std::thread::Builder::new()
        .name("watermark-probe".into())
        .spawn(move || run(&client, &context))?;
    Ok(())
}

fn run(client: &BaseConsumer<SideContext>, context: &Weak<Context>) {
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
        let (topic, assigned) = (ctx.topic().to_owned(), ctx.assigned_partitions());
        // Do not keep the consumer alive across the blocking call.
        drop(ctx);
        if assigned.is_empty() {
            continue;
        }
        let mut latest = TopicPartitionList::new();
        for partition in &assigned {
            // -1 as a ListOffsets timestamp asks for the latest offset: the high watermark.
            let _ = latest.add_partition_offset(&topic, *partition, Offset::End);
        }
        match client.offsets_for_times(latest, Duration::from_secs(5)) {
            Ok(resolved) => {
                let Some(ctx) = context.upgrade() else { return };
                for elem in resolved.elements_for_topic(&topic) {
                    match (elem.error(), elem.offset()) {
                        (Ok(()), Offset::Offset(high)) => {
                            ctx.probed_high_watermark(elem.partition(), high)
                        }
                        _ => {
                            debug!(partition = elem.partition(), offset = ?elem.offset(), "no high watermark in the answer")
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
        debug!(topic, "paused partitions' watermarks probed");
    }
}
