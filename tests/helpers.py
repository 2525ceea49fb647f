"""Shared test helpers (plain functions; fixtures live in conftest.py)."""

from pathlib import Path

import torch

REPO = Path(__file__).resolve().parent.parent
SHARED = REPO.parent / "shared"
FIXTURES = SHARED / "fixtures"


def load_reference() -> dict:
    return torch.load(FIXTURES / "pulse_reference.pt", weights_only=True)


def small_synthesis(reference):
    """The fixture's small random StyleGAN synthesis network (128 px, 12 layers), loaded."""
    from pulse_ray.models.stylegan import SynthesisNetwork, synthesis_channels_from_state_dict

    sd = reference["small_synthesis"]["state_dict"]
    net = SynthesisNetwork(synthesis_channels_from_state_dict(sd))
    net.load_state_dict(sd)
    return net.eval()


def small_generator(reference):
    import pulse_ray

    return pulse_ray.Generator(small_synthesis(reference), gaussian_fit=reference["ffhq_gaussian_fit"], name="small")
