#![forbid(unsafe_code)]
//! Per-layout drivers of every operation: [`moments_op`], [`training_op`] and [`normalize_op`], which
//! each tier instantiates in one `#[inline(never)]` entry point per operation (`crate::arch`).
//!
//! Kernels are chosen by memory order, not by the layout's name: NCHW with spatial size 1 is the same
//! memory as NHWC and runs the channels-last kernels.
//!
//! Training works chunk by chunk of channels: the statistics of a chunk are computed (one read of its
//! data), then the chunk is normalised while its data is still in cache, so x comes from memory once.
//! Outputs far larger than the cache are written with non-temporal stores.

use super::normalize::{
    PBUF_BLOCK, Params, Periodic, PlaneSegs, RefSegs, RowParams, fill_scale, normalize_run,
    overflowed_output, reduced_scale,
};
use super::stats::{PlaneStats, Weight, contiguous_moments};
use super::{Epi, Epilogue, GROUP, Io, Prefetch, Rows, WIDE_GROUP};
use crate::arch::Simd;
use crate::layout::{Layout, TensorDesc};
use crate::partial::Partial;

// Training chunks hold about `tuning().train_chunk_bytes` of x (when a channel's data allows), so that
// the normalise pass re-reads them from the core's L2 cache; outputs of at least
// `tuning().stream_min_bytes` are written with non-temporal stores, smaller ones stay in cache for the
// next layer. Both come from the running CPU's cache sizes (`crate::tuning`).
use crate::tuning;

/// Channel blocks whose parameters the blocked normalise pass keeps ready at once (about 9 KB of stack).
const BLOCK_GROUP: usize = 16;

/// In- or out-of-place data of a normalising call.
pub(crate) enum Data<'a> {
    Split(&'a [f32], &'a mut [f32]),
    InPlace(&'a mut [f32]),
}

/// Where a normalising pass takes its per-channel parameters from.
#[derive(Clone, Copy)]
pub(crate) enum ParamSrc<'a> {
    /// `scale = γ/√(var + ε)`, centred on `mean`, shifted by `β`; with `lo` (the part of each mean below
    /// its f32 rounding, from partial statistics) centred on `mean + lo` exactly as training centres on
    /// its batch mean (`shift_past_mean`), so that the outputs are training's bits.
    Stats {
        mean: &'a [f32],
        lo: Option<&'a [f32]>,
        var: &'a [f32],
        gamma: Option<&'a [f32]>,
        beta: Option<&'a [f32]>,
        eps: f32,
    },
    /// `y = x·scale + shift`.
    Affine { scale: &'a [f32], shift: &'a [f32] },
    /// Finished merged partial statistics, normalised as `Stats` with their `lo`.
    Partials { partials: &'a [Partial], gamma: Option<&'a [f32]>, beta: Option<&'a [f32]>, eps: f32 },
}

impl<'a> ParamSrc<'a> {
    /// The parameters of channels `c0..c1` only, for a part of the tensor holding those channels.
    #[cfg(feature = "rayon")]
    pub(crate) fn cut(&self, c0: usize, c1: usize) -> ParamSrc<'a> {
        let cut = |s: Option<&'a [f32]>| s.map(|s| &s[c0..c1]);
        match *self {
            ParamSrc::Stats { mean, lo, var, gamma, beta, eps } => ParamSrc::Stats {
                mean: &mean[c0..c1],
                lo: cut(lo),
                var: &var[c0..c1],
                gamma: cut(gamma),
                beta: cut(beta),
                eps,
            },
            ParamSrc::Affine { scale, shift } => {
                ParamSrc::Affine { scale: &scale[c0..c1], shift: &shift[c0..c1] }
            }
            ParamSrc::Partials { partials, gamma, beta, eps } => {
                ParamSrc::Partials { partials: &partials[c0..c1], gamma: cut(gamma), beta: cut(beta), eps }
            }
        }
    }

    /// γ, if the parameters have one.
    pub(crate) fn gamma(&self) -> Option<&'a [f32]> {
        match *self {
            ParamSrc::Stats { gamma, .. } | ParamSrc::Partials { gamma, .. } => gamma,
            ParamSrc::Affine { .. } => None,
        }
    }
}

