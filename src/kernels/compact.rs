#![forbid(unsafe_code)]
//! The scalar tier's passes on targets without SIMD (Cortex-M, RISC-V without vectors: `Simd::COMPACT`):
//! the normalise-affine pass and the statistics pass (`moments`, below), plain loops over each layout's
//! natural order, one channel's (or four adjacent channels') parameters or state in registers at a time;
//! their innermost loops are `crate::arch::compact`'s. On cached CPUs the scalar tier keeps the vector runs, whose address order and
//! non-temporal stores matter even at one lane.
//!
//! The vector tiers cut every layout into runs with blended segment boundaries, periodic parameter
//! buffers and unrolled bodies ([`super::normalize`]): right for wide registers, but on a one-lane tier
//! that machinery is all cost — hundreds of KB of code on a Cortex-M, and kilobytes of stack for the
//! parameter buffers. Here each (batch index, channel) is a strided walk with its three parameters in
//! registers: NCHW planes are contiguous, a channel of a block plane or of channels-last rows is every
//! `b`-th or `C`-th element. Each element is `(x − m)·scale + shift` with the scalar tier's unfused
//! multiply-add, the same operations as the vector pass, so the results are the same bits.

use super::normalize::{overflowed_output, reduced_scale};
use super::ops::{ParamSrc, shift_past_mean_one};
use super::stats::{self, CHUNK_BLOCKS, Summary};
use super::{Epi, Io};
use crate::arch::Simd;
use crate::arch::scalar::Scalar;
use crate::layout::{Layout, TensorDesc};
use crate::partial::Partial;

/// What the pass does to one channel's elements.
#[derive(Clone, Copy)]
enum Channel {
    /// `(x − m)·scale + shift`.
    Plain { m: f32, scale: f32, shift: f32 },
    /// A scale γ/√(var + ε) that overflows f32: `((x − m)·s·2⁶⁴)·2⁶⁴ + shift` with `s` the reduced
    /// scale, as the vector tiers' fix-up computes it.
    Overflowed { m: f32, reduced: f32, shift: f32 },
}

impl Channel {
    /// Channel `c`'s parameters, computed as the vector tiers compute theirs (`fill_scale`: γ times the
    /// correctly rounded 1/√(var + ε), 0 where var + ε = 0).
    #[inline(always)]
    fn of(src: &ParamSrc<'_>, c: usize) -> Channel {
        match *src {
            ParamSrc::Stats { mean, lo: Some(lo), var, gamma, beta, eps } => {
                Channel::train((gamma, beta, eps), c, mean[c], lo[c], var[c])
            }
            // Never reached: partial statistics come through `normalize_partials` (`Call::NormalizePartials`),
            // which keeps their f64 finish (soft-float division on Cortex-M: 3 KB) out of the flash of
            // every other normalising call.
            ParamSrc::Partials { .. } => {
                debug_assert!(false, "partials reach the compact pass through normalize_partials");
                Channel::Plain { m: f32::NAN, scale: f32::NAN, shift: f32::NAN }
            }
            ParamSrc::Stats { mean, lo: None, var, gamma, beta, eps } => {
                let g = gamma.map_or(1.0, |g| g[c]);
                let scale = g * Scalar.inv_sqrt_or_zero(var[c] + eps);
                let (m, shift) = (mean[c], beta.map_or(0.0, |b| b[c]));
                if scale.is_infinite() {
                    Channel::Overflowed { m, reduced: reduced_scale(var[c], g, eps), shift }
                } else {
                    Channel::Plain { m, scale, shift }
                }
            }
            // `x − 0` is `x` exactly (−0 and NaN included), so the centred form is the plain affine map.
            ParamSrc::Affine { scale, shift } => Channel::Plain { m: 0.0, scale: scale[c], shift: shift[c] },
        }
    }

    /// Training's parameters of channel `c` from the statistics just computed, the mean as `m + lo`
    /// (see `ops::shift_past_mean`).
    #[inline(always)]
    fn train(aff: (Option<&[f32]>, Option<&[f32]>, f32), c: usize, m: f32, lo: f32, var: f32) -> Channel {
        let (gamma, beta, eps) = aff;
        let g = gamma.map_or(1.0, |g| g[c]);
        let scale = g * Scalar.inv_sqrt_or_zero(var + eps);
        let shift = beta.map_or(0.0, |b| b[c]);
        if scale.is_infinite() {
            Channel::Overflowed { m, reduced: reduced_scale(var, g, eps), shift }
        } else {
            Channel::Plain { m, scale, shift: shift_past_mean_one(shift, lo, scale) }
        }
    }

    /// Elements `at, at + step, …` (`count` of them), then the epilogue `e` over them.
    #[inline(always)]
    fn apply<I: Io>(self, io: &mut I, at: usize, step: usize, count: usize, e: &Epi<'_>) {
        match self {
            Channel::Plain { m, scale, shift } => io.affine_strided(at, step, count, [m, scale, shift]),
            Channel::Overflowed { m, reduced, shift } => {
                io.map_strided(at, step, count, |x| overflowed_output(x, m, reduced, shift))
            }
        }
        if e.is_some() {
            io.finish_strided(at, step, count, e);
        }
    }
}

