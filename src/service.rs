//! The built-in routes of `troupe serve`, usable as a [`Handler`](crate::h3::Handler):
//!
//! - `GET /`: a short greeting;
//! - `GET /bytes/N`: exactly N bytes (N up to 10 GiB), streamed, never held in memory; byte `i`
//!   is `i % 251`, so any client can check what it got;
//! - `POST /echo`, `PUT /echo`: the request body streamed back as it arrives;
//! - `POST /discard`, `PUT /discard`: the request body read to its end and dropped, then its
//!   length in decimal (an upload benchmark's route);
//! - with a root directory, other `GET` paths serve files below it, never anything outside it;
//! - anything else: 404.

use std::future::Future;
use std::path::{Component, Path, PathBuf};
use std::pin::Pin;
use std::sync::{Arc, OnceLock};

use bytes::Bytes;
use http::{header, Method, Request, Response, StatusCode};
use tokio::io::AsyncReadExt;

use crate::h3::{Body, RecvBody};

/// The greeting `GET /` returns.
pub const GREETING: &str = "hello from troupe: HTTP/3 with one actor per stream\n";

/// Largest N accepted by `/bytes/N`: 10 GiB.
pub const MAX_BYTES: u64 = 10 * 1024 * 1024 * 1024;

/// Bytes per chunk of `/bytes/N`: 256 periods of the 251-byte pattern (~63 KB), so every chunk starts at
/// pattern offset 0 and is a zero-copy slice of one shared buffer.
const PATTERN_CHUNK: usize = 251 * 256;

/// Bytes per read when serving a file. 64 KiB: large reads, few messages.
const FILE_CHUNK: usize = 64 * 1024;

/// The byte at offset `i` of every `/bytes/N` body.
pub fn pattern_byte(i: u64) -> u8 {
    (i % 251) as u8
}

fn pattern() -> Bytes {
    static P: OnceLock<Bytes> = OnceLock::new();
    P.get_or_init(|| {
        (0..PATTERN_CHUNK as u64)
            .map(pattern_byte)
            .collect::<Vec<u8>>()
            .into()
    })
    .clone()
}

/// A body of exactly `n` pattern bytes: one slice when it fits in a chunk (a whole body, no
/// stream to poll), else produced chunk by chunk.
pub fn pattern_body(n: u64) -> Body {
    let chunk = pattern();
    if n <= PATTERN_CHUNK as u64 {
        return Body::from(chunk.slice(..n as usize));
    }
    let s = futures::stream::unfold(n, move |left| {
        let chunk = chunk.clone();
        async move {
            if left == 0 {
                return None;
            }
            let take = left.min(PATTERN_CHUNK as u64) as usize;
            Some((
                Ok::<_, std::io::Error>(chunk.slice(..take)),
                left - take as u64,
            ))
        }
    });
    Body::from_stream(s)
}

/// The built-in service.
#[derive(Debug, Clone, Default)]
pub struct Builtin {
    root: Option<Arc<PathBuf>>,
}

impl Builtin {
    /// The service without file serving.
    pub fn new() -> Self {
        Builtin { root: None }
    }

    /// Serves files below `root` for GET paths that are not built-in routes. `root` is
    /// canonicalised now; it must exist and be a directory.
    pub fn with_root(root: &Path) -> std::io::Result<Self> {
        let canon = root.canonicalize()?;
        if !canon.is_dir() {
            return Err(std::io::Error::new(
                std::io::ErrorKind::InvalidInput,
                format!("{} is not a directory", root.display()),
            ));
        }
        Ok(Builtin {
            root: Some(Arc::new(canon)),
        })
    }

