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
///
/// Two descriptors are equal when their shape and layout are: the store hint of a part
/// ([`store_len`](Self::store_len)) is not part of the comparison.
#[derive(Clone, Copy, Debug)]
pub struct TensorDesc {
    shape: Shape,
    layout: Layout,
    len: usize,
    /// Elements of the tensor whose store strategy this one follows: `len`, or the whole tensor's for a
    /// part.
    store_len: usize,
}

impl PartialEq for TensorDesc {
    fn eq(&self, other: &Self) -> bool {
        self.shape == other.shape && self.layout == other.layout
    }
}

impl Eq for TensorDesc {}

impl core::hash::Hash for TensorDesc {
    fn hash<H: core::hash::Hasher>(&self, state: &mut H) {
        self.shape.hash(state);
        self.layout.hash(state);
    }
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
            Some(len) => Ok(TensorDesc { shape, layout, len, store_len: len }),
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

    /// The element count the kernels decide their store strategy from: [`len`](Self::len) for a tensor of
    /// its own, the whole tensor's for a [`Part`] of one, so that a part of a large tensor is written
    /// with non-temporal stores as the whole would be (outputs of at least a quarter of the last-level
    /// cache bypass it; smaller ones stay in cache for the next layer).
    pub const fn store_len(&self) -> usize {
        self.store_len
    }

    /// This descriptor with the store strategy of a tensor of `len` elements (see
    /// [`store_len`](Self::store_len)): for a piece of a larger tensor cut by hand, such as one rank's
    /// shard of a batch. [`TensorDesc::split`] and the part constructors set it themselves.
    #[must_use]
    pub const fn with_store_len(self, len: usize) -> TensorDesc {
        TensorDesc { store_len: len, ..self }
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

/// One contiguous piece of a tensor: a range of its batch, or within one sample a range of channels
/// (NCHW; whole channel blocks for blocked layouts) or of spatial positions (NHWC). It has its own
/// descriptor, with which every operation runs on its data ([`data`](Self::data)) and its channels'
/// per-channel slices ([`per_channel`](Self::per_channel), [`affine`](Self::affine)); its store strategy
/// is the whole tensor's ([`TensorDesc::store_len`]).
///
/// ```
/// use bnorm::{Layout, Shape, TensorDesc};
/// let whole = TensorDesc::new(Shape::new(2, 10, 6), Layout::Blocked { block: 4 })?;
/// // Sample 1, channel blocks 1 and 2: channels 4..10 (the last block holds two channels of padding).
/// let part = whole.channel_part(1, 4, 10)?;
/// assert_eq!(part.channels(), 4..10);
/// assert_eq!(part.range(), 72 + 24..72 + 72);
/// assert_eq!(part.desc().shape(), Shape::new(1, 6, 6));
/// assert!(whole.channel_part(1, 2, 10).is_err()); // not on a block boundary
/// # Ok::<(), bnorm::Error>(())
/// ```
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Part {
    desc: TensorDesc,
    whole: TensorDesc,
    offset: usize,
    batch: (usize, usize),
    channels: (usize, usize),
    positions: (usize, usize),
}

impl Part {
    /// The part's own descriptor (its store strategy the whole tensor's).
    pub const fn desc(&self) -> &TensorDesc {
        &self.desc
    }

    /// The descriptor of the tensor it is a part of.
    pub const fn whole(&self) -> &TensorDesc {
        &self.whole
    }

    /// Where its data lies in the whole tensor's slice.
    pub const fn range(&self) -> core::ops::Range<usize> {
        self.offset..self.offset + self.desc.len
    }

    /// The samples it covers.
    pub const fn batch(&self) -> core::ops::Range<usize> {
        self.batch.0..self.batch.1
    }

    /// The channels it covers (of the whole tensor's numbering; per-channel slices are cut to these).
    pub const fn channels(&self) -> core::ops::Range<usize> {
        self.channels.0..self.channels.1
    }

    /// The spatial positions it covers.
    pub const fn positions(&self) -> core::ops::Range<usize> {
        self.positions.0..self.positions.1
    }

    /// Its data in `whole`, a slice of the whole tensor (`whole().len()` values).
    ///
    /// Errors: `whole` of another length (`"whole tensor"`).
    pub fn data<'a, T>(&self, whole: &'a [T]) -> Result<&'a [T], Error> {
        self.check_whole(whole.len())?;
        Ok(&whole[self.range()])
    }

