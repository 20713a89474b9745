"""Prompt files: formats, bundled sets, and errors that name file and line."""

from __future__ import annotations

import json

import pytest

from opcd.config import DataConfig
from opcd.core.data import load_examples
from opcd.errors import OpcdError


def _write(tmp_path, lines):
    path = tmp_path / "p.jsonl"
    path.write_text("\n".join(lines) + "\n")
    return str(path)


def test_formats_and_per_row_context(tmp_path):
    path = _write(
        tmp_path,
        [
            json.dumps({"prompt": "Hi"}),
            "",
            json.dumps(
                {"messages": [{"role": "system", "content": "S"}, {"role": "user", "content": "Q"}], "context": "own"}
            ),
        ],
    )
    examples = load_examples(DataConfig(prompts=path, context="shared"))
    assert [e.context for e in examples] == ["shared", "own"]
    assert examples[0].messages == [{"role": "user", "content": "Hi"}]
    assert examples[1].source.endswith("p.jsonl:3")


def test_context_file(tmp_path):
    (tmp_path / "ctx.txt").write_text("Be brief.")
    path = _write(tmp_path, [json.dumps({"prompt": "Hi"})])
    assert load_examples(DataConfig(prompts=path, context_file=str(tmp_path / "ctx.txt")))[0].context == "Be brief."


@pytest.mark.parametrize(
    "lines, message",
    [
        (['{"prompt": "a"}', '{"prompt": "b"'], r"p.jsonl:2: not valid JSON"),
        (['{"prompt": ""}'], r"p.jsonl:1: needs a non-empty string 'prompt'"),
        (['["a"]'], r"p.jsonl:1: each line must be a JSON object"),
        (
            ['{"messages": [{"role": "user", "content": "q"}, {"role": "assistant", "content": "a"}]}'],
            r"p.jsonl:1: the last message must be the user's",
        ),
        (['{"messages": [{"role": "robot", "content": "q"}]}'], r"p.jsonl:1: each message needs a role"),
        (['{"prompt": "a", "context": "  "}'], r"p.jsonl:1: the context is empty"),
        ([""], r"has no examples"),
    ],
)
def test_bad_rows_name_file_and_line(tmp_path, lines, message):
    with pytest.raises(OpcdError, match=message):
        load_examples(DataConfig(prompts=_write(tmp_path, lines), context="shared"))


def test_missing_files_and_empty_context(tmp_path):
    with pytest.raises(OpcdError, match="prompts file '.*nope.jsonl' not found"):
        load_examples(DataConfig(prompts=str(tmp_path / "nope.jsonl"), context="c"))
    path = _write(tmp_path, [json.dumps({"prompt": "Hi"})])
    with pytest.raises(OpcdError, match="the context is empty"):
        load_examples(DataConfig(prompts=path))
    with pytest.raises(OpcdError, match="data.context_file '.*' not found"):
        load_examples(DataConfig(prompts=path, context_file=str(tmp_path / "none.txt")))


SPLITS = ("train", "val", "eval")


def test_bundled_prompt_sets_are_disjoint():
    sets = {name: load_examples(DataConfig(prompts=f"opcd:generic_{name}", context="c")) for name in SPLITS}
    assert len(sets["train"]) >= 150 and len(sets["eval"]) >= 50 and len(sets["val"]) == 40
    texts = {name: {e.messages[0]["content"].lower() for e in found} for name, found in sets.items()}
    for a, b in (("train", "eval"), ("train", "val"), ("val", "eval")):
        assert not texts[a] & texts[b], (a, b)
    with pytest.raises(OpcdError, match="no bundled prompt set 'opcd:nope'"):
        load_examples(DataConfig(prompts="opcd:nope", context="c"))


ROWS = [
    {"question": "What is 2 + 2?", "persona": "Be a pirate.", "gold": "4"},
    {"question": "Name a colour.", "persona": None, "gold": "red"},
]


def _expect(examples):
    assert [e.messages for e in examples] == [[{"role": "user", "content": r["question"]}] for r in ROWS]
    assert [e.context for e in examples] == ["Be a pirate.", "shared"]  # a missing value: the shared context
    assert [e.answer for e in examples] == ["4", "red"]


