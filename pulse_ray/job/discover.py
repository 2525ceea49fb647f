"""nightly's discovery and ledger: which manifests lie under INPUT_PREFIX, their keys,
outputs and ledger entries, and what a run would do with each (see :mod:`pulse_ray.job.nightly`)."""

from __future__ import annotations

import hashlib
import json
import os
import re
import time
from dataclasses import dataclass

from pulse_ray.io import storage

__all__ = ["LEDGER_DIR", "Manifest", "PlanItem", "find_manifests", "manifest_key", "plan", "read_entry",
           "write_entry"]

LEDGER_DIR = "_ledger"
SUCCESS_MARKER = "_SUCCESS"

# ledger statuses
STARTED, FINISHED, FAILED, ERROR = "started", "finished", "failed", "error"

# plan actions
NEW, RESUME, RETRY, DONE, SKIP_FAILED = "new", "resume", "retry", "done", "skip-failed"
RUNS = (NEW, RESUME, RETRY)




@dataclass
class Manifest:
    uri: str  # what submit() gets: a .parquet file, or a folder / prefix of them
    rel: str  # its path below INPUT_PREFIX, "/"-separated ("" = the prefix itself)
    key: str  # output / ledger name
    output: str  # OUTPUT_ROOT/<key>
    ledger: str  # OUTPUT_ROOT/_ledger/<key>.json


def manifest_key(rel: str) -> str:
    """``2024-06-01/batch.parquet`` -> ``2024-06-01--batch-<8 hex>``: stable, safe in any store."""
    stem = rel[: -len(".parquet")] if rel.lower().endswith(".parquet") else rel
    slug = re.sub(r"[^A-Za-z0-9._-]+", "-", stem.strip("/").replace("/", "--"))
    slug = slug.strip("-._")[:80].rstrip("-._") or "manifest"
    digest = hashlib.sha256(rel.strip("/").encode("utf-8")).hexdigest()[:8]
    return f"{slug}-{digest}"


def norm_prefix(prefix: str) -> str:
    prefix = os.fspath(prefix)
    if storage.is_s3(prefix):
        return prefix.rstrip("/")
    return os.path.abspath(storage.local_path(prefix))


def _relative(prefix: str, uri: str) -> str:
    """``uri`` below ``prefix`` as a "/"-separated relative path."""
    if storage.is_s3(prefix):
        base = prefix.rstrip("/") + "/"
        if not uri.startswith(base):
            raise ValueError(f"{uri} is not below {prefix}")
        return uri[len(base):]
    rel = os.path.relpath(os.path.abspath(storage.local_path(uri)), norm_prefix(prefix))
    return rel.replace(os.sep, "/")


def _is_below(uri: str, root: str) -> bool:
    """Whether ``uri`` is ``root`` or inside it (same kind of store)."""
    if storage.is_s3(uri) != storage.is_s3(root):
        return False
    u, r = norm_prefix(uri), norm_prefix(root)
    return u == r or u.startswith(r.rstrip("/") + "/")


def find_manifests(input_prefix: str, output_root: str, store: storage.Storage | None = None) -> list[Manifest]:
    """Every manifest below ``input_prefix`` (see the module docstring), sorted by path.

    Anything below ``output_root`` is ignored (results include Parquet metadata files, and an
    output root inside the input prefix must not feed itself).
    """
    input_prefix = os.fspath(input_prefix)
    store = store or storage.Storage()
    files = [f for f in store.list_uris(input_prefix, suffix=".parquet") if not _is_below(f, output_root)]
    dataset_cache: dict[str, bool] = {}

    def is_dataset(rel_dir: str) -> bool:
        if rel_dir not in dataset_cache:
            name = rel_dir.rsplit("/", 1)[-1] if rel_dir else norm_prefix(input_prefix).rsplit("/", 1)[-1]
            folder = storage.join(input_prefix, rel_dir) if rel_dir else input_prefix
            dataset_cache[rel_dir] = name.lower().endswith(".parquet") or store.exists(
                storage.join(folder, SUCCESS_MARKER)
            )
        return dataset_cache[rel_dir]

    chosen: dict[str, str] = {}  # rel -> uri
    for f in files:
        rel = _relative(input_prefix, f)
        parts = rel.split("/")
        owner = None
        # the outermost dataset folder that holds this file (the prefix itself included)
        for depth in range(0, len(parts)):
            rel_dir = "/".join(parts[:depth])
            if is_dataset(rel_dir):
                owner = rel_dir
                break
        if owner is None:
            chosen[rel] = f
        elif owner not in chosen:
            chosen[owner] = storage.join(input_prefix, owner) if owner else input_prefix
    out = []
    for rel in sorted(chosen):
        key = manifest_key(rel if rel else norm_prefix(input_prefix).rsplit("/", 1)[-1])
        out.append(Manifest(
            uri=chosen[rel],
            rel=rel,
            key=key,
            output=storage.join(output_root, key),
            ledger=storage.join(output_root, LEDGER_DIR, key + ".json"),
        ))
    return out


# ----------------------------------------------------------------------------- ledger


def read_entry(ledger_uri: str, store: storage.Storage | None = None) -> dict | None:
    """A manifest's ledger entry, or None when it has none yet."""
    try:
        data = (store or storage.Storage()).read_bytes(ledger_uri)
    except FileNotFoundError:
        return None
    try:
        entry = json.loads(data.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise storage.StorageError(f"ledger entry {ledger_uri} is not valid JSON ({exc}); fix or delete it") from None
    if not isinstance(entry, dict) or "status" not in entry:
        raise storage.StorageError(f"ledger entry {ledger_uri} has no 'status'; fix or delete it")
    return entry


def write_entry(ledger_uri: str, entry: dict, store: storage.Storage) -> None:
    store.write_bytes(ledger_uri, (json.dumps(entry, indent=2, sort_keys=True) + "\n").encode("utf-8"))


def now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())


# ----------------------------------------------------------------------------- plan


@dataclass
class PlanItem:
    manifest: Manifest
    action: str  # new | resume | retry | done | skip-failed
    entry: dict | None  # the ledger entry as found

    @property
    def runs(self) -> bool:
        return self.action in RUNS


def _action(entry: dict | None, retry_failed: bool) -> str:
    if entry is None:
        return NEW
    status = entry.get("status")
    if status in (STARTED, ERROR):
        return RESUME
    if status == FINISHED:
        return RETRY if retry_failed and entry.get("exit_status") not in (0, None) else DONE
    if status == FAILED:
        return RETRY if retry_failed else SKIP_FAILED
    raise storage.StorageError(f"unknown ledger status {status!r}")


def plan(input_prefix: str, output_root: str, retry_failed: bool = False, store: storage.Storage | None = None) -> list[PlanItem]:
    """What a run would do for each manifest under ``input_prefix``."""
    items = []
    for m in find_manifests(input_prefix, output_root, store):
        entry = read_entry(m.ledger, store)
        items.append(PlanItem(m, _action(entry, retry_failed), entry))
    return items
