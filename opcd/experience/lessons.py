"""Lessons: the prompts that ask for them, parsing them from an answer, and accumulating them into a context.

A lesson is a `- EXPERIENCE ITEM:` line of the model's answer (text before `</think>` dropped). Items are appended in
order; over the token budget the oldest whole items are dropped. The in-context wrappers are what the teacher (and the
In-Context baseline) reads: the experience, then the problem or the game turn.
"""

from __future__ import annotations

import re
from pathlib import Path

from opcd.errors import OpcdError

ITEM_MARK = "- EXPERIENCE ITEM:"

# The in-context wrappers the teacher (and the In-Context baseline) sees; {context} = the experience, {prompt} =
# the problem or the game turn. Written for this project after the paper's description.
WRAPPERS = {
    "math": (
        "Here is experience learned from solving earlier problems:\n# Experience\n{context}\n\n"
        "Solve the new problem below. Say which parts of the experience you use and how you use them in your "
        "reasoning.\n\n{prompt}"
    ),
    "game": (
        "You are an agent playing a game on a grid. Your decisions rest on rules and strategies learned from earlier "
        "games; they may be incomplete or wrong.\n# Experience\n{context}\n\n{prompt}"
    ),
}

LESSON_PROMPTS = {
    "math": (
        "You just solved a problem. Here is the problem and your solution:\n\n{trace}\n\n"
        "Experience collected so far:\n{experience}\n\n"
        "Write one or two general lessons that would help with similar problems in the future: strategies, checks, "
        "or mistakes to avoid. Do not repeat the experience above. Write each lesson on its own line starting with "
        "'- EXPERIENCE ITEM:' and write nothing else."
    ),
    "graded": (  # math with `experience.feedback`: the trace ends with whether the answer was right
        "You just solved a problem, and your answer was checked. Here is the problem, your solution and the "
        "result:\n\n{trace}\n\nExperience collected so far:\n{experience}\n\n"
        "Write one or two general lessons that would help with similar problems in the future. If the answer was "
        "wrong, find the fact or step that made it wrong and state what is true instead. Do not repeat the "
        "experience above. Write each lesson on its own line starting with '- EXPERIENCE ITEM:' and write nothing "
        "else."
    ),
    "game": (
        "You just played a game on a grid whose rules you were not told. Here is the game, round by round:\n\n"
        "{trace}\n\nExperience collected so far:\n{experience}\n\n"
        "Infer the rules of the game and the principles behind winning and losing. Write one or two concise, "
        "general lessons that do not repeat the experience above, each on its own line starting with "
        "'- EXPERIENCE ITEM:', and write nothing else."
    ),
}


_ITEM = re.compile(r"^[\s>*#\-\d.)]*experience item\W*?:[\s*]*(.*)", re.IGNORECASE)


def parse_items(text: str) -> list[str]:
    """The lessons in a model's answer: reasoning before `</think>` dropped, only `- EXPERIENCE ITEM:` lines kept.

    Small models bend the format ("EXPERIENCE ITEM: ...", "1. - Experience item: ...", "**Experience Item:**"), so
    the marker is matched in any case at the start of a line, after any list or bold marker; everything else in
    the answer is ignored (an instruction echoed mid-line is not a lesson)."""
    text = text.split("</think>")[-1]
    items = []
    for line in text.splitlines():
        found = _ITEM.search(line)
        if found:
            item = found.group(1).strip().strip("*").strip()
            if item:
                items.append(item)
    return items


def lesson_items(answer: str, finished: bool, limit: int) -> list[str]:
    """The items of one lesson answer: a last item cut off by the token budget is not a lesson; at most `limit`."""
    items = parse_items(answer)
    if items and not finished and answer.rstrip().endswith(items[-1]):
        items.pop()
    return items[:limit] if limit else items


def render(items: list[str]) -> str:
    """The experience block as the teacher reads it."""
    return "\n".join(f"{ITEM_MARK} {item}" for item in items)


def accumulate(items: list[str], new: list[str], budget: int, count_tokens) -> tuple[list[str], list[str]]:
    """Append the new items not already present; drop the oldest whole items while over `budget` tokens.

    Returns (kept items, dropped items). A new item that alone exceeds the budget is dropped on its own, so it
    does not push out the whole context first."""
    merged, dropped = list(items), []
    for item in new:
        if count_tokens(render([item])) > budget:
            dropped.append(item)
        elif item not in merged:
            merged.append(item)
    while merged and count_tokens(render(merged)) > budget:
        dropped.append(merged.pop(0))
    return merged, dropped


def template(path: str, default: str, fields: tuple[str, ...], key: str) -> str:
    """A prompt template from a file (or the built-in one), checked for its placeholders."""
    if not path:
        return default
    file = Path(path)
    if not file.is_file():
        raise OpcdError(f"{key}: template file '{path}' not found")
    text = file.read_text(encoding="utf-8")
    missing = [f for f in fields if "{" + f + "}" not in text]
    if missing:
        raise OpcdError(f"{key}: template '{path}' lacks {', '.join('{' + f + '}' for f in missing)}")
    return text
