#![forbid(unsafe_code)]
//! Per-channel statistics in one read pass.
//!
//! Each channel (or each lane of channels) keeps `(k0, m, M2)` and an exact integer count: the mean is
//! `k0 + m`, where the shift `k0` is the channel's first value, so that `m` stays of the order of σ and is
//! held with full relative precision even when |mean| ≫ σ. Values are consumed in short blocks; a block's
//! values are summed as `s1 = Σ(x − K)` and `s2 = Σ(x − K)²` around `K = k0 + m` (the running mean, so
//! `x − K` is small and, at large offsets, exact by Sterbenz' lemma), and the block is merged into the
//! running state with Chan's formula. There is no `E[x²] − E[x]²`, no second pass and no division per
//! element; the merge factors come from integer counts.

use super::{GROUP, Rows, TILE};
use crate::arch::Simd;
use crate::arch::scalar::Scalar;

/// Rows per block in the row kernels: the accumulators of a channel tile stay in registers for this many
/// rows before a merge. It bounds the cancellation in a block's `s2 − s1²/b` as well as the merge cost.
pub(crate) const ROW_BLOCK: usize = 32;

/// Vectors per block when reducing an NCHW plane.
const PLANE_BLOCK_VECTORS: usize = 64;

/// Blocks merged into a chunk before the chunk is merged into the total: a two-level tree, so rounding
/// grows with √(blocks per chunk) + √(chunks) instead of √(blocks).
pub(crate) const CHUNK_BLOCKS: usize = 64;

/// Running statistics of up to [`GROUP`] channels that share one count: the shift `k0`, and two levels
/// of `(m, M2)` relative to it — the current chunk and the total of the finished chunks.
pub(crate) struct GroupStats {
    pub k0: [f32; GROUP],
    pub cm: [f32; GROUP],
    pub cm2: [f32; GROUP],
    pub tm: [f32; GROUP],
    pub tm2: [f32; GROUP],
    /// Values per channel in the current chunk, and blocks in it.
    pub ccount: usize,
    pub cblocks: usize,
    /// Values per channel in the total.
    pub tcount: usize,
}

impl GroupStats {
    pub(crate) const fn new() -> Self {
        GroupStats {
            k0: [0.0; GROUP],
            cm: [0.0; GROUP],
            cm2: [0.0; GROUP],
            tm: [0.0; GROUP],
            tm2: [0.0; GROUP],
            ccount: 0,
            cblocks: 0,
            tcount: 0,
        }
    }

    /// Merges the current chunk of channels `0..width` into the total and empties it.
    #[inline(always)]
    fn flush<S: Simd>(&mut self, s: S, width: usize) {
        if self.ccount == 0 {
            return;
        }
        let mut c = 0;
        while c < width {
            let (tm, tm2) = merge_state(
                s,
                (s.load(&self.tm[c..]), s.load(&self.tm2[c..]), self.tcount),
                (s.load(&self.cm[c..]), s.load(&self.cm2[c..]), self.ccount),
            );
            s.store(&mut self.tm[c..], tm);
            s.store(&mut self.tm2[c..], tm2);
            s.store(&mut self.cm[c..], s.splat(0.0));
            s.store(&mut self.cm2[c..], s.splat(0.0));
            c += S::LANES;
        }
        self.tcount += self.ccount;
        self.ccount = 0;
        self.cblocks = 0;
    }

    /// Writes the first `mean.len()` channels' mean and population variance.
    #[inline(always)]
    pub(crate) fn finish<S: Simd>(&mut self, s: S, mean: &mut [f32], var: &mut [f32]) {
        self.flush(s, mean.len());
        for (j, (mu, v)) in mean.iter_mut().zip(var.iter_mut()).enumerate() {
            *mu = self.k0[j] + self.tm[j];
            *v = variance(self.tm2[j], self.tcount);
        }
    }
}

/// Chan's merge of two `(m, M2, count)` states relative to the same shift; returns `(m, M2)`.
#[inline(always)]
fn merge_state<S: Simd>(s: S, a: (S::V, S::V, usize), b: (S::V, S::V, usize)) -> (S::V, S::V) {
    let delta = s.sub(b.0, a.0);
    let (f1, f2) = merge_factors(a.2, b.2);
    (s.mul_add(delta, s.splat(f1), a.0), s.mul_add(s.mul(delta, delta), s.splat(f2), s.add(a.1, b.1)))
}

/// `M2 / count`, with the division done in f64 from the exact integer count. A rounding-negative `M2`
/// (possible only within a few ulps of 0) gives 0; NaN stays NaN.
#[inline(always)]
pub(crate) fn variance(m2: f32, count: usize) -> f32 {
    let m2 = if m2 < 0.0 { 0.0 } else { m2 };
    (m2 as f64 / count as f64) as f32
}

