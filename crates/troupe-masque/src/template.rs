//! CONNECT-UDP URI templates (RFC 9298 §3, RFC 6570 level 3): the proxy matches a request's
//! `:path` against its template to learn the target; the client expands the template to make
//! that `:path`. A pure type, unit-tested without sockets.

use std::fmt::Write;
use std::net::IpAddr;

use percent_encoding::{percent_decode_str, utf8_percent_encode, AsciiSet, NON_ALPHANUMERIC};

/// RFC 9298's default template (§3).
pub const DEFAULT_TEMPLATE: &str = "/.well-known/masque/udp/{target_host}/{target_port}/";

/// The two variables a CONNECT-UDP template holds.
const VARIABLES: [&str; 2] = ["target_host", "target_port"];

/// Everything but RFC 3986's unreserved characters is encoded (RFC 6570's `U`).
const UNRESERVED: &AsciiSet = &NON_ALPHANUMERIC
    .remove(b'-')
    .remove(b'.')
    .remove(b'_')
    .remove(b'~');

/// Reserved characters pass too (RFC 6570's `U+R`, for `{+var}` and `{#var}`).
const RESERVED: &AsciiSet = &UNRESERVED
    .remove(b':')
    .remove(b'/')
    .remove(b'?')
    .remove(b'#')
    .remove(b'[')
    .remove(b']')
    .remove(b'@')
    .remove(b'!')
    .remove(b'$')
    .remove(b'&')
    .remove(b'\'')
    .remove(b'(')
    .remove(b')')
    .remove(b'*')
    .remove(b'+')
    .remove(b',')
    .remove(b';')
    .remove(b'=');

/// Why a template is refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("URI template {template:?}: {why}")]
pub struct TemplateError {
    template: String,
    why: String,
}

/// Why a request's target is refused (the proxy answers 400).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum TargetError {
    /// The path does not match the template.
    #[error("the path does not match the proxy's URI template")]
    NoMatch,
    /// `target_host` is neither an IP address nor a DNS name.
    #[error("target_host {0:?} is neither an IP address nor a host name")]
    BadHost(String),
    /// `target_port` is not a port number from 1 to 65535.
    #[error("target_port {0:?} is not a port number from 1 to 65535")]
    BadPort(String),
}

/// Where a CONNECT-UDP request asks to go.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TargetHost {
    /// An IP address literal.
    Ip(IpAddr),
    /// A DNS name (lowercase, no trailing dot).
    Name(String),
}

impl std::fmt::Display for TargetHost {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            TargetHost::Ip(IpAddr::V6(a)) => write!(f, "[{a}]"),
            TargetHost::Ip(a) => write!(f, "{a}"),
            TargetHost::Name(n) => f.write_str(n),
        }
    }
}

/// A target: host and port.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Target {
    /// The host.
    pub host: TargetHost,
    /// The UDP port.
    pub port: u16,
}

/// One RFC 6570 operator's expansion rules.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Op {
    first: &'static str,
    sep: &'static str,
    named: bool,
    /// What an empty named value expands to after the name (`;` gives nothing, `?`/`&` `=`).
    if_empty: &'static str,
    reserved: bool,
}

