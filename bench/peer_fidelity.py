"""Summarise bench/peer-fidelity.sh: per model kind and side, the pooled 448x448 image embedding's
cosine to upstream torch f32 and its relative error |a - ref| / |ref|, over the evaluation photos.

Usage: python bench/peer_fidelity.py DATA [RESULTS]   (writes DATA/summary.json, prints a Markdown
table; with RESULTS, e.g. bench/results.json, also stores the summary there as `peer_fidelity`,
keeping the rest)
"""

import datetime
import json
import subprocess
import sys
from pathlib import Path

import numpy as np

PHOTOS = ("chelsea", "china", "flower")
KINDS = ("realistic", "gaussian")


def errors(a, ref):
    a, ref = np.asarray(a, np.float64), np.asarray(ref, np.float64)
    if a.shape != ref.shape:
        raise SystemExit(f"pooled sizes differ: {a.shape} vs {ref.shape}")
    cos = float(a @ ref / (np.linalg.norm(a) * np.linalg.norm(ref)))
    return cos, float(np.linalg.norm(a - ref) / np.linalg.norm(ref))


def sides(folder: Path) -> tuple[dict, list]:
    ours = json.loads((folder / "ours.json").read_text())
    if ours.get("generated_weights"):
        raise SystemExit(f"{folder}: the CLI generated {ours['generated_weights']} instead of reading them")
    peer = json.loads((folder / "peer.json").read_text())
    (m,) = [m for m in peer["models"] if m["size"] == [448, 448]]
    if m["input"] != "rust tower input":
        raise SystemExit(f"{folder}: the peer ran on a random input, not the dumped tower input")
    out = {"onnxruntime f32": m["onnx_f32_pooled"], "onnxruntime int8 (quantize_dynamic)": m["onnx_int8_pooled"]}
    for s in ours["steps"]:
        if s["step"]["op"] == "tower" and "pooled" in s:
            out[f"ours, {s['model'].removeprefix('gguf ')} bundle, int kernel"] = s["pooled"]
    return out, m["torch_pooled"]


def main() -> int:
    data = Path(sys.argv[1])
    summary = {}
    for kind in KINDS:
        rows: dict[str, list] = {}
        for photo in PHOTOS:
            out, ref = sides(data / kind / photo)
            for side, pooled in out.items():
                rows.setdefault(side, []).append(errors(pooled, ref))
        summary[kind] = {
            side: {
                "cosine_mean": float(np.mean([c for c, _ in v])),
                "cosine_min": float(np.min([c for c, _ in v])),
                "rel_error_mean": float(np.mean([e for _, e in v])),
                "rel_error_max": float(np.max([e for _, e in v])),
                "photos": len(v),
            }
            for side, v in rows.items()
        }
    (data / "summary.json").write_text(json.dumps(summary, indent=1))
    if len(sys.argv) > 2:
        results = Path(sys.argv[2])
        doc = json.loads(results.read_text()) if results.exists() else {}
        git = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True)
        doc["peer_fidelity"] = {
            "generated": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
            "git": git.stdout.strip(),
            "command": "bench/peer-fidelity.sh",
            "measure": "pooled 448x448 image embedding vs upstream torch f32, evaluation photos",
            "photos": list(PHOTOS),
            "summary": summary,
        }
        results.write_text(json.dumps(doc, indent=1, ensure_ascii=False) + "\n")
    print("| weights | side | pooled cosine to torch f32 (mean / min) | relative error (mean / max) |")
    print("|:--|:--|--:|--:|")
    for kind, sides_ in summary.items():
        for side, r in sides_.items():
            print(
                f"| {kind} | {side} | {r['cosine_mean']:.5f} / {r['cosine_min']:.5f} "
                f"| {100 * r['rel_error_mean']:.2f} % / {100 * r['rel_error_max']:.2f} % |"
            )
    return 0


if __name__ == "__main__":
    sys.exit(main())
