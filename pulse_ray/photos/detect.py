"""Face detection: dlib's HOG detector (upsampled for small faces), its CNN (mmod) detector, or
OpenCV's Haar cascade; landmarks of a found face from dlib's shape predictor."""

from __future__ import annotations

import functools

import numpy as np

from .ffhq import ALIGN_EXTRA_HINT, landmarks_in_box, models_dir

DETECTORS = ("hog", "cnn", "haar")


def _dlib():
    try:
        import dlib
    except ImportError as e:
        raise RuntimeError(ALIGN_EXTRA_HINT) from e
    return dlib


@functools.lru_cache(maxsize=1)
def hog_detector():
    return _dlib().get_frontal_face_detector()


@functools.lru_cache(maxsize=1)
def cnn_detector():
    import os

    return _dlib().cnn_face_detection_model_v1(os.path.join(models_dir(), "mmod_human_face_detector.dat"))


def detect_boxes(rgb: np.ndarray, upsample: int = 1) -> list[tuple[tuple[int, int, int, int], float]]:
    """Faces in an RGB uint8 array as ``((left, top, right, bottom), score)``, best score first (HOG)."""
    rects, scores, _ = hog_detector().run(np.ascontiguousarray(rgb), upsample, 0.0)
    found = [((r.left(), r.top(), r.right(), r.bottom()), float(s)) for r, s in zip(rects, scores)]
    return sorted(found, key=lambda f: -f[1])


def find_faces(rgb: np.ndarray, detector: str = "hog", upsample: int = 1) -> list[tuple[tuple[int, int, int, int], float | None]]:
    """Every face in an RGB uint8 array as ``((left, top, right, bottom), score)``, best first.

    ``upsample`` doubles the image that many times before detecting (HOG and CNN), so faces
    half / a quarter of the detector's ~80 px window are found. Haar gives no score (None).
    """
    rgb = np.ascontiguousarray(rgb)
    if detector == "hog":
        return detect_boxes(rgb, upsample)
    if detector == "cnn":
        found = [((d.rect.left(), d.rect.top(), d.rect.right(), d.rect.bottom()), float(d.confidence))
                 for d in cnn_detector()(rgb, upsample)]
        return sorted(found, key=lambda f: -f[1])
    if detector == "haar":
        from pulse_ray.io.align import detect_faces

        gray = np.asarray(rgb.mean(axis=2), dtype=np.uint8)
        return [((x, y, x + w, y + h), None) for x, y, w, h in detect_faces(gray, min_size=12)]
    raise ValueError(f"unknown face detector {detector!r} (choose from {', '.join(DETECTORS)})")


def largest_face_landmarks(rgb: np.ndarray, max_upsample: int = 1) -> np.ndarray | None:
    """68 landmarks of the largest face, trying more upsampling only where none is found; None if no face."""
    for upsample in range(max_upsample + 1):
        found = detect_boxes(rgb, upsample)
        if found:
            box = max(found, key=lambda f: (f[0][2] - f[0][0]) * (f[0][3] - f[0][1]))[0]
            return landmarks_in_box(rgb, box)
    return None
