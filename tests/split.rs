//! Parts of a tensor (issue 13, item 2): `TensorDesc::split` and the part constructors cover the tensor
//! exactly once with the right element mapping; every operation run part by part, with the per-channel
//! slices cut by the part, gives the whole call's bits (inference, `channel_affine`, the normalise pass
//! from partial statistics, the backward pass's element half) or, for statistics, merges within
//! `moments`' bounds; `forward_from_partials` with one part is `forward_training`'s bits; bad parts are
//! errors. `PROPTEST_CASES` raises the number of cases.

mod common;

use bnorm::{
    Affine, Epilogue, Error, GradSums, Isa, Kernels, Layout, ParamGrads, Part, Partial, Saved, Shape,
    TensorDesc,
};
use common::*;
use proptest::prelude::*;

fn config() -> ProptestConfig {
    if cfg!(miri) { ProptestConfig::with_cases(3) } else { ProptestConfig::with_cases(48) }
}

fn desc(case: &Case) -> TensorDesc {
    TensorDesc::new(case.shape, case.layout).unwrap()
}

fn affine(case: &Case) -> Affine<'_> {
    Affine { gamma: case.gamma.as_deref(), beta: case.beta.as_deref(), eps: case.eps }
}

/// A case and a part size (from one position to more than the tensor).
fn case() -> impl Strategy<Value = (Case, usize)> {
    let (n, c, s) = if cfg!(miri) { (3usize, 12usize, 12usize) } else { (5, 40, 60) };
    (1..=n, 1..=c, 1..=s, 0..LAYOUTS.len(), any::<u64>(), prop::sample::select(vec![1.0, 1e4]), 0..4000usize)
        .prop_map(|(n, c, s, l, seed, off, max_len)| {
            (gen_case(seed, Shape::new(n, c, s), LAYOUTS[l], off), max_len)
        })
}

fn bits(v: &[f32]) -> Vec<u32> {
    v.iter().map(|x| x.to_bits()).collect()
}

/// Every part's elements map to the whole's, parts are in memory order, and they tile the tensor.
fn check_cover(whole: &TensorDesc, parts: &[Part]) -> Result<(), TestCaseError> {
    let mut next = 0;
    for p in parts {
        prop_assert_eq!(p.range().start, next, "parts out of order or overlapping");
        prop_assert_eq!(p.range().len(), p.desc().len());
        prop_assert_eq!(p.desc().store_len(), whole.store_len());
        prop_assert_eq!(p.desc().layout(), whole.layout());
        next = p.range().end;
        let sh = p.desc().shape();
        prop_assert_eq!(sh.n, p.batch().len());
        prop_assert_eq!(sh.c, p.channels().len());
        prop_assert_eq!(sh.spatial, p.positions().len());
        for n in 0..sh.n {
            for c in 0..sh.c {
                for s in 0..sh.spatial {
                    let inner = p.desc().offset(n, c, s).unwrap();
                    let outer = whole
                        .offset(p.batch().start + n, p.channels().start + c, p.positions().start + s)
                        .unwrap();
                    prop_assert_eq!(p.range().start + inner, outer, "element ({}, {}, {})", n, c, s);
                }
            }
        }
    }
    prop_assert_eq!(next, whole.len(), "parts do not reach the end");
    Ok(())
}

fn tiers() -> Vec<Kernels> {
    Isa::available().filter_map(|isa| kernels_or_skip(isa, "split")).collect()
}

