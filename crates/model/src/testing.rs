//! Helpers for tests (the `testing` feature): tensor comparisons with
//! [`coconut_testing::is_close`]'s rule (the semantics of `torch.testing.assert_close`)
//! applied to every element, and the tiny random models of [`crate::tiny_models`], so that a test of
//! the trainer or of generation runs for each architecture.

use coconut_testing::Tolerance;
use tch::{Kind, Tensor};

pub use crate::tiny::{tiny_models, tiny_models_on};

/// Panics unless `actual` and `expected` have one shape and every element of `actual`
/// is within `tol` of the expected element. The message names `what`, the number of
/// elements out of tolerance, and the worst one with its index and both values.
#[track_caller]
pub fn assert_close(actual: &Tensor, expected: &Tensor, tol: Tolerance, what: &str) {
    assert_eq!(actual.size(), expected.size(), "{what}: shapes differ");
    let a = actual.detach().to_kind(Kind::Double).to_device(tch::Device::Cpu).flatten(0, -1);
    let e = expected.detach().to_kind(Kind::Double).to_device(tch::Device::Cpu).flatten(0, -1);
    if e.numel() == 0 {
        return;
    }
    let scale = e.abs().max().double_value(&[]);
    let atol = tol.atol_for(scale);
    let diff = (&a - &e).abs();
    let allowed = e.abs() * tol.rtol + atol;
    // NaN in either makes the element fail: `le` is false for NaN.
    let ok = diff.le_tensor(&allowed);
    let bad = ok.logical_not().sum(Kind::Int64).int64_value(&[]);
    if bad == 0 {
        return;
    }
    let excess = (&diff - &allowed).nan_to_num(f64::INFINITY, None, None);
    let worst = excess.argmax(None, false).int64_value(&[]);
    panic!(
        "{what}: {bad} of {} elements out of tolerance (rtol {:e}, atol {:e}); worst at \
         flat index {worst}: {} against {} (difference {:e})",
        e.numel(),
        tol.rtol,
        atol,
        a.double_value(&[worst]),
        e.double_value(&[worst]),
        diff.double_value(&[worst]),
    );
}

#[cfg(test)]
mod tests {
    use super::{assert_close, Tolerance};
    use tch::Tensor;

    #[test]
    fn tensor_entries_near_zero_are_judged_against_the_scale() {
        let expected = Tensor::from_slice(&[460.0f64, 0.0, -3.0]);
        let actual = Tensor::from_slice(&[460.00003f64, 1e-4, -3.00001]);
        assert_close(&actual, &expected, Tolerance::scaled(1e-6), "gradient");
    }

    #[test]
    #[should_panic(expected = "1 of 3 elements out of tolerance")]
    fn a_tensor_failure_counts_the_bad_elements() {
        let expected = Tensor::from_slice(&[1.0f64, 2.0, 3.0]);
        let actual = Tensor::from_slice(&[1.0f64, 2.1, 3.0]);
        assert_close(&actual, &expected, Tolerance::scaled(1e-3), "x");
    }

    #[test]
    #[should_panic(expected = "out of tolerance")]
    fn nan_is_never_close() {
        let expected = Tensor::from_slice(&[1.0f64, f64::NAN]);
        assert_close(&expected, &expected, Tolerance::scaled(1e-3), "x");
    }
}
