"""Generators: the StyleGAN (v1) networks PULSE searches, and their loading."""

from .checkpoint import CheckpointError, compute_gaussian_fit, save_checkpoint
from .stylegan import MappingNetwork, SynthesisNetwork, stylegan_channels

__all__ = ["CheckpointError", "MappingNetwork", "SynthesisNetwork", "compute_gaussian_fit",
           "save_checkpoint", "stylegan_channels"]
