//! CONNECT-UDP throughput: `troupe proxy` beside a tokio-quiche proxy and beside plain UDP, in
//! one run (`cargo bench --bench connect_udp`, or `cargo xtask bench`).
//!
//! A UDP echo server (a thread of this process) is the target. The load generator is `tq-udp`
//! (tokio-quiche's client side), which keeps `WINDOW` datagrams of `SIZE` bytes unanswered and
//! checks every echo byte for byte. It runs three ways:
//!
//! 1. `--direct`: plain UDP to the echo server, no proxy: the most this machine's loopback and
//!    load generator allow;
//! 2. through `troupe proxy --workers 1` (one thread);
//! 3. through `tq-serve`'s CONNECT-UDP (tokio-quiche's own flows, current-thread runtime).
//!
//! Each proxy is pinned to core 0; the load generator and the echo server share core 1. The
//! figures: echoes per second, and proxy CPU per datagram (user + system time from /proc,
//! divided by the datagrams it relayed: every echo is two, one each way). The load generator's
//! CPU share is printed: near 100% of its core means it, not the proxy, set the rate. Ratios
//! are troupe / tokio-quiche.
//!
//! Environment: `BENCH_DATAGRAMS` (default 200000) per run, `BENCH_WINDOW` (default 64),
//! `BENCH_DATAGRAM_SIZE` (default 1200).

use std::net::{SocketAddr, UdpSocket};
use std::path::{Path, PathBuf};
use std::process::Stdio;

