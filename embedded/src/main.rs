//! bnorm on a microcontroller: every operation on every layout and tier against an f64 reference computed
//! here (independent of the crate), on QEMU's Cortex-M4F board (`mps2-an386`) and on the BBC micro:bit
//! (Cortex-M0, 16 KB RAM). Prints one line per failure, a table of peak stack (painted and scanned) and
//! instructions per element (SysTick under `-icount shift=0`), and exits through semihosting with
//! success only if every check passed.
//!
//! Run from this directory: `cargo run --release --target thumbv7em-none-eabihf` (or
//! `thumbv6m-none-eabi` for the micro:bit).

#![no_std]
#![no_main]

use bnorm::Kernels;
use bnorm::{Affine, Isa, Layout, Shape, TensorDesc};
use core::cell::Cell;
use cortex_m::peripheral::{SYST, syst::SystClkSource};
use cortex_m_rt::entry;
use cortex_m_semihosting::{debug, hprintln};

const LAYOUTS: [Layout; 5] = [
    Layout::Nchw,
    Layout::Nhwc,
    Layout::Blocked { block: 4 },
    Layout::Blocked { block: 8 },
    Layout::Blocked { block: 16 },
];

/// Correctness shapes (N, C, S): planes of 7 and 1, channels that fill no block, a full 16-channel block;
/// planes of 19 and 70 (the compact pass's eight-value assembly blocks and their tails, channel groups of
/// four plus single channels, several 32-position statistics blocks per channel).
#[cfg(not(small_ram))]
const SHAPES: [(usize, usize, usize); 5] = [(2, 5, 7), (1, 16, 9), (3, 3, 1), (2, 6, 19), (1, 6, 70)];
#[cfg(small_ram)]
const SHAPES: [(usize, usize, usize); 2] = [(1, 5, 7), (2, 6, 19)];

/// Room of each tensor buffer (floats): the largest correctness case padded to 16-channel blocks.
#[cfg(not(small_ram))]
const MAX: usize = 1120;
#[cfg(small_ram)]
const MAX: usize = 608;

/// The shape whose instructions per element are reported: 1×16×32×32 (64 KB per tensor) on the M4F
/// board, 1×16×8×8 (4 KB) on the micro:bit.
#[cfg(not(small_ram))]
const PERF: (usize, usize, usize) = (1, 16, 32 * 32);
#[cfg(small_ram)]
const PERF: (usize, usize, usize) = (1, 16, 8 * 8);
const PERF_LEN: usize = PERF.0 * PERF.1 * PERF.2;

/// Unit roundoff of f32.
const U: f64 = 1.0 / 16_777_216.0;
/// The error bounds of the README's Guarantees (as `tests/common` states them).
const MEAN_SIGMA: f64 = 16.0;
const VAR_REL: f64 = 32.0;
const OUT_REL: f64 = 8.0;

/// Pattern painted below the stack pointer before a measured call.
const PAINT: u32 = 0x5AA5_C33C;

#[entry]
fn main() -> ! {
    let mut p = cortex_m::Peripherals::take().expect("first and only take");
    let clock = Clock::start(&mut p.SYST);
    hprintln!("bnorm firmware: {} instructions per SysTick tick (calibrated)", clock.per_tick());
    let fails = Cell::new(0usize);
    let checks = Cell::new(0usize);
    let mut ctx = Ctx { fails: &fails, checks: &checks };
    // The counter itself: a loop of 200 000 instructions counts 200 000 to within a tick.
    let spun = clock.count(|| spin(100_000));
    ctx.check(
        spun.abs_diff(200_000) <= clock.per_tick(),
        format_args!("SysTick counted {spun} for 200000 instructions"),
    );

    for isa in Isa::available() {
        let k = Kernels::new(isa).expect("available");
        for &(n, c, s) in &SHAPES {
            for layout in LAYOUTS {
                correctness(&mut ctx, &k, Shape::new(n, c, s), layout);
            }
        }
    }
    free_functions(&mut ctx);
    bad_inputs(&mut ctx);
    hprintln!(
        "peak stack (bytes) and instructions per element, {}x{}x{} (N x C x S):",
        PERF.0,
        PERF.1,
        PERF.2
    );
    hprintln!("| tier | layout | moments | training | inference | affine |");
    hprintln!("|---|---|---|---|---|---|");
    for isa in Isa::available() {
        let k = Kernels::new(isa).expect("available");
        for layout in LAYOUTS {
            measure(&mut ctx, &k, layout, &clock);
        }
    }

    let (f, t) = (fails.get(), checks.get());
    if f == 0 {
        hprintln!("bnorm firmware: PASS ({} checks)", t);
        debug::exit(debug::EXIT_SUCCESS);
    } else {
        hprintln!("bnorm firmware: FAIL ({} of {} checks)", f, t);
        debug::exit(debug::EXIT_FAILURE);
    }
    loop {
        cortex_m::asm::wfi();
    }
}

