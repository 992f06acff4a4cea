//! The `troupe` binary end to end: serve, get, file serving, and the errors a user sees.

use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};

struct Reaped(Child);

impl Drop for Reaped {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn troupe() -> Command {
    Command::new(env!("CARGO_BIN_EXE_troupe"))
}

/// Starts `troupe serve` on a free port; returns the process, the port and the certificate path.
fn serve(extra: &[&str]) -> (Reaped, u16, PathBuf) {
    serve_on("127.0.0.1", extra)
}

/// Starts `troupe serve` on a free port of `ip` (`[::1]` for IPv6).
fn serve_on(ip: &str, extra: &[&str]) -> (Reaped, u16, PathBuf) {
    serve_at(&[ip], extra)
}

type Lines = std::io::Lines<BufReader<std::process::ChildStdout>>;

/// Runs `troupe ARGS` (a `serve`); returns the process, its stdout's lines after the first, and
/// the addresses the first line says it serves on.
fn spawn_serve(args: &[String]) -> (Reaped, Lines, Vec<std::net::SocketAddr>) {
    let mut child = Reaped(
        troupe()
            .args(args)
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .unwrap(),
    );
    let mut lines = BufReader::new(child.0.stdout.take().unwrap()).lines();
    let first = lines.next().unwrap().unwrap();
    let listening = first
        .strip_prefix("troupe serving HTTP/3 on ")
        .and_then(|r| r.strip_suffix(" (UDP)"))
        .unwrap_or_else(|| panic!("unexpected first line {first:?}"))
        .split(", ")
        .map(|a| a.parse().unwrap())
        .collect();
    (child, lines, listening)
}

/// Starts `troupe serve` listening on each of `ips`, port 0 (so all on one free port).
fn serve_at(ips: &[&str], extra: &[&str]) -> (Reaped, u16, PathBuf) {
    let mut args = vec!["serve".to_string()];
    for ip in ips {
        args.extend(["--listen".to_string(), format!("{ip}:0")]);
    }
    args.extend(extra.iter().map(|a| a.to_string()));
    let (child, mut lines, listening) = spawn_serve(&args);
    let port = listening[0].port();
    let expected: Vec<std::net::SocketAddr> = ips
        .iter()
        .map(|ip| format!("{ip}:{port}").parse().unwrap())
        .collect();
    assert_eq!(listening, expected);
    let second = lines.next().unwrap().unwrap();
    let cert = second
        .strip_prefix("self-signed certificate for localhost: ")
        .unwrap_or_else(|| panic!("unexpected second line {second:?}"));
    let third = lines.next().unwrap().unwrap();
    assert!(
        third.starts_with("certificate SPKI SHA-256 (base64): "),
        "{third}"
    );
    assert_eq!(third.rsplit(' ').next().unwrap().len(), 44);
    std::thread::spawn(move || for _ in lines {});
    (child, port, PathBuf::from(cert))
}

/// Starts `troupe serve --listen 127.0.0.1:0 EXTRA...` whose EXTRA has `--admin`; returns the
/// process, the QUIC port and the admin endpoint's address as printed.
fn serve_with_admin(extra: &[&str]) -> (Reaped, u16, String) {
    let mut args: Vec<String> = ["serve", "--listen", "127.0.0.1:0"]
        .map(String::from)
        .to_vec();
    args.extend(extra.iter().map(|a| a.to_string()));
    let (child, mut lines, listening) = spawn_serve(&args);
    let port = listening[0].port();
    let admin = loop {
        let line = lines
            .next()
            .expect("serve printed the admin endpoint")
            .unwrap();
        if let Some(rest) = line.strip_prefix("admin endpoint: http://") {
            break rest.split('/').next().unwrap().to_string();
        }
    };
    std::thread::spawn(move || for _ in lines {});
    (child, port, admin)
}

#[test]
fn tree_prints_the_live_tree_as_text_json_and_top() {
    let (_server, port, admin) = serve_with_admin(&["--admin", "127.0.0.1:0"]);
    let out = troupe().args(["tree", "--admin", &admin]).output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8(out.stdout).unwrap();
    assert!(
        text.starts_with(&format!("endpoint 127.0.0.1:{port} server")),
        "{text}"
    );
    assert!(text.contains("unsupervised"), "{text}");
    let out = troupe()
        .args(["tree", "--admin", &admin, "--json"])
        .output()
        .unwrap();
    assert!(out.status.success());
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["endpoints"][0]["local_addr"], format!("127.0.0.1:{port}"));
    assert_eq!(v["endpoints"][0]["role"], "server");
    let out = troupe()
        .args(["tree", "--admin", &admin, "--top", "3", "--by", "mailbox"])
        .output()
        .unwrap();
    assert!(out.status.success());
    let top = String::from_utf8(out.stdout).unwrap();
    assert!(top.starts_with("top by mailbox "), "{top}");
    // --watch prints again and again until stopped.
    let mut watch = Reaped(
        troupe()
            .args(["tree", "--admin", &admin, "--watch", "0.2"])
            .stdout(Stdio::piped())
            .spawn()
            .unwrap(),
    );
    let mut lines = BufReader::new(watch.0.stdout.take().unwrap()).lines();
    let mut rounds = 0;
    while rounds < 3 {
        let line = lines.next().expect("watch keeps printing").unwrap();
        if line.starts_with(&format!("endpoint 127.0.0.1:{port}")) {
            rounds += 1;
        }
    }
    drop(watch);
}

