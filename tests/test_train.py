"""The training job: data preparation, a few real training steps, exact resume, export."""

import io
import json

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch
from PIL import Image

import pulse_ray
from pulse_ray.train import loop
from pulse_ray.train.data import prepare_faces

from .helpers import REPO

FACES = REPO.parent / "shared" / "data" / "faces.parquet"
TINY = {"resolution": 16, "g_channels": [16, 16, 8], "d_channels": [16, 16, 8], "start_level": 2,
        "stabilize_kimg": [0.008, 1000], "fade_kimg": [0, 0.008], "batch": [4, 4], "held_out_share": 0.0}


@pytest.fixture(scope="module")
def small_faces(tmp_path_factory):
    """30 real photos from the shared data set plus one photo without a face and one broken file."""
    d = tmp_path_factory.mktemp("faces")
    t = pq.read_table(FACES).slice(0, 30).select(["id", "person", "image"])
    noise = Image.fromarray((np.random.default_rng(0).random((64, 64, 3)) * 255).astype(np.uint8))
    buf = io.BytesIO()
    noise.save(buf, format="PNG")
    extra = pa.table({"id": ["noise", "broken"], "person": [None, None], "image": [buf.getvalue(), b"not an image"]})
    path = d / "faces.parquet"
    pq.write_table(pa.concat_tables([t, extra.cast(t.schema)]), path)
    return path


def test_prepare_faces_keeps_faces_and_drops_the_rest(small_faces):
    prep = prepare_faces(str(small_faces), 16, held_out_share=0.0)
    assert prep.images.shape[1:] == (16, 16, 3) and prep.images.dtype == np.uint8
    assert "noise" not in prep.ids and "broken" not in prep.ids
    assert len(prep.ids) + prep.dropped == 32
    assert len(prep.ids) >= 25  # the shared photos are face crops


def _run(run_dir, cfg_path, data, kimg, resume):
    args = ["--data", str(data), "--run-dir", str(run_dir), "--kimg", str(kimg), "--threads", "1",
            "--config", str(cfg_path)] + (["--resume"] if resume else [])
    assert loop.main(args) == 0
    return torch.load(run_dir / "state.pt", weights_only=True)


def test_training_runs_grows_and_resumes_exactly(small_faces, tmp_path):
    cfg = tmp_path / "tiny.json"
    cfg.write_text(json.dumps(TINY))
    straight = _run(tmp_path / "a", cfg, small_faces, kimg=0.024, resume=False)
    assert straight["cur_img"] == 24  # 6 steps of 4: 8 px, then the fade to 16 px
    assert (tmp_path / "a" / "samples.png").exists()
    _run(tmp_path / "b", cfg, small_faces, kimg=0.012, resume=False)
    resumed = _run(tmp_path / "b", cfg, small_faces, kimg=0.024, resume=True)
    assert resumed["cur_img"] == 24
    # Adam runs with beta1 = 0, so its first moment (the last gradient) is not stored; resume stays exact
    assert all("exp_avg" not in st and "exp_avg_sq" in st for st in resumed["opt_g"]["state"].values())
    for part in ("G", "D", "G_ema"):
        for k, v in straight[part].items():
            assert torch.allclose(v, resumed[part][k], atol=1e-6), f"{part}.{k} differs after resume"
    # export the 16 px generator and load it back as a PULSE generator
    out = tmp_path / "tiny16.pt"
    assert loop.main(["--run-dir", str(tmp_path / "a"), "--export-only", "--export", str(out),
                      "--export-level", "3", "--data", str(small_faces), "--fit-samples", "20000"]) == 0
    g = pulse_ray.load_generator(out, device="cpu")
    assert (g.resolution, g.num_layers, g.name) == (16, 6, "tiny16")  # named after its file
    assert g.sample(2).shape == (2, 3, 16, 16)
    res = pulse_ray.upsample(pulse_ray.downscale(g.sample(1), 4), g, restarts=1, steps=3)
    assert res[0].image.shape == (3, 16, 16)


def test_progress_bar_shows_share_and_time_left():
    assert loop.progress_bar(0.25, elapsed_s=600, width=8) == "[##------]  25% 0:30:00 left"
    assert loop.progress_bar(0.0, elapsed_s=5, width=4) == "[----]   0% --:--:-- left"
    assert loop.progress_bar(1.7, elapsed_s=60, width=4) == "[####] 100% 0:00:00 left"


