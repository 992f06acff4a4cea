//! `troupe`: an HTTP/3 server (`serve`) and client (`get`) on troupe's actors.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{anyhow, bail, Context, Result};
use bytes::Bytes;
use clap::{Args, Parser, Subcommand};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use troupe::h3::{Body, ClientEndpoint, H3Settings, Server, ServerConfig};
use troupe::service::Builtin;
use troupe::transport::{Identity, QuicSettings, TlsConfig, Verify};

mod proxy;

/// mimalloc: per-stream actors allocate and free small channel blocks at a high rate; the
/// system allocator spent 17% of a server's CPU on them in the first profile. Built with
/// `no_thp` (see [`no_huge_pages`]).
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// Turns transparent huge pages off for this process (`PR_SET_THP_DISABLE`), before anything
/// large is allocated.
///
/// Why: mimalloc reserves a 1 GiB arena and, unless built with `no_thp` (as here), asks for
/// huge pages on it (`MADV_HUGEPAGE`); on a host whose THP mode is `always` the kernel gives
/// them without asking. A server's memory churns in small pieces (an actor of a few KB per
/// stream), and mimalloc hands freed 64 KiB pages back to the kernel after 10 ms
/// (`MADV_DONTNEED`). Inside a huge page that splits it; the next growth faults in a fresh
/// 2 MiB page, zeroed whole. With 50 connections of 1,000 streams in flight each (half a GB
/// resident), that cost some 270 huge-page faults and as many splits per 50,000 requests, and
/// between 0.14 s and 1.7 s of kernel time (how slow a huge-page fault is depends on how
/// fragmented the host's free memory is), where 4 KiB pages cost 0.4 s every time: the
/// server's CPU per request went from 1.19x tokio-quiche's to 0.93x (twelve rounds of the
/// "50x1000 small" rows of `cargo xtask bench`).
///
/// A failure (a kernel before 3.15, a seccomp filter) leaves the host's policy in place.
fn no_huge_pages() {
    #[cfg(target_os = "linux")]
    if let Err(e) = nix::sys::prctl::set_thp_disable(true) {
        eprintln!("troupe: transparent huge pages stay as the host set them (prctl: {e})");
    }
}

#[derive(Parser)]
#[command(
    name = "troupe",
    version,
    about = "HTTP/3 with one supervised actor per stream"
)]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Serve the built-in routes (/, /bytes/N, /echo) and optionally files from a directory.
    Serve(ServeArgs),
    /// Send one request and write the response body to stdout.
    Get(GetArgs),
    /// Print the live actor tree (or the top actors) of a server started with --admin.
    Tree(TreeArgs),
    /// Serve a CONNECT-UDP proxy (RFC 9298), refusing private and special ranges by default.
    Proxy(proxy::ProxyArgs),
    /// Forward a local UDP port through a CONNECT-UDP proxy to one target.
    UdpTunnel(proxy::TunnelArgs),
}

