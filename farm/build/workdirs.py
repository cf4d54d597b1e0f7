"""Finished build directories, removed off the build's path.

A finished build's directory is renamed at once out of the work root into a trash directory beside it (so the work
root only ever holds builds in progress, and nothing of a finished build is where a build looks), then deleted by
one background thread per process. When deleting falls behind, the build deletes its own directory before it
returns. Whatever a process had not deleted when it ended is deleted by the next process that discards a
directory into the same trash, once the process that put it there is gone.
"""

from __future__ import annotations

import contextlib
import logging
import os
import queue
import secrets
import shutil
import threading
from pathlib import Path

log = logging.getLogger(__name__)

MAX_PENDING = 4  # directories waiting for the deleter before a build deletes its own

_deleters: dict[Path, tuple[int, queue.Queue[Path]]] = {}  # trash -> (the pid that started it, its queue)
_lock = threading.Lock()


def trash_of(work_root: Path) -> Path:
    """The trash beside ``work_root`` (on the same file system, so the rename is one metadata update)."""
    return work_root.with_name(f".{work_root.name}.trash")


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _delete_forever(pending: queue.Queue[Path]) -> None:
    while True:
        path = pending.get()
        shutil.rmtree(path, ignore_errors=True)
        pending.task_done()


def _deleter(trash: Path) -> queue.Queue[Path]:
    """This process's queue for ``trash``, its thread started (again after a fork) with what dead processes left."""
    with _lock:
        found = _deleters.get(trash)
        if found is not None and found[0] == os.getpid():
            return found[1]
        pending: queue.Queue[Path] = queue.Queue()
        for entry in trash.iterdir():
            pid, _, _ = entry.name.partition("-")
            if not (pid.isdigit() and _alive(int(pid))):
                pending.put(entry)
        thread = threading.Thread(target=_delete_forever, args=(pending,), name="mangos-workdir-trash", daemon=True)
        thread.start()
        _deleters[trash] = (os.getpid(), pending)
        return pending


def discard(workdir: Path, work_root: Path) -> None:
    """Remove ``workdir`` (a finished build's directory under ``work_root``): gone from the work root when this
    returns, its files deleted in the background."""
    trash = trash_of(work_root)
    target = trash / f"{os.getpid()}-{secrets.token_hex(6)}"
    try:
        trash.mkdir(exist_ok=True)
        os.rename(workdir, target)
    except OSError as exc:  # another file system, say: delete it here and now
        if workdir.exists():
            log.debug("cannot move %s to %s (%s); deleting it in place", workdir, trash, exc)
        shutil.rmtree(workdir, ignore_errors=True)
        return
    pending = _deleter(trash)
    if pending.qsize() >= MAX_PENDING:
        shutil.rmtree(target, ignore_errors=True)
    else:
        pending.put(target)


def drain(work_root: Path, timeout: float = 30.0) -> bool:
    """Wait until this process has deleted what it discarded under ``work_root`` (for tests and shutdown); False on
    timeout."""
    found = _deleters.get(trash_of(work_root))
    if found is None or found[0] != os.getpid():
        return True
    done = threading.Event()

    def wait() -> None:
        with contextlib.suppress(Exception):
            found[1].join()
        done.set()

    threading.Thread(target=wait, daemon=True).start()
    return done.wait(timeout)
