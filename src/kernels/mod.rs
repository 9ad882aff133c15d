#![forbid(unsafe_code)]
//! The layout kernels, written once over the crate-private [`Simd`] trait and instantiated per tier.
//!
//! - `stats`: one-read-pass per-channel statistics (shifted block sums merged with Chan's formula).
//! - `normalize`: the centred normalise-affine pass `y = (x − m)·scale + shift`.
//! - `backward`: the backward pass's gradient sums and element pass (`backward_op`).
//! - `ops`: the per-layout drivers behind every public operation: `moments_op`, `training_op` and
//!   `normalize_op`, which each tier instantiates in its own entry points (`crate::arch`).

pub(crate) mod backward;
pub(crate) mod compact;
pub(crate) mod limit;
pub(crate) mod normalize;
pub(crate) mod ops;
pub(crate) mod stats;

use crate::arch::Simd;

/// Channels per scratch group: the per-channel state and scale buffers live on the stack in arrays of
/// this many f32, so nothing is allocated. A multiple of every tier's lane count.
pub(crate) const GROUP: usize = 256;

/// The group for channels-last tensors with more than [`GROUP`] channels: whole rows of up to this many
/// channels in one pass (about 80 KB of stack), so wide rows are not read as strided segments. Targets
/// with 32-bit pointers (microcontrollers) keep the small group.
#[cfg(target_pointer_width = "64")]
pub(crate) const WIDE_GROUP: usize = 2048;
#[cfg(not(target_pointer_width = "64"))]
pub(crate) const WIDE_GROUP: usize = GROUP;

/// Floats per 64-byte cache line.
pub(crate) const LINE_FLOATS: usize = 16;

/// Vectors processed side by side along a row of channels (register tile).
pub(crate) const TILE: usize = 4;

/// The forward passes' epilogue on each output value `y` (issue 12, item 2): `y + z[i]` where a
/// residual `z` (the tensor's length) is given, then `max(0, ·)` with `relu`. `max` keeps a NaN and a
/// `−0`; the sum is one rounding. Applied where the value is computed, before the padding mask (padding
/// stays +0.0 whatever `z` holds there), so a fused pass writes each output once.
#[derive(Clone, Copy, Debug, Default)]
pub(crate) struct Epi<'a> {
    pub relu: bool,
    pub z: Option<&'a [f32]>,
}

impl Epi<'_> {
    /// No epilogue: the plain pass.
    pub(crate) const NONE: Epi<'static> = Epi { relu: false, z: None };

    /// Whether there is anything to apply.
    #[inline(always)]
    pub(crate) fn is_some(&self) -> bool {
        self.relu || self.z.is_some()
    }

    /// The epilogue of the one value `y` of element `at` (the same operations as a lane of
    /// [`Epilogue::apply`]).
    #[inline(always)]
    pub(crate) fn one(&self, at: usize, y: f32) -> f32 {
        let y = match self.z {
            Some(z) => y + z[at],
            None => y,
        };
        if self.relu && 0.0 > y { 0.0 } else { y }
    }
}

/// The vector passes' epilogue, a type per kind so that the loops carry no test of it: [`Floor`] (the
/// plain pass, or ReLU) and [`AddRelu`]. Each element is computed by the same operations as
/// [`Epi::one`].
pub(crate) trait Epilogue: Copy {
    /// Whether it adds a residual (never run where a scale may overflow: `ops::may_overflow`).
    const RESIDUAL: bool;
    /// The epilogue of the vector `y` of elements `at..at + LANES`.
    fn apply<S: Simd>(self, s: S, at: usize, y: S::V) -> S::V;
    /// [`apply`](Self::apply) where only the first `n ≤ LANES` lanes are elements (a residual is read at
    /// `at..at + n` only).
    fn part<S: Simd>(self, s: S, at: usize, n: usize, y: S::V) -> S::V;
    /// This epilogue, or with `off` the same without its effect (for a group with an overflowed scale,
    /// finished after its vector pass; never `off` where `RESIDUAL`). The choice is opaque to the
    /// optimiser: a visible constant let it compile the whole inlined pass twice (training's entry
    /// points grew by 40 %).
    fn unless(self, off: bool) -> Self;
}

