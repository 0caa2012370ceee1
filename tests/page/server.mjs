// A tiny static server for the page tests: the release `dist/` under two sub-paths, random-weight
// files in upstream formats, and a few deliberately broken downloads. It logs every request so that
// tests can check what the page fetched (and that it fetched nothing else).
import http from 'node:http';
import fs from 'node:fs';
import path from 'node:path';

const TYPES = {
  '.html': 'text/html; charset=utf-8',
  '.js': 'text/javascript; charset=utf-8',
  '.wasm': 'application/wasm',
  '.css': 'text/css; charset=utf-8',
  '.json': 'application/json',
  '.svg': 'image/svg+xml',
  '.jpg': 'image/jpeg',
  '.png': 'image/png',
  '.md': 'text/markdown; charset=utf-8',
};

function typeOf(file) {
  return TYPES[path.extname(file).toLowerCase()] ?? 'application/octet-stream';
}

/// Resolve `rel` inside `root`, refusing anything that escapes it.
function inside(root, rel) {
  const p = path.resolve(root, '.' + path.posix.normalize('/' + decodeURIComponent(rel)));
  return p.startsWith(path.resolve(root)) ? p : null;
}

/** The two headers that make a page cross-origin isolated (threads): sent everywhere except
 * under /plain/, which stands for a static host without header control (GitHub Pages). */
const ISOLATION = {
  'cross-origin-opener-policy': 'same-origin',
  'cross-origin-embedder-policy': 'require-corp',
};

/** A service worker that takes control but adds no headers: isolation never happens. */
const INERT_SERVICE_WORKER = `self.addEventListener('install', () => self.skipWaiting());
self.addEventListener('activate', (e) => e.waitUntil(self.clients.claim()));
self.addEventListener('fetch', () => {});
`;

function sendFile(req, res, file, { throttle = false, isolate = true, corrupt = false } = {}) {
  let stat;
  try {
    stat = fs.statSync(file);
    if (stat.isDirectory()) {
      file = path.join(file, 'index.html');
      stat = fs.statSync(file);
    }
  } catch {
    res.writeHead(404, { 'content-type': 'text/plain' });
    return res.end('not found');
  }
  res.writeHead(200, {
    'content-type': typeOf(file), 'content-length': stat.size, 'cache-control': 'no-cache',
    // Readable from other origins (a page on another port loads weights from here).
    'access-control-allow-origin': '*',
    ...(isolate ? ISOLATION : {}),
  });
  if (req.method === 'HEAD') return res.end();
  if (!throttle && !corrupt) return fs.createReadStream(file).pipe(res);
  // Weights arrive in 64 KiB pieces, so that the page shows real progress.
  const data = Buffer.from(fs.readFileSync(file));
  // Same size, one byte changed in the middle (a damaged or mixed-up upload).
  if (corrupt) data[data.length >> 1] ^= 0xff;
  let off = 0;
  const step = () => {
    if (res.destroyed) return;
    if (off >= data.length) return res.end();
    res.write(data.subarray(off, off + 65536));
    off += 65536;
    setTimeout(step, 8);
  };
  step();
}

/**
 * Start the server. `dist`: the built site; `weights`: folder with open_clip_model.safetensors,
 * open_clip_config.json, last.pt (and more); `bundle`: the GGUF the site publishes as
 * models/clip-dinoiser.gguf; `parts`: folder with the same bundle split by `clipdino split`
 * (clip-dinoiser.parts.json + clip-dinoiser.part-NNN), served as the site's models/ under
 * /parts/ and /badparts/; `throttle`: send weights in small timed pieces (so that progress is
 * visible).
 * Routes: /demo/clipdino/… = site with its model bundle, /bare/… = site without one,
 * /plain/… = site with its bundle but without the isolation headers (a static host such as
 * GitHub Pages), /inert/… = the same with a service worker that cannot isolate the page,
 * /parts/… = site with its bundle in parts, /badparts/… = the same with one byte of
 * clip-dinoiser.part-001 changed, /plainparts/… and /plainbadparts/… = the same two without the
 * isolation headers, /weights/<file>, /broken/{truncated.gguf, cut-transfer.gguf, missing.gguf}.
 * `sites`: `{ name: folder }`, each served as /<name>/… = the site with that folder's `models/`
 * (a site as `scripts/build-site.sh` lays it out with CLIPDINO_MODELS_DIR).
 */
