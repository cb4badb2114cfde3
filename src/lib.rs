//! # linrec
//!
//! GPU kernels for the linear recurrences that serve as memory in reinforcement learning and
//! long-sequence models, with forward *and* backward passes, initial and final states and
//! episode resets inside a sequence:
//!
//! - [`ffm`]: the aggregator of Fast and Forgetful Memory (complex, decaying, oscillating);
//! - [`efla`]: error-free linear attention and the delta rule (recurrent and chunked);
//! - [`scan`]: the diagonal linear scan (real or complex, S5 / LRU style);
//! - [`selective`]: Mamba's selective scan.
//!
//! Every operation runs on the f64 CPU reference (`Device::Reference`), on linrec's native CPU
//! kernels (`Device::Cpu`: multi-threaded f32), on WGSL kernels through `wgpu` (any
//! Vulkan / Metal / DX12 GPU, or lavapipe on the CPU) and, with feature `cuda`, on CUDA
//! kernels. The contract they all implement is written down in the repository's `docs/`
//! (`docs/conventions.md` and one page per operation); the reference is the oracle.
//!
//! ## Two API levels
//!
//! The convenient level takes host [`Tensor`]s and a [`Device`]:
//!
//! ```
//! use linrec::{scan, Device, Tensor};
//! # fn main() -> linrec::Result<()> {
//! let p = scan::LinearScan::new(1, 4, 2); // B = 1, T = 4, D = 2, real, time-varying
//! let x = Tensor::new([1, 4, 2], vec![1.0f32; 8])?;
//! let a = Tensor::new([1, 4, 2], vec![0.5f32; 8])?;
//! let out = scan::forward(&Device::Cpu, &p, &scan::ScanInputs { x: &x, a: &a, h0: None, start: None })?;
//! assert_eq!(out.h_final.to_f32_vec(), vec![1.875, 1.875]);
//! # Ok(()) }
//! ```
//!
//! The zero-copy level takes the caller's device buffers ([`GpuRef`] for wgpu, `CuRef` for
//! CUDA) and returns device tensors: `scan::wgpu::forward(&ctx, &p, &inputs)`.

#![warn(missing_docs)]

#[cfg(feature = "burn")]
pub mod burn;
#[cfg(feature = "candle")]
pub mod candle;
pub mod device;
pub mod error;
pub mod ops;
pub mod runtime;
#[doc(hidden)]
pub mod shader_pp;
pub mod tensor;

pub use device::{BackendKind, Device};
pub use error::{Error, Result};
pub use ops::{efla, ffm, scan, selective, ArgSpec, Problem, Role};
#[cfg(feature = "cuda")]
pub use runtime::cuda::{CuRef, CuTensor, CudaBackend};
#[cfg(feature = "wgpu")]
pub use runtime::wgpu::{GpuRef, GpuTensor, WgpuContext, WgpuOptions};
pub use tensor::{DType, Element, Tensor, TensorData};
