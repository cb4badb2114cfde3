//! wgpu plumbing shared by every WGSL kernel: adapter and device selection, the shader and
//! pipeline cache, device buffers ([`GpuTensor`], [`GpuRef`]), uploads and downloads, the
//! launch helper that binds buffers at any element offset and splits large grids, and GPU
//! timing with timestamp queries. Nothing here is specific to one operation.

use crate::error::{Error, Result};
use crate::tensor::{DType, Tensor};
use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;
use wgpu::util::DeviceExt;

mod sources {
    include!(concat!(env!("OUT_DIR"), "/shaders.rs"));
}

const BACKEND: &str = "wgpu";

/// How to pick and configure the wgpu device.
#[derive(Debug, Clone, Default)]
pub struct WgpuOptions {
    /// Only consider CPU (software) adapters such as lavapipe.
    pub force_fallback_adapter: bool,
    /// Cap `max_storage_buffer_binding_size` below the adapter's (to test problem splitting).
    pub max_storage_buffer_binding_size: Option<u64>,
    /// Cap `max_compute_workgroups_per_dimension` below the adapter's (to test grid splitting).
    pub max_compute_workgroups_per_dimension: Option<u32>,
    /// Do not enable `SUBGROUP` even if the adapter has it (forces the workgroup-memory paths).
    pub disable_subgroups: bool,
    /// Do not enable `SHADER_F16` even if the adapter has it.
    pub disable_f16: bool,
    /// Request WebGPU's default limits (8 storage buffers per shader stage, 16 KiB of workgroup
    /// memory, 256 invocations per workgroup, 128 MiB bindings, 65535 workgroups per dimension:
    /// what every WebGPU implementation guarantees) instead of everything the adapter offers,
    /// so the kernels pick the variants that fit any GPU. Where the adapter offers less than a
    /// default, its own value is kept.
    pub webgpu_default_limits: bool,
    /// Longest a blocking wait for the device (a download, [`WgpuContext::wait`]) may take
    /// before it returns [`Error::Timeout`]; `None` waits as long as it takes. Can be changed
    /// later with [`WgpuContext::set_wait_timeout`].
    pub wait_timeout: Option<Duration>,
}

impl WgpuOptions {
    /// The options the environment asks for: `LINREC_WGPU_LIMITS=webgpu` sets
    /// [`webgpu_default_limits`](Self::webgpu_default_limits) (`adapter`, the default, keeps
    /// the adapter's limits). The adapter itself is chosen by `LINREC_WGPU_ADAPTER` and wgpu's
    /// own `WGPU_BACKEND` (`vulkan`, `metal`, `dx12`, `gl`).
    pub fn from_env() -> Result<Self> {
        let webgpu_default_limits = match std::env::var("LINREC_WGPU_LIMITS").as_deref() {
            Err(_) | Ok("") | Ok("adapter") => false,
            Ok("webgpu") | Ok("default") => true,
            Ok(other) => {
                return Err(Error::value(
                    "LINREC_WGPU_LIMITS",
                    "`adapter` or `webgpu`",
                    format!("{other:?}"),
                ))
            }
        };
        Ok(WgpuOptions {
            webgpu_default_limits,
            ..Default::default()
        })
    }
}

struct Timer {
    queries: wgpu::QuerySet,
    resolve: wgpu::Buffer,
    readback: wgpu::Buffer,
    total_ns: f64,
}

/// A wgpu device with linrec's caches. Cheap to share behind an `Arc`.
pub struct WgpuContext {
    /// The device.
    pub device: wgpu::Device,
    /// Its queue.
    pub queue: wgpu::Queue,
    /// What the adapter says about itself.
    pub info: wgpu::AdapterInfo,
    /// Features enabled on the device.
    pub features: wgpu::Features,
    /// Limits the device was created with.
    pub limits: wgpu::Limits,
    pipelines: Mutex<HashMap<String, Arc<wgpu::ComputePipeline>>>,
    dummy: wgpu::Buffer,
    timer: Mutex<Option<Timer>>,
    /// Buffers known to belong to this device (hashes of their wgpu identity).
    owned: Mutex<std::collections::HashSet<u64>>,
    /// A one-binding layout used to ask wgpu whether a caller's buffer is this device's.
    probe_layout: wgpu::BindGroupLayout,
    /// [`WgpuOptions::wait_timeout`], changeable with `set_wait_timeout`.
    wait_timeout: crate::runtime::WaitBound,
}

/// The one wgpu instance of the process: every context linrec opens comes from it, so a
/// buffer of another linrec context is recognised as another device's (wgpu identifies
/// resources per instance).
fn instance() -> &'static wgpu::Instance {
    static INSTANCE: std::sync::OnceLock<wgpu::Instance> = std::sync::OnceLock::new();
    INSTANCE.get_or_init(|| {
        wgpu::Instance::new(wgpu::InstanceDescriptor::new_without_display_handle_from_env())
    })
}

thread_local! {
    /// The names this thread's latest argument checks gave each buffer (a short list), so a
    /// buffer refused later, when it is bound, is named as the caller's argument.
    static ARG_NAMES: std::cell::RefCell<Vec<(u64, &'static str)>> =
        const { std::cell::RefCell::new(Vec::new()) };
}

fn note_arg(buffer: &wgpu::Buffer, arg: &'static str) {
    ARG_NAMES.with_borrow_mut(|v| {
        if v.len() >= 64 {
            v.remove(0);
        }
        v.push((buffer_key(buffer), arg));
    });
}

/// The argument name a buffer was last checked under on this thread, or `buffer`.
fn arg_name(buffer: &wgpu::Buffer) -> &'static str {
    let key = buffer_key(buffer);
    ARG_NAMES.with_borrow(|v| {
        v.iter()
            .rev()
            .find(|(k, _)| *k == key)
            .map_or("buffer", |(_, a)| a)
    })
}

/// wgpu's GL backend has one GL context per adapter, which a thread may hold for at most 6 s
/// while another waits for it (wgpu then panics): linrec serialises its own work on GL devices
/// through this lock (re-entrant per thread), so parallel callers queue here instead.
static GL_LOCK: Mutex<()> = Mutex::new(());

thread_local! {
    static GL_HELD: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
}

