//! A small owned host tensor, the element types linrec stores, and conversions.
//!
//! [`Tensor`] is the convenient API level's currency: a shape plus a contiguous row-major
//! buffer of one [`DType`]. Complex tensors carry a trailing axis of 2 (`(re, im)` pairs).

use crate::error::{Error, Result};
use half::{bf16, f16};

/// Element type of a tensor or device buffer.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum DType {
    /// 32-bit IEEE float: every backend, every op.
    F32,
    /// 16-bit IEEE float storage (f32 state and accumulation inside kernels).
    F16,
    /// bfloat16 storage (f32 state and accumulation inside kernels).
    BF16,
    /// Bytes: `start` reset flags at the host and CUDA levels (nonzero = true).
    U8,
    /// 32-bit words: `start` reset flags at the wgpu level (WGSL has no byte arrays).
    U32,
}

impl DType {
    /// Size of one element in bytes.
    pub const fn size(self) -> usize {
        match self {
            DType::F32 | DType::U32 => 4,
            DType::F16 | DType::BF16 => 2,
            DType::U8 => 1,
        }
    }

    /// Whether this is a floating-point storage type.
    pub const fn is_float(self) -> bool {
        matches!(self, DType::F32 | DType::F16 | DType::BF16)
    }

    /// Lower-case name, as used in error messages and benchmark ids.
    pub const fn name(self) -> &'static str {
        match self {
            DType::F32 => "f32",
            DType::F16 => "f16",
            DType::BF16 => "bf16",
            DType::U8 => "u8",
            DType::U32 => "u32",
        }
    }
}

impl std::fmt::Display for DType {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// A Rust type that can be the element of a [`Tensor`].
pub trait Element: bytemuck::Pod + Send + Sync + 'static + sealed::Sealed {
    /// The matching [`DType`].
    const DTYPE: DType;
    /// Widen to f64 (flags become 0.0 / 1.0).
    fn to_f64(self) -> f64;
    /// Round from f64 (to nearest; flags become 1 for nonzero).
    fn from_f64(v: f64) -> Self;
}

mod sealed {
    pub trait Sealed {}
    impl Sealed for f32 {}
    impl Sealed for half::f16 {}
    impl Sealed for half::bf16 {}
    impl Sealed for u8 {}
    impl Sealed for u32 {}
}

impl Element for f32 {
    const DTYPE: DType = DType::F32;
    fn to_f64(self) -> f64 {
        self as f64
    }
    fn from_f64(v: f64) -> Self {
        v as f32
    }
}
impl Element for f16 {
    const DTYPE: DType = DType::F16;
    fn to_f64(self) -> f64 {
        self.to_f64()
    }
    fn from_f64(v: f64) -> Self {
        f16::from_f64(v)
    }
}
impl Element for bf16 {
    const DTYPE: DType = DType::BF16;
    fn to_f64(self) -> f64 {
        self.to_f64()
    }
    fn from_f64(v: f64) -> Self {
        bf16::from_f64(v)
    }
}
impl Element for u8 {
    const DTYPE: DType = DType::U8;
    fn to_f64(self) -> f64 {
        self as f64
    }
    fn from_f64(v: f64) -> Self {
        u8::from(v != 0.0)
    }
}
impl Element for u32 {
    const DTYPE: DType = DType::U32;
    fn to_f64(self) -> f64 {
        self as f64
    }
    fn from_f64(v: f64) -> Self {
        u32::from(v != 0.0)
    }
}

/// The typed storage behind a [`Tensor`].
#[derive(Debug, Clone, PartialEq)]
pub enum TensorData {
    /// f32 elements.
    F32(Vec<f32>),
    /// f16 elements.
    F16(Vec<f16>),
    /// bf16 elements.
    BF16(Vec<bf16>),
    /// Bytes (flags).
    U8(Vec<u8>),
    /// 32-bit words (flags).
    U32(Vec<u32>),
}

