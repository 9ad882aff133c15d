//! Partial statistics (issue 13, item 1): the partials of any batch split, merged in order and finished,
//! against the f64 oracle within `moments`' bounds, on every tier and layout, at offsets up to 10⁶·σ;
//! one part finished equals `moments`; exact cases; the bytes of a slice; running statistics; bad input.

mod common;

use bnorm::{Error, Isa, Kernels, Momentum, Partial, Shape, TensorDesc};
use common::*;
use proptest::prelude::*;

fn config() -> ProptestConfig {
    if cfg!(miri) { ProptestConfig::with_cases(3) } else { ProptestConfig::with_cases(64) }
}

/// A case with a batch of 1 to 7 samples (1 to 3 under miri), and cut points of that batch.
fn split_case() -> impl Strategy<Value = (Case, Vec<usize>)> {
    let (n_max, c_max, s_max) = if cfg!(miri) { (3usize, 12usize, 12usize) } else { (7, 40, 60) };
    (
        1..=n_max,
        1..=c_max,
        1..=s_max,
        0..LAYOUTS.len(),
        any::<u64>(),
        prop::sample::select(vec![1.0, 1e2, 1e4, 1e6]),
        prop::collection::vec(any::<u16>(), 0..4),
    )
        .prop_map(|(n, c, s, l, seed, off, cuts)| {
            let case = gen_case(seed, Shape::new(n, c, s), LAYOUTS[l], off);
            let mut cuts: Vec<usize> = cuts.iter().map(|&k| 1 + k as usize % n).filter(|&k| k < n).collect();
            cuts.sort_unstable();
            cuts.dedup();
            (case, cuts)
        })
}

/// The partials of each batch range `[0, cuts…, n)` of `case`, merged in order.
fn merged(k: &Kernels, case: &Case, cuts: &[usize]) -> Vec<Partial> {
    let sh = case.shape;
    let per_sample = TensorDesc::new(case.shape, case.layout).unwrap().len() / sh.n;
    let mut bounds = vec![0];
    bounds.extend_from_slice(cuts);
    bounds.push(sh.n);
    let mut acc = vec![Partial::EMPTY; sh.c];
    for w in bounds.windows(2) {
        let part = TensorDesc::new(Shape::new(w[1] - w[0], sh.c, sh.spatial), case.layout).unwrap();
        let mut out = vec![Partial::EMPTY; sh.c];
        k.partial_moments(&part, &case.x[w[0] * per_sample..w[1] * per_sample], &mut out).unwrap();
        assert!(out.iter().all(|p| p.count == ((w[1] - w[0]) * sh.spatial) as u64));
        bnorm::merge_partials(&mut acc, &out).unwrap();
    }
    acc
}

fn finish(p: &[Partial]) -> (Vec<f32>, Vec<f32>) {
    let (mut mean, mut var) = (vec![f32::NAN; p.len()], vec![f32::NAN; p.len()]);
    bnorm::finish_partials(p, &mut mean, &mut var).unwrap();
    (mean, var)
}

fn prop_split(isa: Isa, (case, cuts): (Case, Vec<usize>)) -> Result<(), TestCaseError> {
    let Some(k) = kernels_or_skip(isa, "partial_moments") else { return Ok(()) };
    let d = TensorDesc::new(case.shape, case.layout).unwrap();
    let fail = |e: String| TestCaseError::fail(format!("{isa} {:?} cuts {cuts:?}: {e}", case.layout));
    // Merged parts: within moments' bounds of the oracle.
    let acc = merged(&k, &case, &cuts);
    prop_assert!(acc.iter().all(|p| p.count == case.shape.count() as u64));
    let (mean, var) = finish(&acc);
    check_moments(&case, &mean, &var).map_err(fail)?;
    // One part: moments' mean bit for bit, its variance within one rounding of M2/count.
    let (mut m0, mut v0) = (vec![0.0; case.shape.c], vec![0.0; case.shape.c]);
    k.moments(&d, &case.x, &mut m0, &mut v0).unwrap();
    let (m1, v1) = finish(&merged(&k, &case, &[]));
    for c in 0..case.shape.c {
        prop_assert!(m1[c].to_bits() == m0[c].to_bits(), "channel {c}: mean {} vs moments {}", m1[c], m0[c]);
        let ulp = f32::EPSILON * v0[c].abs() + f32::MIN_POSITIVE;
        prop_assert!((v1[c] - v0[c]).abs() <= ulp, "channel {c}: var {} vs moments {}", v1[c], v0[c]);
    }
    Ok(())
}

macro_rules! tier_tests {
    ($($name:ident => $isa:expr),* $(,)?) => {$(
        mod $name {
            use super::*;
            proptest! {
                #![proptest_config(config())]
                #[test]
                fn split_merge_finish(c in split_case()) { prop_split($isa, c)?; }
            }
        }
    )*};
}

