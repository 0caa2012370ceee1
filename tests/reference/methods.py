#!/usr/bin/env python3
"""Reference outputs of the CLIP-only last-block methods (ClearCLIP, NACLIP, SCLIP) and of PAMR
on a fixture model, written to `<fixture>/methods.safetensors`.

Run on the committed fixtures (reads their model, head, images and labels; needs the venv of
`setup_venv.sh`):

    python tests/reference/methods.py                 # tests/fixtures/tiny, tiny-realistic, tiny-openai
    python tests/reference/methods.py --check         # recompute and compare with the files on disk

`make_fixtures.py` and `openai_layouts.py` call `generate(out_dir)` after writing a fixture, so a
regenerated fixture gets its methods file too.

On `tiny-openai/` (OpenAI-style QuickGELU weights, read from its open_clip layout) there is no
CLIP-DINOiser head (the crate refuses one on these weights): the modes are `maskclip` and the
three last-block variants, and the MaskCLIP features come from `MaskClip.forward` alone (the
same hooks, padding and value path). `openai_layouts.py` recomputes the variants' features with
transformers' own modules on its layout of the same weights and asserts they agree.

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
import json
import math
import sys
import tempfile
from pathlib import Path
from typing import Callable, NamedTuple

import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file

import make_fixtures as MF
from open_clip.model import CLIP

MODES = ("clearclip", "naclip", "sclip")
ALL_MODES = ("maskclip", "dinoiser") + MODES
NO_HEAD_MODES = ("maskclip",) + MODES  # OpenAI's weights: the CLIP-DINOiser head is refused on them
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


def mix(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, heads: int, mode: str,
        grid: tuple[int, int]) -> torch.Tensor:
    """`custom_attn`'s attention of `mode` on the projected q, k, v [1, T, C] (batch-first) ->
    A v [1, T, C], before the output projection."""
    _, t, c = q.shape
    d = c // heads
    scale = d ** -0.5
    split = lambda z: z[0].reshape(t, heads, d).transpose(0, 1)  # [heads, T, d]
    q, k, v = split(q), split(k), split(v)
    if mode == "clearclip":
        a = F.softmax(torch.bmm(q, q.transpose(1, 2)) * scale, dim=-1)
    elif mode == "naclip":
        h, w = grid
        window = gaussian_window(2 * h - 1, 2 * w - 1, NACLIP_STD).to(q.dtype)
        omega = attention_addition(h, w, window).to(q.dtype)[None]
        a = F.softmax(torch.bmm(k, k.transpose(1, 2)) * scale + omega, dim=-1)
    elif mode == "sclip":
        a = F.softmax(torch.bmm(q, q.transpose(1, 2)) * scale, dim=-1) + \
            F.softmax(torch.bmm(k, k.transpose(1, 2)) * scale, dim=-1)
    else:
        raise ValueError(mode)
    return torch.bmm(a, v).transpose(0, 1).reshape(1, t, c)


class LastBlock(NamedTuple):
    """The parts of the last vision block (and what follows it) a variant uses, whatever the
    library: `qkv(y)` -> (q, k, v) projections of `ln_1(x)`; `post(z)` -> the patch tokens of
    `ln_post(z) @ proj` [1, T - 1, E]."""
    ln_1: Callable
    qkv: Callable
    heads: int
    out_proj: Callable
    ln_2: Callable
    mlp: Callable
    post: Callable


def open_clip_last_block(model: CLIP) -> LastBlock:
    visual = model.visual
    blk = visual.transformer.resblocks[-1]
    attn = blk.attn
    return LastBlock(
        ln_1=blk.ln_1,
        qkv=lambda y: F.linear(y, attn.in_proj_weight, attn.in_proj_bias).chunk(3, dim=-1),
        heads=attn.num_heads, out_proj=attn.out_proj, ln_2=blk.ln_2, mlp=blk.mlp,
        post=lambda z: visual.ln_post(z)[:, 1:] @ visual.proj)


def last_block(parts: LastBlock, x: torch.Tensor, mode: str, grid: tuple[int, int]) -> torch.Tensor:
    """Dense features [h, w, E] of `mode` from the last block's input x [1, T, C]."""
    a = parts.out_proj(mix(*parts.qkv(parts.ln_1(x)), parts.heads, mode, grid))
    if mode in ("clearclip", "naclip"):
        out = a
    else:  # sclip: residual and FFN kept
        out = x + a
        out = out + parts.mlp(parts.ln_2(out))
    return parts.post(out)[0].reshape(grid[0], grid[1], -1)


