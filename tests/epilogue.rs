//! Fused epilogues (ReLU, residual add + ReLU) on every tier × layout × forward operation, and the
//! backward pass that takes them. `PROPTEST_CASES` raises the number of cases.
//!
//! - Forward: the fused output is, bit for bit, the epilogue applied in f32 to the plain output
//!   (`max(0, y)` or `max(0, y + z)`, NaN and −0 kept), padding +0 whatever `z` holds there; in place
//!   gives the same bits; training's statistics are the plain call's; and the output is checked against
//!   the f64 oracle composed with the epilogue.
//! - Backward: `dy` masked where the forward output is ≤ 0, then the gradients against the f64 oracle
//!   with the masked `dy`; the same bits as `relu_backward` then `backward`; `dz` the masked `dy`; in
//!   place the same bits.
//! - Bad input (a missing or short `z`, `y`, `dz`) is an `Err` before anything is written.
// `!(err <= tol)` is deliberate: a NaN error must fail the check.
#![allow(clippy::neg_cmp_op_on_partial_ord)]

mod common;

use bnorm::{
    Affine, Epilogue, Error, GradEpilogue, Isa, Kernels, ParamGrads, Saved, Shape, StatsMode, TensorDesc,
};
use common::oracle;
use common::*;
use proptest::prelude::*;

fn dim(max: usize) -> impl Strategy<Value = usize> {
    prop_oneof![1..=max, prop::sample::select(vec![1, 3, 4, 5, 8, 15, 16, 17, 31, 32, 33, 64, 65]),]
}

fn shape() -> impl Strategy<Value = Shape> {
    if cfg!(miri) {
        return (1..=2usize, 1..=10usize, 1..=10usize).prop_map(|(n, c, s)| Shape::new(n, c, s)).boxed();
    }
    prop_oneof![
        6 => (1..=3usize, dim(40), dim(50)).prop_map(|(n, c, s)| Shape::new(n, c, s)),
        1 => (1..=2usize, 250..=300usize, 1..=2usize).prop_map(|(n, c, s)| Shape::new(n, c, s)),
        1 => (1..=2usize, 1..=2usize, 500..=1500usize).prop_map(|(n, c, s)| Shape::new(n, c, s)),
    ]
    .boxed()
}