fn op(c: Option<char>) -> Option<Op> {
    let o = |first, sep, named, if_empty, reserved| Op {
        first,
        sep,
        named,
        if_empty,
        reserved,
    };
    Some(match c {
        None => o("", ",", false, "", false),
        Some('+') => o("", ",", false, "", true),
        Some('#') => o("#", ",", false, "", true),
        Some('.') => o(".", ".", false, "", false),
        Some('/') => o("/", "/", false, "", false),
        Some(';') => o(";", ";", true, "", false),
        Some('?') => o("?", "&", true, "=", false),
        Some('&') => o("&", "&", true, "=", false),
        _ => return None,
    })
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Part {
    Literal(String),
    Expr { op: Op, vars: Vec<&'static str> },
}

/// A parsed CONNECT-UDP URI template.
#[derive(Debug, Clone)]
pub struct UdpTemplate {
    source: String,
    parts: Vec<Part>,
    matcher: regex::Regex,
}

impl UdpTemplate {
    /// Parses `template`: a path (`/...`) or an absolute `https://` URI template whose
    /// expressions (RFC 6570 up to level 3) use exactly `target_host` and `target_port`, each
    /// once.
    pub fn parse(template: &str) -> Result<UdpTemplate, TemplateError> {
        let err = |why: String| TemplateError {
            template: template.to_string(),
            why,
        };
        // An absolute template: only its path is matched (the authority is the proxy's own).
        let path = match template.strip_prefix("https://") {
            Some(rest) => match rest.find('/') {
                Some(i) if !rest[..i].contains('{') => &rest[i..],
                _ => {
                    return Err(err(
                        "an absolute template needs a fixed authority and a path".into(),
                    ))
                }
            },
            None if template.starts_with('/') => template,
            None => return Err(err("it must be a path (/...) or an https:// URI".into())),
        };
        let mut parts = Vec::new();
        let mut seen = Vec::new();
        let mut rest = path;
        while !rest.is_empty() {
            match rest.find('{') {
                Some(0) => {
                    let end = rest
                        .find('}')
                        .ok_or_else(|| err("an expression is not closed with }".into()))?;
                    let body = &rest[1..end];
                    let mut chars = body.chars();
                    let first = chars.next();
                    let (o, names) = match op(first) {
                        Some(o)
                            if first.is_some_and(|c| !c.is_ascii_alphanumeric() && c != '_') =>
                        {
                            (o, chars.as_str())
                        }
                        _ => match op(None) {
                            Some(o)
                                if first.is_some_and(|c| c.is_ascii_alphanumeric() || c == '_') =>
                            {
                                (o, body)
                            }
                            _ => {
                                return Err(err(format!(
                                    "{{{body}}} is not an RFC 6570 level 3 expression"
                                )))
                            }
                        },
                    };
                    let mut vars = Vec::new();
                    for name in names.split(',') {
                        let v = VARIABLES.iter().find(|v| **v == name).ok_or_else(|| {
                            err(format!(
                                "unknown variable {name:?}: CONNECT-UDP templates use target_host and target_port"
                            ))
                        })?;
                        if seen.contains(v) {
                            return Err(err(format!("{v} appears twice")));
                        }
                        seen.push(*v);
                        vars.push(*v);
                    }
                    parts.push(Part::Expr { op: o, vars });
                    rest = &rest[end + 1..];
                }
                Some(i) => {
                    parts.push(Part::Literal(literal(&rest[..i]).map_err(err)?));
                    rest = &rest[i..];
                }
                None => {
                    parts.push(Part::Literal(literal(rest).map_err(err)?));
                    rest = "";
                }
            }
        }
        for v in VARIABLES {
            if !seen.contains(&v) {
                return Err(err(format!("it must contain {{{v}}}")));
            }
        }
        let matcher = regex::Regex::new(&pattern(&parts)).map_err(|e| err(e.to_string()))?;
        Ok(UdpTemplate {
            source: template.to_string(),
            parts,
            matcher,
        })
    }

    /// The template as given.
    pub fn as_str(&self) -> &str {
        &self.source
    }

    /// The target a request's `:path` names, if the path matches the template.
    pub fn target(&self, path: &str) -> Result<Target, TargetError> {
        let caps = self.matcher.captures(path).ok_or(TargetError::NoMatch)?;
        let decoded = |name: &str| -> Result<String, TargetError> {
            let raw = caps.name(name).map_or("", |m| m.as_str());
            percent_decode_str(raw)
                .decode_utf8()
                .map(|s| s.into_owned())
                .map_err(|_| TargetError::NoMatch)
        };
        let host = decoded("target_host")?;
        let port_text = decoded("target_port")?;
        let port = port_text
            .parse::<u16>()
            .ok()
            .filter(|p| *p != 0 && !port_text.starts_with('+'))
            .ok_or(TargetError::BadPort(port_text))?;
        Ok(Target {
            host: parse_host(&host)?,
            port,
        })
    }

    /// The `:path` asking for `host:port` (what a client sends).
    pub fn expand(&self, host: &TargetHost, port: u16) -> String {
        let host = match host {
            TargetHost::Ip(a) => a.to_string(),
            TargetHost::Name(n) => n.clone(),
        };
        let port = port.to_string();
        let mut out = String::new();
        for part in &self.parts {
            match part {
                Part::Literal(l) => out.push_str(l),
                Part::Expr { op, vars } => {
                    out.push_str(op.first);
                    for (i, v) in vars.iter().enumerate() {
                        if i > 0 {
                            out.push_str(op.sep);
                        }
                        let value = if *v == "target_host" { &host } else { &port };
                        if op.named {
                            out.push_str(v);
                            if value.is_empty() {
                                out.push_str(op.if_empty);
                                continue;
                            }
                            out.push('=');
                        }
                        let set = if op.reserved { RESERVED } else { UNRESERVED };
                        let _ = write!(out, "{}", utf8_percent_encode(value, set));
                    }
                }
            }
        }
        // An absolute template's path is what goes in `:path`.
        out
    }
}

/// Checks a literal part: printable ASCII, no braces.
fn literal(s: &str) -> Result<String, String> {
    if s.bytes()
        .all(|b| b.is_ascii_graphic() && b != b'{' && b != b'}')
    {
        Ok(s.to_string())
    } else {
        Err(format!("{s:?} holds a character a URI cannot"))
    }
}

/// The regular expression matching every expansion of `parts`.
fn pattern(parts: &[Part]) -> String {
    let unreserved = r"(?:[A-Za-z0-9\-._~]|%[0-9A-Fa-f]{2})*";
    let reserved = r"(?:[A-Za-z0-9\-._~:/?#\[\]@!$&'()*+,;=]|%[0-9A-Fa-f]{2})*?";
    let mut p = String::from("^");
    for part in parts {
        match part {
            Part::Literal(l) => p.push_str(&regex::escape(l)),
            Part::Expr { op, vars } => {
                p.push_str(&regex::escape(op.first));
                for (i, v) in vars.iter().enumerate() {
                    if i > 0 {
                        p.push_str(&regex::escape(op.sep));
                    }
                    let class = if op.reserved { reserved } else { unreserved };
                    if op.named {
                        let _ = write!(
                            p,
                            "{}(?:=(?P<{v}>{class})|{})",
                            regex::escape(v),
                            regex::escape(op.if_empty)
                        );
                    } else {
                        let _ = write!(p, "(?P<{v}>{class})");
                    }
                }
            }
        }
    }
    p.push('$');
    p
}

/// Parses `HOST:PORT` as a user writes it (`example.com:53`, `192.0.2.1:53`, `[::1]:53`).
pub fn parse_target(s: &str) -> Result<Target, String> {
    let usage = "write HOST:PORT, e.g. example.com:53, 192.0.2.1:53 or [2001:db8::1]:53";
    let (host, port) = s
        .rsplit_once(':')
        .ok_or_else(|| format!("{s:?} has no port; {usage}"))?;
    if host.contains(':') && !(host.starts_with('[') && host.ends_with(']')) {
        return Err(format!("{s:?}: an IPv6 address goes in brackets; {usage}"));
    }
    let port = port
        .parse::<u16>()
        .ok()
        .filter(|p| *p != 0)
        .ok_or_else(|| format!("{port:?} in {s:?} is not a port from 1 to 65535; {usage}"))?;
    let host = parse_host(host).map_err(|e| format!("{e}; {usage}"))?;
    Ok(Target { host, port })
}

/// An IP literal (bracketed or not) or a DNS name.
fn parse_host(h: &str) -> Result<TargetHost, TargetError> {
    let bare = h
        .strip_prefix('[')
        .and_then(|r| r.strip_suffix(']'))
        .unwrap_or(h);
    if let Ok(ip) = bare.parse::<IpAddr>() {
        return Ok(TargetHost::Ip(ip));
    }
    let name = h.strip_suffix('.').unwrap_or(h).to_ascii_lowercase();
    let ok = !name.is_empty()
        && name.len() <= 253
        && name.split('.').all(|label| {
            !label.is_empty()
                && label.len() <= 63
                && !label.starts_with('-')
                && !label.ends_with('-')
                && label
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-')
        });
    if ok {
        Ok(TargetHost::Name(name))
    } else {
        Err(TargetError::BadHost(h.to_string()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t(s: &str) -> UdpTemplate {
        UdpTemplate::parse(s).unwrap_or_else(|e| panic!("{e}"))
    }

    fn name(n: &str) -> TargetHost {
        TargetHost::Name(n.into())
    }

    #[test]
    fn the_default_template_matches_names_v4_and_percent_encoded_v6() {
        let d = t(DEFAULT_TEMPLATE);
        let got = d
            .target("/.well-known/masque/udp/example.com/443/")
            .unwrap();
        assert_eq!(
            got,
            Target {
                host: name("example.com"),
                port: 443
            }
        );
        let got = d.target("/.well-known/masque/udp/192.0.2.6/53/").unwrap();
        assert_eq!(got.host, TargetHost::Ip("192.0.2.6".parse().unwrap()));
        let got = d
            .target("/.well-known/masque/udp/2001%3Adb8%3A%3A42/53/")
            .unwrap();
        assert_eq!(got.host, TargetHost::Ip("2001:db8::42".parse().unwrap()));
        // What a client expands is what the proxy matches.
        for host in [name("example.com"), TargetHost::Ip("::1".parse().unwrap())] {
            let path = d.expand(&host, 5353);
            assert_eq!(
                d.target(&path).unwrap(),
                Target {
                    host: host.clone(),
                    port: 5353
                }
            );
        }
        assert_eq!(
            d.expand(&TargetHost::Ip("::1".parse().unwrap()), 53),
            "/.well-known/masque/udp/%3A%3A1/53/"
        );
    }

    #[test]
    fn query_and_path_operators_of_level_three_round_trip() {
        for src in [
            "/masque{?target_host,target_port}",
            "/masque?h={target_host}&p={target_port}",
            "/m{/target_host,target_port}",
            "/m/{target_host}{&target_port}",
            "https://proxy.example:4443/masque{?target_host,target_port}",
            "/m{;target_host,target_port}",
            "/m/{+target_host}/{target_port}",
            "/m{.target_host}/{target_port}",
        ] {
            let tpl = t(src);
            for host in [
                name("a.example"),
                TargetHost::Ip("10.1.2.3".parse().unwrap()),
                TargetHost::Ip("fe80::1".parse().unwrap()),
            ] {
                let path = tpl.expand(&host, 9);
                assert_eq!(
                    tpl.target(&path),
                    Ok(Target {
                        host: host.clone(),
                        port: 9
                    }),
                    "{src} -> {path}"
                );
            }
        }
        assert_eq!(
            t("/masque{?target_host,target_port}").expand(&name("x.example"), 53),
            "/masque?target_host=x.example&target_port=53"
        );
    }

    #[test]
    fn bad_targets_are_named() {
        let d = t(DEFAULT_TEMPLATE);
        for (path, want) in [
            (
                "/.well-known/masque/udp/example.com/0/",
                TargetError::BadPort("0".into()),
            ),
            (
                "/.well-known/masque/udp/example.com/65536/",
                TargetError::BadPort("65536".into()),
            ),
            (
                "/.well-known/masque/udp/example.com/x/",
                TargetError::BadPort("x".into()),
            ),
            (
                "/.well-known/masque/udp/example.com//",
                TargetError::BadPort("".into()),
            ),
            (
                "/.well-known/masque/udp//53/",
                TargetError::BadHost("".into()),
            ),
            (
                "/.well-known/masque/udp/bad_host!/53/",
                TargetError::NoMatch,
            ),
            (
                "/.well-known/masque/udp/-bad.example/53/",
                TargetError::BadHost("-bad.example".into()),
            ),
            (
                "/.well-known/masque/udp/a%20b/53/",
                TargetError::BadHost("a b".into()),
            ),
            (
                "/.well-known/masque/udp/example.com/53",
                TargetError::NoMatch,
            ),
            ("/elsewhere", TargetError::NoMatch),
            ("", TargetError::NoMatch),
        ] {
            assert_eq!(d.target(path), Err(want), "{path}");
        }
    }

    #[test]
    fn targets_parse_as_users_write_them() {
        assert_eq!(
            parse_target("Example.COM:53"),
            Ok(Target {
                host: name("example.com"),
                port: 53
            })
        );
        assert_eq!(
            parse_target("[::1]:5353").unwrap().host,
            TargetHost::Ip("::1".parse().unwrap())
        );
        for bad in [
            "",
            "example.com",
            "::1:53",
            "example.com:0",
            "a b:53",
            "[::1]:x",
        ] {
            assert!(parse_target(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn bad_templates_say_what_is_wrong() {
        for (src, says) in [
            ("", "must be a path"),
            ("masque/{target_host}/{target_port}", "must be a path"),
            ("/m/{target_host}", "must contain {target_port}"),
            (
                "/m/{target_host}/{target_host}/{target_port}",
                "appears twice",
            ),
            ("/m/{target_host}/{port}", "unknown variable \"port\""),
            ("/m/{target_host/{target_port}", "unknown variable"),
            ("/m/{target_host}/{target_port", "not closed"),
            ("/m/{*target_host}/{target_port}", "level 3"),
            ("/m /{target_host}/{target_port}", "cannot"),
            ("https://{target_host}/{target_port}", "fixed authority"),
        ] {
            let e = UdpTemplate::parse(src).unwrap_err().to_string();
            assert!(e.contains(says), "{src}: {e}");
        }
    }
}
