"""Training-set preparation: face photos -> aligned square uint8 tensors.

Sources: Parquet files with an ``image`` column of encoded photos (like
``../shared/data/utkface.parquet``), local folders of images, or ``s3://`` prefixes of images;
several are given comma-separated. Two framings:

- ``ffhq`` (the bundled generator's): the FFHQ square from dlib's 68 landmarks, scaled by
  ``align_scale`` (:mod:`pulse_ray.photos.ffhq`), the same crop ``make-manifest --align ffhq`` makes;
- ``haar``: tight crops kept as they are, loosely framed photos cropped around OpenCV's face box.

Photos with no face are dropped. Label columns (``age``, ``gender``, ``race``) are kept for
balanced sampling and the evaluation.
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
LABELS = ("age", "gender", "race")


@dataclass
class PreparedFaces:
    images: np.ndarray  # [N, size, size, 3] uint8
    ids: list[str]
    held_out: list[str]  # ids kept out of training (faces the generator has never seen)
    dropped: int  # photos without a detectable face (or grey ones, when colour_only)
    labels: dict = None  # label name -> list (None where a source has no such label), one per kept face


def is_held_out(key: str, share: float) -> bool:
    """Deterministic split on a key (a person's name where known, else the photo id)."""
    h = int.from_bytes(hashlib.sha256(key.encode()).digest()[:8], "big")
    return h / 2**64 < share


def _iter_sources(sources: str):
    """Yield ``{"id", "person", "image", *LABELS}`` rows from comma-separated Parquet files, folders or s3:// prefixes."""
    for source in sources.split(","):
        yield from _iter_source(source.strip())


def _iter_source(source: str):
    if source.endswith(".parquet"):
        import pyarrow.parquet as pq

        pf = pq.ParquetFile(source)
        cols = [c for c in ("id", "person", "image", *LABELS) if c in pf.schema_arrow.names]
        if "image" not in cols:
            raise ValueError(f"{source}: no 'image' column of encoded photos")
        for batch in pf.iter_batches(columns=cols, batch_size=512):
            d = batch.to_pydict()
            n = len(d["image"])
            for i in range(n):
                row = {c: (d[c][i] if c in d else None) for c in ("id", "person", "image", *LABELS)}
                row["id"] = row["id"] or f"row{i}"
                yield row
    elif source.startswith("s3://"):
        from ..io import storage

        for uri in storage.list_uris(source):
            if uri.lower().endswith(IMAGE_SUFFIXES):
                yield {"id": uri[len(source):].lstrip("/"), "person": None, "image": storage.read_bytes(uri)}
    else:
        if not os.path.isdir(source):
            raise ValueError(f"{source}: not a .parquet file, a folder or an s3:// prefix")
        for root, _, files in sorted(os.walk(source)):
            for name in sorted(files):
                if name.lower().endswith(IMAGE_SUFFIXES):
                    path = os.path.join(root, name)
                    with open(path, "rb") as f:
                        yield {"id": os.path.relpath(path, source), "person": None, "image": f.read()}


@dataclass(frozen=True)
class Framing:
    """How faces are cropped: ``ffhq`` (landmarks) at ``scale``, or ``haar``; ``colour`` keeps "any",
    only "colour" or only "grey" photos."""

    recipe: str = "haar"
    scale: float = 1.0
    colour: str = "any"


def prepare_faces(source: str, size: int, held_out_share: float = 0.03, limit: int | None = None,
                  framing: Framing = Framing()) -> PreparedFaces:
    """Decode, align and resize every photo of ``source`` (comma-separated) to ``size`` x ``size`` RGB."""
    images, ids, held_out, dropped = [], [], [], 0
    labels = {k: [] for k in LABELS}
    for i, row in enumerate(_iter_sources(source)):
        if limit is not None and i >= limit:
            break
        if is_held_out(row["person"] or row["id"], held_out_share):
            held_out.append(row["id"])
            continue
        face = decode_face(row["image"], size, framing)
        if face is None:  # unreadable, grey when colour is asked for, or no face: not training data
            dropped += 1
            continue
        images.append(face)
        ids.append(row["id"])
        for k in LABELS:
            labels[k].append(row.get(k))
    if not images:
        raise ValueError(f"{source}: no usable face photos found")
    return PreparedFaces(np.stack(images), ids, held_out, dropped, labels)


def is_grey(img: Image.Image, tolerance: int = 2) -> bool:
    """True for a one-channel image, or an RGB one whose channels agree to ``tolerance`` levels."""
    if img.mode in ("L", "LA", "1", "I", "F", "I;16"):
        return True
    arr = np.asarray(img.convert("RGB"), dtype=np.int16)
    return int(np.abs(arr - arr.mean(axis=2, keepdims=True)).max()) <= tolerance


def decode_face(data: bytes, size: int, framing: Framing = Framing()) -> np.ndarray | None:
    """Encoded photo -> aligned ``[size, size, 3]`` uint8 face, or None (unreadable, or no face)."""
    try:
        img = Image.open(io.BytesIO(data))
        img.load()
    except Exception:  # any decoder error: this photo is unusable
        return None
    if framing.colour != "any" and is_grey(img) != (framing.colour == "grey"):
        return None
    face = _ffhq_crop(img, size, framing.scale) if framing.recipe == "ffhq" else _tight_crop(img, size)
    return None if face is None else np.asarray(face, dtype=np.uint8)


def _ffhq_crop(img: Image.Image, size: int, scale: float) -> Image.Image | None:
    from ..photos.detect import largest_face_landmarks
    from ..photos.ffhq import crop_quad, ffhq_quad

    rgb = img.convert("RGB")
    landmarks = largest_face_landmarks(np.asarray(rgb))
    return None if landmarks is None else crop_quad(rgb, ffhq_quad(landmarks, scale), size)


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
                   skip: int = 0, framing: Framing = Framing()) -> tuple[list[str], np.ndarray]:
    """``n`` photos of ``source`` that training kept out, aligned to ``size`` px, after the first ``skip``.

    Uses the same deterministic split as :func:`prepare_faces`, so these are faces the bundled
    generator has never seen. ``skip`` separates sets: the model card's figures use the first 32,
    choices (of search settings, of which generator to ship) are made on later ones.
    Returns ids and ``[n, size, size, 3]`` uint8 images.
    """
    ids, images, usable = [], [], 0
    for row in _iter_sources(source):
        photo_id = row["id"]
        if not is_held_out(row["person"] or photo_id, held_out_share):
            continue
        face = decode_face(row["image"], size, framing)
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


