//! Project tasks. `cargo xtask run` starts a local server; `cargo xtask test` runs every check
//! CI runs. Both first install the system packages quiche's BoringSSL build needs.

use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode};

/// Debian packages the BoringSSL build (inside quiche's `boring-sys`) needs, with the command
/// that shows each is present.
const SYSTEM_DEPS: &[(&str, &str)] = &[
    ("cmake", "cmake"),
    ("clang", "clang"),
    ("libclang-dev", "libclang"),
];

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let result = match args.first().map(String::as_str) {
        Some("run") => run(&args[1..]),
        Some("test") => test(),
        Some("bench") if args.get(1).map(String::as_str) == Some("--profile") => {
            bench_profile(args.get(2).map(String::as_str).unwrap_or("1x100"))
        }
        Some("bench") if args.get(1).map(String::as_str) == Some("--instructions") => {
            bench_instructions()
        }
        Some("bench") if args.len() == 1 => bench(),
        _ => {
            eprintln!(
                "usage: cargo xtask <run [serve flags...] | test | bench>\n\
                 \x20 run    install build dependencies, build release, start `troupe serve` on 127.0.0.1:4433\n\
                 \x20 test   install build dependencies, then fmt --check, clippy -D warnings, the whole test suite\n\
                 \x20 bench  the troupe vs tokio-quiche benchmark (release)\n\
                 \x20 bench --profile [1x100|50x10|handshakes|download]  flame graphs of troupe and tokio-quiche\n\
                 \x20        under the same load, in target/bench/profile\n\
                 \x20 bench --instructions  instructions per small request of troupe and tokio-quiche,\n\
                 \x20        counted by valgrind (steady where CPU times are noisy)"
            );
            return ExitCode::from(2);
        }
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("xtask: {e}");
            ExitCode::FAILURE
        }
    }
}

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("xtask lives in the workspace")
        .to_path_buf()
}

fn cargo() -> Command {
    let mut c = Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()));
    c.current_dir(root());
    // Incremental state is only of use to a next edit-and-build; CI builds once from a clean
    // clone, and the state roughly doubled `target/` (a cold CI run once died with ENOSPC).
    // An explicit setting from the caller wins.
    if std::env::var_os("CARGO_INCREMENTAL").is_none() {
        c.env("CARGO_INCREMENTAL", "0");
    }
    c
}

/// Free space a cold `cargo xtask test` needs in `target/`, with room to spare: measured at
/// about 6 GiB (debug builds, clippy metadata, doctests).
const DISK_NEEDED_BYTES: u64 = 10 << 30;

/// Says so, before building, when the disk holding `target/` has less free space than a cold
/// build needs: the compiler's own out-of-space failure is an opaque internal error.
fn warn_if_disk_is_short() {
    let Ok(out) = Command::new("df").args(["-Pk"]).arg(root()).output() else {
        return;
    };
    if let Some(free) = df_available_bytes(&String::from_utf8_lossy(&out.stdout)) {
        if free < DISK_NEEDED_BYTES {
            eprintln!(
                "xtask: warning: only {} MiB free beside {}; a cold build needs about {} MiB \
                 (free space, or set CARGO_TARGET_DIR to a roomier disk)",
                free >> 20,
                root().display(),
                DISK_NEEDED_BYTES >> 20
            );
        }
    }
}

/// Available bytes from `df -Pk` output (POSIX format: a header line, then one line per file
/// system whose fourth column is the available space in KiB). `None` when it cannot be read.
fn df_available_bytes(df: &str) -> Option<u64> {
    let line = df.lines().nth(1)?;
    let kib: u64 = line.split_whitespace().nth(3)?.parse().ok()?;
    kib.checked_mul(1024)
}

fn step(what: &str, cmd: &mut Command) -> Result<(), String> {
    eprintln!("xtask: {what}");
    let status = cmd
        .status()
        .map_err(|e| format!("cannot start `{what}`: {e}"))?;
    if status.success() {
        Ok(())
    } else {
        Err(format!("`{what}` failed ({status})"))
    }
}

fn have_command(name: &str) -> bool {
    Command::new("sh")
        .args(["-c", &format!("command -v {name} >/dev/null 2>&1")])
        .status()
        .map(|s| s.success())
        .unwrap_or(false)
}

fn have_libclang() -> bool {
    // bindgen finds libclang.so through LIBCLANG_PATH or the usual library directories.
    if std::env::var_os("LIBCLANG_PATH").is_some() {
        return true;
    }
    let mut dirs: Vec<PathBuf> = vec!["/usr/lib".into(), "/usr/local/lib".into()];
    for parent in ["/usr/lib", "/usr/lib64"] {
        if let Ok(entries) = std::fs::read_dir(parent) {
            for e in entries.flatten() {
                let name = e.file_name().to_string_lossy().into_owned();
                if name.starts_with("llvm-") {
                    dirs.push(e.path().join("lib"));
                } else if name.ends_with("-linux-gnu") {
                    dirs.push(e.path());
                }
            }
        }
    }
    dirs.iter().any(|d| {
        std::fs::read_dir(d)
            .map(|entries| {
                entries.flatten().any(|e| {
                    let n = e.file_name().to_string_lossy().into_owned();
                    n.starts_with("libclang") && !n.starts_with("libclang-cpp") && n.contains(".so")
                })
            })
            .unwrap_or(false)
    })
}

