//! CUDA plumbing shared by every CUDA kernel: opening a device (CUDA is loaded at run time, so
//! the crate builds and runs without it), the module cache (PTX compiled at build time by nvcc
//! for sm_80 / sm_90, or the embedded sources compiled by NVRTC), device tensors
//! ([`CuTensor`], [`CuRef`]), uploads, downloads, launches and event timing.

use crate::error::{Error, Result};
use crate::tensor::{DType, Tensor};
use cudarc::driver::{
    CudaContext, CudaFunction, CudaModule, CudaSlice, CudaStream, CudaView, DeviceSlice,
    LaunchArgs, LaunchConfig, PushKernelArg,
};
use half::{bf16, f16};
use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

mod modules {
    include!(concat!(env!("OUT_DIR"), "/kernels.rs"));
}

const BACKEND: &str = "cuda";

fn drv(e: cudarc::driver::DriverError) -> Error {
    let s = format!("{e:?}");
    if s.contains("OUT_OF_MEMORY") {
        Error::OutOfMemory {
            backend: BACKEND,
            what: s,
        }
    } else {
        Error::Device {
            backend: BACKEND,
            what: s,
        }
    }
}

/// Why no CUDA device can be used here, or `Ok(n)` with the number of devices.
pub fn device_count() -> Result<usize> {
    // SAFETY: probing for the driver library only opens it with libloading; no CUDA call is
    // made unless it is present, so a machine without CUDA never reaches a panicking path.
    #[cfg(not(feature = "candle-cuda"))]
    let present = unsafe { cudarc::driver::sys::is_culib_present() };
    // With candle's CUDA build, cudarc links libcuda: a process that started has it.
    #[cfg(feature = "candle-cuda")]
    let present = true;
    if !present {
        return Err(Error::NoDevice {
            backend: BACKEND,
            reason: "the CUDA driver library (libcuda.so) is not installed".into(),
        });
    }
    let n = CudaContext::device_count().map_err(drv)?;
    if n <= 0 {
        return Err(Error::NoDevice {
            backend: BACKEND,
            reason: "the CUDA driver reports no device".into(),
        });
    }
    Ok(n as usize)
}

/// A CUDA device with linrec's module cache and the stream every launch goes to.
pub struct CudaBackend {
    /// The context.
    pub ctx: Arc<CudaContext>,
    /// The stream linrec launches on (the context's default stream unless built with
    /// [`CudaBackend::from_stream`]).
    pub stream: Arc<CudaStream>,
    name: String,
    arch: (i32, i32),
    modules: Mutex<HashMap<&'static str, Arc<CudaModule>>>,
    /// Kernel time accumulated while [`CudaBackend::gpu_time`] runs (milliseconds).
    timer: Mutex<Option<f64>>,
    /// The bound on blocking waits (`set_wait_timeout`).
    wait_timeout: crate::runtime::WaitBound,
}

impl std::fmt::Debug for CudaBackend {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.describe())
    }
}

impl CudaBackend {
    /// Open device `ordinal`. Returns [`Error::NoDevice`] (never panics) where there is no
    /// driver or no device.
    pub fn new(ordinal: usize) -> Result<Arc<Self>> {
        let n = device_count()?;
        if ordinal >= n {
            return Err(Error::value("ordinal", format!("< {n}"), ordinal));
        }
        let ctx = CudaContext::new(ordinal).map_err(drv)?;
        let stream = ctx.default_stream();
        Self::from_stream(stream)
    }

    /// Use a caller's stream (for example a training framework's), so launches are ordered
    /// with its work.
    pub fn from_stream(stream: Arc<CudaStream>) -> Result<Arc<Self>> {
        let ctx = stream.context().clone();
        let name = ctx.name().map_err(drv)?;
        let arch = ctx.compute_capability().map_err(drv)?;
        Ok(Arc::new(CudaBackend {
            ctx,
            stream,
            name,
            arch,
            modules: Mutex::new(HashMap::new()),
            timer: Mutex::new(None),
            wait_timeout: crate::runtime::WaitBound::new(None),
        }))
    }

