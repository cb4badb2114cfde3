//! f64 complex arithmetic for the CPU references (real data is the `im = 0` case).

use std::ops::{Add, AddAssign, Mul, Sub};

/// A complex f64.
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub struct C64 {
    /// Real part.
    pub re: f64,
    /// Imaginary part.
    pub im: f64,
}

#[allow(dead_code)] // ONE and exp serve ops that are not in every branch yet
impl C64 {
    /// Zero.
    pub const ZERO: C64 = C64 { re: 0.0, im: 0.0 };
    /// One.
    pub const ONE: C64 = C64 { re: 1.0, im: 0.0 };
    /// `re + i im`.
    pub const fn new(re: f64, im: f64) -> Self {
        C64 { re, im }
    }
    /// Complex conjugate.
    pub fn conj(self) -> Self {
        C64::new(self.re, -self.im)
    }
    /// `exp(re + i im)`.
    pub fn exp(self) -> Self {
        let m = self.re.exp();
        C64::new(m * self.im.cos(), m * self.im.sin())
    }
    /// Element `i` of a buffer of reals (`complex = false`) or interleaved pairs.
    pub fn load(buf: &[f64], i: usize, complex: bool) -> Self {
        if complex {
            C64::new(buf[2 * i], buf[2 * i + 1])
        } else {
            C64::new(buf[i], 0.0)
        }
    }
    /// Store into element `i` (the imaginary part is dropped for real buffers).
    pub fn store(self, buf: &mut [f64], i: usize, complex: bool) {
        if complex {
            buf[2 * i] = self.re;
            buf[2 * i + 1] = self.im;
        } else {
            buf[i] = self.re;
        }
    }
    /// Add into element `i`.
    pub fn add_to(self, buf: &mut [f64], i: usize, complex: bool) {
        if complex {
            buf[2 * i] += self.re;
            buf[2 * i + 1] += self.im;
        } else {
            buf[i] += self.re;
        }
    }
}

impl Add for C64 {
    type Output = C64;
    fn add(self, o: C64) -> C64 {
        C64::new(self.re + o.re, self.im + o.im)
    }
}
impl AddAssign for C64 {
    fn add_assign(&mut self, o: C64) {
        *self = *self + o;
    }
}
impl Sub for C64 {
    type Output = C64;
    fn sub(self, o: C64) -> C64 {
        C64::new(self.re - o.re, self.im - o.im)
    }
}
impl Mul for C64 {
    type Output = C64;
    fn mul(self, o: C64) -> C64 {
        C64::new(
            self.re * o.re - self.im * o.im,
            self.re * o.im + self.im * o.re,
        )
    }
}
impl Mul<f64> for C64 {
    type Output = C64;
    fn mul(self, o: f64) -> C64 {
        C64::new(self.re * o, self.im * o)
    }
}