#[derive(Args)]
struct ServeArgs {
    /// UDP address to listen on; repeatable, one endpoint each. Default: `127.0.0.1:4433` and
    /// `[::1]:4433`, the two addresses of localhost (the second is skipped, with a warning, on a
    /// host without IPv6). Port 0 picks a free port for the first address; later addresses
    /// with port 0 take the same port, so https://localhost:PORT/ reaches each.
    #[arg(long, value_name = "ADDR")]
    listen: Vec<SocketAddr>,
    /// PEM certificate chain (leaf first). Without it a self-signed one is generated.
    #[arg(long, requires = "key", value_name = "PEM")]
    cert: Option<PathBuf>,
    /// PEM private key of --cert.
    #[arg(long, requires = "cert", value_name = "PEM")]
    key: Option<PathBuf>,
    /// Serve files below this directory for GET paths that are not built-in routes.
    #[arg(long, value_name = "DIR")]
    root: Option<PathBuf>,
    /// Turn off stateless Retry address validation.
    #[arg(long)]
    no_retry: bool,
    /// Connections at most (handshaking or established); a new client beyond it is refused
    /// with CONNECTION_REFUSED.
    #[arg(long, default_value_t = 10_000, value_name = "N")]
    max_connections: usize,
    /// Send every packet on its own instead of batching runs into GSO (UDP_SEGMENT) sends:
    /// for paths where segmentation offload misbehaves.
    #[arg(long)]
    no_gso: bool,
    /// Idle timeout in seconds.
    #[arg(long, default_value_t = 30, value_name = "SECS")]
    idle_timeout: u64,
    /// Request streams a client may have open at once on one connection.
    #[arg(long, default_value_t = troupe::transport::QuicSettings::default().initial_max_streams_bidi, value_name = "N")]
    max_streams: u64,
    /// Parked stream actors each worker may keep for later streams; 0 stops every stream
    /// actor when its stream ends (see H3Settings::stream_actor_pool).
    #[arg(long, default_value_t = H3Settings::default().stream_actor_pool, value_name = "N")]
    stream_actor_pool: usize,
    /// On SIGINT/SIGTERM, how long requests in flight may take to finish before the
    /// connections are closed anyway. A second signal exits at once.
    #[arg(long, default_value_t = 30, value_name = "SECS")]
    drain_timeout: u64,
    /// Endpoint workers: threads that each own a UDP socket on the port (SO_REUSEPORT), a
    /// receive loop, and every actor of the connections they accept; 1 runs the whole server
    /// on one thread. Default: one per core this process may use.
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u16).range(1..=256))]
    workers: Option<u16>,
    #[command(flatten)]
    admin: AdminArgs,
}

/// The admin endpoint's flags, shared by `serve` and `proxy`.
#[derive(Args)]
pub(crate) struct AdminArgs {
    /// Serve the admin endpoint (live tree, /metrics, warnings, top-N, actions) on this TCP
    /// address, e.g. 127.0.0.1:9901. Loopback only, unless --admin-token is set.
    #[arg(long, value_name = "ADDR")]
    admin: Option<SocketAddr>,
    /// Token every admin request must carry (`Authorization: Bearer TOKEN`); needed to bind
    /// the admin endpoint to a non-loopback address.
    #[arg(
        long,
        env = "TROUPE_ADMIN_TOKEN",
        requires = "admin",
        value_name = "TOKEN"
    )]
    admin_token: Option<String>,
    /// A host name the admin endpoint accepts in `Host` besides IP addresses and localhost
    /// (e.g. the name of an SSH tunnel's end); repeatable.
    #[arg(long, requires = "admin", value_name = "NAME")]
    admin_host: Vec<String>,
    /// Directory where the admin endpoint's qlog action writes. Default: troupe-qlog in the
    /// system's temporary directory.
    #[arg(long, requires = "admin", value_name = "DIR")]
    admin_qlog_dir: Option<PathBuf>,
}

impl AdminArgs {
    /// The admin endpoint's configuration, if `--admin` was given: its access rules are checked
    /// now, before anything listens, and `quic` reports to the metrics it will serve.
    pub(crate) fn config(
        &self,
        quic: &mut QuicSettings,
    ) -> Result<Option<troupe::admin::AdminConfig>> {
        let Some(addr) = self.admin else {
            return Ok(None);
        };
        let mut c = troupe::admin::AdminConfig::new(addr);
        c.token = self.admin_token.clone();
        c.hosts = self.admin_host.clone();
        if let Some(d) = &self.admin_qlog_dir {
            c.qlog_dir = d.clone();
        }
        troupe::admin::AccessPolicy::new(addr, c.token.as_deref(), &c.hosts)
            .with_context(|| format!("--admin {addr}"))?;
        let metrics = troupe::transport::PrometheusMetrics::new();
        quic.metrics = metrics.shared();
        c.metrics = Some(metrics);
        Ok(Some(c))
    }
}

