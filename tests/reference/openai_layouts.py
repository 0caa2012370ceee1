#!/usr/bin/env python3
"""Parity fixtures for OpenAI-CLIP weights (QuickGELU) in both file layouts, in tests/fixtures/tiny-openai/.

OpenAI's ViT-B/16 comes in two layouts: open_clip's (`ViT-B-16-quickgelu`, the open_clip state dict
with `quick_gelu: true` in `open_clip_config.json`) and transformers' (`openai/clip-vit-base-patch16`:
`model.safetensors` / `pytorch_model.bin` with `config.json`, `hidden_act: quick_gelu`). This writes
one tiny random QuickGELU model (the tiny shapes of make_fixtures.py) in both layouts, each file
written by its upstream library, and the outputs of each upstream library on it:

  open_clip/open_clip_config.json, open_clip/open_clip_model.safetensors
      open_clip 3.3.0 `CLIP(..., quick_gelu=True)`, written as `push_to_hf_hub.save_for_hf` does;
  transformers/config.json, transformers/model.safetensors
      transformers `CLIPModel(CLIPConfig(hidden_act="quick_gelu"))` and its `save_pretrained`;
  transformers/pytorch_model.bin
      the same state dict with `torch.save`, plus the int64 `embeddings.position_ids` buffers that
      transformers 4.x checkpoints (the hub's `openai/clip-vit-base-patch16` .bin) still hold;
  expected.safetensors
      `text.*`, `img224.*`, `a.*`, `b.*` from open_clip (`encode_text`, `encode_image`, and the
      MaskCLIP dense / block L-3 `ln_2` features through make_fixtures' CLIP-DINOiser reference);
      `hf.text.embeddings`, `hf.img224.pooled`, `hf.{a,b}.{dense,inter}` from transformers
      (`get_text_features`, `get_image_features`, and the same MaskCLIP value path built from the
      `CLIPEncoderLayer` modules, the positional embedding resized by `interpolate_pos_encoding`).

Cross-checks (the run fails otherwise): the transformers outputs equal open_clip's to 1e-5 (so the
key mapping written here is right); QuickGELU changes the outputs (GELU on the same weights differs
by far more than the parity tolerance); the written files read back with the upstream loaders.

    python tests/reference/make_fixtures.py --openai [--check]
    python tests/reference/openai_layouts.py [--out DIR] [--check]
"""

from __future__ import annotations

import argparse
import copy
import json
import sys
import tempfile
from pathlib import Path

import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file

import open_clip
import transformers
from open_clip.model import CLIP
from open_clip.push_to_hf_hub import save_config_for_hf
from transformers import CLIPConfig, CLIPModel

import make_fixtures as M
import methods

OPENAI_SEED = 20240102
LABEL_SEED0 = 3000
MODEL_CFG = {**M.MODEL_CFG, "quick_gelu": True}  # as open_clip's ViT-B-16-quickgelu.json
TOL_CROSS = 1e-5


def build_openai_clip(seed: int, quick_gelu: bool = True) -> CLIP:
    """make_fixtures' random tiny CLIP, rebuilt with QuickGELU (QuickGELU has no parameters, so the
    state dict carries over unchanged)."""
    weights = M.build_clip(seed).state_dict()
    model = CLIP(embed_dim=M.EMBED_DIM, vision_cfg=dict(M.VISION_CFG), text_cfg=dict(M.TEXT_CFG),
                 quick_gelu=quick_gelu).eval()
    model.load_state_dict(weights)
    return model


def hf_config() -> CLIPConfig:
    v, t = M.VISION_CFG, M.TEXT_CFG
    return CLIPConfig(
        projection_dim=M.EMBED_DIM,
        text_config=dict(vocab_size=t["vocab_size"], hidden_size=t["width"], intermediate_size=4 * t["width"],
                         num_hidden_layers=t["layers"], num_attention_heads=t["heads"],
                         max_position_embeddings=t["context_length"], hidden_act="quick_gelu",
                         # 2: pool at the largest id (EOT), as OpenAI's configs do
                         eos_token_id=2, bos_token_id=M.SOT),
        vision_config=dict(hidden_size=v["width"], intermediate_size=4 * v["width"],
                           num_hidden_layers=v["layers"], num_attention_heads=v["width"] // v["head_width"],
                           image_size=v["image_size"], patch_size=v["patch_size"], hidden_act="quick_gelu"),
    )


