"""Rebuild the embedded sample corpus in data/raw/ from material that ships in PyPI/Debian packages.

This script is provenance, not part of the pipeline: it documents exactly how every file in
data/raw/ was made (see data/raw/SOURCES.md). It needs Debian's espeak-ng and ffmpeg, Pillow, PyAV
and matplotlib, and under SRC: the scikit-image, matplotlib and pygame wheels
(`pip download --no-deps -d SRC/whl scikit-image==0.26.0 matplotlib==3.11.2 pygame==2.6.1`), the first two
unpacked as SRC/sk and SRC/mpl and pygame's examples as SRC/pg, and the Debian packages
doc-debian, debian-policy, developers-reference, tango-icon-theme, sound-icons and lbreakout2-data
(`apt-get download`, then `dpkg-deb -x PKG.deb SRC/deb/PKG`). Run: python data/build_sample_corpus.py /tmp/src

The broader material alone (the folders under each modality's folder): `--only-broader`.

The paired examples (`pairs/`) are made from the corpus's own files by `pairs()`, which needs
nothing else: python data/build_sample_corpus.py --only-pairs
"""

from __future__ import annotations

import hashlib
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
        # x264's macroblock tree made other bytes now and then, so a rebuild could not match data/raw
        s = c.add_stream(codec, rate=fps, options={"x264-params": "mbtree=0"} if codec == "libx264" else {})
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


# The broader material (#28): every modality gets what its first files lacked -- prose and logs,
# icons with alpha and screens, effects and music, camera and screen video, executables, bytecode,
# databases and archives. It goes in a folder per kind under each modality's folder, so `pairs()`
# (which reads only the files directly in text/, binary/ and image/) makes the same pairs as before.
DEB = ["doc-debian", "debian-policy", "developers-reference", "tango-icon-theme", "sound-icons", "lbreakout2-data"]


def _put(dest: Path, data: bytes) -> Path:
    dest.parent.mkdir(parents=True, exist_ok=True)
    dest.write_bytes(data)
    return dest


def _copy(src: Path | str, dest: Path) -> None:
    dest.parent.mkdir(parents=True, exist_ok=True)
    shutil.copy(src, dest)


def broader_text(src: Path) -> None:
    """Prose (Debian's policy manual in reST, its developers' reference in HTML, the social
    contract and constitution) and logs (this build machine's dpkg and apt logs, cut at 96 KiB)."""
    import gzip

    t = RAW / "text"
    pol = src / "deb/debian-policy/usr/share/doc/debian-policy/policy.html/_sources"
    for f in sorted(pol.glob("*.rst.txt")):
        _put(t / "prose" / f"policy_{f.name.removesuffix('.rst.txt')}.rst", f.read_bytes())
    ref = src / "deb/developers-reference/usr/share/developers-reference"
    for name in ("scope", "new-maintainer", "developer-duties", "l10n", "beyond-pkging", "tools", "resources",
                 "best-pkging-practices", "pkgs"):
        _put(t / "prose" / f"devref_{name}.html", (ref / f"{name}.html").read_bytes())
    doc = src / "deb/doc-debian/usr/share/doc/debian"
    for name in ("social-contract.txt.gz", "constitution.txt.gz", "bug-reporting.txt.gz", "mailing-lists.txt.gz",
                 "bug-maint-info.txt.gz", "debian-manifesto.gz"):
        text = gzip.decompress((doc / name).read_bytes())
        _put(t / "prose" / name.replace(".txt.gz", ".txt").replace(".gz", ".txt"), text)
    for log in ("/var/log/dpkg.log", "/var/log/apt/history.log", "/var/log/apt/term.log", "/var/log/alternatives.log"):
        _put(t / "logs" / Path(log).name, Path(log).read_bytes()[:96 * 1024])


