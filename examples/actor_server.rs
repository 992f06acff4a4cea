//! A server whose requests go to the application's own ractor actor, alongside the
//! connection events (peer SETTINGS, final figures) and a Prometheus page.
//!
//! `cargo run --example actor_server`, then
//! `cargo run -p troupe-cli -- get https://localhost:4434/ --insecure` (a greeting with the
//! request count), `.../metrics` (Prometheus text) or `.../priority` (the request's RFC 9218
//! priority as the client signalled it).
//!
//! The actor's mailbox cannot grow without bound: at most `max_unanswered_requests` requests
//! are delivered and not yet answered; later ones wait in their own stream actors, unread,
//! and QUIC flow control holds their clients.

use ractor::{Actor, ActorProcessingErr, ActorRef};
use troupe::h3::{
    Body, ConnectionEvent, EventSink, IncomingRequest, Server, ServerConfig, StreamControl,
};
use troupe::transport::PrometheusMetrics;

/// Everything the application actor handles.
enum AppMsg {
    /// Boxed: a request head is a few hundred bytes, the other messages small.
    Request(Box<IncomingRequest>),
    Connection(ConnectionEvent),
}

impl From<IncomingRequest> for AppMsg {
    fn from(r: IncomingRequest) -> Self {
        AppMsg::Request(Box::new(r))
    }
}

impl From<ConnectionEvent> for AppMsg {
    fn from(e: ConnectionEvent) -> Self {
        AppMsg::Connection(e)
    }
}

struct App {
    metrics: PrometheusMetrics,
}

impl Actor for App {
    type Msg = AppMsg;
    /// Requests answered so far.
    type State = u64;
    type Arguments = ();

    async fn pre_start(&self, _: ActorRef<AppMsg>, _: ()) -> Result<u64, ActorProcessingErr> {
        Ok(0)
    }

    async fn handle(
        &self,
        _: ActorRef<AppMsg>,
        msg: AppMsg,
        answered: &mut u64,
    ) -> Result<(), ActorProcessingErr> {
        match msg {
            AppMsg::Request(incoming) => {
                let IncomingRequest { request, responder } = *incoming;
                *answered += 1;
                let body = match request.uri().path() {
                    "/metrics" => self.metrics.render(),
                    "/priority" => {
                        let p = request
                            .extensions()
                            .get::<StreamControl>()
                            .and_then(StreamControl::priority_signal)
                            .map(|s| s.current());
                        format!("{p:?}\n")
                    }
                    _ => format!("hello from an actor; request #{answered}\n"),
                };
                // Answering is a non-blocking hand-over to the request's stream actor. A
                // slow answer (a database, an upstream) belongs in a task holding `responder`.
                let _ = responder.respond(http::Response::new(Body::from(body)));
            }
            AppMsg::Connection(ConnectionEvent::PeerSettings {
                conn_id, settings, ..
            }) => {
                println!("{conn_id}: peer SETTINGS {:?}", settings.raw);
            }
            AppMsg::Connection(ConnectionEvent::Closed { conn_id, info }) => {
                println!(
                    "{conn_id}: closed ({}), rtt {:?}, {} packets lost",
                    info.close.map(|c| c.to_string()).unwrap_or_default(),
                    info.rtt,
                    info.stats.lost
                );
            }
            AppMsg::Connection(_) => {}
        }
        Ok(())
    }
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let metrics = PrometheusMetrics::new();
    let (app, app_task) = Actor::spawn(
        None,
        App {
            metrics: metrics.clone(),
        },
        (),
    )
    .await?;
    let mut config = ServerConfig::default();
    config.quic.metrics = metrics.shared();
    config.events = Some(EventSink::actor(app.clone()));
    let server = Server::bind_actor("127.0.0.1:4434".parse()?, config, app.clone()).await?;
    println!(
        "listening on {} (self-signed certificate for localhost)",
        server.local_addr()
    );
    tokio::signal::ctrl_c().await?;
    server
        .shutdown_gracefully(std::time::Duration::from_secs(10))
        .await;
    app.stop(None);
    app_task.await?;
    Ok(())
}
