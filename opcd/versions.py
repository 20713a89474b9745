"""The library versions behind a result or a checkpoint: a greedy score is only reproducible with the same ones."""

from __future__ import annotations

import functools
import platform
from importlib.metadata import PackageNotFoundError, version

__version__ = "0.2.0"  # opcd's own; pyproject.toml reads it from here
SOFTWARE = ("torch", "transformers", "tokenizers", "peft", "accelerate", "safetensors", "gguf", "numpy", "sympy")


@functools.cache
def _software() -> tuple:
    found = {"python": platform.python_version(), "opcd": __version__}
    for name in SOFTWARE:
        try:
            found[name] = version(name)
        except PackageNotFoundError:
            found[name] = None
    return tuple(found.items())


def software() -> dict:
    """Python, opcd and the libraries that shape the numbers, name -> version (None: not installed)."""
    return dict(_software())


def changed(recorded: dict) -> list[str]:
    """`name old -> new` for each version that differs from the recorded ones (names recorded then only)."""
    now = software()
    return [f"{name} {old} -> {now.get(name)}" for name, old in recorded.items() if now.get(name) != old]
