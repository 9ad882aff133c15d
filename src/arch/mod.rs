//! Instruction-set back ends: the only place in the crate where `unsafe` is allowed.
//!
//! Every tier implements [`Simd`], a crate-private vector trait whose methods are `#[inline(always)]`.
//! The layout kernels in `crate::kernels` are written once over that trait; each tier instantiates them
//! in thin entry points (for the x86 tiers inside `#[target_feature]` functions, so the intrinsics
//! inline into code compiled for that feature set).
//!
//! A tier's token type (`Scalar`, `Portable`, `Avx2`, `Avx512`) is a zero-sized value whose existence
//! proves that the running CPU supports the tier: the x86 tokens can only be made by the dispatcher after
//! detection, or through an `unsafe` constructor.

pub(crate) mod compact;
pub(crate) mod portable;
pub(crate) mod scalar;
#[cfg(target_arch = "x86_64")]
pub(crate) mod x86_64;

/// Whether the portable tier has SIMD instructions on this target (`wide`'s backends: SSE2 on x86,
/// NEON on aarch64 and on Arm with NEON, simd128 on wasm32); elsewhere it is scalar code in four-lane
/// form, and the scalar tier is the one to run (`Isa::detect`) and takes the compact normalise pass.
pub(crate) const PORTABLE_IS_SIMD: bool = cfg!(any(
    target_arch = "x86",
    target_arch = "x86_64",
    target_arch = "aarch64",
    all(target_arch = "arm", target_feature = "neon"),
    all(target_arch = "wasm32", target_feature = "simd128"),
));

/// Items for where the portable tier is compiled in (`yes`) and where it is not (`no`): compiled always
/// where it has SIMD, elsewhere only with the `all-tiers` feature (for comparing tiers), since the scalar
/// tier is the one that runs there and the portable one would be compiled for nothing — it was most of
/// a debug build's time for thumbv6m.
macro_rules! portable_compiled {
    (yes: { $($yes:item)* } no: { $($no:item)* }) => {
        $(#[cfg(any(
            feature = "all-tiers",
            target_arch = "x86",
            target_arch = "x86_64",
            target_arch = "aarch64",
            all(target_arch = "arm", target_feature = "neon"),
            all(target_arch = "wasm32", target_feature = "simd128"),
        ))] $yes)*
        $(#[cfg(not(any(
            feature = "all-tiers",
            target_arch = "x86",
            target_arch = "x86_64",
            target_arch = "aarch64",
            all(target_arch = "arm", target_feature = "neon"),
            all(target_arch = "wasm32", target_feature = "simd128"),
        )))] $no)*
    };
}

/// A vector of `LANES` f32 values and the operations the kernels need.
///
/// Contracts shared by every implementation:
/// - `load`/`store` read or write the first `LANES` elements of the slice; callers pass slices at least
///   that long (shorter ones panic through a bounds check, never read out of bounds).
/// - `load_part` reads the first `s.len() < LANES` elements and fills the other lanes from `fill`;
///   `store_part` writes exactly `s.len() < LANES` elements. Neither touches memory past the slice.
/// - `add`, `sub`, `mul`, `div` and `sqrt` are IEEE-754 correctly rounded; `mul_add` may or may not be
///   fused (fused on AVX2/AVX-512 and aarch64, unfused on SSE2 and the scalar tier).
/// - `hsum` adds the lanes in a fixed tree, so the same vector always gives the same bits.
pub(crate) trait Simd: Copy {
    /// Number of f32 lanes.
    const LANES: usize;
    /// Number of vector registers the loops may plan for (register tiles are sized by it).
    const REGS: usize = 16;
    /// The vector register type.
    type V: Copy;
    /// Whether the tier's normalise pass is the plain per-channel loops of `kernels::compact` rather
    /// than the vector runs of `kernels::normalize`: the scalar tier on targets without SIMD, where it is
    /// the tier that runs (on x86 and other cached CPUs the vector runs' order and non-temporal stores
    /// matter even at one lane: the compact walk of NHWC ran 9× slower from memory there).
    const COMPACT: bool = false;

