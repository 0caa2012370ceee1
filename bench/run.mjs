// Benchmark driver (called by bench/run.sh after the builds, weights and photo exist):
//  1. the native run of the same steps (`clipdino bench`, one thread), which also dumps the
//     image-tower inputs;
//  2. the ONNX export of the open_clip image tower at those input sizes (bench/export_onnx.py);
//  3. headless Chromium (fresh profile) serving everything from 127.0.0.1: the clipdino wasm
//     steps in a Web Worker, a fresh worker for the peak memory of the app's path, then
//     onnxruntime-web (wasm, SIMD, 1 thread) on the exported towers;
//  4. bench/results.json and a table on stdout.
// Options: --runs N (5), --plan full|smoke|compare|threads|…, --data DIR (target/bench), --pkg DIR
// (target/bench-web/pkg), --pkg-mt DIR (the multi-threaded build, target/bench-web/pkg-mt),
// --threads N (2: the thread count compared with 1 by --plan threads), --native-bin PATH (the
// clipdino CLI), --out FILE (bench/results.json), --python PATH,
// --skip-native / --skip-export / --skip-wasm / --skip-memory / --skip-ort (reuse earlier outputs),
// --memory-plan memory_default|memory (the bundle of the fresh-worker memory run: the published
// `default` recipe, QUANTIZATION.md — the default — or the former Q4_0 bundle).
// `--plan threads` measures thread scaling in one run (native, both wasm builds, onnxruntime-web
// at 1 and N threads) and stores it as `threads` in the results file, keeping the rest.
// `--plan precision` loads the app's two precisions (the `default` bundle on the integer path,
// the F16 bundle on f32) --runs times each, alternately, in fresh single-threaded workers,
// through labels, the 448 windows' encode, segment and K-Means, and stores the load times and
// wasm memory as `precision` in the results file, keeping the rest (browser only).
// `--plan gpu` (after bench/run.sh has run the GPU benchmark natively on lavapipe and in the
// browser on SwiftShader, gpu-native.json / gpu-wasm.json in --data): onnxruntime-web's WebGPU
// execution provider on the exported 448×448 tower in the same headless browser (WebGPU
// enabled), stored with both as `gpu` in the results file, keeping the rest.
import { execFileSync, spawnSync } from 'node:child_process';
import fs from 'node:fs';
import http from 'node:http';
import os from 'node:os';
import path from 'node:path';
import { chromium } from 'playwright-core';
import { formatGpu, formatPrecision, formatTable, formatThreads } from './table.mjs';

const ROOT = path.resolve(import.meta.dirname, '..');

function parseArgs(argv) {
  const a = {
    runs: 5, plan: 'full', data: 'target/bench', pkg: 'target/bench-web/pkg', pkgMt: 'target/bench-web/pkg-mt',
    threads: 2, nativeBin: 'target/release/clipdino', out: 'bench/results.json',
    python: process.env.PYTHON ?? 'python3', skip: new Set(), memoryPlan: 'memory_default',
  };
  for (let i = 0; i < argv.length; i++) {
    const k = argv[i];
    const v = () => {
      if (i + 1 >= argv.length) throw new Error(`${k} needs a value`);
      return argv[++i];
    };
    if (k === '--runs') a.runs = Number(v());
    else if (k === '--plan') a.plan = v();
    else if (k === '--data') a.data = v();
    else if (k === '--pkg') a.pkg = v();
    else if (k === '--pkg-mt') a.pkgMt = v();
    else if (k === '--threads') a.threads = Number(v());
    else if (k === '--native-bin') a.nativeBin = v();
    else if (k === '--out') a.out = v();
    else if (k === '--python') a.python = v();
    else if (k === '--memory-plan') a.memoryPlan = v();
    else if (k.startsWith('--skip-')) a.skip.add(k.slice(7));
    else throw new Error(`unknown option ${k}`);
  }
  if (!Number.isInteger(a.runs) || a.runs < 1) throw new Error('--runs must be a positive integer');
  if (!Number.isInteger(a.threads) || a.threads < 2) throw new Error('--threads must be an integer ≥ 2');
  for (const key of ['data', 'pkg', 'pkgMt', 'nativeBin', 'out']) a[key] = path.resolve(ROOT, a[key]);
  return a;
}

