//! The admin endpoint, over real TCP, in front of a real HTTP/3 server with real clients:
//! the tree (JSON and text) during a live stream, the actions (cancel one stream, qlog one
//! connection, GOAWAY one connection), warnings and top-N for a busy handler, the access rules
//! (refusal at start, token, Host, cross-site posts), and the page in headless Chromium.

mod common;

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use common::*;
use http::{header, HeaderMap, HeaderValue, Method, StatusCode};
use troupe::admin::{AccessError, Admin, AdminClient, AdminConfig, AdminError};
use troupe::h3::{Body, BodyError, RecvBody, Server, ServerConfig};

/// A server whose `/held` requests wait for a permit of the returned gate; others answer at
/// once.
async fn held_server() -> (Arc<Server>, Arc<tokio::sync::Semaphore>) {
    init_tracing();
    let gate = Arc::new(tokio::sync::Semaphore::new(0));
    let g = gate.clone();
    let server = Server::bind(
        loopback(),
        ServerConfig::default(),
        move |req: http::Request<RecvBody>| {
            let g = g.clone();
            async move {
                if req.uri().path() == "/held" {
                    g.acquire().await.unwrap().forget();
                }
                http::Response::new(Body::from("done"))
            }
        },
    )
    .await
    .unwrap();
    (Arc::new(server), gate)
}

async fn admin_for(server: &Arc<Server>, tweak: impl FnOnce(&mut AdminConfig)) -> Admin {
    let mut c = AdminConfig::new(loopback_tcp());
    c.sample_interval = Duration::from_millis(200);
    tweak(&mut c);
    Admin::serve_servers(c, std::slice::from_ref(server))
        .await
        .expect("admin endpoint starts")
}

fn json(text: &str) -> serde_json::Value {
    serde_json::from_str(text).unwrap_or_else(|e| panic!("not JSON ({e}): {text}"))
}

