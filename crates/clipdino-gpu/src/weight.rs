//! Weight matrices on the device in a compact form, and the rule that picks it for each matrix of
//! a loaded model.
//!
//! * [`WeightFormat::Q8`]: GGML's Q8_0 numbers (blocks of 32 values along a row: 32 × int8 and
//!   one f16 scale; value = int8 · scale) repacked into u32 words: every row's int8 values in
//!   order, four per word, then the scales, two per word. 8.5 bits per value, exactly a Q8_0
//!   download; the matmul kernel dequantizes the tile it loads into workgroup memory
//!   (`shaders/b_q8.wgsl`), in f32 (no `shader-f16` needed).
//! * [`WeightFormat::F16`]: two halves per word, unpacked by WGSL's core `unpack2x16float` (again
//!   no `shader-f16`): the high-precision bundle keeps its 16 bits.
//! * [`WeightFormat::F32`]: the reference, and what an f32 download (upstream safetensors) keeps.
//!
//! LayerNorm parameters, biases and embeddings stay f32 buffers ([`crate::GpuBuffer`]).

use candle_core::quantized::{GgmlDType, QTensor};
use candle_core::{Device, Tensor};
use clipdino::weights::Stored;
use half::f16;
use wgpu::util::DeviceExt;

use crate::context::Gpu;
use crate::error::{GpuError, Result};

/// Values per Q8 block (GGML's `QK8_0`).
pub const Q8_BLOCK: usize = 32;

/// How a weight matrix is held on the device.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum WeightFormat {
    F32,
    F16,
    Q8,
}

impl WeightFormat {
    pub fn name(self) -> &'static str {
        match self {
            WeightFormat::F32 => "f32",
            WeightFormat::F16 => "f16",
            WeightFormat::Q8 => "q8",
        }
    }

    /// Whether rows of `cols` values can be held in this format (Q8: whole blocks; F16: whole
    /// words).
    pub fn fits(self, cols: usize) -> bool {
        match self {
            WeightFormat::F32 => true,
            WeightFormat::F16 => cols.is_multiple_of(2),
            WeightFormat::Q8 => cols.is_multiple_of(Q8_BLOCK),
        }
    }

    /// This format, or the next wider one that fits rows of `cols` values.
    fn or_wider(self, cols: usize) -> WeightFormat {
        [self, WeightFormat::F16, WeightFormat::F32]
            .into_iter()
            .find(|f| f.fits(cols))
            .unwrap_or(WeightFormat::F32)
    }
}

/// Which form the matrices of a loaded model take on the device ([`crate::GpuVision::with_weights`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum GpuWeights {
    /// As close to the download as the kernels allow: Q8_0 blocks as stored (the default bundle:
    /// the same numbers the CPU dequantizes), F16/BF16 as f16, f32 as f32, and the other
    /// quantized formats (Q4_0, K-quants) re-quantized to Q8 (adding at most 1/254 of each
    /// 32-value block's largest magnitude, at ~2× their size).
    #[default]
    AsStored,
    /// Every matrix f32 (4× a Q8_0 download; the reference for the compact forms).
    F32,
    /// Every matrix Q8: Q8_0 as stored, anything else quantized on upload by GGML's Q8_0
    /// rounding (candle's, the converter's).
    Q8,
}

impl GpuWeights {
    /// The device format of a matrix stored as `stored` with rows of `cols` values.
    pub fn format_for(self, stored: &Stored, cols: usize) -> WeightFormat {
        let want = match self {
            GpuWeights::F32 => WeightFormat::F32,
            GpuWeights::Q8 => WeightFormat::Q8,
            GpuWeights::AsStored => match stored {
                Stored::Float(t) => match t.dtype() {
                    candle_core::DType::F16 | candle_core::DType::BF16 => WeightFormat::F16,
                    _ => WeightFormat::F32,
                },
                Stored::Quant(q) => match q.dtype() {
                    GgmlDType::F32 => WeightFormat::F32,
                    GgmlDType::F16 | GgmlDType::BF16 => WeightFormat::F16,
                    _ => WeightFormat::Q8,
                },
            },
        };
        want.or_wider(cols)
    }
}

