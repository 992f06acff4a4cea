//! Conversion between `http` types and HTTP/3 header lists, with the validation RFC 9114 §4.3
//! demands of a request. A malformed request is a stream error, H3_MESSAGE_ERROR.

use http::header::{HeaderName, HeaderValue};
use http::{HeaderMap, Method, Request, Response, StatusCode, Uri};
use quiche::h3::{Header, NameValue};

/// Why a received header section is malformed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("malformed message: {0}")]
pub struct Malformed(pub String);

fn bad(s: impl Into<String>) -> Malformed {
    Malformed(s.into())
}

/// Parses a request header section (RFC 9114 §4.3.1).
pub fn parse_request(list: &[Header]) -> Result<http::request::Parts, Malformed> {
    let mut method = None;
    let mut scheme = None;
    let mut authority = None;
    let mut path = None;
    let mut protocol = None;
    let mut headers = HeaderMap::with_capacity(list.len());
    let mut regular_seen = false;
    for h in list {
        let (name, value) = (h.name(), h.value());
        if let Some(pseudo) = name.strip_prefix(b":") {
            if regular_seen {
                return Err(bad("pseudo-header after a regular header"));
            }
            let slot = match pseudo {
                b"method" => &mut method,
                b"scheme" => &mut scheme,
                b"authority" => &mut authority,
                b"path" => &mut path,
                b"protocol" => &mut protocol,
                _ => {
                    return Err(bad(format!(
                        "unknown pseudo-header :{}",
                        String::from_utf8_lossy(pseudo)
                    )))
                }
            };
            if slot.is_some() {
                return Err(bad("duplicate pseudo-header"));
            }
            *slot = Some(value);
            continue;
        }
        regular_seen = true;
        insert_regular(&mut headers, name, value)?;
    }
    let method = Method::from_bytes(method.ok_or_else(|| bad("missing :method"))?)
        .map_err(|_| bad("invalid :method"))?;
    let uri = if method == Method::CONNECT && protocol.is_none() {
        if scheme.is_some() || path.is_some() {
            return Err(bad("CONNECT carries neither :scheme nor :path"));
        }
        let a = authority.ok_or_else(|| bad("CONNECT without :authority"))?;
        Uri::builder()
            .authority(a)
            .build()
            .map_err(|_| bad("invalid :authority"))?
    } else {
        let scheme = scheme.ok_or_else(|| bad("missing :scheme"))?;
        let path = path.ok_or_else(|| bad("missing :path"))?;
        if path.is_empty() {
            return Err(bad("empty :path"));
        }
        // Part by part, as `Uri::builder` would check them, without moving the parts through
        // a `Result` at each step (a few hundred instructions per request).
        let invalid = |_| bad("invalid :scheme, :authority or :path");
        let mut uri = http::uri::Parts::default();
        uri.scheme = Some(http::uri::Scheme::try_from(scheme).map_err(invalid)?);
        uri.path_and_query = Some(http::uri::PathAndQuery::try_from(path).map_err(invalid)?);
        if let Some(a) = authority.or_else(|| headers.get(http::header::HOST).map(|v| v.as_bytes()))
        {
            uri.authority = Some(http::uri::Authority::try_from(a).map_err(invalid)?);
        }
        Uri::from_parts(uri).map_err(|_| bad("invalid :scheme, :authority or :path"))?
    };
    // Filled in place: the builder moves its parts through a `Result` at every step.
    let (mut parts, ()) = Request::new(()).into_parts();
    parts.method = method;
    parts.uri = uri;
    parts.version = http::Version::HTTP_3;
    parts.headers = headers;
    if let Some(p) = protocol {
        parts
            .extensions
            .insert(Protocol(String::from_utf8_lossy(p).into_owned()));
    }
    Ok(parts)
}

/// The `:protocol` pseudo-header of an extended CONNECT (RFC 9220), kept in request extensions.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Protocol(pub String);

/// Parses a response header section: `:status` then regular headers.
pub fn parse_response(list: &[Header]) -> Result<http::response::Parts, Malformed> {
    let mut status = None;
    let mut headers = HeaderMap::with_capacity(list.len());
    let mut regular_seen = false;
    for h in list {
        let (name, value) = (h.name(), h.value());
        if name.first() == Some(&b':') {
            if name != b":status" || status.is_some() || regular_seen {
                return Err(bad("unexpected pseudo-header in response"));
            }
            status = Some(StatusCode::from_bytes(value).map_err(|_| bad("invalid :status"))?);
            continue;
        }
        regular_seen = true;
        insert_regular(&mut headers, name, value)?;
    }
    let status = status.ok_or_else(|| bad("missing :status"))?;
    let (mut parts, ()) = Response::builder()
        .status(status)
        .version(http::Version::HTTP_3)
        .body(())
        .map_err(|e| bad(e.to_string()))?
        .into_parts();
    parts.headers = headers;
    Ok(parts)
}

/// Parses a trailer section: regular headers only.
pub fn parse_trailers(list: &[Header]) -> Result<HeaderMap, Malformed> {
    let mut headers = HeaderMap::with_capacity(list.len());
    for h in list {
        if h.name().first() == Some(&b':') {
            return Err(bad("pseudo-header in trailers"));
        }
        insert_regular(&mut headers, h.name(), h.value())?;
    }
    Ok(headers)
}

