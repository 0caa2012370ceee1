// Bad input in the built site: broken photos, truncated / wrong weights, unreachable hub, label
// limits. Each must give a readable message near where the user acted, and the page keeps working.
import { after, before, describe, it } from 'node:test';
import assert from 'node:assert/strict';
import fs from 'node:fs';
import path from 'node:path';
import zlib from 'node:zlib';

import { startServer } from './server.mjs';
import {
  DIST,
  ROOT,
  attr,
  checkDist,
  chips,
  launch,
  legend,
  newPage,
  nextSegmentation,
  screenshot,
  screenshotPrefix,
  testWeights,
  waitLegend,
  expectNotice,
} from './helpers.mjs';

/** A well-formed GGUF (v3) of another model: `general.architecture = llama` and one F32 tensor
 * `token_embd.weight` of 4 values. */
function foreignGguf() {
  const u32 = (v) => { const b = Buffer.alloc(4); b.writeUInt32LE(v); return b; };
  const u64 = (v) => { const b = Buffer.alloc(8); b.writeBigUInt64LE(BigInt(v)); return b; };
  const str = (t) => Buffer.concat([u64(Buffer.byteLength(t)), Buffer.from(t)]);
  const head = Buffer.concat([
    Buffer.from('GGUF'), u32(3), u64(1), u64(1),
    str('general.architecture'), u32(8), str('llama'),
    str('token_embd.weight'), u32(1), u64(4), u32(0), u64(0),
  ]);
  const pad = Buffer.alloc((32 - (head.length % 32)) % 32);
  return Buffer.concat([head, pad, Buffer.alloc(16, 0x3f)]);
}

/** A valid PNG header (signature + IHDR) claiming `w × h` pixels, with no image data. */
function pngHeader(w, h) {
  const ihdr = Buffer.alloc(13);
  ihdr.writeUInt32BE(w, 0);
  ihdr.writeUInt32BE(h, 4);
  ihdr.set([8, 2, 0, 0, 0], 8);
  const body = Buffer.concat([Buffer.from('IHDR'), ihdr]);
  const len = Buffer.alloc(4);
  len.writeUInt32BE(13);
  const crc = Buffer.alloc(4);
  crc.writeUInt32BE(zlib.crc32(body));
  return Buffer.concat([Buffer.from([0x89, 0x50, 0x4e, 0x47, 0x0d, 0x0a, 0x1a, 0x0a]), len, body, crc]);
}

async function dismiss(page, area) {
  await page.click(`.notice[data-area=${area}] .notice-close`);
  await page.waitForSelector(`.notice[data-area=${area}]`, { state: 'detached' });
}

