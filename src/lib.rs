//! Hand-vectorised f32 kernels for spatial batch normalisation.
//!
//! Batch normalisation in a convolutional network keeps one mean, one variance, one γ and one β per
//! channel, shared by every (n, spatial) position of that channel. `bnorm` computes
//!
//! - per-channel statistics ([`moments`]) in a single read pass, with shifted block sums merged by Chan's
//!   formula: stable at any offset, exact for constant channels, with exact integer counts;
//! - the fused normalise-affine pass `y = (x − mean)·γ/√(var + ε) + β` for training
//!   ([`forward_training`]) and inference ([`forward_inference`]), in place or not, and the pre-folded
//!   [`channel_affine`];
//! - PyTorch-style running statistics ([`update_running_stats`]) and the folding of inference parameters
//!   into a per-channel scale and shift for engines ([`fold_scale_shift`]),
//!
//! for NCHW, NHWC and channel-blocked layouts, with a scalar tier, a portable SIMD tier (through `wide`:
//! SSE2, NEON, simd128) and run-time dispatched AVX2 and AVX-512 tiers on x86-64. The API takes slices,
//! never allocates, and works in `#![no_std]`.
//!
//! # Example
//!
//! ```
//! use bnorm::{Affine, Layout, Shape, TensorDesc};
//!
//! let desc = TensorDesc::new(Shape::nchw(2, 3, 4, 4), Layout::Nchw)?;
//! let x: Vec<f32> = (0..desc.len()).map(|i| (i % 7) as f32).collect();
//! let mut y = vec![0.0; desc.len()];
//! let (mut mean, mut var) = (vec![0.0; 3], vec![0.0; 3]);
//! let gamma = [1.0, 2.0, 0.5];
//! let beta = [0.0, 1.0, -1.0];
//! bnorm::forward_training(&desc, &x, &mut y, &Affine::new(&gamma, &beta, 1e-5), &mut mean, &mut var)?;
//!
//! // Channel 1, element (n=0, c=1, s=5):
//! let i = desc.offset(0, 1, 5).unwrap();
//! let expect = (x[i] - mean[1]) * (gamma[1] / (var[1] + 1e-5).sqrt()) + beta[1];
//! assert!((y[i] - expect).abs() < 1e-5);
//!
//! // Bad input is an error, and nothing is written.
//! let err = bnorm::moments(&desc, &x[1..], &mut mean, &mut var).unwrap_err();
//! assert_eq!(err.to_string(), "`x` has 95 elements but the tensor descriptor needs 96");
//! # Ok::<(), bnorm::Error>(())
//! ```
//!
//! # Layouts
//!
//! With S the spatial size (H·W), element (n, c, s) is at
//!
//! | [`Layout`] | elsewhere | offset |
//! |---|---|---|
//! | `Nchw` | contiguous, ncsp | `(n·C + c)·S + s` |
//! | `Nhwc` | channels-last, nspc | `(n·S + s)·C + c` |
//! | `Blocked { block: b }`, b ∈ {4, 8, 16} | nChw4c/8c/16c | `((n·⌈C/b⌉ + c/b)·S + s)·b + c%b` |
//!
//! A blocked tensor holds ⌈C/b⌉·b channels; the padding lanes are ignored on input (they may hold
//! anything, NaN included) and written as 0 on output. [`TensorDesc::len`] counts them.
//!
//! # Tiers
//!
//! The free functions use the best tier of this CPU ([`Isa::detect`], detected once, also in `no_std`).
//! [`Kernels`] runs a chosen tier: `Kernels::new(Isa::Avx2)` is `None` on a CPU without AVX2, so holding
//! one proves the tier can run. With `std`, `BNORM_MAX_ISA=portable` (or `scalar`, `avx2`) caps detection.
//!
//! # Semantics
//!
//! - Variances are population variances (divided by the count N·S).
//! - `1/√(var + ε)` is computed with a correctly rounded square root and division, never with an
//!   approximate reciprocal; where `var + ε == 0` the normalised value is 0 (output β), never NaN.
//! - Where γ/√(var + ε) overflows f32, outputs are still the normalised values: x = mean gives β, and an
//!   output is ±∞ only where its exact value is beyond f32's range.
//! - A NaN or infinity poisons only its own channel's statistics and outputs.
//! - Every operation validates all of its arguments first: an `Err` means no output was touched. No
//!   public function panics.
//!
//! # Crate features
//!
//! - `std` (default): `std::error::Error` through `core::error::Error`, and the `BNORM_MAX_ISA` cap.
//!   Without it the crate is `#![no_std]` and never allocates.
#![cfg_attr(not(feature = "std"), no_std)]
#![deny(unsafe_code)]
#![warn(clippy::undocumented_unsafe_blocks)]

mod api;
#[allow(unsafe_code)]
mod arch;
mod dispatch;
mod error;
mod kernels;
mod layout;
#[cfg(feature = "rayon")]
pub mod par;
mod partial;
mod tuning;

pub use api::{
    Affine, Epilogue, GradEpilogue, GradSums, Momentum, ParamGrads, Saved, StatsMode, backward,
    backward_elementwise, backward_elementwise_in_place, backward_in_place, backward_in_place_with,
    backward_reduce, backward_with, channel_affine, channel_affine_in_place, channel_affine_in_place_with,
    channel_affine_with, fold_scale_shift, forward_from_partials, forward_from_partials_in_place,
    forward_inference, forward_inference_in_place, forward_inference_in_place_with, forward_inference_with,
    forward_training, forward_training_in_place, forward_training_in_place_with, forward_training_with,
    moments, relu_backward, relu_backward_in_place, update_running_stats,
};
pub use dispatch::{Isa, Kernels};
pub use error::Error;
pub use layout::{Layout, Part, PartsMut, Shape, Split, TensorDesc};
pub use partial::{
    Partial, finish_partials, merge_partials, partial_moments, update_running_stats_from_partials,
};

/// Reference passes for measuring the machine's streaming limit beside the kernels (used by the
/// `roofline` example and the benches). Not part of the stable API.
#[doc(hidden)]
pub mod __bench {
    use crate::Kernels;
    use crate::kernels::ops::Call;
    pub use crate::tuning::Tuning;

    /// The size thresholds in force on this CPU (see `src/tuning.rs`).
    pub fn tuning() -> Tuning {
        crate::tuning::get()
    }

    /// Reads every element of `x` once (a vector sum); returns the sum.
    pub fn read_pass(k: &Kernels, x: &[f32]) -> f32 {
        let mut sum = 0.0;
        crate::arch::run(k.isa(), Call::ReadPass { x, sum: &mut sum });
        sum
    }

    /// `y = 1.5·x + 0.25` over the common length, with non-temporal stores when `stream`.
    pub fn scale_pass(k: &Kernels, x: &[f32], y: &mut [f32], stream: bool) {
        crate::arch::run(k.isa(), Call::ScalePass { x, y, stream });
    }
}

/// The README's code, compiled and run as a doctest.
#[cfg(doctest)]
#[doc = include_str!("../README.md")]
pub struct ReadmeDoctests;
