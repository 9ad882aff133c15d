#![forbid(unsafe_code)]
//! The normalise-affine pass in centred form, `y = (x − m)·scale + shift`, for every layout.
//! `channel_affine` is the same pass with `m = 0` (`x − 0` is exact).
//!
//! Every layout is reduced to *runs* ([`normalize_run`]): contiguous memory cut into segments with their
//! own parameters (a batch index's NCHW planes, one channel each; its block planes of a group of channel
//! blocks, period b; a whole NHWC tensor, one segment of period C). A run's whole cache lines are an
//! aligned, unrolled body whose stores can bypass the cache; a vector across a segment boundary blends
//! both segments' results; the elements before and after the whole lines take ordinary overlapping
//! full-width stores, so no masked store is needed but for a run shorter than a vector. Each element is
//! computed by the same operations wherever it falls, so results do not depend on alignment.
//!
//! Parameters come three ways: in registers where they repeat within four vectors ([`Fixed`]: NCHW
//! planes, channel blocks, rows of 16–64 channels); for longer periods as arrays walked linearly between
//! wraps of the phase ([`Linear`]), borrowed from the caller's slices for whole channels-last rows
//! ([`RowParams`]: nothing C-long is copied per call) or copied into a [`Periodic`] buffer that repeats
//! the period to its end, so that short periods wrap every few hundred elements rather than every row
//! (rows of up to 256 channels, padding, overflowed scales, channel groups).

use super::{Epilogue, Io, LINE_FLOATS, Prefetch, load_clamped};
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
    /// Whether an infinite `scale` is a scale γ/√(var + ε) that overflowed f32 (the statistics modes,
    /// and only when the group has one): such a channel is copied through unchanged (`m = 0`,
    /// `scale = 1`, `shift = −0`) and finished by [`fix_overflowed`](super::ops). `false` for
    /// `channel_affine`, whose scales are the caller's.
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

/// The output of a channel whose scale overflowed: `((x − m)·s·2⁶⁴)·2⁶⁴ + β` with `s` its
/// [`reduced_scale`] (the one formula of the vector tiers' fix-up and the compact pass).
#[inline(always)]
pub(crate) fn overflowed_output(x: f32, m: f32, reduced: f32, beta: f32) -> f32 {
    ((x - m) * reduced * TWO_64) * TWO_64 + beta
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
/// period of its segment).
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
    /// The parameters as arrays laid out by phase, when the period is at least a vector long (so that
    /// the body walks them linearly between wraps, without phase arithmetic per vector); `None`
    /// otherwise.
    #[inline(always)]
    fn linear(&self) -> Option<Linear<'_>> {
        None
    }
}

/// Parameter arrays of a period of at least one vector, by phase: `sc[ph..ph + LANES]` are the `LANES`
/// channels from phase `ph` for every `ph ≤ reach − LANES` (a vector that crosses `reach` takes
/// [`Phased::vecs`]). `None` for `m` or `sh` means 0.
pub(crate) struct Linear<'a> {
    period: usize,
    /// The arrays hold the period repeated up to here: a walk from phase `ph` may go on while
    /// `ph + LANES ≤ reach` (the period itself for borrowed rows, the whole buffer for [`Periodic`]).
    reach: usize,
    m: Option<&'a [f32]>,
    sc: &'a [f32],
    sh: Option<&'a [f32]>,
    keep: Option<&'a [f32]>,
}

/// Parameters that repeat every four vectors of a segment, held in registers: slot `u` serves the `u`-th
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

/// One channel's parameters for a whole segment (an NCHW plane).
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

