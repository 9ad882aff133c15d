#![forbid(unsafe_code)]
//! The normalise-affine pass in centred form, `y = (x − m)·scale + shift`, for every layout.
//! `channel_affine` is the same pass with `m = 0` (`x − 0` is exact).
//!
//! Every layout is reduced to *spans*: contiguous runs of elements whose channel repeats with a period
//! (a whole NHWC tensor has period C; a blocked plane has period b; an NCHW plane has one channel). A span
//! is processed with a masked head until the output is vector-aligned, an unrolled body whose stores can
//! bypass the cache, and a masked tail. Each element is computed by the same operations wherever it falls,
//! so results do not depend on alignment.

use super::{Io, Prefetch, load_clamped};
use crate::arch::Simd;

/// Per-channel parameters of a channel group, indexed from the group's first channel; each holds the
/// group's valid channels (padding excluded).
#[derive(Clone, Copy)]
pub(crate) struct Params<'a> {
    /// Subtracted before scaling; `None` means 0.
    pub mean: Option<&'a [f32]>,
    pub scale: &'a [f32],
    /// Added after scaling; `None` means 0.
    pub shift: Option<&'a [f32]>,
    /// Whether an infinite `scale` is a scale γ/√(var + ε) that overflowed f32 (the statistics modes):
    /// such a channel is copied through unchanged (`m = 0`, `scale = 1`, `shift = −0`) and finished by
    /// [`fix_overflowed`](super::ops). `false` for `channel_affine`, whose scales are the caller's.
    pub fixup: bool,
}

impl Params<'_> {
    /// `(m, scale, shift)` of channel `j` as the vector pass applies them.
    #[inline(always)]
    pub(crate) fn channel(&self, j: usize) -> (f32, f32, f32) {
        let sc = self.scale[j];
        if self.fixup && sc.is_infinite() {
            // `(x − 0)·1 + (−0)` is `x` bit for bit, −0 and NaN included (fused or not).
            return (0.0, 1.0, -0.0);
        }
        (self.mean.map_or(0.0, |m| m[j]), sc, self.shift.map_or(0.0, |t| t[j]))
    }
}

/// The scale γ/√(var + ε) divided by 2¹²⁸, for a channel where it overflows f32: finite whenever γ is
/// (1/√(var + ε) ≤ 2^74.5, since var + ε is 0 or at least 2⁻¹⁴⁹), and computed from the same correctly
/// rounded 1/√ as [`fill_scale`], so it is the same bits on every tier. (|γ| > 2^53 here, so γ·2⁻¹²⁸ is
/// a normal number and exact.)
pub(crate) fn reduced_scale(var: f32, gamma: f32, eps: f32) -> f32 {
    let inv = crate::arch::scalar::Scalar.inv_sqrt_or_zero(var + eps);
    (gamma * TWO_M64 * TWO_M64) * inv
}

/// 2⁻⁶⁴ and 2⁶⁴: a reduced scale times 2⁶⁴ twice is the overflowing scale (2¹²⁸ is not an f32).
pub(crate) const TWO_M64: f32 = 1.0 / 18_446_744_073_709_551_616.0;
pub(crate) const TWO_64: f32 = 18_446_744_073_709_551_616.0;

/// `scale[j] = gamma[j] / √(var[j] + eps)` for `j < var.len() ≤ G` (1/√ correctly rounded, and 0
/// where `var + eps == 0`). `gamma: None` means 1.
#[inline(always)]
pub(crate) fn fill_scale<S: Simd, const G: usize>(
    s: S,
    var: &[f32],
    gamma: Option<&[f32]>,
    eps: f32,
    out: &mut [f32; G],
) {
    let one = s.splat(1.0);
    let e = s.splat(eps);
    let mut at = 0;
    while at < var.len() {
        let v = s.add(load_clamped(s, var, at, one), e);
        // (No closures around vector code: a closure is a separate function, compiled without the
        // tier's target features.)
        let g = match gamma {
            Some(g) => load_clamped(s, g, at, one),
            None => one,
        };
        // `at < var.len() ≤ G` and G is a multiple of LANES: the store is in bounds.
        s.store(&mut out[at..], s.mul(g, s.inv_sqrt_or_zero(v)));
        at += S::LANES;
    }
}

/// Parameters as vectors for an element position given by its *phase* (its channel's index within the
/// period of the span).
pub(crate) trait Phased<S: Simd> {
    /// `(m, scale, shift)` for the `LANES` channels starting at `phase`.
    fn vecs(&self, s: S, phase: usize) -> (S::V, S::V, S::V);
    /// Zeroes the lanes of padding channels (identity where there is no padding).
    fn mask(&self, s: S, phase: usize, y: S::V) -> S::V;
    /// The phase `by` elements after `phase`.
    fn advance(&self, phase: usize, by: usize) -> usize;
    /// The phase one vector (`LANES` elements) after `phase`.
    fn next(&self, phase: usize) -> usize;
    /// Whether the four vectors of every unrolled step have the phases 0, 1, 2, 3 (a [`Fixed`] from its
    /// first slot), so the loop needs no phase arithmetic.
    const SLOTS: bool = false;
    /// The parameters as registers, when the four vectors of every unrolled step from `phase` on have
    /// the same ones (a period that divides four vector widths); `None` otherwise.
    #[inline(always)]
    fn fixed(&self, _s: S, _phase: usize) -> Option<Fixed<S::V>> {
        None
    }
}

