"""Training-time networks: the generator with progressive-growing heads, and the discriminator.

The generator wraps the exact :class:`SynthesisNetwork` / :class:`MappingNetwork` that PULSE
searches; the extra ``to_rgb`` heads of the lower resolutions exist only during training. At
``level`` L (resolution 2**(L+1)) with fade-in ``alpha`` < 1, the output blends the upscaled
image of level L-1 with the new level, as StyleGAN v1 grew its networks.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ..models.layers import EqualizedConv2d, EqualizedLinear
from ..models.stylegan import MappingNetwork, SynthesisNetwork


class ProgressiveGenerator(nn.Module):
    """Mapping + synthesis + one RGB head per lower resolution."""

    def __init__(self, channels: list[int], mapping_layers: int = 8):
        super().__init__()
        self.mapping = MappingNetwork(mapping_layers)
        self.synthesis = SynthesisNetwork(channels)
        self.lower_rgb = nn.ModuleList(EqualizedConv2d(c, 3, 1, gain=1.0) for c in channels[:-1])

    @property
    def max_level(self) -> int:
        return len(self.synthesis.channels)

    def rgb_head(self, level: int) -> nn.Module:
        return self.synthesis.torgb if level == self.max_level else self.lower_rgb[level - 1]

    def forward(self, z: torch.Tensor, level: int, alpha: float = 1.0, mix_prob: float = 0.0) -> torch.Tensor:
        """Images in [-1, 1] at resolution 2**(level+1) from latents z [B, 512]."""
        n = self.synthesis.num_layers
        w = self.mapping(z).unsqueeze(1).expand(-1, n, -1)
        if mix_prob > 0 and torch.rand(()) < mix_prob:
            w2 = self.mapping(torch.randn_like(z)).unsqueeze(1).expand(-1, n, -1)
            cut = int(torch.randint(1, 2 * level, ()))
            w = torch.cat([w[:, :cut], w2[:, cut:]], dim=1)
        noise = [None] * n
        blocks = list(self.synthesis.blocks.values())
        x = prev = None
        for i in range(level):
            if i == level - 1:
                prev = x
            lat, nz = w[:, 2 * i:2 * i + 2], noise[2 * i:2 * i + 2]
            x = blocks[i](lat, nz) if i == 0 else blocks[i](x, lat, nz)
        img = self.rgb_head(level)(x)
        if alpha < 1.0 and level > 1:
            low = F.interpolate(self.rgb_head(level - 1)(prev), scale_factor=2.0, mode="nearest")
            img = torch.lerp(low, img, alpha)
        return img


class DiscriminatorBlock(nn.Module):
    def __init__(self, in_channels: int, out_channels: int):
        super().__init__()
        self.conv0 = EqualizedConv2d(in_channels, in_channels, 3)
        self.conv1 = EqualizedConv2d(in_channels, out_channels, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.leaky_relu(self.conv0(x), 0.2)
        x = F.leaky_relu(self.conv1(x), 0.2)
        return F.avg_pool2d(x, 2)


class Discriminator(nn.Module):
    """Progressive discriminator mirroring the generator; minibatch-stddev at 4x4."""

    def __init__(self, channels: list[int]):
        super().__init__()
        self.channels = list(channels)
        self.from_rgb = nn.ModuleList(EqualizedConv2d(3, c, 1) for c in channels)
        # blocks[i] takes resolution 2**(i+3) (channels[i+1]) down to 2**(i+2) (channels[i])
        self.blocks = nn.ModuleList(DiscriminatorBlock(channels[i + 1], channels[i]) for i in range(len(channels) - 1))
        c = channels[0]
        self.final_conv = EqualizedConv2d(c + 1, c, 3)
        self.final_dense = EqualizedLinear(c * 16, c)
        self.out = EqualizedLinear(c, 1, gain=1.0)

    def forward(self, img: torch.Tensor, level: int, alpha: float = 1.0) -> torch.Tensor:
        x = F.leaky_relu(self.from_rgb[level - 1](img), 0.2)
        if level > 1:
            x = self.blocks[level - 2](x)
            if alpha < 1.0:
                low = F.leaky_relu(self.from_rgb[level - 2](F.avg_pool2d(img, 2)), 0.2)
                x = torch.lerp(low, x, alpha)
            for i in range(level - 3, -1, -1):
                x = self.blocks[i](x)
        x = self._minibatch_stddev(x)
        x = F.leaky_relu(self.final_conv(x), 0.2)
        x = F.leaky_relu(self.final_dense(x.flatten(1)), 0.2)
        return self.out(x).squeeze(1)

    @staticmethod
    def _minibatch_stddev(x: torch.Tensor, group: int = 4) -> torch.Tensor:
        b, c, h, w = x.shape
        g = min(group, b)
        while b % g:
            g -= 1
        y = x.view(g, -1, c, h, w)
        y = (y - y.mean(0)).pow(2).mean(0).add(1e-8).sqrt().mean(dim=(1, 2, 3))  # [B/g]
        y = y.view(-1, 1, 1, 1).repeat(g, 1, h, w)
        return torch.cat([x, y], dim=1)
