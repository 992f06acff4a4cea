//! Datagrams the kernel dropped at a flow's socket because its receive buffer was full: the
//! one loss on the target side that no counter of ours sees. Linux reports it per socket in
//! the last column (`drops`) of `/proc/net/udp` and `/proc/net/udp6`; [`parse`] finds a
//! connected socket's line there, and [`read`] reads the file. Elsewhere there is no count.

use std::net::{IpAddr, SocketAddr};

/// The kernel's drop count for the UDP socket bound to port `local_port` and connected to
/// `remote`, read from the system's table; `None` where there is none (not Linux, or the
/// socket is gone).
pub fn read(local_port: u16, remote: SocketAddr) -> Option<u64> {
    let file = match remote {
        SocketAddr::V4(_) => "/proc/net/udp",
        SocketAddr::V6(_) => "/proc/net/udp6",
    };
    let table = std::fs::read_to_string(file).ok()?;
    parse(&table, local_port, remote)
}

/// The `drops` column of the line for local port `local_port` and remote address `remote` in
/// a `/proc/net/udp` or `/proc/net/udp6` table. Addresses there are hexadecimal 32-bit words
/// in the host's byte order, ports hexadecimal: `0100007F:0035` is 127.0.0.1:53 on a
/// little-endian host. `None` when no line matches or the line is malformed.
pub fn parse(table: &str, local_port: u16, remote: SocketAddr) -> Option<u64> {
    let want_remote = format!("{}:{:04X}", hex_addr(remote.ip()), remote.port());
    let want_port = format!(":{local_port:04X}");
    table.lines().skip(1).find_map(|line| {
        let cols: Vec<&str> = line.split_whitespace().collect();
        // sl local rem st tx:rx tr:when retrnsmt uid timeout inode ref pointer drops
        let (local, rem) = (cols.get(1)?, cols.get(2)?);
        if !local.ends_with(&want_port) || !rem.eq_ignore_ascii_case(&want_remote) {
            return None;
        }
        cols.last()?.parse().ok()
    })
}

/// An address as the kernel's table prints it.
fn hex_addr(ip: IpAddr) -> String {
    match ip {
        IpAddr::V4(v4) => format!("{:08X}", u32::from_ne_bytes(v4.octets())),
        IpAddr::V6(v6) => v6
            .octets()
            .chunks(4)
            .map(|w| format!("{:08X}", u32::from_ne_bytes([w[0], w[1], w[2], w[3]])))
            .collect(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const HEADER: &str = "   sl  local_address rem_address   st tx_queue rx_queue tr tm->when \
                          retrnsmt   uid  timeout inode ref pointer drops\n";

    fn line(sl: u32, local: &str, rem: &str, drops: u64) -> String {
        format!(
            "  {sl}: {local} {rem} 01 00000000:00000000 00:00000000 00000000     0        0 \
             1234 2 0000000000000000 {drops}\n"
        )
    }

    fn v4(s: &str) -> SocketAddr {
        s.parse().unwrap()
    }

    #[test]
    fn an_empty_table_has_no_line() {
        assert_eq!(parse("", 1, v4("127.0.0.1:53")), None);
        assert_eq!(parse(HEADER, 1, v4("127.0.0.1:53")), None);
    }

    #[test]
    fn finds_the_one_line_of_a_connected_socket() {
        let rem = format!("{}:0035", hex_addr(v4("127.0.0.1:0").ip()));
        let t = format!("{HEADER}{}", line(0, "00000000:A0B5", &rem, 7));
        assert_eq!(parse(&t, 0xA0B5, v4("127.0.0.1:53")), Some(7));
        // Another port, or another peer: not ours.
        assert_eq!(parse(&t, 0xA0B6, v4("127.0.0.1:53")), None);
        assert_eq!(parse(&t, 0xA0B5, v4("127.0.0.2:53")), None);
        assert_eq!(parse(&t, 0xA0B5, v4("127.0.0.1:54")), None);
    }

    #[test]
    fn picks_its_line_among_many() {
        let peer = |p: u16| format!("{}:{p:04X}", hex_addr(v4("10.1.2.3:0").ip()));
        let mut t = HEADER.to_string();
        for i in 0..1000u16 {
            t += &line(
                i.into(),
                &format!("00000000:{:04X}", 40_000 + i),
                &peer(443),
                i.into(),
            );
        }
        assert_eq!(parse(&t, 40_999, v4("10.1.2.3:443")), Some(999));
        assert_eq!(parse(&t, 40_000, v4("10.1.2.3:443")), Some(0));
        assert_eq!(parse(&t, 40_003, v4("10.1.2.3:443")), Some(3));
        assert_eq!(parse(&t, 41_000, v4("10.1.2.3:443")), None);
    }

    #[test]
    fn reads_the_largest_count_and_refuses_a_malformed_one() {
        let rem = format!("{}:0035", hex_addr(v4("127.0.0.1:0").ip()));
        let t = format!("{HEADER}{}", line(0, "00000000:0001", &rem, u64::MAX));
        assert_eq!(parse(&t, 1, v4("127.0.0.1:53")), Some(u64::MAX));
        let bad = format!("{HEADER}  0: 00000000:0001 {rem} 01 x\n").replace(" x", " lots");
        assert_eq!(parse(&bad, 1, v4("127.0.0.1:53")), None);
    }

    #[test]
    fn ipv6_addresses_are_four_host_order_words() {
        let ip: IpAddr = "::1".parse().unwrap();
        let h = hex_addr(ip);
        assert_eq!(h.len(), 32);
        assert_eq!(
            &h[24..],
            format!("{:08X}", u32::from_ne_bytes([0, 0, 0, 1]))
        );
    }

    /// Against the kernel itself: a connected socket nobody reads, flooded past its receive
    /// buffer, shows its drops in the real table (Linux only).
    #[test]
    #[cfg(target_os = "linux")]
    fn the_kernel_table_counts_a_full_sockets_drops() {
        use std::net::UdpSocket;
        let sink = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::DGRAM, None).unwrap();
        sink.set_recv_buffer_size(4096).unwrap();
        sink.bind(&v4("127.0.0.1:0").into()).unwrap();
        let sink: UdpSocket = sink.into();
        let sender = UdpSocket::bind("127.0.0.1:0").unwrap();
        sink.connect(sender.local_addr().unwrap()).unwrap();
        sender.connect(sink.local_addr().unwrap()).unwrap();
        let port = sink.local_addr().unwrap().port();
        let peer = sender.local_addr().unwrap();
        assert_eq!(read(port, peer), Some(0));
        for _ in 0..200 {
            let _ = sender.send(&[0u8; 1000]);
        }
        let drops = read(port, peer).expect("the socket's line");
        assert!(drops > 0 && drops <= 200, "{drops}");
    }
}