    /// `name (sm_XY)`.
    pub fn describe(&self) -> String {
        format!("{} (sm_{}{})", self.name, self.arch.0, self.arch.1)
    }

    /// Compute capability `(major, minor)`.
    pub fn arch(&self) -> (i32, i32) {
        self.arch
    }

    /// The kernel `func` of module `module` (a path under `kernels/`), loading the module once:
    /// the build-time PTX for this architecture when there is one, else NVRTC.
    pub(crate) fn function(&self, module: &'static str, func: &str) -> Result<CudaFunction> {
        let mut cache = self.modules.lock().unwrap_or_else(PoisonError::into_inner);
        let m = match cache.get(module) {
            Some(m) => m.clone(),
            None => {
                let (_, src, p80, p90) = modules::MODULES
                    .iter()
                    .find(|(n, ..)| *n == module)
                    .ok_or_else(|| Error::unsupported(BACKEND, format!("no module {module}")))?;
                let prebuilt = match self.arch {
                    (9.., _) => p90.or(*p80),
                    (8, _) => *p80,
                    _ => None,
                };
                let ptx = match prebuilt {
                    Some(p) => cudarc::nvrtc::Ptx::from_src(p),
                    None => {
                        if self.arch.0 < 8 {
                            return Err(Error::unsupported(
                                BACKEND,
                                format!(
                                    "compute capability {}.{} (needs 8.0+)",
                                    self.arch.0, self.arch.1
                                ),
                            ));
                        }
                        // SAFETY: only opens the library with libloading to see whether it
                        // exists; cudarc panics on first use where it does not.
                        if !unsafe { cudarc::nvrtc::sys::is_culib_present() } {
                            return Err(Error::unsupported(
                                BACKEND,
                                format!(
                                    "{module}: this build has no PTX for sm_{}{} and the NVRTC \
                                     library (libnvrtc.so) is not installed to compile it",
                                    self.arch.0, self.arch.1
                                ),
                            ));
                        }
                        let arch: &'static str = if self.arch.0 >= 9 { "sm_90" } else { "sm_80" };
                        cudarc::nvrtc::compile_ptx_with_opts(
                            src,
                            cudarc::nvrtc::CompileOptions {
                                arch: Some(arch),
                                options: vec!["-std=c++17".into()],
                                ..Default::default()
                            },
                        )
                        .map_err(|e| Error::Device {
                            backend: BACKEND,
                            what: format!("NVRTC on {module}: {e:?}"),
                        })?
                    }
                };
                let m = self.ctx.load_module(ptx).map_err(drv)?;
                cache.insert(module, m.clone());
                m
            }
        };
        m.load_function(func).map_err(drv)
    }

    /// Like [`CudaBackend::function`], for a kernel launched with `smem` bytes of dynamic shared
    /// memory: above the default 48 KiB it raises the kernel's
    /// `CU_FUNC_ATTRIBUTE_MAX_DYNAMIC_SHARED_SIZE_BYTES` (once per call; cheap), and it returns a
    /// [`Error::Limit`] when the device cannot give that much to one block.
    pub(crate) fn function_smem(
        &self,
        module: &'static str,
        func: &str,
        smem: usize,
    ) -> Result<CudaFunction> {
        use cudarc::driver::sys::{CUdevice_attribute, CUfunction_attribute};
        let f = self.function(module, func)?;
        if smem > 48 * 1024 {
            let max = self
                .ctx
                .attribute(
                    CUdevice_attribute::CU_DEVICE_ATTRIBUTE_MAX_SHARED_MEMORY_PER_BLOCK_OPTIN,
                )
                .map_err(drv)?;
            if smem > max.max(0) as usize {
                return Err(Error::Limit {
                    backend: BACKEND,
                    what: format!(
                        "{func} needs {smem} bytes of shared memory per block; the device allows {max}"
                    ),
                });
            }
            f.set_attribute(
                CUfunction_attribute::CU_FUNC_ATTRIBUTE_MAX_DYNAMIC_SHARED_SIZE_BYTES,
                smem as i32,
            )
            .map_err(drv)?;
        }
        Ok(f)
    }

