// Shared set-up for the page tests: the built site, random weights, Chromium, screenshots and
// canvas read-outs.
import assert from 'node:assert/strict';
import { execFileSync } from 'node:child_process';
import fs from 'node:fs';
import path from 'node:path';
import { after, before } from 'node:test';
import { chromium } from 'playwright-core';

import { startServer } from './server.mjs';

export const ROOT = path.resolve(import.meta.dirname, '../..');
export const OUT = path.join(ROOT, 'test-output/page');
export const DIST = path.join(ROOT, 'dist');

/** Chromium flags that work headless as root on CI machines without network. */
const FLAGS = [
  '--no-sandbox',
  '--disable-gpu',
  '--disable-quic',
  '--no-first-run',
  '--disable-background-networking',
  '--disable-component-update',
  '--disable-sync',
];

export function checkDist() {
  for (const f of ['index.html', 'worker_loader.js', 'worker.js', 'worker_bg.wasm', 'worker-mt.js', 'coi-sw.js', 'tokenizer.json', 'samples/chelsea.jpg']) {
    if (!fs.existsSync(path.join(DIST, f))) {
      throw new Error(`dist/${f} is missing: build the site first (scripts/build-site.sh)`);
    }
  }
}

/** Run the `clipdino` CLI: `$CLIPDINO_CLI` when set (a built binary), else the release build. */
function cli(args) {
  const [cmd, pre] = process.env.CLIPDINO_CLI
    ? [process.env.CLIPDINO_CLI, []]
    : ['cargo', ['run', '--quiet', '--release', '--locked', '-p', 'clipdino-cli', '--']];
  execFileSync(cmd, [...pre, ...args], {
    cwd: ROOT,
    stdio: ['ignore', 'inherit', 'inherit'],
  });
}

/**
 * Random tiny-model weights in the upstream formats (`open_clip_model.safetensors`,
 * `open_clip_config.json`, `last.pt`, `open_clip_pytorch_model.bin`) and a Q4_0 GGUF bundle made
 * from them. The folder is `$CLIPDINO_TEST_WEIGHTS` if set (made by `clipdino random-weights`),
 * else generated once into test-output/page/weights with the CLI. The bundle is taken from that
 * folder when present, else converted into test-output/page/.
 * Returns `{ dir, bundle }`.
 */
export function testWeights() {
  let dir = process.env.CLIPDINO_TEST_WEIGHTS;
  if (!dir) {
    dir = path.join(OUT, 'weights');
    if (!fs.existsSync(path.join(dir, 'last.pt'))) {
      cli(['random-weights', '--arch', 'tiny', '--seed', '7', '--out', dir]);
    }
  }
  dir = path.resolve(dir);
  let bundle = path.join(dir, 'clip-dinoiser.gguf');
  if (!fs.existsSync(bundle)) {
    bundle = path.join(OUT, 'clip-dinoiser.gguf');
    cli([
      'convert',
      '--clip', path.join(dir, 'open_clip_model.safetensors'),
      '--config', path.join(dir, 'open_clip_config.json'),
      '--head', path.join(dir, 'last.pt'),
      '--quant', 'q4_0',
      '--out', bundle,
    ]);
  }
  return { dir, bundle };
}

/**
 * Random tiny OpenAI-style weights (QuickGELU) in transformers' layout (`model.safetensors`,
 * `pytorch_model.bin`, `config.json` with `hidden_act: quick_gelu`, no head: none exists for
 * them), made by `clipdino random-weights --layout transformers --act quick_gelu` into
 * test-output/page/openai-weights, and a Q8_0 bundle converted from them with `clipdino convert`,
 * laid out as a site's `models/` folder (test-output/page/openai-site/models/clip-dinoiser.gguf).
 * Returns `{ dir, site, bundle }`.
 */
export function openaiWeights() {
  const dir = path.join(OUT, 'openai-weights');
  if (!fs.existsSync(path.join(dir, 'config.json'))) {
    cli(['random-weights', '--arch', 'tiny', '--seed', '7', '--layout', 'transformers', '--act', 'quick_gelu', '--out', dir]);
  }
  const site = path.join(OUT, 'openai-site');
  const bundle = path.join(site, 'models', 'clip-dinoiser.gguf');
  if (!fs.existsSync(bundle)) {
    fs.mkdirSync(path.dirname(bundle), { recursive: true });
    cli([
      'convert',
      '--clip', path.join(dir, 'model.safetensors'),
      '--config', path.join(dir, 'config.json'),
      '--quant', 'q8_0',
      '--out', bundle,
    ]);
  }
  return { dir, site, bundle };
}