/// The plain pass: `y` as it is.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Plain;

impl Epilogue for Plain {
    const RESIDUAL: bool = false;
    #[inline(always)]
    fn apply<S: Simd>(self, _s: S, _at: usize, y: S::V) -> S::V {
        y
    }
    #[inline(always)]
    fn part<S: Simd>(self, _s: S, _at: usize, _n: usize, y: S::V) -> S::V {
        y
    }
    #[inline(always)]
    fn unless(self, _off: bool) -> Self {
        self
    }
}

/// `max(floor, y)`: ReLU with `floor = 0`, no effect with `floor = −∞` (`−∞ > y` is false for every
/// `y`, NaN included, so `max` returns `y` bit for bit: one branch-free instruction in place of a test).
#[derive(Clone, Copy, Debug)]
pub(crate) struct Floor(pub f32);

impl Epilogue for Floor {
    const RESIDUAL: bool = false;
    #[inline(always)]
    fn apply<S: Simd>(self, s: S, _at: usize, y: S::V) -> S::V {
        s.max(s.splat(self.0), y)
    }
    #[inline(always)]
    fn part<S: Simd>(self, s: S, _at: usize, _n: usize, y: S::V) -> S::V {
        s.max(s.splat(self.0), y)
    }
    #[inline(always)]
    fn unless(self, off: bool) -> Self {
        Floor(core::hint::black_box(if off { f32::NEG_INFINITY } else { self.0 }))
    }
}

/// `max(0, y + z)`, the residual `z` indexed like the output.
#[derive(Clone, Copy, Debug)]
pub(crate) struct AddRelu<'a>(pub &'a [f32]);

impl Epilogue for AddRelu<'_> {
    const RESIDUAL: bool = true;
    #[inline(always)]
    fn apply<S: Simd>(self, s: S, at: usize, y: S::V) -> S::V {
        s.max(s.splat(0.0), s.add(y, s.load(&self.0[at..])))
    }
    #[inline(always)]
    fn part<S: Simd>(self, s: S, at: usize, n: usize, y: S::V) -> S::V {
        let z =
            if n < S::LANES { s.load_part(&self.0[at..at + n], s.splat(0.0)) } else { s.load(&self.0[at..]) };
        s.max(s.splat(0.0), s.add(y, z))
    }
    #[inline(always)]
    fn unless(self, _off: bool) -> Self {
        self
    }
}

