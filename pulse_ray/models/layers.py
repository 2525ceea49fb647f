"""Building blocks of the StyleGAN (v1) generator, in the parameter layout of the PULSE release.

Every weight is stored at unit scale and multiplied by its He constant at run time
("equalized learning rate"), as in the original TensorFlow code.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

SQRT2 = math.sqrt(2.0)


class EqualizedLinear(nn.Module):
    """Dense layer with equalized learning rate and a learning-rate multiplier."""

    def __init__(self, in_features: int, out_features: int, gain: float = SQRT2, lrmul: float = 1.0):
        super().__init__()
        self.weight = nn.Parameter(torch.randn(out_features, in_features) / lrmul)
        self.bias = nn.Parameter(torch.zeros(out_features))
        self.w_mul = gain * in_features**-0.5 * lrmul
        self.b_mul = lrmul

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.linear(x, self.weight * self.w_mul, self.bias * self.b_mul)

    def forward_rowwise(self, x: torch.Tensor) -> torch.Tensor:
        """The same map, one small matrix product per row of ``x`` [B, in].

        A batched GEMM rounds differently for different batch sizes; row by row, a row's
        result does not depend on what else is in the batch. PULSE's search needs that (an
        image's result must not depend on its batch); the style layers are small, so it is cheap.
        """
        w = (self.weight * self.w_mul).t()
        b = (self.bias * self.b_mul).view(1, 1, -1).expand(x.shape[0], 1, -1)
        return torch.baddbmm(b, x.unsqueeze(1), w.unsqueeze(0).expand(x.shape[0], -1, -1)).squeeze(1)


class Blur(nn.Module):
    """Depthwise [1, 2, 1] x [1, 2, 1] low-pass filter (normalised), stride 1."""

    def __init__(self):
        super().__init__()
        k = torch.tensor([1.0, 2.0, 1.0])
        k = k[:, None] * k[None, :]
        self.register_buffer("kernel", (k / k.sum())[None, None])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        kernel = self.kernel.to(x.dtype).expand(x.shape[1], -1, -1, -1)
        return F.conv2d(x, kernel, padding=1, groups=x.shape[1])


class EqualizedConv2d(nn.Module):
    """Convolution with equalized learning rate.

    With ``upsample=True`` the layer doubles the resolution first: nearest-neighbour upscaling
    followed by the convolution below 128 px output, and StyleGAN's fused transposed convolution
    (the 3x3 kernel summed over a 2x2 box) from 128 px up. The blur (the PULSE layout's
    ``intermediate``) then runs before the bias is added.
    """

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int, gain: float = SQRT2,
                 upsample: bool = False):
        super().__init__()
        self.weight = nn.Parameter(torch.randn(out_channels, in_channels, kernel_size, kernel_size))
        self.bias = nn.Parameter(torch.zeros(out_channels))
        self.w_mul = gain * (in_channels * kernel_size**2) ** -0.5
        self.upsample = upsample
        self.intermediate = Blur() if upsample else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        w = self.weight * self.w_mul
        if not self.upsample:
            return F.conv2d(x, w, self.bias, padding=self.weight.shape[-1] // 2)
        if min(x.shape[2:]) * 2 >= 128:
            w = F.pad(w.permute(1, 0, 2, 3), (1, 1, 1, 1))
            w = w[:, :, 1:, 1:] + w[:, :, :-1, 1:] + w[:, :, 1:, :-1] + w[:, :, :-1, :-1]
            x = F.conv_transpose2d(x, w, stride=2, padding=(w.shape[-1] - 1) // 2)
        else:
            x = F.interpolate(x, scale_factor=2.0, mode="nearest")
            x = F.conv2d(x, w, padding=self.weight.shape[-1] // 2)
        x = self.intermediate(x)
        return x + self.bias.view(1, -1, 1, 1)


class NoiseInjection(nn.Module):
    """Adds per-pixel noise (shared over channels) scaled by a learned per-channel weight."""

    def __init__(self, channels: int):
        super().__init__()
        self.weight = nn.Parameter(torch.zeros(channels))

    def forward(self, x: torch.Tensor, noise: torch.Tensor | None) -> torch.Tensor:
        if noise is None:
            noise = torch.randn(x.shape[0], 1, x.shape[2], x.shape[3], device=x.device, dtype=x.dtype)
        return x + self.weight.view(1, -1, 1, 1) * noise


class StyleModulation(nn.Module):
    """AdaIN style: an affine map of the layer's latent gives a per-channel scale and shift."""

    def __init__(self, dlatent_size: int, channels: int):
        super().__init__()
        self.lin = EqualizedLinear(dlatent_size, channels * 2, gain=1.0)
        self.rowwise = False  # see EqualizedLinear.forward_rowwise; set by SynthesisNetwork.batch_invariant

    def forward(self, x: torch.Tensor, dlatent: torch.Tensor) -> torch.Tensor:
        style = (self.lin.forward_rowwise(dlatent) if self.rowwise else self.lin(dlatent)).view(-1, 2, x.shape[1], 1, 1)
        return x * (style[:, 0] + 1.0) + style[:, 1]


class LayerEpilogue(nn.Module):
    """Noise, LeakyReLU(0.2), instance norm, then style modulation: the end of every layer."""

    def __init__(self, channels: int, dlatent_size: int):
        super().__init__()
        self.noise = NoiseInjection(channels)
        self.style_mod = StyleModulation(dlatent_size, channels)

    def forward(self, x: torch.Tensor, dlatent: torch.Tensor, noise: torch.Tensor | None) -> torch.Tensor:
        x = self.noise(x, noise)
        x = F.leaky_relu(x, 0.2)
        x = F.instance_norm(x, eps=1e-5)
        return self.style_mod(x, dlatent)


def pixel_norm(x: torch.Tensor, eps: float = 1e-8) -> torch.Tensor:
    """Normalise each feature vector to unit mean square."""
    return x * torch.rsqrt(x.pow(2).mean(dim=1, keepdim=True) + eps)
