//! `tq-udp`: a CONNECT-UDP client (RFC 9298) built on tokio-quiche's client API, used to have
//! tokio-quiche's client side talk to `troupe proxy`, and as the load generator of the
//! CONNECT-UDP benchmark.
//!
//! ```text
//! tq-udp --proxy HOST:PORT --target HOST:PORT [--count N] [--min-size B] [--max-size B]
//!        [--window W] [--token T] [--insecure] [--allow-loss]
//! tq-udp --direct --target HOST:PORT ...
//! ```
//!
//! It opens one tunnel (extended CONNECT with `:protocol connect-udp` to the default template
//! `/.well-known/masque/udp/{host}/{port}/`), then sends `--count` datagrams to the target, which
//! must echo them, keeping at most `--window` unanswered. Datagram `seq` is
//! `size(seq) = min + (seq * 7919) % (max - min + 1)` bytes long, starts with `seq` (4 bytes,
//! big endian) and goes on with bytes derived from `seq`, so every echo is checked byte for byte.
//! When no echo has come for [`LOSS_TIMEOUT`], the unanswered ones are counted lost and sending
//! goes on. `--direct` sends the same datagrams straight to the target over plain UDP, which is
//! the baseline a proxy is measured against.
//!
//! It prints one line to stdout:
//! `tq-udp: sent=N received=M lost=L corrupt=C secs=S rate=R` (R: echoes per second). The exit
//! status is 0 when every echo came back intact, or, with `--allow-loss`, when none was corrupt.
//! A refused tunnel exits 1 with the status and Proxy-Status on stderr.

use std::collections::HashSet;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context as _};
use bytes::Bytes;
use clap::Parser;
use futures::SinkExt as _;
use quiche::h3::{Header, NameValue as _};
use tokio::net::UdpSocket;
use tokio::sync::oneshot;
use tokio_quiche::datagram_socket::DgramBuffer;
use tokio_quiche::http3::driver::{
    ClientH3Event, H3Event, InboundFrame, InboundFrameStream, NewClientRequest, OutboundFrame,
    OutboundFrameSender,
};
use tokio_quiche::http3::settings::Http3Settings;
use tokio_quiche::quic::{ConnectionShutdownBehaviour, QuicCommand};
use tokio_quiche::settings::{Hooks, QuicSettings};
use tokio_quiche::socket::Socket;
use tokio_quiche::{ClientH3Controller, ClientH3Driver, ConnectionParams};

/// How long without any echo before the unanswered datagrams are counted lost. Far above a
/// loopback round trip (tens of microseconds), so only real loss trips it.
const LOSS_TIMEOUT: Duration = Duration::from_millis(200);
/// HTTP/3 `H3_NO_ERROR`, used to close the connection at the end.
const H3_NO_ERROR: u64 = 0x100;
/// Context id 0 (RFC 9298 §4): the datagram carries a UDP payload. One byte as a varint.
const UDP_PAYLOAD_CONTEXT: u8 = 0;
/// Bytes kept free in front of each datagram for the driver's quarter stream id.
const QSID_HEADROOM: usize = 8;

/// CONNECT-UDP client on tokio-quiche: sends datagrams to an echoing target through a proxy
/// and checks every echo.
#[derive(Parser, Debug)]
#[command(name = "tq-udp", version)]
struct Args {
    /// The proxy, HOST:PORT (required unless --direct).
    #[arg(long, required_unless_present = "direct")]
    proxy: Option<String>,
    /// The target, an echo server: IP:PORT (IPv6 in brackets).
    #[arg(long)]
    target: SocketAddr,
    /// Send to the target over plain UDP, without a proxy (the baseline).
    #[arg(long)]
    direct: bool,
    /// Datagrams to send.
    #[arg(long, default_value_t = 10_000)]
    count: u32,
    /// Smallest payload, in bytes (at least 4: the sequence number).
    #[arg(long, default_value_t = 4)]
    min_size: usize,
    /// Largest payload, in bytes.
    #[arg(long, default_value_t = 1200)]
    max_size: usize,
    /// Datagrams sent and not yet echoed, at most.
    #[arg(long, default_value_t = 32)]
    window: usize,
    /// Bearer token for the proxy.
    #[arg(long)]
    token: Option<String>,
    /// Do not verify the proxy's certificate.
    #[arg(long)]
    insecure: bool,
    /// Exit 0 despite lost datagrams (corrupt ones still fail).
    #[arg(long)]
    allow_loss: bool,
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
    let result = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("building the tokio runtime")
        .and_then(|runtime| runtime.block_on(run(args)));
    match result {
        Ok(true) => {}
        Ok(false) => std::process::exit(1),
        Err(error) => {
            eprintln!("tq-udp: {error:#}");
            std::process::exit(1);
        }
    }
}