/// Channels `c0..c0 + real` at `count` positions `step` apart, the first position at `base`; a position
/// holds `width` channels, `real` of them real and the rest padding (set to +0.0). Groups of four channels with plain parameters go through
/// [`Io::affine_groups4`] (contiguous quadruples, the twelve parameters in registers); the rest — fewer
/// than four left, an overflowed scale among them, padding — channel by channel. Not inlined: the
/// normalise pass and training share one copy per buffer kind (flash matters on these targets).
#[allow(clippy::too_many_arguments)]
#[inline(never)]
fn channel_groups<I: Io>(
    io: &mut I,
    of: &dyn Fn(usize) -> Channel,
    c0: usize,
    real: usize,
    width: usize,
    step: usize,
    count: usize,
    base: usize,
    e: &Epi<'_>,
) {
    let mut j = 0;
    while j + 4 <= real {
        let q = [0, 1, 2, 3].map(|k| of(c0 + j + k));
        if let [
            Channel::Plain { m: m0, scale: s0, shift: t0 },
            Channel::Plain { m: m1, scale: s1, shift: t1 },
            Channel::Plain { m: m2, scale: s2, shift: t2 },
            Channel::Plain { m: m3, scale: s3, shift: t3 },
        ] = q
        {
            let p = [[m0, m1, m2, m3], [s0, s1, s2, s3], [t0, t1, t2, t3]];
            io.affine_groups4(base + j, step, count, p);
            if e.is_some() {
                for k in 0..4 {
                    io.finish_strided(base + j + k, step, count, e);
                }
            }
        } else {
            for (k, p) in q.into_iter().enumerate() {
                p.apply(io, base + j + k, step, count, e);
            }
        }
        j += 4;
    }
    while j < real {
        of(c0 + j).apply(io, base + j, step, count, e);
        j += 1;
    }
    while j < width {
        io.map_strided(base + j, step, count, |_| 0.0);
        j += 1;
    }
}

/// `y = (x − m)·scale + shift` over the whole tensor (padding lanes of blocked layouts become +0.0).
pub(crate) fn normalize<I: Io>(desc: &TensorDesc, io: &mut I, src: ParamSrc<'_>, e: &Epi<'_>) {
    normalize_by(desc, io, &|ch| Channel::of(&src, ch), e)
}

/// [`normalize`] with merged partial statistics (`forward_from_partials`): each channel's finished mean
/// pair and variance, centred as training centres them.
pub(crate) fn normalize_partials<I: Io>(
    desc: &TensorDesc,
    io: &mut I,
    (partials, gamma, beta, eps): super::ops::PartialsSrc<'_>,
    e: &Epi<'_>,
) {
    let of = |ch: usize| {
        let (m, lo, var) = partials[ch].finish_one();
        Channel::train((gamma, beta, eps), ch, m, lo, var)
    };
    normalize_by(desc, io, &of, e)
}

/// The pass over the whole tensor with channel `ch`'s parameters `of(ch)`.
fn normalize_by<I: Io>(desc: &TensorDesc, io: &mut I, of: &dyn Fn(usize) -> Channel, e: &Epi<'_>) {
    let sh = desc.shape();
    let (n, c, s) = (sh.n, sh.c, sh.spatial);
    // One channel at a time: its parameters (a square root and a division) once, then all its elements.
    match desc.layout() {
        Layout::Nchw => {
            for ch in 0..c {
                let p = of(ch);
                for b in 0..n {
                    p.apply(io, (b * c + ch) * s, 1, s, e);
                }
            }
        }
        Layout::Nhwc => channel_groups(io, of, 0, c, c, c, n * s, 0, e),
        Layout::Blocked { block } => {
            let blocks = c.div_ceil(block);
            for cb in 0..blocks {
                for b in 0..n {
                    let at = (b * blocks + cb) * s * block;
                    let real = (c - cb * block).min(block);
                    channel_groups(io, of, cb * block, real, block, block, s, at, e);
                }
            }
        }
    }
}

/// Statistics of a group of `G` adjacent channels (1 or 4) whose positions lie `step` apart in runs: run
/// `r < runs` holds `len` positions starting at `first + r·run_step`. A channel's values, taken in
/// (batch, spatial) order, are the same sequence in every layout.
#[derive(Clone, Copy)]
struct Walk {
    first: usize,
    runs: usize,
    run_step: usize,
    len: usize,
    step: usize,
}

impl Walk {
    /// NCHW channel `ch` of an `n × c × s` tensor: its `n` planes.
    fn plane(n: usize, c: usize, s: usize, ch: usize) -> Walk {
        Walk { first: ch * s, runs: n, run_step: c * s, len: s, step: 1 }
    }

    /// Channels-last channel `ch`: one run of the `rows` positions, `c` apart.
    fn rows(rows: usize, c: usize, ch: usize) -> Walk {
        Walk { first: ch, runs: 1, run_step: 0, len: rows, step: c }
    }