/// Holds linrec's GL lock (see [`WgpuContext::gl_guard`]) for one GL operation (nothing on other backends or when this thread
/// already holds it).
pub struct GlGuard(Option<std::sync::MutexGuard<'static, ()>>);

impl Drop for GlGuard {
    fn drop(&mut self) {
        if self.0.take().is_some() {
            GL_HELD.with(|h| h.set(false));
        }
    }
}

/// The size of a buffer (or binding) holding `bytes`: a multiple of 4, at least 4.
pub(crate) fn buffer_size(bytes: u64) -> u64 {
    bytes.div_ceil(4).max(1) * 4
}

/// Where this thread's op results go: `(shape, dtype, bytes) -> (buffer, byte offset)`, or
/// `None` for linrec's own buffers (see [`with_results`]).
type Placer = Box<dyn FnMut(&[usize], DType, u64) -> Option<(wgpu::Buffer, u64)>>;

thread_local! {
    static PLACER: std::cell::RefCell<Option<Placer>> = const { std::cell::RefCell::new(None) };
}

fn place_result(shape: &[usize], dtype: DType, bytes: u64) -> Option<(wgpu::Buffer, u64)> {
    PLACER.with(|p| p.borrow_mut().as_mut().and_then(|f| f(shape, dtype, bytes)))
}

/// Run `f` with the results of the wgpu ops it calls on this thread placed by `placer`
/// (given each result's shape, dtype and size in bytes, a multiple of 4: a buffer of the
/// op's device with `STORAGE | COPY_DST` usage and a byte offset aligned for a storage
/// binding, or `None` for a buffer of linrec's own). Scratch buffers stay linrec's. The
/// placement ends with `f`, also when it unwinds. Used by the burn adapter, whose tensors
/// then hold the results the kernels wrote.
#[cfg(feature = "burn")]
pub(crate) fn with_results<R>(
    placer: impl FnMut(&[usize], DType, u64) -> Option<(wgpu::Buffer, u64)> + 'static,
    f: impl FnOnce() -> R,
) -> R {
    struct Restore(Option<Placer>);
    impl Drop for Restore {
        fn drop(&mut self) {
            let prev = self.0.take();
            PLACER.with(|p| *p.borrow_mut() = prev);
        }
    }
    let prev = PLACER.with(|p| p.borrow_mut().replace(Box::new(placer)));
    let _restore = Restore(prev);
    f()
}

/// The adapters of [`instance`], enumerated once: contexts on one adapter share it (on wgpu's
/// GL backend the adapter owns the GL context, whose lock then serialises every device on it).
async fn adapters() -> &'static [wgpu::Adapter] {
    static ADAPTERS: std::sync::OnceLock<Vec<wgpu::Adapter>> = std::sync::OnceLock::new();
    if let Some(a) = ADAPTERS.get() {
        return a;
    }
    let found = instance().enumerate_adapters(wgpu::Backends::all()).await;
    ADAPTERS.get_or_init(|| found)
}

/// A buffer's identity as a number (wgpu compares and hashes buffers by identity).
fn buffer_key(b: &wgpu::Buffer) -> u64 {
    use std::hash::{Hash, Hasher};
    let mut h = std::collections::hash_map::DefaultHasher::new();
    b.hash(&mut h);
    h.finish()
}

impl std::fmt::Debug for WgpuContext {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.describe())
    }
}

fn device_rank(t: wgpu::DeviceType) -> u8 {
    match t {
        wgpu::DeviceType::DiscreteGpu => 0,
        wgpu::DeviceType::IntegratedGpu => 1,
        wgpu::DeviceType::VirtualGpu => 2,
        wgpu::DeviceType::Other => 3,
        wgpu::DeviceType::Cpu => 4,
    }
}

impl WgpuContext {
    /// The best adapter available: a real GPU if there is one, else a CPU adapter (lavapipe).
    /// `LINREC_WGPU_ADAPTER=<substring>` picks an adapter by name instead, and
    /// `LINREC_WGPU_LIMITS=webgpu` requests WebGPU's default limits (see
    /// [`WgpuOptions::from_env`]).
    pub fn new() -> Result<Arc<Self>> {
        Self::with_options(&WgpuOptions::from_env()?)
    }

    /// Open a device with explicit options.
    pub fn with_options(opts: &WgpuOptions) -> Result<Arc<Self>> {
        pollster::block_on(Self::open(opts))
    }

    async fn open(opts: &WgpuOptions) -> Result<Arc<Self>> {
        // (opening may touch a GL context other threads use: serialised like GL work)
        let _gl = if GL_HELD.with(|h| h.get()) {
            GlGuard(None)
        } else {
            let g = GL_LOCK.lock().unwrap_or_else(PoisonError::into_inner);
            GL_HELD.with(|h| h.set(true));
            GlGuard(Some(g))
        };
        let mut adapters = adapters().await.to_vec();
        if opts.force_fallback_adapter {
            adapters.retain(|a| a.get_info().device_type == wgpu::DeviceType::Cpu);
        }
        if let Ok(want) = std::env::var("LINREC_WGPU_ADAPTER") {
            let want = want.to_lowercase();
            adapters.retain(|a| a.get_info().name.to_lowercase().contains(&want));
        }
        // Prefer real GPUs, then Vulkan/Metal/DX12 over GL.
        adapters.sort_by_key(|a| {
            let i = a.get_info();
            (device_rank(i.device_type), i.backend == wgpu::Backend::Gl)
        });
        let adapter = adapters.into_iter().next().ok_or_else(|| Error::NoDevice {
            backend: BACKEND,
            reason: "no wgpu adapter found (install a Vulkan driver, e.g. `apt-get install mesa-vulkan-drivers` for lavapipe)".into(),
        })?;
        let info = adapter.get_info();
        let available = adapter.features();
        let mut features = wgpu::Features::empty();
        for (f, off) in [
            (wgpu::Features::SUBGROUP, opts.disable_subgroups),
            (wgpu::Features::SHADER_F16, opts.disable_f16),
            (wgpu::Features::TIMESTAMP_QUERY, false),
        ] {
            if available.contains(f) && !off {
                features |= f;
            }
        }
        let mut limits = if opts.webgpu_default_limits {
            wgpu::Limits::defaults().or_worse_values_from(&adapter.limits())
        } else {
            adapter.limits()
        };
        if let Some(m) = opts.max_storage_buffer_binding_size {
            limits.max_storage_buffer_binding_size = limits.max_storage_buffer_binding_size.min(m);
        }
        if let Some(m) = opts.max_compute_workgroups_per_dimension {
            limits.max_compute_workgroups_per_dimension =
                limits.max_compute_workgroups_per_dimension.min(m);
        }
        let (device, queue) = adapter
            .request_device(&wgpu::DeviceDescriptor {
                label: Some("linrec"),
                required_features: features,
                required_limits: limits.clone(),
                ..Default::default()
            })
            .await
            .map_err(|e| Error::NoDevice {
                backend: BACKEND,
                reason: format!("request_device on {}: {e}", info.name),
            })?;
        // Errors are captured by error scopes around every operation; anything that escapes is
        // reported here instead of aborting the process.
        device.on_uncaptured_error(Arc::new(|e| {
            eprintln!("linrec: uncaptured wgpu error: {e}")
        }));
        Ok(Self::assemble(
            device,
            queue,
            info,
            features,
            limits,
            opts.wait_timeout,
        ))
    }