    /// Answers one request. HEAD gets exactly GET's status and headers (content-length
    /// included) and no body, on every route (RFC 9110 §9.3.2).
    ///
    /// The route is chosen before the future is made, and the future owns what it needs (it
    /// borrows nothing of `self`), so a handler can return it as it is: `move |req|
    /// svc.handle(req)`. That keeps it small (224 bytes, against 1,160 for an `async fn`
    /// awaited inside an `async move` block, which hold the request twice over): a handler's
    /// future is boxed and written for every request.
    pub fn handle(
        &self,
        req: Request<RecvBody>,
    ) -> impl Future<Output = Response<Body>> + Send + 'static {
        let head = req.method() == Method::HEAD;
        let routed = self.route(req);
        async move {
            let mut resp = match routed {
                Routed::Now(resp) => resp,
                Routed::Later(answer) => answer.await,
            };
            if head {
                // The body (a lazy stream for /bytes/N and files) is dropped unpolled.
                *resp.body_mut() = Body::empty();
            }
            resp
        }
    }

    /// Chooses the route. Most routes answer at once; the two that wait (a file, an upload
    /// read to its end) return their future boxed, so the future [`Builtin::handle`] returns
    /// stays small.
    fn route(&self, req: Request<RecvBody>) -> Routed {
        let get = matches!(*req.method(), Method::GET | Method::HEAD);
        let upload = matches!(*req.method(), Method::POST | Method::PUT);
        // The route is chosen on the borrowed path; only a file path is copied out.
        Routed::Now(match req.uri().path() {
            "/" if get => text(StatusCode::OK, GREETING),
            "/" => not_allowed("GET, HEAD"),
            "/echo" if upload => {
                let mut resp = Response::new(Body::empty());
                for name in [header::CONTENT_LENGTH, header::CONTENT_TYPE] {
                    if let Some(v) = req.headers().get(&name) {
                        resp.headers_mut().insert(name, v.clone());
                    }
                }
                *resp.body_mut() = Body::from(req.into_body());
                resp
            }
            "/echo" => not_allowed("POST, PUT"),
            "/discard" if upload => return Routed::Later(Box::pin(discard(req.into_body()))),
            "/discard" => not_allowed("POST, PUT"),
            path => match path.strip_prefix("/bytes/") {
                Some(_) if !get => not_allowed("GET, HEAD"),
                Some(n) => match n.parse::<u64>() {
                    Ok(n) if n <= MAX_BYTES => sized(
                        StatusCode::OK,
                        "application/octet-stream",
                        n,
                        pattern_body(n),
                    ),
                    _ => text(
                        StatusCode::BAD_REQUEST,
                        "N in /bytes/N must be a whole number from 0 to 10737418240\n",
                    ),
                },
                None => match &self.root {
                    Some(root) if get => {
                        return Routed::Later(Box::pin(serve_file(root.clone(), path.to_owned())))
                    }
                    _ => text(StatusCode::NOT_FOUND, "not found\n"),
                },
            },
        })
    }
}

/// What [`Builtin::route`] chose: a response now, or one that waits.
enum Routed {
    Now(Response<Body>),
    Later(Pin<Box<dyn Future<Output = Response<Body>> + Send>>),
}

/// `/discard`: reads the upload to its end and answers with its length in decimal.
async fn discard(mut body: RecvBody) -> Response<Body> {
    let mut n = 0u64;
    while let Some(chunk) = body.chunk().await {
        match chunk {
            Ok(c) => n += c.len() as u64,
            Err(_) => return text(StatusCode::BAD_REQUEST, "request body failed\n"),
        }
    }
    let body = format!("{n}\n");
    sized(
        StatusCode::OK,
        "text/plain",
        body.len() as u64,
        Body::from(body),
    )
}

/// A response with `content-type` and `content-length`, built in place: `Response::builder`
/// moves its parts through a `Result` at every step and copies each header value (about a
/// thousand instructions per small request).
fn sized(status: StatusCode, content_type: &'static str, len: u64, body: Body) -> Response<Body> {
    let mut resp = Response::new(body);
    *resp.status_mut() = status;
    let mut headers = http::HeaderMap::with_capacity(2);
    headers.insert(
        header::CONTENT_TYPE,
        http::HeaderValue::from_static(content_type),
    );
    headers.insert(header::CONTENT_LENGTH, http::HeaderValue::from(len));
    *resp.headers_mut() = headers;
    resp
}

fn text(status: StatusCode, body: &'static str) -> Response<Body> {
    sized(
        status,
        "text/plain; charset=utf-8",
        body.len() as u64,
        Body::from(body),
    )
}

fn not_allowed(allow: &'static str) -> Response<Body> {
    let mut r = text(StatusCode::METHOD_NOT_ALLOWED, "method not allowed\n");
    r.headers_mut()
        .insert(header::ALLOW, http::HeaderValue::from_static(allow));
    r
}

