"""Photos in, restored photos out: FFHQ alignment of every face on synthetic group photos made from
held-out shared faces, paste-back round trips, odd inputs, and photos -> make-manifest -> submit ->
paste-back end to end (embedded Ray, local and S3 on loopback)."""

from __future__ import annotations

import io
import sys

import numpy as np
import pyarrow as pa
import pytest
from PIL import Image

from pulse_ray.io import storage
from pulse_ray.photos.align import AlignPhotos, align_photo, failed_report_uri, open_photo
from pulse_ray.photos.ffhq import crop_quad, ffhq_quad
from pulse_ray.photos.paste import enlarge, restore_photo

from .conftest import GENERATOR_SOURCE, bomb_png
from .helpers import REPO

sys.path.insert(0, str(REPO / "benchmarks"))

from photo_scenes import held_out_faces, make_scene, match_quads, place_face, quad_errors  # noqa: E402

LR = 16


@pytest.fixture(scope="module")
def faces():
    return held_out_faces(8)


def _scene(faces, seed, n=3, size=(480, 360), eye_range=(16.0, 36.0)):
    return make_scene(faces[seed % 4: seed % 4 + n], np.random.default_rng(seed), size=size, eye_range=eye_range)


def _quads(found):
    return [np.asarray(f["quad"]).reshape(4, 2) for f in found]


def _png(arr_or_img, mode=None, fmt="PNG", **kw) -> bytes:
    img = arr_or_img if isinstance(arr_or_img, Image.Image) else Image.fromarray(arr_or_img)
    if mode == "P":
        img = img.convert("P", palette=Image.Palette.ADAPTIVE, colors=256)
    elif mode:
        img = img.convert(mode)
    buf = io.BytesIO()
    img.save(buf, format=fmt, **kw)
    return buf.getvalue()


def _row(data, **geometry):
    return dict(photo_id="p", uri=None, image=data, source_table="photos.parquet", **geometry)


# ----------------------------------------------------------------------------- alignment


def test_every_face_found_quads_close_to_truth_and_alignment_is_deterministic(faces):
    for seed in (1, 2):
        scene = _scene(faces, seed)
        img = Image.fromarray(scene.photo)
        found = align_photo(img, lr_size=LR, scale=1.0)
        truth = [ffhq_quad(lm) for lm in scene.landmarks]
        pairs, false = match_quads(_quads(found), truth)
        assert len(pairs) == len(truth) and false == 0, (seed, len(pairs), false)
        for i, j in pairs:
            corner, share, angle = quad_errors(_quads(found)[i], truth[j])
            assert corner < 5.0 and share < 6.0 and angle < 3.0, (seed, j, corner, share, angle)
        again = align_photo(img, lr_size=LR, scale=1.0)
        assert [f["image"] for f in again] == [f["image"] for f in found]
        assert all(Image.open(io.BytesIO(f["image"])).size == (LR, LR) for f in found)


def test_align_scale_shrinks_the_quad_about_its_centre(faces):
    img = Image.fromarray(_scene(faces, 3, n=1).photo)
    full, tight = (_quads(align_photo(img, lr_size=LR, scale=s))[0] for s in (1.0, 0.6))
    np.testing.assert_allclose(tight.mean(0), full.mean(0), atol=1e-9)
    np.testing.assert_allclose(np.linalg.norm(tight[3] - tight[0]), 0.6 * np.linalg.norm(full[3] - full[0]))


