#![forbid(unsafe_code)]
//! The parallel front end (feature `rayon`): the operations on rayon's thread pool. The caller's
//! `ThreadPool::install` decides the threads; outside one, rayon's global pool runs them.
//!
//! # How the work is cut, and what that guarantees
//!
//! The cut is fixed by the tensor, never by the number of threads, so every result is the same for a
//! given input on 1, 2 or 64 threads:
//!
//! - **Element passes** (inference, `channel_affine`, the normalise pass of training and
//!   [`forward_from_partials`](Par::forward_from_partials)) run on the parts of
//!   [`TensorDesc::split`], two per thread (of at least 64 KB). Each element is computed as the serial
//!   call computes it, so this cut, the one thing that depends on the threads, changes no bit:
//!   **bit-identical to the serial call**. Each part keeps the whole tensor's store strategy
//!   ([`TensorDesc::store_len`]).
//! - **Statistics of NCHW and blocked tensors** (`moments`, training) are cut by channels (by blocks):
//!   each channel's statistics are computed by one thread exactly as the serial kernel computes them
//!   (channel by channel, block by block), so `moments` and training are **bit-identical to the
//!   serial call** there.
//! - **Statistics of channels-last memory** (NHWC, and any layout with spatial size 1) have no channel
//!   cut that keeps the serial kernel's bits (its register tiles span the row), and come from the
//!   [`Partial`]s of a cut fixed by the tensor ([`part_len`]: a 16th of it, 256 KB to 4 MB a part),
//!   merged in part order: **deterministic, within `moments`' accuracy
//!   bounds** (README, Guarantees), and in the bits different from the serial call's. So are the
//!   statistics of a blocked tensor with one block of channels, and those of the scalar tier on targets
//!   without SIMD (its compact kernels compute statistics differently).
//!   Channels-last tensors of at most 1 MB, or that the L3 holds (up to twice the non-temporal store
//!   threshold, half the L3 here), have their statistics computed by the serial kernel on one thread
//!   instead (the serial call's bits; the element pass still on the pool): there the partials of a cut
//!   cost more than they save.
//! - **The backward pass**: its gradient sums are cut as the statistics are (by channels for NCHW and
//!   blocked tensors; for channels-last memory up to 1 MB by ranges of columns, or the serial call for
//!   rows too narrow to cut, and so up to half the L3 for rows of 256 channels or more; beyond, the fixed
//!   cut's parts' sums added in part order), every channel's
//!   coefficients are computed once from them as the serial pass computes them, and the element pass
//!   runs on the parts: the serial call's bits wherever the sums are, within its bounds where the
//!   parts' sums are added. The element half and ReLU's backward are always the serial call's bits.
//! - A tensor of at most 64 KB runs the serial call, and so does everything that is the serial call's
//!   bits on a pool of one thread.
//!
//! Errors are the serial call's, before any thread starts or any output is written.

use rayon::prelude::*;

use crate::Error;
use crate::api::{
    Affine, Epilogue, GradEpilogue, GradSums, ParamGrads, Saved, back_params, check_backward,
    check_backward_with, check_channel_affine, check_from_partials, check_inference, check_len, check_reduce,
    check_stats_out, check_sums, check_training,
};
use crate::dispatch::{Isa, Kernels};
use crate::kernels::Epi;
use crate::kernels::backward::{BackOut, BackParams, Coef, GradData, Totals, coefs_from_totals};
use crate::kernels::ops::{Call, Data, ParamSrc, in_l3};
use crate::kernels::stats::Weight;
use crate::layout::{Layout, Part, TensorDesc};
use crate::partial::Partial;

/// Values per part of the fixed cut that the statistics of channels-last memory are merged from
/// ([`TensorDesc::split`] with this length): a 16th of the tensor, at least 64 Ki values (256 KB, enough
/// rows per part that its partials are cheap beside its data) and at most 1 Mi (4 MB). It depends on the
/// tensor only, never on the threads, so the merged statistics are the same on any pool.
pub fn part_len(desc: &TensorDesc) -> usize {
    (desc.len() / 16).clamp(PART_MIN, 1 << 20)
}

const PART_MIN: usize = 1 << 16;

/// Values per part of the element passes (which give the serial call's bits however they are cut): two
/// parts per thread, of at least 16 Ki values (64 KB).
fn work_len(desc: &TensorDesc) -> usize {
    desc.len().div_ceil(2 * rayon::current_num_threads()).max(1 << 14)
}

/// How a call's statistics are computed.
#[derive(Clone, Copy)]
enum StatsPlan {
    /// The tensor is one part: the serial call.
    Serial,
    /// By ranges of whole units of channels (1 for NCHW, the block for blocked layouts).
    Channels(usize),
    /// From the partial statistics of the parts, merged in order.
    Partials,
    /// A channels-last tensor's statistics by ranges of columns ([`column_per`]; the serial call's
    /// bits), then the element pass on the pool.
    Columns,
}

fn stats_plan(k: &Kernels, desc: &TensorDesc) -> StatsPlan {
    let sh = desc.shape();
    let one_thread = rayon::current_num_threads() == 1;
    if desc.len() <= 1 << 14 {
        // 64 KB: less work than a hand-over to another thread.
        return StatsPlan::Serial;
    }
    let compact = k.isa() == Isa::Scalar && !crate::arch::PORTABLE_IS_SIMD;
    if compact {
        return if desc.len() <= part_len(desc) { StatsPlan::Serial } else { StatsPlan::Partials };
    }
    let unit = match desc.layout() {
        _ if sh.spatial == 1 => sh.c,
        Layout::Nchw => 1,
        Layout::Blocked { block } => block,
        Layout::Nhwc => sh.c,
    };
    if sh.c > unit {
        // By channels is the serial call's bits: on one thread, the serial call.
        if one_thread { StatsPlan::Serial } else { StatsPlan::Channels(unit) }
    } else if desc.len() <= 4 * PART_MIN || in_l3(desc) {
        // Up to 1 MB, or while the L3 holds the tensor (twice the non-temporal threshold, half the L3:
        // `crate::tuning`), the statistics by ranges of columns (the serial call's bits) then the element
        // pass on the pool: the partials of a cut cost more than they save there (NHWC on two threads,
        // Zen 4: 1×1024×14×14 12 GB/s from four merged parts against 31 with the serial statistics;
        // 32×2048×7×7, 12.8 MB, 21 → 32 GB/s; by columns 51 and 42.5).
        if one_thread { StatsPlan::Serial } else { StatsPlan::Columns }
    } else {
        StatsPlan::Partials
    }
}

/// How a backward call's gradient sums are computed.
#[derive(Clone, Copy)]
enum BackPlan {
    /// The serial call.
    Serial,
    /// No sums to compute (given, or frozen statistics without `dγ`/`dβ`): the element pass on the pool.
    Elements,
    /// By ranges of whole units of channels, each channel's sums as the serial pass computes them.
    Channels(usize),
    /// A channels-last tensor up to 1 MB, or in the L3 with wide rows: its sums by ranges of this many
    /// columns (channels) of every row,
    /// each channel's sums as the serial pass computes them, then the element pass by ranges of rows,
    /// one per thread.
    Columns(usize),
    /// From the sums of the parts of the fixed cut, added in part order.
    Parts,
}

