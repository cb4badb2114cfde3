//! Backend plumbing: device selection, buffers, pipeline/module caches, launches, timing.
//! Nothing here knows about a particular operation.

pub(crate) mod cpu;
pub use cpu::{HostFlags, HostFloats};
#[cfg(feature = "cuda")]
pub mod cuda;
#[cfg(feature = "wgpu")]
pub mod wgpu;

/// The bound on a context's blocking waits (`set_wait_timeout`), changeable while the context
/// is shared between threads: nanoseconds, 0 for none.
#[cfg(any(feature = "cuda", feature = "wgpu"))]
#[derive(Debug, Default)]
pub(crate) struct WaitBound(std::sync::atomic::AtomicU64);

#[cfg(any(feature = "cuda", feature = "wgpu"))]
impl WaitBound {
    pub(crate) fn new(d: Option<std::time::Duration>) -> Self {
        let b = WaitBound::default();
        b.set(d);
        b
    }
    pub(crate) fn set(&self, d: Option<std::time::Duration>) {
        let ns = d.map_or(0, |d| d.as_nanos().clamp(1, u64::MAX as u128) as u64);
        self.0.store(ns, std::sync::atomic::Ordering::Relaxed);
    }
    pub(crate) fn get(&self) -> Option<std::time::Duration> {
        match self.0.load(std::sync::atomic::Ordering::Relaxed) {
            0 => None,
            ns => Some(std::time::Duration::from_nanos(ns)),
        }
    }
}