/** Load average and a timestamp, recorded around every phase (other jobs share the 2 cores). */
function load(phase) {
  const [l1, l5, l15] = os.loadavg();
  return { phase, at: new Date().toISOString(), loadavg: [l1, l5, l15].map((x) => Number(x.toFixed(2))) };
}

const TYPES = {
  '.html': 'text/html; charset=utf-8', '.js': 'text/javascript; charset=utf-8',
  '.mjs': 'text/javascript; charset=utf-8', '.wasm': 'application/wasm', '.json': 'application/json',
};

/** Static files from a few roots, on 127.0.0.1 only. Every response makes the page cross-origin
 * isolated (COOP/COEP), so that the multi-threaded builds may share memory. */
function serve(routes) {
  const server = http.createServer((req, res) => {
    const url = new URL(req.url, 'http://x');
    if (process.env.BENCH_DEBUG) console.error(`GET ${req.url}`);
    const route = Object.keys(routes).find((p) => url.pathname.startsWith(p));
    if (!route) return res.writeHead(404).end();
    const root = path.resolve(routes[route]);
    const file = path.resolve(root, '.' + path.posix.normalize('/' + decodeURIComponent(url.pathname.slice(route.length))));
    if (!file.startsWith(root + path.sep) || !fs.existsSync(file) || fs.statSync(file).isDirectory()) {
      return res.writeHead(404).end('not found');
    }
    res.writeHead(200, {
      'content-type': TYPES[path.extname(file)] ?? 'application/octet-stream',
      'content-length': fs.statSync(file).size,
      'cache-control': 'no-store',
      'cross-origin-opener-policy': 'same-origin',
      'cross-origin-embedder-policy': 'require-corp',
    });
    fs.createReadStream(file).pipe(res);
  });
  return new Promise((resolve) => server.listen(0, '127.0.0.1', () => resolve(server)));
}

function chromiumVersion() {
  try {
    return execFileSync('/usr/bin/chromium', ['--version'], { encoding: 'utf8', stdio: ['ignore', 'pipe', 'ignore'] }).trim();
  } catch {
    return null;
  }
}

function machine() {
  const cpuinfo = fs.readFileSync('/proc/cpuinfo', 'utf8');
  const model = /model name\s*:\s*(.*)/.exec(cpuinfo)?.[1] ?? null;
  const flags = /flags\s*:\s*(.*)/.exec(cpuinfo)?.[1]?.split(' ') ?? [];
  return {
    nproc: Number(execFileSync('nproc', { encoding: 'utf8' }).trim()),
    cpu_model: model,
    simd_flags: ['sse4_2', 'avx', 'avx2', 'fma', 'avx512f', 'avx512bw', 'avx512_vnni'].filter((f) => flags.includes(f)),
    mem_total_gib: Number((os.totalmem() / 2 ** 30).toFixed(1)),
    chromium: chromiumVersion(),
    node: process.version,
    kernel: os.release(),
  };
}

/** The commit measured, and uncommitted changes in the code that is timed. */
function gitState() {
  const git = (...args) => {
    try {
      return execFileSync('git', args, { cwd: ROOT, encoding: 'utf8', stdio: ['ignore', 'pipe', 'ignore'] }).trim();
    } catch {
      return null;
    }
  };
  const dirty = git('status', '--porcelain', '--', 'crates/clipdino', 'crates/clipdino-bench-web', 'crates/clipdino-cli', 'crates/clipdino-gpu', 'Cargo.lock');
  return { commit: git('rev-parse', 'HEAD'), uncommitted: dirty ? dirty.split('\n') : [] };
}

function runNative(a, photo, loads, threads = 1) {
  loads.push(load(`native start (${threads} thread${threads > 1 ? 's' : ''})`));
  const out = path.join(a.data, a.plan === 'threads' ? `native-threads-${threads}t.json` : 'native.json');
  const args = [
    'bench', '--weights', path.join(a.data, 'weights'), '--rgb', photo.file, '--width', String(photo.width),
    '--height', String(photo.height), '--runs', String(a.runs), '--plan', a.plan,
    '--dump-inputs', path.join(a.data, 'inputs'), '--out', out,
  ];
  const r = spawnSync(a.nativeBin, args, {
    stdio: 'inherit',
    env: { ...process.env, RAYON_NUM_THREADS: String(threads), CANDLE_NUM_THREADS: String(threads) },
  });
  if (r.status !== 0) throw new Error(`native benchmark failed (${r.status ?? r.signal})`);
  loads.push(load('native end'));
  return JSON.parse(fs.readFileSync(out, 'utf8'));
}