/// Starts the admin endpoint for `servers`, if configured, and prints where it is.
pub(crate) async fn start_admin(
    config: Option<troupe::admin::AdminConfig>,
    servers: &[Arc<Server>],
) -> Result<Option<troupe::admin::Admin>> {
    let Some(c) = config else {
        return Ok(None);
    };
    let addr = c.addr;
    let admin = troupe::admin::Admin::serve_servers(c, servers)
        .await
        .with_context(|| format!("--admin {addr}"))?;
    let at = admin.local_addr();
    let me = std::env::current_exe()
        .map(|p| p.display().to_string())
        .unwrap_or_else(|_| "troupe".into());
    println!(
        "admin endpoint: http://{at}/ (live tree; /tree, /tree.txt, /metrics, /warnings, /top)"
    );
    println!("      {me} tree --admin {at}");
    Ok(Some(admin))
}

#[derive(Args)]
struct TreeArgs {
    /// The admin endpoint of the server (`troupe serve --admin ADDR`).
    #[arg(long, default_value = "127.0.0.1:9901", value_name = "ADDR")]
    admin: SocketAddr,
    /// The admin endpoint's token, if it has one.
    #[arg(long, env = "TROUPE_ADMIN_TOKEN", value_name = "TOKEN")]
    token: Option<String>,
    /// Print the tree as JSON (the snapshot types, serialized) instead of text.
    #[arg(long, conflicts_with = "top")]
    json: bool,
    /// Print again every SECS seconds until interrupted.
    #[arg(long, value_name = "SECS")]
    watch: Option<f64>,
    /// Print the N actors ranking highest by --by over the server's sampling window instead
    /// of the tree.
    #[arg(long, value_name = "N")]
    top: Option<usize>,
    /// What --top ranks by: busy, mailbox, bytes or lost.
    #[arg(long, default_value = "busy", requires = "top", value_name = "KEY")]
    by: troupe::admin::TopBy,
}

#[derive(Args)]
struct GetArgs {
    /// https:// URL to fetch.
    url: String,
    /// Send this file ("-" for stdin) as the request body (the method becomes POST).
    #[arg(long, short = 'd', value_name = "FILE|-")]
    data: Option<String>,
    /// Request method (default GET, or POST with --data).
    #[arg(long, short = 'X', value_name = "METHOD")]
    method: Option<String>,
    /// Extra request header, "Name: value"; repeatable.
    #[arg(long = "header", short = 'H', value_name = "NAME: VALUE")]
    headers: Vec<String>,
    /// Write the body to this file instead of stdout.
    #[arg(long, short = 'o', value_name = "FILE")]
    output: Option<PathBuf>,
    /// Trust the server certificate(s) in this PEM file.
    #[arg(long, value_name = "PEM", conflicts_with = "insecure")]
    ca: Option<PathBuf>,
    /// Do not verify the server certificate.
    #[arg(long, short = 'k')]
    insecure: bool,
    /// Print the status and response headers to stderr.
    #[arg(long, short = 'v')]
    verbose: bool,
    /// Give up on an address if no server completes a handshake there within this many
    /// seconds.
    #[arg(long, default_value_t = 5, value_name = "SECS")]
    connect_timeout: u64,
    /// Use these addresses for HOST:PORT instead of resolving it (as curl's --resolve);
    /// repeatable. Example: `--resolve example.com:443:[::1],127.0.0.1`
    #[arg(long = "resolve", value_name = "HOST:PORT:ADDR[,ADDR]...", value_parser = parse_resolve)]
    resolve: Vec<ResolveEntry>,
}

/// One `--resolve` entry.
#[derive(Clone, Debug, PartialEq)]
struct ResolveEntry {
    host: String,
    port: u16,
    addrs: Vec<std::net::IpAddr>,
}