    /// A context on a device and queue that another library opened (burn, an application's
    /// renderer): linrec records and submits its work on `queue`, so it is ordered after
    /// whatever was submitted there before and before what is submitted after. The features
    /// and limits are the device's own; linrec uses subgroups and f16 where the device has
    /// them enabled. The device's uncaptured-error handler is left as it is.
    pub fn from_device(
        device: wgpu::Device,
        queue: wgpu::Queue,
        info: wgpu::AdapterInfo,
    ) -> Arc<Self> {
        let (features, limits) = (device.features(), device.limits());
        Self::assemble(device, queue, info, features, limits, None)
    }

    fn assemble(
        device: wgpu::Device,
        queue: wgpu::Queue,
        info: wgpu::AdapterInfo,
        features: wgpu::Features,
        limits: wgpu::Limits,
        wait_timeout: Option<Duration>,
    ) -> Arc<Self> {
        let dummy = device.create_buffer(&wgpu::BufferDescriptor {
            label: Some("linrec dummy"),
            size: 16,
            usage: wgpu::BufferUsages::STORAGE,
            mapped_at_creation: false,
        });
        let probe_layout = device.create_bind_group_layout(&wgpu::BindGroupLayoutDescriptor {
            label: Some("linrec device probe"),
            entries: &[wgpu::BindGroupLayoutEntry {
                binding: 0,
                visibility: wgpu::ShaderStages::COMPUTE,
                ty: wgpu::BindingType::Buffer {
                    ty: wgpu::BufferBindingType::Storage { read_only: true },
                    has_dynamic_offset: false,
                    min_binding_size: None,
                },
                count: None,
            }],
        });
        Arc::new(WgpuContext {
            device,
            queue,
            info,
            features,
            limits,
            pipelines: Mutex::new(HashMap::new()),
            dummy,
            timer: Mutex::new(None),
            owned: Mutex::new(Default::default()),
            probe_layout,
            wait_timeout: crate::runtime::WaitBound::new(wait_timeout),
        })
    }

    /// `name (backend, device type)`, e.g. `llvmpipe (LLVM 15.0.6, 256 bits) (Vulkan, Cpu)`,
    /// followed by `, WebGPU default limits` when the device was opened with them (fewer than 9
    /// storage buffers per stage and at most 16 KiB of workgroup memory).
    pub fn describe(&self) -> String {
        let small = if self.small_limits() {
            ", WebGPU default limits"
        } else {
            ""
        };
        format!(
            "{} ({:?}, {:?}{small})",
            self.info.name, self.info.backend, self.info.device_type
        )
    }

    /// Whether this device offers no more than WebGPU's default storage-buffer and
    /// workgroup-memory limits.
    fn small_limits(&self) -> bool {
        let d = wgpu::Limits::defaults();
        self.limits.max_storage_buffers_per_shader_stage <= d.max_storage_buffers_per_shader_stage
            && self.limits.max_compute_workgroup_storage_size
                <= d.max_compute_workgroup_storage_size
    }

    /// How many storage buffers one kernel may bind on this device.
    pub fn max_storage_buffers(&self) -> u32 {
        self.limits.max_storage_buffers_per_shader_stage
    }

    /// How many bytes of workgroup memory one kernel may use on this device.
    pub fn max_workgroup_memory(&self) -> u32 {
        self.limits.max_compute_workgroup_storage_size
    }

    /// Whether subgroup operations are enabled on this device.
    pub fn has_subgroups(&self) -> bool {
        self.features.contains(wgpu::Features::SUBGROUP)
    }

    /// Whether `f16` in shaders is enabled on this device.
    pub fn has_f16(&self) -> bool {
        self.features.contains(wgpu::Features::SHADER_F16)
    }

    /// On wgpu's GL backend, take linrec's GL lock (re-entrant per thread) until the guard
    /// is dropped; elsewhere nothing. wgpu's GL backend shares one GL context per adapter and
    /// panics when a thread waits more than 6 s for it, so linrec runs its own GL work under
    /// this lock; hold it too while you use [`device`](Self::device) or
    /// [`queue`](Self::queue) directly on a GL device from several threads, and drop GL
    /// contexts while no other thread uses one.
    pub fn gl_guard(&self) -> GlGuard {
        if self.info.backend != wgpu::Backend::Gl || GL_HELD.with(|h| h.get()) {
            return GlGuard(None);
        }
        let g = GL_LOCK.lock().unwrap_or_else(PoisonError::into_inner);
        GL_HELD.with(|h| h.set(true));
        GlGuard(Some(g))
    }

    /// Run `f` inside validation and out-of-memory error scopes, turning what they catch into
    /// [`Error`]s.
    pub(crate) fn scoped<R>(&self, what: &str, f: impl FnOnce() -> Result<R>) -> Result<R> {
        let _gl = self.gl_guard();
        let oom = self.device.push_error_scope(wgpu::ErrorFilter::OutOfMemory);
        let val = self.device.push_error_scope(wgpu::ErrorFilter::Validation);
        let r = f();
        let v = pollster::block_on(val.pop());
        let o = pollster::block_on(oom.pop());
        if let Some(e) = o {
            return Err(Error::OutOfMemory {
                backend: BACKEND,
                what: format!("{what}: {e}"),
            });
        }
        if let Some(e) = v {
            // (a validation error's Display is "Validation Error": its description says what)
            let detail = match &e {
                wgpu::Error::Validation { description, .. } => description.trim().to_string(),
                e => e.to_string(),
            };
            return Err(Error::Device {
                backend: BACKEND,
                what: format!("{what}: {detail}"),
            });
        }
        r
    }

    // ---------------------------------------------------------------- buffers

    fn check_alloc(&self, bytes: u64, what: &str) -> Result<()> {
        if bytes > self.limits.max_buffer_size {
            return Err(Error::Limit {
                backend: BACKEND,
                what: format!(
                    "{what}: {bytes} bytes exceed max_buffer_size {}",
                    self.limits.max_buffer_size
                ),
            });
        }
        Ok(())
    }

    /// A zero-filled device tensor.
    pub fn zeros(&self, shape: &[usize], dtype: DType) -> Result<GpuTensor> {
        let n: usize = shape.iter().product();
        let bytes = buffer_size((n * dtype.size()) as u64);
        self.check_alloc(bytes, "zeros")?;
        let buffer = self.scoped("allocating a buffer", || {
            Ok(self.device.create_buffer(&wgpu::BufferDescriptor {
                label: None,
                size: bytes,
                usage: GpuTensor::USAGE,
                mapped_at_creation: false,
            }))
        })?;
        self.remember(&buffer);
        Ok(GpuTensor {
            buffer,
            offset: 0,
            shape: shape.to_vec(),
            dtype,
        })
    }

