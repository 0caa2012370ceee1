// Text tables from bench/results.json (used by run.mjs; `node bench/table.mjs [results.json]`
// reprints them). Ratios are medians divided by medians.
import fs from 'node:fs';
import path from 'node:path';

const MB = 1e6;
const MiB = 2 ** 20;

const f = (v, d = 1) => (v === null || v === undefined || Number.isNaN(v) ? '-' : Number(v).toFixed(d));
const ratio = (a, b) => (a && b ? a / b : null);
const x = (v) => (v === null ? '-' : `${v.toFixed(2)}×`);

function table(head, rows) {
  const all = [head, ...rows].map((r) => r.map((c) => String(c ?? '-')));
  const w = head.map((_, i) => Math.max(...all.map((r) => r[i].length)));
  const line = (r) => '| ' + r.map((c, i) => (i === 0 ? c.padEnd(w[i]) : c.padStart(w[i]))).join(' | ') + ' |';
  return [line(all[0]), '|' + w.map((n, i) => (i === 0 ? ':' : '') + '-'.repeat(n) + (i === 0 ? '' : ':')).join('|') + '|', ...all.slice(1).map(line)].join('\n');
}

/** Pairs of (wasm, native) results of the same step, matched by position and checked. */
function pairs(res) {
  const w = res.wasm?.steps ?? [];
  const n = res.native?.steps ?? [];
  const out = [];
  for (let i = 0; i < Math.max(w.length, n.length); i++) {
    const a = w[i];
    const b = n[i];
    if (a && b && JSON.stringify(a.step) !== JSON.stringify(b.step)) throw new Error(`step ${i} differs between wasm and native`);
    out.push({ step: (a ?? b).step, wasm: a, native: b, model: (a ?? b).model, compute: (a ?? b).compute });
  }
  return out;
}

function maxAbsDiff(a, b) {
  if (!a || !b || a.length !== b.length) return null;
  return Math.max(...a.map((v, i) => Math.abs(v - b[i])));
}

function cosine(a, b) {
  if (!a || !b || a.length !== b.length) return null;
  let ab = 0, aa = 0, bb = 0;
  for (let i = 0; i < a.length; i++) {
    ab += a[i] * b[i];
    aa += a[i] * a[i];
    bb += b[i] * b[i];
  }
  return ab / Math.sqrt(aa * bb);
}

