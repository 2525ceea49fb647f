"""How the Haar face measure's settings judge real faces and bicubic upsamplings (the model card's table).

    python scripts/face_measure_calibration.py --generator colour64

Held-out faces at the generator's resolution: 10 per race group of UTKFace (colour, its framing), 32
grey photos of faces.parquet in its framing and in the Haar crop. For each border (share of the side,
mid-grey) and ``minNeighbors``: the face rate of the originals, and of bicubic upsamplings of their
8x8 and 4x4 LR. A useful measure accepts the originals and rejects the 4x4 bicubic blur.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch

import pulse_ray
from pulse_ray.eval import face_rate
from pulse_ray.train.data import Framing, held_out_by_group, held_out_faces

from evaluate_generator import upscale  # noqa: E402  (scripts/, beside this file)

DATA = Path(__file__).resolve().parents[2] / "shared" / "data"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--generator", default=None, help="whose resolution and framing (default: the bundled one)")
    args = ap.parse_args()
    g = pulse_ray.load_generator(args.generator)
    r = g.resolution
    align = g.meta.get("alignment") or {"recipe": "haar", "scale": 1.0}
    as_tensor = lambda faces: torch.from_numpy(faces).permute(0, 3, 1, 2).float() / 255  # noqa: E731
    sets = {"colour, own framing": as_tensor(held_out_by_group(
        str(DATA / "utkface.parquet"), r, 10, held_out_share=0.05,
        framing=Framing(align["recipe"], float(align["scale"]), "colour"))[1])}
    for recipe, scale in ((align["recipe"], float(align["scale"])), ("haar", 1.0)):
        _, faces = held_out_faces(str(DATA / "faces.parquet"), r, 32, framing=Framing(recipe, scale, "grey"))
        sets[f"grey, {recipe} framing"] = as_tensor(faces)

    def bicubic(hr, factor):
        return upscale(pulse_ray.downscale(hr, factor), r, "bicubic")

    print("| border | minNeighbors | " + " | ".join(f"{k}: original / bicubic 8x8 / bicubic 4x4" for k in sets) + " |")
    print("| ---: | ---: |" + " ---: |" * len(sets))
    for border in (0.0, 0.125, 0.25):
        for mn in (3, 5, 8):
            cells = [f"{face_rate(hr, border, mn):.2f} / {face_rate(bicubic(hr, 8), border, mn):.2f} / "
                     f"{face_rate(bicubic(hr, r // 4), border, mn):.2f}" for hr in sets.values()]
            print(f"| {border:g} | {mn} | " + " | ".join(cells) + " |", flush=True)


if __name__ == "__main__":
    main()