    /// A zero-filled tensor for one of an op's results: [`zeros`](Self::zeros), unless a
    /// framework adapter placed this thread's results ([`with_results`]): then a range of the
    /// framework's own buffer, cleared on the queue (a fill, as wgpu does for a new buffer), so
    /// the kernels write the result where the framework reads it and nothing is copied.
    pub(crate) fn result(&self, shape: &[usize], dtype: DType) -> Result<GpuTensor> {
        let n: usize = shape.iter().product();
        let bytes = buffer_size((n * dtype.size()) as u64);
        let Some((buffer, offset)) = place_result(shape, dtype, bytes) else {
            return self.zeros(shape, dtype);
        };
        self.scoped("clearing a result", || {
            let mut enc = self.device.create_command_encoder(&Default::default());
            enc.clear_buffer(&buffer, offset, Some(bytes));
            self.queue.submit([enc.finish()]);
            Ok(())
        })?;
        Ok(GpuTensor {
            buffer,
            offset,
            shape: shape.to_vec(),
            dtype,
        })
    }

    /// Copy a host tensor to the device (`u8` flags are widened to `u32`, as kernels read them).
    pub fn upload(&self, t: &Tensor) -> Result<GpuTensor> {
        let widened;
        let t = if t.dtype() == DType::U8 {
            widened = t.to_dtype(DType::U32);
            &widened
        } else {
            t
        };
        let mut bytes = t.as_bytes().to_vec();
        bytes.resize(buffer_size(bytes.len() as u64) as usize, 0);
        self.check_alloc(bytes.len() as u64, "upload")?;
        let buffer = self.scoped("uploading a tensor", || {
            Ok(self
                .device
                .create_buffer_init(&wgpu::util::BufferInitDescriptor {
                    label: None,
                    contents: &bytes,
                    usage: GpuTensor::USAGE,
                }))
        })?;
        self.remember(&buffer);
        Ok(GpuTensor {
            buffer,
            offset: 0,
            shape: t.shape().to_vec(),
            dtype: t.dtype(),
        })
    }

    /// Copy a device tensor back to the host.
    pub fn download(&self, g: &GpuTensor) -> Result<Tensor> {
        let bytes = self.read_bytes(&g.buffer, g.offset, g.bytes() as u64)?;
        Tensor::from_bytes(g.shape.clone(), g.dtype, &bytes[..g.bytes()])
    }

    /// Read `len` bytes at `offset` of a `COPY_SRC` buffer.
    pub fn read_bytes(&self, buffer: &wgpu::Buffer, offset: u64, len: u64) -> Result<Vec<u8>> {
        self.check_owned("buffer", buffer)?;
        let size = buffer_size(len);
        self.scoped("downloading a buffer", || {
            let staging = self.device.create_buffer(&wgpu::BufferDescriptor {
                label: Some("linrec readback"),
                size,
                usage: wgpu::BufferUsages::MAP_READ | wgpu::BufferUsages::COPY_DST,
                mapped_at_creation: false,
            });
            let mut enc = self.device.create_command_encoder(&Default::default());
            enc.copy_buffer_to_buffer(buffer, offset, &staging, 0, size);
            self.queue.submit([enc.finish()]);
            let slice = staging.slice(..);
            let (tx, rx) = std::sync::mpsc::channel();
            slice.map_async(wgpu::MapMode::Read, move |r| {
                let _ = tx.send(r);
            });
            self.wait()?;
            rx.recv()
                .map_err(|e| self.err(format!("map_async: {e}")))?
                .map_err(|e| self.err(format!("map_async: {e}")))?;
            let data = slice
                .get_mapped_range()
                .map_err(|e| self.err(format!("get_mapped_range: {e}")))?
                .to_vec();
            staging.unmap();
            Ok(data)
        })
    }

    /// Block until all submitted work has finished, or return [`Error::Timeout`] once the
    /// context's wait timeout (if any) has passed; the work then goes on and a later wait
    /// can collect it.
    pub fn wait(&self) -> Result<()> {
        let _gl = self.gl_guard();
        let timeout = self.wait_timeout();
        self.device
            .poll(wgpu::PollType::Wait {
                submission_index: None,
                timeout,
            })
            .map(|_| ())
            .map_err(|e| match e {
                wgpu::PollError::Timeout => Error::Timeout {
                    backend: BACKEND,
                    what: format!(
                        "waiting for the device ({}) took longer than {:?}",
                        self.info.name,
                        timeout.unwrap_or_default()
                    ),
                },
                e => self.err(format!("poll: {e}")),
            })
    }

    /// Bound every later blocking wait on this context (downloads, [`wait`](Self::wait)) to
    /// `timeout`, or lift the bound with `None`. A wait that runs out returns
    /// [`Error::Timeout`]; the context stays usable.
    pub fn set_wait_timeout(&self, timeout: Option<Duration>) {
        self.wait_timeout.set(timeout);
    }

    /// The bound on blocking waits, if any (see [`set_wait_timeout`](Self::set_wait_timeout)).
    pub fn wait_timeout(&self) -> Option<Duration> {
        self.wait_timeout.get()
    }

    /// `Ok` when `buffer` was created on this context's device, else a [`Error::Value`] naming
    /// `arg`: a buffer of another device is refused before anything is recorded or submitted.
    /// Buffers seen once are remembered, so the check costs a hash lookup after the first call.
    pub(crate) fn check_owned(&self, arg: &'static str, buffer: &wgpu::Buffer) -> Result<()> {
        let key = buffer_key(buffer);
        if self
            .owned
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .contains(&key)
        {
            return Ok(());
        }
        // Ask wgpu: a bind group over a buffer of another device fails validation.
        let _gl = self.gl_guard();
        let size = buffer.size().min(4);
        let scope = self.device.push_error_scope(wgpu::ErrorFilter::Validation);
        if size == 4 {
            let _ = self.device.create_bind_group(&wgpu::BindGroupDescriptor {
                label: Some("linrec device probe"),
                layout: &self.probe_layout,
                entries: &[wgpu::BindGroupEntry {
                    binding: 0,
                    resource: wgpu::BindingResource::Buffer(wgpu::BufferBinding {
                        buffer,
                        offset: 0,
                        size: std::num::NonZeroU64::new(4),
                    }),
                }],
            });
        }
        if let Some(e) = pollster::block_on(scope.pop()) {
            return Err(Error::value(
                arg,
                format!(
                    "a buffer created on this context's device ({})",
                    self.info.name
                ),
                format!("a buffer wgpu refuses on it: {e}"),
            ));
        }
        self.remember(buffer);
        Ok(())
    }

    /// Record `buffer` as this device's (bounded: the set is cleared when it grows large).
    fn remember(&self, buffer: &wgpu::Buffer) {
        let mut owned = self.owned.lock().unwrap_or_else(PoisonError::into_inner);
        if owned.len() >= 4096 {
            owned.clear();
        }
        owned.insert(buffer_key(buffer));
    }

