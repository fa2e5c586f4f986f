"""Per-server credentials: minted for a task, accepted for one endpoint and one server.

A task that must tell a server where to dial (no live connection of its endpoint) carries a
fresh credential. The server that task starts (or finds) dials in with it: the first
registration binds the credential to that server, which may dial again with it after a
dropped connection, for ``redial_grace_s``. A credential holds one live connection at a
time (``InUse`` for a second). Another server, another endpoint, an unknown token, or a token
whose ``ttl_s`` passed before its first use are refused. A server that says goodbye as it
stops takes its credentials with it. Only digests are kept.
"""

from __future__ import annotations

import hashlib
import secrets
import time
from collections.abc import Callable
from dataclasses import dataclass


class Refused(Exception):
    """A dial this router will not accept; the message says why (for the node's log)."""


class InUse(Refused):
    """The credential already holds a live connection."""


@dataclass
class _Grant:
    endpoint: str
    minted_at: float
    server_id: str | None = None
    dropped_at: float | None = None  # when its server's connection last dropped
    connected: int = 0


class Credentials:
    """The credentials minted by this router process, by digest."""

    def __init__(
        self, ttl_s: float, redial_grace_s: float, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self.ttl_s = ttl_s
        self.redial_grace_s = redial_grace_s
        self._clock = clock
        self._grants: dict[bytes, _Grant] = {}

    def mint(self, endpoint: str) -> str:
        """A new credential for one server of ``endpoint``."""
        self._forget_stale()
        token = secrets.token_urlsafe(32)
        self._grants[digest(token)] = _Grant(endpoint, self._clock())
        return token

    def check(self, token: str, endpoint: str, server_id: str) -> None:
        """Refused unless ``server_id`` of ``endpoint`` could be admitted with ``token``
        (one live connection aside: ``admit`` says that)."""
        self._checked(token, endpoint, server_id)

    def admit(self, token: str, endpoint: str, server_id: str) -> None:
        """Accept a dial from ``server_id`` of ``endpoint``, or raise Refused (InUse when
        the credential holds a live connection)."""
        grant = self._checked(token, endpoint, server_id)
        if grant.connected:
            raise InUse("the credential is in use by a live connection")
        grant.server_id = server_id
        grant.connected += 1
        grant.dropped_at = None

    def _checked(self, token: str, endpoint: str, server_id: str) -> _Grant:
        grant = self._grants.get(digest(token))
        now = self._clock()
        if grant is None:
            raise Refused("unknown or revoked credential")
        if grant.endpoint != endpoint:
            raise Refused(f"the credential is not for endpoint {endpoint!r}")
        if grant.server_id is None:
            if now - grant.minted_at > self.ttl_s:
                raise Refused("the credential expired before its first use")
        elif grant.server_id != server_id:
            raise Refused("the credential belongs to another server")
        elif (
            not grant.connected
            and grant.dropped_at is not None
            and now - grant.dropped_at > self.redial_grace_s
        ):
            raise Refused("the server was away longer than the redial grace")
        return grant

    def dropped(self, token: str) -> None:
        """The connection made with ``token`` closed."""
        grant = self._grants.get(digest(token))
        if grant is not None:
            grant.connected = max(0, grant.connected - 1)
            if not grant.connected:
                grant.dropped_at = self._clock()

    def revoke_server(self, endpoint: str, server_id: str) -> None:
        """Forget every credential bound to this server (it stopped)."""
        self._grants = {
            key: grant
            for key, grant in self._grants.items()
            if not (grant.endpoint == endpoint and grant.server_id == server_id)
        }

    def _forget_stale(self) -> None:
        now = self._clock()
        self._grants = {
            key: grant
            for key, grant in self._grants.items()
            if grant.connected
            or (grant.server_id is None and now - grant.minted_at <= self.ttl_s)
            or (grant.dropped_at is not None and now - grant.dropped_at <= self.redial_grace_s)
        }


def digest(token: str) -> bytes:
    """What is kept of a credential."""
    return hashlib.sha256(token.encode()).digest()
