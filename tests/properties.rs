//! Property tests: every tier × layout × operation against the f64 oracle, on random shapes (channels not
//! a multiple of any block, S = 1, N = 1, sizes around vector widths, channel groups crossed), data at odd
//! alignments, per-channel offsets up to 1e6·σ, NaN in padding lanes. In-place calls must give the same
//! bits as out-of-place ones. `PROPTEST_CASES` raises the number of cases.

mod common;

use bnorm::{Affine, Isa, Kernels, Layout, Shape, TensorDesc};
use common::*;
use proptest::prelude::*;

fn dim(max: usize) -> impl Strategy<Value = usize> {
    prop_oneof![
        1..=max,
        prop::sample::select(vec![1, 2, 3, 4, 5, 7, 8, 9, 15, 16, 17, 31, 32, 33, 48, 49, 63, 64, 65]),
    ]
}

fn shape() -> impl Strategy<Value = Shape> {
    if cfg!(miri) {
        // Miri interprets every instruction: small tensors, still around the vector widths.
        return (1..=2usize, 1..=18usize, 1..=18usize).prop_map(|(n, c, s)| Shape::new(n, c, s)).boxed();
    }
    prop_oneof![
        6 => (1..=4usize, dim(40), dim(70)).prop_map(|(n, c, s)| Shape::new(n, c, s)),
        1 => (1..=3usize, 250..=300usize, 1..=3usize).prop_map(|(n, c, s)| Shape::new(n, c, s)),
        1 => (1..=2usize, 1..=3usize, 500..=3000usize).prop_map(|(n, c, s)| Shape::new(n, c, s)),
    ]
    .boxed()
}

/// A case: shape, layout, seed, maximum offset ratio, and two element alignments.
fn case() -> impl Strategy<Value = (Case, usize, usize)> {
    (
        shape(),
        0..LAYOUTS.len(),
        any::<u64>(),
        prop::sample::select(vec![1.0, 1e2, 1e4, 1e6]),
        0..17usize,
        0..17usize,
    )
        .prop_map(|(sh, l, seed, off, ax, ay)| (gen_case(seed, sh, LAYOUTS[l], off), ax, ay))
}

fn config() -> ProptestConfig {
    if cfg!(miri) { ProptestConfig::with_cases(4) } else { ProptestConfig::default() }
}

fn desc(case: &Case) -> TensorDesc {
    TensorDesc::new(case.shape, case.layout).unwrap()
}

fn affine(case: &Case) -> Affine<'_> {
    Affine { gamma: case.gamma.as_deref(), beta: case.beta.as_deref(), eps: case.eps }
}

fn run_moments(k: &Kernels, case: &Case, ax: usize) -> Result<(Vec<f32>, Vec<f32>), String> {
    let d = desc(case);
    let xb = at_offset(&case.x, ax, 7.0);
    let (mut mean, mut var) = (vec![0.0; case.shape.c], vec![0.0; case.shape.c]);
    k.moments(&d, &xb[ax..ax + d.len()], &mut mean, &mut var).map_err(|e| e.to_string())?;
    Ok((mean, var))
}

fn prop_moments(isa: Isa, (case, ax, _): (Case, usize, usize)) -> Result<(), TestCaseError> {
    let Some(k) = kernels_or_skip(isa, "moments") else { return Ok(()) };
    let (mean, var) = run_moments(&k, &case, ax).map_err(TestCaseError::fail)?;
    check_moments(&case, &mean, &var)
        .map_err(|e| TestCaseError::fail(format!("{isa} {:?}: {e}", case.layout)))
}