/// A validated call, ready for a tier.
pub(crate) enum Call<'a> {
    Moments {
        desc: &'a TensorDesc,
        x: &'a [f32],
        mean: &'a mut [f32],
        var: &'a mut [f32],
    },
    Partials {
        desc: &'a TensorDesc,
        x: &'a [f32],
        out: &'a mut [Partial],
    },
    /// The statistics of channels `c0..c1` only (`mean`, `lo`, `var`: `c1 - c0` long), channel by
    /// channel as `moments` and training compute them: for the parallel front end, which gives each
    /// thread whole channels. Ranges of NCHW channels, of whole blocks, or of channels-last columns cut
    /// as `par::column_per` cuts them (multiples of 128 channels, the last at least 64 wide or a whole
    /// chunk), which `rows_moments` walks as it walks their chunk.
    #[cfg(feature = "rayon")]
    RangeMoments {
        desc: &'a TensorDesc,
        x: &'a [f32],
        c0: usize,
        c1: usize,
        mean: &'a mut [f32],
        lo: &'a mut [f32],
        var: &'a mut [f32],
    },
    Training {
        desc: &'a TensorDesc,
        data: Data<'a>,
        gamma: Option<&'a [f32]>,
        beta: Option<&'a [f32]>,
        eps: f32,
        mean: &'a mut [f32],
        var: &'a mut [f32],
        epi: Epi<'a>,
    },
    Normalize {
        desc: &'a TensorDesc,
        data: Data<'a>,
        params: ParamSrc<'a>,
        epi: Epi<'a>,
    },
    /// The normalise pass with merged partial statistics (`forward_from_partials`): its own entry points,
    /// so that the partials' f64 finish is linked only where it is called.
    NormalizePartials {
        desc: &'a TensorDesc,
        data: Data<'a>,
        partials: &'a [Partial],
        gamma: Option<&'a [f32]>,
        beta: Option<&'a [f32]>,
        eps: f32,
        epi: Epi<'a>,
    },
    /// ReLU's backward: `dy` where the forward output `y` is above 0, else +0.
    ReluGrad {
        y: &'a [f32],
        data: Data<'a>,
    },
    /// The backward pass, its element half (`params.sums` given) or its reduce half
    /// (`GradData::Reduce`).
    Backward {
        desc: &'a TensorDesc,
        x: &'a [f32],
        data: super::backward::GradData<'a>,
        params: super::backward::BackParams<'a>,
        out: super::backward::BackOut<'a>,
    },
    /// The streaming-limit reference passes (see `kernels::limit`).
    ReadPass {
        x: &'a [f32],
        sum: &'a mut f32,
    },
    ScalePass {
        x: &'a [f32],
        y: &'a mut [f32],
        stream: bool,
    },
}

/// Per-channel statistics (the `moments` operation) with tier `s`. This and the other `*_op` functions
/// are `#[inline(always)]` all the way down, so each is compiled inside its tier's entry point (and with
/// its target features): one entry point per operation and tier (`crate::arch`).
#[inline(always)]
pub(crate) fn moments_op<S: Outlined>(s: S, desc: &TensorDesc, x: &[f32], mean: &mut [f32], var: &mut [f32]) {
    if S::COMPACT {
        super::compact::moments(desc, x, mean, var);
        return;
    }
    if wide(desc) {
        moments::<S, WIDE_GROUP, true>(s, desc, x, mean, var)
    } else {
        moments::<S, GROUP, false>(s, desc, x, mean, var)
    }
}

/// Training forward (statistics, then normalisation chunk by chunk) with tier `s`, the vector passes'
/// epilogue `f` (one entry point per epilogue type: a function holding several copies of the pass took
/// LLVM minutes to compile), `e` the same epilogue for the scalar code (the compact pass and the channels
/// finished after the vector pass).
#[allow(clippy::too_many_arguments)]
#[inline(always)]
pub(crate) fn training_op<S: Outlined, I: Io, E: Epilogue>(
    s: S,
    desc: &TensorDesc,
    io: &mut I,
    affine: (Option<&[f32]>, Option<&[f32]>, f32),
    mean: &mut [f32],
    var: &mut [f32],
    out_of_place: bool,
    f: E,
    e: &Epi<'_>,
) {
    if S::COMPACT {
        super::compact::training(desc, io, affine, mean, var, e);
        return;
    }
    let oop = out_of_place;
    if wide(desc) {
        training::<S, I, WIDE_GROUP, { WIDE_GROUP + 16 }, true, E>(s, desc, io, affine, mean, var, oop, f, e)
    } else {
        training::<S, I, GROUP, { GROUP + 16 }, false, E>(s, desc, io, affine, mean, var, oop, f, e)
    }
}

/// The normalise-affine pass (inference, `channel_affine`) with tier `s` and the epilogue `f` (`e` as in
/// [`training_op`]).
#[inline(always)]
pub(crate) fn normalize_op<S: Outlined, I: Io, E: Epilogue>(
    s: S,
    desc: &TensorDesc,
    io: &mut I,
    params: ParamSrc<'_>,
    out_of_place: bool,
    f: E,
    e: &Epi<'_>,
) {
    if S::COMPACT {
        super::compact::normalize(desc, io, params, e);
        return;
    }
    if wide(desc) {
        normalize::<S, I, WIDE_GROUP, { WIDE_GROUP + 16 }, true, E>(s, desc, io, params, out_of_place, f, e)
    } else {
        normalize::<S, I, GROUP, { GROUP + 16 }, false, E>(s, desc, io, params, out_of_place, f, e)
    }
}

/// Merged partial statistics with γ, β and ε, as [`normalize_partials_op`] takes them.
pub(crate) type PartialsSrc<'a> = (&'a [Partial], Option<&'a [f32]>, Option<&'a [f32]>, f32);

/// The normalise pass with merged partial statistics (the plain pass: the entry point applies an
/// epilogue after it, the same bits as fused).
#[inline(always)]
pub(crate) fn normalize_partials_op<S: Outlined, I: Io>(
    s: S,
    desc: &TensorDesc,
    io: &mut I,
    p: PartialsSrc<'_>,
    out_of_place: bool,
) {
    if S::COMPACT {
        super::compact::normalize_partials(desc, io, p, &Epi::NONE);
        return;
    }
    let (partials, gamma, beta, eps) = p;
    let src = ParamSrc::Partials { partials, gamma, beta, eps };
    normalize_op(s, desc, io, src, out_of_place, super::Plain, &Epi::NONE)
}

/// Whether a scale γ/√(var + ε) can overflow f32 with these γ: only where |γ| > 2⁵³ (1/√(var + ε) is at
/// most 2^74.5), or γ is infinite. The fused add+ReLU pass is not run then (see `crate::arch::run`).
pub(crate) fn may_overflow(gamma: Option<&[f32]>) -> bool {
    gamma.is_some_and(|g| g.iter().any(|v| v.abs() > 9_007_199_254_740_992.0))
}

