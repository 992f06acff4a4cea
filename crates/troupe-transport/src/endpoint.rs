//! The endpoint: its workers (each one UDP socket and one receive loop), and the endpoint actor
//! that supervises every connection actor on them.
//!
//! A server may have several workers (`QuicSettings::workers`): their sockets share one port in
//! an `SO_REUSEPORT` group, each worker is a thread with its own single-thread runtime on which
//! its receive loop and every actor of the connections it accepts run, and the connection IDs
//! they issue name their worker, for the kernel's steering program (`cid.rs`).
//!
//! Each receive loop reads datagrams in batches and routes each by destination connection ID
//! through the shared [`Routes`] table into the bounded inbox of its connection actor. A server
//! endpoint also answers Initials for unknown connection IDs: Version Negotiation for unknown
//! versions, a stateless Retry when address validation is on, and otherwise a new connection
//! actor linked under the endpoint actor.

use std::marker::PhantomData;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::BytesMut;
use quinn_udp::RecvMeta;
use ractor::{Actor, ActorCell, ActorProcessingErr, ActorRef, RpcReplyPort, SupervisionEvent};
use tokio::sync::{oneshot, watch};
use tokio::task::JoinHandle;
use tracing::{debug, info, trace, warn};

use crate::app::ConnectionApp;
use crate::cid::{CidLayout, CidSource};
use crate::connection::{
    ConnArgs, ConnMsg, Connection, ConnectionActor, Registry, CONN_MESSAGES, LOCAL_CID_LEN,
};
use crate::error::{ConnectError, EndpointError};
use crate::metrics::DropReason;
use crate::observe::{ActorKind, ActorMeter, Tracked};
use crate::outbox::{ConnMailbox, Outbox};
use crate::recv_storage::RecvStorage;
use crate::retry::RetryTokens;
use crate::route::{short_header_dcid, Inbox, Offer, Packet, RouteMemo, Routes};
use crate::settings::QuicSettings;
use crate::stats::{bump, EndpointStats, EndpointStatsSnapshot};
use crate::tls::{Identity, TlsConfig};
use crate::udp::Socket;

/// Receive buffers filled per `recvmmsg`, at most. 32: quinn-udp's batch size on Linux; with
/// GRO each buffer may carry many datagrams, so one syscall can bring in hundreds of packets.
/// A loop starts with one and grows to this as its traffic fills them ([`RecvStorage`]).
const RECV_BATCH: usize = 32;

/// Size of one receive buffer: the largest UDP payload, which is also the most GRO coalesces.
const RECV_SLOT: usize = 65_536;

/// Builds the application instance for each connection a server accepts, and keeps what the
/// applications of one endpoint share (HTTP/3: each worker's parked stream actors).
///
/// A closure `Fn(usize) -> A` is a factory that shares nothing.
pub trait AppFactory<A>: Send + Sync + 'static {
    /// The application for a connection accepted by worker `worker` (0-based, below
    /// `QuicSettings::workers`). Called on that worker's receive loop: keep it cheap.
    fn make(&self, worker: usize) -> A;

    /// Actors the applications keep alive between uses, outside any connection (HTTP/3: the
    /// parked stream actors), for the live tree. Default: none.
    fn parked_actors(&self) -> usize {
        0
    }

    /// The endpoint actor ended (stopped, after its connections; or killed, or failed): stop
    /// whatever the applications kept alive outside the connections. Default: nothing.
    fn endpoint_stopped(&self) {}
}

impl<A, F: Fn(usize) -> A + Send + Sync + 'static> AppFactory<A> for F {
    fn make(&self, worker: usize) -> A {
        self(worker)
    }
}

/// Messages to the endpoint actor.
#[non_exhaustive]
pub enum EndpointMsg {
    /// How many connection actors are alive.
    ConnectionCount(RpcReplyPort<usize>),
    /// A receive loop panicked (with this message). The reply says whether it may restart;
    /// past the restart budget (`QuicSettings::receive_loop_restarts`, shared by the workers)
    /// the endpoint fails instead, to its own supervisor.
    ReceiveLoopFailed {
        /// The worker whose loop it was.
        worker: usize,
        /// The panic's message.
        reason: String,
        /// `true`: restart.
        verdict: RpcReplyPort<bool>,
    },
}

/// The live connection actors, for `Endpoint::wait_idle`. A connection counts from the moment
/// its spawner (the receive loop, or `connect`) has it, not from when the endpoint actor gets
/// around to its `ActorStarted` event: otherwise a graceful shutdown racing a fresh
/// connection could see "no connection" and stop the endpoint under it.
pub(crate) struct LiveSet {
    ids: std::sync::Mutex<LiveIds>,
    count: watch::Sender<usize>,
}

#[derive(Default)]
struct LiveIds {
    /// Spawned and not stopped.
    live: std::collections::HashSet<ractor::ActorId>,
    /// Stopped before their spawner recorded them.
    tombstones: std::collections::HashSet<ractor::ActorId>,
    /// Spawns under way (counted before the actor exists, so it is never invisible).
    spawning: usize,
}

impl LiveIds {
    fn count(&self) -> usize {
        self.live.len() + self.spawning
    }
}

impl LiveSet {
    fn new() -> Arc<Self> {
        Arc::new(LiveSet {
            ids: Default::default(),
            count: watch::channel(0).0,
        })
    }

    fn update(&self, f: impl FnOnce(&mut LiveIds)) {
        let mut g = self.ids.lock().unwrap_or_else(|e| e.into_inner());
        f(&mut g);
        self.count.send_replace(g.count());
    }

    /// A spawn is about to start; it counts until the guard reports how it ended (or is
    /// dropped, as when the spawning future is cancelled).
    fn spawning(self: &Arc<Self>) -> SpawnGuard {
        self.update(|g| g.spawning += 1);
        SpawnGuard(Some(self.clone()))
    }

    /// The spawn ended: with a new connection actor, or without (`None`).
    fn spawned(&self, id: Option<ractor::ActorId>) {
        self.update(|g| {
            g.spawning -= 1;
            if let Some(id) = id {
                if !g.tombstones.remove(&id) {
                    g.live.insert(id);
                }
            }
        });
    }

    /// A connection actor stopped or failed.
    fn stopped(&self, id: ractor::ActorId) {
        self.update(|g| {
            if !g.live.remove(&id) {
                g.tombstones.insert(id);
            }
        });
    }
}

/// A spawn under way, counted in its [`LiveSet`].
struct SpawnGuard(Option<Arc<LiveSet>>);

impl SpawnGuard {
    fn done(mut self, id: Option<ractor::ActorId>) {
        if let Some(live) = self.0.take() {
            live.spawned(id);
        }
    }
}