def test_user_landmarks_and_boxes_are_used_as_given(faces):
    scene = _scene(faces, 4, n=2)
    data = _png(scene.photo)
    step = AlignPhotos(lr_size=LR, scale=1.0)
    rows = step.one_photo(_row(data, landmarks=[lm.tolist() for lm in scene.landmarks]))
    assert [r["status"] for r in rows] == ["ok", "ok"] and [r["geometry"] for r in rows] == ["landmarks"] * 2
    for r, lm in zip(rows, scene.landmarks):
        np.testing.assert_allclose(np.reshape(r["quad"], (4, 2)), ffhq_quad(lm))
        assert r["score"] is None and r["id"] == f"p#{r['face']}"
    five = [lm[[45, 42, 36, 39, 33]] for lm in scene.landmarks]  # dlib's 5-point order
    rows5 = step.one_photo(_row(data, landmarks=[f.reshape(-1).tolist() for f in five]))
    for r, f, lm in zip(rows5, five, scene.landmarks):  # the mouth is estimated from the nose: roughly FFHQ's quad
        np.testing.assert_allclose(np.reshape(r["quad"], (4, 2)), ffhq_quad(f))
        corner, share, angle = quad_errors(np.reshape(r["quad"], (4, 2)), ffhq_quad(lm))
        assert share < 20 and angle < 12, (share, angle)
    lm = scene.landmarks[0]
    box = [lm[:, 0].min() - 3, lm[:, 1].min() - 8, lm[:, 0].max() + 3, lm[:, 1].max() + 3]
    (r,) = step.one_photo(_row(data, box=box))
    corner, share, angle = quad_errors(np.reshape(r["quad"], (4, 2)), ffhq_quad(lm))
    assert r["geometry"] == "box" and share < 8 and angle < 4, (share, angle)
    bad = step.one_photo(_row(data, landmarks=[[1.0, 2.0]] * 7))
    assert bad[0]["status"] == "failed" and "5 or 68 points" in bad[0]["error"]


def test_landmarks_outside_the_image(faces):
    scene = _scene(faces, 5, n=1)
    data = _png(scene.photo)
    h, w = scene.photo.shape[:2]
    step = AlignPhotos(lr_size=LR, scale=1.0)
    partly = scene.landmarks[0] - [scene.landmarks[0][:, 0].min() + 12, 0]  # the face's left edge off the photo
    (r,) = step.one_photo(_row(data, landmarks=partly.tolist()))
    assert r["status"] == "ok" and min(r["landmarks"][0::2]) < 0 and min(r["quad"][0::2]) < 0
    lr = np.asarray(Image.open(io.BytesIO(r["image"])))
    assert lr.shape == (LR, LR, 3) and lr.std() > 5
    far = scene.landmarks[0] + [3 * w, 0]
    (f,) = step.one_photo(_row(data, landmarks=far.tolist()))
    assert f["status"] == "failed" and "outside" in f["error"] and f"{w}x{h}" in f["error"]


def test_photo_without_a_face_is_a_failed_row(faces):
    rng = np.random.default_rng(0)
    from photo_scenes import background

    (r,) = AlignPhotos(lr_size=LR, scale=1.0).one_photo(_row(_png(background(200, 300, rng))))
    assert r["status"] == "failed" and r["error"].startswith("no face found") and r["photo_id"] == "p"


def test_face_at_the_border_is_aligned_with_the_crop_padded(faces):
    photo = np.full((240, 320, 3), 120, np.uint8)
    face, lm = faces[0]
    truth = place_face(photo, face, lm, (40, 120), 34.0, 8.0)
    (found,) = align_photo(Image.fromarray(photo), lr_size=LR, scale=1.0)
    q = np.reshape(found["quad"], (4, 2))
    assert q[:, 0].min() < 0, "the quad reaches past the left edge"
    corner, share, angle = quad_errors(q, ffhq_quad(truth))
    assert share < 6 and angle < 3, (share, angle)


def test_exif_rotated_jpeg_is_aligned_upright(faces):
    scene = _scene(faces, 6, n=2)
    stored = np.ascontiguousarray(np.rot90(scene.photo, k=1))  # the camera's sensor orientation
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90 degrees clockwise to display"
    data = _png(stored, fmt="JPEG", quality=95, exif=exif.tobytes())
    img = open_photo(data, "rotated.jpg")
    assert img.size == (scene.photo.shape[1], scene.photo.shape[0])
    found = align_photo(img, lr_size=LR, scale=1.0)
    pairs, false = match_quads(_quads(found), [ffhq_quad(lm) for lm in scene.landmarks])
    assert len(pairs) == 2 and false == 0
    for i, j in pairs:
        assert quad_errors(_quads(found)[i], ffhq_quad(scene.landmarks[j]))[2] < 3


@pytest.mark.parametrize("mode", ["L", "RGBA", "P"])
def test_grey_rgba_and_palette_photos(faces, mode):
    scene = _scene(faces, 7, n=2, eye_range=(24.0, 36.0))
    (r0, r1) = AlignPhotos(lr_size=LR, scale=1.0).one_photo(_row(_png(scene.photo, mode=mode)))
    assert r0["status"] == r1["status"] == "ok"
    assert Image.open(io.BytesIO(r0["image"])).mode == "RGB"


