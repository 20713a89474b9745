"""The small things a user expects of a command line: `--version`, an example-ending `--help` for every subcommand,
and no option without its text."""

from __future__ import annotations

import argparse

import pytest

from opcd import __version__
from opcd.cli import main, parse_command_line, parser

COMMANDS = [
    ["train"], ["prepare"], ["distill-prompt"], ["eval"], ["demo"],
    ["experience"], ["experience", "extract"], ["experience", "select"], ["experience", "consolidate"],
    ["experience", "run"],
]  # fmt: skip


def test_version(capsys):
    with pytest.raises(SystemExit) as done:
        main(["--version"])
    out = capsys.readouterr().out.strip()  # the allocator serving this process comes after the version
    assert done.value.code == 0 and out.startswith(f"opcd {__version__} (allocator: ")


@pytest.mark.parametrize("command", COMMANDS, ids=" ".join)
def test_every_help_ends_with_two_examples(command, capsys):
    with pytest.raises(SystemExit):
        main([*command, "--help"])
    lines = [line for line in capsys.readouterr().out.splitlines() if line.strip()]
    assert lines[-3] == "examples:" and all(line.startswith("  opcd ") for line in lines[-2:]), lines[-3:]


def _parsers(p: argparse.ArgumentParser):
    yield p
    for action in p._actions:
        if isinstance(action, argparse._SubParsersAction):
            for child in action.choices.values():
                yield from _parsers(child)


def test_no_option_lacks_its_help_text():
    missing = [
        f"{p.prog}: {action.dest}"
        for p in _parsers(parser())
        for action in p._actions
        if not isinstance(action, argparse._SubParsersAction | argparse._HelpAction) and not action.help
    ]
    assert not missing, missing


def test_overrides_split_by_an_option_are_all_kept_in_order():
    args = parse_command_line(["distill-prompt", "train.steps=2", "--system-prompt", "x", "train.lr=1e-4", "a.b=1"])
    assert args.overrides == ["train.steps=2", "train.lr=1e-4", "a.b=1"] and args.system_prompt == "x"
    args = parse_command_line(["train", "c.toml", "train.steps=2", "--resume", "train.lr=3"])
    assert args.overrides == ["train.steps=2", "train.lr=3"] and args.resume == "always"


@pytest.mark.parametrize("argv", [["distill-prompt", "--system-prompt", "x", "--nope"], ["eval", "m", "a=1"]])
def test_what_is_not_an_override_is_still_unrecognized(argv, capsys):
    with pytest.raises(SystemExit) as done:
        parse_command_line(argv)
    assert done.value.code == 2 and "unrecognized arguments" in capsys.readouterr().err