/**
 * The bundle split by `clipdino split` into parts of `partSize` bytes, as the site publishes it:
 * `<dir>/clip-dinoiser.parts.json` + `clip-dinoiser.part-NNN`. Returns the folder and the manifest.
 */
export function splitBundle(bundle, partSize) {
  const src = path.join(OUT, 'parts-src');
  const dir = path.join(OUT, 'parts');
  fs.rmSync(dir, { recursive: true, force: true });
  fs.mkdirSync(src, { recursive: true });
  fs.copyFileSync(bundle, path.join(src, 'clip-dinoiser.gguf'));
  cli(['split', path.join(src, 'clip-dinoiser.gguf'), '--part-size', String(partSize), '--out', dir]);
  const manifest = JSON.parse(fs.readFileSync(path.join(dir, 'clip-dinoiser.parts.json'), 'utf8'));
  return { dir, manifest };
}

/** Headless Chromium with the flags above, plus `extra` (e.g. `--enable-unsafe-webgpu`). */
export async function launch(extra = []) {
  return chromium.launch({ executablePath: '/usr/bin/chromium', headless: true, args: [...FLAGS, ...extra] });
}

/** A fresh browser context (own cache storage; `options` added to its own) whose page records
 * console errors. */
export async function newPage(browser, options = {}) {
  const context = await browser.newContext({ viewport: { width: 1280, height: 1000 }, ...options });
  await context.grantPermissions(['clipboard-read', 'clipboard-write']);
  const page = await context.newPage();
  page.errors = [];
  page.requests = [];
  // Page and worker requests alike.
  context.on('request', (r) => page.requests.push(r.url()));
  page.on('pageerror', (e) => page.errors.push(String(e)));
  page.on('console', (m) => {
    if (m.type() === 'error') page.errors.push(m.text());
  });
  // Record every weights percentage the page ever shows (they change quickly).
  await page.addInitScript(() => {
    window.__pct = [];
    new MutationObserver(() => {
      const el = document.querySelector('[data-role=weights-pct]');
      if (el && window.__pct.at(-1) !== el.textContent) window.__pct.push(el.textContent);
    }).observe(document, { subtree: true, childList: true, characterData: true });
  });
  return { context, page };
}

let shot = 0;
let prefix = 'page';
/** Name screenshots `<prefix>-NN-<step>.png` (one prefix per test file). */
export function screenshotPrefix(p) {
  prefix = p;
}
export async function screenshot(page, name) {
  fs.mkdirSync(OUT, { recursive: true });
  shot += 1;
  const file = path.join(OUT, `${prefix}-${String(shot).padStart(2, '0')}-${name}.png`);
  await page.screenshot({ path: file, fullPage: true });
  return file;
}

/** Colours (#rrggbb) with pixel counts of the non-transparent pixels of a canvas. */
export async function canvasColours(page, selector) {
  return page.$eval(selector, (c) => {
    const d = c.getContext('2d').getImageData(0, 0, c.width, c.height).data;
    const m = new Map();
    for (let i = 0; i < d.length; i += 4) {
      if (d[i + 3] === 0) continue;
      const k = (d[i] << 16) | (d[i + 1] << 8) | d[i + 2];
      m.set(k, (m.get(k) ?? 0) + 1);
    }
    return [...m.entries()].map(([k, n]) => ({ hex: '#' + k.toString(16).padStart(6, '0'), n }));
  });
}

/** A cheap fingerprint of a canvas' pixels. */
export async function canvasHash(page, selector) {
  return page.$eval(selector, (c) => {
    const d = c.getContext('2d').getImageData(0, 0, c.width, c.height).data;
    let h = 2166136261;
    for (let i = 0; i < d.length; i++) h = Math.imul(h ^ d[i], 16777619) >>> 0;
    return `${c.width}x${c.height}:${h}`;
  });
}

function rgb(hex) {
  return [1, 3, 5].map((i) => parseInt(hex.slice(i, i + 2), 16));
}

