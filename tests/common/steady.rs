//! A producer that keeps PostHog's events coming at a steady rate, and the
//! check of what a receiver got against what was produced (nothing lost,
//! each key in order), for tests where replicas come and go.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use super::{producer, run_id, send_sample, Produced, Receiver};

/// Produces sample events at about `rate` per second until stopped.
pub struct SteadyProducer {
    stop: Arc<AtomicBool>,
    pub produced: Arc<Mutex<Vec<Produced>>>,
    task: tokio::task::JoinHandle<()>,
}

impl SteadyProducer {
    pub fn start(topic: &str, rate: u64) -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let produced = Arc::new(Mutex::new(Vec::new()));
        let producer = producer();
        let (topic, run) = (topic.to_owned(), run_id());
        let (stop2, produced2) = (stop.clone(), produced.clone());
        let task = tokio::spawn(async move {
            let started = tokio::time::Instant::now();
            let mut n = 0u64;
            while !stop2.load(Ordering::Relaxed) {
                let sample =
                    patterns_connector::event::sample::captured(run, n, &super::now_timestamp());
                let produced = send_sample(&producer, &topic, sample).await;
                produced2.lock().expect("lock").push(produced);
                n += 1;
                tokio::time::sleep_until(started + Duration::from_secs_f64(n as f64 / rate as f64))
                    .await;
            }
        });
        SteadyProducer {
            stop,
            produced,
            task,
        }
    }

    pub async fn stop(self) -> Vec<Produced> {
        self.stop.store(true, Ordering::Relaxed);
        self.task.await.expect("producer task");
        Arc::try_unwrap(self.produced)
            .expect("one owner")
            .into_inner()
            .expect("lock")
    }
}

/// Checks at-least-once and each key's order (within its partition) among
/// first deliveries, what the default ORDERING=key promises; returns the
/// number of duplicate deliveries.
pub fn check_deliveries(produced: &[Produced], receiver: &Receiver) -> usize {
    let position: HashMap<&str, (i32, &str, i64)> = produced
        .iter()
        .map(|p| {
            (
                p.sample.uuid.as_str(),
                (p.partition, p.sample.key.as_str(), p.offset),
            )
        })
        .collect();
    let delivered = receiver.delivered();
    let mut seen = HashSet::new();
    let mut last: HashMap<(i32, &str), i64> = HashMap::new();
    let mut duplicates = 0;
    for event in &delivered {
        let uuid = event["uuid"].as_str().expect("uuid");
        // Events produced after the `produced` snapshot are checked later.
        let Some(&(partition, key, offset)) = position.get(uuid) else {
            continue;
        };
        if !seen.insert(uuid) {
            duplicates += 1;
            continue;
        }
        let previous = last.entry((partition, key)).or_insert(-1);
        assert!(
            offset > *previous,
            "partition {partition}, key {key}: first delivery of offset {offset} after {previous}"
        );
        *previous = offset;
    }
    for p in produced {
        assert!(
            seen.contains(p.sample.uuid.as_str()),
            "{} (partition {}, offset {}) lost",
            p.sample.uuid,
            p.partition,
            p.offset
        );
    }
    duplicates
}
