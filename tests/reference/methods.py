#!/usr/bin/env python3
"""Reference outputs of the CLIP-only last-block methods (ClearCLIP, NACLIP, SCLIP) and of PAMR
on a fixture model, written to `<fixture>/methods.safetensors`.

Run on the committed fixtures (reads their model, head, images and labels; needs the venv of
`setup_venv.sh`):

    python tests/reference/methods.py                 # tests/fixtures/tiny and tiny-realistic
    python tests/reference/methods.py --check         # recompute and compare with the files on disk

`make_fixtures.py` calls `generate(out_dir)` after writing a fixture, so a regenerated fixture
gets its methods file too.

Formulas, from each method's official code (read, not imported; re-written here on the open_clip
3.3.0 model of the fixture, batch-first):
  * input `x` of the last vision block: the forward hook of `make_fixtures.ClipDinoiserReference`
    (padding to 16, CLIP normalisation, bicubic positional-embedding resize, blocks 0..L-2);
  * `custom_attn` (sinahmr/NACLIP `clip/model.py`, wangf3014/SCLIP `clip/model.py`): q, k, v =
    `F.linear(ln_1(x), in_proj_weight, in_proj_bias).chunk(3)`, split into heads, `scale = d^-0.5`:
      - ClearCLIP (mc-lan/ClearCLIP, `ignore_residual=True`, q-q attention): out = attn(softmax(q qᵀ s));
      - NACLIP (`arch='reduced'`, `attn_strategy='naclip'`, `gaussian_std=5`): softmax(k kᵀ s + ω),
        ω from NACLIP's `gaussian_window` + `get_attention_addition` (identity maps convolved with
        the window, zero CLS row/column), out = attn(...), no residual, no FFN;
      - SCLIP (`csa=True`): softmax(q qᵀ s) + softmax(k kᵀ s); x + attn, then x + mlp(ln_2 x);
    then `ln_post(x) @ proj`, patch tokens.
  * classification as the rest of the fixtures (CLIP-DINOiser's `cls_seg`: softmax(100 cos)), the
    demo's ×16 upsampling + crop (images a, b) or mmseg's slide window (image c, short side 64).
  * PAMR (visinf/1-stage-wseg `models/mods/pamr.py`; NACLIP/SCLIP test-time `PAMR(10, (8, 16))`):
    `LocalStDev` (std over the 3×3 dilated windows incl. the centre, all dilations), `LocalAffinityAbs`
    divided by `1e-8 + 0.1 std`, mean over channels, softmax over the 8·D neighbours,
    `LocalAffinityCopy` × affinity summed, 10 times; replicate padding. Applied to the
    probabilities at the processed image's size, guided by that image in [0, 1], then resized to
    the original size (bilinear, align_corners=False).
"""

from __future__ import annotations

import argparse
import math
import sys
import tempfile
from pathlib import Path

import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file

import make_fixtures as MF
from open_clip.model import CLIP

MODES = ("clearclip", "naclip", "sclip")
ALL_MODES = ("maskclip", "dinoiser") + MODES
NACLIP_STD = 5.0
PAMR_ITERS = 10
PAMR_DILATIONS = (8, 16)


# ---------------------------------------------------------------------------------------------
# Last-block variants
# ---------------------------------------------------------------------------------------------

def gaussian_window(dim1: int, dim2: int, std: float) -> torch.Tensor:
    """NACLIP VisionTransformer.gaussian_window: exp(-|p - centre|² / (2 std²)) on a dim1×dim2 grid."""
    c = 1.0 / (std * math.sqrt(2.0))
    axes = []
    for dim in (dim1, dim2):
        start = -(dim - 1) / 2.0
        axes.append(torch.linspace(start * c, (start + dim - 1) * c, dim, dtype=torch.float))
    return torch.exp(-(torch.stack(torch.meshgrid(*axes, indexing="ij")) ** 2).sum(0))


