"""Pictures a person can look at: PNG previews of images, video frames and audio waveforms.

The evaluation report puts each generated sample beside its source with these, so what the
model made is visible in any markdown viewer (or `dvc plots`) without media tools. Decoding is
done by Pillow (images) and PyAV (video); audio is read with the standard `wave` module. Small
canonical pictures (64 px) are enlarged by whole-pixel repetition so no detail is invented.
Imports no torch.
"""

from __future__ import annotations

import io
import wave

MIN_SIDE = 256  # previews are enlarged (nearest neighbour) until their longer side reaches this
STRIP_FRAMES = 16  # video frames shown side by side, at most


def _png(im, min_side: int = MIN_SIDE) -> bytes:
    from PIL import Image

    scale = max(1, min_side // max(im.size))
    if scale > 1:
        im = im.resize((im.width * scale, im.height * scale), Image.Resampling.NEAREST)
    out = io.BytesIO()
    im.save(out, format="PNG")
    return out.getvalue()


def image_png(data: bytes) -> bytes:
    """Any Pillow-readable image (a BMP sample, with its alpha) as an enlarged PNG."""
    from PIL import Image

    with Image.open(io.BytesIO(data)) as im:
        im.load()
        return _png(im.convert("RGBA" if im.mode in ("RGBA", "LA", "PA") else "RGB"))


def video_strip_png(data: bytes, max_frames: int = STRIP_FRAMES) -> bytes:
    """The first `max_frames` frames of a video (a Y4M sample), left to right, as one PNG."""
    import av
    from PIL import Image

    frames = []
    with av.open(io.BytesIO(data), mode="r") as c:
        for frame in c.decode(video=0):
            frames.append(frame.to_image())
            if len(frames) >= max_frames:
                break
    if not frames:
        raise ValueError("video decodes to no frames")
    w, h = frames[0].size
    strip = Image.new("RGB", (len(frames) * (w + 1) - 1, h), (255, 255, 255))  # 1 px white gaps
    for i, f in enumerate(frames):
        strip.paste(f.convert("RGB").resize((w, h)), (i * (w + 1), 0))
    return _png(strip, min_side=max(strip.width, MIN_SIDE // 2 * strip.width // h))  # frames ~128 px high


def waveform_png(data: bytes, mark_frame: int | None = None, width: int = 512, height: int = 96) -> bytes:
    """A WAV's waveform (min / max per column, first channel), with a red line at sample frame
    `mark_frame` (where the generated part starts)."""
    import numpy as np
    from PIL import Image, ImageDraw

    with wave.open(io.BytesIO(data), "rb") as w:
        ch, sw, n = w.getnchannels(), w.getsampwidth(), w.getnframes()
        raw = w.readframes(n)
    if sw == 1:
        x = (np.frombuffer(raw, np.uint8).astype(np.float32) - 128) / 128
    else:
        x = np.frombuffer(raw[: len(raw) - len(raw) % sw], f"<i{sw}").astype(np.float32) / (1 << (8 * sw - 1))
    x = x[::ch] if ch > 1 else x
    im = Image.new("RGB", (width, height), (255, 255, 255))
    draw = ImageDraw.Draw(im)
    mid = height / 2
    for col in range(width):
        seg = x[col * len(x) // width:(col + 1) * len(x) // width]
        if len(seg):
            draw.line([(col, mid - float(seg.max()) * mid), (col, mid - float(seg.min()) * mid)], fill=(40, 70, 160))
    if mark_frame is not None and len(x):
        at = min(width - 1, mark_frame * width // len(x))
        draw.line([(at, 0), (at, height)], fill=(220, 30, 30), width=2)
    out = io.BytesIO()
    im.save(out, format="PNG")
    return out.getvalue()