/// Parameters that repeat every four vectors of a span, held in registers: slot `u` serves the `u`-th
/// vector of each unrolled step (a channel block, or NHWC rows of 16–64 channels: no parameter loads in
/// the loop). Its phase is the slot.
pub(crate) struct Fixed<V> {
    m: [V; 4],
    sc: [V; 4],
    sh: [V; 4],
    keep: Option<[V; 4]>,
}

impl<S: Simd> Phased<S> for Fixed<S::V> {
    const SLOTS: bool = true;
    #[inline(always)]
    fn vecs(&self, _s: S, slot: usize) -> (S::V, S::V, S::V) {
        let u = slot % 4;
        (self.m[u], self.sc[u], self.sh[u])
    }
    #[inline(always)]
    fn mask(&self, s: S, slot: usize, y: S::V) -> S::V {
        match &self.keep {
            Some(k) => s.and(y, k[slot % 4]),
            None => y,
        }
    }
    #[inline(always)]
    fn advance(&self, slot: usize, by: usize) -> usize {
        (slot + by / S::LANES) % 4
    }
    #[inline(always)]
    fn next(&self, slot: usize) -> usize {
        (slot + 1) % 4
    }
}

/// One channel's parameters for a whole span.
pub(crate) struct Uniform<V> {
    m: V,
    sc: V,
    sh: V,
}

impl<V: Copy> Uniform<V> {
    #[inline(always)]
    pub(crate) fn new<S: Simd<V = V>>(s: S, (m, sc, sh): (f32, f32, f32)) -> Self {
        Uniform { m: s.splat(m), sc: s.splat(sc), sh: s.splat(sh) }
    }
}

impl<S: Simd> Phased<S> for Uniform<S::V> {
    #[inline(always)]
    fn vecs(&self, _s: S, _phase: usize) -> (S::V, S::V, S::V) {
        (self.m, self.sc, self.sh)
    }
    #[inline(always)]
    fn mask(&self, _s: S, _phase: usize, y: S::V) -> S::V {
        y
    }
    #[inline(always)]
    fn advance(&self, _phase: usize, _by: usize) -> usize {
        0
    }
    #[inline(always)]
    fn next(&self, _phase: usize) -> usize {
        0
    }
}

/// Room for a period of one channel block (at most 16) plus one vector of the widest tier (16 lanes).
pub(crate) const PBUF_BLOCK: usize = 32;

/// Parameters of `period` channels, repeated so that the `LANES` channels from any phase are one
/// unaligned load: `buf[i] = param[i % period]`. `N ≥ period + LANES`.
pub(crate) struct Periodic<const N: usize> {
    period: usize,
    /// `LANES % period`: how far one vector moves the phase.
    step: usize,
    m: [f32; N],
    sc: [f32; N],
    sh: [f32; N],
    /// All-ones bits for real channels, zero for padding; `None` without padding.
    keep: Option<[f32; N]>,
}

impl<const N: usize> Periodic<N> {
    /// Placeholder parameters (period 1, all zero) for arrays filled later.
    pub(crate) const EMPTY: Self =
        Periodic { period: 1, step: 0, m: [0.0; N], sc: [0.0; N], sh: [0.0; N], keep: None };

    /// Parameters of a period of `period` channels of which the first `p.scale.len()` are real (the rest
    /// padding, whose outputs are 0). `period + LANES ≤ N`.
    #[inline(always)]
    pub(crate) fn new<S: Simd>(_s: S, p: &Params<'_>, period: usize) -> Self {
        let valid = p.scale.len();
        let mut out = Periodic {
            period,
            step: S::LANES % period,
            m: [0.0; N],
            sc: [0.0; N],
            sh: [0.0; N],
            keep: (valid < period).then_some([0.0; N]),
        };
        let n = (period + S::LANES).min(N);
        // `c = i % period`, counted rather than divided.
        let mut c = 0;
        for i in 0..n {
            if c < valid {
                (out.m[i], out.sc[i], out.sh[i]) = p.channel(c);
                if let Some(k) = &mut out.keep {
                    k[i] = f32::from_bits(u32::MAX);
                }
            }
            c += 1;
            if c == period {
                c = 0;
            }
        }
        out
    }
}

