#![forbid(unsafe_code)]
//! The operations: validation, then one call into the chosen tier.

use crate::dispatch::Kernels;
use crate::kernels::Epi;
use crate::kernels::backward::{BackOut, BackParams, GivenSums, GradData, ReduceOut};
use crate::kernels::ops::{Call, Data, ParamSrc};
use crate::partial::Partial;
use crate::{Error, Shape, TensorDesc};

/// The affine part of batch normalisation: `y = x̂·γ + β` with `x̂ = (x − mean)/√(var + ε)`.
///
/// `gamma: None` means γ = 1 and `beta: None` means β = 0 (oneDNN's `use_scale`/`use_shift` off).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Affine<'a> {
    /// Per-channel scale γ (C values), or `None` for 1.
    pub gamma: Option<&'a [f32]>,
    /// Per-channel shift β (C values), or `None` for 0.
    pub beta: Option<&'a [f32]>,
    /// ε added to the variance; finite and at least 0.
    pub eps: f32,
}

impl Default for Affine<'_> {
    /// No γ, no β, and PyTorch's default ε = 1e-5.
    fn default() -> Self {
        Affine { gamma: None, beta: None, eps: 1e-5 }
    }
}

impl<'a> Affine<'a> {
    /// γ and β given, with ε.
    pub const fn new(gamma: &'a [f32], beta: &'a [f32], eps: f32) -> Self {
        Affine { gamma: Some(gamma), beta: Some(beta), eps }
    }
}

/// Which statistics the forward pass normalised with, for the backward pass.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum StatsMode {
    /// The batch's own statistics (training mode): the gradient flows through the mean and variance.
    Batch,
    /// Fixed statistics (running statistics: frozen BN, oneDNN's `use_global_stats`): `dx = γ·dy/√(var + ε)`.
    Global,
}

/// The statistics a forward pass normalised with, as the backward pass takes them.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Saved<'a> {
    /// Per-channel mean (C values): the `mean` that [`forward_training`] wrote, or the running mean.
    pub mean: &'a [f32],
    /// Per-channel population variance (C values), likewise.
    pub var: &'a [f32],
    /// Whether these are the batch's statistics or fixed ones.
    pub mode: StatsMode,
}

impl<'a> Saved<'a> {
    /// The batch's statistics, as [`forward_training`] wrote them (training mode).
    pub const fn batch(mean: &'a [f32], var: &'a [f32]) -> Self {
        Saved { mean, var, mode: StatsMode::Batch }
    }
    /// Fixed (running) statistics, as [`forward_inference`] used them.
    pub const fn global(mean: &'a [f32], var: &'a [f32]) -> Self {
        Saved { mean, var, mode: StatsMode::Global }
    }
}

/// The parameter gradients a backward call writes, each optional (C values each): `dγ = Σ dy·x̂` and
/// `dβ = Σ dy`.
#[derive(Debug, Default)]
pub struct ParamGrads<'a> {
    /// `dγ`, or `None` not to compute it.
    pub dgamma: Option<&'a mut [f32]>,
    /// `dβ`, or `None` not to compute it.
    pub dbeta: Option<&'a mut [f32]>,
}

impl<'a> ParamGrads<'a> {
    /// Neither gradient.
    pub fn none() -> Self {
        ParamGrads { dgamma: None, dbeta: None }
    }
    /// Both gradients.
    pub fn new(dgamma: &'a mut [f32], dbeta: &'a mut [f32]) -> Self {
        ParamGrads { dgamma: Some(dgamma), dbeta: Some(dbeta) }
    }
}

/// What a forward pass does to each output value `y` before writing it, fused into the pass (oneDNN's
/// `fuse_norm_relu` and `fuse_norm_add_relu`): the output is still written once.
///
/// ReLU is `max(0, y)` with x86 `maxps` semantics: a NaN `y` stays NaN and `−0` stays `−0` (both are
/// what an unfused `max` gives, and `−0 == 0`). The residual sum `y + z` is one f32 rounding of the
/// normalised value plus `z`. In blocked layouts the padding lanes of the output stay +0.0 whatever `z`
/// holds there.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub enum Epilogue<'a> {
    /// The plain output.
    #[default]
    None,
    /// `max(0, y)`.
    Relu,
    /// `max(0, y + z)`: a residual add then ReLU, `z` a tensor of the same descriptor (`desc.len()`
    /// values; the ResNet bottleneck's shortcut).
    AddRelu(&'a [f32]),
}

/// The forward pass's [`Epilogue`] as the backward pass takes it: the gradient that reaches the batch
/// norm is `dy` where the forward output `y` was above 0 and 0 where it was `≤ 0` (a NaN `y` lets `dy`
/// through, as PyTorch's `threshold_backward` does).
///
/// The mask comes from `y`, the forward output, rather than from a bit mask saved by the forward pass
/// (oneDNN's workspace): the caller keeps `y` anyway (it is the next layer's input), so the forward
/// pass needs no second output and no workspace type, and every epilogue and layout takes the same
/// mask. The cost is reading `y` (4 bytes an element, where a bit mask is ⅛ byte).
#[derive(Debug, Default)]
pub enum GradEpilogue<'a> {
    /// No epilogue: `dy` as it is.
    #[default]
    None,
    /// The forward pass had [`Epilogue::Relu`]; `y` is its output (`desc.len()` values).
    Relu {
        /// The forward output.
        y: &'a [f32],
    },
    /// The forward pass had [`Epilogue::AddRelu`]; `y` is its output, and the residual's gradient
    /// `dz` (the masked `dy`, `desc.len()` values) is written here.
    AddRelu {
        /// The forward output.
        y: &'a [f32],
        /// The residual's gradient, written.
        dz: &'a mut [f32],
    },
}

/// Per-channel gradient sums, as [`Kernels::backward_reduce`] writes them and SyncBN all-reduces them:
/// `Σdy` and `Σdy·(x − mean)` over a batch of shape `batch` (for SyncBN the whole global batch, whose
/// values per channel `batch.count()` divide the sums).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct GradSums<'a> {
    /// `Σdy` per channel (C values).
    pub sum_dy: &'a [f32],
    /// `Σdy·(x − mean)` per channel (C values).
    pub sum_dy_xmu: &'a [f32],
    /// The batch the sums cover: the tensor's own shape, or (SyncBN) the global batch's — the same C,
    /// and at least as many values per channel as the tensor.
    pub batch: Shape,
}

pub(crate) fn check_len(what: &'static str, s: &[f32], expected: usize) -> Result<(), Error> {
    if s.len() == expected { Ok(()) } else { Err(Error::LengthMismatch { what, expected, found: s.len() }) }
}

