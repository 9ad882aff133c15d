//! Roofline report: measures this machine's streaming limit in process (a read pass, and a read+write
//! pass with non-temporal and with ordinary stores), then times every operation, layout and tier on the
//! benchmark shapes and prints GB/s and % of the limit. Writes the same as CSV and an SVG chart under
//! `target/roofline/`.
//!
//! `cargo run --release --example roofline [-- --quick] [--filter TEXT] [--isa NAME] [--offset K] [--skip-limit]`
//!
//! `--threads T` (built with `--features rayon`) runs every operation through the parallel front end
//! (`bnorm::par`) on a rayon pool of T threads, and the limit passes on T threads too; without it
//! everything runs on one thread.
//!
//! `--skip-limit` leaves out the in-process limit passes (their columns read 0): for scripts that
//! measure the limit themselves, such as `scripts/side_by_side.py`.
//!
//! `--offset K` places x and y K floats past a 64-byte boundary instead of on it: `--offset 4` is what
//! `Vec<f32>` from the global allocator usually gives (16-byte aligned), so the user-buffer case is
//! measured beside the aligned one.
//!
//! GB/s follows `shared/peers/`: 2 × tensor bytes (x read once, y written once) per median call, one
//! thread, preallocated outputs; `moments` counts the tensor once (it only reads), the backward ops
//! three times (x and dy read, dx written; `backward` with batch statistics, `backward-global` with
//! global ones, both writing dγ and dβ). The fused epilogues (`*-relu`: `Epilogue::Relu`;
//! `*-addrelu`: `Epilogue::AddRelu`, whose residual z is one more tensor read, so 3 × tensor bytes)
//! run the same shapes; `backward-relu` (batch statistics, the mask from y) counts x, dy and y read and
//! dx written, 4 × tensor bytes. `--quick` times the
//! detected tier only, with fewer repetitions (under 30 s).

use bnorm::{__bench, Affine, Epilogue, Isa, Kernels, Shape, TensorDesc};
use plotters::prelude::*;
use std::fmt::Write as _;
use std::time::Instant;

#[path = "../benches/common/mod.rs"]
mod common;
use common::{LAYOUTS, SHAPES};

const OPS: [&str; 13] = [
    "moments",
    "train",
    "infer",
    "affine",
    "train-inplace",
    "infer-inplace",
    "backward",
    "backward-global",
    "train-relu",
    "infer-relu",
    "train-addrelu",
    "infer-addrelu",
    "backward-relu",
];

/// The operations serial or, with `--threads` (feature `rayon`), on a pool of that many threads:
/// `call!(ops, method(args))` runs `Kernels::method` or `Par::method`. The whole timing loop of an
/// operation runs inside the pool (`in_pool!`), as a caller's work would: entering the pool once per
/// call costs a hand-over to a worker thread and back (tens of microseconds here), more than a small
/// tensor's whole call.
struct Ops {
    k: Kernels,
    #[cfg(feature = "rayon")]
    pool: Option<rayon::ThreadPool>,
}

#[cfg(feature = "rayon")]
macro_rules! call {
    ($ops:expr, $method:ident($($arg:expr),* $(,)?)) => {
        // (The timing loop runs inside the pool: `in_pool!` below.)
        match &$ops.pool {
            Some(_) => $ops.k.par().$method($($arg),*),
            None => $ops.k.$method($($arg),*),
        }
    };
}

#[cfg(not(feature = "rayon"))]
macro_rules! call {
    ($ops:expr, $method:ident($($arg:expr),* $(,)?)) => {
        $ops.k.$method($($arg),*)
    };
}

/// Runs `f` (an operation's whole timing loop) inside the pool, if there is one.
macro_rules! in_pool {
    ($ops:expr, $f:expr) => {{
        #[cfg(feature = "rayon")]
        let r = match &$ops.pool {
            Some(pool) => pool.install($f),
            None => ($f)(),
        };
        #[cfg(not(feature = "rayon"))]
        let r = ($f)();
        r
    }};
}

/// Median seconds of `reps` calls after one warm-up call.
fn median(reps: usize, mut f: impl FnMut()) -> f64 {
    f();
    let mut t: Vec<f64> = (0..reps)
        .map(|_| {
            let s = Instant::now();
            f();
            s.elapsed().as_secs_f64()
        })
        .collect();
    t.sort_by(f64::total_cmp);
    t[t.len() / 2]
}

