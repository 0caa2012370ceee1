#!/usr/bin/env bash
# Builds the app (release) and serves dist/ on http://127.0.0.1:${PORT:-8080}/ .
# Installs what is missing first. Stop with Ctrl+C.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/build-site.sh
PORT=${PORT:-8080}
echo
echo "  clipdino is served at  http://127.0.0.1:${PORT}/"
echo
exec python3 -m http.server "$PORT" --bind 127.0.0.1 --directory dist