/** Which legend colours appear on the canvas (alpha blending rounds channels by a step or two). */
export function matchColours(pixels, legend, tolerance = 4) {
  const found = new Set();
  for (const { hex } of pixels) {
    const p = rgb(hex);
    for (const l of legend) {
      const q = rgb(l);
      if (p.every((v, i) => Math.abs(v - q[i]) <= tolerance)) found.add(l);
    }
  }
  return found;
}

export async function legend(page) {
  return page.$$eval('[data-role=legend] [data-label]', (els) =>
    els.map((e) => ({ label: e.dataset.label, color: e.dataset.color })),
  );
}

export async function chips(page) {
  return page.$$eval('[data-role=chips] .chip[data-label]', (els) => els.map((e) => e.dataset.label));
}

export async function attr(page, name) {
  return page.$eval('.app', (el, n) => el.getAttribute(n), name);
}

/** Wait until the segmentation id on the root differs from `previous`. */
export async function nextSegmentation(page, previous, timeout = 60_000) {
  await page.waitForFunction(
    (prev) => {
      const v = document.querySelector('.app')?.dataset.segmentation;
      return v && v !== prev;
    },
    previous,
    { timeout },
  );
  return attr(page, 'data-segmentation');
}

/** The figure of an overlay (`primary` or `compare`), whose data attributes describe its result. */
export const figure = (side) => `[data-role=figure-${side}]`;

/** Wait until an overlay shows a result of `mode` / `refine` newer than `previous` (ids);
 * returns the figure's data attributes. */
export async function waitOverlay(page, side, { mode, refine, previous = '' }, timeout = 120_000) {
  await page.waitForFunction(
    ({ sel, mode, refine, previous }) => {
      const f = document.querySelector(sel);
      if (!f || !f.dataset.segmentation || f.dataset.segmentation === previous) return false;
      return (!mode || f.dataset.mode === mode) && (!refine || f.dataset.refine === refine);
    },
    { sel: figure(side), mode, refine, previous },
    { timeout },
  ).catch(async () => {
    const f = await page.$eval(figure(side), (e) => ({ ...e.dataset })).catch(() => 'absent');
    throw new Error(`the ${side} overlay never showed ${mode ?? '*'} / ${refine ?? '*'}: ${JSON.stringify(f)}`);
  });
  return page.$eval(figure(side), (e) => ({ ...e.dataset }));
}

/** Wait until the legend lists exactly `labels` (a segmentation for an older label set may come first). */
export async function waitLegend(page, labels, timeout = 60_000) {
  await page.waitForFunction(
    (want) => {
      const got = [...document.querySelectorAll('[data-role=legend] [data-label]')].map((e) => e.dataset.label);
      return JSON.stringify(got) === JSON.stringify(want);
    },
    labels,
    { timeout },
  ).catch(async () => {
    throw new Error(`the legend never listed ${JSON.stringify(labels)}; it shows ${JSON.stringify((await legend(page)).map((l) => l.label))}`);
  });
  return legend(page);
}

/** The suite's site: before its tests, the test server on the built site with the test weights
 * (`more(weights)` adds server options) and a browser; after them, both closed. The returned
 * holder's `server`, `browser` and `weights` are set once the `before` hook has run. */
export function useSite(prefix, more = () => ({})) {
  const site = {};
  before(async () => {
    screenshotPrefix(prefix);
    checkDist();
    site.weights = testWeights();
    const { dir, bundle } = site.weights;
    site.server = await startServer({ dist: DIST, weights: dir, bundle, ...more(site.weights) });
    site.browser = await launch();
  });
  after(async () => {
    await site.browser?.close();
    await site.server?.close();
  });
  return site;
}

/** Wait for the message in `area` to match `re` (an older message may still be showing);
 * returns its text. */
export async function expectNotice(page, area, re, timeout = 60_000) {
  const sel = `.notice[data-area=${area}] .notice-text`;
  try {
    await page.waitForFunction(
      ([s, src, flags]) => new RegExp(src, flags).test(document.querySelector(s)?.textContent ?? ''),
      [sel, re.source, re.flags],
      { timeout },
    );
  } catch {
    const now = await page.$eval(sel, (e) => e.textContent).catch(() => '(no message)');
    assert.fail(`message in ${area} never matched ${re}; it says: ${now}`);
  }
  return page.textContent(sel);
}
