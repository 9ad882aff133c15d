//! The compact passes' innermost loops (`kernels::compact`, the scalar tier on targets without SIMD):
//! the normalise pass's `y = (x − m)·s + b`, product and sum each rounded (the scalar tier's unfused
//! multiply-add), over a contiguous run or over quadruples of adjacent channels `step` apart; and the
//! statistics pass's block sums `Σ(x − k)`, `Σ(x − k)²`.
//!
//! On Cortex-M with an FPU (`thumbv7em-none-eabihf` and later hard-float M profiles) the loops are
//! written in assembly: `vldm`/`vstm` move four or eight values in one instruction, which the compiler
//! does not form, and the loops no longer depend on the optimisation level (on the M4F at
//! `opt-level = "s"`, `moments` went from 16.5–26.1 instructions per element with the compiler's loop to
//! 7.2–8.0 with the assembly; README, Embedded).
//! `vmla.f32` rounds the product and then the sum, exactly as the scalar tier's `d·d + a`. Elsewhere the
//! callers' Rust loops do the work; both compute the same operations in the same order, so the bits are
//! the same.

/// `(x − m)·s + b` with `p = [m, s, b]`, product and sum each rounded: the one formula every loop
/// here and the compact pass's strided walks compute.
#[inline(always)]
pub(crate) fn affine(x: f32, p: [f32; 3]) -> f32 {
    (x - p[0]) * p[1] + p[2]
}

/// [`affine`] on four adjacent channels, `p = [m, s, b]` each four wide.
#[inline(always)]
fn affine4(x: &[f32; 4], p: &[[f32; 4]; 3]) -> [f32; 4] {
    core::array::from_fn(|j| affine(x[j], [p[0][j], p[1][j], p[2][j]]))
}

/// `y[i] = (x[i] − m)·s + b` for `i < min(x.len(), y.len())`, with `p = [m, s, b]`.
#[inline(always)]
pub(crate) fn run(x: &[f32], y: &mut [f32], p: [f32; 3]) {
    let n = x.len().min(y.len());
    let done = m_profile::run(x.as_ptr(), y.as_mut_ptr(), n, p);
    for (y, &x) in y[done..n].iter_mut().zip(&x[done..n]) {
        *y = affine(x, p);
    }
}

/// [`run`] in place.
#[inline(always)]
pub(crate) fn run_in_place(xy: &mut [f32], p: [f32; 3]) {
    let n = xy.len();
    let ptr = xy.as_mut_ptr();
    let done = m_profile::run(ptr, ptr, n, p);
    for v in &mut xy[done..] {
        *v = affine(*v, p);
    }
}

/// `y[r·step + j] = (x[r·step + j] − m[j])·s[j] + b[j]` for `j < 4` and every row `r` whose four
/// values lie in both slices (`step ≥ 4`; a smaller `step` does nothing), with `p = [m, s, b]`.
#[inline(always)]
pub(crate) fn rows4(x: &[f32], y: &mut [f32], step: usize, p: [[f32; 4]; 3]) {
    let rows = rows_in(x.len().min(y.len()), step);
    let done = m_profile::rows4(x.as_ptr(), y.as_mut_ptr(), step, rows, &p);
    for r in done..rows {
        let at = r * step;
        if let (Some(x), Some(y)) = (x[at..].first_chunk::<4>(), y[at..].first_chunk_mut::<4>()) {
            *y = affine4(x, &p);
        }
    }
}

/// [`rows4`] in place.
#[inline(always)]
pub(crate) fn rows4_in_place(xy: &mut [f32], step: usize, p: [[f32; 4]; 3]) {
    let rows = rows_in(xy.len(), step);
    let ptr = xy.as_mut_ptr();
    let done = m_profile::rows4(ptr, ptr, step, rows, &p);
    for r in done..rows {
        if let Some(v) = xy[r * step..].first_chunk_mut::<4>() {
            *v = affine4(v, &p);
        }
    }
}

/// Rows of four, `step ≥ 4` apart, that fit in `len` floats (0 for a smaller `step`).
#[inline(always)]
fn rows_in(len: usize, step: usize) -> usize {
    if step < 4 || len < 4 { 0 } else { (len - 4) / step + 1 }
}