/// The backward counterpart of [`stats_plan`]: channels-last sums by ranges of columns up to 1 MB, and
/// up to half the L3 where the rows hold at least [`WIDE_ROWS`] channels; from the parts of the fixed cut
/// beyond.
fn back_plan(desc: &TensorDesc, need_sums: bool) -> BackPlan {
    let sh = desc.shape();
    let one_thread = rayon::current_num_threads() == 1;
    if desc.len() <= 1 << 14 {
        return BackPlan::Serial;
    }
    if !need_sums {
        return if one_thread { BackPlan::Serial } else { BackPlan::Elements };
    }
    let unit = match desc.layout() {
        _ if sh.spatial == 1 => sh.c,
        Layout::Nchw => 1,
        Layout::Blocked { block } => block,
        Layout::Nhwc => sh.c,
    };
    if sh.c > unit {
        if one_thread { BackPlan::Serial } else { BackPlan::Channels(unit) }
    } else if desc.len() <= 4 * PART_MIN {
        // Up to 1 MB, the serial call's bits: on one thread, or rows narrower than two ranges, the serial
        // call; else ranges of columns (`column_per`), one per thread. On two threads, Zen 4, NHWC
        // 1×1024×14×14: 29 GB/s serial, 24 with the serial sums then the element pass on the pool, 15–20
        // from the parts' sums (a call's fixed cost, ~10 µs at C = 1024, on each part), 47 by columns.
        match column_per(sh.c) {
            Some(per) if !one_thread => BackPlan::Columns(per),
            _ => BackPlan::Serial,
        }
    } else if sh.c >= WIDE_ROWS && in_l3(desc) {
        // Rows of at least 256 channels in the L3 (up to twice the non-temporal threshold, half the L3,
        // as the statistics): the serial call's bits, by ranges of columns on two threads and more (the
        // serial sums where the row does not cut into them). Two threads, Zen 4, medians of 10 runs:
        // NHWC 32×2048×7×7 16 → 21 GB/s, 4×256×28×28 53 → 62 against the parts' sums. (Narrower rows
        // have no columns to cut on two threads, and the serial sums lose: 4×64×56×56 83 → 51.)
        if one_thread { BackPlan::Serial } else { BackPlan::Columns(column_per(sh.c).unwrap_or(sh.c)) }
    } else {
        // Beyond, the parts' sums on the pool, in the L3 too for narrower rows (unlike the statistics: the
        // sums read two tensors).
        BackPlan::Parts
    }
}

/// The narrowest channels-last rows whose gradient sums are cut by columns past 1 MB ([`back_plan`]): the
/// same on every pool, so that the plan's bits do not depend on the number of threads.
const WIDE_ROWS: usize = 256;

/// Channels per range of a channels-last tensor cut by columns (the statistics of
/// [`StatsPlan::Columns`], the sums of [`BackPlan::Columns`]): one range per thread, a multiple of
/// 128 channels (two register tiles of AVX-512, so each range's tiles are its serial chunk's), the last
/// range whole chunk or at least 64 wide (so its rows are blocked as the chunk's). The kernels walk a
/// range of a chunk as they walk the chunk (`kernels::stats::rows_moments`,
/// `kernels::backward::reduce_strip`), so every channel's statistics and sums are the serial call's
/// bits. `None` where that leaves one range.
fn column_per(c: usize) -> Option<usize> {
    let mut per = c.div_ceil(rayon::current_num_threads()).next_multiple_of(128);
    while per < c && !c.is_multiple_of(per) && c % per < 64 {
        per += 128;
    }
    (per < c).then_some(per)
}

/// A backward call's data besides `x`: `dy` (`None`: in place, `dy` is `dx`) and `dx`.
type BackData<'a, 'b> = (Option<&'a [f32]>, &'b mut [f32]);

/// The parallel operations on one tier: [`Kernels::par`].
#[derive(Clone, Copy, Debug)]
pub struct Par<'k> {
    k: &'k Kernels,
}

impl Kernels {
    /// This tier's operations on rayon's thread pool (feature `rayon`; see [`crate::par`]).
    pub fn par(&self) -> Par<'_> {
        Par { k: self }
    }
}