fn prop_training(isa: Isa, (case, ax, ay): (Case, usize, usize)) -> Result<(), TestCaseError> {
    let Some(k) = kernels_or_skip(isa, "forward_training") else { return Ok(()) };
    let d = desc(&case);
    let c = case.shape.c;
    let xb = at_offset(&case.x, ax, 7.0);
    let mut yb = at_offset(&vec![f32::NAN; d.len()], ay, 3.0);
    let (mut mean, mut var) = (vec![0.0; c], vec![0.0; c]);
    k.forward_training(
        &d,
        &xb[ax..ax + d.len()],
        &mut yb[ay..ay + d.len()],
        &affine(&case),
        &mut mean,
        &mut var,
    )
    .unwrap();
    let y = &yb[ay..ay + d.len()];
    let fail = |e: String| TestCaseError::fail(format!("{isa} {:?}: {e}", case.layout));
    check_moments(&case, &mean, &var).map_err(fail)?;
    check_outputs(&case, y, &training_norm(&case), true).map_err(fail)?;
    prop_assert!(yb[..ay].iter().chain(&yb[ay + d.len()..]).all(|&v| v == 3.0), "wrote outside y");
    // In place: the same bits, statistics included.
    let mut xy = at_offset(&case.x, ay, 0.0);
    let (mut m2, mut v2) = (vec![0.0; c], vec![0.0; c]);
    k.forward_training_in_place(&d, &mut xy[ay..ay + d.len()], &affine(&case), &mut m2, &mut v2).unwrap();
    prop_assert!(bits_eq(&xy[ay..ay + d.len()], y), "in-place output differs");
    prop_assert!(bits_eq(&m2, &mean) && bits_eq(&v2, &var), "in-place statistics differ");
    Ok(())
}

fn prop_inference(isa: Isa, (case, ax, ay): (Case, usize, usize)) -> Result<(), TestCaseError> {
    let Some(k) = kernels_or_skip(isa, "forward_inference") else { return Ok(()) };
    let d = desc(&case);
    // Running statistics near (but not equal to) the batch's, rounded to f32.
    let (rm, rv) = common::oracle::moments(case.shape, case.layout, &case.x);
    let mean: Vec<f32> = rm.iter().map(|&m| (m * 1.01 + 0.001) as f32).collect();
    let var: Vec<f32> = rv.iter().map(|&v| (v * 0.9) as f32).collect();
    let xb = at_offset(&case.x, ax, 7.0);
    let mut yb = at_offset(&vec![f32::NAN; d.len()], ay, 3.0);
    k.forward_inference(&d, &xb[ax..ax + d.len()], &mut yb[ay..ay + d.len()], &affine(&case), &mean, &var)
        .unwrap();
    let y = &yb[ay..ay + d.len()];
    let norm =
        norm_with(&case, mean.iter().map(|&v| v as f64).collect(), var.iter().map(|&v| v as f64).collect());
    check_outputs(&case, y, &norm, false)
        .map_err(|e| TestCaseError::fail(format!("{isa} {:?}: {e}", case.layout)))?;
    prop_assert!(yb[..ay].iter().chain(&yb[ay + d.len()..]).all(|&v| v == 3.0), "wrote outside y");
    let mut xy = at_offset(&case.x, ay, 0.0);
    k.forward_inference_in_place(&d, &mut xy[ay..ay + d.len()], &affine(&case), &mean, &var).unwrap();
    prop_assert!(bits_eq(&xy[ay..ay + d.len()], y), "in-place output differs");
    Ok(())
}

fn prop_affine(isa: Isa, (case, ax, ay): (Case, usize, usize)) -> Result<(), TestCaseError> {
    let Some(k) = kernels_or_skip(isa, "channel_affine") else { return Ok(()) };
    let d = desc(&case);
    let mut r = Rng(case.x.len() as u64);
    let scale: Vec<f32> = (0..case.shape.c).map(|_| r.range(-3.0, 3.0) as f32).collect();
    let shift: Vec<f32> = (0..case.shape.c).map(|_| r.range(-3.0, 3.0) as f32).collect();
    let xb = at_offset(&case.x, ax, 7.0);
    let mut yb = at_offset(&vec![f32::NAN; d.len()], ay, 3.0);
    k.channel_affine(&d, &xb[ax..ax + d.len()], &mut yb[ay..ay + d.len()], &scale, &shift).unwrap();
    let y = &yb[ay..ay + d.len()];
    check_affine(&case, y, &scale, &shift)
        .map_err(|e| TestCaseError::fail(format!("{isa} {:?}: {e}", case.layout)))?;
    let mut xy = at_offset(&case.x, ay, 0.0);
    k.channel_affine_in_place(&d, &mut xy[ay..ay + d.len()], &scale, &shift).unwrap();
    prop_assert!(bits_eq(&xy[ay..ay + d.len()], y), "in-place output differs");
    Ok(())
}

