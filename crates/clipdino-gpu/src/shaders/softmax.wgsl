// Softmax over contiguous rows, in place, one workgroup per row (max-subtracted).

struct Params {
    rows: u32, len: u32, _p0: u32, _p1: u32,
}

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read_write> x: array<f32>;

// WG, reduce_max, reduce_sum: reduce.wgsl (prepended when the pipeline is built).

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
    let row_max = reduce_max(li, m);
    var sum = 0.0;
    for (var i = li; i < p.len; i += WG) {
        let e = exp(x[base + i] - row_max);
        x[base + i] = e;
        sum += e;
    }
    let inv = 1.0 / reduce_sum(li, sum);
    for (var i = li; i < p.len; i += WG) {
        x[base + i] *= inv;
    }
}