def attention_addition(h: int, w: int, window: torch.Tensor) -> torch.Tensor:
    """NACLIP get_attention_addition: row (i,j) = the window centred on (i,j); CLS row/col 0."""
    eye = torch.einsum("ij,kl->ijkl", torch.eye(h), torch.eye(w)).permute(0, 3, 1, 2).contiguous()
    out = F.conv2d(eye.view(-1, h, w).unsqueeze(1), window[None, None], padding="same").squeeze(1)
    out = out.view(h * w, h * w)
    out = torch.vstack([torch.zeros(1, h * w), out])
    return torch.hstack([torch.zeros(h * w + 1, 1), out])


def custom_attn(block, y: torch.Tensor, mode: str, grid: tuple[int, int]) -> torch.Tensor:
    """y = ln_1(x) [1, T, C] (batch-first) -> out_proj(A v) [1, T, C]."""
    attn = block.attn
    heads = attn.num_heads
    _, t, c = y.shape
    d = c // heads
    scale = d ** -0.5
    q, k, v = F.linear(y, attn.in_proj_weight, attn.in_proj_bias).chunk(3, dim=-1)
    split = lambda z: z[0].reshape(t, heads, d).transpose(0, 1)  # [heads, T, d]
    q, k, v = split(q), split(k), split(v)
    if mode == "clearclip":
        a = F.softmax(torch.bmm(q, q.transpose(1, 2)) * scale, dim=-1)
    elif mode == "naclip":
        h, w = grid
        window = gaussian_window(2 * h - 1, 2 * w - 1, NACLIP_STD).to(y.dtype)
        omega = attention_addition(h, w, window).to(y.dtype)[None]
        a = F.softmax(torch.bmm(k, k.transpose(1, 2)) * scale + omega, dim=-1)
    elif mode == "sclip":
        a = F.softmax(torch.bmm(q, q.transpose(1, 2)) * scale, dim=-1) + \
            F.softmax(torch.bmm(k, k.transpose(1, 2)) * scale, dim=-1)
    else:
        raise ValueError(mode)
    out = torch.bmm(a, v).transpose(0, 1).reshape(1, t, c)
    return attn.out_proj(out)


def last_block(model: CLIP, x: torch.Tensor, mode: str, grid: tuple[int, int]) -> torch.Tensor:
    """Dense features [h, w, E] of `mode` from the last block's input x [1, T, C]."""
    visual = model.visual
    blk = visual.transformer.resblocks[-1]
    a = custom_attn(blk, blk.ln_1(x), mode, grid)
    if mode in ("clearclip", "naclip"):
        out = a
    else:  # sclip: residual and FFN kept
        out = x + a
        out = out + blk.mlp(blk.ln_2(out))
    out = visual.ln_post(out)[:, 1:] @ visual.proj
    return out[0].reshape(grid[0], grid[1], -1)


class Methods:
    """Captures the last block's input with the CLIP-DINOiser reference's hooks."""

    def __init__(self, model: CLIP, head, labels: torch.Tensor):
        self.model = model
        self.ref = MF.ClipDinoiserReference(model, head, labels)
        self.labels = labels

    @torch.no_grad()
    def window(self, img: torch.Tensor) -> dict[str, torch.Tensor]:
        """img [1, 3, h, w] in [0, 1] -> per mode patch probabilities [L, gh, gw] (+ dense)."""
        r = self.ref.forward(img, MF.BACKGROUND)  # dinoiser + maskclip, fills the hooks
        x = self.ref.hook_features["v"]
        gh, gw = r["dense"].shape[-2:]
        # the positional embedding swap happens inside extract_feat; x already includes it
        out = {"maskclip": r["probs_maskclip"][0], "dinoiser": r["probs_dinoiser"][0]}
        dense = {}
        for m in MODES:
            f = last_block(self.model, x, m, (gh, gw))
            dense[m] = f
            out[m] = self.ref.cls_seg(f.permute(2, 0, 1)[None])[0]
        return {"probs": out, "dense": dense}


