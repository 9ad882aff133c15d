//! Criterion benchmarks of every kernel variant: for each benchmark shape × layout × operation, one entry
//! per available tier plus `naive` (the straightforward code a user would write without this crate).
//!
//! Groups are named `{op}/{shape}/{layout}` and entries `{isa}`, so `cargo bench -- train/r50-s2` compares
//! the tiers on one problem and `cargo bench -- avx512` selects one tier. Throughput counts 2 × tensor
//! bytes (x read once, y written once; `moments` 1 ×; the backward ops and add+ReLU 3 ×, ReLU's backward
//! 4 ×), as `shared/peers/` does. The `*_relu` and `*_addrelu` groups are the fused epilogues. Data starts at odd element
//! offsets so that alignment does not flatter the results.
//!
//! `--threads T` (with `--features rayon`) runs bnorm's entries through the parallel front end
//! (`Kernels::par()`) on a rayon pool of T threads, each entry's whole timing loop inside the pool:
//! `cargo bench --features rayon --bench kernels -- --threads 2 train/r50-s2`. Criterion owns the rest
//! of the command line; with `--threads`, only a filter is taken besides it.

use bnorm::{Affine, Epilogue, Isa, Kernels, Layout, Shape, TensorDesc};
use criterion::{BenchmarkId, Criterion, Throughput};
use std::time::Duration;

mod common;
use common::{LAYOUTS, SHAPES};

/// The channel of memory index `i`.
fn channel_of(d: &TensorDesc, i: usize) -> usize {
    let Shape { c, spatial, .. } = d.shape();
    match d.layout() {
        Layout::Nchw => (i / spatial) % c,
        Layout::Nhwc => i % c,
        Layout::Blocked { block } => ((i / (block * spatial)) % c.div_ceil(block)) * block + i % block,
    }
}

/// Naive statistics: two passes in memory order with f32 per-channel sums.
fn naive_moments(d: &TensorDesc, x: &[f32], mean: &mut [f32], var: &mut [f32]) {
    let c = d.shape().c;
    let count = d.shape().count() as f32;
    mean.fill(0.0);
    var.fill(0.0);
    for (i, &v) in x.iter().enumerate() {
        let ch = channel_of(d, i);
        if ch < c {
            mean[ch] += v;
        }
    }
    mean.iter_mut().for_each(|m| *m /= count);
    for (i, &v) in x.iter().enumerate() {
        let ch = channel_of(d, i);
        if ch < c {
            var[ch] += (v - mean[ch]) * (v - mean[ch]);
        }
    }
    var.iter_mut().for_each(|v| *v /= count);
}

/// Naive normalisation in memory order.
fn naive_normalize(
    d: &TensorDesc,
    x: &[f32],
    y: &mut [f32],
    mean: &[f32],
    var: &[f32],
    gamma: &[f32],
    beta: &[f32],
) {
    let c = d.shape().c;
    for (i, (&v, out)) in x.iter().zip(y.iter_mut()).enumerate() {
        let ch = channel_of(d, i);
        *out = if ch < c { (v - mean[ch]) / (var[ch] + 1e-5).sqrt() * gamma[ch] + beta[ch] } else { 0.0 };
    }
}

fn naive_affine(d: &TensorDesc, x: &[f32], y: &mut [f32], scale: &[f32], shift: &[f32]) {
    let c = d.shape().c;
    for (i, (&v, out)) in x.iter().zip(y.iter_mut()).enumerate() {
        let ch = channel_of(d, i);
        *out = if ch < c { v * scale[ch] + shift[ch] } else { 0.0 };
    }
}

/// bnorm's entries: serial, or (feature `rayon`, `--threads`) the parallel front end on a pool.
struct Ops {
    #[cfg(feature = "rayon")]
    pool: Option<rayon::ThreadPool>,
}

impl Ops {
    /// Runs `f` (an entry's whole timing loop) inside the pool, if there is one.
    fn run<R: Send>(&self, f: impl FnOnce() -> R + Send) -> R {
        #[cfg(feature = "rayon")]
        if let Some(pool) = &self.pool {
            return pool.install(f);
        }
        f()
    }
}

/// `call!(ops, k, method(args))`: `Kernels::method`, or `Par::method` when the bench has a pool.
#[cfg(feature = "rayon")]
macro_rules! call {
    ($ops:expr, $k:expr, $method:ident($($arg:expr),* $(,)?)) => {
        if $ops.pool.is_some() { $k.par().$method($($arg),*) } else { $k.$method($($arg),*) }
    };
}

