//! The AVX-512 tier: 16-lane `__m512` vectors (AVX-512F) with opmask-predicated tails.

use crate::arch::Simd;
use core::arch::x86_64::*;

/// Token of the AVX-512 tier. Its existence proves that the CPU has AVX-512F, AVX2 and FMA and that the
/// OS saves opmask and zmm state: it is only made by [`Avx512::new_unchecked`], whose callers check that.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Avx512(());

impl Avx512 {
    /// # Safety
    /// - The running CPU must support AVX-512F, AVX2 and FMA, and the OS must have enabled opmask and zmm
    ///   state (XCR0 bits 1, 2, 5, 6, 7).
    #[inline(always)]
    pub(crate) const unsafe fn new_unchecked() -> Self {
        Avx512(())
    }
}

#[inline(always)]
fn kmask(n: usize) -> __mmask16 {
    if n >= 16 { 0xffff } else { ((1u32 << n) - 1) as __mmask16 }
}

// SAFETY (for every `unsafe` block below unless it says more): the methods run only with an `Avx512`
// token, which proves the CPU supports AVX-512F (and AVX2/FMA), so the intrinsics' target features are
// present; the value-only intrinsics then have no further preconditions.
impl Simd for Avx512 {
    const LANES: usize = 16;
    const REGS: usize = 32;
    type V = __m512;

    #[inline(always)]
    fn splat(self, x: f32) -> __m512 {
        // SAFETY: token proves AVX-512F.
        unsafe { _mm512_set1_ps(x) }
    }
    #[inline(always)]
    fn load(self, s: &[f32]) -> __m512 {
        let s = &s[..16];
        // SAFETY: `s` has 16 readable f32; `loadu` needs no alignment; token proves AVX-512F.
        unsafe { _mm512_loadu_ps(s.as_ptr()) }
    }
    #[inline(always)]
    fn load_part(self, s: &[f32], fill: __m512) -> __m512 {
        let n = s.len().min(15);
        if n == 0 {
            return fill;
        }
        // SAFETY: the opmask enables only lanes 0..n, all inside `s`; masked-off lanes are not accessed
        // and cannot fault. Token proves AVX-512F.
        unsafe { _mm512_mask_loadu_ps(fill, kmask(n), s.as_ptr()) }
    }
    #[inline(always)]
    fn store(self, s: &mut [f32], v: __m512) {
        let s = &mut s[..16];
        // SAFETY: `s` has 16 writable f32; `storeu` needs no alignment; token proves AVX-512F.
        unsafe { _mm512_storeu_ps(s.as_mut_ptr(), v) }
    }
    #[inline(always)]
    fn store_part(self, s: &mut [f32], v: __m512) {
        let n = s.len().min(15);
        if n == 0 {
            return;
        }
        // SAFETY: the opmask enables only lanes 0..n, all inside `s`; other lanes are not written and
        // cannot fault. Token proves AVX-512F.
        unsafe { _mm512_mask_storeu_ps(s.as_mut_ptr(), kmask(n), v) }
    }
    #[inline(always)]
    fn add(self, a: __m512, b: __m512) -> __m512 {
        // SAFETY: token proves AVX-512F.
        unsafe { _mm512_add_ps(a, b) }
    }
    #[inline(always)]
    fn sub(self, a: __m512, b: __m512) -> __m512 {
        // SAFETY: token proves AVX-512F.
        unsafe { _mm512_sub_ps(a, b) }
    }
    #[inline(always)]
    fn mul(self, a: __m512, b: __m512) -> __m512 {
        // SAFETY: token proves AVX-512F.
        unsafe { _mm512_mul_ps(a, b) }
    }
    #[inline(always)]
    fn min(self, a: __m512, b: __m512) -> __m512 {
        // SAFETY: token proves AVX-512F.
        unsafe { _mm512_min_ps(a, b) }
    }
    #[inline(always)]
    fn max(self, a: __m512, b: __m512) -> __m512 {
        // SAFETY: token proves AVX-512F.
        unsafe { _mm512_max_ps(a, b) }
    }
    #[inline(always)]
    fn zero_where_not_positive(self, m: __m512, v: __m512) -> __m512 {
        // SAFETY: token proves AVX-512F. `_CMP_NLE_UQ` is true for NaN, so a NaN `m` keeps `v`.
        unsafe { _mm512_maskz_mov_ps(_mm512_cmp_ps_mask::<_CMP_NLE_UQ>(m, _mm512_setzero_ps()), v) }
    }
    #[inline(always)]
    fn mul_add(self, a: __m512, b: __m512, c: __m512) -> __m512 {
        // SAFETY: token proves AVX-512F.
        unsafe { _mm512_fmadd_ps(a, b, c) }
    }
    #[inline(always)]
    fn inv_sqrt_or_zero(self, v: __m512) -> __m512 {
        // SAFETY: token proves AVX-512F. vsqrtps and vdivps are correctly rounded (no rsqrt14).
        unsafe {
            let r = _mm512_div_ps(_mm512_set1_ps(1.0), _mm512_sqrt_ps(v));
            let zero = _mm512_cmp_ps_mask::<_CMP_EQ_OQ>(v, _mm512_setzero_ps());
            _mm512_maskz_mov_ps(!zero, r)
        }
    }
    #[inline(always)]
    fn hsum(self, v: __m512) -> f32 {
        // SAFETY: token proves AVX-512F (and with it AVX); SSE is part of x86-64.
        unsafe {
            let lo = _mm512_castps512_ps256(v);
            let hi = _mm256_castpd_ps(_mm512_extractf64x4_pd::<1>(_mm512_castps_pd(v)));
            let o = _mm256_add_ps(lo, hi);
            let q = _mm_add_ps(_mm256_castps256_ps128(o), _mm256_extractf128_ps::<1>(o));
            let d = _mm_add_ps(q, _mm_movehl_ps(q, q));
            let s = _mm_add_ss(d, _mm_shuffle_ps::<0b01>(d, d));
            _mm_cvtss_f32(s)
        }
    }
    #[inline(always)]
    fn and(self, a: __m512, b: __m512) -> __m512 {
        // SAFETY: token proves AVX-512F.
        unsafe { _mm512_castsi512_ps(_mm512_and_si512(_mm512_castps_si512(a), _mm512_castps_si512(b))) }
    }
    #[inline(always)]
    fn blend_first(self, k: usize, a: __m512, b: __m512) -> __m512 {
        // SAFETY: token proves AVX-512F; the blend takes its second operand (`a`) where the opmask
        // (lanes 0..k) is set.
        unsafe { _mm512_mask_blend_ps(kmask(k), b, a) }
    }
    #[inline(always)]
    fn stream(self, s: &mut [f32], v: __m512) {
        let s = &mut s[..16];
        if (s.as_ptr() as usize).is_multiple_of(64) {
            // SAFETY: `s` has 16 writable f32 starting at a 64-byte aligned address (checked), as
            // `vmovntps` requires; token proves AVX-512F.
            unsafe { _mm512_stream_ps(s.as_mut_ptr(), v) }
        } else {
            self.store(s, v)
        }
    }
    #[inline(always)]
    fn fence(self) {
        // SAFETY: `sfence` is part of SSE, which every x86-64 CPU has.
        unsafe { _mm_sfence() }
    }
}