    /// The first channel of block `cb` (of `blocks` of `block` channels): one run per sample of `s`
    /// positions, `block` apart.
    fn block(n: usize, s: usize, block: usize, blocks: usize, cb: usize) -> Walk {
        Walk { first: cb * s * block, runs: n, run_step: blocks * s * block, len: s, step: block }
    }
}

/// A block's sums `Σ(x − k)` and `Σ(x − k)²`, per chain and channel.
type Sums<const G: usize, const R: usize> = ([[f32; G]; R], [[f32; G]; R]);

/// The statistics pass's state for `G` channels, with `R` accumulator chains per channel (rows dealt
/// out in turn): blocks of `16·R` values — 16 additions per chain, as in the vector tiers — merged with
/// Chan's formula into a chunk, chunks of [`CHUNK_BLOCKS`] blocks into the total; the same shifted sums
/// and merges (`kernels::stats`), in plain f32 with the target's [`Weight`](stats::Weight)s. About
/// a hundred bytes, whatever the tensor.
struct GroupAcc<const G: usize, const R: usize> {
    /// Shift: the mean of the channel's first block.
    k0: [f32; G],
    /// The current block's shift, `k0` plus the running mean.
    k: [f32; G],
    a1: [[f32; G]; R],
    a2: [[f32; G]; R],
    /// Values per channel in the current block.
    pending: usize,
    chunk: [(f32, f32); G],
    cn: usize,
    cblocks: usize,
    total: [(f32, f32); G],
    tn: usize,
}

impl<const G: usize, const R: usize> GroupAcc<G, R> {
    const BLOCK: usize = 16 * R;

    /// Empty statistics whose shift is the mean of each channel's first `min(BLOCK, N·S)` values,
    /// formed as the vector tiers form it (`stats::shift_vector`): `k + Σ((x − k)·p) / (b·p)` with `k`
    /// the first value and `p` a power of two, exact whenever the scaled sum is.
    #[inline(always)]
    fn new(x: &[f32], w: &Walk) -> Self {
        let head = (w.runs * w.len).min(Self::BLOCK);
        let mut k = [0.0; G];
        k.copy_from_slice(&x[w.first..w.first + G]);
        let p = stats::pow2_below_inv(head);
        let mut sum = [0.0f32; G];
        let (mut left, mut r) = (head, 0);
        while left > 0 {
            let take = left.min(w.len);
            let run = &x[w.first + r * w.run_step..][..(take - 1) * w.step + G];
            for pos in run.chunks(w.step) {
                if let Some(v) = pos.first_chunk::<G>() {
                    for c in 0..G {
                        sum[c] = Scalar.mul_add(v[c] - k[c], p, sum[c]);
                    }
                }
            }
            left -= take;
            r += 1;
        }
        let bp = head as f32 * p;
        let k0 = core::array::from_fn(|c| k[c] + sum[c] / bp);
        GroupAcc {
            k0,
            k: k0,
            a1: [[0.0; G]; R],
            a2: [[0.0; G]; R],
            pending: 0,
            chunk: [(0.0, 0.0); G],
            cn: 0,
            cblocks: 0,
            total: [(0.0, 0.0); G],
            tn: 0,
        }
    }

    /// Adds one position's `G` values to chain `u` of the block's sums `a` (locals, not fields: they stay
    /// in registers through the loop).
    #[inline(always)]
    fn row(k: &[f32; G], a: &mut Sums<G, R>, u: usize, v: &[f32; G]) {
        for c in 0..G {
            let d = v[c] - k[c];
            a.0[u][c] += d;
            a.1[u][c] = Scalar.mul_add(d, d, a.1[u][c]);
        }
    }

    /// Adds the `count` positions `step` apart from `at`.
    #[inline(always)]
    fn add_run(&mut self, x: &[f32], at: usize, step: usize, count: usize) {
        let mut done = 0;
        while done < count {
            let take = (count - done).min(Self::BLOCK - self.pending);
            // One bounds check per block; the positions below are within it.
            let run = &x[at + done * step..][..(take - 1) * step + G];
            let (k, mut a) = (self.k, (self.a1, self.a2));
            // Rows in groups of `R`, row `r` of a group into chain `r`, through the assembly loop
            // where there is one; then the rows left over (fewer than `R`) into chain 0.
            let mut r = crate::arch::compact::sums::<G, R>(run, step, take, &k, &mut a);
            while r + R <= take {
                for u in 0..R {
                    if let Some(v) = run[(r + u) * step..].first_chunk::<G>() {
                        Self::row(&k, &mut a, u, v);
                    }
                }
                r += R;
            }
            while r < take {
                if let Some(v) = run[r * step..].first_chunk::<G>() {
                    Self::row(&k, &mut a, 0, v);
                }
                r += 1;
            }
            (self.a1, self.a2) = a;
            self.pending += take;
            done += take;
            if self.pending == Self::BLOCK {
                self.end_block();
            }
        }
    }

