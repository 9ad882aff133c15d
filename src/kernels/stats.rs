#![forbid(unsafe_code)]
//! Per-channel statistics in one read pass.
//!
//! Each channel (or each lane of channels) keeps a shift `k0` and `(m, M2)` relative to it, with an exact
//! integer count: the mean is `k0 + m`. The shift is the mean of the channel's first block, so `m` stays
//! of the order of σ and is held with full relative precision even when |mean| ≫ σ. Values are consumed
//! in short blocks: a block's values are summed as `s1 = Σ(x − K)` and `s2 = Σ(x − K)²` around `K = k0 + m`
//! (the running mean, so `x − K` is small and, at large offsets, exact by Sterbenz' lemma), and merged
//! with Chan's formula into a chunk, and chunks into the total — a fixed two-level tree. There is no
//! `E[x²] − E[x]²`, no second pass over the data and no division per element; merge factors come from
//! integer counts.

use super::{Rows, TILE};
use crate::arch::Simd;
use crate::arch::scalar::Scalar;

/// Rows per block in the row kernels: the accumulators of a channel tile stay in registers for this many
/// rows before a merge (twice as many for rows one vector wide, whose rows are split over four
/// accumulators). It bounds the cancellation in a block's `s2 − s1²/b` as well as the merge cost.
pub(crate) const ROW_BLOCK: usize = 32;

/// Software prefetch distance of the statistics loops, in floats: at least 8 KB ahead of each load (on
/// a Xeon the hardware prefetcher alone left a single core's read pass ~30 % short of what it can stream
/// from memory while the loop also computes), and for rows of a wide tile the same columns one block of
/// rows ahead, capped at `tuning().prefetch_bytes` (an eighth of L2, at most 128 KB) so the lines are
/// still in L2 when the loop reaches them. None where [`prefetch_limit`] says so.
const PF_MIN: usize = 2048;

/// Whether a tensor of `len` floats is read from memory rather than the L3: at least four times the
/// non-temporal threshold in bytes, i.e. `len` floats against `stream_min_bytes`. Decides both the
/// statistics' row-order walk and, on AMD, their prefetch.
#[inline(always)]
fn from_memory(len: usize) -> bool {
    len >= crate::tuning::get().stream_min_bytes
}

/// The farthest the statistics of a tensor of `len` floats prefetch, in floats (0: they do not; see
/// `crate::tuning`: not at all with a prefetch distance of 0, and not from memory on AMD).
#[inline(always)]
pub(crate) fn prefetch_limit(len: usize) -> usize {
    let t = crate::tuning::get();
    if !t.memory_prefetch && from_memory(len) { 0 } else { t.prefetch_bytes / 4 }
}

/// Floats per 64-byte cache line: one prefetch per line.
const LINE: usize = 16;

/// Blocks merged into a chunk before the chunk is merged into the total: a two-level tree, so rounding
/// grows with √(blocks per chunk) + √(chunks) instead of √(blocks).
pub(crate) const CHUNK_BLOCKS: usize = 64;

/// The precision of the merge weights and of the final division by the count: f64 where the target does
/// f64 in hardware, so that counts above 2²⁴ weigh exactly; f32 on bare-metal 32-bit targets (Cortex-M,
/// RV32), whose FPUs are single precision or absent and where f64 is a software routine. In f32 the
/// counts are exact up to 2²⁴ values per channel (beyond, each weight carries one more rounding, 2⁻²⁴
/// relative) and a weight `n_old·b/n` is rounded twice instead of once: a few U against the variance's
/// 32 U bound (README, Guarantees).
#[cfg(not(all(target_os = "none", not(target_pointer_width = "64"))))]
pub(crate) type Weight = f64;
/// See the other definition: f32 on bare-metal 32-bit targets.
#[cfg(all(target_os = "none", not(target_pointer_width = "64")))]
pub(crate) type Weight = f32;

/// `M2 / count`, with the division done in [`Weight`] precision from the integer count. A rounding-negative
/// `M2` (possible only within a few ulps of 0) gives 0; NaN stays NaN.
#[allow(clippy::unnecessary_cast)] // `Weight` is f32 on some targets
#[inline(always)]
pub(crate) fn variance(m2: f32, count: usize) -> f32 {
    let m2 = if m2 < 0.0 { 0.0 } else { m2 };
    (m2 as Weight / count as Weight) as f32
}