/// Parameters of `period` channels, repeated through the whole buffer (`buf[i] = param[i % period]` for
/// every `i < N`, `N ≥ period + LANES`): the `LANES` channels from any phase are one unaligned load, and
/// the linear walk ([`Linear`]) runs up to `N` elements between wraps.
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
        // Bulk copies, not a loop over `Params::channel`: for a wide channels-last row (thousands of
        // channels) this setup is paid on every call. Padding channels stay zero.
        out.sc[..valid].copy_from_slice(p.scale);
        if let Some(m) = p.mean {
            out.m[..valid].copy_from_slice(m);
        }
        if let Some(t) = p.shift {
            out.sh[..valid].copy_from_slice(t);
        }
        if let Some(k) = &mut out.keep {
            k[..valid].fill(f32::from_bits(u32::MAX));
        }
        // Overflowed scales (statistics modes only, and only where one was found): the copy-through
        // parameters of `channel`.
        if p.fixup {
            for j in 0..valid {
                (out.m[j], out.sc[j], out.sh[j]) = p.channel(j);
            }
        }
        // The period repeated to the end of the buffer: the body walks the arrays linearly for up to N
        // elements between wraps of the phase (for a short period, many periods at a time).
        let n = N;
        let mut at = period;
        while at < n {
            let w = period.min(n - at);
            out.m.copy_within(..w, at);
            out.sc.copy_within(..w, at);
            out.sh.copy_within(..w, at);
            if let Some(k) = &mut out.keep {
                k.copy_within(..w, at);
            }
            at += w;
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
    fn linear(&self) -> Option<Linear<'_>> {
        (self.period >= S::LANES).then_some(Linear {
            period: self.period,
            reach: N,
            m: Some(&self.m),
            sc: &self.sc,
            sh: Some(&self.sh),
            keep: self.keep.as_ref().map(|k| &k[..]),
        })
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

/// A contiguous run of memory cut into `count` segments of `len` elements, each with its own parameters:
/// the planes of one batch index's channels (NCHW), one batch index's planes of a group of channel blocks
/// (blocked), or a whole channels-last tensor (one segment).
pub(crate) trait Segments<S: Simd> {
    /// The parameters of one segment.
    type P: Phased<S>;
    /// Elements per segment.
    fn len(&self) -> usize;
    /// Number of segments.
    fn count(&self) -> usize;
    /// The parameters of segment `j < count()`; phase 0 is the segment's first element.
    fn get(&self, s: S, j: usize) -> Self::P;
}

/// NCHW planes: segment `j` is channel `j` of `p` (one channel per plane).
pub(crate) struct PlaneSegs<'a, 'b> {
    pub p: &'a Params<'b>,
    pub plane: usize,
}

impl<S: Simd> Segments<S> for PlaneSegs<'_, '_> {
    type P = Uniform<S::V>;
    #[inline(always)]
    fn len(&self) -> usize {
        self.plane
    }
    #[inline(always)]
    fn count(&self) -> usize {
        self.p.scale.len()
    }
    #[inline(always)]
    fn get(&self, s: S, j: usize) -> Uniform<S::V> {
        Uniform::new(s, self.p.channel(j))
    }
}

/// Segments that share one set of parameters each, by reference: block planes of a group of channel
/// blocks (`pps[j]`), or a single segment.
pub(crate) struct RefSegs<'a, P> {
    pub pps: &'a [P],
    pub len: usize,
}

impl<'a, S: Simd, P: Phased<S>> Segments<S> for RefSegs<'a, P> {
    type P = &'a P;
    #[inline(always)]
    fn len(&self) -> usize {
        self.len
    }
    #[inline(always)]
    fn count(&self) -> usize {
        self.pps.len()
    }
    #[inline(always)]
    fn get(&self, _s: S, j: usize) -> &'a P {
        &self.pps[j]
    }
}

impl<S: Simd, P: Phased<S>> Phased<S> for &P {
    const SLOTS: bool = P::SLOTS;
    #[inline(always)]
    fn vecs(&self, s: S, phase: usize) -> (S::V, S::V, S::V) {
        (**self).vecs(s, phase)
    }
    #[inline(always)]
    fn mask(&self, s: S, phase: usize, y: S::V) -> S::V {
        (**self).mask(s, phase, y)
    }
    #[inline(always)]
    fn advance(&self, phase: usize, by: usize) -> usize {
        (**self).advance(phase, by)
    }
    #[inline(always)]
    fn next(&self, phase: usize) -> usize {
        (**self).next(phase)
    }
    #[inline(always)]
    fn fixed(&self, s: S, phase: usize) -> Option<Fixed<S::V>> {
        (**self).fixed(s, phase)
    }
    #[inline(always)]
    fn linear(&self) -> Option<Linear<'_>> {
        (**self).linear()
    }
}

