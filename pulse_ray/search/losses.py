"""PULSE's loss terms, computed per sample (the reference sums them over the batch).

A loss string is a sum of weighted terms, ``"100*L2+0.05*GEOCROSS"``:
- ``L2``: mean squared error between DS(G(z)) and the LR image, clamped below at eps;
- ``L1``: 10 x mean absolute error, clamped below at eps;
- ``GEOCROSS``: mean squared geodesic distance between the per-layer latents (a realism prior).
"""

from __future__ import annotations

import torch

TERMS = ("L2", "L1", "GEOCROSS")


def parse_loss(loss: str) -> list[tuple[float, str]]:
    """``"100*L2+0.05*GEOCROSS"`` -> ``[(100.0, "L2"), (0.05, "GEOCROSS")]``."""
    terms = []
    for part in loss.replace(" ", "").split("+"):
        weight, sep, name = part.partition("*")
        if not sep:
            weight, name = "1", part
        try:
            w = float(weight)
        except ValueError:
            raise ValueError(f"loss {loss!r}: {weight!r} in {part!r} is not a number") from None
        if name not in TERMS:
            raise ValueError(f"loss {loss!r}: unknown term {name!r} (known: {', '.join(TERMS)})")
        terms.append((w, name))
    if not any(name in ("L2", "L1") for _, name in terms):
        raise ValueError(f"loss {loss!r} has no L2 or L1 term: nothing ties the output to the LR image")
    return terms


def l2_per_sample(gen_lr: torch.Tensor, ref_lr: torch.Tensor) -> torch.Tensor:
    """Unclamped mean squared error per sample: the downscale MSE we report."""
    return (gen_lr - ref_lr).pow(2).mean(dim=(1, 2, 3))


def l1_per_sample(gen_lr: torch.Tensor, ref_lr: torch.Tensor) -> torch.Tensor:
    return (gen_lr - ref_lr).abs().mean(dim=(1, 2, 3))


def geocross_per_sample(latent: torch.Tensor) -> torch.Tensor:
    """Mean squared pairwise geodesic distance of the per-layer latents ``[B, N, 512]``."""
    b, n, d = latent.shape
    if n == 1:
        return latent.new_zeros(b)
    x = latent.view(b, 1, n, d)
    y = latent.view(b, n, 1, d)
    a = ((x - y).pow(2).sum(-1) + 1e-9).sqrt()
    c = ((x + y).pow(2).sum(-1) + 1e-9).sqrt()
    dist = 2 * torch.atan2(a, c)
    return (dist.pow(2) * d).mean(dim=(1, 2)) / 8.0


def loss_per_sample(terms, latent, gen_lr, ref_lr, eps: float) -> tuple[torch.Tensor, dict]:
    """Total loss per sample and each term per sample (``L2`` / ``L1`` already clamped at eps)."""
    values = {}
    total = None
    for weight, name in terms:
        if name not in values:
            if name == "L2":
                values[name] = l2_per_sample(gen_lr, ref_lr).clamp(min=eps)
            elif name == "L1":
                values[name] = 10 * l1_per_sample(gen_lr, ref_lr).clamp(min=eps)
            else:
                values[name] = geocross_per_sample(latent)
        term = weight * values[name]
        total = term if total is None else total + term
    return total, values
