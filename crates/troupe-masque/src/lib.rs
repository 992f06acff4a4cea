//! MASQUE for troupe: HTTP Datagrams and the Capsule Protocol (RFC 9297) and CONNECT-UDP
//! (RFC 9298), with one supervised actor per datagram flow.
//!
//! This crate starts with its protocol logic as pure types, each unit-tested without sockets:
//! [`capsule`] (reading and writing capsules), [`template`] (CONNECT-UDP URI templates), [`egress`] (where a proxy may send) and
//! [`proxy_status`] (the `Proxy-Status` header).

#![warn(missing_docs)]
#![deny(unsafe_code)]

pub mod capsule;
pub mod client;
pub mod context;
pub mod egress;
pub mod flow;
pub mod kernel_drops;
pub mod proxy;
pub mod proxy_status;
pub mod rate;
pub mod template;

pub use client::{TunnelError, TunnelStats, UdpTunnel};
pub use context::{ContextDatagram, ContextHandler};
pub use flow::{FlowLimits, FlowStats};
pub use proxy::{ConnectUdp, ProxyConfig, ProxyStats, CONNECT_UDP};

// With `ractor/cluster` enabled anywhere in the graph, message types need explicit impls.
#[cfg(feature = "cluster")]
impl ractor::Message for flow::FlowMsg {}
