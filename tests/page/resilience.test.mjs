// Hostile situations the page must survive: the model worker dying mid-encode (a panic, an
// out-of-memory abort, a restart loop; in both worker builds), a worker that computes without
// replying, and a link naming weights on another origin.
// Screenshots land in test-output/page/.
import { after, before, describe, it } from 'node:test';
import assert from 'node:assert/strict';

import { startServer } from './server.mjs';
import {
  DIST,
  attr,
  canvasColours,
  checkDist,
  chips,
  launch,
  legend,
  matchColours,
  newPage,
  screenshot,
  screenshotPrefix,
  testWeights,
  waitLegend,
  expectNotice,
} from './helpers.mjs';

const waitAttr = (page, name, value, timeout = 120_000) =>
  page.waitForFunction(([n, v]) => document.querySelector('.app')?.getAttribute(n) === v, [name, value], { timeout });

/** The overlay shows legend colours for `labels` (the worker's result is on screen). */
async function overlayBack(page, labels) {
  await waitLegend(page, labels, 120_000);
  const colours = (await legend(page)).map((l) => l.color);
  const seen = matchColours(await canvasColours(page, '[data-role=overlay]'), colours);
  assert.ok(seen.size >= 1, 'the overlay shows no label colour');
}

/** Open a sample photo whose encode crashes the worker with `fault` ("panic" | "oom" | "hang"). */
async function crashOn(page, sample, fault) {
  await page.evaluate((f) => window.clipdinoDebug.injectFault(f), fault);
  await page.click(`[data-sample=${sample}]`);
}

