//! Running and measuring the benchmarks' server processes: shared by the benchmarks that
//! include it.

use std::ffi::OsStr;
use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};

/// A child process, killed and reaped when dropped (a failed run leaves nothing behind).
pub struct Proc(pub Child);

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// The kernel's clock ticks per second, the unit of /proc's CPU times.
pub fn clock_ticks() -> f64 {
    Command::new("getconf")
        .arg("CLK_TCK")
        .output()
        .ok()
        .and_then(|o| String::from_utf8_lossy(&o.stdout).trim().parse().ok())
        .unwrap_or(100.0)
}

/// User + system CPU seconds of a process (all threads), fields 14 and 15 of
/// `/proc/PID/stat`; with `children`, those of its reaped children (fields 16 and 17).
pub fn cpu_secs(pid: &str, children: bool, tck: f64) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    let after = stat.rsplit_once(')').map(|x| x.1).unwrap_or("");
    let f: Vec<&str> = after.split_whitespace().collect();
    let at = if children { 13 } else { 11 };
    let ut: f64 = f.get(at).and_then(|v| v.parse().ok()).unwrap_or(0.0);
    let st: f64 = f.get(at + 1).and_then(|v| v.parse().ok()).unwrap_or(0.0);
    (ut + st) / tck
}

/// Whether servers and load generator can be pinned to cores of their own: `taskset` and at
/// least two cores.
pub fn can_pin() -> bool {
    Command::new("taskset").arg("-V").output().is_ok()
        && std::thread::available_parallelism()
            .map(|n| n.get() >= 2)
            .unwrap_or(false)
}

/// Pins this process (all its threads) to core 1, where load generators run.
pub fn pin_self_to_core_1() {
    let me = std::process::id().to_string();
    let _ = Command::new("taskset")
        .args(["-a", "-c", "-p", "1", &me])
        .stdout(Stdio::null())
        .status();
}

/// `bin`, pinned to `core` when `pin`.
pub fn pinned(core: &str, bin: &Path, pin: bool) -> Command {
    if pin {
        let mut c = Command::new("taskset");
        c.args(["-c", core]).arg(bin);
        c
    } else {
        Command::new(bin)
    }
}

/// Starts a server on core 0 and waits for its line `ready_prefix ADDR`; its later output is
/// drained so it never blocks on a full pipe.
pub fn start<S: AsRef<OsStr>>(
    bin: &Path,
    args: &[S],
    ready_prefix: &str,
    pin: bool,
) -> (Proc, SocketAddr) {
    start_on(pin.then_some("0"), bin, args, ready_prefix)
}

/// Like [`start`], on the `cores` given (a `taskset` list), or wherever this process may run.
pub fn start_on<S: AsRef<OsStr>>(
    cores: Option<&str>,
    bin: &Path,
    args: &[S],
    ready_prefix: &str,
) -> (Proc, SocketAddr) {
    let mut child = Proc(
        pinned(cores.unwrap_or(""), bin, cores.is_some())
            .args(args)
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| panic!("start {}: {e}", bin.display())),
    );
    let mut reader = BufReader::new(child.0.stdout.take().unwrap());
    let mut line = String::new();
    loop {
        line.clear();
        if reader.read_line(&mut line).unwrap() == 0 {
            panic!("{} exited before it was ready", bin.display());
        }
        if let Some(rest) = line.trim().strip_prefix(ready_prefix) {
            let addr = rest.split_whitespace().next().unwrap().parse().unwrap();
            std::thread::spawn(move || for _ in reader.lines() {});
            return (child, addr);
        }
    }
}

/// Builds the release binaries the benchmarks run (`troupe`, and tokio-quiche's `tq-serve`,
/// `tq-get` and `tq-udp`) in the workspace at `root`; returns the directory that holds them.
pub fn build_release_binaries(root: &Path) -> PathBuf {
    let status = Command::new(env!("CARGO"))
        .current_dir(root)
        .args([
            "build",
            "--release",
            "--quiet",
            "-p",
            "troupe-cli",
            "-p",
            "tq-peer",
        ])
        .status()
        .expect("cargo build");
    assert!(status.success(), "building the release binaries failed");
    std::env::var("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|_| root.join("target"))
        .join("release")
}
