//! troupe vs tokio-quiche, side by side in one run (`cargo bench --bench h3_vs_tokio_quiche`, or
//! `cargo xtask bench`).
//!
//! Both servers are release binaries of this workspace serving the same routes: `troupe serve`
//! (one thread) and `tq-serve` (tokio-quiche 0.20, current-thread runtime). Each is pinned to
//! core 0 with `taskset`; the load generator, ngtcp2's client (`gtlsclient`, Debian package
//! `ngtcp2-client`, which `cargo xtask bench` installs), is pinned to core 1. It is C and costs
//! a few microseconds per request, so it rarely sets the pace; its CPU share is reported beside
//! every figure (near 100% of its core means it did).
//!
//! Scenarios, each run against every server:
//!
//! 1. small requests (`GET /bytes/1024`), one connection with 100 concurrent streams;
//! 2. small requests, 50 connections with 10 concurrent streams each (both servers started with
//!    a stream limit of 10, so the client keeps exactly 10 in flight per connection);
//! 3. a bulk download (`GET /bytes/N`) on one connection;
//! 4. a bulk upload (`POST /discard`) on one connection;
//! 5. handshakes: new connection, one `GET /`, close; 32 clients at a time, troupe's own client
//!    in the benchmark's process (a gtlsclient process per handshake spends its time starting);
//! 6. memory: 100 connections with 100 open, idle streams each (`POST /discard` whose body
//!    never ends, sent by troupe's client): the server's resident memory per stream, from
//!    /proc, once it stopped growing, less what the connections alone took;
//! 7. small requests, 50 connections with 1,000 in flight on each (a stream limit of 1,000,
//!    `BENCH_REQUESTS / 50` requests per connection, all at once): a burst that takes the
//!    server to half a GB resident, so the cost of the memory it touches (page faults, huge
//!    pages) shows in its CPU per request.
//!
//! Then worker scaling, troupe alone: `troupe serve --workers 2` against `--workers 1` on
//! scenario 2, with servers and load generators unpinned, sharing every core (a second table,
//! also written to `target/bench/workers_scaling.json`).
//!
//! Then instructions per small request, each server under valgrind's instruction counter
//! (1x100, 50x10, and 1x1000, a thousand streams in flight, counted only; a third table, also
//! written to `target/bench/instructions.json`): a count, unlike CPU time, does not move with
//! this machine's load. The small-request runs
//! also simulate an L2 cache of this machine's shape and count its misses: memory a request
//! touches that L2 no longer holds, which an instruction count does not show.
//!
//! Server CPU time is read from /proc, so the figures that matter (server CPU per request, per
//! GB, per handshake) do not depend on the client's speed. Every scenario runs `BENCH_ROUNDS`
//! times (default 5; the small-request ones six times as many) against every server, each
//! run on a server started for it; the servers
//! take turns scenario by scenario (their runs seconds apart) and every other round in the
//! reverse order. One table gives each figure's median and min-max over the rounds, and each
//! ratio to tokio-quiche (the median of the per-round ratios: a round's two runs are adjacent,
//! so its ratio compares like with like), with the interval that holds that median with 90%
//! confidence when there are rounds enough; it is also written as JSON to
//! `target/bench/h3_vs_tokio_quiche.json`.
//!
//! Environment: `BENCH_ROUNDS` (5); `BENCH_REQUESTS` (50000) small requests per scenario;
//! `BENCH_BULK_MB` (1024) per bulk transfer; `BENCH_HANDSHAKES` (2000); `BENCH_IDLE_CONNS`
//! (100) connections of 100 idle streams; `BENCH_NO_POOL=1` adds
//! `troupe --stream-actor-pool 0` (what parked stream actors give); `BENCH_TROUPE_BASELINE` (a
//! `troupe` binary built from an earlier commit, measured too, to show a change's effect);
//! `BENCH_SCENARIOS` (a comma-separated list of the timed scenarios' names, such as
//! `handshakes` or `1x100 small,50x10 small`) times only those;
//! `BENCH_NO_SCALING=1` skips the scaling table, `BENCH_SCALING_ONLY=1` runs only it;
//! `BENCH_NO_INSTRUCTIONS=1` skips the instruction counts, `BENCH_INSTRUCTIONS_ONLY=1` runs
//! only them (what `cargo xtask bench --instructions` sets), `BENCH_INSTRUCTION_REQUESTS`
//! (10000) the requests counted; `BENCH_NO_SYSCALLS=1` skips the system call counts (`perf
//! stat`), `BENCH_SYSCALLS_ONLY=1` runs only them;
//! `BENCH_PROFILE=1` (what `cargo xtask bench --profile` sets; `50x10`, `handshakes` or
//! `download` pick another scenario) runs only the profile: each server under scenario 1, sampled by `perf record --call-graph dwarf`, each profile folded
//! and drawn as a flame graph by `inferno` (`target/bench/profile/{troupe,tokio-quiche}.svg`),
//! and the functions with the most samples of their own listed side by side.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Instant;

#[path = "support/procs.rs"]
mod procs;
use procs::{
    build_release_binaries, can_pin, clock_ticks, cpu_secs, pin_self_to_core_1, start, start_on,
};

#[path = "support/select.rs"]
mod select;
#[path = "support/stats.rs"]
mod stats;
use stats::{median_interval, paired_ratios, spread};

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn env_or<T: std::str::FromStr>(name: &str, default: T) -> T {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn have_gtlsclient() -> bool {
    Command::new("gtlsclient")
        .arg("--help")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok()
}

/// One gtlsclient run: `procs` processes at once, one connection each, `streams` requests of
/// `path` each (a POST of `data` when given). Returns the wall time and the clients' CPU time.
struct Load<'a> {
    addr: SocketAddr,
    path: String,
    streams: usize,
    procs: usize,
    data: Option<&'a Path>,
    /// The cores to run on (a `taskset` list), or wherever this process may.
    cores: Option<&'static str>,
}

impl Load<'_> {
    fn run(&self) -> (f64, f64) {
        let tck = clock_ticks();
        let c0 = cpu_secs("self", true, tck);
        let t0 = Instant::now();
        let uri = format!("https://localhost:{}{}", self.addr.port(), self.path);
        let mut kids = Vec::new();
        for _ in 0..self.procs {
            let mut cmd = if let Some(cores) = self.cores {
                let mut c = Command::new("taskset");
                c.args(["-c", cores, "gtlsclient"]);
                c
            } else {
                Command::new("gtlsclient")
            };
            cmd.args([
                "-q",
                "--no-quic-dump",
                "--no-http-dump",
                "--exit-on-all-streams-close",
                "--timeout=30s",
            ])
            .arg(format!("--nstreams={}", self.streams));
            if let Some(d) = self.data {
                cmd.arg(format!("--data={}", d.display()))
                    .arg("--http-method=POST");
            }
            cmd.arg(self.addr.ip().to_string())
                .arg(self.addr.port().to_string())
                .arg(&uri)
                .stdout(Stdio::null())
                .stderr(Stdio::null());
            kids.push(cmd.spawn().expect("start gtlsclient"));
        }
        for mut k in kids {
            let st = k.wait().unwrap();
            assert!(st.success(), "gtlsclient failed: {st} ({uri})");
        }
        (t0.elapsed().as_secs_f64(), cpu_secs("self", true, tck) - c0)
    }
}

