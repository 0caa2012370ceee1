"""Export the open_clip ViT-B/16 image tower to ONNX at fixed input sizes, f32 and int8.

The peer of the browser benchmark (onnxruntime-web) runs exactly this graph: open_clip 3.3.0's
`model.visual` (patch embedding, 12 pre-LN blocks, CLS pooling, `visual.proj`), built with the
same random weights as the Rust run (`open_clip_model.safetensors` from
`clipdino random-weights`). For every size HxW the 14x14 positional embedding is resized to the
H/16 x W/16 grid with PyTorch's bicubic (align_corners=False, no antialiasing) - what CLIP-DINOiser
and the Rust crate do - so both sides compute the same function.

Outputs per size, in --out:
  vit_b16_visual_{H}x{W}_f32.onnx   the traced graph (opset 17)
  vit_b16_visual_{H}x{W}_int8.onnx  onnxruntime.quantization.quantize_dynamic (QInt8 weights,
                                    per-tensor, MatMul/Gemm only: the weights of every linear)
and a summary JSON (export.json) with file sizes and the checks below.

Checks (printed and stored): onnxruntime (CPU) f32 output vs torch on the same input, and the
int8 model's cosine similarity to f32. With --inputs, the input is the normalised tower input the
Rust side dumped (tower_{H}x{W}.f32); otherwise a seeded random tensor.

Usage (in a virtualenv created by tests/reference/setup_venv.sh, plus `pip install onnx
onnxruntime onnxscript`):
  python bench/export_onnx.py --weights DIR --out DIR --sizes 224x336,448x448 [--inputs DIR]
"""

import argparse
import json
import os
import sys
import time

import numpy as np
import torch
import torch.nn.functional as F


def parse_sizes(s):
    out = []
    for part in s.split(","):
        h, w = part.lower().split("x")
        h, w = int(h), int(w)
        if h <= 0 or w <= 0 or h % 16 or w % 16:
            raise SystemExit(f"--sizes: {part} is not HxW with multiples of 16")
        out.append((h, w))
    return out


def load_state_dict(path):
    from safetensors.torch import load_file

    return load_file(path)


def resize_pos(pos, gh, gw):
    """[1 + 14*14, C] -> [1 + gh*gw, C]: CLS row kept, grid resized bicubic (A=-0.75)."""
    cls, grid = pos[:1], pos[1:]
    g = int(round(grid.shape[0] ** 0.5))
    if (g, g) == (gh, gw):
        return pos
    grid = grid.reshape(1, g, g, -1).permute(0, 3, 1, 2)
    grid = F.interpolate(grid, size=(gh, gw), mode="bicubic", align_corners=False, antialias=False)
    grid = grid.permute(0, 2, 3, 1).reshape(gh * gw, -1)
    return torch.cat([cls, grid], 0)


def build_visual(state, h, w):
    import open_clip

    model = open_clip.create_model("ViT-B-16", pretrained=None, force_image_size=(h, w))
    sd = dict(state)
    sd["visual.positional_embedding"] = resize_pos(sd["visual.positional_embedding"], h // 16, w // 16)
    missing, unexpected = model.load_state_dict(sd, strict=False)
    vis_missing = [k for k in missing if k.startswith("visual.")]
    if vis_missing:
        raise SystemExit(f"image tower tensors missing from the weights: {vis_missing[:5]}")
    return model.visual.eval()


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--weights", required=True, help="folder with open_clip_model.safetensors")
    ap.add_argument("--out", required=True)
    ap.add_argument("--sizes", required=True, help="comma-separated HxW, multiples of 16")
    ap.add_argument("--inputs", help="folder with tower_{H}x{W}.f32 inputs dumped by the Rust bench")
    ap.add_argument("--force", action="store_true", help="re-export existing files")
    a = ap.parse_args()

    import onnxruntime as ort
    from onnxruntime.quantization import QuantType, quantize_dynamic

    os.makedirs(a.out, exist_ok=True)
    torch.set_num_threads(1)
    # nn.MultiheadAttention's fused inference kernel has no ONNX symbolic; the plain path
    # (in_proj matmul, scaled dot-product attention, out_proj) exports as ordinary ops.
    torch.backends.mha.set_fastpath_enabled(False)
    state = load_state_dict(os.path.join(a.weights, "open_clip_model.safetensors"))
    summary = {"torch": torch.__version__, "onnxruntime": ort.__version__, "models": []}
    for h, w in parse_sizes(a.sizes):
        f32 = os.path.join(a.out, f"vit_b16_visual_{h}x{w}_f32.onnx")
        int8 = os.path.join(a.out, f"vit_b16_visual_{h}x{w}_int8.onnx")
        visual = build_visual(state, h, w)
        inp = None
        if a.inputs:
            p = os.path.join(a.inputs, f"tower_{h}x{w}.f32")
            if os.path.exists(p):
                inp = torch.from_numpy(np.fromfile(p, dtype="<f4").reshape(1, 3, h, w).copy())
        if inp is None:
            inp = torch.randn(1, 3, h, w, generator=torch.Generator().manual_seed(0))
        with torch.no_grad():
            ref = visual(inp).numpy()
        if a.force or not os.path.exists(f32):
            t = time.time()
            with torch.no_grad():
                torch.onnx.export(
                    visual, (inp,), f32, input_names=["pixels"], output_names=["pooled"],
                    opset_version=17, dynamo=False,
                )
            print(f"exported {f32} in {time.time() - t:.1f} s", file=sys.stderr)
        if a.force or not os.path.exists(int8):
            t = time.time()
            quantize_dynamic(f32, int8, weight_type=QuantType.QInt8)
            print(f"quantized {int8} in {time.time() - t:.1f} s", file=sys.stderr)
        so = ort.SessionOptions()
        so.intra_op_num_threads = 1
        outs = {}
        for name, path in (("f32", f32), ("int8", int8)):
            sess = ort.InferenceSession(path, so, providers=["CPUExecutionProvider"])
            outs[name] = sess.run(None, {"pixels": inp.numpy()})[0]
        diff = float(np.abs(outs["f32"] - ref).max())
        a32, a8 = outs["f32"].ravel(), outs["int8"].ravel()
        cos = float(a32 @ a8 / (np.linalg.norm(a32) * np.linalg.norm(a8)))
        m = {
            "size": [h, w],
            "f32": os.path.basename(f32),
            "int8": os.path.basename(int8),
            "f32_bytes": os.path.getsize(f32),
            "int8_bytes": os.path.getsize(int8),
            "input": "rust tower input" if a.inputs and os.path.exists(os.path.join(a.inputs, f"tower_{h}x{w}.f32")) else "random",
            "onnx_f32_vs_torch_max_abs_diff": diff,
            "int8_vs_f32_cosine": cos,
            "torch_pooled": ref.ravel().tolist(),
            "onnx_f32_pooled": a32.tolist(),
            "onnx_int8_pooled": a8.tolist(),
        }
        print(f"{h}x{w}: onnxruntime f32 vs torch max|d| = {diff:.2e}, int8 vs f32 cosine = {cos:.4f}", file=sys.stderr)
        summary["models"].append(m)
    with open(os.path.join(a.out, "export.json"), "w") as f:
        json.dump(summary, f, indent=1)


if __name__ == "__main__":
    main()
