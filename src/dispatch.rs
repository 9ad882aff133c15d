#![forbid(unsafe_code)]
//! Instruction-set tiers, their run-time detection, and the [`Kernels`] handle.

use core::fmt;
use core::sync::atomic::{AtomicU8, Ordering};

/// An instruction-set tier. Every tier computes the same operations with the same algorithm; they differ
/// in vector width and in whether `a·b + c` is fused (which changes results in the last bits only).
#[non_exhaustive]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Isa {
    /// Plain scalar Rust: the baseline. Always available, whatever `BNORM_MAX_ISA` says.
    Scalar,
    /// 4-lane SIMD through the `wide` crate: SSE2 on x86-64, NEON on aarch64, simd128 on wasm32 (with
    /// `+simd128`), scalar code elsewhere. Available on every CPU unless `BNORM_MAX_ISA=scalar` caps it.
    Portable,
    /// x86-64 AVX2 with FMA, 8 lanes; chosen at run time.
    Avx2,
    /// x86-64 AVX-512F, 16 lanes with masked tails; chosen at run time.
    Avx512,
}

impl Isa {
    /// Every tier, lowest first.
    pub const ALL: [Isa; 4] = [Isa::Scalar, Isa::Portable, Isa::Avx2, Isa::Avx512];

    /// The best tier available on this CPU (detected once, then cached; works without std).
    ///
    /// With the `std` feature, the environment variable `BNORM_MAX_ISA` (`scalar`, `portable`, `avx2`,
    /// `avx512`, ASCII case ignored) caps detection when it is first made, so that tests can walk the
    /// lower tiers on a CPU that has the higher ones. An empty value is the same as no variable; any
    /// other value is not a cap: it is ignored, with a warning on stderr. Under miri this is `Portable`.
    ///
    /// Where the portable tier has no SIMD instructions to use (Cortex-M, RISC-V without vectors, …:
    /// `wide` then runs its four lanes as scalar code) this is the scalar tier, whose plain loops are
    /// as fast there and far smaller in code and stack; the portable tier is then compiled in (and
    /// available) only with the `all-tiers` feature.
    pub fn detect() -> Isa {
        preferred(best())
    }

    /// Whether this CPU (and OS) can run the tier, within the `BNORM_MAX_ISA` cap. Tiers are ordered:
    /// every tier below the best available one is available too.
    pub fn is_available(self) -> bool {
        self <= best()
    }

    /// The available tiers, lowest first. `Scalar` is always among them.
    ///
    /// ```
    /// let tiers: Vec<bnorm::Isa> = bnorm::Isa::available().collect();
    /// assert_eq!(tiers[0], bnorm::Isa::Scalar);
    /// assert!(tiers.contains(&bnorm::Isa::detect()));
    /// ```
    pub fn available() -> impl Iterator<Item = Isa> {
        Isa::ALL.into_iter().filter(|i| i.is_available())
    }

    /// The tier's lower-case name (`"scalar"`, `"portable"`, `"avx2"`, `"avx512"`).
    pub const fn name(self) -> &'static str {
        match self {
            Isa::Scalar => "scalar",
            Isa::Portable => "portable",
            Isa::Avx2 => "avx2",
            Isa::Avx512 => "avx512",
        }
    }

    /// The tier named `name` (as [`Isa::name`] spells it, ASCII case ignored).
    pub fn from_name(name: &str) -> Option<Isa> {
        Isa::ALL.into_iter().find(|i| i.name().eq_ignore_ascii_case(name))
    }
}

