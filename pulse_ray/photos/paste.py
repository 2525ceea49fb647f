"""``paste-back``: the SR faces of a job put back into their photos, enlarged.

For every source photo: the photo enlarged by S (Lanczos), each SR face warped back through the
inverse of its FFHQ quad and blended in with a feathered mask. Restored photos go to
``OUT/restored/<photo id>.<png|jpg>``, one row per photo to ``OUT/restored_metadata/``.
"""

from __future__ import annotations

import io
import time
from dataclasses import dataclass, field
from datetime import datetime, timezone

import cv2
import numpy as np
import pyarrow as pa
from PIL import Image

from pulse_ray.io import images, storage

from .align import open_photo

RESTORED_DIR = "restored"
RESTORED_METADATA_DIR = "restored_metadata"
FEATHER = 0.12  # share of the quad's side over which the SR face fades into the photo
MAX_RESTORED_PIXELS = 400_000_000

RESTORED_FIELDS = [
    pa.field("photo_id", pa.string()),
    pa.field("status", pa.string()),  # "ok" | "failed"
    pa.field("error", pa.string()),
    pa.field("restored_uri", pa.string()),
    pa.field("source_uri", pa.string()),
    pa.field("source_table", pa.string()),
    pa.field("photos_scale", pa.int32()),
    pa.field("width", pa.int32()),  # of the restored photo
    pa.field("height", pa.int32()),
    pa.field("faces", pa.int32()),  # SR faces pasted
    pa.field("face_ids", pa.list_(pa.string())),
    pa.field("faces_failed", pa.int32()),  # faces of the photo whose search failed (left as enlarged)
    pa.field("seconds", pa.float64()),
    pa.field("finished_at", pa.timestamp("us", tz="UTC")),
]


def feather_mask(a: np.ndarray, b: np.ndarray, feather: float = FEATHER) -> np.ndarray:
    """Blend weight at normalised quad coordinates ``a, b`` (0..1 across the face crop): 1 inside, a
    smooth fall to 0 over ``feather`` of the side at the edges, 0 outside."""
    edge = np.minimum(np.minimum(a, 1 - a), np.minimum(b, 1 - b))
    t = np.clip(edge / feather, 0.0, 1.0)
    return t * t * (3 - 2 * t)


def paste_face(canvas: np.ndarray, sr: np.ndarray, quad: np.ndarray, scale: int, feather: float = FEATHER) -> None:
    """Blend the SR face ``sr`` ([r, r, 3] uint8) into ``canvas`` (the photo enlarged by ``scale``, uint8,
    changed in place, only around the face) where the face's ``quad`` (photo pixels, as
    :func:`~pulse_ray.photos.ffhq.crop_quad` samples it) lands."""
    quad = np.asarray(quad, dtype=np.float64).reshape(4, 2)
    big = (quad + 0.5) * scale - 0.5  # photo pixel index -> enlarged pixel index
    h, w = canvas.shape[:2]
    x0, y0 = np.floor(big.min(0)).astype(int)
    x1, y1 = np.ceil(big.max(0)).astype(int) + 1
    x0, y0, x1, y1 = max(x0, 0), max(y0, 0), min(x1, w), min(y1, h)
    if x0 >= x1 or y0 >= y1:
        return
    side = float(np.linalg.norm(big[3] - big[0]))
    r = sr.shape[0]
    if side < r:  # shrink first (area-averaged), so the warp below does not alias
        r = max(2, int(round(side)))
        sr = np.asarray(Image.fromarray(sr).resize((r, r), Image.Resampling.LANCZOS))
    # Normalised quad coordinates (a along the top edge, b down the left edge) of every canvas pixel.
    ex, ey = big[3] - big[0], big[1] - big[0]
    inv = np.linalg.inv(np.stack([ex, ey], axis=1))
    yy, xx = np.mgrid[y0:y1, x0:x1].astype(np.float64)
    d = np.stack([xx - big[0, 0], yy - big[0, 1]], axis=-1) @ inv.T
    a, b = d[..., 0], d[..., 1]
    # Output pixel j of the crop covers a in [j/r, (j+1)/r] and samples at its centre.
    map_x = (a * r - 0.5).astype(np.float32)
    map_y = (b * r - 0.5).astype(np.float32)
    face = cv2.remap(sr.astype(np.float32), map_x, map_y, cv2.INTER_CUBIC, borderMode=cv2.BORDER_REPLICATE)
    m = feather_mask(a, b, feather)[..., None].astype(np.float32)
    region = canvas[y0:y1, x0:x1].astype(np.float32)
    region += m * (face - region)
    canvas[y0:y1, x0:x1] = np.clip(region + 0.5, 0, 255).astype(np.uint8)


