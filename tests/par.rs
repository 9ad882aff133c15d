//! The parallel front end (issue 13, item 3; feature `rayon`: `cargo test --features rayon --test par`):
//! on pools of 1, 2, 3 and 7 threads, every operation gives the same bits whatever the thread count;
//! the element passes, the statistics of NCHW and blocked tensors, and those of channels-last tensors
//! up to 1 MB or in the L3, the serial call's bits; larger channels-last statistics within `moments`'
//! bounds and equal to the merged partials of the documented cut (CI runs this file again with
//! `BNORM_STREAM_MIN_BYTES=0` so that they are taken on any machine); bad input the serial call's `Err`, with nothing
//! written. The backward pass, its halves and ReLU's backward likewise: the serial call's bits where its
//! sums are cut by channels or computed serially (up to 1 MB), else the oracle's bounds. Tensors are
//! sized past 64 KB (and some past 1 MB) so that the work is really cut.
#![cfg(feature = "rayon")]

mod common;

use bnorm::par::part_len;
use bnorm::{
    Affine, Epilogue, Error, GradEpilogue, GradSums, Isa, Kernels, Layout, ParamGrads, Partial, Saved, Shape,
    StatsMode, TensorDesc,
};
use common::*;
use proptest::prelude::*;

fn config() -> ProptestConfig {
    if cfg!(miri) { ProptestConfig::with_cases(1) } else { ProptestConfig::with_cases(12) }
}

const THREADS: [usize; 4] = [1, 2, 3, 7];

fn pools() -> Vec<rayon::ThreadPool> {
    THREADS.iter().map(|&t| rayon::ThreadPoolBuilder::new().num_threads(t).build().unwrap()).collect()
}

/// Cases of a few Ki to ~720 Ki values, every layout, and shapes with spatial size 1.
fn case() -> impl Strategy<Value = Case> {
    let shape = prop_oneof![
        3 => (1..=4usize, 1..=48usize, 300..=1500usize),
        1 => (300..=3000usize, 3..=40usize, 1..=1usize),
        1 => (1..=2usize, 8..=40usize, 2000..=3000usize),
        // Rows wide enough for the channels-last statistics by ranges of columns.
        1 => (1..=2usize, 130..=400usize, 60..=150usize),
        1 => (60..=300usize, 130..=400usize, 1..=1usize),
        // Past 1 MB: channels-last statistics from merged partials.
        2 => (1..=2usize, 24..=40usize, 7000..=9000usize),
    ];
    (shape, 0..LAYOUTS.len(), any::<u64>(), prop::sample::select(vec![1.0, 1e4]))
        .prop_map(|((n, c, s), l, seed, off)| gen_case(seed, Shape::new(n, c, s), LAYOUTS[l], off))
}

fn bits(v: &[f32]) -> Vec<u32> {
    v.iter().map(|x| x.to_bits()).collect()
}

/// Whether the documented plan computes this tensor's statistics bit for bit as the serial call does.
fn stats_bit_identical(k: &Kernels, d: &TensorDesc) -> bool {
    let sh = d.shape();
    let compact = k.isa() == Isa::Scalar && !cfg!(any(target_arch = "x86_64", target_arch = "aarch64"));
    if compact {
        return d.len() <= part_len(d);
    }
    let by_channels = sh.spatial > 1
        && match d.layout() {
            Layout::Nchw => sh.c > 1,
            Layout::Blocked { block } => sh.c > block,
            Layout::Nhwc => false,
        };
    // Channels-last: the serial statistics up to 1 MB and while the L3 holds the tensor (twice the
    // non-temporal threshold; `BNORM_STREAM_MIN_BYTES=0` makes every larger tensor take the partials).
    let in_l3 = d.len() * 2 <= bnorm::__bench::tuning().stream_min_bytes;
    by_channels || d.len() <= 1 << 18 || in_l3
}

