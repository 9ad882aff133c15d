//! The f64 reference: two passes per channel, written from the definitions and independent of the
//! kernels (its own offset formula, its own loops). Shared by the tests and the fuzz targets.
#![allow(dead_code)]

use bnorm::{Layout, Shape};

/// Unit roundoff of f32, 2^-24.
pub const U: f64 = 1.0 / 16_777_216.0;

/// Index of (n, c, s) under `layout`, from the layout table.
pub fn offset(shape: Shape, layout: Layout, n: usize, c: usize, s: usize) -> usize {
    let Shape { c: cc, spatial, .. } = shape;
    match layout {
        Layout::Nchw => (n * cc + c) * spatial + s,
        Layout::Nhwc => (n * spatial + s) * cc + c,
        Layout::Blocked { block } => {
            let blocks = cc.div_ceil(block);
            ((n * blocks + c / block) * spatial + s) * block + c % block
        }
    }
}

/// Number of f32 a tensor holds, padding included.
pub fn len(shape: Shape, layout: Layout) -> usize {
    let pc = match layout {
        Layout::Blocked { block } => shape.c.div_ceil(block) * block,
        _ => shape.c,
    };
    shape.n * pc * shape.spatial
}

/// Whether index `i` is a padding lane of a blocked tensor.
pub fn is_padding(shape: Shape, layout: Layout, i: usize) -> bool {
    match layout {
        Layout::Blocked { block } => {
            let c_in_block = i % block;
            let cb = (i / block / shape.spatial) % shape.c.div_ceil(block);
            cb * block + c_in_block >= shape.c
        }
        _ => false,
    }
}

/// Values of channel `c` in (n, s) order.
pub fn channel(shape: Shape, layout: Layout, x: &[f32], c: usize) -> Vec<f64> {
    let mut v = Vec::with_capacity(shape.n * shape.spatial);
    for n in 0..shape.n {
        for s in 0..shape.spatial {
            v.push(x[offset(shape, layout, n, c, s)] as f64);
        }
    }
    v
}

/// Per-channel mean and population variance, two-pass in f64.
pub fn moments(shape: Shape, layout: Layout, x: &[f32]) -> (Vec<f64>, Vec<f64>) {
    let mut mean = Vec::new();
    let mut var = Vec::new();
    for c in 0..shape.c {
        let v = channel(shape, layout, x, c);
        let mu = v.iter().sum::<f64>() / v.len() as f64;
        let m2 = v.iter().map(|x| (x - mu) * (x - mu)).sum::<f64>();
        mean.push(mu);
        var.push(m2 / v.len() as f64);
    }
    (mean, var)
}

/// Per-channel parameters of a normalisation in f64.
#[derive(Clone, Debug)]
pub struct Norm {
    pub mean: Vec<f64>,
    pub var: Vec<f64>,
    pub gamma: Vec<f64>,
    pub beta: Vec<f64>,
    pub eps: f64,
}

impl Norm {
    /// `1/√(var + ε)`, 0 where `var + ε == 0`.
    pub fn inv_std(&self, c: usize) -> f64 {
        let d = self.var[c] + self.eps;
        if d == 0.0 { 0.0 } else { 1.0 / d.sqrt() }
    }

    /// The normalised output of value `x` of channel `c`.
    pub fn apply(&self, c: usize, x: f64) -> f64 {
        (x - self.mean[c]) * self.inv_std(c) * self.gamma[c] + self.beta[c]
    }
}

/// `y = x·scale + shift` in f64.
pub fn affine(scale: f32, shift: f32, x: f32) -> f64 {
    x as f64 * scale as f64 + shift as f64
}

/// The backward pass in f64 from the f32 inputs, written from the definitions: `(dx, dγ, dβ)`, with
/// `x̂ = (x − mean)/√(var + ε)` (0 where `var + ε = 0`), `dβ = Σdy`, `dγ = Σdy·x̂`, and
/// `dx = γ·inv·(dy − dβ/M − x̂·dγ/M)` with batch statistics (`batch`), `dx = γ·inv·dy` with global ones.
/// Padding lanes of `dx` are 0.
#[allow(clippy::too_many_arguments)]
pub fn backward(
    shape: Shape,
    layout: Layout,
    x: &[f32],
    dy: &[f32],
    norm: &Norm,
    batch: bool,
) -> (Vec<f64>, Vec<f64>, Vec<f64>) {
    let mut dx = vec![0.0; len(shape, layout)];
    let (mut dgamma, mut dbeta) = (Vec::new(), Vec::new());
    let m = shape.n * shape.spatial;
    for c in 0..shape.c {
        let inv = norm.inv_std(c);
        let xv = channel(shape, layout, x, c);
        let dv = channel(shape, layout, dy, c);
        let xhat: Vec<f64> = xv.iter().map(|&v| (v - norm.mean[c]) * inv).collect();
        let db: f64 = dv.iter().sum();
        let dg: f64 = dv.iter().zip(&xhat).map(|(d, h)| d * h).sum();
        let mut k = 0;
        for n in 0..shape.n {
            for s in 0..shape.spatial {
                let g = norm.gamma[c] * inv;
                dx[offset(shape, layout, n, c, s)] =
                    if batch { g * (dv[k] - db / m as f64 - xhat[k] * dg / m as f64) } else { g * dv[k] };
                k += 1;
            }
        }
        dgamma.push(dg);
        dbeta.push(db);
    }
    (dx, dgamma, dbeta)
}
