"""Carry the prepared training faces to a machine without ``../shared`` (a lent GPU) in a small file.

    python training/pack_faces.py pack RUN/faces64.npz .device/faces64.parquet    # JPEG q95, ~31 MB
    python training/pack_faces.py unpack .device/faces64.parquet RUN/faces64.npz  # the cache `pulse-ray train` reads

``RUN/faces64.npz`` is the prepared data set that ``pulse-ray train`` caches in its run folder
(``pulse_ray/train/data.py`` made it: faces found, cropped, resized, held-out people removed).
JPEG at quality 95 changes a pixel by about 1 level in 255 on average.
"""

from __future__ import annotations

import argparse
import io
import sys

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from PIL import Image


def pack(npz_path: str, parquet_path: str, quality: int = 95) -> int:
    images = np.load(npz_path)["images"]
    encoded = []
    for img in images:
        buf = io.BytesIO()
        Image.fromarray(img).save(buf, format="JPEG", quality=quality)
        encoded.append(buf.getvalue())
    table = pa.table({"index": pa.array(range(len(encoded)), pa.int32()), "image": pa.array(encoded, pa.binary())})
    pq.write_table(table, parquet_path, compression="none")  # JPEG does not compress further
    return len(encoded)


def unpack(parquet_path: str, npz_path: str) -> int:
    table = pq.read_table(parquet_path).sort_by("index")
    images = np.stack([np.asarray(Image.open(io.BytesIO(b)).convert("RGB")) for b in table.column("image").to_pylist()])
    np.savez(npz_path, images=images)
    return len(images)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("action", choices=["pack", "unpack"])
    p.add_argument("source")
    p.add_argument("dest")
    args = p.parse_args(argv)
    n = (pack if args.action == "pack" else unpack)(args.source, args.dest)
    print(f"{args.action}ed {n} faces: {args.source} -> {args.dest}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
