//! The AVX2 tier: 8-lane `__m256` vectors with FMA. Tails use `vmaskmovps` masked loads and stores.

use crate::arch::Simd;
use core::arch::x86_64::*;

/// Token of the AVX2 tier. Its existence proves that the CPU has AVX2 and FMA and that the OS saves ymm
/// state: it is only made by [`Avx2::new_unchecked`], whose callers check that first.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Avx2(());

impl Avx2 {
    /// # Safety
    /// - The running CPU must support AVX2 and FMA, and the OS must have enabled ymm state (XCR0 bits 1, 2).
    #[inline(always)]
    pub(crate) const unsafe fn new_unchecked() -> Self {
        Avx2(())
    }
}

/// `MASKS[8 - n..][..8]` has its first `n` entries all ones: the lane mask for an `n`-element tail.
static MASKS: [i32; 16] = [-1, -1, -1, -1, -1, -1, -1, -1, 0, 0, 0, 0, 0, 0, 0, 0];

impl Avx2 {
    #[inline(always)]
    fn mask(self, n: usize) -> __m256i {
        let n = n.min(8);
        let m = &MASKS[8 - n..16 - n];
        // SAFETY: `m` holds exactly 8 i32 (32 bytes) and `loadu` has no alignment requirement; the token
        // proves AVX is available.
        unsafe { _mm256_loadu_si256(m.as_ptr().cast()) }
    }
}

// SAFETY (for every `unsafe` block below unless it says more): the methods run only with an `Avx2` token,
// which proves the CPU supports AVX2 and FMA (see `Avx2::new_unchecked`), so the intrinsics' target
// features are present; the value-only intrinsics then have no further preconditions.
impl Simd for Avx2 {
    const LANES: usize = 8;
    type V = __m256;

    #[inline(always)]
    fn splat(self, x: f32) -> __m256 {
        // SAFETY: token proves AVX.
        unsafe { _mm256_set1_ps(x) }
    }
    #[inline(always)]
    fn load(self, s: &[f32]) -> __m256 {
        let s = &s[..8];
        // SAFETY: `s` has 8 readable f32; `loadu` needs no alignment; token proves AVX.
        unsafe { _mm256_loadu_ps(s.as_ptr()) }
    }
    #[inline(always)]
    fn load_part(self, s: &[f32], fill: __m256) -> __m256 {
        let n = s.len().min(7);
        if n == 0 {
            return fill;
        }
        let m = self.mask(n);
        // SAFETY: the mask enables only lanes 0..n, all inside `s`; masked-off lanes are not accessed and
        // cannot fault. Token proves AVX.
        unsafe {
            let v = _mm256_maskload_ps(s.as_ptr(), m);
            _mm256_blendv_ps(fill, v, _mm256_castsi256_ps(m))
        }
    }
    #[inline(always)]
    fn store(self, s: &mut [f32], v: __m256) {
        let s = &mut s[..8];
        // SAFETY: `s` has 8 writable f32; `storeu` needs no alignment; token proves AVX.
        unsafe { _mm256_storeu_ps(s.as_mut_ptr(), v) }
    }
    #[inline(always)]
    fn store_part(self, s: &mut [f32], v: __m256) {
        let n = s.len().min(7);
        if n == 0 {
            return;
        }
        let m = self.mask(n);
        // SAFETY: the mask enables only lanes 0..n, all inside `s`; other lanes are neither read nor
        // written. Token proves AVX.
        unsafe { _mm256_maskstore_ps(s.as_mut_ptr(), m, v) }
    }
    #[inline(always)]
    fn add(self, a: __m256, b: __m256) -> __m256 {
        // SAFETY: token proves AVX.
        unsafe { _mm256_add_ps(a, b) }
    }
    #[inline(always)]
    fn sub(self, a: __m256, b: __m256) -> __m256 {
        // SAFETY: token proves AVX.
        unsafe { _mm256_sub_ps(a, b) }
    }
    #[inline(always)]
    fn mul(self, a: __m256, b: __m256) -> __m256 {
        // SAFETY: token proves AVX.
        unsafe { _mm256_mul_ps(a, b) }
    }
    #[inline(always)]
    fn min(self, a: __m256, b: __m256) -> __m256 {
        // SAFETY: token proves AVX.
        unsafe { _mm256_min_ps(a, b) }
    }
    #[inline(always)]
    fn max(self, a: __m256, b: __m256) -> __m256 {
        // SAFETY: token proves AVX.
        unsafe { _mm256_max_ps(a, b) }
    }
    #[inline(always)]
    fn zero_where_not_positive(self, m: __m256, v: __m256) -> __m256 {
        // SAFETY: token proves AVX. `_CMP_LE_OQ` is false for NaN, so a NaN `m` keeps `v`.
        unsafe { _mm256_andnot_ps(_mm256_cmp_ps::<_CMP_LE_OQ>(m, _mm256_setzero_ps()), v) }
    }
    #[inline(always)]
    fn mul_add(self, a: __m256, b: __m256, c: __m256) -> __m256 {
        // SAFETY: token proves FMA.
        unsafe { _mm256_fmadd_ps(a, b, c) }
    }
    #[inline(always)]
    fn inv_sqrt_or_zero(self, v: __m256) -> __m256 {
        // SAFETY: token proves AVX. vsqrtps and vdivps are correctly rounded.
        unsafe {
            let r = _mm256_div_ps(_mm256_set1_ps(1.0), _mm256_sqrt_ps(v));
            let zero = _mm256_cmp_ps::<_CMP_EQ_OQ>(v, _mm256_setzero_ps());
            _mm256_andnot_ps(zero, r)
        }
    }
    #[inline(always)]
    fn hsum(self, v: __m256) -> f32 {
        // SAFETY: token proves AVX; SSE is part of x86-64.
        unsafe {
            let q = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps::<1>(v));
            let d = _mm_add_ps(q, _mm_movehl_ps(q, q));
            let s = _mm_add_ss(d, _mm_shuffle_ps::<0b01>(d, d));
            _mm_cvtss_f32(s)
        }
    }
    #[inline(always)]
    fn and(self, a: __m256, b: __m256) -> __m256 {
        // SAFETY: token proves AVX.
        unsafe { _mm256_and_ps(a, b) }
    }
    #[inline(always)]
    fn blend_first(self, k: usize, a: __m256, b: __m256) -> __m256 {
        // SAFETY: token proves AVX; `mask(k)` has its first `k` lanes set, and blendv takes `a` there.
        unsafe { _mm256_blendv_ps(b, a, _mm256_castsi256_ps(self.mask(k))) }
    }
    #[inline(always)]
    fn stream(self, s: &mut [f32], v: __m256) {
        let s = &mut s[..8];
        if (s.as_ptr() as usize).is_multiple_of(32) {
            // SAFETY: `s` has 8 writable f32 starting at a 32-byte aligned address (checked), as
            // `vmovntps` requires; token proves AVX.
            unsafe { _mm256_stream_ps(s.as_mut_ptr(), v) }
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
