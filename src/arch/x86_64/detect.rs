//! CPU feature detection that works without std: CPUID for what the processor implements and XGETBV for
//! what the operating system saves on a context switch (ymm state for AVX2, opmask and zmm state for
//! AVX-512). A feature the build already enables at compile time needs no detection.

use core::arch::x86_64::{__cpuid, __cpuid_count, _xgetbv};

/// What the running CPU and OS support.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Features {
    /// AVX2 and FMA, with the OS saving ymm state.
    pub avx2: bool,
    /// AVX-512F on top of `avx2`, with the OS saving opmask and zmm state.
    pub avx512: bool,
}

/// Reads the CPU's features.
pub(crate) fn features() -> Features {
    if cfg!(miri) {
        // Miri interprets no CPUID; the portable tier is what runs there.
        return Features { avx2: false, avx512: false };
    }
    let compile_avx2 = cfg!(all(target_feature = "avx2", target_feature = "fma"));
    let compile_avx512 = compile_avx2 && cfg!(target_feature = "avx512f");
    if compile_avx512 {
        return Features { avx2: true, avx512: true };
    }
    #[allow(unused_unsafe)]
    // SAFETY: CPUID exists on every x86-64 processor; leaf 0 reports the highest standard leaf.
    let max_leaf = unsafe { __cpuid(0) }.eax;
    if max_leaf < 7 {
        return Features { avx2: compile_avx2, avx512: false };
    }
    #[allow(unused_unsafe)]
    // SAFETY: leaf 1 is below `max_leaf`, checked above.
    let l1 = unsafe { __cpuid(1) };
    #[allow(unused_unsafe)]
    // SAFETY: leaf 7 is at most `max_leaf`, checked above.
    let l7 = unsafe { __cpuid_count(7, 0) };
    let fma = l1.ecx & (1 << 12) != 0;
    let osxsave = l1.ecx & (1 << 27) != 0;
    let avx = l1.ecx & (1 << 28) != 0;
    let avx2 = l7.ebx & (1 << 5) != 0;
    let avx512f = l7.ebx & (1 << 16) != 0;
    if !(osxsave && avx) {
        return Features { avx2: compile_avx2, avx512: false };
    }
    // SAFETY: OSXSAVE is set (checked above), so XGETBV is enabled and XCR0 (register 0) is readable.
    let xcr0 = unsafe { xgetbv0() };
    let ymm_state = xcr0 & 0b110 == 0b110; // SSE and AVX state
    let zmm_state = xcr0 & 0b1110_0110 == 0b1110_0110; // plus opmask, ZMM_Hi256, Hi16_ZMM
    let has_avx2 = compile_avx2 || (avx2 && fma && ymm_state);
    Features { avx2: has_avx2, avx512: has_avx2 && avx512f && zmm_state }
}

/// # Safety
/// - The CPU must report OSXSAVE (CPUID.1:ECX bit 27), so that XGETBV does not fault.
#[target_feature(enable = "xsave")]
unsafe fn xgetbv0() -> u64 {
    // SAFETY: the caller guarantees OSXSAVE, which is what `xsave`-gated XGETBV needs to run.
    unsafe { _xgetbv(0) }
}