/// The epilogue `e` over every element of `y` but padding, in scalar code: the add+ReLU of a call whose
/// scales may overflow, after its plain pass.
#[inline(never)]
pub(crate) fn finish_all(desc: &TensorDesc, y: &mut [f32], e: &Epi<'_>) {
    let mut out = super::InPlace { xy: y };
    finish_channels(desc, &mut out, 0, desc.shape().c, e);
}

/// ReLU's backward with tier `s`: `out[i] = dy[i]` where `y[i] > 0` (or is NaN), `+0` where `y[i] ≤ 0`;
/// `data` is `dy` and `out`, or one buffer updated in place. One pass, ordinary stores (the result is
/// read again at once by the backward pass).
#[inline(always)]
pub(crate) fn relu_grad_op<S: Simd, I: Io>(s: S, y: &[f32], io: &mut I) {
    let l = S::LANES;
    let n = y.len().min(io.input().len());
    let mut i = 0;
    while i + 4 * l <= n {
        let (m, d) = (&y[i..i + 4 * l], io.load4(s, i));
        let mut v = d;
        for u in 0..4 {
            v[u] = s.zero_where_not_positive(s.load(&m[u * l..]), d[u]);
        }
        io.store4(s, i, v, false);
        i += 4 * l;
    }
    while i + l <= n {
        let v = s.zero_where_not_positive(s.load(&y[i..]), io.load(s, i));
        io.store(s, i, v);
        i += l;
    }
    if i < n {
        let zero = s.splat(0.0);
        let v = s.zero_where_not_positive(s.load_part(&y[i..n], zero), io.load_part(s, i, n - i, zero));
        io.store_part(s, i, n - i, v);
    }
}

/// Whether the plans treat a tensor as one the L3 holds: at most twice the non-temporal threshold (half
/// the L3, 16 MB on a 32 MB L3: `crate::tuning`), else it comes from memory. The parallel plans, the
/// training pair and the backward's next-chunk fetch all go by it. `BNORM_STREAM_MIN_BYTES=0` makes
/// every tensor come from memory.
pub(crate) fn in_l3(desc: &TensorDesc) -> bool {
    desc.len().saturating_mul(2) <= tuning::get().stream_min_bytes
}

/// Channels-last rows wider than [`GROUP`]: run with [`WIDE_GROUP`]-sized scratch.
#[inline(always)]
pub(super) fn wide(desc: &TensorDesc) -> bool {
    matches!(kind(desc), Kind::Channels) && row_len(desc) > GROUP
}

/// How the kernels see a tensor's memory.
#[derive(Clone, Copy)]
pub(super) enum Kind {
    /// Rows of C contiguous channels (NHWC, and NCHW with spatial size 1).
    Channels,
    /// Contiguous planes of S values per (n, c) (NCHW with S > 1).
    Planes,
    /// Blocks of `b` channels.
    Blocked(usize),
}

#[inline(always)]
pub(super) fn kind(desc: &TensorDesc) -> Kind {
    match desc.layout() {
        Layout::Nhwc => Kind::Channels,
        Layout::Nchw if desc.shape().spatial == 1 => Kind::Channels,
        // One position per block plane: the memory is N rows of the padded channels, and the rows
        // kernels handle it (with the padding lanes as channels whose results are dropped or zeroed).
        Layout::Blocked { .. } if desc.shape().spatial == 1 => Kind::Channels,
        Layout::Nchw => Kind::Planes,
        Layout::Blocked { block } => Kind::Blocked(block),
    }
}

/// Consecutive channel ranges of at most `max` channels (at most `G`; whole blocks for blocked
/// layouts).
#[inline(always)]
pub(super) fn chunks<const G: usize>(desc: &TensorDesc, max: usize) -> impl Iterator<Item = (usize, usize)> {
    chunks_of(desc, max, G)
}

/// [`chunks`] with the group size `g` a value.
#[inline(always)]
pub(super) fn chunks_of(desc: &TensorDesc, max: usize, g: usize) -> impl Iterator<Item = (usize, usize)> {
    let c = desc.shape().c;
    let step = match kind(desc) {
        Kind::Blocked(b) => (max.min(g) / b).max(1) * b,
        _ => max.clamp(1, g),
    };
    (0..c.div_ceil(step)).map(move |i| (i * step, ((i + 1) * step).min(c)))
}

/// Channels per training chunk: about `chunk_bytes` of data, at least one vector's worth of channels
/// in channels-last memory (narrower strided reads waste bandwidth).
#[inline(always)]
pub(super) fn train_chunk<const G: usize>(desc: &TensorDesc, chunk_bytes: usize) -> usize {
    train_chunk_of(desc, chunk_bytes, G)
}

/// [`train_chunk`] with the group size `g` a value.
#[inline(always)]
pub(super) fn train_chunk_of(desc: &TensorDesc, chunk_bytes: usize, g: usize) -> usize {
    let per_channel = desc.shape().count().saturating_mul(4).max(1);
    let fit = chunk_bytes / per_channel;
    match kind(desc) {
        // Channel chunks of channels-last rows would be strided reads of a few lines per row: process
        // whole rows (groups of G channels) instead, re-reading x from the outer caches.
        Kind::Channels => g,
        _ => fit.max(1),
    }
}