/// A `[rows, cols]` matrix in Q8_0 numbers on the host: `quants[r·cols + c]`, one scale per
/// block of 32 along a row (`scales[(r·cols + c) / 32]`).
#[derive(Debug, Clone, PartialEq)]
pub struct Q8Blocks {
    pub rows: usize,
    pub cols: usize,
    pub quants: Vec<i8>,
    pub scales: Vec<f16>,
}

impl Q8Blocks {
    /// The blocks of a GGML Q8_0 tensor viewed as `[rows, cols]`, as stored (`what` names it in
    /// errors).
    pub fn from_ggml(q: &QTensor, rows: usize, cols: usize, what: &str) -> Result<Self> {
        let bad = |message: String| GpuError::Model(clipdino::Error::invalid(what, message));
        if q.dtype() != GgmlDType::Q8_0 {
            return Err(bad(format!("stored as {:?}, not Q8_0", q.dtype())));
        }
        if !cols.is_multiple_of(Q8_BLOCK) || q.shape().elem_count() != rows * cols {
            return Err(bad(format!(
                "{:?} cannot be read as [{rows}, {cols}] in blocks of {Q8_BLOCK}",
                q.shape().dims()
            )));
        }
        let data = q.data()?;
        let type_size = GgmlDType::Q8_0.type_size();
        let blocks = rows * cols / Q8_BLOCK;
        if data.len() != blocks * type_size {
            return Err(bad(format!(
                "{} bytes for {blocks} Q8_0 blocks",
                data.len()
            )));
        }
        let mut quants = Vec::with_capacity(rows * cols);
        let mut scales = Vec::with_capacity(blocks);
        // ggml's block_q8_0: f16 d, then 32 × i8.
        for b in data.chunks_exact(type_size) {
            scales.push(f16::from_le_bytes([b[0], b[1]]));
            quants.extend(b[2..].iter().map(|&v| v as i8));
        }
        Ok(Self {
            rows,
            cols,
            quants,
            scales,
        })
    }

    /// `values` (`[rows, cols]`, cols a multiple of 32) rounded to Q8_0 by candle's quantizer,
    /// the one `clipdino convert` uses.
    pub fn quantize(values: &Tensor, what: &str) -> Result<Self> {
        let (rows, cols) = values.dims2()?;
        let q = QTensor::quantize(&values.to_device(&Device::Cpu)?, GgmlDType::Q8_0)?;
        Self::from_ggml(&q, rows, cols, what)
    }

    /// The f32 values (`int8 · scale`, as GGML dequantizes Q8_0), row-major.
    pub fn dequantize(&self) -> Vec<f32> {
        self.quants
            .iter()
            .enumerate()
            .map(|(i, &q)| q as f32 * self.scales[i / Q8_BLOCK].to_f32())
            .collect()
    }
}

/// A torch-layout `[rows, cols]` (`[out, in]`) weight matrix on the device, the right operand
/// of `x · Wᵀ` ([`crate::kernels::Matmul::linear`]).
#[derive(Debug)]
pub struct GpuWeight {
    pub(crate) buf: wgpu::Buffer,
    format: WeightFormat,
    rows: usize,
    cols: usize,
    /// [`WeightFormat::Q8`]: the word at which the scales start.
    pub(crate) scales_at: u32,
}

impl GpuWeight {
    pub fn format(&self) -> WeightFormat {
        self.format
    }

    /// Output channels (`n` of the product).
    pub fn rows(&self) -> usize {
        self.rows
    }

    /// Input channels (`k` of the product).
    pub fn cols(&self) -> usize {
        self.cols
    }

    /// Bytes held on the device.
    pub fn bytes(&self) -> u64 {
        self.buf.size()
    }
}

fn pack_halves(v: &[f16]) -> Vec<u32> {
    v.chunks(2)
        .map(|p| {
            let lo = p[0].to_bits() as u32;
            let hi = p.get(1).map_or(0, |h| h.to_bits() as u32);
            lo | (hi << 16)
        })
        .collect()
}

