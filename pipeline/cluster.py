"""Ray: join a cluster or start a local one bound to 127.0.0.1, quietly, and leave nothing behind.

A local Ray listens on the loopback interface only: Ray replaces a `127.0.0.1` node address
by the host's network address unless `RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0` (its "single
machine" mode, the default on macOS and Windows), so that is set before a local start;
gcs_server, raylet, the workers and the runtime-env agent then all bind 127.0.0.1. Token
authentication stays on (Ray's default for a local start) and is named explicitly
(`RAY_AUTH_MODE=token`), which keeps Ray from printing a warning about it on every command.
"""

from __future__ import annotations

import logging
import os
import signal
import sys
import threading
from pathlib import Path
from types import FrameType
from typing import Any

__all__ = ["init_ray", "shutdown_ray", "local_ray_kwargs", "exit_on_sigterm", "LOCAL_ONLY_ENV"]

logger = logging.getLogger(__name__)

LOCAL_ONLY_ENV = "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"  # "0": Ray keeps 127.0.0.1 as the node address


_ray_roots: list[Any] = []  # psutil.Process of the processes a local start spawned
_session: list[str] = []  # the /tmp/ray/session_* folder of the local Ray started here
_watchdog: list[Any] = []  # the watchdog process of that Ray


def _session_dir() -> str:
    """The session folder of the Ray this process started ("" if Ray does not say)."""
    try:
        import ray._private.worker as w

        return str(w._global_node.get_session_dir_path())
    except Exception:  # noqa: BLE001 - a private API: no folder named, none removed
        return ""


def _remove_session(path: str) -> None:
    """Delete the session folder of our own Ray (and `session_latest` when it names it): only that one."""
    import shutil

    p = Path(path) if path else None
    if p is None or not p.name.startswith("session_") or not p.is_dir() or p.is_symlink():
        return
    latest = p.parent / "session_latest"
    if latest.is_symlink() and Path(os.readlink(latest)).name == p.name:
        latest.unlink(missing_ok=True)
    shutil.rmtree(p, ignore_errors=True)


_WATCHDOG = """
import os, shutil, sys, time
from pathlib import Path
import psutil
driver, session = int(sys.argv[1]), sys.argv[2]
roots = []
for a in sys.argv[3:]:
    pid, born = a.split(":")
    try:
        p = psutil.Process(int(pid))
        if abs(p.create_time() - float(born)) < 1e-3:
            roots.append(p)
    except psutil.Error:
        pass
while psutil.pid_exists(driver) and psutil.Process(driver).status() != psutil.STATUS_ZOMBIE:
    time.sleep(0.5)
procs = list(roots)
for r in roots:
    try:
        procs += r.children(recursive=True)
    except psutil.Error:
        pass
for p in procs:
    try:
        p.kill()
    except psutil.Error:
        pass
end = time.monotonic() + 5
def alive(p):
    try:
        return p.status() != psutil.STATUS_ZOMBIE
    except psutil.Error:
        return False
while any(alive(p) for p in procs) and time.monotonic() < end:
    time.sleep(0.05)
s = Path(session)
if session and s.name.startswith("session_") and s.is_dir() and not s.is_symlink():
    latest = s.parent / "session_latest"
    if latest.is_symlink() and Path(os.readlink(latest)).name == s.name:
        latest.unlink()
    shutil.rmtree(s, ignore_errors=True)
"""


def _start_watchdog() -> None:
    """A small process that outlives a kill -9 of this one and then kills the local Ray it started
    (gcs_server, raylet, agents, workers) and removes its session folder: without it they linger
    for a minute or more. A normal end (shutdown_ray) stops the watchdog first."""
    import subprocess

    roots = []
    for p in _ray_roots:
        try:
            roots.append(f"{p.pid}:{p.create_time()}")
        except Exception:  # noqa: BLE001 - gone already
            continue
    try:
        _watchdog[:] = [subprocess.Popen(
            [sys.executable, "-c", _WATCHDOG, str(os.getpid()), _session[0] if _session else "", *roots],
            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)]
    except OSError as e:  # no watchdog: the Ray still works, a kill -9 leaves it for Ray's own timeout
        logger.info("no Ray watchdog: %s", e)


def _stop_watchdog() -> None:
    for w in _watchdog:
        w.kill()
        w.wait()
    _watchdog.clear()


_ray_log = logging.getLogger("pipeline.cluster.ray")


def _quiet_driver() -> None:
    """Ray's driver prints what raylet and workers push to it ("A worker died ...") on stdout; that
    goes to the log instead (shown with -v), so a command's output stays its own lines."""
    try:
        import ray._private.worker as w
    except ImportError:  # pragma: no cover
        return
    if getattr(w.print_to_stdstream, "_midas_quiet", False):
        return

    def to_log(data: dict[str, Any], ignore_prefix: bool = False) -> None:
        for line in data.get("lines", []):
            _ray_log.info("(%s) %s", data.get("pid", "ray"), str(line).rstrip())

    to_log._midas_quiet = True  # type: ignore[attr-defined]
    w.print_to_stdstream = to_log


