//! The main job: build an activation tensor, run training and inference forward in every layout with the
//! detected instruction-set tier, check the results against a straightforward f64 reference, and print a
//! short table. Exits with an error if any result is off.
//!
//! `cargo run --release --example quickstart`

use bnorm::{Affine, Isa, Kernels, Layout, Shape, TensorDesc};
use std::time::Instant;

const LAYOUTS: [Layout; 5] = [
    Layout::Nchw,
    Layout::Nhwc,
    Layout::Blocked { block: 4 },
    Layout::Blocked { block: 8 },
    Layout::Blocked { block: 16 },
];

fn name(l: Layout) -> String {
    match l {
        Layout::Nchw => "NCHW".into(),
        Layout::Nhwc => "NHWC".into(),
        Layout::Blocked { block } => format!("nChw{block}c"),
    }
}

/// Straightforward reference: two passes in f64 per channel, then the formula.
fn reference(
    desc: &TensorDesc,
    x: &[f32],
    gamma: &[f32],
    beta: &[f32],
    eps: f32,
) -> (Vec<f64>, Vec<f64>, Vec<f64>) {
    let Shape { n, c, spatial } = desc.shape();
    let (mut mean, mut var) = (vec![0.0; c], vec![0.0; c]);
    let mut y = vec![0.0; desc.len()];
    for ch in 0..c {
        let idx = || (0..n).flat_map(move |i| (0..spatial).map(move |s| desc.offset(i, ch, s).unwrap()));
        let mu = idx().map(|i| x[i] as f64).sum::<f64>() / (n * spatial) as f64;
        let v = idx().map(|i| (x[i] as f64 - mu).powi(2)).sum::<f64>() / (n * spatial) as f64;
        for i in idx() {
            y[i] = (x[i] as f64 - mu) / (v + eps as f64).sqrt() * gamma[ch] as f64 + beta[ch] as f64;
        }
        (mean[ch], var[ch]) = (mu, v);
    }
    (mean, var, y)
}

fn gbps(desc: &TensorDesc, mut f: impl FnMut()) -> f64 {
    let mut t: Vec<f64> = (0..15)
        .map(|_| {
            let s = Instant::now();
            f();
            s.elapsed().as_secs_f64()
        })
        .collect();
    t.sort_by(f64::total_cmp);
    2.0 * 4.0 * desc.len() as f64 / t[t.len() / 2] / 1e9
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let k = Kernels::detect();
    let avail: Vec<String> = Isa::available().map(|i| i.to_string()).collect();
    println!("bnorm quickstart: detected ISA {} (available: {})", k.isa(), avail.join(", "));
    let shape = Shape::nchw(8, 61, 28, 28);
    println!("tensor N×C×H×W = 8×61×28×28 (C = 61 is not a multiple of any block), offsets up to ~600·σ\n");
    println!(
        "| layout  | training: max |Δy| | inference: max |Δy| | max |Δmean|/σ | max rel Δvar | train GB/s | infer GB/s |"
    );
    println!(
        "|---------|--------------------|---------------------|---------------|--------------|------------|------------|"
    );
    let c = shape.c;
    let gamma: Vec<f32> = (0..c).map(|i| 0.5 + (i % 7) as f32 * 0.25).collect();
    let beta: Vec<f32> = (0..c).map(|i| (i % 5) as f32 - 2.0).collect();
    let eps = 1e-5;
    let affine = Affine::new(&gamma, &beta, eps);
    let mut failed = false;
    for layout in LAYOUTS {
        let desc = TensorDesc::new(shape, layout)?;
        // Channel c: offset (c - 30)·3, spread 0.5 + c/10; padding lanes hold NaN (ignored).
        let mut x = vec![f32::NAN; desc.len()];
        let mut state = 0x2545_F491_4F6C_DD1Du64;
        for ch in 0..c {
            for n in 0..shape.n {
                for s in 0..shape.spatial {
                    state ^= state << 13;
                    state ^= state >> 7;
                    state ^= state << 17;
                    let u = (state >> 40) as f32 / (1u64 << 24) as f32 - 0.5;
                    x[desc.offset(n, ch, s).unwrap()] =
                        (ch as f32 - 30.0) * 3.0 + u * (0.5 + ch as f32 / 10.0);
                }
            }
        }
        let (rm, rv, ry) = reference(&desc, &x, &gamma, &beta, eps);
        let mut y = vec![0.0; desc.len()];
        let (mut mean, mut var) = (vec![0.0; c], vec![0.0; c]);
        k.forward_training(&desc, &x, &mut y, &affine, &mut mean, &mut var)?;
        let mut train_err = 0f64;
        let (mut mean_err, mut var_err) = (0f64, 0f64);
        for ch in 0..c {
            mean_err = mean_err.max((mean[ch] as f64 - rm[ch]).abs() / rv[ch].sqrt());
            var_err = var_err.max((var[ch] as f64 - rv[ch]).abs() / rv[ch]);
        }
        for ch in 0..c {
            for n in 0..shape.n {
                for s in 0..shape.spatial {
                    let i = desc.offset(n, ch, s).unwrap();
                    train_err = train_err.max((y[i] as f64 - ry[i]).abs());
                }
            }
        }
        // Inference with the batch statistics as running statistics gives the same outputs.
        let mut yi = vec![0.0; desc.len()];
        k.forward_inference(&desc, &x, &mut yi, &affine, &mean, &var)?;
        let mut infer_err = 0f64;
        for (i, &v) in yi.iter().enumerate() {
            infer_err = infer_err.max((v as f64 - ry[i]).abs());
        }
        let t_gbps =
            gbps(&desc, || k.forward_training(&desc, &x, &mut y, &affine, &mut mean, &mut var).unwrap());
        let i_gbps = gbps(&desc, || k.forward_inference(&desc, &x, &mut yi, &affine, &mean, &var).unwrap());
        let ok = train_err < 1e-3 && infer_err < 1e-3 && mean_err < 1e-4 && var_err < 1e-5;
        failed |= !ok;
        println!(
            "| {:<7} | {train_err:>18.2e} | {infer_err:>19.2e} | {mean_err:>13.2e} | {var_err:>12.2e} | {t_gbps:>10.1} | {i_gbps:>10.1} |{}",
            name(layout),
            if ok { "" } else { " MISMATCH" }
        );
    }
    println!("\nGB/s counts the tensor read once and written once (2 × bytes) per median call, one thread.");
    if failed {
        return Err("results differ from the reference".into());
    }
    println!("all layouts match the f64 reference");
    Ok(())
}
