//! `tq-get`: a small HTTP/3 client built on tokio-quiche's client API (`connect_with_config` plus
//! its `ClientH3Driver`), used to have tokio-quiche's client talk to troupe's server.
//!
//! ```text
//! tq-get URL [--method M] [--data FILE] [--insecure] [-o FILE] [-n COUNT] [-H 'name: value']...
//!            [--fail] [--connect-timeout SECS]
//! ```
//!
//! * The response body goes to stdout, or to `-o FILE`.
//! * `status: NNN` is printed to stderr for every response.
//! * `--data FILE` streams the file as the request body (and makes the default method `POST`);
//!   the file is read in chunks as the connection's flow control allows, never loaded whole.
//! * `-n COUNT` sends the request COUNT times, one after the other, on one connection. Every
//!   response body is written to the output (so they are concatenated), and each prints its own
//!   `status:` line. With COUNT > 1 a final summary line
//!   `tq-get: COUNT requests, BYTES body bytes in SECS s` follows on stderr.
//! * Exit status: 0 when every exchange completed (whatever the HTTP status, as with curl),
//!   1 on any failure (connect/TLS error, reset stream, body shorter or longer than its
//!   `content-length`, I/O error). With `--fail`, a status of 400 or above also exits 1.
//! * `--insecure` turns certificate verification off. Without it the server certificate is
//!   verified against the system roots (BoringSSL's default paths, so `SSL_CERT_FILE=cert.pem`
//!   makes a self-signed `tq-serve` certificate verify) and the URL's host name; IP-literal
//!   hosts can only be used with `--insecure`.
//!
//! Logs go to stderr, filtered by `RUST_LOG` (default `warn`).

use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context as _};
use bytes::{Bytes, BytesMut};
use clap::Parser;
use futures::SinkExt as _;
use quiche::h3::{Header, NameValue as _};
use tokio::io::{AsyncRead, AsyncReadExt as _, AsyncWrite, AsyncWriteExt as _};
use tokio::net::UdpSocket;
use tokio::sync::mpsc::error::TryRecvError;
use tokio::sync::oneshot;
use tokio_quiche::http3::driver::{
    ClientEventStream, ClientH3Event, ClientRequestSender, H3Event, InboundFrame, NewClientRequest,
    OutboundFrame, OutboundFrameSender,
};
use tokio_quiche::http3::settings::Http3Settings;
use tokio_quiche::quic::{ConnectionShutdownBehaviour, QuicCommand};
use tokio_quiche::settings::{Hooks, QuicSettings};
use tokio_quiche::socket::Socket;
use tokio_quiche::{ClientH3Controller, ClientH3Driver, ConnectionParams, QuicConnection};

/// Request body chunk size read from `--data FILE`.
const CHUNK: usize = 32 * 1024;
/// HTTP/3 `H3_NO_ERROR`, used to close the connection at the end.
const H3_NO_ERROR: u64 = 0x100;