    fn err(&self, what: String) -> Error {
        Error::Device {
            backend: BACKEND,
            what,
        }
    }

    // ---------------------------------------------------------------- pipelines

    /// The compute pipeline for `shader` (a path under `shaders/`) expanded with `defines`,
    /// entry point `entry` and pipeline-overridable `constants`; built once, then cached.
    pub(crate) fn pipeline(
        &self,
        shader: &str,
        entry: &str,
        defines: &[&str],
        constants: &[(&str, f64)],
    ) -> Result<Arc<wgpu::ComputePipeline>> {
        let key = format!("{shader}|{entry}|{defines:?}|{constants:?}");
        if let Some(p) = self
            .pipelines
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .get(&key)
        {
            return Ok(p.clone());
        }
        let lookup = |n: &str| {
            sources::SOURCES
                .iter()
                .find(|(k, _)| *k == n)
                .map(|(_, s)| s.to_string())
        };
        let exp = crate::shader_pp::expand(shader, defines, &lookup)
            .map_err(|e| self.err(format!("shader {shader}: {e}")))?;
        let needs = needs(&exp.source, entry, constants)
            .map_err(|e| self.err(format!("shader {shader} {defines:?}: {e}")))?;
        self.check_fits(&format!("{shader}:{entry} {defines:?}"), &needs)?;
        let pipeline = self.scoped(&format!("building pipeline {shader}:{entry}"), || {
            let module = self
                .device
                .create_shader_module(wgpu::ShaderModuleDescriptor {
                    label: Some(shader),
                    source: wgpu::ShaderSource::Wgsl(exp.source.clone().into()),
                });
            Ok(self
                .device
                .create_compute_pipeline(&wgpu::ComputePipelineDescriptor {
                    label: Some(shader),
                    layout: None,
                    module: &module,
                    entry_point: Some(entry),
                    compilation_options: wgpu::PipelineCompilationOptions {
                        constants,
                        zero_initialize_workgroup_memory: false,
                    },
                    cache: None,
                }))
        })?;
        self.log_pipeline(shader, entry, defines, constants);
        let p = Arc::new(pipeline);
        self.pipelines
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .insert(key, p.clone());
        Ok(p)
    }

