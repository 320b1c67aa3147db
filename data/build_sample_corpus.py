"""Rebuild the embedded sample corpus in data/raw/ from material that ships in PyPI/Debian packages.

This script is provenance, not part of the pipeline: it documents exactly how every file in
data/raw/ was made (see data/raw/SOURCES.md). It needs Debian's espeak-ng, the scikit-image and
matplotlib wheels unpacked under SRC (`pip download --no-deps scikit-image matplotlib`), and
Pillow + PyAV. Run: python data/build_sample_corpus.py /tmp/src

The paired examples (`pairs/`) are made from the corpus's own files by `pairs()`, which needs
nothing else: python data/build_sample_corpus.py --only-pairs
"""

from __future__ import annotations

import importlib.util
import marshal
import os
import shutil
import subprocess
import sys
import sysconfig
import zipfile
from pathlib import Path

import av
import numpy as np
from PIL import Image

RAW = Path(__file__).resolve().parent / "raw"
sys.path.insert(0, str(RAW.parents[1]))  # obf, for the pairs


def images(src: Path) -> list[Path]:
    sk = src / "sk/skimage/data"
    mpl = src / "mpl/matplotlib/mpl-data/sample_data"
    out = RAW / "image"
    made = []

    def save(im: Image.Image, name: str, **kw) -> None:
        im.save(out / name, **kw)
        made.append(out / name)

    shutil.copy(mpl / "grace_hopper.jpg", out / "grace_hopper.jpg")
    made.append(out / "grace_hopper.jpg")
    shutil.copy(sk / "no_time_for_that_tiny.gif", out / "no_time_for_that_tiny.gif")
    shutil.copy(sk / "horse.png", out / "horse.png")
    def small(name: str, side: int) -> Image.Image:
        im = Image.open(sk / name)
        im.thumbnail((side, side), Image.Resampling.LANCZOS)
        return im
    save(small("astronaut.png", 256), "astronaut.png")
    save(small("camera.png", 192).convert("L"), "camera.pgm")
    save(small("coffee.png", 256).convert("RGB"), "coffee.jpg", quality=90)
    save(small("chelsea.png", 256).convert("RGB"), "chelsea.webp", quality=85)
    save(small("rocket.jpg", 160).convert("RGB"), "rocket.ppm")
    save(small("coins.png", 160), "coins.bmp")
    save(small("moon.png", 128), "moon.tif")
    save(small("hubble_deep_field.jpg", 192), "hubble_deep_field.jpg", quality=88)
    save(small("brick.png", 128), "brick.png")
    save(small("gravel.png", 128), "gravel.png")
    save(small("cell.png", 128), "cell.png")
    save(small("page.png", 192), "page.png")
    save(small("text.png", 192), "text.gif")
    save(small("retina.jpg", 160), "retina.jpg", quality=88)
    save(small("motorcycle_left.png", 160).convert("RGB"), "motorcycle_left.webp", quality=85)
    save(small("ihc.png", 160).convert("RGB"), "ihc.bmp")
    return made


SENTENCES = [
    ("hello_world", "en", "Hello world. This is a byte level model reading raw audio."),
    ("numbers", "en", "One, two, three, four, five, six, seven, eight, nine, ten."),
    ("weather", "en-us", "Tomorrow will be cloudy in the morning, with light rain in the afternoon."),
    ("pangram", "en", "The quick brown fox jumps over the lazy dog."),
    ("bonjour", "fr", "Bonjour tout le monde. Le modele lit les octets bruts de chaque fichier."),
    ("hallo", "de", "Guten Tag. Dieses Modell liest die rohen Bytes jeder Datei."),
    ("hola", "es", "Hola a todos. Este modelo lee los bytes de cualquier archivo."),
    ("ciao", "it", "Ciao a tutti. Questo modello legge i byte grezzi di ogni file."),
    ("alphabet", "en", "A B C D E F G H I J K L M N O P."),
    ("pipeline", "en-us", "Ingest, train, evaluate, export. Then generate files on a schedule."),
]


def audio() -> None:
    out = RAW / "audio"
    for i, (name, voice, text) in enumerate(SENTENCES):
        wav = subprocess.run(["espeak-ng", "-v", voice, "-s", "150", "--stdout", text],
                             check=True, capture_output=True).stdout
        kind = ["wav", "wav", "wav", "wav", "flac", "ogg", "mp3", "wav", "flac", "mp3"][i]
        dest = out / f"{name}.{kind}"
        if kind == "wav":
            dest.write_bytes(wav)
        else:
            codec = {"flac": "flac", "ogg": "libvorbis", "mp3": "libmp3lame"}[kind]
            subprocess.run(["ffmpeg", "-loglevel", "error", "-y", "-i", "-", "-ac", "1", "-ar", "16000",
                            "-c:a", codec, str(dest)], input=wav, check=True)