# ---------------------------------------------------------------------------------------------
# PAMR
# ---------------------------------------------------------------------------------------------

def shifted(x: torch.Tensor, d: int, centre: bool) -> torch.Tensor:
    """x [B, K, H, W] -> [B, K, 8 or 9, H, W]: values at the 3×3 offsets ×d (replicate padding),
    in the kernel order of pamr.py (row-major, the centre skipped unless `centre`)."""
    _, _, h, w = x.shape
    p = F.pad(x, [d] * 4, mode="replicate")
    out = []
    for ky in range(3):
        for kx in range(3):
            if ky == 1 and kx == 1 and not centre:
                continue
            out.append(p[..., ky * d:ky * d + h, kx * d:kx * d + w])
    return torch.stack(out, 2)


@torch.no_grad()
def pamr(image: torch.Tensor, mask: torch.Tensor, iters: int = PAMR_ITERS,
         dilations=PAMR_DILATIONS) -> torch.Tensor:
    """image [B, K, H, W], mask [B, C, H, W] (same size) -> refined mask."""
    mask = F.interpolate(mask, size=image.shape[-2:], mode="bilinear", align_corners=True)
    std = torch.cat([shifted(image, d, True) for d in dilations], 2).std(2, keepdim=True)
    diff = torch.cat([(image.unsqueeze(2) - shifted(image, d, False)).abs() for d in dilations], 2)
    aff = (-diff / (1e-8 + 0.1 * std)).mean(1, keepdim=True)
    aff = F.softmax(aff, 2)
    for _ in range(iters):
        m = torch.cat([shifted(mask, d, False) for d in dilations], 2)
        mask = (m * aff).sum(2)
    return mask


# ---------------------------------------------------------------------------------------------
# Driver
# ---------------------------------------------------------------------------------------------

def top2_gap(probs: torch.Tensor) -> float:
    top = probs.double().topk(2, dim=0).values
    return float((top[0] - top[1]).min())


def load_fixture(folder: Path):
    sd = load_file(str(folder / "open_clip_model.safetensors"))
    model = CLIP(embed_dim=MF.EMBED_DIM, vision_cfg=dict(MF.VISION_CFG), text_cfg=dict(MF.TEXT_CFG)).eval()
    model.load_state_dict(sd)
    head = MF.DinoiserHead(MF.VISION_CFG["width"], MF.PROJ_DIM).eval()
    ck = torch.load(folder / "last.pt", map_location="cpu", weights_only=True)
    head.load_state_dict(ck["model_state_dict"])
    exp = load_file(str(folder / "expected.safetensors"))
    return model, head, exp


