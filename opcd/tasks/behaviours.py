"""Behaviour checkers for system prompts: does a response follow the instruction? Each is `str -> bool`.

Checkers are built from short specs (`starts_with:Arr!`, `language:fr`, `uppercase`, ...) and compose with `all:`
semantics when several specs are given. They are deliberately simple and transparent, so a reported adherence
number can be audited by reading the checker.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable

from opcd.errors import OpcdError

Checker = Callable[[str], bool]

_WORD = re.compile(r"[a-zà-ÿœæ']+", re.IGNORECASE)
# Frequent function words; a response is in a language when its words hit that list more than English's.
_STOPWORDS = {
    "en": "the a an and or of to in is are was were it this that for on with as be by not you your i we they".split(),
    "fr": "le la les un une des et ou de du au aux est sont était il elle ce cette pour sur avec pas vous votre je "
    "nous ils elles que qui dans en se sa son ses leur mais plus très c'est d'un d'une l'".split(),
    "es": "el la los las un una unos y o de del al es son era para con por no usted su yo nosotros que en se muy "
    "pero más como".split(),
    "de": "der die das ein eine und oder von zu im ist sind war es dies für auf mit nicht sie ihr ich wir dass in "
    "sich sehr aber".split(),
}


def _language(code: str) -> Checker:
    if code not in _STOPWORDS or code == "en":
        raise OpcdError(f"checker 'language:{code}': supported languages are {', '.join(sorted(_STOPWORDS))}")
    own, english = set(_STOPWORDS[code]), set(_STOPWORDS["en"])

    def check(text: str) -> bool:
        words = [w.lower() for w in _WORD.findall(text)]
        hits = [w for w in words if w in own or any(w.startswith(p) for p in own if p.endswith("'"))]
        # two different function words at least, so a degenerate "Je Je Je" does not count as French
        return len(set(hits)) >= 2 and len(hits) > sum(w in english for w in words)

    return check


def _json_object(text: str) -> bool:
    body = text.strip().removeprefix("```json").removeprefix("```").removesuffix("```").strip()
    try:
        return isinstance(json.loads(body), dict)
    except json.JSONDecodeError:
        return False


def _uppercase(text: str) -> bool:
    letters = [c for c in text if c.isalpha()]
    return bool(letters) and sum(c.isupper() for c in letters) >= 0.95 * len(letters)


_EMOJI = re.compile("[\U0001f300-\U0001faff\u2600-\u27bf\U0001f000-\U0001f2ff]")


def _words(text: str) -> int:
    return len(text.split())


CHECKERS: dict[str, Callable[[str], Checker]] = {
    "starts_with": lambda arg: lambda text: text.lstrip().lower().startswith(arg.lower()),
    "ends_with": lambda arg: lambda text: text.rstrip().lower().endswith(arg.lower()),
    "contains": lambda arg: lambda text: arg.lower() in text.lower(),
    "language": _language,
    "uppercase": lambda arg: _uppercase,
    "max_words": lambda arg: lambda text: 0 < _words(text) <= int(arg),
    "json": lambda arg: _json_object,
    "emoji": lambda arg: lambda text: bool(_EMOJI.search(text)),
}


def build_checker(specs: list[str] | str) -> Checker:
    """`'starts_with:Arr!'`, `['language:fr', 'max_words:50']` (all must hold), ..."""
    specs = [specs] if isinstance(specs, str) else list(specs)
    if not specs:
        raise OpcdError("no checker given: use e.g. starts_with:Arr!, language:fr, uppercase, max_words:20, json")
    checks = []
    for spec in specs:
        name, _, arg = spec.partition(":")
        if name not in CHECKERS:
            raise OpcdError(f"unknown checker '{name}' (known: {', '.join(CHECKERS)})")
        if name in ("starts_with", "ends_with", "contains", "language", "max_words") and not arg:
            raise OpcdError(f"checker '{name}' needs an argument, e.g. {name}:...")
        if name == "max_words" and not arg.isdigit():
            raise OpcdError(f"checker 'max_words:{arg}': the argument must be a whole number")
        checks.append(CHECKERS[name](arg))
    return lambda text: all(check(text) for check in checks)
