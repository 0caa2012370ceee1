#!/usr/bin/env bash
# Release build of the static site into dist/: the UI and the single-threaded model worker (Trunk;
# wasm with simd128, wasm-opt from npm binaryen), then the multi-threaded model worker (the dated
# nightly of scripts/threads.env, std rebuilt with atomics, shared memory), which the page starts
# instead when it is cross-origin isolated.
# Usage: scripts/build-site.sh [extra trunk args]. Set CLIPDINO_MODEL=path/to/bundle.gguf to publish a
# model bundle beside the app as models/clip-dinoiser.gguf (the page's default), or
# CLIPDINO_MODELS_DIR=dir to publish what scripts/publish-models.sh wrote there (the default bundle,
# the high-precision one and quality.json; what the hosted demo does). A bundle that has its parts
# manifest there (NAME.parts.json, `clipdino split`) is published as the manifest + parts only,
# which the app fetches in parallel (every file stays under a host's file-size limit); one
# without is published as the single file.
# `scripts/build-site.sh --models-only DIR` does only that last step, into DIR/models (the page
# tests lay out a published site's models this way without rebuilding the app).
set -euo pipefail
cd "$(dirname "$0")/.."

# The model files a site serves beside the app, into $1/models.
publish_models() {
  if [ -n "${CLIPDINO_MODEL:-}" ]; then
    mkdir -p "$1/models"
    cp "$CLIPDINO_MODEL" "$1/models/clip-dinoiser.gguf"
  fi
  if [ -n "${CLIPDINO_MODELS_DIR:-}" ]; then
    # What scripts/publish-models.sh wrote: the bundles and their verification report.
    mkdir -p "$1/models"
    for f in "$CLIPDINO_MODELS_DIR"/*.gguf; do
      [ -e "$f" ] || { echo "CLIPDINO_MODELS_DIR=$CLIPDINO_MODELS_DIR holds no .gguf file" >&2; exit 1; }
      stem="${f%.gguf}"
      if [ -f "$stem.parts.json" ]; then
        cp "$stem".part-* "$1/models/"
        cp "$stem.parts.json" "$1/models/"
      else
        cp "$f" "$1/models/"
      fi
    done
    [ ! -f "$CLIPDINO_MODELS_DIR/quality.json" ] || cp "$CLIPDINO_MODELS_DIR/quality.json" "$1/models/"
  fi
}
if [ "${1:-}" = --models-only ]; then
  [ $# -eq 2 ] || { echo "usage: $0 --models-only DIR" >&2; exit 2; }
  publish_models "$2"
  exit 0
fi
export PATH="$HOME/.cargo/bin:$PWD/node_modules/.bin:$PATH"
scripts/setup.sh web >/dev/null
trunk build --release --offline "$@"

# The multi-threaded worker: the worker binary alone, built once, beside Trunk's output.
. scripts/threads.env
RUSTFLAGS="$MT_RUSTFLAGS" \
  cargo "+$MT_NIGHTLY" build --release --locked --target wasm32-unknown-unknown --bin worker \
  -Z build-std=panic_abort,std --target-dir "$MT_TARGET_DIR"
pkg="$MT_TARGET_DIR/pkg"
rm -rf "$pkg"
wasm-bindgen --target web --no-typescript --out-dir "$pkg" --out-name worker-mt \
  "$MT_TARGET_DIR/wasm32-unknown-unknown/release/worker.wasm"
wasm-opt -O3 --enable-threads --enable-bulk-memory --enable-mutable-globals --enable-simd \
  --enable-sign-ext --enable-nontrapping-float-to-int --enable-reference-types --enable-multivalue \
  "$pkg/worker-mt_bg.wasm" -o "$pkg/worker-mt_bg.opt.wasm"
# Content-hashed names (as Trunk's), and the loader that names them.
hash=$(cat "$pkg/worker-mt.js" "$pkg/worker-mt_bg.opt.wasm" | sha256sum | cut -c1-16)
rm -f dist/worker-mt-*
sed "s/worker-mt_bg.wasm/worker-mt-${hash}_bg.wasm/" "$pkg/worker-mt.js" >"dist/worker-mt-$hash.js"
cp "$pkg/worker-mt_bg.opt.wasm" "dist/worker-mt-${hash}_bg.wasm"
sed -e "s/@MT_JS@/worker-mt-$hash.js/" -e "s/@MT_WASM@/worker-mt-${hash}_bg.wasm/" \
  www/worker-mt.js >dist/worker-mt.js
publish_models dist
ls -la dist | sed 's/^/  /'
