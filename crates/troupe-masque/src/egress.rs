//! Where a CONNECT-UDP proxy may send: not an open relay. By default every special-purpose
//! range (IANA's IPv4 and IPv6 registries: loopback, private, CGNAT, link-local with the cloud
//! metadata address, multicast, broadcast, unspecified, documentation, benchmarking, ULA,
//! NAT64, 6to4, ...) and the proxy's own addresses are refused; `--allow` opens a range or one
//! host and port, `--deny` closes more. Addresses that embed an IPv4 address (IPv4-mapped,
//! NAT64, 6to4) are judged by the IPv4 address they reach. The check is on the resolved
//! address, which is the one then used (no rebinding between check and use). A pure type,
//! unit-tested without sockets.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

pub use ipnet::IpNet;
use ipnet::{Ipv4Net, Ipv6Net};

/// A range refused by default, and why.
struct Special {
    net: &'static str,
    what: &'static str,
}

const fn s(net: &'static str, what: &'static str) -> Special {
    Special { net, what }
}

/// IPv4 ranges refused by default (IANA IPv4 Special-Purpose Address Registry and the
/// multicast and reserved blocks). Broadcast comes before the reserved block that holds it, so
/// it is named as itself.
const SPECIAL_V4: &[Special] = &[
    s("0.0.0.0/8", "'this network' (unspecified)"),
    s("10.0.0.0/8", "private (RFC 1918)"),
    s("100.64.0.0/10", "shared address space (CGNAT, RFC 6598)"),
    s("127.0.0.0/8", "loopback"),
    s(
        "169.254.0.0/16",
        "link-local (and cloud metadata, 169.254.169.254)",
    ),
    s("172.16.0.0/12", "private (RFC 1918)"),
    s("192.0.0.0/24", "IETF protocol assignments"),
    s("192.0.2.0/24", "documentation (TEST-NET-1)"),
    s("192.31.196.0/24", "AS112"),
    s("192.52.193.0/24", "AMT"),
    s("192.88.99.0/24", "6to4 relay anycast"),
    s("192.168.0.0/16", "private (RFC 1918)"),
    s("192.175.48.0/24", "AS112 direct delegation"),
    s("198.18.0.0/15", "benchmarking (RFC 2544)"),
    s("198.51.100.0/24", "documentation (TEST-NET-2)"),
    s("203.0.113.0/24", "documentation (TEST-NET-3)"),
    s("224.0.0.0/4", "multicast"),
    s("255.255.255.255/32", "broadcast"),
    s("240.0.0.0/4", "reserved"),
];

/// IPv6 ranges refused by default (IANA IPv6 Special-Purpose Address Registry, multicast).
/// The forms that embed an IPv4 address are handled before this list.
const SPECIAL_V6: &[Special] = &[
    s("::/128", "unspecified"),
    s("::1/128", "loopback"),
    s("::/96", "IPv4-compatible (deprecated)"),
    s("64:ff9b:1::/48", "local-use NAT64"),
    s("100::/64", "discard-only"),
    s(
        "2001::/23",
        "IETF protocol assignments (Teredo, benchmarking, ORCHID, ...)",
    ),
    s("2001:db8::/32", "documentation"),
    s("3fff::/20", "documentation"),
    s("5f00::/16", "segment routing (SRv6) SIDs"),
    s("fc00::/7", "unique local (ULA)"),
    s("fe80::/10", "link-local"),
    s("fec0::/10", "site-local (deprecated)"),
    s("ff00::/8", "multicast"),
];

