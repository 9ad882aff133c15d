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

#[cfg(target_pointer_width = "64")]
use super::WIDE_GROUP;
#[cfg(target_pointer_width = "64")]
use super::ops::wide;
use super::ops::{Kind, chunks_of, in_l3, kind, row_len, row_width, train_chunk_of};
use super::stats::Weight;
use super::{GROUP, LINE_FLOATS};
use crate::arch::Simd;
use crate::layout::TensorDesc;
use crate::tuning;

/// Columns per band of the row walk of wide channels-last rows (its sums, 3 × 2 KB, and pattern in L1).
const BAND: usize = 512;

/// Additions per f32 chain: rows per register block, and blocks per mid sum.
const CHAIN: usize = 16;

/// A backward call's data besides `x`: `dy` and where `dx` goes, or the reduce half's outputs. One
/// entry point per tier takes all three (a tier compiles the reduction once).
pub(crate) enum GradData<'a> {
    /// `dy`, and `dx` into its own buffer (large outputs stream past the caches).
    Split(&'a [f32], &'a mut [f32]),
    /// `dx` over `dy`.
    InPlace(&'a mut [f32]),
    /// The reduce half: `dy`, and the sums' outputs.
    Reduce(&'a [f32], ReduceOut<'a>),
    /// The parallel front end's reduce: `dy`, and the [`Weight`] sums of channels `c0..c1` (the outputs
    /// `c1 − c0` long, the range whole blocks of a blocked tensor), each channel's as the serial pass
    /// computes it (NCHW channel by channel, blocked block by block, whatever range holds them).
    #[cfg(feature = "rayon")]
    Totals(&'a [f32], Totals<'a>, (usize, usize)),
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
    /// The channels' element coefficients, computed from the whole tensor's sums by
    /// [`coefs_from_totals`] (the parallel front end's element pass on a part: the serial pass's bits).
    #[cfg(feature = "rayon")]
    pub coefs: Option<&'a [Coef]>,
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
pub(crate) struct Totals<'a> {
    pub dy: &'a mut [Weight],
    pub dyx: &'a mut [Weight],
    pub x: &'a mut [Weight],
}

impl Totals<'_> {
    fn clear(&mut self, n: usize) {
        self.dy[..n].fill(0.0);
        self.dyx[..n].fill(0.0);
        self.x[..n].fill(0.0);
    }
}

/// f32 sums of up to [`CHAIN`] blocks per position of a strip (see [`reduce_strip`]); a group long.
pub(crate) struct Mid<'a> {
    v: [&'a mut [f32]; 3],
    blocks: usize,
    /// The current block's sums, for rows walked in address order ([`reduce_rows`]).
    blk: [&'a mut [f32]; 3],
}

impl Mid<'_> {
    /// Adds positions `0..w` into the totals and empties them: positions come in periods of `p`, period
    /// `q` holding channels `base + q·b ..` repeated every `b` (`p` a multiple of `b`: position `i` is
    /// total `base + (i / p)·b + i % b`); totals at or past `limit` are padding, dropped.
    fn flush(&mut self, w: usize, t: &mut Totals<'_>, (p, b, base, limit): Map) {
        if p == b && base + w <= limit {
            // Position `i` is total `base + i` (rows of channels, blocks as wide as a vector): whole
            // slices, which vectorise (the loop below was 8 % of the reduction of blocked
            // 1×1024×14×14 on Zen 4).
            for (tq, v) in [&mut *t.dy, &mut *t.dyx, &mut *t.x].into_iter().zip(self.v.iter_mut()) {
                for (tj, vi) in tq[base..base + w].iter_mut().zip(v[..w].iter_mut()) {
                    *tj += *vi as Weight;
                    *vi = 0.0;
                }
            }
            self.blocks = 0;
            return;
        }
        if w.is_multiple_of(p) && base + w / p * b <= limit && matches!(b, 4 | 8) {
            // Whole periods of blocks narrower than a vector (nChw8c and nChw4c on AVX-512, nChw4c on
            // AVX2), none of them padding: each block's totals in registers while its repeats are added
            // (in order: the same bits). The loop below was 13 % of the reduction of nChw8c
            // 1×1024×14×14 from the cache on Zen 4.
            for (tq, v) in [&mut *t.dy, &mut *t.dyx, &mut *t.x].into_iter().zip(self.v.iter_mut()) {
                if b == 4 {
                    add_repeats::<4>(&mut tq[base..], &v[..w], p);
                } else {
                    add_repeats::<8>(&mut tq[base..], &v[..w], p);
                }
                v[..w].fill(0.0);
            }
            self.blocks = 0;
            return;
        }
        let mut i0 = 0;
        let mut jb = base;
        while i0 < w {
            let mut rb = 0;
            for i in i0..(i0 + p).min(w) {
                let j = jb + rb;
                if j < limit {
                    t.dy[j] += self.v[0][i] as Weight;
                    t.dyx[j] += self.v[1][i] as Weight;
                    t.x[j] += self.v[2][i] as Weight;
                }
                rb += 1;
                if rb == b {
                    rb = 0;
                }
            }
            i0 += p;
            jb += b;
        }
        for v in self.v.iter_mut() {
            v[..w].fill(0.0);
        }
        self.blocks = 0;
    }
}

/// Adds the periods of `p` positions of `v` into consecutive blocks of `B` totals of `t`: period `q`'s
/// repeats of its block, in order, into `t[q·B..q·B + B]`.
#[inline(always)]
fn add_repeats<const B: usize>(t: &mut [Weight], v: &[f32], p: usize) {
    for (tb, period) in t.chunks_exact_mut(B).zip(v.chunks_exact(p)) {
        let mut acc = [0.0; B];
        acc.copy_from_slice(tb);
        for rep in period.chunks_exact(B) {
            for (a, &x) in acc.iter_mut().zip(rep) {
                *a += x as Weight;
            }
        }
        tb.copy_from_slice(&acc);
    }
}

/// How mid positions map to a chunk's totals: `(p, b, base, limit)` (see [`Mid::flush`]).
type Map = (usize, usize, usize, usize);

/// Per-position coefficients of the element pass: `dx = a·(dy − mdy) + k·(x − m)`, then `& mask`; each
/// a group and a vector long (`N`). A fixed-size array behind one pointer: the five loads of a vector's
/// coefficients are constant offsets from it, where five slices (ten registers) spilled in the
/// channels-last loop and it ran 20 % slower from the cache. The element pass is compiled for the two
/// sizes (narrow and wide rows); the reduction, once.
pub(crate) struct Coefs<'a, const N: usize> {
    c: &'a mut [[f32; N]; 5],
}

/// Patterns for groups of narrow rows, and (64-bit targets) of wide channels-last rows.
///
/// The five arrays of a size lie end to end, and their length sets how far apart they are modulo 4 KB:
/// a load whose address matches an older, still pending store in its low 12 bits waits on it (4K
/// aliasing), and channels-last rows load a position of all five patterns beside each stored vector of
/// `dx`. `WIDE_GROUP + 16` floats put them 64 bytes apart modulo 4 KB, so all five could meet the
/// stores together; 192 floats more put them 832 bytes apart (`NARROW_PG`'s arrays already lie
/// 1088 bytes apart). AVX-512, Zen 4, NHWC 1×1024×14×14 from the cache, medians of 5000 calls over 3
/// alternating runs: the element pass 50.8–52.3 → 41.5–41.9 µs, the whole backward 78–92 → 68–69 µs
/// (oneDNN 68–73 in an earlier session's run, `OMP_NUM_THREADS=1 onednn3_bn_ext nhwc bwd 1 1024 14 14
/// 3000`); nChw16c, nChw8c, NHWC 1×64×56×56 and 4×23×13×13 level.
const NARROW_PG: usize = GROUP + 16;
#[cfg(target_pointer_width = "64")]
const WIDE_PG: usize = WIDE_GROUP + 16 + 192;

/// The element pass's patterns of one of the two sizes.
enum Pats<'a> {
    Narrow(Coefs<'a, NARROW_PG>),
    #[cfg(target_pointer_width = "64")]
    Wide(Coefs<'a, WIDE_PG>),
}

impl Pats<'_> {
    /// The `m` positions, as scratch for the reduction's mean pattern.
    fn m_mut(&mut self) -> &mut [f32] {
        match self {
            Pats::Narrow(co) => &mut co.c[2][..],
            #[cfg(target_pointer_width = "64")]
            Pats::Wide(co) => &mut co.c[2][..],
        }
    }
}

/// The storage of a call's sums for groups of `G` channels.
struct Scratch<const G: usize> {
    t: [[Weight; G]; 3],
    mid: [[f32; G]; 6],
    coef: [Coef; G],
}

impl<const G: usize> Scratch<G> {
    fn new() -> Self {
        Scratch { t: [[0.0; G]; 3], mid: [[0.0; G]; 6], coef: [[0.0; 4]; G] }
    }