    /// A zero-filled device tensor.
    pub fn zeros(&self, shape: &[usize], dtype: DType) -> Result<CuTensor> {
        let n: usize = shape.iter().product::<usize>().max(1);
        let s = &self.stream;
        let data = match dtype {
            DType::F32 => CuData::F32(s.alloc_zeros(n).map_err(drv)?),
            DType::F16 => CuData::F16(s.alloc_zeros(n).map_err(drv)?),
            DType::BF16 => CuData::BF16(s.alloc_zeros(n).map_err(drv)?),
            DType::U8 => CuData::U8(s.alloc_zeros(n).map_err(drv)?),
            DType::U32 => CuData::U32(s.alloc_zeros(n).map_err(drv)?),
        };
        Ok(CuTensor {
            data,
            shape: shape.to_vec(),
        })
    }

    /// Copy a host tensor to the device (`u32` flags are narrowed to `u8`, as kernels read them).
    pub fn upload(&self, t: &Tensor) -> Result<CuTensor> {
        let s = &self.stream;
        use crate::tensor::TensorData as D;
        let data = match t.data() {
            D::F32(v) => CuData::F32(s.clone_htod(v).map_err(drv)?),
            D::F16(v) => CuData::F16(s.clone_htod(v).map_err(drv)?),
            D::BF16(v) => CuData::BF16(s.clone_htod(v).map_err(drv)?),
            D::U8(v) => CuData::U8(s.clone_htod(v).map_err(drv)?),
            D::U32(_) => CuData::U8(s.clone_htod(&t.to_flags()).map_err(drv)?),
        };
        Ok(CuTensor {
            data,
            shape: t.shape().to_vec(),
        })
    }

    /// Copy a device tensor back to the host (after the stream's earlier work, within the
    /// wait timeout if one is set). A tensor of another device is an [`Error::Value`] naming
    /// `g` (see [`CuRef`]).
    pub fn download(&self, g: &CuTensor) -> Result<Tensor> {
        self.check_owned("g", &g.as_ref())?;
        self.synchronize()?;
        let s = &self.stream;
        let n = g.numel();
        match &g.data {
            CuData::F32(d) => {
                Tensor::new(g.shape.clone(), s.clone_dtoh(&d.slice(..n)).map_err(drv)?)
            }
            CuData::F16(d) => {
                Tensor::new(g.shape.clone(), s.clone_dtoh(&d.slice(..n)).map_err(drv)?)
            }
            CuData::BF16(d) => {
                Tensor::new(g.shape.clone(), s.clone_dtoh(&d.slice(..n)).map_err(drv)?)
            }
            CuData::U8(d) => {
                Tensor::new(g.shape.clone(), s.clone_dtoh(&d.slice(..n)).map_err(drv)?)
            }
            CuData::U32(d) => {
                Tensor::new(g.shape.clone(), s.clone_dtoh(&d.slice(..n)).map_err(drv)?)
            }
        }
    }

    /// Block until the stream is idle, or return [`Error::Timeout`] once the wait timeout
    /// (if any, [`set_wait_timeout`](Self::set_wait_timeout)) has passed; the work then goes
    /// on and a later wait can collect it.
    pub fn synchronize(&self) -> Result<()> {
        let Some(timeout) = self.wait_timeout() else {
            return self.stream.synchronize().map_err(drv);
        };
        let t0 = std::time::Instant::now();
        let done = self
            .stream
            .record_event(Some(
                cudarc::driver::sys::CUevent_flags::CU_EVENT_DISABLE_TIMING,
            ))
            .map_err(drv)?;
        let mut nap = Duration::from_micros(5);
        while !done.is_complete() {
            if t0.elapsed() >= timeout {
                return Err(Error::Timeout {
                    backend: BACKEND,
                    what: format!(
                        "waiting for the stream on {} took longer than {timeout:?}",
                        self.describe()
                    ),
                });
            }
            std::thread::sleep(nap);
            nap = (nap * 2).min(Duration::from_millis(1));
        }
        Ok(())
    }

    /// Bound every later blocking wait of this backend (downloads,
    /// [`synchronize`](Self::synchronize)) to `timeout`, or lift the bound with `None`. A wait
    /// that runs out returns [`Error::Timeout`]; the backend stays usable.
    pub fn set_wait_timeout(&self, timeout: Option<Duration>) {
        self.wait_timeout.set(timeout);
    }