impl Drop for SpawnGuard {
    fn drop(&mut self) {
        if let Some(live) = self.0.take() {
            live.spawned(None);
        }
    }
}

struct EndpointArgs<A: ConnectionApp> {
    registry: Registry<A::Msg>,
    meter: Arc<ActorMeter>,
    inject_panic: Arc<AtomicBool>,
    accepting: Arc<AtomicBool>,
    live: Arc<LiveSet>,
    workers: Vec<WorkerIo>,
    /// The workers' threads (none when the endpoint runs on its caller's runtime).
    threads: Option<WorkerThreads>,
    routes: Routes,
    /// One per worker (a `quiche::Config` is not shared); empty on a client.
    servers: Vec<ServerSide<A>>,
    settings: QuicSettings,
}

/// What one worker reads and sends with, and where its tasks run.
struct WorkerIo {
    socket: Arc<Socket>,
    /// `None`: the caller's runtime.
    runtime: Option<tokio::runtime::Handle>,
    cids: CidSource,
}

/// The threads of a server's workers, each blocked on its own single-thread runtime until this
/// is dropped (with the endpoint actor's state, after its connections stopped).
struct WorkerThreads {
    _stop: Vec<oneshot::Sender<()>>,
}

impl WorkerThreads {
    /// Starts `n` threads; returns them with their runtimes' handles, in worker order.
    fn start(n: usize) -> std::io::Result<(Self, Vec<tokio::runtime::Handle>)> {
        let mut handles = Vec::with_capacity(n);
        let mut stop = Vec::with_capacity(n);
        for k in 0..n {
            let (handle_tx, handle_rx) = std::sync::mpsc::channel();
            let (stop_tx, stop_rx) = oneshot::channel::<()>();
            std::thread::Builder::new()
                .name(format!("troupe-worker-{k}"))
                .spawn(move || {
                    let rt = match tokio::runtime::Builder::new_current_thread()
                        .enable_all()
                        .build()
                    {
                        Ok(rt) => rt,
                        Err(e) => {
                            let _ = handle_tx.send(Err(e));
                            return;
                        }
                    };
                    let _ = handle_tx.send(Ok(rt.handle().clone()));
                    // Runs the worker's tasks until the endpoint is gone.
                    let _ = rt.block_on(stop_rx);
                })?;
            let handle = handle_rx
                .recv()
                .map_err(|_| std::io::Error::other("worker thread ended before its runtime"))??;
            handles.push(handle);
            stop.push(stop_tx);
        }
        Ok((WorkerThreads { _stop: stop }, handles))
    }
}

struct ServerSide<A: ConnectionApp> {
    config: quiche::Config,
    factory: Arc<dyn AppFactory<A>>,
    /// Mints and checks Retry tokens: always at hand, since Retry is demanded under load
    /// even when `QuicSettings::retry` is off.
    tokens: RetryTokens,
}

/// Calls [`AppFactory::endpoint_stopped`] when dropped (with the endpoint actor's state, however
/// the actor ended).
struct StoppedHook(Box<dyn Fn() + Send + Sync>);

impl Drop for StoppedHook {
    fn drop(&mut self) {
        (self.0)();
    }
}

struct EndpointState<M: Send + 'static> {
    recv_loops: Vec<JoinHandle<()>>,
    /// A server's [`AppFactory::endpoint_stopped`], called when this state is dropped: after
    /// `post_stop` stopped the connections, or when the actor was killed or failed.
    _on_stopped: Option<StoppedHook>,
    /// Dropped last (with the state), after every connection stopped: ends the workers'
    /// threads.
    _threads: Option<WorkerThreads>,
    routes: Routes,
    registry: Registry<M>,
    meter: Arc<ActorMeter>,
    /// Live connection actors, published for `Endpoint::wait_idle`.
    live: Arc<LiveSet>,
}

/// The endpoint actor: supervisor of every connection actor on one socket.
struct EndpointActor<A>(PhantomData<fn() -> A>);

impl<A: ConnectionApp> Actor for EndpointActor<A> {
    type Msg = EndpointMsg;
    type State = EndpointState<A::Msg>;
    type Arguments = EndpointArgs<A>;

    async fn pre_start(
        &self,
        myself: ActorRef<EndpointMsg>,
        args: EndpointArgs<A>,
    ) -> Result<EndpointState<A::Msg>, ActorProcessingErr> {
        let cell: ActorCell = myself.get_cell();
        let routes = args.routes.clone();
        let workers = args.workers.len();
        let on_stopped = args.servers.first().map(|s| {
            let f = s.factory.clone();
            StoppedHook(Box::new(move || f.endpoint_stopped()))
        });
        let mut servers = args.servers.into_iter();
        let mut recv_loops = Vec::with_capacity(workers);
        for (worker, io) in args.workers.into_iter().enumerate() {
            let recv = RecvLoop {
                worker,
                accepting: args.accepting.clone(),
                socket: io.socket,
                cids: io.cids,
                routes: args.routes.clone(),
                server: servers.next(),
                settings: args.settings.clone(),
                endpoint: cell.clone(),
                live: args.live.clone(),
                inject_panic: args.inject_panic.clone(),
                registry: args.registry.clone(),
            };
            let mailbox = Tracked::new(myself.clone(), args.meter.clone());
            let task = recv.supervised(mailbox);
            recv_loops.push(match io.runtime {
                Some(rt) => rt.spawn(task),
                None => tokio::spawn(task),
            });
        }
        Ok(EndpointState {
            recv_loops,
            _on_stopped: on_stopped,
            _threads: args.threads,
            registry: args.registry,
            meter: args.meter,
            routes,
            live: args.live,
        })
    }

    async fn post_stop(
        &self,
        myself: ActorRef<EndpointMsg>,
        st: &mut EndpointState<A::Msg>,
    ) -> Result<(), ActorProcessingErr> {
        for h in st.recv_loops.drain(..) {
            h.abort();
        }
        // Orderly: every connection runs its post_stop (routes, close reasons, children).
        myself
            .stop_children_and_wait(
                Some("endpoint shutdown".into()),
                Some(Duration::from_secs(5)),
            )
            .await;
        Ok(())
    }