/// Chan's merge factors for adding a block of `b` values to `n_old`: `b / n` and `n_old · b / n`.
#[inline(always)]
fn merge_factors(n_old: usize, b: usize) -> (f32, f32) {
    let n_new = n_old as f64 + b as f64;
    ((b as f64 / n_new) as f32, (n_old as f64 * b as f64 / n_new) as f32)
}

/// Merges a block of `b` values per lane, given as sums `s1 = Σ(x − k)`, `s2 = Σ(x − k)²`, into the running
/// `(m, m2)` (mean relative to `k0`, and M2) of `n_old` values. Returns the new `(m, m2)`.
#[allow(clippy::too_many_arguments)]
#[inline(always)]
pub(crate) fn merge<S: Simd>(
    s: S,
    k: S::V,
    k0: S::V,
    m: S::V,
    m2: S::V,
    s1: S::V,
    s2: S::V,
    b: usize,
    n_old: usize,
) -> (S::V, S::V) {
    // `b` is a block length (at most a few thousand): exact in f32.
    let mb_rel = s.div(s1, s.splat(b as f32));
    let m2b = s.sub(s2, s.mul(s1, mb_rel));
    let delta = s.sub(s.add(s.sub(k, k0), mb_rel), m);
    let (f1, f2) = merge_factors(n_old, b);
    let m_new = s.mul_add(delta, s.splat(f1), m);
    let m2_new = s.mul_add(s.mul(delta, delta), s.splat(f2), s.add(m2, m2b));
    (m_new, m2_new)
}

/// Accumulates the rows of `rows` (channels `0..rows.width` of the group) into `st`.
#[inline(always)]
pub(crate) fn rows_moments<S: Simd>(s: S, x: &[f32], rows: &Rows, st: &mut GroupStats) {
    let w = rows.width;
    if rows.outer == 0 || rows.inner == 0 {
        return;
    }
    let l = S::LANES;
    let mut cursor = (0, 0);
    let mut offs = [0usize; ROW_BLOCK];
    loop {
        let b = rows.next_block(&mut cursor, &mut offs);
        if b == 0 {
            break;
        }
        let offs = &offs[..b];
        if st.tcount == 0 && st.ccount == 0 {
            // The shift: the first block's mean, from sums around the first row (one extra read of
            // the first block, from L1). Every later block is summed around the running mean, so no
            // block's `s2 − s1²/b` cancels much, whatever the offset or the first value.
            let first = &x[rows.base..rows.base + w];
            st.k0[..w].copy_from_slice(first);
            let mut col = 0;
            while col < w {
                shift_vector(s, x, offs, col, (w - col).min(l), st);
                col += l;
            }
        }
        let mut col = 0;
        while col + TILE * l <= w {
            moments_tile::<S, TILE>(s, x, offs, col, l, st);
            col += TILE * l;
        }
        while col < w {
            moments_tile::<S, 1>(s, x, offs, col, (w - col).min(l), st);
            col += l;
        }
        st.ccount += b;
        st.cblocks += 1;
        if st.cblocks == CHUNK_BLOCKS {
            st.flush(s, w);
        }
    }
}

/// Replaces `k0` of channels `col..col + n` (from the first row) by the mean of the block's rows.
#[inline(always)]
fn shift_vector<S: Simd>(s: S, x: &[f32], offs: &[usize], col: usize, n: usize, st: &mut GroupStats) {
    let l = S::LANES;
    let k = s.load(&st.k0[col..]);
    let mut s1 = s.splat(0.0);
    for &off in offs {
        let at = off + col;
        let v = if n < l { s.load_part(&x[at..at + n], k) } else { s.load(&x[at..]) };
        s1 = s.add(s1, s.sub(v, k));
    }
    s.store(&mut st.k0[col..], s.add(k, s.div(s1, s.splat(offs.len() as f32))));
}