impl Par<'_> {
    /// Parallel [`Kernels::moments`].
    pub fn moments(
        &self,
        desc: &TensorDesc,
        x: &[f32],
        mean: &mut [f32],
        var: &mut [f32],
    ) -> Result<(), Error> {
        check_len("x", x, desc.len())?;
        check_stats_out(desc, mean, var)?;
        match stats_plan(self.k, desc) {
            StatsPlan::Serial => return self.k.moments(desc, x, mean, var),
            StatsPlan::Channels(unit) => {
                let mut lo = vec![0.0f32; desc.shape().c];
                self.range_stats(desc, x, channel_per(desc, unit), mean, &mut lo, var);
            }
            StatsPlan::Columns => {
                self.column_stats(desc, x, mean, &mut vec![0.0f32; desc.shape().c], var);
            }
            StatsPlan::Partials => {
                let acc = self.merged_partials(desc, x);
                finish(&acc, mean, &mut vec![0.0f32; acc.len()], var);
            }
        }
        Ok(())
    }

    /// Parallel [`Kernels::partial_moments`]: the partials of the parts of the fixed cut, merged in
    /// order (for a tensor of one part, the serial call's).
    pub fn partial_moments(&self, desc: &TensorDesc, x: &[f32], out: &mut [Partial]) -> Result<(), Error> {
        check_len("x", x, desc.len())?;
        let c = desc.shape().c;
        if out.len() != c {
            return Err(Error::LengthMismatch { what: "out", expected: c, found: out.len() });
        }
        if desc.len() <= part_len(desc) {
            return self.k.partial_moments(desc, x, out);
        }
        out.copy_from_slice(&self.merged_partials(desc, x));
        Ok(())
    }

    /// Parallel [`Kernels::forward_training`].
    pub fn forward_training(
        &self,
        desc: &TensorDesc,
        x: &[f32],
        y: &mut [f32],
        affine: &Affine<'_>,
        mean: &mut [f32],
        var: &mut [f32],
    ) -> Result<(), Error> {
        self.forward_training_with(desc, x, y, affine, mean, var, Epilogue::None)
    }

    /// Parallel [`Kernels::forward_training_with`]: the statistics (see the module's docs for their
    /// bits), then the normalise pass on the parts.
    #[allow(clippy::too_many_arguments)]
    pub fn forward_training_with(
        &self,
        desc: &TensorDesc,
        x: &[f32],
        y: &mut [f32],
        affine: &Affine<'_>,
        mean: &mut [f32],
        var: &mut [f32],
        epilogue: Epilogue<'_>,
    ) -> Result<(), Error> {
        let epi = check_training(desc, (Some(x), y), affine, (mean, var), epilogue)?;
        self.training(desc, Some(x), y, affine, mean, var, epi, epilogue)
    }

    /// Parallel [`Kernels::forward_training_in_place_with`].
    pub fn forward_training_in_place_with(
        &self,
        desc: &TensorDesc,
        xy: &mut [f32],
        affine: &Affine<'_>,
        mean: &mut [f32],
        var: &mut [f32],
        epilogue: Epilogue<'_>,
    ) -> Result<(), Error> {
        let epi = check_training(desc, (None, xy), affine, (mean, var), epilogue)?;
        self.training(desc, None, xy, affine, mean, var, epi, epilogue)
    }

    /// Parallel [`Kernels::forward_from_partials`] (bit-identical to it).
    #[allow(clippy::too_many_arguments)]
    pub fn forward_from_partials(
        &self,
        desc: &TensorDesc,
        x: &[f32],
        y: &mut [f32],
        affine: &Affine<'_>,
        partials: &[Partial],
        epilogue: Epilogue<'_>,
    ) -> Result<(), Error> {
        let epi = check_from_partials(desc, (Some(x), y), affine, partials, epilogue)?;
        let params = ParamSrc::Partials { partials, gamma: affine.gamma, beta: affine.beta, eps: affine.eps };
        self.normalize(desc, Some(x), y, params, epi);
        Ok(())
    }

    /// Parallel [`Kernels::forward_from_partials_in_place`] (bit-identical to it).
    pub fn forward_from_partials_in_place(
        &self,
        desc: &TensorDesc,
        xy: &mut [f32],
        affine: &Affine<'_>,
        partials: &[Partial],
        epilogue: Epilogue<'_>,
    ) -> Result<(), Error> {
        let epi = check_from_partials(desc, (None, xy), affine, partials, epilogue)?;
        let params = ParamSrc::Partials { partials, gamma: affine.gamma, beta: affine.beta, eps: affine.eps };
        self.normalize(desc, None, xy, params, epi);
        Ok(())
    }

    /// Parallel [`Kernels::forward_inference`] (bit-identical to it).
    pub fn forward_inference(
        &self,
        desc: &TensorDesc,
        x: &[f32],
        y: &mut [f32],
        affine: &Affine<'_>,
        mean: &[f32],
        var: &[f32],
    ) -> Result<(), Error> {
        self.forward_inference_with(desc, x, y, affine, mean, var, Epilogue::None)
    }

    /// Parallel [`Kernels::forward_inference_with`] (bit-identical to it).
    #[allow(clippy::too_many_arguments)]
    pub fn forward_inference_with(
        &self,
        desc: &TensorDesc,
        x: &[f32],
        y: &mut [f32],
        affine: &Affine<'_>,
        mean: &[f32],
        var: &[f32],
        epilogue: Epilogue<'_>,
    ) -> Result<(), Error> {
        let epi = check_inference(desc, (Some(x), y), affine, (mean, var), epilogue)?;
        self.normalize(desc, Some(x), y, stats_src(mean, None, var, affine), epi);
        Ok(())
    }

    /// Parallel [`Kernels::forward_inference_in_place_with`] (bit-identical to it).
    pub fn forward_inference_in_place_with(
        &self,
        desc: &TensorDesc,
        xy: &mut [f32],
        affine: &Affine<'_>,
        mean: &[f32],
        var: &[f32],
        epilogue: Epilogue<'_>,
    ) -> Result<(), Error> {
        let epi = check_inference(desc, (None, xy), affine, (mean, var), epilogue)?;
        self.normalize(desc, None, xy, stats_src(mean, None, var, affine), epi);
        Ok(())
    }

    /// Parallel [`Kernels::channel_affine_with`] (bit-identical to it).
    pub fn channel_affine_with(
        &self,
        desc: &TensorDesc,
        x: &[f32],
        y: &mut [f32],
        scale: &[f32],
        shift: &[f32],
        epilogue: Epilogue<'_>,
    ) -> Result<(), Error> {
        let epi = check_channel_affine(desc, (Some(x), y), (scale, shift), epilogue)?;
        self.normalize(desc, Some(x), y, ParamSrc::Affine { scale, shift }, epi);
        Ok(())
    }

    /// Parallel [`Kernels::channel_affine_in_place_with`] (bit-identical to it).
    pub fn channel_affine_in_place_with(
        &self,
        desc: &TensorDesc,
        xy: &mut [f32],
        scale: &[f32],
        shift: &[f32],
        epilogue: Epilogue<'_>,
    ) -> Result<(), Error> {
        let epi = check_channel_affine(desc, (None, xy), (scale, shift), epilogue)?;
        self.normalize(desc, None, xy, ParamSrc::Affine { scale, shift }, epi);
        Ok(())
    }

    /// Parallel [`Kernels::backward`]. Every gradient is the serial call's bits except where the sums
    /// of channels-last memory are added from the fixed cut's parts (as the statistics are: see the
    /// module's docs), which keeps them within the serial call's accuracy and deterministic.
    #[allow(clippy::too_many_arguments)]
    pub fn backward(
        &self,
        desc: &TensorDesc,
        x: &[f32],
        dy: &[f32],
        dx: &mut [f32],
        affine: &Affine<'_>,
        saved: &Saved<'_>,
        grads: ParamGrads<'_>,
    ) -> Result<(), Error> {
        self.backward_with(desc, x, dy, dx, affine, saved, grads, GradEpilogue::None)
    }

    /// Parallel [`Kernels::backward_with`]: the mask pass on the pool, then [`backward`](Self::backward).
    #[allow(clippy::too_many_arguments)]
    pub fn backward_with(
        &self,
        desc: &TensorDesc,
        x: &[f32],
        dy: &[f32],
        dx: &mut [f32],
        affine: &Affine<'_>,
        saved: &Saved<'_>,
        grads: ParamGrads<'_>,
        epilogue: GradEpilogue<'_>,
    ) -> Result<(), Error> {
        check_backward_with(desc, x, Some(dy), ("dx", dx), &epilogue, affine, saved, &grads)?;
        let params = back_params(affine, saved, None);
        if let BackPlan::Serial = back_plan(desc, needs_sums(&params, &grads)) {
            return self.k.backward_with(desc, x, dy, dx, affine, saved, grads, epilogue);
        }
        match epilogue {
            GradEpilogue::None => self.back(desc, x, (Some(dy), dx), params, grads),
            GradEpilogue::Relu { y } => {
                self.relu_grad(desc, y, Some(dy), dx);
                self.back(desc, x, (None, dx), params, grads);
            }
            GradEpilogue::AddRelu { y, dz } => {
                self.relu_grad(desc, y, Some(dy), dz);
                self.back(desc, x, (Some(&*dz), dx), params, grads);
            }
        }
        Ok(())
    }

    /// Parallel [`Kernels::backward_in_place`].
    pub fn backward_in_place(
        &self,
        desc: &TensorDesc,
        x: &[f32],
        dy_dx: &mut [f32],
        affine: &Affine<'_>,
        saved: &Saved<'_>,
        grads: ParamGrads<'_>,
    ) -> Result<(), Error> {
        self.backward_in_place_with(desc, x, dy_dx, affine, saved, grads, GradEpilogue::None)
    }

    /// Parallel [`Kernels::backward_in_place_with`].
    #[allow(clippy::too_many_arguments)]
    pub fn backward_in_place_with(
        &self,
        desc: &TensorDesc,
        x: &[f32],
        dy_dx: &mut [f32],
        affine: &Affine<'_>,
        saved: &Saved<'_>,
        grads: ParamGrads<'_>,
        epilogue: GradEpilogue<'_>,
    ) -> Result<(), Error> {
        check_backward_with(desc, x, None, ("dy_dx", dy_dx), &epilogue, affine, saved, &grads)?;
        let params = back_params(affine, saved, None);
        if let BackPlan::Serial = back_plan(desc, needs_sums(&params, &grads)) {
            return self.k.backward_in_place_with(desc, x, dy_dx, affine, saved, grads, epilogue);
        }
        match epilogue {
            GradEpilogue::None => self.back(desc, x, (None, dy_dx), params, grads),
            GradEpilogue::Relu { y } => {
                self.relu_grad(desc, y, None, dy_dx);
                self.back(desc, x, (None, dy_dx), params, grads);
            }
            GradEpilogue::AddRelu { y, dz } => {
                self.relu_grad(desc, y, Some(&*dy_dx), dz);
                self.back(desc, x, (Some(&*dz), dy_dx), params, grads);
            }
        }
        Ok(())
    }

    /// Parallel [`Kernels::relu_backward`] (bit-identical to it).
    pub fn relu_backward(
        &self,
        desc: &TensorDesc,
        y: &[f32],
        dy: &[f32],
        dz: &mut [f32],
    ) -> Result<(), Error> {
        check_len("y", y, desc.len())?;
        check_len("dy", dy, desc.len())?;
        check_len("dz", dz, desc.len())?;
        self.relu_grad(desc, y, Some(dy), dz);
        Ok(())
    }

    /// Parallel [`Kernels::relu_backward_in_place`] (bit-identical to it).
    pub fn relu_backward_in_place(
        &self,
        desc: &TensorDesc,
        y: &[f32],
        dy_dz: &mut [f32],
    ) -> Result<(), Error> {
        check_len("y", y, desc.len())?;
        check_len("dy_dz", dy_dz, desc.len())?;
        self.relu_grad(desc, y, None, dy_dz);
        Ok(())
    }

    /// Parallel [`Kernels::backward_reduce`]: the serial call's bits but for the sums of channels-last
    /// memory added from parts (see [`backward`](Self::backward)).
    #[allow(clippy::too_many_arguments)]
    pub fn backward_reduce(
        &self,
        desc: &TensorDesc,
        x: &[f32],
        dy: &[f32],
        mean: &[f32],
        sum_dy: &mut [f32],
        sum_dy_xmu: &mut [f32],
    ) -> Result<(), Error> {
        check_reduce(desc, x, dy, mean, sum_dy, sum_dy_xmu)?;
        let tot = match back_plan(desc, true) {
            BackPlan::Serial | BackPlan::Elements => {
                return self.k.backward_reduce(desc, x, dy, mean, sum_dy, sum_dy_xmu);
            }
            BackPlan::Channels(unit) => self.range_totals(desc, x, dy, mean, channel_per(desc, unit)),
            BackPlan::Columns(per) => self.range_totals(desc, x, dy, mean, per),
            BackPlan::Parts => self.part_totals(desc, x, dy, mean),
        };
        for (o, t) in sum_dy.iter_mut().zip(&tot[0]) {
            *o = *t as f32;
        }
        for (o, t) in sum_dy_xmu.iter_mut().zip(&tot[1]) {
            *o = *t as f32;
        }
        Ok(())
    }

    /// Parallel [`Kernels::backward_elementwise`] (bit-identical to it).
    #[allow(clippy::too_many_arguments)]
    pub fn backward_elementwise(
        &self,
        desc: &TensorDesc,
        x: &[f32],
        dy: &[f32],
        dx: &mut [f32],
        affine: &Affine<'_>,
        saved: &Saved<'_>,
        sums: &GradSums<'_>,
        grads: ParamGrads<'_>,
    ) -> Result<(), Error> {
        check_len("x", x, desc.len())?;
        check_len("dy", dy, desc.len())?;
        check_len("dx", dx, desc.len())?;
        self.elementwise(desc, x, (Some(dy), dx), affine, saved, sums, grads)
    }

    /// Parallel [`Kernels::backward_elementwise_in_place`] (bit-identical to it).
    #[allow(clippy::too_many_arguments)]
    pub fn backward_elementwise_in_place(
        &self,
        desc: &TensorDesc,
        x: &[f32],
        dy_dx: &mut [f32],
        affine: &Affine<'_>,
        saved: &Saved<'_>,
        sums: &GradSums<'_>,
        grads: ParamGrads<'_>,
    ) -> Result<(), Error> {
        check_len("x", x, desc.len())?;
        check_len("dy_dx", dy_dx, desc.len())?;
        self.elementwise(desc, x, (None, dy_dx), affine, saved, sums, grads)
    }

    /// The element half on checked data lengths.
    #[allow(clippy::too_many_arguments)]
    fn elementwise(
        &self,
        desc: &TensorDesc,
        x: &[f32],
        (dy, dx): BackData<'_, '_>,
        affine: &Affine<'_>,
        saved: &Saved<'_>,
        sums: &GradSums<'_>,
        grads: ParamGrads<'_>,
    ) -> Result<(), Error> {
        check_backward(desc, affine, saved, &grads)?;
        check_sums(desc, sums)?;
        if let BackPlan::Serial = back_plan(desc, false) {
            return match dy {
                Some(dy) => self.k.backward_elementwise(desc, x, dy, dx, affine, saved, sums, grads),
                None => self.k.backward_elementwise_in_place(desc, x, dx, affine, saved, sums, grads),
            };
        }
        self.back(desc, x, (dy, dx), back_params(affine, saved, Some(sums)), grads);
        Ok(())
    }

    /// ReLU's backward on the pool: `dy` (`None`: in place over `dz`) masked by `y` into `dz`.
    fn relu_grad(&self, desc: &TensorDesc, y: &[f32], dy: Option<&[f32]>, dz: &mut [f32]) {
        let (isa, len) = (self.k.isa(), work_len(desc));
        dz.par_chunks_mut(len).zip(y.par_chunks(len)).enumerate().for_each(|(i, (dz, y))| {
            let data = match dy {
                Some(dy) => Data::Split(&dy[i * len..i * len + dz.len()], dz),
                None => Data::InPlace(dz),
            };
            crate::arch::run(isa, Call::ReluGrad { y, data });
        });
    }

    /// The backward pass on validated arguments, on a plan other than [`BackPlan::Serial`]: the sums
    /// (where needed), every channel's coefficients and `dγ`/`dβ` from them, then the element pass on
    /// the parts of [`TensorDesc::split`].
    fn back(
        &self,
        desc: &TensorDesc,
        x: &[f32],
        (dy, dx): BackData<'_, '_>,
        p: BackParams<'_>,
        grads: ParamGrads<'_>,
    ) {
        let c = desc.shape().c;
        let count = p.sums.map_or(desc.shape().count(), |g| g.count);
        let need = needs_sums(&p, &grads);
        let mut out = BackOut { dgamma: grads.dgamma, dbeta: grads.dbeta };
        let mut coefs = vec![[0.0f32; 4]; c];
        let plan = back_plan(desc, need);
        let tot = {
            let dy_in = dy.unwrap_or(&*dx);
            match plan {
                BackPlan::Serial | BackPlan::Elements => [vec![0.0; c], vec![0.0; c], vec![0.0; c]],
                BackPlan::Channels(unit) => {
                    // A tensor from memory whose unit of channels (of x and dy) fits in the L3's share
                    // of a thread has each range's element pass run by the task that summed it, re-reading
                    // the range from its core's cache: x and dy are read from memory once, not twice.
                    // (Out of place only: in place, the sums read the `dy` being written.)
                    if let (Some(dy), Some(range_bytes)) =
                        (dy, fused_range_bytes(desc, unit_input_bytes(desc, unit)))
                    {
                        let mut tot = self.channel_backward(desc, x, dy, dx, unit, range_bytes, &p);
                        if out.dgamma.is_some() || out.dbeta.is_some() {
                            let [a, b, d] = &mut tot;
                            let t = Totals { dy: a, dyx: b, x: d };
                            coefs_from_totals(&p, &t, 0, count, &mut out, &mut coefs);
                        }
                        return;
                    }
                    self.range_totals(desc, x, dy_in, p.mean, channel_per(desc, unit))
                }
                BackPlan::Columns(per) => self.range_totals(desc, x, dy_in, p.mean, per),
                BackPlan::Parts => self.part_totals(desc, x, dy_in, p.mean),
            }
        };
        let mut tot = tot;
        let [a, b, d] = &mut tot;
        let t = Totals { dy: a, dyx: b, x: d };
        coefs_from_totals(&p, &t, 0, count, &mut out, &mut coefs);
        let isa = self.k.isa();
        let split = desc.split(match plan {
            // (Rows of a small tensor: a part's call has a fixed cost, ~10 µs at C = 1024.)
            BackPlan::Columns(_) => desc.len().div_ceil(rayon::current_num_threads()),
            _ => work_len(desc),
        });
        // `dx` is the tensor's length (validated), so every part has its piece.
        let Ok(pieces) = split.zip_mut(dx) else { return };
        let pieces: Vec<(Part, &mut [f32])> = pieces.collect();
        pieces.into_par_iter().for_each(|(part, out)| {
            let r = part.range();
            let ch = part.channels();
            let data = match dy {
                Some(dy) => GradData::Split(&dy[r.clone()], out),
                None => GradData::InPlace(out),
            };
            let params = elem_params(&p, ch.start, ch.end, &coefs[ch]);
            let out = BackOut { dgamma: None, dbeta: None };
            crate::arch::run(isa, Call::Backward { desc: part.desc(), x: &x[r], data, params, out });
        });
    }

    /// The [`Weight`] sums of every channel, by ranges of `per` channels on the pool.
    fn range_totals(
        &self,
        desc: &TensorDesc,
        x: &[f32],
        dy: &[f32],
        mean: &[f32],
        per: usize,
    ) -> [Vec<Weight>; 3] {
        let c = desc.shape().c;
        let mut tot = [vec![0.0; c], vec![0.0; c], vec![0.0; c]];
        let [a, b, d] = &mut tot;
        a.par_chunks_mut(per).zip(b.par_chunks_mut(per)).zip(d.par_chunks_mut(per)).enumerate().for_each(
            |(i, ((a, b), d))| {
                let c0 = i * per;
                let c1 = c0 + a.len();
                self.totals_call(
                    desc,
                    x,
                    GradData::Totals(dy, Totals { dy: a, dyx: b, x: d }, (c0, c1)),
                    mean,
                );
            },
        );
        tot
    }

    /// The [`Weight`] sums of every channel from those of the parts of the fixed cut ([`part_len`]),
    /// computed on the pool and added in part order.
    fn part_totals(&self, desc: &TensorDesc, x: &[f32], dy: &[f32], mean: &[f32]) -> [Vec<Weight>; 3] {
        let parts: Vec<Part> = desc.split(part_len(desc)).collect();
        let each: Vec<[Vec<Weight>; 3]> = parts
            .par_iter()
            .map(|p| {
                let n = p.desc().shape().c;
                let mut t = [vec![0.0; n], vec![0.0; n], vec![0.0; n]];
                let [a, b, d] = &mut t;
                let r = p.range();
                let data = GradData::Totals(&dy[r.clone()], Totals { dy: a, dyx: b, x: d }, (0, n));
                self.totals_call(p.desc(), &x[r], data, &mean[p.channels()]);
                t
            })
            .collect();
        let c = desc.shape().c;
        let mut tot = [vec![0.0; c], vec![0.0; c], vec![0.0; c]];
        for (p, t) in parts.iter().zip(&each) {
            let c0 = p.channels().start;
            for (acc, part) in tot.iter_mut().zip(t) {
                for (a, v) in acc[c0..c0 + part.len()].iter_mut().zip(part) {
                    *a += *v;
                }
            }
        }
        tot
    }

    /// A sums call (`GradData::Totals`), which reads only `mean` of the parameters.
    fn totals_call(&self, desc: &TensorDesc, x: &[f32], data: GradData<'_>, mean: &[f32]) {
        let params =
            BackParams { gamma: None, eps: 0.0, mean, var: mean, batch_stats: true, sums: None, coefs: None };
        let out = BackOut { dgamma: None, dbeta: None };
        crate::arch::run(self.k.isa(), Call::Backward { desc, x, data, params, out });
    }

    /// The backward pass out of place as the serial pass does it, range of channels by range of channels
    /// on the pool: a task sums its channels (reading them in every sample), then runs their element pass
    /// in every sample while `x` and `dy` are still in its core's cache. The ranges hold at most
    /// `range_bytes` of `x` and `dy` together ([`fused_range_bytes`]), whole `unit`s of channels, at
    /// least one. Returns every channel's sums.
    #[allow(clippy::too_many_arguments)]
    fn channel_backward(
        &self,
        desc: &TensorDesc,
        x: &[f32],
        dy: &[f32],
        dx: &mut [f32],
        unit: usize,
        range_bytes: usize,
        p: &BackParams<'_>,
    ) -> [Vec<Weight>; 3] {
        let sh = desc.shape();
        let per = ranges_of(sh.c, (range_bytes / unit_input_bytes(desc, unit).max(1)).max(1) * unit, unit);
        let pieces = range_pieces(desc, dx, per);
        let mut tot = [vec![0.0; sh.c], vec![0.0; sh.c], vec![0.0; sh.c]];
        let [a, b, d] = &mut tot;
        let tasks = a.par_chunks_mut(per).zip(b.par_chunks_mut(per)).zip(d.par_chunks_mut(per));
        let count = sh.count();
        tasks.zip(pieces).enumerate().for_each(|(r, (((a, b), d), outs))| {
            let c0 = r * per;
            let c1 = c0 + a.len();
            let t = Totals { dy: &mut *a, dyx: &mut *b, x: &mut *d };
            self.totals_call(desc, x, GradData::Totals(dy, t, (c0, c1)), p.mean);
            let mut coefs = vec![[0.0f32; 4]; c1 - c0];
            let t = Totals { dy: a, dyx: b, x: d };
            coefs_from_totals(p, &t, c0, count, &mut BackOut { dgamma: None, dbeta: None }, &mut coefs);
            let params = elem_params(p, c0, c1, &coefs);
            for (n, out) in outs.into_iter().enumerate() {
                // (A valid range of a valid descriptor: `channel_part` cannot fail here.)
                let Ok(part) = desc.channel_part(n, c0, c1) else { continue };
                let r = part.range();
                let data = GradData::Split(&dy[r.clone()], out);
                let out = BackOut { dgamma: None, dbeta: None };
                crate::arch::run(
                    self.k.isa(),
                    Call::Backward { desc: part.desc(), x: &x[r], data, params, out },
                );
            }
        });
        tot
    }

    /// Training on validated arguments: `x` `None` for in place (the input is then `y`).
    #[allow(clippy::too_many_arguments)]
    fn training(
        &self,
        desc: &TensorDesc,
        x: Option<&[f32]>,
        y: &mut [f32],
        affine: &Affine<'_>,
        mean: &mut [f32],
        var: &mut [f32],
        epi: Epi<'_>,
        epilogue: Epilogue<'_>,
    ) -> Result<(), Error> {
        match stats_plan(self.k, desc) {
            StatsPlan::Serial => match x {
                Some(x) => self.k.forward_training_with(desc, x, y, affine, mean, var, epilogue),
                None => self.k.forward_training_in_place_with(desc, y, affine, mean, var, epilogue),
            },
            StatsPlan::Channels(unit) => {
                let mut lo = vec![0.0f32; desc.shape().c];
                // A tensor from memory whose unit of channels fits in half the L2: each task normalises
                // the channels whose statistics it computed, from its core's cache, so x is read from
                // memory once (NCHW 32×256×56×56 on two threads, Zen 4: 22 → 27 GB/s). Larger units
                // come from memory either way, and the two passes below spread them better (nChw16c,
                // 6.4 MB a block: 21 → 27 GB/s); a tensor that the L3 holds is re-read from it cheaply,
                // and the fused tasks' one call per sample cost more there.
                let t = crate::tuning::get();
                let unit_bytes = desc.shape().count().saturating_mul(4 * unit);
                let fits = !in_l3(desc) && unit_bytes <= t.l2_bytes / 2;
                match x {
                    Some(x) if fits => {
                        self.channel_training(desc, x, y, unit, affine, (mean, &mut lo, var), epi)
                    }
                    _ => {
                        // In place, a range's statistics read channels of every sample, which other
                        // threads may be overwriting: all statistics first, then the normalise pass.
                        self.range_stats(desc, x.unwrap_or(&*y), channel_per(desc, unit), mean, &mut lo, var);
                        self.normalize(desc, x, y, stats_src(mean, Some(&lo), var, affine), epi);
                    }
                }
                Ok(())
            }
            StatsPlan::Columns => {
                let mut lo = vec![0.0f32; desc.shape().c];
                self.column_stats(desc, x.unwrap_or(&*y), mean, &mut lo, var);
                self.normalize(desc, x, y, stats_src(mean, Some(&lo), var, affine), epi);
                Ok(())
            }
            StatsPlan::Partials => {
                let acc = self.merged_partials(desc, x.unwrap_or(&*y));
                // Finished here (as `forward_from_partials` finishes them, chunk by chunk), so that the
                // pass takes whole rows of wide channels-last tensors.
                let mut lo = vec![0.0f32; desc.shape().c];
                finish(&acc, mean, &mut lo, var);
                self.normalize(desc, x, y, stats_src(mean, Some(&lo), var, affine), epi);
                Ok(())
            }
        }
    }

    /// Training out of place as the serial kernel does it, range of channels by range of channels on the
    /// pool: a task computes its channels' statistics (reading them in every sample), then normalises
    /// the same channels of every sample while they are still in its core's cache. The ranges hold about
    /// `train_chunk_bytes` of x (the serial kernel's chunks), whole `unit`s of channels; each channel's
    /// statistics and each output are computed as the serial kernel computes them.
    #[allow(clippy::too_many_arguments)]
    fn channel_training(
        &self,
        desc: &TensorDesc,
        x: &[f32],
        y: &mut [f32],
        unit: usize,
        affine: &Affine<'_>,
        (mean, lo, var): (&mut [f32], &mut [f32], &mut [f32]),
        epi: Epi<'_>,
    ) {
        let sh = desc.shape();
        let per_channel = sh.count().saturating_mul(4).max(1);
        let fit = (crate::tuning::get().train_chunk_bytes / per_channel).max(1);
        let per = ranges_of(sh.c, fit, unit);
        let pieces = range_pieces(desc, y, per);
        let isa = self.k.isa();
        let tasks = mean.par_chunks_mut(per).zip(lo.par_chunks_mut(per)).zip(var.par_chunks_mut(per));
        tasks.zip(pieces).enumerate().for_each(|(r, (((mean, lo), var), outs))| {
            let c0 = r * per;
            let c1 = c0 + mean.len();
            crate::arch::run(
                isa,
                Call::RangeMoments { desc, x, c0, c1, mean: &mut *mean, lo: &mut *lo, var: &mut *var },
            );
            let params = ParamSrc::Stats {
                mean,
                lo: Some(lo),
                var,
                gamma: affine.gamma.map(|g| &g[c0..c1]),
                beta: affine.beta.map(|b| &b[c0..c1]),
                eps: affine.eps,
            };
            for (n, out) in outs.into_iter().enumerate() {
                // (A valid range of a valid descriptor: `channel_part` cannot fail here.)
                let Ok(p) = desc.channel_part(n, c0, c1) else { continue };
                let r = p.range();
                let epi = Epi { relu: epi.relu, z: epi.z.map(|z| &z[r.clone()]) };
                let data = Data::Split(&x[r], out);
                crate::arch::run(isa, Call::Normalize { desc: p.desc(), data, params, epi });
            }
        });
    }

    /// The statistics of a channels-last tensor ([`StatsPlan::Columns`]): by ranges of columns on
    /// the pool where there are two ([`column_per`]), else the serial call; the serial call's bits.
    /// (Zen 4, AVX-512, two threads, NHWC 1×1024×14×14: training 28 → 51 GB/s, `moments` 42 → 74, in
    /// the roofline's warm runs; one thread's statistics, then the element pass on the pool, before.)
    fn column_stats(&self, desc: &TensorDesc, x: &[f32], mean: &mut [f32], lo: &mut [f32], var: &mut [f32]) {
        let c = desc.shape().c;
        match column_per(c) {
            Some(per) => self.range_stats(desc, x, per, mean, lo, var),
            None => {
                let call = Call::RangeMoments { desc, x, c0: 0, c1: c, mean, lo, var };
                crate::arch::run(self.k.isa(), call);
            }
        }
    }

    /// The statistics of every channel, computed in ranges of `per` channels on the pool (whole units
    /// of NCHW and blocked channels, [`channel_per`]; columns, [`column_per`]): each channel by one
    /// thread, exactly as the serial kernels compute it.
    fn range_stats(
        &self,
        desc: &TensorDesc,
        x: &[f32],
        per: usize,
        mean: &mut [f32],
        lo: &mut [f32],
        var: &mut [f32],
    ) {
        let isa = self.k.isa();
        mean.par_chunks_mut(per)
            .zip(lo.par_chunks_mut(per))
            .zip(var.par_chunks_mut(per))
            .enumerate()
            .for_each(|(i, ((mean, lo), var))| {
                let c0 = i * per;
                let c1 = c0 + mean.len();
                crate::arch::run(isa, Call::RangeMoments { desc, x, c0, c1, mean, lo, var });
            });
    }

    /// The partial statistics of the parts of the fixed cut, computed on the pool and merged in part
    /// order (per channel: the parts holding that channel, in memory order).
    fn merged_partials(&self, desc: &TensorDesc, x: &[f32]) -> Vec<Partial> {
        let parts: Vec<Part> = desc.split(part_len(desc)).collect();
        let isa = self.k.isa();
        let each: Vec<Vec<Partial>> = parts
            .par_iter()
            .map(|p| {
                let mut out = vec![Partial::EMPTY; p.desc().shape().c];
                crate::arch::run(isa, Call::Partials { desc: p.desc(), x: &x[p.range()], out: &mut out });
                out
            })
            .collect();
        // The merge, in part order per channel, on the pool by ranges of channels (the same bits).
        let mut acc = vec![Partial::EMPTY; desc.shape().c];
        let per = desc.shape().c.div_ceil(2 * rayon::current_num_threads()).max(64);
        acc.par_chunks_mut(per).enumerate().for_each(|(i, acc)| {
            let (c0, c1) = (i * per, i * per + acc.len());
            for (p, out) in parts.iter().zip(&each) {
                let (a, b) = (p.channels().start.max(c0), p.channels().end.min(c1));
                if a < b {
                    let from = &out[a - p.channels().start..b - p.channels().start];
                    for (x, y) in acc[a - c0..b - c0].iter_mut().zip(from) {
                        *x = x.merge(*y);
                    }
                }
            }
        });
        acc
    }

    /// The normalise pass with `params` on the parts of the fixed cut, on the pool.
    fn normalize(
        &self,
        desc: &TensorDesc,
        x: Option<&[f32]>,
        y: &mut [f32],
        params: ParamSrc<'_>,
        epi: Epi<'_>,
    ) {
        let isa = self.k.isa();
        if rayon::current_num_threads() == 1 {
            crate::arch::run(isa, normalize_call(desc, data_of(x, y), params, epi));
            return;
        }
        let split = desc.split(work_len(desc));
        // `y` is the tensor's length (validated), so every part has its piece.
        let Ok(pieces) = split.zip_mut(y) else { return };
        let pieces: Vec<(Part, &mut [f32])> = pieces.collect();
        pieces.into_par_iter().for_each(|(p, out)| {
            let r = p.range();
            let ch = p.channels();
            let epi = Epi { relu: epi.relu, z: epi.z.map(|z| &z[r.clone()]) };
            let data = data_of(x.map(|x| &x[r]), out);
            crate::arch::run(isa, normalize_call(p.desc(), data, params.cut(ch.start, ch.end), epi));
        });
    }
}

