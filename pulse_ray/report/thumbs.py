"""Small images for the report, made once and named by a hash of what they show.

* the LR input at its own size (PNG; the page enlarges it with nearest-neighbour, so its pixels show),
* its bicubic enlargement to the size the SR is shown at (JPEG),
* the SR image and each restart, at most :data:`THUMB` pixels wide (JPEG).

A thumbnail's name is a hash of its source bytes and how it is made, so a re-run finds the
ones it made before and makes only the new ones.
"""

from __future__ import annotations

import hashlib
import io

from PIL import Image

from pulse_ray.io import images

__all__ = ["THUMB", "thumb_name", "make_thumb"]

THUMB = 128  # the largest side a thumbnail has (SR images larger than this are reduced)
JPEG_QUALITY = 88
_VERSION = b"1"  # part of every name: change it when thumbnails are made differently


def thumb_name(kind: str, data: bytes, side: int) -> str:
    """``thumbs/<hash>.<ext>`` for a source image ``data`` made into a ``kind`` thumbnail."""
    h = hashlib.sha1()
    for part in (_VERSION, kind.encode(), str(side).encode(), data):
        h.update(len(part).to_bytes(8, "little"))
        h.update(part)
    ext = "png" if kind == "lr" else "jpg"
    return f"thumbs/{h.hexdigest()[:24]}.{ext}"


def make_thumb(kind: str, data: bytes, side: int) -> bytes:
    """Encode the thumbnail of ``kind`` ('lr', 'bicubic' or 'sr') from source image bytes.

    ``side``: the size the SR is shown at (the bicubic enlargement's size; the SR's largest side).
    Raises :class:`pulse_ray.io.images.BadInput` for an image that cannot be decoded safely.
    """
    arr = images.decode_image(data, where=kind)
    img = Image.fromarray(arr, "RGB")
    if kind == "lr":
        if max(img.size) > THUMB:
            img.thumbnail((THUMB, THUMB), Image.Resampling.BOX)
        return _encode(img, "PNG")
    if kind == "bicubic":
        w, h = img.size
        scale = side / max(w, h)
        img = img.resize((max(1, round(w * scale)), max(1, round(h * scale))), Image.Resampling.BICUBIC)
        return _encode(img, "JPEG")
    if kind == "sr":
        if max(img.size) > side:
            img.thumbnail((side, side), Image.Resampling.LANCZOS)
        return _encode(img, "JPEG")
    raise ValueError(f"unknown thumbnail kind {kind!r}")


def _encode(img: Image.Image, fmt: str) -> bytes:
    buf = io.BytesIO()
    if fmt == "JPEG":
        img.save(buf, format="JPEG", quality=JPEG_QUALITY, optimize=True)
    else:
        img.save(buf, format="PNG", optimize=True)
    return buf.getvalue()