    async fn handle(
        &self,
        myself: ActorRef<EndpointMsg>,
        msg: EndpointMsg,
        st: &mut EndpointState<A::Msg>,
    ) -> Result<(), ActorProcessingErr> {
        let meter = st.meter.clone();
        let _busy = meter.begin(match msg {
            EndpointMsg::ConnectionCount(_) => 0,
            EndpointMsg::ReceiveLoopFailed { .. } => 1,
        });
        match msg {
            EndpointMsg::ConnectionCount(reply) => {
                let _ = reply.send(myself.get_children().len());
            }
            EndpointMsg::ReceiveLoopFailed {
                worker,
                reason,
                verdict,
            } => {
                let who = if st.recv_loops.len() == 1 {
                    "receive loop".to_string()
                } else {
                    format!("receive loop of worker {worker}")
                };
                use crate::supervision::{FailureKind, Verdict};
                let stats = &st.routes.stats;
                let (decision, policy) = stats.supervision(|s| {
                    let d = s.budget.on_failure(Instant::now());
                    let kind = match d {
                        Verdict::Restart => FailureKind::Restarted,
                        Verdict::Escalate => FailureKind::Escalated,
                    };
                    s.failures
                        .record(who, ActorKind::ReceiveLoop, kind, &reason);
                    (d, s.budget.policy())
                });
                if decision == Verdict::Escalate {
                    tracing::error!(
                        worker,
                        "receive loop failed past its budget ({} restarts within {:?}), last: \
                         {reason}; the endpoint fails to its supervisor",
                        policy.max_restarts,
                        policy.within
                    );
                    let _ = verdict.send(false);
                    // Failing skips post_stop: stop the connections in order first.
                    myself
                        .stop_children_and_wait(
                            Some("receive loop failed".into()),
                            Some(Duration::from_secs(5)),
                        )
                        .await;
                    return Err(format!(
                        "receive loop failed past its restart budget ({} within {:?}); last: \
                         {reason}",
                        policy.max_restarts, policy.within
                    )
                    .into());
                }
                bump(&stats.receive_loop_restarts);
                warn!(worker, "receive loop panicked, restarting it: {reason}");
                let _ = verdict.send(true);
            }
        }
        Ok(())
    }

    async fn handle_supervisor_evt(
        &self,
        _myself: ActorRef<EndpointMsg>,
        evt: SupervisionEvent,
        st: &mut EndpointState<A::Msg>,
    ) -> Result<(), ActorProcessingErr> {
        // A connection ending never stops the endpoint. Its counters are settled before it
        // leaves the live set, so whoever waited for idleness reads final figures.
        let ended = match &evt {
            SupervisionEvent::ActorTerminated(cell, _, _)
            | SupervisionEvent::ActorFailed(cell, _) => Some(cell.get_id()),
            _ => None,
        };
        match evt {
            SupervisionEvent::ActorTerminated(cell, _, _) => {
                bump(&st.routes.stats.connections_closed);
                trace!(actor = %cell.get_id(), "connection actor stopped");
            }
            SupervisionEvent::ActorFailed(cell, err) => {
                // It skipped post_stop: drop the routes it held, and its registration.
                st.registry.remove(&cell.get_id());
                bump(&st.routes.stats.connections_failed);
                st.routes.stats.record_failure(
                    format!("connection actor {}", cell.get_id()),
                    ActorKind::Connection,
                    crate::supervision::FailureKind::Failed,
                    &err.to_string(),
                );
                let n = st.routes.remove_actor(cell.get_id());
                warn!(actor = %cell.get_id(), routes = n, "connection actor failed: {err}");
            }
            _ => {}
        }
        if let Some(id) = ended {
            st.live.stopped(id);
        }
        Ok(())
    }
}

/// A UDP endpoint running connection actors of application type `A`.
pub struct Endpoint<A: ConnectionApp> {
    actor: ActorRef<EndpointMsg>,
    inject_panic: Arc<AtomicBool>,
    accepting: Arc<AtomicBool>,
    live: Arc<LiveSet>,
    socket: Arc<Socket>,
    local_addr: SocketAddr,
    routes: Routes,
    stats: Arc<EndpointStats>,
    settings: QuicSettings,
    tls: TlsConfig,
    /// Client: session tickets by server name, for resumption.
    sessions: crate::sessions::SessionCache,
    /// The live connection actors, with counted mailboxes.
    registry: Registry<A::Msg>,
    /// The endpoint actor's meter.
    meter: Arc<ActorMeter>,
    /// The application's supervisor of the endpoint actor, if any.
    supervisor: Option<String>,
    /// `"server"` or `"client"`.
    role: &'static str,
    /// A server's application factory (for what it keeps outside connections).
    factory: Option<Arc<dyn AppFactory<A>>>,
    _app: PhantomData<fn() -> A>,
}

/// Names of the endpoint actor's messages, for its meter.
const ENDPOINT_MESSAGES: &[&str] = &["connection count", "receive loop failed"];

impl<A: ConnectionApp> Endpoint<A> {
    /// Binds a server endpoint. `factory` makes the application for each accepted connection.
    /// Without an identity in `tls`, a self-signed certificate for localhost is generated.
    ///
    /// With a `supervisor`, the endpoint actor is spawned linked under it: the application's
    /// actor gets `ActorFailed` when the endpoint escalates (its receive loop failed past
    /// `QuicSettings::receive_loop_restarts`) and `ActorTerminated` when it shuts down.
    pub async fn server(
        addr: SocketAddr,
        settings: QuicSettings,
        mut tls: TlsConfig,
        factory: Arc<dyn AppFactory<A>>,
        supervisor: Option<ActorCell>,
    ) -> Result<(Self, Identity), EndpointError> {
        settings.validate()?;
        let identity = match &tls.identity {
            Some(id) => id.clone(),
            None => {
                let id = Identity::self_signed()?;
                tls.identity = Some(id.clone());
                id
            }
        };
        // One Retry key for all workers: a client's token is good whichever one reads it.
        let tokens = RetryTokens::new();
        let servers = (0..settings.workers)
            .map(|_| {
                Ok(ServerSide {
                    config: settings.to_quiche(&tls, true, None)?,
                    factory: factory.clone(),
                    tokens: tokens.clone(),
                })
            })
            .collect::<Result<Vec<_>, crate::error::ConfigError>>()?;
        let mut ep = Self::start(addr, settings, tls, servers, supervisor).await?;
        ep.factory = Some(factory);
        info!(addr = %ep.local_addr, workers = ep.settings.workers, "QUIC server listening");
        Ok((ep, identity))
    }

