//! Run-time dispatch: the crate's own CPUID/XGETBV detection (which works without std) agrees with std's
//! detection, the `BNORM_MAX_ISA` cap is honoured, and `Kernels` only exists for available tiers.

use bnorm::{Isa, Kernels};

fn cap() -> Option<Isa> {
    std::env::var("BNORM_MAX_ISA").ok().and_then(|v| Isa::from_name(v.trim()))
}

#[test]
fn detection_matches_std() {
    #[cfg(target_arch = "x86_64")]
    {
        let avx2 = is_x86_feature_detected!("avx2") && is_x86_feature_detected!("fma");
        let avx512 = avx2 && is_x86_feature_detected!("avx512f");
        let limit = cap().unwrap_or(Isa::Avx512);
        assert_eq!(Isa::Avx2.is_available(), avx2 && limit >= Isa::Avx2);
        assert_eq!(Isa::Avx512.is_available(), avx512 && limit >= Isa::Avx512);
        let hw = if avx512 {
            Isa::Avx512
        } else if avx2 {
            Isa::Avx2
        } else {
            Isa::Portable
        };
        assert_eq!(Isa::detect(), hw.min(limit));
        assert_eq!(Isa::Portable.is_available(), limit >= Isa::Portable);
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        let limit = cap().unwrap_or(Isa::Avx512);
        assert!(!Isa::Avx2.is_available() && !Isa::Avx512.is_available());
        assert_eq!(Isa::detect(), Isa::Portable.min(limit));
    }
}

#[test]
fn kernels_exist_only_for_available_tiers() {
    for isa in Isa::ALL {
        assert_eq!(Kernels::new(isa).is_some(), isa.is_available(), "{isa}");
        assert_eq!(Isa::available().any(|i| i == isa), isa.is_available());
        assert_eq!(Isa::from_name(isa.name()), Some(isa));
        assert_eq!(Isa::from_name(&isa.name().to_uppercase()), Some(isa));
    }
    assert!(Isa::Scalar.is_available());
    assert_eq!(Kernels::detect().isa(), Isa::detect());
    assert_eq!(Isa::from_name("sse9"), None);
}
