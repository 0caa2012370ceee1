"""Realistic-statistics random weights for an open_clip CLIP model and the CLIP-DINOiser head.

Gaussian random weights flatter quantization: every block of 32 values looks like every other one.
Trained CLIP ViTs differ in three ways that matter for low-bit storage and integer kernels, and this
module plants all three into a seeded random model, deterministically, then measures them:

1. **Heavy-tailed weights.** Every matrix (attention, MLP, patch embedding, projections, token
   embedding, the DINOiser head) is drawn from a Student-t distribution with `DOF` degrees of
   freedom (excess kurtosis 6 for 5 d.o.f.), scaled to `c / sqrt(fan_in)`.
2. **LayerNorm outlier channels.** In every LayerNorm of a tower's blocks (and `ln_pre`), the gains
   of the same few residual channels are multiplied by 5-10.
3. **Massive activations** (Sun et al., "Massive Activations in Large Language Models",
   arXiv 2402.17762; the high-norm tokens of OpenCLIP ViT-B/16 in Darcet et al., "Vision Transformers
   Need Registers", arXiv 2309.16588). In one early block of each tower, one MLP neuron is given a
   trigger direction and a threshold so that it fires on about `FIRE_SHARE` of the tokens (of
   calibration images or prompts), and writes into two residual channels with weights large enough
   that those channels reach >= `MASSIVE_RATIO` x the median |activation| of the residual stream
   on the tokens where it fires. The residual connection carries them through every later block.
   In the text tower the neurons fire on every prompt's start token and on no other token: that
   is where text transformers carry their massive activations (the attention sink), and never on
   the pooled EOT token, whose embedding they would wipe out. Under the causal mask the start
   token's state is the same in every prompt, which makes this exact; it is 1/length of the tokens
   (≈ 10 % of short prompts).

`plant_*` record what they planted in a `TowerPlan`; `tower_stats` re-measures it on any inputs
and `check` asserts it. The photos of www/samples are split once, here: the calibration photos
set the planted thresholds (and the calibrated bundle recipes), the evaluation photos are held out
for every fidelity figure.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

DOF = 5  # Student-t degrees of freedom of every weight matrix
# c in std = c / sqrt(fan_in), per matrix kind (the tiny Gaussian fixture's scales, width-free)
GAIN = {"in_proj": 1.2, "out_proj": 0.8, "c_fc": 0.8, "c_proj": 0.96, "conv1": 1.39, "proj": 1.2,
        "obj_proj": 1.2}
N_GAIN_OUTLIERS = 3  # LayerNorm outlier channels per tower
GAIN_OUTLIER_RANGE = (5.0, 10.0)
FIRE_SHARE = 0.03  # share of tokens on which the planted neurons fire
# pre-activation = SHARPNESS * (s - threshold) / std(s); the second neuron's threshold is RAMP
# std(s) above the first, so their sum saturates at the plateau SHARPNESS * RAMP within 1 % of a
# standard deviation: a token has the massive activation or it has not (real high-norm tokens are
# a separate population, not a continuum), so that a tiny change of the weights cannot turn one on
# or off, except for the ~0.1 % of tokens that sit within that sliver of the threshold.
SHARPNESS = 300.0
RAMP = 0.01
PLATEAU_RATIO = 500.0  # the first massive channel's plateau vs the median |residual activation|
MASSIVE_RATIO = 100.0  # a token is "massive" when both channels reach this x the median

CALIBRATION_PHOTOS = ("astronaut", "coffee", "rocket")
EVALUATION_PHOTOS = ("chelsea", "china", "flower")

MEAN = (0.48145466, 0.4578275, 0.40821073)
STD = (0.26862954, 0.26130258, 0.27577711)


def student_t(gen: torch.Generator, shape, std: float, dof: int = DOF, dtype=torch.float32) -> torch.Tensor:
    """Student-t samples with standard deviation `std`: z / sqrt(chi2_dof / dof), the chi-square
    drawn as a sum of `dof` squared normals (so only the seeded generator is used)."""
    z = torch.randn(shape, generator=gen, dtype=torch.float64)
    chi2 = torch.zeros(shape, dtype=torch.float64)
    for _ in range(dof):
        chi2 += torch.randn(shape, generator=gen, dtype=torch.float64) ** 2
    t = z / torch.sqrt(chi2 / dof)
    return (t * (std / math.sqrt(dof / (dof - 2)))).to(dtype)


def excess_kurtosis(x: torch.Tensor) -> float:
    x = x.double().flatten()
    x = x - x.mean()
    return float((x ** 4).mean() / (x ** 2).mean() ** 2 - 3.0)


# ---------------------------------------------------------------------------------------------
# Inputs: photos (PIL decode, float resize as the pipeline does) and prompts
# ---------------------------------------------------------------------------------------------

def load_photo(path: Path) -> torch.Tensor:
    """[3, H, W] float32 in [0, 1], exactly the 8-bit pixels PIL decodes."""
    arr = np.asarray(Image.open(path).convert("RGB"), dtype=np.uint8)
    return torch.from_numpy(arr.copy()).permute(2, 0, 1).float() / 255.0


def resize_short(img: torch.Tensor, short: int) -> torch.Tensor:
    """Short side to `short` (mmcv rounding), PyTorch bilinear on the float image (as the Rust
    pipeline and the reference's sliding-window protocol)."""
    h, w = img.shape[-2:]
    s = short / min(h, w)
    size = (int(h * s + 0.5), int(w * s + 0.5))
    return F.interpolate(img[None], size=size, mode="bilinear", align_corners=False, antialias=False)[0]


def pixels(img: torch.Tensor, patch: int) -> torch.Tensor:
    """Zero-pad to a multiple of the patch, then normalise (CLIP-DINOiser's order). [1, 3, H', W']."""
    h, w = img.shape[-2:]
    x = F.pad(img[None], (0, (patch - w % patch) % patch, 0, (patch - h % patch) % patch))
    mean = torch.tensor(MEAN, dtype=x.dtype).reshape(1, 3, 1, 1)
    std = torch.tensor(STD, dtype=x.dtype).reshape(1, 3, 1, 1)
    return (x - mean) / std


# ---------------------------------------------------------------------------------------------
# Traces: every block's ln_2 output and input, on real tokens only
# ---------------------------------------------------------------------------------------------

def _resized_pos(pos: torch.Tensor, h: int, w: int) -> torch.Tensor:
    g = int(round(math.sqrt(pos.shape[0] - 1)))
    grid = pos[1:].reshape(1, g, g, -1).permute(0, 3, 1, 2)
    grid = F.interpolate(grid, size=(h, w), mode="bicubic", align_corners=False)
    return torch.cat([pos[:1], grid.flatten(2).transpose(1, 2)[0]], 0)


@torch.no_grad()
def trace_vision(model, images: list[torch.Tensor]) -> dict:
    """Runs the image tower on each image ([3, H, W] in [0,1], any size) and returns, per block,
    the concatenated `ln_2` outputs and block inputs over all tokens (CLS included), plus the
    number of tokens per image. Uses open_clip's own modules with forward hooks."""
    visual = model.visual
    patch = visual.conv1.kernel_size[0]
    blocks = visual.transformer.resblocks
    rec = {"ln2": [[] for _ in blocks], "inp": [[] for _ in blocks], "tokens": []}
    hooks = []
    for i, b in enumerate(blocks):
        hooks.append(b.ln_2.register_forward_hook(lambda m, a, o, i=i: rec["ln2"][i].append(o[0].detach())))
        hooks.append(b.register_forward_pre_hook(lambda m, a, i=i: rec["inp"][i].append(a[0][0].detach())))
    saved = visual.positional_embedding.data
    dtype = saved.dtype
    try:
        for img in images:
            x = pixels(img.to(dtype), patch)
            h, w = x.shape[-2] // patch, x.shape[-1] // patch
            visual.positional_embedding.data = _resized_pos(saved, h, w)
            model.encode_image(x)
            rec["tokens"].append(1 + h * w)
    finally:
        visual.positional_embedding.data = saved
        for hk in hooks:
            hk.remove()
    return {"ln2": [torch.cat(v) for v in rec["ln2"]], "inp": [torch.cat(v) for v in rec["inp"]],
            "tokens": rec["tokens"]}


@torch.no_grad()
def trace_text(model, tokens: torch.Tensor) -> dict:
    """Like `trace_vision` for the text tower on `[N, 77]` token rows; padding after each row's EOT
    (its largest id) is dropped."""
    blocks = model.transformer.resblocks
    rec = {"ln2": [None] * len(blocks), "inp": [None] * len(blocks)}
    hooks = []
    for i, b in enumerate(blocks):
        hooks.append(b.ln_2.register_forward_hook(lambda m, a, o, i=i: rec["ln2"].__setitem__(i, o.detach())))
        hooks.append(b.register_forward_pre_hook(lambda m, a, i=i: rec["inp"].__setitem__(i, a[0].detach())))
    try:
        model.encode_text(tokens)
    finally:
        for hk in hooks:
            hk.remove()
    eot = tokens.argmax(-1)
    keep = torch.arange(tokens.shape[1])[None, :] <= eot[:, None]  # [N, 77]
    lengths = (eot + 1).tolist()
    ends = torch.tensor(lengths).cumsum(0)
    return {"ln2": [t[keep] for t in rec["ln2"]], "inp": [t[keep] for t in rec["inp"]],
            "tokens": lengths,
            "pooled": (ends - 1).tolist(),  # each prompt's EOT among the kept tokens
            "first": (ends - torch.tensor(lengths)).tolist()}  # each prompt's start token


# ---------------------------------------------------------------------------------------------
# Planting
# ---------------------------------------------------------------------------------------------

@dataclass
class TowerPlan:
    """What is planted in one tower (`prefix` = "visual.transformer" or "transformer")."""
    prefix: str
    ln_names: list[str]  # every LayerNorm of the tower (gains get the outlier channels)
    block: int  # block whose MLP holds the massive-activation neurons
    neurons: list[int] = field(default_factory=list)
    gain_dims: list[int] = field(default_factory=list)
    massive_dims: list[int] = field(default_factory=list)
    thresholds: list[float] = field(default_factory=list)
    kappa: float = 0.0
    amplitude: float = 0.0


def _blocks(model, prefix: str):
    return model.visual.transformer.resblocks if prefix.startswith("visual") else model.transformer.resblocks


def fill_weights(model, gen: torch.Generator) -> None:
    """Every parameter of an open_clip CLIP from the realistic distributions (no outliers yet)."""
    with torch.no_grad():
        for name, p in model.named_parameters():
            leaf = name.rsplit(".", 1)[-1]
            parent = name.rsplit(".", 2)[-2] if name.count(".") >= 1 else ""
            if name == "logit_scale":
                new = torch.full_like(p, math.log(100.0))
            elif parent.startswith("ln_") and leaf == "weight":
                new = 1.0 + 0.1 * torch.randn(p.shape, generator=gen)
            elif leaf in ("bias", "in_proj_bias"):
                new = 0.1 * torch.randn(p.shape, generator=gen)
            elif name in ("visual.class_embedding", "visual.positional_embedding"):
                new = 0.2 * torch.randn(p.shape, generator=gen)
            elif name == "positional_embedding":
                new = 0.1 * torch.randn(p.shape, generator=gen)
            elif name == "token_embedding.weight":
                new = student_t(gen, p.shape, 0.2)
            elif leaf == "in_proj_weight":
                new = student_t(gen, p.shape, GAIN["in_proj"] / math.sqrt(p.shape[1]))
            elif name.endswith("out_proj.weight"):
                new = student_t(gen, p.shape, GAIN["out_proj"] / math.sqrt(p.shape[1]))
            elif name.endswith("c_fc.weight"):
                new = student_t(gen, p.shape, GAIN["c_fc"] / math.sqrt(p.shape[1]))
            elif name.endswith("c_proj.weight"):
                new = student_t(gen, p.shape, GAIN["c_proj"] / math.sqrt(p.shape[1]))
            elif name == "visual.conv1.weight":
                new = student_t(gen, p.shape, GAIN["conv1"] / math.sqrt(p[0].numel()))
            elif name in ("visual.proj", "text_projection"):
                new = student_t(gen, p.shape, GAIN["proj"] / math.sqrt(p.shape[0]))
            else:
                raise RuntimeError(f"no realistic init rule for parameter {name} {tuple(p.shape)}")
            p.copy_(new)


def tower_plans(model, vision_block: int, text_block: int) -> list[TowerPlan]:
    vis = len(model.visual.transformer.resblocks)
    txt = len(model.transformer.resblocks)
    # The outlier gains sit in ln_pre and the blocks' LayerNorms, where they shape what the block
    # matrices and the integer kernel see. Not in ln_post / ln_final: those feed the embeddings,
    # and outlier channels there make every label embedding collapse onto them (measured on the
    # full-size model: VOC label embeddings 0.973 alike; real CLIP's are far more distinct).
    return [
        TowerPlan("visual.transformer",
                  ["visual.ln_pre"]
                  + [f"visual.transformer.resblocks.{i}.{n}" for i in range(vis) for n in ("ln_1", "ln_2")],
                  vision_block),
        TowerPlan("transformer",
                  [f"transformer.resblocks.{i}.{n}" for i in range(txt) for n in ("ln_1", "ln_2")],
                  text_block),
    ]


def plant_gain_outliers(model, plan: TowerPlan, width: int, gen: torch.Generator) -> None:
    dims = torch.randperm(width, generator=gen).tolist()
    plan.gain_dims = sorted(dims[:N_GAIN_OUTLIERS])
    plan.massive_dims = dims[N_GAIN_OUTLIERS:N_GAIN_OUTLIERS + 2]  # distinct from the gain outliers
    params = dict(model.named_parameters())
    lo, hi = GAIN_OUTLIER_RANGE
    with torch.no_grad():
        for ln in plan.ln_names:
            g = params[f"{ln}.weight"]
            for d in plan.gain_dims:
                f = lo + (hi - lo) * float(torch.rand(1, generator=gen))
                sign = 1.0 if float(torch.rand(1, generator=gen)) < 0.8 else -1.0
                g[d] = sign * f * abs(float(g[d]))


def plant_massive(model, plan: TowerPlan, trace, gen: torch.Generator, accept=None, attempts: int = 40) -> None:
    """Plant the massive activation of one tower in block `plan.block`'s MLP: two neurons share a
    trigger direction u of the `ln_2` output, with thresholds t1 and t2 = t1 + RAMP·std, and
    write into the two
    `plan.massive_dims` with opposite signs, so that their sum is a steep ramp that saturates at
    SHARPNESS·RAMP: the same magnitude on every firing token, as real massive activations have,
    and ≈ 0 elsewhere. Vision: u is random and t1 the `1 - FIRE_SHARE` quantile of u·ln_2 over
    the calibration tokens. Text (the trace has prompts): the start token, see below. The plateau
    is scaled to PLATEAU_RATIO x the median
    |residual activation| at the last block's input. `trace()` re-traces the tower on the
    calibration inputs; `accept(plan)` may reject a draw (then another direction is drawn)."""
    blocks = _blocks(model, plan.prefix)
    blk = blocks[plan.block]
    mlp_dim, width = blk.mlp.c_fc.weight.shape
    base = trace()
    y = base["ln2"][plan.block]  # [N, width]
    # Text: the start token. Under the causal mask it sees only itself, so its state is the same
    # in every prompt; the trigger points from the other tokens' mean to it, and the threshold
    # sits halfway between it and the highest other token.
    first = base.get("first")
    median = float(base["inp"][-1].abs().median())  # |residual| at the last block's input
    saved = [t.detach().clone() for t in (blk.mlp.c_fc.weight, blk.mlp.c_fc.bias, blk.mlp.c_proj.weight)]
    for attempt in range(attempts):
        with torch.no_grad():  # undo a rejected draw
            for t, v in zip((blk.mlp.c_fc.weight, blk.mlp.c_fc.bias, blk.mlp.c_proj.weight), saved):
                t.copy_(v)
        n1, n2 = torch.randperm(mlp_dim, generator=gen)[:2].tolist()
        u = torch.randn(width, generator=gen, dtype=y.dtype)
        u = u / u.norm()
        if first:
            rest = torch.ones(y.shape[0], dtype=torch.bool)
            rest[first] = False
            # the discriminant direction (other tokens whitened), so that the start token stands
            # apart even where the LayerNorm outlier channels spread the other tokens out
            d = y[first].mean(0) - y[rest].mean(0)
            cov = torch.cov(y[rest].T) + 1e-3 * torch.eye(width, dtype=y.dtype)
            d = torch.linalg.solve(cov, d)
            u = d + 0.02 * float(d.norm()) * u  # a little noise, so that a rejected draw differs
            s = y @ u
            sd = float(s[rest].std())
            lo, hi = float(s[rest].max()), float(s[first].min())
            if hi - lo < 4 * RAMP * sd:
                continue
            t1 = (lo + hi) / 2
        else:
            s = y @ u
            t1 = float(torch.quantile(s, 1.0 - FIRE_SHARE))
            sd = float(s.std())
        t2 = t1 + RAMP * sd
        kappa = SHARPNESS / sd
        # d0 plateau = PLATEAU_RATIO x median, d1 gets -0.6 of it
        amp = PLATEAU_RATIO * median / (SHARPNESS * RAMP)
        with torch.no_grad():
            for n, t, sign in ((n1, t1, 1.0), (n2, t2, -1.0)):
                blk.mlp.c_fc.weight[n] = (kappa * u).to(blk.mlp.c_fc.weight.dtype)
                blk.mlp.c_fc.bias[n] = -kappa * t
                col = blk.mlp.c_proj.weight[:, n]
                col.zero_()
                col[plan.massive_dims[0]] = sign * amp
                col[plan.massive_dims[1]] = -0.6 * sign * amp
        plan.neurons, plan.thresholds, plan.kappa, plan.amplitude = [n1, n2], [t1, t2], kappa, amp
        if accept is None or accept(plan):
            return
        print(f"  {plan.prefix}: draw {attempt} rejected")
    raise SystemExit(f"{plan.prefix}: no massive-activation draw was accepted")


def copy_weights(src, dst) -> None:
    with torch.no_grad():
        for (n, p), (_, q) in zip(src.named_parameters(), dst.named_parameters()):
            q.copy_(p.to(q.dtype))


# ---------------------------------------------------------------------------------------------
# Measuring
# ---------------------------------------------------------------------------------------------

def tower_stats(model, plan: TowerPlan, tr: dict) -> dict:
    """Statistics of one tower on traced inputs: firing share of the planted neuron, share of
    tokens whose two massive channels reach MASSIVE_RATIO x the median at the last block's input,
    the largest ratio, the LayerNorm gain ratios and the weights' excess kurtosis."""
    blk = _blocks(model, plan.prefix)[plan.block]
    y = tr["ln2"][plan.block].double()
    n = plan.neurons[0]
    pre = y @ blk.mlp.c_fc.weight[n].double() + float(blk.mlp.c_fc.bias[n])
    fire = pre > 0
    last = tr["inp"][-1].double()
    median = float(last.abs().median())
    d0, d1 = plan.massive_dims
    massive = (last[:, d0].abs() >= MASSIVE_RATIO * median) & (last[:, d1].abs() >= MASSIVE_RATIO * median)
    params = dict(model.named_parameters())
    gain_ratio = []
    for ln in plan.ln_names:
        g = params[f"{ln}.weight"].detach().double().abs()
        gain_ratio.append(float(g[plan.gain_dims].min() / g.median()))
    kurt = {}
    for name, p in params.items():
        for kind in ("in_proj", "out_proj", "c_fc", "c_proj"):
            if name.startswith(plan.prefix + ".") and kind in name and p.dim() == 2:
                kurt.setdefault(kind, []).append(excess_kurtosis(p.detach()))
    # per input (image or prompt): does it hold a massive token?
    per_input, start = [], 0
    for n in tr["tokens"]:
        per_input.append(int(massive[start:start + n].sum()))
        start += n
    pooled, first = tr.get("pooled"), tr.get("first")
    return {
        "tokens": int(last.shape[0]),
        "fire_share": float(fire.double().mean()),
        # text: the share of prompts whose pooled (EOT) token fires (0 by construction) and whose
        # start token fires (1 by construction)
        "pooled_fire_share": float(fire[pooled].double().mean()) if pooled else None,
        "first_fire_share": float(fire[first].double().mean()) if first else None,
        "massive_share": float(massive.double().mean()),
        "massive_tokens_per_input": per_input,
        "max_ratio": float(last[:, [d0, d1]].abs().max() / median),
        "median_abs": median,
        "min_ln_gain_outlier_ratio": min(gain_ratio),
        "weight_excess_kurtosis": {k: round(float(np.median(v)), 2) for k, v in sorted(kurt.items())},
    }


def check(stats: dict, what: str, fire=(0.01, 0.08), massive_min: float = 0.005) -> None:
    """Assert the planted statistics (the README documents these ranges)."""
    assert fire[0] <= stats["fire_share"] <= fire[1], f"{what}: fires on {stats['fire_share']:.3%} of tokens"
    assert stats["massive_share"] >= massive_min, f"{what}: massive on {stats['massive_share']:.3%} of tokens"
    assert stats["max_ratio"] >= MASSIVE_RATIO, f"{what}: max ratio {stats['max_ratio']:.0f}"
    assert not stats["pooled_fire_share"], f"{what}: pooled tokens fire ({stats['pooled_fire_share']:.2%})"
    if stats["first_fire_share"] is not None:
        assert stats["first_fire_share"] == 1.0, f"{what}: start tokens fire on {stats['first_fire_share']:.2%}"
    assert stats["min_ln_gain_outlier_ratio"] >= GAIN_OUTLIER_RANGE[0] * 0.7, \
        f"{what}: LayerNorm outlier gains only {stats['min_ln_gain_outlier_ratio']:.1f}x the median"
    for kind, k in stats["weight_excess_kurtosis"].items():
        assert k >= 2.0, f"{what}: {kind} weights have excess kurtosis {k} (not heavy-tailed)"


def head_stats(head) -> dict:
    return {n: round(excess_kurtosis(p.detach()), 2) for n, p in head.named_parameters() if p.dim() == 4}


def fill_head(head, gen: torch.Generator) -> None:
    """Heavy-tailed CLIP-DINOiser head (`obj_proj` 3x3 conv, `bkg_decoder` 1x1 conv)."""
    with torch.no_grad():
        w = head.obj_proj.weight
        head.obj_proj.weight.copy_(student_t(gen, w.shape, GAIN["obj_proj"] / math.sqrt(w[0].numel())))
        head.obj_proj.bias.copy_(0.1 * torch.randn(head.obj_proj.bias.shape, generator=gen))
        head.bkg_decoder.weight.copy_(student_t(gen, head.bkg_decoder.weight.shape, 1.0))
        head.bkg_decoder.bias.copy_(0.1 * torch.randn(head.bkg_decoder.bias.shape, generator=gen))