struct Ctx<'a> {
    fails: &'a Cell<usize>,
    checks: &'a Cell<usize>,
}

impl Ctx<'_> {
    fn check(&mut self, ok: bool, what: core::fmt::Arguments<'_>) {
        self.checks.set(self.checks.get() + 1);
        if !ok {
            self.fails.set(self.fails.get() + 1);
            hprintln!("FAIL {}", what);
        }
    }
}

/// Element offset of (n, c, s) in `layout` (the crate's layouts, restated).
fn offset(sh: Shape, layout: Layout, n: usize, c: usize, s: usize) -> usize {
    match layout {
        Layout::Nchw => (n * sh.c + c) * sh.spatial + s,
        Layout::Nhwc => (n * sh.spatial + s) * sh.c + c,
        Layout::Blocked { block: b } => ((n * sh.c.div_ceil(b) + c / b) * sh.spatial + s) * b + c % b,
    }
}

/// Whether element `i` of a `layout` tensor is a padding lane (a channel beyond C in the last block).
fn is_padding(sh: Shape, layout: Layout, i: usize) -> bool {
    match layout {
        Layout::Blocked { block: b } => {
            let cb = (i / (b * sh.spatial)) % sh.c.div_ceil(b);
            cb * b + i % b >= sh.c
        }
        _ => false,
    }
}

/// Square root in f64 by Newton's method (core has none without std): the reference's 1/√(var + ε).
fn sqrt64(v: f64) -> f64 {
    if v <= 0.0 || v.is_nan() || v.is_infinite() {
        return if v == 0.0 { 0.0 } else { f64::NAN };
    }
    let mut y = f64::from_bits((v.to_bits() >> 1) + (0x3FF << 51));
    for _ in 0..8 {
        y = 0.5 * (y + v / y);
    }
    y
}

/// Deterministic inputs: channel c around an offset of ±(1 + c)·37 with spread 0.5 + c/4, so the
/// statistics are checked away from zero.
fn fill(sh: Shape, layout: Layout, x: &mut [f32], seed: u32) {
    let mut r = seed.wrapping_mul(2_654_435_761).wrapping_add(1);
    x.fill(0.0);
    for n in 0..sh.n {
        for c in 0..sh.c {
            for s in 0..sh.spatial {
                r = r.wrapping_mul(1_664_525).wrapping_add(1_013_904_223);
                let u = (r >> 8) as f32 / 16_777_216.0 * 2.0 - 1.0;
                let off = (1 + c) as f32 * 37.0 * if c % 2 == 0 { 1.0 } else { -1.0 };
                x[offset(sh, layout, n, c, s)] = off + (0.5 + c as f32 / 4.0) * u;
            }
        }
    }
}

/// Reference mean and population variance of channel c, two passes in f64.
fn reference(sh: Shape, layout: Layout, x: &[f32], c: usize) -> (f64, f64) {
    let m = (sh.n * sh.spatial) as f64;
    let mut sum = 0.0;
    for n in 0..sh.n {
        for s in 0..sh.spatial {
            sum += x[offset(sh, layout, n, c, s)] as f64;
        }
    }
    let mean = sum / m;
    let mut sq = 0.0;
    for n in 0..sh.n {
        for s in 0..sh.spatial {
            let d = x[offset(sh, layout, n, c, s)] as f64 - mean;
            sq += d * d;
        }
    }
    (mean, sq / m)
}

fn gamma_beta(c: usize) -> (f32, f32) {
    (0.5 + c as f32 * 0.25, c as f32 * 0.5 - 1.0)
}