MAPPED = {"prompt_column": "question", "context_column": "persona", "answer_column": "gold", "context": "shared"}


@pytest.mark.parametrize("fmt", ["parquet", "csv", "json", "jsonl", "save_to_disk", "save_to_disk_dict"])
def test_every_format_through_the_column_mapping(tmp_path, fmt):
    from datasets import Dataset, DatasetDict

    table = Dataset.from_list(ROWS)
    path = tmp_path / f"rows.{fmt}"
    if fmt == "parquet":
        table.to_parquet(path)
    elif fmt == "csv":
        table.to_csv(path, index=False)
    elif fmt == "json":  # a JSON array, which datasets reads as well as JSON lines
        path.write_text(json.dumps(ROWS))
    elif fmt == "jsonl":
        path.write_text("".join(json.dumps(r) + "\n" for r in ROWS))
    elif fmt == "save_to_disk":
        table.save_to_disk(path)
    else:
        DatasetDict({"train": Dataset.from_list(ROWS[:1]), "test": table}).save_to_disk(path)
        _expect(load_examples(DataConfig(prompts=str(path), split="test", **MAPPED)))
        with pytest.raises(OpcdError, match=r"no split 'valid' \(splits: train, test\): set data.split"):
            load_examples(DataConfig(prompts=str(path), split="valid", **MAPPED))
        return
    examples = load_examples(DataConfig(prompts=str(path), **MAPPED))
    _expect(examples)
    assert examples[1].source == (f"{path}:2" if fmt == "jsonl" else f"{path}[row 1]")


def test_messages_column_from_parquet(tmp_path):
    from datasets import Dataset

    chats = [[{"role": "system", "content": "S"}, {"role": "user", "content": "Q"}]]
    Dataset.from_list([{"chat": chats[0]}]).to_parquet(tmp_path / "chat.parquet")
    examples = load_examples(DataConfig(prompts=str(tmp_path / "chat.parquet"), messages_column="chat", context="c"))
    assert examples[0].messages == chats[0]


def test_bad_columns_empty_splits_and_formats_fail_with_one_line(tmp_path):
    from datasets import Dataset

    Dataset.from_list(ROWS).to_parquet(tmp_path / "rows.parquet")
    rows = str(tmp_path / "rows.parquet")
    with pytest.raises(OpcdError, match=r"no column 'prompt' or 'messages' \(columns: question, persona, gold\)"):
        load_examples(DataConfig(prompts=rows, context="c"))
    with pytest.raises(OpcdError, match=r"data.answer_column 'solution' is not a column"):
        load_examples(DataConfig(prompts=rows, prompt_column="question", answer_column="solution", context="c"))
    Dataset.from_list(ROWS).select([]).to_parquet(tmp_path / "empty.parquet")
    with pytest.raises(OpcdError, match="has no examples"):
        load_examples(DataConfig(prompts=str(tmp_path / "empty.parquet"), prompt_column="question", context="c"))
    (tmp_path / "rows.xlsx").write_text("x")
    with pytest.raises(OpcdError, match=r"unknown format '.xlsx' \(JSONL, parquet, CSV, JSON"):
        load_examples(DataConfig(prompts=str(tmp_path / "rows.xlsx"), context="c"))
    (tmp_path / "broken.parquet").write_text("not parquet")
    with pytest.raises(OpcdError, match="cannot read dataset '.*broken.parquet'"):
        load_examples(DataConfig(prompts=str(tmp_path / "broken.parquet"), context="c"))


def test_hub_dataset_without_a_hub_fails_with_one_line(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")  # no network in the tests: the one-line failure is what is checked
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    with pytest.raises(OpcdError, match="cannot read dataset 'hf:nobody/nothing'.*hub is reachable"):
        load_examples(DataConfig(prompts="hf:nobody/nothing", context="c"))


def test_bundled_sets_keep_their_own_column_names_under_a_mapping():
    """distill-prompt's default test split is bundled: a mapping meant for the user's file must not break it."""
    mapped = load_examples(DataConfig(prompts="opcd:generic_eval", prompt_column="question", context="c"))
    assert mapped == load_examples(DataConfig(prompts="opcd:generic_eval", context="c"))
