//! The client side of CONNECT-UDP: open a UDP tunnel through a proxy on an HTTP/3 connection,
//! then send and receive the target's datagrams. Payloads go in QUIC DATAGRAM frames when the
//! proxy takes HTTP datagrams and they fit, else in DATAGRAM capsules on the CONNECT stream.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use bytes::{Bytes, BytesMut};
use http::{header, Method, Request, StatusCode};
use tokio::sync::mpsc;
use troupe_h3::datagram::{prefix, split_context, UDP_PAYLOAD_CONTEXT};
use troupe_h3::headers::Protocol;
use troupe_h3::{
    Body, BodySender, Client, DatagramFlow, DatagramSink, FlowEnd, PeerDatagrams, RecvBody,
    RequestError, StreamControl, TrySend,
};

use crate::capsule::{datagram_header, CapsuleReader};
use crate::proxy::CONNECT_UDP;
use crate::template::{TargetHost, UdpTemplate};

/// Datagrams received from the proxy and not yet taken by [`UdpTunnel::recv`], at most; later
/// ones are dropped and counted ([`TunnelStats::dropped_in`]).
pub const TUNNEL_QUEUE: usize = 4096;

/// Why a tunnel could not be opened or used.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum TunnelError {
    /// The proxy did not advertise extended CONNECT (SETTINGS_ENABLE_CONNECT_PROTOCOL).
    #[error("the proxy does not accept extended CONNECT (no SETTINGS_ENABLE_CONNECT_PROTOCOL): it is not a CONNECT-UDP proxy")]
    NoExtendedConnect,
    /// The request failed.
    #[error("CONNECT-UDP request failed: {0}")]
    Request(#[from] RequestError),
    /// The proxy refused.
    #[error("the proxy refused the tunnel: {status}{}{}", proxy_status.as_ref().map(|p| format!(" (Proxy-Status: {p})")).unwrap_or_default(), if body.is_empty() { String::new() } else { format!(": {}", body.trim()) })]
    Refused {
        /// Its status.
        status: StatusCode,
        /// Its Proxy-Status header.
        proxy_status: Option<String>,
        /// Its body, as text.
        body: String,
    },
    /// The tunnel is closed.
    #[error("the tunnel is closed")]
    Closed,
}

/// A tunnel's counters.
#[derive(Debug, Default)]
pub struct TunnelStats {
    /// Payloads sent in QUIC DATAGRAM frames.
    pub sent_datagrams: AtomicU64,
    /// Payloads sent in DATAGRAM capsules.
    pub sent_capsules: AtomicU64,
    /// Payloads not sent: the capsule queue was full.
    pub dropped_out: AtomicU64,
    /// Payloads received (frames and capsules).
    pub received: AtomicU64,
    /// Payloads received and dropped: the receive queue was full, or a context id other
    /// than 0.
    pub dropped_in: AtomicU64,
}

/// Where the connection delivers the tunnel's datagrams.
struct Inbox {
    tx: mpsc::Sender<Bytes>,
    stats: Arc<TunnelStats>,
}

impl Inbox {
    fn take(&self, batch: Vec<Bytes>) -> bool {
        for d in batch {
            self.stats.received.fetch_add(1, Ordering::Relaxed);
            match split_context(d) {
                Ok((UDP_PAYLOAD_CONTEXT, p)) => match self.tx.try_send(p) {
                    Ok(()) => {}
                    Err(mpsc::error::TrySendError::Full(_)) => {
                        self.stats.dropped_in.fetch_add(1, Ordering::Relaxed);
                    }
                    Err(mpsc::error::TrySendError::Closed(_)) => return false,
                },
                _ => {
                    self.stats.dropped_in.fetch_add(1, Ordering::Relaxed);
                }
            }
        }
        true
    }
}

impl DatagramSink for Inbox {
    fn deliver(&self, batch: Vec<Bytes>) -> bool {
        self.take(batch)
    }
    fn close(&self, _why: FlowEnd) {}
}

/// A UDP tunnel through a CONNECT-UDP proxy.
pub struct UdpTunnel {
    flow: DatagramFlow,
    control: StreamControl,
    capsules: BodySender,
    rx: mpsc::Receiver<Bytes>,
    stats: Arc<TunnelStats>,
    reader: tokio::task::JoinHandle<()>,
}

impl std::fmt::Debug for UdpTunnel {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("UdpTunnel")
            .field("stream_id", &self.flow.stream_id())
            .finish()
    }
}

