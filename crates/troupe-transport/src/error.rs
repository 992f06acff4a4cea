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
    /// The resolver failed for this name.
    #[error("cannot resolve {name}: {source}")]
    Resolve {
        /// The host name.
        name: String,
        /// The resolver's error.
        #[source]
        source: std::io::Error,
    },
    /// The name resolved to no address.
    #[error("{name} has no address")]
    NoAddress {
        /// The host name.
        name: String,
    },
    /// The endpoint's socket cannot send to this address's family.
    #[error(
        "{peer} cannot be reached from the socket bound to {local} (another address family); \
         bind the client to [::]:0 to reach both IPv6 and IPv4"
    )]
    Unreachable {
        /// The address that could not be dialled.
        peer: SocketAddr,
        /// The endpoint's bound address.
        local: SocketAddr,
    },
    /// Every address of a name was tried and none completed a handshake.
    #[error("could not connect to {name}: {}", list(tried))]
    AllAddressesFailed {
        /// The host name.
        name: String,
        /// Why each address failed, in the order they were tried (each error names its
        /// address).
        tried: Vec<ConnectError>,
    },
}

fn list(errors: &[ConnectError]) -> String {
    errors
        .iter()
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join("; ")
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