#[path = "support/procs.rs"]
mod procs;
use procs::{
    build_release_binaries, can_pin, clock_ticks, cpu_secs, pin_self_to_core_1, pinned, start,
};

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn env_or<T: std::str::FromStr>(name: &str, default: T) -> T {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// A UDP echo server on a thread of this process (so on the load generator's core).
fn echo_server() -> SocketAddr {
    let s = UdpSocket::bind("127.0.0.1:0").unwrap();
    let addr = s.local_addr().unwrap();
    std::thread::spawn(move || {
        let mut buf = vec![0u8; 65_536];
        while let Ok((n, from)) = s.recv_from(&mut buf) {
            let _ = s.send_to(&buf[..n], from);
        }
    });
    addr
}

/// What one tq-udp run printed, and what it cost.
struct Run {
    received: u64,
    lost: u64,
    secs: f64,
    client_cpu: f64,
}

fn tq_udp(bin: &Path, args: &[String], pin: bool, tck: f64) -> Run {
    // tq-udp is a child; the echo server is a thread of this process, idle otherwise.
    let c0 = cpu_secs("self", true, tck) + cpu_secs("self", false, tck);
    let out = pinned("1", bin, pin)
        .args(args)
        .stderr(Stdio::inherit())
        .output()
        .expect("run tq-udp");
    let client_cpu = cpu_secs("self", true, tck) + cpu_secs("self", false, tck) - c0;
    let line = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(out.status.success(), "tq-udp failed: {line}");
    let field = |k: &str| -> f64 {
        line.split_whitespace()
            .find_map(|w| {
                w.strip_prefix(&format!("{k}="))
                    .and_then(|v| v.parse().ok())
            })
            .unwrap_or_else(|| panic!("no {k}= in {line:?}"))
    };
    Run {
        received: field("received") as u64,
        lost: field("lost") as u64,
        secs: field("secs"),
        client_cpu,
    }
}

fn main() {
    if std::env::args().any(|a| a == "--list") {
        return;
    }
    let count: u64 = env_or("BENCH_DATAGRAMS", 200_000);
    let window: usize = env_or("BENCH_WINDOW", 64);
    let size: usize = env_or("BENCH_DATAGRAM_SIZE", 1200);

    let release = build_release_binaries(&root());
    let troupe_bin = release.join("troupe");
    let tq_serve = release.join("tq-serve");
    let tq_udp_bin = release.join("tq-udp");

    let pin = can_pin();
    if pin {
        pin_self_to_core_1();
    } else {
        eprintln!("note: taskset or a second core is missing; nothing is pinned");
    }
    let tck = clock_ticks();
    let echo = echo_server();
    println!(
        "CONNECT-UDP: {count} datagrams of {size} bytes, {window} unanswered at most, to a UDP \
         echo server; load generator tq-udp (tokio-quiche client)"
    );
    let load = |proxy: Option<SocketAddr>, n: u64| -> Vec<String> {
        let mut a = vec![
            "--target".to_string(),
            echo.to_string(),
            "--count".into(),
            n.to_string(),
            "--min-size".into(),
            size.to_string(),
            "--max-size".into(),
            size.to_string(),
            "--window".into(),
            window.to_string(),
            "--allow-loss".into(),
        ];
        match proxy {
            Some(p) => a.extend([
                "--proxy".into(),
                format!("localhost:{}", p.port()),
                "--insecure".into(),
            ]),
            None => a.push("--direct".into()),
        }
        a
    };

    let direct = tq_udp(&tq_udp_bin, &load(None, count), pin, tck);
    let direct_rate = direct.received as f64 / direct.secs;
    println!(
        "{:>12}: {:>9.0} echoes/s  (load generator + echo CPU {:>3.0}% of a core, lost {})",
        "plain UDP",
        direct_rate,
        direct.client_cpu / direct.secs * 100.0,
        direct.lost
    );

    let proxies: Vec<(&str, PathBuf, Vec<String>, &str)> = vec![
        (
            "troupe",
            troupe_bin,
            [
                "proxy",
                "--listen",
                "127.0.0.1:0",
                "--workers",
                "1",
                "--allow",
                &echo.to_string(),
            ]
            .map(String::from)
            .to_vec(),
            "troupe proxy serving CONNECT-UDP on ",
        ),
        (
            "tokio-quiche",
            tq_serve,
            ["--listen", "127.0.0.1:0"].map(String::from).to_vec(),
            "tq-serve listening on ",
        ),
    ];
    let mut figures = Vec::new();
    for (name, bin, args, ready) in proxies {
        let (proc_, addr) = start(&bin, &args, ready, pin);
        let pid = proc_.0.id().to_string();
        tq_udp(&tq_udp_bin, &load(Some(addr), 5_000), pin, tck); // warm-up
        let s0 = cpu_secs(&pid, false, tck);
        let r = tq_udp(&tq_udp_bin, &load(Some(addr), count), pin, tck);
        let server_cpu = cpu_secs(&pid, false, tck) - s0;
        let rate = r.received as f64 / r.secs;
        // Each echo crossed the proxy twice; lost ones crossed at least once and are left out.
        let us_per_datagram = server_cpu / (2.0 * r.received as f64) * 1e6;
        println!(
            "{name:>12}: {rate:>9.0} echoes/s ({:.0} datagrams/s through the proxy, {:.2}x plain \
             UDP)  {us_per_datagram:>5.2} us proxy CPU/datagram  (proxy CPU {:>3.0}%, load \
             generator + echo CPU {:>3.0}%, lost {})",
            2.0 * rate,
            rate / direct_rate,
            server_cpu / r.secs * 100.0,
            r.client_cpu / r.secs * 100.0,
            r.lost
        );
        // What one core would relay at this cost: the figure to set beside published ones when
        // the load generator, sharing the other core with the echo server, is the limit.
        println!(
            "{:>12}  at that cost one core relays about {:.0} datagrams/s",
            "",
            1e6 / us_per_datagram
        );
        figures.push((rate, us_per_datagram));
        drop(proc_);
    }
    let (t, q) = (figures[0], figures[1]);
    println!(
        "ratio troupe/tokio-quiche: echoes/s {:.2}x, proxy CPU per datagram {:.2}x (lower is \
         better)",
        t.0 / q.0,
        t.1 / q.1
    );
}
