//! The backward pass: every tier × layout × mode (batch and global statistics), with and without γ and
//! the parameter gradients, against the f64 oracle (`common::oracle::backward`), which is itself checked
//! against finite differences of the f64 forward pass. In-place calls give the same bits as out-of-place
//! ones; the reduce and element halves agree with the oracle too. Exact cases and bad input are here as
//! well. `PROPTEST_CASES` raises the number of cases.
// `!(err <= tol)` is deliberate: a NaN error must fail the check.
#![allow(clippy::neg_cmp_op_on_partial_ord)]

mod common;

use bnorm::{Affine, Error, GradSums, Isa, Kernels, Layout, ParamGrads, Saved, Shape, StatsMode, TensorDesc};
use common::oracle;
use common::*;
use proptest::prelude::*;

/// Sizes around every tier's vector, tile and block widths.
fn dim(max: usize) -> impl Strategy<Value = usize> {
    prop_oneof![
        1..=max,
        prop::sample::select(vec![
            1, 2, 3, 4, 5, 7, 8, 9, 15, 16, 17, 31, 32, 33, 48, 49, 63, 64, 65, 128, 129
        ]),
    ]
}

fn shape() -> impl Strategy<Value = Shape> {
    if cfg!(miri) {
        return (1..=2usize, 1..=18usize, 1..=12usize).prop_map(|(n, c, s)| Shape::new(n, c, s)).boxed();
    }
    prop_oneof![
        6 => (1..=4usize, dim(40), dim(70)).prop_map(|(n, c, s)| Shape::new(n, c, s)),
        1 => (1..=3usize, 250..=300usize, 1..=3usize).prop_map(|(n, c, s)| Shape::new(n, c, s)),
        1 => (1..=2usize, 1..=3usize, 500..=3000usize).prop_map(|(n, c, s)| Shape::new(n, c, s)),
        // Channels-last rows wider than a band of the reduce's row walk (512).
        1 => (1..=3usize, 500..=600usize, 1..=2usize).prop_map(|(n, c, s)| Shape::new(n, c, s)),
    ]
    .boxed()
}

/// A case, its `dy`, the mode, whether to ask for dγ/dβ, and two alignments.
type BackCase = (Case, Vec<f32>, StatsMode, bool, usize, usize);

fn case() -> impl Strategy<Value = BackCase> {
    (
        shape(),
        0..LAYOUTS.len(),
        any::<u64>(),
        prop::sample::select(vec![1.0, 1e2, 1e4, 1e6]),
        any::<bool>(),
        any::<bool>(),
        0..17usize,
        0..17usize,
    )
        .prop_map(|(sh, l, seed, off, batch, grads, ax, ay)| {
            let case = gen_case(seed, sh, LAYOUTS[l], off);
            let dy = gen_dy(seed ^ 0xd1, sh, LAYOUTS[l]);
            let mode = if batch { StatsMode::Batch } else { StatsMode::Global };
            (case, dy, mode, grads, ax, ay)
        })
}

fn config() -> ProptestConfig {
    if cfg!(miri) { ProptestConfig::with_cases(3) } else { ProptestConfig::default() }
}

fn desc(case: &Case) -> TensorDesc {
    TensorDesc::new(case.shape, case.layout).unwrap()
}

fn affine(case: &Case) -> Affine<'_> {
    Affine { gamma: case.gamma.as_deref(), beta: case.beta.as_deref(), eps: case.eps }
}

/// The saved statistics: the kernel's own forward-training ones (batch mode), or running statistics
/// near the batch's (global mode).
fn saved_stats(k: &Kernels, case: &Case, mode: StatsMode) -> (Vec<f32>, Vec<f32>) {
    let c = case.shape.c;
    match mode {
        StatsMode::Batch => {
            let (mut m, mut v) = (vec![0.0; c], vec![0.0; c]);
            k.moments(&desc(case), &case.x, &mut m, &mut v).unwrap();
            (m, v)
        }
        StatsMode::Global => {
            let (rm, rv) = oracle::moments(case.shape, case.layout, &case.x);
            (
                rm.iter().map(|&m| (m * 1.01 + 0.001) as f32).collect(),
                rv.iter().map(|&v| (v * 0.9) as f32).collect(),
            )
        }
    }
}

