//! SIGTERM and SIGINT start a graceful shutdown; a second signal exits at once.

use std::time::Duration;

use tokio::signal::unix::{signal, SignalKind};
use tokio_util::sync::CancellationToken;
use tracing::{error, info, warn};

/// What the shutdown may take beyond `SHUTDOWN_TIMEOUT_MS`: the final commit
/// and leaving the group. The manifests' grace periods leave room for it.
pub const EXIT_GRACE: Duration = Duration::from_secs(10);

/// Exits the process (status 1) if it is still running `limit` after
/// `token` was cancelled. The drain honours its deadline, but librdkafka's
/// synchronous commit and its close wait without one, and a coordinator lost
/// at the wrong moment (seen in the chaos test, with a broker restarting)
/// can leave them waiting for ever: the replica then stays in the group,
/// holding partitions nobody reads. A plain thread, so a blocked async
/// runtime cannot stop it.
pub fn watchdog(token: CancellationToken, limit: Duration) -> std::io::Result<()> {
    std::thread::Builder::new()
        .name("shutdown-watchdog".into())
        .spawn(move || {
            while !token.is_cancelled() {
                std::thread::sleep(Duration::from_millis(100));
            }
            std::thread::sleep(limit);
            error!(
                limit_s = limit.as_secs(),
                "shutdown did not finish in time (a Kafka commit or close is hanging); exiting now: undelivered events stay uncommitted and are redelivered"
            );
            std::process::exit(1);
        })?;
    Ok(())
}

/// Cancels `token` on the first SIGTERM or SIGINT; exits the process on the second.
pub fn install(token: CancellationToken) -> std::io::Result<()> {
    let mut term = signal(SignalKind::terminate())?;
    let mut int = signal(SignalKind::interrupt())?;
    tokio::spawn(async move {
        tokio::select! {
            _ = term.recv() => info!("SIGTERM received; shutting down gracefully"),
            _ = int.recv() => info!("SIGINT received; shutting down gracefully"),
        }
        token.cancel();
        tokio::select! {
            _ = term.recv() => {},
            _ = int.recv() => {},
        }
        warn!("second signal received; exiting without draining (undelivered events stay uncommitted)");
        std::process::exit(130);
    });
    Ok(())
}

/// The caller cancelled (shutdown or revocation deadline) before the work was done.
#[derive(Debug, thiserror::Error)]
#[error("delivery cancelled before the webhook accepted the batch")]
pub struct Cancelled;

/// Sleeps for `delay`, or stops early with [`Cancelled`] when `cancel` fires.
pub async fn pause(delay: Duration, cancel: &CancellationToken) -> Result<(), Cancelled> {
    tokio::select! {
        _ = cancel.cancelled() => Err(Cancelled),
        _ = tokio::time::sleep(delay) => Ok(()),
    }
}
