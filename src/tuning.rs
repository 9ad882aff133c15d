#![forbid(unsafe_code)]
//! Size thresholds of the kernels, derived once from the running CPU's caches.
//!
//! - `stream_min_bytes`: outputs at least this large are written with non-temporal stores: a quarter of
//!   the last-level cache, at most 8 MB. Below it ordinary stores leave y cached for the next layer;
//!   above it x and y evict each other (and the LLC's other tenants), and streaming saves the
//!   read-for-ownership. Measured on Zen 4 (32 MB L3): 13 MB outputs ran 1.2–2× faster streamed than
//!   with ordinary stores, though x and y together fit in its L3.
//! - `train_chunk_bytes`: training normalises chunk by chunk of channels of about this much input, so
//!   the second read of a chunk comes from the core's L2 (a quarter of it: the chunk, the output lines
//!   in flight and the prefetched next chunk share it).
//! - `prefetch_bytes`: the farthest the statistics loops prefetch ahead (an eighth of L2, at most
//!   128 KB: the lines must still be there when the loop reaches them); 0: no software prefetch in the
//!   statistics.
//! - `memory_prefetch`: whether the statistics prefetch at all when they read a tensor of at least four
//!   times `stream_min_bytes` (one that comes from memory, not from the L3): not on AMD. On a Xeon
//!   (Sapphire Rapids) the prefetch made the statistics ~30 % faster; on Zen 4 it made them slower
//!   from memory by 10–25 % (`moments` of 32×256×56×56 tensors, by layout: nChw16c 18–19.5 → 23.5
//!   GB/s, nChw8c 19 → 22, NCHW 13 → 15.5, NHWC rows read in address order 19–22 → 26–28), while from
//!   the L3 it still helps (nChw8c 32×2048×7×7 on AVX2: 26 → 30). (The prefetch of the next training
//!   chunk while one is normalised is another matter and runs on every CPU.)
//!
//! Where the CPU reports no cache sizes (no CPUID, other architectures, miri) the fallbacks are the sizes
//! these constants were tuned with on a 2 MB-L2 Xeon. With `std`, `BNORM_STREAM_MIN_BYTES`,
//! `BNORM_TRAIN_CHUNK_BYTES` and `BNORM_PREFETCH_BYTES` (whole numbers of bytes) override them, read once
//! per process, for tests and experiments.

use core::sync::atomic::{AtomicBool, AtomicUsize, Ordering};

/// The thresholds in force.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Tuning {
    /// Outputs of at least this many bytes are written with non-temporal stores.
    pub stream_min_bytes: usize,
    /// Bytes of input per training chunk.
    pub train_chunk_bytes: usize,
    /// The farthest distance, in bytes, the statistics loops prefetch ahead (0: they do not prefetch).
    pub prefetch_bytes: usize,
    /// Whether the statistics prefetch when reading a tensor from memory (at least four times
    /// `stream_min_bytes`).
    pub memory_prefetch: bool,
    /// The L2 size the thresholds were derived from (0: unknown, fallbacks used).
    pub l2_bytes: usize,
    /// The last-level cache size they were derived from (0: unknown).
    pub l3_bytes: usize,
}

/// Fallbacks where the CPU reports nothing.
const FALLBACK_STREAM: usize = 8 << 20;
const FALLBACK_CHUNK: usize = 1 << 19;
const FALLBACK_PREFETCH: usize = 128 << 10;

impl Tuning {
    /// The thresholds for caches of `l2` and `l3` bytes (0 where unknown) of an AMD CPU or not.
    pub(crate) const fn derive(l2: usize, l3: usize, amd: bool) -> Tuning {
        let stream_min_bytes = if l3 == 0 || l3 / 4 > FALLBACK_STREAM { FALLBACK_STREAM } else { l3 / 4 };
        let (train_chunk_bytes, prefetch_bytes) = if l2 >= (256 << 10) {
            let p = l2 / 8;
            (l2 / 4, if p < FALLBACK_PREFETCH { p } else { FALLBACK_PREFETCH })
        } else {
            (FALLBACK_CHUNK, FALLBACK_PREFETCH)
        };
        Tuning {
            stream_min_bytes,
            train_chunk_bytes,
            prefetch_bytes,
            memory_prefetch: !amd,
            l2_bytes: l2,
            l3_bytes: l3,
        }
    }
}

/// 0 until first read; then the value plus one (so a threshold of 0 is representable).
static STREAM: AtomicUsize = AtomicUsize::new(0);
static CHUNK: AtomicUsize = AtomicUsize::new(0);
static PREFETCH: AtomicUsize = AtomicUsize::new(0);

/// The thresholds in force (derived on first use and cached; `Relaxed` suffices: every thread derives the
/// same values).
#[inline]
pub(crate) fn get() -> Tuning {
    let (s, c, p) =
        (STREAM.load(Ordering::Relaxed), CHUNK.load(Ordering::Relaxed), PREFETCH.load(Ordering::Relaxed));
    if s != 0 && c != 0 && p != 0 {
        return Tuning {
            stream_min_bytes: s - 1,
            train_chunk_bytes: c - 1,
            prefetch_bytes: p - 1,
            memory_prefetch: !AMD.load(Ordering::Relaxed),
            l2_bytes: L2.load(Ordering::Relaxed),
            l3_bytes: L3.load(Ordering::Relaxed),
        };
    }
    init()
}