def broader_images(src: Path) -> None:
    """Icons with alpha (Tango, matplotlib's toolbar), sprites and photos not used before (pygame's
    examples, scikit-image), and screens rendered here (plots, a terminal)."""
    sk, img = src / "sk/skimage/data", RAW / "image"
    tango = src / "deb/tango-icon-theme/usr/share/icons/Tango"
    for size in ("16x16", "32x32"):
        for kind in ("apps", "devices", "places", "status", "mimetypes"):
            for f in sorted((tango / size / kind).glob("*.png"))[:4]:
                _copy(f, img / "icons" / f"tango_{size}_{f.name}")
    for f in sorted((src / "mpl/matplotlib/mpl-data/images").glob("*_large.png"))[:6]:
        _copy(f, img / "icons" / f"mpl_{f.name}")
    pg = src / "pg/pygame/examples/data"
    for name in ("alien1.png", "chimp.png", "fist.png", "city.png", "liquid.bmp", "asprite.bmp", "scarlet.webp",
                 "danger.gif", "midikeys.png"):
        _copy(pg / name, img / "sprites" / f"pygame_{name}")
    for name, side in (("logo.png", 128), ("color.png", 128), ("grass.png", 128), ("microaneurysms.png", 128),
                       ("motorcycle_right.png", 160), ("phantom.png", 128), ("clock_motion.png", 128),
                       ("chessboard_RGB.png", 96)):
        im = Image.open(sk / name)
        im.thumbnail((side, side), Image.Resampling.LANCZOS)
        (img / "photos").mkdir(parents=True, exist_ok=True)
        im.save(img / "photos" / name)
    screens(img / "screens")