/// Checks mean/var of every channel against the reference.
fn check_stats(
    ctx: &mut Ctx<'_>,
    tag: &dyn core::fmt::Display,
    sh: Shape,
    layout: Layout,
    x: &[f32],
    mean: &[f32],
    var: &[f32],
) {
    for c in 0..sh.c {
        let (rm, rv) = reference(sh, layout, x, c);
        let (m, v) = (mean[c] as f64, var[c] as f64);
        let tm = 2.0 * U * rm.abs() + MEAN_SIGMA * U * sqrt64(rv);
        let tv = VAR_REL * U * rv;
        ctx.check((m - rm).abs() <= tm, format_args!("{tag}: channel {c} mean {m} vs {rm}"));
        ctx.check((v - rv).abs() <= tv, format_args!("{tag}: channel {c} var {v} vs {rv}"));
    }
}

/// Checks outputs `y` of `x` normalised with (mean, var) against the reference formula; `training`
/// adds the propagated error of the kernel's own statistics. Padding lanes must be +0.0.
#[allow(clippy::too_many_arguments)]
fn check_outputs(
    ctx: &mut Ctx<'_>,
    tag: &dyn core::fmt::Display,
    sh: Shape,
    layout: Layout,
    x: &[f32],
    y: &[f32],
    stats: (&[f32], &[f32]),
    eps: f32,
    training: bool,
) {
    let mut worst_ok = true;
    for c in 0..sh.c {
        let (mean, var) =
            if training { reference(sh, layout, x, c) } else { (stats.0[c] as f64, stats.1[c] as f64) };
        let (g, b) = gamma_beta(c);
        let (g, b) = (g as f64, b as f64);
        let inv = 1.0 / sqrt64(var + eps as f64);
        for n in 0..sh.n {
            for s in 0..sh.spatial {
                let i = offset(sh, layout, n, c, s);
                let xv = x[i] as f64;
                let want = (xv - mean) * inv * g + b;
                let centred = (xv - mean).abs();
                let mut tol = OUT_REL * U * (g.abs() * centred * inv + b.abs()) + f64::MIN_POSITIVE;
                if training {
                    let dm = 2.0 * U * mean.abs() + MEAN_SIGMA * U * sqrt64(var);
                    tol += g.abs() * inv * (dm + centred * (VAR_REL / 2.0 + OUT_REL) * U);
                }
                let ok = (y[i] as f64 - want).abs() <= tol;
                if !ok && worst_ok {
                    ctx.check(false, format_args!("{tag}: y[{i}] (n={n} c={c} s={s}) {} vs {want}", y[i]));
                    worst_ok = false;
                }
            }
        }
    }
    ctx.check(worst_ok, format_args!("{tag}: outputs"));
    let pad_ok = (0..y.len()).all(|i| !is_padding(sh, layout, i) || y[i].to_bits() == 0);
    ctx.check(pad_ok, format_args!("{tag}: padding lanes not +0.0"));
}

fn same_bits(a: &[f32], b: &[f32]) -> bool {
    a.len() == b.len() && a.iter().zip(b).all(|(p, q)| p.to_bits() == q.to_bits())
}

struct Tag {
    isa: Isa,
    sh: Shape,
    layout: Layout,
    op: &'static str,
}

impl core::fmt::Display for Tag {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        write!(
            f,
            "{} {:?} {}x{}x{} {}",
            self.isa, self.layout, self.sh.n, self.sh.c, self.sh.spatial, self.op
        )
    }
}

