//! The CONNECT-UDP proxy (RFC 9298) as a troupe [`Handler`]: it runs inside each request's
//! stream actor, checks the request (method and `:protocol`, token, URI template, the
//! connection's flow limit), resolves the target, checks the resolved address against the
//! [`EgressPolicy`] and uses that same address, opens one connected UDP socket, answers 200 with
//! `capsule-protocol: ?1`, and spawns the flow actor linked under the stream actor. Every
//! refusal carries `Proxy-Status` (RFC 9209); no socket is opened for a refused request.

use std::collections::HashMap;
use std::future::Future;
use std::net::{IpAddr, SocketAddr};
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use http::{header, Method, Request, Response, StatusCode};
use ractor::Actor;
use tracing::{debug, info};
use troupe_h3::headers::Protocol;
use troupe_h3::{Body, DatagramFlow, Handler, RecvBody, StreamControl};
use troupe_transport::udp::Socket as BatchSocket;

use crate::context::ContextHandler;
use crate::egress::EgressPolicy;
use crate::flow::{FlowActor, FlowArgs, FlowHandle, FlowLimits, FlowStats};
use crate::proxy_status::{header_value, ProxyError};
use crate::template::{TargetError, TargetHost, UdpTemplate, DEFAULT_TEMPLATE};

/// The `:protocol` of CONNECT-UDP.
pub const CONNECT_UDP: &str = "connect-udp";

/// A CONNECT-UDP proxy's configuration.
#[derive(Clone)]
#[non_exhaustive]
pub struct ProxyConfig {
    /// The URI template requests must match. Default RFC 9298's
    /// `/.well-known/masque/udp/{target_host}/{target_port}/`.
    pub template: UdpTemplate,
    /// Where flows may go. Default: the public internet only.
    pub egress: EgressPolicy,
    /// A bearer token every request must carry (`Authorization: Bearer TOKEN`); default none.
    pub token: Option<String>,
    /// Flows one connection may hold at once. Default 100: plenty for an application's
    /// sockets, and a bound on the UDP sockets one client can make the proxy hold.
    pub max_flows_per_connection: usize,
    /// Each flow's limits.
    pub flow: FlowLimits,
    /// How long resolving a target name may take. Default 5 s, a resolver's own timeout.
    pub resolve_timeout: Duration,
    /// Capsules queued toward the client per flow (the capsule path's bound). Default 256.
    pub capsule_queue: usize,
    /// Context ids the application handles (RFC 9298 §4), beside 0 (UDP payloads, never
    /// looked up here); datagrams with any other context id are dropped and counted.
    pub contexts: HashMap<u64, Arc<dyn ContextHandler>>,
    /// Handlers for other `:protocol` values (extended CONNECT); anything else gets 501.
    pub protocols: HashMap<String, Arc<dyn Handler>>,
    /// The handler for requests that are not CONNECT; default: 404.
    pub fallback: Option<Arc<dyn Handler>>,
}

impl std::fmt::Debug for ProxyConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ProxyConfig")
            .field("template", &self.template.as_str())
            .field("egress", &self.egress)
            .field("token", &self.token.as_ref().map(|_| "<set>"))
            .field("max_flows_per_connection", &self.max_flows_per_connection)
            .field("flow", &self.flow)
            .field("contexts", &self.contexts.keys().collect::<Vec<_>>())
            .finish()
    }
}

impl Default for ProxyConfig {
    fn default() -> Self {
        ProxyConfig {
            template: UdpTemplate::parse(DEFAULT_TEMPLATE).expect("the default template parses"),
            egress: EgressPolicy::default(),
            token: None,
            max_flows_per_connection: 100,
            flow: FlowLimits::default(),
            resolve_timeout: Duration::from_secs(5),
            capsule_queue: 256,
            contexts: HashMap::new(),
            protocols: HashMap::new(),
            fallback: None,
        }
    }
}

/// Proxy-wide counters.
#[derive(Debug, Default)]
pub struct ProxyStats {
    /// Flows opened.
    pub flows_opened: AtomicU64,
    /// Requests refused, any reason.
    pub refused: AtomicU64,
    /// The live flows' own counters (weakly: ended flows drop out).
    flows: std::sync::Mutex<Vec<std::sync::Weak<FlowStats>>>,
}

impl ProxyStats {
    fn track(&self, f: &Arc<FlowStats>) {
        let mut v = self.flows.lock().unwrap_or_else(|e| e.into_inner());
        v.retain(|w| w.strong_count() > 0);
        v.push(Arc::downgrade(f));
    }

    /// The live flows' counters.
    pub fn live_flows(&self) -> Vec<Arc<FlowStats>> {
        let v = self.flows.lock().unwrap_or_else(|e| e.into_inner());
        v.iter().filter_map(|w| w.upgrade()).collect()
    }
}