export async function startServer({ dist, weights, bundle, parts, throttle = true, sites = {} }) {
  const log = [];
  const server = http.createServer((req, res) => {
    const url = new URL(req.url, 'http://x');
    const entry = { method: req.method, path: url.pathname, time: Date.now() };
    log.push(entry);
    // When the response ended (tests check that downloads overlap).
    res.on('close', () => { entry.end = Date.now(); });
    const p = url.pathname;
    if (p === '/demo/clipdino/models/clip-dinoiser.gguf') return sendFile(req, res, bundle, { throttle });
    const partsSite = p.match(/^\/(plain)?(bad)?parts\//);
    if (partsSite) {
      const rel = p.slice(partsSite[0].length);
      // /plain…/: no isolation headers (with service workers blocked: the single-threaded build).
      const isolate = !partsSite[1];
      if (parts && rel.startsWith('models/')) {
        const f = inside(parts, rel.slice('models/'.length));
        const corrupt = Boolean(partsSite[2]) && rel.endsWith('.part-001');
        return f ? sendFile(req, res, f, { throttle, corrupt, isolate }) : res.writeHead(403).end();
      }
      const f = inside(dist, rel);
      return f ? sendFile(req, res, f, { isolate }) : res.writeHead(403).end();
    }
    if (p.startsWith('/demo/clipdino/')) {
      const f = inside(dist, p.slice('/demo/clipdino/'.length));
      return f ? sendFile(req, res, f) : res.writeHead(403).end();
    }
    for (const prefix of ['/plain/', '/inert/']) {
      if (!p.startsWith(prefix)) continue;
      const rel = p.slice(prefix.length);
      if (rel === 'models/clip-dinoiser.gguf') return sendFile(req, res, bundle, { throttle, isolate: false });
      if (prefix === '/inert/' && rel === 'coi-sw.js') {
        res.writeHead(200, { 'content-type': 'text/javascript', 'cache-control': 'no-cache' });
        return res.end(INERT_SERVICE_WORKER);
      }
      const f = inside(dist, rel);
      return f ? sendFile(req, res, f, { isolate: false }) : res.writeHead(403).end();
    }
    for (const [name, root] of Object.entries(sites)) {
      if (!p.startsWith(`/${name}/`)) continue;
      const rel = p.slice(name.length + 2);
      const f = inside(rel.startsWith('models/') ? root : dist, rel);
      return f ? sendFile(req, res, f) : res.writeHead(403).end();
    }
    if (p.startsWith('/bare/')) {
      const f = inside(dist, p.slice('/bare/'.length));
      return f ? sendFile(req, res, f) : res.writeHead(403).end();
    }
    if (p.startsWith('/weights/')) {
      const f = inside(weights, p.slice('/weights/'.length));
      return f ? sendFile(req, res, f, { throttle }) : res.writeHead(403).end();
    }
    if (p === '/broken/truncated.gguf') {
      // A file that is itself cut short (honest Content-Length).
      const data = fs.readFileSync(bundle);
      const half = data.subarray(0, data.length >> 1);
      res.writeHead(200, { 'content-type': 'application/octet-stream', 'content-length': half.length });
      return res.end(req.method === 'HEAD' ? undefined : half);
    }
    if (p === '/broken/cut-transfer.gguf') {
      // The server promises the whole file and hangs up half way.
      const data = fs.readFileSync(bundle);
      res.writeHead(200, { 'content-type': 'application/octet-stream', 'content-length': data.length });
      if (req.method === 'HEAD') return res.end();
      res.write(data.subarray(0, data.length >> 1));
      return setTimeout(() => res.destroy(), 50);
    }
    if (p === '/') {
      res.writeHead(302, { location: '/demo/clipdino/' });
      return res.end();
    }
    res.writeHead(404, { 'content-type': 'text/plain' });
    res.end('not found');
  });
  await new Promise((resolve) => server.listen(0, '127.0.0.1', resolve));
  const { port } = server.address();
  return {
    origin: `http://127.0.0.1:${port}`,
    log,
    close: () => new Promise((resolve) => {
      server.closeAllConnections();
      server.close(resolve);
    }),
  };
}

// `node tests/page/server.mjs <dist> <weights>`: serve by hand for a look in a browser.
if (import.meta.url === `file://${process.argv[1]}`) {
  const [dist = 'dist', weights = 'test-output/page/weights', bundle = 'test-output/page/clip-dinoiser.gguf'] = process.argv.slice(2);
  const s = await startServer({ dist, weights, bundle });
  console.log(`serving ${dist} at ${s.origin}/demo/clipdino/`);
}
