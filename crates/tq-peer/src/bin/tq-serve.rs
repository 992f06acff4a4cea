//! `tq-serve`: an HTTP/3 server built on tokio-quiche's server API, serving the same routes as
//! `troupe serve`, so the two can be benchmarked and interop-tested against each other.
//!
//! ```text
//! tq-serve [--listen ADDR] [--cert PEM --key PEM]
//! ```
//!
//! Routes:
//!
//! * `GET /` → `200`, body `hello from tq-serve\n` (`text/plain`, with `content-length`).
//! * `GET /bytes/N` → `200` with exactly `N` bytes (`N` ≤ 10 GiB), where the byte at offset `i`
//!   is `(i % 251) as u8`. The body is streamed in 16 KiB chunks cut from one shared pattern
//!   buffer; it is never materialised, and the sender waits on the body channel's capacity.
//! * `POST /echo`, `PUT /echo` → `200`, the request body streamed back chunk by chunk as it
//!   arrives, with FIN once the request body has ended.
//! * `POST /discard`, `PUT /discard` → the request body is read to its end and dropped; then
//!   `200` with its length in decimal and a newline (an upload benchmark's route).
//! * `CONNECT` with `:protocol connect-udp` to `/.well-known/masque/udp/{host}/{port}/`
//!   (RFC 9298) → `200` with `capsule-protocol: ?1`, then UDP payloads with context id 0 are
//!   relayed between the flow's HTTP datagrams and a UDP socket connected to the target, until
//!   the client ends the stream. This is tokio-quiche's own MASQUE support (extended CONNECT,
//!   its per-connection flow map and shared datagram queue) with nothing added: no capsules,
//!   other context ids dropped. As a test and benchmark peer it only relays to loopback targets
//!   (`host` an IP literal or `localhost`); any other target gets `403` with `Proxy-Status`.
//! * anything else → `404` with a short body.
//!
//! Without `--cert`/`--key` a self-signed certificate for `localhost` and `127.0.0.1` is
//! generated at start and written to `$TMPDIR/tq-serve-<pid>/` (tokio-quiche loads certificates
//! by path); the directory is removed on exit. Once the UDP socket is bound, one line
//! `tq-serve listening on ADDR` is printed to stdout. SIGINT and SIGTERM stop the server with
//! exit status 0. Logs go to stderr, filtered by `RUST_LOG` (default `warn`).

use std::collections::HashMap;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::sync::LazyLock;
use std::time::Duration;

use anyhow::{bail, Context as _};
use bytes::Bytes;
use clap::Parser;
use futures::{SinkExt as _, StreamExt as _};
use quiche::h3::{Header, NameValue as _};
use tokio::signal::unix::{signal, SignalKind};
use tokio_quiche::datagram_socket::DgramBuffer;
use tokio_quiche::http3::driver::{
    H3Event, InboundFrame, InboundFrameStream, IncomingH3Headers, OutboundFrame,
    OutboundFrameSender, ServerH3Event,
};
use tokio_quiche::http3::settings::Http3Settings;
use tokio_quiche::metrics::DefaultMetrics;
use tokio_quiche::settings::{CertificateKind, Hooks, QuicSettings, TlsCertificatePaths};
use tokio_quiche::{ConnectionParams, ServerH3Controller, ServerH3Driver};

/// Size of the body chunks `/bytes/N` hands to the driver.
const CHUNK: usize = 16 * 1024;
/// The pattern repeats every 251 bytes (a prime, so it never lines up with chunk or packet sizes).
const PATTERN_PERIOD: usize = 251;
/// Largest `N` accepted by `/bytes/N`.
const MAX_BYTES: u64 = 10 * 1024 * 1024 * 1024;
const HELLO: &[u8] = b"hello from tq-serve\n";
const NOT_FOUND: &[u8] = b"not found\n";

/// `PATTERN_PERIOD + CHUNK` bytes of the pattern: the chunk starting at body offset `off` is the
/// zero-copy slice `[off % 251 .. off % 251 + len]` of this one buffer.
static PATTERN: LazyLock<Bytes> = LazyLock::new(|| {
    (0..PATTERN_PERIOD + CHUNK)
        .map(|i| (i % PATTERN_PERIOD) as u8)
        .collect::<Vec<u8>>()
        .into()
});

