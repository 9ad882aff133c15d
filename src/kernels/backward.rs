#![forbid(unsafe_code)]
// `Weight` is f32 on bare-metal 32-bit targets, where its casts are to the same type.
#![allow(clippy::unnecessary_cast)]
//! The backward pass: per-channel gradient sums in one read pass of `x` and `dy`, then the element pass
//! `dx = a·(dy − mean(dy)) + k·(x − mean)`.
//!
//! With `a = γ·inv` (`inv = 1/√(var + ε)`, computed as the forward pass computes it), `M = N·S`,
//! `Σdy`, and the centred covariance `cov = Σ(dy − mean(dy))·(x − μ)`:
//!
//! - training (batch statistics): `dβ = Σdy`, `dγ = inv·cov`, `k = −a·inv²·cov/M`;
//! - global statistics (frozen BN): `dx = a·dy`, `dβ = Σdy`, `dγ = inv·Σdy·(x − mean)`.
//!
//! The reduction sums three things per channel: `Σdy`, `Σdy·(x − mean)` and `Σ(x − mean)`, each in f32
//! chains of at most 16 additions (registers), those block sums in f32 chains of at most 16 blocks (the
//! "mid" sums), and those in [`Weight`] precision (f64 where the FPU has it). `cov` is then
//! `Σdy·(x − mean) − mean(dy)·Σ(x − mean)`: exactly `Σ(dy − mean(dy))·(x − mean)`, which does not depend
//! on `mean` — the saved mean is an f32 rounding of the batch's, and this correction removes that
//! rounding from the gradient (and makes `dx` exactly 0 for a constant `dy`).
//!
//! Training works chunk by chunk of channels, like the forward pass: a chunk's sums (one read of its x
//! and dy), then its element pass while both are still in cache. Channels-last rows cannot be cut into
//! such chunks (each channel spans the whole tensor): they are two passes over the tensor.

use super::ops::{Kind, chunks, kind, row_len, row_width, train_chunk, wide};
use super::stats::Weight;
use super::{GROUP, WIDE_GROUP};
use crate::arch::Simd;
use crate::arch::scalar::Scalar;
use crate::layout::TensorDesc;
use crate::tuning;

/// Additions per f32 chain: rows per register block, and blocks per mid sum.
const CHAIN: usize = 16;

/// The data of a backward call: `x` and `dy` read, `dx` written (over `dy`, in place).
pub(crate) trait GradIo {
    fn x(&self) -> &[f32];
    fn dy(&self) -> &[f32];
    fn dx(&mut self) -> &mut [f32];
    /// Whether `dx` is its own buffer (then large outputs stream past the caches).
    const SPLIT: bool;
}

/// Out of place.
pub(crate) struct GradSplit<'a> {
    pub x: &'a [f32],
    pub dy: &'a [f32],
    pub dx: &'a mut [f32],
}

/// `dx` over `dy`.
pub(crate) struct GradInPlace<'a> {
    pub x: &'a [f32],
    pub dydx: &'a mut [f32],
}

impl GradIo for GradSplit<'_> {
    const SPLIT: bool = true;
    #[inline(always)]
    fn x(&self) -> &[f32] {
        self.x
    }
    #[inline(always)]
    fn dy(&self) -> &[f32] {
        self.dy
    }
    #[inline(always)]
    fn dx(&mut self) -> &mut [f32] {
        self.dx
    }
}

impl GradIo for GradInPlace<'_> {
    const SPLIT: bool = false;
    #[inline(always)]
    fn x(&self) -> &[f32] {
        self.x
    }
    #[inline(always)]
    fn dy(&self) -> &[f32] {
        self.dydx
    }
    #[inline(always)]
    fn dx(&mut self) -> &mut [f32] {
        self.dydx
    }
}

/// Gradient sums given by the caller (the element half): per channel `Σdy` and `Σdy·(x − mean)` over
/// `count` values.
#[derive(Clone, Copy)]
pub(crate) struct GivenSums<'a> {
    pub sum_dy: &'a [f32],
    pub sum_dy_xmu: &'a [f32],
    pub count: usize,
}

