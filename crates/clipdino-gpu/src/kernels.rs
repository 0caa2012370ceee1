//! The kernel dispatches. Each is recorded into an [`Encoder`] and runs when it is submitted; the
//! WGSL sources are in `src/shaders/`.

use wgpu::util::DeviceExt;

use crate::context::{Gpu, GpuBuffer};
use crate::weight::{GpuWeight, WeightFormat};

/// Where a matrix operand lives in its buffer: element `(batch, row, col)` is at
/// `off + batch·bs + row·rs + col·cs` (in f32 elements).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct View {
    pub off: u32,
    pub bs: u32,
    pub rs: u32,
    pub cs: u32,
}

impl View {
    /// Row-major rows of `width` elements starting at element `off`, one batch.
    pub const fn rows(off: u32, width: u32) -> Self {
        Self {
            off,
            bs: 0,
            rs: width,
            cs: 1,
        }
    }

    /// A torch `[out, in]` weight read as the `[in, out]` right operand of `x · Wᵀ`.
    pub const fn transposed(inp: u32) -> Self {
        Self {
            off: 0,
            bs: 0,
            rs: 1,
            cs: inp,
        }
    }

    /// The same view, batch `i` `stride` elements after batch `i − 1`.
    pub const fn batched(self, stride: u32) -> Self {
        Self { bs: stride, ..self }
    }
}

/// The activation fused into a matmul's epilogue.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Act {
    None,
    /// Exact GELU `x·Φ(x)` (erf by Abramowitz–Stegun 7.1.26, as on the CPU).
    Gelu,
    /// OpenAI's `x·σ(1.702·x)`.
    QuickGelu,
}

impl Act {
    fn code(self) -> u32 {
        match self {
            Act::None => 0,
            Act::Gelu => 1,
            Act::QuickGelu => 2,
        }
    }
}

impl From<clipdino::Activation> for Act {
    fn from(a: clipdino::Activation) -> Self {
        match a {
            clipdino::Activation::Gelu => Act::Gelu,
            clipdino::Activation::QuickGelu => Act::QuickGelu,
        }
    }
}

/// The right operand of a [`Matmul`].
#[derive(Debug, Clone, Copy)]
pub enum Rhs<'a> {
    /// f32 values at any strides (batched; kᵀ and v read out of the qkv buffer).
    Strided(&'a GpuBuffer, View),
    /// A torch `[n, k]` weight in any [`WeightFormat`], read as the `[k, n]` operand of `x · Wᵀ`
    /// (one batch).
    Weight(&'a GpuWeight),
}

impl<'a> From<(&'a GpuBuffer, View)> for Rhs<'a> {
    fn from((b, v): (&'a GpuBuffer, View)) -> Self {
        Rhs::Strided(b, v)
    }
}

/// `c[b, m, n] (+)= act(alpha · Σ_k a[b, m, k] · b[b, k, n] + bias[n])` for `b < batch`.
#[derive(Debug, Clone, Copy)]
pub struct Matmul<'a> {
    pub m: u32,
    pub n: u32,
    pub k: u32,
    pub batch: u32,
    pub a: (&'a GpuBuffer, View),
    pub b: Rhs<'a>,
    pub c: View,
    pub bias: Option<&'a GpuBuffer>,
    pub alpha: f32,
    pub act: Act,
    /// Add to what `c` holds (a residual connection) instead of overwriting it.
    pub accumulate: bool,
}

