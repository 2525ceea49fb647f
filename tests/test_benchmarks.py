"""The search benchmark: it runs end to end on a tiny configuration, and its reference loop is PULSE's
algorithm (it agrees with pulse_ray.upsample where the two must agree)."""

import json
import os
import subprocess
import sys

import pytest
import torch

import pulse_ray

from .helpers import REPO, small_generator

sys.path.insert(0, str(REPO / "benchmarks"))

from reference_loop import reference_search, reference_upsample  # noqa: E402

FACES = REPO.parent / "shared" / "data" / "faces.parquet"


def _planted(g, factor, seed=1):
    torch.manual_seed(seed)
    w = g.latents_from_prior(torch.randn(1, 1, 512)).expand(-1, g.num_layers, -1)
    with torch.no_grad():
        hr = (g.synthesize(w, [torch.zeros(s) for s in g.synthesis.noise_shapes(1)]) + 1) / 2
    return pulse_ray.downscale(hr, factor)


def test_reference_loop_starts_where_pulse_ray_starts(reference):
    """Same seed -> same initial latent and noise: the first iterate is the same image."""
    g = small_generator(reference)
    lr = _planted(g, 8)
    ref = reference_upsample(lr, g, restarts=1, steps=1, seed=0, ids=["x"])[0]["restarts"][0]
    ours = pulse_ray.upsample(lr, g, restarts=1, steps=1, seed=0, ids=["x"], early_stop=False)[0]
    assert ref["min_mse"] == pytest.approx(ours.downscale_mse, rel=1e-5)
    assert (ref["min_mse_im"] - ours.image).abs().max().item() < 1e-4


def test_reference_loop_agrees_with_pulse_ray(reference):
    """Batch 1, one restart, no early stop, same seed: the same search, on a 32 px network.
    Tolerance: downscale MSE within 1e-4 relative, image within 1e-3 (max abs, [0, 1] scale) after
    5 steps (measured: about 1e-6 and 1e-5). Not bit for bit: pulse_ray uses its own batched Adam; the
    reference runs torch.optim.Adam. The search can amplify such rounding differences (on the 128 px fixture network to ~1e-3 within 3 steps at lr 0.4),
    which is why the small network and few steps."""
    from .test_fastpath import tiny_generator

    g = tiny_generator(reference)
    lr = _planted(g, 4)
    ref = reference_upsample(lr, g, restarts=1, steps=5, seed=0, ids=["x"])[0]["restarts"][0]
    ours = pulse_ray.upsample(lr, g, restarts=1, steps=5, seed=0, ids=["x"], early_stop=False)[0]
    assert ref["min_mse"] == pytest.approx(ours.downscale_mse, rel=1e-4)
    assert (ref["min_mse_im"] - ours.image).abs().max().item() < 1e-3
    assert ref["steps"] == ours.steps == 5


def test_reference_search_outputs(reference):
    g = small_generator(reference)
    lr = _planted(g, 8)
    out = reference_search(g, lr, 8, 123, steps=2)
    assert out["min_l2"] >= 2e-3  # clamped at eps, like the reference's L2
    assert out["converged"] is False and out["best_mse"] > 2e-3
    assert out["best_im"].shape == out["last_im"].shape == (3, 128, 128)
    # an eps every iterate meets: L2 is clamped to float32(eps) = 0.80000001, which the reference's
    # float32 comparison "min_l2 <= eps" accepts (a float64 comparison would not)
    easy = reference_search(g, lr, 8, 123, steps=2, eps=0.8)
    assert easy["best_mse"] < 0.8 and easy["min_l2"] > 0.8
    assert easy["converged"] is True


def _tiny_checkpoint(reference, path):
    from pulse_ray.models import save_checkpoint
    from pulse_ray.models.stylegan import SynthesisNetwork

    torch.manual_seed(0)
    net = SynthesisNetwork([32, 32, 16, 8])  # 32 px
    save_checkpoint(str(path), net.state_dict(), reference["mapping"]["state_dict"], reference["ffhq_gaussian_fit"],
                    {"name": "tiny32"})
    return str(path)


