//! The float type the objectives and advantages are written over.
//!
//! Production code runs them in f32 (what the kernels hand back); the tests run the very same code
//! in f64 so that central finite differences are accurate to ~1e-9 and can check the closed-form
//! gradients tightly. A tiny trait of our own keeps the crate free of a numerics dependency.

use std::fmt::{Debug, Display};
use std::ops::{Add, AddAssign, Div, Mul, MulAssign, Neg, Sub, SubAssign};

/// f32 or f64.
pub trait Real:
    Copy
    + Debug
    + Display
    + PartialOrd
    + Default
    + Send
    + Sync
    + Add<Output = Self>
    + Sub<Output = Self>
    + Mul<Output = Self>
    + Div<Output = Self>
    + Neg<Output = Self>
    + AddAssign
    + SubAssign
    + MulAssign
    + 'static
{
    fn from_f64(x: f64) -> Self;
    fn to_f64(self) -> f64;
    fn exp(self) -> Self;
    fn ln(self) -> Self;
    fn sqrt(self) -> Self;
    fn abs(self) -> Self;
    fn is_finite(self) -> bool;

    fn zero() -> Self {
        Self::from_f64(0.0)
    }
    fn one() -> Self {
        Self::from_f64(1.0)
    }
    /// The larger of the two (NaN-unaware: inputs are checked finite where it matters).
    fn max_of(self, other: Self) -> Self {
        if self >= other {
            self
        } else {
            other
        }
    }
    fn min_of(self, other: Self) -> Self {
        if self <= other {
            self
        } else {
            other
        }
    }
    fn clamp_to(self, lo: Self, hi: Self) -> Self {
        self.max_of(lo).min_of(hi)
    }
}

impl Real for f32 {
    fn from_f64(x: f64) -> Self {
        x as f32
    }
    fn to_f64(self) -> f64 {
        self as f64
    }
    fn exp(self) -> Self {
        f32::exp(self)
    }
    fn ln(self) -> Self {
        f32::ln(self)
    }
    fn sqrt(self) -> Self {
        f32::sqrt(self)
    }
    fn abs(self) -> Self {
        f32::abs(self)
    }
    fn is_finite(self) -> bool {
        f32::is_finite(self)
    }
}

impl Real for f64 {
    fn from_f64(x: f64) -> Self {
        x
    }
    fn to_f64(self) -> f64 {
        self
    }
    fn exp(self) -> Self {
        f64::exp(self)
    }
    fn ln(self) -> Self {
        f64::ln(self)
    }
    fn sqrt(self) -> Self {
        f64::sqrt(self)
    }
    fn abs(self) -> Self {
        f64::abs(self)
    }
    fn is_finite(self) -> bool {
        f64::is_finite(self)
    }
}

/// Sum in f64 whatever the element type: token counts reach 10^6 and f32 sums drift.
pub fn sum_f64<T: Real>(xs: impl IntoIterator<Item = T>) -> f64 {
    xs.into_iter().map(Real::to_f64).sum()
}