fn prop_backward(isa: Isa, (case, dy, mode, grads, ax, ay): BackCase) -> Result<(), TestCaseError> {
    let Some(k) = kernels_or_skip(isa, "backward") else { return Ok(()) };
    let d = desc(&case);
    let c = case.shape.c;
    let fail = |e: String| TestCaseError::fail(format!("{isa} {:?} {mode:?}: {e}", case.layout));
    let (mean, var) = saved_stats(&k, &case, mode);
    let saved = Saved { mean: &mean, var: &var, mode };
    let xb = at_offset(&case.x, ax, 7.0);
    let x = &xb[ax..ax + d.len()];
    let mut dxb = at_offset(&vec![f32::NAN; d.len()], ay, 3.0);
    let (mut dg, mut db) = (vec![f32::NAN; c], vec![f32::NAN; c]);
    let pg = if grads { ParamGrads::new(&mut dg, &mut db) } else { ParamGrads::none() };
    k.backward(&d, x, &dy, &mut dxb[ay..ay + d.len()], &affine(&case), &saved, pg).unwrap();
    prop_assert!(dxb[..ay].iter().chain(&dxb[ay + d.len()..]).all(|&v| v == 3.0), "wrote outside dx");
    let got = Grads { dx: dxb[ay..ay + d.len()].to_vec(), dgamma: dg, dbeta: db };
    check_backward(&case, &dy, mode == StatsMode::Batch, &mean, &var, &got, grads, false).map_err(fail)?;
    if !grads {
        prop_assert!(got.dgamma.iter().all(|v| v.is_nan()), "dgamma written though not asked for");
    }
    // In place: the same bits, parameter gradients included.
    let mut dydx = at_offset(&dy, ay, 0.0);
    let (mut dg2, mut db2) = (vec![0.0; c], vec![0.0; c]);
    let pg = if grads { ParamGrads::new(&mut dg2, &mut db2) } else { ParamGrads::none() };
    k.backward_in_place(&d, x, &mut dydx[ay..ay + d.len()], &affine(&case), &saved, pg).unwrap();
    prop_assert!(bits_eq(&dydx[ay..ay + d.len()], &got.dx), "in-place dx differs");
    if grads {
        prop_assert!(bits_eq(&dg2, &got.dgamma) && bits_eq(&db2, &got.dbeta), "in-place dγ/dβ differ");
    }
    // The halves: reduce, then the element pass from the sums.
    let (mut sdy, mut sdx) = (vec![0.0; c], vec![0.0; c]);
    k.backward_reduce(&d, x, &dy, &mean, &mut sdy, &mut sdx).unwrap();
    if grads && mode == StatsMode::Global {
        // Global statistics: Σdy·(x − mean) needs no correction; the halves' dβ is the same sum.
        prop_assert!(bits_eq(&sdy, &got.dbeta), "reduce's Σdy differs from backward's dβ");
    }
    let sums = GradSums { sum_dy: &sdy, sum_dy_xmu: &sdx, batch: case.shape };
    let mut dx3 = vec![f32::NAN; d.len()];
    let (mut dg3, mut db3) = (vec![0.0; c], vec![0.0; c]);
    k.backward_elementwise(
        &d,
        x,
        &dy,
        &mut dx3,
        &affine(&case),
        &saved,
        &sums,
        ParamGrads::new(&mut dg3, &mut db3),
    )
    .unwrap();
    let halves = Grads { dx: dx3, dgamma: dg3, dbeta: db3 };
    check_backward(&case, &dy, mode == StatsMode::Batch, &mean, &var, &halves, true, true)
        .map_err(|e| fail(format!("halves: {e}")))?;
    if mode == StatsMode::Global {
        prop_assert!(bits_eq(&halves.dx, &got.dx), "global-statistics dx of the halves differs");
    }
    let mut dydx = dy.clone();
    k.backward_elementwise_in_place(&d, x, &mut dydx, &affine(&case), &saved, &sums, ParamGrads::none())
        .unwrap();
    prop_assert!(bits_eq(&dydx, &halves.dx), "in-place element half differs");
    Ok(())
}

