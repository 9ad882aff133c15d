//! Numerical edge cases on every tier: large offsets (errors pinned at the values the README states),
//! more than 2^24 values per channel, subnormals, values whose squares overflow, NaN and infinities
//! confined to their channel, and bit-for-bit determinism independent of alignment.

mod common;

use bnorm::{Affine, Isa, Kernels, Layout, Shape, TensorDesc};
use common::*;

fn tiers(test: &str) -> Vec<Kernels> {
    Isa::ALL.into_iter().filter_map(|i| kernels_or_skip(i, test)).collect()
}

fn train(k: &Kernels, case: &Case) -> (Vec<f32>, Vec<f32>, Vec<f32>) {
    let d = TensorDesc::new(case.shape, case.layout).unwrap();
    let c = case.shape.c;
    let (mut m, mut v, mut y) = (vec![0.0; c], vec![0.0; c], vec![0.0; d.len()]);
    let aff = Affine { gamma: case.gamma.as_deref(), beta: case.beta.as_deref(), eps: case.eps };
    k.forward_training(&d, &case.x, &mut y, &aff, &mut m, &mut v).unwrap();
    (m, v, y)
}

/// Worst errors over channels with offsets |μ|/σ = `ratio` exactly: (mean error beyond the rounding of
/// μ to f32, in U·σ; variance error relative, in U; output error in U of |γ|(|x−μ| + |μ|)/σ' + |β|, the
/// output's scale with the input's own quantisation at ulp(μ) included).
fn offset_errors(k: &Kernels, ratio: f64) -> (f64, f64, f64) {
    let mut worst = (0f64, 0f64, 0f64);
    for (seed, layout) in LAYOUTS.into_iter().enumerate() {
        let shape = Shape::new(8, 19, 700);
        let mut case = gen_case(seed as u64 + 100, shape, layout, 1.0);
        // Rebuild every channel at exactly the requested offset ratio.
        let mut r = Rng(seed as u64);
        for c in 0..shape.c {
            let sigma = 10f64.powf(r.range(-2.0, 2.0));
            let mu = sigma * ratio * if c % 2 == 0 { 1.0 } else { -1.0 };
            for n in 0..shape.n {
                for s in 0..shape.spatial {
                    let z = r.range(-1.0, 1.0) + r.range(-1.0, 1.0);
                    case.x[oracle::offset(shape, layout, n, c, s)] = (mu + sigma * z) as f32;
                }
            }
        }
        let (m, v, y) = train(k, &case);
        let norm = training_norm(&case);
        for c in 0..shape.c {
            let (mu, var) = (norm.mean[c], norm.var[c]);
            let em = ((m[c] as f64 - mu).abs() - U * mu.abs()).max(0.0) / (U * var.sqrt());
            let ev = (v[c] as f64 - var).abs() / (U * var);
            worst.0 = worst.0.max(em);
            worst.1 = worst.1.max(ev);
            for n in 0..shape.n {
                for s in 0..shape.spatial {
                    let i = oracle::offset(shape, layout, n, c, s);
                    let want = norm.apply(c, case.x[i] as f64);
                    let scale =
                        norm.gamma[c].abs() * ((case.x[i] as f64 - mu).abs() + mu.abs()) * norm.inv_std(c)
                            + norm.beta[c].abs();
                    worst.2 = worst.2.max((y[i] as f64 - want).abs() / (U * scale.max(f64::MIN_POSITIVE)));
                }
            }
        }
    }
    worst
}

/// The errors at offsets from 1e2·σ to 1e6·σ stay within the bounds the README states.
#[test]
#[cfg_attr(miri, ignore = "slow under miri")]
fn errors_at_large_offsets() {
    // (ratio, mean bound in U·σ, variance bound in U, output bound in U of the output's scale)
    let bounds = [(1e2, 4.0, 16.0, 8.0), (1e4, 4.0, 16.0, 8.0), (1e6, 4.0, 16.0, 8.0)];
    for k in tiers("errors_at_large_offsets") {
        for (ratio, bm, bv, by) in bounds {
            let (em, ev, ey) = offset_errors(&k, ratio);
            eprintln!("{} offset {ratio:e}: mean {em:.2} U·σ, var {ev:.2} U, output {ey:.1} U", k.isa());
            assert!(em <= bm && ev <= bv && ey <= by, "{} at {ratio:e}: {em} {ev} {ey}", k.isa());
        }
    }
}

