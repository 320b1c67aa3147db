"""How well each stride-hint predictor guesses audio and video bytes: the residual entropy of
the bytes under the hint (bits per byte: the entropy of byte - hint over a split's files), for
obf's hint (`obf.mixer.stride_hint.stride_hints`) and the predictors it was chosen among.

    python benchmarks/hint_entropy.py data/dataset [--split val] [--modalities audio video] [--name hint_entropy]

Audio (8-bit canonical WAV): the previous sample, FLAC's fixed second-order predictor, and
backward-adaptive linear prediction (`obf.mixer.lpc`'s fit, in floating point here) over a grid
of orders, windows and refit intervals. Video (4:2:0 Y4M, each plane): the same byte of the
frame before, JPEG-LS's median edge detector inside the frame, the frame before moved by the
motion found between the two frames before it (+-3 pixels), that plus the left neighbour's
temporal change, and the median of three. A cheap proxy for the mixer's gain (the model's own
bits per byte come from `benchmarks/mixer.py`), fast enough to try many predictors. Choose on
`--split val`. Saves benchmarks/results/NAME.json.
"""

from __future__ import annotations

import argparse
import itertools
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks._common import save  # noqa: E402
from obf.data.dataset import Dataset  # noqa: E402
from obf.formats.layouts import Y4M_FRAME, layout, wav_layout, y4m_frame_size  # noqa: E402
from obf.mixer.stride_hint import med, predictor_of, stride_hints  # noqa: E402

LPC_GRID = list(itertools.product((4, 8, 16, 24, 32), (128, 192, 256, 512), (8, 16)))  # order, window, refit


def entropy(residuals: list[np.ndarray]) -> float:
    """Bits per value of the empirical distribution of the concatenated residuals."""
    _, counts = np.unique(np.concatenate(residuals), return_counts=True)
    p = counts / counts.sum()
    return float(-(p * np.log2(p)).sum())


def lpc_float(x: np.ndarray, order: int, window: int, every: int, ridge: float = 1e-3) -> np.ndarray:
    """(m,) predictions of samples x (m,) by least squares on the past (the previous sample until
    2 x order samples have come), refitted every `every` samples on the last `window`."""
    s = x.astype(np.float64) - 128.0
    p = np.concatenate([[0.0], s[:-1]])
    for b in range(2 * order, len(s), every):
        lo = max(order, b - window)
        lags = np.stack([s[lo - j - 1:b - j - 1] for j in range(order)], 1)  # (m, order)
        gram = lags.T @ lags
        a = np.linalg.solve(gram + (ridge * np.trace(gram) / order + 1.0) * np.eye(order), lags.T @ s[lo:b])
        e = min(len(s), b + every)
        p[b:e] = np.stack([s[b - j - 1:e - j - 1] for j in range(order)], 1) @ a
    return np.clip(np.rint(p), -128, 127) + 128


def audio(files: list[bytes]) -> dict[str, float]:
    out: dict[str, list[np.ndarray]] = {}

    def add(name: str, x: np.ndarray, pred: np.ndarray, start: int = 1) -> None:
        out.setdefault(name, []).append(x[start:].astype(np.int64) - pred[start:].astype(np.int64))

    for data in files:
        lay = wav_layout(data[:256])
        if lay is None or lay.width != 1 or lay.channels != 1:
            continue
        x = np.frombuffer(data[lay.offset:], np.uint8).astype(np.int64)
        h, _ = stride_hints(data, "audio")
        add("obf's hint", x, h[lay.offset:lay.offset + len(x)])
        add("previous sample", x, np.concatenate([[128], x[:-1]]))
        add("fixed order 2", x, np.clip(np.concatenate([[128, x[0]], 2 * x[1:-1] - x[:-2]]), 0, 255))
        for order, window, every in LPC_GRID:
            add(f"lpc order {order}, window {window}, refit {every}", x, lpc_float(x, order, window, every))
    return {k: entropy(v) for k, v in out.items()}