/// Channels per range of the statistics or sums of NCHW and blocked tensors by channels: two ranges per
/// thread for balance, whole `unit`s. (The ranges do not change any channel's bits.)
fn channel_per(desc: &TensorDesc, unit: usize) -> usize {
    desc.shape().c.div_ceil(2 * rayon::current_num_threads()).div_ceil(unit).max(1) * unit
}

/// The bytes of `x` and `dy` together in `unit` channels of every sample of a tensor of `desc`.
fn unit_input_bytes(desc: &TensorDesc, unit: usize) -> usize {
    desc.shape().count().saturating_mul(8).saturating_mul(unit)
}

/// The bytes of input a task that reads a range of channels in every sample and then re-reads it may take,
/// for a tensor of `desc` whose unit of channels is `unit_bytes` of input: `None` where the two passes over
/// the whole tensor serve better.
///
/// - A tensor of at most twice the non-temporal threshold (16 MB, half the L3 here): none, its tasks'
///   calls per sample cost more than the second pass's reads from the L3 (Zen 4, two threads, backward
///   of 32×2048×7×7 with these ranges, medians of 10 alternating runs: nChw16c 40.9 → 27.6 GB/s, nChw8c
///   33.1 → 22.2, NCHW 33.7 → 22.8).
/// - A unit of at most twice `train_chunk_bytes` (half the L2): ranges of at most twice that per input
///   (the serial pass's chunks), at least a unit, re-read from the core's L2.
/// - Else a unit that fits in the L3's share of a thread (its size over the pool's threads): ranges of
///   a quarter of that share, at least a unit, re-read from the L3. Zen 4 (32 MB L3), two threads,
///   backward, best of 12 alternating runs (GB/s): 32×256×56×56, a unit of x and dy 3.2–12.8 MB,
///   nChw4c 25 → 31, nChw8c 27 → 36, nChw16c 28 → 35, NCHW 25 → 35 (oneDNN: 30.5); 32×64×112×112
///   NCHW 23.5 → 30, nChw4c 23 → 35; 32×512×28×28 nChw8c 23 → 24.5 with ranges of half the share,
///   medians of 15 runs 22.5 → 26 with a quarter (an eighth: 26) (oneDNN: 29–30).
/// - Else (or where the L3's size is unknown) none: each range would come from memory twice, as the two
///   passes read it, but in more and shorter runs.
fn fused_range_bytes(desc: &TensorDesc, unit_bytes: usize) -> Option<usize> {
    let t = crate::tuning::get();
    // (`BNORM_STREAM_MIN_BYTES=0` takes these ranges in CI, and with `BNORM_TRAIN_CHUNK_BYTES=4096` the
    // L3's.)
    if in_l3(desc) {
        return None;
    }
    let share = t.l3_bytes / rayon::current_num_threads();
    if unit_bytes <= 2 * t.train_chunk_bytes {
        Some(4 * t.train_chunk_bytes)
    } else if unit_bytes <= share {
        Some(share / 4)
    } else {
        None
    }
}

