"""Training examples: a user's messages plus the context the teacher sees.

A prompts file is JSONL, one example per line: `{"prompt": "..."}` or `{"messages": [{"role": ..., "content": ...}]}`,
with an optional `"context"` that overrides the shared one (per-prompt contexts, e.g. one experience set per problem)
and an optional `"answer"` (the reference answer task graders compare with).
Blank lines are skipped; anything else malformed fails with `file:line` and the reason.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path

from opcd.config import DataConfig
from opcd.errors import OpcdError

ROLES = {"system", "user", "assistant"}


@dataclass(frozen=True)
class Example:
    messages: list[dict]
    context: str
    source: str  # "file:line", for error messages
    answer: str | None = None  # reference answer, for task graders


def prompt_key(example: Example) -> str:
    """The user's messages, whitespace- and case-normalized: what makes two examples the same prompt."""
    return "\n".join(" ".join(m["content"].lower().split()) for m in example.messages if m["role"] != "system")


def check_disjoint(
    train: list[Example],
    held_out: list[Example],
    train_name: str,
    held_out_name: str,
    held_out_kind: str = "evaluation",
    train_kind: str = "training",
) -> None:
    """Refuse evaluation prompts that were also trained on (or selected on): the score would measure memorization."""
    seen = {prompt_key(e): e.source for e in train}
    shared = [(e.source, seen[prompt_key(e)]) for e in held_out if prompt_key(e) in seen]
    if shared:
        where, also = shared[0]
        raise OpcdError(
            f"{len(shared)} {held_out_kind} prompt(s) of '{held_out_name}' also appear in the {train_kind} prompts "
            f"'{train_name}' (first: {where} = {also}): remove them from one of the two files"
        )


def file_digest(name: str) -> str:
    """SHA-256 of a prompts file's bytes ("" for no file): cached scores follow the file's content, not its name."""
    if not name:
        return ""
    path = resolve_path(name)
    return hashlib.sha256(path.read_bytes()).hexdigest() if path.is_file() else ""


def _messages(row: dict, where: str) -> list[dict]:
    if "messages" in row:
        msgs = row["messages"]
        if not isinstance(msgs, list) or not msgs:
            raise OpcdError(f"{where}: 'messages' must be a non-empty list")
        for m in msgs:
            if not isinstance(m, dict) or m.get("role") not in ROLES or not isinstance(m.get("content"), str):
                raise OpcdError(f"{where}: each message needs a role ({'/'.join(sorted(ROLES))}) and string content")
        if msgs[-1]["role"] != "user":
            raise OpcdError(f"{where}: the last message must be the user's (the model answers it)")
        return [{"role": m["role"], "content": m["content"]} for m in msgs]
    prompt = row.get("prompt")
    if not isinstance(prompt, str) or not prompt.strip():
        raise OpcdError(f"{where}: needs a non-empty string 'prompt' or a 'messages' list")
    return [{"role": "user", "content": prompt}]


def read_utf8(path: Path) -> str:
    """A text file's content; bytes that are not UTF-8 fail with `file:line` and what to do."""
    raw = path.read_bytes()
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as e:
        line = raw[: e.start].count(b"\n") + 1
        raise OpcdError(f"{path}:{line}: not valid UTF-8 (byte {raw[e.start]:#04x}): save the file as UTF-8") from None


def shared_context(data: DataConfig) -> str:
    if data.context_file:
        path = Path(data.context_file)
        if not path.is_file():
            raise OpcdError(f"data.context_file '{path}' not found")
        return read_utf8(path)
    return data.context


BUNDLED = Path(__file__).parent.parent / "assets" / "prompts"


def resolve_path(name: str) -> Path:
    """`opcd:NAME` is a prompt set bundled with the package (see `opcd/assets/prompts/`); anything else a file."""
    if name.startswith("opcd:"):
        path = BUNDLED / f"{name[5:]}.jsonl"
        if not path.is_file():
            known = ", ".join(f"opcd:{p.stem}" for p in sorted(BUNDLED.glob("*.jsonl")))
            raise OpcdError(f"no bundled prompt set '{name}' (bundled: {known})")
        return path
    return Path(name)


def read_jsonl(path: Path, advice: str = "") -> list[tuple[str, dict]]:
    """(file:line, row) for every non-blank line; a malformed line fails with its location (and `advice`)."""
    if not path.is_file():
        raise OpcdError(f"prompts file '{path}' not found")
    rows = []
    for n, line in enumerate(read_utf8(path).splitlines(), 1):
        if not line.strip():
            continue
        where = f"{path}:{n}"
        try:
            row = json.loads(line)
        except json.JSONDecodeError as e:
            raise OpcdError(f"{where}: not valid JSON ({e.msg} at column {e.colno}){advice}") from None
        if not isinstance(row, dict):
            raise OpcdError(f"{where}: each line must be a JSON object{advice}")
        rows.append((where, row))
    return rows


def load_examples(data: DataConfig, require_context: bool = True) -> list[Example]:
    """`require_context=False` for evaluating a model without any context (the rows' contexts may be empty)."""
    default = shared_context(data)
    examples = []
    for where, row in read_jsonl(resolve_path(data.prompts)):
        context = row.get("context", default)
        if not isinstance(context, str):
            raise OpcdError(f"{where}: 'context' must be a string")
        if require_context and not context.strip():
            raise OpcdError(
                f"{where}: the context is empty: set data.context / data.context_file or a 'context' field on the row"
            )
        answer = row.get("answer")
        if answer is not None and not isinstance(answer, (str, int, float)):
            raise OpcdError(f"{where}: 'answer' must be a string or a number")
        examples.append(Example(_messages(row, where), context, where, None if answer is None else str(answer)))
        if data.max_prompts and len(examples) == data.max_prompts:
            break
    if not examples:
        raise OpcdError(f"prompts file '{data.prompts}' has no examples")
    return examples
