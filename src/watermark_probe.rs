//! High watermarks of paused partitions, asked of the broker.
//!
//! librdkafka learns a partition's high watermark from its fetch responses.
//! A partition paused by backpressure (a slow or failing webhook) is not
//! fetched, so its statistics keep the watermark of the moment it paused,
//! and lag in messages would read low exactly when it matters. A thread
//! next to the consumer asks the broker (ListOffsets) for the paused
//! partitions' high watermarks every `INTERVAL` and hands them to the lag
//! tracker (`lag.rs`), which counts the higher of the two.

use std::sync::{Arc, Weak};
use std::time::Duration;

use rdkafka::consumer::{BaseConsumer, Consumer};
use tracing::{debug, warn};

use crate::config::Config;
use crate::consumer::Context;
use crate::dlq::side_client;

/// How often paused partitions are asked about.
pub const INTERVAL: Duration = Duration::from_secs(5);

/// Starts the probe for the consumer whose context this is. It stops by
/// itself when the consumer (and so its context) is dropped.
pub fn spawn(config: &Config, context: &Arc<Context>) -> anyhow::Result<()> {
    let client: BaseConsumer = side_client(config, "patterns-connector-watermarks")
        .create()
        .map_err(|e| anyhow::anyhow!("cannot create the watermark client: {e}"))?;
    let context = Arc::downgrade(context);
    std::thread::Builder::new()
        .name("watermark-probe".into())
        .spawn(move || run(&client, &context))?;
    Ok(())
}

fn run(client: &BaseConsumer, context: &Weak<Context>) {
    let step = Duration::from_millis(250);
    let mut waited = Duration::ZERO;
    let mut failures: u64 = 0;
    loop {
        std::thread::sleep(step);
        waited += step;
        if waited < INTERVAL {
            // Only check that the consumer still exists.
            if context.strong_count() == 0 {
                return;
            }
            continue;
        }
        waited = Duration::ZERO;
        let Some(ctx) = context.upgrade() else { return };
        let (topic, paused) = (ctx.topic().to_owned(), ctx.paused_partitions());
        // Do not keep the consumer alive across the blocking calls.
        drop(ctx);
        for partition in paused {
            match client.fetch_watermarks(&topic, partition, Duration::from_secs(5)) {
                Ok((_, high)) => match context.upgrade() {
                    Some(ctx) => ctx.probed_high_watermark(partition, high),
                    None => return,
                },
                Err(e) => {
                    if crate::log_limit::worth_logging(failures) {
                        warn!(partition, error = %e, failures = failures + 1,
                            "cannot read a paused partition's high watermark; its lag in messages may read low");
                    }
                    failures += 1;
                }
            }
        }
        debug!(topic, "paused partitions' watermarks probed");
    }
}
