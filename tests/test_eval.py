"""The model card's measures on real photos: the Haar face test and colour kept."""

import io
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
import torch
from PIL import Image

from pulse_ray.eval import chroma, colour_kept, face_rate, has_face

UTKFACE = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "utkface.parquet"


@pytest.fixture(scope="module")
def photos() -> torch.Tensor:
    """The first 24 UTKFace photos at 64 px, [N, 3, 64, 64] in [0, 1]."""
    rows = pq.ParquetFile(UTKFACE).read_row_group(0, columns=["image"]).column("image").to_pylist()[:24]
    arrays = [np.asarray(Image.open(io.BytesIO(b)).convert("RGB").resize((64, 64), Image.BICUBIC)) for b in rows]
    return torch.from_numpy(np.stack(arrays)).permute(0, 3, 1, 2).float() / 255


def test_a_face_that_fills_the_frame_is_found_only_with_the_border(photos):
    tight = photos[:, :, 4:60, 4:60]  # the central 56 px: the face reaches every edge
    with_border, without = face_rate(tight), face_rate(tight, border=0)
    assert with_border >= 0.8
    assert without < with_border - 0.3


def test_no_face_in_noise_or_flat_grey():
    rng = np.random.default_rng(0)
    assert not has_face(rng.integers(0, 256, (64, 64), dtype=np.uint8))
    assert not has_face(np.full((64, 64), 128, dtype=np.uint8))


def test_colour_kept_is_one_for_the_originals_and_zero_for_grey(photos):
    grey = photos.mean(dim=1, keepdim=True).expand(-1, 3, -1, -1)
    assert chroma(photos) > 0.02
    assert colour_kept(photos, photos) == pytest.approx(1.0)
    assert colour_kept(grey, photos) == pytest.approx(0.0, abs=1e-6)
