//! The HTTP/3 client: connections on a shared client endpoint, requests as stream actors.

use std::net::SocketAddr;
use std::sync::Arc;

use http::{Request, Response};
use tokio::sync::oneshot;
use troupe_transport::{
    CloseReason, ConnectError, Connection, Endpoint, EndpointError, QuicSettings, TlsConfig,
};

use crate::body::{Body, RecvBody};
use crate::conn::{ClientShared, H3App, H3Msg, PendingRequest};
use crate::error::RequestError;
use crate::peer_settings::PeerSettings;
use crate::settings::H3Settings;

/// A client endpoint: one UDP socket that any number of connections share.
pub struct ClientEndpoint {
    endpoint: Endpoint<H3App>,
    h3: Arc<H3Settings>,
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
            endpoint: Endpoint::client(addr, quic, tls).await?,
            h3: Arc::new(h3),
        })
    }

    /// Opens an HTTP/3 connection to `peer`, verifying its certificate for `server_name`.
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
                H3App::client(self.h3.clone(), shared.clone()),
            )
            .await?;
        Ok(Client {
            conn,
            shared,
            max_pending: self.h3.max_pending_requests,
        })
    }

    /// The underlying endpoint.
    pub fn endpoint(&self) -> &Endpoint<H3App> {
        &self.endpoint
    }
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