def enlarge(img: Image.Image, scale: int) -> np.ndarray:
    """The photo enlarged by ``scale`` with Lanczos, as a writable uint8 ``[H*S, W*S, 3]`` array."""
    big = img if scale == 1 else img.resize((img.width * scale, img.height * scale), Image.Resampling.LANCZOS)
    return np.array(big, dtype=np.uint8)


def restore_photo(img: Image.Image, faces: list[tuple[np.ndarray, np.ndarray]], scale: int) -> Image.Image:
    """``img`` enlarged by ``scale`` with every ``(sr, quad)`` face pasted back."""
    canvas = enlarge(img, scale)
    for sr, quad in faces:
        paste_face(canvas, sr, quad, scale)
    return Image.fromarray(canvas, "RGB")


# ----------------------------------------------------------------------------- the command


@dataclass
class PasteResult:
    written: int = 0
    skipped: int = 0  # already restored at this scale with the same faces
    failed: list = field(default_factory=list)  # (photo id, reason)
    output: str = ""


def _face_rows(out: str, store: storage.Storage) -> dict[str, dict]:
    """The job's per-face rows grouped by photo: ``{photo_id: {source_uri, source_table, ok: [(id, sr_uri, quad)], failed}}``."""
    from pulse_ray.job import metadata as md

    t = md.read_metadata(out, store=store)
    names = set(t.column_names)

    def carried(c):  # the write step carries a manifest column as is, or as input_<name> where the name clashes
        return c if c in names else f"input_{c}" if f"input_{c}" in names else None

    missing = [c for c in ("photo_id", "quad") if carried(c) is None]
    if t.num_rows and missing:
        raise ValueError(f"{out}: its metadata has no {' / '.join(missing)} column: paste-back needs a job "
                         f"submitted with a manifest from 'make-manifest --align ffhq'")
    photos: dict[str, dict] = {}
    cols = {c: t.column(carried(c)).to_pylist() if carried(c) else [None] * t.num_rows
            for c in ("photo_id", "quad", "source_uri", "source_table")}
    cols.update({c: t.column(c).to_pylist() for c in ("id", "status", "sr_uri")})
    for i in range(t.num_rows):
        p = photos.setdefault(cols["photo_id"][i], {"source_uri": cols["source_uri"][i],
                                                    "source_table": cols["source_table"][i], "ok": [], "failed": 0})
        if cols["status"][i] == "ok":
            p["ok"].append((cols["id"][i], cols["sr_uri"][i], np.asarray(cols["quad"][i], dtype=np.float64)))
        else:
            p["failed"] += 1
    return photos


def _done(out: str, store: storage.Storage) -> dict[str, tuple]:
    """Photos already restored (ok): ``photo_id -> (scale, sorted face ids)`` of the latest such row."""
    from pulse_ray.job import metadata as md

    files = md.metadata_files(out, RESTORED_METADATA_DIR, store)
    if not files:
        return {}
    from pulse_ray.io.manifest import read_table

    t = pa.concat_tables([read_table(f, store=store) for f in files], promote_options="permissive")
    t = t.filter(pa.compute.equal(t.column("status"), "ok")).sort_by([("finished_at", "ascending")])
    return {p: (s, tuple(sorted(f or []))) for p, s, f in zip(
        t.column("photo_id").to_pylist(), t.column("photos_scale").to_pylist(), t.column("face_ids").to_pylist())}


def _photo_bytes(source_uri: str | None, source_table: str | None, photo_id: str, tables: dict,
                 store: storage.Storage | None = None) -> bytes:
    """A source photo: its file, or its row of the photo table it came in (``tables`` caches each table's ids)."""
    store = store or storage.Storage()
    if source_uri:
        return store.read_bytes(source_uri)
    if not source_table:
        raise images.BadInput("the face rows name neither a source photo (source_uri) nor a photo table")
    from pulse_ray.io.manifest import read_table

    if source_table not in tables:
        t = read_table(source_table, columns=["id", "image"], store=store)
        tables[source_table] = (t, {v: i for i, v in enumerate(t.column("id").to_pylist())})
    t, where = tables[source_table]
    if photo_id not in where:
        raise images.BadInput(f"photo {photo_id!r} is no longer in its photo table {source_table}")
    return t.column("image")[where[photo_id]].as_py()


