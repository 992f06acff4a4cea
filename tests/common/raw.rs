//! A raw quiche HTTP/3 client driven by hand over a tokio UDP socket: a peer that can send what
//! a well-behaved client never would (malformed requests, odd orderings).

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use troupe::transport::quiche;
use troupe::transport::quiche::h3;

pub struct RawClient {
    pub conn: quiche::Connection,
    pub h3: Option<h3::Connection>,
    socket: tokio::net::UdpSocket,
    peer: SocketAddr,
    local: SocketAddr,
    /// Lose every datagram that arrives (as if the path dropped them) while set.
    pub drop_incoming: bool,
}

/// What happened on one stream, as seen by the raw client.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct StreamOutcome {
    pub status: Option<String>,
    pub body: usize,
    pub finished: bool,
    pub reset: Option<u64>,
    /// Every header of the first header section, as text.
    pub headers: Vec<(String, String)>,
    /// The body bytes.
    pub data: Vec<u8>,
}

impl StreamOutcome {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }
}

impl RawClient {
    pub async fn connect(peer: SocketAddr) -> RawClient {
        Self::connect_with_windows(peer, 1 << 20, 10 << 20).await
    }

    /// With chosen per-stream and connection receive windows.
    pub async fn connect_with_windows(peer: SocketAddr, stream: u64, conn: u64) -> RawClient {
        let mut c = Self::unstarted(peer, stream, conn);
        c.complete_handshake().await;
        c
    }

    /// Sends the first flight only: the server has a connection in its handshake.
    pub async fn start(peer: SocketAddr) -> RawClient {
        let mut c = Self::unstarted(peer, 1 << 20, 10 << 20);
        c.flush().await;
        c
    }

    /// With QUIC DATAGRAM frames on (so HTTP datagrams can be sent by hand).
    pub async fn connect_with_datagrams(peer: SocketAddr) -> RawClient {
        let mut c = Self::unstarted_with(peer, 1 << 20, 10 << 20, true);
        c.complete_handshake().await;
        c
    }

    /// Sends an HTTP datagram for `stream_id` with `payload` as is (behind its Quarter Stream
    /// ID).
    pub fn send_datagram(&mut self, stream_id: u64, payload: &[u8]) {
        let mut b = vec![0u8; 8 + payload.len()];
        let n = {
            let mut o = octets::OctetsMut::with_slice(&mut b);
            o.put_varint(stream_id / 4).unwrap();
            o.off()
        };
        b.truncate(n);
        b.extend_from_slice(payload);
        self.conn.dgram_send(&b).unwrap();
    }

    /// Sends a QUIC DATAGRAM frame with exactly these bytes.
    pub fn send_raw_datagram(&mut self, bytes: &[u8]) {
        self.conn.dgram_send(bytes).unwrap();
    }

    fn unstarted(peer: SocketAddr, stream: u64, conn: u64) -> RawClient {
        Self::unstarted_with(peer, stream, conn, false)
    }

    fn unstarted_with(peer: SocketAddr, stream: u64, conn: u64, datagrams: bool) -> RawClient {
        let socket = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        socket.set_nonblocking(true).unwrap();
        let socket = tokio::net::UdpSocket::from_std(socket).unwrap();
        let local = socket.local_addr().unwrap();
        let mut config = quiche::Config::new(quiche::PROTOCOL_VERSION).unwrap();
        config.set_application_protos(&[b"h3"]).unwrap();
        config.verify_peer(false);
        config.set_max_idle_timeout(10_000);
        config.set_initial_max_data(conn);
        config.set_initial_max_stream_data_bidi_local(stream);
        config.set_initial_max_stream_data_bidi_remote(stream);
        config.set_initial_max_stream_data_uni(1 << 20);
        config.set_initial_max_streams_bidi(100);
        config.set_initial_max_streams_uni(100);
        if datagrams {
            config.enable_dgram(true, 1024, 1024);
        }
        let scid = quiche::ConnectionId::from_vec(vec![9u8; 16]);
        let conn = quiche::connect(Some("localhost"), &scid, local, peer, &mut config).unwrap();
        RawClient {
            conn,
            h3: None,
            socket,
            peer,
            local,
            drop_incoming: false,
        }
    }

    /// Drives the handshake to completion and opens HTTP/3.
    pub async fn complete_handshake(&mut self) {
        let deadline = Instant::now() + Duration::from_secs(5);
        while !self.conn.is_established() {
            assert!(Instant::now() < deadline, "raw client handshake timed out");
            self.exchange().await;
        }
        let h3 =
            h3::Connection::with_transport(&mut self.conn, &h3::Config::new().unwrap()).unwrap();
        self.h3 = Some(h3);
        self.flush().await;
    }

