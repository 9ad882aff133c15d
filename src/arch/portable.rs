//! The portable tier: 4-lane vectors through the `wide` crate, which compiles to SSE2 on a default x86-64
//! build, NEON on aarch64, simd128 on wasm32 (with `+simd128`) and plain arrays elsewhere (thumbv7em).

use super::Simd;
use wide::f32x4;

/// Token of the portable tier; available wherever it is compiled in (`PORTABLE_COMPILED`).
#[derive(Clone, Copy, Debug, Default)]
#[cfg_attr(not(any(test, feature = "all-tiers")), allow(dead_code))] // unused where not compiled in
pub(crate) struct Portable;

impl Simd for Portable {
    const LANES: usize = 4;
    type V = f32x4;

    #[inline(always)]
    fn splat(self, x: f32) -> f32x4 {
        f32x4::splat(x)
    }
    #[inline(always)]
    fn load(self, s: &[f32]) -> f32x4 {
        let s = &s[..4];
        f32x4::new([s[0], s[1], s[2], s[3]])
    }
    #[inline(always)]
    fn load_part(self, s: &[f32], fill: f32x4) -> f32x4 {
        let mut a = fill.to_array();
        let n = s.len().min(4);
        a[..n].copy_from_slice(&s[..n]);
        f32x4::new(a)
    }
    #[inline(always)]
    fn store(self, s: &mut [f32], v: f32x4) {
        s[..4].copy_from_slice(&v.to_array());
    }
    #[inline(always)]
    fn store_part(self, s: &mut [f32], v: f32x4) {
        let n = s.len().min(4);
        s[..n].copy_from_slice(&v.to_array()[..n]);
    }
    #[inline(always)]
    fn add(self, a: f32x4, b: f32x4) -> f32x4 {
        a + b
    }
    #[inline(always)]
    fn sub(self, a: f32x4, b: f32x4) -> f32x4 {
        a - b
    }
    #[inline(always)]
    fn mul(self, a: f32x4, b: f32x4) -> f32x4 {
        a * b
    }
    #[inline(always)]
    fn min(self, a: f32x4, b: f32x4) -> f32x4 {
        // Lane-wise `a < b ? a : b`, the same on every target (`fast_min` differs on NaN by target).
        a.simd_lt(b).select(a, b)
    }
    #[inline(always)]
    fn max(self, a: f32x4, b: f32x4) -> f32x4 {
        a.simd_gt(b).select(a, b)
    }
    #[inline(always)]
    fn zero_where_not_positive(self, m: f32x4, v: f32x4) -> f32x4 {
        let zero = f32x4::ZERO;
        m.simd_le(zero).select(zero, v)
    }
    #[inline(always)]
    fn mul_add(self, a: f32x4, b: f32x4, c: f32x4) -> f32x4 {
        a.mul_add(b, c)
    }
    #[inline(always)]
    fn inv_sqrt_or_zero(self, v: f32x4) -> f32x4 {
        // `sqrt` is correctly rounded on every target (sqrtps, vsqrtq_f32, f32x4_sqrt, or fdlibm's
        // bit-exact software square root); `recip_sqrt` would be a 12-bit estimate on x86.
        let zero = f32x4::ZERO;
        // On Arm hard-float targets `wide` has no vector square root and would run fdlibm's software one
        // per lane: the FPU's `vsqrt.f32` per lane instead (the same correctly rounded bits).
        #[cfg(all(not(feature = "std"), target_arch = "arm", target_abi = "eabihf"))]
        let v_sqrt = f32x4::new(v.to_array().map(super::scalar::sqrt_f32));
        #[cfg(not(all(not(feature = "std"), target_arch = "arm", target_abi = "eabihf")))]
        let v_sqrt = v.sqrt();
        let r = f32x4::ONE / v_sqrt;
        v.simd_eq(zero).select(zero, r)
    }
    #[inline(always)]
    fn hsum(self, v: f32x4) -> f32 {
        let a = v.to_array();
        (a[0] + a[2]) + (a[1] + a[3])
    }
    #[inline(always)]
    fn and(self, a: f32x4, b: f32x4) -> f32x4 {
        a & b
    }
    #[inline(always)]
    fn blend_first(self, k: usize, a: f32x4, b: f32x4) -> f32x4 {
        // Lane index < k as a mask (indices and k are small integers: exact in f32).
        f32x4::new([0.0, 1.0, 2.0, 3.0]).simd_lt(f32x4::splat(k as f32)).select(a, b)
    }
}