    /// Binds a client endpoint (use port 0 for any). Any number of connections may share it.
    /// A CA file in `tls` is read once, here (not on every connect), and checked. With a
    /// `supervisor`, the endpoint actor runs linked under it, as for [`Endpoint::server`].
    pub async fn client(
        addr: SocketAddr,
        settings: QuicSettings,
        mut tls: TlsConfig,
        supervisor: Option<ActorCell>,
    ) -> Result<Self, EndpointError> {
        settings.validate()?;
        if settings.workers != 1 {
            return Err(crate::error::ConfigError::Invalid {
                field: "workers",
                why: format!(
                    "{} asked of a client endpoint, which has one (workers spread a server's \
                     connections over threads); set it to 1",
                    settings.workers
                ),
            }
            .into());
        }
        if let crate::tls::Verify::CaFile(path) = &tls.verify {
            let pem =
                tokio::fs::read(path)
                    .await
                    .map_err(|source| crate::error::ConfigError::File {
                        what: "CA certificate",
                        path: path.clone(),
                        source,
                    })?;
            // Parsed now, so a bad file is reported at bind, naming it.
            let parsed = TlsConfig {
                identity: None,
                verify: crate::tls::Verify::CaPem(pem.clone()),
            };
            parsed.context_builder(false).map_err(|e| match e {
                crate::error::ConfigError::Tls(why) => {
                    crate::error::ConfigError::Tls(format!("{why} (CA file {})", path.display()))
                }
                other => other,
            })?;
            tls.verify = parsed.verify;
        }
        Self::start(addr, settings, tls, Vec::new(), supervisor).await
    }

    async fn start(
        addr: SocketAddr,
        settings: QuicSettings,
        tls: TlsConfig,
        servers: Vec<ServerSide<A>>,
        supervisor: Option<ActorCell>,
    ) -> Result<Self, EndpointError> {
        let bind_error = |source| EndpointError::Bind { addr, source };
        let n = settings.workers;
        let layout = Arc::new(CidLayout::new(&settings.cid_host_id, n)?);
        let (sockets, threads, runtimes) = if n == 1 {
            (
                vec![Socket::bind(addr).map_err(bind_error)?],
                None,
                vec![None],
            )
        } else {
            let (sockets, steering) =
                Socket::bind_group(addr, n, &layout.steering_program()).map_err(bind_error)?;
            if let Some(e) = steering {
                warn!(
                    "the kernel refused the steering program ({e}): packets of a client whose \
                     address changed may reach another worker, which hands them on"
                );
            }
            let (threads, handles) = WorkerThreads::start(n)
                .map_err(|e| EndpointError::Spawn(format!("worker threads: {e}")))?;
            (
                sockets,
                Some(threads),
                handles.into_iter().map(Some).collect(),
            )
        };
        let is_server = !servers.is_empty();
        let workers: Vec<WorkerIo> = sockets
            .into_iter()
            .zip(runtimes)
            .enumerate()
            .map(|(worker, (socket, runtime))| WorkerIo {
                socket: Arc::new(socket),
                runtime,
                cids: if is_server {
                    CidSource::Worker {
                        layout: layout.clone(),
                        worker,
                    }
                } else {
                    CidSource::Random
                },
            })
            .collect();
        let socket = workers[0].socket.clone();
        let local_addr = socket.local_addr();
        let stats = Arc::new(EndpointStats::with_metrics(settings.metrics.clone(), n));
        stats.supervision(|s| {
            s.budget = crate::supervision::RestartBudget::new(settings.receive_loop_restarts)
        });
        let routes = Routes::new(stats.clone());
        let accepting = Arc::new(AtomicBool::new(true));
        let live = LiveSet::new();
        let inject_panic = Arc::new(AtomicBool::new(false));
        let registry: Registry<A::Msg> = Default::default();
        let meter = ActorMeter::new(ActorKind::Endpoint, ENDPOINT_MESSAGES);
        let supervisor_id = supervisor.as_ref().map(|c| c.get_id().to_string());
        let role = if is_server { "server" } else { "client" };
        let args = EndpointArgs {
            registry: registry.clone(),
            meter: meter.clone(),
            inject_panic: inject_panic.clone(),
            accepting: accepting.clone(),
            live: live.clone(),
            workers,
            threads,
            routes: routes.clone(),
            servers,
            settings: settings.clone(),
        };
        let spawned = match supervisor {
            Some(sup) => {
                Actor::spawn_linked(None, EndpointActor::<A>(PhantomData), args, sup).await
            }
            None => Actor::spawn(None, EndpointActor::<A>(PhantomData), args).await,
        };
        let (actor, _) = spawned.map_err(|e| EndpointError::Spawn(e.to_string()))?;
        Ok(Endpoint {
            actor,
            inject_panic,
            accepting,
            live,
            socket,
            local_addr,
            routes,
            stats,
            settings,
            tls,
            sessions: Default::default(),
            registry,
            meter,
            supervisor: supervisor_id,
            role,
            factory: None,
            _app: PhantomData,
        })
    }

    /// The bound address.
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// The endpoint actor (the parent of every connection actor).
    pub fn actor(&self) -> &ActorRef<EndpointMsg> {
        &self.actor
    }

    /// Counters.
    pub fn stats(&self) -> EndpointStatsSnapshot {
        self.stats.snapshot()
    }

    /// Number of live connection actors.
    pub fn connection_count(&self) -> usize {
        self.actor.get_children().len()
    }

    /// Fault injection for tests: the receive loop panics when it next reads a batch.
    #[doc(hidden)]
    pub fn inject_receive_loop_panic(&self) {
        self.inject_panic.store(true, Ordering::Release);
    }

    /// Stops creating connections for new clients; existing connections carry on. New
    /// clients' Initials are dropped (and counted as unknown-connection drops).
    pub fn stop_accepting(&self) {
        self.accepting.store(false, Ordering::Release);
    }

    /// Sends an application message (made by `make`) to every live connection actor.
    pub fn broadcast(&self, make: impl Fn() -> A::Msg) {
        for conn in self.registry.iter() {
            let _ = conn.value().mailbox.cast(ConnMsg::App(make()));
        }
    }

    /// Closes every connection with an application error code.
    pub fn close_all(&self, code: u64, reason: &str) {
        for conn in self.registry.iter() {
            let _ = conn.value().mailbox.cast(ConnMsg::Close {
                space: crate::connection::ErrorSpace::Application,
                code,
                reason: reason.as_bytes().to_vec(),
            });
        }
    }

    /// Waits until every connection actor that started has stopped.
    pub async fn wait_idle(&self) {
        let mut rx = self.live.count.subscribe();
        let _ = rx.wait_for(|n| *n == 0).await;
    }

    /// The live connection actors (children of the endpoint actor).
    pub fn connections(&self) -> Vec<ActorRef<ConnMsg<A::Msg>>> {
        self.actor
            .get_children()
            .into_iter()
            .map(ActorRef::from)
            .collect()
    }

    /// The live connection named `key`: its trace id (as logs and the snapshot show it) or its
    /// actor id. `None` when no live connection has that name.
    pub fn find_connection(&self, key: &str) -> Option<ConnMailbox<A::Msg>> {
        self.registry
            .iter()
            .find(|e| &*e.value().trace_id == key || e.key().to_string() == key)
            .map(|e| e.value().mailbox.clone())
    }

