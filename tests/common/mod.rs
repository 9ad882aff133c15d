//! Shared test support: deterministic data, the oracle, and the documented tolerances.
#![allow(dead_code)]
// `!(err <= tol)` is deliberate: a NaN error must fail the check.
#![allow(clippy::neg_cmp_op_on_partial_ord)]

pub mod oracle;

use bnorm::{Isa, Kernels, Layout, Shape};
pub use oracle::U;

/// Every layout the crate supports.
pub const LAYOUTS: [Layout; 5] = [
    Layout::Nchw,
    Layout::Nhwc,
    Layout::Blocked { block: 4 },
    Layout::Blocked { block: 8 },
    Layout::Blocked { block: 16 },
];

/// The kernels of `isa`, or `None` after printing that the tier is skipped on this CPU (or under the
/// `BNORM_MAX_ISA` cap). A skipped tier is reported, never passed silently.
///
/// The notice goes straight to the process's stderr (the test harness captures `eprintln!` of passing
/// tests), once per test and tier.
pub fn kernels_or_skip(isa: Isa, test: &str) -> Option<Kernels> {
    use std::collections::BTreeSet;
    use std::io::Write;
    use std::sync::Mutex;
    static REPORTED: Mutex<BTreeSet<String>> = Mutex::new(BTreeSet::new());
    let k = Kernels::new(isa);
    if k.is_none() {
        let key = format!("{test} on {isa}");
        let mut seen = REPORTED.lock().unwrap_or_else(|e| e.into_inner());
        if seen.insert(key.clone()) {
            let why = "tier not available on this CPU or capped by BNORM_MAX_ISA";
            let _ = writeln!(std::io::stderr(), "SKIPPED {key}: {why}");
        }
    }
    k
}

/// splitmix64: a small deterministic generator, so a failing case is reproduced from its seed.
#[derive(Clone)]
pub struct Rng(pub u64);

impl Rng {
    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
    /// Uniform in [0, 1).
    pub fn unit(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64
    }
    /// Uniform in [lo, hi).
    pub fn range(&mut self, lo: f64, hi: f64) -> f64 {
        lo + (hi - lo) * self.unit()
    }
    pub fn below(&mut self, n: usize) -> usize {
        (self.next_u64() % n as u64) as usize
    }
}

/// A generated problem: data with per-channel offsets and scales, and affine parameters.
#[derive(Clone, Debug)]
pub struct Case {
    pub shape: Shape,
    pub layout: Layout,
    pub x: Vec<f32>,
    pub gamma: Option<Vec<f32>>,
    pub beta: Option<Vec<f32>>,
    pub eps: f32,
}

/// Data for `shape`/`layout`: channel c has scale σ_c = 10^[-2, 2], offset μ_c up to `max_offset`·σ_c
/// (log-uniform from 1), and a constant channel now and then. Padding lanes hold NaN.
pub fn gen_case(seed: u64, shape: Shape, layout: Layout, max_offset: f64) -> Case {
    let mut r = Rng(seed);
    let len = oracle::len(shape, layout);
    let mut x = vec![f32::NAN; len];
    for c in 0..shape.c {
        let sigma = 10f64.powf(r.range(-2.0, 2.0));
        let ratio = if max_offset > 1.0 { 10f64.powf(r.range(0.0, max_offset.log10())) } else { max_offset };
        let mu = sigma * ratio * r.range(-1.0, 1.0);
        let constant = r.below(16) == 0;
        for n in 0..shape.n {
            for s in 0..shape.spatial {
                let z = r.range(-1.0, 1.0) + r.range(-1.0, 1.0);
                let v = if constant { mu } else { mu + sigma * z };
                x[oracle::offset(shape, layout, n, c, s)] = v as f32;
            }
        }
    }
    let gamma = (r.below(4) != 0).then(|| (0..shape.c).map(|_| r.range(-2.0, 2.0) as f32).collect());
    let beta = (r.below(4) != 0).then(|| (0..shape.c).map(|_| r.range(-5.0, 5.0) as f32).collect());
    let eps = [0.0, 1e-5, 1e-3][r.below(3)];
    Case { shape, layout, x, gamma, beta, eps }
}

