"""Object storage (s3://, gs://) through pyarrow.fs, with a local cache.

The design: every stage works on a local directory; a remote output is that directory's
published copy. Writers build a shard locally (atomic rename as always), then upload each
file as one object (an S3 PUT or completed multipart upload appears whole or not at all),
data first, then its done-file, index.json last, so a reader never sees an index listing
an object that is not there. Readers (mix-offline, verify, the DALI loader) pull the
objects they need into the cache, checking sizes, and read locally: DALI reads through a
local cache, at local-disk speed, and a second epoch or job on the node reads no network.

    MIDAS_PREP_CACHE     cache root (default ~/.cache/midas-prep)
    AWS_ENDPOINT_URL     an S3-compatible endpoint (MinIO, Ceph, a test server)
"""

from __future__ import annotations

import hashlib
import logging
import os
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from pipeline.format import resolve_inside

__all__ = ["is_remote", "filesystem", "cache_dir", "local_dir", "remote_sizes", "pull", "push", "delete_all",
           "delete_keys"]

logger = logging.getLogger(__name__)


def is_remote(uri: str | Path) -> bool:
    return isinstance(uri, str) and "://" in uri and not uri.startswith("file://")


def filesystem(uri: str) -> tuple[Any, str]:
    """(pyarrow FileSystem, path inside it) for s3://bucket/prefix or gs://bucket/prefix."""
    from pyarrow import fs

    if uri.startswith("s3://") and os.environ.get("AWS_ENDPOINT_URL"):
        endpoint = os.environ["AWS_ENDPOINT_URL"]
        scheme, _, host = endpoint.partition("://")
        s3 = fs.S3FileSystem(endpoint_override=host, scheme=scheme,
                             region=os.environ.get("AWS_DEFAULT_REGION", "us-east-1"))
        return s3, uri[len("s3://"):].rstrip("/")
    filesys, path = fs.FileSystem.from_uri(uri)
    return filesys, path.rstrip("/")


def cache_dir(uri: str) -> Path:
    """This node's cache directory for `uri`."""
    root = Path(os.environ.get("MIDAS_PREP_CACHE", Path.home() / ".cache" / "midas-prep"))
    name = uri.split("://", 1)[1].rstrip("/").replace("/", "_")[-60:]
    return root / f"{hashlib.sha1(uri.encode()).hexdigest()[:12]}-{name}"


def local_dir(path: str | Path) -> Path:
    """The directory a stage works in: `path` itself, or the cache of a remote URI."""
    return cache_dir(path) if is_remote(path) else Path(path)


def remote_sizes(uri: str) -> dict[str, int]:
    """{relative key: size} of every object under `uri` (empty if there is none)."""
    from pyarrow import fs

    filesys, base = filesystem(uri)
    try:
        infos = filesys.get_file_info(fs.FileSelector(base, recursive=True, allow_not_found=True))
    except FileNotFoundError:
        return {}
    return {i.path[len(base) + 1:]: i.size for i in infos if i.type == fs.FileType.File}


def pull(uri: str, local: Path, rels: Iterable[str], sizes: dict[str, int] | None = None) -> int:
    """Download `rels` of `uri` into `local` unless already there with the same size; -> bytes fetched."""
    filesys, base = filesystem(uri)
    sizes = remote_sizes(uri) if sizes is None else sizes
    fetched = 0
    for rel in rels:
        if rel not in sizes:
            continue
        # a key named in a remote index.json must land inside the cache folder, never beside it
        dst = resolve_inside(local, rel, uri, "an object to fetch", "fix that index.json on the remote")
        if dst.is_file() and dst.stat().st_size == sizes[rel]:
            continue
        dst.parent.mkdir(parents=True, exist_ok=True)
        tmp = dst.with_name(dst.name + ".tmp")
        tmp.unlink(missing_ok=True)
        with filesys.open_input_stream(f"{base}/{rel}") as src, open(tmp, "xb") as f:
            while chunk := src.read(1 << 22):
                f.write(chunk)
        os.replace(tmp, dst)
        fetched += sizes[rel]
    return fetched


def push(local: Path, uri: str, rels: Iterable[str]) -> int:
    """Upload `rels` of `local` to `uri`, one object each, in the order given; -> bytes sent.

    s3:// goes through boto3's managed transfer (one PUT, or a multipart upload above 8 MB;
    the object appears only when complete). pyarrow's S3 writer always uses multipart
    uploads, whose completion some S3-compatible servers answer in a form pyarrow rejects,
    so pyarrow.fs does the listing and reading and boto3 the writing. Other schemes
    (gs://) write through pyarrow.fs.
    """
    sent = 0
    if uri.startswith("s3://"):
        import boto3

        bucket, _, prefix = uri[len("s3://"):].partition("/")
        client = boto3.client("s3", endpoint_url=os.environ.get("AWS_ENDPOINT_URL") or None)
        for rel in rels:
            key = f"{prefix.rstrip('/')}/{rel}" if prefix else rel
            client.upload_file(str(local / rel), bucket, key)
            sent += (local / rel).stat().st_size
        return sent
    filesys, base = filesystem(uri)
    for rel in rels:
        with open(local / rel, "rb") as f, filesys.open_output_stream(f"{base}/{rel}") as dst:
            while chunk := f.read(1 << 22):
                dst.write(chunk)
                sent += len(chunk)
    return sent


def delete_all(uri: str) -> None:
    """Remove every object under `uri` (--overwrite of a remote output)."""
    filesys, base = filesystem(uri)
    try:
        filesys.delete_dir_contents(base, missing_dir_ok=True)
    except FileNotFoundError:
        pass


def delete_keys(uri: str, rels: Iterable[str]) -> int:
    """Remove the objects `rels` under `uri` (those missing are skipped); -> how many were removed."""
    filesys, base = filesystem(uri)
    n = 0
    for rel in rels:
        try:
            filesys.delete_file(f"{base}/{rel}")
            n += 1
        except FileNotFoundError:
            continue
    return n