#[test]
fn admin_mistakes_are_clear() {
    // Refused at start, before anything listens.
    let out = troupe()
        .args(["serve", "--listen", "127.0.0.1:0", "--admin", "0.0.0.0:0"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("--admin 0.0.0.0:0")
            && err.contains("without a token")
            && err.contains("--admin-token"),
        "{err}"
    );
    assert!(
        out.stdout.is_empty(),
        "nothing served: {}",
        String::from_utf8_lossy(&out.stdout)
    );
    // A token given: every request needs it.
    let (_server, _port, admin) =
        serve_with_admin(&["--admin", "127.0.0.1:0", "--admin-token", "t0ken"]);
    let out = troupe()
        .args(["tree", "--admin", &admin])
        .env_remove("TROUPE_ADMIN_TOKEN")
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("401") && err.contains("Bearer"), "{err}");
    let out = troupe()
        .args(["tree", "--admin", &admin])
        .env("TROUPE_ADMIN_TOKEN", "t0ken")
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // Nothing there.
    let free = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = free.local_addr().unwrap().to_string();
    drop(free);
    let out = troupe().args(["tree", "--admin", &addr]).output().unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains(&format!("cannot reach the admin endpoint at {addr}")),
        "{err}"
    );
    for (args, needle) in [
        (vec!["tree", "--watch", "0"], "--watch"),
        (vec!["tree", "--by", "busy"], "--top"),
        (
            vec!["tree", "--top", "3", "--by", "cpu"],
            "busy, mailbox, bytes or lost",
        ),
        (vec!["serve", "--admin-token", "x"], "--admin"),
    ] {
        let out = troupe().args(&args).output().unwrap();
        assert!(!out.status.success(), "{args:?}");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains(needle), "{args:?}: {err}");
    }
}

/// The server runs without transparent huge pages (`no_huge_pages` in main.rs: with them,
/// mimalloc's purges split huge pages and a burst's CPU per request swung with the host's
/// memory). The kernel reports the process flag in /proc (Linux 6.0 and later; older kernels
/// lack the line and the check is skipped there).
#[cfg(target_os = "linux")]
#[test]
fn a_server_runs_without_transparent_huge_pages() {
    let (server, _port, _cert) = serve(&[]);
    let status = std::fs::read_to_string(format!("/proc/{}/status", server.0.id())).unwrap();
    if let Some(line) = status.lines().find(|l| l.starts_with("THP_enabled:")) {
        assert_eq!(line.split_whitespace().nth(1), Some("0"), "{line}");
    }
}

