#![forbid(unsafe_code)]
//! The normalise-affine pass in centred form, `y = (x − m)·scale + shift`, for every layout.
//! `channel_affine` is the same pass with `m = 0` (`x − 0` is exact).

use super::{GROUP, Io, Rows, TILE, load_clamped};
use crate::arch::Simd;

/// Per-channel parameters of a channel group, indexed from the group's first channel; each holds the
/// group's valid channels (padding excluded).
#[derive(Clone, Copy)]
pub(crate) struct Params<'a> {
    /// Subtracted before scaling; `None` means 0.
    pub mean: Option<&'a [f32]>,
    pub scale: &'a [f32],
    /// Added after scaling; `None` means 0.
    pub shift: Option<&'a [f32]>,
}

impl Params<'_> {
    /// The parameters of channels `at..at + LANES` as vectors (missing channels give 0).
    #[inline(always)]
    fn vectors<S: Simd>(&self, s: S, at: usize) -> (S::V, S::V, S::V) {
        let zero = s.splat(0.0);
        let m = self.mean.map_or(zero, |p| load_clamped(s, p, at, zero));
        let sc = load_clamped(s, self.scale, at, zero);
        let sh = self.shift.map_or(zero, |p| load_clamped(s, p, at, zero));
        (m, sc, sh)
    }
}

/// `scale[j] = gamma[j] / √(var[j] + eps)` for `j < var.len() ≤ GROUP` (1/√ correctly rounded, and 0
/// where `var + eps == 0`). `gamma: None` means 1.
#[inline(always)]
pub(crate) fn fill_scale<S: Simd>(
    s: S,
    var: &[f32],
    gamma: Option<&[f32]>,
    eps: f32,
    out: &mut [f32; GROUP],
) {
    let one = s.splat(1.0);
    let e = s.splat(eps);
    let mut at = 0;
    while at < var.len() {
        let v = s.add(load_clamped(s, var, at, one), e);
        let g = gamma.map_or(one, |g| load_clamped(s, g, at, one));
        // `at < var.len() ≤ GROUP` and GROUP is a multiple of LANES: the store is in bounds.
        s.store(&mut out[at..], s.mul(g, s.inv_sqrt_or_zero(v)));
        at += S::LANES;
    }
}

/// Normalises every row of `rows`. Channels `valid..width` of each row are padding and are written as 0.
#[inline(always)]
pub(crate) fn rows_normalize<S: Simd, I: Io>(s: S, io: &mut I, rows: &Rows, valid: usize, p: &Params<'_>) {
    let l = S::LANES;
    let w = rows.width;
    let mut cursor = (0, 0);
    let mut offs = [0usize; super::stats::ROW_BLOCK];
    loop {
        let b = rows.next_block(&mut cursor, &mut offs);
        if b == 0 {
            break;
        }
        let offs = &offs[..b];
        let mut col = 0;
        while col + TILE * l <= valid {
            normalize_tile::<S, I>(s, io, offs, col, p);
            col += TILE * l;
        }
        while col < w {
            normalize_vector(s, io, offs, col, (w - col).min(l), valid.saturating_sub(col), p);
            col += l;
        }
    }
}

/// A register tile of `TILE` full, valid vectors at column `col`.
#[inline(always)]
fn normalize_tile<S: Simd, I: Io>(s: S, io: &mut I, offs: &[usize], col: usize, p: &Params<'_>) {
    let l = S::LANES;
    let zero = s.splat(0.0);
    let mut m = [zero; TILE];
    let mut sc = [zero; TILE];
    let mut sh = [zero; TILE];
    for j in 0..TILE {
        (m[j], sc[j], sh[j]) = p.vectors(s, col + j * l);
    }
    for &off in offs {
        for j in 0..TILE {
            let at = off + col + j * l;
            let x = io.load(s, at);
            io.store(s, at, s.mul_add(s.sub(x, m[j]), sc[j], sh[j]));
        }
    }
}

/// One vector at column `col` with `wn ≤ LANES` lanes inside the row, of which the first `vn` are real
/// channels (the rest padding, written as 0).
#[inline(always)]
fn normalize_vector<S: Simd, I: Io>(
    s: S,
    io: &mut I,
    offs: &[usize],
    col: usize,
    wn: usize,
    vn: usize,
    p: &Params<'_>,
) {
    let l = S::LANES;
    let zero = s.splat(0.0);
    let (m, sc, sh) = p.vectors(s, col);
    for &off in offs {
        let at = off + col;
        let x = if wn < l { io.load_part(s, at, wn, zero) } else { io.load(s, at) };
        let mut y = s.mul_add(s.sub(x, m), sc, sh);
        if vn < l {
            y = s.keep_first(y, vn);
        }
        if wn < l { io.store_part(s, at, wn, y) } else { io.store(s, at, y) }
    }
}

/// Normalises the `len` contiguous values at `at` with one channel's parameters.
#[inline(always)]
pub(crate) fn plane_normalize<S: Simd, I: Io>(
    s: S,
    io: &mut I,
    at: usize,
    len: usize,
    (m, sc, sh): (f32, f32, f32),
) {
    let l = S::LANES;
    let (m, sc, sh) = (s.splat(m), s.splat(sc), s.splat(sh));
    let end = at + len;
    let mut i = at;
    while i + 4 * l <= end {
        for u in 0..4 {
            let x = io.load(s, i + u * l);
            io.store(s, i + u * l, s.mul_add(s.sub(x, m), sc, sh));
        }
        i += 4 * l;
    }
    while i + l <= end {
        let x = io.load(s, i);
        io.store(s, i, s.mul_add(s.sub(x, m), sc, sh));
        i += l;
    }
    if i < end {
        let x = io.load_part(s, i, end - i, m);
        io.store_part(s, i, end - i, s.mul_add(s.sub(x, m), sc, sh));
    }
}