proptest! {
    #![proptest_config(config())]

    #[test]
    fn parts_tile_the_tensor((case, max_len) in case()) {
        let d = desc(&case);
        let parts: Vec<Part> = d.split(max_len).collect();
        check_cover(&d, &parts)?;
        // At most `max_len` values where the layout allows it (a plane, block plane or position at least).
        let sh = case.shape;
        let smallest = match case.layout {
            Layout::Nchw => sh.spatial,
            Layout::Blocked { block } => sh.spatial * block,
            Layout::Nhwc => sh.c,
        };
        for p in &parts {
            prop_assert!(p.desc().len() <= max_len.max(smallest), "part of {} > {max_len}", p.desc().len());
        }
        // The cut of a descriptor with another store hint: the same parts, with the hint.
        let hinted = d.with_store_len(1 << 30);
        prop_assert!(hinted == d);
        for (a, b) in hinted.split(max_len).zip(&parts) {
            prop_assert_eq!(a.range(), b.range());
            prop_assert_eq!(a.desc().store_len(), 1 << 30);
        }
        // zip_mut hands out each part's own piece.
        let mut buf = vec![0u32; d.len()];
        for (i, (p, piece)) in d.split(max_len).zip_mut(&mut buf).unwrap().enumerate() {
            prop_assert_eq!(piece.len(), p.desc().len());
            piece.fill(i as u32 + 1);
        }
        for (i, p) in parts.iter().enumerate() {
            prop_assert!(p.data(&buf).unwrap().iter().all(|&v| v == i as u32 + 1));
        }
    }

    #[test]
    fn operations_on_parts_match_the_whole((case, max_len) in case()) {
        let d = desc(&case);
        let c = case.shape.c;
        let a = affine(&case);
        let z = gen_dy(0x5eed, case.shape, case.layout);
        let dy = gen_dy(0xd1, case.shape, case.layout);
        let parts: Vec<Part> = d.split(max_len).collect();
        for k in tiers() {
            let isa = k.isa();
            // Partials of the parts, merged in order: within moments' bounds.
            let mut acc = vec![Partial::EMPTY; c];
            for p in &parts {
                let mut out = vec![Partial::EMPTY; p.desc().shape().c];
                k.partial_moments(p.desc(), p.data(&case.x).unwrap(), &mut out).unwrap();
                for (a, b) in p.per_channel_mut(&mut acc).unwrap().iter_mut().zip(&out) {
                    *a = a.merge(*b);
                }
            }
            let (mut mean, mut var) = (vec![0.0; c], vec![0.0; c]);
            bnorm::finish_partials(&acc, &mut mean, &mut var).unwrap();
            check_moments(&case, &mean, &var).map_err(|e| TestCaseError::fail(format!("{isa}: {e}")))?;
            let epilogues = [Epilogue::None, Epilogue::Relu, Epilogue::AddRelu(&z)];
            for e in epilogues {
                let part_e = |p: &Part| match e {
                    Epilogue::AddRelu(z) => Epilogue::AddRelu(p.data(z).unwrap()),
                    other => other,
                };
                // The normalise pass from the merged partials, part by part: the whole call's bits.
                let mut whole = vec![f32::NAN; d.len()];
                k.forward_from_partials(&d, &case.x, &mut whole, &a, &acc, e).unwrap();
                let mut parted = vec![f32::NAN; d.len()];
                for (p, y) in d.split(max_len).zip_mut(&mut parted).unwrap() {
                    let pa = p.affine(&a).unwrap();
                    let x = p.data(&case.x).unwrap();
                    k.forward_from_partials(p.desc(), x, y, &pa, p.per_channel(&acc).unwrap(), part_e(&p)).unwrap();
                }
                prop_assert_eq!(bits(&parted), bits(&whole), "{} forward_from_partials {:?}", isa, e);
                // Inference with the finished statistics, and channel_affine.
                k.forward_inference_with(&d, &case.x, &mut whole, &a, &mean, &var, e).unwrap();
                for (p, y) in d.split(max_len).zip_mut(&mut parted).unwrap() {
                    let (pm, pv) = (p.per_channel(&mean).unwrap(), p.per_channel(&var).unwrap());
                    let x = p.data(&case.x).unwrap();
                    k.forward_inference_with(p.desc(), x, y, &p.affine(&a).unwrap(), pm, pv, part_e(&p)).unwrap();
                }
                prop_assert_eq!(bits(&parted), bits(&whole), "{} forward_inference {:?}", isa, e);
                let (scale, shift) = (&var, &mean);
                k.channel_affine_with(&d, &case.x, &mut whole, scale, shift, e).unwrap();
                for (p, y) in d.split(max_len).zip_mut(&mut parted).unwrap() {
                    let (sc, sh) = (p.per_channel(scale).unwrap(), p.per_channel(shift).unwrap());
                    k.channel_affine_with(p.desc(), p.data(&case.x).unwrap(), y, sc, sh, part_e(&p)).unwrap();
                }
                prop_assert_eq!(bits(&parted), bits(&whole), "{} channel_affine {:?}", isa, e);
            }
            // The backward halves: sums reduced part by part and added; the element half part by part with
            // them gives the whole element call's bits.
            let (mut sdy, mut sxmu) = (vec![0.0f64; c], vec![0.0f64; c]);
            for p in &parts {
                let (x, g) = (p.data(&case.x).unwrap(), p.data(&dy).unwrap());
                let pc = p.desc().shape().c;
                let (mut a1, mut a2) = (vec![0.0; pc], vec![0.0; pc]);
                k.backward_reduce(p.desc(), x, g, p.per_channel(&mean).unwrap(), &mut a1, &mut a2).unwrap();
                for (j, ch) in p.channels().enumerate() {
                    sdy[ch] += a1[j] as f64;
                    sxmu[ch] += a2[j] as f64;
                }
            }
            let sum_dy: Vec<f32> = sdy.iter().map(|&v| v as f32).collect();
            let sum_dy_xmu: Vec<f32> = sxmu.iter().map(|&v| v as f32).collect();
            let saved = Saved::batch(&mean, &var);
            let sums = GradSums { sum_dy: &sum_dy, sum_dy_xmu: &sum_dy_xmu, batch: case.shape };
            let mut whole = vec![f32::NAN; d.len()];
            k.backward_elementwise(&d, &case.x, &dy, &mut whole, &a, &saved, &sums, ParamGrads::none()).unwrap();
            let mut parted = vec![f32::NAN; d.len()];
            for (p, dx) in d.split(max_len).zip_mut(&mut parted).unwrap() {
                let (pm, pv) = (p.per_channel(&mean).unwrap(), p.per_channel(&var).unwrap());
                let (s1, s2) = (p.per_channel(&sum_dy).unwrap(), p.per_channel(&sum_dy_xmu).unwrap());
                let psums = GradSums { sum_dy: s1, sum_dy_xmu: s2, batch: Shape::new(case.shape.n, p.desc().shape().c, case.shape.spatial) };
                let (x, g) = (p.data(&case.x).unwrap(), p.data(&dy).unwrap());
                k.backward_elementwise(p.desc(), x, g, dx, &p.affine(&a).unwrap(), &Saved::batch(pm, pv), &psums, ParamGrads::none())
                    .unwrap();
            }
            prop_assert_eq!(bits(&parted), bits(&whole), "{} backward_elementwise", isa);
        }
    }

    /// `forward_from_partials` with the partials of the whole tensor (one part) is `forward_training`:
    /// the same bits for every epilogue, in place too.
    #[test]
    fn from_one_partial_is_training((case, _) in case()) {
        let d = desc(&case);
        let c = case.shape.c;
        let a = affine(&case);
        let z = gen_dy(0x5eed, case.shape, case.layout);
        for k in tiers() {
            let isa = k.isa();
            let mut p = vec![Partial::EMPTY; c];
            k.partial_moments(&d, &case.x, &mut p).unwrap();
            for e in [Epilogue::None, Epilogue::Relu, Epilogue::AddRelu(&z)] {
                let (mut y0, mut mean, mut var) = (vec![f32::NAN; d.len()], vec![0.0; c], vec![0.0; c]);
                k.forward_training_with(&d, &case.x, &mut y0, &a, &mut mean, &mut var, e).unwrap();
                let mut y1 = vec![f32::NAN; d.len()];
                k.forward_from_partials(&d, &case.x, &mut y1, &a, &p, e).unwrap();
                prop_assert_eq!(bits(&y1), bits(&y0), "{} {:?}", isa, e);
                let mut xy = case.x.clone();
                k.forward_from_partials_in_place(&d, &mut xy, &a, &p, e).unwrap();
                prop_assert_eq!(bits(&xy), bits(&y0), "{} in place {:?}", isa, e);
            }
        }
    }
}