/// HTTP/3 client on tokio-quiche.
///
/// Writes response bodies to stdout (or -o FILE) and `status: NNN` per response to stderr.
/// With -n COUNT the request is repeated COUNT times sequentially on one connection: all bodies
/// are written to the output back to back, a `status:` line is printed per response and, for
/// COUNT > 1, a final summary line `tq-get: N requests, M body bytes in S s`. Exits 1 on any
/// failure (connection/TLS error, reset, body not matching content-length); HTTP error
/// statuses only count as failures with --fail. Without --insecure the server certificate is
/// checked against the system roots (BoringSSL honours SSL_CERT_FILE) and the URL's host name.
#[derive(Parser, Debug)]
#[command(name = "tq-get", version)]
struct Args {
    /// URL to fetch, `https://host[:port]/path` (port defaults to 443).
    url: String,
    /// Request method [default: GET, or POST with --data].
    #[arg(short = 'X', long, value_name = "M")]
    method: Option<String>,
    /// Stream this file as the request body.
    #[arg(short = 'd', long, value_name = "FILE")]
    data: Option<PathBuf>,
    /// Do not verify the server certificate.
    #[arg(short = 'k', long)]
    insecure: bool,
    /// Write response bodies to FILE instead of stdout.
    #[arg(short = 'o', long = "output", value_name = "FILE")]
    output: Option<PathBuf>,
    /// Send the request COUNT times, sequentially, on the same connection.
    #[arg(short = 'n', long = "count", value_name = "COUNT", default_value_t = 1,
          value_parser = clap::value_parser!(u64).range(1..))]
    count: u64,
    /// Extra request header, `name: value` (repeatable).
    #[arg(short = 'H', long = "header", value_name = "HEADER")]
    headers: Vec<String>,
    /// Exit with status 1 if a response status is 400 or above.
    #[arg(short = 'f', long)]
    fail: bool,
    /// Give up if the QUIC handshake has not completed within SECS seconds.
    #[arg(long, value_name = "SECS", default_value_t = 10)]
    connect_timeout: u64,
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

    // One thread, like tq-serve: the client's cost stays on one core when benchmarking.
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(error) => {
            eprintln!("tq-get: building the tokio runtime: {error}");
            std::process::exit(1);
        }
    };
    let result = runtime.block_on(run(args));
    // Don't wait for tokio-quiche's background tasks (the connection is closed by now).
    runtime.shutdown_background();
    if let Err(error) = result {
        eprintln!("tq-get: {error:#}");
        std::process::exit(1);
    }
}

/// The parts of an `https://` URL we need.
#[derive(Debug, PartialEq, Eq)]
struct Target {
    /// Host without brackets, for DNS and SNI.
    host: String,
    port: u16,
    /// `:authority`, as written in the URL.
    authority: String,
    /// `:path`, including any query string.
    path: String,
}

fn parse_url(url: &str) -> anyhow::Result<Target> {
    let rest = match url.split_once("://") {
        Some((scheme, rest)) if scheme.eq_ignore_ascii_case("https") => rest,
        Some((scheme, _)) => bail!("unsupported scheme {scheme:?}: HTTP/3 needs https://"),
        None => bail!("{url:?} is not a URL (expected https://host[:port]/path)"),
    };
    let (authority, path) = match rest.find(['/', '?', '#']) {
        Some(i) => (&rest[..i], &rest[i..]),
        None => (rest, ""),
    };
    let path = path.split('#').next().unwrap_or_default();
    let path = if path.starts_with('/') {
        path.to_string()
    } else {
        format!("/{path}")
    };
    if authority.contains('@') {
        bail!("user info in URLs is not supported");
    }

    let (host, port) = if let Some(bracketed) = authority.strip_prefix('[') {
        let (host, after) = bracketed
            .split_once(']')
            .ok_or_else(|| anyhow!("unterminated IPv6 address in {url:?}"))?;
        match after {
            "" => (host, None),
            _ => match after.strip_prefix(':') {
                Some(port) => (host, Some(port)),
                None => bail!("unexpected {after:?} after the IPv6 address"),
            },
        }
    } else {
        match authority.rsplit_once(':') {
            Some((host, port)) => (host, Some(port)),
            None => (authority, None),
        }
    };
    if host.is_empty() {
        bail!("no host in {url:?}");
    }
    let port = match port {
        None | Some("") => 443,
        Some(port) => port
            .parse()
            .with_context(|| format!("bad port {port:?} in {url:?}"))?,
    };
    Ok(Target {
        host: host.to_string(),
        port,
        authority: authority.to_string(),
        path,
    })
}

fn request_headers(
    args: &Args,
    target: &Target,
    body_len: Option<u64>,
) -> anyhow::Result<Vec<Header>> {
    let method = match (&args.method, body_len) {
        (Some(method), _) => method.as_str(),
        (None, Some(_)) => "POST",
        (None, None) => "GET",
    };
    let mut headers = vec![
        Header::new(b":method", method.as_bytes()),
        Header::new(b":scheme", b"https"),
        Header::new(b":authority", target.authority.as_bytes()),
        Header::new(b":path", target.path.as_bytes()),
        Header::new(b"user-agent", b"tq-get"),
    ];
    if let Some(len) = body_len {
        headers.push(Header::new(b"content-length", len.to_string().as_bytes()));
    }
    for extra in &args.headers {
        let (name, value) = extra
            .split_once(':')
            .ok_or_else(|| anyhow!("header {extra:?} is not `name: value`"))?;
        // HTTP/3 field names are lowercase.
        headers.push(Header::new(
            name.trim().to_ascii_lowercase().as_bytes(),
            value.trim().as_bytes(),
        ));
    }
    Ok(headers)
}