/// Chan's merge factors for adding `b` values to `n_old`: `b / n` and `n_old · b / n`.
#[allow(clippy::unnecessary_cast)] // `Weight` is f32 on some targets
#[inline(always)]
fn merge_factors(n_old: usize, b: usize) -> (f32, f32) {
    if n_old == 0 {
        // What the divisions below give exactly; a channel's first block and first chunk skip them.
        return (1.0, 0.0);
    }
    let n_new = n_old as Weight + b as Weight;
    ((b as Weight / n_new) as f32, (n_old as Weight * b as Weight / n_new) as f32)
}

/// Chan's factors for merging a block of `b` values into `n_old`: `1/b`, `b/n` and `n_old·b/n`
/// (computed once per block, shared by every vector of channels).
#[derive(Clone, Copy)]
pub(crate) struct BlockMerge {
    inv_b: f32,
    f1: f32,
    f2: f32,
}

impl BlockMerge {
    #[allow(clippy::unnecessary_cast)] // `Weight` is f32 on some targets
    #[inline(always)]
    pub(crate) fn new(n_old: usize, b: usize) -> Self {
        let (f1, f2) = merge_factors(n_old, b);
        // `b` is a block length (at most a few thousand): exact in f32, and `1/b` within half an ulp.
        BlockMerge { inv_b: (1.0 / b as Weight) as f32, f1, f2 }
    }
}

/// Merges a block given as sums `s1 = Σ(x − k)`, `s2 = Σ(x − k)²` per lane into the running `(m, m2)`
/// (mean relative to `k0`, and M2). Returns the new `(m, m2)`.
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
    f: BlockMerge,
) -> (S::V, S::V) {
    let mb_rel = s.mul(s1, s.splat(f.inv_b));
    // `s1·mb_rel ≤ s2` in exact arithmetic; capping it at f32::MAX keeps an overflowed `s2 = +inf`
    // (a spread whose squares overflow) an infinite M2 rather than `inf − inf = NaN`.
    let m2b = s.sub(s2, s.min(s.mul(s1, mb_rel), s.splat(f32::MAX)));
    let delta = s.sub(s.add(s.sub(k, k0), mb_rel), m);
    let m_new = s.mul_add(delta, s.splat(f.f1), m);
    // `(delta·f2)·delta`, not `delta²·f2`: a first merge (f2 = 0) then adds 0 even where delta² overflows.
    let m2_new = s.mul_add(s.mul(delta, s.splat(f.f2)), delta, s.add(m2, m2b));
    (m_new, m2_new)
}

/// Chan's merge of two `(m, M2, count)` states relative to the same shift; returns `(m, M2)`.
#[inline(always)]
pub(crate) fn merge_state<S: Simd>(s: S, a: (S::V, S::V, usize), b: (S::V, S::V, usize)) -> (S::V, S::V) {
    let delta = s.sub(b.0, a.0);
    let (f1, f2) = merge_factors(a.2, b.2);
    (s.mul_add(delta, s.splat(f1), a.0), s.mul_add(s.mul(delta, s.splat(f2)), delta, s.add(a.1, b.1)))
}

/// Finished statistics of one channel (or lane): mean `k0 + m`, `M2`, count.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Summary {
    pub k0: f32,
    pub m: f32,
    pub m2: f32,
    pub count: usize,
}

impl Summary {
    pub(crate) const EMPTY: Summary = Summary { k0: 0.0, m: 0.0, m2: 0.0, count: 0 };

    /// Chan's merge of two summaries with different shifts (the result keeps `self`'s).
    #[inline(always)]
    pub(crate) fn merge(self, b: Summary) -> Summary {
        if self.count == 0 {
            return b;
        }
        if b.count == 0 {
            return self;
        }
        // Both shifts are values near the mean: their difference is exact or nearly so.
        let delta = (b.k0 - self.k0) + (b.m - self.m);
        let (f1, f2) = merge_factors(self.count, b.count);
        Summary {
            k0: self.k0,
            m: self.m + delta * f1,
            m2: self.m2 + b.m2 + delta * f2 * delta,
            count: self.count + b.count,
        }
    }

    /// `(mean, lo, population variance)`: `mean` is `k0 + m` rounded to f32, and `lo` the rest of
    /// `k0 + m` that its rounding dropped (`mean + lo == k0 + m` exactly, TwoSum). The normalise pass
    /// of training subtracts both, so its output does not carry the mean's rounding (`U·|mean|`, which
    /// is `U·10⁴·σ` at an offset of 10⁴ σ) but only `m`'s (of the order of `U·σ`).
    #[inline(always)]
    pub(crate) fn finish_split(self) -> (f32, f32, f32) {
        let (a, b) = (self.k0, self.m);
        let hi = a + b;
        let bb = hi - a;
        let lo = (a - (hi - bb)) + (b - bb);
        (hi, lo, variance(self.m2, self.count))
    }
}

