//! troupe vs tokio-quiche, side by side in one run (`cargo bench --bench h3_vs_tokio_quiche`, or
//! `cargo xtask bench`).
//!
//! Both servers are release binaries of this workspace serving the same routes: `troupe serve`
//! and `tq-serve` (tokio-quiche 0.20, current-thread runtime). Each is pinned to core 0 with
//! `taskset`; this load generator (troupe's client) is pinned to core 1. For each server:
//!
//! 1. requests/s for `GET /bytes/1024` over `CONNS` connections x `STREAMS` concurrent streams;
//! 2. MB/s for one `GET /bytes/DOWNLOAD` on one connection.
//!
//! Server CPU time is read from /proc, so the figure that matters (server CPU per request) does
//! not depend on the client's speed; the client's own CPU use is printed to show whether it was
//! the bottleneck (near 100% of its core means it was). Ratios are troupe / tokio-quiche.
//!
//! The load generator is ngtcp2's client (`gtlsclient`, Debian package `ngtcp2-client`, which
//! `cargo xtask bench` installs): C, a few microseconds per request, so it is not the bottleneck
//! (its CPU share is printed). Without it, troupe's own client is used, which costs about as
//! much per request as a server and then limits requests/s (server CPU per request stays valid).
//!
//! Every server is measured `BENCH_ROUNDS` times (default 3), the servers alternating, and a
//! table gives each figure's median and min-max over the rounds, and each ratio to
//! tokio-quiche (the median of the per-round ratios); it is also written as JSON to
//! `target/bench/h3_vs_tokio_quiche.json`.
//!
//! Environment: `BENCH_SECS` (default 5) per request phase with troupe's client,
//! `BENCH_REQUESTS` (default 25000) per connection with gtlsclient, `BENCH_DOWNLOAD_MB`
//! (default 512), `BENCH_TROUPE_BASELINE` (a `troupe` binary built from an earlier commit: it
//! is measured too, in the same run, to show a change's effect before and after).

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Command, Stdio};

#[path = "support/procs.rs"]
mod procs;
use procs::{build_release_binaries, can_pin, clock_ticks, cpu_secs, pin_self_to_core_1, start};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use troupe::h3::{Body, Client, ClientEndpoint, H3Settings};

#[path = "support/stats.rs"]
mod stats;
use stats::spread;
use troupe::transport::{QuicSettings, TlsConfig, Verify};

const CONNS: usize = 4;
const STREAMS: usize = 25;

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn have_gtlsclient() -> bool {
    Command::new("gtlsclient")
        .arg("--help")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok()
}

/// Runs `n` gtlsclient processes at once (one connection each), pinned to core 1 when `pin`.
fn gtls(addr: SocketAddr, path: &str, requests: usize, conns: usize, pin: bool) -> (f64, f64) {
    let tck = clock_ticks();
    let c0 = cpu_secs("self", true, tck);
    let t0 = Instant::now();
    let uri = format!("https://localhost:{}{path}", addr.port());
    let mut kids = Vec::new();
    for _ in 0..conns {
        let mut cmd = if pin {
            let mut c = Command::new("taskset");
            c.args(["-c", "1", "gtlsclient"]);
            c
        } else {
            Command::new("gtlsclient")
        };
        cmd.args([
            "-q",
            "--no-quic-dump",
            "--no-http-dump",
            "--exit-on-all-streams-close",
            "--timeout=10s",
        ])
        .arg(format!("--nstreams={requests}"))
        .arg(addr.ip().to_string())
        .arg(addr.port().to_string())
        .arg(&uri)
        .stdout(Stdio::null())
        .stderr(Stdio::null());
        kids.push(cmd.spawn().expect("start gtlsclient"));
    }
    for mut k in kids {
        let st = k.wait().unwrap();
        assert!(st.success(), "gtlsclient failed: {st}");
    }
    (t0.elapsed().as_secs_f64(), cpu_secs("self", true, tck) - c0)
}

fn measure_gtls(
    addr: SocketAddr,
    pid: &str,
    tck: f64,
    requests: usize,
    download: u64,
    pin: bool,
) -> Figures {
    gtls(addr, "/bytes/1024", 200, CONNS, pin); // warm-up
    let s0 = cpu_secs(pid, false, tck);
    let (wall, client_cpu) = gtls(addr, "/bytes/1024", requests, CONNS, pin);
    let s_cpu = cpu_secs(pid, false, tck) - s0;
    let n = (requests * CONNS) as f64;
    let d0 = cpu_secs(pid, false, tck);
    let (dl_wall, dl_client) = gtls(addr, &format!("/bytes/{download}"), 1, 1, pin);
    let dl_cpu = cpu_secs(pid, false, tck) - d0;
    eprintln!(
        "    (gtlsclient CPU: {:.0}% of a core during requests, {:.0}% during the download)",
        client_cpu / wall * 100.0,
        dl_client / dl_wall * 100.0
    );
    Figures {
        rps: n / wall,
        server_us_per_req: s_cpu / n * 1e6,
        client_cpu_share: client_cpu / wall,
        mbps: download as f64 / dl_wall / 1e6,
        server_cpu_share_dl: dl_cpu / dl_wall,
    }
}

