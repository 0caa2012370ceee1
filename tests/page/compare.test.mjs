// Modes, PAMR and the compare view in the built site (headless Chromium, random tiny-model
// weights): a mode switch computes one last block from the worker's cached trunk (no new
// encode), PAMR is live at 336 and follows a settled edit at 448, two overlays of the same
// photo each have their own method and share the labels and the encode, the K-Means view follows
// the primary mode, and share links carry all of it. Timings are printed as test diagnostics.
// Screenshots land in test-output/page/compare-*.png.
import { after, before, describe, it } from 'node:test';
import assert from 'node:assert/strict';

import {
  attr,
  canvasColours,
  canvasHash,
  figure,
  matchColours,
  newPage,
  nextSegmentation,
  screenshot,
  waitLegend,
  waitOverlay,
  useSite,
} from './helpers.mjs';

const debugAttr = (page, name) => page.getAttribute('[data-role=debug]', name);
const figAttr = (page, side, name) => page.getAttribute(figure(side), name);

/** Legend colours the overlay canvas shows (every painted pixel must be one of them). */
async function overlayColours(page, selector) {
  const colours = await page.$$eval('[data-role=legend] [data-label]', (els) => els.map((e) => e.dataset.color));
  const pixels = await canvasColours(page, selector);
  const stray = pixels.filter((p) => matchColours([p], colours).size === 0);
  assert.equal(stray.length, 0, `${selector}: pixels in colours outside the legend: ${JSON.stringify(stray.slice(0, 5))}`);
  return matchColours(pixels, colours);
}

