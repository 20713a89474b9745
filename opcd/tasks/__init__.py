"""What counts as a good response: behaviour checkers (system prompts) and task graders (reference answers)."""

from __future__ import annotations

from collections.abc import Callable

from opcd.core.data import Example
from opcd.errors import OpcdError
from opcd.tasks.behaviours import CHECKERS, build_checker
from opcd.tasks.graders import GRADERS

Scorer = Callable[[str, Example], bool]


def is_grader(specs: tuple[str, ...] | list[str]) -> bool:
    return len(specs) == 1 and specs[0] in GRADERS


def build_scorer(specs: list[str] | str) -> Scorer:
    """A grader name (`number`, `choice`, `yes_no`, `math`: compares with each example's `answer`) or checker specs."""
    specs = [specs] if isinstance(specs, str) else list(specs)
    if len(specs) == 1 and specs[0] in GRADERS:
        grader = GRADERS[specs[0]]

        def grade(response: str, example: Example) -> bool:
            if example.answer is None:
                raise OpcdError(f"{example.source}: grader '{specs[0]}' needs an 'answer' field on every example")
            return grader(response, example.answer)

        return grade
    names = [s.partition(":")[0] for s in specs]
    if len(specs) == 1 and names[0] in GRADERS:
        raise OpcdError(f"grader '{names[0]}' takes no argument (got '{specs[0]}'): the answer comes from each example")
    if any(n in GRADERS for n in names):
        raise OpcdError(f"a grader ({', '.join(GRADERS)}) is used alone, not combined with checkers: got {specs}")
    if any(n not in CHECKERS for n in names):
        unknown = next(n for n in names if n not in CHECKERS)
        raise OpcdError(
            f"unknown checker or grader '{unknown}' (checkers: {', '.join(CHECKERS)}; graders: {', '.join(GRADERS)})"
        )
    check = build_checker(specs)
    return lambda response, example: check(response)
