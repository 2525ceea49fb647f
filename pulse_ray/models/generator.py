"""A frozen generator ready for PULSE, and :func:`load_generator` to get one from anywhere."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import torch

from .checkpoint import (CheckpointError, check_gaussian_fit, compute_gaussian_fit, load_weights_file,
                         split_checkpoint)
from .stylegan2 import SQRT2, build_networks
from .stylegan2_files import read_generator_file, short_hash
from .stylegan import (MappingNetwork, SynthesisNetwork, mapping_layers_from_state_dict,
                       synthesis_channels_from_state_dict)

WEIGHTS_DIR = Path(__file__).resolve().parent.parent / "weights"
DEFAULT_GENERATOR = "colour64"


class Generator:
    """Synthesis network (+ optional mapping network) and PULSE's gaussian fit, frozen.

    ``synthesize(dlatents, noise)`` -> images in [-1, 1]; ``sample(n, seed)`` -> images in [0, 1].
    """

    def __init__(self, synthesis: SynthesisNetwork, mapping: MappingNetwork | None = None,
                 gaussian_fit: dict | None = None, name: str = "generator", meta: dict | None = None):
        self.synthesis = synthesis.eval().requires_grad_(False).batch_invariant()
        self.mapping = mapping.eval().requires_grad_(False) if mapping is not None else None
        self.gaussian_fit = gaussian_fit
        self.name = name
        self.meta = dict(meta or {})
        self.source_sha256: str | None = None  # sha256 of the file it was loaded from (load_generator)
        self.device = next(synthesis.parameters()).device

    @property
    def resolution(self) -> int:
        return self.synthesis.resolution

    @property
    def num_layers(self) -> int:
        return self.synthesis.num_layers

    def to(self, device) -> "Generator":
        """Move the networks and the fit to ``device`` (returns self)."""
        device = torch.device(device)
        self.synthesis.to(device)
        if self.mapping is not None:
            self.mapping.to(device)
        if self.gaussian_fit is not None:
            self.gaussian_fit = {k: v.to(device) for k, v in self.gaussian_fit.items()}
        self.device = device
        return self

    def require_gaussian_fit(self) -> dict:
        """The latent prior PULSE needs; a clear error when this generator has none."""
        if self.gaussian_fit is None:
            raise ValueError(
                f"generator {self.name!r} has no gaussian fit of its mapping network, which PULSE needs to "
                f"sample and search: pass one with load_generator(source, gaussian_fit=PATH_OR_DICT) "
                f"(PULSE's gaussian_fit.pt works), load a checkpoint that includes the mapping network, "
                f"or compute one with `python scripts/fit_gaussian.py CHECKPOINT`")
        return self.gaussian_fit

    def synthesize(self, dlatents: torch.Tensor, noise: list | None = None) -> torch.Tensor:
        """``[B, num_layers, 512]`` latents (+ noise list) -> ``[B, 3, R, R]`` images in [-1, 1]."""
        return self.synthesis(dlatents, noise)

    def latents_from_prior(self, z: torch.Tensor) -> torch.Tensor:
        """PULSE's map from N(0, I) to the mapping network's output: LeakyReLU(0.2)(z * std + mean)."""
        fit = self.require_gaussian_fit()
        return torch.nn.functional.leaky_relu(z * fit["std"] + fit["mean"], 0.2)

    @torch.no_grad()
    def sample(self, n: int, seed: int = 0) -> torch.Tensor:
        """``n`` random faces in [0, 1]: one prior latent per image (all layers), seeded noise."""
        gen = torch.Generator().manual_seed(seed)
        z = torch.randn(n, 1, 512, generator=gen).to(self.device)
        w = self.latents_from_prior(z).expand(-1, self.num_layers, -1)
        noise = [torch.randn(shape, generator=gen).to(self.device) for shape in self.synthesis.noise_shapes(n)]
        return ((self.synthesize(w, noise) + 1) / 2).clamp(0, 1)

    def default_batch_size(self) -> int:
        """Searches per generator batch: from free GPU memory on CUDA, a fixed 32 on CPU."""
        if self.device.type != "cuda":
            return 32
        free, _ = torch.cuda.mem_get_info(self.device)
        # activations of forward+backward grow with R^2; about 60 MB per search at 1024 px in fp32
        per_search = 60e6 * (self.resolution / 1024) ** 2 + 1e6
        return int(max(1, min(256, 0.5 * free // per_search)))


class StyleGAN2Generator(Generator):
    """A StyleGAN2 generator behind the same interface: W+ latents (``num_layers`` = ``num_ws``), noise
    per convolution layer (``synthesis.noise_shapes``), and PULSE's prior.

    The prior lives where PULSE puts it, before the mapping network's last activation: the fit is
    of ``leaky_relu(w / sqrt(2), 5)`` (StyleGAN2's activation has gain sqrt(2)), and
    :meth:`latents_from_prior` maps back with ``sqrt(2) * leaky_relu(., 0.2)``.
    """

    def __init__(self, networks, gaussian_fit: dict | None = None, name: str = "generator",
                 meta: dict | None = None):
        super().__init__(networks.synthesis, networks.mapping, gaussian_fit, name=name, meta=meta)
        self.config = networks.cfg

    def latents_from_prior(self, z: torch.Tensor) -> torch.Tensor:
        fit = self.require_gaussian_fit()
        return torch.nn.functional.leaky_relu(z * fit["std"] + fit["mean"], 0.2) * SQRT2

    @torch.no_grad()
    def generate(self, z: torch.Tensor, truncation_psi: float = 1.0, noise_mode: str = "const") -> torch.Tensor:
        """Images in [-1, 1] from z through the mapping network (``truncation_psi`` towards ``w_avg``)."""
        w = self.mapping.truncate(self.mapping(z.to(self.device)), truncation_psi)
        return self.synthesis(w[:, None].expand(-1, self.num_layers, -1), noise_mode=noise_mode)


class _PreActivation(torch.nn.Module):
    """The mapping output with the last activation's sqrt(2) gain undone (what PULSE's fit sees)."""

    def __init__(self, mapping):
        super().__init__()
        self.mapping = mapping

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return self.mapping(z) / SQRT2


def _load_stylegan2(parts: dict, data: bytes, where: str, gaussian_fit, fit_samples: int,
                    store=None) -> StyleGAN2Generator:
    try:
        nets = build_networks(parts["config"], parts["state_dict"], where)
    except ValueError as e:
        raise CheckpointError(str(e)) from None
    fit = parts["gaussian_fit"]
    if gaussian_fit is not None:
        fit = _fit_override(gaussian_fit, store)
    if fit is None:
        msd = {f"stylegan2-preactivation.{k}": v for k, v in nets.mapping.state_dict().items()}
        fit = _cached_fit(_PreActivation(nets.mapping), msd, fit_samples)
    if fit["mean"].shape[0] != parts["config"].w_dim:
        raise CheckpointError(f"{where}: gaussian fit has {fit['mean'].shape[0]} dims, the generator takes "
                              f"{parts['config'].w_dim}")
    meta = dict(parts["meta"], family="stylegan2")
    return StyleGAN2Generator(nets, fit, name=f"{Path(where).name} {short_hash(data)}", meta=meta)


def _fit_override(gaussian_fit, store=None) -> dict:
    """A ``gaussian_fit`` argument (dict, path or URI) as a checked fit."""
    if isinstance(gaussian_fit, dict):
        return check_gaussian_fit(gaussian_fit, "gaussian_fit argument")
    gdata, gwhere = _read_source(str(gaussian_fit), store)
    fit = split_checkpoint(load_weights_file(gdata, gwhere), gwhere)["gaussian_fit"]
    if fit is None:
        raise CheckpointError(f"{gwhere}: not a gaussian fit (expected a dict with 'mean' and 'std')")
    return fit


def bundled_generators() -> list[str]:
    """Names of the generators shipped inside the package."""
    return sorted(p.stem for p in WEIGHTS_DIR.glob("*.pt"))


def _read_source(source: str, store=None) -> tuple[bytes, str]:
    """Bytes of a bundled name, local path, file:// or s3:// URI, and a description for errors."""
    if source.startswith("s3://"):
        from ..io import storage

        try:
            return (store or storage.Storage()).read_bytes(source), source
        except Exception as e:
            raise CheckpointError(f"{source}: could not read from S3: {e}") from e
    path = Path(source[len("file://"):] if source.startswith("file://") else source)
    if not path.exists() and "/" not in source and not source.endswith(".pt"):
        candidate = WEIGHTS_DIR / f"{source}.pt"
        if candidate.exists():
            path = candidate
        else:
            raise CheckpointError(f"unknown generator {source!r}: not a file, and not a bundled generator "
                                  f"(bundled: {', '.join(bundled_generators()) or 'none'})")
    if not path.is_file():
        raise CheckpointError(f"{source}: no such generator file")
    return path.read_bytes(), str(path)