macro_rules! each_data {
    ($data:expr, $v:ident => $body:expr) => {
        match $data {
            TensorData::F32($v) => $body,
            TensorData::F16($v) => $body,
            TensorData::BF16($v) => $body,
            TensorData::U8($v) => $body,
            TensorData::U32($v) => $body,
        }
    };
}

/// An owned, contiguous, row-major host tensor.
#[derive(Debug, Clone, PartialEq)]
pub struct Tensor {
    shape: Vec<usize>,
    data: TensorData,
}

impl Tensor {
    /// A tensor of `shape` holding `data` (row-major). Fails if the sizes disagree.
    pub fn new<T: Element>(shape: impl Into<Vec<usize>>, data: Vec<T>) -> Result<Self> {
        let shape = shape.into();
        let n = crate::error::checked_numel("shape", &shape)?;
        if n != data.len() {
            return Err(Error::Size {
                arg: "data",
                expected: n,
                shape,
                found: data.len(),
            });
        }
        let data = match T::DTYPE {
            DType::F32 => TensorData::F32(bytemuck::allocation::cast_vec(data)),
            DType::F16 => TensorData::F16(bytemuck::allocation::cast_vec(data)),
            DType::BF16 => TensorData::BF16(bytemuck::allocation::cast_vec(data)),
            DType::U8 => TensorData::U8(bytemuck::allocation::cast_vec(data)),
            DType::U32 => TensorData::U32(bytemuck::allocation::cast_vec(data)),
        };
        Ok(Tensor { shape, data })
    }

    /// A tensor of `shape` and `dtype` rounded from f64 values.
    pub fn from_f64(shape: impl Into<Vec<usize>>, values: &[f64], dtype: DType) -> Result<Self> {
        fn conv<T: Element>(v: &[f64]) -> Vec<T> {
            v.iter().map(|&x| T::from_f64(x)).collect()
        }
        let shape = shape.into();
        match dtype {
            DType::F32 => Tensor::new(shape, conv::<f32>(values)),
            DType::F16 => Tensor::new(shape, conv::<f16>(values)),
            DType::BF16 => Tensor::new(shape, conv::<bf16>(values)),
            DType::U8 => Tensor::new(shape, conv::<u8>(values)),
            DType::U32 => Tensor::new(shape, conv::<u32>(values)),
        }
    }

    /// A `[..]` tensor of reset flags (`u8`, 1 = true).
    pub fn flags(shape: impl Into<Vec<usize>>, flags: &[bool]) -> Result<Self> {
        Tensor::new(
            shape,
            flags.iter().map(|&f| u8::from(f)).collect::<Vec<u8>>(),
        )
    }

    /// All zeros.
    ///
    /// # Panics
    /// Like `vec!`, when the shape's element count overflows or cannot be allocated; use
    /// [`Tensor::new`] for sizes that come from outside.
    pub fn zeros(shape: impl Into<Vec<usize>>, dtype: DType) -> Self {
        let shape = shape.into();
        let n = shape.iter().try_fold(1usize, |n, &d| n.checked_mul(d));
        let n = n.expect("Tensor::zeros: the element count overflows usize");
        let data = match dtype {
            DType::F32 => TensorData::F32(vec![0.0; n]),
            DType::F16 => TensorData::F16(vec![f16::ZERO; n]),
            DType::BF16 => TensorData::BF16(vec![bf16::ZERO; n]),
            DType::U8 => TensorData::U8(vec![0; n]),
            DType::U32 => TensorData::U32(vec![0; n]),
        };
        Tensor { shape, data }
    }

    /// The shape.
    pub fn shape(&self) -> &[usize] {
        &self.shape
    }

    /// The element type.
    pub fn dtype(&self) -> DType {
        match &self.data {
            TensorData::F32(_) => DType::F32,
            TensorData::F16(_) => DType::F16,
            TensorData::BF16(_) => DType::BF16,
            TensorData::U8(_) => DType::U8,
            TensorData::U32(_) => DType::U32,
        }
    }

    /// Number of elements.
    pub fn numel(&self) -> usize {
        each_data!(&self.data, v => v.len())
    }

