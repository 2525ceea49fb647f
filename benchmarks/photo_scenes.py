"""Synthetic group photos for the alignment benchmark and tests: held-out colour faces from
shared/data/utkface.parquet placed at known positions, sizes (eye distance) and rotations on a
textured background, several per photo. The truth of each face is dlib's 68 landmarks found on
the 128 px original, carried through the placement, and the FFHQ quad computed from them."""

from __future__ import annotations

import io
from dataclasses import dataclass, field
from pathlib import Path

import cv2
import numpy as np
from PIL import Image

UTKFACE = Path(__file__).resolve().parents[2] / "shared" / "data" / "utkface.parquet"


@dataclass
class Scene:
    photo: np.ndarray  # [H, W, 3] uint8
    landmarks: list = field(default_factory=list)  # per face: [68, 2] in photo pixels
    eye_distance: list = field(default_factory=list)
    angle: list = field(default_factory=list)  # degrees


def held_out_faces(n: int, skip: int = 0, share: float = 0.03) -> list[tuple[np.ndarray, np.ndarray]]:
    """``n`` held-out UTKFace faces (128 px RGB) with their 68 landmarks (found at 128 px, upsampled 1x)."""
    import pyarrow.parquet as pq

    from pulse_ray.photos.detect import find_faces
    from pulse_ray.photos.ffhq import landmarks_in_box
    from pulse_ray.train.data import is_held_out

    out, seen = [], 0
    pf = pq.ParquetFile(UTKFACE)
    for batch in pf.iter_batches(columns=["id", "image"], batch_size=512):
        for rid, data in zip(batch.column("id").to_pylist(), batch.column("image").to_pylist()):
            if not is_held_out(rid, share):
                continue
            face = np.asarray(Image.open(io.BytesIO(data)).convert("RGB"))
            found = find_faces(face, "hog", 1)
            if not found:
                continue
            seen += 1
            if seen <= skip:
                continue
            out.append((face, landmarks_in_box(face, found[0][0])))
            if len(out) == n:
                return out
    raise ValueError(f"{UTKFACE}: only {len(out)} usable held-out faces after skipping {skip}")


def background(h: int, w: int, rng: np.random.Generator) -> np.ndarray:
    """Smooth colour noise with a few soft shapes: some texture, no faces."""
    low = rng.uniform(40, 215, size=(max(2, h // 64), max(2, w // 64), 3)).astype(np.float32)
    bg = cv2.resize(low, (w, h), interpolation=cv2.INTER_CUBIC)
    for _ in range(6):
        c = tuple(int(v) for v in rng.uniform(30, 225, 3))
        p = (int(rng.uniform(0, w)), int(rng.uniform(0, h)))
        cv2.circle(bg, p, int(rng.uniform(10, min(h, w) // 4)), c, -1, cv2.LINE_AA)
    bg = cv2.GaussianBlur(bg, (0, 0), 2.0) + rng.normal(0, 4, size=bg.shape).astype(np.float32)
    return np.clip(bg, 0, 255).astype(np.uint8)


def place_face(photo: np.ndarray, face: np.ndarray, lm: np.ndarray, centre, eye_distance: float,
               angle: float) -> np.ndarray:
    """Paste ``face`` (with a soft oval mask) so that its eyes are ``eye_distance`` px apart, rotated
    by ``angle`` degrees (counter-clockwise on screen) about ``centre``; returns its landmarks in the photo."""
    eyes = np.linalg.norm(lm[42:48].mean(0) - lm[36:42].mean(0))
    s = eye_distance / eyes
    small = cv2.resize(face, None, fx=s, fy=s, interpolation=cv2.INTER_AREA)
    hs, ws = small.shape[:2]
    c_small = np.array([ws, hs], np.float64) / 2
    t = np.radians(angle)
    rot = np.array([[np.cos(t), np.sin(t)], [-np.sin(t), np.cos(t)]])
    m = np.hstack([rot, (np.asarray(centre, np.float64) - rot @ c_small)[:, None]])
    h, w = photo.shape[:2]
    warped = cv2.warpAffine(small, m, (w, h), flags=cv2.INTER_LINEAR)
    yy, xx = np.mgrid[0:hs, 0:ws].astype(np.float32)
    oval = np.clip((1 - np.hypot((xx - c_small[0]) / (0.47 * ws), (yy - c_small[1]) / (0.5 * hs))) / 0.12, 0, 1)
    mask = cv2.warpAffine(oval, m, (w, h), flags=cv2.INTER_LINEAR)[..., None]
    photo[:] = np.clip(mask * warped + (1 - mask) * photo, 0, 255).astype(np.uint8)
    q = (lm + 0.5) * s - 0.5
    return q @ rot.T + m[:, 2]


def make_scene(faces: list, rng: np.random.Generator, size=(640, 480), eye_range=(10.0, 40.0),
               angle_range=20.0) -> Scene:
    """One photo with ``faces`` placed on a grid of cells (one face per cell, jittered)."""
    w, h = size
    scene = Scene(background(h, w, rng))
    cols = int(np.ceil(np.sqrt(len(faces) * w / h)))
    rows = int(np.ceil(len(faces) / cols))
    cw, ch = w / cols, h / rows
    for i, (face, lm) in enumerate(faces):
        eye = float(rng.uniform(*eye_range))
        ang = float(rng.uniform(-angle_range, angle_range))
        half = 2.2 * eye  # roughly half the face's extent
        cx = (i % cols + 0.5) * cw + rng.uniform(-1, 1) * max(0.0, cw / 2 - half)
        cy = (i // cols + 0.5) * ch + rng.uniform(-1, 1) * max(0.0, ch / 2 - half)
        scene.landmarks.append(place_face(scene.photo, face, lm, (cx, cy), eye, ang))
        scene.eye_distance.append(eye)
        scene.angle.append(ang)
    return scene


def match_quads(found: list[np.ndarray], truth: list[np.ndarray]) -> tuple[list[tuple[int, int]], int]:
    """Pair found quads with true ones (centre within half the true side); returns pairs and the number of
    found quads that match no face (false detections)."""
    pairs, used = [], set()
    for j, t in enumerate(truth):
        side = np.linalg.norm(t[3] - t[0])
        best = None
        for i, f in enumerate(found):
            d = np.linalg.norm(f.mean(0) - t.mean(0))
            if i not in used and d < side / 2 and (best is None or d < best[1]):
                best = (i, d)
        if best is not None:
            used.add(best[0])
            pairs.append((best[0], j))
    return pairs, len(found) - len(used)


def quad_errors(found: np.ndarray, truth: np.ndarray) -> tuple[float, float, float]:
    """Mean corner error in px, the same in % of the true side, and the angle error in degrees."""
    from pulse_ray.photos.ffhq import quad_angle_deg

    corner = float(np.linalg.norm(found - truth, axis=1).mean())
    side = float(np.linalg.norm(truth[3] - truth[0]))
    da = (quad_angle_deg(found) - quad_angle_deg(truth) + 180) % 360 - 180
    return corner, 100 * corner / side, abs(float(da))
