"""The reference PULSE search loop, as the public PULSE code runs it, for the benchmarks.

This re-states ``PULSE.forward`` and ``run.py`` of the reference code (Menon et al. 2020) on top of
this project's networks, downscaler and loss terms, so the only differences to ``pulse_ray.upsample``
are the ones the benchmark measures:

- one image per generator batch (``run.py``'s default ``-batch_size 1``);
- every restart ("duplicate") a separate, full search, one after another;
- all ``steps`` steps, always (no early stop);
- plain fp32, ``torch.optim.Adam`` (or SGD / SGD+momentum / Adamax) wrapped in PULSE's
  ``SphericalOptimizer`` (re-projection of every latent row / noise map onto the sphere of its initial
  radius after each step), ``LambdaLR`` with PULSE's schedule functions;
- the loss (default ``100*L2+0.05*GEOCROSS``) summed over the batch, L2 clamped below at eps;
- the reference tracks ``best_im`` (the iterate with the lowest *total* loss) and ``min_l2`` (lowest
  clamped L2); when ``min_l2 <= eps`` it yields the **last** iterate (``gen_im``), else nothing.

Initialisation: the reference draws the latent and then the noise maps with ``torch.randn`` from the
global RNG. Here they are drawn in the same order from a ``torch.Generator`` seeded per restart with
``pulse_ray.search.search_seed(seed, id, restart)``, exactly as ``pulse_ray.upsample`` seeds its
searches, so the two start every search from the same point.
"""

from __future__ import annotations

from functools import partial

import numpy as np
import torch

from pulse_ray.search.downscale import downscale
from pulse_ray.search.losses import l2_per_sample, loss_per_sample, parse_loss


class SphericalOptimizer:
    """PULSE's ``SphericalOptimizer``: a torch optimizer, then re-projection onto the initial spheres."""

    def __init__(self, optimizer, params, **kwargs):
        self.opt = optimizer(params, **kwargs)
        self.params = params
        with torch.no_grad():
            self.radii = {p: (p.pow(2).sum(tuple(range(2, p.ndim)), keepdim=True) + 1e-9).sqrt() for p in params}

    @torch.no_grad()
    def step(self, closure=None):
        loss = self.opt.step(closure)
        for p in self.params:
            p.data.div_((p.pow(2).sum(tuple(range(2, p.ndim)), keepdim=True) + 1e-9).sqrt())
            p.mul_(self.radii[p])
        return loss


OPTIMIZERS = {
    "sgd": torch.optim.SGD,
    "adam": torch.optim.Adam,
    "sgdm": partial(torch.optim.SGD, momentum=0.9),
    "adamax": torch.optim.Adamax,
}


def schedule_function(name: str, steps: int):
    """PULSE's ``schedule_dict`` (the lambdas of ``PULSE.forward``)."""
    return {
        "fixed": lambda x: 1,
        "linear1cycle": lambda x: (9 * (1 - np.abs(x / steps - 1 / 2) * 2) + 1) / 10,
        "linear1cycledrop": lambda x: (9 * (1 - np.abs(x / (0.9 * steps) - 1 / 2) * 2) + 1) / 10
        if x < 0.9 * steps else 1 / 10 + (x - 0.9 * steps) / (0.1 * steps) * (1 / 1000 - 1 / 10),
    }[name]