/// `y` of the vector `x` whose first lane is element `off` of segment `j`: each lane with its own
/// segment's parameters (a vector that straddles segment boundaries blends the results lane-wise), so
/// every element is computed by the same operations wherever it falls. `e` is applied to each segment's
/// result before its padding mask, `n` of the lanes from element `at` on being real (`LANES` but for a
/// run shorter than a vector).
#[allow(clippy::too_many_arguments)]
#[inline(always)]
fn vector_at<S: Simd, G: Segments<S>, E: Epilogue>(
    s: S,
    g: &G,
    mut j: usize,
    off: usize,
    x: S::V,
    e: E,
    at: usize,
    n: usize,
) -> S::V {
    let l = S::LANES;
    let p = g.get(s, j);
    let ph = p.advance(0, off);
    let (m, sc, sh) = p.vecs(s, ph);
    let mut y = p.mask(s, ph, e.part(s, at, n, s.mul_add(s.sub(x, m), sc, sh)));
    // Lanes before the next segment boundary.
    let mut k = g.len() - off;
    while k < l && j + 1 < g.count() {
        j += 1;
        let p = g.get(s, j);
        // Lane k is the segment's phase 0: lane 0 is phase −k (periods divide 16·LANES).
        let ph = p.advance(0, 16 * l - k);
        let (m, sc, sh) = p.vecs(s, ph);
        let yj = p.mask(s, ph, e.part(s, at, n, s.mul_add(s.sub(x, m), sc, sh)));
        y = s.blend_first(k, y, yj);
        k += g.len();
    }
    y
}

/// Normalises the run of `g.count()` segments of `g.len()` elements at `at` (at least one element).
///
/// The run's whole cache lines are its body: aligned vectors, written with non-temporal stores when
/// `stream` (whole lines only, never a partial one), parameters changing inside a vector where a
/// segment ends there. The elements before the first and after the last whole line — at least a vector
/// of them, or none — are written with ordinary full-width stores, the last of which overlaps the one
/// before it; a run shorter than a vector is the only masked store. `pf` hands out lines to prefetch,
/// as many as are written.
#[inline(always)]
#[allow(clippy::too_many_arguments)]
pub(crate) fn normalize_run<S: Simd, I: Io, G: Segments<S>, E: Epilogue>(
    s: S,
    io: &mut I,
    at: usize,
    g: &G,
    stream: bool,
    pf: &mut Prefetch,
    e: E,
) {
    let l = S::LANES;
    let len = g.len() * g.count();
    let end = at + len;
    if len < l {
        let x = io.load_part(s, at, len, s.splat(0.0));
        io.store_part(s, at, len, vector_at(s, g, 0, 0, x, e, at, len));
        io.prefetch(s, pf, len);
        return;
    }
    // The body: whole lines, with at least a vector's worth of elements (or none) on either side.
    let mut a0 = at + (LINE_FLOATS - io.out_line_phase(at)) % LINE_FLOATS;
    if a0 - at > 0 && a0 - at < l {
        a0 += LINE_FLOATS;
    }
    // (A run can end before the first line boundary of the buffer: then there is no body.)
    let mut a1 = end.saturating_sub(io.out_line_phase(end));
    if end - a1 > 0 && end - a1 < l {
        a1 = a1.saturating_sub(LINE_FLOATS);
    }
    if a1 <= a0 {
        edge(s, io, at, at, end, g, e);
    } else {
        edge(s, io, at, at, a0, g, e);
        let fetched = body_run(s, io, at, a0, a1, g, stream, pf, e);
        io.prefetch(s, pf, a1 - a0 - fetched);
        edge(s, io, at, a1, end, g, e);
    }
    io.prefetch(s, pf, len - (a1.max(a0) - a0));
}