def test_huge_photos_refused_from_the_header_or_detected_reduced(faces):
    step = AlignPhotos(lr_size=LR, scale=1.0)
    (r,) = step.one_photo(_row(bomb_png(20_000, 4_100)))
    assert r["status"] == "failed" and "20000x4100" in r["error"] and "80000000-pixel limit" in r["error"]
    wide = np.full((700, 20_000, 3), 100, np.uint8)
    face, lm = faces[1]
    truth = place_face(wide, face, lm, (15_000, 350), 150.0, -5.0)
    (ok,) = step.one_photo(_row(_png(wide, fmt="JPEG", quality=90)))
    assert ok["status"] == "ok" and ok["detect_reduction"] == 5 and ok["photo_width"] == 20_000
    assert ok["detect_upsample"] == 1, "4000 px doubled twice would pass 8192 px"
    share = quad_errors(np.reshape(ok["quad"], (4, 2)), ffhq_quad(truth))[1]
    assert share < 4, share


def test_without_the_align_extra_make_manifest_ffhq_exits_2_naming_it(tmp_path, monkeypatch):
    from typer.testing import CliRunner

    from pulse_ray.cli import app

    (tmp_path / "a.png").write_bytes(_png(np.zeros((32, 32, 3), np.uint8)))
    monkeypatch.setitem(sys.modules, "dlib", None)  # as if dlib-bin were not installed
    res = CliRunner().invoke(app, ["make-manifest", str(tmp_path), "-o", str(tmp_path / "m.parquet"), "--align", "ffhq"])
    assert res.exit_code == 2 and "pulse-ray[align]" in res.output
    assert not (tmp_path / "m.parquet").exists()


# ----------------------------------------------------------------------------- paste-back


@pytest.mark.parametrize("scale", [1, 2, 4])
def test_paste_back_of_the_original_face_puts_it_back(faces, scale):
    scene = _scene(faces, 8, n=3, size=(320, 240), eye_range=(18.0, 30.0))
    img = Image.fromarray(scene.photo)
    quads = _quads(align_photo(img, lr_size=LR, scale=0.6))
    srs = [np.asarray(crop_quad(img, q, 64)) for q in quads]
    restored = np.asarray(restore_photo(img, list(zip(srs, quads)), scale), dtype=np.float64)
    h, w = scene.photo.shape[:2]
    assert restored.shape == (h * scale, w * scale, 3)
    back = np.asarray(Image.fromarray(restored.astype(np.uint8)).reduce(scale) if scale > 1 else restored, np.float64)
    enlarged = enlarge(img, scale)
    for q in quads:  # the inner half of each face: where the mask is 1
        c, half = q.mean(0), np.linalg.norm(q[3] - q[0]) / 4
        y0, y1, x0, x1 = int(c[1] - half), int(c[1] + half), int(c[0] - half), int(c[0] + half)
        mse = np.mean((back[y0:y1, x0:x1] / 255 - scene.photo[y0:y1, x0:x1] / 255.0) ** 2)
        assert mse < 2e-3, mse
        moved = np.mean((restored - enlarged) ** 2)
        assert moved > 0
    away = np.ones((h * scale, w * scale), bool)
    for q in quads:
        lo, hi = np.floor((q.min(0) + 0.5) * scale - 2).astype(int), np.ceil((q.max(0) + 0.5) * scale + 2).astype(int)
        away[max(lo[1], 0):hi[1], max(lo[0], 0):hi[0]] = False
    assert away.mean() > 0.3
    np.testing.assert_array_equal(restored[away], enlarged[away])


def test_paste_back_blends_without_a_seam(faces):
    """A flat grey SR face on a flat photo: the step from photo to face spreads over the feather."""
    img = Image.fromarray(np.full((100, 100, 3), 200, np.uint8))
    quad = np.array([[20, 20], [20, 80], [80, 80], [80, 20]], np.float64)
    out = np.asarray(restore_photo(img, [(np.full((64, 64, 3), 40, np.uint8), quad)], 2), np.float64)
    row = out[100, :, 0]
    assert row[100] == pytest.approx(40, abs=1) and row[10] == 200
    assert np.abs(np.diff(row)).max() < 160 / 5, "no jump of more than a fifth of the step between neighbours"


# ----------------------------------------------------------------------------- end to end