describe('clipdino page: modes, PAMR and the compare view', { timeout: 900_000 }, () => {
  const site = useSite('compare');
  const timings = [];

  // Both model-worker builds: the multi-threaded one (an isolated page) and the single-threaded
  // one (no isolation headers, service workers blocked).
  const BUILDS = [
    { build: 'multi', route: '/demo/clipdino/', context: {} },
    { build: 'single', route: '/plain/', context: { serviceWorkers: 'block' } },
  ];

  async function openPage({ build, route, context }, fragment) {
    const { page } = await newPage(site.browser, context);
    await page.goto(`${site.server.origin}${route}#${fragment}`);
    await page.waitForSelector(`[data-role=threads-status][data-build=${build}]`, { timeout: 120_000 });
    await page.waitForSelector('[data-role=model-ready]', { timeout: 120_000 });
    return page;
  }

  for (const b of BUILDS) {
    it(`switches modes without encoding again, and compares two methods side by side (${b.build}-threaded build)`, async (t) => {
      const page = await openPage(b, 'labels=cat,wall,floor&mode=dinoiser&refine=pamr&res=336');
      await page.click('[data-sample=chelsea]');
      await waitLegend(page, ['cat', 'wall', 'floor']);
      let f = await waitOverlay(page, 'primary', { mode: 'dinoiser', refine: 'pamr' });
      assert.equal(await attr(page, 'data-encodes'), '1');
      assert.equal(f.modeMs, '', 'CLIP-DINOiser comes with the encode');
      const dinoiser = await canvasHash(page, '[data-role=overlay]');
      assert.ok((await overlayColours(page, '[data-role=overlay]')).size >= 1);

      // Every other mode: one last block from the cached trunk, never an encode.
      const hashes = { dinoiser };
      for (const [i, mode] of ['maskclip', 'clearclip', 'naclip', 'sclip'].entries()) {
        await page.selectOption('[data-role=mode-primary]', mode);
        f = await waitOverlay(page, 'primary', { mode, refine: 'pamr', previous: f.segmentation });
        assert.equal(await attr(page, 'data-encodes'), '1', `${mode}: the photo was encoded again`);
        const blocks = mode === 'maskclip' ? '0' : String(i);
        assert.equal(await debugAttr(page, 'data-mode-blocks'), blocks, `${mode}: last blocks computed`);
        if (mode !== 'maskclip') {
          assert.match(f.modeMs, /^\d+(\.\d)?$/, `${mode}: no block time`);
          timings.push(`${b.build}: mode switch to ${mode} at 336: last block ${f.modeMs} ms, classify + PAMR ${f.segmentMs} ms`);
        }
        hashes[mode] = await canvasHash(page, '[data-role=overlay]');
        assert.match(await page.textContent('[data-role=mode-description-primary]'), /\w/);
      }
      assert.equal(new Set(Object.values(hashes)).size, 5, `every mode paints its own overlay: ${JSON.stringify(hashes)}`);
      // Back to a mode computed before: cached, no block.
      await page.selectOption('[data-role=mode-primary]', 'naclip');
      f = await waitOverlay(page, 'primary', { mode: 'naclip', previous: f.segmentation });
      assert.equal(f.modeMs, '');
      assert.equal(await debugAttr(page, 'data-mode-blocks'), '3');
      assert.equal(await canvasHash(page, '[data-role=overlay]'), hashes.naclip, 'the same mode paints the same overlay');

      // The compare view: NACLIP beside it by default (another mode than the primary's → MaskCLIP
      // here, since the primary is NACLIP), sharing labels, photo and encode.
      await page.selectOption('[data-role=mode-primary]', 'dinoiser');
      f = await waitOverlay(page, 'primary', { mode: 'dinoiser', previous: f.segmentation });
      await page.click('[data-role=compare-toggle]');
      let c = await waitOverlay(page, 'compare', { mode: 'naclip', refine: 'pamr' });
      assert.equal(await attr(page, 'data-encodes'), '1', 'the compare view encoded the photo again');
      assert.equal(await canvasHash(page, '[data-role=overlay-compare]'), hashes.naclip, 'the right overlay is NACLIP + PAMR');
      assert.equal(await canvasHash(page, '[data-role=overlay]'), dinoiser, 'the left overlay is unchanged');
      await overlayColours(page, '[data-role=overlay-compare]');
      assert.match(await page.textContent('[data-role=caption-compare]'), /NACLIP \+ PAMR/);
      assert.match(await page.textContent('[data-role=caption-primary]'), /CLIP-DINOiser \+ PAMR/);
      await screenshot(page, `${b.build}-dinoiser-vs-naclip`);

      // Same method on both sides: identical overlays; PAMR off on one side: they differ.
      await page.selectOption('[data-role=mode-compare]', 'dinoiser');
      c = await waitOverlay(page, 'compare', { mode: 'dinoiser', refine: 'pamr', previous: c.segmentation });
      assert.equal(await canvasHash(page, '[data-role=overlay-compare]'), dinoiser);
      await page.click('[data-role=refine-compare] button:has-text("Off")');
      c = await waitOverlay(page, 'compare', { mode: 'dinoiser', refine: 'none', previous: c.segmentation });
      const unrefined = await canvasHash(page, '[data-role=overlay-compare]');
      assert.notEqual(unrefined, dinoiser, 'PAMR changes the overlay');
      assert.equal(await canvasHash(page, '[data-role=overlay]'), dinoiser);
      t.diagnostic(`${b.build}: classify at 336 without PAMR ${c.segmentMs} ms, with PAMR ${f.segmentMs} ms`);
      timings.push(`${b.build}: classify at 336 (3 labels): ${c.segmentMs} ms without PAMR, ${f.segmentMs} ms with`);
      await screenshot(page, `${b.build}-pamr-vs-none`);

      // A label edit updates both overlays, still from the one encode.
      const [ps, cs] = [f.segmentation, c.segmentation];
      const started = Date.now();
      await page.fill('[data-role=label-input]', 'sky');
      await page.press('[data-role=label-input]', 'Enter');
      f = await waitOverlay(page, 'primary', { mode: 'dinoiser', refine: 'pamr', previous: ps });
      c = await waitOverlay(page, 'compare', { mode: 'dinoiser', refine: 'none', previous: cs });
      const wall = Date.now() - started;
      await waitLegend(page, ['cat', 'wall', 'floor', 'sky']);
      assert.equal(await attr(page, 'data-encodes'), '1');
      timings.push(`${b.build}: label edit (+1 label) at 336 with PAMR: worker ${f.segmentMs} ms classify + PAMR, ${wall} ms from Enter to both overlays (180 ms debounce, embedding included)`);
      await screenshot(page, `${b.build}-label-edit-both-sides`);
      assert.deepEqual(page.errors, []);
      await page.context().close();
    });
  }

  it('refines after the edit settles at 448, lets the K-Means view follow the mode, and shares the comparison', async (t) => {
    const page = await openPage(BUILDS[0], 'labels=cat,wall&mode=naclip&refine=pamr&compare=maskclip&res=448');
    await page.click('[data-sample=chelsea]');
    await waitLegend(page, ['cat', 'wall']);
    assert.equal(await page.inputValue('[data-role=mode-primary]'), 'naclip');
    assert.equal(await page.inputValue('[data-role=mode-compare]'), 'maskclip');
    let f = await waitOverlay(page, 'primary', { mode: 'naclip', refine: 'pamr' });
    await waitOverlay(page, 'compare', { mode: 'maskclip', refine: 'none' });
    assert.equal(await attr(page, 'data-encodes'), '1', 'one encode serves both overlays');
    // The K-Means view clusters the primary mode's features beside MaskCLIP's.
    await page.waitForSelector('[data-role=kmeans-refined][data-mode=naclip]:not(.hidden)', { timeout: 120_000 });
    assert.match(await page.textContent('[data-role=kmeans-mode]'), /NACLIP/);
    const km = await canvasColours(page, '[data-role=kmeans-refined]');
    assert.ok(km.length >= 2, `NACLIP clusters: ${JSON.stringify(km)}`);

    // A label edit at 448: unrefined at once, PAMR once the edit settles.
    const seen = [];
    await page.exposeFunction('__overlaySeen', (d) => seen.push(d));
    await page.evaluate(() => {
      const f = document.querySelector('[data-role=figure-primary]');
      new MutationObserver(() => window.__overlaySeen({ ...f.dataset, t: performance.now() }))
        .observe(f, { attributes: true, attributeFilter: ['data-segmentation'] });
    });
    const t0 = await page.evaluate(() => performance.now());
    await page.fill('[data-role=label-input]', 'floor');
    await page.press('[data-role=label-input]', 'Enter');
    f = await waitOverlay(page, 'primary', { mode: 'naclip', refine: 'pamr', previous: f.segmentation });
    const unrefined = seen.find((d) => d.refine === 'none');
    assert.ok(unrefined, `no unrefined overlay before the refined one: ${JSON.stringify(seen)}`);
    assert.ok(seen.indexOf(unrefined) < seen.findIndex((d) => d.refine === 'pamr'));
    timings.push(`label edit at 448 (windows): unrefined overlay after ${(unrefined.t - t0).toFixed(0)} ms (worker ${unrefined.segmentMs} ms), PAMR overlay after ${(seen.at(-1).t - t0).toFixed(0)} ms (worker ${f.segmentMs} ms classify + PAMR)`);
    assert.equal(await attr(page, 'data-encodes'), '1');
    await screenshot(page, '448-settled-pamr');

    // The share link carries both methods; a fresh page opens the same comparison.
    await page.click('[data-role=share]');
    const url = await page.inputValue('[data-role=share-url]');
    assert.match(url, /&mode=naclip&refine=pamr&compare=maskclip&res=448&/);
    const fresh = await newPage(site.browser);
    await fresh.page.goto(url);
    await fresh.page.waitForSelector('[data-role=model-ready]', { timeout: 120_000 });
    await waitOverlay(fresh.page, 'compare', { mode: 'maskclip', refine: 'none' });
    await waitOverlay(fresh.page, 'primary', { mode: 'naclip', refine: 'pamr' });
    assert.equal(await fresh.page.inputValue('[data-role=mode-compare]'), 'maskclip');
    await screenshot(fresh.page, 'share-link-comparison');
    assert.deepEqual(fresh.page.errors, []);
    await fresh.context.close();

    // Unknown values in a link: a notice in words, the rest of the link applies.
    const odd = await newPage(site.browser);
    await odd.page.goto(`${site.server.origin}/demo/clipdino/#labels=cat,wall&mode=segformer&refine=crf&compare=sclip&sample=chelsea`);
    await odd.page.waitForSelector('[data-role=model-ready]', { timeout: 120_000 });
    const notice = await odd.page.textContent('.notice[data-area=share]');
    assert.match(notice, /Ignored `mode=segformer` in the link: the modes are dinoiser, maskclip, clearclip, naclip, sclip\./);
    assert.match(notice, /Ignored `refine=crf`/);
    await waitOverlay(odd.page, 'compare', { mode: 'sclip' });
    await waitOverlay(odd.page, 'primary', { mode: 'dinoiser' });
    await screenshot(odd.page, 'link-with-unknown-values');
    assert.deepEqual(odd.page.errors, []);
    await odd.context.close();
    assert.deepEqual(page.errors, []);
    for (const line of timings) t.diagnostic(line);
    await page.context().close();
  });
});