/// Best seconds of `reps` calls (the limit, as `stream_limit.c` reports it).
fn best(reps: usize, mut f: impl FnMut()) -> f64 {
    (0..reps)
        .map(|_| {
            let s = Instant::now();
            f();
            s.elapsed().as_secs_f64()
        })
        .fold(f64::INFINITY, f64::min)
}

struct Limit {
    read: f64,
    nt: f64,
    store: f64,
}

fn limit(k: &Kernels, x: &[f32], y: &mut [f32], reps: usize, threads: usize) -> Limit {
    let bytes = x.len() as f64 * 4.0;
    if threads > 1 {
        return threaded_limit(k, x, y, reps, threads, bytes);
    }
    let mut sink = 0.0;
    let read = bytes / best(reps, || sink += __bench::read_pass(k, x)) / 1e9;
    std::hint::black_box(sink);
    let nt = 2.0 * bytes / best(reps, || __bench::scale_pass(k, x, y, true)) / 1e9;
    let store = 2.0 * bytes / best(reps, || __bench::scale_pass(k, x, y, false)) / 1e9;
    Limit { read, nt, store }
}

/// The limit passes on `threads` threads, each over its own contiguous share of the buffers.
#[cfg(feature = "rayon")]
fn threaded_limit(k: &Kernels, x: &[f32], y: &mut [f32], reps: usize, threads: usize, bytes: f64) -> Limit {
    use rayon::prelude::*;
    let pool = rayon::ThreadPoolBuilder::new().num_threads(threads).build().expect("thread pool");
    let share = x.len().div_ceil(threads).next_multiple_of(16);
    let read = bytes
        / best(reps, || {
            let s: f32 = pool.install(|| x.par_chunks(share).map(|c| __bench::read_pass(k, c)).sum());
            std::hint::black_box(s);
        })
        / 1e9;
    let mut pass = |stream| {
        2.0 * bytes
            / best(reps, || {
                pool.install(|| {
                    x.par_chunks(share)
                        .zip(y.par_chunks_mut(share))
                        .for_each(|(a, b)| __bench::scale_pass(k, a, b, stream))
                })
            })
            / 1e9
    };
    let (nt, store) = (pass(true), pass(false));
    Limit { read, nt, store }
}

#[cfg(not(feature = "rayon"))]
fn threaded_limit(_: &Kernels, _: &[f32], _: &mut [f32], _: usize, _: usize, _: f64) -> Limit {
    unreachable!("--threads is refused without the rayon feature")
}