proptest! {
    #![proptest_config(config())]

    #[test]
    fn parallel_equals_serial(case in case()) {
        let d = TensorDesc::new(case.shape, case.layout).unwrap();
        let c = case.shape.c;
        let a = Affine { gamma: case.gamma.as_deref(), beta: case.beta.as_deref(), eps: case.eps };
        let z = gen_dy(0x2e, case.shape, case.layout);
        let pools = pools();
        for isa in Isa::available() {
            let Some(k) = kernels_or_skip(isa, "par") else { continue };
            let exact = stats_bit_identical(&k, &d);
            // Serial references.
            let (mut m0, mut v0) = (vec![0.0; c], vec![0.0; c]);
            k.moments(&d, &case.x, &mut m0, &mut v0).unwrap();
            for e in [Epilogue::None, Epilogue::Relu, Epilogue::AddRelu(&z)] {
                let mut t0 = vec![f32::NAN; d.len()];
                let (mut tm0, mut tv0) = (vec![0.0; c], vec![0.0; c]);
                k.forward_training_with(&d, &case.x, &mut t0, &a, &mut tm0, &mut tv0, e).unwrap();
                let mut i0 = vec![f32::NAN; d.len()];
                k.forward_inference_with(&d, &case.x, &mut i0, &a, &m0, &v0, e).unwrap();
                let mut f0 = vec![f32::NAN; d.len()];
                k.channel_affine_with(&d, &case.x, &mut f0, &v0, &m0, e).unwrap();
                let mut first: Option<(Vec<u32>, Vec<u32>, Vec<u32>)> = None;
                for (pool, t) in pools.iter().zip(THREADS) {
                    let at = |what: &str| format!("{isa} {:?} {e:?} {t} threads: {what}", case.layout);
                    pool.install(|| -> Result<(), TestCaseError> {
                        let p = k.par();
                        // Training, out of place and in place.
                        let (mut y, mut m, mut v) = (vec![f32::NAN; d.len()], vec![0.0; c], vec![0.0; c]);
                        p.forward_training_with(&d, &case.x, &mut y, &a, &mut m, &mut v, e).unwrap();
                        let mut xy = case.x.clone();
                        let (mut m2, mut v2) = (vec![0.0; c], vec![0.0; c]);
                        p.forward_training_in_place_with(&d, &mut xy, &a, &mut m2, &mut v2, e).unwrap();
                        prop_assert_eq!(bits(&xy), bits(&y), "{}", at("training in place"));
                        prop_assert_eq!((bits(&m2), bits(&v2)), (bits(&m), bits(&v)), "{}", at("training in place stats"));
                        if exact {
                            prop_assert_eq!(bits(&y), bits(&t0), "{}", at("training output"));
                            prop_assert_eq!((bits(&m), bits(&v)), (bits(&tm0), bits(&tv0)), "{}", at("training stats"));
                        } else {
                            check_moments(&case, &m, &v).map_err(|s| TestCaseError::fail(at(&s)))?;
                            // The merged partials of the cut, normalised serially: the same bits.
                            let mut acc = vec![Partial::EMPTY; c];
                            p.partial_moments(&d, &case.x, &mut acc).unwrap();
                            let mut y1 = vec![f32::NAN; d.len()];
                            k.forward_from_partials(&d, &case.x, &mut y1, &a, &acc, e).unwrap();
                            prop_assert_eq!(bits(&y), bits(&y1), "{}", at("training vs merged partials"));
                            if matches!(e, Epilogue::None) {
                                check_outputs(&case, &y, &training_norm(&case), true).map_err(|s| TestCaseError::fail(at(&s)))?;
                            }
                        }
                        // moments.
                        let (mut m3, mut v3) = (vec![0.0; c], vec![0.0; c]);
                        p.moments(&d, &case.x, &mut m3, &mut v3).unwrap();
                        prop_assert_eq!((bits(&m3), bits(&v3)), (bits(&m), bits(&v)), "{}", at("moments vs training stats"));
                        if exact {
                            prop_assert_eq!((bits(&m3), bits(&v3)), (bits(&m0), bits(&v0)), "{}", at("moments"));
                        }
                        // The element passes: always the serial bits.
                        let mut yi = vec![f32::NAN; d.len()];
                        p.forward_inference_with(&d, &case.x, &mut yi, &a, &m0, &v0, e).unwrap();
                        prop_assert_eq!(bits(&yi), bits(&i0), "{}", at("inference"));
                        let mut xy = case.x.clone();
                        p.forward_inference_in_place_with(&d, &mut xy, &a, &m0, &v0, e).unwrap();
                        prop_assert_eq!(bits(&xy), bits(&i0), "{}", at("inference in place"));
                        let mut yf = vec![f32::NAN; d.len()];
                        p.channel_affine_with(&d, &case.x, &mut yf, &v0, &m0, e).unwrap();
                        prop_assert_eq!(bits(&yf), bits(&f0), "{}", at("channel_affine"));
                        let mut xy = case.x.clone();
                        p.channel_affine_in_place_with(&d, &mut xy, &v0, &m0, e).unwrap();
                        prop_assert_eq!(bits(&xy), bits(&f0), "{}", at("channel_affine in place"));
                        let mut acc = vec![Partial::EMPTY; c];
                        p.partial_moments(&d, &case.x, &mut acc).unwrap();
                        let mut ys = vec![f32::NAN; d.len()];
                        k.forward_from_partials(&d, &case.x, &mut ys, &a, &acc, e).unwrap();
                        let mut yp = vec![f32::NAN; d.len()];
                        p.forward_from_partials(&d, &case.x, &mut yp, &a, &acc, e).unwrap();
                        prop_assert_eq!(bits(&yp), bits(&ys), "{}", at("forward_from_partials"));
                        // The same bits on every pool.
                        let got = (bits(&y), bits(&m), bits(&v));
                        match &first {
                            None => first = Some(got),
                            Some(f) => prop_assert!(*f == got, "{}", at("differs from 1 thread")),
                        }
                        Ok(())
                    })?;
                }
            }
        }
    }
}

