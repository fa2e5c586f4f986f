"""The Globus Compute endpoints folder and the `globus-compute-endpoint` command around it.

A deploy writes only the bundle's files into ``<endpoints dir>/<name>/``; what the endpoint
keeps there itself (``endpoint.json`` with its id, ``daemon.pid``, logs, credentials) stays.
An endpoint's id is the one ``globus-compute-endpoint start`` wrote to ``endpoint.json``
once the service registered it (4.19), and the same id is kept across restarts.
"""

from __future__ import annotations

import json
import os
import shlex
import shutil
import subprocess
import time
from pathlib import Path

from inference_bundle.rendering.render import RenderedEndpoint

COMMAND = "globus-compute-endpoint"
ID_FILE = "endpoint.json"
PID_FILE = "daemon.pid"
RENDERED_MARK = "Rendered by `bundle"
COMMAND_TIMEOUT_S = 180.0


class EndpointError(RuntimeError):
    """An endpoint step that failed; the message says what to do."""


def changed_files(endpoint: RenderedEndpoint, folder: Path) -> list[str]:
    """The endpoint's files that are missing from ``folder`` or differ there."""
    changed = []
    for name, text in sorted(endpoint.files.items()):
        path = folder / name
        if not path.is_file() or path.read_text(encoding="utf-8") != text:
            changed.append(name)
    return changed


def write_files(endpoint: RenderedEndpoint, folder: Path, names: list[str]) -> None:
    """Write the named files of an endpoint; its folder is private, as the endpoint's own."""
    folder.mkdir(mode=0o700, parents=True, exist_ok=True)
    for name in names:
        (folder / name).write_text(endpoint.files[name], encoding="utf-8")


def endpoint_id(folder: Path) -> str | None:
    """The id the service gave this endpoint, from its endpoint.json; None before a start."""
    path = folder / ID_FILE
    if not path.is_file():
        return None
    try:
        found = json.loads(path.read_text())["endpoint_id"]
    except (ValueError, KeyError, TypeError):
        raise EndpointError(
            f"{path} holds no endpoint_id; move it aside and deploy again to register "
            "the endpoint anew"
        ) from None
    return str(found)


def is_running(folder: Path) -> bool:
    """Whether the endpoint's daemon (its daemon.pid) is alive on this host."""
    try:
        pid = int((folder / PID_FILE).read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def stale_endpoints(endpoints_dir: Path, cluster: str, current: set[str]) -> list[str]:
    """This cluster's bundle-rendered endpoint folders that the catalog no longer has."""
    if not endpoints_dir.is_dir():
        return []
    stale = []
    for folder in sorted(endpoints_dir.glob(f"{cluster}-*")):
        config = folder / "config.yaml"
        if folder.name in current or not config.is_file():
            continue
        if RENDERED_MARK in config.read_text(encoding="utf-8", errors="replace"):
            stale.append(folder.name)
    return stale


def find_command(endpoint_python: str) -> Path:
    """`globus-compute-endpoint` of the endpoint environment, else the first on PATH."""
    beside = Path(endpoint_python).parent / COMMAND
    if beside.is_file() and os.access(beside, os.X_OK):
        return beside
    on_path = shutil.which(COMMAND)
    if on_path is None:
        raise EndpointError(
            f"{COMMAND} is neither beside endpoint_python ({endpoint_python}) nor on PATH; "
            "install globus-compute-endpoint==4.19.0 into the endpoint environment"
        )
    return Path(on_path)


class EndpointCommand:
    """Runs `globus-compute-endpoint -c <endpoints dir> ...` with the endpoint env first on PATH.

    The engine starts its interchange and workers as `globus-compute-endpoint python-exec`
    through PATH, so the endpoint environment's bin folder must come first there.
    """

    def __init__(self, executable: Path, endpoints_dir: Path) -> None:
        self.executable = executable
        self.endpoints_dir = endpoints_dir

    def argv(self, *args: str) -> list[str]:
        return [str(self.executable), "-c", str(self.endpoints_dir), *args]

    def shown(self, *args: str) -> str:
        return shlex.join(self.argv(*args))

    def start(self, name: str) -> None:
        self._run("start", name, "--detach")

    def restart(self, name: str) -> None:
        self._run("restart", name, "--detach")

    def wait_for_id(self, name: str, timeout_s: float) -> str:
        """The id a detached endpoint writes once registered (the daemon writes it)."""
        folder = self.endpoints_dir / name
        deadline = time.monotonic() + timeout_s
        while True:
            found = endpoint_id(folder)
            if found is not None:
                return found
            if time.monotonic() >= deadline:
                raise EndpointError(
                    f"endpoint {name} started but wrote no {ID_FILE} within {timeout_s:.0f} s; "
                    f"see {folder / 'endpoint.log'}"
                )
            time.sleep(0.2)

    def _run(self, *args: str) -> None:
        env = dict(os.environ)
        env["PATH"] = os.pathsep.join([str(self.executable.parent), env.get("PATH", "")])
        try:
            done = subprocess.run(
                self.argv(*args),
                stdin=subprocess.DEVNULL,
                capture_output=True,
                text=True,
                env=env,
                timeout=COMMAND_TIMEOUT_S,
                check=False,
            )
        except (OSError, subprocess.TimeoutExpired) as err:
            raise EndpointError(f"`{self.shown(*args)}` did not complete: {err}") from None
        if done.returncode != 0:
            output = (done.stderr.strip() or done.stdout.strip()).splitlines()[-5:]
            log = self.endpoints_dir / args[1] / "endpoint.log"
            raise EndpointError(
                f"`{self.shown(*args)}` failed (exit {done.returncode}): "
                f"{' | '.join(output) or 'no output'}; see {log}"
            )