/// One register tile of `T` vectors at column `col`; the last vector has `last` valid lanes.
#[inline(always)]
fn moments_tile<S: Simd, const T: usize>(
    s: S,
    x: &[f32],
    offs: &[usize],
    col: usize,
    last: usize,
    st: &mut GroupStats,
) {
    let l = S::LANES;
    let zero = s.splat(0.0);
    let mut k0 = [zero; T];
    let mut m = [zero; T];
    let mut k = [zero; T];
    // The block's shift is the running mean: the chunk's, or the total's while the chunk is empty.
    let running = if st.ccount == 0 { &st.tm } else { &st.cm };
    for j in 0..T {
        let c = col + j * l;
        k0[j] = s.load(&st.k0[c..]);
        m[j] = s.load(&st.cm[c..]);
        k[j] = s.add(k0[j], s.load(&running[c..]));
    }
    let mut s1 = [zero; T];
    let mut s2 = [zero; T];
    for &off in offs {
        for j in 0..T {
            let at = off + col + j * l;
            let v = if j + 1 == T && last < l {
                // Lanes past the row are filled with the shift, so they add exactly 0.
                s.load_part(&x[at..at + last], k[j])
            } else {
                s.load(&x[at..])
            };
            let d = s.sub(v, k[j]);
            s1[j] = s.add(s1[j], d);
            s2[j] = s.mul_add(d, d, s2[j]);
        }
    }
    let n_old = st.ccount;
    for j in 0..T {
        let c = col + j * l;
        let m2 = s.load(&st.cm2[c..]);
        let (mn, m2n) = merge(s, k[j], k0[j], m[j], m2, s1[j], s2[j], offs.len(), n_old);
        s.store(&mut st.cm[c..], mn);
        s.store(&mut st.cm2[c..], m2n);
    }
}

/// Shifted sums `(Σ(x − k), Σ(x − k)²)` of one stretch of a plane, with four accumulators per sum.
#[inline(always)]
fn plane_sums<S: Simd>(s: S, p: &[f32], k: f32) -> (f32, f32) {
    let l = S::LANES;
    let kv = s.splat(k);
    let zero = s.splat(0.0);
    let mut a1 = [zero; 4];
    let mut a2 = [zero; 4];
    let mut chunks = p.chunks_exact(4 * l);
    for ch in &mut chunks {
        for u in 0..4 {
            let d = s.sub(s.load(&ch[u * l..]), kv);
            a1[u] = s.add(a1[u], d);
            a2[u] = s.mul_add(d, d, a2[u]);
        }
    }
    let rest = chunks.remainder();
    let mut vecs = rest.chunks_exact(l);
    for (u, ch) in (&mut vecs).enumerate() {
        let d = s.sub(s.load(ch), kv);
        a1[u] = s.add(a1[u], d);
        a2[u] = s.mul_add(d, d, a2[u]);
    }
    let tail = vecs.remainder();
    if !tail.is_empty() {
        // Lanes past the plane hold the shift and add exactly 0.
        let d = s.sub(s.load_part(tail, kv), kv);
        a1[3] = s.add(a1[3], d);
        a2[3] = s.mul_add(d, d, a2[3]);
    }
    let t1 = s.add(s.add(a1[0], a1[1]), s.add(a1[2], a1[3]));
    let t2 = s.add(s.add(a2[0], a2[1]), s.add(a2[2], a2[3]));
    (s.hsum(t1), s.hsum(t2))
}

/// Running statistics of one channel in scalar form, with the same two levels as [`GroupStats`].
#[derive(Clone, Copy)]
pub(crate) struct ChannelStats {
    k0: f32,
    chunk: (f32, f32, usize),
    cblocks: usize,
    total: (f32, f32, usize),
}

impl ChannelStats {
    /// Empty statistics whose shift is `first`, a value of the channel.
    #[inline(always)]
    pub(crate) fn new(first: f32) -> Self {
        ChannelStats { k0: first, chunk: (0.0, 0.0, 0), cblocks: 0, total: (0.0, 0.0, 0) }
    }

    /// Adds the contiguous values of `plane`.
    #[inline(always)]
    pub(crate) fn add_plane<S: Simd>(&mut self, s: S, plane: &[f32]) {
        for block in plane.chunks(PLANE_BLOCK_VECTORS * S::LANES) {
            if self.total.2 == 0 && self.chunk.2 == 0 {
                // The shift becomes the first block's mean (see `rows_moments`).
                let (s1, _) = plane_sums(s, block, self.k0);
                self.k0 += s1 / block.len() as f32;
            }
            let (m, m2, n) = self.chunk;
            let k = self.k0 + if n == 0 { self.total.0 } else { m };
            let (s1, s2) = plane_sums(s, block, k);
            let (m, m2) = merge(Scalar, k, self.k0, m, m2, s1, s2, block.len(), n);
            self.chunk = (m, m2, n + block.len());
            self.cblocks += 1;
            if self.cblocks == CHUNK_BLOCKS {
                self.flush();
            }
        }
    }

    fn flush(&mut self) {
        if self.chunk.2 > 0 {
            let (m, m2) = merge_state(Scalar, self.total, self.chunk);
            self.total = (m, m2, self.total.2 + self.chunk.2);
            self.chunk = (0.0, 0.0, 0);
            self.cblocks = 0;
        }
    }

    /// `(mean, population variance)`.
    #[inline(always)]
    pub(crate) fn finish(&mut self) -> (f32, f32) {
        self.flush();
        (self.k0 + self.total.0, variance(self.total.1, self.total.2))
    }
}
