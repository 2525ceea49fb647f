"""The bundled generator's search on one device: speed and results per keep rule and precision.

    python benchmarks/bundled_search_check.py --out DIR            # CUDA when present, else the CPU
    python benchmarks/bundled_search_check.py --out DIR --images 4 --steps 5   # a quick look

Inputs need no data set (a lent GPU has no ``../shared``): 32 samples of the bundled generator
(``g.sample(32, seed=1)``), downscaled by ``pulse_ray.downscale`` at factors 8 and 16. Each run is
``pulse_ray.upsample`` with 4 restarts and 100 steps, timed after a warm-up. Writes ``DIR/check.json``
(seconds, images/min, converged share, steps per search, mean downscale MSE, and the face rate of the
SR images where OpenCV has its Haar cascade) and ``DIR/sr.pt`` (the inputs and SR images, fp16), so
that face rates and differences between runs can be computed elsewhere.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import torch  # noqa: E402

import pulse_ray  # noqa: E402


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", required=True)
    ap.add_argument("--images", type=int, default=32)
    ap.add_argument("--steps", type=int, default=100)
    args = ap.parse_args(argv)
    os.makedirs(args.out, exist_ok=True)
    dev = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    sync = torch.cuda.synchronize if dev.type == "cuda" else (lambda: None)
    g = pulse_ray.load_generator().to(dev)
    hr = g.sample(args.images, seed=1).cpu()
    precisions = ("tf32", "fp32") if dev.type == "cuda" else ("fp32",)
    runs = [("realistic", p) for p in precisions] + [("closest", precisions[0])]
    out = {"device": torch.cuda.get_device_name(dev) if dev.type == "cuda" else "cpu", "torch": torch.__version__,
           "threads": torch.get_num_threads(), "images": args.images, "restarts": 4, "steps": args.steps, "runs": {}}
    saved = {"hr": hr.half()}
    ids = [str(i) for i in range(args.images)]
    for factor in (8, 16):
        lr = pulse_ray.downscale(hr, factor).clamp(0, 1)
        pulse_ray.upsample(lr[:2], g, restarts=1, steps=2, precision=precisions[0])  # warm-up
        for keep, precision in runs:
            sync()
            t0 = time.perf_counter()
            res = pulse_ray.upsample(lr, g, restarts=4, steps=args.steps, keep=keep, precision=precision, ids=ids)
            sync()
            seconds = time.perf_counter() - t0
            sr = torch.stack([r.image for r in res])
            key = f"factor{factor}_{keep}_{precision}"
            saved[key] = sr.half()
            row = {"seconds": round(seconds, 2), "images_per_min": round(args.images / seconds * 60, 1),
                   "converged": sum(r.converged for r in res) / len(res),
                   "steps_per_search": sum(r.steps for r in res) / len(res),
                   "mean_downscale_mse": sum(r.downscale_mse for r in res) / len(res)}
            try:
                from pulse_ray.eval import face_rate

                row["sr_face_rate"] = face_rate(sr)
            except RuntimeError as exc:  # e.g. OpenCV 5 there: compute it from sr.pt elsewhere
                row["sr_face_rate"] = None
                out["face_rate_note"] = str(exc)
            out["runs"][key] = row
            print(key, json.dumps(row), flush=True)
    torch.save(saved, os.path.join(args.out, "sr.pt"))
    with open(os.path.join(args.out, "check.json"), "w") as f:
        json.dump(out, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