/// A validated backward call's parameters.
#[derive(Clone, Copy)]
pub(crate) struct BackParams<'a> {
    pub gamma: Option<&'a [f32]>,
    pub eps: f32,
    pub mean: &'a [f32],
    pub var: &'a [f32],
    /// Training mode (the statistics are the batch's), or global statistics (frozen).
    pub batch_stats: bool,
    /// The sums, when the caller reduced them (SyncBN); computed here otherwise.
    pub sums: Option<GivenSums<'a>>,
}

/// The optional parameter gradients.
pub(crate) struct BackOut<'a> {
    pub dgamma: Option<&'a mut [f32]>,
    pub dbeta: Option<&'a mut [f32]>,
}

/// The reduce half's outputs.
pub(crate) struct ReduceOut<'a> {
    pub sum_dy: &'a mut [f32],
    pub sum_dy_xmu: &'a mut [f32],
}

/// Per-channel sums of a chunk in [`Weight`] precision: `Σdy`, `Σdy·(x − mean)`, `Σ(x − mean)`.
struct Totals<const G: usize> {
    dy: [Weight; G],
    dyx: [Weight; G],
    x: [Weight; G],
}

impl<const G: usize> Totals<G> {
    const fn new() -> Self {
        Totals { dy: [0.0; G], dyx: [0.0; G], x: [0.0; G] }
    }
    fn clear(&mut self, n: usize) {
        self.dy[..n].fill(0.0);
        self.dyx[..n].fill(0.0);
        self.x[..n].fill(0.0);
    }
}

/// f32 sums of up to [`CHAIN`] blocks per position of a strip (see [`reduce_strip`]).
struct Mid<const G: usize> {
    v: [[f32; G]; 3],
    blocks: usize,
}

impl<const G: usize> Mid<G> {
    const fn new() -> Self {
        Mid { v: [[0.0; G]; 3], blocks: 0 }
    }

    /// Adds positions `0..w` into the totals: position `i` is total `base + i % period` when that is
    /// below `limit` (padding positions are dropped); then empties them.
    fn flush(&mut self, w: usize, t: &mut Totals<G>, period: usize, base: usize, limit: usize) {
        for i in 0..w {
            let j = base + i % period;
            if j < limit {
                t.dy[j] += self.v[0][i] as Weight;
                t.dyx[j] += self.v[1][i] as Weight;
                t.x[j] += self.v[2][i] as Weight;
            }
        }
        for v in &mut self.v {
            v[..w].fill(0.0);
        }
        self.blocks = 0;
    }
}

/// Per-position coefficients of the element pass: `dx = a·(dy − mdy) + k·(x − m)`, then `& mask`.
struct Coefs<const G: usize> {
    a: [f32; G],
    k: [f32; G],
    m: [f32; G],
    mdy: [f32; G],
    mask: [f32; G],
}

impl<const G: usize> Coefs<G> {
    const fn new() -> Self {
        Coefs { a: [0.0; G], k: [0.0; G], m: [0.0; G], mdy: [0.0; G], mask: [0.0; G] }
    }
}

/// One channel's coefficients `[a, k, m, mdy]`.
type Coef = [f32; 4];

/// The mask of a live lane (all ones).
const LIVE: f32 = f32::from_bits(u32::MAX);

/// The backward pass (both halves, or the element half from given sums) with tier `s`.
#[inline(always)]
pub(crate) fn backward_op<S: Simd, IO: GradIo>(
    s: S,
    desc: &TensorDesc,
    io: &mut IO,
    p: &BackParams<'_>,
    out: &mut BackOut<'_>,
) {
    if wide(desc) {
        backward::<S, IO, WIDE_GROUP>(s, desc, io, p, out)
    } else {
        backward::<S, IO, GROUP>(s, desc, io, p, out)
    }
}

/// The reduce half with tier `s`: `Σdy` and `Σdy·(x − mean)` per channel.
#[inline(always)]
pub(crate) fn reduce_op<S: Simd>(
    s: S,
    desc: &TensorDesc,
    x: &[f32],
    dy: &[f32],
    mean: &[f32],
    out: &mut ReduceOut<'_>,
) {
    if wide(desc) {
        reduce::<S, WIDE_GROUP>(s, desc, x, dy, mean, out)
    } else {
        reduce::<S, GROUP>(s, desc, x, dy, mean, out)
    }
}

