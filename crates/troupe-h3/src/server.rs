//! The HTTP/3 server: an endpoint whose connections run [`H3App`] with a [`Handler`].

use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;

use http::{Request, Response};
use ractor::{ActorRef, DerivedActorRef, Message};
use tokio::sync::oneshot;
use troupe_transport::{
    AppFactory, Endpoint, EndpointError, EndpointStatsSnapshot, Identity, QuicSettings, TlsConfig,
};

use crate::body::{Body, RecvBody};
use crate::budget::{FairBudget, FairPermit};
use crate::codes::{H3_REQUEST_CANCELLED, H3_REQUEST_REJECTED};
use crate::conn::pool::ServerPools;
use crate::conn::{H3App, H3Msg};
use crate::error::ActionError;
use crate::events::EventSink;
use crate::settings::H3Settings;
use crate::stream::StreamControl;

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
    /// Where connection events (peer SETTINGS, final figures) go. Default none.
    pub events: Option<EventSink>,
    /// The application's actor to supervise this server's endpoint actor. It gets
    /// `SupervisionEvent::ActorFailed` when the endpoint escalates (the receive loop failed
    /// past `quic.receive_loop_restarts`; the server is then down) and `ActorTerminated` when
    /// it shuts down. Default none: the endpoint runs unsupervised, its failure logged and
    /// visible in [`Server::snapshot`]. See `docs/supervision.md`.
    pub supervisor: Option<ractor::ActorCell>,
}

/// Makes each accepted connection's [`H3App`], and keeps the workers' parked stream actors.
struct ServerFactory {
    handler: Arc<dyn Handler>,
    h3: Arc<H3Settings>,
    events: Option<EventSink>,
    pools: ServerPools,
}

impl AppFactory<H3App> for ServerFactory {
    fn make(&self, worker: usize) -> H3App {
        H3App::server(
            self.handler.clone(),
            self.h3.clone(),
            self.events.clone(),
            self.pools.for_worker(worker),
        )
    }

    fn parked_actors(&self) -> usize {
        self.pools.parked()
    }

    fn endpoint_stopped(&self) {
        self.pools.close();
    }
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
        config.h3.validate()?;
        let handler: Arc<dyn Handler> = Arc::new(handler);
        let h3 = Arc::new(config.h3);
        let events = config.events;
        let factory = Arc::new(ServerFactory {
            pools: ServerPools::new(config.quic.workers, h3.stream_actor_pool),
            handler,
            h3,
            events,
        });
        let (endpoint, identity) =
            Endpoint::server(addr, config.quic, config.tls, factory, config.supervisor).await?;
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

    /// The live tree of this server: endpoint -> connections -> streams, each node with its
    /// actor's figures (mailbox depth, busy time, current handler, last error), the
    /// connections' transport figures and the streams' per-direction states. Taken while
    /// traffic runs; see [`Endpoint::snapshot`]. Serializable with serde.
    ///
    /// To watch for handlers that block their thread, call it from another runtime (as the
    /// admin endpoint does from its own thread): while a handler blocks a worker, the server's
    /// runtime may leave its timers undriven, and a watcher on it waits with it.
    ///
    /// Cancel safety: cancel-safe.
    pub async fn snapshot(&self) -> troupe_transport::EndpointSnapshot {
        self.endpoint.snapshot().await
    }

    /// The underlying endpoint (actor tree root, counters).
    pub fn endpoint(&self) -> &Endpoint<H3App> {
        &self.endpoint
    }

    /// The request streams each live connection routes to a stream actor, by connection.
    /// A stream leaves this list when its actor has stopped (both directions ended).
    pub async fn routed_streams(&self) -> Vec<Vec<u64>> {
        let mut out = Vec::new();
        for conn in self.endpoint.connections() {
            let r = conn
                .call(
                    |port| troupe_transport::ConnMsg::App(H3Msg::RoutedStreams(port)),
                    Some(std::time::Duration::from_secs(5)),
                )
                .await;
            if let Ok(ractor::rpc::CallResult::Success(ids)) = r {
                out.push(ids);
            }
        }
        out
    }

    /// Sends GOAWAY on the live connection named `connection` (its trace id, as the snapshot
    /// and the logs show it, or its actor id): requests in flight finish, later ones are
    /// refused with H3_REQUEST_REJECTED, and the connection closes once none is left. The rest
    /// of the server carries on.
    pub fn goaway(&self, connection: &str) -> Result<(), ActionError> {
        let conn = self
            .endpoint
            .find_connection(connection)
            .ok_or_else(|| ActionError::NoSuchConnection(connection.to_string()))?;
        conn.cast(troupe_transport::ConnMsg::App(H3Msg::GoAway))
            .map_err(|_| ActionError::Gone(connection.to_string()))
    }

