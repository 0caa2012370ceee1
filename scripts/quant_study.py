#!/usr/bin/env python3
"""The quantization study of QUANTIZATION.md, end to end (run it through scripts/quant-study.sh,
which builds the CLI and the reference virtualenv first).

For each model (the two committed tiny fixtures, and full-size ViT-B/16 weights with Gaussian and
with realistic statistics, generated into the data folder), every bundle recipe is converted with
`clipdino convert`, then `clipdino verify` runs the upstream files (f32) and every bundle on every
compute path on the held-out evaluation photos (lossless PNG copies) with ten VOC-style labels,
at short side 336 and with the paper's 448 sliding window. The verify reports are kept, and the
tables are printed as Markdown. Only the Python standard library is used here.

    python3 scripts/quant_study.py --cli target/release/clipdino --python .venv/bin/python \\
        [--data target/quant-study] [--models tiny-gaussian,...] [--quick]
"""

from __future__ import annotations

import argparse
import json
import random
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
LABELS = REPO / "tests" / "fixtures" / "quant" / "voc10.txt"

# (row name, recipe, calibrated with the calibration photos + ade20k prompts)
RECIPES = [
    ("f32", "f32", False),
    ("f16", "f16", False),
    ("q8_0", "q8_0", False),
    ("q6_k", "q6_k", False),
    ("q5_k", "q5_k", False),
    ("q4_k", "q4_k", False),
    ("q4_0", "q4_0", False),
    ("q4_k+imatrix", "q4_k", True),
    ("q5_k+imatrix", "q5_k", True),
    ("q4_k,attn=q5_k", "q4_k,attn=q5_k", True),
    ("q4_k,text=q5_k", "q4_k,text=q5_k", True),
    ("q4_k,first=q8_0", "q4_k,first=q8_0", True),
    ("q4_k,last=q8_0", "q4_k,last=q8_0", True),
    ("q4_k,head_block=q8_0", "q4_k,head_block=q8_0", True),
    ("q4_k,value_path=q8_0", "q4_k,value_path=q8_0", True),
    ("q4_k,embed=q8_0", "q4_k,embed=q8_0", True),
    ("q4_k,mlp=q5_k", "q4_k,mlp=q5_k", True),
    ("q6_k+imatrix", "q6_k", True),
    ("q6_k,attn=q8_0", "q6_k,attn=q8_0", True),
    # the mixed K-quant recipe that was the candidate default before the full-size realistic run
    ("mixed-k", "q4_k,attn=q5_k,first=q8_0,value_path=q6_k,head_block=q6_k,projection=q8_0,"
                "patch_embedding=q8_0,dinoiser=q8_0", True),
    ("default", "default", False),
]
# Compute paths: (row name, verify arguments)
COMPUTES = [
    ("f32", ["--compute", "f32"]),
    ("int", ["--compute", "int"]),
    ("int, no wide channels", ["--compute", "int", "--wide-channels", "0"]),
]
QUANTIZED_RECIPES = {"q8_0", "q4_k", "q4_0", "mixed-k"}  # candle's quantized matmuls are slow natively


def run(cmd: list, **kw) -> subprocess.CompletedProcess:
    print("+", " ".join(str(c) for c in cmd), flush=True)
    return subprocess.run([str(c) for c in cmd], check=True, **kw)


def label_tokens(path: Path) -> None:
    """The tiny fixtures' vocabulary (1000 ids, SOT 998, EOT 999) cannot tokenize the label names:
    ten random token rows (3-11 ids) stand in for them, named after the VOC-style labels so that
    the first one is the background label."""
    rng = random.Random(10)
    names = [l.strip() for l in LABELS.read_text().splitlines() if l.strip()]
    rows = [[998] + [rng.randrange(1, 998) for _ in range(rng.randrange(3, 12))] + [999] for _ in names]
    path.write_text(json.dumps({"names": names, "tokens": rows}))


def prepare(a, data: Path) -> dict:
    """Model folders and inputs, generated when missing."""
    photos = data / "photos"
    if not (photos / "evaluation").is_dir():
        run([a.python, REPO / "tests/reference/make_study_models.py", "photos", "--out", photos])
    models = {
        "tiny-gaussian": REPO / "tests/fixtures/tiny",
        "tiny-realistic": REPO / "tests/fixtures/tiny-realistic",
        "gaussian-vit-b-16": data / "models/gaussian-vit-b-16",
        "realistic-vit-b-16": data / "models/realistic-vit-b-16",
    }
    g = models["gaussian-vit-b-16"]
    if "gaussian-vit-b-16" in a.models and not (g / "last.pt").is_file():
        run([a.cli, "random-weights", "--arch", "vit-b-16", "--seed", "0", "--out", g])
    r = models["realistic-vit-b-16"]
    if "realistic-vit-b-16" in a.models and not (r / "last.pt").is_file():
        run([a.python, REPO / "tests/reference/make_study_models.py", "realistic", "--out", r])
    tokens = data / "tiny-label-tokens.json"
    label_tokens(tokens)
    return {"photos": photos, "models": models, "tokens": tokens}


