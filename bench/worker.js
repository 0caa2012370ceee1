// The clipdino benchmark in a Web Worker: the wasm build of crates/clipdino-bench-web runs the
// steps of `plan(kind, runs)` one by one; weight files are fetched here and copied into wasm
// memory before their load step (the copy is timed separately).
// `worker.js?mt` runs the multi-threaded build (/pkg-mt/, needs a cross-origin isolated page)
// with the `threads` of its config; its pool threads run this file too (named
// `clipdino-pool-N`, see crates/clipdino-pool).
const MT = new URLSearchParams(self.location.search).has('mt');
const PKG = MT ? '/pkg-mt/' : '/pkg/';
// No top-level await: the message handlers below must exist before the glue is imported, or a
// message posted meanwhile (the driver posts the config at once) finds no handler and is lost.
const glue = import(`${PKG}clipdino_bench_web.js`);

const fmt = (v) => (typeof v === 'number' ? v.toFixed(1) : String(v));

async function fetchBytes(url) {
  const r = await fetch(url);
  if (!r.ok) throw new Error(`${url}: HTTP ${r.status}`);
  return new Uint8Array(await r.arrayBuffer());
}

async function run({ kind, runs, photo, weights, threads = 1 }) {
  const wasmBindgen = await glue;
  const { default: init, WebBench, plan, memory_bytes } = wasmBindgen;
  const t0 = performance.now();
  const wasm = await init({ module_or_path: `${PKG}clipdino_bench_web_bg.wasm` });
  const initMs = performance.now() - t0;
  const usedThreads = MT ? await wasmBindgen.set_threads(threads) : 1;
  const rgb = await fetchBytes(photo.url);
  const bench = new WebBench(rgb, photo.width, photo.height);
  const steps = JSON.parse(plan(kind, runs));
  const results = [];
  for (const [i, step] of steps.entries()) {
    let copyMs = null;
    if (step.op === 'load') {
      copyMs = 0;
      for (const f of step.files) {
        let bytes = await fetchBytes(weights + f);
        const t = performance.now();
        bench.add_file(f, bytes);
        copyMs += performance.now() - t;
        bytes = null;
      }
    }
    const t = performance.now();
    const r = JSON.parse(bench.step(JSON.stringify(step)));
    if (copyMs !== null) r.copy_into_wasm_ms = copyMs;
    r.memory.js_memory_buffer_bytes = wasm.memory.buffer.byteLength;
    results.push(r);
    postMessage({
      type: 'progress',
      line: `[wasm${MT ? ` mt×${usedThreads}` : ''} ${kind}] ${i + 1}/${steps.length} ${JSON.stringify(step).slice(0, 70)} ${fmt(performance.now() - t)} ms ` +
        `(median ${fmt(r.median_ms)} ms, memory ${(memory_bytes() / 2 ** 20).toFixed(0)} MiB)`,
    });
  }
  bench.free();
  if (MT) await wasmBindgen.set_threads(1); // ends the pool's workers
  return {
    init_ms: initMs, steps: results, user_agent: navigator.userAgent,
    hardware_concurrency: navigator.hardwareConcurrency, build: MT ? 'multi-threaded' : 'single-threaded',
    threads: usedThreads,
  };
}

if (self.name.startsWith('clipdino-pool-')) {
  self.onmessage = async (e) => {
    self.onmessage = null;
    const [module, memory, id] = e.data;
    const wasmBindgen = await glue;
    await wasmBindgen.default({ module_or_path: module, memory });
    postMessage('up');
    wasmBindgen.clipdino_pool_thread(id);
    close();
  };
} else {
  self.onmessage = async (e) => {
    try {
      postMessage({ type: 'done', result: await run(e.data) });
    } catch (err) {
      postMessage({ type: 'error', message: String((err && err.stack) || err) });
    }
  };
}