/// Adds rows `0..rows` of `run` — row `r` is the `G` values at `r·step` — to the block sums `a`
/// (`Σ(x − k)`, `Σ(x − k)²` per chain and channel), row `r` into chain `r % R`, each `d = x − k` added
/// to the first sum and `d·d` (rounded) to the second. Returns how many rows it did: a multiple of `R`
/// (all of them, or 0 where there is no assembly loop for this `G`, `R` and `step`); the caller adds the
/// rest in the same pattern.
#[inline(always)]
pub(crate) fn sums<const G: usize, const R: usize>(
    run: &[f32],
    step: usize,
    rows: usize,
    k: &[f32; G],
    a: &mut ([[f32; G]; R], [[f32; G]; R]),
) -> usize {
    let rows = rows / R * R;
    // Every row must lie in `run`: the last one's `G` values end at `(rows − 1)·step + G`. Without an
    // assembly loop (`m_profile::LOOPS`) nothing is copied in and out.
    if !m_profile::LOOPS
        || rows == 0
        || step < G
        || (rows - 1).checked_mul(step).and_then(|e| e.checked_add(G)).is_none_or(|e| e > run.len())
    {
        return 0;
    }
    let mut acc = [0.0f32; 16];
    if 2 * G * R > acc.len() {
        return 0;
    }
    for u in 0..R {
        acc[u * G..(u + 1) * G].copy_from_slice(&a.0[u]);
        acc[(R + u) * G..(R + u + 1) * G].copy_from_slice(&a.1[u]);
    }
    let done = match (G, R) {
        (4, 2) => m_profile::sums4x2(run.as_ptr(), step, rows, &k[..], &mut acc),
        (1, 4) if step == 1 => m_profile::sums1x4(run.as_ptr(), rows, k[0], &mut acc),
        _ => 0,
    };
    for u in 0..R {
        a.0[u].copy_from_slice(&acc[u * G..(u + 1) * G]);
        a.1[u].copy_from_slice(&acc[(R + u) * G..(R + u + 1) * G]);
    }
    done
}

/// The assembly loops; each returns how many elements (`run`) or rows (`rows4`) it did, and the caller
/// does the rest.
#[cfg(all(target_arch = "arm", target_abi = "eabihf", target_os = "none"))]
mod m_profile {
    /// Whether the loops below exist.
    pub(super) const LOOPS: bool = true;

    /// Elements `0..8·⌊n/8⌋` of `run`. `x` is readable and `y` writable for `n` floats (`x == y` in place).
    #[inline(always)]
    pub(super) fn run(x: *const f32, y: *mut f32, n: usize, p: [f32; 3]) -> usize {
        let blocks = n / 8;
        if blocks == 0 {
            return 0;
        }
        // SAFETY: the loop reads `8·blocks ≤ n` floats from `x` and writes as many to `y`, which the
        // callers' slices cover (`x` and `y` are the same buffer in place: each block is loaded before
        // it is stored). It saves and restores every FPU register it uses (s0–s10; rustc offers no FPU
        // register class on single-precision FPUs to declare them clobbered), touches the stack only
        // through that balanced push and pop, and changes only the condition flags and the pointer and
        // counter registers it owns.
        unsafe {
            core::arch::asm!(
                "vpush {{s0-s10}}",
                "vmov s8, {m}",
                "vmov s9, {s}",
                "vmov s10, {b}",
                "2:",
                "vldmia {x}!, {{s0-s7}}",
                "vsub.f32 s0, s0, s8",
                "vsub.f32 s1, s1, s8",
                "vsub.f32 s2, s2, s8",
                "vsub.f32 s3, s3, s8",
                "vsub.f32 s4, s4, s8",
                "vsub.f32 s5, s5, s8",
                "vsub.f32 s6, s6, s8",
                "vsub.f32 s7, s7, s8",
                "vmul.f32 s0, s0, s9",
                "vmul.f32 s1, s1, s9",
                "vmul.f32 s2, s2, s9",
                "vmul.f32 s3, s3, s9",
                "vmul.f32 s4, s4, s9",
                "vmul.f32 s5, s5, s9",
                "vmul.f32 s6, s6, s9",
                "vmul.f32 s7, s7, s9",
                "vadd.f32 s0, s0, s10",
                "vadd.f32 s1, s1, s10",
                "vadd.f32 s2, s2, s10",
                "vadd.f32 s3, s3, s10",
                "vadd.f32 s4, s4, s10",
                "vadd.f32 s5, s5, s10",
                "vadd.f32 s6, s6, s10",
                "vadd.f32 s7, s7, s10",
                "vstmia {y}!, {{s0-s7}}",
                "subs {n}, {n}, #1",
                "bne 2b",
                "vpop {{s0-s10}}",
                m = in(reg) p[0].to_bits(),
                s = in(reg) p[1].to_bits(),
                b = in(reg) p[2].to_bits(),
                x = inout(reg) x => _,
                y = inout(reg) y => _,
                n = inout(reg) blocks => _,
            );
        }
        8 * blocks
    }

