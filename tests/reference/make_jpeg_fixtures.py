"""JPEG decoding parity fixtures: small JPEGs written by Pillow, and the pixels Pillow decodes.

The upstream pipeline (and Chromium) decode JPEG with libjpeg-turbo: ISLOW integer IDCT, "fancy"
(triangular) chroma upsampling, libjpeg's fixed-point YCbCr -> RGB. The CLI must give the same
bytes. This script writes

* `tests/fixtures/jpeg/*.jpg`: small synthetic JPEGs covering chroma subsampling 4:4:4 / 4:2:2 /
  4:2:0, baseline and progressive, restart markers, optimised Huffman tables, greyscale, Adobe CMYK,
  sizes that are not multiples of the MCU (down to 1 px wide) and the eight EXIF orientations;
* `tests/fixtures/jpeg/expected.json`: per file, the size and the SHA-256 of the RGB bytes Pillow
  gives for `ImageOps.exif_transpose(Image.open(f)).convert("RGB")` (row-major, 3 bytes a pixel),
  for these fixtures and for the sample photos already in the repository (`www/samples/*.jpg`,
  `tests/fixtures/voc/images/*.jpg`).

The images are generated here (seeded numpy patterns), so they carry the repository's licence.

    tests/reference/.venv/bin/python tests/reference/make_jpeg_fixtures.py          # (re)write
    tests/reference/.venv/bin/python tests/reference/make_jpeg_fixtures.py --check  # compare only

Pillow's own libjpeg-turbo version is recorded in expected.json; `--check` fails on any change.
"""

import argparse
import hashlib
import io
import json
import sys
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps, features

ROOT = Path(__file__).resolve().parents[2]
OUT = ROOT / "tests" / "fixtures" / "jpeg"
SAMPLES = sorted((ROOT / "www" / "samples").glob("*.jpg")) + sorted(
    (ROOT / "tests" / "fixtures" / "voc" / "images").glob("*.jpg")
)