def open_clip_to_hf(sd: dict) -> dict:
    """open_clip state dict -> CLIPModel state dict (fused in_proj split into q/k/v; projections
    transposed into nn.Linear weights). Proven by the forward cross-check, not by inspection."""
    out = {
        "vision_model.embeddings.patch_embedding.weight": sd["visual.conv1.weight"],
        "vision_model.embeddings.class_embedding": sd["visual.class_embedding"],
        "vision_model.embeddings.position_embedding.weight": sd["visual.positional_embedding"],
        "vision_model.pre_layrnorm.weight": sd["visual.ln_pre.weight"],
        "vision_model.pre_layrnorm.bias": sd["visual.ln_pre.bias"],
        "vision_model.post_layernorm.weight": sd["visual.ln_post.weight"],
        "vision_model.post_layernorm.bias": sd["visual.ln_post.bias"],
        "visual_projection.weight": sd["visual.proj"].t(),
        "text_model.embeddings.token_embedding.weight": sd["token_embedding.weight"],
        "text_model.embeddings.position_embedding.weight": sd["positional_embedding"],
        "text_model.final_layer_norm.weight": sd["ln_final.weight"],
        "text_model.final_layer_norm.bias": sd["ln_final.bias"],
        "text_projection.weight": sd["text_projection"].t(),
        "logit_scale": sd["logit_scale"],
    }
    for ours, hf, layers in (("visual.transformer.resblocks", "vision_model.encoder.layers", M.VISION_CFG["layers"]),
                             ("transformer.resblocks", "text_model.encoder.layers", M.TEXT_CFG["layers"])):
        for i in range(layers):
            o, h = f"{ours}.{i}", f"{hf}.{i}"
            for a, b in (("ln_1", "layer_norm1"), ("ln_2", "layer_norm2"), ("attn.out_proj", "self_attn.out_proj"),
                         ("mlp.c_fc", "mlp.fc1"), ("mlp.c_proj", "mlp.fc2")):
                for leaf in ("weight", "bias"):
                    out[f"{h}.{b}.{leaf}"] = sd[f"{o}.{a}.{leaf}"]
            for leaf, src in (("weight", "in_proj_weight"), ("bias", "in_proj_bias")):
                q, k, v = sd[f"{o}.attn.{src}"].chunk(3, dim=0)
                out[f"{h}.self_attn.q_proj.{leaf}"] = q
                out[f"{h}.self_attn.k_proj.{leaf}"] = k
                out[f"{h}.self_attn.v_proj.{leaf}"] = v
    return {k: v.clone().contiguous() for k, v in out.items()}


def build_hf(sd: dict) -> CLIPModel:
    model = CLIPModel(hf_config()).eval()
    missing, unexpected = model.load_state_dict(open_clip_to_hf(sd), strict=False)
    # position_ids are non-persistent buffers in transformers 5
    assert not unexpected and all("position_ids" in k for k in missing), (missing, unexpected)
    return model


def as_tensor(x) -> torch.Tensor:
    """get_*_features return a tensor (transformers 4) or an output object (transformers 5)."""
    if isinstance(x, torch.Tensor):
        return x
    return x.pooler_output


@torch.no_grad()
def hf_dense(model: CLIPModel, image: torch.Tensor) -> dict[str, torch.Tensor]:
    """MaskCLIP dense features [h, w, E] (`dense`) and block L-3 `layer_norm2` output [h, w, C]
    (`inter`) from transformers' own modules: the last layer's input (pre-hook; `last_in`, [1, T, C]),
    then its value path only (v_proj -> out_proj, residual, MLP), post_layernorm on every token,
    visual_projection."""
    x = M.OPENAI_NORMALIZE(M.make_input_divisible(image[None]))
    h, w = x.shape[-2] // M.PATCH, x.shape[-1] // M.PATCH
    vm = model.vision_model
    layers = vm.encoder.layers
    seen: dict[str, torch.Tensor] = {}
    def last_in(_m, args, kwargs):
        seen["last_in"] = args[0] if args else kwargs["hidden_states"]

    hooks = [layers[-1].register_forward_pre_hook(last_in, with_kwargs=True),
             layers[M.FEATS_IDX].layer_norm2.register_forward_hook(lambda m, i, o: seen.__setitem__("inter", o))]
    try:
        vm(pixel_values=x, interpolate_pos_encoding=True)
    finally:
        for hk in hooks:
            hk.remove()
    last = layers[-1]
    t = seen["last_in"]
    v = last.self_attn.out_proj(last.self_attn.v_proj(last.layer_norm1(t))) + t
    v = v + last.mlp(last.layer_norm2(v))
    v = vm.post_layernorm(v)
    dense = model.visual_projection(v[0, 1:]).reshape(h, w, -1)
    inter = seen["inter"][0, 1:].reshape(h, w, -1)
    return {"dense": dense, "inter": inter, "last_in": t}


