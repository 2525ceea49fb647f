"""Search-step throughput on one device: pulse_ray.upsample per batch size and precision, the reference
loop at batch 1, peak memory, FLOPs per image-step and the achieved share of the card's matrix rate.

    python benchmarks/device_check.py --json device_check.json            # FFHQ-1024 shapes; on a GPU
    python benchmarks/device_check.py --tiny --json device_check.json     # 32 px toy network; CPU, seconds
    python benchmarks/device_check.py --device cpu --batches 1,4 --steps 1 --warmup 1 --precisions fp32 \\
        --json cpu1024.json                                               # FFHQ-1024 on the CPU
    python benchmarks/device_check.py --stylegan2 --json device_check_sg2.json   # StyleGAN2 FFHQ-1024 layout

The generator is the FFHQ-1024 synthesis network's layout (``ffhq1024_synthesis_shapes`` in
``shared/fixtures/pulse_reference.pt``) with random weights, and PULSE's FFHQ gaussian fit; the LR
inputs are random 128x128 images (factor 8). A random network is as expensive as a trained one.
An *image-step* is one optimizer step of one search: generator forward, downscale, loss, backward to
the latent and noise (the weights are frozen), update. Timed over ``--steps`` steps after
``--warmup`` steps of the same shape (cuDNN autotuning and allocation excluded).

``--stylegan2``: the same measurements on the StyleGAN2 generator at the official FFHQ-1024 config
(NVIDIA's ``ffhq.pkl``: channel_base 32768, channel_max 512, conv_clamp 256, 18 W+ layers), random
weights, searched in W+; no reference loop (PULSE's code has no StyleGAN2). ``--tiny`` with it: a
32 px StyleGAN2.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from types import SimpleNamespace

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(HERE)
for p in (REPO, HERE):
    if p not in sys.path:
        sys.path.insert(0, p)

FIXTURE = os.path.join(os.path.dirname(REPO), "shared", "fixtures", "pulse_reference.pt")
TINY_CHANNELS = [32, 32, 16, 8]  # 32 px


def build_generator(tiny: bool, device, fixture: str = FIXTURE):
    import torch

    import pulse_ray
    from pulse_ray.models.stylegan import SynthesisNetwork, synthesis_channels_from_state_dict

    ref = torch.load(fixture, weights_only=True) if os.path.exists(fixture) else None
    torch.manual_seed(0)
    if tiny:
        channels = TINY_CHANNELS
    else:
        if ref is None:
            raise SystemExit(f"{fixture} not found: it holds the FFHQ-1024 layout (use --tiny without it)")
        shapes = ref["ffhq1024_synthesis_shapes"]
        channels = synthesis_channels_from_state_dict({k: SimpleNamespace(shape=tuple(v)) for k, v in shapes.items()})
    net = SynthesisNetwork(channels)
    if not tiny:  # same layout as PULSE's synthesis.pt, parameter for parameter
        own = {k: tuple(v.shape) for k, v in net.state_dict().items()}
        ffhq = {k: tuple(v) for k, v in ref["ffhq1024_synthesis_shapes"].items()}
        if own != ffhq:
            raise SystemExit("the synthesis network built from the fixture's shapes does not match them")
    fit = ref["ffhq_gaussian_fit"] if ref is not None else {"mean": torch.zeros(512), "std": torch.ones(512)}
    g = pulse_ray.Generator(net, gaussian_fit=fit, name="tiny32" if tiny else "ffhq1024-random")
    return g.to(device)


def build_stylegan2_generator(tiny: bool, device):
    """A StyleGAN2 generator with random weights: the FFHQ-1024 config, or a 32 px toy one."""
    import torch

    from pulse_ray.models.generator import StyleGAN2Generator
    from pulse_ray.models.stylegan2 import StyleGAN2Config, StyleGAN2Networks

    torch.manual_seed(0)
    if tiny:
        cfg = StyleGAN2Config.nvidia(32, channel_base=512, channel_max=32, mapping_layers=2, conv_clamp=256)
    else:
        cfg = StyleGAN2Config.nvidia(1024, channel_base=32768, channel_max=512, mapping_layers=8, conv_clamp=256)
    nets = StyleGAN2Networks(cfg)
    fit = {"mean": torch.zeros(cfg.w_dim), "std": torch.ones(cfg.w_dim)}  # random weights: any prior costs the same
    name = "stylegan2-tiny32" if tiny else "stylegan2-ffhq1024-random"
    return StyleGAN2Generator(nets, fit, name=name).to(device)


def _sync(device):
    import torch

    if device.type == "cuda":
        torch.cuda.synchronize(device)


def flops_per_image_step(g, factor: int) -> dict:
    """FLOPs of one search step of one image (forward + backward to latent and noise), counted by
    ``torch.utils.flop_counter`` (matmuls and convolutions; elementwise work is not counted)."""
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    import pulse_ray
    from pulse_ray.search.losses import loss_per_sample, parse_loss

    b = 1
    lat = torch.randn(b, g.num_layers, 512, device=g.device, requires_grad=True)
    noise = [torch.randn(s, device=g.device) for s in g.synthesis.noise_shapes(b)]
    for t in noise[:5]:
        t.requires_grad_(True)
    ref = torch.rand(b, 3, g.resolution // factor, g.resolution // factor, device=g.device)
    counter = FlopCounterMode(display=False)
    with counter:
        w = g.latents_from_prior(lat)
        hr = (g.synthesize(w, noise) + 1) / 2
        fwd = counter.get_total_flops()
        total, _ = loss_per_sample(parse_loss("100*L2+0.05*GEOCROSS"), w, pulse_ray.downscale(hr, factor), ref, 2e-3)
        total.sum().backward()  # grads reach only the latent and noise: the weights are frozen
    return {"forward": fwd, "step": counter.get_total_flops()}


def matrix_rate(device, dtype_name: str, n: int, reps: int) -> float:
    """Measured dense matmul rate (FLOP/s) for ``n x n`` matrices."""
    import torch

    dtype = {"bf16": torch.bfloat16, "fp32": torch.float32}[dtype_name]
    a = torch.randn(n, n, device=device, dtype=dtype)
    b = torch.randn(n, n, device=device, dtype=dtype)
    for _ in range(2):
        a @ b
    _sync(device)
    t0 = time.perf_counter()
    for _ in range(reps):
        a @ b
    _sync(device)
    return 2 * n**3 * reps / (time.perf_counter() - t0)


def time_upsample(g, lr, batch: int, precision: str, steps: int, warmup: int, compile: bool = False) -> dict:
    import torch

    import pulse_ray

    dev = g.device
    x = lr[:batch]
    ids = [f"x{i}" for i in range(batch)]
    kw = dict(restarts=1, early_stop=False, batch_size=batch, precision=precision, ids=ids, compile=compile)
    pulse_ray.upsample(x, g, steps=warmup, **kw)  # first use of these shapes: allocation, autotuning, compiling
    if dev.type == "cuda":
        torch.cuda.reset_peak_memory_stats(dev)
    # per-step time = (run of warmup + steps) - (run of warmup): the per-call setup (drawing the
    # searches' start points, moving them to the device) cancels out
    _sync(dev)
    t0 = time.perf_counter()
    pulse_ray.upsample(x, g, steps=warmup, **kw)
    _sync(dev)
    t1 = time.perf_counter()
    res = pulse_ray.upsample(x, g, steps=warmup + steps, **kw)
    _sync(dev)
    t2 = time.perf_counter()
    dt = max((t2 - t1) - (t1 - t0), 1e-9)
    out = {"batch": batch, "precision": precision, "compile": compile, "steps": steps, "seconds": dt,
           "seconds_per_step": dt / steps, "image_steps_per_s": batch * steps / dt,
           "seconds_per_call_of_warmup_plus_steps": t2 - t1,
           # a lone search runs as two identical rows (pulse_ray's batch invariance), so batch 1 computes 2
           "rows_computed": 2 if batch == 1 else batch,
           "mean_downscale_mse": sum(r.downscale_mse for r in res) / len(res)}
    if dev.type == "cuda":
        out["peak_gpu_mb"] = torch.cuda.max_memory_allocated(dev) / 2**20
    return out, res


def time_reference(g, lr, steps: int, warmup: int) -> dict:
    import torch

    from reference_loop import reference_search

    dev = g.device
    factor = g.resolution // lr.shape[-1]
    old = None
    if dev.type == "cuda":  # "plain fp32": no TF32 for the reference
        from pulse_ray.search.pulse import _cuda_fp32_mode

        old = _cuda_fp32_mode("fp32", dev)
        old.__enter__()
    try:
        reference_search(g, lr[:1], factor, 1, steps=warmup)
        if dev.type == "cuda":
            torch.cuda.reset_peak_memory_stats(dev)
        _sync(dev)  # per-step time from the difference of two runs, as for pulse_ray
        t0 = time.perf_counter()
        reference_search(g, lr[:1], factor, 2, steps=warmup)
        _sync(dev)
        t1 = time.perf_counter()
        reference_search(g, lr[:1], factor, 2, steps=warmup + steps)
        _sync(dev)
        dt = max((time.perf_counter() - t1) - (t1 - t0), 1e-9)
    finally:
        if old is not None:
            old.__exit__(None, None, None)
    out = {"batch": 1, "precision": "fp32", "steps": steps, "seconds": dt, "seconds_per_step": dt / steps,
           "image_steps_per_s": steps / dt}
    if dev.type == "cuda":
        out["peak_gpu_mb"] = torch.cuda.max_memory_allocated(dev) / 2**20
    return out


def _write(path: str, out: dict) -> None:
    tmp = f"{path}.tmp"
    with open(tmp, "w") as f:
        json.dump(out, f, indent=2)
    os.replace(tmp, path)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
    ap.add_argument("--tiny", action="store_true", help="32 px toy network, batches 1,2,4, 2 steps (a smoke run)")
    ap.add_argument("--device", default=None, help="default: cuda when available, else cpu")
    ap.add_argument("--batches", default=None, help="default 1,8,32,64 (--tiny: 1,2,4)")
    ap.add_argument("--precisions", default=None, help="default fp32,tf32,bf16 on CUDA, fp32 on the CPU")
    ap.add_argument("--steps", type=int, default=None, help="timed steps per configuration (default 5; --tiny 2)")
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--factor", type=int, default=8)
    ap.add_argument("--no-reference", action="store_true", help="skip the reference loop")
    ap.add_argument("--compile", action="store_true", help="also time torch.compile (bf16 where available)")
    ap.add_argument("--tolerance-check", action="store_true",
                    help="compare TF32 / bf16 results with fp32 (default on CUDA)")
    ap.add_argument("--stylegan2", action="store_true",
                    help="the StyleGAN2 generator (FFHQ-1024 config, random weights; --tiny: 32 px) instead of v1")
    ap.add_argument("--json", default="device_check.json")
    ap.add_argument("--fixture", default=FIXTURE,
                    help="file with ffhq1024_synthesis_shapes and ffhq_gaussian_fit (default: ../shared's fixture)")
    args = ap.parse_args(argv)

    import torch

    dev = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    cuda = dev.type == "cuda"
    batches = [int(b) for b in (args.batches or ("1,2,4" if args.tiny else "1,8,32,64")).split(",")]
    precisions = (args.precisions or ("fp32,tf32,bf16" if cuda else "fp32")).split(",")
    steps = args.steps or (2 if args.tiny else 5)
    t_start = time.perf_counter()
    g = build_stylegan2_generator(args.tiny, dev) if args.stylegan2 else build_generator(args.tiny, dev, args.fixture)
    lr_size = g.resolution // args.factor
    gen = torch.Generator().manual_seed(0)
    lr = torch.rand(max(batches), 3, lr_size, lr_size, generator=gen)
    out = {
        "date": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
        "command": "python benchmarks/device_check.py " + " ".join(sys.argv[1:] if argv is None else argv),
        "generator": g.name, "resolution": g.resolution, "factor": args.factor,
        "synthesis_parameters": sum(p.numel() for p in g.synthesis.parameters()),
        "device": {"type": dev.type, "name": torch.cuda.get_device_name(dev) if cuda else platform.processor()
                   or platform.machine(), "cpus": os.cpu_count(), "torch": torch.__version__,
                   "torch_threads": torch.get_num_threads(),
                   "cuda": torch.version.cuda if cuda else None},
        "steps": steps, "warmup": args.warmup, "runs": [],
    }
    print(json.dumps({k: out[k] for k in ("generator", "resolution", "device")}), flush=True)
    flops = flops_per_image_step(g, args.factor)
    out["flops_per_image_step"] = flops["step"]
    out["flops_generator_forward"] = flops["forward"]
    if cuda:
        out["matrix_rate_flops"] = {"bf16": matrix_rate(dev, "bf16", 8192, 50)}
        peak_name = "bf16"
    else:  # bf16 matmuls on a CPU say little about it: the fp32 rate is the useful ceiling there
        out["matrix_rate_flops"] = {"fp32": matrix_rate(dev, "fp32", 256 if args.tiny else 1024, 10)}
        peak_name = "fp32"
    peak = out["matrix_rate_flops"][peak_name]
    print(f"FLOPs per image-step {flops['step'] / 1e9:.2f} G (forward {flops['forward'] / 1e9:.2f} G); "
          f"measured {peak_name} matrix rate {peak / 1e12:.3f} TFLOP/s", flush=True)

    fp32_results = {}
    for prec in precisions:
        for b in batches:
            try:
                r, res = time_upsample(g, lr, b, prec, steps, args.warmup)
            except torch.cuda.OutOfMemoryError as e:  # pragma: no cover - GPU only
                r = {"batch": b, "precision": prec, "error": f"out of memory: {str(e).splitlines()[0]}"}
                torch.cuda.empty_cache()
                res = None
            if "image_steps_per_s" in r:
                r["achieved_share_of_" + peak_name + "_rate"] = r["image_steps_per_s"] * flops["step"] / peak
                if prec == "fp32":
                    fp32_results[b] = res
                elif b in fp32_results and res is not None and (args.tolerance_check or cuda):
                    ref = fp32_results[b]
                    r["vs_fp32_max_abs_image_diff"] = max((x.image - y.image).abs().max().item()
                                                          for x, y in zip(ref, res))
                    r["vs_fp32_max_rel_mse_diff"] = max(abs(x.downscale_mse - y.downscale_mse)
                                                        / max(x.downscale_mse, 1e-12) for x, y in zip(ref, res))
            out["runs"].append(r)
            print(json.dumps(r), flush=True)
            _write(args.json, out)  # as it goes: a run cut off by the time limit keeps what it measured
    if args.compile:
        prec = "bf16" if cuda else "fp32"
        b = batches[-1]
        t0 = time.perf_counter()
        r, _ = time_upsample(g, lr, b, prec, steps, args.warmup, compile=True)
        r["compile_and_warmup_seconds"] = time.perf_counter() - t0 - r["seconds"]
        r["achieved_share_of_" + peak_name + "_rate"] = r["image_steps_per_s"] * flops["step"] / peak
        out["runs"].append(r)
        print(json.dumps(r), flush=True)
    if not args.no_reference and not args.stylegan2:
        r = time_reference(g, lr, steps, args.warmup)
        r["achieved_share_of_" + peak_name + "_rate"] = r["image_steps_per_s"] * flops["step"] / peak
        out["reference_loop"] = r
        print("reference loop:", json.dumps(r), flush=True)
    out["total_seconds"] = time.perf_counter() - t_start
    _write(args.json, out)
    print_table(out, peak_name)
    print(f"wrote {args.json} ({out['total_seconds']:.0f} s)")
    return 0


def print_table(out: dict, peak_name: str) -> None:
    print(f"\n{out['generator']} ({out['resolution']} px) on {out['device']['name']} ({out['device']['type']}); "
          f"{out['flops_per_image_step'] / 1e9:.2f} GFLOP per image-step")
    head = f"{'mode':<26}{'batch':>6}{'s/step':>10}{'img-steps/s':>13}{'share ' + peak_name:>12}{'peak GPU MB':>13}"
    print(head)
    print("-" * len(head))
    rows = [("pulse_ray " + r["precision"] + (" compiled" if r.get("compile") else ""), r) for r in out["runs"]]
    if "reference_loop" in out:
        rows.append(("reference loop fp32", out["reference_loop"]))
    for name, r in rows:
        if "error" in r:
            print(f"{name:<26}{r['batch']:>6}  {r['error']}")
            continue
        share = r.get("achieved_share_of_" + peak_name + "_rate", float("nan"))
        mem = r.get("peak_gpu_mb")
        print(f"{name:<26}{r['batch']:>6}{r['seconds_per_step']:>10.3f}{r['image_steps_per_s']:>13.2f}"
              f"{share:>12.3%}{(f'{mem:.0f}' if mem is not None else '-'):>13}")


if __name__ == "__main__":
    raise SystemExit(main())
