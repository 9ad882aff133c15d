#![forbid(unsafe_code)]
//! The error type.

use core::fmt;

/// Why a call was rejected. Every operation validates all of its arguments before it writes anything, so
/// an `Err` means that no output was touched.
#[non_exhaustive]
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Error {
    /// A dimension is zero.
    ZeroDimension {
        /// Batch size.
        n: usize,
        /// Channels.
        c: usize,
        /// Spatial size.
        spatial: usize,
    },
    /// The tensor's element count (padding included) does not fit in memory (`isize::MAX` bytes).
    TooLarge {
        /// Batch size.
        n: usize,
        /// Channels.
        c: usize,
        /// Spatial size.
        spatial: usize,
    },
    /// A blocked layout's block size is not 4, 8 or 16.
    InvalidBlock {
        /// The block size given.
        block: usize,
    },
    /// A slice has the wrong number of elements.
    LengthMismatch {
        /// Which argument (`"x"`, `"y"`, `"mean"`, `"gamma"`, …).
        what: &'static str,
        /// The length the tensor descriptor requires.
        expected: usize,
        /// The length given.
        found: usize,
    },
    /// ε is negative, NaN or infinite.
    InvalidEpsilon {
        /// The ε given.
        eps: f32,
    },
    /// A variance given to inference is negative or NaN.
    InvalidVariance {
        /// The first offending channel.
        channel: usize,
        /// Its variance.
        var: f32,
    },
    /// The running-statistics momentum is outside `[0, 1]` or NaN.
    InvalidMomentum {
        /// The momentum given.
        momentum: f32,
    },
    /// Unbiased running variance needs at least two values per channel.
    CountTooSmall {
        /// The values per channel (`N·S`) of the descriptor given.
        count: usize,
    },
    /// A cumulative average of running statistics over 0 batches (they count from 1, this one included).
    NoBatches,
    /// Gradient sums said to cover a batch that cannot contain the tensor: another channel count, or
    /// fewer values per channel.
    BatchMismatch {
        /// The batch the sums were said to cover.
        batch: crate::Shape,
        /// The tensor's shape.
        local: crate::Shape,
    },
    /// A folded scale γ/√(var + ε) overflows f32, which a `(scale, shift)` pair cannot represent.
    ScaleOverflow {
        /// The first such channel.
        channel: usize,
    },
    /// A part of a tensor ([`TensorDesc::batch_part`](crate::TensorDesc::batch_part) and its siblings)
    /// whose range is empty, past the tensor, or not on a channel block's boundary.
    InvalidPart {
        /// `"batch"`, `"channel"`, `"channel (whole blocks)"` or `"spatial"`.
        axis: &'static str,
        /// The range's start.
        start: usize,
        /// Its end (exclusive).
        end: usize,
        /// The axis's size.
        size: usize,
    },
    /// A part along an axis whose ranges are not contiguous in this layout (channels of NHWC, spatial
    /// positions of NCHW and blocked).
    PartLayout {
        /// The tensor's layout.
        layout: crate::Layout,
        /// `"channel"` or `"spatial"`.
        axis: &'static str,
    },
    /// A [`Partial`](crate::Partial) that counts no values was given to be finished.
    EmptyPartial {
        /// The first such channel.
        channel: usize,
    },
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match *self {
            Error::ZeroDimension { n, c, spatial } => write!(
                f,
                "zero dimension in shape n={n}, c={c}, spatial={spatial}: every dimension must be at least 1"
            ),
            Error::TooLarge { n, c, spatial } => {
                write!(f, "shape n={n}, c={c}, spatial={spatial} holds more f32 values than fit in memory")
            }
            Error::InvalidBlock { block } => {
                write!(f, "block size {block} is not supported: use 4, 8 or 16")
            }
            Error::LengthMismatch { what, expected, found } => {
                write!(f, "`{what}` has {found} elements but the tensor descriptor needs {expected}")
            }
            Error::InvalidEpsilon { eps } => {
                write!(f, "epsilon {eps} is invalid: it must be finite and at least 0")
            }
            Error::InvalidVariance { channel, var } => write!(
                f,
                "variance {var} of channel {channel} is invalid: it must be at least 0 (and not NaN)"
            ),
            Error::InvalidMomentum { momentum } => {
                write!(f, "momentum {momentum} is outside [0, 1]")
            }
            Error::CountTooSmall { count } => write!(
                f,
                "N·S = {count} values per channel is too few: the unbiased variance needs at least 2"
            ),
            Error::EmptyPartial { channel } => write!(
                f,
                "the partial statistics of channel {channel} count 0 values: there is no mean to finish"
            ),
            Error::ScaleOverflow { channel } => write!(
                f,
                "the scale γ/√(var + ε) of channel {channel} overflows f32: it cannot be folded (inference handles it)"
            ),
            Error::BatchMismatch { batch, local } => write!(
                f,
                "gradient sums over a batch of n={}, c={}, spatial={} cannot cover a tensor of n={}, c={}, spatial={}: \
                 the channels must match and the batch must hold at least as many values per channel",
                batch.n, batch.c, batch.spatial, local.n, local.c, local.spatial
            ),
            Error::InvalidPart { axis, start, end, size } => write!(
                f,
                "{axis} range {start}..{end} is not a part of 0..{size}: it must be non-empty and inside the tensor"
            ),
            Error::PartLayout { layout, axis } => write!(
                f,
                "{axis} ranges of a {layout:?} tensor are not contiguous: cut channels of NCHW and blocked \
                 tensors, spatial positions of NHWC ones"
            ),
            Error::NoBatches => {
                write!(f, "a cumulative average over 0 batches: count batches from 1, this one included")
            }
        }
    }
}

impl core::error::Error for Error {}