@pytest.mark.slow
def test_bench_search_end_to_end(reference, tmp_path):
    gen = _tiny_checkpoint(reference, tmp_path / "tiny32.pt")
    out = tmp_path / "bench.json"
    cmd = [sys.executable, str(REPO / "benchmarks" / "bench_search.py"), "--json", str(out), "--generator", gen,
           "--images", "2", "--restarts", "2", "--steps", "2", "--factor", "4", "--scaling", "1,2",
           "--scaling-steps", "1", "--threads", "1",  # one thread: robust on a busy machine
           "--source", str(FACES) if FACES.exists() else "samples"]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=600, env={**os.environ, "PYTHONPATH": str(REPO)})
    assert proc.returncode == 0, proc.stderr[-3000:]
    res = json.loads(out.read_text())
    assert set(res["modes"]) == {"reference-loop", "pulse_ray"}
    for mode in res["modes"].values():
        for key in ("images_per_hour", "image_steps_per_s", "converged_share", "face_rate", "peak_rss_mb",
                    "mean_downscale_mse", "seconds", "search_steps"):
            assert key in mode, key
        assert mode["images"] == 2 and mode["images_per_hour"] > 0 and mode["peak_rss_mb"] > 0
        assert 0 <= mode["converged_share"] <= 1 and 0 <= mode["face_rate"] <= 1
    assert res["modes"]["reference-loop"]["search_steps"] == 2 * 2 * 2
    assert res["ratio_images_per_hour"] == pytest.approx(
        res["modes"]["pulse_ray"]["images_per_hour"] / res["modes"]["reference-loop"]["images_per_hour"])
    assert set(res["targets"]) == {"speedup_at_least_5x", "converged_share_no_lower", "face_rate_at_most_0.05_lower"}
    assert len(res["ratio_images_per_cpu_hour_per_run"]) == 1 and res["modes"]["pulse_ray"]["images_per_cpu_hour"] > 0
    assert set(res["scaling"]["runs"]) == {"1", "2"}
    assert res["config"]["lr_size"] == 8 and len(res["inputs"]["ids"]) == 2
    assert "pulse_ray / reference-loop" in proc.stdout


def test_held_out_faces_are_the_training_split():
    if not FACES.exists():
        pytest.skip("shared/data/faces.parquet not present")
    from pulse_ray.train.data import held_out_faces, is_held_out

    ids, imgs = held_out_faces(str(FACES), 32, 3)  # what bench_search and evaluate_generator use
    assert imgs.shape == (3, 32, 32, 3) and imgs.dtype.name == "uint8"
    import pyarrow.parquet as pq

    t = pq.read_table(str(FACES), columns=["id", "person"]).to_pydict()
    person = dict(zip(t["id"], t["person"]))
    assert all(is_held_out(person[i] or i, 0.03) for i in ids)


def test_device_check_tiny_runs_on_cpu(tmp_path):
    out = tmp_path / "dc.json"
    cmd = [sys.executable, str(REPO / "benchmarks" / "device_check.py"), "--tiny", "--device", "cpu",
           "--json", str(out)]
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=600, env=env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    res = json.loads(out.read_text())
    assert [r["batch"] for r in res["runs"]] == [1, 2, 4]
    assert all(r["image_steps_per_s"] > 0 for r in res["runs"])
    assert res["flops_per_image_step"] > res["flops_generator_forward"] > 0
    assert res["reference_loop"]["batch"] == 1


def test_bundled_search_check_writes_its_figures_and_images(tmp_path):
    import bundled_search_check

    assert bundled_search_check.main(["--out", str(tmp_path), "--images", "2", "--steps", "2"]) == 0
    out = json.loads((tmp_path / "check.json").read_text())
    assert sorted(out["runs"]) == [f"factor{f}_{k}_fp32" for f in (16, 8) for k in ("closest", "realistic")]
    assert all(r["steps_per_search"] == 2 and r["images_per_min"] > 0 and r["sr_face_rate"] is not None
               for r in out["runs"].values())
    saved = torch.load(tmp_path / "sr.pt", weights_only=True)
    assert saved["hr"].shape == saved["factor16_realistic_fp32"].shape == (2, 3, 64, 64)


def test_bench_search_gpu_tiny_runs_on_cpu(tmp_path):
    """The GPU search-step benchmark in its tiny CPU mode: every layout timed eagerly in fp32 and bf16,
    graph capture reported as CUDA-only, the static step equal to upsample's search, bf16 close to fp32."""
    out = tmp_path / "gpu.json"
    cmd = [sys.executable, str(REPO / "benchmarks" / "bench_search_gpu.py"), "--tiny", "--device", "cpu",
           "--batches", "2", "--steps", "1", "--warmup", "1", "--json", str(out)]
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=600, env=env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    res = json.loads(out.read_text())
    assert set(res["layouts"]) == {"bundled", "v1-1024", "sg2-1024"}
    for layout in res["layouts"].values():
        runs = {r["variant"]: r for r in layout["runs"]}
        assert set(runs) == {"eager-fp32", "eager-bf16-cl", "graph-fp32"}
        assert runs["eager-fp32"]["image_steps_per_s"] > 0 and runs["eager-bf16-cl"]["image_steps_per_s"] > 0
        assert 0 < runs["eager-fp32"]["achieved_share_of_fp32_rate"] < 1
        assert "CUDA" in runs["graph-fp32"]["skipped"]
        assert layout["flops_per_image_step"] > 0
        assert layout["upsample_agreement_rel"] < 1e-3  # measured 2e-6 (v1), 2e-5 (StyleGAN2)
        assert 0 < layout["bf16_first_mse_rel_diff"] < 0.05  # measured about 4e-3