    /// The bound on blocking waits, if any.
    pub fn wait_timeout(&self) -> Option<Duration> {
        self.wait_timeout.get()
    }

    /// Run `f` and return its result with the GPU time of the kernels it launched (events
    /// recorded around each launch; copies and allocations are not counted).
    pub fn gpu_time<R>(&self, f: impl FnOnce() -> Result<R>) -> Result<(R, Duration)> {
        *self.timer.lock().unwrap_or_else(PoisonError::into_inner) = Some(0.0);
        let r = f();
        let ms = self
            .timer
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .take()
            .unwrap_or(0.0);
        Ok((r?, Duration::from_secs_f64(ms / 1e3)))
    }

    /// Device time of one device-to-device copy of `bytes` bytes, rounded up to 4 (CUDA events
    /// around a `cuMemcpyDtoD` on this backend's stream): the reference bandwidth memory-bound
    /// kernels are compared with (a copy moves twice its bytes: each read once and written
    /// once). Returns the bytes copied and the time.
    pub fn time_copy(&self, bytes: usize) -> Result<(usize, Duration)> {
        let n = bytes.div_ceil(4).max(1);
        let src = self.stream.alloc_zeros::<f32>(n).map_err(drv)?;
        let mut dst = self.stream.alloc_zeros::<f32>(n).map_err(drv)?;
        let flags = Some(cudarc::driver::sys::CUevent_flags::CU_EVENT_DEFAULT);
        let a = self.stream.record_event(flags).map_err(drv)?;
        self.stream.memcpy_dtod(&src, &mut dst).map_err(drv)?;
        let b = self.stream.record_event(flags).map_err(drv)?;
        b.synchronize().map_err(drv)?;
        let ms = a.elapsed_ms(&b).map_err(drv)? as f64;
        Ok((4 * n, Duration::from_secs_f64(ms / 1e3)))
    }

    /// `Ok` when the view `r`, passed as argument `arg`, is memory of this backend's CUDA
    /// context, else an [`Error::Value`] naming `arg`: memory of another device (or of another
    /// context) is refused before anything is launched. Two backends on one ordinal share the
    /// device's primary context, so they accept each other's buffers. Costs a pointer compare.
    pub(crate) fn check_owned(&self, arg: &'static str, r: &CuRef<'_>) -> Result<()> {
        let theirs = r.context();
        if Arc::ptr_eq(theirs, &self.ctx) || theirs.cu_ctx() == self.ctx.cu_ctx() {
            return Ok(());
        }
        let mine = self.ctx.ordinal();
        let found = if theirs.ordinal() == mine {
            format!("memory of another CUDA context on device {mine}")
        } else {
            format!("memory of CUDA device {}", theirs.ordinal())
        };
        Err(Error::value(
            arg,
            format!(
                "memory of this backend's device (CUDA device {mine}, {})",
                self.describe()
            ),
            found,
        ))
    }

