#!/usr/bin/env bash
# Release build of the static site into dist/ (UI + worker wasm with simd128, wasm-opt from npm binaryen).
# Usage: scripts/build-site.sh [extra trunk args]. Set CLIPDINO_MODEL=path/to/bundle.gguf to publish a
# model bundle beside the app as models/clip-dinoiser-q4_0.gguf (what the hosted demo does).
set -euo pipefail
cd "$(dirname "$0")/.."
export PATH="$HOME/.cargo/bin:$PWD/node_modules/.bin:$PATH"
scripts/setup.sh web >/dev/null
trunk build --release --offline "$@"
if [ -n "${CLIPDINO_MODEL:-}" ]; then
  mkdir -p dist/models
  cp "$CLIPDINO_MODEL" dist/models/clip-dinoiser-q4_0.gguf
fi
ls -la dist | sed 's/^/  /'
