"""Shared fixtures: fake AWS credentials, a real S3 endpoint on loopback (moto's
server mode), an embedded Ray (2 CPUs), small image helpers and fakes for
stage unit tests.

Never real credentials: every AWS variable a test process could pick up is
replaced for the whole session (before Ray starts, so Ray workers inherit the
fakes too) and the shared config / credentials files are pointed at nothing.
"""

from __future__ import annotations

import io
import os
import sys
import uuid
from dataclasses import dataclass, field

import numpy as np
import pytest

TESTS_DIR = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(TESTS_DIR)
if REPO not in sys.path:
    sys.path.insert(0, REPO)

FAKE_AWS = {
    "AWS_ACCESS_KEY_ID": "testing",
    "AWS_SECRET_ACCESS_KEY": "testing",
    "AWS_SESSION_TOKEN": "testing",
    "AWS_DEFAULT_REGION": "us-east-1",
    "AWS_REGION": "us-east-1",
    "AWS_CONFIG_FILE": os.devnull,
    "AWS_SHARED_CREDENTIALS_FILE": os.devnull,
    "AWS_EC2_METADATA_DISABLED": "true",
}


@pytest.fixture(scope="session", autouse=True)
def _fake_aws_env():
    mp = pytest.MonkeyPatch()
    for k in ("AWS_PROFILE", "AWS_DEFAULT_PROFILE", "AWS_ENDPOINT_URL", "AWS_ENDPOINT_URL_S3",
              "AWS_ROLE_ARN", "AWS_WEB_IDENTITY_TOKEN_FILE", "AWS_CONTAINER_CREDENTIALS_FULL_URI",
              "AWS_CONTAINER_CREDENTIALS_RELATIVE_URI"):
        mp.delenv(k, raising=False)
    for k, v in FAKE_AWS.items():
        mp.setenv(k, v)
    yield
    mp.undo()


@pytest.fixture(autouse=True)
def _reset_storage_endpoint():
    """``set_s3_endpoint_url`` is process-wide; no test leaks it into the next."""
    from pulse_ray.io import storage

    yield
    storage._endpoint_override = None


# ----------------------------------------------------------------------------- S3 (moto server)


@pytest.fixture(scope="session")
def moto_server(_fake_aws_env):
    from moto.server import ThreadedMotoServer

    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    yield f"http://{host}:{port}"
    server.stop()


@dataclass
class S3Env:
    endpoint: str
    bucket: str
    client: object

    def uri(self, key: str) -> str:
        return f"s3://{self.bucket}/{key.lstrip('/')}"

    def keys(self, prefix: str = "") -> list[str]:
        out = []
        for page in self.client.get_paginator("list_objects_v2").paginate(Bucket=self.bucket, Prefix=prefix):
            out += [o["Key"] for o in page.get("Contents", []) or []]
        return sorted(out)


@pytest.fixture
def s3(moto_server, monkeypatch):
    """A fresh bucket on the loopback S3 endpoint; AWS_ENDPOINT_URL points at it."""
    import boto3

    monkeypatch.setenv("AWS_ENDPOINT_URL", moto_server)
    for k, v in FAKE_AWS.items():
        monkeypatch.setenv(k, v)
    client = boto3.client("s3", endpoint_url=moto_server)
    bucket = f"test-{uuid.uuid4().hex[:12]}"
    client.create_bucket(Bucket=bucket)
    return S3Env(endpoint=moto_server, bucket=bucket, client=client)


# ----------------------------------------------------------------------------- Ray


@pytest.fixture(scope="module")
def ray_cluster(_fake_aws_env):
    """Embedded Ray on this machine: 2 CPUs, a small object store, no dashboard.

    Module-scoped: other modules (test_nightly.py) start their own Ray, and only
    one can be up in a process at a time.
    """
    import ray

    if ray.is_initialized():  # left over from a module that did not shut down
        ray.shutdown()
    from pulse_ray.job.submit import worker_runtime_env

    env = worker_runtime_env()
    env["env_vars"]["PYTHONPATH"] = os.pathsep.join([env["env_vars"]["PYTHONPATH"], TESTS_DIR])
    ray.init(
        num_cpus=2,
        object_store_memory=250 * 1024**2,
        include_dashboard=False,
        runtime_env=env,
        logging_level="WARNING",
    )
    yield ray
    ray.shutdown()


# ----------------------------------------------------------------------------- core fixtures


@pytest.fixture(scope="session")
def reference():
    """Numbers recorded from the public PULSE reference code (shared/fixtures)."""
    from .helpers import load_reference

    return load_reference()


# ----------------------------------------------------------------------------- generator, images


#: The generator end-to-end tests use: the bundled default, unless CI points
#: PULSE_RAY_TEST_GENERATOR at another one (a name, path or URI).
GENERATOR_SOURCE = os.environ.get("PULSE_RAY_TEST_GENERATOR") or None


@pytest.fixture(scope="session")
def generator():
    import pulse_ray

    return pulse_ray.load_generator(GENERATOR_SOURCE)


def png_bytes(h: int, w: int, seed: int = 0, mode: str = "RGB", fmt: str = "PNG") -> bytes:
    from PIL import Image

    rng = np.random.default_rng(seed)
    if mode == "L":
        img = Image.fromarray(rng.integers(0, 256, (h, w), dtype=np.uint8), "L")
    else:
        img = Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8), "RGB")
    buf = io.BytesIO()
    img.save(buf, format=fmt)
    return buf.getvalue()


def bomb_png(width: int = 100_000, height: int = 100_000) -> bytes:
    """A tiny PNG whose header claims an enormous picture (decompression bomb)."""
    import struct
    import zlib

    def chunk(tag: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + tag + data + struct.pack(">I", zlib.crc32(tag + data) & 0xFFFFFFFF)

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    idat = zlib.compress(b"\x00" * 1024)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", idat) + chunk(b"IEND", b"")


# ----------------------------------------------------------------------------- fakes (stage unit tests)


class FakeGen:
    resolution = 32
    name = "fake32"
    num_layers = 8

    def to(self, device):
        return self


@dataclass
class FakeResult:
    image: object
    downscale_mse: float
    converged: bool
    restart: int
    steps: int
    seed: int
    restarts: list = field(default_factory=list)
    output_mse: float = 1e-3
    loss: float = 0.25


def fake_upsample(lrs, generator, restarts, steps, eps, seed, ids=None, keep_restarts=False, keep="realistic"):
    """Nearest-neighbour 'search': deterministic, instant."""
    import torch

    if keep not in ("realistic", "closest"):
        raise ValueError(f"unknown keep rule {keep!r}")

    out = []
    for lr in lrs:
        f = generator.resolution // lr.shape[-1]
        img = torch.nn.functional.interpolate(lr[None, :3], scale_factor=f, mode="nearest")[0]
        rs = [FakeResult(img, 1e-3 * (k + 1), True, k, steps, seed + k) for k in range(restarts)] if keep_restarts else []
        out.append(FakeResult(img, 1e-3, True, 0, steps, seed, rs))
    return out
