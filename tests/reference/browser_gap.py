"""How far the browser's photo path is from the upstream one, on the sample photos.

Browser path (the app, src/worker/image.rs): Chromium's `createImageBitmap` decode (EXIF
orientation applied), the full-size bitmap copied 1:1 in bands onto an OffscreenCanvas over white
and read back as RGBA bytes, then the model crate's bilinear resize (`Rgba8Resize`, bit-equal to
`resize_bilinear_vec`: the CLI's resize) — the browser part run by
`tests/reference/browser_decode.mjs` in headless Chromium.

Upstream path (what the parity fixtures and the CLI compute): PIL decode
(`ImageOps.exif_transpose(Image.open(f)).convert("RGB")`, libjpeg-turbo), then
`F.interpolate(x / 255, size, mode="bilinear", align_corners=False)` on the float image
(tests/fixtures/README.md, protocol point 9).

Printed (and written as JSON with --json): per photo, max and mean |Δ| in 8-bit units between the
bytes the app's resize reads and PIL's decode; and, for comparison, the browser's own resize
(`createImageBitmap(..., resizeQuality: "high")`, what the app used before) against the upstream
float resize (in brackets: against the same resize with `antialias=True`) at the app's 224 / 336 /
448 short sides.

With --cli BIN --weights DIR (a `clipdino random-weights` folder) it also measures the effect on
the model of the app's path: `clipdino segment --short-side S --dump` on the app's bytes (as PNG)
vs on the photo file itself (the CLI decodes JPEG bit-identically to PIL), both resized by the
crate's bilinear, at each short side; it reports max |Δ| and mean / min cosine of the dense
MaskCLIP features and the agreement of the patch-level argmax.

    tests/reference/.venv/bin/python tests/reference/browser_gap.py [--json OUT] \
        [--cli target/release/clipdino --weights DIR] [--photo PHOTO.jpg ...]
"""

import argparse
import io
import json
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image, ImageOps, features

ROOT = Path(__file__).resolve().parents[2]
PHOTOS = [p for p in sorted((ROOT / "www" / "samples").glob("*.jpg")) if "-thumb" not in p.name]
PHOTOS += sorted((ROOT / "tests" / "fixtures" / "voc" / "images").glob("*.jpg"))
SHORT_SIDES = [224, 336, 448]
LABELS = "person,cat,flower,rocket,cup,building,table,sky,grass,background"


def short_side_size(h: int, w: int, short: int) -> tuple[int, int]:
    """mmcv rescale_size, as `clipdino::pipeline::short_side_size` (the app caps the long side
    at 2688 px, which no sample reaches)."""
    scale = short / min(h, w)
    return int(h * scale + 0.5), int(w * scale + 0.5)


def pil_rgb(path: Path) -> np.ndarray:
    return np.asarray(ImageOps.exif_transpose(Image.open(path)).convert("RGB"))


def torch_resize(rgb: np.ndarray, h: int, w: int, antialias: bool) -> np.ndarray:
    """[h, w, 3] float in 8-bit units (not rounded)."""
    x = torch.from_numpy(rgb).permute(2, 0, 1)[None].float() / 255.0
    y = F.interpolate(x, size=(h, w), mode="bilinear", align_corners=False, antialias=antialias)
    return y[0].permute(1, 2, 0).numpy() * 255.0


def gap(a: np.ndarray, b: np.ndarray) -> dict:
    d = np.abs(a.astype(np.float64) - b.astype(np.float64))
    return {"max": round(float(d.max()), 3), "mean": round(float(d.mean()), 3)}


def save_png(rgb: np.ndarray, path: Path) -> None:
    Image.fromarray(rgb).save(path)


def read_npy(path: Path) -> np.ndarray:
    return np.load(path)


