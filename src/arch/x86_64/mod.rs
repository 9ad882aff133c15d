//! x86-64 tiers: AVX2 (+FMA) and AVX-512F through `core::arch` intrinsics, and their detection.

pub(crate) mod avx2;
pub(crate) mod avx512;
pub(crate) mod detect;
