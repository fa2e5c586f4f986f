"""How a spec's server is started, and what a minimal real request to it is.

The framework's module (``node_runtime.frameworks``) knows its argv and probe request.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from .dialout.middleware import FOLDER_ENV, SERVER_ID_ENV
from .frameworks import framework
from .server_files import runtime_folder
from .spec import ServerSpec

HOST = "127.0.0.1"


def command(spec: ServerSpec, port: int) -> list[str]:
    """The server's command line, with the data plane's agent inside it; the spec's args
    come last so a site can override ours."""
    chosen = framework(spec.framework)
    return chosen.with_agent(chosen.server_argv(spec, HOST, port)) + list(spec.args)


def environment(spec: ServerSpec, folder: Path, server_id: str) -> dict[str, str]:
    """The server's environment: ours, plus the spec's, plus what its agent needs.

    The server's Python is the framework's environment, not the runtime's: it finds this
    package (and nothing else of the runtime's environment) through a folder that holds only
    a link to it.
    """
    env = dict(os.environ)
    # Its temporary files and vLLM's IPC sockets in a folder removed when it stops (unless
    # the spec says where they go); the starter makes it (``make_runtime_folder``).
    env["TMPDIR"] = env["VLLM_RPC_BASE_PATH"] = str(runtime_folder(server_id))
    env.update(spec.env)
    env.setdefault("PYTHONUNBUFFERED", "1")
    env[FOLDER_ENV] = str(folder)
    env[SERVER_ID_ENV] = server_id
    path = _package_path(folder)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(path), env.get("PYTHONPATH")) if p)
    return env


def _package_path(folder: Path) -> Path:
    """``<folder>/pythonpath/node_runtime`` -> this package."""
    path = folder / "pythonpath"
    path.mkdir(exist_ok=True)
    link = path / "node_runtime"
    package = Path(__file__).resolve().parent
    if not link.is_symlink() or link.resolve() != package:
        link.unlink(missing_ok=True)
        link.symlink_to(package, target_is_directory=True)
    return path


def probe_request(spec: ServerSpec) -> tuple[str, dict[str, Any]]:
    """The smallest real request: vLLM on CPU can answer /health and die on the first one."""
    return framework(spec.framework).probe_request(spec)