    /// [`check_owned`](Self::check_owned) on every buffer of a CUDA entry point's arguments,
    /// named as in the argument struct: every CUDA entry point calls this (after the shape
    /// checks), so no op launches on another device's memory.
    pub(crate) fn check_args<'r>(&self, args: &impl crate::ops::Buffers<CuRef<'r>>) -> Result<()> {
        args.each_buffer(&mut |arg, r| self.check_owned(arg, r))
    }

    /// A launch configuration of `blocks` blocks (split into a 2-D grid when needed; kernels
    /// use `linear_block()` from `kernels/common.cuh`) of `threads` threads.
    pub(crate) fn grid(&self, blocks: u64, threads: u32, smem: u32) -> Result<LaunchConfig> {
        const MAX_X: u64 = (1 << 31) - 1;
        let x = blocks.clamp(1, MAX_X);
        let y = blocks.div_ceil(x).max(1);
        if y > 65535 {
            return Err(Error::Limit {
                backend: BACKEND,
                what: format!("{blocks} blocks exceed the grid limit"),
            });
        }
        Ok(LaunchConfig {
            grid_dim: (x as u32, y as u32, 1),
            block_dim: (threads, 1, 1),
            shared_mem_bytes: smem,
        })
    }

    /// Submit a launch built with `self.stream.launch_builder(..)`.
    ///
    /// # Safety
    /// The parameters pushed on `args` must match the kernel's signature, and `cfg` must only
    /// make the kernel touch memory inside the buffers it was given; every call site states
    /// why in a `SAFETY:` comment.
    pub(crate) unsafe fn run(&self, mut args: LaunchArgs<'_>, cfg: LaunchConfig) -> Result<()> {
        let timing = self
            .timer
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .is_some();
        if timing {
            args.record_kernel_launch(cudarc::driver::sys::CUevent_flags::CU_EVENT_DEFAULT);
        }
        // SAFETY: forwarded to the caller's contract above.
        let events = unsafe { args.launch(cfg) }.map_err(drv)?;
        if let Some((a, b)) = events {
            b.synchronize().map_err(drv)?;
            let ms = a.elapsed_ms(&b).map_err(drv)? as f64;
            if let Some(t) = self
                .timer
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .as_mut()
            {
                *t += ms;
            }
        }
        Ok(())
    }
}

/// Typed storage of a [`CuTensor`].
#[derive(Debug)]
pub enum CuData {
    /// f32.
    F32(CudaSlice<f32>),
    /// f16.
    F16(CudaSlice<f16>),
    /// bf16.
    BF16(CudaSlice<bf16>),
    /// Bytes (flags).
    U8(CudaSlice<u8>),
    /// Words.
    U32(CudaSlice<u32>),
}

/// An owned device tensor.
#[derive(Debug)]
pub struct CuTensor {
    /// The storage (possibly longer than the shape needs; it is never shorter).
    pub data: CuData,
    /// The shape.
    pub shape: Vec<usize>,
}

impl CuTensor {
    /// Push this tensor as a kernel pointer parameter the kernel writes.
    pub(crate) fn push_mut<'b>(&'b mut self, b: &mut LaunchArgs<'b>) {
        match &mut self.data {
            CuData::F32(v) => b.arg(v),
            CuData::F16(v) => b.arg(v),
            CuData::BF16(v) => b.arg(v),
            CuData::U8(v) => b.arg(v),
            CuData::U32(v) => b.arg(v),
        };
    }

    /// Number of elements of the shape.
    pub fn numel(&self) -> usize {
        self.shape.iter().product()
    }

    /// Element type.
    pub fn dtype(&self) -> DType {
        match self.data {
            CuData::F32(_) => DType::F32,
            CuData::F16(_) => DType::F16,
            CuData::BF16(_) => DType::BF16,
            CuData::U8(_) => DType::U8,
            CuData::U32(_) => DType::U32,
        }
    }

    /// A view of the elements of the shape.
    pub fn as_ref(&self) -> CuRef<'_> {
        let n = self.numel();
        match &self.data {
            CuData::F32(d) => CuRef::F32(d.slice(..n)),
            CuData::F16(d) => CuRef::F16(d.slice(..n)),
            CuData::BF16(d) => CuRef::BF16(d.slice(..n)),
            CuData::U8(d) => CuRef::U8(d.slice(..n)),
            CuData::U32(d) => CuRef::U32(d.slice(..n)),
        }
    }
}

