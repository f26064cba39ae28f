"""Fault injection points for the kill -9 / full-disk tests (tests/test_faults.py).

`fault_point(name)` does nothing unless the environment names that point:

    MIDAS_PREP_FAULT=<point>          the point to fail at
    MIDAS_PREP_FAULT_MODE=kill        SIGKILL this process (default; a Ray worker dies, Ray retries)
                          group       SIGKILL every process of this session: the command, its local
                                      Ray and all workers (as `kill -9` of the job would)
                          enospc      raise OSError(ENOSPC), as a full disk does
    MIDAS_PREP_FAULT_SKIP=N           let the first N hits in this process pass
    MIDAS_PREP_FAULT_ONCE=<path>      fire only if <path> does not exist yet (it is created)
    MIDAS_PREP_FAULT_CLIP=<clip id>   fire only at the points that name this clip (build.decoded)

Points: build.decoded (a Ray worker decoded a clip), build.clip_done (driver, a clip
result arrived), build.shard_done (driver, between shards; mix-offline too),
write.shard_tmp (a shard's bytes are written under the temp name, not yet renamed),
write.index_tmp (index.json written under its temp name, not yet renamed),
write.data (every write of bytes to any file midas-prep writes, in workers and the driver:
with MIDAS_PREP_FAULT_SKIP and enospc, a disk that fills up in the middle of a file).
"""

from __future__ import annotations

import errno
import os
import signal

__all__ = ["fault_point"]

_hits: dict[str, int] = {}


def fault_point(name: str, clip: str = "") -> None:
    if os.environ.get("MIDAS_PREP_FAULT") != name:
        return
    only = os.environ.get("MIDAS_PREP_FAULT_CLIP")
    if only is not None and only != clip:
        return
    _hits[name] = _hits.get(name, 0) + 1
    if _hits[name] <= int(os.environ.get("MIDAS_PREP_FAULT_SKIP", "0")):
        return
    marker = os.environ.get("MIDAS_PREP_FAULT_ONCE")
    if marker:
        try:
            os.close(os.open(marker, os.O_CREAT | os.O_EXCL | os.O_WRONLY))
        except FileExistsError:
            return
    mode = os.environ.get("MIDAS_PREP_FAULT_MODE", "kill")
    if mode == "enospc":
        raise OSError(errno.ENOSPC, f"No space left on device (injected at {name})")
    if mode == "group":
        _kill_session()
    os.kill(os.getpid(), signal.SIGKILL)


def _kill_session() -> None:
    """SIGKILL every process sharing this process's session (Ray workers are in other process groups)."""
    sid, me = os.getsid(0), os.getpid()
    for entry in os.listdir("/proc"):
        if entry.isdigit() and int(entry) != me:
            try:
                if os.getsid(int(entry)) == sid:
                    os.kill(int(entry), signal.SIGKILL)
            except (ProcessLookupError, PermissionError):
                continue
