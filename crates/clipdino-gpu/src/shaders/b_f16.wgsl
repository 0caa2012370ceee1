
// matmul.wgsl's right operand as a torch [n, k] weight in f16, row-major, two values per word
// (the even one in the low half); k is even. WGSL's core unpack2x16float reads them: no
// `shader-f16` needed.
@group(0) @binding(2) var<storage, read> b: array<u32>;

// The 16 k × 64 n tile from k0, n0: 512 words, two per thread.
fn load_b_tile(li: u32, n0: u32, k0: u32, b_base: u32) {
    for (var i = 0u; i < 2u; i++) {
        let e = li + i * 256u;
        let row = e / 8u;
        let kk = 2u * (e % 8u);
        let gn = n0 + row;
        let gk = k0 + kk;
        var v = vec2<f32>(0.0);
        if gn < p.n && gk < p.k {
            v = unpack2x16float(b[(gn * p.k + gk) / 2u]);
        }
        tile_b[kk * 64u + row] = v.x;
        tile_b[(kk + 1u) * 64u + row] = v.y;
    }
}
