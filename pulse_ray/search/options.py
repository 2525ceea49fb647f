"""Every knob of the latent search, its default and its validation, in one place.

:class:`SearchOptions` is what :func:`pulse_ray.upsample`, the job's search step, the
``submit`` / ``upsample`` commands, ``nightly`` and the run record take. A field's
``metadata`` carries its help text; ``cli=True`` fields are offered as command-line flags
(``--restarts`` ...), generated from here by :mod:`pulse_ray.cli_options` and nightly.
"""

from __future__ import annotations

import dataclasses
import math
import warnings
from dataclasses import dataclass, field

__all__ = ["KEEP_RULES", "NOISE_TYPES", "PRECISIONS", "OptionError", "SearchOptions"]

KEEP_RULES = ("realistic", "closest")
NOISE_TYPES = ("zero", "fixed", "trainable")
PRECISIONS = ("fp32", "tf32", "bf16")

#: old keyword / flag spellings -> current field name (accepted with a deprecation note)
RENAMED = {"keep_restarts": "save_restarts"}


class OptionError(ValueError):
    """An option value that cannot work; the message names the option (CLI exit code 2)."""


def _opt(default, help: str, cli: bool = False, **extra):
    return field(default=default, metadata={"help": help, "cli": cli, **extra})


@dataclass(frozen=True)
class SearchOptions:
    """The search's settings (frozen, picklable: it travels to every search actor)."""

    restarts: int = _opt(4, "Restarts of the latent search per image (at most 1000).", cli=True, max=1000)
    steps: int = _opt(60, "Optimisation steps per restart (at most 100000; PULSE's own default is 100).", cli=True,
                      max=100_000)
    eps: float = _opt(2e-3, "Downscale-MSE threshold for 'converged'.", cli=True)
    seed: int = _opt(0, "Base seed (per image and restart seeds derive from it).", cli=True)
    keep: str = _opt("realistic", "Which result a search keeps: 'realistic' (PULSE's rule: of the images that "
                     "downscale to within eps, the most realistic by the search's loss) or 'closest' "
                     "(the lowest downscale error).", cli=True)
    save_restarts: bool = _opt(False, "Also write every restart (OUT/sr/<id>/r<k>.png, OUT/restarts/).",
                               cli=True, old_flag="--keep-restarts")
    loss: str = _opt("100*L2+0.05*GEOCROSS", "The search's loss (weighted terms).")
    optimizer: str = _opt("adam", "Optimizer of the latent (on the sphere).")
    learning_rate: float = _opt(0.4, "Learning rate.")
    lr_schedule: str = _opt("linear1cycledrop", "Learning-rate schedule.")
    noise_type: str = _opt("trainable", "Noise inputs: zero, fixed or trainable.")
    num_trainable_noise_layers: int = _opt(5, "Noise layers optimised with the latent (noise_type='trainable').")
    bad_noise_layers: str = _opt("17", "Noise layers kept at zero ('.'-separated indices).")
    tile_latent: bool = _opt(False, "One latent for every layer.")
    batch_size: int | None = _opt(None, "Searches run in one generator batch (default: the generator's).")
    early_stop: bool = _opt(True, "A converged search whose kept iterate has not changed for `patience` steps stops.")
    patience: int = _opt(10, "Steps without a change before early_stop ends a converged search.")
    skip_converged_restarts: bool = _opt(False, "Drop an image's remaining restarts once one has converged.")
    halving: str = _opt("0.4,0.7", "Successive halving of an image's restarts: at these fractions of the steps "
                        "(','-separated; '' turns it off) the worse half by the kept iterate's rank stops, once "
                        "some restart of the image is within eps.", cli=True, metavar="FRACTIONS")
    deterministic: bool = _opt(False, "Bit-exact batch independence: a search left alone in the batch runs as "
                               "two rows (twice the cost) so that its numbers match any batch it could have run in.",
                               cli=True)
    precision: str | None = _opt(None, "fp32, tf32 (CUDA) or bf16 (generator under bf16 autocast) "
                                  "(default: tf32 on CUDA, fp32 on CPU).")
    compile: bool = _opt(False, "Run the synthesis network through torch.compile.")

    def __post_init__(self):
        for name in ("restarts", "steps"):
            v, top = getattr(self, name), self.__dataclass_fields__[name].metadata["max"]
            if isinstance(v, bool) or not isinstance(v, int) or not 1 <= v <= top:
                raise OptionError(f"--{name} must be between 1 and {top} (got {v})")
        if not (isinstance(self.eps, (int, float)) and self.eps > 0 and math.isfinite(self.eps)):
            raise OptionError(f"--eps must be a positive number (got {self.eps})")
        if self.keep not in KEEP_RULES:
            raise OptionError(f"unknown keep rule {self.keep!r}: --keep must be one of {', '.join(KEEP_RULES)}")
        if self.noise_type not in NOISE_TYPES:
            raise OptionError(f"unknown noise type {self.noise_type!r} (known: {', '.join(NOISE_TYPES)})")
        if self.precision is not None and self.precision not in PRECISIONS:
            raise OptionError(f"unknown precision {self.precision!r} (known: {', '.join(PRECISIONS)})")
        if self.batch_size is not None and self.batch_size < 1:
            raise OptionError(f"search batch_size must be >= 1 (got {self.batch_size})")
        halving_fractions(self.halving)
        if self.patience < 0:
            raise OptionError(f"patience must be >= 0 (got {self.patience})")

    @classmethod
    def from_kwargs(cls, base: SearchOptions | None = None, **kwargs) -> SearchOptions:
        """``base`` (default: the defaults) with ``kwargs`` replaced; old names accepted with a
        deprecation note, unknown ones a TypeError (as for any keyword argument)."""
        for old, new in RENAMED.items():
            if old in kwargs:
                warnings.warn(f"{old}= is deprecated; use {new}=", DeprecationWarning, stacklevel=3)
                kwargs.setdefault(new, kwargs.pop(old))
                kwargs.pop(old, None)
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(kwargs) - names)
        if unknown:
            raise TypeError(f"unknown search option(s): {', '.join(unknown)}")
        base = base or cls()
        return dataclasses.replace(base, **kwargs) if kwargs else base

    def record(self) -> dict:
        """Plain values, for run records and ledgers."""
        return dataclasses.asdict(self)


def halving_fractions(spec: str) -> tuple[float, ...]:
    """``"0.4,0.7"`` -> ``(0.4, 0.7)``; each strictly between 0 and 1, increasing; ``""`` -> ``()``."""
    try:
        fr = tuple(float(x) for x in str(spec).split(",") if x.strip())
    except ValueError:
        raise OptionError(f"--halving must be ','-separated fractions such as 0.4,0.7 (got {spec!r})") from None
    if any(not 0 < f < 1 for f in fr) or list(fr) != sorted(set(fr)):
        raise OptionError(f"--halving fractions must be increasing and between 0 and 1 (got {spec!r})")
    return fr


def cli_fields() -> list[dataclasses.Field]:
    """The fields offered as command-line flags."""
    return [f for f in dataclasses.fields(SearchOptions) if f.metadata.get("cli")]
