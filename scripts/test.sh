#!/usr/bin/env bash
# Runs every test: native (model crate parity, loaders, tokenizer, pipeline, CLI processes, app state),
# wasm32 in headless Chromium (wasm-bindgen-test), and the end-to-end page tests (playwright-core).
# Installs whatever is missing first (scripts/setup.sh). Usage: scripts/test.sh
set -euo pipefail
cd "$(dirname "$0")/.."
export PATH="$HOME/.cargo/bin:$PWD/node_modules/.bin:$PATH"

scripts/setup.sh all

step() { printf '\n\033[1m== %s\033[0m\n' "$*"; }

step "native tests (cargo test --workspace)"
cargo test --workspace --locked

step "wasm32 tests in headless Chromium (wasm-bindgen-test)"
export CHROMEDRIVER=/usr/bin/chromedriver
export WASM_BINDGEN_TEST_TIMEOUT=300
export WASM_BINDGEN_TEST_ONLY_WEB=1
cargo test -p clipdino --target wasm32-unknown-unknown --locked --test wasm
cargo test -p clipdino-web --target wasm32-unknown-unknown --locked --lib

step "release build of the site (trunk build --release)"
scripts/build-site.sh

step "page tests (playwright-core + /usr/bin/chromium against dist/ on 127.0.0.1) and the SIMD check of the shipped wasm"
node --test --test-concurrency=1 tests/page/ bench/simd.test.mjs