    /// With `LINREC_WGPU_PIPELINE_LOG=<file>`, append one line per pipeline built (shader,
    /// entry point, defines, override constants, and `webgpu` or `adapter` for the limits the
    /// device was opened with), tab-separated: CI hands that file to `tools/shader-check`,
    /// which translates each kernel to SPIR-V, MSL, HLSL and GLSL with the constants it ran
    /// with. Logging is best effort: an unwritable file is ignored.
    fn log_pipeline(&self, shader: &str, entry: &str, defines: &[&str], constants: &[(&str, f64)]) {
        let Some(path) = std::env::var_os("LINREC_WGPU_PIPELINE_LOG") else {
            return;
        };
        let constants: Vec<String> = constants.iter().map(|(k, v)| format!("{k}={v}")).collect();
        let limits = if self.small_limits() {
            "webgpu"
        } else {
            "adapter"
        };
        let line = format!(
            "{shader}\t{entry}\t{}\t{}\t{limits}\n",
            defines.join(" "),
            constants.join(",")
        );
        use std::io::Write as _;
        if let Ok(mut f) = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)
        {
            let _ = f.write_all(line.as_bytes());
        }
    }

    /// A typed [`Error::Limit`] when a kernel needs more than this device offers (checked
    /// before wgpu sees the pipeline, so an adapter with small limits gets an error naming the
    /// limit rather than a validation error).
    fn check_fits(&self, what: &str, n: &KernelNeeds) -> Result<()> {
        let l = &self.limits;
        let checks = [
            (
                "max_storage_buffers_per_shader_stage",
                n.storage_buffers as u64,
                l.max_storage_buffers_per_shader_stage as u64,
            ),
            (
                "max_uniform_buffers_per_shader_stage",
                n.uniform_buffers as u64,
                l.max_uniform_buffers_per_shader_stage as u64,
            ),
            (
                "max_compute_workgroup_storage_size",
                n.workgroup_bytes,
                l.max_compute_workgroup_storage_size as u64,
            ),
            (
                "max_compute_invocations_per_workgroup",
                n.workgroup_size.iter().map(|&d| d as u64).product(),
                l.max_compute_invocations_per_workgroup as u64,
            ),
            (
                "max_compute_workgroup_size_x",
                n.workgroup_size[0] as u64,
                l.max_compute_workgroup_size_x as u64,
            ),
            (
                "max_compute_workgroup_size_y",
                n.workgroup_size[1] as u64,
                l.max_compute_workgroup_size_y as u64,
            ),
            (
                "max_compute_workgroup_size_z",
                n.workgroup_size[2] as u64,
                l.max_compute_workgroup_size_z as u64,
            ),
        ];
        for (limit, need, have) in checks {
            if need > have {
                return Err(Error::Limit {
                    backend: BACKEND,
                    what: format!(
                        "kernel {what} needs {limit} >= {need}, the device ({}) offers {have}",
                        self.info.name
                    ),
                });
            }
        }
        Ok(())
    }

    /// Bind a device range: returns a binding at an offset aligned for the device and the
    /// element offset of `r` inside it (kernels add it to their indices).
    pub(crate) fn bind<'a>(&self, r: &GpuRef<'a>) -> Result<(wgpu::BufferBinding<'a>, u32)> {
        self.check_owned(arg_name(r.buffer), r.buffer)?;
        let align = self.limits.min_storage_buffer_offset_alignment as u64;
        let start = r.offset / align * align;
        let end = r.offset + (r.len * r.dtype.size()) as u64;
        let size = buffer_size(end - start);
        if start + size > r.buffer.size() {
            return Err(Error::value(
                "buffer",
                format!("a buffer whose size is a multiple of 4 covering bytes {start}..{end}"),
                r.buffer.size(),
            ));
        }
        if size > self.limits.max_storage_buffer_binding_size {
            return Err(Error::Limit {
                backend: BACKEND,
                what: format!(
                    "a binding of {size} bytes exceeds max_storage_buffer_binding_size {}",
                    self.limits.max_storage_buffer_binding_size
                ),
            });
        }
        let elem = ((r.offset - start) / r.dtype.size() as u64) as u32;
        Ok((
            wgpu::BufferBinding {
                buffer: r.buffer,
                offset: start,
                size: std::num::NonZeroU64::new(size),
            },
            elem,
        ))
    }

    /// Bind an optional range; absent ones bind a small dummy buffer (kernels are told by a
    /// flag not to read it).
    pub(crate) fn bind_opt<'a>(
        &'a self,
        r: Option<&GpuRef<'a>>,
    ) -> Result<(wgpu::BufferBinding<'a>, u32)> {
        match r {
            Some(r) => self.bind(r),
            None => Ok((self.dummy.as_entire_buffer_binding(), 0)),
        }
    }

    /// Start recording a launch (one compute pass, any number of dispatches).
    pub(crate) fn launch(&self, label: &str) -> Launch<'_> {
        Launch {
            ctx: self,
            label: label.to_string(),
            steps: Vec::new(),
        }
    }

    /// Record on `launch` a bitwise copy of `n` 32-bit elements from element `src_at` of
    /// `src` to element `dst_at` of `dst` (`shaders/common/words.wgsl`, in the launch's
    /// compute pass): how launchers pack small read-only arguments into one binding where the
    /// device has few storage bindings per stage, and copy f32 results out of a workspace.
    pub(crate) fn copy_words<'a>(
        &self,
        launch: &mut Launch<'a>,
        src: &GpuRef<'a>,
        src_at: usize,
        dst: &GpuRef<'a>,
        dst_at: usize,
        n: usize,
    ) -> Result<()> {
        #[repr(C)]
        #[derive(Clone, Copy, bytemuck::Pod, bytemuck::Zeroable)]
        struct Params {
            n: u32,
            off_in: u32,
            off_out: u32,
            _p: u32,
        }
        let fits = |r: &GpuRef<'_>, at: usize| {
            r.dtype.size() == 4 && at.checked_add(n).is_some_and(|e| e <= r.len)
        };
        if !fits(src, src_at) || !fits(dst, dst_at) {
            return Err(self.err(format!(
                "copy_words: {n} words from {src_at} of {} {} to {dst_at} of {} {}",
                src.len, src.dtype, dst.len, dst.dtype
            )));
        }
        if n == 0 {
            return Ok(());
        }
        let pipe = self.pipeline("common/words.wgsl", "main", &[], &[])?;
        let (bi, off_in) = self.bind(src)?;
        let (bo, off_out) = self.bind(dst)?;
        let params = Params {
            n: check_u32("copied words", n)?,
            off_in: off_in + check_u32("copied words", src_at)?,
            off_out: off_out + check_u32("copied words", dst_at)?,
            _p: 0,
        };
        launch.dispatch(pipe, &params, vec![bi, bo], n.div_ceil(256) as u32)
    }

    /// The largest binding in bytes this device accepts.
    pub fn max_binding(&self) -> u64 {
        self.limits.max_storage_buffer_binding_size
    }

    // ---------------------------------------------------------------- timing

    /// Run `f` and return its result with the GPU time of every launch it made (timestamp
    /// queries at the start and end of each compute pass). Errors with `Unsupported` when the
    /// device has no `TIMESTAMP_QUERY`.
    pub fn gpu_time<R>(&self, f: impl FnOnce() -> Result<R>) -> Result<(R, Duration)> {
        if !self.features.contains(wgpu::Features::TIMESTAMP_QUERY) {
            return Err(Error::unsupported(
                BACKEND,
                "timestamp queries on this adapter",
            ));
        }
        {
            let mut t = self.timer.lock().unwrap_or_else(PoisonError::into_inner);
            let queries = self.device.create_query_set(&wgpu::QuerySetDescriptor {
                label: Some("linrec timer"),
                ty: wgpu::QueryType::Timestamp,
                count: 2,
            });
            let mk = |usage| {
                self.device.create_buffer(&wgpu::BufferDescriptor {
                    label: Some("linrec timer"),
                    size: 16,
                    usage,
                    mapped_at_creation: false,
                })
            };
            *t = Some(Timer {
                queries,
                resolve: mk(wgpu::BufferUsages::QUERY_RESOLVE | wgpu::BufferUsages::COPY_SRC),
                readback: mk(wgpu::BufferUsages::MAP_READ | wgpu::BufferUsages::COPY_DST),
                total_ns: 0.0,
            });
        }
        let r = f();
        let total = self
            .timer
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .take()
            .map_or(0.0, |t| t.total_ns);
        Ok((r?, Duration::from_nanos(total as u64)))
    }

    /// GPU time of one device-to-device copy of `bytes` (rounded up to 16, capped at the largest
    /// binding) by a plain WGSL copy kernel (`shaders/common/copy.wgsl`), the bandwidth ceiling
    /// for the WGSL kernels: it reads and writes every byte. Returns the bytes copied and the
    /// time; errors as [`WgpuContext::gpu_time`] does.
    pub fn time_copy(&self, bytes: usize) -> Result<(usize, Duration)> {
        #[repr(C)]
        #[derive(Clone, Copy, bytemuck::Pod, bytemuck::Zeroable)]
        struct Params {
            n: u32,
            pad: [u32; 3],
        }
        let cap = (self.max_binding() as usize / 16) * 16;
        let n = bytes.div_ceil(16).clamp(1, cap / 16);
        let n = check_u32("copy size", n)? as usize;
        let src = self.zeros(&[4 * n], DType::F32)?;
        let dst = self.zeros(&[4 * n], DType::F32)?;
        let pipe = self.pipeline("common/copy.wgsl", "main", &[], &[])?;
        let run = || {
            let mut l = self.launch("copy");
            let (bs, _) = self.bind(&src.as_ref())?;
            let (bd, _) = self.bind(&dst.as_ref())?;
            let params = Params {
                n: n as u32,
                pad: [0; 3],
            };
            l.dispatch(pipe.clone(), &params, vec![bs, bd], n.div_ceil(256) as u32)?;
            l.submit()
        };
        run()?; // warm-up
        let ((), t) = self.gpu_time(run)?;
        Ok((16 * n, t))
    }
}

/// One step of a [`Launch`].
struct Step<'a> {
    pipeline: Arc<wgpu::ComputePipeline>,
    entries: Vec<wgpu::BufferBinding<'a>>,
    uniform: Vec<u8>,
    groups: [u32; 2],
}

/// A recorded sequence of dispatches, submitted as one compute pass. Each dispatch sees the
/// writes of the ones before it.
pub(crate) struct Launch<'c> {
    ctx: &'c WgpuContext,
    label: String,
    steps: Vec<Step<'c>>,
}

impl<'c> Launch<'c> {
    /// Split a linear workgroup count into a 2-D grid within the per-dimension limit; kernels
    /// compute `wid.x + wid.y * nwg.x` and return when it is past their count.
    pub fn grid(&self, count: u32) -> Result<[u32; 2]> {
        let maxd = self.ctx.limits.max_compute_workgroups_per_dimension.max(1);
        let x = count.clamp(1, maxd);
        let y = count.div_ceil(x).max(1);
        if y > maxd {
            return Err(Error::Limit {
                backend: BACKEND,
                what: format!("{count} workgroups exceed {maxd} x {maxd}"),
            });
        }
        Ok([x, y])
    }