fn bits_eq(a: &[f32], b: &[f32]) -> bool {
    a.len() == b.len() && a.iter().zip(b).all(|(x, y)| x.to_bits() == y.to_bits())
}

macro_rules! tier_tests {
    ($($name:ident => $isa:expr),* $(,)?) => {$(
        mod $name {
            use super::*;
            proptest! {
                #![proptest_config(config())]
                #[test]
                fn moments(c in case()) { prop_moments($isa, c)?; }
                #[test]
                fn forward_training(c in case()) { prop_training($isa, c)?; }
                #[test]
                fn forward_inference(c in case()) { prop_inference($isa, c)?; }
                #[test]
                fn channel_affine(c in case()) { prop_affine($isa, c)?; }
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

proptest! {
    #![proptest_config(config())]
    /// Every available tier agrees with the scalar tier on identical input, statistics and outputs.
    #[test]
    fn tiers_agree((case, ax, _) in case()) {
        let scalar = Kernels::new(Isa::Scalar).unwrap();
        let d = desc(&case);
        let c = case.shape.c;
        let mut base = (vec![0.0; c], vec![0.0; c], vec![0.0; d.len()]);
        scalar.forward_training(&d, &case.x, &mut base.2, &affine(&case), &mut base.0, &mut base.1).unwrap();
        let (rm, rv) = common::oracle::moments(case.shape, case.layout, &case.x);
        for k in Isa::available().filter_map(Kernels::new) {
            let (m, v) = run_moments(&k, &case, ax).map_err(TestCaseError::fail)?;
            let mut out = (vec![0.0; c], vec![0.0; c], vec![0.0; d.len()]);
            k.forward_training(&d, &case.x, &mut out.2, &affine(&case), &mut out.0, &mut out.1).unwrap();
            prop_assert!(bits_eq(&m, &out.0) && bits_eq(&v, &out.1), "{}: moments differ from training's", k.isa());
            for ch in 0..c {
                // Both are within the oracle tolerance of the truth, so within twice it of each other.
                let tol_m = 2.0 * (2.0 * U * rm[ch].abs() + MEAN_SIGMA * U * rv[ch].sqrt());
                let tol_v = 2.0 * VAR_REL * U * rv[ch];
                prop_assert!(((m[ch] - base.0[ch]) as f64).abs() <= tol_m, "{} mean of channel {ch}", k.isa());
                prop_assert!(((v[ch] - base.1[ch]) as f64).abs() <= tol_v, "{} var of channel {ch}", k.isa());
            }
            let norm = training_norm(&case);
            check_outputs(&case, &out.2, &norm, true).map_err(|e| TestCaseError::fail(format!("{}: {e}", k.isa())))?;
        }
    }
}

/// The free functions run the detected tier and give its bits.
#[test]
fn free_functions_use_detected_tier() {
    let case = gen_case(7, Shape::new(3, 19, 23), Layout::Nhwc, 1e2);
    let d = desc(&case);
    let k = Kernels::detect();
    assert_eq!(k.isa(), Isa::detect());
    let (mut m1, mut v1, mut y1) = (vec![0.0; 19], vec![0.0; 19], vec![0.0; d.len()]);
    let (mut m2, mut v2, mut y2) = (vec![0.0; 19], vec![0.0; 19], vec![0.0; d.len()]);
    bnorm::forward_training(&d, &case.x, &mut y1, &affine(&case), &mut m1, &mut v1).unwrap();
    k.forward_training(&d, &case.x, &mut y2, &affine(&case), &mut m2, &mut v2).unwrap();
    assert!(bits_eq(&y1, &y2) && bits_eq(&m1, &m2) && bits_eq(&v1, &v2));
    check_outputs(&case, &y1, &training_norm(&case), true).unwrap();
}
