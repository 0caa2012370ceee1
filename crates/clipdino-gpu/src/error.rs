//! Errors of the GPU path. Every one of them means "use the CPU path for this request".

/// What went wrong on the GPU side.
#[derive(Debug, thiserror::Error)]
pub enum GpuError {
    /// No WebGPU / Vulkan adapter (no GPU, no driver, WebGPU disabled in the browser).
    #[error("no GPU adapter: {0}")]
    NoAdapter(String),
    /// The adapter refused to create a device (missing limits or features).
    #[error("the GPU device could not be created: {0}")]
    Device(String),
    /// A validation, out-of-memory or internal error reported by the device while running `op`.
    #[error("GPU error in {op}: {message}")]
    Runtime { op: &'static str, message: String },
    /// Reading a result back failed (typically a lost device).
    #[error("reading `{what}` back from the GPU failed: {message}")]
    Readback { what: &'static str, message: String },
    /// A size the kernels cannot handle (buffer binding limits).
    #[error("{what} needs {bytes} bytes in one GPU buffer; the device allows {limit}")]
    TooLarge {
        what: &'static str,
        bytes: u64,
        limit: u64,
    },
    /// The adapter computed a different image tower than the CPU ([`crate::self_check`]).
    #[error("the GPU self-check failed: its image tower differs from the CPU's by {worst:e} (more than {tolerance:e})")]
    SelfCheck { worst: f32, tolerance: f32 },
    #[error(transparent)]
    Model(#[from] clipdino::Error),
    #[error(transparent)]
    Tensor(#[from] candle_core::Error),
}

pub type Result<T> = std::result::Result<T, GpuError>;