def test_resume_takes_the_learning_rate_from_the_config(tmp_path):
    cfg = loop.TrainConfig(**{**TINY, "lr": 0.002})
    first = loop.Trainer(cfg, str(tmp_path), torch.device("cpu"))
    first.save()
    resumed = loop.Trainer(loop.TrainConfig(**{**TINY, "lr": 0.0005}), str(tmp_path), torch.device("cpu"))
    resumed.load(str(tmp_path / "state.pt"))
    for opt in (resumed.opt_g, resumed.opt_d):
        assert [grp["lr"] for grp in opt.param_groups] == [0.0005] * len(opt.param_groups)


def test_zero_minutes_prepares_the_data_and_stops_after_one_step(small_faces, tmp_path):
    cfg = tmp_path / "tiny.json"
    cfg.write_text(json.dumps(TINY))
    run = tmp_path / "prep"
    assert loop.main(["--data", str(small_faces), "--run-dir", str(run), "--minutes", "0", "--threads", "1",
                      "--config", str(cfg)]) == 0
    assert (run / "faces16.npz").exists()  # the cache training/pack_faces.py packs
    assert torch.load(run / "state.pt", weights_only=True)["cur_img"] == 4  # one step of batch 4


def _pack_for_device():
    import importlib.util

    spec = importlib.util.spec_from_file_location("pack_for_device", REPO / "scripts" / "training" / "pack_for_device.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_packed_faces_round_trip(tmp_path):
    pack = _pack_for_device()
    yy, xx = np.mgrid[0:64, 0:64]
    faces = np.stack([np.stack([(xx * 4 + k) % 256, (yy * 4) % 256, np.full_like(xx, 40 * k)], -1)
                      for k in range(3)] + [np.repeat(((xx + yy) * 2 % 256)[..., None], 3, -1)]).astype(np.uint8)
    race = np.array(["white", "black", "asian", "None"])
    np.savez(tmp_path / "faces64.npz", images=faces, race=race)
    assert pack.main(["pack-faces", str(tmp_path / "faces64.npz"), str(tmp_path / "packed.parquet")]) == 0
    stored = [Image.open(io.BytesIO(b)).mode for b in pq.read_table(tmp_path / "packed.parquet").column("image").to_pylist()]
    assert stored == ["RGB", "RGB", "RGB", "L"]  # a grey face travels as one channel
    assert pack.main(["unpack-faces", str(tmp_path / "packed.parquet"), str(tmp_path / "back.npz")]) == 0
    back, race_back = np.load(tmp_path / "back.npz")["images"], np.load(tmp_path / "back.npz")["race"]
    assert race_back.tolist() == race.tolist()  # labels travel for group-balanced sampling
    assert back.shape == faces.shape and back.dtype == np.uint8
    assert np.abs(back.astype(int) - faces).mean() < 3  # JPEG q92: about 1.5 levels in 255 on faces
    assert (back[3] == back[3][..., :1]).all()  # and comes back grey
    assert pack.main(["pack-faces", str(tmp_path / "faces64.npz"), str(tmp_path / "webp.parquet"), "--format", "WEBP",
                      "--quality", "85"]) == 0
    assert pack.main(["unpack-faces", str(tmp_path / "webp.parquet"), str(tmp_path / "webp.npz")]) == 0
    webp = np.load(tmp_path / "webp.npz")
    assert webp["race"].tolist() == race.tolist() and np.abs(webp["images"].astype(int) - faces).mean() < 6


def test_packed_state_round_trip_resumes(tmp_path):
    pack = _pack_for_device()
    trainer = loop.Trainer(loop.TrainConfig(**TINY), str(tmp_path), torch.device("cpu"))
    reals = torch.rand(4, 3, 8, 8) * 2 - 1
    for _ in range(3):  # Adam state, an EMA that differs from G, a moved image counter
        trainer.train_step(reals, level=2, alpha=1.0)
    state = trainer.save()
    assert pack.main(["pack-state", state, str(tmp_path / "s.packed.pt")]) == 0
    assert pack.main(["unpack-state", str(tmp_path / "s.packed.pt"), str(tmp_path / "back.pt")]) == 0
    a, b = (torch.load(p, weights_only=True) for p in (state, tmp_path / "back.pt"))
    assert (b["cur_img"], b["step"]) == (a["cur_img"], a["step"]) == (12, 3) and torch.equal(a["rng"], b["rng"])
    assert all(torch.equal(a[net][k], b[net][k]) for net in ("G", "D") for k in a[net])  # exact
    for k in a["G_ema"]:  # a bfloat16 difference from G: off by a small share of that difference
        gap = (a["G_ema"][k] - a["G"][k]).abs().max()
        assert (a["G_ema"][k] - b["G_ema"][k]).abs().max() <= gap / 100 + 1e-12
    for opt in ("opt_g", "opt_d"):
        for k, st in a[opt]["state"].items():
            assert torch.allclose(st["exp_avg_sq"], b[opt]["state"][k]["exp_avg_sq"], rtol=1e-2, atol=0)
    resumed = loop.Trainer(loop.TrainConfig(**TINY), str(tmp_path), torch.device("cpu"))
    resumed.load(str(tmp_path / "back.pt"))
    assert resumed.cur_img == 12
    resumed.train_step(reals, level=2, alpha=1.0)  # and trains on


def test_held_out_faces_skip_gives_a_separate_validation_set():
    from pulse_ray.train.data import held_out_faces

    ids, faces = held_out_faces(str(FACES), 32, 5)
    later_ids, later_faces = held_out_faces(str(FACES), 32, 2, skip=3)
    assert later_ids == ids[3:] and np.array_equal(later_faces, faces[3:])
    with pytest.raises(ValueError, match="held-out faces, 100000 skipped and 2 asked for"):
        held_out_faces(str(FACES), 32, 2, skip=100_000)


def test_group_weights_draw_every_group_equally_often():
    groups = np.array(["white"] * 6 + ["black"] * 3 + ["asian"])
    w = loop.group_weights(groups)
    share = {g: float(w[groups == g].sum() / w.sum()) for g in ("white", "black", "asian")}
    assert share == pytest.approx({"white": 1 / 3, "black": 1 / 3, "asian": 1 / 3})
    idx = torch.multinomial(w, 30_000, replacement=True, generator=torch.Generator().manual_seed(0))
    drawn = np.bincount(np.unique(groups, return_inverse=True)[1][idx.numpy()]) / 30_000
    assert np.allclose(drawn, 1 / 3, atol=0.02)


def test_ffhq_framing_colour_only_and_labels_from_several_sources(tmp_path):
    from pulse_ray.train.data import Framing, is_grey

    from .helpers import SHARED

    sources = f"{SHARED / 'data' / 'utkface.parquet'},{SHARED / 'data' / 'faces.parquet'}"
    prep = prepare_faces(sources, 32, held_out_share=0.05, limit=40, framing=Framing("ffhq", 0.6, "colour"))
    assert len(prep.ids) >= 30 and prep.images.shape[1:] == (32, 32, 3)
    assert not any(is_grey(Image.fromarray(img)) for img in prep.images)
    assert set(prep.labels["race"]) <= {"white", "black", "asian", "indian", "other"}
    assert len(prep.labels["age"]) == len(prep.ids)
    again = prepare_faces(sources, 32, held_out_share=0.05, limit=40, framing=Framing("ffhq", 0.6, "colour"))
    assert np.array_equal(prep.images, again.images)  # deterministic crops


def test_held_out_faces_by_group_are_balanced_and_spread_over_ages():
    from pulse_ray.train.data import Framing, held_out_by_group, is_held_out

    from .helpers import SHARED

    ids, faces, labels = held_out_by_group(str(SHARED / "data" / "utkface.parquet"), 32, 3, held_out_share=0.05,
                                           framing=Framing(colour="colour"))
    races = labels["race"]
    assert {r: races.count(r) for r in set(races)} == {r: 3 for r in ("white", "black", "asian", "indian", "other")}
    assert all(is_held_out(i, 0.05) for i in ids) and faces.shape == (15, 32, 32, 3)
    white_ages = sorted(int(a) for a, r in zip(labels["age"], races) if r == "white")
    assert white_ages[-1] - white_ages[0] >= 20  # spread over the group's rows, not its youngest three