/// HTTP/3 server on tokio-quiche (one thread).
///
/// Routes: `GET /` (hello), `GET /bytes/N` (N <= 10 GiB bytes, byte i = i % 251),
/// `POST|PUT /echo` (streams the request body back), anything else 404. Prints
/// `tq-serve listening on ADDR` once bound; SIGINT/SIGTERM exit cleanly.
#[derive(Parser, Debug)]
#[command(name = "tq-serve", version)]
struct Args {
    /// UDP address to listen on (port 0 picks a free port; the bound address is printed).
    #[arg(long, default_value = "127.0.0.1:4433")]
    listen: SocketAddr,
    /// PEM certificate chain. Without --cert/--key a self-signed one is generated.
    #[arg(long, requires = "key", value_name = "PEM")]
    cert: Option<PathBuf>,
    /// PEM private key matching --cert.
    #[arg(long, requires = "cert", value_name = "PEM")]
    key: Option<PathBuf>,
    /// Request streams a client may have open at once (initial_max_streams_bidi).
    #[arg(long, default_value_t = 100, value_name = "N")]
    max_streams: u64,
}

fn main() {
    let args = Args::parse();
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn")),
        )
        .with_writer(std::io::stderr)
        .init();

    // A current-thread runtime on purpose: the server (all connections, the UDP router and the
    // per-connection I/O workers) runs on one core, so benchmarks against troupe compare like
    // with like rather than measuring how many cores each side grabbed.
    let result = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("building the tokio runtime")
        .and_then(|runtime| runtime.block_on(run(args)));
    if let Err(error) = result {
        eprintln!("tq-serve: {error:#}");
        std::process::exit(1);
    }
}

/// Where the certificate and key come from, and what to remove on exit.
struct Credentials {
    cert: String,
    key: String,
    generated_dir: Option<PathBuf>,
}

impl Drop for Credentials {
    fn drop(&mut self) {
        if let Some(dir) = &self.generated_dir {
            let _ = std::fs::remove_dir_all(dir);
        }
    }
}

fn credentials(args: &Args) -> anyhow::Result<Credentials> {
    if let (Some(cert), Some(key)) = (&args.cert, &args.key) {
        return Ok(Credentials {
            cert: path_str(cert)?,
            key: path_str(key)?,
            generated_dir: None,
        });
    }

    let dir = std::env::temp_dir().join(format!("tq-serve-{}", std::process::id()));
    std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    // From here on the directory is removed on every exit path by `Credentials::drop`.
    let creds = Credentials {
        cert: path_str(&dir.join("cert.pem"))?,
        key: path_str(&dir.join("key.pem"))?,
        generated_dir: Some(dir),
    };

    let generated =
        rcgen::generate_simple_self_signed(vec!["localhost".to_string(), "127.0.0.1".to_string()])
            .context("generating a self-signed certificate")?;
    std::fs::write(&creds.cert, generated.cert.pem())
        .with_context(|| format!("writing {}", creds.cert))?;
    write_private(
        Path::new(&creds.key),
        generated.signing_key.serialize_pem().as_bytes(),
    )
    .with_context(|| format!("writing {}", creds.key))?;
    Ok(creds)
}

