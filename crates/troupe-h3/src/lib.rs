//! HTTP/3 for troupe: every request stream is a supervised `ractor` actor.
//!
//! - [`Server`] serves requests with a [`Handler`] (an async function of
//!   `Request<RecvBody>` to `Response<Body>`), run inside each request's stream actor.
//! - [`ClientEndpoint`] and [`Client`] send requests; each is a stream actor on the client side.
//!
//! Body bytes move under credit in both directions: nothing is buffered without bound.
//! See `ARCHITECTURE.md` at the repository root.

#![warn(missing_docs)]
#![deny(unsafe_code)]

mod audit;
#[doc(hidden)]
pub mod bench_support;
mod body;
mod budget;
mod client;
pub mod codes;
mod conn;
pub mod datagram;
mod error;
mod events;
pub mod flow;
pub mod headers;
mod peer_settings;
mod priority;
mod server;
mod settings;
mod stream;
#[cfg(test)]
mod test_actors;

pub use audit::{StreamAudit, StreamEnd, StreamStats};
pub use body::{
    Body, BodyCancelled, BodyError, BodySender, BoxError, Frame, RecvBody, RecvBodyStats, TrySend,
};
pub use client::{Client, ClientEndpoint};
pub use conn::{H3App, H3Msg, OutFrame, PendingRequest, Section};
pub use error::{ActionError, RequestError};
pub use events::{ConnectionEvent, EventSink};
pub use flow::{
    DatagramFlow, DatagramFrame, DatagramSink, FlowEnd, PeerDatagrams, MAX_PENDING_DATAGRAMS,
};
pub use peer_settings::*;
pub use priority::{Priority, PrioritySignal};
pub use server::{Handler, IncomingRequest, Responder, Server, ServerConfig};
pub use settings::H3Settings;
pub use stream::state::{RecvState, Refused, SendState, StopLatch};
pub use stream::{Interim, InterimResponses, NotInterim, StreamControl, StreamMsg, Turn};

// With `ractor/cluster` enabled anywhere in the graph, message types need explicit impls.
#[cfg(feature = "cluster")]
impl ractor::Message for StreamMsg {}
#[cfg(feature = "cluster")]
impl ractor::Message for IncomingRequest {}
#[cfg(feature = "cluster")]
impl ractor::Message for ConnectionEvent {}