macro_rules! tier_tests {
    ($($name:ident => $isa:expr),* $(,)?) => {$(
        mod $name {
            use super::*;
            proptest! {
                #![proptest_config(config())]
                #[test]
                fn backward(c in case()) { prop_backward($isa, c)?; }
            }
        }
    )*};
}

tier_tests! {
    scalar => Isa::Scalar,
    portable => Isa::Portable,
    avx2 => Isa::Avx2,
    avx512 => Isa::Avx512,
}

/// The f64 forward pass in training mode, channel by channel (for finite differences).
fn forward_f64(x: &[f64], gamma: f64, eps: f64) -> Vec<f64> {
    let m = x.len() as f64;
    let mu = x.iter().sum::<f64>() / m;
    let var = x.iter().map(|v| (v - mu) * (v - mu)).sum::<f64>() / m;
    x.iter().map(|v| gamma * (v - mu) / (var + eps).sqrt()).collect()
}

/// The oracle's training-mode gradient against central differences of the f64 forward pass (so the
/// oracle is right), and the kernels against both.
#[test]
fn finite_differences() {
    let shape = Shape::new(2, 3, 5);
    for layout in LAYOUTS {
        let case = gen_case(11, shape, layout, 10.0);
        let dy = gen_dy(12, shape, layout);
        let norm = training_norm(&case);
        let (dx, dg, _) = oracle::backward(shape, layout, &case.x, &dy, &norm, true);
        for c in 0..shape.c {
            let xs = oracle::channel(shape, layout, &case.x, c);
            let ds = oracle::channel(shape, layout, &dy, c);
            let loss = |x: &[f64]| {
                forward_f64(x, norm.gamma[c], norm.eps).iter().zip(&ds).map(|(y, d)| y * d).sum::<f64>()
            };
            let h = 1e-6 * norm.var[c].sqrt().max(1e-3);
            let mut k = 0;
            for n in 0..shape.n {
                for s in 0..shape.spatial {
                    let (mut xp, mut xm) = (xs.clone(), xs.clone());
                    xp[k] += h;
                    xm[k] -= h;
                    let fd = (loss(&xp) - loss(&xm)) / (2.0 * h);
                    let an = dx[oracle::offset(shape, layout, n, c, s)];
                    let scale = ds.iter().map(|d| d.abs()).fold(0.0, f64::max)
                        * norm.gamma[c].abs()
                        * norm.inv_std(c);
                    assert!(
                        (fd - an).abs() <= 1e-5 * scale + 1e-12,
                        "{layout:?} c={c}: fd {fd} vs analytic {an}"
                    );
                    k += 1;
                }
            }
            // dγ = ∂loss/∂γ: the loss is linear in γ.
            let fd_g = loss(&xs) / norm.gamma[c];
            assert!((fd_g - dg[c]).abs() <= 1e-9 * dg[c].abs().max(1.0), "{layout:?} c={c}: dγ");
        }
        for k in Isa::available().filter_map(Kernels::new) {
            let d = desc(&case);
            let (mean, var) = saved_stats(&k, &case, StatsMode::Batch);
            let (mut dxk, mut dgk, mut dbk) = (vec![0.0; d.len()], vec![0.0; 3], vec![0.0; 3]);
            k.backward(
                &d,
                &case.x,
                &dy,
                &mut dxk,
                &affine(&case),
                &Saved::batch(&mean, &var),
                ParamGrads::new(&mut dgk, &mut dbk),
            )
            .unwrap();
            let got = Grads { dx: dxk, dgamma: dgk, dbeta: dbk };
            check_backward(&case, &dy, true, &mean, &var, &got, true, false).unwrap();
        }
    }
}

