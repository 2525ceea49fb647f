"""StyleGAN (v1) synthesis and mapping networks with the state-dict layout of the PULSE release.

``SynthesisNetwork(channels)`` is built from the channel width of each resolution
(4, 8, ..., R); :func:`synthesis_channels_from_state_dict` reads that list back from a state
dict, so PULSE's ``synthesis.pt`` and our own checkpoints load without a configuration.
"""

from __future__ import annotations

import re
from collections import OrderedDict

import torch
import torch.nn.functional as F
from torch import nn

from .layers import EqualizedConv2d, EqualizedLinear, LayerEpilogue, StyleModulation, pixel_norm

DLATENT_SIZE = 512


def stylegan_channels(resolution: int, fmap_base: int = 8192, fmap_max: int = 512) -> list[int]:
    """Channel widths per resolution (4 .. ``resolution``) by StyleGAN's ``nf(stage)`` rule."""
    log2 = resolution.bit_length() - 1
    if resolution < 4 or resolution != 2**log2:
        raise ValueError(f"resolution must be a power of two >= 4, got {resolution}")
    return [min(int(fmap_base / 2.0 ** (res - 1)), fmap_max) for res in range(2, log2 + 1)]


class InputBlock(nn.Module):
    """4x4 block: learned constant + bias, two style-modulated layers."""

    def __init__(self, channels: int, dlatent_size: int):
        super().__init__()
        self.const = nn.Parameter(torch.ones(1, channels, 4, 4))
        self.bias = nn.Parameter(torch.ones(channels))
        self.epi1 = LayerEpilogue(channels, dlatent_size)
        self.conv = EqualizedConv2d(channels, channels, 3)
        self.epi2 = LayerEpilogue(channels, dlatent_size)

    def forward(self, dlatents: torch.Tensor, noise: list) -> torch.Tensor:
        x = self.const.expand(dlatents.shape[0], -1, -1, -1) + self.bias.view(1, -1, 1, 1)
        x = self.epi1(x, dlatents[:, 0], noise[0])
        x = self.conv(x)
        return self.epi2(x, dlatents[:, 1], noise[1])


class UpBlock(nn.Module):
    """Doubles the resolution: upsampling convolution, then a second convolution."""

    def __init__(self, in_channels: int, out_channels: int, dlatent_size: int):
        super().__init__()
        self.conv0_up = EqualizedConv2d(in_channels, out_channels, 3, upsample=True)
        self.epi1 = LayerEpilogue(out_channels, dlatent_size)
        self.conv1 = EqualizedConv2d(out_channels, out_channels, 3)
        self.epi2 = LayerEpilogue(out_channels, dlatent_size)

    def forward(self, x: torch.Tensor, dlatents: torch.Tensor, noise: list) -> torch.Tensor:
        x = self.epi1(self.conv0_up(x), dlatents[:, 0], noise[0])
        return self.epi2(self.conv1(x), dlatents[:, 1], noise[1])


class SynthesisNetwork(nn.Module):
    """Maps per-layer latents ``[B, num_layers, 512]`` and noise to an image in [-1, 1].

    ``forward(dlatents, noise=None)``: ``noise`` is a list of ``num_layers`` tensors of
    shape ``[B, 1, 2**(i//2+2), 2**(i//2+2)]`` (or ``None`` entries for fresh noise).
    """

    def __init__(self, channels: list[int], num_channels: int = 3, dlatent_size: int = DLATENT_SIZE):
        super().__init__()
        self.channels = list(channels)
        self.resolution = 2 ** (len(channels) + 1)
        self.num_layers = 2 * len(channels)
        self.dlatent_size = dlatent_size
        blocks = [("4x4", InputBlock(channels[0], dlatent_size))]
        for i in range(1, len(channels)):
            res = 2 ** (i + 2)
            blocks.append((f"{res}x{res}", UpBlock(channels[i - 1], channels[i], dlatent_size)))
        self.blocks = nn.ModuleDict(OrderedDict(blocks))
        self.torgb = EqualizedConv2d(channels[-1], num_channels, 1, gain=1.0)

    def batch_invariant(self, enabled: bool = True) -> "SynthesisNetwork":
        """Compute the style layers row by row, so a sample's output never depends on its batch."""
        for m in self.modules():
            if isinstance(m, StyleModulation):
                m.rowwise = enabled
        return self

    def noise_shapes(self, batch: int) -> list[tuple[int, int, int, int]]:
        """Shapes of the noise tensors each layer takes."""
        return [(batch, 1, 2 ** (i // 2 + 2), 2 ** (i // 2 + 2)) for i in range(self.num_layers)]

    def features(self, dlatents: torch.Tensor, noise: list) -> torch.Tensor:
        """Run every block and return the last one's feature maps (before ``torgb``)."""
        x = None
        for i, block in enumerate(self.blocks.values()):
            lat, nz = dlatents[:, 2 * i:2 * i + 2], noise[2 * i:2 * i + 2]
            x = block(lat, nz) if i == 0 else block(x, lat, nz)
        return x

    def forward(self, dlatents: torch.Tensor, noise: list | None = None) -> torch.Tensor:
        if dlatents.dim() != 3 or dlatents.shape[1] != self.num_layers:
            raise ValueError(
                f"dlatents must be [B, {self.num_layers}, {self.dlatent_size}], got {list(dlatents.shape)}")
        if noise is None:
            noise = [None] * self.num_layers
        if len(noise) != self.num_layers:
            raise ValueError(f"expected {self.num_layers} noise tensors, got {len(noise)}")
        return self.torgb(self.features(dlatents, noise))


class MappingNetwork(nn.Module):
    """z [B, 512] -> w [B, 512]: pixel norm, then ``num_layers`` dense layers (lr multiplier 0.01)."""

    def __init__(self, num_layers: int = 8, latent_size: int = DLATENT_SIZE, lrmul: float = 0.01):
        super().__init__()
        self.num_layers = num_layers
        for i in range(num_layers):
            self.add_module(f"dense{i}", EqualizedLinear(latent_size, latent_size, lrmul=lrmul))

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        x = pixel_norm(z)
        for i in range(self.num_layers):
            x = F.leaky_relu(getattr(self, f"dense{i}")(x), 0.2)
        return x


_BLOCK_KEY = re.compile(r"^blocks\.(\d+)x\1\.")


def synthesis_channels_from_state_dict(state_dict: dict) -> list[int]:
    """Channel width per resolution, read from a synthesis state dict's names and shapes."""
    widths = {}
    for key, tensor in state_dict.items():
        m = _BLOCK_KEY.match(key)
        if m and key.endswith(".epi2.noise.weight"):
            widths[int(m.group(1))] = int(tensor.shape[0])
    if 4 not in widths or "torgb.weight" not in state_dict:
        raise ValueError("not a StyleGAN synthesis state dict: no 'blocks.4x4.*' or 'torgb.weight' entries")
    resolutions = sorted(widths)
    expected = [2**i for i in range(2, len(resolutions) + 2)]
    if resolutions != expected:
        raise ValueError(f"synthesis blocks must be 4x4 up to RxR in steps of 2, got {resolutions}")
    return [widths[r] for r in resolutions]


def mapping_layers_from_state_dict(state_dict: dict) -> int:
    """Number of dense layers in a mapping state dict."""
    n = sum(1 for k in state_dict if re.fullmatch(r"dense\d+\.weight", k))
    if n == 0:
        raise ValueError("not a StyleGAN mapping state dict: no 'dense<i>.weight' entries")
    return n