/// Running statistics of up to `N` channels that share one count: the shift `k0`, and two levels of
/// `(m, M2)` relative to it — the current chunk and the total of the finished chunks. `N` is a multiple of
/// every tier's lane count: [`GROUP`](super::GROUP) for channels-last rows, 16 for one channel block.
pub(crate) struct GroupStats<const N: usize> {
    k0: [f32; N],
    cm: [f32; N],
    cm2: [f32; N],
    tm: [f32; N],
    tm2: [f32; N],
    /// Values per channel in the current chunk, and blocks in it.
    ccount: usize,
    cblocks: usize,
    /// Values per channel in the total.
    tcount: usize,
}

impl<const N: usize> GroupStats<N> {
    pub(crate) const fn new() -> Self {
        GroupStats {
            k0: [0.0; N],
            cm: [0.0; N],
            cm2: [0.0; N],
            tm: [0.0; N],
            tm2: [0.0; N],
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

    /// The finished statistics of lanes `0..width` (flushing the current chunk); `lane(j)` reads them.
    #[inline(always)]
    pub(crate) fn close<S: Simd>(&mut self, s: S, width: usize) {
        self.flush(s, width);
    }

    /// Lane `j` of a closed group.
    #[inline(always)]
    pub(crate) fn lane(&self, j: usize) -> Summary {
        Summary { k0: self.k0[j], m: self.tm[j], m2: self.tm2[j], count: self.tcount }
    }
}

/// Accumulates the rows of `rows` (lanes `0..rows.width`) into `st`.
#[inline(always)]
pub(crate) fn rows_moments<S: Simd, const N: usize>(s: S, x: &[f32], rows: &Rows, st: &mut GroupStats<N>) {
    let w = rows.width;
    let l = S::LANES;
    let mut cursor = (0, 0);
    let mut runs = [(0usize, 0usize); 2 * ROW_BLOCK];
    // Rows narrower than a tile are one vector (or less) wide, summed into four accumulators: twice
    // the rows per block keeps their chains at 16 additions and halves the merges. (Every lane's
    // arithmetic depends only on `rb`, on the tiles that hold it and on its rows: a range of columns of
    // a chunk at least 64 wide, starting a multiple of two AVX-512 tiles into it, gives each channel the
    // chunk's bits; the parallel front end's `column_per` cuts so.)
    let rb = if w >= TILE * l { ROW_BLOCK } else { 2 * ROW_BLOCK };
    let pf = match prefetch_limit(x.len()) {
        0 => 0,
        p => (rb * rows.inner_stride).clamp(PF_MIN, p.max(PF_MIN)),
    };
    let stride = rows.inner_stride;
    // The columns the register tiles below cover; for a tensor that comes from memory they are read
    // row by row instead (`block_rows_moments`).
    let tiled = w - w % (TILE * l);
    // (The accumulators are only set up for it.)
    let mut row_major = (tiled >= l && from_memory(x.len())).then(RowAcc::<N>::new);
    loop {
        let (k, b) = rows.next_block(&mut cursor, &mut runs, rb);
        if b == 0 {
            break;
        }
        let block = Block { runs: &runs[..k], stride };
        if st.tcount == 0 && st.ccount == 0 {
            // The shift: the mean of the first block, from sums around its first row (one extra read
            // of the block, from L1). The first block is summed around it and every later block around
            // the running mean, so no block's `s2 − s1²/b` cancels much, whatever the offset or the
            // first values (bimodal data whose first rows are all one mode cost 39 U with a 4-row
            // shift).
            let first = block.runs[0].0;
            st.k0[..w].copy_from_slice(&x[first..first + w]);
            let mut col = 0;
            while col < w {
                shift_vector(s, x, &block, b, col, (w - col).min(l), st);
                col += l;
            }
        }
        let f = BlockMerge::new(st.ccount, b);
        let mut col = 0;
        if let Some(acc) = row_major.as_mut() {
            // Every tile column of the block in one sweep along its rows.
            block_rows_moments(s, x, &block, tiled, st, f, acc, pf);
            col = tiled;
        }
        // Wide rows on a tier with 32 vector registers: tiles of twice the width (16 accumulators and 8
        // shifts), so each row of the block is read as 512 contiguous bytes rather than 256: rows are C
        // floats apart (4 KB for C = 1024), and half as many strided passes over the block measured
        // 35 → 47 GB/s for NHWC `moments` with C = 1024 and 2048 (Zen 4).
        if S::REGS >= 32 {
            while col + 2 * TILE * l <= w {
                moments_tile::<S, { 2 * TILE }, 1, N>(s, x, &block, col, l, st, f, pf);
                col += 2 * TILE * l;
            }
        }
        while col + TILE * l <= w {
            moments_tile::<S, TILE, 1, N>(s, x, &block, col, l, st, f, pf);
            col += TILE * l;
        }
        while col < w {
            // A lone vector: four accumulators over alternating rows hide the add latency.
            moments_tile::<S, 1, 4, N>(s, x, &block, col, (w - col).min(l), st, f, pf);
            col += l;
        }
        st.ccount += b;
        st.cblocks += 1;
        if st.cblocks == CHUNK_BLOCKS {
            st.flush(s, w);
        }
    }
}

/// Accumulators of [`block_rows_moments`] in memory (L1): the shift and the two sums of each tile
/// column of a group (3 KB for a group of 256 channels, on the stack of `rows_moments`).
struct RowAcc<const N: usize> {
    k: [f32; N],
    a1: [f32; N],
    a2: [f32; N],
}

impl<const N: usize> RowAcc<N> {
    const fn new() -> Self {
        RowAcc { k: [0.0; N], a1: [0.0; N], a2: [0.0; N] }
    }
}

/// The tile columns `0..tiled` (a multiple of the vector width) of `block`, row after row in address
/// order, with the accumulators in `acc` instead of registers; merged into the chunk with `f`.
///
/// The register tiles of [`moments_tile`] hold at most eight vectors of accumulators, so a row wider
/// than a tile is read in several strided passes per block (two passes of 512 bytes over 1 KB rows for
/// C = 256 on AVX-512), and even a row one tile wide is one of 32 separate streams. From memory that
/// reads far below what a single walk in address order gets (Zen 4, `moments` of NHWC 32×C×56×56 and
/// similar tensors of ~100 MB, GB/s, tiles → this: AVX-512 C = 64 18 → 26, C = 128 15 → 24, C = 256
/// 10.5 → 17–19, C = 512 10.7 → 16.4; AVX2 C = 64 10.5 → 25–29, C = 256 9.3 → 18.8, C = 512 9 → 19).
/// From the cache the tiles are faster (47 against 22 GB/s for 32×2048×7×7 from L3 on AVX-512: the
/// accumulators' loads and stores then cost), so `rows_moments` takes this path only for tensors of at
/// least four times the non-temporal threshold (beyond the L3 of a Zen 4 complex).
///
/// Every lane sees exactly the operations of the tiles in the same order (the shift, then per row
/// `d = x − k`, `s1 += d`, `s2 += d·d`, then the same merge), so the results are bit-identical to the
/// tiles'. Rows are taken one at a time: two rows per accumulator update (two streams 1 KB apart)
/// measured as slow as the tiles.
#[allow(clippy::too_many_arguments)]
#[inline(always)]
fn block_rows_moments<S: Simd, const N: usize>(
    s: S,
    x: &[f32],
    block: &Block<'_>,
    tiled: usize,
    st: &mut GroupStats<N>,
    f: BlockMerge,
    acc: &mut RowAcc<N>,
    pf: usize,
) {
    let l = S::LANES;
    let running = if st.ccount == 0 { &st.tm } else { &st.cm };
    let zero = s.splat(0.0);
    let mut c = 0;
    while c < tiled {
        let k = s.add(s.load(&st.k0[c..]), s.load(&running[c..]));
        s.store(&mut acc.k[c..], k);
        s.store(&mut acc.a1[c..], zero);
        s.store(&mut acc.a2[c..], zero);
        c += l;
    }
    let (k, a1, a2) = (&acc.k[..tiled], &mut acc.a1[..tiled], &mut acc.a2[..tiled]);
    for &(start, count) in block.runs {
        let mut at = start;
        for _ in 0..count {
            add_row_mem(s, &x[at..at + tiled], k, a1, a2, pf);
            at += block.stride;
        }
    }
    let mut c = 0;
    while c < tiled {
        let (k, k0, m, m2) =
            (s.load(&acc.k[c..]), s.load(&st.k0[c..]), s.load(&st.cm[c..]), s.load(&st.cm2[c..]));
        let (mn, m2n) = merge(s, k, k0, m, m2, s.load(&acc.a1[c..]), s.load(&acc.a2[c..]), f);
        s.store(&mut st.cm[c..], mn);
        s.store(&mut st.cm2[c..], m2n);
        c += l;
    }
}

/// One row into the in-memory accumulators of [`block_rows_moments`], prefetching `pf` floats ahead
/// (none for 0).
#[inline(always)]
fn add_row_mem<S: Simd>(s: S, row: &[f32], k: &[f32], a1: &mut [f32], a2: &mut [f32], pf: usize) {
    let l = S::LANES;
    let mut j = 0;
    while j < row.len() {
        if pf > 0 && j % LINE == 0 {
            s.prefetch_ahead(&row[j..], pf);
        }
        let d = s.sub(s.load(&row[j..]), s.load(&k[j..]));
        let t1 = s.add(s.load(&a1[j..]), d);
        let t2 = s.mul_add(d, d, s.load(&a2[j..]));
        s.store(&mut a1[j..], t1);
        s.store(&mut a2[j..], t2);
        j += l;
    }
}

/// A block of rows: runs `(start, count)` of rows `stride` apart.
struct Block<'a> {
    runs: &'a [(usize, usize)],
    stride: usize,
}

/// `2^-⌈log₂ b⌉`: the largest power of two at most `1/b`. Terms scaled by it are exact (a power of two)
/// and their sum cannot overflow where the terms do not; dividing the sum by `b·p` (exact, in (½, 1])
/// then gives `Σ/b` correctly rounded whenever the scaled sum was exact. `b ≥ 1`.
#[inline(always)]
pub(crate) fn pow2_below_inv(b: usize) -> f32 {
    1.0 / b.max(1).next_power_of_two() as f32
}

/// Replaces `k0` of lanes `col..col + n` (from the first row) by the mean of the `b` rows of `block`:
/// `k + Σ((x − k)·p) / (b·p)` with `p` from [`pow2_below_inv`]. It overflows only where two values
/// differ by more than `f32::MAX`, and it is exactly the block's mean whenever the sum is exact — paired
/// values `μ ± d` with `d` a power of two give a shift of exactly `μ`, so their statistics are exact.
#[inline(always)]
fn shift_vector<S: Simd, const N: usize>(
    s: S,
    x: &[f32],
    block: &Block<'_>,
    b: usize,
    col: usize,
    n: usize,
    st: &mut GroupStats<N>,
) {
    let k = s.load(&st.k0[col..]);
    let p = pow2_below_inv(b);
    let scale = s.splat(p);
    // Four accumulators, rows dealt out in turn across the block and added in a fixed tree (the main
    // pass's order): one chain of `b` dependent FMAs per column cost as much as the whole pass over a
    // channel block's 196 rows. (Helper functions, not closures: see `moments_tile`.)
    let zero = s.splat(0.0);
    let mut a = [zero; 4];
    let mut u = 0;
    for &(start, count) in block.runs {
        let mut at = start + col;
        let mut r = 0;
        while u != 0 && r < count {
            a[u] = shift_add(s, x, at, n, k, scale, a[u]);
            u = (u + 1) % 4;
            at += block.stride;
            r += 1;
        }
        while r + 4 <= count {
            for acc in a.iter_mut() {
                *acc = shift_add(s, x, at, n, k, scale, *acc);
                at += block.stride;
            }
            r += 4;
        }
        while r < count {
            a[u] = shift_add(s, x, at, n, k, scale, a[u]);
            u = (u + 1) % 4;
            at += block.stride;
            r += 1;
        }
    }
    let s1 = sum_tree(s, &a);
    // One division per lane, once per channel: scalar.
    let mut sums = [0.0f32; 16];
    s.store(&mut sums, s1);
    let bp = b as f32 * p;
    for (k0, sum) in st.k0[col..col + n].iter_mut().zip(sums) {
        *k0 += sum / bp;
    }
}

/// `acc + (x[at..at + n] − k)·scale` (lanes past `n` add exactly 0).
#[allow(clippy::too_many_arguments)]
#[inline(always)]
fn shift_add<S: Simd>(s: S, x: &[f32], at: usize, n: usize, k: S::V, scale: S::V, acc: S::V) -> S::V {
    let v = if n < S::LANES { s.load_part(&x[at..at + n], k) } else { s.load(&x[at..]) };
    s.mul_add(s.sub(v, k), scale, acc)
}

/// One register tile of `T` vectors at column `col`, with `U` accumulators per vector (rows dealt out in
/// turn); the last vector has `last` valid lanes. `f` merges the block into the chunk.
#[allow(clippy::too_many_arguments)]
#[inline(always)]
fn moments_tile<S: Simd, const T: usize, const U: usize, const N: usize>(
    s: S,
    x: &[f32],
    block: &Block<'_>,
    col: usize,
    last: usize,
    st: &mut GroupStats<N>,
    f: BlockMerge,
    pf: usize,
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
    let mut s1 = [[zero; U]; T];
    let mut s2 = [[zero; U]; T];
    // Rows are dealt to the U accumulators in turn across the whole block. (Helper functions, not
    // closures: a closure would be compiled without the tier's features.)
    let mut u = 0;
    if T == 1 && U == 4 && block.stride == l && last == l {
        // Rows one full vector wide and adjacent (channel blocks, packed narrow rows): each run is one
        // contiguous slice, walked four rows at a time without per-row slicing.
        for &(start, count) in block.runs {
            let run = &x[start + col..start + col + count * l];
            let mut r = 0;
            while u != 0 && r < count {
                add_row::<S, T, U>(s, &run[r * l..(r + 1) * l], last, &k, &mut s1, &mut s2, u, pf);
                u = (u + 1) % U;
                r += 1;
            }
            let quads = run[r * l..].chunks_exact(4 * l);
            r += quads.len() * 4;
            for q in quads {
                for uu in 0..4 {
                    if pf > 0 && (uu * l) % LINE == 0 {
                        s.prefetch_ahead(&q[uu * l..], pf);
                    }
                    let d = s.sub(s.load(&q[uu * l..]), k[0]);
                    s1[0][uu] = s.add(s1[0][uu], d);
                    s2[0][uu] = s.mul_add(d, d, s2[0][uu]);
                }
            }
            while r < count {
                add_row::<S, T, U>(s, &run[r * l..(r + 1) * l], last, &k, &mut s1, &mut s2, u, pf);
                u = (u + 1) % U;
                r += 1;
            }
        }
    } else {
        moments_rows::<S, T, U>(s, x, block, col, last, &k, &mut s1, &mut s2, pf);
    }
    for j in 0..T {
        let (a1, a2) = (sum_tree(s, &s1[j]), sum_tree(s, &s2[j]));
        let c = col + j * l;
        let m2 = s.load(&st.cm2[c..]);
        let (mn, m2n) = merge(s, k[j], k0[j], m[j], m2, a1, a2, f);
        s.store(&mut st.cm[c..], mn);
        s.store(&mut st.cm2[c..], m2n);
    }
}

/// The rows of `block` at column `col` into the `U` accumulators of each of the `T` vectors (rows dealt
/// out in turn across the whole block): the general case of [`moments_tile`].
#[allow(clippy::too_many_arguments)]
#[inline(always)]
fn moments_rows<S: Simd, const T: usize, const U: usize>(
    s: S,
    x: &[f32],
    block: &Block<'_>,
    col: usize,
    last: usize,
    k: &[S::V; T],
    s1: &mut [[S::V; U]; T],
    s2: &mut [[S::V; U]; T],
    pf: usize,
) {
    let l = S::LANES;
    let mut u = 0;
    let tile = (T - 1) * l + last;
    for &(start, count) in block.runs {
        let mut at = start + col;
        let mut r = 0;
        if U > 1 {
            while u != 0 && r < count {
                add_row::<S, T, U>(s, &x[at..at + tile], last, k, s1, s2, u, pf);
                u = (u + 1) % U;
                at += block.stride;
                r += 1;
            }
            while r + U <= count {
                for uu in 0..U {
                    add_row::<S, T, U>(s, &x[at..at + tile], last, k, s1, s2, uu, pf);
                    at += block.stride;
                }
                r += U;
            }
        }
        while r < count {
            add_row::<S, T, U>(s, &x[at..at + tile], last, k, s1, s2, u, pf);
            u = (u + 1) % U;
            at += block.stride;
            r += 1;
        }
    }
}

/// Adds one row's tile `row` (`T` vectors, the last with `last` lanes) into accumulator `u`, and
/// prefetches the lines `pf` floats ahead.
#[allow(clippy::too_many_arguments)]
#[inline(always)]
fn add_row<S: Simd, const T: usize, const U: usize>(
    s: S,
    row: &[f32],
    last: usize,
    k: &[S::V; T],
    s1: &mut [[S::V; U]; T],
    s2: &mut [[S::V; U]; T],
    u: usize,
    pf: usize,
) {
    let l = S::LANES;
    for j in 0..T {
        let a = j * l;
        let v = if j + 1 == T && last < l {
            // Lanes past the row are filled with the shift, so they add exactly 0.
            s.load_part(&row[a..], k[j])
        } else {
            s.load(&row[a..])
        };
        if pf > 0 && (j * l) % LINE == 0 {
            s.prefetch_ahead(&row[a..], pf);
        }
        let d = s.sub(v, k[j]);
        s1[j][u] = s.add(s1[j][u], d);
        s2[j][u] = s.mul_add(d, d, s2[j][u]);
    }
}

/// Adds 1, 2 or 4 accumulators in a fixed tree.
#[inline(always)]
fn sum_tree<S: Simd, const U: usize>(s: S, a: &[S::V; U]) -> S::V {
    match U {
        1 => a[0],
        2 => s.add(a[0], a[1]),
        _ => {
            let mut t = s.add(a[0], a[1]);
            let mut i = 2;
            while i + 1 < U {
                t = s.add(t, s.add(a[i], a[i + 1]));
                i += 2;
            }
            t
        }
    }
}

/// Statistics of rows of `width` contiguous channels (`rows.inner_stride == width`) whose first `valid`
/// lanes are real, written to `mean`/`lo`/`var` (`valid` long; see [`Summary::finish_split`]).
///
/// When `width` divides the vector width, consecutive rows are packed into full vectors (lane `i` holds
/// channel `i % width`), the rows that do not fill a vector are accumulated apart, and the lanes of each
/// channel are merged at the end: narrow blocks use every lane.
#[inline(always)]
pub(crate) fn contiguous_moments<S: Simd, const N: usize>(
    s: S,
    x: &[f32],
    rows: &Rows,
    valid: usize,
    mean: &mut [f32],
    lo: &mut [f32],
    var: &mut [f32],
) {
    let l = S::LANES;
    let w = rows.width;
    let mut st = GroupStats::<N>::new();
    if w >= l || l % w != 0 || rows.inner_stride != w {
        rows_moments(s, x, rows, &mut st);
        st.close(s, w);
        for j in 0..valid {
            (mean[j], lo[j], var[j]) = st.lane(j).finish_split();
        }
        return;
    }
    let per = l / w; // rows per packed vector
    let full = rows.inner / per;
    let packed = Rows { inner: full, inner_stride: l, width: l, ..*rows };
    if full > 0 {
        rows_moments(s, x, &packed, &mut st);
        st.close(s, l);
    }
    let mut tail = GroupStats::<N>::new();
    let tail_rows = Rows { base: rows.base + full * l, inner: rows.inner - full * per, ..*rows };
    if tail_rows.inner > 0 {
        rows_moments(s, x, &tail_rows, &mut tail);
        tail.close(s, w);
    }
    for j in 0..valid {
        // A fixed tree over the lanes of channel j, then the leftover rows.
        let mut lanes = [Summary::EMPTY; 16];
        let n = if full > 0 { per } else { 0 };
        for (q, lane) in lanes.iter_mut().enumerate().take(n) {
            *lane = st.lane(q * w + j);
        }
        let mut width = n;
        while width > 1 {
            for q in 0..width / 2 {
                lanes[q] = lanes[2 * q].merge(lanes[2 * q + 1]);
            }
            width /= 2;
        }
        let total = if tail_rows.inner > 0 { lanes[0].merge(tail.lane(j)) } else { lanes[0] };
        (mean[j], lo[j], var[j]) = total.finish_split();
    }
}

/// Statistics of one NCHW channel, fed plane by plane: blocks of about `64·LANES` values span planes,
/// so small planes (7×7) share one horizontal reduction and merge.
pub(crate) struct PlaneStats<S: Simd> {
    k0: f32,
    chunk: (f32, f32, usize),
    cblocks: usize,
    total: (f32, f32, usize),
    /// The current block: shift, four accumulators per sum, and values in it.
    k: f32,
    kv: S::V,
    a1: [S::V; 4],
    a2: [S::V; 4],
    pending: usize,
    /// Software prefetch distance in floats (0: none).
    pf: usize,
}

impl<S: Simd> PlaneStats<S> {
    /// Values per block: 16 vector steps into each of the four accumulators, on every tier (longer chains
    /// of additions let the rounding of structured data — long constant runs — add up).
    const BLOCK: usize = 64 * S::LANES;