/// Counts are exact integers: with 2^24 + 2^22 values in a channel (two constant runs), the weights of
/// the runs are exact, where an f32 counter would have stopped at 2^24.
#[test]
#[cfg_attr(miri, ignore = "too large for miri")]
fn more_than_2_pow_24_values_per_channel() {
    let (n1, n2) = (1usize << 24, 1usize << 22);
    let shape = Shape::new(1, 1, n1 + n2);
    let mut x = vec![1.0f32; n1 + n2];
    x[n1..].fill(3.0);
    let d = TensorDesc::new(shape, Layout::Nchw).unwrap();
    let total = (n1 + n2) as f64;
    let mu = (n1 as f64 + 3.0 * n2 as f64) / total;
    let var = n1 as f64 * n2 as f64 * 4.0 / (total * total);
    for k in tiers("more_than_2_pow_24_values_per_channel") {
        let (mut m, mut v) = ([0.0f32], [0.0f32]);
        k.moments(&d, &x, &mut m, &mut v).unwrap();
        assert!((m[0] as f64 - mu).abs() <= 4.0 * U * mu, "{}: mean {} vs {mu}", k.isa(), m[0]);
        assert!((v[0] as f64 - var).abs() <= 64.0 * U * var, "{}: var {} vs {var}", k.isa(), v[0]);
    }
}

fn poison(x: &mut [f32], shape: Shape, layout: Layout, c: usize, what: f32, every: usize) {
    for n in 0..shape.n {
        for s in (n % every..shape.spatial).step_by(every) {
            x[oracle::offset(shape, layout, n, c, s)] = what;
        }
    }
}

/// NaN, +inf and -inf poison their own channel's statistics and outputs, and no other channel changes by
/// a single bit.
#[test]
fn non_finite_values_stay_in_their_channel() {
    for k in tiers("non_finite_values_stay_in_their_channel") {
        for (i, layout) in LAYOUTS.into_iter().enumerate() {
            for (j, bad) in [f32::NAN, f32::INFINITY, f32::NEG_INFINITY].into_iter().enumerate() {
                let shape = if cfg!(miri) { Shape::new(2, 5, 9) } else { Shape::new(3, 21, 37) };
                let clean = gen_case(i as u64 * 7 + j as u64, shape, layout, 10.0);
                let mut dirty = clean.clone();
                let bad_c = (i + 3 * j) % shape.c;
                poison(&mut dirty.x, shape, layout, bad_c, bad, 11);
                let (m0, v0, y0) = train(&k, &clean);
                let (m1, v1, y1) = train(&k, &dirty);
                for c in 0..shape.c {
                    if c == bad_c {
                        assert!(
                            !m1[c].is_finite() || !v1[c].is_finite(),
                            "{} {layout:?}: stats of {c}",
                            k.isa()
                        );
                        continue;
                    }
                    assert_eq!(m0[c].to_bits(), m1[c].to_bits(), "{} {layout:?} {bad}: mean of {c}", k.isa());
                    assert_eq!(v0[c].to_bits(), v1[c].to_bits(), "{} {layout:?} {bad}: var of {c}", k.isa());
                }
                for (idx, (a, b)) in y0.iter().zip(&y1).enumerate() {
                    let ch = (0..shape.c).find(|&c| {
                        (0..shape.n).any(|n| {
                            (0..shape.spatial).any(|s| oracle::offset(shape, layout, n, c, s) == idx)
                        })
                    });
                    match ch {
                        Some(c) if c == bad_c => {
                            assert!(b.is_nan(), "{} {layout:?}: output {idx} of the bad channel", k.isa())
                        }
                        _ => {
                            assert_eq!(a.to_bits(), b.to_bits(), "{} {layout:?} {bad}: output {idx}", k.isa())
                        }
                    }
                }
                // Inference with finite statistics: only the poisoned elements themselves are non-finite.
                let d = TensorDesc::new(shape, layout).unwrap();
                let mut yi = vec![0.0; d.len()];
                k.forward_inference(&d, &dirty.x, &mut yi, &Affine::default(), &m0, &v0).unwrap();
                for (idx, &v) in yi.iter().enumerate() {
                    assert_eq!(
                        v.is_finite(),
                        dirty.x[idx].is_finite() || oracle::is_padding(shape, layout, idx)
                    );
                }
            }
        }
    }
}