struct Row {
    shape: &'static str,
    layout: &'static str,
    op: &'static str,
    isa: Isa,
    gbps: f64,
    limit: f64,
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let quick = args.iter().any(|a| a == "--quick");
    let skip_limit = args.iter().any(|a| a == "--skip-limit");
    let arg = |name: &str| args.iter().position(|a| a == name).and_then(|i| args.get(i + 1)).cloned();
    let filter = arg("--filter");
    let offset: usize =
        arg("--offset").map_or(Ok(0), |v| v.parse()).map_err(|_| "--offset takes a whole number")?;
    if offset >= 16 {
        return Err("--offset is in floats past a 64-byte line: 0 to 15".into());
    }
    let isas: Vec<Isa> = match arg("--isa") {
        Some(n) => {
            vec![Isa::from_name(&n).filter(|i| i.is_available()).ok_or("unknown or unavailable --isa")?]
        }
        None if quick => vec![Isa::detect()],
        None => Isa::available().collect(),
    };
    let threads: usize =
        arg("--threads").map_or(Ok(1), |v| v.parse()).map_err(|_| "--threads takes a count")?;
    if threads == 0 {
        return Err("--threads takes a count of at least 1".into());
    }
    let threaded = arg("--threads").is_some();
    if threaded && cfg!(not(feature = "rayon")) {
        return Err(
            "--threads needs the parallel front end: cargo run --release --features rayon --example roofline"
                .into(),
        );
    }
    let best_k = Kernels::detect();
    println!(
        "bnorm roofline: detected {}, timing {:?}, {}, buffers {} floats past a 64-byte line",
        best_k.isa(),
        isas,
        if threaded { format!("bnorm::par on {threads} threads") } else { "one thread".to_string() },
        offset
    );
    let t = __bench::tuning();
    println!(
        "caches: L2 {} KB, L3 {} KB; non-temporal stores from {} KB, training chunks {} KB, prefetch ≤ {} KB{}",
        t.l2_bytes >> 10,
        t.l3_bytes >> 10,
        t.stream_min_bytes >> 10,
        t.train_chunk_bytes >> 10,
        t.prefetch_bytes >> 10,
        if t.memory_prefetch { "" } else { " (none from memory)" }
    );
    println!(
        "GB/s = 2 × tensor bytes / median call (moments 1 ×; backward, add+ReLU 3 ×; backward-relu 4 ×); limit = best of the in-process passes\n"
    );
    println!("| shape | layout | op | isa | GB/s | limit GB/s | % of limit |");
    println!("|---|---|---|---|---|---|---|");
    let mut rows = Vec::new();
    for (name, [n, c, h, w]) in SHAPES {
        if filter.as_ref().is_some_and(|f| {
            !LAYOUTS
                .iter()
                .any(|&(lname, _)| OPS.iter().any(|op| format!("{name}/{lname}/{op}/").contains(f.as_str())))
                && !isas.iter().any(|i| f.contains(i.name()))
        }) {
            continue;
        }
        let shape = Shape::nchw(n, c, h, w);
        let bytes = shape.count() * c * 4;
        let reps = match (bytes > 20_000_000, quick) {
            (true, true) => 3,
            (true, false) => 10,
            (false, true) => 15,
            (false, false) => 60,
        };
        let max_len =
            LAYOUTS.iter().map(|&(_, l)| TensorDesc::new(shape, l).map_or(0, |d| d.len())).max().unwrap_or(0);
        let mut state = 0x9E37_79B9_7F4A_7C15u64;
        // 64-byte aligned buffers, as oneDNN and stream_limit.c use, or `offset` floats past that.
        let mut xbuf = vec![0.0f32; max_len + 32];
        let xo = xbuf.as_ptr().align_offset(64) + offset;
        for (i, v) in xbuf[xo..xo + max_len].iter_mut().enumerate() {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            *v = (i % c) as f32 + (state >> 40) as f32 / (1u64 << 24) as f32;
        }
        let x = &xbuf[xo..xo + max_len];
        // The output gradient of the backward ops: the input reversed (another stream, same values).
        let mut dybuf = vec![0.0f32; max_len + 32];
        let dyo = dybuf.as_ptr().align_offset(64) + offset;
        for (d, v) in dybuf[dyo..dyo + max_len].iter_mut().zip(x.iter().rev()) {
            *d = *v - 0.5;
        }
        let dy = &dybuf[dyo..dyo + max_len];
        let (mut dgamma, mut dbeta) = (vec![0.0f32; c], vec![0.0f32; c]);
        let mut ybuf = vec![0.0f32; max_len + 32];
        let yo = ybuf.as_ptr().align_offset(64) + offset;
        let y = &mut ybuf[yo..yo + max_len];
        let tlen = shape.count() * c;
        let lim = if skip_limit {
            Limit { read: 0.0, nt: 0.0, store: 0.0 }
        } else {
            limit(&best_k, &x[..tlen], &mut y[..tlen], if quick { 3 } else { 10 }, threads)
        };
        println!(
            "| {name} | limit | read {:.1}, r+w NT {:.1}, r+w store {:.1} | | | | |",
            lim.read, lim.nt, lim.store
        );
        let rw = lim.nt.max(lim.store);
        let (mut mean, mut var) = (vec![0.0f32; c], vec![1.0f32; c]);
        let (gamma, beta) = (vec![1.0f32; c], vec![0.0f32; c]);
        let aff = Affine::new(&gamma, &beta, 1e-5);
        for (lname, layout) in LAYOUTS {
            let desc = TensorDesc::new(shape, layout)?;
            let len = desc.len();
            for op in OPS {
                if quick && op.ends_with("inplace") {
                    continue;
                }
                for &isa in &isas {
                    let tag = format!("{name}/{lname}/{op}/{isa}");
                    if filter.as_ref().is_some_and(|f| !tag.contains(f.as_str())) {
                        continue;
                    }
                    let k = Kernels::new(isa).ok_or("tier vanished")?;
                    let ops = Ops {
                        k,
                        #[cfg(feature = "rayon")]
                        pool: threaded
                            .then(|| rayon::ThreadPoolBuilder::new().num_threads(threads).build())
                            .transpose()?,
                    };
                    let xs = &x[..len];
                    let t = in_pool!(ops, || match op {
                        "moments" => {
                            median(reps, || call!(ops, moments(&desc, xs, &mut mean, &mut var)).unwrap())
                        }
                        "train" => median(reps, || {
                            call!(ops, forward_training(&desc, xs, &mut y[..len], &aff, &mut mean, &mut var))
                                .unwrap()
                        }),
                        "infer" => median(reps, || {
                            call!(ops, forward_inference(&desc, xs, &mut y[..len], &aff, &mean, &var))
                                .unwrap()
                        }),
                        "affine" => median(reps, || {
                            call!(
                                ops,
                                channel_affine_with(&desc, xs, &mut y[..len], &gamma, &beta, Epilogue::None)
                            )
                            .unwrap()
                        }),
                        "backward" | "backward-global" => {
                            let saved = if op == "backward" {
                                bnorm::Saved::batch(&mean, &var)
                            } else {
                                bnorm::Saved::global(&mean, &var)
                            };
                            let dys = &dy[..len];
                            median(reps, || {
                                let g = bnorm::ParamGrads::new(&mut dgamma, &mut dbeta);
                                call!(ops, backward(&desc, xs, dys, &mut y[..len], &aff, &saved, g)).unwrap()
                            })
                        }
                        "train-relu" | "train-addrelu" => {
                            let e = if op == "train-relu" {
                                Epilogue::Relu
                            } else {
                                Epilogue::AddRelu(&dy[..len])
                            };
                            median(reps, || {
                                call!(
                                    ops,
                                    forward_training_with(
                                        &desc,
                                        xs,
                                        &mut y[..len],
                                        &aff,
                                        &mut mean,
                                        &mut var,
                                        e
                                    )
                                )
                                .unwrap()
                            })
                        }
                        "infer-relu" | "infer-addrelu" => {
                            let e = if op == "infer-relu" {
                                Epilogue::Relu
                            } else {
                                Epilogue::AddRelu(&dy[..len])
                            };
                            median(reps, || {
                                call!(
                                    ops,
                                    forward_inference_with(&desc, xs, &mut y[..len], &aff, &mean, &var, e)
                                )
                                .unwrap()
                            })
                        }
                        "backward-relu" => {
                            // The forward output with ReLU, about half of it zero, as the mask.
                            let mut fwd = vec![0.0f32; len];
                            k.forward_training_with(
                                &desc,
                                xs,
                                &mut fwd,
                                &aff,
                                &mut mean,
                                &mut var,
                                Epilogue::Relu,
                            )
                            .unwrap();
                            let saved = bnorm::Saved::batch(&mean, &var);
                            let dys = &dy[..len];
                            median(reps, || {
                                let g = bnorm::ParamGrads::new(&mut dgamma, &mut dbeta);
                                let e = bnorm::GradEpilogue::Relu { y: &fwd };
                                call!(ops, backward_with(&desc, xs, dys, &mut y[..len], &aff, &saved, g, e))
                                    .unwrap()
                            })
                        }
                        "train-inplace" => {
                            y[..len].copy_from_slice(xs);
                            median(reps, || {
                                let e = Epilogue::None;
                                call!(
                                    ops,
                                    forward_training_in_place_with(
                                        &desc,
                                        &mut y[..len],
                                        &aff,
                                        &mut mean,
                                        &mut var,
                                        e
                                    )
                                )
                                .unwrap()
                            })
                        }
                        _ => {
                            y[..len].copy_from_slice(xs);
                            median(reps, || {
                                let e = Epilogue::None;
                                call!(
                                    ops,
                                    forward_inference_in_place_with(
                                        &desc,
                                        &mut y[..len],
                                        &aff,
                                        &mean,
                                        &var,
                                        e
                                    )
                                )
                                .unwrap()
                            })
                        }
                    });
                    // Backward reads x and dy and writes dx: three tensors against the read+write limit.
                    let (moved, lim_op) = match op {
                        "moments" => (1.0, lim.read),
                        "backward" | "backward-global" | "train-addrelu" | "infer-addrelu" => (3.0, rw),
                        "backward-relu" => (4.0, rw),
                        _ => (2.0, rw),
                    };
                    let gbps = moved * tlen as f64 * 4.0 / t / 1e9;
                    let pct = if lim_op > 0.0 { 100.0 * gbps / lim_op } else { 0.0 };
                    println!("| {name} | {} | {op} | {isa} | {gbps:.1} | {lim_op:.1} | {pct:.0}% |", lname);
                    rows.push(Row { shape: name, layout: lname, op, isa, gbps, limit: lim_op });
                }
            }
        }
    }
    std::fs::create_dir_all("target/roofline")?;
    let mut csv = String::from("shape,layout,op,isa,gbps,limit_gbps,pct_of_limit\n");
    for r in &rows {
        writeln!(
            csv,
            "{},{},{},{},{:.3},{:.3},{:.1}",
            r.shape,
            r.layout,
            r.op,
            r.isa,
            r.gbps,
            r.limit,
            if r.limit > 0.0 { 100.0 * r.gbps / r.limit } else { 0.0 }
        )?;
    }
    std::fs::write("target/roofline/roofline.csv", csv)?;
    if !skip_limit {
        chart(&rows, "target/roofline/roofline.svg")?;
    }
    println!("\nwrote target/roofline/roofline.csv and target/roofline/roofline.svg");
    Ok(())
}