#[test]
fn part_constructors() {
    let nchw = TensorDesc::new(Shape::new(3, 5, 7), Layout::Nchw).unwrap();
    let p = nchw.channel_part(2, 1, 4).unwrap();
    assert_eq!(
        (p.range(), p.channels(), p.batch(), p.positions()),
        (2 * 35 + 7..2 * 35 + 28, 1..4, 2..3, 0..7)
    );
    assert_eq!(p.desc().shape(), Shape::new(1, 3, 7));
    assert_eq!(*p.whole(), nchw);
    let p = nchw.batch_part(1, 3).unwrap();
    assert_eq!((p.range(), p.channels()), (35..105, 0..5));
    let nhwc = TensorDesc::new(Shape::new(2, 3, 10), Layout::Nhwc).unwrap();
    let p = nhwc.spatial_part(1, 4, 9).unwrap();
    assert_eq!(
        (p.range(), p.positions(), p.desc().shape()),
        ((10 + 4) * 3..(10 + 9) * 3, 4..9, Shape::new(1, 3, 5))
    );
    let big = TensorDesc::new(Shape::new(4, 64, 4096), Layout::Nchw).unwrap();
    assert!(big.split(1000).all(|p| p.desc().store_len() == big.len()));
    assert_eq!(big.with_store_len(7).store_len(), 7);
}

