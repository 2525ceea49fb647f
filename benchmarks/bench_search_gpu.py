"""The search step at its fastest on a GPU: static slots, CUDA-graph capture, bf16 with channels-last.

    python benchmarks/bench_search_gpu.py --json bench_search_gpu.json     # on a GPU: all layouts below
    python benchmarks/bench_search_gpu.py --tiny --json out.json           # 32 px toy layouts, CPU, seconds

Layouts: ``bundled`` (the bundled default generator, real weights), ``v1-1024`` (PULSE's FFHQ-1024 StyleGAN
synthesis layout, random weights; needs the fixture file, ``--fixture``) and ``sg2-1024`` (StyleGAN2 at
NVIDIA's FFHQ-1024 config, random weights). ``--tiny``: 32 px networks of the same three kinds.

What is timed is the search step alone with every slot busy (the steady state of continuous batching,
where the slots and so the shapes never change): generator forward, PULSE's downscale, the loss per
sample, gradients to the latents and trainable noise, Adam on the sphere, the kept downscale error.
Everything stays on the device (no host sync per step), so the step can be captured as one CUDA
graph and replayed. Variants per layout and batch:

- ``eager-tf32`` (``eager-fp32`` on a CPU): the step as ``pulse_ray.upsample`` computes it;
- ``eager-bf16-cl``: the synthesis under bf16 autocast (convolutions and matmuls in bf16, the loss,
  the gradients' use and the optimizer in fp32), weights and activations channels-last;
- ``graph-tf32``, ``graph-bf16-cl``: the same steps captured once and replayed (CUDA only);
- ``--variants``: any of ``eager|graph`` - ``fp32|tf32|bf16`` [``-cl``] [``-compiled``] (channels-last;
  ``torch.compile`` of the synthesis as ``upsample(compile=True)`` does it: ``setup_seconds`` holds the
  compile time).

Per run: seconds per step, image-steps/s, the share of the measured matrix rate (bf16 on CUDA, fp32
on a CPU) achieved with the FLOPs counted per image-step, peak GPU memory; on a CPU the same per
second of the process's CPU time too (steadier than the wall clock on a shared machine). Checks written beside
them: the fp32 static step against ``pulse_ray.upsample`` (same seeds, same steps: the lowest
downscale error over the iterates, relative difference), and the bf16 step's first loss against
fp32's (relative difference per row: the rounding bf16 costs before the search amplifies it).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(HERE)
for p in (REPO, HERE):
    if p not in sys.path:
        sys.path.insert(0, p)

LAYOUTS = ("bundled", "v1-1024", "sg2-1024")
#: batches per layout on a GPU: small generators are launch-bound and want thousands of searches
GPU_BATCHES = {"bundled": (256, 1024, 4096), "v1-1024": (16, 64), "sg2-1024": (16, 64)}
TINY_BATCHES = (2, 4)


def build(layout: str, tiny: bool, device, fixture: str):
    import pulse_ray
    from device_check import build_generator, build_stylegan2_generator

    if layout == "bundled":
        if tiny:
            return build_generator(True, device, fixture)
        return pulse_ray.load_generator(device=device)
    if layout == "v1-1024":
        return build_generator(tiny, device, fixture)
    return build_stylegan2_generator(tiny, device)


class StaticSearchStep:
    """``batch`` searches in fixed slots, stepped together with no host round trip.

    Starts every slot as ``pulse_ray.upsample`` would start search ``x<i>`` (seed 0, restart 0) and
    applies the same update (Adam on the sphere, PULSE's 1-cycle schedule, per-sample loss). All
    tensors are allocated once; :meth:`step` only writes into them, so it can be graph-captured.
    """

    def __init__(self, g, lr, steps: int, bf16: bool = False, channels_last: bool = False, compile: bool = False):
        import torch

        from pulse_ray.search.losses import parse_loss
        from pulse_ray.search.options import SearchOptions
        from pulse_ray.search.pulse import _Searches, _synthesis_fn, search_seed

        o = SearchOptions(steps=steps)
        batch = lr.shape[0]
        s = _Searches(g, batch, o)
        for i in range(batch):
            s.start(i, search_seed(o.seed, f"x{i}", 0))
        self.g, self.o, self.steps, self.cl = g, o, steps, channels_last
        self.synthesize = _synthesis_fn(g, "bf16" if bf16 else "fp32", compile)  # upsample's own forward
        self.terms = parse_loss(o.loss)
        self.factor = g.resolution // lr.shape[-1]
        self.ref = lr.to(g.device)
        self.params = [s.latent.clone().requires_grad_(True), *[t.clone().requires_grad_(True) for t in s.trainable]]
        self.radii = [r.clone().to(g.device) for r in s.opt.radii]
        self.m = [torch.zeros_like(p) for p in self.params]
        self.v = [torch.zeros_like(p) for p in self.params]
        self.t = torch.zeros((), device=g.device)
        self.noise_kind, self.fixed = s.noise_kind, [f.clone() for f in s.fixed_noise]
        if channels_last:
            g.synthesis.to(memory_format=torch.channels_last)
            self.fixed = [f.contiguous(memory_format=torch.channels_last) if f.dim() == 4 else f for f in self.fixed]
        self.mse = torch.zeros(batch, device=g.device)  # this step's downscale error per slot
        self.best_mse = torch.full((batch,), float("inf"), device=g.device)

    def _noise(self):
        out, ti, fi = [], 1, 0
        for kind in self.noise_kind:
            if kind == "trainable":
                out.append(self.params[ti])
                ti += 1
            else:
                out.append(self.fixed[fi])
                fi += 1
        return out

    def step(self) -> None:
        import torch

        from pulse_ray.search.downscale import downscale
        from pulse_ray.search.losses import l2_per_sample, loss_per_sample
        from pulse_ray.search.optim import lr_factor, sphere_norm

        w = self.g.latents_from_prior(self.params[0])
        hr = (self.synthesize(w, self._noise()).contiguous() + 1) / 2
        gen_lr = downscale(hr, self.factor)
        per_sample, _ = loss_per_sample(self.terms, w, gen_lr, self.ref, self.o.eps)
        grads = torch.autograd.grad(per_sample.sum(), self.params)
        with torch.no_grad():
            self.mse.copy_(l2_per_sample(gen_lr, self.ref))
            torch.minimum(self.best_mse, self.mse, out=self.best_mse)
            lr = self.o.learning_rate * lr_factor(self.o.lr_schedule, self.t, self.steps).float()
            self.t += 1
            bc1, bc2 = 1 - 0.9 ** self.t, 1 - 0.999 ** self.t
            for p, gr, m, v, r in zip(self.params, grads, self.m, self.v, self.radii):
                m.mul_(0.9).add_(gr, alpha=0.1)
                v.mul_(0.999).addcmul_(gr, gr, value=0.001)
                x = p - (lr / bc1) * m / (v.sqrt() / bc2.sqrt() + 1e-8)
                p.copy_(x / sphere_norm(x) * r)


def _sync(device) -> None:
    import torch

    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_variant(g, lr, variant: str, steps: int, warmup: int) -> dict:
    """Seconds per step of one variant (``eager-*`` / ``graph-*``, ``*-bf16-cl`` or fp32/TF32)."""
    import torch

    from pulse_ray.search.pulse import _cuda_fp32_mode

    dev = g.device
    bf16 = "bf16" in variant
    precision = "fp32" if "fp32" in variant or dev.type != "cuda" else "tf32"
    if variant.startswith("graph") and dev.type != "cuda":
        return {"variant": variant, "batch": lr.shape[0], "skipped": "CUDA graphs need a CUDA device"}
    with _cuda_fp32_mode(precision, dev):
        t_start = time.perf_counter()
        st = StaticSearchStep(g, lr, steps=warmup + steps + 3, bf16=bf16, channels_last="-cl" in variant,
                              compile=variant.endswith("-compiled"))
        try:
            if dev.type == "cuda":
                torch.cuda.reset_peak_memory_stats(dev)
            run = st.step
            if variant.startswith("graph"):
                side = torch.cuda.Stream(dev)
                side.wait_stream(torch.cuda.current_stream(dev))
                with torch.cuda.stream(side):  # warm-up off the capture stream, as torch's recipe asks
                    for _ in range(3):
                        st.step()
                torch.cuda.current_stream(dev).wait_stream(side)
                graph = torch.cuda.CUDAGraph()
                with torch.cuda.graph(graph):
                    st.step()
                run = graph.replay
            for _ in range(warmup):
                run()
            _sync(dev)
            t0, c0 = time.perf_counter(), time.process_time()
            setup = t0 - t_start  # building the slots, capturing or compiling, the warm-up steps
            for _ in range(steps):
                run()
            _sync(dev)
            dt = max(time.perf_counter() - t0, 1e-9)
            cpu = max(time.process_time() - c0, 1e-9)
        finally:
            if st.cl:
                g.synthesis.to(memory_format=torch.contiguous_format)
    out = {"variant": variant, "batch": lr.shape[0], "steps": steps, "seconds_per_step": dt / steps,
           "setup_seconds": setup,
           "image_steps_per_s": lr.shape[0] * steps / dt, "mean_best_mse": float(st.best_mse.mean())}
    if dev.type == "cuda":
        out["peak_gpu_mb"] = torch.cuda.max_memory_allocated(dev) / 2**20
    else:  # the process's CPU time: on a shared machine steadier than the wall clock
        out["image_steps_per_cpu_s"] = lr.shape[0] * steps / cpu
    return out


def cpu_matrix_rate(n: int = 1024, reps: int = 10) -> float:
    """fp32 matmul FLOP per second of this process's CPU time (``n x n`` matrices)."""
    import torch

    a, b = torch.randn(n, n), torch.randn(n, n)
    a @ b
    c0 = time.process_time()
    for _ in range(reps):
        a @ b
    return 2 * n**3 * reps / max(time.process_time() - c0, 1e-9)


def agreement_with_upsample(g, lr, steps: int) -> float:
    """Largest relative difference between the static fp32 step's lowest downscale error over
    ``steps`` steps and ``pulse_ray.upsample``'s (``keep="closest"``, same seeds, no early stop)."""
    import pulse_ray
    from pulse_ray.search.pulse import _cuda_fp32_mode

    with _cuda_fp32_mode("fp32", g.device):
        st = StaticSearchStep(g, lr, steps=steps)
        for _ in range(steps):
            st.step()
        res = pulse_ray.upsample(lr, g, restarts=1, steps=steps, early_stop=False, keep="closest", halving="",
                                 precision="fp32", ids=[f"x{i}" for i in range(lr.shape[0])])
    return max(abs(float(b) - r.downscale_mse) / r.downscale_mse for b, r in zip(st.best_mse.cpu(), res))


def bf16_first_loss_difference(g, lr) -> float:
    """Largest relative difference of the first step's downscale error, bf16-autocast vs fp32."""
    from pulse_ray.search.pulse import _cuda_fp32_mode

    errs = []
    with _cuda_fp32_mode("fp32", g.device):
        for bf16 in (False, True):
            st = StaticSearchStep(g, lr, steps=10, bf16=bf16)
            st.step()
            errs.append(st.mse.cpu())
    return float(((errs[1] - errs[0]).abs() / errs[0]).max())


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
    ap.add_argument("--tiny", action="store_true", help="32 px networks, batches 2,4, 2 steps: a CPU smoke run")
    ap.add_argument("--device", default=None, help="default: cuda when available, else cpu")
    ap.add_argument("--layouts", default=",".join(LAYOUTS), help=f"comma-separated, from {', '.join(LAYOUTS)}")
    ap.add_argument("--batches", default=None, help="one list for every layout (default: per layout)")
    ap.add_argument("--steps", type=int, default=None, help="timed steps per run (default 10; --tiny 2)")
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--factor", type=int, default=8)
    ap.add_argument("--fixture", default=None, help="file with the FFHQ-1024 layout (default: device_check's)")
    ap.add_argument("--variants", default=None, help="comma-separated, e.g. eager-fp32,eager-bf16,eager-fp32-cl "
                    "(default: eager/graph in TF32 and bf16 channels-last on CUDA; eager fp32 and bf16-cl on a CPU)")
    ap.add_argument("--json", default="bench_search_gpu.json")
    args = ap.parse_args(argv)

    import torch

    from device_check import FIXTURE, flops_per_image_step, matrix_rate

    dev = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    cuda = dev.type == "cuda"
    steps = args.steps or (2 if args.tiny else 10)
    variants = args.variants.split(",") if args.variants else \
        ("eager-tf32", "eager-bf16-cl", "graph-tf32", "graph-bf16-cl") if cuda else ("eager-fp32", "eager-bf16-cl", "graph-fp32")
    out = {"date": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
           "command": "python benchmarks/bench_search_gpu.py " + " ".join(sys.argv[1:] if argv is None else argv),
           "device": {"type": dev.type, "name": torch.cuda.get_device_name(dev) if cuda else
                      platform.processor() or platform.machine(), "torch": torch.__version__,
                      "torch_threads": torch.get_num_threads()},
           "steps": steps, "warmup": args.warmup, "layouts": {}}
    peak_name = "bf16" if cuda else "fp32"
    out["matrix_rate_flops"] = {peak_name: matrix_rate(dev, peak_name, 8192 if cuda else 256 if args.tiny else 1024,
                                                       50 if cuda else 10)}
    peak = out["matrix_rate_flops"][peak_name]
    if not cuda:
        out["matrix_rate_flops"]["fp32_per_cpu_second"] = cpu_matrix_rate(256 if args.tiny else 1024)
    for layout in [x for x in args.layouts.split(",") if x]:
        if layout not in LAYOUTS:
            ap.error(f"unknown layout {layout!r} (known: {', '.join(LAYOUTS)})")
        g = build(layout, args.tiny, dev, args.fixture or FIXTURE)
        batches = [int(b) for b in args.batches.split(",")] if args.batches else \
            list(TINY_BATCHES if args.tiny else GPU_BATCHES[layout] if cuda else (8, 32))
        flops = flops_per_image_step(g, args.factor)["step"]
        gen = torch.Generator().manual_seed(0)
        lr_all = torch.rand(max(batches), 3, g.resolution // args.factor, g.resolution // args.factor, generator=gen)
        rec = {"generator": g.name, "resolution": g.resolution, "flops_per_image_step": flops, "runs": [],
               "upsample_agreement_rel": agreement_with_upsample(g, lr_all[:2], 3),
               "bf16_first_mse_rel_diff": bf16_first_loss_difference(g, lr_all[:2])}
        out["layouts"][layout] = rec
        for b in batches:
            for v in variants:
                try:
                    r = time_variant(g, lr_all[:b], v, steps, args.warmup)
                except torch.cuda.OutOfMemoryError as e:  # pragma: no cover - GPU only
                    torch.cuda.empty_cache()
                    r = {"variant": v, "batch": b, "error": f"out of memory: {str(e).splitlines()[0]}"}
                except RuntimeError as e:  # a capture that fails is a figure too: say why
                    r = {"variant": v, "batch": b, "error": str(e).splitlines()[0][:300]}
                if "image_steps_per_s" in r:
                    r["achieved_share_of_" + peak_name + "_rate"] = r["image_steps_per_s"] * flops / peak
                if "image_steps_per_cpu_s" in r:
                    r["achieved_gflops_per_cpu_s"] = r["image_steps_per_cpu_s"] * flops / 1e9
                    r["achieved_share_of_fp32_rate_per_cpu_s"] = \
                        r["image_steps_per_cpu_s"] * flops / out["matrix_rate_flops"]["fp32_per_cpu_second"]
                rec["runs"].append(r)
                print(layout, json.dumps(r), flush=True)
                with open(args.json, "w") as f:  # as it goes: a run cut off by a time limit keeps the rest
                    json.dump(out, f, indent=2)
        del g
        if cuda:
            torch.cuda.empty_cache()
    with open(args.json, "w") as f:
        json.dump(out, f, indent=2)
    print_table(out, peak_name)
    return 0


def print_table(out: dict, peak_name: str) -> None:
    for layout, rec in out["layouts"].items():
        print(f"\n{layout}: {rec['generator']} ({rec['resolution']} px), {rec['flops_per_image_step'] / 1e9:.3f} "
              f"GFLOP per image-step; fp32 static step vs upsample {rec['upsample_agreement_rel']:.1e} rel; "
              f"bf16 first-step MSE vs fp32 {rec['bf16_first_mse_rel_diff']:.1e} rel")
        for r in rec["runs"]:
            if "image_steps_per_s" not in r:
                print(f"  {r['variant']:<15}{r['batch']:>6}  {r.get('skipped') or r.get('error')}")
                continue
            mem = f"{r['peak_gpu_mb']:.0f} MB" if "peak_gpu_mb" in r else \
                f"CPU time: {r['image_steps_per_cpu_s']:.1f} img-steps/s, {r['achieved_gflops_per_cpu_s']:.1f} GFLOP/s, " \
                f"{r['achieved_share_of_fp32_rate_per_cpu_s']:.1%} of fp32"
            print(f"  {r['variant']:<15}{r['batch']:>6}{r['seconds_per_step']:>10.4f} s/step"
                  f"{r['image_steps_per_s']:>12.1f} img-steps/s{r['achieved_share_of_' + peak_name + '_rate']:>9.2%}"
                  f" of {peak_name}  {mem}")


if __name__ == "__main__":
    raise SystemExit(main())
