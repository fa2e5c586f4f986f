"""Mode `keys`: API keys stored as sha256 hashes in a file that `make deploy` writes.

A key is 256 random bits, so its sha256 cannot be reversed or guessed: a slow password
hash (bcrypt, argon2) protects low-entropy secrets and would only add milliseconds to
every request here.

Operators add, list and revoke keys while the router runs (`bundle keys`): every change
takes the file's lock and replaces the file atomically, and the router rereads it on the
next request after a stat() tells it changed.
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
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from time import time_ns
from typing import Any

from inference_bundle.router.auth.callers import (
    AuthConfigError,
    Caller,
    admin_names,
    bearer_credential,
    digest,
    unauthorized,
)

log = logging.getLogger(__name__)

KEY_PREFIX = "ie-"
_FORMAT_VERSION = 1
_HOW_TO_GET_ONE = "use the API key that `make deploy` printed, or ask the operator for one."


@dataclass(frozen=True)
class ApiKeyEntry:
    """One key as the keys file describes it, without its hash: safe to print."""

    key_id: str
    user: str
    groups: tuple[str, ...]
    admin: bool
    created: str | None  # ISO 8601, UTC; None in entries written by hand

    def as_json(self) -> dict[str, Any]:
        return {
            "id": self.key_id,
            "user": self.user,
            "groups": list(self.groups),
            "admin": self.admin,
            "created": self.created,
        }


@dataclass(frozen=True)
class NewApiKey:
    """A key just added: `key` exists only here, the file keeps its hash."""

    key: str
    entry: ApiKeyEntry


class UnknownKeyError(LookupError):
    """No entry of the keys file has the id an operator gave."""


@dataclass(frozen=True)
class _StoredKey:
    entry: ApiKeyEntry
    sha256: str


class KeysAuthenticator:
    """Checks `Bearer <key>` against the hashes in keys_file, rereading it when it changes.

    A key's user is an admin when its entry says `"admin": true` or the user is in `admins`
    (`auth.admins`).
    """

    def __init__(self, keys_file: Path, admins: Iterable[str] = ()) -> None:
        if not keys_file.is_file():
            raise AuthConfigError(
                f"auth.keys_file: {keys_file} does not exist; `make deploy` creates it "
                "with a first key"
            )
        self._path = keys_file
        self._admins = admin_names(admins)
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
                found = key.entry
        if found is None:
            raise unauthorized(
                f"The API key is not valid. Check it for typos; {_HOW_TO_GET_ONE}",
                code="invalid_api_key",
                invalid=True,
            )
        return Caller(
            user=found.user,
            identity_id=None,
            groups=frozenset(found.groups),
            admin=found.admin or found.user.casefold() in self._admins,
        )

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
        # Stat before reading: a replace in between makes the next stamp differ, never hides.
        # The inode alone is not enough (a third write may reuse the first's), nor is the
        # kernel's coarse mtime: _write_atomically makes each file's mtime a new one.
        stamp = (st.st_mtime_ns, st.st_size, st.st_ino)
        if stamp != self._stamp:
            self._keys = tuple(_parse(_read(self._path), self._path))
            self._stamp = stamp


def add_api_key(
    keys_file: Path, user: str, groups: Sequence[str] = (), *, admin: bool = False
) -> NewApiKey:
    """Add a key for `user` to keys_file; the key is returned once, only its hash is stored.

    The file is replaced atomically with mode 0600, under a lock so that two deploys or
    operators cannot lose each other's keys.
    """
    _check_name("user name", user)
    for group in groups:
        _check_name("group name", group)
    key = KEY_PREFIX + secrets.token_urlsafe(32)
    keys_file.parent.mkdir(parents=True, exist_ok=True)
    with _locked(keys_file):
        data: dict[str, Any] = (
            _read(keys_file) if keys_file.exists() else {"version": _FORMAT_VERSION}
        )
        stored = _parse(data, keys_file)  # refuse to extend a file we could not read back
        taken = {k.entry.key_id for k in stored}
        key_id = secrets.token_hex(4)
        while key_id in taken:  # revoke takes an id: it must name one key
            key_id = secrets.token_hex(4)
        entry = ApiKeyEntry(
            key_id=key_id,
            user=user,
            groups=tuple(sorted(set(groups))),
            admin=admin,
            created=datetime.now(UTC).isoformat(timespec="seconds"),
        )
        raw = entry.as_json()
        raw["sha256"] = digest(key)
        data["keys"] = [*data.get("keys", []), raw]
        _write_atomically(keys_file, json.dumps(data, indent=2) + "\n")
    log.info(
        "created API key %s for user %s%s in %s",
        key_id,
        user,
        " (admin)" if admin else "",
        keys_file,
    )
    return NewApiKey(key=key, entry=entry)


def create_api_key(
    keys_file: Path, user: str, groups: Sequence[str] = (), *, admin: bool = False
) -> str:
    """Add a key for `user` to keys_file and return it (see add_api_key)."""
    return add_api_key(keys_file, user, groups, admin=admin).key


def holds_key(keys_file: Path, key: str) -> bool:
    """Whether ``key`` is one of the file's (not revoked); False for a missing file."""
    if not keys_file.exists():
        return False
    presented = digest(key)
    return any(k.sha256 == presented for k in _parse(_read(keys_file), keys_file))


