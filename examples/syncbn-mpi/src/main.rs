//! SyncBN across processes with a real MPI (issue 13, item 4).
//!
//! Each rank holds a shard of the batch (uneven shards), computes the [`Partial`] statistics of its
//! shard, all-gathers them as bytes, merges them in rank order, and normalises its shard with the merged
//! statistics (`forward_from_partials`: training's arithmetic). Rank 0 gathers every rank's output and
//! checks it:
//!
//! - **bit for bit** against one process doing the same with the same shards (the partials of each
//!   batch range merged in the same order, the whole batch normalised in one call): the transport and
//!   the split change nothing;
//! - **within the documented bounds** against an f64 reference of the whole batch, and so is
//!   single-process `forward_training` on the whole batch (merged statistics differ from one call's in
//!   their last bits: another summation tree; README, Guarantees), at offsets |mean|/σ of 1 and 10⁴.
//!
//! It also updates running statistics from the merged partials on every rank and checks that all ranks
//! agree. Run (from this directory):
//!
//! ```text
//! cargo build --release && mpirun --allow-run-as-root --oversubscribe -n 3 target/release/syncbn-mpi
//! ```
//!
//! Every rank generates the whole batch from the same seed and keeps only its shard (as a data loader
//! reading its own samples would); only the shard's values enter the rank's computation.

use bnorm::{Affine, Epilogue, Layout, Momentum, Partial, Shape, TensorDesc};
use mpi::Count;
use mpi::datatype::PartitionMut;
use mpi::traits::*;
use std::process::ExitCode;

/// f32's unit roundoff, 2⁻²⁴.
const U: f64 = 1.0 / 16_777_216.0;

/// Sample ranges of each rank: uneven (for 3 ranks, 5, 2 and 4 samples of 11), every rank at least one.
fn shards(n: usize, ranks: usize) -> Vec<(usize, usize)> {
    let weights: Vec<usize> = (0..ranks).map(|r| [5, 2, 4][r % 3]).collect();
    let total: usize = weights.iter().sum();
    let mut bounds = vec![0];
    let mut acc = 0;
    for (r, w) in weights.iter().enumerate() {
        acc += w;
        // At least one sample per rank before, and enough left for the ranks after.
        let end = (acc * n / total).max(bounds[r] + 1).min(n - (ranks - r - 1));
        bounds.push(if r + 1 == ranks { n } else { end });
    }
    bounds.windows(2).map(|w| (w[0], w[1])).collect()
}

/// Deterministic data: channel c around `offset·σ_c` with spread σ_c, the same on every rank.
fn data(desc: &TensorDesc, offset: f64) -> Vec<f32> {
    let sh = desc.shape();
    let mut x = vec![0.0f32; desc.len()];
    let mut state = 0x2545_F491_4F6C_DD1Du64;
    for c in 0..sh.c {
        let sigma = 0.25 + c as f64 * 0.5;
        for n in 0..sh.n {
            for s in 0..sh.spatial {
                state ^= state << 13;
                state ^= state >> 7;
                state ^= state << 17;
                let u = (state >> 11) as f64 / (1u64 << 53) as f64 - 0.5;
                if let Some(i) = desc.offset(n, c, s) {
                    x[i] = (offset * sigma + sigma * 2.0 * u) as f32;
                }
            }
        }
    }
    x
}

/// The largest error of `y` against the f64 normalisation of the whole batch, in units of the README's
/// output bound: `8U·(|γ(x−μ)/σ'| + |β|)` plus the propagated error of the statistics,
/// `|γ|/σ'·(16U·σ + 24U·|x − μ|)`. Below 1 is within the bound.
fn worst(desc: &TensorDesc, x: &[f32], y: &[f32], gamma: &[f32], beta: &[f32], eps: f32) -> f64 {
    let sh = desc.shape();
    let mut worst = 0.0f64;
    for c in 0..sh.c {
        let vals: Vec<f64> = (0..sh.n)
            .flat_map(|n| (0..sh.spatial).map(move |s| (n, s)))
            .filter_map(|(n, s)| desc.offset(n, c, s))
            .map(|i| x[i] as f64)
            .collect();
        let mean = vals.iter().sum::<f64>() / vals.len() as f64;
        let var = vals.iter().map(|v| (v - mean) * (v - mean)).sum::<f64>() / vals.len() as f64;
        let inv = 1.0 / (var + eps as f64).sqrt();
        let (g, b) = (gamma[c] as f64, beta[c] as f64);
        for n in 0..sh.n {
            for s in 0..sh.spatial {
                let Some(i) = desc.offset(n, c, s) else { continue };
                let d = x[i] as f64 - mean;
                let want = d * inv * g + b;
                let tol = 8.0 * U * (g.abs() * d.abs() * inv + b.abs())
                    + g.abs() * inv * (16.0 * U * var.sqrt() + 24.0 * U * d.abs())
                    + f64::MIN_POSITIVE;
                let err = (y[i] as f64 - want).abs() / tol;
                worst = worst.max(if err.is_nan() { f64::INFINITY } else { err });
            }
        }
    }
    worst
}

fn main() -> ExitCode {
    let Some(universe) = mpi::initialize() else {
        eprintln!("MPI was initialised already");
        return ExitCode::FAILURE;
    };
    let world = universe.world();
    let (rank, ranks) = (world.rank() as usize, world.size() as usize);
    let root = world.process_at_rank(0);
    let n = 11.max(ranks);
    let mut failed = false;
    for layout in [Layout::Nchw, Layout::Nhwc, Layout::Blocked { block: 16 }] {
        for offset in [1.0, 1e4] {
            match run(&world, &root, rank, ranks, n, layout, offset) {
                Ok(ok) => failed |= !ok,
                Err(e) => {
                    eprintln!("rank {rank}: {layout:?} offset {offset}: {e}");
                    failed = true;
                }
            }
        }
    }
    if rank == 0 {
        println!("syncbn-mpi: {}", if failed { "FAIL" } else { "PASS" });
    }
    if failed { ExitCode::FAILURE } else { ExitCode::SUCCESS }
}