def _write_photos(faces, put):
    for k in range(2):
        scene = _scene(faces, 10 + k, n=2, size=(240, 180), eye_range=(22.0, 30.0))
        put(f"group{k}.jpg", _png(scene.photo, fmt="JPEG", quality=92))
    put("empty.png", _png(np.full((60, 80, 3), 90, np.uint8)))


def _end_to_end(photos, manifest, out):
    from pulse_ray.io.manifest import read_table
    from pulse_ray.job import metadata as md
    from pulse_ray.job.options import JobOptions
    from pulse_ray.job.submit import submit
    from pulse_ray.search.options import SearchOptions
    from pulse_ray.photos.align import align_photos
    from pulse_ray.photos.paste import paste_back, read_restored

    res = align_photos(photos, manifest, lr_size=LR, scale=0.6)
    m = read_table(manifest)
    assert res.written == m.num_rows == 4 and sorted(m.column("photo_id").to_pylist()) == ["group0"] * 2 + ["group1"] * 2
    assert read_table(failed_report_uri(manifest)).to_pylist()[0]["photo_id"] == "empty"
    s = submit(manifest, out, JobOptions(workers=1, batch_size=4, progress=False, generator=GENERATOR_SOURCE,
                                         search=SearchOptions(restarts=1, steps=2)))
    assert s.ok == 4
    meta = md.read_metadata(out)
    assert {"source_uri", "quad", "photo_id"} <= set(meta.column_names)
    p = paste_back(out, 2)
    assert p.written == 2 and not p.failed
    rows = {r["photo_id"]: r for r in read_restored(out).to_pylist()}
    assert sorted(rows) == ["group0", "group1"] and all(r["faces"] == 2 and r["status"] == "ok" for r in rows.values())
    for r in rows.values():
        restored = Image.open(io.BytesIO(storage.Storage().read_bytes(r["restored_uri"])))
        assert restored.size == (480, 360) and r["restored_uri"].endswith(".jpg")
    again = paste_back(out, 2)
    assert (again.written, again.skipped) == (0, 2)


@pytest.mark.slow
def test_photos_to_restored_photos_locally_and_over_s3(faces, ray_cluster, tmp_path, s3):
    local = tmp_path / "photos"
    local.mkdir()
    _write_photos(faces, lambda name, data: (local / name).write_bytes(data))
    _end_to_end(str(local), str(tmp_path / "faces.parquet"), str(tmp_path / "out"))

    _write_photos(faces, lambda name, data: s3.client.put_object(Bucket=s3.bucket, Key=f"photos/{name}", Body=data))
    _end_to_end(s3.uri("photos"), s3.uri("manifests/faces.parquet"), s3.uri("out"))
    assert s3.keys("out/restored/") == ["out/restored/group0.jpg", "out/restored/group1.jpg"]


@pytest.mark.slow
def test_submit_paste_back_restores_the_photos_after_the_job(faces, ray_cluster, tmp_path, fake_search):
    from typer.testing import CliRunner

    from pulse_ray.cli import app
    from pulse_ray.photos.align import align_photos
    from pulse_ray.photos.paste import read_restored

    photos = tmp_path / "photos"
    photos.mkdir()
    _write_photos(faces, lambda name, data: (photos / name).write_bytes(data))
    manifest, out = str(tmp_path / "faces.parquet"), str(tmp_path / "out")
    align_photos(str(photos), manifest, lr_size=8, scale=0.6)  # the fake search's generator makes 32 px
    runner = CliRunner()
    res = runner.invoke(app, ["submit", manifest, "-o", out, "--workers", "1", "--batch-size", "4", "--quiet",
                              "--paste-back", "--photos-scale", "3"])
    assert res.exit_code == 0 and "restored 2 photo(s)" in res.output, res.output
    rows = read_restored(out).to_pylist()
    assert [(r["photo_id"], r["status"], r["faces"], r["width"], r["height"]) for r in rows] == \
        [("group0", "ok", 2, 720, 540), ("group1", "ok", 2, 720, 540)]
    again = runner.invoke(app, ["paste-back", out, "--photos-scale", "3"])
    assert again.exit_code == 0 and "2 already restored" in again.output, again.output