/// Copies `v` into a fresh buffer at element offset `align` (so kernels see odd alignments); returns the
/// buffer, whose `[align..align + v.len()]` is the data.
pub fn at_offset(v: &[f32], align: usize, fill: f32) -> Vec<f32> {
    let mut b = vec![fill; align + v.len() + 3];
    b[align..align + v.len()].copy_from_slice(v);
    b
}

// Tolerances, in units of U = 2^-24 (f32's unit roundoff). Justification:
// - mean: the final `k0 + m` rounds once (≤ U·|μ|, the resolution of f32 at the offset), and `m`, of the
//   order of σ, carries the rounding of the block sums and merges: MEAN_SIGMA·U·σ bounds it for the sizes
//   tested (counts up to ~10^5). Hence |mean − μ| ≤ 2U·|μ| + MEAN_SIGMA·U·σ.
// - variance: each block's `s2 − s1²/b` is formed around the running mean, so its cancellation is bounded;
//   the block sums and ~count/32 merges each round at U. |var − v| ≤ VAR_REL·U·v.
// - outputs: the mean and variance errors above propagate as γ·δμ/σ' and γ·(x−μ)/σ'·δv/(2v) — in
//   training without the mean's final rounding (2U·|μ|), which the kernels carry as a second term; the
//   subtraction, scale (1/√ correctly rounded, times γ) and fused or unfused multiply-add add a few U
//   relative to |γ(x−μ)/σ'| + |β|.
pub const MEAN_SIGMA: f64 = 16.0;
/// The bound the README states for the mean of subnormal data, in subnormal ulps (2⁻¹⁴⁹): every block
/// merge rounds the running mean to the subnormal grid, an absolute error the relative bounds above
/// cannot express.
pub const SUBNORMAL_MEAN_ULPS: f64 = 4.0;
pub const VAR_REL: f64 = 32.0;
pub const OUT_REL: f64 = 8.0;

/// Checks kernel statistics against the oracle; the message names the channel and the errors.
pub fn check_moments(case: &Case, mean: &[f32], var: &[f32]) -> Result<(), String> {
    let (rm, rv) = oracle::moments(case.shape, case.layout, &case.x);
    for c in 0..case.shape.c {
        let (m, v) = (mean[c] as f64, var[c] as f64);
        let tol_m = 2.0 * U * rm[c].abs() + MEAN_SIGMA * U * rv[c].sqrt();
        let tol_v = VAR_REL * U * rv[c];
        if !((m - rm[c]).abs() <= tol_m) {
            return Err(format!(
                "channel {c}: mean {m} vs {} (err {:e} > tol {tol_m:e})",
                rm[c],
                (m - rm[c]).abs()
            ));
        }
        if !((v - rv[c]).abs() <= tol_v) {
            return Err(format!(
                "channel {c}: var {v} vs {} (err {:e} > tol {tol_v:e})",
                rv[c],
                (v - rv[c]).abs()
            ));
        }
    }
    Ok(())
}

/// `Norm` of a training step: the oracle's statistics with the case's γ, β, ε.
pub fn training_norm(case: &Case) -> oracle::Norm {
    let (mean, var) = oracle::moments(case.shape, case.layout, &case.x);
    norm_with(case, mean, var)
}

/// `Norm` with given statistics and the case's γ, β, ε.
pub fn norm_with(case: &Case, mean: Vec<f64>, var: Vec<f64>) -> oracle::Norm {
    let c = case.shape.c;
    oracle::Norm {
        mean,
        var,
        gamma: case.gamma.as_ref().map_or(vec![1.0; c], |g| g.iter().map(|&v| v as f64).collect()),
        beta: case.beta.as_ref().map_or(vec![0.0; c], |b| b.iter().map(|&v| v as f64).collect()),
        eps: case.eps as f64,
    }
}

