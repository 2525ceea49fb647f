"""Face detection with dlib (HOG, upsampled for small faces), landmarks from its shape predictor."""

from __future__ import annotations

import functools

import numpy as np

from .ffhq import ALIGN_EXTRA_HINT, landmarks_in_box


@functools.lru_cache(maxsize=1)
def hog_detector():
    try:
        import dlib
    except ImportError as e:
        raise RuntimeError(ALIGN_EXTRA_HINT) from e
    return dlib.get_frontal_face_detector()


def detect_boxes(rgb: np.ndarray, upsample: int = 1) -> list[tuple[tuple[int, int, int, int], float]]:
    """Faces in an RGB uint8 array as ``((left, top, right, bottom), score)``, best score first."""
    rects, scores, _ = hog_detector().run(np.ascontiguousarray(rgb), upsample, 0.0)
    found = [((r.left(), r.top(), r.right(), r.bottom()), float(s)) for r, s in zip(rects, scores)]
    return sorted(found, key=lambda f: -f[1])


def largest_face_landmarks(rgb: np.ndarray, max_upsample: int = 1) -> np.ndarray | None:
    """68 landmarks of the largest face, trying more upsampling only where none is found; None if no face."""
    for upsample in range(max_upsample + 1):
        found = detect_boxes(rgb, upsample)
        if found:
            box = max(found, key=lambda f: (f[0][2] - f[0][0]) * (f[0][3] - f[0][1]))[0]
            return landmarks_in_box(rgb, box)
    return None