    /// Empty statistics whose shift is the mean of the channel's first block — the first
    /// `min(BLOCK, planes·plane)` values in the order [`add_plane`](Self::add_plane) will consume them, which
    /// span planes when they are small (see `rows_moments` and `shift_vector`: exact whenever the scaled sum
    /// is) — for the channel whose planes of `plane` floats start at `x[at + i·stride]`, `i < planes`, in the
    /// tensor `x`. A shift from the first plane alone would sit wherever that plane happens to
    /// be: a 7×7 plane unlike the rest of the batch left `s2 − s1²/b` to cancel by a factor of up to N.
    #[inline(always)]
    pub(crate) fn new(s: S, x: &[f32], at: usize, stride: usize, planes: usize, plane: usize) -> Self {
        let zero = s.splat(0.0);
        let head = (planes * plane).min(Self::BLOCK);
        let k = if head > 0 { x[at] } else { 0.0 };
        let mut a1 = [zero; 4];
        let p = pow2_below_inv(head);
        let (kv, pv) = (s.splat(k), s.splat(p));
        let (mut left, mut i) = (head, 0);
        while left > 0 {
            let take = left.min(plane);
            let from = at + i * stride;
            // Σ((x − k)·p): overflows only where two values differ by more than f32::MAX.
            accumulate_scaled(s, &x[from..from + take], kv, pv, &mut a1);
            left -= take;
            i += 1;
        }
        let k0 = k + s.hsum(sum_tree(s, &a1)) / (head.max(1) as f32 * p);
        PlaneStats {
            k0,
            chunk: (0.0, 0.0, 0),
            cblocks: 0,
            total: (0.0, 0.0, 0),
            k: k0,
            kv: s.splat(k0),
            a1: [zero; 4],
            a2: [zero; 4],
            pending: 0,
            pf: if prefetch_limit(x.len()) == 0 { 0 } else { PF_MIN },
        }
    }