/// Checks normalised outputs against `norm`. With `training`, the tolerance includes the propagated
/// error of the kernel's own statistics; without, the statistics were given exactly. Padding must be 0.
pub fn check_outputs(case: &Case, y: &[f32], norm: &oracle::Norm, training: bool) -> Result<(), String> {
    let sh = case.shape;
    for c in 0..sh.c {
        let inv = norm.inv_std(c);
        let sd = norm.var[c].sqrt();
        for n in 0..sh.n {
            for s in 0..sh.spatial {
                let i = oracle::offset(sh, case.layout, n, c, s);
                let x = case.x[i] as f64;
                let want = norm.apply(c, x);
                let g = norm.gamma[c].abs();
                let centred = (x - norm.mean[c]).abs();
                let mut tol = OUT_REL * U * (g * centred * inv + norm.beta[c].abs()) + f64::MIN_POSITIVE;
                if training {
                    // The kernels subtract the batch mean as a pair (its f32 rounding and the rest), so the
                    // mean's rounding (2U·|μ|, which grows with the offset) is not in the output: only the
                    // error of the statistics' sums around their shift, of the order of U·σ.
                    let dm = MEAN_SIGMA * U * sd;
                    tol += g * inv * (dm + centred * (VAR_REL / 2.0 + OUT_REL) * U);
                }
                let got = y[i] as f64;
                if !((got - want).abs() <= tol) {
                    return Err(format!(
                        "(n={n}, c={c}, s={s}) at {i}: y {got} vs {want} (err {:e} > tol {tol:e}), x {x}",
                        (got - want).abs()
                    ));
                }
            }
        }
    }
    check_padding(case, y)
}

/// Padding lanes of a blocked output are exactly +0.0.
pub fn check_padding(case: &Case, y: &[f32]) -> Result<(), String> {
    for (i, &v) in y.iter().enumerate() {
        if oracle::is_padding(case.shape, case.layout, i) && v.to_bits() != 0 {
            return Err(format!("padding lane {i} holds {v}, not 0"));
        }
    }
    Ok(())
}

/// Checks `y = x·scale + shift`.
pub fn check_affine(case: &Case, y: &[f32], scale: &[f32], shift: &[f32]) -> Result<(), String> {
    let sh = case.shape;
    for c in 0..sh.c {
        for n in 0..sh.n {
            for s in 0..sh.spatial {
                let i = oracle::offset(sh, case.layout, n, c, s);
                let want = oracle::affine(scale[c], shift[c], case.x[i]);
                let tol = 4.0 * U * ((case.x[i] * scale[c]).abs() as f64 + shift[c].abs() as f64);
                if !((y[i] as f64 - want).abs() <= tol) {
                    return Err(format!("(n={n}, c={c}, s={s}): y {} vs {want}", y[i]));
                }
            }
        }
    }
    check_padding(case, y)
}

// Backward: the gradient sums are chains of 16 additions, 16 of those, then f64 (see the README's
// Guarantees); SUM_REL bounds their rounding relative to the sum of the terms' magnitudes, with margin.
pub const SUM_REL: f64 = 64.0;

/// A backward pass's results: `dx`, `dγ`, `dβ`.
pub struct Grads {
    pub dx: Vec<f32>,
    pub dgamma: Vec<f32>,
    pub dbeta: Vec<f32>,
}

