"""Canonical forms: compressed media turned into forms a byte model can learn from.

Image -> 24-bit BMP (32-bit with alpha when the image has transparency), audio -> WAV PCM,
video -> Y4M (4:2:0). Decoding is done by Pillow and PyAV (FFmpeg); nothing compressed is
hand-parsed. Canonical forms keep what makes files distinct: two different inputs never become
the same bytes. Imports no torch.
"""

from __future__ import annotations

import io
import re
import struct
import wave
from typing import TYPE_CHECKING

from obf.formats.layouts import BI_BITFIELDS, V4_HEADER
from obf.formats.sniff import FormatError, Sniffed, sniff

if TYPE_CHECKING:
    from obf.core.config import IngestConfig


REWRITTEN = ("image", "audio", "video")  # the modalities canonicalize re-encodes; text and binary pass through


def canonicalize(data: bytes, cfg: IngestConfig) -> tuple[bytes, Sniffed]:
    """Return the canonical bytes of `data` for its modality (text and binary pass through).

    Raises FormatError when a media file cannot be decoded.
    """
    s = sniff(data)
    if s.modality == "image":
        return (data if s.format == "bmp" and _is_small_bmp24(data, cfg.image_max_side)
                else image_to_bmp(data, cfg.image_max_side)), Sniffed("image", "bmp")
    if s.modality == "audio":
        return audio_to_wav(data, rate=cfg.audio_rate, width=cfg.audio_sample_width,
                            channels=cfg.audio_channels), Sniffed("audio", "wav")
    if s.modality == "video":
        return video_to_y4m(data, width=cfg.video_width, height=cfg.video_height, fps=cfg.video_fps,
                            max_frames=cfg.video_max_frames), Sniffed("video", "y4m")
    return data, s


def _is_small_bmp24(data: bytes, max_side: int) -> bool:
    if len(data) < 54:
        return False
    w, h, _, bpp, comp = struct.unpack_from("<iiHHI", data, 18)
    return bpp == 24 and comp == 0 and 0 < w <= max_side and 0 < abs(h) <= max_side


def image_to_bmp(data: bytes, max_side: int) -> bytes:
    """Decode any Pillow-readable image; first frame, fit in max_side; BMP.

    Opaque images become 24-bit BMPs. Images with real transparency (an alpha channel or a
    transparent palette entry that some pixel uses) become 32-bit BGRA BMPs, so two images that
    differ only in alpha never become the same bytes.
    """
    from PIL import Image

    try:
        with Image.open(io.BytesIO(data)) as im:
            im.seek(0)
            has_alpha = im.mode in ("RGBA", "LA", "PA", "RGBa", "La") or "transparency" in im.info
            rgb = im.convert("RGBA" if has_alpha else "RGB")
    except Exception as e:  # Pillow raises many types for bad data (incl. decompression bombs)
        raise FormatError(f"image does not decode: {_reason(e)}") from None
    rgb.thumbnail((max_side, max_side), Image.Resampling.LANCZOS)
    if rgb.mode == "RGBA" and rgb.getchannel("A").getextrema()[0] == 255:
        rgb = rgb.convert("RGB")  # alpha present but fully opaque: nothing to keep
    if rgb.mode == "RGBA":
        return bmp32(rgb.width, rgb.height, rgb.tobytes("raw", "BGRA", 0, -1))
    out = io.BytesIO()
    rgb.save(out, format="BMP")
    return out.getvalue()


def bmp32(width: int, height: int, bgra_bottom_up: bytes) -> bytes:
    """A 32-bit BMP with alpha: BITMAPV4HEADER, BI_BITFIELDS with masks B, G, R, A (one byte
    each), rows bottom-up. Pillow writes RGBA as BI_RGB, which readers (Pillow too) take as
    opaque; with an alpha mask Pillow, browsers and image editors read the transparency."""
    size = width * height * 4
    if len(bgra_bottom_up) != size:
        raise ValueError(f"{width}x{height} BGRA needs {size} bytes, got {len(bgra_bottom_up)}")
    offset = 14 + V4_HEADER
    header = struct.pack("<2sIHHI", b"BM", offset + size, 0, 0, offset)
    info = struct.pack("<IiiHHIIiiII", V4_HEADER, width, height, 1, 32, BI_BITFIELDS, size, 2835, 2835, 0, 0)
    masks = struct.pack("<IIII", 0x00FF0000, 0x0000FF00, 0x000000FF, 0xFF000000)
    colour_space = struct.pack("<I", 0x73524742) + b"\x00" * 48  # LCS_sRGB; endpoints and gammas unused
    return header + info + masks + colour_space + bgra_bottom_up