    /// The storage as the slices the passes take, with the patterns `pats`.
    fn work<'a>(&'a mut self, pats: Pats<'a>) -> Work<'a> {
        let [dy, dyx, x] = &mut self.t;
        let [v0, v1, v2, b0, b1, b2] = &mut self.mid;
        Work {
            t: Totals { dy, dyx, x },
            mid: Mid { v: [v0, v1, v2], blocks: 0, blk: [b0, b1, b2] },
            co: pats,
            coef: &mut self.coef,
        }
    }
}

/// A call's sums and coefficients (one group's worth, see [`Scratch`]).
struct Work<'a> {
    t: Totals<'a>,
    mid: Mid<'a>,
    co: Pats<'a>,
    coef: &'a mut [Coef],
}

/// One channel's coefficients `[a, k, m, mdy]`.
pub(crate) type Coef = [f32; 4];

/// The mask of a live lane (all ones).
const LIVE: f32 = f32::from_bits(u32::MAX);

/// A tier's two halves of the backward pass over a chunk of channels, each compiled once per tier (the
/// element half once per buffer kind, statistics kind and pattern size) as an out-of-line function with
/// the tier's target features (`crate::arch`'s `tier_entries!`), called once per chunk. Inlined into one
/// entry point per tier, the backward pass was a single function of every layout's loops in eight
/// copies, and LLVM's loop passes, which grow faster than the function they work on, spent half of the
/// library's build on those four functions (Zen 4, release build: 268 of the 522 s of LLVM's time
/// trace).
pub(crate) trait BackPieces: Simd {
    /// The sums of channels `c.0..c.1` (see [`reduce_range`]; `(x, dy, mean)`).
    #[allow(clippy::too_many_arguments)]
    fn reduce(
        self,
        desc: &TensorDesc,
        data: (&[f32], &[f32], &[f32]),
        c: (usize, usize),
        chunk: (usize, usize),
        t: &mut Totals<'_>,
        mid: &mut Mid<'_>,
        pat: &mut [f32],
    );

    /// The element pass over channels `c.0..c.1` (see [`elem_layout`]).
    fn elem<const IP: bool, const TRAIN: bool, const N: usize>(
        self,
        desc: &TensorDesc,
        d: Bufs<'_>,
        c: (usize, usize),
        coef: &[Coef],
        co: Coefs<'_, N>,
        stream: bool,
    );
}

/// The backward pass with tier `s`: both halves, the element half from given sums (`p.sums`), or the
/// reduce half (`GradData::Reduce`, which reads only `p.mean`).
#[inline(always)]
pub(crate) fn backward_op<S: BackPieces>(
    s: S,
    desc: &TensorDesc,
    x: &[f32],
    data: GradData<'_>,
    p: &BackParams<'_>,
    out: &mut BackOut<'_>,
) {
    // Storage for groups of the tensor's size: one of the two is initialised, and the reduction below
    // is compiled once for both (as slices).
    let mut narrow: (Scratch<GROUP>, [[f32; NARROW_PG]; 5]);
    #[cfg(target_pointer_width = "64")]
    let mut wide_rows: (Scratch<WIDE_GROUP>, [[f32; WIDE_PG]; 5]);
    #[cfg(target_pointer_width = "64")]
    let w = if wide(desc) || long_runs(desc) {
        wide_rows = (Scratch::new(), [[0.0; WIDE_PG]; 5]);
        wide_rows.0.work(Pats::Wide(Coefs { c: &mut wide_rows.1 }))
    } else {
        narrow = (Scratch::new(), [[0.0; NARROW_PG]; 5]);
        narrow.0.work(Pats::Narrow(Coefs { c: &mut narrow.1 }))
    };
    #[cfg(not(target_pointer_width = "64"))]
    let w = {
        narrow = (Scratch::new(), [[0.0; NARROW_PG]; 5]);
        narrow.0.work(Pats::Narrow(Coefs { c: &mut narrow.1 }))
    };
    backward(s, desc, x, data, p, out, w)
}

/// Whether a planes or blocked tensor read from memory takes the wide scratch: its groups, up to
/// [`WIDE_GROUP`] positions, are what each sample's runs of the reduce half are (chunks cap them in the
/// full backward). Groups of [`GROUP`] positions hold 16 blocks whatever their width on AVX-512 (a
/// block takes at least a vector), so a sample's run of nChw8c 32×2048×7×7 was 25 KB, of nChw4c 12 KB,
/// and from memory the reduce half ran at 0.65 and 0.4 of nChw16c's speed (Zen 4). The wide scratch is
/// 170 KB zeroed per call, about 2 µs (a fifth of the fixed cost of NHWC 1×1024×1 on Zen 4): nothing
/// beside a pass over memory, and not taken from the cache.
#[cfg(target_pointer_width = "64")]
fn long_runs(desc: &TensorDesc) -> bool {
    !matches!(kind(desc), Kind::Channels) && desc.len() >= tuning::get().stream_min_bytes / 4
}

#[inline(always)]
fn backward<S: BackPieces>(
    s: S,
    desc: &TensorDesc,
    x: &[f32],
    mut data: GradData<'_>,
    p: &BackParams<'_>,
    out: &mut BackOut<'_>,
    w: Work<'_>,
) {
    let Work { mut t, mut mid, mut co, coef } = w;
    // Channels per group.
    let g = coef.len();
    let tn = tuning::get();
    let stream = matches!(data, GradData::Split(..)) && desc.store_len() >= tn.stream_min_bytes / 4;
    #[cfg(feature = "rayon")]
    let (reduce_only, (r0, r1), given) = match &data {
        GradData::Reduce(..) => (true, (0, desc.shape().c), p.coefs),
        GradData::Totals(_, _, range) => (true, *range, p.coefs),
        _ => (false, (0, desc.shape().c), p.coefs),
    };
    #[cfg(not(feature = "rayon"))]
    let (reduce_only, (r0, r1), given): (_, _, Option<&[Coef]>) =
        (matches!(data, GradData::Reduce(..)), (0, desc.shape().c), None);
    let need_reduce = reduce_only
        || (given.is_none()
            && p.sums.is_none()
            && (p.batch_stats || out.dgamma.is_some() || out.dbeta.is_some()));
    // Chunks of about twice `train_chunk_bytes` of each of x and dy (L2's size together on a 1 MB-L2 Zen
    // 4, the element pass re-reading the rest from the L3 the chunk was just read into): longer runs per
    // sample than training's chunks. Zen 4, AVX-512, 32×2048×7×7 (GB/s, x and dy together 256 KB →
    // 1 MB): nChw16c 18.5 → 21, nChw8c 14 → 21.4, NCHW 12.2 → 17.2; 32×256×56×56 nChw16c unchanged.
    // The reduce half alone has no element pass to keep in cache: groups of G channels. Nor does a batch
    // of more than eight samples whose x and dy the L3 holds together: its chunks' runs per sample would
    // be 64 KB or shorter, and the whole reduce half then the element pass re-reading from the L3 ran
    // faster (Zen 4, AVX-512, 32×2048×7×7, one thread, medians of 30 calls over 3 alternating runs:
    // nChw16c 1.74–2.06 → 1.45–1.60 ms, nChw8c 2.06–2.41 → 1.71–1.80, NCHW 2.0–2.45 → 1.5–1.72,
    // nChw4c 2.37–3.11 → 2.15–2.71; oneDNN 1.25–1.48; 16×1024×7×7 2 % faster, 8×1024×7×7 and
    // 4×2048×7×7 level, 1×1024×14×14 1–2 % slower, and so left in chunks). Seven eighths of the L3 at
    // most (25.7 MB of 32 here): a Xeon whose L3 reports 105 MB would otherwise take 32×512×28×28's 102 MB
    // whole, with no room left for the L3's other tenants (not measured there).
    let whole = desc.shape().n > 8 && desc.len().saturating_mul(8) <= tn.l3_bytes / 8 * 7;
    let step = if need_reduce && !reduce_only && !whole {
        train_chunk_of(desc, 2 * tn.train_chunk_bytes, g)
    } else {
        g
    };
    let count = p.sums.map_or(desc.shape().count(), |g| g.count);
    // From memory, the element pass of a chunk fetches the next chunk's x and dy into L2 beside its own
    // lines (`prefetcht1`, a line of each per line of dx): its reads from the cache and its streamed
    // writes left memory idle for want of reads, and the next reduce half then waited on memory alone
    // (one thread reads about 20 GB/s; with writes beside the reads, about 32). Zen 4, AVX-512, one
    // thread, medians of 10 calls over 3 alternating runs (ms): NCHW 32×256×56×56 17.4–18.3 →
    // 13.8–14.1, 32×512×28×28 8.7–9.1 → 7.0–7.6; nChw8c 32×256×56×56 14.6–16.4 → 14.4–16.0 (8 runs),
    // 32×512×28×28 8.4–8.7 → 7.4–7.8; nChw4c 15.7–16.8 → 14.4–14.8 and 8.7–10.1 → 7.4–7.8; nChw16c
    // 32×512×28×28 7.2–8.1 → 6.7–6.9 (5 runs); oneDNN 13.4–14.9 (nChw8c 56×56), 7.0 (nChw8c 28×28)
    // and 7.3–7.9 (nChw16c 28×28). The two chunks' x and dy together stay within half the L3:
    // nChw16c 32×256×56×56's pair, 25.7 MB of a 32 MB L3 that the rest of the machine shares, went
    // 14.5–16.7 → 14.9–16.9 ms (oneDNN 14.9–15.5). Not for channels-last rows (never chunked) nor for
    // tensors the L3 holds.
    let fetch =
        need_reduce && !reduce_only && !whole && !matches!(kind(desc), Kind::Channels) && !in_l3(desc);
    let mut chunks = chunks_of(desc, step, g).peekable();
    while let Some(chunk) = chunks.next() {
        let width = chunk.1 - chunk.0;
        let ahead = match chunks.peek() {
            Some(&next)
                if fetch
                    && next.1 - next.0 == width
                    && width.saturating_mul(desc.shape().count()).saturating_mul(16) <= tn.l3_bytes / 2 =>
            {
                width * desc.shape().spatial
            }
            _ => 0,
        };
        // (The range is all channels but for `GradData::Totals`.)
        let (c0, c1) = (chunk.0.max(r0), chunk.1.min(r1));
        if c0 >= c1 {
            continue;
        }
        let n = c1 - c0;
        if need_reduce {
            t.clear(n);
            let dy: &[f32] = match &data {
                GradData::Split(dy, _) | GradData::Reduce(dy, _) => dy,
                #[cfg(feature = "rayon")]
                GradData::Totals(dy, ..) => dy,
                GradData::InPlace(dydx) => dydx,
            };
            s.reduce(desc, (x, dy, p.mean), (c0, c1), chunk, &mut t, &mut mid, co.m_mut());
        }
        match &mut data {
            GradData::Reduce(_, o) => {
                for j in 0..n {
                    o.sum_dy[c0 + j] = t.dy[j] as f32;
                    o.sum_dy_xmu[c0 + j] = t.dyx[j] as f32;
                }
                continue;
            }
            #[cfg(feature = "rayon")]
            GradData::Totals(_, o, _) => {
                let at = c0 - r0;
                o.dy[at..at + n].copy_from_slice(&t.dy[..n]);
                o.dyx[at..at + n].copy_from_slice(&t.dyx[..n]);
                o.x[at..at + n].copy_from_slice(&t.x[..n]);
                continue;
            }
            _ => {}
        }
        match given {
            Some(given) => coef[..n].copy_from_slice(&given[c0..c1]),
            None => coefs_of(s, p, c0, &t, count, out, &mut coef[..n]),
        }
        let coef = &coef[..n];
        let train = p.batch_stats;
        match (&mut data, &mut co) {
            (GradData::Split(dy, dx), Pats::Narrow(co)) => {
                let d = Bufs { x, dy, dx, ahead };
                elem_range::<S, false, NARROW_PG>(s, desc, d, train, c0, c1, coef, co, stream)
            }
            (GradData::InPlace(dydx), Pats::Narrow(co)) => {
                let d = Bufs { x, dy: &[], dx: dydx, ahead };
                elem_range::<S, true, NARROW_PG>(s, desc, d, train, c0, c1, coef, co, false)
            }
            #[cfg(target_pointer_width = "64")]
            (GradData::Split(dy, dx), Pats::Wide(co)) => {
                let d = Bufs { x, dy, dx, ahead };
                elem_range::<S, false, WIDE_PG>(s, desc, d, train, c0, c1, coef, co, stream)
            }
            #[cfg(target_pointer_width = "64")]
            (GradData::InPlace(dydx), Pats::Wide(co)) => {
                let d = Bufs { x, dy: &[], dx: dydx, ahead };
                elem_range::<S, true, WIDE_PG>(s, desc, d, train, c0, c1, coef, co, false)
            }
            (GradData::Reduce(..), _) => {}
            #[cfg(feature = "rayon")]
            (GradData::Totals(..), _) => {}
        }
    }
    if stream {
        s.fence();
    }
}

