"""verify: check every shard index.json lists (originals and mixed), and repair damaged ones.

Checks, each problem naming the shard (and sample): the file is present with the recorded
size and sha256; it reads (tar members named `<key>.<ext>`, no paths; Parquet columns); it
holds the recorded number of samples; its .idx matches the tar; every sample's arrays load
with pickling off, have the index's shape and dtype, match their crc32, and the soft label
sums to 1. `--repair` deletes the damaged shards and re-runs build-shards / mix-offline
with the config stored in index.json, which rebuilds exactly those shards (resume).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import tarfile
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from pipeline.format import (
    FORMAT_DIRS,
    INDEX_NAME,
    MEMBERS,
    MIXED_DIR,
    STATE_DIR,
    ShardError,
    entry_files,
    json_or_none,
    mixed_indexes,
    read_index,
    shard_files,
)
from pipeline.read import check_files, decode_members, decode_parquet_row, load_idx, load_index, sample_spec
from pipeline.remote import is_remote, local_dir, pull, remote_sizes

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


UNREADABLE_INDEX = "unreadable index.json"


def _rebuild_command(shards: Path, root: Path) -> str:
    """The command that rebuilds the output at `root` from scratch (its index.json is lost)."""
    plan = json_or_none(root / STATE_DIR / "plan.json") or {}
    if root == shards:
        dataset = (plan.get("config") or {}).get("dataset_root", "DATASET")
        return f"`midas-prep build-shards {dataset} --out {root} --overwrite` (with the build's options)"
    return f"`midas-prep mix-offline --shards {shards} --out {root.parent} --overwrite` (with the mix's options)"


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
        ipath = root / entry["idx"]["path"]
        try:
            idx = dict(load_idx(ipath, root))
        except ShardError as e:
            report.problems.append(Problem(path=str(ipath), shard=entry.get("shard", ""),
                                           message=f"unreadable DALI index ({str(e).split('; run ')[0]})"))
        else:
            if idx != members:
                report.problems.append(Problem(path=str(ipath), shard=entry.get("shard", ""),
                                               message="does not match the tar's members"))
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
            index = json.loads(ipath.read_text())
            if not isinstance(index, dict) or not isinstance(index.get("shards"), list):
                raise ValueError("not an index.json object with a shards list")
        except (OSError, ValueError) as e:
            report.problems.append(Problem(path=str(ipath), index=str(ipath), message=(
                f"{UNREADABLE_INDEX} ({e}); `midas-prep verify {shards} --repair` rewrites it from {STATE_DIR}/ "
                f"when that is intact, else rebuild: {_rebuild_command(shards, root)}")))
            continue
        try:
            index = load_index(root)
            assert index is not None
            spec = sample_spec(index)
        except (ShardError, KeyError, TypeError, ValueError) as e:  # another version, no sample section
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


def tar_idx(path: Path) -> bytes:
    """The DALI index (v1.2, what `wds2idx` and write_tar write) of an existing tar."""
    lines: list[tuple[str, list[str]]] = []
    with tarfile.open(path, mode="r:") as tar:
        for m in tar:
            key, ext = m.name.split(".", 1)
            if not lines or lines[-1][0] != key:
                lines.append((key, []))
            lines[-1][1].append(f"{ext} {m.offset_data} {m.size} {m.name}")
    return (f"v1.2 {len(lines)}\n" + "".join(" ".join(parts) + "\n" for _, parts in lines)).encode()


@dataclass
class _Job:
    """What repair does to one index.json's output, decided before anything is deleted."""

    root: Path
    kind: str  # clips | mixed
    index: dict[str, Any] | None  # None: index.json unreadable, rewritten by a resume
    rebuild: list[str] = field(default_factory=list)  # shard names: delete, then rebuild
    idx: dict[str, bytes] = field(default_factory=dict)  # relative .idx path -> bytes regenerated from its tar
    run: Any = None  # the rebuild: build_shards / mix_offline bound to its config


