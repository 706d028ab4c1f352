"""One training per run folder: an exclusive `flock` on `RUN/.lock`, which holds the owner's pid.

The kernel drops the lock when its process ends, crashed or killed included, so a stale `.lock` file
never blocks a new run; the file itself stays (deleting it would let two runs lock two different files).
"""

from __future__ import annotations

import contextlib
import fcntl
import os
from pathlib import Path

from resnet_deploy.errors import UsageError

LOCK_FILE = ".lock"


class RunLock:
    """Held from set-up to the end of a run (rank 0 only)."""

    def __init__(self, folder: Path) -> None:
        self.path = folder / LOCK_FILE
        self._fd: int | None = None

    def acquire(self) -> RunLock:
        try:
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o666)
        except OSError as exc:
            raise UsageError(f"cannot write to the run folder {self.path.parent}: {exc.strerror}") from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            owner = _read_pid(fd)
            os.close(fd)
            who = f"another training (pid {owner})" if owner else "another training"
            raise UsageError(f"{self.path.parent} is in use by {who}; wait for it to finish, or pass another "
                             "--output folder") from None
        try:  # the pid is for the message above; writing it also proves the folder takes writes
            os.ftruncate(fd, 0)
            os.write(fd, f"{os.getpid()}\n".encode())
        except OSError as exc:
            os.close(fd)
            raise UsageError(f"cannot write to the run folder {self.path.parent}: {exc.strerror}") from None
        self._fd = fd
        return self

    def release(self) -> None:
        if self._fd is not None:
            with contextlib.suppress(OSError):
                fcntl.flock(self._fd, fcntl.LOCK_UN)
            os.close(self._fd)
            self._fd = None


def _read_pid(fd: int) -> int | None:
    try:
        text = os.pread(fd, 32, 0).decode("ascii", "replace").strip()
    except OSError:
        return None
    return int(text) if text.isdigit() else None