/** Distinct tower input sizes `[H, W]` of the native run's tower steps. */
function towerSizes(native) {
  const seen = new Map();
  for (const s of native.steps) {
    if (s.step.op === 'tower' && s.compute === 'f32') seen.set(`${s.input[2]}x${s.input[3]}`, [s.input[2], s.input[3]]);
  }
  return [...seen.values()];
}

function runExport(a, sizes, loads) {
  loads.push(load('onnx export start'));
  const r = spawnSync(a.python, [
    path.join(ROOT, 'bench/export_onnx.py'), '--weights', path.join(a.data, 'weights'),
    '--out', path.join(a.data, 'onnx'), '--inputs', path.join(a.data, 'inputs'),
    '--sizes', sizes.map(([h, w]) => `${h}x${w}`).join(','),
  ], { stdio: 'inherit' });
  if (r.status !== 0) throw new Error(`ONNX export failed (${r.status ?? r.signal})`);
  loads.push(load('onnx export end'));
}

async function browserRuns(a, photo, sizes, loads) {
  const server = await serve({
    '/bench/': path.join(ROOT, 'bench'),
    '/pkg-mt/': a.pkgMt,
    '/pkg/': a.pkg,
    '/ort/': path.join(ROOT, 'node_modules/onnxruntime-web/dist'),
    '/data/': a.data,
  });
  const base = `http://127.0.0.1:${server.address().port}`;
  const profile = fs.mkdtempSync(path.join(os.tmpdir(), 'clipdino-bench-profile-'));
  const context = await chromium.launchPersistentContext(profile, {
    executablePath: '/usr/bin/chromium',
    headless: true,
    args: [
      '--headless', '--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run',
      '--disable-background-networking', '--disable-component-update', '--disable-sync',
      // WebGPU (SwiftShader here) for the GPU plan's peer, as in the GPU crate's browser tests.
      ...(a.plan === 'gpu' ? ['--enable-unsafe-webgpu'] : []),
    ],
  });
  const out = {};
  try {
    const page = await context.newPage();
    page.on('console', (m) => console.error(m.text()));
    page.on('pageerror', (e) => console.error(`page error: ${e}`));
    await page.goto(`${base}/bench/index.html`);
    await page.waitForFunction(() => window.bench !== undefined);
    const ours = (kind, { mt = false, threads = 1 } = {}) => page.evaluate(
      ([script, cfg]) => window.bench.run(script, cfg),
      [mt ? 'worker.js?mt' : 'worker.js', {
        kind, runs: a.runs, threads,
        photo: { url: '/data/photo.rgb', width: photo.width, height: photo.height }, weights: '/data/weights/',
      }],
    );
    const ortModels = (filter) => {
      const models = [];
      for (const [h, w] of sizes.filter(filter)) {
        for (const variant of ['f32', 'int8']) {
          models.push({
            name: `vit_b16_visual_${h}x${w}_${variant}`, variant, shape: [1, 3, h, w],
            url: `/data/onnx/vit_b16_visual_${h}x${w}_${variant}.onnx`, input: `/data/inputs/tower_${h}x${w}.f32`,
          });
        }
      }
      return models;
    };
    if (a.plan === 'gpu') {
      // The peer of the GPU benchmark: onnxruntime-web's WebGPU execution provider, f32 tower.
      const models = ortModels(([h, w]) => h === 448 && w === 448).filter((m) => m.variant === 'f32');
      loads.push(load('onnxruntime-web webgpu start'));
      try {
        out.ort_webgpu = await page.evaluate((cfg) => window.bench.run('ort-worker.js?webgpu', cfg), { models, runs: a.runs, warmup: a.runs > 1 });
      } catch (e) {
        // Recorded, not fatal: the GPU benchmark's own results stand without the peer.
        out.ort_webgpu = { error: String(e?.message ?? e) };
        console.error(`onnxruntime-web webgpu failed: ${out.ort_webgpu.error}`);
      }
      loads.push(load('onnxruntime-web webgpu end'));
      return out;
    }
    if (a.plan === 'precision') {
      // A fresh worker per run (the peak is the run's own); the two alternate, so that a
      // change in the machine's load falls on both.
      out.precision = { memory_default: [], memory_high: [] };
      for (let i = 0; i < a.runs; i++) {
        for (const kind of ['memory_default', 'memory_high']) {
          loads.push(load(`${kind} run ${i + 1} start`));
          out.precision[kind].push(await ours(kind));
        }
      }
      loads.push(load('precision end'));
      return out;
    }
    if (a.plan === 'threads') {
      // Thread scaling, in one run: both wasm builds at 1 thread, the multi-threaded one at N,
      // the app path's peak memory at N, onnxruntime-web at 1 and N.
      out.threads = { wasm: [], wasm_memory: null, ort: [] };
      loads.push(load('wasm single-threaded build start'));
      out.threads.wasm.push(await ours('threads'));
      // The multi-threaded build at 1 and N threads in one worker, run by run in turn (see
      // runInterleaved in worker.js): the host's slow spells fall on both counts.
      loads.push(load(`wasm multi-threaded build, 1 and ${a.threads} threads interleaved, start`));
      out.threads.wasm.push(...await page.evaluate(
        ([script, cfg]) => window.bench.run(script, cfg),
        ['worker.js?mt', {
          kind: 'threads', runs: a.runs, interleave: [1, a.threads],
          photo: { url: '/data/photo.rgb', width: photo.width, height: photo.height }, weights: '/data/weights/',
        }],
      ));
      loads.push(load('wasm memory run (multi-threaded) start'));
      out.threads.wasm_memory = await ours(a.memoryPlan, { mt: true, threads: a.threads });
      if (!a.skip.has('ort')) {
        const models = ortModels(([h, w]) => h === 448 && w === 448);
        for (const threads of [1, a.threads]) {
          loads.push(load(`onnxruntime-web ${threads} thread(s) start`));
          out.threads.ort.push(await page.evaluate((cfg) => window.bench.run('ort-worker.js', cfg), { models, runs: a.runs, threads }));
        }
      }
      loads.push(load('threads end'));
      return out;
    }
    if (!a.skip.has('wasm')) {
      loads.push(load('wasm start'));
      out.wasm = await ours(a.plan);
      loads.push(load('wasm end'));
    }
    if (!a.skip.has('memory')) {
      loads.push(load('wasm memory run start'));
      out.wasm_memory = await ours(a.memoryPlan);
      loads.push(load('wasm memory run end'));
    }
    if (!a.skip.has('ort')) {
      const models = ortModels(() => true);
      loads.push(load('onnxruntime-web start'));
      out.ort = await page.evaluate((cfg) => window.bench.run('ort-worker.js', cfg), { models, runs: a.runs });
      loads.push(load('onnxruntime-web end'));
    }
  } finally {
    await context.close();
    server.close();
    fs.rmSync(profile, { recursive: true, force: true });
  }
  return out;
}

