// End-to-end flow of the built site in headless Chromium, with random tiny-model weights:
// weights download with progress → sample photo → labels → overlay + legend → label edit without
// re-encoding → reload from the Cache API (weights and label embeddings) → K-Means → share link in
// a fresh page.
// Screenshots of every step land in test-output/page/.
import { after, before, describe, it } from 'node:test';
import assert from 'node:assert/strict';
import fs from 'node:fs';
import path from 'node:path';

import { startServer } from './server.mjs';
import {
  DIST,
  OUT,
  attr,
  canvasColours,
  canvasHash,
  checkDist,
  chips,
  launch,
  legend,
  matchColours,
  newPage,
  nextSegmentation,
  screenshot,
  screenshotPrefix,
  testWeights,
  waitLegend,
} from './helpers.mjs';

const debugAttr = (page, name) => page.getAttribute('[data-role=debug]', name);

describe('clipdino page: main flow', { timeout: 600_000 }, () => {
  let server, browser, page, context, site;

  before(async () => {
    screenshotPrefix('flow');
    checkDist();
    const { dir, bundle } = testWeights();
    server = await startServer({ dist: DIST, weights: dir, bundle });
    site = `${server.origin}/demo/clipdino/`;
    browser = await launch();
    ({ context, page } = await newPage(browser));
  });

  after(async () => {
    await browser?.close();
    await server?.close();
  });

  it('loads the site bundle with progress up to 100 %', async () => {
    await page.goto(site);
    await page.waitForSelector('[data-role=model-ready]', { timeout: 120_000 });
    const pct = await page.evaluate(() => window.__pct);
    assert.ok(pct.includes('100 %'), `progress seen: ${pct}`);
    assert.ok(pct.some((p) => parseInt(p) < 100), `no intermediate progress in ${pct}`);
    assert.equal(await page.getAttribute('[data-role=model-ready]', 'data-from-cache'), 'false');
    assert.match(await page.textContent('[data-role=model-ready]'), /q4_0/);
    await screenshot(page, 'weights-loaded');
  });

  it('segments a sample photo with three typed labels', async () => {
    await page.click('[data-sample=chelsea]');
    await page.waitForSelector('[data-role=photo]');
    await page.fill('[data-role=label-input]', 'cat, wall, floor');
    await page.press('[data-role=label-input]', 'Enter');
    assert.deepEqual(await chips(page), ['cat', 'wall', 'floor']);
    const leg = await waitLegend(page, ['cat', 'wall', 'floor']);
    const pixels = await canvasColours(page, '[data-role=overlay]');
    const seen = matchColours(pixels, leg.map((l) => l.color));
    assert.ok(seen.size >= 2, `overlay shows ${seen.size} label colour(s): ${JSON.stringify(pixels.slice(0, 8))}`);
    // Every overlay pixel carries a legend colour.
    const stray = pixels.filter((p) => matchColours([p], leg.map((l) => l.color)).size === 0);
    assert.equal(stray.length, 0, `pixels in colours outside the legend: ${JSON.stringify(stray.slice(0, 5))}`);
    assert.equal(await attr(page, 'data-encodes'), '1');
    await screenshot(page, 'segmented');
  });

  it('shows label and confidence on hover, isolates a label from the legend', async () => {
    const box = await page.locator('[data-role=overlay]').boundingBox();
    await page.mouse.move(box.x + box.width / 2, box.y + box.height / 2);
    const text = await page.textContent('[data-role=hover]');
    assert.match(text, /^(cat|wall|floor) · \d+ %$/);
    const before = await canvasColours(page, '[data-role=overlay]');
    const [first] = await legend(page);
    await page.click(`[data-role=legend] [data-label="${first.label}"]`);
    await page.waitForSelector('.entry.isolated');
    const only = matchColours(await canvasColours(page, '[data-role=overlay]'), (await legend(page)).map((l) => l.color));
    assert.ok(only.size <= 1 && [...only].every((c) => c === first.color), `isolated overlay shows ${[...only]}`);
    await screenshot(page, 'isolated');
    await page.click(`[data-role=legend] [data-label="${first.label}"]`);
    await page.waitForSelector('.entry.isolated', { state: 'detached' });
    assert.deepEqual(await canvasColours(page, '[data-role=overlay]'), before);
  });

  it('downloads the overlay and the label map as PNGs at the photo size', async () => {
    for (const [role, name] of [['download-overlay', /^clipdino-overlay\.png$/], ['download-map', /^clipdino-labels_0-cat_1-wall_2-floor\.png$/]]) {
      const [download] = await Promise.all([page.waitForEvent('download'), page.click(`[data-role=${role}]`)]);
      assert.match(download.suggestedFilename(), name);
      const file = path.join(OUT, download.suggestedFilename());
      await download.saveAs(file);
      const png = fs.readFileSync(file);
      assert.equal(png.subarray(1, 4).toString(), 'PNG');
      // IHDR: width and height of the chelsea sample (451 × 300).
      assert.deepEqual([png.readUInt32BE(16), png.readUInt32BE(20)], [451, 300]);
    }
  });

  it('re-segments on a label edit without encoding the image again', async () => {
    const seg = await attr(page, 'data-segmentation');
    const encodes = await attr(page, 'data-encodes');
    const before = await canvasHash(page, '[data-role=overlay]');
    // Escape leaves a chip unchanged.
    await page.click('.chip[data-label=wall] .chip-text');
    await page.fill('[data-role=chip-edit]', 'nothing');
    await page.press('[data-role=chip-edit]', 'Escape');
    await page.waitForSelector('[data-role=chip-edit]', { state: 'detached' });
    assert.deepEqual(await chips(page), ['cat', 'wall', 'floor']);
    await page.click('.chip[data-label=wall] .chip-text');
    await page.fill('[data-role=chip-edit]', 'window');
    await page.press('[data-role=chip-edit]', 'Enter');
    await nextSegmentation(page, seg);
    await waitLegend(page, ['cat', 'window', 'floor']);
    assert.notEqual(await canvasHash(page, '[data-role=overlay]'), before, 'the overlay changed');
    assert.equal(await attr(page, 'data-encodes'), encodes, 'no new image encode for a label edit');
    assert.match(await page.textContent('[data-role=debug]'), new RegExp(`image encodes: ${encodes}`));
    await screenshot(page, 'label-edited');
  });

  it('switches to raw MaskCLIP without re-encoding', async () => {
    const seg = await attr(page, 'data-segmentation');
    await page.selectOption('[data-role=mode-primary]', 'maskclip');
    await nextSegmentation(page, seg);
    assert.equal(await attr(page, 'data-encodes'), '1');
    await page.selectOption('[data-role=mode-primary]', 'dinoiser');
    await nextSegmentation(page, await attr(page, 'data-segmentation'));
  });

  it('reloads the weights from the Cache API', async () => {
    const mark = server.log.length;
    await page.reload();
    await page.waitForSelector('[data-role=model-ready][data-from-cache=true]', { timeout: 60_000 });
    assert.match(await page.textContent('[data-role=model-ready]'), /loaded from cache/);
    const refetched = server.log.slice(mark).filter((r) => r.path.endsWith('.gguf'));
    assert.deepEqual(refetched, [], 'no network request for the weights after a reload');
    // The fragment restored labels and sample; the photo is segmented again, with the label
    // embeddings the previous page load stored (the text tower does not run).
    assert.deepEqual(await chips(page), ['cat', 'window', 'floor']);
    await nextSegmentation(page, '');
    assert.equal(await debugAttr(page, 'data-label-loads'), '3', 'labels read back from browser storage');
    assert.equal(await debugAttr(page, 'data-label-embeds'), '0', 'labels embedded again');
    await screenshot(page, 'reloaded-from-cache');
  });

  it('shows k K-Means colours', async () => {
    await page.locator('[data-role=k]').fill('5');
    await page.waitForSelector('[data-role=kmeans-raw][data-k="5"]', { timeout: 60_000 });
    const raw = await canvasColours(page, '[data-role=kmeans-raw]');
    const refined = await canvasColours(page, '[data-role=kmeans-refined]');
    assert.equal(raw.length, 5, `raw clusters: ${JSON.stringify(raw)}`);
    assert.ok(refined.length >= 2 && refined.length <= 5, `refined clusters: ${JSON.stringify(refined)}`);
    await page.locator('.kmeans').scrollIntoViewIfNeeded();
    await screenshot(page, 'kmeans');
  });

  it('restores labels and settings from a share link in a fresh page', async () => {
    await page.click('[data-role=resolution] button:has-text("Fast")');
    await page.click('[data-role=templates] button:has-text("80")');
    await page.selectOption('[data-role=mode-primary]', 'maskclip');
    await page.click('[data-role=share]');
    const url = await page.inputValue('[data-role=share-url]');
    assert.match(url, /#labels=cat,window,floor&mode=maskclip&refine=pamr&res=224&tpl=80&k=5/);
    assert.match(url, /sample=chelsea/);
    const fresh = await newPage(browser);
    await fresh.page.goto(url);
    await fresh.page.waitForSelector('[data-role=model-ready]', { timeout: 120_000 });
    assert.deepEqual(await chips(fresh.page), ['cat', 'window', 'floor']);
    assert.equal(await fresh.page.inputValue('[data-role=mode-primary]'), 'maskclip', 'mode restored');
    for (const [group, text] of [['refine-primary', 'PAMR'], ['resolution', 'Fast'], ['templates', '80']]) {
      const pressed = await fresh.page.getAttribute(`[data-role=${group}] button:has-text("${text}")`, 'aria-pressed');
      assert.equal(pressed, 'true', `${group} restored`);
    }
    await waitLegend(fresh.page, ['cat', 'window', 'floor']);
    await screenshot(fresh.page, 'share-link-restored');
    assert.deepEqual(fresh.page.errors, []);
    await fresh.context.close();
  });

  it('follows a fragment edited by hand', async () => {
    await page.evaluate(() => {
      location.hash = 'labels=sky,grass&mode=dinoiser&res=336';
    });
    await page.waitForFunction(() => document.querySelectorAll('[data-role=chips] .chip[data-label]').length === 2);
    assert.deepEqual(await chips(page), ['sky', 'grass']);
    await waitLegend(page, ['sky', 'grass']);
    // The page writes its own state back (sample, k, …) without a reload.
    assert.match(await page.evaluate(() => location.hash), /^#labels=sky,grass&mode=dinoiser&res=336&tpl=80&k=5&opacity=55&sample=chelsea$/);
  });

  it('reuses the stored 80-template label embeddings after a reload', async (t) => {
    // The fragment test above embedded sky + grass with the 80 templates in this page load.
    await waitLegend(page, ['sky', 'grass']);
    const embeds = Number(await debugAttr(page, 'data-label-embeds'));
    assert.ok(embeds >= 2, `labels embedded before the reload: ${embeds}`);
    const before = await debugAttr(page, 'data-segment-ms');
    await page.reload();
    await nextSegmentation(page, '');
    await waitLegend(page, ['sky', 'grass']);
    assert.equal(await debugAttr(page, 'data-label-loads'), '2');
    assert.equal(await debugAttr(page, 'data-label-embeds'), '0');
    const afterMs = await debugAttr(page, 'data-segment-ms');
    t.diagnostic(`segmentation with 2 new labels (80 templates): ${before} ms embedding, ${afterMs} ms from storage`);
    // Stored in the page's own Cache API bucket, under keys naming the template set.
    const keys = await page.evaluate(async () => (await (await caches.open('clipdino-label-embeddings')).keys()).map((r) => r.url));
    assert.ok(keys.some((k) => /\/full-[0-9a-f]{16}\?label=sky$/.test(k)), JSON.stringify(keys));
  });

  it('asked nothing of any other host and logged no errors', async () => {
    assert.deepEqual(page.errors, []);
    const foreign = page.requests.filter((u) => !u.startsWith(server.origin) && !u.startsWith('blob:') && !u.startsWith('data:'));
    assert.deepEqual(foreign, [], 'requests to other hosts');
    const posts = server.log.filter((r) => r.method !== 'GET' && r.method !== 'HEAD');
    assert.deepEqual(posts, [], 'the page never uploads anything');
  });
});