#[test]
fn serve_then_get_with_the_printed_certificate() {
    let (_server, port, cert) = serve(&[]);
    let greeting = troupe::service::GREETING.as_bytes();
    assert_eq!(
        get_ok(&[&format!("https://localhost:{port}/")], &cert),
        greeting
    );
    // Named by its IP address: verified against the certificate's IP address entry.
    assert_eq!(
        get_ok(&[&format!("https://127.0.0.1:{port}/")], &cert),
        greeting
    );

    let dir = std::env::temp_dir().join(format!("troupe-cli-get-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let data: Vec<u8> = (0..2_000_000u32).map(|i| (i % 253) as u8).collect();
    std::fs::write(dir.join("in.bin"), &data).unwrap();
    let out = troupe()
        .args([
            "get",
            &format!("https://localhost:{port}/echo"),
            "-v",
            "--data",
        ])
        .arg(dir.join("in.bin"))
        .arg("-o")
        .arg(dir.join("out.bin"))
        .arg("--ca")
        .arg(&cert)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stderr).contains("< HTTP/3 200"));
    assert!(std::fs::read(dir.join("out.bin")).unwrap() == data);

    let out = troupe()
        .args(["get", &format!("https://localhost:{port}/missing"), "--ca"])
        .arg(&cert)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(22));
    let _ = std::fs::remove_dir_all(&dir);
}

