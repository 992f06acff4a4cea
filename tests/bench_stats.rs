//! The benchmarks' pure summary code, tested where the suite runs (benchmarks are not).

#[path = "../benches/support/stats.rs"]
mod stats;

use stats::spread;

#[test]
fn no_values_is_all_nan() {
    let s = spread(&[]);
    assert!(s.median.is_nan() && s.min.is_nan() && s.max.is_nan());
    assert!(spread(&[f64::NAN, f64::INFINITY]).median.is_nan());
}

#[test]
fn one_value_is_its_own_spread() {
    let s = spread(&[2.5]);
    assert_eq!((s.median, s.min, s.max), (2.5, 2.5, 2.5));
}

#[test]
fn three_values_in_any_order() {
    let s = spread(&[3.0, 1.0, 2.0]);
    assert_eq!((s.median, s.min, s.max), (2.0, 1.0, 3.0));
    let s = spread(&[4.0, 1.0, 3.0, 2.0]);
    assert_eq!((s.median, s.min, s.max), (2.5, 1.0, 4.0));
}

#[test]
fn non_finite_rounds_are_left_out() {
    let s = spread(&[1.0, f64::NAN, 5.0, f64::INFINITY, 3.0]);
    assert_eq!((s.median, s.min, s.max), (3.0, 1.0, 5.0));
}

#[test]
fn many_rounds_and_extreme_values() {
    let v: Vec<f64> = (0..1001).map(f64::from).rev().collect();
    let s = spread(&v);
    assert_eq!((s.median, s.min, s.max), (500.0, 0.0, 1000.0));
    let s = spread(&[f64::MAX, f64::MIN, 0.0]);
    assert_eq!((s.median, s.min, s.max), (0.0, f64::MIN, f64::MAX));
}

#[test]
fn no_rounds_pair_to_no_ratios() {
    assert!(stats::paired_ratios(&[], &[]).is_empty());
    assert!(stats::paired_ratios(&[None, None], &[None, None]).is_empty());
}

#[test]
fn one_round_pairs_to_its_ratio() {
    assert_eq!(stats::paired_ratios(&[Some(3.0)], &[Some(2.0)]), vec![1.5]);
}

#[test]
fn rounds_pair_by_index_and_skip_what_either_did_not_measure() {
    let a = [Some(2.0), None, Some(6.0), Some(1.0), Some(9.0)];
    let b = [Some(1.0), Some(5.0), Some(3.0), None, Some(3.0)];
    assert_eq!(stats::paired_ratios(&a, &b), vec![2.0, 2.0, 3.0]);
}

#[test]
fn rounds_past_the_shorter_list_are_left_out() {
    let a = [Some(4.0), Some(4.0), Some(4.0)];
    let b = [Some(2.0)];
    assert_eq!(stats::paired_ratios(&a, &b), vec![2.0]);
    assert_eq!(stats::paired_ratios(&b, &a), vec![0.5]);
}

/// Values 0.0, 1.0, ... in a scrambled order, so a bound is read off its rank.
fn ranks(n: usize) -> Vec<f64> {
    (0..n).map(|i| ((i * 7919) % n) as f64).collect()
}

#[test]
fn no_values_or_too_few_have_no_interval() {
    assert_eq!(stats::median_interval(&[], 0.9), None);
    assert_eq!(stats::median_interval(&[1.0], 0.9), None);
    assert_eq!(
        stats::median_interval(&[f64::NAN, f64::INFINITY], 0.5),
        None
    );
    // Four values: the full range holds the median with probability 1 - 2/16 = 0.875.
    assert_eq!(stats::median_interval(&ranks(4), 0.9), None);
}

#[test]
fn three_values_reach_three_quarters_with_their_range() {
    // The median lies outside [min, max] only when all three fall on one side: 2/8.
    let i = stats::median_interval(&[3.0, 1.0, 2.0], 0.75).unwrap();
    assert_eq!((i.lo, i.hi, i.coverage), (1.0, 3.0, 0.75));
    assert_eq!(stats::median_interval(&[3.0, 1.0, 2.0], 0.76), None);
}

#[test]
fn fifteen_values_at_ninety_percent_take_the_fourth_from_each_end() {
    // P(Bin(15, 1/2) <= 3) = 576/32768; the fifth from each end covers only 88.2%.
    let i = stats::median_interval(&ranks(15), 0.9).unwrap();
    assert_eq!((i.lo, i.hi), (3.0, 11.0));
    assert!((i.coverage - (1.0 - 2.0 * 576.0 / 32768.0)).abs() < 1e-12);
    let wide = stats::median_interval(&ranks(15), 0.99).unwrap();
    assert_eq!((wide.lo, wide.hi), (2.0, 12.0));
}

#[test]
fn thirty_values_at_ninety_percent_take_the_eleventh_from_each_end() {
    let i = stats::median_interval(&ranks(30), 0.9).unwrap();
    assert_eq!((i.lo, i.hi), (10.0, 19.0));
    assert!(i.coverage >= 0.9 && i.coverage < 0.91, "{}", i.coverage);
}

#[test]
fn many_values_narrow_around_the_median_without_underflow() {
    let n = 10_001;
    let i = stats::median_interval(&ranks(n), 0.9).unwrap();
    // About 1.645 standard deviations (sqrt(n)/2 = 50) either side of the middle rank, 5000.
    assert!((4910.0..=4925.0).contains(&i.lo), "{}", i.lo);
    assert_eq!(i.lo + i.hi, 10_000.0);
    assert!(i.coverage >= 0.9 && i.coverage < 0.905, "{}", i.coverage);
}

#[test]
fn non_finite_values_are_left_out_of_the_interval() {
    let mut v = ranks(15);
    v.extend([f64::NAN, f64::INFINITY, f64::NEG_INFINITY]);
    let i = stats::median_interval(&v, 0.9).unwrap();
    assert_eq!((i.lo, i.hi), (3.0, 11.0));
}

#[path = "../benches/support/select.rs"]
mod select;

const NAMES: [&str; 4] = ["1x100 small", "download", "upload", "handshakes"];

#[test]
fn no_list_or_an_empty_one_picks_every_scenario() {
    assert_eq!(select::pick(&NAMES, None), Ok(vec![0, 1, 2, 3]));
    assert_eq!(select::pick(&NAMES, Some("")), Ok(vec![0, 1, 2, 3]));
    assert_eq!(select::pick(&NAMES, Some(" , ,")), Ok(vec![0, 1, 2, 3]));
    assert_eq!(select::pick(&[], None), Ok(vec![]));
}

#[test]
fn one_name_picks_that_scenario() {
    assert_eq!(select::pick(&NAMES, Some("handshakes")), Ok(vec![3]));
    assert_eq!(select::pick(&NAMES, Some(" 1x100 small ")), Ok(vec![0]));
}

#[test]
fn several_names_keep_the_scenarios_order_and_count_once() {
    assert_eq!(
        select::pick(&NAMES, Some("upload,1x100 small, download,upload")),
        Ok(vec![0, 1, 2])
    );
    assert_eq!(
        select::pick(&NAMES, Some("handshakes,upload,download,1x100 small")),
        Ok(vec![0, 1, 2, 3])
    );
}

#[test]
fn an_unknown_name_is_an_error_that_lists_the_scenarios() {
    let e = select::pick(&NAMES, Some("download,handshake")).unwrap_err();
    assert!(e.contains("`handshake`"), "{e}");
    assert!(
        e.contains("1x100 small, download, upload, handshakes"),
        "{e}"
    );
    assert!(select::pick(&[], Some("download")).is_err());
}