/// Bytes of input in channels `c0..c1` (whole blocks for blocked layouts).
#[inline(always)]
fn chunk_bytes(desc: &TensorDesc, c0: usize, c1: usize) -> usize {
    let per_channel = desc.shape().count().saturating_mul(4);
    match kind(desc) {
        Kind::Blocked(b) => (c1.div_ceil(b) - c0 / b) * b * per_channel,
        _ => (c1 - c0) * per_channel,
    }
}

/// The input of channels `c0..c1` as runs for [`Prefetch`] (none for channels-last rows, which are
/// never split into training chunks).
#[inline(always)]
fn chunk_lines(desc: &TensorDesc, c0: usize, c1: usize) -> Prefetch {
    let sh = desc.shape();
    match kind(desc) {
        Kind::Planes => Prefetch::new(c0 * sh.spatial, (c1 - c0) * sh.spatial, sh.c * sh.spatial, sh.n),
        Kind::Blocked(b) => {
            let plane = sh.spatial * b;
            let (cb0, cb1) = (c0 / b, c1.div_ceil(b));
            Prefetch::new(cb0 * plane, (cb1 - cb0) * plane, sh.c.div_ceil(b) * plane, sh.n)
        }
        Kind::Channels => Prefetch::none(),
    }
}

/// Per-channel statistics of the whole tensor, group by group.
#[inline(always)]
fn moments<S: Outlined, const G: usize, const CH: bool>(
    s: S,
    desc: &TensorDesc,
    x: &[f32],
    mean: &mut [f32],
    var: &mut [f32],
) {
    let mut lo = [0.0f32; G];
    for (c0, c1) in chunks::<G>(desc, G) {
        let lo = &mut lo[..c1 - c0];
        s.range_stats(CH, desc, x, c0, c1, &mut mean[c0..c1], lo, &mut var[c0..c1]);
    }
}

/// Per-channel partial statistics of the whole tensor (`out`: C long) with tier `s`: the statistics of
/// [`moments_op`], channel range by channel range, each channel's `(mean, lo, var)` kept as a
/// [`Partial`] (the mean as the pair `mean + lo`, M2 = var·count in f64).
#[inline(always)]
pub(crate) fn partials_op<S: Outlined>(s: S, desc: &TensorDesc, x: &[f32], out: &mut [Partial]) {
    if S::COMPACT {
        super::compact::partials(desc, x, out);
        return;
    }
    if wide(desc) {
        partials::<S, WIDE_GROUP, true>(s, desc, x, out)
    } else {
        partials::<S, GROUP, false>(s, desc, x, out)
    }
}

/// The statistics of channels `c0..c1` (see [`Call::RangeMoments`]): the same `range_stats` calls as
/// [`moments_op`] and training make for those channels, so the same bits (NCHW channels are computed one
/// by one and blocked ones block by block, whatever range holds them).
#[cfg(feature = "rayon")]
#[allow(clippy::too_many_arguments)]
#[inline(always)]
pub(crate) fn range_moments_op<S: Outlined>(
    s: S,
    desc: &TensorDesc,
    x: &[f32],
    (c0, c1): (usize, usize),
    mean: &mut [f32],
    lo: &mut [f32],
    var: &mut [f32],
) {
    let w = wide(desc);
    let g = if w { WIDE_GROUP } else { GROUP };
    for (a, b) in chunks_of(desc, g, g) {
        let (a, b) = (a.max(c0), b.min(c1));
        if a < b {
            let (j0, j1) = (a - c0, b - c0);
            s.range_stats(w, desc, x, a, b, &mut mean[j0..j1], &mut lo[j0..j1], &mut var[j0..j1]);
        }
    }
}

#[inline(always)]
fn partials<S: Outlined, const G: usize, const CH: bool>(
    s: S,
    desc: &TensorDesc,
    x: &[f32],
    out: &mut [Partial],
) {
    let (mut mean, mut lo, mut var) = ([0.0f32; G], [0.0f32; G], [0.0f32; G]);
    let count = desc.shape().count() as u64;
    for (c0, c1) in chunks::<G>(desc, G) {
        let k = c1 - c0;
        s.range_stats(CH, desc, x, c0, c1, &mut mean[..k], &mut lo[..k], &mut var[..k]);
        for (j, o) in out[c0..c1].iter_mut().enumerate() {
            *o = Partial::from_stats(count, mean[j], lo[j], var[j]);
        }
    }
}