/// The CONNECT-UDP handler.
#[derive(Clone)]
pub struct ConnectUdp {
    config: Arc<ProxyConfig>,
    stats: Arc<ProxyStats>,
}

impl ConnectUdp {
    /// A proxy with `config`.
    pub fn new(config: ProxyConfig) -> ConnectUdp {
        ConnectUdp {
            config: Arc::new(config),
            stats: Arc::default(),
        }
    }

    /// Its counters.
    pub fn stats(&self) -> Arc<ProxyStats> {
        self.stats.clone()
    }
}

impl Handler for ConnectUdp {
    fn call(&self, req: Request<RecvBody>) -> Pin<Box<dyn Future<Output = Response<Body>> + Send>> {
        let me = self.clone();
        Box::pin(async move { me.handle(req).await })
    }
}

/// A refusal: status, Proxy-Status, and a line of text for a person.
fn refuse(status: StatusCode, error: ProxyError, details: &str) -> Response<Body> {
    let mut r = Response::new(Body::from(format!("{details}\n")));
    *r.status_mut() = status;
    if let Ok(v) = header::HeaderValue::from_str(&header_value(error, Some(details))) {
        r.headers_mut().insert("proxy-status", v);
    }
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        header::HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    r
}

impl ConnectUdp {
    async fn handle(&self, req: Request<RecvBody>) -> Response<Body> {
        let c = &self.config;
        if req.method() != Method::CONNECT {
            return match &c.fallback {
                Some(h) => h.call(req).await,
                None => {
                    let mut r = Response::new(Body::from("this is a CONNECT-UDP proxy\n"));
                    *r.status_mut() = StatusCode::NOT_FOUND;
                    r
                }
            };
        }
        let protocol = req.extensions().get::<Protocol>().map(|p| p.0.clone());
        match protocol.as_deref() {
            Some(CONNECT_UDP) => {}
            Some(other) => {
                if let Some(h) = c.protocols.get(other) {
                    return h.call(req).await;
                }
                self.stats.refused.fetch_add(1, Ordering::Relaxed);
                return refuse(
                    StatusCode::NOT_IMPLEMENTED,
                    ProxyError::HttpRequestError,
                    &format!(":protocol {other:?} is not supported here"),
                );
            }
            None => {
                self.stats.refused.fetch_add(1, Ordering::Relaxed);
                return refuse(
                    StatusCode::NOT_IMPLEMENTED,
                    ProxyError::HttpRequestError,
                    "CONNECT without :protocol (a TCP tunnel) is not supported; use connect-udp",
                );
            }
        }
        let r = self.open(req).await;
        if !r.status().is_success() {
            self.stats.refused.fetch_add(1, Ordering::Relaxed);
        }
        r
    }

