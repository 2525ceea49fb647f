"""FFHQ alignment: an oriented square from the eye centres and mouth corners (Karras et al., 2019).

The quad is computed from 68-point (iBUG) or 5-point (dlib) landmarks in photo pixels. ``scale``
shrinks or grows the FFHQ square about its centre: 1.0 is the FFHQ framing (about four eye
distances wide), and the bundled generator records the scale it was trained on in its metadata.
"""

from __future__ import annotations

import functools
import importlib.util
import os

import numpy as np
from PIL import Image

ALIGN_EXTRA_HINT = "face landmarks need the align extra: pip install 'pulse-ray[align]'"


def eyes_and_mouth(landmarks: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Left eye centre, right eye centre, left and right mouth corner from 68 or 5 landmarks ``[N, 2]``."""
    lm = np.asarray(landmarks, dtype=np.float64)
    if lm.shape == (68, 2):
        return lm[36:42].mean(0), lm[42:48].mean(0), lm[48], lm[54]
    if lm.shape == (5, 2):  # dlib's 5-point model: right eye outer/inner, left eye outer/inner, nose
        raise ValueError("5-point landmarks have no mouth corners; use eyes_and_nose_quad")
    raise ValueError(f"landmarks must be 68 (or 5) points of (x, y), got shape {list(lm.shape)}")


def ffhq_quad(landmarks: np.ndarray, scale: float = 1.0) -> np.ndarray:
    """The FFHQ crop of a face as a quad ``[4, 2]``: top-left, bottom-left, bottom-right, top-right."""
    lm = np.asarray(landmarks, dtype=np.float64)
    if lm.shape == (5, 2):
        return _quad_from_five(lm, scale)
    eye_l, eye_r, mouth_l, mouth_r = eyes_and_mouth(lm)
    return _quad(eye_l, eye_r, (mouth_l + mouth_r) / 2, scale)


def _quad(eye_l: np.ndarray, eye_r: np.ndarray, mouth: np.ndarray, scale: float) -> np.ndarray:
    eye_avg = (eye_l + eye_r) / 2
    eye_to_eye = eye_r - eye_l
    eye_to_mouth = mouth - eye_avg
    x = eye_to_eye - np.array([-eye_to_mouth[1], eye_to_mouth[0]])  # both cues of the face's direction
    x /= np.hypot(*x)
    x *= max(np.hypot(*eye_to_eye) * 2.0, np.hypot(*eye_to_mouth) * 1.8) * scale
    y = np.array([-x[1], x[0]])
    c = eye_avg + eye_to_mouth * 0.1
    return np.stack([c - x - y, c - x + y, c + x + y, c + x - y])


def _quad_from_five(lm: np.ndarray, scale: float) -> np.ndarray:
    """dlib's 5 points (eye corners, nose base): the mouth is placed from the FFHQ mean face."""
    eye_r, eye_l = lm[0:2].mean(0), lm[2:4].mean(0)  # points 0-1 are the subject's left eye in image right
    if eye_l[0] > eye_r[0]:
        eye_l, eye_r = eye_r, eye_l
    eye_avg = (eye_l + eye_r) / 2
    nose = lm[4]
    # In mean FFHQ geometry the mouth centre lies about 1.6x as far below the eyes as the nose base.
    mouth = eye_avg + (nose - eye_avg) * 1.6
    return _quad(eye_l, eye_r, mouth, scale)


def quad_angle_deg(quad: np.ndarray) -> float:
    """Rotation of the quad's top edge, in degrees (0 = upright)."""
    top = quad[3] - quad[0]
    return float(np.degrees(np.arctan2(top[1], top[0])))


def crop_quad(img: Image.Image, quad: np.ndarray, size: int) -> Image.Image:
    """Sample the quad out of ``img`` as a ``size`` x ``size`` RGB image.

    Shrinks by whole powers of two first where the quad is much larger than ``size`` (as FFHQ does),
    so a large face is averaged rather than aliased; parts outside the photo are edge-padded.
    """
    rgb = img.convert("RGB")
    quad = np.asarray(quad, dtype=np.float64)
    side = np.hypot(*(quad[3] - quad[0]))
    shrink = 1
    while side / (shrink * 2) >= size * 2 and min(rgb.size) // (shrink * 2) >= 8:
        shrink *= 2
    if shrink > 1:
        rgb = rgb.resize((max(1, rgb.width // shrink), max(1, rgb.height // shrink)), Image.Resampling.BOX)
        quad = quad / shrink
    pad = int(np.ceil(max(0.0, -quad.min(), quad[:, 0].max() - rgb.width, quad[:, 1].max() - rgb.height))) + 2
    if pad > 2:
        arr = np.pad(np.asarray(rgb), ((pad, pad), (pad, pad), (0, 0)), mode="edge")
        rgb, quad = Image.fromarray(arr), quad + pad
    hi = size * 4  # sample at 4x, then downsample: smooth edges without a blurry result
    out = rgb.transform((hi, hi), Image.Transform.QUAD, tuple((quad + 0.5).flatten()), Image.Resampling.BILINEAR)
    return out.resize((size, size), Image.Resampling.LANCZOS)


def models_dir() -> str:
    """The ``models/`` folder of the face_recognition_models package (dlib's landmark and detector models)."""
    spec = importlib.util.find_spec("face_recognition_models")  # not imported: its __init__ needs pkg_resources
    if spec is None or not spec.submodule_search_locations:
        raise RuntimeError(ALIGN_EXTRA_HINT)
    return os.path.join(spec.submodule_search_locations[0], "models")


@functools.lru_cache(maxsize=None)
def landmark_model(points: int = 68):
    """dlib's shape predictor (68 points, as FFHQ and PULSE use, or 5), loaded once per process."""
    try:
        import dlib
    except ImportError as e:
        raise RuntimeError(ALIGN_EXTRA_HINT) from e
    path = os.path.join(models_dir(), f"shape_predictor_{points}_face_landmarks.dat")
    if not os.path.exists(path):
        raise RuntimeError(f"{path} is missing; {ALIGN_EXTRA_HINT}")
    return dlib.shape_predictor(path)


def landmarks_in_box(rgb: np.ndarray, box: tuple[float, float, float, float], points: int = 68) -> np.ndarray:
    """Landmarks ``[points, 2]`` of the face inside ``box`` = (left, top, right, bottom) of an RGB uint8 array."""
    import dlib

    rect = dlib.rectangle(*(int(round(v)) for v in box))
    shape = landmark_model(points)(rgb, rect)
    return np.array([[p.x, p.y] for p in shape.parts()], dtype=np.float64)
