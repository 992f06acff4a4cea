//! A small client of the admin endpoint (hyper, HTTP/1.1), for `troupe tree` and tests.

use std::net::SocketAddr;
use std::time::Duration;

use bytes::Bytes;
use http::{header, HeaderMap, Method, Request, StatusCode};
use http_body_util::{BodyExt, Full};

/// How long one admin request may take, connection included. 10 s: a snapshot of a huge tree
/// takes tens of milliseconds; anything slower means the server is stuck.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);

/// Why an admin request failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ClientError {
    /// Nothing accepted the TCP connection.
    #[error("cannot reach the admin endpoint at {addr}: {source} (is `troupe serve --admin {addr}` running?)")]
    Connect {
        /// The address.
        addr: SocketAddr,
        /// Why.
        source: std::io::Error,
    },
    /// The exchange failed or timed out.
    #[error("admin request to {addr} failed: {why}")]
    Http {
        /// The address.
        addr: SocketAddr,
        /// Why.
        why: String,
    },
    /// The endpoint answered with an error status.
    #[error("the admin endpoint answered {status}: {body}")]
    Status {
        /// The status.
        status: StatusCode,
        /// Its body (a JSON `{"error": ...}`).
        body: String,
    },
}

/// A response, whole.
#[derive(Debug)]
pub struct Answer {
    /// Its status.
    pub status: StatusCode,
    /// Its headers.
    pub headers: HeaderMap,
    /// Its body, as text.
    pub body: String,
}

/// Talks to one admin endpoint.
#[derive(Debug, Clone)]
pub struct AdminClient {
    addr: SocketAddr,
    token: Option<String>,
}

impl AdminClient {
    /// A client of the admin endpoint at `addr`, sending `token` if given.
    pub fn new(addr: SocketAddr, token: Option<String>) -> AdminClient {
        AdminClient { addr, token }
    }

    /// `GET path`; the body, or an error for a non-success status.
    pub async fn get(&self, path: &str) -> Result<String, ClientError> {
        let a = self
            .send(Method::GET, path, HeaderMap::new(), Bytes::new())
            .await?;
        ok(a)
    }

    /// `POST path` with a JSON body; the answer's body, or an error for a non-success status.
    pub async fn post_json(
        &self,
        path: &str,
        body: &serde_json::Value,
    ) -> Result<String, ClientError> {
        let mut h = HeaderMap::new();
        h.insert(
            header::CONTENT_TYPE,
            header::HeaderValue::from_static("application/json"),
        );
        let a = self
            .send(Method::POST, path, h, Bytes::from(body.to_string()))
            .await?;
        ok(a)
    }

    /// Sends one request with exactly these extra headers (a `Host` naming the address and the
    /// token are added unless given) and returns the answer whatever its status.
    pub async fn send(
        &self,
        method: Method,
        path: &str,
        headers: HeaderMap,
        body: Bytes,
    ) -> Result<Answer, ClientError> {
        let http = |why: String| ClientError::Http {
            addr: self.addr,
            why,
        };
        let exchange = async {
            let tcp = tokio::net::TcpStream::connect(self.addr)
                .await
                .map_err(|source| ClientError::Connect {
                    addr: self.addr,
                    source,
                })?;
            let io = hyper_util::rt::TokioIo::new(tcp);
            let (mut sender, conn) = hyper::client::conn::http1::handshake(io)
                .await
                .map_err(|e| http(e.to_string()))?;
            let driver = tokio::spawn(conn);
            let mut req = Request::builder()
                .method(method)
                .uri(path)
                .body(Full::new(body))
                .map_err(|e| http(e.to_string()))?;
            let h = req.headers_mut();
            for (k, v) in headers.iter() {
                h.insert(k.clone(), v.clone());
            }
            if !h.contains_key(header::HOST) {
                let host = self.addr.to_string();
                h.insert(
                    header::HOST,
                    header::HeaderValue::from_str(&host).map_err(|e| http(e.to_string()))?,
                );
            }
            if let (Some(t), false) = (&self.token, h.contains_key(header::AUTHORIZATION)) {
                h.insert(
                    header::AUTHORIZATION,
                    header::HeaderValue::from_str(&format!("Bearer {t}"))
                        .map_err(|_| http("the token is not a valid header value".into()))?,
                );
            }
            let resp = sender
                .send_request(req)
                .await
                .map_err(|e| http(e.to_string()))?;
            let (parts, body) = resp.into_parts();
            let bytes = body
                .collect()
                .await
                .map_err(|e| http(e.to_string()))?
                .to_bytes();
            driver.abort();
            Ok(Answer {
                status: parts.status,
                headers: parts.headers,
                body: String::from_utf8_lossy(&bytes).into_owned(),
            })
        };
        tokio::time::timeout(REQUEST_TIMEOUT, exchange)
            .await
            .map_err(|_| http(format!("no answer within {} s", REQUEST_TIMEOUT.as_secs())))?
    }
}

fn ok(a: Answer) -> Result<String, ClientError> {
    if a.status.is_success() {
        Ok(a.body)
    } else {
        Err(ClientError::Status {
            status: a.status,
            body: a.body,
        })
    }
}
