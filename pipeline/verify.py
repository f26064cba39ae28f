"""verify: check every shard index.json lists (originals and mixed), and repair damaged ones.

Checks, each problem naming the shard (and sample): the file is present with the recorded
size and sha256; it reads (tar members named `<key>.<ext>`, no paths; Parquet columns); it
holds the recorded number of samples; its .idx matches the tar; every sample's arrays load
with pickling off, have the index's shape and dtype, match their crc32, and the soft label
sums to 1. `--repair` deletes the damaged shards and re-runs build-shards / mix-offline
with the config stored in index.json, which rebuilds exactly those shards (resume).

Nothing outside the output is read or deleted: an index entry whose path leads out of it
(`../x`, an absolute path, a symlink out) is a problem of index.json itself, and repair
rewrites index.json from the done-files in _state/ (a resume) instead of following it.
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
    entry_paths,
    is_inside,
    is_removable,
    is_shard_name,
    json_or_none,
    mixed_indexes,
    read_index,
    resolve_inside,
    shard_files,
)
from pipeline.read import (
    check_files,
    decode_members,
    decode_parquet_row,
    load_idx,
    load_index,
    outside_fix,
    sample_spec,
)
from pipeline.remote import is_remote, local_dir, pull, remote_sizes
from pipeline.write import owned_files

__all__ = ["Problem", "VerifyReport", "verify_shards", "repair_shards"]

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class Problem:
    path: str  # the shard file
    message: str
    sample: str = ""  # the sample key, when one sample is at fault
    shard: str = ""  # the planned shard name (part1-000003, copy0-000001)
    index: str = ""  # the index.json that lists it ("": not something repair can fix)
    kind: str = ""  # BAD_ENTRY: index.json itself is not to be trusted (repair rewrites it from _state/)

    def __str__(self) -> str:
        return f"{self.path}{' sample ' + self.sample if self.sample else ''}: {self.message}"


@dataclass
class VerifyReport:
    indexes: list[str] = field(default_factory=list)
    files: int = 0
    samples: int = 0
    problems: list[Problem] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)  # what could not be checked (not a failure)

    @property
    def ok(self) -> bool:
        return not self.problems


UNREADABLE_INDEX = "unreadable index.json"
BAD_ENTRY = "bad-entry"  # Problem.kind of an index entry that leads outside the output or is malformed


def _rebuild_command(shards: Path, root: Path) -> str:
    """The command that rebuilds the output at `root` from scratch (its index.json is lost)."""
    plan = json_or_none(root / STATE_DIR / "plan.json") if is_inside(root, f"{STATE_DIR}/plan.json") else None
    conf = plan.get("config") if isinstance(plan, dict) else None
    if root == shards:
        dataset = conf.get("dataset_root", "DATASET") if isinstance(conf, dict) else "DATASET"
        return f"`midas-prep build-shards {dataset} --out {root} --overwrite` (with the build's options)"
    return f"`midas-prep mix-offline --shards {shards} --out {root.parent} --overwrite` (with the mix's options)"


def _indexes(shards: Path) -> list[Path]:
    found = [shards / INDEX_NAME] if (shards / INDEX_NAME).is_file() else []
    return found + mixed_indexes(shards)


def _reason(e: ShardError) -> str:
    """The reader's message without the location (Problem names it) and the advice to run verify."""
    return str(e).split(": ", 1)[-1].replace("; run `midas-prep verify`", "")


def _verify_tar(path: Path, ipath: Path | None, entry: dict[str, Any], root: Path, spec: dict,
                report: VerifyReport) -> None:
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
    if ipath is not None and ipath.is_file():
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
        if not is_inside(shards, ipath.relative_to(shards).as_posix()):
            report.problems.append(Problem(path=str(ipath), message=(
                f"leads (through a symlink) out of {shards}, so it was not read; mixed folds and index.json live "
                f"inside the output: remove that link or put the real folder there")))
            continue
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
            _verify_entry(root, ipath, entry, spec, report)
        if index.get("kind") == "clips":
            _verify_sources(root, ipath, index, report)
    return report


