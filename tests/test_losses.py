"""Loss terms against the reference's values, and per-sample behaviour."""

import pytest
import torch

from pulse_ray.search.losses import loss_per_sample, parse_loss


def test_total_and_terms_match_reference(reference):
    fx = reference["loss"]
    total, terms = loss_per_sample(parse_loss(fx["loss_str"]), fx["latent"], fx["gen_hr_lr"], fx["ref_lr"], fx["eps"])
    # the reference sums over the batch; ours are per sample
    assert total.shape == (2,)
    assert total.sum().item() == pytest.approx(fx["total"], rel=1e-5)
    assert terms["L2"].sum().item() == pytest.approx(fx["L2"], rel=1e-5)
    assert terms["GEOCROSS"].sum().item() == pytest.approx(fx["GEOCROSS"], rel=1e-5)


def test_each_sample_is_clamped_at_eps_on_its_own():
    ref = torch.zeros(2, 3, 4, 4)
    gen = torch.zeros(2, 3, 4, 4)
    gen[1] += 0.5  # sample 1 is far off, sample 0 is exact
    latent = torch.randn(2, 1, 512)
    total, terms = loss_per_sample(parse_loss("100*L2"), latent, gen, ref, eps=2e-3)
    assert terms["L2"][0].item() == pytest.approx(2e-3)
    assert terms["L2"][1].item() == pytest.approx(0.25)
    assert total.tolist() == pytest.approx([0.2, 25.0])


def test_l1_and_tiled_latent():
    ref = torch.zeros(1, 3, 4, 4)
    gen = torch.full((1, 3, 4, 4), 0.1)
    total, terms = loss_per_sample(parse_loss("L1+0.05*GEOCROSS"), torch.randn(1, 1, 512), gen, ref, eps=1e-3)
    assert terms["L1"].item() == pytest.approx(1.0)
    assert terms["GEOCROSS"].item() == 0.0


@pytest.mark.parametrize("bad, match", [("100*L3", "unknown term"), ("x*L2", "not a number"),
                                        ("0.05*GEOCROSS", "no L2 or L1")])
def test_bad_loss_strings(bad, match):
    with pytest.raises(ValueError, match=match):
        parse_loss(bad)
