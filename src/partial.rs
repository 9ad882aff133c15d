#![forbid(unsafe_code)]
//! Partial statistics: per-channel state that merges exactly, for statistics computed in parts (batch
//! shards on threads or SyncBN ranks) and finished once.

use crate::api::{Momentum, apply_running, check_len, momentum_weight};
use crate::error::Error;

/// One channel's statistics over some of its values, in a form that merges without losing what the
/// kernels know: the exact count, the mean as an unevaluated pair `mean_hi + mean_lo` (the kernels' shifted
/// mean, whose f32 rounding `mean_hi` alone would drop up to `U·|mean|`), and the sum of squared deviations
/// from the mean, `M2 = count · population variance`, in f64.
///
/// Plain data (`#[repr(C)]`, 24 bytes, no padding, [`bytemuck::Pod`]): a `&[Partial]` is bytes for any
/// transport (`bytemuck::cast_slice`), with the field order and sizes fixed. The fields are in the
/// machine's byte order: ranks exchanging them must share it.
///
/// Made by [`partial_moments`] (or [`Kernels::partial_moments`](crate::Kernels::partial_moments)), combined
/// with [`Partial::merge`] or [`merge_partials`], finished with [`finish_partials`] into the `mean` and
/// `var` every operation takes, and given to [`update_running_stats_from_partials`].
///
/// Merging is Chan's formula in f64 with an exact integer count: the merged mean is the count-weighted
/// mean of the two pairs and `M2 = M2a + M2b + δ²·na·nb/n`. It is stable at any offset (no sums of
/// squares, which cancel), but it is not associative bit for bit: merge in a fixed order (rank order,
/// batch order) to get the same bits every time.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct Partial {
    /// Values counted per channel (`N·S` of the part).
    pub count: u64,
    /// The mean rounded to f32.
    pub mean_hi: f32,
    /// What that rounding dropped: the mean is `mean_hi + mean_lo` (0 where the mean is exact in f32).
    pub mean_lo: f32,
    /// Sum of squared deviations from the mean (`count ·` population variance).
    pub m2: f64,
}

impl Partial {
    /// No values: the identity of [`merge`](Self::merge).
    pub const EMPTY: Partial = Partial { count: 0, mean_hi: 0.0, mean_lo: 0.0, m2: 0.0 };

    /// From the kernels' finished statistics of `count` values: the mean pair (`mean + lo` exactly, see
    /// `Summary::finish_split`) and the population variance.
    pub(crate) fn from_stats(count: u64, mean: f32, lo: f32, var: f32) -> Partial {
        Partial { count, mean_hi: mean, mean_lo: lo, m2: f64::from(var) * count as f64 }
    }

    /// The mean as one f64 (`mean_hi + mean_lo`; exact for the pairs the kernels and merges make).
    pub fn mean(&self) -> f64 {
        f64::from(self.mean_hi) + f64::from(self.mean_lo)
    }

    /// The population variance `M2 / count` (NaN for an empty partial).
    pub fn variance(&self) -> f64 {
        self.m2 / self.count as f64
    }

    /// The finished statistics as the kernels use them: the mean pair and the population variance
    /// rounded to f32 (a negative `M2`, only from a hand-made partial, gives 0 as the kernels' rounding
    /// does; a NaN stays NaN). For a non-empty partial.
    pub(crate) fn finish_one(&self) -> (f32, f32, f32) {
        let var = self.m2 / self.count as f64;
        (self.mean_hi, self.mean_lo, if var < 0.0 { 0.0 } else { var as f32 })
    }

    /// The statistics of both parts' values together (Chan's formula, see the type's docs). An empty
    /// side returns the other side unchanged; a NaN or infinite value in either stays in the result.
    #[must_use]
    pub fn merge(self, other: Partial) -> Partial {
        if other.count == 0 {
            return self;
        }
        if self.count == 0 {
            return other;
        }
        let n = self.count.saturating_add(other.count);
        let (ma, mb) = (self.mean(), other.mean());
        let delta = mb - ma;
        let wb = other.count as f64 / n as f64;
        let mean = ma + delta * wb;
        let m2 = self.m2 + other.m2 + delta * delta * (self.count as f64 * wb);
        let hi = mean as f32;
        // The part of the f64 mean below its f32 rounding (exact: Sterbenz). Not for a non-finite mean,
        // which keeps hi's NaN or infinity and a zero lo.
        let lo = if hi.is_finite() { (mean - f64::from(hi)) as f32 } else { 0.0 };
        Partial { count: n, mean_hi: hi, mean_lo: lo, m2 }
    }
}

