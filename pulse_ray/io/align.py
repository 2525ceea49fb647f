"""Face finding and cropping with OpenCV's bundled Haar cascade (no download needed)."""

from __future__ import annotations

import functools

import numpy as np
from PIL import Image

#: How much larger than the cascade's box the square crop is: the cascade boxes eyes to mouth,
#: a face crop also shows forehead, chin and cheeks.
CROP_SCALE = 1.45


@functools.lru_cache(maxsize=1)
def _cascade():
    import cv2

    if not hasattr(cv2, "CascadeClassifier"):  # OpenCV 5 dropped the Haar cascades
        raise RuntimeError(f"OpenCV {cv2.__version__} has no Haar cascade (CascadeClassifier), which face "
                           f"finding needs: install 'opencv-python-headless<5'")
    path = cv2.data.haarcascades + "haarcascade_frontalface_default.xml"
    cascade = cv2.CascadeClassifier(path)
    if cascade.empty():
        raise RuntimeError(f"OpenCV could not load its face cascade from {path}")
    return cascade


def to_gray_uint8(img: Image.Image) -> np.ndarray:
    """PIL image (any mode) -> 2-D uint8 greyscale array."""
    return np.asarray(img.convert("L"), dtype=np.uint8)


def detect_faces(gray: np.ndarray, min_size: int, scale_factor: float = 1.05, min_neighbors: int = 3):
    """Face boxes ``(x, y, w, h)`` in a uint8 greyscale image, largest first."""
    boxes = _cascade().detectMultiScale(gray, scaleFactor=scale_factor, minNeighbors=min_neighbors,
                                        minSize=(min_size, min_size))
    return sorted((tuple(int(v) for v in b) for b in boxes), key=lambda b: -b[2] * b[3])


def align_face(img: Image.Image, size: int) -> Image.Image | None:
    """Crop a square around the largest face and resize it to ``size``; None when no face is found.

    The crop is clamped inside the picture (shifted, then shrunk if the picture is too small).
    """
    rgb = img.convert("RGB")
    w, h = rgb.size
    boxes = detect_faces(to_gray_uint8(rgb), min_size=max(8, min(w, h) // 6))
    if not boxes:
        return None
    x, y, bw, bh = boxes[0]
    side = min(int(round(max(bw, bh) * CROP_SCALE)), w, h)
    cx, cy = x + bw / 2, y + bh / 2
    left = int(round(min(max(cx - side / 2, 0), w - side)))
    top = int(round(min(max(cy - side / 2, 0), h - side)))
    crop = rgb.crop((left, top, left + side, top + side))
    return crop.resize((size, size), Image.Resampling.LANCZOS)
