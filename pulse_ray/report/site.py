"""Where a report is written: a local folder or an ``s3://`` prefix, with the right content types."""

from __future__ import annotations

import mimetypes
import os
from pathlib import Path

from pulse_ray.io import storage

__all__ = ["Site", "CONTENT_TYPES"]

CONTENT_TYPES = {
    ".html": "text/html; charset=utf-8",
    ".js": "text/javascript; charset=utf-8",
    ".json": "application/json",
    ".png": "image/png",
    ".jpg": "image/jpeg",
    ".css": "text/css; charset=utf-8",
}


def content_type(name: str) -> str:
    for suffix, ct in CONTENT_TYPES.items():
        if name.endswith(suffix):
            return ct
    return mimetypes.guess_type(name)[0] or "application/octet-stream"


class Site:
    """The report's folder: write, list and remove files by their path relative to it, through ``store``."""

    def __init__(self, root: str, store: storage.Storage):
        self.root = str(root).rstrip("/") if storage.is_s3(root) else str(root)
        self.store = store

    def uri(self, rel: str) -> str:
        return storage.join(self.root, rel)

    def write(self, rel: str, data: bytes) -> None:
        uri = self.uri(rel)
        if storage.is_s3(uri):
            bucket, key = storage.split_s3(uri)
            try:
                self.store.client().put_object(Bucket=bucket, Key=key, Body=bytes(data),
                                               ContentType=content_type(rel))
            except Exception as exc:
                raise storage.StorageError(f"cannot write {uri}: {type(exc).__name__}") from None
        else:
            self.store.write_bytes(uri, data)

    def files(self, sub: str) -> set[str]:
        """Paths (relative to the root) of the files under ``sub``."""
        base = storage.join(self.root, sub)
        return {sub + "/" + u[len(base):].strip("/").replace("\\", "/") for u in self.store.list_uris(base)}

    def delete(self, rel: str) -> None:
        self.store.delete(self.uri(rel))

    def location(self, rel: str) -> str:
        """What to open: a file:// URL for a local report, the s3:// URI otherwise."""
        uri = self.uri(rel)
        if storage.is_s3(uri):
            return uri
        return Path(os.path.abspath(storage.local_path(uri))).as_uri()