/// Where the data comes from and goes to: separate input and output, or one buffer updated in place.
/// Kernels are generic over it, so in-place and out-of-place calls run the same instructions and give
/// the same bits.
pub(crate) trait Io {
    /// Whether output and input are one buffer (never streamed: non-temporal stores are for outputs
    /// that are not read again soon).
    const IN_PLACE: bool;
    /// The input values.
    fn input(&self) -> &[f32];
    /// The output values (the input's buffer, in place).
    fn output(&mut self) -> &mut [f32];
    fn load<S: Simd>(&self, s: S, at: usize) -> S::V;
    /// Loads `n < LANES` values at `at`; other lanes are `fill`.
    fn load_part<S: Simd>(&self, s: S, at: usize, n: usize, fill: S::V) -> S::V;
    fn store<S: Simd>(&mut self, s: S, at: usize, v: S::V);
    /// Stores the first `n < LANES` lanes at `at`.
    fn store_part<S: Simd>(&mut self, s: S, at: usize, n: usize, v: S::V);
    /// How many elements the output at `at` lies past a 64-byte cache-line boundary.
    fn out_line_phase(&self, at: usize) -> usize;
    /// Loads four consecutive vectors at `at` (one bounds check for all four).
    #[inline(always)]
    fn load4<S: Simd>(&self, s: S, at: usize) -> [S::V; 4] {
        let x = &self.input()[at..at + 4 * S::LANES];
        [s.load(x), s.load(&x[S::LANES..]), s.load(&x[2 * S::LANES..]), s.load(&x[3 * S::LANES..])]
    }
    /// Stores four consecutive vectors at `at`, non-temporally with `stream`.
    fn store4<S: Simd>(&mut self, s: S, at: usize, v: [S::V; 4], stream: bool);
    /// Stores one vector at `at`, non-temporally with `stream` (out of place only).
    fn put<S: Simd>(&mut self, s: S, at: usize, v: S::V, stream: bool);
    /// `y[i] = f(x[i])` for the `count` elements `i = at, at + step, …` (scalar code: the scalar tier's
    /// pass, [`compact`]).
    fn map_strided(&mut self, at: usize, step: usize, count: usize, f: impl Fn(f32) -> f32);
    /// `y = (x − m)·s + b` (product and sum each rounded) at the `count` elements `at, at + step, …`,
    /// with `p = [m, s, b]`: `map_strided`, through `crate::arch::compact`'s loops where contiguous.
    fn affine_strided(&mut self, at: usize, step: usize, count: usize, p: [f32; 3]);
    /// `y[i + j] = (x[i + j] − m[j])·s[j] + b[j]`, `j < 4`, at the `count` positions `i = at, at + step,
    /// …` (`step ≥ 4`), with `p = [m, s, b]` (through `crate::arch::compact`'s loops).
    fn affine_groups4(&mut self, at: usize, step: usize, count: usize, p: [[f32; 4]; 3]);
    /// Applies the epilogue `e` to the output at the `count` elements `at, at + step, …` (scalar code:
    /// the compact passes, and channels finished after the vector pass).
    #[inline(always)]
    fn finish_strided(&mut self, at: usize, step: usize, count: usize, e: &Epi<'_>) {
        let r = strided_span(at, step, count);
        let start = r.start;
        for (k, v) in self.output()[r].iter_mut().step_by(step.max(1)).enumerate() {
            *v = e.one(start + k * step, *v);
        }
    }
    /// Prefetches the input lines of the next `n` floats of `pf` (see [`Prefetch`]).
    #[inline(always)]
    fn prefetch<S: Simd>(&self, s: S, pf: &mut Prefetch, n: usize) {
        let x = self.input();
        let mut done = 0;
        while done < n {
            match pf.next_line() {
                Some(i) if i < x.len() => s.prefetch(&x[i..]),
                _ => return,
            }
            done += 16;
        }
    }
}

/// The input lines of the next training chunk, handed out one line (16 floats) at a time while the
/// current chunk is normalised: the next chunk's reads then overlap this chunk's writes, as in inference.
/// The chunk is `outer` runs of `len` floats, run `o` starting at `start + o·stride`.
#[derive(Clone, Copy, Debug, Default)]
pub(crate) struct Prefetch {
    pub start: usize,
    pub len: usize,
    pub stride: usize,
    pub outer: usize,
    o: usize,
    at: usize,
}

impl Prefetch {
    pub(crate) fn new(start: usize, len: usize, stride: usize, outer: usize) -> Self {
        Prefetch { start, len, stride, outer, o: 0, at: 0 }
    }

    /// Nothing to prefetch.
    pub(crate) fn none() -> Self {
        Prefetch::default()
    }

    #[inline(always)]
    fn next_line(&mut self) -> Option<usize> {
        if self.at >= self.len {
            self.o += 1;
            self.at = 0;
        }
        if self.o >= self.outer || self.len == 0 {
            return None;
        }
        let i = self.start + self.o * self.stride + self.at;
        self.at += 16;
        Some(i)
    }
}

/// Stores four vectors into `y` (at least `4·LANES` long).
#[inline(always)]
fn store4_into<S: Simd>(s: S, y: &mut [f32], v: [S::V; 4], stream: bool) {
    let l = S::LANES;
    let y = &mut y[..4 * l];
    for (u, v) in v.into_iter().enumerate() {
        if stream { s.stream(&mut y[u * l..], v) } else { s.store(&mut y[u * l..], v) }
    }
}

/// Out of place: read `x`, write `y` (same length).
pub(crate) struct Split<'a> {
    pub x: &'a [f32],
    pub y: &'a mut [f32],
}

