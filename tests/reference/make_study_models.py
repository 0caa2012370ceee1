#!/usr/bin/env python3
"""Inputs of the quantization study (QUANTIZATION.md, `scripts/quant-study.sh`), written into a
git-ignored folder, never committed:

    make_study_models.py photos    --out DIR     # lossless PNG copies of the sample photos
    make_study_models.py realistic --out DIR     # full-size ViT-B/16 with realistic statistics
    make_study_models.py reference --model DIR --photo PNG --labels FILE --out FILE
    make_study_models.py compare   --reference FILE --dump DIR

* `photos`: www/samples/*.jpg decoded once by PIL and saved as PNG under `calibration/` and
  `evaluation/` (the split of realistic.py), so that the Rust CLI reads exactly the pixels PIL
  sees: JPEG decoder differences cannot reach the study's figures.
* `realistic`: open_clip's own `CLIP` with the ViT-B-16 config, every weight drawn as in
  realistic.py (Student-t weights, LayerNorm outlier gains, massive activations planted in vision
  block 3 and text block 2, thresholds set on the calibration photos at short side 224 and on
  calibration prompts), and a heavy-tailed CLIP-DINOiser head (256 x 768 x 3 x 3). Saved like
  upstream (open_clip_config.json, open_clip_model.safetensors, open_clip_pytorch_model.bin,
  last.pt) plus `planted.json` (what was planted and measured; the run asserts it).
* `reference`: the upstream computation (open_clip forward + the CLIP-DINOiser reference code of
  make_fixtures.py) on one photo at short side 336, one pass, with the labels of FILE embedded with
  the 80 ImageNet templates: dense and refined features, label embeddings, probabilities, label map.
* `compare`: max |difference| between that reference and `clipdino segment --dump` of the same
  photo, labels and options (the full-size check that the Rust f32 path is the upstream one).
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from safetensors.torch import load_file, save_file

import open_clip
from open_clip.model import CLIP
from open_clip.push_to_hf_hub import save_config_for_hf
from open_clip.zero_shot_metadata import OPENAI_IMAGENET_TEMPLATES

import make_fixtures as M
import realistic as R

REPO = Path(__file__).resolve().parent.parent.parent
SEED = 20261202
BLOCKS = {"vision": 3, "text": 2}  # planted neurons: the head's block (9) and later see them
CALIBRATION_CLASSES = REPO / "crates" / "clipdino" / "assets" / "classes" / "coco_object.txt"
CALIBRATION_TEMPLATES = ("a photo of a {}.", "a bad photo of the {}.", "a sculpture of a {}.",
                         "itap of a {}.", "a photo of the large {}.")


def sample_path(name: str) -> Path:
    return REPO / "www" / "samples" / f"{name}.jpg"


def cmd_photos(out: Path) -> None:
    for split, names in (("calibration", R.CALIBRATION_PHOTOS), ("evaluation", R.EVALUATION_PHOTOS)):
        d = out / split
        d.mkdir(parents=True, exist_ok=True)
        for n in names:
            Image.open(sample_path(n)).convert("RGB").save(d / f"{n}.png")
            print(d / f"{n}.png")


def tokenize(prompts: list[str]) -> torch.Tensor:
    return open_clip.get_tokenizer("ViT-B-16")(prompts)


def read_labels(path: Path) -> list[str]:
    return [l.strip() for l in path.read_text().splitlines() if l.strip()]


def cmd_realistic(out: Path, labels_file: Path) -> None:
    torch.set_grad_enabled(False)
    cfg = open_clip.get_model_config("ViT-B-16")
    torch.manual_seed(SEED)
    model = CLIP(**cfg).eval()
    gen = torch.Generator().manual_seed(SEED)
    print("drawing weights ...", flush=True)
    R.fill_weights(model, gen)
    plans = R.tower_plans(model, BLOCKS["vision"], BLOCKS["text"])
    R.plant_gain_outliers(model, plans[0], cfg["vision_cfg"]["width"], gen)
    R.plant_gain_outliers(model, plans[1], cfg["text_cfg"]["width"], gen)

    calib_imgs = [R.resize_short(R.load_photo(sample_path(n)), 224) for n in R.CALIBRATION_PHOTOS]
    eval_imgs = [R.resize_short(R.load_photo(sample_path(n)), 336) for n in R.EVALUATION_PHOTOS]
    classes = read_labels(CALIBRATION_CLASSES)
    calib_tokens = tokenize([t.format(c) for c in classes for t in CALIBRATION_TEMPLATES])
    eval_labels = read_labels(labels_file)
    eval_tokens = tokenize([t(c) for c in eval_labels for t in OPENAI_IMAGENET_TEMPLATES])

    def accept_vision(plan):
        st = R.tower_stats(model, plan, R.trace_vision(model, eval_imgs))
        print(f"  vision draw: fires on {st['fire_share']:.2%}, massive on {st['massive_share']:.2%}", flush=True)
        return 0.01 <= st["fire_share"] <= 0.08 and st["massive_share"] >= 0.005

    def accept_text(plan):
        st = R.tower_stats(model, plan, R.trace_text(model, eval_tokens))
        cal = R.tower_stats(model, plan, R.trace_text(model, calib_tokens))
        print(f"  text draw: fires on {st['fire_share']:.2%}, massive on {st['massive_share']:.2%}, "
              f"pooled tokens {st['pooled_fire_share']:.2%} / {cal['pooled_fire_share']:.2%}", flush=True)
        return (st["massive_share"] >= 0.005 and not st["pooled_fire_share"] and not cal["pooled_fire_share"]
                and st["first_fire_share"] == 1.0 == cal["first_fire_share"])

    print("planting ...", flush=True)
    R.plant_massive(model, plans[0], lambda: R.trace_vision(model, calib_imgs), gen, accept_vision)
    R.plant_massive(model, plans[1], lambda: R.trace_text(model, calib_tokens), gen, accept_text)
    stats = {
        "vision (evaluation photos, short side 336)": R.tower_stats(model, plans[0], R.trace_vision(model, eval_imgs)),
        "vision (calibration photos, short side 224)": R.tower_stats(model, plans[0], R.trace_vision(model, calib_imgs)),
        "text (evaluation labels x 80 templates)": R.tower_stats(model, plans[1], R.trace_text(model, eval_tokens)),
        "text (calibration prompts)": R.tower_stats(model, plans[1], R.trace_text(model, calib_tokens)),
    }
    for what, st in stats.items():
        st.pop("massive_tokens_per_input")
        print(what, json.dumps(st))
        R.check(st, what, fire=(0.01, 0.15) if "text" in what else (0.01, 0.08))
    head = M.DinoiserHead(cfg["vision_cfg"]["width"], 256).eval()
    R.fill_head(head, torch.Generator().manual_seed(SEED + 1))

    out.mkdir(parents=True, exist_ok=True)
    sd = model.state_dict()
    model.visual.image_mean = R.MEAN
    model.visual.image_std = R.STD
    save_config_for_hf(model, out / "open_clip_config.json", model_config=cfg)
    save_file(sd, str(out / "open_clip_model.safetensors"))
    torch.save(sd, out / "open_clip_pytorch_model.bin")
    hsd = head.state_dict()
    torch.save({"epoch": 9, "model_state_dict": {k: hsd[k] for k in
                ("obj_proj.bias", "obj_proj.weight", "bkg_decoder.bias", "bkg_decoder.weight")}},
               out / "last.pt")
    planted = {p.prefix: {"block": p.block, "neurons": p.neurons, "gain_outlier_dims": p.gain_dims,
                          "massive_dims": p.massive_dims} for p in plans}
    (out / "planted.json").write_text(json.dumps({"seed": SEED, "planted": planted, "stats": stats,
                                                  "head_weight_excess_kurtosis": R.head_stats(head)}, indent=1))
    # the written files load back through open_clip's own factory
    loaded = open_clip.create_model("local-dir:" + str(out)).eval()
    x = R.pixels(eval_imgs[0][:, :224, :224], 16)
    assert torch.equal(loaded.encode_image(x), model.encode_image(x))
    print(f"wrote {out}")


def load_model_dir(d: Path):
    model = open_clip.create_model("local-dir:" + str(d)).eval()
    ck = torch.load(d / "last.pt", map_location="cpu", weights_only=True)["model_state_dict"]
    w = ck["obj_proj.weight"]
    head = M.DinoiserHead(w.shape[1], w.shape[0]).eval()
    head.load_state_dict(ck)
    return model, head


def cmd_reference(model_dir: Path, photo: Path, labels_file: Path, out: Path) -> None:
    torch.set_grad_enabled(False)
    model, head = load_model_dir(model_dir)
    labels = read_labels(labels_file)
    emb = []
    for c in labels:
        e = model.encode_text(tokenize([t(c) for t in OPENAI_IMAGENET_TEMPLATES]))
        e = e / e.norm(dim=-1, keepdim=True)
        e = e.mean(0)
        emb.append(e / e.norm())
    emb = torch.stack(emb)
    img = R.resize_short(R.load_photo(photo), 336)
    ref = M.ClipDinoiserReference(model, head, emb)
    bg = labels.index("background") if "background" in labels else None
    r = ref.forward(img[None], bg)
    h0, w0 = R.load_photo(photo).shape[-2:]
    probs = M.upsample_full(r["probs_dinoiser"], img.shape[1], img.shape[2])
    probs = F.interpolate(probs, size=(h0, w0), mode="bilinear", align_corners=False)[0]
    exp = {
        "text_emb": emb, "dense": r["dense"][0].permute(1, 2, 0), "refined": r["refined"][0].permute(1, 2, 0),
        "bkg": r["bkg"][0, 0], "probs": probs, "labels": probs.argmax(0).to(torch.int64),
    }
    save_file({k: v.contiguous() for k, v in exp.items()}, str(out))
    print(f"wrote {out}")


def cmd_compare(reference: Path, dump: Path) -> None:
    exp = load_file(str(reference))
    worst = {}
    for name in ("text_emb", "dense", "refined", "bkg", "probs"):
        got = torch.from_numpy(np.load(dump / f"{name}.npy")).double()
        want = exp[name].double()
        assert got.shape == want.shape, (name, got.shape, want.shape)
        d = float((got - want).abs().max())
        worst[name] = {"max_abs_diff": d, "max_abs": float(want.abs().max()),
                       "relative": d / max(1.0, float(want.abs().max()))}
    lm = torch.from_numpy(np.load(dump / "labels.npy"))
    worst["labels_agree"] = float((lm == exp["labels"]).double().mean())
    print(json.dumps(worst, indent=1))
    bad = [k for k, v in worst.items() if k != "labels_agree" and v["relative"] > 1e-3]
    if bad or worst["labels_agree"] < 0.999:
        raise SystemExit(f"the Rust f32 path differs from upstream: {bad or worst['labels_agree']}")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = ap.add_subparsers(dest="cmd", required=True)
    p = sub.add_parser("photos")
    p.add_argument("--out", type=Path, required=True)
    p = sub.add_parser("realistic")
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--labels", type=Path, default=REPO / "tests" / "fixtures" / "quant" / "voc10.txt")
    p = sub.add_parser("reference")
    p.add_argument("--model", type=Path, required=True)
    p.add_argument("--photo", type=Path, required=True)
    p.add_argument("--labels", type=Path, required=True)
    p.add_argument("--out", type=Path, required=True)
    p = sub.add_parser("compare")
    p.add_argument("--reference", type=Path, required=True)
    p.add_argument("--dump", type=Path, required=True)
    a = ap.parse_args()
    print(f"torch {torch.__version__}, open_clip {open_clip.__version__}", flush=True)
    if a.cmd == "photos":
        cmd_photos(a.out)
    elif a.cmd == "realistic":
        cmd_realistic(a.out, a.labels)
    elif a.cmd == "reference":
        cmd_reference(a.model, a.photo, a.labels, a.out)
    else:
        cmd_compare(a.reference, a.dump)
    return 0


if __name__ == "__main__":
    sys.exit(main())
