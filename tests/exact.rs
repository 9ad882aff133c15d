//! Exact cases, for every tier and layout: where the true result is representable, the kernels must
//! produce it bit for bit — tolerances would hide bugs here.

mod common;

use bnorm::{Affine, Isa, Kernels, Shape, TensorDesc};
use common::*;

const SHAPES: [Shape; 6] = [
    Shape::new(1, 1, 2),
    Shape::new(2, 3, 4),
    Shape::new(3, 17, 10),
    Shape::new(1, 5, 130),
    Shape::new(4, 33, 2),
    // More than one channel group (smaller under miri, which interprets every instruction).
    Shape::new(2, if cfg!(miri) { 20 } else { 260 }, 6),
];

fn each_tier(test: &str, mut f: impl FnMut(Kernels)) {
    for isa in Isa::ALL {
        if let Some(k) = kernels_or_skip(isa, test) {
            f(k);
        }
    }
}

/// Tensor with value `v(c, n, s)` at every element and NaN in padding.
fn tensor(sh: Shape, l: bnorm::Layout, v: impl Fn(usize, usize, usize) -> f32) -> Vec<f32> {
    let mut x = vec![f32::NAN; oracle::len(sh, l)];
    for c in 0..sh.c {
        for n in 0..sh.n {
            for s in 0..sh.spatial {
                x[oracle::offset(sh, l, n, c, s)] = v(c, n, s);
            }
        }
    }
    x
}

const CONSTANTS: [f32; 6] = [0.0, -3.7, 1.0e6 + 0.5, 123.456, -2.5e-20, 7.0e30];

/// Constant channels: the exact mean, variance exactly 0, and outputs exactly β — for ε > 0 and for
/// ε = 0 (where the normalised value is defined as 0).
#[test]
fn constant_channels() {
    each_tier("constant_channels", |k| {
        for sh in SHAPES {
            for l in LAYOUTS {
                let d = TensorDesc::new(sh, l).unwrap();
                let x = tensor(sh, l, |c, _, _| CONSTANTS[c % CONSTANTS.len()]);
                let gamma: Vec<f32> = (0..sh.c).map(|c| 1.5 - c as f32).collect();
                let beta: Vec<f32> = (0..sh.c).map(|c| 0.25 * c as f32 - 2.0).collect();
                for eps in [0.0, 1e-5] {
                    let (mut m, mut v, mut y) = (vec![9.0; sh.c], vec![9.0; sh.c], vec![9.0; d.len()]);
                    k.forward_training(&d, &x, &mut y, &Affine::new(&gamma, &beta, eps), &mut m, &mut v)
                        .unwrap();
                    for c in 0..sh.c {
                        let want = CONSTANTS[c % CONSTANTS.len()];
                        assert_eq!(
                            m[c].to_bits(),
                            want.to_bits(),
                            "{} {l:?} {sh:?}: mean of channel {c}",
                            k.isa()
                        );
                        assert_eq!(v[c].to_bits(), 0, "{} {l:?} {sh:?}: var of channel {c}", k.isa());
                        for n in 0..sh.n {
                            for s in 0..sh.spatial {
                                let i = oracle::offset(sh, l, n, c, s);
                                assert_eq!(y[i], beta[c], "{} {l:?} {sh:?} eps {eps}: y at {i}", k.isa());
                            }
                        }
                    }
                }
            }
        }
    });
}

/// Inference with variance 0 and ε = 0: (x − mean)/0 is defined as 0, so every output is β, never NaN.
#[test]
fn zero_variance_zero_eps_gives_beta() {
    each_tier("zero_variance_zero_eps_gives_beta", |k| {
        for l in LAYOUTS {
            let sh = Shape::new(2, 5, 9);
            let d = TensorDesc::new(sh, l).unwrap();
            let x = tensor(sh, l, |c, n, s| (c * 100 + n * 10 + s) as f32);
            let mean = [1.0, 2.0, 3.0, 4.0, 5.0];
            let var = [0.0; 5];
            let beta = [0.5, -1.0, 2.0, 0.0, 8.0];
            let gamma = [3.0; 5];
            let mut y = vec![f32::NAN; d.len()];
            k.forward_inference(&d, &x, &mut y, &Affine::new(&gamma, &beta, 0.0), &mean, &var).unwrap();
            for c in 0..5 {
                for n in 0..2 {
                    for s in 0..9 {
                        assert_eq!(y[oracle::offset(sh, l, n, c, s)], beta[c], "{} {l:?}", k.isa());
                    }
                }
            }
        }
    });
}