def repair_shards(shards: str | Path, report: VerifyReport) -> list[str]:
    """Rebuild the damaged shards from the source dataset (or the source shards) and
    regenerate damaged .idx files from their intact tars; returns what was repaired.

    Every check that can fail (source dataset there and unchanged, config readable, source
    shards of mixed ones intact) runs before the first file is deleted: a repair that cannot
    finish deletes nothing and says what is missing. Holds the output's write lock.
    """
    from pipeline.lock import OutputLocked, hold_output

    if is_remote(shards):
        raise ShardError(f"--repair works on a local shards directory; build {shards} again with build-shards "
                         "(it resumes: only the missing or damaged objects are rebuilt once you delete them)")
    shards = Path(shards)
    by_index: dict[str, list[Problem]] = {}
    for p in report.problems:
        if p.index:
            by_index.setdefault(p.index, []).append(p)
    try:
        with contextlib.ExitStack() as stack:
            stack.enter_context(hold_output(shards))
            if any(Path(i).parent != shards for i in by_index):
                stack.enter_context(hold_output(shards / "mixed"))
            jobs = [_plan_repair(shards, Path(i), problems, set(by_index)) for i, problems in sorted(by_index.items())]
            return [name for job in jobs for name in _do_repair(shards, job)]
    except OutputLocked as e:
        raise ShardError(str(e)) from None
    except OSError as e:  # a read-only or full disk: what was rebuilt so far stays valid
        raise ShardError(f"cannot repair {shards}: {e}; run verify again to see what is left") from e


def _plan_repair(shards: Path, ipath: Path, problems: list[Problem], damaged_indexes: set[str]) -> _Job:
    root = ipath.parent
    if any(p.message.startswith(UNREADABLE_INDEX) for p in problems):
        plan = json_or_none(root / STATE_DIR / "plan.json")
        if not isinstance(plan, dict) or "config" not in plan:
            raise ShardError(f"cannot repair {ipath}: it is unreadable and so is {root / STATE_DIR / 'plan.json'}; "
                             f"nothing was deleted; rebuild: {_rebuild_command(shards, root)}")
        kind = "clips" if root == shards else "mixed"
        job = _Job(root, kind, None)
        if kind == "clips":
            job.run = _build_runner(shards, root, plan["config"], {}, ipath)
        else:
            raise ShardError(f"cannot repair {ipath}: it is unreadable; nothing was deleted; rebuild: "
                             f"{_rebuild_command(shards, root)}")
        return job
    index = read_index(root)
    assert index is not None, f"{ipath} vanished during repair"
    job = _Job(root, index["kind"], index)
    entries: dict[str, list[dict[str, Any]]] = {}
    for e in index["shards"]:
        entries.setdefault(e["shard"], []).append(e)
    for name in sorted({p.shard for p in problems if p.shard}):
        idx_only = {str(root / e["idx"]["path"]): e for e in entries.get(name, []) if "idx" in e}
        if all(p.path in idx_only for p in problems if p.shard == name):
            fixed = {}
            for e in {id(e): e for p in problems if p.shard == name for e in [idx_only[p.path]]}.values():
                data = _regenerated_idx(root, e)
                if data is None:
                    break
                fixed[e["idx"]["path"]] = data
            else:
                job.idx |= fixed
                continue
        job.rebuild.append(name)
    if not job.rebuild:
        return job
    conf = {k: v for k, v in index["config"].items() if v is not None}
    if job.kind == "clips":
        job.run = _build_runner(shards, root, conf, index.get("dataset") or {}, ipath)
    else:
        job.run = _mix_runner(shards, root, conf, index, damaged_indexes, ipath)
    return job


def _regenerated_idx(root: Path, entry: dict[str, Any]) -> bytes | None:
    """The .idx of an entry rebuilt from its tar, if the tar is intact and the result is the
    recorded file (sha256 of both against index.json); else None."""
    if check_files(root, [{k: v for k, v in entry.items() if k != "idx"}], sha256=True):
        return None
    try:
        data = tar_idx(root / entry["path"])
    except (tarfile.TarError, OSError, ValueError):
        return None
    return data if hashlib.sha256(data).hexdigest() == entry["idx"]["sha256"] else None