/// Writes a file readable by the owner only (it holds a private key).
fn write_private(path: &Path, contents: &[u8]) -> std::io::Result<()> {
    use std::io::Write as _;
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create(true).truncate(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
    options.open(path)?.write_all(contents)
}

fn path_str(path: &Path) -> anyhow::Result<String> {
    match path.to_str() {
        Some(s) => Ok(s.to_string()),
        None => bail!("path {} is not valid UTF-8", path.display()),
    }
}

fn quic_settings(max_streams: u64) -> QuicSettings {
    let mut settings = QuicSettings::default();
    settings.max_idle_timeout = Some(Duration::from_secs(30));
    settings.initial_max_data = 10 * 1024 * 1024;
    settings.initial_max_stream_data_bidi_local = 1024 * 1024;
    settings.initial_max_stream_data_bidi_remote = 1024 * 1024;
    settings.initial_max_stream_data_uni = 1024 * 1024;
    settings.initial_max_streams_bidi = max_streams;
    settings.initial_max_streams_uni = 100;
    // tokio-quiche answers every token-less Initial with a stateless Retry by default, and it
    // *drops* Initials carrying a token it did not mint itself (e.g. a NEW_TOKEN token from an
    // earlier server instance) instead of falling back to a full handshake. That costs an extra
    // round trip per connection and breaks clients that reuse tokens; on a loopback benchmark
    // peer address validation buys nothing, so accept Initials directly.
    settings.disable_client_ip_validation = true;
    settings
}

async fn run(args: Args) -> anyhow::Result<()> {
    let creds = credentials(&args)?;

    let socket = tokio::net::UdpSocket::bind(args.listen)
        .await
        .with_context(|| format!("binding UDP {}", args.listen))?;
    let local_addr = socket.local_addr()?;

    let params = ConnectionParams::new_server(
        quic_settings(args.max_streams),
        TlsCertificatePaths {
            cert: &creds.cert,
            private_key: &creds.key,
            kind: CertificateKind::X509,
        },
        Hooks::default(),
    );
    // `listen` builds the quiche config (and so loads the certificate) right away, so a bad
    // certificate fails here, before we announce that we are listening.
    let mut accept_stream = tokio_quiche::listen([socket], params, DefaultMetrics)
        .with_context(|| {
            format!(
                "starting the QUIC listener (certificate {}, key {})",
                creds.cert, creds.key
            )
        })?
        .pop()
        .context("listen returned no accept stream")?;

    // Handlers go in before the announcement, so a test that signals us as soon as it reads the
    // line gets a clean exit rather than the default (fatal) signal disposition.
    let mut sigterm = signal(SignalKind::terminate()).context("installing the SIGTERM handler")?;
    let mut sigint = signal(SignalKind::interrupt()).context("installing the SIGINT handler")?;

    println!("tq-serve listening on {local_addr}");

    loop {
        tokio::select! {
            _ = sigint.recv() => break,
            _ = sigterm.recv() => break,
            next = accept_stream.next() => match next {
                Some(Ok(initial)) => {
                    let mut h3 = Http3Settings::default();
                    // SETTINGS_ENABLE_CONNECT_PROTOCOL, and with it tokio-quiche's flows.
                    h3.enable_extended_connect = true;
                    let (driver, controller) = ServerH3Driver::new(h3);
                    let conn = initial.start(driver);
                    tracing::debug!(peer = %conn.peer_addr(), "accepted connection");
                    tokio::spawn(serve_connection(controller));
                }
                // Errors on the accept stream concern one client's Initial, not the listener.
                Some(Err(error)) => tracing::debug!(%error, "rejected an inbound connection"),
                None => bail!("the QUIC listener stopped"),
            },
        }
    }

    tracing::info!("signal received, shutting down");
    drop(creds);
    Ok(())
}

/// Drains one connection's events, spawning a task per request.
///
/// The event channel must be read until it closes: it is unbounded, the driver keeps pushing
/// `BodyBytesReceived` notifications into it for every request body chunk, and dropping the
/// receiver makes the driver close the connection as soon as it is idle.
async fn serve_connection(mut controller: ServerH3Controller) {
    // tokio-quiche announces a flow (`NewFlow`) before the HEADERS of the CONNECT request that
    // carries it, and for any flow id a datagram names; a flow waits here until its request.
    let mut flows: HashMap<u64, Flow> = HashMap::new();
    let events = controller.event_receiver_mut();
    while let Some(event) = events.recv().await {
        match event {
            ServerH3Event::Headers {
                incoming_headers, ..
            } => {
                if is_connect_udp(&incoming_headers.headers) {
                    let flow = flows.remove(&(incoming_headers.stream_id / 4));
                    tokio::spawn(connect_udp(incoming_headers, flow));
                } else {
                    tokio::spawn(handle_request(incoming_headers));
                }
            }
            ServerH3Event::Core(H3Event::NewFlow {
                flow_id,
                send,
                recv,
            }) => {
                flows.insert(
                    flow_id,
                    Flow {
                        id: flow_id,
                        send,
                        recv,
                    },
                );
            }
            ServerH3Event::Core(H3Event::ConnectionError(error)) => {
                tracing::debug!(?error, "connection error");
            }
            ServerH3Event::Core(H3Event::ConnectionShutdown(error)) => {
                tracing::debug!(?error, "connection shut down");
            }
            ServerH3Event::Core(_) => {}
        }
    }
}

/// The routes this server knows.
enum Route {
    Hello,
    Bytes(u64),
    Echo,
    Discard,
    NotFound,
}

fn route(method: &[u8], path: &[u8]) -> Route {
    // The query string plays no part in routing.
    let path = path.split(|&b| b == b'?').next().unwrap_or_default();
    match (method, path) {
        (b"GET", b"/") => Route::Hello,
        (b"POST" | b"PUT", b"/echo") => Route::Echo,
        (b"POST" | b"PUT", b"/discard") => Route::Discard,
        (b"GET", p) => match p.strip_prefix(b"/bytes/").and_then(parse_decimal) {
            Some(n) if n <= MAX_BYTES => Route::Bytes(n),
            _ => Route::NotFound,
        },
        _ => Route::NotFound,
    }
}

/// Strict decimal: one or more ASCII digits, nothing else.
fn parse_decimal(digits: &[u8]) -> Option<u64> {
    if digits.is_empty() || !digits.iter().all(u8::is_ascii_digit) {
        return None;
    }
    std::str::from_utf8(digits).ok()?.parse().ok()
}

fn header<'h>(headers: &'h [Header], name: &[u8]) -> Option<&'h [u8]> {
    headers.iter().find(|h| h.name() == name).map(|h| h.value())
}

