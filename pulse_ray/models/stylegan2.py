"""StyleGAN2 mapping and synthesis networks (config F, skip generator), as plain modules.

Parameter and buffer names follow NVIDIA's stylegan2-ada-pytorch / stylegan3 ``Generator``
(``synthesis.b64.conv0.affine.weight``, ``mapping.fc0.weight``, ...), so a state dict read from
their pickles loads as is; :func:`rosinality_key_map` maps the layout of rosinality's
``stylegan2-pytorch`` onto the same modules. :class:`StyleGAN2Config` describes a network; it is
read from a file (NVIDIA's ``_init_kwargs``) or from names and shapes.

Modulation is applied to activations, not weights: the input channels of each row are scaled by
that row's styles, one ordinary convolution serves the whole batch, and demodulation is a per-row
output scale. That is the same map as NVIDIA's grouped-weights form, on every device and dtype.
"""

from __future__ import annotations

import math
import re
from dataclasses import asdict, dataclass, field

import torch
import torch.nn.functional as F
from torch import nn

SQRT2 = math.sqrt(2.0)
RESAMPLE_FILTER = (1.0, 3.0, 3.0, 1.0)


@dataclass
class StyleGAN2Config:
    """What a StyleGAN2 generator's structure depends on."""

    resolution: int
    channels: dict = field(default_factory=dict)  # {resolution: feature maps}, 4 .. resolution
    z_dim: int = 512
    w_dim: int = 512
    mapping_layers: int = 8
    img_channels: int = 3
    conv_clamp: float | None = None  # NVIDIA clamps activations to +-256; rosinality does not
    lr_multiplier: float = 0.01  # of the mapping network

    @classmethod
    def nvidia(cls, resolution: int, channel_base: int = 32768, channel_max: int = 512, **kw) -> "StyleGAN2Config":
        """The channel table of NVIDIA's code: ``min(channel_base // res, channel_max)``."""
        res = [2**i for i in range(2, int(math.log2(resolution)) + 1)]
        return cls(resolution=resolution, channels={r: min(channel_base // r, channel_max) for r in res}, **kw)

    @classmethod
    def rosinality(cls, size: int, channel_multiplier: int = 2, n_mlp: int = 8, style_dim: int = 512) -> "StyleGAN2Config":
        """The channel table of rosinality's code (512 up to 32 px, then halving, times the multiplier)."""
        table = {4: 512, 8: 512, 16: 512, 32: 512, 64: 256, 128: 128, 256: 64, 512: 32, 1024: 16}
        res = [2**i for i in range(2, int(math.log2(size)) + 1)]
        chans = {r: table[r] * (channel_multiplier if r >= 64 else 1) for r in res}
        return cls(resolution=size, channels=chans, z_dim=style_dim, w_dim=style_dim, mapping_layers=n_mlp)

    @property
    def block_resolutions(self) -> list[int]:
        return [2**i for i in range(2, int(math.log2(self.resolution)) + 1)]

    @property
    def num_ws(self) -> int:
        """Latent layers (W+ rows): two per block after the first, one + the last toRGB's."""
        return 2 * len(self.block_resolutions)

    def to_dict(self) -> dict:
        d = asdict(self)
        d["channels"] = {str(k): int(v) for k, v in self.channels.items()}
        return d

    @classmethod
    def from_dict(cls, d: dict) -> "StyleGAN2Config":
        d = dict(d)
        d["channels"] = {int(k): int(v) for k, v in d["channels"].items()}
        return cls(**d)

    def check(self) -> "StyleGAN2Config":
        r = self.resolution
        if r < 4 or r & (r - 1):
            raise ValueError(f"resolution must be a power of two >= 4, got {r}")
        if sorted(self.channels) != self.block_resolutions:
            raise ValueError(f"channels must be given for resolutions {self.block_resolutions}, "
                             f"got {sorted(self.channels)}")
        return self


def _setup_filter() -> torch.Tensor:
    f = torch.tensor(RESAMPLE_FILTER)
    f = f[:, None] * f[None, :]
    return f / f.sum()


def _rowwise_matmul(x: torch.Tensor, w_t: torch.Tensor) -> torch.Tensor:
    """``x @ w_t`` one row at a time (a row's result never depends on the batch around it)."""
    return torch.bmm(x.unsqueeze(1), w_t.unsqueeze(0).expand(x.shape[0], -1, -1)).squeeze(1)


def _fir(x: torch.Tensor, f: torch.Tensor, pad: tuple[int, int], gain: float) -> torch.Tensor:
    """Depthwise 2-D FIR filter with zero padding ``pad`` (before, after) on both axes."""
    kernel = (f * gain).to(x.dtype).flip([0, 1])[None, None].expand(x.shape[1], 1, -1, -1)
    x = F.pad(x, (pad[0], pad[1], pad[0], pad[1]))
    return F.conv2d(x, kernel, groups=x.shape[1])


def upsample2d(x: torch.Tensor, f: torch.Tensor) -> torch.Tensor:
    """2x upsampling by zero insertion and the FIR filter (gain 4), as NVIDIA's ``upsample2d``."""
    b, c, h, w = x.shape
    up = x.new_zeros(b, c, h, 2, w, 2)
    up[:, :, :, 0, :, 0] = x
    return _fir(up.reshape(b, c, 2 * h, 2 * w), f, (2, 1), 4.0)


class _BiasLReLUClamp(torch.autograd.Function):
    """``clamp(leaky_relu(x + bias, 0.2) * sqrt(2), -c, c)`` saving only its output.

    The output is the next layer's input, kept anyway; the slope and the clamp mask of the
    backward pass are read from its sign and size, so a layer holds two fewer full-size tensors.
    """

    @staticmethod
    def forward(ctx, x, bias, clamp):
        out = F.leaky_relu(x + bias.to(x.dtype)[None, :, None, None], 0.2) * SQRT2
        if clamp is not None:
            out = out.clamp(-clamp, clamp)
        ctx.clamp = clamp
        ctx.bias_grad = bias.requires_grad
        ctx.save_for_backward(out)
        return out

    @staticmethod
    def backward(ctx, grad):
        (out,) = ctx.saved_tensors
        slope = torch.where(out >= 0, SQRT2, 0.2 * SQRT2).to(grad.dtype)
        g = grad * slope
        if ctx.clamp is not None:
            g = g * (out.abs() < ctx.clamp).to(grad.dtype)
        return g, (g.sum(dim=[0, 2, 3]) if ctx.bias_grad else None), None


class FullyConnected(nn.Module):
    """Dense layer with equalized learning rate (``weight * lr / sqrt(in)``, ``bias * lr``)."""

    def __init__(self, in_features: int, out_features: int, lr_multiplier: float = 1.0, bias_init: float = 0.0):
        super().__init__()
        self.weight = nn.Parameter(torch.randn(out_features, in_features) / lr_multiplier)
        self.bias = nn.Parameter(torch.full((out_features,), float(bias_init)))
        self.weight_gain = lr_multiplier / math.sqrt(in_features)
        self.bias_gain = lr_multiplier
        self.rowwise = False

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        w_t = (self.weight * self.weight_gain).t().to(x.dtype)
        y = _rowwise_matmul(x, w_t) if self.rowwise else x.matmul(w_t)
        return y + (self.bias * self.bias_gain).to(y.dtype)


class SynthesisLayer(nn.Module):
    """Modulated 3x3 convolution (optionally 2x up), demodulation, noise, bias + lrelu (gain sqrt 2), clamp."""

    def __init__(self, in_channels: int, out_channels: int, w_dim: int, resolution: int, up: bool,
                 conv_clamp: float | None):
        super().__init__()
        self.affine = FullyConnected(w_dim, in_channels, bias_init=1.0)
        self.weight = nn.Parameter(torch.randn(out_channels, in_channels, 3, 3))
        self.bias = nn.Parameter(torch.zeros(out_channels))
        self.noise_strength = nn.Parameter(torch.zeros(()))
        self.register_buffer("resample_filter", _setup_filter())
        self.register_buffer("noise_const", torch.randn(resolution, resolution))
        self.up = up
        self.resolution = resolution
        self.conv_clamp = conv_clamp

    def forward(self, x: torch.Tensor, w: torch.Tensor, noise: torch.Tensor | None) -> torch.Tensor:
        styles = self.affine(w)
        weight = self.weight.to(x.dtype)
        # demodulation coefficients: 1 / |W * s| per output channel, from sum_i s_i^2 sum_k W_oik^2
        wsq = weight.float().square().sum(dim=[2, 3])  # [O, I]
        s2 = styles.float().square()
        dsum = _rowwise_matmul(s2, wsq.t()) if self.affine.rowwise else s2.matmul(wsq.t())
        dcoefs = (dsum + 1e-8).rsqrt().to(x.dtype)
        x = x * styles.to(x.dtype)[:, :, None, None]
        if self.up:
            x = F.conv_transpose2d(x, weight.transpose(0, 1), stride=2)
            x = _fir(x, self.resample_filter, (1, 1), 4.0)
        else:
            x = F.conv2d(x, weight, padding=1)
        x = x * dcoefs[:, :, None, None]
        if noise is not None:
            x = x + noise.to(x.dtype) * self.noise_strength.to(x.dtype)
        return _BiasLReLUClamp.apply(x, self.bias, self.conv_clamp)


class ToRGB(nn.Module):
    """Modulated 1x1 convolution to RGB, no demodulation, bias, clamp."""

    def __init__(self, in_channels: int, img_channels: int, w_dim: int, conv_clamp: float | None):
        super().__init__()
        self.affine = FullyConnected(w_dim, in_channels, bias_init=1.0)
        self.weight = nn.Parameter(torch.randn(img_channels, in_channels, 1, 1))
        self.bias = nn.Parameter(torch.zeros(img_channels))
        self.weight_gain = 1 / math.sqrt(in_channels)
        self.conv_clamp = conv_clamp

    def forward(self, x: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
        styles = self.affine(w) * self.weight_gain
        x = F.conv2d(x * styles.to(x.dtype)[:, :, None, None], self.weight.to(x.dtype))
        x = x + self.bias.to(x.dtype)[None, :, None, None]
        if self.conv_clamp is not None:
            x = x.clamp(-self.conv_clamp, self.conv_clamp)
        return x


class SynthesisBlock(nn.Module):
    """One resolution: (constant | 2x-up conv0), conv1, toRGB added to the upsampled skip image."""

    def __init__(self, in_channels: int, out_channels: int, resolution: int, cfg: StyleGAN2Config):
        super().__init__()
        self.resolution = resolution
        self.register_buffer("resample_filter", _setup_filter())
        if in_channels == 0:
            self.const = nn.Parameter(torch.randn(out_channels, resolution, resolution))
        else:
            self.conv0 = SynthesisLayer(in_channels, out_channels, cfg.w_dim, resolution, True, cfg.conv_clamp)
        self.conv1 = SynthesisLayer(out_channels, out_channels, cfg.w_dim, resolution, False, cfg.conv_clamp)
        self.torgb = ToRGB(out_channels, cfg.img_channels, cfg.w_dim, cfg.conv_clamp)
        self.num_conv = 1 if in_channels == 0 else 2

    def forward(self, x, img, ws: torch.Tensor, noise: list):
        if self.num_conv == 1:
            x = self.const.to(ws.dtype).unsqueeze(0).expand(ws.shape[0], -1, -1, -1)
            x = self.conv1(x, ws[:, 0], noise[0])
        else:
            x = self.conv0(x, ws[:, 0], noise[0])
            x = self.conv1(x, ws[:, 1], noise[1])
        y = self.torgb(x, ws[:, self.num_conv]).float()
        img = y if img is None else upsample2d(img, self.resample_filter) + y
        return x, img


NOISE_MODES = ("random", "const", "none")


class StyleGAN2Synthesis(nn.Module):
    """W+ latents ``[B, num_ws, w_dim]`` (+ noise) -> images ``[B, C, R, R]`` in about [-1, 1].

    ``noise``: ``None`` or a list with one ``[B, 1, r, r]`` tensor (unit gaussian; the layer scales
    it by its strength) or ``None`` per noise layer; missing noise follows ``noise_mode``:
    ``"random"`` (fresh), ``"const"`` (the network's stored noise) or ``"none"``.
    """

    def __init__(self, cfg: StyleGAN2Config):
        super().__init__()
        cfg.check()
        self.cfg = cfg
        self.resolution = cfg.resolution
        self.num_layers = cfg.num_ws
        self.dlatent_size = cfg.w_dim
        for res in cfg.block_resolutions:
            in_ch = cfg.channels[res // 2] if res > 4 else 0
            self.add_module(f"b{res}", SynthesisBlock(in_ch, cfg.channels[res], res, cfg))

    def blocks(self) -> list[SynthesisBlock]:
        return [getattr(self, f"b{r}") for r in self.cfg.block_resolutions]

    def layers(self) -> list[SynthesisLayer]:
        """The noise-taking convolution layers, in order."""
        return [m for b in self.blocks() for m in ([b.conv1] if b.num_conv == 1 else [b.conv0, b.conv1])]

    def noise_shapes(self, batch: int) -> list[tuple[int, int, int, int]]:
        return [(batch, 1, layer.resolution, layer.resolution) for layer in self.layers()]

    def batch_invariant(self, enabled: bool = True) -> "StyleGAN2Synthesis":
        """Compute styles and demodulation row by row, so a sample never depends on its batch."""
        for m in self.modules():
            if isinstance(m, FullyConnected):
                m.rowwise = enabled
        return self

    def forward(self, ws: torch.Tensor, noise: list | None = None, noise_mode: str = "random") -> torch.Tensor:
        if ws.dim() != 3 or ws.shape[1] != self.num_layers or ws.shape[2] != self.dlatent_size:
            raise ValueError(f"latents must be [B, {self.num_layers}, {self.dlatent_size}], got {list(ws.shape)}")
        if noise_mode not in NOISE_MODES:
            raise ValueError(f"unknown noise_mode {noise_mode!r} (known: {', '.join(NOISE_MODES)})")
        layers = self.layers()
        noise = [None] * len(layers) if noise is None else list(noise)
        if len(noise) != len(layers):
            raise ValueError(f"expected {len(layers)} noise tensors, got {len(noise)}")
        for i, (layer, n) in enumerate(zip(layers, noise)):
            if n is None and noise_mode == "random":
                noise[i] = torch.randn(ws.shape[0], 1, layer.resolution, layer.resolution, device=ws.device)
            elif n is None and noise_mode == "const":
                noise[i] = layer.noise_const[None, None]
        x = img = None
        w_idx = n_idx = 0
        for block in self.blocks():
            x, img = block(x, img, ws[:, w_idx:w_idx + block.num_conv + 1], noise[n_idx:n_idx + block.num_conv])
            w_idx += block.num_conv
            n_idx += block.num_conv
        return img


class StyleGAN2Mapping(nn.Module):
    """z -> w: normalise z to unit second moment, FC layers (lr multiplier, lrelu gain sqrt 2); ``w_avg``."""

    def __init__(self, cfg: StyleGAN2Config):
        super().__init__()
        self.num_layers = cfg.mapping_layers
        for i in range(cfg.mapping_layers):
            self.add_module(f"fc{i}", FullyConnected(cfg.z_dim if i == 0 else cfg.w_dim, cfg.w_dim, cfg.lr_multiplier))
        self.register_buffer("w_avg", torch.zeros(cfg.w_dim))

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        x = z.float() * (z.float().square().mean(dim=1, keepdim=True) + 1e-8).rsqrt()
        for i in range(self.num_layers):
            x = F.leaky_relu(getattr(self, f"fc{i}")(x), 0.2) * SQRT2
        return x

    def truncate(self, w: torch.Tensor, psi: float) -> torch.Tensor:
        """Move ``w`` towards ``w_avg`` (``psi`` = 1: unchanged)."""
        return w if psi == 1 else self.w_avg.lerp(w, psi)


class StyleGAN2Networks(nn.Module):
    """``mapping`` + ``synthesis``: the state-dict layout of NVIDIA's ``Generator``."""

    def __init__(self, cfg: StyleGAN2Config):
        super().__init__()
        self.cfg = cfg
        self.mapping = StyleGAN2Mapping(cfg)
        self.synthesis = StyleGAN2Synthesis(cfg)

    def forward(self, z: torch.Tensor, truncation_psi: float = 1.0, noise_mode: str = "random") -> torch.Tensor:
        w = self.mapping.truncate(self.mapping(z), truncation_psi)
        return self.synthesis(w[:, None].expand(-1, self.synthesis.num_layers, -1), noise_mode=noise_mode)


def config_from_state_dict(sd: dict, **overrides) -> StyleGAN2Config:
    """Read a config back from NVIDIA-layout names and shapes (``overrides``: clamp, lr multiplier)."""
    chans = {}
    for key, t in sd.items():
        m = re.fullmatch(r"synthesis\.b(\d+)\.conv1\.weight", key)
        if m:
            chans[int(m.group(1))] = int(t.shape[0])
    if 4 not in chans or "synthesis.b4.const" not in sd:
        raise ValueError("not a StyleGAN2 generator: no 'synthesis.b4.const' / 'synthesis.b4.conv1.weight'")
    n_map = sum(1 for k in sd if re.fullmatch(r"mapping\.fc\d+\.weight", k))
    if n_map == 0:
        raise ValueError("not a StyleGAN2 generator: no mapping network ('mapping.fc0.weight')")
    cfg = StyleGAN2Config(resolution=max(chans), channels=chans, z_dim=int(sd["mapping.fc0.weight"].shape[1]),
                          w_dim=int(sd["synthesis.b4.conv1.affine.weight"].shape[1]), mapping_layers=n_map,
                          img_channels=int(sd["synthesis.b4.torgb.weight"].shape[0]), **overrides)
    return cfg.check()


def rosinality_key_map(cfg: StyleGAN2Config) -> dict:
    """``{our name: (rosinality name, rosinality shape)}``; our buffers rosinality lacks map to ``None``.

    Reshapes between the two are pure views (rosinality adds leading 1-dims; its FIR kernels are
    ours times 4); weights are otherwise the same numbers.
    """
    out = {}

    def layer(ours: str, theirs: str, cin: int, cout: int, noise_idx: int, res: int, up: bool):
        out[f"{ours}.weight"] = (f"{theirs}.conv.weight", (1, cout, cin, 3, 3))
        out[f"{ours}.affine.weight"] = (f"{theirs}.conv.modulation.weight", (cin, cfg.w_dim))
        out[f"{ours}.affine.bias"] = (f"{theirs}.conv.modulation.bias", (cin,))
        out[f"{ours}.noise_strength"] = (f"{theirs}.noise.weight", (1,))
        out[f"{ours}.bias"] = (f"{theirs}.activate.bias", (cout,))
        out[f"{ours}.noise_const"] = (f"noises.noise_{noise_idx}", (1, 1, res, res))
        out[f"{ours}.resample_filter"] = (f"{theirs}.conv.blur.kernel", (4, 4)) if up else None

    def torgb(ours: str, theirs: str, cin: int):
        out[f"{ours}.weight"] = (f"{theirs}.conv.weight", (1, cfg.img_channels, cin, 1, 1))
        out[f"{ours}.affine.weight"] = (f"{theirs}.conv.modulation.weight", (cin, cfg.w_dim))
        out[f"{ours}.affine.bias"] = (f"{theirs}.conv.modulation.bias", (cin,))
        out[f"{ours}.bias"] = (f"{theirs}.bias", (1, cfg.img_channels, 1, 1))

    for i in range(cfg.mapping_layers):
        out[f"mapping.fc{i}.weight"] = (f"style.{i + 1}.weight", (cfg.w_dim, cfg.z_dim if i == 0 else cfg.w_dim))
        out[f"mapping.fc{i}.bias"] = (f"style.{i + 1}.bias", (cfg.w_dim,))
    out["mapping.w_avg"] = None  # rosinality keeps it beside the network, as ``latent_avg``
    c4 = cfg.channels[4]
    out["synthesis.b4.const"] = ("input.input", (1, c4, 4, 4))
    out["synthesis.b4.resample_filter"] = None
    layer("synthesis.b4.conv1", "conv1", c4, c4, 0, 4, False)
    torgb("synthesis.b4.torgb", "to_rgb1", c4)
    for j, res in enumerate(cfg.block_resolutions[1:]):
        cin, cout = cfg.channels[res // 2], cfg.channels[res]
        b = f"synthesis.b{res}"
        out[f"{b}.resample_filter"] = (f"to_rgbs.{j}.upsample.kernel", (4, 4))
        layer(f"{b}.conv0", f"convs.{2 * j}", cin, cout, 2 * j + 1, res, True)
        layer(f"{b}.conv1", f"convs.{2 * j + 1}", cout, cout, 2 * j + 2, res, False)
        torgb(f"{b}.torgb", f"to_rgbs.{j}", cout)
    return out


def rosinality_config(sd: dict) -> StyleGAN2Config:
    """A config from the names and shapes of a rosinality ``g_ema`` state dict."""
    if "input.input" not in sd or "conv1.conv.weight" not in sd:
        raise ValueError("not a rosinality StyleGAN2 generator: no 'input.input' / 'conv1.conv.weight'")
    n_rgb = sum(1 for k in sd if re.fullmatch(r"to_rgbs\.\d+\.conv\.weight", k))
    resolution = 2 ** (n_rgb + 2)
    chans = {4: int(sd["input.input"].shape[1])}
    for j in range(n_rgb):
        chans[2 ** (j + 3)] = int(sd[f"convs.{2 * j}.conv.weight"].shape[1])
    n_map = sum(1 for k in sd if re.fullmatch(r"style\.\d+\.weight", k))
    w_dim = int(sd["conv1.conv.modulation.weight"].shape[1])
    return StyleGAN2Config(resolution=resolution, channels=chans, z_dim=int(sd["style.1.weight"].shape[1]),
                           w_dim=w_dim, mapping_layers=n_map, img_channels=int(sd["to_rgb1.bias"].shape[1])).check()


def from_rosinality(sd: dict, latent_avg: torch.Tensor | None) -> tuple[StyleGAN2Config, dict]:
    """A rosinality ``g_ema`` state dict (+ ``latent_avg``) as a config and an NVIDIA-layout state dict."""
    cfg = rosinality_config(sd)
    ours = {}
    for name, target in rosinality_key_map(cfg).items():
        if target is None:
            continue
        theirs, shape = target
        if theirs not in sd:
            raise ValueError(f"rosinality state dict lacks {theirs!r}")
        t = sd[theirs]
        if tuple(t.shape) != shape:
            raise ValueError(f"{theirs!r} has shape {list(t.shape)}, expected {list(shape)}")
        if name.endswith("resample_filter"):
            continue  # a constant of the architecture; ours is rebuilt
        ours[name] = t.reshape(_ours_shape(name, t))
    if latent_avg is not None:
        ours["mapping.w_avg"] = latent_avg.reshape(cfg.w_dim)
    return cfg, ours


def _ours_shape(name: str, t: torch.Tensor) -> tuple:
    """Our shape of a rosinality tensor (leading singleton dims dropped where ours has none)."""
    if name.endswith(".noise_strength"):
        return ()
    if name.endswith("noise_const"):
        return tuple(t.shape[-2:])
    if name.endswith("torgb.bias"):
        return (t.shape[1],)
    if name == "synthesis.b4.const" or name.endswith(".weight") and t.dim() == 5:
        return tuple(t.shape[1:])
    return tuple(t.shape)


def build_networks(cfg: StyleGAN2Config, state_dict: dict, where: str) -> StyleGAN2Networks:
    """Networks for ``cfg`` with ``state_dict`` loaded (missing filters are architecture constants)."""
    nets = StyleGAN2Networks(cfg)
    own = nets.state_dict()
    sd = {k: v.float() for k, v in state_dict.items() if k in own}
    unknown = sorted(set(state_dict) - set(own))
    if unknown:
        raise ValueError(f"{where}: names a StyleGAN2 generator does not have: {', '.join(unknown[:5])}")
    missing = sorted(k for k in own if k not in sd and not k.endswith("resample_filter"))
    if missing:
        raise ValueError(f"{where}: missing {len(missing)} StyleGAN2 weights, e.g. {', '.join(missing[:5])}")
    for k, v in sd.items():
        if tuple(v.shape) != tuple(own[k].shape):
            raise ValueError(f"{where}: {k} has shape {list(v.shape)}, the config says {list(own[k].shape)}")
    nets.load_state_dict(sd, strict=False)
    return nets
