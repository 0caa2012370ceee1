
// matmul.wgsl's right operand as a torch [n, k] weight in Q8 blocks (GGML's Q8_0 numbers): the
// int8 values of every row in order, four per word (little-endian), then from word p.b_scales
// one f16 scale per 32 values, two per word. Value = f32(int8) · scale, the product GGML's
// dequantization computes; k is a multiple of 32, so a word never straddles a block or a row.
@group(0) @binding(2) var<storage, read> b: array<u32>;

// The 16 k × 64 n tile from k0, n0: 256 words, one per thread (row li / 4, four values).
fn load_b_tile(li: u32, n0: u32, k0: u32, b_base: u32) {
    let row = li / 4u;
    let kk = 4u * (li % 4u);
    let gn = n0 + row;
    let gk = k0 + kk;
    var v = vec4<f32>(0.0);
    if gn < p.n && gk < p.k {
        let e = gn * p.k + gk;
        let word = b[e / 4u];
        let s = e / 32u;
        let scales = unpack2x16float(b[p.b_scales + s / 2u]);
        let scale = select(scales.x, scales.y, (s & 1u) == 1u);
        // Each byte moved to the top, then an arithmetic shift back: sign-extended int8.
        let q = bitcast<vec4<i32>>(vec4<u32>(word << 24u, word << 16u, word << 8u, word)) >> vec4<u32>(24u);
        v = vec4<f32>(q) * scale;
    }
    tile_b[kk * 64u + row] = v.x;
    tile_b[(kk + 1u) * 64u + row] = v.y;
    tile_b[(kk + 2u) * 64u + row] = v.z;
    tile_b[(kk + 3u) * 64u + row] = v.w;
}