#[cfg(not(feature = "rayon"))]
macro_rules! call {
    ($ops:expr, $k:expr, $method:ident($($arg:expr),* $(,)?)) => {
        $k.$method($($arg),*)
    };
}

fn benches(cr: &mut Criterion, ops: &Ops) {
    for (name, [n, c, h, w]) in SHAPES {
        let shape = Shape::nchw(n, c, h, w);
        let tensor_bytes = (shape.count() * c * 4) as u64;
        let max_len = LAYOUTS.iter().map(|&(_, l)| TensorDesc::new(shape, l).unwrap().len()).max().unwrap();
        let mut state = 0x2545_F491_4F6C_DD1Du64;
        let xbuf: Vec<f32> = (0..max_len + 1)
            .map(|i| {
                state ^= state << 13;
                state ^= state >> 7;
                state ^= state << 17;
                (i % 13) as f32 + (state >> 40) as f32 / (1u64 << 24) as f32
            })
            .collect();
        let mut ybuf = vec![0.0f32; max_len + 2];
        // The output gradient of the backward ops: another stream with the same values.
        let dybuf: Vec<f32> = xbuf.iter().rev().map(|v| v - 6.0).collect();
        let (mut dgamma, mut dbeta) = (vec![0.0f32; c], vec![0.0f32; c]);
        let gamma = vec![1.5f32; c];
        let beta = vec![0.25f32; c];
        let aff = Affine::new(&gamma, &beta, 1e-5);
        let (mut mean, mut var) = (vec![0.0f32; c], vec![1.0f32; c]);
        for (lname, layout) in LAYOUTS {
            let d = TensorDesc::new(shape, layout).unwrap();
            let len = d.len();
            let x = &xbuf[1..1 + len];
            let dy = &dybuf[1..1 + len];
            for op in [
                "moments",
                "forward_training",
                "forward_inference",
                "channel_affine",
                "backward",
                "backward_global",
                "forward_training_relu",
                "forward_inference_relu",
                "forward_training_addrelu",
                "forward_inference_addrelu",
                "channel_affine_relu",
                "backward_relu",
            ] {
                let mut g = cr.benchmark_group(format!("{op}/{name}/{lname}"));
                let big = tensor_bytes > 20_000_000;
                g.sample_size(10)
                    .warm_up_time(Duration::from_millis(300))
                    .measurement_time(Duration::from_millis(if big { 2000 } else { 800 }));
                // Bytes each call must move: the backward ops read x and dy and write dx (and read the
                // forward output y for ReLU's mask); add+ReLU reads the residual z too.
                g.throughput(Throughput::Bytes(match op {
                    "moments" => tensor_bytes,
                    "backward" | "backward_global" => 3 * tensor_bytes,
                    "backward_relu" => 4 * tensor_bytes,
                    o if o.ends_with("addrelu") => 3 * tensor_bytes,
                    _ => 2 * tensor_bytes,
                }));
                let y = &mut ybuf[2..2 + len];
                if !op.starts_with("backward") && !op.ends_with("relu") {
                    g.bench_function(BenchmarkId::from_parameter("naive"), |b| match op {
                        "moments" => b.iter(|| naive_moments(&d, x, &mut mean, &mut var)),
                        "forward_training" => b.iter(|| {
                            naive_moments(&d, x, &mut mean, &mut var);
                            naive_normalize(&d, x, y, &mean, &var, &gamma, &beta)
                        }),
                        "forward_inference" => {
                            b.iter(|| naive_normalize(&d, x, y, &mean, &var, &gamma, &beta))
                        }
                        _ => b.iter(|| naive_affine(&d, x, y, &gamma, &beta)),
                    });
                }
                for isa in Isa::available() {
                    let k = Kernels::new(isa).unwrap();
                    let none = Epilogue::None;
                    g.bench_function(BenchmarkId::from_parameter(isa.name()), |b| {
                        ops.run(|| match op {
                            "moments" => {
                                b.iter(|| call!(ops, k, moments(&d, x, &mut mean, &mut var)).unwrap())
                            }
                            "forward_training" => b.iter(|| {
                                call!(ops, k, forward_training(&d, x, y, &aff, &mut mean, &mut var)).unwrap()
                            }),
                            "forward_inference" => b.iter(|| {
                                call!(ops, k, forward_inference(&d, x, y, &aff, &mean, &var)).unwrap()
                            }),
                            "channel_affine" => b.iter(|| {
                                call!(ops, k, channel_affine_with(&d, x, y, &gamma, &beta, none)).unwrap()
                            }),
                            "forward_training_relu" | "forward_training_addrelu" => {
                                let e = if op.ends_with("addrelu") {
                                    Epilogue::AddRelu(dy)
                                } else {
                                    Epilogue::Relu
                                };
                                b.iter(|| {
                                    call!(
                                        ops,
                                        k,
                                        forward_training_with(&d, x, y, &aff, &mut mean, &mut var, e)
                                    )
                                    .unwrap()
                                })
                            }
                            "forward_inference_relu" | "forward_inference_addrelu" => {
                                let e = if op.ends_with("addrelu") {
                                    Epilogue::AddRelu(dy)
                                } else {
                                    Epilogue::Relu
                                };
                                b.iter(|| {
                                    call!(ops, k, forward_inference_with(&d, x, y, &aff, &mean, &var, e))
                                        .unwrap()
                                })
                            }
                            "channel_affine_relu" => b.iter(|| {
                                call!(ops, k, channel_affine_with(&d, x, y, &gamma, &beta, Epilogue::Relu))
                                    .unwrap()
                            }),
                            "backward_relu" => {
                                // The mask: a ReLU forward output (about half of it zero).
                                let mut fwd = vec![0.0f32; len];
                                k.forward_training_with(
                                    &d,
                                    x,
                                    &mut fwd,
                                    &aff,
                                    &mut mean,
                                    &mut var,
                                    Epilogue::Relu,
                                )
                                .unwrap();
                                let saved = bnorm::Saved::batch(&mean, &var);
                                b.iter(|| {
                                    let g = bnorm::ParamGrads::new(&mut dgamma, &mut dbeta);
                                    let e = bnorm::GradEpilogue::Relu { y: &fwd };
                                    call!(ops, k, backward_with(&d, x, dy, y, &aff, &saved, g, e)).unwrap()
                                })
                            }
                            // Training mode (the statistics as forward_training left them) and global
                            // statistics, both writing dγ and dβ.
                            _ => {
                                let saved = if op == "backward" {
                                    bnorm::Saved::batch(&mean, &var)
                                } else {
                                    bnorm::Saved::global(&mean, &var)
                                };
                                b.iter(|| {
                                    let g = bnorm::ParamGrads::new(&mut dgamma, &mut dbeta);
                                    call!(ops, k, backward(&d, x, dy, y, &aff, &saved, g)).unwrap()
                                })
                            }
                        })
                    });
                }
                g.finish();
            }
        }
    }
}