#[test]
fn bad_input_is_the_serial_error() {
    let d = TensorDesc::new(Shape::new(4, 16, 4096), Layout::Nchw).unwrap();
    let x = vec![1.0f32; d.len()];
    let mut y = vec![7.0f32; d.len() - 1];
    let (mut m, mut v) = (vec![3.0; 16], vec![3.0; 16]);
    let a = Affine::default();
    let want = Error::LengthMismatch { what: "y", expected: d.len(), found: d.len() - 1 };
    assert_eq!(bnorm::par::forward_training(&d, &x, &mut y, &a, &mut m, &mut v), Err(want));
    assert!(y.iter().all(|&v| v == 7.0) && m.iter().all(|&v| v == 3.0));
    let bad_var = [-1.0f32; 16];
    let mut y = vec![7.0f32; d.len()];
    let e = bnorm::par::forward_inference(&d, &x, &mut y, &a, &m, &bad_var).unwrap_err();
    assert_eq!(e, Error::InvalidVariance { channel: 0, var: -1.0 });
    assert!(y.iter().all(|&v| v == 7.0));
    let z = vec![0.0f32; 5];
    let e = bnorm::par::channel_affine_with(&d, &x, &mut y, &m, &v, Epilogue::AddRelu(&z)).unwrap_err();
    assert_eq!(e, Error::LengthMismatch { what: "z", expected: d.len(), found: 5 });
    assert!(y.iter().all(|&v| v == 7.0));
    let mut out = vec![Partial::EMPTY; 15];
    assert!(bnorm::par::partial_moments(&d, &x, &mut out).is_err());
}

/// Benchmark shapes cut into several parts for their statistics (the cut does not depend on threads).
#[test]
fn the_cut_is_fixed_by_the_tensor() {
    for (shape, layout) in [
        (Shape::nchw(1, 64, 56, 56), Layout::Nhwc),
        (Shape::nchw(1, 1024, 14, 14), Layout::Blocked { block: 16 }),
        (Shape::nchw(32, 256, 56, 56), Layout::Nchw),
    ] {
        let d = TensorDesc::new(shape, layout).unwrap();
        let parts: Vec<_> = d.split(part_len(&d)).collect();
        assert!(parts.len() >= 3, "{shape:?} {layout:?}: {} parts", parts.len());
        assert!(parts.iter().all(|p| p.desc().len() <= 1 << 20 && p.desc().store_len() == d.len()));
        // The same cut on every pool.
        for t in [1, 2, 7] {
            let pool = rayon::ThreadPoolBuilder::new().num_threads(t).build().unwrap();
            assert_eq!(pool.install(|| part_len(&d)), part_len(&d));
        }
    }
}

/// Whether the documented plan computes this tensor's gradient sums bit for bit as the serial call does:
/// by channels, up to 1 MB, or rows of 256 channels or more while the L3 holds them (channels-last tensors
/// beyond take the parts' sums).
fn sums_bit_identical(d: &TensorDesc) -> bool {
    let sh = d.shape();
    let by_channels = sh.spatial > 1
        && match d.layout() {
            Layout::Nchw => sh.c > 1,
            Layout::Blocked { block } => sh.c > block,
            Layout::Nhwc => false,
        };
    let wide_in_l3 = sh.c >= 256 && d.len() * 2 <= bnorm::__bench::tuning().stream_min_bytes;
    by_channels || d.len() <= 1 << 18 || wide_in_l3
}

