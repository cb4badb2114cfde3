//! [`Device`]: where an operation runs at the convenient (host tensor) API level.

use crate::error::{Error, Result};
#[cfg(any(feature = "wgpu", feature = "cuda"))]
use std::sync::Arc;

/// Where an operation runs. Cheap to clone.
#[derive(Clone, Debug)]
pub enum Device {
    /// The f64 CPU reference (exact, slow): results are rounded to the storage dtype.
    Cpu,
    /// A wgpu adapter running the WGSL kernels (any Vulkan/Metal/DX12 GPU, or lavapipe).
    #[cfg(feature = "wgpu")]
    Wgpu(Arc<crate::runtime::wgpu::WgpuContext>),
    /// An NVIDIA GPU running the CUDA kernels.
    #[cfg(feature = "cuda")]
    Cuda(Arc<crate::runtime::cuda::CudaBackend>),
}

/// Which kind of [`Device`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum BackendKind {
    /// [`Device::Cpu`].
    Cpu,
    /// `Device::Wgpu`.
    Wgpu,
    /// `Device::Cuda`.
    Cuda,
}

impl BackendKind {
    /// `cpu`, `wgpu` or `cuda`.
    pub fn name(self) -> &'static str {
        match self {
            BackendKind::Cpu => "cpu",
            BackendKind::Wgpu => "wgpu",
            BackendKind::Cuda => "cuda",
        }
    }
}

impl Device {
    /// The fastest device available: a CUDA GPU (feature `cuda`), else a wgpu adapter (a real
    /// GPU before lavapipe), else the CPU reference. Never fails.
    pub fn best() -> Device {
        #[cfg(feature = "cuda")]
        if let Ok(d) = Device::cuda(0) {
            return d;
        }
        #[cfg(feature = "wgpu")]
        if let Ok(d) = Device::wgpu() {
            return d;
        }
        Device::Cpu
    }

    /// The best wgpu adapter, or why there is none.
    #[cfg(feature = "wgpu")]
    pub fn wgpu() -> Result<Device> {
        Ok(Device::Wgpu(crate::runtime::wgpu::WgpuContext::new()?))
    }

    /// CUDA device `ordinal`, or why there is none.
    #[cfg(feature = "cuda")]
    pub fn cuda(ordinal: usize) -> Result<Device> {
        Ok(Device::Cuda(crate::runtime::cuda::CudaBackend::new(
            ordinal,
        )?))
    }

    /// Which backend this is.
    pub fn kind(&self) -> BackendKind {
        match self {
            Device::Cpu => BackendKind::Cpu,
            #[cfg(feature = "wgpu")]
            Device::Wgpu(_) => BackendKind::Wgpu,
            #[cfg(feature = "cuda")]
            Device::Cuda(_) => BackendKind::Cuda,
        }
    }

    /// Run `f` and return its result with the device time of the kernels it launched:
    /// timestamp queries on wgpu (wall time where the adapter has none), CUDA events around
    /// each launch, wall time on the CPU. Uploads and downloads are not counted on GPUs.
    pub fn gpu_time<R>(&self, f: impl FnOnce() -> Result<R>) -> Result<(R, std::time::Duration)> {
        let wall = |f: Box<dyn FnOnce() -> Result<R> + '_>| {
            let t = std::time::Instant::now();
            f().map(|r| (r, t.elapsed()))
        };
        match self {
            Device::Cpu => wall(Box::new(f)),
            #[cfg(feature = "wgpu")]
            Device::Wgpu(c) if c.features.contains(wgpu::Features::TIMESTAMP_QUERY) => {
                c.gpu_time(f)
            }
            #[cfg(feature = "wgpu")]
            Device::Wgpu(_) => wall(Box::new(f)),
            #[cfg(feature = "cuda")]
            Device::Cuda(c) => c.gpu_time(f),
        }
    }

    /// Device time of one device-to-device copy of about `bytes` bytes, the bandwidth ceiling
    /// benchmarks compare memory-bound kernels with (a copy reads and writes every byte):
    /// returns the bytes actually copied (rounded to the backend's granule, capped by its
    /// largest binding) and the time. `Unsupported` on the CPU.
    pub fn time_copy(&self, bytes: usize) -> Result<(usize, std::time::Duration)> {
        match self {
            Device::Cpu => Err(Error::unsupported(
                "cpu",
                format!("timing a {bytes}-byte device copy"),
            )),
            #[cfg(feature = "wgpu")]
            Device::Wgpu(c) => c.time_copy(bytes),
            #[cfg(feature = "cuda")]
            Device::Cuda(c) => c.time_copy(bytes),
        }
    }

    /// Human-readable description: backend and device name.
    pub fn describe(&self) -> String {
        match self {
            Device::Cpu => "cpu (f64 reference)".into(),
            #[cfg(feature = "wgpu")]
            Device::Wgpu(c) => format!("wgpu: {}", c.describe()),
            #[cfg(feature = "cuda")]
            Device::Cuda(c) => format!("cuda: {}", c.describe()),
        }
    }
}
