"""Generators: the StyleGAN (v1) and StyleGAN2 networks PULSE searches, and their loading."""

from .checkpoint import CheckpointError, compute_gaussian_fit, save_checkpoint
from .generator import StyleGAN2Generator
from .stylegan import MappingNetwork, SynthesisNetwork, stylegan_channels
from .stylegan2 import StyleGAN2Config, StyleGAN2Networks

__all__ = ["CheckpointError", "MappingNetwork", "SynthesisNetwork", "compute_gaussian_fit",
           "StyleGAN2Config", "StyleGAN2Generator", "StyleGAN2Networks", "save_checkpoint", "stylegan_channels"]