    /// Merges the current block into the chunk, a full chunk into the total, and moves the shift to the
    /// running mean.
    #[inline(always)]
    fn end_block(&mut self) {
        if self.pending == 0 {
            return;
        }
        let f = stats::BlockMerge::new(self.cn, self.pending);
        for c in 0..G {
            let (mut s1, mut s2) = (0.0, 0.0);
            for u in 0..R {
                s1 += self.a1[u][c];
                s2 += self.a2[u][c];
                (self.a1[u][c], self.a2[u][c]) = (0.0, 0.0);
            }
            let (m, m2) = self.chunk[c];
            self.chunk[c] = stats::merge(Scalar, self.k[c], self.k0[c], m, m2, s1, s2, f);
        }
        self.cn += self.pending;
        self.pending = 0;
        self.cblocks += 1;
        if self.cblocks == CHUNK_BLOCKS {
            self.flush();
        }
        for c in 0..G {
            self.k[c] = self.k0[c] + if self.cn == 0 { self.total[c].0 } else { self.chunk[c].0 };
        }
    }

    /// Merges the chunk into the total.
    #[inline(always)]
    fn flush(&mut self) {
        if self.cn == 0 {
            return;
        }
        for c in 0..G {
            let (tm, tm2) = self.total[c];
            let (cm, cm2) = self.chunk[c];
            self.total[c] = stats::merge_state(Scalar, (tm, tm2, self.tn), (cm, cm2, self.cn));
            self.chunk[c] = (0.0, 0.0);
        }
        self.tn += self.cn;
        self.cn = 0;
        self.cblocks = 0;
    }

    /// The statistics of the `G` channels of `w`: `(mean, lo, population variance)` each (see
    /// `Summary::finish_split`).
    #[inline(always)]
    fn of(x: &[f32], w: &Walk) -> [(f32, f32, f32); G] {
        let mut acc = Self::new(x, w);
        for r in 0..w.runs {
            acc.add_run(x, w.first + r * w.run_step, w.step, w.len);
        }
        acc.end_block();
        acc.flush();
        core::array::from_fn(|c| {
            let (m, m2) = acc.total[c];
            Summary { k0: acc.k0[c], m, m2, count: acc.tn }.finish_split()
        })
    }
}

/// One channel's `(mean, lo, population variance)` (see `Summary::finish_split`).
#[inline(never)]
fn channel_stats(x: &[f32], w: &Walk) -> (f32, f32, f32) {
    let [st] = GroupAcc::<1, 4>::of(x, w);
    st
}

/// Channels `c0..c0 + real` whose walks start at `w.first`, `w.first + 1`, …: four at a time, then
/// one by one; `lo[j]` is channel `c0 + j`'s (see `Summary::finish_split`), where `lo` is that long.
/// Not inlined, like [`channel_stats`]: `moments` and both trainings (out of place and in place) share
/// one copy of the statistics loops (inlined in each, they doubled the flash of a firmware calling
/// every operation on the Cortex-M4F, 43 → 87 KB).
#[inline(never)]
fn moments_of_groups(
    x: &[f32],
    c0: usize,
    real: usize,
    w: Walk,
    mean: &mut [f32],
    var: &mut [f32],
    lo: &mut [f32],
) {
    let mut j = 0;
    while j + 4 <= real {
        let stats = GroupAcc::<4, 2>::of(x, &Walk { first: w.first + j, ..w });
        for (q, (m, l, v)) in stats.into_iter().enumerate() {
            (mean[c0 + j + q], var[c0 + j + q]) = (m, v);
            if let Some(o) = lo.get_mut(j + q) {
                *o = l;
            }
        }
        j += 4;
    }
    while j < real {
        let (m, l, v) = channel_stats(x, &Walk { first: w.first + j, ..w });
        (mean[c0 + j], var[c0 + j]) = (m, v);
        if let Some(o) = lo.get_mut(j) {
            *o = l;
        }
        j += 1;
    }
}

/// Per-channel mean and population variance in one read pass, in each layout's natural order: an NCHW
/// channel's planes one after the other, channels-last and blocked channels four at a time along the
/// rows (contiguous quadruples, their state in registers). The stack holds one group's state, whatever
/// the tensor.
pub(crate) fn moments(desc: &TensorDesc, x: &[f32], mean: &mut [f32], var: &mut [f32]) {
    let sh = desc.shape();
    let (n, c, s) = (sh.n, sh.c, sh.spatial);
    match desc.layout() {
        Layout::Nchw => {
            for ch in 0..c {
                let (m, _, v) = channel_stats(x, &Walk::plane(n, c, s, ch));
                (mean[ch], var[ch]) = (m, v);
            }
        }
        Layout::Nhwc => {
            moments_of_groups(x, 0, c, Walk::rows(n * s, c, 0), mean, var, &mut []);
        }
        Layout::Blocked { block } => {
            let blocks = c.div_ceil(block);
            for cb in 0..blocks {
                let real = (c - cb * block).min(block);
                let w = Walk::block(n, s, block, blocks, cb);
                moments_of_groups(x, cb * block, real, w, mean, var, &mut []);
            }
        }
    }
}