    /// Cancels one request stream of the live connection named `connection`: both directions
    /// still open are shut with H3_REQUEST_CANCELLED (STOP_SENDING, RESET_STREAM), exactly as
    /// if its handler had shut them; the connection and its other streams carry on.
    ///
    /// Cancel safety: cancel-safe; the stream is cancelled if the connection got the request.
    pub async fn cancel_stream(&self, connection: &str, stream_id: u64) -> Result<(), ActionError> {
        let conn = self
            .endpoint
            .find_connection(connection)
            .ok_or_else(|| ActionError::NoSuchConnection(connection.to_string()))?;
        conn.meter().on_send();
        let r = conn
            .actor()
            .call(
                |reply| {
                    troupe_transport::ConnMsg::App(H3Msg::Cancel {
                        stream_id,
                        code: H3_REQUEST_CANCELLED,
                        reply,
                    })
                },
                Some(std::time::Duration::from_secs(5)),
            )
            .await;
        match r {
            Ok(ractor::rpc::CallResult::Success(true)) => Ok(()),
            Ok(ractor::rpc::CallResult::Success(false)) => Err(ActionError::NoSuchStream {
                connection: connection.to_string(),
                stream_id,
            }),
            _ => Err(ActionError::Gone(connection.to_string())),
        }
    }

    /// Starts a qlog of the live connection named `connection`, written line by line into a
    /// new file in `dir` (which must exist); returns its path. A connection writes at most
    /// one qlog.
    ///
    /// Cancel safety: cancel-safe; the qlog starts if the connection got the request.
    pub async fn start_qlog(
        &self,
        connection: &str,
        dir: &std::path::Path,
    ) -> Result<std::path::PathBuf, ActionError> {
        if self.endpoint.find_connection(connection).is_none() {
            return Err(ActionError::NoSuchConnection(connection.to_string()));
        }
        self.endpoint
            .start_qlog(connection, dir)
            .await
            .map_err(ActionError::Failed)
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

/// A request delivered to an application actor (see [`Server::bind_actor`]): the request,
/// with its body streaming in, and the handle to answer it.
pub struct IncomingRequest {
    /// The request. Its extensions hold the stream's [`crate::StreamControl`], which
    /// carries its [`crate::Interim`], [`crate::PrioritySignal`] and [`crate::StreamStats`].
    pub request: Request<RecvBody>,
    /// Answers the request, once.
    pub responder: Responder,
}

impl std::fmt::Debug for IncomingRequest {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("IncomingRequest")
            .field("method", self.request.method())
            .field("uri", self.request.uri())
            .field("stream_id", &self.responder.stream_id)
            .finish()
    }
}

/// The way to answer one [`IncomingRequest`]. Dropping it unanswered resets the response
/// stream with H3_REQUEST_CANCELLED (the client sees the request fail, not hang).
pub struct Responder {
    tx: oneshot::Sender<Response<Body>>,
    stream_id: u64,
    /// Returned to the server's budget of unanswered requests when this is used or dropped.
    _permit: FairPermit<ractor::ActorId>,
}

impl std::fmt::Debug for Responder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Responder")
            .field("stream_id", &self.stream_id)
            .finish()
    }
}

impl Responder {
    /// The request's QUIC stream ID.
    pub fn stream_id(&self) -> u64 {
        self.stream_id
    }

    /// Whether the stream is already gone (the client reset it, or the connection closed):
    /// answering is pointless. Dropping the responder then frees its place in the budget of
    /// unanswered requests.
    pub fn is_closed(&self) -> bool {
        self.tx.is_closed()
    }

    /// Waits until the stream is gone without an answer (see [`Responder::is_closed`]).
    ///
    /// Cancel safety: cancel-safe.
    pub async fn closed(&mut self) {
        self.tx.closed().await
    }

    /// Sends the response (its body streams from `resp`'s body). Gives the response back if
    /// the stream is already gone (the client reset it, or the connection closed).
    pub fn respond(self, resp: Response<Body>) -> Result<(), Box<Response<Body>>> {
        self.tx.send(resp).map_err(Box::new)
    }
}