#[inline(always)]
fn reduce<S: Simd, const G: usize>(
    s: S,
    desc: &TensorDesc,
    x: &[f32],
    dy: &[f32],
    mean: &[f32],
    out: &mut ReduceOut<'_>,
) {
    let mut t = Totals::<G>::new();
    let mut mid = Mid::<G>::new();
    let mut pat = [0.0f32; G];
    for (c0, c1) in chunks::<G>(desc, G) {
        t.clear(c1 - c0);
        reduce_range(s, desc, x, dy, mean, c0, c1, &mut t, &mut mid, &mut pat);
        for j in 0..c1 - c0 {
            out.sum_dy[c0 + j] = t.dy[j] as f32;
            out.sum_dy_xmu[c0 + j] = t.dyx[j] as f32;
        }
    }
}

#[inline(always)]
fn backward<S: Simd, IO: GradIo, const G: usize>(
    s: S,
    desc: &TensorDesc,
    io: &mut IO,
    p: &BackParams<'_>,
    out: &mut BackOut<'_>,
) {
    let tn = tuning::get();
    let stream = IO::SPLIT && desc.len() >= tn.stream_min_bytes / 4;
    let need_reduce = p.sums.is_none() && (p.batch_stats || out.dgamma.is_some() || out.dbeta.is_some());
    // Chunks of about `train_chunk_bytes` of x and dy together, so the element pass re-reads them from L2.
    let step = if need_reduce { train_chunk::<G>(desc, tn.train_chunk_bytes / 2) } else { G };
    let mut t = Totals::<G>::new();
    let mut mid = Mid::<G>::new();
    let mut co = Coefs::<G>::new();
    let count = p.sums.map_or(desc.shape().count(), |g| g.count);
    let mut coef = [[0.0f32; 4]; G];
    for (c0, c1) in chunks::<G>(desc, step) {
        let n = c1 - c0;
        if need_reduce {
            t.clear(n);
            reduce_range(s, desc, io.x(), io.dy(), p.mean, c0, c1, &mut t, &mut mid, &mut co.m);
        }
        for (j, cf) in coef[..n].iter_mut().enumerate() {
            *cf = channel_coef(p, c0 + j, &t, j, count, out);
        }
        elem_range::<S, IO, G>(s, desc, io, p.batch_stats, c0, c1, &coef[..n], &mut co, stream);
    }
    if stream {
        s.fence();
    }
}

/// Channel `c`'s element coefficients, and its `dγ`/`dβ` where asked for. The sums come from `p.sums`
/// when given, else from `t[j]`.
#[inline(always)]
fn channel_coef<const G: usize>(
    p: &BackParams<'_>,
    c: usize,
    t: &Totals<G>,
    j: usize,
    count: usize,
    out: &mut BackOut<'_>,
) -> Coef {
    let inv = Simd::inv_sqrt_or_zero(Scalar, p.var[c] + p.eps);
    let a = p.gamma.map_or(1.0, |g| g[c]) * inv;
    let m = p.mean[c];
    let (sdy, cov) = match p.sums {
        Some(g) => (g.sum_dy[c] as Weight, g.sum_dy_xmu[c] as Weight),
        None if p.batch_stats => {
            let sdy = t.dy[j];
            // Σ(dy − mean(dy))·(x − mean), whatever the rounding of `mean`.
            (sdy, t.dyx[j] - sdy / count as Weight * t.x[j])
        }
        None => (t.dy[j], t.dyx[j]),
    };
    if let Some(db) = out.dbeta.as_deref_mut() {
        db[c] = sdy as f32;
    }
    if let Some(dg) = out.dgamma.as_deref_mut() {
        dg[c] = (inv as Weight * cov) as f32;
    }
    if !p.batch_stats {
        return [a, 0.0, m, 0.0];
    }
    let mw = count as Weight;
    let k = -(a as Weight) * (inv as Weight) * (inv as Weight) * cov / mw;
    [a, k as f32, m, (sdy / mw) as f32]
}