/// Elements `p..q` of the run at `at` (none, or at least a vector's worth) with ordinary full-width
/// stores: vectors from `p` on, and one ending at `q` that overlaps the one before it. Its input is
/// loaded before anything is stored, so in place it still reads x.
#[allow(clippy::too_many_arguments)]
#[inline(always)]
fn edge<S: Simd, I: Io, G: Segments<S>, E: Epilogue>(
    s: S,
    io: &mut I,
    at: usize,
    p: usize,
    q: usize,
    g: &G,
    e: E,
) {
    let l = S::LANES;
    if q <= p {
        return;
    }
    let seg = g.len();
    // (An `if`, not `bool::then` with a closure: a closure would be compiled without the tier's features.)
    let last = if (q - p).is_multiple_of(l) { None } else { Some(io.load(s, q - l)) };
    let mut i = p;
    while i + l <= q {
        let r = i - at;
        let x = io.load(s, i);
        io.store(s, i, vector_at(s, g, r / seg, r % seg, x, e, i, l));
        i += l;
    }
    if let Some(x) = last {
        let r = q - l - at;
        io.store(s, q - l, vector_at(s, g, r / seg, r % seg, x, e, q - l, l));
    }
}

/// The whole lines `a0..a1` of the run at `at`: the vectors inside one segment through [`body`] (the
/// unrolled loop, parameters in registers where they repeat), the vectors across a segment boundary
/// one at a time with blended parameters. Returns the floats whose lines were handed to `pf`.
#[allow(clippy::too_many_arguments)]
#[inline(always)]
fn body_run<S: Simd, I: Io, G: Segments<S>, E: Epilogue>(
    s: S,
    io: &mut I,
    at: usize,
    a0: usize,
    a1: usize,
    g: &G,
    stream: bool,
    pf: &mut Prefetch,
    e: E,
) -> usize {
    let l = S::LANES;
    let seg = g.len();
    let mut fetched = 0;
    let mut i = a0;
    let (mut j, mut off) = ((a0 - at) / seg, (a0 - at) % seg);
    while i < a1 {
        // Whole vectors inside segment j.
        let inside = ((seg - off).min(a1 - i) / l) * l;
        if inside > 0 {
            let p = g.get(s, j);
            let ph = p.advance(0, off);
            fetched += match p.fixed(s, ph) {
                Some(f) => body(s, io, i, i + inside, &f, 0, stream, pf, e),
                None => body(s, io, i, i + inside, &p, ph, stream, pf, e),
            };
            i += inside;
            off += inside;
        }
        if off == seg {
            (j, off) = (j + 1, 0);
            continue;
        }
        if i >= a1 {
            break;
        }
        // A vector across the end of segment j.
        let y = vector_at(s, g, j, off, io.load(s, i), e, i, l);
        io.put(s, i, y, stream);
        i += l;
        off += l;
        while off >= seg {
            off -= seg;
            j += 1;
        }
    }
    fetched
}

/// Whole vectors `i..end` of one segment, output aligned at `i`, first phase `ph` (0 for a [`Fixed`],
/// whose unrolled loop's phases are the constants 0..4), non-temporal with `stream`. Returns the floats
/// whose lines were handed to `pf`.
#[allow(clippy::too_many_arguments)]
#[inline(always)]
fn body<S: Simd, I: Io, P: Phased<S>, E: Epilogue>(
    s: S,
    io: &mut I,
    mut i: usize,
    end: usize,
    p: &P,
    mut ph: usize,
    stream: bool,
    pf: &mut Prefetch,
    e: E,
) -> usize {
    if let Some(lin) = p.linear() {
        return body_linear(s, io, i, end, p, &lin, ph, stream, pf, e);
    }
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
            y[u] = p.mask(s, phs[u], e.apply(s, i + u * l, s.mul_add(s.sub(x[u], m), sc, sh)));
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
        let (m, sc, sh) = p.vecs(s, ph);
        let y = p.mask(s, ph, e.apply(s, i, s.mul_add(s.sub(io.load(s, i), m), sc, sh)));
        io.put(s, i, y, stream);
        ph = p.next(ph);
        i += l;
    }
    fetched
}

