//! The server side of a connection: accepting request streams (or refusing them after GOAWAY
//! or when malformed), the per-connection request limit, and the post-accept timeout.

use std::sync::Arc;

use quiche::h3::Header;
use tracing::debug;
use troupe_transport::ConnCx;

use super::goaway::Goaway;
use super::{shutdown_both, H3App, H3Msg, Side};
use crate::audit::StreamStats;
use crate::codes::{H3_MESSAGE_ERROR, H3_NO_ERROR, H3_REQUEST_REJECTED};
use crate::events::EventSink;
use crate::headers;
use crate::priority::{Priority, PriorityCell};
use crate::server::Handler;
use crate::stream::Role;

/// The server's side of [`H3App`].
pub(super) struct ServerSide {
    pub(super) handler: Arc<dyn Handler>,
    pub(super) events: Option<EventSink>,
    /// The highest request stream ID accepted so far.
    pub(super) max_request_id: Option<u64>,
    /// Requests accepted on this connection.
    pub(super) requests_accepted: u64,
    /// Graceful shutdown progress.
    pub(super) goaway: Goaway,
    /// A drain check is to be requested at the next flush.
    pub(super) drain_check_due: bool,
    /// A timed drain re-check is on its way.
    pub(super) recheck_armed: bool,
    /// Streams whose actor ended while quiche may still hold their data unacknowledged; a
    /// graceful close waits for quiche to collect them. Pruned as it grows.
    pub(super) unacked: super::unacked::Unacked,
    /// The peer's SETTINGS have been reported.
    pub(super) settings_seen: bool,
}

impl ServerSide {
    pub(super) fn new(handler: Arc<dyn Handler>, events: Option<EventSink>) -> Self {
        ServerSide {
            handler,
            events,
            max_request_id: None,
            requests_accepted: 0,
            goaway: Goaway::NotSent,
            drain_check_due: false,
            recheck_armed: false,
            unacked: Default::default(),
            settings_seen: false,
        }
    }
}

impl H3App {
    /// Server: a request's header section arrived on a new stream.
    pub(super) async fn on_request_headers(
        &mut self,
        cx: &mut ConnCx<'_, H3Msg>,
        stream_id: u64,
        list: Vec<Header>,
        more_frames: bool,
    ) {
        let Side::Server(s) = &mut self.side else {
            return;
        };
        if let Some(first_refused) = s.goaway.first_refused() {
            if stream_id >= first_refused {
                // RFC 9114 §5.2: not processed; the client may retry it elsewhere.
                debug!(stream_id, "request after GOAWAY: H3_REQUEST_REJECTED");
                shutdown_both(cx.conn, stream_id, H3_REQUEST_REJECTED);
                return;
            }
        }
        let handler = s.handler.clone();
        s.max_request_id = Some(s.max_request_id.map_or(stream_id, |m| m.max(stream_id)));
        s.requests_accepted += 1;
        if Some(s.requests_accepted) == self.settings.max_requests_per_connection {
            // The last request this connection takes: GOAWAY now, drain, close.
            debug!(stream_id, "max requests per connection reached: GOAWAY");
            self.start_goaway(cx);
        }
        let head = match headers::parse_request(&list) {
            Ok(h) => h,
            Err(e) => {
                // RFC 9114 §4.1.2: a malformed request is a stream error.
                debug!(stream_id, "{e}: H3_MESSAGE_ERROR");
                shutdown_both(cx.conn, stream_id, H3_MESSAGE_ERROR);
                return;
            }
        };
        let extended = head.extensions.get::<headers::Protocol>().is_some();
        if extended && !self.settings.extended_connect {
            // RFC 9220 §3: :protocol is only valid once we advertised the setting.
            debug!(
                stream_id,
                ":protocol without SETTINGS_ENABLE_CONNECT_PROTOCOL: H3_MESSAGE_ERROR"
            );
            shutdown_both(cx.conn, stream_id, H3_MESSAGE_ERROR);
            return;
        }
        let flow = extended.then(|| {
            crate::flow::DatagramFlow::new(
                stream_id,
                cx.mailbox.clone(),
                self.datagrams.clone(),
                cx.trace_id.into(),
            )
        });
        // RFC 9218: the request's `priority` field, overridden by a PRIORITY_UPDATE that came
        // first; with neither, the response default applies to scheduling.
        let mut signalled = head
            .headers
            .get("priority")
            .and_then(|v| Priority::parse(v.as_bytes()));
        if let Some(p) = self.take_priority_update(stream_id) {
            signalled = Some(p);
        }
        let signal = PriorityCell::new(signalled);
        let stats = StreamStats::new(stream_id, cx.clock.now());
        stats.set_request(head.method.clone(), path_of(&head.uri));
        let role = Role::Server {
            head,
            fin: !more_frames,
            handler,
            priority: signal.clone(),
            flow,
        };
        let key = signalled.unwrap_or(Priority::RESPONSE_DEFAULT);
        if let Some(new) = self.open_stream(cx, stream_id, role, stats, Some(signal), key) {
            Box::pin(self.spawn_for(cx, new)).await;
        }
    }

    /// Server: the post-accept timeout elapsed; close if no request came.
    pub(super) fn on_post_accept_timeout(&mut self, cx: &mut ConnCx<'_, H3Msg>) {
        if let Side::Server(s) = &self.side {
            if s.requests_accepted == 0 && s.goaway == Goaway::NotSent {
                debug!("no request within the post-accept timeout: closing");
                let _ = cx.conn.close(
                    true,
                    H3_NO_ERROR,
                    b"no request within the post-accept timeout",
                );
            }
        }
    }
}

/// The path (and query) of a request target, as the live tree shows it.
pub(super) fn path_of(uri: &http::Uri) -> String {
    uri.path_and_query()
        .map_or_else(|| uri.to_string(), |p| p.as_str().to_string())
}