async fn run(args: Args) -> anyhow::Result<()> {
    let target = parse_url(&args.url)?;
    let body_len = match &args.data {
        Some(path) => Some(
            tokio::fs::metadata(path)
                .await
                .with_context(|| format!("reading {}", path.display()))?
                .len(),
        ),
        None => None,
    };
    let headers = request_headers(&args, &target, body_len)?;

    let peer = tokio::net::lookup_host((target.host.as_str(), target.port))
        .await
        .with_context(|| format!("resolving {}", target.host))?
        .next()
        .ok_or_else(|| anyhow!("{} resolved to no address", target.host))?;

    let output: Box<dyn AsyncWrite + Unpin + Send> = match &args.output {
        Some(path) => Box::new(
            tokio::fs::File::create(path)
                .await
                .with_context(|| format!("creating {}", path.display()))?,
        ),
        None => Box::new(tokio::io::stdout()),
    };
    let mut output = tokio::io::BufWriter::with_capacity(256 * 1024, output);

    let (conn, mut controller) = connect(&args, &target, peer).await?;
    let requests = controller.request_sender();
    let started = Instant::now();
    let outcome = exchanges(
        &args,
        &headers,
        &requests,
        controller.event_receiver_mut(),
        &conn,
        &mut output,
    )
    .await;
    // Whatever happened, keep what was received and close the connection properly.
    let flushed = output.flush().await.context("writing the response body");
    close(&mut controller).await;
    let (total, failed_status) = outcome?;
    flushed?;

    if args.count > 1 {
        eprintln!(
            "tq-get: {} requests, {total} body bytes in {:.3} s",
            args.count,
            started.elapsed().as_secs_f64()
        );
    }
    match failed_status {
        Some(status) if args.fail => bail!("the server answered {status}"),
        _ => Ok(()),
    }
}

/// Runs the `-n` exchanges one after the other. Returns the total body bytes and the first
/// status >= 400, if any.
async fn exchanges<W: AsyncWrite + Unpin>(
    args: &Args,
    headers: &[Header],
    requests: &ClientRequestSender,
    events: &mut ClientEventStream,
    conn: &QuicConnection,
    output: &mut W,
) -> anyhow::Result<(u64, Option<u16>)> {
    let head = headers
        .iter()
        .any(|h| h.name() == b":method" && h.value().eq_ignore_ascii_case(b"HEAD"));
    let mut total = 0u64;
    let mut failed_status = None;
    for request_id in 0..args.count {
        let exchange = Exchange {
            request_id,
            head,
            headers: headers.to_vec(),
            data: args.data.clone(),
        };
        let (status, len) = exchange
            .run(requests, events, conn, output)
            .await
            .with_context(|| format!("request {} of {}", request_id + 1, args.count))?;
        total += len;
        if status >= 400 {
            failed_status.get_or_insert(status);
        }
    }
    Ok((total, failed_status))
}

