#!/usr/bin/env bash
# The paper's headline number, reproduced: mIoU on Pascal VOC 2012 val with the background class
# (VOC21), CLIP-DINOiser protocol (short side 448, sliding window 448 with stride 224, 80
# templates, background rule), for the full-precision upstream files and for a bundle on the
# app's compute path, in one table beside the published 62.1 (arXiv 2312.12359, ViT-B/16).
#
# Usage: scripts/eval-voc.sh VOC2012_DIR UPSTREAM_DIR BUNDLE OUT_DIR
#   VOC2012_DIR   the VOC2012 folder of the devkit (JPEGImages/, SegmentationClass/,
#                 ImageSets/Segmentation/val.txt), e.g. VOCdevkit/VOC2012 of
#                 VOCtrainval_11-May-2012.tar
#   UPSTREAM_DIR  open_clip_model.safetensors, open_clip_config.json, last.pt
#   BUNDLE        a .gguf bundle written by `clipdino convert` (e.g. the published default)
#   OUT_DIR       receives voc21.md (the table), voc21-upstream.json and voc21-bundle.json
# Environment: CLIPDINO (default: target/release/clipdino, built if missing), COMPUTE (the
#   bundle's compute path; default: int, the app's), LIMIT (score only the first N val images,
#   a quick check; the table then says so).
set -euo pipefail
cd "$(dirname "$0")/.."

if [ $# -ne 4 ]; then
  echo "usage: $0 VOC2012_DIR UPSTREAM_DIR BUNDLE OUT_DIR" >&2
  exit 2
fi
voc=$1 up=$2 bundle=$3 out=$4
COMPUTE=${COMPUTE:-int}
LIMIT=${LIMIT:-}
list="$voc/ImageSets/Segmentation/val.txt"
for f in "$list" "$up/open_clip_model.safetensors" "$up/open_clip_config.json" "$up/last.pt" "$bundle"; do
  [ -f "$f" ] || { echo "error: $f is missing" >&2; exit 2; }
done
CLIPDINO=${CLIPDINO:-target/release/clipdino}
if [ ! -x "$CLIPDINO" ]; then
  cargo build --locked --release -p clipdino-cli
fi

mkdir -p "$out"
work=$(mktemp -d "$out/.voc.XXXXXX")
trap 'rm -rf "$work"' EXIT
mkdir "$work/images" "$work/masks"
# The val split only (SegmentationClass also holds the train masks): link its images and masks.
n=0
while IFS= read -r id || [ -n "$id" ]; do
  id=${id%$'\r'}
  [ -n "$id" ] || continue
  for f in "$voc/JPEGImages/$id.jpg" "$voc/SegmentationClass/$id.png"; do
    [ -f "$f" ] || { echo "error: $f (listed in $list) is missing" >&2; exit 1; }
  done
  ln -s "$(realpath "$voc/JPEGImages/$id.jpg")" "$work/images/$id.jpg"
  ln -s "$(realpath "$voc/SegmentationClass/$id.png")" "$work/masks/$id.png"
  n=$((n + 1))
  if [ -n "$LIMIT" ] && [ "$n" -ge "$LIMIT" ]; then break; fi
done <"$list"
[ "$n" -gt 0 ] || { echo "error: $list lists no images" >&2; exit 1; }

# Class names as CLIP-DINOiser's PascalVOCDataset spells them (label value = line number - 1).
cat >"$work/classes.txt" <<'NAMES'
background
aeroplane
bicycle
bird
boat
bottle
bus
car
cat
chair
cow
dining table
dog
horse
motorbike
person
potted plant
sheep
sofa
train
tvmonitor
NAMES

protocol=(--short-side 448 --window 448 --stride 224 --templates full)
common=(--images "$work/images" --masks "$work/masks" --classes "$work/classes.txt" --ignore-index 255 --json)
"$CLIPDINO" eval --clip "$up/open_clip_model.safetensors" --config "$up/open_clip_config.json" \
  --head "$up/last.pt" --compute f32 "${protocol[@]}" "${common[@]}" >"$work/upstream.json"
"$CLIPDINO" eval --model "$bundle" --compute "$COMPUTE" "${protocol[@]}" "${common[@]}" >"$work/bundle.json"

miou() { sed -n 's/^ *"mIoU": *\([-0-9.eE+]*\).*/\1/p' "$1" | head -n 1; }
up_miou=$(miou "$work/upstream.json")
b_miou=$(miou "$work/bundle.json")
if [ -z "$up_miou" ] || [ -z "$b_miou" ]; then
  echo "error: no mIoU in the eval output" >&2
  exit 1
fi
scope="all $n val images"
[ -z "$LIMIT" ] || scope="the first $n val images only (LIMIT=$LIMIT), not comparable with the paper"
{
  echo "# Pascal VOC 2012 val (VOC21, with background): mIoU"
  echo
  echo "Protocol: short side 448, sliding window 448 / stride 224, 80 templates, background rule; $scope."
  echo
  echo "| weights | compute | mIoU |"
  echo "|---|---|--:|"
  printf '| upstream files (f32) | f32 | %.2f |\n' "$up_miou"
  printf '| %s | %s | %.2f |\n' "$(basename "$bundle")" "$COMPUTE" "$b_miou"
  echo "| CLIP-DINOiser paper (arXiv 2312.12359) | PyTorch | 62.1 |"
} >"$work/voc21.md"
mv "$work/upstream.json" "$out/voc21-upstream.json"
mv "$work/bundle.json" "$out/voc21-bundle.json"
mv "$work/voc21.md" "$out/voc21.md"
cat "$out/voc21.md"