export function summarize(res) {
  const P = pairs(res);
  const med = (s) => s?.median_ms ?? null;
  const ort = res.ort?.models ?? [];
  const ortAt = (h, w, variant) => ort.find((m) => m.size[0] === h && m.size[1] === w && m.variant === variant);
  const s = {};
  s.loads = P.filter((p) => p.step.op === 'load').map((p) => ({
    label: p.step.label, compute: p.step.compute, bytes: (p.wasm ?? p.native).bytes,
    copy: p.wasm?.copy_into_wasm_ms ?? null,
    wasm: med(p.wasm), wasm_parse: p.wasm?.parse.median_ms, wasm_build: p.wasm?.build.median_ms,
    native: med(p.native),
  }));
  s.encode = P.filter((p) => p.step.op === 'encode').map((p) => ({
    preset: p.step.preset, compute: p.compute, processed: (p.wasm ?? p.native).processed, windows: (p.wasm ?? p.native).windows,
    wasm: med(p.wasm), native: med(p.native),
  }));
  s.tower = P.filter((p) => p.step.op === 'tower').map((p) => {
    const r = p.wasm ?? p.native;
    const [h, w] = [r.input[2], r.input[3]];
    const o32 = ortAt(h, w, 'f32');
    const o8 = ortAt(h, w, 'int8');
    return {
      preset: p.step.preset, model: p.model, compute: p.compute, h, w, tokens: r.tokens,
      wasm: med(p.wasm), native: med(p.native), ort_f32: o32?.median_ms ?? null, ort_int8: o8?.median_ms ?? null,
      pooled_vs_ort_f32: p.compute === 'f32' ? maxAbsDiff(p.wasm?.pooled, o32?.pooled) : null,
      cos_vs_ort_f32: cosine(p.wasm?.pooled, o32?.pooled),
      wasm_vs_native_pooled: maxAbsDiff(p.wasm?.pooled, p.native?.pooled),
    };
  });
  s.labels = P.filter((p) => p.step.op === 'labels').map((p) => ({
    labels: p.step.labels, templates: p.step.templates, compute: p.compute, prompts: (p.wasm ?? p.native).prompts, wasm: med(p.wasm), native: med(p.native),
  }));
  s.cheap = ['head', 'segment', 'kmeans'].flatMap((op) => P.filter((p) => p.step.op === op).map((p) => ({
    op, preset: p.step.preset, compute: p.compute, wasm: med(p.wasm), native: med(p.native),
  })));
  s.profiles = P.filter((p) => p.step.op === 'profile').map((p) => ({ model: p.model, compute: p.compute, wasm: p.wasm, native: p.native }));
  s.kernels = P.filter((p) => p.step.op === 'kernels').map((p) => ({ wasm: p.wasm, native: p.native }))[0] ?? null;
  const mem = res.wasm_memory?.steps ?? [];
  s.memory = mem.map((m) => ({ op: m.step.op, preset: m.step.preset ?? '', bytes: m.memory.wasm_memory_bytes }));
  s.peak_memory = mem.length ? Math.max(...mem.map((m) => m.memory.wasm_memory_bytes)) : null;
  s.full_run_memory = res.wasm?.steps?.length ? Math.max(...res.wasm.steps.map((m) => m.memory.wasm_memory_bytes)) : null;

  // targets: the app's path is the integer kernel when the run measured it, else f32
  const t448f = s.tower.find((t) => t.preset === '448-window' && t.compute === 'f32');
  const t448i = s.tower.find((t) => t.preset === '448-window' && t.compute === 'int');
  const t448 = t448i ?? t448f;
  const app = t448?.compute ?? 'f32';
  const seg = Object.fromEntries(s.cheap.filter((c) => c.op === 'segment' && c.compute === app).map((c) => [c.preset, c.wasm]));
  const label1 = s.labels.find((l) => l.labels === 1 && l.templates === 'fast' && l.compute === app);
  const dl = s.loads.find((l) => l.label === 'gguf default') ?? s.loads.find((l) => l.label === 'gguf q4_0');
  const worstSeg = Math.max(...Object.values(seg).filter((v) => v !== null && v !== undefined));
  s.targets = [
    { target: `image tower 448×448, wasm / native (both ${app})`, limit: 1.5, value: ratio(t448?.wasm, t448?.native), unit: '×' },
    ...(t448i && t448f ? [{ target: 'image tower 448×448, wasm int / native f32 (each side at its fastest)', limit: 1.5, value: ratio(t448i.wasm, t448f.native), unit: '×' }] : []),
    { target: `image tower 448×448, ours (${app}) / onnxruntime-web f32`, limit: 0.8, value: ratio(t448?.wasm, t448f?.ort_f32), unit: '×' },
    { target: `image tower 448×448, ours (${app}) / onnxruntime-web int8`, limit: 0.8, value: ratio(t448?.wasm, t448f?.ort_int8), unit: '×' },
    { target: 'recolour after a label edit (segment, 10 labels, slowest preset)', limit: 150, value: Number.isFinite(worstSeg) ? worstSeg : null, unit: 'ms' },
    { target: 'a new label, fast templates (7 prompts)', limit: 1000, value: label1?.wasm ?? null, unit: 'ms' },
    { target: `default download (CLIP + head, ${dl?.label === 'gguf q4_0' ? 'Q4_0' : 'published default'} GGUF)`, limit: 100, value: dl ? dl.bytes / MB : null, unit: 'MB' },
    { target: 'peak wasm memory, 448 sliding window (app path)', limit: 1000, value: s.peak_memory ? s.peak_memory / MB : null, unit: 'MB' },
  ];
  return s;
}

