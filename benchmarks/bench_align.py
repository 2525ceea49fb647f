"""Face detectors for ``make-manifest --align ffhq``, measured on synthetic group photos.

Held-out colour faces (shared/data/utkface.parquet) are placed at known positions, sizes (eye
distance) and rotations into textured backgrounds, several per photo (benchmarks/photo_scenes.py).
For each detector: detection rate (overall and by eye distance), false detections, time per photo
(detection + landmarks + crop), and the alignment error of the found faces against the truth quad
(mean corner error in px and in % of the side, angle error in degrees).

    python benchmarks/bench_align.py --photos 8 --json benchmarks/results/bench_align.json
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parent))

from photo_scenes import held_out_faces, make_scene, match_quads, quad_errors  # noqa: E402

CONFIGS = [("hog", 0), ("hog", 1), ("hog", 2), ("cnn", 0), ("cnn", 1), ("haar", 0)]
BUCKETS = [(10, 20), (20, 30), (30, 40)]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--photos", type=int, default=8)
    ap.add_argument("--faces-per-photo", type=int, default=4)
    ap.add_argument("--size", default="640x480")
    ap.add_argument("--configs", default=",".join(f"{d}:{u}" for d, u in CONFIGS))
    ap.add_argument("--json")
    args = ap.parse_args()
    from pulse_ray.photos.align import align_photo
    from pulse_ray.photos.ffhq import ffhq_quad

    w, h = map(int, args.size.split("x"))
    pool = held_out_faces(args.photos * args.faces_per_photo)
    rng = np.random.default_rng(0)
    scenes = [make_scene(pool[i * args.faces_per_photo:(i + 1) * args.faces_per_photo], rng, size=(w, h))
              for i in range(args.photos)]
    configs = [(c.split(":")[0], int(c.split(":")[1])) for c in args.configs.split(",")]
    results = []
    for detector, upsample in configs:
        found_n = false_n = total = 0
        by_bucket = {b: [0, 0] for b in BUCKETS}
        errs, seconds = [], []
        for sc in scenes:
            img = Image.fromarray(sc.photo)
            t0 = time.perf_counter()
            try:
                faces = align_photo(img, lr_size=16, scale=1.0, detector=detector, upsample=upsample)
            except ValueError:  # no face found at all
                faces = []
            seconds.append(time.perf_counter() - t0)
            quads = [np.asarray(f["quad"]).reshape(4, 2) for f in faces]
            truth = [ffhq_quad(lm) for lm in sc.landmarks]
            pairs, false = match_quads(quads, truth)
            found_n, false_n, total = found_n + len(pairs), false_n + false, total + len(truth)
            hit = {j for _, j in pairs}
            for j, eye in enumerate(sc.eye_distance):
                b = next(b for b in BUCKETS if eye < b[1] or b == BUCKETS[-1])
                by_bucket[b][0] += j in hit
                by_bucket[b][1] += 1
            errs += [quad_errors(quads[i], truth[j]) for i, j in pairs]
        e = np.array(errs) if errs else np.full((1, 3), np.nan)
        row = dict(detector=detector, upsample=upsample, faces=total, found=found_n,
                   detection_rate=found_n / total, false_detections=false_n,
                   rate_by_eye_distance={f"{a}-{b}": (k / n if n else None) for (a, b), (k, n) in by_bucket.items()},
                   seconds_per_photo=float(np.mean(seconds)), corner_px_mean=float(e[:, 0].mean()),
                   corner_px_p90=float(np.percentile(e[:, 0], 90)), corner_pct_mean=float(e[:, 1].mean()),
                   angle_deg_mean=float(e[:, 2].mean()), angle_deg_max=float(e[:, 2].max()))
        results.append(row)
        print(json.dumps(row), flush=True)
    print(f"\n{args.photos} photos of {w}x{h}, {args.faces_per_photo} faces each (eye distance 10-40 px, "
          f"rotation +-20 deg)\n")
    print("| detector | faces found | by eye distance 10-20 / 20-30 / 30-40 px | false | s/photo | corner px (mean, p90) "
          "| corner % of side | angle deg (mean, max) |")
    print("| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |")
    for r in results:
        b = " / ".join("-" if v is None else f"{v:.2f}" for v in r["rate_by_eye_distance"].values())
        print(f"| {r['detector']} x{r['upsample']} | {r['found']}/{r['faces']} ({r['detection_rate']:.2f}) | {b} | "
              f"{r['false_detections']} | {r['seconds_per_photo']:.2f} | {r['corner_px_mean']:.2f}, "
              f"{r['corner_px_p90']:.2f} | {r['corner_pct_mean']:.1f} | {r['angle_deg_mean']:.2f}, "
              f"{r['angle_deg_max']:.2f} |")
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(dict(photos=args.photos, size=args.size, results=results), indent=1))


if __name__ == "__main__":
    main()
