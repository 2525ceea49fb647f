#!/usr/bin/env python
"""Compute PULSE's gaussian fit for a generator's mapping network and store it in the checkpoint.

PULSE searches latents under a gaussian prior fitted to LeakyReLU(negative_slope=5) of the mapping
network's output over many z ~ N(0, I). A generator checkpoint that ships the fit lets the search
skip the mapping network at load time::

    python scripts/fit_gaussian.py CHECKPOINT [--samples N] [--seed S] [--output OUT] [--device DEV]

CHECKPOINT is a pulse-ray generator bundle (``{"synthesis", "mapping", "gaussian_fit", "meta"}``),
a local path or ``s3://`` URI. The fit is written into the bundle (in place, or into ``--output``)
atomically: a reader sees the old file or the whole new one. A bare mapping state dict (PULSE's
``mapping.pt``) is accepted too; then ``--output`` is required and receives a bare
``{"mean", "std"}`` file (PULSE's ``gaussian_fit.pt`` format).

Exit codes: 0 done, 2 unusable input (no mapping network, unreadable file, bad arguments).
"""

from __future__ import annotations

import argparse
import io
import os
import sys
import tempfile
import time
from pathlib import Path

try:
    import pulse_ray  # noqa: F401
except ImportError:  # run from a source checkout without installing the package
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch

from pulse_ray.io import storage
from pulse_ray.models import CheckpointError, MappingNetwork, compute_gaussian_fit, save_checkpoint
from pulse_ray.models.checkpoint import load_weights_file, split_checkpoint
from pulse_ray.models.stylegan import mapping_layers_from_state_dict

PULSE_SAMPLES = 1_000_000  # what PULSE draws for its fit


class FitError(Exception):
    """The checkpoint cannot be fitted; the message says why."""


def build_mapping(state_dict: dict, where: str) -> MappingNetwork:
    """A float32 mapping network with the weights of ``state_dict``."""
    try:
        layers = mapping_layers_from_state_dict(state_dict)
        mapping = MappingNetwork(num_layers=layers)
        mapping.load_state_dict({k: v.float() if v.is_floating_point() else v for k, v in state_dict.items()})
    except (ValueError, RuntimeError) as exc:
        raise FitError(f"{where}: the mapping network does not load: {str(exc).splitlines()[0]}") from None
    return mapping.eval()


def _write(uri: str, write_local, store: storage.Storage) -> None:
    """Write through ``write_local(path)`` atomically to a local path or an S3 URI."""
    if storage.is_s3(uri):
        with tempfile.TemporaryDirectory(prefix="fit-gaussian-") as tmp:
            path = os.path.join(tmp, "checkpoint.pt")
            write_local(path)
            store.write_bytes(uri, Path(path).read_bytes())  # one PUT: atomic
        return
    path = storage.local_path(uri)
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    write_local(path)  # save_checkpoint: temp file + os.replace


def _save_bare_fit(path: str, fit: dict) -> None:
    buf = io.BytesIO()
    torch.save({"mean": fit["mean"], "std": fit["std"]}, buf)
    tmp = f"{path}.tmp-{os.getpid()}"
    with open(tmp, "wb") as f:
        f.write(buf.getvalue())
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def fit_checkpoint(checkpoint: str, output: str | None = None, samples: int = PULSE_SAMPLES, seed: int = 0,
                   device: str = "auto", log=print, store: storage.Storage | None = None) -> dict:
    """Compute the fit for ``checkpoint`` and write it to ``output`` (default: in place), through
    ``store`` (default: the environment's S3 endpoint).

    Returns the fit ``{"mean", "std"}``. Raises :class:`FitError` for unusable input.
    """
    if samples < 2:
        raise FitError(f"--samples must be at least 2, got {samples}")
    store = store or storage.Storage()
    try:
        data = store.read_bytes(checkpoint)
    except storage.StorageError as exc:
        raise FitError(str(exc)) from None
    try:
        parts = split_checkpoint(load_weights_file(data, checkpoint), checkpoint)
    except CheckpointError as exc:
        raise FitError(str(exc)) from None
    if parts["mapping"] is None:
        raise FitError(
            f"{checkpoint}: no mapping network in this checkpoint, so the gaussian fit cannot be computed "
            "(a checkpoint needs a 'mapping' state dict; PULSE's synthesis.pt alone is not enough: "
            "bundle it with its mapping.pt, or use the released gaussian_fit.pt)"
        )
    bare_mapping = parts["synthesis"] is None
    target = output or checkpoint
    if bare_mapping and output is None:
        raise FitError(
            f"{checkpoint}: a bare mapping state dict, not a generator bundle; give --output for the "
            "gaussian fit file (written in PULSE's gaussian_fit.pt format)"
        )

    dev = torch.device("cuda" if device == "auto" and torch.cuda.is_available() else
                       "cpu" if device == "auto" else device)
    mapping = build_mapping(parts["mapping"], checkpoint).to(dev)
    if parts["gaussian_fit"] is not None and not bare_mapping:
        log(f"{checkpoint}: replacing the gaussian fit it already has")
    log(f"fitting: {samples} latents through the {mapping.num_layers}-layer mapping network on {dev} ...")
    t0 = time.time()
    fit = compute_gaussian_fit(mapping, num_samples=samples, seed=seed)
    fit = {"mean": fit["mean"].float().cpu(), "std": fit["std"].float().cpu()}
    if not (torch.isfinite(fit["mean"]).all() and torch.isfinite(fit["std"]).all()):
        raise FitError(f"{checkpoint}: the fit is not finite (a broken mapping network?)")
    log(f"fitted in {time.time() - t0:.1f}s: mean {fit['mean'].mean():.4f}, std {fit['std'].mean():.4f} "
        "(averaged over the 512 dimensions)")

    if bare_mapping:
        _write(target, lambda path: _save_bare_fit(path, fit), store)
    else:
        meta = dict(parts["meta"])
        meta["gaussian_fit"] = {"samples": int(samples), "seed": int(seed),
                                "slope": 5.0, "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
        _write(target, lambda path: save_checkpoint(path, parts["synthesis"], parts["mapping"], fit, meta), store)
    log(f"wrote the gaussian fit to {target}")
    return fit


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="fit_gaussian.py",
        description="Compute PULSE's gaussian fit (mean/std of LeakyReLU(5) of the mapping output) "
                    "and write it into a generator checkpoint.",
    )
    p.add_argument("checkpoint", help="generator bundle (local path or s3:// URI)")
    p.add_argument("--samples", type=int, default=PULSE_SAMPLES,
                   help=f"latents to draw (default {PULSE_SAMPLES:,}, as PULSE)")
    p.add_argument("--seed", type=int, default=0, help="seed of the latent draws (default 0)")
    p.add_argument("--output", default=None,
                   help="write here instead of in place (required for a bare mapping.pt)")
    p.add_argument("--device", default="auto", help="torch device (default: cuda when available, else cpu)")
    p.add_argument("--s3-endpoint-url", default=None, help="S3-compatible endpoint (else AWS_ENDPOINT_URL)")
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        fit_checkpoint(args.checkpoint, output=args.output, samples=args.samples, seed=args.seed,
                       device=args.device, store=storage.Storage(args.s3_endpoint_url))
    except FitError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