def features_gap(cli: str, weights: Path, a: Path, b: Path, tmp: Path, short: int) -> dict:
    dumps = []
    for k, img in enumerate((a, b)):
        d = tmp / f"dump-{k}-{img.stem}-{short}"
        subprocess.run(
            [cli, "segment",
             "--clip", str(weights / "open_clip_model.safetensors"),
             "--config", str(weights / "open_clip_config.json"),
             "--head", str(weights / "last.pt"),
             "--image", str(img), "--short-side", str(short), "--templates", "fast",
             "--labels", LABELS, "--dump", str(d)],
            check=True, capture_output=True,
        )
        dumps.append(d)
    fa, fb = (read_npy(d / "dense.npy") for d in dumps)
    pa, pb = (read_npy(d / "probs.npy").argmax(0) for d in dumps)
    cos = (fa * fb).sum(-1) / (np.linalg.norm(fa, axis=-1) * np.linalg.norm(fb, axis=-1))
    return {
        "dense_max_abs": float(np.abs(fa - fb).max()),
        "dense_mean_cos": float(cos.mean()),
        "dense_min_cos": float(cos.min()),
        "patch_argmax_agree": float((pa == pb).mean()),
    }


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--json", type=Path)
    ap.add_argument("--cli", help="clipdino binary, for the dense-feature comparison")
    ap.add_argument("--weights", type=Path, help="clipdino random-weights folder")
    ap.add_argument("--photo", type=Path, action="append", default=[],
                    help="measure this photo instead of the samples (repeatable)")
    args = ap.parse_args()
    photos = [p.resolve() for p in args.photo] or PHOTOS

    jobs = []
    for p in photos:
        h, w = pil_rgb(p).shape[:2]
        jobs.append({"path": str(p.relative_to(ROOT)) if p.is_relative_to(ROOT) else str(p),
                     "sizes": [short_side_size(h, w, s)[::-1] for s in SHORT_SIDES]})
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        (tmp / "job.json").write_text(json.dumps(jobs))
        subprocess.run(
            ["node", str(ROOT / "tests/reference/browser_decode.mjs"), str(tmp / "job.json"),
             str(tmp / "out")],
            check=True,
        )
        manifest = json.loads((tmp / "out/manifest.json").read_text())
        report = {
            "browser": manifest["browser"],
            "upstream": f"Pillow {Image.__version__} (libjpeg-turbo "
            f"{features.version_feature('libjpeg_turbo')}) + torch {torch.__version__} "
            "F.interpolate(bilinear, align_corners=False)",
            "photos": [],
        }
        for i, (job, m) in enumerate(zip(jobs, manifest["files"])):
            ref = pil_rgb(ROOT / job["path"])
            h, w = ref.shape[:2]
            assert (m["width"], m["height"]) == (w, h), (job, m)
            dec = np.fromfile(tmp / f"out/{i}.decoded.rgb", np.uint8).reshape(h, w, 3)
            row = {"photo": job["path"], "size": [w, h], "decode": gap(dec, ref), "resize": {}}
            for (rw, rh), short in zip(job["sizes"], SHORT_SIDES):
                br = np.fromfile(tmp / f"out/{i}.{rw}x{rh}.rgb", np.uint8).reshape(rh, rw, 3)
                up = torch_resize(ref, rh, rw, antialias=False)
                aa = torch_resize(ref, rh, rw, antialias=True)
                entry = {
                    "size": [rw, rh],
                    "vs_upstream": gap(br, up),
                    "vs_antialiased": gap(br, aa),
                    "upstream_vs_antialiased": gap(up, aa),
                }
                if args.cli:
                    app_png = tmp / f"app{i}.png"
                    if not app_png.exists():
                        save_png(dec, app_png)
                    entry["features"] = features_gap(
                        args.cli, args.weights, app_png, ROOT / job["path"], tmp, short
                    )
                row["resize"][str(short)] = entry
            report["photos"].append(row)

    print(f"{report['browser']} vs {report['upstream']}")
    print("photo | app decode max/mean | " + " | ".join(
        f"{s}: browser resize vs upstream max/mean (vs antialiased)" for s in SHORT_SIDES))
    for r in report["photos"]:
        cells = [f"{r['decode']['max']:.0f} / {r['decode']['mean']:.3f}"]
        for s in SHORT_SIDES:
            e = r["resize"][str(s)]
            cells.append(f"{e['vs_upstream']['max']:.1f} / {e['vs_upstream']['mean']:.2f} "
                         f"({e['vs_antialiased']['max']:.1f} / {e['vs_antialiased']['mean']:.2f})")
        print(f"{r['photo']} | " + " | ".join(cells))
        for s in SHORT_SIDES:
            f = r["resize"][str(s)].get("features")
            if f:
                print(f"    app path at {s}: dense max|Δ| {f['dense_max_abs']:.3g}, mean cos "
                      f"{f['dense_mean_cos']:.6f} (min {f['dense_min_cos']:.6f}), patch argmax "
                      f"agree {100 * f['patch_argmax_agree']:.1f} %")
    if args.json:
        args.json.write_text(json.dumps(report, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
