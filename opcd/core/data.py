"""Training examples: a user's messages plus the context the teacher sees.

A row is `{"prompt": "..."}` or `{"messages": [{"role": ..., "content": ...}]}`, with an optional `"context"` that
overrides the shared one (per-prompt contexts, e.g. one experience set per problem) and an optional `"answer"` (the
reference answer task graders compare with); `data.*_column` name other columns for these four.

Rows come from JSONL (read here: blank lines skipped, anything malformed fails with `file:line`), or through 🤗
`datasets`: a parquet, CSV or JSON file, a folder written by `save_to_disk`, or a hub dataset `hf:org/name`
(`data.split`). A bad row fails with `source[row N]` and the reason.
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
    """SHA-256 of a prompts file's bytes, or of a saved dataset folder's files ("" for none; a hub dataset's id):
    cached scores and resumed runs follow the data's content, not its name."""
    if not name:
        return ""
    if name.startswith("hf:"):
        return name
    path = resolve_path(name)
    if path.is_dir():
        digest = hashlib.sha256()
        for file in sorted(p for p in path.rglob("*") if p.is_file()):
            digest.update(str(file.relative_to(path)).encode() + b"\0" + file.read_bytes())
        return digest.hexdigest()
    return hashlib.sha256(path.read_bytes()).hexdigest() if path.is_file() else ""


def _messages(row: dict, where: str) -> list[dict]:
    if row.get("messages") is not None:
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


TABLES = {".parquet": "parquet", ".csv": "csv", ".json": "json"}  # file suffix -> `datasets` loader


def _dataset(data: DataConfig):
    """The rows of a hub dataset, a saved folder or a parquet/CSV/JSON file, through `datasets`."""
    import datasets

    name = data.prompts
    datasets.disable_progress_bars()
    try:
        if name.startswith("hf:"):
            return datasets.load_dataset(name[3:], split=data.split)
        path = resolve_path(name)
        if path.is_dir():
            loaded = datasets.load_from_disk(str(path))
            if isinstance(loaded, datasets.DatasetDict):
                if data.split not in loaded:
                    raise OpcdError(f"{name}: no split '{data.split}' (splits: {', '.join(loaded)}): set data.split")
                return loaded[data.split]
            return loaded
        return datasets.load_dataset(TABLES[path.suffix], data_files=str(path), split="train")
    except OpcdError:
        raise
    except Exception as e:  # noqa: BLE001 (datasets and the hub raise many kinds)
        first = (str(e).strip().splitlines() or [type(e).__name__])[0][:300]
        if "corresponds to no data" in first:  # datasets' words for a file without rows
            raise OpcdError(f"prompts file '{name}' has no examples") from None
        hint = "check the id and that the hub is reachable, or give a local file" if name.startswith("hf:") else ""
        raise OpcdError(f"cannot read dataset '{name}': {first}{'; ' + hint if hint else ''}") from None


def read_rows(data: DataConfig) -> list[tuple[str, dict]]:
    """(where, row) for every row of `data.prompts`, with the columns renamed to prompt/messages/context/answer."""
    name = data.prompts
    names = {  # bundled sets use the canonical names, whatever the user's own data call theirs
        "prompt": data.prompt_column,
        "messages": data.messages_column,
        "context": data.context_column,
        "answer": data.answer_column,
    }
    if name.startswith("opcd:"):
        names = {key: key for key in names}
    if not name.startswith(("hf:", "opcd:")):
        path = Path(name)
        if not path.exists():
            raise OpcdError(f"prompts file '{path}' not found")
        if path.is_file() and path.suffix not in (*TABLES, ".jsonl"):
            raise OpcdError(
                f"prompts file '{path}': unknown format '{path.suffix}' (JSONL, parquet, CSV, JSON, a save_to_disk "
                "folder, or hf:org/name)"
            )
    if name.startswith("opcd:") or resolve_path(name).suffix == ".jsonl":
        rows = read_jsonl(resolve_path(name))
    else:
        table = _dataset(data)
        columns = set(table.column_names)
        if names["prompt"] not in columns and names["messages"] not in columns:
            raise OpcdError(
                f"{name}: no column '{names['prompt']}' or '{names['messages']}' (columns: "
                f"{', '.join(table.column_names)}): set data.prompt_column or data.messages_column"
            )
        for key in ("context", "answer"):  # a column named on purpose must be there
            if names[key] != key and names[key] not in columns:
                raise OpcdError(f"{name}: data.{key}_column '{names[key]}' is not a column ({', '.join(columns)})")
        rows = [(f"{name}[row {i}]", row) for i, row in enumerate(table)]
    return [(where, {key: row[col] for key, col in names.items() if col in row}) for where, row in rows]


def load_examples(data: DataConfig, require_context: bool = True) -> list[Example]:
    """`require_context=False` for evaluating a model without any context (the rows' contexts may be empty)."""
    default = shared_context(data)
    examples = []
    for where, row in read_rows(data):
        context = row.get("context")
        context = default if context is None else context
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