/** A deterministic 448×448 tower input for the peer when no Rust run dumped one (the values do
 * not change the timings). */
function ensureTowerInput(a, h, w) {
  const file = path.join(a.data, 'inputs', `tower_${h}x${w}.f32`);
  if (!fs.existsSync(file)) {
    fs.mkdirSync(path.dirname(file), { recursive: true });
    const v = new Float32Array(3 * h * w).map((_, i) => Math.sin(i * 0.017) * 1.5);
    fs.writeFileSync(file, Buffer.from(v.buffer));
  }
}

async function gpuPlan(a) {
  const prev = fs.existsSync(a.out) ? JSON.parse(fs.readFileSync(a.out, 'utf8')) : {};
  const loads = [load('start')];
  const read = (name) => {
    const file = path.join(a.data, name);
    return fs.existsSync(file) ? JSON.parse(fs.readFileSync(file, 'utf8')) : null;
  };
  const sizes = [[448, 448]];
  let browser = {};
  if (!a.skip.has('ort')) {
    ensureTowerInput(a, 448, 448);
    if (!a.skip.has('export')) runExport(a, sizes, loads);
    browser = await browserRuns(a, null, sizes, loads);
  }
  loads.push(load('end'));
  const gpu = {
    generated: new Date().toISOString(), runs: a.runs, machine: machine(), git: gitState(), load_average: loads,
    native: read('gpu-native.json'), browser: read('gpu-wasm.json'),
    ort_webgpu: browser.ort_webgpu ?? prev.gpu?.ort_webgpu ?? null,
  };
  fs.writeFileSync(a.out, JSON.stringify({ ...prev, gpu }, null, 1) + '\n');
  console.log(formatGpu({ ...prev, gpu }));
  console.log(`\nwrote ${path.relative(ROOT, a.out)} (gpu)`);
}

