//! Who may use the admin endpoint: the bind rule checked at start, and the per-request checks
//! (Host, bearer token, and for actions Origin and content type). A pure type, unit-tested
//! without sockets.
//!
//! The threats: a process or page elsewhere on the network (answered by binding loopback, or
//! requiring a token), and a web page in the operator's own browser. Such a page can make the
//! browser send requests to `127.0.0.1:9901` in two ways. By DNS rebinding, its own name
//! resolves to 127.0.0.1 and its requests carry `Host: attacker.example`: the Host check
//! refuses every name but `localhost` and the ones the operator listed (an IP literal cannot
//! be rebound). By cross-site form posts, which carry the right Host but a foreign `Origin`
//! and a form content type: actions require `application/json` (which a cross-site page can
//! only send after a CORS preflight, never answered here) and an `Origin`, when present, that
//! passes the same Host rule.

use std::net::{IpAddr, SocketAddr};

/// Why the admin endpoint cannot start with this configuration.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum AccessError {
    /// A non-loopback address without a token: anyone who can reach it could GOAWAY
    /// connections and read request paths.
    #[error(
        "refusing to serve the admin endpoint on {0} without a token: it is not a loopback \
         address, so anyone who can reach it could read the tree and close connections; bind \
         127.0.0.1 or [::1], or set a token (--admin-token)"
    )]
    PublicWithoutToken(SocketAddr),
    /// An empty token would let every request in.
    #[error("the admin token is empty; give a long random string, or no token on loopback")]
    EmptyToken,
    /// A host name the operator listed is not a plain host name.
    #[error("{0:?} is not a host name the admin endpoint can accept (no scheme, port or path)")]
    BadHost(String),
}

/// A refused request: its status and the reason given in the body.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Denied {
    /// 401, 403 or 415.
    pub status: u16,
    /// One sentence for the person reading the response.
    pub reason: String,
}

/// What the checks read of a request.
#[derive(Debug, Clone, Copy, Default)]
pub struct RequestFacts<'a> {
    /// Whether it is an action (POST).
    pub action: bool,
    /// The `Host` header.
    pub host: Option<&'a str>,
    /// The `Authorization` header.
    pub authorization: Option<&'a str>,
    /// The `Origin` header.
    pub origin: Option<&'a str>,
    /// The `Content-Type` header.
    pub content_type: Option<&'a str>,
}

/// The admin endpoint's access rules.
#[derive(Clone)]
pub struct AccessPolicy {
    /// SHA-256 of the token, compared in constant time.
    token: Option<[u8; 32]>,
    /// Host names accepted besides IP literals and `localhost` (lowercase).
    hosts: Vec<String>,
}

impl std::fmt::Debug for AccessPolicy {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AccessPolicy")
            .field("token", &self.token.map(|_| "<set>"))
            .field("hosts", &self.hosts)
            .finish()
    }
}

