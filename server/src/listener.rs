//! Accepting sockets: one permit per socket, HTTP/1.1 served by hyper, and a precise
//! refusal when the server is full.

use std::sync::Arc;
use std::sync::atomic::Ordering::Relaxed;
use std::time::Duration;

use axum::Router;
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper_util::rt::{TokioIo, TokioTimer};
use parking_lot::Mutex;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tower::ServiceExt;

use crate::http::SocketPermit;
use crate::node::Node;

/// How long a client may take to send its request headers.
const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(10);
/// Refusals (HTTP 503) being written at once; beyond it, excess sockets are just closed,
/// so a connection flood cannot make the refusals themselves exhaust file descriptors.
const REFUSALS_IN_FLIGHT_MAX: usize = 64;
/// Longest pause after `accept` fails (e.g. out of file descriptors).
const ACCEPT_BACKOFF_MAX: Duration = Duration::from_secs(1);

/// Accepts until shutdown.
pub(crate) async fn accept_loop(listener: TcpListener, node: Arc<Node>, router: Router) {
    let refusals = Arc::new(Semaphore::new(REFUSALS_IN_FLIGHT_MAX));
    let mut backoff = Duration::from_millis(5);
    loop {
        let stream = tokio::select! {
            _ = node.shutdown.cancelled() => break,
            r = listener.accept() => match r {
                Ok((stream, _)) => {
                    backoff = Duration::from_millis(5);
                    stream
                }
                Err(e) => {
                    tracing::warn!(error = %e, backoff_ms = backoff.as_millis() as u64, "accept failed");
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(ACCEPT_BACKOFF_MAX);
                    continue;
                }
            }
        };
        let Ok(permit) = node.sockets.clone().try_acquire_owned() else {
            node.metrics.connections_refused.fetch_add(1, Relaxed);
            if let Ok(slot) = refusals.clone().try_acquire_owned() {
                let max = node.cfg.connections_max;
                tokio::spawn(async move {
                    refuse(stream, max).await;
                    drop(slot);
                });
            }
            continue;
        };
        let _ = stream.set_nodelay(true);
        node.tracker
            .spawn(serve_http(stream, permit, router.clone(), node.clone()));
    }
}

async fn serve_http(
    stream: TcpStream,
    permit: OwnedSemaphorePermit,
    router: Router,
    node: Arc<Node>,
) {
    let slot = SocketPermit(Arc::new(Mutex::new(Some(permit))));
    let service = hyper::service::service_fn(move |mut req: hyper::Request<Incoming>| {
        req.extensions_mut().insert(slot.clone());
        router.clone().oneshot(req.map(axum::body::Body::new))
    });
    let conn = http1::Builder::new()
        .timer(TokioTimer::new())
        .header_read_timeout(HEADER_READ_TIMEOUT)
        .serve_connection(TokioIo::new(stream), service)
        .with_upgrades();
    let mut conn = std::pin::pin!(conn);
    tokio::select! {
        r = conn.as_mut() => {
            if let Err(e) = r {
                tracing::debug!(error = %e, "http connection ended with an error");
            }
        }
        _ = node.shutdown.cancelled() => {
            conn.as_mut().graceful_shutdown();
            let _ = tokio::time::timeout(Duration::from_secs(5), conn).await;
        }
    }
}

/// Answers 503 without reading the request, then closes.
async fn refuse(mut stream: TcpStream, max: usize) {
    let body = format!("server is at its connection limit ({max}); retry later\n");
    let resp = format!(
        "HTTP/1.1 503 Service Unavailable\r\ncontent-type: text/plain\r\nretry-after: 1\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
        body.len()
    );
    let _ = tokio::time::timeout(Duration::from_secs(1), async {
        stream.write_all(resp.as_bytes()).await?;
        stream.shutdown().await?;
        // Read (and discard) until the client closes, so the 503 is not lost to a reset
        // caused by unread request bytes.
        let mut sink = [0u8; 1024];
        while stream.read(&mut sink).await? > 0 {}
        Ok::<_, std::io::Error>(())
    })
    .await;
}