/// Length of datagram `seq`.
fn size_of(seq: u32, min: usize, max: usize) -> usize {
    min + (seq as usize).wrapping_mul(7919) % (max - min + 1)
}

/// The payload of datagram `seq`: `seq` big endian, then bytes derived from it.
fn payload(seq: u32, len: usize) -> Vec<u8> {
    let mut p = Vec::with_capacity(len);
    p.extend_from_slice(&seq.to_be_bytes());
    p.extend((4..len).map(|i| (seq as usize).wrapping_mul(31).wrapping_add(i) as u8));
    p
}

/// The echo's sequence number, if it is exactly a datagram we sent.
fn check(echo: &[u8], min: usize, max: usize) -> Option<u32> {
    let seq = u32::from_be_bytes(echo.get(..4)?.try_into().ok()?);
    (echo == payload(seq, size_of(seq, min, max)).as_slice()).then_some(seq)
}

/// Where datagrams go: straight to the target, or through a tunnel.
enum Pipe {
    Direct(UdpSocket),
    Tunnel(Tunnel),
}

struct Tunnel {
    controller: ClientH3Controller,
    flow_id: u64,
    datagrams: OutboundFrameSender,
    inbound: InboundFrameStream,
    body: OutboundFrameSender,
}

impl Pipe {
    async fn send(&mut self, payload: &[u8]) -> anyhow::Result<()> {
        match self {
            Pipe::Direct(s) => {
                // A full socket buffer loses the datagram, as the network would.
                let _ = s.send(payload).await;
                Ok(())
            }
            Pipe::Tunnel(t) => {
                let mut v = Vec::with_capacity(QSID_HEADROOM + 1 + payload.len());
                v.resize(QSID_HEADROOM, 0);
                v.push(UDP_PAYLOAD_CONTEXT);
                v.extend_from_slice(payload);
                let d = DgramBuffer::from_vec_with_headroom(v, QSID_HEADROOM);
                t.datagrams
                    .send(OutboundFrame::Datagram(d, t.flow_id))
                    .await
                    .map_err(|_| anyhow!("the connection closed"))
            }
        }
    }

    async fn recv(&mut self, buf: &mut [u8]) -> anyhow::Result<Vec<u8>> {
        match self {
            Pipe::Direct(s) => {
                let n = s.recv(buf).await?;
                Ok(buf[..n].to_vec())
            }
            Pipe::Tunnel(t) => loop {
                let events = t.controller.event_receiver_mut();
                tokio::select! {
                    frame = t.inbound.recv() => match frame {
                        Some(InboundFrame::Datagram(d)) => {
                            if let Some((&UDP_PAYLOAD_CONTEXT, p)) = d.as_slice().split_first() {
                                return Ok(p.to_vec());
                            }
                        }
                        Some(InboundFrame::Body(..)) => {}
                        None => bail!("the proxy closed the flow"),
                    },
                    // The event channel is unbounded: keep it drained.
                    event = events.recv() => match event {
                        Some(ClientH3Event::Core(H3Event::ResetStream { stream_id })) =>
                            bail!("the proxy reset the tunnel's stream {stream_id}"),
                        Some(ClientH3Event::Core(H3Event::ConnectionShutdown(e))) =>
                            bail!("the connection shut down: {e:?}"),
                        Some(_) => {}
                        None => bail!("the connection closed"),
                    },
                }
            },
        }
    }
}

