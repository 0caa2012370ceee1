#!/usr/bin/env bash
# Fuzzes the model crate's parsers with cargo-fuzz (libFuzzer + AddressSanitizer, nightly Rust):
# GGUF bundles, safetensors, torch checkpoints (whole zip, and the unpickler alone), configs and
# the tokenizer entry. Targets live in crates/clipdino/fuzz; what each checks is in its src/lib.rs.
#
#   scripts/fuzz.sh [SECONDS_PER_TARGET] [TARGET...]      (default: 600 s, every target)
#
# Each target runs in turn for the given time under an RSS limit (FUZZ_RSS_MB, default 2048) with
# inputs of at most 128 kB (longer seeds, the 1.7 MB fixture weights, are cut to their start),
# seeded from tests/fixtures and from a micro model written in every format (a few kB each, so
# inputs run fast), and the script prints a
# table: target, seconds, executions, findings. Findings (crash-*, oom-*, timeout-*, leak-*) are
# kept in target/fuzz/artifacts/<run>/<target>/: copy each into
# crates/clipdino/tests/fuzz_regressions/<target>/ (a normal `cargo test` replays them), then fix.
# Long runs belong here, not in scripts/test.sh; run them niced on a shared machine
# (`nice -n 10 scripts/fuzz.sh`).
set -euo pipefail
cd "$(dirname "$0")/.."
export PATH="$HOME/.cargo/bin:$PATH"

CARGO_FUZZ_VERSION=0.13.2
ALL_TARGETS=(gguf safetensors torch_zip pickle config tokenizer)
SECS=${1:-600}
shift || true
TARGETS=("$@")
[ ${#TARGETS[@]} -eq 0 ] && TARGETS=("${ALL_TARGETS[@]}")
RSS_MB=${FUZZ_RSS_MB:-2048}
WORK=$PWD/target/fuzz
FIX=tests/fixtures

say() { printf '\033[1m[fuzz]\033[0m %s\n' "$*"; }

if ! rustup toolchain list | grep -q '^nightly'; then
  say "installing the nightly toolchain (cargo-fuzz needs -Z sanitizer flags)"
  rustup toolchain install nightly --profile minimal
fi
if [ "$(cargo fuzz --version 2>/dev/null | awk '{print $2}')" != "$CARGO_FUZZ_VERSION" ]; then
  say "installing cargo-fuzz $CARGO_FUZZ_VERSION"
  cargo install cargo-fuzz --locked --version "$CARGO_FUZZ_VERSION"
fi

# --- seed corpora (rebuilt each run; outside git) ----------------------------------------------
SEEDS=$WORK/seeds
rm -rf "$SEEDS"
mkdir -p "$SEEDS"/{gguf,safetensors,torch_zip,pickle,config,tokenizer}
cp $FIX/tiny/*.safetensors "$SEEDS/safetensors/"
cp $FIX/tiny/open_clip_pytorch_model.bin $FIX/tiny/last.pt "$SEEDS/torch_zip/"
say "writing micro-model seeds (cargo test -p clipdino --test fuzz_regressions -- --ignored)"
CLIPDINO_FUZZ_SEEDS=$SEEDS cargo test -q -p clipdino --test fuzz_regressions -- \
  --ignored write_fuzz_seeds >/dev/null
python3 - "$FIX" "$SEEDS" <<'PY'
import json, pathlib, sys, zipfile
fix, seeds = pathlib.Path(sys.argv[1]), pathlib.Path(sys.argv[2])
# the unpickler alone: data.pkl of each torch file
for f in ["tiny/open_clip_pytorch_model.bin", "tiny/last.pt"]:
    with zipfile.ZipFile(fix / f) as z:
        pkl = next(n for n in z.namelist() if n.endswith("data.pkl"))
        (seeds / "pickle" / (pathlib.Path(f).stem + ".pkl")).write_bytes(z.read(pkl))
# configs: mode byte + text (see crates/clipdino/fuzz/src/lib.rs)
oc = (fix / "tiny/open_clip_config.json").read_bytes()
(seeds / "config" / "open_clip.json").write_bytes(b"\x00" + oc)
vit = {"embed_dim": 512,
       "vision": {"width": 768, "layers": 12, "heads": 12, "patch_size": 16, "image_size": 224, "mlp_dim": 3072},
       "text": {"width": 512, "layers": 12, "heads": 8, "context_length": 77, "vocab_size": 49408, "mlp_dim": 2048}}
(seeds / "config" / "clip.json").write_bytes(b"\x01" + json.dumps(vit).encode())
(seeds / "config" / "head.json").write_bytes(b"\x02" + b'{"in_dim": 768, "proj_dim": 256, "layer": 9}')
(seeds / "config" / "infer.safetensors").write_bytes(b"\x03" + (fix / "tiny/open_clip_model.safetensors").read_bytes())
# tokenizer: every reference case text (one file each) and a label list
cases = json.loads((fix / "tokenizer/cases.json").read_text())["cases"]
for i, c in enumerate(cases):
    (seeds / "tokenizer" / f"case{i:04}.txt").write_bytes(c["text"].encode())
(seeds / "tokenizer" / "labels.txt").write_bytes("cat, sofa, window, background".encode())
PY

# --- run ----------------------------------------------------------------------------------------
say "building the targets (nightly; release optimisations with debug assertions, overflow checks and AddressSanitizer)"
t0=$(date +%s)
(cd crates/clipdino && cargo +nightly fuzz build)
say "build: $(( $(date +%s) - t0 )) s"

RUN=$(date +%Y%m%d-%H%M%S)
mkdir -p "$WORK/logs"
REPORT=()
for t in "${TARGETS[@]}"; do
  corpus=$WORK/corpus/$t
  artifacts=$WORK/artifacts/$RUN/$t
  mkdir -p "$corpus" "$artifacts"
  log=$WORK/logs/$t.log
  say "$t: ${SECS} s, RSS limit ${RSS_MB} MB"
  start=$(date +%s)
  set +e
  (cd crates/clipdino && cargo +nightly fuzz run "$t" \
      "$corpus" "$SEEDS/$t" -- \
      -max_total_time="$SECS" -rss_limit_mb="$RSS_MB" -timeout=30 -max_len=131072 \
      -artifact_prefix="$artifacts/" -print_final_stats=1) >"$log" 2>&1
  rc=$?
  set -e
  took=$(( $(date +%s) - start ))
  execs=$(grep -o 'stat::number_of_executed_units: *[0-9]*' "$log" | tail -1 | awk '{print $2}')
  [ -z "$execs" ] && execs=$(grep -o 'Done [0-9]* runs' "$log" | tail -1 | awk '{print $2}')
  found=$(find "$artifacts" -type f \( -name 'crash-*' -o -name 'oom-*' -o -name 'timeout-*' -o -name 'leak-*' -o -name 'slow-unit-*' \) | wc -l)
  REPORT+=("$(printf '%-12s %6s s %12s execs %3s findings  (exit %s, log %s)' "$t" "$took" "${execs:-?}" "$found" "$rc" "${log#$PWD/}")")
  if [ "$found" -gt 0 ]; then
    say "$t: findings in ${artifacts#$PWD/}:"
    ls "$artifacts"
    grep -m1 -A3 -E '^(thread|==[0-9]+==ERROR|ERROR: libFuzzer)' "$log" || true
  fi
done

printf '\n%-12s %8s %18s %12s\n' target time executions findings
for line in "${REPORT[@]}"; do echo "$line"; done