/// Resolves a request path below `root`, refusing anything that could leave it: `..`, absolute
/// components, NUL, and (after canonicalisation) symlinks that point outside.
pub fn resolve_below(root: &Path, request_path: &str) -> Option<PathBuf> {
    let decoded = percent_decode(request_path)?;
    if decoded.contains('\0') {
        return None;
    }
    let mut rel = PathBuf::new();
    for c in Path::new(decoded.trim_start_matches('/')).components() {
        match c {
            Component::Normal(p) => rel.push(p),
            Component::CurDir => {}
            _ => return None,
        }
    }
    let mut full = root.join(rel);
    if full.is_dir() {
        full.push("index.html");
    }
    let canon = full.canonicalize().ok()?;
    canon.starts_with(root).then_some(canon)
}

fn percent_decode(s: &str) -> Option<String> {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%' {
            let hex = std::str::from_utf8(b.get(i + 1..i + 3)?).ok()?;
            out.push(u8::from_str_radix(hex, 16).ok()?);
            i += 3;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    String::from_utf8(out).ok()
}

fn content_type(path: &Path) -> &'static str {
    match path
        .extension()
        .and_then(|e| e.to_str())
        .map(|e| e.to_ascii_lowercase())
        .as_deref()
    {
        Some("html" | "htm") => "text/html; charset=utf-8",
        Some("txt") => "text/plain; charset=utf-8",
        Some("css") => "text/css",
        Some("js" | "mjs") => "text/javascript",
        Some("json") => "application/json",
        Some("svg") => "image/svg+xml",
        Some("png") => "image/png",
        Some("jpg" | "jpeg") => "image/jpeg",
        Some("gif") => "image/gif",
        Some("webp") => "image/webp",
        Some("wasm") => "application/wasm",
        Some("pdf") => "application/pdf",
        _ => "application/octet-stream",
    }
}

async fn serve_file(root: Arc<PathBuf>, request_path: String) -> Response<Body> {
    // Path resolution touches the file system (canonicalize, is_dir): off the async threads.
    let resolved = tokio::task::spawn_blocking(move || resolve_below(&root, &request_path)).await;
    let Ok(Some(path)) = resolved else {
        return text(StatusCode::NOT_FOUND, "not found\n");
    };
    let file = match tokio::fs::File::open(&path).await {
        Ok(f) => f,
        Err(_) => return text(StatusCode::NOT_FOUND, "not found\n"),
    };
    let len = match file.metadata().await {
        Ok(m) if m.is_file() => m.len(),
        _ => return text(StatusCode::NOT_FOUND, "not found\n"),
    };
    let s = futures::stream::try_unfold(file, |mut f| async move {
        let mut buf = vec![0u8; FILE_CHUNK];
        let n = f.read(&mut buf).await?;
        if n == 0 {
            return Ok::<_, std::io::Error>(None);
        }
        buf.truncate(n);
        Ok(Some((Bytes::from(buf), f)))
    });
    sized(
        StatusCode::OK,
        content_type(&path),
        len,
        Body::from_stream(s),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn resolve_refuses_escapes() {
        let dir = std::env::temp_dir().join(format!("troupe-resolve-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(dir.join("sub")).unwrap();
        std::fs::write(dir.join("sub/a.txt"), b"a").unwrap();
        let root = dir.canonicalize().unwrap();
        assert!(resolve_below(&root, "/sub/a.txt").is_some());
        assert!(resolve_below(&root, "/sub/%61.txt").is_some());
        for bad in [
            "/../etc/passwd",
            "/sub/../../x",
            "/%2e%2e/x",
            "//etc/passwd/..",
            "/a%00",
        ] {
            assert!(resolve_below(&root, bad).is_none(), "{bad}");
        }
        #[cfg(unix)]
        {
            std::os::unix::fs::symlink("/etc", root.join("out")).unwrap();
            assert!(resolve_below(&root, "/out/hostname").is_none());
        }
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn pattern_chunks_start_in_phase() {
        assert_eq!(PATTERN_CHUNK % 251, 0);
        assert_eq!(pattern()[250], 250);
        assert_eq!(pattern()[251], 0);
    }
}
