#![forbid(unsafe_code)]
//! Per-layout drivers of every operation, and [`run`], the one function each tier instantiates.
//!
//! Kernels are chosen by memory order, not by the layout's name: NCHW with spatial size 1 is the same
//! memory as NHWC and runs the row kernels.

use super::normalize::{Params, fill_scale, plane_normalize, rows_normalize};
use super::stats::{ChannelStats, GroupStats, rows_moments};
use super::{GROUP, InPlace, Io, Rows, Split};
use crate::arch::Simd;
use crate::layout::{Layout, TensorDesc};

/// In- or out-of-place data of a normalising call.
pub(crate) enum Data<'a> {
    Split(&'a [f32], &'a mut [f32]),
    InPlace(&'a mut [f32]),
}

/// Where a normalising pass takes its per-channel parameters from.
#[derive(Clone, Copy)]
pub(crate) enum ParamSrc<'a> {
    /// `scale = γ/√(var + ε)`, centred on `mean`, shifted by `β`.
    Stats { mean: &'a [f32], var: &'a [f32], gamma: Option<&'a [f32]>, beta: Option<&'a [f32]>, eps: f32 },
    /// `y = x·scale + shift`.
    Affine { scale: &'a [f32], shift: &'a [f32] },
}

/// A validated call, ready for a tier.
pub(crate) enum Call<'a> {
    Moments {
        desc: &'a TensorDesc,
        x: &'a [f32],
        mean: &'a mut [f32],
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
    },
    Normalize {
        desc: &'a TensorDesc,
        data: Data<'a>,
        params: ParamSrc<'a>,
    },
}

/// Runs a validated call with tier `s`. Everything below is `#[inline(always)]`, so the whole call is
/// compiled inside the tier's entry point (and with its target features).
#[inline(always)]
pub(crate) fn run<S: Simd>(s: S, call: Call<'_>) {
    match call {
        Call::Moments { desc, x, mean, var } => moments(s, desc, x, mean, var),
        Call::Training { desc, data, gamma, beta, eps, mean, var } => {
            let x = match &data {
                Data::Split(x, _) => *x,
                Data::InPlace(xy) => &**xy,
            };
            moments(s, desc, x, mean, var);
            let params = ParamSrc::Stats { mean, var, gamma, beta, eps };
            normalize_data(s, desc, data, params);
        }
        Call::Normalize { desc, data, params } => normalize_data(s, desc, data, params),
    }
}

#[inline(always)]
fn normalize_data<S: Simd>(s: S, desc: &TensorDesc, data: Data<'_>, params: ParamSrc<'_>) {
    match data {
        Data::Split(x, y) => normalize(s, desc, &mut Split { x, y }, params),
        Data::InPlace(xy) => normalize(s, desc, &mut InPlace { xy }, params),
    }
}

/// How the kernels see a tensor's memory.
enum Kind {
    /// Rows of C contiguous channels (NHWC, and NCHW with spatial size 1).
    Channels,
    /// Contiguous planes of S values per (n, c) (NCHW with S > 1).
    Planes,
    /// Blocks of `b` channels.
    Blocked(usize),
}

#[inline(always)]
fn kind(desc: &TensorDesc) -> Kind {
    match desc.layout() {
        Layout::Nhwc => Kind::Channels,
        Layout::Nchw if desc.shape().spatial == 1 => Kind::Channels,
        Layout::Nchw => Kind::Planes,
        Layout::Blocked { block } => Kind::Blocked(block),
    }
}