fn check_epilogue<'a>(desc: &TensorDesc, e: Epilogue<'a>) -> Result<Epi<'a>, Error> {
    Ok(match e {
        Epilogue::None => Epi::NONE,
        Epilogue::Relu => Epi { relu: true, z: None },
        Epilogue::AddRelu(z) => {
            check_len("z", z, desc.len())?;
            Epi { relu: true, z: Some(z) }
        }
    })
}

/// The data of a call: out of place `x` and `y` (`x` given), in place one buffer `y` (named `"xy"`).
fn check_data(desc: &TensorDesc, x: Option<&[f32]>, y: &[f32]) -> Result<(), Error> {
    match x {
        Some(x) => {
            check_len("x", x, desc.len())?;
            check_len("y", y, desc.len())
        }
        None => check_len("xy", y, desc.len()),
    }
}

/// Every check of a training call, in the order the errors are reported (shared with `crate::par`).
pub(crate) fn check_training<'a>(
    desc: &TensorDesc,
    (x, y): (Option<&[f32]>, &[f32]),
    affine: &Affine<'_>,
    (mean, var): (&[f32], &[f32]),
    epilogue: Epilogue<'a>,
) -> Result<Epi<'a>, Error> {
    check_data(desc, x, y)?;
    check_stats_out(desc, mean, var)?;
    check_affine(desc, affine)?;
    check_epilogue(desc, epilogue)
}

/// Every check of an inference call (given statistics), in order.
pub(crate) fn check_inference<'a>(
    desc: &TensorDesc,
    (x, y): (Option<&[f32]>, &[f32]),
    affine: &Affine<'_>,
    (mean, var): (&[f32], &[f32]),
    epilogue: Epilogue<'a>,
) -> Result<Epi<'a>, Error> {
    check_data(desc, x, y)?;
    check_stats_in(desc, mean, var)?;
    check_affine(desc, affine)?;
    check_epilogue(desc, epilogue)
}

/// Every check of a `channel_affine` call, in order.
pub(crate) fn check_channel_affine<'a>(
    desc: &TensorDesc,
    (x, y): (Option<&[f32]>, &[f32]),
    (scale, shift): (&[f32], &[f32]),
    epilogue: Epilogue<'a>,
) -> Result<Epi<'a>, Error> {
    check_data(desc, x, y)?;
    check_len("scale", scale, desc.shape().c)?;
    check_len("shift", shift, desc.shape().c)?;
    check_epilogue(desc, epilogue)
}

/// Every check of a `forward_from_partials` call, in order: its parameters and epilogue.
pub(crate) fn check_from_partials<'a>(
    desc: &TensorDesc,
    (x, y): (Option<&[f32]>, &[f32]),
    affine: &Affine<'a>,
    partials: &'a [Partial],
    epilogue: Epilogue<'a>,
) -> Result<Epi<'a>, Error> {
    check_data(desc, x, y)?;
    check_partials_in(desc, affine, partials)?;
    check_epilogue(desc, epilogue)
}

fn check_affine(desc: &TensorDesc, a: &Affine<'_>) -> Result<(), Error> {
    check_affine_channels(desc.shape().c, a)
}

fn check_affine_channels(c: usize, a: &Affine<'_>) -> Result<(), Error> {
    if let Some(g) = a.gamma {
        check_len("gamma", g, c)?;
    }
    if let Some(b) = a.beta {
        check_len("beta", b, c)?;
    }
    if !(a.eps.is_finite() && a.eps >= 0.0) {
        return Err(Error::InvalidEpsilon { eps: a.eps });
    }
    Ok(())
}

pub(crate) fn check_stats_out(desc: &TensorDesc, mean: &[f32], var: &[f32]) -> Result<(), Error> {
    let c = desc.shape().c;
    check_len("mean", mean, c)?;
    check_len("var", var, c)
}

fn check_stats_in(desc: &TensorDesc, mean: &[f32], var: &[f32]) -> Result<(), Error> {
    check_stats_out(desc, mean, var)?;
    check_variances(var)
}

fn check_variances(var: &[f32]) -> Result<(), Error> {
    // A branch-free scan first (it vectorises: this check is paid on every inference call), then the
    // search for the channel to report only when there is one.
    if var.iter().fold(true, |ok, v| ok & (*v >= 0.0)) {
        return Ok(());
    }
    match var.iter().position(|v| v.is_nan() || *v < 0.0) {
        Some(channel) => Err(Error::InvalidVariance { channel, var: var[channel] }),
        None => Ok(()),
    }
}

fn check_partials_in(desc: &TensorDesc, affine: &Affine<'_>, partials: &[Partial]) -> Result<(), Error> {
    let c = desc.shape().c;
    if partials.len() != c {
        return Err(Error::LengthMismatch { what: "partials", expected: c, found: partials.len() });
    }
    if let Some(channel) = partials.iter().position(|p| p.count == 0) {
        return Err(Error::EmptyPartial { channel });
    }
    check_affine(desc, affine)
}

fn check_grads(desc: &TensorDesc, g: &ParamGrads<'_>) -> Result<(), Error> {
    let c = desc.shape().c;
    if let Some(d) = g.dgamma.as_deref() {
        check_len("dgamma", d, c)?;
    }
    if let Some(d) = g.dbeta.as_deref() {
        check_len("dbeta", d, c)?;
    }
    Ok(())
}

pub(crate) fn check_sums(desc: &TensorDesc, g: &GradSums<'_>) -> Result<(), Error> {
    let c = desc.shape().c;
    check_len("sum_dy", g.sum_dy, c)?;
    check_len("sum_dy_xmu", g.sum_dy_xmu, c)?;
    if g.batch.c != c || g.batch.count() < desc.shape().count() {
        return Err(Error::BatchMismatch { batch: g.batch, local: desc.shape() });
    }
    Ok(())
}

pub(crate) fn back_params<'a>(
    affine: &Affine<'a>,
    saved: &Saved<'a>,
    sums: Option<&GradSums<'a>>,
) -> BackParams<'a> {
    BackParams {
        gamma: affine.gamma,
        eps: affine.eps,
        mean: saved.mean,
        var: saved.var,
        batch_stats: saved.mode == StatsMode::Batch,
        sums: sums.map(|g| GivenSums { sum_dy: g.sum_dy, sum_dy_xmu: g.sum_dy_xmu, count: g.batch.count() }),
        #[cfg(feature = "rayon")]
        coefs: None,
    }
}

impl Kernels {
    /// Per-channel mean and population variance (divided by the count N·S) of `x`, in one read pass.
    ///
    /// Errors: `x` not `desc.len()` long, or `mean`/`var` not C long.
    #[inline(always)]
    pub fn moments(
        &self,
        desc: &TensorDesc,
        x: &[f32],
        mean: &mut [f32],
        var: &mut [f32],
    ) -> Result<(), Error> {
        check_len("x", x, desc.len())?;
        check_stats_out(desc, mean, var)?;
        crate::arch::run(self.isa(), Call::Moments { desc, x, mean, var });
        Ok(())
    }