/// The element coefficients of channels `c0..c0 + coef.len()` into `coef`, and their `dγ`/`dβ` where
/// asked for. The sums come from `p.sums` when given, else from `t` (indexed from `c0`).
///
/// `1/√(var + ε)` is the tier's vector operation (the forward pass's bits) on blocks of channels; the
/// rest is scalar f64 with one division per channel (the mean of `dy`, exact for a constant `dy`), the
/// other `/M` multiplications by `1/M`: a backward call's per-channel cost was about 15 ns, six divisions
/// deep (Zen 4: 15 of the 82 µs of NHWC 1×1024×14×14).
#[inline(always)]
fn coefs_of<S: Simd>(
    s: S,
    p: &BackParams<'_>,
    c0: usize,
    t: &Totals<'_>,
    count: usize,
    out: &mut BackOut<'_>,
    coef: &mut [Coef],
) {
    const B: usize = 64;
    let mw = count as Weight;
    let rm = 1.0 / mw;
    for (b, cfs) in coef.chunks_mut(B).enumerate() {
        let j0 = b * B;
        let cb = c0 + j0;
        let mut inv = [0.0f32; B];
        for (v, &var) in inv.iter_mut().zip(&p.var[cb..cb + cfs.len()]) {
            *v = var + p.eps;
        }
        // (B is a multiple of every tier's LANES; the lanes past the channels hold 0 and give 0.)
        let mut i = 0;
        while i < B {
            let v = s.inv_sqrt_or_zero(s.load(&inv[i..]));
            s.store(&mut inv[i..], v);
            i += S::LANES;
        }
        let n = cfs.len();
        // Each step a loop over the block's channels with the mode decided outside it, so that the
        // f64 arithmetic runs on vectors (the same operations in the same order: the same bits). A
        // loop of branches per channel was 9 % of the element pass of 1×1024×14×14 from the cache (Zen 4).
        let (mut sdy, mut cov, mut mdy) = ([0.0 as Weight; B], [0.0 as Weight; B], [0.0 as Weight; B]);
        match p.sums {
            Some(g) => {
                for i in 0..n {
                    sdy[i] = g.sum_dy[cb + i] as Weight;
                    cov[i] = g.sum_dy_xmu[cb + i] as Weight;
                    mdy[i] = sdy[i] / mw;
                }
            }
            None if p.batch_stats => {
                for i in 0..n {
                    sdy[i] = t.dy[j0 + i];
                    mdy[i] = sdy[i] / mw;
                    // Σ(dy − mean(dy))·(x − mean), whatever the rounding of `mean`.
                    cov[i] = t.dyx[j0 + i] - mdy[i] * t.x[j0 + i];
                }
            }
            None => {
                sdy[..n].copy_from_slice(&t.dy[j0..j0 + n]);
                cov[..n].copy_from_slice(&t.dyx[j0..j0 + n]);
            }
        }
        if let Some(db) = out.dbeta.as_deref_mut() {
            for (d, &v) in db[cb..cb + n].iter_mut().zip(&sdy) {
                *d = v as f32;
            }
        }
        if let Some(dg) = out.dgamma.as_deref_mut() {
            for ((d, &c), &inv) in dg[cb..cb + n].iter_mut().zip(&cov).zip(&inv) {
                *d = (inv as Weight * c) as f32;
            }
        }
        let mut a = [0.0f32; B];
        match p.gamma {
            Some(g) => {
                for ((a, &g), &inv) in a.iter_mut().zip(&g[cb..cb + n]).zip(&inv) {
                    *a = g * inv;
                }
            }
            None => a = inv,
        }
        let mean = &p.mean[cb..cb + n];
        if !p.batch_stats {
            for ((cf, &a), &m) in cfs.iter_mut().zip(&a).zip(mean) {
                *cf = [a, 0.0, m, 0.0];
            }
            continue;
        }
        // Whole blocks of plain loops (vectorised; the lanes past the channels hold 0 and give 0), then
        // the interleaving: one loop of both, scalar, was half of a backward call's fixed cost (NHWC
        // 1×1024×1 on AVX-512, Zen 4).
        let (mut k, mut md) = ([0.0f32; B], [0.0f32; B]);
        let mut q = [0.0 as Weight; B];
        for i in 0..B {
            let inv = inv[i] as Weight;
            q[i] = inv * inv * cov[i] * rm;
            k[i] = (-(a[i] as Weight) * q[i]) as f32;
        }
        if p.sums.is_none() {
            // The batch mean is `m + lo` with `lo = Σ(x − m)/M` (the saved `m` is its f32 rounding), and
            // `dx = a·(dy − mean(dy)) + k·((x − m) − lo)`: `−k·lo` goes into `mdy` as `(k/a)·lo`, so `dx`
            // does not carry the mean's rounding (`|k|·U·|mean|`, large at large offsets; issue 12,
            // item 5).
            let mut sx = [0.0 as Weight; B];
            sx[..n].copy_from_slice(&t.x[j0..j0 + n]);
            for i in 0..B {
                md[i] = (mdy[i] - q[i] * (sx[i] * rm)) as f32;
            }
        } else {
            for i in 0..B {
                md[i] = mdy[i] as f32;
            }
        }
        for (i, cf) in cfs.iter_mut().enumerate() {
            *cf = [a[i], k[i], mean[i], md[i]];
        }
    }
}

