"""Training-set preparation: face photos -> aligned square uint8 tensors.

Sources: a Parquet file with an ``image`` column of encoded photos (like
``../shared/data/faces.parquet``), a local folder of images, or an ``s3://`` prefix of images.
Tight crops (a face found that fills most of the picture) are kept as they are; loosely framed
photos are cropped around the face; photos with no face are dropped.
"""

from __future__ import annotations

import hashlib
import io
import os
from dataclasses import dataclass

import numpy as np
from PIL import Image

from ..io.align import align_face, detect_faces, to_gray_uint8

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp", ".bmp")


@dataclass
class PreparedFaces:
    images: np.ndarray  # [N, size, size, 3] uint8
    ids: list[str]
    held_out: list[str]  # ids kept out of training (faces the generator has never seen)
    dropped: int  # photos without a detectable face


def is_held_out(key: str, share: float) -> bool:
    """Deterministic split on a key (a person's name where known, else the photo id)."""
    h = int.from_bytes(hashlib.sha256(key.encode()).digest()[:8], "big")
    return h / 2**64 < share


def _iter_source(source: str):
    """Yield ``(id, person_or_None, encoded_bytes)`` from a Parquet file, folder or s3:// prefix."""
    if source.endswith(".parquet"):
        import pyarrow.parquet as pq

        pf = pq.ParquetFile(source)
        cols = [c for c in ("id", "person", "image") if c in pf.schema_arrow.names]
        if "image" not in cols:
            raise ValueError(f"{source}: no 'image' column of encoded photos")
        for batch in pf.iter_batches(columns=cols, batch_size=512):
            d = batch.to_pydict()
            n = len(d["image"])
            ids = d.get("id") or [f"row{i}" for i in range(n)]
            persons = d.get("person") or [None] * n
            yield from zip(ids, persons, d["image"])
    elif source.startswith("s3://"):
        from ..io import storage

        for uri in storage.list_uris(source):
            if uri.lower().endswith(IMAGE_SUFFIXES):
                yield uri[len(source):].lstrip("/"), None, storage.read_bytes(uri)
    else:
        if not os.path.isdir(source):
            raise ValueError(f"{source}: not a .parquet file, a folder or an s3:// prefix")
        for root, _, files in sorted(os.walk(source)):
            for name in sorted(files):
                if name.lower().endswith(IMAGE_SUFFIXES):
                    path = os.path.join(root, name)
                    with open(path, "rb") as f:
                        yield os.path.relpath(path, source), None, f.read()


def prepare_faces(source: str, size: int, held_out_share: float = 0.03, limit: int | None = None) -> PreparedFaces:
    """Decode, align and resize every photo of ``source`` to ``size`` x ``size`` RGB."""
    images, ids, held_out, dropped = [], [], [], 0
    for i, (photo_id, person, data) in enumerate(_iter_source(source)):
        if limit is not None and i >= limit:
            break
        if is_held_out(person or photo_id, held_out_share):
            held_out.append(photo_id)
            continue
        face = decode_face(data, size)
        if face is None:  # unreadable, or no face: not training data
            dropped += 1
            continue
        images.append(face)
        ids.append(photo_id)
    if not images:
        raise ValueError(f"{source}: no usable face photos found")
    return PreparedFaces(np.stack(images), ids, held_out, dropped)


def decode_face(data: bytes, size: int) -> np.ndarray | None:
    """Encoded photo -> aligned ``[size, size, 3]`` uint8 face, or None (unreadable, or no face)."""
    try:
        img = Image.open(io.BytesIO(data))
        img.load()
    except Exception:  # any decoder error: this photo is unusable
        return None
    face = _tight_crop(img, size)
    return None if face is None else np.asarray(face, dtype=np.uint8)


def _tight_crop(img: Image.Image, size: int) -> Image.Image | None:
    """Keep a photo whose face fills it; crop a loosely framed one around its face."""
    rgb = img.convert("RGB")
    w, h = rgb.size
    if w == h:
        gray = to_gray_uint8(rgb)
        boxes = detect_faces(gray, min_size=max(8, w // 4))
        if boxes and boxes[0][2] >= 0.45 * w:
            return rgb.resize((size, size), Image.Resampling.LANCZOS)
    return align_face(rgb, size)


def held_out_faces(source: str, size: int, n: int, held_out_share: float = 0.03,
                   skip: int = 0) -> tuple[list[str], np.ndarray]:
    """``n`` photos of ``source`` that training kept out, aligned to ``size`` px, after the first ``skip``.

    Uses the same deterministic split as :func:`prepare_faces`, so these are faces the bundled
    generator has never seen. ``skip`` separates sets: the model card's figures use the first 32,
    choices (of search settings, of which generator to ship) are made on later ones.
    Returns ids and ``[n, size, size, 3]`` uint8 images.
    """
    ids, images, usable = [], [], 0
    for photo_id, person, data in _iter_source(source):
        if not is_held_out(person or photo_id, held_out_share):
            continue
        face = decode_face(data, size)
        if face is not None:
            usable += 1
            if usable <= skip:
                continue
            ids.append(photo_id)
            images.append(face)
            if len(ids) == n:
                break
    if len(ids) < n:
        raise ValueError(f"{source}: only {usable} held-out faces, {skip} skipped and {n} asked for")
    return ids, np.stack(images)
