"""pulse_ray.io.images: safe id -> path, decode / validate (bombs, truncation), encode."""

from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image

from pulse_ray.io import images

from .conftest import bomb_png, png_bytes


@pytest.mark.parametrize(
    "rid, reason",
    [
        ("", "empty"),
        ("a\x00b", "control characters"),
        ("a\nb", "control characters"),
        ("x" * 513, "512-byte limit"),
        ("é" * 300, "512-byte limit"),  # 600 bytes in UTF-8
        ("/etc/passwd", "absolute"),
        ("C:evil", "absolute"),
        ("../x", "'..' path segment"),
        ("a/../../x", "'..' path segment"),
        ("./x", "'.' path segment"),
        ("a/./b", "'.' path segment"),
        ("..", "'..' path segment"),
        ("a//b", "empty path segment"),
        ("a/", "empty path segment"),
        ("a\\..\\b", "backslash"),
        ("s/" + "y" * 251, "over 250 bytes"),
        (123, "not a string"),
    ],
)
def test_unsafe_ids_are_refused_with_the_reason(rid, reason):
    with pytest.raises(images.UnsafeId, match=reason):
        images.safe_relpath(rid)


@pytest.mark.parametrize("rid", ["a", "a/b/c", "face 01", "x.png", "...", "a..b", "ünï/çødé", "x" * 250 + "/" + "y" * 250 + "/z"])
def test_safe_ids_map_to_themselves(rid):
    assert images.safe_relpath(rid) == rid


def test_decode_png_jpeg_webp_grey():
    for fmt in ("PNG", "JPEG", "WEBP"):
        a = images.decode_image(png_bytes(8, 8, 1, fmt=fmt))
        assert a.shape == (8, 8, 3) and a.dtype == np.uint8
    grey = images.decode_image(png_bytes(4, 4, 2, mode="L"))
    assert grey.shape == (4, 4, 3) and (grey[..., 0] == grey[..., 2]).all()
    # exact for PNG
    rgb = np.random.default_rng(3).integers(0, 256, (4, 4, 3), dtype=np.uint8)
    buf = io.BytesIO()
    Image.fromarray(rgb).save(buf, "PNG")
    assert (images.decode_image(buf.getvalue()) == rgb).all()


def test_rgba_and_palette_become_rgb():
    for mode in ("RGBA", "P", "LA"):
        buf = io.BytesIO()
        Image.new(mode, (4, 4)).save(buf, "PNG")
        assert images.decode_image(buf.getvalue()).shape == (4, 4, 3)


def test_truncated_corrupt_empty_and_unknown():
    good = png_bytes(16, 16, 4)
    with pytest.raises(images.BadInput, match="truncated|corrupt"):
        images.decode_image(good[: len(good) // 2])
    with pytest.raises(images.BadInput, match="not a readable image"):
        images.decode_image(b"this is not an image at all")
    with pytest.raises(images.BadInput, match="empty image"):
        images.decode_image(b"")
    buf = io.BytesIO()
    Image.new("RGB", (4, 4)).save(buf, "GIF")
    with pytest.raises(images.BadInput, match="not a readable image"):
        images.decode_image(buf.getvalue())


def test_decompression_bomb_is_refused_from_the_header():
    data = bomb_png()
    assert len(data) < 2000
    with pytest.raises(images.BadInput, match=r"decompression bomb.*\(uri x.png\)"):
        images.decode_image(data, where="uri x.png")
    # below PIL's own limit, ours applies (before any pixel is decoded)
    with pytest.raises(images.BadInput, match="decompression bomb: 8000x8000 = 64000000 pixels"):
        images.decode_image(bomb_png(8000, 8000))
    with pytest.raises(images.BadInput, match="over the 64-pixel limit"):
        images.decode_image(png_bytes(16, 16), max_pixels=64)
    with pytest.raises(images.BadInput, match="bytes, over the 10-byte limit"):
        images.decode_image(png_bytes(16, 16), max_bytes=10)


def test_lr_factor_uses_the_search_rule():
    assert images.lr_factor(16, 16, 64) == 4
    assert images.lr_factor(32, 32, 64) == 2
    for h, w in ((16, 8), (12, 12), (64, 64), (128, 128)):
        with pytest.raises(images.BadInput):
            images.lr_factor(h, w, 64)


def test_encode_png_roundtrip_from_chw_float():
    import torch

    x = torch.rand(3, 8, 8)
    data = images.encode_png(x)
    back = images.decode_image(data)
    assert np.abs(back.astype(np.float32) / 255 - x.permute(1, 2, 0).numpy()).max() <= 0.5 / 255 + 1e-6


def test_face_finding_without_haar_cascades_says_what_to_install(monkeypatch):
    import cv2

    from pulse_ray.io import align

    align._cascade.cache_clear()
    monkeypatch.delattr(cv2, "CascadeClassifier")  # as in OpenCV 5
    with pytest.raises(RuntimeError, match="install 'opencv-python-headless<5'"):
        align.detect_faces(np.zeros((32, 32), np.uint8), min_size=8)