/// The sums of channels `c0..c1` into `t[0..c1 − c0]`. `pat` is scratch for a mean pattern.
#[allow(clippy::too_many_arguments)]
#[inline(always)]
fn reduce_range<S: Simd, const G: usize>(
    s: S,
    desc: &TensorDesc,
    x: &[f32],
    dy: &[f32],
    mean: &[f32],
    c0: usize,
    c1: usize,
    t: &mut Totals<G>,
    mid: &mut Mid<G>,
    pat: &mut [f32; G],
) {
    let sh = desc.shape();
    let limit = c1 - c0;
    match kind(desc) {
        Kind::Planes => {
            for (c, &m) in mean.iter().enumerate().take(c1).skip(c0) {
                for n in 0..sh.n {
                    let at = (n * sh.c + c) * sh.spatial;
                    let (xs, ds) = (&x[at..at + sh.spatial], &dy[at..at + sh.spatial]);
                    let (a, b, d) = reduce_plane(s, xs, ds, m);
                    t.dy[c - c0] += a;
                    t.dyx[c - c0] += b;
                    t.x[c - c0] += d;
                }
            }
        }
        Kind::Channels => {
            let w = row_width(desc, c0, c1);
            for (i, v) in pat[..w].iter_mut().enumerate() {
                *v = if c0 + i < c1 { mean[c0 + i] } else { 0.0 };
            }
            let strip = Strip { start: c0, rows: sh.n * sh.spatial, stride: row_len(desc), width: w };
            reduce_strip(s, x, dy, &strip, &pat[..w], mid, t, (w, 0, limit));
        }
        Kind::Blocked(b) => {
            let blocks = sh.c.div_ceil(b);
            let p = b.max(S::LANES);
            let len = sh.spatial * b;
            for cb in c0 / b..c1.div_ceil(b) {
                for (i, v) in pat[..p].iter_mut().enumerate() {
                    let c = cb * b + i % b;
                    *v = if c < sh.c { mean[c] } else { 0.0 };
                }
                let base = cb * b - c0;
                for n in 0..sh.n {
                    let start = (n * blocks + cb) * len;
                    let strip = Strip { start, rows: len / p, stride: p, width: p };
                    reduce_strip(s, x, dy, &strip, &pat[..p], mid, t, (b, base, limit));
                    if !len.is_multiple_of(p) {
                        let rest = Strip { start: start + len / p * p, rows: 1, stride: p, width: len % p };
                        reduce_strip(s, x, dy, &rest, &pat[..p], mid, t, (b, base, limit));
                    }
                }
                mid.flush(p, t, b, base, limit);
            }
        }
    }
    if !matches!(kind(desc), Kind::Blocked(_)) {
        mid.flush(row_width(desc, c0, c1).min(G), t, G, 0, limit);
    }
}

/// `rows` rows of `width` contiguous values, row `r` at `start + r·stride`; position `i` of a row has the
/// coefficients at index `i` of the pattern arrays.
struct Strip {
    start: usize,
    rows: usize,
    stride: usize,
    width: usize,
}

/// `(Σdy, Σdy·(x − m), Σ(x − m))` of one contiguous plane, in register chains of [`CHAIN`] additions
/// whose sums are added in [`Weight`] precision.
#[inline(always)]
fn reduce_plane<S: Simd>(s: S, x: &[f32], dy: &[f32], m: f32) -> (Weight, Weight, Weight) {
    const U: usize = 4;
    let l = S::LANES;
    let mv = s.splat(m);
    let zero = s.splat(0.0);
    let (mut t0, mut t1, mut t2): (Weight, Weight, Weight) = (0.0, 0.0, 0.0);
    let n = x.len();
    let mut i = 0;
    while i < n {
        // A block of up to CHAIN vectors per accumulator.
        let end = (i + CHAIN * U * l).min(n);
        let mut a = [[zero; U]; 3];
        while i + U * l <= end {
            #[allow(clippy::needless_range_loop)] // three accumulator arrays indexed alike
            for u in 0..U {
                let at = i + u * l;
                let xm = s.sub(s.load(&x[at..]), mv);
                let d = s.load(&dy[at..]);
                a[0][u] = s.add(a[0][u], d);
                a[1][u] = s.mul_add(d, xm, a[1][u]);
                a[2][u] = s.add(a[2][u], xm);
            }
            i += U * l;
        }
        while i < end {
            let k = (end - i).min(l);
            let (xv, d) = if k == l {
                (s.load(&x[i..]), s.load(&dy[i..]))
            } else {
                (s.load_part(&x[i..i + k], mv), s.load_part(&dy[i..i + k], zero))
            };
            let xm = s.sub(xv, mv);
            a[0][0] = s.add(a[0][0], d);
            a[1][0] = s.mul_add(d, xm, a[1][0]);
            a[2][0] = s.add(a[2][0], xm);
            i += k;
        }
        t0 += tree4(s, a[0]) as Weight;
        t1 += tree4(s, a[1]) as Weight;
        t2 += tree4(s, a[2]) as Weight;
    }
    (t0, t1, t2)
}