/// One panel per operation: % of the limit for every shape × layout, one series per tier, and the limit
/// as the 100 % line.
fn chart(rows: &[Row], path: &str) -> Result<(), Box<dyn std::error::Error>> {
    let ops: Vec<&str> = OPS.iter().copied().filter(|op| rows.iter().any(|r| r.op == *op)).collect();
    if ops.is_empty() {
        return Ok(());
    }
    let root = SVGBackend::new(path, (1400, 360 * ops.len() as u32)).into_drawing_area();
    root.fill(&WHITE)?;
    let panels = root.split_evenly((ops.len(), 1));
    let palette =
        [RGBColor(90, 90, 90), RGBColor(31, 119, 180), RGBColor(44, 160, 44), RGBColor(214, 39, 40)];
    for (panel, op) in panels.iter().zip(&ops) {
        let cats: Vec<String> = rows
            .iter()
            .filter(|r| r.op == *op)
            .map(|r| format!("{}/{}", r.shape, r.layout))
            .fold(Vec::new(), |mut v, s| {
                if !v.contains(&s) {
                    v.push(s);
                }
                v
            });
        let top = rows.iter().filter(|r| r.op == *op).map(|r| 100.0 * r.gbps / r.limit).fold(110.0, f64::max);
        let mut ch = ChartBuilder::on(panel)
            .caption(format!("{op}: % of the streaming limit (one thread)"), ("sans-serif", 18))
            .margin(10)
            .x_label_area_size(110)
            .y_label_area_size(50)
            .build_cartesian_2d(-0.5f64..cats.len() as f64 - 0.5, 0f64..top * 1.05)?;
        ch.configure_mesh()
            .x_labels(cats.len())
            .x_label_formatter(&|v| {
                let i = v.round();
                if (v - i).abs() < 1e-6 && i >= 0.0 {
                    cats.get(i as usize).cloned().unwrap_or_default()
                } else {
                    String::new()
                }
            })
            .x_label_style(("sans-serif", 10).into_font().transform(FontTransform::Rotate90))
            .y_desc("% of limit")
            .draw()?;
        ch.draw_series(LineSeries::new(
            [(-0.5, 100.0), (cats.len() as f64 - 0.5, 100.0)],
            BLACK.stroke_width(2),
        ))?
        .label("limit")
        .legend(|(x, y)| PathElement::new([(x, y), (x + 20, y)], BLACK.stroke_width(2)));
        for (i, isa) in Isa::ALL.iter().enumerate() {
            let pts: Vec<(f64, f64)> = rows
                .iter()
                .filter(|r| r.op == *op && r.isa == *isa)
                .filter_map(|r| {
                    let key = format!("{}/{}", r.shape, r.layout);
                    cats.iter().position(|c| *c == key).map(|x| (x as f64, 100.0 * r.gbps / r.limit))
                })
                .collect();
            if pts.is_empty() {
                continue;
            }
            let col = palette[i % palette.len()];
            ch.draw_series(pts.iter().map(|&p| Circle::new(p, 4, col.filled())))?
                .label(isa.name())
                .legend(move |(x, y)| Circle::new((x + 10, y), 4, col.filled()));
        }
        ch.configure_series_labels().background_style(WHITE.mix(0.8)).border_style(BLACK).draw()?;
    }
    root.present()?;
    Ok(())
}
