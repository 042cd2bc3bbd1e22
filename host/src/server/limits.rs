//! Serving the API within limits, so that a slow, idle or lying client cannot hold the service: the time to
//! send a request's headers (hyper's `header_read_timeout`, which also closes a connection idle between
//! requests), the time to send its body (a deadline on the body, whatever its `Content-Length` says), and the
//! connections open at once (further clients wait in the listen queue until one closes).

use axum::Router;
use axum::body::{Body, Bytes};
use axum::extract::Request;
use axum::middleware::Next;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::server::graceful::GracefulShutdown;
use hyper_util::service::TowerToHyperService;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;
use tokio::net::TcpListener;
use tokio::sync::Semaphore;

/// How long clients may take, and how many may be connected at once (`[server]` in flowhost.toml).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ServerLimits {
    /// From when a connection opens, or finishes its previous request, to the end of the next request's headers.
    pub header_read_timeout: Duration,
    /// From the end of a request's headers to the end of its body.
    pub body_read_timeout: Duration,
    /// Connections open at once.
    pub max_connections: usize,
}

impl Default for ServerLimits {
    fn default() -> Self {
        ServerLimits {
            header_read_timeout: Duration::from_secs(10),
            body_read_timeout: Duration::from_secs(30),
            max_connections: 1024,
        }
    }
}

/// The error a body read past its deadline fails with (the API answers 408).
#[derive(Debug, thiserror::Error)]
#[error("the body did not arrive within {0:?}")]
pub struct BodyTimeout(pub Duration);

/// Serves `app` on `listener` (HTTP/1.1) within `limits`, until `shutdown` completes; then stops accepting and
/// waits for the requests in flight.
pub async fn serve(
    listener: TcpListener,
    app: Router,
    limits: ServerLimits,
    shutdown: impl Future<Output = ()>,
) -> std::io::Result<()> {
    let body_timeout = limits.body_read_timeout;
    let app = app.layer(axum::middleware::from_fn(move |request: Request, next: Next| {
        next.run(request.map(|body| Body::new(DeadlineBody::new(body, body_timeout))))
    }));
    let slots = Arc::new(Semaphore::new(limits.max_connections));
    let graceful = GracefulShutdown::new();
    tokio::pin!(shutdown);
    loop {
        // A slot first: beyond the limit, clients wait in the kernel's listen queue, costing no descriptor.
        let slot = tokio::select! {
            slot = slots.clone().acquire_owned() => slot.expect("the semaphore is never closed"),
            () = &mut shutdown => break,
        };
        let stream = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => stream,
                Err(e) => {
                    // Out of descriptors, or a connection reset before it was accepted: wait a little, go on.
                    tracing::warn!(error = %e, "accepting a connection failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            () = &mut shutdown => break,
        };
        let _ = stream.set_nodelay(true);
        let connection = hyper::server::conn::http1::Builder::new()
            .timer(TokioTimer::new())
            .header_read_timeout(limits.header_read_timeout)
            .serve_connection(TokioIo::new(stream), TowerToHyperService::new(app.clone()));
        let connection = graceful.watch(connection);
        tokio::spawn(async move {
            if let Err(e) = connection.await {
                tracing::debug!(error = %e, "a connection ended with an error");
            }
            drop(slot);
        });
    }
    drop(listener);
    graceful.shutdown().await;
    Ok(())
}

/// A request body that fails once its deadline has passed, however slowly its bytes trickle in.
struct DeadlineBody {
    inner: Body,
    limit: Duration,
    deadline: Pin<Box<tokio::time::Sleep>>,
}

impl DeadlineBody {
    fn new(inner: Body, limit: Duration) -> Self {
        DeadlineBody { inner, limit, deadline: Box::pin(tokio::time::sleep(limit)) }
    }
}

impl http_body::Body for DeadlineBody {
    type Data = Bytes;
    type Error = axum::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<http_body::Frame<Bytes>, axum::Error>>> {
        if let Poll::Ready(frame) = Pin::new(&mut self.inner).poll_frame(cx) {
            return Poll::Ready(frame);
        }
        match self.deadline.as_mut().poll(cx) {
            Poll::Ready(()) => Poll::Ready(Some(Err(axum::Error::new(BodyTimeout(self.limit))))),
            Poll::Pending => Poll::Pending,
        }
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.inner.size_hint()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http_body_util::BodyExt;

    /// One frame, then nothing ever again: a client that stopped sending.
    struct Stalled(bool);

    impl http_body::Body for Stalled {
        type Data = Bytes;
        type Error = std::convert::Infallible;

        fn poll_frame(
            mut self: Pin<&mut Self>,
            _: &mut Context<'_>,
        ) -> Poll<Option<Result<http_body::Frame<Bytes>, Self::Error>>> {
            if std::mem::replace(&mut self.0, true) {
                Poll::Pending
            } else {
                Poll::Ready(Some(Ok(http_body::Frame::data(Bytes::from_static(b"part")))))
            }
        }
    }

    #[tokio::test]
    async fn a_body_that_does_not_arrive_in_time_fails_naming_the_limit() {
        let mut body = DeadlineBody::new(Body::new(Stalled(false)), Duration::from_millis(200));
        let first = body.frame().await.unwrap().unwrap().into_data().unwrap();
        assert_eq!(first, "part");
        // Nothing more comes: the read fails at the deadline, and says so.
        let error = body.frame().await.unwrap().unwrap_err();
        let timeout = std::error::Error::source(&error).and_then(|e| e.downcast_ref::<BodyTimeout>());
        assert!(timeout.is_some(), "{error}");
        assert!(error.to_string().contains("200ms"), "{error}");
    }
}
