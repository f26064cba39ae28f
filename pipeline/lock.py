"""One writer per output directory: `<out>/.midas-prep.lock`.

build-shards, mix-offline and verify --repair hold it while they write. The file holds one
JSON object, {"host", "pid", "since" (UTC, ISO 8601), "command"}, for the message a second
run prints; the exclusion itself is an flock on the file, which the kernel drops when the
holder dies (kill -9 included), so a lock left by a dead run never blocks. A leftover file of
a dead holder on this host is taken over with a warning naming it; one naming another host
is refused (flock may not reach across hosts on a network filesystem) until a person deletes
it. Re-entrant within one process (repair runs build-shards on the directory it holds).
"""

from __future__ import annotations

import datetime
import fcntl
import json
import logging
import os
import shlex
import socket
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

__all__ = ["LOCK_NAME", "OutputLocked", "hold_output", "read_lock"]

logger = logging.getLogger(__name__)

LOCK_NAME = ".midas-prep.lock"

_held: dict[Path, list[Any]] = {}  # resolved dir -> [fd, depth]


class OutputLocked(RuntimeError):
    """Another run writes to this output directory."""


def read_lock(out: Path) -> dict[str, Any] | None:
    """The holder's record, or None (no lock file, or one that is empty or garbled)."""
    try:
        doc = json.loads((Path(out) / LOCK_NAME).read_text() or "null")
    except (OSError, ValueError):
        return None
    return doc if isinstance(doc, dict) else None


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _describe(doc: dict[str, Any] | None) -> str:
    if not doc:
        return "an unknown process"
    return (f"host {doc.get('host')}, pid {doc.get('pid')}, since {doc.get('since')}"
            f"{' (' + doc['command'] + ')' if doc.get('command') else ''}")


def _acquire(out: Path) -> int:
    path = out / LOCK_NAME
    while True:
        try:  # O_NOFOLLOW: a symlink planted under the lock's name is refused, never truncated through
            fd = os.open(path, os.O_RDWR | os.O_CREAT | getattr(os, "O_NOFOLLOW", 0), 0o644)
        except OSError as e:
            if not path.is_symlink():
                raise
            raise OutputLocked(f"{path} is a symlink ({e.strerror}); midas-prep writes its lock only inside "
                               f"{out}: delete that link") from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            raise OutputLocked(
                f"{out} is being written by another midas-prep run ({_describe(read_lock(out))}); "
                f"wait for it to end, or if that process is gone (another host), delete {path}") from None
        try:
            same = os.stat(path).st_ino == os.fstat(fd).st_ino
        except FileNotFoundError:
            same = False
        if same:  # not a file its last holder unlinked while we waited for it
            return fd
        os.close(fd)


@contextmanager
def hold_output(out: Path | str, command: str = "") -> Iterator[None]:
    """Hold the write lock of `out` (created if missing) for the `with` block.

    Raises OutputLocked, naming the holder, when another live run holds it."""
    out = Path(out)
    made = not out.exists()
    out.mkdir(parents=True, exist_ok=True)
    key = out.resolve()
    if key in _held:
        _held[key][1] += 1
        try:
            yield
        finally:
            _held[key][1] -= 1
        return
    fd = _acquire(out)
    old = read_lock(out)
    host = socket.gethostname()
    if old and old.get("host") != host:  # the kernel lock may not reach across hosts: ask a person
        os.close(fd)
        raise OutputLocked(
            f"{out} is locked by a run on another host ({_describe(old)}); if that run is gone, delete "
            f"{out / LOCK_NAME} and start again")
    if old and old.get("pid") != os.getpid():
        gone = old.get("host") == host and isinstance(old.get("pid"), int) and not _alive(old["pid"])
        logger.warning("taking over the lock of %s left by a run that %s (%s)", out,
                       "is gone" if gone else "no longer holds it", _describe(old))
    doc = {"host": host, "pid": os.getpid(),
           "since": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
           "command": command or shlex.join([Path(sys.argv[0]).name, *sys.argv[1:]])}
    os.ftruncate(fd, 0)
    os.pwrite(fd, (json.dumps(doc, sort_keys=True) + "\n").encode(), 0)
    _held[key] = [fd, 1]
    try:
        yield
    finally:
        del _held[key]
        try:
            (out / LOCK_NAME).unlink(missing_ok=True)  # while still locked: the next run makes a fresh file
        finally:
            os.close(fd)
        if made and not any(out.iterdir()):  # a run that failed before writing leaves no empty folder
            out.rmdir()