/// [`body`] for parameters of a period of at least a vector ([`Linear`]): between two wraps of the
/// phase the parameter vectors are consecutive in the arrays, so the loop loads them at a moving offset
/// with no phase arithmetic per vector (wide channels-last rows: a plain stream of loads); the vector
/// across the period's end, if any, takes `p`'s [`Phased::vecs`].
#[allow(clippy::too_many_arguments)]
#[inline(always)]
fn body_linear<S: Simd, I: Io, P: Phased<S>, E: Epilogue>(
    s: S,
    io: &mut I,
    mut i: usize,
    end: usize,
    p: &P,
    b: &Linear<'_>,
    mut ph: usize,
    stream: bool,
    pf: &mut Prefetch,
    e: E,
) -> usize {
    let l = S::LANES;
    let mut fetched = 0;
    if banded::<S>(b) {
        fetched += body_bands(s, io, &mut i, end, p, (b.period, ph), stream, pf, e);
    }
    while i + l <= end {
        // The vectors from `ph` on that stay inside the arrays: parameters at offsets ph, ph + l, ….
        let len = ((b.reach - ph) / l).min((end - i) / l) * l;
        let r = ph..ph + len;
        let (m, sc, sh) = (b.m.map(|m| &m[r.clone()]), &b.sc[r.clone()], b.sh.map(|t| &t[r.clone()]));
        let keep = b.keep.map(|k| &k[r]);
        let mut k = 0;
        while k + 4 * l <= len {
            let x = io.load4(s, i + k);
            let mut y = x;
            for u in 0..4 {
                y[u] = linear_vector(s, x[u], (m, sc, sh, keep), k + u * l, e, i + k + u * l);
            }
            io.store4(s, i + k, y, stream);
            io.prefetch(s, pf, 4 * l);
            fetched += 4 * l;
            k += 4 * l;
        }
        while k < len {
            let y = linear_vector(s, io.load(s, i + k), (m, sc, sh, keep), k, e, i + k);
            io.put(s, i + k, y, stream);
            k += l;
        }
        i += len;
        ph = (ph + len) % b.period;
        if ph + l > b.reach && i + l <= end {
            // The vector across the end of borrowed rows' parameters.
            let (m, sc, sh) = p.vecs(s, ph);
            let y = p.mask(s, ph, e.apply(s, i, s.mul_add(s.sub(io.load(s, i), m), sc, sh)));
            io.put(s, i, y, stream);
            i += l;
            ph = p.next(ph);
        }
    }
    fetched
}

/// Channels-last rows whose three parameter arrays (mean, scale, shift: `12·C` bytes) exceed this are
/// normalised in bands of [`BAND_ROWS`] rows ([`body_bands`]). Half of the smaller L1 data cache of the
/// two x86 server cores of this class (Zen 4: 32 KB; Sapphire Rapids: 48 KB): measured on Zen 4 (a
/// throwaway kernel, one thread, 1568 rows in the L3), bands gain nothing at C = 1024–1280 (one row's
/// parameters stay in L1 beside the streamed rows), 5–25 % at C = 1536 and 10–100 % at C = 2048.
const BAND_PARAM_BYTES: usize = 16 << 10;

/// Rows per band: each parameter vector loaded serves this many rows. Four measured best on Zen 4 at
/// C = 2048 (two: 5–10 % slower; eight: 15–20 % slower, more concurrent streams than the core's
/// prefetchers follow well).
const BAND_ROWS: usize = 4;