export function formatTable(res) {
  const s = summarize(res);
  const out = [];
  const m = res.machine ?? {};
  out.push(`machine: ${m.nproc} cores, ${m.cpu_model} (${(m.simd_flags ?? []).join(' ')}), ${m.mem_total_gib} GiB; ${m.chromium}; node ${m.node}`);
  out.push(`native: ${res.native?.candle_threads} candle thread(s) (RAYON_NUM_THREADS=${res.native?.rayon_num_threads_env}); runs: median of ${res.runs} after 1 warm-up`);
  out.push(`load average (1/5/15 min): ${(res.load_average ?? []).map((l) => `${l.phase} ${l.loadavg.join('/')}`).join('; ')}`);
  out.push(`photo: ${res.photo?.source} ${res.photo?.width}×${res.photo?.height}`);
  out.push('');
  out.push('Targets');
  out.push(table(['target', 'limit', 'measured', 'verdict'], s.targets.map((t) => [
    t.target, `≤ ${t.limit} ${t.unit}`, t.value === null ? '-' : `${f(t.value, t.unit === '×' ? 2 : 0)} ${t.unit}`,
    t.value === null ? 'not measured' : t.value <= t.limit ? 'met' : `missed by ${f(t.value / t.limit, 2)}×`,
  ])));
  out.push('');
  out.push('Weights → model (load_model_files + Segmenter::from_bundle), ms');
  out.push(table(['file(s)', 'compute', 'MB', 'copy into wasm', 'wasm parse', 'wasm build', 'wasm total', 'native total', 'wasm/native'],
    s.loads.map((l) => [l.label, l.compute, f(l.bytes / MB), f(l.copy), f(l.wasm_parse), f(l.wasm_build), f(l.wasm), f(l.native), x(ratio(l.wasm, l.native))])));
  out.push('');
  out.push(`Image encode (tower + DINOiser head per window) of the ${res.photo?.width}×${res.photo?.height} photo, ms`);
  out.push(table(['short side', 'compute', 'processed', 'windows (patches)', 'wasm', 'native', 'wasm/native'],
    s.encode.map((e) => [e.preset, e.compute, e.processed?.join('×'), e.windows?.map((w) => w.join('×')).join(' + '), f(e.wasm), f(e.native), x(ratio(e.wasm, e.native))])));
  out.push('');
  out.push('Image tower alone (first window), ms — ours vs onnxruntime-web on the same input');
  out.push(table(['input', 'tokens', 'weights / compute', 'ours wasm', 'native', 'wasm/native', 'ort f32', 'ort int8', 'ours/ort f32', 'ours/ort int8', 'pooled max|Δ| vs ort f32'],
    s.tower.map((t) => [`${t.h}×${t.w}`, t.tokens, `${t.model} / ${t.compute}`, f(t.wasm), f(t.native), x(ratio(t.wasm, t.native)), f(t.ort_f32), f(t.ort_int8),
      x(ratio(t.wasm, t.ort_f32)), x(ratio(t.wasm, t.ort_int8)), t.pooled_vs_ort_f32 === null ? '-' : t.pooled_vs_ort_f32.toExponential(1)])));
  out.push('');
  out.push('Label embeddings (ClipModel::embed_labels), ms');
  out.push(table(['labels', 'templates', 'compute', 'prompts', 'wasm', 'native', 'wasm/native'],
    s.labels.map((l) => [l.labels, l.templates, l.compute, l.prompts, f(l.wasm), f(l.native), x(ratio(l.wasm, l.native))])));
  out.push('');
  out.push('Cheap steps on cached features, ms (segment: 10 labels, output 640×427; k-means: k = 8)');
  out.push(table(['step', 'preset', 'compute', 'wasm', 'native', 'wasm/native'],
    s.cheap.map((c) => [c.op, c.preset, c.compute, f(c.wasm), f(c.native), x(ratio(c.wasm, c.native))])));
  out.push('');
  out.push(`Peak wasm memory, app path in a fresh worker (Q4_0 bundle, ${res.wasm_memory?.steps?.[0]?.compute ?? '?'} compute, 10 labels, 448 sliding window): ${f(s.peak_memory / MiB, 0)} MiB (${f(s.peak_memory / MB, 0)} MB)`);
  out.push(table(['after step', 'memory.buffer.byteLength (MiB)'], s.memory.map((mm) => [`${mm.op} ${mm.preset}`, f(mm.bytes / MiB, 0)])));
  out.push(`(the long run, which also parses the 600 MB safetensors, grew to ${f(s.full_run_memory / MiB, 0)} MiB)`);
  for (const p of s.profiles) {
    const w = p.wasm;
    if (!w) continue;
    const nat = Object.fromEntries((p.native?.ops ?? []).map((o) => [o.op, o]));
    out.push('');
    // Profiles time the model's own forward through its timing hook; results from before that
    // came from an instrumented replica, checked against the model.
    const check = w.timed_vs_untimed_max_abs_diff
      ? `timed vs untimed forward max|Δ| dense ${w.timed_vs_untimed_max_abs_diff.dense}`
      : `replica vs model max|Δ| dense ${w.max_abs_diff_vs_model?.dense}`;
    out.push(`Profile of the tower at ${w.input[2]}×${w.input[3]} (${w.tokens} tokens), ${p.model} / ${p.compute}: ` +
      `wasm ${f(w.ops_ms_total)} ms, native ${f(p.native?.ops_ms_total)} ms; ${check}`);
    out.push(table(['op', 'calls', 'wasm ms', 'share', 'wasm GFLOP/s', 'native ms', 'native GFLOP/s', 'wasm/native'],
      w.ops.map((o) => [o.op, o.calls, f(o.ms), `${f(100 * o.share)}%`, f(o.gflops_per_s), f(nat[o.op]?.ms), f(nat[o.op]?.gflops_per_s), x(ratio(o.ms, nat[o.op]?.ms))])));
  }
  if (s.kernels?.wasm) {
    const nat = s.kernels.native?.kernels ?? [];
    out.push('');
    out.push(`Kernels at ${s.kernels.wasm.tokens} tokens, ms (median); the int kernel is the same tile on wasm SIMD (i32x4.dot_i16x8_s) and natively on SSE2 (pmaddwd)`);
    out.push(table(['kernel', 'variant', 'wasm ms', 'wasm GFLOP/s', 'native ms', 'native GFLOP/s', 'wasm/native'],
      s.kernels.wasm.kernels.map((k, i) => [k.kernel, k.variant, f(k.ms, 2), f(k.gflops_per_s), f(nat[i]?.ms, 2), f(nat[i]?.gflops_per_s), x(ratio(k.ms, nat[i]?.ms))])));
    const err = s.kernels.wasm.int_kernel_error ?? s.kernels.wasm.int8_prototype_error ?? [];
    if (err.length) {
      out.push(`int kernel error (max |y8 − y32| / max |y32|): ${err.map((e) => f(100 * e.max_abs_err_over_max_abs, 2) + '%').join(', ')}`);
    }
  }
  return out.join('\n');
}

