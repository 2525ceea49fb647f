"""Search throughput and quality: the reference PULSE loop vs ``pulse_ray.upsample``. Writes JSON.

    python benchmarks/bench_search.py --json bench_search.json                     # the defaults below
    python benchmarks/bench_search.py --json b.json --images 4 --restarts 2 --steps 20 --generator g.pt

Defaults: the bundled generator, 16 held-out LR faces (people the generator was not trained on,
from ``../shared/data/faces.parquet``) at factor 8, 4 restarts, eps 2e-3, seed 0; steps: PULSE's 100
for the reference loop and ``pulse_ray-before``, ``pulse_ray.upsample``'s default for the others.
Modes, each run in its own child process (so peak RSS is per mode), on the same generator, LR
images and per-(image, restart) seeds:

- ``reference-loop``: the reference algorithm as its code runs it (``benchmarks/reference_loop.py``:
  batch 1, restarts one after another, all steps, fp32, torch.optim + SphericalOptimizer);
- ``pulse_ray``: ``pulse_ray.upsample`` as shipped (defaults);
- optional (``--modes``): ``pulse_ray-closest`` (``keep="closest"``: the lowest-error iterate, which
  early stop ends soon after convergence), ``pulse_ray-skip`` (``skip_converged_restarts=True``), ``pulse_ray-nostop``
  (``early_stop=False``: batching alone), ``pulse_ray-b1`` (``batch_size=1``: early stop alone),
  ``pulse_ray-compile`` (``compile=True``; compiling happens in the untimed warm-up, recompiles for new
  batch shapes during the run are timed); ``pulse_ray-before`` (the defaults before issue 18:
  ``halving=""``, ``deterministic=True``, 100 steps); ``pulse_ray[steps=60;halving=0.5]``: any SearchOptions fields.

``--repeats 3`` runs every mode three times, alternating, and reports the run with the median
images/hour (``runs_images_per_hour`` lists all of them).

Per mode: images/hour, image-steps/s (optimizer steps actually run, summed over searches, per
second), share converged (the returned image's downscale MSE <= eps), face rate of the returned
images (``pulse_ray.eval.face_rate``), mean downscale MSE, peak RSS of the child process; and the
ratio ``pulse_ray / reference-loop`` of images/hour. Timings cover the search only (generator loaded
and one tiny warm-up search run before the clock starts). ``--scaling 16,64,256`` adds pulse_ray's
images/hour at those job sizes (``--scaling-steps`` to shorten them).

What the reference "returns": its code yields the *last* iterate, and only when some iterate's
clamped L2 reached eps; it also keeps ``best_im``, the lowest-total-loss iterate. For a comparison
of quality that does not penalise it for that quirk, the reference's output per image here is the
``best_im`` of the restart whose ``best_im`` has the lowest downscale MSE; ``shipped_share`` is the
share of images for which the reference code writes any output at all.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(HERE)
for p in (REPO, HERE):
    if p not in sys.path:
        sys.path.insert(0, p)

DEFAULT_SOURCE = os.path.join(os.path.dirname(REPO), "shared", "data", "faces.parquet")
NAMED = {"pulse_ray": {}, "pulse_ray-closest": {"keep": "closest"}, "pulse_ray-skip": {"skip_converged_restarts": True},
         "pulse_ray-nostop": {"early_stop": False}, "pulse_ray-b1": {"batch_size": 1},
         "pulse_ray-compile": {"compile": True},
         # the shipped defaults before issue 18: no successive halving, a lone search run as two rows
         "pulse_ray-before": {"halving": "", "deterministic": True}}
MODES = ("reference-loop", *NAMED)
PULSE_STEPS = 100  # the reference code's default, and pulse_ray's until issue 18


def mode_options(mode: str) -> dict:
    """The ``upsample`` keywords of a mode: a named one, or ``pulse_ray[steps=60;halving=0.5]``
    (any SearchOptions fields, ';'-separated)."""
    if mode in NAMED:
        return dict(NAMED[mode])
    if not (mode.startswith("pulse_ray[") and mode.endswith("]")):
        raise ValueError(f"unknown mode {mode!r} (known: {', '.join(MODES)}, or pulse_ray[field=value;...])")
    import dataclasses
    import typing

    from pulse_ray.search.options import SearchOptions

    hints = typing.get_type_hints(SearchOptions)
    names = {f.name for f in dataclasses.fields(SearchOptions)}
    out = {}
    for item in filter(None, mode[len("pulse_ray["):-1].split(";")):
        key, _, value = item.partition("=")
        if key not in names:
            raise ValueError(f"mode {mode!r}: {key!r} is not a search option")
        kind = hints[key]
        out[key] = (value.lower() in ("1", "true", "yes")) if kind is bool else \
            int(value) if kind is int else float(value) if kind is float else value
    return out


# ----------------------------------------------------------------------------- inputs


def make_inputs(g, source: str, n: int, factor: int, seed: int = 123, held_out_share: float = 0.03, skip: int = 0):
    """HR faces ``[n, 3, R, R]`` in [0, 1], their LR images (PULSE's downscale, rounded to 8 bits, as
    a manifest's PNGs would be) and ids. ``source == "samples"``: the generator's own samples."""
    import torch

    import pulse_ray

    if source == "samples":
        hr = g.sample(n, seed=seed).cpu()
        ids = [f"sample{i:04d}" for i in range(n)]
    else:
        from pulse_ray.train.data import held_out_faces

        ids, arr = held_out_faces(source, g.resolution, n, held_out_share=held_out_share, skip=skip)
        hr = torch.from_numpy(arr).permute(0, 3, 1, 2).float() / 255
    lr = (pulse_ray.downscale(hr, factor).clamp(0, 1) * 255).round() / 255
    return hr, lr, ids


# ----------------------------------------------------------------------------- the modes (child side)


def run_mode(mode: str, g, lr, ids, cfg: dict) -> dict:
    """Run one mode on ``lr`` (warm-up excluded from the clock). Returns metrics and images."""
    import torch

    import pulse_ray
    from reference_loop import reference_search, reference_upsample

    from pulse_ray.search.options import SearchOptions

    restarts, eps, seed = cfg["restarts"], cfg["eps"], cfg["seed"]
    # --steps for every mode; without it PULSE's 100 for the reference and the old defaults, the shipped default else
    steps = cfg["steps"] or (PULSE_STEPS if mode in ("reference-loop", "pulse_ray-before") else SearchOptions().steps)
    if mode == "reference-loop":
        reference_search(g, lr[:1], g.resolution // lr.shape[-1], 1, steps=2, eps=eps)  # warm-up
        t0, c0 = time.perf_counter(), time.process_time()
        out = reference_upsample(lr, g, restarts=restarts, steps=steps, eps=eps, seed=seed, ids=ids)
        seconds, cpu_seconds = time.perf_counter() - t0, time.process_time() - c0
        return {
            "seconds": seconds,
            "cpu_seconds": cpu_seconds,
            "search_steps": len(ids) * restarts * steps,
            "searches": len(ids) * restarts,
            "images": torch.stack([o["image"] for o in out]),
            "downscale_mse": [o["downscale_mse"] for o in out],
            "converged": [bool(o["converged"]) for o in out],
            "extra": {
                # the reference code's own outputs: the last iterate, only where min clamped L2 <= eps
                "shipped_share": sum(o["shipped"] for o in out) / len(out),
                "converged_restarts_share": sum(r["converged"] for o in out for r in o["restarts"])
                / (len(out) * restarts),
                "mean_last_iterate_mse": sum(r["last_mse"] for o in out for r in o["restarts"])
                / (len(out) * restarts),
            },
        }
    kwargs = mode_options(mode)
    steps = kwargs.pop("steps", steps)
    if cfg.get("batch_size") and "batch_size" not in kwargs:
        kwargs["batch_size"] = cfg["batch_size"]
    if cfg.get("patience") is not None:
        kwargs["patience"] = cfg["patience"]
    warm = {k: v for k, v in kwargs.items() if k == "compile"}  # compiling is part of the warm-up
    pulse_ray.upsample(lr[:1], g, restarts=min(restarts, 2), steps=2, eps=eps, seed=seed + 1, **warm)
    t0, c0 = time.perf_counter(), time.process_time()
    res = pulse_ray.upsample(lr, g, restarts=restarts, steps=steps, eps=eps, seed=seed, ids=ids,
                             save_restarts=True, **kwargs)
    seconds, cpu_seconds = time.perf_counter() - t0, time.process_time() - c0
    return {
        "seconds": seconds,
        "cpu_seconds": cpu_seconds,
        "search_steps": sum(r.steps for x in res for r in x.restarts),
        "searches": sum(len(x.restarts) for x in res),
        "images": torch.stack([x.image for x in res]),
        "downscale_mse": [x.downscale_mse for x in res],
        "converged": [bool(x.converged) for x in res],
        "extra": {"batch_size": kwargs.get("batch_size") or g.default_batch_size(), **{
            k: v for k, v in kwargs.items() if k != "batch_size"}},
    }


def _child(mode: str, workdir: str, tag: str) -> int:
    import torch

    import pulse_ray

    with open(os.path.join(workdir, "config.json")) as f:
        cfg = json.load(f)
    if cfg.get("threads"):
        torch.set_num_threads(cfg["threads"])
    inputs = torch.load(os.path.join(workdir, "inputs.pt"), weights_only=True)
    n = cfg.get("n_override", {}).get(tag) or len(inputs["ids"])
    g = pulse_ray.load_generator(cfg["generator"], device=cfg.get("device"))
    lr, ids = inputs["lr"][:n], inputs["ids"][:n]
    if tag.startswith("scaling"):
        cfg = {**cfg, "steps": cfg["scaling_steps"] or cfg["steps"]}
    out = run_mode(mode, g, lr, ids, cfg)
    out["peak_rss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: KiB
    if g.device.type == "cuda":
        out["peak_gpu_mb"] = torch.cuda.max_memory_allocated(g.device) / 2**20
    torch.save(out, os.path.join(workdir, f"{tag}.pt"))
    return 0


# ----------------------------------------------------------------------------- parent side


def _spawn(mode: str, workdir: str, tag: str) -> dict:
    import torch

    cmd = [sys.executable, os.path.abspath(__file__), "--_child", mode, "--_workdir", workdir, "--_tag", tag]
    proc = subprocess.run(cmd)
    if proc.returncode != 0:
        raise SystemExit(f"mode {mode} ({tag}) failed with exit code {proc.returncode}")
    return torch.load(os.path.join(workdir, f"{tag}.pt"), weights_only=True)


def summarise(raw: dict, n: int, steps: int) -> dict:
    from pulse_ray.eval import face_rate

    s = raw["seconds"]
    conv = raw["converged"]
    out = {
        "images": n,
        "seconds": round(s, 3),
        "images_per_hour": n / s * 3600,
        # CPU time of the child (all its threads): less sensitive than wall time to other jobs on the machine
        "cpu_seconds": round(raw["cpu_seconds"], 3),
        "images_per_cpu_hour": n / raw["cpu_seconds"] * 3600,
        "image_steps_per_s": raw["search_steps"] / s,
        "search_steps": int(raw["search_steps"]),
        "searches": int(raw["searches"]),
        "mean_steps_per_search": raw["search_steps"] / max(1, raw["searches"]),
        "converged_share": sum(conv) / len(conv),
        "face_rate": face_rate(raw["images"]),
        "mean_downscale_mse": sum(raw["downscale_mse"]) / len(raw["downscale_mse"]),
        "peak_rss_mb": round(raw["peak_rss_mb"], 1),
    }
    if "peak_gpu_mb" in raw:
        out["peak_gpu_mb"] = round(raw["peak_gpu_mb"], 1)
    out.update(raw.get("extra", {}))
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
    ap.add_argument("--json", default="bench_search.json", help="where the results go")
    ap.add_argument("--generator", default=None, help="name, path or URI (default: the bundled one)")
    ap.add_argument("--images", type=int, default=16)
    ap.add_argument("--restarts", type=int, default=4)
    ap.add_argument("--steps", type=int, default=None,
                    help=f"steps of every mode (default: {PULSE_STEPS} for reference-loop and pulse_ray-before, "
                         "the shipped default for the others)")
    ap.add_argument("--factor", type=int, default=8)
    ap.add_argument("--eps", type=float, default=2e-3)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--batch-size", type=int, default=None, help="pulse_ray's generator batch (default: its own)")
    ap.add_argument("--patience", type=int, default=None, help="pulse_ray's early-stop patience (default: its own)")
    ap.add_argument("--modes", default="reference-loop,pulse_ray",
                    help=f"comma-separated, from {', '.join(MODES)}, or pulse_ray[field=value;...] (SearchOptions)")
    ap.add_argument("--repeats", type=int, default=1, help="runs of every mode, alternating; the median is reported")
    ap.add_argument("--source", default=DEFAULT_SOURCE,
                    help="faces Parquet (held-out rows are used), or 'samples' for generator samples")
    ap.add_argument("--held-out-share", type=float, default=0.03,
                    help="the training split's held-out share of --source (0.05 for utkface)")
    ap.add_argument("--skip", type=int, default=0, help="skip the first N held-out faces (a separate validation set)")
    ap.add_argument("--scaling", default="", help="comma-separated job sizes for pulse_ray alone, e.g. 16,64,256")
    ap.add_argument("--scaling-steps", type=int, default=None, help="steps for the scaling runs (default --steps)")
    ap.add_argument("--threads", type=int, default=None, help="torch threads in each mode (default: torch's)")
    ap.add_argument("--device", default=None, help="cpu or cuda (default: cuda when available)")
    ap.add_argument("--_child", help=argparse.SUPPRESS)
    ap.add_argument("--_workdir", help=argparse.SUPPRESS)
    ap.add_argument("--_tag", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args._child:
        return _child(args._child, args._workdir, args._tag)

    import torch

    import pulse_ray
    from pulse_ray.eval import face_rate

    modes = [m for m in args.modes.split(",") if m]
    for m in modes:
        if m != "reference-loop":
            try:
                mode_options(m)
            except ValueError as e:
                ap.error(str(e))
    scaling = [int(x) for x in args.scaling.split(",") if x]
    g = pulse_ray.load_generator(args.generator, device="cpu")
    pulse_ray.check_lr_size(g.resolution // args.factor, g.resolution // args.factor, g.resolution)
    n_total = max([args.images, *scaling])
    t0 = time.perf_counter()
    hr, lr, ids = make_inputs(g, args.source, n_total, args.factor, held_out_share=args.held_out_share,
                              skip=args.skip)
    prep_s = time.perf_counter() - t0
    cfg = {"generator": args.generator, "restarts": args.restarts, "steps": args.steps, "eps": args.eps,
           "seed": args.seed, "batch_size": args.batch_size, "threads": args.threads, "device": args.device,
           "patience": args.patience,
           "scaling_steps": args.scaling_steps,
           "n_override": {**{f"mode{j}_{rep}": args.images for j in range(len(modes)) for rep in range(args.repeats)},
                          **{f"scaling{c}": c for c in scaling}}}
    results = {
        "command": "python benchmarks/bench_search.py " + " ".join(sys.argv[1:] if argv is None else argv),
        "date": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
        "config": {"generator": g.name, "generator_source": args.generator, "resolution": g.resolution,
                   "generator_images_shown": g.meta.get("images_shown"),
                   "num_layers": g.num_layers, "factor": args.factor, "lr_size": g.resolution // args.factor,
                   "images": args.images, "repeats": args.repeats, "restarts": args.restarts, "steps": args.steps, "eps": args.eps,
                   "seed": args.seed, "batch_size": args.batch_size, "patience": args.patience,
                   "source": args.source, "held_out_share": args.held_out_share, "skip": args.skip},
        "machine": {"cpus": os.cpu_count(), "platform": platform.platform(), "python": platform.python_version(),
                    "torch": torch.__version__, "torch_threads": args.threads or torch.get_num_threads(),
                    "device": args.device or ("cuda" if torch.cuda.is_available() else "cpu"),
                    "loadavg_at_start": os.getloadavg()},
        "inputs": {"ids": ids[:args.images], "hr_face_rate": face_rate(hr[:args.images]),
                   "prepare_seconds": round(prep_s, 2)},
        "modes": {},
    }
    with tempfile.TemporaryDirectory(prefix="bench-search-") as work:
        torch.save({"lr": lr, "ids": ids}, os.path.join(work, "inputs.pt"))
        with open(os.path.join(work, "config.json"), "w") as f:
            json.dump(cfg, f)
        runs = {m: [] for m in modes}
        for rep in range(args.repeats):  # modes alternate, so a slow spell of the machine hits them all
            for j, m in enumerate(modes):
                print(f"[bench_search] {m} (run {rep + 1}/{args.repeats}): {args.images} images x {args.restarts} "
                      f"restarts x {args.steps or 'default'} steps ...", flush=True)
                runs[m].append(summarise(_spawn(m, work, f"mode{j}_{rep}"), args.images, args.steps))
                print(f"[bench_search] {m}: {runs[m][-1]['images_per_hour']:.1f} images/hour", flush=True)
        for m, rs in runs.items():  # the run with the median images/hour, and every run's rate
            results["modes"][m] = {**sorted(rs, key=lambda r: r["images_per_hour"])[len(rs) // 2],
                                   "runs_images_per_hour": [r["images_per_hour"] for r in rs],
                                   "runs_images_per_cpu_hour": [r["images_per_cpu_hour"] for r in rs]}
        if scaling:
            sc = {"mode": "pulse_ray", "restarts": args.restarts, "steps": args.scaling_steps or args.steps or "default",
                  "runs": {}}
            for c in scaling:
                print(f"[bench_search] scaling: pulse_ray on {c} images ...", flush=True)
                sc["runs"][str(c)] = summarise(_spawn("pulse_ray", work, f"scaling{c}"), c, sc["steps"])
                rate = sc["runs"][str(c)]["images_per_hour"]
                print(f"[bench_search] scaling {c}: {rate:.1f} images/hour", flush=True)
            rates = [r["images_per_hour"] for r in sc["runs"].values()]
            sc["max_over_min_images_per_hour"] = max(rates) / min(rates)
            results["scaling"] = sc
    m = results["modes"]
    if "reference-loop" in m and "pulse_ray" in m:
        ref, ours = m["reference-loop"], m["pulse_ray"]
        results["ratio_images_per_hour"] = ours["images_per_hour"] / ref["images_per_hour"]
        results["ratio_images_per_hour_per_run"] = [a / b for a, b in zip(ours["runs_images_per_hour"],
                                                                         ref["runs_images_per_hour"])]
        results["ratio_images_per_cpu_hour_per_run"] = [a / b for a, b in zip(
            ours["runs_images_per_cpu_hour"], ref["runs_images_per_cpu_hour"])]
        results["ratio_images_per_cpu_hour_median"] = sorted(results["ratio_images_per_cpu_hour_per_run"])[
            len(ours["runs_images_per_cpu_hour"]) // 2]
        results["targets"] = {
            "speedup_at_least_5x": results["ratio_images_per_hour"] >= 5.0,
            "converged_share_no_lower": ours["converged_share"] >= ref["converged_share"],
            "face_rate_at_most_0.05_lower": ours["face_rate"] >= ref["face_rate"] - 0.05,
        }
    if "pulse_ray-before" in m and "pulse_ray" in m:
        before, ours = m["pulse_ray-before"], m["pulse_ray"]
        results["vs_before"] = {
            "ratio_images_per_hour": ours["images_per_hour"] / before["images_per_hour"],
            "face_rate_at_most_0.02_lower": ours["face_rate"] >= before["face_rate"] - 0.02,
            "converged_share_at_most_0.02_lower": ours["converged_share"] >= before["converged_share"] - 0.02}
    with open(args.json, "w") as f:
        json.dump(results, f, indent=2)
    print_table(results)
    print(f"[bench_search] wrote {args.json}")
    return 0


def print_table(results: dict) -> None:
    c = results["config"]
    print(f"\n{c['generator']} ({c['resolution']} px), {c['images']} LR faces {c['lr_size']}x{c['lr_size']} "
          f"(factor {c['factor']}), {c['restarts']} restarts, {c['steps'] or 'default'} steps, eps {c['eps']}; "
          f"HR face rate {results['inputs']['hr_face_rate']:.2f}")
    head = f"{'mode':<30}{'images/h':>10}{'img/CPU-h':>11}{'img-steps/s':>13}{'steps/search':>14}{'converged':>11}" \
           f"{'face rate':>11}{'mean MSE':>11}{'peak RSS MB':>13}"
    print(head)
    print("-" * len(head))
    for name, r in results["modes"].items():
        print(f"{name:<30}{r['images_per_hour']:>10.1f}{r['images_per_cpu_hour']:>11.1f}{r['image_steps_per_s']:>13.2f}"
              f"{r['mean_steps_per_search']:>14.1f}{r['converged_share']:>11.2f}{r['face_rate']:>11.2f}"
              f"{r['mean_downscale_mse']:>11.5f}{r['peak_rss_mb']:>13.0f}")
    if "ratio_images_per_hour" in results:
        print(f"pulse_ray / reference-loop images/hour: {results['ratio_images_per_hour']:.2f}x (runs: "
              + ", ".join(f"{x:.2f}x" for x in results["ratio_images_per_hour_per_run"])
              + f"); per CPU-hour (median of runs): {results['ratio_images_per_cpu_hour_median']:.2f}x (runs: "
              + ", ".join(f"{x:.2f}x" for x in results["ratio_images_per_cpu_hour_per_run"])
              + f"); targets: {results['targets']}")
    if "vs_before" in results:
        print(f"pulse_ray / pulse_ray-before: {results['vs_before']}")
    if "scaling" in results:
        sc = results["scaling"]
        print(f"scaling (pulse_ray, {sc['restarts']} restarts, {sc['steps']} steps): " + ", ".join(
            f"{k} images {v['images_per_hour']:.1f}/h" for k, v in sc["runs"].items())
            + f"; max/min {sc['max_over_min_images_per_hour']:.2f}")


if __name__ == "__main__":
    raise SystemExit(main())