describe('clipdino page: worker crashes and foreign weights', { timeout: 600_000 }, () => {
  let server, other, browser, weights, bundle;

  before(async () => {
    screenshotPrefix('resilience');
    checkDist();
    ({ dir: weights, bundle } = testWeights());
    server = await startServer({ dist: DIST, weights, bundle });
    // A second origin (another port) for the weights a link may name.
    other = await startServer({ dist: DIST, weights, bundle, throttle: false });
    browser = await launch();
  });

  after(async () => {
    await browser?.close();
    await server?.close();
    await other?.close();
  });

  // Both model-worker builds: the multi-threaded one (an isolated page) and the single-threaded
  // one (a static host without the isolation headers, service workers blocked).
  const BUILDS = [
    { build: 'multi', route: '/demo/clipdino/', context: {} },
    { build: 'single', route: '/plain/', context: { serviceWorkers: 'block' } },
  ];

  /** A page of `build` opened with the test hooks, the model ready and the chelsea overlay shown. */
  async function debugPage({ build, route, context }) {
    const { page } = await newPage(browser, context);
    await page.goto(`${server.origin}${route}?debug-worker#labels=cat,wall`);
    await page.waitForSelector(`[data-role=threads-status][data-build=${build}]`, { timeout: 120_000 });
    await page.waitForSelector('[data-role=model-ready]', { timeout: 120_000 });
    await page.click('[data-sample=chelsea]');
    await overlayBack(page, ['cat', 'wall']);
    assert.equal(await attr(page, 'data-worker-restarts'), '0');
    return page;
  }

  const downloads = () => server.log.filter((r) => r.method === 'GET' && r.path.endsWith('.gguf')).length;

  for (const b of BUILDS) {
    it(`recovers from a worker that dies mid-encode, and stops a restart loop (${b.build}-threaded build)`, async () => {
      const page = await debugPage(b);
      // A panic: its own words are shown (not the generic error event), a fresh worker gets
      // the weights (from the Cache API, no second download) and the photo, the overlay
      // returns, and the message stays (the user must be able to read it).
      const before = downloads();
      await crashOn(page, 'coffee', 'panic');
      const panicText = await expectNotice(page, 'result', /crashed \(panicked at .*fault injected by the page/);
      assert.match(panicText, /A fresh worker was started with the same weights and photo/);
      assert.doesNotMatch(panicText, /unreachable|\n/);
      await screenshot(page, `${b.build}-worker-panicked`);
      await waitAttr(page, 'data-worker-restarts', '1');
      await page.waitForSelector('[data-role=model-ready]', { timeout: 120_000 });
      assert.equal(await page.getAttribute('[data-role=model-ready]', 'data-from-cache'), 'true');
      await overlayBack(page, ['cat', 'wall']);
      assert.equal(downloads(), before, 'the weights were downloaded again');
      assert.match(await page.getAttribute('[data-role=photo]', 'src'), /coffee/);
      assert.equal(await expectNotice(page, 'result', /crashed/), panicText, 'the message went with the overlay');
      await screenshot(page, `${b.build}-recovered-after-panic`);

      // An allocation failure aborts without a message: the trap's text, in words.
      await crashOn(page, 'astronaut', 'oom');
      await expectNotice(page, 'result', /ran out of memory or aborted/);
      await waitAttr(page, 'data-worker-restarts', '2');
      await page.waitForSelector('[data-role=model-ready]', { timeout: 120_000 });
      await overlayBack(page, ['cat', 'wall']);
      assert.match(await page.getAttribute('[data-role=photo]', 'src'), /astronaut/);
      await screenshot(page, `${b.build}-recovered-after-oom`);

      // A third death within two minutes: no automatic restart, a button instead.
      await crashOn(page, 'rocket', 'panic');
      await expectNotice(page, 'result', /3 times within 2 minutes/);
      await page.waitForSelector('[data-role=restart-worker]');
      assert.equal(await attr(page, 'data-worker-restarts'), '2');
      assert.equal(await page.$('.weights-progress'), null, 'a spinner still turns');
      await screenshot(page, `${b.build}-gave-up`);
      await page.click('[data-role=restart-worker]');
      await waitAttr(page, 'data-worker-restarts', '3');
      await page.waitForSelector('[data-role=model-ready]', { timeout: 120_000 });
      await overlayBack(page, ['cat', 'wall']);
      await screenshot(page, `${b.build}-restarted-by-hand`);
      await page.context().close();
    });
  }

  // The silence rule (120 s shipped) shortened for this page's worker only: a worker that
  // computes and never replies is ended, reported, and replaced.
  it('treats a worker that computes without replying as dead', async () => {
    const page = await debugPage(BUILDS[0]);
    await page.evaluate(() => window.clipdinoDebug.setSilenceLimit(3000));
    const started = Date.now();
    await crashOn(page, 'coffee', 'hang');
    const text = await expectNotice(page, 'result', /stopped answering \(no reply for \d+ s while computing\)/);
    assert.ok(Date.now() - started < 30_000, 'the silence limit was not shortened');
    assert.match(text, /A fresh worker was started with the same weights and photo/);
    await screenshot(page, 'worker-silent');
    await waitAttr(page, 'data-worker-restarts', '1');
    await page.waitForSelector('[data-role=model-ready]', { timeout: 120_000 });
    await overlayBack(page, ['cat', 'wall']);
    assert.match(await page.getAttribute('[data-role=photo]', 'src'), /coffee/);
    assert.deepEqual(await chips(page), ['cat', 'wall']);
    await screenshot(page, 'recovered-after-silence');
    await page.context().close();
  });

  it('asks once before loading weights from another origin', async () => {
    const { page } = await newPage(browser);
    const path = '/demo/clipdino/models/clip-dinoiser.gguf';
    const foreign = `${other.origin}${path}`;
    const host = other.origin.replace('http://', '');
    await page.goto(`${server.origin}/demo/clipdino/?model=${encodeURIComponent(foreign)}`);
    await page.waitForSelector('[data-role=foreign-weights]', { timeout: 60_000 });
    const text = await page.textContent('[data-role=foreign-weights]');
    assert.match(text, new RegExp(`Load weights from ${host.replace(/\./g, '\\.')} \\(\\d+(\\.\\d)? MB\\)\\?`));
    const gets = () => other.log.filter((r) => r.method === 'GET' && r.path === path).length;
    assert.equal(gets(), 0, 'downloaded before the click');
    assert.equal(await attr(page, 'data-model'), 'none');
    await screenshot(page, 'foreign-weights-question');
    await page.click('[data-role=weights-accept]');
    await page.waitForSelector('[data-role=model-ready]', { timeout: 120_000 });
    assert.equal(gets(), 1);
    assert.match(await page.textContent('[data-role=model-ready]'), new RegExp(host.replace(/\./g, '\\.')));
    await screenshot(page, 'foreign-weights-loaded');
  });
});