/// One figure of one scenario: its label, unit, and whether lower is better.
#[derive(Clone, Copy)]
struct Figure {
    label: &'static str,
    unit: &'static str,
    lower_better: bool,
}

const fn fig(label: &'static str, unit: &'static str, lower_better: bool) -> Figure {
    Figure {
        label,
        unit,
        lower_better,
    }
}

/// What one round of one server measured, in table order.
type Round = Vec<(Figure, f64)>;

struct Settings {
    rt: tokio::runtime::Runtime,
    idle_conns: usize,
    requests: usize,
    bulk: u64,
    handshakes: usize,
    upload_file: PathBuf,
    pin: bool,
    tck: f64,
}

/// Measures `n` units of work done by `load` against the server `pid`: returns (units per
/// second, server CPU microseconds per unit, load generator's CPU share in percent).
fn measured(pid: &str, s: &Settings, units: f64, load: impl FnOnce() -> (f64, f64)) -> [f64; 3] {
    let s0 = cpu_secs(pid, false, s.tck);
    let (wall, client_cpu) = load();
    let server = cpu_secs(pid, false, s.tck) - s0;
    [
        units / wall,
        server / units * 1e6,
        client_cpu / wall * 100.0,
    ]
}

/// Creates `path` as a sparse file of `len` zero bytes and reads it once. The first reader
/// of a fresh sparse file fills the page cache with zeroed pages: a 1 GiB upload from one
/// measured about 9.5 s against 4.9 s from the same file read before, whichever server
/// received it, with the client spending some 3 s more in the kernel. Without this read the
/// first upload of a run (troupe's, in round 1) paid for it.
fn sparse_file(path: &Path, len: u64) {
    std::fs::File::create(path)
        .and_then(|f| f.set_len(len))
        .and_then(|()| std::fs::File::open(path))
        .and_then(|mut f| std::io::copy(&mut f, &mut std::io::sink()))
        .unwrap_or_else(|e| panic!("create and read the upload file {}: {e}", path.display()));
}

/// A load of gtlsclient on the load generator's core against `addr`.
fn load_of<'a>(
    addr: SocketAddr,
    s: &Settings,
    path: &str,
    streams: usize,
    procs: usize,
    data: Option<&'a Path>,
) -> Load<'a> {
    Load {
        addr,
        path: path.to_string(),
        streams,
        procs,
        data,
        cores: s.pin.then_some("1"),
    }
}

/// One scenario: what it measures against a server just started, and appends to a round.
type Scenario = fn(SocketAddr, &str, &Settings, &mut Round);

/// How many times `BENCH_ROUNDS` the small-request scenarios run. A round of theirs takes a
/// second or two, and their per-round CPU ratios spread the widest on this machine: from
/// 0.65x-1.02x to 0.59x-1.40x within a run (12 pairs on 50 connections in a slow spell had a
/// standard deviation of 0.21), where a transfer's spread about 0.85x-1.15x. With fifteen
/// rounds the interval that holds their median with 90% confidence (see [`MEDIAN_CONFIDENCE`])
/// runs from the 4th to the 12th ratio in order; with thirty, from the 11th to the 20th, about
/// a third narrower, for about five minutes more.
const SMALL_ROUNDS: usize = 6;

/// The confidence of the interval given for each ratio's median (distribution-free, from the
/// ranks of the per-round ratios: [`median_interval`]). A ratio whose interval lies wholly on
/// troupe's side of 1.0 (below it for a cost such as CPU per request, above it for a rate) is
/// troupe's beyond this machine's noise; one whose interval straddles 1.0 is not told apart
/// from a tie by this run.
const MEDIAN_CONFIDENCE: f64 = 0.9;

/// The scenarios in table order, each with the stream limit its servers start with and how
/// many times `BENCH_ROUNDS` it runs.
const SCENARIOS: [(&str, usize, usize, Scenario); 7] = [
    ("1x100 small", 100, SMALL_ROUNDS, small_wide),
    ("download", 100, 1, download),
    ("upload", 100, 1, upload),
    ("handshakes", 100, 1, handshaking),
    ("memory", 100, 1, memory),
    ("50x10 small", 10, SMALL_ROUNDS, narrow),
    ("50x1000 small", 1000, SMALL_ROUNDS, crowded),
];

/// Small requests on one connection, 100 streams in flight.
fn small_wide(addr: SocketAddr, pid: &str, s: &Settings, out: &mut Round) {
    let load = |streams| load_of(addr, s, "/bytes/1024", streams, 1, None);
    load(300).run(); // warm-up
    let [rate, cpu, client] = measured(pid, s, s.requests as f64, || load(s.requests).run());
    out.push((fig("1x100 small: requests/s", "req/s", false), rate));
    out.push((fig("1x100 small: server CPU per request", "us", true), cpu));
    out.push((
        fig("1x100 small: load generator CPU", "% of a core", false),
        client,
    ));
}

/// A bulk download on one connection.
fn download(addr: SocketAddr, pid: &str, s: &Settings, out: &mut Round) {
    let path = format!("/bytes/{}", s.bulk);
    let gb = s.bulk as f64 / 1e9;
    let [rate, cpu, client] = measured(pid, s, gb, || load_of(addr, s, &path, 1, 1, None).run());
    out.push((fig("download: MB/s", "MB/s", false), rate * 1e3));
    out.push((fig("download: server CPU per GB", "s", true), cpu / 1e6));
    out.push((
        fig("download: load generator CPU", "% of a core", false),
        client,
    ));
}

/// A bulk upload on one connection.
fn upload(addr: SocketAddr, pid: &str, s: &Settings, out: &mut Round) {
    let gb = s.bulk as f64 / 1e9;
    let [rate, cpu, client] = measured(pid, s, gb, || {
        load_of(addr, s, "/discard", 1, 1, Some(&s.upload_file)).run()
    });
    out.push((fig("upload: MB/s", "MB/s", false), rate * 1e3));
    out.push((fig("upload: server CPU per GB", "s", true), cpu / 1e6));
    out.push((
        fig("upload: load generator CPU", "% of a core", false),
        client,
    ));
}

/// Handshakes: 32 clients at a time, each a new connection, one request, close.
fn handshaking(addr: SocketAddr, pid: &str, s: &Settings, out: &mut Round) {
    let [rate, cpu, client] = measured(pid, s, s.handshakes as f64, || {
        s.rt.block_on(handshakes(addr, s.handshakes, s.tck))
    });
    out.push((fig("handshakes: per second", "1/s", false), rate));
    out.push((fig("handshakes: server CPU per handshake", "us", true), cpu));
    out.push((
        fig("handshakes: load generator CPU", "% of a core", false),
        client,
    ));
}

/// Memory per idle stream.
fn memory(addr: SocketAddr, pid: &str, s: &Settings, out: &mut Round) {
    let kb = s.rt.block_on(idle_streams_kb(addr, pid, s.idle_conns));
    out.push((fig("memory: resident per idle stream", "KB", true), kb));
}

