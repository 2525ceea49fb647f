"""Tiny storage layer: local paths, ``file://`` URIs and ``s3://`` URIs.

Contract (docs/CONTRACTS.md)::

    read_bytes(uri) -> bytes ; write_bytes(uri, data)   # atomic: temp + rename locally; S3 put
    exists(uri) -> bool ; list_uris(prefix, suffix=None) -> list[str] ; join(base, *parts) -> str

S3 goes through boto3 with the standard credential chain. A :class:`Storage` holds the
settings (``Storage(s3_endpoint_url=...)``, from ``--s3-endpoint-url``; without one,
``AWS_ENDPOINT_URL`` from the environment) and does the operations; it is frozen and
picklable, so the job hands it to every step instead of setting process-global state.
The module-level functions are those of ``Storage()``. Credentials are never logged or
put into error messages.
"""

from __future__ import annotations

import os
import re
import stat
import tempfile
import threading
import uuid
from dataclasses import dataclass
from typing import Iterable
from urllib.parse import unquote, urlparse

__all__ = [
    "Storage",
    "StorageError",
    "TooLarge",
    "is_s3",
    "split_s3",
    "local_path",
    "check_scheme",
    "read_bytes",
    "write_bytes",
    "exists",
    "isdir",
    "delete",
    "list_uris",
    "join",
    "arrow_filesystem",
]


class StorageError(OSError):
    """An object could not be read, written or listed (message names the URI)."""


#: Every S3 call is bounded: seconds to connect, seconds to wait for a reply, attempts in all
#: (botocore's standard retry mode; the same for pyarrow's S3 filesystem).
S3_CONNECT_TIMEOUT = 10.0
S3_READ_TIMEOUT = 30.0
S3_MAX_ATTEMPTS = 3

_clients: dict = {}
_clients_lock = threading.Lock()


# ----------------------------------------------------------------------------- URIs


def is_s3(uri: str) -> bool:
    return str(uri).startswith("s3://")


def split_s3(uri: str) -> tuple[str, str]:
    """``s3://bucket/key/part`` -> ``("bucket", "key/part")``."""
    if not is_s3(uri):
        raise ValueError(f"not an s3:// URI: {uri!r}")
    rest = str(uri)[len("s3://"):]
    bucket, _, key = rest.partition("/")
    if not bucket:
        raise ValueError(f"s3 URI without a bucket: {uri!r}")
    return bucket, key


_SCHEME = re.compile(r"^([A-Za-z][A-Za-z0-9+.-]*)://")


def check_scheme(uri: str) -> None:
    """Raise ``ValueError`` for a URI whose scheme is neither ``file://`` nor ``s3://``."""
    m = _SCHEME.match(os.fspath(uri))
    if m and m.group(1) not in ("file", "s3"):
        raise ValueError(f"unsupported URI scheme {m.group(1)!r} in {uri!r} (use a path, file:// or s3://)")


def local_path(uri: str) -> str:
    """A local path for a local path or ``file://`` URI."""
    uri = os.fspath(uri)
    if uri.startswith("file://"):
        parsed = urlparse(uri)
        if parsed.netloc not in ("", "localhost"):
            raise ValueError(f"file:// URI with a remote host is not supported: {uri!r}")
        return unquote(parsed.path)
    check_scheme(uri)
    return uri


def join(base: str, *parts: str) -> str:
    """Join with ``/`` for URIs and ``os.path.join`` for plain paths."""
    base = os.fspath(base)
    parts = tuple(str(p).strip("/") for p in parts if str(p) != "")
    if is_s3(base) or base.startswith("file://"):
        out = base.rstrip("/")
        for p in parts:
            out = out + "/" + p
        return out
    return os.path.join(base, *parts) if parts else base