/// The sum of four vectors' lanes in a fixed tree. (A function, not a closure: closures are compiled
/// without the tier's target features.)
#[inline(always)]
fn tree4<S: Simd>(s: S, v: [S::V; 4]) -> f32 {
    s.hsum(s.add(s.add(v[0], v[1]), s.add(v[2], v[3])))
}

/// The sums of a strip into `mid` (position by position), flushed into `t` through `map = (period,
/// base, limit)` (see [`Mid::flush`]) before any position's mid sum would exceed [`CHAIN`] blocks.
#[allow(clippy::too_many_arguments)]
#[inline(always)]
fn reduce_strip<S: Simd, const G: usize>(
    s: S,
    x: &[f32],
    dy: &[f32],
    strip: &Strip,
    m: &[f32],
    mid: &mut Mid<G>,
    t: &mut Totals<G>,
    map: (usize, usize, usize),
) {
    let l = S::LANES;
    let w = strip.width;
    // Pieces of rows whose x and dy fit in a quarter of L2, so the tile columns re-read them from it.
    let budget = tuning::get().l2_bytes / 4 / (8 * w).max(1);
    let piece = (budget / CHAIN * CHAIN).clamp(CHAIN, CHAIN * CHAIN);
    let mut r0 = 0;
    while r0 < strip.rows {
        let rows = (strip.rows - r0).min(piece);
        let blocks = rows.div_ceil(CHAIN);
        if mid.blocks + blocks > CHAIN {
            let (period, base, limit) = map;
            mid.flush(m.len(), t, period, base, limit);
        }
        let start = strip.start + r0 * strip.stride;
        let mut col = 0;
        while col + super::TILE * l <= w {
            reduce_tile::<S, { super::TILE }, G>(s, x, dy, start, rows, strip.stride, col, l, m, mid);
            col += super::TILE * l;
        }
        while col < w {
            reduce_tile::<S, 1, G>(s, x, dy, start, rows, strip.stride, col, (w - col).min(l), m, mid);
            col += l;
        }
        mid.blocks += blocks;
        r0 += rows;
    }
}

/// `T` vectors of columns from `col` (the last with `last` lanes) over `rows` rows: register chains of
/// [`CHAIN`] rows, each block added into the mid sums.
#[allow(clippy::too_many_arguments)]
#[inline(always)]
fn reduce_tile<S: Simd, const T: usize, const G: usize>(
    s: S,
    x: &[f32],
    dy: &[f32],
    start: usize,
    rows: usize,
    stride: usize,
    col: usize,
    last: usize,
    m: &[f32],
    mid: &mut Mid<G>,
) {
    let l = S::LANES;
    let zero = s.splat(0.0);
    let mut mv = [zero; T];
    for (j, v) in mv.iter_mut().enumerate() {
        let c = col + j * l;
        *v = if j + 1 < T || last == l { s.load(&m[c..]) } else { s.load_part(&m[c..c + last], zero) };
    }
    let mut r = 0;
    while r < rows {
        let end = (r + CHAIN).min(rows);
        let mut a = [[zero; T]; 3];
        while r < end {
            let at = start + r * stride + col;
            for j in 0..T {
                let i = at + j * l;
                let (xv, d) = if j + 1 < T || last == l {
                    (s.load(&x[i..]), s.load(&dy[i..]))
                } else {
                    (s.load_part(&x[i..i + last], mv[j]), s.load_part(&dy[i..i + last], zero))
                };
                let xm = s.sub(xv, mv[j]);
                a[0][j] = s.add(a[0][j], d);
                a[1][j] = s.mul_add(d, xm, a[1][j]);
                a[2][j] = s.add(a[2][j], xm);
            }
            r += 1;
        }
        for (q, acc) in a.iter().enumerate() {
            for (j, v) in acc.iter().enumerate() {
                // `mid` rows are G long, G a multiple of LANES and the strip at most G wide: in bounds.
                let c = col + j * l;
                let sum = s.add(s.load(&mid.v[q][c..]), *v);
                s.store(&mut mid.v[q][c..], sum);
            }
        }
    }
}