/// Parses curl's `--resolve` syntax: `HOST:PORT:ADDR[,ADDR]...`, IPv6 addresses with or
/// without brackets.
fn parse_resolve(s: &str) -> Result<ResolveEntry, String> {
    let usage = "write HOST:PORT:ADDR[,ADDR]..., e.g. example.com:443:127.0.0.1,[::1]";
    let (host, rest) = s
        .split_once(':')
        .ok_or_else(|| format!("{s:?} has no port; {usage}"))?;
    let (port, addrs) = rest
        .split_once(':')
        .ok_or_else(|| format!("{s:?} has no address; {usage}"))?;
    if host.is_empty() {
        return Err(format!("{s:?} has no host; {usage}"));
    }
    let port = port
        .parse::<u16>()
        .map_err(|_| format!("{port:?} in {s:?} is not a port number; {usage}"))?;
    let addrs = addrs
        .split(',')
        .map(|a| {
            a.trim_start_matches('[')
                .trim_end_matches(']')
                .parse::<std::net::IpAddr>()
                .map_err(|_| format!("{a:?} in {s:?} is not an IP address; {usage}"))
        })
        .collect::<Result<Vec<_>, _>>()?;
    Ok(ResolveEntry {
        host: host.to_ascii_lowercase(),
        port,
        addrs,
    })
}

fn main() -> ExitCode {
    no_huge_pages();
    let cli = Cli::parse();
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("TROUPE_LOG")
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn")),
        )
        .with_writer(std::io::stderr)
        .init();
    let workers = match &cli.cmd {
        // The endpoint's workers bring their own threads: the main one keeps the rest (the
        // endpoint actor, the admin endpoint, signals).
        Cmd::Serve(_) | Cmd::Proxy(_) => Some(0),
        Cmd::Get(_) => None,
        // A client of one HTTP/1.1 endpoint: one thread is plenty.
        Cmd::Tree(_) | Cmd::UdpTunnel(_) => Some(0),
    };
    let mut builder = match workers {
        Some(0) => tokio::runtime::Builder::new_current_thread(),
        Some(n) => {
            let mut b = tokio::runtime::Builder::new_multi_thread();
            b.worker_threads(n);
            b
        }
        None => tokio::runtime::Builder::new_multi_thread(),
    };
    let rt = match builder.enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("troupe: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let r = rt.block_on(async {
        match cli.cmd {
            Cmd::Serve(a) => serve(a).await.map(|_| ExitCode::SUCCESS),
            Cmd::Get(a) => get(a).await,
            Cmd::Tree(a) => tree(a).await.map(|_| ExitCode::SUCCESS),
            Cmd::Proxy(a) => proxy::proxy(a).await.map(|_| ExitCode::SUCCESS),
            Cmd::UdpTunnel(a) => proxy::udp_tunnel(a).await.map(|_| ExitCode::SUCCESS),
        }
    });
    let code = match r {
        Ok(code) => code,
        Err(e) => {
            eprintln!("troupe: {e:#}");
            ExitCode::FAILURE
        }
    };
    // Everything that matters is done (connections closed, output flushed): leave without
    // tearing the runtime down under actors that are still unwinding.
    rt.shutdown_background();
    code
}

/// `--workers`, or one per core this process may use (at most 256, a connection ID's byte).
pub(crate) fn endpoint_workers(flag: Option<u16>) -> usize {
    match flag {
        Some(n) => n as usize,
        None => std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(1)
            .min(troupe::transport::cid::MAX_WORKERS),
    }
}