def _pyplot():
    """matplotlib.pyplot on the file-only Agg backend (no display here)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def screens(out: Path) -> None:
    """Screens rendered here: three matplotlib figures (a line plot, bars, an image with a colour
    bar) and a terminal showing the start of a Python module."""
    plt = _pyplot()

    out.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(28)
    x = np.linspace(0, 10, 200)
    fig, ax = plt.subplots(figsize=(3.2, 2.4), dpi=100)
    ax.plot(x, np.sin(x), label="sin")
    ax.plot(x, np.cos(x) * np.exp(-x / 8), label="damped cos")
    ax.legend()
    ax.set_title("signals")
    fig.savefig(out / "plot_lines.png")
    plt.close(fig)
    fig, ax = plt.subplots(figsize=(3.2, 2.4), dpi=100)
    ax.bar(["text", "image", "audio", "video", "binary"], rng.uniform(1, 8, 5), color="tab:green")
    ax.set_ylabel("bits per byte")
    fig.savefig(out / "plot_bars.png")
    plt.close(fig)
    fig, ax = plt.subplots(figsize=(3.2, 2.4), dpi=100)
    im = ax.imshow(np.outer(np.sin(x[:64]), np.cos(x[:48])), cmap="viridis")
    fig.colorbar(im)
    fig.savefig(out / "plot_field.png")
    plt.close(fig)
    from PIL import ImageDraw

    shot = Image.new("RGB", (320, 200), (30, 30, 36))
    draw = ImageDraw.Draw(shot)
    stdlib = Path(sysconfig.get_paths()["stdlib"])
    for i, line in enumerate((stdlib / "queue.py").read_text().splitlines()[:16]):
        draw.text((6, 4 + 12 * i), line[:52], fill=(200, 220, 200))
    shot.save(out / "terminal.png")


def broader_audio(src: Path) -> None:
    """Effects and short instrument phrases (Debian's sound-icons and lbreakout2 sounds) and music
    and effects from pygame's examples."""
    a = RAW / "audio"
    icons = src / "deb/sound-icons/usr/share/sounds/sound-icons"
    for f in sorted(p for p in icons.glob("*.wav") if not p.is_symlink())[:14]:
        _copy(f, a / "effects" / f"icons_{f.name}")
    lb = src / "deb/lbreakout2-data/usr/share/games/lbreakout2/sounds"
    for f in sorted(lb.glob("*.wav"))[::3]:
        _copy(f, a / "effects" / f"lbreakout_{f.name}")
    pg = src / "pg/pygame/examples/data"
    for name in ("house_lo.ogg", "secosmic_lo.wav"):
        _copy(pg / name, a / "music" / f"pygame_{name}")
    for name in ("boom.wav", "punch.wav", "whiff.wav", "car_door.wav"):
        _copy(pg / name, a / "effects" / f"pygame_{name}")


def broader_video(src: Path) -> None:
    """Camera video (pygame's MPEG-1 clip; hand-held pans over photographs not used for video
    before) and screen video rendered here (a plot drawn point by point, a terminal scrolling)."""
    v, sk = RAW / "video", src / "sk/skimage/data"
    _copy(src / "pg/pygame/examples/data/blue.mpg", v / "camera" / "pygame_blue.mpg")
    clip(sk / "coins.png", v / "camera" / "coins_pan.mp4", "libx264", frames=20, size=64)
    clip(sk / "grass.png", v / "camera" / "grass_pan.webm", "libvpx-vp9", frames=16, size=64)
    clip(sk / "microaneurysms.png", v / "camera" / "retina_pan.mp4", "libx264", frames=16, size=64)
    (v / "screen").mkdir(parents=True, exist_ok=True)
    _screen_clip(v / "screen" / "plot_drawing.mp4", _plot_frames())
    _screen_clip(v / "screen" / "terminal_scroll.mp4", _terminal_frames())


def _plot_frames() -> list[Image.Image]:
    import io

    plt = _pyplot()

    x = np.linspace(0, 6, 120)
    frames = []
    for k in range(1, 17):
        fig, ax = plt.subplots(figsize=(1.6, 1.6), dpi=60)
        ax.set_xlim(0, 6)
        ax.set_ylim(-1.1, 1.1)
        ax.plot(x[: k * 7], np.sin(2 * x[: k * 7]))
        buf = io.BytesIO()
        fig.savefig(buf, format="png")
        plt.close(fig)
        frames.append(Image.open(io.BytesIO(buf.getvalue())).convert("RGB"))
    return frames


def _terminal_frames() -> list[Image.Image]:
    from PIL import ImageDraw

    lines = (Path(sysconfig.get_paths()["stdlib"]) / "sched.py").read_text().splitlines()
    frames = []
    for k in range(16):
        im = Image.new("RGB", (96, 96), (20, 20, 24))
        d = ImageDraw.Draw(im)
        for i, line in enumerate(lines[k: k + 8]):
            d.text((2, 2 + 11 * i), line[:16], fill=(190, 230, 190))
        frames.append(im)
    return frames


def _screen_clip(dest: Path, frames: list[Image.Image], fps: int = 8) -> None:
    with av.open(str(dest), "w") as c:
        s = c.add_stream("libx264", rate=fps)
        s.width, s.height = (d - d % 2 for d in frames[0].size)
        s.pix_fmt = "yuv420p"
        for im in frames:
            for p in s.encode(av.VideoFrame.from_image(im.crop((0, 0, s.width, s.height)))):
                c.mux(p)
        for p in s.encode():
            c.mux(p)


def broader_binary(src: Path) -> None:
    """Executables (coreutils), extension modules (pygame), CPython bytecode compiled here,
    SQLite databases written here from corpus material, and archives (tar.gz, tar.xz, stored zip)."""
    import io
    import py_compile
    import tarfile
    import tempfile

    b = RAW / "binary"
    for name in ("cat", "head", "wc", "tr", "uniq", "sort"):
        _copy(f"/usr/bin/{name}", b / "exec" / f"{name}.elf")
    with zipfile.ZipFile(next((src / "whl").glob("pygame-*.whl"))) as z:
        for mod in ("mask", "transform"):
            name = next(n for n in z.namelist() if n.startswith(f"pygame/{mod}.cpython") and n.endswith(".so"))
            _put(b / "exec" / f"pygame_{mod}.so", z.read(name))
    stdlib = Path(sysconfig.get_paths()["stdlib"])
    with tempfile.TemporaryDirectory() as tmp:
        for name in ("argparse.py", "queue.py", "sched.py", "statistics.py", "tokenize.py", "dataclasses.py"):
            pyc = Path(tmp) / (name + "c")
            py_compile.compile(str(stdlib / name), cfile=str(pyc), doraise=True,
                               invalidation_mode=py_compile.PycInvalidationMode.CHECKED_HASH)
            _put(b / "bytecode" / pyc.name, pyc.read_bytes())
    db_dir = b / "db"
    db_dir.mkdir(parents=True, exist_ok=True)
    mpl = src / "mpl/matplotlib/mpl-data/sample_data"
    _sqlite(db_dir / "stocks.sqlite", "CREATE TABLE quote (date TEXT, open REAL, high REAL, low REAL, close REAL, "
            "volume INTEGER, adj_close REAL)", _csv_rows(mpl / "msft.csv"))
    words: dict[str, int] = {}
    for f in sorted((RAW / "text" / "prose").glob("policy_*.rst")):
        for w in f.read_text(errors="replace").lower().split():
            w = w.strip(".,;:()[]`'\"*")
            if w.isalpha():
                words[w] = words.get(w, 0) + 1
    _sqlite(db_dir / "words.sqlite", "CREATE TABLE word (word TEXT PRIMARY KEY, count INTEGER)",
            sorted(words.items()))
    icons = sorted((RAW / "image" / "icons").glob("*.png"))
    _sqlite(db_dir / "icons.sqlite", "CREATE TABLE icon (name TEXT, size INTEGER, png BLOB)",
            [(p.name, p.stat().st_size, p.read_bytes()) for p in icons])
    arc = b / "archives"
    arc.mkdir(parents=True, exist_ok=True)
    doc = RAW / "text" / "prose"
    for dest, mode in ((arc / "social_contract_docs.tar.gz", "w:gz"), (arc / "policy_appendices.tar.xz", "w:xz")):
        picks = sorted(doc.glob("*.txt"))[:3] if mode == "w:gz" else sorted(doc.glob("policy_ap-*.rst"))[:4]
        buf = io.BytesIO()
        with tarfile.open(fileobj=buf, mode=mode, format=tarfile.USTAR_FORMAT) as tar:
            for p in picks:
                info = tar.gettarinfo(str(p), arcname=p.name)
                info.mtime, info.uid, info.gid, info.uname, info.gname = 0, 0, 0, "", ""
                with p.open("rb") as fh:
                    tar.addfile(info, fh)
        dest.write_bytes(buf.getvalue())
    with zipfile.ZipFile(arc / "icons_stored.zip", "w", zipfile.ZIP_STORED) as z:
        for p in sorted((RAW / "image" / "icons").glob("tango_16x16_*.png")):
            z.writestr(zipfile.ZipInfo(p.name, (1980, 1, 1, 0, 0, 0)), p.read_bytes())


def _csv_rows(path: Path) -> list[tuple]:
    import csv

    with path.open() as fh:
        rows = list(csv.reader(fh))[1:]
    return [tuple(r) for r in rows if len(r) == 7]


def _sqlite(path: Path, schema: str, rows: list[tuple]) -> None:
    import sqlite3

    path.unlink(missing_ok=True)
    with sqlite3.connect(path) as db:
        db.execute(schema)
        n = schema.split("(", 1)[1].count(",") + 1
        table = schema.split()[2]
        db.executemany(f"INSERT INTO {table} VALUES ({', '.join('?' * n)})", rows)
    db.close()


def broader(src: Path) -> None:
    for sub in ("text/prose", "text/logs", "image/icons", "image/sprites", "image/photos", "image/screens",
                "audio/effects", "audio/music", "video/camera", "video/screen", "binary/exec", "binary/bytecode",
                "binary/db", "binary/archives"):
        shutil.rmtree(RAW / sub, ignore_errors=True)  # only what this function writes
    broader_text(src)
    broader_images(src)
    broader_audio(src)
    broader_video(src)
    broader_binary(src)
    seen: set[bytes] = set()
    for sub in ("text", "image", "audio", "video", "binary"):  # a package's aliases (symlinks, copies): one each
        for f in sorted(p for p in (RAW / sub).rglob("*") if p.is_file() and p.parent != RAW / sub):
            digest = hashlib.sha256(f.read_bytes()).digest()
            if digest in seen:
                f.unlink()
            seen.add(digest)



PAIRS = {"upper": 500, "hex": 500, "gray": 400, "ascii": 400}  # pairs made of each conversion


def _text_segments(rng: np.random.Generator) -> list[bytes]:
    """Lines and short paragraphs (1 to 6 consecutive lines, at most 256 bytes) of the corpus's
    text files, each with a lower-case letter (else its upper case is itself)."""
    from obf.formats.sniff import sniff

    out = set()
    for path in sorted(p for p in (RAW / "text").iterdir() if p.is_file()):
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

    blobs = [p.read_bytes() for p in sorted((RAW / "binary").iterdir()) if p.is_file()]
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
    for p in sorted(q for q in (RAW / "image").iterdir() if q.is_file()):
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
    if "--only-broader" in sys.argv:
        broader(src)
    elif "--only-pairs" in sys.argv:
        pairs()
    else:
        if "--only-text-binary" not in sys.argv:
            images(src)
            audio()
            video(src)
        text_and_binary(src)
        broader(src)
        pairs()
