//! The consumer thread's outer loop: one group consumer after another while
//! the group refuses the join for a reason that passes.
//!
//! - A static identity still held by a killed incarnation (new protocol):
//!   wait `JOIN_RETRY` and join again, up to `IDENTITY_WAIT` in all; past
//!   that, two running replicas share one identity, and the process exits
//!   non-zero. Exiting at once would only add the orchestrator's growing
//!   restart back-off to the brokers' session timeout.
//! - The new protocol refused by brokers that list it (`auto` chose it from
//!   their API versions): fall back to classic at once. When the operator
//!   forced `consumer`, exit non-zero naming `KAFKA_GROUP_PROTOCOL`.
//!
//! Any other end of a consumer ends the loop with it.

use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tracing::warn;

use super::{create, run, JoinRefused, Refusal};
use crate::config::{Config, GroupProtocolChoice};
use crate::kafka::group_protocol::GroupProtocol;
use crate::kafka::state::StateTopic;
use crate::ops::health::Health;
use crate::ops::metrics::Metrics;
use crate::partition::{self, Progress};

/// How long a replica whose static identity is still held waits before
/// joining again.
pub const JOIN_RETRY: Duration = Duration::from_secs(3);

/// How long it waits in all before concluding that a running replica
/// shares its identity: longer than the brokers' longest session timeout
/// by default (`group.consumer.max.session.timeout.ms`, 60 s).
pub const IDENTITY_WAIT: Duration = Duration::from_secs(120);

/// What every consumer of the process shares.
pub struct Parts {
    pub config: Arc<Config>,
    pub runtime: tokio::runtime::Handle,
    pub deps: Arc<partition::Deps>,
    pub metrics: Arc<Metrics>,
    pub health: Arc<Health>,
    pub state: Option<StateTopic>,
}

/// Runs group consumers until the shutdown, or until one ends for good.
pub fn serve(
    parts: Parts,
    mut protocol: GroupProtocol,
    mut progress: mpsc::UnboundedReceiver<Progress>,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    let config = &parts.config;
    let mut held_since: Option<Instant> = None;
    loop {
        let consumer = create(
            config,
            parts.runtime.clone(),
            parts.deps.clone(),
            parts.metrics.clone(),
            parts.health.clone(),
            parts.state.clone(),
            protocol,
        )?;
        let result = run(
            consumer,
            &mut progress,
            config.max_buffered_bytes,
            config.shutdown_timeout,
            shutdown.clone(),
        );
        let refused = match &result {
            Err(e) => e.downcast_ref::<JoinRefused>(),
            Ok(()) => None,
        };
        let Some(refused) = refused else {
            return result;
        };
        if shutdown.is_cancelled() {
            // Stopped while joining: nothing to drain.
            return Ok(());
        }
        match refused.refusal {
            Refusal::ProtocolRefused
                if protocol == GroupProtocol::Consumer
                    && config.group_protocol == GroupProtocolChoice::Auto =>
            {
                warn!(error = %refused,
                    "the brokers refuse the next-generation group protocol although they list it; using the classic protocol");
                set_protocol_gauge(&parts.metrics, GroupProtocol::Classic);
                protocol = GroupProtocol::Classic;
            }
            Refusal::ProtocolRefused => {
                return result.map_err(|e| {
                    e.context(
                        "the brokers refuse the next-generation group protocol: set KAFKA_GROUP_PROTOCOL=classic (or auto)",
                    )
                });
            }
            Refusal::IdentityHeld => {
                if refused.had_joined {
                    held_since = None;
                }
                let since = *held_since.get_or_insert_with(Instant::now);
                if since.elapsed() >= IDENTITY_WAIT {
                    return result.map_err(|e| {
                        e.context(format!(
                            "KAFKA_GROUP_INSTANCE_ID is still held by another member after {} s: \
                             two running replicas share one identity (each needs its own, e.g. its pod's name)",
                            IDENTITY_WAIT.as_secs()
                        ))
                    });
                }
                warn!(error = %refused, retry_in = ?JOIN_RETRY,
                    "waiting for the brokers to release this replica's static identity (an earlier incarnation that was killed keeps it until the group's session timeout, 45 s by default)");
                wait_or_shutdown(&shutdown, JOIN_RETRY);
                if shutdown.is_cancelled() {
                    return Ok(());
                }
            }
        }
    }
}

/// `patterns_connector_group_protocol`: 1 for the protocol spoken, 0 for the other.
pub fn set_protocol_gauge(metrics: &Metrics, protocol: GroupProtocol) {
    for p in [GroupProtocol::Classic, GroupProtocol::Consumer] {
        metrics
            .group_protocol
            .with_label_values(&[p.as_str()])
            .set(i64::from(p == protocol));
    }
}

/// Sleeps for `wait`, or until the shutdown starts.
fn wait_or_shutdown(shutdown: &CancellationToken, wait: Duration) {
    let until = Instant::now() + wait;
    while !shutdown.is_cancelled() && Instant::now() < until {
        std::thread::sleep(Duration::from_millis(50));
    }
}