async fn serve(a: ServeArgs) -> Result<()> {
    // Before anything is printed: whoever reads "serving" may signal right away.
    let mut signals = Signals::new()?;
    let svc = match &a.root {
        Some(dir) => Builtin::with_root(dir)
            .with_context(|| format!("--root {}: not a readable directory", dir.display()))?,
        None => Builtin::new(),
    };
    let mut config = ServerConfig::default();
    config.quic.retry = !a.no_retry;
    config.quic.gso = !a.no_gso;
    config.quic.max_connections = a.max_connections;
    config.quic.idle_timeout = Duration::from_secs(a.idle_timeout);
    config.h3.stream_actor_pool = a.stream_actor_pool;
    config.quic.initial_max_streams_bidi = a.max_streams;
    config.quic.workers = endpoint_workers(a.workers);
    let generated = a.cert.is_none();
    config.tls = server_tls(&a.cert, &a.key)?;
    // The future `handle` returns owns what it needs: returned as it is, unwrapped.
    let handler = move |req| svc.handle(req);
    // The admin endpoint's access rules are checked before anything listens.
    let admin_config = a.admin.config(&mut config.quic)?;
    let servers = bind_servers(&a.listen, &config, handler).await?;
    let server = &servers[0];
    let addr = server.local_addr();
    let addrs = servers
        .iter()
        .map(|s| s.local_addr().to_string())
        .collect::<Vec<_>>()
        .join(", ");
    let id = server.identity();
    println!("troupe serving HTTP/3 on {addrs} (UDP)");
    let url = format!("https://localhost:{}/", addr.port());
    // The command to try names this very binary, which need not be on PATH.
    let me = std::env::current_exe()
        .map(|p| p.display().to_string())
        .unwrap_or_else(|_| "troupe".into());
    if generated {
        let dir = std::env::temp_dir().join(format!("troupe-serve-{}", std::process::id()));
        std::fs::create_dir_all(&dir)
            .with_context(|| format!("cannot create {}", dir.display()))?;
        let path = dir.join("cert.pem");
        std::fs::write(&path, id.certificate_pem())
            .with_context(|| format!("cannot write {}", path.display()))?;
        println!("self-signed certificate for localhost: {}", path.display());
        println!(
            "certificate SPKI SHA-256 (base64): {}",
            id.spki_sha256_base64()
        );
        println!("try:  {me} get {url} --ca {}", path.display());
        println!(
            "      {me} get {url}bytes/1048576 --ca {} -o /dev/null -v",
            path.display()
        );
    } else {
        println!(
            "certificate SPKI SHA-256 (base64): {}",
            id.spki_sha256_base64()
        );
        println!("try:  {me} get {url}");
    }
    let admin = start_admin(admin_config, &servers).await?;
    use std::io::Write;
    let _ = std::io::stdout().flush();
    signals.next().await;
    eprintln!(
        "troupe: shutting down: GOAWAY sent, finishing requests in flight (up to {} s); signal again to exit now",
        a.drain_timeout
    );
    // The admin endpoint stays up while the servers drain: the drain is worth watching.
    let _admin = admin;
    tokio::select! {
        drained = futures::future::join_all(
            servers
                .iter()
                .map(|s| s.shutdown_gracefully(Duration::from_secs(a.drain_timeout))),
        ) => {
            if drained.contains(&false) {
                eprintln!("troupe: drain deadline reached; remaining connections closed");
            }
            Ok(())
        }
        _ = signals.next() => {
            eprintln!("troupe: second signal: exiting now");
            std::process::exit(130);
        }
    }
}

/// `troupe tree`: the tree (text or JSON) or the top-N, once or every --watch seconds.
async fn tree(a: TreeArgs) -> Result<()> {
    use std::io::IsTerminal;
    let client = troupe::admin::AdminClient::new(a.admin, a.token.clone());
    let watch = match a.watch {
        Some(s) if !(s.is_finite() && s >= 0.1) => {
            bail!("--watch {s}: give a number of seconds, at least 0.1")
        }
        Some(s) => Some(Duration::from_secs_f64(s)),
        None => None,
    };
    let tty = std::io::stdout().is_terminal();
    loop {
        let text = match a.top {
            Some(n) => {
                let body = client
                    .get(&format!("/top?by={}&n={n}", by_name(a.by)))
                    .await?;
                top_table(&body)?
            }
            None if a.json => client.get("/tree").await? + "\n",
            None => client.get("/tree.txt").await?,
        };
        let Some(every) = watch else {
            print!("{text}");
            return Ok(());
        };
        if tty {
            // Clear the screen and home the cursor, like watch(1).
            print!("\x1b[2J\x1b[H");
        } else {
            println!("--- {}", chrono_now());
        }
        print!("{text}");
        use std::io::Write;
        let _ = std::io::stdout().flush();
        tokio::time::sleep(every).await;
    }
}

