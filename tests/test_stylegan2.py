"""StyleGAN2 generators: exactness against both public codes, layouts, safe loading, the search."""

from __future__ import annotations

import argparse
import collections
import hashlib
import io
import math
import os
import pickle
import sys
import types

import pytest
import torch
import torch.nn.functional as F
from typer.testing import CliRunner

import pulse_ray
from pulse_ray.cli import app
from pulse_ray.models.checkpoint import CheckpointError
from pulse_ray.models.generator import StyleGAN2Generator
from pulse_ray.models.nvidia_pickle import load_nvidia_pickle
from pulse_ray.models.stylegan2 import (StyleGAN2Config, StyleGAN2Networks, SynthesisLayer, ToRGB, build_networks,
                                        config_from_state_dict, from_rosinality, rosinality_key_map)

from .helpers import FIXTURES

SMALL_PKL = FIXTURES / "stylegan2_small.pkl"
FIT_SAMPLES = 20_000


@pytest.fixture(scope="module")
def ref():
    return torch.load(FIXTURES / "stylegan2_reference.pt", weights_only=True)


@pytest.fixture(autouse=True)
def _cache(tmp_path, monkeypatch):
    monkeypatch.setenv("PULSE_RAY_CACHE", str(tmp_path / "cache"))


@pytest.fixture(scope="module")
def small(tmp_path_factory):
    """The fixture's NVIDIA 64 px network, loaded from the snapshot pickle."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("PULSE_RAY_CACHE", str(tmp_path_factory.mktemp("cache")))
        return pulse_ray.load_generator(SMALL_PKL, device="cpu", fit_samples=FIT_SAMPLES)


def rel_err(a, b):
    return ((a - b).abs().max() / b.abs().max()).item()


def nvidia_nets(ref):
    n = ref["nvidia_small"]
    cfg = config_from_state_dict(n["state_dict"], conv_clamp=n["init_kwargs"]["synthesis_kwargs"]["conv_clamp"])
    return build_networks(cfg, n["state_dict"], "fixture").eval()


def rosinality_nets(ref):
    r = ref["rosinality_small"]
    ck = torch.load(io.BytesIO(r["checkpoint_bytes"]), weights_only=True)
    cfg, sd = from_rosinality(ck["g_ema"], ck["latent_avg"])
    return build_networks(cfg, sd, "fixture").eval()


# ----------------------------------------------------------------------------- exactness


def test_nvidia_outputs_match_the_reference(ref):
    n, nets = ref["nvidia_small"], nvidia_nets(ref)
    with torch.no_grad():
        w = nets.mapping(n["z"])
        assert rel_err(w[:, None].expand(-1, 10, -1), n["ws"]) < 1e-4
        assert rel_err(nets.mapping.truncate(w, 0.7)[:, None].expand(-1, 10, -1), n["ws_trunc_0.7"]) < 1e-4
        assert rel_err(nets.synthesis(n["ws_mixed"], noise_mode="const"), n["img_const"]) < 1e-4
        assert rel_err(nets.synthesis(n["ws_mixed"], noise_mode="none"), n["img_none"]) < 1e-4
        assert rel_err(nets(n["z"], noise_mode="const"), n["img_from_z"]) < 1e-4
        # the noise matters: const and none differ by far more than the tolerance
        assert rel_err(n["img_const"], n["img_none"]) > 1e-2


def test_nvidia_gradient_wrt_w_plus_matches_the_reference(ref):
    n, nets = ref["nvidia_small"], nvidia_nets(ref)
    ws = n["ws_mixed"].clone().requires_grad_(True)
    (nets.synthesis(ws, noise_mode="const") * n["grad_probe"]).sum().backward()
    assert rel_err(ws.grad, n["grad_ws_mixed"]) < 1e-3


def test_rosinality_outputs_match_the_reference(ref):
    r, nets = ref["rosinality_small"], rosinality_nets(ref)
    assert nets.cfg.channels == {int(k): v for k, v in r["channels"].items() if int(k) <= 64}
    assert nets.synthesis.num_layers == r["n_latent"]
    with torch.no_grad():
        assert rel_err(nets.mapping(r["z"]), r["w"]) < 1e-4
        assert rel_err(nets.synthesis(r["w_plus"], noise_mode="const"), r["img_w_plus"]) < 1e-4
        assert rel_err(nets(r["z"], noise_mode="const"), r["img_from_z"]) < 1e-4
        assert rel_err(nets(r["z"], 0.7, noise_mode="const"), r["img_trunc_0.7"]) < 1e-4


@pytest.mark.parametrize("name", ["ffhq1024", "paper512", "paper256"])
def test_nvidia_layouts_build_with_identical_names_and_shapes(ref, name):
    lay = ref["nvidia_layouts"][name]
    kw = lay["init_kwargs"]
    syn = kw["synthesis_kwargs"]
    cfg = StyleGAN2Config.nvidia(kw["img_resolution"], syn["channel_base"], syn["channel_max"],
                                 mapping_layers=kw["mapping_kwargs"]["num_layers"], conv_clamp=syn["conv_clamp"])
    with torch.device("meta"):
        nets = StyleGAN2Networks(cfg)
    ours = {k: tuple(v.shape) for k, v in nets.state_dict().items()}
    assert ours == {k: tuple(v) for k, v in lay["shapes"].items()}
    assert nets.synthesis.num_layers == lay["num_ws"]
    # and the config read back from names and shapes alone is the same
    meta_sd = {k: torch.empty(v, device="meta") for k, v in lay["shapes"].items()}
    assert config_from_state_dict(meta_sd, conv_clamp=syn["conv_clamp"]) == cfg


@pytest.mark.parametrize("name", ["ffhq1024_config_f", "ffhq256"])
def test_rosinality_layouts_map_onto_the_same_modules(ref, name):
    lay = ref["rosinality_layouts"][name]
    a = lay["args"]
    cfg = StyleGAN2Config.rosinality(a["size"], a["channel_multiplier"], a["n_mlp"], a["style_dim"])
    with torch.device("meta"):
        nets = StyleGAN2Networks(cfg)
    key_map = rosinality_key_map(cfg)
    assert set(key_map) == set(nets.state_dict())
    theirs = {t[0]: tuple(t[1]) for t in key_map.values() if t is not None}
    assert theirs == {k: tuple(v) for k, v in lay["shapes"].items()}
    # every rosinality tensor reshapes onto ours element for element
    own = nets.state_dict()
    for ours_name, t in key_map.items():
        if t is not None:
            assert math.prod(t[1]) == own[ours_name].numel(), ours_name


# ----------------------------------------------------------------------------- batched modulation


def _grouped_reference(x, weight, styles, demodulate, up, f):
    """NVIDIA's fused form: per-row weights, one grouped convolution (the form we replace)."""
    b = x.shape[0]
    w = weight[None] * styles[:, None, :, None, None]
    if demodulate:
        w = w * (w.square().sum(dim=[2, 3, 4]) + 1e-8).rsqrt()[:, :, None, None, None]
    xg = x.reshape(1, -1, *x.shape[2:])
    if not up:
        out = F.conv2d(xg, w.reshape(-1, *w.shape[2:]), padding=w.shape[-1] // 2, groups=b)
        return out.reshape(b, -1, *out.shape[2:])
    wt = w.transpose(1, 2).reshape(-1, w.shape[1], *w.shape[3:])
    out = F.conv_transpose2d(xg, wt, stride=2, groups=b)
    k = (f * 4).flip([0, 1])[None, None].expand(out.shape[1], 1, -1, -1)
    out = F.conv2d(F.pad(out, (1, 1, 1, 1)), k, groups=out.shape[1])
    return out.reshape(b, -1, *out.shape[2:])


@pytest.mark.parametrize("up", [False, True])
def test_activation_modulation_equals_grouped_weights(up):
    torch.manual_seed(0)
    layer = SynthesisLayer(8, 6, 512, 16, up, conv_clamp=256)
    with torch.no_grad():
        layer.bias.normal_()
        layer.noise_strength.fill_(0.3)
    x = torch.randn(3, 8, 8 if up else 16, 8 if up else 16)
    w = torch.randn(3, 512)
    noise = torch.randn(3, 1, 16, 16)
    with torch.no_grad():
        got = layer(x, w, noise)
        styles = layer.affine(w)
        conv = _grouped_reference(x, layer.weight, styles, True, up, layer.resample_filter)
        want = (F.leaky_relu(conv + 0.3 * noise + layer.bias[None, :, None, None], 0.2) * math.sqrt(2)).clamp(-256, 256)
    assert got.shape == (3, 6, 16, 16)
    assert torch.allclose(got, want, rtol=1e-5, atol=1e-5)
    rgb = ToRGB(8, 3, 512, conv_clamp=None)
    with torch.no_grad():
        got = rgb(x, w)
        want = _grouped_reference(x, rgb.weight, rgb.affine(w) / math.sqrt(8), False, False, None)
    assert torch.allclose(got, want + rgb.bias[None, :, None, None], rtol=1e-5, atol=1e-5)


# ----------------------------------------------------------------------------- files


def test_snapshot_pickle_loads_g_ema_bit_for_bit(ref, small):
    data = SMALL_PKL.read_bytes()
    cfg, sd, kwargs = load_nvidia_pickle(data, "small.pkl")
    want = ref["nvidia_small"]["state_dict"]
    assert set(sd) == set(want) and all(torch.equal(sd[k], want[k]) for k in want)
    assert kwargs == ref["nvidia_small"]["init_kwargs"] and cfg.conv_clamp == 256
    assert isinstance(small, StyleGAN2Generator)
    assert (small.resolution, small.num_layers) == (64, 10)
    assert small.synthesis.noise_shapes(2) == [(2, 1, r, r) for r in (4, 8, 8, 16, 16, 32, 32, 64, 64)]
    assert small.name == f"stylegan2_small.pkl sha256:{hashlib.sha256(data).hexdigest()[:12]}"
    with torch.no_grad():
        img = small.synthesis(ref["nvidia_small"]["ws_mixed"], noise_mode="const")
        assert rel_err(img, ref["nvidia_small"]["img_const"]) < 1e-4
        assert rel_err(small.generate(ref["nvidia_small"]["z"]), ref["nvidia_small"]["img_from_z"]) < 1e-4


def test_rosinality_checkpoint_loads_with_args_and_refuses_other_globals(ref, tmp_path):
    r = ref["rosinality_small"]
    path = tmp_path / "stylegan2-small.pt"
    path.write_bytes(r["checkpoint_bytes"])
    g = pulse_ray.load_generator(path, device="cpu", fit_samples=FIT_SAMPLES)
    with torch.no_grad():
        assert rel_err(g.synthesis(r["w_plus"], noise_mode="const"), r["img_w_plus"]) < 1e-4
    ck = torch.load(io.BytesIO(r["checkpoint_bytes"]), weights_only=True)
    with_args = tmp_path / "with-args.pt"
    torch.save(dict(ck, args=argparse.Namespace(size=64, n_mlp=2)), with_args)
    g2 = pulse_ray.load_generator(with_args, device="cpu", fit_samples=FIT_SAMPLES)
    assert g2.resolution == 64 and torch.equal(g2.gaussian_fit["mean"], g.gaussian_fit["mean"])
    other = tmp_path / "other-global.pt"
    torch.save(dict(ck, args=types.SimpleNamespace(size=64)), other)
    with pytest.raises(CheckpointError, match="other-global.pt: refused to load"):
        pulse_ray.load_generator(other, device="cpu")


def test_gaussian_fit_is_taken_before_the_last_activation_and_cached(small, tmp_path):
    g = pulse_ray.load_generator(SMALL_PKL, device="cpu", fit_samples=FIT_SAMPLES)
    assert torch.equal(g.gaussian_fit["mean"], small.gaussian_fit["mean"])
    assert len(list((tmp_path / "cache").glob("gaussian_fit-*.pt"))) == 1
    z = torch.randn(FIT_SAMPLES, 512, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        pre = F.leaky_relu(g.mapping(z) / math.sqrt(2), 5.0).double()
    assert torch.allclose(g.gaussian_fit["mean"].double(), pre.mean(0), atol=1e-4)
    assert torch.allclose(g.gaussian_fit["std"].double(), pre.std(0), rtol=1e-4)
    # the prior maps back onto the mapping network's outputs exactly
    with torch.no_grad():
        w = g.mapping(z[:5])
        fit = g.gaussian_fit
        back = g.latents_from_prior((F.leaky_relu(w / math.sqrt(2), 5.0) - fit["mean"]) / fit["std"])
    assert torch.allclose(back, w, rtol=1e-4, atol=1e-4)


def test_convert_writes_a_weights_only_bundle_that_loads_the_same(small, tmp_path):
    out = tmp_path / "small-bundle.pt"
    res = CliRunner().invoke(app, ["convert", str(SMALL_PKL), str(out), "--fit-samples", str(FIT_SAMPLES)])
    assert res.exit_code == 0, res.output
    assert "wrote" in res.output and "64 px" in res.output and "stylegan2_small.pkl sha256:" in res.output
    raw = torch.load(out, weights_only=True)
    assert raw["meta"]["family"] == "stylegan2" and set(raw["gaussian_fit"]) == {"mean", "std"}
    g = pulse_ray.load_generator(out, device="cpu")
    assert g.name.startswith("small-bundle.pt sha256:")
    assert torch.equal(g.gaussian_fit["std"], small.gaussian_fit["std"])
    ws = small.latents_from_prior(torch.randn(2, 10, 512, generator=torch.Generator().manual_seed(3)))
    with torch.no_grad():
        assert torch.equal(g.synthesis(ws, noise_mode="const"), small.synthesis(ws, noise_mode="const"))
    half = tmp_path / "half.pt"
    assert CliRunner().invoke(app, ["convert", str(SMALL_PKL), str(half), "--half",
                                    "--fit-samples", str(FIT_SAMPLES)]).exit_code == 0
    assert half.stat().st_size < 0.6 * out.stat().st_size
    gh = pulse_ray.load_generator(half, device="cpu")
    with torch.no_grad():
        assert rel_err(gh.synthesis(ws, noise_mode="const"), small.synthesis(ws, noise_mode="const")) < 1e-2
    bad = CliRunner().invoke(app, ["convert", str(tmp_path / "nope.pkl"), str(tmp_path / "x.pt")])
    assert bad.exit_code == 2 and "nope.pkl" in bad.output


def test_pickle_from_s3(s3, small):
    s3.client.put_object(Bucket=s3.bucket, Key="models/ffhq.pkl", Body=SMALL_PKL.read_bytes())
    g = pulse_ray.load_generator(s3.uri("models/ffhq.pkl"), device="cpu", fit_samples=FIT_SAMPLES)
    assert g.name == "ffhq.pkl " + small.name.split(" ")[1]


# ----------------------------------------------------------------------------- hostile and broken files

MARKER = "/tmp/pulse_ray_stylegan2_pwned"


class _System:
    def __reduce__(self):
        return (os.system, (f"touch {MARKER}",))


class _Eval:
    def __reduce__(self):
        return (eval, (f"open({MARKER!r}, 'w').close()",))


class _Counter:
    def __reduce__(self):
        return (collections.Counter, ("abc",))


@pytest.fixture
def fake_nvidia_modules(monkeypatch):
    """Stand-ins for NVIDIA's ``torch_utils.persistence`` and ``dnnlib`` so tests can write such pickles."""
    persistence = types.ModuleType("torch_utils.persistence")

    def _reconstruct_persistent_obj(meta):
        raise AssertionError("only used for pickling")

    _reconstruct_persistent_obj.__module__ = "torch_utils.persistence"
    _reconstruct_persistent_obj.__qualname__ = "_reconstruct_persistent_obj"
    persistence._reconstruct_persistent_obj = _reconstruct_persistent_obj
    monkeypatch.setitem(sys.modules, "torch_utils", types.ModuleType("torch_utils"))
    monkeypatch.setitem(sys.modules, "torch_utils.persistence", persistence)

    class Persisted:
        def __init__(self, class_name, state, module_src="pass\n"):
            self.meta = dict(type="class", version=6, module_src=module_src, class_name=class_name, state=state)

        def __reduce__(self):
            return (_reconstruct_persistent_obj, (self.meta,))

    return Persisted


def _module_state(params=None, buffers=None, modules=None, **attrs):
    return dict(training=False, _parameters=params or {}, _buffers=buffers or {}, _modules=modules or {},
                _non_persistent_buffers_set=set(), **attrs)


@pytest.mark.parametrize("payload,global_name", [(_System(), "system"), (_Eval(), "builtins.eval"),
                                                 (_Counter(), "collections.Counter")])
def test_hostile_pickles_are_refused_with_nothing_run(tmp_path, payload, global_name):
    if os.path.exists(MARKER):
        os.remove(MARKER)
    path = tmp_path / "evil.pkl"
    path.write_bytes(pickle.dumps({"G_ema": payload, "G": None}))
    with pytest.raises(CheckpointError, match=f"evil.pkl: refused to load.*{global_name}"):
        pulse_ray.load_generator(path, device="cpu")
    assert not os.path.exists(MARKER)


def test_tensorflow_pickle_is_refused_with_a_pointer(tmp_path):
    # protocol 2 pickle of a call to dnnlib.tflib.network.Network (what the TensorFlow release holds)
    data = b"\x80\x02cdnnlib.tflib.network\nNetwork\nq\x00)\x81q\x01."
    path = tmp_path / "stylegan2-ffhq-config-f.pkl"
    path.write_bytes(data)
    with pytest.raises(CheckpointError, match="config-f.pkl: refused to load: a TensorFlow StyleGAN pickle"):
        pulse_ray.load_generator(path, device="cpu")


def test_module_source_in_a_pickle_is_never_run(tmp_path, fake_nvidia_modules):
    if os.path.exists(MARKER):
        os.remove(MARKER)
    evil_src = f"open({MARKER!r}, 'w').close()\nclass Generator: pass\n"
    net = fake_nvidia_modules("Generator", _module_state(), module_src=evil_src)
    path = tmp_path / "src.pkl"
    path.write_bytes(pickle.dumps({"G_ema": net}))
    with pytest.raises(CheckpointError, match="src.pkl: not a StyleGAN2 generator"):
        pulse_ray.load_generator(path, device="cpu")
    assert not os.path.exists(MARKER)


def test_stylegan3_and_conditional_generators_are_refused(tmp_path, fake_nvidia_modules):
    P = fake_nvidia_modules
    sg3_input = P("SynthesisInput", _module_state(buffers={"freqs": torch.zeros(4, 2)}))
    sg3 = P("Generator", _module_state(modules={"synthesis": P("SynthesisNetwork", _module_state(
        modules={"input": sg3_input}))}, _init_kwargs={"c_dim": 0}))
    path = tmp_path / "stylegan3-t.pkl"
    path.write_bytes(pickle.dumps({"G_ema": sg3}))
    with pytest.raises(CheckpointError, match="stylegan3-t.pkl: a StyleGAN3 .*StyleGAN2 networks only"):
        pulse_ray.load_generator(path, device="cpu")
    cond = P("Generator", _module_state(_init_kwargs={"c_dim": 10, "img_resolution": 64}))
    path = tmp_path / "cond.pkl"
    path.write_bytes(pickle.dumps({"G_ema": cond}))
    with pytest.raises(CheckpointError, match="cond.pkl: a conditional generator \\(c_dim=10\\)"):
        pulse_ray.load_generator(path, device="cpu")


def test_truncated_and_corrupt_files_give_a_clear_error(ref, tmp_path):
    data = SMALL_PKL.read_bytes()
    cut = tmp_path / "cut.pkl"
    cut.write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match="cut.pkl: not a readable pickle \\(corrupt or truncated\\?\\)"):
        pulse_ray.load_generator(cut, device="cpu")
    for n in (3, 200, len(data) - 1):
        cut.write_bytes(data[:n])
        with pytest.raises(CheckpointError, match="cut.pkl: not a readable pickle"):
            pulse_ray.load_generator(cut, device="cpu")
    junk = tmp_path / "junk.pkl"
    junk.write_bytes(b"GIF89a not a generator")
    with pytest.raises(CheckpointError, match="junk.pkl: not a generator file"):
        pulse_ray.load_generator(junk, device="cpu")
    rcut = tmp_path / "rosinality-cut.pt"
    rcut.write_bytes(ref["rosinality_small"]["checkpoint_bytes"][:5000])
    with pytest.raises(CheckpointError, match="rosinality-cut.pt: not a readable torch weights file"):
        pulse_ray.load_generator(rcut, device="cpu")
    no_g = tmp_path / "nog.pkl"
    no_g.write_bytes(pickle.dumps({"D": 1}))
    with pytest.raises(CheckpointError, match="nog.pkl: not a StyleGAN2 network pickle \\(no 'G_ema'"):
        pulse_ray.load_generator(no_g, device="cpu")


# ----------------------------------------------------------------------------- the search


def planted(g, n, factor, seed=1):
    """LR images that are exact downscales of generator outputs for known W+ points."""
    torch.manual_seed(seed)
    w = g.latents_from_prior(torch.randn(n, g.num_layers, 512))
    with torch.no_grad():
        hr = (g.synthesize(w, [torch.zeros(s) for s in g.synthesis.noise_shapes(n)]) + 1) / 2
    return pulse_ray.downscale(hr, factor)


def test_planted_w_plus_solution_is_found(small):
    lr = planted(small, 1, factor=4)
    res = pulse_ray.upsample(lr, small, restarts=2, steps=100, early_stop=False, seed=0)
    assert res[0].downscale_mse < 1e-2
    assert res[0].image.shape == (3, 64, 64)
    assert res[0].converged is (res[0].downscale_mse <= 2e-3)


def test_results_do_not_depend_on_the_batch_and_repeat_exactly(small):
    lr = planted(small, 3, factor=8)
    ids = ["a", "b", "c"]
    kw = dict(restarts=2, steps=4, early_stop=False, deterministic=True)
    together = pulse_ray.upsample(lr, small, ids=ids, **kw)
    again = pulse_ray.upsample(lr, small, ids=ids, **kw)
    alone = pulse_ray.upsample(lr[1:2], small, ids=["b"], **kw)
    one_slot = pulse_ray.upsample(lr[1:], small, ids=["b", "c"], batch_size=1, **kw)
    for a, b in zip(together, again):
        assert torch.equal(a.image, b.image) and a.downscale_mse == b.downscale_mse
    for other in (alone[0], one_slot[0]):
        assert other.seed == together[1].seed and other.restart == together[1].restart
        assert other.downscale_mse == pytest.approx(together[1].downscale_mse, rel=1e-5)
        assert (other.image - together[1].image).abs().max().item() < 1e-4
    assert one_slot[1].downscale_mse == pytest.approx(together[2].downscale_mse, rel=1e-5)


def test_sample_is_seeded(small):
    a, b, c = small.sample(2, seed=5), small.sample(2, seed=5), small.sample(2, seed=6)
    assert a.shape == (2, 3, 64, 64) and 0 <= a.min() and a.max() <= 1
    assert torch.equal(a, b) and not torch.equal(a, c)


# ----------------------------------------------------------------------------- device check


def test_device_check_stylegan2_tiny_runs_on_cpu(tmp_path):
    import json
    import subprocess

    from .helpers import REPO

    out = tmp_path / "dc.json"
    cmd = [sys.executable, str(REPO / "benchmarks" / "device_check.py"), "--stylegan2", "--tiny", "--device", "cpu",
           "--batches", "1,2", "--json", str(out)]
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=600, env=env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    res = json.loads(out.read_text())
    assert res["generator"] == "stylegan2-tiny32" and res["resolution"] == 32
    assert [r["batch"] for r in res["runs"]] == [1, 2]
    assert all(r["image_steps_per_s"] > 0 and r["achieved_share_of_fp32_rate"] > 0 for r in res["runs"])
    assert res["flops_per_image_step"] > res["flops_generator_forward"] > 0
    assert "reference_loop" not in res  # PULSE's own code has no StyleGAN2
