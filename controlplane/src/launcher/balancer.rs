//! The cluster's API endpoint: a TCP load balancer in the launcher that spreads
//! connections round-robin over the API server replicas, skipping one that refuses the
//! connection. It forwards bytes only (TLS ends at the API servers, which share one
//! serving certificate), so kubectl and the components see one stable HTTPS address
//! whichever replicas are up.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tokio::net::{TcpListener, TcpStream};
use tokio_util::sync::CancellationToken;

const CONNECT_TIMEOUT: Duration = Duration::from_secs(1);

/// Accepts on `listener` until `shutdown`, forwarding each connection to a backend.
pub async fn serve(listener: TcpListener, backends: Vec<SocketAddr>, shutdown: CancellationToken) {
    let backends = Arc::new(backends);
    let next = Arc::new(AtomicUsize::new(0));
    loop {
        let (mut client, peer) = tokio::select! {
            _ = shutdown.cancelled() => return,
            accepted = listener.accept() => match accepted {
                Ok(c) => c,
                Err(e) => {
                    tracing::warn!(error = %e, "load balancer accept failed");
                    continue;
                }
            },
        };
        let (backends, next) = (backends.clone(), next.clone());
        tokio::spawn(async move {
            let Some(mut upstream) = connect(&backends, &next).await else {
                tracing::warn!(%peer, "no API server accepted the connection");
                return;
            };
            let _ = client.set_nodelay(true);
            let _ = upstream.set_nodelay(true);
            let _ = tokio::io::copy_bidirectional(&mut client, &mut upstream).await;
        });
    }
}

/// The next backend in turn that accepts a connection.
async fn connect(backends: &[SocketAddr], next: &AtomicUsize) -> Option<TcpStream> {
    let start = next.fetch_add(1, Ordering::Relaxed);
    for i in 0..backends.len() {
        let addr = backends[(start + i) % backends.len()];
        match tokio::time::timeout(CONNECT_TIMEOUT, TcpStream::connect(addr)).await {
            Ok(Ok(s)) => return Some(s),
            _ => tracing::debug!(%addr, "API server unreachable; trying the next"),
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    /// A backend that answers every connection with its name.
    async fn named_backend(name: &'static str) -> SocketAddr {
        let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = l.local_addr().unwrap();
        tokio::spawn(async move {
            loop {
                let (mut s, _) = l.accept().await.unwrap();
                s.write_all(name.as_bytes()).await.unwrap();
            }
        });
        addr
    }

    #[tokio::test]
    async fn spreads_connections_and_skips_dead_backends() {
        let a = named_backend("a").await;
        let b = named_backend("b").await;
        // A port nobody listens on: bound then dropped.
        let dead = TcpListener::bind("127.0.0.1:0")
            .await
            .unwrap()
            .local_addr()
            .unwrap();
        let lb = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let lb_addr = lb.local_addr().unwrap();
        let stop = CancellationToken::new();
        tokio::spawn(serve(lb, vec![a, dead, b], stop.clone()));
        let mut seen = Vec::new();
        for _ in 0..6 {
            let mut s = TcpStream::connect(lb_addr).await.unwrap();
            let mut buf = [0u8; 1];
            s.read_exact(&mut buf).await.unwrap();
            seen.push(buf[0] as char);
        }
        assert!(seen.contains(&'a') && seen.contains(&'b'), "{seen:?}");
        stop.cancel();
    }
}