def held_out_by_group(source: str, size: int, per_group: int, group: str = "race", held_out_share: float = 0.03,
                      framing: Framing = Framing(), skip: int = 0) -> tuple[list[str], np.ndarray, dict]:
    """``per_group`` held-out faces of every value of label ``group``, spread evenly over each group's
    rows in source order (so over ages, where the source is sorted by age); ``skip`` shifts the picks.

    Returns ids, ``[n, size, size, 3]`` uint8 images and their labels (name -> list).
    """
    by_group: dict = {}
    for row in _iter_sources(source):
        key = row.get(group)
        if key is not None and is_held_out(row["person"] or row["id"], held_out_share):
            by_group.setdefault(key, []).append(row)
    ids, images = [], []
    labels = {k: [] for k in LABELS}
    for key in sorted(by_group):
        rows = by_group[key]
        stride = max(1, len(rows) // per_group)
        for k in range(per_group):  # the k-th pick, or the next usable row after it
            for j in range(stride):
                row = rows[(k * stride + skip + j) % len(rows)]
                face = decode_face(row["image"], size, framing)
                if face is not None:
                    ids.append(row["id"])
                    images.append(face)
                    for name in LABELS:
                        labels[name].append(row.get(name))
                    break
    if not ids:
        raise ValueError(f"{source}: no held-out faces with a {group!r} label")
    return ids, np.stack(images), labels