/// The IPv4 address an IPv6 address reaches, for the forms that embed one: IPv4-mapped
/// (`::ffff:a.b.c.d`), NAT64 (`64:ff9b::a.b.c.d`) and 6to4 (`2002:AABB:CCDD::/48`).
pub fn embedded_v4(a: &Ipv6Addr) -> Option<(Ipv4Addr, &'static str)> {
    let o = a.octets();
    let seg = a.segments();
    if let Some(v4) = a.to_ipv4_mapped() {
        return Some((v4, "IPv4-mapped"));
    }
    if seg[..6] == [0x64, 0xff9b, 0, 0, 0, 0] {
        return Some((Ipv4Addr::new(o[12], o[13], o[14], o[15]), "NAT64"));
    }
    if seg[0] == 0x2002 {
        return Some((Ipv4Addr::new(o[2], o[3], o[4], o[5]), "6to4"));
    }
    None
}

/// One `--allow` entry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Allow {
    /// Any port of a range.
    Net(IpNet),
    /// One port of one host: a name as the request gives it (its resolved addresses are then
    /// allowed, for that port), or an IP address.
    HostPort {
        /// Lowercase name or IP literal.
        host: String,
        /// The port.
        port: u16,
    },
}

impl std::str::FromStr for Allow {
    type Err = String;
    /// `CIDR` (`10.0.0.0/8`, `::1/128`), a bare IP (one address), or `HOST:PORT`
    /// (`localhost:5353`, `[::1]:53`, `192.0.2.1:53`).
    fn from_str(s: &str) -> Result<Allow, String> {
        if let Ok(n) = s.parse::<IpNet>() {
            return Ok(Allow::Net(n));
        }
        if let Ok(ip) = s.parse::<IpAddr>() {
            return Ok(Allow::Net(IpNet::from(ip)));
        }
        let usage =
            "write a CIDR range (10.0.0.0/8), an address, or HOST:PORT (localhost:5353, [::1]:53)";
        let (host, port) = s
            .rsplit_once(':')
            .ok_or_else(|| format!("{s:?} is not a range or HOST:PORT; {usage}"))?;
        let port = port
            .parse::<u16>()
            .ok()
            .filter(|p| *p != 0)
            .ok_or_else(|| format!("{port:?} in {s:?} is not a port from 1 to 65535; {usage}"))?;
        if host.starts_with('[') != host.ends_with(']') {
            return Err(format!("{s:?} has an unbalanced bracket; {usage}"));
        }
        let host = host.trim_start_matches('[').trim_end_matches(']');
        if host.is_empty() || host.contains(':') && host.parse::<Ipv6Addr>().is_err() {
            return Err(format!("{s:?} has no usable host; {usage}"));
        }
        Ok(Allow::HostPort {
            host: host.to_ascii_lowercase(),
            port,
        })
    }
}

/// Why a target address is refused (the proxy answers 403 with Proxy-Status
/// `destination_ip_prohibited` and this text as its details).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{addr} is {what}{via}")]
pub struct Refused {
    /// The address.
    pub addr: IpAddr,
    /// What range it is in (`loopback`, `private (RFC 1918)`, `denied by --deny 192.0.2.0/24`,
    /// `this proxy's own address`).
    pub what: String,
    /// For an embedded IPv4 address: `" (IPv4-mapped 127.0.0.1)"`.
    pub via: String,
}

/// The egress rules of one proxy.
#[derive(Debug, Clone, Default)]
pub struct EgressPolicy {
    allow: Vec<Allow>,
    deny: Vec<IpNet>,
    own: Vec<IpAddr>,
}

impl EgressPolicy {
    /// The default rules plus `allow` and `deny`; `own` are the proxy's own addresses (refused
    /// unless allowed).
    pub fn new(allow: Vec<Allow>, deny: Vec<IpNet>, own: Vec<IpAddr>) -> EgressPolicy {
        EgressPolicy { allow, deny, own }
    }

