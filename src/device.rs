//! [`Device`]: where an operation runs at the convenient (host tensor) API level.

use crate::error::{Error, Result};
#[cfg(any(feature = "wgpu", feature = "cuda"))]
use std::sync::Arc;

/// Where an operation runs. Cheap to clone.
#[derive(Clone, Debug)]
pub enum Device {
    /// linrec's native CPU kernels: f32 state and accumulation (f16/bf16 storage widened),
    /// multi-threaded on rayon's pool, bitwise identical whatever the number of threads.
    Cpu,
    /// The f64 CPU reference (exact, single-threaded, slow; the oracle every test compares
    /// with): results are rounded to the storage dtype.
    Reference,
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
    /// [`Device::Reference`].
    Reference,
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
            BackendKind::Reference => "reference",
            BackendKind::Wgpu => "wgpu",
            BackendKind::Cuda => "cuda",
        }
    }
}

impl Device {
    /// The fastest device available: a CUDA GPU (feature `cuda`), else a wgpu adapter that is
    /// a real GPU, else the native CPU kernels. A CPU-emulated adapter (lavapipe, llvmpipe,
    /// WARP, SwiftShader) is slower than [`Device::Cpu`] on every op, so it is never chosen
    /// here; [`Device::wgpu`] still opens it when asked. Never fails.
    pub fn best() -> Device {
        #[cfg(feature = "cuda")]
        if let Ok(d) = Device::cuda(0) {
            return d;
        }
        #[cfg(feature = "wgpu")]
        if let Ok(Device::Wgpu(c)) = Device::wgpu() {
            if c.info.device_type != wgpu::DeviceType::Cpu {
                return Device::Wgpu(c);
            }
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
            Device::Reference => BackendKind::Reference,
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
            Device::Cpu | Device::Reference => wall(Box::new(f)),
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
            Device::Cpu | Device::Reference => Err(Error::unsupported(
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
            Device::Cpu => format!("cpu ({} threads)", rayon::current_num_threads()),
            Device::Reference => "reference (f64, CPU)".into(),
            #[cfg(feature = "wgpu")]
            Device::Wgpu(c) => format!("wgpu: {}", c.describe()),
            #[cfg(feature = "cuda")]
            Device::Cuda(c) => format!("cuda: {}", c.describe()),
        }
    }
}