/// Every operation on one shape, layout and tier.
fn correctness(ctx: &mut Ctx<'_>, k: &Kernels, sh: Shape, layout: Layout) {
    let desc = TensorDesc::new(sh, layout).expect("valid shape");
    let len = desc.len();
    let c = sh.c;
    let tag = |op| Tag { isa: k.isa(), sh, layout, op };
    let mut xb = [0.0f32; MAX];
    let mut yb = [0.0f32; MAX];
    let mut zb = [0.0f32; MAX];
    let (x, y, z) = (&mut xb[..len], &mut yb[..len], &mut zb[..len]);
    fill(sh, layout, x, (c * 31 + sh.spatial) as u32);
    let mut gb = [0.0f32; 16];
    let mut bb = [0.0f32; 16];
    for j in 0..c {
        (gb[j], bb[j]) = gamma_beta(j);
    }
    let aff = Affine { gamma: Some(&gb[..c]), beta: Some(&bb[..c]), eps: 1e-3 };
    let (mut m, mut v) = ([0.0f32; 16], [0.0f32; 16]);
    let (mut m2, mut v2) = ([0.0f32; 16], [0.0f32; 16]);

    let r = k.moments(&desc, x, &mut m[..c], &mut v[..c]);
    ctx.check(r.is_ok(), format_args!("{}: {:?}", tag("moments"), r));
    check_stats(ctx, &tag("moments"), sh, layout, x, &m[..c], &v[..c]);

    let r = k.forward_training(&desc, x, y, &aff, &mut m2[..c], &mut v2[..c]);
    ctx.check(r.is_ok(), format_args!("{}: {:?}", tag("training"), r));
    ctx.check(
        same_bits(&m[..c], &m2[..c]) && same_bits(&v[..c], &v2[..c]),
        format_args!("{}: statistics differ from moments", tag("training")),
    );
    check_outputs(ctx, &tag("training"), sh, layout, x, y, (&m[..c], &v[..c]), aff.eps, true);

    z.copy_from_slice(x);
    let r = k.forward_training_in_place(&desc, z, &aff, &mut m2[..c], &mut v2[..c]);
    ctx.check(
        r.is_ok() && same_bits(z, y),
        format_args!("{}: differs from out of place", tag("training in place")),
    );

    let r = k.forward_inference(&desc, x, y, &aff, &m[..c], &v[..c]);
    ctx.check(r.is_ok(), format_args!("{}: {:?}", tag("inference"), r));
    check_outputs(ctx, &tag("inference"), sh, layout, x, y, (&m[..c], &v[..c]), aff.eps, false);
    z.copy_from_slice(x);
    let r = k.forward_inference_in_place(&desc, z, &aff, &m[..c], &v[..c]);
    ctx.check(
        r.is_ok() && same_bits(z, y),
        format_args!("{}: differs from out of place", tag("inference in place")),
    );

    // channel_affine: y = x·scale + shift, one rounding of a fused or unfused multiply-add.
    let r = k.channel_affine(&desc, x, y, &gb[..c], &bb[..c]);
    ctx.check(r.is_ok(), format_args!("{}: {:?}", tag("affine"), r));
    let mut ok = true;
    for n in 0..sh.n {
        for j in 0..c {
            for s in 0..sh.spatial {
                let i = offset(sh, layout, n, j, s);
                let want = x[i] as f64 * gb[j] as f64 + bb[j] as f64;
                let tol = 2.0 * U * ((x[i] as f64 * gb[j] as f64).abs() + (bb[j] as f64).abs());
                ok &= (y[i] as f64 - want).abs() <= tol;
            }
        }
    }
    ctx.check(ok, format_args!("{}: outputs", tag("affine")));
    let pad_ok = (0..len).all(|i| !is_padding(sh, layout, i) || y[i].to_bits() == 0);
    ctx.check(pad_ok, format_args!("{}: padding lanes not +0.0", tag("affine")));
    z.copy_from_slice(x);
    let r = k.channel_affine_in_place(&desc, z, &gb[..c], &bb[..c]);
    ctx.check(
        r.is_ok() && same_bits(z, y),
        format_args!("{}: differs from out of place", tag("affine in place")),
    );
}