/// Channels per range of the tasks that sum and then normalise their own channels: `fit` (the serial
/// pass's chunk), in whole units, and two ranges per thread where the channels allow (balance).
fn ranges_of(c: usize, fit: usize, unit: usize) -> usize {
    let spread = c.div_ceil(2 * rayon::current_num_threads());
    fit.min(spread).div_ceil(unit).max(1) * unit
}

/// Each range of `per` channels' piece of each sample of `y` (a tensor of `desc`): ranges × samples
/// disjoint slices, the range's channels being contiguous in a sample (NCHW planes, whole blocks).
fn range_pieces<'y>(desc: &TensorDesc, y: &'y mut [f32], per: usize) -> Vec<Vec<&'y mut [f32]>> {
    let sh = desc.shape();
    let sample = desc.len() / sh.n;
    let ranges = sh.c.div_ceil(per);
    let lens: Vec<usize> = (0..ranges)
        .map(|r| desc.channel_part(0, r * per, ((r + 1) * per).min(sh.c)).map_or(0, |p| p.desc().len()))
        .collect();
    let mut pieces: Vec<Vec<&mut [f32]>> = (0..ranges).map(|_| Vec::with_capacity(sh.n)).collect();
    for s in y.chunks_mut(sample) {
        let mut rest = s;
        for (list, &len) in pieces.iter_mut().zip(&lens) {
            let (head, tail) = core::mem::take(&mut rest).split_at_mut(len);
            list.push(head);
            rest = tail;
        }
    }
    pieces
}

