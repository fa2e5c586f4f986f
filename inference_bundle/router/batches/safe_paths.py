"""Paths users name for batches, opened once and never again by name.

The router and the jobs run as the service's account, so a path a user names is checked for
what the user could do themselves, and then only its open descriptor is used:

- A path must be absolute and lie under one of the cluster's roots (``batch_input_roots``,
  ``batch_output_root``). The root itself is the operator's and is resolved as configured
  (``/eagle`` may be a link); below it, every component is opened relative to the one
  before with O_NOFOLLOW, so a link anywhere below a root is refused, never followed.
- ``input_file``: a regular file (no FIFO, device or folder), at most ``max_input_bytes``,
  readable by others (o+r) in folders others may pass (o+x) below the root: a file the
  user could let anyone read, so the service reads nothing for them that they could not.
  Group permissions are not enough: the service cannot tell which members a group has.
  Its bytes are copied into the batch's own folder; the job reads that copy only.
- ``output_file_path``: a new folder that the job creates when the batch ends, with the
  results inside (see ``node_runtime.batch_files.publish``); when it names an existing
  folder, the job creates ``<it>/<batch_id>/``. The folder it is made in must be writable
  and passable by others (o+wx), as the guide asks of a custom output folder.
"""

from __future__ import annotations

import contextlib
import errno
import os
import shutil
import stat
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

from node_runtime.batch_files import INPUT, open_in

from inference_bundle.router.errors import APIError

_DIR = os.O_PATH | os.O_NOFOLLOW | os.O_DIRECTORY | os.O_CLOEXEC
_COPY_CHUNK = 1 << 20


def user_text(value: object, field: str) -> str:
    """``value`` as a path string a user may send; a 400 naming ``field`` otherwise."""
    if not isinstance(value, str) or not value:
        raise APIError(400, f"'{field}' must be a file path (a string).", param=field)
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        raise APIError(
            400, f"'{field}' is not valid Unicode text (a lone surrogate).", param=field
        ) from None
    if "\x00" in value:
        raise APIError(400, f"'{field}' has a NUL character.", param=field)
    if not value.startswith("/"):
        raise APIError(400, f"'{field}' {value} must be an absolute path.", param=field)
    return os.path.normpath(value)


@dataclass(frozen=True)
class Located:
    """A user's path split into its root (resolved) and the components below it."""

    root: str  # the root's real path
    parts: tuple[str, ...]

    @property
    def real(self) -> str:
        """The path with the root resolved: what the job walks from ``/`` without links."""
        return os.path.join(self.root, *self.parts)


def locate(path: str, roots: Sequence[str], field: str) -> Located:
    """Which root ``path`` (normalized, absolute) lies under; a 400 when none."""
    for root in roots:
        given = os.path.normpath(os.path.expanduser(root))
        real = os.path.realpath(given)
        for base in (given, real):
            if path == base or path.startswith(base.rstrip("/") + "/"):
                below = path[len(base) :].strip("/")
                return Located(real, tuple(p for p in below.split("/") if p))
    raise APIError(
        400,
        f"'{field}' {path} is outside the folders batches may use on this cluster: "
        f"{', '.join(roots)}. Put the file under one of them.",
        param=field,
        code="path_not_allowed",
    )


@contextlib.contextmanager
def _walk(
    located: Located, parts: Sequence[str], field: str, need: int, what: str
) -> Iterator[int]:
    """An O_PATH descriptor of root/parts, each folder below the root checked for ``need``."""
    try:
        fd = os.open(located.root, _DIR)  # the operator's root: resolved as configured
    except OSError as err:
        raise _path_error(err, field, located.root) from None
    try:
        here = located.root
        for part in parts:
            here = os.path.join(here, part)
            try:
                next_fd = os.open(part, _DIR, dir_fd=fd)
            except OSError as err:
                raise _path_error(err, field, here) from None
            os.close(fd)
            fd = next_fd
            _require(os.fstat(fd).st_mode, need, field, here, what)
        yield fd
    finally:
        os.close(fd)


def _require(mode: int, need: int, field: str, path: str, what: str) -> None:
    if mode & need != need:
        bits = "".join(
            c
            for bit, c in ((stat.S_IROTH, "r"), (stat.S_IWOTH, "w"), (stat.S_IXOTH, "x"))
            if need & bit
        )
        raise APIError(
            400,
            f"'{field}': {path} is not {what} by others (o+{bits}), which the service needs "
            f"to act for you; run chmod o+{bits} {path}.",
            param=field,
            code="permission_needed",
        )