    /// Every lane set to `x`.
    fn splat(self, x: f32) -> Self::V;
    /// Loads the first `LANES` elements of `s`.
    fn load(self, s: &[f32]) -> Self::V;
    /// Loads `s.len() < LANES` elements; the remaining lanes come from `fill`.
    fn load_part(self, s: &[f32], fill: Self::V) -> Self::V;
    /// Stores into the first `LANES` elements of `s`.
    fn store(self, s: &mut [f32], v: Self::V);
    /// Stores the first `s.len() < LANES` lanes of `v` into `s`.
    fn store_part(self, s: &mut [f32], v: Self::V);
    /// `a + b`.
    fn add(self, a: Self::V, b: Self::V) -> Self::V;
    /// `a - b`.
    fn sub(self, a: Self::V, b: Self::V) -> Self::V;
    /// `a * b`.
    fn mul(self, a: Self::V, b: Self::V) -> Self::V;
    /// `a < b ? a : b` (x86 `minps` semantics: `b` when either is NaN).
    fn min(self, a: Self::V, b: Self::V) -> Self::V;
    /// `a > b ? a : b` (x86 `maxps` semantics: `b` when either is NaN, so `max(0, y)` keeps a NaN `y`
    /// and a `−0`).
    fn max(self, a: Self::V, b: Self::V) -> Self::V;
    /// Lanes where `m ≤ 0` become `+0`, the others keep `v` (a NaN `m` keeps `v`): ReLU's backward,
    /// masked by the forward output `m`.
    fn zero_where_not_positive(self, m: Self::V, v: Self::V) -> Self::V;
    /// `a * b + c`, fused where the tier has FMA.
    fn mul_add(self, a: Self::V, b: Self::V, c: Self::V) -> Self::V;
    /// `1 / sqrt(v)` from a correctly rounded square root and a correctly rounded division; lanes where
    /// `v == 0` give 0 (a zero-variance channel normalises to 0, never to NaN).
    fn inv_sqrt_or_zero(self, v: Self::V) -> Self::V;
    /// The sum of all lanes, added in a fixed pairwise tree.
    fn hsum(self, v: Self::V) -> f32;
    /// Bitwise `a & b` (`b` a lane mask of all-ones or all-zeros bit patterns).
    fn and(self, a: Self::V, b: Self::V) -> Self::V;
    /// Lanes `0..k` from `a`, lanes `k..LANES` from `b` (`0 < k < LANES`; a register blend, no memory
    /// access but a lane-mask constant).
    fn blend_first(self, k: usize, a: Self::V, b: Self::V) -> Self::V;
    /// Stores like `store`, bypassing the caches (non-temporal) where the tier has such stores and the
    /// first element is aligned to the vector size; an ordinary store otherwise.
    fn stream(self, s: &mut [f32], v: Self::V) {
        self.store(s, v)
    }
    /// Orders earlier non-temporal stores before later stores (`sfence`); a no-op without them.
    fn fence(self) {}
    /// Hints that the cache line holding `s[0]` will be read soon (into L2); a no-op where the target has
    /// no prefetch instruction. `s` must not be empty (an empty slice is ignored).
    fn prefetch(self, s: &[f32]) {
        prefetch_l2(s)
    }
    /// Hints that the line `ahead` floats past the start of `s` will be read soon, whether or not it is
    /// inside `s` (a prefetch never faults); a no-op where the target has no prefetch instruction.
    fn prefetch_ahead(self, s: &[f32], ahead: usize) {
        prefetch_at::<false>(s.as_ptr().wrapping_add(ahead))
    }
    /// Hints that the line at `p` will be read soon, into L2 (x86-64: `prefetcht1`); `p` may point
    /// anywhere (a prefetch never faults); a no-op where the target has no prefetch instruction.
    fn prefetch_l2_at(self, p: *const f32) {
        prefetch_at::<true>(p)
    }
}

use crate::dispatch::Isa;

/// Prefetches the line of `s[0]` into L2 (x86-64: `prefetcht1`, part of SSE; elsewhere nothing).
#[inline(always)]
fn prefetch_l2(s: &[f32]) {
    #[cfg(all(target_arch = "x86_64", not(miri)))]
    if let Some(v) = s.first() {
        // SAFETY: SSE is part of x86-64; a prefetch is a hint that reads no memory architecturally and
        // cannot fault, and the address comes from a live reference anyway.
        unsafe {
            core::arch::x86_64::_mm_prefetch::<{ core::arch::x86_64::_MM_HINT_T1 }>((v as *const f32).cast())
        }
    }
    #[cfg(not(all(target_arch = "x86_64", not(miri))))]
    let _ = s;
}
/// Prefetches the line at `p`, into L2 with `L2` (x86-64: `prefetcht1`), into L1 otherwise
/// (`prefetcht0`); elsewhere nothing. `p` may point anywhere.
#[inline(always)]
fn prefetch_at<const L2: bool>(p: *const f32) {
    #[cfg(all(target_arch = "x86_64", not(miri)))]
    // SAFETY: a prefetch is a hint: it reads no memory architecturally and cannot fault, whatever the
    // address (the pointer is never dereferenced).
    unsafe {
        use core::arch::x86_64::{_MM_HINT_T0, _MM_HINT_T1, _mm_prefetch};
        if L2 { _mm_prefetch::<_MM_HINT_T1>(p.cast()) } else { _mm_prefetch::<_MM_HINT_T0>(p.cast()) }
    }
    #[cfg(not(all(target_arch = "x86_64", not(miri))))]
    let _ = p;
}
use crate::kernels::ops::Call;

