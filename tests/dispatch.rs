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

/// Runs this test binary again, as a child process with `BNORM_MAX_ISA=value`, executing only
/// `child_prints_detected_tier`; returns (its stdout, its stderr), or `None` after a visible skip notice
/// where the binary cannot be started again (a cross-compiled test run under a user-mode emulator such
/// as `qemu-aarch64`, which cannot exec a foreign binary by itself).
fn run_child(value: &str) -> Option<(String, String)> {
    run_child_with(&[("BNORM_MAX_ISA", value)])
}

/// [`run_child`] with the environment variables `vars`.
fn run_child_with(vars: &[(&str, &str)]) -> Option<(String, String)> {
    use std::io::Write;
    let exe = std::env::current_exe().expect("the test binary's path");
    let out = std::process::Command::new(exe)
        .args(["--exact", "child_prints_detected_tier", "--nocapture", "--test-threads=1"])
        .envs(vars.iter().copied())
        .env("BNORM_DISPATCH_CHILD", "1")
        .output();
    let out = match out {
        Ok(o) if o.status.success() || String::from_utf8_lossy(&o.stdout).contains("running 1 test") => o,
        other => {
            let why = match other {
                Ok(o) => format!("the child did not start the test harness ({})", o.status),
                Err(e) => format!("{e}"),
            };
            let _ = writeln!(
                std::io::stderr(),
                "SKIPPED child-process checks: cannot re-run the test binary: {why}"
            );
            return None;
        }
    };
    let (stdout, stderr) = (
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    );
    assert!(out.status.success(), "child failed: {stderr}");
    Some((stdout, stderr))
}

/// In a child process (see `run_child`): prints the detected tier. Does nothing in a normal run.
#[test]
fn child_prints_detected_tier() {
    if std::env::var_os("BNORM_DISPATCH_CHILD").is_some() {
        let t = bnorm::__bench::tuning();
        println!(
            "detected={} stream={} chunk={} prefetch={} stats={:016x}",
            Isa::detect(),
            t.stream_min_bytes,
            t.train_chunk_bytes,
            t.prefetch_bytes,
            statistics_bits()
        );
    }
}

/// A hash of the bits of `moments` on every available tier over shapes whose wide rows take the
/// statistics' row-by-row path when the tensor counts as coming from memory (at least four times
/// `BNORM_STREAM_MIN_BYTES`) and the register tiles otherwise: rows of 256 channels, of 200 (whole tiles
/// and lone vectors), of 64, channel blocks and NCHW planes.
fn statistics_bits() -> u64 {
    use bnorm::{Layout, Shape, TensorDesc};
    let mut h = 0xcbf2_9ce4_8422_2325u64;
    let shapes = [
        (Shape::nchw(3, 256, 3, 4), Layout::Nhwc),
        (Shape::nchw(5, 200, 1, 7), Layout::Nhwc),
        (Shape::nchw(2, 64, 9, 9), Layout::Nhwc),
        (Shape::nchw(3, 40, 5, 5), Layout::Blocked { block: 16 }),
        (Shape::nchw(3, 5, 30, 30), Layout::Nchw),
    ];
    for isa in Isa::available() {
        let k = Kernels::new(isa).expect("available");
        for &(shape, layout) in &shapes {
            let desc = TensorDesc::new(shape, layout).expect("valid shape");
            let x: Vec<f32> = (0..desc.len()).map(|i| 1000.0 + ((i * 7919) % 1013) as f32 / 37.0).collect();
            let (mut m, mut v) = (vec![0.0; shape.c], vec![0.0; shape.c]);
            k.moments(&desc, &x, &mut m, &mut v).expect("valid call");
            for f in m.iter().chain(&v) {
                h = (h ^ u64::from(f.to_bits())).wrapping_mul(0x100_0000_01b3);
            }
        }
    }
    h
}