    /// Adds the contiguous values of `plane`.
    #[inline(always)]
    pub(crate) fn add_plane(&mut self, s: S, plane: &[f32]) {
        let mut rest = plane;
        while !rest.is_empty() {
            let take = rest.len().min(Self::BLOCK - self.pending);
            accumulate(s, &rest[..take], self.kv, &mut self.a1, &mut self.a2, self.pf);
            self.pending += take;
            rest = &rest[take..];
            if self.pending == Self::BLOCK {
                self.end_block(s);
            }
        }
    }

    /// Merges the current block into the chunk, and a full chunk into the total.
    #[inline(always)]
    fn end_block(&mut self, s: S) {
        if self.pending == 0 {
            return;
        }
        let zero = s.splat(0.0);
        let s1 = s.hsum(sum_tree(s, &self.a1));
        let s2 = s.hsum(sum_tree(s, &self.a2));
        let (m, m2, n) = self.chunk;
        let (m, m2) = merge(Scalar, self.k, self.k0, m, m2, s1, s2, BlockMerge::new(n, self.pending));
        self.chunk = (m, m2, n + self.pending);
        self.pending = 0;
        self.a1 = [zero; 4];
        self.a2 = [zero; 4];
        self.cblocks += 1;
        if self.cblocks == CHUNK_BLOCKS {
            self.flush();
        }
        self.k = self.k0 + if self.chunk.2 == 0 { self.total.0 } else { self.chunk.0 };
        self.kv = s.splat(self.k);
    }

