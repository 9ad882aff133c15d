#![forbid(unsafe_code)]
//! Shapes, memory layouts and tensor descriptors.

use crate::Error;

/// Memory order of a 4-D (or N-D spatial) activation tensor. See the crate docs for the offsets.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Layout {
    /// Contiguous `N × C × S` (PyTorch's default, oneDNN `ncsp`): each (n, c) plane is S contiguous values.
    Nchw,
    /// Channels last, `N × S × C` (oneDNN `nspc`): each position holds its C channels contiguously.
    Nhwc,
    /// Channel-blocked `N × ⌈C/b⌉ × S × b` (oneDNN nChw4c/8c/16c, ncnn elempack); `block` ∈ {4, 8, 16}.
    /// Lanes of channels `c ≥ C` in the last block are padding: ignored on input, written as 0 on output.
    Blocked {
        /// Channels per block: 4, 8 or 16.
        block: usize,
    },
}

/// Dimensions of a batch: `n` samples, `c` channels, `spatial` positions per channel and sample
/// (H·W for 2-D, D·H·W for 3-D, 1 for BatchNorm1d).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Shape {
    /// Batch size N.
    pub n: usize,
    /// Channel count C.
    pub c: usize,
    /// Spatial size S.
    pub spatial: usize,
}

impl Shape {
    /// A shape of `n` samples, `c` channels and `spatial` positions.
    pub const fn new(n: usize, c: usize, spatial: usize) -> Self {
        Shape { n, c, spatial }
    }

    /// The shape of an `N × C × H × W` image batch (`spatial = h · w`, saturating: an overflowing product
    /// is rejected by [`TensorDesc::new`]).
    pub const fn nchw(n: usize, c: usize, h: usize, w: usize) -> Self {
        Shape { n, c, spatial: h.saturating_mul(w) }
    }

    /// Values per channel, `n · spatial`.
    pub const fn count(&self) -> usize {
        self.n.saturating_mul(self.spatial)
    }
}

/// A validated shape and layout: the only way to describe a tensor to the kernels.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct TensorDesc {
    shape: Shape,
    layout: Layout,
    len: usize,
}

impl TensorDesc {
    /// Checks the shape and layout: every dimension at least 1, a block size of 4, 8 or 16, and an element
    /// count (padding included) whose bytes fit in `isize::MAX`.
    ///
    /// ```
    /// use bnorm::{Layout, Shape, TensorDesc};
    /// let d = TensorDesc::new(Shape::nchw(2, 3, 4, 5), Layout::Blocked { block: 8 }).unwrap();
    /// assert_eq!(d.len(), 2 * 8 * 20); // 3 channels padded to one block of 8
    /// assert!(TensorDesc::new(Shape::new(2, 0, 4), Layout::Nchw).is_err());
    /// ```
    pub fn new(shape: Shape, layout: Layout) -> Result<Self, Error> {
        let Shape { n, c, spatial } = shape;
        if n == 0 || c == 0 || spatial == 0 {
            return Err(Error::ZeroDimension { n, c, spatial });
        }
        let padded_c = match layout {
            Layout::Nchw | Layout::Nhwc => Some(c),
            Layout::Blocked { block } => {
                if !matches!(block, 4 | 8 | 16) {
                    return Err(Error::InvalidBlock { block });
                }
                c.div_ceil(block).checked_mul(block)
            }
        };
        let len = padded_c
            .and_then(|pc| pc.checked_mul(n))
            .and_then(|v| v.checked_mul(spatial))
            .filter(|&v| v <= isize::MAX as usize / core::mem::size_of::<f32>());
        match len {
            Some(len) => Ok(TensorDesc { shape, layout, len }),
            None => Err(Error::TooLarge { n, c, spatial }),
        }
    }

    /// The shape.
    pub const fn shape(&self) -> Shape {
        self.shape
    }

    /// The layout.
    pub const fn layout(&self) -> Layout {
        self.layout
    }

    /// Number of f32 values a data slice must hold, padding included.
    pub const fn len(&self) -> usize {
        self.len
    }

    /// Always `false`: a valid descriptor has no zero dimension. Present for API symmetry with `len`.
    pub const fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Index of element (n, c, s) in the data slice, or `None` when any index is out of range.
    ///
    /// ```
    /// use bnorm::{Layout, Shape, TensorDesc};
    /// let d = TensorDesc::new(Shape::new(2, 3, 4), Layout::Nhwc).unwrap();
    /// assert_eq!(d.offset(1, 2, 3), Some((1 * 4 + 3) * 3 + 2));
    /// assert_eq!(d.offset(0, 3, 0), None);
    /// ```
    pub const fn offset(&self, n: usize, c: usize, s: usize) -> Option<usize> {
        let Shape { n: nn, c: cc, spatial } = self.shape;
        if n >= nn || c >= cc || s >= spatial {
            return None;
        }
        // In range, so every product below is at most `len` and cannot overflow.
        Some(match self.layout {
            Layout::Nchw => (n * cc + c) * spatial + s,
            Layout::Nhwc => (n * spatial + s) * cc + c,
            Layout::Blocked { block } => {
                let blocks = cc.div_ceil(block);
                ((n * blocks + c / block) * spatial + s) * block + c % block
            }
        })
    }
}
