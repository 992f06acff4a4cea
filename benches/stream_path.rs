//! Microbenches of the stream actor's message path and the write-credit protocol
//! (`cargo bench --bench stream_path`, also run by `cargo xtask bench`), on real stream actors
//! driven by a stand-in connection actor that answers at once (`troupe_h3::bench_support`): no
//! quiche, no sockets, so what is left is the actors' own cost.
//!
//! - `stream_actor/request`: one GET whose 1 KiB response fits the first credit, on a parked
//!   actor: `Start`, the handler's call, one `Send` (headers, body, FIN) marked `last` — the
//!   messages every small request costs beside quiche's work.
//! - `credit/256KiB`: one GET answered with 256 KiB, handed over within a first credit of
//!   16 KiB and grants of 16 KiB or 64 KiB: each grant is one `Send{more}` and one `Written`
//!   round trip; the figure per request divided by the grants gives one round trip's cost.

use std::time::{Duration, Instant};

use criterion::{criterion_group, Criterion, Throughput};
use troupe::h3::bench_support::run_requests;

/// Times `iters` requests of `body` bytes on one stand-in connection.
fn timed(
    rt: &tokio::runtime::Runtime,
    iters: u64,
    body: usize,
    first: usize,
    grant: usize,
) -> Duration {
    rt.block_on(async {
        let t = Instant::now();
        let parked = run_requests(iters as usize, body, first, grant)
            .await
            .parked;
        let elapsed = t.elapsed();
        assert_eq!(parked as u64, iters, "every stream actor parks");
        elapsed
    })
}

fn message_path(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let mut g = c.benchmark_group("stream_actor");
    g.throughput(Throughput::Elements(1));
    g.bench_function("request 1KiB", |b| {
        b.iter_custom(|iters| timed(&rt, iters, 1024, 16 * 1024, 16 * 1024))
    });
    g.finish();

    let mut g = c.benchmark_group("credit");
    const BODY: usize = 256 * 1024;
    g.throughput(Throughput::Bytes(BODY as u64));
    for grant in [16 * 1024, 64 * 1024] {
        g.bench_function(format!("256KiB in {} KiB grants", grant / 1024), |b| {
            b.iter_custom(|iters| timed(&rt, iters, BODY, 16 * 1024, grant))
        });
    }
    g.finish();
}

criterion_group! {
    name = benches;
    config = Criterion::default()
        .warm_up_time(Duration::from_millis(500))
        .measurement_time(Duration::from_secs(3));
    targets = message_path
}
/// `STREAM_PATH_REQUESTS=N` runs N requests of 1 KiB once, untimed, and exits: a fixed amount
/// of work for an instruction counter, whose counts, unlike times, do not move with the
/// machine's load. Two runs of different N give the instructions per request by difference:
/// `STREAM_PATH_REQUESTS=1000 valgrind --tool=cachegrind --cache-sim=no <this bench's binary>`,
/// then 11000, and divide the difference of the two `I refs` by 10000.
fn main() {
    if let Ok(n) = std::env::var("STREAM_PATH_REQUESTS") {
        let n: u64 = n
            .parse()
            .expect("STREAM_PATH_REQUESTS must be a number of requests");
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        timed(&rt, n, 1024, 16 * 1024, 16 * 1024);
        return;
    }
    benches();
    Criterion::default().configure_from_args().final_summary();
}