fn response_headers(status: &str, content_type: &str, length: Option<u64>) -> Vec<Header> {
    let mut headers = vec![
        Header::new(b":status", status.as_bytes()),
        Header::new(b"server", b"tq-serve"),
        Header::new(b"content-type", content_type.as_bytes()),
    ];
    if let Some(length) = length {
        headers.push(Header::new(
            b"content-length",
            length.to_string().as_bytes(),
        ));
    }
    headers
}

/// The response side is gone (peer reset or stopped the stream, or the connection closed).
#[derive(Debug)]
struct PeerGone;

async fn send(sender: &mut OutboundFrameSender, frame: OutboundFrame) -> Result<(), PeerGone> {
    // `PollSender` is a `Sink`: `send` first waits for a free slot in the stream's bounded
    // channel. The driver only takes the next frame off that channel once quiche has accepted
    // the previous one into the stream, so this await is the flow-control backpressure.
    sender.send(frame).await.map_err(|_| PeerGone)
}

async fn handle_request(request: IncomingH3Headers) {
    let IncomingH3Headers {
        stream_id,
        headers,
        send: mut sender,
        recv,
        read_fin,
        ..
    } = request;
    let method = header(&headers, b":method").unwrap_or_default();
    let path = header(&headers, b":path").unwrap_or_default();
    tracing::debug!(
        stream_id,
        method = %String::from_utf8_lossy(method),
        path = %String::from_utf8_lossy(path),
        "request"
    );

    let result = match route(method, path) {
        Route::Hello => send_static(&mut sender, "200", "text/plain", HELLO).await,
        Route::NotFound => send_static(&mut sender, "404", "text/plain", NOT_FOUND).await,
        Route::Bytes(n) => send_pattern(&mut sender, n).await,
        Route::Echo => echo(&mut sender, recv, read_fin).await,
        Route::Discard => discard(&mut sender, recv, read_fin).await,
    };
    if result.is_err() {
        tracing::debug!(stream_id, "peer went away mid-response");
    }
    // Dropping `sender` after a FIN is a no-op; without one (early return above) the driver
    // resets the stream, which is what an aborted response should look like.
}

async fn send_static(
    sender: &mut OutboundFrameSender,
    status: &str,
    content_type: &str,
    body: &'static [u8],
) -> Result<(), PeerGone> {
    let headers = response_headers(status, content_type, Some(body.len() as u64));
    send(sender, OutboundFrame::Headers(headers, None)).await?;
    send(sender, OutboundFrame::Body(Bytes::from_static(body), true)).await
}

