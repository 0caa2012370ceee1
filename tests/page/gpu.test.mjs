// The image tower on the GPU (WebGPU) in the built site, with random tiny-model weights:
// (a) compute = GPU on headless Chromium's WebGPU (SwiftShader, a CPU emulation: "auto" skips it,
//     an explicit "GPU" uses it): load, photo, labels, overlay — the same overlay as the CPU's;
// (b) no WebGPU adapter (Chromium without --enable-unsafe-webgpu) and compute = GPU: the CPU
//     computes, the status says why, the overlay is the CPU's;
// (c) the GPU device lost in the middle of an encode (?debug-worker hook): that photo is encoded
//     on the CPU, the status says so, the GPU stays off until the setting is chosen again.
// Screenshots land in test-output/page/gpu-*.png.
import { after, before, describe, it } from 'node:test';
import assert from 'node:assert/strict';

import { attr, launch, newPage, screenshot, useSite, waitLegend } from './helpers.mjs';

const LABELS = ['cat', 'wall', 'floor'];
const status = (page) => page.$eval('[data-role=compute-status]', (e) => ({ text: e.textContent, ...e.dataset }));

/** Wait for the compute status to satisfy `want` (an object of data-* values, `text` a RegExp). */
async function waitStatus(page, want, timeout = 120_000) {
  const { text, ...data } = want;
  await page
    .waitForFunction(
      ([data, src]) => {
        const e = document.querySelector('[data-role=compute-status]');
        if (!e) return false;
        if (src && !new RegExp(src).test(e.textContent)) return false;
        return Object.entries(data).every(([k, v]) => e.dataset[k] === v);
      },
      [data, text?.source],
      { timeout },
    )
    .catch(async () => {
      const now = await status(page).catch(() => 'absent');
      assert.fail(`the compute status never matched ${JSON.stringify(want)} (${text ?? ''}); it is ${JSON.stringify(now)}`);
    });
  return status(page);
}

/** The overlay canvas' pixels. */
const overlayPixels = (page) =>
  page.$eval('[data-role=overlay]', (c) => Array.from(c.getContext('2d').getImageData(0, 0, c.width, c.height).data));

/** Share of the pixels two overlays paint alike. */
function agreement(a, b) {
  assert.equal(a.length, b.length, 'overlays of different sizes');
  let same = 0;
  for (let i = 0; i < a.length; i += 4) {
    if (a[i] === b[i] && a[i + 1] === b[i + 1] && a[i + 2] === b[i + 2] && a[i + 3] === b[i + 3]) same += 1;
  }
  return same / (a.length / 4);
}

/** A page of `browser` with the model loaded and compute set to `compute` (if given; a model
 * loaded before its tower's weights were kept for a GPU is loaded again). */
async function open(site, browser, { compute, query = '' } = {}) {
  const { page } = await newPage(browser);
  await page.goto(`${site.server.origin}/demo/clipdino/${query}#labels=${LABELS.join(',')}`);
  await page.waitForSelector('[data-role=model-ready]', { timeout: 120_000 });
  // The worker has decided "auto" for this browser.
  await waitStatus(page, { text: SETTLED });
  if (compute) {
    await page.click(`[data-role=compute] button[data-compute=${compute}]`);
    await waitStatus(page, { setting: compute, text: SETTLED });
    await page.waitForSelector('[data-role=model-ready]', { timeout: 120_000 });
  }
  return page;
}

/** The compute status once the worker has applied the setting and kept the weights for it. */
const SETTLED = /^(?!Compute: |.*loading the weights again)/;

/** Open the sample photo (or switch to `resolution`) and wait for the overlay of the new encode
 * (done on `on`: "gpu" | "cpu"); its pixels. */
async function segment(page, on, resolution) {
  const encodes = Number(await attr(page, 'data-encodes'));
  const shown = await page.$eval('[data-role=figure-primary]', (e) => e.dataset.segmentation).catch(() => '');
  if (resolution) {
    await page.click(`[data-role=resolution] button:has-text("${resolution}")`);
  } else {
    await page.click('[data-sample=chelsea]');
  }
  await page.waitForFunction((n) => Number(document.querySelector('.app')?.dataset.encodes) > n, encodes, { timeout: 120_000 });
  await waitStatus(page, { encodedOn: on });
  await waitLegend(page, LABELS, 120_000);
  await page.waitForFunction(
    (prev) => {
      const v = document.querySelector('[data-role=figure-primary]')?.dataset.segmentation;
      return v && v !== prev;
    },
    shown,
    { timeout: 120_000 },
  );
  // Painted in the next frame.
  await page.evaluate(() => new Promise((r) => requestAnimationFrame(() => requestAnimationFrame(r))));
  return overlayPixels(page);
}