/// In place: read and write `xy`.
pub(crate) struct InPlace<'a> {
    pub xy: &'a mut [f32],
}

/// The range `at..` that `count` groups of four, `step` apart, span (empty for none).
#[inline(always)]
fn groups_span(at: usize, step: usize, count: usize) -> core::ops::Range<usize> {
    if count == 0 { at..at } else { at..at + (count - 1) * step + 4 }
}

/// The range `at..` that `count` elements `step` apart span (empty for none).
#[inline(always)]
fn strided_span(at: usize, step: usize, count: usize) -> core::ops::Range<usize> {
    if count == 0 { at..at } else { at..at + (count - 1) * step + 1 }
}

impl Io for Split<'_> {
    const IN_PLACE: bool = false;
    #[inline(always)]
    fn affine_strided(&mut self, at: usize, step: usize, count: usize, p: [f32; 3]) {
        if step == 1 {
            let r = strided_span(at, step, count);
            crate::arch::compact::run(&self.x[r.clone()], &mut self.y[r], p);
        } else {
            self.map_strided(at, step, count, |x| crate::arch::compact::affine(x, p));
        }
    }
    #[inline(always)]
    fn affine_groups4(&mut self, at: usize, step: usize, count: usize, p: [[f32; 4]; 3]) {
        let r = groups_span(at, step, count);
        crate::arch::compact::rows4(&self.x[r.clone()], &mut self.y[r], step, p);
    }
    #[inline(always)]
    fn map_strided(&mut self, at: usize, step: usize, count: usize, f: impl Fn(f32) -> f32) {
        let r = strided_span(at, step, count);
        let (x, y) = (&self.x[r.clone()], &mut self.y[r]);
        if step == 1 {
            for (y, &x) in y.iter_mut().zip(x) {
                *y = f(x);
            }
        } else {
            for (y, &x) in y.iter_mut().step_by(step).zip(x.iter().step_by(step)) {
                *y = f(x);
            }
        }
    }
    #[inline(always)]
    fn input(&self) -> &[f32] {
        self.x
    }
    #[inline(always)]
    fn output(&mut self) -> &mut [f32] {
        self.y
    }
    #[inline(always)]
    fn load<S: Simd>(&self, s: S, at: usize) -> S::V {
        s.load(&self.x[at..])
    }
    #[inline(always)]
    fn load_part<S: Simd>(&self, s: S, at: usize, n: usize, fill: S::V) -> S::V {
        s.load_part(&self.x[at..at + n], fill)
    }
    #[inline(always)]
    fn store<S: Simd>(&mut self, s: S, at: usize, v: S::V) {
        s.store(&mut self.y[at..], v)
    }
    #[inline(always)]
    fn store_part<S: Simd>(&mut self, s: S, at: usize, n: usize, v: S::V) {
        s.store_part(&mut self.y[at..at + n], v)
    }
    #[inline(always)]
    fn out_line_phase(&self, at: usize) -> usize {
        (self.y.as_ptr() as usize / 4 + at) % LINE_FLOATS
    }
    #[inline(always)]
    fn store4<S: Simd>(&mut self, s: S, at: usize, v: [S::V; 4], stream: bool) {
        store4_into(s, &mut self.y[at..], v, stream)
    }
    #[inline(always)]
    fn put<S: Simd>(&mut self, s: S, at: usize, v: S::V, stream: bool) {
        if stream { s.stream(&mut self.y[at..], v) } else { s.store(&mut self.y[at..], v) }
    }
}

