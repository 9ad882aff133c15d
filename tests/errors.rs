//! Bad input: every case DESIGN.md lists returns its `Err`, with a message naming the sizes, before
//! anything is written — the outputs are checked untouched — on every tier.

mod common;

use bnorm::{Affine, Error, Isa, Kernels, Layout, Momentum, Shape, TensorDesc};
use common::kernels_or_skip;

const SENTINEL: f32 = -12345.0;

fn untouched(v: &[f32]) -> bool {
    v.iter().all(|&x| x == SENTINEL)
}

#[test]
fn descriptor_errors() {
    let e = TensorDesc::new(Shape::new(0, 3, 4), Layout::Nchw).unwrap_err();
    assert_eq!(e, Error::ZeroDimension { n: 0, c: 3, spatial: 4 });
    assert!(e.to_string().contains("n=0, c=3, spatial=4"), "{e}");
    assert!(TensorDesc::new(Shape::new(2, 0, 4), Layout::Nhwc).is_err());
    assert!(TensorDesc::new(Shape::new(2, 3, 0), Layout::Blocked { block: 8 }).is_err());
    for block in [0, 1, 2, 3, 5, 12, 32, usize::MAX] {
        let e = TensorDesc::new(Shape::new(1, 4, 4), Layout::Blocked { block }).unwrap_err();
        assert_eq!(e, Error::InvalidBlock { block });
        assert!(e.to_string().contains(&block.to_string()));
    }
    let big = usize::MAX / 2;
    for (sh, l) in [
        (Shape::new(big, 3, 1), Layout::Nchw),
        (Shape::new(1, big, 3), Layout::Nhwc),
        (Shape::new(1, usize::MAX - 2, 1), Layout::Blocked { block: 16 }),
        (Shape::nchw(1, 1, usize::MAX, 2), Layout::Nchw),
        (Shape::new(1, 1, isize::MAX as usize / 4 + 1), Layout::Nchw),
    ] {
        let e = TensorDesc::new(sh, l).unwrap_err();
        assert!(matches!(e, Error::TooLarge { .. }), "{sh:?} {l:?}: {e:?}");
        assert!(e.to_string().contains(&format!("c={}", sh.c)), "{e}");
    }
    // The largest accepted tensor is exactly isize::MAX bytes at most.
    assert!(TensorDesc::new(Shape::new(1, 1, isize::MAX as usize / 4), Layout::Nchw).is_ok());
    let d = TensorDesc::new(Shape::new(2, 3, 4), Layout::Nchw).unwrap();
    assert_eq!(d.offset(2, 0, 0), None);
    assert_eq!(d.offset(0, 0, 4), None);
    assert_eq!(d.offset(usize::MAX, usize::MAX, usize::MAX), None);
}

/// Every operation with each of its arguments wrong, on every tier.
#[test]
fn operation_errors_leave_outputs_untouched() {
    for isa in Isa::ALL {
        let Some(k) = kernels_or_skip(isa, "operation_errors_leave_outputs_untouched") else { continue };
        for layout in common::LAYOUTS {
            check_operations(k, layout);
        }
    }
}