    /// Whether the proxy may send to `addr:port`, reached for the request's `host` (its name, or
    /// the literal). An explicit `--deny` wins over everything; then an explicit `--allow`;
    /// then the default refusals; anything else is allowed.
    pub fn check(&self, host: &str, addr: IpAddr, port: u16) -> Result<(), Refused> {
        // Judge what the packets reach: the IPv4 address inside an IPv6 form that embeds one.
        let (judged, via) = match addr {
            IpAddr::V6(a) => match embedded_v4(&a) {
                Some((v4, form)) => (IpAddr::V4(v4), format!(" ({form} {v4})")),
                None => (addr, String::new()),
            },
            IpAddr::V4(_) => (addr, String::new()),
        };
        let refused = |what: String| Refused {
            addr,
            what,
            via: via.clone(),
        };
        for net in &self.deny {
            if net.contains(&addr) || net.contains(&judged) {
                return Err(refused(format!("denied by --deny {net}")));
            }
        }
        let host = host
            .trim_start_matches('[')
            .trim_end_matches(']')
            .to_ascii_lowercase();
        for a in &self.allow {
            let allowed = match a {
                Allow::Net(net) => net.contains(&addr) || net.contains(&judged),
                Allow::HostPort { host: h, port: p } => {
                    *p == port
                        && (*h == host
                            || h.parse::<IpAddr>()
                                .is_ok_and(|ip| ip == addr || ip == judged))
                }
            };
            if allowed {
                return Ok(());
            }
        }
        if self.own.iter().any(|o| *o == addr || *o == judged) {
            return Err(refused("this proxy's own address".into()));
        }
        if let Some(what) = special(&judged) {
            return Err(refused(what.to_string()));
        }
        Ok(())
    }
}