def _shift(plane: np.ndarray, dy: int, dx: int) -> np.ndarray:
    """out[y, x] = plane[y - dy, x - dx], edges repeated."""
    h, w = plane.shape
    return plane[np.ix_(np.clip(np.arange(h) - dy, 0, h - 1), np.clip(np.arange(w) - dx, 0, w - 1))]


def _motion(before: np.ndarray, after: np.ndarray, r: int = 3) -> tuple[int, int]:
    """The shift of `before` that best matches `after` (mean absolute error away from the edges)."""
    def err(d: tuple[int, int]) -> float:
        return float(np.abs(_shift(before, *d) - after)[r:-r, r:-r].mean())

    return min(itertools.product(range(-r, r + 1), repeat=2), key=err)


def video(files: list[bytes]) -> dict[str, float]:
    out: dict[str, list[np.ndarray]] = {}
    for data in files:
        lay = layout(data, "video")
        if lay is None:
            continue
        w, h = y4m_frame_size(data[:lay.header - 1])[:2]
        sizes = [(h, w), (h // 2, w // 2), (h // 2, w // 2)]
        frames = []
        for f in range((len(data) - lay.header) // lay.unit):
            raw = np.frombuffer(data, np.uint8, lay.unit - len(Y4M_FRAME), lay.header + f * lay.unit + len(Y4M_FRAME))
            cuts = np.cumsum([0] + [a * b for a, b in sizes])
            frames.append([raw[cuts[i]:cuts[i + 1]].astype(np.int64).reshape(sizes[i]) for i in range(3)])
        hints, _ = stride_hints(data, "video")
        p = predictor_of(data, "video")
        assert p is not None
        for f in range(1, len(frames)):
            dy, dx = _motion(frames[f - 2][0], frames[f - 1][0]) if f >= 2 else (0, 0)
            start = lay.header + f * lay.unit + len(Y4M_FRAME)
            for i, (cur, prev) in enumerate(zip(frames[f], frames[f - 1])):
                k = 2 if i else 1
                moved = _shift(prev, dy // k, dx // k)
                left, above, corner = (np.roll(cur, 1, 1), np.roll(cur, 1, 0), np.roll(np.roll(cur, 1, 0), 1, 1))
                edge = np.zeros_like(cur, dtype=bool)
                edge[0], edge[:, 0] = True, True
                spatial = np.where(edge, prev, med(left, above, corner))
                moved_left = np.roll(moved, 1, 1)
                graded = np.where(edge, moved, np.clip(moved + left - moved_left, 0, 255))
                n = cur.size
                obf = hints[start:start + n].reshape(cur.shape)
                start += n
                for name, pred in (("obf's hint", obf), ("frame before", prev), ("edge detector in the frame", spatial),
                                   ("frame before, moved", moved), ("moved + left's change", graded),
                                   ("median of detector, moved, moved + change",
                                    np.median(np.stack([spatial, moved, graded]), 0).astype(np.int64))):
                    out.setdefault(name, []).append((cur - pred).ravel())
    return {k: entropy(v) for k, v in out.items()}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("data", help="an ingested dataset, e.g. data/dataset")
    ap.add_argument("--split", default="val", choices=["train", "val", "test"], help="choose on val")
    ap.add_argument("--modalities", nargs="+", default=["audio", "video"], choices=["audio", "video"])
    ap.add_argument("--name", default="hint_entropy", help="result file name in benchmarks/results (no .json)")
    args = ap.parse_args()
    ds = Dataset(args.data)
    picked = {m: [bytes(ds.file_bytes(r)) for r in ds.records if r.split == args.split and r.modality == m]
              for m in args.modalities}
    measure = {"audio": audio, "video": video}
    results = {m: measure[m](files) for m, files in picked.items()}
    for m, rows in results.items():
        print(f"\n{m} ({len(picked[m])} {args.split} files): residual entropy, bits per byte\n")
        for name, bits in sorted(rows.items(), key=lambda kv: kv[1]):
            print(f"  {bits:6.3f}  {name}")
    save(args.name, {"data": args.data, "split": args.split, "files": {m: len(v) for m, v in picked.items()},
                     "bits": results})
    return 0


if __name__ == "__main__":
    sys.exit(main())