    /// Per-channel [`Partial`] statistics of `x` (a whole tensor, or a part of one such as a range of
    /// its batch, described by its own descriptor) into `out`: one read pass, the statistics of
    /// [`moments`](Self::moments) kept unfinished (the mean as a pair, `M2` in f64) so that parts merge
    /// ([`Partial::merge`], [`crate::merge_partials`]) into the statistics of the whole.
    ///
    /// A single part finished with [`crate::finish_partials`] gives `moments`' mean bit for bit, and its
    /// variance within one rounding (`M2 = var·count` is formed from the rounded variance). Merged parts
    /// meet `moments`' accuracy bounds (README, Guarantees), at any offset: each part's mean is carried
    /// to the merge with the bits its f32 rounding drops.
    ///
    /// Errors: `x` not `desc.len()` long, `out` not C long. Nothing is written on error.
    pub fn partial_moments(&self, desc: &TensorDesc, x: &[f32], out: &mut [Partial]) -> Result<(), Error> {
        check_len("x", x, desc.len())?;
        let c = desc.shape().c;
        if out.len() != c {
            return Err(Error::LengthMismatch { what: "out", expected: c, found: out.len() });
        }
        crate::arch::run(self.isa(), Call::Partials { desc, x, out });
        Ok(())
    }

    /// Training forward: the batch's statistics into `mean`/`var`, then
    /// `y = (x − mean)·γ/√(var + ε) + β`. Reads `x` twice and writes `y` once.
    ///
    /// Errors: slice lengths (`x`, `y`: `desc.len()`; `mean`, `var`, `gamma`, `beta`: C), ε negative or
    /// not finite.
    #[inline(always)]
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

