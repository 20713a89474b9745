"""The allocator: the opcd command restarts itself once under mimalloc; OPCD_KEEP_MALLOC leaves it alone."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from opcd.core import heap

pytestmark = pytest.mark.skipif(
    not sys.platform.startswith("linux") or heap.mimalloc_library() is None, reason="mimalloc is preloaded on Linux"
)


def _opcd(*args: str, **env: str) -> str:
    environ = {k: v for k, v in os.environ.items() if k not in ("OPCD_KEEP_MALLOC", "LD_PRELOAD", "OPCD_RELAUNCHED")}
    out = subprocess.run(
        [sys.executable, "-m", "opcd.cli", *args], capture_output=True, text=True, env=environ | env, check=True
    )
    return out.stdout.strip()


def test_the_command_runs_under_mimalloc_and_says_so():
    assert _opcd("--version").endswith("(allocator: mimalloc)")


def test_keep_malloc_leaves_the_allocator_alone():
    assert _opcd("--version", OPCD_KEEP_MALLOC="1").endswith("(allocator: unchanged (OPCD_KEEP_MALLOC))")


def test_a_library_that_does_not_load_is_tried_once(tmp_path):
    # a relaunched process that still lacks mimalloc (here: told it was relaunched) goes on with glibc, no loop
    assert _opcd("--version", OPCD_RELAUNCHED="1").endswith("(allocator: glibc, 1 MB mmap threshold)")


def test_preload_env_prepends_the_library_and_keeps_user_settings():
    env = heap.preload_env({"LD_PRELOAD": "/other.so", "MIMALLOC_PURGE_DELAY": "100"})
    assert env["LD_PRELOAD"] == f"{heap.mimalloc_library()}:/other.so"
    assert env["MIMALLOC_PURGE_DELAY"] == "100"  # the user's own setting wins
    assert heap.preload_env({"OPCD_KEEP_MALLOC": "1"}) is None
