
// matmul.wgsl's right operand as f32 at any strides (f32 weights, kᵀ and v out of the qkv buffer).
@group(0) @binding(2) var<storage, read> b: array<f32>;

// The 16 k × 64 n tile from k0, n0: four values per thread, k the fastest index.
fn load_b_tile(li: u32, n0: u32, k0: u32, b_base: u32) {
    for (var i = 0u; i < 4u; i++) {
        let e = li + i * 256u;
        let row = e / 16u;
        let kk = e % 16u;
        let gk = k0 + kk;
        let gn = n0 + row;
        var v = 0.0;
        if gn < p.n && gk < p.k {
            v = b[b_base + gk * p.b_sk + gn * p.b_sn];
        }
        tile_b[kk * 64u + row] = v;
    }
}