    /// [`data`](Self::data), mutable.
    pub fn data_mut<'a, T>(&self, whole: &'a mut [T]) -> Result<&'a mut [T], Error> {
        self.check_whole(whole.len())?;
        Ok(&mut whole[self.range()])
    }

    /// Its channels' values of a per-channel slice of the whole tensor (C values: γ, β, mean, var,
    /// partial statistics, gradient sums).
    ///
    /// Errors: `per_channel` not C long (`"per-channel slice"`).
    pub fn per_channel<'a, T>(&self, per_channel: &'a [T]) -> Result<&'a [T], Error> {
        self.check_channels(per_channel.len())?;
        Ok(&per_channel[self.channels()])
    }

    /// [`per_channel`](Self::per_channel), mutable.
    pub fn per_channel_mut<'a, T>(&self, per_channel: &'a mut [T]) -> Result<&'a mut [T], Error> {
        self.check_channels(per_channel.len())?;
        Ok(&mut per_channel[self.channels()])
    }

    /// The whole tensor's [`Affine`](crate::Affine) cut to its channels (ε unchanged).
    ///
    /// Errors: γ or β not C long.
    pub fn affine<'a>(&self, affine: &crate::Affine<'a>) -> Result<crate::Affine<'a>, Error> {
        let cut = |s: Option<&'a [f32]>, what| match s {
            Some(s) if s.len() != self.whole.shape.c => {
                Err(Error::LengthMismatch { what, expected: self.whole.shape.c, found: s.len() })
            }
            Some(s) => Ok(Some(&s[self.channels()])),
            None => Ok(None),
        };
        Ok(crate::Affine {
            gamma: cut(affine.gamma, "gamma")?,
            beta: cut(affine.beta, "beta")?,
            eps: affine.eps,
        })
    }

    fn check_whole(&self, found: usize) -> Result<(), Error> {
        let expected = self.whole.len;
        if found == expected {
            Ok(())
        } else {
            Err(Error::LengthMismatch { what: "whole tensor", expected, found })
        }
    }

    fn check_channels(&self, found: usize) -> Result<(), Error> {
        let expected = self.whole.shape.c;
        if found == expected {
            Ok(())
        } else {
            Err(Error::LengthMismatch { what: "per-channel slice", expected, found })
        }
    }
}

fn check_range(axis: &'static str, start: usize, end: usize, size: usize) -> Result<(), Error> {
    if start < end && end <= size { Ok(()) } else { Err(Error::InvalidPart { axis, start, end, size }) }
}

impl TensorDesc {
    fn part(
        &self,
        shape: Shape,
        offset: usize,
        batch: (usize, usize),
        channels: (usize, usize),
        positions: (usize, usize),
    ) -> Part {
        // A part of a valid descriptor is no larger: `new` cannot fail.
        let len = match self.layout {
            Layout::Blocked { block } => shape.c.div_ceil(block) * block,
            _ => shape.c,
        } * shape.n
            * shape.spatial;
        let desc = TensorDesc { shape, layout: self.layout, len, store_len: self.store_len };
        Part { desc, whole: *self, offset, batch, channels, positions }
    }

    /// Samples `n0..n1`: contiguous in every layout.
    ///
    /// Errors: an empty range or one past N ([`Error::InvalidPart`]).
    pub fn batch_part(&self, n0: usize, n1: usize) -> Result<Part, Error> {
        let Shape { n, c, spatial } = self.shape;
        check_range("batch", n0, n1, n)?;
        let per = self.len / n;
        Ok(self.part(Shape::new(n1 - n0, c, spatial), n0 * per, (n0, n1), (0, c), (0, spatial)))
    }

    /// Channels `c0..c1` of sample `n`: contiguous in NCHW, and in blocked layouts when the range is
    /// whole blocks (`c0` a multiple of the block, `c1` too or C).
    ///
    /// Errors: an NHWC tensor ([`Error::PartLayout`]); an empty range, one past C or N, or not on block
    /// boundaries ([`Error::InvalidPart`]).
    pub fn channel_part(&self, n: usize, c0: usize, c1: usize) -> Result<Part, Error> {
        let Shape { n: nn, c, spatial } = self.shape;
        check_range("batch", n, n.saturating_add(1), nn)?;
        check_range("channel", c0, c1, c)?;
        let per = self.len / nn;
        let offset = match self.layout {
            Layout::Nhwc => return Err(Error::PartLayout { layout: self.layout, axis: "channel" }),
            Layout::Nchw => n * per + c0 * spatial,
            Layout::Blocked { block } => {
                if !c0.is_multiple_of(block) || (!c1.is_multiple_of(block) && c1 != c) {
                    return Err(Error::InvalidPart {
                        axis: "channel (whole blocks)",
                        start: c0,
                        end: c1,
                        size: c,
                    });
                }
                n * per + c0 * spatial
            }
        };
        Ok(self.part(Shape::new(1, c1 - c0, spatial), offset, (n, n + 1), (c0, c1), (0, spatial)))
    }

