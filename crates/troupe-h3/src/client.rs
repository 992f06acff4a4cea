//! The HTTP/3 client: connections on a shared client endpoint, requests as stream actors.

use std::net::SocketAddr;
use std::sync::Arc;

use http::{Request, Response};
use tokio::sync::oneshot;
use troupe_transport::{
    CloseReason, ConnectError, Connection, Endpoint, EndpointError, QuicSettings, TlsConfig,
};

use crate::body::{Body, RecvBody};
use crate::conn::pool::ActorPool;
use crate::conn::{ClientShared, H3App, H3Msg, PendingRequest};
use crate::error::RequestError;
use crate::peer_settings::PeerSettings;
use crate::settings::H3Settings;

/// A client endpoint: one UDP socket that any number of connections share.
pub struct ClientEndpoint {
    endpoint: Endpoint<H3App>,
    h3: Arc<H3Settings>,
    /// The parked stream actors its connections share (they stop once the endpoint and every
    /// connection of it are gone).
    pool: Arc<ActorPool>,
}

impl ClientEndpoint {
    /// Binds a client socket (`0.0.0.0:0` or `[::]:0` for any port).
    pub async fn bind(
        addr: SocketAddr,
        quic: QuicSettings,
        tls: TlsConfig,
        h3: H3Settings,
    ) -> Result<Self, EndpointError> {
        h3.validate()?;
        Ok(ClientEndpoint {
            endpoint: Endpoint::client(addr, quic, tls, None).await?,
            pool: ActorPool::new(h3.stream_actor_pool),
            h3: Arc::new(h3),
        })
    }

    /// Opens an HTTP/3 connection to `peer`, verifying its certificate for `server_name`.
    ///
    /// Cancel safety: dropping the future abandons the handshake and closes the connection.
    pub async fn connect(
        &self,
        peer: SocketAddr,
        server_name: &str,
    ) -> Result<Client, ConnectError> {
        let shared = Arc::new(ClientShared::new(self.h3.max_pending_requests));
        let conn = self
            .endpoint
            .connect(
                peer,
                server_name,
                H3App::client(self.h3.clone(), shared.clone(), self.pool.clone()),
            )
            .await?;
        Ok(self.client(conn, shared))
    }

    /// Opens an HTTP/3 connection to a URL authority (`host`, `host:port`, `[v6]:port`; port
    /// 443 when absent), as curl does: the host is resolved (`localhost` is the loopback
    /// addresses of both families), every address is tried the Happy Eyeballs way (IPv6
    /// first, the next one after `connection_attempt_delay`), the first handshake to complete
    /// wins and the others are closed. The certificate is verified for the host: its DNS
    /// names for a host name, its IP address entries for an address.
    ///
    /// Bind the endpoint to `[::]:0` to reach both families; an IPv4 endpoint fails IPv6
    /// addresses with [`ConnectError::Unreachable`]. When no address answers, the error names
    /// each one tried and why it failed.
    ///
    /// Cancel safety: dropping the future closes every attempt still running.
    pub async fn connect_to(&self, authority: &str) -> Result<Client, ConnectError> {
        let (host, port) = split_authority(authority)?;
        let addrs = troupe_transport::resolve(&host, port).await?;
        self.connect_addrs(&host, &addrs).await
    }

    /// As [`ClientEndpoint::connect_to`], over addresses the caller chose (curl's
    /// `--resolve`), verifying the certificate for `server_name`.
    pub async fn connect_addrs(
        &self,
        server_name: &str,
        addrs: &[SocketAddr],
    ) -> Result<Client, ConnectError> {
        // Each attempt has its own request queue; only the winner's is kept.
        let attempts = std::sync::Mutex::new(Vec::new());
        let conn = self
            .endpoint
            .connect_addrs(server_name, addrs, |peer| {
                let shared = Arc::new(ClientShared::new(self.h3.max_pending_requests));
                attempts
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .push((peer, shared.clone()));
                H3App::client(self.h3.clone(), shared, self.pool.clone())
            })
            .await?;
        let shared = attempts
            .into_inner()
            .unwrap_or_else(|p| p.into_inner())
            .into_iter()
            .find_map(|(peer, s)| (peer == conn.peer()).then_some(s))
            .ok_or_else(|| ConnectError::Endpoint("the winning attempt has no state".into()))?;
        Ok(self.client(conn, shared))
    }