/// The backward case: a forward case, `dy`, the statistics' mode, whether `dγ`/`dβ` are asked for, and
/// the epilogue (0 none, 1 ReLU, 2 add+ReLU).
/// Half the cases channels-last memory: past 1 MB (NHWC, or any layout with spatial size 1), whose sums
/// come from the parts of the cut, or up to 1 MB with rows of 96 channels or more, or past it with rows of
/// 256 or more, whose sums are by ranges of columns (the serial call's bits) while the L3 holds them.
fn back_case() -> impl Strategy<Value = (Case, StatsMode, bool, usize)> {
    let wide = prop_oneof![
        ((1..=2usize, 24..=40usize, 7000..=9000usize), Just(Layout::Nhwc)),
        ((7000..=9000usize, 30..=80usize, 1..=1usize), prop::sample::select(LAYOUTS.to_vec())),
        ((1..=2usize, 96..=520usize, 170..=240usize), Just(Layout::Nhwc)),
        // Past 1 MB with rows of 256 channels or more: by ranges of columns while the L3 holds them.
        ((1..=1usize, 256..=300usize, 1030..=1200usize), Just(Layout::Nhwc)),
        ((170..=480usize, 96..=520usize, 1..=1usize), prop::sample::select(LAYOUTS.to_vec())),
    ];
    let wide = (wide, any::<u64>(), prop::sample::select(vec![1.0, 1e4]))
        .prop_map(|(((n, c, s), l), seed, off)| gen_case(seed, Shape::new(n, c, s), l, off));
    (prop_oneof![case(), wide], prop::bool::ANY, prop::bool::ANY, 0..3usize)
        .prop_map(|(c, batch, g, e)| (c, if batch { StatsMode::Batch } else { StatsMode::Global }, g, e))
}

fn grad_epilogue<'a>(e: usize, y: &'a [f32], dz: &'a mut [f32]) -> GradEpilogue<'a> {
    match e {
        0 => GradEpilogue::None,
        1 => GradEpilogue::Relu { y },
        _ => GradEpilogue::AddRelu { y, dz },
    }
}

