"""Decode the benchmark photo to packed RGB bytes (what both the wasm and native runs read).

Default: www/samples/china.jpg, 640x427 (scikit-learn's sample image, CC BY 2.0, see
www/samples/LICENSES.md). Usage: python bench/photo.py [--image FILE] --out DIR
Writes DIR/photo.rgb (height * width * 3 bytes) and DIR/photo.json (size and source).
"""

import argparse
import json
import os

from PIL import Image

ap = argparse.ArgumentParser()
ap.add_argument("--image", default=os.path.join(os.path.dirname(__file__), "..", "www", "samples", "china.jpg"))
ap.add_argument("--out", required=True)
a = ap.parse_args()
img = Image.open(a.image).convert("RGB")
os.makedirs(a.out, exist_ok=True)
with open(os.path.join(a.out, "photo.rgb"), "wb") as f:
    f.write(img.tobytes())
with open(os.path.join(a.out, "photo.json"), "w") as f:
    json.dump({"width": img.width, "height": img.height, "source": os.path.relpath(a.image, os.path.join(os.path.dirname(__file__), ".."))}, f)
print(f"{a.image}: {img.width}x{img.height}")
