"""Decode / validate / encode LR and SR images, and map ids to safe relative paths.

Everything here raises :class:`BadInput` (a ``ValueError``) with a precise,
human-readable reason; the job turns it into a ``failed`` metadata row.
"""

from __future__ import annotations

import io
import re
import unicodedata
import warnings

import numpy as np
from PIL import Image, ImageOps

from pulse_ray.sizes import check_lr_size

__all__ = [
    "BadInput",
    "UnsafeId",
    "MAX_ID_BYTES",
    "DEFAULT_MAX_PIXELS",
    "DEFAULT_MAX_BYTES",
    "ALLOWED_FORMATS",
    "IMAGE_SUFFIXES",
    "safe_relpath",
    "path_clashes",
    "decode_image",
    "lr_factor",
    "encode_png",
    "to_uint8_hwc",
]

MAX_ID_BYTES = 512
MAX_SEGMENT_BYTES = 250  # file names over 255 bytes cannot be created; room is left for ".png"
# An LR input is small (<= the generator resolution). Anything over these limits is refused
# from the header alone, before a single pixel is decoded.
DEFAULT_MAX_PIXELS = 4096 * 4096
DEFAULT_MAX_BYTES = 64 * 1024 * 1024
ALLOWED_FORMATS = ("PNG", "JPEG", "WEBP", "BMP", "TIFF")
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp", ".bmp", ".tif", ".tiff")

_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f]")
_DRIVE = re.compile(r"^[A-Za-z]:")


class BadInput(ValueError):
    """One input row cannot be processed; the message says exactly why."""


class UnsafeId(BadInput):
    """An id that cannot name a file under OUT safely."""


# ----------------------------------------------------------------------------- ids


def safe_relpath(row_id) -> str:
    """The relative POSIX path (without suffix) an id maps to under ``OUT/sr/``.

    A ``/`` makes subfolders (as in S3 keys). Refused, with the reason: non-string,
    empty, control characters, more than 512 bytes (UTF-8), absolute (``/x``,
    ``\\x``, ``C:x``), a backslash, an empty / ``.`` / ``..`` segment, or a
    segment longer than 255 bytes. The result can never leave its base folder.
    """
    if not isinstance(row_id, str):
        raise UnsafeId(f"unsafe id {row_id!r}: not a string")
    if row_id == "":
        raise UnsafeId("unsafe id '': empty")
    shown = repr(row_id if len(row_id) <= 80 else row_id[:77] + "...")
    if _CONTROL.search(row_id):
        raise UnsafeId(f"unsafe id {shown}: contains control characters")
    try:
        nbytes = len(row_id.encode("utf-8"))
    except UnicodeEncodeError:
        raise UnsafeId(f"unsafe id {shown}: not valid Unicode (lone surrogate)") from None
    if nbytes > MAX_ID_BYTES:
        raise UnsafeId(f"unsafe id {shown}: {nbytes} bytes, over the {MAX_ID_BYTES}-byte limit")
    if row_id.startswith("/") or _DRIVE.match(row_id):
        raise UnsafeId(f"unsafe id {shown}: absolute path")
    if "\\" in row_id:
        raise UnsafeId(f"unsafe id {shown}: contains a backslash")
    for seg in row_id.split("/"):
        if seg == "":
            raise UnsafeId(f"unsafe id {shown}: empty path segment ('//' or a trailing '/')")
        if seg in (".", ".."):
            raise UnsafeId(f"unsafe id {shown}: contains a {seg!r} path segment")
        if len(seg.encode("utf-8")) > MAX_SEGMENT_BYTES:
            raise UnsafeId(f"unsafe id {shown}: a path segment is over {MAX_SEGMENT_BYTES} bytes")
    return row_id


def _fold(path: str) -> str:
    """How a case- and normalisation-insensitive filesystem (macOS, Windows, SMB) compares names."""
    return unicodedata.normalize("NFC", path).casefold()


_RESTART_FILE = re.compile(r"^(.*)/r[0-9]+\.png$")


def path_clashes(ids, restarts: bool = False) -> list[tuple[str, str, str]]:
    """Pairs of distinct ids that would share a file under ``OUT/sr/`` on some filesystem:
    ``(id, other id, why)``. Two ids clash when their files ``<id>.png`` compare equal once
    case and Unicode normalisation are ignored (``Face`` / ``face``), or when one id's file is
    a folder another id needs (``a`` writes ``a.png``, ``a.png/inner`` needs the folder
    ``a.png``); with ``restarts`` (``OUT/sr/<id>/r<k>.png``), when an id needs a restart image
    of another id as its folder. Unsafe ids are left out (they fail as rows)."""
    files: dict[str, str] = {}  # folded "<rel>.png" -> first id
    folders: dict[str, str] = {}  # folded folder path -> first id that needs it
    clashes: list[tuple[str, str, str]] = []
    for rid in ids:
        try:
            rel = safe_relpath(rid)
        except UnsafeId:
            continue
        key = _fold(rel) + ".png"
        other = files.setdefault(key, rid)
        if other != rid:
            clashes.append((other, rid, f"both write sr/{rel}.png where case is ignored (macOS, Windows, SMB)"))
        segs = _fold(rel).split("/")
        for k in range(1, len(segs)):
            folders.setdefault("/".join(segs[:k]), rid)
    for key, rid in files.items():
        if key in folders:
            clashes.append((rid, folders[key], f"sr/{rid}.png is a file, and {folders[key]!r} needs it as a folder"))
    if restarts:
        for folder, rid in folders.items():
            m = _RESTART_FILE.match(folder)
            owner = m and files.get(m.group(1) + ".png")
            if owner:
                clashes.append((owner, rid, f"sr/{folder} is a restart image of {owner!r}, and {rid!r} needs it "
                                            "as a folder"))
    return clashes