/// Whether a backward call computes gradient sums (training mode, or `dγ`/`dβ` asked for).
fn needs_sums(p: &BackParams<'_>, g: &ParamGrads<'_>) -> bool {
    p.sums.is_none() && (p.batch_stats || g.dgamma.is_some() || g.dbeta.is_some())
}

/// The element pass's parameters for channels `c0..c1` with their coefficients.
fn elem_params<'a>(p: &BackParams<'a>, c0: usize, c1: usize, coefs: &'a [Coef]) -> BackParams<'a> {
    BackParams {
        gamma: p.gamma.map(|g| &g[c0..c1]),
        eps: p.eps,
        mean: &p.mean[c0..c1],
        var: &p.var[c0..c1],
        batch_stats: p.batch_stats,
        sums: None,
        coefs: Some(coefs),
    }
}

/// The normalising call for `params`: partial statistics have their own (`Call::NormalizePartials`).
fn normalize_call<'a>(desc: &'a TensorDesc, data: Data<'a>, params: ParamSrc<'a>, epi: Epi<'a>) -> Call<'a> {
    match params {
        ParamSrc::Partials { partials, gamma, beta, eps } => {
            Call::NormalizePartials { desc, data, partials, gamma, beta, eps, epi }
        }
        params => Call::Normalize { desc, data, params, epi },
    }
}