/// Polls `/warnings` until one of `kind` is listed, and returns it; panics with the last list
/// after `deadline`.
async fn first_warning(ac: &AdminClient, kind: &str, deadline: Duration) -> serde_json::Value {
    let end = std::time::Instant::now() + deadline;
    loop {
        let w = json(&ac.get("/warnings").await.unwrap());
        let hit = w["warnings"]
            .as_array()
            .unwrap()
            .iter()
            .find(|w| w["kind"] == kind)
            .cloned();
        if let Some(hit) = hit {
            return hit;
        }
        assert!(
            std::time::Instant::now() < end,
            "no {kind} warning within {deadline:?}: {w}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Sends `/held` and waits until the server routes it; returns the task awaiting its response.
async fn hold_one(
    server: &Server,
    client: &troupe::h3::Client,
) -> tokio::task::JoinHandle<Result<http::Response<RecvBody>, troupe::h3::RequestError>> {
    let req = get(server, "/held");
    let c = client.clone();
    let task = tokio::spawn(async move { c.send(req).await });
    eventually(
        Duration::from_secs(5),
        "the held request is routed",
        || async { routed_count(server).await == 1 },
    )
    .await;
    task
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_tree_shows_a_live_stream_and_actions_reach_one_connection_and_one_stream() {
    let (server, gate) = held_server().await;
    let qlog_dir = std::env::temp_dir().join(format!("troupe-admin-qlog-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&qlog_dir);
    let admin = admin_for(&server, |c| c.qlog_dir = qlog_dir.clone()).await;
    let ac = AdminClient::new(admin.local_addr(), None);
    let (_ep, client) = connect(&server).await;
    let held = hold_one(&server, &client).await;

    // JSON: the connection and its stream, with the request's method and path.
    let tree = json(&ac.get("/tree").await.unwrap());
    let eps = tree["endpoints"].as_array().unwrap();
    assert_eq!(eps.len(), 1);
    assert_eq!(eps[0]["local_addr"], server.local_addr().to_string());
    let conns = eps[0]["connections"].as_array().unwrap();
    assert_eq!(conns.len(), 1, "{tree}");
    assert_eq!(conns[0]["worker"], 0, "{tree}");
    let conn = &conns[0];
    assert_eq!(conn["stage"], "established");
    assert_eq!(conn["alpn"], "h3");
    let trace_id = conn["trace_id"].as_str().unwrap().to_string();
    let streams = conn["streams"].as_array().unwrap();
    assert_eq!(streams.len(), 1, "{tree}");
    assert_eq!(streams[0]["stream_id"], 0);
    assert_eq!(streams[0]["method"], "GET");
    assert_eq!(streams[0]["path"], "/held");
    assert_eq!(streams[0]["actor"]["kind"], "stream");

    // Text: one line per node, drawn like pstree.
    let text = ac.get("/tree.txt").await.unwrap();
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(lines.len(), 3, "{text}");
    assert!(lines[0].starts_with(&format!("endpoint {} server", server.local_addr())));
    assert!(
        lines[1].starts_with(&format!("└─ connection {trace_id}")),
        "{text}"
    );
    // One worker (the library's default): worker 0 runs every connection.
    assert!(lines[1].contains(" worker 0 "), "{text}");
    assert!(lines[2].starts_with("   └─ stream 0 GET /held"), "{text}");

    // qlog on for this live connection: a file appears and fills as it runs.
    let r = json(
        &ac.post_json(
            "/actions/qlog",
            &serde_json::json!({ "connection": trace_id }),
        )
        .await
        .unwrap(),
    );
    let path = std::path::PathBuf::from(r["path"].as_str().unwrap());
    assert!(path.starts_with(&qlog_dir), "{path:?}");
    // A second request names the first file instead of replacing it.
    let again = ac
        .post_json(
            "/actions/qlog",
            &serde_json::json!({ "connection": trace_id }),
        )
        .await
        .unwrap_err()
        .to_string();
    assert!(
        again.contains("409") && again.contains("already"),
        "{again}"
    );

    // Cancel the held stream: the client sees H3_REQUEST_CANCELLED; the connection lives on.
    ac.post_json(
        "/actions/cancel",
        &serde_json::json!({ "connection": trace_id, "stream_id": 0 }),
    )
    .await
    .unwrap();
    let cancelled = troupe::h3::codes::H3_REQUEST_CANCELLED;
    match held.await.unwrap() {
        Ok(resp) => assert_eq!(
            resp.into_body().collect().await.unwrap_err(),
            BodyError::Reset(cancelled)
        ),
        Err(e) => assert_eq!(e, troupe::h3::RequestError::StreamReset(cancelled)),
    }
    eventually(
        Duration::from_secs(5),
        "the cancelled stream's actor stops",
        || async { server.endpoint().serving_stream_actors().await == 0 },
    )
    .await;
    let r = client.send(get(&server, "/")).await.unwrap();
    assert_eq!(&r.into_body().collect().await.unwrap()[..], b"done");
    // A stream that is not live, a connection that does not exist: 404, saying which.
    let e = ac
        .post_json(
            "/actions/cancel",
            &serde_json::json!({ "connection": trace_id, "stream_id": 0 }),
        )
        .await
        .unwrap_err()
        .to_string();
    assert!(e.contains("404") && e.contains("no live stream 0"), "{e}");
    let e = ac
        .post_json(
            "/actions/goaway",
            &serde_json::json!({ "connection": "nope" }),
        )
        .await
        .unwrap_err()
        .to_string();
    assert!(e.contains("404") && e.contains("\\\"nope\\\""), "{e}");

    // GOAWAY this connection: it closes gracefully (H3_NO_ERROR); the server stays up.
    ac.post_json(
        "/actions/goaway",
        &serde_json::json!({ "connection": trace_id }),
    )
    .await
    .unwrap();
    let reason = tokio::time::timeout(Duration::from_secs(5), client.closed())
        .await
        .expect("the connection closes after GOAWAY");
    assert!(
        matches!(
            reason,
            troupe::transport::CloseReason::Peer {
                code: troupe::h3::codes::H3_NO_ERROR,
                ..
            }
        ),
        "closed by the server with H3_NO_ERROR: {reason:?}"
    );
    eventually(Duration::from_secs(5), "no connection left", || async {
        server.endpoint().connection_count() == 0
    })
    .await;
    let tree = json(&ac.get("/tree").await.unwrap());
    assert!(tree["endpoints"][0]["connections"]
        .as_array()
        .unwrap()
        .is_empty());
    // The qlog was written while the connection ran and ends with its close.
    let qlog = std::fs::read_to_string(&path).unwrap();
    assert!(qlog.contains("(started live)"), "{qlog:.300}");
    for event in [
        "quic:packet_sent",
        "quic:packet_received",
        "quic:connection_closed",
    ] {
        assert!(qlog.contains(event), "{event} missing: {qlog:.300}");
    }
    let (_ep2, client2) = connect(&server).await;
    let r = client2.send(get(&server, "/")).await.unwrap();
    assert_eq!(&r.into_body().collect().await.unwrap()[..], b"done");
    gate.close();
    admin.shutdown().await;
    let _ = std::fs::remove_dir_all(&qlog_dir);
}

/// A handler that blocks its stream actor for 2 s: the admin endpoint's /warnings names it and
/// it heads /top?by=busy; `/metrics` counts the running handler. The operator's queries come
/// from a runtime of their own, as from another process: the blocked thread can stall this
/// runtime's sockets and timers, and the admin endpoint, on its own thread, must not stall.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_busy_handler_is_warned_about_and_tops_busy_over_http() {
    let server = Arc::new(busy_server().await);
    let admin = admin_for(&server, |_| {}).await;
    let admin_addr = admin.local_addr();
    let (_ep, client) = connect(&server).await;
    ordinary_requests(&server, &client, 5).await;
    let busy = {
        let client = client.clone();
        let req = get(&server, "/busy");
        tokio::spawn(async move { client.send(req).await.unwrap().into_body().collect().await })
    };
    from_another_runtime(move || async move {
        let ac = AdminClient::new(admin_addr, None);
        let warning = first_warning(&ac, "handler_busy", Duration::from_secs(10)).await;
        assert_eq!(warning["severity"], "warning");
        assert!(
            warning["message"]
                .as_str()
                .unwrap()
                .contains("stream 0 on connection")
                || warning["message"].as_str().unwrap().contains("stream "),
            "{warning}"
        );
        let top = json(&ac.get("/top?by=busy&n=10").await.unwrap());
        assert_eq!(top["by"], "busy");
        let first = &top["entries"][0];
        assert_eq!(first["actor"], warning["actor"], "{top}");
        assert_eq!(first["kind"], "stream");
        assert!(first["value"].as_f64().unwrap() >= 1.0, "{top}");
        let metrics = ac.get("/metrics").await.unwrap();
        let running = metrics
            .lines()
            .find(|l| l.starts_with(r#"troupe_actor_handlers_running{kind="stream"}"#))
            .unwrap_or_else(|| panic!("{metrics}"));
        assert!(!running.ends_with(" 0.0"), "{running}");
        // Bad queries say what is wrong.
        let e = ac.get("/top?by=cpu").await.unwrap_err().to_string();
        assert!(
            e.contains("400") && e.contains("busy, mailbox, bytes or lost"),
            "{e}"
        );
        let e = ac.get("/top?n=lots").await.unwrap_err().to_string();
        assert!(e.contains("400") && e.contains("whole number"), "{e}");
    })
    .await;
    assert_eq!(&busy.await.unwrap().unwrap()[..], b"done");
    admin.shutdown().await;
}

/// The admin endpoint runs on a thread of its own. A handler blocks the server's whole runtime
/// (single-threaded here, so nothing else of it can run) until the operator has looked;
/// meanwhile the endpoint answers: its tree lists the stuck connection, by its trace id, as not
/// answering, and `/warnings` says so. Had the endpoint run on the server's runtime, nothing
/// would have answered while the handler blocked.
#[tokio::test(flavor = "current_thread")]
async fn the_admin_endpoint_answers_while_a_handler_blocks_the_servers_runtime() {
    init_tracing();
    let (entered_tx, entered) = tokio::sync::oneshot::channel::<()>();
    let (release, released) = std::sync::mpsc::channel::<()>();
    let gate = Arc::new(std::sync::Mutex::new((Some(entered_tx), released)));
    let server = Server::bind(
        loopback(),
        ServerConfig::default(),
        move |req: http::Request<RecvBody>| {
            let gate = gate.clone();
            async move {
                if req.uri().path() == "/block" {
                    let mut g = gate.lock().unwrap();
                    if let Some(tx) = g.0.take() {
                        let _ = tx.send(());
                    }
                    // Deliberately blocking the runtime's only thread, until released (or
                    // 10 s, so a failing test still ends).
                    let _ = g.1.recv_timeout(Duration::from_secs(10));
                }
                http::Response::new(Body::from("done"))
            }
        },
    )
    .await
    .unwrap();
    let server = Arc::new(server);
    let admin = admin_for(&server, |_| {}).await;
    let admin_addr = admin.local_addr();
    let (_ep, client) = connect(&server).await;
    ordinary_requests(&server, &client, 1).await;
    let trace_id = server_connection_infos(&server).await[0].trace_id.clone();
    let blocked = {
        let req = get(&server, "/block");
        let client = client.clone();
        tokio::spawn(async move { client.send(req).await.unwrap().into_body().collect().await })
    };
    let (tree, warning) = from_another_runtime(move || async move {
        entered.await.expect("the blocking handler starts");
        let ac = AdminClient::new(admin_addr, None);
        let tree = json(&ac.get("/tree").await.unwrap());
        // The sampler's next snapshot meets the stuck connection too.
        let warning = first_warning(&ac, "connection_unanswered", Duration::from_secs(8)).await;
        let _ = release.send(());
        (tree, warning)
    })
    .await;
    let conns = tree["endpoints"][0]["connections"].as_array().unwrap();
    assert_eq!(conns.len(), 1, "{tree}");
    assert_eq!(conns[0]["answered"], false, "{tree}");
    assert_eq!(conns[0]["trace_id"], trace_id.as_str(), "{tree}");
    assert_eq!(warning["severity"], "warning");
    let message = warning["message"].as_str().unwrap();
    assert!(
        message.contains(&trace_id) && message.contains("spawn_blocking"),
        "{warning}"
    );
    // The handler returns and the connection answers again.
    assert_eq!(&blocked.await.unwrap().unwrap()[..], b"done");
    let tree = json(
        &AdminClient::new(admin_addr, None)
            .get("/tree")
            .await
            .unwrap(),
    );
    assert_eq!(
        tree["endpoints"][0]["connections"][0]["answered"], true,
        "{tree}"
    );
    admin.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_public_bind_without_a_token_is_refused_before_listening() {
    let (server, _gate) = held_server().await;
    for addr in ["0.0.0.0:0", "[::]:0"] {
        let c = AdminConfig::new(addr.parse().unwrap());
        let e = Admin::serve_servers(c, std::slice::from_ref(&server))
            .await
            .err()
            .expect("refused");
        assert!(
            matches!(e, AdminError::Access(AccessError::PublicWithoutToken(_))),
            "{e}"
        );
        assert!(e.to_string().contains("--admin-token"), "{e}");
    }
    let mut c = AdminConfig::new(loopback_tcp());
    c.token = Some(String::new());
    assert!(matches!(
        Admin::serve_servers(c, std::slice::from_ref(&server)).await,
        Err(AdminError::Access(AccessError::EmptyToken))
    ));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn token_host_and_cross_site_rules_hold_on_every_route() {
    let (server, _gate) = held_server().await;
    // A token given: the endpoint may listen on every address (loopback still works).
    let mut c = AdminConfig::new("0.0.0.0:0".parse().unwrap());
    c.token = Some("s3cret-token".into());
    c.sample_interval = Duration::from_millis(200);
    let admin = Admin::serve_servers(c, std::slice::from_ref(&server))
        .await
        .unwrap();
    let at = std::net::SocketAddr::from(([127, 0, 0, 1], admin.local_addr().port()));
    let none = AdminClient::new(at, None);
    let wrong = AdminClient::new(at, Some("guess".into()));
    let right = AdminClient::new(at, Some("s3cret-token".into()));
    let routes = [
        "/",
        "/page.js",
        "/tree",
        "/tree.txt",
        "/metrics",
        "/warnings",
        "/top",
    ];
    for path in routes {
        for c in [&none, &wrong] {
            let a = c
                .send(Method::GET, path, HeaderMap::new(), Bytes::new())
                .await
                .unwrap();
            assert_eq!(a.status, StatusCode::UNAUTHORIZED, "{path}");
            assert!(a.headers.contains_key(header::WWW_AUTHENTICATE));
            assert!(a.body.contains("Bearer"), "{}", a.body);
        }
        let a = right
            .send(Method::GET, path, HeaderMap::new(), Bytes::new())
            .await
            .unwrap();
        assert_eq!(a.status, StatusCode::OK, "{path}: {}", a.body);
        assert_eq!(a.headers[header::CACHE_CONTROL], "no-store");
        // DNS rebinding: the right token, but a name the endpoint does not answer to.
        let mut h = HeaderMap::new();
        h.insert(header::HOST, HeaderValue::from_static("attacker.example"));
        let a = right
            .send(Method::GET, path, h, Bytes::new())
            .await
            .unwrap();
        assert_eq!(a.status, StatusCode::FORBIDDEN, "{path}");
    }
    // Actions: POST only, JSON only, same origin only.
    let a = right
        .send(
            Method::GET,
            "/actions/goaway",
            HeaderMap::new(),
            Bytes::new(),
        )
        .await
        .unwrap();
    assert_eq!(a.status, StatusCode::METHOD_NOT_ALLOWED);
    let mut form = HeaderMap::new();
    form.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/x-www-form-urlencoded"),
    );
    let a = right
        .send(
            Method::POST,
            "/actions/goaway",
            form,
            Bytes::from("connection=x"),
        )
        .await
        .unwrap();
    assert_eq!(a.status, StatusCode::UNSUPPORTED_MEDIA_TYPE, "{}", a.body);
    let mut cross = HeaderMap::new();
    cross.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    cross.insert(
        header::ORIGIN,
        HeaderValue::from_static("https://attacker.example"),
    );
    let a = right
        .send(
            Method::POST,
            "/actions/goaway",
            cross,
            Bytes::from(r#"{"connection":"x"}"#),
        )
        .await
        .unwrap();
    assert_eq!(a.status, StatusCode::FORBIDDEN, "{}", a.body);
    let mut bad = HeaderMap::new();
    bad.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    let a = right
        .send(Method::POST, "/actions/cancel", bad, Bytes::from("{"))
        .await
        .unwrap();
    assert_eq!(a.status, StatusCode::BAD_REQUEST);
    assert!(a.body.contains("bad body"), "{}", a.body);
    admin.shutdown().await;

    // Without a token on loopback: no Authorization needed, the Host rule still applies.
    let admin = admin_for(&server, |_| {}).await;
    let open = AdminClient::new(admin.local_addr(), None);
    assert!(open.get("/tree").await.is_ok());
    let mut h = HeaderMap::new();
    h.insert(header::HOST, HeaderValue::from_static("localhost:9901"));
    let a = open
        .send(Method::GET, "/tree", h, Bytes::new())
        .await
        .unwrap();
    assert_eq!(a.status, StatusCode::OK);
    let mut h = HeaderMap::new();
    h.insert(
        header::HOST,
        HeaderValue::from_static("rebind.attacker.example:9901"),
    );
    let a = open
        .send(Method::GET, "/tree", h, Bytes::new())
        .await
        .unwrap();
    assert_eq!(a.status, StatusCode::FORBIDDEN);
    admin.shutdown().await;
}

/// Where Debian's Chromium is, if installed (`cargo xtask test` installs it).
fn chromium() -> Option<std::path::PathBuf> {
    let from_env = std::env::var_os("TROUPE_CHROMIUM").map(std::path::PathBuf::from);
    from_env
        .into_iter()
        .chain(["/usr/bin/chromium", "/usr/bin/chromium-browser"].map(Into::into))
        .find(|p| p.exists())
}

/// Runs headless Chromium on `url` with `args` (its own empty profile, no network but
/// loopback) and returns its stdout.
fn run_chromium(bin: &std::path::Path, url: &str, args: &[&str]) -> String {
    let profile = tempdir("chromium-profile");
    let out = std::process::Command::new(bin)
        .args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-quic",
            "--no-first-run",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--disable-dev-shm-usage",
            "--hide-scrollbars",
            "--virtual-time-budget=4000",
        ])
        .arg(format!("--user-data-dir={}", profile.display()))
        .args(args)
        .arg(url)
        .output()
        .expect("run chromium");
    let _ = std::fs::remove_dir_all(&profile);
    assert!(
        out.status.success(),
        "chromium failed: {}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn tempdir(what: &str) -> std::path::PathBuf {
    let d = std::env::temp_dir().join(format!(
        "troupe-{what}-{}-{}",
        std::process::id(),
        rand_suffix()
    ));
    std::fs::create_dir_all(&d).unwrap();
    d
}

fn rand_suffix() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .subsec_nanos() as u64
}

/// The admin page in headless Chromium while a stream is live: the drawn page names the
/// connection and its stream; a screenshot is kept under `target/`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_admin_page_in_headless_chromium_shows_the_live_connection_and_stream() {
    let Some(bin) = chromium() else {
        assert!(
            std::env::var_os("TROUPE_REQUIRE_CHROMIUM").is_none(),
            "Chromium is required here: install Debian's chromium (cargo xtask test does)"
        );
        eprintln!("skipped: no Chromium (cargo xtask test installs it)");
        return;
    };
    let (server, gate) = held_server().await;
    let admin = admin_for(&server, |_| {}).await;
    let (_ep, client) = connect(&server).await;
    let held = hold_one(&server, &client).await;
    let trace_id = server.snapshot().await.connections[0].trace_id.clone();
    let url = format!("http://{}/", admin.local_addr());

    let dom = {
        let (bin, url) = (bin.clone(), url.clone());
        tokio::task::spawn_blocking(move || run_chromium(&bin, &url, &["--dump-dom"]))
            .await
            .unwrap()
    };
    assert!(
        dom.contains(&format!("connection {trace_id}")),
        "the page names the connection:\n{dom}"
    );
    assert!(
        dom.contains("stream 0"),
        "the page lists the stream:\n{dom}"
    );
    assert!(dom.contains("/held"), "the page shows the path:\n{dom}");
    assert!(
        dom.contains("worker 0"),
        "the page shows the worker:\n{dom}"
    );
    assert!(dom.contains("GOAWAY") && dom.contains("cancel"), "{dom}");
    assert!(
        dom.contains("1 connection "),
        "the status line counts it:\n{dom}"
    );

    let shot = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("target")
        .join("admin-page.png");
    let _ = std::fs::remove_file(&shot);
    {
        let (bin, url, shot) = (bin.clone(), url.clone(), shot.clone());
        tokio::task::spawn_blocking(move || {
            run_chromium(
                &bin,
                &url,
                &[
                    &format!("--screenshot={}", shot.display()),
                    "--window-size=1400,700",
                ],
            )
        })
        .await
        .unwrap();
    }
    let png = std::fs::read(&shot).expect("a screenshot was written");
    assert!(png.starts_with(b"\x89PNG"), "a PNG");
    assert!(
        png.len() > 10_000,
        "a page, not a blank: {} bytes",
        png.len()
    );
    eprintln!("screenshot: {}", shot.display());

    gate.add_permits(1);
    let r = held.await.unwrap().unwrap();
    assert_eq!(&r.into_body().collect().await.unwrap()[..], b"done");
    admin.shutdown().await;
}
