#![forbid(unsafe_code)]
//! The scalar tier's normalise-affine pass on targets without SIMD (Cortex-M, RISC-V without vectors:
//! `Simd::COMPACT`): plain loops over each layout's natural order, one channel's parameters in registers
//! at a time. On cached CPUs the scalar tier keeps the vector runs, whose address order and
//! non-temporal stores matter even at one lane.
//!
//! The vector tiers cut every layout into runs with blended segment boundaries, periodic parameter
//! buffers and unrolled bodies ([`super::normalize`]): right for wide registers, but on a one-lane tier
//! that machinery is all cost — hundreds of KB of code on a Cortex-M, and kilobytes of stack for the
//! parameter buffers. Here each (batch index, channel) is a strided walk with its three parameters in
//! registers: NCHW planes are contiguous, a channel of a block plane or of channels-last rows is every
//! `b`-th or `C`-th element. Each element is `(x − m)·scale + shift` with the scalar tier's unfused
//! multiply-add, the same operations as the vector pass, so the results are the same bits.

use super::Io;
use super::normalize::{overflowed_output, reduced_scale};
use super::ops::ParamSrc;
use crate::arch::Simd;
use crate::arch::scalar::Scalar;
use crate::layout::{Layout, TensorDesc};

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
            ParamSrc::Stats { mean, var, gamma, beta, eps } => {
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

    /// Elements `at, at + step, …` (`count` of them).
    #[inline(always)]
    fn apply<I: Io>(self, io: &mut I, at: usize, step: usize, count: usize) {
        match self {
            Channel::Plain { m, scale, shift } => {
                io.map_strided(at, step, count, |x| Scalar.mul_add(x - m, scale, shift))
            }
            Channel::Overflowed { m, reduced, shift } => {
                io.map_strided(at, step, count, |x| overflowed_output(x, m, reduced, shift))
            }
        }
    }
}

/// Channels `c0..c0 + real` at `count` positions `step` apart, the first position at `base`; a position
/// holds `width` channels, `real` of them real and the rest padding (set to +0.0). Groups of four channels with plain parameters go through
/// [`Io::map_groups4`] (contiguous quadruples, the twelve parameters in registers); the rest — fewer
/// than four left, an overflowed scale among them, padding — channel by channel.
#[allow(clippy::too_many_arguments)]
#[inline(always)]
fn channel_groups<I: Io>(
    io: &mut I,
    src: &ParamSrc<'_>,
    c0: usize,
    real: usize,
    width: usize,
    step: usize,
    count: usize,
    base: usize,
) {
    let mut j = 0;
    while j + 4 <= real {
        let q = [0, 1, 2, 3].map(|k| Channel::of(src, c0 + j + k));
        if let [
            Channel::Plain { m: m0, scale: s0, shift: t0 },
            Channel::Plain { m: m1, scale: s1, shift: t1 },
            Channel::Plain { m: m2, scale: s2, shift: t2 },
            Channel::Plain { m: m3, scale: s3, shift: t3 },
        ] = q
        {
            let (m, sc, t) = ([m0, m1, m2, m3], [s0, s1, s2, s3], [t0, t1, t2, t3]);
            io.map_groups4(base + j, step, count, |x| {
                [0, 1, 2, 3].map(|k| Scalar.mul_add(x[k] - m[k], sc[k], t[k]))
            });
        } else {
            for (k, p) in q.into_iter().enumerate() {
                p.apply(io, base + j + k, step, count);
            }
        }
        j += 4;
    }
    while j < real {
        Channel::of(src, c0 + j).apply(io, base + j, step, count);
        j += 1;
    }
    while j < width {
        io.map_strided(base + j, step, count, |_| 0.0);
        j += 1;
    }
}

/// `y = (x − m)·scale + shift` over the whole tensor (padding lanes of blocked layouts become +0.0).
pub(crate) fn normalize<I: Io>(desc: &TensorDesc, io: &mut I, src: ParamSrc<'_>) {
    let sh = desc.shape();
    let (n, c, s) = (sh.n, sh.c, sh.spatial);
    // One channel at a time: its parameters (a square root and a division) once, then all its elements.
    match desc.layout() {
        Layout::Nchw => {
            for ch in 0..c {
                let p = Channel::of(&src, ch);
                for b in 0..n {
                    p.apply(io, (b * c + ch) * s, 1, s);
                }
            }
        }
        Layout::Nhwc => channel_groups(io, &src, 0, c, c, c, n * s, 0),
        Layout::Blocked { block } => {
            let blocks = c.div_ceil(block);
            for cb in 0..blocks {
                for b in 0..n {
                    let at = (b * blocks + cb) * s * block;
                    let real = (c - cb * block).min(block);
                    channel_groups(io, &src, cb * block, real, block, block, s, at);
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
    use crate::kernels::ops::normalize_op;
    use crate::kernels::{InPlace, Split};
    use crate::layout::Shape;

    fn values(len: usize, seed: usize) -> Vec<f32> {
        (0..len)
            .map(|i| 40.0 + (((i + seed) * 7919) % 1013) as f32 / 37.0 - ((i + seed) % 3) as f32 * 25.0)
            .collect()
    }

    #[test]
    fn same_bits_as_the_vector_pass() {
        let mut shapes =
            vec![(2, 5, 7), (1, 16, 9), (3, 3, 1), (2, 37, 13), (1, 1, 5), (4, 6, 2), (2, 19, 49)];
        if !cfg!(miri) {
            shapes.push((1, 300, 3));
        }
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
                        mean: &mean,
                        var: &var,
                        gamma: Some(&gamma),
                        beta: Some(&beta),
                        eps: 0.0,
                    },
                    ParamSrc::Stats { mean: &mean, var: &var, gamma: None, beta: None, eps: 1e-3 },
                    ParamSrc::Affine { scale: &gamma, shift: &beta },
                ];
                for (k, src) in srcs.into_iter().enumerate() {
                    let (mut want, mut got) = (vec![f32::NAN; d.len()], vec![f32::NAN; d.len()]);
                    normalize_op(Scalar, &d, &mut Split { x: &x, y: &mut want }, src, true);
                    normalize(&d, &mut Split { x: &x, y: &mut got }, src);
                    let same =
                        |a: &[f32], b: &[f32]| a.iter().zip(b).all(|(p, q)| p.to_bits() == q.to_bits());
                    assert!(same(&want, &got), "{n}x{c}x{s} {layout:?} params {k}: out of place");
                    let mut xy = x.clone();
                    normalize(&d, &mut InPlace { xy: &mut xy }, src);
                    assert!(same(&want, &xy), "{n}x{c}x{s} {layout:?} params {k}: in place");
                }
            }
        }
    }
}
