"""Quality measures used by the model card, the tests and the benchmarks."""

from __future__ import annotations

import numpy as np
import torch

from .io.align import detect_faces


def has_face(gray: np.ndarray, border: float = 0.25, min_neighbors: int = 3) -> bool:
    """The project's face test: Haar cascade, scaleFactor 1.05, minNeighbors 3, minSize R//4.

    The image is first set in a mid-grey border of ``border`` times its side on each side (0: none):
    the cascade cannot find a face that fills the whole frame (FFHQ framing), which misses 28% of
    real faces. ``scripts/face_measure_calibration.py`` compares the settings.
    """
    side = min(gray.shape)
    if border:
        gray = np.pad(gray, int(side * border), constant_values=128)
    return bool(detect_faces(gray, min_size=max(1, side // 4), min_neighbors=min_neighbors))


def luma_u8(images: torch.Tensor) -> np.ndarray:
    """``[N, H, W]`` uint8 luma (ITU-R 601, as PIL's convert("L") and OpenCV's cvtColor) of ``[N, C, H, W]`` in [0, 1]."""
    x = images.detach().float().clamp(0, 1).cpu()
    x = 0.299 * x[:, 0] + 0.587 * x[:, 1] + 0.114 * x[:, 2] if x.shape[1] == 3 else x[:, 0]
    return (x * 255.0).round().to(torch.uint8).numpy()


def face_rate(images: torch.Tensor, border: float = 0.25, min_neighbors: int = 3) -> float:
    """Share of images ``[N, C, H, W]`` in [0, 1] in which the Haar cascade finds a face (see ``has_face``)."""
    if images.shape[0] == 0:
        raise ValueError("face_rate needs at least one image")
    return float(np.mean([has_face(g, border, min_neighbors) for g in luma_u8(images)]))


def chroma(images: torch.Tensor) -> float:
    """Mean chroma of RGB images ``[N, 3, H, W]`` in [0, 1]: the length of (Cb, Cr) of ITU-R 601, in [0, 0.5]."""
    x = images.detach().float().clamp(0, 1).cpu()
    if x.shape[1] != 3:
        return 0.0
    r, g, b = x[:, 0], x[:, 1], x[:, 2]
    cb = -0.168736 * r - 0.331264 * g + 0.5 * b
    cr = 0.5 * r - 0.418688 * g - 0.081312 * b
    return float(torch.sqrt(cb * cb + cr * cr).mean())


def colour_kept(sr: torch.Tensor, originals: torch.Tensor) -> float:
    """Mean chroma of the SR images over that of the originals (1.0: as colourful; 0.0: grey)."""
    base = chroma(originals)
    return chroma(sr) / base if base > 0 else float("nan")


AGE_BANDS = ((0, 18, "under 18"), (18, 40, "18-40"), (40, 60, "40-60"), (60, 200, "over 60"))


def age_band(age) -> str | None:
    """The model card's age band of an age in years (None where unknown)."""
    if age is None or age == "None":
        return None
    a = int(age)
    return next(name for lo, hi, name in AGE_BANDS if lo <= a < hi)
