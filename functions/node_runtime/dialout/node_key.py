"""The server's key: a secret the agent keeps in memory, and its digest written beside it.

A credential travels in the dial file, which anyone who can read the node's files can read
too. So the agent also proves which server it is: at start it draws a secret that never
leaves its process's memory and writes only the secret's SHA-256 (``node_key.json``, with
the server's id). The node runtime's task reads that digest and reports it to the router in
its envelope, a channel the node's files cannot forge; the agent's handshake carries the
secret, and the router admits a connection only when the secret's digest is the one the
task reported for that server. A copied dial file is then not enough to dial in.
"""

from __future__ import annotations

import hashlib
import json
import os
import secrets
from pathlib import Path

NODE_KEY_FILE = "node_key.json"


def digest(secret: str) -> str:
    """The public half of ``secret``: its SHA-256, in hex."""
    return hashlib.sha256(secret.encode()).hexdigest()


def make_node_key(folder: Path, server_id: str) -> str:
    """Draw this server's secret and write its digest (owner-only); the secret is returned."""
    secret = secrets.token_hex(32)
    record = json.dumps({"server_id": server_id, "digest": digest(secret)})
    temporary = folder / f".{NODE_KEY_FILE}.{os.getpid()}"
    descriptor = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o600)
    with os.fdopen(descriptor, "w") as handle:
        handle.write(record)
    os.replace(temporary, folder / NODE_KEY_FILE)
    return secret


def read_node_key(folder: Path, server_id: str) -> str | None:
    """The digest the server ``server_id`` wrote, or None (no agent, or another server's)."""
    try:
        fields = json.loads((folder / NODE_KEY_FILE).read_text())
    except (OSError, ValueError):
        return None
    if not isinstance(fields, dict) or fields.get("server_id") != server_id:
        return None
    value = fields.get("digest")
    return value if isinstance(value, str) else None