/// Pairs `x = μ ± d` alternating along the spatial axis (S even, so every block the kernels form is
/// balanced): the mean is exactly μ, the variance exactly d², and with ε = 0 the outputs are exactly
/// `±γ + β`.
#[test]
fn paired_values_give_exact_statistics_and_outputs() {
    each_tier("paired_values", |k| {
        for sh in SHAPES {
            for l in LAYOUTS {
                let d = TensorDesc::new(sh, l).unwrap();
                let mu = |c: usize| 1000.25 - 64.0 * c as f32;
                let dev = |c: usize| [0.5f32, 2.0, 0.125, 4.0][c % 4];
                let x = tensor(sh, l, |c, _, s| if s % 2 == 0 { mu(c) + dev(c) } else { mu(c) - dev(c) });
                let gamma: Vec<f32> = (0..sh.c).map(|c| 0.75 + c as f32).collect();
                let beta: Vec<f32> = (0..sh.c).map(|c| -(c as f32) * 0.5).collect();
                let (mut m, mut v, mut y) = (vec![0.0; sh.c], vec![0.0; sh.c], vec![0.0; d.len()]);
                k.forward_training(&d, &x, &mut y, &Affine::new(&gamma, &beta, 0.0), &mut m, &mut v).unwrap();
                for c in 0..sh.c {
                    assert_eq!(m[c], mu(c), "{} {l:?} {sh:?}: mean of channel {c}", k.isa());
                    assert_eq!(v[c], dev(c) * dev(c), "{} {l:?} {sh:?}: var of channel {c}", k.isa());
                    for n in 0..sh.n {
                        for s in 0..sh.spatial {
                            let want = if s % 2 == 0 { gamma[c] + beta[c] } else { -gamma[c] + beta[c] };
                            let i = oracle::offset(sh, l, n, c, s);
                            assert_eq!(y[i], want, "{} {l:?} {sh:?}: y at (n={n}, c={c}, s={s})", k.isa());
                        }
                    }
                }
                let case = Case { shape: sh, layout: l, x, gamma: None, beta: None, eps: 0.0 };
                check_padding(&case, &y).unwrap();
            }
        }
    });
}

/// `channel_affine` with power-of-two scales and small shifts is exact.
#[test]
fn affine_with_exact_parameters() {
    each_tier("affine_with_exact_parameters", |k| {
        for sh in SHAPES {
            for l in LAYOUTS {
                let d = TensorDesc::new(sh, l).unwrap();
                let x = tensor(sh, l, |c, n, s| (c as f32) - (n * 7 + s) as f32 * 0.5);
                let scale: Vec<f32> = (0..sh.c).map(|c| [2.0, -0.5, 0.25, 1.0][c % 4]).collect();
                let shift: Vec<f32> = (0..sh.c).map(|c| c as f32).collect();
                let mut y = vec![f32::NAN; d.len()];
                k.channel_affine(&d, &x, &mut y, &scale, &shift).unwrap();
                for c in 0..sh.c {
                    for n in 0..sh.n {
                        for s in 0..sh.spatial {
                            let i = oracle::offset(sh, l, n, c, s);
                            assert_eq!(y[i], x[i] * scale[c] + shift[c], "{} {l:?} at {i}", k.isa());
                        }
                    }
                }
                let case = Case { shape: sh, layout: l, x, gamma: None, beta: None, eps: 0.0 };
                check_padding(&case, &y).unwrap();
            }
        }
    });
}

/// The running-statistics update against its formula, in f64.
#[test]
fn running_stats_formula() {
    let mut rm = [1.0f32, -2.0, 0.5];
    let mut rv = [1.0f32, 4.0, 0.0];
    let mean = [3.0f32, 0.0, -1.0];
    let var = [2.0f32, 1.0, 9.0];
    bnorm::update_running_stats(&mut rm, &mut rv, &mean, &var, 5, 0.25).unwrap();
    for c in 0..3 {
        let want_m = 0.75 * [1.0, -2.0, 0.5][c] + 0.25 * mean[c] as f64;
        let want_v = 0.75 * [1.0, 4.0, 0.0][c] + 0.25 * var[c] as f64 * 5.0 / 4.0;
        assert_eq!(rm[c], want_m as f32);
        assert_eq!(rv[c], want_v as f32);
    }
    // Momentum 0 keeps the running values; momentum 1 replaces them (with the unbiased variance).
    let (mut a, mut b) = ([7.0f32], [3.0f32]);
    bnorm::update_running_stats(&mut a, &mut b, &[1.0], &[1.0], 2, 0.0).unwrap();
    assert_eq!((a[0], b[0]), (7.0, 3.0));
    bnorm::update_running_stats(&mut a, &mut b, &[1.0], &[1.0], 2, 1.0).unwrap();
    assert_eq!((a[0], b[0]), (1.0, 2.0));
}
