"""A batch job's files, all in the batch's own folder, opened without following links.

The router creates ``<batch_output_root>/<batch_id>/`` (0700, the service's account) and
copies the validated input there; nothing a user names is opened by name after that. In it:

- ``input.jsonl``: the bytes checked at submit (0600); the job reads only these;
- ``output.jsonl``, ``errors.jsonl``: answers and failures, one flushed line each (0600);
- ``progress.json``: {"total", "completed", "failed", "state", "updated_at"}, replaced
  atomically while the job runs (the router reads it for status);
- ``cancel``: when it appears, no new request is sent; those in flight finish;
- ``pause``: the same, but the job ends "paused" and resumes when submitted again (once the
  router took the marker away); a job started while it is there returns at once. A cancel
  wins over a pause;
- ``lock``: held while a job runs, so that two jobs never feed one batch.

A folder is used only when it is a folder of this account that nobody else may write to,
and every file in it is opened relative to the folder's descriptor with O_NOFOLLOW.
``publish`` copies the results to a user's ``output_file_path``: see its docstring.
"""

import contextlib
import json
import os
import stat
import threading
import time
from collections.abc import Iterator
from typing import Any, BinaryIO

from .state_names import FeedState

INPUT = "input.jsonl"
OUTPUT = "output.jsonl"
ERRORS = "errors.jsonl"
PROGRESS = "progress.json"
CANCEL = "cancel"
PAUSE = "pause"
LOCK = "lock"

_PROGRESS_EVERY_S = 0.5
_PROGRESS_MAX_BYTES = 64 * 1024
_NOFOLLOW_DIR = os.O_PATH | os.O_NOFOLLOW | os.O_DIRECTORY | os.O_CLOEXEC
PUBLISHED_DIR_MODE = 0o755
PUBLISHED_FILE_MODE = 0o644


def open_private_dir(path: str) -> int:
    """A descriptor of the batch folder ``path``; OSError unless it is this account's, 0700.

    Its last component is not followed, and a folder others may write to (where they could
    plant a link or a FIFO) is refused.
    """
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC)
    info = os.fstat(fd)
    if info.st_uid != os.geteuid() or info.st_mode & 0o077:
        os.close(fd)
        raise PermissionError(f"{path} is not a private folder of this account")
    return fd


@contextlib.contextmanager
def private_dir(path: str) -> Iterator[int]:
    """``open_private_dir`` as a context: the descriptor is closed on the way out."""
    fd = open_private_dir(path)
    try:
        yield fd
    finally:
        os.close(fd)


def open_in(dir_fd: int, name: str, flags: int, mode: int = 0o600) -> int:
    """``name`` in the folder ``dir_fd``, never through a link; non-blocking on FIFOs."""
    return os.open(name, flags | os.O_NOFOLLOW | os.O_CLOEXEC, mode, dir_fd=dir_fd)


def open_regular(dir_fd: int, name: str) -> BinaryIO:
    """``name`` in ``dir_fd`` for reading; OSError unless it is a regular file (no FIFO wait)."""
    fd = open_in(dir_fd, name, os.O_RDONLY | os.O_NONBLOCK)
    if not stat.S_ISREG(os.fstat(fd).st_mode):
        os.close(fd)
        raise OSError(f"{name} is not a regular file")
    os.set_blocking(fd, True)
    return os.fdopen(fd, "rb")


def exists_in(dir_fd: int, name: str) -> bool:
    try:
        os.stat(name, dir_fd=dir_fd, follow_symlinks=False)
    except FileNotFoundError:
        return False
    return True


def read_progress(batch_dir: str) -> dict[str, Any] | None:
    """The job's last progress record, or None before it wrote one (or when unreadable)."""
    try:
        with private_dir(batch_dir) as fd, open_regular(fd, PROGRESS) as handle:
            data = json.loads(handle.read(_PROGRESS_MAX_BYTES))
    except (OSError, ValueError, RecursionError):
        return None
    return data if isinstance(data, dict) else None


def request_cancel(batch_dir: str) -> None:
    """Leave the cancel marker for the job."""
    with private_dir(batch_dir) as fd:
        os.close(open_in(fd, CANCEL, os.O_WRONLY | os.O_CREAT))


def cancelled(dir_fd: int) -> bool:
    """Whether the router asked the job to stop."""
    return exists_in(dir_fd, CANCEL)


def request_pause(batch_dir: str) -> None:
    """Leave the pause marker for the job."""
    with private_dir(batch_dir) as fd:
        os.close(open_in(fd, PAUSE, os.O_WRONLY | os.O_CREAT))


def clear_pause(batch_dir: str) -> None:
    """Take the pause marker away (before the batch is submitted again)."""
    with private_dir(batch_dir) as fd, contextlib.suppress(FileNotFoundError):
        os.unlink(PAUSE, dir_fd=fd)


def paused(dir_fd: int) -> bool:
    """Whether the router asked the job to pause."""
    return exists_in(dir_fd, PAUSE)


def hold_lock(dir_fd: int) -> int:
    """The lock file's descriptor, for flock; closing it lets go."""
    return open_in(dir_fd, LOCK, os.O_WRONLY | os.O_CREAT)


