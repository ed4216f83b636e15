//! SIGTERM and SIGINT start a graceful shutdown; a second signal exits at once.

use tokio::signal::unix::{signal, SignalKind};
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

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