def _cached_fit(mapping: MappingNetwork, mapping_sd: dict, num_samples: int) -> dict:
    """PULSE's gaussian fit for a mapping network, computed once and cached by weight hash."""
    h = hashlib.sha256()
    for k in sorted(mapping_sd):
        h.update(k.encode())
        h.update(mapping_sd[k].detach().float().cpu().numpy().tobytes())
    h.update(str(num_samples).encode())
    cache_dir = Path(os.environ.get("PULSE_RAY_CACHE") or Path.home() / ".cache" / "pulse-ray")
    path = cache_dir / f"gaussian_fit-{h.hexdigest()[:16]}.pt"
    if path.exists():
        try:
            return check_gaussian_fit(torch.load(path, map_location="cpu", weights_only=True), str(path))
        except (CheckpointError, RuntimeError, OSError):
            pass  # a broken cache entry is recomputed
    fit = compute_gaussian_fit(mapping, num_samples=num_samples)
    try:
        cache_dir.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(f".tmp{os.getpid()}")
        torch.save(fit, tmp)
        os.replace(tmp, path)
    except OSError:
        pass  # caching is an optimisation; a read-only home still works
    return fit


def _build(parts: dict, where: str) -> tuple[SynthesisNetwork, MappingNetwork | None]:
    sd = {k: v.float() for k, v in parts["synthesis"].items()}
    try:
        synthesis = SynthesisNetwork(synthesis_channels_from_state_dict(sd), num_channels=sd["torgb.weight"].shape[0])
        synthesis.load_state_dict(sd)
    except (ValueError, RuntimeError, KeyError) as e:
        raise CheckpointError(f"{where}: synthesis weights do not fit a StyleGAN synthesis network: "
                              f"{str(e).splitlines()[0]}") from e
    mapping = None
    if parts["mapping"] is not None:
        msd = {k: v.float() for k, v in parts["mapping"].items()}
        try:
            mapping = MappingNetwork(mapping_layers_from_state_dict(msd))
            mapping.load_state_dict(msd)
        except (ValueError, RuntimeError) as e:
            raise CheckpointError(f"{where}: mapping weights do not fit a StyleGAN mapping network: "
                                  f"{str(e).splitlines()[0]}") from e
    return synthesis, mapping