proptest! {
    #![proptest_config(config())]

    /// The parallel backward, both halves and ReLU's backward against the serial calls: their bits where
    /// the sums are by channels, serial, or given; else the oracle's bounds; the same bits on every pool,
    /// and in place as out of place.
    #[test]
    fn parallel_backward(case in back_case()) {
        let (case, mode, want_grads, e) = case;
        let d = TensorDesc::new(case.shape, case.layout).unwrap();
        let c = case.shape.c;
        let a = Affine { gamma: case.gamma.as_deref(), beta: case.beta.as_deref(), eps: case.eps };
        let dy = gen_dy(0x3b, case.shape, case.layout);
        // A forward output for the masks: about half of it ≤ 0.
        let y = gen_dy(0x4c, case.shape, case.layout);
        let pools = pools();
        for isa in Isa::available() {
            let Some(k) = kernels_or_skip(isa, "par backward") else { continue };
            let (mut mean, mut var) = (vec![0.0; c], vec![0.0; c]);
            k.moments(&d, &case.x, &mut mean, &mut var).unwrap();
            if mode == StatsMode::Global {
                mean.iter_mut().for_each(|m| *m = *m * 1.01 + 0.001);
            }
            let saved = Saved { mean: &mean, var: &var, mode };
            let exact = mode == StatsMode::Global && !want_grads || sums_bit_identical(&d);
            // Serial references.
            let (mut dx0, mut dz0) = (vec![f32::NAN; d.len()], vec![f32::NAN; d.len()]);
            let (mut dg0, mut db0) = (vec![f32::NAN; c], vec![f32::NAN; c]);
            let g = if want_grads { ParamGrads::new(&mut dg0, &mut db0) } else { ParamGrads::none() };
            k.backward_with(&d, &case.x, &dy, &mut dx0, &a, &saved, g, grad_epilogue(e, &y, &mut dz0)).unwrap();
            let (mut sdy0, mut sdx0) = (vec![0.0; c], vec![0.0; c]);
            k.backward_reduce(&d, &case.x, &dy, &mean, &mut sdy0, &mut sdx0).unwrap();
            let sums0 = GradSums { sum_dy: &sdy0, sum_dy_xmu: &sdx0, batch: case.shape };
            let (mut ex0, mut eg0, mut eb0) = (vec![f32::NAN; d.len()], vec![0.0; c], vec![0.0; c]);
            k.backward_elementwise(&d, &case.x, &dy, &mut ex0, &a, &saved, &sums0, ParamGrads::new(&mut eg0, &mut eb0)).unwrap();
            let mut r0 = vec![f32::NAN; d.len()];
            k.relu_backward(&d, &y, &dy, &mut r0).unwrap();
            let mut first: Option<Vec<Vec<u32>>> = None;
            for (pool, t) in pools.iter().zip(THREADS) {
                let at = |what: &str| format!("{isa} {:?} {mode:?} epilogue {e} {t} threads: {what}", case.layout);
                pool.install(|| -> Result<(), TestCaseError> {
                    let p = k.par();
                    let (mut dx, mut dz) = (vec![f32::NAN; d.len()], vec![f32::NAN; d.len()]);
                    let (mut dg, mut db) = (vec![f32::NAN; c], vec![f32::NAN; c]);
                    let g = if want_grads { ParamGrads::new(&mut dg, &mut db) } else { ParamGrads::none() };
                    p.backward_with(&d, &case.x, &dy, &mut dx, &a, &saved, g, grad_epilogue(e, &y, &mut dz)).unwrap();
                    if e == 2 {
                        prop_assert_eq!(bits(&dz), bits(&dz0), "{}", at("dz"));
                    }
                    if exact {
                        prop_assert_eq!(bits(&dx), bits(&dx0), "{}", at("dx"));
                        prop_assert_eq!((bits(&dg), bits(&db)), (bits(&dg0), bits(&db0)), "{}", at("dγ, dβ"));
                    } else {
                        // Against the oracle, with the gradient the epilogue's mask leaves.
                        let dy_in = if e == 0 { &dy } else { &r0 };
                        let got = Grads { dx: dx.clone(), dgamma: dg.clone(), dbeta: db.clone() };
                        check_backward(&case, dy_in, mode == StatsMode::Batch, &mean, &var, &got, want_grads, false)
                            .map_err(|s| TestCaseError::fail(at(&s)))?;
                    }
                    if !want_grads {
                        prop_assert!(dg.iter().chain(&db).all(|v| v.is_nan()), "{}", at("dγ/dβ written"));
                    }
                    // In place: the same bits.
                    let (mut dydx, mut dz2) = (dy.clone(), vec![f32::NAN; d.len()]);
                    let (mut dg2, mut db2) = (vec![f32::NAN; c], vec![f32::NAN; c]);
                    let g = if want_grads { ParamGrads::new(&mut dg2, &mut db2) } else { ParamGrads::none() };
                    p.backward_in_place_with(&d, &case.x, &mut dydx, &a, &saved, g, grad_epilogue(e, &y, &mut dz2)).unwrap();
                    prop_assert_eq!(bits(&dydx), bits(&dx), "{}", at("in place"));
                    prop_assert_eq!((bits(&dg2), bits(&db2)), (bits(&dg), bits(&db)), "{}", at("in place dγ, dβ"));
                    // The halves.
                    let (mut sdy, mut sdx) = (vec![0.0; c], vec![0.0; c]);
                    p.backward_reduce(&d, &case.x, &dy, &mean, &mut sdy, &mut sdx).unwrap();
                    if sums_bit_identical(&d) {
                        prop_assert_eq!((bits(&sdy), bits(&sdx)), (bits(&sdy0), bits(&sdx0)), "{}", at("reduce"));
                    } else {
                        let sums = GradSums { sum_dy: &sdy, sum_dy_xmu: &sdx, batch: case.shape };
                        let (mut hx, mut hg, mut hb) = (vec![f32::NAN; d.len()], vec![0.0; c], vec![0.0; c]);
                        k.backward_elementwise(&d, &case.x, &dy, &mut hx, &a, &saved, &sums, ParamGrads::new(&mut hg, &mut hb)).unwrap();
                        let got = Grads { dx: hx, dgamma: hg, dbeta: hb };
                        check_backward(&case, &dy, mode == StatsMode::Batch, &mean, &var, &got, true, true)
                            .map_err(|s| TestCaseError::fail(at(&format!("halves: {s}"))))?;
                    }
                    let (mut ex, mut eg, mut eb) = (vec![f32::NAN; d.len()], vec![0.0; c], vec![0.0; c]);
                    p.backward_elementwise(&d, &case.x, &dy, &mut ex, &a, &saved, &sums0, ParamGrads::new(&mut eg, &mut eb)).unwrap();
                    prop_assert_eq!(bits(&ex), bits(&ex0), "{}", at("elementwise"));
                    prop_assert_eq!((bits(&eg), bits(&eb)), (bits(&eg0), bits(&eb0)), "{}", at("elementwise dγ, dβ"));
                    let mut dydx = dy.clone();
                    p.backward_elementwise_in_place(&d, &case.x, &mut dydx, &a, &saved, &sums0, ParamGrads::none()).unwrap();
                    prop_assert_eq!(bits(&dydx), bits(&ex0), "{}", at("elementwise in place"));
                    let mut r = vec![f32::NAN; d.len()];
                    p.relu_backward(&d, &y, &dy, &mut r).unwrap();
                    prop_assert_eq!(bits(&r), bits(&r0), "{}", at("relu_backward"));
                    let mut r = dy.clone();
                    p.relu_backward_in_place(&d, &y, &mut r).unwrap();
                    prop_assert_eq!(bits(&r), bits(&r0), "{}", at("relu_backward in place"));
                    // The same bits on every pool.
                    let got = vec![bits(&dx), bits(&dg), bits(&db), bits(&sdy), bits(&sdx)];
                    match &first {
                        None => first = Some(got),
                        Some(f) => prop_assert!(*f == got, "{}", at("differs from 1 thread")),
                    }
                    Ok(())
                })?;
            }
        }
    }
}

