"""The search step: the latent search on a batch's ``ok`` rows, in a long-lived worker.

Ray Data's callable-class pattern: the executor runs a pool of actors, each of which calls
:meth:`SearchStep.setup` once (loads the generator, moves it to its GPU, sets torch's
threads) and then the step on batch after batch. Ray restarts a killed actor and retries
its batch.
"""

from __future__ import annotations

import os
import socket
import time
from dataclasses import dataclass, field

import numpy as np
import pyarrow as pa

from pulse_ray.io import images, storage
from pulse_ray.search.options import SearchOptions

from .steps import set_column

__all__ = ["SearchStep"]


@dataclass
class SearchStep:
    """``options``: the search's settings; ``generator``: its name / path / URI (loaded by
    :meth:`setup`, through ``store``); ``num_threads``: torch CPU threads; ``use_gpu``: move the
    generator to CUDA when there is one."""

    options: SearchOptions = field(default_factory=SearchOptions)
    generator: str | None = None
    store: storage.Storage = field(default_factory=storage.Storage)
    num_threads: int | None = None
    use_gpu: bool = False
    name: str = "search"
    actor: bool = True
    resources: str = "search"

    def load_generator(self):
        """The generator (also called in the driver, to check it loads and learn its resolution)."""
        import pulse_ray

        return pulse_ray.load_generator(self.generator, store=self.store)

    def search(self, lrs: list, ids: list[str]) -> list:
        """LR tensors ``[3, h, w]`` in [0, 1] -> one search result per image."""
        import pulse_ray

        return pulse_ray.upsample(lrs, generator=self.g, options=self.options, ids=ids)

    def setup(self) -> None:
        """Once per worker, before its first batch (again: nothing to do)."""
        import torch

        if getattr(self, "g", None) is not None:
            return
        if self.num_threads:
            torch.set_num_threads(max(1, int(self.num_threads)))
        g = self.load_generator()
        if self.use_gpu and torch.cuda.is_available():
            g = g.to(torch.device("cuda"))
        self.g = g
        self.worker = f"{socket.gethostname()}:{os.getpid()}"

    def _run(self, lrs, ids):
        import torch

        return self.search([torch.from_numpy(a).permute(2, 0, 1).float().div(255.0) for a in lrs], ids)

    def __call__(self, table: pa.Table) -> pa.Table:
        n = table.num_rows
        status = table.column("status").to_pylist()
        error = table.column("error").to_pylist()
        kind = table.column("error_kind").to_pylist()
        ids = table.column("id").to_pylist()
        pix = table.column("_pixels").to_pylist()
        ws = table.column("lr_width").to_pylist()
        hs = table.column("lr_height").to_pylist()
        todo = [i for i in range(n) if status[i] == "ok"]
        results: dict[int, object] = {}
        t0 = time.perf_counter()
        if todo:
            lrs = [np.frombuffer(pix[i], np.uint8).reshape(hs[i], ws[i], 3).copy() for i in todo]
            try:
                results = dict(zip(todo, self._run(lrs, [ids[i] for i in todo])))
            except Exception:
                for i, lr in zip(todo, lrs):  # isolate the failing row(s): one row at a time
                    try:
                        results[i] = self._run([lr], [ids[i]])[0]
                    except Exception as exc:
                        status[i] = "failed"
                        error[i] = f"search failed: {type(exc).__name__}: {exc}"
                        kind[i] = "search_error"
        per_image = (time.perf_counter() - t0) / max(1, len(results))
        return self._columns(table.drop_columns(["_pixels"]), results, status, error, kind, per_image)

    def _columns(self, table, results, status, error, kind, per_image) -> pa.Table:
        n, o = table.num_rows, self.options
        c = {k: [None] * n for k in ("mse", "out_mse", "conv", "loss", "restart", "steps", "seed", "sr", "sec", "grey")}
        r_ = {k: [None] * n for k in ("px", "mse", "conv", "loss", "steps", "seed")}
        for i, r in results.items():
            c["mse"][i], c["out_mse"][i] = float(r.downscale_mse), float(r.output_mse)
            c["conv"][i], c["loss"][i] = bool(r.converged), float(r.loss)
            c["restart"][i], c["steps"][i], c["seed"][i] = int(r.restart), int(r.steps), int(r.seed)
            c["sr"][i] = images.to_uint8_hwc(r.image).tobytes()
            c["sec"][i] = per_image
            c["grey"][i] = bool(r.grey)
            if o.save_restarts:
                rr = list(getattr(r, "restarts", []) or [])
                r_["px"][i] = [images.to_uint8_hwc(x.image).tobytes() for x in rr]
                r_["mse"][i] = [float(x.downscale_mse) for x in rr]
                r_["conv"][i] = [bool(x.converged) for x in rr]
                r_["loss"][i] = [float(x.loss) for x in rr]
                r_["steps"][i] = [int(x.steps) for x in rr]
                r_["seed"][i] = [int(x.seed) for x in rr]
        for name, vals, t in (
            ("status", status, pa.string()),
            ("error", error, pa.string()),
            ("error_kind", kind, pa.string()),
            ("downscale_mse", c["mse"], pa.float64()),
            ("output_mse", c["out_mse"], pa.float64()),
            ("converged", c["conv"], pa.bool_()),
            ("search_loss", c["loss"], pa.float64()),
            ("restart", c["restart"], pa.int32()),
            ("steps", c["steps"], pa.int32()),
            ("seed", c["seed"], pa.int64()),
            ("restarts", [o.restarts] * n, pa.int32()),
            ("eps", [o.eps] * n, pa.float64()),
            ("keep", [o.keep] * n, pa.string()),
            ("grey", c["grey"], pa.bool_()),
            ("generator", [str(getattr(self.g, "name", "generator"))] * n, pa.string()),
            ("seconds", c["sec"], pa.float64()),
            ("worker", [self.worker] * n, pa.string()),
            ("_sr_size", [int(self.g.resolution)] * n, pa.int32()),
            ("_sr", c["sr"], pa.binary()),
            ("_r_pixels", r_["px"], pa.list_(pa.binary())),
            ("_r_mse", r_["mse"], pa.list_(pa.float64())),
            ("_r_conv", r_["conv"], pa.list_(pa.bool_())),
            ("_r_loss", r_["loss"], pa.list_(pa.float64())),
            ("_r_steps", r_["steps"], pa.list_(pa.int32())),
            ("_r_seed", r_["seed"], pa.list_(pa.int64())),
        ):
            table = set_column(table, name, vals, t)
        return table