/** Parallel fraction p from the times at 1 and n threads (Amdahl: t_n / t_1 = 1 − p + p / n). */
export function parallelFraction(t1, tn, n) {
  return t1 && tn ? (1 - tn / t1) / (1 - 1 / n) : null;
}

/** Time at n threads projected from t_1 and the parallel fraction p (Amdahl). */
export function projected(t1, p, n) {
  return t1 && p !== null ? t1 * (1 - p + p / n) : null;
}

/** The thread-scaling section (`--plan threads`): medians per step and thread count. */
export function formatThreads(t) {
  const n = t.threads;
  const name = (st) => [st.op, st.preset, st.labels && `${st.labels} labels`, st.templates].filter(Boolean).join(' ');
  const steps = (r) => (r?.steps ?? []).filter((s) => s.step.op !== 'load');
  const [single, mt1, mtn] = t.wasm;
  const [nat1, natn] = t.native;
  const rows = steps(mtn).map((s, i) => {
    const a = steps(single)[i]?.median_ms;
    const b = steps(mt1)[i]?.median_ms;
    const c = s.median_ms;
    const p = parallelFraction(b, c, n);
    // interleaved runs: the median of the run-by-run ratios (each pair ran back to back)
    const r1 = steps(mt1)[i]?.runs_ms;
    const paired = s.interleaved_with && r1?.length === s.runs_ms?.length
      ? median(s.runs_ms.map((v, k) => v / r1[k])) : null;
    const n1 = steps(nat1)[i]?.median_ms;
    const nn = steps(natn)[i]?.median_ms;
    return [name(s.step), f(a), f(b), f(c), x(ratio(c, b)), x(paired), x(ratio(c, a)), f(p, 2), f(projected(b, p, 4)), f(projected(b, p, 8)), f(n1), f(nn), x(ratio(nn, n1))];
  });
  const out = [];
  out.push(`Threads (${t.generated}, ${t.machine?.nproc} CPUs): wasm ms (median of ${t.runs}); mt = the multi-threaded build${mtn?.interleaved ? ` (1 and ${n} threads interleaved run by run; paired = median of the run-by-run ratios)` : ''}; p = parallel fraction from mt 1→${n}; 4/8 threads projected by Amdahl's law from p`);
  out.push(table(['step', 'wasm single', 'wasm mt×1', `wasm mt×${n}`, `mt×${n} / mt×1`, 'paired', `mt×${n} / single`, 'p', 'proj. ×4', 'proj. ×8', 'native×1', `native×${n}`, `native ×${n}/×1`], rows));
  if (steps(mtn).some((s) => s.step.op === 'ceiling')) {
    out.push(`ceiling: one copy of the integer kernel's mlp.c_fc product per thread, each on its thread alone, ms per copy: its mt×${n} / mt×1 is the best any split of that work reaches on this machine (1/${n} if threads do not slow each other)`);
  }
  const tower = steps(mtn).find((s) => s.step.op === 'tower');
  const pooled = [single, mt1, mtn, nat1, natn].map((r) => JSON.stringify(steps(r).find((s) => s.step.op === 'tower')?.pooled ?? null));
  out.push(`448×448 tower output (pooled, 512 values): wasm single = mt×1 = mt×${n}: ${pooled[0] === pooled[1] && pooled[1] === pooled[2] ? 'bit-identical' : 'DIFFERENT'}; ` +
    `native ×1 = ×${n}: ${pooled[3] === pooled[4] ? 'bit-identical' : 'DIFFERENT'}`);
  const [o1, on] = t.ort ?? [];
  if (o1 && on) {
    out.push('');
    out.push(`onnxruntime-web, 448×448 tower, ms: threads 1 / ${n}, and ours (int, multi-threaded build) / peer at equal threads`);
    out.push(table(['model', 'ort ×1', `ort ×${n}`, `ort ×${n}/×1`, 'ours/ort ×1', `ours/ort ×${n}`], o1.models.map((m, i) => {
      const mn = on.models[i];
      return [m.name, f(m.median_ms), f(mn?.median_ms), x(ratio(mn?.median_ms, m.median_ms)), x(ratio(steps(mt1).find((s) => s.step.op === 'tower')?.median_ms, m.median_ms)), x(ratio(tower?.median_ms, mn?.median_ms))];
    })));
  }
  const mem = t.wasm_memory?.steps ?? [];
  if (mem.length) {
    out.push('');
    out.push(`peak wasm memory, app path at the 448 windows, multi-threaded build ×${t.wasm_memory.threads}: ${f(Math.max(...mem.map((m) => m.memory.wasm_memory_bytes)) / MB)} MB`);
  }
  return out.join('\n');
}