    async fn open(&self, req: Request<RecvBody>) -> Response<Body> {
        let c = &self.config;
        if let Some(want) = &c.token {
            let given = req
                .headers()
                .get(header::AUTHORIZATION)
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.strip_prefix("Bearer "));
            if !given.is_some_and(|g| constant_time_eq(g.trim().as_bytes(), want.as_bytes())) {
                let mut r = refuse(
                    StatusCode::UNAUTHORIZED,
                    ProxyError::HttpRequestDenied,
                    "this proxy needs a token: send Authorization: Bearer TOKEN",
                );
                r.headers_mut().insert(
                    header::WWW_AUTHENTICATE,
                    header::HeaderValue::from_static("Bearer"),
                );
                return r;
            }
        }
        if req.uri().scheme_str() != Some("https") {
            return refuse(
                StatusCode::BAD_REQUEST,
                ProxyError::HttpRequestError,
                "CONNECT-UDP needs :scheme https",
            );
        }
        let path = req.uri().path_and_query().map_or("", |p| p.as_str());
        let target = match c.template.target(path) {
            Ok(t) => t,
            Err(TargetError::NoMatch) => {
                return refuse(
                    StatusCode::NOT_FOUND,
                    ProxyError::HttpRequestError,
                    &format!(
                        "{path:?} does not match this proxy's template {}",
                        c.template.as_str()
                    ),
                )
            }
            Err(e) => {
                return refuse(
                    StatusCode::BAD_REQUEST,
                    ProxyError::HttpRequestError,
                    &e.to_string(),
                )
            }
        };
        let (Some(flow), Some(control)) = (
            req.extensions().get::<DatagramFlow>().cloned(),
            req.extensions().get::<StreamControl>().cloned(),
        ) else {
            return refuse(
                StatusCode::INTERNAL_SERVER_ERROR,
                ProxyError::ProxyInternalError,
                "the server was not set up for extended CONNECT",
            );
        };
        let conn = flow.shared();
        if !conn.try_reserve_flow(c.max_flows_per_connection) {
            return refuse(
                StatusCode::TOO_MANY_REQUESTS,
                ProxyError::ConnectionLimitReached,
                &format!(
                    "this connection already has {} flows, the most allowed",
                    c.max_flows_per_connection
                ),
            );
        }
        // Attached now, so datagrams sent before the response are kept (bounded).
        let stats = Arc::new(FlowStats::default());
        let handle = FlowHandle::new(c.flow, stats.clone(), conn);
        flow.attach(handle.clone());
        let refused = |r: Response<Body>| {
            handle.shut();
            r
        };
        let host_text = match &target.host {
            TargetHost::Ip(ip) => ip.to_string(),
            TargetHost::Name(n) => n.clone(),
        };
        let addrs: Vec<SocketAddr> = match &target.host {
            TargetHost::Ip(ip) => vec![SocketAddr::new(*ip, target.port)],
            TargetHost::Name(name) => {
                let lookup = tokio::net::lookup_host((name.as_str(), target.port));
                match tokio::time::timeout(c.resolve_timeout, lookup).await {
                    Err(_) => {
                        return refused(refuse(
                            StatusCode::GATEWAY_TIMEOUT,
                            ProxyError::DnsTimeout,
                            &format!("resolving {name} took over {:?}", c.resolve_timeout),
                        ))
                    }
                    Ok(Err(e)) => {
                        return refused(refuse(
                            StatusCode::BAD_GATEWAY,
                            ProxyError::DnsError,
                            &format!("cannot resolve {name}: {e}"),
                        ))
                    }
                    Ok(Ok(a)) => a.collect(),
                }
            }
        };
        // Check each resolved address; use the first allowed one, exactly as checked.
        let mut first_refusal = None;
        let chosen =
            addrs
                .iter()
                .copied()
                .find(|a| match c.egress.check(&host_text, a.ip(), a.port()) {
                    Ok(()) => true,
                    Err(r) => {
                        first_refusal.get_or_insert(r);
                        false
                    }
                });
        let Some(chosen) = chosen else {
            let details = match first_refusal {
                Some(r) => r.to_string(),
                None => format!("{host_text} has no address"),
            };
            debug!(%details, "CONNECT-UDP refused");
            return refused(refuse(
                StatusCode::FORBIDDEN,
                ProxyError::DestinationIpProhibited,
                &details,
            ));
        };
        // An IPv4-mapped address is reached as the IPv4 address it is.
        let chosen = match chosen.ip() {
            IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
                Some(v4) => SocketAddr::new(IpAddr::V4(v4), chosen.port()),
                None => chosen,
            },
            IpAddr::V4(_) => chosen,
        };
        let socket = match open_socket(chosen).await {
            Ok(s) => s,
            Err(e) => {
                return refused(refuse(
                    StatusCode::BAD_GATEWAY,
                    ProxyError::DestinationIpUnroutable,
                    &format!("cannot reach {chosen}: {e}"),
                ))
            }
        };
        let (tx, body) = Body::channel(c.capsule_queue);
        let args = FlowArgs {
            trace_id: flow.trace_id().to_string(),
            flow,
            handle: handle.clone(),
            socket: Arc::new(socket),
            target: chosen,
            contexts: c.contexts.clone(),
            request: req.into_body(),
            response: tx,
            limits: c.flow,
            stats: stats.clone(),
            control: control.clone(),
            meter: troupe_transport::ActorMeter::new(
                troupe_transport::ActorKind::Flow,
                crate::flow::FLOW_MESSAGES,
            ),
        };
        if let Err(e) = Actor::spawn_linked(None, FlowActor, args, control.actor_cell()).await {
            return refused(refuse(
                StatusCode::INTERNAL_SERVER_ERROR,
                ProxyError::ProxyInternalError,
                &format!("cannot start the flow: {e}"),
            ));
        }
        self.stats.flows_opened.fetch_add(1, Ordering::Relaxed);
        self.stats.track(&stats);
        info!(target = %chosen, "CONNECT-UDP flow open");
        let mut r = Response::new(body);
        r.headers_mut()
            .insert("capsule-protocol", header::HeaderValue::from_static("?1"));
        r
    }
}

/// A UDP socket connected to `to`, bound to the unspecified address of its family, with the
/// kernel's batching (GRO and `recvmmsg` in, GSO out, through quinn-udp, which falls back to
/// one datagram per call where the system has none of these).
async fn open_socket(to: SocketAddr) -> std::io::Result<BatchSocket> {
    let bind: SocketAddr = match to {
        SocketAddr::V4(_) => (std::net::Ipv4Addr::UNSPECIFIED, 0).into(),
        SocketAddr::V6(_) => (std::net::Ipv6Addr::UNSPECIFIED, 0).into(),
    };
    BatchSocket::bind_connected(bind, to)
}

/// Equality that takes the same time wherever the inputs differ (lengths aside).
fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}
