//! troupe: HTTP/3 and MASQUE on Cloudflare's quiche, where every connection, request stream and
//! datagram flow is a supervised `ractor` actor.
//!
//! ```no_run
//! use troupe::h3::{Body, Server, ServerConfig};
//! # async fn run() -> Result<(), Box<dyn std::error::Error>> {
//! let server = Server::bind("127.0.0.1:4433".parse()?, ServerConfig::default(), |_req| async {
//!     http::Response::new(Body::from("hello\n"))
//! })
//! .await?;
//! println!("listening on {}", server.local_addr());
//! # Ok(()) }
//! ```
//!
//! The layers: [`transport`] (UDP endpoint, connection actors), [`h3`] (stream actors, server,
//! client), [`admin`] (the admin endpoint), and [`service`] (the built-in routes `troupe serve`
//! answers).

#![warn(missing_docs)]
#![deny(unsafe_code)]

pub mod service;

/// QUIC transport: endpoint, connection actors, settings, TLS.
pub use troupe_transport as transport;

/// HTTP/3: stream actors, server, client, bodies.
pub use troupe_h3 as h3;

/// MASQUE: HTTP Datagrams, capsules, CONNECT-UDP proxy and client, one actor per flow.
pub use troupe_masque as masque;

/// The admin endpoint: the live tree as JSON, text and a page, `/metrics`, warnings, top-N,
/// and operator actions.
pub use troupe_admin as admin;