impl<'a> Matmul<'a> {
    /// `x · Wᵀ + bias` for `m` rows of `x` (`k` wide) and a torch `[n, k]` weight, into the
    /// rows of `c`.
    pub fn linear(
        m: u32,
        x: (&'a GpuBuffer, View),
        weight: &'a GpuWeight,
        bias: Option<&'a GpuBuffer>,
        c: View,
    ) -> Self {
        Self {
            m,
            n: weight.rows() as u32,
            k: weight.cols() as u32,
            batch: 1,
            a: x,
            b: Rhs::Weight(weight),
            c,
            bias,
            alpha: 1.0,
            act: Act::None,
            accumulate: false,
        }
    }

    /// Attention scores `alpha · q·kᵀ` of `heads.1` heads from head `heads.0` on, for the first
    /// `nq` of `t` tokens, straight out of a fused `qkv [t, 3w]` buffer (`d` channels per head)
    /// into `scores [heads.1, nq, t]`.
    pub fn attention_scores(
        qkv: &'a GpuBuffer,
        (t, nq): (u32, u32),
        (w, d): (u32, u32),
        heads: (u32, u32),
        alpha: f32,
    ) -> Self {
        let h0 = heads.0 * d;
        Self {
            m: nq,
            n: t,
            k: d,
            batch: heads.1,
            a: (qkv, View::rows(h0, 3 * w).batched(d)),
            // kᵀ: element (k, n) is token n's channel k of this head.
            b: Rhs::Strided(
                qkv,
                View {
                    off: w + h0,
                    bs: d,
                    rs: 1,
                    cs: 3 * w,
                },
            ),
            c: View::rows(0, t).batched(nq * t),
            bias: None,
            alpha,
            act: Act::None,
            accumulate: false,
        }
    }

    /// `probs · v` of the same heads as [`Self::attention_scores`] (`probs [heads.1, nq, t]`),
    /// `v` out of the fused `qkv` buffer, into the heads' columns of a merged-heads `[·, w]`
    /// output.
    pub fn attention_values(
        probs: &'a GpuBuffer,
        qkv: &'a GpuBuffer,
        (t, nq): (u32, u32),
        (w, d): (u32, u32),
        heads: (u32, u32),
    ) -> Self {
        let h0 = heads.0 * d;
        Self {
            m: nq,
            n: d,
            k: t,
            batch: heads.1,
            a: (probs, View::rows(0, t).batched(nq * t)),
            b: Rhs::Strided(qkv, View::rows(2 * w + h0, 3 * w).batched(d)),
            c: View::rows(h0, w).batched(d),
            bias: None,
            alpha: 1.0,
            act: Act::None,
            accumulate: false,
        }
    }

    pub fn act(self, act: Act) -> Self {
        Self { act, ..self }
    }

    pub fn accumulate(self) -> Self {
        Self {
            accumulate: true,
            ..self
        }
    }
}

#[repr(C)]
#[derive(Clone, Copy, bytemuck::Pod, bytemuck::Zeroable)]
struct MatmulParams {
    m: u32,
    n: u32,
    k: u32,
    flags: u32,
    a: [u32; 4],
    b: [u32; 4],
    c: [u32; 4],
    alpha: f32,
    b_scales: u32,
    pad: [u32; 2],
}

#[repr(C)]
#[derive(Clone, Copy, bytemuck::Pod, bytemuck::Zeroable)]
struct LayerNormParams {
    rows: u32,
    dim: u32,
    in_off: u32,
    in_rs: u32,
    out_off: u32,
    out_rs: u32,
    eps: f32,
    pad: u32,
}

#[repr(C)]
#[derive(Clone, Copy, bytemuck::Pod, bytemuck::Zeroable)]
struct SoftmaxParams {
    rows: u32,
    len: u32,
    pad: [u32; 2],
}

/// LayerNorm parameters on the device.
#[derive(Debug)]
pub struct GpuLayerNorm {
    pub weight: GpuBuffer,
    pub bias: GpuBuffer,
    pub eps: f32,
}

impl GpuLayerNorm {
    pub fn dim(&self) -> usize {
        self.weight.len()
    }
}

/// Largest workgroup count along one dispatch dimension (WebGPU's default limit).
const MAX_GROUPS: u32 = 65_535;

/// One workgroup per row, over a 2-D grid when the rows exceed one dimension's limit (the
/// kernels recover the row as `y·groups_x + x` and skip the overhang).
fn row_grid(rows: u32) -> (u32, u32) {
    let x = rows.clamp(1, MAX_GROUPS);
    (x, rows.div_ceil(x))
}

/// Commands being recorded for one submission.
pub struct Encoder<'g> {
    gpu: &'g Gpu,
    enc: wgpu::CommandEncoder,
}

impl<'g> Encoder<'g> {
    pub fn new(gpu: &'g Gpu, label: &str) -> Self {
        let enc = gpu
            .device
            .create_command_encoder(&wgpu::CommandEncoderDescriptor { label: Some(label) });
        Self { gpu, enc }
    }

    /// Queue everything recorded so far.
    pub fn submit(self) {
        self.gpu.queue.submit([self.enc.finish()]);
    }

    fn dispatch(
        &mut self,
        pipeline: &wgpu::ComputePipeline,
        params: &[u8],
        buffers: &[&wgpu::Buffer],
        groups: (u32, u32, u32),
    ) {
        let device = &self.gpu.device;
        let uniform = device.create_buffer_init(&wgpu::util::BufferInitDescriptor {
            label: Some("params"),
            contents: params,
            usage: wgpu::BufferUsages::UNIFORM,
        });
        let mut entries = vec![wgpu::BindGroupEntry {
            binding: 0,
            resource: uniform.as_entire_binding(),
        }];
        entries.extend(
            buffers
                .iter()
                .enumerate()
                .map(|(i, b)| wgpu::BindGroupEntry {
                    binding: i as u32 + 1,
                    resource: b.as_entire_binding(),
                }),
        );
        let bind = device.create_bind_group(&wgpu::BindGroupDescriptor {
            label: None,
            layout: &pipeline.get_bind_group_layout(0),
            entries: &entries,
        });
        let mut pass = self
            .enc
            .begin_compute_pass(&wgpu::ComputePassDescriptor::default());
        pass.set_pipeline(pipeline);
        pass.set_bind_group(0, &bind, &[]);
        pass.dispatch_workgroups(groups.0, groups.1, groups.2);
    }

