"""scripts/fit_gaussian.py: PULSE's gaussian fit computed from a checkpoint's mapping network and
written into the checkpoint."""

from __future__ import annotations

import importlib.util
import io
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from pulse_ray.models import MappingNetwork, SynthesisNetwork, save_checkpoint, stylegan_channels
from pulse_ray.models.checkpoint import load_weights_file, split_checkpoint

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "scripts" / "fit_gaussian.py"


def _load_script():
    spec = importlib.util.spec_from_file_location("fit_gaussian_script", SCRIPT)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


fg = _load_script()


def _nets(seed=0):
    torch.manual_seed(seed)
    mapping = MappingNetwork(num_layers=3)
    synthesis = SynthesisNetwork(stylegan_channels(8, fmap_base=64, fmap_max=16))
    return mapping, synthesis


def _bundle(path, mapping=True, fit=None, half=False):
    m, s = _nets()
    save_checkpoint(str(path), s.state_dict(), m.state_dict() if mapping else None, fit,
                    {"name": "tiny", "resolution": 8}, half=half)
    return m, s


def _read(path):
    return split_checkpoint(load_weights_file(Path(path).read_bytes(), str(path)), str(path))


def _reference_fit(mapping, n, seed):
    """Independent computation: the same z draws (one chunk), torch's own mean / unbiased std."""
    z = torch.randn(n, 512, generator=torch.Generator().manual_seed(seed))
    with torch.no_grad():
        x = torch.nn.functional.leaky_relu(mapping(z), negative_slope=5.0).double()
    return x.mean(0).float(), x.std(0).float()


def test_fit_is_written_into_the_checkpoint(tmp_path):
    ckpt = tmp_path / "gen.pt"
    mapping, synthesis = _bundle(ckpt)
    assert _read(ckpt)["gaussian_fit"] is None
    assert fg.main([str(ckpt), "--samples", "4000", "--seed", "3"]) == 0
    parts = _read(ckpt)
    fit = parts["gaussian_fit"]
    assert fit is not None and fit["mean"].shape == (512,) and fit["std"].shape == (512,)
    mean, std = _reference_fit(mapping, 4000, 3)
    torch.testing.assert_close(fit["mean"], mean, atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(fit["std"], std, atol=1e-4, rtol=1e-4)
    # LeakyReLU(5) spreads the negative side: the fit is not a trivial N(0, 1)
    assert float(fit["std"].mean()) > 0 and not torch.allclose(fit["std"], torch.ones(512), atol=0.05)
    # everything else is kept
    for k, v in synthesis.state_dict().items():
        torch.testing.assert_close(parts["synthesis"][k], v)
    for k, v in mapping.state_dict().items():
        torch.testing.assert_close(parts["mapping"][k], v)
    assert parts["meta"]["name"] == "tiny" and parts["meta"]["gaussian_fit"]["samples"] == 4000
    assert not list(tmp_path.glob("*.tmp*")), "no temporary files left behind"


def test_seed_and_samples_matter_and_fit_is_reproducible(tmp_path):
    a, b, c = tmp_path / "a.pt", tmp_path / "b.pt", tmp_path / "c.pt"
    for p in (a, b, c):
        _bundle(p)
    fg.main([str(a), "--samples", "3000", "--seed", "0"])
    fg.main([str(b), "--samples", "3000", "--seed", "0"])
    fg.main([str(c), "--samples", "3000", "--seed", "1"])
    fa, fb, fc = (_read(p)["gaussian_fit"] for p in (a, b, c))
    assert torch.equal(fa["mean"], fb["mean"]) and torch.equal(fa["std"], fb["std"])
    assert not torch.equal(fa["mean"], fc["mean"])


def test_output_leaves_the_input_untouched_and_fp16_stays_fp16(tmp_path):
    src, dst = tmp_path / "src.pt", tmp_path / "out" / "dst.pt"
    _bundle(src, half=True)
    before = src.read_bytes()
    assert fg.main([str(src), "--samples", "2000", "--output", str(dst)]) == 0
    assert src.read_bytes() == before
    parts = _read(dst)
    assert parts["gaussian_fit"] is not None
    assert all(v.dtype == torch.float16 for v in parts["synthesis"].values() if v.is_floating_point())


def test_existing_fit_is_replaced(tmp_path, capsys):
    ckpt = tmp_path / "gen.pt"
    _bundle(ckpt, fit={"mean": torch.zeros(512), "std": torch.ones(512)})
    assert fg.main([str(ckpt), "--samples", "2000"]) == 0
    assert "replacing" in capsys.readouterr().out
    assert not torch.equal(_read(ckpt)["gaussian_fit"]["mean"], torch.zeros(512))


def test_no_mapping_is_a_clear_error_and_changes_nothing(tmp_path, capsys):
    ckpt = tmp_path / "synthesis_only.pt"
    _bundle(ckpt, mapping=False)
    before = ckpt.read_bytes()
    assert fg.main([str(ckpt), "--samples", "2000"]) == 2
    err = capsys.readouterr().err
    assert "no mapping network" in err and str(ckpt) in err
    assert ckpt.read_bytes() == before


def test_unreadable_and_missing_files_are_clear_errors(tmp_path, capsys):
    bad = tmp_path / "bad.pt"
    bad.write_bytes(b"not a checkpoint")
    assert fg.main([str(bad)]) == 2
    assert "bad.pt" in capsys.readouterr().err
    assert fg.main([str(tmp_path / "missing.pt")]) == 2
    assert "missing.pt" in capsys.readouterr().err


def test_bare_mapping_file_gets_a_bare_fit_file(tmp_path, capsys):
    mapping, _ = _nets()
    mp = tmp_path / "mapping.pt"
    torch.save(mapping.state_dict(), mp)
    assert fg.main([str(mp), "--samples", "2000"]) == 2
    assert "--output" in capsys.readouterr().err
    out = tmp_path / "gaussian_fit.pt"
    assert fg.main([str(mp), "--samples", "2000", "--output", str(out)]) == 0
    raw = torch.load(io.BytesIO(out.read_bytes()), weights_only=True)
    assert set(raw) == {"mean", "std"}
    mean, _ = _reference_fit(mapping, 2000, 0)
    torch.testing.assert_close(raw["mean"], mean, atol=1e-4, rtol=1e-4)


def test_fit_on_s3(tmp_path, s3):
    from pulse_ray.io import storage

    local = tmp_path / "gen.pt"
    _bundle(local)
    uri = s3.uri("gens/gen.pt")
    storage.write_bytes(uri, local.read_bytes())
    assert fg.main([uri, "--samples", "2000"]) == 0
    fetched = tmp_path / "fetched.pt"
    fetched.write_bytes(storage.read_bytes(uri))
    assert _read(fetched)["gaussian_fit"] is not None
    assert s3.keys("gens/") == ["gens/gen.pt"], "written in place, no temporary objects left"


def test_script_runs_from_a_checkout(tmp_path):
    ckpt = tmp_path / "gen.pt"
    _bundle(ckpt)
    r = subprocess.run([sys.executable, str(SCRIPT), str(ckpt), "--samples", "1000"], capture_output=True,
                       text=True, cwd=tmp_path, timeout=300)
    assert r.returncode == 0, r.stderr
    assert "wrote the gaussian fit" in r.stdout
    assert _read(ckpt)["gaussian_fit"] is not None


@pytest.mark.parametrize("samples", ["1", "0"])
def test_too_few_samples(tmp_path, samples):
    ckpt = tmp_path / "gen.pt"
    _bundle(ckpt)
    assert fg.main([str(ckpt), "--samples", samples]) == 2
