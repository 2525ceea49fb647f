"""pulse-ray: PULSE face super-resolution (Menon et al., CVPR 2020) as a distributed batch job on Ray.

PULSE invents a plausible high-resolution face that downscales to the input; it does not
recover who the person is.
"""

from .models.checkpoint import CheckpointError
from .models.generator import DEFAULT_GENERATOR, Generator, bundled_generators, load_generator
from .search import SearchOptions, SearchResult, check_lr_size, downscale, upsample

__version__ = "0.1.0"
__all__ = ["CheckpointError", "DEFAULT_GENERATOR", "Generator", "SearchOptions", "SearchResult", "bundled_generators",
           "check_lr_size", "downscale", "load_generator", "upsample"]
