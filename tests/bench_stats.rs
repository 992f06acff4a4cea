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