    /// Starts a qlog of the live connection named `key` (see [`Endpoint::find_connection`])
    /// in `dir`, and returns the file's path. Refused, with the reason, when no such
    /// connection is live, when it already writes a qlog, or when the file cannot be created.
    ///
    /// Cancel safety: cancel-safe; the qlog starts if the connection got the request.
    pub async fn start_qlog(
        &self,
        key: &str,
        dir: &std::path::Path,
    ) -> Result<std::path::PathBuf, String> {
        let conn = self
            .find_connection(key)
            .ok_or_else(|| format!("no live connection is named {key:?}"))?;
        conn.meter().on_send();
        let dir = dir.to_path_buf();
        match conn
            .actor()
            .call(
                |reply| ConnMsg::StartQlog { dir, reply },
                Some(Duration::from_secs(5)),
            )
            .await
        {
            Ok(ractor::rpc::CallResult::Success(r)) => r,
            _ => Err(format!("connection {key} closed before it answered")),
        }
    }

    /// The live tree under this endpoint: its actor, receive loop and restart budget, its
    /// failure ring, and every connection with its streams. Taken while traffic runs: each
    /// connection answers one message between turns; one that does not answer within
    /// [`crate::snapshot::SNAPSHOT_CONNECTION_TIMEOUT`] is listed from its meter alone
    /// (`answered: false`), so a stuck connection shows up instead of stalling the snapshot.
    ///
    /// Cancel safety: cancel-safe (the connections' answers are dropped).
    pub async fn snapshot(&self) -> crate::snapshot::EndpointSnapshot {
        use crate::snapshot::{ActorNode, ConnectionSnapshot, EndpointSnapshot, ReceiveLoopNode};
        use crate::supervision::BudgetView;
        let conns: Vec<crate::connection::Registered<A::Msg>> =
            self.registry.iter().map(|e| e.value().clone()).collect();
        let answers = futures::future::join_all(conns.iter().map(|reg| async move {
            let (c, trace_id) = (&reg.mailbox, &reg.trace_id);
            c.meter().on_send();
            let r = c
                .actor()
                .call(
                    ConnMsg::Snapshot,
                    Some(crate::snapshot::SNAPSHOT_CONNECTION_TIMEOUT),
                )
                .await;
            match r {
                Ok(ractor::rpc::CallResult::Success(s)) => s,
                _ => {
                    let cell = c.actor().get_cell();
                    let mut s = ConnectionSnapshot::unanswered(ActorNode::of(
                        &cell,
                        ActorKind::Connection,
                        c.meter().view(),
                    ));
                    // Its name and children are known without it.
                    s.trace_id = trace_id.to_string();
                    s.child_actors = cell.get_children().len();
                    s
                }
            }
        }))
        .await;
        let now = Instant::now();
        let (budget, failures, failures_total, failure_counts): (BudgetView, _, _, _) =
            self.stats.supervision(|s| {
                (
                    s.budget.view(now),
                    s.failures.entries(),
                    s.failures.total(),
                    s.failures.counts(),
                )
            });
        let counters = self.stats.snapshot();
        let mut connections: Vec<ConnectionSnapshot> = answers;
        connections.sort_by(|a, b| a.trace_id.cmp(&b.trace_id));
        EndpointSnapshot {
            taken_at_unix_secs: std::time::SystemTime::now()
                .duration_since(std::time::SystemTime::UNIX_EPOCH)
                .map_or(0.0, |d| d.as_secs_f64()),
            actor: ActorNode::of(
                &self.actor.get_cell(),
                ActorKind::Endpoint,
                self.meter.view(),
            ),
            role: self.role,
            local_addr: self.local_addr,
            supervisor: self.supervisor.clone(),
            receive_loop: ReceiveLoopNode {
                restarts: counters.receive_loop_restarts,
                budget,
            },
            failures,
            failures_total,
            failure_counts,
            counters,
            parked_stream_actors: self.factory.as_ref().map_or(0, |f| f.parked_actors()),
            connections,
        }
    }

    /// Number of actors running under all connection actors: for HTTP/3, the stream actors
    /// serving a stream (parked ones are under no connection).
    pub fn connection_children(&self) -> usize {
        self.actor
            .get_children()
            .iter()
            .map(|c| c.get_children().len())
            .sum()
    }

    /// Number of actors under all connections that serve a stream now, from a snapshot (the
    /// actors parked for later streams are under no connection).
    pub async fn serving_stream_actors(&self) -> usize {
        self.snapshot()
            .await
            .connections
            .iter()
            .map(|c| c.child_actors)
            .sum()
    }

    /// Number of connection IDs in the routing table.
    pub fn route_count(&self) -> usize {
        self.routes.len()
    }

    /// Connects to `peer`, verifying its certificate for `server_name`, and runs `app` on the
    /// connection. Returns once the handshake completed, or fails at the handshake timeout.
    ///
    /// An IPv4 peer is reached from a dual-stack `[::]` endpoint as its IPv4-mapped address;
    /// [`Connection::peer`] still reports `peer`.
    ///
    /// Cancel safety: dropping the future abandons the handshake; the connection actor closes
    /// (CONNECTION_CLOSE with NO_ERROR) and stops.
    pub async fn connect(
        &self,
        peer: SocketAddr,
        server_name: &str,
        app: A,
    ) -> Result<Connection<A::Msg>, ConnectError> {
        self.begin_connect(peer, server_name, app)
            .await?
            .established()
            .await
    }

    /// Connects to `server_name` on `port`, trying every address it resolves to (see
    /// [`crate::eyeballs::resolve`]) the way Happy Eyeballs does (RFC 8305): IPv6 and IPv4 interleaved,
    /// IPv6 first; each next address after [`QuicSettings::connection_attempt_delay`] (or at
    /// once when the latest attempt failed) while the earlier attempts go on; the first
    /// handshake to complete wins and the others are closed. `make_app` makes the
    /// application of each attempt, given the address it dials (the winner's
    /// [`Connection::peer`]).
    ///
    /// Cancel safety: dropping the future closes every attempt still running.
    pub async fn connect_name(
        &self,
        server_name: &str,
        port: u16,
        make_app: impl FnMut(SocketAddr) -> A,
    ) -> Result<Connection<A::Msg>, ConnectError> {
        let addrs = crate::eyeballs::resolve(server_name, port).await?;
        self.connect_addrs(server_name, &addrs, make_app).await
    }