def load_generator(source: str | os.PathLike | None = None, *, gaussian_fit=None, mapping=None,
                   device=None, fit_samples: int = 1_000_000, store=None) -> Generator:
    """Load a generator: bundled name (default ``colour64``), local path, ``file://`` or ``s3://``.

    StyleGAN2 files (NVIDIA ``.pkl``, rosinality ``.pt``, ``pulse-ray convert`` bundles) give a
    :class:`StyleGAN2Generator`, named ``"<file name> sha256:<12 hex>"``; no code from a file is run.

    ``gaussian_fit`` (path, URI or ``{"mean","std"}``) overrides the checkpoint's; ``mapping``
    (path or URI of a mapping state dict) adds a mapping network to a bare synthesis file. With a
    mapping network but no fit, the fit is computed as PULSE does (``fit_samples`` latents) and
    cached under ``$PULSE_RAY_CACHE`` (default ``~/.cache/pulse-ray``). The device is CUDA
    when available unless ``device`` says otherwise. ``store`` (a :class:`pulse_ray.io.storage.Storage`)
    reaches ``s3://`` sources; the loaded generator's ``source_sha256`` is the hash of its file.
    """
    source = DEFAULT_GENERATOR if source is None else str(source)
    data, where = _read_source(source, store)
    family, loaded = read_generator_file(data, where)
    dev = torch.device(device) if device is not None else torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if family == "stylegan2":
        if mapping is not None:
            raise CheckpointError(f"{where}: a StyleGAN2 file holds its mapping network; drop the mapping argument")
        g = _load_stylegan2(loaded, data, where, gaussian_fit, fit_samples, store)
        g.source_sha256 = hashlib.sha256(data).hexdigest()
        return g.to(dev)
    parts = split_checkpoint(loaded, where)
    if mapping is not None:
        mdata, mwhere = _read_source(str(mapping), store)
        mparts = split_checkpoint(load_weights_file(mdata, mwhere), mwhere)
        if mparts["mapping"] is None:
            raise CheckpointError(f"{mwhere}: holds no mapping network")
        parts["mapping"] = mparts["mapping"]
    if parts["synthesis"] is None:
        raise CheckpointError(f"{where}: holds no synthesis network (only "
                              f"{'a mapping network' if parts['mapping'] is not None else 'a gaussian fit'})")
    synthesis, mapping_net = _build(parts, where)
    if gaussian_fit is not None:
        parts["gaussian_fit"] = _fit_override(gaussian_fit, store)
    if parts["gaussian_fit"] is None and mapping_net is not None:
        parts["gaussian_fit"] = _cached_fit(mapping_net, parts["mapping"], fit_samples)
    fit = parts["gaussian_fit"]
    if fit is not None and fit["mean"].shape[0] != synthesis.dlatent_size:
        raise CheckpointError(f"{where}: gaussian fit has {fit['mean'].shape[0]} dims, the generator takes "
                              f"{synthesis.dlatent_size}")
    name = parts["meta"].get("name") or Path(where).stem
    g = Generator(synthesis, mapping_net, fit, name=name, meta=parts["meta"])
    g.source_sha256 = hashlib.sha256(data).hexdigest()
    return g.to(dev)