/// A client endpoint on loopback that takes any certificate (the servers' are self-signed).
async fn insecure_client() -> troupe::h3::ClientEndpoint {
    use troupe::h3::{ClientEndpoint, H3Settings};
    use troupe::transport::{QuicSettings, TlsConfig, Verify};
    let tls = TlsConfig {
        identity: None,
        verify: Verify::Insecure,
    };
    ClientEndpoint::bind(
        "127.0.0.1:0".parse().unwrap(),
        QuicSettings::default(),
        tls,
        H3Settings::default(),
    )
    .await
    .expect("bind a client endpoint")
}

/// `n` handshakes, 32 under way at a time, each a new connection from a new client endpoint (so
/// no session is resumed), one `GET /`, and a close. The load generator is troupe's own client
/// in this process (one thread, on the load generator's core): a gtlsclient process per
/// handshake spent most of the time starting processes. Returns the wall time and this
/// process's CPU time.
///
/// A client that has sent its CONNECTION_CLOSE goes on to its next handshake: the closed
/// connection drains in the background (RFC 9000 section 10.2: three PTOs, some 30 ms here,
/// as 32 handshakes queued at one server put the RTT estimate near 3 ms) and every drain is
/// awaited at the end, inside the timed span. Waiting for each drain in turn made the rate
/// 32 / (handshake + request + drain): a timer three times the client's RTT estimate, not the
/// handshakes a server completes per second. Now the load generator's core is the limit (its
/// CPU share says so) unless a server is slower than it.
async fn handshakes(addr: SocketAddr, n: usize, tck: f64) -> (f64, f64) {
    use std::sync::atomic::{AtomicUsize, Ordering};
    const AT_ONCE: usize = 32;
    let left = std::sync::Arc::new(AtomicUsize::new(n));
    let c0 = cpu_secs("self", false, tck);
    let t0 = Instant::now();
    let url = format!("https://localhost:{}/", addr.port());
    let tasks: Vec<_> = (0..AT_ONCE)
        .map(|_| {
            let (left, url) = (left.clone(), url.clone());
            tokio::spawn(async move {
                let mut draining = Vec::new();
                while left
                    .fetch_update(Ordering::AcqRel, Ordering::Acquire, |l| l.checked_sub(1))
                    .is_ok()
                {
                    let ep = insecure_client().await;
                    let client = ep.connect(addr, "localhost").await.expect("handshake");
                    let req = http::Request::get(&url)
                        .body(troupe::h3::Body::empty())
                        .unwrap();
                    let resp = client.send(req).await.expect("request");
                    assert_eq!(resp.status(), 200);
                    resp.into_body().collect().await.expect("response body");
                    client.close();
                    draining.push(tokio::spawn(async move {
                        client.closed().await;
                        drop(ep);
                    }));
                }
                draining
            })
        })
        .collect();
    for t in tasks {
        for closing in t.await.expect("handshake task") {
            closing.await.expect("a closing connection");
        }
    }
    (
        t0.elapsed().as_secs_f64(),
        cpu_secs("self", false, tck) - c0,
    )
}

/// The server's resident memory in KB (VmRSS).
fn rss_kb(pid: &str) -> f64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .unwrap_or(0.0)
}

/// Polls the server's resident memory until it has not grown by more than 0.5% for a second
/// (or 30 s passed); returns it.
async fn settled_rss_kb(pid: &str) -> f64 {
    let deadline = Instant::now() + std::time::Duration::from_secs(30);
    let mut last = rss_kb(pid);
    let mut stable_since = Instant::now();
    loop {
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
        let now = rss_kb(pid);
        if now > last * 1.005 {
            stable_since = Instant::now();
        }
        last = last.max(now);
        if stable_since.elapsed().as_secs_f64() >= 1.0 || Instant::now() > deadline {
            return last;
        }
    }
}

/// `conns` connections, then 100 idle streams on each: KB of server memory per stream.
async fn idle_streams_kb(addr: SocketAddr, pid: &str, conns: usize) -> f64 {
    use troupe::h3::Body;
    const STREAMS: usize = 100;
    let ep = insecure_client().await;
    let mut clients = Vec::new();
    for _ in 0..conns {
        clients.push(ep.connect(addr, "localhost").await.expect("connect"));
    }
    let with_connections = settled_rss_kb(pid).await;
    let url = format!("https://localhost:{}/discard", addr.port());
    let mut held = Vec::new();
    for c in &clients {
        for _ in 0..STREAMS {
            let (tx, body) = Body::channel(1);
            let req = http::Request::post(&url).body(body).unwrap();
            let c = c.clone();
            held.push((tx, tokio::spawn(async move { c.send(req).await })));
        }
    }
    let with_streams = settled_rss_kb(pid).await;
    for c in &clients {
        c.close();
    }
    drop(held);
    (with_streams - with_connections) / (conns * STREAMS) as f64
}

/// The scenario on a server started with a stream limit of 10: 50 connections x 10 streams.
fn narrow(addr: SocketAddr, pid: &str, s: &Settings, out: &mut Round) {
    let labels = [
        "50x10 small: requests/s",
        "50x10 small: server CPU per request",
        "50x10 small: load generator CPU",
    ];
    fifty_connections(labels, addr, pid, s, out);
}

/// The scenario on a server started with a stream limit of 1,000: 50 connections, each with
/// `BENCH_REQUESTS / 50` requests (1,000 by default) in flight at once: at the peak troupe holds
/// about half a GB resident, tokio-quiche's server about 200 MB. What a burst costs in the memory
/// a server touches, page faults included.
fn crowded(addr: SocketAddr, pid: &str, s: &Settings, out: &mut Round) {
    let labels = [
        "50x1000 small: requests/s",
        "50x1000 small: server CPU per request",
        "50x1000 small: load generator CPU",
    ];
    fifty_connections(labels, addr, pid, s, out);
}

