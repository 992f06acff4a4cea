//! The UDP socket with the kernel's batching: `recvmmsg` and GRO on receive, GSO
//! (`UDP_SEGMENT`) on send, through `quinn-udp`. On loopback this machine moves ~0.6 M
//! datagrams/s with one syscall per datagram and ~1.8 M/s with GSO; per-packet `sendto` was the
//! largest single cost in the first profile of a troupe server.

use std::io::{self, IoSliceMut};
use std::net::SocketAddr;

use quinn_udp::{Transmit, UdpSocketState};

pub use quinn_udp::{RecvMeta, BATCH_SIZE};
use tokio::io::Interest;

/// Socket buffer size we ask for (the kernel caps it at `net.core.{r,w}mem_max`). 4 MiB: a
/// burst of a few thousand packets survives a busy receive loop instead of being dropped.
const SOCKET_BUFFER: usize = 4 * 1024 * 1024;

/// A bound UDP socket with batching state: the endpoint's listening socket, and (connected to
/// one target) each CONNECT-UDP flow's socket.
#[derive(Debug)]
pub struct Socket {
    io: tokio::net::UdpSocket,
    state: UdpSocketState,
    local: SocketAddr,
    /// Bound to `[::]` with IPv4-mapped addresses allowed: reaches IPv4 peers as
    /// `::ffff:a.b.c.d`.
    dual_stack: bool,
}

impl Socket {
    /// Binds `addr`. An unspecified IPv6 address (`[::]`) is bound dual-stack (IPv6-only off,
    /// whatever the system default), so one socket reaches both families.
    pub fn bind(addr: SocketAddr) -> io::Result<Socket> {
        Self::open(addr, None)
    }

    /// Binds `local` (port 0 picks one) and connects to `target`: the socket takes datagrams
    /// from `target` only, and the kernel's errors about it (port unreachable) are reported on
    /// the next receive.
    pub fn bind_connected(local: SocketAddr, target: SocketAddr) -> io::Result<Socket> {
        Self::open(local, Some(target))
    }

    /// Binds `n` sockets to `addr` in one `SO_REUSEPORT` group (port 0: the first picks one,
    /// the others join it), in order: socket `i` is index `i` of the group, the index a
    /// steering `program` returns (see [`crate::cid::CidLayout::steering_program`]). The
    /// program is attached once the group exists; where the kernel refuses it, the sockets
    /// are returned all the same with the error, and the kernel spreads packets by its
    /// 4-tuple hash.
    pub fn bind_group(
        addr: SocketAddr,
        n: usize,
        program: &[crate::cid::Insn],
    ) -> io::Result<(Vec<Socket>, Option<io::Error>)> {
        let first = Self::open_raw(addr, true)?;
        let bound = first.0.local_addr()?.as_socket().unwrap_or(addr);
        let steering = attach_steering(&first.0, program).err();
        let mut raws = vec![first];
        for _ in 1..n {
            raws.push(Self::open_raw(bound, true)?);
        }
        let sockets = raws
            .into_iter()
            .map(|(raw, dual_stack)| Self::finish(raw, dual_stack))
            .collect::<io::Result<Vec<_>>>()?;
        Ok((sockets, steering))
    }

    fn open(addr: SocketAddr, connect: Option<SocketAddr>) -> io::Result<Socket> {
        let (raw, dual_stack) = Self::open_raw(addr, false)?;
        if let Some(to) = connect {
            raw.connect(&to.into())?;
        }
        Self::finish(raw, dual_stack)
    }

    /// A bound socket (with `SO_REUSEPORT` set before the bind when `reuse_port`), and whether
    /// it is dual-stack.
    fn open_raw(addr: SocketAddr, reuse_port: bool) -> io::Result<(socket2::Socket, bool)> {
        use socket2::{Domain, Protocol, Type};
        let raw =
            socket2::Socket::new(Domain::for_address(addr), Type::DGRAM, Some(Protocol::UDP))?;
        let dual_stack = match addr {
            SocketAddr::V6(v6) if v6.ip().is_unspecified() => raw.set_only_v6(false).is_ok(),
            _ => false,
        };
        if reuse_port {
            raw.set_reuse_port(true)?;
        }
        raw.bind(&addr.into())?;
        Ok((raw, dual_stack))
    }