/// A case, a residual `z` (NaN in padding), and two alignments.
fn case() -> impl Strategy<Value = (Case, Vec<f32>, usize, usize)> {
    (shape(), 0..LAYOUTS.len(), any::<u64>(), prop::sample::select(vec![1.0, 1e4]), 0..17usize, 0..17usize)
        .prop_map(|(sh, l, seed, off, ax, ay)| {
            let case = gen_case(seed, sh, LAYOUTS[l], off);
            // Of the outputs' order (|γ| ≤ 2 times a few σ', |β| ≤ 5), so that the add and the ReLU
            // both matter; padding NaN, which must not reach the output.
            let z = gen_dy(seed ^ 0x2e, sh, LAYOUTS[l]);
            (case, z, ax, ay)
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

fn bits_eq(a: &[f32], b: &[f32]) -> bool {
    a.len() == b.len() && a.iter().zip(b).all(|(x, y)| x.to_bits() == y.to_bits())
}

/// The epilogue applied in f32 to a plain output, as the documentation states it: padding stays what
/// the plain pass wrote (+0).
fn expected(case: &Case, plain: &[f32], z: Option<&[f32]>) -> Vec<f32> {
    plain
        .iter()
        .enumerate()
        .map(|(i, &y)| {
            if oracle::is_padding(case.shape, case.layout, i) {
                return y;
            }
            let v = match z {
                Some(z) => y + z[i],
                None => y,
            };
            if 0.0 > v { 0.0 } else { v }
        })
        .collect()
}

/// The fused output against the f64 oracle composed with the epilogue: `|y − max(0, t + z)|` within
/// the plain output's tolerance plus the sum's rounding (`U·|t + z|`), where `t` is the oracle's output
/// and `tol_plain` the plain kernel output's distance from it (checked by `tests/properties.rs`).
fn check_against_oracle(
    case: &Case,
    fused: &[f32],
    plain: &[f32],
    exact: impl Fn(usize, f64) -> f64,
    z: Option<&[f32]>,
) -> Result<(), String> {
    let sh = case.shape;
    for c in 0..sh.c {
        for n in 0..sh.n {
            for s in 0..sh.spatial {
                let i = oracle::offset(sh, case.layout, n, c, s);
                let t = exact(c, case.x[i] as f64);
                let zi = z.map_or(0.0, |z| z[i] as f64);
                let want = (t + zi).max(0.0);
                let tol = (plain[i] as f64 - t).abs() + 2.0 * U * (t + zi).abs() + f64::MIN_POSITIVE;
                let got = fused[i] as f64;
                if !((got - want).abs() <= tol) {
                    return Err(format!("(n={n}, c={c}, s={s}): {got} vs {want} (tol {tol:e})"));
                }
            }
        }
    }
    Ok(())
}

#[derive(Clone, Copy, Debug)]
enum Op {
    Training,
    Inference,
    Affine,
}

/// Runs `op` with `epi`, out of place (at alignments `ax`, `ay`) and in place; returns the output and
/// the statistics (training) after checking that in place gives the same bits.
fn run(k: &Kernels, op: Op, case: &Case, epi: Epilogue<'_>, ax: usize, ay: usize) -> Vec<f32> {
    let d = desc(case);
    let c = case.shape.c;
    let (rm, rv) = oracle::moments(case.shape, case.layout, &case.x);
    let mean: Vec<f32> = rm.iter().map(|&m| (m * 1.01 + 0.001) as f32).collect();
    let var: Vec<f32> = rv.iter().map(|&v| (v * 0.9) as f32).collect();
    let (scale, shift) = scale_shift(case);
    let xb = at_offset(&case.x, ax, 7.0);
    let x = &xb[ax..ax + d.len()];
    let mut yb = at_offset(&vec![f32::NAN; d.len()], ay, 3.0);
    let mut xy = at_offset(&case.x, ay, 0.0);
    let (y, xyr) = (&mut yb[ay..ay + d.len()], &mut xy[ay..ay + d.len()]);
    let a = affine(case);
    let (mut m1, mut v1, mut m2, mut v2) = (vec![0.0; c], vec![0.0; c], vec![1.0; c], vec![1.0; c]);
    match op {
        Op::Training => {
            k.forward_training_with(&d, x, y, &a, &mut m1, &mut v1, epi).unwrap();
            k.forward_training_in_place_with(&d, xyr, &a, &mut m2, &mut v2, epi).unwrap();
            assert!(bits_eq(&m1, &m2) && bits_eq(&v1, &v2), "in-place statistics differ");
            // The statistics do not depend on the epilogue.
            let (mut m0, mut v0) = (vec![0.0; c], vec![0.0; c]);
            k.moments(&d, &case.x, &mut m0, &mut v0).unwrap();
            assert!(bits_eq(&m1, &m0) && bits_eq(&v1, &v0), "{epi:?}: statistics differ from moments'");
        }
        Op::Inference => {
            k.forward_inference_with(&d, x, y, &a, &mean, &var, epi).unwrap();
            k.forward_inference_in_place_with(&d, xyr, &a, &mean, &var, epi).unwrap();
        }
        Op::Affine => {
            k.channel_affine_with(&d, x, y, &scale, &shift, epi).unwrap();
            k.channel_affine_in_place_with(&d, xyr, &scale, &shift, epi).unwrap();
        }
    }
    assert!(bits_eq(xyr, y), "{op:?} {epi:?}: in-place output differs");
    let y = y.to_vec();
    assert!(yb[..ay].iter().chain(&yb[ay + d.len()..]).all(|&v| v == 3.0), "wrote outside y");
    y
}

fn scale_shift(case: &Case) -> (Vec<f32>, Vec<f32>) {
    let mut r = Rng(case.x.len() as u64 + 11);
    let scale = (0..case.shape.c).map(|_| r.range(-3.0, 3.0) as f32).collect();
    let shift = (0..case.shape.c).map(|_| r.range(-3.0, 3.0) as f32).collect();
    (scale, shift)
}

fn prop_forward(isa: Isa, (case, z, ax, ay): (Case, Vec<f32>, usize, usize)) -> Result<(), TestCaseError> {
    let Some(k) = kernels_or_skip(isa, "forward epilogues") else { return Ok(()) };
    let (rm, rv) = oracle::moments(case.shape, case.layout, &case.x);
    let inf_norm = norm_with(&case, rm.iter().map(|&m| (m * 1.01 + 0.001) as f32 as f64).collect(), {
        rv.iter().map(|&v| (v * 0.9) as f32 as f64).collect()
    });
    let train_norm = training_norm(&case);
    let (scale, shift) = scale_shift(&case);
    for op in [Op::Training, Op::Inference, Op::Affine] {
        let plain = run(&k, op, &case, Epilogue::None, ax, ay);
        for (epi, zr) in [(Epilogue::Relu, None), (Epilogue::AddRelu(&z), Some(&z[..]))] {
            let fused = run(&k, op, &case, epi, ay, ax);
            let want = expected(&case, &plain, zr);
            let what =
                format!("{isa} {:?} {op:?} {}", case.layout, if zr.is_some() { "add+relu" } else { "relu" });
            if let Some(i) = (0..want.len()).find(|&i| fused[i].to_bits() != want[i].to_bits()) {
                return Err(TestCaseError::fail(format!(
                    "{what}: element {i} is {} where the epilogue of the plain output {} is {}",
                    fused[i], plain[i], want[i]
                )));
            }
            check_padding(&case, &fused).map_err(|e| TestCaseError::fail(format!("{what}: {e}")))?;
            let r = match op {
                Op::Training => {
                    check_against_oracle(&case, &fused, &plain, |c, x| train_norm.apply(c, x), zr)
                }
                Op::Inference => check_against_oracle(&case, &fused, &plain, |c, x| inf_norm.apply(c, x), zr),
                Op::Affine => check_against_oracle(
                    &case,
                    &fused,
                    &plain,
                    |c, x| x * scale[c] as f64 + shift[c] as f64,
                    zr,
                ),
            };
            r.map_err(|e| TestCaseError::fail(format!("{what}: {e}")))?;
        }
    }
    Ok(())
}

/// `dy` masked by `y` as documented: 0 where `y ≤ 0`.
fn masked(dy: &[f32], y: &[f32]) -> Vec<f32> {
    dy.iter().zip(y).map(|(&d, &v)| if v <= 0.0 { 0.0 } else { d }).collect()
}

fn prop_backward(
    isa: Isa,
    (case, z, ax, _): (Case, Vec<f32>, usize, usize),
    batch: bool,
) -> Result<(), TestCaseError> {
    let Some(k) = kernels_or_skip(isa, "backward epilogues") else { return Ok(()) };
    let d = desc(&case);
    let c = case.shape.c;
    let dy = gen_dy(case.x.len() as u64 ^ 0x5a, case.shape, case.layout);
    let (mut mean, mut var) = (vec![0.0; c], vec![0.0; c]);
    let a = affine(&case);
    let mode = if batch { StatsMode::Batch } else { StatsMode::Global };
    for add in [false, true] {
        let epi = if add { Epilogue::AddRelu(&z) } else { Epilogue::Relu };
        let mut y = vec![0.0; d.len()];
        k.forward_training_with(&d, &case.x, &mut y, &a, &mut mean, &mut var, epi).unwrap();
        let saved = Saved { mean: &mean, var: &var, mode };
        let what = format!("{isa} {:?} {mode:?} add {add}", case.layout);
        let fail = |e: String| TestCaseError::fail(format!("{what}: {e}"));
        let want_dz = masked(&dy, &y);
        // The plain backward on the masked gradient: the reference bits.
        let (mut dx0, mut dg0, mut db0) = (vec![f32::NAN; d.len()], vec![0.0; c], vec![0.0; c]);
        k.backward(&d, &case.x, &want_dz, &mut dx0, &a, &saved, ParamGrads::new(&mut dg0, &mut db0)).unwrap();
        let got = Grads { dx: dx0.clone(), dgamma: dg0.clone(), dbeta: db0.clone() };
        check_backward(&case, &want_dz, batch, &mean, &var, &got, true, false).map_err(fail)?;
        // relu_backward is the mask.
        let mut dz = vec![f32::NAN; d.len()];
        k.relu_backward(&d, &y, &dy, &mut dz).unwrap();
        prop_assert!(bits_eq(&dz, &want_dz), "{what}: relu_backward");
        let mut dz2 = dy.clone();
        k.relu_backward_in_place(&d, &y, &mut dz2).unwrap();
        prop_assert!(bits_eq(&dz2, &want_dz), "{what}: relu_backward_in_place");
        // backward_with, out of place and in place.
        let xb = at_offset(&case.x, ax, 7.0);
        let x = &xb[ax..ax + d.len()];
        let (mut dx, mut dg, mut db) = (vec![f32::NAN; d.len()], vec![0.0; c], vec![0.0; c]);
        let mut dz = vec![f32::NAN; d.len()];
        let ge =
            if add { GradEpilogue::AddRelu { y: &y, dz: &mut dz } } else { GradEpilogue::Relu { y: &y } };
        k.backward_with(&d, x, &dy, &mut dx, &a, &saved, ParamGrads::new(&mut dg, &mut db), ge).unwrap();
        prop_assert!(bits_eq(&dx, &dx0) && bits_eq(&dg, &dg0) && bits_eq(&db, &db0), "{what}: backward_with");
        if add {
            prop_assert!(bits_eq(&dz, &want_dz), "{what}: dz");
        }
        let mut dydx = dy.clone();
        let mut dz3 = vec![f32::NAN; d.len()];
        let ge =
            if add { GradEpilogue::AddRelu { y: &y, dz: &mut dz3 } } else { GradEpilogue::Relu { y: &y } };
        k.backward_in_place_with(&d, x, &mut dydx, &a, &saved, ParamGrads::none(), ge).unwrap();
        prop_assert!(bits_eq(&dydx, &dx0), "{what}: backward_in_place_with");
        if add {
            prop_assert!(bits_eq(&dz3, &want_dz), "{what}: in-place dz");
        }
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
                fn forward(c in case()) { prop_forward($isa, c)?; }
                #[test]
                fn backward(c in case(), batch in any::<bool>()) { prop_backward($isa, c, batch)?; }
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

/// A channel whose scale γ/√(var + ε) overflows f32 (γ = 1e36, var + ε tiny) is finished after the
/// vector pass (`fix_overflowed`); the epilogue must then be applied after that, on every tier.
#[test]
fn epilogue_after_overflowed_scale() {
    for layout in LAYOUTS {
        let d = TensorDesc::new(Shape::new(2, 5, 7), layout).unwrap();
        let sh = d.shape();
        let mut x = vec![0.0f32; d.len()];
        let mut z = vec![f32::NAN; d.len()];
        for n in 0..2 {
            for c in 0..5 {
                for s in 0..7 {
                    let i = d.offset(n, c, s).unwrap();
                    x[i] = if c == 1 { 1e-30 * (s as f32 - 3.0) } else { s as f32 - 3.0 + c as f32 };
                    z[i] = (s as f32 - 2.5) * 1e6;
                }
            }
        }
        let gamma = [1.0, 1e36, 0.5, -1.0, 2.0];
        let beta = [0.5, -0.25, 0.0, 1.0, -1.0];
        let a = Affine::new(&gamma, &beta, 0.0);
        let (mean, var) = ([0.0, 0.0, 0.0, 0.0, 0.0], [1.0, 1e-60f64 as f32 + 1e-44, 2.0, 4.0, 0.25]);
        for k in Isa::available().filter_map(Kernels::new) {
            let mut plain = vec![f32::NAN; d.len()];
            k.forward_inference(&d, &x, &mut plain, &a, &mean, &var).unwrap();
            for (epi, zr) in [(Epilogue::Relu, None), (Epilogue::AddRelu(&z), Some(&z[..]))] {
                let mut y = vec![f32::NAN; d.len()];
                k.forward_inference_with(&d, &x, &mut y, &a, &mean, &var, epi).unwrap();
                for (i, (&p, &f)) in plain.iter().zip(&y).enumerate() {
                    let real =
                        (0..sh.n).any(|n| (0..5).any(|c| (0..7).any(|s| d.offset(n, c, s) == Some(i))));
                    let want = if !real {
                        p
                    } else {
                        let v = p + zr.map_or(0.0, |z| z[i]);
                        if 0.0 > v { 0.0 } else { v }
                    };
                    assert_eq!(f.to_bits(), want.to_bits(), "{} {layout:?} {epi:?} element {i}", k.isa());
                }
                let mut ym = vec![f32::NAN; d.len()];
                let (mut m, mut v) = ([0.0; 5], [0.0; 5]);
                k.forward_training(&d, &x, &mut ym, &a, &mut m, &mut v).unwrap();
                let mut yt = vec![f32::NAN; d.len()];
                k.forward_training_with(&d, &x, &mut yt, &a, &mut m, &mut v, epi).unwrap();
                assert_eq!(
                    yt.iter().map(|v| v.to_bits()).collect::<Vec<_>>(),
                    expected(
                        &Case { shape: sh, layout, x: x.clone(), gamma: None, beta: None, eps: 0.0 },
                        &ym,
                        zr
                    )
                    .iter()
                    .map(|v| v.to_bits())
                    .collect::<Vec<_>>(),
                    "{} {layout:?} {epi:?} training",
                    k.isa()
                );
            }
        }
    }
}

/// NaN propagates through ReLU, −0 stays −0, and the mask lets a NaN `y` through.
#[test]
fn nan_and_signed_zero() {
    let d = TensorDesc::new(Shape::new(1, 1, 40), bnorm::Layout::Nchw).unwrap();
    let mut x: Vec<f32> = (0..40).map(|i| i as f32 - 20.0).collect();
    x[5] = f32::NAN;
    let (scale, shift) = ([1.0f32], [0.0f32]);
    for k in Isa::available().filter_map(Kernels::new) {
        let mut y = vec![0.0; 40];
        k.channel_affine_with(&d, &x, &mut y, &scale, &shift, Epilogue::Relu).unwrap();
        assert!(y[5].is_nan(), "{}: NaN", k.isa());
        assert_eq!(y[20].to_bits(), 0, "{}: +0", k.isa());
        assert_eq!(y[0].to_bits(), 0, "{}: negative", k.isa());
        assert_eq!(y[30], 10.0);
        let z: Vec<f32> = (0..40).map(|i| if i == 21 { -1.0 } else { 0.0 }).collect();
        let mut y2 = vec![0.0; 40];
        k.channel_affine_with(&d, &x, &mut y2, &scale, &[-0.0], Epilogue::Relu).unwrap();
        // x = 0 gives 0·1 + (−0) = +0 (round to nearest): the sign of a zero sum follows IEEE.
        assert_eq!(y2[20].to_bits(), 0);
        k.channel_affine_with(&d, &x, &mut y2, &scale, &shift, Epilogue::AddRelu(&z)).unwrap();
        assert_eq!(y2[21], 0.0, "{}: 1 + (−1)", k.isa());
        let dy = vec![2.0f32; 40];
        let mut dz = vec![0.0; 40];
        k.relu_backward(&d, &y, &dy, &mut dz).unwrap();
        assert_eq!(dz[5], 2.0, "{}: NaN y lets dy through", k.isa());
        assert_eq!(dz[20].to_bits(), 0);
        assert_eq!(dz[30], 2.0);
    }
}

/// Bad epilogue input is an `Err` naming the argument and sizes, before any output is written.
#[test]
fn bad_input_writes_nothing() {
    let d = TensorDesc::new(Shape::new(2, 3, 5), bnorm::Layout::Nhwc).unwrap();
    let n = d.len();
    let x = vec![1.0f32; n];
    let (mean, var) = ([0.0f32; 3], [1.0f32; 3]);
    let a = Affine::default();
    let short = vec![0.0f32; n - 1];
    let want = Error::LengthMismatch { what: "z", expected: n, found: n - 1 };
    let mut y = vec![7.0f32; n];
    let (mut m, mut v) = ([9.0f32; 3], [9.0f32; 3]);
    let k = Kernels::detect();
    assert_eq!(
        k.forward_training_with(&d, &x, &mut y, &a, &mut m, &mut v, Epilogue::AddRelu(&short)),
        Err(want)
    );
    assert_eq!(
        k.forward_inference_with(&d, &x, &mut y, &a, &mean, &var, Epilogue::AddRelu(&short)),
        Err(want)
    );
    assert_eq!(k.channel_affine_with(&d, &x, &mut y, &mean, &var, Epilogue::AddRelu(&short)), Err(want));
    let mut xy = x.clone();
    assert_eq!(
        k.channel_affine_in_place_with(&d, &mut xy, &mean, &var, Epilogue::AddRelu(&short)),
        Err(want)
    );
    assert_eq!(
        k.forward_training_in_place_with(&d, &mut xy, &a, &mut m, &mut v, Epilogue::AddRelu(&short)),
        Err(want)
    );
    assert_eq!(
        k.forward_inference_in_place_with(&d, &mut xy, &a, &mean, &var, Epilogue::AddRelu(&short)),
        Err(want)
    );
    assert!(y.iter().all(|&v| v == 7.0) && xy == x && m == [9.0; 3] && v == [9.0; 3]);
    // Backward: a short y or dz, and an otherwise bad call, leave dx, dz and the gradients untouched.
    let saved = Saved::batch(&mean, &var);
    let dy = vec![1.0f32; n];
    let (mut dx, mut dz, mut dg) = (vec![7.0f32; n], vec![7.0f32; n], [7.0f32; 3]);
    let mut short_dz = vec![7.0f32; n - 1];
    let e = k.backward_with(
        &d,
        &x,
        &dy,
        &mut dx,
        &a,
        &saved,
        ParamGrads::none(),
        GradEpilogue::Relu { y: &short },
    );
    assert_eq!(e, Err(Error::LengthMismatch { what: "y", expected: n, found: n - 1 }));
    let ge = GradEpilogue::AddRelu { y: &x, dz: &mut short_dz };
    let e = k.backward_with(&d, &x, &dy, &mut dx, &a, &saved, ParamGrads::none(), ge);
    assert_eq!(e, Err(Error::LengthMismatch { what: "dz", expected: n, found: n - 1 }));
    // A bad variance with a valid epilogue: the mask must not have been written either.
    let bad_var = [1.0f32, -1.0, 1.0];
    let ge = GradEpilogue::AddRelu { y: &x, dz: &mut dz };
    let pg = ParamGrads { dgamma: Some(&mut dg), dbeta: None };
    let e = k.backward_with(&d, &x, &dy, &mut dx, &a, &Saved::global(&mean, &bad_var), pg, ge);
    assert!(matches!(e, Err(Error::InvalidVariance { channel: 1, .. })), "{e:?}");
    let mut dydx = vec![7.0f32; n];
    let ge = GradEpilogue::Relu { y: &x };
    let e = k.backward_in_place_with(
        &d,
        &x,
        &mut dydx,
        &a,
        &Saved::global(&mean, &bad_var),
        ParamGrads::none(),
        ge,
    );
    assert!(e.is_err());
    assert!(dx.iter().chain(&dz).chain(&dydx).chain(&dg).all(|&v| v == 7.0), "written before the error");
    let mut dz = vec![7.0f32; n];
    assert!(k.relu_backward(&d, &short, &dy, &mut dz).is_err());
    assert!(k.relu_backward(&d, &x, &dy, &mut short_dz).is_err());
    assert!(k.relu_backward_in_place(&d, &x, &mut short_dz).is_err());
    assert!(dz.iter().chain(&short_dz).all(|&v| v == 7.0));
}
