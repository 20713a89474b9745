"""The small things a user expects of a command line: `--version`, an example-ending `--help` for every subcommand,
and no option without its text."""

from __future__ import annotations

import argparse

import pytest

from opcd import __version__
from opcd.cli import main, parser

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