# ----------------------------------------------------------------------------- decode


def decode_image(
    data: bytes,
    *,
    max_pixels: int = DEFAULT_MAX_PIXELS,
    max_bytes: int = DEFAULT_MAX_BYTES,
    where: str = "",
) -> np.ndarray:
    """Encoded PNG/JPEG/WebP/BMP/TIFF bytes -> ``uint8`` array ``[h, w, 3]`` (RGB).

    The size is checked from the header before decoding (decompression bombs);
    a truncated or corrupt file raises :class:`BadInput`. Grey, palette, 16-bit
    and alpha images are converted to RGB (alpha is dropped); EXIF orientation
    is applied.
    """
    at = f" ({where})" if where else ""
    if data is None or len(data) == 0:
        raise BadInput(f"empty image{at}")
    if len(data) > max_bytes:
        raise BadInput(f"encoded image is {len(data)} bytes, over the {max_bytes}-byte limit{at}")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            img = Image.open(io.BytesIO(data), formats=ALLOWED_FORMATS)
            w, h = img.size
            if w <= 0 or h <= 0:
                raise BadInput(f"image has an empty size {w}x{h}{at}")
            if w * h > max_pixels:
                raise BadInput(
                    f"image refused as a decompression bomb: {w}x{h} = {w * h} pixels, "
                    f"over the {max_pixels}-pixel limit{at}"
                )
            fmt = img.format
            img.load()
    except BadInput:
        raise
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        raise BadInput(f"image refused as a decompression bomb: {exc}{at}") from None
    except Image.UnidentifiedImageError:
        raise BadInput(
            f"not a readable image (expected one of {', '.join(ALLOWED_FORMATS)}){at}"
        ) from None
    except (OSError, SyntaxError, ValueError, EOFError) as exc:
        msg = str(exc) or type(exc).__name__
        if "truncated" in msg.lower():
            raise BadInput(f"truncated image: {msg}{at}") from None
        raise BadInput(f"corrupt image: {msg}{at}") from None
    try:
        img = ImageOps.exif_transpose(img)
    except Exception:  # broken EXIF must not fail an otherwise good image
        pass
    arr = _to_rgb_array(img, fmt)
    return arr


def _to_rgb_array(img: Image.Image, fmt: str | None) -> np.ndarray:
    mode = img.mode
    if mode in ("I;16", "I;16B", "I;16L", "I", "I;16N"):
        a = np.asarray(img, dtype=np.float64)
        top = 65535.0 if a.max(initial=0) > 255 else 255.0
        a = np.clip(a / top * 255.0 + 0.5, 0, 255).astype(np.uint8)
        return np.repeat(a[:, :, None], 3, axis=2)
    if mode == "F":
        a = np.asarray(img, dtype=np.float64)
        a = np.clip(a * (255.0 if a.max(initial=0) <= 1.0 else 1.0) + 0.5, 0, 255).astype(np.uint8)
        return np.repeat(a[:, :, None], 3, axis=2)
    if mode != "RGB":
        img = img.convert("RGBA" if ("A" in mode or "transparency" in img.info) else "RGB")
        if img.mode == "RGBA":
            img = img.convert("RGB")
    return np.ascontiguousarray(np.asarray(img, dtype=np.uint8))


def lr_factor(h: int, w: int, resolution: int) -> int:
    """The power-of-two factor mapping an ``h x w`` LR image to the generator's resolution
    (the rule of :func:`pulse_ray.sizes.check_lr_size`); raises :class:`BadInput` with its message."""
    try:
        return int(check_lr_size(int(h), int(w), int(resolution)))
    except ValueError as exc:
        raise BadInput(str(exc)) from None


# ----------------------------------------------------------------------------- encode


def to_uint8_hwc(image) -> np.ndarray:
    """A ``[C, H, W]`` / ``[H, W, C]`` float tensor or array in [0, 1] (or uint8) -> uint8 HWC."""
    import torch

    if isinstance(image, torch.Tensor):
        image = image.detach().to("cpu", dtype=torch.float32).numpy()
    a = np.asarray(image)
    if a.ndim == 3 and a.shape[0] in (1, 3, 4) and a.shape[-1] not in (1, 3, 4):
        a = np.transpose(a, (1, 2, 0))
    elif a.ndim == 3 and a.shape[0] in (1, 3, 4) and a.shape[-1] in (1, 3, 4) and a.shape[0] < a.shape[-1]:
        a = np.transpose(a, (1, 2, 0))
    if a.dtype != np.uint8:
        a = np.clip(np.nan_to_num(a.astype(np.float32), nan=0.0) * 255.0 + 0.5, 0, 255).astype(np.uint8)
    if a.ndim == 2:
        a = a[:, :, None]
    if a.shape[2] == 1:
        a = np.repeat(a, 3, axis=2)
    if a.shape[2] == 4:
        a = a[:, :, :3]
    return np.ascontiguousarray(a)


def encode_png(image) -> bytes:
    """Image (see :func:`to_uint8_hwc`) -> PNG bytes."""
    buf = io.BytesIO()
    Image.fromarray(to_uint8_hwc(image), "RGB").save(buf, format="PNG")
    return buf.getvalue()