    /// [`forward_training`](Self::forward_training) with a fused [`Epilogue`] (ReLU, or residual add and
    /// ReLU) applied to each output value before it is written: one pass, no extra write.
    ///
    /// Errors: as [`forward_training`](Self::forward_training), and an [`Epilogue::AddRelu`] residual not
    /// `desc.len()` long (`"z"`).
    #[allow(clippy::too_many_arguments)]
    #[inline(always)]
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
        let data = Data::Split(x, y);
        let (gamma, beta, eps) = (affine.gamma, affine.beta, affine.eps);
        crate::arch::run(self.isa(), Call::Training { desc, data, gamma, beta, eps, mean, var, epi });
        Ok(())
    }

    /// [`forward_training`](Self::forward_training) overwriting its input: gives the same bits.
    #[inline(always)]
    pub fn forward_training_in_place(
        &self,
        desc: &TensorDesc,
        xy: &mut [f32],
        affine: &Affine<'_>,
        mean: &mut [f32],
        var: &mut [f32],
    ) -> Result<(), Error> {
        self.forward_training_in_place_with(desc, xy, affine, mean, var, Epilogue::None)
    }

    /// [`forward_training_with`](Self::forward_training_with) overwriting its input: gives the same bits.
    #[inline(always)]
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
        let data = Data::InPlace(xy);
        let (gamma, beta, eps) = (affine.gamma, affine.beta, affine.eps);
        crate::arch::run(self.isa(), Call::Training { desc, data, gamma, beta, eps, mean, var, epi });
        Ok(())
    }

    /// Training's normalise pass with statistics merged from parts (PyTorch's `batch_norm_elemt`, the
    /// second half of SyncBN's forward): `y = (x − mean)·γ/√(var + ε) + β` with each channel's mean
    /// the pair `mean_hi + mean_lo` and its variance `M2/count` of `partials` (C merged
    /// [`Partial`]s, see [`crate::merge_partials`]), computed exactly as
    /// [`forward_training_with`](Self::forward_training_with) normalises with the batch's statistics.
    /// `desc` is the tensor's or a part's ([`crate::Part`]; `partials` then cut to its channels with
    /// [`Part::per_channel`](crate::Part::per_channel)).
    ///
    /// Given the partials of the whole tensor in one part, the outputs are `forward_training_with`'s
    /// bits; given merged parts, they differ from them only through the statistics (merged parts meet
    /// the same accuracy bounds). An epilogue is applied in a second pass over `y` (the fused bits, one
    /// more read and write of the output): this call has one entry point per tier, so that the f64
    /// finish of the partials stays out of every other operation's code (3 KB of a Cortex-M's flash).
    ///
    /// Errors: slice lengths (`x`, `y`: `desc.len()`; `partials`, `gamma`, `beta`: C), ε negative or not
    /// finite, a partial that counts no values ([`Error::EmptyPartial`]), a residual not `desc.len()`
    /// long (`"z"`).
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
        let (gamma, beta, eps) = (affine.gamma, affine.beta, affine.eps);
        let data = Data::Split(x, y);
        crate::arch::run(self.isa(), Call::NormalizePartials { desc, data, partials, gamma, beta, eps, epi });
        Ok(())
    }

    /// [`forward_from_partials`](Self::forward_from_partials) overwriting its input: gives the same bits.
    pub fn forward_from_partials_in_place(
        &self,
        desc: &TensorDesc,
        xy: &mut [f32],
        affine: &Affine<'_>,
        partials: &[Partial],
        epilogue: Epilogue<'_>,
    ) -> Result<(), Error> {
        let epi = check_from_partials(desc, (None, xy), affine, partials, epilogue)?;
        let (gamma, beta, eps) = (affine.gamma, affine.beta, affine.eps);
        let data = Data::InPlace(xy);
        crate::arch::run(self.isa(), Call::NormalizePartials { desc, data, partials, gamma, beta, eps, epi });
        Ok(())
    }

    /// Inference forward with given statistics (running mean and variance):
    /// `y = (x − mean)·γ/√(var + ε) + β`.
    ///
    /// Errors: slice lengths, ε negative or not finite, a variance negative or NaN.
    #[inline(always)]
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

    /// [`forward_inference`](Self::forward_inference) with a fused [`Epilogue`].
    ///
    /// Errors: as [`forward_inference`](Self::forward_inference), and an [`Epilogue::AddRelu`] residual
    /// not `desc.len()` long (`"z"`).
    #[allow(clippy::too_many_arguments)]
    #[inline(always)]
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
        let params =
            ParamSrc::Stats { mean, lo: None, var, gamma: affine.gamma, beta: affine.beta, eps: affine.eps };
        crate::arch::run(self.isa(), Call::Normalize { desc, data: Data::Split(x, y), params, epi });
        Ok(())
    }

    /// [`forward_inference`](Self::forward_inference) overwriting its input: gives the same bits.
    #[inline(always)]
    pub fn forward_inference_in_place(
        &self,
        desc: &TensorDesc,
        xy: &mut [f32],
        affine: &Affine<'_>,
        mean: &[f32],
        var: &[f32],
    ) -> Result<(), Error> {
        self.forward_inference_in_place_with(desc, xy, affine, mean, var, Epilogue::None)
    }

    /// [`forward_inference_with`](Self::forward_inference_with) overwriting its input: gives the same
    /// bits.
    #[inline(always)]
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
        let params =
            ParamSrc::Stats { mean, lo: None, var, gamma: affine.gamma, beta: affine.beta, eps: affine.eps };
        crate::arch::run(self.isa(), Call::Normalize { desc, data: Data::InPlace(xy), params, epi });
        Ok(())
    }

    /// `y = x·scale[c] + shift[c]`, for parameters folded ahead of time.
    ///
    /// Errors: slice lengths (`scale`, `shift`: C).
    #[inline(always)]
    pub fn channel_affine(
        &self,
        desc: &TensorDesc,
        x: &[f32],
        y: &mut [f32],
        scale: &[f32],
        shift: &[f32],
    ) -> Result<(), Error> {
        self.channel_affine_with(desc, x, y, scale, shift, Epilogue::None)
    }

    /// [`channel_affine`](Self::channel_affine) with a fused [`Epilogue`] (a folded BN with its ReLU).
    ///
    /// Errors: as [`channel_affine`](Self::channel_affine), and an [`Epilogue::AddRelu`] residual not
    /// `desc.len()` long (`"z"`).
    #[inline(always)]
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
        let params = ParamSrc::Affine { scale, shift };
        crate::arch::run(self.isa(), Call::Normalize { desc, data: Data::Split(x, y), params, epi });
        Ok(())
    }

    /// [`channel_affine`](Self::channel_affine) overwriting its input: gives the same bits.
    #[inline(always)]
    pub fn channel_affine_in_place(
        &self,
        desc: &TensorDesc,
        xy: &mut [f32],
        scale: &[f32],
        shift: &[f32],
    ) -> Result<(), Error> {
        self.channel_affine_in_place_with(desc, xy, scale, shift, Epilogue::None)
    }

    /// [`channel_affine_with`](Self::channel_affine_with) overwriting its input: gives the same bits.
    #[inline(always)]
    pub fn channel_affine_in_place_with(
        &self,
        desc: &TensorDesc,
        xy: &mut [f32],
        scale: &[f32],
        shift: &[f32],
        epilogue: Epilogue<'_>,
    ) -> Result<(), Error> {
        let epi = check_channel_affine(desc, (None, xy), (scale, shift), epilogue)?;
        let params = ParamSrc::Affine { scale, shift };
        crate::arch::run(self.isa(), Call::Normalize { desc, data: Data::InPlace(xy), params, epi });
        Ok(())
    }

    /// The backward pass: `dx` (and, where asked for, `dγ`, `dβ`) from `x`, the output gradient `dy` and
    /// the statistics the forward pass used. With `x̂ = (x − mean)·inv`, `inv = 1/√(var + ε)` computed as
    /// the forward pass computes it, and `M = N·S`:
    ///
    /// - [`StatsMode::Batch`] (training): `dβ = Σdy`, `dγ = Σdy·x̂`,
    ///   `dx = γ·inv·(dy − dβ/M − x̂·dγ/M)`;
    /// - [`StatsMode::Global`] (frozen statistics): `dx = γ·inv·dy`, and `dγ`, `dβ` as above.
    ///
    /// `affine.beta` plays no part (it is only checked, so the forward pass's `Affine` can be passed);
    /// `gamma: None` is γ = 1. In training mode the sums are one read pass of `x` and `dy` with blocked
    /// accumulation (README, Guarantees), channel chunk by channel chunk, and each chunk's `dx` is written
    /// while its `x` and `dy` are still in cache; with global statistics and no `dγ`/`dβ` it is a single
    /// pass over `dy`. The centred sum `Σ(dy − mean(dy))·(x − mean)` is used, so the f32 rounding of the
    /// saved mean does not enter `dγ` or `dx`, and a constant `dy` gives `dx` exactly 0.
    ///
    /// Errors (before anything is written): `x`, `dy` or `dx` not `desc.len()` long; `mean`, `var`,
    /// `gamma`, `beta`, `dgamma` or `dbeta` not C long; ε negative or not finite; a variance negative or
    /// NaN.
    #[allow(clippy::too_many_arguments)] // the primitive's inputs, as oneDNN's backward takes them
    #[inline(always)]
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
        check_len("x", x, desc.len())?;
        check_len("dy", dy, desc.len())?;
        check_len("dx", dx, desc.len())?;
        self.backward_call(desc, x, Data::Split(dy, dx), affine, saved, None, grads)
    }

    /// [`backward`](Self::backward) for a forward pass that had an [`Epilogue`]: `dy` is first masked
    /// by the forward output (see [`GradEpilogue`]); with [`GradEpilogue::AddRelu`] the masked `dy` is
    /// also the residual's gradient, written to `dz`. Gives the bits of [`relu_backward`](Self::relu_backward)
    /// followed by [`backward`](Self::backward) on its result.
    ///
    /// The mask is its own pass (read `dy` and `y`, write the masked gradient, into `dx` for ReLU and
    /// `dz` for add+ReLU), then the backward pass reads that: one more pass than a plain backward.
    ///
    /// Errors (before anything is written): as [`backward`](Self::backward), and `y` or `dz` not
    /// `desc.len()` long.
    #[allow(clippy::too_many_arguments)]
    #[inline(always)]
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
        match epilogue {
            GradEpilogue::None => {
                self.backward_call(desc, x, Data::Split(dy, dx), affine, saved, None, grads)
            }
            GradEpilogue::Relu { y } => {
                crate::arch::run(self.isa(), Call::ReluGrad { y, data: Data::Split(dy, dx) });
                self.backward_call(desc, x, Data::InPlace(dx), affine, saved, None, grads)
            }
            GradEpilogue::AddRelu { y, dz } => {
                crate::arch::run(self.isa(), Call::ReluGrad { y, data: Data::Split(dy, dz) });
                self.backward_call(desc, x, Data::Split(dz, dx), affine, saved, None, grads)
            }
        }
    }

    /// [`backward_with`](Self::backward_with) writing `dx` over `dy` (`dy_dx`): gives the same bits.
    #[allow(clippy::too_many_arguments)]
    #[inline(always)]
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
        match epilogue {
            GradEpilogue::None => {}
            GradEpilogue::Relu { y } => {
                crate::arch::run(self.isa(), Call::ReluGrad { y, data: Data::InPlace(dy_dx) });
            }
            GradEpilogue::AddRelu { y, dz } => {
                crate::arch::run(self.isa(), Call::ReluGrad { y, data: Data::Split(dy_dx, dz) });
                return self.backward_call(desc, x, Data::Split(dz, dy_dx), affine, saved, None, grads);
            }
        }
        self.backward_call(desc, x, Data::InPlace(dy_dx), affine, saved, None, grads)
    }

    /// ReLU's backward on its own: `dz[i] = dy[i]` where `y[i] > 0` (or NaN), `+0` where `y[i] ≤ 0`
    /// (`y` the forward output of a pass with [`Epilogue::Relu`] or [`Epilogue::AddRelu`]). The masking
    /// step of [`backward_with`](Self::backward_with), for use before the SyncBN halves
    /// ([`backward_reduce`](Self::backward_reduce), [`backward_elementwise`](Self::backward_elementwise));
    /// for add+ReLU `dz` is also the residual's gradient.
    ///
    /// Errors: `y`, `dy` or `dz` not `desc.len()` long.
    #[inline(always)]
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
        crate::arch::run(self.isa(), Call::ReluGrad { y, data: Data::Split(dy, dz) });
        Ok(())
    }

    /// [`relu_backward`](Self::relu_backward) overwriting `dy` (`dy_dz`): gives the same bits.
    #[inline(always)]
    pub fn relu_backward_in_place(
        &self,
        desc: &TensorDesc,
        y: &[f32],
        dy_dz: &mut [f32],
    ) -> Result<(), Error> {
        check_len("y", y, desc.len())?;
        check_len("dy_dz", dy_dz, desc.len())?;
        crate::arch::run(self.isa(), Call::ReluGrad { y, data: Data::InPlace(dy_dz) });
        Ok(())
    }

    /// [`backward`](Self::backward) writing `dx` over `dy` (`dy_dx`): gives the same bits.
    #[inline(always)]
    pub fn backward_in_place(
        &self,
        desc: &TensorDesc,
        x: &[f32],
        dy_dx: &mut [f32],
        affine: &Affine<'_>,
        saved: &Saved<'_>,
        grads: ParamGrads<'_>,
    ) -> Result<(), Error> {
        check_len("x", x, desc.len())?;
        check_len("dy_dx", dy_dx, desc.len())?;
        self.backward_call(desc, x, Data::InPlace(dy_dx), affine, saved, None, grads)
    }

    /// The backward pass's first half (PyTorch's `batch_norm_backward_reduce`): per channel
    /// `sum_dy = Σdy` and `sum_dy_xmu = Σdy·(x − mean)`, one read pass of `x` and `dy` with the blocked
    /// accumulation of [`backward`](Self::backward). For SyncBN, all-reduce (sum) both over the ranks,
    /// then run [`backward_elementwise`](Self::backward_elementwise) on each rank's shard.
    ///
    /// Errors: `x`, `dy` not `desc.len()` long; `mean`, `sum_dy`, `sum_dy_xmu` not C long.
    #[allow(clippy::too_many_arguments)]
    #[inline(always)]
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
        let data = GradData::Reduce(dy, ReduceOut { sum_dy, sum_dy_xmu });
        // The reduce half reads only `mean` from the parameters.
        let params = BackParams {
            gamma: None,
            eps: 0.0,
            mean,
            var: mean,
            batch_stats: true,
            sums: None,
            #[cfg(feature = "rayon")]
            coefs: None,
        };
        let out = BackOut { dgamma: None, dbeta: None };
        crate::arch::run(self.isa(), Call::Backward { desc, x, data, params, out });
        Ok(())
    }

    /// The backward pass's second half (PyTorch's `batch_norm_backward_elemt`): `dx` from sums
    /// [`backward_reduce`](Self::backward_reduce) wrote (all-reduced over the ranks, for SyncBN), and
    /// `dγ = inv·sum_dy_xmu`, `dβ = sum_dy` where asked for. In training mode
    /// `dx = γ·inv·(dy − sum_dy/M − (x − mean)·inv²·sum_dy_xmu/M)` with `M = sums.batch.count()`; with
    /// global statistics `dx = γ·inv·dy` (the sums then only give `dγ`, `dβ`).
    ///
    /// The halves use `Σdy·(x − mean)` as it is, where [`backward`](Self::backward) corrects it by
    /// `mean(dy)·Σ(x − mean)` (a sum that does not all-reduce to the same thing): their results differ
    /// by that term, which is 0 where `mean` is the exact mean and otherwise of the order of the mean's
    /// f32 rounding (README, Guarantees).
    ///
    /// Errors: as [`backward`](Self::backward), plus `sum_dy`/`sum_dy_xmu` not C long, and a
    /// `sums.batch` with another C or fewer values per channel than `desc`.
    #[allow(clippy::too_many_arguments)]
    #[inline(always)]
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
        self.backward_call(desc, x, Data::Split(dy, dx), affine, saved, Some(sums), grads)
    }

    /// [`backward_elementwise`](Self::backward_elementwise) writing `dx` over `dy`: gives the same bits.
    #[allow(clippy::too_many_arguments)]
    #[inline(always)]
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
        self.backward_call(desc, x, Data::InPlace(dy_dx), affine, saved, Some(sums), grads)
    }
}