impl AccessPolicy {
    /// The rules for an endpoint bound to `bind`, with an optional `token` and extra host
    /// names (`hosts`, e.g. the name an operator reaches it by through a tunnel). Refuses a
    /// non-loopback bind without a token.
    pub fn new(
        bind: SocketAddr,
        token: Option<&str>,
        hosts: &[String],
    ) -> Result<AccessPolicy, AccessError> {
        let token = match token {
            Some("") => return Err(AccessError::EmptyToken),
            Some(t) => Some(digest(t.as_bytes())),
            None => None,
        };
        if token.is_none() && !bind.ip().is_loopback() {
            return Err(AccessError::PublicWithoutToken(bind));
        }
        let hosts = hosts
            .iter()
            .map(|h| {
                let h = h.trim().to_ascii_lowercase();
                let plain = !h.is_empty()
                    && h.chars()
                        .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '.');
                if plain {
                    Ok(h)
                } else {
                    Err(AccessError::BadHost(h))
                }
            })
            .collect::<Result<Vec<_>, _>>()?;
        Ok(AccessPolicy { token, hosts })
    }

    /// Whether requests must carry the token.
    pub fn has_token(&self) -> bool {
        self.token.is_some()
    }

    /// Checks one request: Host (403), token (401), and for actions Origin (403) and a JSON
    /// body (415).
    pub fn check(&self, req: &RequestFacts<'_>) -> Result<(), Denied> {
        let host = req.host.ok_or_else(|| Denied {
            status: 403,
            reason: "the request has no Host header".into(),
        })?;
        if !self.host_allowed(host) {
            return Err(Denied {
                status: 403,
                reason: format!(
                    "Host {host:?} is not this admin endpoint's (use an IP address or localhost, \
                     or list the name with --admin-host)"
                ),
            });
        }
        if let Some(want) = &self.token {
            let given = req
                .authorization
                .and_then(|a| a.strip_prefix("Bearer "))
                .map(str::trim);
            let ok = given.is_some_and(|t| eq_ct(&digest(t.as_bytes()), want));
            if !ok {
                return Err(Denied {
                    status: 401,
                    reason: "this admin endpoint needs its token: send \
                             `Authorization: Bearer TOKEN`"
                        .into(),
                });
            }
        }
        if req.action {
            if let Some(origin) = req.origin {
                let host = origin
                    .strip_prefix("http://")
                    .or_else(|| origin.strip_prefix("https://"));
                if !host.is_some_and(|h| self.host_allowed(h)) {
                    return Err(Denied {
                        status: 403,
                        reason: format!("actions are not accepted from origin {origin:?}"),
                    });
                }
            }
            let json = req.content_type.is_some_and(|c| {
                c.split(';')
                    .next()
                    .is_some_and(|m| m.trim().eq_ignore_ascii_case("application/json"))
            });
            if !json {
                return Err(Denied {
                    status: 415,
                    reason: "actions take a JSON body (Content-Type: application/json)".into(),
                });
            }
        }
        Ok(())
    }

    /// Whether `host` (a Host header or an origin's authority: `name[:port]`, `[v6][:port]`)
    /// names this endpoint: an IP literal, `localhost`, or a listed name.
    fn host_allowed(&self, host: &str) -> bool {
        let name = host_name(host);
        if name.parse::<IpAddr>().is_ok() {
            return true;
        }
        let name = name.to_ascii_lowercase();
        name == "localhost" || self.hosts.contains(&name)
    }
}

/// The name part of `name[:port]` or `[v6][:port]` (brackets removed).
fn host_name(host: &str) -> &str {
    let host = host.trim();
    if let Some(rest) = host.strip_prefix('[') {
        return rest.split(']').next().unwrap_or("");
    }
    match host.rsplit_once(':') {
        // A bare IPv6 address has several colons; a port follows the only one.
        Some((name, port)) if !name.contains(':') && port.bytes().all(|b| b.is_ascii_digit()) => {
            name
        }
        _ => host,
    }
}

fn digest(b: &[u8]) -> [u8; 32] {
    let d = ring::digest::digest(&ring::digest::SHA256, b);
    let mut out = [0u8; 32];
    out.copy_from_slice(d.as_ref());
    out
}

