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


def test_bundled_prompt_sets_are_disjoint():
    train = load_examples(DataConfig(prompts="opcd:generic_train", context="c"))
    held_out = load_examples(DataConfig(prompts="opcd:generic_eval", context="c"))
    assert len(train) >= 150 and len(held_out) >= 50
    assert not {e.messages[0]["content"] for e in train} & {e.messages[0]["content"] for e in held_out}
    with pytest.raises(OpcdError, match="no bundled prompt set 'opcd:nope'"):
        load_examples(DataConfig(prompts="opcd:nope", context="c"))