    /// As [`Endpoint::connect_name`], over addresses the caller resolved (curl's `--resolve`),
    /// verifying each server's certificate for `server_name`. Fails with
    /// [`ConnectError::AllAddressesFailed`], naming every address tried, when none of several
    /// answers (with one address, with that address's own error).
    pub async fn connect_addrs(
        &self,
        server_name: &str,
        addrs: &[SocketAddr],
        mut make_app: impl FnMut(SocketAddr) -> A,
    ) -> Result<Connection<A::Msg>, ConnectError> {
        use crate::eyeballs::Step;
        use futures::stream::{FuturesUnordered, StreamExt};
        let name = server_name
            .trim_start_matches('[')
            .trim_end_matches(']')
            .to_string();
        let addrs = crate::eyeballs::order(addrs);
        if addrs.is_empty() {
            return Err(ConnectError::NoAddress { name });
        }
        let mut race =
            crate::eyeballs::Race::new(addrs.len(), self.settings.connection_attempt_delay);
        let mut errors: Vec<Option<ConnectError>> = addrs.iter().map(|_| None).collect();
        // Dropping this set (on return or cancellation) drops each running attempt, which
        // closes its connection.
        let mut running = FuturesUnordered::new();
        loop {
            let finished = match race.step(Instant::now()) {
                Step::Start(i) => {
                    match self
                        .begin_connect(addrs[i], server_name, make_app(addrs[i]))
                        .await
                    {
                        Ok(attempt) => {
                            running.push(async move { (i, attempt.established().await) })
                        }
                        Err(e) => {
                            errors[i] = Some(e);
                            race.failed(i);
                        }
                    }
                    continue;
                }
                Step::WaitUntil(at) => {
                    tokio::select! {
                        _ = tokio::time::sleep_until(at.into()) => continue,
                        Some(done) = running.next() => done,
                    }
                }
                Step::Wait => match running.next().await {
                    Some(done) => done,
                    None => continue,
                },
                Step::Exhausted => {
                    let mut tried: Vec<ConnectError> = errors.into_iter().flatten().collect();
                    // One address: its own error says it all.
                    return Err(if tried.len() == 1 {
                        tried.remove(0)
                    } else {
                        ConnectError::AllAddressesFailed { name, tried }
                    });
                }
            };
            match finished {
                (_, Ok(conn)) => {
                    debug!(server = %name, peer = %conn.peer(), "happy eyeballs: won");
                    return Ok(conn);
                }
                (i, Err(e)) => {
                    debug!(server = %name, peer = %addrs[i], error = %e, "happy eyeballs: attempt failed");
                    errors[i] = Some(e);
                    race.failed(i);
                }
            }
        }
    }

    /// Starts a handshake with `peer`; the returned attempt finishes it.
    async fn begin_connect(
        &self,
        peer: SocketAddr,
        server_name: &str,
        app: A,
    ) -> Result<PendingConnect<A::Msg>, ConnectError> {
        let wire_peer = self
            .socket
            .address_for(peer)
            .ok_or(ConnectError::Unreachable {
                peer,
                local: self.local_addr,
            })?;
        // A server named by IP address (RFC 9525 §6.3): its certificate's IP address entries are
        // checked, and no SNI is sent (RFC 6066 §3).
        let ip = server_name
            .trim_start_matches('[')
            .trim_end_matches(']')
            .parse::<std::net::IpAddr>()
            .ok()
            .map(|ip| crate::tls::IpIdentity {
                ip,
                mismatch: Arc::new(AtomicBool::new(false)),
            });
        let mut config = self.settings.to_quiche(&self.tls, false, ip.as_ref())?;
        let scid = quiche::ConnectionId::from_vec(rand::random::<[u8; LOCAL_CID_LEN]>().to_vec());
        let local = self.local_addr;
        let sni = if ip.is_some() {
            None
        } else {
            Some(server_name)
        };
        let mut conn = Box::new(quiche::connect_with_buffer_factory::<
            crate::bufs::BytesFactory,
        >(sni, &scid, local, wire_peer, &mut config)?);
        if let Some(ticket) = self.sessions.get(server_name) {
            // A stale or foreign ticket only means a full handshake.
            let _ = conn.set_session(&ticket);
        }
        let inbox = Arc::new(Inbox::new(self.settings.connection_queue));
        self.routes.insert(&scid, inbox.clone());
        let (est_tx, est_rx) = oneshot::channel();
        let (closed_tx, closed_rx) = watch::channel(None);
        let meter = ActorMeter::new(ActorKind::Connection, CONN_MESSAGES);
        let outbox = Arc::new(Outbox::new());
        let args = ConnArgs {
            conn,
            app,
            inbox,
            outbox: outbox.clone(),
            routes: self.routes.clone(),
            socket: self.socket.clone(),
            handshake_timeout: self.settings.handshake_timeout,
            extra_routes: Vec::new(),
            established: Some(est_tx),
            closed_tx,
            max_udp_payload: self.settings.max_udp_payload,
            gso: self.settings.gso,
            session_cache: Some(self.sessions.slot(server_name)),
            keylog: self.settings.keylog_file.clone(),
            qlog_dir: self.settings.qlog_dir.clone(),
            meter: meter.clone(),
            registry: self.registry.clone(),
            idle_timeout: self.settings.idle_timeout,
            max_streams_bidi: self.settings.initial_max_streams_bidi,
            cids: CidSource::Random,
        };
        let guard = self.live.spawning();
        let spawned = Actor::spawn_linked(
            None,
            ConnectionActor::<A>::default(),
            args,
            self.actor.get_cell(),
        )
        .await;
        guard.done(spawned.as_ref().ok().map(|(a, _)| a.get_id()));
        let (actor, _) = match spawned {
            Ok(a) => a,
            Err(e) => {
                self.routes.remove(&scid);
                return Err(ConnectError::Endpoint(e.to_string()));
            }
        };
        Ok(PendingConnect {
            handle: Some(Connection::new(
                ConnMailbox::new(Tracked::new(actor, meter), outbox),
                closed_rx,
                peer,
            )),
            established: est_rx,
            peer,
            ip,
            handshake_timeout: self.settings.handshake_timeout,
        })
    }

    /// Stops every connection (their actors stop in order) and the receive loop.
    pub async fn shutdown(&self) {
        let _ = self
            .actor
            .stop_and_wait(Some("shutdown".into()), Some(Duration::from_secs(10)))
            .await;
    }
}

/// A handshake under way. Dropped before it completes, it closes its connection.
struct PendingConnect<M: Send + 'static> {
    /// `None` once handed out (the handshake completed).
    handle: Option<Connection<M>>,
    established: oneshot::Receiver<Result<(), crate::connection::CloseReason>>,
    peer: SocketAddr,
    ip: Option<crate::tls::IpIdentity>,
    handshake_timeout: Duration,
}

