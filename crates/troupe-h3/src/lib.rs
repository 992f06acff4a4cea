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

mod body;
mod client;
pub mod codes;
mod conn;
mod error;
pub mod headers;
mod server;
mod settings;
mod stream;

pub use body::{
    Body, BodyCancelled, BodyError, BodySender, BoxError, Frame, RecvBody, RecvBodyStats,
};
pub use client::{Client, ClientEndpoint};
pub use conn::{H3App, H3Msg, OutFrame, PendingRequest};
pub use error::RequestError;
pub use server::{Handler, Server, ServerConfig};
pub use settings::H3Settings;
pub use stream::state::{RecvState, Refused, SendState};
pub use stream::{Interim, InterimResponses, NotInterim, StreamControl, StreamMsg};