def reference_search(g, ref_im: torch.Tensor, factor: int, seed: int, *, steps: int = 100, eps: float = 2e-3,
                     loss: str = "100*L2+0.05*GEOCROSS", optimizer: str = "adam", learning_rate: float = 0.4,
                     lr_schedule: str = "linear1cycledrop", noise_type: str = "trainable",
                     num_trainable_noise_layers: int = 5, bad_noise_layers: str = "17",
                     tile_latent: bool = False) -> dict:
    """One reference search (one restart) of one LR image ``ref_im`` ``[1, 3, h, w]`` in [0, 1].

    Returns ``last_im`` (the reference's output when ``converged``), ``best_im`` (lowest total
    loss), ``best_mse`` (unclamped downscale MSE of ``best_im``), ``last_mse``, ``min_l2`` (lowest
    clamped L2 over the iterates), ``converged`` (``min_l2 <= eps``, the reference's own test), ``steps``,
    and, for checks against ``pulse_ray`` only, ``min_mse`` / ``min_mse_im`` (the lowest-MSE iterate).
    Images are ``[3, R, R]`` clamped to [0, 1], on the CPU.
    """
    dev = g.device
    ref_im = ref_im.to(dev).float()
    batch_size = ref_im.shape[0]
    if batch_size != 1:
        raise ValueError("the reference loop runs one image at a time")
    gen = torch.Generator().manual_seed(int(seed))
    n = 1 if tile_latent else g.num_layers
    latent = torch.randn((n, 512), generator=gen).unsqueeze(0).to(dev).requires_grad_(True)
    bad = [int(x) for x in str(bad_noise_layers).split(".") if x.strip() != ""]
    noise, noise_vars = [], []
    for i, shape in enumerate(g.synthesis.noise_shapes(batch_size)):
        if noise_type == "zero" or i in bad:
            new_noise = torch.zeros(shape, device=dev)
        elif noise_type == "fixed":
            new_noise = torch.randn(shape[1:], generator=gen).unsqueeze(0).to(dev)
        elif noise_type == "trainable":
            new_noise = torch.randn(shape[1:], generator=gen).unsqueeze(0).to(dev)
            if i < num_trainable_noise_layers:
                new_noise.requires_grad_(True)
                noise_vars.append(new_noise)
        else:
            raise ValueError(f"unknown noise type {noise_type!r}")
        noise.append(new_noise)
    var_list = [latent] + noise_vars
    opt = SphericalOptimizer(OPTIMIZERS[optimizer], var_list, lr=learning_rate)
    scheduler = torch.optim.lr_scheduler.LambdaLR(opt.opt, schedule_function(lr_schedule, steps))
    terms = parse_loss(loss)
    mean, std = g.gaussian_fit["mean"], g.gaussian_fit["std"]

    min_loss, min_l2, min_mse = float("inf"), None, float("inf")
    best_im = gen_im = min_mse_im = None
    for _ in range(steps):
        opt.opt.zero_grad()
        latent_in = latent.expand(-1, g.num_layers, -1) if tile_latent else latent
        latent_in = torch.nn.functional.leaky_relu(latent_in * std + mean, 0.2)
        gen_im = (g.synthesize(latent_in, noise) + 1) / 2
        gen_lr = downscale(gen_im, factor)
        per_sample, values = loss_per_sample(terms, latent_in, gen_lr, ref_im, eps)
        total = per_sample.sum()
        mse = l2_per_sample(gen_lr.detach(), ref_im).item()  # not in the reference: for the comparison test
        if mse < min_mse:
            min_mse, min_mse_im = mse, gen_im.detach().clone()
        if total.item() < min_loss:
            min_loss = total.item()
            best_im = gen_im.detach().clone()
        if "L2" in values:
            # a float32 tensor, as in the reference: its "min_l2 <= eps" then compares in float32, where
            # the clamped value equals eps (a python-float comparison would miss float32(eps) > eps)
            l2 = values["L2"].sum().detach().cpu()
            min_l2 = l2 if min_l2 is None or l2 < min_l2 else min_l2
        total.backward()
        opt.step()
        scheduler.step()

    with torch.no_grad():
        best_mse = float(l2_per_sample(downscale(best_im, factor), ref_im)[0])
        last_mse = float(l2_per_sample(downscale(gen_im.detach(), factor), ref_im)[0])
    return {
        "last_im": gen_im.detach()[0].clamp(0, 1).cpu(),
        "best_im": best_im[0].clamp(0, 1).cpu(),
        "best_mse": best_mse,
        "last_mse": last_mse,
        "min_l2": float(min_l2) if min_l2 is not None else float("inf"),
        "min_mse": min_mse,  # lowest unclamped downscale MSE of any iterate (what pulse_ray returns) ...
        "min_mse_im": min_mse_im[0].clamp(0, 1).cpu(),  # ... and that iterate; not part of the reference
        "converged": bool(min_l2 <= eps) if min_l2 is not None else False,
        "steps": steps,
    }


def reference_upsample(lr_batch: torch.Tensor, g, *, restarts: int = 4, steps: int = 100, eps: float = 2e-3,
                       seed: int = 0, ids=None, **kwargs) -> list[dict]:
    """``run.py`` with ``-batch_size 1 -duplicates restarts``: every (image, restart) one full search.

    Per image: ``restarts`` (the per-restart dicts of :func:`reference_search`), and the pick the
    benchmark compares against ``pulse_ray``: ``image`` = ``best_im`` of the restart whose ``best_im``
    has the lowest downscale MSE, ``downscale_mse`` of it, ``converged`` = that MSE <= eps, and
    ``shipped`` = whether the reference code writes any output for the image (some restart has
    ``min_l2 <= eps``).
    """
    from pulse_ray.search import check_lr_size, search_seed

    keys = [str(k) for k in ids] if ids is not None else [str(i) for i in range(len(lr_batch))]
    out = []
    for i, lr in enumerate(lr_batch):
        factor = check_lr_size(lr.shape[-2], lr.shape[-1], g.resolution)
        runs = []
        for r in range(restarts):
            runs.append(reference_search(g, lr.unsqueeze(0), factor, search_seed(seed, keys[i], r), steps=steps,
                                         eps=eps, **kwargs))
        best = min(range(restarts), key=lambda r: runs[r]["best_mse"])
        out.append({"image": runs[best]["best_im"], "downscale_mse": runs[best]["best_mse"],
                    "converged": runs[best]["best_mse"] <= eps, "restart": best,
                    "shipped": any(x["converged"] for x in runs), "restarts": runs})
    return out