class Methods:
    """Captures the last block's input with the CLIP-DINOiser reference's hooks. `head = None`
    (OpenAI's weights: no head is published for them) runs MaskCLIP and the last-block variants
    only."""

    def __init__(self, model: CLIP, head, labels: torch.Tensor):
        self.model = model
        self.ref = MF.ClipDinoiserReference(model, head, labels)
        self.parts = open_clip_last_block(model)
        self.labels = labels
        self.has_head = head is not None

    @torch.no_grad()
    def window(self, img: torch.Tensor) -> dict[str, torch.Tensor]:
        """img [1, 3, h, w] in [0, 1] -> per mode patch probabilities [L, gh, gw] (+ dense)."""
        if self.has_head:
            r = self.ref.forward(img, MF.BACKGROUND)  # dinoiser + maskclip, fills the hooks
            out = {"maskclip": r["probs_maskclip"][0], "dinoiser": r["probs_dinoiser"][0]}
            maskclip = r["dense"][0].permute(1, 2, 0)
        else:  # MaskClip.forward alone: the same padding, normalisation, hooks and value path
            dense = self.ref.proj(self.ref.extract_feat(MF.OPENAI_NORMALIZE(MF.make_input_divisible(img))))
            out = {"maskclip": self.ref.cls_seg(dense)[0]}
            maskclip = dense[0].permute(1, 2, 0)
        # the positional embedding swap happens inside extract_feat; x already includes it
        x = self.ref.hook_features["v"]
        gh, gw = maskclip.shape[:2]
        dense = {"maskclip": maskclip}
        for m in MODES:
            f = last_block(self.parts, x, m, (gh, gw))
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
    """The fixture's model, head and upstream outputs. `tiny/` and `tiny-realistic/` hold the
    open_clip files and `last.pt` at the top; `tiny-openai/` (OpenAI-style weights) holds them in
    `open_clip/`, with no head: `head` is None. The activation comes from the config, as in the
    crate (`quick_gelu`)."""
    weights = folder / "open_clip" if (folder / "open_clip").is_dir() else folder
    cfg = json.loads((weights / "open_clip_config.json").read_text())["model_cfg"]
    assert {k: cfg[k] for k in MF.MODEL_CFG} == MF.MODEL_CFG, cfg
    model = CLIP(embed_dim=MF.EMBED_DIM, vision_cfg=dict(MF.VISION_CFG), text_cfg=dict(MF.TEXT_CFG),
                 quick_gelu=cfg.get("quick_gelu", False)).eval()
    model.load_state_dict(load_file(str(weights / "open_clip_model.safetensors")))
    head = None
    if (folder / "last.pt").is_file():
        head = MF.DinoiserHead(MF.VISION_CFG["width"], MF.PROJ_DIM).eval()
        ck = torch.load(folder / "last.pt", map_location="cpu", weights_only=True)
        head.load_state_dict(ck["model_state_dict"])
    exp = load_file(str(folder / "expected.safetensors"))
    return model, head, exp


@torch.no_grad()
def compute(folder: Path) -> tuple[dict[str, torch.Tensor], dict]:
    return compute_from(*load_fixture(folder))


@torch.no_grad()
def compute_from(model: CLIP, head, exp: dict[str, torch.Tensor]) -> tuple[dict[str, torch.Tensor], dict]:
    """Every mode (`dinoiser` only with a head) and PAMR on images a, b (one pass) and c (windows)
    of `exp`, with its labels."""
    torch.set_grad_enabled(False)
    labels = MF.label_embeddings(model, exp["labels.tokens"])
    assert torch.allclose(labels, exp["labels"], atol=1e-6)
    labels = exp["labels"]
    meth = Methods(model, head, labels)
    all_modes = ALL_MODES if head is not None else NO_HEAD_MODES
    out: dict[str, torch.Tensor] = {}
    report = {"min top-2 gap": {}}
    gaps = report["min top-2 gap"]
    for key in ("a", "b"):
        img = exp[f"{key}.image"].float()
        h, w = img.shape[1:]
        r = meth.window(img[None])
        assert torch.allclose(r["dense"]["maskclip"], exp[f"{key}.dense"], atol=1e-6)
        if head is not None:
            assert torch.allclose(r["probs"]["dinoiser"], exp[f"{key}.probs_dinoiser"], atol=1e-6)
        for m in all_modes:
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
    preds = {m: resized.new_zeros((1, n, hi, wi)) for m in all_modes}
    count = resized.new_zeros((1, 1, hi, wi))
    for (y1, y2, x1, x2) in windows:
        r = meth.window(resized[:, :, y1:y2, x1:x2])
        for m in all_modes:
            up = MF.upsample_full(r["probs"][m][None], y2 - y1, x2 - x1)
            preds[m] += F.pad(up, (x1, wi - x2, y1, hi - y2))
        count[:, :, y1:y2, x1:x2] += 1
    for m in all_modes:
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
                    default=[fixtures / "tiny", fixtures / "tiny-realistic", fixtures / "tiny-openai"])
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