def _verify_sources(root: Path, ipath: Path, index: dict[str, Any], report: VerifyReport) -> None:
    """Every clip of clips.parquet against the dataset as it is now (records.changed_since): a clip
    whose annotation row or file changed since the build is a problem of its shard (repair rebuilds
    it). A dataset that is not there, or a build made before fingerprints, is a note: not checked."""
    import pyarrow.parquet as pq

    from pipeline.config import BuildConfig, ConfigError, load_config, with_added_fields
    from pipeline.datasets.records import changed_since, source_root
    from pipeline.errors import LayoutError
    from pipeline.format import CLIPS_NAME
    from pipeline.index import index_dataset

    if not is_inside(root, CLIPS_NAME) or not (root / CLIPS_NAME).is_file():
        return
    try:
        rows = pq.read_table(root / CLIPS_NAME).to_pylist()
    except Exception as e:  # noqa: BLE001 - any unreadable table: a note, the shards were checked
        report.notes.append(f"{root / CLIPS_NAME} is unreadable ({type(e).__name__}): clips not checked for changes")
        return
    if rows and "annotation_sha256" not in rows[0] or any(r.get("annotation_sha256") is None for r in rows):
        report.notes.append(f"{root}: not checked for a changed dataset (built before midas-prep recorded what "
                            "each clip was built from; rebuild with --overwrite to record it)")
        return
    dataset = index.get("dataset") or {}
    conf = index.get("config") or {}
    where = Path(dataset.get("root") or conf.get("dataset_root", ""))
    if not where.exists():
        report.notes.append(f"{root}: the dataset {where} is not reachable: clips not checked for changes")
        return
    try:
        conf = with_added_fields({k: v for k, v in conf.items() if v is not None}) | {"dataset_root": str(where)}
        cfg = load_config(BuildConfig, None, _flatten(conf))
        now = {c["clip_id"]: c for c in index_dataset(where, cfg.index).clips}
    except (ConfigError, LayoutError, KeyError, TypeError, ValueError) as e:
        report.notes.append(f"{root}: the dataset {where} could not be indexed ({str(e)[:200]}): clips not checked "
                            "for changes")
        return
    files = {e.get("shard"): str(root / e["path"]) for e in index["shards"] if isinstance(e, dict) and "path" in e}
    base = source_root(where)
    for r in rows:
        if not r.get("shard"):
            continue
        clip = now.get(r["clip_id"])
        why = "no longer in the dataset's index" if clip is None else changed_since(base, clip, r)
        if why:
            report.problems.append(Problem(
                path=files.get(r["shard"], str(root / STATE_DIR / f"{r['shard']}.json")), shard=r["shard"],
                index=str(ipath), message=(f"clip {r['clip_id']!r} changed since the build ({why}); "
                                           f"`midas-prep verify {root} --repair` rebuilds its shard")))


def _verify_entry(root: Path, ipath: Path, entry: Any, spec: dict, report: VerifyReport) -> None:
    """Check one index entry's files; an entry naming a path outside `root`, or a malformed one,
    is a BAD_ENTRY problem of index.json, and none of its files is opened."""
    name = entry.get("shard") if isinstance(entry, dict) else None
    shard = name if is_shard_name(name) else ""
    before = len(report.problems)
    try:
        paths = entry_paths(root, entry, ipath, outside_fix(root))
        if not shard or entry.get("format") not in FORMAT_DIRS:
            raise ShardError(f"{ipath}: entry {str(entry)[:80]!r} has no valid shard name or format; "
                             f"{outside_fix(root)}")
        for msg in check_files(root, [entry], sha256=True):
            path, _, text = msg.partition(": ")
            report.problems.append(Problem(path=path, message=text))
        if paths[0].is_file():
            if entry["format"] == "webdataset":
                _verify_tar(paths[0], paths[1] if len(paths) > 1 else None, entry, root, spec, report)
            else:
                _verify_parquet(paths[0], entry, spec, report)
    except (ShardError, KeyError, TypeError, ValueError) as e:
        why = str(e) if isinstance(e, ShardError) else f"entry {str(entry)[:80]!r} lacks or garbles {e}"
        del report.problems[before:]
        report.problems.append(Problem(path=str(ipath), message=why.removeprefix(f"{ipath}: "), shard=shard,
                                       index=str(ipath), kind=BAD_ENTRY))
        return
    report.problems[before:] = [replace(p, shard=p.shard or shard, index=str(ipath))
                                for p in report.problems[before:]]


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
    delete: list[Path] = field(default_factory=list)  # files of the shards to rebuild, each checked inside root
    run: Any = None  # the rebuild: build_shards / mix_offline bound to its config
    check: Any = None  # a check that must wait for the jobs before this one (a source index rewritten)
    left: list[str] = field(default_factory=list)  # listed files repair cannot prove are ours: untouched


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
            untrusted = {p.index for p in report.problems if p.kind == BAD_ENTRY}
            jobs = [_plan_repair(shards, Path(i), problems, set(by_index), untrusted)
                    for i, problems in sorted(by_index.items())]  # a build's index.json before its mixed folds'
            # run in that order: a mixed job's `check` sees its source repaired
            return [name for job in jobs for name in _do_repair(shards, job)]
    except OutputLocked as e:
        raise ShardError(str(e)) from None
    except OSError as e:  # a read-only or full disk: what was rebuilt so far stays valid
        raise ShardError(f"cannot repair {shards}: {e}; run verify again to see what is left") from e


