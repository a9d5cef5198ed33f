//! Serving the REST API over plain HTTP or HTTPS (rustls).
//!
//! warp 0.4 has no TLS of its own, so the coordinator runs its own accept loop: each TCP
//! connection is (optionally) wrapped in a TLS session, then served by hyper's HTTP/1
//! with the warp routes as the service. The client's address travels in a request
//! extension ([`ClientAddr`]); [`client_addr`] reads it back in a filter (the auth rate
//! limit keys on it). On stop, connections finish the request they are on.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use hyper::body::Incoming;
use hyper::service::Service as _;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::server::graceful::GracefulShutdown;
use hyper_util::service::TowerToHyperService;
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio_rustls::TlsAcceptor;
use warp::reply::Response;
use warp::Filter;

use crate::telemetry::Telemetry;

/// How long open connections get to finish when the coordinator stops.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(5);

/// The address a request came from (a request extension set by [`serve`]).
#[derive(Debug, Clone, Copy)]
pub struct ClientAddr(pub SocketAddr);

/// The requesting client's address, if the server knows it.
pub fn client_addr() -> impl Filter<Extract = (Option<SocketAddr>,), Error = Infallible> + Clone {
    warp::ext::optional::<ClientAddr>().map(|addr: Option<ClientAddr>| addr.map(|a| a.0))
}

/// Serves `routes` on `listener` until `stop` changes; with `tls`, only HTTPS is spoken
/// (a plaintext client's bytes fail the handshake and its connection is closed).
pub async fn serve<F>(
    routes: F,
    listener: TcpListener,
    tls: Option<TlsAcceptor>,
    telemetry: Arc<Telemetry>,
    mut stop: watch::Receiver<bool>,
) where
    F: Filter<Extract = (Response,), Error = Infallible> + Clone + Send + Sync + 'static,
{
    let service = TowerToHyperService::new(warp::service(routes));
    let graceful = GracefulShutdown::new();
    while let Some((stream, addr)) = crate::tls::accept(&listener, &mut stop, "REST API").await {
        let service = service.clone();
        let tls = tls.clone();
        let telemetry = Arc::clone(&telemetry);
        let watcher = graceful.watcher();
        tokio::spawn(async move {
            let service =
                hyper::service::service_fn(move |mut request: hyper::Request<Incoming>| {
                    request.extensions_mut().insert(ClientAddr(addr));
                    service.call(request)
                });
            let mut http = hyper::server::conn::http1::Builder::new();
            http.timer(TokioTimer::new())
                .header_read_timeout(Duration::from_secs(30));
            let result = match tls {
                None => {
                    let connection = http.serve_connection(TokioIo::new(stream), service);
                    watcher.watch(connection).await
                }
                Some(acceptor) => {
                    let Some(stream) =
                        crate::tls::handshake(&acceptor, stream, addr, "http", &telemetry).await
                    else {
                        return;
                    };
                    let connection = http.serve_connection(TokioIo::new(stream), service);
                    watcher.watch(connection).await
                }
            };
            if let Err(e) = result {
                tracing::debug!(client = %addr, "REST connection ended: {e}");
            }
        });
    }
    if tokio::time::timeout(DRAIN_TIMEOUT, graceful.shutdown())
        .await
        .is_err()
    {
        tracing::warn!("REST connections still open after {DRAIN_TIMEOUT:?}; dropping them");
    }
}