/// Small requests on 50 connections, `BENCH_REQUESTS / 50` each, as many in flight as the
/// server's stream limit lets: the rate, the server's CPU per request and the load generator's
/// share, under `labels` in that order.
fn fifty_connections(
    labels: [&'static str; 3],
    addr: SocketAddr,
    pid: &str,
    s: &Settings,
    out: &mut Round,
) {
    const CONNS: usize = 50;
    let per = (s.requests / CONNS).max(1);
    let load = |streams| load_of(addr, s, "/bytes/1024", streams, CONNS, None);
    load(20).run(); // warm-up
    let [rate, cpu, client] = measured(pid, s, (per * CONNS) as f64, || load(per).run());
    out.push((fig(labels[0], "req/s", false), rate));
    out.push((fig(labels[1], "us", true), cpu));
    out.push((fig(labels[2], "% of a core", false), client));
}

struct Server {
    name: &'static str,
    bin: PathBuf,
    args: Vec<String>,
    ready: &'static str,
}

impl Server {
    /// Starts this server with `limit` streams per connection.
    fn start(&self, limit: usize, s: &Settings) -> (procs::Proc, SocketAddr) {
        let mut args = self.args.clone();
        args.extend(["--max-streams".to_string(), limit.to_string()]);
        start(&self.bin, &args, self.ready, s.pin)
    }
}

/// Every scenario, `rounds` times (the small-request ones [`SMALL_ROUNDS`] times as many),
/// against every server, each run on a server started for it: `results[server][round]`, a
/// round holding the figures of the scenarios it ran. The servers take turns scenario by
/// scenario, so the runs a ratio compares are seconds apart, and every other round reverses
/// their order (troupe, then tokio-quiche; then tokio-quiche, then troupe), so a steady drift
/// in this machine's speed weighs on both alike.
fn timed(servers: &[Server], s: &Settings, rounds: usize, picked: &[usize]) -> Vec<Vec<Round>> {
    // [round][server] while measuring; the table wants [server][round].
    let most = picked.iter().map(|&i| SCENARIOS[i].2).max().unwrap_or(1);
    let mut by_round = vec![vec![Round::new(); servers.len()]; rounds * most];
    for &(name, limit, times, scenario) in picked.iter().map(|&i| &SCENARIOS[i]) {
        println!("{name}");
        for (round, row) in by_round.iter_mut().enumerate().take(rounds * times) {
            let mut order: Vec<usize> = (0..servers.len()).collect();
            if round % 2 == 1 {
                order.reverse();
            }
            for i in order {
                let server = &servers[i];
                let (proc_, addr) = server.start(limit, s);
                let out = &mut row[i];
                let from = out.len();
                scenario(addr, &proc_.0.id().to_string(), s, out);
                drop(proc_);
                let line: Vec<String> = out[from..]
                    .iter()
                    .filter(|(f, _)| !f.unit.starts_with('%'))
                    .map(|(f, v)| format!("{} {v:.1}", f.label))
                    .collect();
                println!(
                    "  round {} {:>13}: {}",
                    round + 1,
                    server.name,
                    line.join(" | ")
                );
            }
        }
    }
    (0..servers.len())
        .map(|i| by_round.iter().map(|row| row[i].clone()).collect())
        .collect()
}

fn main() {
    // `cargo bench` passes --bench; a plain `cargo test --benches` run passes nothing we need.
    if std::env::args().any(|a| a == "--list") {
        return;
    }
    if !have_gtlsclient() {
        eprintln!(
            "this benchmark's load generator is ngtcp2's gtlsclient: install the Debian package \
             ngtcp2-client (cargo xtask bench installs it)"
        );
        std::process::exit(2);
    }
    let scenario_names: Vec<&str> = SCENARIOS.iter().map(|sc| sc.0).collect();
    let picked = match select::pick(
        &scenario_names,
        std::env::var("BENCH_SCENARIOS").ok().as_deref(),
    ) {
        Ok(picked) => picked,
        Err(e) => {
            eprintln!("{e}");
            std::process::exit(2);
        }
    };
    let release = build_release_binaries(&root());
    let pin = can_pin();
    if pin {
        pin_self_to_core_1();
    } else {
        eprintln!("note: taskset or a second core is missing; server and client are not pinned");
    }
    let out = std::env::var("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|_| root().join("target"))
        .join("bench");
    let _ = std::fs::create_dir_all(&out);
    let bulk = env_or::<u64>("BENCH_BULK_MB", 1024) << 20;
    // The upload's body: a sparse file of zeros (no disk blocks, read from no disk).
    let upload_file = out.join("upload.bin");
    sparse_file(&upload_file, bulk);
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .unwrap();
    let settings = Settings {
        rt,
        idle_conns: env_or("BENCH_IDLE_CONNS", 100),
        requests: env_or("BENCH_REQUESTS", 50_000),
        bulk,
        handshakes: env_or("BENCH_HANDSHAKES", 2000),
        upload_file: upload_file.clone(),
        pin,
        tck: clock_ticks(),
    };
    println!(
        "load generator: ngtcp2 gtlsclient; {} small requests per scenario, {} MiB per bulk \
         transfer, {} handshakes",
        settings.requests,
        bulk >> 20,
        settings.handshakes
    );

    let troupe_args: Vec<String> = [
        "serve",
        "--listen",
        "127.0.0.1:0",
        "--no-retry",
        "--workers",
        "1",
    ]
    .map(String::from)
    .to_vec();
    let mut servers = vec![
        Server {
            name: "troupe",
            bin: release.join("troupe"),
            args: troupe_args.clone(),
            ready: "troupe serving HTTP/3 on ",
        },
        Server {
            name: "tokio-quiche",
            bin: release.join("tq-serve"),
            args: vec!["--listen".into(), "127.0.0.1:0".into()],
            ready: "tq-serve listening on ",
        },
    ];
    if std::env::var_os("BENCH_NO_POOL").is_some() {
        let mut args = troupe_args.clone();
        args.extend(["--stream-actor-pool".into(), "0".into()]);
        servers.push(Server {
            name: "troupe-nopool",
            bin: release.join("troupe"),
            args,
            ready: "troupe serving HTTP/3 on ",
        });
    }
    if let Some(b) = std::env::var_os("BENCH_TROUPE_BASELINE") {
        servers.push(Server {
            name: "troupe-before",
            bin: PathBuf::from(b),
            args: troupe_args,
            ready: "troupe serving HTTP/3 on ",
        });
    }
    // See `timed` for how rounds and servers alternate.
    let rounds = env_or::<usize>("BENCH_ROUNDS", 5).max(1);
    if std::env::var_os("BENCH_PROFILE").is_some() {
        profile(&servers[..2], &settings, &out.join("profile"));
        return;
    }
    if std::env::var_os("BENCH_SCALING_ONLY").is_some() {
        scaling(&release, &settings, rounds, &out);
        return;
    }
    if std::env::var_os("BENCH_INSTRUCTIONS_ONLY").is_some() {
        instructions(&servers, &settings, &out);
        return;
    }
    if std::env::var_os("BENCH_SYSCALLS_ONLY").is_some() {
        syscalls(&servers, &settings, &out);
        let _ = std::fs::remove_file(&upload_file);
        return;
    }
    let results = timed(&servers, &settings, rounds, &picked);
    let names: Vec<&str> = servers.iter().map(|s| s.name).collect();
    summary(&names, &results, 1).show(&out.join("h3_vs_tokio_quiche.json"));
    if std::env::var_os("BENCH_NO_SYSCALLS").is_none() {
        syscalls(&servers, &settings, &out);
    }
    let _ = std::fs::remove_file(&upload_file);
    if std::env::var_os("BENCH_NO_SCALING").is_none() {
        scaling(&release, &settings, rounds, &out);
    }
    // Last: the slowest part, and one that needs valgrind.
    if std::env::var_os("BENCH_NO_INSTRUCTIONS").is_none() {
        instructions(&servers, &settings, &out);
    }
}

/// The system calls counted, by the kernel's tracepoint names: the UDP sends, the UDP
/// receives, and the waits for readiness.
const SEND_CALLS: [&str; 3] = ["sendmsg", "sendmmsg", "sendto"];
const RECV_CALLS: [&str; 3] = ["recvmsg", "recvmmsg", "recvfrom"];
const WAIT_CALLS: [&str; 1] = ["epoll_wait"];
/// Not a call: the times the server's threads were switched out, by the kernel's software
/// event. Most are the server blocking in `epoll_wait` with nothing to do, then woken by a
/// packet: each costs the scheduler's switch out and back (and on a virtual machine, an idle
/// exit), so two servers with as many `epoll_wait`s can spend different time in the kernel.
const SWITCHES: [&str; 1] = ["context-switches"];

/// Server system calls per unit of work, counted by the kernel's tracepoints through `perf
/// stat` (a third view beside CPU time and instructions, steady like the counts: it moves
/// only with how the work falls into wake-ups): sends, receives, readiness waits and context
/// switches (see [`SWITCHES`]) per 1,000 small requests (1x100 and 50x10), per MB downloaded
/// and uploaded, per handshake. Each
/// server runs each load once under `perf stat`, from its start (a few calls) to its exit.
/// Needs `perf` and the right to trace (root); skipped otherwise. `BENCH_NO_SYSCALLS=1` skips it,
/// `BENCH_SYSCALLS_ONLY=1` runs only it.
fn syscalls(servers: &[Server], s: &Settings, out: &Path) {
    let events: Vec<String> = SEND_CALLS
        .iter()
        .chain(&RECV_CALLS)
        .chain(&WAIT_CALLS)
        .map(|c| format!("syscalls:sys_enter_{c}"))
        .chain(SWITCHES.iter().map(|e| e.to_string()))
        .collect();
    let events = events.join(",");
    let usable = Command::new("perf")
        .args(["stat", "-x,", "-e", &events, "--", "true"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|st| st.success());
    if !usable {
        eprintln!(
            "perf cannot count system calls here (missing, or no right to trace): no system \
             call counts (cargo xtask bench --profile installs perf; run as root)"
        );
        return;
    }
    println!(
        "system calls: each server under perf stat; {} small requests, {} MiB, {} handshakes",
        s.requests,
        s.bulk >> 20,
        s.handshakes
    );
    type Load<'a> = Box<dyn Fn(SocketAddr) + 'a>;
    let small = |conns: usize| -> Load<'_> {
        Box::new(move |addr| {
            load_of(
                addr,
                s,
                "/bytes/1024",
                (s.requests / conns).max(1),
                conns,
                None,
            )
            .run();
        })
    };
    let requests = |conns: usize| ((s.requests / conns).max(1) * conns) as f64 / 1e3;
    let mb = s.bulk as f64 / 1e6;
    // Stream limit, the load, units of work, the four figures' labels.
    let loads: [(usize, Load<'_>, f64, [&'static str; 4]); 5] = [
        (
            100,
            small(1),
            requests(1),
            [
                "1x100 small: server send calls per 1k requests",
                "1x100 small: server receive calls per 1k requests",
                "1x100 small: server epoll_waits per 1k requests",
                "1x100 small: server context switches per 1k requests",
            ],
        ),
        (
            10,
            small(50),
            requests(50),
            [
                "50x10 small: server send calls per 1k requests",
                "50x10 small: server receive calls per 1k requests",
                "50x10 small: server epoll_waits per 1k requests",
                "50x10 small: server context switches per 1k requests",
            ],
        ),
        (
            100,
            Box::new(|addr| {
                load_of(addr, s, &format!("/bytes/{}", s.bulk), 1, 1, None).run();
            }),
            mb,
            [
                "download: server send calls per MB",
                "download: server receive calls per MB",
                "download: server epoll_waits per MB",
                "download: server context switches per MB",
            ],
        ),
        (
            100,
            Box::new(|addr| {
                load_of(addr, s, "/discard", 1, 1, Some(&s.upload_file)).run();
            }),
            mb,
            [
                "upload: server send calls per MB",
                "upload: server receive calls per MB",
                "upload: server epoll_waits per MB",
                "upload: server context switches per MB",
            ],
        ),
        (
            100,
            Box::new(|addr| {
                s.rt.block_on(handshakes(addr, s.handshakes, s.tck));
            }),
            s.handshakes as f64,
            [
                "handshakes: server send calls per handshake",
                "handshakes: server receive calls per handshake",
                "handshakes: server epoll_waits per handshake",
                "handshakes: server context switches per handshake",
            ],
        ),
    ];
    let mut results = Vec::new();
    for server in servers {
        let mut round: Round = Vec::new();
        for (limit, load, units, labels) in &loads {
            let counts = traced(server, s, *limit, out, &events, load);
            let sum = |calls: &[&str]| -> f64 {
                calls
                    .iter()
                    .map(|c| counts.get(*c).copied().unwrap_or(0) as f64)
                    .sum()
            };
            for (label, (calls, unit)) in labels.iter().zip([
                (&SEND_CALLS[..], "calls"),
                (&RECV_CALLS[..], "calls"),
                (&WAIT_CALLS[..], "calls"),
                (&SWITCHES[..], "switches"),
            ]) {
                let per = sum(calls) / units;
                println!("  {:>13}: {label} {per:.3}", server.name);
                round.push((fig(label, unit, true), per));
            }
        }
        results.push(vec![round]);
    }
    let names: Vec<&str> = servers.iter().map(|s| s.name).collect();
    summary(&names, &results, 1).show(&out.join("syscalls.json"));
}

/// The system calls `server` made under `perf stat`, from its start to its exit, with
/// `limit` streams per connection, serving what `load` asks of it: call name -> count.
fn traced(
    server: &Server,
    s: &Settings,
    limit: usize,
    dir: &Path,
    events: &str,
    load: impl Fn(SocketAddr),
) -> std::collections::HashMap<String, u64> {
    let counts = dir.join(format!("perf-stat.{}.csv", server.name));
    let tool_args: Vec<std::ffi::OsString> = vec![
        "stat".into(),
        "-x,".into(),
        "-e".into(),
        events.into(),
        "-o".into(),
        counts.clone().into(),
        "--".into(),
    ];
    // perf itself waits for its workload on SIGINT: the signal goes to the server.
    let tool = Tool {
        bin: "perf",
        args: tool_args,
        signal: Signal::Child,
    };
    let text = run_under(&tool, server, s, limit, &counts, load);
    // CSV lines: count,unit,event,...
    text.lines()
        .filter_map(|l| {
            let mut f = l.split(',');
            let n = f.next()?.trim().parse().ok()?;
            let event = f.nth(1)?;
            let event = event.strip_prefix("syscalls:sys_enter_").unwrap_or(event);
            Some((event.to_string(), n))
        })
        .collect()
}

/// Server instructions per unit of work, counted by valgrind (`--tool=cachegrind`): per small
/// request (1x100, 50x10, and 1x1000: a thousand streams in flight), per MB of a download and of an
/// upload, per handshake; for small requests also the misses of a simulated L2 cache shaped like
/// this machine's (`--LL`, from /sys): how much memory a request touches that L2 no longer holds.
/// Each server runs each load twice under the counter, at two sizes, and the difference, divided by
/// the difference in work, leaves out start-up, the first handshakes and shutdown. Unlike CPU time,
/// a count does not move with the machine's load (two runs agree within about 1%), so it shows
/// changes of a few percent that the CPU figures' noise hides. It counts instructions, not cycles
/// (a cache miss costs more than an add), and under valgrind a server runs some 50 times slower, so
/// its batches are larger than in the timed runs: it is a second view, not a replacement.
fn instructions(servers: &[Server], s: &Settings, out: &Path) {
    if Command::new("valgrind").arg("--version").output().is_err() {
        eprintln!("valgrind is missing: no instruction counts (cargo xtask bench installs it)");
        return;
    }
    let extra = env_or::<usize>("BENCH_INSTRUCTION_REQUESTS", 10_000).max(100);
    let base = 2_000;
    // Bulk: 16 MiB and 64 MiB; handshakes: 50 and 250.
    let (mb_few, mb_many) = (16u64, 64u64);
    let (hs_few, hs_many) = (50usize, 250usize);
    let bulk_file = |mb: u64| {
        let f = out.join(format!("upload-{mb}.bin"));
        sparse_file(&f, mb << 20);
        f
    };
    let (up_few, up_many) = (bulk_file(mb_few), bulk_file(mb_many));
    let l2 = l2_geometry();
    match &l2 {
        Some(g) => println!("small requests also under a simulated L2 cache like this machine's ({g})"),
        None => eprintln!("this machine's L2 cache is not described in /sys (or not as cachegrind takes it): no L2 miss counts"),
    }
    println!(
        "instructions: each server under valgrind; {base} and {} small requests, {mb_few} and \
         {mb_many} MiB, {hs_few} and {hs_many} handshakes",
        base + extra
    );
    let mut results = Vec::new();
    for server in servers {
        let mut round: Round = Vec::new();
        let mut row = |label: &'static str, unit: &'static str, per: f64| {
            println!("  {:>13}: {label} {per:.1} {unit}", server.name);
            round.push((fig(label, unit, true), per));
        };
        for (label, misses, conns, limit) in [
            (
                "1x100 small: server instructions per request",
                "1x100 small: server L2 misses per request, simulated",
                1,
                100,
            ),
            (
                "50x10 small: server instructions per request",
                "50x10 small: server L2 misses per request, simulated",
                50,
                10,
            ),
            // Counted only: a thousand streams in flight on one connection, where a per-stream
            // cost that grows with the streams open would show (the list of ended streams
            // awaiting acknowledgement once made each request cost 1.27x tokio-quiche's here).
            (
                "1x1000 small: server instructions per request",
                "1x1000 small: server L2 misses per request, simulated",
                1,
                1000,
            ),
        ] {
            let small = |n: usize| {
                move |addr| load_of(addr, s, "/bytes/1024", (n / conns).max(1), conns, None).run()
            };
            let few = counted(server, s, limit, out, l2.as_deref(), small(base));
            let many = counted(server, s, limit, out, l2.as_deref(), small(base + extra));
            row(
                label,
                "k",
                many.instructions.saturating_sub(few.instructions) as f64 / extra as f64 / 1e3,
            );
            if let (Some(f), Some(m)) = (few.l2_misses, many.l2_misses) {
                row(misses, "misses", m.saturating_sub(f) as f64 / extra as f64);
            }
        }
        let down = |mb: u64| {
            move |addr| load_of(addr, s, &format!("/bytes/{}", mb << 20), 1, 1, None).run()
        };
        let few = counted(server, s, 100, out, None, down(mb_few)).instructions;
        let many = counted(server, s, 100, out, None, down(mb_many)).instructions;
        let per_mb = |few: u64, many: u64| {
            many.saturating_sub(few) as f64 / ((mb_many - mb_few) as f64 * 1.048_576) / 1e6
        };
        row(
            "download: server instructions per MB",
            "M",
            per_mb(few, many),
        );
        let few = counted(server, s, 100, out, None, |addr| {
            load_of(addr, s, "/discard", 1, 1, Some(&up_few)).run()
        })
        .instructions;
        let many = counted(server, s, 100, out, None, |addr| {
            load_of(addr, s, "/discard", 1, 1, Some(&up_many)).run()
        })
        .instructions;
        row("upload: server instructions per MB", "M", per_mb(few, many));
        let shake = |n: usize| move |addr| s.rt.block_on(handshakes(addr, n, s.tck));
        let few = counted(server, s, 100, out, None, shake(hs_few)).instructions;
        let many = counted(server, s, 100, out, None, shake(hs_many)).instructions;
        row(
            "handshakes: server instructions per handshake",
            "k",
            many.saturating_sub(few) as f64 / (hs_many - hs_few) as f64 / 1e3,
        );
        results.push(vec![round]);
    }
    let _ = std::fs::remove_file(&up_few);
    let _ = std::fs::remove_file(&up_many);
    let names: Vec<&str> = servers.iter().map(|s| s.name).collect();
    summary(&names, &results, 1).show(&out.join("instructions.json"));
}

/// What valgrind counted of one server run.
struct Counts {
    instructions: u64,
    /// Misses of the simulated L2 cache (instruction and data, reads and writes), when one
    /// was simulated.
    l2_misses: Option<u64>,
}

/// This machine's L2 cache as cachegrind's `--LL` takes it (`size,ways,line`), read from
/// /sys; `None` if it is not described there, or its sets are not a power of two.
fn l2_geometry() -> Option<String> {
    let dir = Path::new("/sys/devices/system/cpu/cpu0/cache");
    let read = |index: &str, file: &str| {
        std::fs::read_to_string(dir.join(index).join(file))
            .ok()
            .map(|v| v.trim().to_string())
    };
    let index = (0..8)
        .map(|i| format!("index{i}"))
        .find(|i| read(i, "level").as_deref() == Some("2"))?;
    let size = read(&index, "size")?;
    let size: u64 = match size.strip_suffix('K') {
        Some(k) => k.parse::<u64>().ok()? * 1024,
        None => match size.strip_suffix('M') {
            Some(m) => m.parse::<u64>().ok()? << 20,
            None => size.parse().ok()?,
        },
    };
    let ways: u64 = read(&index, "ways_of_associativity")?.parse().ok()?;
    let line: u64 = read(&index, "coherency_line_size")?.parse().ok()?;
    let sets = size.checked_div(ways * line)?;
    (sets.is_power_of_two() && sets * ways * line == size).then(|| format!("{size},{ways},{line}"))
}

/// What `server` ran, under valgrind, from its start to its exit, with `limit` streams per
/// connection, serving what `load` asks of it: its instructions and, given an L2 geometry
/// (`size,ways,line`), its misses of a simulated cache of that shape: how much memory the
/// work touches that L2 no longer holds, which an instruction count does not show. The
/// simulation has no prefetcher: a sequential walk through fresh memory (an allocator going
/// round its pages) counts in full, though hardware would hide much of it.
fn counted<T>(
    server: &Server,
    s: &Settings,
    limit: usize,
    dir: &Path,
    l2: Option<&str>,
    load: impl FnOnce(SocketAddr) -> T,
) -> Counts {
    let counts = dir.join(format!("cachegrind.{}.out", server.name));
    let mut args: Vec<std::ffi::OsString> = vec!["--tool=cachegrind".into()];
    match l2 {
        Some(g) => args.extend(["--cache-sim=yes".into(), format!("--LL={g}").into()]),
        None => args.push("--cache-sim=no".into()),
    }
    args.push(format!("--cachegrind-out-file={}", counts.display()).into());
    let tool = Tool {
        bin: "valgrind",
        args,
        signal: Signal::Itself,
    };
    let text = run_under(&tool, server, s, limit, &counts, load);
    let line = |key: &str| {
        text.lines()
            .find_map(|l| l.strip_prefix(key))
            .unwrap_or_else(|| panic!("no {key} line in valgrind's counts for {}", server.name))
            .split_whitespace()
            .map(str::to_string)
            .collect::<Vec<_>>()
    };
    let (events, values) = (line("events:"), line("summary:"));
    let event = |name: &str| {
        events
            .iter()
            .position(|e| e == name)
            .and_then(|i| values.get(i)?.parse::<u64>().ok())
    };
    Counts {
        instructions: event("Ir").unwrap_or_else(|| {
            panic!(
                "no instruction count in valgrind's counts for {}",
                server.name
            )
        }),
        l2_misses: l2.and_then(|_| Some(event("ILmr")? + event("DLmr")? + event("DLmw")?)),
    }
}

/// A program that runs a server and writes what it measured to a file when the server exits.
struct Tool {
    bin: &'static str,
    /// Its arguments, before the server's command line.
    args: Vec<std::ffi::OsString>,
    /// Which process the SIGINT that ends a run goes to.
    signal: Signal,
}

/// Where SIGINT goes at the end of a run: to the tool's process, which is the server
/// (valgrind), or to the tool's child, the server (perf, which itself waits for its child).
enum Signal {
    Itself,
    Child,
}

/// Runs `server` (with `limit` streams per connection) under `tool`, serving what `load` asks
/// of it; SIGINT then ends it cleanly, and the tool writes `out`, whose text is returned (and
/// the file removed).
fn run_under<T>(
    tool: &Tool,
    server: &Server,
    s: &Settings,
    limit: usize,
    out: &Path,
    load: impl FnOnce(SocketAddr) -> T,
) -> String {
    let _ = std::fs::remove_file(out);
    let mut args = tool.args.clone();
    args.push(server.bin.clone().into());
    args.extend(server.args.iter().map(Into::into));
    args.extend(["--max-streams".into(), limit.to_string().into()]);
    let (mut proc_, addr) = start(Path::new(tool.bin), &args, server.ready, s.pin);
    load(addr);
    let pid = proc_.0.id().to_string();
    let _ = match tool.signal {
        Signal::Itself => Command::new("kill").args(["-INT", &pid]).status(),
        Signal::Child => Command::new("pkill").args(["-INT", "-P", &pid]).status(),
    };
    let _ = proc_.0.wait();
    let text = std::fs::read_to_string(out)
        .unwrap_or_else(|e| panic!("{} wrote nothing to {}: {e}", tool.bin, out.display()));
    let _ = std::fs::remove_file(out);
    text
}

/// Worker scaling: `troupe serve --workers 1` against `--workers 2`, 8 connections x 100
/// streams of small requests (a few connections with many streams each: gtlsclient's cost per
/// request is lowest so; the kernel's hash puts all 8 on one worker once in 128 rounds, and 4
/// connections proved too few: a round with all of them on one worker measured no gain). Neither the servers nor the load generators are pinned: all share this
/// machine's cores, so the load generators' CPU (reported) is taken from the same cores the
/// second worker would use.
fn scaling(release: &Path, s: &Settings, rounds: usize, out: &Path) {
    const CONNS: usize = 8;
    let cores = s.pin.then_some("0,1");
    let per = (s.requests / CONNS).max(1);
    let load = |addr, streams| Load {
        addr,
        path: "/bytes/1024".to_string(),
        streams,
        procs: CONNS,
        data: None,
        cores,
    };
    let names = ["2 workers", "1 worker"];
    println!(
        "worker scaling: {CONNS} connections x 100 streams, servers and load generators on all \
         cores"
    );
    let mut results: Vec<Vec<Round>> = vec![Vec::new(), Vec::new()];
    for round in 1..=rounds {
        for (i, workers) in [2, 1].into_iter().enumerate() {
            let args = [
                "serve",
                "--listen",
                "127.0.0.1:0",
                "--no-retry",
                "--workers",
                &workers.to_string(),
            ];
            let (proc_, addr) = start_on(
                cores,
                &release.join("troupe"),
                &args,
                "troupe serving HTTP/3 on ",
            );
            let pid = proc_.0.id().to_string();
            load(addr, 20).run(); // warm-up
            let t0 = Instant::now();
            let c0 = cpu_secs(&pid, false, s.tck);
            let [rate, cpu, client] =
                measured(&pid, s, (per * CONNS) as f64, || load(addr, per).run());
            let server_share =
                (cpu_secs(&pid, false, s.tck) - c0) / t0.elapsed().as_secs_f64() * 100.0;
            drop(proc_);
            println!(
                "  round {round}, {}: {rate:.0} req/s, {cpu:.1} us server CPU per request, \
                 server {server_share:.0}% and load generators {client:.0}% of a core",
                names[i]
            );
            results[i].push(vec![
                (fig("8x100 small: requests/s", "req/s", false), rate),
                (fig("8x100 small: server CPU per request", "us", true), cpu),
                (
                    fig("8x100 small: server CPU", "% of a core", false),
                    server_share,
                ),
                (
                    fig("8x100 small: load generators' CPU", "% of a core", false),
                    client,
                ),
            ]);
        }
    }
    summary(&names, &results, 1).show(&out.join("workers_scaling.json"));
}

struct Table {
    text: String,
    json: serde_json::Value,
}

impl Table {
    /// Prints the table and writes it as JSON to `path`.
    fn show(&self, path: &Path) {
        print!("{}", self.text);
        match std::fs::write(path, serde_json::to_string_pretty(&self.json).unwrap()) {
            Ok(()) => println!("written to {}", path.display()),
            Err(e) => eprintln!("cannot write {}: {e}", path.display()),
        }
    }
}

/// One row per figure: each server's median (min-max over rounds), and each other server's
/// ratio to `names[base]` (the median of the per-round ratios, with their range).
fn summary(names: &[&str], results: &[Vec<Round>], base: usize) -> Table {
    let tq = base;
    // The first round runs every scenario.
    let order: Vec<Figure> = results[0][0].iter().map(|(f, _)| *f).collect();
    // Per round, `None` where the round did not run the figure's scenario.
    let values = |server: usize, label: &str| -> Vec<Option<f64>> {
        results[server]
            .iter()
            .map(|round| {
                let m: BTreeMap<&str, f64> = round.iter().map(|(f, v)| (f.label, *v)).collect();
                m.get(label).copied()
            })
            .collect()
    };
    let mut text = String::new();
    let mut rows = Vec::new();
    for f in order {
        text += &format!(
            "{} ({}{}):\n",
            f.label,
            f.unit,
            if f.lower_better {
                ", lower is better"
            } else {
                ""
            }
        );
        let mut row = serde_json::Map::new();
        row.insert("figure".into(), f.label.into());
        row.insert("unit".into(), f.unit.into());
        // The load generator's CPU is not a figure to compare, only to read.
        let compare = !f.unit.starts_with('%');
        for (i, name) in names.iter().enumerate() {
            let v = values(i, f.label);
            let measured: Vec<f64> = v.iter().flatten().copied().collect();
            if i == 0 {
                row.insert("rounds".into(), measured.len().into());
            }
            let s = spread(&measured);
            text += &format!(
                "  {name:>13}: {:>10.1}  ({:.1} - {:.1})",
                s.median, s.min, s.max
            );
            row.insert(
                (*name).into(),
                serde_json::json!({ "median": s.median, "min": s.min, "max": s.max }),
            );
            if i != tq && compare {
                let ratios = paired_ratios(&v, &values(tq, f.label));
                let r = spread(&ratios);
                if r.median.is_finite() {
                    text += &format!(
                        "   ratio to {} {:.2}x ({:.2} - {:.2})",
                        names[tq], r.median, r.min, r.max
                    );
                } else {
                    // Every round's ratio divided by zero (a simulated cache that held all).
                    text += &format!("   no ratio: {} measured 0", names[tq]);
                }
                let within = median_interval(&ratios, MEDIAN_CONFIDENCE);
                if let Some(i) = within {
                    text += &format!(
                        ", median within {:.2} - {:.2} ({:.0}%)",
                        i.lo,
                        i.hi,
                        i.coverage * 100.0
                    );
                }
                row.insert(
                    format!("{name}/{}", names[tq]),
                    serde_json::json!({
                        "median": r.median,
                        "min": r.min,
                        "max": r.max,
                        "median_within": within.map(|i| serde_json::json!({
                            "lo": i.lo, "hi": i.hi, "coverage": i.coverage
                        })),
                    }),
                );
            }
            text += "\n";
        }
        rows.push(serde_json::Value::Object(row));
    }
    Table {
        text,
        json: serde_json::json!({ "rounds": results[0].len(), "figures": rows }),
    }
}

/// Samples each server under scenario 1 (one connection, 100 streams of small requests) with
/// `perf`, draws each profile as a flame graph, and prints the functions with the most samples
/// of their own, as shares of the server's samples, side by side.
fn profile(servers: &[Server], s: &Settings, dir: &Path) {
    std::fs::create_dir_all(dir).expect("create the profile directory");
    // `BENCH_PROFILE` names the scenario: `50x10`, `handshakes` or `download` (a 1 GiB
    // download, `BENCH_BULK_MB`); anything else profiles 1x100.
    let which = std::env::var("BENCH_PROFILE").unwrap_or_default();
    let (conns, limit, scenario) = match which.as_str() {
        "50x10" => (50, 10, "50x10 small requests"),
        "handshakes" => (0, 100, "handshakes"),
        "download" => (1, 100, "download"),
        _ => (1, 100, "1x100 small requests"),
    };
    let mut tops = Vec::new();
    for server in servers {
        let mut args = server.args.clone();
        args.extend(["--max-streams".to_string(), limit.to_string()]);
        let (proc_, addr) = start(&server.bin, &args, server.ready, s.pin);
        let pid = proc_.0.id().to_string();
        let load = |streams| load_of(addr, s, "/bytes/1024", streams, conns.max(1), None);
        load(300 / conns.max(1) + 1).run(); // warm-up
        let data = dir.join(format!("{}.perf.data", server.name));
        let _ = std::fs::remove_file(&data);
        let mut perf = Command::new("perf")
            .args([
                "record",
                "-F",
                "1999",
                "--call-graph",
                "dwarf",
                "-p",
                &pid,
                "-o",
            ])
            .arg(&data)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start perf record (cargo xtask bench --profile installs perf)");
        // perf writes its header once it is attached.
        let deadline = Instant::now() + std::time::Duration::from_secs(10);
        while std::fs::metadata(&data).map(|m| m.len()).unwrap_or(0) == 0 {
            assert!(Instant::now() < deadline, "perf record did not start");
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
        let [rate, cpu, _] = if conns == 0 {
            measured(&pid, s, s.handshakes as f64, || {
                s.rt.block_on(handshakes(addr, s.handshakes, s.tck))
            })
        } else if scenario == "download" {
            let l = Load {
                path: format!("/bytes/{}", s.bulk),
                ..load(1)
            };
            // Per MB, as microseconds of server CPU.
            measured(&pid, s, s.bulk as f64 / 1e6, || l.run())
        } else {
            let per = (s.requests / conns).max(1);
            measured(&pid, s, (per * conns) as f64, || load(per).run())
        };
        let _ = Command::new("kill")
            .args(["-INT", &perf.id().to_string()])
            .status();
        let _ = perf.wait();
        drop(proc_);
        let folded = fold(&data);
        let folded_path = dir.join(format!("{}.folded", server.name));
        std::fs::write(&folded_path, &folded).expect("write the folded stacks");
        let svg = dir.join(format!("{}.svg", server.name));
        let drawn = Command::new("inferno-flamegraph")
            .args(["--title", &format!("{}: {scenario}", server.name)])
            .arg(&folded_path)
            .stdout(std::fs::File::create(&svg).expect("create the flame graph"))
            .status();
        match drawn {
            Ok(st) if st.success() => println!(
                "{}: {rate:.0}/s, {cpu:.1} us server CPU each (under perf); flame graph {}",
                server.name,
                svg.display()
            ),
            _ => eprintln!("inferno-flamegraph failed: cargo xtask bench --profile installs it"),
        }
        tops.push((server.name, self_shares(&folded)));
    }
    let mut text = String::from("most samples of their own (share of each server's samples):\n");
    for (name, top) in &tops {
        text += &format!("{name}:\n");
        for (f, share) in top.iter().take(25) {
            text += &format!("  {:>5.1}%  {f}\n", share * 100.0);
        }
    }
    print!("{text}");
    let _ = std::fs::write(dir.join("summary.txt"), text);
}

/// `perf script` of `data`, folded by inferno (one line per stack: frames, then a count).
fn fold(data: &Path) -> String {
    let script = Command::new("perf")
        .args(["script", "-i"])
        .arg(data)
        .stderr(Stdio::null())
        .output()
        .expect("perf script");
    let mut collapse = Command::new("inferno-collapse-perf")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .expect("inferno-collapse-perf (cargo xtask bench --profile installs it)");
    let mut stdin = collapse.stdin.take().unwrap();
    let feeder = std::thread::spawn(move || {
        use std::io::Write;
        let _ = stdin.write_all(&script.stdout);
    });
    let out = collapse.wait_with_output().expect("inferno-collapse-perf");
    let _ = feeder.join();
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Each function's samples of its own (as the leaf of a stack), as shares of all samples, most
/// first.
fn self_shares(folded: &str) -> Vec<(String, f64)> {
    let mut by_leaf: BTreeMap<String, u64> = BTreeMap::new();
    let mut total = 0;
    for line in folded.lines() {
        let Some((stack, count)) = line.rsplit_once(' ') else {
            continue;
        };
        let Ok(count) = count.parse::<u64>() else {
            continue;
        };
        let leaf = stack.rsplit(';').next().unwrap_or(stack);
        *by_leaf.entry(leaf.to_string()).or_default() += count;
        total += count;
    }
    let mut v: Vec<(String, f64)> = by_leaf
        .into_iter()
        .map(|(f, n)| (f, n as f64 / total.max(1) as f64))
        .collect();
    v.sort_by(|a, b| b.1.total_cmp(&a.1));
    v
}
