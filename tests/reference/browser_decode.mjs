// Decode photos in headless Chromium with exactly the calls the app's worker makes
// (src/worker/image.rs), inside a dedicated Worker: `createImageBitmap(blob, {imageOrientation:
// "from-image"})`, then the full-size bitmap copied 1:1 in bands of rows onto an OffscreenCanvas
// over white (image smoothing off) and read back with getImageData — the RGBA bytes the model
// crate's bilinear resize (`Rgba8Resize`) reads. The old path's browser resize
// (`createImageBitmap(bitmap, {resizeWidth, resizeHeight, resizeQuality: "high"})`) is still
// written for the sizes asked, for comparison.
//
//   node tests/reference/browser_decode.mjs JOB.json OUT_DIR
//
// JOB.json: [{"path": "www/samples/chelsea.jpg", "sizes": [[504, 336], ...]}, ...] (paths absolute
// or relative to the repository). Writes OUT_DIR/<i>.decoded.rgb (the app's bytes),
// OUT_DIR/<i>.<w>x<h>.rgb (the browser's resize; RGB bytes, row-major) and OUT_DIR/manifest.json
// with the decoded sizes and the browser version.
// Driven by tests/reference/browser_gap.py, which compares the bytes with PIL + PyTorch.
import fs from 'node:fs';
import path from 'node:path';
import { chromium } from 'playwright-core';

const ROOT = path.resolve(import.meta.dirname, '../..');
const [jobFile, outDir] = process.argv.slice(2);
if (!jobFile || !outDir) {
  console.error('usage: node tests/reference/browser_decode.mjs JOB.json OUT_DIR');
  process.exit(2);
}
const job = JSON.parse(fs.readFileSync(jobFile, 'utf8'));
fs.mkdirSync(outDir, { recursive: true });

// The worker's code, as a string (it runs from a blob: URL).
const WORKER = `
async function toRgb(bitmap, w, h) {
  const canvas = new OffscreenCanvas(w, h);
  const ctx = canvas.getContext('2d');
  ctx.fillStyle = '#fff';
  ctx.fillRect(0, 0, w, h);
  ctx.drawImage(bitmap, 0, 0);
  const rgba = ctx.getImageData(0, 0, w, h).data;
  const rgb = new Uint8Array(w * h * 3);
  for (let i = 0, j = 0; i < rgba.length; i += 4, j += 3) {
    rgb[j] = rgba[i]; rgb[j + 1] = rgba[i + 1]; rgb[j + 2] = rgba[i + 2];
  }
  return rgb;
}
// As to_chw01 in src/worker/image.rs: bands of whole rows (about 4 Mpx each), each drawn 1:1.
function appRgb(bitmap) {
  const w = bitmap.width, h = bitmap.height;
  const band = Math.max(1, Math.min(h, Math.floor((4 << 20) / w)));
  const ctx = new OffscreenCanvas(w, band).getContext('2d');
  ctx.imageSmoothingEnabled = false;
  ctx.fillStyle = '#fff';
  const rgb = new Uint8Array(w * h * 3);
  for (let y = 0; y < h; y += band) {
    const n = Math.min(band, h - y);
    ctx.fillRect(0, 0, w, n);
    ctx.drawImage(bitmap, 0, y, w, n, 0, 0, w, n);
    const rgba = ctx.getImageData(0, 0, w, n).data;
    for (let i = 0, j = y * w * 3; i < rgba.length; i += 4, j += 3) {
      rgb[j] = rgba[i]; rgb[j + 1] = rgba[i + 1]; rgb[j + 2] = rgba[i + 2];
    }
  }
  return rgb;
}
onmessage = async (e) => {
  const { bytes, sizes } = e.data;
  const blob = new Blob([bytes]);
  const bitmap = await createImageBitmap(blob, { imageOrientation: 'from-image' });
  const out = { width: bitmap.width, height: bitmap.height, decoded: appRgb(bitmap), resized: [] };
  for (const [w, h] of sizes) {
    const r = (w === bitmap.width && h === bitmap.height) ? bitmap
      : await createImageBitmap(bitmap, { resizeWidth: w, resizeHeight: h, resizeQuality: 'high' });
    out.resized.push(await toRgb(r, w, h));
  }
  postMessage(out);
};
`;

const browser = await chromium.launch({
  executablePath: '/usr/bin/chromium',
  headless: true,
  args: ['--no-sandbox', '--disable-gpu', '--no-first-run', '--disable-background-networking'],
});
try {
  const page = await browser.newPage();
  await page.setContent('<!doctype html><title>decode</title>');
  const manifest = { browser: `Chromium ${browser.version()}`, files: [] };
  for (const [i, item] of job.entries()) {
    const bytes = fs.readFileSync(path.resolve(ROOT, item.path)).toString('base64');
    const res = await page.evaluate(async ({ code, b64, sizes }) => {
      const bin = Uint8Array.from(atob(b64), (c) => c.charCodeAt(0));
      const worker = new Worker(URL.createObjectURL(new Blob([code], { type: 'text/javascript' })));
      const out = await new Promise((resolve, reject) => {
        worker.onmessage = (e) => resolve(e.data);
        worker.onerror = (e) => reject(new Error(e.message));
        worker.postMessage({ bytes: bin, sizes });
      });
      worker.terminate();
      const enc = (a) => {
        let s = '';
        for (let k = 0; k < a.length; k += 0x8000) s += String.fromCharCode(...a.subarray(k, k + 0x8000));
        return btoa(s);
      };
      return { width: out.width, height: out.height, decoded: enc(out.decoded), resized: out.resized.map(enc) };
    }, { code: WORKER, b64: bytes, sizes: item.sizes });
    fs.writeFileSync(path.join(outDir, `${i}.decoded.rgb`), Buffer.from(res.decoded, 'base64'));
    item.sizes.forEach(([w, h], k) => {
      fs.writeFileSync(path.join(outDir, `${i}.${w}x${h}.rgb`), Buffer.from(res.resized[k], 'base64'));
    });
    manifest.files.push({ path: item.path, width: res.width, height: res.height });
  }
  fs.writeFileSync(path.join(outDir, 'manifest.json'), JSON.stringify(manifest, null, 1));
} finally {
  await browser.close();
}
