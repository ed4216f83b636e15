//! What librdkafka reports: statistics (lag, stalls, health, the wedge
//! watch), client errors and log lines.

use std::sync::atomic::Ordering;

use rdkafka::client::ClientContext;
use rdkafka::config::RDKafkaLogLevel;
use rdkafka::error::KafkaError;
use tracing::warn;

use super::Context;
use crate::kafka::group_protocol::GroupProtocol;
use crate::kafka::wedge;
use crate::ops::health::PartitionProblems;
use crate::ops::lag::WorkerView;
use crate::ops::stats;

use crate::kafka::topics;

impl ClientContext for Context {
    fn stats_raw(&self, statistics: &[u8]) {
        let Some(stats) = stats::parse_stats(statistics) else {
            return;
        };
        self.health.set_broker_up(stats.broker_up);
        // A member with no partitions gets no assign callback under the new
        // protocol: it is a member all the same (`/readyz`). (Under the
        // classic one it gets an empty assignment, and readiness follows
        // the callbacks.)
        if self.protocol == GroupProtocol::Consumer
            && stats.group_up
            && !self.fatal_seen.load(Ordering::Relaxed)
            && !self.health.is_shutting_down()
        {
            self.health.set_joined(true);
            self.ever_joined.store(true, Ordering::Relaxed);
        }
        let now_ms = chrono::Utc::now().timestamp_millis();
        let wedged = self.wedge.lock().expect("wedge lock").wedged(now_ms);
        if let Some(skipping) = wedged {
            self.set_fatal(format!(
                "librdkafka has skipped every rebalance for {} s (its cooperative group state is stuck: \
                 partitions of replicas that left are not handed out again); exiting so that the replica \
                 is restarted, which clears it",
                skipping.as_secs()
            ));
        }
        let workers = self.workers();
        let mut lag = self.lag.lock().expect("lag lock");
        let mut problems = PartitionProblems::default();
        let dead_letters = &self.deps.deliverer.dead_letters;
        for (tp, p) in &stats.partitions {
            let Some(worker) = workers.get(tp) else {
                continue;
            };
            let shared = &worker.shared;
            let blocked = shared.blocked.load(Ordering::Relaxed);
            let dlq_failing = dead_letters.is_failing(tp);
            let (view, stalled) = lag.observe_worker(
                tp,
                p,
                &WorkerView {
                    oldest_pending_ts_ms: shared.oldest_pending_ts_ms(),
                    consumed_next: shared.consumed_next(),
                    completions: shared.completions.load(Ordering::Relaxed),
                    waiting: worker.paused
                        || blocked
                        || dlq_failing
                        || shared.waiting.load(Ordering::Relaxed),
                },
                now_ms,
            );
            let name = tp.to_string();
            if let Some(quiet) = stalled {
                // Once when it starts, then once a minute while it lasts.
                if quiet.as_secs() % 60 == crate::ops::stall::STALL_AFTER.as_secs() {
                    warn!(topic = %tp.topic, partition = tp.partition, lag = view.lag_messages, quiet_s = quiet.as_secs(),
                        "partition stalled: it has lag but neither takes nor delivers, and is not waiting on the webhook, paused, or blocked; /healthz fails until it moves");
                }
                problems.stalled.push(format!(
                    "{name} (lag {}, {} s without progress)",
                    view.lag_messages,
                    quiet.as_secs()
                ));
            }
            if blocked {
                problems.blocked.push(format!(
                    "{name} (committed {})",
                    view.committed.unwrap_or(-1)
                ));
            }
            if dlq_failing {
                problems.dead_letter_failing.push(name);
            }
            let label = tp.partition.to_string();
            let labels = [tp.topic(), label.as_str()];
            let m = &self.metrics;
            m.partition_stalled
                .with_label_values(&labels)
                .set(i64::from(stalled.is_some()));
            m.partition_blocked
                .with_label_values(&labels)
                .set(i64::from(blocked));
            m.partition_dead_letter_failing
                .with_label_values(&labels)
                .set(i64::from(dlq_failing));
            m.partition_high_watermark
                .with_label_values(&labels)
                .set(view.high_watermark);
            m.partition_committed_offset
                .with_label_values(&labels)
                .set(view.committed.unwrap_or(-1));
            m.partition_no_commit
                .with_label_values(&labels)
                .set(i64::from(view.committed.is_none()));
            m.partition_lag_messages
                .with_label_values(&labels)
                .set(view.lag_messages);
            m.partition_lag_seconds
                .with_label_values(&labels)
                .set(view.lag_seconds);
        }
        self.health.set_partition_problems(problems);
    }

    fn error(&self, error: KafkaError, reason: &str) {
        use rdkafka::types::RDKafkaErrorCode as Code;
        match error.rdkafka_error_code() {
            Some(Code::AllBrokersDown) => self.health.set_broker_up(false),
            // Wrong credentials do not fix themselves: stop with a clear error
            // instead of retrying forever while looking alive.
            Some(Code::Authentication | Code::SaslAuthenticationFailed) => {
                self.set_fatal(format!(
                    "Kafka authentication failed ({reason}); check the SASL settings in KAFKA_PROPERTIES and KAFKA_SASL_PASSWORD(_FILE)"
                ));
            }
            // librdkafka raised a fatal error (e.g. this group.instance.id was
            // fenced by another member): the client is unusable from now on.
            Some(Code::Fatal) => self.set_fatal(format!("fatal Kafka client error: {reason}")),
            // A listed topic that does not exist (yet): the topic check
            // (`kafka::topics`) reports it once, not at every metadata refresh.
            _ if topics::is_missing_topic_error(&error) => {
                self.metrics.consume_errors.inc();
                return;
            }
            _ => {}
        }
        self.logs.error("consumer", &error, reason);
    }

    fn log(&self, level: RDKafkaLogLevel, fac: &str, log_message: &str) {
        if matches!(level, RDKafkaLogLevel::Debug) {
            if wedge::is_skipped_rebalance(log_message) {
                let now_ms = chrono::Utc::now().timestamp_millis();
                self.wedge.lock().expect("wedge lock").skipped(now_ms);
            }
            if !self.debug_asked {
                return;
            }
        } else if matches!(level, RDKafkaLogLevel::Info | RDKafkaLogLevel::Notice)
            && !self.debug_asked
        {
            // Below the Warning level the consumer logged before `debug=cgrp`
            // raised it: keep them out, as before.
            return;
        }
        self.logs.log("consumer", level, fac, log_message);
    }
}