/// Runs a validated call on tier `isa`. A tier the CPU lacks never reaches here (a `Kernels` value holds
/// only available tiers); should one arrive anyway, the portable tier runs it (the scalar tier where the
/// portable one is not compiled in).
///
/// Inlined into each operation, so that the `match` on the call's kind folds away (a call site links
/// only its operation's entry points) and, where `isa` is a constant (the free functions on targets
/// without run-time detection), the `match` on the tier too.
#[inline(always)]
pub(crate) fn run(isa: Isa, call: Call<'_>) {
    match isa {
        Isa::Scalar => scalar_entries::dispatch(scalar::Scalar, call),
        #[cfg(target_arch = "x86_64")]
        Isa::Avx512 if isa.is_available() => {
            // SAFETY: `is_available` confirmed AVX-512F, AVX2, FMA and the OS's zmm/opmask state.
            avx512_entries::dispatch(unsafe { x86_64::avx512::Avx512::new_unchecked() }, call)
        }
        #[cfg(target_arch = "x86_64")]
        Isa::Avx2 if isa.is_available() => {
            // SAFETY: `is_available` confirmed AVX2, FMA and the OS's ymm state.
            avx2_entries::dispatch(unsafe { x86_64::avx2::Avx2::new_unchecked() }, call)
        }
        _ => run_fallback(call),
    }
}

// SAFETY: `Partial` is `#[repr(C)]` with fields u64, f32, f32, f64 (offsets 0, 8, 12, 16; size 24,
// alignment 8): no padding, and every bit pattern of each field is a valid value. So it is `Zeroable`
// (all zeros is `Partial::EMPTY`) and `Pod` (it is also `Copy` and `'static`).
unsafe impl bytemuck::Zeroable for crate::partial::Partial {}
// SAFETY: as above.
unsafe impl bytemuck::Pod for crate::partial::Partial {}
const _: () = assert!(core::mem::size_of::<crate::partial::Partial>() == 24);