/// Installs whatever of cmake, clang and libclang-dev is missing (apt-get, as root).
fn ensure_system_deps() -> Result<(), String> {
    let missing: Vec<&str> = SYSTEM_DEPS
        .iter()
        .filter(|(_, probe)| match *probe {
            "libclang" => !have_libclang(),
            cmd => !have_command(cmd),
        })
        .map(|(pkg, _)| *pkg)
        .collect();
    if missing.is_empty() {
        return Ok(());
    }
    eprintln!(
        "xtask: quiche's BoringSSL build needs {}; installing with apt-get",
        missing.join(", ")
    );
    if !is_root() {
        return Err(format!(
            "missing {}: run `sudo apt-get install -y {}` (or run xtask as root)",
            missing.join(", "),
            missing.join(" ")
        ));
    }
    apt_install(&missing)
}

fn apt_install(packages: &[&str]) -> Result<(), String> {
    step(
        "apt-get update",
        Command::new("apt-get").args(["update", "-qq"]),
    )?;
    step(
        &format!("apt-get install -y {}", packages.join(" ")),
        Command::new("apt-get")
            .args(["install", "-y", "-qq", "--no-install-recommends"])
            .args(packages)
            .env("DEBIAN_FRONTEND", "noninteractive"),
    )
}

fn run(extra: &[String]) -> Result<(), String> {
    ensure_system_deps()?;
    step(
        "cargo build --release -p troupe-cli",
        cargo().args(["build", "--release", "-p", "troupe-cli"]),
    )?;
    let bin = root().join("target/release/troupe");
    let mut cmd = Command::new(bin);
    // Without arguments: 127.0.0.1:4433 and [::1]:4433, the addresses of localhost.
    cmd.arg("serve").args(extra);
    step("troupe serve", &mut cmd)
}

/// The admin page's browser test needs Debian's Chromium (and a font to draw the screenshot
/// with); installs them when missing (apt-get, as root).
fn ensure_chromium() -> Result<(), String> {
    if Path::new("/usr/bin/chromium").exists() {
        return Ok(());
    }
    eprintln!(
        "xtask: the admin page's test drives headless Chromium; installing chromium and fonts-liberation with apt-get"
    );
    if !is_root() {
        return Err(
            "missing chromium: run `sudo apt-get install -y chromium fonts-liberation` (or run xtask as root)"
                .into(),
        );
    }
    apt_install(&["chromium", "fonts-liberation"])
}

/// As root, the tests about off-machine targets must run in their loopback-only network
/// namespace rather than skip.
fn netns_required() -> Vec<(&'static str, &'static str)> {
    if is_root() {
        vec![("TROUPE_REQUIRE_NETNS", "1")]
    } else {
        eprintln!("xtask: not root: tests needing a network namespace (unshare -n) will skip");
        Vec::new()
    }
}

fn is_root() -> bool {
    Command::new("id")
        .arg("-u")
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim() == "0")
        .unwrap_or(false)
}

fn test() -> Result<(), String> {
    ensure_system_deps()?;
    warn_if_disk_is_short();
    ensure_chromium()?;
    step(
        "cargo fmt --all --check",
        cargo().args(["fmt", "--all", "--check"]),
    )?;
    step(
        "cargo clippy --workspace --all-targets -- -D warnings",
        cargo().args([
            "clippy",
            "--workspace",
            "--all-targets",
            "--",
            "-D",
            "warnings",
        ]),
    )?;
    // The `cluster` feature (explicit ractor `Message` impls) must keep compiling; libraries
    // only, as user code (tests, examples) needs its own impls under it. Checked across the
    // whole workspace so every other crate's features unify as in the step above: with
    // `-p troupe` alone they differed and BoringSSL was built again (4.5 of CI's minutes,
    // against 25 s).
    step(
        "cargo clippy --workspace --lib --features troupe/cluster -- -D warnings",
        cargo().args([
            "clippy",
            "--workspace",
            "--lib",
            "--features",
            "troupe/cluster",
            "--",
            "-D",
            "warnings",
        ]),
    )?;
    let nextest = Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()))
        .args(["nextest", "--version"])
        .output()
        .map(|o| o.status.success())
        .unwrap_or(false);
    if nextest {
        step(
            "cargo nextest run --workspace",
            cargo()
                .args(["nextest", "run", "--workspace", "--no-fail-fast"])
                .env("TROUPE_REQUIRE_CHROMIUM", "1")
                .envs(netns_required()),
        )?;
        // nextest does not run doctests.
        step(
            "cargo test --workspace --doc",
            cargo().args(["test", "--workspace", "--doc"]),
        )
    } else {
        step(
            "cargo test --workspace",
            cargo()
                .args(["test", "--workspace", "--no-fail-fast"])
                .env("TROUPE_REQUIRE_CHROMIUM", "1")
                .envs(netns_required()),
        )
    }
}