impl<S: Simd, const N: usize> Phased<S> for Periodic<N> {
    #[inline(always)]
    fn vecs(&self, s: S, phase: usize) -> (S::V, S::V, S::V) {
        // `phase < period ≤ N - LANES`; the clamp states it so that the loads need no bounds check.
        let ph = phase.min(N - S::LANES);
        (s.load(&self.m[ph..]), s.load(&self.sc[ph..]), s.load(&self.sh[ph..]))
    }
    #[inline(always)]
    fn mask(&self, s: S, phase: usize, y: S::V) -> S::V {
        match &self.keep {
            Some(k) => s.and(y, s.load(&k[phase.min(N - S::LANES)..])),
            None => y,
        }
    }
    #[inline(always)]
    fn advance(&self, phase: usize, by: usize) -> usize {
        (phase + by) % self.period
    }
    #[inline(always)]
    fn next(&self, phase: usize) -> usize {
        let p = phase + self.step;
        if p >= self.period { p - self.period } else { p }
    }
    #[inline(always)]
    fn fixed(&self, s: S, phase: usize) -> Option<Fixed<S::V>> {
        if (4 * S::LANES) % self.period != 0 {
            return None;
        }
        let zero = s.splat(0.0);
        let mut f = Fixed { m: [zero; 4], sc: [zero; 4], sh: [zero; 4], keep: None };
        let mut keep = [zero; 4];
        let mut ph = phase;
        for (u, k) in keep.iter_mut().enumerate() {
            (f.m[u], f.sc[u], f.sh[u]) = self.vecs(s, ph);
            *k = self.mask(s, ph, s.splat(f32::from_bits(u32::MAX)));
            ph = <Self as Phased<S>>::next(self, ph);
        }
        f.keep = self.keep.is_some().then_some(keep);
        Some(f)
    }
}

/// One vector of output at `at` (`n ≤ LANES` elements; partial when `n < LANES`).
#[inline(always)]
fn one<S: Simd, I: Io, P: Phased<S>>(s: S, io: &mut I, at: usize, n: usize, p: &P, phase: usize) {
    let (m, sc, sh) = p.vecs(s, phase);
    if n < S::LANES {
        let x = io.load_part(s, at, n, m);
        io.store_part(s, at, n, p.mask(s, phase, s.mul_add(s.sub(x, m), sc, sh)));
    } else {
        let x = io.load(s, at);
        io.store(s, at, p.mask(s, phase, s.mul_add(s.sub(x, m), sc, sh)));
    }
}

/// Normalises the `len` elements at `at`, the first of which has phase `phase`. With `stream`, the
/// aligned body is written with non-temporal stores; `pf` hands out lines to prefetch, as many as are
/// written.
#[allow(clippy::too_many_arguments)]
#[inline(always)]
pub(crate) fn span<S: Simd, I: Io, P: Phased<S>>(
    s: S,
    io: &mut I,
    at: usize,
    len: usize,
    p: &P,
    phase: usize,
    stream: bool,
    pf: &mut Prefetch,
) {
    let l = S::LANES;
    let end = at + len;
    let mut i = at;
    let mut ph = phase;
    let mut fetched = 0;
    // Head: up to the next output address aligned to the vector size.
    let head = ((l - io.out_phase::<S>(i)) % l).min(len);
    if head > 0 {
        one(s, io, i, head, p, ph);
        i += head;
        ph = p.advance(ph, head);
    }
    match p.fixed(s, ph) {
        Some(f) => fetched += body(s, io, i, end, &f, 0, stream, pf),
        None => fetched += body(s, io, i, end, p, ph, stream, pf),
    }
    io.prefetch(s, pf, len - fetched);
}

/// The part of a span after its head: `i..end`, output aligned at `i`, first phase `ph` (0 for a
/// [`Fixed`], whose unrolled loop's phases are the constants 0..4). Returns the floats whose lines were
/// handed to `pf`.
#[allow(clippy::too_many_arguments)]
#[inline(always)]
fn body<S: Simd, I: Io, P: Phased<S>>(
    s: S,
    io: &mut I,
    mut i: usize,
    end: usize,
    p: &P,
    mut ph: usize,
    stream: bool,
    pf: &mut Prefetch,
) -> usize {
    let l = S::LANES;
    let mut fetched = 0;
    while i + 4 * l <= end {
        let mut phs = [0, 1, 2, 3];
        if !P::SLOTS {
            phs[0] = ph;
            for u in 1..4 {
                phs[u] = p.next(phs[u - 1]);
            }
        }
        let x = io.load4(s, i);
        let mut y = x;
        for u in 0..4 {
            let (m, sc, sh) = p.vecs(s, phs[u]);
            y[u] = p.mask(s, phs[u], s.mul_add(s.sub(x[u], m), sc, sh));
        }
        io.store4(s, i, y, stream);
        io.prefetch(s, pf, 4 * l);
        fetched += 4 * l;
        if !P::SLOTS {
            ph = p.next(phs[3]);
        }
        i += 4 * l;
    }
    while i + l <= end {
        one(s, io, i, l, p, ph);
        ph = p.next(ph);
        i += l;
    }
    if i < end {
        one(s, io, i, end - i, p, ph);
    }
    fetched
}
