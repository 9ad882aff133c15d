//! The scalar tier: one lane, plain Rust arithmetic. It is the baseline users compare against, and the
//! arithmetic used for per-channel bookkeeping in every tier.

use super::Simd;

/// Token of the scalar tier; always available.
#[derive(Clone, Copy, Debug, Default)]
pub(crate) struct Scalar;

/// Correctly rounded f32 square root without std: on Arm's hard-float targets (Cortex-M4F/M7/M33 …,
/// whose FPU every `eabihf` target has) the FPU's `vsqrt.f32`; elsewhere `wide`, which uses the hardware
/// instruction where the target has one and fdlibm's bit-exact software square root otherwise (about
/// 800 instructions on a Cortex-M4F, so `vsqrt.f32` there). IEEE 754 rounds a square root correctly,
/// so every path gives the same bits.
#[inline(always)]
pub(crate) fn sqrt_f32(x: f32) -> f32 {
    #[cfg(feature = "std")]
    {
        x.sqrt()
    }
    #[cfg(all(not(feature = "std"), target_arch = "arm", target_abi = "eabihf"))]
    {
        let bits: u32;
        // SAFETY: `vsqrt.f32` is part of every FPU the hard-float ABI requires. rustc offers the `sreg`
        // register class only with double-precision `vfp2`, which single-precision FPUs (Cortex-M4F)
        // lack, so the value goes through a core register and `s0`, saved and restored around it: the
        // block pushes and pops only its own word, and leaves every register as it found it.
        unsafe {
            core::arch::asm!(
                "vpush {{s0}}",
                "vmov s0, {x}",
                "vsqrt.f32 s0, s0",
                "vmov {r}, s0",
                "vpop {{s0}}",
                x = in(reg) x.to_bits(),
                r = lateout(reg) bits,
                options(pure, nomem, preserves_flags),
            );
        }
        f32::from_bits(bits)
    }
    #[cfg(all(not(feature = "std"), not(all(target_arch = "arm", target_abi = "eabihf"))))]
    {
        wide::f32x4::splat(x).sqrt().to_array()[0]
    }
}

impl Simd for Scalar {
    const LANES: usize = 1;
    type V = f32;
    const COMPACT: bool = !super::PORTABLE_IS_SIMD;

    #[inline(always)]
    fn splat(self, x: f32) -> f32 {
        x
    }
    #[inline(always)]
    fn load(self, s: &[f32]) -> f32 {
        s[0]
    }
    #[inline(always)]
    fn load_part(self, _s: &[f32], fill: f32) -> f32 {
        // A partial load of one lane reads nothing.
        fill
    }
    #[inline(always)]
    fn store(self, s: &mut [f32], v: f32) {
        s[0] = v;
    }
    #[inline(always)]
    fn store_part(self, _s: &mut [f32], _v: f32) {}
    #[inline(always)]
    fn add(self, a: f32, b: f32) -> f32 {
        a + b
    }
    #[inline(always)]
    fn sub(self, a: f32, b: f32) -> f32 {
        a - b
    }
    #[inline(always)]
    fn mul(self, a: f32, b: f32) -> f32 {
        a * b
    }
    #[inline(always)]
    fn min(self, a: f32, b: f32) -> f32 {
        if a < b { a } else { b }
    }
    #[inline(always)]
    fn max(self, a: f32, b: f32) -> f32 {
        if a > b { a } else { b }
    }
    #[inline(always)]
    fn zero_where_not_positive(self, m: f32, v: f32) -> f32 {
        if m <= 0.0 { 0.0 } else { v }
    }
    #[inline(always)]
    fn mul_add(self, a: f32, b: f32, c: f32) -> f32 {
        a * b + c
    }
    #[inline(always)]
    fn inv_sqrt_or_zero(self, v: f32) -> f32 {
        if v == 0.0 { 0.0 } else { 1.0 / sqrt_f32(v) }
    }
    #[inline(always)]
    fn hsum(self, v: f32) -> f32 {
        v
    }
    #[inline(always)]
    fn and(self, a: f32, b: f32) -> f32 {
        f32::from_bits(a.to_bits() & b.to_bits())
    }
    #[inline(always)]
    fn blend_first(self, k: usize, a: f32, b: f32) -> f32 {
        // One lane: `0 < k < 1` cannot happen; `k ≥ 1` keeps `a`.
        if k > 0 { a } else { b }
    }
}
