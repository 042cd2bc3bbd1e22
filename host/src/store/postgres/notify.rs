//! Wake-ups across processes: `LISTEN flowhost_runs, flowhost_inbound` on a connection of its own, and the workers
//! that asked ([`Store::on_wake`](crate::store::Store::on_wake)) woken on each notification. The connection is made
//! again when it drops (the server restarted, a network cut), with a backoff, and every worker is woken then, since
//! notifications sent meanwhile are lost. Workers poll as well, so a lost wake-up costs at most one poll interval.

use crate::store::{Wake, WakeFn};
use sqlx::postgres::{PgConnectOptions, PgListener, PgPoolOptions};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio_util::sync::CancellationToken;

pub(super) const RUNS_CHANNEL: &str = "flowhost_runs";
pub(super) const INBOUND_CHANNEL: &str = "flowhost_inbound";
/// The longest wait between two tries to listen again.
const MAX_BACKOFF: Duration = Duration::from_secs(5);

/// The callbacks to wake, and what stops the listener.
#[derive(Clone, Default)]
pub(super) struct Wakers {
    callbacks: Arc<Mutex<Vec<WakeFn>>>,
    stop: CancellationToken,
}

impl Wakers {
    pub(super) fn add(&self, wake: WakeFn) {
        self.callbacks.lock().unwrap_or_else(std::sync::PoisonError::into_inner).push(wake);
    }

    fn wake(&self, what: Wake) {
        let callbacks = self.callbacks.lock().unwrap_or_else(std::sync::PoisonError::into_inner).clone();
        for callback in callbacks {
            callback(what);
        }
    }

    pub(super) fn stop(&self) {
        self.stop.cancel();
    }
}

/// Starts the listener task; it ends when the store closes.
pub(super) fn listen(options: PgConnectOptions, wakers: Wakers) {
    tokio::spawn(async move {
        let pool = PgPoolOptions::new()
            .max_connections(1)
            .acquire_timeout(Duration::from_secs(5))
            .max_lifetime(None)
            .idle_timeout(None)
            .connect_lazy_with(options);
        let mut backoff = Duration::from_millis(100);
        let mut listener: Option<PgListener> = None;
        while !wakers.stop.is_cancelled() {
            let current = match listener.as_mut() {
                Some(current) => current,
                None => {
                    let started = async {
                        let mut new = PgListener::connect_with(&pool).await?;
                        new.listen_all([RUNS_CHANNEL, INBOUND_CHANNEL]).await?;
                        Ok::<_, sqlx::Error>(new)
                    };
                    match started.await {
                        Ok(new) => {
                            backoff = Duration::from_millis(100);
                            // Anything sent while nobody listened is lost: look now.
                            wakers.wake(Wake::Runs);
                            wakers.wake(Wake::Inbound);
                            listener.insert(new)
                        }
                        Err(error) => {
                            tracing::warn!(%error, "cannot listen for wake-ups from other processes; workers poll meanwhile");
                            pause(&wakers, &mut backoff).await;
                            continue;
                        }
                    }
                }
            };
            let received = tokio::select! {
                received = current.try_recv() => received,
                _ = wakers.stop.cancelled() => break,
            };
            match received {
                Ok(Some(notification)) => match notification.channel() {
                    RUNS_CHANNEL => wakers.wake(Wake::Runs),
                    INBOUND_CHANNEL => wakers.wake(Wake::Inbound),
                    _ => {}
                },
                // The connection dropped; the next call listens again on a new one.
                Ok(None) => {
                    wakers.wake(Wake::Runs);
                    wakers.wake(Wake::Inbound);
                }
                Err(error) => {
                    tracing::warn!(%error, "lost the connection that listens for wake-ups; workers poll meanwhile");
                    listener = None;
                    pause(&wakers, &mut backoff).await;
                }
            }
        }
        pool.close().await;
    });
}

async fn pause(wakers: &Wakers, backoff: &mut Duration) {
    tokio::select! {
        _ = tokio::time::sleep(*backoff) => {}
        _ = wakers.stop.cancelled() => {}
    }
    *backoff = (*backoff * 2).min(MAX_BACKOFF);
}
