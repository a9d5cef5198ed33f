//! Serving the REST API over plain HTTP or HTTPS (rustls).
//!
//! warp 0.4 has no TLS of its own, so the coordinator runs its own accept loop: each TCP
//! connection is (optionally) wrapped in a TLS session, then served by hyper's HTTP/1
//! with the warp routes as the service. The client's address travels in a request
//! extension ([`ClientAddr`]); [`client_addr`] reads it back in a filter (the auth rate
//! limit keys on it). On stop, connections finish the request they are on.
//!
//! Every resource a client can hold is bounded ([`HttpLimits`]): connections in all and
//! per client address (more are closed at once and counted in
//! `vigil_connections_refused_total{listener="http"}`), the time to send a request's
//! headers, and the time from a request's start to its response (so a body trickled in
//! a byte at a time is answered 408 and its connection closed). Routes that stream their
//! response (the event stream) are bounded by the connection caps only.

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
use tokio::sync::{watch, Semaphore};
use tokio_rustls::TlsAcceptor;
use warp::reply::Response;
use warp::Filter;

use crate::telemetry::Telemetry;

/// How long open connections get to finish when the coordinator stops.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(5);

/// How many connections the REST API holds, and for how long a request may take.
#[derive(Debug, Clone, Copy)]
pub struct HttpLimits {
    /// Connections in all.
    pub max_connections: usize,
    /// Connections from one client address.
    pub max_connections_per_address: usize,
    /// Time for a request's headers to arrive.
    pub header_timeout: Duration,
    /// Time from a request's headers to its response (the body included).
    pub request_timeout: Duration,
}

impl Default for HttpLimits {
    fn default() -> Self {
        HttpLimits {
            max_connections: 4096,
            max_connections_per_address: 256,
            header_timeout: Duration::from_secs(10),
            request_timeout: Duration::from_secs(30),
        }
    }
}

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
    limits: HttpLimits,
    telemetry: Arc<Telemetry>,
    mut stop: watch::Receiver<bool>,
) where
    F: Filter<Extract = (Response,), Error = Infallible> + Clone + Send + Sync + 'static,
{
    let service = TowerToHyperService::new(warp::service(routes));
    let graceful = GracefulShutdown::new();
    let connections = Arc::new(Semaphore::new(limits.max_connections));
    let per_address = Arc::new(crate::per_address::PerAddress::default());
    while let Some((stream, addr)) =
        crate::security::tls::accept(&listener, &mut stop, "REST API").await
    {
        let refused = |reason: &str| {
            telemetry
                .connections_refused
                .with_label_values(&["http", reason])
                .inc();
            tracing::debug!(client = %addr, reason, "REST connection refused");
        };
        let Ok(permit) = Arc::clone(&connections).try_acquire_owned() else {
            refused("max_connections");
            continue;
        };
        let Some(slot) =
            per_address.take(addr.ip(), limits.max_connections_per_address, usize::MAX)
        else {
            refused("max_per_address");
            continue;
        };
        let service = service.clone();
        let tls = tls.clone();
        let telemetry = Arc::clone(&telemetry);
        let watcher = graceful.watcher();
        tokio::spawn(async move {
            let _held = (permit, slot);
            let service =
                hyper::service::service_fn(move |mut request: hyper::Request<Incoming>| {
                    request.extensions_mut().insert(ClientAddr(addr));
                    let response = service.call(request);
                    async move {
                        match tokio::time::timeout(limits.request_timeout, response).await {
                            Ok(result) => result,
                            Err(_) => Ok(request_timeout()),
                        }
                    }
                });
            let mut http = hyper::server::conn::http1::Builder::new();
            http.timer(TokioTimer::new())
                .header_read_timeout(limits.header_timeout);
            let result = match tls {
                None => {
                    let connection = http.serve_connection(TokioIo::new(stream), service);
                    watcher.watch(connection).await
                }
                Some(acceptor) => {
                    let Some(stream) = crate::security::tls::handshake(
                        &acceptor, stream, addr, "http", &telemetry,
                    )
                    .await
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

/// The answer to a request that did not arrive whole in time: 408, and the connection
/// closes.
fn request_timeout() -> Response {
    let body = r#"{"error":"request timeout: the request did not arrive whole in time"}"#;
    let mut response = Response::new(body.into());
    *response.status_mut() = warp::http::StatusCode::REQUEST_TIMEOUT;
    let headers = response.headers_mut();
    headers.insert(
        warp::http::header::CONTENT_TYPE,
        warp::http::HeaderValue::from_static("application/json"),
    );
    headers.insert(
        warp::http::header::CONNECTION,
        warp::http::HeaderValue::from_static("close"),
    );
    response
}