tier_tests!(scalar => Isa::Scalar, portable => Isa::Portable, avx2 => Isa::Avx2, avx512 => Isa::Avx512);

/// The case: mean/σ = 1000, four shards. Rounding each shard's mean to f32 before a merge cost
/// up to 23 ulp of variance; the pairs keep it within moments' bound.
#[test]
fn shards_at_a_large_offset() {
    let shape = Shape::new(8, 3, if cfg!(miri) { 16 } else { 500 });
    for layout in LAYOUTS {
        let mut case = gen_case(7, shape, layout, 1.0);
        let d = TensorDesc::new(shape, layout).unwrap();
        for (i, v) in case.x.iter_mut().enumerate() {
            if !common::oracle::is_padding(shape, layout, i) {
                *v = 1000.0 + (((i * 7919) % 1013) as f32 / 506.5 - 1.0);
            }
        }
        let k = Kernels::detect();
        let acc = merged(&k, &case, &[2, 4, 6]);
        let (mean, var) = finish(&acc);
        check_moments(&case, &mean, &var).unwrap();
        let (mut m0, mut v0) = (vec![0.0; 3], vec![0.0; 3]);
        k.moments(&d, &case.x, &mut m0, &mut v0).unwrap();
        for c in 0..3 {
            let rel = ((var[c] - v0[c]) / v0[c]).abs();
            assert!(rel < 8.0 * f32::EPSILON, "{layout:?} channel {c}: {} vs {} ({rel:e})", var[c], v0[c]);
        }
    }
}

#[test]
fn exact_cases() {
    let shape = Shape::new(4, 5, 3);
    for layout in LAYOUTS {
        // Constant channels: exact mean, variance exactly 0, whatever the split.
        let mut case = gen_case(1, shape, layout, 1.0);
        for n in 0..shape.n {
            for c in 0..shape.c {
                for p in 0..shape.spatial {
                    case.x[common::oracle::offset(shape, layout, n, c, p)] = 1e6 + c as f32 * 0.5;
                }
            }
        }
        let (mean, var) = finish(&merged(&Kernels::detect(), &case, &[1, 3]));
        for c in 0..shape.c {
            assert_eq!(mean[c], 1e6 + c as f32 * 0.5, "{layout:?}");
            assert_eq!(var[c], 0.0, "{layout:?}");
        }
    }
    // The empty partial is merge's identity on both sides, bit for bit.
    let p = Partial { count: 3, mean_hi: 1.5, mean_lo: 1e-9, m2: 0.25 };
    assert_eq!(p.merge(Partial::EMPTY), p);
    assert_eq!(Partial::EMPTY.merge(p), p);
    // Two single values: mean and M2 exact.
    let a = Partial { count: 1, mean_hi: 1.0, mean_lo: 0.0, m2: 0.0 };
    let b = Partial { count: 1, mean_hi: 3.0, mean_lo: 0.0, m2: 0.0 };
    let ab = a.merge(b);
    assert_eq!((ab.count, ab.mean_hi, ab.mean_lo, ab.m2), (2, 2.0, 0.0, 2.0));
    // NaN stays.
    let nan = Partial { count: 2, mean_hi: f32::NAN, mean_lo: 0.0, m2: f64::NAN };
    let r = a.merge(nan);
    assert!(r.mean_hi.is_nan() && r.m2.is_nan() && r.count == 3);
    // And through finish: a NaN channel stays NaN in mean and variance, its neighbour is untouched by it.
    let (mut mean, mut var) = ([0.0f32; 2], [0.0f32; 2]);
    bnorm::finish_partials(&[r, ab], &mut mean, &mut var).unwrap();
    assert!(mean[0].is_nan() && var[0].is_nan(), "{mean:?} {var:?}");
    assert_eq!((mean[1], var[1]), (2.0, 1.0));
}

/// A slice of partials is bytes for a transport, and comes back the same.
#[test]
fn bytes_round_trip() {
    assert_eq!(std::mem::size_of::<Partial>(), 24);
    let ps = [
        Partial { count: 5, mean_hi: -2.5, mean_lo: 3e-8, m2: 12.0 },
        Partial { count: u64::MAX, mean_hi: f32::NAN, mean_lo: 0.0, m2: f64::INFINITY },
    ];
    let bytes: &[u8] = bytemuck::cast_slice(&ps);
    assert_eq!(bytes.len(), 48);
    assert_eq!(&bytes[..8], &5u64.to_ne_bytes());
    // As a receiver would: bytes into a buffer of partials.
    let mut back = vec![Partial::EMPTY; 2];
    bytemuck::cast_slice_mut::<Partial, u8>(&mut back).copy_from_slice(bytes);
    assert_eq!(back[0], ps[0]);
    assert_eq!(back[1].count, u64::MAX);
    assert!(back[1].mean_hi.is_nan() && back[1].m2 == f64::INFINITY);
}

