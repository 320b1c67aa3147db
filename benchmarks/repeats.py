"""Long-range repetition: bits per byte on files that repeat what came kilobytes before, beside xz.

What compressors exploit best is a copy from far back: a video frame that repeats, a table row,
a log line. A network whose encoder sees 512 bytes cannot see the previous 32x32 video frame
(1.5 KB); the model's mixer (match model and stride hint, `obf.mixer`) can, and a 16 KiB
context can. `model bpb` is the model as it serves, `network` without its mixer. The files are
made here, so none was seen in training:

* `static.y4m`: one 32x32 frame (from a corpus photo) shown 16 times (the canonical video form);
* `cycle.y4m`: four frames of a corpus clip, cycled four times;
* `log.txt`: 20 KB of log lines from a handful of templates with changing counters;
* `records.bin`: a 2 KB binary record repeated 8 times with a changed counter field.

    python benchmarks/repeats.py data/model            # or an exported ONNX dir

Prints one row per file (model bpb, xz bpb, best compressor bpb and which) and saves
benchmarks/results/repeats.json. The goal for video: below xz.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks._common import save, score_held_out  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
W = H = 32  # the canonical video size of params.yaml (ingest.video_width / video_height)


def y4m(frames: list[bytes], fps: int = 5) -> bytes:
    """A 4:2:0 Y4M stream of W x H frames, each given as its Y, U and V planes (1.5 * W * H bytes)."""
    head = f"YUV4MPEG2 W{W} H{H} F{fps}:1 Ip A1:1 C420jpeg\n".encode()
    return head + b"".join(b"FRAME\n" + f for f in frames)


def frame_of(rgb: np.ndarray) -> bytes:
    """An (H, W, 3) uint8 RGB image -> its planar YUV 4:2:0 bytes (BT.601, full range)."""
    r, g, b = (rgb[..., i].astype(np.float32) for i in range(3))
    y = 0.299 * r + 0.587 * g + 0.114 * b
    u = (b - y) * 0.564 + 128
    v = (r - y) * 0.713 + 128
    sub = lambda p: p.reshape(H // 2, 2, W // 2, 2).mean(axis=(1, 3))  # noqa: E731
    planes = [y, sub(u), sub(v)]
    return b"".join(np.clip(np.rint(p), 0, 255).astype(np.uint8).tobytes() for p in planes)


def repeating_files(seed: int = 7) -> dict[str, bytes]:
    from PIL import Image

    rng = np.random.default_rng(seed)
    with Image.open(ROOT / "data" / "raw" / "image" / "astronaut.png") as im:
        still = frame_of(np.asarray(im.convert("RGB").resize((W, H))))
    crops = []
    with Image.open(ROOT / "data" / "raw" / "image" / "coffee.jpg") as im:
        rgb = im.convert("RGB").resize((4 * W, H))
        crops = [frame_of(np.asarray(rgb.crop((i * W, 0, (i + 1) * W, H)))) for i in range(4)]
    templates = ["INFO worker-{w} accepted job {j} from queue default",
                 "DEBUG cache hit ratio {r:.2f} after {j} lookups",
                 "WARN  retrying upload part {p} of job {j} (attempt {a})",
                 "INFO worker-{w} finished job {j} in {t} ms"]
    lines, j = [], 1000
    while sum(len(s) + 1 for s in lines) < 20000:
        j += int(rng.integers(1, 3))
        k = int(rng.integers(len(templates)))
        lines.append(f"2026-12-02T10:{j // 60 % 60:02d}:{j % 60:02d}Z " + templates[k].format(
            w=int(rng.integers(4)), j=j, r=float(rng.random()), p=int(rng.integers(1, 9)), a=int(rng.integers(1, 4)),
            t=int(rng.integers(5, 900))))
    record = bytearray(rng.integers(0, 256, 2048, dtype=np.uint8).tobytes())
    records = b""
    for i in range(8):
        record[100:104] = i.to_bytes(4, "little")
        records += bytes(record)
    return {"static.y4m": y4m([still] * 16), "cycle.y4m": y4m(crops * 4),
            "log.txt": ("\n".join(lines) + "\n").encode(), "records.bin": records}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("model", help="model dir (obf train) or ONNX dir (obf export)")
    args = ap.parse_args()

    rows = score_held_out(args.model, repeating_files())
    print(f"{'file':<12} {'modality':<8} {'bytes':>7} {'model bpb':>10} {'network':>8} {'xz bpb':>7} {'best bpb':>9}"
          "  best compressor")
    for row in rows:
        print(f"{row['file']:<12} {row['modality']:<8} {row['bytes']:>7} {row['model_bpb']:>10.3f} "
              f"{row['network_bpb']:>8.3f} {row['xz_bpb']:>7.3f} {row['best_bpb']:>9.3f}  {row['best']}")
    save("repeats", {"model": args.model, "files": rows})
    return 0


if __name__ == "__main__":
    sys.exit(main())
