"""Files a reader can trust: atomic text, JSON and figure writes, and the keyed result cache.

Every file opcd writes for a person or a later run (configs, reports, results, seed files, cached scores, plots) goes
through here: written to a hidden temporary file beside the target, then renamed over it, so a crash leaves the old
file or the new one, never half of one.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

from opcd.errors import OpcdError
from opcd.versions import software


def _temporary(path: Path, suffix: str = ".tmp") -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    return path.with_name(f".{path.name}{suffix}")


def write_text(path: Path | str, text: str) -> None:
    """Write `text` (UTF-8) to `path` atomically, creating its folder."""
    path = Path(path)
    tmp = _temporary(path)
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, path)


def write_json(path: Path | str, value: Any) -> None:
    write_text(path, json.dumps(value, indent=1))


def read_json(path: Path) -> Any:
    """A JSON file opcd wrote; an unreadable one fails with one line saying it can be deleted to recompute."""
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as e:
        raise OpcdError(f"{path}: cannot read ({e}); delete it to recompute") from None


def pyplot():
    """matplotlib's pyplot on the file-only backend (imported on first use: it takes a second to load)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def save_figure(fig, path: Path | str, dpi: int = 120) -> None:
    """Save a matplotlib figure atomically (the temporary name keeps the extension, which picks the format) and
    close it."""
    path = Path(path)
    tmp = _temporary(path, f".tmp{path.suffix}")
    fig.savefig(tmp, dpi=dpi)
    pyplot().close(fig)
    os.replace(tmp, path)


def digest(value: Any, length: int = 12) -> str:
    """A short SHA-256 of a JSON-able value (keys sorted): equal values, equal digests."""
    return hashlib.sha256(json.dumps(value, sort_keys=True, default=str).encode()).hexdigest()[:length]


def cached(folder: Path, name: str, key: dict, compute: Callable[[], Any]) -> Any:
    """`compute()` once per `key` and software versions, stored as `folder/name-DIGEST.json` so reruns (and other
    runs) reuse it; after an upgrade it is measured again, not mixed with scores the new versions made."""
    path = folder / f"{name}-{digest({**key, 'software': software()})}.json"
    if path.is_file():
        return json.loads(path.read_text())
    value = compute()
    write_json(path, value)
    return value