/// The free functions (run-time dispatch to the best tier the target has) and the running statistics.
fn free_functions(ctx: &mut Ctx<'_>) {
    let sh = Shape::new(2, 5, 7);
    let layout = Layout::Nchw;
    let desc = TensorDesc::new(sh, layout).expect("valid shape");
    let mut x = [0.0f32; 70];
    let mut y = [0.0f32; 70];
    fill(sh, layout, &mut x, 7);
    let aff = Affine { gamma: None, beta: None, eps: 1e-3 };
    let (mut m, mut v) = ([0.0f32; 5], [0.0f32; 5]);
    let r = bnorm::forward_training(&desc, &x, &mut y, &aff, &mut m, &mut v);
    ctx.check(r.is_ok(), format_args!("free forward_training: {r:?}"));
    for c in 0..5 {
        let (rm, rv) = reference(sh, layout, &x, c);
        let inv = 1.0 / sqrt64(rv + 1e-3);
        let i = offset(sh, layout, 1, c, 3);
        let want = (x[i] as f64 - rm) * inv;
        ctx.check(
            (y[i] as f64 - want).abs() <= 1e-5 * (1.0 + want.abs()),
            format_args!("free forward_training: channel {c}"),
        );
    }
    let (mut rm, mut rv) = ([0.0f32; 5], [1.0f32; 5]);
    let r = bnorm::update_running_stats(&desc, &mut rm, &mut rv, &m, &v, bnorm::Momentum::Exponential(0.1));
    ctx.check(r.is_ok(), format_args!("update_running_stats: {r:?}"));
    for c in 0..5 {
        let want_m = 0.1 * m[c] as f64;
        let want_v = 0.9 + 0.1 * v[c] as f64 * 14.0 / 13.0;
        ctx.check(
            (rm[c] as f64 - want_m).abs() <= U * want_m.abs()
                && (rv[c] as f64 - want_v).abs() <= U * want_v.abs(),
            format_args!("update_running_stats: channel {c} {} {} vs {want_m} {want_v}", rm[c], rv[c]),
        );
    }
}

/// Bad inputs: an `Err` naming the sizes, and the outputs untouched.
fn bad_inputs(ctx: &mut Ctx<'_>) {
    let desc = TensorDesc::new(Shape::new(2, 5, 7), Layout::Nhwc).expect("valid shape");
    let x = [1.0f32; 70];
    let mut y = [7.0f32; 69];
    let (mut m, mut v) = ([3.0f32; 5], [3.0f32; 5]);
    let aff = Affine { gamma: None, beta: None, eps: 1e-5 };
    let r = bnorm::forward_training(&desc, &x, &mut y, &aff, &mut m, &mut v);
    ctx.check(r.is_err(), format_args!("short output accepted"));
    ctx.check(
        y.iter().all(|&a| a == 7.0) && m.iter().chain(&v).all(|&a| a == 3.0),
        format_args!("outputs written before the error"),
    );
    let r = bnorm::forward_inference(&desc, &x, &mut [0.0f32; 70], &aff, &m[..4], &v);
    ctx.check(r.is_err(), format_args!("short mean accepted"));
    ctx.check(
        TensorDesc::new(Shape::new(usize::MAX, 2, 2), Layout::Nchw).is_err(),
        format_args!("overflowing shape accepted"),
    );
}

/// SysTick as an instruction counter: under `-icount shift=0` QEMU's clock advances one nanosecond per
/// instruction and SysTick ticks at the board's core clock (25 MHz on mps2-an386, 16 MHz on the
/// micro:bit), so instructions = ticks × (instructions per tick), the ratio found by timing a loop of
/// known length.
struct Clock {
    /// Instructions and ticks of the calibration loop.
    calib: (u64, u64),
}

impl Clock {
    fn start(syst: &mut SYST) -> Clock {
        syst.set_clock_source(SystClkSource::Core);
        syst.set_reload(0x00FF_FFFF);
        syst.clear_current();
        syst.enable_counter();
        let iters = 400_000u32;
        let t0 = SYST::get_current();
        spin(iters);
        let t1 = SYST::get_current();
        let ticks = (t0.wrapping_sub(t1) & 0x00FF_FFFF) as u64;
        // Two instructions per iteration (subs, bne).
        Clock { calib: (2 * iters as u64, ticks.max(1)) }
    }

    /// Instructions per tick, rounded (for the report).
    fn per_tick(&self) -> u64 {
        (self.calib.0 + self.calib.1 / 2) / self.calib.1
    }

    /// Instructions spent in `f` (to the resolution of one tick).
    fn count(&self, f: impl FnOnce()) -> u64 {
        let t0 = SYST::get_current();
        f();
        let t1 = SYST::get_current();
        let ticks = (t0.wrapping_sub(t1) & 0x00FF_FFFF) as u64;
        (ticks * self.calib.0 + self.calib.1 / 2) / self.calib.1
    }
}

/// A loop of exactly `2·n` instructions.
#[inline(never)]
fn spin(n: u32) {
    // SAFETY: a register-only countdown loop; touches no memory and leaves the flags clobbered, which
    // `asm!` assumes by default.
    unsafe {
        core::arch::asm!("2:", "subs {0}, #1", "bne 2b", inout(reg) n => _);
    }
}

