"""load_generator: every kind of file, and every kind of bad file, with clear errors."""

import os
import pickle

import pytest
import torch

import pulse_ray
from pulse_ray.models import CheckpointError, compute_gaussian_fit, save_checkpoint

from .helpers import FIXTURES


def _bundle(reference, path, fit=True, mapping=True):
    small = reference["small_synthesis"]
    save_checkpoint(str(path), small["state_dict"], reference["mapping"]["state_dict"] if mapping else None,
                    reference["ffhq_gaussian_fit"] if fit else None, {"name": "tiny", "resolution": 128})
    return path


def test_bundle_roundtrip_by_path_and_file_uri(reference, tmp_path):
    path = _bundle(reference, tmp_path / "g.pt")
    for source in (str(path), f"file://{path}"):
        g = pulse_ray.load_generator(source, device="cpu")
        assert (g.name, g.resolution, g.num_layers) == ("tiny", 128, 12)
        fx = reference["small_synthesis"]
        with torch.no_grad():
            out = g.synthesize(fx["dlatents"], fx["noise"])
        assert ((out - fx["output"]).abs().max() / fx["output"].abs().max()).item() < 1e-5
        assert torch.equal(g.gaussian_fit["mean"], reference["ffhq_gaussian_fit"]["mean"])
        imgs = g.sample(3, seed=0)
        assert imgs.shape == (3, 3, 128, 128) and imgs.min() >= 0 and imgs.max() <= 1
        assert torch.equal(imgs, g.sample(3, seed=0))


def test_bare_synthesis_needs_a_fit_and_takes_pulse_legacy_file(reference, tmp_path):
    path = tmp_path / "synthesis.pt"
    torch.save(reference["small_synthesis"]["state_dict"], path)
    g = pulse_ray.load_generator(path, device="cpu")
    assert g.gaussian_fit is None
    with pytest.raises(ValueError, match=r"load_generator\(source, gaussian_fit="):
        g.sample(1)
    g = pulse_ray.load_generator(path, gaussian_fit=FIXTURES / "pulse_gaussian_fit.pt", device="cpu")
    assert torch.equal(g.gaussian_fit["std"], reference["ffhq_gaussian_fit"]["std"])
    g = pulse_ray.load_generator(path, gaussian_fit=reference["ffhq_gaussian_fit"], device="cpu")
    assert g.sample(1).shape == (1, 3, 128, 128)


def test_fit_is_computed_from_the_mapping_and_cached(reference, tmp_path, monkeypatch):
    monkeypatch.setenv("PULSE_RAY_CACHE", str(tmp_path / "cache"))
    path = _bundle(reference, tmp_path / "g.pt", fit=False)
    g = pulse_ray.load_generator(path, device="cpu", fit_samples=20_000)
    cached = list((tmp_path / "cache").glob("gaussian_fit-*.pt"))
    assert len(cached) == 1
    # the fit is PULSE's: statistics of LeakyReLU(5) of the mapping output
    from pulse_ray.models.stylegan import MappingNetwork

    m = MappingNetwork()
    m.load_state_dict(reference["mapping"]["state_dict"])
    with torch.no_grad():
        x = torch.nn.functional.leaky_relu(m(torch.randn(20_000, 512)), 5.0)
    assert torch.allclose(g.gaussian_fit["mean"], x.mean(0), atol=0.05 * x.std(0).mean().item())
    assert torch.allclose(g.gaussian_fit["std"], x.std(0), rtol=0.05)
    # second load reads the cache (identical numbers)
    again = pulse_ray.load_generator(path, device="cpu", fit_samples=20_000)
    assert torch.equal(again.gaussian_fit["mean"], g.gaussian_fit["mean"])


def test_compute_gaussian_fit_is_chunk_independent(reference):
    from pulse_ray.models.stylegan import MappingNetwork

    m = MappingNetwork()
    m.load_state_dict(reference["mapping"]["state_dict"])
    a = compute_gaussian_fit(m, num_samples=3000, chunk=3000)
    b = compute_gaussian_fit(m, num_samples=3000, chunk=700)
    assert torch.allclose(a["mean"], b["mean"], atol=1e-5)


class _Exploit:
    def __reduce__(self):
        return (os.system, ("touch /tmp/pulse_ray_pwned",))


def test_file_that_would_run_code_is_refused(tmp_path):
    marker = "/tmp/pulse_ray_pwned"
    if os.path.exists(marker):
        os.remove(marker)
    path = tmp_path / "evil.pt"
    torch.save({"synthesis": _Exploit()}, path)
    with pytest.raises(CheckpointError, match="evil.pt.*run code"):
        pulse_ray.load_generator(path)
    assert not os.path.exists(marker)
    raw = tmp_path / "raw.pkl"
    raw.write_bytes(pickle.dumps(_Exploit()))
    with pytest.raises(CheckpointError, match="raw.pkl"):
        pulse_ray.load_generator(raw)
    assert not os.path.exists(marker)


def test_corrupt_truncated_and_wrong_files(reference, tmp_path):
    junk = tmp_path / "junk.pt"
    junk.write_bytes(b"this is not a checkpoint at all")
    with pytest.raises(CheckpointError, match="junk.pt"):
        pulse_ray.load_generator(junk)
    good = _bundle(reference, tmp_path / "good.pt")
    cut = tmp_path / "cut.pt"
    cut.write_bytes(good.read_bytes()[:2000])
    with pytest.raises(CheckpointError, match="cut.pt.*(corrupt|truncated|readable)"):
        pulse_ray.load_generator(cut)
    other = tmp_path / "other.pt"
    torch.save({"foo": torch.zeros(3)}, other)
    with pytest.raises(CheckpointError, match="other.pt: not a StyleGAN generator checkpoint"):
        pulse_ray.load_generator(other)
    broken = dict(reference["small_synthesis"]["state_dict"])
    broken["blocks.8x8.conv1.weight"] = torch.zeros(5, 5, 3, 3)
    bad = tmp_path / "bad.pt"
    torch.save(broken, bad)
    with pytest.raises(CheckpointError, match="bad.pt: synthesis weights do not fit"):
        pulse_ray.load_generator(bad)
    only_map = tmp_path / "mapping.pt"
    torch.save(reference["mapping"]["state_dict"], only_map)
    with pytest.raises(CheckpointError, match="holds no synthesis network"):
        pulse_ray.load_generator(only_map)


def test_missing_file_and_unknown_name():
    with pytest.raises(CheckpointError, match="no such generator file"):
        pulse_ray.load_generator("/nonexistent/dir/g.pt")
    with pytest.raises(CheckpointError, match="unknown generator 'nosuchname'.*bundled"):
        pulse_ray.load_generator("nosuchname")


def test_load_from_s3_endpoint_on_loopback(reference, tmp_path, s3):
    path = _bundle(reference, tmp_path / "g.pt")
    s3.client.put_object(Bucket=s3.bucket, Key="models/g.pt", Body=path.read_bytes())
    g = pulse_ray.load_generator(s3.uri("models/g.pt"), device="cpu")
    assert (g.name, g.resolution) == ("tiny", 128)
    with pytest.raises(CheckpointError, match="could not read from S3"):
        pulse_ray.load_generator(s3.uri("models/missing.pt"))