fn data_of<'a>(x: Option<&'a [f32]>, y: &'a mut [f32]) -> Data<'a> {
    match x {
        Some(x) => Data::Split(x, y),
        None => Data::InPlace(y),
    }
}

fn stats_src<'a>(mean: &'a [f32], lo: Option<&'a [f32]>, var: &'a [f32], a: &Affine<'a>) -> ParamSrc<'a> {
    ParamSrc::Stats { mean, lo, var, gamma: a.gamma, beta: a.beta, eps: a.eps }
}

/// Merged partials (each counting values: the parts cover every channel) into `mean`, the rest of each
/// mean below its f32 rounding `lo`, and `var`.
fn finish(acc: &[Partial], mean: &mut [f32], lo: &mut [f32], var: &mut [f32]) {
    for (((p, m), l), v) in acc.iter().zip(mean.iter_mut()).zip(lo.iter_mut()).zip(var.iter_mut()) {
        (*m, *l, *v) = p.finish_one();
    }
}

macro_rules! free {
    ($(#[$doc:meta] fn $name:ident($($arg:ident: $ty:ty),*);)*) => {$(
        #[$doc]
        #[allow(clippy::too_many_arguments)]
        pub fn $name($($arg: $ty),*) -> Result<(), Error> {
            Kernels::for_free_functions().par().$name($($arg),*)
        }
    )*};
}