/// `--no-gso`: every packet its own send. A flush of many packets with one segment per send
/// used to slice past the batch buffer and panic the connection actor; a multi-megabyte
/// download both ways must now complete byte for byte.
#[test]
fn serve_without_gso_carries_real_traffic() {
    let (_server, port, cert) = serve(&["--no-gso"]);
    let dir = std::env::temp_dir().join(format!("troupe-cli-nogso-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let n = 8 << 20;
    let out = troupe()
        .args([
            "get",
            &format!("https://127.0.0.1:{port}/bytes/{n}"),
            "-k",
            "-o",
        ])
        .arg(dir.join("down.bin"))
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(std::fs::metadata(dir.join("down.bin")).unwrap().len(), n);
    let data: Vec<u8> = (0..3_000_000u32).map(|i| (i % 251) as u8).collect();
    std::fs::write(dir.join("in.bin"), &data).unwrap();
    let out = troupe()
        .args(["get", &format!("https://localhost:{port}/echo"), "--data"])
        .arg(dir.join("in.bin"))
        .arg("-o")
        .arg(dir.join("echo.bin"))
        .arg("--ca")
        .arg(&cert)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(std::fs::read(dir.join("echo.bin")).unwrap() == data);
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn root_serves_files_and_nothing_outside() {
    let base = std::env::temp_dir().join(format!("troupe-cli-root-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&base);
    let root = base.join("www");
    std::fs::create_dir_all(&root).unwrap();
    std::fs::write(root.join("hello.txt"), b"file body\n").unwrap();
    std::fs::write(base.join("secret.txt"), b"secret\n").unwrap();
    std::os::unix::fs::symlink(base.join("secret.txt"), root.join("link.txt")).unwrap();
    // On a one-thread runtime (`--workers 1`, as the benchmark runs it).
    let (_server, port, cert) = serve(&["--root", root.to_str().unwrap(), "--workers", "1"]);

    let out = troupe()
        .args([
            "get",
            &format!("https://localhost:{port}/hello.txt"),
            "-v",
            "--ca",
        ])
        .arg(&cert)
        .output()
        .unwrap();
    assert!(out.status.success());
    assert_eq!(out.stdout, b"file body\n");
    let head = String::from_utf8_lossy(&out.stderr);
    assert!(head.contains("content-type: text/plain"), "{head}");
    assert!(head.contains("content-length: 10"), "{head}");

    for path in ["/%2e%2e/secret.txt", "/link.txt", "/..%2fsecret.txt"] {
        let out = troupe()
            .args(["get", &format!("https://localhost:{port}{path}"), "--ca"])
            .arg(&cert)
            .output()
            .unwrap();
        assert_eq!(out.status.code(), Some(22), "{path} was served");
        assert!(
            !String::from_utf8_lossy(&out.stdout).contains("secret"),
            "{path}"
        );
    }
    let _ = std::fs::remove_dir_all(&base);
}

/// Runs `troupe get` with `args` and returns its stdout, failing with its stderr.
fn get_ok(args: &[&str], cert: &std::path::Path) -> Vec<u8> {
    let out = troupe()
        .arg("get")
        .args(args)
        .arg("--ca")
        .arg(cert)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "troupe get {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    out.stdout
}

/// A server on `[::1]` only: reached as `https://[::1]:PORT/` (verified against the
/// certificate's `::1` entry) and as `https://localhost:PORT/` (localhost's IPv6 address is
/// tried, and first). `--resolve` pins the addresses as curl's does.
#[test]
fn an_ipv6_only_server_is_reached_by_address_and_by_localhost() {
    let (_server, port, cert) = serve_on("[::1]", &[]);
    let greeting = troupe::service::GREETING.as_bytes();
    assert_eq!(
        get_ok(&[&format!("https://[::1]:{port}/")], &cert),
        greeting
    );
    assert_eq!(
        get_ok(&[&format!("https://localhost:{port}/")], &cert),
        greeting
    );
    let pinned = format!("localhost:{port}:127.0.0.1,[::1]");
    assert_eq!(
        get_ok(
            &[&format!("https://localhost:{port}/"), "--resolve", &pinned],
            &cert
        ),
        greeting
    );
}

/// Listening on both loopback addresses (the default's shape, on a free port): reached by
/// either address, verified against the certificate's IP entries, and by localhost.
#[test]
fn a_server_on_both_families_is_reached_by_each_address() {
    let (_server, port, cert) = serve_at(&["127.0.0.1", "[::1]"], &[]);
    let greeting = troupe::service::GREETING.as_bytes();
    for host in ["127.0.0.1", "[::1]", "localhost"] {
        assert_eq!(
            get_ok(&[&format!("https://{host}:{port}/")], &cert),
            greeting,
            "{host}"
        );
    }
}

/// Nothing listening: one clear line naming the address, or for a name every address tried
/// (localhost's two, IPv6 first).
#[test]
fn nothing_listening_is_one_clear_line() {
    let silent = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    let port = silent.local_addr().unwrap().port();
    for (host, says) in [
        (
            "127.0.0.1",
            format!("troupe: no QUIC server answered at 127.0.0.1:{port} within 1 s"),
        ),
        (
            "localhost",
            format!(
                "troupe: could not connect to localhost: no QUIC server answered at \
                 [::1]:{port} within 1 s; no QUIC server answered at 127.0.0.1:{port} within 1 s"
            ),
        ),
    ] {
        let out = troupe()
            .args([
                "get",
                &format!("https://{host}:{port}/"),
                "-k",
                "--connect-timeout",
                "1",
            ])
            .output()
            .unwrap();
        assert!(!out.status.success());
        assert_eq!(String::from_utf8_lossy(&out.stderr).trim(), says);
    }
}

#[test]
fn bad_input_names_what_is_wrong() {
    let cases: &[(&[&str], &str)] = &[
        (&["serve", "--cert", "/x.pem"], "--key"),
        (
            &[
                "serve",
                "--cert",
                "/nonexistent/c.pem",
                "--key",
                "/nonexistent/k.pem",
            ],
            "/nonexistent/c.pem",
        ),
        (
            &["serve", "--root", "/nonexistent/dir"],
            "--root /nonexistent/dir",
        ),
        (&["serve", "--listen", "not-an-address"], "--listen"),
        (&["serve", "--workers", "0"], "--workers"),
        (&["proxy", "--workers", "257"], "1..=256"),
        (&["get", "http://localhost/"], "must start with https://"),
        (
            &["get", "https://localhost:1/", "--ca", "/nonexistent/ca.pem"],
            "/nonexistent/ca.pem",
        ),
        (
            &["get", "https://localhost:1/", "--data", "/nonexistent/body"],
            "/nonexistent/body",
        ),
        (
            &["get", "https://localhost:1/", "-H", "no-colon"],
            "Name: value",
        ),
        (
            &["get", "https://localhost:1/", "--ca", "/x", "--insecure"],
            "--insecure",
        ),
        (
            &["get", "https://localhost:1/", "--resolve", "localhost:1"],
            "HOST:PORT:ADDR",
        ),
    ];
    for (args, needle) in cases {
        let out = troupe().args(*args).output().unwrap();
        assert!(!out.status.success(), "{args:?} succeeded");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains(needle), "{args:?}: {err}");
    }
}

/// SIGTERM while a download is in flight: it completes, then the server exits 0.
#[test]
fn sigterm_finishes_downloads_then_exits_zero() {
    signal_finishes_downloads_then_exits_zero("-TERM");
}

/// The same for SIGINT (Ctrl-C).
#[test]
fn sigint_finishes_downloads_then_exits_zero() {
    signal_finishes_downloads_then_exits_zero("-INT");
}

fn signal_finishes_downloads_then_exits_zero(signal: &str) {
    let (mut server, port, cert) = serve(&[]);
    let pid = server.0.id().to_string();
    let dir = std::env::temp_dir().join(format!(
        "troupe-cli-{}-{}",
        signal.trim_start_matches('-'),
        std::process::id()
    ));
    std::fs::create_dir_all(&dir).unwrap();
    let out = dir.join("big.bin");
    let n = 300 << 20;
    // A rate-limited reader: troupe get writing into a pipe we drain slowly is awkward in a
    // test; a large body is enough for the signal to land mid-transfer.
    let mut get = Command::new(env!("CARGO_BIN_EXE_troupe"))
        .args(["get", &format!("https://localhost:{port}/bytes/{n}"), "-o"])
        .arg(&out)
        .arg("--ca")
        .arg(&cert)
        .spawn()
        .unwrap();
    // Wait until bytes are flowing, then signal.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while std::fs::metadata(&out).map(|m| m.len()).unwrap_or(0) == 0 {
        assert!(
            std::time::Instant::now() < deadline,
            "download never started"
        );
        std::thread::sleep(std::time::Duration::from_millis(1));
    }
    let status = Command::new("kill").args([signal, &pid]).status().unwrap();
    assert!(status.success());
    let at_signal = std::fs::metadata(&out).unwrap().len();
    assert!(
        at_signal < n as u64,
        "the download had already finished when the signal was sent"
    );
    assert!(
        get.wait().unwrap().success(),
        "the download in flight must complete"
    );
    assert_eq!(std::fs::metadata(&out).unwrap().len(), n as u64);
    let exit = server.0.wait().unwrap();
    assert_eq!(exit.code(), Some(0), "graceful shutdown exits 0");
    let _ = std::fs::remove_dir_all(&dir);
}

/// A second signal exits at once, even with a connection still open.
#[test]
fn second_signal_exits_at_once() {
    let mut server = Reaped(
        troupe()
            .args(["serve", "--listen", "127.0.0.1:0", "--drain-timeout", "60"])
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap(),
    );
    let pid = server.0.id().to_string();
    let mut out = BufReader::new(server.0.stdout.take().unwrap()).lines();
    let first = out.next().unwrap().unwrap();
    let port: u16 = first
        .rsplit(':')
        .next()
        .unwrap()
        .split_whitespace()
        .next()
        .unwrap()
        .parse()
        .unwrap();
    let cert = out.next().unwrap().unwrap();
    let cert = cert
        .strip_prefix("self-signed certificate for localhost: ")
        .unwrap()
        .to_string();
    std::thread::spawn(move || for _ in out {});
    let mut err = BufReader::new(server.0.stderr.take().unwrap()).lines();

    // A client that keeps its connection busy: a download whose output nobody reads.
    let mut get = Reaped(
        Command::new(env!("CARGO_BIN_EXE_troupe"))
            .args([
                "get",
                &format!("https://localhost:{port}/bytes/1000000000"),
                "-v",
                "--ca",
            ])
            .arg(&cert)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap(),
    );
    let mut get_err = BufReader::new(get.0.stderr.take().unwrap()).lines();
    // The response has started: the connection is open and busy.
    assert!(get_err.any(|l| l.unwrap().starts_with("< HTTP/3 200")));

    Command::new("kill").args(["-TERM", &pid]).status().unwrap();
    // The server says it is draining...
    assert!(err.any(|l| l.unwrap().contains("shutting down")));
    // ...and keeps draining: the download is unread, so it cannot finish.
    assert!(
        server.0.try_wait().unwrap().is_none(),
        "still draining after one signal"
    );
    Command::new("kill").args(["-INT", &pid]).status().unwrap();
    let start = std::time::Instant::now();
    let exit = server.0.wait().unwrap();
    assert!(start.elapsed() < std::time::Duration::from_secs(5));
    assert_eq!(exit.code(), Some(130));
    let _ = get.0.kill();
}

trait WaitRef {
    /// Waits for the process and returns its status and stderr.
    fn wait_with_output_ref(&mut self) -> (std::process::ExitStatus, String);
}

impl WaitRef for Child {
    fn wait_with_output_ref(&mut self) -> (std::process::ExitStatus, String) {
        use std::io::Read;
        let mut err = String::new();
        if let Some(mut e) = self.stderr.take() {
            let _ = e.read_to_string(&mut err);
        }
        (self.wait().unwrap(), err)
    }
}

/// Reads lines from `child`'s stdout until one starts with `prefix`; returns the rest of it and
/// leaves a thread draining the remaining output.
fn line_starting(child: &mut Reaped, prefix: &str) -> String {
    let mut lines = BufReader::new(child.0.stdout.take().unwrap()).lines();
    let mut seen = Vec::new();
    let found = loop {
        let Some(Ok(line)) = lines.next() else {
            panic!("no line starting {prefix:?}; saw {seen:?}");
        };
        if let Some(rest) = line.strip_prefix(prefix) {
            break rest.to_string();
        }
        seen.push(line);
    };
    std::thread::spawn(move || for _ in lines {});
    found
}

#[test]
fn proxy_and_udp_tunnel_carry_datagrams_to_an_allowed_target_only() {
    // The target: a UDP echo server on loopback.
    let echo = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    let echo_addr = echo.local_addr().unwrap();
    std::thread::spawn(move || {
        let mut buf = [0u8; 2048];
        while let Ok((n, from)) = echo.recv_from(&mut buf) {
            let _ = echo.send_to(&buf[..n], from);
        }
    });
    let mut proxy = Reaped(
        troupe()
            .args(["proxy", "--listen", "127.0.0.1:0", "--allow"])
            .arg(echo_addr.to_string())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .unwrap(),
    );
    let mut lines = BufReader::new(proxy.0.stdout.take().unwrap()).lines();
    let first = lines.next().unwrap().unwrap();
    let port: u16 = first
        .strip_prefix("troupe proxy serving CONNECT-UDP on 127.0.0.1:")
        .and_then(|r| r.strip_suffix(" (UDP)"))
        .unwrap_or_else(|| panic!("unexpected first line {first:?}"))
        .parse()
        .unwrap();
    let second = lines.next().unwrap().unwrap();
    let cert = second
        .strip_prefix("self-signed certificate for localhost: ")
        .unwrap_or_else(|| panic!("unexpected second line {second:?}"))
        .to_string();
    std::thread::spawn(move || for _ in lines {});
    let proxy_url = format!("https://localhost:{port}/");

    let mut tunnel = Reaped(
        troupe()
            .args(["udp-tunnel", "--proxy", &proxy_url, "--target"])
            .arg(echo_addr.to_string())
            .args(["--ca", &cert])
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .unwrap(),
    );
    let rest = line_starting(&mut tunnel, "forwarding UDP ");
    let local: std::net::SocketAddr = rest.split(' ').next().unwrap().parse().unwrap();
    let app = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    app.set_read_timeout(Some(std::time::Duration::from_secs(5)))
        .unwrap();
    let mut buf = [0u8; 2048];
    // 10,000 datagrams of 1 to 1,200 bytes, at most 32 unanswered, each echo checked byte for
    // byte. Datagram `i` starts with `i` (as much of its 4 bytes as fits); one shorter than 4
    // bytes goes alone, so its echo is unambiguous.
    const N: u32 = 10_000;
    const WINDOW: usize = 32;
    let datagram = |i: u32| -> Vec<u8> {
        let len = 1 + (i as usize * 7919) % 1200;
        let mut p: Vec<u8> = i.to_be_bytes().to_vec();
        p.extend((4..len.max(4)).map(|k| (i as usize * 31 + k) as u8));
        p.truncate(len);
        p
    };
    let mut in_flight = std::collections::HashMap::new();
    let (mut next, mut got) = (0u32, 0u32);
    while got < N {
        while next < N && in_flight.len() < WINDOW {
            let d = datagram(next);
            if d.len() < 4 && !in_flight.is_empty() {
                break;
            }
            app.send_to(&d, local).unwrap();
            let alone = d.len() < 4;
            in_flight.insert(next, d);
            next += 1;
            if alone {
                break;
            }
        }
        let (n, _) = app
            .recv_from(&mut buf)
            .unwrap_or_else(|e| panic!("echo {got} of {N} lost or late: {e}"));
        let echo = &buf[..n];
        let seq = if n >= 4 {
            u32::from_be_bytes(echo[..4].try_into().unwrap())
        } else {
            *in_flight.keys().next().expect("an echo nobody sent")
        };
        let sent = in_flight
            .remove(&seq)
            .unwrap_or_else(|| panic!("echo of {seq}, not in flight"));
        assert_eq!(echo, &sent[..], "datagram {seq} came back changed");
        got += 1;
    }

    // A second proxy, drained with SIGTERM while a tunnel runs: its flows end (GOAWAY), it
    // exits 0 well before its drain deadline, and the tunnel learns the proxy closed it.
    let mut draining = Reaped(
        troupe()
            .args([
                "proxy",
                "--listen",
                "127.0.0.1:0",
                "--drain-timeout",
                "30",
                "--allow",
            ])
            .arg(echo_addr.to_string())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    );
    let rest = line_starting(
        &mut draining,
        "troupe proxy serving CONNECT-UDP on 127.0.0.1:",
    );
    let dport: u16 = rest.strip_suffix(" (UDP)").unwrap().parse().unwrap();
    let mut t2 = Reaped(
        troupe()
            .args([
                "udp-tunnel",
                "--proxy",
                &format!("https://localhost:{dport}/"),
                "-k",
                "--target",
            ])
            .arg(echo_addr.to_string())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap(),
    );
    let rest = line_starting(&mut t2, "forwarding UDP ");
    let local2: std::net::SocketAddr = rest.split(' ').next().unwrap().parse().unwrap();
    app.send_to(b"before the drain", local2).unwrap();
    let (n, _) = app.recv_from(&mut buf).unwrap();
    assert_eq!(&buf[..n], b"before the drain");
    let started = std::time::Instant::now();
    let pid = draining.0.id().to_string();
    assert!(Command::new("kill")
        .args(["-TERM", &pid])
        .status()
        .unwrap()
        .success());
    let status = draining.0.wait().unwrap();
    assert!(status.success(), "{status}");
    assert!(
        started.elapsed() < std::time::Duration::from_secs(10),
        "drained in {:?}, not at the deadline",
        started.elapsed()
    );
    let out = t2.0.wait_with_output_ref();
    assert!(!out.0.success());
    assert!(out.1.contains("closed the tunnel"), "{}", out.1);
    drop(tunnel);

    // A target the proxy does not allow: refused with 403 and Proxy-Status, the tunnel exits.
    let out = troupe()
        .args([
            "udp-tunnel",
            "--proxy",
            &proxy_url,
            "--target",
            "127.0.0.2:9",
            "--ca",
            &cert,
        ])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("403")
            && err.contains("destination_ip_prohibited")
            && err.contains("loopback"),
        "{err}"
    );
    for (args, needle) in [
        (vec!["proxy", "--allow", "nonsense"], "HOST:PORT"),
        (vec!["proxy", "--deny", "10.0.0.0/33"], "CIDR"),
        (vec!["proxy", "--template", "/no/variables"], "target_host"),
        (
            vec!["udp-tunnel", "--proxy", "http://x/", "--target", "a:1"],
            "https://",
        ),
        (
            vec!["udp-tunnel", "--proxy", "https://x/", "--target", "::1:53"],
            "brackets",
        ),
    ] {
        let out = troupe().args(&args).output().unwrap();
        assert!(!out.status.success(), "{args:?}");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains(needle), "{args:?}: {err}");
    }
}