impl Kernels {
    /// The checks every backward call shares (the data lengths are checked by the caller), then the
    /// call on this tier.
    #[allow(clippy::too_many_arguments)]
    #[inline(always)]
    fn backward_call(
        &self,
        desc: &TensorDesc,
        x: &[f32],
        data: Data<'_>,
        affine: &Affine<'_>,
        saved: &Saved<'_>,
        sums: Option<&GradSums<'_>>,
        grads: ParamGrads<'_>,
    ) -> Result<(), Error> {
        check_backward(desc, affine, saved, &grads)?;
        if let Some(g) = sums {
            check_sums(desc, g)?;
        }
        let params = back_params(affine, saved, sums);
        let out = BackOut { dgamma: grads.dgamma, dbeta: grads.dbeta };
        let data = match data {
            Data::Split(dy, dx) => GradData::Split(dy, dx),
            Data::InPlace(dydx) => GradData::InPlace(dydx),
        };
        crate::arch::run(self.isa(), Call::Backward { desc, x, data, params, out });
        Ok(())
    }
}

/// The checks of [`Kernels::backward_with`] (`dy` `None`: in place, `dx` named `what` holding `dy`),
/// shared with the parallel front end.
#[allow(clippy::too_many_arguments)]
pub(crate) fn check_backward_with(
    desc: &TensorDesc,
    x: &[f32],
    dy: Option<&[f32]>,
    (what, dx): (&'static str, &[f32]),
    epilogue: &GradEpilogue<'_>,
    affine: &Affine<'_>,
    saved: &Saved<'_>,
    grads: &ParamGrads<'_>,
) -> Result<(), Error> {
    check_len("x", x, desc.len())?;
    if let Some(dy) = dy {
        check_len("dy", dy, desc.len())?;
    }
    check_len(what, dx, desc.len())?;
    check_grad_epilogue(desc, epilogue)?;
    check_backward(desc, affine, saved, grads)
}

/// The checks of [`Kernels::backward_reduce`], shared with the parallel front end.
pub(crate) fn check_reduce(
    desc: &TensorDesc,
    x: &[f32],
    dy: &[f32],
    mean: &[f32],
    sum_dy: &[f32],
    sum_dy_xmu: &[f32],
) -> Result<(), Error> {
    let c = desc.shape().c;
    check_len("x", x, desc.len())?;
    check_len("dy", dy, desc.len())?;
    check_len("mean", mean, c)?;
    check_len("sum_dy", sum_dy, c)?;
    check_len("sum_dy_xmu", sum_dy_xmu, c)
}

fn check_grad_epilogue(desc: &TensorDesc, e: &GradEpilogue<'_>) -> Result<(), Error> {
    match e {
        GradEpilogue::None => Ok(()),
        GradEpilogue::Relu { y } => check_len("y", y, desc.len()),
        GradEpilogue::AddRelu { y, dz } => {
            check_len("y", y, desc.len())?;
            check_len("dz", dz, desc.len())
        }
    }
}

pub(crate) fn check_backward(
    desc: &TensorDesc,
    affine: &Affine<'_>,
    saved: &Saved<'_>,
    g: &ParamGrads<'_>,
) -> Result<(), Error> {
    check_stats_in(desc, saved.mean, saved.var)?;
    check_affine(desc, affine)?;
    check_grads(desc, g)
}

/// [`Kernels::moments`] on the best available tier.
pub fn moments(desc: &TensorDesc, x: &[f32], mean: &mut [f32], var: &mut [f32]) -> Result<(), Error> {
    Kernels::for_free_functions().moments(desc, x, mean, var)
}

/// [`Kernels::forward_training`] on the best available tier.
pub fn forward_training(
    desc: &TensorDesc,
    x: &[f32],
    y: &mut [f32],
    affine: &Affine<'_>,
    mean: &mut [f32],
    var: &mut [f32],
) -> Result<(), Error> {
    Kernels::for_free_functions().forward_training(desc, x, y, affine, mean, var)
}

/// [`Kernels::forward_training_in_place`] on the best available tier.
pub fn forward_training_in_place(
    desc: &TensorDesc,
    xy: &mut [f32],
    affine: &Affine<'_>,
    mean: &mut [f32],
    var: &mut [f32],
) -> Result<(), Error> {
    Kernels::for_free_functions().forward_training_in_place(desc, xy, affine, mean, var)
}

/// [`Kernels::forward_inference`] on the best available tier.
pub fn forward_inference(
    desc: &TensorDesc,
    x: &[f32],
    y: &mut [f32],
    affine: &Affine<'_>,
    mean: &[f32],
    var: &[f32],
) -> Result<(), Error> {
    Kernels::for_free_functions().forward_inference(desc, x, y, affine, mean, var)
}

/// [`Kernels::forward_inference_in_place`] on the best available tier.
pub fn forward_inference_in_place(
    desc: &TensorDesc,
    xy: &mut [f32],
    affine: &Affine<'_>,
    mean: &[f32],
    var: &[f32],
) -> Result<(), Error> {
    Kernels::for_free_functions().forward_inference_in_place(desc, xy, affine, mean, var)
}

/// [`Kernels::channel_affine`] on the best available tier.
pub fn channel_affine(
    desc: &TensorDesc,
    x: &[f32],
    y: &mut [f32],
    scale: &[f32],
    shift: &[f32],
) -> Result<(), Error> {
    Kernels::for_free_functions().channel_affine(desc, x, y, scale, shift)
}

/// [`Kernels::channel_affine_in_place`] on the best available tier.
pub fn channel_affine_in_place(
    desc: &TensorDesc,
    xy: &mut [f32],
    scale: &[f32],
    shift: &[f32],
) -> Result<(), Error> {
    Kernels::for_free_functions().channel_affine_in_place(desc, xy, scale, shift)
}

/// [`Kernels::backward`] on the best available tier.
pub fn backward(
    desc: &TensorDesc,
    x: &[f32],
    dy: &[f32],
    dx: &mut [f32],
    affine: &Affine<'_>,
    saved: &Saved<'_>,
    grads: ParamGrads<'_>,
) -> Result<(), Error> {
    Kernels::for_free_functions().backward(desc, x, dy, dx, affine, saved, grads)
}

/// [`Kernels::backward_in_place`] on the best available tier.
pub fn backward_in_place(
    desc: &TensorDesc,
    x: &[f32],
    dy_dx: &mut [f32],
    affine: &Affine<'_>,
    saved: &Saved<'_>,
    grads: ParamGrads<'_>,
) -> Result<(), Error> {
    Kernels::for_free_functions().backward_in_place(desc, x, dy_dx, affine, saved, grads)
}

/// [`Kernels::forward_training_with`] on the best available tier.
pub fn forward_training_with(
    desc: &TensorDesc,
    x: &[f32],
    y: &mut [f32],
    affine: &Affine<'_>,
    mean: &mut [f32],
    var: &mut [f32],
    epilogue: Epilogue<'_>,
) -> Result<(), Error> {
    Kernels::for_free_functions().forward_training_with(desc, x, y, affine, mean, var, epilogue)
}

/// [`Kernels::forward_training_in_place_with`] on the best available tier.
pub fn forward_training_in_place_with(
    desc: &TensorDesc,
    xy: &mut [f32],
    affine: &Affine<'_>,
    mean: &mut [f32],
    var: &mut [f32],
    epilogue: Epilogue<'_>,
) -> Result<(), Error> {
    Kernels::for_free_functions().forward_training_in_place_with(desc, xy, affine, mean, var, epilogue)
}

/// [`Kernels::forward_from_partials`] on the best available tier.
pub fn forward_from_partials(
    desc: &TensorDesc,
    x: &[f32],
    y: &mut [f32],
    affine: &Affine<'_>,
    partials: &[Partial],
    epilogue: Epilogue<'_>,
) -> Result<(), Error> {
    Kernels::for_free_functions().forward_from_partials(desc, x, y, affine, partials, epilogue)
}

/// [`Kernels::forward_from_partials_in_place`] on the best available tier.
pub fn forward_from_partials_in_place(
    desc: &TensorDesc,
    xy: &mut [f32],
    affine: &Affine<'_>,
    partials: &[Partial],
    epilogue: Epilogue<'_>,
) -> Result<(), Error> {
    Kernels::for_free_functions().forward_from_partials_in_place(desc, xy, affine, partials, epilogue)
}

/// [`Kernels::forward_inference_with`] on the best available tier.
pub fn forward_inference_with(
    desc: &TensorDesc,
    x: &[f32],
    y: &mut [f32],
    affine: &Affine<'_>,
    mean: &[f32],
    var: &[f32],
    epilogue: Epilogue<'_>,
) -> Result<(), Error> {
    Kernels::for_free_functions().forward_inference_with(desc, x, y, affine, mean, var, epilogue)
}

/// [`Kernels::forward_inference_in_place_with`] on the best available tier.
pub fn forward_inference_in_place_with(
    desc: &TensorDesc,
    xy: &mut [f32],
    affine: &Affine<'_>,
    mean: &[f32],
    var: &[f32],
    epilogue: Epilogue<'_>,
) -> Result<(), Error> {
    Kernels::for_free_functions().forward_inference_in_place_with(desc, xy, affine, mean, var, epilogue)
}

/// [`Kernels::channel_affine_with`] on the best available tier.
pub fn channel_affine_with(
    desc: &TensorDesc,
    x: &[f32],
    y: &mut [f32],
    scale: &[f32],
    shift: &[f32],
    epilogue: Epilogue<'_>,
) -> Result<(), Error> {
    Kernels::for_free_functions().channel_affine_with(desc, x, y, scale, shift, epilogue)
}

/// [`Kernels::channel_affine_in_place_with`] on the best available tier.
pub fn channel_affine_in_place_with(
    desc: &TensorDesc,
    xy: &mut [f32],
    scale: &[f32],
    shift: &[f32],
    epilogue: Epilogue<'_>,
) -> Result<(), Error> {
    Kernels::for_free_functions().channel_affine_in_place_with(desc, xy, scale, shift, epilogue)
}

/// [`Kernels::backward_with`] on the best available tier.
#[allow(clippy::too_many_arguments)]
pub fn backward_with(
    desc: &TensorDesc,
    x: &[f32],
    dy: &[f32],
    dx: &mut [f32],
    affine: &Affine<'_>,
    saved: &Saved<'_>,
    grads: ParamGrads<'_>,
    epilogue: GradEpilogue<'_>,
) -> Result<(), Error> {
    Kernels::for_free_functions().backward_with(desc, x, dy, dx, affine, saved, grads, epilogue)
}

/// [`Kernels::backward_in_place_with`] on the best available tier.
pub fn backward_in_place_with(
    desc: &TensorDesc,
    x: &[f32],
    dy_dx: &mut [f32],
    affine: &Affine<'_>,
    saved: &Saved<'_>,
    grads: ParamGrads<'_>,
    epilogue: GradEpilogue<'_>,
) -> Result<(), Error> {
    Kernels::for_free_functions().backward_in_place_with(desc, x, dy_dx, affine, saved, grads, epilogue)
}

/// [`Kernels::relu_backward`] on the best available tier.
pub fn relu_backward(desc: &TensorDesc, y: &[f32], dy: &[f32], dz: &mut [f32]) -> Result<(), Error> {
    Kernels::for_free_functions().relu_backward(desc, y, dy, dz)
}

/// [`Kernels::relu_backward_in_place`] on the best available tier.
pub fn relu_backward_in_place(desc: &TensorDesc, y: &[f32], dy_dz: &mut [f32]) -> Result<(), Error> {
    Kernels::for_free_functions().relu_backward_in_place(desc, y, dy_dz)
}

/// [`Kernels::backward_reduce`] on the best available tier.
pub fn backward_reduce(
    desc: &TensorDesc,
    x: &[f32],
    dy: &[f32],
    mean: &[f32],
    sum_dy: &mut [f32],
    sum_dy_xmu: &mut [f32],
) -> Result<(), Error> {
    Kernels::for_free_functions().backward_reduce(desc, x, dy, mean, sum_dy, sum_dy_xmu)
}

/// [`Kernels::backward_elementwise`] on the best available tier.
#[allow(clippy::too_many_arguments)]
pub fn backward_elementwise(
    desc: &TensorDesc,
    x: &[f32],
    dy: &[f32],
    dx: &mut [f32],
    affine: &Affine<'_>,
    saved: &Saved<'_>,
    sums: &GradSums<'_>,
    grads: ParamGrads<'_>,
) -> Result<(), Error> {
    Kernels::for_free_functions().backward_elementwise(desc, x, dy, dx, affine, saved, sums, grads)
}

/// [`Kernels::backward_elementwise_in_place`] on the best available tier.
pub fn backward_elementwise_in_place(
    desc: &TensorDesc,
    x: &[f32],
    dy_dx: &mut [f32],
    affine: &Affine<'_>,
    saved: &Saved<'_>,
    sums: &GradSums<'_>,
    grads: ParamGrads<'_>,
) -> Result<(), Error> {
    Kernels::for_free_functions().backward_elementwise_in_place(desc, x, dy_dx, affine, saved, sums, grads)
}

/// How running statistics follow the batches: PyTorch's `BatchNorm` `momentum` argument.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Momentum {
    /// `r ← (1 − m)·r + m·batch` with `m` in `[0, 1]` (PyTorch's `momentum = m`; its default is 0.1).
    Exponential(f32),
    /// The cumulative average of every batch so far (PyTorch's `momentum = None`): the `batches`-th
    /// batch, counting this one from 1, is weighted `1/batches` (PyTorch's `num_batches_tracked` after
    /// its increment). The first batch replaces the running statistics.
    CumulativeAverage {
        /// Batches seen, this one included (at least 1).
        batches: u64,
    },
}