    /// Record a dispatch of `count` workgroups (linear) with a uniform block `params` at
    /// binding 0 and `buffers` at bindings 1.. in order.
    pub fn dispatch<P: bytemuck::Pod>(
        &mut self,
        pipeline: Arc<wgpu::ComputePipeline>,
        params: &P,
        buffers: Vec<wgpu::BufferBinding<'c>>,
        count: u32,
    ) -> Result<()> {
        let groups = self.grid(count)?;
        self.steps.push(Step {
            pipeline,
            entries: buffers,
            uniform: bytemuck::bytes_of(params).to_vec(),
            groups,
        });
        Ok(())
    }

    /// Encode and submit everything recorded (and time it when a timer is active).
    pub fn submit(self) -> Result<()> {
        let ctx = self.ctx;
        let label = self.label.clone();
        ctx.scoped(&label, || {
            let mut enc = ctx
                .device
                .create_command_encoder(&wgpu::CommandEncoderDescriptor {
                    label: Some(&label),
                });
            // the timer's handles are cloned out, so no lock is held while wgpu encodes and
            // submits (a panic there cannot poison it)
            let timer = ctx
                .timer
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .as_ref()
                .map(|t| (t.queries.clone(), t.resolve.clone(), t.readback.clone()));
            let uniforms: Vec<wgpu::Buffer> = self
                .steps
                .iter()
                .map(|s| {
                    let mut u = s.uniform.clone();
                    u.resize(u.len().div_ceil(16).max(1) * 16, 0);
                    ctx.device
                        .create_buffer_init(&wgpu::util::BufferInitDescriptor {
                            label: Some("linrec params"),
                            contents: &u,
                            usage: wgpu::BufferUsages::UNIFORM,
                        })
                })
                .collect();
            let groups: Vec<wgpu::BindGroup> = self
                .steps
                .iter()
                .zip(&uniforms)
                .map(|(s, u)| {
                    let mut entries = vec![wgpu::BindGroupEntry {
                        binding: 0,
                        resource: u.as_entire_binding(),
                    }];
                    for (i, b) in s.entries.iter().enumerate() {
                        entries.push(wgpu::BindGroupEntry {
                            binding: i as u32 + 1,
                            resource: wgpu::BindingResource::Buffer(b.clone()),
                        });
                    }
                    ctx.device.create_bind_group(&wgpu::BindGroupDescriptor {
                        label: None,
                        layout: &s.pipeline.get_bind_group_layout(0),
                        entries: &entries,
                    })
                })
                .collect();
            {
                let mut pass = enc.begin_compute_pass(&wgpu::ComputePassDescriptor {
                    label: Some(&label),
                    timestamp_writes: timer.as_ref().map(|t| wgpu::ComputePassTimestampWrites {
                        query_set: &t.0,
                        beginning_of_pass_write_index: Some(0),
                        end_of_pass_write_index: Some(1),
                    }),
                });
                for (s, g) in self.steps.iter().zip(&groups) {
                    pass.set_pipeline(&s.pipeline);
                    pass.set_bind_group(0, g, &[]);
                    pass.dispatch_workgroups(s.groups[0], s.groups[1], 1);
                }
            }
            if let Some((queries, resolve, readback)) = timer.as_ref() {
                enc.resolve_query_set(queries, 0..2, resolve, 0);
                enc.copy_buffer_to_buffer(resolve, 0, readback, 0, 16);
            }
            ctx.queue.submit([enc.finish()]);
            if let Some((_, _, readback)) = timer {
                let slice = readback.slice(..);
                slice.map_async(wgpu::MapMode::Read, |_| {});
                ctx.wait()?;
                let ts: Vec<u64> = {
                    let view = slice
                        .get_mapped_range()
                        .map_err(|e| ctx.err(format!("timestamps: {e}")))?;
                    bytemuck::cast_slice(&view).to_vec()
                };
                readback.unmap();
                let period = ctx.queue.get_timestamp_period() as f64;
                if let Some(t) = ctx
                    .timer
                    .lock()
                    .unwrap_or_else(PoisonError::into_inner)
                    .as_mut()
                {
                    t.total_ns += ts[1].saturating_sub(ts[0]) as f64 * period;
                }
            }
            Ok(())
        })
    }
}

/// What one kernel entry point needs from the device, as naga reads it from the expanded
/// WGSL with the pipeline's override constants applied.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct KernelNeeds {
    /// Storage buffers the entry point uses.
    pub storage_buffers: u32,
    /// Uniform buffers the entry point uses.
    pub uniform_buffers: u32,
    /// Bytes of workgroup memory the entry point uses.
    pub workgroup_bytes: u64,
    /// `@workgroup_size`.
    pub workgroup_size: [u32; 3],
}

/// Read the bindings, workgroup memory and workgroup size of `entry` in a WGSL `source`
/// whose overrides take `constants`.
pub(crate) fn needs(
    source: &str,
    entry: &str,
    constants: &[(&str, f64)],
) -> std::result::Result<KernelNeeds, String> {
    use naga::valid::{Capabilities, ValidationFlags, Validator};
    let module = naga::front::wgsl::parse_str(source).map_err(|e| e.to_string())?;
    let info = Validator::new(ValidationFlags::all(), Capabilities::all())
        .validate(&module)
        .map_err(|e| e.as_inner().to_string())?;
    let pc: naga::back::PipelineConstants =
        constants.iter().map(|(k, v)| (k.to_string(), *v)).collect();
    let (module, info) = naga::back::pipeline_constants::process_overrides(
        &module,
        &info,
        Some((naga::ShaderStage::Compute, entry)),
        &pc,
    )
    .map_err(|e| e.to_string())?;
    let (index, ep) = module
        .entry_points
        .iter()
        .enumerate()
        .find(|(_, e)| e.name == entry)
        .ok_or_else(|| format!("no entry point {entry}"))?;
    let used = info.get_entry_point(index);
    let mut n = KernelNeeds {
        storage_buffers: 0,
        uniform_buffers: 0,
        workgroup_bytes: 0,
        workgroup_size: ep.workgroup_size,
    };
    let ctx = module.to_ctx();
    for (h, g) in module.global_variables.iter() {
        if used[h].is_empty() {
            continue;
        }
        match g.space {
            naga::AddressSpace::Storage { .. } => n.storage_buffers += 1,
            naga::AddressSpace::Uniform => n.uniform_buffers += 1,
            naga::AddressSpace::WorkGroup => {
                // WebGPU counts each variable rounded up to 16 bytes
                let size = module.types[g.ty].inner.size(ctx) as u64;
                n.workgroup_bytes += size.div_ceil(16) * 16;
            }
            _ => {}
        }
    }
    Ok(n)
}