/// One SyncBN forward step on `ranks` ranks; on rank 0, whether every check passed.
#[allow(clippy::too_many_arguments)]
fn run<C: Communicator>(
    world: &C,
    root: &mpi::topology::Process<'_>,
    rank: usize,
    ranks: usize,
    n: usize,
    layout: Layout,
    offset: f64,
) -> Result<bool, bnorm::Error> {
    let whole = TensorDesc::new(Shape::nchw(n, 24, 9, 9), layout)?;
    let c = whole.shape().c;
    let gamma: Vec<f32> = (0..c).map(|j| 0.5 + j as f32 * 0.125).collect();
    let beta: Vec<f32> = (0..c).map(|j| j as f32 * 0.25 - 2.0).collect();
    let affine = Affine::new(&gamma, &beta, 1e-5);
    let x_all = data(&whole, offset);
    let cuts = shards(n, ranks);
    let (n0, n1) = cuts[rank];
    let part = whole.batch_part(n0, n1)?;
    let x = part.data(&x_all)?.to_vec(); // this rank's shard

    // 1. This shard's partial statistics.
    let mut mine = vec![Partial::EMPTY; c];
    bnorm::partial_moments(part.desc(), &x, &mut mine)?;
    // 2. All-gather them as bytes: ranks × C partials, in rank order.
    let mut gathered = vec![Partial::EMPTY; ranks * c];
    world.all_gather_into(
        bytemuck::cast_slice::<Partial, u8>(&mine),
        bytemuck::cast_slice_mut::<Partial, u8>(&mut gathered),
    );
    // 3. Merge in rank order.
    let mut merged = vec![Partial::EMPTY; c];
    for r in 0..ranks {
        bnorm::merge_partials(&mut merged, &gathered[r * c..(r + 1) * c])?;
    }
    // 4. Normalise the shard with the merged statistics, and update running statistics.
    let mut y = vec![0.0f32; x.len()];
    bnorm::forward_from_partials(part.desc(), &x, &mut y, &affine, &merged, Epilogue::None)?;
    let (mut running_mean, mut running_var) = (vec![0.0f32; c], vec![1.0f32; c]);
    bnorm::update_running_stats_from_partials(
        &merged,
        &mut running_mean,
        &mut running_var,
        Momentum::Exponential(0.1),
    )?;

    // 5. Gather the outputs and the running statistics on rank 0.
    let lens: Vec<Count> =
        cuts.iter().map(|&(a, b)| (whole.batch_part(a, b).map_or(0, |p| p.desc().len())) as Count).collect();
    let mut running_all = vec![0.0f32; ranks * 2 * c];
    let running: Vec<f32> = running_mean.iter().chain(&running_var).copied().collect();
    if rank != 0 {
        root.gather_varcount_into(&y[..]);
        root.gather_into(&running[..]);
        return Ok(true);
    }
    let displs: Vec<Count> = lens.iter().scan(0, |at, &l| Some(std::mem::replace(at, *at + l))).collect();
    let mut y_all = vec![0.0f32; whole.len()];
    root.gather_varcount_into_root(&y[..], &mut PartitionMut::new(&mut y_all[..], &lens[..], &displs[..]));
    root.gather_into_root(&running[..], &mut running_all[..]);

    // Checks on rank 0.
    let tag = format!("{ranks} ranks, shards {cuts:?}, {layout:?}, offset {offset}");
    // (a) One process, the same shards and merge order: the same bits.
    let mut acc = vec![Partial::EMPTY; c];
    for &(a, b) in &cuts {
        let p = whole.batch_part(a, b)?;
        let mut out = vec![Partial::EMPTY; c];
        bnorm::partial_moments(p.desc(), p.data(&x_all)?, &mut out)?;
        bnorm::merge_partials(&mut acc, &out)?;
    }
    let mut y_one = vec![0.0f32; whole.len()];
    bnorm::forward_from_partials(&whole, &x_all, &mut y_one, &affine, &acc, Epilogue::None)?;
    let same_bits = y_one.iter().zip(&y_all).all(|(a, b)| a.to_bits() == b.to_bits());
    // (b) Against the f64 reference, beside single-process forward_training.
    let (mut y_train, mut mean, mut var) = (vec![0.0f32; whole.len()], vec![0.0f32; c], vec![0.0f32; c]);
    bnorm::forward_training(&whole, &x_all, &mut y_train, &affine, &mut mean, &mut var)?;
    let err_mpi = worst(&whole, &x_all, &y_all, &gamma, &beta, 1e-5);
    let err_train = worst(&whole, &x_all, &y_train, &gamma, &beta, 1e-5);
    let identical = y_train.iter().zip(&y_all).filter(|(a, b)| a.to_bits() == b.to_bits()).count();
    // (c) Every rank's running statistics are the same.
    let agree =
        running_all.chunks(2 * c).all(|r| r.iter().zip(&running).all(|(a, b)| a.to_bits() == b.to_bits()));
    let ok = same_bits && err_mpi <= 1.0 && err_train <= 1.0 && agree;
    println!(
        "{tag}: same bits as one process with these shards: {same_bits}; worst error in units of the bound: \
         SyncBN {err_mpi:.3}, forward_training {err_train:.3}; {:.1} % of outputs bit-identical to \
         forward_training; running statistics agree on every rank: {agree} -> {}",
        100.0 * identical as f64 / whole.len() as f64,
        if ok { "ok" } else { "FAIL" }
    );
    Ok(ok)
}