impl<M: Send + 'static> PendingConnect<M> {
    /// Waits for the handshake to complete.
    ///
    /// Cancel safety: dropping the future closes the connection.
    async fn established(mut self) -> Result<Connection<M>, ConnectError> {
        use crate::connection::CloseReason;
        let outcome = (&mut self.established).await;
        let handle = self.handle.take().expect("an attempt finishes once");
        let (peer, after) = (self.peer, self.handshake_timeout);
        match outcome {
            Ok(Ok(())) => Ok(handle),
            Ok(Err(CloseReason::HandshakeTimeout | CloseReason::IdleTimeout)) => {
                Err(ConnectError::HandshakeTimeout { peer, after })
            }
            Err(_)
                if matches!(
                    handle.close_reason(),
                    None | Some(CloseReason::HandshakeTimeout)
                ) =>
            {
                Err(ConnectError::HandshakeTimeout { peer, after })
            }
            Ok(Err(reason)) => Err(ConnectError::HandshakeFailed {
                peer,
                reason: match &self.ip {
                    Some(id) if id.mismatch.load(Ordering::Acquire) => format!(
                        "the server's certificate does not name the address {} (it has no such \
                         IP address entry); {reason}",
                        id.ip
                    ),
                    _ => reason.to_string(),
                },
            }),
            Err(_) => Err(ConnectError::Endpoint("connection actor stopped".into())),
        }
    }
}

impl<M: Send + 'static> Drop for PendingConnect<M> {
    fn drop(&mut self) {
        if let Some(handle) = self.handle.take() {
            // Abandoned (another address won, or the caller gave up): close it now rather
            // than let it retransmit Initials until the handshake timeout.
            let _ = handle.mailbox().cast(ConnMsg::Close {
                space: crate::connection::ErrorSpace::Transport,
                code: 0,
                reason: b"abandoned".to_vec(),
            });
        }
    }
}

impl<A: ConnectionApp> Drop for Endpoint<A> {
    fn drop(&mut self) {
        self.actor.stop(Some("endpoint dropped".into()));
    }
}

/// The receive loop: reads datagrams and hands them to connection actors.
struct RecvLoop<A: ConnectionApp> {
    /// Which worker this loop is (its index in the reuseport group).
    worker: usize,
    accepting: Arc<AtomicBool>,
    socket: Arc<Socket>,
    /// How the connections this loop accepts name themselves.
    cids: CidSource,
    routes: Routes,
    server: Option<ServerSide<A>>,
    settings: QuicSettings,
    endpoint: ActorCell,
    live: Arc<LiveSet>,
    inject_panic: Arc<AtomicBool>,
    registry: Registry<A::Msg>,
}

impl<A: ConnectionApp> RecvLoop<A> {
    /// Runs the loop under the endpoint actor's supervision: a panic is caught and reported,
    /// and the loop restarts (with its state: socket, routes, server configuration) only if
    /// the endpoint allows it.
    async fn supervised(mut self, endpoint: Tracked<EndpointMsg>) {
        use futures::FutureExt;
        loop {
            let panic = match std::panic::AssertUnwindSafe(self.run())
                .catch_unwind()
                .await
            {
                Ok(()) => return,
                Err(p) => p,
            };
            let reason = panic
                .downcast_ref::<&str>()
                .map(|s| s.to_string())
                .or_else(|| panic.downcast_ref::<String>().cloned())
                .unwrap_or_else(|| "unknown panic".into());
            endpoint.meter().on_send();
            let worker = self.worker;
            let restart = endpoint
                .actor()
                .call(
                    |verdict| EndpointMsg::ReceiveLoopFailed {
                        worker,
                        reason,
                        verdict,
                    },
                    None,
                )
                .await;
            if !matches!(restart, Ok(ractor::rpc::CallResult::Success(true))) {
                return;
            }
        }
    }

    async fn run(&mut self) {
        let local = self.socket.local_addr();
        debug!(
            worker = self.worker,
            gso = self.socket.max_gso_segments(),
            gro = self.socket.gro_segments(),
            "receive loop started"
        );
        let mut storage = RecvStorage::new(RECV_SLOT, RECV_BATCH);
        let mut meta = vec![RecvMeta::default(); RECV_BATCH];
        let mut memo = RouteMemo::default();
        loop {
            let filled = {
                let mut bufs = storage.io_slices();
                let n = bufs.len();
                self.socket.recv(&mut bufs, &mut meta[..n]).await
            };
            if self.inject_panic.swap(false, Ordering::AcqRel) {
                panic!("injected receive loop panic");
            }
            let filled = match filled {
                Ok(n) => n,
                Err(e) => {
                    // ICMP errors surface here on some systems; they concern one peer.
                    debug!("recv error: {e}");
                    tokio::task::yield_now().await;
                    continue;
                }
            };
            storage.note_filled(filled);
            for (i, m) in meta.iter().enumerate().take(filled) {
                let data = storage.filled(i, m.len);
                for dgram in data.chunks(m.stride.max(1)) {
                    bump(&self.routes.stats.worker_datagrams[self.worker]);
                    // One small allocation per packet: the allocator's fast path. (Carving
                    // packets from a shared arena made large buffers churn through the
                    // allocator and cost page faults.)
                    let packet = Packet {
                        data: BytesMut::from(dgram),
                        from: m.addr,
                        to: local,
                    };
                    // An established connection's packet (short header) goes straight to
                    // its inbox; the others (handshakes, new connections) take the full parse.
                    match short_header_dcid(dgram) {
                        Some(dcid) => self.route_short(dcid, packet, &mut memo),
                        None => self.route(packet).await,
                    }
                }
            }
            // Forgotten before waiting for the next batch: an idle loop holds no inbox (a
            // closed connection's would keep its queued packets alive).
            memo.clear();
        }
    }

    /// Routes a short-header packet by the ID [`short_header_dcid`] read: to its connection's
    /// inbox, or dropped when no connection has that ID (no stateless reset is sent).
    fn route_short(&self, dcid: &[u8; LOCAL_CID_LEN], packet: Packet, memo: &mut RouteMemo) {
        let stats = &self.routes.stats;
        let Some(inbox) = memo.lookup(&self.routes, dcid) else {
            stats.dropped(DropReason::UnknownConnection);
            return;
        };
        if let CidSource::Worker { layout, worker } = &self.cids {
            if layout.worker_of(dcid).is_some_and(|w| w != *worker) {
                bump(&stats.datagrams_misrouted);
            }
        }
        match inbox.offer(packet) {
            Offer::Queued => {}
            Offer::Full => stats.dropped(DropReason::QueueFull),
            Offer::Closed => {
                memo.clear();
                stats.dropped(DropReason::QueueFull);
            }
        }
    }