fn by_name(by: troupe::admin::TopBy) -> &'static str {
    use troupe::admin::TopBy;
    match by {
        TopBy::Mailbox => "mailbox",
        TopBy::Bytes => "bytes",
        TopBy::Lost => "lost",
        _ => "busy",
    }
}

/// Seconds since the Unix epoch, for --watch's separator lines.
fn chrono_now() -> String {
    let t = std::time::SystemTime::now()
        .duration_since(std::time::SystemTime::UNIX_EPOCH)
        .map_or(0.0, |d| d.as_secs_f64());
    format!("{t:.3}")
}

/// `/top`'s JSON as a table: value, kind, name, actor id.
fn top_table(json: &str) -> Result<String> {
    let v: serde_json::Value =
        serde_json::from_str(json).context("the admin endpoint sent malformed JSON")?;
    let by = v["by"].as_str().unwrap_or("?");
    let window = match v["window_secs"].as_f64() {
        Some(w) => format!("over the last {w:.1} s"),
        None => "since each actor started".to_string(),
    };
    let mut out = format!("top by {by} {window}\n");
    let rows = v["entries"].as_array().cloned().unwrap_or_default();
    if rows.is_empty() {
        out.push_str("(no actor has a non-zero figure)\n");
    }
    for r in rows {
        out.push_str(&format!(
            "{:>12.3}  {:<10}  {}  [actor {}]\n",
            r["value"].as_f64().unwrap_or(0.0),
            r["kind"].as_str().unwrap_or(""),
            r["name"].as_str().unwrap_or(""),
            r["actor"].as_str().unwrap_or("")
        ));
    }
    Ok(out)
}

/// SIGINT (Ctrl-C) and SIGTERM, as one stream of "please stop" events.
pub(crate) struct Signals {
    term: tokio::signal::unix::Signal,
    int: tokio::signal::unix::Signal,
}

impl Signals {
    pub(crate) fn new() -> Result<Self> {
        use tokio::signal::unix::{signal, SignalKind};
        Ok(Signals {
            term: signal(SignalKind::terminate()).context("cannot listen for SIGTERM")?,
            int: signal(SignalKind::interrupt()).context("cannot listen for SIGINT")?,
        })
    }

    pub(crate) async fn next(&mut self) {
        tokio::select! {
            _ = self.term.recv() => {}
            _ = self.int.recv() => {}
        }
    }
}