def paste_back(out: str, scale: int, *, overwrite: bool = False, store: storage.Storage | None = None) -> PasteResult:
    """Write a restored photo for every source photo of the job in ``out`` (see the module doc).

    Resumes: a photo already restored at ``scale`` from the same ok faces is skipped unless ``overwrite``.
    Every read and write goes through ``store``.
    """
    from pulse_ray.job import metadata as md

    if isinstance(scale, bool) or not isinstance(scale, int) or scale < 1:
        raise ValueError(f"--photos-scale must be a whole number >= 1 (got {scale!r})")
    store = store or storage.Storage()
    if not md.metadata_files(out, store=store):
        raise FileNotFoundError(f"{out}: no job metadata ({md.METADATA_DIR}/*.parquet): run submit first")
    photos = _face_rows(out, store)
    done = {} if overwrite else _done(out, store)
    res = PasteResult(output=out)
    rows, tables = [], {}
    for pid in sorted(photos):
        p = photos[pid]
        face_ids = sorted(f[0] for f in p["ok"])
        if done.get(pid) == (scale, tuple(face_ids)):
            res.skipped += 1
            continue
        t0 = time.perf_counter()
        row = dict(photo_id=pid, source_uri=p["source_uri"], source_table=p["source_table"], photos_scale=scale,
                   faces=len(face_ids), face_ids=face_ids, faces_failed=p["failed"])
        try:
            data = _photo_bytes(p["source_uri"], p["source_table"], pid, tables, store)
            img = open_photo(data, p["source_uri"] or f"{p['source_table']} id {pid!r}")
            if img.width * img.height * scale * scale > MAX_RESTORED_PIXELS:
                raise images.BadInput(f"{img.width}x{img.height} enlarged {scale}x is over the "
                                      f"{MAX_RESTORED_PIXELS}-pixel limit of a restored photo")
            faces = [(np.asarray(Image.open(io.BytesIO(store.read_bytes(sr))).convert("RGB")), quad)
                     for _, sr, quad in p["ok"]]
            restored = restore_photo(img, faces, scale)
            jpeg = (p["source_uri"] or "").lower().endswith((".jpg", ".jpeg"))
            target = storage.join(out, RESTORED_DIR, images.safe_relpath(pid) + (".jpg" if jpeg else ".png"))
            buf = io.BytesIO()
            if jpeg:
                restored.save(buf, format="JPEG", quality=95)
            else:
                restored.save(buf, format="PNG")
            store.write_bytes(target, buf.getvalue())
            row.update(status="ok", restored_uri=target, width=restored.width, height=restored.height)
            res.written += 1
        except (images.BadInput, FileNotFoundError, ValueError, OSError) as exc:
            if isinstance(exc, storage.StorageError) and not isinstance(exc, FileNotFoundError):
                raise  # the store failed: an infrastructure failure, re-run to resume
            row.update(status="failed", error=str(exc))
            res.failed.append((pid, str(exc)))
        row.update(seconds=time.perf_counter() - t0, finished_at=datetime.now(timezone.utc))
        rows.append(row)
        if len(rows) >= 64:  # a part every 64 photos: an interrupted run keeps what it did
            _write_part(out, rows, store)
            rows = []
    if rows:
        _write_part(out, rows, store)
    return res


def _write_part(out: str, rows: list[dict], store: storage.Storage) -> None:
    from pulse_ray.io.manifest import write_table
    from pulse_ray.job import metadata as md

    table = pa.Table.from_pylist(rows, schema=pa.schema(RESTORED_FIELDS))
    name = md.part_name([r["photo_id"] for r in rows], salt=f"restored{time.time_ns()}")
    write_table(table, storage.join(out, RESTORED_METADATA_DIR, name), store)


def read_restored(out: str, store: storage.Storage | None = None) -> pa.Table:
    """One row per restored photo (the latest), from ``OUT/restored_metadata/``."""
    from pulse_ray.io.manifest import read_table
    from pulse_ray.job import metadata as md

    files = md.metadata_files(out, RESTORED_METADATA_DIR, store)
    if not files:
        return pa.schema(RESTORED_FIELDS).empty_table()
    t = pa.concat_tables([read_table(f, store=store) for f in files], promote_options="permissive")
    t = t.sort_by([("photo_id", "ascending"), ("finished_at", "descending")])
    ids = t.column("photo_id").to_pylist()
    keep = [i for i in range(len(ids)) if i == 0 or ids[i] != ids[i - 1]]
    return t.take(pa.array(keep, pa.int64()))
