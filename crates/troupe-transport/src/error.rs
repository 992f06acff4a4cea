//! Error types of the transport layer.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

/// A configuration or TLS-material problem, caught before any packet is sent.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ConfigError {
    /// A settings field has a value that cannot work.
    #[error("invalid setting `{field}`: {why}")]
    Invalid {
        /// The field's name.
        field: &'static str,
        /// What is wrong and how to fix it.
        why: String,
    },
    /// A file could not be read.
    #[error("cannot read {what} file {}", path.display())]
    File {
        /// What the file was for.
        what: &'static str,
        /// The path given.
        path: PathBuf,
        /// The I/O error.
        #[source]
        source: std::io::Error,
    },
    /// TLS material is unusable.
    #[error("TLS: {0}")]
    Tls(String),
    /// quiche refused the configuration.
    #[error("quiche refused the configuration: {0}")]
    Quiche(String),
}

/// Why a client connection could not be established.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ConnectError {
    /// Nothing completed a handshake in time.
    #[error("no QUIC server answered at {peer} within {} s", after.as_secs_f64())]
    HandshakeTimeout {
        /// The address dialled.
        peer: SocketAddr,
        /// The handshake timeout that ran out.
        after: Duration,
    },
    /// The handshake failed (TLS or transport error from either side).
    #[error("handshake with {peer} failed: {reason}")]
    HandshakeFailed {
        /// The address dialled.
        peer: SocketAddr,
        /// The close reason.
        reason: String,
    },
    /// Configuration problem.
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// The endpoint is shut down or its socket failed.
    #[error("endpoint unavailable: {0}")]
    Endpoint(String),
    /// quiche refused to create the connection.
    #[error("quiche: {0}")]
    Quiche(#[from] quiche::Error),
}

/// Errors binding or running an endpoint.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum EndpointError {
    /// Binding the UDP socket failed.
    #[error("cannot bind UDP socket on {addr}: {source}")]
    Bind {
        /// The address asked for.
        addr: SocketAddr,
        /// The I/O error.
        #[source]
        source: std::io::Error,
    },
    /// Configuration problem.
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// The endpoint actor could not be spawned.
    #[error("cannot start endpoint actor: {0}")]
    Spawn(String),
}
