"""Carry training to a machine without ``../shared`` (a lent GPU) inside its 64 MiB working tree.

    python scripts/training/pack_for_device.py pack-faces RUN/faces64.npz .device/faces64.parquet   # JPEG q92, ~23 MB
    python scripts/training/pack_for_device.py unpack-faces .device/faces64.parquet RUN/faces64.npz # the cache `pulse-ray train` reads
    python scripts/training/pack_for_device.py pack-state training/faces64_state.pt .device/state.packed.pt  # 48 -> ~33 MB
    python scripts/training/pack_for_device.py unpack-state .device/state.packed.pt RUN/state.pt

``RUN/faces64.npz`` is the prepared data set that ``pulse-ray train`` caches in its run folder
(``pulse_ray/train/data.py`` made it: faces found, cropped, resized, held-out people removed).
Faces are JPEG at quality 92, grey ones (most of this data) as one channel: about 1 level in 255
off on average.

The packed state keeps the generator and discriminator weights exact; it stores the EMA generator
as its difference from the generator and Adam's second moments in bfloat16 (both off by about
0.4% of a small number), so a resume from it is not bit-exact but continues the same run.
"""

from __future__ import annotations

import argparse
import io
import sys

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import torch
from PIL import Image


def pack_faces(npz_path: str, parquet_path: str, quality: int = 92, fmt: str = "JPEG") -> int:
    """The cached faces as JPEG, with the cache's per-face label arrays (ids, race, ...) as columns."""
    cache = np.load(npz_path, allow_pickle=False)
    images = cache["images"]
    labels = {k: cache[k] for k in cache.files if k != "images" and cache[k].shape == (len(images),)}
    encoded = []
    for img in images:
        im = Image.fromarray(img)
        if (img == img[..., :1]).all():  # grey: one channel carries it all
            im = im.convert("L")
        buf = io.BytesIO()
        im.save(buf, format=fmt, quality=quality)
        encoded.append(buf.getvalue())
    table = pa.table({"index": pa.array(range(len(encoded)), pa.int32()), "image": pa.array(encoded, pa.binary()),
                      **{k: pa.array(v.tolist()) for k, v in labels.items()}})
    pq.write_table(table, parquet_path, compression="none")  # JPEG does not compress further
    return len(encoded)


def unpack_faces(parquet_path: str, npz_path: str) -> int:
    table = pq.read_table(parquet_path).sort_by("index")
    images = np.stack([np.asarray(Image.open(io.BytesIO(b)).convert("RGB")) for b in table.column("image").to_pylist()])
    labels = {k: np.array(table.column(k).to_pylist()) for k in table.column_names if k not in ("index", "image")}
    np.savez(npz_path, images=images, **labels)
    return len(images)


def _map_second_moments(opt_state: dict, fn) -> dict:
    state = {k: {n: fn(v) if n == "exp_avg_sq" else v for n, v in st.items()} for k, st in opt_state["state"].items()}
    return {"state": state, "param_groups": opt_state["param_groups"]}


def pack_state(state_path: str, packed_path: str) -> int:
    st = torch.load(state_path, map_location="cpu", weights_only=True)
    g, ema = st.pop("G"), st.pop("G_ema")
    packed = {**st, "G": g, "G_ema_minus_G": {k: (ema[k] - g[k]).bfloat16() for k in g},
              "opt_g": _map_second_moments(st["opt_g"], lambda v: v.bfloat16()),
              "opt_d": _map_second_moments(st["opt_d"], lambda v: v.bfloat16())}
    torch.save(packed, packed_path)
    return int(st["cur_img"])


def unpack_state(packed_path: str, state_path: str) -> int:
    st = torch.load(packed_path, map_location="cpu", weights_only=True)
    delta = st.pop("G_ema_minus_G")
    state = {**st, "G_ema": {k: st["G"][k] + delta[k].float() for k in delta},
             "opt_g": _map_second_moments(st["opt_g"], lambda v: v.float()),
             "opt_d": _map_second_moments(st["opt_d"], lambda v: v.float())}
    torch.save(state, state_path)
    return int(st["cur_img"])


ACTIONS = {"pack-faces": pack_faces, "unpack-faces": unpack_faces, "pack-state": pack_state,
           "unpack-state": unpack_state}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("action", choices=sorted(ACTIONS))
    p.add_argument("source")
    p.add_argument("dest")
    p.add_argument("--quality", type=int, default=92, help="pack-faces: JPEG or WebP quality")
    p.add_argument("--format", default="JPEG", choices=("JPEG", "WEBP"),
                   help="pack-faces: WEBP at quality 85 packs the 21,642 colour faces of colour64.json in 19 MB "
                        "(JPEG q92: 44 MB), small enough to travel beside the packed state")
    args = p.parse_args(argv)
    extra = {"quality": args.quality, "fmt": args.format} if args.action == "pack-faces" else {}
    n = ACTIONS[args.action](args.source, args.dest, **extra)
    what = "images shown" if args.action.endswith("state") else "faces"
    print(f"{args.action}: {args.source} -> {args.dest} ({n} {what})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
