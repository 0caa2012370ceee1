// Cross-origin isolation for static hosts that cannot send headers (e.g. GitHub Pages).
//
// Multi-threaded WebAssembly needs SharedArrayBuffer, which browsers only give to pages that are
// cross-origin isolated: the page and its workers must be served with
//   Cross-Origin-Opener-Policy: same-origin
//   Cross-Origin-Embedder-Policy: require-corp
// This service worker re-serves the site's own files with those two headers added. index.html
// registers it when the page is not isolated and reloads once, so that the page is then loaded
// through it; a guard there stops after one reload if isolation still does not happen.
// Requests to other sites are not touched: under `require-corp` they must be CORS requests
// (the model worker's downloads are) or come with a Cross-Origin-Resource-Policy header.
'use strict';

self.addEventListener('install', () => self.skipWaiting());
self.addEventListener('activate', (event) => event.waitUntil(self.clients.claim()));

function isolated(response) {
  // Opaque and error responses cannot be rewritten (and need no headers).
  if (response.status === 0 || response.type === 'opaque' || response.type === 'opaqueredirect') {
    return response;
  }
  const headers = new Headers(response.headers);
  headers.set('Cross-Origin-Opener-Policy', 'same-origin');
  headers.set('Cross-Origin-Embedder-Policy', 'require-corp');
  return new Response(response.body, {
    status: response.status,
    statusText: response.statusText,
    headers,
  });
}

self.addEventListener('fetch', (event) => {
  const request = event.request;
  if (new URL(request.url).origin !== self.location.origin) return;
  // A request the browser may only answer from its cache must not go to the network here.
  if (request.cache === 'only-if-cached' && request.mode !== 'same-origin') return;
  event.respondWith(fetch(request).then(isolated));
});
