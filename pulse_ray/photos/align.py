"""Photos -> one aligned LR face per row: ``make-manifest PHOTOS --align ffhq``.

Every face of a photo is found (or taken from user geometry: ``landmarks`` or ``box``), its FFHQ
quad computed from dlib's 68 landmarks, the quad sampled out of the photo and brought down to the
LR size with the project's downscaler. The work runs as a Ray Data ``map_batches`` stage
(:class:`AlignPhotos`), so a large bucket is aligned on the cluster's CPUs.
"""

from __future__ import annotations

import os
import posixpath
from collections import Counter
from dataclasses import dataclass, field

import numpy as np
import pyarrow as pa
from PIL import Image

from pulse_ray.io import images, storage

from .detect import find_faces
from .ffhq import crop_quad, ffhq_quad, landmarks_in_box

MAX_PHOTO_PIXELS = 80_000_000  # refused from the header: a photo over this is not decoded at all
MAX_PHOTO_BYTES = 256 * 1024 * 1024
DETECT_MAX_SIDE = 4096  # a longer side is detected on a reduced copy (landmarks on the full photo)
UPSAMPLED_MAX_SIDE = 8192  # upsampling for detection stops before the doubled copy's side passes this
CROP_OVERSAMPLE = 4  # the quad is sampled at 4x the LR size, then brought down with pulse_ray's downscaler
DEFAULT_DETECTOR = "hog"
DEFAULT_UPSAMPLE = 2  # see benchmarks/RESULTS.md ("Face detection on photos")
EMBEDDED_OBJECT_STORE = 512 * 1024**2  # the LR faces are small; photos are read by the actors

FACE_FIELDS = [
    pa.field("id", pa.string()),  # <photo id>#<k>
    pa.field("image", pa.binary()),  # LR face, PNG
    pa.field("photo_id", pa.string()),
    pa.field("face", pa.int32()),  # k
    pa.field("source_uri", pa.string()),  # the photo (null when it came inline in a photo table)
    pa.field("source_table", pa.string()),  # the photo table the photo came from (inline photos)
    pa.field("quad", pa.list_(pa.float64())),  # x0 y0 ... x3 y3: top-left, bottom-left, bottom-right, top-right
    pa.field("landmarks", pa.list_(pa.float64())),  # x0 y0 x1 y1 ... in photo pixels
    pa.field("score", pa.float64()),  # detector score (null for user geometry and Haar)
    pa.field("geometry", pa.string()),  # "detected", "landmarks" or "box"
    pa.field("align_scale", pa.float64()),
    pa.field("photo_width", pa.int32()),
    pa.field("photo_height", pa.int32()),
    pa.field("detect_reduction", pa.int32()),  # the photo was detected on a copy this many times smaller
    pa.field("detect_upsample", pa.int32()),  # times that copy was doubled for detection (null: user geometry)
]
FAILED_FIELDS = [
    pa.field("photo_id", pa.string()),
    pa.field("source_uri", pa.string()),
    pa.field("status", pa.string()),
    pa.field("error", pa.string()),
]
_OUT_FIELDS = FACE_FIELDS + [pa.field("status", pa.string()), pa.field("error", pa.string())]


# ----------------------------------------------------------------------------- photos


def open_photo(data: bytes, where: str, max_pixels: int = MAX_PHOTO_PIXELS) -> Image.Image:
    """Encoded photo -> RGB PIL image, EXIF orientation applied; grey, RGBA, palette and 16-bit
    photos converted. A photo over ``max_pixels`` is refused from its header (:class:`images.BadInput`)."""
    arr = images.decode_image(data, max_pixels=max_pixels, max_bytes=MAX_PHOTO_BYTES, where=where)
    return Image.fromarray(arr, "RGB")