    /// All `rows` rows of `rows4`. `x` is readable and `y` writable at `r·step + j` for `r < rows`,
    /// `j < 4` (`x == y` in place).
    #[inline(always)]
    pub(super) fn rows4(x: *const f32, y: *mut f32, step: usize, rows: usize, p: &[[f32; 4]; 3]) -> usize {
        if rows == 0 {
            return 0;
        }
        // SAFETY: the loop reads and writes the four floats of each of the `rows` rows, `4·step` bytes
        // apart, which the callers' slices cover (a row is loaded before it is stored, so `x == y` is
        // fine); it reads the twelve parameters from `p`. FPU registers s0–s19 are saved and restored
        // (see `run`), the stack is touched only by that balanced push and pop, and only the condition
        // flags and the registers it owns change.
        unsafe {
            core::arch::asm!(
                "vpush {{s0-s19}}",
                "vldm {p}, {{s8-s19}}",
                "2:",
                "vldm {x}, {{s0-s3}}",
                "add {x}, {x}, {st}",
                "vsub.f32 s0, s0, s8",
                "vsub.f32 s1, s1, s9",
                "vsub.f32 s2, s2, s10",
                "vsub.f32 s3, s3, s11",
                "vmul.f32 s0, s0, s12",
                "vmul.f32 s1, s1, s13",
                "vmul.f32 s2, s2, s14",
                "vmul.f32 s3, s3, s15",
                "vadd.f32 s0, s0, s16",
                "vadd.f32 s1, s1, s17",
                "vadd.f32 s2, s2, s18",
                "vadd.f32 s3, s3, s19",
                "vstm {y}, {{s0-s3}}",
                "add {y}, {y}, {st}",
                "subs {n}, {n}, #1",
                "bne 2b",
                "vpop {{s0-s19}}",
                p = in(reg) p.as_ptr(),
                st = in(reg) step * 4,
                x = inout(reg) x => _,
                y = inout(reg) y => _,
                n = inout(reg) rows => _,
            );
        }
        rows
    }

    /// `sums` for `G = 4`, `R = 2`: all `rows` (even, ≥ 2) rows `step ≥ 4` floats apart, each four
    /// readable floats. `acc` holds the chains' sums as `[a1[0], a1[1], a2[0], a2[1]]`, four lanes each.
    #[inline(always)]
    pub(super) fn sums4x2(x: *const f32, step: usize, rows: usize, k: &[f32], acc: &mut [f32; 16]) -> usize {
        if rows < 2 || k.len() < 4 {
            return 0;
        }
        // SAFETY: the loop reads the four floats of each of the `rows` rows (the caller checked that
        // they lie in its slice) and the four shifts of `k`, and reads and writes the sixteen sums of
        // `acc`. FPU registers s0–s23 are saved and restored (see `run`), the stack is touched only by
        // that balanced push and pop, and only the condition flags and its own registers change.
        unsafe {
            core::arch::asm!(
                "vpush {{s0-s23}}",
                "vldm {acc}, {{s0-s15}}",
                "vldm {k}, {{s16-s19}}",
                "2:",
                "vldm {x}, {{s20-s23}}",
                "add {x}, {x}, {st}",
                "vsub.f32 s20, s20, s16",
                "vsub.f32 s21, s21, s17",
                "vsub.f32 s22, s22, s18",
                "vsub.f32 s23, s23, s19",
                "vadd.f32 s0, s0, s20",
                "vadd.f32 s1, s1, s21",
                "vadd.f32 s2, s2, s22",
                "vadd.f32 s3, s3, s23",
                "vmla.f32 s8, s20, s20",
                "vmla.f32 s9, s21, s21",
                "vmla.f32 s10, s22, s22",
                "vmla.f32 s11, s23, s23",
                "vldm {x}, {{s20-s23}}",
                "add {x}, {x}, {st}",
                "vsub.f32 s20, s20, s16",
                "vsub.f32 s21, s21, s17",
                "vsub.f32 s22, s22, s18",
                "vsub.f32 s23, s23, s19",
                "vadd.f32 s4, s4, s20",
                "vadd.f32 s5, s5, s21",
                "vadd.f32 s6, s6, s22",
                "vadd.f32 s7, s7, s23",
                "vmla.f32 s12, s20, s20",
                "vmla.f32 s13, s21, s21",
                "vmla.f32 s14, s22, s22",
                "vmla.f32 s15, s23, s23",
                "subs {n}, {n}, #1",
                "bne 2b",
                "vstm {acc}, {{s0-s15}}",
                "vpop {{s0-s23}}",
                acc = in(reg) acc.as_mut_ptr(),
                k = in(reg) k.as_ptr(),
                st = in(reg) step * 4,
                x = inout(reg) x => _,
                n = inout(reg) rows / 2 => _,
            );
        }
        rows / 2 * 2
    }