unsafe extern "C" {
    /// cortex-m-rt: the first address past `.bss` and `.data` (the bottom of the free RAM the stack
    /// grows down into).
    static mut __sheap: u32;
}

/// Peak stack of `f` in bytes: the free RAM below the stack pointer is painted, `f` runs, and the
/// lowest word no longer holding the paint marks the deepest frame.
#[inline(never)]
fn stack_peak(f: impl FnOnce()) -> usize {
    let bottom = (&raw mut __sheap) as usize;
    let sp = cortex_m::register::msp::read() as usize;
    // Leave this function's own frame (and what the paint loop may push) alone.
    let top = (sp - 64) & !3;
    let words = (top - bottom) / 4;
    let base = bottom as *mut u32;
    for i in 0..words {
        // SAFETY: [bottom, top) lies between the end of the statics and this frame: free stack RAM that
        // nothing live occupies; volatile so the paint is not elided.
        unsafe { base.add(i).write_volatile(PAINT) };
    }
    f();
    let mut i = 0;
    // SAFETY: reads of the same painted range.
    while i < words && unsafe { base.add(i).read_volatile() } == PAINT {
        i += 1;
    }
    sp - (bottom + 4 * i)
}

/// One row of the table: peak stack and instructions per element of each operation on `PERF`.
fn measure(ctx: &mut Ctx<'_>, k: &Kernels, layout: Layout, clock: &Clock) {
    let sh = Shape::new(PERF.0, PERF.1, PERF.2);
    let desc = TensorDesc::new(sh, layout).expect("valid shape");
    let len = desc.len();
    let mut xb = [0.0f32; PERF_LEN];
    let mut yb = [0.0f32; PERF_LEN];
    let (x, y) = (&mut xb[..len], &mut yb[..len]);
    fill(sh, layout, x, 3);
    let c = sh.c;
    let aff = Affine { gamma: None, beta: None, eps: 1e-3 };
    let (mut m, mut v) = ([0.0f32; 16], [0.0f32; 16]);
    let per = |n: u64| (n as f64) / ((sh.n * sh.c * sh.spatial) as f64);
    let mut ins = [0u64; 4];
    let mut st = [0usize; 4];
    let mut ok = [false; 4];
    st[0] =
        stack_peak(|| ins[0] = clock.count(|| ok[0] = k.moments(&desc, x, &mut m[..c], &mut v[..c]).is_ok()));
    st[1] = stack_peak(|| {
        ins[1] =
            clock.count(|| ok[1] = k.forward_training(&desc, x, y, &aff, &mut m[..c], &mut v[..c]).is_ok())
    });
    st[2] = stack_peak(|| {
        ins[2] = clock.count(|| ok[2] = k.forward_inference(&desc, x, y, &aff, &m[..c], &v[..c]).is_ok())
    });
    let (g, b) = ([1.5f32; 16], [0.25f32; 16]);
    st[3] = stack_peak(|| {
        ins[3] = clock.count(|| ok[3] = k.channel_affine(&desc, x, y, &g[..c], &b[..c]).is_ok())
    });
    ctx.check(ok.iter().all(|&o| o), format_args!("{} {:?}: a measured call failed", k.isa(), layout));
    let name = match layout {
        Layout::Nchw => "nchw",
        Layout::Nhwc => "nhwc",
        Layout::Blocked { block: 4 } => "nChw4c",
        Layout::Blocked { block: 8 } => "nChw8c",
        _ => "nChw16c",
    };
    hprintln!(
        "| {} | {} | {} B, {:.1} | {} B, {:.1} | {} B, {:.1} | {} B, {:.1} |",
        k.isa(),
        name,
        st[0],
        per(ins[0]),
        st[1],
        per(ins[1]),
        st[2],
        per(ins[2]),
        st[3],
        per(ins[3])
    );
}

#[panic_handler]
fn panic(info: &core::panic::PanicInfo<'_>) -> ! {
    hprintln!("bnorm firmware: panic: {}", info);
    debug::exit(debug::EXIT_FAILURE);
    loop {
        cortex_m::asm::wfi();
    }
}