def _plan_repair(shards: Path, ipath: Path, problems: list[Problem], damaged_indexes: set[str],
                 untrusted: set[str]) -> _Job:
    """What to delete and rerun for one index.json, every path checked before anything is deleted."""
    root = ipath.parent
    kind = "clips" if root == shards else "mixed"
    plan_rel = f"{STATE_DIR}/plan.json"
    if any(p.message.startswith(UNREADABLE_INDEX) for p in problems):
        plan = json_or_none(root / plan_rel) if is_inside(root, plan_rel) else None
        if not isinstance(plan, dict) or not isinstance(plan.get("config"), dict):
            raise ShardError(f"cannot repair {ipath}: it is unreadable and so is {root / plan_rel}; "
                             f"nothing was deleted; rebuild: {_rebuild_command(shards, root)}")
        job = _Job(root, kind, None)
        if kind == "clips":
            job.run = _build_runner(shards, root, plan["config"], {}, ipath)
        else:
            raise ShardError(f"cannot repair {ipath}: it is unreadable; nothing was deleted; rebuild: "
                             f"{_rebuild_command(shards, root)}")
        return job
    index = read_index(root)
    assert index is not None, f"{ipath} vanished during repair"
    # An entry leading out of the output (or malformed): index.json is not followed, but rewritten
    # by a resume from the done-files, which are checked the same way; nothing it lists is touched.
    trusted = not any(p.kind == BAD_ENTRY for p in problems)
    if trusted and index.get("kind") in ("clips", "mixed"):
        kind = index["kind"]
    job = _Job(root, kind, index if trusted else None)
    owned = owned_files(root)  # index.json proves nothing: only what _state/ proves is deleted
    entries: dict[str, list[dict[str, Any]]] = {}
    for e in index["shards"] if trusted else []:
        entries.setdefault(e["shard"], []).append(e)
    fix = outside_fix(root)
    for name in sorted({p.shard for p in problems if is_shard_name(p.shard) and p.kind != BAD_ENTRY}):
        idx_only = {str(root / e["idx"]["path"]): e for e in entries.get(name, []) if "idx" in e}
        if idx_only and all(p.path in idx_only for p in problems if p.shard == name):
            fixed = {}
            for e in {id(e): e for p in problems if p.shard == name for e in [idx_only[p.path]]}.values():
                data = _regenerated_idx(root, e)
                if data is None:
                    break
                resolve_inside(root, e["idx"]["path"], ipath, f"the .idx of shard {name!r}", fix)
                fixed[e["idx"]["path"]] = data
            else:
                job.idx |= fixed
                continue
        job.rebuild.append(name)
        rels = {p for p, _ in entry_files(entries.get(name, []))} | {f"{STATE_DIR}/{name}.json"}
        rels |= {f for fmt in FORMAT_DIRS for f in shard_files(name, fmt)}
        for rel in sorted(rels):  # a planted symlink at one of these names is unlinked, never followed
            if not is_removable(root, rel):
                raise ShardError(f"cannot repair {ipath}: {rel!r}, a file of shard {name!r}, is not inside {root}; "
                                 f"nothing was deleted; {fix}")
            if rel in owned:
                job.delete.append(root / rel)
            elif (root / rel).exists() or (root / rel).is_symlink():
                job.left.append(rel)
    if trusted and not job.rebuild:
        return job
    if trusted:
        conf = index["config"]
    elif kind == "clips":  # the plan is what a resume must match
        plan = json_or_none(root / plan_rel) if is_inside(root, plan_rel) else None
        conf = plan.get("config") if isinstance(plan, dict) else None
    else:
        conf = index.get("config")
    if not isinstance(conf, dict):
        raise ShardError(f"cannot repair {ipath}: neither it nor {root / plan_rel} holds the config; nothing was "
                         f"deleted; rebuild: {_rebuild_command(shards, root)}")
    conf = {k: v for k, v in conf.items() if v is not None}
    try:
        if kind == "clips":
            job.run = _build_runner(shards, root, conf, (index.get("dataset") if trusted else None) or {}, ipath)
        else:
            job.run, job.check = _mix_runner(shards, root, conf, index, damaged_indexes, untrusted, ipath)
    except (KeyError, TypeError, ValueError) as e:
        raise ShardError(f"cannot repair {ipath}: its config is incomplete ({e!r}); nothing was deleted; "
                         f"rebuild: {_rebuild_command(shards, root)}") from None
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
        # indexes the dataset and compares its plan with the one on disk, no write; the damaged shards it
        # finds incomplete are why the repair runs: news at INFO, not a WARNING
        plan_build(cfg, rebuild_level=logging.INFO)
    except (ConfigError, BuildError, LayoutError) as e:
        raise ShardError(f"cannot repair {root} from {where}: {e}; nothing was deleted") from None
    return lambda: build_shards(cfg)