#[allow(clippy::too_many_arguments)]
#[inline(always)]
fn training<S: Outlined, I: Io, const G: usize, const PB: usize, const CH: bool, E: Epilogue>(
    s: S,
    desc: &TensorDesc,
    io: &mut I,
    (gamma, beta, eps): (Option<&[f32]>, Option<&[f32]>, f32),
    mean: &mut [f32],
    var: &mut [f32],
    out_of_place: bool,
    f: E,
    e: &Epi<'_>,
) {
    let t = tuning::get();
    let stream = out_of_place && desc.store_len() >= t.stream_min_bytes / 4;
    let mut scratch = [0.0f32; G];
    let (mut lo, mut shift) = ([0.0f32; G], [0.0f32; G]);
    let step = train_chunk::<G>(desc, t.train_chunk_bytes);
    // Seven eighths of L2 (the rest for parameters, statistics and set conflicts), or two chunks; from
    // memory, a quarter of the L3 (below).
    let pair =
        (2 * t.train_chunk_bytes).max(t.l2_bytes / 8 * 7).max(if in_l3(desc) { 0 } else { t.l3_bytes / 4 });
    let mut parts = chunks::<G>(desc, step).peekable();
    while let Some((c0, c1)) = parts.next() {
        let (m, v, lo) = (&mut mean[c0..c1], &mut var[c0..c1], &mut lo[..c1 - c0]);
        s.range_stats(CH, desc, io.input(), c0, c1, m, lo, v);
        let (g, b) = (gamma.map(|g| &g[c0..c1]), beta.map(|b| &b[c0..c1]));
        fill_scale(s, v, g, eps, &mut scratch);
        let sc = &scratch[..c1 - c0];
        let shift = shift_past_mean(b, lo, sc, &mut shift[..c1 - c0]);
        let p = Params { mean: Some(m), scale: sc, shift: Some(shift), fixup: overflowed(sc) };
        // While this chunk is normalised (its x from cache), the next chunk's x is fetched, when both
        // fit in L2 together (a larger pair would evict the chunk being read). That is a test of the
        // pair, not of the chunk size: a single channel of more than a chunk (NCHW 32×256×56×56, 401 KB
        // a channel, chunks of 256 KB on a 1 MB L2) still overlaps its successor's reads with its writes
        // (Zen 4, r50-s2 NCHW training on AVX-512: 16 → 17.3–19.1 GB/s). From memory the pair may
        // fill a quarter of the L3: the chunk being normalised is re-read from the L3 either way, and
        // its successor's reads then overlap its writes, as in the backward pass. Zen 4, AVX-512, one
        // thread, medians of 10 calls, old and new builds alternating 3 times (ms): NCHW 32×64×112×112
        // (a channel of 1.6 MB) 8.1–8.7 → 7.3–7.7; nChw8c 32×256×56×56 8.1–8.6 → 7.9–8.4; nChw16c
        // 32×512×28×28 4.4–4.5 → 4.1–4.8; nChw4c 32×512×28×28 level. nChw16c 32×256×56×56's pair of
        // 12.8 MB is past the quarter (half the L3 was no better for it).
        let mut pf = match parts.peek() {
            Some(&(n0, n1)) if chunk_bytes(desc, c0, c1) + chunk_bytes(desc, n0, n1) <= pair => {
                chunk_lines(desc, n0, n1)
            }
            _ => Prefetch::none(),
        };
        // A group with an overflowed scale runs without the epilogue, which follows the fix-up (never
        // with a residual: `crate::arch::run` takes the plain pass where a scale may overflow).
        debug_assert!(!(E::RESIDUAL && p.fixup));
        let f = f.unless(p.fixup);
        s.normalize_range::<I, PB, CH, _, true>(desc, io, (c0, c1), &p, stream, &mut pf, f);
        if p.fixup {
            if stream {
                s.fence();
            }
            fix_overflowed(desc, io.output(), c0, &p, v, g, eps);
            finish_channels(desc, io, c0, c1, e);
        }
    }
    if stream {
        s.fence();
    }
}

/// Training's shifts `β − lo·scale` into `out` (`lo` the part of each batch mean below its f32 rounding
/// `m`, see `Summary::finish_split`): the pass then computes `(x − m)·scale + β − lo·scale`, that is
/// `(x − (m + lo))·scale + β`, the subtraction exact where x is near the mean (Sterbenz) and the shift
/// rounded once from a value of the order of `β` — so the output does not carry the mean's rounding,
/// `U·|mean|·scale`, which dominated it at large offsets (issue 12, item 5). Channels with `lo = 0` or an
/// overflowed scale keep `β` exactly.
#[inline(always)]
fn shift_past_mean<'a>(beta: Option<&[f32]>, lo: &[f32], scale: &[f32], out: &'a mut [f32]) -> &'a [f32] {
    for (j, o) in out.iter_mut().enumerate() {
        *o = shift_past_mean_one(beta.map_or(0.0, |b| b[j]), lo[j], scale[j]);
    }
    out
}

/// One channel's [`shift_past_mean`]: `β − lo·scale`, or `β` where `lo = 0` or the scale overflowed.
#[allow(clippy::unnecessary_cast)] // `Weight` is f32 on bare-metal 32-bit targets
#[inline(always)]
pub(super) fn shift_past_mean_one(beta: f32, lo: f32, scale: f32) -> f32 {
    if lo == 0.0 || !scale.is_finite() {
        beta
    } else {
        (beta as Weight - lo as Weight * scale as Weight) as f32
    }
}

/// Values per row of a channels-kind tensor: C, or the padded channel count of a blocked tensor with
/// spatial size 1.
#[inline(always)]
pub(super) fn row_len(desc: &TensorDesc) -> usize {
    match desc.layout() {
        Layout::Blocked { block } => desc.shape().c.div_ceil(block) * block,
        _ => desc.shape().c,
    }
}

/// Values of channels `c0..c1` in each row of a channels-kind tensor: the range, and for the last range
/// the padding after it.
#[inline(always)]
pub(super) fn row_width(desc: &TensorDesc, c0: usize, c1: usize) -> usize {
    if c1 == desc.shape().c { row_len(desc) - c0 } else { c1 - c0 }
}

/// Rows of channels `c0..c1` of a channels-kind tensor (with any padding after the last channel).
#[inline(always)]
fn channel_rows(desc: &TensorDesc, c0: usize, c1: usize) -> Rows {
    let sh = desc.shape();
    let stride = row_len(desc);
    let width = row_width(desc, c0, c1);
    Rows { base: c0, outer: 1, inner: sh.n * sh.spatial, outer_stride: 0, inner_stride: stride, width }
}

