//! The device, its compiled pipelines, and buffer upload / readback.

use wgpu::util::DeviceExt;

use crate::error::{GpuError, Result};

/// An f32 storage buffer of `len` elements.
#[derive(Debug)]
pub struct GpuBuffer {
    pub(crate) buf: wgpu::Buffer,
    len: usize,
}

impl GpuBuffer {
    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Bytes held on the device.
    pub fn bytes(&self) -> u64 {
        self.buf.size()
    }
}

/// One adapter's device and queue with the kernels compiled for it.
#[derive(Debug)]
pub struct Gpu {
    pub(crate) device: wgpu::Device,
    pub(crate) queue: wgpu::Queue,
    info: wgpu::AdapterInfo,
    /// The matmul with its right operand as strided f32, f16 weights or Q8 weights
    /// (`shaders/b_*.wgsl`).
    pub(crate) matmul: wgpu::ComputePipeline,
    pub(crate) matmul_f16: wgpu::ComputePipeline,
    pub(crate) matmul_q8: wgpu::ComputePipeline,
    pub(crate) layer_norm: wgpu::ComputePipeline,
    pub(crate) softmax: wgpu::ComputePipeline,
    /// Bound where a kernel's optional operand (a bias) is absent.
    pub(crate) dummy: wgpu::Buffer,
    max_binding: u64,
}

/// Whether an adapter called `name` (any of its descriptions: a browser's vendor / architecture
/// / description, a driver's device name) is a CPU implementation; `cpu_type`: the platform says
/// so itself (a fallback adapter, a CPU device type).
pub fn is_cpu_emulation(name: &str, cpu_type: bool) -> bool {
    let name = name.to_lowercase();
    cpu_type || ["swiftshader", "llvmpipe"].iter().any(|n| name.contains(n))
}

/// Errors of the device inside a scope of [`Gpu::capture`], in the order they are popped.
const FILTERS: [wgpu::ErrorFilter; 3] = [
    wgpu::ErrorFilter::Validation,
    wgpu::ErrorFilter::OutOfMemory,
    wgpu::ErrorFilter::Internal,
];

impl Gpu {
    /// The first adapter the platform offers (natively, `WGPU_BACKEND` / `WGPU_ADAPTER_NAME` in the
    /// environment narrow the choice) with WebGPU's default limits, and the kernels compiled.
    pub async fn new() -> Result<Self> {
        let instance =
            wgpu::Instance::new(wgpu::InstanceDescriptor::new_without_display_handle_from_env());
        let adapter = instance
            .request_adapter(&wgpu::RequestAdapterOptions {
                power_preference: wgpu::PowerPreference::HighPerformance,
                ..Default::default()
            })
            .await
            .map_err(|e| GpuError::NoAdapter(e.to_string()))?;
        let info = adapter.get_info();
        let (device, queue) = adapter
            .request_device(&wgpu::DeviceDescriptor {
                label: Some("clipdino-gpu"),
                required_limits: wgpu::Limits::default(),
                ..Default::default()
            })
            .await
            .map_err(|e| GpuError::Device(e.to_string()))?;
        let max_binding = device
            .limits()
            .max_storage_buffer_binding_size
            .min(device.limits().max_buffer_size);
        let scopes = push_scopes(&device);
        let pipeline = |label: &str, source: &str| {
            let module = device.create_shader_module(wgpu::ShaderModuleDescriptor {
                label: Some(label),
                source: wgpu::ShaderSource::Wgsl(source.into()),
            });
            device.create_compute_pipeline(&wgpu::ComputePipelineDescriptor {
                label: Some(label),
                layout: None,
                module: &module,
                entry_point: Some("main"),
                compilation_options: Default::default(),
                cache: None,
            })
        };
        let matmul = pipeline(
            "matmul",
            concat!(
                include_str!("shaders/matmul.wgsl"),
                include_str!("shaders/b_f32.wgsl")
            ),
        );
        let matmul_f16 = pipeline(
            "matmul (f16 weights)",
            concat!(
                include_str!("shaders/matmul.wgsl"),
                include_str!("shaders/b_f16.wgsl")
            ),
        );
        let matmul_q8 = pipeline(
            "matmul (q8 weights)",
            concat!(
                include_str!("shaders/matmul.wgsl"),
                include_str!("shaders/b_q8.wgsl")
            ),
        );
        let layer_norm = pipeline(
            "layernorm",
            concat!(
                include_str!("shaders/reduce.wgsl"),
                include_str!("shaders/layernorm.wgsl")
            ),
        );
        let softmax = pipeline(
            "softmax",
            concat!(
                include_str!("shaders/reduce.wgsl"),
                include_str!("shaders/softmax.wgsl")
            ),
        );
        let dummy = device.create_buffer(&wgpu::BufferDescriptor {
            label: Some("unused operand"),
            size: 16,
            usage: wgpu::BufferUsages::STORAGE,
            mapped_at_creation: false,
        });
        pop_scopes(scopes, "compiling the kernels").await?;
        Ok(Self {
            device,
            queue,
            info,
            matmul,
            matmul_f16,
            matmul_q8,
            layer_norm,
            softmax,
            dummy,
            max_binding,
        })
    }

    /// The adapter's name, driver and backend (e.g. `llvmpipe (LLVM 15.0.6, 256 bits)`, Vulkan).
    pub fn adapter_info(&self) -> &wgpu::AdapterInfo {
        &self.info
    }

    /// A one-line description of the adapter for logs and status lines.
    pub fn describe(&self) -> String {
        let i = &self.info;
        let mut s = format!("{} ({:?}", i.name, i.backend);
        if !i.driver.is_empty() {
            s.push_str(&format!(", {}", i.driver));
        }
        s.push(')');
        s
    }

