#![forbid(unsafe_code)]
//! Reference passes for measuring the machine's streaming limit (the roofline example and the benches):
//! a read-only reduction and `y = 1.5·x + 0.25` with ordinary or non-temporal stores — the same loops as
//! `shared/peers/stream_limit.c`, in the detected tier. Not batch normalisation; no validation beyond
//! equal lengths.

use crate::arch::Simd;

/// Sum of `x` with four vector accumulators (the value only keeps the loads alive).
#[inline(always)]
pub(crate) fn read_pass<S: Simd>(s: S, x: &[f32]) -> f32 {
    let l = S::LANES;
    let zero = s.splat(0.0);
    let mut acc = [zero; 4];
    let mut chunks = x.chunks_exact(4 * l);
    for ch in &mut chunks {
        for (u, a) in acc.iter_mut().enumerate() {
            *a = s.add(*a, s.load(&ch[u * l..]));
        }
    }
    let mut total = s.hsum(s.add(s.add(acc[0], acc[1]), s.add(acc[2], acc[3])));
    for v in chunks.remainder() {
        total += v;
    }
    total
}

/// `y = 1.5·x + 0.25` over `min(x.len(), y.len())` elements, the body with non-temporal stores when
/// `stream` (after an unaligned head).
#[inline(always)]
pub(crate) fn scale_pass<S: Simd>(s: S, x: &[f32], y: &mut [f32], stream: bool) {
    let l = S::LANES;
    let n = x.len().min(y.len());
    let (a, b) = (s.splat(1.5), s.splat(0.25));
    let head = ((l - (y.as_ptr() as usize / 4) % l) % l).min(n);
    for i in 0..head {
        y[i] = x[i] * 1.5 + 0.25;
    }
    let mut i = head;
    while i + l <= n {
        let v = s.mul_add(s.load(&x[i..]), a, b);
        if stream {
            s.stream(&mut y[i..], v)
        } else {
            s.store(&mut y[i..], v)
        }
        i += l;
    }
    for j in i..n {
        y[j] = x[j] * 1.5 + 0.25;
    }
    if stream {
        s.fence();
    }
}
