"""The classical compressors the model is compared with, each at its strongest setting.
"""

from __future__ import annotations

import bz2
import gzip
import lzma


def compressed_sizes(data: bytes) -> dict[str, int]:
    """Compressed size in bytes of `data` under each standard compressor, and `best`, the smallest.

    Whole-file tools as people run them: gzip -9, bz2 -9, xz -9e, zstd -19. Beside them the raw
    streams without their containers (headers, checksums, sizes), which is what a model is fairly
    compared with on small files: raw deflate -9 (`zlib`, wbits -15), raw LZMA2 preset 9e, and a
    zstd -19 frame without checksum, content size or dictionary id. And the strongest classical
    coders: PPMd (variant I, 7-Zip's text method) of order 6 (16 MiB) and of order 32 (256 MiB, as
    7-Zip's ultra setting), and brotli at quality 11 with its largest window (16 MiB). `best` is
    the smallest of all for this file: the strongest peer a user could pick per file, and what
    claims compare with."""
    import zlib

    import brotli
    import pyppmd
    import zstandard

    sizes = {
        "gzip": len(gzip.compress(data, compresslevel=9, mtime=0)),
        "bz2": len(bz2.compress(data, compresslevel=9)),
        "xz": len(lzma.compress(data, preset=9 | lzma.PRESET_EXTREME)),
        "zstd": len(zstandard.ZstdCompressor(level=19).compress(data)),
        "deflate_raw": len(zlib.compress(data, 9, wbits=-15)),
        "lzma2_raw": len(lzma.compress(data, format=lzma.FORMAT_RAW,
                                       filters=[{"id": lzma.FILTER_LZMA2, "preset": 9 | lzma.PRESET_EXTREME}])),
        "zstd_raw": len(zstandard.ZstdCompressor(level=19, write_checksum=False, write_content_size=False,
                                                 write_dict_id=False).compress(data)),
        "ppmd6": len(pyppmd.compress(data, max_order=6, mem_size=16 << 20)),
        "ppmd32": len(pyppmd.compress(data, max_order=32, mem_size=256 << 20)),
        "brotli": len(brotli.compress(data, quality=11, lgwin=24)),
    }
    sizes["best"] = min(sizes.values())
    return sizes