/// An owned device tensor: a buffer with a shape and an element type.
#[derive(Debug)]
pub struct GpuTensor {
    /// The buffer (usage `STORAGE | COPY_SRC | COPY_DST`), holding at least
    /// `numel * dtype.size()` bytes, rounded up to a multiple of 4, from `offset` on.
    pub buffer: wgpu::Buffer,
    /// Byte offset of the first element in `buffer` (0 for every buffer linrec allocates; a
    /// result placed in a framework's buffer starts where the framework's tensor does).
    pub offset: u64,
    /// The shape.
    pub shape: Vec<usize>,
    /// The element type.
    pub dtype: DType,
}

impl GpuTensor {
    /// Buffer usages of every tensor linrec allocates.
    pub const USAGE: wgpu::BufferUsages = wgpu::BufferUsages::STORAGE
        .union(wgpu::BufferUsages::COPY_SRC)
        .union(wgpu::BufferUsages::COPY_DST);

    /// Number of elements.
    pub fn numel(&self) -> usize {
        self.shape.iter().product()
    }

    /// Size of the data in bytes.
    pub fn bytes(&self) -> usize {
        self.numel() * self.dtype.size()
    }

    /// A borrowed view of the whole tensor.
    pub fn as_ref(&self) -> GpuRef<'_> {
        GpuRef {
            buffer: &self.buffer,
            offset: self.offset,
            len: self.numel(),
            dtype: self.dtype,
        }
    }
}

/// A borrowed range of a caller's device buffer: the zero-copy argument type of the wgpu API.
#[derive(Debug, Clone, Copy)]
pub struct GpuRef<'a> {
    /// The buffer; must have `STORAGE` usage.
    pub buffer: &'a wgpu::Buffer,
    /// Byte offset of the first element (a multiple of the element size; 8 for complex data).
    pub offset: u64,
    /// Number of elements.
    pub len: usize,
    /// Element type.
    pub dtype: DType,
}

impl<'a> GpuRef<'a> {
    /// A view of `len` elements of `dtype` starting `offset` bytes into `buffer`.
    pub fn new(buffer: &'a wgpu::Buffer, offset: u64, len: usize, dtype: DType) -> Self {
        GpuRef {
            buffer,
            offset,
            len,
            dtype,
        }
    }
}

impl crate::ops::ArgBuf for GpuRef<'_> {
    const FLAG_DTYPES: &'static [DType] = &[DType::U32];
    fn dtype(&self) -> Option<DType> {
        Some(self.dtype)
    }
    fn shape(&self) -> Option<&[usize]> {
        None
    }
    fn numel(&self) -> usize {
        self.len
    }
    fn check_extent(&self, arg: &'static str) -> Result<()> {
        note_arg(self.buffer, arg);
        if !self.buffer.usage().contains(wgpu::BufferUsages::STORAGE) {
            return Err(Error::value(
                arg,
                "a buffer with STORAGE usage",
                format!("{:?}", self.buffer.usage()),
            ));
        }
        if !self.offset.is_multiple_of(self.dtype.size() as u64) {
            return Err(Error::value(
                arg,
                format!("a byte offset that is a multiple of {}", self.dtype.size()),
                self.offset,
            ));
        }
        let end = crate::error::checked_bytes(arg, self.offset, self.len, self.dtype.size())?;
        if end > self.buffer.size() {
            return Err(Error::Size {
                arg,
                expected: self.len,
                shape: vec![self.len],
                found: (self.buffer.size().saturating_sub(self.offset) / self.dtype.size() as u64)
                    as usize,
            });
        }
        Ok(())
    }
}

impl<'a> GpuRef<'a> {
    /// Rows `b0 .. b0 + nb` of a tensor whose leading axis has rows of `row` elements.
    pub(crate) fn rows(self, b0: usize, nb: usize, row: usize) -> GpuRef<'a> {
        GpuRef {
            buffer: self.buffer,
            offset: self.offset + (b0 * row * self.dtype.size()) as u64,
            len: nb * row,
            dtype: self.dtype,
        }
    }
}

impl WgpuContext {
    /// Split `batch` rows into groups whose bindings each fit the device's binding-size limit,
    /// given the bytes one row occupies in each row-split buffer.
    pub(crate) fn row_groups(
        &self,
        batch: usize,
        row_bytes: &[u64],
    ) -> Result<Vec<(usize, usize)>> {
        let slack = self.limits.min_storage_buffer_offset_alignment as u64 + 4;
        let widest = row_bytes.iter().copied().max().unwrap_or(1).max(1);
        let limit = self.max_binding().saturating_sub(slack);
        let per = (limit / widest) as usize;
        if per == 0 {
            return Err(Error::Limit {
                backend: BACKEND,
                what: format!(
                    "one batch row needs a {widest}-byte binding; max_storage_buffer_binding_size is {}",
                    self.max_binding()
                ),
            });
        }
        Ok((0..batch)
            .step_by(per)
            .map(|b0| (b0, per.min(batch - b0)))
            .collect())
    }

    /// Sum the `rows` rows of `input` (`[rows, cols]` f32) into `out` (`[cols]` f32), in a
    /// fixed order (see `shaders/common/reduce_rows.wgsl`).
    pub(crate) fn reduce_rows<'b>(
        &self,
        launch: &mut Launch<'b>,
        input: &GpuRef<'b>,
        out: &GpuRef<'b>,
        rows: usize,
        cols: usize,
    ) -> Result<()> {
        #[repr(C)]
        #[derive(Clone, Copy, bytemuck::Pod, bytemuck::Zeroable)]
        struct Params {
            rows: u32,
            cols: u32,
            off_in: u32,
            off_out: u32,
        }
        let pipe = self.pipeline("common/reduce_rows.wgsl", "main", &[], &[])?;
        let (bi, off_in) = self.bind(input)?;
        let (bo, off_out) = self.bind(out)?;
        let params = Params {
            rows: rows as u32,
            cols: cols as u32,
            off_in,
            off_out,
        };
        launch.dispatch(pipe, &params, vec![bi, bo], cols.div_ceil(256) as u32)
    }
}

/// Channels per workgroup for kernels that put a block of channels side by side: the smallest
/// power of two covering `dim`, at most 32.
pub(crate) fn channel_block(dim: usize) -> u32 {
    (dim.next_power_of_two().min(32)) as u32
}

/// Check that a problem dimension fits the u32 index arithmetic of the kernels.
pub(crate) fn check_u32(arg: &'static str, v: usize) -> Result<u32> {
    u32::try_from(v)
        .ok()
        .filter(|&v| v < u32::MAX / 4)
        .ok_or_else(|| Error::Limit {
            backend: BACKEND,
            what: format!("{arg} = {v} exceeds the kernels' 32-bit indexing"),
        })
}