/// The statistics of a tensor read from memory (row by row, and without software prefetch on AMD) are
/// bit-identical to those of the same tensor read from the cache (register tiles, prefetch): forcing
/// the threshold to 0 changes the path, not the result. So does turning the prefetch off.
#[test]
#[cfg_attr(miri, ignore = "miri cannot spawn processes")]
fn statistics_paths_are_bit_identical() {
    if std::env::var_os("BNORM_DISPATCH_CHILD").is_some() {
        return;
    }
    let bits = |vars: &[(&str, &str)]| -> Option<String> {
        let (out, _) = run_child_with(vars)?;
        let at = out.find("stats=").expect("the child prints its statistics hash");
        Some(out[at..at + 22].to_string())
    };
    let Some(cached) = bits(&[("BNORM_STREAM_MIN_BYTES", "1000000000")]) else { return };
    let Some(memory) = bits(&[("BNORM_STREAM_MIN_BYTES", "0")]) else { return };
    let Some(no_prefetch) = bits(&[("BNORM_STREAM_MIN_BYTES", "1000000000"), ("BNORM_PREFETCH_BYTES", "0")])
    else {
        return;
    };
    assert_eq!(cached, memory);
    assert_eq!(cached, no_prefetch);
}

/// `BNORM_MAX_ISA` with a tier's name caps detection silently; an empty value is no cap; anything else
/// is ignored with one warning on stderr.
#[test]
#[cfg_attr(miri, ignore = "miri cannot spawn processes")]
fn cap_is_read_and_unknown_values_are_reported() {
    if std::env::var_os("BNORM_DISPATCH_CHILD").is_some() {
        return;
    }
    // The uncapped best tier, as an empty value reports it.
    let Some((out, err)) = run_child("") else { return };
    assert!(!err.contains("BNORM_MAX_ISA"), "empty value warned: {err}");
    // The harness prints `test child_prints_detected_tier ... detected=<tier>` on one line.
    let best = out
        .split_whitespace()
        .find_map(|w| w.strip_prefix("detected="))
        .unwrap_or_else(|| panic!("no tier in the child's output: {out}"))
        .to_owned();
    let Some((out, err)) = run_child("scalar") else { return };
    assert!(out.contains("detected=scalar"), "{out}");
    assert!(!err.contains("BNORM_MAX_ISA"), "a valid cap warned: {err}");
    for bad in ["sse9", "avx-512"] {
        let Some((out, err)) = run_child(bad) else { return };
        assert!(
            out.contains(&format!("detected={best} ")) || out.contains(&format!("detected={best}\n")),
            "{bad}: {out}"
        );
        let warning =
            format!("bnorm: BNORM_MAX_ISA=\"{bad}\" is not a tier (scalar, portable, avx2, avx512): ignored");
        assert_eq!(err.matches(&warning).count(), 1, "{bad}: stderr was {err:?}");
    }
}

/// The size thresholds come from the CPU's caches; `BNORM_STREAM_MIN_BYTES`, `BNORM_TRAIN_CHUNK_BYTES`
/// and `BNORM_PREFETCH_BYTES` override them; a value that is not a whole number is ignored with a warning.
#[test]
#[cfg_attr(miri, ignore = "miri cannot spawn processes")]
fn tuning_overrides_are_read_and_bad_values_reported() {
    if std::env::var_os("BNORM_DISPATCH_CHILD").is_some() {
        return;
    }
    let Some((out, err)) = run_child_with(&[
        ("BNORM_STREAM_MIN_BYTES", "12345"),
        ("BNORM_TRAIN_CHUNK_BYTES", "4096"),
        ("BNORM_PREFETCH_BYTES", "8192"),
    ]) else {
        return;
    };
    assert!(out.contains("stream=12345 chunk=4096 prefetch=8192"), "{out}");
    assert!(!err.contains("bnorm:"), "{err}");
    let Some((out, err)) = run_child_with(&[("BNORM_STREAM_MIN_BYTES", "8M")]) else { return };
    assert!(!out.contains("stream=8M"), "{out}");
    let warning = "bnorm: BNORM_STREAM_MIN_BYTES=\"8M\" is not a whole number of bytes: ignored";
    assert_eq!(err.matches(warning).count(), 1, "stderr was {err:?}");
}
