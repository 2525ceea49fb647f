"""``make-manifest`` and ``downscale``: image folders / prefixes -> manifests / LR images.

Every function takes a ``store`` (:class:`pulse_ray.io.storage.Storage`) for its reads and writes.
"""

from __future__ import annotations

import io
import os
import posixpath
from dataclasses import dataclass, field

import pyarrow as pa

from pulse_ray.io import images, storage
from pulse_ray.io.manifest import write_table

__all__ = ["list_images", "make_manifest", "downscale_images", "ToolResult", "ALIGN_RECIPES"]


@dataclass
class ToolResult:
    written: int = 0
    skipped: list = field(default_factory=list)  # (uri, reason)
    output: str = ""


def list_images(src: str, store: storage.Storage | None = None) -> list[tuple[str, str]]:
    """``(uri, relative posix path)`` of every image under a folder / prefix (or one file)."""
    src = os.fspath(src)
    store = store or storage.Storage()
    uris = store.list_uris(src, suffix=images.IMAGE_SUFFIXES)
    if not uris:
        if store.exists(src) and not store.isdir(src) and src.lower().endswith(images.IMAGE_SUFFIXES):
            return [(src, posixpath.basename(src.replace(os.sep, "/")))]
        return []
    out = []
    if storage.is_s3(src) or src.startswith("file://"):
        base = src.rstrip("/") + "/"
        for u in uris:
            out.append((u, u[len(base):]))
    else:
        root = storage.local_path(src)
        for u in uris:
            out.append((u, os.path.relpath(u, root).replace(os.sep, "/")))
    return out


def _ids_for(rels: list[str]) -> list[str]:
    """Relative path without its extension; with it where two files would collide."""
    stems = [posixpath.splitext(r)[0] for r in rels]
    seen: dict[str, int] = {}
    for s in stems:
        seen[s] = seen.get(s, 0) + 1
    return [s if seen[s] == 1 else r for s, r in zip(stems, rels)]


def _abs_uri(u: str) -> str:
    if storage.is_s3(u) or u.startswith("file://"):
        return u
    return os.path.abspath(u)


ALIGN_RECIPES = ("ffhq", "haar")


def make_manifest(src: str, manifest: str, *, align: str | None = None, lr_size: int | None = None,
                  store: storage.Storage | None = None, crop_face=None, ffhq: dict | None = None):
    """Folder / ``s3://`` prefix of images -> manifest (Parquet).

    Without ``align``: columns ``id, uri`` (absolute paths / URIs; nothing is read).
    ``align="haar"``: each image's face is cropped square and resized to ``lr_size`` px
    (default 16) by ``crop_face(PIL image, size) -> PIL image | None`` (default: the largest
    face by OpenCV's cascade, :func:`pulse_ray.io.align.align_face`); columns ``id, image``
    (PNG bytes) and ``source_uri``. Images without a face are skipped and reported.
    ``align="ffhq"``: every face of every photo, FFHQ-aligned by
    :func:`pulse_ray.photos.align.align_photos` (``ffhq``: its keyword options); one row per face.
    """
    if align not in (None, *ALIGN_RECIPES):
        raise ValueError(f"--align must be one of {', '.join(ALIGN_RECIPES)} (got {align!r})")
    if lr_size is not None and not align:
        raise ValueError("--lr-size only applies with --align")
    if lr_size is not None and lr_size < 1:
        raise ValueError(f"--lr-size must be >= 1 (got {lr_size})")
    if ffhq and align != "ffhq":
        raise ValueError(f"{', '.join(sorted(ffhq))}: only with --align ffhq")
    store = store or storage.Storage()
    if align == "ffhq":
        from pulse_ray.photos.align import align_photos

        return align_photos(src, manifest, lr_size=lr_size or 16, store=store, **(ffhq or {}))
    found = list_images(src, store)
    if not found:
        raise FileNotFoundError(f"no images ({', '.join(images.IMAGE_SUFFIXES)}) under {src}")
    ids = _ids_for([r for _, r in found])
    res = ToolResult(output=str(manifest))
    if align == "haar":
        if crop_face is None:
            from pulse_ray.io.align import align_face as crop_face
        table = _aligned_table(found, ids, lr_size or 16, crop_face, store, res)
    else:
        table = pa.table({"id": pa.array(ids, pa.string()),
                          "uri": pa.array([_abs_uri(u) for u, _ in found], pa.string())})
    write_table(table, manifest, store)
    res.written = table.num_rows
    return res


def _aligned_table(found, ids, size: int, crop_face, store: storage.Storage, res: ToolResult) -> pa.Table:
    """``id, image, source_uri`` of the faces ``crop_face`` finds; the rest go to ``res.skipped``."""
    from PIL import Image

    out_ids, blobs, sources = [], [], []
    for (uri, _), rid in zip(found, ids):
        try:
            arr = images.decode_image(store.read_bytes(uri), where=uri)
            face = crop_face(Image.fromarray(arr, "RGB"), size)
        except Exception as exc:
            res.skipped.append((uri, str(exc)))
            continue
        if face is None:
            res.skipped.append((uri, "no face found"))
            continue
        buf = io.BytesIO()
        face.convert("RGB").save(buf, format="PNG")
        out_ids.append(rid)
        blobs.append(buf.getvalue())
        sources.append(_abs_uri(uri))
    return pa.table({"id": pa.array(out_ids, pa.string()), "image": pa.array(blobs, pa.binary()),
                     "source_uri": pa.array(sources, pa.string())})


def downscale_images(src: str, out: str, factor: int, store: storage.Storage | None = None) -> ToolResult:
    """HR images -> LR images (``pulse_ray.downscale``, the degradation the search
    inverts) at ``OUT/<same relative path>.png``. Images whose sides the factor does
    not divide are skipped and reported."""
    import torch

    import pulse_ray

    if factor < 1:
        raise ValueError(f"--factor must be >= 1 (got {factor})")
    from pulse_ray.search.downscale import check_factor

    try:  # the same for every image: a usage error, not one skipped image after another
        check_factor(factor)
    except ValueError as exc:
        raise ValueError(f"--factor: {exc}") from None
    store = store or storage.Storage()
    found = list_images(src, store)
    if not found:
        raise FileNotFoundError(f"no images ({', '.join(images.IMAGE_SUFFIXES)}) under {src}")
    res = ToolResult(output=str(out))
    for uri, rel in found:
        try:
            arr = images.decode_image(store.read_bytes(uri), where=uri)
            h, w = arr.shape[:2]
            if h % factor or w % factor:
                raise ValueError(f"{w}x{h} is not divisible by factor {factor}")
            hr = torch.from_numpy(arr.copy()).permute(2, 0, 1).float().div(255.0)[None]
            lr = pulse_ray.downscale(hr, factor)[0]
            target = storage.join(out, posixpath.splitext(rel)[0] + ".png")
            store.write_bytes(target, images.encode_png(lr.clamp(0, 1)))
            res.written += 1
        except Exception as exc:
            res.skipped.append((uri, str(exc)))
    return res