def _children() -> list[Any]:
    import psutil

    try:
        return psutil.Process().children(recursive=True)
    except psutil.Error:
        return []


def _token_available() -> bool:
    return bool(os.environ.get("RAY_AUTH_TOKEN") or os.environ.get("RAY_AUTH_TOKEN_PATH")
                or (Path.home() / ".ray" / "auth_token").is_file())


def _quiet_env(local: bool) -> None:
    """Name the auth mode Ray would pick anyway (no warning), and, for a local start, keep it on loopback."""
    if "RAY_AUTH_MODE" not in os.environ and (local or _token_available()):
        os.environ["RAY_AUTH_MODE"] = "token"
        raylet = sys.modules.get("ray._raylet")
        if raylet is not None:  # Ray caches its config at import: refresh it, as Ray does when it turns auth on
            raylet.Config.initialize("")
    if local:
        os.environ[LOCAL_ONLY_ENV] = "0"
        constants = sys.modules.get("ray._private.ray_constants")
        if constants is not None:  # read at import: an already imported Ray needs the flag set too
            constants.ENABLE_RAY_CLUSTER = False


def local_ray_kwargs(num_cpus: int) -> dict[str, Any]:
    """ray.init arguments of a local, loopback-only, quiet Ray (sets the environment it needs)."""
    _quiet_env(local=True)
    # address="local": a new Ray of our own, never one a `ray start` left on this machine
    return {"address": "local", "num_cpus": num_cpus, "include_dashboard": False, "_node_ip_address": "127.0.0.1",
            "log_to_driver": False, "logging_level": logging.WARNING}


def _on_sigterm(signum: int, frame: FrameType | None) -> None:
    print("midas-prep: stopped by SIGTERM; finished shards are kept and a re-run resumes", file=sys.stderr)
    raise SystemExit(128 + signum)


def exit_on_sigterm() -> None:
    """SIGTERM -> SystemExit(143): `finally` blocks run (Ray shut down, the output lock released).

    Called again after ray.init, which installs Ray's own handler and its C++ one that prints
    a stack dump."""
    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGTERM, _on_sigterm)


def init_ray(address: str, workers: int) -> tuple[int, bool]:
    """Join `address` (or RAY_ADDRESS) or start a local Ray; -> (tasks to keep in flight, started here).

    When Ray is already initialised (a test session, a notebook) it is reused and `workers`
    only caps the tasks in flight. A Ray started here must be ended with `shutdown_ray`.
    """
    address = address or os.environ.get("RAY_ADDRESS", "")
    import ray

    started = False
    if not ray.is_initialized():
        if address:
            _quiet_env(local=False)
            ray.init(address=address, log_to_driver=False, logging_level=logging.WARNING)
        else:
            before = _children()
            ray.init(**local_ray_kwargs(workers or os.cpu_count() or 1))
            _ray_roots[:] = [p for p in _children() if p not in before]  # gcs_server, raylet, agents
            _session[:] = [_session_dir()]
            _start_watchdog()
        started = True
        exit_on_sigterm()
    _quiet_driver()
    if not workers:
        workers = max(1, int(ray.cluster_resources().get("CPU", 1)))
    return workers, started


def _kill(procs: list[Any]) -> None:
    import psutil

    for p in procs:
        try:
            p.kill()
        except psutil.Error:
            continue


def shutdown_ray(started: bool) -> None:
    """End a Ray that `init_ray` started, and every process it left. A joined or reused Ray is left alone.

    Ray's own shutdown waits for what it asks to stop: a full second for the autoscaler monitor,
    which ignores SIGTERM, and idle workers outlive the raylet by a second or two. The monitors
    only watch and the workers are idle once a build has ended (or is being abandoned), so both
    are killed outright: the start-up tax of a small job stays small."""
    if not started:
        return
    import psutil
    import ray

    _stop_watchdog()
    mine = list(_ray_roots)
    for root in _ray_roots:
        try:
            mine += root.children(recursive=True)  # the workers and agents, children of the raylet
        except psutil.Error:
            continue
    _ray_roots.clear()
    _kill([p for p in mine if _is_monitor(p)])
    ray.shutdown()
    _kill(mine)
    _wait_gone(mine, timeout=2.0)
    for session in _session:
        _remove_session(session)
    _session.clear()


def _wait_gone(procs: list[Any], timeout: float) -> None:
    """Until every process has exited (a zombie counts: the raylet's orphans wait for init to reap them)."""
    import time

    import psutil

    deadline = time.monotonic() + timeout
    left = list(procs)
    while left and time.monotonic() < deadline:
        still = []
        for p in left:
            try:
                if p.status() != psutil.STATUS_ZOMBIE:
                    still.append(p)
            except psutil.Error:
                continue
        left = still
        if left:
            time.sleep(0.01)


def _is_monitor(p: Any) -> bool:
    import psutil

    try:
        return any(arg.endswith("monitor.py") for arg in p.cmdline())  # autoscaler/monitor.py, log_monitor.py
    except psutil.Error:
        return False
