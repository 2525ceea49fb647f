"""StyleGAN2 weight files: NVIDIA ``.pkl``, rosinality ``.pt``, and pulse-ray's own bundle.

:func:`read_generator_file` tells the kinds apart by their bytes (zip, torch's legacy format,
plain pickle) and returns what a generator is built from; :func:`convert` writes any StyleGAN2
file as a pulse-ray bundle (weights only, optionally fp16, with the gaussian fit), which every
worker of a cluster job loads fast with ``torch.load(weights_only=True)``.
"""

from __future__ import annotations

import argparse
import hashlib
import io
import pickle
from pathlib import Path

import torch

from .checkpoint import CheckpointError, check_gaussian_fit, save_checkpoint
from .nvidia_pickle import load_nvidia_pickle
from .stylegan2 import StyleGAN2Config, from_rosinality

FAMILY = "stylegan2"
ZIP_MAGIC = b"PK\x03\x04"
TORCH_LEGACY_MAGIC = b"\x80\x02\x8a\x0a"  # pickle protocol 2, then torch's magic number as a 10-byte long


def file_kind(data: bytes) -> str:
    """``"zip"`` (torch's format), ``"torch-legacy"``, ``"pickle"`` or ``"unknown"``, from the first bytes."""
    if data[:4] == ZIP_MAGIC:
        return "zip"
    if data[:4] == TORCH_LEGACY_MAGIC:
        return "torch-legacy"
    if data[:1] == b"\x80":
        return "pickle"
    return "unknown"


def short_hash(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()[:12]


def load_torch_file(data: bytes, where: str) -> dict:
    """A torch file read with ``weights_only=True``; ``argparse.Namespace`` (rosinality's ``args``) allowed."""
    try:
        with torch.serialization.safe_globals([argparse.Namespace]):
            obj = torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        raise CheckpointError(f"{where}: refused to load: the file holds more than tensors and plain "
                              f"containers, and loading it could run code ({str(e).splitlines()[0]})") from None
    except Exception as e:  # torch raises many types for malformed files
        raise CheckpointError(f"{where}: not a readable torch weights file (corrupt or truncated?): "
                              f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}") from None
    if not isinstance(obj, dict):
        raise CheckpointError(f"{where}: expected a dict of tensors, found {type(obj).__name__}")
    return obj


def _split(sd: dict) -> tuple[dict, dict]:
    syn = {k[len("synthesis."):]: v for k, v in sd.items() if k.startswith("synthesis.")}
    mapping = {k[len("mapping."):]: v for k, v in sd.items() if k.startswith("mapping.")}
    return syn, mapping


def read_generator_file(data: bytes, where: str):
    """``("stylegan2", parts)`` for a StyleGAN2 file, else ``("v1", dict)`` for the v1 loader.

    ``parts``: ``{"config": StyleGAN2Config, "state_dict": NVIDIA-layout dict, "gaussian_fit": fit or
    None, "meta": dict}``.
    """
    kind = file_kind(data)
    if kind == "unknown":
        raise CheckpointError(f"{where}: not a generator file (neither a torch file nor a pickle; "
                              f"{len(data)} bytes, starting {data[:8]!r})")
    if kind == "pickle":
        cfg, sd, kwargs = load_nvidia_pickle(data, where)
        return FAMILY, {"config": cfg, "state_dict": sd, "gaussian_fit": None,
                        "meta": {"format": "nvidia-pickle", "init_kwargs": kwargs}}
    obj = load_torch_file(data, where)
    if "g_ema" in obj:
        g_ema, avg = obj["g_ema"], obj.get("latent_avg")
        if not isinstance(g_ema, dict) or (avg is not None and not torch.is_tensor(avg)):
            raise CheckpointError(f"{where}: 'g_ema' must be a state dict and 'latent_avg' a tensor")
        try:
            cfg, sd = from_rosinality(g_ema, avg)
        except (ValueError, KeyError) as e:
            raise CheckpointError(f"{where}: {e}") from None
        return FAMILY, {"config": cfg, "state_dict": sd, "gaussian_fit": None, "meta": {"format": "rosinality"}}
    meta = obj.get("meta")
    if isinstance(meta, dict) and meta.get("family") == FAMILY:
        try:
            cfg = StyleGAN2Config.from_dict(meta["config"]).check()
        except (KeyError, TypeError, ValueError) as e:
            raise CheckpointError(f"{where}: StyleGAN2 bundle with an unusable config: {e}") from None
        sd = {f"synthesis.{k}": v for k, v in (obj.get("synthesis") or {}).items()}
        sd.update({f"mapping.{k}": v for k, v in (obj.get("mapping") or {}).items()})
        fit = obj.get("gaussian_fit")
        return FAMILY, {"config": cfg, "state_dict": sd,
                        "gaussian_fit": check_gaussian_fit(fit, where) if fit is not None else None,
                        "meta": dict(meta)}
    return "v1", obj


def convert(source: str, out: str, *, half: bool = False, fit_samples: int = 1_000_000, store=None) -> dict:
    """Write the StyleGAN2 generator ``source`` (path, ``file://``, ``s3://`` through ``store``) as a
    pulse-ray bundle ``out``.

    Returns a summary (resolution, num_ws, source name and hash, bytes written).
    """
    from .generator import StyleGAN2Generator, load_generator

    g = load_generator(source, device="cpu", fit_samples=fit_samples, store=store)
    if not isinstance(g, StyleGAN2Generator):
        raise CheckpointError(f"{source}: not a StyleGAN2 generator (v1 files are pulse-ray bundles already)")
    syn = g.synthesis.state_dict()
    mapping = g.mapping.state_dict()
    meta = {"family": FAMILY, "config": g.config.to_dict(), "converted_from": g.name}
    save_checkpoint(out, syn, mapping, g.gaussian_fit, meta, half=half)
    return {"resolution": g.resolution, "num_ws": g.num_layers, "source": meta["converted_from"],
            "bytes": Path(out).stat().st_size}
