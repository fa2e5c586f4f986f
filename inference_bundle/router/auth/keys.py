"""Mode `keys`: API keys stored as sha256 hashes in a file that `make deploy` writes.

A key is 256 random bits, so its sha256 cannot be reversed or guessed: a slow password
hash (bcrypt, argon2) protects low-entropy secrets and would only add milliseconds to
every request here.
"""

from __future__ import annotations

import contextlib
import fcntl
import hmac
import json
import logging
import os
import secrets
import tempfile
import threading
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from inference_bundle.router.auth.credentials import (
    AuthConfigError,
    Caller,
    bearer_credential,
    digest,
    unauthorized,
)

log = logging.getLogger(__name__)

KEY_PREFIX = "ie-"
_FORMAT_VERSION = 1
_HOW_TO_GET_ONE = "use the API key that `make deploy` printed, or ask the operator for one."


@dataclass(frozen=True)
class _StoredKey:
    key_id: str
    user: str
    groups: frozenset[str]
    sha256: str


class KeysAuthenticator:
    """Checks `Bearer <key>` against the hashes in keys_file, rereading it when it changes."""

    def __init__(self, keys_file: Path) -> None:
        if not keys_file.is_file():
            raise AuthConfigError(
                f"auth.keys_file: {keys_file} does not exist; `make deploy` creates it "
                "with a first key"
            )
        self._path = keys_file
        self._lock = threading.Lock()
        self._stamp: tuple[int, int, int] | None = None
        self._keys: tuple[_StoredKey, ...] = ()
        self._reload()

    def authenticate(self, authorization: str | None) -> Caller:
        """The caller whose key this is, or APIError(401)."""
        presented = digest(bearer_credential(authorization, _HOW_TO_GET_ONE))
        found = None
        for key in self._current_keys():
            # Every entry is compared, in constant time, so timing says nothing.
            if hmac.compare_digest(key.sha256, presented):
                found = key
        if found is None:
            raise unauthorized(
                f"The API key is not valid. Check it for typos; {_HOW_TO_GET_ONE}",
                code="invalid_api_key",
                invalid=True,
            )
        return Caller(user=found.user, identity_id=None, groups=found.groups)

    def authenticate_at_once(self, authorization: str | None) -> Caller | None:
        """Keys are in memory (a stat() tells a changed file): always at once."""
        return self.authenticate(authorization)

    def _current_keys(self) -> tuple[_StoredKey, ...]:
        with self._lock:
            try:
                self._reload()
            except AuthConfigError as err:
                # Keep serving the last good keys rather than locking everyone out.
                log.error("keeping the previous API keys: %s", err)
            return self._keys

    def _reload(self) -> None:
        try:
            st = self._path.stat()
        except FileNotFoundError:
            raise AuthConfigError(f"auth.keys_file: {self._path} has disappeared") from None
        stamp = (st.st_mtime_ns, st.st_size, st.st_ino)
        if stamp != self._stamp:
            self._keys = tuple(_parse(_read(self._path), self._path))
            self._stamp = stamp


def create_api_key(keys_file: Path, user: str, groups: Sequence[str] = ()) -> str:
    """Add a key for `user` to keys_file and return it; only its hash is stored.

    The file is replaced atomically with mode 0600, under a lock so that two deploys
    cannot lose each other's keys.
    """
    if not user.strip() or any(not c.isprintable() for c in user):
        raise ValueError(f"an API key needs a printable user name, not {user!r}")
    key = KEY_PREFIX + secrets.token_urlsafe(32)
    entry = {
        "id": secrets.token_hex(4),
        "user": user,
        "groups": sorted(set(groups)),
        "sha256": digest(key),
        "created": datetime.now(UTC).isoformat(timespec="seconds"),
    }
    keys_file.parent.mkdir(parents=True, exist_ok=True)
    with _locked(keys_file):
        data: dict[str, Any] = (
            _read(keys_file) if keys_file.exists() else {"version": _FORMAT_VERSION}
        )
        _parse(data, keys_file)  # refuse to extend a file we could not read back
        data["keys"] = [*data.get("keys", []), entry]
        _write_atomically(keys_file, json.dumps(data, indent=2) + "\n")
    log.info("created API key %s for user %s in %s", entry["id"], user, keys_file)
    return key


@contextlib.contextmanager
def _locked(keys_file: Path) -> Iterator[None]:
    lock_path = keys_file.with_name(keys_file.name + ".lock")
    fd = os.open(lock_path, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)


def _write_atomically(path: Path, text: str) -> None:
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w") as f:  # mkstemp made it 0600
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise
    dir_fd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)


def _read(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as err:
        raise AuthConfigError(f"auth.keys_file: cannot read {path}: {err}") from None
    if not isinstance(data, dict):
        raise AuthConfigError(f"auth.keys_file: {path} should hold a JSON object")
    return data


def _parse(data: dict[str, Any], path: Path) -> list[_StoredKey]:
    if data.get("version") != _FORMAT_VERSION:
        raise AuthConfigError(
            f"auth.keys_file: {path} has version {data.get('version')!r}, "
            f"expected {_FORMAT_VERSION}"
        )
    try:
        return [
            _StoredKey(
                key_id=str(k["id"]),
                user=str(k["user"]),
                groups=frozenset(str(g) for g in k.get("groups", [])),
                sha256=str(k["sha256"]),
            )
            for k in data.get("keys", [])
        ]
    except (KeyError, TypeError) as err:
        raise AuthConfigError(
            f"auth.keys_file: {path} has a key entry without {err}; each needs id, user and sha256"
        ) from None
