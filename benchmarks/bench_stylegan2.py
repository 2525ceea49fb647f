"""One PULSE search step at 1024 px on this machine: StyleGAN2 (FFHQ-1024 config) next to v1 (FFHQ-1024).

    OMP_NUM_THREADS=1 python benchmarks/bench_stylegan2.py --json benchmarks/results/bench_stylegan2_cpu.json

Both generators have random weights in the official FFHQ-1024 layouts (StyleGAN2: NVIDIA's ``ffhq.pkl``
config, 18 W+ layers; v1: PULSE's ``synthesis.pt``, from ``../shared/fixtures/pulse_reference.pt``), LR
128x128 (factor 8), ``pulse_ray.upsample`` in fp32. Per generator and batch: seconds per step and per
image-step (a call with warm-up + steps minus one with warm-up only, after one untimed call of the same
shapes), both as wall time and as this process's CPU time (on a shared, loaded machine the CPU time
is the steadier figure: with one thread it is the step's cost without the waiting), FLOPs per image-step (``torch.utils.flop_counter``: matmuls and convolutions), and the
StyleGAN2 / v1 ratios, all measured in one run so a loaded machine affects both alike. StyleGAN2 runs
first, so its ``peak_rss_mb_so_far`` is its own peak (process RSS, weights and activations).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(HERE)
for p in (REPO, HERE):
    if p not in sys.path:
        sys.path.insert(0, p)


def time_steps(g, lr, steps: int, warmup: int) -> dict:
    """Wall and CPU seconds per search step at batch ``len(lr)`` (difference of two calls)."""
    import pulse_ray

    kw = dict(restarts=1, early_stop=False, batch_size=len(lr), ids=[f"x{i}" for i in range(len(lr))])
    pulse_ray.upsample(lr, g, steps=warmup, **kw)  # untimed: first use of these shapes
    marks = []
    for n in (warmup, warmup + steps):
        w0, c0 = time.perf_counter(), time.process_time()
        pulse_ray.upsample(lr, g, steps=n, **kw)
        marks.append((time.perf_counter() - w0, time.process_time() - c0))
    return {"batch": len(lr), "steps": steps, "rows_computed": 2 if len(lr) == 1 else len(lr),
            "wall_seconds_per_step": max(marks[1][0] - marks[0][0], 1e-9) / steps,
            "cpu_seconds_per_step": max(marks[1][1] - marks[0][1], 1e-9) / steps,
            "wall_seconds_per_call": [m[0] for m in marks], "cpu_seconds_per_call": [m[1] for m in marks]}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--batches", default="1,4")
    ap.add_argument("--steps", type=int, default=1)
    ap.add_argument("--warmup", type=int, default=1)
    ap.add_argument("--factor", type=int, default=8)
    ap.add_argument("--tiny", action="store_true", help="32 px toy networks (a smoke run)")
    ap.add_argument("--json", default="bench_stylegan2.json")
    args = ap.parse_args(argv)

    import torch

    from device_check import build_generator, build_stylegan2_generator, flops_per_image_step, matrix_rate

    dev = torch.device("cpu")
    batches = [int(b) for b in args.batches.split(",")]
    gens = {"stylegan2": build_stylegan2_generator(args.tiny, dev), "v1": build_generator(args.tiny, dev)}
    out = {"date": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
           "command": "python benchmarks/bench_stylegan2.py " + " ".join(sys.argv[1:] if argv is None else argv),
           "torch": torch.__version__, "threads": torch.get_num_threads(), "cpus": os.cpu_count(),
           "steps": args.steps, "warmup": args.warmup, "factor": args.factor,
           "fp32_matmul_rate_flops": matrix_rate(dev, "fp32", 256 if args.tiny else 1024, 10), "generators": {}}
    for name, g in gens.items():
        flops = flops_per_image_step(g, args.factor)
        entry = {"generator": g.name, "resolution": g.resolution, "num_ws": g.num_layers,
                 "noise_layers": len(g.synthesis.noise_shapes(1)),
                 "synthesis_parameters": sum(p.numel() for p in g.synthesis.parameters()),
                 "flops_per_image_step": flops["step"], "flops_forward": flops["forward"], "runs": []}
        lr = torch.rand(max(batches), 3, g.resolution // args.factor, g.resolution // args.factor,
                        generator=torch.Generator().manual_seed(0))
        for b in batches:
            r = time_steps(g, lr[:b], args.steps, args.warmup)
            r["cpu_seconds_per_image_step"] = r["cpu_seconds_per_step"] / b
            r["share_of_fp32_matmul_rate_cpu_time"] = flops["step"] / r["cpu_seconds_per_image_step"] \
                / out["fp32_matmul_rate_flops"]
            entry["runs"].append(r)
            print(name, json.dumps(r), flush=True)
        entry["peak_rss_mb_so_far"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: KiB
        out["generators"][name] = entry
    sg2, v1 = out["generators"]["stylegan2"], out["generators"]["v1"]
    out["ratios_stylegan2_over_v1"] = {
        "flops_per_image_step": sg2["flops_per_image_step"] / v1["flops_per_image_step"],
        "cpu_seconds_per_step": {str(a["batch"]): a["cpu_seconds_per_step"] / b["cpu_seconds_per_step"]
                                 for a, b in zip(sg2["runs"], v1["runs"])},
        "wall_seconds_per_step": {str(a["batch"]): a["wall_seconds_per_step"] / b["wall_seconds_per_step"]
                                  for a, b in zip(sg2["runs"], v1["runs"])}}
    with open(args.json, "w") as f:
        json.dump(out, f, indent=2)
    print(json.dumps(out["ratios_stylegan2_over_v1"]))
    print(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
