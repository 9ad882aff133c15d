//! Tensors large enough for the paths small property cases never reach: outputs of at least 8 MB
//! (non-temporal stores after an aligned head), training in several channel chunks, channel groups wider
//! than one scratch group. Every tier and layout, forward and backward, against the oracle, at an odd
//! output alignment.

mod common;

use bnorm::{Affine, Isa, Shape, TensorDesc};
use common::*;

fn check_large(shape: Shape, seed: u64) {
    for isa in Isa::ALL {
        let Some(k) = kernels_or_skip(isa, "large") else { continue };
        for layout in LAYOUTS {
            let case = gen_case(seed, shape, layout, 1e3);
            let d = TensorDesc::new(shape, layout).unwrap();
            let c = shape.c;
            let aff = Affine { gamma: case.gamma.as_deref(), beta: case.beta.as_deref(), eps: case.eps };
            let (mut m, mut v) = (vec![0.0; c], vec![0.0; c]);
            let mut yb = vec![f32::NAN; d.len() + 3];
            let y = &mut yb[3..];
            k.forward_training(&d, &case.x, y, &aff, &mut m, &mut v).unwrap();
            let ctx = |e: String| format!("{isa} {layout:?} {shape:?}: {e}");
            check_moments(&case, &m, &v).map_err(ctx).unwrap();
            check_outputs(&case, y, &training_norm(&case), true).map_err(ctx).unwrap();
            let mut xy = case.x.clone();
            let (mut m2, mut v2) = (vec![0.0; c], vec![0.0; c]);
            k.forward_training_in_place(&d, &mut xy, &aff, &mut m2, &mut v2).unwrap();
            assert!(
                xy.iter().zip(y.iter()).all(|(a, b)| a.to_bits() == b.to_bits()),
                "{isa} {layout:?} in place"
            );
            assert!(m2 == m && v2 == v);
            k.forward_inference(&d, &case.x, y, &aff, &m, &v).unwrap();
            let norm = norm_with(
                &case,
                m.iter().map(|&a| a as f64).collect(),
                v.iter().map(|&a| a as f64).collect(),
            );
            check_outputs(&case, y, &norm, false).map_err(ctx).unwrap();
            // Backward with the batch's statistics: several chunks, streamed dx after an aligned head.
            let dy = gen_dy(seed ^ 0xd1, shape, layout);
            let (mut dg, mut db) = (vec![0.0; c], vec![0.0; c]);
            let saved = bnorm::Saved::batch(&m, &v);
            k.backward(&d, &case.x, &dy, y, &aff, &saved, bnorm::ParamGrads::new(&mut dg, &mut db)).unwrap();
            let got = Grads { dx: y.to_vec(), dgamma: dg, dbeta: db };
            check_backward(&case, &dy, true, &m, &v, &got, true, false).map_err(ctx).unwrap();
            let mut dydx = dy.clone();
            k.backward_in_place(&d, &case.x, &mut dydx, &aff, &saved, bnorm::ParamGrads::none()).unwrap();
            assert!(
                dydx.iter().zip(y.iter()).all(|(a, b)| a.to_bits() == b.to_bits()),
                "{isa} {layout:?} backward in place"
            );
        }
    }
}

#[test]
#[cfg_attr(miri, ignore = "too large for miri")]
fn large_planes() {
    // 9.6 MB: streamed output; NCHW training in chunks of a few channels.
    check_large(Shape::new(2, 20, 60_000), 11);
}

#[test]
#[cfg_attr(miri, ignore = "too large for miri")]
fn wide_channels() {
    // C > GROUP: channels-last rows in two groups, blocked S = 1 rows with padding; 8.6 MB.
    check_large(Shape::new(4200, 517, 1), 12);
}

#[test]
#[cfg_attr(miri, ignore = "too large for miri")]
fn wide_rows_streamed_in_bands() {
    // Channels-last rows of 2048 channels, normalised four rows at a time with non-temporal stores
    // (8.4 MB), 1030 rows: bands and a remainder of two rows.
    check_large(Shape::new(1030, 2048, 1), 13);
}
