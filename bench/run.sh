#!/usr/bin/env bash
# One command for the whole benchmark (see BENCHMARKS.md):
#   builds the clipdino CLI (whose `bench` runs the steps natively) and the bench wasm (+ wasm-bindgen),
#   writes full-size random ViT-B/16 weights in the upstream formats and the four GGUF bundles,
#   decodes the photo, then bench/run.mjs runs native (1 thread) → ONNX export → headless
#   Chromium (clipdino wasm in a Web Worker, a fresh worker for peak memory, onnxruntime-web)
#   and writes bench/results.json + prints the tables.
#
# Usage: bench/run.sh [run.mjs options, e.g. --runs 5 --plan smoke --skip-ort]
#        bench/run.sh --plan threads [--threads 2]   (thread scaling: 1 vs N threads, see BENCHMARKS.md)
#        bench/run.sh --plan gpu [--runs 1] [--skip-ort]   (the WebGPU kernels and tower on lavapipe and
#          on SwiftShader in headless Chromium, onnxruntime-web's WebGPU EP beside them; GPU section
#          of BENCHMARKS.md; GPU_BENCH_RUNS=3 kernel runs, GPU_BENCH_TOWER=448 sizes)
# Environment: PROFILE=release (default; what ships) or bench-web (thin LTO, quicker to link);
#   BENCH_DATA=target/bench (weights, ONNX models, inputs; ~3.5 GB);
#   PYTHON=python with torch + open_clip_torch + onnx + onnxruntime (a virtualenv created by
#   tests/reference/setup_venv.sh, plus `pip install -r bench/requirements.txt`);
#   BENCH_BUILD_ONLY=1: builds, weights and photo only, nothing timed.
set -euo pipefail
cd "$(dirname "$0")/.."
export PATH="$HOME/.cargo/bin:$PWD/node_modules/.bin:$PATH"
PROFILE=${PROFILE:-release}
DATA=${BENCH_DATA:-target/bench}
if [ -z "${PYTHON:-}" ]; then
  # the reference virtualenv (torch, open_clip_torch) plus the ONNX tools, created if missing
  [ -x tests/reference/.venv/bin/python ] || tests/reference/setup_venv.sh
  PYTHON=tests/reference/.venv/bin/python
  "$PYTHON" -c 'import onnx, onnxruntime, onnxscript' 2>/dev/null || "$PYTHON" -m pip install -r bench/requirements.txt
fi
case "$PROFILE" in release) OUTDIR=release ;; *) OUTDIR=$PROFILE ;; esac

if [[ " $* " == *" --plan gpu "* ]]; then
  # No release builds here: the time is the (emulated) GPU's, and the tests' profile is optimised.
  mkdir -p "$DATA"
  echo "== GPU benchmark, native (lavapipe): $(uptime)"
  GPU_BENCH_OUT="$PWD/$DATA/gpu-native.json" GPU_BENCH_RUNS=${GPU_BENCH_RUNS:-3} GPU_BENCH_TOWER=${GPU_BENCH_TOWER:-448} \
    cargo test --locked -p clipdino-gpu --test bench -- --ignored --nocapture
  echo "== GPU benchmark, headless Chromium (SwiftShader): $(uptime)"
  CHROMEDRIVER=${CHROMEDRIVER:-/usr/bin/chromedriver} WASM_BINDGEN_TEST_TIMEOUT=3600 WASM_BINDGEN_TEST_ONLY_WEB=1 \
    cargo test --locked -p clipdino-gpu --target wasm32-unknown-unknown --test wasm_bench -- --include-ignored --nocapture \
    | tee "$DATA/gpu-wasm.log"
  grep -o 'GPU_BENCH_JSON .*' "$DATA/gpu-wasm.log" | sed 's/^GPU_BENCH_JSON //' > "$DATA/gpu-wasm.json"
  case " $* " in
    *" --skip-ort "*) ;;
    *)
      # The peer's graph: the ONNX export of the same random ViT-B/16 (debug CLI: no release build).
      W="$DATA/weights"
      if [ ! -f "$W/open_clip_model.safetensors" ]; then
        cargo build --locked -p clipdino-cli
        target/debug/clipdino random-weights --arch vit-b-16 --seed 0 --out "$W"
      fi ;;
  esac
  echo "== onnxruntime-web WebGPU: $(uptime)"
  node bench/run.mjs --data "$DATA" --python "$PYTHON" "$@"
  exit 0