#[test]
fn bad_backward_input_is_the_serial_error() {
    let d = TensorDesc::new(Shape::new(4, 16, 4096), Layout::Nhwc).unwrap();
    let (x, dy) = (vec![1.0f32; d.len()], vec![0.5f32; d.len()]);
    let (m, v) = (vec![0.0f32; 16], vec![1.0f32; 16]);
    let a = Affine::default();
    let saved = Saved::batch(&m, &v);
    let k = Kernels::detect();
    let p = k.par();
    let mut dx = vec![7.0f32; d.len()];
    let (mut dg, mut db) = (vec![7.0f32; 15], vec![7.0f32; 16]);
    let e1 = p.backward(&d, &x, &dy, &mut dx, &a, &saved, ParamGrads::new(&mut dg, &mut db)).unwrap_err();
    let e0 = k.backward(&d, &x, &dy, &mut dx, &a, &saved, ParamGrads::new(&mut dg, &mut db)).unwrap_err();
    assert_eq!(e1, e0);
    assert_eq!(e1, Error::LengthMismatch { what: "dgamma", expected: 16, found: 15 });
    let y = vec![1.0f32; d.len()];
    let mut dz = vec![7.0f32; 3];
    let ep = GradEpilogue::AddRelu { y: &y, dz: &mut dz };
    let e = p.backward_with(&d, &x, &dy, &mut dx, &a, &saved, ParamGrads::none(), ep).unwrap_err();
    assert_eq!(e, Error::LengthMismatch { what: "dz", expected: d.len(), found: 3 });
    let bad_var = [-1.0f32; 16];
    let e = p.backward_in_place(&d, &x, &mut dx, &a, &Saved::batch(&m, &bad_var), ParamGrads::none());
    assert_eq!(e, Err(Error::InvalidVariance { channel: 0, var: -1.0 }));
    let (s1, s2) = (vec![0.0f32; 16], vec![0.0f32; 16]);
    let sums = GradSums { sum_dy: &s1, sum_dy_xmu: &s2, batch: Shape::new(1, 16, 4096) };
    let e = p.backward_elementwise(&d, &x, &dy, &mut dx, &a, &saved, &sums, ParamGrads::none()).unwrap_err();
    assert!(matches!(e, Error::BatchMismatch { .. }), "{e:?}");
    let (mut o1, mut o2) = (vec![7.0f32; 16], vec![7.0f32; 17]);
    assert!(p.backward_reduce(&d, &x, &dy, &m, &mut o1, &mut o2).is_err());
    assert!(dx.iter().chain(&dg).chain(&db).chain(&o1).all(|&v| v == 7.0), "an output was written");
}