/// Whether [`body_linear`] walks `b` in bands: borrowed whole rows (`reach == period`) wider than
/// [`BAND_PARAM_BYTES`] of parameters, of a whole number of cache lines (so that every row of a band has
/// the output alignment of the first), on a tier whose vector is a whole cache line (AVX-512: each store
/// of a band writes a whole line; with AVX2's half-line vectors four rows' lines stay half-written
/// between steps, and bands measured no better than the row walk there, 25–26 against 18–33 GB/s).
#[inline(always)]
fn banded<S: Simd>(b: &Linear<'_>) -> bool {
    S::LANES == LINE_FLOATS
        && b.reach == b.period
        && b.period.is_multiple_of(LINE_FLOATS)
        && 3 * 4 * b.period > BAND_PARAM_BYTES
}

/// Whole bands of [`BAND_ROWS`] rows of `c` channels from `*i` (output aligned there, first phase
/// `ph`) up to `end`, advancing `*i` past them; a band is walked column by column, each parameter vector
/// loaded once for the band's rows. Wide rows' parameters do not stay in L1 beside the streamed data
/// (C = 2048: 24 KB), so a row-by-row walk fetches three parameter lines from L2 per line of output; a
/// band fetches them once per `BAND_ROWS` lines. The rows are `C` floats apart (8 KB at C = 2048, equal
/// in the low 12 address bits): every row's load of a column comes before any store to it, so no load
/// waits on an earlier store to an aliasing address. Every element is computed by the same operations
/// as in the row walk. Returns the floats whose lines were handed to `pf`.
#[allow(clippy::too_many_arguments)]
#[inline(always)]
fn body_bands<S: Simd, I: Io, P: Phased<S>, E: Epilogue>(
    s: S,
    io: &mut I,
    i: &mut usize,
    end: usize,
    p: &P,
    (c, ph): (usize, usize),
    stream: bool,
    pf: &mut Prefetch,
    e: E,
) -> usize {
    let l = S::LANES;
    let band = BAND_ROWS * c;
    let mut fetched = 0;
    while *i + band <= end {
        let at = *i;
        // One column ahead: the next column's parameters and data are loaded before this column's
        // stores, so a parameter array or input just behind the output in the low 12 address bits does
        // not make those loads wait on the stores (4K aliasing; C = 2048 with the mean array 64 bytes
        // behind the output in the page: 25 GB/s loading after the stores, 47 loading ahead).
        let mut phk = ph;
        let mut v = p.vecs(s, phk);
        let mut x = [s.splat(0.0); BAND_ROWS];
        for (r, x) in x.iter_mut().enumerate() {
            *x = io.load(s, at + r * c);
        }
        let mut k = 0;
        while k < c {
            let (m, sc, sh) = v;
            let cur = x;
            let nph = p.next(phk);
            if k + l < c {
                v = p.vecs(s, nph);
                for (r, x) in x.iter_mut().enumerate() {
                    *x = io.load(s, at + r * c + k + l);
                }
            }
            for (r, x) in cur.into_iter().enumerate() {
                let y = p.mask(s, phk, e.apply(s, at + r * c + k, s.mul_add(s.sub(x, m), sc, sh)));
                io.put(s, at + r * c + k, y, stream);
            }
            io.prefetch(s, pf, BAND_ROWS * l);
            fetched += BAND_ROWS * l;
            phk = nph;
            k += l;
        }
        // A band is whole periods: the phase is back at `ph`.
        *i += band;
    }
    fetched
}

/// A walk's parameter arrays `(m, scale, shift, keep)`: `None` is 0 for `m` and `shift`, no padding for
/// `keep`.
type ParamArrays<'a> = (Option<&'a [f32]>, &'a [f32], Option<&'a [f32]>, Option<&'a [f32]>);

