"""Shared fixtures: fake AWS credentials, a real S3 endpoint on loopback (moto's
server mode), an embedded Ray (2 CPUs), small image helpers, and the seams that
replace or wrap a job step (a fake search, a search that kills its worker once, a
driver interrupt): production code has no test-only arguments.

The tests read fixtures and face data from ``../shared`` beside the checkout
(``shared/fixtures``, ``shared/data``); without it the run stops at collection.

Never real credentials: every AWS variable a test process could pick up is
replaced for the whole session (before Ray starts, so Ray workers inherit the
fakes too) and the shared config / credentials files are pointed at nothing.
"""

from __future__ import annotations

import importlib
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
SHARED = os.path.join(os.path.dirname(REPO), "shared")


def pytest_configure(config):
    if not os.path.isdir(os.path.join(SHARED, "fixtures")):
        raise pytest.UsageError(f"the tests need the shared fixtures and data beside the checkout: "
                                f"{os.path.join(SHARED, 'fixtures')} is missing (see README.md, Tests)")

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
    from pulse_ray.job.cluster import worker_runtime_env

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


# ----------------------------------------------------------------------------- fakes and step seams


class FakeGen:
    resolution = 32
    name = "fake32"
    num_layers = 8
    source_sha256 = None

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
    grey: bool = False


def fake_upsample(lrs, generator, options):
    """Nearest-neighbour 'search': deterministic, instant (honours restarts, steps, seed, save_restarts)."""
    import torch

    o = options
    out = []
    for lr in lrs:
        f = generator.resolution // lr.shape[-1]
        img = torch.nn.functional.interpolate(lr[None, :3], scale_factor=f, mode="nearest")[0]
        rs = [FakeResult(img, 1e-3 * (k + 1), True, k, o.steps, o.seed + k) for k in range(o.restarts)] \
            if o.save_restarts else []
        out.append(FakeResult(img, 1e-3, True, 0, o.steps, o.seed, rs))
    return out


from pulse_ray.job.search_step import SearchStep  # noqa: E402  (after the sys.path set-up above)


@dataclass
class FakeSearchStep(SearchStep):
    """The search step with a 32-px fake generator and :func:`fake_upsample` (or ``upsample_fn``,
    called as ``fn(lrs, generator, options)``); picklable, so Ray actors run it too."""

    upsample_fn: object = None

    def load_generator(self):
        return FakeGen()

    def search(self, lrs, ids):
        return (self.upsample_fn or fake_upsample)(lrs, self.g, self.options)


@dataclass
class KillOnceSearchStep(SearchStep):
    """Wraps the search step: the first batch ever seen (across actor restarts) kills the
    actor's process outright, as an OOM kill or a lost node would; ``marker`` records the pid."""

    marker: str = ""

    def __call__(self, table):
        if not os.path.exists(self.marker):
            with open(self.marker, "w") as f:
                f.write(str(os.getpid()))
            os._exit(1)
        return super().__call__(table)


from pulse_ray.job.write_step import WriteStep  # noqa: E402


@dataclass(frozen=True)
class DieAfterImagesWriteStep(WriteStep):
    """Wraps the write step: the first batch ever seen (``marker`` absent) writes its SR images,
    then SIGKILLs the driver ``driver_pid`` before the batch's metadata part is written (a job that
    dies between an image and its row); ``marker`` records the ids whose images were written."""

    marker: str = ""
    driver_pid: int = 0

    def __call__(self, table):
        import signal
        import time
        from datetime import datetime, timezone

        if os.path.exists(self.marker):
            return super().__call__(table)
        ids = table.column("id").to_pylist()
        ok = [i for i, s in enumerate(table.column("status").to_pylist()) if s == "ok"]
        for i in ok:
            self._write_images(table, i, datetime.now(timezone.utc), [])
        with open(self.marker, "w") as f:
            f.write("\n".join(ids[i] for i in ok))
        os.kill(self.driver_pid, signal.SIGKILL)
        time.sleep(600)  # the rest of the job's processes go with the driver's process group


@pytest.fixture
def fake_search(monkeypatch):
    """``submit`` runs :class:`FakeSearchStep` instead of the real search."""
    monkeypatch.setattr(importlib.import_module("pulse_ray.job.submit"), "SearchStep", FakeSearchStep)
    return FakeSearchStep


@pytest.fixture
def kill_first_search_batch(monkeypatch, tmp_path):
    """``submit``'s search step kills its worker on the first batch, once; returns the marker file."""
    import functools

    marker = tmp_path / "killed"
    monkeypatch.setattr(importlib.import_module("pulse_ray.job.submit"), "SearchStep",
                        functools.partial(KillOnceSearchStep, marker=str(marker)))
    return marker


@pytest.fixture
def interrupt_after():
    """``with interrupt_after(n): submit(...)``: the driver gets a KeyboardInterrupt (as from
    Ctrl-C) once ``n`` rows are done."""
    import contextlib

    from pulse_ray.job.progress import Progress

    @contextlib.contextmanager
    def arm(n: int):
        original = Progress.update

        def update(self, ok, failed):
            original(self, ok, failed)
            if self.ok + self.failed >= n:
                raise KeyboardInterrupt(f"test interrupt after {self.ok + self.failed} rows")

        Progress.update = update
        try:
            yield
        finally:
            Progress.update = original

    return arm


def job_options(**kw):
    """``JobOptions`` from one flat set of keywords (search fields go to its ``search``), as the flags are."""
    import dataclasses

    from pulse_ray.job.options import JobOptions
    from pulse_ray.search.options import SearchOptions

    names = {f.name for f in dataclasses.fields(SearchOptions)} - {"batch_size"}
    search = SearchOptions(**{k: kw.pop(k) for k in list(kw) if k in names})
    return JobOptions(search=search, **kw)