const median = (v) => {
  const s = v.filter((y) => y !== null && y !== undefined).sort((a, b) => a - b);
  if (!s.length) return null;
  const m = s.length >> 1;
  return s.length % 2 ? s[m] : (s[m - 1] + s[m]) / 2;
};

/** The `precision` entry: the app's two precisions, each loaded in fresh single-threaded workers. */
export function formatPrecision(p) {
  const row = (name, runs) => {
    const ld = runs.map((r) => r.steps.find((s) => s.step.op === 'load'));
    const mib = (v) => v / 2 ** 20;
    const peak = runs.map((r) => Math.max(...r.steps.map((s) => s.memory.wasm_memory_bytes)));
    return [
      name, ld[0]?.model, ld[0]?.compute, f(ld[0]?.bytes / 1e6),
      f(median(ld.map((s) => s?.median_ms))), f(median(ld.map((s) => s?.parse?.median_ms))),
      f(median(ld.map((s) => s?.build?.median_ms))), f(median(ld.map((s) => s?.copy_into_wasm_ms))),
      f(median(ld.map((s) => mib(s?.memory.wasm_memory_bytes)))), f(median(peak.map(mib))),
      runs.map((r) => f(r.steps.find((s) => s.step.op === 'load')?.median_ms, 0)).join(' / '),
    ];
  };
  return [
    `Precision (${p.generated}): medians of ${p.runs} fresh single-threaded workers each; load = parse + build (copy into wasm apart); memory in MiB`,
    table(['precision', 'bundle', 'compute', 'MB', 'load ms', 'parse', 'build', 'copy in', 'after load', 'peak (448 windows path)', 'load runs ms'], [
      row('standard', p.memory_default), row('high', p.memory_high),
    ]),
  ].join('\n');
}


/** The projection's assumptions (BENCHMARKS.md, GPU section): a typical integrated GPU of 2023–24
 * laptops, Intel Iris Xe (96 EU): 96 EU × 16 FP32 FLOP/clock × 1.35 GHz ≈ 2.07 TFLOP/s peak,
 * shared LPDDR4x-4266 dual channel ≈ 68 GB/s. Kernel efficiency is not transferable from a CPU
 * emulator (its workgroups run as loops, barriers as calls), so the tower is projected at the
 * fraction of peak that 64×64-tile f32 matmuls without subgroup operations typically reach on
 * such GPUs (10 / 20 / 35 %: pessimistic / typical / optimistic — 35 % is what an auto-tuned
 * WebGPU matmul reached on an M1 MacBook Air, ≈ 0.9 of 2.6 TFLOP/s), plus the memory traffic. */
export const IGPU = { name: 'Intel Iris Xe (96 EU)', peak_gflops: 2070, bandwidth_gbps: 68, efficiency: [0.10, 0.20, 0.35] };

