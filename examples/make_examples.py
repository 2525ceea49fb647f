"""Regenerate the example LR faces and manifest from ../shared/data.

    python examples/make_examples.py [--generator NAME|PATH]

Faces the bundled generator never saw in training (held-out splits), cropped the way the generator
was trained (its ``alignment`` meta), then downscaled with PULSE's own operator to 8x8: eight colour
UTKFace faces (four race groups, women and men, several ages) and four greyscale crops. Writes
examples/lr/<id>.png and examples/manifest.parquet (columns id, uri, and the labels where known).
"""

import argparse
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import torch
from PIL import Image

import pulse_ray
from pulse_ray.train.data import Framing, held_out_by_group, held_out_faces

HERE = Path(__file__).resolve().parent
DATA = HERE.parent.parent / "shared" / "data"
LR_SIZE = 8


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--generator", default=None)
    args = p.parse_args()
    g = pulse_ray.load_generator(args.generator)
    align = g.meta.get("alignment") or {"recipe": "haar", "scale": 1.0}
    size = g.resolution

    ids, faces, labels = held_out_by_group(str(DATA / "utkface.parquet"), size, per_group=40, held_out_share=0.05,
                                           framing=Framing(align["recipe"], float(align["scale"]), "colour"))
    pick, target_ages = [], (30, 60, 22, 45, 70, 8, 35, 55)
    for race in ("white", "black", "asian", "indian"):  # one woman and one man per group, spread over ages
        for gender in ("female", "male"):
            rows = [i for i in range(len(ids)) if labels["race"][i] == race and labels["gender"][i] == gender]
            if rows:
                target = target_ages[len(pick)]
                pick.append(min(rows, key=lambda i: abs(int(labels["age"][i]) - target)))
    grey_ids, grey_faces = held_out_faces(str(DATA / "faces.parquet"), size, 4,
                                          framing=Framing(align["recipe"], float(align["scale"]), "grey"))
    rows_meta = [{"age": int(labels["age"][i]), "gender": labels["gender"][i], "race": labels["race"][i]}
                 for i in pick] + [{"age": None, "gender": None, "race": None}] * len(grey_ids)
    all_ids = [ids[i] for i in pick] + grey_ids
    hr = torch.from_numpy(np.concatenate([faces[pick], grey_faces])).permute(0, 3, 1, 2).float() / 255
    lr = pulse_ray.downscale(hr, size // LR_SIZE).clamp(0, 1)
    out = HERE / "lr"
    out.mkdir(exist_ok=True)
    for old in out.glob("*.png"):
        old.unlink()
    rows = []
    for photo_id, img, meta in zip(all_ids, lr, rows_meta):
        name = photo_id.replace("/", "_") + ".png"
        arr = (img.permute(1, 2, 0).numpy() * 255).round().astype(np.uint8)
        Image.fromarray(arr).save(out / name)
        rows.append({"id": photo_id, "uri": f"lr/{name}", **meta})
    pq.write_table(pa.Table.from_pylist(rows), HERE / "manifest.parquet")
    print(f"wrote {len(rows)} LR faces to {out} and {HERE / 'manifest.parquet'}")


if __name__ == "__main__":
    main()