    /// Record a [`Matmul`] writing into `c`.
    pub fn matmul(&mut self, mm: &Matmul, c: &GpuBuffer) {
        if mm.m == 0 || mm.n == 0 || mm.batch == 0 {
            return;
        }
        let gpu = self.gpu;
        let (pipeline, b_buf, b_view, b_scales) = match mm.b {
            Rhs::Strided(b, v) => (&gpu.matmul, &b.buf, v, 0),
            Rhs::Weight(w) => {
                assert!(
                    (mm.n, mm.k, mm.batch) == (w.rows() as u32, w.cols() as u32, 1),
                    "a [{}, {}] weight in a {}×{}×{} (batch {}) product",
                    w.rows(),
                    w.cols(),
                    mm.m,
                    mm.k,
                    mm.n,
                    mm.batch
                );
                let pipeline = match w.format() {
                    WeightFormat::F32 => &gpu.matmul,
                    WeightFormat::F16 => &gpu.matmul_f16,
                    WeightFormat::Q8 => &gpu.matmul_q8,
                };
                (pipeline, &w.buf, View::transposed(mm.k), w.scales_at)
            }
        };
        let view = |v: View| [v.off, v.bs, v.rs, v.cs];
        let flags =
            u32::from(mm.bias.is_some()) | (u32::from(mm.accumulate) << 1) | (mm.act.code() << 2);
        let params = MatmulParams {
            m: mm.m,
            n: mm.n,
            k: mm.k,
            flags,
            a: view(mm.a.1),
            b: view(b_view),
            c: view(mm.c),
            alpha: mm.alpha,
            b_scales,
            pad: [0; 2],
        };
        let bias = mm.bias.map_or(&gpu.dummy, |b| &b.buf);
        let groups = (mm.n.div_ceil(64), mm.m.div_ceil(64), mm.batch);
        self.dispatch(
            pipeline,
            bytemuck::bytes_of(&params),
            &[&mm.a.0.buf, b_buf, bias, &c.buf],
            groups,
        );
    }

    /// LayerNorm of `rows` rows of `x` (row `r` at `x_view.off + r·x_view.rs`) into `y`.
    pub fn layer_norm(
        &mut self,
        ln: &GpuLayerNorm,
        rows: u32,
        x: (&GpuBuffer, View),
        y: (&GpuBuffer, View),
    ) {
        if rows == 0 {
            return;
        }
        let params = LayerNormParams {
            rows,
            dim: ln.dim() as u32,
            in_off: x.1.off,
            in_rs: x.1.rs,
            out_off: y.1.off,
            out_rs: y.1.rs,
            eps: ln.eps,
            pad: 0,
        };
        let (gx, gy) = row_grid(rows);
        let pipeline = self.gpu.layer_norm.clone();
        self.dispatch(
            &pipeline,
            bytemuck::bytes_of(&params),
            &[&x.0.buf, &ln.weight.buf, &ln.bias.buf, &y.0.buf],
            (gx, gy, 1),
        );
    }

    /// Softmax of `rows` contiguous rows of `len` elements at the start of `x`, in place.
    pub fn softmax(&mut self, x: &GpuBuffer, rows: u32, len: u32) {
        if rows == 0 || len == 0 {
            return;
        }
        let params = SoftmaxParams {
            rows,
            len,
            pad: [0; 2],
        };
        let (gx, gy) = row_grid(rows);
        let pipeline = self.gpu.softmax.clone();
        self.dispatch(
            &pipeline,
            bytemuck::bytes_of(&params),
            &[&x.buf],
            (gx, gy, 1),
        );
    }

    /// Copy `len` elements from `src[src_off..]` to `dst[dst_off..]`.
    pub fn copy(
        &mut self,
        src: &GpuBuffer,
        src_off: usize,
        dst: &GpuBuffer,
        dst_off: usize,
        len: usize,
    ) {
        if len == 0 {
            return;
        }
        self.enc.copy_buffer_to_buffer(
            &src.buf,
            (src_off * 4) as u64,
            &dst.buf,
            (dst_off * 4) as u64,
            (len * 4) as u64,
        );
    }
}
