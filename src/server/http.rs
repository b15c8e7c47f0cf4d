//! The HTTP/1 connection loop under the router, in place of `axum::serve`: the same hyper
//! connection with upgrades, plus what `axum::serve` cannot set: a deadline for a request's
//! headers and for the gaps in its body (slow-loris), and the peer's address for the
//! per-address limits ([`axum::extract::ConnectInfo`]). On shutdown no connection is accepted
//! any more, open ones finish their request in progress and the loop returns once they have.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::time::Duration;

use axum::Router;
use axum::body::Body;
use axum::extract::ConnectInfo;
use axum::serve::Listener;
use hyper::body::Incoming;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tower::Service;
use tower_http::timeout::TimeoutBody;

/// The deadlines every connection gets.
#[derive(Debug, Clone, Copy)]
pub(super) struct Deadlines {
    /// From the first byte of a request to the end of its headers.
    pub header: Duration,
    /// Longest gap between the bytes of a request body.
    pub body: Duration,
}

/// Serves `router` on every connection `listener` accepts until `shutdown` is cancelled.
pub(super) async fn serve<L>(
    mut listener: L,
    router: Router,
    deadlines: Deadlines,
    shutdown: CancellationToken,
) where
    L: Listener<Addr = SocketAddr>,
{
    let connections = TaskTracker::new();
    loop {
        let (io, peer) = tokio::select! {
            accepted = listener.accept() => accepted,
            () = shutdown.cancelled() => break,
        };
        let router = router.clone();
        let shutdown = shutdown.clone();
        connections.spawn(async move {
            let service = hyper::service::service_fn(move |mut req: hyper::Request<Incoming>| {
                req.extensions_mut().insert(ConnectInfo(peer));
                let req = req.map(|body| Body::new(TimeoutBody::new(deadlines.body, body)));
                let mut router = router.clone();
                async move { Ok::<_, Infallible>(router.call(req).await.unwrap_or_else(|e| match e {})) }
            });
            let conn = hyper::server::conn::http1::Builder::new()
                .timer(TokioTimer::new())
                .header_read_timeout(deadlines.header)
                .serve_connection(TokioIo::new(io), service)
                .with_upgrades();
            let mut conn = std::pin::pin!(conn);
            tokio::select! {
                result = conn.as_mut() => {
                    if let Err(e) = result {
                        tracing::debug!(peer = %peer, error = %e, "HTTP connection ended with an error");
                    }
                }
                () = shutdown.cancelled() => {
                    conn.as_mut().graceful_shutdown();
                    let _ = conn.await;
                }
            }
        });
    }
    connections.close();
    connections.wait().await;
}
