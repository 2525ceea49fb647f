"""Paste-back round trip and time per photo (``pulse-ray paste-back``), alignment time per photo.

Synthetic group photos (benchmarks/photo_scenes.py) are aligned (``align_photo``, the default
detector); each face's "SR" is the face itself, cropped from the photo at the generator's 64 px;
the restored photo (enlarged by S, faces pasted back) is brought down by S again and compared with
the input in the inner half of each face (MSE on [0, 1] pixels, and PSNR). The time per photo is
for the restore (enlarge + paste), as paste-back does it without the reads and writes.

    python benchmarks/bench_paste.py --photos 6 --json benchmarks/results/bench_paste.json
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

from photo_scenes import held_out_faces, make_scene  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--photos", type=int, default=6)
    ap.add_argument("--faces-per-photo", type=int, default=4)
    ap.add_argument("--size", default="640x480")
    ap.add_argument("--scales", default="1,2,4")
    ap.add_argument("--sr-size", type=int, default=64)
    ap.add_argument("--json")
    args = ap.parse_args()
    from pulse_ray.photos.align import DEFAULT_DETECTOR, DEFAULT_UPSAMPLE, align_photo
    from pulse_ray.photos.ffhq import crop_quad
    from pulse_ray.photos.paste import restore_photo

    w, h = map(int, args.size.split("x"))
    pool = held_out_faces(args.photos * args.faces_per_photo, skip=64)
    rng = np.random.default_rng(1)
    scenes = [make_scene(pool[i * args.faces_per_photo:(i + 1) * args.faces_per_photo], rng, size=(w, h))
              for i in range(args.photos)]
    align_s, photos = [], []
    for sc in scenes:
        img = Image.fromarray(sc.photo)
        t0 = time.perf_counter()
        faces = align_photo(img, lr_size=16, scale=0.6)
        align_s.append(time.perf_counter() - t0)
        quads = [np.asarray(f["quad"]).reshape(4, 2) for f in faces]
        photos.append((img, [(np.asarray(crop_quad(img, q, args.sr_size)), q) for q in quads]))
    results = dict(detector=f"{DEFAULT_DETECTOR} x{DEFAULT_UPSAMPLE}", photos=args.photos, size=args.size,
                   faces=sum(len(f) for _, f in photos), align_seconds_per_photo=float(np.mean(align_s)), scales=[])
    for s in map(int, args.scales.split(",")):
        mses, secs = [], []
        for img, faces in photos:
            t0 = time.perf_counter()
            restored = restore_photo(img, faces, s)
            secs.append(time.perf_counter() - t0)
            back = np.asarray(restored.reduce(s) if s > 1 else restored, np.float64) / 255
            orig = np.asarray(img, np.float64) / 255
            for _, q in faces:
                c, half = q.mean(0), np.linalg.norm(q[3] - q[0]) / 4
                y0, y1, x0, x1 = (max(0, int(v)) for v in (c[1] - half, c[1] + half, c[0] - half, c[0] + half))
                mses.append(float(np.mean((back[y0:y1, x0:x1] - orig[y0:y1, x0:x1]) ** 2)))
        row = dict(scale=s, mse_mean=float(np.mean(mses)), mse_max=float(np.max(mses)),
                   psnr_mean=float(np.mean([10 * np.log10(1 / m) for m in mses])), seconds_per_photo=float(np.mean(secs)))
        results["scales"].append(row)
        print(json.dumps(row), flush=True)
    print(f"\n{args.photos} photos of {w}x{h}, {results['faces']} faces found and pasted back; alignment "
          f"({results['detector']}) {results['align_seconds_per_photo']:.2f} s/photo\n")
    print("| S | round-trip MSE mean (max) | PSNR dB | restore s/photo |")
    print("| ---: | ---: | ---: | ---: |")
    for r in results["scales"]:
        print(f"| {r['scale']} | {r['mse_mean']:.2e} ({r['mse_max']:.2e}) | {r['psnr_mean']:.1f} | "
              f"{r['seconds_per_photo']:.3f} |")
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
