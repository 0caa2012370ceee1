#!/usr/bin/env bash
# How far each side's quantized 448x448 image tower moves the pooled image embedding from
# upstream torch f32, on the full-size ViT-B/16 with realistic statistics (Student-t weights,
# LayerNorm outlier gains, planted massive activations: tests/reference/realistic.py) and on the
# Gaussian random weights the speed benchmarks use. Ours: the default bundle (every matrix Q8_0,
# the app's download) and Q4_0 on the integer kernel (`clipdino bench --plan quant`); the peer:
# onnxruntime's f32 and `quantize_dynamic` int8 models (bench/export_onnx.py, what bench/run.sh
# times). Inputs: the held-out evaluation photos of realistic.py, each as the tower input our
# suite makes of it (dumped by the CLI and fed to torch and onnxruntime unchanged).
#
# Usage: bench/peer-fidelity.sh [--data DIR]   (default target/peer-fidelity; ~20 min on 2 cores,
# most of it generating the realistic model once). Stores the summary in bench/results.json as
# `peer_fidelity`.
# Environment: PYTHON (default tests/reference/.venv/bin/python, with bench/requirements.txt).
set -euo pipefail
cd "$(dirname "$0")/.."
DATA=target/peer-fidelity
[ "${1:-}" = "--data" ] && DATA=$2
PYTHON=${PYTHON:-tests/reference/.venv/bin/python}
[ -x "$PYTHON" ] || { echo "error: $PYTHON is missing (tests/reference/setup_venv.sh)" >&2; exit 2; }
"$PYTHON" -c 'import onnx, onnxruntime, onnxscript' 2>/dev/null || "$PYTHON" -m pip install -r bench/requirements.txt
cargo build --locked --release -p clipdino-cli
CLI=target/release/clipdino

model() { # $1 = realistic | gaussian: the upstream files and the three bundles the quant plan loads
  local m=$DATA/$1
  if [ ! -f "$m/last.pt" ]; then
    if [ "$1" = realistic ]; then
      "$PYTHON" tests/reference/make_study_models.py realistic --out "$m"
    else
      "$CLI" random-weights --arch vit-b-16 --seed 0 --out "$m"
    fi
  fi
  for q in default q8_0 q4_0; do
    [ -f "$m/clip-dinoiser-$q.gguf" ] || "$CLI" convert --clip "$m/open_clip_model.safetensors" \
      --config "$m/open_clip_config.json" --head "$m/last.pt" --quant "$q" \
      --out "$m/clip-dinoiser-$q.gguf" >/dev/null
  done
}

for kind in realistic gaussian; do
  model $kind
  for photo in chelsea china flower; do
    out=$DATA/$kind/$photo
    mkdir -p "$out"
    "$CLI" bench --plan quant --runs 1 --weights "$DATA/$kind" --photo "www/samples/$photo.jpg" \
      --dump-inputs "$out" --out "$out/ours.json"
    "$PYTHON" bench/export_onnx.py --weights "$DATA/$kind" --out "$DATA/$kind/onnx" \
      --sizes 448x448 --inputs "$out"
    cp "$DATA/$kind/onnx/export.json" "$out/peer.json"
  done
done
exec "$PYTHON" bench/peer_fidelity.py "$DATA" bench/results.json