async function main() {
  const a = parseArgs(process.argv.slice(2));
  if (a.plan === 'gpu') return gpuPlan(a);
  const photoMeta = JSON.parse(fs.readFileSync(path.join(a.data, 'photo.json'), 'utf8'));
  const photo = { ...photoMeta, file: path.join(a.data, 'photo.rgb') };
  const prev = fs.existsSync(a.out) ? JSON.parse(fs.readFileSync(a.out, 'utf8')) : {};
  const loads = [load('start')];
  if (a.plan === 'precision') {
    const browser = await browserRuns(a, photo, [], loads);
    loads.push(load('end'));
    const precision = {
      generated: new Date().toISOString(), runs: a.runs, machine: machine(), git: gitState(),
      load_average: loads, ...browser.precision,
    };
    fs.writeFileSync(a.out, JSON.stringify({ ...prev, precision }, null, 1) + '\n');
    console.log(formatPrecision(precision));
    console.log(`\nwrote ${path.relative(ROOT, a.out)} (precision)`);
    return;
  }
  if (a.plan === 'threads') {
    const native = [1, a.threads].map((n) => (a.skip.has('native')
      ? JSON.parse(fs.readFileSync(path.join(a.data, `native-threads-${n}t.json`), 'utf8'))
      : runNative(a, photo, loads, n)));
    const sizes = [[448, 448]];
    if (!a.skip.has('export') && !a.skip.has('ort')) runExport(a, sizes, loads);
    const browser = await browserRuns(a, photo, sizes, loads);
    loads.push(load('end'));
    const threads = {
      generated: new Date().toISOString(), runs: a.runs, threads: a.threads, machine: machine(), git: gitState(),
      load_average: loads, native, ...browser.threads,
    };
    fs.writeFileSync(a.out, JSON.stringify({ ...prev, threads }, null, 1) + '\n');
    console.log(formatThreads(threads));
    console.log(`\nwrote ${path.relative(ROOT, a.out)} (threads)`);
    return;
  }
  const native = a.skip.has('native')
    ? JSON.parse(fs.readFileSync(path.join(a.data, 'native.json'), 'utf8'))
    : runNative(a, photo, loads);
  const sizes = towerSizes(native);
  if (!a.skip.has('export') && !a.skip.has('ort')) runExport(a, sizes, loads);
  const exportFile = path.join(a.data, 'onnx/export.json');
  const onnxExport = fs.existsSync(exportFile) ? JSON.parse(fs.readFileSync(exportFile, 'utf8')) : null;
  const browser = await browserRuns(a, photo, sizes, loads);
  loads.push(load('end'));
  const results = {
    generated: new Date().toISOString(),
    runs: a.runs,
    plan: a.plan,
    machine: machine(),
    git: gitState(),
    photo: photoMeta,
    load_average: loads,
    native,
    wasm: browser.wasm ?? prev.wasm ?? null,
    wasm_memory: browser.wasm_memory ?? prev.wasm_memory ?? null,
    ort: browser.ort ?? prev.ort ?? null,
    onnx_export: onnxExport && { ...onnxExport, models: onnxExport.models.map(({ torch_pooled, ...m }) => m) },
  };
  fs.writeFileSync(a.out, JSON.stringify(results, null, 1) + '\n');
  console.log(formatTable(results));
  console.log(`\nwrote ${path.relative(ROOT, a.out)}`);
}

main().catch((e) => {
  console.error(e);
  process.exit(1);
});