/// Exact cases: a constant `dy` gives `dx` exactly 0 in training mode (the mean of dy is subtracted
/// exactly and the covariance is exactly 0), `dy = 0` gives every gradient exactly 0 in both modes.
#[test]
fn exact_cases() {
    let shapes = if cfg!(miri) {
        vec![Shape::new(2, 5, 7)]
    } else {
        vec![Shape::new(2, 5, 7), Shape::new(3, 37, 50), Shape::new(2, 300, 2)]
    };
    for shape in shapes {
        for layout in LAYOUTS {
            let case = gen_case(5, shape, layout, 1e3);
            let d = desc(&case);
            let c = shape.c;
            for k in Isa::available().filter_map(Kernels::new) {
                let (mean, var) = saved_stats(&k, &case, StatsMode::Batch);
                for (dy_value, modes) in
                    [(0.25f32, &[StatsMode::Batch][..]), (0.0, &[StatsMode::Batch, StatsMode::Global][..])]
                {
                    let dy: Vec<f32> = (0..d.len())
                        .map(|i| if oracle::is_padding(shape, layout, i) { f32::NAN } else { dy_value })
                        .collect();
                    for &mode in modes {
                        let saved = Saved { mean: &mean, var: &var, mode };
                        let mut dx = vec![f32::NAN; d.len()];
                        let (mut dg, mut db) = (vec![f32::NAN; c], vec![f32::NAN; c]);
                        k.backward(
                            &d,
                            &case.x,
                            &dy,
                            &mut dx,
                            &affine(&case),
                            &saved,
                            ParamGrads::new(&mut dg, &mut db),
                        )
                        .unwrap();
                        let what = format!("{} {layout:?} {shape:?} {mode:?} dy={dy_value}", k.isa());
                        assert!(
                            dx.iter().all(|&v| v == 0.0),
                            "{what}: dx not all 0: {:?}",
                            dx.iter().find(|v| **v != 0.0)
                        );
                        if dy_value == 0.0 {
                            assert!(dg.iter().chain(&db).all(|&v| v == 0.0), "{what}: dγ/dβ not 0");
                        } else {
                            let want = 0.25 * (shape.n * shape.spatial) as f32;
                            assert!(db.iter().all(|&v| v == want), "{what}: dβ {db:?} not {want}");
                        }
                    }
                }
            }
        }
    }
}

