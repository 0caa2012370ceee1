// LayerNorm over the last dim, one workgroup per row, two passes (mean, then the variance of the
// centred values) like the CPU path: y = (x − μ) / √(σ² + eps) · weight + bias.

struct Params {
    rows: u32, dim: u32, in_off: u32, in_rs: u32,
    out_off: u32, out_rs: u32, eps: f32, _p0: u32,
}

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> x: array<f32>;
@group(0) @binding(2) var<storage, read> weight: array<f32>;
@group(0) @binding(3) var<storage, read> bias: array<f32>;
@group(0) @binding(4) var<storage, read_write> y: array<f32>;

// WG, reduce_sum: reduce.wgsl (prepended when the pipeline is built).

@compute @workgroup_size(256, 1, 1)
fn main(@builtin(workgroup_id) wg: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
        @builtin(local_invocation_index) li: u32) {
    let row = wg.y * nwg.x + wg.x;
    // `row` is the same for the whole workgroup: the early exit keeps the barriers uniform.
    if row >= p.rows {
        return;
    }
    let src = p.in_off + row * p.in_rs;
    let dst = p.out_off + row * p.out_rs;
    let n = f32(p.dim);
    var s = 0.0;
    for (var i = li; i < p.dim; i += WG) {
        s += x[src + i];
    }
    let mean = reduce_sum(li, s) / n;
    var q = 0.0;
    for (var i = li; i < p.dim; i += WG) {
        let d = x[src + i] - mean;
        q += d * d;
    }
    let inv = 1.0 / sqrt(reduce_sum(li, q) / n + p.eps);
    for (var i = li; i < p.dim; i += WG) {
        y[dst + i] = (x[src + i] - mean) * inv * weight[i] + bias[i];
    }
}