    fn client(&self, conn: Connection<H3Msg>, shared: Arc<ClientShared>) -> Client {
        Client {
            conn,
            shared,
            max_pending: self.h3.max_pending_requests,
        }
    }

    /// The live tree of this client endpoint: endpoint -> connections -> streams, each node with its
    /// actor's figures (mailbox depth, busy time, current handler, last error), the
    /// connections' transport figures and the streams' per-direction states. Taken while
    /// traffic runs; see [`Endpoint::snapshot`]. Serializable with serde.
    ///
    /// Cancel safety: cancel-safe.
    pub async fn snapshot(&self) -> troupe_transport::EndpointSnapshot {
        let mut s = self.endpoint.snapshot().await;
        s.parked_stream_actors = self.pool.len();
        s
    }

    /// The underlying endpoint.
    pub fn endpoint(&self) -> &Endpoint<H3App> {
        &self.endpoint
    }
}

/// Splits a URL authority into host (brackets removed) and port (443 when absent), with an
/// error naming what is wrong.
fn split_authority(authority: &str) -> Result<(String, u16), ConnectError> {
    let bad = |why: &str| {
        ConnectError::Config(troupe_transport::ConfigError::Invalid {
            field: "authority",
            why: format!("{authority:?} {why} (write host, host:port or [v6 address]:port)"),
        })
    };
    let parsed: http::uri::Authority = authority
        .parse()
        .map_err(|_| bad("is not a URL authority"))?;
    if authority.contains('@') {
        return Err(bad("carries user information, which HTTP/3 never sends"));
    }
    let host = parsed.host().trim_start_matches('[').trim_end_matches(']');
    if host.is_empty() {
        return Err(bad("has no host"));
    }
    // After the host (an IPv6 literal's colons are inside its brackets), only `:port`.
    let after_host = &authority[authority.find(parsed.host()).unwrap_or(0) + parsed.host().len()..];
    let port = match after_host.strip_prefix(':') {
        None if after_host.is_empty() => 443,
        Some(p) => p
            .parse::<u16>()
            .map_err(|_| bad("has a port that is not a number from 0 to 65535"))?,
        None => return Err(bad("has something after the host that is not a port")),
    };
    Ok((host.to_string(), port))
}

/// One HTTP/3 client connection. Cheap to clone; requests may run concurrently.
#[derive(Clone)]
pub struct Client {
    conn: Connection<H3Msg>,
    shared: Arc<ClientShared>,
    max_pending: usize,
}