/// Flame graphs of both servers under the same load (`scenario`): `perf` samples, `inferno`
/// draws.
fn bench_profile(scenario: &str) -> Result<(), String> {
    ensure_load_generator()?;
    if !have_command("perf") {
        eprintln!("xtask: profiling needs perf; installing linux-perf");
        apt_install(&["linux-perf"])
            .map_err(|e| format!("{e}; install the Debian package linux-perf"))?;
    }
    if !have_command("inferno-flamegraph") {
        step(
            "cargo install inferno (folds perf's stacks and draws the flame graphs)",
            cargo().args([
                "install",
                "inferno",
                "--locked",
                "--no-default-features",
                "--features",
                "cli",
            ]),
        )?;
    }
    step(
        &format!("BENCH_PROFILE={scenario} cargo bench --bench h3_vs_tokio_quiche"),
        cargo()
            .args(["bench", "--bench", "h3_vs_tokio_quiche"])
            .env("BENCH_PROFILE", scenario),
    )
}

/// Instructions per small request of both servers, counted by valgrind.
fn bench_instructions() -> Result<(), String> {
    ensure_load_generator()?;
    ensure_valgrind()?;
    step(
        "BENCH_INSTRUCTIONS_ONLY=1 cargo bench --bench h3_vs_tokio_quiche",
        cargo()
            .args(["bench", "--bench", "h3_vs_tokio_quiche"])
            .env("BENCH_INSTRUCTIONS_ONLY", "1"),
    )
}

fn ensure_valgrind() -> Result<(), String> {
    if !have_command("valgrind") {
        eprintln!("xtask: the instruction counts need valgrind; installing it");
        apt_install(&["valgrind"])
            .map_err(|e| format!("{e}; install the Debian package valgrind"))?;
    }
    Ok(())
}

fn ensure_load_generator() -> Result<(), String> {
    ensure_system_deps()?;
    // The load generator: ngtcp2's client, a C HTTP/3 client cheap enough not to be the
    // bottleneck; the HTTP/3 benchmark needs it.
    if !have_command("gtlsclient") {
        eprintln!("xtask: the benchmark's load generator is ngtcp2's gtlsclient; installing ngtcp2-client");
        apt_install(&["ngtcp2-client"]).map_err(|e| {
            format!("{e}; install the Debian package ngtcp2-client (it provides gtlsclient)")
        })?;
    }
    Ok(())
}

fn bench() -> Result<(), String> {
    ensure_load_generator()?;
    if let Err(e) = ensure_valgrind() {
        // The instruction counts are a second view: the benchmark skips them without it.
        eprintln!("xtask: {e}; the benchmark runs without the instruction counts");
    }
    step(
        "cargo bench --bench h3_vs_tokio_quiche",
        cargo().args(["bench", "--bench", "h3_vs_tokio_quiche"]),
    )?;
    step(
        "cargo bench --bench stream_path",
        cargo().args(["bench", "--bench", "stream_path"]),
    )?;
    step(
        "cargo bench --bench live_tree",
        cargo().args(["bench", "--bench", "live_tree"]),
    )?;
    step(
        "cargo bench --bench connect_udp",
        cargo().args(["bench", "--bench", "connect_udp"]),
    )
}

#[cfg(test)]
mod tests {
    use super::df_available_bytes;

    #[test]
    fn reads_available_space_from_posix_df() {
        let out = "Filesystem     1024-blocks     Used Available Capacity Mounted on\n\
                   /dev/vda         263174212 49283412 201000000      20% /\n";
        assert_eq!(df_available_bytes(out), Some(201_000_000 * 1024));
    }

    #[test]
    fn zero_free_space_is_read_as_zero() {
        let out = "Filesystem 1024-blocks Used Available Capacity Mounted on\n\
                   /dev/vda 100 100 0 100% /\n";
        assert_eq!(df_available_bytes(out), Some(0));
    }

    #[test]
    fn unreadable_output_is_none() {
        assert_eq!(df_available_bytes(""), None);
        assert_eq!(df_available_bytes("header only\n"), None);
        assert_eq!(df_available_bytes("h\n/dev/vda 1 2 lots 1% /\n"), None);
        assert_eq!(
            df_available_bytes("h\n/dev/vda 1 2 99999999999999999999 1% /\n"),
            None
        );
    }
}