/// Subnormal inputs and values whose squares overflow: documented results, no panic, other channels
/// bit-identical to a run without them.
#[test]
fn subnormal_and_huge_values() {
    for k in tiers("subnormal_and_huge_values") {
        for layout in LAYOUTS {
            let shape = Shape::new(2, 6, 40);
            let clean = gen_case(5, shape, layout, 1.0);
            let mut x = clean.x.clone();
            let set = |x: &mut [f32], c: usize, f: &dyn Fn(usize) -> f32| {
                for n in 0..shape.n {
                    for s in 0..shape.spatial {
                        x[oracle::offset(shape, layout, n, c, s)] = f(n * shape.spatial + s);
                    }
                }
            };
            // 0: subnormals, 1e-45 .. 79e-45; 1: constant f32::MAX; 2: ±1e30 alternating (true variance
            // 1e60 overflows f32); 3: one value 2e19 among zeros (its square overflows although the true
            // variance, 5e36, does not).
            set(&mut x, 0, &|i| f32::from_bits(1 + (i % 56) as u32));
            set(&mut x, 1, &|_| f32::MAX);
            set(&mut x, 2, &|i| if i % 2 == 0 { 1e30 } else { -1e30 });
            set(&mut x, 3, &|i| if i == 17 { 2e19 } else { 0.0 });
            let case = Case { x, ..clean.clone() };
            let (m, v, y) = train(&k, &case);
            let (rm, rv) = oracle::moments(shape, layout, &case.x);
            // Subnormals: the mean within a subnormal ulp or two, the variance underflows toward 0.
            assert!((m[0] as f64 - rm[0]).abs() <= 2e-45, "{} {layout:?}: subnormal mean {}", k.isa(), m[0]);
            assert!(
                v[0] >= 0.0 && (v[0] as f64) <= rv[0] * 2.0 + 1e-44,
                "{}: subnormal var {}",
                k.isa(),
                v[0]
            );
            // f32::MAX constant: exact mean, zero variance, outputs β.
            assert_eq!((m[1], v[1]), (f32::MAX, 0.0), "{} {layout:?}", k.isa());
            // Overflowing spread: the mean within U of the spread of 0, variance +inf.
            assert!((m[2] as f64).abs() <= 4.0 * U * 1e30, "{} {layout:?}: mean {}", k.isa(), m[2]);
            assert_eq!(v[2], f32::INFINITY, "{} {layout:?}", k.isa());
            // A square that overflows: variance +inf, documented.
            assert_eq!(v[3], f32::INFINITY, "{} {layout:?}", k.isa());
            let beta = |c: usize| case.beta.as_ref().map_or(0.0, |b| b[c]);
            for n in 0..shape.n {
                for s in 0..shape.spatial {
                    // Infinite variance: scale 0, so every finite input of channels 2 and 3 gives β.
                    for c in [1, 2, 3] {
                        assert_eq!(
                            y[oracle::offset(shape, layout, n, c, s)],
                            beta(c),
                            "{} {layout:?} c{c}",
                            k.isa()
                        );
                    }
                }
            }
            // Channels 4 and 5 are untouched by their neighbours.
            let (m0, v0, _) = train(&k, &clean);
            for c in 4..6 {
                assert_eq!((m[c].to_bits(), v[c].to_bits()), (m0[c].to_bits(), v0[c].to_bits()));
            }
        }
    }
}

/// The same call gives the same bits every time and wherever the slices start.
#[test]
fn deterministic_and_alignment_independent() {
    for k in tiers("deterministic_and_alignment_independent") {
        for layout in LAYOUTS {
            let shape = if cfg!(miri) { Shape::new(2, 5, 9) } else { Shape::new(3, 29, 45) };
            let case = gen_case(77, shape, layout, 1e3);
            let (m0, v0, y0) = train(&k, &case);
            let d = TensorDesc::new(case.shape, layout).unwrap();
            let aff = Affine { gamma: case.gamma.as_deref(), beta: case.beta.as_deref(), eps: case.eps };
            for align in 0..if cfg!(miri) { 5 } else { 17 } {
                let xb = at_offset(&case.x, align, 0.0);
                let mut yb = vec![0.0; d.len() + 20];
                let (mut m, mut v) = (vec![0.0; shape.c], vec![0.0; shape.c]);
                let ya = (align * 7) % 17;
                k.forward_training(
                    &d,
                    &xb[align..align + d.len()],
                    &mut yb[ya..ya + d.len()],
                    &aff,
                    &mut m,
                    &mut v,
                )
                .unwrap();
                let same = |a: &[f32], b: &[f32]| a.iter().zip(b).all(|(p, q)| p.to_bits() == q.to_bits());
                assert!(same(&m, &m0) && same(&v, &v0), "{} {layout:?} align {align}: statistics", k.isa());
                assert!(same(&yb[ya..ya + d.len()], &y0), "{} {layout:?} align {align}: outputs", k.isa());
            }
        }
    }
}