def detect_in_photo(img: Image.Image, detector: str, upsample: int) -> tuple[list, int, int]:
    """Faces of a photo as ``(box in photo pixels, score)``, the reduction and the upsampling used.

    A photo whose longer side is over ``DETECT_MAX_SIDE`` is detected on a copy reduced by a whole
    factor; upsampling is cut where the doubled copy would pass ``UPSAMPLED_MAX_SIDE`` (time, memory).
    """
    reduction = max(1, -(-max(img.size) // DETECT_MAX_SIDE))
    small = img.reduce(reduction) if reduction > 1 else img
    while upsample > 0 and max(small.size) << upsample > UPSAMPLED_MAX_SIDE:
        upsample -= 1
    found = find_faces(np.asarray(small), detector, upsample)
    return [(tuple(v * reduction for v in box), score) for box, score in found], reduction, upsample


def user_faces(row: dict) -> list[tuple[str, np.ndarray]] | None:
    """User geometry of a photo-table row: ``landmarks`` (one face of 5 / 68 ``[x, y]`` points or a flat
    list of them, or a list of such faces) or ``box`` (``[left, top, right, bottom]`` or a list of them);
    None where the row gives neither."""
    for kind in ("landmarks", "box"):
        value = row.get(kind)
        if value is None:
            continue
        out = []
        for k, f in enumerate(_faces_of(value, kind)):
            want = (4,) if kind == "box" else (10, 136)
            if f.size not in want or not np.all(np.isfinite(f)):
                what = "left, top, right, bottom" if kind == "box" else "the x, y of 5 or 68 points"
                raise images.BadInput(f"{kind} of face {k}: expected {' or '.join(map(str, want))} finite numbers "
                                      f"({what}), got {f.size}")
            out.append((kind, f.reshape(-1, 2) if kind == "landmarks" else f))
        return out
    return None


def _faces_of(value, kind: str) -> list[np.ndarray]:
    try:
        arr = np.asarray(value, dtype=np.float64)
    except ValueError:  # ragged: faces with different point counts
        return [np.asarray(f, dtype=np.float64).reshape(-1) for f in value]
    if arr.ndim == 1 or arr.ndim == 2 and kind == "landmarks" and arr.shape[1] == 2:
        return [arr.reshape(-1)]
    return [a.reshape(-1) for a in arr]


def lr_face(img: Image.Image, quad: np.ndarray, lr_size: int) -> bytes:
    """The quad of ``img`` as an ``lr_size`` PNG: sampled at 4x, then pulse_ray's downscaler (bicubic, x4)."""
    import torch

    from pulse_ray.search.downscale import downscale

    hr = np.asarray(crop_quad(img, quad, lr_size * CROP_OVERSAMPLE), dtype=np.float32) / 255.0
    lr = downscale(torch.from_numpy(hr).permute(2, 0, 1)[None], CROP_OVERSAMPLE)[0]
    return images.encode_png(lr.clamp(0, 1))


def align_photo(img: Image.Image, *, lr_size: int, scale: float, detector: str = DEFAULT_DETECTOR,
                upsample: int = DEFAULT_UPSAMPLE, geometry: list | None = None) -> list[dict]:
    """The faces of one photo as manifest fields (without ids and sources), biggest detector score first.

    ``geometry`` (from :func:`user_faces`) replaces detection. Raises :class:`images.BadInput` when
    no face is found, or every given face lies outside the photo.
    """
    rgb = np.asarray(img)
    w, h = img.size
    reduction, used = 1, None
    if geometry is None:
        found, reduction, used = detect_in_photo(img, detector, upsample)
        faces = [("detected", box, score) for box, score in found]
        if not faces:
            raise images.BadInput(f"no face found ({detector} detector, photo doubled {used} time(s), on {w}x{h}"
                                  + (f" reduced {reduction}x" if reduction > 1 else "") + ")")
    else:
        faces = [(kind, g, None) for kind, g in geometry]
    out, outside = [], 0
    for kind, g, score in faces:
        lm = g if kind == "landmarks" else landmarks_in_box(rgb, g)
        quad = ffhq_quad(lm, scale)
        centre = quad.mean(0)
        if not (0 <= centre[0] < w and 0 <= centre[1] < h):
            outside += 1
            continue
        out.append(dict(
            image=lr_face(img, quad, lr_size), quad=quad.reshape(-1).tolist(), landmarks=lm.reshape(-1).tolist(),
            score=score, geometry=kind, align_scale=float(scale), photo_width=w, photo_height=h,
            detect_reduction=reduction, detect_upsample=used,
        ))
    if not out:
        raise images.BadInput(f"all {outside} given face(s) lie outside the {w}x{h} photo "
                              f"(the centre of each face's crop is off the picture)")
    return out


# ----------------------------------------------------------------------------- the Ray Data stage


class AlignPhotos:
    """``map_batches`` stage: photo rows (``photo_id``, ``uri`` and/or ``image``, optional
    ``landmarks`` / ``box``, ``source_table``) -> one row per face, or one ``failed`` row per photo.

    A callable class, so each Ray actor loads dlib's models once; photos are read through ``store``.
    """

    def __init__(self, lr_size: int, scale: float, detector: str = DEFAULT_DETECTOR,
                 upsample: int = DEFAULT_UPSAMPLE, store: storage.Storage | None = None):
        from .detect import cnn_detector, hog_detector
        from .ffhq import landmark_model

        self.lr_size, self.scale, self.detector, self.upsample = lr_size, scale, detector, upsample
        self.store = store or storage.Storage()
        landmark_model(68)
        if detector == "hog":
            hog_detector()
        elif detector == "cnn":
            cnn_detector()

    def __call__(self, batch: pa.Table) -> pa.Table:
        rows = []
        for row in batch.to_pylist():
            rows.extend(self.one_photo(row))
        return pa.Table.from_pylist(rows, schema=pa.schema(_OUT_FIELDS))

    def one_photo(self, row: dict) -> list[dict]:
        pid, uri, table = row["photo_id"], row.get("uri"), row.get("source_table")
        where = uri or f"{table} id {pid!r}"
        try:
            data = row.get("image")
            if data is None:
                if not uri:
                    raise images.BadInput("no image: neither 'image' nor 'uri' is set")
                data = self.store.read_bytes(uri)
            img = open_photo(data, where)
            faces = align_photo(img, lr_size=self.lr_size, scale=self.scale, detector=self.detector,
                                upsample=self.upsample, geometry=user_faces(row))
        except Exception as exc:  # this photo fails; a store that fails (not a missing file) stops the job
            if isinstance(exc, storage.StorageError) and not isinstance(exc, FileNotFoundError):
                raise
            return [dict(photo_id=pid, source_uri=uri, source_table=table, status="failed", error=str(exc))]
        return [dict(f, id=f"{pid}#{k}", photo_id=pid, face=k, source_uri=uri,
                     source_table=None if uri else table, status="ok") for k, f in enumerate(faces)]


# ----------------------------------------------------------------------------- make-manifest


def _photo_rows(src: str, store: storage.Storage | None = None) -> tuple[list[dict] | None, list[str] | None]:
    """A folder / prefix of photos (or one photo) -> rows ``{photo_id, uri}``; a Parquet photo table -> its files.

    A photo's id is its path below ``src`` without the extension (with it where two would collide)."""
    from pulse_ray.io.manifest import manifest_files

    store = store or storage.Storage()
    uris = store.list_uris(src, suffix=images.IMAGE_SUFFIXES)
    if not uris:
        if src.lower().endswith(".parquet") or store.isdir(src):
            return None, manifest_files(src, store)
        if not (store.exists(src) and src.lower().endswith(images.IMAGE_SUFFIXES)):
            raise FileNotFoundError(f"no photos ({', '.join(images.IMAGE_SUFFIXES)}) or Parquet photo table at {src}")
        uris = [src]
    if storage.is_s3(src) or src.startswith("file://"):
        rels = [u[len(src.rstrip("/")) + 1:] if len(uris) > 1 or u != src else posixpath.basename(u) for u in uris]
    else:
        root = storage.local_path(src)
        rels = [os.path.relpath(u, root).replace(os.sep, "/") if u != src else os.path.basename(u) for u in uris]
        uris = [os.path.abspath(u) for u in uris]
    stems = [posixpath.splitext(r)[0] for r in rels]
    count = Counter(stems)
    ids = [s if count[s] == 1 else r for s, r in zip(stems, rels)]
    return [{"photo_id": i, "uri": u} for u, i in zip(uris, ids)], None


def _table_rows(files: list[str], store: storage.Storage | None = None) -> list[dict]:
    """The photo rows of a Parquet photo table (``id`` + ``uri`` and/or ``image``, optional geometry)."""
    from pulse_ray.io.manifest import read_table

    rows = []
    for f in files:
        t = read_table(f, store=store)
        if "id" not in t.column_names or not ({"uri", "image"} & set(t.column_names)):
            raise ValueError(f"photo table {f}: needs 'id' and 'uri' and/or 'image' (columns: {', '.join(t.column_names)})")
        keep = [c for c in ("id", "uri", "image", "landmarks", "box") if c in t.column_names]
        for r in t.select(keep).to_pylist():
            r["photo_id"] = r.pop("id")
            r["source_table"] = f
            rows.append(r)
    return rows


def failed_report_uri(manifest: str) -> str:
    """Where make-manifest writes the photos it could not align: ``<manifest>.failed.parquet``."""
    base = manifest[: -len(".parquet")] if manifest.lower().endswith(".parquet") else manifest.rstrip("/")
    return base + ".failed.parquet"


def align_photos(src: str, manifest: str, *, lr_size: int, scale: float | None = None, generator: str | None = None,
                 detector: str = DEFAULT_DETECTOR, upsample: int = DEFAULT_UPSAMPLE, num_cpus: int | None = None,
                 address: str | None = None, store: storage.Storage | None = None):
    """Photos (folder, ``s3://`` prefix or Parquet photo table) -> face manifest at ``manifest``
    plus ``<manifest>.failed.parquet`` for photos without a usable face. The crop scale is ``scale``,
    else the one ``generator`` records (see :func:`align_scale_for`). Uses the running Ray, else joins
    the cluster at ``address``, else starts an embedded one with ``num_cpus``. Every read and write goes
    through ``store`` (it travels to the actors). Returns an :class:`AlignResult`."""
    import ray

    from pulse_ray.io.manifest import write_table

    from .detect import DETECTORS

    if detector not in DETECTORS:
        raise ValueError(f"--detector must be one of {', '.join(DETECTORS)} (got {detector!r})")
    _check_align_extra()
    store = (store or storage.Storage()).pinned()
    scale = align_scale_for(generator, scale, store)
    if lr_size < 1 or upsample < 0 or not scale > 0:
        raise ValueError(f"--lr-size must be >= 1, --upsample >= 0 and the align scale > 0 "
                         f"(got {lr_size}, {upsample}, {scale})")
    rows, files = _photo_rows(os.fspath(src), store)
    if rows is None:
        rows = _table_rows(files, store)
    started = not ray.is_initialized()
    if started and address:
        ray.init(address=address, logging_level="WARNING")
    elif started:
        from pulse_ray.job.cluster import worker_runtime_env

        ray.init(num_cpus=num_cpus, object_store_memory=EMBEDDED_OBJECT_STORE, include_dashboard=False,
                 logging_level="WARNING", runtime_env=worker_runtime_env())
    ray.data.DataContext.get_current().enable_progress_bars = False
    try:
        cpus = max(1, int(ray.cluster_resources().get("CPU", 1)))
        ds = ray.data.from_items(rows).map_batches(
            AlignPhotos, batch_size=4, batch_format="pyarrow", concurrency=(1, cpus),
            fn_constructor_kwargs=dict(lr_size=lr_size, scale=scale, detector=detector, upsample=upsample,
                                       store=store))
        out = pa.concat_tables(list(ds.iter_batches(batch_format="pyarrow", batch_size=None)) or
                               [pa.schema(_OUT_FIELDS).empty_table()])
    finally:
        if started:
            ray.shutdown()
    ok = out.filter(pa.compute.equal(out.column("status"), "ok"))
    ok = ok.select([f.name for f in FACE_FIELDS]).sort_by([("id", "ascending")])
    write_table(ok, manifest, store)
    failed = out.filter(pa.compute.equal(out.column("status"), "failed"))
    report = failed_report_uri(manifest)
    res = AlignResult(written=ok.num_rows, output=manifest)
    if failed.num_rows:
        failed = failed.select([f.name for f in FAILED_FIELDS]).sort_by([("photo_id", "ascending")])
        write_table(failed, report, store)
        res.skipped = [(u or p, e) for p, u, e in zip(*(failed.column(c).to_pylist() for c in ("photo_id", "source_uri", "error")))]
    elif store.exists(report):
        store.delete(report)  # a stale report of an earlier run would misreport this one
    return res


def _check_align_extra() -> None:
    from .ffhq import ALIGN_EXTRA_HINT, models_dir

    try:
        import dlib  # noqa: F401
    except ImportError:
        raise MissingExtra(ALIGN_EXTRA_HINT) from None
    try:
        models_dir()
    except RuntimeError:
        raise MissingExtra(ALIGN_EXTRA_HINT) from None


@dataclass
class AlignResult:
    written: int = 0  # faces in the manifest
    skipped: list = field(default_factory=list)  # (photo, reason) of each failed photo
    output: str = ""


class MissingExtra(ValueError):
    """An optional dependency is not installed (CLI exit code 2: install it and re-run)."""


def generator_alignment(source: str | None, store: storage.Storage | None = None) -> dict | None:
    """The ``alignment`` a generator checkpoint records in its meta (``{"recipe", "scale"}``), or None;
    read without building the network."""
    from pulse_ray.models.checkpoint import load_weights_file, split_checkpoint
    from pulse_ray.models.generator import DEFAULT_GENERATOR, _read_source

    data, where = _read_source(DEFAULT_GENERATOR if source is None else str(source), store)
    meta = split_checkpoint(load_weights_file(data, where), where)["meta"]
    found = meta.get("alignment")
    return dict(found) if isinstance(found, dict) else None


def align_scale_for(generator: str | None, explicit: float | None, store: storage.Storage | None = None) -> float:
    """The FFHQ crop scale: ``explicit`` if given, else the generator's recorded one, else 1.0 (FFHQ)."""
    if explicit is not None:
        return float(explicit)
    found = generator_alignment(generator, store)
    if found and found.get("recipe") == "ffhq" and found.get("scale"):
        return float(found["scale"])
    return 1.0