/// Updates running statistics the way PyTorch does, from a batch's `mean` and population `var` over the
/// `N·S` values per channel of `desc` (the descriptor the statistics were computed on — for SyncBN, one
/// describing the whole global batch): with `m` the momentum's weight,
/// `rm ← (1 − m)·rm + m·mean` and `rv ← (1 − m)·rv + m·var·count/(count − 1)` (computed in f64 and
/// rounded once; on bare-metal 32-bit targets, whose FPUs have no f64, in f32: a few ulp).
///
/// The count comes from the descriptor, not from the caller: an earlier version took a bare integer, and
/// passing the tensor's length instead of `N·S` returned `Ok` with a silently wrong running variance.
///
/// The two ends of the weight range are exact: `m = 0` leaves the running statistics bit for bit as
/// they were (even where the batch's statistics are NaN or infinite), and `m = 1` (also the first batch
/// of a cumulative average) replaces them by the batch's (even where the running ones are NaN or
/// infinite). In between, a non-finite value on either side makes that channel's result non-finite.
///
/// Errors: a slice whose length is not `desc`'s channel count, `N·S < 2` (no unbiased variance), an
/// exponential momentum outside `[0, 1]` or NaN, a cumulative average of 0 batches.
///
/// ```
/// use bnorm::{Layout, Momentum, Shape, TensorDesc};
/// // A batch of 2 × 1 channel × 2 values: N·S = 4.
/// let desc = TensorDesc::new(Shape::new(2, 1, 2), Layout::Nchw).unwrap();
/// let (mut rm, mut rv) = ([0.0f32], [1.0f32]);
/// bnorm::update_running_stats(&desc, &mut rm, &mut rv, &[2.0], &[3.0], Momentum::Exponential(0.5)).unwrap();
/// assert_eq!((rm[0], rv[0]), (1.0, 0.5 + 0.5 * 4.0));
/// // The second batch of a cumulative average weighs 1/2.
/// bnorm::update_running_stats(&desc, &mut rm, &mut rv, &[3.0], &[0.75], Momentum::CumulativeAverage { batches: 2 })
///     .unwrap();
/// assert_eq!((rm[0], rv[0]), (2.0, 1.75));
/// ```
#[allow(clippy::unnecessary_cast)] // `Weight` is f32 on some targets
pub fn update_running_stats(
    desc: &TensorDesc,
    running_mean: &mut [f32],
    running_var: &mut [f32],
    mean: &[f32],
    var: &[f32],
    momentum: Momentum,
) -> Result<(), Error> {
    let c = desc.shape().c;
    check_len("running_mean", running_mean, c)?;
    check_len("running_var", running_var, c)?;
    check_len("mean", mean, c)?;
    check_len("var", var, c)?;
    let count = desc.shape().count();
    if count < 2 {
        return Err(Error::CountTooSmall { count });
    }
    let m = momentum_weight(momentum)?;
    let unbias = count as W / (count - 1) as W;
    apply_running(running_mean, running_var, m, |i| (mean[i] as W, var[i] as W * unbias));
    Ok(())
}