def pattern(w: int, h: int, seed: int) -> np.ndarray:
    """A colourful test card: smooth gradients, sharp edges of saturated colours (where chroma
    upsampling differs most), a checkerboard and seeded noise, uint8 [h, w, 3]."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:h, 0:w].astype(np.float64)
    img = np.zeros((h, w, 3))
    img[..., 0] = 255 * x / max(w - 1, 1)
    img[..., 1] = 255 * y / max(h - 1, 1)
    img[..., 2] = 127.5 + 127.5 * np.sin((x + 2 * y) / 3.0)
    # saturated blocks with hard edges at odd offsets
    for k in range(6):
        x0, y0 = rng.integers(0, max(w - 3, 1)), rng.integers(0, max(h - 3, 1))
        bw, bh = rng.integers(2, max(w // 3, 3)), rng.integers(2, max(h // 3, 3))
        img[y0 : y0 + bh, x0 : x0 + bw] = rng.choice([0, 255], size=3)
    checker = ((x.astype(int) // 3 + y.astype(int) // 3) % 2 == 0) & (x > w * 0.6)
    img[checker] = [250, 10, 200]
    img += rng.normal(0, 12, size=img.shape)
    return np.clip(np.round(img), 0, 255).astype(np.uint8)


def exif_with_orientation(o: int) -> bytes:
    exif = Image.Exif()
    exif[0x0112] = o
    return exif.tobytes()


def fixtures() -> dict[str, bytes]:
    """name -> JPEG bytes, all written by Pillow (libjpeg-turbo)."""
    out = {}

    def save(name: str, im: Image.Image, **kw) -> None:
        buf = io.BytesIO()
        im.save(buf, "JPEG", **kw)
        out[name] = buf.getvalue()

    rgb = Image.fromarray(pattern(61, 45, 1))
    for sub in ["4:4:4", "4:2:2", "4:2:0"]:
        tag = sub.replace(":", "")
        save(f"s{tag}.jpg", rgb, quality=85, subsampling=sub)
        save(f"s{tag}_progressive.jpg", rgb, quality=85, subsampling=sub, progressive=True)
    save("s420_restart_blocks.jpg", rgb, quality=85, subsampling="4:2:0", restart_marker_blocks=3)
    save("s422_restart_rows.jpg", rgb, quality=85, subsampling="4:2:2", restart_marker_rows=1)
    save(
        "s420_progressive_restart.jpg",
        rgb,
        quality=85,
        subsampling="4:2:0",
        progressive=True,
        restart_marker_blocks=2,
    )
    save("s420_optimized.jpg", rgb, quality=85, subsampling="4:2:0", optimize=True)
    save("s420_q100.jpg", rgb, quality=100, subsampling="4:2:0")
    save("s420_q10.jpg", rgb, quality=10, subsampling="4:2:0")
    # several MCU rows and columns, sides not multiples of 16
    save("s420_large.jpg", Image.fromarray(pattern(203, 157, 2)), quality=90, subsampling="4:2:0")
    # degenerate sizes: the upsampler's edge cases
    save("s420_1x17.jpg", Image.fromarray(pattern(1, 17, 3)), quality=90, subsampling="4:2:0")
    save("s420_17x1.jpg", Image.fromarray(pattern(17, 1, 4)), quality=90, subsampling="4:2:0")
    save("s422_2x2.jpg", Image.fromarray(pattern(2, 2, 5)), quality=90, subsampling="4:2:2")
    grey = Image.fromarray(pattern(61, 45, 6)).convert("L")
    save("grey.jpg", grey, quality=85)
    save("grey_progressive.jpg", grey, quality=85, progressive=True)
    # Pillow writes CMYK inverted with an Adobe APP14 marker, as Photoshop does
    save("cmyk_adobe.jpg", Image.fromarray(pattern(61, 45, 7)).convert("CMYK"), quality=90)
    # components stored as R, G, B (Adobe transform 0), no YCbCr conversion
    save("rgb_adobe.jpg", rgb, quality=85, subsampling="4:4:4", keep_rgb=True)
    # the eight EXIF orientations on a non-square 4:2:0 image
    base = Image.fromarray(pattern(37, 22, 8))
    for o in range(1, 9):
        save(f"exif_orientation_{o}.jpg", base, quality=90, subsampling="4:2:0",
             exif=exif_with_orientation(o))
    return out


def pil_rgb(data: bytes) -> Image.Image:
    im = Image.open(io.BytesIO(data))
    im = ImageOps.exif_transpose(im)
    return im.convert("RGB")


def entry(data: bytes) -> dict:
    im = pil_rgb(data)
    raw = im.tobytes()
    assert len(raw) == im.width * im.height * 3
    return {
        "width": im.width,
        "height": im.height,
        "rgb_sha256": hashlib.sha256(raw).hexdigest(),
    }


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--check", action="store_true", help="recompute and compare, write nothing")
    args = ap.parse_args()

    files = fixtures()
    expected = {
        "generator": "tests/reference/make_jpeg_fixtures.py",
        "decoder": f"Pillow {Image.__version__}, libjpeg-turbo "
        f"{features.version_feature('libjpeg_turbo')}: "
        "ImageOps.exif_transpose(Image.open(f)).convert('RGB')",
        "fixtures": {name: entry(data) for name, data in sorted(files.items())},
        "samples": {str(p.relative_to(ROOT)): entry(p.read_bytes()) for p in SAMPLES},
    }
    # Every generated file is what its name says.
    for name, data in files.items():
        im = Image.open(io.BytesIO(data))
        assert ("progressive" in name) == bool(im.info.get("progressive")), name
        if name.startswith("s4"):
            want = {"s444": 0, "s422": 1, "s420": 2}[name[:4]]
            from PIL.JpegImagePlugin import get_sampling

            assert get_sampling(im) == want, name
        if "restart" in name:
            assert b"\xff\xdd" in data, name  # DRI segment
        if name.startswith("cmyk"):
            assert im.mode == "CMYK" and "adobe" in im.info, name
        if name.startswith("rgb"):
            assert im.info.get("adobe_transform") == 0, name
        if name.startswith("grey"):
            assert im.mode == "L", name
    text = json.dumps(expected, indent=1, sort_keys=True) + "\n"

    if args.check:
        bad = [n for n, d in files.items() if (OUT / n).read_bytes() != d]
        old = (OUT / "expected.json").read_text()
        if bad or old != text:
            print(f"DIFFERENT: files {bad}, expected.json {'same' if old == text else 'differs'}")
            return 1
        print(f"byte-identical: {len(files)} JPEGs and expected.json")
        return 0
    OUT.mkdir(parents=True, exist_ok=True)
    for name, data in files.items():
        (OUT / name).write_bytes(data)
    (OUT / "expected.json").write_text(text)
    total = sum(len(d) for d in files.values())
    print(f"wrote {len(files)} JPEGs ({total} bytes) and expected.json to {OUT.relative_to(ROOT)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