struct Figures {
    rps: f64,
    server_us_per_req: f64,
    client_cpu_share: f64,
    mbps: f64,
    server_cpu_share_dl: f64,
}

async fn measure(addr: SocketAddr, pid: &str, tck: f64, secs: u64, download: u64) -> Figures {
    let tls = TlsConfig {
        identity: None,
        verify: Verify::Insecure,
    };
    let ep = ClientEndpoint::bind(
        "127.0.0.1:0".parse().unwrap(),
        QuicSettings::default(),
        tls,
        H3Settings::default(),
    )
    .await
    .unwrap();
    let mut clients: Vec<Client> = Vec::new();
    for _ in 0..CONNS {
        clients.push(ep.connect(addr, "localhost").await.expect("connect"));
    }
    let url = format!("https://localhost:{}/bytes/1024", addr.port());
    let run = |dur: Duration| {
        let count = Arc::new(AtomicU64::new(0));
        let end = Instant::now() + dur;
        let mut tasks = Vec::new();
        for c in &clients {
            for _ in 0..STREAMS {
                let c = c.clone();
                let url = url.clone();
                let count = count.clone();
                tasks.push(tokio::spawn(async move {
                    while Instant::now() < end {
                        let req = http::Request::get(&url).body(Body::empty()).unwrap();
                        let resp = c.send(req).await.expect("request");
                        let body = resp.into_body().collect().await.expect("body");
                        assert_eq!(body.len(), 1024);
                        count.fetch_add(1, Ordering::Relaxed);
                    }
                }));
            }
        }
        async move {
            for t in tasks {
                t.await.unwrap();
            }
            count.load(Ordering::Relaxed)
        }
    };
    run(Duration::from_secs(1)).await; // warm-up
    let s_cpu0 = cpu_secs(pid, false, tck);
    let c_cpu0 = cpu_secs("self", false, tck);
    let t0 = Instant::now();
    let n = run(Duration::from_secs(secs)).await;
    let wall = t0.elapsed().as_secs_f64();
    let s_cpu = cpu_secs(pid, false, tck) - s_cpu0;
    let c_cpu = cpu_secs("self", false, tck) - c_cpu0;

    let dl_url = format!("https://localhost:{}/bytes/{download}", addr.port());
    let s0 = cpu_secs(pid, false, tck);
    let t0 = Instant::now();
    let resp = clients[0]
        .send(http::Request::get(&dl_url).body(Body::empty()).unwrap())
        .await
        .unwrap();
    let mut body = resp.into_body();
    let mut got = 0u64;
    while let Some(c) = body.chunk().await {
        got += c.unwrap().len() as u64;
    }
    assert_eq!(got, download);
    let dl_wall = t0.elapsed().as_secs_f64();
    let dl_cpu = cpu_secs(pid, false, tck) - s0;
    for c in &clients {
        c.close();
    }
    Figures {
        rps: n as f64 / wall,
        server_us_per_req: s_cpu / n as f64 * 1e6,
        client_cpu_share: c_cpu / wall,
        mbps: download as f64 / dl_wall / 1e6,
        server_cpu_share_dl: dl_cpu / dl_wall,
    }
}

