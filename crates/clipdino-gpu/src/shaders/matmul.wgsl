// Batched, strided matmul with a fused epilogue:
//   c[batch, m, n] (+)= act(alpha · Σ_k a[batch, m, k] · b[batch, k, n] + bias[n])
// Every operand is addressed as offset + batch·bs + row·s_row + col·s_col, so one kernel covers
// `x · Wᵀ` (torch's [out, in] weights), `q · kᵀ` and `p · v` read straight out of a fused qkv
// buffer, and writes into a column slice of the merged-heads output.
// Tiles: 64×64 outputs per workgroup of 16×16 threads (4×4 each), k in steps of 16 through
// workgroup memory.
// The right operand's binding and its tile loader `load_b_tile` come from one of b_f32.wgsl
// (strided f32), b_f16.wgsl or b_q8.wgsl (compact weights, dequantized on their way into
// `tile_b`), appended when the pipeline is built.

struct Params {
    m: u32, n: u32, k: u32, flags: u32,
    a_off: u32, a_bs: u32, a_sm: u32, a_sk: u32,
    b_off: u32, b_bs: u32, b_sk: u32, b_sn: u32,
    c_off: u32, c_bs: u32, c_sm: u32, c_sn: u32,
    // b_scales: b_q8.wgsl's first scale word.
    alpha: f32, b_scales: u32, _p1: u32, _p2: u32,
}

// flags: bit 0 add bias, bit 1 accumulate into c (residual), bits 2..3 activation.
const FLAG_BIAS: u32 = 1u;
const FLAG_ACCUMULATE: u32 = 2u;
const ACT_GELU: u32 = 1u;
const ACT_QUICK_GELU: u32 = 2u;

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> a: array<f32>;
@group(0) @binding(3) var<storage, read> bias: array<f32>;
@group(0) @binding(4) var<storage, read_write> c: array<f32>;

var<workgroup> tile_a: array<f32, 1024>; // [16 k][64 m]
var<workgroup> tile_b: array<f32, 1024>; // [16 k][64 n]

// erf by Abramowitz & Stegun 7.1.26 (|error| ≤ 1.5e-7), the same formula as the CPU path.
fn erf(x: f32) -> f32 {
    let t = 1.0 / (1.0 + 0.3275911 * abs(x));
    let poly = ((((1.0614054 * t - 1.4531521) * t + 1.4214138) * t - 0.28449672) * t
        + 0.2548296) * t;
    return sign(x) * (1.0 - poly * exp(-x * x));
}

fn activate(x: f32, act: u32) -> f32 {
    if act == ACT_GELU {
        return 0.5 * x * (1.0 + erf(x * 0.70710678118654752));
    }
    if act == ACT_QUICK_GELU {
        // The exponent is capped below f32's overflow: for x < -51 the result is ≈ -0, as in torch.
        return x / (1.0 + exp(min(-1.702 * x, 88.0)));
    }
    return x;
}

@compute @workgroup_size(16, 16, 1)
fn main(
    @builtin(workgroup_id) wg: vec3<u32>,
    @builtin(local_invocation_id) lid: vec3<u32>,
    @builtin(local_invocation_index) li: u32,
) {
    let batch = wg.z;
    let m0 = wg.y * 64u;
    let n0 = wg.x * 64u;
    let a_base = p.a_off + batch * p.a_bs;
    let b_base = p.b_off + batch * p.b_bs;
    var acc: array<f32, 16>;
    for (var k0 = 0u; k0 < p.k; k0 += 16u) {
        // 1024 elements of each tile, 4 per thread; k is the fastest index of the load so that
        // row-major operands with unit k stride are read contiguously.
        for (var i = 0u; i < 4u; i++) {
            let e = li + i * 256u;
            let row = e / 16u;
            let kk = e % 16u;
            let gk = k0 + kk;
            let gm = m0 + row;
            var va = 0.0;
            if gm < p.m && gk < p.k {
                va = a[a_base + gm * p.a_sm + gk * p.a_sk];
            }
            tile_a[kk * 64u + row] = va;
        }
        load_b_tile(li, n0, k0, b_base);
        workgroupBarrier();
        for (var kk = 0u; kk < 16u; kk++) {
            var ra: array<f32, 4>;
            var rb: array<f32, 4>;
            for (var i = 0u; i < 4u; i++) {
                // Rows lid.y + 16·i (not 4·lid.y + i): neighbouring threads read neighbouring words.
                ra[i] = tile_a[kk * 64u + lid.y + 16u * i];
                rb[i] = tile_b[kk * 64u + lid.x + 16u * i];
            }
            for (var i = 0u; i < 4u; i++) {
                for (var j = 0u; j < 4u; j++) {
                    acc[i * 4u + j] = fma(ra[i], rb[j], acc[i * 4u + j]);
                }
            }
        }
        workgroupBarrier();
    }
    let act = (p.flags >> 2u) & 3u;
    let c_base = p.c_off + batch * p.c_bs;
    for (var i = 0u; i < 4u; i++) {
        let gm = m0 + lid.y + 16u * i;
        for (var j = 0u; j < 4u; j++) {
            let gn = n0 + lid.x + 16u * j;
            if gm < p.m && gn < p.n {
                var r = p.alpha * acc[i * 4u + j];
                if (p.flags & FLAG_BIAS) != 0u {
                    r += bias[gn];
                }
                r = activate(r, act);
                let idx = c_base + gm * p.c_sm + gn * p.c_sn;
                if (p.flags & FLAG_ACCUMULATE) != 0u {
                    r += c[idx];
                }
                c[idx] = r;
            }
        }
    }
}