/// Partial statistics (see `ops::partials_op`): the walks of [`moments`] (so the same bits), sixteen
/// channels at a time through stack scratch.
pub(crate) fn partials(desc: &TensorDesc, x: &[f32], out: &mut [Partial]) {
    let sh = desc.shape();
    let (n, c, s) = (sh.n, sh.c, sh.spatial);
    let count = sh.count() as u64;
    match desc.layout() {
        Layout::Nchw => {
            for (ch, o) in out.iter_mut().enumerate().take(c) {
                let (m, l, v) = channel_stats(x, &Walk::plane(n, c, s, ch));
                *o = Partial::from_stats(count, m, l, v);
            }
        }
        Layout::Nhwc => {
            for c0 in (0..c).step_by(16) {
                partials_of_groups(x, count, Walk::rows(n * s, c, c0), &mut out[c0..(c0 + 16).min(c)]);
            }
        }
        Layout::Blocked { block } => {
            let blocks = c.div_ceil(block);
            for cb in 0..blocks {
                let real = (c - cb * block).min(block);
                let w = Walk::block(n, s, block, blocks, cb);
                partials_of_groups(x, count, w, &mut out[cb * block..cb * block + real]);
            }
        }
    }
}

/// [`moments_of_groups`] of the `out.len() ≤ 16` channels whose walks start at `w.first`, … into `out`.
fn partials_of_groups(x: &[f32], count: u64, w: Walk, out: &mut [Partial]) {
    let (mut m, mut l, mut v) = ([0.0f32; 16], [0.0f32; 16], [0.0f32; 16]);
    let k = out.len();
    moments_of_groups(x, 0, k, w, &mut m[..k], &mut v[..k], &mut l[..k]);
    for (j, o) in out.iter_mut().enumerate() {
        *o = Partial::from_stats(count, m[j], l[j], v[j]);
    }
}