/// The cache sizes as detected, for reporting.
static L2: AtomicUsize = AtomicUsize::new(0);
static L3: AtomicUsize = AtomicUsize::new(0);
static AMD: AtomicBool = AtomicBool::new(false);

#[cold]
fn init() -> Tuning {
    let (l2, l3, amd) = detected_caches();
    let mut t = Tuning::derive(l2, l3, amd);
    #[cfg(feature = "std")]
    {
        override_from_env("BNORM_STREAM_MIN_BYTES", &mut t.stream_min_bytes);
        override_from_env("BNORM_TRAIN_CHUNK_BYTES", &mut t.train_chunk_bytes);
        override_from_env("BNORM_PREFETCH_BYTES", &mut t.prefetch_bytes);
    }
    // At least a line (the kernels divide by the chunk and step through it); a prefetch distance is
    // 0 (none) or at least a line.
    t.train_chunk_bytes = t.train_chunk_bytes.max(64);
    if t.prefetch_bytes != 0 {
        t.prefetch_bytes = t.prefetch_bytes.max(64);
    }
    L2.store(l2, Ordering::Relaxed);
    L3.store(l3, Ordering::Relaxed);
    AMD.store(amd, Ordering::Relaxed);
    STREAM.store(t.stream_min_bytes.saturating_add(1), Ordering::Relaxed);
    CHUNK.store(t.train_chunk_bytes + 1, Ordering::Relaxed);
    PREFETCH.store(t.prefetch_bytes + 1, Ordering::Relaxed);
    t
}

/// L2 and L3 sizes (0 where unknown), and whether the CPU is AMD's.
fn detected_caches() -> (usize, usize, bool) {
    #[cfg(target_arch = "x86_64")]
    {
        let c = crate::arch::x86_64::detect::caches();
        (c.l2, c.l3, c.amd)
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        (0, 0, false)
    }
}

/// Replaces `value` by the variable `name` where it is a whole number; any other non-empty value is
/// ignored with a warning on stderr.
#[cfg(feature = "std")]
fn override_from_env(name: &str, value: &mut usize) {
    match std::env::var(name) {
        Ok(v) if v.trim().is_empty() => {}
        Ok(v) => match v.trim().parse::<usize>() {
            Ok(n) => *value = n,
            Err(_) => {
                use std::io::Write;
                let _ = writeln!(
                    std::io::stderr(),
                    "bnorm: {name}={v:?} is not a whole number of bytes: ignored"
                );
            }
        },
        Err(_) => {}
    }
}

#[cfg(test)]
mod tests {
    use super::Tuning;

    #[test]
    fn derived_from_caches_with_fallbacks() {
        // Zen 4: 1 MB L2, 32 MB L3; no software prefetch in the statistics from memory on AMD.
        let t = Tuning::derive(1 << 20, 32 << 20, true);
        assert_eq!(
            (t.stream_min_bytes, t.train_chunk_bytes, t.prefetch_bytes, t.memory_prefetch),
            (8 << 20, 256 << 10, 128 << 10, false)
        );
        assert!(Tuning::derive(1 << 20, 32 << 20, false).memory_prefetch);
        // Sapphire Rapids: 2 MB L2; a small L2 prefetches less far.
        let t = Tuning::derive(2 << 20, 105 << 20, false);
        assert_eq!((t.train_chunk_bytes, t.prefetch_bytes), (512 << 10, 128 << 10));
        let t = Tuning::derive(512 << 10, 8 << 20, false);
        assert_eq!(
            (t.stream_min_bytes, t.train_chunk_bytes, t.prefetch_bytes),
            (2 << 20, 128 << 10, 64 << 10)
        );
        // Unknown: the fallbacks.
        let t = Tuning::derive(0, 0, false);
        assert_eq!(
            (t.stream_min_bytes, t.train_chunk_bytes, t.prefetch_bytes),
            (8 << 20, 512 << 10, 128 << 10)
        );
    }

    #[test]
    fn detected_caches_are_plausible() {
        let t = super::get();
        // Every x86-64 CPU reports its L2 through one of the three CPUID leaves: 0 means a decoding bug.
        if cfg!(all(target_arch = "x86_64", not(miri))) {
            assert_ne!(t.l2_bytes, 0, "{t:?}");
        }
        if t.l2_bytes != 0 {
            assert!((64 << 10..=64 << 20).contains(&t.l2_bytes), "{t:?}");
        }
        if t.l3_bytes != 0 {
            assert!((1 << 20..=1 << 30).contains(&t.l3_bytes), "{t:?}");
        }
        assert!(t.train_chunk_bytes >= 64 && (t.prefetch_bytes == 0 || t.prefetch_bytes >= 64), "{t:?}");
        // The vendor, where Linux says it.
        #[cfg(feature = "std")]
        if let (true, Ok(info)) =
            (cfg!(all(target_arch = "x86_64", not(miri))), std::fs::read_to_string("/proc/cpuinfo"))
        {
            assert_eq!(t.memory_prefetch, !info.contains("AuthenticAMD"), "{t:?}");
        }
    }
}
