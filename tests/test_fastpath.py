"""The search's fast-path knobs: ``precision`` (fp32, TF32 on CUDA, bf16 autocast) and ``compile``."""

import shutil

import pytest
import torch

import pulse_ray
from pulse_ray.models.stylegan import SynthesisNetwork
from pulse_ray.search.pulse import resolve_precision


def tiny_generator(reference):
    """A 32 px random synthesis network (8 layers) with PULSE's FFHQ gaussian fit: fast on a CPU."""
    torch.manual_seed(0)
    return pulse_ray.Generator(SynthesisNetwork([32, 32, 16, 8]), gaussian_fit=reference["ffhq_gaussian_fit"],
                               name="tiny32")


def test_default_precision_per_device():
    assert resolve_precision(None, torch.device("cpu")) == "fp32"
    assert resolve_precision(None, torch.device("cuda")) == "tf32"
    for p in ("fp32", "tf32", "bf16"):
        assert resolve_precision(p, torch.device("cuda")) == p
    assert resolve_precision("fp32", torch.device("cpu")) == "fp32"
    assert resolve_precision("bf16", torch.device("cpu")) == "bf16"


def test_tf32_is_refused_on_cpu(reference):
    g = tiny_generator(reference)
    with pytest.raises(ValueError, match="needs a CUDA device"):
        pulse_ray.upsample(torch.rand(1, 3, 8, 8), g, restarts=1, steps=1, precision="tf32")


def test_bf16_on_cpu_agrees_with_fp32_within_tolerance(reference, monkeypatch):
    """Tolerance, for the first iterate (before any update): downscale MSE within 2% relative, pixels
    within 0.1 (max abs, [0, 1] scale) and 1e-2 on average. Measured on this random 32 px network:
    0.2-0.7%, 0.04-0.07 and about 3e-3. Later iterates separate further (the search is chaotic: after
    3 steps the MSE differs by 3-19%), so the search's quality in bf16 is measured by the benchmark's
    converged share and face rate, not here. The loss and the optimizer stay in fp32."""
    g = tiny_generator(reference)
    lr = pulse_ray.downscale(g.sample(2, seed=5), 4)
    dtypes = []
    synthesize = g.synthesis.forward
    monkeypatch.setattr(g.synthesis, "forward", lambda w, noise: dtypes.append(synthesize(w, noise).dtype)
                        or synthesize(w, noise))
    kw = dict(restarts=1, steps=1, early_stop=False, keep="closest", ids=["a", "b"])
    fp32 = pulse_ray.upsample(lr, g, **kw)
    bf16 = pulse_ray.upsample(lr, g, precision="bf16", **kw)
    for x, y in zip(fp32, bf16):
        assert y.downscale_mse == pytest.approx(x.downscale_mse, rel=2e-2)
        diff = (x.image - y.image).abs()
        assert diff.max().item() < 0.1 and diff.mean().item() < 1e-2 and diff.max().item() > 0
        assert y.image.dtype == torch.float32
    assert dtypes.count(torch.bfloat16) == 1 and dtypes.count(torch.float32) == 1


def test_unknown_precision(reference):
    g = tiny_generator(reference)
    with pytest.raises(ValueError, match="unknown precision"):
        pulse_ray.upsample(torch.rand(1, 3, 8, 8), g, restarts=1, steps=1, precision="fp16")


def test_fp32_is_the_cpu_default_bit_for_bit(reference):
    g = tiny_generator(reference)
    lr = torch.rand(2, 3, 8, 8, generator=torch.Generator().manual_seed(1))
    a = pulse_ray.upsample(lr, g, restarts=2, steps=3, early_stop=False)
    b = pulse_ray.upsample(lr, g, restarts=2, steps=3, early_stop=False, precision="fp32")
    for x, y in zip(a, b):
        assert torch.equal(x.image, y.image) and x.downscale_mse == y.downscale_mse


@pytest.mark.slow
@pytest.mark.skipif(shutil.which("cc") is None and shutil.which("gcc") is None,
                    reason="torch.compile's CPU backend needs a C compiler")
def test_compile_agrees_with_eager_within_tolerance(reference):
    """Tolerance: returned images within 1e-3 (max abs, [0, 1] scale), downscale MSE within 1e-3 relative,
    after 4 steps. (Measured here: about 6e-5 and 3e-6.) Compiling takes 1-4 minutes on this 2-core machine."""
    g = tiny_generator(reference)
    hr = g.sample(2, seed=3)
    lr = pulse_ray.downscale(hr, 4)
    eager = pulse_ray.upsample(lr, g, restarts=2, steps=4, early_stop=False, ids=["a", "b"])
    compiled = pulse_ray.upsample(lr, g, restarts=2, steps=4, early_stop=False, ids=["a", "b"], compile=True)
    for x, y in zip(eager, compiled):
        assert x.restart == y.restart and x.seed == y.seed
        assert (x.image - y.image).abs().max().item() < 1e-3
        assert y.downscale_mse == pytest.approx(x.downscale_mse, rel=1e-3)
    # compiled once per generator object, then reused
    first = g.__dict__["_compiled_synthesis"][1]
    pulse_ray.upsample(lr[:1], g, restarts=1, steps=1, compile=True)
    assert g.__dict__["_compiled_synthesis"][1] is first


def test_tf32_flags_are_set_for_the_search_and_restored():
    """Only flags here (no kernels run), so this works on a CPU build of torch too."""
    from pulse_ray.search.pulse import _cuda_fp32_mode

    mm = torch.backends.cuda.matmul
    if not hasattr(mm, "fp32_precision"):
        pytest.skip("torch < 2.9: legacy allow_tf32 flags")
    before = (mm.fp32_precision, torch.backends.cudnn.conv.fp32_precision)
    with _cuda_fp32_mode("fp32", torch.device("cuda")):
        assert mm.fp32_precision == torch.backends.cudnn.conv.fp32_precision == "ieee"
    for precision in ("tf32", "bf16"):
        with _cuda_fp32_mode(precision, torch.device("cuda")):
            assert mm.fp32_precision == torch.backends.cudnn.conv.fp32_precision == "tf32"
    assert (mm.fp32_precision, torch.backends.cudnn.conv.fp32_precision) == before
    with _cuda_fp32_mode("fp32", torch.device("cpu")):  # nothing to do on a CPU
        assert (mm.fp32_precision, torch.backends.cudnn.conv.fp32_precision) == before
