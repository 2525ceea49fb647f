"""Regenerate the example LR faces and manifest from ../shared/data/faces.parquet.

    python examples/make_examples.py

Eight faces the bundled generator never saw in training (the held-out split), aligned, then
downscaled with PULSE's own operator from 64 px to 8x8 (factor 8 for a 64 px generator, factor 4
for a 32 px one). Writes examples/lr/<id>.png and examples/manifest.parquet (columns id, uri).
"""

from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import torch
from PIL import Image

import pulse_ray
from pulse_ray.train.data import held_out_faces

HERE = Path(__file__).resolve().parent
DATA = HERE.parent.parent / "shared" / "data" / "faces.parquet"


def main() -> None:
    all_ids, all_faces = held_out_faces(str(DATA), 64, 300)
    # a spread over the file: greyscale crops and colour photos of both sources
    fe = [i for i, x in enumerate(all_ids) if x.startswith("fe/")]
    fm = [i for i, x in enumerate(all_ids) if x.startswith("fm/")]
    pick = fe[:: max(1, len(fe) // 5)][:5] + fm[:: max(1, len(fm) // 3)][:3]
    ids, faces = [all_ids[i] for i in pick], all_faces[pick]
    hr = torch.from_numpy(faces).permute(0, 3, 1, 2).float() / 255
    lr = pulse_ray.downscale(hr, 8).clamp(0, 1)
    out = HERE / "lr"
    out.mkdir(exist_ok=True)
    for old in out.glob("*.png"):
        old.unlink()
    rows = []
    for photo_id, img in zip(ids, lr):
        name = photo_id.replace("/", "_") + ".png"
        arr = (img.permute(1, 2, 0).numpy() * 255).round().astype(np.uint8)
        Image.fromarray(arr).save(out / name)
        rows.append({"id": photo_id, "uri": f"lr/{name}"})
    pq.write_table(pa.Table.from_pylist(rows), HERE / "manifest.parquet")
    print(f"wrote {len(rows)} LR faces to {out} and {HERE / 'manifest.parquet'}")


if __name__ == "__main__":
    main()
