//! Closing a Kafka client without waiting for ever.
//!
//! Dropping an rdkafka client is librdkafka's close: a group consumer
//! leaves its group and waits for every commit in flight. A coordinator
//! that moved mid-rebalance can hold those for many seconds (a broker serves
//! one connection's requests in order, and a JoinGroup ahead of them is held
//! until the rebalance ends); a LeaveGroup waits up to `socket.timeout.ms`.
//! [`within`] closes on a thread of its own and waits only so long; past
//! that the caller goes on and the close finishes, or not, behind it.

use std::sync::mpsc::{channel, RecvTimeoutError};
use std::time::Duration;

/// How a close ended, as far as the caller waited.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Closed {
    Done,
    /// Still closing when the wait ended; the thread goes on.
    TimedOut,
    /// The close panicked (a callback run during it).
    Panicked,
    /// No thread could be started: the client is left open, never closed
    /// on the caller's thread (which could wait for ever).
    NoThread,
}

/// Drops `client` on a thread named `name`, waiting at most `wait`.
pub fn within<T: Send + 'static>(client: T, wait: Duration, name: &str) -> Closed {
    within_on(
        std::thread::Builder::new().name(name.to_owned()),
        client,
        wait,
    )
}

fn within_on<T: Send + 'static>(
    builder: std::thread::Builder,
    client: T,
    wait: Duration,
) -> Closed {
    // The client goes to the thread only once it runs: a closure that owned
    // it would be dropped, closing it, on this thread if the spawn failed.
    let (hand, take) = channel::<T>();
    let (done, closed) = channel::<()>();
    let spawned = builder.spawn(move || {
        if let Ok(client) = take.recv() {
            drop(client);
            let _ = done.send(());
        }
    });
    if spawned.is_err() {
        std::mem::forget(client);
        return Closed::NoThread;
    }
    if let Err(unsent) = hand.send(client) {
        std::mem::forget(unsent.0);
        return Closed::NoThread;
    }
    match closed.recv_timeout(wait) {
        Ok(()) => Closed::Done,
        Err(RecvTimeoutError::Timeout) => Closed::TimedOut,
        Err(RecvTimeoutError::Disconnected) => Closed::Panicked,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::sync::Arc;
    use std::time::Instant;

    /// A client whose close takes `close` and records that it ran.
    struct Slow {
        close: Duration,
        panics: bool,
        closed_on: Arc<std::sync::Mutex<Option<String>>>,
        ran: Arc<AtomicBool>,
    }

    impl Drop for Slow {
        fn drop(&mut self) {
            self.ran.store(true, Ordering::SeqCst);
            *self.closed_on.lock().unwrap() = std::thread::current().name().map(str::to_owned);
            std::thread::sleep(self.close);
            if self.panics {
                panic!("a callback failed during the close");
            }
        }
    }

    fn slow(
        close_ms: u64,
        panics: bool,
    ) -> (Slow, Arc<AtomicBool>, Arc<std::sync::Mutex<Option<String>>>) {
        let (ran, on) = (Arc::default(), Arc::default());
        let client = Slow {
            close: Duration::from_millis(close_ms),
            panics,
            closed_on: Arc::clone(&on),
            ran: Arc::clone(&ran),
        };
        (client, ran, on)
    }

    #[test]
    fn a_quick_close_is_waited_for_on_its_own_thread() {
        let (client, ran, on) = slow(10, false);
        assert_eq!(
            within(client, Duration::from_secs(5), "closing-test"),
            Closed::Done
        );
        assert!(ran.load(Ordering::SeqCst));
        assert_eq!(on.lock().unwrap().as_deref(), Some("closing-test"));
    }

    #[test]
    fn a_hanging_close_is_left_behind_after_the_wait() {
        let (client, _, _) = slow(3_000, false);
        let started = Instant::now();
        assert_eq!(
            within(client, Duration::from_millis(100), "closing-test"),
            Closed::TimedOut
        );
        assert!(
            started.elapsed() < Duration::from_secs(2),
            "{:?}",
            started.elapsed()
        );
    }

    #[test]
    fn a_close_that_panics_is_told_apart_from_a_timeout() {
        let (client, _, _) = slow(0, true);
        assert_eq!(
            within(client, Duration::from_secs(5), "closing-test"),
            Closed::Panicked
        );
    }

    #[test]
    fn without_a_thread_the_client_is_never_closed_on_the_callers_thread() {
        let (client, ran, _) = slow(3_000, false);
        // A stack no machine can give: the spawn fails.
        let builder = std::thread::Builder::new().stack_size(usize::MAX / 2);
        let started = Instant::now();
        assert_eq!(
            within_on(builder, client, Duration::from_secs(5)),
            Closed::NoThread
        );
        assert!(!ran.load(Ordering::SeqCst), "closed on the caller's thread");
        assert!(started.elapsed() < Duration::from_secs(2));
    }
}
