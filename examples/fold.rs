//! Folding a batch norm into the convolution before it, as inference engines do at load time.
//!
//! A 3×3 convolution (NHWC, stride 1, zero padding 1) with bias, followed by batch normalisation in
//! inference mode, against the same convolution with the batch norm folded into its weights and bias by
//! `bnorm::fold_scale_shift`: `W'[o] = W[o]·scale[o]`, `b'[o] = b[o]·scale[o] + shift[o]`. The two differ
//! only by rounding; the example prints the largest difference relative to the magnitude of the terms
//! and fails if it exceeds the rounding bound.
//!
//! Run: `cargo run --release --example fold`.

use bnorm::{Affine, Layout, Shape, TensorDesc};

const N: usize = 2;
const H: usize = 14;
const W: usize = 14;
const CIN: usize = 8;
const COUT: usize = 16;
const K: usize = 3;

/// A small deterministic generator (xorshift), uniform in [-1, 1).
struct Rng(u32);
impl Rng {
    fn next(&mut self) -> f32 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 17;
        self.0 ^= self.0 << 5;
        (self.0 >> 8) as f32 / (1u32 << 23) as f32 - 1.0
    }
}

/// `y[n, h, w, o] = b[o] + Σ x[n, h + i − 1, w + j − 1, c]·wt[o, i, j, c]` (zero outside the image), in
/// f32; `mag` gets the same sum of absolute values in f64 (the size of the rounding bound).
fn conv(x: &[f32], wt: &[f32], b: &[f32], y: &mut [f32], mag: &mut [f64]) {
    for n in 0..N {
        for h in 0..H {
            for w in 0..W {
                for o in 0..COUT {
                    let (mut acc, mut abs) = (b[o], f64::from(b[o]).abs());
                    for i in 0..K {
                        for j in 0..K {
                            let (hh, ww) = ((h + i).wrapping_sub(1), (w + j).wrapping_sub(1));
                            if hh >= H || ww >= W {
                                continue;
                            }
                            for c in 0..CIN {
                                let p = x[((n * H + hh) * W + ww) * CIN + c]
                                    * wt[((o * K + i) * K + j) * CIN + c];
                                acc += p;
                                abs += f64::from(p).abs();
                            }
                        }
                    }
                    let at = ((n * H + h) * W + w) * COUT + o;
                    (y[at], mag[at]) = (acc, abs);
                }
            }
        }
    }
}

fn main() -> Result<(), bnorm::Error> {
    let mut r = Rng(0x2545_f491);
    let x: Vec<f32> = (0..N * H * W * CIN).map(|_| r.next()).collect();
    let wt: Vec<f32> = (0..COUT * K * K * CIN).map(|_| 0.3 * r.next()).collect();
    let b: Vec<f32> = (0..COUT).map(|_| r.next()).collect();
    // The batch norm's parameters and running statistics, as a trained network would hold them.
    let gamma: Vec<f32> = (0..COUT).map(|_| 1.0 + 0.5 * r.next()).collect();
    let beta: Vec<f32> = (0..COUT).map(|_| 0.2 * r.next()).collect();
    let mean: Vec<f32> = (0..COUT).map(|_| 0.5 * r.next()).collect();
    let var: Vec<f32> = (0..COUT).map(|_| 1.5 + r.next()).collect();
    let aff = Affine::new(&gamma, &beta, 1e-5);

    // Unfolded: convolution, then batch norm (inference, centred form).
    let desc = TensorDesc::new(Shape::nchw(N, COUT, H, W), Layout::Nhwc)?;
    let (mut z, mut mag) = (vec![0.0f32; desc.len()], vec![0.0f64; desc.len()]);
    conv(&x, &wt, &b, &mut z, &mut mag);
    let mut unfolded = vec![0.0f32; desc.len()];
    bnorm::forward_inference(&desc, &z, &mut unfolded, &aff, &mean, &var)?;

    // Folded: the batch norm moves into the weights and bias; one pass instead of two.
    let (mut scale, mut shift) = (vec![0.0f32; COUT], vec![0.0f32; COUT]);
    bnorm::fold_scale_shift(&aff, &mean, &var, &mut scale, &mut shift)?;
    let wt2: Vec<f32> = wt.iter().enumerate().map(|(i, &v)| v * scale[i / (K * K * CIN)]).collect();
    let b2: Vec<f32> = (0..COUT).map(|o| b[o] * scale[o] + shift[o]).collect();
    let mut folded = vec![0.0f32; desc.len()];
    let mut mag2 = vec![0.0f64; desc.len()];
    conv(&x, &wt2, &b2, &mut folded, &mut mag2);

    // Each form rounds every product and partial sum once, plus the batch norm's few roundings: the
    // difference is within (terms + 8)·U of the terms' magnitude (scaled by |scale|) plus |mean·scale|
    // and |β|.
    let u = f64::from(f32::EPSILON) / 2.0;
    let terms = (K * K * CIN + 1) as f64;
    let mut worst = 0.0f64;
    for (i, (&a, &f)) in unfolded.iter().zip(&folded).enumerate() {
        let o = i % COUT;
        let size = mag[i] * f64::from(scale[o]).abs()
            + f64::from(mean[o] * scale[o]).abs()
            + f64::from(beta[o]).abs();
        let ratio = (f64::from(a) - f64::from(f)).abs() / (u * size);
        worst = worst.max(ratio);
        assert!(ratio <= terms + 8.0, "output {i}: unfolded {a} vs folded {f} ({ratio:.1} U)");
    }
    let same = unfolded.iter().zip(&folded).filter(|(a, f)| a.to_bits() == f.to_bits()).count();
    println!(
        "conv 3x3 {CIN}->{COUT} on {N}x{H}x{W} + batch norm, folded into the weights: largest difference {worst:.2} U \
         of the terms' magnitude (bound {:.0} U); {:.1} % of outputs bit-identical",
        terms + 8.0,
        100.0 * same as f64 / folded.len() as f64
    );
    Ok(())
}