/// Every bad argument is an `Err` naming it, and nothing is written.
#[test]
fn bad_input() {
    let shape = Shape::new(2, 5, 3);
    let d = TensorDesc::new(shape, Layout::Blocked { block: 4 }).unwrap();
    let n = d.len();
    let x = vec![1.0f32; n];
    let dy = vec![1.0f32; n];
    let (mean, var, gamma) = (vec![0.0f32; 5], vec![1.0f32; 5], vec![1.0f32; 5]);
    let short = vec![0.0f32; 4];
    let a = Affine { gamma: Some(&gamma), beta: None, eps: 1e-5 };
    let saved = Saved::batch(&mean, &var);
    let mut dx = vec![9.0f32; n];
    let (mut dg, mut db) = (vec![9.0f32; 5], vec![9.0f32; 5]);
    let len_err = |e: Result<(), Error>, what: &str| match e {
        Err(Error::LengthMismatch { what: w, .. }) => assert_eq!(w, what),
        other => panic!("{what}: {other:?}"),
    };
    len_err(bnorm::backward(&d, &x[1..], &dy, &mut dx, &a, &saved, ParamGrads::none()), "x");
    len_err(bnorm::backward(&d, &x, &dy[1..], &mut dx, &a, &saved, ParamGrads::none()), "dy");
    len_err(bnorm::backward(&d, &x, &dy, &mut dx[1..], &a, &saved, ParamGrads::none()), "dx");
    len_err(
        bnorm::backward(&d, &x, &dy, &mut dx, &a, &Saved::batch(&short, &var), ParamGrads::none()),
        "mean",
    );
    len_err(
        bnorm::backward(&d, &x, &dy, &mut dx, &a, &Saved::batch(&mean, &short), ParamGrads::none()),
        "var",
    );
    let bad_g = Affine { gamma: Some(&short), ..a };
    len_err(bnorm::backward(&d, &x, &dy, &mut dx, &bad_g, &saved, ParamGrads::none()), "gamma");
    let mut s4 = vec![9.0f32; 4];
    len_err(
        bnorm::backward(
            &d,
            &x,
            &dy,
            &mut dx,
            &a,
            &saved,
            ParamGrads { dgamma: Some(&mut s4), dbeta: Some(&mut db) },
        ),
        "dgamma",
    );
    len_err(
        bnorm::backward(
            &d,
            &x,
            &dy,
            &mut dx,
            &a,
            &saved,
            ParamGrads { dgamma: Some(&mut dg), dbeta: Some(&mut s4) },
        ),
        "dbeta",
    );
    assert!(matches!(
        bnorm::backward(
            &d,
            &x,
            &dy,
            &mut dx,
            &Affine { eps: -1.0, ..a },
            &saved,
            ParamGrads::new(&mut dg, &mut db)
        ),
        Err(Error::InvalidEpsilon { .. })
    ));
    let neg = vec![1.0, 1.0, -1.0, 1.0, 1.0];
    assert!(matches!(
        bnorm::backward(
            &d,
            &x,
            &dy,
            &mut dx,
            &a,
            &Saved::global(&mean, &neg),
            ParamGrads::new(&mut dg, &mut db)
        ),
        Err(Error::InvalidVariance { channel: 2, .. })
    ));
    let mut xy = dy.clone();
    len_err(bnorm::backward_in_place(&d, &x, &mut xy[1..], &a, &saved, ParamGrads::none()), "dy_dx");
    // The halves.
    let (mut s1, mut s2) = (vec![9.0f32; 5], vec![9.0f32; 5]);
    len_err(bnorm::backward_reduce(&d, &x, &dy, &short, &mut s1, &mut s2), "mean");
    len_err(bnorm::backward_reduce(&d, &x, &dy[1..], &mean, &mut s1, &mut s2), "dy");
    len_err(bnorm::backward_reduce(&d, &x, &dy, &mean, &mut s4, &mut s2), "sum_dy");
    len_err(bnorm::backward_reduce(&d, &x, &dy, &mean, &mut s1, &mut s4), "sum_dy_xmu");
    assert!(s1.iter().chain(&s2).all(|&v| v == 9.0), "reduce wrote on error");
    let sums = GradSums { sum_dy: &s1, sum_dy_xmu: &s2, batch: shape };
    len_err(
        bnorm::backward_elementwise(
            &d,
            &x,
            &dy,
            &mut dx,
            &a,
            &saved,
            &GradSums { sum_dy: &short, ..sums },
            ParamGrads::none(),
        ),
        "sum_dy",
    );
    len_err(
        bnorm::backward_elementwise(
            &d,
            &x,
            &dy,
            &mut dx,
            &a,
            &saved,
            &GradSums { sum_dy_xmu: &short, ..sums },
            ParamGrads::none(),
        ),
        "sum_dy_xmu",
    );
    for batch in [Shape::new(2, 4, 3), Shape::new(1, 5, 3), Shape::new(2, 5, 2)] {
        assert_eq!(
            bnorm::backward_elementwise(
                &d,
                &x,
                &dy,
                &mut dx,
                &a,
                &saved,
                &GradSums { batch, ..sums },
                ParamGrads::new(&mut dg, &mut db)
            ),
            Err(Error::BatchMismatch { batch, local: shape })
        );
    }
    // A larger global batch (SyncBN) is fine.
    let global = GradSums { batch: Shape::new(6, 5, 3), ..sums };
    len_err(
        bnorm::backward_elementwise_in_place(&d, &x, &mut xy[1..], &a, &saved, &global, ParamGrads::none()),
        "dy_dx",
    );
    assert!(dx.iter().chain(&dg).chain(&db).all(|&v| v == 9.0), "an erroring call wrote");
    assert!(bits_eq(&xy, &dy), "an erroring in-place call wrote");
    bnorm::backward_elementwise(&d, &x, &dy, &mut dx, &a, &saved, &global, ParamGrads::none()).unwrap();
    let msg = Error::BatchMismatch { batch: Shape::new(1, 5, 3), local: shape }.to_string();
    assert!(msg.contains("n=1, c=5, spatial=3") && msg.contains("n=2, c=5, spatial=3"), "{msg}");
}

/// Bit-for-bit equality (NaN payloads included).
fn bits_eq(a: &[f32], b: &[f32]) -> bool {
    a.len() == b.len() && a.iter().zip(b).all(|(x, y)| x.to_bits() == y.to_bits())
}
