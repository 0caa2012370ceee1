// Softmax over contiguous rows, in place, one workgroup per row (max-subtracted).

struct Params {
    rows: u32, len: u32, _p0: u32, _p1: u32,
}

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read_write> x: array<f32>;

const WG: u32 = 256u;
var<workgroup> partial: array<f32, 256>;

@compute @workgroup_size(256, 1, 1)
fn main(@builtin(workgroup_id) wg: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
        @builtin(local_invocation_index) li: u32) {
    let row = wg.y * nwg.x + wg.x;
    // Uniform per workgroup: the barriers below stay in uniform control flow.
    if row >= p.rows {
        return;
    }
    let base = row * p.len;
    // Lowest finite f32, written so that every WGSL front end accepts the literal.
    var m = -3.402823e38;
    for (var i = li; i < p.len; i += WG) {
        m = max(m, x[base + i]);
    }
    partial[li] = m;
    workgroupBarrier();
    for (var s = WG / 2u; s > 0u; s >>= 1u) {
        if li < s {
            partial[li] = max(partial[li], partial[li + s]);
        }
        workgroupBarrier();
    }
    let row_max = partial[0];
    workgroupBarrier();
    var sum = 0.0;
    for (var i = li; i < p.len; i += WG) {
        let e = exp(x[base + i] - row_max);
        x[base + i] = e;
        sum += e;
    }
    partial[li] = sum;
    workgroupBarrier();
    for (var s = WG / 2u; s > 0u; s >>= 1u) {
        if li < s {
            partial[li] += partial[li + s];
        }
        workgroupBarrier();
    }
    let inv = 1.0 / partial[0];
    for (var i = li; i < p.len; i += WG) {
        x[base + i] *= inv;
    }
}
