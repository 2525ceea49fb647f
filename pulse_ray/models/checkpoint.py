"""Generator checkpoints: reading, writing and the PULSE gaussian fit.

Accepted files (all read with ``torch.load(weights_only=True)``, which never runs code):

- a bundle ``{"synthesis": sd, "mapping": sd (optional), "gaussian_fit": {"mean","std"} (optional),
  "meta": {...}}`` (what pulse-ray writes);
- a bare synthesis state dict (PULSE's ``synthesis.pt``), a bare mapping state dict
  (``mapping.pt``) or a bare gaussian fit (``gaussian_fit.pt``). PULSE saved these from CUDA
  tensors in torch's legacy format; storages are mapped to the CPU so they load anywhere.
"""

from __future__ import annotations

import io
import os
import pickle

import torch
from torch import nn

GAUSSIAN_FIT_SLOPE = 5.0  # PULSE fits a gaussian to LeakyReLU(slope 5) of the mapping output


class CheckpointError(ValueError):
    """A generator file that cannot be used; the message names the file and the problem."""


def load_weights_file(data: bytes, where: str) -> dict:
    """Deserialize tensors-only ``data`` (zip or legacy format) to a dict on the CPU."""
    try:
        obj = torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        raise CheckpointError(f"{where}: refused to load: the file holds more than tensors and plain "
                              f"containers, and loading it could run code ({str(e).splitlines()[0]})") from e
    except Exception as e:  # torch raises many types for malformed files (IndexError, EOFError, ...)
        raise CheckpointError(f"{where}: not a readable torch weights file "
                              f"(corrupt or truncated?): {str(e).splitlines()[0]}") from e
    if not isinstance(obj, dict):
        raise CheckpointError(f"{where}: expected a dict of tensors, found {type(obj).__name__}")
    return obj


def split_checkpoint(obj: dict, where: str) -> dict:
    """Sort a loaded file into ``{"synthesis", "mapping", "gaussian_fit", "meta"}`` (missing -> None)."""
    parts = {"synthesis": None, "mapping": None, "gaussian_fit": None, "meta": {}}
    if "synthesis" in obj:
        unknown = set(obj) - set(parts)
        if unknown:
            raise CheckpointError(f"{where}: unknown checkpoint entries {sorted(unknown)}")
        parts.update({k: obj.get(k) for k in ("synthesis", "mapping", "gaussian_fit")})
        parts["meta"] = dict(obj.get("meta") or {})
    elif any(k.startswith("blocks.4x4.") for k in obj):
        parts["synthesis"] = obj
    elif "dense0.weight" in obj:
        parts["mapping"] = obj
    elif set(obj) == {"mean", "std"}:
        parts["gaussian_fit"] = obj
    else:
        keys = ", ".join(sorted(map(str, obj))[:6])
        raise CheckpointError(f"{where}: not a StyleGAN generator checkpoint (top-level keys: {keys} ...)")
    if parts["gaussian_fit"] is not None:
        parts["gaussian_fit"] = check_gaussian_fit(parts["gaussian_fit"], where)
    return parts


def check_gaussian_fit(fit, where: str) -> dict:
    """Validate a ``{"mean", "std"}`` dict of [512] tensors and return it as float32."""
    if not isinstance(fit, dict) or not {"mean", "std"} <= set(fit):
        raise CheckpointError(f"{where}: a gaussian fit must be a dict with 'mean' and 'std'")
    out = {}
    for k in ("mean", "std"):
        t = fit[k]
        if not torch.is_tensor(t) or t.dim() != 1:
            raise CheckpointError(f"{where}: gaussian fit '{k}' must be a 1-D tensor")
        out[k] = t.detach().float().cpu()
    if out["mean"].shape != out["std"].shape:
        raise CheckpointError(f"{where}: gaussian fit 'mean' and 'std' differ in shape")
    return out


@torch.no_grad()
def compute_gaussian_fit(mapping: nn.Module, num_samples: int = 1_000_000, seed: int = 0,
                         chunk: int = 50_000) -> dict:
    """PULSE's latent prior: mean and std of LeakyReLU(5)(mapping(z)), z ~ N(0, I).

    PULSE draws 1,000,000 latents; the statistics are accumulated in chunks (float64 sums), so
    memory stays flat.
    """
    gen = torch.Generator().manual_seed(seed)
    device = next(mapping.parameters()).device
    total = s1 = s2 = None
    done = 0
    while done < num_samples:
        n = min(chunk, num_samples - done)
        z = torch.randn(n, 512, generator=gen).to(device)
        x = torch.nn.functional.leaky_relu(mapping(z).float(), GAUSSIAN_FIT_SLOPE).double()
        s1 = x.sum(0) if s1 is None else s1 + x.sum(0)
        s2 = x.pow(2).sum(0) if s2 is None else s2 + x.pow(2).sum(0)
        done += n
    total = float(done)
    mean = s1 / total
    var = (s2 - total * mean.pow(2)) / (total - 1)
    return {"mean": mean.float().cpu(), "std": var.clamp_min(0).sqrt().float().cpu()}


def save_checkpoint(path: str, synthesis: dict, mapping: dict | None, gaussian_fit: dict | None,
                    meta: dict, half: bool = False) -> None:
    """Write a generator bundle atomically; ``half`` stores float weights as fp16 (loaded as fp32)."""
    def conv(sd):
        if sd is None:
            return None
        return {k: (v.detach().cpu().half() if half and v.is_floating_point() else v.detach().cpu())
                for k, v in sd.items()}

    bundle = {"synthesis": conv(synthesis), "mapping": conv(mapping), "gaussian_fit": gaussian_fit,
              "meta": _plain(meta)}
    tmp = f"{path}.tmp-{os.getpid()}"
    torch.save(bundle, tmp)
    os.replace(tmp, path)


def _plain(obj):
    """Meta as plain python values (weights_only loading accepts them)."""
    if isinstance(obj, dict):
        return {str(k): _plain(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_plain(v) for v in obj]
    if isinstance(obj, (str, int, float, bool)) or obj is None:
        return obj
    return str(obj)
