#!/usr/bin/env bash
# Installs what the build and the tests need, from package registries only, idempotently.
#   scripts/setup.sh           everything (Rust wasm target, Trunk, wasm-bindgen CLI, npm packages, a C compiler, Chromium,
#                              a CPU Vulkan driver for the GPU kernels' tests)
#   scripts/setup.sh web       only what building and serving the app needs
# Versions that must match are pinned here and in Cargo.toml (wasm-bindgen crate = CLI).
set -euo pipefail
cd "$(dirname "$0")/.."

TRUNK_VERSION=0.21.14
WASM_BINDGEN_VERSION=0.2.130
what=${1:-all}
. scripts/threads.env

say() { printf '\033[1m[setup]\033[0m %s\n' "$*"; }
# Debian packages (as root, or through sudo).
apt_install() {
  local sudo=""
  [ "$(id -u)" = 0 ] || sudo=sudo
  $sudo apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq "$@"
}
export PATH="$HOME/.cargo/bin:$PATH"

if ! rustup target list --installed | grep -qx wasm32-unknown-unknown; then
  say "adding the wasm32-unknown-unknown Rust target"
  rustup target add wasm32-unknown-unknown
fi

# The dated nightly of the multi-threaded worker build, with the std sources it rebuilds.
if ! rustup run "$MT_NIGHTLY" rustc --version >/dev/null 2>&1 \
  || ! rustup component list --installed --toolchain "$MT_NIGHTLY" 2>/dev/null | grep -q '^rust-src' \
  || ! rustup component list --installed --toolchain "$MT_NIGHTLY" 2>/dev/null | grep -q '^clippy' \
  || ! rustup target list --installed --toolchain "$MT_NIGHTLY" 2>/dev/null | grep -qx wasm32-unknown-unknown; then
  say "installing the $MT_NIGHTLY toolchain (multi-threaded wasm build)"
  rustup toolchain install "$MT_NIGHTLY" --profile minimal -c rust-src -c clippy -t wasm32-unknown-unknown
fi

if [ "$(trunk --version 2>/dev/null | awk '{print $2}')" != "$TRUNK_VERSION" ]; then
  say "installing trunk $TRUNK_VERSION (a few minutes)"
  cargo install trunk --locked --version "$TRUNK_VERSION"
fi

if [ "$(wasm-bindgen --version 2>/dev/null | awk '{print $2}')" != "$WASM_BINDGEN_VERSION" ]; then
  say "installing wasm-bindgen-cli $WASM_BINDGEN_VERSION"
  # Not --locked: its lockfile pins a crate version the registry no longer serves.
  cargo install wasm-bindgen-cli --version "$WASM_BINDGEN_VERSION" --force
fi

# npm packages: binaryen (wasm-opt for release builds), playwright-core (page tests),
# onnxruntime-web (the in-browser benchmark's peer). Reinstall when the lock file changes.
if [ ! -f node_modules/.package-lock.json ] || ! cmp -s package-lock.json node_modules/.clipdino-lock; then
  say "installing npm packages (npm ci)"
  npm ci --no-audit --no-fund
  cp package-lock.json node_modules/.clipdino-lock
fi

if [ "$what" = all ]; then
  # The CLI's JPEG decoder (libjpeg-turbo's, via the mozjpeg crate) is compiled from C source.
  if ! command -v cc >/dev/null; then
    say "installing a C compiler (Debian package gcc)"
    apt_install gcc libc6-dev
  fi
  if ! command -v chromium >/dev/null || ! command -v chromedriver >/dev/null; then
    say "installing Chromium and ChromeDriver (Debian packages)"
    apt_install chromium chromium-driver
  fi
  # A Vulkan driver that runs on the CPU (Mesa's lavapipe), for the GPU kernels' native tests
  # (crates/clipdino-gpu): they fail, not skip, without an adapter.
  if ! ls /usr/share/vulkan/icd.d/lvp_icd.*.json >/dev/null 2>&1; then
    say "installing Mesa's Vulkan drivers (Debian package mesa-vulkan-drivers)"
    apt_install mesa-vulkan-drivers
  fi
fi
say "ready"