impl Gpu {
    fn weight_buffer(
        &self,
        what: &'static str,
        words: &[u32],
        format: WeightFormat,
        (rows, cols): (usize, usize),
        scales_at: u32,
    ) -> Result<GpuWeight> {
        self.check_bytes(what, words.len() as u64 * 4)?;
        let buf = self
            .device
            .create_buffer_init(&wgpu::util::BufferInitDescriptor {
                label: Some(what),
                contents: bytemuck::cast_slice(words),
                usage: wgpu::BufferUsages::STORAGE,
            });
        Ok(GpuWeight {
            buf,
            format,
            rows,
            cols,
            scales_at,
        })
    }

    /// A `[rows, cols]` weight from row-major f32 `values`, held as `format` (F16 rounds to
    /// nearest; Q8 rounds by [`Q8Blocks::quantize`]). `format` must [fit](WeightFormat::fits)
    /// `cols`.
    pub fn upload_weight(
        &self,
        what: &'static str,
        format: WeightFormat,
        (rows, cols): (usize, usize),
        values: &[f32],
    ) -> Result<GpuWeight> {
        let shape_err = |m: String| GpuError::Model(clipdino::Error::invalid(what, m));
        if values.len() != rows * cols || rows == 0 || cols == 0 {
            return Err(shape_err(format!(
                "{} values for a [{rows}, {cols}] weight",
                values.len()
            )));
        }
        if !format.fits(cols) {
            return Err(shape_err(format!(
                "rows of {cols} values cannot be held as {}",
                format.name()
            )));
        }
        match format {
            WeightFormat::F32 => {
                self.weight_buffer(what, bytemuck::cast_slice(values), format, (rows, cols), 0)
            }
            WeightFormat::F16 => {
                let halves: Vec<f16> = values.iter().map(|&v| f16::from_f32(v)).collect();
                self.weight_buffer(what, &pack_halves(&halves), format, (rows, cols), 0)
            }
            WeightFormat::Q8 => {
                let t = Tensor::from_slice(values, (rows, cols), &Device::Cpu)?;
                self.upload_q8(what, &Q8Blocks::quantize(&t, what)?)
            }
        }
    }

    /// Q8 blocks as they are (no rounding).
    pub fn upload_q8(&self, what: &'static str, q: &Q8Blocks) -> Result<GpuWeight> {
        let n = q.rows * q.cols;
        if q.quants.len() != n || q.scales.len() * Q8_BLOCK != n || !q.cols.is_multiple_of(32) {
            return Err(GpuError::Model(clipdino::Error::invalid(
                what,
                format!(
                    "{} quants and {} scales for [{}, {}]",
                    q.quants.len(),
                    q.scales.len(),
                    q.rows,
                    q.cols
                ),
            )));
        }
        let mut words: Vec<u32> = q
            .quants
            .chunks_exact(4)
            .map(|b| u32::from_le_bytes([b[0] as u8, b[1] as u8, b[2] as u8, b[3] as u8]))
            .collect();
        let scales_at = words.len() as u32;
        words.extend(pack_halves(&q.scales));
        self.weight_buffer(what, &words, WeightFormat::Q8, (q.rows, q.cols), scales_at)
    }

    /// The stored `[rows, cols]` matrix `stored` in the form `policy` picks for it: Q8_0 blocks
    /// are copied as they are, everything else goes through f32 (one matrix at a time).
    /// `transposed`: `stored` is `[cols, rows]` (upstream's right-multiplied `proj`).
    pub fn upload_stored(
        &self,
        what: &'static str,
        policy: GpuWeights,
        stored: &Stored,
        (rows, cols): (usize, usize),
        transposed: bool,
    ) -> Result<GpuWeight> {
        let format = policy.format_for(stored, cols);
        if let (WeightFormat::Q8, Stored::Quant(q), false) = (format, stored, transposed) {
            if q.dtype() == GgmlDType::Q8_0 {
                return self.upload_q8(what, &Q8Blocks::from_ggml(q, rows, cols, what)?);
            }
        }
        let t = stored.to_f32(&Device::Cpu)?;
        let t = if transposed {
            t.reshape((cols, rows))?.t()?.contiguous()?
        } else {
            t.reshape((rows, cols))?
        };
        let values = t.flatten_all()?.to_vec1::<f32>()?;
        self.upload_weight(what, format, (rows, cols), &values)
    }
}