def hf_last_block(model: CLIPModel) -> methods.LastBlock:
    """The last vision layer of transformers' `CLIPModel` for `methods.last_block`: q, k, v from
    its own `q_proj` / `k_proj` / `v_proj` (the unscaled projections, as `in_proj` gives them)."""
    vm = model.vision_model
    layer = vm.encoder.layers[-1]
    sa = layer.self_attn
    return methods.LastBlock(
        ln_1=layer.layer_norm1, qkv=lambda y: (sa.q_proj(y), sa.k_proj(y), sa.v_proj(y)),
        heads=model.config.vision_config.num_attention_heads, out_proj=sa.out_proj,
        ln_2=layer.layer_norm2, mlp=layer.mlp,
        post=lambda z: model.visual_projection(vm.post_layernorm(z)[:, 1:]))


def choose_labels(model: CLIP, exp: dict[str, torch.Tensor]) -> tuple[int, dict[str, torch.Tensor]]:
    """The first label seed (4 random token rows, as make_fixtures.py draws them) whose every
    label map in methods.py (each mode, with and without PAMR) keeps a top-1 minus top-2
    probability gap above make_fixtures' MARGIN_ARGMAX, so that the label maps are decided far
    beyond float rounding."""
    for seed in range(LABEL_SEED0, LABEL_SEED0 + 100):
        gen = torch.Generator().manual_seed(seed)
        tokens = M.random_tokens(gen, torch.randint(4, 17, (4,), generator=gen).tolist())
        labels = {"labels.tokens": tokens, "labels": M.label_embeddings(model, tokens)}
        _, report = methods.compute_from(copy.deepcopy(model), None, {**exp, **labels})
        gap = min(report["min top-2 gap"].values())
        if gap > M.MARGIN_ARGMAX:
            print(f"label seed {seed}: smallest top-2 gap {gap:.2e}")
            return seed, labels
        print(f"label seed {seed} rejected: a label map's top-2 gap is {gap:.2e}")
    raise SystemExit("no label seed kept the label maps clear of ties")


