#!/usr/bin/env bash
# Creates tests/reference/.venv with the pinned PyTorch reference stack (requirements.txt) from PyPI.
# Only needed to regenerate or re-check the parity fixtures; CI never runs Python.
#
#   tests/reference/setup_venv.sh            # uses python3 (3.10+)
#   PYTHON=python3.11 tests/reference/setup_venv.sh
#
# Then:  tests/reference/.venv/bin/python tests/reference/make_fixtures.py [--check]
# Note: torch from PyPI brings its CUDA runtime wheels (several GB); a CPU-only torch 2.15.0 from
# another index gives the same fixtures (everything runs on the CPU).
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
python="${PYTHON:-python3}"
venv="$here/.venv"

if [ ! -x "$venv/bin/python" ]; then
  echo "[setup_venv] creating $venv with $("$python" --version)"
  "$python" -m venv "$venv"
fi
"$venv/bin/python" -m pip install --disable-pip-version-check --quiet --upgrade pip
"$venv/bin/python" -m pip install --disable-pip-version-check -r "$here/requirements.txt"
"$venv/bin/python" - <<'PY'
import numpy, open_clip, safetensors, torch
print(f"[setup_venv] ready: torch {torch.__version__}, open_clip {open_clip.__version__}, "
      f"numpy {numpy.__version__}, safetensors {safetensors.__version__}")
PY