async fn connect(
    args: &Args,
    target: &Target,
    peer: SocketAddr,
) -> anyhow::Result<(QuicConnection, ClientH3Controller)> {
    let bind: SocketAddr = if peer.is_ipv4() {
        ([0, 0, 0, 0], 0).into()
    } else {
        ([0u16; 8], 0).into()
    };
    let socket = UdpSocket::bind(bind)
        .await
        .context("binding a UDP socket")?;
    socket
        .connect(peer)
        .await
        .with_context(|| format!("connecting the UDP socket to {peer}"))?;

    // SNI and certificate name checks only make sense for DNS names.
    let is_ip = target.host.parse::<IpAddr>().is_ok();
    if is_ip && !args.insecure {
        bail!(
            "cannot verify a certificate for the IP address {}: use a host name or --insecure",
            target.host
        );
    }
    let server_name = (!is_ip).then_some(target.host.as_str());

    let mut settings = QuicSettings::default();
    // tokio-quiche leaves quiche's default (no verification) unless this is set.
    settings.verify_peer = !args.insecure;
    settings.max_idle_timeout = Some(Duration::from_secs(30));
    settings.initial_max_data = 10 * 1024 * 1024;
    settings.initial_max_stream_data_bidi_local = 1024 * 1024;
    settings.initial_max_stream_data_bidi_remote = 1024 * 1024;
    settings.initial_max_stream_data_uni = 1024 * 1024;
    settings.initial_max_streams_bidi = 100;
    let timeout = Duration::from_secs(args.connect_timeout);
    settings.handshake_timeout = Some(timeout);
    let params = ConnectionParams::new_client(settings, None, Hooks::default());

    let (driver, controller) = ClientH3Driver::new(Http3Settings::default());
    let socket: Socket<Arc<UdpSocket>, Arc<UdpSocket>> =
        socket.try_into().context("wrapping the UDP socket")?;
    // On the client side tokio-quiche runs the whole handshake inside its packet router and
    // only hands the connection to the driver once it is established, so `connect_with_config`
    // returns after the handshake. Its own give-up time is the idle timeout (30 s), hence the
    // shorter overall limit here.
    let insecure = args.insecure;
    let conn = tokio::time::timeout(
        timeout,
        tokio_quiche::quic::connect_with_config(socket, server_name, &params, driver),
    )
    .await
    .map_err(|_| anyhow!("no handshake with {peer} within {} s", timeout.as_secs()))?
    .map_err(|error| {
        // Every failed client handshake (a TLS alert, a certificate that does not verify, a
        // CONNECTION_CLOSE from the server) comes back as an io::Error of kind TimedOut saying
        // "connection <scid> timed out", however quickly it happened; the TLS reason is lost.
        let hint = if insecure {
            ""
        } else {
            " (certificate verification is on: a self-signed or mismatched certificate fails \
             this way; --insecure skips verification)"
        };
        anyhow!("QUIC handshake with {peer} failed: {error}{hint}")
    })?;
    Ok((conn, controller))
}

/// Closes the connection with H3_NO_ERROR and waits (at most a second) for the driver to finish,
/// so the server sees a CONNECTION_CLOSE rather than having to wait for an idle timeout.
async fn close(controller: &mut ClientH3Controller) {
    let _ =
        controller
            .cmd_sender()
            .send(QuicCommand::ConnectionClose(ConnectionShutdownBehaviour {
                send_application_close: true,
                error_code: H3_NO_ERROR,
                reason: Vec::new(),
            }));
    // The driver, and with it the event sender, is dropped once quiche considers the connection
    // closed (after the closing period); the CONNECTION_CLOSE itself goes out right away.
    let events = controller.event_receiver_mut();
    let drained = async { while events.recv().await.is_some() {} };
    let _ = tokio::time::timeout(Duration::from_secs(1), drained).await;
}

/// Why the connection went away, from what tokio-quiche recorded.
fn close_reason(conn: &QuicConnection) -> String {
    let stats = conn.audit_log_stats();
    let mut parts = Vec::new();
    if let Some(reason) = stats.connection_close_reason().as_ref() {
        parts.push(format!("{reason}"));
    }
    let codes = [
        (
            "sent transport error",
            stats.sent_conn_close_transport_error_code(),
        ),
        (
            "received transport error",
            stats.recvd_conn_close_transport_error_code(),
        ),
        (
            "sent application error",
            stats.sent_conn_close_application_error_code(),
        ),
        (
            "received application error",
            stats.recvd_conn_close_application_error_code(),
        ),
    ];
    for (what, code) in codes {
        if code >= 0 {
            parts.push(format!("{what} {code:#x}"));
        }
    }
    if parts.is_empty() {
        "connection closed, no error recorded (idle timeout?)".to_string()
    } else {
        format!("connection closed ({})", parts.join(", "))
    }
}