/// The element pass over channels `c0..c1` with their coefficients `coef` (`c1 − c0` long); `co` is
/// scratch for the position patterns.
#[allow(clippy::too_many_arguments)]
#[inline(always)]
fn elem_range<S: Simd, IO: GradIo, const G: usize>(
    s: S,
    desc: &TensorDesc,
    io: &mut IO,
    train: bool,
    c0: usize,
    c1: usize,
    coef: &[Coef],
    co: &mut Coefs<G>,
    stream: bool,
) {
    let sh = desc.shape();
    match kind(desc) {
        Kind::Planes => {
            for c in c0..c1 {
                for n in 0..sh.n {
                    let at = (n * sh.c + c) * sh.spatial;
                    if train {
                        elem_plane::<S, IO, true>(s, io, at, sh.spatial, coef[c - c0], stream);
                    } else {
                        elem_plane::<S, IO, false>(s, io, at, sh.spatial, coef[c - c0], stream);
                    }
                }
            }
        }
        Kind::Channels => {
            let w = row_width(desc, c0, c1);
            fill_pattern(co, coef, w, w);
            let strip = Strip { start: c0, rows: sh.n * sh.spatial, stride: row_len(desc), width: w };
            let masked = w > c1 - c0;
            elem_strip_any(s, io, &strip, co, train, masked, stream);
        }
        Kind::Blocked(b) => {
            let blocks = sh.c.div_ceil(b);
            let p = b.max(S::LANES);
            let len = sh.spatial * b;
            for cb in c0 / b..c1.div_ceil(b) {
                let first = cb * b - c0;
                let live = (c1 - c0 - first).min(b);
                fill_pattern(co, &coef[first..first + live], p, b);
                let masked = live < b;
                for n in 0..sh.n {
                    let start = (n * blocks + cb) * len;
                    let strip = Strip { start, rows: len / p, stride: p, width: p };
                    elem_strip_any(s, io, &strip, co, train, masked, stream);
                    if !len.is_multiple_of(p) {
                        let rest = Strip { start: start + len / p * p, rows: 1, stride: p, width: len % p };
                        elem_strip_any(s, io, &rest, co, train, masked, stream);
                    }
                }
            }
        }
    }
}

/// Position `i < w` of the patterns gets channel `i % period`'s coefficients (`coef[i % period]`, or
/// zeros and a clear mask past `coef`: padding).
#[inline(always)]
fn fill_pattern<const G: usize>(co: &mut Coefs<G>, coef: &[Coef], w: usize, period: usize) {
    for i in 0..w {
        let [a, k, m, mdy] = coef.get(i % period).copied().unwrap_or([0.0; 4]);
        co.a[i] = a;
        co.k[i] = k;
        co.m[i] = m;
        co.mdy[i] = mdy;
        co.mask[i] = if i % period < coef.len() { LIVE } else { 0.0 };
    }
}

#[inline(always)]
fn elem_strip_any<S: Simd, IO: GradIo, const G: usize>(
    s: S,
    io: &mut IO,
    strip: &Strip,
    co: &Coefs<G>,
    train: bool,
    masked: bool,
    stream: bool,
) {
    match (train, masked) {
        (true, false) => elem_strip::<S, IO, true, false, G>(s, io, strip, co, stream),
        (true, true) => elem_strip::<S, IO, true, true, G>(s, io, strip, co, stream),
        (false, false) => elem_strip::<S, IO, false, false, G>(s, io, strip, co, stream),
        (false, true) => elem_strip::<S, IO, false, true, G>(s, io, strip, co, stream),
    }
}

/// `dx` of one vector: `a·(dy − mdy) + k·(x − m)` in training mode, `a·dy` with global statistics.
#[inline(always)]
fn grad<S: Simd, const TRAIN: bool>(s: S, x: S::V, dy: S::V, c: [S::V; 4]) -> S::V {
    if TRAIN { s.mul_add(c[1], s.sub(x, c[2]), s.mul(c[0], s.sub(dy, c[3]))) } else { s.mul(c[0], dy) }
}