impl fmt::Display for Isa {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// The tier to run given the highest available one: the scalar tier instead of a portable tier
/// without SIMD.
#[inline(always)]
const fn preferred(best: Isa) -> Isa {
    match best {
        Isa::Portable if !crate::arch::PORTABLE_IS_SIMD => Isa::Scalar,
        other => other,
    }
}

/// The best tier, as its index in `Isa::ALL`, plus one; 0 until detected.
static BEST: AtomicU8 = AtomicU8::new(0);

/// The best available tier, detected on first use and cached (`Relaxed` suffices: every thread computes
/// the same value).
fn best() -> Isa {
    let b = BEST.load(Ordering::Relaxed);
    if let Some(&isa) = b.checked_sub(1).and_then(|i| Isa::ALL.get(i as usize)) {
        return isa;
    }
    let isa = detect_best().min(cap());
    BEST.store(isa as u8 + 1, Ordering::Relaxed);
    isa
}

fn detect_best() -> Isa {
    #[cfg(target_arch = "x86_64")]
    {
        let f = crate::arch::x86_64::detect::features();
        if f.avx512 {
            return Isa::Avx512;
        }
        if f.avx2 {
            return Isa::Avx2;
        }
    }
    if crate::arch::PORTABLE_COMPILED { Isa::Portable } else { Isa::Scalar }
}

/// The highest tier allowed by `BNORM_MAX_ISA` (no limit without std or without the variable).
fn cap() -> Isa {
    #[cfg(feature = "std")]
    {
        let value = std::env::var("BNORM_MAX_ISA").ok();
        match parse_cap(value.as_deref()) {
            Ok(Some(isa)) => return isa,
            Ok(None) => {}
            Err(bad) => {
                // Once per process: `cap` runs when detection is first made (two threads racing on the
                // first call may both print it; the result is the same).
                use std::io::Write;
                let _ = writeln!(
                    std::io::stderr(),
                    "bnorm: BNORM_MAX_ISA={bad:?} is not a tier (scalar, portable, avx2, avx512): ignored"
                );
            }
        }
    }
    Isa::Avx512
}

/// Reads a `BNORM_MAX_ISA` value: `Ok(None)` for no cap (unset or empty), `Ok(Some(isa))` for a tier's
/// name (surrounding white space and ASCII case ignored), `Err(value)` for anything else.
#[cfg(feature = "std")]
fn parse_cap(value: Option<&str>) -> Result<Option<Isa>, &str> {
    match value.map(str::trim) {
        None | Some("") => Ok(None),
        Some(v) => Isa::from_name(v).map(Some).ok_or(v),
    }
}

/// A handle on one available tier. Holding a `Kernels` proves that the CPU supports its tier; its
/// methods are the crate's operations run on that tier (the free functions use [`Kernels::detect`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Kernels {
    isa: Isa,
}

impl Kernels {
    /// Kernels of tier `isa`, or `None` when this CPU lacks it.
    ///
    /// ```
    /// use bnorm::{Isa, Kernels};
    /// assert!(Kernels::new(Isa::Scalar).is_some());
    /// for isa in Isa::available() {
    ///     assert_eq!(Kernels::new(isa).unwrap().isa(), isa);
    /// }
    /// ```
    pub fn new(isa: Isa) -> Option<Kernels> {
        isa.is_available().then_some(Kernels { isa })
    }

    /// Kernels of the best available tier ([`Isa::detect`]).
    pub fn detect() -> Kernels {
        Kernels { isa: Isa::detect() }
    }

    /// The kernels the free functions run: the best tier detected at run time where the crate detects
    /// tiers (x86-64; any target with `std`, whose `BNORM_MAX_ISA` caps detection; miri), and elsewhere
    /// (no_std on Arm, RISC-V, wasm32…, where the best tier is known when compiling) [`Isa::detect`]'s
    /// choice as a constant, so that a free-function call links that one tier's code for its operation
    /// only.
    #[inline(always)]
    pub(crate) fn for_free_functions() -> Kernels {
        #[cfg(any(target_arch = "x86_64", feature = "std", miri))]
        let k = Kernels::detect();
        #[cfg(not(any(target_arch = "x86_64", feature = "std", miri)))]
        let k = Kernels { isa: preferred(Isa::Portable) };
        k
    }

    /// The tier these kernels run.
    pub const fn isa(&self) -> Isa {
        self.isa
    }
}

#[cfg(all(test, feature = "std"))]
mod tests {
    use super::{Isa, parse_cap};

    #[test]
    fn cap_values() {
        assert_eq!(parse_cap(None), Ok(None));
        assert_eq!(parse_cap(Some("")), Ok(None));
        assert_eq!(parse_cap(Some("  ")), Ok(None));
        assert_eq!(parse_cap(Some("scalar")), Ok(Some(Isa::Scalar)));
        assert_eq!(parse_cap(Some(" AVX2\n")), Ok(Some(Isa::Avx2)));
        assert_eq!(parse_cap(Some("Portable")), Ok(Some(Isa::Portable)));
        assert_eq!(parse_cap(Some("avx512")), Ok(Some(Isa::Avx512)));
        assert_eq!(parse_cap(Some("sse9")), Err("sse9"));
        assert_eq!(parse_cap(Some("avx-512")), Err("avx-512"));
    }
}