async fn run(args: Args) -> anyhow::Result<bool> {
    if args.min_size < 4 || args.min_size > args.max_size || args.max_size > 65_000 {
        bail!("sizes must satisfy 4 <= --min-size <= --max-size <= 65000");
    }
    if args.window == 0 {
        bail!("--window must be at least 1");
    }
    let mut pipe = if args.direct {
        let bind: SocketAddr = if args.target.is_ipv4() {
            ([127, 0, 0, 1], 0).into()
        } else {
            ([0u16, 0, 0, 0, 0, 0, 0, 1], 0).into()
        };
        let s = UdpSocket::bind(bind).await?;
        s.connect(args.target).await?;
        Pipe::Direct(s)
    } else {
        Pipe::Tunnel(open(&args).await?)
    };

    let (min, max) = (args.min_size, args.max_size);
    let mut in_flight: HashSet<u32> = HashSet::with_capacity(args.window);
    let (mut next, mut received, mut lost, mut corrupt) = (0u32, 0u64, 0u64, 0u64);
    let mut buf = vec![0u8; 65_536];
    let start = Instant::now();
    while next < args.count || !in_flight.is_empty() {
        while next < args.count && in_flight.len() < args.window {
            pipe.send(&payload(next, size_of(next, min, max))).await?;
            in_flight.insert(next);
            next += 1;
        }
        match tokio::time::timeout(LOSS_TIMEOUT, pipe.recv(&mut buf)).await {
            Ok(echo) => match check(&echo?, min, max) {
                Some(seq) if in_flight.remove(&seq) => received += 1,
                // A duplicate, or one already counted lost.
                Some(_) => {}
                None => corrupt += 1,
            },
            Err(_) => {
                lost += in_flight.len() as u64;
                in_flight.clear();
            }
        }
    }
    let secs = start.elapsed().as_secs_f64();
    println!(
        "tq-udp: sent={} received={received} lost={lost} corrupt={corrupt} secs={secs:.3} rate={:.0}",
        args.count,
        received as f64 / secs
    );
    if let Pipe::Tunnel(t) = pipe {
        close(t).await;
    }
    Ok(corrupt == 0 && (lost == 0 || args.allow_loss))
}

/// Connects to the proxy and opens the tunnel.
async fn open(args: &Args) -> anyhow::Result<Tunnel> {
    let proxy = args.proxy.as_deref().unwrap_or_default();
    let (host, _) = proxy
        .rsplit_once(':')
        .with_context(|| format!("--proxy {proxy:?} is not HOST:PORT"))?;
    let host = host.trim_start_matches('[').trim_end_matches(']');
    let peer = tokio::net::lookup_host(proxy)
        .await
        .with_context(|| format!("resolving {proxy}"))?
        .next()
        .with_context(|| format!("{proxy} resolves to no address"))?;
    let is_ip = host.parse::<IpAddr>().is_ok();
    if is_ip && !args.insecure {
        bail!(
            "cannot verify a certificate for the IP address {host}: use a host name or --insecure"
        );
    }
    let bind: SocketAddr = if peer.is_ipv4() {
        ([0, 0, 0, 0], 0).into()
    } else {
        ([0u16; 8], 0).into()
    };
    let socket = UdpSocket::bind(bind)
        .await
        .context("binding a UDP socket")?;
    socket.connect(peer).await?;

    let mut settings = QuicSettings::default();
    settings.verify_peer = !args.insecure;
    settings.max_idle_timeout = Some(Duration::from_secs(30));
    settings.handshake_timeout = Some(Duration::from_secs(5));
    // The default 0 would leave the connect-udp request stream without credit for capsules.
    settings.initial_max_stream_data_bidi_local = 1024 * 1024;
    settings.initial_max_data = 10 * 1024 * 1024;
    let params = ConnectionParams::new_client(settings, None, Hooks::default());
    let (driver, mut controller) = ClientH3Driver::new(Http3Settings::default());
    let socket: Socket<Arc<UdpSocket>, Arc<UdpSocket>> =
        socket.try_into().context("wrapping the UDP socket")?;
    let server_name = (!is_ip).then_some(host);
    tokio::time::timeout(
        Duration::from_secs(5),
        tokio_quiche::quic::connect_with_config(socket, server_name, &params, driver),
    )
    .await
    .map_err(|_| anyhow!("no handshake with {peer} within 5 s"))?
    .map_err(|e| anyhow!("QUIC handshake with {peer} failed: {e}"))?;

    let target = args.target;
    let target_host = match target.ip() {
        IpAddr::V4(v4) => v4.to_string(),
        // RFC 9298 §2: the template's expansion percent-encodes the colons of an IPv6 literal.
        IpAddr::V6(v6) => v6.to_string().replace(':', "%3A"),
    };
    let path = format!("/.well-known/masque/udp/{target_host}/{}/", target.port());
    let mut headers = vec![
        Header::new(b":method", b"CONNECT"),
        Header::new(b":protocol", b"connect-udp"),
        Header::new(b":scheme", b"https"),
        Header::new(b":authority", proxy.as_bytes()),
        Header::new(b":path", path.as_bytes()),
        Header::new(b"capsule-protocol", b"?1"),
    ];
    if let Some(t) = &args.token {
        headers.push(Header::new(
            b"authorization",
            format!("Bearer {t}").as_bytes(),
        ));
    }
    let (body_tx, body_rx) = oneshot::channel();
    controller
        .request_sender()
        .send(NewClientRequest {
            request_id: 0,
            headers,
            // A body writer keeps the request stream open: the tunnel lives as long as it.
            body_writer: Some(body_tx),
        })
        .map_err(|_| anyhow!("the connection closed before the request"))?;

    let mut flow = None;
    let mut stream = None;
    let events = controller.event_receiver_mut();
    let (status, proxy_status) = loop {
        let event = tokio::time::timeout(Duration::from_secs(5), events.recv())
            .await
            .map_err(|_| anyhow!("no response from the proxy within 5 s"))?
            .ok_or_else(|| anyhow!("the connection closed before the response"))?;
        match event {
            ClientH3Event::Core(H3Event::NewFlow {
                flow_id,
                send,
                recv,
            }) => flow = Some((flow_id, send, recv)),
            ClientH3Event::NewOutboundRequest { stream_id, .. } => stream = Some(stream_id),
            ClientH3Event::Core(H3Event::IncomingHeaders(h)) if Some(h.stream_id) == stream => {
                let status = h
                    .headers
                    .iter()
                    .find(|x| x.name() == b":status")
                    .map(|x| String::from_utf8_lossy(x.value()).into_owned())
                    .unwrap_or_default();
                let ps = h
                    .headers
                    .iter()
                    .find(|x| x.name() == b"proxy-status")
                    .map(|x| String::from_utf8_lossy(x.value()).into_owned());
                break (status, ps);
            }
            ClientH3Event::Core(H3Event::ResetStream { stream_id })
                if Some(stream_id) == stream =>
            {
                bail!("the proxy reset the request stream")
            }
            ClientH3Event::Core(H3Event::ConnectionShutdown(e)) => {
                bail!("the connection shut down: {e:?}")
            }
            _ => {}
        }
    };
    if !status.starts_with('2') {
        bail!(
            "the proxy refused the tunnel: {status}{}",
            proxy_status
                .map(|p| format!(" (Proxy-Status: {p})"))
                .unwrap_or_default()
        );
    }
    let (flow_id, datagrams, inbound) =
        flow.ok_or_else(|| anyhow!("tokio-quiche made no flow for the CONNECT stream"))?;
    let body = body_rx
        .await
        .map_err(|_| anyhow!("the request's body writer never came"))?;
    Ok(Tunnel {
        controller,
        flow_id,
        datagrams,
        inbound,
        body,
    })
}