    /// Routes any packet, parsing its header in full: a long header (a handshake, a new
    /// connection, version negotiation) or one too short to be read in place.
    async fn route(&mut self, mut packet: Packet) {
        let hdr = match quiche::Header::from_slice(&mut packet.data, LOCAL_CID_LEN) {
            Ok(h) => h,
            Err(_) => {
                self.routes.stats.dropped(DropReason::Unparseable);
                return;
            }
        };
        // Only long headers get here (a short one that parses holds a whole ID, which
        // `route_short` took), and the kernel's hash, not a worker byte, steers those: no
        // misrouting to count.
        if let Some(inbox) = self.routes.get(&hdr.dcid) {
            match inbox.offer(packet) {
                Offer::Queued => {}
                Offer::Full | Offer::Closed => self.routes.stats.dropped(DropReason::QueueFull),
            }
            return;
        }
        if self.server.is_none() {
            self.routes.stats.dropped(DropReason::UnknownConnection);
            return;
        }
        if hdr.ty != quiche::Type::Initial || !self.accepting.load(Ordering::Acquire) {
            self.routes.stats.dropped(DropReason::UnknownConnection);
            return;
        }
        // RFC 9000 §14.1: a server must drop Initials in datagrams under 1200 bytes.
        if packet.data.len() < 1200 {
            self.routes.stats.dropped(DropReason::UnknownConnection);
            return;
        }
        let mut out = [0u8; 1500];
        if !quiche::version_is_supported(hdr.version) {
            if let Ok(n) = quiche::negotiate_version(&hdr.scid, &hdr.dcid, &mut out) {
                bump(&self.routes.stats.version_negotiations);
                let _ = self.socket.send(packet.from, &out[..n], None).await;
            }
            return;
        }
        // Load: refuse past the limits; demand address validation (Retry) under load.
        let stats = &self.routes.stats;
        let handshaking = stats.handshaking.load(Ordering::Acquire) as usize;
        let live = *self.live.count.borrow();
        if live >= self.settings.max_connections || handshaking >= self.settings.max_handshakes {
            debug!(
                live,
                handshaking, "refusing a new connection: CONNECTION_REFUSED"
            );
            return self.refuse(packet).await;
        }
        let Some(server) = self.server.as_mut() else {
            return;
        };
        let retry = self.settings.retry || handshaking >= self.settings.max_handshakes / 2;
        let token = hdr.token.as_deref().unwrap_or_default();
        let mut extra_routes = Vec::new();
        let (scid, odcid) = if !token.is_empty() {
            match server.tokens.validate(&packet.from, &hdr.dcid, token) {
                Some(odcid) => (hdr.dcid.clone().into_owned(), Some(odcid)),
                None => {
                    self.routes.stats.dropped(DropReason::InvalidToken);
                    return;
                }
            }
        } else if retry {
            let new_scid = self.cids.mint();
            let token = server.tokens.mint(&packet.from, &hdr.dcid, &new_scid);
            if let Ok(n) = quiche::retry(
                &hdr.scid,
                &hdr.dcid,
                &new_scid,
                &token,
                hdr.version,
                &mut out,
            ) {
                bump(&self.routes.stats.retries_sent);
                let _ = self.socket.send(packet.from, &out[..n], None).await;
            }
            return;
        } else {
            // The client keeps using its chosen DCID until our first packet reaches it.
            extra_routes.push(hdr.dcid.clone().into_owned());
            (self.cids.mint(), None)
        };
        let conn = match quiche::accept_with_buf_factory::<crate::bufs::BytesFactory>(
            &scid,
            odcid.as_ref(),
            packet.to,
            packet.from,
            &mut server.config,
        ) {
            Ok(c) => Box::new(c),
            Err(e) => {
                debug!("accept failed: {e}");
                self.routes.stats.dropped(DropReason::UnknownConnection);
                return;
            }
        };
        let inbox = Arc::new(Inbox::new(self.settings.connection_queue));
        let _ = inbox.offer(packet);
        self.routes.insert(&scid, inbox.clone());
        for r in &extra_routes {
            self.routes.insert(r, inbox.clone());
        }
        let (closed_tx, _closed_rx) = watch::channel(None);
        let args = ConnArgs {
            conn,
            app: server.factory.make(self.worker),
            inbox,
            outbox: Arc::new(Outbox::new()),
            routes: self.routes.clone(),
            socket: self.socket.clone(),
            handshake_timeout: self.settings.handshake_timeout,
            extra_routes: extra_routes.clone(),
            established: None,
            closed_tx,
            max_udp_payload: self.settings.max_udp_payload,
            gso: self.settings.gso,
            session_cache: None,
            keylog: self.settings.keylog_file.clone(),
            qlog_dir: self.settings.qlog_dir.clone(),
            meter: ActorMeter::new(ActorKind::Connection, CONN_MESSAGES),
            registry: self.registry.clone(),
            idle_timeout: self.settings.idle_timeout,
            max_streams_bidi: self.settings.initial_max_streams_bidi,
            cids: self.cids.clone(),
        };
        let guard = self.live.spawning();
        // Counted until the connection leaves its handshake (the actor says when).
        bump(&self.routes.stats.handshaking);
        let spawned = Actor::spawn_linked(
            None,
            ConnectionActor::<A>::default(),
            args,
            self.endpoint.clone(),
        )
        .await;
        guard.done(spawned.as_ref().ok().map(|(a, _)| a.get_id()));
        match spawned {
            Ok(_) => {
                bump(&self.routes.stats.connections_accepted);
                self.routes.stats.metrics.connection_accepted();
            }
            Err(e) => {
                self.routes.stats.handshake_over();
                warn!("cannot spawn connection actor: {e}");
                self.routes.remove(&scid);
                for r in &extra_routes {
                    self.routes.remove(r);
                }
            }
        }
    }
}

impl<A: ConnectionApp> RecvLoop<A> {
    /// Refuses a new client: CONNECTION_REFUSED in an Initial, from a throw-away quiche
    /// connection (quiche needs the client's Initial to address and protect the reply). No
    /// connection actor or route is created.
    async fn refuse(&mut self, mut packet: Packet) {
        bump(&self.routes.stats.connections_refused);
        let Some(server) = self.server.as_mut() else {
            return;
        };
        let scid = self.cids.mint();
        let Ok(mut conn) = quiche::accept(&scid, None, packet.to, packet.from, &mut server.config)
        else {
            return;
        };
        let info = quiche::RecvInfo {
            from: packet.from,
            to: packet.to,
        };
        let _ = conn.recv(&mut packet.data, info);
        // RFC 9000 §20.1: CONNECTION_REFUSED, the server refuses to accept a new connection.
        let _ = conn.close(false, CONNECTION_REFUSED, b"server busy");
        let mut out = [0u8; 1500];
        while let Ok((n, to)) = conn.send(&mut out).map(|(n, i)| (n, i.to)) {
            let _ = self.socket.send(to, &out[..n], None).await;
        }
    }
}

/// RFC 9000 §20.1 transport error code.
const CONNECTION_REFUSED: u64 = 0x2;