/// Rows of channel block `cb` of a blocked tensor.
#[inline(always)]
fn block_rows(desc: &TensorDesc, b: usize, cb: usize) -> Rows {
    let sh = desc.shape();
    let plane = sh.spatial * b;
    Rows {
        base: cb * plane,
        outer: sh.n,
        inner: sh.spatial,
        outer_stride: sh.c.div_ceil(b) * plane,
        inner_stride: b,
        width: b,
    }
}

/// A tier's passes over a channel range, each compiled once per tier (and per type parameters) as an
/// out-of-line function with the tier's target features (`crate::arch`'s `tier_entries!`) and called by
/// the operations' entry points once per chunk of channels, which costs nothing measurable.
///
/// - The statistics ([`moments_range`] with `WIDE_GROUP` when `wide`, else `GROUP`), called by
///   `moments` and every training entry point. Inlined into each of them instead, the same ~85 KB of
///   statistics code was compiled six times per tier: a third of the library's code and of its build
///   time.
/// - The normalise pass ([`normalize_range`]), once per buffer kind, group size, epilogue and statistics
///   kind (training or not: shared, inference's loops carried training's prefetching as run-time
///   values; see there).
pub(crate) trait Outlined: Simd {
    /// Mean, `lo` and population variance of channels `c0..c1` (see [`moments_range`]).
    #[allow(clippy::too_many_arguments)]
    fn range_stats(
        self,
        wide: bool,
        desc: &TensorDesc,
        x: &[f32],
        c0: usize,
        c1: usize,
        mean: &mut [f32],
        lo: &mut [f32],
        var: &mut [f32],
    );

    /// Normalises channels `c0..c1` (see [`normalize_range`]): for training (`TRAIN`), the most recent
    /// planes first and prefetching `pf`; otherwise in order, without prefetching (`pf` unused).
    #[allow(clippy::too_many_arguments)]
    fn normalize_range<I: Io, const PB: usize, const CH: bool, E: Epilogue, const TRAIN: bool>(
        self,
        desc: &TensorDesc,
        io: &mut I,
        c: (usize, usize),
        p: &Params<'_>,
        stream: bool,
        pf: &mut Prefetch,
        e: E,
    );
}

/// Mean and population variance of channels `c0..c1` (at most GROUP; whole blocks for blocked layouts,
/// but for the last) into `mean`/`lo`/`var` (`c1 - c0` long; `lo` is what the mean's rounding dropped,
/// see `Summary::finish_split`).
#[allow(clippy::too_many_arguments)]
#[inline(always)]
pub(crate) fn moments_range<S: Simd, const G: usize, const CH: bool>(
    s: S,
    desc: &TensorDesc,
    x: &[f32],
    c0: usize,
    c1: usize,
    mean: &mut [f32],
    lo: &mut [f32],
    var: &mut [f32],
) {
    let sh = desc.shape();
    if CH {
        // Channels-last only (`CH` instantiations are never called with other memory): no code for the
        // other layouts in this instantiation.
        contiguous_moments::<S, G>(s, x, &channel_rows(desc, c0, c1), c1 - c0, mean, lo, var);
        return;
    }
    match kind(desc) {
        Kind::Channels => {
            contiguous_moments::<S, G>(s, x, &channel_rows(desc, c0, c1), c1 - c0, mean, lo, var)
        }
        Kind::Planes => {
            for c in c0..c1 {
                let stride = sh.c * sh.spatial;
                let mut st = PlaneStats::new(s, x, c * sh.spatial, stride, sh.n, sh.spatial);
                for n in 0..sh.n {
                    let at = (n * sh.c + c) * sh.spatial;
                    st.add_plane(s, &x[at..at + sh.spatial]);
                }
                (mean[c - c0], lo[c - c0], var[c - c0]) = st.finish(s);
            }
        }
        Kind::Blocked(b) => {
            for cb in c0 / b..c1.div_ceil(b) {
                let (j0, j1) = (cb * b - c0, (cb * b + b).min(c1) - c0);
                let rows = block_rows(desc, b, cb);
                contiguous_moments::<S, 16>(
                    s,
                    x,
                    &rows,
                    j1 - j0,
                    &mut mean[j0..j1],
                    &mut lo[j0..j1],
                    &mut var[j0..j1],
                );
            }
        }
    }
}

