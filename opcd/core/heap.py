"""Which allocator serves a training process, and why: freed tensor memory is kept for reuse, in bounded memory.

A training step allocates and frees gigabytes (activations, logits, gradients, the bf16 copies of the weights).
glibc serves every block above its mmap threshold (at most 32 MB) with a fresh mapping and unmaps it when freed, so
every step page-faults the same memory in again, zeroed by the kernel: measured here, that doubled the student's
forward and backward pass of the 0.5B model. Keeping the blocks in glibc's heap instead removes the faults but not
the fragmentation (a 256-token run's peak rose from 15.7 to 20.6 GiB), and huge pages hardly help (11.2 s against
11.9 s for that pass): docs/results.md, "what the allocator costs a training step".

mimalloc keeps freed blocks for reuse in size-segregated pages, so a step allocates no new pages after the first
ones and the memory stays flat. It must be loaded before the process starts, so the `opcd` command starts itself
again with `LD_PRELOAD` (`relaunch_args`) when the `cmeel-mimalloc` package is installed (Linux). A process without
it (`train()` called from your own Python) falls back to glibc with a 1 MB mmap threshold: slower, but with no
growth. `OPCD_KEEP_MALLOC=1` leaves the allocator as it is.
"""

from __future__ import annotations

import ctypes
import os
import sys
from importlib import metadata
from pathlib import Path

MIMALLOC_SETTINGS = {"MIMALLOC_PURGE_DELAY": "-1"}  # keep freed pages: the next step reuses them
_M_MMAP_THRESHOLD = -3


def mimalloc_library() -> Path | None:
    """The shared library of the installed `cmeel-mimalloc` package (None where it is not installed)."""
    try:
        path = Path(str(metadata.distribution("cmeel-mimalloc").locate_file("cmeel.prefix/lib/libmimalloc.so")))
    except metadata.PackageNotFoundError:
        return None
    return path if path.is_file() else None


def mimalloc_loaded() -> bool:
    """mimalloc serves this process's allocations (it was preloaded)."""
    return "libmimalloc" in os.environ.get("LD_PRELOAD", "") and _mapped("libmimalloc")


def _mapped(name: str) -> bool:
    try:
        return name in Path("/proc/self/maps").read_text()
    except OSError:
        return False


def preload_env(env: dict | None = None) -> dict | None:
    """`env` (default: this process's) with mimalloc preloaded, or None when that cannot or should not be done."""
    env = dict(os.environ if env is None else env)
    library = mimalloc_library()
    if env.get("OPCD_KEEP_MALLOC") or not sys.platform.startswith("linux") or library is None:
        return None
    preload = [p for p in env.get("LD_PRELOAD", "").split(":") if p]
    if str(library) not in preload:
        env["LD_PRELOAD"] = ":".join([str(library), *preload])
    for key, value in MIMALLOC_SETTINGS.items():
        env.setdefault(key, value)
    return env


def relaunch_args(argv: list[str]) -> tuple[list[str], dict] | None:
    """(argv, env) to start this `opcd` command again under mimalloc, or None when it already runs under it (or
    cannot). The caller `os.execve`s them: the same process id, the same terminal."""
    if mimalloc_loaded() or os.environ.get("OPCD_RELAUNCHED"):  # once: a library that will not load is not retried
        return None
    env = preload_env()
    if env is None:
        return None
    return [sys.executable, "-m", "opcd.cli", *argv], {**env, "OPCD_RELAUNCHED": "1"}


def configure() -> str:
    """Set this process's allocator up for training; returns which one serves it (logged with the run)."""
    if os.environ.get("OPCD_KEEP_MALLOC"):
        return "unchanged (OPCD_KEEP_MALLOC)"
    if mimalloc_loaded():
        return "mimalloc"
    if sys.platform.startswith("linux"):
        try:
            ctypes.CDLL("libc.so.6").mallopt(_M_MMAP_THRESHOLD, 1 << 20)
            return "glibc, 1 MB mmap threshold"
        except (OSError, AttributeError):  # not glibc
            pass
    return "system default"


def resident_bytes() -> int:
    """This process's resident memory now (0 where /proc is not there)."""
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):
        return 0
