"""The router's log and records: its account's only, or also a group the operator names.

The log holds the access log (user names, models, request ids); the records hold usage,
batches and key hashes. Each is created 0600 in 0700 folders, or 0640 and 2750 with the
settings' ``file_group``; one found looser at start-up (an older router's, or an operator's
copy) is tightened. Secrets (key files, the metrics token) stay the account's only.
"""

from __future__ import annotations

import grp
import os
import secrets
import stat
from dataclasses import dataclass
from pathlib import Path

from inference_bundle.config.problems import Problem, SettingsError


@dataclass(frozen=True)
class FileAccess:
    """Who may read the router's files besides its account: nobody, or one group."""

    gid: int | None = None

    @property
    def file_mode(self) -> int:
        return 0o600 if self.gid is None else 0o640

    @property
    def folder_mode(self) -> int:
        # Set-group-ID: what SQLite and the router make later (a new -wal) is the group's too.
        return 0o700 if self.gid is None else 0o2750


OWNER_ONLY = FileAccess()


def file_access(group: str | None, settings_file: str) -> FileAccess:
    """The access ``file_group`` names; SettingsError for a group this account cannot give
    its files to (one that does not exist, or that it is not in)."""
    if group is None:
        return OWNER_ONLY
    try:
        gid = grp.getgrnam(group).gr_gid
    except KeyError:
        gid = None
    mine = {os.getegid(), *os.getgroups()}
    if gid is None or (gid not in mine and os.geteuid() != 0):
        names = ", ".join(sorted(_group_name(g) for g in mine))
        why = "there is no such group here" if gid is None else "this account is not in it"
        raise SettingsError(
            [
                Problem(
                    settings_file,
                    "file_group",
                    f"the router cannot give its files to the group {group!r}: {why}. Name "
                    f"one of this account's groups ({names}), or leave file_group out.",
                )
            ]
        )
    return FileAccess(gid)


def private_folder(path: Path, access: FileAccess = OWNER_ONLY) -> None:
    """``path`` and its missing parents made; ``path`` itself given ``access``."""
    path.mkdir(mode=access.folder_mode, parents=True, exist_ok=True)
    tighten(path, access)


def tighten_folder(path: Path, access: FileAccess = OWNER_ONLY) -> None:
    """The folder (made if missing) and each file directly in it given ``access``.

    Not deeper: the folder's own mode already keeps others out of what lies below, and the
    engines' run folders there keep modes of their own (scripts that must stay executable).
    """
    private_folder(path, access)
    with os.scandir(path) as entries:
        for entry in entries:
            if entry.is_file(follow_symlinks=False):
                tighten(Path(entry.path), access)


def tighten(path: Path, access: FileAccess = OWNER_ONLY) -> None:
    """A file or folder given ``access``, if it is there; a link is left alone (chmod would
    change what it points to)."""
    try:
        info = os.lstat(path)
    except FileNotFoundError:
        return
    if stat.S_ISLNK(info.st_mode):
        return
    mode = access.folder_mode if stat.S_ISDIR(info.st_mode) else access.file_mode
    # Only what differs: someone with read access (a group's member) changes nothing.
    if access.gid is not None and info.st_gid != access.gid:
        os.chown(path, -1, access.gid, follow_symlinks=False)
    if stat.S_IMODE(info.st_mode) != mode:
        os.chmod(path, mode)


def open_private(path: Path, flags: int, access: FileAccess = OWNER_ONLY) -> int:
    """A descriptor of ``path`` opened with ``flags`` (O_CREAT among them to make it),
    given ``access`` whether new or found looser."""
    fd = os.open(path, flags | os.O_CLOEXEC, access.file_mode)
    try:
        info = os.fstat(fd)
        if access.gid is not None and info.st_gid != access.gid:
            os.fchown(fd, -1, access.gid)
        if stat.S_IMODE(info.st_mode) != access.file_mode:
            os.fchmod(fd, access.file_mode)
    except BaseException:
        os.close(fd)
        raise
    return fd


def made_secret(path: Path) -> str:
    """The secret in ``path``, written there (random, owner-only) on first use; the file is
    tightened to the account's only, whatever file_group says. OSError or UnicodeDecodeError
    when it cannot be read."""
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
    except FileExistsError:
        tighten(path)
    else:
        with os.fdopen(fd, "w") as handle:
            handle.write(secrets.token_urlsafe(32) + "\n")
    return path.read_text().strip()


def write_private(path: Path, text: str, access: FileAccess = OWNER_ONLY) -> None:
    """``path``'s whole text replaced with ``text``, the file given ``access``."""
    flags = os.O_WRONLY | os.O_CREAT | os.O_TRUNC
    with os.fdopen(open_private(path, flags, access), "w") as handle:
        handle.write(text)


def _group_name(gid: int) -> str:
    try:
        return grp.getgrgid(gid).gr_name
    except KeyError:
        return str(gid)