/** Projected ms of a tower of `gflop` that moves `bytes` through memory, at each efficiency. */
export function projectTower(gflop, bytes, g = IGPU) {
  const mem = (bytes / 1e9 / g.bandwidth_gbps) * 1e3;
  return g.efficiency.map((e) => (gflop / (g.peak_gflops * e)) * 1e3 + mem);
}

/** Bytes one 448² tower moves at least: the weights once, each block's attention scores
 * written, read and written by softmax, read by p·v (12 heads × 785², f32), activations ignored. */
export function towerTraffic(weightBytes, tokens = 785, heads = 12, blocks = 12) {
  return weightBytes + blocks * 4 * heads * tokens * tokens * 4;
}

export function formatGpu(res) {
  const g = res.gpu;
  const out = [];
  const sides = [['lavapipe (native, Vulkan)', g.native], ['SwiftShader (headless Chromium, WebGPU)', g.browser]].filter(([, r]) => r);
  out.push(`GPU kernels (${g.generated}): CPU EMULATION, not GPU speed — ms (median), GFLOP/s or GB/s achieved`);
  const kernels = sides[0]?.[1].kernels ?? [];
  out.push(table(['kernel', 'weights', ...sides.flatMap(([n]) => [`${n} ms`, 'GFLOP/s', 'GB/s'])], kernels.map((k, i) => [
    k.name, k.weights ?? '-',
    ...sides.flatMap(([, r]) => {
      const c = r.kernels[i];
      return [f(c?.median_ms), c?.flop ? f(c.gflops, 2) : '-', f(c?.gbps, 2)];
    }),
  ])));
  out.push('');
  out.push('Image tower (Q8 weights on the device), ms:');
  out.push(table(['adapter', 'input', 'GFLOP', 'ms', 'GFLOP/s'], sides.flatMap(([n, r]) => r.tower.map((t) => [n, t.size.join('×'), f(t.gflop, 1), f(t.median_ms, 0), f(t.gflops, 2)]))));
  const w = sides[0]?.[1].weights;
  if (w) {
    out.push('');
    out.push(`Weights on the device, full-size ViT-B/16 image tower: f32 ${f(w.f32.weight_bytes / MB, 1)} MB (matrices ${f(w.f32.matrix_bytes / MB, 1)}), ` +
      `Q8 ${f(w.q8.weight_bytes / MB, 1)} MB (matrices ${f(w.q8.matrix_bytes / MB, 1)}): ${x(w.f32.weight_bytes / w.q8.weight_bytes)} less`);
    const tw = sides[0][1].tower.find((t) => t.size[0] === 448);
    if (tw) {
      const p = projectTower(tw.gflop, towerTraffic(w.q8.weight_bytes));
      out.push(`PROJECTION, ${IGPU.name} (${IGPU.peak_gflops} GFLOP/s peak, ${IGPU.bandwidth_gbps} GB/s), 448² tower: ` +
        `${p.map((v) => f(v, 0)).join(' / ')} ms at ${IGPU.efficiency.map((e) => `${Math.round(e * 100)} %`).join(' / ')} of peak`);
    }
  }
  const o = g.ort_webgpu;
  if (o) {
    out.push('');
    if (o.error) out.push(`onnxruntime-web WebGPU EP: failed: ${o.error}`);
    else {
      out.push(`onnxruntime-web ${o.ort_version} WebGPU EP (${o.adapter?.vendor ?? '?'} ${o.adapter?.architecture ?? ''}), same browser:`);
      const ours = g.browser?.tower?.find((t) => t.size[0] === 448);
      out.push(table(['model', 'session ms', 'median ms', 'ours (SwiftShader) ms', 'ours / ort'], o.models.map((m) => [
        m.name, f(m.create_ms, 0), f(m.median_ms, 0), f(ours?.median_ms, 0), x(ratio(ours?.median_ms, m.median_ms)),
      ])));
    }
  }
  return out.join('\n');
}

if (process.argv[1] && path.resolve(process.argv[1]) === path.resolve(import.meta.filename)) {
  const file = process.argv[2] ?? path.join(import.meta.dirname, 'results.json');
  const res = JSON.parse(fs.readFileSync(file, 'utf8'));
  console.log(formatTable(res));
  if (res.threads) console.log('\n' + formatThreads(res.threads));
  if (res.precision) console.log('\n' + formatPrecision(res.precision));
  if (res.gpu) console.log('\n' + formatGpu(res));
}