def test_manifest_table_input_keeps_inline_photos(faces, tmp_path):
    """A Parquet photo table with inline images: rows name the table, and paste-back can read the photo back."""
    from pulse_ray.photos.paste import _photo_bytes

    scene = _scene(faces, 12, n=1)
    table = str(tmp_path / "photos.parquet")
    import pyarrow.parquet as pq

    pq.write_table(pa.table({"id": ["a"], "image": [_png(scene.photo)]}), table)
    (r,) = AlignPhotos(lr_size=LR, scale=1.0).one_photo(dict(photo_id="a", image=_png(scene.photo), source_table=table))
    assert r["status"] == "ok" and r["source_uri"] is None and r["source_table"] == table
    assert _photo_bytes(None, table, "a", {}) == _png(scene.photo)
    with pytest.raises(ValueError, match="no longer in its photo table"):
        _photo_bytes(None, table, "b", {})


# ----------------------------------------------------------------------------- options


def test_crop_scale_comes_from_the_generator_meta_unless_given(tmp_path):
    import torch

    from pulse_ray.photos.align import align_scale_for, generator_alignment

    recorded = tmp_path / "g.pt"
    torch.save({"synthesis": {"w": torch.zeros(1)}, "meta": {"alignment": {"recipe": "ffhq", "scale": 0.6}}}, recorded)
    plain = tmp_path / "plain.pt"
    torch.save({"synthesis": {"w": torch.zeros(1)}, "meta": {"name": "ffhq1024"}}, plain)
    assert generator_alignment(str(recorded)) == {"recipe": "ffhq", "scale": 0.6}
    assert align_scale_for(str(recorded), None) == 0.6
    assert align_scale_for(str(plain), None) == 1.0
    assert align_scale_for(str(recorded), 0.8) == 0.8


def test_bare_align_still_means_haar_with_a_note(faces, tmp_path):
    from typer.testing import CliRunner

    from pulse_ray.cli import app

    (tmp_path / "in").mkdir()
    (tmp_path / "in" / "one.png").write_bytes(_png(faces[0][0]))
    runner = CliRunner()
    bare = runner.invoke(app, ["make-manifest", str(tmp_path / "in"), "-o", str(tmp_path / "a.parquet"), "--align"])
    named = runner.invoke(app, ["make-manifest", str(tmp_path / "in"), "-o", str(tmp_path / "b.parquet"), "--align", "haar"])
    assert bare.exit_code == named.exit_code == 0, bare.output
    assert "deprecated" in bare.output and "deprecated" not in named.output
    import pyarrow.parquet as pq

    a, b = pq.read_table(str(tmp_path / "a.parquet")), pq.read_table(str(tmp_path / "b.parquet"))
    assert a.column_names == ["id", "image", "source_uri"] and a.equals(b) and a.num_rows == 1
    wrong = runner.invoke(app, ["make-manifest", str(tmp_path / "in"), "-o", str(tmp_path / "c.parquet"), "--align", "dlib"])
    assert wrong.exit_code == 2 and "--align must be one of ffhq, haar (got 'dlib')" in wrong.output


def test_paste_back_without_a_job_exits_2(tmp_path):
    from typer.testing import CliRunner

    from pulse_ray.cli import app

    res = CliRunner().invoke(app, ["paste-back", str(tmp_path), "--photos-scale", "2"])
    assert res.exit_code == 2 and "run submit first" in res.output
    res = CliRunner().invoke(app, ["paste-back", str(tmp_path), "--photos-scale", "0"])
    assert res.exit_code == 2 and "--photos-scale" in res.output


def _fake_job(out, photo_uri, quads, img, failed=()):
    """OUT/metadata and OUT/sr as submit writes them, for faces whose "SR" is the face itself."""
    from datetime import datetime, timezone

    from pulse_ray.io.manifest import write_table
    from pulse_ray.job import metadata as md

    rows = []
    for k, q in enumerate(quads):
        fid = f"group#{k}"
        sr = storage.join(out, "sr", fid + ".png")
        if k in failed:
            rows.append(dict(id=fid, status="failed", error="search failed", sr_uri=None))
        else:
            storage.Storage().write_bytes(sr, _png(crop_quad(img, q, 64)))
            rows.append(dict(id=fid, status="ok", error=None, sr_uri=sr))
        rows[-1].update(finished_at=datetime.now(timezone.utc), photo_id="group", source_uri=photo_uri,
                        quad=q.reshape(-1).tolist())
    write_table(pa.Table.from_pylist(rows), storage.join(out, "metadata", md.part_name([r["id"] for r in rows])))


