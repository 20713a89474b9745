"""A run directory belongs to one run at a time.

An exclusive `flock` on `RUN/.opcd.lock`, held for the run's life, names its holder (PID, host, start time) in the
file. A second process on the same directory gets one line naming the holder. The kernel drops the lock when its
process dies, so a lock file left by a killed run is simply taken over (with a warning naming the old holder). Within
one process the lock is re-entrant: a recipe holds it around evaluation and training, and `train` inside it does not
block itself. Under a launcher only rank 0 holds it; the ranks of one run share it.
"""

from __future__ import annotations

import fcntl
import os
import shutil
import socket
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from opcd.errors import OpcdError

LOCK = ".opcd.lock"
_held: dict[Path, int] = {}  # run directories this process holds -> how many holders nest


def _holder(path: Path) -> str:
    try:
        return path.read_text().strip()
    except OSError:
        return ""


@contextmanager
def hold(run_dir: Path, progress: bool = True) -> Iterator[None]:
    """Hold `run_dir` exclusively (creating it) until the block ends. If the block fails with an `OpcdError` and the
    directory was created here and holds nothing else, it is removed: bad input leaves no half-made run behind."""
    key = run_dir.resolve()
    if key in _held:
        _held[key] += 1
        try:
            yield
        finally:
            _held[key] -= 1
        return
    created = not run_dir.exists()
    try:
        run_dir.mkdir(parents=True, exist_ok=True)
        fd = os.open(run_dir / LOCK, os.O_RDWR | os.O_CREAT, 0o644)
    except OSError as e:
        raise OpcdError(f"train.run_dir '{run_dir}': cannot create it or its lock ({e.strerror})") from None
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        holder = _holder(run_dir / LOCK) or "another process"
        raise OpcdError(
            f"{run_dir} is in use by another opcd run ({holder}): wait for it to end, or choose another train.run_dir"
        ) from None
    previous = _holder(run_dir / LOCK)
    if previous and progress:
        print(f"opcd: warning: {run_dir}: taking over the lock of a run that is no longer running ({previous})")
    stamp = f"pid {os.getpid()} on {socket.gethostname()}, since {time.strftime('%Y-%m-%d %H:%M:%S')}"
    try:
        os.ftruncate(fd, 0)
        os.pwrite(fd, stamp.encode(), 0)
    except OSError as e:
        os.close(fd)
        raise OpcdError(f"train.run_dir '{run_dir}': cannot write its lock file ({e.strerror}): free space") from None
    _held[key] = 1
    failed = False
    try:
        yield
    except OpcdError:
        failed = True
        raise
    finally:
        del _held[key]
        os.ftruncate(fd, 0)  # a finished run leaves no holder behind
        fcntl.flock(fd, fcntl.LOCK_UN)
        os.close(fd)
        if failed and created and [p.name for p in run_dir.iterdir()] == [LOCK]:
            shutil.rmtree(run_dir, ignore_errors=True)
