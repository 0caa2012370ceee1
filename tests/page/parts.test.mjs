// The site's default bundle published in parts (`clipdino split`, as scripts/publish-models.sh
// writes and scripts/build-site.sh publishes it): the page reads models/clip-dinoiser.parts.json,
// fetches the parts in parallel under one progress bar over the total, checks each part's
// SHA-256, keeps each in the Cache API (a reload downloads none again), and a part with wrong bytes
// gives a notice naming it while the page stays usable; in both model-worker builds.
// Screenshots land in test-output/page/parts-*.png.
import { after, before, describe, it } from 'node:test';
import assert from 'node:assert/strict';
import fs from 'node:fs';

import { startServer } from './server.mjs';
import {
  DIST,
  attr,
  canvasColours,
  checkDist,
  launch,
  matchColours,
  newPage,
  nextSegmentation,
  screenshot,
  screenshotPrefix,
  splitBundle,
  testWeights,
  waitLegend,
} from './helpers.mjs';

const PARTS = 5;

/** Percentages the weights bar showed, as numbers. */
async function shownPercentages(page) {
  return (await page.evaluate(() => window.__pct)).map((p) => parseInt(p, 10));
}

describe('clipdino page: a bundle in parts', { timeout: 600_000 }, () => {
  let server, browser, manifest, bundle;

  before(async () => {
    screenshotPrefix('parts');
    checkDist();
    const w = testWeights();
    bundle = w.bundle;
    const size = fs.statSync(bundle).size;
    const parts = splitBundle(bundle, Math.ceil(size / PARTS));
    manifest = parts.manifest;
    assert.equal(manifest.parts.length, PARTS);
    server = await startServer({ dist: DIST, weights: w.dir, bundle, parts: parts.dir });
    browser = await launch();
  });

  after(async () => {
    await browser?.close();
    await server?.close();
  });

  // Both model-worker builds: the multi-threaded one (an isolated page) and the single-threaded
  // one (no isolation headers, service workers blocked). Each in its own browser context, so
  // each starts with an empty Cache API.
  const BUILDS = [
    { build: 'multi', site: 'parts', context: {} },
    { build: 'single', site: 'plainparts', context: { serviceWorkers: 'block' } },
  ];

  const partRequests = (from = 0) =>
    server.log.slice(from).filter((r) => r.method === 'GET' && /\.part-\d+$/.test(r.path));

  for (const b of BUILDS) {
    let page;
    it(`loads the parts in parallel under one progress bar and segments (${b.build}-threaded build)`, async () => {
      ({ page } = await newPage(browser, b.context));
      await page.addInitScript(() => {
        window.__bars = 0;
        new MutationObserver(() => {
          window.__bars = Math.max(window.__bars, document.querySelectorAll('.weights-progress progress').length);
        }).observe(document, { subtree: true, childList: true });
      });
      const mark = server.log.length;
      await page.goto(`${server.origin}/${b.site}/`);
      await page.waitForSelector(`[data-role=threads-status][data-build=${b.build}]`, { timeout: 120_000 });
      await page.waitForSelector('[data-role=model-ready]', { timeout: 120_000 });
      assert.equal(await page.getAttribute('[data-role=model-ready]', 'data-from-cache'), 'false');
      assert.match(await page.textContent('[data-role=model-ready]'), /q4_0/);
      // One bar over the total: it never starts again from 0 for the next part.
      const pct = await shownPercentages(page);
      assert.ok(pct.includes(100) && pct.some((p) => p < 100), `progress seen: ${pct}`);
      assert.deepEqual(pct, [...pct].sort((a, b) => a - b), `the bar went backwards: ${pct}`);
      assert.equal(await page.evaluate(() => window.__bars), 1, 'one progress bar');
      // Every part once, nothing else of the model; several at the same time.
      const got = partRequests(mark);
      assert.deepEqual(got.map((r) => r.path.split('/').pop()).sort(), manifest.parts.map((p) => p.file));
      assert.ok(got.every((r) => r.path.startsWith(`/${b.site}/models/`)), 'parts come from next to the manifest');
      assert.ok(!server.log.slice(mark).some((r) => r.path.endsWith('.gguf')), 'the single-file bundle is not asked for');
      const [first, second] = got;
      assert.ok(first.end && second.time < first.end, 'the second part was requested before the first had arrived');
      await screenshot(page, `${b.build}-loaded`);

      await page.click('[data-sample=chelsea]');
      await page.waitForSelector('[data-role=photo]');
      await page.fill('[data-role=label-input]', 'cat, wall, floor');
      await page.press('[data-role=label-input]', 'Enter');
      const leg = await waitLegend(page, ['cat', 'wall', 'floor']);
      const seen = matchColours(await canvasColours(page, '[data-role=overlay]'), leg.map((l) => l.color));
      assert.ok(seen.size >= 2, `overlay shows ${seen.size} label colour(s)`);
      await screenshot(page, `${b.build}-segmented`);
    });

    it(`reloads without downloading the parts again (${b.build}-threaded build)`, async () => {
      const mark = server.log.length;
      await page.reload();
      await page.waitForSelector('[data-role=model-ready][data-from-cache=true]', { timeout: 60_000 });
      assert.deepEqual(partRequests(mark), [], 'no part was downloaded again');
      await nextSegmentation(page, '');
      assert.deepEqual(page.errors, []);
      await screenshot(page, `${b.build}-reloaded`);
      await page.context().close();
    });

    it(`names a part with wrong bytes and stays usable (${b.build}-threaded build)`, async () => {
      const { page: bad } = await newPage(browser, b.context);
      await bad.goto(`${server.origin}/${b.site.replace('parts', 'badparts')}/`);
      const sel = '.notice[data-area=weights] .notice-text';
      await bad.waitForSelector(sel, { timeout: 120_000 });
      const text = await bad.textContent(sel);
      const host = new URL(server.origin).host;
      for (const words of [`part 2 of ${PARTS}`, 'clip-dinoiser.part-001', host, 'SHA-256', 'clip-dinoiser.parts.json']) {
        assert.ok(text.includes(words), `the notice lacks ${JSON.stringify(words)}: ${text}`);
      }
      assert.equal(await bad.$('[data-role=model-ready]'), null);
      await screenshot(bad, `${b.build}-damaged-part`);
      // Still usable: the same bundle picked from disk loads and segments.
      await bad.setInputFiles('[data-role=weights-input]', bundle);
      await bad.waitForSelector('[data-role=model-ready]', { timeout: 60_000 });
      await bad.click('[data-sample=chelsea]');
      const seg = await attr(bad, 'data-segmentation');
      await bad.fill('[data-role=label-input]', 'cat, floor');
      await bad.press('[data-role=label-input]', 'Enter');
      await nextSegmentation(bad, seg);
      await screenshot(bad, `${b.build}-recovered`);
      await bad.context().close();
    });
  }
});
