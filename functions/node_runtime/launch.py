"""How a spec's server is started, and what a minimal real request to it is.

The framework's module (``node_runtime.frameworks``) knows its argv and probe request.
"""

from __future__ import annotations

import os
from typing import Any

from .frameworks import framework
from .spec import ServerSpec

HOST = "127.0.0.1"


def command(spec: ServerSpec, port: int) -> list[str]:
    """The server's command line; the spec's args come last so a site can override ours."""
    return framework(spec.framework).server_argv(spec, HOST, port) + list(spec.args)


def environment(spec: ServerSpec) -> dict[str, str]:
    """The server's environment: ours, plus the spec's, plus unbuffered output for the log."""
    env = dict(os.environ)
    env.update(spec.env)
    env.setdefault("PYTHONUNBUFFERED", "1")
    return env


def probe_request(spec: ServerSpec) -> tuple[str, dict[str, Any]]:
    """The smallest real request: vLLM on CPU can answer /health and die on the first one."""
    return framework(spec.framework).probe_request(spec)