describe('clipdino page: the image tower on the GPU', { timeout: 900_000 }, () => {
  const site = useSite('gpu');
  let webgpu;
  let cpuOverlay;

  before(async () => {
    // Headless Chromium's WebGPU is SwiftShader (a CPU emulation); it needs this flag.
    webgpu = await launch(['--enable-unsafe-webgpu']);
  });
  after(async () => {
    await webgpu?.close();
  });

  it('auto skips the CPU emulation of a GPU and says so; the CPU overlay', async () => {
    const page = await open(site, webgpu);
    const s = await waitStatus(page, { compute: 'cpu', text: /GPU unavailable: .*CPU emulation/ });
    assert.match(s.text, /^CPU, \d+ threads? — GPU unavailable: .*swiftshader.*slower than the CPU path/i);
    cpuOverlay = await segment(page, 'cpu');
    assert.deepEqual(page.errors, [], 'probing the adapter logs no error');
    await screenshot(page, 'auto-cpu');
    await page.close();
  });

  it('runs the whole flow with compute = GPU on SwiftShader, with the CPU overlay', async () => {
    // The weights were loaded under "auto" without the tower's: loaded again for the GPU.
    const page = await open(site, webgpu, { compute: 'gpu' });
    const s = await waitStatus(page, { compute: 'gpu', text: /^GPU \(/ });
    assert.match(s.adapter, /swiftshader/i);
    const gpu = await segment(page, 'gpu');
    assert.equal((await status(page)).fallback, '');
    assert.match(await page.textContent('[data-role=debug]'), /on the GPU\)/);
    const same = agreement(gpu, cpuOverlay);
    console.log(`GPU vs CPU overlay: ${(same * 100).toFixed(3)} % of the pixels alike`);
    assert.ok(same >= 0.999, `the GPU overlay differs from the CPU one at ${((1 - same) * 100).toFixed(2)} % of the pixels`);
    await screenshot(page, 'gpu-overlay');
    await page.close();
  });

  it('without a WebGPU adapter, compute = GPU runs on the CPU, says why, same overlay', async () => {
    // The suite's browser has no --enable-unsafe-webgpu: the browser offers no adapter.
    const page = await open(site, site.browser, { compute: 'gpu' });
    const s = await waitStatus(page, { compute: 'cpu', text: /GPU unavailable/ });
    assert.match(s.text, /^CPU, \d+ threads? — GPU unavailable: .*(no WebGPU|navigator\.gpu)/);
    const cpu = await segment(page, 'cpu');
    assert.equal(agreement(cpu, cpuOverlay), 1, 'the CPU fallback paints the CPU overlay');
    assert.deepEqual(page.errors, [], 'no adapter is not an error in the console');
    await screenshot(page, 'no-adapter');
    await page.close();
  });

  it('a device lost mid-encode re-encodes that photo on the CPU and switches the GPU off', async () => {
    const page = await open(site, webgpu, { compute: 'gpu', query: '?debug-worker' });
    await waitStatus(page, { compute: 'gpu' });
    await segment(page, 'gpu');
    const encodes = Number(await attr(page, 'data-encodes'));
    // The next encode (another resolution) loses the device after its first block.
    await page.evaluate(() => window.clipdinoDebug.injectFault('gpu-lost'));
    const fallback = await segment(page, 'cpu', 'Fast');
    const s = await waitStatus(page, { compute: 'cpu', text: /was lost/ });
    assert.notEqual(s.fallback, '', 'the encode says it fell back');
    assert.match(s.text, /this photo was encoded on the CPU instead: the GPU failed/);
    assert.equal(Number(await attr(page, 'data-encodes')), encodes + 1, 'one encode for the photo, not a crash');
    assert.equal(await attr(page, 'data-worker-restarts'), '0');
    await screenshot(page, 'lost-fallback');
    // The same overlay as the CPU's at that resolution (a page that never used the GPU).
    const cpuPage = await open(site, webgpu, { compute: 'cpu' });
    await segment(cpuPage, 'cpu');
    const cpuFast = await segment(cpuPage, 'cpu', 'Fast');
    assert.equal(agreement(fallback, cpuFast), 1, 'the fallback paints the CPU overlay');
    await cpuPage.close();
    // Chosen again, the GPU is opened afresh and computes the next encode.
    await page.click('[data-role=compute] button[data-compute=gpu]');
    await waitStatus(page, { compute: 'gpu' });
    await segment(page, 'gpu', 'Balanced');
    await screenshot(page, 'gpu-again');
    await page.close();
  });
});
