"""One writer per folder: a lock file holding the writer's pid, host and start time.

``with FolderLock(folder, "training"):`` creates ``folder/.wsss_d2.lock`` atomically (the file
is written under a temporary name and hard-linked into place, so a lock is either absent or
complete). A second process asking for the same lock fails at once with
:class:`FolderLockedError`, which names the folder, the holder's pid, host and start time and
what the holder is doing. A lock left by a process that no longer runs on this host (killed,
crashed, the machine rebooted) is stale: it is taken over, and that is logged. A lock held by the
asking process itself (an earlier writer in the same process that failed) is taken over too, so
a retry in the same program never deadlocks on its own lock.

A lock from another host cannot be checked: it is refused, and the error says which file to
delete if that process is gone.
"""

from __future__ import annotations

import json
import logging
import os
import socket
import tempfile
import time

logger = logging.getLogger(__name__)

__all__ = ["LOCK_FILE", "FolderLock", "FolderLockedError", "read_lock"]

LOCK_FILE = ".wsss_d2.lock"


class FolderLockedError(RuntimeError):
    """Another live process holds the folder's lock."""


def _process_start(pid: int) -> str | None:
    """The kernel's start time of ``pid`` (clock ticks since boot), to tell a reused pid apart;
    None where /proc is not available."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
        return fields[19]  # field 22 of stat; fields[0] is field 3 (state)
    except (OSError, IndexError):
        return None


def _alive(pid: int, start: str | None) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's live process
        return True
    except OSError:
        return False
    now = _process_start(pid)
    return start is None or now is None or now == start


def read_lock(path: str) -> dict | None:
    """The holder recorded in lock file ``path`` (None if there is none or it is unreadable)."""
    try:
        with open(path) as f:
            return json.load(f)
    except (OSError, ValueError):
        return None


class FolderLock:
    """An exclusive lock on ``folder`` for ``what`` (see the module docstring).

    Use as a context manager, or call :meth:`acquire` / :meth:`release`. Releasing a lock that
    another process took over (after this one was thought dead) leaves theirs in place.
    """

    def __init__(self, folder: str, what: str = "writing", name: str = LOCK_FILE):
        self.folder = folder
        self.what = what
        self.path = os.path.join(folder, name)
        self._token: str | None = None

    @property
    def held(self) -> bool:
        return self._token is not None

    def acquire(self) -> "FolderLock":
        os.makedirs(self.folder, exist_ok=True)
        me = {
            "pid": os.getpid(),
            "host": socket.gethostname(),
            "started": time.strftime("%Y-%m-%d %H:%M:%S"),
            "pid_start": _process_start(os.getpid()),
            "what": self.what,
            "token": f"{os.getpid()}-{time.time_ns()}",
        }
        fd, tmp = tempfile.mkstemp(dir=self.folder, prefix=".tmp_lock_")
        try:
            with os.fdopen(fd, "w") as f:
                json.dump(me, f)
            for _ in range(3):
                try:
                    os.link(tmp, self.path)  # fails if the lock exists: atomic test-and-set
                    self._token = me["token"]
                    return self
                except FileExistsError:
                    self._break_if_stale()
            raise FolderLockedError(f"could not take the lock {self.path} (it keeps reappearing)")
        finally:
            os.remove(tmp)

    def _break_if_stale(self) -> None:
        """Remove the existing lock if its holder is gone (or is this process); else raise."""
        holder = read_lock(self.path)
        if holder is None:
            # unreadable: a lock being replaced right now, or a damaged file
            time.sleep(0.05)
            holder = read_lock(self.path)
            if holder is None:
                if os.path.exists(self.path):
                    raise FolderLockedError(
                        f"{self.folder} has an unreadable lock file {self.path}; delete it if no "
                        "other process is writing there"
                    )
                return
        here = holder.get("host") == socket.gethostname()
        pid = int(holder.get("pid", -1))
        desc = (
            f"pid {pid} on host {holder.get('host')}, started {holder.get('started')}, "
            f"{holder.get('what', 'writing')}"
        )
        if here and pid == os.getpid():
            logger.debug("taking over this process's own earlier lock %s", self.path)
        elif here and not _alive(pid, holder.get("pid_start")):
            logger.warning(
                "taking over the stale lock %s of a process that is gone (%s)", self.path, desc
            )
        elif here:
            raise FolderLockedError(
                f"{self.folder} is in use by another process ({desc}); wait for it to finish or "
                f"choose another folder (lock file {self.path})"
            )
        else:
            raise FolderLockedError(
                f"{self.folder} is in use by a process on another host ({desc}); if that process "
                f"is gone, delete {self.path}"
            )
        try:
            os.remove(self.path)
        except FileNotFoundError:
            pass

    def release(self) -> None:
        if self._token is None:
            return
        holder = read_lock(self.path)
        if holder is not None and holder.get("token") == self._token:
            try:
                os.remove(self.path)
            except FileNotFoundError:
                pass
        self._token = None

    def __enter__(self) -> "FolderLock":
        return self.acquire()

    def __exit__(self, *exc) -> bool:
        self.release()
        return False
