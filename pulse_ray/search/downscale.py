"""PULSE's downscaling operator DS(.): separable bicubic (a = -0.5), reflect padding, stride = factor."""

from __future__ import annotations

import functools

import torch
import torch.nn.functional as F

from ..sizes import MAX_FACTOR


def _cubic(x: float, a: float = -0.5) -> float:
    x = abs(x)
    if x <= 1.0:
        return (a + 2.0) * x**3 - (a + 3.0) * x**2 + 1.0
    if x < 2.0:
        return a * x**3 - 5.0 * a * x**2 + 8.0 * a * x - 4.0 * a
    return 0.0


@functools.lru_cache(maxsize=None)
def bicubic_taps(factor: int) -> tuple[float, ...]:
    """The 4*factor normalised filter taps PULSE uses for ``factor``."""
    size = 4 * factor
    taps = [_cubic((i - size // 2 + 0.5) / factor) for i in range(size)]
    total = sum(taps)
    return tuple(t / total for t in taps)


@functools.lru_cache(maxsize=64)
def _taps_on(factor: int, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    """The taps as a tensor, made once per device (no host-to-device copy per step: CUDA graphs need that)."""
    return torch.tensor(bicubic_taps(factor), dtype=dtype, device=device)


def check_factor(factor: int) -> int:
    """Validate a downscaling factor: a power of two from 2 to 64."""
    if isinstance(factor, bool) or not isinstance(factor, int) or factor < 2 or factor > MAX_FACTOR \
            or factor & (factor - 1):
        raise ValueError(f"downscale factor must be a power of two from 2 to {MAX_FACTOR}, got {factor!r}")
    return factor


def _reflect_index(n: int, before: int, after: int, device) -> torch.Tensor:
    """Indices of a reflect-padded axis of length ``n``; works for pads larger than ``n``."""
    idx = torch.arange(-before, n + after, device=device)
    if n == 1:
        return torch.zeros_like(idx)
    period = 2 * (n - 1)
    idx = idx.remainder(period)
    return torch.where(idx >= n, period - idx, idx)


def _pad_axis(x: torch.Tensor, dim: int, before: int, after: int) -> torch.Tensor:
    n = x.shape[dim]
    if before < n and after < n:  # the common case: torch's own reflect pad
        pad = (0, 0, before, after) if dim == 2 else (before, after, 0, 0)
        return F.pad(x, pad, mode="reflect")
    return x.index_select(dim, _reflect_index(n, before, after, x.device))


def downscale(x: torch.Tensor, factor: int) -> torch.Tensor:
    """Downscale ``[B, C, H, W]`` images by ``factor`` (H and W divisible by it), as PULSE does."""
    check_factor(factor)
    if x.dim() != 4:
        raise ValueError(f"downscale expects [B, C, H, W], got shape {list(x.shape)}")
    _, c, h, w = x.shape
    if h % factor or w % factor:
        raise ValueError(f"image size {w}x{h} is not divisible by the factor {factor}")
    taps = _taps_on(factor, x.dtype, x.device)
    size = taps.numel()
    pad_lo = (size - factor) // 2
    pad_hi = size - factor - pad_lo
    x = _pad_axis(x, 2, pad_lo, pad_hi)
    x = F.conv2d(x, taps.view(1, 1, size, 1).expand(c, 1, size, 1), stride=(factor, 1), groups=c)
    x = _pad_axis(x, 3, pad_lo, pad_hi)
    return F.conv2d(x, taps.view(1, 1, 1, size).expand(c, 1, 1, size), stride=(1, factor), groups=c)