#[test]
fn bad_parts_are_errors() {
    let nchw = TensorDesc::new(Shape::new(3, 5, 7), Layout::Nchw).unwrap();
    let nhwc = TensorDesc::new(Shape::new(3, 5, 7), Layout::Nhwc).unwrap();
    let b8 = TensorDesc::new(Shape::new(3, 20, 7), Layout::Blocked { block: 8 }).unwrap();
    let bad = |axis, start, end, size| Err(Error::InvalidPart { axis, start, end, size });
    assert_eq!(nchw.batch_part(2, 2), bad("batch", 2, 2, 3));
    assert_eq!(nchw.batch_part(0, 4), bad("batch", 0, 4, 3));
    assert_eq!(nchw.channel_part(3, 0, 1), bad("batch", 3, 4, 3));
    assert_eq!(nchw.channel_part(0, 4, 6), bad("channel", 4, 6, 5));
    assert_eq!(nchw.channel_part(usize::MAX, 0, 1), bad("batch", usize::MAX, usize::MAX, 3));
    assert_eq!(nhwc.channel_part(0, 0, 1), Err(Error::PartLayout { layout: Layout::Nhwc, axis: "channel" }));
    assert_eq!(nchw.spatial_part(0, 0, 1), Err(Error::PartLayout { layout: Layout::Nchw, axis: "spatial" }));
    assert_eq!(nhwc.spatial_part(0, 3, 8), bad("spatial", 3, 8, 7));
    assert_eq!(b8.channel_part(0, 4, 16), bad("channel (whole blocks)", 4, 16, 20));
    assert_eq!(b8.channel_part(0, 8, 12), bad("channel (whole blocks)", 8, 12, 20));
    assert!(b8.channel_part(0, 8, 20).is_ok() && b8.channel_part(0, 16, 20).is_ok());
    // Slices of the wrong length are errors, and a wrong-length whole writes nothing.
    let p = nchw.channel_part(1, 1, 3).unwrap();
    let mut whole = vec![1.0f32; nchw.len() - 1];
    let short = Error::LengthMismatch { what: "whole tensor", expected: nchw.len(), found: nchw.len() - 1 };
    assert_eq!(p.data(&whole), Err(short));
    assert_eq!(p.data_mut(&mut whole).map(|s| s.len()), Err(short));
    assert_eq!(nchw.split(10).zip_mut(&mut whole).map(|_| ()), Err(short));
    assert!(whole.iter().all(|&v| v == 1.0));
    let per = Error::LengthMismatch { what: "per-channel slice", expected: 5, found: 4 };
    assert_eq!(p.per_channel(&[0.0f32; 4]), Err(per));
    let (g, b) = ([1.0f32; 5], [0.0f32; 4]);
    let e = p.affine(&Affine::new(&g, &b, 1e-5)).unwrap_err();
    assert_eq!(e, Error::LengthMismatch { what: "beta", expected: 5, found: 4 });
    assert!(e.to_string().contains('4') && e.to_string().contains('5'));
    let msg = nchw.batch_part(0, 4).unwrap_err().to_string();
    assert!(msg.contains("0..4") && msg.contains("0..3"), "{msg}");
    // forward_from_partials: an empty partial, and a wrong count of partials.
    let x = vec![0.5f32; nchw.len()];
    let mut y = vec![7.0f32; nchw.len()];
    let mut p = [Partial { count: 3, mean_hi: 0.5, mean_lo: 0.0, m2: 0.0 }; 5];
    p[2] = Partial::EMPTY;
    let aff = Affine::default();
    assert_eq!(
        bnorm::forward_from_partials(&nchw, &x, &mut y, &aff, &p, Epilogue::None),
        Err(Error::EmptyPartial { channel: 2 })
    );
    assert_eq!(
        bnorm::forward_from_partials(&nchw, &x, &mut y, &aff, &p[..4], Epilogue::None),
        Err(Error::LengthMismatch { what: "partials", expected: 5, found: 4 })
    );
    assert!(y.iter().all(|&v| v == 7.0));
}
