"""docs/examples_result.png: the README's first command's output, each example's LR beside its SR.

    pulse-ray submit examples/manifest.parquet --output out/example
    python scripts/examples_figure.py out/example --out docs/examples_result.png

In manifest order: the LR from the manifest's ``uri``, enlarged with nearest-neighbour so its pixels
stay visible, then the SR from the metadata row's ``sr_uri``.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import pyarrow.parquet as pq
import torch

from pulse_ray.io import storage
from pulse_ray.io.images import decode_image
from pulse_ray.job.metadata import read_metadata
from pulse_ray.job.steps import resolve_uri
from pulse_ray.train.loop import save_grid

from evaluate_generator import upscale  # noqa: E402  (scripts/, beside this file)

ROOT = Path(__file__).resolve().parents[1]


def load(uri: str, store: storage.Storage) -> torch.Tensor:
    """An image file as ``[3, H, W]`` in [0, 1]."""
    return torch.from_numpy(decode_image(store.read_bytes(uri), where=uri).copy()).permute(2, 0, 1).float() / 255


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("out", help="the job's output folder")
    ap.add_argument("--manifest", default=str(ROOT / "examples" / "manifest.parquet"))
    ap.add_argument("--out", dest="figure", default=str(ROOT / "docs" / "examples_result.png"))
    ap.add_argument("--pairs-per-row", type=int, default=6)
    args = ap.parse_args()

    store = storage.Storage()
    bases = [str(Path(args.manifest).resolve().parent)]
    manifest = pq.read_table(args.manifest).to_pylist()
    rows = {r["id"]: r for r in read_metadata(args.out).to_pylist()}
    panels = []
    for m in manifest:
        row = rows.get(m["id"])
        if row is None or row["status"] != "ok":
            raise SystemExit(f"{m['id']}: no ok row in {args.out} (run the job first)")
        sr = load(row["sr_uri"], store)
        lr = load(resolve_uri(m["uri"], bases, store), store)
        panels += [upscale(lr[None], sr.shape[-1], "nearest")[0], sr]
    save_grid(torch.stack(panels), args.figure, cols=2 * args.pairs_per_row)
    print(f"wrote {args.figure} ({len(manifest)} faces)")


if __name__ == "__main__":
    main()