    fn finish(raw: socket2::Socket, dual_stack: bool) -> io::Result<Socket> {
        let std: std::net::UdpSocket = raw.into();
        std.set_nonblocking(true)?;
        let state = UdpSocketState::new((&std).into())?;
        // Best effort: a smaller buffer still works.
        let _ = state.set_recv_buffer_size((&std).into(), SOCKET_BUFFER);
        let _ = state.set_send_buffer_size((&std).into(), SOCKET_BUFFER);
        let local = std.local_addr()?;
        Ok(Socket {
            io: tokio::net::UdpSocket::from_std(std)?,
            state,
            local,
            dual_stack,
        })
    }

    /// The address bound.
    pub fn local_addr(&self) -> SocketAddr {
        self.local
    }

    /// How this socket addresses `peer`: as itself when the families match, as an
    /// IPv4-mapped IPv6 address on a dual-stack socket, `None` when it cannot reach it.
    pub fn address_for(&self, peer: SocketAddr) -> Option<SocketAddr> {
        match (self.local, peer) {
            (SocketAddr::V4(_), SocketAddr::V4(_)) | (SocketAddr::V6(_), SocketAddr::V6(_)) => {
                Some(peer)
            }
            (SocketAddr::V6(_), SocketAddr::V4(v4)) if self.dual_stack => Some(SocketAddr::new(
                std::net::IpAddr::V6(v4.ip().to_ipv6_mapped()),
                v4.port(),
            )),
            _ => None,
        }
    }

    /// Most segments one GSO send may carry (1 when the kernel has no GSO).
    pub fn max_gso_segments(&self) -> usize {
        self.state.max_gso_segments()
    }

    /// Most datagrams the kernel may coalesce into one receive buffer (1 without GRO).
    pub fn gro_segments(&self) -> usize {
        self.state.gro_segments()
    }