/// The normalise-affine pass over the whole tensor, channel group by channel group.
#[allow(clippy::too_many_arguments)]
#[inline(always)]
fn normalize<S: Outlined, I: Io, const G: usize, const PB: usize, const CH: bool, E: Epilogue>(
    s: S,
    desc: &TensorDesc,
    io: &mut I,
    src: ParamSrc<'_>,
    out_of_place: bool,
    f: E,
    e: &Epi<'_>,
) {
    let stream = out_of_place && desc.store_len() >= tuning::get().stream_min_bytes / 4;
    let mut scratch = [0.0f32; G];
    // Partial statistics are finished chunk by chunk into these, in chunks of at most GROUP channels
    // (3 KB of stack, not 24 with WIDE_GROUP; the chunking changes no output). Centred on a mean pair,
    // the shifts take a chunk of G: the parallel front end's training on wide NHWC rows (1×1024×14×14)
    // went from 28 to 20 GB/s in chunks of GROUP, four strided passes over the rows.
    let mut shifts = [0.0f32; G];
    let (mut pm, mut plo, mut pv) = ([0.0f32; GROUP], [0.0f32; GROUP], [0.0f32; GROUP]);
    let max = if matches!(src, ParamSrc::Partials { .. }) { GROUP } else { G };
    for (c0, c1) in chunks::<G>(desc, max) {
        let k = c1 - c0;
        // The chunk's statistics (mean, lo, var, γ, β, ε): the given slices, or partial statistics
        // finished into local arrays.
        let stats = match src {
            ParamSrc::Stats { mean, lo, var, gamma, beta, eps } => Some((
                &mean[c0..c1],
                lo.map(|l| &l[c0..c1]),
                &var[c0..c1],
                gamma.map(|g| &g[c0..c1]),
                beta.map(|b| &b[c0..c1]),
                eps,
            )),
            ParamSrc::Partials { partials, gamma, beta, eps } => {
                for (j, p) in partials[c0..c1].iter().enumerate() {
                    (pm[j], plo[j], pv[j]) = p.finish_one();
                }
                let (g, b) = (gamma.map(|g| &g[c0..c1]), beta.map(|b| &b[c0..c1]));
                Some((&pm[..k], Some(&plo[..k]), &pv[..k], g, b, eps))
            }
            ParamSrc::Affine { .. } => None,
        };
        let p = match (stats, src) {
            (Some((mean, lo, var, gamma, beta, eps)), _) => {
                fill_scale(s, var, gamma, eps, &mut scratch);
                let sc = &scratch[..k];
                let shift = match lo {
                    // Training's parameters, as `training` forms them.
                    Some(lo) => Some(shift_past_mean(beta, lo, sc, &mut shifts[..k])),
                    None => beta,
                };
                Params { mean: Some(mean), scale: sc, shift, fixup: overflowed(sc) }
            }
            (None, ParamSrc::Affine { scale, shift }) => {
                Params { mean: None, scale: &scale[c0..c1], shift: Some(&shift[c0..c1]), fixup: false }
            }
            // (Statistics of every other kind are `Some` above.)
            (None, _) => Params { mean: None, scale: &scratch[..0], shift: None, fixup: false },
        };
        debug_assert!(!(E::RESIDUAL && p.fixup));
        let f = f.unless(p.fixup);
        s.normalize_range::<I, PB, CH, _, false>(desc, io, (c0, c1), &p, stream, &mut Prefetch::none(), f);
        if let Some((_, _, var, gamma, _, eps)) = stats
            && p.fixup
        {
            if stream {
                s.fence();
            }
            fix_overflowed(desc, io.output(), c0, &p, var, gamma, eps);
            finish_channels(desc, io, c0, c1, e);
        }
    }
    if stream {
        s.fence();
    }
}

/// Normalises channels `c0..c1` (at most GROUP; whole blocks for blocked layouts but for the last) with
/// the parameters `p` of those channels. For training (`TRAIN`), planes and block planes go from the last
/// batch index to the first: right after the chunk's statistics, the planes read last are the ones
/// still in L2, so a chunk larger than L2 is re-read partly from it; and `pf`'s lines (the next chunk's)
/// are prefetched. Otherwise `pf` is unused.
#[allow(clippy::too_many_arguments)]
#[inline(always)]
pub(crate) fn normalize_range<
    S: Simd,
    I: Io,
    const PB: usize,
    const CH: bool,
    E: Epilogue,
    const TRAIN: bool,
>(
    s: S,
    desc: &TensorDesc,
    io: &mut I,
    c0: usize,
    c1: usize,
    p: &Params<'_>,
    stream: bool,
    pf: &mut Prefetch,
    e: E,
) {
    // Constants where they are known, as when the pass was inlined into each entry point: inference
    // neither prefetches nor reverses the planes (as run-time values in its loops, NCHW 1×1024×14×14
    // in-place inference from the cache went from 11.8 to 14.7 µs, Zen 4, AVX-512), and the in-place
    // callers never stream.
    let mut no_pf = Prefetch::none();
    let pf = if TRAIN { pf } else { &mut no_pf };
    let stream = stream && !I::IN_PLACE;
    let order = |i: usize, count: usize| if TRAIN { count - 1 - i } else { i };
    let sh = desc.shape();
    if CH {
        // Channels-last only, as in `moments_range`.
        normalize_channels::<S, I, PB, _>(s, desc, io, c0, c1, p, stream, pf, e);
        return;
    }
    match kind(desc) {
        Kind::Channels => normalize_channels::<S, I, PB, _>(s, desc, io, c0, c1, p, stream, pf, e),
        Kind::Planes => {
            // One run per batch index: its planes of channels c0..c1 are contiguous.
            let segs = PlaneSegs { p, plane: sh.spatial };
            for n in (0..sh.n).map(|i| order(i, sh.n)) {
                normalize_run(s, io, (n * sh.c + c0) * sh.spatial, &segs, stream, pf, e);
            }
        }
        Kind::Blocked(b) => {
            // Groups of up to BLOCK_GROUP blocks, batch index outer: each batch index's planes of the
            // group are adjacent in memory, so the pass streams through long contiguous runs instead of
            // jumping by C·S floats after every plane.
            let blocks = sh.c.div_ceil(b);
            let plane = sh.spatial * b;
            let (cb0, cb1) = (c0 / b, c1.div_ceil(b));
            let groups = (cb1 - cb0).div_ceil(BLOCK_GROUP);
            let mut pps = [const { Periodic::<PBUF_BLOCK>::EMPTY }; BLOCK_GROUP];
            for g in (0..groups).map(|i| order(i, groups)) {
                let (g0, g1) = (cb0 + g * BLOCK_GROUP, (cb0 + (g + 1) * BLOCK_GROUP).min(cb1));
                for (cb, pp) in (g0..g1).zip(pps.iter_mut()) {
                    let r = cb * b - c0..(cb * b + b).min(c1) - c0;
                    let bp = Params {
                        mean: p.mean.map(|q| &q[r.clone()]),
                        scale: &p.scale[r.clone()],
                        shift: p.shift.map(|q| &q[r.clone()]),
                        fixup: p.fixup,
                    };
                    *pp = Periodic::new(s, &bp, b);
                }
                // One run per batch index: its planes of the group's blocks are contiguous.
                let segs = RefSegs { pps: &pps[..g1 - g0], len: plane };
                for n in (0..sh.n).map(|i| order(i, sh.n)) {
                    normalize_run(s, io, (n * blocks + g0) * plane, &segs, stream, pf, e);
                }
            }
        }
    }
}

