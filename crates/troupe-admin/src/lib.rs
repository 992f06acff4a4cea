//! The admin endpoint of a troupe server: an HTTP/1.1 service (axum) that shows the live actor
//! tree and lets an operator act on one connection or stream.
//!
//! | route | what |
//! |---|---|
//! | `GET /` | a page that draws the live tree, refreshes itself, highlights warnings, folds connections |
//! | `GET /tree` | every endpoint's [`EndpointSnapshot`] as JSON: `{"endpoints": [...]}` |
//! | `GET /tree.txt` | the same tree as text, drawn like `pstree` |
//! | `GET /metrics` | Prometheus text: the server's counters and totals per kind of actor |
//! | `GET /warnings` | warnings from the latest sample: `{"warnings": [...]}` |
//! | `GET /top?by=busy&n=10` | the top actors over the sampling window (`busy`, `mailbox`, `bytes`, `lost`) |
//! | `POST /actions/goaway` | `{"connection": ID}`: GOAWAY on one connection |
//! | `POST /actions/cancel` | `{"connection": ID, "stream_id": N}`: cancel one stream |
//! | `POST /actions/qlog` | `{"connection": ID}`: start a qlog of one live connection |
//!
//! A connection is named by its trace id (as the tree and the logs show it) or its actor id.
//! Access: see [`access`]. A background sampler snapshots every endpoint each
//! [`AdminConfig::sample_interval`] to judge warnings over time and to rank top-N over
//! [`AdminConfig::top_window`].

#![warn(missing_docs)]
#![deny(unsafe_code)]

pub mod access;
mod client;
pub mod history;
mod service;

use std::future::Future;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

pub use access::{AccessError, AccessPolicy};
pub use client::{AdminClient, Answer, ClientError};
pub use troupe_transport::diagnose::{Thresholds, TopBy};
use troupe_transport::{EndpointSnapshot, PrometheusMetrics};

/// A boxed future, for [`Target`]'s methods.
pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// What the admin endpoint shows and acts on: one endpoint. Implemented for
/// [`troupe_h3::Server`].
pub trait Target: Send + Sync + 'static {
    /// The endpoint's live tree.
    fn snapshot(&self) -> BoxFuture<'_, EndpointSnapshot>;
    /// GOAWAY on one connection (graceful close).
    fn goaway(&self, connection: &str) -> Result<(), troupe_h3::ActionError>;
    /// Cancels one stream of one connection.
    fn cancel_stream<'a>(
        &'a self,
        connection: &'a str,
        stream_id: u64,
    ) -> BoxFuture<'a, Result<(), troupe_h3::ActionError>>;
    /// Starts a qlog of one live connection in `dir`; returns the file's path.
    fn start_qlog<'a>(
        &'a self,
        connection: &'a str,
        dir: &'a Path,
    ) -> BoxFuture<'a, Result<PathBuf, troupe_h3::ActionError>>;
}

impl Target for troupe_h3::Server {
    fn snapshot(&self) -> BoxFuture<'_, EndpointSnapshot> {
        Box::pin(troupe_h3::Server::snapshot(self))
    }
    fn goaway(&self, connection: &str) -> Result<(), troupe_h3::ActionError> {
        troupe_h3::Server::goaway(self, connection)
    }
    fn cancel_stream<'a>(
        &'a self,
        connection: &'a str,
        stream_id: u64,
    ) -> BoxFuture<'a, Result<(), troupe_h3::ActionError>> {
        Box::pin(troupe_h3::Server::cancel_stream(
            self, connection, stream_id,
        ))
    }
    fn start_qlog<'a>(
        &'a self,
        connection: &'a str,
        dir: &'a Path,
    ) -> BoxFuture<'a, Result<PathBuf, troupe_h3::ActionError>> {
        Box::pin(troupe_h3::Server::start_qlog(self, connection, dir))
    }
}

/// The admin endpoint's configuration.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct AdminConfig {
    /// TCP address to listen on. Loopback unless `token` is set.
    pub addr: SocketAddr,
    /// Bearer token every request must carry; required for a non-loopback `addr`.
    pub token: Option<String>,
    /// Host names accepted in `Host` besides IP literals and `localhost` (e.g. a name an
    /// operator reaches it by through a tunnel).
    pub hosts: Vec<String>,
    /// The server's counters, rendered first in `/metrics`. Default none: only the totals per
    /// kind of actor.
    pub metrics: Option<PrometheusMetrics>,
    /// Where `POST /actions/qlog` writes. Default: `troupe-qlog` in the system's temporary
    /// directory (created when first needed).
    pub qlog_dir: PathBuf,
    /// How often the sampler snapshots every endpoint. Default 1 s: a 10,000-stream snapshot
    /// takes under 10 ms, so sampling costs under 1% of a core.
    pub sample_interval: Duration,
    /// The window top-N ranks over. Default 10 s.
    pub top_window: Duration,
    /// When a condition becomes a warning.
    pub thresholds: Thresholds,
}

impl AdminConfig {
    /// The defaults, listening on `addr`.
    pub fn new(addr: SocketAddr) -> AdminConfig {
        AdminConfig {
            addr,
            token: None,
            hosts: Vec::new(),
            metrics: None,
            qlog_dir: std::env::temp_dir().join("troupe-qlog"),
            sample_interval: Duration::from_secs(1),
            top_window: Duration::from_secs(10),
            thresholds: Thresholds::default(),
        }
    }
}