async fn get(a: GetArgs) -> Result<ExitCode> {
    let uri: http::Uri = a
        .url
        .parse()
        .with_context(|| format!("URL {:?} is not valid", a.url))?;
    if uri.scheme_str() != Some("https") {
        bail!(
            "URL {:?} must start with https:// (HTTP/3 is always TLS)",
            a.url
        );
    }
    let host = uri
        .host()
        .ok_or_else(|| anyhow!("URL {:?} has no host", a.url))?
        .trim_start_matches('[')
        .trim_end_matches(']')
        .to_string();
    let port = uri.port_u16().unwrap_or(443);
    let pinned = a
        .resolve
        .iter()
        .find(|r| r.host.eq_ignore_ascii_case(&host) && r.port == port);

    let verify = verify_from(&a.ca, a.insecure)?;
    let method: http::Method = match (&a.method, &a.data) {
        (Some(m), _) => m
            .parse()
            .map_err(|_| anyhow!("-X {m:?} is not a valid HTTP method"))?,
        (None, Some(_)) => http::Method::POST,
        (None, None) => http::Method::GET,
    };
    let mut req = http::Request::builder().method(method).uri(uri.clone());
    for h in &a.headers {
        let (name, value) = h
            .split_once(':')
            .ok_or_else(|| anyhow!("-H {h:?} must look like 'Name: value'"))?;
        let name = http::HeaderName::from_bytes(name.trim().to_ascii_lowercase().as_bytes())
            .map_err(|_| anyhow!("-H {h:?}: {:?} is not a valid header name", name.trim()))?;
        let value = http::HeaderValue::from_str(value.trim())
            .map_err(|_| anyhow!("-H {h:?}: the value is not a valid header value"))?;
        req = req.header(name, value);
    }
    let body = match &a.data {
        None => Body::empty(),
        Some(src) => request_body(src).await?,
    };
    let req = req.body(body).context("cannot build the request")?;

    let mut quic = QuicSettings::default();
    quic.handshake_timeout = Duration::from_secs(a.connect_timeout.max(1));
    let tls = TlsConfig {
        identity: None,
        verify,
    };
    let ep = client_endpoint(quic, tls).await?;
    // Every address of the name is tried, IPv6 first, the Happy Eyeballs way.
    let client = match pinned {
        Some(r) => {
            let addrs: Vec<SocketAddr> = r
                .addrs
                .iter()
                .map(|ip| SocketAddr::new(*ip, port))
                .collect();
            ep.connect_addrs(&host, &addrs).await?
        }
        None => ep.connect_to(&format!("{}:{port}", bracket(&host))).await?,
    };
    let resp = client.send(req).await?;
    let status = resp.status();
    if a.verbose {
        eprintln!("< HTTP/3 {status}");
        for (k, v) in resp.headers() {
            eprintln!("< {k}: {}", String::from_utf8_lossy(v.as_bytes()));
        }
    }
    let mut body = resp.into_body();
    let mut out: Box<dyn tokio::io::AsyncWrite + Unpin + Send> = match &a.output {
        Some(p) => Box::new(
            tokio::fs::File::create(p)
                .await
                .with_context(|| format!("-o {}: cannot create the file", p.display()))?,
        ),
        None => Box::new(tokio::io::stdout()),
    };
    let mut total = 0u64;
    while let Some(chunk) = body.chunk().await {
        let chunk = chunk.context("the response body was cut short")?;
        total += chunk.len() as u64;
        out.write_all(&chunk)
            .await
            .context("cannot write the body")?;
    }
    out.flush().await.context("cannot write the body")?;
    if a.verbose {
        eprintln!("* {total} body bytes");
    }
    client.close();
    Ok(if status.is_client_error() || status.is_server_error() {
        eprintln!("troupe: the server answered {status}");
        ExitCode::from(22)
    } else {
        ExitCode::SUCCESS
    })
}

/// The certificate to serve: the given PEM files, or a generated self-signed one for localhost.
pub(crate) fn server_tls(cert: &Option<PathBuf>, key: &Option<PathBuf>) -> Result<TlsConfig> {
    Ok(TlsConfig {
        identity: match (cert, key) {
            (Some(c), Some(k)) => Some(Identity::from_pem_files(c, k)?),
            _ => Some(Identity::self_signed()?),
        },
        verify: Verify::default(),
    })
}

/// How a client verifies its server: `--ca`, `--insecure`, or the system's roots.
pub(crate) fn verify_from(ca: &Option<PathBuf>, insecure: bool) -> Result<Verify> {
    Ok(match (ca, insecure) {
        (Some(p), _) => {
            std::fs::metadata(p)
                .with_context(|| format!("--ca {}: cannot read the file", p.display()))?;
            Verify::CaFile(p.clone())
        }
        (None, true) => Verify::Insecure,
        (None, false) => Verify::SystemRoots,
    })
}

/// A client endpoint on one dual-stack socket, which reaches both families (an IPv4 one on a
/// host without IPv6).
pub(crate) async fn client_endpoint(quic: QuicSettings, tls: TlsConfig) -> Result<ClientEndpoint> {
    match ClientEndpoint::bind(
        "[::]:0".parse()?,
        quic.clone(),
        tls.clone(),
        H3Settings::default(),
    )
    .await
    {
        Ok(ep) => Ok(ep),
        Err(_) => Ok(
            ClientEndpoint::bind("0.0.0.0:0".parse()?, quic, tls, H3Settings::default()).await?,
        ),
    }
}