/// Ends the tunnel (FIN on its stream), then closes the connection with H3_NO_ERROR and waits
/// (at most a second) for the driver to finish.
async fn close(mut t: Tunnel) {
    let _ = t.body.send(OutboundFrame::Body(Bytes::new(), true)).await;
    let _ =
        t.controller
            .cmd_sender()
            .send(QuicCommand::ConnectionClose(ConnectionShutdownBehaviour {
                send_application_close: true,
                error_code: H3_NO_ERROR,
                reason: Vec::new(),
            }));
    let events = t.controller.event_receiver_mut();
    let drained = async { while events.recv().await.is_some() {} };
    let _ = tokio::time::timeout(Duration::from_secs(1), drained).await;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_cover_the_range() {
        let sizes: Vec<usize> = (0..10_000).map(|s| size_of(s, 4, 1200)).collect();
        assert_eq!(*sizes.iter().min().unwrap(), 4);
        assert_eq!(*sizes.iter().max().unwrap(), 1200);
        assert_eq!(size_of(7, 9, 9), 9);
    }

    #[test]
    fn echoes_are_checked_byte_for_byte() {
        for seq in [0u32, 1, 3, 9_999, u32::MAX] {
            let p = payload(seq, size_of(seq, 4, 1200));
            assert_eq!(check(&p, 4, 1200), Some(seq));
            let mut bad = p.clone();
            *bad.last_mut().unwrap() ^= 1;
            if bad.len() > 4 {
                assert_eq!(check(&bad, 4, 1200), None);
            }
            assert_eq!(check(&p[..p.len() - 1], 4, 1200), None);
        }
        assert_eq!(check(&[], 4, 1200), None);
        assert_eq!(check(&[0, 0, 0], 4, 1200), None);
    }
}
