"""Figures for a face generator's model card: face rate of samples, and PULSE on held-out faces.

    python scripts/evaluate_generator.py [--generator NAME|PATH] [--data A.parquet,B.parquet]
        [--colour any|colour|grey] [--per-group N] [--json OUT.json] [--grid docs/pulse_grid.png]

- face rate of ``g.sample(256, seed=0)`` (Haar cascade, see ``pulse_ray.eval.face_rate``);
- for factor 8 and the largest factor that leaves a 4x4 LR: PULSE (the shipped search defaults of
  ``SearchOptions`` unless overridden) on faces that training never saw, LR made by ``pulse_ray.downscale``: share
  converged, face rate of the SR outputs and of bicubic upsampling of the same LR, colour kept
  (mean chroma of SR over originals);
- with ``--per-group N``: N held-out faces of every race group, and the figures per race, gender and
  age band (the model card's fairness table);
- faces are cropped the way the generator was trained (its ``alignment`` meta: FFHQ landmarks at a
  scale, else the Haar crop);
- a PNG grid of LR | bicubic | PULSE SR | original for 8 of those faces at each factor.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

try:
    import pulse_ray
except ImportError:  # run from a source checkout without installing the package
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    import pulse_ray

from pulse_ray.eval import age_band, colour_kept, face_rate
from pulse_ray.search.options import SearchOptions
from pulse_ray.search.pulse import KEEP_RULES
from pulse_ray.train.data import Framing, held_out_by_group, held_out_faces
from pulse_ray.train.loop import save_grid


def upscale(x: torch.Tensor, size: int, mode: str) -> torch.Tensor:
    kw = {"align_corners": False} if mode == "bicubic" else {}
    return F.interpolate(x, size=(size, size), mode=mode, **kw).clamp(0, 1)


def figures(res, sr, hr, lr, size: int) -> dict:
    return {"faces": len(res), "converged": sum(x.converged for x in res) / len(res),
            "mean_downscale_mse": sum(x.downscale_mse for x in res) / len(res),
            "sr_face_rate": face_rate(sr), "sr_face_rate_no_border": face_rate(sr, border=0),
            "bicubic_face_rate": face_rate(upscale(lr, size, "bicubic")),
            "colour_kept": colour_kept(sr, hr)}


def by_group(labels: dict, res, sr, hr, lr, size: int) -> dict:
    """Figures per race, gender and age band."""
    groups = {"race": labels["race"], "gender": labels["gender"], "age": [age_band(a) for a in labels["age"]]}
    out = {}
    for name, values in groups.items():
        for value in sorted({v for v in values if v is not None}):
            rows = [i for i, v in enumerate(values) if v == value]
            out[f"{name}={value}"] = figures([res[i] for i in rows], sr[rows], hr[rows], lr[rows], size)
    return out


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--generator", default=None)
    p.add_argument("--data", default=str(Path(__file__).resolve().parents[2] / "shared" / "data" / "faces.parquet"),
                   help="comma-separated Parquet files of face photos")
    p.add_argument("--faces", type=int, default=32)
    p.add_argument("--per-group", type=int, default=0, help="N held-out faces per race group instead of --faces")
    p.add_argument("--skip", type=int, default=0,
                   help="skip the first N held-out faces (--skip 32: a validation set apart from the model card's 32)")
    p.add_argument("--held-out-share", type=float, default=0.03,
                   help="the training split's held-out share (0.05 for utkface in the colour64 run)")
    p.add_argument("--colour", default="any", choices=("any", "colour", "grey"), help="which photos to use")
    p.add_argument("--samples", type=int, default=256)
    defaults = SearchOptions()
    p.add_argument("--restarts", type=int, default=defaults.restarts)
    p.add_argument("--steps", type=int, default=defaults.steps)
    p.add_argument("--halving", default=defaults.halving, help="successive halving fractions ('' for none)")
    p.add_argument("--eps", type=float, default=defaults.eps)
    p.add_argument("--keep", default=defaults.keep, choices=KEEP_RULES,
                   help="which iterate and restart a search keeps (pulse_ray.upsample's keep)")
    p.add_argument("--json", default=None)
    p.add_argument("--grid", default=None)
    args = p.parse_args(argv)

    g = pulse_ray.load_generator(args.generator)
    r = g.resolution
    align = g.meta.get("alignment") or {"recipe": "haar", "scale": 1.0}
    framing = Framing(align["recipe"], float(align["scale"]), args.colour)
    out = {"generator": g.name, "resolution": r, "samples": args.samples, "held_out_skipped": args.skip,
           "data": args.data, "colour": args.colour, "framing": align, "restarts": args.restarts,
           "steps": args.steps, "halving": args.halving, "eps": args.eps, "keep": args.keep}
    out["sample_face_rate"] = face_rate(g.sample(args.samples, seed=0))
    print(f"{g.name}: face rate of {args.samples} samples = {out['sample_face_rate']:.3f}", flush=True)

    if args.per_group:
        ids, faces, labels = held_out_by_group(args.data, r, args.per_group, held_out_share=args.held_out_share,
                                               framing=framing, skip=args.skip)
    else:
        ids, faces = held_out_faces(args.data, r, args.faces, held_out_share=args.held_out_share, skip=args.skip,
                                    framing=framing)
        labels = None
    hr = torch.from_numpy(faces).permute(0, 3, 1, 2).float() / 255
    out["original_face_rate"] = face_rate(hr)
    out["original_face_rate_no_border"] = face_rate(hr, border=0)
    panels = []
    for f in sorted({8, r // 4}):
        lr = pulse_ray.downscale(hr, f).clamp(0, 1)
        t0 = time.time()
        res = pulse_ray.upsample(lr, g, restarts=args.restarts, steps=args.steps, eps=args.eps, seed=0, ids=ids,
                                 keep=args.keep, halving=args.halving)
        sr = torch.stack([x.image for x in res])
        row = {"factor": f, "lr_size": r // f, **figures(res, sr, hr, lr, r), "seconds": round(time.time() - t0, 1)}
        if labels is not None:
            row["groups"] = by_group(labels, res, sr, hr, lr, r)
        out[f"factor_{f}"] = row
        print(json.dumps(row), flush=True)
        bicubic = upscale(lr, r, "bicubic")
        for i in range(min(8, len(ids))):
            panels += [upscale(lr[i:i + 1], r, "nearest")[0], bicubic[i], sr[i], hr[i]]
    if args.grid:
        save_grid(torch.stack(panels), args.grid, cols=8)
        out["grid"] = args.grid
    if args.json:
        Path(args.json).write_text(json.dumps(out, indent=2))
    print(json.dumps(out, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
