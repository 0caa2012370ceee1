// OpenAI CLIP weights (QuickGELU, no CLIP-DINOiser head) in the built site: random tiny weights in
// transformers' layout (`openai/clip-vit-base-patch16`'s files), converted by the CLI into the
// app's bundle format and loaded through the page's weights URL, and the raw transformers files
// picked from disk. The mode picker disables CLIP-DINOiser with its reason, the CLIP-only modes
// segment. Screenshots land in test-output/page/openai-*.png.
import { describe, it } from 'node:test';
import assert from 'node:assert/strict';
import path from 'node:path';

import {
  attr,
  canvasColours,
  newPage,
  openaiWeights,
  screenshot,
  useSite,
  waitLegend,
  waitOverlay,
} from './helpers.mjs';

const REASON = /CLIP-DINOiser needs the CLIP-DINOiser head, which cannot be used with OpenAI CLIP \(QuickGELU\) weights/;

/** The CLIP-DINOiser option is disabled, says why, and the model line names QuickGELU. */
async function expectNoHead(page) {
  const ready = await page.textContent('[data-role=model-ready]');
  assert.match(ready, /QuickGELU \(OpenAI CLIP\)/, ready);
  assert.match(ready, /no CLIP-DINOiser head: MaskCLIP, ClearCLIP, NACLIP, SCLIP/, ready);
  const option = await page.$eval('[data-role=mode-primary] option[value=dinoiser]', (o) => ({ disabled: o.disabled, text: o.textContent }));
  assert.deepEqual(option, { disabled: true, text: 'CLIP-DINOiser (needs the head)' });
  for (const mode of ['maskclip', 'clearclip', 'naclip', 'sclip']) {
    assert.equal(await page.$eval(`[data-role=mode-primary] option[value=${mode}]`, (o) => o.disabled), false, mode);
  }
  assert.match(await page.textContent('[data-role=mode-unavailable-primary]'), REASON);
}

/** The overlay paints at least two label colours (a real segmentation, not one flat colour). */
async function expectPainted(page) {
  const colours = await canvasColours(page, '[data-role=overlay]');
  assert.ok(colours.length >= 2, `overlay colours: ${JSON.stringify(colours.slice(0, 5))}`);
}

describe('clipdino page: OpenAI CLIP weights', { timeout: 600_000 }, () => {
  let openai;
  const site = useSite('openai', () => {
    openai = openaiWeights();
    return { sites: { openai: openai.site } };
  });

  it('loads an OpenAI bundle by URL: CLIP-DINOiser disabled with its reason, NACLIP segments', async () => {
    const { page, context } = await newPage(site.browser);
    await page.goto(`${site.server.origin}/demo/clipdino/?model=/openai/models/clip-dinoiser.gguf#labels=cat,wall,floor&refine=none`);
    await page.waitForSelector('[data-role=model-ready]', { timeout: 120_000 });
    assert.ok(site.server.log.some((r) => r.path === '/openai/models/clip-dinoiser.gguf'), 'the bundle of the URL was fetched');
    await expectNoHead(page);

    // The default mode (CLIP-DINOiser) cannot run: MaskCLIP shows, and the caption says why.
    await page.click('[data-sample=chelsea]');
    await waitLegend(page, ['cat', 'wall', 'floor']);
    let f = await waitOverlay(page, 'primary', { mode: 'maskclip', refine: 'none' });
    assert.match(await page.textContent('[data-role=caption-primary]'), /CLIP-DINOiser unavailable with these weights/);
    await expectPainted(page);

    // A CLIP-only mode: one last block from the cached trunk, no new encode.
    await page.selectOption('[data-role=mode-primary]', 'naclip');
    f = await waitOverlay(page, 'primary', { mode: 'naclip', refine: 'none', previous: f.segmentation });
    assert.match(f.modeMs, /^\d+(\.\d)?$/, 'NACLIP computed its last block');
    assert.equal(await attr(page, 'data-encodes'), '1');
    // What was asked is showing: no caption note any more.
    assert.equal(await page.$('[data-role=caption-primary]'), null);
    await expectPainted(page);
    await screenshot(page, 'bundle-naclip');
    assert.deepEqual(page.errors, []);
    await context.close();
  });

  it('takes transformers-layout files from disk in place of an OpenCLIP model', async () => {
    const { page, context } = await newPage(site.browser);
    await page.goto(`${site.server.origin}/demo/clipdino/#labels=cat,wall&mode=dinoiser&refine=none`);
    await page.waitForSelector('[data-role=model-ready]', { timeout: 120_000 });
    await page.click('[data-sample=chelsea]');
    await waitLegend(page, ['cat', 'wall']);
    let f = await waitOverlay(page, 'primary', { mode: 'dinoiser', refine: 'none' });
    assert.equal(await page.$eval('[data-role=mode-primary] option[value=dinoiser]', (o) => o.disabled), false);

    // transformers' model.safetensors + config.json (which carries hidden_act: quick_gelu).
    await page.setInputFiles('[data-role=weights-input]', [
      path.join(openai.dir, 'model.safetensors'),
      path.join(openai.dir, 'config.json'),
    ]);
    await page.waitForFunction(() => /local files/.test(document.querySelector('[data-role=model-ready]')?.textContent ?? ''), null, { timeout: 120_000 });
    await expectNoHead(page);
    f = await waitOverlay(page, 'primary', { mode: 'maskclip', refine: 'none', previous: f.segmentation });
    assert.match(await page.textContent('[data-role=caption-primary]'), /CLIP-DINOiser unavailable with these weights/);

    await page.selectOption('[data-role=mode-primary]', 'sclip');
    f = await waitOverlay(page, 'primary', { mode: 'sclip', refine: 'none', previous: f.segmentation });
    await expectPainted(page);
    await screenshot(page, 'files-sclip');
    assert.deepEqual(page.errors, []);
    await context.close();
  });
});
