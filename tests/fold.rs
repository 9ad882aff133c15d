//! `fold_scale_shift`: the folded `(scale, shift)` against the centred inference pass it replaces, on
//! every tier and layout; its exact cases; its errors.
mod common;

use bnorm::{Affine, Error, Isa, Shape, TensorDesc};
use common::*;

/// The folded form `x·scale + shift` through `channel_affine` against `forward_inference` on the same
/// statistics: within `6U·(|x·scale| + |mean·scale| + |β|)` of each other (each form's roundings, bounded
/// term by term), on data whose offset reaches 10⁴·σ. Prints the largest difference seen, in U of that
/// magnitude, and the share of outputs that agree bit for bit (the README's "Folding" figures).
#[test]
fn folded_affine_matches_inference_within_bound() {
    // Under miri (about a thousand times slower) two small shapes and one offset.
    let shapes: &[(usize, usize, usize)] = if cfg!(miri) {
        &[(2, 5, 7), (3, 3, 1)]
    } else {
        &[(2, 5, 7), (1, 16, 9), (3, 3, 1), (2, 37, 13), (4, 8, 49)]
    };
    let offsets: &[f64] = if cfg!(miri) { &[1e2] } else { &[1.0, 1e2, 1e4] };
    let (mut worst, mut same, mut total) = (0.0f64, 0usize, 0usize);
    for isa in Isa::ALL {
        let Some(k) = kernels_or_skip(isa, "folded_affine_matches_inference_within_bound") else { continue };
        for (i, &(n, c, s)) in shapes.iter().enumerate() {
            for layout in LAYOUTS {
                for &max_offset in offsets {
                    let case = gen_case(91 + i as u64, Shape::new(n, c, s), layout, max_offset);
                    let d = TensorDesc::new(case.shape, layout).unwrap();
                    let aff =
                        Affine { gamma: case.gamma.as_deref(), beta: case.beta.as_deref(), eps: case.eps };
                    let (mut mean, mut var) = (vec![0.0; c], vec![0.0; c]);
                    k.moments(&d, &case.x, &mut mean, &mut var).unwrap();
                    let (mut scale, mut shift) = (vec![0.0; c], vec![0.0; c]);
                    bnorm::fold_scale_shift(&aff, &mean, &var, &mut scale, &mut shift).unwrap();
                    let (mut want, mut got) = (vec![0.0; d.len()], vec![0.0; d.len()]);
                    k.forward_inference(&d, &case.x, &mut want, &aff, &mean, &var).unwrap();
                    k.channel_affine(&d, &case.x, &mut got, &scale, &shift).unwrap();
                    for b in 0..n {
                        for ch in 0..c {
                            for sp in 0..s {
                                let at = oracle::offset(case.shape, layout, b, ch, sp);
                                let x = case.x[at] as f64;
                                let beta = case.beta.as_ref().map_or(0.0, |v| v[ch] as f64);
                                let sc = scale[ch] as f64;
                                let mag = (x * sc).abs() + (mean[ch] as f64 * sc).abs() + beta.abs();
                                let diff = (got[at] as f64 - want[at] as f64).abs();
                                assert!(
                                    diff <= 6.0 * U * mag,
                                    "{isa} {layout:?} {n}x{c}x{s} offset {max_offset}: y[{at}] folded {} vs \
                                     centred {} (magnitude {mag})",
                                    got[at],
                                    want[at]
                                );
                                if mag > 0.0 {
                                    worst = worst.max(diff / (U * mag));
                                }
                                same += (got[at].to_bits() == want[at].to_bits()) as usize;
                                total += 1;
                            }
                        }
                    }
                }
            }
        }
    }
    let share = 100.0 * same as f64 / total as f64;
    println!(
        "folded vs centred: largest difference {worst:.2} U of |x·scale| + |mean·scale| + |β|; {share:.1} % bit-identical"
    );
}

/// The scale is the kernels' (γ times the correctly rounded 1/√(var + ε)); a channel without spread folds
/// to scale 0 and shift β; γ and β default to 1 and 0.
#[test]
fn folded_values_exact_cases() {
    let (gamma, beta) = ([3.0f32, -0.5, 7.0], [1.25f32, 2.0, -4.0]);
    let (mean, var) = ([2.0f32, 10.0, -1.0], [0.25f32, 3.0, 0.0]);
    let (mut scale, mut shift) = ([0.0f32; 3], [0.0f32; 3]);
    bnorm::fold_scale_shift(&Affine::new(&gamma, &beta, 0.0), &mean, &var, &mut scale, &mut shift).unwrap();
    let inv1 = 1.0 / 3.0f32.sqrt();
    assert_eq!(scale, [6.0, -0.5 * inv1, 0.0]);
    assert_eq!(shift, [1.25 - 12.0, 2.0 - 10.0 * (-0.5 * inv1), -4.0]);
    let aff = Affine { gamma: None, beta: None, eps: 0.75 };
    bnorm::fold_scale_shift(&aff, &mean, &var, &mut scale, &mut shift).unwrap();
    assert_eq!(scale[0], 1.0);
    assert_eq!(shift[0], -2.0);
}

/// Bad input: an `Err` naming the sizes (or the channel), and neither output touched.
#[test]
fn fold_errors_leave_outputs_untouched() {
    let two = [1.0f32; 2];
    let big = [1e30f32; 2];
    let cases: [(Affine<'_>, usize, usize, usize, Error); 6] = [
        (
            Affine::new(&two[..1], &two, 0.0),
            2,
            2,
            2,
            Error::LengthMismatch { what: "gamma", expected: 2, found: 1 },
        ),
        (Affine::default(), 1, 2, 2, Error::LengthMismatch { what: "var", expected: 2, found: 1 }),
        (Affine::default(), 2, 3, 2, Error::LengthMismatch { what: "scale", expected: 2, found: 3 }),
        (Affine::default(), 2, 2, 0, Error::LengthMismatch { what: "shift", expected: 2, found: 0 }),
        (Affine { gamma: None, beta: None, eps: -1.0 }, 2, 2, 2, Error::InvalidEpsilon { eps: -1.0 }),
        // 1e30/√(1e-30) = 1e45 overflows f32.
        (Affine { gamma: Some(&big), beta: None, eps: 0.0 }, 2, 2, 2, Error::ScaleOverflow { channel: 0 }),
    ];
    for (aff, vl, sl, hl, want) in cases {
        let var =
            if want == (Error::ScaleOverflow { channel: 0 }) { vec![1e-30f32; vl] } else { vec![1.0; vl] };
        let (mut scale, mut shift) = (vec![f32::MIN; sl], vec![f32::MIN; hl]);
        let e = bnorm::fold_scale_shift(&aff, &two, &var, &mut scale, &mut shift).unwrap_err();
        assert_eq!(e, want);
        assert!(!e.to_string().is_empty());
        assert!(scale.iter().chain(&shift).all(|&v| v == f32::MIN), "{want:?}: an output was written");
    }
    let (mut scale, mut shift) = ([0.0f32; 2], [0.0f32; 2]);
    let e = bnorm::fold_scale_shift(&Affine::default(), &two, &[1.0, f32::NAN], &mut scale, &mut shift)
        .unwrap_err();
    assert!(matches!(e, Error::InvalidVariance { channel: 1, .. }));
    assert_eq!((scale, shift), ([0.0; 2], [0.0; 2]));
}
