//! Every public operation (the backward pass and its halves, the fused epilogues, parts and
//! `forward_from_partials` included) with arbitrary shapes, layouts (valid or not), slice lengths off by a few,
//! arbitrary ε, momentum, γ, β and data, on a fuzzer-chosen available tier. Never a panic; an `Err` leaves
//! every output untouched; an `Ok` on finite, in-range data agrees with the f64 oracle within the
//! documented tolerances.
#![no_main]

#[allow(dead_code)]
#[path = "../../tests/common/mod.rs"]
mod common;
mod input;

use bnorm::{Affine, Isa, Kernels, TensorDesc};
use common::{Case, Grads, check_affine, check_backward, check_moments, check_outputs, norm_with, training_norm};
use input::{decode, fill, near};
use libfuzzer_sys::fuzz_target;

const SENTINEL: f32 = -7.25;

fn untouched(v: &[f32]) -> bool {
    v.iter().all(|x| x.to_bits() == SENTINEL.to_bits())
}

fuzz_target!(|bytes: &[u8]| {
    let p = decode(bytes);
    let desc = match TensorDesc::new(p.shape, p.layout) {
        Ok(d) => d,
        Err(e) => {
            assert!(!e.to_string().is_empty());
            return;
        }
    };
    let isas: Vec<Isa> = Isa::available().collect();
    let k = Kernels::new(isas[p.isa as usize % isas.len()]).unwrap();
    let (len, c) = (desc.len(), p.shape.c);
    let d = p.deltas;
    let x = fill(&p.data, near(len, d[0]));
    let gamma = fill(&p.params, near(c, d[3]));
    let beta = fill(&p.params[3..], near(c, d[4]));
    let aff = Affine { gamma: Some(&gamma), beta: Some(&beta), eps: p.eps };
    let lengths_ok = |v: &[usize]| v.iter().all(|&l| l == len);
    let chans_ok = |v: &[usize]| v.iter().all(|&l| l == c);
    let aff_ok = chans_ok(&[gamma.len(), beta.len()]) && p.eps.is_finite() && p.eps >= 0.0;
    // Oracle comparisons need finite data whose squares cannot overflow.
    let in_range = |v: &[f32]| v.iter().all(|x| x.is_finite() && x.abs() < 1e15);
    let comparable = p.nice && x.len() == len && in_range(&x) && in_range(&gamma) && in_range(&beta);
    let case = Case { shape: p.shape, layout: p.layout, x: x.clone(), gamma: Some(gamma.clone()), beta: Some(beta.clone()), eps: p.eps };
    match p.op % 13 {
        0 => {
            let (mut m, mut v) = (vec![SENTINEL; near(c, d[1])], vec![SENTINEL; near(c, d[2])]);
            let ok = lengths_ok(&[x.len()]) && chans_ok(&[m.len(), v.len()]);
            let moments_ok = k.moments(&desc, &x, &mut m, &mut v).is_ok();
            match moments_ok {
                false => assert!(!ok && untouched(&m) && untouched(&v)),
                true => {
                    assert!(ok);
                    if comparable {
                        check_moments(&case, &m, &v).unwrap();
                    }
                }
            }
            // Partial statistics of the same tensor (an output of the mean's fuzzed length): an `Err`
            // writes nothing; an `Ok` finishes to moments' mean bit for bit, and merging a part with
            // itself doubles its count and keeps its mean.
            let sentinel = bnorm::Partial { count: 7, mean_hi: SENTINEL, mean_lo: SENTINEL, m2: 1.0 };
            let mut parts = vec![sentinel; near(c, d[1])];
            match k.partial_moments(&desc, &x, &mut parts) {
                Err(_) => assert!((x.len() != len || parts.len() != c) && parts.iter().all(|q| *q == sentinel)),
                Ok(()) => {
                    assert!(x.len() == len && parts.len() == c);
                    let (mut fm, mut fv) = (vec![SENTINEL; c], vec![SENTINEL; c]);
                    bnorm::finish_partials(&parts, &mut fm, &mut fv).unwrap();
                    if moments_ok {
                        assert!(fm.iter().zip(&m).all(|(a, b)| a.to_bits() == b.to_bits() || (a.is_nan() && b.is_nan())));
                    }
                    for q in &parts {
                        let twice = q.merge(*q);
                        assert_eq!(twice.count, 2 * q.count);
                        assert!(twice.mean_hi.to_bits() == q.mean_hi.to_bits() || !q.mean_hi.is_finite() || !twice.mean_hi.is_finite());
                    }
                }
            }
            // Parts of a fuzzed size: they tile the tensor, their partials merged in order count every
            // value, and `forward_from_partials` part by part gives the whole call's bits.
            if x.len() == len && aff_ok {
                let same = |a: &[f32], b: &[f32]| a.iter().zip(b).all(|(u, v)| u.to_bits() == v.to_bits() || (u.is_nan() && v.is_nan()));
                let max = 1 + p.count % (len + 1);
                let mut acc = vec![bnorm::Partial::EMPTY; c];
                let mut next = 0;
                for part in desc.split(max) {
                    assert_eq!(part.range().start, next);
                    next = part.range().end;
                    let mut out = vec![bnorm::Partial::EMPTY; part.desc().shape().c];
                    k.partial_moments(part.desc(), part.data(&x).unwrap(), &mut out).unwrap();
                    bnorm::merge_partials(part.per_channel_mut(&mut acc).unwrap(), &out).unwrap();
                }
                assert_eq!(next, len);
                assert!(acc.iter().all(|q| q.count == p.shape.count() as u64));
                let none = bnorm::Epilogue::None;
                let mut whole = vec![SENTINEL; len];
                k.forward_from_partials(&desc, &x, &mut whole, &aff, &acc, none).unwrap();
                let mut parted = vec![SENTINEL; len];
                for (part, y) in desc.split(max).zip_mut(&mut parted).unwrap() {
                    let (xs, a, q) = (part.data(&x).unwrap(), part.affine(&aff).unwrap(), part.per_channel(&acc).unwrap());
                    k.forward_from_partials(part.desc(), xs, y, &a, q, none).unwrap();
                }
                assert!(same(&whole, &parted));
                // The whole tensor's own partials: forward_training's bits.
                if parts.len() == c {
                    let (mut y0, mut m0, mut v0) = (vec![SENTINEL; len], vec![0.0; c], vec![0.0; c]);
                    k.forward_training(&desc, &x, &mut y0, &aff, &mut m0, &mut v0).unwrap();
                    k.forward_from_partials(&desc, &x, &mut whole, &aff, &parts, none).unwrap();
                    assert!(same(&whole, &y0));
                }
            }
        }
        1 | 2 => {
            let (mut m, mut v) = (vec![SENTINEL; near(c, d[1])], vec![SENTINEL; near(c, d[2])]);
            let mut y = vec![SENTINEL; near(len, d[5])];
            let in_place = p.op % 8 == 2;
            let (r, ok) = if in_place {
                y = x.clone();
                let ok = lengths_ok(&[y.len()]) && chans_ok(&[m.len(), v.len()]) && aff_ok;
                (k.forward_training_in_place(&desc, &mut y, &aff, &mut m, &mut v), ok)
            } else {
                let ok = lengths_ok(&[x.len(), y.len()]) && chans_ok(&[m.len(), v.len()]) && aff_ok;
                (k.forward_training(&desc, &x, &mut y, &aff, &mut m, &mut v), ok)
            };
            match r {
                Err(_) => assert!(!ok && untouched(&m) && untouched(&v) && (in_place || untouched(&y))),
                Ok(()) => {
                    assert!(ok);
                    if comparable && p.eps.is_finite() {
                        check_moments(&case, &m, &v).unwrap();
                        check_outputs(&case, &y, &training_norm(&case), true).unwrap();
                    }
                }
            }
        }
        3 | 4 => {
            let mean = fill(&p.params[1..], near(c, d[1]));
            let var: Vec<f32> = fill(&p.params[2..], near(c, d[2])).iter().map(|v| if p.nice { v.abs() } else { *v }).collect();
            let var_ok = var.iter().all(|v| *v >= 0.0);
            let in_place = p.op % 8 == 4;
            let mut y = if in_place { x.clone() } else { vec![SENTINEL; near(len, d[5])] };
            let before = y.clone();
            let ok = lengths_ok(&[x.len(), y.len()]) && chans_ok(&[mean.len(), var.len()]) && var_ok && aff_ok;
            let r = if in_place {
                k.forward_inference_in_place(&desc, &mut y, &aff, &mean, &var)
            } else {
                k.forward_inference(&desc, &x, &mut y, &aff, &mean, &var)
            };
            match r {
                Err(_) => assert!(!ok && y.iter().zip(&before).all(|(a, b)| a.to_bits() == b.to_bits())),
                Ok(()) => {
                    assert!(ok);
                    if comparable && in_range(&mean) && in_range(&var) {
                        let to64 = |v: &[f32]| v.iter().map(|&a| a as f64).collect();
                        check_outputs(&case, &y, &norm_with(&case, to64(&mean), to64(&var)), false).unwrap();
                    }
                }
            }
        }
        5 | 6 => {
            let scale = fill(&p.params[4..], near(c, d[6]));
            let shift = fill(&p.params[5..], near(c, d[7]));
            let in_place = p.op % 8 == 6;
            let mut y = if in_place { x.clone() } else { vec![SENTINEL; near(len, d[5])] };
            let before = y.clone();
            let ok = lengths_ok(&[x.len(), y.len()]) && chans_ok(&[scale.len(), shift.len()]);
            let r = if in_place {
                k.channel_affine_in_place(&desc, &mut y, &scale, &shift)
            } else {
                k.channel_affine(&desc, &x, &mut y, &scale, &shift)
            };
            match r {
                Err(_) => assert!(!ok && y.iter().zip(&before).all(|(a, b)| a.to_bits() == b.to_bits())),
                Ok(()) => {
                    assert!(ok);
                    if comparable && in_range(&scale) && in_range(&shift) {
                        check_affine(&case, &y, &scale, &shift).unwrap();
                    }
                }
            }
        }
        7 => {
            let mut rm = vec![SENTINEL; c];
            let mut rv = vec![SENTINEL; near(c, d[2])];
            let (mean, var) = (fill(&p.params, near(c, d[1])), fill(&p.params[1..], near(c, d[3])));
            // `count` picks the momentum: exponential, or a cumulative average over 0 (invalid) to 3 batches.
            let (mom, mom_ok) = match p.count {
                0 => (bnorm::Momentum::Exponential(p.momentum), (0.0..=1.0).contains(&p.momentum)),
                k => (bnorm::Momentum::CumulativeAverage { batches: k as u64 - 1 }, k > 1),
            };
            let ok = chans_ok(&[rv.len(), mean.len(), var.len()]) && p.shape.count() >= 2 && mom_ok;
            match bnorm::update_running_stats(&desc, &mut rm, &mut rv, &mean, &var, mom) {
                Err(_) => assert!(!ok && untouched(&rm) && untouched(&rv)),
                Ok(()) => assert!(ok),
            }
        }
        9 | 10 => {
            // Backward (9) or its reduce and element halves (10): out of place or in place, batch or
            // global statistics, with or without dγ/dβ.
            let rev: Vec<f32> = p.data.iter().rev().map(|v| v * 0.5).collect();
            let dy = fill(&rev, near(len, d[6]));
            let batch = p.count % 2 == 0;
            let in_place = p.count >= 3;
            let want_grads = p.momentum.to_bits() % 2 == 0;
            // Batch statistics from the kernel itself (what a training step saves), global ones from
            // the parameters.
            let (mut mean, mut var) = (fill(&p.params[1..], near(c, d[1])), fill(&p.params[2..], near(c, d[2])));
            if p.nice {
                var.iter_mut().for_each(|v| *v = v.abs());
            }
            if batch && x.len() == len && mean.len() == c && var.len() == c {
                k.moments(&desc, &x, &mut mean, &mut var).unwrap();
            }
            let var_ok = var.iter().all(|v| *v >= 0.0);
            let saved = bnorm::Saved { mean: &mean, var: &var, mode: if batch { bnorm::StatsMode::Batch } else { bnorm::StatsMode::Global } };
            let mut dx = if in_place { dy.clone() } else { vec![SENTINEL; near(len, d[5])] };
            let before = dx.clone();
            let (mut dg, mut db) = (vec![SENTINEL; near(c, d[6])], vec![SENTINEL; near(c, d[7])]);
            let ok = lengths_ok(&[x.len(), dx.len()]) && (in_place || dy.len() == len)
                && chans_ok(&[mean.len(), var.len()]) && var_ok && aff_ok
                && (!want_grads || chans_ok(&[dg.len(), db.len()]));
            let pg = bnorm::ParamGrads { dgamma: want_grads.then_some(&mut dg[..]), dbeta: want_grads.then_some(&mut db[..]) };
            let r = if p.op % 13 == 9 {
                if in_place {
                    k.backward_in_place(&desc, &x, &mut dx, &aff, &saved, pg)
                } else {
                    k.backward(&desc, &x, &dy, &mut dx, &aff, &saved, pg)
                }
            } else {
                let (mut s1, mut s2) = (vec![SENTINEL; near(c, d[3])], vec![SENTINEL; near(c, d[4])]);
                let reduce_ok = lengths_ok(&[x.len(), dy.len()]) && chans_ok(&[mean.len(), s1.len(), s2.len()]);
                match k.backward_reduce(&desc, &x, &dy, &mean, &mut s1, &mut s2) {
                    Err(_) => {
                        assert!(!reduce_ok && untouched(&s1) && untouched(&s2));
                        return;
                    }
                    Ok(()) => assert!(reduce_ok),
                }
                // A batch of `count` samples more than the tensor's: SyncBN's global batch.
                let batch_shape = bnorm::Shape::new(p.shape.n + p.count, c, p.shape.spatial);
                let sums = bnorm::GradSums { sum_dy: &s1, sum_dy_xmu: &s2, batch: batch_shape };
                if in_place {
                    k.backward_elementwise_in_place(&desc, &x, &mut dx, &aff, &saved, &sums, pg)
                } else {
                    k.backward_elementwise(&desc, &x, &dy, &mut dx, &aff, &saved, &sums, pg)
                }
            };
            // The halves divide by the larger batch's count: the oracle's comparison does not hold.
            let halves = p.op % 13 == 10;
            match r {
                Err(_) => {
                    assert!(!ok && dx.iter().zip(&before).all(|(a, b)| a.to_bits() == b.to_bits()));
                    assert!(untouched(&dg) && untouched(&db));
                }
                Ok(()) => {
                    assert!(ok);
                    assert!(want_grads || (untouched(&dg) && untouched(&db)));
                    let nice_dy = in_range(&dy) && dy.iter().all(|v| v.abs() < 1e6);
                    if comparable && !halves && nice_dy && in_range(&mean) && in_range(&var) && in_range(&gamma) {
                        let got = Grads { dx: dx.clone(), dgamma: dg.clone(), dbeta: db.clone() };
                        check_backward(&case, &dy, batch, &mean, &var, &got, want_grads, false).unwrap();
                    }
                }
            }
        }
        11 => {
            // A forward operation with a fused epilogue: ReLU or add+ReLU (with a residual of a fuzzed
            // length), out of place or in place. An `Ok` gives, bit for bit, the epilogue applied to the
            // plain call's output (padding left as the plain call wrote it).
            let z = fill(&p.params[2..], near(len, d[7]));
            let add = p.count % 2 == 1;
            let epi = if add { bnorm::Epilogue::AddRelu(&z) } else { bnorm::Epilogue::Relu };
            let in_place = p.count >= 2;
            let which = p.momentum.to_bits() % 3;
            let (mean, var) = (fill(&p.params[1..], near(c, d[1])), fill(&p.params[2..], near(c, d[2])));
            let mut y = if in_place { x.clone() } else { vec![SENTINEL; near(len, d[5])] };
            let before = y.clone();
            let mut plain = vec![0.0f32; len];
            let (mut m, mut v) = (vec![SENTINEL; c], vec![SENTINEL; c]);
            let (mut m0, mut v0) = (vec![0.0f32; c], vec![0.0f32; c]);
            let (r, r0) = match (which, in_place) {
                (0, false) => (k.forward_training_with(&desc, &x, &mut y, &aff, &mut m, &mut v, epi), k.forward_training(&desc, &x, &mut plain, &aff, &mut m0, &mut v0)),
                (0, true) => (k.forward_training_in_place_with(&desc, &mut y, &aff, &mut m, &mut v, epi), k.forward_training(&desc, &x, &mut plain, &aff, &mut m0, &mut v0)),
                (1, false) => (k.forward_inference_with(&desc, &x, &mut y, &aff, &mean, &var, epi), k.forward_inference(&desc, &x, &mut plain, &aff, &mean, &var)),
                (1, true) => (k.forward_inference_in_place_with(&desc, &mut y, &aff, &mean, &var, epi), k.forward_inference(&desc, &x, &mut plain, &aff, &mean, &var)),
                (_, false) => (k.channel_affine_with(&desc, &x, &mut y, &mean, &var, epi), k.channel_affine(&desc, &x, &mut plain, &mean, &var)),
                (_, true) => (k.channel_affine_in_place_with(&desc, &mut y, &mean, &var, epi), k.channel_affine(&desc, &x, &mut plain, &mean, &var)),
            };
            match r {
                Err(_) => {
                    assert!(y.iter().zip(&before).all(|(a, b)| a.to_bits() == b.to_bits()), "written before an error");
                    assert!(untouched(&m) && untouched(&v));
                    // The plain call writes a buffer of the right length: only `y`'s and `z`'s lengths differ.
                    assert!(r0.is_err() || y.len() != len || (add && z.len() != len), "only y's or z's length can fail: {r:?}");
                }
                Ok(()) => {
                    assert!(r0.is_ok() && y.len() == len && (!add || z.len() == len));
                    for (i, (&got, &p0)) in y.iter().zip(&plain).enumerate() {
                        let padding = common::oracle::is_padding(p.shape, p.layout, i);
                        let t = if add && !padding { p0 + z[i] } else { p0 };
                        let want = if padding || !(0.0 > t) { t } else { 0.0 };
                        assert!(got.to_bits() == want.to_bits() || (got.is_nan() && want.is_nan()), "element {i}: {got} vs {want}");
                    }
                }
            }
        }
        12 => {
            // The backward pass with an epilogue: the same bits as the mask then the plain backward.
            let rev: Vec<f32> = p.data.iter().rev().map(|v| v * 0.5).collect();
            let dy = fill(&rev, near(len, d[6]));
            let yf = fill(&p.params[3..], near(len, d[7]));
            let add = p.count % 2 == 1;
            let batch = p.count >= 2;
            let (mut mean, mut var) = (fill(&p.params[1..], near(c, d[1])), fill(&p.params[2..], near(c, d[2])));
            var.iter_mut().for_each(|v| *v = v.abs());
            if x.len() == len && mean.len() == c && var.len() == c {
                k.moments(&desc, &x, &mut mean, &mut var).unwrap();
            }
            let saved = bnorm::Saved { mean: &mean, var: &var, mode: if batch { bnorm::StatsMode::Batch } else { bnorm::StatsMode::Global } };
            let mut dx = vec![SENTINEL; near(len, d[5])];
            let mut dz = vec![SENTINEL; near(len, d[4])];
            let ge = if add { bnorm::GradEpilogue::AddRelu { y: &yf, dz: &mut dz } } else { bnorm::GradEpilogue::Relu { y: &yf } };
            let r = k.backward_with(&desc, &x, &dy, &mut dx, &aff, &saved, bnorm::ParamGrads::none(), ge);
            let mut masked = vec![SENTINEL; len];
            let rm = k.relu_backward(&desc, &yf, &dy, &mut masked);
            match r {
                Err(_) => assert!(untouched(&dx) && untouched(&dz)),
                Ok(()) => {
                    rm.unwrap();
                    let mut dx0 = vec![0.0f32; len];
                    k.backward(&desc, &x, &masked, &mut dx0, &aff, &saved, bnorm::ParamGrads::none()).unwrap();
                    assert!(dx.iter().zip(&dx0).all(|(a, b)| a.to_bits() == b.to_bits() || (a.is_nan() && b.is_nan())));
                    if add {
                        assert!(dz.iter().zip(&masked).all(|(a, b)| a.to_bits() == b.to_bits() || (a.is_nan() && b.is_nan())));
                    } else {
                        assert!(untouched(&dz));
                    }
                }
            }
        }
        _ => {
            // Folding: the kernels' scale, and `shift = β − mean·scale`; an overflowing scale is an `Err`.
            let mean = fill(&p.data, near(c, d[1]));
            let var: Vec<f32> = fill(&p.params[1..], near(c, d[2])).iter().map(|v| v.abs()).collect();
            let (mut scale, mut shift) = (vec![SENTINEL; near(c, d[5])], vec![SENTINEL; near(c, d[6])]);
            // No descriptor: the channel count is `mean`'s length, and every other slice must match it.
            let m = mean.len();
            let sizes_ok = [var.len(), scale.len(), shift.len(), gamma.len(), beta.len()].iter().all(|&l| l == m)
                && p.eps.is_finite()
                && p.eps >= 0.0;
            match bnorm::fold_scale_shift(&aff, &mean, &var, &mut scale, &mut shift) {
                Err(e) => {
                    assert!(untouched(&scale) && untouched(&shift));
                    assert!(!sizes_ok || matches!(e, bnorm::Error::ScaleOverflow { .. } | bnorm::Error::InvalidVariance { .. }), "{e}");
                }
                Ok(()) => {
                    assert!(sizes_ok);
                    for j in 0..m {
                        let v = var[j] + p.eps;
                        let want = gamma[j] * if v == 0.0 { 0.0 } else { 1.0 / v.sqrt() };
                        assert!(scale[j].to_bits() == want.to_bits() || (scale[j].is_nan() && want.is_nan()), "{j}");
                        let want = beta[j] - mean[j] * want;
                        assert!(shift[j].to_bits() == want.to_bits() || (shift[j].is_nan() && want.is_nan()), "{j}");
                    }
                }
            }
        }
    }
});
