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
        let shared = Arc::new(ClientShared::default());
        let conn = self
            .endpoint
            .connect(
                peer,
                server_name,
                H3App::client(self.h3.clone(), shared.clone()),
            )
            .await?;
        Ok(Client { conn, shared })
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
}

impl Client {
    /// Sends a request and waits for the response head. The body streams from `req`'s body;
    /// the response body streams into the returned [`RecvBody`].
    ///
    /// A request that cannot start because the server's stream limit is reached waits for
    /// MAX_STREAMS; one that fails affects no other request.
    pub async fn send(&self, req: Request<Body>) -> Result<Response<RecvBody>, RequestError> {
        let (head, body) = req.into_parts();
        let (tx, rx) = oneshot::channel();
        let pending = PendingRequest {
            head,
            body,
            reply: tx,
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
