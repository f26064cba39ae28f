"""verify: check every shard index.json lists (originals and mixed), and repair damaged ones.

Checks, each problem naming the shard (and sample): the file is present with the recorded
size and sha256; it reads (tar members named `<key>.<ext>`, no paths; Parquet columns); it
holds the recorded number of samples; its .idx matches the tar; every sample's arrays load
with pickling off, have the index's shape and dtype, match their crc32, and the soft label
sums to 1. `--repair` deletes the damaged shards and re-runs build-shards / mix-offline
with the config stored in index.json, which rebuilds exactly those shards (resume).
"""

from __future__ import annotations

import logging
import tarfile
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from pipeline.read import (
    MEMBERS,
    ShardError,
    check_files,
    decode_members,
    decode_parquet_row,
    load_idx,
    load_index,
    sample_spec,
)
from pipeline.remote import is_remote, local_dir, pull, remote_sizes
from pipeline.write import INDEX_NAME, MIXED_DIR, STATE_DIR, entry_files, mixed_indexes

__all__ = ["Problem", "VerifyReport", "verify_shards", "repair_shards"]

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class Problem:
    path: str  # the shard file
    message: str
    sample: str = ""  # the sample key, when one sample is at fault
    shard: str = ""  # the planned shard name (part1-000003, copy0-000001)
    index: str = ""  # the index.json that lists it

    def __str__(self) -> str:
        return f"{self.path}{' sample ' + self.sample if self.sample else ''}: {self.message}"


@dataclass
class VerifyReport:
    indexes: list[str] = field(default_factory=list)
    files: int = 0
    samples: int = 0
    problems: list[Problem] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.problems


def _indexes(shards: Path) -> list[Path]:
    found = [shards / INDEX_NAME] if (shards / INDEX_NAME).is_file() else []
    return found + mixed_indexes(shards)


def _reason(e: ShardError) -> str:
    """The reader's message without the location (Problem names it) and the advice to run verify."""
    return str(e).split(": ", 1)[-1].replace("; run `midas-prep verify`", "")


def _verify_tar(path: Path, entry: dict[str, Any], root: Path, spec: dict, report: VerifyReport) -> None:
    where = dict(path=str(path), shard=entry.get("shard", ""))
    members: dict[str, dict[str, tuple[int, int]]] = {}
    data: dict[tuple[str, str], bytes] = {}
    try:
        with tarfile.open(path, mode="r:") as tar:
            for m in tar:
                if not m.isfile() or "/" in m.name or m.name.startswith(".") or "." not in m.name:
                    report.problems.append(Problem(message=f"unexpected tar member {m.name!r}", **where))
                    continue
                key, ext = m.name.split(".", 1)
                members.setdefault(key, {})[ext] = (m.offset_data, m.size)
                f = tar.extractfile(m)  # a file object over the member's bytes: nothing touches the disk
                data[(key, ext)] = f.read() if f else b""
    except (tarfile.TarError, OSError, EOFError) as e:
        report.problems.append(Problem(message=f"unreadable tar: {e}", **where))
        return
    if len(members) != entry["samples"]:
        report.problems.append(Problem(message=f"{len(members)} samples, index.json says {entry['samples']}",
                                       **where))
    if "idx" in entry and (root / entry["idx"]["path"]).is_file():
        try:
            idx = dict(load_idx(root / entry["idx"]["path"], root))
        except ShardError as e:
            report.problems.append(Problem(message=str(e).split("; run ")[0], **where))
        else:
            if idx != members:
                report.problems.append(Problem(message=f"{entry['idx']['path']} does not match the tar's members",
                                               **where))
    for key, exts in members.items():
        missing = set(MEMBERS) - set(exts)
        if missing:
            report.problems.append(Problem(message=f"missing members {sorted(missing)}", sample=key, **where))
            continue
        report.samples += 1
        try:
            decode_members(data[(key, "frames.npy")], data[(key, "soft.npy")], data[(key, "json")],
                           f"{path} sample {key}", spec)
        except ShardError as e:
            report.problems.append(Problem(message=_reason(e), sample=key, **where))


def _verify_parquet(path: Path, entry: dict[str, Any], spec: dict, report: VerifyReport) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    where = dict(path=str(path), shard=entry.get("shard", ""))
    try:
        pf = pq.ParquetFile(path)
        rows = pf.metadata.num_rows
    except (pa.ArrowException, OSError) as e:
        report.problems.append(Problem(message=f"unreadable Parquet: {e}", **where))
        return
    if rows != entry["samples"]:
        report.problems.append(Problem(message=f"{rows} samples, index.json says {entry['samples']}", **where))
    for g in range(pf.num_row_groups):
        try:
            table = pf.read_row_group(g, columns=["key", "frames", "soft", "json"])
        except (pa.ArrowException, OSError) as e:
            report.problems.append(Problem(message=f"row group {g} unreadable: {e}", **where))
            continue
        for row in table.to_pylist():
            report.samples += 1
            try:
                decode_parquet_row(row, f"{path} sample {row['key']}", spec)
            except ShardError as e:
                report.problems.append(Problem(message=_reason(e), sample=row["key"], **where))