    /// Sends `contents` to `to`; with `segment` set, as GSO segments of that size (the last may
    /// be shorter). Falls back to one datagram per segment if the kernel refuses GSO.
    ///
    /// The send is tried at once; only a socket whose buffer is full, or a kernel refusing GSO
    /// (either way nothing was sent), takes a waiting path, boxed, so the future a caller holds
    /// across this call stays a few words (a connection actor sends on every turn).
    pub async fn send(
        &self,
        to: SocketAddr,
        contents: &[u8],
        segment: Option<usize>,
    ) -> io::Result<()> {
        let (t, gso) = transmit(to, contents, segment);
        match self.try_send_one(&t) {
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                Box::pin(self.send_waiting(to, contents, segment)).await
            }
            Err(e) if gso_refused(&e, gso) => Box::pin(self.send_each(to, contents, gso)).await,
            r => r,
        }
    }

    /// [`send`](Self::send) once the socket had no room: waits for it, and falls back to one
    /// datagram per segment if the kernel refuses GSO.
    async fn send_waiting(
        &self,
        to: SocketAddr,
        contents: &[u8],
        segment: Option<usize>,
    ) -> io::Result<()> {
        let (t, segment) = transmit(to, contents, segment);
        match self.send_one(&t).await {
            Err(e) if gso_refused(&e, segment) => self.send_each(to, contents, segment).await,
            r => r,
        }
    }

    /// Sends `contents` one datagram per `segment` bytes (the whole as one without a segment),
    /// waiting for room as needed.
    async fn send_each(
        &self,
        to: SocketAddr,
        contents: &[u8],
        segment: Option<usize>,
    ) -> io::Result<()> {
        for chunk in contents.chunks(segment.unwrap_or(contents.len()).max(1)) {
            self.send_one(&transmit(to, chunk, None).0).await?;
        }
        Ok(())
    }

    /// Sends like [`send`](Self::send) but never waits: `WouldBlock` when the socket's
    /// buffer is full (the caller drops and counts, as a router would).
    pub fn try_send(
        &self,
        to: SocketAddr,
        contents: &[u8],
        segment: Option<usize>,
    ) -> io::Result<()> {
        let (t, segment) = transmit(to, contents, segment);
        match self.try_send_one(&t) {
            Err(e) if gso_refused(&e, segment) => {
                for chunk in contents.chunks(segment.unwrap_or(contents.len())) {
                    self.try_send_one(&transmit(to, chunk, None).0)?;
                }
                Ok(())
            }
            r => r,
        }
    }

    fn try_send_one(&self, t: &Transmit<'_>) -> io::Result<()> {
        self.io.try_io(Interest::WRITABLE, || {
            self.state.try_send((&self.io).into(), t)
        })
    }

    async fn send_one(&self, t: &Transmit<'_>) -> io::Result<()> {
        loop {
            match self.io.try_io(Interest::WRITABLE, || {
                self.state.try_send((&self.io).into(), t)
            }) {
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => self.io.writable().await?,
                r => return r,
            }
        }
    }

    /// Receives a batch: fills `bufs`/`meta`, returns how many buffers were filled. A buffer may
    /// hold several datagrams of `meta.stride` bytes each (GRO).
    pub async fn recv(
        &self,
        bufs: &mut [IoSliceMut<'_>],
        meta: &mut [RecvMeta],
    ) -> io::Result<usize> {
        loop {
            match self.io.try_io(Interest::READABLE, || {
                self.state.recv((&self.io).into(), bufs, meta)
            }) {
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => self.io.readable().await?,
                r => return r,
            }
        }
    }

    /// Waits until a receive may find data (it may still find none: then `try_recv` says
    /// `WouldBlock` and the caller waits again). Cancel-safe.
    pub async fn readable(&self) -> io::Result<()> {
        self.io.readable().await
    }

    /// Receives a batch like [`recv`](Self::recv) without waiting: `WouldBlock` when nothing
    /// is queued. For a caller that receives into a buffer it may not hold across an `await`.
    pub fn try_recv(
        &self,
        bufs: &mut [IoSliceMut<'_>],
        meta: &mut [RecvMeta],
    ) -> io::Result<usize> {
        self.io.try_io(Interest::READABLE, || {
            self.state.recv((&self.io).into(), bufs, meta)
        })
    }
}

/// Attaches a classic BPF program to `socket`'s reuseport group (`SO_ATTACH_REUSEPORT_CBPF`).
fn attach_steering(socket: &socket2::Socket, program: &[crate::cid::Insn]) -> io::Result<()> {
    use nix::libc::{sock_filter, sock_fprog};
    let mut filter: Vec<sock_filter> = program
        .iter()
        .map(|i| sock_filter {
            code: i.code,
            jt: i.jt,
            jf: i.jf,
            k: i.k,
        })
        .collect();
    let prog = sock_fprog {
        len: filter.len() as u16,
        filter: filter.as_mut_ptr(),
    };
    // The kernel copies the program during the call; `filter` outlives it.
    nix::sys::socket::setsockopt(
        socket,
        nix::sys::socket::sockopt::AttachReusePortCbpf,
        &prog,
    )
    .map_err(io::Error::from)
}

/// One send of `contents` to `to`, cut into `segment`-byte GSO segments when that is shorter
/// than `contents`; also returns the segment size kept.
fn transmit(
    to: SocketAddr,
    contents: &[u8],
    segment: Option<usize>,
) -> (Transmit<'_>, Option<usize>) {
    let segment = segment.filter(|s| *s < contents.len());
    let t = Transmit {
        destination: to,
        ecn: None,
        contents,
        segment_size: segment,
        src_ip: None,
    };
    (t, segment)
}

/// Whether a failed send should be retried one datagram per segment: some devices reject
/// UDP_SEGMENT (EIO), and quinn-udp then stops using GSO; a full buffer is not that.
fn gso_refused(e: &io::Error, segment: Option<usize>) -> bool {
    segment.is_some() && e.kind() != io::ErrorKind::WouldBlock
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    /// Receives one batch into `n` buffers, within a deadline; the datagrams' first bytes.
    async fn batch(socket: &Socket, n: usize) -> Vec<u8> {
        let mut storage = vec![0u8; 2048 * n];
        let mut meta = vec![RecvMeta::default(); n];
        let mut bufs: Vec<IoSliceMut<'_>> = storage.chunks_mut(2048).map(IoSliceMut::new).collect();
        let filled =
            tokio::time::timeout(Duration::from_secs(5), socket.recv(&mut bufs, &mut meta))
                .await
                .expect("a datagram waiting to be received was not")
                .expect("receive");
        let mut firsts = Vec::new();
        for (m, b) in meta.iter().zip(&bufs).take(filled) {
            for d in b[..m.len].chunks(m.stride.max(1)) {
                firsts.push(d[0]);
            }
        }
        firsts
    }

    /// Receives batches of at most `per` buffers until `n` datagrams came; their first bytes.
    async fn all(socket: &Socket, n: usize, per: usize) -> Vec<u8> {
        let mut got = Vec::new();
        while got.len() < n {
            got.extend(batch(socket, per).await);
        }
        got
    }

    fn pair() -> (Socket, Socket) {
        let rx = Socket::bind("127.0.0.1:0".parse().unwrap()).expect("bind");
        let tx = Socket::bind("127.0.0.1:0".parse().unwrap()).expect("bind");
        (rx, tx)
    }

    async fn send(tx: &Socket, to: SocketAddr, tags: std::ops::Range<u8>) {
        for t in tags {
            tx.send(to, &[t; 100], None).await.expect("send");
        }
    }

    /// A batch that filled every buffer offered: the datagrams still queued behind it are
    /// received with no new one arriving.
    #[tokio::test]
    async fn a_full_batch_leaves_the_rest_receivable() {
        let (rx, tx) = pair();
        send(&tx, rx.local_addr(), 0..5).await;
        assert_eq!(all(&rx, 5, 2).await, vec![0, 1, 2, 3, 4]);
    }

    /// A batch that took all there was, then a datagram arriving later: it wakes the waiting
    /// receive, once and again.
    #[tokio::test]
    async fn a_datagram_after_a_short_batch_wakes_the_receive() {
        let (rx, tx) = pair();
        send(&tx, rx.local_addr(), 0..3).await;
        assert_eq!(all(&rx, 3, 8).await, vec![0, 1, 2]);
        for round in 3..6u8 {
            // The receive starts waiting before the datagram is sent.
            let recv = batch(&rx, 8);
            let sent = async {
                tokio::task::yield_now().await;
                send(&tx, rx.local_addr(), round..round + 1).await;
            };
            let (got, ()) = tokio::join!(recv, sent);
            assert_eq!(got, vec![round]);
        }
    }

    /// One send of three segments (GSO where the kernel has it, one datagram each where it
    /// refuses): three datagrams arrive, in order, the last one shorter.
    #[tokio::test]
    async fn a_segmented_send_arrives_as_its_segments() {
        let (rx, tx) = pair();
        let mut contents = vec![0u8; 100];
        contents.extend([1u8; 100]);
        contents.extend([2u8; 40]);
        tx.send(rx.local_addr(), &contents, Some(100))
            .await
            .expect("send");
        let mut storage = vec![0u8; 2048 * 4];
        let mut meta = vec![RecvMeta::default(); 4];
        let mut got = Vec::new();
        while got.len() < 3 {
            let mut bufs: Vec<IoSliceMut<'_>> =
                storage.chunks_mut(2048).map(IoSliceMut::new).collect();
            let n = tokio::time::timeout(Duration::from_secs(5), rx.recv(&mut bufs, &mut meta))
                .await
                .expect("the segments arrive")
                .expect("receive");
            for (m, b) in meta.iter().zip(&bufs).take(n) {
                for d in b[..m.len].chunks(m.stride.max(1)) {
                    got.push((d[0], d.len()));
                }
            }
        }
        assert_eq!(got, vec![(0, 100), (1, 100), (2, 40)]);
        // And nothing else: no segment was sent twice.
        let mut bufs = [IoSliceMut::new(&mut storage)];
        let more =
            tokio::time::timeout(Duration::from_millis(50), rx.recv(&mut bufs, &mut meta)).await;
        assert!(more.is_err(), "a fourth datagram arrived: {more:?}");
    }

    /// Zero datagrams: nothing is returned, the receive waits (until the deadline here).
    #[tokio::test]
    async fn an_empty_socket_waits() {
        let (rx, _tx) = pair();
        let mut storage = vec![0u8; 2048];
        let mut meta = vec![RecvMeta::default(); 1];
        let mut bufs = [IoSliceMut::new(&mut storage)];
        let r =
            tokio::time::timeout(Duration::from_millis(50), rx.recv(&mut bufs, &mut meta)).await;
        assert!(r.is_err(), "a receive on an empty socket returned {r:?}");
    }

    /// The most a batch can take (`BATCH_SIZE` buffers, all filled) is a full batch: what is
    /// queued behind it is received next.
    #[tokio::test]
    async fn the_largest_batch_then_the_rest() {
        let (rx, tx) = pair();
        let n = BATCH_SIZE as u8 + 3;
        send(&tx, rx.local_addr(), 0..n).await;
        assert_eq!(
            all(&rx, n as usize, BATCH_SIZE).await,
            (0..n).collect::<Vec<_>>()
        );
    }
}