impl Client {
    /// Sends a request and waits for the response head. The body streams from `req`'s body;
    /// the response body streams into the returned [`RecvBody`].
    ///
    /// A request that cannot start because the server's stream limit is reached waits for
    /// MAX_STREAMS; one that fails affects no other request.
    ///
    /// At most [`H3Settings::max_pending_requests`] requests wait for a stream at once on one
    /// connection; beyond that `send` waits here, before anything is queued in the connection
    /// actor.
    ///
    /// A [`crate::Priority`] in the request's extensions is sent as its `priority` field
    /// (RFC 9218) unless the request already has one.
    ///
    /// Cancel safety: dropping the future abandons the request. One not yet started never
    /// starts; one on the wire finishes sending its body, and its response is refused when it
    /// arrives (STOP_SENDING with H3_REQUEST_CANCELLED).
    pub async fn send(&self, req: Request<Body>) -> Result<Response<RecvBody>, RequestError> {
        let created = std::time::Instant::now();
        let (mut head, body) = req.into_parts();
        if let Some(p) = head.extensions.get::<crate::Priority>().copied() {
            if !head.headers.contains_key("priority") {
                if let Ok(v) = http::HeaderValue::from_str(&p.to_field_value()) {
                    head.headers.insert("priority", v);
                }
            }
        }
        let permit = self
            .shared
            .pending
            .clone()
            .acquire_owned()
            .await
            .map_err(|_| RequestError::ConnectionClosed("client closed".into()))?;
        let (tx, rx) = oneshot::channel();
        let pending = PendingRequest {
            head,
            body,
            reply: tx,
            created,
            _permit: permit,
        };
        self.conn
            .send(H3Msg::Request(Box::new(pending)))
            .map_err(|r| RequestError::ConnectionClosed(r.to_string()))?;
        match rx.await {
            Ok(r) => r,
            Err(_) => Err(RequestError::ConnectionClosed(
                self.conn
                    .close_reason()
                    .map(|r| r.to_string())
                    .unwrap_or_else(|| "the request's stream actor stopped".into()),
            )),
        }
    }

    /// The stream ID in the server's GOAWAY, once one arrived: requests from that ID on were
    /// not processed, and no new request can start on this connection.
    pub fn goaway_received(&self) -> Option<u64> {
        match self
            .shared
            .goaway
            .load(std::sync::atomic::Ordering::Acquire)
        {
            u64::MAX => None,
            id => Some(id),
        }
    }

    /// Requests handed to the connection and not yet on the wire (waiting for the server's
    /// stream limit), plus any on their way there. At most
    /// [`H3Settings::max_pending_requests`]: further `send` calls wait before this count.
    pub fn waiting_requests(&self) -> usize {
        self.max_pending - self.shared.pending.available_permits()
    }

    /// Waits for the server's SETTINGS (sent once, right after the handshake) and returns
    /// them; `None` if the connection closed first.
    ///
    /// Cancel safety: cancel-safe.
    pub async fn peer_settings(&self) -> Option<PeerSettings> {
        let mut rx = self.shared.peer_settings.subscribe();
        tokio::select! {
            r = rx.wait_for(|s| s.is_some()) => r.ok().and_then(|s| s.clone()),
            _ = self.conn.closed() => self.shared.peer_settings.borrow().clone(),
        }
    }

    /// The transport connection.
    pub fn connection(&self) -> &Connection<H3Msg> {
        &self.conn
    }

    /// Closes the connection with H3_NO_ERROR.
    pub fn close(&self) {
        self.conn.close(crate::codes::H3_NO_ERROR, "");
    }

    /// Waits for the connection to close.
    pub async fn closed(&self) -> CloseReason {
        self.conn.closed().await
    }
}

#[cfg(test)]
mod tests {
    use super::split_authority;

    #[test]
    fn authorities_split_into_host_and_port() {
        for (a, host, port) in [
            ("localhost", "localhost", 443),
            ("localhost:4433", "localhost", 4433),
            ("127.0.0.1:1", "127.0.0.1", 1),
            ("[::1]:65535", "::1", 65535),
            ("[::1]", "::1", 443),
            ("Example.COM:80", "Example.COM", 80),
        ] {
            assert_eq!(split_authority(a).unwrap(), (host.to_string(), port), "{a}");
        }
    }

    #[test]
    fn bad_authorities_name_the_problem() {
        for (a, says) in [
            ("", "not a URL authority"),
            ("localhost:port", "port"),
            ("localhost:65536", "port"),
            ("user@localhost:1", "user information"),
            ("::1", "not a URL authority"),
            ("a b", "not a URL authority"),
        ] {
            let e = split_authority(a).unwrap_err().to_string();
            assert!(e.contains(says), "{a:?}: {e}");
            assert!(e.contains("host:port"), "{a:?}: {e}");
        }
    }
}