fn check_operations(k: Kernels, layout: Layout) {
    let sh = Shape::new(2, 5, 7);
    let d = TensorDesc::new(sh, layout).unwrap();
    let len = d.len();
    let x = vec![1.0f32; len + 1];
    let good_c = [1.0f32; 5];
    let ok_aff = Affine::new(&good_c, &good_c, 1e-5);
    let s = || vec![SENTINEL; len + 1];
    let sc = |n: usize| vec![SENTINEL; n];

    // moments: x, mean, var lengths.
    for (xl, ml, vl, what, exp, found) in [
        (len - 1, 5, 5, "x", len, len - 1),
        (len + 1, 5, 5, "x", len, len + 1),
        (len, 4, 5, "mean", 5, 4),
        (len, 5, 6, "var", 5, 6),
    ] {
        let (mut m, mut v) = (sc(ml), sc(vl));
        let e = k.moments(&d, &x[..xl], &mut m, &mut v).unwrap_err();
        assert_eq!(e, Error::LengthMismatch { what, expected: exp, found }, "{layout:?}");
        assert!(
            e.to_string().contains(&format!("{found} elements")) && e.to_string().contains(&exp.to_string())
        );
        assert!(untouched(&m) && untouched(&v));
    }

    // forward_training: every slice, gamma, beta, eps.
    let bad_c = [1.0f32; 4];
    let affs: [(Affine<'_>, Error); 6] = [
        (Affine::new(&bad_c, &good_c, 1e-5), Error::LengthMismatch { what: "gamma", expected: 5, found: 4 }),
        (Affine::new(&good_c, &bad_c, 1e-5), Error::LengthMismatch { what: "beta", expected: 5, found: 4 }),
        (Affine { gamma: None, beta: None, eps: -1e-5 }, Error::InvalidEpsilon { eps: -1e-5 }),
        (
            Affine { gamma: None, beta: None, eps: f32::INFINITY },
            Error::InvalidEpsilon { eps: f32::INFINITY },
        ),
        (
            Affine { gamma: None, beta: None, eps: f32::NEG_INFINITY },
            Error::InvalidEpsilon { eps: f32::NEG_INFINITY },
        ),
        (
            Affine { gamma: Some(&bad_c), beta: None, eps: 0.0 },
            Error::LengthMismatch { what: "gamma", expected: 5, found: 4 },
        ),
    ];
    for (aff, want) in &affs {
        let (mut y, mut m, mut v) = (s(), sc(5), sc(5));
        let e = k.forward_training(&d, &x[..len], &mut y[..len], aff, &mut m, &mut v).unwrap_err();
        assert_eq!(&e, want);
        assert!(untouched(&y) && untouched(&m) && untouched(&v));
        let mut xy = s();
        let e = k.forward_training_in_place(&d, &mut xy[..len], aff, &mut m, &mut v).unwrap_err();
        assert_eq!(&e, want);
        assert!(untouched(&xy) && untouched(&m) && untouched(&v));
    }
    let nan_eps = Affine { gamma: None, beta: None, eps: f32::NAN };
    let (mut y, mut m, mut v) = (s(), sc(5), sc(5));
    assert!(matches!(
        k.forward_training(&d, &x[..len], &mut y[..len], &nan_eps, &mut m, &mut v),
        Err(Error::InvalidEpsilon { .. })
    ));
    assert!(untouched(&y) && untouched(&m) && untouched(&v));
    for (xl, yl, ml, vl) in [(len - 1, len, 5, 5), (len, len + 1, 5, 5), (len, len, 0, 5), (len, len, 5, 3)] {
        let (mut y, mut m, mut v) = (s(), sc(ml), sc(vl));
        let e = k.forward_training(&d, &x[..xl], &mut y[..yl], &ok_aff, &mut m, &mut v).unwrap_err();
        assert!(matches!(e, Error::LengthMismatch { .. }), "{e:?}");
        assert!(untouched(&y) && untouched(&m) && untouched(&v));
    }
    let (mut xy, mut m, mut v) = (s(), sc(5), sc(5));
    let e = k.forward_training_in_place(&d, &mut xy[..len - 3], &ok_aff, &mut m, &mut v).unwrap_err();
    assert_eq!(e, Error::LengthMismatch { what: "xy", expected: len, found: len - 3 });
    assert!(untouched(&xy) && untouched(&m) && untouched(&v));

    // forward_inference: negative or NaN variance, lengths, eps.
    let mean = [0.0f32; 5];
    for (var, ch) in [
        ([1.0, 1.0, -1e-30, 1.0, 1.0], 2),
        ([f32::NAN, 1.0, 1.0, 1.0, 1.0], 0),
        ([1.0, 1.0, 1.0, 1.0, -1.0], 4),
    ] {
        let mut y = s();
        let e = k.forward_inference(&d, &x[..len], &mut y[..len], &ok_aff, &mean, &var).unwrap_err();
        assert!(matches!(e, Error::InvalidVariance { channel, .. } if channel == ch), "{e:?}");
        assert!(e.to_string().contains(&format!("channel {ch}")));
        assert!(untouched(&y));
        let mut xy = s();
        assert!(k.forward_inference_in_place(&d, &mut xy[..len], &ok_aff, &mean, &var).is_err());
        assert!(untouched(&xy));
    }
    let var = [1.0f32; 5];
    for (xl, yl, ml, vl) in [(len + 1, len, 5, 5), (len, len - 1, 5, 5), (len, len, 6, 5), (len, len, 5, 4)] {
        let (bm, bv) = (vec![0.0f32; ml], vec![1.0f32; vl]);
        let mut y = s();
        let e = k.forward_inference(&d, &x[..xl], &mut y[..yl], &ok_aff, &bm, &bv);
        assert!(matches!(e, Err(Error::LengthMismatch { .. })), "{e:?}");
        assert!(untouched(&y));
    }
    for (aff, _) in &affs {
        let mut y = s();
        assert!(k.forward_inference(&d, &x[..len], &mut y[..len], aff, &mean, &var).is_err());
        assert!(untouched(&y));
    }

    // channel_affine: scale, shift, x, y lengths.
    for (xl, yl, scl, shl) in [(len - 1, len, 5, 5), (len, len + 1, 5, 5), (len, len, 4, 5), (len, len, 5, 6)]
    {
        let scale = vec![1.0f32; scl];
        let shift = vec![1.0f32; shl];
        let mut y = s();
        let e = k.channel_affine(&d, &x[..xl], &mut y[..yl], &scale, &shift).unwrap_err();
        assert!(matches!(e, Error::LengthMismatch { .. }), "{e:?}");
        assert!(untouched(&y));
        if xl != len || scl != 5 || shl != 5 {
            let mut xy = s();
            let e = k.channel_affine_in_place(&d, &mut xy[..xl], &scale, &shift).unwrap_err();
            assert!(matches!(e, Error::LengthMismatch { .. }), "{e:?}");
            assert!(untouched(&xy));
        }
    }
}

#[test]
fn running_stats_errors_leave_outputs_untouched() {
    let one = [1.0f32; 3];
    let exp = Momentum::Exponential;
    // (running_mean, running_var, mean, var lengths; N; momentum) on 3 channels, S = 1.
    type Args = (usize, usize, usize, usize, usize, Momentum);
    let cases: [(Args, Error); 10] = [
        ((2, 3, 3, 3, 4, exp(0.1)), Error::LengthMismatch { what: "running_mean", expected: 3, found: 2 }),
        ((3, 2, 3, 3, 4, exp(0.1)), Error::LengthMismatch { what: "running_var", expected: 3, found: 2 }),
        ((3, 3, 1, 3, 4, exp(0.1)), Error::LengthMismatch { what: "mean", expected: 3, found: 1 }),
        ((3, 3, 3, 0, 4, exp(0.1)), Error::LengthMismatch { what: "var", expected: 3, found: 0 }),
        ((3, 3, 3, 3, 1, exp(0.1)), Error::CountTooSmall { count: 1 }),
        ((3, 3, 3, 3, 4, exp(-0.1)), Error::InvalidMomentum { momentum: -0.1 }),
        ((3, 3, 3, 3, 4, exp(1.5)), Error::InvalidMomentum { momentum: 1.5 }),
        ((3, 3, 3, 3, 4, exp(f32::INFINITY)), Error::InvalidMomentum { momentum: f32::INFINITY }),
        ((3, 3, 3, 3, 4, Momentum::CumulativeAverage { batches: 0 }), Error::NoBatches),
        ((3, 3, 3, 3, 1, Momentum::CumulativeAverage { batches: 1 }), Error::CountTooSmall { count: 1 }),
    ];
    for ((rml, rvl, ml, vl, n, mom), want) in cases {
        let d = TensorDesc::new(Shape::new(n, 3, 1), Layout::Nhwc).unwrap();
        let (mut rm, mut rv) = (vec![SENTINEL; rml], vec![SENTINEL; rvl]);
        let e = bnorm::update_running_stats(&d, &mut rm, &mut rv, &one[..ml], &one[..vl], mom).unwrap_err();
        assert_eq!(e, want);
        assert!(!e.to_string().is_empty());
        assert!(untouched(&rm) && untouched(&rv));
    }
    let d = TensorDesc::new(Shape::new(2, 3, 2), Layout::Nchw).unwrap();
    let (mut rm, mut rv) = (vec![SENTINEL; 3], vec![SENTINEL; 3]);
    let e = bnorm::update_running_stats(&d, &mut rm, &mut rv, &one, &one, exp(f32::NAN)).unwrap_err();
    assert!(matches!(e, Error::InvalidMomentum { .. }));
    assert!(untouched(&rm) && untouched(&rv));
    // The message names the count the descriptor gives.
    let d = TensorDesc::new(Shape::new(1, 3, 1), Layout::Nchw).unwrap();
    let e = bnorm::update_running_stats(&d, &mut rm, &mut rv, &one, &one, exp(0.1)).unwrap_err();
    assert!(e.to_string().contains("N·S = 1"), "{e}");
}

mod random_arguments {
    //! Every public function driven with random sizes and parameters, right and wrong: a call is `Ok`
    //! exactly when an independent reading of the rules says the arguments are valid, an `Err` leaves
    //! every output untouched, and nothing panics.
    use super::*;
    use proptest::prelude::*;

    fn layout() -> impl Strategy<Value = Layout> {
        prop_oneof![
            Just(Layout::Nchw),
            Just(Layout::Nhwc),
            prop::sample::select(vec![0usize, 1, 2, 3, 4, 5, 8, 12, 16, 32])
                .prop_map(|block| Layout::Blocked { block }),
        ]
    }

    fn float() -> impl Strategy<Value = f32> {
        prop_oneof![
            4 => -2.0f32..2.0,
            1 => prop::sample::select(vec![0.0, -0.0, 1e-5, -1e-5, f32::NAN, f32::INFINITY, f32::NEG_INFINITY, 1.0, 1.5, f32::MAX]),
        ]
    }

    /// A length near `want`: usually right, sometimes off by a few.
    fn near(want: usize, delta: i64) -> usize {
        (want as i64 + delta).max(0) as usize
    }

    #[derive(Debug, Clone)]
    struct Args {
        n: usize,
        c: usize,
        s: usize,
        layout: Layout,
        deltas: [i64; 8],
        eps: f32,
        var_value: f32,
        momentum: f32,
        count: usize,
    }

    fn args() -> impl Strategy<Value = Args> {
        let delta = prop_oneof![6 => Just(0i64), 1 => -3i64..=3];
        (
            0..4usize,
            0..20usize,
            0..9usize,
            layout(),
            [
                delta.clone(),
                delta.clone(),
                delta.clone(),
                delta.clone(),
                delta.clone(),
                delta.clone(),
                delta.clone(),
                delta,
            ],
            float(),
            float(),
            float(),
            0..4usize,
        )
            .prop_map(|(n, c, s, layout, deltas, eps, var_value, momentum, count)| Args {
                n,
                c,
                s,
                layout,
                deltas,
                eps,
                var_value,
                momentum,
                count,
            })
    }

    fn config() -> ProptestConfig {
        if cfg!(miri) { ProptestConfig::with_cases(8) } else { ProptestConfig::with_cases(512) }
    }

    proptest! {
        #![proptest_config(config())]
        #[test]
        fn random_arguments_never_panic_and_err_touches_nothing(a in args()) {
            let shape = Shape::new(a.n, a.c, a.s);
            let block_ok = match a.layout { Layout::Blocked { block } => matches!(block, 4 | 8 | 16), _ => true };
            let desc = TensorDesc::new(shape, a.layout);
            prop_assert_eq!(desc.is_ok(), a.n > 0 && a.c > 0 && a.s > 0 && block_ok);
            let Ok(d) = desc else { return Ok(()) };
            let len = common::oracle::len(shape, a.layout);
            prop_assert_eq!(d.len(), len);
            let [dx, dy, dm, dv, dg, db, dsc, dsh] = a.deltas;
            let x = vec![0.5f32; near(len, dx)];
            let c = a.c;
            let gamma = vec![1.0f32; near(c, dg)];
            let beta = vec![0.0f32; near(c, db)];
            let aff = Affine { gamma: Some(&gamma), beta: Some(&beta), eps: a.eps };
            let eps_ok = a.eps.is_finite() && a.eps >= 0.0;
            let aff_ok = gamma.len() == c && beta.len() == c && eps_ok;
            for isa in Isa::available() {
                let k = Kernels::new(isa).unwrap();
                // moments
                let (mut m, mut v) = (vec![SENTINEL; near(c, dm)], vec![SENTINEL; near(c, dv)]);
                let ok = x.len() == len && m.len() == c && v.len() == c;
                let r = k.moments(&d, &x, &mut m, &mut v);
                prop_assert_eq!(r.is_ok(), ok, "moments {:?}", r);
                if !ok { prop_assert!(untouched(&m) && untouched(&v)); }
                // training, out of place and in place
                let mut y = vec![SENTINEL; near(len, dy)];
                let (mut m, mut v) = (vec![SENTINEL; near(c, dm)], vec![SENTINEL; near(c, dv)]);
                let ok = x.len() == len && y.len() == len && m.len() == c && v.len() == c && aff_ok;
                let r = k.forward_training(&d, &x, &mut y, &aff, &mut m, &mut v);
                prop_assert_eq!(r.is_ok(), ok, "training {:?}", r);
                if !ok { prop_assert!(untouched(&y) && untouched(&m) && untouched(&v)); }
                let mut xy = vec![SENTINEL; near(len, dx)];
                let (mut m, mut v) = (vec![SENTINEL; near(c, dm)], vec![SENTINEL; near(c, dv)]);
                let ok = xy.len() == len && m.len() == c && v.len() == c && aff_ok;
                let r = k.forward_training_in_place(&d, &mut xy, &aff, &mut m, &mut v);
                prop_assert_eq!(r.is_ok(), ok, "training in place {:?}", r);
                if !ok { prop_assert!(untouched(&xy) && untouched(&m) && untouched(&v)); }
                // inference, with one variance of the random value
                let mean = vec![0.0f32; near(c, dm)];
                let mut var = vec![1.0f32; near(c, dv)];
                if let Some(first) = var.first_mut() { *first = a.var_value; }
                let var_ok = var.iter().all(|v| *v >= 0.0);
                let mut y = vec![SENTINEL; near(len, dy)];
                let ok = x.len() == len && y.len() == len && mean.len() == c && var.len() == c && var_ok && aff_ok;
                let r = k.forward_inference(&d, &x, &mut y, &aff, &mean, &var);
                prop_assert_eq!(r.is_ok(), ok, "inference {:?}", r);
                if !ok { prop_assert!(untouched(&y)); }
                let mut xy = vec![SENTINEL; near(len, dx)];
                let ok = xy.len() == len && mean.len() == c && var.len() == c && var_ok && aff_ok;
                let r = k.forward_inference_in_place(&d, &mut xy, &aff, &mean, &var);
                prop_assert_eq!(r.is_ok(), ok, "inference in place {:?}", r);
                if !ok { prop_assert!(untouched(&xy)); }
                // affine
                let scale = vec![2.0f32; near(c, dsc)];
                let shift = vec![1.0f32; near(c, dsh)];
                let mut y = vec![SENTINEL; near(len, dy)];
                let ok = x.len() == len && y.len() == len && scale.len() == c && shift.len() == c;
                let r = k.channel_affine(&d, &x, &mut y, &scale, &shift);
                prop_assert_eq!(r.is_ok(), ok, "affine {:?}", r);
                if !ok { prop_assert!(untouched(&y)); }
                let mut xy = vec![SENTINEL; near(len, dx)];
                let ok = xy.len() == len && scale.len() == c && shift.len() == c;
                let r = k.channel_affine_in_place(&d, &mut xy, &scale, &shift);
                prop_assert_eq!(r.is_ok(), ok, "affine in place {:?}", r);
                if !ok { prop_assert!(untouched(&xy)); }
            }
            // running statistics
            let mut rm = vec![SENTINEL; c];
            let mut rv = vec![SENTINEL; near(c, dv)];
            let (mean, var) = (vec![0.0f32; near(c, dm)], vec![1.0f32; near(c, dg)]);
            // `count` picks the momentum: exponential, or a cumulative average over 0 (invalid) to 2 batches.
            let (mom, mom_ok) = match a.count {
                0 => (Momentum::Exponential(a.momentum), (0.0..=1.0).contains(&a.momentum)),
                k => (Momentum::CumulativeAverage { batches: k as u64 - 1 }, k > 1),
            };
            let ok = rv.len() == c && mean.len() == c && var.len() == c && a.n * a.s >= 2 && mom_ok;
            let r = bnorm::update_running_stats(&d, &mut rm, &mut rv, &mean, &var, mom);
            prop_assert_eq!(r.is_ok(), ok, "running stats {:?}", r);
            if !ok { prop_assert!(untouched(&rm) && untouched(&rv)); }
        }
    }
}