type Deliver = Arc<dyn Fn(IncomingRequest) -> bool + Send + Sync>;

/// The [`Handler`] behind [`Server::bind_actor`]: runs in each stream actor, hands the request
/// to the application's actor and waits for its answer.
struct ActorHandler {
    deliver: Deliver,
    /// The application's actor, to tell whether it still takes messages.
    target: ractor::ActorCell,
    /// Requests delivered and not yet answered, at most `max_unanswered_requests`, shared
    /// fairly among connections.
    budget: Arc<FairBudget<ractor::ActorId>>,
}

impl Handler for ActorHandler {
    fn call(&self, req: Request<RecvBody>) -> Pin<Box<dyn Future<Output = Response<Body>> + Send>> {
        let deliver = self.deliver.clone();
        let budget = self.budget.clone();
        let target = self.target.clone();
        Box::pin(async move {
            let control = req.extensions().get::<StreamControl>().cloned();
            let stream_id = control.as_ref().map_or(0, |c| c.stream_id());
            // Backpressure: with the budget spent, this request waits here, in its own stream
            // actor, without reading its body (so QUIC flow control holds the client).
            // Each connection gets its fair share, so one client cannot starve the others.
            let Some(conn) = control.as_ref().map(StreamControl::conn) else {
                return std::future::pending().await;
            };
            let permit = budget.acquire(conn).await;
            if !ractor::ACTIVE_STATES.contains(&target.get_status()) {
                // The application actor is gone: not processed. Both directions get the same
                // code, decided before the request (and its body) is dropped.
                if let Some(c) = &control {
                    c.shutdown(Some(H3_REQUEST_REJECTED), Some(H3_REQUEST_REJECTED));
                }
                drop(req);
                return std::future::pending().await;
            }
            let (tx, rx) = oneshot::channel();
            let incoming = IncomingRequest {
                request: req,
                responder: Responder {
                    tx,
                    stream_id,
                    _permit: permit,
                },
            };
            let code = if deliver(incoming) {
                match rx.await {
                    Ok(resp) => return resp,
                    // The application dropped the responder: cancelled.
                    Err(_) => H3_REQUEST_CANCELLED,
                }
            } else {
                // The actor stopped between the check and the delivery: not processed.
                H3_REQUEST_REJECTED
            };
            if let Some(c) = control {
                c.shutdown_write(code);
            }
            // The stream ends through the shutdown; this future is dropped with the actor.
            std::future::pending().await
        })
    }
}

impl Server {
    /// Binds `addr` and delivers every request to the application's actor as an
    /// [`IncomingRequest`] (its message type converts from it), to be answered through the
    /// [`Responder`].
    ///
    /// Each request still lives in its own stream actor (which owns its state, buffers and
    /// flow control); only the request head, the body handle and the responder travel to
    /// `actor`. At most [`H3Settings::max_unanswered_requests`] requests are delivered and
    /// not yet answered: further ones wait in their stream actors, unread, so QUIC flow control
    /// and the stream limit push back on clients instead of the actor's (unbounded) mailbox
    /// growing. If `actor` is gone, requests are refused with H3_REQUEST_REJECTED.
    pub async fn bind_actor<M>(
        addr: SocketAddr,
        config: ServerConfig,
        actor: ActorRef<M>,
    ) -> Result<Server, EndpointError>
    where
        M: Message + From<IncomingRequest>,
    {
        let target = actor.get_cell();
        let deliver: Deliver = Arc::new(move |req| actor.cast(M::from(req)).is_ok());
        Self::bind_deliver(addr, config, deliver, target).await
    }

    /// [`Server::bind_actor`] for a derived actor reference (`actor.get_derived()`).
    pub async fn bind_derived(
        addr: SocketAddr,
        config: ServerConfig,
        actor: DerivedActorRef<IncomingRequest>,
    ) -> Result<Server, EndpointError> {
        let target = actor.get_cell();
        let deliver: Deliver = Arc::new(move |req| actor.send_message(req).is_ok());
        Self::bind_deliver(addr, config, deliver, target).await
    }

    async fn bind_deliver(
        addr: SocketAddr,
        config: ServerConfig,
        deliver: Deliver,
        target: ractor::ActorCell,
    ) -> Result<Server, EndpointError> {
        config.h3.validate()?;
        let budget = FairBudget::new(config.h3.max_unanswered_requests);
        Self::bind(
            addr,
            config,
            ActorHandler {
                deliver,
                target,
                budget,
            },
        )
        .await
    }
}