/// Why the admin endpoint did not start.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum AdminError {
    /// The access rules refuse this configuration.
    #[error(transparent)]
    Access(#[from] AccessError),
    /// The address could not be bound.
    #[error("cannot listen on {addr} for the admin endpoint: {source}")]
    Bind {
        /// The address.
        addr: SocketAddr,
        /// Why.
        source: std::io::Error,
    },
    /// A setting is out of range.
    #[error("admin setting {0}")]
    Config(String),
    /// The endpoint's thread or its runtime could not be started.
    #[error("cannot start the admin endpoint's thread: {0}")]
    Runtime(std::io::Error),
}

/// A running admin endpoint. Dropping it stops it at once; [`Admin::shutdown`] stops it
/// gracefully.
///
/// It runs on a thread of its own with a single-threaded tokio runtime, not on the caller's
/// runtime. The admin endpoint exists to show what is wrong with the server, and the worst
/// thing a handler can do is block its worker thread: tokio may then leave the whole runtime's
/// timers and sockets undriven until the handler returns (an idle worker can sleep on a
/// condvar while no worker holds the driver). On its own runtime the endpoint keeps sampling
/// and answering, and shows the stuck handler while it is stuck.
pub struct Admin {
    local_addr: SocketAddr,
    /// Dropped or sent: stop accepting and let requests in progress finish.
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    /// Dropped: stop at once (requests in progress are cut off).
    kill: Option<tokio::sync::oneshot::Sender<()>>,
    /// Resolves when the endpoint's thread has stopped serving and dropped its runtime.
    stopped: Option<tokio::sync::oneshot::Receiver<()>>,
}

impl Admin {
    /// Starts the admin endpoint for `targets` (one per endpoint, e.g. each listener of a
    /// server) on a thread of its own. Fails, before binding, if the access rules refuse the
    /// configuration.
    pub async fn serve(
        config: AdminConfig,
        targets: Vec<Arc<dyn Target>>,
    ) -> Result<Admin, AdminError> {
        let policy = AccessPolicy::new(config.addr, config.token.as_deref(), &config.hosts)?;
        if config.sample_interval.is_zero() {
            return Err(AdminError::Config(
                "sample_interval must be above zero".into(),
            ));
        }
        let bind_err = |source| AdminError::Bind {
            addr: config.addr,
            source,
        };
        // Bound here, so a bind error reaches the caller; served on the endpoint's own runtime.
        let listener = std::net::TcpListener::bind(config.addr).map_err(bind_err)?;
        listener.set_nonblocking(true).map_err(bind_err)?;
        let local_addr = listener.local_addr().map_err(bind_err)?;
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .thread_name("troupe-admin")
            .build()
            .map_err(AdminError::Runtime)?;
        let shared = service::Shared::new(config, policy, targets);
        let (stop, stop_rx) = tokio::sync::oneshot::channel::<()>();
        let (kill, kill_rx) = tokio::sync::oneshot::channel::<()>();
        let (stopped_tx, stopped) = tokio::sync::oneshot::channel();
        std::thread::Builder::new()
            .name("troupe-admin".into())
            .spawn(move || {
                runtime.block_on(serve_until_stopped(listener, shared, stop_rx, kill_rx));
                // Every task of the endpoint (the sampler, open HTTP connections) ends here.
                drop(runtime);
                let _ = stopped_tx.send(());
            })
            .map_err(AdminError::Runtime)?;
        tracing::info!(addr = %local_addr, "admin endpoint listening");
        Ok(Admin {
            local_addr,
            stop: Some(stop),
            kill: Some(kill),
            stopped: Some(stopped),
        })
    }

    /// [`Admin::serve`] for HTTP/3 servers.
    pub async fn serve_servers(
        config: AdminConfig,
        servers: &[Arc<troupe_h3::Server>],
    ) -> Result<Admin, AdminError> {
        let targets = servers
            .iter()
            .map(|s| s.clone() as Arc<dyn Target>)
            .collect();
        Admin::serve(config, targets).await
    }

    /// The bound address.
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// Stops accepting, lets requests in progress finish, stops the sampler, and returns once
    /// the endpoint's thread has stopped serving.
    ///
    /// Cancel safety: cancelling it (dropping the future) stops the endpoint at once, as
    /// dropping the [`Admin`] does.
    pub async fn shutdown(mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(stopped) = self.stopped.take() {
            let _ = stopped.await;
        }
    }
}

impl Drop for Admin {
    fn drop(&mut self) {
        // Dropping the senders ends the endpoint's thread at its next turn; nothing here
        // blocks, so an `Admin` can be dropped inside an async context.
        self.kill.take();
        self.stop.take();
    }
}

/// The endpoint's thread: serves HTTP and samples until `stop` (graceful) or `kill` (at once)
/// resolves, by a send or by its sender being dropped.
async fn serve_until_stopped(
    listener: std::net::TcpListener,
    shared: Arc<service::Shared>,
    stop: tokio::sync::oneshot::Receiver<()>,
    kill: tokio::sync::oneshot::Receiver<()>,
) {
    let listener = match tokio::net::TcpListener::from_std(listener) {
        Ok(l) => l,
        Err(e) => {
            tracing::warn!("admin endpoint stopped: {e}");
            return;
        }
    };
    let sampler = tokio::spawn(service::sample(shared.clone()));
    let app = service::router(shared);
    let serve = axum::serve(listener, app).with_graceful_shutdown(async move {
        let _ = stop.await;
    });
    tokio::select! {
        r = serve => {
            if let Err(e) = r {
                tracing::warn!("admin endpoint stopped: {e}");
            }
        }
        _ = kill => {}
    }
    sampler.abort();
}