impl UdpTunnel {
    /// Opens a tunnel to `host:port` through the proxy that `client` is connected to, whose
    /// authority (for `:authority`) is `authority` and whose URI template is `template`,
    /// sending `token` as a bearer token if given.
    pub async fn open(
        client: &Client,
        authority: &str,
        template: &UdpTemplate,
        host: &TargetHost,
        port: u16,
        token: Option<&str>,
    ) -> Result<UdpTunnel, TunnelError> {
        // RFC 9220: no :protocol before the proxy said it takes extended CONNECT.
        let settings = client.peer_settings().await.ok_or(TunnelError::Closed)?;
        if !settings.enable_connect_protocol() {
            return Err(TunnelError::NoExtendedConnect);
        }
        let path = template.expand(host, port);
        let (capsules, body) = Body::channel(256);
        let mut req = Request::builder()
            .method(Method::CONNECT)
            .uri(format!("https://{authority}{path}"))
            .header("capsule-protocol", "?1");
        if let Some(t) = token {
            req = req.header(header::AUTHORIZATION, format!("Bearer {t}"));
        }
        let mut req = req
            .body(body)
            .map_err(|e| RequestError::InvalidRequest(e.to_string()))?;
        req.extensions_mut().insert(Protocol(CONNECT_UDP.into()));
        let resp = client.send(req).await?;
        let status = resp.status();
        if !status.is_success() {
            let proxy_status = resp
                .headers()
                .get("proxy-status")
                .and_then(|v| v.to_str().ok())
                .map(String::from);
            let text = resp.into_body().collect().await.unwrap_or_default();
            return Err(TunnelError::Refused {
                status,
                proxy_status,
                body: String::from_utf8_lossy(&text).into_owned(),
            });
        }
        let (Some(flow), Some(control)) = (
            resp.extensions().get::<DatagramFlow>().cloned(),
            resp.extensions().get::<StreamControl>().cloned(),
        ) else {
            return Err(TunnelError::Closed);
        };
        let stats = Arc::new(TunnelStats::default());
        let (tx, rx) = mpsc::channel(TUNNEL_QUEUE);
        let inbox = Arc::new(Inbox {
            tx,
            stats: stats.clone(),
        });
        flow.attach(inbox.clone());
        let reader = tokio::spawn(read_capsules(resp.into_body(), inbox));
        Ok(UdpTunnel {
            flow,
            control,
            capsules,
            rx,
            stats,
            reader,
        })
    }

    /// Sends one UDP payload to the target. It goes in a QUIC DATAGRAM frame when the proxy
    /// takes HTTP datagrams and it fits, else in a DATAGRAM capsule; a capsule that finds the
    /// queue full is dropped and counted. Errs once the tunnel is closed.
    pub fn send(&self, payload: &[u8]) -> Result<(), TunnelError> {
        let frames = self.flow.connection().peer() == PeerDatagrams::Supported;
        let ctx = prefix(None, UDP_PAYLOAD_CONTEXT);
        if frames && ctx.len() + payload.len() <= self.flow.max_payload() {
            // One copy, straight into the frame quiche will send.
            let frame = self.flow.frame(UDP_PAYLOAD_CONTEXT, payload);
            if !self.flow.send_frames(vec![frame]) {
                return Err(TunnelError::Closed);
            }
            self.stats.sent_datagrams.fetch_add(1, Ordering::Relaxed);
            return Ok(());
        }
        let len = ctx.len() + payload.len();
        let mut c = BytesMut::with_capacity(9 + len);
        c.extend_from_slice(&datagram_header(len));
        c.extend_from_slice(&ctx);
        c.extend_from_slice(payload);
        match self.capsules.try_send_data(c.freeze()) {
            Ok(()) => {
                self.stats.sent_capsules.fetch_add(1, Ordering::Relaxed);
                Ok(())
            }
            Err(TrySend::Full) => {
                self.stats.dropped_out.fetch_add(1, Ordering::Relaxed);
                Ok(())
            }
            Err(_) => Err(TunnelError::Closed),
        }
    }

    /// The next UDP payload from the target; `None` once the tunnel is closed.
    pub async fn recv(&mut self) -> Option<Bytes> {
        self.rx.recv().await
    }

    /// The tunnel's counters.
    pub fn stats(&self) -> &TunnelStats {
        &self.stats
    }

    /// The CONNECT stream's id.
    pub fn stream_id(&self) -> u64 {
        self.flow.stream_id()
    }

    /// The connection's datagram figures (drops included).
    pub fn connection(&self) -> &troupe_h3::flow::ConnDatagrams {
        self.flow.connection()
    }

    /// Closes the tunnel: FIN on the CONNECT stream (the proxy's flow ends).
    pub fn close(self) {
        self.reader.abort();
        self.capsules.finish();
        self.control.shutdown_read(troupe_h3::codes::H3_NO_ERROR);
    }

    /// Resets the CONNECT stream with `code` (the proxy's flow ends).
    pub fn reset(self, code: u64) {
        self.reader.abort();
        self.control.shutdown(Some(code), Some(code));
    }
}

/// Reads DATAGRAM capsules from the proxy's response body.
async fn read_capsules(mut body: RecvBody, inbox: Arc<Inbox>) {
    let mut reader = CapsuleReader::new();
    while let Some(Ok(chunk)) = body.chunk().await {
        match reader.push(chunk) {
            Ok(values) => {
                if !values.is_empty() && !inbox.take(values) {
                    return;
                }
            }
            Err(_) => return,
        }
    }
}