def _build_runner(shards: Path, root: Path, conf: dict[str, Any], dataset: dict[str, Any], ipath: Path) -> Any:
    """build_shards bound to the stored config, after checking it can run: the dataset is
    there (by its absolute path) and gives the plan on disk."""
    from pipeline.build import BuildError, build_shards, plan_build
    from pipeline.config import BuildConfig, ConfigError, load_config, with_added_fields
    from pipeline.errors import LayoutError

    given = conf.get("dataset_root", "")
    where = Path(dataset.get("root") or given)
    if not where.is_absolute():  # an index.json of an older build: relative to where verify runs
        where = Path.cwd() / where
    if not where.exists():
        raise ShardError(f"cannot repair {root}: its source dataset {where} (given as {given!r} when it was built) "
                         "is not there; nothing was deleted; put the dataset back there and run verify --repair "
                         "again")
    conf = with_added_fields(conf) | {"dataset_root": str(where)}
    conf["write"] = (conf.get("write") or {}) | {"out": str(root), "overwrite": False}
    try:
        cfg = load_config(BuildConfig, None, _flatten(conf))
        plan_build(cfg)  # indexes the dataset and compares its plan with the one on disk: no write
    except (ConfigError, BuildError, LayoutError) as e:
        raise ShardError(f"cannot repair {root} from {where}: {e}; nothing was deleted") from None
    return lambda: build_shards(cfg)


def _mix_runner(shards: Path, root: Path, conf: dict[str, Any], index: dict[str, Any],
                damaged_indexes: set[str], ipath: Path) -> Any:
    """mix_offline bound to the stored config, after checking the source shards are the
    ones the mixed shards were made from and are intact (or are repaired first)."""
    from pipeline.config import ConfigError, MixConfig, load_config
    from pipeline.format import INDEX_NAME
    from pipeline.mix import _sha, mix_offline

    source = Path(conf.get("shards", ""))
    if (shards / INDEX_NAME).is_file() and shards in root.parents:
        source = shards
    src_index = read_index(source) if (source / INDEX_NAME).is_file() else None
    if src_index is None:
        raise ShardError(f"cannot repair {ipath}: its source shards {source / INDEX_NAME} are not there; "
                         "nothing was deleted")
    if str(source / INDEX_NAME) not in damaged_indexes:  # else the source is repaired first
        problems = check_files(source, src_index["shards"], sha256=True)
        if problems:
            raise ShardError(f"cannot repair {ipath}: {len(problems)} source shard problem(s) ({problems[0]}); "
                             "nothing was deleted")
    if conf.get("source_index_sha256") not in (None, _sha(src_index)):
        raise ShardError(f"cannot repair {ipath}: it was mixed from another build than {source}; nothing was "
                         f"deleted; rebuild: {_rebuild_command(shards, root)}")
    conf = {k: v for k, v in conf.items() if k != "source_index_sha256"}
    conf |= {"shards": str(source), "out": str(root.parent), "overwrite": False, "fold": index["fold"]}
    try:
        cfg = load_config(MixConfig, None, conf)
    except ConfigError as e:
        raise ShardError(f"cannot repair {ipath}: its config does not load ({e}); nothing was deleted") from None
    return lambda: mix_offline(cfg)


def _do_repair(shards: Path, job: _Job) -> list[str]:
    from pipeline.write import atomic_write

    prefix = "" if job.root == shards else job.root.relative_to(shards).as_posix() + "/"
    done = []
    for rel, data in sorted(job.idx.items()):
        atomic_write(job.root / rel, data)
        done.append(f"{prefix}{rel}")
    entries = job.index["shards"] if job.index else []
    for name in job.rebuild:
        mine = [e for e in entries if e["shard"] == name]
        rels = {p for p, _ in entry_files(mine)} | {f for fmt in FORMAT_DIRS for f in shard_files(name, fmt)}
        for rel in sorted(rels):
            (job.root / rel).unlink(missing_ok=True)
        (job.root / STATE_DIR / f"{name}.json").unlink(missing_ok=True)
        done.append(f"{prefix}{name}")
    if job.run is not None:
        job.run()
        if job.index is None:
            done.append(f"{prefix}{INDEX_NAME}")
    return done


def _flatten(d: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in d.items():
        if isinstance(v, dict):
            out |= _flatten(v, f"{prefix}{k}.")
        else:
            out[f"{prefix}{k}"] = v
    return out

