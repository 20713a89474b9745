"""Behaviour checkers for system prompts: does a response follow the instruction? Each is `str -> bool`.

Checkers are built from short specs (`starts_with:Arr!`, `language:fr`, `uppercase`, ...) and compose with `all:`
semantics when several specs are given. They are deliberately simple and transparent, so a reported adherence
number can be audited by reading the checker. Two reach for the standard tools: `ifeval:<instruction id>[:<JSON
kwargs>]` is one IF-Eval instruction (the registry of `if-verifiable`, strict), and `language:<code>` for a
language other than fr/es/de is langdetect's answer (the detector IF-Eval itself uses; seeded).
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from pathlib import Path

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


def _detected_language(code: str) -> Checker:
    """langdetect's most likely language of the text is `code` (seeded: langdetect is random by default)."""
    import langdetect
    from langdetect.detector_factory import PROFILES_DIRECTORY

    known = sorted(Path(PROFILES_DIRECTORY).iterdir())
    if code not in {p.name for p in known}:
        raise OpcdError(f"checker 'language:{code}': langdetect knows {', '.join(p.name for p in known)}")

    def check(text: str) -> bool:
        langdetect.DetectorFactory.seed = 0
        try:
            return langdetect.detect(text) == code
        except langdetect.LangDetectException:  # no letters to go on
            return False

    return check


def _language(code: str) -> Checker:
    if code not in _STOPWORDS or code == "en":
        return _detected_language(code)
    own, english = set(_STOPWORDS[code]), set(_STOPWORDS["en"])

    def check(text: str) -> bool:
        words = [w.lower() for w in _WORD.findall(text)]
        hits = [w for w in words if w in own or any(w.startswith(p) for p in own if p.endswith("'"))]
        # two different function words at least, so a degenerate "Je Je Je" does not count as French
        return len(set(hits)) >= 2 and len(hits) > sum(w in english for w in words)

    return check


def _ifeval(arg: str) -> Checker:
    """`<instruction id>[:<JSON kwargs>]`, e.g. `detectable_format:number_bullet_lists:{"num_bullets": 3}`."""
    from if_verifiable.common import evaluate_instructions
    from if_verifiable.ifeval.instructions_registry import INSTRUCTION_DICT

    ids = sorted((i for i in INSTRUCTION_DICT if arg == i or arg.startswith(i + ":")), key=len)
    if not ids:
        raise OpcdError(f"checker 'ifeval:{arg}': unknown instruction id (known: {', '.join(INSTRUCTION_DICT)})")
    instruction, rest = ids[-1], arg[len(ids[-1]) + 1 :]
    try:
        kwargs = json.loads(rest) if rest else {}
    except json.JSONDecodeError as e:
        raise OpcdError(f"checker 'ifeval:{arg}': the kwargs after the id are not JSON ({e.msg})") from None
    if not isinstance(kwargs, dict):
        raise OpcdError(f"checker 'ifeval:{arg}': the kwargs must be a JSON object, e.g. {{\"num_words\": 50}}")
    needed = set(INSTRUCTION_DICT[instruction](instruction).get_instruction_args_keys()) - {"prompt"}
    if needed - set(kwargs):  # IF-Eval would draw the missing ones at random: a checker must not
        raise OpcdError(f"checker 'ifeval:{instruction}' needs kwargs {sorted(needed)}, got {sorted(kwargs)}")

    def check(text: str) -> bool:
        results, scores = evaluate_instructions(text, [instruction], [kwargs], "", INSTRUCTION_DICT)
        return len(results) == 1 and scores.binary_strict == 1.0

    try:
        check("A short answer.")  # a bad kwarg value, or a checker that needs data not installed, fails here
    except Exception as e:  # noqa: BLE001 (whatever the instruction's own code raises)
        first = (str(e).splitlines() or [""])[0][:200]
        raise OpcdError(f"checker 'ifeval:{arg}' cannot run: {type(e).__name__}: {first}") from None
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
    "ifeval": _ifeval,
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
        if name in ("starts_with", "ends_with", "contains", "language", "max_words", "ifeval") and not arg:
            raise OpcdError(f"checker '{name}' needs an argument, e.g. {name}:...")
        if name == "max_words" and not arg.isdigit():
            raise OpcdError(f"checker 'max_words:{arg}': the argument must be a whole number")
        checks.append(CHECKERS[name](arg))
    return lambda text: all(check(text) for check in checks)