free! {
    /// [`Par::moments`] on the best available tier.
    fn moments(desc: &TensorDesc, x: &[f32], mean: &mut [f32], var: &mut [f32]);
    /// [`Par::partial_moments`] on the best available tier.
    fn partial_moments(desc: &TensorDesc, x: &[f32], out: &mut [Partial]);
    /// [`Par::forward_training`] on the best available tier.
    fn forward_training(
        desc: &TensorDesc, x: &[f32], y: &mut [f32], affine: &Affine<'_>, mean: &mut [f32], var: &mut [f32]
    );
    /// [`Par::forward_training_with`] on the best available tier.
    fn forward_training_with(
        desc: &TensorDesc, x: &[f32], y: &mut [f32], affine: &Affine<'_>, mean: &mut [f32], var: &mut [f32],
        epilogue: Epilogue<'_>
    );
    /// [`Par::forward_training_in_place_with`] on the best available tier.
    fn forward_training_in_place_with(
        desc: &TensorDesc, xy: &mut [f32], affine: &Affine<'_>, mean: &mut [f32], var: &mut [f32],
        epilogue: Epilogue<'_>
    );
    /// [`Par::forward_from_partials`] on the best available tier.
    fn forward_from_partials(
        desc: &TensorDesc, x: &[f32], y: &mut [f32], affine: &Affine<'_>, partials: &[Partial],
        epilogue: Epilogue<'_>
    );
    /// [`Par::forward_from_partials_in_place`] on the best available tier.
    fn forward_from_partials_in_place(
        desc: &TensorDesc, xy: &mut [f32], affine: &Affine<'_>, partials: &[Partial], epilogue: Epilogue<'_>
    );
    /// [`Par::forward_inference`] on the best available tier.
    fn forward_inference(
        desc: &TensorDesc, x: &[f32], y: &mut [f32], affine: &Affine<'_>, mean: &[f32], var: &[f32]
    );
    /// [`Par::forward_inference_with`] on the best available tier.
    fn forward_inference_with(
        desc: &TensorDesc, x: &[f32], y: &mut [f32], affine: &Affine<'_>, mean: &[f32], var: &[f32],
        epilogue: Epilogue<'_>
    );
    /// [`Par::forward_inference_in_place_with`] on the best available tier.
    fn forward_inference_in_place_with(
        desc: &TensorDesc, xy: &mut [f32], affine: &Affine<'_>, mean: &[f32], var: &[f32],
        epilogue: Epilogue<'_>
    );
    /// [`Par::channel_affine_with`] on the best available tier.
    fn channel_affine_with(
        desc: &TensorDesc, x: &[f32], y: &mut [f32], scale: &[f32], shift: &[f32], epilogue: Epilogue<'_>
    );
    /// [`Par::channel_affine_in_place_with`] on the best available tier.
    fn channel_affine_in_place_with(
        desc: &TensorDesc, xy: &mut [f32], scale: &[f32], shift: &[f32], epilogue: Epilogue<'_>
    );
    /// [`Par::backward`] on the best available tier.
    fn backward(
        desc: &TensorDesc, x: &[f32], dy: &[f32], dx: &mut [f32], affine: &Affine<'_>, saved: &Saved<'_>,
        grads: ParamGrads<'_>
    );
    /// [`Par::backward_with`] on the best available tier.
    fn backward_with(
        desc: &TensorDesc, x: &[f32], dy: &[f32], dx: &mut [f32], affine: &Affine<'_>, saved: &Saved<'_>,
        grads: ParamGrads<'_>, epilogue: GradEpilogue<'_>
    );
    /// [`Par::backward_in_place`] on the best available tier.
    fn backward_in_place(
        desc: &TensorDesc, x: &[f32], dy_dx: &mut [f32], affine: &Affine<'_>, saved: &Saved<'_>,
        grads: ParamGrads<'_>
    );
    /// [`Par::backward_in_place_with`] on the best available tier.
    fn backward_in_place_with(
        desc: &TensorDesc, x: &[f32], dy_dx: &mut [f32], affine: &Affine<'_>, saved: &Saved<'_>,
        grads: ParamGrads<'_>, epilogue: GradEpilogue<'_>
    );
    /// [`Par::relu_backward`] on the best available tier.
    fn relu_backward(desc: &TensorDesc, y: &[f32], dy: &[f32], dz: &mut [f32]);
    /// [`Par::relu_backward_in_place`] on the best available tier.
    fn relu_backward_in_place(desc: &TensorDesc, y: &[f32], dy_dz: &mut [f32]);
    /// [`Par::backward_reduce`] on the best available tier.
    fn backward_reduce(
        desc: &TensorDesc, x: &[f32], dy: &[f32], mean: &[f32], sum_dy: &mut [f32], sum_dy_xmu: &mut [f32]
    );
    /// [`Par::backward_elementwise`] on the best available tier.
    fn backward_elementwise(
        desc: &TensorDesc, x: &[f32], dy: &[f32], dx: &mut [f32], affine: &Affine<'_>, saved: &Saved<'_>,
        sums: &GradSums<'_>, grads: ParamGrads<'_>
    );
    /// [`Par::backward_elementwise_in_place`] on the best available tier.
    fn backward_elementwise_in_place(
        desc: &TensorDesc, x: &[f32], dy_dx: &mut [f32], affine: &Affine<'_>, saved: &Saved<'_>,
        sums: &GradSums<'_>, grads: ParamGrads<'_>
    );
}
