"""How closely a model's `paired` outputs follow their input: the measures of the conversion issue.

For pairs whose right output is known (the built-in conversions of `obf.formats.conversions`, or any user
pair), per conversion:

* `exact`: the share of pairs whose generated target (greedy) is the target, byte for byte;
* `byte_accuracy`: `generated`, the share of target bytes the generated output has at the same
  offset (a missing byte is wrong), and `teacher_forced`, the share the hinted network ranks
  first when it is given the right bytes before;
* `bpb`: the target's bits per byte given its input (`with_input`, teacher forced, as generation
  serves it) and scored alone as a file (`without_input`): what the input tells the model;
* `gray`: `pixels_exact` and `pixel_mean_error` (levels of L) of the generated picture; `ascii`:
  `chars_right`, the share of characters right at their place.

Generation here is greedy: a conversion has one right answer. Imports no torch.
"""

from __future__ import annotations

import functools
import io
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from obf.core.bits import LN2
from obf.formats.conversions import conversion_for
from obf.formats.repair import to_file
from obf.formats.sniff import FormatError
from obf.generate.sampling import SamplingOptions, generate
from obf.runtime.backend import Backend
from obf.runtime.scoring import paired_log_probs, served_log_probs


@dataclass(frozen=True)
class Case:
    """One pair to measure: where it came from, its (canonical) input and its target."""

    key: str
    input: bytes
    modality: str
    target: bytes
    target_modality: str

    @functools.cached_property
    def conversion(self) -> str:
        """The built-in conversion this pair is an instance of (its target is that conversion of
        its input, exactly), else `<modality>-><modality>`: a user's pair of the same modalities is
        not counted under a built-in name."""
        conv = conversion_for(self.modality, self.target_modality)
        try:
            if conv is not None and conv.convert(self.input) == self.target:
                return conv.name
        except FormatError:
            pass
        return f"{self.modality}->{self.target_modality}"


def _luma(bmp: bytes) -> np.ndarray | None:
    """L per pixel (H, W) of a BMP that opens (after header repair), else None."""
    from PIL import Image

    try:
        data, _ = to_file(bmp, "image")
        with Image.open(io.BytesIO(data)) as im:
            return np.asarray(im.convert("RGB").convert("L"), dtype=np.int64)
    except Exception:  # a generated picture that does not decode counts as all wrong
        return None


def _pixels(generated: bytes, target: bytes) -> tuple[int, int, float]:
    """(pixels right, pixels, summed absolute error in levels of L); a picture of another size or
    one that does not open has every pixel wrong by 255."""
    want = _luma(target)
    assert want is not None, "a target picture always opens"
    got = _luma(generated)
    if got is None or got.shape != want.shape:
        return 0, want.size, 255.0 * want.size
    return int((got == want).sum()), want.size, float(np.abs(got - want).sum())


def generate_targets(backend: Backend, cases: Sequence[Case], batch_size: int = 16) -> list[bytes]:
    """Each case's target as the model makes it from the input: greedy, at most 16 bytes past the
    target's length, batched by similar lengths."""
    order = sorted(range(len(cases)), key=lambda i: len(cases[i].target))
    out: list[bytes] = [b""] * len(cases)
    for s in range(0, len(order), batch_size):
        chunk = order[s:s + batch_size]
        opts = SamplingOptions(max_bytes=max(len(cases[i].target) for i in chunk) + 16, temperature=0.0)
        made = generate(backend, [cases[i].input for i in chunk], [cases[i].modality for i in chunk], task="paired",
                        target_modalities=[cases[i].target_modality for i in chunk], opts=opts)
        for i, g in zip(chunk, made):
            out[i] = g
    return out


def measure(backend: Backend, cases: Sequence[Case], *, batch_size: int = 16, progress: bool = False
            ) -> tuple[dict[str, dict[str, Any]], list[bytes]]:
    """The measures above per conversion, and the generated target of each case."""
    pairs = [(c.input, c.modality, c.target, c.target_modality) for c in cases]
    with_input = paired_log_probs(backend, pairs, batch_size=2 * batch_size, progress=progress)
    alone, _ = served_log_probs(backend, [(np.frombuffer(c.target, np.uint8), c.target_modality) for c in cases],
                                2 * batch_size, learn_until=[0] * len(cases))
    made = generate_targets(backend, cases, batch_size)
    sums: dict[str, dict[str, float]] = defaultdict(lambda: defaultdict(float))
    for c, served, right, lp_alone, g in zip(cases, with_input.served, with_input.argmax_right, alone, made):
        s, n = sums[c.conversion], len(c.target)
        s["pairs"] += 1
        s["exact"] += g == c.target
        s["bytes"] += n
        s["generated_right"] += sum(a == b for a, b in zip(g, c.target))
        s["teacher_forced_right"] += int(right[:n].sum())
        s["bits_with"] -= float(served.sum()) / LN2
        s["bits_without"] -= float(lp_alone.sum()) / LN2
        if c.conversion == "gray":
            ok, total, err = _pixels(g, c.target)
            s["pixels_right"] += ok
            s["pixels"] += total
            s["pixel_error"] += err
    out = {}
    for name, s in sorted(sums.items()):
        m: dict[str, Any] = {"pairs": int(s["pairs"]), "exact": s["exact"] / s["pairs"],
                             "byte_accuracy": {"generated": s["generated_right"] / s["bytes"],
                                               "teacher_forced": s["teacher_forced_right"] / s["bytes"]},
                             "bpb": {"with_input": s["bits_with"] / s["bytes"],
                                     "without_input": s["bits_without"] / s["bytes"]}}
        if name == "gray":
            m["pixels_exact"] = s["pixels_right"] / s["pixels"]
            m["pixel_mean_error"] = s["pixel_error"] / s["pixels"]
        if name == "ascii":
            m["chars_right"] = m["byte_accuracy"]["generated"]
        out[name] = m
    return out, made