async fn send_pattern(sender: &mut OutboundFrameSender, n: u64) -> Result<(), PeerGone> {
    let headers = response_headers("200", "application/octet-stream", Some(n));
    send(sender, OutboundFrame::Headers(headers, None)).await?;
    if n == 0 {
        // Headers never carry FIN in tokio-quiche; an empty body frame with FIN ends the stream.
        return send(sender, OutboundFrame::Body(Bytes::new(), true)).await;
    }
    let mut offset = 0u64;
    while offset < n {
        let len = CHUNK.min((n - offset) as usize);
        let start = (offset % PATTERN_PERIOD as u64) as usize;
        let chunk = PATTERN.slice(start..start + len);
        offset += len as u64;
        send(sender, OutboundFrame::Body(chunk, offset == n)).await?;
    }
    Ok(())
}

async fn echo(
    sender: &mut OutboundFrameSender,
    mut recv: InboundFrameStream,
    read_fin: bool,
) -> Result<(), PeerGone> {
    let headers = response_headers("200", "application/octet-stream", None);
    send(sender, OutboundFrame::Headers(headers, None)).await?;
    if read_fin {
        // The request had no body at all.
        return send(sender, OutboundFrame::Body(Bytes::new(), true)).await;
    }
    // The driver delivers the request body as `InboundFrame::Body` chunks and the end of it as a
    // final frame with `fin == true` (usually empty). Each chunk goes straight back out, so at
    // most a few chunks are ever held here; waiting on `send` also stops us from reading more,
    // which backs the request stream up into QUIC flow control.
    while let Some(frame) = recv.recv().await {
        match frame {
            InboundFrame::Body(data, fin) => {
                if fin || !data.is_empty() {
                    send(sender, OutboundFrame::Body(data.freeze(), fin)).await?;
                }
                if fin {
                    return Ok(());
                }
            }
            InboundFrame::Datagram(_) => {}
        }
    }
    // The channel closed without a FIN: the request stream was reset.
    Err(PeerGone)
}

/// Reads the request body to its end, counting it, and answers with the count.
async fn discard(
    sender: &mut OutboundFrameSender,
    mut recv: InboundFrameStream,
    read_fin: bool,
) -> Result<(), PeerGone> {
    let mut n = 0u64;
    if !read_fin {
        loop {
            match recv.recv().await {
                Some(InboundFrame::Body(data, fin)) => {
                    n += data.len() as u64;
                    if fin {
                        break;
                    }
                }
                Some(InboundFrame::Datagram(_)) => {}
                // The request stream was reset.
                None => return Err(PeerGone),
            }
        }
    }
    let body = format!("{n}\n");
    let headers = response_headers("200", "text/plain", Some(body.len() as u64));
    send(sender, OutboundFrame::Headers(headers, None)).await?;
    send(sender, OutboundFrame::Body(Bytes::from(body), true)).await
}

/// One HTTP datagram flow as tokio-quiche hands it over.
struct Flow {
    /// Its id: the quarter stream id of its CONNECT stream.
    id: u64,
    /// The connection's shared datagram queue.
    send: OutboundFrameSender,
    /// The flow's datagrams, quarter stream id removed.
    recv: InboundFrameStream,
}

/// Context id 0 (RFC 9298 §4): the datagram's payload is a UDP payload. One byte as a varint.
const UDP_PAYLOAD_CONTEXT: u8 = 0;
/// Bytes kept free in front of each datagram for the driver's quarter stream id (a varint of at
/// most 8 bytes), so it is prepended without moving the payload.
const QSID_HEADROOM: usize = 8;
/// Largest UDP payload relayed (a loopback datagram can be up to 64 KiB).
const MAX_UDP_PAYLOAD: usize = 65_527;

fn is_connect_udp(headers: &[Header]) -> bool {
    header(headers, b":method") == Some(b"CONNECT")
        && header(headers, b":protocol") == Some(b"connect-udp")
}

