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

/// Data and unified cache sizes in bytes, 0 where the CPU does not say.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(crate) struct Caches {
    /// Level-2 cache of one core.
    pub l2: usize,
    /// Last-level (level-3) cache, as CPUID reports it (shared by the cores of its complex).
    pub l3: usize,
    /// The vendor string is "AuthenticAMD".
    pub amd: bool,
}

/// Reads the cache sizes: CPUID leaf 4 (Intel's deterministic cache parameters), else leaf 0x8000001D
/// (AMD's, same format, with TOPOEXT), else leaf 0x80000006 (AMD's L2/L3 summary).
pub(crate) fn caches() -> Caches {
    if cfg!(miri) {
        return Caches::default();
    }
    #[allow(unused_unsafe)]
    // SAFETY: CPUID exists on every x86-64 processor; leaf 0 reports the highest standard leaf.
    let max_leaf = unsafe { __cpuid(0) }.eax;
    #[allow(unused_unsafe)]
    // SAFETY: leaf 0x80000000 reports the highest extended leaf on every x86-64 processor.
    let max_ext = unsafe { __cpuid(0x8000_0000) }.eax;
    #[allow(unused_unsafe)]
    // SAFETY: as above (leaf 0 also holds the vendor string, in EBX, EDX, ECX).
    let v = unsafe { __cpuid(0) };
    // "Auth" "enti" "cAMD", little-endian.
    let amd = (v.ebx, v.edx, v.ecx) == (0x6874_7541, 0x6974_6E65, 0x444D_4163);
    let mut c = Caches::default();
    if max_leaf >= 4 {
        c = deterministic(4);
    }
    if c.l2 == 0 && max_ext >= 0x8000_001D {
        #[allow(unused_unsafe)]
        // SAFETY: 0x80000001 is at most `max_ext`, checked above.
        let topoext = unsafe { __cpuid(0x8000_0001) }.ecx & (1 << 22) != 0;
        if topoext {
            c = deterministic(0x8000_001D);
        }
    }
    if c.l2 == 0 && max_ext >= 0x8000_0006 {
        #[allow(unused_unsafe)]
        // SAFETY: 0x80000006 is at most `max_ext`, checked above.
        let r = unsafe { __cpuid(0x8000_0006) };
        c.l2 = (r.ecx >> 16) as usize * 1024;
        c.l3 = (r.edx >> 18) as usize * 512 * 1024;
    }
    c.amd = amd;
    c
}

/// Walks the sub-leaves of a deterministic-cache-parameters leaf (4 or 0x8000001D, both at most the
/// CPU's highest leaf): type in `EAX[4:0]` (0 ends the list, 1 data, 3 unified), level in `EAX[7:5]`, size
/// (ways + 1)·(partitions + 1)·(line + 1)·(sets + 1).
fn deterministic(leaf: u32) -> Caches {
    let mut c = Caches::default();
    for sub in 0..16 {
        #[allow(unused_unsafe)]
        // SAFETY: the caller checked that `leaf` is supported; any sub-leaf may be queried (past the
        // last one the type field reads 0).
        let r = unsafe { __cpuid_count(leaf, sub) };
        let kind = r.eax & 0x1f;
        if kind == 0 {
            break;
        }
        if kind != 1 && kind != 3 {
            continue;
        }
        let size = ((r.ebx >> 22) as usize + 1)
            * (((r.ebx >> 12) & 0x3ff) as usize + 1)
            * ((r.ebx & 0xfff) as usize + 1)
            * (r.ecx as usize + 1);
        match (r.eax >> 5) & 7 {
            2 => c.l2 = size,
            3 => c.l3 = size,
            _ => {}
        }
    }
    c
}