def answered_ids(dir_fd: int, name: str) -> set[str]:
    """custom_ids in a result file; a torn last line (a cut job) is cut off first."""
    try:
        fd = open_in(dir_fd, name, os.O_RDWR)
    except FileNotFoundError:
        return set()
    with os.fdopen(fd, "rb+") as handle:
        data = handle.read()
        if data and not data.endswith(b"\n"):
            keep = data.rfind(b"\n") + 1
            handle.truncate(keep)
            data = data[:keep]
    ids: set[str] = set()
    for raw in data.splitlines():
        with contextlib.suppress(ValueError, RecursionError):
            line = json.loads(raw)
            if isinstance(line, dict) and isinstance(line.get("custom_id"), str):
                ids.add(line["custom_id"])
    return ids


def input_lines(dir_fd: int) -> Iterator[bytes]:
    """The non-blank lines of the batch's stored input."""
    with open_regular(dir_fd, INPUT) as handle:
        for raw in handle:
            if raw.strip():
                yield raw


class Results:
    """The output and error files, appended line by line, and the progress counts."""

    def __init__(self, dir_fd: int, total: int) -> None:
        self.dir_fd = dir_fd
        self.lock = threading.Lock()
        append = os.O_WRONLY | os.O_APPEND | os.O_CREAT
        self.output = os.fdopen(open_in(dir_fd, OUTPUT, append), "a")
        self.errors = os.fdopen(open_in(dir_fd, ERRORS, append), "a")
        self.total = total
        self.completed = self._count(OUTPUT)
        self.failed = self._count(ERRORS)
        self.state = FeedState.RUNNING
        self.written_at = 0.0

    def _count(self, name: str) -> int:
        with open_regular(self.dir_fd, name) as handle:
            return sum(1 for raw in handle if raw.strip())

    def add(self, line: dict[str, Any], ok: bool) -> None:
        text = json.dumps(line) + "\n"
        with self.lock:
            target = self.output if ok else self.errors
            target.write(text)
            target.flush()
            if ok:
                self.completed += 1
            else:
                self.failed += 1
            if time.monotonic() - self.written_at >= _PROGRESS_EVERY_S:
                self.write_progress()

    def write_progress(self) -> None:
        record = {
            "total": self.total,
            "completed": self.completed,
            "failed": self.failed,
            "state": self.state,
            "updated_at": time.time(),
        }
        temporary = f"{PROGRESS}.{os.getpid()}.tmp"
        with contextlib.suppress(FileNotFoundError):
            os.unlink(temporary, dir_fd=self.dir_fd)
        fd = open_in(self.dir_fd, temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL)
        with os.fdopen(fd, "w") as handle:
            json.dump(record, handle)
        os.replace(temporary, PROGRESS, src_dir_fd=self.dir_fd, dst_dir_fd=self.dir_fd)
        self.written_at = time.monotonic()

    def close(self) -> None:
        with self.lock:
            self.write_progress()
            self.output.close()
            self.errors.close()


def walk_nofollow(path: str) -> int:
    """An O_PATH descriptor of the folder ``path``, reached from ``/`` without following links.

    Every component is opened relative to the one before with O_NOFOLLOW: a link anywhere
    on the way is an OSError (ELOOP or ENOTDIR), never a detour.
    """
    if not os.path.isabs(path):
        raise ValueError(f"{path} is not an absolute path")
    fd = os.open("/", _NOFOLLOW_DIR)
    try:
        for part in os.path.normpath(path).split("/"):
            if part:
                next_fd = os.open(part, _NOFOLLOW_DIR, dir_fd=fd)
                os.close(fd)
                fd = next_fd
    except BaseException:
        os.close(fd)
        raise
    return fd


def publish(dir_fd: int, target: str) -> None:
    """Copy output.jsonl and errors.jsonl into a new folder ``target`` (the user's choice).

    The folder's parent is reached with ``walk_nofollow``; ``mkdir`` fails on anything
    already at ``target`` (a planted link included); the new folder is opened with
    O_NOFOLLOW and must be this account's; the files are created in it with
    O_CREAT|O_EXCL|O_NOFOLLOW. The folder is 0755 and the files 0644 so that the user,
    another account, can read them: a user who wants them private picks a parent folder
    others cannot list. Raises OSError when any step fails; nothing is overwritten.
    """
    parent_fd = walk_nofollow(os.path.dirname(os.path.normpath(target)))
    name = os.path.basename(os.path.normpath(target))
    try:
        os.mkdir(name, 0o700, dir_fd=parent_fd)
        out_fd = os.open(
            name, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=parent_fd
        )
    finally:
        os.close(parent_fd)
    try:
        if os.fstat(out_fd).st_uid != os.geteuid():
            raise PermissionError(f"{target} was replaced by a folder of another account")
        for source in (OUTPUT, ERRORS):
            _copy_into(dir_fd, source, out_fd)
        os.fchmod(out_fd, PUBLISHED_DIR_MODE)
    finally:
        os.close(out_fd)


def _copy_into(dir_fd: int, name: str, out_fd: int) -> None:
    if not exists_in(dir_fd, name):
        return
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL
    with (
        open_regular(dir_fd, name) as source,
        os.fdopen(open_in(out_fd, name, flags, PUBLISHED_FILE_MODE), "wb") as copy,
    ):
        while chunk := source.read(1 << 20):
            copy.write(chunk)
        os.fchmod(copy.fileno(), PUBLISHED_FILE_MODE)
