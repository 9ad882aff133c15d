//! Decoding fuzz bytes into a problem: shape, layout (valid or not), slice-length deltas, parameters and
//! data, either "nice" values (an i16 grid with a random scale and offset, for oracle comparisons) or
//! arbitrary f32 bit patterns (NaN, infinities, subnormals, huge values).

#![allow(dead_code)]

use bnorm::{Layout, Shape};

pub struct Bytes<'a>(pub &'a [u8]);

impl Bytes<'_> {
    pub fn u8(&mut self) -> u8 {
        match self.0.split_first() {
            Some((&b, rest)) => {
                self.0 = rest;
                b
            }
            None => 0,
        }
    }
    pub fn u32(&mut self) -> u32 {
        u32::from_le_bytes([self.u8(), self.u8(), self.u8(), self.u8()])
    }
    pub fn f32(&mut self) -> f32 {
        f32::from_bits(self.u32())
    }
    /// A length delta: mostly 0, sometimes -2..=2.
    pub fn delta(&mut self) -> i64 {
        let b = self.u8();
        if b < 224 { 0 } else { (b % 5) as i64 - 2 }
    }
}

pub struct Problem {
    pub shape: Shape,
    pub layout: Layout,
    pub deltas: [i64; 8],
    pub op: u8,
    pub isa: u8,
    pub eps: f32,
    pub momentum: f32,
    pub count: usize,
    pub nice: bool,
    pub params: Vec<f32>,
    pub data: Vec<f32>,
}

pub fn near(want: usize, delta: i64) -> usize {
    (want as i64 + delta).max(0) as usize
}

/// Total elements are bounded (at most 8 × 40 × 64 × 16), so every case runs in microseconds.
pub fn decode(bytes: &[u8]) -> Problem {
    let mut b = Bytes(bytes);
    let n = (b.u8() % 8) as usize;
    let c = (b.u8() % 40) as usize;
    let s = (b.u8() % 64) as usize;
    let layout = match b.u8() % 8 {
        0 | 1 => Layout::Nchw,
        2 | 3 => Layout::Nhwc,
        4 => Layout::Blocked { block: 4 },
        5 => Layout::Blocked { block: 8 },
        6 => Layout::Blocked { block: 16 },
        _ => Layout::Blocked { block: b.u8() as usize },
    };
    let mut deltas = [0; 8];
    for d in &mut deltas {
        *d = b.delta();
    }
    let op = b.u8();
    let isa = b.u8();
    let flags = b.u8();
    let eps = if flags & 1 == 0 { [0.0, 1e-5, 1e-3][(flags as usize >> 1) % 3] } else { b.f32() };
    let momentum = if flags & 2 == 0 { 0.1 } else { b.f32() };
    let count = b.u8() as usize % 5;
    let nice = flags & 4 == 0;
    let scale = 10f32.powi((b.u8() % 16) as i32 - 8);
    let offset = (b.u8() as i8) as f32 * 10f32.powi((b.u8() % 8) as i32);
    let mut params = Vec::new();
    for _ in 0..8 {
        params.push(if nice { (b.u8() as i8) as f32 / 16.0 } else { b.f32() });
    }
    let rest = b.0;
    let data = if rest.is_empty() {
        vec![0.0]
    } else if nice {
        rest.chunks(2)
            .map(|p| {
                let v = i16::from_le_bytes([p[0], *p.get(1).unwrap_or(&0)]);
                offset + v as f32 * scale
            })
            .collect()
    } else {
        rest.chunks(4)
            .map(|p| {
                f32::from_bits(u32::from_le_bytes([
                    p[0],
                    *p.get(1).unwrap_or(&0),
                    *p.get(2).unwrap_or(&0),
                    *p.get(3).unwrap_or(&0),
                ]))
            })
            .collect()
    };
    Problem { shape: Shape::new(n, c, s), layout, deltas, op, isa, eps, momentum, count, nice, params, data }
}

/// `len` values cycled from `src`.
pub fn fill(src: &[f32], len: usize) -> Vec<f32> {
    (0..len).map(|i| src[i % src.len()]).collect()
}
