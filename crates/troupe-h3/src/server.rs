//! The HTTP/3 server: an endpoint whose connections run [`H3App`] with a [`Handler`].

use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;

use http::{Request, Response};
use troupe_transport::{
    Endpoint, EndpointError, EndpointStatsSnapshot, Identity, QuicSettings, TlsConfig,
};

use crate::body::{Body, RecvBody};
use crate::conn::{H3App, H3Msg};
use crate::settings::H3Settings;

/// Handles one request. Runs inside the request's stream actor: a panic resets that stream
/// (H3_INTERNAL_ERROR) and nothing else.
///
/// Any `Fn(Request<RecvBody>) -> impl Future<Output = Response<Body>>` is a handler.
pub trait Handler: Send + Sync + 'static {
    /// Produces the response for `req`.
    fn call(&self, req: Request<RecvBody>) -> Pin<Box<dyn Future<Output = Response<Body>> + Send>>;
}

impl<F, Fut> Handler for F
where
    F: Fn(Request<RecvBody>) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Response<Body>> + Send + 'static,
{
    fn call(&self, req: Request<RecvBody>) -> Pin<Box<dyn Future<Output = Response<Body>> + Send>> {
        Box::pin(self(req))
    }
}

/// Server configuration: transport, TLS and HTTP/3 settings.
#[derive(Debug, Clone, Default)]
#[non_exhaustive]
pub struct ServerConfig {
    /// QUIC settings.
    pub quic: QuicSettings,
    /// Certificate; without one a self-signed certificate for localhost is generated.
    pub tls: TlsConfig,
    /// HTTP/3 settings.
    pub h3: H3Settings,
}

/// A running HTTP/3 server.
pub struct Server {
    endpoint: Endpoint<H3App>,
    identity: Identity,
}

impl Server {
    /// Binds `addr` and serves every request with `handler`.
    pub async fn bind(
        addr: SocketAddr,
        config: ServerConfig,
        handler: impl Handler,
    ) -> Result<Server, EndpointError> {
        let handler: Arc<dyn Handler> = Arc::new(handler);
        let h3 = Arc::new(config.h3);
        let factory = Arc::new(move || H3App::server(handler.clone(), h3.clone()));
        let (endpoint, identity) = Endpoint::server(addr, config.quic, config.tls, factory).await?;
        Ok(Server { endpoint, identity })
    }

    /// The bound address.
    pub fn local_addr(&self) -> SocketAddr {
        self.endpoint.local_addr()
    }

    /// The certificate presented (generated or loaded).
    pub fn identity(&self) -> &Identity {
        &self.identity
    }

    /// The underlying endpoint (actor tree root, counters).
    pub fn endpoint(&self) -> &Endpoint<H3App> {
        &self.endpoint
    }

    /// Endpoint counters.
    pub fn stats(&self) -> EndpointStatsSnapshot {
        self.endpoint.stats()
    }

    /// Stops every connection at once (streams in flight are cut) and the socket.
    pub async fn shutdown(&self) {
        self.endpoint.shutdown().await;
    }

    /// Graceful shutdown: accept no new connections, send GOAWAY on every connection, let the
    /// requests in flight finish (later ones are refused with H3_REQUEST_REJECTED), and close
    /// each connection once it has no stream left. Whatever is still open at `drain` is closed
    /// with H3_NO_ERROR. Returns whether everything drained in time.
    ///
    /// Cancel safety: dropping the future leaves the server draining; call
    /// [`Server::shutdown`] to stop it at once.
    pub async fn shutdown_gracefully(&self, drain: std::time::Duration) -> bool {
        self.endpoint.stop_accepting();
        self.endpoint.broadcast(|| H3Msg::GoAway);
        let drained = tokio::time::timeout(drain, self.endpoint.wait_idle())
            .await
            .is_ok();
        if !drained {
            self.endpoint
                .close_all(crate::codes::H3_NO_ERROR, "drain deadline");
            // Closing takes a draining period (3 PTO); bounded by the endpoint's own stop.
            let _ =
                tokio::time::timeout(std::time::Duration::from_secs(2), self.endpoint.wait_idle())
                    .await;
        }
        self.endpoint.shutdown().await;
        drained
    }
}