/// The benchmarks (`criterion_main!`'s work, by hand: its `main` parses the command line again, which
/// `--threads` would fail).
fn main() {
    let args: Vec<String> = std::env::args().collect();
    let Some(at) = args.iter().position(|a| a == "--threads") else {
        let mut c = Criterion::default().configure_from_args();
        let serial = Ops {
            #[cfg(feature = "rayon")]
            pool: None,
        };
        benches(&mut c, &serial);
        c.final_summary();
        return;
    };
    let threads = args.get(at + 1).and_then(|t| t.parse::<usize>().ok()).filter(|&t| t > 0);
    let Some(threads) = threads else {
        eprintln!("--threads takes a count of at least 1");
        std::process::exit(2);
    };
    // Criterion's parser refuses flags it does not know: with `--threads`, the filter (the first other
    // argument not a flag; cargo adds `--bench`) is passed to it by hand.
    let filter =
        args.iter().enumerate().skip(1).find(|&(i, a)| i != at && i != at + 1 && !a.starts_with('-'));
    let mut c = Criterion::default();
    if let Some((_, f)) = filter {
        c = c.with_filter(f.clone());
    }
    #[cfg(feature = "rayon")]
    {
        let pool = rayon::ThreadPoolBuilder::new().num_threads(threads).build().expect("thread pool");
        benches(&mut c, &Ops { pool: Some(pool) });
        c.final_summary();
    }
    #[cfg(not(feature = "rayon"))]
    {
        let _ = (threads, &mut c);
        eprintln!(
            "--threads needs the parallel front end: cargo bench --features rayon --bench kernels -- --threads T"
        );
        std::process::exit(2);
    }
}