def clip(image: Path, dest: Path, codec: str, frames: int = 24, size: int = 96, fps: int = 12) -> None:
    """A slow pan-and-zoom over a real photograph."""
    im = Image.open(image).convert("RGB")
    W, H = im.size
    with av.open(str(dest), "w") as c:
        s = c.add_stream(codec, rate=fps)
        s.width = s.height = size
        s.pix_fmt = "yuv420p" if codec != "mjpeg" else "yuvj420p"
        for k in range(frames):
            z = 0.9 - 0.3 * k / frames
            cw, ch = int(W * z), int(H * z)
            x0 = int((W - cw) * k / frames)
            y0 = int((H - ch) * (0.5 + 0.3 * np.sin(k / 4)))
            crop = im.crop((x0, y0, x0 + cw, y0 + ch)).resize((size, size), Image.Resampling.BILINEAR)
            frame = av.VideoFrame.from_image(crop)
            for p in s.encode(frame):
                c.mux(p)
        for p in s.encode():
            c.mux(p)


def video(src: Path) -> None:
    sk = src / "sk/skimage/data"
    out = RAW / "video"
    clip(sk / "astronaut.png", out / "astronaut_pan.mp4", "libx264")
    clip(sk / "coffee.png", out / "coffee_pan.webm", "libvpx-vp9", frames=16)
    clip(sk / "chelsea.png", out / "chelsea_pan.avi", "mjpeg", frames=12, size=64)
    clip(sk / "rocket.jpg", out / "rocket_pan.mkv", "libx264", frames=20)
    clip(sk / "motorcycle_left.png", out / "motorcycle_pan.mp4", "libx264", frames=20)
    # A raw Y4M clip, already canonical.
    tmp = out / "_tmp.mp4"
    clip(sk / "hubble_deep_field.jpg", tmp, "libx264", frames=10, size=32)
    subprocess.run(["ffmpeg", "-loglevel", "error", "-y", "-i", str(tmp), "-pix_fmt", "yuv420p",
                    str(out / "hubble_pan.y4m")], check=True)
    tmp.unlink()


def text_and_binary(src: Path) -> None:
    stdlib = Path(sysconfig.get_paths()["stdlib"])
    t = RAW / "text"
    for name in ["textwrap.py", "colorsys.py", "bisect.py", "this.py", "fnmatch.py", "shlex.py",
                 "heapq.py", "calendar.py", "difflib.py", "string.py", "glob.py", "csv.py", "random.py",
                 "json/decoder.py", "html/__init__.py", "pprint.py", "getopt.py", "fractions.py"]:
        dest = name.replace("/__init__", "_init").replace("/", "_")
        shutil.copy(stdlib / name, t / (dest.replace(".py", "_py.txt") if name == "this.py" else dest))
    shutil.copy("/usr/share/common-licenses/Apache-2.0", t / "Apache-2.0.txt")
    shutil.copy("/usr/share/common-licenses/GPL-3", t / "GPL-3.txt")
    shutil.copy(stdlib / "LICENSE.txt", t / "python_LICENSE.txt")
    shutil.copy(src / "mpl/matplotlib/mpl-data/sample_data/Stocks.csv", t / "Stocks.csv")
    shutil.copy(src / "mpl/matplotlib/mpl-data/sample_data/embedding_in_wx3.xrc", t / "embedding_in_wx3.xml")
    shutil.copy(src / "sk/skimage/data/README.txt", t / "skimage_README.txt")
    b = RAW / "binary"
    shutil.copy("/usr/bin/true", b / "true.elf")
    shutil.copy("/usr/bin/base64", b / "base64.elf")
    shutil.copy("/usr/bin/env", b / "env.elf")
    shutil.copy("/usr/bin/sleep", b / "sleep.elf")
    dyn = Path(os.__file__).parent / "lib-dynload"
    for mod in ("_bisect", "_json", "_random", "_heapq"):
        shutil.copy(next(dyn.glob(f"{mod}.*.so")), b / f"{mod}.so")
    with zipfile.ZipFile(b / "stdlib_sample.zip", "w", zipfile.ZIP_DEFLATED) as z:
        for name in ("abc.py", "keyword.py", "opcode.py"):
            z.write(stdlib / name, name)
    code = compile((stdlib / "colorsys.py").read_text(), "colorsys.py", "exec")
    (b / "colorsys.pyc").write_bytes(importlib.util.MAGIC_NUMBER + b"\0" * 12 + marshal.dumps(code))
    shutil.copy(src / "mpl/matplotlib/mpl-data/sample_data/eeg.dat", b / "eeg.dat")
    shutil.copy(src / "mpl/matplotlib/mpl-data/sample_data/s1045.ima.gz", b / "s1045.ima.gz")
    shutil.copy(src / "mpl/matplotlib/mpl-data/sample_data/goog.npz", b / "goog.npz")


PAIRS = {"upper": 500, "hex": 500, "gray": 400, "ascii": 400}  # pairs made of each conversion


