"""Images per minute: ``submit`` (Ray Data, embedded Ray) vs in-process ``pulse_ray.upsample``
on the same images and settings, and ``submit`` with 1 vs 2 workers. Writes JSON.

    python benchmarks/bench_submit.py --images 32 --restarts 2 --steps 20 --out bench_submit.json

Each ``submit`` run includes Ray Data's planning, actor start-up (one generator load per
actor) and writing; the in-process figure includes one generator load. Ray itself is
started once, outside the timings.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--images", type=int, default=32)
    ap.add_argument("--restarts", type=int, default=2)
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--batch-size", type=int, default=4)
    ap.add_argument("--generator", default=None)
    ap.add_argument("--num-cpus", type=int, default=os.cpu_count() or 1)
    ap.add_argument("--workers", default="1,2", help="comma-separated worker counts for submit")
    ap.add_argument("--out", default="bench_submit.json")
    ap.add_argument("--threads", type=int, default=None,
                    help="torch threads for the in-process run (match one actor's share for a fair overhead figure)")
    ap.add_argument("--worker-threads", type=int, default=None,
                    help="torch threads per search actor (submit's --threads-per-worker; default: its share of cores)")
    args = ap.parse_args(argv)

    import numpy as np
    import pyarrow as pa
    import pyarrow.parquet as pq
    import ray
    import torch

    import pulse_ray
    from pulse_ray.io import images as imgs
    from pulse_ray.job.cluster import worker_runtime_env
    from pulse_ray.job.options import JobOptions
    from pulse_ray.job.submit import submit
    from pulse_ray.search.options import SearchOptions

    g = pulse_ray.load_generator(args.generator)
    lr_size = g.resolution // 4
    tmp = tempfile.mkdtemp(prefix="bench-submit-")
    # the same LR images for every variant: generator samples, downscaled
    hr = g.sample(args.images, seed=123)
    lr = pulse_ray.downscale(hr, 4)
    ids = [f"img{i:03d}" for i in range(args.images)]
    blobs = [imgs.encode_png(x) for x in lr]
    manifest = os.path.join(tmp, "m.parquet")
    pq.write_table(pa.table({"id": ids, "image": pa.array(blobs, pa.binary())}), manifest)
    lr_batch = torch.stack([torch.from_numpy(imgs.decode_image(b).copy()).permute(2, 0, 1).float() / 255 for b in blobs])

    results = {
        "images": args.images, "restarts": args.restarts, "steps": args.steps, "batch_size": args.batch_size,
        "generator": g.name, "resolution": g.resolution, "lr_size": lr_size, "num_cpus": args.num_cpus,
        "threads_in_process": args.threads, "threads_per_worker": args.worker_threads,
        "machine": {"cpus": os.cpu_count(), "python": platform.python_version(), "torch": torch.__version__,
                    "ray": ray.__version__, "torch_threads": torch.get_num_threads()},
        "runs": {},
    }

    # in-process: pulse_ray.upsample in batches of batch_size (all cores unless --threads)
    if args.threads:
        torch.set_num_threads(args.threads)
    t0 = time.perf_counter()
    g2 = pulse_ray.load_generator(args.generator)
    mses = []
    for s in range(0, args.images, args.batch_size):
        res = pulse_ray.upsample(lr_batch[s:s + args.batch_size], generator=g2, restarts=args.restarts,
                                 steps=args.steps, seed=0, ids=ids[s:s + args.batch_size])
        mses += [r.downscale_mse for r in res]
    dt = time.perf_counter() - t0
    results["runs"]["in_process"] = {"seconds": dt, "images_per_minute": args.images / dt * 60,
                                     "mean_downscale_mse": float(np.mean(mses))}
    print(f"in-process: {args.images / dt * 60:.1f} img/min ({dt:.1f}s)", flush=True)

    ray.init(num_cpus=args.num_cpus, object_store_memory=300 * 1024**2, include_dashboard=False,
             runtime_env=worker_runtime_env(), logging_level="WARNING")
    try:
        for w in [int(x) for x in args.workers.split(",") if x]:
            out = os.path.join(tmp, f"out-w{w}")
            t0 = time.perf_counter()
            s = submit(manifest, out, JobOptions(generator=args.generator, workers=w, batch_size=args.batch_size,
                                                 progress=False, threads_per_worker=args.worker_threads,
                                                 search=SearchOptions(restarts=args.restarts, steps=args.steps)))
            dt = time.perf_counter() - t0
            results["runs"][f"submit_w{w}"] = {
                "seconds": dt, "images_per_minute": args.images / dt * 60,
                "pipeline_images_per_minute": s.images_per_minute, "ok": s.ok, "failed": s.failed,
                "workers": s.workers}
            print(f"submit, {w} worker(s): {args.images / dt * 60:.1f} img/min ({dt:.1f}s, ok {s.ok})", flush=True)
    finally:
        ray.shutdown()
        shutil.rmtree(tmp, ignore_errors=True)
    r = results["runs"]
    if "submit_w1" in r:
        r["ray_overhead_ratio_w1"] = r["in_process"]["images_per_minute"] / r["submit_w1"]["images_per_minute"]
    if "submit_w1" in r and "submit_w2" in r:
        r["speedup_w2_over_w1"] = r["submit_w2"]["images_per_minute"] / r["submit_w1"]["images_per_minute"]
    with open(args.out, "w") as f:
        json.dump(results, f, indent=2)
    print(json.dumps(results["runs"], indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