    pub async fn flush(&mut self) {
        let mut out = [0u8; 1500];
        while let Ok((n, info)) = self.conn.send(&mut out) {
            self.socket.send_to(&out[..n], info.to).await.unwrap();
        }
    }

    /// Flushes, then waits (up to the connection's timeout, at most 50 ms) for packets.
    pub async fn exchange(&mut self) {
        self.flush().await;
        let wait = self
            .conn
            .timeout()
            .unwrap_or(Duration::from_millis(50))
            .min(Duration::from_millis(50));
        let mut buf = [0u8; 65535];
        match tokio::time::timeout(wait, self.socket.recv_from(&mut buf)).await {
            Ok(Ok(_)) if self.drop_incoming => while self.socket.try_recv_from(&mut buf).is_ok() {},
            Ok(Ok((n, from))) => {
                let info = quiche::RecvInfo {
                    from,
                    to: self.local,
                };
                let _ = self.conn.recv(&mut buf[..n], info);
                // Drain whatever else is queued without waiting.
                while let Ok((n, from)) = self.socket.try_recv_from(&mut buf) {
                    let info = quiche::RecvInfo {
                        from,
                        to: self.local,
                    };
                    let _ = self.conn.recv(&mut buf[..n], info);
                }
            }
            _ => self.conn.on_timeout(),
        }
        let _ = self.peer;
    }

    /// Sends a request with exactly these headers (no validation) and FIN.
    pub fn request(&mut self, headers: &[(&str, &str)]) -> u64 {
        let list: Vec<h3::Header> = headers
            .iter()
            .map(|(n, v)| h3::Header::new(n.as_bytes(), v.as_bytes()))
            .collect();
        let h3 = self.h3.as_mut().unwrap();
        h3.send_request(&mut self.conn, &list, true).unwrap()
    }

    /// Sends a request with exactly these headers, then `body` in one DATA frame and FIN.
    pub fn request_with_body(&mut self, headers: &[(&str, &str)], body: &[u8]) -> u64 {
        let list: Vec<h3::Header> = headers
            .iter()
            .map(|(n, v)| h3::Header::new(n.as_bytes(), v.as_bytes()))
            .collect();
        let h3 = self.h3.as_mut().unwrap();
        let id = h3.send_request(&mut self.conn, &list, false).unwrap();
        assert_eq!(
            h3.send_body(&mut self.conn, id, body, true).unwrap(),
            body.len()
        );
        id
    }

    /// Opens a request stream with these headers, leaving it open for a body.
    pub fn request_open(&mut self, headers: &[(&str, &str)]) -> u64 {
        let list: Vec<h3::Header> = headers
            .iter()
            .map(|(n, v)| h3::Header::new(n.as_bytes(), v.as_bytes()))
            .collect();
        let h3 = self.h3.as_mut().unwrap();
        h3.send_request(&mut self.conn, &list, false).unwrap()
    }

    /// Sends body bytes (all of them: the test bodies are small) and maybe FIN.
    pub fn send_body(&mut self, stream: u64, body: &[u8], fin: bool) {
        let h3 = self.h3.as_mut().unwrap();
        assert_eq!(
            h3.send_body(&mut self.conn, stream, body, fin).unwrap(),
            body.len()
        );
    }

    /// STOP_SENDING on our receiving side of `stream`.
    pub fn stop_sending(&mut self, stream: u64, code: u64) {
        self.conn
            .stream_shutdown(stream, quiche::Shutdown::Read, code)
            .unwrap();
    }

    /// RESET_STREAM on our sending side of `stream`.
    pub fn reset(&mut self, stream: u64, code: u64) {
        self.conn
            .stream_shutdown(stream, quiche::Shutdown::Write, code)
            .unwrap();
    }

    /// PRIORITY_UPDATE for request `stream`.
    pub fn priority_update(&mut self, stream: u64, urgency: u8, incremental: bool) {
        let h3 = self.h3.as_mut().unwrap();
        h3.send_priority_update_for_request(
            &mut self.conn,
            stream,
            &h3::Priority::new(urgency, incremental),
        )
        .unwrap();
    }