/// The element pass over a strip, coefficients from the patterns (loaded per row: L1 reads).
#[inline(always)]
fn elem_strip<S: Simd, IO: GradIo, const TRAIN: bool, const MASK: bool, const G: usize>(
    s: S,
    io: &mut IO,
    strip: &Strip,
    co: &Coefs<G>,
    stream: bool,
) {
    let l = S::LANES;
    let w = strip.width;
    let zero = s.splat(0.0);
    for r in 0..strip.rows {
        let at = strip.start + r * strip.stride;
        let mut j = 0;
        while j < w {
            let n = (w - j).min(l);
            // Pattern arrays are G long, G a multiple of LANES and w ≤ G: full loads are in bounds.
            let c = [s.load(&co.a[j..]), s.load(&co.k[j..]), s.load(&co.m[j..]), s.load(&co.mdy[j..])];
            let i = at + j;
            if n == l {
                let d = s.load(&io.dy()[i..]);
                let xv = if TRAIN { s.load(&io.x()[i..]) } else { zero };
                let mut v = grad::<S, TRAIN>(s, xv, d, c);
                if MASK {
                    v = s.and(v, s.load(&co.mask[j..]));
                }
                if stream {
                    s.stream(&mut io.dx()[i..], v);
                } else {
                    s.store(&mut io.dx()[i..], v);
                }
            } else {
                let d = s.load_part(&io.dy()[i..i + n], zero);
                let xv = if TRAIN { s.load_part(&io.x()[i..i + n], zero) } else { zero };
                let mut v = grad::<S, TRAIN>(s, xv, d, c);
                if MASK {
                    v = s.and(v, s.load(&co.mask[j..]));
                }
                s.store_part(&mut io.dx()[i..i + n], v);
            }
            j += n;
        }
    }
}

/// The element pass over one contiguous plane of `n` values of one channel, `c = [a, k, m, mdy]`. With
/// `stream`, the first values up to a vector-aligned output address are done alone, so that the rest
/// streams.
#[inline(always)]
fn elem_plane<S: Simd, IO: GradIo, const TRAIN: bool>(
    s: S,
    io: &mut IO,
    at: usize,
    n: usize,
    c: Coef,
    stream: bool,
) {
    let l = S::LANES;
    let cv = [s.splat(c[0]), s.splat(c[1]), s.splat(c[2]), s.splat(c[3])];
    let zero = s.splat(0.0);
    let mut i = 0;
    if stream {
        let phase = (io.dx().as_ptr() as usize / 4 + at) % l;
        let head = ((l - phase) % l).min(n);
        if head > 0 {
            part::<S, IO, TRAIN>(s, io, at, head, cv);
            i = head;
        }
    }
    while i + 2 * l <= n {
        let p = at + i;
        for u in 0..2 {
            let q = p + u * l;
            let d = s.load(&io.dy()[q..]);
            let xv = if TRAIN { s.load(&io.x()[q..]) } else { zero };
            let v = grad::<S, TRAIN>(s, xv, d, cv);
            if stream {
                s.stream(&mut io.dx()[q..], v);
            } else {
                s.store(&mut io.dx()[q..], v);
            }
        }
        i += 2 * l;
    }
    while i < n {
        let k = (n - i).min(l);
        if k == l {
            let q = at + i;
            let d = s.load(&io.dy()[q..]);
            let xv = if TRAIN { s.load(&io.x()[q..]) } else { zero };
            s.store(&mut io.dx()[q..], grad::<S, TRAIN>(s, xv, d, cv));
        } else {
            part::<S, IO, TRAIN>(s, io, at + i, k, cv);
        }
        i += k;
    }
}

/// `k < LANES` values at `at` of a plane.
#[inline(always)]
fn part<S: Simd, IO: GradIo, const TRAIN: bool>(s: S, io: &mut IO, at: usize, k: usize, cv: [S::V; 4]) {
    let zero = s.splat(0.0);
    let d = s.load_part(&io.dy()[at..at + k], zero);
    let xv = if TRAIN { s.load_part(&io.x()[at..at + k], zero) } else { zero };
    s.store_part(&mut io.dx()[at..at + k], grad::<S, TRAIN>(s, xv, d, cv));
}