def _pull_remote(uri: str) -> Path:
    """Fetch a remote shards tree (every index and every file they list) into the cache."""
    local = local_dir(uri)
    sizes = remote_sizes(uri)
    indexes = [k for k in sizes
               if k == INDEX_NAME or (k.startswith(f"{MIXED_DIR}/fold=") and k.endswith("/" + INDEX_NAME))]
    pull(uri, local, indexes, sizes)
    for rel in indexes:
        base = rel[: -len(INDEX_NAME)]
        doc = load_index(local / base) or {"shards": []}
        pull(uri, local, [base + f for f, _ in entry_files(doc["shards"])], sizes)
    return local


def verify_shards(shards: str | Path) -> VerifyReport:
    """Check every shard of `shards` (and of shards/mixed/fold=*) against its index.json.

    A remote `shards` (s3://, gs://) is pulled into the local cache first; problems name the URI."""
    if is_remote(shards):
        uri = str(shards).rstrip("/")
        local = _pull_remote(uri)
        report = verify_shards(local)
        prefix = str(local)
        report.problems = [replace(p, path=p.path.replace(prefix, uri, 1), index=p.index.replace(prefix, uri, 1))
                           for p in report.problems]
        report.indexes = [i.replace(prefix, uri, 1) for i in report.indexes]
        return report
    shards = Path(shards)
    report = VerifyReport()
    paths = _indexes(shards)
    if not paths:
        raise ShardError(f"{shards / INDEX_NAME} not found: nothing to verify")
    for ipath in paths:
        root = ipath.parent
        report.indexes.append(str(ipath))
        try:
            index = load_index(root)
            assert index is not None
            spec = sample_spec(index)
        except (ShardError, KeyError, TypeError, ValueError) as e:  # not JSON, another version, no sample section
            msg = str(e) if isinstance(e, ShardError) else f"index.json lacks the sample section ({e})"
            report.problems.append(Problem(path=str(ipath), message=msg.removeprefix(str(ipath)).lstrip(": "),
                                           index=str(ipath)))
            continue
        if not index.get("complete"):
            report.problems.append(Problem(path=str(ipath), message="unfinished build (complete=false)",
                                           index=str(ipath)))
        for entry in index["shards"]:
            report.files += 1
            before = len(report.problems)
            for msg in check_files(root, [entry], sha256=True):
                path, _, text = msg.partition(": ")
                report.problems.append(Problem(path=path, message=text, shard=entry.get("shard", "")))
            path = root / entry["path"]
            if path.is_file():
                if entry["format"] == "webdataset":
                    _verify_tar(path, entry, root, spec, report)
                else:
                    _verify_parquet(path, entry, spec, report)
            report.problems[before:] = [Problem(p.path, p.message, p.sample, p.shard or entry.get("shard", ""),
                                                str(ipath)) for p in report.problems[before:]]
    return report


def repair_shards(shards: str | Path, report: VerifyReport) -> list[str]:
    """Delete the damaged shards and rebuild them from the source dataset (or the source shards).

    Returns the shard names rebuilt. Uses the config stored in each index.json.
    """
    from pipeline.build import build_shards
    from pipeline.config import BuildConfig, MixConfig, load_config
    from pipeline.mix import mix_offline

    if is_remote(shards):
        raise ShardError(f"--repair works on a local shards directory; build {shards} again with build-shards "
                         "(it resumes: only the missing or damaged objects are rebuilt once you delete them)")
    shards = Path(shards)
    damaged: dict[str, set[str]] = {}
    for p in report.problems:
        if p.shard and p.index:
            damaged.setdefault(p.index, set()).add(p.shard)
    rebuilt = []
    for ipath_s, names in sorted(damaged.items()):
        ipath = Path(ipath_s)
        root = ipath.parent
        index = load_index(root)
        assert index is not None, f"{ipath} vanished during repair"
        for name in sorted(names):
            # exactly the files index.json lists for the shard (the tar, its .idx, the Parquet twin)
            for rel, _ in entry_files([e for e in index["shards"] if e.get("shard") == name]):
                (root / rel).unlink(missing_ok=True)
            (root / STATE_DIR / f"{name}.json").unlink(missing_ok=True)
            rebuilt.append(f"{root.relative_to(shards).as_posix() + '/' if root != shards else ''}{name}")
        conf = {k: v for k, v in index["config"].items() if v is not None}
        if index["kind"] == "clips":
            dataset = Path(conf["dataset_root"])
            if not dataset.exists():
                raise ShardError(f"cannot repair {root}: its source dataset {dataset} is not there")
            conf["write"] = conf["write"] | {"out": str(root), "overwrite": False}
            build_shards(load_config(BuildConfig, None, _flatten(conf)))
        else:
            conf = {k: v for k, v in conf.items() if k != "source_index_sha256"}
            conf |= {"out": str(root.parent), "overwrite": False, "fold": index["fold"]}
            mix_offline(load_config(MixConfig, None, conf))
    return rebuilt


def _flatten(d: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in d.items():
        if isinstance(v, dict):
            out |= _flatten(v, f"{prefix}{k}.")
        else:
            out[f"{prefix}{k}"] = v
    return out

