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
use crate::conn::H3App;
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

    /// Stops every connection and the socket.
    pub async fn shutdown(&self) {
        self.endpoint.shutdown().await;
    }
}