impl Io for InPlace<'_> {
    const IN_PLACE: bool = true;
    #[inline(always)]
    fn affine_strided(&mut self, at: usize, step: usize, count: usize, p: [f32; 3]) {
        if step == 1 {
            crate::arch::compact::run_in_place(&mut self.xy[strided_span(at, step, count)], p);
        } else {
            self.map_strided(at, step, count, |x| crate::arch::compact::affine(x, p));
        }
    }
    #[inline(always)]
    fn affine_groups4(&mut self, at: usize, step: usize, count: usize, p: [[f32; 4]; 3]) {
        crate::arch::compact::rows4_in_place(&mut self.xy[groups_span(at, step, count)], step, p);
    }
    #[inline(always)]
    fn map_strided(&mut self, at: usize, step: usize, count: usize, f: impl Fn(f32) -> f32) {
        let r = strided_span(at, step, count);
        if step == 1 {
            for v in &mut self.xy[r] {
                *v = f(*v);
            }
        } else {
            for v in self.xy[r].iter_mut().step_by(step) {
                *v = f(*v);
            }
        }
    }
    #[inline(always)]
    fn input(&self) -> &[f32] {
        self.xy
    }
    #[inline(always)]
    fn output(&mut self) -> &mut [f32] {
        self.xy
    }
    #[inline(always)]
    fn load<S: Simd>(&self, s: S, at: usize) -> S::V {
        s.load(&self.xy[at..])
    }
    #[inline(always)]
    fn load_part<S: Simd>(&self, s: S, at: usize, n: usize, fill: S::V) -> S::V {
        s.load_part(&self.xy[at..at + n], fill)
    }
    #[inline(always)]
    fn store<S: Simd>(&mut self, s: S, at: usize, v: S::V) {
        s.store(&mut self.xy[at..], v)
    }
    #[inline(always)]
    fn store_part<S: Simd>(&mut self, s: S, at: usize, n: usize, v: S::V) {
        s.store_part(&mut self.xy[at..at + n], v)
    }
    #[inline(always)]
    fn out_line_phase(&self, at: usize) -> usize {
        (self.xy.as_ptr() as usize / 4 + at) % LINE_FLOATS
    }
    #[inline(always)]
    fn store4<S: Simd>(&mut self, s: S, at: usize, v: [S::V; 4], _stream: bool) {
        // In place the lines are already cached and owned: ordinary stores cost no extra traffic.
        store4_into(s, &mut self.xy[at..], v, false)
    }
    #[inline(always)]
    fn put<S: Simd>(&mut self, s: S, at: usize, v: S::V, _stream: bool) {
        s.store(&mut self.xy[at..], v)
    }
}

/// A set of rows of `width` contiguous channels: row `r = o·inner + i` starts at
/// `base + o·outer_stride + i·inner_stride`. NHWC is one outer row set of N·S rows with stride C;
/// one channel block of a blocked tensor is N outer sets of S rows with stride `block`.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Rows {
    pub base: usize,
    pub outer: usize,
    pub inner: usize,
    pub outer_stride: usize,
    pub inner_stride: usize,
    pub width: usize,
}

impl Rows {
    /// Fills `runs` with the next block of at most `max` rows as runs `(start, count)` of rows at the
    /// constant stride `inner_stride` (a block spans outer sets when they are short), advancing
    /// `cursor` (`(o, i)`); returns how many runs and rows it wrote. `runs` holds at least `max`.
    #[inline(always)]
    pub(crate) fn next_block(
        &self,
        cursor: &mut (usize, usize),
        runs: &mut [(usize, usize)],
        max: usize,
    ) -> (usize, usize) {
        let (mut k, mut rows) = (0, 0);
        let (mut o, mut i) = *cursor;
        while rows < max && k < runs.len() && o < self.outer {
            let run = (self.inner - i).min(max - rows);
            runs[k] = (self.base + o * self.outer_stride + i * self.inner_stride, run);
            k += 1;
            rows += run;
            i += run;
            if i == self.inner {
                i = 0;
                o += 1;
            }
        }
        *cursor = (o, i);
        (k, rows)
    }
}

/// Loads `LANES` values of a parameter slice at `at`, reading only `p[at..]` (missing lanes are `fill`).
#[inline(always)]
pub(crate) fn load_clamped<S: Simd>(s: S, p: &[f32], at: usize, fill: S::V) -> S::V {
    if at + S::LANES <= p.len() {
        s.load(&p[at..])
    } else if at < p.len() {
        s.load_part(&p[at..], fill)
    } else {
        fill
    }
}