type W = crate::kernels::stats::Weight;

/// The weight of this batch's statistics in a running update (see [`update_running_stats`]).
#[allow(clippy::unnecessary_cast)] // `Weight` is f32 on some targets
pub(crate) fn momentum_weight(momentum: Momentum) -> Result<W, Error> {
    match momentum {
        Momentum::Exponential(m) if (0.0..=1.0).contains(&m) => Ok(m as W),
        Momentum::Exponential(momentum) => Err(Error::InvalidMomentum { momentum }),
        Momentum::CumulativeAverage { batches: 0 } => Err(Error::NoBatches),
        Momentum::CumulativeAverage { batches } => Ok(1.0 / batches as W),
    }
}

/// `rm ← (1 − m)·rm + m·mean`, `rv ← (1 − m)·rv + m·var` for every channel `i`, with `stats(i)` its
/// batch mean and unbiased variance; `m = 0` and `m = 1` exact (see [`update_running_stats`]).
#[allow(clippy::unnecessary_cast)] // `Weight` is f32 on some targets
pub(crate) fn apply_running(
    running_mean: &mut [f32],
    running_var: &mut [f32],
    m: W,
    stats: impl Fn(usize) -> (W, W),
) {
    if m == 0.0 {
        // `(1 − 0)·rm + 0·mean` would turn a NaN or infinite batch statistic into NaN (0·∞).
        return;
    }
    for i in 0..running_mean.len().min(running_var.len()) {
        let (bm, bv) = stats(i);
        if m == 1.0 {
            // Likewise `0·rm` for a non-finite running statistic.
            running_mean[i] = bm as f32;
            running_var[i] = bv as f32;
        } else {
            running_mean[i] = ((1.0 - m) * running_mean[i] as W + m * bm) as f32;
            running_var[i] = ((1.0 - m) * running_var[i] as W + m * bv) as f32;
        }
    }
}