/// The default refusal that covers `a`, if any.
fn special(a: &IpAddr) -> Option<&'static str> {
    match a {
        IpAddr::V4(v4) => SPECIAL_V4.iter().find_map(|s| {
            let net: Ipv4Net = s.net.parse().expect("a valid range");
            net.contains(v4).then_some(s.what)
        }),
        IpAddr::V6(v6) => SPECIAL_V6.iter().find_map(|s| {
            let net: Ipv6Net = s.net.parse().expect("a valid range");
            net.contains(v6).then_some(s.what)
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    fn default() -> EgressPolicy {
        EgressPolicy::default()
    }

    #[test]
    fn with_no_rule_public_addresses_pass_and_every_special_range_is_refused() {
        let p = default();
        for ok in [
            "1.1.1.1",
            "8.8.8.8",
            "2606:4700:4700::1111",
            "2a00:1450::1",
            "100.63.255.255",
            "100.128.0.0",
        ] {
            assert_eq!(p.check(ok, ip(ok), 53), Ok(()), "{ok}");
        }
        for (bad, what) in [
            ("0.0.0.0", "unspecified"),
            ("127.0.0.1", "loopback"),
            ("127.255.255.254", "loopback"),
            ("10.0.0.1", "private"),
            ("172.31.255.255", "private"),
            ("192.168.1.1", "private"),
            ("100.64.0.1", "CGNAT"),
            ("169.254.169.254", "cloud metadata"),
            ("224.0.0.251", "multicast"),
            ("255.255.255.255", "broadcast"),
            ("240.0.0.1", "reserved"),
            ("192.0.2.1", "documentation"),
            ("198.51.100.7", "documentation"),
            ("203.0.113.9", "documentation"),
            ("198.18.0.1", "benchmarking"),
            ("::", "unspecified"),
            ("::1", "loopback"),
            ("fd00::1", "unique local"),
            ("fe80::1", "link-local"),
            ("ff02::1", "multicast"),
            ("2001:db8::1", "documentation"),
            ("2001:2::1", "IETF"),
            ("64:ff9b:1::1", "NAT64"),
        ] {
            let e = p.check(bad, ip(bad), 53).unwrap_err();
            assert!(e.to_string().contains(what), "{bad}: {e}");
        }
    }

    #[test]
    fn forms_embedding_ipv4_are_judged_by_the_ipv4_they_reach() {
        let p = default();
        for (addr, form) in [
            ("::ffff:127.0.0.1", "IPv4-mapped 127.0.0.1"),
            ("::ffff:10.1.1.1", "IPv4-mapped 10.1.1.1"),
            ("64:ff9b::a9fe:a9fe", "NAT64 169.254.169.254"),
            ("2002:c0a8:0101::1", "6to4 192.168.1.1"),
        ] {
            let e = p.check(addr, ip(addr), 53).unwrap_err().to_string();
            assert!(e.contains(form), "{addr}: {e}");
        }
        // The same forms of a public address pass.
        for ok in ["::ffff:8.8.8.8", "64:ff9b::808:808", "2002:0808:0808::1"] {
            assert_eq!(p.check(ok, ip(ok), 53), Ok(()), "{ok}");
        }
    }

    #[test]
    fn allow_opens_a_range_or_one_host_and_port_and_deny_wins() {
        let allow: Vec<Allow> = ["127.0.0.0/8", "localhost:5353", "[::1]:53", "10.0.0.7"]
            .iter()
            .map(|a| a.parse().unwrap())
            .collect();
        let deny: Vec<IpNet> = vec![
            "127.0.0.9/32".parse().unwrap(),
            "8.8.4.0/24".parse().unwrap(),
        ];
        let p = EgressPolicy::new(allow, deny, vec![]);
        assert_eq!(p.check("127.0.0.1", ip("127.0.0.1"), 9), Ok(()));
        assert_eq!(p.check("x", ip("::ffff:127.0.0.2"), 9), Ok(()));
        assert!(p
            .check("127.0.0.9", ip("127.0.0.9"), 9)
            .unwrap_err()
            .to_string()
            .contains("--deny 127.0.0.9/32"));
        assert!(p.check("8.8.4.4", ip("8.8.4.4"), 53).is_err());
        // A name allowed on one port: its addresses pass on that port only.
        assert_eq!(p.check("LOCALHOST", ip("::1"), 5353), Ok(()));
        assert!(p.check("localhost", ip("::1"), 5354).is_err());
        assert_eq!(p.check("::1", ip("::1"), 53), Ok(()));
        assert!(p.check("::1", ip("::1"), 54).is_err());
        assert_eq!(p.check("10.0.0.7", ip("10.0.0.7"), 1), Ok(()));
        assert!(p.check("10.0.0.8", ip("10.0.0.8"), 1).is_err());
    }

    #[test]
    fn the_proxys_own_addresses_are_refused_unless_allowed() {
        let own = vec![ip("198.51.100.1"), ip("2a00::1")];
        let p = EgressPolicy::new(vec![], vec![], own.clone());
        let e = p.check("2a00::1", ip("2a00::1"), 443).unwrap_err();
        assert!(e.to_string().contains("own address"), "{e}");
        let p = EgressPolicy::new(vec!["2a00::1/128".parse().unwrap()], vec![], own);
        assert_eq!(p.check("2a00::1", ip("2a00::1"), 443), Ok(()));
    }

    #[test]
    fn allow_entries_parse_or_say_why_not() {
        assert_eq!(
            "10.0.0.0/8".parse::<Allow>(),
            Ok(Allow::Net("10.0.0.0/8".parse().unwrap()))
        );
        assert_eq!(
            "::1".parse::<Allow>(),
            Ok(Allow::Net("::1/128".parse().unwrap()))
        );
        assert_eq!(
            "Echo.Example:7".parse::<Allow>(),
            Ok(Allow::HostPort {
                host: "echo.example".into(),
                port: 7
            })
        );
        for bad in [
            "",
            "host",
            "host:0",
            "host:99999",
            ":53",
            "[::1:53",
            "10.0.0.0/33",
        ] {
            assert!(bad.parse::<Allow>().is_err(), "{bad}");
        }
    }

    #[test]
    fn every_listed_range_parses() {
        for s in SPECIAL_V4 {
            s.net.parse::<Ipv4Net>().unwrap();
        }
        for s in SPECIAL_V6 {
            s.net.parse::<Ipv6Net>().unwrap();
        }
    }
}