def study_model(a, data: Path, name: str, folder: Path, inputs: dict) -> dict:
    out = data / "results" / name
    out.mkdir(parents=True, exist_ok=True)
    bundles = data / "bundles" / name
    bundles.mkdir(parents=True, exist_ok=True)
    clip = folder / "open_clip_model.safetensors"
    upstream = ["--clip", clip, "--config", folder / "open_clip_config.json", "--head", folder / "last.pt"]
    tiny = name.startswith("tiny")
    calib = inputs["photos"] / "calibration"
    recipes = [r for r in RECIPES if not a.quick or r[0] in ("f16", "q8_0", "q6_k", "q6_k+imatrix", "q4_k", "q4_0", "mixed-k")]
    converted = []
    for row, recipe, calibrated in recipes:
        path = bundles / (row.replace(",", "_").replace("=", "-").replace("+", "_") + ".gguf")
        if not path.is_file():
            cmd = [a.cli, "convert", *upstream, "--quant", recipe, "--out", path]
            if calibrated:
                cmd += ["--calibrate", calib]
            t = time.time()
            run(cmd, stdout=subprocess.DEVNULL)
            print(f"  converted in {time.time() - t:.1f} s", flush=True)
        converted.append((row, recipe, calibrated, path))
    labels = ["--label-tokens", inputs["tokens"]] if tiny else ["--classes", LABELS]
    evaluation = inputs["photos"] / "evaluation"
    reports = {}
    for cname, cargs in COMPUTES + [("quantized", ["--compute", "quantized"])]:
        report = out / f"verify-{cname.replace(' ', '-').replace(',', '')}.json"
        chosen = [c for c in converted if cname != "quantized" or c[0] in QUANTIZED_RECIPES]
        if a.quick and cname not in ("f32", "int"):
            continue
        if not report.is_file():
            cmd = [a.cli, "verify", *upstream, *labels, "--images", evaluation, "--json", report, *cargs]
            for c in chosen:
                cmd += ["--model", c[3]]
            run(cmd)
        reports[cname] = json.loads(report.read_text())
    return {"converted": [(r, rc, cal, str(p)) for r, rc, cal, p in converted], "reports": reports}


def fmt_pair(v) -> str:
    if not v:
        return "–"
    return f"{v['mean']:.4f} / {v.get('p01', float('nan')):.4f} / {v['min']:.4f}"


def tables(results: dict) -> str:
    lines = []
    for model, res in results.items():
        lines.append(f"\n### {model}\n")
        lines.append("| bundle | recipe | compute | size | load | text cos mean / p01 / min "
                     "| dense cos mean / p01 / min | refined cos mean / p01 / min | agree % (336) "
                     "| agree % (448 window) | agree % |")
        lines.append("|---|---|---|--:|--:|---|---|---|--:|--:|--:|")
        recipes = {Path(p).name: (row, rc, cal) for row, rc, cal, p in res["converted"]}
        for cname, rep in res["reports"].items():
            for c in rep["candidates"]:
                row, rc, cal = recipes.get(c["file"], (c["file"], c["recipe"], False))
                pp = c["per_preset"]
                lines.append(
                    f"| {row} | `{c['recipe']}`{' + imatrix' if cal else ''} | {cname} | {c['bytes'] / 1e6:.1f} MB "
                    f"| {c['load_seconds']:.2f} s | {fmt_pair(c['text_cosine'])} | {fmt_pair(c['overall']['dense_cosine'])} "
                    f"| {fmt_pair(c['overall']['refined_cosine'])} | {pp.get('balanced', {}).get('agreement', float('nan')):.2f} "
                    f"| {pp.get('paper', {}).get('agreement', float('nan')):.2f} | {c['overall']['agreement']:.2f} |")
    return "\n".join(lines) + "\n"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--cli", type=Path, required=True, help="the clipdino binary (release build)")
    ap.add_argument("--python", type=Path, required=True, help="python of tests/reference/.venv")
    ap.add_argument("--data", type=Path, default=REPO / "target" / "quant-study")
    ap.add_argument("--models", default="tiny-gaussian,tiny-realistic,realistic-vit-b-16,gaussian-vit-b-16")
    ap.add_argument("--quick", action="store_true", help="a few recipes and compute paths only")
    a = ap.parse_args()
    a.models = a.models.split(",")
    data = a.data.resolve()
    inputs = prepare(a, data)
    results = {}
    for m in a.models:
        results[m] = study_model(a, data, m, inputs["models"][m], inputs)
        (data / "results.json").write_text(json.dumps(results, indent=1))
    text = tables(results)
    (data / "tables.md").write_text(text)
    print(text)
    print(f"results: {data / 'results.json'}, tables: {data / 'tables.md'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
