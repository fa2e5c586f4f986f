"""A server's dial file: where its agent dials, one entry per router that handed it a task.

Several router replicas may serve one site; each one's task hands the node its own URL and a
credential it minted, and each must get its own connection to the server. So the file keeps
one dial per router URL::

    {"version": 2,
     "dials": {"https://router-a:8443": {"url": "https://router-a:8443", "token": "...",
                                          "endpoint": "sophia-llama", "ca_file": null},
               "https://router-b:8443": {...}}}

A new dial for a URL replaces that URL's entry (a fresh credential) and moves it last, so the
last entry is the most recently written; other URLs' entries are kept. The file of runtime
0.3 (one dial: {"url", "token", "endpoint", "ca_file"}) is still read, as one entry.

The file is owner-only (it holds credentials) and always replaced whole, so a reader sees
the old file or the new one; writers (two tasks may hand the same server a dial at once)
take turns on a lock file beside it.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import threading
from collections.abc import Iterator, Mapping
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

DIAL_FILE = "dial.json"
DIAL_LOCK = ".dial.lock"
VERSION = 2


@dataclass(frozen=True)
class Dial:
    """Where and as what to dial one router, as a task of that router wrote it."""

    url: str
    token: str
    endpoint: str
    ca_file: str | None

    @classmethod
    def from_fields(cls, fields: Mapping[str, Any]) -> Dial:
        """A dial from its JSON fields; KeyError or TypeError when one is missing or wrong."""
        ca_file = fields.get("ca_file")
        if not all(isinstance(fields[key], str) for key in ("url", "token", "endpoint")):
            raise TypeError("a dial's url, token and endpoint must be strings")
        if ca_file is not None and not isinstance(ca_file, str):
            raise TypeError("a dial's ca_file must be a string or null")
        return cls(fields["url"], fields["token"], fields["endpoint"], ca_file)


def write_dial(folder: Path, dial: Mapping[str, Any]) -> None:
    """Merge ``dial`` into the server's dial file, keyed by its url (owner-only, atomic)."""
    new = Dial.from_fields(dial)
    with _locked(folder):
        dials = read_dials(folder) or {}
        dials.pop(new.url, None)  # re-inserted last: the latest dial is the last entry
        dials[new.url] = new
        _replace(folder, dials)


def remove_dial(folder: Path, url: str) -> None:
    """Drop ``url``'s entry from the dial file: the agent hangs up on that router."""
    with _locked(folder):
        dials = read_dials(folder) or {}
        if dials.pop(url, None) is not None:
            _replace(folder, dials)


def read_dials(folder: Path) -> dict[str, Dial] | None:
    """The dials by router URL, in the order written ({} when there is no file yet); None
    when the file cannot be read or parsed (the caller keeps what it had)."""
    try:
        fields = json.loads((folder / DIAL_FILE).read_text())
    except FileNotFoundError:
        return {}
    except (OSError, ValueError, RecursionError):
        return None
    if not isinstance(fields, dict):
        return None
    entries = fields.get("dials") if "dials" in fields else {"": fields}  # 0.3's single dial
    if not isinstance(entries, dict):
        return None
    dials: dict[str, Dial] = {}
    for entry in entries.values():
        with contextlib.suppress(KeyError, TypeError, AttributeError):
            dial = Dial.from_fields(entry)
            dials[dial.url] = dial
    return dials


@contextlib.contextmanager
def _locked(folder: Path) -> Iterator[None]:
    """Hold the dial file's lock (flock on a file beside it) for one read-modify-write."""
    descriptor = os.open(folder / DIAL_LOCK, os.O_WRONLY | os.O_CREAT | os.O_CLOEXEC, 0o600)
    try:
        fcntl.flock(descriptor, fcntl.LOCK_EX)
        yield
    finally:
        os.close(descriptor)  # lets go of the lock


def _replace(folder: Path, dials: Mapping[str, Dial]) -> None:
    record = {"version": VERSION, "dials": {url: asdict(dial) for url, dial in dials.items()}}
    # Unique per thread too: the lock serializes writers, a stray file of a killed one is
    # truncated by the next.
    temporary = folder / f".{DIAL_FILE}.{os.getpid()}.{threading.get_ident()}"
    descriptor = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o600)
    with os.fdopen(descriptor, "w") as handle:
        json.dump(record, handle)
    os.replace(temporary, folder / DIAL_FILE)
