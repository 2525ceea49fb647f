"""pulse_ray.downscale against the reference's bicubic downscaler."""

import pytest
import torch

import pulse_ray


@pytest.mark.parametrize("factor", [2, 4, 8, 16, 32])
def test_matches_reference_bicubic(reference, factor):
    fx = reference["bicubic"]
    out = pulse_ray.downscale(fx["input"], factor)
    assert out.shape == fx["outputs"][factor].shape
    assert (out - fx["outputs"][factor]).abs().max().item() < 1e-6


def test_factor_64_and_padding_wider_than_the_image():
    x = torch.rand(2, 3, 64, 64)
    assert pulse_ray.downscale(x, 64).shape == (2, 3, 1, 1)
    assert pulse_ray.downscale(x, 32).shape == (2, 3, 2, 2)
    # a constant image stays constant whatever the padding does
    c = torch.full((1, 3, 64, 64), 0.3)
    assert torch.allclose(pulse_ray.downscale(c, 64), torch.full((1, 3, 1, 1), 0.3), atol=1e-6)


@pytest.mark.parametrize("channels", [1, 3, 4, 7])
def test_any_channel_count(channels):
    x = torch.rand(1, channels, 32, 32)
    out = pulse_ray.downscale(x, 4)
    assert out.shape == (1, channels, 8, 8)
    # channels are independent: downscaling one channel alone gives the same numbers
    assert torch.allclose(out[:, :1], pulse_ray.downscale(x[:, :1], 4))


@pytest.mark.parametrize("factor", [0, 1, 3, 6, 128, 2.0, True])
def test_rejects_factors_that_are_not_powers_of_two_from_2_to_64(factor):
    with pytest.raises(ValueError, match="power of two"):
        pulse_ray.downscale(torch.rand(1, 3, 256, 256), factor)


def test_rejects_sizes_not_divisible_by_the_factor():
    with pytest.raises(ValueError, match="not divisible"):
        pulse_ray.downscale(torch.rand(1, 3, 30, 30), 4)
