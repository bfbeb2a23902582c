"""Page codecs of the kdump-compressed format: zlib (``-c``), LZO (``-l``), snappy (``-p``), zstd (``-z``).

makedumpfile compresses each page on its own: zlib with ``compress2`` (a zlib stream),
LZO with ``lzo1x_1_compress`` (raw LZO1X, no header), snappy with ``snappy_compress`` (the raw
format, not framed), zstd with ``ZSTD_compressCCtx`` (one zstd frame). zlib is in the standard
library; the others come from PyPI packages (``python-lzo``, ``python-snappy``, ``zstandard``),
imported the first time a page needs them, so a file without such pages needs none of them.
"""

from __future__ import annotations

import importlib
import zlib
from collections.abc import Callable
from types import ModuleType
from typing import Any, Final

from crash_hotplug.makedumpfile.diskdump import (
    DUMP_DH_COMPRESSED_LZO,
    DUMP_DH_COMPRESSED_SNAPPY,
    DUMP_DH_COMPRESSED_ZLIB,
    DUMP_DH_COMPRESSED_ZSTD,
)

__all__ = ["CODEC_PACKAGES", "CodecFailed", "compress_page", "decompress_page", "load_codec"]

#: codec -> (module, PyPI package)
CODEC_PACKAGES: Final = {
    "lzo": ("lzo", "python-lzo"),
    "snappy": ("snappy", "python-snappy"),
    "zstd": ("zstandard", "zstandard"),
}
_FLAG_CODEC: Final = {
    DUMP_DH_COMPRESSED_ZLIB: "zlib",
    DUMP_DH_COMPRESSED_LZO: "lzo",
    DUMP_DH_COMPRESSED_SNAPPY: "snappy",
    DUMP_DH_COMPRESSED_ZSTD: "zstd",
}
_loaded: dict[str, ModuleType] = {}


class CodecFailed(Exception):
    """The codec rejected the bytes (the caller names the file and the page)."""


class CodecMissing(Exception):
    """The codec's package is not installed; ``args[0]`` is a one-line advice."""


def load_codec(name: str) -> ModuleType:
    """The module of codec ``name``, imported once; :class:`CodecMissing` names the package to install."""
    if name in _loaded:
        return _loaded[name]
    module, package = CODEC_PACKAGES[name]
    try:
        mod = importlib.import_module(module)
    except ImportError:
        raise CodecMissing(
            f"its pages are {name}-compressed and the Python package {package} is not installed "
            f"(pip install {package}, or install crash-hotplug[codecs])"
        ) from None
    _loaded[name] = mod
    return mod


def _codec_of(flags: int) -> str:
    names = [n for bit, n in _FLAG_CODEC.items() if flags & bit]
    if len(names) != 1:
        raise CodecFailed(f"flags {flags:#x} name {len(names)} codecs")
    return names[0]


def decompress_page(flags: int, data: bytes, page_size: int) -> bytes:
    """The page ``data`` holds, compressed as ``flags`` says; exactly ``page_size`` bytes or :class:`CodecFailed`."""
    name = _codec_of(flags)
    try:
        if name == "zlib":
            d = zlib.decompressobj()
            out = d.decompress(data, page_size)
            if d.unconsumed_tail:
                raise CodecFailed("zlib data decompresses to more than a page")
        else:
            mod: Any = load_codec(name)
            if name == "lzo":
                out = mod.decompress(data, False, page_size)
            elif name == "snappy":
                out = mod.uncompress(data)
            else:
                out = mod.ZstdDecompressor().decompress(data, max_output_size=page_size)
    except (CodecFailed, CodecMissing):
        raise
    except Exception as e:  # each codec raises its own error type on bad input
        raise CodecFailed(f"{name}: {e or type(e).__name__}") from None
    if len(out) != page_size:
        raise CodecFailed(f"{name} data decompresses to {len(out)} bytes, not a page of {page_size}")
    return bytes(out)


def compress_page(name: str, page: bytes) -> bytes:
    """``page`` compressed as makedumpfile does with codec ``name`` (for writing test files)."""
    compressors: dict[str, Callable[[bytes], bytes]] = {
        "zlib": lambda b: zlib.compress(b, 1),
        "lzo": lambda b: bytes(load_codec("lzo").compress(b, 1, False)),
        "snappy": lambda b: bytes(load_codec("snappy").compress(b)),
        "zstd": lambda b: bytes(load_codec("zstd").ZstdCompressor(level=1).compress(b)),
    }
    return compressors[name](page)