/// Rows of channels `c0..c0 + width` of a channels-last tensor.
#[inline(always)]
fn channel_rows(desc: &TensorDesc, c0: usize, width: usize) -> Rows {
    let sh = desc.shape();
    Rows { base: c0, outer: 1, inner: sh.n * sh.spatial, outer_stride: 0, inner_stride: sh.c, width }
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

/// Per-channel mean and population variance.
#[inline(always)]
pub(crate) fn moments<S: Simd>(s: S, desc: &TensorDesc, x: &[f32], mean: &mut [f32], var: &mut [f32]) {
    let sh = desc.shape();
    match kind(desc) {
        Kind::Channels => {
            let mut c0 = 0;
            while c0 < sh.c {
                let w = (sh.c - c0).min(GROUP);
                let mut st = GroupStats::new();
                rows_moments(s, x, &channel_rows(desc, c0, w), &mut st);
                st.finish(s, &mut mean[c0..c0 + w], &mut var[c0..c0 + w]);
                c0 += w;
            }
        }
        Kind::Planes => {
            for c in 0..sh.c {
                let mut st = ChannelStats::new(x[c * sh.spatial]);
                for n in 0..sh.n {
                    let at = (n * sh.c + c) * sh.spatial;
                    st.add_plane(s, &x[at..at + sh.spatial]);
                }
                (mean[c], var[c]) = st.finish();
            }
        }
        Kind::Blocked(b) => {
            for cb in 0..sh.c.div_ceil(b) {
                let c0 = cb * b;
                let valid = (sh.c - c0).min(b);
                let mut st = GroupStats::new();
                rows_moments(s, x, &block_rows(desc, b, cb), &mut st);
                st.finish(s, &mut mean[c0..c0 + valid], &mut var[c0..c0 + valid]);
            }
        }
    }
}

/// The normalise-affine pass over the whole tensor, channel group by channel group.
#[inline(always)]
fn normalize<S: Simd, I: Io>(s: S, desc: &TensorDesc, io: &mut I, src: ParamSrc<'_>) {
    let sh = desc.shape();
    let mut scratch = [0.0f32; GROUP];
    let mut c0 = 0;
    while c0 < sh.c {
        let c1 = (c0 + GROUP).min(sh.c);
        let p = match src {
            ParamSrc::Stats { mean, var, gamma, beta, eps } => {
                fill_scale(s, &var[c0..c1], gamma.map(|g| &g[c0..c1]), eps, &mut scratch);
                Params {
                    mean: Some(&mean[c0..c1]),
                    scale: &scratch[..c1 - c0],
                    shift: beta.map(|b| &b[c0..c1]),
                }
            }
            ParamSrc::Affine { scale, shift } => {
                Params { mean: None, scale: &scale[c0..c1], shift: Some(&shift[c0..c1]) }
            }
        };
        normalize_group(s, desc, io, c0, c1, &p);
        c0 = c1;
    }
}

/// Normalises channels `c0..c1` (at most GROUP; a multiple of the block size except at the end).
#[inline(always)]
fn normalize_group<S: Simd, I: Io>(
    s: S,
    desc: &TensorDesc,
    io: &mut I,
    c0: usize,
    c1: usize,
    p: &Params<'_>,
) {
    let sh = desc.shape();
    match kind(desc) {
        Kind::Channels => rows_normalize(s, io, &channel_rows(desc, c0, c1 - c0), c1 - c0, p),
        Kind::Planes => {
            for n in 0..sh.n {
                for c in c0..c1 {
                    let j = c - c0;
                    let m = p.mean.map_or(0.0, |m| m[j]);
                    let sc = p.scale[j];
                    let t = p.shift.map_or(0.0, |t| t[j]);
                    plane_normalize(s, io, (n * sh.c + c) * sh.spatial, sh.spatial, (m, sc, t));
                }
            }
        }
        Kind::Blocked(b) => {
            for cb in c0 / b..c1.div_ceil(b) {
                let j0 = cb * b - c0;
                let valid = (c1 - cb * b).min(b);
                let r = j0..j0 + valid;
                let bp = Params {
                    mean: p.mean.map(|q| &q[r.clone()]),
                    scale: &p.scale[r.clone()],
                    shift: p.shift.map(|q| &q[r.clone()]),
                };
                rows_normalize(s, io, &block_rows(desc, b, cb), valid, &bp);
            }
        }
    }
}