fn main() {
    // `cargo bench` passes --bench; a plain `cargo test --benches` run passes nothing we need.
    if std::env::args().any(|a| a == "--list") {
        return;
    }
    let secs: u64 = std::env::var("BENCH_SECS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(5);
    let mb: u64 = std::env::var("BENCH_DOWNLOAD_MB")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(512);
    let download = mb << 20;

    let release = build_release_binaries(&root());
    let troupe_bin = release.join("troupe");
    let tq_bin = release.join("tq-serve");

    let pin = can_pin();
    if pin {
        pin_self_to_core_1();
    } else {
        eprintln!("note: taskset or a second core is missing; server and client are not pinned");
    }
    let tck = clock_ticks();
    let use_gtls = have_gtlsclient();
    let requests: usize = std::env::var("BENCH_REQUESTS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(25_000);
    println!(
        "load generator: {}; {CONNS} connections, GET /bytes/1024; then one GET of {mb} MiB",
        if use_gtls {
            "ngtcp2 gtlsclient"
        } else {
            "troupe client (gtlsclient not installed)"
        }
    );
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .unwrap();

    // One thread, like tq-serve's current-thread runtime: like is compared with like (both
    // servers are pinned to one core anyway; a one-worker multi-thread runtime costs troupe
    // about 1 us more per request in cross-thread wake-ups).
    let troupe_args = vec![
        "serve",
        "--listen",
        "127.0.0.1:0",
        "--no-retry",
        "--workers",
        "0",
    ];
    let baseline = std::env::var_os("BENCH_TROUPE_BASELINE").map(PathBuf::from);
    let mut servers = vec![
        (
            "troupe",
            troupe_bin.clone(),
            troupe_args.clone(),
            "troupe serving HTTP/3 on ",
        ),
        (
            "tokio-quiche",
            tq_bin.clone(),
            vec!["--listen", "127.0.0.1:0"],
            "tq-serve listening on ",
        ),
    ];
    if let Some(b) = &baseline {
        servers.push((
            "troupe-before",
            b.clone(),
            troupe_args,
            "troupe serving HTTP/3 on ",
        ));
    }
    // Rounds alternate the servers (troupe, tokio-quiche, troupe, ...) so a slow spell of this
    // noisy machine lands on both; each figure is reported as the median over rounds with its
    // min-max.
    let rounds: usize = std::env::var("BENCH_ROUNDS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(3)
        .max(1);
    let mut results: Vec<Vec<Figures>> = servers.iter().map(|_| Vec::new()).collect();
    for round in 1..=rounds {
        println!("round {round} of {rounds}");
        for (i, (name, bin, args, ready)) in servers.iter().enumerate() {
            let (proc_, addr) = start(bin, args, ready, pin);
            let pid = proc_.0.id().to_string();
            let f = if use_gtls {
                measure_gtls(addr, &pid, tck, requests, download, pin)
            } else {
                rt.block_on(measure(addr, &pid, tck, secs, download))
            };
            println!(
                "{name:>13}: {:>8.0} req/s  {:>6.1} us server CPU/req  (client CPU {:>3.0}% of a \
                 core)  |  download {:>7.1} MB/s (server CPU {:>3.0}%, {:.2} s per GB)",
                f.rps,
                f.server_us_per_req,
                f.client_cpu_share * 100.0,
                f.mbps,
                f.server_cpu_share_dl * 100.0,
                f.s_per_gb()
            );
            results[i].push(f);
            drop(proc_);
        }
    }
    let names: Vec<&str> = servers.iter().map(|s| s.0).collect();
    let table = summary(&names, &results);
    print!("{}", table.text);
    let out = std::env::var("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|_| root().join("target"))
        .join("bench");
    let _ = std::fs::create_dir_all(&out);
    let path = out.join("h3_vs_tokio_quiche.json");
    match std::fs::write(&path, serde_json::to_string_pretty(&table.json).unwrap()) {
        Ok(()) => println!("written to {}", path.display()),
        Err(e) => eprintln!("cannot write {}: {e}", path.display()),
    }
}

impl Figures {
    /// Server CPU seconds per GB downloaded.
    fn s_per_gb(&self) -> f64 {
        self.server_cpu_share_dl / self.mbps * 1000.0
    }
}

struct Table {
    text: String,
    json: serde_json::Value,
}

/// One row per figure: each server's median (min-max over rounds), and each other server's
/// ratio to tokio-quiche (the median of the per-round ratios, with their range: rounds run
/// back to back, so a round's ratio compares like with like).
fn summary(names: &[&str], results: &[Vec<Figures>]) -> Table {
    type Get = fn(&Figures) -> f64;
    let figures: [(&str, &str, Get, bool); 5] = [
        ("requests/s", "req/s", |f| f.rps, false),
        (
            "server CPU per request",
            "us",
            |f| f.server_us_per_req,
            true,
        ),
        ("download", "MB/s", |f| f.mbps, false),
        ("server CPU per GB", "s", Figures::s_per_gb, true),
        (
            // Not a server figure: near 100 means the load generator set the pace.
            "load generator CPU",
            "% of a core",
            |f| f.client_cpu_share * 100.0,
            false,
        ),
    ];
    let tq = names.iter().position(|n| *n == "tokio-quiche").unwrap_or(1);
    let mut text = String::new();
    let mut rows = Vec::new();
    for (label, unit, get, lower_better) in figures {
        text += &format!(
            "{label} ({unit}{}):\n",
            if lower_better {
                ", lower is better"
            } else {
                ""
            }
        );
        let mut row = serde_json::Map::new();
        row.insert("figure".into(), label.into());
        row.insert("unit".into(), unit.into());
        for (i, name) in names.iter().enumerate() {
            let s = spread(&results[i].iter().map(get).collect::<Vec<_>>());
            text += &format!(
                "  {name:>13}: {:>10.1}  ({:.1} - {:.1})",
                s.median, s.min, s.max
            );
            row.insert(
                (*name).into(),
                serde_json::json!({ "median": s.median, "min": s.min, "max": s.max }),
            );
            if i != tq {
                let ratios: Vec<f64> = results[i]
                    .iter()
                    .zip(&results[tq])
                    .map(|(a, b)| get(a) / get(b))
                    .collect();
                let r = spread(&ratios);
                text += &format!(
                    "   ratio to tokio-quiche {:.2}x ({:.2} - {:.2})",
                    r.median, r.min, r.max
                );
                row.insert(
                    format!("{name}/tokio-quiche"),
                    serde_json::json!({ "median": r.median, "min": r.min, "max": r.max }),
                );
            }
            text += "\n";
        }
        rows.push(serde_json::Value::Object(row));
    }
    Table {
        text,
        json: serde_json::json!({ "rounds": results.first().map_or(0, Vec::len), "figures": rows }),
    }
}