/// The target of an RFC 9298 default-template path, `/.well-known/masque/udp/{host}/{port}/`
/// (IPv6 literals percent-encoded, as the template's expansion requires). Only loopback
/// targets are relayed; `Err` carries the status and Proxy-Status error for a refusal.
fn udp_target(path: &[u8]) -> Result<SocketAddr, (&'static str, &'static str)> {
    const NOT_FOUND: (&str, &str) = ("404", "destination_not_found");
    let path = std::str::from_utf8(path).map_err(|_| NOT_FOUND)?;
    let rest = path
        .strip_prefix("/.well-known/masque/udp/")
        .ok_or(NOT_FOUND)?;
    let mut parts = rest.split('/');
    let (Some(host), Some(port), Some(""), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err(NOT_FOUND);
    };
    let host = percent_encoding::percent_decode_str(host)
        .decode_utf8()
        .map_err(|_| ("400", "http_request_error"))?;
    let port: u16 = match port.parse() {
        Ok(p) if p != 0 => p,
        _ => return Err(("400", "http_request_error")),
    };
    let ip: IpAddr = if host.eq_ignore_ascii_case("localhost") {
        Ipv4Addr::LOCALHOST.into()
    } else {
        host.parse()
            .map_err(|_| ("403", "destination_ip_prohibited"))?
    };
    if !ip.is_loopback() {
        return Err(("403", "destination_ip_prohibited"));
    }
    Ok(SocketAddr::new(ip, port))
}

/// Answers a CONNECT-UDP request with `status` and a Proxy-Status naming `error`, and ends it.
async fn refuse(sender: &mut OutboundFrameSender, status: &str, error: &str) {
    let headers = vec![
        Header::new(b":status", status.as_bytes()),
        Header::new(b"server", b"tq-serve"),
        Header::new(
            b"proxy-status",
            format!("tq-serve; error={error}").as_bytes(),
        ),
    ];
    if send(sender, OutboundFrame::Headers(headers, None))
        .await
        .is_ok()
    {
        let _ = send(sender, OutboundFrame::Body(Bytes::new(), true)).await;
    }
}