@torch.no_grad()
def compute(folder: Path) -> tuple[dict[str, torch.Tensor], dict]:
    torch.set_grad_enabled(False)
    model, head, exp = load_fixture(folder)
    labels = MF.label_embeddings(model, exp["labels.tokens"])
    assert torch.allclose(labels, exp["labels"], atol=1e-6)
    labels = exp["labels"]
    meth = Methods(model, head, labels)
    out: dict[str, torch.Tensor] = {}
    report = {"min top-2 gap": {}}
    gaps = report["min top-2 gap"]
    for key in ("a", "b"):
        img = exp[f"{key}.image"].float()
        h, w = img.shape[1:]
        r = meth.window(img[None])
        assert torch.allclose(r["probs"]["dinoiser"], exp[f"{key}.probs_dinoiser"], atol=1e-6)
        for m in ALL_MODES:
            full = MF.upsample_full(r["probs"][m][None], h, w)
            if m in MODES:
                out[f"{key}.{m}.dense"] = r["dense"][m]
                out[f"{key}.{m}.labelmap"] = full[0].argmax(0).to(torch.uint8)
                if key == "a":
                    out[f"{key}.{m}.probs_full"] = full[0]
                gaps[f"{key}.{m}"] = top2_gap(full[0])
            ref = pamr(img[None], full)[0]
            # PAMR's affinities do not depend on a per-channel affine change of the image:
            norm = pamr(MF.OPENAI_NORMALIZE(img)[None], full)[0]
            assert (ref - norm).abs().max() < 1e-5, f"{key}.{m}: PAMR on the normalised image differs"
            out[f"{key}.{m}.pamr_labelmap"] = ref.argmax(0).to(torch.uint8)
            gaps[f"{key}.{m}.pamr"] = top2_gap(ref)
            if key == "a":
                out[f"{key}.{m}.pamr"] = ref
    # image c: paper-style protocol at fixture scale (short side 64, windows 64 / 32)
    img = exp["c.image"].float()
    size = MF.short_side_size(img.shape[1], img.shape[2], MF.SLIDE_SHORT)
    resized = F.interpolate(img[None], size=size, mode="bilinear", align_corners=False, antialias=False)
    hi, wi = size
    windows = MF.slide_windows(hi, wi, MF.SLIDE_CROP, MF.SLIDE_STRIDE)
    n = labels.shape[0]
    preds = {m: resized.new_zeros((1, n, hi, wi)) for m in ALL_MODES}
    count = resized.new_zeros((1, 1, hi, wi))
    for (y1, y2, x1, x2) in windows:
        r = meth.window(resized[:, :, y1:y2, x1:x2])
        for m in ALL_MODES:
            up = MF.upsample_full(r["probs"][m][None], y2 - y1, x2 - x1)
            preds[m] += F.pad(up, (x1, wi - x2, y1, hi - y2))
        count[:, :, y1:y2, x1:x2] += 1
    for m in ALL_MODES:
        slide = preds[m] / count
        probs = F.interpolate(slide, size=tuple(img.shape[1:]), mode="bilinear", align_corners=False)[0]
        if m == "dinoiser":
            assert (probs - exp["c.probs"]).abs().max() < 1e-6
        else:
            out[f"c.{m}.labelmap"] = probs.argmax(0).to(torch.uint8)
            gaps[f"c.{m}"] = top2_gap(probs)
        refined = pamr(resized, slide)
        probs = F.interpolate(refined, size=tuple(img.shape[1:]), mode="bilinear", align_corners=False)[0]
        out[f"c.{m}.pamr_labelmap"] = probs.argmax(0).to(torch.uint8)
        gaps[f"c.{m}.pamr"] = top2_gap(probs)
        if m == "naclip":
            out[f"c.{m}.pamr"] = probs
    return {k: v.contiguous() for k, v in out.items()}, report


def generate(out_dir: Path) -> None:
    out, report = compute(out_dir)
    save_file(out, str(out_dir / "methods.safetensors"),
              metadata={"generator": "tests/reference/methods.py (PAMR 10 iterations, dilations 8, 16)"})
    small = {k: f"{v:.2e}" for k, v in report["min top-2 gap"].items()}
    print(f"{out_dir.name}/methods.safetensors: {len(out)} tensors; min top-2 probability gaps {small}")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    fixtures = Path(__file__).resolve().parent.parent / "fixtures"
    ap.add_argument("folders", nargs="*", type=Path,
                    default=[fixtures / "tiny", fixtures / "tiny-realistic"])
    ap.add_argument("--check", action="store_true", help="recompute and compare with the files on disk")
    args = ap.parse_args()
    ok = True
    for folder in args.folders:
        if not args.check:
            generate(folder)
            continue
        fresh, _ = compute(folder)
        disk = load_file(str(folder / "methods.safetensors"))
        same = set(fresh) == set(disk) and all(torch.equal(fresh[k], disk[k]) for k in fresh)
        print(f"{folder.name}/methods.safetensors: {'identical' if same else 'DIFFERENT'}")
        ok &= same
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