/// Checks backward-pass gradients against the oracle (`batch`: training mode, the statistics the
/// kernel's own; else the given `mean`/`var` are exact). `halves`: from the reduce and element halves, whose
/// `Σdy·(x − mean)` is not corrected for the rounding of the saved mean (one more term).
#[allow(clippy::too_many_arguments)]
pub fn check_backward(
    case: &Case,
    dy: &[f32],
    batch: bool,
    mean: &[f32],
    var: &[f32],
    got: &Grads,
    grads: bool,
    halves: bool,
) -> Result<(), String> {
    let sh = case.shape;
    let norm: oracle::Norm = if batch {
        training_norm(case)
    } else {
        norm_with(case, mean.iter().map(|&v| v as f64).collect(), var.iter().map(|&v| v as f64).collect())
    };
    let (dx, dg, db) = oracle::backward(sh, case.layout, &case.x, dy, &norm, batch);
    let m = (sh.n * sh.spatial) as f64;
    for c in 0..sh.c {
        let inv = norm.inv_std(c);
        let g = norm.gamma[c].abs();
        let mu = norm.mean[c];
        // How far the saved mean may be from the true one (the statistics' bound; 0 when given).
        let tol_m = if batch { 2.0 * U * mu.abs() + MEAN_SIGMA * U * norm.var[c].sqrt() } else { 0.0 };
        // Relative error of the kernel's 1/√(var + ε) (from its f32 variance in batch mode).
        let e = if batch { (VAR_REL / 2.0 + 4.0) * U } else { 4.0 * U };
        let dys = oracle::channel(sh, case.layout, dy, c);
        let xs = oracle::channel(sh, case.layout, &case.x, c);
        let a_sum: f64 = dys.iter().map(|d| d.abs()).sum();
        // Σ(|dy| + |mean dy|)·(|x̂| + δμ·inv): what the covariance's roundings are relative to.
        let sx: f64 =
            dys.iter().zip(&xs).map(|(d, x)| (d.abs() + a_sum / m) * ((x - mu).abs() + tol_m) * inv).sum();
        let tol_g = e * dg[c].abs() + SUM_REL * U * sx;
        let tol_b = SUM_REL * U * a_sum;
        if grads {
            let (kg, kb) = (got.dgamma[c] as f64, got.dbeta[c] as f64);
            let tol_gh = tol_g + if halves { 2.0 * inv * (a_sum / m) * m * tol_m } else { 0.0 };
            if !((kg - dg[c]).abs() <= tol_gh) {
                return Err(format!("channel {c}: dgamma {kg} vs {} (tol {tol_gh:e})", dg[c]));
            }
            if !((kb - db[c]).abs() <= tol_b) {
                return Err(format!("channel {c}: dbeta {kb} vs {} (tol {tol_b:e})", db[c]));
            }
        }
        for n in 0..sh.n {
            for s in 0..sh.spatial {
                let i = oracle::offset(sh, case.layout, n, c, s);
                let (d, x) = (dy[i] as f64, case.x[i] as f64);
                let xh = (x - mu).abs() * inv + tol_m * inv;
                let mut tol = g * inv * (d.abs() + a_sum / m) * (e + 8.0 * U) + f64::MIN_POSITIVE;
                if batch {
                    tol += g
                        * inv
                        * (SUM_REL * U * a_sum / m + xh * (3.0 * e * dg[c].abs() + SUM_REL * U * sx) / m);
                    // `backward` subtracts the batch mean as the saved one and the rest (Σ(x − mean)/M from its
                    // own sums): only the latter's rounding, of the order of U·σ, is left in dx. The halves
                    // use the saved mean as it is.
                    let tol_mx = if halves { tol_m } else { MEAN_SIGMA * U * norm.var[c].sqrt() };
                    tol += g * inv * dg[c].abs() / m * tol_mx * inv;
                    if halves {
                        tol += 2.0 * g * inv * inv * (a_sum / m) * tol_m * xh;
                    }
                }
                let k = got.dx[i] as f64;
                if !((k - dx[i]).abs() <= tol) {
                    return Err(format!(
                        "(n={n}, c={c}, s={s}) at {i}: dx {k} vs {} (err {:e} > tol {tol:e}), x {x}, dy {d}",
                        dx[i],
                        (k - dx[i]).abs()
                    ));
                }
            }
        }
    }
    check_padding(case, &got.dx)
}

/// Output gradients: per channel a scale 10^[-1, 1] and, for half the channels, a mean of up to 3 of
/// those. Padding lanes hold NaN.
pub fn gen_dy(seed: u64, shape: Shape, layout: Layout) -> Vec<f32> {
    let mut r = Rng(seed);
    let mut dy = vec![f32::NAN; oracle::len(shape, layout)];
    for c in 0..shape.c {
        let scale = 10f64.powf(r.range(-1.0, 1.0));
        let mean = if r.below(2) == 0 { scale * r.range(-3.0, 3.0) } else { 0.0 };
        for n in 0..shape.n {
            for s in 0..shape.spatial {
                dy[oracle::offset(shape, layout, n, c, s)] = (mean + scale * r.range(-1.0, 1.0)) as f32;
            }
        }
    }
    dy
}