/// Folds batch normalisation's inference parameters into the per-channel `(scale, shift)` that
/// [`channel_affine`] (or a preceding convolution's weights and bias) takes: `scale = γ/√(var + ε)`
/// computed exactly as the kernels compute their scale (γ times the correctly rounded `1/√(var + ε)`,
/// 0 where `var + ε = 0`), and `shift = β − mean·scale` (product and difference each rounded).
///
/// The folded form `x·scale + shift` is not the centred form `(x − mean)·scale + β` that
/// [`forward_inference`] computes: it rounds differently, and where `|mean|` is large against the spread
/// of `x` it loses the accuracy the centred form keeps (`x·scale` and `mean·scale` nearly cancel). The
/// difference is within `6U·(|x·scale| + |mean·scale| + |β|)` (U = 2⁻²⁴; at most 2.8 U measured, and
/// about 38 % of outputs bit-identical: README, "Folding") — for data far from 0 a few U of
/// `|mean·scale|`, not of the output.
///
/// Errors: `var`, `scale` or `shift` not as long as `mean`; γ or β given and not that long; ε negative,
/// NaN or infinite; a variance negative or NaN; a scale that overflows f32 (γ/√(var + ε) beyond
/// `f32::MAX`: [`forward_inference`] handles it, a folded pair cannot represent it). Nothing is written
/// on error.
///
/// ```
/// use bnorm::Affine;
/// let (gamma, beta) = ([2.0f32, 1.0], [0.5f32, -1.0]);
/// let (mean, var) = ([1.0f32, -3.0], [4.0f32, 0.0]);
/// let (mut scale, mut shift) = ([0.0f32; 2], [0.0f32; 2]);
/// bnorm::fold_scale_shift(&Affine::new(&gamma, &beta, 0.0), &mean, &var, &mut scale, &mut shift).unwrap();
/// // Channel 0: 2/√4 = 1 and 0.5 − 1·1; channel 1 has no spread: scale 0, outputs β.
/// assert_eq!((scale, shift), ([1.0, 0.0], [-0.5, -1.0]));
/// ```
pub fn fold_scale_shift(
    affine: &Affine<'_>,
    mean: &[f32],
    var: &[f32],
    scale: &mut [f32],
    shift: &mut [f32],
) -> Result<(), Error> {
    let c = mean.len();
    check_affine_channels(c, affine)?;
    check_len("var", var, c)?;
    check_len("scale", scale, c)?;
    check_len("shift", shift, c)?;
    check_variances(var)?;
    let scale_of = |j: usize| {
        let g = affine.gamma.map_or(1.0, |g| g[j]);
        g * crate::arch::Simd::inv_sqrt_or_zero(crate::arch::scalar::Scalar, var[j] + affine.eps)
    };
    if let Some(channel) = (0..c).find(|&j| scale_of(j).is_infinite()) {
        return Err(Error::ScaleOverflow { channel });
    }
    for j in 0..c {
        let s = scale_of(j);
        scale[j] = s;
        shift[j] = affine.beta.map_or(0.0, |b| b[j]) - mean[j] * s;
    }
    Ok(())
}
