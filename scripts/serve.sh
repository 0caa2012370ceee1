#!/usr/bin/env bash
# Builds the app (release) and serves dist/ on http://127.0.0.1:${PORT:-8080}/ .
# Installs what is missing first. Stop with Ctrl+C.
# The server sends the two headers that make the page cross-origin isolated
# (Cross-Origin-Opener-Policy: same-origin, Cross-Origin-Embedder-Policy: require-corp), so the
# page runs the multi-threaded model worker. (A host that cannot send them, e.g. GitHub Pages,
# gets them from the site's own service worker, www/coi-sw.js.)
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/build-site.sh
PORT=${PORT:-8080}
echo
echo "  clipdino is served at  http://127.0.0.1:${PORT}/"
echo
exec python3 - "$PORT" <<'PY'
import functools
import http.server
import sys


class Isolated(http.server.SimpleHTTPRequestHandler):
    extensions_map = {
        **http.server.SimpleHTTPRequestHandler.extensions_map,
        ".js": "text/javascript",
        ".wasm": "application/wasm",
    }

    def end_headers(self):
        self.send_header("Cross-Origin-Opener-Policy", "same-origin")
        self.send_header("Cross-Origin-Embedder-Policy", "require-corp")
        super().end_headers()


handler = functools.partial(Isolated, directory="dist")
http.server.ThreadingHTTPServer(("127.0.0.1", int(sys.argv[1])), handler).serve_forever()
PY
