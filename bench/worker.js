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

const median = (v) => {
  const s = [...v].sort((a, b) => a - b);
  return s.length % 2 ? s[(s.length - 1) / 2] : (s[s.length / 2 - 1] + s[s.length / 2]) / 2;
};

// The multi-threaded build at several thread counts in one worker, their runs interleaved:
// every timed step runs once at each count in turn (`runs` rounds, the first round after a
// warm-up), so that a slow spell of the host falls on all counts alike instead of on whichever
// ran then. Profile steps, whose per-op sums are averaged by the suite, run whole at each count.
// Counts: 1 and one N > 1. Returns one result per count, shaped like `run`'s.
async function runInterleaved({ kind, runs, photo, weights, interleave }) {
  const wasmBindgen = await glue;
  const { default: init, WebBench, plan, memory_bytes } = wasmBindgen;
  const t0 = performance.now();
  const wasm = await init({ module_or_path: `${PKG}clipdino_bench_web_bg.wasm` });
  const initMs = performance.now() - t0;
  const rgb = await fetchBytes(photo.url);
  const bench = new WebBench(rgb, photo.width, photo.height);
  const steps = JSON.parse(plan(kind, runs));
  // One pool of the largest count, up the whole time; a count of 1 runs on this thread with
  // the pool idle (`step_sequential`), so no run pays for starting or ending pool workers.
  const pool = await wasmBindgen.set_threads(Math.max(...interleave));
  const used = interleave.map((n) => (n === 1 ? 1 : pool));
  const out = interleave.map(() => []);
  const once = async (c, step) => {
    const json = JSON.stringify(step);
    const r = JSON.parse(interleave[c] === 1 ? bench.step_sequential(json) : bench.step(json));
    r.memory.js_memory_buffer_bytes = wasm.memory.buffer.byteLength;
    return r;
  };
  for (const [i, step] of steps.entries()) {
    const t = performance.now();
    if (step.op === 'load') {
      for (const f of step.files) bench.add_file(f, await fetchBytes(weights + f));
      const r = await once(0, step);
      out.forEach((o) => o.push(r));
    } else if (step.op === 'profile') {
      for (const c of interleave.keys()) out[c].push(await once(c, step));
    } else {
      const rounds = interleave.map(() => []);
      for (let k = 0; k < step.runs; k++) {
        for (const c of interleave.keys()) {
          rounds[c].push(await once(c, { ...step, runs: 1, warmup: k === 0 && step.warmup }));
        }
      }
      rounds.forEach((rs, c) => {
        const v = rs.map((r) => r.runs_ms[0]);
        out[c].push({
          ...rs[rs.length - 1], runs_ms: v, median_ms: median(v), min_ms: Math.min(...v), max_ms: Math.max(...v),
          interleaved_with: interleave,
        });
      });
    }
    postMessage({
      type: 'progress',
      line: `[wasm mt×${interleave.join('/')} interleaved ${kind}] ${i + 1}/${steps.length} ${JSON.stringify(step).slice(0, 70)} ` +
        `${fmt(performance.now() - t)} ms (medians ${out.map((o) => fmt(o[o.length - 1].median_ms)).join(' / ')} ms, ` +
        `memory ${(memory_bytes() / 2 ** 20).toFixed(0)} MiB)`,
    });
  }
  bench.free();
  await wasmBindgen.set_threads(1); // ends the pool's workers
  return interleave.map((n, c) => ({
    init_ms: initMs, steps: out[c], user_agent: navigator.userAgent,
    hardware_concurrency: navigator.hardwareConcurrency, build: 'multi-threaded', threads: used[c], interleaved: true,
  }));
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
      const result = e.data.interleave ? await runInterleaved(e.data) : await run(e.data);
      postMessage({ type: 'done', result });
    } catch (err) {
      postMessage({ type: 'error', message: String((err && err.stack) || err) });
    }
  };
}