fn insert_regular(headers: &mut HeaderMap, name: &[u8], value: &[u8]) -> Result<(), Malformed> {
    // RFC 9114 §4.2: field names must be lowercase; connection-specific fields are malformed.
    if name.iter().any(|b| b.is_ascii_uppercase()) {
        return Err(bad("uppercase header name"));
    }
    let name = HeaderName::from_bytes(name).map_err(|_| bad("invalid header name"))?;
    if matches!(
        name.as_str(),
        "connection" | "keep-alive" | "proxy-connection" | "transfer-encoding" | "upgrade"
    ) {
        return Err(bad(format!("connection-specific header {name}")));
    }
    if name == http::header::TE && value != b"trailers" {
        return Err(bad("te other than trailers"));
    }
    let value = HeaderValue::from_bytes(value).map_err(|_| bad("invalid header value"))?;
    headers.append(name, value);
    Ok(())
}

fn push_regular(out: &mut Vec<Header>, headers: &HeaderMap) {
    for (name, value) in headers {
        // HeaderName is always lowercase; connection-specific fields are not ours to send.
        if matches!(
            name.as_str(),
            "connection"
                | "keep-alive"
                | "proxy-connection"
                | "transfer-encoding"
                | "upgrade"
                | "host"
        ) {
            continue;
        }
        out.push(Header::new(name.as_str().as_bytes(), value.as_bytes()));
    }
}

/// Builds a request header section. The URI must be absolute (scheme and authority).
pub fn request_headers(parts: &http::request::Parts) -> Result<Vec<Header>, String> {
    let mut out = Vec::with_capacity(parts.headers.len() + 4);
    out.push(Header::new(b":method", parts.method.as_str().as_bytes()));
    let authority = parts
        .uri
        .authority()
        .map(|a| a.as_str().to_string())
        .or_else(|| {
            parts
                .headers
                .get(http::header::HOST)
                .and_then(|h| h.to_str().ok())
                .map(str::to_string)
        })
        .ok_or_else(|| format!("request URI {} has no authority (host)", parts.uri))?;
    if parts.method == Method::CONNECT && parts.extensions.get::<Protocol>().is_none() {
        out.push(Header::new(b":authority", authority.as_bytes()));
    } else {
        let scheme = parts.uri.scheme_str().unwrap_or("https");
        let path = parts
            .uri
            .path_and_query()
            .map(|p| p.as_str())
            .unwrap_or("/");
        out.push(Header::new(b":scheme", scheme.as_bytes()));
        out.push(Header::new(b":authority", authority.as_bytes()));
        out.push(Header::new(b":path", path.as_bytes()));
        if let Some(p) = parts.extensions.get::<Protocol>() {
            out.push(Header::new(b":protocol", p.0.as_bytes()));
        }
    }
    push_regular(&mut out, &parts.headers);
    Ok(out)
}

/// Builds a response header section.
pub fn response_headers(parts: &http::response::Parts) -> Vec<Header> {
    let mut out = Vec::with_capacity(parts.headers.len() + 1);
    out.push(Header::new(b":status", parts.status.as_str().as_bytes()));
    push_regular(&mut out, &parts.headers);
    out
}

/// Builds a trailer section.
pub fn trailer_headers(headers: &HeaderMap) -> Vec<Header> {
    let mut out = Vec::with_capacity(headers.len());
    push_regular(&mut out, headers);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn h(list: &[(&str, &str)]) -> Vec<Header> {
        list.iter()
            .map(|(n, v)| Header::new(n.as_bytes(), v.as_bytes()))
            .collect()
    }

    #[test]
    fn good_request() {
        let p = parse_request(&h(&[
            (":method", "GET"),
            (":scheme", "https"),
            (":authority", "example.com"),
            (":path", "/a?b"),
            ("accept", "*/*"),
        ]))
        .unwrap();
        assert_eq!(p.method, Method::GET);
        assert_eq!(p.uri.to_string(), "https://example.com/a?b");
        assert_eq!(p.headers["accept"], "*/*");
    }

    #[test]
    fn malformed_requests() {
        let cases: &[&[(&str, &str)]] = &[
            &[(":scheme", "https"), (":path", "/")],
            &[(":method", "GET"), (":path", "/")],
            &[(":method", "GET"), (":scheme", "https")],
            &[
                (":method", "GET"),
                (":scheme", "https"),
                (":path", "/"),
                ("Upper", "x"),
            ],
            &[
                (":method", "GET"),
                ("a", "b"),
                (":scheme", "https"),
                (":path", "/"),
            ],
            &[
                (":method", "GET"),
                (":scheme", "https"),
                (":path", "/"),
                ("connection", "close"),
            ],
            &[
                (":method", "GET"),
                (":method", "GET"),
                (":scheme", "https"),
                (":path", "/"),
            ],
        ];
        for c in cases {
            assert!(parse_request(&h(c)).is_err(), "{c:?} accepted");
        }
    }

    #[test]
    fn request_round_trip() {
        let (parts, ()) = Request::post("https://localhost:4433/echo?x=1")
            .header("content-type", "text/plain")
            .body(())
            .unwrap()
            .into_parts();
        let back = parse_request(&request_headers(&parts).unwrap()).unwrap();
        assert_eq!(back.method, Method::POST);
        assert_eq!(back.uri, parts.uri);
        assert_eq!(back.headers["content-type"], "text/plain");
    }
}