/// Partial statistics of `x` under `desc` on the best available tier: see
/// [`Kernels::partial_moments`](crate::Kernels::partial_moments).
pub fn partial_moments(desc: &crate::TensorDesc, x: &[f32], out: &mut [Partial]) -> Result<(), Error> {
    crate::Kernels::for_free_functions().partial_moments(desc, x, out)
}

fn check_partials(what: &'static str, p: &[Partial], expected: usize) -> Result<(), Error> {
    if p.len() == expected { Ok(()) } else { Err(Error::LengthMismatch { what, expected, found: p.len() }) }
}

/// `acc[c] = acc[c].merge(part[c])` for every channel: the running merge of parts in a fixed order
/// (start from [`Partial::EMPTY`] or the first part).
///
/// Errors: `part` not as long as `acc` (nothing is written).
pub fn merge_partials(acc: &mut [Partial], part: &[Partial]) -> Result<(), Error> {
    check_partials("part", part, acc.len())?;
    for (a, b) in acc.iter_mut().zip(part) {
        *a = a.merge(*b);
    }
    Ok(())
}

/// The `mean` (rounded to f32) and population `var` of merged partial statistics, ready for the
/// operations that take statistics ([`forward_inference`](crate::forward_inference),
/// [`Saved::batch`](crate::Saved::batch), …).
///
/// Errors: `mean` or `var` not as long as `partials`; a partial that counts no values
/// ([`Error::EmptyPartial`]). Nothing is written on error.
pub fn finish_partials(partials: &[Partial], mean: &mut [f32], var: &mut [f32]) -> Result<(), Error> {
    check_len("mean", mean, partials.len())?;
    check_len("var", var, partials.len())?;
    if let Some(channel) = partials.iter().position(|p| p.count == 0) {
        return Err(Error::EmptyPartial { channel });
    }
    for ((p, m), v) in partials.iter().zip(mean.iter_mut()).zip(var.iter_mut()) {
        // (A NaN M2 stays NaN: `f64::max` would turn it into 0 and hide a bad value in the channel.)
        (*m, _, *v) = p.finish_one();
    }
    Ok(())
}

/// [`update_running_stats`](crate::update_running_stats) from merged partial statistics: the count is each
/// channel's own (`Partial::count`, exact), the unbiased variance `M2/(count − 1)` is formed in f64 from
/// `M2` (not from a rounded f32 variance), and the momentum is PyTorch's, as there.
///
/// Errors: `running_mean` or `running_var` not as long as `partials`; a channel counting fewer than 2
/// values ([`Error::CountTooSmall`]); a momentum outside `[0, 1]` or a cumulative average over 0 batches.
/// Nothing is written on error.
#[allow(clippy::unnecessary_cast)] // `Weight` is f32 on some targets
pub fn update_running_stats_from_partials(
    partials: &[Partial],
    running_mean: &mut [f32],
    running_var: &mut [f32],
    momentum: Momentum,
) -> Result<(), Error> {
    check_len("running_mean", running_mean, partials.len())?;
    check_len("running_var", running_var, partials.len())?;
    if let Some(p) = partials.iter().find(|p| p.count < 2) {
        return Err(Error::CountTooSmall { count: usize::try_from(p.count).unwrap_or(usize::MAX) });
    }
    let m = momentum_weight(momentum)?;
    type W = crate::kernels::stats::Weight;
    apply_running(running_mean, running_var, m, |i| {
        let p = &partials[i];
        (p.mean_hi as W, (p.m2 / (p.count - 1) as f64) as W)
    });
    Ok(())
}