def _umask() -> int:
    """This process's umask (read without changing it where /proc allows)."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except OSError:
        pass
    with _clients_lock:  # elsewhere: set and restore (brief)
        mask = os.umask(0o022)
        os.umask(mask)
    return mask


# ----------------------------------------------------------------------------- S3 client


def _client(endpoint: str | None):
    """A boto3 S3 client (cached per process, endpoint and credential identity)."""
    import boto3
    from botocore.config import Config

    # The key *id* is not secret; it only keys the cache so that a change of
    # credentials in the environment (tests) gets a fresh client.
    key = (
        os.getpid(),
        endpoint,
        os.environ.get("AWS_ACCESS_KEY_ID"),
        os.environ.get("AWS_PROFILE"),
        os.environ.get("AWS_DEFAULT_REGION") or os.environ.get("AWS_REGION"),
        (S3_CONNECT_TIMEOUT, S3_READ_TIMEOUT, S3_MAX_ATTEMPTS),
    )
    with _clients_lock:
        client = _clients.get(key)
        if client is None:
            session = boto3.session.Session()
            client = session.client(
                "s3",
                endpoint_url=endpoint,
                config=Config(connect_timeout=S3_CONNECT_TIMEOUT, read_timeout=S3_READ_TIMEOUT,
                              retries={"max_attempts": S3_MAX_ATTEMPTS, "mode": "standard"}),
            )
            _clients[key] = client
        return client


def _s3_error(op: str, uri: str, exc: Exception) -> StorageError:
    code = ""
    resp = getattr(exc, "response", None)
    if isinstance(resp, dict):
        code = resp.get("Error", {}).get("Code", "") or ""
    detail = "" if code else (str(exc).strip().splitlines() or [""])[0][:200]
    msg = f"{op} {uri}: {code or type(exc).__name__}" + (f" ({detail})" if detail else "")
    if code in ("NoSuchKey", "404", "NotFound", "NoSuchBucket"):
        return _NotFound(msg)
    return StorageError(msg)


class _NotFound(StorageError, FileNotFoundError):
    pass


class TooLarge(StorageError):
    """An object over the byte limit of the read (nothing past the limit was read)."""


def _too_large(uri: str, size: int | None, limit: int) -> TooLarge:
    size_part = f"{size} bytes, " if size is not None else ""
    return TooLarge(f"cannot read {uri}: {size_part}over the {limit}-byte limit")


def _file_kind(mode: int) -> str:
    for test, name in ((stat.S_ISFIFO, "a FIFO"), (stat.S_ISCHR, "a character device"),
                       (stat.S_ISBLK, "a block device"), (stat.S_ISSOCK, "a socket")):
        if test(mode):
            return name
    return "not a file"


# ----------------------------------------------------------------------------- operations


@dataclass(frozen=True)
class Storage:
    """Where and how to reach objects: ``s3_endpoint_url`` (None: ``AWS_ENDPOINT_URL`` /
    ``AWS_ENDPOINT_URL_S3`` of the process). Frozen and picklable (it travels with the job's steps)."""

    s3_endpoint_url: str | None = None

    def endpoint(self) -> str | None:
        """The S3 endpoint in use (None: AWS's own)."""
        return self.s3_endpoint_url or os.environ.get("AWS_ENDPOINT_URL_S3") or os.environ.get("AWS_ENDPOINT_URL") or None

    def pinned(self) -> Storage:
        """This storage with the endpoint of this process's environment written in, so that it
        means the same in worker processes that do not share the environment."""
        return Storage(self.endpoint())

    def client(self):
        """A boto3 S3 client for this endpoint (cached per process)."""
        return _client(self.endpoint())

    def read_bytes(self, uri: str, max_bytes: int | None = None) -> bytes:
        """Whole object as bytes. Raises ``FileNotFoundError`` (a StorageError) when absent.

        Only regular files are read (a FIFO, a device or a folder is refused, never waited on);
        with ``max_bytes`` an object larger than that raises :class:`TooLarge` after reading
        at most ``max_bytes + 1`` bytes (an S3 object is refused by its size, before its body)."""
        uri = os.fspath(uri)
        if is_s3(uri):
            bucket, key = split_s3(uri)
            try:
                obj = self.client().get_object(Bucket=bucket, Key=key)
            except Exception as exc:  # botocore ClientError, connection errors
                raise _s3_error("cannot read", uri, exc) from None
            body = obj["Body"]
            try:
                size = obj.get("ContentLength")
                if max_bytes is not None and size is not None and size > max_bytes:
                    raise _too_large(uri, size, max_bytes)
                data = body.read() if max_bytes is None else body.read(max_bytes + 1)
            except TooLarge:
                raise
            except Exception as exc:
                raise _s3_error("cannot read", uri, exc) from None
            finally:
                body.close()
            if max_bytes is not None and len(data) > max_bytes:
                raise _too_large(uri, None, max_bytes)
            return data
        path = local_path(uri)
        try:
            # O_NONBLOCK: opening a FIFO must not wait for a writer
            fd = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_CLOEXEC", 0))
        except FileNotFoundError:
            raise _NotFound(f"cannot read {uri}: no such file") from None
        except IsADirectoryError:
            raise StorageError(f"cannot read {uri}: is a directory") from None
        except OSError as exc:
            raise StorageError(f"cannot read {uri}: {exc.strerror or exc}") from None
        try:
            st = os.fstat(fd)
            if stat.S_ISDIR(st.st_mode):
                raise StorageError(f"cannot read {uri}: is a directory")
            if not stat.S_ISREG(st.st_mode):
                raise StorageError(f"cannot read {uri}: not a regular file ({_file_kind(st.st_mode)})")
            if max_bytes is not None and st.st_size > max_bytes:
                raise _too_large(uri, st.st_size, max_bytes)
            limit = st.st_size + 1 if max_bytes is None else max_bytes + 1
            chunks, got = [], 0
            while True:  # a file that grows while read still stops at the limit
                chunk = os.read(fd, min(1 << 20, max(1, limit - got)) if max_bytes is not None else 1 << 20)
                if not chunk:
                    break
                chunks.append(chunk)
                got += len(chunk)
                if max_bytes is not None and got > max_bytes:
                    raise _too_large(uri, None, max_bytes)
            return b"".join(chunks)
        except OSError as exc:
            if isinstance(exc, StorageError):
                raise
            raise StorageError(f"cannot read {uri}: {exc.strerror or exc}") from None
        finally:
            os.close(fd)

    def write_bytes(self, uri: str, data: bytes) -> None:
        """Write atomically: a reader sees the old object, or the whole new one.

        Locally: a temporary file in the target folder, fsync, then ``os.replace``.
        On S3 a single PUT is atomic.
        """
        uri = os.fspath(uri)
        data = bytes(data)
        if is_s3(uri):
            bucket, key = split_s3(uri)
            try:
                self.client().put_object(Bucket=bucket, Key=key, Body=data)
            except Exception as exc:
                raise _s3_error("cannot write", uri, exc) from None
            return
        path = local_path(uri)
        folder = os.path.dirname(os.path.abspath(path))
        try:
            os.makedirs(folder, exist_ok=True)
            fd, tmp = tempfile.mkstemp(prefix=".tmp-" + uuid.uuid4().hex[:8] + "-", dir=folder)
            try:
                os.fchmod(fd, 0o666 & ~_umask())  # the mode open() would give, not mkstemp's 0600
                with os.fdopen(fd, "wb") as f:
                    f.write(data)
                    f.flush()
                    os.fsync(f.fileno())
                os.replace(tmp, path)
            except BaseException:
                try:
                    os.unlink(tmp)
                except OSError:
                    pass
                raise
        except StorageError:
            raise
        except OSError as exc:  # a read-only or full file system, no permission: one line names the file
            raise StorageError(f"cannot write {uri}: {exc.strerror or exc}") from None

    def exists(self, uri: str) -> bool:
        uri = os.fspath(uri)
        if is_s3(uri):
            bucket, key = split_s3(uri)
            try:
                self.client().head_object(Bucket=bucket, Key=key)
                return True
            except Exception as exc:
                resp = getattr(exc, "response", None)
                code = resp.get("Error", {}).get("Code", "") if isinstance(resp, dict) else ""
                if code in ("404", "NoSuchKey", "NotFound"):
                    return False
                raise _s3_error("cannot stat", uri, exc) from None
        return os.path.exists(local_path(uri))


    def isdir(self, uri: str) -> bool:
        """Local: a directory. S3: at least one object under ``uri/``."""
        uri = os.fspath(uri)
        if is_s3(uri):
            bucket, key = split_s3(uri)
            prefix = key.rstrip("/") + "/" if key.strip("/") else ""
            try:
                resp = self.client().list_objects_v2(Bucket=bucket, Prefix=prefix, MaxKeys=1)
            except Exception as exc:
                raise _s3_error("cannot list", uri, exc) from None
            return resp.get("KeyCount", 0) > 0
        return os.path.isdir(local_path(uri))


    def delete(self, uri: str) -> None:
        """Remove one object / file; absent is fine."""
        uri = os.fspath(uri)
        if is_s3(uri):
            bucket, key = split_s3(uri)
            try:
                self.client().delete_object(Bucket=bucket, Key=key)
            except Exception as exc:
                raise _s3_error("cannot delete", uri, exc) from None
            return
        try:
            os.unlink(local_path(uri))
        except FileNotFoundError:
            pass


    def list_uris(self, prefix: str, suffix: str | Iterable[str] | None = None) -> list[str]:
        """Every object below a folder / S3 prefix (recursive), sorted, as full URIs.

        ``prefix`` is treated as a folder: ``s3://b/data`` lists ``s3://b/data/...``
        (not ``s3://b/database``). Hidden names (``.x``, ``_x``: temporary files, Spark
        markers) are skipped. ``suffix`` filters by case-insensitive name ending(s).
        Results keep the input's form (plain path, ``file://`` or ``s3://``).
        """
        prefix = os.fspath(prefix)
        if isinstance(suffix, str):
            suffixes: tuple[str, ...] | None = (suffix.lower(),)
        elif suffix is None:
            suffixes = None
        else:
            suffixes = tuple(s.lower() for s in suffix)

        def keep(name: str) -> bool:
            base = name.rsplit("/", 1)[-1]
            if not base or base.startswith(".") or base.startswith("_"):
                return False
            return suffixes is None or base.lower().endswith(suffixes)

        out: list[str] = []
        if is_s3(prefix):
            bucket, key = split_s3(prefix)
            key_prefix = key.rstrip("/") + "/" if key.strip("/") else ""
            try:
                paginator = self.client().get_paginator("list_objects_v2")
                for page in paginator.paginate(Bucket=bucket, Prefix=key_prefix):
                    for obj in page.get("Contents", []) or []:
                        k = obj["Key"]
                        if k.endswith("/"):
                            continue
                        rel = k[len(key_prefix):]
                        if any(part.startswith((".", "_")) for part in rel.split("/")):
                            continue
                        if keep(k):
                            out.append(f"s3://{bucket}/{k}")
            except Exception as exc:
                raise _s3_error("cannot list", prefix, exc) from None
            return sorted(out)

        root = local_path(prefix)
        as_file_uri = prefix.startswith("file://")
        if not os.path.isdir(root):
            return []
        for dirpath, dirnames, filenames in os.walk(root):
            dirnames[:] = sorted(d for d in dirnames if not d.startswith((".", "_")))
            for name in filenames:
                if keep(name):
                    full = os.path.join(dirpath, name)
                    out.append("file://" + os.path.abspath(full) if as_file_uri else full)
        return sorted(out)


    def arrow_filesystem(self, uri: str):
        """``(pyarrow.fs.FileSystem, path)`` for Ray Data / pyarrow readers and writers."""
        import pyarrow.fs as pafs

        uri = os.fspath(uri)
        if is_s3(uri):
            bucket, key = split_s3(uri)
            kwargs = {}
            endpoint = self.endpoint()
            if endpoint:
                parsed = urlparse(endpoint)
                if parsed.scheme in ("http", "https"):
                    kwargs["endpoint_override"] = parsed.netloc + parsed.path.rstrip("/")
                    kwargs["scheme"] = parsed.scheme
                else:
                    kwargs["endpoint_override"] = endpoint
            region = os.environ.get("AWS_DEFAULT_REGION") or os.environ.get("AWS_REGION")
            if region:
                kwargs["region"] = region
            fs = pafs.S3FileSystem(connect_timeout=S3_CONNECT_TIMEOUT, request_timeout=S3_READ_TIMEOUT,
                                   retry_strategy=pafs.AwsStandardS3RetryStrategy(max_attempts=S3_MAX_ATTEMPTS),
                                   **kwargs)
            return fs, f"{bucket}/{key}".rstrip("/")
        return pafs.LocalFileSystem(), os.path.abspath(local_path(uri))


_DEFAULT = Storage()
read_bytes = _DEFAULT.read_bytes
write_bytes = _DEFAULT.write_bytes
exists = _DEFAULT.exists
isdir = _DEFAULT.isdir
delete = _DEFAULT.delete
list_uris = _DEFAULT.list_uris
arrow_filesystem = _DEFAULT.arrow_filesystem