def _mix_runner(shards: Path, root: Path, conf: dict[str, Any], index: dict[str, Any],
                damaged_indexes: set[str], untrusted: set[str], ipath: Path) -> tuple[Any, Any]:
    """(mix_offline bound to the stored config, a check left for later or None), after checking the
    source shards are the ones the mixed shards were made from and are intact (or are repaired first).

    A source index.json that repair rewrites from _state/ (it listed a path out of the output) cannot
    be compared with the one the mixed shards record until it is rewritten: that check is returned,
    to run after the source's repair and before anything of the mixed shards is deleted."""
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
    recorded = conf.get("source_index_sha256")

    def check_source() -> None:
        src = read_index(source)
        if recorded not in (None, _sha(src or {"shards": []})):
            raise ShardError(f"cannot repair {ipath}: it was mixed from another build than {source}; nothing was "
                             f"deleted; rebuild: {_rebuild_command(shards, root)}")

    later = check_source if str(source / INDEX_NAME) in untrusted else None
    if later is None:
        check_source()
    conf = {k: v for k, v in conf.items() if k != "source_index_sha256"}
    conf |= {"shards": str(source), "out": str(root.parent), "overwrite": False, "fold": index["fold"]}
    try:
        cfg = load_config(MixConfig, None, conf)
    except ConfigError as e:
        raise ShardError(f"cannot repair {ipath}: its config does not load ({e}); nothing was deleted") from None
    return (lambda: mix_offline(cfg)), later


def _do_repair(shards: Path, job: _Job) -> list[str]:
    from pipeline.write import atomic_write, say_left

    prefix = "" if job.root == shards else job.root.relative_to(shards).as_posix() + "/"
    if job.check is not None:  # a check that had to wait for an earlier job: still before any deletion
        job.check()
    done = []
    for rel, data in sorted(job.idx.items()):
        atomic_write(job.root / rel, data)
        done.append(f"{prefix}{rel}")
    for path in job.delete:
        path.unlink(missing_ok=True)
    if job.left:
        logger.warning("%s", say_left(f"verify --repair of {job.root}", sorted(set(job.left))))
    done += [f"{prefix}{name}" for name in job.rebuild]
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