/// The response body channel closed early: tell a reset stream from a dead connection. The
/// driver drops the body sender on RESET_STREAM, and drops everything when the connection
/// closes; the event channel says which.
fn why_body_ended(events: &mut ClientEventStream, stream_id: u64, conn: &QuicConnection) -> String {
    loop {
        match events.try_recv() {
            Ok(ClientH3Event::Core(H3Event::ResetStream { stream_id: id })) if id == stream_id => {
                return "the server reset the stream".to_string()
            }
            Ok(_) => {}
            Err(TryRecvError::Disconnected) => return close_reason(conn),
            Err(TryRecvError::Empty) => return "the stream was reset".to_string(),
        }
    }
}

/// One request/response exchange on the shared connection.
struct Exchange {
    request_id: u64,
    /// The method is HEAD: any content-length describes a body that is not sent.
    head: bool,
    headers: Vec<Header>,
    data: Option<PathBuf>,
}

impl Exchange {
    /// Sends the request and writes the response body to `output`. Returns the status and the
    /// number of body bytes.
    async fn run<W: AsyncWrite + Unpin>(
        self,
        requests: &ClientRequestSender,
        events: &mut ClientEventStream,
        conn: &QuicConnection,
        output: &mut W,
    ) -> anyhow::Result<(u16, u64)> {
        let (body_writer, body_task) = match self.data {
            Some(path) => {
                let (tx, rx) = oneshot::channel();
                (Some(tx), Some(tokio::spawn(send_body(path, rx))))
            }
            None => (None, None),
        };
        requests
            .send(NewClientRequest {
                request_id: self.request_id,
                headers: self.headers,
                body_writer,
            })
            .map_err(|_| anyhow!("{}", close_reason(conn)))?;

        // Wait for the stream id, then for the response headers.
        let mut stream_id = None;
        let response = loop {
            let event = events
                .recv()
                .await
                .ok_or_else(|| anyhow!("{}", close_reason(conn)))?;
            match event {
                ClientH3Event::NewOutboundRequest {
                    stream_id: id,
                    request_id,
                } if request_id == self.request_id => stream_id = Some(id),
                ClientH3Event::Core(H3Event::IncomingHeaders(headers))
                    if Some(headers.stream_id) == stream_id =>
                {
                    break headers
                }
                ClientH3Event::Core(H3Event::ResetStream { stream_id: id })
                    if Some(id) == stream_id =>
                {
                    bail!("the server reset the request stream")
                }
                ClientH3Event::Core(H3Event::ConnectionError(error)) => {
                    bail!("connection error: {error}")
                }
                ClientH3Event::Core(H3Event::ConnectionShutdown(error)) => {
                    bail!("connection shut down: {error:?}")
                }
                _ => {}
            }
        };
        let stream_id = response.stream_id;
        let mut recv = response.recv;
        // The driver hands us a clone of the request body sender too; holding on to it would
        // keep the request stream open if the body task died, so let it go.
        drop(response.send);

        let field = |name: &[u8]| {
            response
                .headers
                .iter()
                .find(|h| h.name() == name)
                .map(|h| String::from_utf8_lossy(h.value()).into_owned())
        };
        let status: u16 = field(b":status")
            .ok_or_else(|| anyhow!("response without :status"))?
            .parse()
            .context("bad :status")?;
        eprintln!("status: {status}");
        let content_length: Option<u64> = match field(b"content-length") {
            Some(v) => Some(v.parse().context("bad content-length")?),
            None => None,
        };

        let mut received = 0u64;
        if !response.read_fin {
            // The body arrives on `recv` as `InboundFrame::Body(chunk, fin)`; the last frame has
            // `fin == true` (often with an empty chunk). The channel closing before that means
            // the stream was reset or the connection died.
            let mut events_open = true;
            loop {
                tokio::select! {
                    biased;
                    frame = recv.recv() => match frame {
                        Some(InboundFrame::Body(chunk, fin)) => {
                            received += chunk.len() as u64;
                            output.write_all(&chunk).await.context("writing the response body")?;
                            if fin {
                                break;
                            }
                        }
                        Some(InboundFrame::Datagram(_)) => {}
                        None => bail!(
                            "response body ended after {received} bytes without FIN: {}",
                            why_body_ended(events, stream_id, conn)
                        ),
                    },
                    // Keep draining the (unbounded) event channel: the driver posts a
                    // `BodyBytesReceived` event for every chunk it reads.
                    event = events.recv(), if events_open => match event {
                        Some(ClientH3Event::Core(H3Event::ResetStream { stream_id: id }))
                            if id == stream_id =>
                        {
                            bail!("the server reset the stream after {received} body bytes")
                        }
                        Some(_) => {}
                        // The driver is gone; `recv` ends once it is drained.
                        None => events_open = false,
                    },
                }
            }
        }
        // HEAD responses and 204/304 carry the length of a body that is not sent.
        let bodyless = self.head || status == 204 || status == 304;
        if let Some(expected) = content_length.filter(|_| !bodyless) {
            if expected != received {
                bail!("content-length was {expected} but the body had {received} bytes");
            }
        }

        if let Some(task) = body_task {
            // A complete response before the whole request body went out (e.g. a 404 that
            // never reads it): stop uploading. Dropping the body sender without FIN makes the
            // driver reset our side of the stream.
            if !task.is_finished() {
                task.abort();
            }
            match task.await {
                Ok(Ok(())) => {}
                // The server stopped reading the body (STOP_SENDING): its answer still stands.
                Ok(Err(error)) if error.is::<BodyRejected>() => {}
                Ok(Err(error)) => return Err(error.context("sending the request body")),
                Err(error) if error.is_cancelled() => {}
                Err(error) => bail!("request body task failed: {error}"),
            }
        }
        Ok((status, received))
    }
}