def generate(out_dir: Path) -> None:
    torch.set_grad_enabled(False)
    gen = torch.Generator().manual_seed(M.IMAGE_SEED)
    text_tokens = M.random_tokens(gen, [2, 9, 23, 41, 64, 77])
    images = {
        "img224": M.smooth_image(gen, 224, 224, (9, 9), levels=256),
        "a": M.smooth_image(gen, 45, 61, (4, 5)),
        "b": M.smooth_image(gen, 96, 64, (6, 4)),
        "c": M.smooth_image(gen, 90, 130, (5, 7)),  # the windowed image of make_fixtures (same draws)
    }
    model = build_openai_clip(OPENAI_SEED)
    sd = model.state_dict()
    hf = build_hf(sd)

    exp: dict[str, torch.Tensor] = {"text.tokens": text_tokens, "img224.image": images["img224"].half()}
    assert torch.equal(exp["img224.image"].float(), images["img224"])
    exp["text.embeddings"] = model.encode_text(text_tokens)
    exp["img224.pooled"] = model.encode_image(M.OPENAI_NORMALIZE(images["img224"])[None])[0]
    # make_fixtures' CLIP-DINOiser reference (hooks on the real open_clip model) for the dense path;
    # the head and labels it needs are irrelevant here, only `dense` and `inter` are kept.
    labels = M.label_embeddings(model, M.random_tokens(torch.Generator().manual_seed(1), [5, 6]))
    ref = M.ClipDinoiserReference(copy.deepcopy(model), M.build_head(M.TRIAL_SEED0), labels)
    for key in ("a", "b"):
        r = ref.forward(images[key][None], None)
        exp[f"{key}.image"] = images[key]
        exp[f"{key}.dense"] = r["dense"][0].permute(1, 2, 0)
        exp[f"{key}.inter"] = r["inter"][0].permute(1, 2, 0)
    exp["c.image"] = images["c"]
    # the labels the methods' references (methods.py, no head) classify with
    label_seed, chosen = choose_labels(model, exp)
    exp.update(chosen)

    exp["hf.text.embeddings"] = as_tensor(hf.get_text_features(input_ids=text_tokens))
    px224 = M.OPENAI_NORMALIZE(images["img224"])[None]
    exp["hf.img224.pooled"] = as_tensor(hf.get_image_features(pixel_values=px224))[0]
    hf_parts = hf_last_block(hf)
    for key in ("a", "b"):
        d = hf_dense(hf, images[key])
        exp[f"hf.{key}.dense"], exp[f"hf.{key}.inter"] = d["dense"], d["inter"]
        # ClearCLIP / NACLIP / SCLIP on transformers' modules (methods.py's formulas)
        for m in methods.MODES:
            exp[f"hf.{key}.{m}.dense"] = methods.last_block(hf_parts, d["last_in"], m, d["dense"].shape[:2])
    exp = {k: v.contiguous() for k, v in exp.items()}

    # --- cross-checks ---------------------------------------------------------------------------
    rep: dict[str, float] = {}
    for name in ("text.embeddings", "img224.pooled", "a.dense", "a.inter", "b.dense", "b.inter"):
        rep[f"{name} transformers vs open_clip"] = M.max_abs(exp[f"hf.{name}"], exp[name])
        assert rep[f"{name} transformers vs open_clip"] < TOL_CROSS, (name, rep)
    gelu = build_openai_clip(OPENAI_SEED, quick_gelu=False)
    rep["text.embeddings QuickGELU vs GELU"] = M.max_abs(gelu.encode_text(text_tokens), exp["text.embeddings"])
    rep["img224.pooled QuickGELU vs GELU"] = M.max_abs(gelu.encode_image(px224)[0], exp["img224.pooled"])
    gref = M.ClipDinoiserReference(gelu, M.build_head(M.TRIAL_SEED0), labels)
    rep["a.dense QuickGELU vs GELU"] = M.max_abs(gref.forward(images["a"][None], None)["dense"][0].permute(1, 2, 0),
                                                 exp["a.dense"])
    for k in ("text.embeddings", "img224.pooled", "a.dense"):
        assert rep[f"{k} QuickGELU vs GELU"] > 100 * 1e-4, (k, rep)

    # --- write, each layout with its upstream writer --------------------------------------------
    oc_dir, hf_dir = out_dir / "open_clip", out_dir / "transformers"
    oc_dir.mkdir(parents=True, exist_ok=True)
    hf_dir.mkdir(parents=True, exist_ok=True)
    model.visual.image_mean = M.MEAN
    model.visual.image_std = M.STD
    save_config_for_hf(model, oc_dir / "open_clip_config.json", model_config=MODEL_CFG)
    save_file(sd, str(oc_dir / "open_clip_model.safetensors"))
    hf.save_pretrained(hf_dir)
    bin_sd = dict(hf.state_dict())
    bin_sd["text_model.embeddings.position_ids"] = torch.arange(M.TEXT_CFG["context_length"])[None]
    grid = M.VISION_CFG["image_size"] // M.PATCH
    bin_sd["vision_model.embeddings.position_ids"] = torch.arange(grid * grid + 1)[None]
    torch.save(bin_sd, hf_dir / "pytorch_model.bin")
    save_file(exp, str(out_dir / "expected.safetensors"),
              metadata={"generator": f"tests/reference/openai_layouts.py (label seed {label_seed})"})
    verify_written(out_dir, exp)
    # the methods' references on the open_clip layout (read back from disk), and the variants'
    # features of transformers' modules against them
    methods.generate(out_dir)
    meth = load_file(str(out_dir / "methods.safetensors"))
    for key in ("a", "b"):
        for m in methods.MODES:
            name = f"{key}.{m}.dense"
            rep[f"{name} transformers vs open_clip"] = M.max_abs(exp[f"hf.{name}"], meth[name])
            assert rep[f"{name} transformers vs open_clip"] < TOL_CROSS, (name, rep)
    print("measured:", json.dumps(rep))