def _text_segments(rng: np.random.Generator) -> list[bytes]:
    """Lines and short paragraphs (1 to 6 consecutive lines, at most 256 bytes) of the corpus's
    text files, each with a lower-case letter (else its upper case is itself)."""
    from obf.formats.sniff import sniff

    out = set()
    for path in sorted((RAW / "text").iterdir()):
        lines = path.read_bytes().splitlines(keepends=True)
        i = 0
        while i < len(lines):
            n = int(rng.integers(1, 7))
            seg = b"".join(lines[i:i + n])
            while len(seg) > 256 and n > 1:
                n -= 1
                seg = b"".join(lines[i:i + n])
            i += n
            if 8 <= len(seg) <= 256 and seg.upper() != seg and sniff(seg).modality == "text":
                out.add(seg)
    return sorted(out)


def _binary_chunks(rng: np.random.Generator, count: int) -> list[bytes]:
    """Chunks of 16 to 128 bytes of the corpus's binaries (executables, extension modules, a zip,
    NumPy and MRI data) that obf sniffs as binary."""
    from obf.formats.sniff import sniff

    blobs = [p.read_bytes() for p in sorted((RAW / "binary").iterdir())]
    out: set[bytes] = set()
    while len(out) < count:
        blob = blobs[int(rng.integers(len(blobs)))]
        n = int(rng.integers(16, 129))
        at = int(rng.integers(0, len(blob) - n))
        chunk = blob[at:at + n]
        if sniff(chunk).modality == "binary":
            out.add(chunk)
    return sorted(out)


def _image_crops(rng: np.random.Generator, count: int) -> list[bytes]:
    """PNGs of 4x4 to 16x16 pixels: random crops (a tenth of the picture to all of it) of the
    corpus's pictures, resized; three in four crops that come out gray are passed over (half the
    pictures are gray, and their `gray` conversion is the picture itself)."""
    import io

    pictures = []
    for p in sorted((RAW / "image").iterdir()):
        with Image.open(p) as im:
            pictures.append(im.convert("RGB"))
    out: set[bytes] = set()
    while len(out) < count:
        im = pictures[int(rng.integers(len(pictures)))]
        side = rng.uniform(0.1, 1.0)
        cw, ch = max(4, int(im.width * side)), max(4, int(im.height * side))
        x, y = int(rng.integers(0, im.width - cw + 1)), int(rng.integers(0, im.height - ch + 1))
        w, h = (int(v) for v in rng.integers(4, 17, 2))
        crop = im.crop((x, y, x + cw, y + ch)).resize((w, h), Image.Resampling.LANCZOS)
        r, g, b = (np.asarray(c) for c in crop.split())
        if (r == g).all() and (g == b).all() and rng.random() < 0.75:
            continue
        buf = io.BytesIO()
        crop.save(buf, format="PNG")
        out.add(buf.getvalue())
    return sorted(out)


def pairs() -> None:
    """The built-in conversions (`obf.formats.conversions`) made from the corpus's own material, as
    pairs/<conversion>/inputs/NNNN.<ext> -> pairs/<conversion>/targets/NNNN.<ext>: `upper` from
    lines and paragraphs of its text, `hex` from chunks of its binaries, `gray` and `ascii` from
    small crops of its pictures (distinct crops for each). Deterministic (seeded)."""
    from obf.formats.conversions import convert

    root = RAW / "pairs"
    for name in PAIRS:  # only what this function writes; anything else under pairs/ stays
        shutil.rmtree(root / name, ignore_errors=True)
    rng = np.random.default_rng(2026)
    segments = _text_segments(rng)
    picks = [segments[i] for i in sorted(rng.choice(len(segments), PAIRS["upper"], replace=False))]
    inputs = {"upper": (picks, ".txt", ".txt"),
              "hex": (_binary_chunks(rng, PAIRS["hex"]), ".bin", ".txt"),
              "gray": (_image_crops(rng, PAIRS["gray"]), ".png", ".bmp")}
    crops = set(inputs["gray"][0])
    inputs["ascii"] = ([c for c in _image_crops(rng, PAIRS["ascii"] + len(crops)) if c not in crops][:PAIRS["ascii"]],
                       ".png", ".txt")
    for name, (items, in_ext, out_ext) in inputs.items():
        for d in ("inputs", "targets"):
            (root / name / d).mkdir(parents=True)
        for i, data in enumerate(items):
            _, target = convert(name, data)
            (root / name / "inputs" / f"{i:04d}{in_ext}").write_bytes(data)
            (root / name / "targets" / f"{i:04d}{out_ext}").write_bytes(target)


if __name__ == "__main__":
    src = Path(sys.argv[1] if len(sys.argv) > 1 else "/tmp/src")
    for d in ("text", "image", "audio", "video", "binary"):
        (RAW / d).mkdir(parents=True, exist_ok=True)
    if "--only-pairs" not in sys.argv:
        if "--only-text-binary" not in sys.argv:
            images(src)
            audio()
            video(src)
        text_and_binary(src)
    pairs()