def _path_error(err: OSError, field: str, path: str) -> APIError:
    if err.errno in (errno.ELOOP, errno.ENOTDIR):
        why = "is a symbolic link or not a folder; name the real path"
    elif err.errno == errno.ENOENT:
        why = "does not exist"
    elif err.errno == errno.EACCES:
        why = "cannot be reached by the service"
    else:
        why = f"cannot be opened ({os.strerror(err.errno or 0)})"
    return APIError(400, f"'{field}': {path} {why}.", param=field, code="invalid_path")


def open_input(path: str, roots: Sequence[str], field: str, max_bytes: int) -> int:
    """A read descriptor of the user's input file, after every check above; the 400 if not."""
    located = locate(path, roots, field)
    if not located.parts:
        raise APIError(400, f"'{field}' {path} is a folder, not a file.", param=field)
    *folders, name = located.parts
    with _walk(located, folders, field, stat.S_IXOTH, "passable") as parent:
        try:
            flags = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC
            fd = os.open(name, flags, dir_fd=parent)
        except OSError as err:
            raise _path_error(err, field, path) from None
    try:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):
            kind = _kind(info.st_mode)
            raise APIError(
                400,
                f"'{field}' {path} is {kind}, not a regular file; name a JSON Lines file.",
                param=field,
                code="invalid_path",
            )
        _require(info.st_mode, stat.S_IROTH, field, path, "readable")
        if info.st_size > max_bytes:
            raise APIError(400, _too_large(field, path, info.st_size, max_bytes), param=field)
        os.set_blocking(fd, True)
    except BaseException:
        os.close(fd)
        raise
    return fd


def _kind(mode: int) -> str:
    if stat.S_ISFIFO(mode):
        return "a FIFO"
    if stat.S_ISDIR(mode):
        return "a folder"
    if stat.S_ISCHR(mode) or stat.S_ISBLK(mode):
        return "a device"
    if stat.S_ISSOCK(mode):
        return "a socket"
    return "not a regular file"


def _too_large(field: str, path: str, size: int, limit: int) -> str:
    return (
        f"'{field}' {path} is {size:,} bytes; a batch input may have at most {limit:,}. "
        "Split it into several batches."
    )


def output_target(path: str, roots: Sequence[str], field: str, batch_id: str) -> str:
    """The folder the job will create for a user's ``output_file_path`` (its real path)."""
    located = locate(path, roots, field)
    if not located.parts:
        raise APIError(400, f"'{field}' {path} is a root folder; name a folder in it.", param=field)
    *folders, name = located.parts
    with _walk(located, folders, field, stat.S_IXOTH, "passable") as parent:
        try:
            info = os.stat(name, dir_fd=parent, follow_symlinks=False)
        except FileNotFoundError:
            _require(
                os.fstat(parent).st_mode,
                stat.S_IWOTH | stat.S_IXOTH,
                field,
                os.path.dirname(path),
                "writable",
            )
            return located.real
        if not stat.S_ISDIR(info.st_mode):
            raise APIError(400, f"'{field}' {path} already exists; name a new folder.", param=field)
        _require(info.st_mode, stat.S_IWOTH | stat.S_IXOTH, field, path, "writable")
    return os.path.join(located.real, batch_id)


def make_batch_dir(root: str, batch_id: str) -> Path:
    """The batch's own folder, new, 0700, under the cluster's ``batch_output_root``."""
    base = Path(root).expanduser()
    base.mkdir(mode=0o700, parents=True, exist_ok=True)
    folder = base / batch_id
    folder.mkdir(mode=0o700)  # fails if anything is there: ids are new
    os.chmod(folder, 0o700)
    return folder


def store_input(source_fd: int, folder: Path, max_bytes: int, field: str) -> int:
    """Copy the open input into ``folder``/input.jsonl (0600); its size. Closes source_fd."""
    with contextlib.ExitStack() as stack:
        source = stack.enter_context(os.fdopen(source_fd, "rb"))
        dir_fd = os.open(folder, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC)
        stack.callback(os.close, dir_fd)
        flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL
        copy = stack.enter_context(os.fdopen(open_in(dir_fd, INPUT, flags, 0o600), "wb"))
        size = 0
        while chunk := source.read(_COPY_CHUNK):
            size += len(chunk)
            if size > max_bytes:  # it grew after it was checked
                raise APIError(400, _too_large(field, "the input", size, max_bytes), param=field)
            copy.write(chunk)
        return size


def drop_batch_dir(folder: Path) -> None:
    """Remove a batch's folder that never became a batch (its input was refused)."""
    shutil.rmtree(folder, ignore_errors=True)