def list_api_keys(keys_file: Path) -> list[ApiKeyEntry]:
    """Every key in keys_file, in the order added; hashes stay in the file.

    No lock: a writer replaces the file whole, so a read sees one version or the next.
    """
    _must_exist(keys_file)
    return [k.entry for k in _parse(_read(keys_file), keys_file)]


def revoke_api_key(keys_file: Path, key_id: str) -> ApiKeyEntry:
    """Remove the key with `key_id` from keys_file and return what it was.

    Raises UnknownKeyError, naming the id and the file, when no key has that id.
    """
    _must_exist(keys_file)
    with _locked(keys_file):
        data = _read(keys_file)
        stored = _parse(data, keys_file)
        revoked = [k.entry for k in stored if k.entry.key_id == key_id]
        if not revoked:
            raise UnknownKeyError(
                f"no API key has id {key_id!r} in {keys_file}; `bundle keys list` shows the ids"
            )
        # The raw entries are kept as they are: fields this version does not know survive.
        data["keys"] = [k for k in data.get("keys", []) if str(k["id"]) != key_id]
        _write_atomically(keys_file, json.dumps(data, indent=2) + "\n")
    log.info("revoked API key %s of user %s in %s", key_id, revoked[0].user, keys_file)
    return revoked[0]


def _check_name(what: str, name: str) -> None:
    if not name.strip() or any(not c.isprintable() for c in name):
        raise ValueError(f"an API key needs a printable {what}, not {name!r}")


def _must_exist(keys_file: Path) -> None:
    if not keys_file.is_file():
        raise AuthConfigError(
            f"auth.keys_file: {keys_file} does not exist; `make deploy` or `bundle keys add` "
            "creates it"
        )


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
    """Replace `path` whole, with an mtime no earlier version of it had.

    The kernel stamps files with a clock that ticks every few milliseconds, and a freed inode
    number comes back at once: two quick replaces can leave a file whose (mtime, size, inode)
    equal the version a router last read, which would then keep serving a revoked key.
    """
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w") as f:  # mkstemp made it 0600
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        try:
            previous = path.stat().st_mtime_ns
        except FileNotFoundError:
            previous = 0
        mtime = max(time_ns(), previous + 1)
        os.utime(tmp, ns=(mtime, mtime))
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
        return [_stored_key(k, path) for k in data.get("keys", [])]
    except (KeyError, TypeError) as err:
        raise AuthConfigError(
            f"auth.keys_file: {path} has a key entry without {err}; each needs id, user and sha256"
        ) from None


def _stored_key(raw: object, path: Path) -> _StoredKey:
    if not isinstance(raw, dict):
        raise AuthConfigError(f"auth.keys_file: {path} has a key entry that is not an object")
    admin = raw.get("admin", False)  # absent in files from before admins: not an admin
    if not isinstance(admin, bool):
        # "false" as a string would be true: a wrong admin flag must not grant anything.
        raise AuthConfigError(
            f"auth.keys_file: {path}: key {raw.get('id')!r} has admin {admin!r}; "
            "write true or false"
        )
    created = raw.get("created")
    return _StoredKey(
        entry=ApiKeyEntry(
            key_id=str(raw["id"]),
            user=str(raw["user"]),
            groups=tuple(sorted({str(g) for g in raw.get("groups", [])})),
            admin=admin,
            created=None if created is None else str(created),
        ),
        sha256=str(raw["sha256"]),
    )
