#!/usr/bin/env bash
# The bundles a published site serves, and the proof that they match the full-precision model
# (QUANTIZATION.md, "Publishing"). From the upstream files in UPSTREAM_DIR
# (open_clip_model.safetensors, open_clip_config.json, last.pt) it writes into OUT_DIR:
#
#   clip-dinoiser.gguf        the default bundle (recipe `default` = every matrix Q8_0; the app's
#                             download, run on the integer compute path)
#   clip-dinoiser-f16.gguf    the high-precision bundle (every matrix F16; best on f32 compute)
#   quality.json              `clipdino verify` of both bundles on both compute paths (int, f32)
#                             against the upstream files in f32, on the held-out evaluation
#                             photos with the VOC-style label set, at short side 336 and with
#                             the paper's 448 sliding window
#   clip-dinoiser.parts.json, clip-dinoiser.part-NNN, clip-dinoiser-f16.parts.json, …
#                             each bundle in parts of at most PART_SIZE bytes with their manifest
#                             (`clipdino split`): what the site serves, fetched in parallel by
#                             the app (scripts/build-site.sh publishes these instead of the
#                             single files)
#
# and fails (exit code 1, no bundle left behind) when any bundle's label maps, on either compute
# path, agree with the full-precision ones on fewer than MIN_AGREEMENT % of the pixels.
#
# Usage: scripts/publish-models.sh UPSTREAM_DIR OUT_DIR
# Environment: CLIPDINO (default: target/release/clipdino, built if missing),
#   MIN_AGREEMENT (default below; see QUANTIZATION.md for why), PART_SIZE (default 24MiB: under
#   every static host's file-size limit, and enough parts for a parallel download).
set -euo pipefail
cd "$(dirname "$0")/.."

MIN_AGREEMENT=${MIN_AGREEMENT:-96.5}
PART_SIZE=${PART_SIZE:-24MiB}
# The sample photos are split once: astronaut, coffee and rocket calibrate (the study's
# calibrated K-quant rows and the realistic models' planted statistics), chelsea, china and
# flower are held out for the proof (tests/reference/realistic.py uses the same split).
EVALUATION=(www/samples/chelsea.jpg www/samples/china.jpg www/samples/flower.jpg)
LABELS=tests/fixtures/quant/voc10.txt

if [ $# -ne 2 ]; then
  echo "usage: $0 UPSTREAM_DIR OUT_DIR" >&2
  exit 2
fi
up=$1
out=$2
for f in open_clip_model.safetensors open_clip_config.json last.pt; do
  [ -f "$up/$f" ] || { echo "error: $up/$f is missing" >&2; exit 2; }
done
CLIPDINO=${CLIPDINO:-target/release/clipdino}
if [ ! -x "$CLIPDINO" ]; then
  cargo build --locked --release -p clipdino-cli
fi
mkdir -p "$out"
tmp=$(mktemp -d "$out/.publish.XXXXXX")
trap 'rm -rf "$tmp"' EXIT
upstream=(--clip "$up/open_clip_model.safetensors" --config "$up/open_clip_config.json" --head "$up/last.pt")

"$CLIPDINO" convert "${upstream[@]}" --quant default --out "$tmp/clip-dinoiser.gguf"
"$CLIPDINO" convert "${upstream[@]}" --quant f16 --out "$tmp/clip-dinoiser-f16.gguf"
"$CLIPDINO" verify "${upstream[@]}" \
  --model "$tmp/clip-dinoiser.gguf" --model "$tmp/clip-dinoiser-f16.gguf" --compute int,f32 \
  --images "${EVALUATION[@]}" --classes "$LABELS" --presets balanced,paper \
  --min-agreement "$MIN_AGREEMENT" --json "$tmp/quality.json"
for b in clip-dinoiser clip-dinoiser-f16; do
  "$CLIPDINO" split "$tmp/$b.gguf" --part-size "$PART_SIZE" --out "$tmp"
done
# Parts of an earlier run with more parts must not stay beside the new manifests.
rm -f "$out"/clip-dinoiser.part-* "$out"/clip-dinoiser-f16.part-*
mv "$tmp"/clip-dinoiser*.part-* "$out/"
mv "$tmp/clip-dinoiser.gguf" "$tmp/clip-dinoiser-f16.gguf" "$tmp/quality.json" "$out/"
# The manifests last: a manifest never names parts that are not there yet.
mv "$tmp/clip-dinoiser.parts.json" "$tmp/clip-dinoiser-f16.parts.json" "$out/"
echo "published: $out/clip-dinoiser.gguf, $out/clip-dinoiser-f16.gguf, $out/quality.json, and both in parts (*.parts.json)"