def verify_written(out_dir: Path, exp: dict) -> None:
    """Read every file back with its upstream loader and recompute the embeddings."""
    oc = open_clip.create_model("local-dir:" + str(out_dir / "open_clip")).eval()
    assert isinstance(oc.visual.transformer.resblocks[0].mlp.gelu, open_clip.transformer.QuickGELU)
    assert torch.equal(oc.encode_text(exp["text.tokens"]), exp["text.embeddings"])
    hf = CLIPModel.from_pretrained(out_dir / "transformers").eval()
    assert hf.config.vision_config.hidden_act == "quick_gelu" == hf.config.text_config.hidden_act
    # from_pretrained may pick another attention kernel (sdpa) than the model built in memory:
    # f32 rounding differences only.
    d_text = M.max_abs(as_tensor(hf.get_text_features(input_ids=exp["text.tokens"])), exp["hf.text.embeddings"])
    px = M.OPENAI_NORMALIZE(exp["img224.image"].float())[None]
    d_img = M.max_abs(as_tensor(hf.get_image_features(pixel_values=px))[0], exp["hf.img224.pooled"])
    assert max(d_text, d_img) < 1e-6, (d_text, d_img)
    bin_sd = torch.load(out_dir / "transformers" / "pytorch_model.bin", map_location="cpu", weights_only=True)
    st = load_file(str(out_dir / "transformers" / "model.safetensors"))
    assert set(bin_sd) == set(st) | {"text_model.embeddings.position_ids", "vision_model.embeddings.position_ids"}
    for k, v in st.items():
        assert torch.equal(bin_sd[k], v), k
    cfg = json.loads((out_dir / "open_clip" / "open_clip_config.json").read_text())
    assert cfg["model_cfg"] == MODEL_CFG
    print("written files verified (open_clip local-dir: factory, CLIPModel.from_pretrained, .bin == safetensors)")


FILES = ("open_clip/open_clip_config.json", "open_clip/open_clip_model.safetensors", "transformers/config.json",
         "transformers/model.safetensors", "transformers/pytorch_model.bin", "expected.safetensors",
         "methods.safetensors")


def compare_dirs(fresh: Path, committed: Path) -> bool:
    ok = True
    for name in FILES:
        a, b = fresh / name, committed / name
        if not b.is_file():
            print(f"MISSING {b}")
            ok = False
            continue
        if name.endswith(".json"):
            ja, jb = json.loads(a.read_text()), json.loads(b.read_text())
            ja.pop("transformers_version", None)
            jb.pop("transformers_version", None)
            same = ja == jb
        else:
            load = (lambda p: load_file(str(p))) if name.endswith(".safetensors") else \
                (lambda p: torch.load(p, map_location="cpu", weights_only=True))
            ta, tb = load(a), load(b)
            same = set(ta) == set(tb) and all(ta[k].dtype == tb[k].dtype and torch.equal(ta[k], tb[k]) for k in ta)
        print(f"{'same' if same else 'DIFFERENT'} {name}{' (byte-identical)' if a.read_bytes() == b.read_bytes() else ''}")
        ok &= same
    return ok


def main(out: Path | None = None, check: bool = False) -> int:
    out = out or Path(__file__).resolve().parent.parent / "fixtures" / "tiny-openai"
    print(f"torch {torch.__version__}, open_clip {open_clip.__version__}, transformers {transformers.__version__}")
    if not check:
        generate(out)
        return 0
    with tempfile.TemporaryDirectory() as tmp:
        generate(Path(tmp))
        return 0 if compare_dirs(Path(tmp), out) else 1


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", type=Path, default=None, help="output directory (default: tests/fixtures/tiny-openai)")
    ap.add_argument("--check", action="store_true", help="recompute and compare with the existing files")
    args = ap.parse_args()
    sys.exit(main(args.out, args.check))
