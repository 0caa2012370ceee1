// In-browser timings of the built site with real-size weights (not part of the test suite):
//   node tests/page/bench.mjs DIR [--modes]
// DIR holds clip-dinoiser.gguf, e.g. made from `clipdino random-weights --arch vit-b-16`
// and `clipdino convert --quant q8_0` (random weights time exactly like the real ones).
// Prints weights load / cache reload, image encode per resolution, segmentation, label edit and
// K-Means times as the page measures them (Chromium, one Web Worker, wasm32 + simd128), then the
// mode switches at 448 in both worker builds. `--modes`: only the mode switches.
import fs from 'node:fs';
import path from 'node:path';

import { startServer } from './server.mjs';
import { DIST, checkDist, launch, newPage, nextSegmentation, waitLegend, waitOverlay } from './helpers.mjs';

const dir = process.argv.slice(2).find((a) => !a.startsWith('--'));
const onlyModes = process.argv.includes('--modes');
if (!dir) {
  console.error('usage: node tests/page/bench.mjs DIR [--modes]   (DIR/clip-dinoiser.gguf)');
  process.exit(2);
}
checkDist();
if (!fs.existsSync(path.join(dir, 'clip-dinoiser.gguf'))) {
  console.error(`${dir}/clip-dinoiser.gguf does not exist`);
  process.exit(2);
}
const server = await startServer({
  dist: DIST,
  weights: path.resolve(dir),
  bundle: path.resolve(dir, 'clip-dinoiser.gguf'),
  throttle: false,
});
const browser = await launch();
const rows = [];
const row = (what, ms) => {
  rows.push([what, ms]);
  console.log(`${what.padEnd(58)} ${String(Math.round(ms)).padStart(7)} ms`);
};
const num = async (page, name) => Number(await page.getAttribute('[data-role=debug]', name));

/** A mode switch at the paper resolution (448, sliding windows) in one worker build: the photo
 * encoded once (CLIP-DINOiser, no refinement), then ClearCLIP, NACLIP and SCLIP, each one last
 * block per window from the cached trunk (the worker's own time for the blocks). */
async function modeSwitches({ build, route, context }) {
  const { page } = await newPage(browser, context);
  await page.goto(`${server.origin}${route}#labels=temple,tree,sky,lamp&mode=dinoiser&refine=none&res=448`);
  await page.waitForSelector(`[data-role=threads-status][data-build=${build}]`, { timeout: 600_000 });
  await page.waitForSelector('[data-role=model-ready]', { timeout: 600_000 });
  await page.click('[data-sample=china]');
  let f = await waitOverlay(page, 'primary', { mode: 'dinoiser', refine: 'none' }, 600_000);
  const dbg = await page.textContent('[data-role=debug]');
  row(`${build}: encode china at 448 (${dbg.match(/last: ([^)]*) in/)?.[1] ?? '?'})`, await num(page, 'data-encode-ms'));
  for (const mode of ['clearclip', 'naclip', 'sclip']) {
    await page.selectOption('[data-role=mode-primary]', mode);
    f = await waitOverlay(page, 'primary', { mode, refine: 'none', previous: f.segmentation }, 600_000);
    row(`${build}: mode switch to ${mode} at 448 (last blocks)`, Number(f.modeMs));
  }
  const encodes = await page.getAttribute('.app', 'data-encodes');
  if (encodes !== '1') throw new Error(`the mode switches encoded the photo again (${encodes} encodes)`);
  if (page.errors.length) console.log('page errors:', page.errors);
  await page.context().close();
}

try {
  if (!onlyModes) await appSteps();
  // Both model-worker builds: threaded (an isolated page) and single-threaded (no isolation).
  await modeSwitches({ build: 'multi', route: '/demo/clipdino/', context: {} });
  await modeSwitches({ build: 'single', route: '/plain/', context: { serviceWorkers: 'block' } });
} finally {
  await browser.close();
  await server.close();
}

async function appSteps() {
  const { page } = await newPage(browser);
  let t = Date.now();
  await page.goto(`${server.origin}/demo/clipdino/`);
  await page.waitForSelector('[data-role=model-ready], .notice[data-area=weights]', { timeout: 600_000 });
  if (!(await page.$('[data-role=model-ready]'))) throw new Error(await page.textContent('.notice[data-area=weights]'));
  row('weights: download + parse + build (network, no cache)', Date.now() - t);
  t = Date.now();
  await page.reload();
  await page.waitForSelector('[data-role=model-ready][data-from-cache=true]', { timeout: 600_000 });
  row('weights: reload from the Cache API + parse + build', Date.now() - t);

  await page.click('[data-sample=china]');
  await page.fill('[data-role=label-input]', 'temple, tree, sky, lamp');
  await page.press('[data-role=label-input]', 'Enter');
  await waitLegend(page, ['temple', 'tree', 'sky', 'lamp'], 600_000);
  // 640 × 427 → fast 336×224 (21×14 patches), balanced 504×336 (32×21), paper 672×448 in
  // 448-px windows with stride 224 (3 windows of 28×28).
  for (const [button, name, grid] of [['Fast', 'fast 224', '21×14'], ['Paper', 'paper 448', '42×28'], ['Balanced', 'balanced 336', '32×21']]) {
    const encodes = Number(await page.getAttribute('.app', 'data-encodes'));
    await page.click(`[data-role=resolution] button:has-text("${button}")`);
    await page.waitForFunction(
      ([n, g]) => Number(document.querySelector('.app').dataset.encodes) > n && document.querySelector('[data-role=debug]').textContent.includes(`last: ${g}`),
      [encodes, grid],
      { timeout: 600_000 },
    );
    const dbg = await page.textContent('[data-role=debug]');
    row(`encode 640×427 photo, ${name} (${dbg.match(/last: ([^)]*) in/)?.[1] ?? '?'})`, await num(page, 'data-encode-ms'));
  }
  await waitLegend(page, ['temple', 'tree', 'sky', 'lamp'], 600_000);
  let seg = await page.getAttribute('.app', 'data-segmentation');
  t = Date.now();
  await page.click('[data-role=templates] button:has-text("80")');
  seg = await nextSegmentation(page, seg, 600_000);
  row('re-embed 4 labels × 80 templates + segment (UI round trip)', Date.now() - t);
  await page.click('[data-role=templates] button:has-text("7")');
  seg = await nextSegmentation(page, seg, 600_000);
  t = Date.now();
  await page.click('.chip[data-label=lamp] .chip-text');
  await page.fill('[data-role=chip-edit]', 'roof');
  await page.press('[data-role=chip-edit]', 'Enter');
  seg = await nextSegmentation(page, seg, 600_000);
  row('label edit: embed 1 label × 7 templates + segment (UI round trip, incl. 180 ms debounce)', Date.now() - t);
  row('segment only (worker)', await num(page, 'data-segment-ms'));
  await page.locator('[data-role=k]').fill('8');
  await page.waitForSelector('[data-role=kmeans-raw][data-k="8"]', { timeout: 600_000 });
  row('K-Means k=8, raw + refined (worker)', await num(page, 'data-kmeans-ms'));
  if (page.errors.length) console.log('page errors:', page.errors);
  await page.context().close();
}
