"""The generator networks against numbers recorded from the public PULSE reference code."""

import torch

from pulse_ray.models.checkpoint import load_weights_file
from pulse_ray.models.stylegan import (MappingNetwork, SynthesisNetwork, mapping_layers_from_state_dict,
                                       stylegan_channels, synthesis_channels_from_state_dict)

from .helpers import FIXTURES, small_synthesis


def test_small_synthesis_reproduces_reference_output(reference):
    fx = reference["small_synthesis"]
    net = small_synthesis(reference)
    with torch.no_grad():
        out = net(fx["dlatents"], fx["noise"])
    rel = ((out - fx["output"]).abs().max() / fx["output"].abs().max()).item()
    assert out.shape == fx["output"].shape
    assert rel < 1e-5


def test_small_synthesis_config_read_from_state_dict(reference):
    fx = reference["small_synthesis"]
    cfg = fx["config"]
    channels = synthesis_channels_from_state_dict(fx["state_dict"])
    assert channels == stylegan_channels(cfg["resolution"], cfg["fmap_base"], cfg["fmap_max"])
    assert SynthesisNetwork(channels).resolution == 128


def test_mapping_reproduces_reference_output(reference):
    fx = reference["mapping"]
    net = MappingNetwork(mapping_layers_from_state_dict(fx["state_dict"]))
    net.load_state_dict(fx["state_dict"])
    with torch.no_grad():
        w = net(fx["z"])
    assert ((w - fx["w"]).abs().max() / fx["w"].abs().max()).item() < 1e-5


def test_ffhq1024_layout_names_and_shapes_match_exactly(reference):
    net = SynthesisNetwork(stylegan_channels(1024))
    ours = {k: tuple(v.shape) for k, v in net.state_dict().items()}
    theirs = {k: tuple(v) for k, v in reference["ffhq1024_synthesis_shapes"].items()}
    assert ours == theirs
    assert net.num_layers == 18
    mapping = {k: tuple(v.shape) for k, v in MappingNetwork().state_dict().items()}
    assert mapping == {k: tuple(v) for k, v in reference["ffhq1024_mapping_shapes"].items()}


def test_ffhq1024_channels_are_recovered_from_a_shapes_only_state_dict(reference):
    fake = {k: torch.empty(v) for k, v in reference["ffhq1024_synthesis_shapes"].items()}
    assert synthesis_channels_from_state_dict(fake) == stylegan_channels(1024)


def test_legacy_cuda_gaussian_fit_loads_on_cpu(reference):
    data = (FIXTURES / "pulse_gaussian_fit.pt").read_bytes()
    fit = load_weights_file(data, "pulse_gaussian_fit.pt")
    assert fit["mean"].device.type == "cpu"
    assert torch.equal(fit["mean"], reference["ffhq_gaussian_fit"]["mean"])
    assert torch.equal(fit["std"], reference["ffhq_gaussian_fit"]["std"])


def test_generator_weights_are_frozen(reference):
    import pulse_ray

    g = pulse_ray.Generator(small_synthesis(reference), gaussian_fit=reference["ffhq_gaussian_fit"])
    assert not any(p.requires_grad for p in g.synthesis.parameters())
    assert g.resolution == 128 and g.num_layers == 12
