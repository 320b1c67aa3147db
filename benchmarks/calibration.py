"""Calibration: bits per byte of a trained model on bytes nobody can predict, beside the best compressor.

A model honest about what it does not know scores about 8 bits per byte on random bytes and on
already-compressed payloads (target 7.9-8.05); one that scores more is worse than storing them.
The files are made here, so none was seen in training: three files of uniform random bytes, a
gzip stream and a raw LZMA2 stream of real text, and the IDAT payload (a zlib stream) of a PNG.

    python benchmarks/calibration.py data/model [--tag TAG]   # or an exported ONNX dir

Prints one row per file (model bpb, best compressor bpb and which) and saves
benchmarks/results/calibration.json (calibration_TAG.json with --tag, for a model other than the
default).
"""

from __future__ import annotations

import argparse
import gzip
import io
import lzma
import struct
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks._common import save, score_held_out  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]


def png_idat(png: bytes) -> bytes:
    """The concatenated IDAT chunk data of a PNG: its compressed pixel stream."""
    pos, out = 8, []
    while pos + 8 <= len(png):
        size, kind = struct.unpack_from(">I4s", png, pos)
        if kind == b"IDAT":
            out.append(png[pos + 8:pos + 8 + size])
        pos += 12 + size
    return b"".join(out)


def unpredictable_files(seed: int = 2026) -> dict[str, bytes]:
    from PIL import Image

    rng = np.random.default_rng(seed)
    text = (ROOT / "data" / "raw" / "text" / "GPL-3.txt").read_bytes()
    png = io.BytesIO()
    with Image.open(ROOT / "data" / "raw" / "image" / "astronaut.png") as im:
        im.convert("RGB").save(png, format="PNG", optimize=True)  # re-encoded: not the file trained on
    files = {f"random{i}.bin": rng.integers(0, 256, 16384, dtype=np.uint8).tobytes() for i in range(3)}
    files["text.gz"] = gzip.compress(text, 9, mtime=0)
    files["text.lzma2"] = lzma.compress(text, format=lzma.FORMAT_RAW, filters=[{"id": lzma.FILTER_LZMA2, "preset": 9}])
    files["png.idat"] = png_idat(png.getvalue())[:32768]
    return files


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("model", help="model dir (obf train) or ONNX dir (obf export)")
    ap.add_argument("--tag", default="", help="save results/calibration_TAG.json (another model than the default's)")
    args = ap.parse_args()

    rows = score_held_out(args.model, unpredictable_files())
    print(f"{'file':<12} {'bytes':>7} {'model bpb':>10} {'network':>8} {'best bpb':>9}  best compressor")
    for row in rows:
        print(f"{row['file']:<12} {row['bytes']:>7} {row['model_bpb']:>10.3f} {row['network_bpb']:>8.3f} "
              f"{row['best_bpb']:>9.3f}  {row['best']}")
    inside = sum(7.9 <= r["model_bpb"] <= 8.05 for r in rows)
    print(f"{inside} of {len(rows)} files within 7.9-8.05 bpb")
    name = f"calibration_{args.tag}" if args.tag else "calibration"
    save(name, {"model": args.model, "files": rows, "within_7_9_to_8_05": inside})
    return 0


if __name__ == "__main__":
    sys.exit(main())