/// A borrowed view of a caller's device memory: the zero-copy argument type of the CUDA API
/// (`CuRef::from(&slice)` or `CuRef::F32(slice.slice(a..b))`).
///
/// The memory must belong to the backend's device: every CUDA entry point compares each
/// view's context ([`CuRef::context`]) with the [`CudaBackend`]'s before anything is launched,
/// and refuses memory of another device (or another context) with an [`Error::Value`] naming
/// the argument. Backends opened on the same ordinal share the device's primary context, so
/// their buffers can be mixed; a view may also belong to another stream of that context.
#[derive(Debug)]
pub enum CuRef<'a> {
    /// f32.
    F32(CudaView<'a, f32>),
    /// f16.
    F16(CudaView<'a, f16>),
    /// bf16.
    BF16(CudaView<'a, bf16>),
    /// Bytes (flags).
    U8(CudaView<'a, u8>),
    /// Words.
    U32(CudaView<'a, u32>),
}

macro_rules! curef_from {
    ($($t:ty => $v:ident),*) => {$(
        impl<'a> From<&'a CudaSlice<$t>> for CuRef<'a> {
            fn from(s: &'a CudaSlice<$t>) -> Self {
                CuRef::$v(s.as_view())
            }
        }
        impl<'a> From<CudaView<'a, $t>> for CuRef<'a> {
            fn from(s: CudaView<'a, $t>) -> Self {
                CuRef::$v(s)
            }
        }
    )*};
}
curef_from!(f32 => F32, f16 => F16, bf16 => BF16, u8 => U8, u32 => U32);

impl CuRef<'_> {
    /// Element type.
    pub fn dtype(&self) -> DType {
        match self {
            CuRef::F32(_) => DType::F32,
            CuRef::F16(_) => DType::F16,
            CuRef::BF16(_) => DType::BF16,
            CuRef::U8(_) => DType::U8,
            CuRef::U32(_) => DType::U32,
        }
    }

    /// Number of elements.
    pub fn len(&self) -> usize {
        match self {
            CuRef::F32(v) => v.len(),
            CuRef::F16(v) => v.len(),
            CuRef::BF16(v) => v.len(),
            CuRef::U8(v) => v.len(),
            CuRef::U32(v) => v.len(),
        }
    }

    /// Whether the view is empty.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The CUDA context (device) the memory belongs to.
    pub fn context(&self) -> &Arc<CudaContext> {
        match self {
            CuRef::F32(v) => DeviceSlice::stream(v).context(),
            CuRef::F16(v) => DeviceSlice::stream(v).context(),
            CuRef::BF16(v) => DeviceSlice::stream(v).context(),
            CuRef::U8(v) => DeviceSlice::stream(v).context(),
            CuRef::U32(v) => DeviceSlice::stream(v).context(),
        }
    }

    /// Push this view as a kernel pointer parameter.
    pub(crate) fn push<'b>(&'b self, b: &mut LaunchArgs<'b>) {
        match self {
            CuRef::F32(v) => b.arg(v),
            CuRef::F16(v) => b.arg(v),
            CuRef::BF16(v) => b.arg(v),
            CuRef::U8(v) => b.arg(v),
            CuRef::U32(v) => b.arg(v),
        };
    }
}

/// A null pointer parameter, for an absent optional buffer (kernels are told by a flag).
pub(crate) static NULL: u64 = 0;

/// Push an optional view, or a null pointer.
pub(crate) fn push_opt<'b>(b: &mut LaunchArgs<'b>, r: Option<&'b CuRef<'_>>) {
    match r {
        Some(r) => r.push(b),
        None => {
            b.arg(&NULL);
        }
    }
}

impl crate::ops::ArgBuf for CuRef<'_> {
    const FLAG_DTYPES: &'static [DType] = &[DType::U8];
    fn dtype(&self) -> Option<DType> {
        Some(CuRef::dtype(self))
    }
    fn shape(&self) -> Option<&[usize]> {
        None
    }
    fn numel(&self) -> usize {
        self.len()
    }
}

/// A problem size as the `int` kernels take, or a Limit error.
pub(crate) fn int(arg: &'static str, v: usize) -> Result<i32> {
    i32::try_from(v).map_err(|_| Error::Limit {
        backend: BACKEND,
        what: format!("{arg} = {v} exceeds the kernels' 32-bit sizes"),
    })
}

impl CuRef<'_> {
    /// A second view of the same memory (views are not `Clone`).
    pub fn reborrow(&self) -> CuRef<'_> {
        match self {
            CuRef::F32(v) => CuRef::F32(v.slice(..)),
            CuRef::F16(v) => CuRef::F16(v.slice(..)),
            CuRef::BF16(v) => CuRef::BF16(v.slice(..)),
            CuRef::U8(v) => CuRef::U8(v.slice(..)),
            CuRef::U32(v) => CuRef::U32(v.slice(..)),
        }
    }
}