/// The element coefficients of channels `c0..` into `coefs`, and their `dγ`/`dβ` where asked for, from
/// their sums `t` (indexed from `c0`, as [`GradData::Totals`] wrote them over the whole tensor): what the
/// serial pass computes for each chunk, so its element pass on any part gives the serial pass's bits.
#[cfg(feature = "rayon")]
pub(crate) fn coefs_from_totals(
    p: &BackParams<'_>,
    t: &Totals<'_>,
    c0: usize,
    count: usize,
    out: &mut BackOut<'_>,
    coefs: &mut [Coef],
) {
    coefs_of(crate::arch::scalar::Scalar, p, c0, t, count, out, coefs);
}

/// The sums of channels `c0..c1` into `t[0..c1 − c0]`. `pat` is scratch for a mean pattern. `chunk` is
/// the serial pass's chunk that holds `c0..c1` (the same range but for [`GradData::Totals`]): a
/// channels-last range walks its rows in the chunk's pieces, so that each channel's sums are the serial
/// pass's bits (see [`reduce_strip`]).
#[allow(clippy::too_many_arguments)]
#[inline(always)]
pub(crate) fn reduce_range<S: Simd>(
    s: S,
    desc: &TensorDesc,
    x: &[f32],
    dy: &[f32],
    mean: &[f32],
    (c0, c1): (usize, usize),
    chunk: (usize, usize),
    t: &mut Totals<'_>,
    mid: &mut Mid<'_>,
    pat: &mut [f32],
) {
    let sh = desc.shape();
    let limit = c1 - c0;
    match kind(desc) {
        Kind::Planes => {
            // Sample by sample, so the chunk's planes are read in address order (NCHW 32×2048×7×7:
            // planes of 196 bytes, 400 KB apart within a channel).
            for n in 0..sh.n {
                for (c, &m) in mean.iter().enumerate().take(c1).skip(c0) {
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
            let chunk_w = row_width(desc, chunk.0, chunk.1);
            reduce_strip(s, x, dy, &strip, chunk_w, &pat[..w], mid, t, (w, w, 0, limit));
        }
        Kind::Blocked(b) => {
            // Sample by sample, the planes of as many of the chunk's blocks as the mid sums hold: each
            // sample's planes of the chunk are read in address order (r50-s5, 32×2048×7×7: block planes
            // of 784 bytes, 400 KB apart within a block). Position `(cb − g0)·p + i` of the mid sums is
            // channel `cb·b + i % b`.
            let blocks = sh.c.div_ceil(b);
            let p = b.max(S::LANES);
            let len = sh.spatial * b;
            let (rows, rem) = (len / p, len % p);
            let per = (mid.v[0].len() / p).max(1);
            let (cb0, cb1) = (c0 / b, c1.div_ceil(b));
            let mut g0 = cb0;
            while g0 < cb1 {
                let g1 = (g0 + per).min(cb1);
                let w = (g1 - g0) * p;
                // (Without a division per position: 1024 of them were an eighth of the reduction of
                // blocked 1×1024×14×14 on Zen 4.)
                for (cb, slot) in (g0..g1).zip(pat[..w].chunks_exact_mut(p)) {
                    for rep in slot.chunks_exact_mut(b) {
                        for (i, v) in rep.iter_mut().enumerate() {
                            *v = mean.get(cb * b + i).copied().unwrap_or(0.0);
                        }
                    }
                }
                let map = (p, b, g0 * b - c0, limit);
                for n in 0..sh.n {
                    let mut r0 = 0;
                    loop {
                        let piece = (rows - r0).min(CHAIN * CHAIN);
                        let last = r0 + piece == rows;
                        let blocks_added = piece.div_ceil(CHAIN) + usize::from(last && rem > 0);
                        if mid.blocks + blocks_added > CHAIN {
                            mid.flush(w, t, map);
                        }
                        for cb in g0..g1 {
                            let plane = (n * blocks + cb) * len;
                            let mcol = (cb - g0) * p;
                            let strip = Strip { start: plane + r0 * p, rows: piece, stride: p, width: p };
                            reduce_cols(s, x, dy, &strip, mcol, &pat[..w], mid);
                            if last && rem > 0 {
                                let tail = Strip { start: plane + rows * p, rows: 1, stride: p, width: rem };
                                reduce_cols(s, x, dy, &tail, mcol, &pat[..w], mid);
                            }
                        }
                        mid.blocks += blocks_added;
                        r0 += piece;
                        if last {
                            break;
                        }
                    }
                }
                mid.flush(w, t, map);
                g0 = g1;
            }
        }
    }
    if !matches!(kind(desc), Kind::Blocked(_)) {
        let w = row_width(desc, c0, c1).min(mid.v[0].len());
        mid.flush(w, t, (w, w, 0, limit));
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

/// The sums of a strip walked row by row in address order, each row's sums added into the current
/// block's in L1 (`mid.blk`); blocks of [`CHAIN`] rows go into the mid sums, and those into `t` every
/// [`CHAIN`] blocks.
#[allow(clippy::too_many_arguments)]
#[inline(always)]
fn reduce_rows<S: Simd>(
    s: S,
    x: &[f32],
    dy: &[f32],
    strip: &Strip,
    m: &[f32],
    mid: &mut Mid<'_>,
    t: &mut Totals<'_>,
    map: Map,
) {
    let l = S::LANES;
    let w = strip.width;
    let zero = s.splat(0.0);
    let full = w / l * l;
    let mut r = 0;
    while r < strip.rows {
        let end = (r + CHAIN).min(strip.rows);
        if mid.blocks == CHAIN {
            mid.flush(w, t, map);
        }
        // Every lane the vectors below touch (the tail's lanes past `w` add zeros, but must start at 0:
        // a wider band before may have left sums there).
        for q in &mut mid.blk {
            q[..w.div_ceil(l) * l].fill(0.0);
        }
        let [b0, b1, b2] = &mut mid.blk;
        while r < end {
            let at = strip.start + r * strip.stride;
            let (xr, dyr) = (&x[at..at + w], &dy[at..at + w]);
            let mut j = 0;
            while j < full {
                let mv = s.load(&m[j..]);
                let d = s.load(&dyr[j..]);
                let xm = s.sub(s.load(&xr[j..]), mv);
                let v0 = s.add(s.load(&b0[j..]), d);
                let v1 = s.mul_add(d, xm, s.load(&b1[j..]));
                let v2 = s.add(s.load(&b2[j..]), xm);
                s.store(&mut b0[j..], v0);
                s.store(&mut b1[j..], v1);
                s.store(&mut b2[j..], v2);
                j += l;
            }
            if j < w {
                // The blocks are G long, G a multiple of LANES: full vectors there are in bounds.
                let mv = s.load_part(&m[j..w], zero);
                let d = s.load_part(&dyr[j..], zero);
                let xm = s.sub(s.load_part(&xr[j..], mv), mv);
                let v0 = s.add(s.load(&b0[j..]), d);
                let v1 = s.mul_add(d, xm, s.load(&b1[j..]));
                let v2 = s.add(s.load(&b2[j..]), xm);
                s.store(&mut b0[j..], v0);
                s.store(&mut b1[j..], v1);
                s.store(&mut b2[j..], v2);
            }
            r += 1;
        }
        let mut j = 0;
        while j < w {
            for q in 0..3 {
                let v = s.add(s.load(&mid.v[q][j..]), s.load(&mid.blk[q][j..]));
                s.store(&mut mid.v[q][j..], v);
            }
            j += l;
        }
        mid.blocks += 1;
    }
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
fn reduce_strip<S: Simd>(
    s: S,
    x: &[f32],
    dy: &[f32],
    strip: &Strip,
    chunk_w: usize,
    m: &[f32],
    mid: &mut Mid<'_>,
    t: &mut Totals<'_>,
    map: Map,
) {
    let l = S::LANES;
    let w = strip.width;
    // (Decided by the chunk's width, as the pieces below: a strip of a chunk walks the chunk's way.)
    if chunk_w > 4 * l && x.len() >= tuning::get().stream_min_bytes {
        // Rows wider than a register tile, of a tensor read from memory (four times the non-temporal
        // threshold, as the statistics decide): walked in address order with the sums in L1 (a tile walk
        // would read each row in several strided passes: NHWC 32×256×56×56 reduced at 10 GB/s so), in
        // bands of at most BAND columns so that the sums and the pattern stay in L1. From the caches the
        // register tiles below are faster (reduce of NHWC 1×1024×14×14 on AVX-512, Zen 4: 25 → 40 GB/s;
        // 32×2048×7×7, 26 MB of x and dy together, from L3: 7.7 → 14.7).
        let (_, _, base, limit) = map;
        let mut b0 = 0;
        while b0 < w {
            let bw = (w - b0).min(BAND);
            let band = Strip { start: strip.start + b0, width: bw, ..*strip };
            let bmap = (bw, bw, base + b0, limit);
            reduce_rows(s, x, dy, &band, &m[b0..b0 + bw], mid, t, bmap);
            mid.flush(bw, t, bmap);
            b0 += bw;
        }
        return;
    }
    // Pieces of rows whose x and dy fit in a quarter of L2, so the tile columns re-read them from it:
    // the rows of the whole chunk (`chunk_w` wide) for a strip that is part of one, so that the strip's
    // chains and flushes, and so its sums' bits, are the chunk's (a strip starting a multiple of four
    // vectors into the chunk has the chunk's tiles too: the parallel front end's column ranges).
    let budget = tuning::get().l2_bytes / 4 / (8 * chunk_w).max(1);
    let piece = (budget / CHAIN * CHAIN).clamp(CHAIN, CHAIN * CHAIN);
    let mut r0 = 0;
    while r0 < strip.rows {
        let rows = (strip.rows - r0).min(piece);
        let blocks = rows.div_ceil(CHAIN);
        if mid.blocks + blocks > CHAIN {
            mid.flush(m.len(), t, map);
        }
        let part = Strip { start: strip.start + r0 * strip.stride, rows, ..*strip };
        reduce_cols(s, x, dy, &part, 0, m, mid);
        mid.blocks += blocks;
        r0 += rows;
    }
}

/// The columns of a strip in register tiles, into the mid sums from position `mcol` (the pattern `m`
/// read from there too).
#[inline(always)]
fn reduce_cols<S: Simd>(
    s: S,
    x: &[f32],
    dy: &[f32],
    strip: &Strip,
    mcol: usize,
    m: &[f32],
    mid: &mut Mid<'_>,
) {
    let l = S::LANES;
    let w = strip.width;
    let (start, rows, stride) = (strip.start, strip.rows, strip.stride);
    let mut col = 0;
    // Tiles of eight then four vectors (three sums each: 24 or 12 accumulators) with 32 registers, of
    // two with 16; a lone vector deals its rows to four accumulator sets, to hide the additions'
    // latency. A column's sums are the same whatever the tile holding it (one accumulator set each).
    // Eight-vector tiles walk wide rows (rows 4 KB apart) half as many times: the sums of NHWC
    // 1×1024×14×14 from the cache on AVX-512, Zen 4, 33–35 → 27 µs.
    if S::REGS >= 32 {
        while col + 8 * l <= w {
            reduce_tile::<S, 8, 1>(s, x, dy, (start, rows, stride), col, mcol, l, m, mid);
            col += 8 * l;
        }
        while col + 4 * l <= w {
            reduce_tile::<S, 4, 1>(s, x, dy, (start, rows, stride), col, mcol, l, m, mid);
            col += 4 * l;
        }
    }
    while col + 2 * l <= w {
        reduce_tile::<S, 2, 1>(s, x, dy, (start, rows, stride), col, mcol, l, m, mid);
        col += 2 * l;
    }
    while col < w {
        let last = (w - col).min(l);
        reduce_tile::<S, 1, 4>(s, x, dy, (start, rows, stride), col, mcol, last, m, mid);
        col += l;
    }
}

/// `T` vectors of columns from `col` (the last with `last` lanes) over `rows` rows, rows dealt in turn
/// to `U` accumulator sets: register chains of at most [`CHAIN`] rows each, whose sums (the `U` sets
/// added in a fixed tree) are added into the mid sums.
#[allow(clippy::too_many_arguments)]
#[inline(always)]
fn reduce_tile<S: Simd, const T: usize, const U: usize>(
    s: S,
    x: &[f32],
    dy: &[f32],
    (start, rows, stride): (usize, usize, usize),
    col: usize,
    mcol: usize,
    last: usize,
    m: &[f32],
    mid: &mut Mid<'_>,
) {
    let l = S::LANES;
    let zero = s.splat(0.0);
    let width = (T - 1) * l + last;
    let mut mv = [zero; T];
    for (j, v) in mv.iter_mut().enumerate() {
        let c = mcol + col + j * l;
        *v = if j + 1 < T || last == l { s.load(&m[c..]) } else { s.load_part(&m[c..c + last], zero) };
    }
    let mut r = 0;
    while r < rows {
        let end = (r + CHAIN * U).min(rows);
        let mut a = [[[zero; T]; U]; 3];
        while r + U <= end {
            for u in 0..U {
                let at = start + (r + u) * stride + col;
                add_row::<S, T, U>(s, &x[at..at + width], &dy[at..at + width], last, &mv, &mut a, u);
            }
            r += U;
        }
        while r < end {
            let at = start + r * stride + col;
            add_row::<S, T, U>(s, &x[at..at + width], &dy[at..at + width], last, &mv, &mut a, 0);
            r += 1;
        }
        for (q, acc) in a.iter().enumerate() {
            for j in 0..T {
                let mut v = acc[0][j];
                if U == 4 {
                    v = s.add(s.add(acc[0][j], acc[1][j]), s.add(acc[2][j], acc[3][j]));
                } else {
                    for set in &acc[1..] {
                        v = s.add(v, set[j]);
                    }
                }
                // `mid` rows are G long, G a multiple of LANES and the positions at most G: in bounds.
                let c = mcol + col + j * l;
                let sum = s.add(s.load(&mid.v[q][c..]), v);
                s.store(&mut mid.v[q][c..], sum);
            }
        }
    }
}

/// One row's `T` vectors (`xr`, `dyr`: the tile's values, the last vector `last` lanes) into
/// accumulator set `u`.
#[inline(always)]
fn add_row<S: Simd, const T: usize, const U: usize>(
    s: S,
    xr: &[f32],
    dyr: &[f32],
    last: usize,
    mv: &[S::V; T],
    a: &mut [[[S::V; T]; U]; 3],
    u: usize,
) {
    let l = S::LANES;
    let zero = s.splat(0.0);
    for j in 0..T {
        let i = j * l;
        let (xv, d) = if j + 1 < T || last == l {
            (s.load(&xr[i..]), s.load(&dyr[i..]))
        } else {
            (s.load_part(&xr[i..i + last], mv[j]), s.load_part(&dyr[i..i + last], zero))
        };
        let xm = s.sub(xv, mv[j]);
        a[0][u][j] = s.add(a[0][u][j], d);
        a[1][u][j] = s.mul_add(d, xm, a[1][u][j]);
        a[2][u][j] = s.add(a[2][u][j], xm);
    }
}

/// The element pass over channels `c0..c1` with their coefficients `coef` (`c1 − c0` long), in place
/// (`IP`: `dy` read from `dx`) or not; `co` is scratch for the position patterns.
#[allow(clippy::too_many_arguments)]
#[inline(always)]
fn elem_range<S: BackPieces, const IP: bool, const N: usize>(
    s: S,
    desc: &TensorDesc,
    d: Bufs<'_>,
    train: bool,
    c0: usize,
    c1: usize,
    coef: &[Coef],
    co: &mut Coefs<'_, N>,
    stream: bool,
) {
    // The buffers and patterns go by value: the outlined pass keeps them as its own locals, as when it
    // was inlined here. Zen 4, AVX-512, 1×1024×14×14 from the cache, the element pass alone against the
    // inlined one: 2–5 % slower behind references, 1–3 % by value (while the whole call, reduce half
    // included, got 1–6 % faster out of line).
    let co = Coefs { c: &mut *co.c };
    if train {
        s.elem::<IP, true, N>(desc, d, (c0, c1), coef, co, stream)
    } else {
        s.elem::<IP, false, N>(desc, d, (c0, c1), coef, co, stream)
    }
}

/// [`elem_range`] for training (`TRAIN`) or global statistics.
#[allow(clippy::too_many_arguments)]
#[inline(always)]
pub(crate) fn elem_layout<S: Simd, const IP: bool, const TRAIN: bool, const N: usize>(
    s: S,
    desc: &TensorDesc,
    d: &mut Bufs<'_>,
    c0: usize,
    c1: usize,
    coef: &[Coef],
    co: &mut Coefs<'_, N>,
    stream: bool,
) {
    let sh = desc.shape();
    match kind(desc) {
        Kind::Planes => {
            // Each sample's planes of the chunk are one contiguous run.
            for n in 0..sh.n {
                let at = (n * sh.c + c0) * sh.spatial;
                elem_planes::<S, IP, TRAIN>(s, d, at, sh.spatial, coef, stream);
            }
        }
        Kind::Channels => {
            let w = row_width(desc, c0, c1);
            let rows = sh.n * sh.spatial;
            if w == row_len(desc) && w + S::LANES <= N {
                // Whole rows: the tensor is one contiguous run (a single segment) whose channels repeat
                // every `w`.
                fill_pattern(co, 0, coef, w + S::LANES, w);
                let run =
                    Segs { start: 0, seg: rows * w, count: 1, p: w, ps: w + S::LANES, masked: w > c1 - c0 };
                elem_segs_any::<S, IP, TRAIN, N>(s, d, &run, co, stream);
            } else {
                fill_pattern(co, 0, coef, w, w);
                let strip = Strip { start: c0, rows, stride: row_len(desc), width: w };
                elem_strip::<S, IP, TRAIN, N>(s, d, &strip, co, stream);
            }
        }
        Kind::Blocked(b) => {
            let blocks = sh.c.div_ceil(b);
            let l = S::LANES;
            let p = b.max(l);
            let len = sh.spatial * b;
            // Sample by sample, the planes of as many of the chunk's blocks as the patterns hold (a
            // period and a vector each), in address order. Blocks of whole vectors whose output is not
            // streamed from a misaligned head (so every vector starts at offset 0 of its period) have no
            // vector across planes nor past the period: their patterns are the channels' coefficients
            // end to end, a vector of slack after the group, half the positions to fill (nChw16c
            // 1×1024×14×14 from the cache, AVX-512, Zen 4: the fill was 9 % of the element pass).
            let aligned = (d.dx.as_ptr() as usize / 4).is_multiple_of(l);
            let whole = b.is_multiple_of(l) && (!stream || aligned);
            let ps = if whole { p } else { p + l };
            let per = (if whole { N.saturating_sub(l) / ps } else { N / ps }).max(1);
            let (cb0, cb1) = (c0 / b, c1.div_ceil(b));
            let mut g0 = cb0;
            while g0 < cb1 {
                let g1 = (g0 + per).min(cb1);
                if whole {
                    let (first, gw) = (g0 * b - c0, (g1 - g0) * b);
                    let live = (c1 - c0 - first).min(gw);
                    fill_pattern(co, 0, &coef[first..first + live], gw, gw);
                } else {
                    for cb in g0..g1 {
                        let first = cb * b - c0;
                        let live = (c1 - c0 - first).min(b);
                        fill_pattern(co, (cb - g0) * ps, &coef[first..first + live], ps, b);
                    }
                }
                // Padding lanes only in the last block of the tensor.
                let masked = g1 * b > sh.c;
                for n in 0..sh.n {
                    // The group's planes of sample `n` are one contiguous run: segments of `len` values,
                    // each repeating its block's channels every `b`.
                    let run =
                        Segs { start: (n * blocks + g0) * len, seg: len, count: g1 - g0, p, ps, masked };
                    elem_segs_any::<S, IP, TRAIN, N>(s, d, &run, co, stream);
                }
                g0 = g1;
            }
        }
    }
}

/// `count` contiguous segments of `seg` values from `start`, segment `q`'s coefficients repeating every
/// `p` values, its patterns at `q·ps` (filled for `p + LANES` positions).
#[derive(Clone, Copy)]
struct Segs {
    start: usize,
    seg: usize,
    count: usize,
    p: usize,
    ps: usize,
    /// Whether any position of the patterns is padding (a clear mask).
    masked: bool,
}

/// [`elem_segs`] with the coefficients of periods of one, two or four vectors held in registers, other
/// periods' loaded per vector (from L1).
#[inline(always)]
fn elem_segs_any<S: Simd, const IP: bool, const TRAIN: bool, const N: usize>(
    s: S,
    d: &mut Bufs<'_>,
    g: &Segs,
    co: &Coefs<'_, N>,
    stream: bool,
) {
    let l = S::LANES;
    let v = if g.p.is_multiple_of(l) { g.p / l } else { 0 };
    match v {
        1 => elem_segs::<S, IP, TRAIN, 1, N>(s, d, g, co, stream),
        2 => elem_segs::<S, IP, TRAIN, 2, N>(s, d, g, co, stream),
        4 => elem_segs::<S, IP, TRAIN, 4, N>(s, d, g, co, stream),
        _ => elem_segs::<S, IP, TRAIN, 0, N>(s, d, g, co, stream),
    }
}

/// The element pass over a [`Segs`] run (the blocked planes of one sample). Vectors inside a segment
/// read their coefficients from its patterns at the vector's offset in the period; a vector across
/// segments blends each segment's result. With `stream`, the values up to a vector-aligned output
/// address are done first, so every full vector after them streams: whole lines, whatever the planes'
/// length (nChw4c planes of 49 positions are 784 bytes, not whole lines).
#[inline(always)]
fn elem_segs<S: Simd, const IP: bool, const TRAIN: bool, const V: usize, const N: usize>(
    s: S,
    d: &mut Bufs<'_>,
    g: &Segs,
    co: &Coefs<'_, N>,
    stream: bool,
) {
    let l = S::LANES;
    let len = g.seg * g.count;
    let x = if TRAIN { &d.x[g.start..g.start + len] } else { d.x };
    let dy = if IP { d.dy } else { &d.dy[g.start..g.start + len] };
    let ahead = Ahead::of::<IP>(d, g.start);
    let dx = &mut d.dx[g.start..g.start + len];
    let zero = s.splat(0.0);
    let mut i = 0;
    if stream {
        let head = ((l - (dx.as_ptr() as usize / 4) % l) % l).min(len);
        if head > 0 {
            let dyv = if IP { s.load_part(&dx[..head], zero) } else { s.load_part(&dy[..head], zero) };
            let xv = if TRAIN { s.load_part(&x[..head], zero) } else { dyv };
            let v = segs_vector::<S, TRAIN, N>(s, xv, dyv, g, 0, 0, co);
            s.store_part(&mut dx[..head], v);
            i = head;
        }
    }
    // Segment `q`, offset `r` in it, offset `o = r mod p` in the period.
    let (mut q, mut r) = (i / g.seg, i % g.seg);
    let mut o = r % g.p;
    while i + l <= len {
        if r + l <= g.seg {
            // The full vectors inside segment q: with `V` vectors per period, its coefficients in
            // registers (`p = V·LANES`, so vector `k` has those of `k mod V`).
            let inside = ((g.seg - r) / l).min((len - i) / l);
            let pb = q * g.ps;
            if V > 0 {
                let mut c = [[zero; 4]; V];
                let mut mask = [zero; V];
                for v in 0..V {
                    (c[v], mask[v]) = pattern_at(s, co, pb + (o + v * l) % g.p);
                }
                let run = (x, dy, &mut *dx, i, inside);
                match (g.masked, stream) {
                    (true, true) => held_coefs::<S, IP, TRAIN, V, true, true>(s, run, &c, &mask, ahead),
                    (true, false) => held_coefs::<S, IP, TRAIN, V, true, false>(s, run, &c, &mask, ahead),
                    (false, true) => held_coefs::<S, IP, TRAIN, V, false, true>(s, run, &c, &mask, ahead),
                    (false, false) => held_coefs::<S, IP, TRAIN, V, false, false>(s, run, &c, &mask, ahead),
                }
            } else {
                // The flags decided once per stretch, not per vector (their registers spilled).
                let run = (x, dy, &mut *dx, i, inside);
                match (g.masked, stream) {
                    (true, true) => {
                        loaded_coefs::<S, IP, TRAIN, N, true, true>(s, run, co, (pb, o, g.p), ahead)
                    }
                    (true, false) => {
                        loaded_coefs::<S, IP, TRAIN, N, true, false>(s, run, co, (pb, o, g.p), ahead)
                    }
                    (false, true) => {
                        loaded_coefs::<S, IP, TRAIN, N, false, true>(s, run, co, (pb, o, g.p), ahead)
                    }
                    (false, false) => {
                        loaded_coefs::<S, IP, TRAIN, N, false, false>(s, run, co, (pb, o, g.p), ahead)
                    }
                }
            }
            i += inside * l;
            r += inside * l;
        } else {
            let dyv = if IP { s.load(&dx[i..]) } else { s.load(&dy[i..]) };
            let xv = if TRAIN { s.load(&x[i..]) } else { dyv };
            let v = segs_vector::<S, TRAIN, N>(s, xv, dyv, g, q, r, co);
            if stream {
                s.stream(&mut dx[i..], v);
            } else {
                s.store(&mut dx[i..], v);
            }
            i += l;
            r += l;
        }
        while r >= g.seg && q + 1 < g.count {
            r -= g.seg;
            q += 1;
        }
        o = r % g.p;
    }
    if i < len {
        let n = len - i;
        let dyv = if IP { s.load_part(&dx[i..], zero) } else { s.load_part(&dy[i..], zero) };
        let xv = if TRAIN { s.load_part(&x[i..], zero) } else { dyv };
        let v = segs_vector::<S, TRAIN, N>(s, xv, dyv, g, q, r, co);
        s.store_part(&mut dx[i..i + n], v);
    }
}

/// `count` full vectors of `dx` from `i`, vector `k` with the coefficients `c[k mod V]` (and mask, with
/// `MASKED`) held in registers; with `STREAM` the stores are non-temporal. Four vectors a step, each
/// step's slices cut once, so the loop is loads, arithmetic and stores (a vector a step tested the
/// store flag and bounds per vector). Backward of 1×1024×14×14 from the cache, AVX-512, Zen 4:
/// nChw16c 52–53 → 51 µs, nChw8c 59–60 → 57.6 µs; from memory (32×2048×7×7) within the noise.
#[allow(clippy::type_complexity)]
#[inline(always)]
fn held_coefs<
    S: Simd,
    const IP: bool,
    const TRAIN: bool,
    const V: usize,
    const MASKED: bool,
    const STREAM: bool,
>(
    s: S,
    (x, dy, dx, i, count): (&[f32], &[f32], &mut [f32], usize, usize),
    c: &[[S::V; 4]; V],
    mask: &[S::V; V],
    ahead: Ahead,
) {
    const U: usize = 4;
    let l = S::LANES;
    let step = U * l;
    let mut k = 0;
    while k + U <= count {
        let at = i + k * l;
        ahead.fetch(s, at, step);
        let xq = if TRAIN { &x[at..at + step] } else { x };
        let dq = if IP { dy } else { &dy[at..at + step] };
        let oq = &mut dx[at..at + step];
        for u in 0..U {
            // (`k` is a multiple of U, U of V: vector `k + u` has the coefficients of `u mod V`.)
            let v = u % V;
            if MASKED {
                elem_vec::<S, IP, TRAIN>(s, (xq, dq, &mut *oq), u * l, c[v], mask[v], STREAM);
            } else {
                elem_vec_all::<S, IP, TRAIN>(s, (xq, dq, &mut *oq), u * l, c[v], STREAM);
            }
        }
        k += U;
    }
    while k < count {
        let v = k % V;
        if MASKED {
            elem_vec::<S, IP, TRAIN>(s, (x, dy, &mut *dx), i + k * l, c[v], mask[v], STREAM);
        } else {
            elem_vec_all::<S, IP, TRAIN>(s, (x, dy, &mut *dx), i + k * l, c[v], STREAM);
        }
        k += 1;
    }
}

/// `count` full vectors of `dx` from `i` whose coefficients are loaded per vector from the patterns
/// at `pb + o`, `o` advancing by a vector modulo the period `p`. With `MASKED`, padding lanes are
/// cleared (otherwise no mask is loaded: five loads per vector become four; channels-last rows from the
/// cache, bn1d 256×512 on AVX-512: 23 → 27 GB/s); with `STREAM` the stores are non-temporal.
#[allow(clippy::type_complexity)]
#[inline(always)]
fn loaded_coefs<
    S: Simd,
    const IP: bool,
    const TRAIN: bool,
    const N: usize,
    const MASKED: bool,
    const STREAM: bool,
>(
    s: S,
    (x, dy, dx, i, count): (&[f32], &[f32], &mut [f32], usize, usize),
    co: &Coefs<'_, N>,
    (pb, o, p): (usize, usize, usize),
    ahead: Ahead,
) {
    const U: usize = 4;
    let l = S::LANES;
    let step = U * l;
    let mut oo = o;
    let mut k = 0;
    while k < count {
        // The vectors starting before the period's end (a vector past it is in the patterns), four a
        // step with each step's slices cut once, then the wrap: a vector a step, testing the wrap per
        // vector, spilled its pointers (channels-last rows from the cache).
        let n = (p - oo).div_ceil(l).min(count - k);
        let mut j = 0;
        while j + U <= n {
            let at = i + (k + j) * l;
            ahead.fetch(s, at, step);
            let xq = if TRAIN { &x[at..at + step] } else { x };
            let dq = if IP { dy } else { &dy[at..at + step] };
            let oq = &mut dx[at..at + step];
            for u in 0..U {
                let ob = pb + oo + (j + u) * l;
                let c = coefs_at(s, co, ob);
                if MASKED {
                    elem_vec::<S, IP, TRAIN>(s, (xq, dq, &mut *oq), u * l, c, mask_at(s, co, ob), STREAM);
                } else {
                    elem_vec_all::<S, IP, TRAIN>(s, (xq, dq, &mut *oq), u * l, c, STREAM);
                }
            }
            j += U;
        }
        while j < n {
            let ob = pb + oo + j * l;
            let c = coefs_at(s, co, ob);
            let at = i + (k + j) * l;
            if MASKED {
                elem_vec::<S, IP, TRAIN>(s, (x, dy, &mut *dx), at, c, mask_at(s, co, ob), STREAM);
            } else {
                elem_vec_all::<S, IP, TRAIN>(s, (x, dy, &mut *dx), at, c, STREAM);
            }
            j += 1;
        }
        k += n;
        oo += n * l;
        if oo >= p {
            // Periods shorter than a vector (channels-last rows of a few channels) wrap more than once.
            oo = if oo - p < p { oo - p } else { oo % p };
        }
    }
}

/// `dx` of the vector whose lane 0 is value `r` of segment `q`: each segment's lanes with its
/// coefficients (lanes past the last segment take the last one's).
#[allow(clippy::too_many_arguments)]
#[inline(always)]
fn segs_vector<S: Simd, const TRAIN: bool, const N: usize>(
    s: S,
    xv: S::V,
    dyv: S::V,
    g: &Segs,
    q: usize,
    r: usize,
    co: &Coefs<'_, N>,
) -> S::V {
    let l = S::LANES;
    let (c, mask) = pattern_at(s, co, q * g.ps + r % g.p);
    let mut v = s.and(grad::<S, TRAIN>(s, xv, dyv, c), mask);
    let mut k = g.seg - r;
    let mut qq = q;
    while k < l && qq + 1 < g.count {
        qq += 1;
        // Lane k is offset 0 of segment qq: lane 0 is offset −k, i.e. (−k) mod p in its period.
        let (c, mask) = pattern_at(s, co, qq * g.ps + (g.p - k % g.p) % g.p);
        let vj = s.and(grad::<S, TRAIN>(s, xv, dyv, c), mask);
        v = s.blend_first(k, v, vj);
        k += g.seg;
    }
    v
}

/// The element pass's buffers: `dy` is empty in place (read from `dx`). `ahead` (0 for none): the
/// distance in floats from a position of this chunk to the same position of the next chunk, whose x and
/// dy lines the pass fetches into L2 beside its own (see [`backward`]).
pub(crate) struct Bufs<'a> {
    x: &'a [f32],
    dy: &'a [f32],
    dx: &'a mut [f32],
    ahead: usize,
}

/// Where the next chunk's x and dy lie for the element pass of a run: position `at` of the run is at
/// `x.wrapping_add(at)` and `dy.wrapping_add(at)` there (addresses only hinted at, never read).
#[derive(Clone, Copy)]
struct Ahead {
    x: *const f32,
    dy: *const f32,
    on: bool,
}

impl Ahead {
    /// The next chunk's lines for the run starting at position `start` of `d`'s buffers.
    #[inline(always)]
    fn of<const IP: bool>(d: &Bufs<'_>, start: usize) -> Ahead {
        let dy = if IP { d.dx.as_ptr() } else { d.dy.as_ptr() };
        let at = start.wrapping_add(d.ahead);
        Ahead { x: d.x.as_ptr().wrapping_add(at), dy: dy.wrapping_add(at), on: d.ahead != 0 }
    }

    /// Fetches into L2 the next chunk's x and dy lines of positions `at..at + n` of the run.
    #[inline(always)]
    fn fetch<S: Simd>(&self, s: S, at: usize, n: usize) {
        if self.on {
            let mut o = 0;
            while o < n {
                s.prefetch_l2_at(self.x.wrapping_add(at + o));
                s.prefetch_l2_at(self.dy.wrapping_add(at + o));
                o += LINE_FLOATS;
            }
        }
    }
}

/// `LANES` values of `dy` at `i` (from `dx` in place).
#[inline(always)]
fn load_dy<S: Simd, const IP: bool>(s: S, dy: &[f32], dx: &[f32], i: usize) -> S::V {
    if IP { s.load(&dx[i..]) } else { s.load(&dy[i..]) }
}

/// `n < LANES` values of `dy` at `i`, other lanes 0.
#[inline(always)]
fn load_dy_part<S: Simd, const IP: bool>(s: S, dy: &[f32], dx: &[f32], i: usize, n: usize) -> S::V {
    let z = s.splat(0.0);
    if IP { s.load_part(&dx[i..i + n], z) } else { s.load_part(&dy[i..i + n], z) }
}

/// Position `at + i` (`i < w`) of the patterns gets channel `i % period`'s coefficients
/// (`coef[i % period]`, or zeros and a clear mask past `coef`: padding).
#[inline(always)]
fn fill_pattern<const N: usize>(co: &mut Coefs<'_, N>, at: usize, coef: &[Coef], w: usize, period: usize) {
    // The first period by four plain loops (padding included), then its copies, doubling: a position
    // at a time, five scalar stores each, was a quarter of a backward call's fixed cost (NHWC 1×1024×1
    // on AVX-512, Zen 4). Every copy starts a multiple of the period in, so position `i` holds channel
    // `i % period`.
    let period = period.max(1);
    let first = period.min(w);
    fill_blocks(co, at, coef, first);
    let mut i = first;
    while i < w {
        let n = i.min(w - i);
        for row in co.c.iter_mut() {
            row.copy_within(at..at + n, at + i);
        }
        i += n;
    }
}

/// Positions `at..at + w` of the patterns: the coefficients `coef` end to end, then padding (zero,
/// masked).
#[inline(always)]
fn fill_blocks<const N: usize>(co: &mut Coefs<'_, N>, at: usize, coef: &[Coef], w: usize) {
    let n = coef.len().min(w);
    // Four plain loops of strided loads, not one of five scalar stores per position.
    for (j, row) in co.c[..4].iter_mut().enumerate() {
        for (d, c) in row[at..at + n].iter_mut().zip(coef) {
            *d = c[j];
        }
        row[at + n..at + w].fill(0.0);
    }
    co.c[4][at..at + n].fill(LIVE);
    co.c[4][at + n..at + w].fill(0.0);
}

/// The coefficients (and mask) of the `LANES` positions from pattern offset `o`.
#[inline(always)]
fn pattern_at<S: Simd, const N: usize>(s: S, co: &Coefs<'_, N>, o: usize) -> ([S::V; 4], S::V) {
    (coefs_at(s, co, o), mask_at(s, co, o))
}

/// The mask of the `LANES` positions from pattern offset `o`.
#[inline(always)]
fn mask_at<S: Simd, const N: usize>(s: S, co: &Coefs<'_, N>, o: usize) -> S::V {
    s.load(&co.c[4][o..])
}

/// The coefficients of the `LANES` positions from pattern offset `o`.
#[inline(always)]
fn coefs_at<S: Simd, const N: usize>(s: S, co: &Coefs<'_, N>, o: usize) -> [S::V; 4] {
    [s.load(&co.c[0][o..]), s.load(&co.c[1][o..]), s.load(&co.c[2][o..]), s.load(&co.c[3][o..])]
}

/// `dx` of one vector: `a·(dy − mdy) + k·(x − m)` in training mode, `a·dy` with global statistics.
#[inline(always)]
fn grad<S: Simd, const TRAIN: bool>(s: S, x: S::V, dy: S::V, c: [S::V; 4]) -> S::V {
    if TRAIN { s.mul_add(c[1], s.sub(x, c[2]), s.mul(c[0], s.sub(dy, c[3]))) } else { s.mul(c[0], dy) }
}

/// One full vector of `dx` at `i` with coefficients `c`, and lane mask `mask` (padding lanes 0).
#[inline(always)]
fn elem_vec<S: Simd, const IP: bool, const TRAIN: bool>(
    s: S,
    (x, dy, dx): (&[f32], &[f32], &mut [f32]),
    i: usize,
    c: [S::V; 4],
    mask: S::V,
    stream: bool,
) {
    let dyv = load_dy::<S, IP>(s, dy, dx, i);
    let xv = if TRAIN { s.load(&x[i..]) } else { dyv };
    let v = s.and(grad::<S, TRAIN>(s, xv, dyv, c), mask);
    if stream { s.stream(&mut dx[i..], v) } else { s.store(&mut dx[i..], v) }
}

/// [`elem_vec`] where every lane is a channel (no mask).
#[inline(always)]
fn elem_vec_all<S: Simd, const IP: bool, const TRAIN: bool>(
    s: S,
    (x, dy, dx): (&[f32], &[f32], &mut [f32]),
    i: usize,
    c: [S::V; 4],
    stream: bool,
) {
    let dyv = load_dy::<S, IP>(s, dy, dx, i);
    let xv = if TRAIN { s.load(&x[i..]) } else { dyv };
    let v = grad::<S, TRAIN>(s, xv, dyv, c);
    if stream { s.stream(&mut dx[i..], v) } else { s.store(&mut dx[i..], v) }
}

/// `n < LANES` values of `dx` at `i`.
#[inline(always)]
fn elem_part<S: Simd, const IP: bool, const TRAIN: bool>(
    s: S,
    (x, dy, dx): (&[f32], &[f32], &mut [f32]),
    i: usize,
    n: usize,
    c: [S::V; 4],
    mask: S::V,
) {
    let dyv = load_dy_part::<S, IP>(s, dy, dx, i, n);
    let xv = if TRAIN { s.load_part(&x[i..i + n], s.splat(0.0)) } else { dyv };
    let v = s.and(grad::<S, TRAIN>(s, xv, dyv, c), mask);
    s.store_part(&mut dx[i..i + n], v);
}

/// The element pass over a strip of any width, coefficients from the patterns (loaded per row: L1).
#[inline(always)]
fn elem_strip<S: Simd, const IP: bool, const TRAIN: bool, const N: usize>(
    s: S,
    d: &mut Bufs<'_>,
    strip: &Strip,
    co: &Coefs<'_, N>,
    stream: bool,
) {
    let l = S::LANES;
    let w = strip.width;
    let (x, dy, dx) = (d.x, d.dy, &mut *d.dx);
    for r in 0..strip.rows {
        let at = strip.start + r * strip.stride;
        let mut j = 0;
        while j < w {
            let n = (w - j).min(l);
            // Pattern arrays are G long, G a multiple of LANES and w ≤ G: full loads are in bounds.
            let (c, mask) = pattern_at(s, co, j);
            if n == l {
                elem_vec::<S, IP, TRAIN>(s, (x, dy, &mut *dx), at + j, c, mask, stream);
            } else {
                elem_part::<S, IP, TRAIN>(s, (x, dy, &mut *dx), at + j, n, c, mask);
            }
            j += n;
        }
    }
}

/// The element pass over a contiguous run of `coef.len()` planes of `seg` values, plane `j` with the
/// coefficients `coef[j]`. Vectors inside a plane use its coefficients splatted in registers; a vector
/// across planes blends the results of each. With `stream`, the values up to a vector-aligned output
/// address are done first, so every full vector after them streams (whole lines: small planes no
/// longer leave partial lines between ordinary stores).
#[inline(always)]
fn elem_planes<S: Simd, const IP: bool, const TRAIN: bool>(
    s: S,
    d: &mut Bufs<'_>,
    at: usize,
    seg: usize,
    coef: &[Coef],
    stream: bool,
) {
    let l = S::LANES;
    let count = coef.len();
    let len = seg * count;
    let x = if TRAIN { &d.x[at..at + len] } else { d.x };
    let dy = if IP { d.dy } else { &d.dy[at..at + len] };
    let ahead = Ahead::of::<IP>(d, at);
    let dx = &mut d.dx[at..at + len];
    let zero = s.splat(0.0);
    let mut i = 0;
    if stream {
        let head = ((l - (dx.as_ptr() as usize / 4) % l) % l).min(len);
        if head > 0 {
            let dyv = if IP { s.load_part(&dx[..head], zero) } else { s.load_part(&dy[..head], zero) };
            let xv = if TRAIN { s.load_part(&x[..head], zero) } else { dyv };
            let v = seg_vector::<S, TRAIN>(s, xv, dyv, 0, 0, seg, coef);
            s.store_part(&mut dx[..head], v);
            i = head;
        }
    }
    let (mut j, mut off) = (i / seg, i % seg);
    let mut cv = splat_coef(s, coef[j.min(count - 1)]);
    while i + l <= len {
        ahead.fetch(s, i, l);
        let dyv = if IP { s.load(&dx[i..]) } else { s.load(&dy[i..]) };
        let xv = if TRAIN { s.load(&x[i..]) } else { dyv };
        let v = if off + l <= seg {
            grad::<S, TRAIN>(s, xv, dyv, cv)
        } else {
            seg_vector::<S, TRAIN>(s, xv, dyv, j, off, seg, coef)
        };
        if stream {
            s.stream(&mut dx[i..], v);
        } else {
            s.store(&mut dx[i..], v);
        }
        i += l;
        off += l;
        if off >= seg {
            while off >= seg && j + 1 < count {
                off -= seg;
                j += 1;
            }
            cv = splat_coef(s, coef[j]);
        }
    }
    if i < len {
        let n = len - i;
        let dyv = if IP { s.load_part(&dx[i..], zero) } else { s.load_part(&dy[i..], zero) };
        let xv = if TRAIN { s.load_part(&x[i..], zero) } else { dyv };
        let v = seg_vector::<S, TRAIN>(s, xv, dyv, j, off, seg, coef);
        s.store_part(&mut dx[i..i + n], v);
    }
}

/// A channel's coefficients as vectors.
#[inline(always)]
fn splat_coef<S: Simd>(s: S, c: Coef) -> [S::V; 4] {
    [s.splat(c[0]), s.splat(c[1]), s.splat(c[2]), s.splat(c[3])]
}

/// `dx` of the vector whose lane 0 is value `off` of plane `j`: each plane's lanes with its
/// coefficients (lanes past the last plane take the last plane's).
#[inline(always)]
fn seg_vector<S: Simd, const TRAIN: bool>(
    s: S,
    xv: S::V,
    dyv: S::V,
    j: usize,
    off: usize,
    seg: usize,
    coef: &[Coef],
) -> S::V {
    let l = S::LANES;
    let mut v = grad::<S, TRAIN>(s, xv, dyv, splat_coef(s, coef[j]));
    let mut k = seg - off;
    let mut jj = j;
    while k < l && jj + 1 < coef.len() {
        jj += 1;
        let vj = grad::<S, TRAIN>(s, xv, dyv, splat_coef(s, coef[jj]));
        v = s.blend_first(k, v, vj);
        k += seg;
    }
    v
}