/// Equality that takes the same time wherever the digests differ.
fn eq_ct(a: &[u8; 32], b: &[u8; 32]) -> bool {
    a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

#[cfg(test)]
mod tests {
    use super::*;

    fn loopback() -> AccessPolicy {
        AccessPolicy::new("127.0.0.1:9901".parse().unwrap(), None, &[]).unwrap()
    }

    fn get(host: &str) -> RequestFacts<'_> {
        RequestFacts {
            host: Some(host),
            ..Default::default()
        }
    }

    #[test]
    fn a_public_bind_needs_a_token_and_a_token_is_never_empty() {
        for addr in ["0.0.0.0:9901", "[::]:9901", "10.0.0.1:9901"] {
            let e = AccessPolicy::new(addr.parse().unwrap(), None, &[]).unwrap_err();
            assert!(matches!(e, AccessError::PublicWithoutToken(_)));
            assert!(e.to_string().contains("--admin-token"), "{e}");
            assert!(AccessPolicy::new(addr.parse().unwrap(), Some("s3cret"), &[]).is_ok());
        }
        for addr in ["127.0.0.1:9901", "127.9.9.9:1", "[::1]:9901"] {
            assert!(AccessPolicy::new(addr.parse().unwrap(), None, &[]).is_ok());
        }
        assert_eq!(
            AccessPolicy::new("127.0.0.1:1".parse().unwrap(), Some(""), &[]).unwrap_err(),
            AccessError::EmptyToken
        );
        let bad = ["http://x", "a:80", "a/b", ""].map(String::from);
        for h in bad {
            assert!(AccessPolicy::new("127.0.0.1:1".parse().unwrap(), None, &[h]).is_err());
        }
    }

    #[test]
    fn hosts_ip_literals_and_localhost_pass_names_do_not() {
        let p = loopback();
        for ok in [
            "127.0.0.1:9901",
            "127.0.0.1",
            "[::1]:9901",
            "[::1]",
            "::1",
            "localhost:9901",
            "LOCALHOST",
            "10.1.2.3:80",
        ] {
            assert_eq!(p.check(&get(ok)), Ok(()), "{ok}");
        }
        for bad in [
            "attacker.example:9901",
            "localhost.attacker.example",
            "",
            "[]",
        ] {
            assert_eq!(p.check(&get(bad)).unwrap_err().status, 403, "{bad}");
        }
        let none = RequestFacts::default();
        assert_eq!(p.check(&none).unwrap_err().status, 403);
        let listed = AccessPolicy::new(
            "127.0.0.1:9901".parse().unwrap(),
            None,
            &["Admin.Internal".to_string()],
        )
        .unwrap();
        assert_eq!(listed.check(&get("admin.internal:9901")), Ok(()));
    }

    #[test]
    fn with_a_token_every_request_must_carry_it() {
        let p = AccessPolicy::new("0.0.0.0:9901".parse().unwrap(), Some("s3cret"), &[]).unwrap();
        assert!(p.has_token());
        let with = |auth| RequestFacts {
            host: Some("192.0.2.1:9901"),
            authorization: auth,
            ..Default::default()
        };
        assert_eq!(p.check(&with(Some("Bearer s3cret"))), Ok(()));
        for bad in [
            None,
            Some("Bearer wrong"),
            Some("s3cret"),
            Some("Basic s3cret"),
        ] {
            let d = p.check(&with(bad)).unwrap_err();
            assert_eq!(d.status, 401, "{bad:?}");
            assert!(d.reason.contains("Bearer"));
        }
        // The Host check comes first: a rebinding page learns nothing about the token.
        let rebound = RequestFacts {
            host: Some("attacker.example"),
            authorization: Some("Bearer s3cret"),
            ..Default::default()
        };
        assert_eq!(p.check(&rebound).unwrap_err().status, 403);
    }

    #[test]
    fn actions_need_json_and_a_matching_origin() {
        let p = loopback();
        let act = |origin, ct| RequestFacts {
            action: true,
            host: Some("127.0.0.1:9901"),
            origin,
            content_type: ct,
            ..Default::default()
        };
        assert_eq!(p.check(&act(None, Some("application/json"))), Ok(()));
        assert_eq!(
            p.check(&act(
                Some("http://127.0.0.1:9901"),
                Some("application/json; charset=utf-8")
            )),
            Ok(())
        );
        let cross = p
            .check(&act(
                Some("https://attacker.example"),
                Some("application/json"),
            ))
            .unwrap_err();
        assert_eq!(cross.status, 403);
        assert_eq!(
            p.check(&act(Some("null"), Some("application/json")))
                .unwrap_err()
                .status,
            403
        );
        for ct in [
            None,
            Some("application/x-www-form-urlencoded"),
            Some("text/plain"),
        ] {
            assert_eq!(p.check(&act(None, ct)).unwrap_err().status, 415, "{ct:?}");
        }
    }
}
