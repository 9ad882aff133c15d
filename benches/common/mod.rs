//! The benchmark problems, shared by `benches/kernels.rs` and `examples/roofline.rs` (included with
//! `#[path]`; a folder under `benches/` is not a bench target of its own): the shapes of
//! `shared/peers/shapes.txt` and every layout, by the names the peers use.

use bnorm::Layout;

/// `(name, [N, C, H, W])`.
pub const SHAPES: [(&str, [usize; 4]); 8] = [
    ("r50-conv1", [32, 64, 112, 112]),
    ("r50-s2", [32, 256, 56, 56]),
    ("r50-s3", [32, 512, 28, 28]),
    ("r50-s5", [32, 2048, 7, 7]),
    ("b1-56", [1, 64, 56, 56]),
    ("b1-14", [1, 1024, 14, 14]),
    ("odd-c23", [4, 23, 13, 13]),
    ("bn1d", [256, 512, 1, 1]),
];

/// `(name, layout)`.
pub const LAYOUTS: [(&str, Layout); 5] = [
    ("nchw", Layout::Nchw),
    ("nhwc", Layout::Nhwc),
    ("nChw4c", Layout::Blocked { block: 4 }),
    ("nChw8c", Layout::Blocked { block: 8 }),
    ("nChw16c", Layout::Blocked { block: 16 }),
];