/// `y` of the vector `x` whose parameters are at offset `o` of the arrays, the epilogue `e` applied
/// (the vector being element `at` of the tensor) before the padding mask.
#[inline(always)]
fn linear_vector<S: Simd, E: Epilogue>(
    s: S,
    x: S::V,
    (m, sc, sh, keep): ParamArrays<'_>,
    o: usize,
    e: E,
    at: usize,
) -> S::V {
    // (`match`, not `map_or` with a closure: see `fill_scale`.)
    let zero = s.splat(0.0);
    let mv = match m {
        Some(m) => s.load(&m[o..]),
        None => zero,
    };
    let shv = match sh {
        Some(t) => s.load(&t[o..]),
        None => zero,
    };
    let y = e.apply(s, at, s.mul_add(s.sub(x, mv), s.load(&sc[o..]), shv));
    match keep {
        Some(k) => s.and(y, s.load(&k[o..])),
        None => y,
    }
}

/// The parameters of whole channels-last rows borrowed from the caller's slices (period C, no padding,
/// no overflowed scale): nothing is copied per call but the vector that crosses the row's end, whose
/// parameters come from `wrap` (`wrap[k]` is channel `(C − LANES + k) mod C`).
pub(crate) struct RowParams<'a> {
    p: Params<'a>,
    period: usize,
    wrap_m: [f32; 2 * WRAP],
    wrap_sc: [f32; 2 * WRAP],
    wrap_sh: [f32; 2 * WRAP],
}

/// The widest tier's lanes (room of a [`RowParams`] wrap buffer).
const WRAP: usize = 16;

impl<'a> RowParams<'a> {
    /// The parameters of rows of `p.scale.len()` channels, or `None` where they cannot be borrowed
    /// (fewer channels than a vector, or overflowed scales to copy through: [`Periodic`] then).
    #[inline(always)]
    pub(crate) fn new<S: Simd>(_s: S, p: &Params<'a>) -> Option<Self> {
        let period = p.scale.len();
        if p.fixup || period < S::LANES || S::LANES > WRAP {
            return None;
        }
        let mut out = RowParams {
            p: *p,
            period,
            wrap_m: [0.0; 2 * WRAP],
            wrap_sc: [0.0; 2 * WRAP],
            wrap_sh: [0.0; 2 * WRAP],
        };
        let mut c = period - S::LANES;
        for k in 0..2 * S::LANES {
            (out.wrap_m[k], out.wrap_sc[k], out.wrap_sh[k]) = p.channel(c);
            c += 1;
            if c == period {
                c = 0;
            }
        }
        Some(out)
    }
}

impl<S: Simd> Phased<S> for RowParams<'_> {
    #[inline(always)]
    fn vecs(&self, s: S, phase: usize) -> (S::V, S::V, S::V) {
        let l = S::LANES;
        if phase + l <= self.period {
            // (`match`, not `map_or` with a closure: see `fill_scale`.)
            let zero = s.splat(0.0);
            let m = match self.p.mean {
                Some(m) => s.load(&m[phase..]),
                None => zero,
            };
            let sh = match self.p.shift {
                Some(t) => s.load(&t[phase..]),
                None => zero,
            };
            (m, s.load(&self.p.scale[phase..]), sh)
        } else {
            // `period − l < phase < period`: `k < l`, and the loads stay inside the 2·l wrap values.
            let k = (phase + l - self.period).min(WRAP);
            (s.load(&self.wrap_m[k..]), s.load(&self.wrap_sc[k..]), s.load(&self.wrap_sh[k..]))
        }
    }
    #[inline(always)]
    fn mask(&self, _s: S, _phase: usize, y: S::V) -> S::V {
        y
    }
    #[inline(always)]
    fn advance(&self, phase: usize, by: usize) -> usize {
        (phase + by) % self.period
    }
    #[inline(always)]
    fn next(&self, phase: usize) -> usize {
        let p = phase + S::LANES;
        if p >= self.period { p - self.period } else { p }
    }
    // No `fixed`: rows are borrowed only when wider than four vectors (`GROUP` channels and more).
    #[inline(always)]
    fn linear(&self) -> Option<Linear<'_>> {
        Some(Linear {
            period: self.period,
            reach: self.period,
            m: self.p.mean,
            sc: self.p.scale,
            sh: self.p.shift,
            keep: None,
        })
    }
}
