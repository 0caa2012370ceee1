// The peer: onnxruntime-web (wasm backend, SIMD; one thread, or `threads` of the config on a
// cross-origin isolated page) running the open_clip ViT-B/16 image tower exported by
// bench/export_onnx.py, in a Web Worker. Its .wasm files are served from node_modules (no CDN).
// `ort-worker.js?webgpu`: the WebGPU execution provider instead (its own bundle), for the GPU plan.
// The bundle is imported without a top-level await: the page posts its message right away, and
// a module worker suspended in a top-level await has no `onmessage` yet (the message is lost).
const WEBGPU = self.location.search.includes('webgpu');
const ortReady = import(WEBGPU ? '/ort/ort.webgpu.min.mjs' : '/ort/ort.wasm.min.mjs').then((m) => {
  m.env.wasm.wasmPaths = '/ort/';
  m.env.wasm.numThreads = 1;
  m.env.wasm.proxy = false;
  return m;
});
let ort;

const fmt = (v) => v.toFixed(1);

async function fetchBytes(url) {
  const r = await fetch(url);
  if (!r.ok) throw new Error(`${url}: HTTP ${r.status}`);
  return new Uint8Array(await r.arrayBuffer());
}

function median(v) {
  const s = [...v].sort((a, b) => a - b);
  const n = s.length;
  return n % 2 ? s[(n - 1) / 2] : 0.5 * (s[n / 2 - 1] + s[n / 2]);
}

async function run({ models, runs, threads = 1, warmup = true }) {
  ort = await ortReady;
  ort.env.wasm.numThreads = threads;
  const out = [];
  for (const m of models) {
    const bytes = await fetchBytes(m.url);
    const input = new Float32Array((await fetchBytes(m.input)).buffer);
    const t0 = performance.now();
    const session = await ort.InferenceSession.create(bytes, {
      executionProviders: [WEBGPU ? 'webgpu' : 'wasm'],
      graphOptimizationLevel: 'all',
    });
    const createMs = performance.now() - t0;
    const feeds = { pixels: new ort.Tensor('float32', input, m.shape) };
    // warm-up (the GPU plan skips it: on a CPU emulation one run takes minutes; its single run
    // then includes the shader compilation)
    if (warmup) await session.run(feeds);
    const times = [];
    let pooled = null;
    for (let i = 0; i < runs; i++) {
      const t = performance.now();
      const r = await session.run(feeds);
      times.push(performance.now() - t);
      pooled = Array.from(r.pooled.data);
    }
    await session.release();
    const res = {
      name: m.name, size: m.shape.slice(2), variant: m.variant, bytes: bytes.length,
      create_ms: createMs, warmup, median_ms: median(times), min_ms: Math.min(...times), max_ms: Math.max(...times),
      runs_ms: times, pooled,
    };
    out.push(res);
    postMessage({ type: 'progress', line: `[ort] ${m.name}: median ${fmt(res.median_ms)} ms (session ${fmt(createMs)} ms)` });
  }
  let adapter = null;
  if (WEBGPU) {
    const a = await navigator.gpu?.requestAdapter();
    const info = a?.info;
    adapter = info ? { vendor: info.vendor, architecture: info.architecture, device: info.device, description: info.description } : null;
  }
  return {
    ort_version: ort.env.versions?.web ?? null, num_threads: ort.env.wasm.numThreads,
    execution_provider: WEBGPU ? 'webgpu' : 'wasm', adapter, models: out,
  };
}

self.onmessage = async (e) => {
  try {
    postMessage({ type: 'done', result: await run(e.data) });
  } catch (err) {
    postMessage({ type: 'error', message: String((err && err.stack) || err) });
  }
};