    /// The typed storage.
    pub fn data(&self) -> &TensorData {
        &self.data
    }

    /// The raw bytes (native endianness), for uploads.
    pub fn as_bytes(&self) -> &[u8] {
        each_data!(&self.data, v => bytemuck::cast_slice(v))
    }

    /// Borrow the elements as `T`, if the dtype matches.
    pub fn as_slice<T: Element>(&self) -> Option<&[T]> {
        if self.dtype() != T::DTYPE {
            return None;
        }
        Some(each_data!(&self.data, v => bytemuck::cast_slice(v)))
    }

    /// Every element widened to f64.
    pub fn to_f64_vec(&self) -> Vec<f64> {
        each_data!(&self.data, v => v.iter().map(|x| x.to_f64()).collect())
    }

    /// Every element converted to f32.
    pub fn to_f32_vec(&self) -> Vec<f32> {
        each_data!(&self.data, v => v.iter().map(|x| x.to_f64() as f32).collect())
    }

    /// The elements as f32, moved out when stored as f32 (no copy), converted otherwise.
    pub fn into_f32_vec(self) -> Vec<f32> {
        match self.data {
            TensorData::F32(v) => v,
            _ => self.to_f32_vec(),
        }
    }

    /// Reset flags as bytes (any nonzero element is true), whatever the storage type.
    pub fn to_flags(&self) -> Vec<u8> {
        each_data!(&self.data, v => v.iter().map(|x| u8::from(x.to_f64() != 0.0)).collect())
    }

    /// The same values in another element type (rounded to nearest).
    pub fn to_dtype(&self, dtype: DType) -> Tensor {
        if dtype == self.dtype() {
            return self.clone();
        }
        Tensor::from_f64(self.shape.clone(), &self.to_f64_vec(), dtype).expect("same element count")
    }

    /// Same data, another shape with the same element count.
    pub fn reshape(self, shape: impl Into<Vec<usize>>) -> Result<Tensor> {
        let shape = shape.into();
        let n = crate::error::checked_numel("shape", &shape)?;
        if n != self.numel() {
            return Err(Error::Size {
                arg: "shape",
                expected: self.numel(),
                shape,
                found: n,
            });
        }
        Ok(Tensor {
            shape,
            data: self.data,
        })
    }

    /// Build from raw bytes of the given dtype (used by device downloads).
    pub fn from_bytes(shape: impl Into<Vec<usize>>, dtype: DType, bytes: &[u8]) -> Result<Self> {
        let shape = shape.into();
        fn vec<T: Element>(b: &[u8]) -> Vec<T> {
            // Copy element by element so the source needs no alignment.
            b.chunks_exact(std::mem::size_of::<T>())
                .map(bytemuck::pod_read_unaligned)
                .collect()
        }
        match dtype {
            DType::F32 => Tensor::new(shape, vec::<f32>(bytes)),
            DType::F16 => Tensor::new(shape, vec::<f16>(bytes)),
            DType::BF16 => Tensor::new(shape, vec::<bf16>(bytes)),
            DType::U8 => Tensor::new(shape, bytes.to_vec()),
            DType::U32 => Tensor::new(shape, vec::<u32>(bytes)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn roundtrip_and_errors() {
        let t = Tensor::new([2, 3], vec![1.0f32, 2., 3., 4., 5., 6.]).unwrap();
        assert_eq!(t.dtype(), DType::F32);
        assert_eq!(t.to_dtype(DType::BF16).to_f32_vec(), t.to_f32_vec());
        let b = Tensor::from_bytes([2, 3], DType::F32, t.as_bytes()).unwrap();
        assert_eq!(b, t);
        assert!(matches!(
            Tensor::new([2, 2], vec![1.0f32]),
            Err(Error::Size {
                expected: 4,
                found: 1,
                ..
            })
        ));
        assert_eq!(
            Tensor::flags([3], &[true, false, true]).unwrap().to_flags(),
            vec![1, 0, 1]
        );
    }
}