    /// Spatial positions `s0..s1` of sample `n` (rows of an image: `s0 = h0·W`, `s1 = h1·W`), all
    /// channels: contiguous in NHWC.
    ///
    /// Errors: another layout ([`Error::PartLayout`]); an empty range, or one past S or N
    /// ([`Error::InvalidPart`]).
    pub fn spatial_part(&self, n: usize, s0: usize, s1: usize) -> Result<Part, Error> {
        let Shape { n: nn, c, spatial } = self.shape;
        if self.layout != Layout::Nhwc {
            return Err(Error::PartLayout { layout: self.layout, axis: "spatial" });
        }
        check_range("batch", n, n.saturating_add(1), nn)?;
        check_range("spatial", s0, s1, spatial)?;
        Ok(self.part(Shape::new(1, c, s1 - s0), (n * spatial + s0) * c, (n, n + 1), (0, c), (s0, s1)))
    }

    /// The tensor cut into contiguous parts of at most `max_len` values where the layout allows, in
    /// memory order, covering it exactly once: ranges of samples where a sample fits, else each sample
    /// cut into ranges of channels (NCHW), of channel blocks (blocked) or of spatial positions (NHWC).
    /// The smallest part is one channel plane, one block plane or one position; `max_len = 0` counts as
    /// 1. The cut depends only on the descriptor and `max_len`.
    ///
    /// ```
    /// use bnorm::{Layout, Shape, TensorDesc};
    /// let d = TensorDesc::new(Shape::new(2, 3, 10), Layout::Nchw)?;
    /// let parts: Vec<_> = d.split(20).map(|p| p.range()).collect();
    /// assert_eq!(parts, [0..20, 20..30, 30..50, 50..60]);
    /// # Ok::<(), bnorm::Error>(())
    /// ```
    pub fn split(&self, max_len: usize) -> Split {
        let Shape { n, c, spatial } = self.shape;
        let max_len = max_len.max(1);
        let per_sample = self.len / n;
        let (unit, units, step) = if per_sample <= max_len {
            (Unit::Samples, n, max_len / per_sample)
        } else {
            match self.layout {
                Layout::Nchw => (Unit::Channels(1), c, max_len / spatial),
                Layout::Blocked { block } => {
                    (Unit::Channels(block), c.div_ceil(block), max_len / (spatial * block))
                }
                Layout::Nhwc => (Unit::Positions, spatial, max_len / c),
            }
        };
        Split { desc: *self, unit, units, step: step.max(1), sample: 0, next: 0 }
    }
}

#[derive(Clone, Copy, Debug)]
enum Unit {
    Samples,
    /// Channels in groups of this many (1, or the block).
    Channels(usize),
    Positions,
}

/// The parts of [`TensorDesc::split`], in memory order. [`zip_mut`](Self::zip_mut) pairs each with its
/// piece of a mutable slice of the whole tensor.
#[derive(Clone, Copy, Debug)]
pub struct Split {
    desc: TensorDesc,
    unit: Unit,
    /// Units per sample (or samples) and units per part.
    units: usize,
    step: usize,
    sample: usize,
    next: usize,
}

impl Iterator for Split {
    type Item = Part;

    fn next(&mut self) -> Option<Part> {
        let d = &self.desc;
        let Shape { n, c, .. } = d.shape;
        if self.sample >= n || self.next >= self.units {
            return None;
        }
        let (u0, u1) = (self.next, self.units.min(self.next.saturating_add(self.step)));
        let part = match self.unit {
            Unit::Samples => {
                self.next = u1;
                self.sample = u1;
                d.batch_part(u0, u1)
            }
            Unit::Channels(b) => d.channel_part(self.sample, u0 * b, (u1 * b).min(c)),
            Unit::Positions => d.spatial_part(self.sample, u0, u1),
        };
        if !matches!(self.unit, Unit::Samples) {
            self.next = u1;
            if u1 == self.units {
                self.sample += 1;
                self.next = 0;
            }
        }
        debug_assert!(part.is_ok());
        part.ok()
    }
}

impl Split {
    /// Each part with its piece of `whole`, a mutable slice of the whole tensor: disjoint pieces, for
    /// parts that write (to hand to threads).
    ///
    /// Errors: `whole` not the tensor's length (`"whole tensor"`).
    pub fn zip_mut<T>(self, whole: &mut [T]) -> Result<PartsMut<'_, T>, Error> {
        let expected = self.desc.len;
        if whole.len() != expected {
            return Err(Error::LengthMismatch { what: "whole tensor", expected, found: whole.len() });
        }
        Ok(PartsMut { split: self, rest: whole })
    }
}

/// The parts of a [`Split`] with their disjoint pieces of a mutable slice ([`Split::zip_mut`]).
#[derive(Debug)]
pub struct PartsMut<'a, T> {
    split: Split,
    rest: &'a mut [T],
}

impl<'a, T> Iterator for PartsMut<'a, T> {
    type Item = (Part, &'a mut [T]);

    fn next(&mut self) -> Option<Self::Item> {
        let part = self.split.next()?;
        // Parts come in memory order and tile the tensor, so each starts where the last ended.
        let (head, tail) = core::mem::take(&mut self.rest).split_at_mut(part.desc.len);
        self.rest = tail;
        Some((part, head))
    }
}
