"""The server spec: what the router sends a node so that it can start a model server."""

from __future__ import annotations

import hashlib
import json
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from . import frameworks

SPEC_VERSION = 1
TASKS = ("generate", "embed", "rerank")
# An interactive server answers requests; a batch server is a batch job's own, kept apart
# (its own folder, lock, port and watchdog) even on a host that runs the interactive one.
ROLES = ("interactive", "batch")
# Fields that change the server process; the others (timeouts) are read on every call.
_PROCESS_FIELDS = ("name", "framework", "task", "weights", "args", "env", "python", "port")
_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._/:@+-]{0,199}$")


class SpecError(ValueError):
    """A server spec that cannot be used; the message names the field and what to do."""


@dataclass(frozen=True, kw_only=True)
class ServerSpec:
    """One model server on one node, as the router describes it (spec_version 1)."""

    name: str
    framework: str
    task: str
    weights: str
    python: str
    state_dir: str
    args: tuple[str, ...] = ()
    env: Mapping[str, str] = field(default_factory=dict)
    port: int = 0
    idle_timeout_s: float = 7200.0
    start_timeout_s: float = 900.0
    request_timeout_s: float = 600.0
    stop_grace_s: float = 10.0
    role: str = "interactive"
    # Which of the model's replicas (the router's): a server of its own, even on a node that
    # another replica's job shares for a while (0.8).
    replica: int = 0

    def __post_init__(self) -> None:
        _check(
            _NAME_RE.match(self.name) is not None,
            "name",
            self.name,
            "use letters, digits and ._/:@+- (at most 200 characters)",
        )
        known = frameworks.names()
        _check(
            self.framework in known,
            "framework",
            self.framework,
            f"use one of {', '.join(known)}",
        )
        _check(self.task in TASKS, "task", self.task, f"use one of {', '.join(TASKS)}")
        _check(self.role in ROLES, "role", self.role, f"use one of {', '.join(ROLES)}")
        chosen = frameworks.framework(self.framework)
        _check(
            self.task in chosen.tasks,
            "task",
            self.task,
            f"{chosen.label} only serves {chosen.serves}: "
            f"use task {' or '.join(repr(t) for t in chosen.tasks)}",
        )
        for key in ("weights", "python", "state_dir"):
            value = getattr(self, key)
            _check(os.path.isabs(value), key, value, "give an absolute path")
        _check(
            all(isinstance(a, str) for a in self.args),
            "args",
            self.args,
            "give a flat list of strings",
        )
        _check(
            all(isinstance(k, str) and isinstance(v, str) for k, v in self.env.items()),
            "env",
            dict(self.env),
            "give string keys and string values",
        )
        _check(0 <= self.port <= 65535, "port", self.port, "use 0 (pick a free port) to 65535")
        for key in ("idle_timeout_s", "start_timeout_s", "request_timeout_s"):
            value = getattr(self, key)
            _check(value > 0, key, value, "give a positive number of seconds")
        _check(
            self.stop_grace_s >= 0, "stop_grace_s", self.stop_grace_s, "give zero or more seconds"
        )
        _check(
            type(self.replica) is int and self.replica >= 0,
            "replica",
            self.replica,
            "give a whole number, 0 or more",
        )

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> ServerSpec:
        """Validate a plain spec dict (as the router sends it) and build the spec."""
        if not isinstance(data, Mapping):
            raise SpecError(f"server spec: expected a dict, got {type(data).__name__}")
        version = data.get("spec_version")
        if version != SPEC_VERSION:
            raise SpecError(
                f"server spec field 'spec_version' is {version!r}; this node runtime reads "
                f"version {SPEC_VERSION}: deploy matching versions of the router and runtime"
            )
        known = {f for f in cls.__dataclass_fields__} | {"spec_version"}
        unknown = sorted(set(data) - known)
        if unknown:
            raise SpecError(
                f"server spec has unknown field(s) {', '.join(unknown)}; "
                f"known fields: {', '.join(sorted(known))}"
            )
        missing = [
            k
            for k in ("name", "framework", "task", "weights", "python", "state_dir")
            if k not in data
        ]
        if missing:
            raise SpecError(f"server spec is missing field(s) {', '.join(missing)}")
        kwargs: dict[str, Any] = {k: v for k, v in data.items() if k != "spec_version"}
        for key in ("name", "framework", "task", "weights", "python", "state_dir"):
            _check(isinstance(kwargs[key], str), key, kwargs[key], "give a string")
        if "role" in kwargs:
            _check(isinstance(kwargs["role"], str), "role", kwargs["role"], "give a string")
        if "args" in kwargs:
            _check(
                isinstance(kwargs["args"], list | tuple),
                "args",
                kwargs["args"],
                "give a list of strings",
            )
            kwargs["args"] = tuple(kwargs["args"])
        if "env" in kwargs:
            _check(isinstance(kwargs["env"], Mapping), "env", kwargs["env"], "give a mapping")
            kwargs["env"] = dict(kwargs["env"])
        if "port" in kwargs:
            _check(type(kwargs["port"]) is int, "port", kwargs["port"], "give an integer")
        for key in ("idle_timeout_s", "start_timeout_s", "request_timeout_s", "stop_grace_s"):
            if key in kwargs:
                value = kwargs[key]
                _check(type(value) in (int, float), key, value, "give a number of seconds")
                kwargs[key] = float(value)
        return cls(**kwargs)

    def to_dict(self) -> dict[str, Any]:
        """The plain, JSON-ready dict that from_dict reads back."""
        return {
            "spec_version": SPEC_VERSION,
            "name": self.name,
            "framework": self.framework,
            "task": self.task,
            "weights": self.weights,
            "args": list(self.args),
            "env": dict(self.env),
            "python": self.python,
            "port": self.port,
            "idle_timeout_s": self.idle_timeout_s,
            "start_timeout_s": self.start_timeout_s,
            "request_timeout_s": self.request_timeout_s,
            "stop_grace_s": self.stop_grace_s,
            "state_dir": self.state_dir,
            "role": self.role,
            "replica": self.replica,
        }

    def process_hash(self) -> str:
        """A digest of what the server process depends on; a change means a restart."""
        data = self.to_dict()
        chosen = {k: data[k] for k in _PROCESS_FIELDS}
        text = json.dumps(chosen, sort_keys=True, separators=(",", ":"))
        return hashlib.sha256(text.encode()).hexdigest()[:16]


def _check(ok: bool, key: str, value: object, advice: str) -> None:
    if not ok:
        raise SpecError(f"server spec field '{key}' is {value!r}: {advice}")
