#!/usr/bin/env bash
# Runs every check: formatting and lints (rustfmt, clippy with warnings as errors, native and
# wasm32), native tests (model crate parity, loaders, tokenizer, pipeline, CLI processes, app state,
# the GPU kernels and image tower on a CPU Vulkan driver,
# the worker's scheduler, outputs independent of the thread count), wasm32 in headless Chromium
# (wasm-bindgen-test; the GPU kernels on WebGPU; the model's tests in both the single- and the multi-threaded build), and the
# end-to-end page tests (playwright-core; both worker builds, the isolation service worker). Installs whatever is missing first (scripts/setup.sh).
# Usage: scripts/test.sh
set -euo pipefail
cd "$(dirname "$0")/.."
export PATH="$HOME/.cargo/bin:$PWD/node_modules/.bin:$PATH"

scripts/setup.sh all

start=$SECONDS
# Free disk space, printed for the log: a fresh build needs several GB (a full disk kills the linker).
df -h . | tail -n 1 | awk '{print "disk: " $4 " free of " $2}'
elapsed() { printf '%dm%02ds' $(((SECONDS - start) / 60)) $(((SECONDS - start) % 60)); }
step() { printf '\n\033[1m== [%s] %s\033[0m\n' "$(elapsed)" "$*"; }

step "formatting and lints (cargo fmt --check; cargo clippy -D warnings, native and wasm32)"
cargo fmt --all --check
cargo clippy --workspace --all-targets --locked -- -D warnings
# The crates that build for the browser, as they are built there (with their wasm-only code).
cargo clippy -p clipdino -p clipdino-web -p clipdino-bench-web -p clipdino-gpu \
  --target wasm32-unknown-unknown --all-targets --locked -- -D warnings

step "native tests (cargo test --workspace)"
# Mesa's lavapipe (the GPU tests' Vulkan driver) prints an error line per device without it.
export XDG_RUNTIME_DIR="${XDG_RUNTIME_DIR:-$(mktemp -d)}"
cargo test --workspace --locked

step "wasm32 tests in headless Chromium (wasm-bindgen-test)"
export CHROMEDRIVER=/usr/bin/chromedriver
export WASM_BINDGEN_TEST_TIMEOUT=300
export WASM_BINDGEN_TEST_ONLY_WEB=1
cargo test -p clipdino --target wasm32-unknown-unknown --locked --test wasm
# The GPU kernels on the browser's WebGPU (SwiftShader; crates/clipdino-gpu/webdriver.json adds
# --enable-unsafe-webgpu).
cargo test -p clipdino-gpu --target wasm32-unknown-unknown --locked --test wasm
cargo test -p clipdino-web --target wasm32-unknown-unknown --locked --lib

step "the model's wasm32 tests again in the multi-threaded build (dated nightly, atomics, shared memory)"
. scripts/threads.env
# Lints of the code that exists only in this build (the thread pool, clipdino::par's atomics arm),
# with the nightly's clippy; lints newer than the pinned stable are left to the stable run above.
RUSTFLAGS="$MT_RUSTFLAGS" \
  cargo "+$MT_NIGHTLY" clippy -p clipdino -p clipdino-web -p clipdino-pool --target wasm32-unknown-unknown \
  --locked -Z build-std=panic_abort,std --target-dir "$MT_TARGET_DIR" -- -D warnings \
  -A clippy::chunks_exact_to_as_chunks
RUSTFLAGS="$MT_RUSTFLAGS" \
  cargo "+$MT_NIGHTLY" test -p clipdino --target wasm32-unknown-unknown --locked --test wasm \
  -Z build-std=panic_abort,std --target-dir "$MT_TARGET_DIR"

step "release build of the site (trunk build --release, then the multi-threaded worker)"
scripts/build-site.sh

step "page tests (playwright-core + /usr/bin/chromium against dist/ on 127.0.0.1) and the SIMD check of the shipped wasm"
node --test --test-concurrency=1 tests/page/ bench/simd.test.mjs

step "all passed in $(elapsed)"
