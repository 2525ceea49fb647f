"""The LR-size rule: which LR sizes a generator of a given resolution can super-resolve.

Shared by :mod:`pulse_ray.io` (validating inputs) and :mod:`pulse_ray.search` (the search
itself); it imports nothing from the package, so neither depends on the other for it.
"""

from __future__ import annotations

MAX_FACTOR = 64  # the largest power-of-two downscale factor the search supports

__all__ = ["MAX_FACTOR", "check_lr_size", "valid_lr_sizes"]


def check_lr_size(height: int, width: int, resolution: int) -> int:
    """The power-of-two factor from an LR size to the generator's resolution, or a clear ValueError."""
    if height != width:
        raise ValueError(f"LR image is {width}x{height}: PULSE needs a square image "
                         f"(crop it to a square face first, e.g. pulse-ray make-manifest --align)")
    if height <= 0 or height >= resolution or resolution % height:
        raise ValueError(f"LR image is {width}x{height}: its size must divide the generator's resolution "
                         f"{resolution} by a power of two from 2 to {MAX_FACTOR} "
                         f"(valid sizes: {valid_lr_sizes(resolution)})")
    factor = resolution // height
    if factor & (factor - 1) or factor > MAX_FACTOR:
        raise ValueError(f"LR image is {width}x{height}: {resolution}/{height} = {factor} is not a power of two "
                         f"from 2 to {MAX_FACTOR} (valid sizes: {valid_lr_sizes(resolution)})")
    return factor


def valid_lr_sizes(resolution: int) -> str:
    """``"32x32, 16x16, ..."``: the LR sizes :func:`check_lr_size` accepts for ``resolution``."""
    sizes = [resolution // f for f in (2**k for k in range(1, 7)) if resolution // f >= 1 and resolution % f == 0]
    return ", ".join(f"{s}x{s}" for s in sizes)