/// One entry point per operation for a tier: each is `#[inline(never)]` (with the tier's target
/// features), and the kernels below it are `#[inline(always)]`. Below the entry points, the passes over
/// a chunk of channels are out-of-line functions of their own, again with the tier's features, reached
/// through the `Outlined` and `BackPieces` traits: the statistics, the normalise pass (per buffer kind,
/// epilogue and statistics kind) and the backward pass's two halves. Separate functions keep each one
/// small enough to compile quickly and in parallel (LLVM's loop passes grow faster than the function
/// they work on: with the passes inlined into the entry points, a release build of the library took 5
/// minutes on 2 Zen 4 cores, and LLVM's time trace put 268 of its 522 s in the four backward entry
/// points; 1 minute 40 s with the passes out of line), and a program links only the operations it calls.
macro_rules! tier_entries {
    ($module:ident, $token:ty $(, $features:literal)?) => {
        mod $module {
            #![allow(unused_unsafe)]
            // The entry points take the operations' arguments as they are.
            #![allow(clippy::too_many_arguments)]
            use crate::kernels::backward::{self, BackOut, BackParams, Bufs, Coef, Coefs, GradData, Mid, Totals};
            use crate::kernels::normalize::Params;
            use crate::kernels::ops::{self, Call, Data, ParamSrc};
            use crate::kernels::{AddRelu, Epi, Epilogue, Floor, GROUP, InPlace, Io, Plain, Prefetch, Split, WIDE_GROUP};
            use crate::kernels::limit;
            use crate::layout::TensorDesc;

            type Affine<'a> = (Option<&'a [f32]>, Option<&'a [f32]>, f32);

            $(#[target_feature(enable = $features)])?
            #[inline(never)]
            fn moments(t: $token, desc: &TensorDesc, x: &[f32], mean: &mut [f32], var: &mut [f32]) {
                ops::moments_op(t, desc, x, mean, var)
            }

            $(#[target_feature(enable = $features)])?
            #[inline(never)]
            fn partials(t: $token, desc: &TensorDesc, x: &[f32], out: &mut [crate::partial::Partial]) {
                ops::partials_op(t, desc, x, out)
            }

            // The statistics of a channel range, once per tier for `moments` and every training entry
            // point (see `Outlined`).
            $(#[target_feature(enable = $features)])?
            #[inline(never)]
            fn stats_narrow(t: $token, desc: &TensorDesc, x: &[f32], c: (usize, usize), m: &mut [f32], lo: &mut [f32], v: &mut [f32]) {
                ops::moments_range::<$token, GROUP, false>(t, desc, x, c.0, c.1, m, lo, v)
            }

            $(#[target_feature(enable = $features)])?
            #[inline(never)]
            fn stats_wide(t: $token, desc: &TensorDesc, x: &[f32], c: (usize, usize), m: &mut [f32], lo: &mut [f32], v: &mut [f32]) {
                ops::moments_range::<$token, WIDE_GROUP, true>(t, desc, x, c.0, c.1, m, lo, v)
            }

            impl ops::Outlined for $token {
                #[inline(always)]
                fn range_stats(
                    self,
                    wide: bool,
                    desc: &TensorDesc,
                    x: &[f32],
                    c0: usize,
                    c1: usize,
                    mean: &mut [f32],
                    lo: &mut [f32],
                    var: &mut [f32],
                ) {
                    // SAFETY: `self` is the tier's token, whose existence proves that the CPU supports
                    // the features these entry points enable (see the token's `new_unchecked`).
                    unsafe {
                        if wide {
                            stats_wide(self, desc, x, (c0, c1), mean, lo, var)
                        } else {
                            stats_narrow(self, desc, x, (c0, c1), mean, lo, var)
                        }
                    }
                }

                #[inline(always)]
                fn normalize_range<I: Io, const PB: usize, const CH: bool, E: Epilogue, const TRAIN: bool>(
                    self,
                    desc: &TensorDesc,
                    io: &mut I,
                    c: (usize, usize),
                    p: &Params<'_>,
                    stream: bool,
                    pf: &mut Prefetch,
                    e: E,
                ) {
                    // SAFETY: as above.
                    unsafe { normalize_range::<I, PB, CH, E, TRAIN>(self, desc, io, c, p, stream, pf, e) }
                }
            }

            // The normalise pass over a channel range, once per buffer kind, group size, epilogue and
            // statistics kind (see `Outlined`).
            $(#[target_feature(enable = $features)])?
            #[inline(never)]
            fn normalize_range<I: Io, const PB: usize, const CH: bool, E: Epilogue, const TRAIN: bool>(
                t: $token,
                desc: &TensorDesc,
                io: &mut I,
                c: (usize, usize),
                p: &Params<'_>,
                stream: bool,
                pf: &mut Prefetch,
                e: E,
            ) {
                ops::normalize_range::<$token, I, PB, CH, E, TRAIN>(t, desc, io, c.0, c.1, p, stream, pf, e)
            }

            impl backward::BackPieces for $token {
                #[inline(always)]
                fn reduce(
                    self,
                    desc: &TensorDesc,
                    data: (&[f32], &[f32], &[f32]),
                    c: (usize, usize),
                    chunk: (usize, usize),
                    t: &mut Totals<'_>,
                    mid: &mut Mid<'_>,
                    pat: &mut [f32],
                ) {
                    // SAFETY: as for `Outlined`.
                    unsafe { back_reduce(self, desc, data, c, chunk, t, mid, pat) }
                }

                #[inline(always)]
                fn elem<const IP: bool, const TRAIN: bool, const N: usize>(
                    self,
                    desc: &TensorDesc,
                    d: Bufs<'_>,
                    c: (usize, usize),
                    coef: &[Coef],
                    co: Coefs<'_, N>,
                    stream: bool,
                ) {
                    // SAFETY: as for `Outlined`.
                    unsafe { back_elem::<IP, TRAIN, N>(self, desc, d, c, coef, co, stream) }
                }
            }

            // The backward pass's reduce half, once per tier, and its element half, once per buffer
            // kind, statistics kind and pattern size (see `BackPieces`).
            $(#[target_feature(enable = $features)])?
            #[inline(never)]
            fn back_reduce(
                t: $token,
                desc: &TensorDesc,
                (x, dy, mean): (&[f32], &[f32], &[f32]),
                c: (usize, usize),
                chunk: (usize, usize),
                tot: &mut Totals<'_>,
                mid: &mut Mid<'_>,
                pat: &mut [f32],
            ) {
                backward::reduce_range(t, desc, x, dy, mean, c, chunk, tot, mid, pat)
            }

            $(#[target_feature(enable = $features)])?
            #[inline(never)]
            fn back_elem<const IP: bool, const TRAIN: bool, const N: usize>(
                t: $token,
                desc: &TensorDesc,
                mut d: Bufs<'_>,
                c: (usize, usize),
                coef: &[Coef],
                mut co: Coefs<'_, N>,
                stream: bool,
            ) {
                backward::elem_layout::<$token, IP, TRAIN, N>(t, desc, &mut d, c.0, c.1, coef, &mut co, stream)
            }

            // One entry point per operation, buffer kind and epilogue type (`Plain`, `Floor` for ReLU,
            // `AddRelu`): each holds one copy of its pass, and the plain pass has no epilogue code.
            $(#[target_feature(enable = $features)])?
            #[inline(never)]
            fn training_split(
                t: $token,
                desc: &TensorDesc,
                x: &[f32],
                y: &mut [f32],
                a: Affine<'_>,
                mean: &mut [f32],
                var: &mut [f32],
                e: &Epi<'_>,
            ) {
                ops::training_op(t, desc, &mut Split { x, y }, a, mean, var, true, Plain, e)
            }

            $(#[target_feature(enable = $features)])?
            #[inline(never)]
            fn training_split_relu(
                t: $token,
                desc: &TensorDesc,
                x: &[f32],
                y: &mut [f32],
                a: Affine<'_>,
                mean: &mut [f32],
                var: &mut [f32],
                e: &Epi<'_>,
            ) {
                ops::training_op(t, desc, &mut Split { x, y }, a, mean, var, true, Floor(0.0), e)
            }

            $(#[target_feature(enable = $features)])?
            #[inline(never)]
            fn training_in_place(
                t: $token,
                desc: &TensorDesc,
                xy: &mut [f32],
                a: Affine<'_>,
                mean: &mut [f32],
                var: &mut [f32],
                e: &Epi<'_>,
            ) {
                ops::training_op(t, desc, &mut InPlace { xy }, a, mean, var, false, Plain, e)
            }

            $(#[target_feature(enable = $features)])?
            #[inline(never)]
            fn training_in_place_relu(
                t: $token,
                desc: &TensorDesc,
                xy: &mut [f32],
                a: Affine<'_>,
                mean: &mut [f32],
                var: &mut [f32],
                e: &Epi<'_>,
            ) {
                ops::training_op(t, desc, &mut InPlace { xy }, a, mean, var, false, Floor(0.0), e)
            }

            $(#[target_feature(enable = $features)])?
            #[inline(never)]
            fn training_split_add(
                t: $token,
                desc: &TensorDesc,
                x: &[f32],
                y: &mut [f32],
                a: Affine<'_>,
                mean: &mut [f32],
                var: &mut [f32],
                z: &[f32],
                e: &Epi<'_>,
            ) {
                ops::training_op(t, desc, &mut Split { x, y }, a, mean, var, true, AddRelu(z), e)
            }

            $(#[target_feature(enable = $features)])?
            #[inline(never)]
            fn training_in_place_add(
                t: $token,
                desc: &TensorDesc,
                xy: &mut [f32],
                a: Affine<'_>,
                mean: &mut [f32],
                var: &mut [f32],
                z: &[f32],
                e: &Epi<'_>,
            ) {
                ops::training_op(t, desc, &mut InPlace { xy }, a, mean, var, false, AddRelu(z), e)
            }

            $(#[target_feature(enable = $features)])?
            #[inline(never)]
            fn normalize_split(t: $token, desc: &TensorDesc, x: &[f32], y: &mut [f32], params: ParamSrc<'_>, e: &Epi<'_>) {
                ops::normalize_op(t, desc, &mut Split { x, y }, params, true, Plain, e)
            }

            $(#[target_feature(enable = $features)])?
            #[inline(never)]
            fn normalize_split_relu(t: $token, desc: &TensorDesc, x: &[f32], y: &mut [f32], params: ParamSrc<'_>, e: &Epi<'_>) {
                ops::normalize_op(t, desc, &mut Split { x, y }, params, true, Floor(0.0), e)
            }

            $(#[target_feature(enable = $features)])?
            #[inline(never)]
            fn normalize_in_place(t: $token, desc: &TensorDesc, xy: &mut [f32], params: ParamSrc<'_>, e: &Epi<'_>) {
                ops::normalize_op(t, desc, &mut InPlace { xy }, params, false, Plain, e)
            }

            $(#[target_feature(enable = $features)])?
            #[inline(never)]
            fn normalize_in_place_relu(t: $token, desc: &TensorDesc, xy: &mut [f32], params: ParamSrc<'_>, e: &Epi<'_>) {
                ops::normalize_op(t, desc, &mut InPlace { xy }, params, false, Floor(0.0), e)
            }

            $(#[target_feature(enable = $features)])?
            #[inline(never)]
            fn normalize_split_add(
                t: $token,
                desc: &TensorDesc,
                x: &[f32],
                y: &mut [f32],
                params: ParamSrc<'_>,
                z: &[f32],
                e: &Epi<'_>,
            ) {
                ops::normalize_op(t, desc, &mut Split { x, y }, params, true, AddRelu(z), e)
            }

            $(#[target_feature(enable = $features)])?
            #[inline(never)]
            fn normalize_in_place_add(t: $token, desc: &TensorDesc, xy: &mut [f32], params: ParamSrc<'_>, z: &[f32], e: &Epi<'_>) {
                ops::normalize_op(t, desc, &mut InPlace { xy }, params, false, AddRelu(z), e)
            }

            $(#[target_feature(enable = $features)])?
            #[inline(never)]
            fn normalize_partials(t: $token, desc: &TensorDesc, data: Data<'_>, p: ops::PartialsSrc<'_>, e: &Epi<'_>) {
                // The plain pass, then the epilogue over its output (`finish_all`: the fused bits):
                // one entry point, one copy of the pass.
                match data {
                    Data::Split(x, y) => {
                        ops::normalize_partials_op(t, desc, &mut Split { x, y: &mut *y }, p, true);
                        if e.is_some() {
                            ops::finish_all(desc, y, e);
                        }
                    }
                    Data::InPlace(xy) => {
                        ops::normalize_partials_op(t, desc, &mut InPlace { xy: &mut *xy }, p, false);
                        if e.is_some() {
                            ops::finish_all(desc, xy, e);
                        }
                    }
                }
            }

            $(#[target_feature(enable = $features)])?
            #[inline(never)]
            fn relu_grad(t: $token, y: &[f32], data: Data<'_>) {
                match data {
                    Data::Split(x, y_out) => ops::relu_grad_op(t, y, &mut Split { x, y: y_out }),
                    Data::InPlace(xy) => ops::relu_grad_op(t, y, &mut InPlace { xy }),
                }
            }

            // One entry point for the backward pass, its element half and its reduce half: the
            // reduction is compiled once per tier.
            $(#[target_feature(enable = $features)])?
            #[inline(never)]
            fn backward(
                t: $token,
                desc: &TensorDesc,
                x: &[f32],
                data: GradData<'_>,
                p: &BackParams<'_>,
                out: &mut BackOut<'_>,
            ) {
                backward::backward_op(t, desc, x, data, p, out)
            }

            $(#[target_feature(enable = $features)])?
            #[inline(never)]
            fn read_pass(t: $token, x: &[f32]) -> f32 {
                limit::read_pass(t, x)
            }

            $(#[target_feature(enable = $features)])?
            #[inline(never)]
            fn scale_pass(t: $token, x: &[f32], y: &mut [f32], stream: bool) {
                limit::scale_pass(t, x, y, stream)
            }

            /// Runs `call` with the token `t`.
            #[inline(always)]
            pub(in crate::arch) fn dispatch(t: $token, call: Call<'_>) {
                // SAFETY: `t` is the tier's token, whose existence proves that the CPU supports the
                // features these entry points enable (see the token's `new_unchecked`).
                unsafe {
                    match call {
                        Call::Moments { desc, x, mean, var } => moments(t, desc, x, mean, var),
                        Call::Partials { desc, x, out } => partials(t, desc, x, out),
                        #[cfg(feature = "rayon")]
                        Call::RangeMoments { desc, x, c0, c1, mean, lo, var } => {
                            ops::range_moments_op(t, desc, x, (c0, c1), mean, lo, var)
                        }
                        // A residual where a scale may overflow: the plain pass (which finishes such channels
                        // after its vector pass), then the epilogue over the output.
                        Call::Training { desc, data, gamma, beta, eps, mean, var, epi } => {
                            let a = (gamma, beta, eps);
                            match (data, epi.z) {
                                (Data::Split(x, y), Some(_)) if ops::may_overflow(gamma) => {
                                    training_split(t, desc, x, y, a, mean, var, &Epi::NONE);
                                    ops::finish_all(desc, y, &epi);
                                }
                                (Data::InPlace(xy), Some(_)) if ops::may_overflow(gamma) => {
                                    training_in_place(t, desc, xy, a, mean, var, &Epi::NONE);
                                    ops::finish_all(desc, xy, &epi);
                                }
                                (Data::Split(x, y), Some(z)) => training_split_add(t, desc, x, y, a, mean, var, z, &epi),
                                (Data::InPlace(xy), Some(z)) => training_in_place_add(t, desc, xy, a, mean, var, z, &epi),
                                (Data::Split(x, y), None) if epi.relu => training_split_relu(t, desc, x, y, a, mean, var, &epi),
                                (Data::InPlace(xy), None) if epi.relu => training_in_place_relu(t, desc, xy, a, mean, var, &epi),
                                (Data::Split(x, y), None) => training_split(t, desc, x, y, a, mean, var, &epi),
                                (Data::InPlace(xy), None) => training_in_place(t, desc, xy, a, mean, var, &epi),
                            }
                        }
                        Call::Normalize { desc, data, params, epi } => {
                            let gamma = params.gamma();
                            match (data, epi.z) {
                                (Data::Split(x, y), Some(_)) if ops::may_overflow(gamma) => {
                                    normalize_split(t, desc, x, y, params, &Epi::NONE);
                                    ops::finish_all(desc, y, &epi);
                                }
                                (Data::InPlace(xy), Some(_)) if ops::may_overflow(gamma) => {
                                    normalize_in_place(t, desc, xy, params, &Epi::NONE);
                                    ops::finish_all(desc, xy, &epi);
                                }
                                (Data::Split(x, y), Some(z)) => normalize_split_add(t, desc, x, y, params, z, &epi),
                                (Data::InPlace(xy), Some(z)) => normalize_in_place_add(t, desc, xy, params, z, &epi),
                                (Data::Split(x, y), None) if epi.relu => normalize_split_relu(t, desc, x, y, params, &epi),
                                (Data::InPlace(xy), None) if epi.relu => normalize_in_place_relu(t, desc, xy, params, &epi),
                                (Data::Split(x, y), None) => normalize_split(t, desc, x, y, params, &epi),
                                (Data::InPlace(xy), None) => normalize_in_place(t, desc, xy, params, &epi),
                            }
                        }
                        Call::NormalizePartials { desc, data, partials, gamma, beta, eps, epi } => {
                            normalize_partials(t, desc, data, (partials, gamma, beta, eps), &epi)
                        }
                        Call::ReluGrad { y, data } => relu_grad(t, y, data),
                        Call::Backward { desc, x, data, params, mut out } => {
                            backward(t, desc, x, data, &params, &mut out)
                        }
                        Call::ReadPass { x, sum } => *sum = read_pass(t, x),
                        Call::ScalePass { x, y, stream } => scale_pass(t, x, y, stream),
                    }
                }
            }
        }
    };
}

tier_entries!(scalar_entries, crate::arch::scalar::Scalar);

portable_compiled! {
    yes: {
        /// Whether the portable tier is compiled in.
        pub(crate) const PORTABLE_COMPILED: bool = true;
        tier_entries!(portable_entries, crate::arch::portable::Portable);
        /// Runs `call` on the portable tier: the fallback of [`run`].
        #[inline(always)]
        fn run_fallback(call: Call<'_>) {
            portable_entries::dispatch(portable::Portable, call)
        }
    }
    no: {
        /// Whether the portable tier is compiled in.
        pub(crate) const PORTABLE_COMPILED: bool = false;
        /// Runs `call` on the scalar tier, the fallback of [`run`] where the portable one is not compiled.
        #[inline(always)]
        fn run_fallback(call: Call<'_>) {
            scalar_entries::dispatch(scalar::Scalar, call)
        }
    }
}
#[cfg(target_arch = "x86_64")]
tier_entries!(avx2_entries, crate::arch::x86_64::avx2::Avx2, "avx2,fma");
#[cfg(target_arch = "x86_64")]
tier_entries!(avx512_entries, crate::arch::x86_64::avx512::Avx512, "avx512f,avx2,fma");

#[cfg(test)]
mod tests {
    //! Each tier's primitives against plain scalar arithmetic, at every partial length.
    use super::Simd;

    fn values(seed: u32, n: usize) -> impl Iterator<Item = f32> {
        (0..n as u32).map(move |i| {
            let h = (i.wrapping_add(seed)).wrapping_mul(2_654_435_761) >> 8;
            (h % 2001) as f32 / 8.0 - 125.0
        })
    }

    fn to_vec<S: Simd>(s: S, v: S::V) -> Vec<f32> {
        let mut out = vec![0.0; S::LANES];
        s.store(&mut out, v);
        out
    }

    fn check<S: Simd>(s: S) {
        let l = S::LANES;
        let a: Vec<f32> = values(1, l).collect();
        let b: Vec<f32> = values(7, l).collect();
        let (va, vb) = (s.load(&a), s.load(&b));
        assert_eq!(to_vec(s, va), a);
        let lanes = |v: S::V| to_vec(s, v);
        for i in 0..l {
            assert_eq!(lanes(s.add(va, vb))[i], a[i] + b[i]);
            assert_eq!(lanes(s.sub(va, vb))[i], a[i] - b[i]);
            assert_eq!(lanes(s.mul(va, vb))[i], a[i] * b[i]);
            assert_eq!(lanes(s.min(va, vb))[i], if a[i] < b[i] { a[i] } else { b[i] });
            assert_eq!(lanes(s.max(va, vb))[i], if a[i] > b[i] { a[i] } else { b[i] });
            let masked = if a[i] <= 0.0 { 0.0 } else { b[i] };
            assert_eq!(lanes(s.zero_where_not_positive(va, vb))[i].to_bits(), masked.to_bits());
            // Small multiples of 1/8: the product and sum are exact, fused or not.
            assert_eq!(lanes(s.mul_add(va, vb, va))[i], a[i] * b[i] + a[i]);
        }
        assert_eq!(lanes(s.splat(2.5)), vec![2.5; l]);
        // hsum of exactly representable values is their exact sum.
        assert_eq!(s.hsum(va), a.iter().sum::<f32>());
        let fill = s.splat(-9.0);
        for n in 0..l {
            let got = lanes(s.load_part(&a[..n], fill));
            let want: Vec<f32> = (0..l).map(|i| if i < n { a[i] } else { -9.0 }).collect();
            assert_eq!(got, want, "load_part({n})");
            let mut out = vec![f32::NAN; l + 1];
            s.store_part(&mut out[..n], va);
            assert_eq!(&out[..n], &a[..n]);
            assert!(out[n..].iter().all(|v| v.is_nan()), "store_part({n}) wrote past the slice");
        }
        for k in 1..l {
            let want: Vec<f32> = (0..l).map(|i| if i < k { a[i] } else { b[i] }).collect();
            assert_eq!(lanes(s.blend_first(k, va, vb)), want, "blend_first({k})");
        }
        // NaN and signed zeros: `max(0, y)` keeps a NaN or −0 `y`; a NaN mask keeps the value.
        let relu = |y: f32| lanes(s.max(s.splat(0.0), s.splat(y)))[0];
        assert!(relu(f32::NAN).is_nan());
        assert_eq!(relu(-0.0).to_bits(), (-0.0f32).to_bits());
        assert_eq!(relu(-1.0).to_bits(), 0);
        assert_eq!(relu(f32::NEG_INFINITY).to_bits(), 0);
        assert_eq!(relu(2.5), 2.5);
        for (y, want) in [(f32::NAN, 3.0), (-0.0, 0.0), (0.0, 0.0), (-1.0, 0.0), (1e-45, 3.0)] {
            let kept = lanes(s.zero_where_not_positive(s.splat(y), s.splat(3.0)))[0];
            assert_eq!(kept.to_bits(), f32::to_bits(want), "mask by {y}");
        }
        let ones = s.splat(f32::from_bits(u32::MAX));
        assert_eq!(lanes(s.and(va, ones)), a);
        assert!(lanes(s.and(s.splat(f32::NAN), s.splat(0.0))).iter().all(|v| v.to_bits() == 0));
        let mut out = vec![0.0; l];
        s.stream(&mut out, va);
        s.fence();
        assert_eq!(out, a);
        // 1/√v from correctly rounded operations, bit for bit; 0 where v == 0.
        let special =
            [0.0, -0.0, 1e-45, 1.2e-38, 0.25, 2.0, 3.0, 1e30, f32::MAX, f32::INFINITY, -1.0, f32::NAN];
        for chunk in special.chunks(l) {
            let v = if chunk.len() == l { s.load(chunk) } else { s.load_part(chunk, s.splat(1.0)) };
            let got = lanes(s.inv_sqrt_or_zero(v));
            for (i, &x) in chunk.iter().enumerate() {
                let want = if x == 0.0 { 0.0 } else { 1.0 / x.sqrt() };
                assert!(
                    got[i].to_bits() == want.to_bits() || (got[i].is_nan() && want.is_nan()),
                    "1/sqrt({x})"
                );
            }
        }
    }

    #[test]
    fn scalar_primitives() {
        check(super::scalar::Scalar);
    }

    #[test]
    fn portable_primitives() {
        check(super::portable::Portable);
    }

    #[cfg(target_arch = "x86_64")]
    #[test]
    fn x86_primitives() {
        if crate::Isa::Avx2.is_available() {
            // SAFETY: availability checked on the line above.
            check(unsafe { super::x86_64::avx2::Avx2::new_unchecked() });
        }
        if crate::Isa::Avx512.is_available() {
            // SAFETY: availability checked on the line above.
            check(unsafe { super::x86_64::avx512::Avx512::new_unchecked() });
        }
    }

    /// The no-std square root (through `wide`) is correctly rounded: equal to std's on many bit patterns.
    #[test]
    fn software_sqrt_is_correctly_rounded() {
        let mut x = 0x1234_5678u32;
        for _ in 0..if cfg!(miri) { 2_000 } else { 200_000 } {
            x ^= x << 13;
            x ^= x >> 17;
            x ^= x << 5;
            let f = f32::from_bits(x & 0x7fff_ffff);
            let got = wide::f32x4::splat(f).sqrt().to_array()[0];
            assert!(got.to_bits() == f.sqrt().to_bits() || (got.is_nan() && f.is_nan()), "sqrt({f:e})");
        }
    }
}
