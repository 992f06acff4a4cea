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
    // Room for the regular fields alone (none: no allocation): a map sized for the
    // pseudo-headers too would be about three times as large for a typical request.
    let regular = list.iter().filter(|h| !h.name().starts_with(b":")).count();
    let mut headers = HeaderMap::with_capacity(regular);
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
    // Room for the regular fields: all but `:status`.
    let mut headers = HeaderMap::with_capacity(list.len().saturating_sub(1));
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

/// Fields that are specific to an HTTP/1.x connection and never sent in HTTP/3 (RFC 9114
/// §4.2). `HeaderName` is always lowercase.
fn connection_specific(name: &HeaderName) -> bool {
    matches!(
        name.as_str(),
        "connection" | "keep-alive" | "proxy-connection" | "transfer-encoding" | "upgrade" | "host"
    )
}

fn push_regular(out: &mut Vec<Header>, headers: &HeaderMap) {
    for (name, value) in headers {
        if !connection_specific(name) {
            out.push(Header::new(name.as_str().as_bytes(), value.as_bytes()));
        }
    }
}

/// One field of a response or trailer section we send, holding the application's `http`
/// values themselves: building a `quiche::h3::Header` copies each name and value into two
/// fresh allocations (about seven hundred instructions for a small response's three fields),
/// while these are moved out of the response's `HeaderMap`. quiche encodes any
/// [`NameValue`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Field {
    /// The `:status` pseudo-header.
    Status(StatusCode),
    /// A regular field.
    Regular(HeaderName, HeaderValue),
}

impl NameValue for Field {
    fn name(&self) -> &[u8] {
        match self {
            Field::Status(_) => b":status",
            Field::Regular(name, _) => name.as_str().as_bytes(),
        }
    }

    fn value(&self) -> &[u8] {
        match self {
            Field::Status(status) => status.as_str().as_bytes(),
            Field::Regular(_, value) => value.as_bytes(),
        }
    }
}

/// Moves a `HeaderMap`'s fields into `out`, in order (repeated names keep each value), leaving
/// out connection-specific ones.
fn move_regular(out: &mut Vec<Field>, headers: HeaderMap) {
    let mut current: Option<HeaderName> = None;
    for (name, value) in headers {
        // `None` repeats the previous name (one more value of a repeated field).
        if let Some(name) = name {
            current = Some(name);
        }
        if let Some(name) = &current {
            if !connection_specific(name) {
                out.push(Field::Regular(name.clone(), value));
            }
        }
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

/// Builds a response header section (final or interim), taking the fields out of `headers`.
pub fn response_headers(status: StatusCode, headers: HeaderMap) -> Vec<Field> {
    let mut out = Vec::with_capacity(headers.len() + 1);
    out.push(Field::Status(status));
    move_regular(&mut out, headers);
    out
}

/// Builds a trailer section, taking the fields out of `headers`.
pub fn trailer_headers(headers: HeaderMap) -> Vec<Field> {
    let mut out = Vec::with_capacity(headers.len());
    move_regular(&mut out, headers);
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

    fn pairs(list: &[Field]) -> Vec<(String, String)> {
        list.iter()
            .map(|f| {
                (
                    String::from_utf8(f.name().to_vec()).unwrap(),
                    String::from_utf8(f.value().to_vec()).unwrap(),
                )
            })
            .collect()
    }

    #[test]
    fn response_sections_move_fields_in_order() {
        // Zero fields: only the status.
        assert_eq!(
            pairs(&response_headers(StatusCode::NO_CONTENT, HeaderMap::new())),
            [(":status".into(), "204".into())]
        );
        // One field.
        let mut one = HeaderMap::new();
        one.insert("content-length", HeaderValue::from(5u64));
        assert_eq!(
            pairs(&response_headers(StatusCode::OK, one)),
            [
                (":status".into(), "200".into()),
                ("content-length".into(), "5".into())
            ]
        );
        // Several, with a repeated name (each value kept, in order) and connection-specific
        // fields that are left out wherever they stand.
        let mut many = HeaderMap::new();
        many.append("set-cookie", HeaderValue::from_static("a=1"));
        many.append("connection", HeaderValue::from_static("close"));
        many.append("set-cookie", HeaderValue::from_static("b=2"));
        many.append("transfer-encoding", HeaderValue::from_static("chunked"));
        many.append("x-custom", HeaderValue::from_static("v"));
        many.append("set-cookie", HeaderValue::from_static("c=3"));
        let got = pairs(&response_headers(StatusCode::EARLY_HINTS, many));
        assert_eq!(got[0], (":status".into(), "103".into()));
        let cookies: Vec<_> = got
            .iter()
            .filter(|(n, _)| n == "set-cookie")
            .map(|(_, v)| v.as_str())
            .collect();
        assert_eq!(cookies, ["a=1", "b=2", "c=3"]);
        assert!(got.iter().any(|(n, v)| n == "x-custom" && v == "v"));
        assert_eq!(got.len(), 5, "{got:?}");
        // Only connection-specific fields: nothing but the status survives.
        let mut only = HeaderMap::new();
        for name in [
            "connection",
            "keep-alive",
            "proxy-connection",
            "upgrade",
            "host",
        ] {
            only.append(name, HeaderValue::from_static("x"));
        }
        assert_eq!(response_headers(StatusCode::OK, only).len(), 1);
        // The maximum a HeaderMap holds in one name's run: many values of one field.
        let mut long = HeaderMap::new();
        for i in 0..1000u64 {
            long.append("x-n", HeaderValue::from(i));
        }
        let got = trailer_headers(long);
        assert_eq!(got.len(), 1000);
        assert!(got
            .iter()
            .enumerate()
            .all(|(i, f)| f.value() == i.to_string().as_bytes()));
        assert!(trailer_headers(HeaderMap::new()).is_empty());
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