    /// Drives the connection, collecting what arrives on `stream` into `o`, until `done(o)`.
    pub async fn drive_until(
        &mut self,
        stream: u64,
        o: &mut StreamOutcome,
        what: &str,
        done: impl Fn(&StreamOutcome) -> bool,
    ) {
        let deadline = Instant::now() + Duration::from_secs(5);
        let mut buf = [0u8; 65535];
        loop {
            assert!(
                Instant::now() < deadline,
                "stream {stream}: no {what} within 5 s: {o:?}"
            );
            self.exchange().await;
            loop {
                let h3 = self.h3.as_mut().unwrap();
                match h3.poll(&mut self.conn) {
                    Ok((id, h3::Event::Headers { list, .. })) if id == stream => {
                        use quiche::h3::NameValue;
                        if o.status.is_none() {
                            o.headers = list
                                .iter()
                                .map(|h| {
                                    (
                                        String::from_utf8_lossy(h.name()).into_owned(),
                                        String::from_utf8_lossy(h.value()).into_owned(),
                                    )
                                })
                                .collect();
                            o.status = o.header(":status").map(str::to_owned);
                        }
                    }
                    Ok((id, h3::Event::Data)) if id == stream => {
                        while let Ok(n) = h3.recv_body(&mut self.conn, id, &mut buf) {
                            o.body += n;
                            o.data.extend_from_slice(&buf[..n]);
                        }
                    }
                    Ok((id, h3::Event::Finished)) if id == stream => o.finished = true,
                    Ok((id, h3::Event::Reset(code))) if id == stream => o.reset = Some(code),
                    Ok(_) => {}
                    Err(_) => break,
                }
            }
            if done(o) {
                return;
            }
        }
    }

    /// Drives the connection, reading every stream's body as soon as it arrives (so the order
    /// seen is the order the peer sent in, not a reader's), until all of `streams` finished;
    /// returns them in the order they finished, each with its body length.
    pub async fn finish_order(&mut self, streams: &[u64], within: Duration) -> Vec<(u64, usize)> {
        let deadline = Instant::now() + within;
        let mut bodies = std::collections::HashMap::<u64, usize>::new();
        let mut order = Vec::new();
        let mut buf = vec![0u8; 65535];
        while order.len() < streams.len() {
            assert!(
                Instant::now() < deadline,
                "streams not finished within {within:?}: finished {order:?}, bytes {bodies:?}"
            );
            self.exchange().await;
            loop {
                let h3 = self.h3.as_mut().unwrap();
                match h3.poll(&mut self.conn) {
                    Ok((id, h3::Event::Data)) => {
                        while let Ok(n) = h3.recv_body(&mut self.conn, id, &mut buf) {
                            *bodies.entry(id).or_default() += n;
                        }
                    }
                    Ok((id, h3::Event::Finished)) if streams.contains(&id) => {
                        order.push((id, bodies.get(&id).copied().unwrap_or(0)))
                    }
                    Ok(_) => {}
                    Err(_) => break,
                }
            }
        }
        order
    }

    /// Drives the connection until `stream` has a final outcome (finished or reset).
    pub async fn outcome(&mut self, stream: u64) -> StreamOutcome {
        let mut o = StreamOutcome::default();
        self.drive_until(stream, &mut o, "outcome", |o| {
            o.finished || o.reset.is_some()
        })
        .await;
        o
    }

    /// Reads whatever body bytes of `stream` have arrived, without touching the network.
    pub fn read_available(&mut self, stream: u64) -> usize {
        let mut buf = [0u8; 65535];
        let mut n = 0;
        let h3 = self.h3.as_mut().unwrap();
        while let Ok(k) = h3.recv_body(&mut self.conn, stream, &mut buf) {
            if k == 0 {
                break;
            }
            n += k;
        }
        n
    }

    /// Drives the connection until the peer has sent STOP_SENDING for `stream`; its code.
    pub async fn wait_stopped(&mut self, stream: u64) -> u64 {
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            assert!(
                Instant::now() < deadline,
                "no STOP_SENDING on {stream} within 5 s"
            );
            if let Err(quiche::Error::StreamStopped(code)) = self.conn.stream_writable(stream, 1) {
                return code;
            }
            self.exchange().await;
        }
    }

    /// Drives the connection until `stream` has bytes to read (nothing is read: the stream
    /// stays open on our side).
    pub async fn wait_readable(&mut self, stream: u64) {
        let deadline = Instant::now() + Duration::from_secs(5);
        while !self.conn.stream_readable(stream) {
            assert!(
                Instant::now() < deadline,
                "nothing readable on {stream} within 5 s"
            );
            self.exchange().await;
        }
    }

    /// Drives the connection (flushing what we queued) until `check()` holds.
    pub async fn drive_while_waiting(&mut self, what: &str, mut check: impl FnMut() -> bool) {
        let deadline = Instant::now() + Duration::from_secs(5);
        while !check() {
            assert!(Instant::now() < deadline, "no {what} within 5 s");
            self.exchange().await;
        }
    }
}
