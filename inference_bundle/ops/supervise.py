"""Starting and stopping a local deployment's router process, and cleaning up after it.

The router runs in its own session (process group); its engines' processes are found
again by scanning /proc for command lines under the router's state folder.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from inference_bundle.config.catalog import Catalog
from inference_bundle.ops.local_run import DeployError, LocalDeployment, Say
from inference_bundle.ops.router_client import router_healthy
from inference_bundle.router.store.private_files import FileAccess, write_private


def start_router(
    run: LocalDeployment, catalog: Catalog, url: str, say: Say, access: FileAccess
) -> None:
    """Start the router in the background and wait until it answers on ``url``; its log
    and pid file get ``access`` (the settings' file_group, or this account's only)."""
    env = dict(os.environ)
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    if catalog.profile.scheduler == "slurm" and "SLURM_CONF" not in env:
        slurm_dir = Path(env.get("LOCAL_SLURM_DIR", run.root / ".state" / "slurm"))
        env["SLURM_CONF"] = str(slurm_dir / "slurm.conf")
    command = [sys.executable, "-m", "inference_bundle.router", "--config", str(run.settings_file)]
    command += ["--root", str(run.root)]
    with run.open_log(access) as log:
        process = subprocess.Popen(
            command,
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            env=env,
            cwd=run.root,
            start_new_session=True,
        )
    write_private(run.pid_file, f"{process.pid}\n", access)
    say(f"{run.cluster}: router starting (pid {process.pid}, log {run.shown(run.log_file)})")
    deadline = time.monotonic() + 60
    while not router_healthy(url):
        if process.poll() is not None:
            tail = run.log_file.read_text(errors="replace").splitlines()[-15:]
            raise DeployError("the router exited at start; its log ends with:\n" + "\n".join(tail))
        if time.monotonic() > deadline:
            raise DeployError(f"the router did not answer on {url} within 60 s; see its log")
        time.sleep(0.2)
    say(f"{run.cluster}: router answering at {url}")


def stop_router(run: LocalDeployment, say: Say) -> None:
    """Stop the router if it runs, then kill whatever its engines left behind."""
    pid = run.router_pid()
    if pid is None:
        return
    # The router alone gets the signal: its shutdown stops its engines, which cancel their
    # blocks (scheduler jobs). Signalling its whole group would kill the engines'
    # interchanges first, and an engine in a bad state leaves its blocks running.
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + 90
    while run.router_pid() is not None and time.monotonic() < deadline:
        time.sleep(0.2)
    with contextlib.suppress(ProcessLookupError):
        os.killpg(pid, signal.SIGKILL)  # its own session: anything the router left behind
    leftovers = processes_under(run.router_state_dir())
    for group in {g for g in map(_group_of, leftovers) if g is not None}:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(group, signal.SIGKILL)
    note = f"; cleaned up {len(leftovers)} leftover engine processes" if leftovers else ""
    say(f"{run.cluster}: router stopped (pid {pid}){note}")


def processes_under(folder: Path) -> list[int]:
    """Processes whose command line names a path under ``folder`` (this deployment's)."""
    marker = str(folder).encode()
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit() and int(entry.name) != os.getpid():
            try:
                if marker in (entry / "cmdline").read_bytes():
                    found.append(int(entry.name))
            except OSError:
                continue
    return found


def _group_of(pid: int) -> int | None:
    try:
        return os.getpgid(pid)
    except OSError:
        return None