/// Whether any scale of a statistics-mode group overflowed f32 (γ/√(var + ε) = ±∞). One branch-free
/// (vectorised) scan of the group's scales per group: the vector pass itself never tests for it, and
/// [`Params::fixup`] is set only where this finds one.
#[inline(always)]
fn overflowed(scales: &[f32]) -> bool {
    scales.iter().fold(false, |a, v| a | v.is_infinite())
}

/// Finishes the channels of a group (first channel `c0`) whose scale overflowed: the vector pass copied
/// their input to `y` unchanged, and each becomes `((x − m)·s·2⁶⁴)·2⁶⁴ + β` with `s` the
/// [`reduced_scale`]. The product then overflows only where its exact value does (|x − m|·|γ|/√(var+ε)
/// beyond f32's range), and x = m gives β exactly, where `(x − m)·∞` would be NaN. Scalar code, run only
/// for such channels (|γ| > 2^53); two roundings (product, then β) where the vector pass has one.
#[inline(never)]
fn fix_overflowed(
    desc: &TensorDesc,
    y: &mut [f32],
    c0: usize,
    p: &Params<'_>,
    var: &[f32],
    gamma: Option<&[f32]>,
    eps: f32,
) {
    let sh = desc.shape();
    for (j, &scale) in p.scale.iter().enumerate() {
        if !scale.is_infinite() {
            continue;
        }
        let s = reduced_scale(var[j], gamma.map_or(1.0, |g| g[j]), eps);
        let m = p.mean.map_or(0.0, |m| m[j]);
        let beta = p.shift.map_or(0.0, |t| t[j]);
        for n in 0..sh.n {
            for i in 0..sh.spatial {
                if let Some(at) = desc.offset(n, c0 + j, i) {
                    y[at] = overflowed_output(y[at], m, s, beta);
                }
            }
        }
    }
}

/// Applies the epilogue `e` to channels `c0..c1` of the output (their padding excluded): the channels of
/// a group with an overflowed scale, after [`fix_overflowed`]. Scalar code, for such groups only.
#[inline(never)]
fn finish_channels<I: Io>(desc: &TensorDesc, io: &mut I, c0: usize, c1: usize, e: &Epi<'_>) {
    if !e.is_some() {
        return;
    }
    let sh = desc.shape();
    for c in c0..c1 {
        for n in 0..sh.n {
            // A channel's positions within one batch index are evenly spaced in every layout.
            if let (Some(a), Some(b)) =
                (desc.offset(n, c, 0), desc.offset(n, c, sh.spatial.saturating_sub(1).min(1)))
            {
                io.finish_strided(a, (b - a).max(1), sh.spatial, e);
            }
        }
    }
}

/// Channels `c0..c1` of a channels-kind tensor: whole rows as one run whose channel repeats with the
/// row's period, or (channel groups of a wide tensor) part of each row, with the padding after the last.
#[allow(clippy::too_many_arguments)]
#[inline(always)]
fn normalize_channels<S: Simd, I: Io, const PB: usize, E: Epilogue>(
    s: S,
    desc: &TensorDesc,
    io: &mut I,
    c0: usize,
    c1: usize,
    p: &Params<'_>,
    stream: bool,
    pf: &mut Prefetch,
    e: E,
) {
    let sh = desc.shape();
    let rows = sh.n * sh.spatial;
    if c0 == 0 && c1 == sh.c {
        let period = row_len(desc);
        if period == sh.c
            && period > GROUP
            && let Some(rp) = RowParams::new(s, p)
        {
            // Rows wider than GROUP: the caller's parameter slices as they are, no per-call copy of
            // C-long arrays. (Narrower rows copy their parameters, repeated to fill the buffer, so
            // that the body wraps every few hundred elements instead of every row.)
            normalize_run(s, io, 0, &RefSegs { pps: &[rp], len: rows * period }, stream, pf, e);
        } else {
            let pp = [Periodic::<PB>::new(s, p, period)];
            normalize_run(s, io, 0, &RefSegs { pps: &pp, len: rows * period }, stream, pf, e);
        }
    } else {
        let width = row_width(desc, c0, c1);
        let stride = row_len(desc);
        let pp = [Periodic::<PB>::new(s, p, width)];
        for r in 0..rows {
            normalize_run(s, io, r * stride + c0, &RefSegs { pps: &pp, len: width }, stream, pf, e);
        }
    }
}
