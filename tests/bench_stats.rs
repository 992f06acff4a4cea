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