def test_paste_back_command_writes_restored_photos_lists_them_and_resumes(faces, tmp_path):
    from typer.testing import CliRunner

    from pulse_ray.cli import app
    from pulse_ray.photos.paste import read_restored

    scene = _scene(faces, 9, n=3, size=(320, 240), eye_range=(18.0, 30.0))
    photo = tmp_path / "group.png"
    photo.write_bytes(_png(scene.photo))
    img = Image.fromarray(scene.photo)
    quads = _quads(align_photo(img, lr_size=LR, scale=0.6))
    out = str(tmp_path / "out")
    _fake_job(out, str(photo), quads, img, failed={1})
    runner = CliRunner()
    first = runner.invoke(app, ["paste-back", out, "--photos-scale", "2"])
    assert first.exit_code == 0 and "restored 1 photo(s)" in first.output, first.output
    (row,) = read_restored(out).to_pylist()
    assert (row["status"], row["faces"], row["faces_failed"], row["width"], row["height"]) == ("ok", len(quads) - 1, 1, 640, 480)
    restored = np.asarray(Image.open(row["restored_uri"]), np.float64)
    expected = restore_photo(img, [(np.asarray(crop_quad(img, q, 64)), q) for k, q in enumerate(quads) if k != 1], 2)
    np.testing.assert_array_equal(restored, np.asarray(expected, np.float64))
    again = runner.invoke(app, ["paste-back", out, "--photos-scale", "2"])
    assert "restored 0 photo(s)" in again.output and "1 already restored" in again.output
    other_scale = runner.invoke(app, ["paste-back", out, "--photos-scale", "1"])
    assert "restored 1 photo(s)" in other_scale.output and read_restored(out).to_pylist()[0]["width"] == 320
    photo.unlink()
    gone = runner.invoke(app, ["paste-back", out, "--photos-scale", "2", "--overwrite"])
    assert gone.exit_code == 0 and "group" in gone.output and read_restored(out).to_pylist()[0]["status"] == "failed"


def test_paste_back_of_a_job_without_photo_rows_says_so(tmp_path):
    from datetime import datetime, timezone

    from pulse_ray.io.manifest import write_table
    from pulse_ray.photos.paste import paste_back

    out = str(tmp_path / "out")
    write_table(pa.Table.from_pylist([dict(id="a", status="ok", sr_uri="x.png", finished_at=datetime.now(timezone.utc))]),
                storage.join(out, "metadata", "part-1.parquet"))
    with pytest.raises(ValueError, match="make-manifest --align ffhq"):
        paste_back(out, 2)


def test_photo_sources_folder_single_photo_and_table(tmp_path):
    import pyarrow.parquet as pq

    from pulse_ray.photos.align import _photo_rows, _table_rows

    (tmp_path / "f" / "sub").mkdir(parents=True)
    for name in ("a.jpg", "a.png", "sub/b.png"):
        (tmp_path / "f" / name).write_bytes(_png(np.zeros((8, 8, 3), np.uint8)))
    rows, files = _photo_rows(str(tmp_path / "f"))
    assert files is None and sorted(r["photo_id"] for r in rows) == ["a.jpg", "a.png", "sub/b"]
    assert _photo_rows(str(tmp_path / "f" / "sub" / "b.png"))[0] == [{"photo_id": "b", "uri": str(tmp_path / "f" / "sub" / "b.png")}]
    table = tmp_path / "t.parquet"
    pq.write_table(pa.table({"id": ["x"], "image": [b"..."], "landmarks": [[[1.0, 2.0]] * 5], "note": ["n"]}), table)
    rows, files = _photo_rows(str(table))
    assert rows is None and files == [str(table)]
    (r,) = _table_rows(files)
    assert r == {"photo_id": "x", "image": b"...", "landmarks": [[1.0, 2.0]] * 5, "source_table": str(table)}
    pq.write_table(pa.table({"name": ["x"]}), tmp_path / "bad.parquet")
    with pytest.raises(ValueError, match="needs 'id' and 'uri' and/or 'image'"):
        _table_rows([str(tmp_path / "bad.parquet")])
    with pytest.raises(FileNotFoundError, match="no photos"):
        _photo_rows(str(tmp_path / "nothing-here"))
