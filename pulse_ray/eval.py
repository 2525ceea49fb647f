"""Quality measures used by the model card, the tests and the benchmarks."""

from __future__ import annotations

import numpy as np
import torch

from .io.align import detect_faces


def has_face(gray: np.ndarray) -> bool:
    """The project's face test: Haar cascade, scaleFactor 1.05, minNeighbors 3, minSize R//4."""
    return bool(detect_faces(gray, min_size=max(1, min(gray.shape) // 4)))


def face_rate(images: torch.Tensor) -> float:
    """Share of images ``[N, C, H, W]`` in [0, 1] in which the Haar cascade finds a face."""
    if images.shape[0] == 0:
        raise ValueError("face_rate needs at least one image")
    x = images.detach().float().clamp(0, 1).cpu()
    if x.shape[1] == 3:
        # ITU-R 601 luma, as PIL's convert("L") and OpenCV's cvtColor use
        x = 0.299 * x[:, 0] + 0.587 * x[:, 1] + 0.114 * x[:, 2]
    else:
        x = x[:, 0]
    gray = (x * 255.0).round().to(torch.uint8).numpy()
    return float(np.mean([has_face(g) for g in gray]))