    /// Whether the adapter is a CPU implementation (lavapipe, SwiftShader): its timings are CPU
    /// emulation, not GPU speed.
    pub fn is_cpu_emulation(&self) -> bool {
        is_cpu_emulation(
            &self.info.name,
            self.info.device_type == wgpu::DeviceType::Cpu,
        )
    }

    fn check_size(&self, what: &'static str, len: usize) -> Result<u64> {
        self.check_bytes(what, (len.max(1) * 4) as u64)
    }

    /// `bytes` in one buffer bound to a kernel: within the device's limits?
    pub(crate) fn check_bytes(&self, what: &'static str, bytes: u64) -> Result<u64> {
        if bytes > self.max_binding {
            return Err(GpuError::TooLarge {
                what,
                bytes,
                limit: self.max_binding,
            });
        }
        Ok(bytes)
    }

    /// A storage buffer holding `data`.
    pub fn upload(&self, what: &'static str, data: &[f32]) -> Result<GpuBuffer> {
        self.check_size(what, data.len())?;
        let contents: &[u8] = if data.is_empty() {
            &[0; 4]
        } else {
            bytemuck::cast_slice(data)
        };
        let buf = self
            .device
            .create_buffer_init(&wgpu::util::BufferInitDescriptor {
                label: Some(what),
                contents,
                usage: wgpu::BufferUsages::STORAGE
                    | wgpu::BufferUsages::COPY_SRC
                    | wgpu::BufferUsages::COPY_DST,
            });
        Ok(GpuBuffer {
            buf,
            len: data.len(),
        })
    }

    /// A zero-filled storage buffer of `len` f32.
    pub fn zeros(&self, what: &'static str, len: usize) -> Result<GpuBuffer> {
        let size = self.check_size(what, len)?;
        let buf = self.device.create_buffer(&wgpu::BufferDescriptor {
            label: Some(what),
            size,
            usage: wgpu::BufferUsages::STORAGE
                | wgpu::BufferUsages::COPY_SRC
                | wgpu::BufferUsages::COPY_DST,
            mapped_at_creation: false,
        });
        Ok(GpuBuffer { buf, len })
    }

    /// Overwrite the start of `buf` with `data`.
    pub fn write(&self, buf: &GpuBuffer, data: &[f32]) {
        self.queue
            .write_buffer(&buf.buf, 0, bytemuck::cast_slice(data));
    }

    /// Elements `offset..offset + len` of `buf`, once every submitted command has run.
    pub async fn read(
        &self,
        what: &'static str,
        buf: &GpuBuffer,
        offset: usize,
        len: usize,
    ) -> Result<Vec<f32>> {
        if len == 0 {
            return Ok(Vec::new());
        }
        assert!(offset + len <= buf.len, "read of {what} out of bounds");
        let size = (len * 4) as u64;
        let staging = self.device.create_buffer(&wgpu::BufferDescriptor {
            label: Some("readback"),
            size,
            usage: wgpu::BufferUsages::MAP_READ | wgpu::BufferUsages::COPY_DST,
            mapped_at_creation: false,
        });
        let mut enc = self
            .device
            .create_command_encoder(&wgpu::CommandEncoderDescriptor { label: Some(what) });
        enc.copy_buffer_to_buffer(&buf.buf, (offset * 4) as u64, &staging, 0, size);
        self.queue.submit([enc.finish()]);
        let (tx, rx) = futures_channel::oneshot::channel();
        staging.slice(..).map_async(wgpu::MapMode::Read, move |r| {
            // The receiver only disappears if the future was dropped: nobody to tell.
            let _ = tx.send(r);
        });
        // Natively the callback fires inside `poll`; in the browser, from the event loop.
        #[cfg(not(target_arch = "wasm32"))]
        self.device
            .poll(wgpu::PollType::wait_indefinitely())
            .map_err(|e| GpuError::Readback {
                what,
                message: e.to_string(),
            })?;
        let mapped = rx.await.map_err(|_| GpuError::Readback {
            what,
            message: "the map callback was dropped (device lost?)".into(),
        })?;
        mapped.map_err(|e| GpuError::Readback {
            what,
            message: e.to_string(),
        })?;
        let out = {
            let view = staging
                .slice(..)
                .get_mapped_range()
                .map_err(|e| GpuError::Readback {
                    what,
                    message: e.to_string(),
                })?;
            bytemuck::cast_slice::<u8, f32>(&view).to_vec()
        };
        staging.unmap();
        Ok(out)
    }

    /// Run `f` (which records and submits work) inside error scopes: any validation,
    /// out-of-memory or internal error of the device becomes a [`GpuError::Runtime`] naming `op`
    /// instead of the default handler's panic.
    pub async fn capture<T>(&self, op: &'static str, f: impl FnOnce() -> Result<T>) -> Result<T> {
        let scopes = push_scopes(&self.device);
        let out = f();
        pop_scopes(scopes, op).await?;
        out
    }
}

fn push_scopes(device: &wgpu::Device) -> Vec<wgpu::ErrorScopeGuard> {
    FILTERS
        .iter()
        .map(|&f| device.push_error_scope(f))
        .collect()
}

async fn pop_scopes(scopes: Vec<wgpu::ErrorScopeGuard>, op: &'static str) -> Result<()> {
    let mut first = None;
    // Scopes are a stack: the last pushed is popped first.
    for scope in scopes.into_iter().rev() {
        if let Some(e) = scope.pop().await {
            first.get_or_insert(e);
        }
    }
    match first {
        None => Ok(()),
        Some(e) => Err(GpuError::Runtime {
            op,
            message: e.to_string(),
        }),
    }
}
