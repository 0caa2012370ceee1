#!/usr/bin/env bash
# The quantization study of QUANTIZATION.md in one command: builds the CLI (release), generates
# the full-size study models and photos into the data folder when missing (the reference
# virtualenv of tests/reference, see its README), converts every recipe, runs `clipdino verify`
# on every compute path and writes results.json + tables.md into the data folder.
#
# Usage: scripts/quant-study.sh [--models tiny-gaussian,tiny-realistic,realistic-vit-b-16,gaussian-vit-b-16]
#                               [--quick] [--data DIR]
# Environment: PYTHON (default: tests/reference/.venv/bin/python).
# Time on 2 cores: the tiny models take minutes; each full-size model hours (run it under nice).
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-tests/reference/.venv/bin/python}
if [ ! -x "$PYTHON" ]; then
  echo "error: $PYTHON is missing: create the reference virtualenv first (tests/reference/README.md)" >&2
  exit 2
fi
cargo build --locked --release -p clipdino-cli
exec python3 scripts/quant_study.py --cli target/release/clipdino --python "$PYTHON" "$@"
