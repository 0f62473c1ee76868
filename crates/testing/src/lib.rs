//! Float comparisons for tests, with the semantics of `torch.testing.assert_close`: an
//! actual value `a` is close to an expected value `e` when `|a - e| <= atol + rtol * |e|`.
//!
//! Tests run on CPUs whose kernels round differently (AVX2, AVX-512, AMX), so no test
//! compares floats for equality or with an absolute bound alone. Tensors are compared
//! elementwise with the same rule by `coconut_model::testing::assert_close` (this crate has
//! no tch, so that the pure-Rust crates can use it). [`Tolerance::scaled`] sizes
//! the absolute part from the magnitudes compared, which suits gradients whose entries span
//! several orders of magnitude: entries near zero are judged against the tensor's scale.

#![warn(missing_docs)]

/// How far an actual value may be from the expected one.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Tolerance {
    /// Allowed difference relative to the expected value's magnitude.
    pub rtol: f64,
    /// Allowed difference regardless of magnitude.
    pub atol: f64,
}

impl Tolerance {
    /// An explicit relative and absolute tolerance.
    pub const fn new(rtol: f64, atol: f64) -> Self {
        Self { rtol, atol }
    }

    /// A relative tolerance whose absolute floor is `rtol` times the largest expected
    /// magnitude (for tensors; for a scalar it equals plain `rtol`).
    pub const fn scaled(rtol: f64) -> Self {
        Self { rtol, atol: f64::NAN }
    }

    /// The absolute tolerance for values whose largest magnitude is `scale`: `atol`, or
    /// `rtol * scale` for [`Tolerance::scaled`].
    pub fn atol_for(self, scale: f64) -> f64 {
        if self.atol.is_nan() {
            self.rtol * scale
        } else {
            self.atol
        }
    }
}

/// Whether `actual` is within `tol` of `expected`. NaN is never close to anything.
pub fn is_close(actual: f64, expected: f64, tol: Tolerance) -> bool {
    let atol = tol.atol_for(expected.abs());
    (actual - expected).abs() <= atol + tol.rtol * expected.abs()
}

/// Panics, naming `what` and both values, unless `actual` is within `tol` of `expected`.
#[track_caller]
pub fn assert_close(actual: f64, expected: f64, tol: Tolerance, what: &str) {
    assert!(
        is_close(actual, expected, tol),
        "{what}: {actual} is not close to {expected} (difference {:e}, rtol {:e}, atol {:e})",
        (actual - expected).abs(),
        tol.rtol,
        tol.atol_for(expected.abs()),
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scalars_follow_torch_semantics() {
        let tol = Tolerance::new(1e-5, 1e-8);
        assert!(is_close(460.00003, 460.0, tol));
        assert!(!is_close(460.1, 460.0, tol));
        assert!(is_close(1e-9, 0.0, tol));
        assert!(!is_close(1e-7, 0.0, tol));
        assert!(!is_close(f64::NAN, f64::NAN, tol));
        assert!(is_close(1.00001, 1.0, Tolerance::scaled(1e-5)));
        assert!(!is_close(1.0001, 1.0, Tolerance::scaled(1e-5)));
    }

    #[test]
    #[should_panic(expected = "loss: 2 is not close to 1")]
    fn a_failure_names_the_value() {
        assert_close(2.0, 1.0, Tolerance::scaled(1e-3), "loss");
    }
}
