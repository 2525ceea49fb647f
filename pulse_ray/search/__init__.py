"""PULSE's latent search: downscaler, losses, spherical optimizers and the batched search loop."""

from .downscale import downscale
from .losses import parse_loss
from .options import OptionError, SearchOptions
from .pulse import SearchResult, check_lr_size, search_seed, upsample

__all__ = ["OptionError", "SearchOptions", "SearchResult", "check_lr_size", "downscale", "parse_loss", "search_seed",
           "upsample"]