/// The request stream stopped taking body data.
#[derive(Debug)]
struct BodyRejected;

impl std::fmt::Display for BodyRejected {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("the server stopped reading the request body")
    }
}

impl std::error::Error for BodyRejected {}

/// Streams `path` into the request body. The last chunk carries FIN; only an empty file needs
/// an empty FIN frame.
async fn send_body(
    path: PathBuf,
    writer: oneshot::Receiver<OutboundFrameSender>,
) -> anyhow::Result<()> {
    let mut file = tokio::fs::File::open(&path)
        .await
        .with_context(|| format!("opening {}", path.display()))?;
    // The driver passes the sender once it has opened the request stream.
    let mut sender = writer.await.map_err(|_| BodyRejected)?;
    let mut pending = read_chunk(&mut file).await?;
    loop {
        let next = if pending.is_empty() {
            Bytes::new()
        } else {
            read_chunk(&mut file).await?
        };
        let fin = next.is_empty();
        // Waits for room in the stream's bounded channel, which the driver only drains as
        // quiche accepts data: that is the upload's backpressure.
        sender
            .send(OutboundFrame::Body(pending, fin))
            .await
            .map_err(|_| BodyRejected)?;
        if fin {
            return Ok(());
        }
        pending = next;
    }
}

async fn read_chunk<R: AsyncRead + Unpin>(file: &mut R) -> anyhow::Result<Bytes> {
    let mut buf = BytesMut::with_capacity(CHUNK);
    while buf.len() < CHUNK {
        if file
            .read_buf(&mut buf)
            .await
            .context("reading the request body")?
            == 0
        {
            break;
        }
    }
    Ok(buf.freeze())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t(host: &str, port: u16, authority: &str, path: &str) -> Target {
        Target {
            host: host.into(),
            port,
            authority: authority.into(),
            path: path.into(),
        }
    }

    #[test]
    fn urls() {
        assert_eq!(
            parse_url("https://127.0.0.1:4433/bytes/5").unwrap(),
            t("127.0.0.1", 4433, "127.0.0.1:4433", "/bytes/5")
        );
        assert_eq!(
            parse_url("https://localhost").unwrap(),
            t("localhost", 443, "localhost", "/")
        );
        assert_eq!(
            parse_url("https://[::1]:8443?x=1#frag").unwrap(),
            t("::1", 8443, "[::1]:8443", "/?x=1")
        );
        assert_eq!(
            parse_url("HTTPS://example.com/a?b#c").unwrap(),
            t("example.com", 443, "example.com", "/a?b")
        );
        assert!(parse_url("http://127.0.0.1/").is_err());
        assert!(parse_url("127.0.0.1:4433/").is_err());
        assert!(parse_url("https://:4433/").is_err());
        assert!(parse_url("https://h:99999/").is_err());
    }
}
