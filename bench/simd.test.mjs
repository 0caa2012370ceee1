// The shipped wasm must use SIMD (built with -C target-feature=+simd128, .cargo/config.toml):
// the site's wasm files (dist/*.wasm, built by scripts/build-site.sh) and the benchmark's wasm
// (target/bench-web/pkg, built by bench/run.sh). Files that have not been built are skipped.
// Run: node --test bench/simd.test.mjs
import assert from 'node:assert/strict';
import fs from 'node:fs';
import path from 'node:path';
import { test } from 'node:test';
import { countSimd } from './wasm-simd.mjs';

const ROOT = path.resolve(import.meta.dirname, '..');
const distDir = path.join(ROOT, 'dist');
const dist = fs.existsSync(distDir) ? fs.readdirSync(distDir).filter((f) => f.endsWith('.wasm')).map((f) => path.join(distDir, f)) : [];
const benchWasm = path.join(ROOT, 'target/bench-web/pkg/clipdino_bench_web_bg.wasm');

/** Wasm files that hold the model crate: its f32 kernels must be vectorised. */
function holdsModel(bytes) {
  return Buffer.from(bytes).includes('candle');
}

function check(file) {
  const bytes = new Uint8Array(fs.readFileSync(file));
  assert.ok(WebAssembly.validate(bytes), `${file} is not valid WebAssembly`);
  const c = countSimd(bytes);
  const top = Object.entries(c.byOp).sort((a, b) => b[1] - a[1]).slice(0, 8).map(([k, v]) => `${k} ${v}`).join(', ');
  console.log(`${path.relative(ROOT, file)}: ${c.simd} SIMD instructions in ${c.simdFunctions} of ${c.functions} functions (${top}; f32x4.mul ${c.byOp['f32x4.mul'] ?? 0}, f32x4.add ${c.byOp['f32x4.add'] ?? 0}, i32x4.dot_i16x8_s ${c.byOp['i32x4.dot_i16x8_s'] ?? 0})`);
  assert.ok(c.functions > 0, 'no code section');
  assert.ok(c.simd > 0, `${file}: no 0xFD-prefixed (SIMD) instruction: was it built without +simd128?`);
  if (holdsModel(bytes)) {
    for (const op of ['f32x4.mul', 'f32x4.add', 'v128.load']) {
      assert.ok((c.byOp[op] ?? 0) >= 50, `${file}: only ${c.byOp[op] ?? 0} ${op}: the f32 kernels are not vectorised`);
    }
    // The integer kernel of ComputePath::Int (clipdino::intgemm): i16 dot products.
    assert.ok((c.byOp['i32x4.dot_i16x8_s'] ?? 0) >= 1, `${file}: no i32x4.dot_i16x8_s: the integer kernel is missing or not vectorised`);
  }
  return c;
}

test('the decoder counts exactly the SIMD instructions of a hand-written module', () => {
  // (func (param v128 v128) (result v128) local.get 0 local.get 1 f32x4.mul
  //   i32.const 253 drop  ;; 0xFD inside an immediate must not count
  //   v128.const 0xfd… f32x4.add)
  const body = [
    0x00, // no locals
    0x20, 0x00, 0x20, 0x01, 0xfd, 0xe6, 0x01, // f32x4.mul
    0x41, 0xfd, 0x01, 0x1a, // i32.const 253; drop
    0xfd, 0x0c, ...Array(16).fill(0xfd), // v128.const
    0xfd, 0xe4, 0x01, // f32x4.add
    0x0b,
  ];
  const mod = new Uint8Array([
    0x00, 0x61, 0x73, 0x6d, 0x01, 0x00, 0x00, 0x00,
    0x01, 0x07, 0x01, 0x60, 0x02, 0x7b, 0x7b, 0x01, 0x7b, // type: (v128, v128) -> v128
    0x03, 0x02, 0x01, 0x00, // function 0 has type 0
    0x0a, body.length + 2, 0x01, body.length, ...body,
  ]);
  assert.ok(WebAssembly.validate(mod));
  const c = countSimd(mod);
  assert.equal(c.simd, 3);
  assert.deepEqual(c.byOp, { 'f32x4.mul': 1, 'v128.const': 1, 'f32x4.add': 1 });
});

test('site wasm (dist/*.wasm) uses SIMD', { skip: dist.length === 0 && 'dist/ not built (scripts/build-site.sh)' }, () => {
  for (const f of dist) check(f);
});

test('benchmark wasm uses SIMD', { skip: !fs.existsSync(benchWasm) && 'bench wasm not built (bench/run.sh)' }, () => {
  check(benchWasm);
});