/// One server per `--listen` address, or on 127.0.0.1:4433 and [::1]:4433 (both addresses of
/// localhost) when none was given; then the second is skipped, with a warning, on a host
/// without IPv6. Later addresses with port 0 take the first one's port.
pub(crate) async fn bind_servers<H: troupe::h3::Handler + Clone>(
    given: &[SocketAddr],
    config: &ServerConfig,
    handler: H,
) -> Result<Vec<Arc<Server>>> {
    let defaulted = given.is_empty();
    let listen = if defaulted {
        vec![
            SocketAddr::from(([127, 0, 0, 1], 4433)),
            SocketAddr::from((std::net::Ipv6Addr::LOCALHOST, 4433)),
        ]
    } else {
        given.to_vec()
    };
    let mut servers: Vec<Arc<Server>> = Vec::with_capacity(listen.len());
    for (i, mut addr) in listen.into_iter().enumerate() {
        if addr.port() == 0 {
            if let Some(first) = servers.first() {
                addr.set_port(first.local_addr().port());
            }
        }
        match Server::bind(addr, config.clone(), handler.clone()).await {
            Ok(s) => servers.push(Arc::new(s)),
            Err(e) if defaulted && i > 0 => {
                eprintln!("troupe: not serving on {addr} ({e}); serving IPv4 only");
            }
            Err(e) => {
                return Err(
                    anyhow::Error::new(e).context(format!("--listen {addr}: cannot serve there"))
                )
            }
        }
    }
    Ok(servers)
}

/// A host as it goes into an authority: an IPv6 address in brackets.
fn bracket(host: &str) -> String {
    if host.contains(':') {
        format!("[{host}]")
    } else {
        host.to_string()
    }
}

async fn request_body(src: &str) -> Result<Body> {
    const CHUNK: usize = 64 * 1024;
    let reader: Box<dyn tokio::io::AsyncRead + Unpin + Send> = if src == "-" {
        Box::new(tokio::io::stdin())
    } else {
        Box::new(
            tokio::fs::File::open(src)
                .await
                .with_context(|| format!("--data {src}: cannot open the file"))?,
        )
    };
    let s = futures::stream::try_unfold(reader, |mut r| async move {
        let mut buf = vec![0u8; CHUNK];
        let n = r.read(&mut buf).await?;
        if n == 0 {
            return Ok::<_, std::io::Error>(None);
        }
        buf.truncate(n);
        Ok(Some((Bytes::from(buf), r)))
    });
    Ok(Body::from_stream(s))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn resolve_entries_parse_like_curl() {
        let one = parse_resolve("Example.com:443:127.0.0.1").unwrap();
        assert_eq!(one.host, "example.com");
        assert_eq!(one.port, 443);
        assert_eq!(
            one.addrs,
            vec!["127.0.0.1".parse::<std::net::IpAddr>().unwrap()]
        );
        let three = parse_resolve("h:1:[::1],127.0.0.2,::2").unwrap();
        assert_eq!(
            three.addrs,
            ["::1", "127.0.0.2", "::2"]
                .iter()
                .map(|a| a.parse::<std::net::IpAddr>().unwrap())
                .collect::<Vec<_>>()
        );
    }

    #[test]
    fn bad_resolve_entries_say_what_is_wrong() {
        for (bad, says) in [
            ("", "no port"),
            ("host", "no port"),
            ("host:443", "no address"),
            (":443:127.0.0.1", "no host"),
            ("host:http:127.0.0.1", "not a port number"),
            ("host:70000:127.0.0.1", "not a port number"),
            ("host:443:", "not an IP address"),
            ("host:443:127.0.0.1,", "not an IP address"),
            ("host:443:localhost", "not an IP address"),
        ] {
            let err = parse_resolve(bad).unwrap_err();
            assert!(err.contains(says), "{bad:?}: {err}");
            assert!(err.contains("HOST:PORT:ADDR"), "{bad:?}: {err}");
        }
    }
}
