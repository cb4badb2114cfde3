//! Shared benchmark plumbing: which devices exist, GPU-timed iterations for criterion, and
//! problem sizes scaled to the device (software adapters get small problems).
#![allow(dead_code)]

use criterion::{BenchmarkGroup, Throughput};
use linrec::{Device, Result};
use std::time::Duration;

/// Every device to benchmark, with a short name: wgpu (any adapter) and CUDA when present.
/// Absent ones are reported on stderr.
pub fn devices() -> Vec<(String, Device)> {
    let mut v = Vec::new();
    match Device::wgpu() {
        Ok(d) => v.push(("wgpu".to_string(), d)),
        Err(e) => eprintln!("bench: wgpu skipped: {e}"),
    }
    #[cfg(feature = "cuda")]
    match Device::cuda(0) {
        Ok(d) => v.push(("cuda".to_string(), d)),
        Err(e) => eprintln!("bench: cuda skipped: {e}"),
    }
    #[cfg(not(feature = "cuda"))]
    eprintln!("bench: cuda skipped: built without feature `cuda`");
    for (n, d) in &v {
        eprintln!("bench: {n} = {}", d.describe());
    }
    v
}

/// Whether a device is a software rasterizer (lavapipe) or the CPU: use small problems there.
pub fn is_slow(dev: &Device) -> bool {
    match dev {
        Device::Cpu | Device::Reference => true,
        Device::Wgpu(c) => c.info.device_type == wgpu::DeviceType::Cpu,
        // linrec's CUDA emulator (tools/cuda-emu) runs kernels on the CPU
        #[cfg(feature = "cuda")]
        Device::Cuda(be) => be.describe().contains("emulator"),
        #[allow(unreachable_patterns)]
        _ => false,
    }
}

/// GPU time of `f` on `dev` (see [`Device::gpu_time`]).
pub fn gpu_time(dev: &Device, f: &mut dyn FnMut() -> Result<()>) -> Duration {
    dev.gpu_time(f)
        .map(|(_, d)| d)
        .unwrap_or_else(|e| panic!("benchmark launch failed: {e}"))
}

/// Register one benchmark timed on the device: `bytes` moved per call gives GB/s.
pub fn bench_gpu(
    g: &mut BenchmarkGroup<'_, criterion::measurement::WallTime>,
    id: String,
    dev: &Device,
    bytes: u64,
    mut f: impl FnMut() -> Result<()>,
) {
    g.throughput(Throughput::Bytes(bytes));
    // warm-up: pipelines and modules are built on first use
    f().unwrap_or_else(|e| panic!("{id}: {e}"));
    g.bench_function(id, |b| {
        b.iter_custom(|iters| {
            let mut total = Duration::ZERO;
            for _ in 0..iters {
                total += gpu_time(dev, &mut f);
            }
            total
        })
    });
}