describe('clipdino page: bad input', { timeout: 600_000 }, () => {
  let server, browser, page, weights, bundle;

  before(async () => {
    screenshotPrefix('errors');
    checkDist();
    ({ dir: weights, bundle } = testWeights());
    server = await startServer({ dist: DIST, weights, bundle });
    browser = await launch();
    ({ page } = await newPage(browser));
    await page.goto(`${server.origin}/demo/clipdino/`);
    await page.waitForSelector('[data-role=model-ready]', { timeout: 120_000 });
  });

  after(async () => {
    await browser?.close();
    await server?.close();
  });

  it('explains broken, empty, unknown and gigantic photo files', async () => {
    const cases = [
      [{ name: 'broken.jpg', mimeType: 'image/jpeg', buffer: Buffer.concat([Buffer.from([0xff, 0xd8, 0xff, 0xe0]), Buffer.alloc(4000, 7)]) }, /broken\.jpg.*(damaged|not an image)/],
      [{ name: 'empty.png', mimeType: 'image/png', buffer: Buffer.alloc(0) }, /empty\.png.*empty \(0 bytes\)/],
      [{ name: 'notes.txt', mimeType: 'text/plain', buffer: Buffer.from('hello') }, /notes\.txt.*neither a photo nor a weights file/],
      // The model crate's limits (clipdino::limits): 16384 pixels a side, 100 megapixels.
      [{ name: 'huge.png', mimeType: 'image/png', buffer: pngHeader(30000, 30000) }, /huge\.png”: the photo is 30000×30000 pixels, over the limit of 16384 pixels a side/],
      [{ name: 'wide.png', mimeType: 'image/png', buffer: pngHeader(12000, 9000) }, /wide\.png”: the photo is 12000×9000 pixels \(108\.0 megapixels\), over the limit of 100 megapixels/],
    ];
    for (const [i, [file, re]] of cases.entries()) {
      await page.setInputFiles('[data-role=photo-input]', file);
      await expectNotice(page, 'photo', re);
      if (i === 0) await screenshot(page, 'broken-photo');
      await dismiss(page, 'photo');
    }
    // Still working: a sample photo segments normally.
    await page.click('[data-sample=coffee]');
    await page.fill('[data-role=label-input]', 'cup, table');
    await page.press('[data-role=label-input]', 'Enter');
    await waitLegend(page, ['cup', 'table']);
  });

  it('respects EXIF orientation', async () => {
    await page.setInputFiles('[data-role=photo-input]', path.join(ROOT, 'tests/page/fixtures/exif-rotated.jpg'));
    // Stored 96 × 48 with orientation 6 (rotate 90°): shown 48 × 96.
    await page.waitForFunction(() => document.querySelector('.credit')?.textContent.includes('exif-rotated.jpg'));
    assert.match(await page.textContent('.credit'), /48 × 96 px/);
    await page.waitForFunction(() => {
      const i = document.querySelector('[data-role=photo]');
      return i?.complete && i.naturalWidth > 0 && i.src.startsWith('blob:');
    });
    const natural = await page.$eval('[data-role=photo]', (i) => [i.naturalWidth, i.naturalHeight]);
    assert.deepEqual(natural, [48, 96], 'the preview is upright too');
  });

  it('refuses a truncated and a wrong weight file and keeps the loaded model', async () => {
    const bytes = fs.readFileSync(bundle);
    await page.setInputFiles('[data-role=weights-input]', {
      name: 'clip-dinoiser.gguf',
      mimeType: 'application/octet-stream',
      buffer: bytes.subarray(0, bytes.length >> 1),
    });
    await expectNotice(page, 'weights', /could not be loaded.*truncated.*previously loaded model stays in use/is);
    await screenshot(page, 'truncated-weights');
    await dismiss(page, 'weights');
    await page.setInputFiles('[data-role=weights-input]', {
      name: 'open_clip_model.safetensors',
      mimeType: 'application/octet-stream',
      buffer: Buffer.from('this is not a weights file at all'),
    });
    await expectNotice(page, 'weights', /open_clip_model\.safetensors is not a weights file we can read/);
    await dismiss(page, 'weights');
    // A well-formed GGUF of another model (a language model's embedding table): not ours.
    await page.setInputFiles('[data-role=weights-input]', { name: 'llama.gguf', mimeType: 'application/octet-stream', buffer: foreignGguf() });
    await expectNotice(page, 'weights', /could not be loaded.*previously loaded model stays in use/is);
    await dismiss(page, 'weights');
    // The model still segments.
    await page.click('[data-sample=chelsea]');
    const seg = await attr(page, 'data-segmentation');
    await page.fill('[data-role=label-input]', 'floor');
    await page.press('[data-role=label-input]', 'Enter');
    await nextSegmentation(page, seg);
    await waitLegend(page, ['cup', 'table', 'floor']);
  });

  it('explains label problems', async () => {
    await page.fill('[data-role=label-input]', 'CUP');
    await page.press('[data-role=label-input]', 'Enter');
    await expectNotice(page, 'labels', /“CUP” is already in the list/);
    // Duplicates as the tokenizer reads them (clipdino::limits::label_key), not by case alone.
    await page.fill('[data-role=label-input]', 'ｃｕｐ');
    await page.press('[data-role=label-input]', 'Enter');
    await expectNotice(page, 'labels', /“ｃｕｐ” is already in the list \(it reads the same to the model as “cup”\)/);
    await page.fill('[data-role=label-input]', 'x'.repeat(120));
    await page.press('[data-role=label-input]', 'Enter');
    await expectNotice(page, 'labels', /too long: labels have at most 80 characters/);
    await page.press('[data-role=label-input]', 'Enter');
    await expectNotice(page, 'labels', /Empty label/);
    const many = Array.from({ length: 250 }, (_, i) => `thing ${i}`).join(', ');
    await page.fill('[data-role=label-input]', many);
    await page.press('[data-role=label-input]', 'Enter');
    await expectNotice(page, 'labels', /At most 200 labels/);
    assert.equal((await chips(page)).length, 200);
    await screenshot(page, 'too-many-labels');
    // 200 labels still segment (one byte per pixel label map).
    await nextSegmentation(page, await attr(page, 'data-segmentation'), 180_000);
    assert.equal((await legend(page)).length, 200);
  });

  it('cancels a download on request', async () => {
    const { page: p, context } = await newPage(browser);
    await p.goto(`${server.origin}/demo/clipdino/?clip=/weights/open_clip_pytorch_model.bin&head=/weights/last.pt`);
    await p.waitForSelector('.weights-progress[data-stage=Download]', { timeout: 60_000 });
    await screenshot(p, 'downloading');
    await p.click('.weights-progress button:has-text("Cancel")');
    await expectNotice(p, 'weights', /^Download cancelled\.$/);
    assert.equal(await p.getAttribute('.app', 'data-model'), 'none');
    await context.close();
  });

  it('says when a weights URL is not found', async () => {
    const { page: p, context } = await newPage(browser);
    await p.goto(`${server.origin}/demo/clipdino/?model=/broken/missing.gguf`);
    await expectNotice(p, 'weights', /Model bundle missing\.gguf — 127\.0\.0\.1:\d+ has no missing\.gguf \(404 Not Found\)\. You can pick the weight files from your disk/);
    await context.close();
  });

  it('says when a download is cut off', async () => {
    const { page: p, context } = await newPage(browser);
    await p.goto(`${server.origin}/demo/clipdino/?model=/broken/cut-transfer.gguf`);
    await expectNotice(p, 'weights', /(incomplete|broke off)/);
    assert.match(await p.textContent('.weights'), /Choose weight files/);
    await screenshot(p, 'cut-download');
    await context.close();
  });

  it('offers the hub download with its size, says when the hub is unreachable, then takes local files', async () => {
    const { page: p, context } = await newPage(browser);
    await p.goto(`${server.origin}/bare/`);
    await p.waitForSelector('[data-role=weights-offer]', { timeout: 60_000 });
    assert.match(await p.textContent('[data-role=weights-offer]'), /Download \(≈ 606 MB\)/);
    assert.ok(!p.requests.some((u) => u.includes('huggingface')), 'nothing is fetched before the user agrees');
    await screenshot(p, 'hub-offer');
    await p.click('[data-role=weights-offer] button.primary');
    await expectNotice(p, 'weights', /Could not reach huggingface\.co .*pick the weight files from your disk/);
    await screenshot(p, 'hub-unreachable');
    await p.setInputFiles('[data-role=weights-input]', [
      path.join(weights, 'open_clip_model.safetensors'),
      path.join(weights, 'open_clip_config.json'),
      path.join(weights, 'last.pt'),
    ]);
    await p.waitForSelector('[data-role=model-ready]', { timeout: 60_000 });
    assert.match(await p.textContent('[data-role=model-ready]'), /local files/);
    await context.close();
  });
});
