// The site's bundle in parts vs as one file, in the built site (not part of the test suite):
//   node bench/parts.mjs BUNDLE [--runs 3] [--part-size 24MiB] [--out FILE]
// BUNDLE: a full-size bundle (bench/run.sh writes target/bench/weights/clip-dinoiser-default.gguf).
// It is cut with `clipdino split` ($CLIPDINO_CLI, else target/release/clipdino) and served by the
// page tests' server (tests/page/server.mjs) as the single file (/demo/clipdino/) and in parts
// (/parts/), unthrottled and throttled per connection (64 KiB every 8 ms, ≈ 8 MB/s at most: a
// host or a long, lossy path that limits each connection, not the link). Each run is a fresh
// browser context (empty Cache API), alternating single / parts. Reported per case, medians:
// page open → model ready, and the transfer as the server saw it (first request → last byte).
// With a bottleneck shared by all connections instead, parallel parts cannot beat the link.
import { execFileSync } from 'node:child_process';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';

import { startServer } from '../tests/page/server.mjs';
import { DIST, ROOT, checkDist, launch, newPage } from '../tests/page/helpers.mjs';

const args = process.argv.slice(2);
const opt = (name, dflt) => {
  const i = args.indexOf(name);
  return i >= 0 ? args.splice(i, 2)[1] : dflt;
};
const runs = Number(opt('--runs', '3'));
const partSize = opt('--part-size', '24MiB');
const out = opt('--out', null);
const bundle = args[0];
if (!bundle || !fs.existsSync(bundle)) {
  console.error('usage: node bench/parts.mjs BUNDLE [--runs 3] [--part-size 24MiB] [--out FILE]');
  process.exit(2);
}
checkDist();
const cli = process.env.CLIPDINO_CLI ?? path.join(ROOT, 'target/release/clipdino');
const work = fs.mkdtempSync(path.join(os.tmpdir(), 'clipdino-parts-bench-'));
const median = (v) => {
  const s = [...v].sort((a, b) => a - b);
  const m = s.length >> 1;
  return s.length % 2 ? s[m] : (s[m - 1] + s[m]) / 2;
};

try {
  fs.symlinkSync(path.resolve(bundle), path.join(work, 'clip-dinoiser.gguf'));
  const partsDir = path.join(work, 'parts');
  execFileSync(cli, ['split', path.join(work, 'clip-dinoiser.gguf'), '--part-size', partSize, '--out', partsDir], { stdio: 'inherit' });
  const manifest = JSON.parse(fs.readFileSync(path.join(partsDir, 'clip-dinoiser.parts.json'), 'utf8'));
  const results = { bundle_bytes: manifest.size, parts: manifest.parts.length, part_size: partSize, runs, cases: {} };
  const browser = await launch();
  try {
    for (const throttle of [false, true]) {
      const server = await startServer({ dist: DIST, weights: work, bundle: path.resolve(bundle), parts: partsDir, throttle });
      try {
        for (let r = 0; r < runs; r++) {
          for (const [name, route, model] of [['single file', '/demo/clipdino/', /\.gguf$/], ['parts', '/parts/', /\.part-\d+$/]]) {
            const { context, page } = await newPage(browser);
            const mark = server.log.length;
            const t0 = Date.now();
            await page.goto(`${server.origin}${route}`);
            await page.waitForSelector('[data-role=model-ready], .notice[data-area=weights]', { timeout: 900_000 });
            const ready = Date.now() - t0;
            const text = await page.textContent('[data-role=model-ready]');
            const gets = server.log.slice(mark).filter((e) => e.method === 'GET' && model.test(e.path));
            const transfer = Math.max(...gets.map((e) => e.end)) - Math.min(...gets.map((e) => e.time));
            const key = `${name}, ${throttle ? 'throttled per connection' : 'unthrottled'}`;
            (results.cases[key] ??= []).push({ ready_ms: ready, transfer_ms: transfer, requests: gets.length, page: text.trim() });
            console.log(`${key.padEnd(42)} run ${r + 1}: ready ${ready} ms, transfer ${transfer} ms (${gets.length} request(s))`);
            await context.close();
          }
        }
      } finally {
        await server.close();
      }
    }
  } finally {
    await browser.close();
  }
  console.log(`\n${(manifest.size / 1e6).toFixed(1)} MB in ${manifest.parts.length} parts of ${partSize}; medians of ${runs}:`);
  console.log('| case | page open → model ready (ms) | transfer (ms) | MB/s |\n|:--|--:|--:|--:|');
  for (const [key, v] of Object.entries(results.cases)) {
    const tr = median(v.map((x) => x.transfer_ms));
    console.log(`| ${key} | ${median(v.map((x) => x.ready_ms))} | ${tr} | ${(manifest.size / 1e3 / tr).toFixed(1)} |`);
  }
  if (out) fs.writeFileSync(out, JSON.stringify({ generated: new Date().toISOString(), loadavg: os.loadavg(), ...results }, null, 1) + '\n');
} finally {
  fs.rmSync(work, { recursive: true, force: true });
}
