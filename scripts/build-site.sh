#!/usr/bin/env bash
# Release build of the static site into dist/: the UI and the single-threaded model worker (Trunk;
# wasm with simd128, wasm-opt from npm binaryen), then the multi-threaded model worker (the dated
# nightly of scripts/threads.env, std rebuilt with atomics, shared memory), which the page starts
# instead when it is cross-origin isolated.
# Usage: scripts/build-site.sh [extra trunk args].
#   CLIPDINO_MODEL=path/to/bundle.gguf   publish a model bundle beside the app as the site's default,
#       dist/models/clip-dinoiser.part-000, … + clip-dinoiser.parts.json (`clipdino split`, parts of
#       CLIPDINO_PART_SIZE, default 24MiB: under every static host's file-size limit);
#   CLIPDINO_MODELS_DIR=dir   split every dir/*.gguf the same way (each under its own name) and copy
#       dir/quality.json, if present, beside them.
# Without either, no model is published and the release CLI is not built.
set -euo pipefail
cd "$(dirname "$0")/.."
export PATH="$HOME/.cargo/bin:$PWD/node_modules/.bin:$PATH"
scripts/setup.sh web >/dev/null
trunk build --release --offline "$@"

# The multi-threaded worker: the worker binary alone, built once, beside Trunk's output.
. scripts/threads.env
RUSTFLAGS="-C target-feature=$MT_FEATURES -C link-arg=--max-memory=$MT_MAX_MEMORY" \
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
if [ -n "${CLIPDINO_MODEL:-}${CLIPDINO_MODELS_DIR:-}" ]; then
  part_size="${CLIPDINO_PART_SIZE:-24MiB}"
  cargo build --release --locked -p clipdino-cli
  clipdino=target/release/clipdino
  rm -rf dist/models
  mkdir -p dist/models
  if [ -n "${CLIPDINO_MODELS_DIR:-}" ]; then
    [ -d "$CLIPDINO_MODELS_DIR" ] || { echo "CLIPDINO_MODELS_DIR=$CLIPDINO_MODELS_DIR is not a folder" >&2; exit 1; }
    found=0
    for f in "$CLIPDINO_MODELS_DIR"/*.gguf; do
      [ -e "$f" ] || continue
      found=1
      "$clipdino" split "$f" --part-size "$part_size" --out dist/models
    done
    [ "$found" = 1 ] || { echo "CLIPDINO_MODELS_DIR=$CLIPDINO_MODELS_DIR holds no .gguf file" >&2; exit 1; }
    if [ -f "$CLIPDINO_MODELS_DIR/quality.json" ]; then
      cp "$CLIPDINO_MODELS_DIR/quality.json" dist/models/quality.json
    fi
  fi
  if [ -n "${CLIPDINO_MODEL:-}" ]; then
    [ -f "$CLIPDINO_MODEL" ] || { echo "CLIPDINO_MODEL=$CLIPDINO_MODEL is not a file" >&2; exit 1; }
    # Published under the name the app tries first, whatever the file is called.
    tmp=$(mktemp -d)
    trap 'rm -rf "$tmp"' EXIT
    ln -s "$(realpath "$CLIPDINO_MODEL")" "$tmp/clip-dinoiser.gguf"
    "$clipdino" split "$tmp/clip-dinoiser.gguf" --part-size "$part_size" --out dist/models
  fi
  ls -la dist/models | sed 's/^/  models: /'
fi
ls -la dist | sed 's/^/  /'