/// Running statistics from partials: the same as from the finished statistics and the descriptor,
/// within a few roundings (M2/(count − 1) in f64 against var·count/(count − 1) from the rounded var).
#[test]
fn running_stats_from_partials() {
    let shape = Shape::new(3, 6, 10);
    let case = gen_case(11, shape, bnorm::Layout::Nhwc, 1e2);
    let d = TensorDesc::new(shape, case.layout).unwrap();
    let acc = merged(&Kernels::detect(), &case, &[1]);
    let (mean, var) = finish(&acc);
    for momentum in
        [Momentum::Exponential(0.1), Momentum::Exponential(1.0), Momentum::CumulativeAverage { batches: 3 }]
    {
        let (mut rm0, mut rv0) = (vec![0.5f32; 6], vec![2.0f32; 6]);
        bnorm::update_running_stats(&d, &mut rm0, &mut rv0, &mean, &var, momentum).unwrap();
        let (mut rm1, mut rv1) = (vec![0.5f32; 6], vec![2.0f32; 6]);
        bnorm::update_running_stats_from_partials(&acc, &mut rm1, &mut rv1, momentum).unwrap();
        assert_eq!(rm0, rm1);
        for c in 0..6 {
            assert!((rv0[c] - rv1[c]).abs() <= 4.0 * f32::EPSILON * rv0[c], "{c}: {} vs {}", rv0[c], rv1[c]);
        }
    }
    // Momentum 0: untouched, even with NaN statistics.
    let nan = vec![Partial { count: 4, mean_hi: f32::NAN, mean_lo: 0.0, m2: f64::NAN }; 2];
    let (mut rm, mut rv) = (vec![1.0f32; 2], vec![3.0f32; 2]);
    bnorm::update_running_stats_from_partials(&nan, &mut rm, &mut rv, Momentum::Exponential(0.0)).unwrap();
    assert_eq!((rm, rv), (vec![1.0; 2], vec![3.0; 2]));
}

#[test]
fn bad_input_writes_nothing() {
    let d = TensorDesc::new(Shape::new(2, 3, 4), bnorm::Layout::Blocked { block: 4 }).unwrap();
    let x = vec![1.0f32; d.len()];
    let sentinel = Partial { count: 9, mean_hi: 9.0, mean_lo: 9.0, m2: 9.0 };
    let mut out = vec![sentinel; 3];
    let e = bnorm::partial_moments(&d, &x[1..], &mut out).unwrap_err();
    assert!(matches!(e, Error::LengthMismatch { what: "x", .. }), "{e}");
    let mut short = vec![sentinel; 2];
    let e = bnorm::partial_moments(&d, &x, &mut short).unwrap_err();
    assert_eq!(e, Error::LengthMismatch { what: "out", expected: 3, found: 2 });
    assert!(e.to_string().contains('3') && e.to_string().contains('2'));
    assert!(out.iter().chain(&short).all(|p| *p == sentinel));

    let e = bnorm::merge_partials(&mut out, &[Partial::EMPTY; 2]).unwrap_err();
    assert_eq!(e, Error::LengthMismatch { what: "part", expected: 3, found: 2 });
    assert!(out.iter().all(|p| *p == sentinel));

    let (mut m, mut v) = (vec![7.0f32; 3], vec![7.0f32; 2]);
    assert!(bnorm::finish_partials(&out, &mut m, &mut v).is_err());
    let mut v = vec![7.0f32; 3];
    let with_empty = [sentinel, Partial::EMPTY, sentinel];
    assert_eq!(bnorm::finish_partials(&with_empty, &mut m, &mut v), Err(Error::EmptyPartial { channel: 1 }));
    assert!(m.iter().chain(&v).all(|&a| a == 7.0));

    let one = [Partial { count: 1, ..sentinel }; 3];
    let (mut rm, mut rv) = (vec![7.0f32; 3], vec![7.0f32; 3]);
    assert_eq!(
        bnorm::update_running_stats_from_partials(&one, &mut rm, &mut rv, Momentum::Exponential(0.5)),
        Err(Error::CountTooSmall { count: 1 })
    );
    let bad = bnorm::update_running_stats_from_partials(&out, &mut rm, &mut rv, Momentum::Exponential(1.5));
    assert!(matches!(bad, Err(Error::InvalidMomentum { .. })));
    assert!(
        bnorm::update_running_stats_from_partials(&out, &mut rm[..2], &mut rv, Momentum::Exponential(0.5))
            .is_err()
    );
    assert!(rm.iter().chain(&rv).all(|&a| a == 7.0));
}
