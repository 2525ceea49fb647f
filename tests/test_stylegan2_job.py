"""``pulse-ray submit`` with an NVIDIA StyleGAN2 pickle as the generator, everything on S3 (loopback)."""

from __future__ import annotations

import hashlib
import io
import json

import pyarrow as pa
import pytest
from PIL import Image
from typer.testing import CliRunner

from pulse_ray.cli import app
from pulse_ray.io import storage
from pulse_ray.io.manifest import write_table
from pulse_ray.job import metadata as md

from .conftest import png_bytes
from .helpers import FIXTURES


@pytest.mark.slow
def test_submit_with_a_stylegan2_pickle_over_s3(ray_cluster, s3):
    pkl = (FIXTURES / "stylegan2_small.pkl").read_bytes()
    s3.client.put_object(Bucket=s3.bucket, Key="models/ffhq.pkl", Body=pkl)
    rows = [dict(id=f"face{i}", image=png_bytes(16, 16, 40 + i), uri=None) for i in range(2)]
    write_table(pa.Table.from_pylist(rows, schema=pa.schema([("id", pa.string()), ("image", pa.binary()),
                                                             ("uri", pa.string())])), s3.uri("manifests/m.parquet"))
    out = s3.uri("results/sg2")

    res = CliRunner().invoke(app, ["submit", s3.uri("manifests/m.parquet"), "--output", out,
                                   "--generator", s3.uri("models/ffhq.pkl"), "--restarts", "1", "--steps", "3",
                                   "--workers", "1", "--batch-size", "2", "--s3-endpoint-url", s3.endpoint,
                                   "--json", "--quiet"])
    assert res.exit_code == 0, res.output
    summary = json.loads(res.stdout.strip().splitlines()[-1])
    assert (summary["total"], summary["ok"], summary["failed"]) == (2, 2, 0)

    name = f"ffhq.pkl sha256:{hashlib.sha256(pkl).hexdigest()[:12]}"
    table = md.read_metadata(out).to_pylist()
    assert sorted(r["id"] for r in table) == ["face0", "face1"]
    for r in table:
        assert r["status"] == "ok" and r["generator"] == name and r["factor"] == 4, r
        assert r["sr_uri"] == s3.uri(f"results/sg2/sr/{r['id']}.png")
        with Image.open(io.BytesIO(storage.Storage().read_bytes(r["sr_uri"]))) as im:
            assert im.size == (64, 64)
