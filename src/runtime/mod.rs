//! Backend plumbing: device selection, buffers, pipeline/module caches, launches, timing.
//! Nothing here knows about a particular operation.

pub(crate) mod cpu;
#[cfg(feature = "cuda")]
pub mod cuda;
#[cfg(feature = "wgpu")]
pub mod wgpu;