/// Serves one CONNECT-UDP request: relays between the flow and the target until the client
/// ends or resets the stream, or the connection goes.
async fn connect_udp(request: IncomingH3Headers, flow: Option<Flow>) {
    let IncomingH3Headers {
        stream_id,
        headers,
        send: mut sender,
        mut recv,
        ..
    } = request;
    let path = header(&headers, b":path").unwrap_or_default();
    let (target, flow) = match (udp_target(path), flow) {
        (Ok(target), Some(flow)) => (target, flow),
        (Err((status, error)), _) => return refuse(&mut sender, status, error).await,
        (Ok(_), None) => return refuse(&mut sender, "500", "proxy_internal_error").await,
    };
    let bind: SocketAddr = if target.is_ipv4() {
        (Ipv4Addr::LOCALHOST, 0).into()
    } else {
        (Ipv6Addr::LOCALHOST, 0).into()
    };
    let socket = match tokio::net::UdpSocket::bind(bind).await {
        Ok(s) if s.connect(target).await.is_ok() => s,
        _ => return refuse(&mut sender, "502", "connection_refused").await,
    };
    let ok = vec![
        Header::new(b":status", b"200"),
        Header::new(b"server", b"tq-serve"),
        Header::new(b"capsule-protocol", b"?1"),
    ];
    if send(&mut sender, OutboundFrame::Headers(ok, None))
        .await
        .is_err()
    {
        return;
    }
    tracing::debug!(stream_id, %target, "CONNECT-UDP flow open");

    let Flow {
        id: flow_id,
        send: mut datagrams,
        recv: mut inbound,
    } = flow;
    let mut buf = vec![0u8; QSID_HEADROOM + 1 + MAX_UDP_PAYLOAD];
    loop {
        tokio::select! {
            frame = inbound.recv() => match frame {
                Some(InboundFrame::Datagram(d)) => {
                    // Context id 0 only; a loopback send error (nobody listening) is the
                    // target's business, as with any UDP relay.
                    if let Some((&UDP_PAYLOAD_CONTEXT, payload)) = d.as_slice().split_first() {
                        let _ = socket.try_send(payload);
                    }
                }
                Some(InboundFrame::Body(..)) => {}
                None => break,
            },
            read = socket.recv(&mut buf[QSID_HEADROOM + 1..]) => {
                let Ok(n) = read else { continue };
                let mut v = Vec::with_capacity(QSID_HEADROOM + 1 + n);
                v.resize(QSID_HEADROOM, 0);
                v.push(UDP_PAYLOAD_CONTEXT);
                v.extend_from_slice(&buf[QSID_HEADROOM + 1..QSID_HEADROOM + 1 + n]);
                let d = DgramBuffer::from_vec_with_headroom(v, QSID_HEADROOM);
                if datagrams.send(OutboundFrame::Datagram(d, flow_id)).await.is_err() {
                    break;
                }
            }
            body = recv.recv() => match body {
                // Capsules on the stream are not read: tokio-quiche has no capsule support.
                Some(InboundFrame::Body(_, false)) => {}
                Some(InboundFrame::Body(_, true)) => {
                    // The client ended the tunnel: end ours and let the driver drop the flow.
                    let _ = send(&mut sender, OutboundFrame::Body(Bytes::new(), true)).await;
                    break;
                }
                Some(InboundFrame::Datagram(_)) => {}
                // Reset, or the connection is gone.
                None => break,
            },
        }
    }
    tracing::debug!(stream_id, "CONNECT-UDP flow closed");
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn routes() {
        assert!(matches!(route(b"GET", b"/"), Route::Hello));
        assert!(matches!(route(b"GET", b"/?x=1"), Route::Hello));
        assert!(matches!(route(b"GET", b"/bytes/0"), Route::Bytes(0)));
        assert!(matches!(
            route(b"GET", b"/bytes/10737418240"),
            Route::Bytes(MAX_BYTES)
        ));
        assert!(matches!(
            route(b"GET", b"/bytes/10737418241"),
            Route::NotFound
        ));
        assert!(matches!(route(b"GET", b"/bytes/+5"), Route::NotFound));
        assert!(matches!(route(b"GET", b"/bytes/"), Route::NotFound));
        assert!(matches!(route(b"POST", b"/echo"), Route::Echo));
        assert!(matches!(route(b"PUT", b"/echo"), Route::Echo));
        assert!(matches!(route(b"GET", b"/echo"), Route::NotFound));
        assert!(matches!(route(b"POST", b"/discard"), Route::Discard));
        assert!(matches!(route(b"PUT", b"/discard"), Route::Discard));
        assert!(matches!(route(b"GET", b"/discard"), Route::NotFound));
        assert!(matches!(route(b"POST", b"/"), Route::NotFound));
        assert!(matches!(route(b"GET", b"/nope"), Route::NotFound));
    }

    #[test]
    fn connect_udp_targets() {
        let t = |p: &str| udp_target(p.as_bytes());
        assert_eq!(
            t("/.well-known/masque/udp/127.0.0.1/443/"),
            Ok("127.0.0.1:443".parse().unwrap())
        );
        assert_eq!(
            t("/.well-known/masque/udp/localhost/53/"),
            Ok("127.0.0.1:53".parse().unwrap())
        );
        assert_eq!(
            t("/.well-known/masque/udp/%3A%3A1/9/"),
            Ok("[::1]:9".parse().unwrap())
        );
        assert_eq!(
            t("/.well-known/masque/udp/10.0.0.1/443/").unwrap_err().0,
            "403"
        );
        assert_eq!(
            t("/.well-known/masque/udp/example.com/443/").unwrap_err().0,
            "403"
        );
        assert_eq!(
            t("/.well-known/masque/udp/127.0.0.1/0/").unwrap_err().0,
            "400"
        );
        assert_eq!(
            t("/.well-known/masque/udp/127.0.0.1/x/").unwrap_err().0,
            "400"
        );
        assert_eq!(
            t("/.well-known/masque/udp/127.0.0.1/443").unwrap_err().0,
            "404"
        );
        assert_eq!(
            t("/.well-known/masque/udp/127.0.0.1/1/x/").unwrap_err().0,
            "404"
        );
        assert_eq!(t("/elsewhere").unwrap_err().0, "404");
    }

    #[test]
    fn pattern_slices_match_offsets() {
        for offset in [0u64, 1, 250, 251, 16384, 1_000_003] {
            let start = (offset % PATTERN_PERIOD as u64) as usize;
            let chunk = PATTERN.slice(start..start + CHUNK);
            for (i, b) in chunk.iter().enumerate() {
                assert_eq!(*b, ((offset + i as u64) % 251) as u8);
            }
        }
    }
}