    fn flush(&mut self) {
        if self.chunk.2 > 0 {
            let (m, m2) = merge_state(Scalar, self.total, self.chunk);
            self.total = (m, m2, self.total.2 + self.chunk.2);
            self.chunk = (0.0, 0.0, 0);
            self.cblocks = 0;
        }
    }

    /// `(mean, lo, population variance)` (see [`Summary::finish_split`]).
    #[inline(always)]
    pub(crate) fn finish(&mut self, s: S) -> (f32, f32, f32) {
        self.end_block(s);
        self.flush();
        Summary { k0: self.k0, m: self.total.0, m2: self.total.1, count: self.total.2 }.finish_split()
    }
}

/// Adds `Σ(x − k)·inv` of `p` into four accumulators.
#[inline(always)]
fn accumulate_scaled<S: Simd>(s: S, p: &[f32], kv: S::V, inv: S::V, a1: &mut [S::V; 4]) {
    let mut vecs = p.chunks_exact(S::LANES);
    for (i, ch) in (&mut vecs).enumerate() {
        a1[i % 4] = s.mul_add(s.sub(s.load(ch), kv), inv, a1[i % 4]);
    }
    let tail = vecs.remainder();
    if !tail.is_empty() {
        a1[3] = s.mul_add(s.sub(s.load_part(tail, kv), kv), inv, a1[3]);
    }
}

/// Adds `Σ(x − k)` and `Σ(x − k)²` of `p` into four accumulators each, prefetching `pf` floats ahead
/// (none for 0).
#[inline(always)]
fn accumulate<S: Simd>(s: S, p: &[f32], kv: S::V, a1: &mut [S::V; 4], a2: &mut [S::V; 4], pf: usize) {
    let l = S::LANES;
    let mut chunks = p.chunks_exact(4 * l);
    for ch in &mut chunks {
        for u in 0..4 {
            if pf > 0 && (u * l) % LINE == 0 {
                s.prefetch_ahead(&ch[u * l..], pf);
            }
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
        // Lanes past the data hold the shift and add exactly 0.
        let d = s.sub(s.load_part(tail, kv), kv);
        a1[3] = s.add(a1[3], d);
        a2[3] = s.mul_add(d, d, a2[3]);
    }
}