fi

echo "== load before building: $(uptime)"
# 1. builds
[ -d node_modules/onnxruntime-web ] && [ -d node_modules/playwright-core ] || npm ci
rustup target list --installed | grep -q wasm32-unknown-unknown || rustup target add wasm32-unknown-unknown
command -v wasm-bindgen >/dev/null || cargo install wasm-bindgen-cli --version 0.2.130
cargo build --locked --profile "$PROFILE" -p clipdino-cli
CLI="target/$OUTDIR/clipdino"
# wasm32 builds read .cargo/config.toml: -C target-feature=+simd128. The crate is an rlib for the
# CLI; wasm-bindgen needs it as a cdylib.
cargo rustc --locked --profile "$PROFILE" --target wasm32-unknown-unknown -p clipdino-bench-web \
  --lib --crate-type cdylib
PKG=target/bench-web/pkg
wasm-bindgen --target web --no-typescript --out-dir "$PKG" \
  "target/wasm32-unknown-unknown/$OUTDIR/clipdino_bench_web.wasm"
ls -la "$PKG"
# The multi-threaded build, as scripts/build-site.sh makes the app's (the dated nightly, std
# rebuilt with atomics, shared memory; its pool threads are Web Workers, crates/clipdino-pool).
# `--plan precision` runs the single-threaded build only.
case " $* " in *" --plan precision "*) SKIP_MT=1 ;; *) SKIP_MT= ;; esac
. scripts/threads.env
PKG_MT=target/bench-web/pkg-mt
if [ -z "$SKIP_MT" ]; then
  rustup run "$MT_NIGHTLY" rustc --version >/dev/null 2>&1 || scripts/setup.sh web
  RUSTFLAGS="$MT_RUSTFLAGS" \
    cargo "+$MT_NIGHTLY" rustc --locked --profile "$PROFILE" --target wasm32-unknown-unknown \
    -p clipdino-bench-web --lib --crate-type cdylib -Z build-std=panic_abort,std --target-dir "$MT_TARGET_DIR"
  wasm-bindgen --target web --no-typescript --out-dir "$PKG_MT" \
    "$MT_TARGET_DIR/wasm32-unknown-unknown/$OUTDIR/clipdino_bench_web.wasm"
fi

# 2. weights: full-size random ViT-B/16 in the upstream formats + GGUF bundles
W="$DATA/weights"
if [ ! -f "$W/last.pt" ] || [ ! -f "$W/open_clip_model.safetensors" ]; then
  "$CLI" random-weights --arch vit-b-16 --seed 0 --out "$W"
fi
for q in f32 f16 q8_0 q4_0; do
  [ -f "$W/clip-dinoiser-$q.gguf" ] || "$CLI" convert \
    --clip "$W/open_clip_model.safetensors" --config "$W/open_clip_config.json" --head "$W/last.pt" \
    --quant "$q" --out "$W/clip-dinoiser-$q.gguf"
done
# the published recipe (QUANTIZATION.md; converted like scripts/publish-models.sh does)
[ -f "$W/clip-dinoiser-default.gguf" ] || target/release/clipdino convert \
  --clip "$W/open_clip_model.safetensors" --config "$W/open_clip_config.json" --head "$W/last.pt" \
  --quant default --out "$W/clip-dinoiser-default.gguf"

# 3. the photo as packed RGB (www/samples/china.jpg, 640×427)
"$PYTHON" bench/photo.py --out "$DATA"

# BENCH_BUILD_ONLY=1: stop here (build while the machine is busy, measure once it is quiet)
[ -z "${BENCH_BUILD_ONLY:-}" ] || exit 0

# 4. native → ONNX export → Chromium → results
echo "== load before running: $(uptime)"
node bench/run.mjs --data "$DATA" --pkg "$PKG" --pkg-mt "$PKG_MT" --native-bin "$CLI" \
  --python "$PYTHON" "$@"
echo "== load after running: $(uptime)"
