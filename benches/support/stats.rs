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

/// A distribution-free confidence interval for the median of some values: two of the values
/// themselves, by rank.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct MedianInterval {
    /// The lower bound (the `k`-th smallest value).
    pub lo: f64,
    /// The upper bound (the `k`-th largest value).
    pub hi: f64,
    /// The probability that the interval holds the true median: at least the confidence asked
    /// for, exactly what the ranks give (they come in steps).
    pub coverage: f64,
}

/// The narrowest interval `[k-th smallest, k-th largest]` of the finite `values` that holds
/// their population's median with probability at least `confidence`, whatever the distribution
/// (the number of values below the median is binomial with p = 1/2, so the interval misses it
/// with probability `2 P(Bin(n, 1/2) < k)`). Rounds of a benchmark are noisy in ways no normal
/// law describes (a neighbour's burst makes one round 1.4x), so this uses ranks, not a mean
/// and a standard deviation. `None` when there are too few values for that confidence (with
/// fewer than five, not even the full range reaches 90%).
pub fn median_interval(values: &[f64], confidence: f64) -> Option<MedianInterval> {
    let mut v: Vec<f64> = values.iter().copied().filter(|x| x.is_finite()).collect();
    v.sort_by(f64::total_cmp);
    let n = v.len();
    // P(Bin(n, 1/2) = i) from logarithms: exact enough, and no underflow for large n.
    let ln_half_n = n as f64 * 0.5f64.ln();
    let mut ln_choose = 0.0f64; // ln C(n, i), starting at i = 0
    let mut below = 0.0f64; // P(Bin(n, 1/2) < k)
    let mut best = None;
    for k in 1..=n / 2 {
        let i = k - 1;
        if i > 0 {
            ln_choose += ((n - i + 1) as f64).ln() - (i as f64).ln();
        }
        below += (ln_choose + ln_half_n).exp();
        let coverage = 1.0 - 2.0 * below;
        if coverage < confidence {
            break;
        }
        best = Some(MedianInterval {
            lo: v[k - 1],
            hi: v[n - k],
            coverage,
        });
    }
    best
}
