//! The routes, the access guard in front of them, and the sampler behind them.

use std::sync::{Arc, Mutex};
use std::time::{Instant, SystemTime};

use axum::extract::{Query, Request, State};
use axum::http::{header, HeaderValue, Method, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;
use serde::{Deserialize, Serialize};
use troupe_h3::ActionError;
use troupe_transport::diagnose::{self, TopBy, TopEntry, Warning, Warnings};
use troupe_transport::render;
use troupe_transport::EndpointSnapshot;

use crate::access::{AccessPolicy, RequestFacts};
use crate::history::History;
use crate::{AdminConfig, Target};

/// What the routes share.
pub(crate) struct Shared {
    targets: Vec<Arc<dyn Target>>,
    policy: AccessPolicy,
    config: AdminConfig,
    sampled: Mutex<Sampled>,
}

/// The sampler's results.
struct Sampled {
    history: History,
    /// One tracker per target (mailbox growth is judged across samples).
    trackers: Vec<Warnings>,
    warnings: Vec<Warning>,
    at_unix_secs: Option<f64>,
}

impl Shared {
    pub(crate) fn new(
        config: AdminConfig,
        policy: AccessPolicy,
        targets: Vec<Arc<dyn Target>>,
    ) -> Arc<Shared> {
        let trackers = targets
            .iter()
            .map(|_| Warnings::new(config.thresholds))
            .collect();
        Arc::new(Shared {
            sampled: Mutex::new(Sampled {
                history: History::new(config.top_window),
                trackers,
                warnings: Vec::new(),
                at_unix_secs: None,
            }),
            targets,
            policy,
            config,
        })
    }

    async fn snapshots(&self) -> Vec<EndpointSnapshot> {
        futures::future::join_all(self.targets.iter().map(|t| t.snapshot())).await
    }

    fn sampled(&self) -> std::sync::MutexGuard<'_, Sampled> {
        self.sampled.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// Samples every endpoint each interval: warnings are judged, and top-N's window is kept.
pub(crate) async fn sample(shared: Arc<Shared>) {
    let mut tick = tokio::time::interval(shared.config.sample_interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let snaps = shared.snapshots().await;
        let now = Instant::now();
        let mut s = shared.sampled();
        let mut warnings = Vec::new();
        for (tracker, snap) in s.trackers.iter_mut().zip(&snaps) {
            warnings.extend(tracker.observe(snap, now));
        }
        s.warnings = warnings;
        s.at_unix_secs = Some(unix_now());
        s.history.push(now, Arc::new(snaps));
    }
}

fn unix_now() -> f64 {
    SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0.0, |d| d.as_secs_f64())
}

pub(crate) fn router(shared: Arc<Shared>) -> Router {
    Router::new()
        .route("/", get(page))
        .route("/page.js", get(page_js))
        .route("/tree", get(tree_json))
        .route("/tree.txt", get(tree_text))
        .route("/metrics", get(metrics))
        .route("/warnings", get(warnings))
        .route("/top", get(top))
        .route("/actions/goaway", post(goaway))
        .route("/actions/cancel", post(cancel))
        .route("/actions/qlog", post(qlog))
        .layer(axum::middleware::from_fn_with_state(shared.clone(), guard))
        .with_state(shared)
}

/// Every request passes the access rules first; every answer is marked not to be cached.
async fn guard(State(s): State<Arc<Shared>>, req: Request, next: Next) -> Response {
    let h = req.headers();
    let text = |name: header::HeaderName| h.get(name).and_then(|v| v.to_str().ok());
    let facts = RequestFacts {
        action: req.method() == Method::POST,
        host: text(header::HOST),
        authorization: text(header::AUTHORIZATION),
        origin: text(header::ORIGIN),
        content_type: text(header::CONTENT_TYPE),
    };
    let mut resp = match s.policy.check(&facts) {
        Ok(()) => next.run(req).await,
        Err(denied) => {
            let status = StatusCode::from_u16(denied.status).unwrap_or(StatusCode::FORBIDDEN);
            let mut r = error(status, denied.reason);
            if status == StatusCode::UNAUTHORIZED {
                r.headers_mut().insert(
                    header::WWW_AUTHENTICATE,
                    HeaderValue::from_static("Bearer realm=\"troupe admin\""),
                );
            }
            r
        }
    };
    resp.headers_mut()
        .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    resp
}

fn error(status: StatusCode, message: impl Into<String>) -> Response {
    #[derive(Serialize)]
    struct Body {
        error: String,
    }
    (
        status,
        Json(Body {
            error: message.into(),
        }),
    )
        .into_response()
}

/// The page's content security policy: its own script only, no framing, requests only to
/// this endpoint.
const PAGE_CSP: &str = "default-src 'none'; script-src 'self'; style-src 'unsafe-inline'; \
                        connect-src 'self'; img-src 'self' data:; frame-ancestors 'none'";

async fn page() -> Response {
    (
        [
            (header::CONTENT_TYPE, "text/html; charset=utf-8"),
            (header::CONTENT_SECURITY_POLICY, PAGE_CSP),
        ],
        include_str!("page.html"),
    )
        .into_response()
}

async fn page_js() -> Response {
    (
        [(header::CONTENT_TYPE, "text/javascript; charset=utf-8")],
        include_str!("page.js"),
    )
        .into_response()
}

#[derive(Serialize)]
struct TreeBody {
    endpoints: Vec<EndpointSnapshot>,
}

async fn tree_json(State(s): State<Arc<Shared>>) -> Response {
    Json(TreeBody {
        endpoints: s.snapshots().await,
    })
    .into_response()
}

async fn tree_text(State(s): State<Arc<Shared>>) -> Response {
    (
        [(header::CONTENT_TYPE, "text/plain; charset=utf-8")],
        render::tree_text(&s.snapshots().await),
    )
        .into_response()
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct KindLabel {
    kind: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct FailureLabel {
    child: &'static str,
    outcome: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct EndpointLabel {
    endpoint: String,
}

type FGauge = Gauge<f64, std::sync::atomic::AtomicU64>;

/// `/metrics`: the server's counters, then what the live tree adds up to per kind of actor
/// (series per kind, never per connection or stream, so cardinality stays bounded), then
/// failures by kind of child and outcome.
async fn metrics(State(s): State<Arc<Shared>>) -> Response {
    let snaps = s.snapshots().await;
    let mut out = String::new();
    if let Some(m) = &s.config.metrics {
        m.encode_series(&mut out);
    }
    let mut reg = Registry::with_prefix("troupe");
    let fam = |reg: &mut Registry, name: &str, help: &str| {
        let f = Family::<KindLabel, FGauge>::default();
        reg.register(name, help, f.clone());
        f
    };
    let live = fam(&mut reg, "actors_live", "Live actors, by kind");
    let depth = fam(
        &mut reg,
        "actor_mailbox_depth",
        "Messages waiting in the live actors' mailboxes, by kind",
    );
    let depth_max = fam(
        &mut reg,
        "actor_mailbox_depth_max",
        "The deepest live mailbox, by kind",
    );
    let oldest = fam(
        &mut reg,
        "actor_mailbox_oldest_seconds",
        "The longest a live mailbox's head has waited, by kind",
    );
    let running = fam(
        &mut reg,
        "actor_handlers_running",
        "Handlers running now, by kind",
    );
    let longest = fam(
        &mut reg,
        "actor_handler_longest_seconds",
        "The longest-running handler now, by kind",
    );
    let busy = fam(
        &mut reg,
        "live_actor_busy_seconds",
        "Time the live actors have spent in handlers, by kind",
    );
    let handled = fam(
        &mut reg,
        "live_actor_messages_handled",
        "Messages the live actors have handled, by kind",
    );
    for t in render::kind_totals(&snaps) {
        let l = KindLabel {
            kind: t.kind.as_str(),
        };
        live.get_or_create(&l).set(t.live as f64);
        depth.get_or_create(&l).set(t.mailbox_depth as f64);
        depth_max.get_or_create(&l).set(t.mailbox_depth_max as f64);
        oldest.get_or_create(&l).set(t.oldest_message_secs);
        running.get_or_create(&l).set(t.handlers_running as f64);
        longest.get_or_create(&l).set(t.longest_handler_secs);
        busy.get_or_create(&l).set(t.busy_secs);
        handled.get_or_create(&l).set(t.messages_handled as f64);
    }
    let failures = Family::<FailureLabel, Counter>::default();
    reg.register(
        "failures",
        "Failures of supervised children, by kind of child and outcome (restarted, escalated, failed)",
        failures.clone(),
    );
    for f in render::failure_totals(&snaps) {
        failures
            .get_or_create(&FailureLabel {
                child: f.child.as_str(),
                outcome: outcome_str(f.outcome),
            })
            .inc_by(f.total);
    }
    let budget = Family::<EndpointLabel, FGauge>::default();
    reg.register(
        "receive_loop_restart_budget_used_ratio",
        "Share of each endpoint's receive-loop restart budget used in the current window",
        budget.clone(),
    );
    for e in &snaps {
        budget
            .get_or_create(&EndpointLabel {
                endpoint: e.local_addr.to_string(),
            })
            .set(e.receive_loop.budget.fraction_used());
    }
    // Writing into a String cannot fail.
    let _ = prometheus_client::encoding::text::encode_registry(&mut out, &reg);
    let _ = prometheus_client::encoding::text::encode_eof(&mut out);
    (
        [(
            header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        out,
    )
        .into_response()
}

fn outcome_str(k: troupe_transport::FailureKind) -> &'static str {
    match k {
        troupe_transport::FailureKind::Restarted => "restarted",
        troupe_transport::FailureKind::Escalated => "escalated",
        _ => "failed",
    }
}

#[derive(Serialize)]
struct WarningsBody {
    /// When the sample they come from was taken (none yet: `null`).
    sampled_at_unix_secs: Option<f64>,
    warnings: Vec<Warning>,
}

async fn warnings(State(s): State<Arc<Shared>>) -> Response {
    let g = s.sampled();
    Json(WarningsBody {
        sampled_at_unix_secs: g.at_unix_secs,
        warnings: g.warnings.clone(),
    })
    .into_response()
}

#[derive(Deserialize)]
struct TopQuery {
    by: Option<String>,
    n: Option<String>,
}

#[derive(Serialize)]
struct TopBody {
    by: TopBy,
    /// How far back the window reaches, seconds (`null`: no earlier sample; figures are
    /// cumulative since each actor started).
    window_secs: Option<f64>,
    entries: Vec<TopEntry>,
}

/// Most rows `/top` returns.
const MAX_TOP: usize = 1000;

async fn top(State(s): State<Arc<Shared>>, Query(q): Query<TopQuery>) -> Response {
    let by: TopBy = match q.by.as_deref().unwrap_or("busy").parse() {
        Ok(b) => b,
        Err(e) => return error(StatusCode::BAD_REQUEST, e),
    };
    let n = match q.n.as_deref().map(str::parse::<usize>) {
        None => 10,
        Some(Ok(n)) if n <= MAX_TOP => n,
        Some(_) => {
            return error(
                StatusCode::BAD_REQUEST,
                format!("n must be a whole number from 0 to {MAX_TOP}"),
            )
        }
    };
    let newer = s.snapshots().await;
    let now = Instant::now();
    let baseline = s
        .sampled()
        .history
        .baseline(now)
        .map(|(age, sample)| (age, sample.clone()));
    let mut entries: Vec<TopEntry> = Vec::new();
    for e in &newer {
        let older = baseline
            .as_ref()
            .and_then(|(_, b)| b.iter().find(|o| o.local_addr == e.local_addr));
        entries.extend(diagnose::top(older, e, by, n));
    }
    entries.sort_by(|a, b| {
        b.value
            .total_cmp(&a.value)
            .then_with(|| a.actor.cmp(&b.actor))
    });
    entries.truncate(n);
    Json(TopBody {
        by,
        window_secs: baseline.map(|(age, _)| age.as_secs_f64()),
        entries,
    })
    .into_response()
}

#[derive(Deserialize)]
struct ConnectionBody {
    connection: String,
}

#[derive(Deserialize)]
struct CancelBody {
    connection: String,
    stream_id: u64,
}

#[derive(Serialize)]
struct Done {
    ok: bool,
    message: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    path: Option<String>,
}

fn done(message: String, path: Option<String>) -> Response {
    Json(Done {
        ok: true,
        message,
        path,
    })
    .into_response()
}

fn action_error(e: ActionError) -> Response {
    let status = match e {
        ActionError::NoSuchConnection(_) | ActionError::NoSuchStream { .. } => {
            StatusCode::NOT_FOUND
        }
        ActionError::Gone(_) => StatusCode::GONE,
        _ => StatusCode::CONFLICT,
    };
    error(status, e.to_string())
}

/// Bodies are parsed here rather than by axum's extractor, so a bad one gets the same JSON
/// error shape as everything else.
fn parse<T: serde::de::DeserializeOwned>(body: &[u8]) -> Result<T, String> {
    serde_json::from_slice(body).map_err(|e| format!("bad body: {e}"))
}

/// Asks each endpoint in turn until one has the connection: its answer is the result.
async fn on_owner<'a, T>(
    s: &'a Shared,
    connection: &str,
    f: impl Fn(&'a dyn Target) -> crate::BoxFuture<'a, Result<T, ActionError>>,
) -> Result<T, ActionError> {
    for t in &s.targets {
        match f(t.as_ref()).await {
            Err(ActionError::NoSuchConnection(_)) => continue,
            other => return other,
        }
    }
    Err(ActionError::NoSuchConnection(connection.to_string()))
}

/// The answer to an action: what was done, or why not.
fn reply<T>(r: Result<T, ActionError>, ok: impl FnOnce(T) -> (String, Option<String>)) -> Response {
    match r {
        Ok(v) => {
            let (message, path) = ok(v);
            tracing::info!("admin: {message}");
            done(message, path)
        }
        Err(e) => action_error(e),
    }
}

async fn goaway(State(s): State<Arc<Shared>>, body: bytes::Bytes) -> Response {
    let b: ConnectionBody = match parse(&body) {
        Ok(b) => b,
        Err(e) => return error(StatusCode::BAD_REQUEST, e),
    };
    let c = b.connection.as_str();
    let r = on_owner(&s, c, |t| Box::pin(std::future::ready(t.goaway(c)))).await;
    reply(r, |()| {
        let m = format!("GOAWAY sent on connection {c}; it closes once its requests finish");
        (m, None)
    })
}

async fn cancel(State(s): State<Arc<Shared>>, body: bytes::Bytes) -> Response {
    let b: CancelBody = match parse(&body) {
        Ok(b) => b,
        Err(e) => return error(StatusCode::BAD_REQUEST, e),
    };
    let (c, id) = (b.connection.as_str(), b.stream_id);
    let r = on_owner(&s, c, |t| t.cancel_stream(c, id)).await;
    reply(r, |()| {
        let m = format!("stream {id} on connection {c} cancelled (H3_REQUEST_CANCELLED)");
        (m, None)
    })
}

async fn qlog(State(s): State<Arc<Shared>>, body: bytes::Bytes) -> Response {
    let b: ConnectionBody = match parse(&body) {
        Ok(b) => b,
        Err(e) => return error(StatusCode::BAD_REQUEST, e),
    };
    let dir = s.config.qlog_dir.clone();
    let made = {
        let dir = dir.clone();
        tokio::task::spawn_blocking(move || std::fs::create_dir_all(&dir)).await
    };
    if !matches!(made, Ok(Ok(()))) {
        return error(
            StatusCode::INTERNAL_SERVER_ERROR,
            format!("cannot create the qlog directory {}", dir.display()),
        );
    }
    let c = b.connection.as_str();
    let r = on_owner(&s, c, |t| t.start_qlog(c, &dir)).await;
    reply(r, |path| {
        let m = format!("qlog of connection {c} started");
        (m, Some(path.display().to_string()))
    })
}
