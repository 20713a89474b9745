"""The candidate contexts: one seed file per extraction seed (every intermediate context and how it scored), the pool
of all of them, and the selection of the contexts to distill.

`DIR/seed-N.jsonl`, line k = the context after k problems, rewritten atomically after every problem.
"""

from __future__ import annotations

import json
import random
from dataclasses import asdict, dataclass
from pathlib import Path

from opcd.core.data import read_jsonl
from opcd.errors import OpcdError
from opcd.experience.lessons import ITEM_MARK, render
from opcd.io import write_json, write_text


@dataclass
class Record:
    """The context after `step` problems of one seed (line `step` of that seed's file)."""

    seed: int
    step: int
    problem: str  # what was solved (math: the problem; games: the environment seed)
    trace: str  # what the model was shown when asked for lessons
    lesson: str  # the model's whole answer to the lesson request (the items are parsed from it)
    success: bool | None  # games: the episode's result; math: the grade with experience.feedback, else None
    new_items: list[str]
    items: list[str]  # the accumulated experience after this step
    dropped: list[str]
    tokens: int  # rendered experience tokens
    validation: float | None  # accuracy with this context on the validation problems (None: not measured)
    validation_n: int = 0

    @property
    def context(self) -> str:
        return render(self.items)


RECORD_FIELDS = {f for f in Record.__dataclass_fields__}


def seed_file(folder: Path, seed: int) -> Path:
    return folder / f"seed-{seed}.jsonl"


def read_records(path: Path) -> list[Record]:
    """A seed file, checked line by line; a corrupt or truncated line fails with its location and what to do."""

    records = []
    redo = ": delete this line and the ones after it to redo those problems, or the file to start the seed over"
    for where, row in read_jsonl(path, advice=f" (a truncated or hand-edited file?){redo}"):
        if set(row) != RECORD_FIELDS:
            missing, unexpected = sorted(RECORD_FIELDS - set(row)), sorted(set(row) - RECORD_FIELDS)
            raise OpcdError(
                f"{where}: not an experience record (missing {', '.join(missing) or 'nothing'}; "
                f"unexpected {', '.join(unexpected) or 'nothing'})"
            )
        lists = ("items", "new_items", "dropped")
        if not all(isinstance(row[k], list) and all(isinstance(i, str) for i in row[k]) for k in lists):
            raise OpcdError(f"{where}: 'items', 'new_items' and 'dropped' must be lists of strings")
        numbers = ("seed", "step", "tokens", "validation_n")
        if not all(type(row[k]) is int for k in numbers) or not isinstance(row["validation"], (int, float, type(None))):
            raise OpcdError(
                f"{where}: 'seed', 'step', 'tokens', 'validation_n' must be integers, 'validation' a number"
            )
        if row["step"] != len(records) + 1:
            raise OpcdError(
                f"{where}: step {row['step']} where step {len(records) + 1} was expected (lines out of "
                "order or duplicated): delete this line and the ones after it to redo those problems"
            )
        records.append(Record(**row))
    return records


def write_records(path: Path, records: list[Record]) -> None:
    """Rewrite a seed file atomically: a crash leaves the old file or the new one, never half of one."""
    write_text(path, "".join(json.dumps(asdict(r), ensure_ascii=False) + "\n" for r in records))


@dataclass(frozen=True)
class Candidate:
    seed: int
    step: int
    items: tuple[str, ...]
    validation: float | None
    tokens: int

    @property
    def context(self) -> str:
        return render(list(self.items))

    @property
    def name(self) -> str:
        return f"seed {self.seed}, {self.step} problems"


def load_pool(folder: Path, budget: int) -> list[Candidate]:
    """Every intermediate context with at least one item, from every seed file in `folder`."""
    files = sorted(folder.glob("seed-*.jsonl"))
    if not files:
        raise OpcdError(f"{folder}: no experience files (seed-N.jsonl): run `opcd experience extract` first")
    pool = []
    for path in files:
        for r in read_records(path):
            if r.items:
                if r.tokens > budget:
                    raise OpcdError(
                        f"{path}:{r.step}: the context has {r.tokens} tokens, over experience.token_budget={budget}: "
                        "raise the budget or re-extract with this one"
                    )
                pool.append(Candidate(r.seed, r.step, tuple(r.items), r.validation, r.tokens))
    if not pool:
        raise OpcdError(
            f"{folder}: the experience pool is empty: no problem produced a '{ITEM_MARK}' line. Read the 'lesson' "
            "fields of the seed files (the model's answers); a larger experience.lesson_tokens or another lesson "
            "prompt may help"
        )
    return pool


def select(pool: list[Candidate], how: str, count: int = 3, seed: int = 0) -> list[Candidate]:
    """`best`: the highest validation accuracy (ties: fewer tokens, then earlier); `random`: `count` distinct ones."""
    if how == "best":
        measured = [c for c in pool if c.validation is not None]
        if not measured:
            raise OpcdError("no candidate context has a validation score: extract with experience.validation_max > 0")
        return [max(measured, key=lambda c: (c.validation, -c.tokens, -c.seed, -c.step))]
    if how == "random":
        if count < 1:
            raise OpcdError("--count must be >= 1")
        if count > len(pool):
            raise OpcdError(f"asked for {count} random contexts but the pool holds {len(pool)}")
        return random.Random(seed).sample(pool, count)
    raise OpcdError(f"unknown selection '{how}': use best or random")


def seeded_order(n: int, k: int, seed: int) -> list[int]:
    """The first k of a seeded shuffle of range(n): asking for more problems later extends the same order."""
    order = list(range(n))
    random.Random(seed).shuffle(order)
    return order[:k]


def accumulated(records: list[Record]) -> int:
    """Items gathered so far: those in the context plus those the token budget pushed out."""
    return len(records[-1].items) + sum(len(r.dropped) for r in records)


def write_selection(folder: Path, how: str, chosen: list[Candidate]) -> Path:
    """The chosen contexts as JSON (with where they came from) and each as a text file for data.context_file."""
    rows = []
    for n, c in enumerate(chosen):
        text = folder / f"context-{how}-{n}.txt"
        write_text(text, c.context)
        rows.append({"file": str(text), "seed": c.seed, "step": c.step, "validation": c.validation, "tokens": c.tokens})
    out = folder / f"selected-{how}.json"
    write_json(out, rows)
    return out