    /// `sums` for `G = 1`, `R = 4` on contiguous values: the first `8·⌊rows/8⌋` of the `rows` readable
    /// floats at `x`, value `i` into chain `i % 4`. `acc` holds `[a1[0..4], a2[0..4]]` in its first eight.
    #[inline(always)]
    pub(super) fn sums1x4(x: *const f32, rows: usize, k: f32, acc: &mut [f32; 16]) -> usize {
        let blocks = rows / 8;
        if blocks == 0 {
            return 0;
        }
        // SAFETY: the loop reads `8·blocks ≤ rows` floats from `x` (the caller checked that they lie in
        // its slice) and reads and writes the first eight floats of `acc`. FPU registers s0–s16 are saved
        // and restored (see `run`), the stack is touched only by that balanced push and pop, and only
        // the condition flags and its own registers change.
        unsafe {
            core::arch::asm!(
                "vpush {{s0-s16}}",
                "vldm {acc}, {{s0-s7}}",
                "vmov s16, {k}",
                "2:",
                "vldmia {x}!, {{s8-s15}}",
                "vsub.f32 s8, s8, s16",
                "vsub.f32 s9, s9, s16",
                "vsub.f32 s10, s10, s16",
                "vsub.f32 s11, s11, s16",
                "vsub.f32 s12, s12, s16",
                "vsub.f32 s13, s13, s16",
                "vsub.f32 s14, s14, s16",
                "vsub.f32 s15, s15, s16",
                "vadd.f32 s0, s0, s8",
                "vadd.f32 s1, s1, s9",
                "vadd.f32 s2, s2, s10",
                "vadd.f32 s3, s3, s11",
                "vmla.f32 s4, s8, s8",
                "vmla.f32 s5, s9, s9",
                "vmla.f32 s6, s10, s10",
                "vmla.f32 s7, s11, s11",
                "vadd.f32 s0, s0, s12",
                "vadd.f32 s1, s1, s13",
                "vadd.f32 s2, s2, s14",
                "vadd.f32 s3, s3, s15",
                "vmla.f32 s4, s12, s12",
                "vmla.f32 s5, s13, s13",
                "vmla.f32 s6, s14, s14",
                "vmla.f32 s7, s15, s15",
                "subs {n}, {n}, #1",
                "bne 2b",
                "vstm {acc}, {{s0-s7}}",
                "vpop {{s0-s16}}",
                acc = in(reg) acc.as_mut_ptr(),
                k = in(reg) k.to_bits(),
                x = inout(reg) x => _,
                n = inout(reg) blocks => _,
            );
        }
        8 * blocks
    }
}

/// Elsewhere the Rust loops of the callers do all the work.
#[cfg(not(all(target_arch = "arm", target_abi = "eabihf", target_os = "none")))]
mod m_profile {
    pub(super) const LOOPS: bool = false;

    #[inline(always)]
    pub(super) fn run(_: *const f32, _: *mut f32, _: usize, _: [f32; 3]) -> usize {
        0
    }
    #[inline(always)]
    pub(super) fn rows4(_: *const f32, _: *mut f32, _: usize, _: usize, _: &[[f32; 4]; 3]) -> usize {
        0
    }
    #[inline(always)]
    pub(super) fn sums4x2(_: *const f32, _: usize, _: usize, _: &[f32], _: &mut [f32; 16]) -> usize {
        0
    }
    #[inline(always)]
    pub(super) fn sums1x4(_: *const f32, _: usize, _: f32, _: &mut [f32; 16]) -> usize {
        0
    }
}
