//! Summaries of benchmark rounds: pure, shared by the benchmarks that include it, and
//! unit-tested in `tests/bench_stats.rs` (which includes it too: benchmarks' own tests never
//! run).

/// The median and range of some values.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Spread {
    /// The median (of the two middle values' mean when there is an even number).
    pub median: f64,
    /// The smallest.
    pub min: f64,
    /// The largest.
    pub max: f64,
}

/// The spread of `values`, leaving out those that are not finite (a round that measured
/// nothing gives a NaN or infinite ratio); all NaN when none is left.
pub fn spread(values: &[f64]) -> Spread {
    let mut v: Vec<f64> = values.iter().copied().filter(|x| x.is_finite()).collect();
    if v.is_empty() {
        return Spread {
            median: f64::NAN,
            min: f64::NAN,
            max: f64::NAN,
        };
    }
    v.sort_by(f64::total_cmp);
    let n = v.len();
    let median = if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    };
    Spread {
        median,
        min: v[0],
        max: v[n - 1],
    }
}

/// The per-round ratios `a / b` of two servers' values of one figure, over the rounds in which
/// both measured it (`None`: the round did not run that figure's scenario). Rounds are paired
/// by index, so a ratio compares two runs seconds apart; rounds past the shorter list are left
/// out.
pub fn paired_ratios(a: &[Option<f64>], b: &[Option<f64>]) -> Vec<f64> {
    a.iter()
        .zip(b)
        .filter_map(|(x, y)| Some((*x)? / (*y)?))
        .collect()
}