/// Training: each group's statistics (the walks of [`moments`], so the same bits), then that group's
/// normalise pass with the mean as `m + lo` — an NCHW channel, four adjacent channels-last channels (or
/// one), a channel block. The stack holds one group's state, whatever the tensor; every value is read
/// twice, as in two passes over the tensor (the targets of this pass have no cache to keep a group in).
pub(crate) fn training<I: Io>(
    desc: &TensorDesc,
    io: &mut I,
    aff: (Option<&[f32]>, Option<&[f32]>, f32),
    mean: &mut [f32],
    var: &mut [f32],
    e: &Epi<'_>,
) {
    let sh = desc.shape();
    let (n, c, s) = (sh.n, sh.c, sh.spatial);
    match desc.layout() {
        Layout::Nchw => {
            for ch in 0..c {
                let (m, lo, v) = channel_stats(io.input(), &Walk::plane(n, c, s, ch));
                (mean[ch], var[ch]) = (m, v);
                let p = Channel::train(aff, ch, m, lo, v);
                for b in 0..n {
                    p.apply(io, (b * c + ch) * s, 1, s, e);
                }
            }
        }
        Layout::Nhwc => {
            let mut j = 0;
            while j < c {
                let k = if j + 4 <= c { 4 } else { 1 };
                let mut lo = [0.0f32; 4];
                moments_of_groups(io.input(), j, k, Walk::rows(n * s, c, j), mean, var, &mut lo);
                let (m, v) = (&*mean, &*var);
                let of = |ch: usize| Channel::train(aff, ch, m[ch], lo[ch - j], v[ch]);
                channel_groups(io, &of, j, k, k, c, n * s, j, e);
                j += k;
            }
        }
        Layout::Blocked { block } => {
            let blocks = c.div_ceil(block);
            for cb in 0..blocks {
                let real = (c - cb * block).min(block);
                let w = Walk::block(n, s, block, blocks, cb);
                let mut lo = [0.0f32; 16];
                moments_of_groups(io.input(), cb * block, real, w, mean, var, &mut lo);
                let (m, v, c0) = (&*mean, &*var, cb * block);
                let of = |ch: usize| Channel::train(aff, ch, m[ch], lo[ch - c0], v[ch]);
                for b in 0..n {
                    channel_groups(io, &of, c0, real, block, block, s, (b * blocks + cb) * s * block, e);
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    //! The compact pass against the vector runs of the same tier (which the scalar tier takes on targets
    //! with SIMD, such as the host), bit for bit: every layout, padding, channel groups of four and their
    //! remainders, overflowed and zero scales, `channel_affine`, in place and not.
    use super::*;
    use crate::kernels::ops::{finish_all, may_overflow, normalize_op};
    use crate::kernels::{AddRelu, Floor, Plain};
    use crate::kernels::{InPlace, Split};
    use crate::layout::Shape;

    fn values(len: usize, seed: usize) -> Vec<f32> {
        (0..len)
            .map(|i| 40.0 + (((i + seed) * 7919) % 1013) as f32 / 37.0 - ((i + seed) % 3) as f32 * 25.0)
            .collect()
    }

    #[test]
    #[cfg_attr(
        miri,
        ignore = "safe code over safe code on the host (the compact loops' unsafe is Cortex-M assembly, which miri does not run)"
    )]
    fn same_bits_as_the_vector_pass() {
        let shapes =
            [(2, 5, 7), (1, 16, 9), (3, 3, 1), (2, 37, 13), (1, 1, 5), (4, 6, 2), (2, 19, 49), (1, 300, 3)];
        let layouts = [
            Layout::Nchw,
            Layout::Nhwc,
            Layout::Blocked { block: 4 },
            Layout::Blocked { block: 8 },
            Layout::Blocked { block: 16 },
        ];
        for (n, c, s) in shapes {
            for layout in layouts {
                let d = TensorDesc::new(Shape::new(n, c, s), layout).unwrap();
                let x = values(d.len(), c + s);
                let mean = values(c, 1);
                // Channel 0: var + ε = 0 (scale 0); channel 1 with γ = 1e36: an overflowed scale.
                let var: Vec<f32> = (0..c).map(|j| if j == 0 { 0.0 } else { 0.5 + j as f32 }).collect();
                let gamma: Vec<f32> =
                    (0..c).map(|j| if j == 1 { 1e36 } else { 0.25 + j as f32 * 0.5 }).collect();
                let beta = values(c, 2);
                let srcs = [
                    ParamSrc::Stats {
                        lo: None,
                        mean: &mean,
                        var: &var,
                        gamma: Some(&gamma),
                        beta: Some(&beta),
                        eps: 0.0,
                    },
                    ParamSrc::Stats { mean: &mean, lo: None, var: &var, gamma: None, beta: None, eps: 1e-3 },
                    ParamSrc::Affine { scale: &gamma, shift: &beta },
                ];
                // A residual with values in the padding too (they must not reach the output).
                let z: Vec<f32> = values(d.len(), 5).iter().map(|v| v - 40.0).collect();
                let epis = [Epi::NONE, Epi { relu: true, z: None }, Epi { relu: true, z: Some(&z) }];
                for (k, src) in srcs.into_iter().enumerate() {
                    for e in &epis {
                        let (mut want, mut got) = (vec![f32::NAN; d.len()], vec![f32::NAN; d.len()]);
                        // The vector pass as `crate::arch::run` runs it: scales that may overflow take the
                        // plain pass and then the residual's epilogue.
                        let io = &mut Split { x: &x, y: &mut want };
                        match e.z {
                            Some(z) if !may_overflow(Some(&gamma)) || k == 2 => {
                                normalize_op(Scalar, &d, io, src, true, AddRelu(z), e)
                            }
                            Some(_) => {
                                normalize_op(Scalar, &d, io, src, true, Plain, &Epi::NONE);
                                finish_all(&d, &mut want, e);
                            }
                            None if e.relu => normalize_op(Scalar, &d, io, src, true, Floor(0.0), e),
                            None => normalize_op(Scalar, &d, io, src, true, Plain, e),
                        }
                        normalize(&d, &mut Split { x: &x, y: &mut got }, src, e);
                        let same =
                            |a: &[f32], b: &[f32]| a.iter().zip(b).all(|(p, q)| p.to_bits() == q.to_bits());
                        let what = format!("{n}x{c}x{s} {layout:?} params {k} {e:?}");
                        assert!(same(&want, &got), "{what}: out of place");
                        let mut xy = x.clone();
                        normalize(&d, &mut InPlace { xy: &mut xy }, src, e);
                        assert!(same(&want, &xy), "{what}: in place");
                        if e.is_some() {
                            assert!(want.iter().all(|v| v.is_nan() || *v >= 0.0), "{what}: ReLU");
                        }
                    }
                }
            }
        }
    }

    /// Channel `ch`'s values in (batch, spatial) order, read through the layout's index formula.
    fn channel_values(d: &TensorDesc, x: &[f32], ch: usize) -> Vec<f32> {
        let sh = d.shape();
        let mut out = Vec::new();
        for b in 0..sh.n {
            for s in 0..sh.spatial {
                let i = match d.layout() {
                    Layout::Nchw => (b * sh.c + ch) * sh.spatial + s,
                    Layout::Nhwc => (b * sh.spatial + s) * sh.c + ch,
                    Layout::Blocked { block } => {
                        ((b * sh.c.div_ceil(block) + ch / block) * sh.spatial + s) * block + ch % block
                    }
                };
                out.push(x[i]);
            }
        }
        out
    }

    const LAYOUTS: [Layout; 5] = [
        Layout::Nchw,
        Layout::Nhwc,
        Layout::Blocked { block: 4 },
        Layout::Blocked { block: 8 },
        Layout::Blocked { block: 16 },
    ];

    /// Compact training (statistics and normalise group by group, the mean as `m + lo`) against an f64
    /// oracle at offsets up to 10⁶·σ: each output within `8U·(|γ(x − μ)/σ'| + |β|)` plus the propagated
    /// errors of the statistics' sums (`16U·σ` for the mean, `32U` relative for the variance) — no
    /// `U·|μ|` term, which the f32 mean alone would put there (1e-2 relative at 10⁴·σ). The statistics
    /// written out are [`moments`]' bit for bit; in place equals out of place.
    #[test]
    #[cfg_attr(
        miri,
        ignore = "safe code over safe code on the host (the compact loops' unsafe is Cortex-M assembly, which miri does not run)"
    )]
    fn training_within_bounds_at_any_offset() {
        let u = f64::from(f32::EPSILON) / 2.0;
        let shapes: &[(usize, usize, usize)] = &[(2, 5, 7), (1, 16, 9), (3, 6, 1), (2, 19, 13), (2, 9, 49)];
        for &(n, c, s) in shapes {
            for layout in LAYOUTS {
                for offset in [0.0f32, 1e4, 1e6] {
                    let d = TensorDesc::new(Shape::new(n, c, s), layout).unwrap();
                    let mut x = values(d.len(), c * s + n);
                    for v in &mut x {
                        *v = offset + (*v - 40.0) / 8.0;
                    }
                    let gamma: Vec<f32> = (0..c).map(|j| 0.5 + j as f32 * 0.25).collect();
                    let beta: Vec<f32> = (0..c).map(|j| j as f32 * 0.125 - 0.5).collect();
                    let aff = (Some(&gamma[..]), Some(&beta[..]), 1e-5f32);
                    let (mut mean, mut var) = (vec![f32::NAN; c], vec![f32::NAN; c]);
                    let mut y = vec![f32::NAN; d.len()];
                    training(&d, &mut Split { x: &x, y: &mut y }, aff, &mut mean, &mut var, &Epi::NONE);
                    let (mut m0, mut v0) = (vec![0.0; c], vec![0.0; c]);
                    moments(&d, &x, &mut m0, &mut v0);
                    let bits = |a: &[f32]| a.iter().map(|v| v.to_bits()).collect::<Vec<_>>();
                    assert_eq!((bits(&mean), bits(&var)), (bits(&m0), bits(&v0)), "statistics");
                    let mut xy = x.clone();
                    let (mut m1, mut v1) = (vec![0.0; c], vec![0.0; c]);
                    training(&d, &mut InPlace { xy: &mut xy }, aff, &mut m1, &mut v1, &Epi::NONE);
                    assert_eq!(bits(&xy), bits(&y), "{n}x{c}x{s} {layout:?} offset {offset}: in place");
                    let ys = {
                        let mut all = Vec::new();
                        for ch in 0..c {
                            all.push(channel_values(&d, &y, ch));
                        }
                        all
                    };
                    for ch in 0..c {
                        let v = channel_values(&d, &x, ch);
                        let m = v.iter().map(|&a| f64::from(a)).sum::<f64>() / v.len() as f64;
                        let q = v.iter().map(|&a| (f64::from(a) - m).powi(2)).sum::<f64>() / v.len() as f64;
                        let inv = 1.0 / (q + 1e-5f64).sqrt();
                        let (g, b) = (f64::from(gamma[ch]), f64::from(beta[ch]));
                        for (k, (&xv, &yv)) in v.iter().zip(&ys[ch]).enumerate() {
                            let centred = (f64::from(xv) - m).abs();
                            let want = (f64::from(xv) - m) * inv * g + b;
                            let tol = 8.0 * u * (g * centred * inv + b.abs())
                                + g * inv * (16.0 * u * q.sqrt() + centred * 24.0 * u);
                            let err = (f64::from(yv) - want).abs();
                            assert!(
                                err <= tol,
                                "{n}x{c}x{s} {layout:?} offset {offset} channel {ch} value {k}: {yv} vs {want} \
                                 (err {err:e} > tol {tol:e})"
                            );
                        }
                    }
                }
            }
        }
    }

    /// The compact statistics pass (the scalar tier's on targets without SIMD, tested here on the host)
    /// against an f64 two-pass oracle, within the README's bounds — mean `2U·|μ| + 16U·σ`, variance
    /// `32U` relative — at offsets up to 10⁴·σ; group-of-four channels, single channels, blocks and
    /// chunks (N·S up to 6 000: about three chunks of 32-value blocks).
    #[test]
    #[cfg_attr(
        miri,
        ignore = "safe code over safe code on the host (the compact loops' unsafe is Cortex-M assembly, which miri does not run)"
    )]
    fn moments_within_bounds() {
        let u = f64::from(f32::EPSILON) / 2.0;
        let shapes = [
            (2, 5, 7),
            (1, 16, 9),
            (3, 3, 1),
            (2, 37, 13),
            (1, 1, 5),
            (4, 6, 2),
            (2, 9, 49),
            (3, 6, 2000),
            (1, 300, 3),
        ];
        for (n, c, s) in shapes {
            for layout in LAYOUTS {
                for offset in [0.0f32, 1e2, 1e4] {
                    let d = TensorDesc::new(Shape::new(n, c, s), layout).unwrap();
                    let mut x = values(d.len(), c * s + n);
                    for v in &mut x {
                        *v = offset + (*v - 40.0) / 8.0;
                    }
                    let (mut mean, mut var) = (vec![f32::NAN; c], vec![f32::NAN; c]);
                    moments(&d, &x, &mut mean, &mut var);
                    for ch in 0..c {
                        let v = channel_values(&d, &x, ch);
                        let m = v.iter().map(|&a| f64::from(a)).sum::<f64>() / v.len() as f64;
                        let q = v.iter().map(|&a| (f64::from(a) - m).powi(2)).sum::<f64>() / v.len() as f64;
                        let what = format!("{n}x{c}x{s} {layout:?} offset {offset} channel {ch}");
                        let mean_err = (f64::from(mean[ch]) - m).abs();
                        assert!(
                            mean_err <= 2.0 * u * m.abs() + 16.0 * u * q.sqrt(),
                            "{what}: mean {} vs {m}",
                            mean[ch]
                        );
                        let var_err = (f64::from(var[ch]) - q).abs();
                        assert!(var_err <= 32.0 * u * q, "{what}: var {} vs {q}", var[ch]);
                    }
                }
            }
        }
    }

    /// The compact partials are `moments`' statistics: the mean bit for bit, `M2/count` the variance bit
    /// for bit (`var·count` is exact in f64 for these counts), the count `N·S`, and a `lo` below half an
    /// ulp of the mean.
    #[test]
    fn partials_are_the_moments() {
        for (n, c, s) in [(2, 5, 7), (1, 19, 3), (3, 37, 1), (2, 4, 2)] {
            for layout in LAYOUTS {
                let d = TensorDesc::new(Shape::new(n, c, s), layout).unwrap();
                let x: Vec<f32> = values(d.len(), c).iter().map(|v| v * 1e3).collect();
                let (mut mean, mut var) = (vec![0.0f32; c], vec![0.0f32; c]);
                moments(&d, &x, &mut mean, &mut var);
                let mut out = vec![Partial::EMPTY; c];
                partials(&d, &x, &mut out);
                for j in 0..c {
                    let p = out[j];
                    let what = format!("{n}x{c}x{s} {layout:?} channel {j}");
                    assert_eq!(p.count, (n * s) as u64, "{what}");
                    assert_eq!(p.mean_hi.to_bits(), mean[j].to_bits(), "{what}");
                    assert_eq!(((p.m2 / p.count as f64) as f32).to_bits(), var[j].to_bits(), "{what}");
                    // `lo` is below half an ulp of the rounded mean.
                    assert!(
                        p.mean_lo.abs() <= p.mean_hi.abs() * f32::EPSILON / 2.0,
                        "{what}: lo {}",
                        p.mean_lo
                    );
                }
            }
        }
    }

    /// The exact cases of the Guarantees: paired values `μ ± d` (d a power of two, S even) give exactly
    /// μ and d²; a constant channel its value and 0; a NaN stays in its channel.
    #[test]
    fn moments_exact_cases_and_nan() {
        for (n, c, s) in [(2, 5, 6), (3, 9, 2), (1, 16, 100), (4, 7, 1)] {
            for layout in LAYOUTS {
                let d = TensorDesc::new(Shape::new(n, c, s), layout).unwrap();
                let mut x = vec![0.0f32; d.len()];
                // Write channel values through the index formula: position p of channel ch.
                let sh = d.shape();
                for b in 0..n {
                    for sp in 0..s {
                        for ch in 0..c {
                            let i = match layout {
                                Layout::Nchw => (b * c + ch) * s + sp,
                                Layout::Nhwc => (b * s + sp) * c + ch,
                                Layout::Blocked { block } => {
                                    ((b * c.div_ceil(block) + ch / block) * sh.spatial + sp) * block
                                        + ch % block
                                }
                            };
                            let p = if s == 1 { b } else { sp };
                            let mu = 1000.0 + ch as f32 * 3.25;
                            x[i] = match ch % 3 {
                                0 => mu,
                                _ => mu + if p % 2 == 0 { 0.5 } else { -0.5 },
                            };
                            if ch == 2 && b == n - 1 && sp == s - 1 {
                                x[i] = f32::NAN;
                            }
                        }
                    }
                }
                let (mut mean, mut var) = (vec![0.0; c], vec![0.0; c]);
                moments(&d, &x, &mut mean, &mut var);
                for ch in 0..c {
                    let mu = 1000.0 + ch as f32 * 3.25;
                    let what = format!("{n}x{c}x{s} {layout:?} channel {ch}");
                    if ch == 2 {
                        assert!(mean[ch].is_nan() && var[ch].is_nan(), "{what}: NaN left its channel");
                    } else {
                        let want = if ch % 3 == 0 { 0.0 } else { 0.25 };
                        assert_eq!((mean[ch], var[ch]), (mu, want), "{what}");
                    }
                }
            }
        }
    }
}