def _reason(e: BaseException) -> str:
    """First line of an exception, without object reprs (so manifests stay deterministic)."""
    text = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
    return re.sub(r"\s*<[^<>]* at 0x[0-9a-f]+>", "", text)[:200]


def audio_to_wav(data: bytes, *, rate: int, width: int, channels: int) -> bytes:
    """Decode any FFmpeg-readable audio with PyAV and resample to PCM WAV."""
    import av
    import numpy as np

    fmt = {1: "u8", 2: "s16"}[width]
    layout = {1: "mono", 2: "stereo"}[channels]
    chunks: list[bytes] = []
    try:
        with av.open(io.BytesIO(data), mode="r") as container:
            if not container.streams.audio:
                raise FormatError("audio file has no audio stream")
            stream = container.streams.audio[0]
            resampler = av.AudioResampler(format=fmt, layout=layout, rate=rate)
            for frame in container.decode(stream):
                for out in resampler.resample(frame):
                    chunks.append(np.ascontiguousarray(out.to_ndarray()).tobytes())
            for out in resampler.resample(None):
                chunks.append(np.ascontiguousarray(out.to_ndarray()).tobytes())
    except FormatError:
        raise
    except Exception as e:
        raise FormatError(f"audio does not decode: {_reason(e)}") from None
    pcm = b"".join(chunks)
    if not pcm:
        raise FormatError("audio decodes to no samples")
    return pcm_to_wav(pcm, rate=rate, width=width, channels=channels)


def pcm_to_wav(pcm: bytes, *, rate: int, width: int, channels: int) -> bytes:
    out = io.BytesIO()
    with wave.open(out, "wb") as w:
        w.setnchannels(channels)
        w.setsampwidth(width)
        w.setframerate(rate)
        w.writeframes(pcm)
    return out.getvalue()


def y4m_header(width: int, height: int, fps: int) -> bytes:
    return f"YUV4MPEG2 W{width} H{height} F{fps}:1 Ip A1:1 C420jpeg\n".encode()


def video_to_y4m(data: bytes, *, width: int, height: int, fps: int, max_frames: int) -> bytes:
    """Decode any FFmpeg-readable video with PyAV; sample at `fps`, scale, write 4:2:0 Y4M."""
    import av

    frames: list[bytes] = []
    try:
        with av.open(io.BytesIO(data), mode="r") as container:
            if not container.streams.video:
                raise FormatError("video file has no video stream")
            stream = container.streams.video[0]
            next_t = 0.0
            for frame in container.decode(stream):
                t = frame.time if frame.time is not None else next_t
                if t + 1e-6 < next_t:
                    continue
                # one thread: swscale's automatic slice threads gain nothing on 32x32 frames
                yuv = frame.reformat(width=width, height=height, format="yuv420p", threads=1)
                frames.append(b"".join(bytes(_plane_bytes(yuv, i)) for i in range(3)))
                next_t += 1.0 / fps
                if len(frames) >= max_frames:
                    break
    except FormatError:
        raise
    except Exception as e:
        raise FormatError(f"video does not decode: {_reason(e)}") from None
    if not frames:
        raise FormatError("video decodes to no frames")
    return y4m_header(width, height, fps) + b"".join(b"FRAME\n" + f for f in frames)


def _plane_bytes(frame, i: int) -> bytes:
    """Tightly packed bytes of plane i (planes may carry row padding)."""
    plane = frame.planes[i]
    w = frame.width if i == 0 else frame.width // 2
    h = frame.height if i == 0 else frame.height // 2
    raw = bytes(plane)
    if plane.line_size == w:
        return raw[: w * h]
    return b"".join(raw[r * plane.line_size: r * plane.line_size + w] for r in range(h))
