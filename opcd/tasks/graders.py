"""Task graders: is a response's final answer the reference answer? Each is `(response, answer) -> bool`.

The answer a response gives is the content of its *last* `<answer>...</answer>` tag (the paper's format); without a
tag, `number` and `math` fall back to the last number in the text, so a model that was never told about the tags is
still graded on what it answered. `choice` and `yes_no` need the tag: the paper's prompts ask for it.
"""

from __future__ import annotations

import re
from collections.abc import Callable

from opcd.errors import OpcdError

Grader = Callable[[str, str], bool]

_TAG = re.compile(r"<answer>(.*?)</answer>", re.IGNORECASE | re.DOTALL)
_LETTER = re.compile(r"\(?([A-Za-z])\b")
_NUMBER = re.compile(r"-?\d+(?:\.\d+)?")


def tagged_answer(response: str) -> str | None:
    """The content of the last `<answer>` tag, stripped; None when there is none."""
    found = _TAG.findall(response)
    return found[-1].strip() if found else None


def last_number(text: str) -> float | None:
    found = _NUMBER.findall(text.replace(",", ""))
    return float(found[-1]) if found else None


def without_number(examples) -> list[str]:
    """Where (`file:line`) each example sits whose reference `answer` is missing or holds no number for `number`."""
    return [x.source for x in examples if x.answer is None or last_number(str(x.answer)) is None]


def number(response: str, answer: str) -> bool:
    tagged = tagged_answer(response)
    value = last_number(tagged if tagged is not None else response)
    gold = last_number(answer)
    if gold is None:
        raise OpcdError(f"grader 'number': reference answer {answer!r} contains no number")
    return value is not None and abs(value - gold) < 1e-6


def choice(response: str, answer: str) -> bool:
    """Multiple choice: `<answer>B</answer>` (also `<answer>(B)</answer>`, `<answer>B. text</answer>`)."""
    tagged = tagged_answer(response)
    if tagged is None:
        return False
    letter, gold = _LETTER.match(tagged), _LETTER.match(answer.strip())
    if gold is None:
        raise OpcdError(f"grader 'choice': reference answer {answer!r} does not start with an option letter")
    return bool(letter) and letter.group(1).upper() == gold.group(1).upper()


def yes_no(response: str, answer: str) -> bool:
    tagged = tagged_answer(response)
    return tagged is not None and tagged.strip(" .!").lower() == answer.strip(" .!").lower()


def math(response: str, answer: str) -> bool:
    """Mathematical equivalence with math-verify (`1/2` == `0.5` == `\\frac{1}{2}`)."""
    from math_verify import parse, verify

    tagged = tagged_answer(response)
    target = tagged if tagged is not None else response
    gold = parse(answer if "$" in answer or "\\" in answer else f"${answer}$")
    return bool(verify(gold, parse(target if tagged is None else f"${target}$")))


GRADERS: dict[str, Grader] = {"number": number, "choice": choice, "yes_no": yes_no, "math": math}
