// The two builds of the model worker: the multi-threaded one where the page is cross-origin
// isolated (the test server sends COOP/COEP like scripts/serve.sh), the single-threaded one
// where it is not; both paint the same overlay. On a host without header control (GitHub Pages)
// the site's service worker makes the page isolated with one reload, and stops after that one
// reload when isolation still does not happen.
import { after, before, describe, it } from 'node:test';
import assert from 'node:assert/strict';

import {
  canvasHash,
  newPage,
  screenshot,
  waitLegend,
  useSite,
} from './helpers.mjs';

const LABELS = ['cat', 'wall', 'floor'];

/** The threads line of the status: `{ build: 'multi'|'single', threads: n, text }`. */
async function threadStatus(page) {
  const el = await page.waitForSelector('[data-role=threads-status]', { timeout: 120_000 });
  return {
    build: await el.getAttribute('data-build'),
    threads: Number(await el.getAttribute('data-threads')),
    text: await el.textContent(),
  };
}

/** Model loaded, sample photo, three labels: the overlay's fingerprint. */
async function segment(page) {
  await page.waitForSelector('[data-role=model-ready]', { timeout: 120_000 });
  await page.click('[data-sample=chelsea]');
  await page.waitForSelector('[data-role=photo]');
  await page.fill('[data-role=label-input]', LABELS.join(', '));
  await page.press('[data-role=label-input]', 'Enter');
  await waitLegend(page, LABELS);
  return canvasHash(page, '[data-role=overlay]');
}

/** Page loads of the site under `prefix` (its index.html), from the server's log. */
function documentLoads(server, prefix) {
  return server.log.filter((r) => r.method === 'GET' && r.path === prefix).length;
}

describe('clipdino page: threads', { timeout: 600_000 }, () => {
  const site = useSite('threads');
  const hashes = {};

  it('runs the multi-threaded build on an isolated page, one thread per core', async () => {
    const { context, page } = await newPage(site.browser);
    await page.goto(`${site.server.origin}/demo/clipdino/`);
    assert.equal(await page.evaluate(() => window.crossOriginIsolated), true);
    const cores = await page.evaluate(() => navigator.hardwareConcurrency);
    const status = await threadStatus(page);
    assert.equal(status.build, 'multi', status.text);
    assert.equal(status.threads, Math.min(cores, 16), status.text);
    assert.ok(status.threads > 1, `this machine reports ${cores} core(s): ${status.text}`);
    assert.ok(page.requests.some((u) => /worker-mt-[0-9a-f]+_bg\.wasm$/.test(u)), 'the threaded wasm was not loaded');
    hashes.multi = await segment(page);
    await screenshot(page, 'multi-threaded');

    // The setting: one thread, then auto again; a new photo encode uses what is set.
    await page.selectOption('#threads', '1');
    await page.waitForSelector('[data-role=threads-status][data-threads="1"]');
    await page.selectOption('#threads', 'auto');
    await page.waitForSelector(`[data-role=threads-status][data-threads="${status.threads}"]`);
    assert.deepEqual(page.errors, []);
    await context.close();
  });

  it('falls back to the single-threaded build without isolation, same overlay', async () => {
    // A static host without the headers, and no service worker allowed: no isolation.
    const context = await site.browser.newContext({ serviceWorkers: 'block', viewport: { width: 1280, height: 1000 } });
    const page = await context.newPage();
    const errors = [];
    page.on('pageerror', (e) => errors.push(String(e)));
    await page.goto(`${site.server.origin}/plain/`);
    assert.equal(await page.evaluate(() => window.crossOriginIsolated), false);
    const status = await threadStatus(page);
    assert.equal(status.build, 'single', status.text);
    assert.equal(status.threads, 1);
    assert.match(status.text, /not cross-origin isolated/);
    hashes.single = await segment(page);
    assert.equal(hashes.single, hashes.multi, 'the two builds painted different overlays');
    await screenshot(page, 'single-threaded');
    assert.deepEqual(errors, []);
    await context.close();
  });

  it('isolates a page of a plain static host with its service worker and one reload', async () => {
    const { context, page } = await newPage(site.browser);
    const before = documentLoads(site.server, '/plain/');
    await page.goto(`${site.server.origin}/plain/`);
    await page.waitForFunction(() => window.crossOriginIsolated === true, null, { timeout: 60_000 });
    const status = await threadStatus(page);
    assert.equal(status.build, 'multi', status.text);
    assert.equal(documentLoads(site.server, '/plain/') - before, 2, 'expected the first load and one reload');
    // Later visits are isolated from the start: no more reloads.
    await page.goto(`${site.server.origin}/plain/`);
    await page.waitForSelector('[data-role=threads-status][data-build=multi]', { timeout: 60_000 });
    assert.equal(documentLoads(site.server, '/plain/') - before, 3);
    assert.deepEqual(page.errors, []);
    await context.close();
  });

  it('reloads only once when the service worker cannot isolate the page', async () => {
    const { context, page } = await newPage(site.browser);
    await page.goto(`${site.server.origin}/inert/`);
    // Give a reload loop time to show itself.
    await page.waitForSelector('[data-role=threads-status]', { timeout: 120_000 });
    await page.waitForTimeout(3000);
    assert.equal(documentLoads(site.server, '/inert/'), 2, 'the page must reload exactly once');
    assert.equal(await page.evaluate(() => window.crossOriginIsolated), false);
    const status = await threadStatus(page);
    assert.equal(status.build, 'single', status.text);
    await page.waitForSelector('[data-role=model-ready]', { timeout: 120_000 });
    await context.close();
  });
});
